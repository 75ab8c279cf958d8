//! Runs a runbook's `sh` blocks, as an SRE would paste them: shared by the
//! tests that run runbooks (tests/runbooks.rs, and the failover runbooks in
//! tests/tenant_kubernetes.rs, which need its two sites).

#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Stdio};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The `sh` blocks of a Markdown file, in order.
pub fn shell_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_start()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(_), "```") => blocks.extend(current.take()),
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

/// Runs every `sh` block of `runbooks/FILE` in order, as one bash script
/// (`-euo pipefail`) in `work`, with nothing in its environment but `fenice` on
/// PATH, HOME and `env`; panics with its output unless it succeeds.
pub fn run_runbook(file: &str, work: &Path, env: &[(&str, &str)]) -> std::process::Output {
    run_runbook_with(file, work, Path::new(""), env)
}

/// [`run_runbook`], with the programs in `first` ahead of everything on PATH.
pub fn run_runbook_with(file: &str, work: &Path, first: &Path, env: &[(&str, &str)]) -> std::process::Output {
    let runbook = std::fs::read_to_string(format!("{ROOT}/runbooks/{file}")).unwrap();
    let script = shell_blocks(&runbook).join("\n");
    assert!(!script.is_empty(), "runbooks/{file} has no sh block");
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_fenice")).parent().unwrap();
    let first = Some(first.display().to_string()).filter(|f| !f.is_empty());
    let dirs = first.into_iter().chain([bin_dir.display().to_string(), std::env::var("PATH").unwrap_or_default()]);
    let path = dirs.collect::<Vec<_>>().join(":");
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(work)
        .env_clear()
        .env("PATH", path)
        .env("HOME", work)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "runbooks/{file} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// [`run_runbook_with`] on a blocking thread, beside servers this test runs
/// on its runtime (an in-memory API server, the operator).
pub async fn run_runbook_beside(
    file: &'static str,
    work: &Path,
    first: &Path,
    env: &[(&str, &str)],
) -> Result<std::process::Output, tokio::task::JoinError> {
    let (work, first) = (work.to_owned(), first.to_owned());
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        run_runbook_with(file, &work, &first, &env)
    })
    .await
}

/// A directory with a `kubectl` that runs `real` and, for `apply` and
/// `create`, skips its client-side validation: `fenice apiserver` serves no
/// OpenAPI document to validate with (the server still validates); a real
/// cluster needs no such shim.
pub fn kubectl_shim(dir: &Path, real: &Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let shims = dir.join("bin");
    std::fs::create_dir_all(&shims).unwrap();
    let shim = format!(
        "#!/bin/sh\ncase \" $* \" in *\" apply \"*|*\" create \"*) exec {k} \"$@\" --validate=false ;; esac\nexec {k} \"$@\"\n",
        k = real.display()
    );
    std::fs::write(shims.join("kubectl"), shim).unwrap();
    std::fs::set_permissions(shims.join("kubectl"), std::fs::Permissions::from_mode(0o755)).unwrap();
    shims
}

/// `kubectl` on PATH, or `None` after saying the test is skipped
/// (scripts/prerequisites.sh installs it).
pub fn kubectl() -> Option<std::path::PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path.split(':').map(|d| Path::new(d).join("kubectl")).find(|p| p.is_file());
    if found.is_none() {
        eprintln!("SKIPPED: kubectl is not installed (scripts/prerequisites.sh installs it)");
    }
    found
}
