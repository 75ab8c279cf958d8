//! Point-in-time recovery of a tenant: PostgreSQL archives its WAL with
//! `fenice agent wal-push`, a physical base backup is taken, and the tenant is
//! recovered to a time between two invoices, and to the end of the archive.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use fenice::app::schema::SCHEMA;
use fenice::testkit::{PostgresOptions, PostgresServer, S3Server};

#[path = "common/faketime.rs"]
mod faketime;
#[path = "common/tenant.rs"]
mod tenant;
use tenant::{connect, issue};

const PASSWORD: &str = "pitr-test-pw";
const TENANT: &str = "acme";

struct Site {
    dir: tempfile::TempDir,
    s3: S3Server,
    repo: String,
}

impl Site {
    fn new() -> Self {
        let s3 = S3Server::start().expect("S3 server starts");
        Site { dir: tempfile::tempdir().unwrap(), s3, repo: "s3://tenant-wal/acme".into() }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// What `fenice` needs, in the agent's and in PostgreSQL's environment.
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.s3.endpoint()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("FENICE_S3_PATH_STYLE", "true".into()),
            ("FENICE_PASSWORD", PASSWORD.into()),
            ("FENICE_TENANT", TENANT.into()),
            ("FENICE_REPOSITORY", self.repo.clone()),
        ]
    }

    fn fenice(&self, args: &[&str]) -> Output {
        self.fenice_with(args, std::iter::empty::<(&str, std::ffi::OsString)>())
    }

    fn fenice_with<K: AsRef<std::ffi::OsStr>, V: AsRef<std::ffi::OsStr>>(
        &self,
        args: &[&str],
        env: impl IntoIterator<Item = (K, V)>,
    ) -> Output {
        Command::new(env!("CARGO_BIN_EXE_fenice"))
            .envs(self.env())
            .envs(env)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running fenice")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.fenice(args);
        assert!(out.status.success(), "fenice {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// A PostgreSQL whose every finished WAL segment goes to the repository.
    fn archiving_server(&self, options: PostgresOptions) -> PostgresServer {
        let options = self.env().into_iter().fold(options, |o, (k, v)| o.env(k, v));
        PostgresServer::start_with(
            options
                .setting("wal_level", "replica")
                .setting("archive_mode", "on")
                .setting("archive_timeout", "1")
                .setting("archive_command", format!("{} agent wal-push %p", env!("CARGO_BIN_EXE_fenice"))),
        )
        .expect("PostgreSQL starts")
    }

    /// Prepares a data directory (to `target`, or the end of the archive),
    /// starts PostgreSQL on it, and verifies it: the recovered server, its
    /// documents directory, and `agent verify`'s JSON report.
    fn recover(&self, name: &str, target: Option<&str>) -> (PostgresServer, PathBuf, serde_json::Value) {
        let pgdata = self.path(&format!("pgdata-{name}"));
        let documents = self.path(&format!("documents-{name}"));
        let (pgdata_arg, documents_arg) = (pgdata.to_str().unwrap(), documents.to_str().unwrap());
        let mut args = vec!["agent", "restore", "--json", "--pgdata", pgdata_arg];
        if let Some(target) = target {
            args.extend(["--target-time", target]);
        }
        let prepared: serde_json::Value = serde_json::from_str(&self.ok(&args)).unwrap();
        // NB: verified against the base it started from, which a later backup
        // may not be when it stops at a target time.
        let base =
            prepared["snapshot"].as_str().unwrap_or_else(|| panic!("agent restore names no base backup: {prepared}"));
        let server = self.recovering_server(&pgdata);
        let url = server.url("acme");
        let verify = ["agent", "verify", "--db", &url, "--documents", documents_arg, "--snapshot", base, "--json"];
        let report = self.ok(&verify);
        let report: serde_json::Value = serde_json::from_str(&report).unwrap();
        assert_eq!(report["verified"], true, "{report}");
        (server, documents, report)
    }

    /// A new repository and an archiving primary with the tenant's schema, one
    /// invoice and a physical base backup: the server, a connection to the
    /// tenant's database, and its documents directory.
    async fn backed_up_primary(&self) -> (PostgresServer, tokio_postgres::Client, PathBuf) {
        self.ok(&["repo", "init"]);
        let pg = self.archiving_server(PostgresOptions::new());
        let documents = self.path("documents");
        std::fs::create_dir_all(&documents).unwrap();
        connect(&pg.url("postgres")).await.batch_execute("CREATE DATABASE acme").await.unwrap();
        let mut db = connect(&pg.url("acme")).await;
        db.batch_execute(SCHEMA).await.unwrap();
        issue(&mut db, &documents, "2026").await;
        self.ok(&["agent", "backup", "--physical", "--db", &pg.url("acme")]);
        (pg, db, documents)
    }

    /// Starts PostgreSQL on a warm standby's data directory, with archiving on
    /// as a site's StatefulSet has it: once promoted, it archives its timeline.
    fn standby_server(&self, pgdata: &Path) -> PostgresServer {
        self.archiving_server(PostgresOptions::new().existing_data(pgdata))
    }

    /// `agent verify --promote` of the standby at `url`, its documents written
    /// to `documents`: its report.
    fn promote(&self, url: &str, documents: &Path) -> serde_json::Value {
        let result = documents.with_extension("termination-log");
        let (documents, result_arg) = (documents.to_str().unwrap(), result.to_str().unwrap());
        let out = self.ok(&[
            "agent",
            "verify",
            "--promote",
            "--db",
            url,
            "--documents",
            documents,
            "--result-file",
            result_arg,
        ]);
        assert!(out.contains("verified"), "{out}");
        serde_json::from_str(&std::fs::read_to_string(&result).unwrap()).unwrap()
    }

    /// A warm standby's init container on `pgdata` (`agent restore --standby
    /// --keep-initialised --set-aside-diverged`): what it printed.
    fn standby_init(&self, pgdata: &Path) -> String {
        let args = ["--standby", "--keep-initialised", "--set-aside-diverged"];
        self.ok(&[&["agent", "restore", "--pgdata", pgdata.to_str().unwrap()][..], &args[..]].concat())
    }

    /// Starts PostgreSQL on a prepared data directory: it replays the archive.
    fn recovering_server(&self, pgdata: &Path) -> PostgresServer {
        let options = self.env().into_iter().fold(PostgresOptions::new(), |o, (k, v)| o.env(k, v));
        PostgresServer::start_with(options.existing_data(pgdata)).expect("PostgreSQL starts on the restored data")
    }
}

/// Switches to a new WAL segment and waits until the archiver has pushed it.
async fn archive_now(db: &tokio_postgres::Client) {
    let segment: String = db.query_one("SELECT pg_walfile_name(pg_switch_wal())", &[]).await.unwrap().get(0);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let row = db
            .query_one("SELECT coalesce(last_archived_wal, ''), failed_count, coalesce(last_failed_wal, '') FROM pg_stat_archiver", &[])
            .await
            .unwrap();
        let archived: String = row.get(0);
        if archived >= segment {
            return;
        }
        assert!(Instant::now() < deadline, "segment {segment} not archived: {row:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The database server's time now, as a recovery target is written.
async fn database_now(db: &tokio_postgres::Client) -> String {
    let now = "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')";
    db.query_one(now, &[]).await.unwrap().get(0)
}

async fn count(url: &str) -> i64 {
    connect(url).await.query_one("SELECT count(*) FROM invoices", &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovers_to_a_time_between_two_invoices_and_to_the_end_of_the_archive() {
    let site = Site::new();
    site.ok(&["repo", "init"]);
    let pg = site.archiving_server(PostgresOptions::new());
    let documents = site.path("documents");
    std::fs::create_dir_all(&documents).unwrap();
    let admin = connect(&pg.url("postgres")).await;
    admin.batch_execute("CREATE DATABASE acme").await.unwrap();
    let mut db = connect(&pg.url("acme")).await;
    db.batch_execute(SCHEMA).await.unwrap();
    for _ in 0..5 {
        issue(&mut db, &documents, "2026").await;
    }
    let url = pg.url("acme");
    site.ok(&["agent", "backup", "--physical", "--db", &url]);

    // Two invoices after the backup, then the target instant, then three more.
    for _ in 0..2 {
        issue(&mut db, &documents, "2026").await;
    }
    let target = database_now(&db).await;
    for _ in 0..3 {
        issue(&mut db, &documents, "2026").await;
    }
    archive_now(&db).await;

    // To the target: the 7 invoices committed before it, their documents written out of the database.
    let (recovered, documents, report) = site.recover("target", Some(&target));
    assert_eq!(report["documents_rebuilt"], 7, "{report}");
    assert_eq!(count(&recovered.url("acme")).await, 7);
    assert_eq!(std::fs::read_dir(&documents).unwrap().count(), 7);
    drop(recovered);

    // To the end of the archive: all 10.
    let (recovered, _, _) = site.recover("end", None);
    assert_eq!(count(&recovered.url("acme")).await, 10);
}

/// The agent's clock set back between two base backups, for real (the second
/// `agent backup` under libfaketime): the second is dated between the first and
/// the target time, though the database began it after the target. A recovery
/// to the target starts from the first; from the second, PostgreSQL could
/// never stop at the target, which lies before that base was consistent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovery_to_a_time_starts_from_a_base_the_database_began_before_it() {
    let site = Site::new();
    let (pg, mut db, documents) = site.backed_up_primary().await;
    let dated = |site: &Site| -> Vec<jiff::Timestamp> {
        let listed: serde_json::Value = serde_json::from_str(&site.ok(&["repo", "snapshots", "--json"])).unwrap();
        let time = |s: &serde_json::Value| s["snapshot"]["time"].as_str().unwrap().parse().unwrap();
        listed.as_array().unwrap().iter().map(time).collect()
    };
    let first = dated(&site)[0];
    tokio::time::sleep(Duration::from_secs(4)).await;
    issue(&mut db, &documents, "2026").await;
    let target = database_now(&db).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    issue(&mut db, &documents, "2026").await;

    // Set back so that the second is dated halfway between the first and the target.
    let target_time: jiff::Timestamp = target.parse().unwrap();
    let halfway = first + (target_time.duration_since(first) / 2);
    let back = jiff::Timestamp::now().duration_since(halfway).as_secs() + 1;
    let clock = site.path("clock");
    std::fs::write(&clock, format!("-{back}")).unwrap();
    let out = site.fenice_with(&["agent", "backup", "--physical", "--db", &pg.url("acme")], faketime::env(&clock));
    assert!(out.status.success(), "backup under a clock set back: {}", String::from_utf8_lossy(&out.stderr));
    archive_now(&db).await;
    let times = dated(&site);
    assert_eq!(times.len(), 2, "{times:?}");
    let second = times.into_iter().find(|t| *t != first).unwrap();
    assert!(first < second && second < target_time, "the second is dated {second}, between {first} and {target}");

    let (recovered, _, report) = site.recover("target", Some(&target));
    assert_eq!(
        count(&recovered.url("acme")).await,
        2,
        "the invoice before the backup and the one before the target: {report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_push_is_idempotent_and_refuses_other_content_under_the_same_name() {
    let site = Site::new();
    site.ok(&["repo", "init"]);
    let wal = site.path("000000010000000000000001");
    std::fs::write(&wal, vec![7u8; 64 * 1024]).unwrap();
    site.ok(&["agent", "wal-push", wal.to_str().unwrap()]);
    // PostgreSQL retries a push after a crash: the same content again succeeds.
    site.ok(&["agent", "wal-push", wal.to_str().unwrap()]);
    std::fs::write(&wal, vec![8u8; 64 * 1024]).unwrap();
    let out = site.fenice(&["agent", "wal-push", wal.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already archived with other content"));

    let fetched = site.path("fetched");
    site.ok(&["agent", "wal-fetch", "000000010000000000000001", fetched.to_str().unwrap()]);
    assert_eq!(std::fs::read(&fetched).unwrap(), vec![7u8; 64 * 1024]);
    // Another tenant's name for the same file finds nothing.
    let out = site.fenice(&["agent", "wal-fetch", "--tenant", "other", "000000010000000000000001", "x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not archived"));
}

/// `wal-push --via SOCKET` hands the file to one long-running `wal-archiver`,
/// which archives it as a direct push would: idempotent, other content under
/// the same name refused (the archiver's words reach the client), many at
/// once; no archiver, a second archiver and a malformed request each get a
/// clear answer; SIGTERM stops it and removes its socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_push_via_the_archiver_archives_as_a_direct_push_does() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    let site = Site::new();
    site.ok(&["repo", "init"]);
    let socket = site.path("wal-archiver.sock");
    let via = socket.to_str().unwrap();
    let segment = |n: u8, fill: u8| {
        let wal = site.path(&format!("0000000100000000000000{n:02X}"));
        std::fs::write(&wal, vec![fill; 64 * 1024]).unwrap();
        wal
    };
    let first = segment(1, 7);
    let out = site.fenice(&["agent", "wal-push", "--via", via, first.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("no WAL archiver answers at"), "{stderr}");

    let log = std::fs::File::create(site.path("archiver.log")).unwrap();
    let mut archiver = Command::new(env!("CARGO_BIN_EXE_fenice"))
        .envs(site.env())
        .args(["agent", "wal-archiver", "--socket", via, "--parallelism", "2"])
        .stdin(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(Instant::now() < deadline, "{}", std::fs::read_to_string(site.path("archiver.log")).unwrap());
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = site.fenice(&["agent", "wal-archiver", "--socket", via]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("another WAL archiver already answers"), "{out:?}");

    site.ok(&["agent", "wal-push", "--via", via, first.to_str().unwrap()]);
    site.ok(&["agent", "wal-push", "--via", via, first.to_str().unwrap()]);
    let clash = segment(1, 8);
    let out = site.fenice(&["agent", "wal-push", "--via", via, clash.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("already archived with other content"), "{stderr}");

    // Eight at once, two at a time at the archiver.
    let pushes: Vec<_> = (2..10u8)
        .map(|n| {
            let wal = segment(n, n);
            Command::new(env!("CARGO_BIN_EXE_fenice"))
                .envs(site.env())
                .args(["agent", "wal-push", "--via", via, wal.to_str().unwrap()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for push in pushes {
        let out = push.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    for (n, fill) in [(1u8, 7u8), (2, 2), (9, 9)] {
        let fetched = site.path(&format!("fetched-{n}"));
        let name = format!("0000000100000000000000{n:02X}");
        site.ok(&["agent", "wal-fetch", &name, fetched.to_str().unwrap()]);
        assert_eq!(std::fs::read(&fetched).unwrap(), vec![fill; 64 * 1024], "{name}");
    }

    let mut stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\n").await.unwrap();
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).await.unwrap();
    assert!(answer.starts_with("error: not a segment header"), "{answer}");
    site.ok(&["agent", "wal-push", "--via", via, segment(10, 10).to_str().unwrap()]);

    // SAFETY: kill only sends a signal, to the child this test started.
    unsafe { libc::kill(archiver.id() as i32, libc::SIGTERM) };
    assert!(archiver.wait().unwrap().success());
    assert!(!socket.exists(), "the archiver left its socket");
}

/// The RPO with `archive_timeout = 1`: invoices are issued without pause, the
/// primary is killed with SIGKILL (its last, unfinished WAL segment is lost),
/// and the tenant is recovered to the end of the archive. The recovered
/// invoices must be exactly the first N issued, verified; how many seconds of
/// committed invoices were lost is printed (`-- --nocapture`), not asserted:
/// it depends on the machine's load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_loses_only_the_last_seconds_of_invoices() {
    let site = Site::new();
    let (pg, mut db, documents) = site.backed_up_primary().await;

    // Issue for a few seconds, noting when each commit returned.
    let mut committed = vec![(1, Instant::now())];
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        let number = issue(&mut db, &documents, "2026").await;
        committed.push((number, Instant::now()));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // SAFETY: kill only sends a signal, to the server's own process group.
    unsafe { libc::kill(-(pg.pid() as i32), libc::SIGKILL) };
    let killed_at = Instant::now();
    drop(db);
    drop(pg);

    let (recovered, _, _) = site.recover("end", None);
    let restored = count(&recovered.url("acme")).await;
    let issued = committed.len() as i64;
    assert!(restored >= 1 && restored <= issued, "restored {restored} of {issued}");
    let last_restored = committed[restored as usize - 1].1;
    let last_committed = committed.last().unwrap().1;
    println!(
        "RPO: {} of {} committed invoices lost, {:.2} s of commits (primary killed {:.2} s after its last commit)",
        issued - restored,
        issued,
        (last_committed - last_restored).as_secs_f64(),
        (killed_at - last_committed).as_secs_f64(),
    );
}

/// A failover's Job at a Kubernetes site: `agent verify --promote` lets a warm
/// standby replay up to the newest archived segment, promotes it, verifies it,
/// and writes its report (with the newest restored invoice's time, for the RPO)
/// where the Job's termination message is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_standby_is_promoted_after_replaying_the_whole_archive_and_reports_its_last_write() {
    let site = Site::new();
    let (pg, mut db, documents) = site.backed_up_primary().await;
    let url = pg.url("acme");
    let standby_data = site.path("pgdata-standby");
    site.ok(&["agent", "restore", "--pgdata", standby_data.to_str().unwrap(), "--standby"]);
    let standby = site.standby_server(&standby_data);

    // The primary goes on after the base backup; every segment reaches the archive.
    for _ in 0..5 {
        issue(&mut db, &documents, "2026").await;
    }
    archive_now(&db).await;
    let issued = count(&url).await;
    let newest: jiff::Timestamp = db.query_one("SELECT max(created_at) FROM invoices", &[]).await.unwrap().get(0);
    drop(db);
    drop(pg);

    let standby_documents = site.path("documents-standby");
    let standby_url = standby.url("acme");
    let report = site.promote(&standby_url, &standby_documents);
    assert_eq!(report["verified"], true, "{report}");
    let last_write: jiff::Timestamp = report["last_write"].as_str().expect("the last write's time").parse().unwrap();
    assert_eq!(last_write, newest, "the primary's newest invoice: {report}");
    let promoted = connect(&standby_url).await;
    let in_recovery: bool = promoted.query_one("SELECT pg_is_in_recovery()", &[]).await.unwrap().get(0);
    assert!(!in_recovery, "promoted");
    assert_eq!(count(&standby_url).await, issued, "nothing the archive held was left behind");

    // Asked again (a retried step), it finds the database promoted and verifies it again.
    site.ok(&[
        "agent",
        "verify",
        "--promote",
        "--db",
        &standby_url,
        "--documents",
        standby_documents.to_str().unwrap(),
    ]);
}

/// Failover and failback with real PostgreSQL, as the sites' pods run them:
/// the standby is promoted (timeline 2) and serves; the old primary's data
/// directory, a primary of timeline 1, is set aside whole by the standby's
/// init container and a fresh standby made there, which follows the archive
/// onto timeline 2; promoted in the failback (timeline 3), it holds every
/// invoice of both sites; the site it left is set aside in turn. A standby,
/// and a primary of the newest timeline, are left as they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_over_tenant_fails_back_through_a_fresh_standby_at_its_old_primary() {
    let site = Site::new();
    let (pg, mut db, documents) = site.backed_up_primary().await;
    let standby_data = site.path("pgdata-standby");
    assert!(site.standby_init(&standby_data).contains("prepared"), "a first start makes the standby");
    let standby = site.standby_server(&standby_data);
    for _ in 0..3 {
        issue(&mut db, &documents, "2026").await;
    }
    archive_now(&db).await;
    drop(db);
    let (primary_data, _primary_dir) = pg.crash();

    // The failover: the standby is promoted onto timeline 2 and serves.
    let standby_url = standby.url("acme");
    let report = site.promote(&standby_url, &site.path("documents-standby"));
    assert_eq!(report["verified"], true, "{report}");
    let mut served = connect(&standby_url).await;
    for _ in 0..2 {
        issue(&mut served, &site.path("documents-standby"), "2026").await;
    }
    archive_now(&served).await;
    let newest: jiff::Timestamp = served.query_one("SELECT max(created_at) FROM invoices", &[]).await.unwrap().get(0);
    let issued = count(&standby_url).await;
    assert_eq!(issued, 6, "one before the backup, three at the primary, two after the failover");
    assert!(site.standby_init(&site.path("pgdata-standby")).contains("newest database"), "the serving one stays");

    // The old primary comes back as a standby: its database set aside whole.
    let said = site.standby_init(&primary_data);
    assert!(said.contains("held a primary of timeline 1, which timeline 2 replaced"), "{said}");
    let aside: Vec<_> = std::fs::read_dir(primary_data.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().contains(".diverged-tl1-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert!(aside[0].join("PG_VERSION").exists(), "kept whole");
    assert!(primary_data.join("standby.signal").exists(), "a fresh standby in its place");
    assert!(site.standby_init(&primary_data).contains("left as it is"), "a standby restarted stays one");
    let back = site.standby_server(&primary_data);

    // The failback: the site serving is stopped, the old primary promoted onto timeline 3.
    drop(served);
    let (left_data, _left_dir) = standby.crash();
    let back_url = back.url("acme");
    let report = site.promote(&back_url, &site.path("documents-back"));
    assert_eq!(report["verified"], true, "{report}");
    let last_write: jiff::Timestamp = report["last_write"].as_str().unwrap().parse().unwrap();
    assert_eq!(last_write, newest, "the newest invoice written after the failover: {report}");
    assert_eq!(count(&back_url).await, issued, "every invoice of both sites");
    let timeline: String =
        connect(&back_url).await.query_one("SELECT pg_walfile_name(pg_current_wal_lsn())", &[]).await.unwrap().get(0);
    assert!(timeline.starts_with("00000003"), "{timeline}");

    let said = site.standby_init(&left_data);
    assert!(said.contains("held a primary of timeline 2, which timeline 3 replaced"), "{said}");
}
