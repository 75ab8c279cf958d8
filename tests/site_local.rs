//! The Local site driver's processes: tenants start as real PostgreSQL and app
//! processes, and killing the site kills every one of them at once.

use std::path::Path;
use std::time::Duration;

use fenice::site::local::{LocalSite, TenantSpec};
use fenice::testkit::{PostgresOptions, SdiSimServer, http, process};

fn spec(name: &str, sdi: &str) -> TenantSpec {
    TenantSpec {
        name: name.into(),
        vat: "01234567890".into(),
        company: format!("{name} S.r.l."),
        sdi_endpoint: Some(sdi.into()),
        sdi_environment: fenice::app::SdiEnvironment::Production,
        epoch: 1,
        fenced: false,
        postgres: PostgresOptions::new(),
    }
}

#[test]
fn a_killed_site_leaves_no_process_of_any_tenant() {
    let program = Path::new(env!("CARGO_BIN_EXE_fenice"));
    let sim = SdiSimServer::start(program, Duration::ZERO).expect("the simulator starts");
    let dir = tempfile::tempdir().unwrap();
    let site = LocalSite::new("westpole", program, dir.path());
    for tenant in ["studio-rossi", "bianchi-srl"] {
        site.start_tenant(&spec(tenant, &sim.endpoint())).expect("the tenant starts");
    }
    assert_eq!(site.tenants(), ["bianchi-srl", "studio-rossi"]);
    let again = site.start_tenant(&spec("bianchi-srl", &sim.endpoint())).unwrap_err();
    assert!(again.to_string().contains("already runs here"), "{again}");

    let body = br#"{"series": "2026", "customer": {"vat": "09876543210", "name": "Rossi", "recipient_code": "ABC1234"},
                   "description": "Consulenza", "taxable_cents": 10000}"#;
    let addr = site.with_tenant("studio-rossi", |s| s.app.as_ref().map(|a| a.addr())).flatten().unwrap();
    let created = http::request(addr, "POST", "/v1/invoices", &[("Content-Type", "application/json")], body).unwrap();
    assert_eq!(created.status, 201, "{}", created.text());

    let groups = site.kill();
    assert_eq!(groups.len(), 4, "an app and a PostgreSQL per tenant");
    for group in groups {
        assert!(process::live_members(group).is_empty(), "process group {group} survived the kill");
    }
    assert!(site.tenants().is_empty());
    assert!(http::get(addr, "/healthz").is_err(), "the app still answers");
    // The documents stay on the site's disk, as a dead machine's disk does.
    assert!(site.documents("studio-rossi").join("IT01234567890_00001.xml").exists());

    // The site comes back on its disks, though the dead postmaster's pid now
    // names a live process of PostgreSQL's user (pids wrap, at 32768 on some
    // machines): the database starts and holds the invoice.
    let other = fenice::testkit::PostgresServer::start().expect("another PostgreSQL");
    let data = site.crashed_data("studio-rossi").expect("the killed tenant's data stays");
    let lock = data.join("postmaster.pid");
    let text = std::fs::read_to_string(&lock).expect("a killed postmaster leaves its lock file");
    let rest = text.split_once('\n').unwrap().1;
    std::fs::write(&lock, format!("{}\n{rest}", other.pid())).unwrap();
    site.restart_tenant(&TenantSpec { fenced: true, ..spec("studio-rossi", &sim.endpoint()) })
        .expect("the tenant starts again on its disk");
    let addr = site.with_tenant("studio-rossi", |s| s.app.as_ref().map(|a| a.addr())).flatten().unwrap();
    let stats = http::get(addr, "/v1/stats").unwrap().text();
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["last_numbers"]["2026"], 1, "{stats}");
}

/// A site whose directory is too deep for a Unix socket's path says so, and
/// what to do, before it starts anything (the archiver would fail on it).
#[test]
fn a_site_too_deep_for_its_archiver_s_socket_says_so_before_starting_it() {
    let program = Path::new(env!("CARGO_BIN_EXE_fenice"));
    let dir = tempfile::tempdir().unwrap();
    let deep = dir.path().join("a-directory-an-operator-was-given-as-its-state-dir").join("x".repeat(40));
    let site = LocalSite::new("westpole", program, &deep);
    let error = site.start_wal_archiver_named("wal-archiver-0123456789ab.sock", &[]).unwrap_err();
    let message = error.to_string();
    assert!(message.contains("longer than the 107 bytes") && message.contains("--state-dir"), "{message}");
    let run = deep.join("run");
    let left: Vec<_> = std::fs::read_dir(&run).unwrap().filter_map(Result::ok).map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "no archiver started, no log written: {left:?}");
}

/// What psql prints for `sql` on the tenant's database server at `site`.
fn psql(site: &LocalSite, tenant: &str, sql: &str) -> String {
    let mut psql = site.with_tenant(tenant, |s| s.postgres.client("psql")).expect("the tenant's database runs");
    let out = psql.args(["-X", "-A", "-t", "-c", sql]).output().unwrap();
    assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A standby copies its primary's settings. Once the primary waits for a
/// synchronous standby, a further copy must not wait for one of its own (it
/// has none when promoted); and a primary it cannot reach is named.
#[test]
fn a_standby_of_a_synchronous_primary_waits_for_none_itself_and_an_unreachable_primary_is_named() {
    let program = Path::new(env!("CARGO_BIN_EXE_fenice"));
    let sim = SdiSimServer::start(program, Duration::ZERO).expect("the simulator starts");
    let dir = tempfile::tempdir().unwrap();
    let site = |name: &str| LocalSite::new(name, program, &dir.path().join(name));
    let (westpole, azure, aruba) = (site("westpole"), site("azure"), site("aruba"));
    let tenant = spec("studio-rossi", &sim.endpoint());
    westpole.start_tenant(&tenant).expect("the tenant starts");
    let database = TenantSpec { sdi_endpoint: None, fenced: true, ..tenant.clone() };
    azure.start_standby(&database, &westpole).expect("the synchronous standby starts");
    assert_eq!(psql(&westpole, "studio-rossi", "SHOW synchronous_standby_names"), "*");
    assert_eq!(psql(&azure, "studio-rossi", "SELECT pg_is_in_recovery()"), "t");

    let upstream = westpole.database_address("studio-rossi").unwrap();
    aruba.start_standby_from(&database, &upstream).expect("a second standby starts");
    assert_eq!(psql(&aruba, "studio-rossi", "SHOW synchronous_standby_names"), "", "the copy waits for a standby");

    let lost = site("lost");
    let e = lost.start_standby_from(&database, "127.0.0.1:1").unwrap_err().to_string();
    assert!(e.contains("copying the primary") && e.contains("127.0.0.1") && e.contains("port 1"), "{e}");
    assert!(lost.tenants().is_empty(), "{:?}", lost.tenants());
}
