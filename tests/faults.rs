//! The fault matrix's storage rows (docs/reliability.md), end to end through
//! `fenice repo` as an SRE or an agent runs it: the S3 server behind a proxy
//! that throttles, stops answering or breaks off an answer, mid-backup and
//! mid-restore, and a filesystem repository or restore target that fills up. Each time: a clear
//! end (an exit code and the endpoint or path named), a repository that still
//! checks clean, and once the fault is gone, the next run completes and
//! restores every byte.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use fenice::testkit::{FaultProxy, S3Server};

const PASSWORD: &str = "faults-pw";
const REPO: &str = "s3://faults/repo";

/// Incompressible bytes, the same for the same seed.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// Runs `fenice repo --repo REPO ARGS` against the S3 endpoint `endpoint`,
/// each request given up after 2 s and tried twice.
fn repo(endpoint: &str, dir: &Path, repository: &str, args: &[&str]) -> Output {
    repo_trying(endpoint, dir, repository, 2, args)
}

/// [`repo`], trying each request `attempts` times.
fn repo_trying(endpoint: &str, dir: &Path, repository: &str, attempts: u32, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fenice"))
        .args(["repo", "--repo", repository, "--store-timeout", "2", "--store-attempts", &attempts.to_string()])
        .args(args)
        .env_remove("FENICE_REPOSITORY")
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("FENICE_S3_PATH_STYLE", "true")
        .env("FENICE_PASSWORD", PASSWORD)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("running fenice")
}

/// What a command said, on either stream (a backup reports each copy on stdout).
fn said(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn ok(out: Output, what: &str) -> String {
    assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The S3 server with a bucket, a proxy in front, and a directory with 12 MiB
/// of incompressible data in three files (several packs' worth of requests).
async fn setup() -> (S3Server, FaultProxy, tempfile::TempDir) {
    let s3 = S3Server::start().expect("the S3 server starts");
    s3.store("faults", "").await.unwrap().create_bucket(false).await.unwrap();
    let proxy = FaultProxy::start(s3.addr()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    for (i, size) in [5 << 20, 4 << 20, 3 << 20].into_iter().enumerate() {
        std::fs::write(dir.path().join(format!("data/file{i}.bin")), noise(size, i as u64 + 1)).unwrap();
    }
    ok(repo(&s3.endpoint(), dir.path(), REPO, &["init"]), "init");
    (s3, proxy, dir)
}

fn same_files(a: &Path, b: &Path) {
    for entry in std::fs::read_dir(a).unwrap() {
        let path = entry.unwrap().path();
        let other = b.join(path.file_name().unwrap());
        assert!(std::fs::read(&path).unwrap() == std::fs::read(&other).unwrap(), "{} differs", other.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_throttles_slows_a_backup_down_but_does_not_fail_it() {
    let (_s3, proxy, dir) = setup().await;
    proxy.throttle(3);
    let out = repo_trying(&proxy.endpoint(), dir.path(), REPO, 5, &["backup", "data"]);
    ok(out, "a backup through a throttling store");
    assert_eq!(proxy.throttled(), 3, "the store was asked, and said 503, three times");
    ok(repo(&proxy.endpoint(), dir.path(), REPO, &["check", "--read-data"]), "check");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_stops_answering_mid_backup_fails_it_clearly_and_the_next_backup_completes() {
    let (s3, proxy, dir) = setup().await;
    let endpoint = proxy.endpoint();
    // Half a pack in, the store falls silent: a request cut in its middle, connections left hanging.
    proxy.silence_after(6 << 20);
    let started = Instant::now();
    let out = repo(&endpoint, dir.path(), REPO, &["backup", "data"]);
    let took = started.elapsed();
    assert!(!out.status.success(), "a backup into a silent store cannot succeed");
    let err = said(&out);
    assert!(err.contains(&endpoint), "the error names the store: {err}");
    // 2 attempts of 2 s per request, and a few requests in flight: bounded, not hanging.
    assert!(took < Duration::from_secs(60), "gave up after {took:?}");
    assert!(proxy.forwarded() >= 6 << 20, "the fault hit mid-backup");

    // The store answers again: what the interrupted backup left is valid, and reused.
    proxy.silence(false);
    let direct = s3.endpoint();
    ok(repo(&direct, dir.path(), REPO, &["check"]), "check after the cut");
    ok(repo(&direct, dir.path(), REPO, &["backup", "data"]), "the next backup");
    ok(repo(&direct, dir.path(), REPO, &["check", "--read-data"]), "check --read-data");
    ok(repo(&direct, dir.path(), REPO, &["restore", "latest", "--target", "out"]), "restore");
    same_files(&dir.path().join("data"), &dir.path().join("out/data"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_stops_answering_mid_restore_fails_it_clearly_and_a_second_restore_completes() {
    let (s3, proxy, dir) = setup().await;
    ok(repo(&s3.endpoint(), dir.path(), REPO, &["backup", "data"]), "backup");
    let before = proxy.forwarded();
    proxy.silence_after(before + 2_000);
    let out = repo(&proxy.endpoint(), dir.path(), REPO, &["restore", "latest", "--target", "out"]);
    assert!(!out.status.success(), "a restore from a silent store cannot succeed");
    let err = said(&out);
    assert!(err.contains(&proxy.endpoint()), "the error names the store: {err}");
    proxy.silence(false);
    ok(repo(&proxy.endpoint(), dir.path(), REPO, &["restore", "latest", "--target", "out"]), "second restore");
    same_files(&dir.path().join("data"), &dir.path().join("out/data"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_takes_a_read_broken_mid_pack_up_where_it_broke() {
    let (s3, proxy, dir) = setup().await;
    ok(repo(&s3.endpoint(), dir.path(), REPO, &["backup", "data"]), "backup");
    // A pack is read as it arrives: the retries of a request cannot help once
    // its answer has begun, and the restore asks again itself.
    proxy.cut_answers(2, 2 << 20);
    ok(repo(&proxy.endpoint(), dir.path(), REPO, &["restore", "latest", "--target", "out"]), "restore");
    assert_eq!(proxy.cuts(), 2, "two answers were cut off");
    same_files(&dir.path().join("data"), &dir.path().join("out/data"));
}

/// A tmpfs of `mib` MiB mounted at `dir`, or why not (no privilege to mount).
fn small_disk(dir: &Path, mib: u32) -> Result<(), String> {
    std::fs::create_dir_all(dir).unwrap();
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "fenice-faults"])
        .arg(dir)
        .output()
        .map_err(|e| format!("running mount: {e}"))?;
    match out.status.success() {
        true => Ok(()),
        false => Err(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
    }
}

fn grow_disk(dir: &Path, mib: u32) {
    let out = Command::new("mount").args(["-o", &format!("remount,size={mib}m")]).arg(dir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Unmounts the test's disk however the test ends.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_a_repository_or_a_restore_fails_clearly_and_loses_nothing() {
    let (s3, _proxy, dir) = setup().await;
    let disk = dir.path().join("disk");
    if let Err(why) = small_disk(&disk, 6) {
        eprintln!("SKIPPED: a full disk needs a small filesystem, and mounting a tmpfs failed here: {why}");
        return;
    }
    let _mounted = Mounted(disk.clone());
    let local = disk.join("repo").display().to_string();
    let direct = s3.endpoint();
    ok(repo(&direct, dir.path(), &local, &["init"]), "init on the small disk");
    let out = repo(&direct, dir.path(), &local, &["backup", "data"]);
    assert!(!out.status.success(), "12 MiB do not fit in 6");
    let err = said(&out);
    assert!(err.contains("No space left on device") && err.contains(&local), "names the cause and the place: {err}");
    ok(repo(&direct, dir.path(), &local, &["check"]), "what the full disk holds is still a valid repository");
    grow_disk(&disk, 64);
    ok(repo(&direct, dir.path(), &local, &["backup", "data"]), "the backup once there is room");
    ok(repo(&direct, dir.path(), &local, &["check", "--read-data"]), "check --read-data");

    // The other way: restoring from S3 onto a disk too small.
    ok(repo(&direct, dir.path(), REPO, &["backup", "data"]), "backup to S3");
    let target = dir.path().join("small-target");
    if let Err(why) = small_disk(&target, 6) {
        panic!("the second tmpfs did not mount after the first did: {why}");
    }
    let _target_mounted = Mounted(target.clone());
    let out = repo(&direct, dir.path(), REPO, &["restore", "latest", "--target", target.to_str().unwrap()]);
    assert!(!out.status.success(), "12 MiB do not fit in 6");
    let err = said(&out);
    assert!(err.contains("No space left on device"), "{err}");
    // Files restored whole before the disk filled may stay; nothing half-written does.
    let left: Vec<_> =
        std::fs::read_dir(target.join("data")).map(|d| d.map(|e| e.unwrap().path()).collect()).unwrap_or_default();
    assert!(left.len() < 3, "not every file fits: {left:?}");
    for path in &left {
        let source = dir.path().join("data").join(path.file_name().unwrap());
        assert!(std::fs::read(path).unwrap() == std::fs::read(&source).unwrap(), "{} is not whole", path.display());
    }
    ok(repo(&direct, dir.path(), REPO, &["check", "--read-data"]), "the repository is untouched by a failed restore");
}
