//! `fenice repo` end to end on a filesystem repository: the commands an SRE
//! runs, and the faults the repository must survive.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

struct Lab {
    dir: tempfile::TempDir,
}

impl Lab {
    fn new() -> Self {
        Lab { dir: tempfile::tempdir().unwrap() }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn repo(&self) -> String {
        self.path("repo").display().to_string()
    }

    fn fenice(&self, password: &str, args: &[&str]) -> Output {
        self.command(password, args).output().expect("running fenice")
    }

    fn command(&self, password: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fenice"));
        cmd.env_remove("FENICE_REPOSITORY")
            .env("FENICE_PASSWORD", password)
            .arg("repo")
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        cmd
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.fenice("pw", args);
        assert!(out.status.success(), "fenice repo {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.push("--json");
        serde_json::from_str(&self.ok(&args)).unwrap()
    }

    fn init(&self) {
        self.ok(&["--repo", &self.repo(), "init"]);
    }

    /// A small tenant-shaped tree: a dump, invoices, a binary document.
    fn make_source(&self) -> PathBuf {
        let src = self.path("src");
        std::fs::create_dir_all(src.join("documents/2026")).unwrap();
        let dump: String =
            (0..20_000).map(|i| format!("INSERT INTO invoices VALUES ({i}, 'IT01234567897');\n")).collect();
        std::fs::write(src.join("dump.sql"), dump).unwrap();
        for i in 0..20 {
            std::fs::write(
                src.join(format!("documents/2026/IT01234567897_{i:05}.xml")),
                format!("<FatturaElettronica n=\"{i}\"/>"),
            )
            .unwrap();
        }
        std::fs::write(src.join("documents/scan.pdf"), pseudo_random(3_000_000, 7)).unwrap();
        src
    }

    /// The packs, smallest first (tree blobs have a small pack of their own).
    fn packs_by_size(&self) -> Vec<String> {
        let mut packs: Vec<String> = self.objects().into_iter().filter(|o| o.starts_with("data/")).collect();
        packs.sort_by_key(|o| std::fs::metadata(self.path("repo").join(o)).unwrap().len());
        packs
    }

    fn objects(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![self.path("repo")];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if entry.file_type().unwrap().is_dir() {
                    stack.push(entry.path());
                } else {
                    out.push(entry.path().strip_prefix(self.path("repo")).unwrap().display().to_string());
                }
            }
        }
        out.sort();
        out
    }
}

/// Incompressible bytes, the same for the same seed.
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0; len];
    blake3::Hasher::new().update(&seed.to_le_bytes()).finalize_xof().fill(&mut out);
    out
}

fn same_tree(a: &Path, b: &Path) {
    let out = Command::new("diff").arg("-r").arg(a).arg(b).output().unwrap();
    assert!(
        out.status.success(),
        "{} and {} differ:\n{}",
        a.display(),
        b.display(),
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn backup_then_restore_gives_back_the_same_files() {
    let lab = Lab::new();
    lab.init();
    let src = lab.make_source();
    let repo = lab.repo();
    let backup = lab.json(&["--repo", &repo, "backup", "src", "--tenant", "studio-rossi", "--tag", "nightly"]);
    let snapshot = backup["copies"][0]["snapshot"].as_str().unwrap().to_owned();
    let listed = lab.json(&["--repo", &repo, "snapshots", "--tenant", "studio-rossi"]);
    assert_eq!(listed[0]["id"], snapshot.as_str());
    assert_eq!(listed[0]["snapshot"]["tags"][0], "nightly");
    lab.ok(&["--repo", &repo, "restore", &snapshot[..8], "--target", "out"]);
    same_tree(&src, &lab.path("out/src"));
    let ls = lab.ok(&["--repo", &repo, "ls", "latest"]);
    assert!(ls.contains("/src/documents/2026/IT01234567897_00019.xml"), "{ls}");
}

/// On a terminal, long work shows how far it is: a bar for a restore and a
/// read-data check (their totals are known), a count for a backup; with
/// `--json`, or off a terminal, nothing.
#[test]
fn long_work_shows_its_progress_on_a_terminal_only() {
    let lab = Lab::new();
    lab.init();
    lab.make_source();
    let repo = lab.repo();
    let on_terminal = |args: &str| {
        // `script` gives the command a pseudo-terminal, as an SRE's shell would.
        let command = format!("{} repo --repo {repo} {args}", env!("CARGO_BIN_EXE_fenice"));
        let out = Command::new("script")
            .args(["-qec", &command, "/dev/null"])
            .env_remove("FENICE_REPOSITORY")
            .env("FENICE_PASSWORD", "pw")
            .current_dir(lab.dir.path())
            .stdin(Stdio::null())
            .output()
            .expect("running script (util-linux)");
        assert!(out.status.success(), "{args}: {}", String::from_utf8_lossy(&out.stdout));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let backup = on_terminal("backup src");
    assert!(backup.contains("22 files, ") && backup.contains(" read"), "{backup}");
    let restored = on_terminal("restore latest --target out");
    assert!(restored.contains(&format!("[{}] 100%", "#".repeat(30))), "{restored}");
    let checked = on_terminal("check --read-data");
    assert!(checked.contains("100%"), "{checked}");
    // Off a terminal (a pipe), and with --json, no progress at all.
    let piped = lab.fenice("pw", &["--repo", &repo, "restore", "latest", "--target", "again"]);
    assert!(!String::from_utf8_lossy(&piped.stderr).contains('%'));
    let json = on_terminal("restore latest --target third --json");
    assert!(!json.contains("100%"), "{json}");
}

#[test]
fn a_second_backup_of_unchanged_data_adds_almost_nothing() {
    let lab = Lab::new();
    lab.init();
    lab.make_source();
    let repo = lab.repo();
    let first = lab.json(&["--repo", &repo, "backup", "src"]);
    let second = lab.json(&["--repo", &repo, "backup", "src"]);
    let added = |v: &Value| v["copies"][0]["totals"]["addedBytes"].as_u64().unwrap();
    assert!(added(&first) > 1_000_000);
    assert!(added(&second) < 10_000, "second backup added {} bytes", added(&second));
}

#[test]
fn stdin_is_stored_as_one_file_and_comes_back_on_stdout() {
    let lab = Lab::new();
    lab.init();
    let data = pseudo_random(2_500_000, 3);
    let mut child = lab
        .command("pw", &["--repo", &lab.repo(), "backup", "--stdin", "--stdin-name", "tenant.dump"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), &data).unwrap();
    drop(child.stdin.take());
    assert!(child.wait_with_output().unwrap().status.success());
    let out = lab.fenice("pw", &["--repo", &lab.repo(), "restore", "latest", "--to-stdout", "tenant.dump"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout == data, "restored stream differs");
}

#[test]
fn a_wrong_password_fails_says_so_and_writes_nothing() {
    let lab = Lab::new();
    lab.init();
    lab.make_source();
    let before = lab.objects();
    let out = lab.fenice("not the password", &["--repo", &lab.repo(), "backup", "src"]);
    assert_eq!(out.status.code(), Some(12));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("password does not open any key"), "{err}");
    assert!(!err.contains("not the password"), "the password must never be echoed: {err}");
    assert_eq!(lab.objects(), before, "a failed unlock must not write");
}

#[test]
fn a_missing_repository_is_exit_10_with_the_fix() {
    let lab = Lab::new();
    let out = lab.fenice("pw", &["--repo", &lab.repo(), "snapshots"]);
    assert_eq!(out.status.code(), Some(10));
    assert!(String::from_utf8_lossy(&out.stderr).contains("fenice repo init"));
}

#[test]
fn a_repository_of_a_newer_format_is_refused() {
    let lab = Lab::new();
    lab.init();
    let config_path = lab.path("repo/config");
    let mut config: Value = serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    config["version"] = 99.into();
    std::fs::remove_file(&config_path).unwrap();
    std::fs::write(&config_path, serde_json::to_vec(&config).unwrap()).unwrap();
    let out = lab.fenice("pw", &["--repo", &lab.repo(), "snapshots"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("format version 99") && err.contains("newer fenice"), "{err}");
}

#[test]
fn a_flipped_byte_is_traced_to_its_pack_and_files_and_the_rest_restores() {
    let lab = Lab::new();
    lab.init();
    let src = lab.make_source();
    let repo = lab.repo();
    lab.ok(&["--repo", &repo, "backup", "src"]);
    // The pdf is random, so its sealed blob is the largest in the pack: damage it.
    // Trees have packs of their own; the data pack is the largest.
    let pack = lab.packs_by_size().pop().unwrap();
    let pack_path = lab.path("repo").join(&pack);
    let mut bytes = std::fs::read(&pack_path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&pack_path, bytes).unwrap();

    let out = lab.fenice("pw", &["--repo", &repo, "check", "--read-data"]);
    assert_eq!(out.status.code(), Some(1));
    let report = String::from_utf8_lossy(&out.stdout);
    let pack_id = pack.rsplit('/').next().unwrap();
    assert!(report.contains(&format!("damaged pack {pack_id}")), "{report}");
    assert!(report.contains("src/documents/scan.pdf"), "{report}");
    assert!(!report.contains("dump.sql"), "only the damaged file is named: {report}");

    let out = lab.fenice("pw", &["--repo", &repo, "restore", "latest", "--target", "out"]);
    assert_eq!(out.status.code(), Some(3), "partial restore exit code");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not restored: src/documents/scan.pdf"));
    assert!(!lab.path("out/src/documents/scan.pdf").exists(), "no half-written file under the real name");
    assert_eq!(std::fs::read(lab.path("out/src/dump.sql")).unwrap(), std::fs::read(src.join("dump.sql")).unwrap());
}

#[test]
fn a_backup_killed_mid_run_leaves_a_valid_repository_and_its_uploads_are_reused() {
    let lab = Lab::new();
    lab.init();
    let src = lab.path("big");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..6 {
        std::fs::write(src.join(format!("part{i}.bin")), pseudo_random(8_000_000, i)).unwrap();
    }
    let mut child = lab.command("pw", &["--repo", &lab.repo(), "backup", "big"]).stdout(Stdio::null()).spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let is_pack = |o: &String| o.starts_with("data/") && !o.rsplit('/').next().unwrap().starts_with('.');
    while !lab.objects().iter().any(is_pack) {
        assert!(std::time::Instant::now() < deadline, "no pack uploaded within 60 s");
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!lab.objects().iter().any(|o| o.starts_with("snapshots/")), "killed before its snapshot was written");
    let check = lab.json(&["--repo", &lab.repo(), "check"]);
    assert_eq!(check["ok"], true, "{check}");
    let packs_left = check["unindexedPacks"].as_u64().unwrap();
    assert!(packs_left >= 1, "{check}");

    let second = lab.json(&["--repo", &lab.repo(), "backup", "big"]);
    let added = second["copies"][0]["totals"]["addedBytes"].as_u64().unwrap();
    assert!(added < 48_000_000 - 10_000_000, "the rerun re-uploaded what was there: added {added}");
    lab.ok(&["--repo", &lab.repo(), "restore", "latest", "--target", "out"]);
    same_tree(&src, &lab.path("out/big"));
    assert_eq!(lab.json(&["--repo", &lab.repo(), "check", "--read-data"])["ok"], true);
}

#[test]
fn two_concurrent_backups_both_survive() {
    let lab = Lab::new();
    lab.init();
    let src = lab.make_source();
    let other = lab.path("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("x.bin"), pseudo_random(4_000_000, 11)).unwrap();
    let a = lab.command("pw", &["--repo", &lab.repo(), "backup", "src"]).stdout(Stdio::null()).spawn().unwrap();
    let b = lab.command("pw", &["--repo", &lab.repo(), "backup", "other"]).stdout(Stdio::null()).spawn().unwrap();
    assert!(a.wait_with_output().unwrap().status.success());
    assert!(b.wait_with_output().unwrap().status.success());
    let snapshots = lab.json(&["--repo", &lab.repo(), "snapshots"]);
    assert_eq!(snapshots.as_array().unwrap().len(), 2);
    assert_eq!(lab.json(&["--repo", &lab.repo(), "check", "--read-data"])["ok"], true);
    for (i, s) in snapshots.as_array().unwrap().iter().enumerate() {
        let target = format!("out{i}");
        lab.ok(&["--repo", &lab.repo(), "restore", s["id"].as_str().unwrap(), "--target", &target]);
    }
    let restored: Vec<PathBuf> = (0..2).map(|i| lab.path(&format!("out{i}"))).collect();
    let find = |name: &str| restored.iter().map(|r| r.join(name)).find(|p| p.exists()).unwrap();
    same_tree(&src, &find("src"));
    same_tree(&other, &find("other"));
}

#[test]
fn one_backup_writes_a_snapshot_to_each_repository_and_reports_each_copy() {
    let lab = Lab::new();
    lab.init();
    let second = lab.path("repo-b").display().to_string();
    lab.ok(&["--repo", &second, "init"]);
    let src = lab.make_source();
    let result = lab.json(&["--repo", &lab.repo(), "--repo", &second, "backup", "src"]);
    let copies = result["copies"].as_array().unwrap();
    assert_eq!(copies.len(), 2);
    assert!(copies.iter().all(|c| c["snapshot"].is_string()), "{result}");
    lab.ok(&["--repo", &second, "restore", "latest", "--target", "out"]);
    same_tree(&src, &lab.path("out/src"));
}

#[test]
fn keys_can_be_added_listed_and_removed_and_a_recovery_key_opens_the_repository() {
    let lab = Lab::new();
    lab.init();
    lab.make_source();
    let repo = lab.repo();
    lab.ok(&["--repo", &repo, "backup", "src"]);
    let generated = lab.json(&["key", "generate-recovery"]);
    let recovery = generated["recoveryKey"].as_str().unwrap();
    let recipient = generated["recipient"].as_str().unwrap();
    std::fs::write(lab.path("recovery.txt"), recovery).unwrap();
    let packs = |lab: &Lab| lab.objects().into_iter().filter(|o| o.starts_with("data/")).collect::<Vec<_>>();
    let packs_before = packs(&lab);
    lab.ok(&["--repo", &repo, "key", "add", "--recipient", recipient, "--label", "offline 2026"]);
    let keys = lab.json(&["--repo", &repo, "key", "list"]);
    assert_eq!(keys.as_array().unwrap().len(), 2);
    // Remove the password: only the offline key is left, and it still restores.
    let password_key = keys.as_array().unwrap().iter().find(|k| k["key"]["kind"] == "passphrase").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    lab.ok(&["--repo", &repo, "key", "remove", &password_key[..8]]);
    let out = lab.fenice("pw", &["--repo", &repo, "snapshots"]);
    assert_eq!(out.status.code(), Some(12), "the removed password must no longer open it");
    let out = lab
        .command("", &["--repo", &repo, "--recovery-key-file", "recovery.txt", "restore", "latest", "--target", "out"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(packs(&lab), packs_before, "key changes never rewrite data");
    // The last key cannot go.
    let keys = lab.json(&["--repo", &repo, "--recovery-key-file", "recovery.txt", "key", "list"]);
    let last = keys[0]["id"].as_str().unwrap().to_owned();
    let out = lab
        .command("", &["--repo", &repo, "--recovery-key-file", "recovery.txt", "key", "remove", &last])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("last key"));
}

#[test]
fn copy_re_encrypts_into_another_repository_and_sends_only_what_is_missing() {
    let lab = Lab::new();
    lab.init();
    let dest = lab.path("dest").display().to_string();
    let out = lab.fenice("other password", &["--repo", &dest, "init"]);
    assert!(out.status.success());
    let src = lab.make_source();
    lab.ok(&["--repo", &lab.repo(), "backup", "src"]);
    let copy = |lab: &Lab| {
        let out = lab
            .command("pw", &["--repo", &lab.repo(), "copy", "--to", &dest, "--json"])
            .env("FENICE_TO_PASSWORD", "other password")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let first = copy(&lab);
    assert!(first["copies"][0]["addedBytes"].as_u64().unwrap() > 1_000_000, "{first}");
    let again = copy(&lab);
    assert_eq!(again["copies"][0]["addedBytes"], 0, "nothing new to send: {again}");
    let out = lab.fenice("other password", &["--repo", &dest, "restore", "latest", "--target", "out"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    same_tree(&src, &lab.path("out/src"));
    // The destination's password is not the source's.
    assert_eq!(lab.fenice("pw", &["--repo", &dest, "snapshots"]).status.code(), Some(12));
}

#[test]
fn forget_keeps_what_the_policy_says_and_dry_run_changes_nothing() {
    let lab = Lab::new();
    lab.init();
    lab.make_source();
    for _ in 0..3 {
        lab.ok(&["--repo", &lab.repo(), "backup", "src", "--tenant", "studio-rossi"]);
    }
    let dry = lab.json(&["--repo", &lab.repo(), "forget", "--keep-last", "1", "--dry-run"]);
    assert_eq!(dry.as_array().unwrap().iter().filter(|d| d["outcome"] == "would forget").count(), 2);
    assert_eq!(lab.json(&["--repo", &lab.repo(), "snapshots"]).as_array().unwrap().len(), 3);
    lab.ok(&["--repo", &lab.repo(), "forget", "--keep-last", "1"]);
    let left = lab.json(&["--repo", &lab.repo(), "snapshots"]);
    assert_eq!(left.as_array().unwrap().len(), 1);
    let out = lab.fenice("pw", &["--repo", &lab.repo(), "forget"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--keep-"));
}

#[test]
fn prune_removes_what_no_snapshot_needs_and_keeps_the_rest_restorable() {
    let lab = Lab::new();
    lab.init();
    let src = lab.make_source();
    let repo = lab.repo();
    let old = lab.path("old");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::write(old.join("obsolete.bin"), pseudo_random(6_000_000, 21)).unwrap();
    lab.ok(&["--repo", &repo, "backup", "old", "--tenant", "gone"]);
    lab.ok(&["--repo", &repo, "backup", "src", "--tenant", "kept"]);
    let stored = |lab: &Lab| lab.json(&["--repo", &lab.repo(), "stats"])["storedBytes"].as_u64().unwrap();
    let before = stored(&lab);
    let gone = lab.json(&["--repo", &repo, "snapshots", "--tenant", "gone"]);
    let gone_id = gone[0]["id"].as_str().unwrap().to_owned();
    std::fs::remove_file(lab.path(&format!("repo/snapshots/{gone_id}"))).unwrap();

    let dry = lab.json(&["--repo", &repo, "prune", "--dry-run"]);
    assert!(dry["bytesFreed"].as_u64().unwrap() > 5_000_000, "{dry}");
    assert_eq!(stored(&lab), before, "a dry run changes nothing");
    let done = lab.json(&["--repo", &repo, "prune"]);
    assert!(done["packsDeleted"].as_u64().unwrap() + done["packsRepacked"].as_u64().unwrap() >= 1, "{done}");
    assert!(stored(&lab) < before - 5_000_000, "prune freed {} of {before}", before - stored(&lab));
    assert_eq!(lab.json(&["--repo", &repo, "check", "--read-data"])["ok"], true);
    lab.ok(&["--repo", &repo, "restore", "latest", "--target", "out"]);
    same_tree(&src, &lab.path("out/src"));
    // Nothing left to do the second time.
    let again = lab.json(&["--repo", &repo, "prune"]);
    assert_eq!(again["packsDeleted"], 0, "{again}");
    assert_eq!(again["packsRepacked"], 0, "{again}");
}

#[tokio::test]
async fn prune_waits_for_a_running_backup_and_backups_wait_for_prune() {
    use fenice::repo::keyfile::{KdfParams, Passphrase};
    use fenice::repo::repository::{Error, Repository};
    use fenice::repo::{lock, prune};
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(fenice::store::fs::FsStore::open(dir.path()).unwrap());
    let fast = KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 };
    let repo = Repository::init(store, &Passphrase::new("pw".into()), fast, None).await.unwrap();
    let backup = lock::acquire(&repo, false).await.unwrap();
    let refused = prune::prune(&repo, false).await.unwrap_err();
    assert!(matches!(refused, Error::Locked { exclusive: false, .. }), "{refused}");
    assert!(refused.to_string().contains("a backup"), "{refused}");
    let second_backup = lock::acquire(&repo, false).await.expect("backups share the lock");
    backup.release(&repo).await;
    second_backup.release(&repo).await;
    let pruning = lock::acquire(&repo, true).await.unwrap();
    let refused = lock::acquire(&repo, false).await.unwrap_err();
    assert!(refused.to_string().contains("(prune)"), "{refused}");
    pruning.release(&repo).await;
    prune::prune(&repo, false).await.expect("free again");
}

#[test]
fn unchanged_files_are_not_read_again_unless_forced() {
    let lab = Lab::new();
    lab.init();
    let src = lab.make_source();
    let repo = lab.repo();
    lab.ok(&["--repo", &repo, "backup", "src", "--tenant", "t"]);
    // Same size, same modification time, other content: only --force can see it.
    let invoice = src.join("documents/2026/IT01234567897_00003.xml");
    let mtime = std::fs::metadata(&invoice).unwrap().modified().unwrap();
    let original = std::fs::read(&invoice).unwrap();
    let forged: Vec<u8> = original.iter().map(|b| if *b == b'3' { b'8' } else { *b }).collect();
    assert_ne!(forged, original);
    std::fs::write(&invoice, &forged).unwrap();
    std::fs::File::options().write(true).open(&invoice).unwrap().set_modified(mtime).unwrap();
    // A changed file is read, and changes the snapshot.
    std::fs::write(src.join("dump.sql"), "INSERT INTO invoices VALUES (42);\n").unwrap();

    lab.ok(&["--repo", &repo, "backup", "src", "--tenant", "t"]);
    let out = lab.fenice(
        "pw",
        &["--repo", &repo, "restore", "latest", "--to-stdout", "src/documents/2026/IT01234567897_00003.xml"],
    );
    assert_eq!(out.stdout, original, "the unchanged-looking file was taken from the parent snapshot");
    let out = lab.fenice("pw", &["--repo", &repo, "restore", "latest", "--to-stdout", "src/dump.sql"]);
    assert_eq!(out.stdout, b"INSERT INTO invoices VALUES (42);\n");

    lab.ok(&["--repo", &repo, "backup", "src", "--tenant", "t", "--force"]);
    let out = lab.fenice(
        "pw",
        &["--repo", &repo, "restore", "latest", "--to-stdout", "src/documents/2026/IT01234567897_00003.xml"],
    );
    assert_eq!(out.stdout, forged, "--force reads every file");
}

#[test]
fn a_damaged_directory_listing_is_reported_and_does_not_abort_the_restore() {
    let lab = Lab::new();
    lab.init();
    lab.make_source();
    let repo = lab.repo();
    lab.ok(&["--repo", &repo, "backup", "src"]);
    // Tree blobs have a pack of their own: the smallest one.
    let tree_pack = lab.packs_by_size().remove(0);
    let path = lab.path("repo").join(&tree_pack);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[30] ^= 0x01; // inside the first tree blob, past its nonce
    std::fs::write(&path, bytes).unwrap();
    let out = lab.fenice("pw", &["--repo", &repo, "restore", "latest", "--target", "out"]);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not restored") && err.contains("does not authenticate"), "{err}");
}

#[test]
fn restoring_thousands_of_small_files_keeps_few_descriptors_open() {
    let lab = Lab::new();
    lab.init();
    let src = lab.path("invoices");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..3000 {
        std::fs::write(src.join(format!("IT01234567897_{i:05}.xml")), format!("<FatturaElettronica n=\"{i}\"/>"))
            .unwrap();
    }
    lab.ok(&["--repo", &lab.repo(), "backup", "invoices"]);
    // Thousands of files share each pack window: with 64 descriptors the
    // restore must still go through.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n 64 && exec {} repo --repo {} restore latest --target {}",
            env!("CARGO_BIN_EXE_fenice"),
            lab.repo(),
            lab.path("out").display()
        ))
        .env("FENICE_PASSWORD", "pw")
        .env_remove("FENICE_REPOSITORY")
        .output()
        .unwrap();
    assert!(out.status.success(), "restore failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_dir(lab.path("out/invoices")).unwrap().count(), 3000);
}

#[test]
fn special_files_are_skipped_and_said() {
    let lab = Lab::new();
    lab.init();
    let src = lab.path("site");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("invoice.xml"), "<FatturaElettronica/>").unwrap();
    let fifo = std::ffi::CString::new(src.join("queue.fifo").to_str().unwrap()).unwrap();
    // SAFETY: mkfifo reads a NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let out = lab.fenice("pw", &["--repo", &lab.repo(), "backup", "site"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("1 sockets, FIFOs or devices skipped"), "{err}");
    let listed = lab.ok(&["--repo", &lab.repo(), "ls", "latest"]);
    assert!(listed.contains("invoice.xml") && !listed.contains("queue.fifo"), "{listed}");
}

/// Bytes written to disk in the files below `dir`, however deep (blocks:
/// a restore sizes its files before it fills them).
fn bytes_below(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => stack.push(entry.path()),
                Ok(m) => total += m.blocks() * 512,
                Err(_) => {}
            }
        }
    }
    total
}

/// Runs `child` until `reached` says so (or it ends by itself), then SIGKILLs
/// it; whether it was killed rather than done.
fn kill_when(mut child: std::process::Child, reached: impl Fn() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !reached() {
        assert!(std::time::Instant::now() < deadline, "the point to kill at never came within 120 s");
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    true
}

/// The fault matrix's kill rows for the repository (docs/reliability.md): a
/// backup of 48 MB (three packs) SIGKILLed once its first, second and third
/// pack landed, and a restore SIGKILLed a quarter and three quarters in. Each
/// time the repository checks clean, no snapshot stands for a backup that did
/// not finish, the next backup sends only what is missing, and the next
/// restore gives back the source byte for byte, nothing else in the target.
#[test]
fn a_backup_or_a_restore_killed_after_any_pack_loses_nothing_and_the_next_run_completes() {
    let is_pack = |o: &String| o.starts_with("data/") && !o.rsplit('/').next().unwrap().starts_with('.');
    let big = |lab: &Lab| {
        let src = lab.path("big");
        std::fs::create_dir_all(&src).unwrap();
        for i in 0..6 {
            std::fs::write(src.join(format!("part{i}.bin")), pseudo_random(8_000_000, i)).unwrap();
        }
        src
    };
    for packs in 1..=3 {
        let lab = Lab::new();
        lab.init();
        let src = big(&lab);
        let child = lab.command("pw", &["--repo", &lab.repo(), "backup", "big"]).stdout(Stdio::null()).spawn().unwrap();
        let killed = kill_when(child, || lab.objects().iter().filter(|o| is_pack(o)).count() >= packs);
        let snapshots = lab.objects().iter().filter(|o| o.starts_with("snapshots/")).count();
        assert!(!killed || snapshots == 0, "killed after {packs} packs, yet a snapshot stands");
        let check = lab.json(&["--repo", &lab.repo(), "check"]);
        assert_eq!(check["ok"], true, "after {packs} packs: {check}");
        let second = lab.json(&["--repo", &lab.repo(), "backup", "big"]);
        let added = second["copies"][0]["totals"]["addedBytes"].as_u64().unwrap();
        if killed {
            // A pack holds 16 MiB; the last of three holds the remaining 14.6 MB.
            let landed = packs as u64 * 14_000_000;
            assert!(added + landed <= 49_000_000, "after {packs} packs the rerun added {added} bytes");
        }
        println!("backup killed after {packs} packs (killed: {killed}): the next one added {added} bytes");
        lab.ok(&["--repo", &lab.repo(), "restore", "latest", "--target", "out"]);
        same_tree(&src, &lab.path("out/big"));
        assert_eq!(lab.json(&["--repo", &lab.repo(), "check", "--read-data"])["ok"], true);
    }

    let lab = Lab::new();
    lab.init();
    let src = big(&lab);
    lab.ok(&["--repo", &lab.repo(), "backup", "big"]);
    for quarters in [1, 3] {
        let target = format!("out-{quarters}");
        let written = lab.path(&target);
        let child = lab
            .command("pw", &["--repo", &lab.repo(), "restore", "latest", "--target", &target])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let killed = kill_when(child, || bytes_below(&written) >= 48_000_000 / 4 * quarters);
        println!("restore killed {quarters}/4 in (killed: {killed}), {} bytes written", bytes_below(&written));
        lab.ok(&["--repo", &lab.repo(), "restore", "latest", "--target", &target]);
        same_tree(&src, &written.join("big"));
        let entries: Vec<_> = std::fs::read_dir(&written).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(entries, ["big"], "nothing else is left in the target");
    }
}

/// A partial file that a killed restore left, longer than the file it stood
/// for, leaves no tail in the file restored over it.
#[test]
fn a_longer_partial_file_left_by_a_killed_restore_is_cut_to_size() {
    let lab = Lab::new();
    lab.init();
    let src = lab.make_source();
    let repo = lab.repo();
    lab.ok(&["--repo", &repo, "backup", "src"]);
    let dir = lab.path("out/src/documents/2026");
    std::fs::create_dir_all(&dir).unwrap();
    let partial = dir.join(".IT01234567897_00019.xml.fenice-partial");
    std::fs::write(&partial, vec![b'x'; 1 << 20]).unwrap();
    lab.ok(&["--repo", &repo, "restore", "latest", "--target", "out"]);
    same_tree(&src, &lab.path("out/src"));
    assert!(!partial.exists(), "the partial file became the restored one");
}

/// A backup whose repository was opened before a prune ran deduplicates
/// against the index as it is once the backup holds its lock, not as it was
/// loaded: the blobs of the packs the prune deleted are uploaded again.
#[tokio::test]
async fn a_backup_opened_before_a_prune_uploads_again_what_the_prune_deleted() {
    use fenice::repo::archiver::{self, BackupOptions, Source};
    use fenice::repo::keyfile::{KdfParams, Passphrase};
    use fenice::repo::repository::{Repository, Unlock};
    use fenice::repo::{check, prune};
    use fenice::store::ObjectStore;
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(fenice::store::fs::FsStore::open(dir.path().join("repo")).unwrap());
    let fast = KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 };
    let pw = Passphrase::new("pw".into());
    let repo = Arc::new(Repository::init(store.clone(), &pw, fast, None).await.unwrap());
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("scan.pdf"), pseudo_random(3 << 20, 7)).unwrap();
    let options = || BackupOptions {
        force_read: true,
        host: "test".into(),
        tenant: None,
        tags: Vec::new(),
        annotations: Default::default(),
    };
    let backup = |repo: &Arc<Repository>| {
        let repo = repo.clone();
        let paths = Source::Paths(vec![data.clone()]);
        async move { archiver::backup(vec![repo], paths, options(), Default::default()).await.unwrap() }
    };
    let first = backup(&repo).await.remove(0).result.unwrap().0;

    // Opened (its index loaded) before the snapshot is forgotten and pruned.
    let early =
        Arc::new(Repository::open(store.clone(), &Unlock::Passphrase(Passphrase::new("pw".into()))).await.unwrap());
    store.delete(&format!("snapshots/{first}")).await.unwrap();
    let pruned = prune::prune(&repo, false).await.unwrap();
    assert!(pruned.packs_deleted > 0, "the prune deletes the forgotten snapshot's packs: {pruned:?}");

    let second = backup(&early).await.remove(0).result.unwrap();
    assert!(second.1.totals.added_bytes > 0, "the scan is uploaded again: {:?}", second.1.totals);
    let fresh = Repository::open(store.clone(), &Unlock::Passphrase(pw)).await.unwrap();
    let report = check::check(&fresh, true).await.unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
}

/// libfaketime, from Debian's package: moves the clock of the process it is
/// preloaded in.
const FAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// The clock set back three hours between two backups, for real (libfaketime
/// moves the `fenice` process's clock): the second snapshot is dated before the
/// first and names it as its previous, and `latest` is the second, not the
/// older data dated last.
#[test]
fn a_backup_taken_after_the_clock_was_set_back_is_still_the_latest() {
    assert!(Path::new(FAKETIME).exists(), "{FAKETIME} is missing: run scripts/prerequisites.sh");
    let lab = Lab::new();
    lab.init();
    let src = lab.make_source();
    let repo = lab.repo();
    let first = lab.json(&["--repo", &repo, "backup", "src"])["copies"][0]["snapshot"].as_str().unwrap().to_owned();
    std::fs::write(src.join("written-after-the-first-backup.txt"), "only in the second").unwrap();
    let clock = lab.path("clock");
    std::fs::write(&clock, "-3h").unwrap();
    let out = lab
        .command("pw", &["--repo", &repo, "backup", "src", "--json"])
        .env("LD_PRELOAD", FAKETIME)
        .env("FAKETIME_TIMESTAMP_FILE", &clock)
        .env("FAKETIME_NO_CACHE", "1")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let second: Value = serde_json::from_slice(&out.stdout).unwrap();
    let second = second["copies"][0]["snapshot"].as_str().unwrap().to_owned();

    let listed = lab.json(&["--repo", &repo, "snapshots"]);
    let ids: Vec<&str> = listed.as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [second.as_str(), first.as_str()], "listed by time, the second first");
    let time = |i: usize| listed[i]["snapshot"]["time"].as_str().unwrap().parse::<jiff::Timestamp>().unwrap();
    let behind = time(1).duration_since(time(0));
    assert!(behind > jiff::SignedDuration::from_mins(170), "dated {behind:?} before the first");
    assert_eq!(listed[0]["snapshot"]["previous"].as_str(), Some(first.as_str()));

    lab.ok(&["--repo", &repo, "restore", "latest", "--target", "out"]);
    same_tree(&src, &lab.path("out/src"));
}
