//! `fenice agent` backup and restore of one tenant against a real PostgreSQL:
//! consistency under concurrent writes, verification, and the errors an SRE
//! must be able to read.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use fenice::app::schema::SCHEMA;
use fenice::testkit::{PostgresServer, S3Server};

#[path = "common/faketime.rs"]
mod faketime;
#[path = "common/tenant.rs"]
mod tenant;
use tenant::{connect, issue};

const PASSWORD: &str = "agent-test-pw";

struct Tenant {
    dir: tempfile::TempDir,
    pg: PostgresServer,
}

impl Tenant {
    fn new() -> Self {
        Tenant { dir: tempfile::tempdir().unwrap(), pg: PostgresServer::start().expect("PostgreSQL starts") }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn repo(&self) -> String {
        self.path("repo").display().to_string()
    }

    fn fenice(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_fenice"))
            .env_remove("FENICE_REPOSITORY")
            .env("FENICE_PASSWORD", PASSWORD)
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

    /// A repository, and the database `acme` with `invoices` invoices of
    /// `series`; returns the live database and its documents directory.
    async fn with_invoices(&self, series: &str, invoices: usize) -> (tokio_postgres::Client, PathBuf) {
        self.init();
        let documents = self.path("documents");
        std::fs::create_dir_all(&documents).unwrap();
        let mut db = self.create_db("acme").await;
        for _ in 0..invoices {
            issue(&mut db, &documents, series).await;
        }
        (db, documents)
    }

    fn backed_up(&self) {
        let out = self.backup("acme");
        assert!(out.status.success(), "backup failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn init(&self) {
        self.ok(&["repo", "--repo", &self.repo(), "init"]);
    }

    async fn create_db(&self, name: &str) -> tokio_postgres::Client {
        let admin = connect(&self.pg.url("postgres")).await;
        admin.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
        let db = connect(&self.pg.url(name)).await;
        db.batch_execute(SCHEMA).await.unwrap();
        db
    }

    fn backup(&self, db: &str) -> Output {
        self.fenice(&["agent", "backup", "--tenant", "acme", "--db", &self.pg.url(db), "--repo", &self.repo()])
    }

    fn restore(&self, db: &str, documents: &Path, extra: &[&str]) -> Output {
        let (url, repo) = (self.pg.url(db), self.repo());
        let mut args =
            vec!["agent", "restore", "--tenant", "acme", "--db", &url, "--documents", documents.to_str().unwrap()];
        args.extend(["--repo", &repo]);
        args.extend(extra);
        self.fenice(&args)
    }
}

async fn count(url: &str, sql: &str) -> i64 {
    connect(url).await.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_during_writes_restores_exactly_the_dumped_state() {
    let t = Tenant::new();
    let (_db, documents) = t.with_invoices("2026", 50).await;
    // A writer keeps issuing invoices while the backup runs.
    let stop = Arc::new(AtomicBool::new(false));
    let issued = Arc::new(AtomicU64::new(50));
    let writer = {
        let (stop, issued, documents, url) = (stop.clone(), issued.clone(), documents.clone(), t.pg.url("acme"));
        tokio::spawn(async move {
            let mut db = connect(&url).await;
            while !stop.load(Ordering::Relaxed) {
                issue(&mut db, &documents, "2026").await;
                issued.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let out = tokio::task::spawn_blocking({
        let t_args = (t.pg.url("acme"), t.repo());
        move || {
            Command::new(env!("CARGO_BIN_EXE_fenice"))
                .env("FENICE_PASSWORD", PASSWORD)
                .args(["agent", "backup", "--tenant", "acme", "--json", "--db", &t_args.0])
                .args(["--repo", &t_args.1])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    assert!(out.status.success(), "backup failed: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let recorded = report["verification"]["last_numbers"]["2026"].as_i64().unwrap();
    assert!(recorded >= 50, "the record saw the invoices issued before the backup: {report}");

    let restored_docs = t.path("restored-documents");
    let out = t.restore("acme_restored", &restored_docs, &["--json"]);
    assert!(out.status.success(), "restore failed: {}", String::from_utf8_lossy(&out.stderr));
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["verified"], true);
    // The restored database holds exactly what the backup recorded, not what was issued after.
    let restored_url = t.pg.url("acme_restored");
    assert_eq!(count(&restored_url, "SELECT count(*) FROM invoices").await, recorded);
    assert_eq!(count(&restored_url, "SELECT max(number) FROM invoices").await, recorded);
    assert!(issued.load(Ordering::Relaxed) as i64 >= recorded);
    for entry in std::fs::read_dir(&restored_docs).unwrap() {
        let name = entry.unwrap().file_name();
        assert_eq!(
            std::fs::read(restored_docs.join(&name)).unwrap(),
            std::fs::read(documents.join(&name)).unwrap(),
            "{name:?} restored as it was"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_refuses_a_non_empty_database_unless_forced() {
    let t = Tenant::new();
    let (mut db, documents) = t.with_invoices("A", 3).await;
    t.backed_up();

    // The live database is not empty: restoring over it must be refused, and change nothing.
    for _ in 0..2 {
        issue(&mut db, &documents, "A").await;
    }
    let out = t.restore("acme", &t.path("other-docs"), &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not empty") && err.contains("--force"), "{err}");
    assert_eq!(count(&t.pg.url("acme"), "SELECT count(*) FROM invoices").await, 5);

    // A documents directory that holds files is refused too.
    std::fs::create_dir_all(t.path("busy-docs")).unwrap();
    std::fs::write(t.path("busy-docs/keep.txt"), "mine").unwrap();
    let out = t.restore("fresh", &t.path("busy-docs"), &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("documents directory"), "refused for the documents");
    assert!(t.path("busy-docs/keep.txt").exists());

    let out = t.restore("acme", &documents, &["--force"]);
    assert!(out.status.success(), "forced restore failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(count(&t.pg.url("acme"), "SELECT count(*) FROM invoices").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_dump_is_a_clear_error() {
    let t = Tenant::new();
    let (_db, _documents) = t.with_invoices("2026", 20).await;
    t.backed_up();
    // Flip a byte in the middle of every data pack.
    for entry in walk(&t.path("repo/data")) {
        let mut bytes = std::fs::read(&entry).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x5a;
        std::fs::write(&entry, bytes).unwrap();
    }
    let out = t.restore("acme_restored", &t.path("restored"), &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("restoring snapshot") && err.contains("pack"), "names the damage: {err}");
    assert!(!err.contains("verified"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_is_a_clear_error_without_the_password() {
    let t = Tenant::new();
    t.init();
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("postgres://invoicer:Sup3r-Secret-PW@127.0.0.1:{port}/acme");
    let out = t.fenice(&["agent", "backup", "--tenant", "acme", "--db", &url, "--repo", &t.repo()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("database acme at 127.0.0.1:{port} as user invoicer")), "names the database: {err}");
    assert!(!err.contains("Sup3r-Secret-PW"), "the password leaked: {err}");
    let snapshots = t.path("repo/snapshots");
    assert!(!snapshots.exists() || snapshots.read_dir().unwrap().next().is_none(), "no snapshot written");
}

/// The agent's clock set back three hours between two backups of a tenant, for
/// real: the second backup is dated before the first and names it as its
/// previous, and a restore of the newest gives back the invoices of the
/// second, not the older state dated last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_backup_taken_after_the_clock_was_set_back_is_the_newest() {
    let t = Tenant::new();
    let (mut db, documents) = t.with_invoices("2026", 3).await;
    t.backed_up();
    for _ in 0..2 {
        issue(&mut db, &documents, "2026").await;
    }
    let clock = t.path("clock");
    std::fs::write(&clock, "-3h").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fenice"))
        .env("FENICE_PASSWORD", PASSWORD)
        .envs(faketime::env(&clock))
        .args(["agent", "backup", "--tenant", "acme", "--db", &t.pg.url("acme"), "--repo", &t.repo()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "backup under a clock set back: {}", String::from_utf8_lossy(&out.stderr));

    let listed: serde_json::Value =
        serde_json::from_str(&t.ok(&["repo", "--repo", &t.repo(), "snapshots", "--json"])).unwrap();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 2);
    let time = |s: &serde_json::Value| s["snapshot"]["time"].as_str().unwrap().parse::<jiff::Timestamp>().unwrap();
    let (second, first) = (&listed[0], &listed[1]);
    assert!(time(first).duration_since(time(second)) > jiff::SignedDuration::from_mins(170), "{listed:?}");
    assert_eq!(second["snapshot"]["previous"], first["id"], "the second follows the first");

    let out = t.restore("acme_restored", &t.path("restored-documents"), &["--json"]);
    assert!(out.status.success(), "restore failed: {}", String::from_utf8_lossy(&out.stderr));
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["snapshot"], second["id"], "the newest is the one taken after the clock moved: {result}");
    assert_eq!(count(&t.pg.url("acme_restored"), "SELECT count(*) FROM invoices").await, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_backup_to_s3_restores_verified() {
    let t = Tenant::new();
    let s3 = S3Server::start().expect("S3 server starts");
    let repo = "s3://tenant-backups/acme".to_string();
    let s3_env = [
        ("AWS_ENDPOINT_URL", s3.endpoint()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("FENICE_S3_PATH_STYLE", "true".into()),
    ];
    let fenice = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_fenice"))
            .env("FENICE_PASSWORD", PASSWORD)
            .envs(s3_env.clone())
            .args(args)
            .output()
            .unwrap()
    };
    let out = fenice(&["repo", "--repo", &repo, "init"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let documents = t.path("documents");
    std::fs::create_dir_all(&documents).unwrap();
    let mut db = t.create_db("acme").await;
    for _ in 0..10 {
        issue(&mut db, &documents, "2026").await;
    }
    let url = t.pg.url("acme");
    let out = fenice(&["agent", "backup", "--tenant", "acme", "--db", &url, "--repo", &repo]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let restored_url = t.pg.url("restored");
    let restored_docs = t.path("restored");
    let out = fenice(&[
        "agent",
        "restore",
        "--tenant",
        "acme",
        "--db",
        &restored_url,
        "--documents",
        restored_docs.to_str().unwrap(),
        "--repo",
        &repo,
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("verified"));
    assert_eq!(count(&restored_url, "SELECT count(*) FROM invoices").await, 10);
}

/// Runs `fenice args…` until its child process `name` has moved 1 MiB
/// through the pipe between them (`pipe`: "rchar" when the child reads it,
/// "wchar" when it writes), stops it there (SIGSTOP: the child goes on until
/// the pipe is full or empty, then waits on it), checks the child still runs,
/// and SIGKILLs it. Returns once the child has ended too, with what the
/// process had printed.
fn killed_while_it_runs(args: &[&str], name: &str, pipe: &str) -> String {
    use fenice::testkit::process::{child_past, is_alive};
    let mut fenice = Command::new(env!("CARGO_BIN_EXE_fenice"))
        .env("FENICE_PASSWORD", PASSWORD)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let child = loop {
        if let Some(child) = child_past(fenice.id(), name, pipe, 1 << 20) {
            break child;
        }
        if let Some(status) = fenice.try_wait().unwrap() {
            let out = fenice.wait_with_output().unwrap();
            panic!("fenice {args:?} ended ({status}) before running {name}: {}", String::from_utf8_lossy(&out.stderr));
        }
        assert!(std::time::Instant::now() < deadline, "fenice {args:?} never ran {name}");
        std::thread::sleep(std::time::Duration::from_millis(1));
    };
    let pid = libc::pid_t::try_from(fenice.id()).unwrap();
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(is_alive(child), "{name} still runs when fenice is killed");
    fenice.kill().unwrap();
    let out = fenice.wait_with_output().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while is_alive(child) {
        assert!(std::time::Instant::now() < deadline, "{name} ({child}) outlived fenice by 30 s");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Waits until `left` sessions are open on database `name` besides the
/// asker's: a killed client's server process ends a moment after the client,
/// once it has seen the connection close (within 30 s, or `what` did not end).
async fn sessions_come_down_to(t: &Tenant, name: &str, left: i64, what: &str) {
    let sql = format!("SELECT count(*) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let open = count(&t.pg.url("postgres"), &sql).await;
        if open == left {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: {open} sessions on {name} after 30 s, not {left}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The agent SIGKILLed while its pg_dump runs, then while its pg_restore
/// runs (into an empty database, then `--force` over one that holds a
/// restore): pg_dump and pg_restore end with it and leave no session behind;
/// the tenant's database is untouched and the repository checks clean; the
/// restore's transaction is rolled back, so the database is left empty and
/// the next restore needs no `--force`; every next run completes, verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_killed_during_pg_dump_or_pg_restore_leaves_nothing_half_done() {
    let t = Tenant::new();
    let (db, _documents) = t.with_invoices("2026", 10).await;
    // 20 MB of rows: more than a pipe holds, so the dump and the restore are
    // both still running when the agent is stopped.
    db.batch_execute(
        "CREATE TABLE notes AS SELECT g AS id, repeat(md5(g::text), 6) AS body FROM generate_series(1, 100000) g",
    )
    .await
    .unwrap();
    let url = t.pg.url("acme");
    let (repo, tenant_sum) = (t.repo(), "SELECT count(*) + sum(length(body)) FROM notes");
    let before = (count(&url, "SELECT count(*) FROM invoices").await, count(&url, tenant_sum).await);

    let said = killed_while_it_runs(
        &["agent", "backup", "--tenant", "acme", "--db", &url, "--repo", &repo],
        "pg_dump",
        "wchar",
    );
    assert!(!said.contains("panicked"), "{said}");
    sessions_come_down_to(&t, "acme", 1, "pg_dump's session outlived it (the test's own stays)").await;
    assert_eq!((count(&url, "SELECT count(*) FROM invoices").await, count(&url, tenant_sum).await), before);
    let listed: serde_json::Value =
        serde_json::from_str(&t.ok(&["repo", "--repo", &repo, "snapshots", "--json"])).unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(0), "no snapshot from the killed backup: {listed}");
    t.ok(&["repo", "--repo", &repo, "check", "--read-data"]);
    t.backed_up();

    let copy = t.pg.url("copy");
    let documents = t.path("copy-documents");
    let restore = |extra: &[&str]| -> Vec<String> {
        let mut args = vec!["agent", "restore", "--tenant", "acme", "--db", &copy];
        args.extend(["--documents", documents.to_str().unwrap(), "--repo", &repo]);
        args.extend(extra);
        args.into_iter().map(str::to_owned).collect()
    };
    let tables = "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'";
    for forced in [false, true] {
        let args = restore(if forced { &["--force"] } else { &[] });
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let said = killed_while_it_runs(&args, "pg_restore", "rchar");
        assert!(!said.contains("panicked"), "{said}");
        sessions_come_down_to(&t, "copy", 0, "pg_restore's session outlived it").await;
        assert_eq!(
            count(&copy, tables).await,
            0,
            "the killed restore's transaction was rolled back (forced: {forced})"
        );
        // Nothing to force: the database and the documents directory are empty.
        let out = t.restore("copy", &documents, &["--json"]);
        assert!(out.status.success(), "restore after the kill: {}", String::from_utf8_lossy(&out.stderr));
        let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(result["verified"], true, "{result}");
        assert_eq!((count(&copy, "SELECT count(*) FROM invoices").await, count(&copy, tenant_sum).await), before);
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_that_does_not_match_its_record_says_what_differs() {
    let t = Tenant::new();
    let (db, _documents) = t.with_invoices("2026", 3).await;
    // A document whose stored content no longer matches the hash its invoice recorded.
    db.batch_execute("UPDATE documents SET content = 'tampered'::bytea WHERE file_name = 'IT01234567890_00002.xml'")
        .await
        .unwrap();
    t.backed_up();
    let result = t.path("termination-log");
    let out = t.restore("restored", &t.path("restored"), &["--result-file", result.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("differs from what snapshot"), "{err}");
    assert!(err.contains("document IT01234567890_00002.xml: recorded sha256"), "{err}");
    assert!(err.contains("in the database"), "{err}");
    // The same, as the report a restore Job leaves for the operator.
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&result).unwrap()).unwrap();
    assert_eq!(report["verified"], false, "{report}");
    let mismatches = report["mismatches"].to_string();
    assert!(mismatches.contains("document IT01234567890_00002.xml: recorded sha256"), "{report}");
}

/// A warm standby's init container runs again on every start of its pod: a
/// data directory that holds a database (replaying, or promoted since) is left
/// as it is, without the repository being needed.
#[test]
fn a_prepared_standby_is_left_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let pgdata = dir.path().join("pgdata");
    std::fs::create_dir_all(&pgdata).unwrap();
    std::fs::write(pgdata.join("PG_VERSION"), "15\n").unwrap();
    std::fs::write(pgdata.join("standby.signal"), "").unwrap();
    let run = |extra: &[&str]| {
        let missing = dir.path().join("no-such-repository");
        let mut args = vec!["agent", "restore", "--tenant", "acme", "--pgdata", pgdata.to_str().unwrap(), "--standby"];
        args.extend(["--repo", missing.to_str().unwrap()]);
        args.extend(extra);
        Command::new(env!("CARGO_BIN_EXE_fenice"))
            .env("FENICE_PASSWORD", PASSWORD)
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = run(&["--keep-initialised"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("already holds a database: left as it is"));
    assert!(pgdata.join("standby.signal").exists());
    // Without the flag the same directory is not a place to prepare a standby in.
    assert!(!run(&[]).status.success());
}
