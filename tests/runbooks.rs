//! Runbooks are run, not just read: every `sh` block of a runbook is executed
//! in order, as an SRE would paste it, against a repository prepared here.

use std::path::Path;
use std::process::{Command, Stdio};

use fenice::app::schema::SCHEMA;
use fenice::testkit::PostgresServer;

#[path = "common/operator.rs"]
mod operator;
#[path = "common/rbac.rs"]
mod rbac;
#[path = "common/tenant.rs"]
mod tenant;
use tenant::{connect, issue};

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

/// Runs every `sh` block of `runbooks/FILE` in order, as one bash script
/// (`-euo pipefail`) in `work`, with nothing in its environment but `fenice` on
/// PATH, HOME and `env`; panics with its output unless it succeeds.
fn run_runbook(file: &str, work: &Path, env: &[(&str, &str)]) -> std::process::Output {
    let runbook = std::fs::read_to_string(format!("{ROOT}/runbooks/{file}")).unwrap();
    let script = shell_blocks(&runbook).join("\n");
    assert!(!script.is_empty(), "runbooks/{file} has no sh block");
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_fenice")).parent().unwrap();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
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

#[test]
fn shell_blocks_are_found_in_order() {
    let blocks = shell_blocks("text\n```sh\na\nb\n```\n```text\nno\n```\n```sh\nc\n```\n");
    assert_eq!(blocks, ["a\nb\n", "c\n"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_glass_restore_works_with_only_the_recovery_key() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("nas-copy");
    let repo = repo.to_str().unwrap();
    let with_password = [("FENICE_PASSWORD", "operator password")];
    fenice(dir.path(), &with_password, &["repo", "--repo", repo, "init"]);
    let generated: serde_json::Value =
        serde_json::from_str(&fenice(dir.path(), &[], &["repo", "key", "generate-recovery", "--json"])).unwrap();
    let recipient = generated["recipient"].as_str().unwrap();
    fenice(dir.path(), &with_password, &["repo", "--repo", repo, "key", "add", "--recipient", recipient]);

    // The tenant as it was backed up before the provider died: three invoices.
    let pg = PostgresServer::start().expect("PostgreSQL starts");
    connect(&pg.url("postgres")).await.batch_execute("CREATE DATABASE studio_rossi").await.unwrap();
    let mut db = connect(&pg.url("studio_rossi")).await;
    db.batch_execute(SCHEMA).await.unwrap();
    let documents = dir.path().join("documents");
    std::fs::create_dir_all(&documents).unwrap();
    for _ in 0..3 {
        issue(&mut db, &documents, "2026").await;
    }
    let url = pg.url("studio_rossi");
    fenice(dir.path(), &with_password, &["agent", "backup", "--tenant", "studio-rossi", "--db", &url, "--repo", repo]);

    // The SRE has the key on paper, retyped with line breaks; no password.
    let key = generated["recoveryKey"].as_str().unwrap().replacen('-', "-\n", 2);
    let work = dir.path().join("sre");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("recovery-key.txt"), key).unwrap();

    let out = run_runbook(
        "break-glass-restore.md",
        &work,
        &[("REPO", repo), ("TENANT", "studio-rossi"), ("DB", &pg.url("restored"))],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("no errors"), "the check step ran: {stdout}");
    assert!(stdout.contains("verified"), "the tenant was restored and verified: {stdout}");
    let restored: i64 =
        connect(&pg.url("restored")).await.query_one("SELECT count(*) FROM invoices", &[]).await.unwrap().get(0);
    assert_eq!(restored, 3);
    assert_eq!(std::fs::read_dir(work.join("restore/documents")).unwrap().count(), 3);
    assert!(work.join("restore/files/database.dump").exists());
}

#[test]
fn key_rotation_retires_the_old_password_and_keeps_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let repo = repo.to_str().unwrap();
    let (old, new) = ("the old password", "the new password");
    fenice(dir.path(), &[("FENICE_PASSWORD", old)], &["repo", "--repo", repo, "init"]);
    std::fs::write(dir.path().join("invoice.xml"), "<Fattura/>").unwrap();
    fenice(dir.path(), &[("FENICE_PASSWORD", old)], &["repo", "--repo", repo, "backup", "invoice.xml"]);

    let work = dir.path().join("sre");
    std::fs::create_dir_all(&work).unwrap();
    let out = run_runbook(
        "key-rotation.md",
        &work,
        &[("REPO", repo), ("OLD_PASSWORD", old), ("NEW_PASSWORD", new), ("OLD_LABEL", "initial")],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("no errors"), "the check step ran: {stdout}");
    // Checked again from outside: one holder left, the new password, the data intact.
    let listed = fenice(dir.path(), &[], &["repo", "--repo", repo, "key", "list", "--json"]);
    let holders: Vec<serde_json::Value> = serde_json::from_str(&listed).unwrap();
    assert_eq!(holders.len(), 1, "{listed}");
    assert!(holders[0]["key"]["label"].as_str().unwrap().starts_with("rotated-"), "{listed}");
    let snapshots = fenice(dir.path(), &[("FENICE_PASSWORD", new)], &["repo", "--repo", repo, "snapshots", "--json"]);
    assert_eq!(serde_json::from_str::<Vec<serde_json::Value>>(&snapshots).unwrap().len(), 1);
    assert!(!work.join("new-password.txt").exists(), "the password file is removed at the end");
}

/// `kubectl` on PATH, or `None` (scripts/prerequisites.sh installs it).
fn kubectl() -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join("kubectl")).find(|p| p.is_file())
}

/// The install runbook against two in-memory clusters and the S3 server, with
/// the operator running here (the runbook's Deployment has no kubelet to run
/// it): the operator installed, both sites, the witness, a repository it
/// reaches, a warm tenant with its standby at the standby cluster, and a first
/// backup started as a Job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_brings_two_clusters_and_a_first_tenant_under_protection() {
    use fenice::apiserver::{self, ServerOptions};
    use fenice::testkit::S3Server;
    let Some(real_kubectl) = kubectl() else {
        eprintln!("SKIPPED: kubectl is not installed (scripts/prerequisites.sh installs it)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("sre");
    let shims = dir.path().join("bin");
    std::fs::create_dir_all(&shims).unwrap();
    // NB: `fenice apiserver` serves no OpenAPI document, so kubectl cannot validate
    // on its side (the server still validates); a real cluster needs no such shim.
    let shim = format!(
        "#!/bin/sh\ncase \" $* \" in *\" apply \"*|*\" create \"*) exec {k} \"$@\" --validate=false ;; esac\nexec {k} \"$@\"\n",
        k = real_kubectl.display()
    );
    std::fs::write(shims.join("kubectl"), shim).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(shims.join("kubectl"), std::fs::Permissions::from_mode(0o755)).unwrap();
    // The checkout the runbook runs from: its manifests.
    std::fs::create_dir_all(&work).unwrap();
    let copied = Command::new("cp").arg("-r").arg(format!("{ROOT}/manifests")).arg(&work).status().unwrap();
    assert!(copied.success());

    let s3 = S3Server::start().expect("the S3 server starts");
    for bucket in ["tenants", "witness"] {
        s3.store(bucket, "").await.unwrap().create_bucket(false).await.unwrap();
    }
    let primary = apiserver::spawn(ServerOptions::default()).await.unwrap();
    let standby = apiserver::spawn(ServerOptions { crds: Vec::new(), ..ServerOptions::default() }).await.unwrap();
    let contexts = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: primary\n  cluster: {{server: 'http://{p}'}}\n\
         - name: standby\n  cluster: {{server: 'http://{s}'}}\nusers:\n- name: sre\n  user: {{token: sre}}\n\
         contexts:\n- name: westpole\n  context: {{cluster: primary, user: sre}}\n\
         - name: aks\n  context: {{cluster: standby, user: sre}}\ncurrent-context: westpole\n",
        p = primary.addr(),
        s = standby.addr()
    );
    std::fs::write(work.join("kubeconfig"), contexts).unwrap();
    std::fs::write(work.join("standby.kubeconfig"), standby.kubeconfig_as("fenice-site")).unwrap();
    for (file, text) in [
        ("access-key-id.txt", "test"),
        ("secret-access-key.txt", "test"),
        ("repository-password.txt", "install runbook password"),
    ] {
        std::fs::write(work.join(file), text).unwrap();
    }
    let state = tempfile::tempdir().unwrap();
    let (stop, running) = operator::run(&primary, "fenice-operator", "fenice-system", state.path()).await;

    let bin_dir = Path::new(env!("CARGO_BIN_EXE_fenice")).parent().unwrap();
    let path = format!("{}:{}:{}", shims.display(), bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let kubeconfig = work.join("kubeconfig");
    let endpoint = s3.endpoint();
    let runbook = std::fs::read_to_string(format!("{ROOT}/runbooks/install.md")).unwrap();
    let script = shell_blocks(&runbook).join("\n");
    let out = tokio::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(&work)
        .env_clear()
        .env("PATH", path)
        .env("HOME", &work)
        .env("KUBECONFIG", &kubeconfig)
        .env("PRIMARY", "westpole")
        .env("STANDBY", "aks")
        .env("STANDBY_KUBECONFIG", "standby.kubeconfig")
        .env("STANDBY_USER", "fenice-site")
        .env("REPO_BUCKET", "tenants")
        .env("REPO_ENDPOINT", &endpoint)
        .env("REPO_REGION", "us-east-1")
        .env("WITNESS_BUCKET", "witness")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let said = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let _ = stop.send(());
    let _ = tokio::time::timeout(std::time::Duration::from_secs(40), running).await;
    assert!(out.status.success(), "runbooks/install.md failed:\n{said}");
    assert!(said.contains("condition met"), "the waits ran: {said}");
    assert!(said.contains("studio-rossi-db"), "the standby's database is listed: {said}");
    assert!(said.contains("backup-studio-rossi-first") || said.contains("studio-rossi-first"), "{said}");
    // What the operator did at the standby, it did as the standby's user and within its Role.
    let role = rbac::grants("manifests/site/tenant-namespace-rbac.yaml", Some("invoicing"));
    let denied = rbac::denied(&standby.accesses(), "fenice-site", &role);
    assert!(denied.is_empty(), "beyond the site Role:\n{}", denied.join("\n"));
    assert!(standby.accesses().iter().any(|a| a.user == "fenice-site"), "the operator reached the standby");
}
