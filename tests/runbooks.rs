//! Runbooks are run, not just read: every `sh` block of a runbook is executed
//! in order, as an SRE would paste it, against a repository prepared here.

use std::path::Path;
use std::process::{Command, Stdio};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The `sh` blocks of a Markdown file, in order.
fn shell_blocks(markdown: &str) -> Vec<String> {
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

fn fenice(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_fenice"))
        .args(args)
        .envs(env.iter().copied())
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("running fenice");
    assert!(out.status.success(), "fenice {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn shell_blocks_are_found_in_order() {
    let blocks = shell_blocks("text\n```sh\na\nb\n```\n```text\nno\n```\n```sh\nc\n```\n");
    assert_eq!(blocks, ["a\nb\n", "c\n"]);
}

#[test]
fn break_glass_restore_works_with_only_the_recovery_key() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("nas-copy");
    let repo = repo.to_str().unwrap();
    let with_password = [("FENICE_PASSWORD", "operator password")];
    fenice(dir.path(), &with_password, &["repo", "--repo", repo, "init"]);
    let generated: serde_json::Value =
        serde_json::from_str(&fenice(dir.path(), &[], &["repo", "key", "generate-recovery", "--json"])).unwrap();
    let recipient = generated["recipient"].as_str().unwrap();
    fenice(dir.path(), &with_password, &["repo", "--repo", repo, "key", "add", "--recipient", recipient]);
    let tenant = dir.path().join("studio-rossi");
    std::fs::create_dir_all(tenant.join("documents")).unwrap();
    std::fs::write(tenant.join("tenant.sql"), "INSERT INTO invoices VALUES (1);\n").unwrap();
    std::fs::write(tenant.join("documents/IT01234567897_00001.xml"), "<FatturaElettronica/>").unwrap();
    fenice(dir.path(), &with_password, &["repo", "--repo", repo, "backup", "studio-rossi", "--tenant", "studio-rossi"]);

    // The SRE has the key on paper, retyped with line breaks; no password.
    let key = generated["recoveryKey"].as_str().unwrap().replacen('-', "-\n", 2);
    let work = dir.path().join("sre");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("recovery-key.txt"), key).unwrap();

    let runbook = std::fs::read_to_string(format!("{ROOT}/runbooks/break-glass-restore.md")).unwrap();
    let script = shell_blocks(&runbook).join("\n");
    assert!(script.contains("fenice repo restore"), "the runbook restores something");
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_fenice")).parent().unwrap();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(&work)
        .env_clear()
        .env("PATH", path)
        .env("HOME", &work)
        .env("REPO", repo)
        .env("TENANT", "studio-rossi")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "runbooks/break-glass-restore.md failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("no errors"), "the check step ran: {stdout}");
    assert_eq!(
        std::fs::read_to_string(work.join("restore/studio-rossi/tenant.sql")).unwrap(),
        "INSERT INTO invoices VALUES (1);\n"
    );
}
