//! `fenice lab`: the whole story on one machine. Two sites of local processes
//! (primary "westpole", standby "azure"), backup repositories at two other
//! providers, a witness at a third, the SdI simulator; tenants issuing invoices
//! continuously, archiving WAL and backed up; a drill; then the primary dies
//! with invoices in flight (or its network is cut: [`fault`]), the standby
//! takes the lease and fails every tenant over; the old primary comes back and
//! must stay fenced. Everything is checked and written to `DIR/lab.json`.

pub mod fault;
pub mod fence;
pub mod manifests;
pub mod operated;
mod pages;
pub mod progress;
pub mod providers;
pub mod report;
pub mod traffic;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use futures::stream;
use serde::Serialize;
use tokio::sync::watch;

use self::fault::{Fault, SiteRuntime};
use self::fence::SiteFence;
use self::progress::Progress;
use self::providers::{Providers, Repo};
use self::report::{Findings, Held, HeldInvoice, Objective, Spread};
use self::traffic::{Resolve, Traffic};
use crate::api::common::{TenantRef, Tier};
use crate::failover::clock::{Clock, SystemClock};
use crate::failover::executor::{Progress as RunProgress, SiteDriver, StateFile, StepContext, run as run_failover};
use crate::failover::fencing::FenceEvent;
use crate::failover::health::{DetectionRule, SiteHealth};
use crate::failover::lease::{LeaseAgent, LeaseTiming, LeaseView, Standing, Takeover, new_incarnation};
use crate::failover::machine::{FailoverState, NewFailover, Phase, RetryRule, StepError, Trigger};
use crate::failover::probing::{self, Probes};
use crate::failover::waves::{GateRule, TenantSpec as WaveTenant, WaveSpec, assign};
use crate::failover::witness::{LeaseStatus, RunningAgent, Witness};
use crate::site::local::{LocalSite, TenantSpec};
use crate::site::local_failover::LocalFailover;
use crate::site::network_cut::SiteLink;
use crate::stack::pg::DbUrl;
use crate::testkit::{Placement, PostgresOptions};

pub const PRIMARY: &str = "westpole";
const STANDBY: &str = "azure";
const PLAN: &str = "westpole-to-azure";
/// Every tenant serves again within this of the kill.
const RTO_OBJECTIVE: Duration = Duration::from_secs(60);
/// Every tenant loses at most this.
const RPO_OBJECTIVE: Duration = Duration::from_secs(5);
/// The namespace the tenants' resources would live in at a Kubernetes site.
const NAMESPACE: &str = "tenants";
/// Up to this many tenants the lab runs each at full rate; beyond, each
/// tenant's periodic work (archiving its WAL, looking for invoices to send)
/// is spaced out in proportion, so that one machine keeps up.
const TENANTS_AT_FULL_RATE: usize = 20;

/// How many times slower than at full rate each tenant's periodic work runs.
fn slowdown(tenants: usize) -> usize {
    tenants.div_ceil(TENANTS_AT_FULL_RATE).max(1)
}

/// How often each app looks for invoices to send to SdI: as a Local site's
/// apps do at full rate (each look is a few queries: 200 apps looking five
/// times a second took a core on their own).
pub fn send_interval(tenants: usize) -> Duration {
    crate::site::local::SEND_INTERVAL * slowdown(tenants) as u32
}

/// How much less often a database with a synchronous standby archives.
const SYNC_ARCHIVES_LESS_OFTEN: usize = 6;

/// `archive_timeout` in seconds (the RPO bound of a cold standby): every
/// second at full rate, for `tenants` tenants waiting at the standby as `standby`.
pub fn archive_timeout_secs(tenants: usize, standby: StandbyMode) -> usize {
    let every = slowdown(tenants);
    match standby {
        // NB: the synchronous standby holds every confirmed commit, so the archive
        // only feeds backups and drills, which close the segment they need
        // themselves; each segment archived costs a process and two uploads,
        // and at 200 tenants those took the whole machine.
        StandbyMode::Sync => every * SYNC_ARCHIVES_LESS_OFTEN,
        StandbyMode::Cold | StandbyMode::Warm | StandbyMode::Tiered => every,
    }
}

/// The default time between two invoices of one tenant: 500 ms for up to 20
/// tenants, then longer, so that the whole machine issues about 40 a second.
pub fn default_invoice_interval(tenants: usize) -> Duration {
    Duration::from_millis(500).max(Duration::from_millis(25) * tenants as u32)
}
/// How long processes on one machine may take to start several at a time.
const SETUP_PARALLELISM: usize = 4;

/// What `fenice lab` runs.
#[derive(Clone, Debug)]
pub struct LabOptions {
    pub tenants: usize,
    /// Where the run's files go: stores, sites, keys. PostgreSQL runs as its
    /// own user when the lab runs as root, so every directory above must let it through.
    pub work_dir: PathBuf,
    /// The `fenice` binary the sites' processes run.
    pub program: PathBuf,
    /// Tenants restored at once in each wave of the failover.
    pub parallelism: u32,
    /// How long the tenants work after their backups before the primary dies.
    pub work_before_kill: Duration,
    /// An invoice per tenant this often.
    pub invoice_interval: Duration,
    pub standby: StandbyMode,
    /// How the primary is lost.
    pub fault: Fault,
    /// For [`Fault::NetworkCut`]: the primary's link (the lab runs in the
    /// namespace at its other end).
    pub link: Option<Arc<SiteLink>>,
}

/// How each tenant waits at the standby site.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StandbyMode {
    /// A PostgreSQL standby the primary commits to synchronously: a failover
    /// promotes it, and no confirmed invoice can be lost.
    Sync,
    /// Nothing runs at the standby: a failover restores the latest base backup
    /// and the archived WAL (invoices confirmed after the last archived WAL
    /// and not yet at SdI are lost: the RPO).
    Cold,
    /// A PostgreSQL at the standby replays the archived WAL from the
    /// repositories as it arrives: a failover only promotes it (the RPO of
    /// cold, in seconds of RTO).
    Warm,
    /// By tier, as a plan would declare it: warm for gold tenants, cold for
    /// the others; one run measures both.
    Tiered,
}

impl StandbyMode {
    /// How a tenant of `tier` waits at the standby under this mode.
    pub fn for_tier(self, tier: Tier) -> StandbyMode {
        match (self, tier) {
            (StandbyMode::Tiered, Tier::Gold) => StandbyMode::Warm,
            (StandbyMode::Tiered, _) => StandbyMode::Cold,
            (mode, _) => mode,
        }
    }
}

/// Everything `lab.json` says.
#[derive(Clone, Debug, Serialize)]
pub struct LabReport {
    pub passed: bool,
    pub tenants: usize,
    #[serde(flatten)]
    pub findings: Findings,
    pub detect_seconds: Spread,
    pub rto_seconds: Spread,
    pub rpo_seconds: Spread,
    pub old_primary_fenced: bool,
    /// How the primary was lost: `kill` or `network-cut`.
    pub fault: Fault,
    /// For a network cut: from the cut until the primary's own lease agent
    /// fenced it (it must be before the standby takes over).
    pub primary_fenced_seconds: Option<f64>,
    pub standby: StandbyMode,
    pub failover: FailoverSummary,
    pub drill: DrillSummary,
    pub objectives: Vec<Objective>,
    pub repositories: Vec<Repo>,
    pub witness: String,
    pub per_tenant: Vec<TenantFigures>,
    pub notes: Vec<String>,
    pub started_at: jiff::Timestamp,
    pub seconds: f64,
    /// The drill's and the failover's reports, as HTML pages by file name.
    #[serde(skip)]
    pub pages: Vec<(&'static str, String)>,
}

#[derive(Clone, Debug, Serialize)]
pub struct FailoverSummary {
    pub name: String,
    pub phase: Phase,
    pub epoch: Option<u64>,
    pub succeeded: u32,
    pub failed: u32,
    pub parallelism: u32,
    /// From the kill to the last tenant verified.
    pub seconds: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct DrillSummary {
    pub tenant: String,
    pub tenants: usize,
    pub passed: bool,
    pub snapshot: Option<String>,
    /// From the start of the restore until the copy was verified.
    pub rto_seconds: f64,
    pub rpo_seconds: Option<f64>,
    pub started: jiff::Timestamp,
    pub ended: jiff::Timestamp,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TenantFigures {
    pub tenant: String,
    pub tier: Tier,
    /// How it waited at the standby: `sync`, `warm` or `cold`.
    pub standby: StandbyMode,
    pub snapshot: Option<String>,
    pub rto_seconds: Option<f64>,
    pub rpo_seconds: Option<f64>,
    pub error: Option<String>,
}

/// The lab's lease timing: a 5 s lease renewed every 500 ms, or for more
/// than 20 tenants 10 s and every second: on one loaded machine a write to the
/// witness can take long, and a renewal that fails for half the lease fences
/// the primary.
fn lease_timing(tenants: usize) -> anyhow::Result<LeaseTiming> {
    let lease = if tenants <= TENANTS_AT_FULL_RATE { Duration::from_secs(5) } else { Duration::from_secs(10) };
    Ok(LeaseTiming::for_lease(lease, lease / 10)?)
}

/// What the detection objective allows beyond lease expiry and a probe
/// interval: the standby's agent notices on its ticks, and the lab reads the
/// witness every 100 ms, both on a loaded machine.
const DETECTION_SLACK: Duration = Duration::from_secs(1);

/// Down after 3 failed probes over at least 1 s, from 2 of the 3 vantage points.
const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// The apps at `urls` (their `/healthz`) from two vantage points, the
/// witness's view from the third.
fn probes<'a>(urls: impl Iterator<Item = &'a String>) -> Probes {
    Probes {
        urls: urls.map(|url| format!("{url}/healthz")).collect(),
        http_vantage_points: 2,
        interval: PROBE_INTERVAL,
        timeout: PROBE_INTERVAL / 2,
        stale_after: PROBE_INTERVAL * 4,
    }
}
fn detection() -> DetectionRule {
    DetectionRule { failure_threshold: 3, window: Duration::from_secs(1), min_vantage_points: 2 }
}

/// A lease agent running in this process, with the lab's fence of its site.
struct Agent {
    running: RunningAgent,
    fence: Arc<SiteFence>,
}

impl Agent {
    fn start(
        site: &Arc<LocalSite>,
        witness: &Witness,
        takeover: Takeover,
        may_create: bool,
        holder_health: watch::Receiver<SiteHealth>,
        clock: &Arc<dyn Clock>,
        timing: &LeaseTiming,
    ) -> Self {
        let fence = Arc::new(SiteFence::new(site.clone()));
        let agent = LeaseAgent::new(site.name(), new_incarnation(), timing.clone(), takeover, may_create);
        let running = RunningAgent::start(agent, witness.clone(), fence.clone(), clock.clone(), holder_health);
        Self { running, fence }
    }
}

/// A partita IVA per tenant (11 digits).
fn vat_of(index: usize) -> String {
    format!("{:011}", 1_234_500_000 + index)
}

fn tier_of(index: usize, tenants: usize) -> Tier {
    match index * 10 / tenants.max(1) {
        0 | 1 => Tier::Gold,
        2..=4 => Tier::Silver,
        _ => Tier::Bronze,
    }
}

fn tenant_ref(name: &str) -> TenantRef {
    TenantRef { namespace: NAMESPACE.into(), name: name.into() }
}

/// Runs the lab. `progress` says on the terminal what happens.
pub async fn run(options: &LabOptions, progress: &Progress) -> anyhow::Result<LabReport> {
    if options.tenants == 0 {
        bail!("--tenants must be at least 1");
    }
    let started_at = jiff::Timestamp::now();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
    let work = options.work_dir.clone();
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let mut notes = Vec::new();

    progress.step("starting the providers: backup repositories, witness, SdI simulator");
    let link = match (options.fault, &options.link) {
        (Fault::Kill, _) => None,
        (Fault::NetworkCut, Some(link)) => Some(link.clone()),
        (Fault::NetworkCut, None) => bail!("a network cut needs the primary's link: run it through `fenice lab`"),
    };
    let providers = Providers::start(&work, &options.program, link.is_some(), progress).await?;
    for repo in &providers.repos {
        progress.step(&format!("  repository {} at {}", repo.location, repo.provider));
    }
    let repo = Arc::new(providers.open_restore_repo().await?);
    let witness = Witness::new(providers.witness.clone(), PLAN);

    // NB: a primary whose network is cut runs in a namespace of its own, on the link's address.
    let placement = match &link {
        Some(link) => {
            let netns = link.site_namespace().context("opening the primary's network namespace")?;
            Placement { host: link.site_addr(), netns: Some(Arc::new(netns)) }
        }
        None => Placement::here(),
    };
    let site_netns = placement.netns.clone();
    let send_interval = send_interval(options.tenants);
    let primary = Arc::new(
        LocalSite::placed(PRIMARY, &options.program, &work.join(PRIMARY), placement).sending_every(send_interval),
    );
    let standby = Arc::new(LocalSite::new(STANDBY, &options.program, &work.join(STANDBY)).sending_every(send_interval));
    let names: Vec<String> = (1..=options.tenants).map(|i| format!("tenant-{i:03}")).collect();
    let specs = tenant_specs(&names, &providers);
    // NB: one archiver per site opens the repositories once for all its databases.
    let (primary_archiver, standby_archiver) = tokio::task::spawn_blocking({
        let (primary, standby, env) = (primary.clone(), standby.clone(), providers.agent_env.clone());
        move || anyhow::Ok((primary.start_wal_archiver(&env)?, standby.start_wal_archiver(&env)?))
    })
    .await??;
    let archiving = |spec: &TenantSpec, archiver: &Path| TenantSpec {
        postgres: spec
            .postgres
            .clone()
            .setting("wal_level", "replica")
            .setting("archive_mode", "on")
            .setting("archive_timeout", archive_timeout_secs(options.tenants, options.standby).to_string())
            .setting(
                "archive_command",
                format!("'{}' agent wal-push --via '{}' %p", options.program.display(), archiver.display()),
            ),
        fenced: true,
        ..spec.clone()
    };

    progress.step(&format!(
        "starting {} tenants at {PRIMARY} (PostgreSQL archiving WAL through the site's archiver, the invoicing app)",
        names.len()
    ));
    let started = Instant::now();
    let primary_specs: Vec<TenantSpec> = specs.values().map(|s| archiving(s, &primary_archiver)).collect();
    for_each_blocking(&primary_specs, SETUP_PARALLELISM, Tally { progress, what: "tenants up" }, {
        let site = primary.clone();
        move |spec| site.start_tenant(spec).map_err(anyhow::Error::from)
    })
    .await?;
    progress.step(&format!("  {} tenants up in {:.1} s", names.len(), started.elapsed().as_secs_f64()));

    // The standby's databases archive their WAL once promoted, as the primary's do.
    let standby_specs: BTreeMap<String, TenantSpec> = specs
        .iter()
        .map(|(name, spec)| (name.clone(), TenantSpec { fenced: false, ..archiving(spec, &standby_archiver) }))
        .collect();
    if options.standby == StandbyMode::Sync {
        progress.step(&format!("starting a synchronous standby of every tenant's database at {STANDBY}"));
        let started = Instant::now();
        let each: Vec<TenantSpec> = standby_specs.values().cloned().collect();
        for_each_blocking(&each, SETUP_PARALLELISM, Tally { progress, what: "standbys streaming" }, {
            let (site, primary) = (standby.clone(), primary.clone());
            move |spec| site.start_standby(spec, &primary).map_err(anyhow::Error::from)
        })
        .await?;
        progress.step(&format!(
            "  {} standbys streaming in {:.1} s: a commit is confirmed once {STANDBY} has it",
            each.len(),
            started.elapsed().as_secs_f64()
        ));
    }

    // The primary creates the lease and activates its apps under epoch 1.
    let (_always_up, up) = watch::channel(SiteHealth::Up);
    let timing = lease_timing(options.tenants)?;
    let (mut primary_agent, primary_runtime) = match &site_netns {
        None => (Agent::start(&primary, &witness, Takeover::Never, true, up, &clock, &timing), None),
        Some(netns) => {
            // NB: its witness is its own, so the connections it makes are the site's.
            let (place, site, clock, timing) =
                (providers.witness_place.clone(), primary.clone(), clock.clone(), timing.clone());
            let (runtime, agent) = SiteRuntime::start(netns.clone(), move || async move {
                let witness = Witness::new(place.open().await?, PLAN);
                Ok(Agent::start(&site, &witness, Takeover::Never, true, up, &clock, &timing))
            })
            .await?;
            (agent, Some(runtime))
        }
    };
    wait_status(&mut primary_agent.running.status, Duration::from_secs(30), |s| {
        matches!(s.standing, Standing::Active { .. })
    })
    .await
    .context("the primary never became active under the witness lease")?;
    progress.step(&format!("{PRIMARY} holds the witness lease under epoch 1: its apps are active"));

    let primary_urls: BTreeMap<String, String> = names
        .iter()
        .filter_map(|n| {
            primary.with_tenant(n, |s| s.app.as_ref().map(|a| a.base_url())).flatten().map(|u| (n.clone(), u))
        })
        .collect();
    let driver = Arc::new(LocalFailover::new(
        primary.clone(),
        standby.clone(),
        standby_specs,
        repo.clone(),
        providers.restore_location().to_owned(),
        options.program.clone(),
        providers.sdi.endpoint(),
        jiff::civil::date(2029, 1, 1),
    ));
    let resolve: Resolve = {
        let (driver, urls) = (driver.clone(), primary_urls.clone());
        Arc::new(move |tenant: &str| {
            let switched = driver.endpoints.lock().unwrap_or_else(|e| e.into_inner()).get(tenant).cloned();
            switched.or_else(|| urls.get(tenant).cloned())
        })
    };
    let traffic = Traffic::start(&names, resolve, options.invoice_interval);
    progress.step(&format!(
        "customers issue an invoice per tenant every {} ms; apps transmit to SdI",
        options.invoice_interval.as_millis()
    ));
    tokio::time::sleep(Duration::from_secs(3)).await;

    progress.step(&format!("backing up every tenant (dump + base backup) to {} repositories", providers.repos.len()));
    let started = Instant::now();
    let backups: Vec<(String, String)> =
        names.iter().filter_map(|n| primary.with_tenant(n, |s| s.db_url(n)).map(|url| (n.clone(), url))).collect();
    for_each_blocking(&backups, SETUP_PARALLELISM.min(2), Tally { progress, what: "tenants backed up" }, {
        let (program, env) = (options.program.clone(), providers.agent_env.clone());
        move |(tenant, db)| backup(&program, &env, tenant, db)
    })
    .await?;
    progress.step(&format!(
        "  {} backups in {:.1} s; {} invoices confirmed so far",
        backups.len(),
        started.elapsed().as_secs_f64(),
        traffic.confirmed()
    ));

    let drill = drill(options, &providers, &primary, &specs, &repo, &work, progress).await;

    let warm: Vec<&String> = (names.iter().enumerate())
        .filter(|(i, _)| options.standby.for_tier(tier_of(*i, names.len())) == StandbyMode::Warm)
        .map(|(_, n)| n)
        .collect();
    if !warm.is_empty() {
        progress.step(&format!(
            "starting a warm standby of {} tenants' databases at {STANDBY}: their base backup, replaying the archive",
            warm.len()
        ));
        let started = Instant::now();
        let results: Vec<Result<(), StepError>> = stream::iter(warm.iter().copied())
            .map(|name| driver.start_warm_standby(name))
            .buffer_unordered(SETUP_PARALLELISM)
            .collect()
            .await;
        if let Some(e) = results.into_iter().find_map(Result::err) {
            bail!("starting a warm standby at {STANDBY}: {}", e.message);
        }
        progress.step(&format!(
            "  {} warm standbys replaying in {:.1} s: a failover promotes them",
            warm.len(),
            started.elapsed().as_secs_f64()
        ));
    }

    progress.step(&format!("tenants keep working for {} s", options.work_before_kill.as_secs()));
    tokio::time::sleep(options.work_before_kill).await;

    // The standby watches the primary from three vantage points.
    let probing = probing::spawn(PRIMARY, probes(primary_urls.values()), witness.clone(), detection(), clock.clone());
    let mut standby_agent =
        Agent::start(&standby, &witness, Takeover::WhenHolderDown, false, probing.health.clone(), &clock, &timing);
    wait_status(&mut standby_agent.running.status, Duration::from_secs(30), |s| {
        matches!(s.view, LeaseView::Held { .. })
    })
    .await
    .context("the standby never read the lease")?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let before_kill = traffic.confirmed();
    let killed_at = jiff::Timestamp::now();
    match &link {
        None => {
            primary_agent.running.abort();
            let groups = primary.kill();
            progress.step(&format!(
                "KILL: every process of {PRIMARY} got SIGKILL ({} process groups) with {before_kill} invoices confirmed",
                groups.len(),
            ));
        }
        Some(link) => {
            link.cut()?;
            progress.step(&format!(
                "CUT: {PRIMARY}'s network link is down with {before_kill} invoices confirmed; its {} tenants' \
                 databases, apps and lease agent keep running, unreachable",
                primary.tenants().len()
            ));
        }
    }
    *driver.lost_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(killed_at);

    let mut activated = standby_agent.fence.subscribe();
    let epoch = tokio::time::timeout(Duration::from_secs(120), activated.wait_for(Option::is_some))
        .await
        .context("the standby did not take the lease within 120 s of the kill")?
        .context("the standby's lease agent stopped")?
        .unwrap_or_default();
    // NB: detection ends when the lease is taken, which is when the agent
    // decides to activate; telling every app the epoch comes after (200 apps
    // on a loaded machine took seconds), and is the failover's work.
    let apps_told_at = jiff::Timestamp::now();
    let detected_at = standby_agent
        .fence
        .events()
        .iter()
        .find(|(_, event)| matches!(event, FenceEvent::Activated { .. }))
        .map_or(apps_told_at, |(at, _)| *at);
    let detect = duration_between(killed_at, detected_at);
    progress.step(&format!(
        "{PRIMARY} down from 2 of 3 vantage points at +{:.1} s; {STANDBY} took the lease under epoch {epoch} at +{:.1} s \
         (its apps told by +{:.1} s)",
        probing.down_at().map_or(f64::NAN, |d| duration_between(killed_at, d).as_secs_f64()),
        detect.as_secs_f64(),
        duration_between(killed_at, apps_told_at).as_secs_f64()
    ));

    let state = fail_over(options, &names, &providers, &driver, &standby_agent, epoch, &clock, progress).await?;

    progress.step("customers now reach the tenants at the standby; 5 s more of work");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let refused = traffic.refused();
    let committed = traffic.stop().await;
    progress.step(&format!("{} invoices confirmed in all ({refused} requests refused or unanswered)", committed.len()));

    let old_primary_fenced = match &link {
        None => restart_old_primary(&primary, &specs, &witness, &driver, &clock, &timing, progress).await,
        Some(link) => {
            rejoin_old_primary(&primary, specs.len(), link, &primary_agent, killed_at, &timing, progress).await
        }
    };
    let primary_fenced_seconds = link.as_ref().and_then(|_| {
        let events = primary_agent.fence.events();
        let fenced = events.iter().find(|(at, e)| *at >= killed_at && *e == FenceEvent::Fenced);
        fenced.map(|(at, _)| duration_between(killed_at, *at).as_secs_f64())
    });

    progress.step("waiting for the standby to transmit everything and collect the receipts");
    drain(&standby, &names, Duration::from_secs(120)).await;
    let held = held_at(&standby, &names).await?;
    let sdi = sdi_listing(&providers, &names).await?;
    let mut findings = report::compare(&committed, &held, &sdi);
    findings.dual_active =
        // NB: a killed primary's apps die with it; a cut one's stay active until its own agent fences them.
        report::dual_active(&[
            (&primary_agent.fence.events(), link.is_none().then_some(killed_at)),
            (&standby_agent.fence.events(), None),
        ]);
    if findings.dual_active {
        findings.problems.push("two sites were active at once".into());
    }

    notes.push(
        "the three vantage points run in this process on one machine: they differ in what they probe, not in \
         their network path"
            .into(),
    );
    notes.push(
        "after the failover the standby's databases do not archive WAL yet: the next backup protects them".into(),
    );
    let report = conclude(
        options,
        &providers,
        progress,
        Outcome {
            names: &names,
            state: &state,
            killed_at,
            rpo_measured_to: killed_at,
            detect,
            timing: &timing,
            findings,
            old_primary_fenced,
            primary_fenced_seconds,
            drill,
            notes,
            started_at,
        },
    );
    progress.step("stopping every process");
    drop((standby_agent, probing, primary_agent, primary_runtime));
    standby.kill();
    primary.kill();
    Ok(report)
}

/// What one run found, for [`conclude`].
struct Outcome<'a> {
    names: &'a [String],
    state: &'a FailoverState,
    killed_at: jiff::Timestamp,
    /// What the failover measured each tenant's RPO up to: the kill (the
    /// lab's own driver knows it), or the loss it declared (an automatic one:
    /// the first failed probe). The lab counts RPO to the kill.
    rpo_measured_to: jiff::Timestamp,
    /// From the loss to the standby's takeover of the lease.
    detect: Duration,
    timing: &'a LeaseTiming,
    findings: Findings,
    old_primary_fenced: bool,
    primary_fenced_seconds: Option<f64>,
    drill: DrillSummary,
    /// What the report must say of this run besides the figures' definitions.
    notes: Vec<String>,
    started_at: jiff::Timestamp,
}

/// The report of a run: each tenant's figures, the objectives, the verdict.
fn conclude(options: &LabOptions, providers: &Providers, progress: &Progress, outcome: Outcome<'_>) -> LabReport {
    let Outcome {
        names,
        state,
        killed_at,
        rpo_measured_to,
        detect,
        timing,
        findings,
        old_primary_fenced,
        primary_fenced_seconds,
        drill,
        mut notes,
        started_at,
    } = outcome;
    let rpo_past_kill = duration_between(killed_at, rpo_measured_to);
    let failover_seconds = state.completed_at.map_or(f64::NAN, |done| {
        duration_between(killed_at, jiff::Timestamp::from_millisecond(done.unix_millis() as i64).unwrap_or(killed_at))
            .as_secs_f64()
    });
    // NB: the failover measures RTO from the loss it declared; the lab counts from the kill.
    let declared = jiff::Timestamp::from_millisecond(state.declared_loss.unix_millis() as i64).unwrap_or(killed_at);
    let declared_after_kill = duration_between(killed_at, declared);
    let per_tenant: Vec<TenantFigures> = state
        .tenants()
        .map(|(_, t)| {
            let tier = tier_of(names.iter().position(|n| *n == t.tenant.name).unwrap_or(0), names.len());
            (t, tier)
        })
        .map(|(t, tier)| TenantFigures {
            tenant: t.tenant.name.clone(),
            tier,
            standby: options.standby.for_tier(tier),
            snapshot: t.snapshot_id.clone(),
            rto_seconds: t.rto_ms.map(|ms| (declared_after_kill + Duration::from_millis(ms)).as_secs_f64()),
            rpo_seconds: t.rpo_ms.map(|ms| Duration::from_millis(ms).saturating_sub(rpo_past_kill).as_secs_f64()),
            error: t.error.clone(),
        })
        .collect();
    let rto: Vec<Duration> = per_tenant.iter().filter_map(|t| t.rto_seconds.map(Duration::from_secs_f64)).collect();
    let rpo: Vec<Duration> = per_tenant.iter().filter_map(|t| t.rpo_seconds.map(Duration::from_secs_f64)).collect();
    let (succeeded, failed, _) = state.counts();
    let (rto_seconds, rpo_seconds) = (Spread::of(&rto), Spread::of(&rpo));
    let detect_seconds = Spread::of(&[detect]);
    let detect_bound = timing.observer_wait() + PROBE_INTERVAL;

    let loss = match options.fault {
        Fault::Kill => "kill",
        Fault::NetworkCut => "cut",
    };
    notes.push(format!(
        "detection is one instant for the whole site: detect_seconds is the time from the {loss} to the standby's \
         takeover of the lease (lease {} s, renewed every {} ms; probes every {} ms)",
        timing.lease_duration.as_secs_f64(),
        timing.renew_interval.as_millis(),
        PROBE_INTERVAL.as_millis()
    ));
    notes.push(format!(
        "RTO runs from the {loss} to the tenant verified at the standby; RPO from the tenant's last restored \
         invoice to the {loss}"
    ));
    if let Some(fenced) = primary_fenced_seconds {
        notes.push(format!(
            "the primary's network was cut by taking its one link down (connections fail at once rather than hang); \
             its own lease agent, unable to renew, fenced its apps {fenced:.1} s after the cut, before the standby \
             took over at {:.1} s",
            detect.as_secs_f64()
        ));
    }

    let objectives = vec![
        Objective {
            name: "detection",
            target: format!(
                "≤ {:.1} s (lease expiry as the standby counts it, {:.1} s, + one probe interval + {} s for the \
                 agent's ticks and the lab's reading of the witness)",
                (detect_bound + DETECTION_SLACK).as_secs_f64(),
                timing.observer_wait().as_secs_f64(),
                DETECTION_SLACK.as_secs()
            ),
            measured: format!("{:.1} s", detect.as_secs_f64()),
            met: detect <= detect_bound + DETECTION_SLACK,
        },
        Objective {
            name: "rto",
            target: format!("every tenant serves again within {} s of the {loss}", RTO_OBJECTIVE.as_secs()),
            measured: format!("p50 {:.1} s, max {:.1} s", rto_seconds.p50, rto_seconds.max),
            met: rto.len() == names.len() && rto_seconds.max <= RTO_OBJECTIVE.as_secs_f64(),
        },
        Objective {
            name: "rpo",
            target: format!("≤ {} s", RPO_OBJECTIVE.as_secs()),
            measured: format!("p50 {:.2} s, max {:.2} s", rpo_seconds.p50, rpo_seconds.max),
            met: rpo.len() == names.len() && rpo_seconds.max <= RPO_OBJECTIVE.as_secs_f64(),
        },
    ];
    let passed = findings.problems.is_empty()
        && findings.invoices_issued > 0
        && state.phase == Phase::Succeeded
        && old_primary_fenced
        && drill.passed;
    LabReport {
        passed,
        tenants: names.len(),
        findings,
        detect_seconds,
        rto_seconds,
        rpo_seconds,
        old_primary_fenced,
        fault: options.fault,
        primary_fenced_seconds,
        standby: options.standby,
        failover: FailoverSummary {
            name: state.name.clone(),
            phase: state.phase,
            epoch: state.epoch,
            succeeded,
            failed,
            parallelism: options.parallelism,
            seconds: failover_seconds,
        },
        pages: pages::render(&drill, state, names),
        drill,
        objectives,
        repositories: providers.repos.clone(),
        witness: providers.witness_provider.clone(),
        per_tenant,
        notes,
        started_at,
        seconds: progress.elapsed(),
    }
}

fn tenant_specs(names: &[String], providers: &Providers) -> BTreeMap<String, TenantSpec> {
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let postgres =
                providers.agent_env.iter().fold(lab_postgres(), |o, (k, v)| o.env(k, v)).env("FENICE_TENANT", name);
            let spec = TenantSpec {
                name: name.clone(),
                vat: vat_of(i),
                company: format!("Studio {name} S.r.l."),
                sdi_endpoint: Some(providers.sdi.endpoint()),
                sdi_environment: crate::app::SdiEnvironment::Production,
                epoch: 1,
                fenced: false,
                postgres,
            };
            (name.clone(), spec)
        })
        .collect()
}

/// PostgreSQL as the lab runs it, hundreds on one disk: 1 MiB WAL segments, and
/// little WAL kept for recycling (the default keeps up to 1 GB per server).
fn lab_postgres() -> PostgresOptions {
    PostgresOptions::new().wal_segment_mb(1).setting("min_wal_size", "4MB").setting("max_wal_size", "32MB")
}

/// Runs `f` on every item, `parallelism` at a time, on blocking threads; the
/// first error. When that takes long, says every [`TALLY_EVERY`] how many are
/// `done` (e.g. "tenants up").
async fn for_each_blocking<T, F>(items: &[T], parallelism: usize, done: Tally<'_>, f: F) -> anyhow::Result<()>
where
    T: Clone + Send + 'static,
    F: Fn(&T) -> anyhow::Result<()> + Clone + Send + 'static,
{
    let mut results = stream::iter(items.iter().cloned())
        .map(|item| {
            let f = f.clone();
            async move { tokio::task::spawn_blocking(move || f(&item)).await.map_err(anyhow::Error::from)? }
        })
        .buffer_unordered(parallelism.max(1));
    let (mut finished, mut first_error, mut told) = (0, None, Instant::now());
    while let Some(result) = results.next().await {
        finished += 1;
        if let Err(e) = result {
            first_error.get_or_insert(e);
        }
        if told.elapsed() >= TALLY_EVERY && finished < items.len() {
            done.progress.step(&format!("  {finished}/{} {} so far", items.len(), done.what));
            told = Instant::now();
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// How often long work at every tenant says how far it is.
const TALLY_EVERY: Duration = Duration::from_secs(20);

/// What to call the finished items of long work, and where to say it.
struct Tally<'a> {
    progress: &'a Progress,
    what: &'a str,
}

/// `fenice agent backup --physical` of one tenant into every repository.
fn backup(program: &Path, env: &[(String, String)], tenant: &str, db: &str) -> anyhow::Result<()> {
    let args = ["agent", "backup", "--physical", "--tenant", tenant];
    providers::run_fenice(program, env, &[("FENICE_DB_URL", db)], &args)
}

/// A drill of the first tenant: its latest backup and WAL restored at an
/// isolated copy of the standby (own ports and directories, no SdI), verified
/// against the backup's record, then torn down.
async fn drill(
    options: &LabOptions,
    providers: &Providers,
    primary: &Arc<LocalSite>,
    specs: &BTreeMap<String, TenantSpec>,
    repo: &Arc<crate::repo::repository::Repository>,
    work: &Path,
    progress: &Progress,
) -> DrillSummary {
    let Some((tenant, _)) = specs.iter().next() else { unreachable!("at least one tenant") };
    progress.step(&format!("drill: restoring {tenant} up to now at an isolated copy of {STANDBY}, verifying it"));
    let drill_site = Arc::new(LocalSite::new("azure-drill", &options.program, &work.join("azure-drill")));
    let until = match archive_now(primary, tenant, Duration::from_secs(60)).await {
        Ok(until) => until,
        Err(e) => {
            progress.step(&format!("  the archive did not catch up ({e:#}): the drill may miss the last seconds"));
            jiff::Timestamp::now()
        }
    };
    let mut driver = LocalFailover::new(
        primary.clone(),
        drill_site.clone(),
        specs.clone(),
        repo.clone(),
        providers.restore_location().to_owned(),
        options.program.clone(),
        providers.sdi.endpoint(),
        jiff::civil::date(2029, 1, 1),
    );
    driver.until = Some(until);
    *driver.lost_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(until);
    let ctx = StepContext {
        failover: "drill".into(),
        plan: PLAN.into(),
        trigger: Trigger::Manual,
        source: PRIMARY.into(),
        target: "azure-drill".into(),
        epoch: None,
    };
    let (started, began) = (Instant::now(), jiff::Timestamp::now());
    let restored = driver.restore_tenant(&ctx, &tenant_ref(tenant)).await;
    let restore_seconds = started.elapsed().as_secs_f64();
    let torn_down = driver.discard_tenant(&ctx, &tenant_ref(tenant)).await;
    let summary = DrillSummary {
        tenant: tenant.clone(),
        tenants: 1,
        passed: false,
        snapshot: None,
        rto_seconds: restore_seconds,
        rpo_seconds: None,
        started: began,
        ended: jiff::Timestamp::now(),
        error: None,
    };
    let summary = match (restored, torn_down) {
        (Ok(r), Ok(())) => DrillSummary {
            passed: true,
            snapshot: Some(r.snapshot_id),
            rpo_seconds: Some(r.rpo.as_secs_f64()),
            ..summary
        },
        (Err(e), _) | (Ok(_), Err(e)) => DrillSummary { error: Some(e.message), ..summary },
    };
    match &summary.error {
        None => progress.step(&format!(
            "  drill passed: restored, verified against the backup's record, torn down in {restore_seconds:.1} s"
        )),
        Some(e) => progress.step(&format!("  DRILL FAILED: {e}")),
    }
    summary
}

/// Closes the tenant's current WAL segment at `site` and waits until it is
/// archived: a restore up to the returned time then finds every segment it
/// needs (the archive's end would otherwise be up to `archive_timeout` behind).
async fn archive_now(site: &LocalSite, tenant: &str, timeout: Duration) -> anyhow::Result<jiff::Timestamp> {
    let url =
        site.with_tenant(tenant, |s| s.db_url(tenant)).with_context(|| format!("tenant {tenant} does not run"))?;
    let client = DbUrl::parse(&url)?.connect().await?;
    let until = jiff::Timestamp::now();
    // NB: recovery to `until` ends at the first commit after it, which must be
    // in the archive too, or PostgreSQL stops with "recovery ended before
    // configured recovery target was reached": this transaction is that commit.
    tokio::time::sleep(Duration::from_millis(10)).await;
    client.query_one("SELECT txid_current()", &[]).await?;
    let segment: String = client.query_one("SELECT pg_walfile_name(pg_current_wal_lsn())", &[]).await?.get(0);
    client.query_one("SELECT pg_switch_wal()", &[]).await?;
    let deadline = Instant::now() + timeout;
    loop {
        let archived: Option<String> =
            client.query_one("SELECT last_archived_wal FROM pg_stat_archiver", &[]).await?.get(0);
        if archived.is_some_and(|a| a >= segment) {
            return Ok(until);
        }
        if Instant::now() > deadline {
            bail!("WAL segment {segment} not archived after {} s", timeout.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The automatic failover at the standby, run to its end.
#[allow(clippy::too_many_arguments)]
async fn fail_over(
    options: &LabOptions,
    names: &[String],
    providers: &Providers,
    driver: &Arc<LocalFailover>,
    agent: &Agent,
    epoch: u64,
    clock: &Arc<dyn Clock>,
    progress: &Progress,
) -> anyhow::Result<FailoverState> {
    let tenants: Vec<WaveTenant> = names
        .iter()
        .enumerate()
        .map(|(i, n)| WaveTenant { tenant: tenant_ref(n), tier: tier_of(i, names.len()) })
        .collect();
    let wave = |name: &str, tiers: Vec<Tier>| WaveSpec {
        name: name.into(),
        tiers,
        parallelism: options.parallelism,
        gate: GateRule { max_failed_tenants: 0, require_approval: false },
    };
    let waves =
        assign(PLAN, &[wave("gold", vec![Tier::Gold]), wave("others", vec![Tier::Silver, Tier::Bronze])], &tenants)?;
    let new = NewFailover {
        name: format!("{PRIMARY}-lost-epoch-{epoch}"),
        plan: PLAN.into(),
        trigger: Trigger::Automatic,
        source: PRIMARY.into(),
        target: STANDBY.into(),
        declared_loss: clock.wall(),
        epoch: Some(epoch),
    };
    let retry = RetryRule { max_attempts: 4, base_millis: 1_000, max_millis: 8_000, refence_millis: 5_000 };
    let mut state = FailoverState::new(new, waves, retry);
    let mut file = StateFile::create(providers.witness.clone(), &state).await?;
    progress.step(&format!(
        "failover {} begins: waves gold, then silver and bronze, {} tenants at a time; state in the witness store",
        state.name, options.parallelism
    ));
    let status = agent.running.status.clone();
    let observe = move || RunningAgent::observation(&status);
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut reported = 0;
    // NB: a task of its own: the driver's steps block their thread at times.
    let telling = AbortOnDrop(tokio::spawn(tell_switched(driver.clone(), names.len(), progress.clone())));
    loop {
        let progress_now =
            run_failover(&mut state, driver.as_ref() as &dyn SiteDriver, &mut file, clock.as_ref(), &observe).await?;
        let (done, failed, total) = state.counts();
        if done + failed > reported {
            reported = done + failed;
            for (_, t) in state.tenants().filter(|(_, t)| t.step == crate::failover::machine::TenantStep::Failed) {
                progress.step(&format!(
                    "  {} FAILED: {}",
                    t.tenant.name,
                    t.error.as_deref().unwrap_or("no reason given")
                ));
            }
            progress.step(&format!(
                "  {done}/{total} tenants serve at {STANDBY}{}",
                if failed > 0 { format!(", {failed} failed") } else { String::new() }
            ));
        }
        match progress_now {
            RunProgress::Finished(phase) => {
                drop(telling);
                progress.step(&format!("failover {}: {phase:?}", state.name));
                return Ok(state);
            }
            RunProgress::Waiting(_) if Instant::now() > deadline => {
                bail!("the failover did not finish within 15 minutes: {:?}", state.phase)
            }
            RunProgress::Waiting(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// While a failover runs, says every [`TALLY_EVERY`] how many tenants the
/// standby serves so far (one run of the machine brings back many).
async fn tell_switched(driver: Arc<LocalFailover>, total: usize, progress: Progress) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + TALLY_EVERY, TALLY_EVERY);
    loop {
        ticks.tick().await;
        let switched = driver.endpoints.lock().unwrap_or_else(|e| e.into_inner()).len();
        progress.step(&format!("  {switched}/{total} tenants serve at {STANDBY} so far"));
    }
}

/// Stops a task when dropped, also when its owner returns early.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The old primary's machines come back with their disks: each tenant's
/// database recovers and its app starts fenced, and a new lease agent finds a
/// higher epoch. True when, after twice the lease's duration, the agent is
/// still fenced and every app refuses to issue an invoice.
async fn restart_old_primary(
    primary: &Arc<LocalSite>,
    specs: &BTreeMap<String, TenantSpec>,
    witness: &Witness,
    driver: &Arc<LocalFailover>,
    clock: &Arc<dyn Clock>,
    timing: &LeaseTiming,
    progress: &Progress,
) -> bool {
    progress.step(&format!("{PRIMARY} comes back: its databases recover from the crash, its apps start fenced"));
    // NB: without its standby, a primary that waited for one would hang on its first write.
    let crashed: Vec<TenantSpec> = primary
        .crashed_tenants()
        .iter()
        .filter_map(|t| specs.get(t))
        .map(|s| TenantSpec {
            fenced: true,
            postgres: s.postgres.clone().setting("synchronous_standby_names", ""),
            ..s.clone()
        })
        .collect();
    let restarted = for_each_blocking(&crashed, SETUP_PARALLELISM, Tally { progress, what: "databases recovered" }, {
        let site = primary.clone();
        move |spec| site.restart_tenant(spec).map_err(anyhow::Error::from)
    })
    .await;
    if let Err(e) = restarted {
        progress.step(&format!("  restarting {PRIMARY} failed: {e:#}"));
        return false;
    }
    let standby_urls: Vec<String> =
        driver.endpoints.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
    let probing = probing::spawn(STANDBY, probes(standby_urls.iter()), witness.clone(), detection(), clock.clone());
    let agent = Agent::start(primary, witness, Takeover::WhenHolderDown, true, probing.health.clone(), clock, timing);
    let wait = timing.lease_duration * 2;
    tokio::time::sleep(wait).await;
    let standing = agent.running.status.borrow().standing;
    let never_activated = !agent.fence.events().iter().any(|(_, e)| matches!(e, FenceEvent::Activated { .. }));
    let (refused, apps) = apps_refusing(primary).await;
    let fenced = standing == Standing::Fenced && never_activated && refused == apps && apps == crashed.len();
    progress.step(&format!(
        "  {PRIMARY}'s lease agent: {}; {refused}/{apps} restarted apps refuse to issue",
        if standing == Standing::Fenced { "fenced (the lease names a higher epoch)" } else { "ACTIVE" },
    ));
    drop(agent);
    fenced
}

/// The old primary's network comes back, with everything still running there.
/// True when, after twice the lease's duration, its lease agent is fenced and
/// has not activated since the cut, and each of its `tenants` either refuses
/// to issue an invoice or was stopped by the fence (an app that could not
/// confirm it in time, e.g. one whose commit waited for the cut standby).
async fn rejoin_old_primary(
    primary: &Arc<LocalSite>,
    tenants: usize,
    link: &SiteLink,
    agent: &Agent,
    cut_at: jiff::Timestamp,
    timing: &LeaseTiming,
    progress: &Progress,
) -> bool {
    if let Err(e) = link.heal() {
        progress.step(&format!("  joining {PRIMARY} to the network again failed: {e}"));
        return false;
    }
    progress.step(&format!("{PRIMARY}'s network is back: its lease agent reads the witness again"));
    tokio::time::sleep(timing.lease_duration * 2).await;
    let standing = agent.running.status.borrow().standing;
    let events = agent.fence.events();
    let activated_since = events.iter().any(|(at, e)| *at >= cut_at && matches!(e, FenceEvent::Activated { .. }));
    let (refused, apps) = apps_refusing(primary).await;
    let stopped = tenants.saturating_sub(primary.tenants().len());
    progress.step(&format!(
        "  {PRIMARY}'s lease agent: {}; {refused}/{apps} apps refuse to issue, {stopped} stopped by the fence",
        match (standing, activated_since) {
            (Standing::Fenced, false) => "fenced (the lease names a higher epoch)",
            (Standing::Fenced, true) => "fenced, but it ACTIVATED its apps after the cut",
            _ => "ACTIVE",
        },
    ));
    standing == Standing::Fenced && !activated_since && refused == apps && apps + stopped == tenants
}

/// How many of the apps at `site` refuse to issue an invoice as fenced, of how many.
async fn apps_refusing(site: &LocalSite) -> (usize, usize) {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap_or_default();
    let mut refused = 0;
    let apps: Vec<String> = site
        .tenants()
        .iter()
        .filter_map(|t| site.with_tenant(t, |s| s.app.as_ref().map(|a| a.base_url())).flatten())
        .collect();
    for app in &apps {
        let body = serde_json::json!({
            "series": "FENCED",
            "customer": {"vat": "09876543210", "name": "Rossi", "recipient_code": "ABC1234"},
            "description": "must be refused",
            "taxable_cents": 100,
        });
        let answer = match http.post(format!("{app}/v1/invoices")).json(&body).send().await {
            Ok(a) => a.json::<serde_json::Value>().await.ok(),
            Err(_) => None,
        };
        if answer.is_some_and(|a| a["error"] == "fenced") {
            refused += 1;
        }
    }
    (refused, apps.len())
}

/// Waits until every tenant at `site` has nothing pending or awaiting a receipt.
async fn drain(site: &LocalSite, names: &[String], timeout: Duration) {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap_or_default();
    let deadline = Instant::now() + timeout;
    for name in names {
        let Some(url) = site.with_tenant(name, |s| s.app.as_ref().map(|a| a.base_url())).flatten() else { continue };
        while Instant::now() < deadline {
            let stats: Option<serde_json::Value> = match http.get(format!("{url}/v1/stats")).send().await {
                Ok(r) => r.json().await.ok(),
                Err(_) => None,
            };
            if stats.is_some_and(|s| s["invoices"]["pending"] == 0 && s["invoices"]["sent"] == 0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// What each tenant's database at `site` holds.
async fn held_at(site: &LocalSite, names: &[String]) -> anyhow::Result<BTreeMap<String, Held>> {
    let mut out = BTreeMap::new();
    for name in names {
        let Some(url) = site.with_tenant(name, |s| s.db_url(name)) else { continue };
        let client = DbUrl::parse(&url)?.connect().await?;
        let invoices = client
            .query(
                "SELECT series, number, file_name, queue_state, sdi_id, xml_sha256 FROM invoices ORDER BY series, number",
                &[],
            )
            .await
            .with_context(|| format!("reading tenant {name}'s invoices at {}", site.name()))?
            .iter()
            .map(|r| HeldInvoice {
                series: r.get(0),
                number: r.get(1),
                file_name: r.get(2),
                queue_state: r.get(3),
                sdi_id: r.get(4),
                xml_sha256: r.get(5),
            })
            .collect();
        let receipts = client
            .query("SELECT DISTINCT sdi_id FROM receipts", &[])
            .await
            .with_context(|| format!("reading tenant {name}'s receipts at {}", site.name()))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        out.insert(name.clone(), Held { invoices, receipts });
    }
    Ok(out)
}

/// What SdI received per tenant.
async fn sdi_listing(
    providers: &Providers,
    names: &[String],
) -> anyhow::Result<BTreeMap<String, Vec<crate::app::sdi::Record>>> {
    let client = crate::app::sdi::client::Client::new(&providers.sdi.endpoint())?;
    let mut out = BTreeMap::new();
    for name in names {
        out.insert(name.clone(), client.list(name).await?);
    }
    Ok(out)
}

async fn wait_status(
    status: &mut watch::Receiver<LeaseStatus>,
    timeout: Duration,
    done: impl Fn(&LeaseStatus) -> bool,
) -> anyhow::Result<()> {
    tokio::time::timeout(timeout, status.wait_for(done)).await??;
    Ok(())
}

fn duration_between(from: jiff::Timestamp, to: jiff::Timestamp) -> Duration {
    Duration::try_from(to.duration_since(from)).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tiered_lab_keeps_warm_standbys_for_gold_tenants_only() {
        assert_eq!(StandbyMode::Tiered.for_tier(Tier::Gold), StandbyMode::Warm);
        assert_eq!(StandbyMode::Tiered.for_tier(Tier::Silver), StandbyMode::Cold);
        assert_eq!(StandbyMode::Tiered.for_tier(Tier::Bronze), StandbyMode::Cold);
        assert_eq!(StandbyMode::Sync.for_tier(Tier::Bronze), StandbyMode::Sync);
        // Ten tenants: the first two are gold.
        let gold: Vec<usize> = (0..10).filter(|i| tier_of(*i, 10) == Tier::Gold).collect();
        assert_eq!(gold, [0, 1]);
    }
}
