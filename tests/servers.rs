//! Smoke tests of the test kit's real servers (PostgreSQL, moto S3, Azurite): each
//! starts, does real work, and leaves no process and no directory behind.
//!
//! NB: these never skip. A missing program fails the test with a message saying to
//! run scripts/prerequisites.sh, which CI runs first.

use std::error::Error as _;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use fenice::testkit::{
    self, AzuriteServer, DEV_ACCOUNT, DEV_ACCOUNT_KEY, PostgresOptions, PostgresServer, S3Server, http,
};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The server, or a panic with the whole error chain (which says what to do).
fn started<T>(result: testkit::Result<T>) -> T {
    result.unwrap_or_else(|e| {
        let mut message = e.to_string();
        let mut source = e.source();
        while let Some(cause) = source {
            message.push_str(&format!("\ncaused by: {cause}"));
            source = cause.source();
        }
        panic!("{message}")
    })
}

#[test]
fn postgres_stores_and_returns_a_row_through_psql() {
    let pg = started(PostgresServer::start());
    assert!(pg.url("app").starts_with(&format!("postgres://postgres@127.0.0.1:{}/app", pg.port())));

    let out = pg
        .client("psql")
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .args(["-c", "CREATE TABLE invoice (id int PRIMARY KEY, total numeric NOT NULL)"])
        .args(["-c", "INSERT INTO invoice VALUES (1, 12.50), (2, 7.25)"])
        .args(["-c", "SELECT sum(total) FROM invoice"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "psql failed: {stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "19.75", "{stderr}");

    // The Unix socket answers too, and it is the same server.
    let out = pg
        .client("psql")
        .arg("-h")
        .arg(pg.socket_dir())
        .args(["-X", "-A", "-t", "-c", "SELECT current_setting('port') || ' ' || count(*) FROM invoice"])
        .output()
        .unwrap();
    assert!(out.status.success(), "psql over the socket failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("{} 2", pg.port()));
}

#[test]
fn s3_creates_a_bucket_and_lists_it() {
    let s3 = started(S3Server::start());
    assert_eq!(s3.endpoint(), format!("http://127.0.0.1:{}", s3.port()));

    let created = http::request(s3.addr(), "PUT", "/fenice-smoke", &[], &[]).unwrap();
    assert_eq!(created.status, 200, "{}", created.text());

    let listing = http::get(s3.addr(), "/").unwrap();
    assert_eq!(listing.status, 200);
    assert!(listing.text().contains("<Name>fenice-smoke</Name>"), "{}", listing.text());
    let missing = http::get(s3.addr(), "/no-such-bucket").unwrap();
    assert_eq!(missing.status, 404, "{}", missing.text());
    assert!(missing.text().contains("<Code>NoSuchBucket</Code>"), "{}", missing.text());
}

/// The `Authorization` header of Azure Storage's Shared Key scheme, for a request
/// without body or standard headers (Azurite serves the account under a path, so
/// the canonical resource names the account twice).
fn shared_key(method: &str, path: &str, query: &[(&str, &str)], ms_headers: &[(&str, &str)]) -> String {
    let mut headers: Vec<_> = ms_headers.iter().map(|(n, v)| format!("{}:{v}\n", n.to_lowercase())).collect();
    headers.sort();
    let mut query: Vec<_> = query.iter().map(|(n, v)| format!("\n{}:{v}", n.to_lowercase())).collect();
    query.sort();
    // VERB, then eleven standard headers we leave empty, each on its own line.
    let string_to_sign =
        format!("{method}{}\n{}/{DEV_ACCOUNT}{path}{}", "\n".repeat(11), headers.concat(), query.concat());
    let key = BASE64.decode(DEV_ACCOUNT_KEY.expose()).unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(string_to_sign.as_bytes());
    format!("SharedKey {DEV_ACCOUNT}:{}", BASE64.encode(mac.finalize().into_bytes()))
}

/// Sends a Shared Key signed request to the blob service.
fn signed(az: &AzuriteServer, method: &str, resource: &str, query: &[(&str, &str)]) -> http::Response {
    let date = jiff::Timestamp::now().strftime("%a, %d %b %Y %H:%M:%S GMT").to_string();
    let ms = [("x-ms-date", date.as_str()), ("x-ms-version", "2021-12-02")];
    let path = format!("/{DEV_ACCOUNT}{resource}");
    let auth = shared_key(method, &path, query, &ms);
    let query_string: Vec<_> = query.iter().map(|(n, v)| format!("{n}={v}")).collect();
    let target = format!("{path}?{}", query_string.join("&"));
    let mut headers = ms.to_vec();
    headers.push(("Authorization", &auth));
    http::request(az.addr(), method, &target, &headers, &[]).unwrap()
}

#[test]
fn azurite_refuses_anonymous_requests_and_creates_a_container_with_shared_key() {
    let az = started(AzuriteServer::start());
    assert_eq!(az.blob_endpoint(), format!("http://127.0.0.1:{}/devstoreaccount1", az.port()));

    let anonymous = http::request(az.addr(), "PUT", "/devstoreaccount1/smoke?restype=container", &[], &[]).unwrap();
    assert_eq!(anonymous.status, 403);
    assert!(anonymous.header("x-ms-request-id").is_some(), "{:?}", anonymous.headers);
    assert!(anonymous.text().contains("<Code>AuthorizationFailure</Code>"), "{}", anonymous.text());

    let created = signed(&az, "PUT", "/smoke", &[("restype", "container")]);
    assert_eq!(created.status, 201, "{}", created.text());
    let again = signed(&az, "PUT", "/smoke", &[("restype", "container")]);
    assert_eq!(again.status, 409, "a second create must conflict: {}", again.text());
    let listing = signed(&az, "GET", "", &[("comp", "list")]);
    assert_eq!(listing.status, 200, "{}", listing.text());
    assert!(listing.text().contains("<Name>smoke</Name>"), "{}", listing.text());
}

#[test]
fn dropped_servers_leave_no_process_and_no_directory() {
    let pg = started(PostgresServer::start());
    let s3 = started(S3Server::start());
    let az = started(AzuriteServer::start());

    let groups = [pg.pid(), s3.pid(), az.pid()];
    assert!(groups.iter().all(|&pid| testkit::process::is_alive(pid)));
    // The postmaster's helpers (checkpointer, walwriter, …) run in sessions of
    // their own, out of its process group: they must go too.
    let pg_children = testkit::process::children_of(pg.pid());
    assert!(pg_children.len() > 1, "postgres has helper processes: {pg_children:?}");
    let dirs: Vec<PathBuf> =
        [pg.log_path(), s3.log_path(), az.log_path()].iter().map(|log| log.parent().unwrap().to_owned()).collect();
    assert!(dirs.iter().all(|d| d.is_dir()));

    drop((pg, s3, az));

    // Dropping waits until the processes are gone: no polling needed here.
    let alive: Vec<u32> =
        groups.iter().chain(&pg_children).copied().filter(|&p| testkit::process::is_alive(p)).collect();
    assert_eq!(alive, Vec::<u32>::new(), "still alive after drop");
    for group in groups {
        assert_eq!(testkit::process::live_members(group), Vec::<u32>::new(), "group {group} still has processes");
    }
    for dir in dirs {
        assert!(!dir.exists(), "{} was not removed", dir.display());
    }
}

/// A run directory too deep for a Unix socket's path (107 bytes) gets the
/// socket a short directory of its own, gone with the server.
#[test]
fn postgres_in_a_deep_directory_keeps_its_socket_in_a_short_one() {
    let root = tempfile::tempdir().unwrap();
    let deep = root.path().join("a-run-directory-as-deep-as-an-operator-s-local-site-under-a-long-tmpdir-x");
    std::fs::create_dir_all(&deep).unwrap();
    assert!(deep.join("fenice-postgres-XXXXXX/sock/.s.PGSQL.65535").as_os_str().len() > 107);
    let pg = started(PostgresServer::start_with(PostgresOptions::new().run_dir(&deep)));
    let socket = pg.socket_dir().join(format!(".s.PGSQL.{}", pg.port()));
    assert!(socket.as_os_str().len() <= 107 && !socket.starts_with(&deep), "{}", socket.display());
    let out = pg.client("psql").arg("-h").arg(pg.socket_dir()).args(["-X", "-A", "-t", "-c", "SELECT 1"]).output();
    let out = out.unwrap();
    assert!(out.status.success(), "psql over the socket failed: {}", String::from_utf8_lossy(&out.stderr));
    let short = pg.socket_dir();
    drop(pg);
    assert!(!short.exists(), "{} left behind", short.display());
}

#[test]
fn postgres_that_cannot_start_says_why() {
    let options = PostgresOptions::new().setting("no_such_setting", "1");
    let err = PostgresServer::start_with(options).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, testkit::Error::Exited { server: "postgres", .. }), "{err:?}");
    assert!(message.contains("unrecognized configuration parameter \"no_such_setting\""), "{message}");
}

#[test]
fn a_server_outlives_the_thread_that_started_it() {
    // NB: PR_SET_PDEATHSIG fires when the forking *thread* ends; the kit forks
    // from a thread of its own so that this does not kill the server.
    let az = thread::spawn(|| started(AzuriteServer::start())).join().unwrap();
    let answer = http::get(az.addr(), "/devstoreaccount1?comp=list").unwrap();
    assert!(answer.header("x-ms-request-id").is_some(), "{answer:?}");
}

/// Set for the child test process of `servers_die_with_the_test_process`.
const HELPER_ENV: &str = "FENICE_TESTKIT_ORPHAN_HELPER";

/// Not a test by itself: `servers_die_with_the_test_process` runs it in a child
/// process with HELPER_ENV set; anywhere else it returns at once.
#[test]
fn helper_starts_servers_and_waits_to_be_killed() {
    if std::env::var_os(HELPER_ENV).is_none() {
        return;
    }
    // Postgres runs as another user when we are root: the parent-death signal
    // must survive that switch too.
    let pg = started(PostgresServer::start());
    let az = started(AzuriteServer::start());
    for (pid, log) in [(pg.pid(), pg.log_path()), (az.pid(), az.log_path())] {
        println!("SERVER {pid} {}", log.parent().unwrap().display());
    }
    println!("READY");
    // Waits for the SIGKILL; the servers must never be dropped.
    loop {
        thread::park();
    }
}

#[test]
fn servers_die_with_the_test_process() {
    // Adopt the servers once the helper dies, to reap them below (PID 1 may leave
    // zombies lying around).
    // SAFETY: prctl with these arguments touches no memory.
    assert_eq!(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) }, 0);
    let mut helper = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "helper_starts_servers_and_waits_to_be_killed", "--nocapture"])
        .env(HELPER_ENV, "1")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(helper.stdout.take().unwrap());
    let mut pids = Vec::new();
    let mut dirs = Vec::new();
    for line in stdout.lines().map_while(Result::ok).take_while(|line| line != "READY") {
        if let Some((pid, dir)) = line.strip_prefix("SERVER ").and_then(|rest| rest.split_once(' ')) {
            let pid: u32 = pid.parse().unwrap();
            pids.push(pid);
            // The postmaster's helpers, which must go too.
            pids.extend(testkit::process::children_of(pid));
            dirs.push(PathBuf::from(dir));
        }
    }
    assert_eq!(dirs.len(), 2, "the helper did not start its servers: see its output above");
    assert!(pids.len() > 2, "postgres has helper processes: {pids:?}");
    assert!(pids.iter().all(|&pid| testkit::process::is_alive(pid)));

    helper.kill().unwrap();
    helper.wait().unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    for pid in pids {
        loop {
            // SAFETY: waitpid with no status wanted touches no memory of ours.
            let reaped = unsafe { libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), libc::WNOHANG) };
            // Reaped by us, or not ours to reap (-1: someone else's child) and dead.
            if reaped == pid as libc::pid_t || (reaped == -1 && !testkit::process::is_alive(pid)) {
                break;
            }
            assert!(Instant::now() < deadline, "process {pid} outlived its test process");
            thread::sleep(Duration::from_millis(20));
        }
    }
    // Nobody dropped the servers, so their directories are still there.
    for dir in dirs {
        std::fs::remove_dir_all(dir).unwrap();
    }
}

#[test]
fn the_app_and_the_sdi_simulator_run_as_processes_and_transmit() {
    let program = std::path::Path::new(env!("CARGO_BIN_EXE_fenice"));
    let pg = started(PostgresServer::start());
    let out = pg.client("psql").args(["-c", "CREATE DATABASE acme"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let sim = started(testkit::SdiSimServer::start(program, Duration::ZERO));
    let documents = tempfile::tempdir().unwrap();
    let config = fenice::app::AppConfig {
        sdi_endpoint: Some(sim.endpoint()),
        ..fenice::app::AppConfig::new("acme", "01234567890", "Acme S.r.l.", pg.url("acme"), documents.path())
    };
    let app = started(testkit::AppServer::start(&testkit::AppOptions {
        program: program.to_owned(),
        config,
        run_dir: None,
        placement: Default::default(),
    }));
    assert!(app.base_url().starts_with("http://127.0.0.1:"));
    let invoice =
        br#"{"series": "2026", "customer": {"vat": "09876543210", "name": "Rossi", "recipient_code": "ABC1234"},
                      "description": "Consulenza", "taxable_cents": 10000}"#;
    let created =
        http::request(app.addr(), "POST", "/v1/invoices", &[("Content-Type", "application/json")], invoice).unwrap();
    assert_eq!(created.status, 201, "{}", created.text());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let listed = http::get(sim.addr(), "/v1/tenants/acme/transmissions").unwrap();
        if listed.text().contains("IT01234567890_00001.xml") {
            break;
        }
        assert!(Instant::now() < deadline, "never transmitted: {}", listed.text());
        thread::sleep(Duration::from_millis(50));
    }
    let (app_pid, sim_pid) = (app.pid(), sim.pid());
    drop(app);
    drop(sim);
    assert!(!testkit::process::is_alive(app_pid) && !testkit::process::is_alive(sim_pid));
}
