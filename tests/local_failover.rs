//! A tenant failed over between two Local sites with the failover steps of
//! the Local site driver: the primary is killed with invoices sent after its
//! last backup, the standby restores base backup + WAL (or promotes its warm
//! standby, which replayed the WAL as it was archived), reconciles with SdI,
//! starts under a higher epoch and serves; SdI holds every number once.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fenice::api::common::TenantRef;
use fenice::api::common::Tier;
use fenice::failover::clock::{Clock, SystemClock};
use fenice::failover::executor::{Progress, SiteDriver, StateFile, StepContext, run};
use fenice::failover::machine::{FailoverState, NewFailover, Observation, Phase, RetryRule, SourceFence, Trigger};
use fenice::failover::waves::{GateRule, TenantSpec as WaveTenant, WaveSpec, assign};
use fenice::repo::keyfile::Passphrase;
use fenice::repo::repository::{Repository, Unlock};
use fenice::site::local::{LocalSite, TenantSpec};
use fenice::site::local_failover::LocalFailover;
use fenice::stack::pg::DbUrl;
use fenice::store::ObjectStore;
use fenice::store::fs::FsStore;
use fenice::store::retry::RetryPolicy;
use fenice::store::s3::{S3Config, S3Store, StaticCredentials};
use fenice::testkit::{FaultProxy, PostgresOptions, S3Server, SdiSimServer, http};
use serde_json::Value;

const PASSWORD: &str = "local-failover-pw";
const REPO: &str = "s3://tenant-backups/lab";

fn env(s3: &S3Server) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", s3.endpoint()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("FENICE_S3_PATH_STYLE", "true".into()),
        ("FENICE_PASSWORD", PASSWORD.into()),
        ("FENICE_TENANT", "acme".into()),
        ("FENICE_REPOSITORY", REPO.into()),
    ]
}

fn fenice(s3: &S3Server, args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_fenice")).envs(env(s3)).args(args).output().unwrap();
    assert!(out.status.success(), "fenice {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn json(addr: std::net::SocketAddr, path: &str) -> Value {
    serde_json::from_str(&http::get(addr, path).unwrap().text()).unwrap()
}

fn issue(addr: std::net::SocketAddr) -> Value {
    let body = br#"{"series": "2026", "customer": {"vat": "09876543210", "name": "Rossi", "recipient_code": "ABC1234"},
                   "description": "Consulenza", "taxable_cents": 10000}"#;
    let created = http::request(addr, "POST", "/v1/invoices", &[("Content-Type", "application/json")], body).unwrap();
    assert_eq!(created.status, 201, "{}", created.text());
    serde_json::from_str(&created.text()).unwrap()
}

fn all_sent(addr: std::net::SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while json(addr, "/v1/stats")["invoices"]["pending"] != 0 {
        assert!(Instant::now() < deadline, "invoices left pending");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A primary (westpole) whose tenants archive WAL to the S3 server, each with
/// five invoices, a base backup, three more invoices sent to SdI; then the
/// primary is killed. Returns the standby's driver, the standby, and the simulator.
struct Lost {
    driver: LocalFailover,
    target: Arc<LocalSite>,
    sim: SdiSimServer,
    /// Between the standby and the repository, when asked for.
    proxy: Option<FaultProxy>,
    _s3: S3Server,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

async fn primary_lost(tenants: &[&str]) -> Lost {
    primary_lost_with(tenants, false, false).await
}

/// Waits until the tenant's warm standby at `site` has replayed `invoices`
/// invoices from the archive, still in recovery.
async fn replayed(site: &LocalSite, tenant: &str, invoices: i64) {
    let url = site.with_tenant(tenant, |s| s.db_url(tenant)).expect("the standby runs");
    let client = DbUrl::parse(&url).unwrap().connect().await.expect("a hot standby takes connections");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let row = client.query_one("SELECT count(*), pg_is_in_recovery() FROM invoices", &[]).await.unwrap();
        let (count, recovering): (i64, bool) = (row.get(0), row.get(1));
        assert!(recovering, "the warm standby promoted itself");
        if count == invoices {
            return;
        }
        assert!(Instant::now() < deadline, "the warm standby replayed {count} of {invoices} invoices in 60 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// [`primary_lost`], with a warm standby of each tenant at the standby before
/// the kill, and with the standby reaching the repository through a
/// [`FaultProxy`] (each request given up after 2 s and tried twice).
async fn primary_lost_with(tenants: &[&str], warm: bool, proxied: bool) -> Lost {
    let program = Path::new(env!("CARGO_BIN_EXE_fenice"));
    let s3 = S3Server::start().expect("S3 server starts");
    let sim = SdiSimServer::start(program, Duration::ZERO).expect("the simulator starts");
    fenice(&s3, &["repo", "init"]);
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let source = Arc::new(LocalSite::new("westpole", program, dirs.0.path()));
    let target = Arc::new(LocalSite::new("azure", program, dirs.1.path()));
    let mut specs = BTreeMap::new();
    for name in tenants {
        // Each tenant's WAL goes under its own name.
        let postgres =
            env(&s3).into_iter().fold(PostgresOptions::new(), |o, (k, v)| o.env(k, v)).env("FENICE_TENANT", *name);
        let spec = TenantSpec {
            name: name.to_string(),
            vat: "01234567890".into(),
            company: format!("{name} S.r.l."),
            sdi_endpoint: Some(sim.endpoint()),
            sdi_environment: fenice::app::SdiEnvironment::Production,
            epoch: 1,
            fenced: false,
            postgres: postgres.clone(),
        };
        let archiving = postgres
            .setting("wal_level", "replica")
            .setting("archive_mode", "on")
            .setting("archive_timeout", "1")
            .setting("archive_command", format!("{} agent wal-push %p", program.display()));
        let source_spec = TenantSpec { postgres: archiving, ..spec.clone() };
        let s = source.clone();
        tokio::task::spawn_blocking(move || s.start_tenant(&source_spec)).await.unwrap().expect("the tenant starts");

        // Five invoices, a base backup, three more, all sent.
        let app = source.with_tenant(name, |s| s.app.as_ref().map(|a| a.addr())).flatten().unwrap();
        let db = source.with_tenant(name, |s| s.db_url(name)).unwrap();
        tokio::task::spawn_blocking(move || {
            (0..5).for_each(|_| drop(issue(app)));
            all_sent(app);
        })
        .await
        .unwrap();
        fenice(&s3, &["agent", "backup", "--physical", "--tenant", name, "--db", &db]);
        tokio::task::spawn_blocking(move || {
            (0..3).for_each(|_| drop(issue(app)));
            all_sent(app);
        })
        .await
        .unwrap();
        specs.insert(name.to_string(), spec);
    }
    let proxy = match proxied {
        true => Some(FaultProxy::start(s3.addr()).await.unwrap()),
        false => None,
    };
    let store = match &proxy {
        None => s3.store("tenant-backups", "lab").await.unwrap(),
        Some(proxy) => {
            for spec in specs.values_mut() {
                // The standby's wal-fetch goes through the proxy too.
                let postgres = std::mem::take(&mut spec.postgres);
                spec.postgres = postgres
                    .env("AWS_ENDPOINT_URL", proxy.endpoint())
                    .env("FENICE_STORE_TIMEOUT", "2")
                    .env("FENICE_STORE_ATTEMPTS", "2");
            }
            let retry = RetryPolicy { attempts: 2, attempt_timeout: Duration::from_secs(2), ..RetryPolicy::default() };
            S3Store::connect(S3Config {
                prefix: "lab".into(),
                endpoint: Some(proxy.endpoint()),
                region: Some("us-east-1".into()),
                force_path_style: true,
                retry,
                credentials: Some(StaticCredentials {
                    access_key_id: "test".into(),
                    secret_access_key: "test".into(),
                    session_token: None,
                }),
                ..S3Config::new("tenant-backups")
            })
            .await
            .unwrap()
        }
    };
    let repo = Arc::new(
        Repository::open(Arc::new(store), &Unlock::Passphrase(Passphrase::new(PASSWORD.into()))).await.unwrap(),
    );
    let driver = LocalFailover::new(
        source.clone(),
        target.clone(),
        specs,
        repo,
        REPO.into(),
        program.to_owned(),
        sim.endpoint(),
        jiff::civil::date(2029, 1, 1),
    );
    if warm {
        for name in tenants {
            driver.start_warm_standby(name).await.expect("the warm standby starts");
            replayed(&target, name, 8).await;
        }
    }
    // The provider dies.
    assert_eq!(source.kill().len(), 2 * tenants.len());
    Lost { driver, target, sim, proxy, _s3: s3, _dirs: dirs }
}

/// The steps' context of the automatic failover after westpole's loss, under epoch 2.
fn automatic_failover() -> StepContext {
    StepContext {
        failover: "westpole-lost".into(),
        plan: "westpole-to-azure".into(),
        trigger: Trigger::Automatic,
        source: "westpole".into(),
        target: "azure".into(),
        epoch: Some(2),
    }
}

/// The file names SdI holds for `tenant`, in order.
fn transmitted(sim: &SdiSimServer, tenant: &str) -> Vec<String> {
    let listed = json(sim.addr(), &format!("/v1/tenants/{tenant}/transmissions"));
    listed.as_array().unwrap().iter().map(|r| r["file_name"].as_str().unwrap().to_owned()).collect()
}

/// After the failover: the tenant's next invoice at the standby is 9, and
/// SdI holds 1..9 once each.
async fn continues_at_the_standby(lost: &Lost, tenant: &str) {
    let app = lost.target.with_tenant(tenant, |s| s.app.as_ref().map(|a| a.addr())).flatten().unwrap();
    assert_eq!(lost.driver.endpoints.lock().unwrap()[tenant], format!("http://{app}"));
    let invoice = tokio::task::spawn_blocking(move || {
        let invoice = issue(app);
        all_sent(app);
        invoice
    })
    .await
    .unwrap();
    assert_eq!(invoice["number"], 9, "{invoice}");
    let expected: Vec<String> = (1..=9).map(|n| format!("IT01234567890_{n:05}.xml")).collect();
    assert_eq!(transmitted(&lost.sim, tenant), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_comes_back_at_the_standby_with_every_invoice_once() {
    let lost = primary_lost(&["acme"]).await;
    let driver = &lost.driver;
    let ctx = automatic_failover();
    let tenant = TenantRef { namespace: "tenants".into(), name: "acme".into() };
    assert_eq!(driver.fence_source(&ctx).await, SourceFence::Unreachable);
    let restored = driver.restore_tenant(&ctx, &tenant).await.expect("restored");
    assert!(!restored.snapshot_id.is_empty());
    the_steps_after_the_restore(driver, &ctx, &tenant).await;
    // Running a step again finds it done.
    driver.switch_tenant(&ctx, &tenant).await.expect("switched again");

    continues_at_the_standby(&lost, "acme").await;
}

/// Reconcile with SdI, start, switch and verify the tenant at the standby.
async fn the_steps_after_the_restore(driver: &LocalFailover, ctx: &StepContext, tenant: &TenantRef) {
    driver.reconcile_tenant(ctx, tenant).await.expect("reconciled");
    driver.start_tenant(ctx, tenant).await.expect("started");
    driver.switch_tenant(ctx, tenant).await.expect("switched");
    driver.verify_tenant(ctx, tenant).await.expect("verified");
}

/// The repository does not answer when the failover restores: the step fails
/// as one worth retrying (never as a lasting failure of the tenant), naming
/// the store; once the store answers, even throttling, the same step restores
/// and the tenant comes back with every invoice once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_that_does_not_answer_during_the_restore_is_retried_not_given_up() {
    let lost = primary_lost_with(&["acme"], false, true).await;
    let (driver, proxy) = (&lost.driver, lost.proxy.as_ref().unwrap());
    let ctx = automatic_failover();
    let tenant = TenantRef { namespace: "tenants".into(), name: "acme".into() };
    proxy.silence(true);
    let failed = driver.restore_tenant(&ctx, &tenant).await.expect_err("nothing restores from a silent store");
    assert!(failed.retryable, "a store that does not answer may later: {failed:?}");
    assert!(failed.message.contains(&proxy.endpoint()), "the store is named: {}", failed.message);
    // Throttled for longer than the store's retries: still a step worth retrying.
    proxy.silence(false);
    proxy.throttle(3);
    let throttled = driver.restore_tenant(&ctx, &tenant).await.expect_err("throttled past the retries");
    assert!(throttled.retryable && throttled.message.contains("503 SlowDown"), "{throttled:?}");
    proxy.throttle(1);
    driver.restore_tenant(&ctx, &tenant).await.expect("restored once the store answers, one 503 retried");
    the_steps_after_the_restore(driver, &ctx, &tenant).await;
    continues_at_the_standby(&lost, "acme").await;
}

/// A warm standby replays the archive while the primary works (it holds all
/// eight invoices before the kill), and the failover promotes that very
/// PostgreSQL instead of restoring.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_standby_follows_the_archive_and_a_failover_only_promotes_it() {
    let lost = primary_lost_with(&["acme"], true, false).await;
    let driver = &lost.driver;
    let ctx = automatic_failover();
    let tenant = TenantRef { namespace: "tenants".into(), name: "acme".into() };
    let pid = |site: &LocalSite| site.with_tenant("acme", |s| s.postgres.pid()).unwrap();
    let standby = pid(&lost.target);
    assert!(lost.target.runs_standby("acme"));
    let restored = driver.restore_tenant(&ctx, &tenant).await.expect("promoted");
    assert!(!restored.snapshot_id.is_empty());
    assert_eq!(pid(&lost.target), standby, "promoted in place, not restored anew");
    assert!(!lost.target.runs_standby("acme"));
    driver.reconcile_tenant(&ctx, &tenant).await.expect("reconciled");
    driver.start_tenant(&ctx, &tenant).await.expect("started");
    driver.switch_tenant(&ctx, &tenant).await.expect("switched");
    driver.verify_tenant(&ctx, &tenant).await.expect("verified");
    continues_at_the_standby(&lost, "acme").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wave_state_machine_moves_every_tenant_and_persists_its_state() {
    let lost = primary_lost(&["acme", "globex"]).await;
    let witness_dir = tempfile::tempdir().unwrap();
    let witness: Arc<dyn ObjectStore> = Arc::new(FsStore::open(witness_dir.path()).unwrap());
    let state = failed_over(&lost, &["acme", "globex"], &SystemClock::new(), witness.clone(), |_| {}).await;
    assert_eq!(state.counts(), (2, 0, 2));
    let (rto, rpo) = state.worst();
    assert!(rto.is_some() && rpo.is_some(), "RTO and RPO measured per tenant");
    // What the witness store holds is the finished state.
    let (persisted, _) = StateFile::load(witness, "westpole-to-azure", "westpole-lost").await.unwrap().unwrap();
    assert_eq!(persisted.phase, Phase::Succeeded);
    for tenant in ["acme", "globex"] {
        continues_at_the_standby(&lost, tenant).await;
    }
}

/// The wall clock set back three hours while a tenant waits to retry its
/// restore (the repository silent at first): the retry, persisted in wall
/// time, is made after its back-off, not once the clock has caught up, and
/// the tenant comes back with every invoice once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wall_clock_set_back_while_a_tenant_waits_to_retry_holds_the_failover_up_no_longer() {
    let lost = primary_lost_with(&["acme"], false, true).await;
    let proxy = lost.proxy.as_ref().unwrap();
    proxy.silence(true);
    let clock = SteppedClock::default();
    let set_back = AtomicBool::new(false);
    let witness_dir = tempfile::tempdir().unwrap();
    let witness: Arc<dyn ObjectStore> = Arc::new(FsStore::open(witness_dir.path()).unwrap());
    let state = failed_over(&lost, &["acme"], &clock, witness, |state| {
        let waits = state.tenants().any(|(_, t)| t.retry_at.is_some());
        if waits && !set_back.swap(true, Ordering::Relaxed) {
            clock.set_back(Duration::from_secs(3 * 3600));
            proxy.silence(false);
        }
    })
    .await;
    assert!(set_back.into_inner(), "the restore failed once, and waited to be retried");
    let (_, acme) = state.tenants().next().unwrap();
    assert!(acme.snapshot_id.is_some(), "{acme:?}");
    continues_at_the_standby(&lost, "acme").await;
}

/// The real clocks, the wall clock set back on demand (as by a person or NTP).
#[derive(Debug, Default)]
struct SteppedClock {
    real: SystemClock,
    back: AtomicU64,
}

impl SteppedClock {
    fn set_back(&self, by: Duration) {
        self.back.store(by.as_millis() as u64, Ordering::Relaxed);
    }
}

impl Clock for SteppedClock {
    fn now(&self) -> fenice::failover::clock::MonoTime {
        self.real.now()
    }

    fn wall(&self) -> fenice::failover::clock::WallTime {
        let back = self.back.load(Ordering::Relaxed);
        fenice::failover::clock::WallTime::from_unix_millis(self.real.wall().unix_millis() - back)
    }
}

/// The automatic failover of `tenants` after westpole's loss, its state
/// persisted in `witness`, run on `clock` until it ends (within 5 minutes),
/// `waiting` told each time it waits; it must succeed. The final state.
async fn failed_over(
    lost: &Lost,
    tenants: &[&str],
    clock: &dyn Clock,
    witness: Arc<dyn ObjectStore>,
    mut waiting: impl FnMut(&FailoverState),
) -> FailoverState {
    let tenants: Vec<WaveTenant> = tenants
        .iter()
        .map(|name| WaveTenant {
            tenant: TenantRef { namespace: "tenants".into(), name: name.to_string() },
            tier: Tier::Gold,
        })
        .collect();
    let wave = WaveSpec {
        name: "all".into(),
        tiers: vec![Tier::Gold, Tier::Silver, Tier::Bronze],
        parallelism: 2,
        gate: GateRule::default(),
    };
    let waves = assign("westpole-to-azure", &[wave], &tenants).unwrap();
    let new = NewFailover {
        name: "westpole-lost".into(),
        plan: "westpole-to-azure".into(),
        trigger: Trigger::Automatic,
        source: "westpole".into(),
        target: "azure".into(),
        declared_loss: clock.wall(),
        epoch: Some(2),
    };
    let mut state = FailoverState::new(new, waves, RetryRule::default());
    let mut file = StateFile::create(witness, &state).await.unwrap();
    // The standby holds the lease under epoch 2: the automatic failover's takeover.
    let observe = || Observation {
        lease_holder: Some("azure".into()),
        lease_epoch: 2,
        active_epoch: Some(2),
        ..Observation::default()
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    let phase = loop {
        match run(&mut state, &lost.driver, &mut file, clock, &observe).await.unwrap() {
            Progress::Finished(phase) => break phase,
            Progress::Waiting(_) => {
                assert!(Instant::now() < deadline, "the failover never finished: {state:?}");
                waiting(&state);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(phase, Phase::Succeeded, "{state:?}");
    state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovery_that_cannot_reach_its_target_fails_at_once_with_the_servers_words() {
    let mut lost = primary_lost(&["acme"]).await;
    // An hour past the end of the archive: PostgreSQL gives up, and says why.
    lost.driver.until = Some(jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1));
    let ctx = StepContext {
        failover: "drill".into(),
        plan: "westpole-to-azure".into(),
        trigger: Trigger::Manual,
        source: "westpole".into(),
        target: "azure".into(),
        epoch: None,
    };
    let tenant = TenantRef { namespace: "tenants".into(), name: "acme".into() };
    let started = Instant::now();
    let error = lost.driver.restore_tenant(&ctx, &tenant).await.expect_err("the target is past the archive");
    // PostgreSQL may exit before it first answers or after: either way the
    // step says it exited, with its own words about the target.
    assert!(error.message.contains("exited"), "{}", error.message);
    assert!(error.message.contains("recovery target"), "{}", error.message);
    assert!(started.elapsed() < Duration::from_secs(120), "not the whole recovery timeout");
}
