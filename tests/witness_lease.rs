//! The witness lease against a real S3 server (moto, which implements
//! If-Match and If-None-Match and answers 412 on a mismatch): the same agents
//! as in production, driven with virtual clocks over the real store.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use fenice::failover::Error;
use fenice::failover::clock::MonoTime;
use fenice::failover::health::SiteHealth;
use fenice::failover::lease::{
    LeaseAction, LeaseAgent, LeaseRecord, LeaseTiming, LeaseView, Standing, Takeover, WitnessOp, WitnessReply,
};
use fenice::failover::witness::{Witness, pump};
use fenice::store::ObjectStore;
use fenice::store::retry::RetryPolicy;
use fenice::store::s3::{S3Config, S3Store, StaticCredentials};
use fenice::testkit::S3Server;

#[path = "common/health.rs"]
mod health;
use health::health_endpoint;

async fn start_moto() -> S3Server {
    tokio::task::spawn_blocking(S3Server::start).await.unwrap().expect("moto starts (run scripts/prerequisites.sh)")
}

/// A witness on a fresh bucket. moto takes any credentials; these keep the SDK
/// from looking for real ones.
async fn witness(server: &S3Server, plan: &str) -> Witness {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let bucket = format!("fenice-witness-{}", NEXT.fetch_add(1, Ordering::SeqCst));
    let config = S3Config {
        prefix: "fenice".to_owned(),
        endpoint: Some(server.endpoint()),
        region: Some("us-east-1".to_owned()),
        force_path_style: true,
        // NB: a witness store answers fast or not at all: an attempt must end
        // well inside the renew interval.
        retry: RetryPolicy {
            attempts: 2,
            base_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(100),
            attempt_timeout: Duration::from_secs(30),
        },
        credentials: Some(StaticCredentials {
            access_key_id: "test".to_owned(),
            secret_access_key: "test".to_owned(),
            session_token: None,
        }),
        ..S3Config::new(bucket)
    };
    let store = S3Store::connect(config).await.unwrap();
    store.create_bucket(false).await.unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(store);
    Witness::new(store, plan)
}

fn at(ms: u64) -> MonoTime {
    MonoTime::from_origin(Duration::from_millis(ms))
}

/// Lease 3 s, renewals every second, fence after 1.5 s.
fn timing() -> LeaseTiming {
    LeaseTiming::for_lease(Duration::from_secs(3), Duration::from_secs(1)).unwrap()
}

fn record(holder: &str, epoch: u64, renewals: u64) -> LeaseRecord {
    LeaseRecord { holder: holder.to_owned(), epoch, renewals, incarnation: 1 }
}

#[tokio::test]
async fn create_renew_and_a_stale_etag_is_refused_with_412() {
    let server = start_moto().await;
    let w = witness(&server, "main").await;
    assert_eq!(w.read().await.unwrap(), None);
    let e1 = w.create(&record("a", 1, 1)).await.unwrap();
    assert!(matches!(w.create(&record("b", 1, 1)).await, Err(Error::LeaseConflict { .. })), "If-None-Match: *");
    let read = w.read().await.unwrap().unwrap();
    assert_eq!((read.etag.as_str(), &read.record), (e1.as_str(), &record("a", 1, 1)));

    let e2 = w.replace(&e1, &record("a", 1, 2)).await.unwrap();
    assert_ne!(e1, e2);
    // A takeover conditioned on the ETag seen before the renewal: 412, nothing written.
    let takeover = WitnessOp::Replace { if_match: e1.clone(), record: record("b", 2, 3) };
    assert_eq!(w.execute(&takeover).await, WitnessReply::Conflict);
    assert!(matches!(w.replace(&e1, &record("b", 2, 3)).await, Err(Error::LeaseConflict { .. })));
    let read = w.read().await.unwrap().unwrap();
    assert_eq!((read.etag, read.record), (e2, record("a", 1, 2)));
}

#[tokio::test]
async fn expiry_is_counted_on_the_observers_clock_and_the_epoch_rises_on_each_takeover() {
    let server = start_moto().await;
    let w = witness(&server, "main").await;
    let mut a = LeaseAgent::new("a", 11, timing(), Takeover::WhenHolderDown, true);
    let mut b = LeaseAgent::new("b", 22, timing(), Takeover::WhenHolderDown, false);

    // A finds no lease, waits a lease for safety, creates it: epoch 1.
    assert!(pump(&mut a, &w, at(0), SiteHealth::Up).await.is_empty());
    assert_eq!(pump(&mut a, &w, at(3_100), SiteHealth::Up).await, [LeaseAction::Activate { epoch: 1 }]);
    // A renews while B watches; B's clock is its own (B started 50 s "later").
    for t in [4_100, 5_100] {
        assert!(pump(&mut a, &w, at(t), SiteHealth::Up).await.is_empty());
    }
    assert!(pump(&mut b, &w, at(50_000), SiteHealth::Up).await.is_empty());
    assert!(matches!(b.view(), LeaseView::Held { ref holder, epoch: 1, .. } if holder == "a"));

    // A dies. B sees the same ETag, and the holder Down, for a lease of its own time.
    let wait = timing().observer_wait().as_millis() as u64;
    assert!(pump(&mut b, &w, at(50_000 + wait - 1), SiteHealth::Down).await.is_empty());
    assert_eq!(b.standing(at(50_000 + wait - 1)), Standing::Fenced);
    assert_eq!(pump(&mut b, &w, at(50_000 + wait), SiteHealth::Down).await, [LeaseAction::Activate { epoch: 2 }]);

    // A comes back as a new process: the lease names B, so it stays fenced.
    let mut a = LeaseAgent::new("a", 33, timing(), Takeover::WhenHolderDown, true);
    for t in (0..3_000).step_by(500) {
        assert!(pump(&mut a, &w, at(t), SiteHealth::Up).await.is_empty());
        assert_eq!(a.standing(at(t)), Standing::Fenced);
    }
    // B renews from its next renewal on; then B dies, and A takes over with epoch 3.
    let b_renewal = 50_000 + wait + 1_000;
    assert!(pump(&mut b, &w, at(b_renewal), SiteHealth::Up).await.is_empty());
    assert!(pump(&mut a, &w, at(4_000), SiteHealth::Down).await.is_empty());
    assert_eq!(pump(&mut a, &w, at(4_000 + wait), SiteHealth::Down).await, [LeaseAction::Activate { epoch: 3 }]);
    let lease = w.read().await.unwrap().unwrap().record;
    assert_eq!((lease.holder.as_str(), lease.epoch, lease.incarnation), ("a", 3, 33));

    // B, cut off since its renewal, fences on its own deadline and then learns
    // it lost the lease.
    let decisions = pump(&mut b, &w, at(b_renewal + 1_500), SiteHealth::Up).await;
    assert_eq!(decisions, [LeaseAction::Fence]);
    assert!(matches!(b.view(), LeaseView::Held { ref holder, epoch: 3, .. } if holder == "a"));
}

#[tokio::test]
async fn a_renewal_that_lands_first_wins_and_the_takeover_gets_412() {
    let server = start_moto().await;
    let w = witness(&server, "race").await;
    let mut a = LeaseAgent::new("a", 1, timing(), Takeover::Never, true);
    let mut b = LeaseAgent::new("b", 2, timing(), Takeover::WhenExpired, false);
    pump(&mut a, &w, at(0), SiteHealth::Up).await;
    pump(&mut a, &w, at(3_100), SiteHealth::Up).await;
    pump(&mut b, &w, at(0), SiteHealth::Down).await;

    // Both decide at once: B to take over (its wait is over), A to renew.
    let wait = timing().observer_wait().as_millis() as u64;
    let takeover = b.tick(at(wait), SiteHealth::Down);
    let renewal = a.tick(at(4_100), SiteHealth::Up);
    let (Some(LeaseAction::Send(takeover)), Some(LeaseAction::Send(renewal))) = (takeover.last(), renewal.last())
    else {
        panic!("both send: {takeover:?} {renewal:?}");
    };
    assert!(matches!(&takeover.op, WitnessOp::Replace { record, .. } if record.holder == "b" && record.epoch == 2));
    // The renewal lands first.
    let renewed = w.execute(&renewal.op).await;
    assert!(matches!(renewed, WitnessReply::Written { .. }));
    assert_eq!(w.execute(&takeover.op).await, WitnessReply::Conflict);
    assert!(a.on_reply(at(4_150), renewal.id, renewed).is_empty());
    assert!(b.on_reply(at(wait), takeover.id, WitnessReply::Conflict).is_empty());
    assert_eq!(b.standing(at(wait)), Standing::Fenced);
    assert!(matches!(a.standing(at(4_150)), Standing::Active { epoch: 1, .. }));
    // B reads the new ETag and starts counting again.
    assert!(pump(&mut b, &w, at(wait + 1), SiteHealth::Down).await.is_empty());
    assert_eq!(w.read().await.unwrap().unwrap().record.holder, "a");
}

#[tokio::test]
async fn a_planned_handover_fences_the_holder_before_the_successor_activates() {
    let server = start_moto().await;
    let w = witness(&server, "failback").await;
    let mut a = LeaseAgent::new("a", 1, timing(), Takeover::Never, true);
    let mut b = LeaseAgent::new("b", 2, timing(), Takeover::Never, false);
    pump(&mut a, &w, at(0), SiteHealth::Up).await;
    pump(&mut a, &w, at(3_100), SiteHealth::Up).await;
    assert_eq!(a.hand_over("b"), [LeaseAction::Fence]);
    assert!(pump(&mut a, &w, at(3_200), SiteHealth::Up).await.is_empty());
    assert_eq!(w.read().await.unwrap().unwrap().record.holder, "a", "not written before the fence is confirmed");
    a.confirm_fenced();
    pump(&mut a, &w, at(3_300), SiteHealth::Up).await;
    assert_eq!(w.read().await.unwrap().unwrap().record.holder, "b");
    assert_eq!(pump(&mut b, &w, at(0), SiteHealth::Up).await, [LeaseAction::Activate { epoch: 2 }]);
    assert_eq!(a.standing(at(3_300)), Standing::Fenced);
}

/// `fenice failover witness …` against `bucket` on `server` (or `endpoint`).
fn witness_cli(endpoint: &str, bucket: &str, args: &[&str]) -> std::process::Output {
    witness_command(endpoint, bucket, args).output().unwrap()
}

fn witness_command(endpoint: &str, bucket: &str, args: &[&str]) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_fenice"));
    command
        .args(["failover", "witness"])
        .args(args)
        .args(["--plan", "main", "--witness", &format!("s3://{bucket}/fenice"), "--s3-endpoint", endpoint])
        .args(["--s3-path-style", "--s3-region", "us-east-1", "--store-timeout", "2", "--store-attempts", "2"])
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test");
    command
}

/// A `fenice` process of the test's, its stdout kept; SIGKILLed if the test ends first.
struct Running(Option<std::process::Child>);

impl Running {
    fn spawn(mut command: std::process::Command) -> Self {
        Self(Some(command.stdout(std::process::Stdio::piped()).spawn().unwrap()))
    }

    /// Sends SIGTERM and waits: how it ended and what it printed.
    async fn stop(mut self) -> std::process::Output {
        let child = self.0.take().expect("stopped once");
        let pid = child.id().to_string();
        assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        tokio::task::spawn_blocking(move || child.wait_with_output()).await.unwrap().unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The lookout report at `key` in `store`, once there is one that `wanted` accepts.
async fn report_when(
    store: &dyn ObjectStore,
    key: &str,
    wanted: impl Fn(&fenice::failover::lookout::Report) -> bool,
) -> fenice::failover::lookout::Report {
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let bytes = store.get(key).await.ok();
            let report = bytes.and_then(|b| serde_json::from_slice(&b).ok());
            match report {
                Some(r) if wanted(&r) => return r,
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("no lookout report at {key} as wanted within 20 s"))
}

/// A lookout (`fenice failover witness lookout`, a process of its own)
/// probes a site and posts each result in the witness store; the standby's
/// prober counts it as a third vantage point. With `minVantagePoints: 3`, the
/// site is down once the lookout agrees with the other two, and no longer
/// once the lookout stops posting: a report that stopped changing does not
/// vote. SIGTERM ends the lookout cleanly.
#[tokio::test]
async fn a_lookout_posts_what_it_sees_and_the_standby_counts_it_as_a_vantage_point() {
    use fenice::failover::clock::SystemClock;
    use fenice::failover::health::DetectionRule;
    use fenice::failover::lookout::key;
    use fenice::failover::probing::{self, Probes};
    let server = start_moto().await;
    let store = server.store("fenice-witness-lookout", "fenice").await.unwrap();
    store.create_bucket(false).await.unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(store);
    let (url, answering) = health_endpoint().await;
    let lookout = Running::spawn(witness_command(
        &server.endpoint(),
        "fenice-witness-lookout",
        &[
            "lookout",
            "--site",
            "westpole",
            "--url",
            &url,
            "--name",
            "milan",
            "--interval",
            "200ms",
            "--timeout",
            "300ms",
        ],
    ));
    let posted = report_when(store.as_ref(), &key("main", "milan"), |r| r.probes >= 2).await;
    assert!(posted.ok && posted.site == "westpole" && posted.interval_ms == 200, "{posted:?}");

    // No lease in the store: the witness's view fails from the start.
    let rule = DetectionRule { failure_threshold: 3, window: Duration::from_millis(500), min_vantage_points: 3 };
    let probes = Probes {
        urls: vec![url],
        http_vantage_points: 1,
        interval: Duration::from_millis(200),
        timeout: Duration::from_millis(300),
        stale_after: Duration::from_secs(1),
    };
    let witness = Witness::new(store.clone(), "main");
    let probing = probing::spawn("westpole", probes, witness, rule, Arc::new(SystemClock::default()));
    let health = probing.health.clone();
    let seen = |wanted: SiteHealth| {
        let mut health = health.clone();
        async move { tokio::time::timeout(Duration::from_secs(15), health.wait_for(|h| *h == wanted)).await.is_ok() }
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(*health.borrow(), SiteHealth::Suspect, "only the witness's view fails: not down");

    answering.abort();
    assert!(seen(SiteHealth::Down).await, "the prober, the witness's view and the lookout agree");
    let failing = report_when(store.as_ref(), &key("main", "milan"), |_| true).await;
    assert!(!failing.ok && failing.failures >= 3 && failing.failing_for_ms >= 400, "{failing:?}");

    // The lookout stops: its last report ages out, two vantage points are not enough.
    let ended = lookout.stop().await;
    assert!(ended.status.success(), "{ended:?}");
    let said = String::from_utf8_lossy(&ended.stdout);
    assert!(
        said.contains("westpole answers") && said.contains("westpole does not answer: 3 probes in a row"),
        "{said}"
    );
    assert!(seen(SiteHealth::Suspect).await, "a lookout that stopped posting does not vote");
}

fn said(out: &std::process::Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A witness moved to a new store: `seed` writes the plan's first lease there
/// naming the site that serves, in the epoch given; the named site's agent (a
/// new process) renews it and is active in that epoch. A store that holds a
/// lease already is refused and left as it was; an epoch of 0 is a usage
/// error; a store that does not answer is named.
#[tokio::test]
async fn a_seeded_witness_is_renewed_by_the_site_it_names_in_the_epoch_it_was_given() {
    let server = start_moto().await;
    let store = server.store("fenice-witness-moved", "fenice").await.unwrap();
    store.create_bucket(false).await.unwrap();
    let endpoint = server.endpoint();
    let run = |args: &'static [&'static str]| {
        let endpoint = endpoint.clone();
        tokio::task::spawn_blocking(move || witness_cli(&endpoint, "fenice-witness-moved", args))
    };

    let empty = run(&["show"]).await.unwrap();
    assert_eq!(empty.status.code(), Some(1), "{:?}", said(&empty));
    assert!(said(&empty).1.contains("no lease of plan main at s3://fenice-witness-moved"), "{:?}", said(&empty));

    let seeded = run(&["seed", "--holder", "azure", "--epoch", "3"]).await.unwrap();
    assert!(seeded.status.success(), "{:?}", said(&seeded));
    assert!(said(&seeded).0.contains("holder azure, epoch 3"), "{:?}", said(&seeded));
    let shown = run(&["show", "--json"]).await.unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(
        (doc["holder"].as_str(), doc["epoch"].as_u64(), doc["renewals"].as_u64()),
        (Some("azure"), Some(3), Some(1))
    );

    let again = run(&["seed", "--holder", "westpole", "--epoch", "9"]).await.unwrap();
    assert!(!again.status.success());
    assert!(
        said(&again).1.contains("already holds a lease of plan main (holder azure, epoch 3)"),
        "{:?}",
        said(&again)
    );
    let zero = run(&["seed", "--holder", "azure", "--epoch", "0"]).await.unwrap();
    assert_eq!(zero.status.code(), Some(2), "{:?}", said(&zero));

    let w = Witness::new(Arc::new(store), "main");
    let kept = w.read().await.unwrap().unwrap().record;
    assert_eq!((kept.holder.as_str(), kept.epoch, kept.renewals), ("azure", 3, 1), "the refused seed wrote nothing");
    let mut azure = LeaseAgent::new("azure", 77, timing(), Takeover::WhenHolderDown, false);
    assert_eq!(pump(&mut azure, &w, at(0), SiteHealth::Up).await, [LeaseAction::Activate { epoch: 3 }]);
    let renewed = w.read().await.unwrap().unwrap().record;
    assert_eq!((renewed.holder.as_str(), renewed.epoch, renewed.incarnation), ("azure", 3, 77));
    let mut westpole = LeaseAgent::new("westpole", 78, timing(), Takeover::WhenHolderDown, true);
    assert!(pump(&mut westpole, &w, at(0), SiteHealth::Up).await.is_empty(), "the other site stays fenced");

    let nobody = tokio::task::spawn_blocking(|| witness_cli("http://127.0.0.1:9", "fenice-witness-moved", &["show"]));
    let nobody = nobody.await.unwrap();
    assert!(!nobody.status.success());
    assert!(said(&nobody).1.contains("127.0.0.1:9"), "{:?}", said(&nobody));
}

/// A lookout whose witness store does not answer says so at each probe,
/// naming the store, and goes on; a name that cannot be a key, or a URL
/// without its scheme, is refused.
#[tokio::test]
async fn a_lookout_that_cannot_post_names_the_store_and_keeps_probing() {
    let (url, _answering) = health_endpoint().await;
    let args = ["lookout", "--site", "westpole", "--url", url.as_str(), "--interval", "200ms", "--name", "milan"];
    let lookout = Running::spawn(witness_command("http://127.0.0.1:9", "fenice-witness-gone", &args));
    tokio::time::sleep(Duration::from_secs(4)).await;
    let ended = lookout.stop().await;
    let printed = String::from_utf8_lossy(&ended.stdout);
    assert!(ended.status.success(), "{printed}");
    assert!(printed.contains("could not post") && printed.contains("127.0.0.1:9"), "{printed}");
    assert!(printed.contains("westpole answers"), "it went on probing: {printed}");

    let bad = witness_cli(
        "http://127.0.0.1:9",
        "fenice-witness-gone",
        &["lookout", "--site", "w", "--url", &url, "--name", "a/b"],
    );
    assert!(!bad.status.success());
    assert!(said(&bad).1.contains("--name must be a name without"), "{:?}", said(&bad));
    // A health URL without its scheme would only ever "not answer": refused at the start.
    let bare = witness_cli(
        "http://127.0.0.1:9",
        "fenice-witness-gone",
        &["lookout", "--site", "w", "--url", "status.example.it/healthz", "--name", "milan"],
    );
    assert!(!bare.status.success());
    assert!(
        said(&bare).1.contains("--url \"status.example.it/healthz\" is not an http:// or https:// URL"),
        "{:?}",
        said(&bare)
    );
}

/// manifests/lookout/lookout.yaml's command, run as written but for where
/// the witness bucket and the site's health endpoint are: it posts its
/// report under the plan and name the manifest gives, in the witness Site's
/// prefix.
#[tokio::test]
async fn the_lookout_manifests_command_posts_its_reports() {
    use fenice::failover::lookout::key;
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/manifests/lookout/lookout.yaml")).unwrap();
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).unwrap();
    let container = &docs[1]["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<String> =
        container["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_owned()).collect();
    let value = |flag: &str| args.iter().find_map(|a| a.strip_prefix(&format!("--{flag}="))).unwrap().to_owned();
    let (plan, name, witness, site) = (value("plan"), value("name"), value("witness"), value("site"));
    let (bucket, prefix) = witness.strip_prefix("s3://").unwrap().split_once('/').unwrap();

    let server = start_moto().await;
    let store = server.store(bucket, prefix).await.unwrap();
    store.create_bucket(false).await.unwrap();
    let (url, _answering) = health_endpoint().await;
    let args: Vec<String> = args
        .into_iter()
        .map(|a| if a.starts_with("--url=") { format!("--url={url}") } else { a })
        .map(|a| if a.starts_with("--interval=") { "--interval=200ms".to_owned() } else { a })
        .collect();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_fenice"));
    command
        .args(&args)
        .args(["--s3-endpoint", &server.endpoint(), "--s3-path-style"])
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", container["env"][0]["value"].as_str().unwrap());
    let lookout = Running::spawn(command);
    let posted = report_when(&store, &key(&plan, &name), |_| true).await;
    assert!(posted.ok && posted.site == site, "{posted:?}");
    let ended = lookout.stop().await;
    assert!(ended.status.success(), "{ended:?}");
}
