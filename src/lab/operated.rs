//! `fenice lab --operators`: the lab's story told through the operators, the
//! path production takes. An API server runs in the lab's process; the lab
//! applies the resources an SRE would write ([`manifests`]) and runs one
//! `fenice operator --site` per Local site against it. The operators start
//! every tenant's database and app, take the Backups and the Drill the lab
//! asks for and keep the witness lease. The lab kills the primary's operator
//! (its stacks die with it); the standby's operator sees its probes fail and
//! the lease go unrenewed, takes the lease, declares the Failover and
//! recovers every tenant. The lab sees what an SRE sees: the resources'
//! status, the witness, and the apps' HTTP API.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::manifests::{self, Lab, OPERATOR_NAMESPACE};
use super::progress::Progress;
use super::providers::Providers;
use super::report::{self, Held, HeldInvoice};
use super::traffic::{Resolve, Traffic};
use super::{
    DrillSummary, LabOptions, LabReport, NAMESPACE, Outcome, PLAN, PRIMARY, PROBE_INTERVAL, STANDBY, StandbyMode,
    archive_timeout_secs, conclude, duration_between, lease_timing, sdi_listing,
};
use crate::api::backup::{Backup, BackupPhase};
use crate::api::drill::{Drill, DrillPhase};
use crate::api::failover::{Failover, FailoverPhase};
use crate::api::plan::{FailoverPlan, Standing};
use crate::api::policy::BackupPolicy;
use crate::api::repository::BackupRepository;
use crate::api::site::Site;
use crate::api::tenant::{InvoicingTenant, StandbyMode as TenantStandby};
use crate::app::http::{Health, InvoiceList};
use crate::controller::tenant::{STANDBY as STANDBY_CONDITION, serving_url};
use crate::failover::executor::StateFile;
use crate::failover::lease::LeaseTiming;
use crate::failover::witness::Witness;
use crate::lab::fault::Fault;
use crate::testkit::SdiSimServer;

/// The field manager the lab applies its resources with.
const MANAGER: &str = "fenice-lab";
/// How long each operator's leader Lease holds: a restarted operator waits
/// this long. The operators' default: starting tens of stacks keeps an
/// operator too busy to renew a shorter one.
const LEADER_LEASE: Duration = Duration::from_secs(15);
/// How long the operators may take to bring the tenants up: this, plus a
/// few seconds per tenant.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a failover may take once declared, for 20 tenants; more with more.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs the lab through the operators. Only what they do is asked of them:
/// the primary is killed (not cut), and tenants wait at the standby in a
/// synchronous standby or cold.
pub async fn run(options: &LabOptions, progress: &Progress) -> anyhow::Result<LabReport> {
    if options.fault != Fault::Kill {
        bail!("--operators runs with --fault kill: a network cut of an operator's site is not built yet");
    }
    let standby_mode = match options.standby {
        StandbyMode::Sync => TenantStandby::Synchronous,
        StandbyMode::Cold => TenantStandby::Cold,
        StandbyMode::Warm | StandbyMode::Tiered => {
            bail!("--operators runs with --standby sync or cold: the operators keep no warm standby at Local sites yet")
        }
    };
    if options.tenants == 0 {
        bail!("--tenants must be at least 1");
    }
    let started_at = jiff::Timestamp::now();
    let work = options.work_dir.clone();
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;

    progress.step("starting the providers: backup repositories, witness, SdI simulator (and SdI's test endpoint)");
    let providers = Providers::start(&work, &options.program, false, progress).await?;
    for repo in &providers.repos {
        progress.step(&format!("  repository {} at {}", repo.location, repo.provider));
    }
    let drill_sdi =
        SdiSimServer::start(&options.program, Duration::from_millis(500)).context("starting SdI's test endpoint")?;
    let witness = Witness::new(providers.witness.clone(), PLAN);

    progress.step("starting an API server in this process, and applying the lab's resources to it");
    let api = crate::apiserver::spawn(crate::apiserver::ServerOptions::default())
        .await
        .context("starting the in-memory API server")?;
    let kubeconfig = work.join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig()).with_context(|| format!("writing {}", kubeconfig.display()))?;
    let client = api.client().await.context("connecting to the in-memory API server")?;
    let names: Vec<String> = (1..=options.tenants).map(|i| format!("tenant-{i:03}")).collect();
    let timing = operators_lease_timing(options.tenants)?;
    let primary_health_port = crate::testkit::process::free_port().context("finding a port for the operator")?;
    let lab = Lab {
        tenants: &names,
        sdi: providers.sdi.endpoint(),
        primary_health: format!("http://127.0.0.1:{primary_health_port}/healthz"),
        probe_interval: PROBE_INTERVAL,
        lease: &timing,
        archive_timeout: Duration::from_secs(archive_timeout_secs(options.tenants, options.standby) as u64),
        parallelism: options.parallelism,
        standby: standby_mode,
    };
    let resources = manifests::resources(&lab, &providers.repos, &providers.witness_place);
    write_manifests(&work.join("manifests.yaml"), &resources)?;
    // NB: the Secrets go into the operators' namespace, the first resources made.
    let (namespaces, rest): (Vec<&Value>, Vec<&Value>) = resources.iter().partition(|r| r["kind"] == "Namespace");
    let secrets = manifests::secrets(&providers);
    for document in namespaces.into_iter().chain(&secrets).chain(rest) {
        apply(&client, document).await?;
    }
    progress.step(&format!(
        "  {} resources applied (written to manifests.yaml in the run's directory; the Secrets are not)",
        resources.len()
    ));

    progress.step(&format!("starting {PRIMARY}'s operator; it starts {} tenants' databases and apps", names.len()));
    let mut primary = Operator::start(options, &kubeconfig, PRIMARY, "1", Some(primary_health_port)).await?;
    let started = Instant::now();
    let tenants: Api<InvoicingTenant> = Api::namespaced(client.clone(), NAMESPACE);
    let up = wait_tenants(&tenants, &names, start_timeout(names.len()), |t| {
        t.status.as_ref().and_then(|s| s.active_site.as_deref()) == Some(PRIMARY) && serving_url(t).is_some()
    })
    .await
    .with_context(|| {
        format!("the tenants did not all run at {PRIMARY}; its operator's log: {}", primary.log.display())
    })?;
    progress.step(&format!("  {} tenants up in {:.1} s", up.len(), started.elapsed().as_secs_f64()));
    let before = wait_lease(&witness, PRIMARY, Duration::from_secs(30)).await?;
    progress.step(&format!("{PRIMARY} holds the witness lease under epoch {before}: its apps are active"));
    let standby = Operator::start(options, &kubeconfig, STANDBY, "1", None).await?;
    if standby_mode == TenantStandby::Synchronous {
        progress.step(&format!("{STANDBY}'s operator starts a synchronous standby of each tenant's database"));
        let started = Instant::now();
        let streaming = wait_tenants(&tenants, &names, start_timeout(names.len()), |t| {
            let conditions = t.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
            conditions.iter().any(|c| c.type_ == STANDBY_CONDITION && c.reason == "StandbyStreaming")
        })
        .await
        .with_context(|| {
            format!("the standbys did not all stream; {STANDBY}'s operator's log: {}", standby.log.display())
        })?;
        progress.step(&format!(
            "  {} standbys streaming in {:.1} s: a commit is confirmed once {STANDBY} has it",
            streaming.len(),
            started.elapsed().as_secs_f64()
        ));
    }

    let endpoints = Endpoints::follow(tenants.clone());
    endpoints.refresh().await;
    let old_apps = endpoints.all();
    let traffic = Traffic::start(&names, endpoints.resolve(), options.invoice_interval);
    progress.step(&format!(
        "customers issue an invoice per tenant every {} ms; apps transmit to SdI",
        options.invoice_interval.as_millis()
    ));
    tokio::time::sleep(Duration::from_secs(3)).await;

    progress.step(&format!(
        "backing up every tenant (a Backup each: dump + base backup) to {} repositories",
        providers.repos.len()
    ));
    let started = Instant::now();
    let freshest = back_up(&client, &names, start_timeout(names.len())).await?;
    progress.step(&format!(
        "  {} Backups succeeded in {:.1} s; {} invoices confirmed so far",
        names.len(),
        started.elapsed().as_secs_f64(),
        traffic.confirmed()
    ));

    // NB: a Drill judges its restored backup's age against the tenant's RPO: the freshest one is drilled.
    let drill = drill(&client, &freshest, &drill_sdi, progress).await;

    progress.step(&format!("tenants keep working for {} s", options.work_before_kill.as_secs()));
    tokio::time::sleep(options.work_before_kill).await;

    let before_kill = traffic.confirmed();
    let killed_at = jiff::Timestamp::now();
    let takeover = tokio::spawn(watch_takeover(witness.clone(), before));
    primary.kill().await;
    progress.step(&format!(
        "KILL: {PRIMARY}'s operator got SIGKILL, and its databases and apps with it, with {before_kill} invoices confirmed"
    ));
    let (epoch, taken_at) = tokio::time::timeout(Duration::from_secs(120), takeover)
        .await
        .context("the standby did not take the lease within 120 s of the kill")??;
    let detect = duration_between(killed_at, taken_at);
    // NB: the killed apps must answer nothing; one that answers active is a second site accepting writes.
    let dual_active = any_active(&old_apps).await;
    progress
        .step(&format!("{STANDBY}'s operator took the lease under epoch {epoch} at +{:.1} s", detect.as_secs_f64()));

    let name = format!("{PLAN}-e{epoch}");
    let status = wait_failover(&client, &name, failover_timeout(names.len()), progress).await?;
    let (state, _) = StateFile::load(providers.witness.clone(), PLAN, &name)
        .await?
        .with_context(|| format!("Failover {name} ended {:?}, but the witness holds no state of it", status.phase))?;

    progress.step("customers now reach the tenants at the standby; 5 s more of work");
    endpoints.refresh().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let refused = traffic.refused();
    let committed = traffic.stop().await;
    drop(endpoints);
    progress.step(&format!("{} invoices confirmed in all ({refused} requests refused or unanswered)", committed.len()));

    let old_primary_fenced =
        restart_old_primary(options, &kubeconfig, &client, (&witness, &timing, epoch), progress).await;

    progress.step("waiting for the standby to transmit everything and collect the receipts");
    let apps = at_site(&tenants, STANDBY).await?;
    drain(&apps, Duration::from_secs(120)).await;
    let held = held(&apps).await?;
    let sdi = sdi_listing(&providers, &names).await?;
    let mut findings = report::compare(&committed, &held, &sdi);
    findings.dual_active = dual_active;
    if dual_active {
        findings.problems.push(format!("an app at {PRIMARY} answered active after {STANDBY} took the lease"));
    }
    let notes = vec![
        format!(
            "the lab ran through the operators: an API server in its process, one `fenice operator --site` for \
             {PRIMARY} and one for {STANDBY}; the resources are in manifests.yaml of the run's directory"
        ),
        format!(
            "{STANDBY}'s operator probes {PRIMARY}'s operator's /healthz every {} ms from this machine, and reads \
             the witness lease: the vantage points differ in what they see, not in their network path",
            PROBE_INTERVAL.as_millis()
        ),
        format!(
            "dual_active is what the lab saw: each app {PRIMARY} ran, asked once {STANDBY} held the lease, \
             answered nothing or not active; and {PRIMARY}'s restarted operator started no stack"
        ),
        "each tenant's database at the standby archives its WAL from its start, as at the primary".into(),
        format!(
            "the tenants declare an RPO of {} s, which the Drill judges its restored backup's age by (it restores \
             the newest backup, not the archive after it); the lab's own target of {} s judges the failover",
            manifests::DECLARED_RPO.as_secs(),
            super::RPO_OBJECTIVE.as_secs()
        ),
        match standby_mode {
            TenantStandby::Synchronous => format!(
                "each tenant's database at {PRIMARY} confirms a commit once its synchronous standby at {STANDBY} \
                 holds it ({STANDBY}'s operator keeps it, streaming from the address in the tenant's status); the \
                 failover promotes it"
            ),
            _ => "the tenants wait cold at the standby: an invoice confirmed in the last instant before the kill, \
                  neither archived nor at SdI yet, is lost (counted above); a synchronous standby closes that"
                .into(),
        },
    ];
    let report = conclude(
        options,
        &providers,
        progress,
        Outcome {
            names: &names,
            state: &state,
            killed_at,
            rpo_measured_to: jiff::Timestamp::from_millisecond(state.declared_loss.unix_millis() as i64)
                .unwrap_or(killed_at),
            detect,
            timing: &timing,
            findings,
            old_primary_fenced: old_primary_fenced?,
            primary_fenced_seconds: None,
            drill,
            notes,
            started_at,
        },
    );
    progress.step("stopping the operators, and every process they started");
    standby.stop().await;
    drop(api);
    Ok(report)
}

/// The plan's lease: as the lab's own (5 s up to 20 tenants), but 10 s from
/// 10 tenants on. NB: with 5 s, at 20 tenants on two cores, the witness (an S3
/// server in Python) answered renewals in 0.5 to 1.1 s beside the operators,
/// 40 databases and 20 apps, and westpole fenced itself 14 to 28 times a run.
fn operators_lease_timing(tenants: usize) -> anyhow::Result<crate::failover::lease::LeaseTiming> {
    match tenants {
        ..10 => lease_timing(tenants),
        _ => Ok(crate::failover::lease::LeaseTiming::for_lease(LONG_LEASE, LONG_LEASE / 10)?),
    }
}

const LONG_LEASE: Duration = Duration::from_secs(10);

fn start_timeout(tenants: usize) -> Duration {
    START_TIMEOUT + Duration::from_secs(3) * tenants as u32
}

fn failover_timeout(tenants: usize) -> Duration {
    FAILOVER_TIMEOUT.max(Duration::from_secs(3) * tenants as u32)
}

/// Writes the resources as one YAML stream, as `kubectl apply -f` reads it.
fn write_manifests(path: &Path, resources: &[Value]) -> anyhow::Result<()> {
    let mut text = String::from("# The resources `fenice lab --operators` applied (its Secrets are not written).\n");
    for resource in resources {
        text.push_str("---\n");
        text.push_str(&serde_saphyr::to_string(resource).context("writing the lab's resources as YAML")?);
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Applies one resource (server-side apply), checked against its type first.
async fn apply(client: &Client, document: &Value) -> anyhow::Result<()> {
    let namespaced = |namespace: &str| document["metadata"]["namespace"].as_str().unwrap_or(namespace).to_owned();
    match document["kind"].as_str().unwrap_or_default() {
        "Namespace" => put::<Namespace>(Api::all(client.clone()), document).await,
        "Secret" => put::<Secret>(Api::namespaced(client.clone(), &namespaced(OPERATOR_NAMESPACE)), document).await,
        "BackupRepository" => put::<BackupRepository>(Api::all(client.clone()), document).await,
        "Site" => put::<Site>(Api::all(client.clone()), document).await,
        "BackupPolicy" => put::<BackupPolicy>(Api::all(client.clone()), document).await,
        "FailoverPlan" => put::<FailoverPlan>(Api::all(client.clone()), document).await,
        "InvoicingTenant" => {
            put::<InvoicingTenant>(Api::namespaced(client.clone(), &namespaced(NAMESPACE)), document).await
        }
        other => bail!("the lab has no resource of kind {other:?}"),
    }
}

async fn put<K>(api: Api<K>, document: &Value) -> anyhow::Result<()>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let name = document["metadata"]["name"].as_str().unwrap_or_default();
    let what = format!("{} {name}", K::kind(&()));
    // NB: a Secret's values never reach the message: the error names the resource only.
    let object: K =
        serde_json::from_value(document.clone()).map_err(|e| malformed(&what, K::kind(&()) == "Secret", &e))?;
    api.patch(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&object))
        .await
        .with_context(|| format!("applying {what}"))?;
    Ok(())
}

/// `what` does not parse. A Secret's parse error is not quoted: it may quote a value.
fn malformed(what: &str, secret: bool, error: &serde_json::Error) -> anyhow::Error {
    if secret {
        anyhow::anyhow!("{what} is malformed (line {}, column {} of its document)", error.line(), error.column())
    } else {
        anyhow::anyhow!("{what} is malformed: {error}")
    }
}

/// A `fenice operator --site` the lab runs.
struct Operator {
    child: Child,
    log: PathBuf,
}

impl Operator {
    /// Starts the operator of `site` (`incarnation` tells two runs of it
    /// apart), its health on `health_port` when given; its log goes to a
    /// file in the run's directory.
    async fn start(
        options: &LabOptions,
        kubeconfig: &Path,
        site: &str,
        incarnation: &str,
        health_port: Option<u16>,
    ) -> anyhow::Result<Self> {
        let name = format!("{site}-{incarnation}");
        // NB: short (w1, a1): the sites' sockets go four levels below, and a
        // Unix socket's path is at most 107 bytes.
        let state = options.work_dir.join(state_dir(site, incarnation));
        std::fs::create_dir_all(&state).with_context(|| format!("creating {}", state.display()))?;
        let log = options.work_dir.join(format!("operator-{name}.log"));
        let file = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut child = Command::new(&options.program)
            .args(["operator", "--site", site, "--identity", &name, "--operator-namespace", OPERATOR_NAMESPACE])
            .args(["--health-addr", &format!("127.0.0.1:{}", health_port.unwrap_or(0))])
            .args(["--metrics-addr", "127.0.0.1:0", "--lease-seconds", &LEADER_LEASE.as_secs().to_string()])
            .arg("--state-dir")
            .arg(&state)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {site}'s operator"))?;
        let stdout = child.stdout.take().context("the operator's output")?;
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(60), lines.next_line()).await;
        match first {
            Ok(Ok(Some(line))) if line.starts_with("listening on ") => {}
            _ => bail!("{site}'s operator did not start; its log: {}", log.display()),
        }
        // NB: the operator writes one more line; nothing else reads its output.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self { child, log })
    }

    /// SIGKILL: its stacks die with it.
    async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// SIGTERM, so that it stops its stacks; SIGKILL if it has not within 60 s.
    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            // SAFETY: kill only sends a signal, to a child this lab started and still owns.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        }
        if tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await.is_err() {
            self.kill().await;
        }
    }
}

/// An operator still running when the lab is dropped (interrupted, or an
/// error) is stopped as [`Operator::stop`] does, so that it stops its stacks
/// and removes their files; blocking, as the lab is ending anyway.
impl Drop for Operator {
    fn drop(&mut self) {
        let Some(pid) = self.child.id() else { return };
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // SAFETY: kill only sends a signal, to a child this lab started and still owns.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_ON_DROP;
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        // NB: one still running gets SIGKILL from kill_on_drop.
    }
}

/// How long a dropped lab waits for each operator to stop its stacks.
const STOP_ON_DROP: Duration = Duration::from_secs(30);

/// The directory, in the run's, of an operator's Local sites.
fn state_dir(site: &str, incarnation: &str) -> String {
    format!("{}{incarnation}", site.chars().next().unwrap_or('s'))
}

/// Waits until every one of `names` is as `ready` says; returns them.
async fn wait_tenants(
    tenants: &Api<InvoicingTenant>,
    names: &[String],
    timeout: Duration,
    ready: impl Fn(&InvoicingTenant) -> bool,
) -> anyhow::Result<Vec<InvoicingTenant>> {
    let deadline = Instant::now() + timeout;
    loop {
        let listed = tenants.list(&ListParams::default()).await.context("listing the tenants")?.items;
        let done: Vec<InvoicingTenant> = listed.into_iter().filter(|t| ready(t)).collect();
        if done.len() >= names.len() {
            return Ok(done);
        }
        if Instant::now() > deadline {
            let have: BTreeSet<String> = done.iter().map(ResourceExt::name_any).collect();
            let missing: Vec<&String> = names.iter().filter(|n| !have.contains(*n)).take(5).collect();
            bail!(
                "{} of {} tenants after {timeout:?}; not: {missing:?}; the first says: {}",
                done.len(),
                names.len(),
                first_said(tenants, missing.first().map(|n| n.as_str())).await
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What tenant `name`'s Ready condition says, as `kubectl describe` shows it.
async fn first_said(tenants: &Api<InvoicingTenant>, name: Option<&str>) -> String {
    let Some(name) = name else { return "nothing".into() };
    let tenant = tenants.get_opt(name).await.ok().flatten();
    let status = tenant.and_then(|t| t.status);
    let ready = status.and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Ready"));
    ready.map_or_else(|| "no Ready condition yet".into(), |c| format!("{}: {}", c.reason, c.message))
}

/// Each tenant's app at `site`, from its status.
async fn at_site(tenants: &Api<InvoicingTenant>, site: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let listed = tenants.list(&ListParams::default()).await.context("listing the tenants")?.items;
    Ok(listed
        .iter()
        .filter(|t| t.status.as_ref().and_then(|s| s.active_site.as_deref()) == Some(site))
        .filter_map(|t| serving_url(t).map(|url| (t.name_any(), url)))
        .collect())
}

/// Where each tenant is served, as its status says, looked up every 500 ms
/// (the lab's stand-in for DNS following the failover).
struct Endpoints {
    known: Arc<Mutex<BTreeMap<String, String>>>,
    tenants: Api<InvoicingTenant>,
    task: tokio::task::JoinHandle<()>,
}

impl Endpoints {
    fn follow(tenants: Api<InvoicingTenant>) -> Self {
        let known = Arc::new(Mutex::new(BTreeMap::new()));
        let task = tokio::spawn({
            let (known, tenants) = (known.clone(), tenants.clone());
            async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    Self::look(&tenants, &known).await;
                }
            }
        });
        Self { known, tenants, task }
    }

    async fn look(tenants: &Api<InvoicingTenant>, known: &Mutex<BTreeMap<String, String>>) {
        let Ok(listed) = tenants.list(&ListParams::default()).await else { return };
        let mut known = known.lock().unwrap_or_else(PoisonError::into_inner);
        for tenant in &listed.items {
            // NB: a tenant between sites keeps its last address: its customers' requests fail meanwhile.
            if let Some(url) = serving_url(tenant) {
                known.insert(tenant.name_any(), url);
            }
        }
    }

    async fn refresh(&self) {
        Self::look(&self.tenants, &self.known).await;
    }

    fn all(&self) -> BTreeMap<String, String> {
        self.known.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn resolve(&self) -> Resolve {
        let known = self.known.clone();
        Arc::new(move |tenant: &str| known.lock().unwrap_or_else(PoisonError::into_inner).get(tenant).cloned())
    }
}

impl Drop for Endpoints {
    /// Stops looking, also when the lab is interrupted: the API server goes with it.
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The epoch `holder` holds the lease under, once it does.
async fn wait_lease(witness: &Witness, holder: &str, timeout: Duration) -> anyhow::Result<u64> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(lease)) = witness.read().await
            && lease.record.holder == holder
        {
            return Ok(lease.record.epoch);
        }
        if Instant::now() > deadline {
            bail!("{holder} did not hold the witness lease within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The epoch and the time at which the lease changed holder after `epoch`,
/// as read every 100 ms.
async fn watch_takeover(witness: Witness, epoch: u64) -> (u64, jiff::Timestamp) {
    loop {
        if let Ok(Some(lease)) = witness.read().await
            && lease.record.epoch > epoch
        {
            return (lease.record.epoch, jiff::Timestamp::now());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap_or_default()
}

/// Whether any of `apps` answers that it is active.
async fn any_active(apps: &BTreeMap<String, String>) -> bool {
    let http = http();
    let answers: Vec<bool> = stream::iter(apps.values())
        .map(|app| {
            let http = http.clone();
            async move {
                match http.get(format!("{app}/healthz")).send().await {
                    Ok(answer) => answer.json::<Health>().await.is_ok_and(|h| h.active),
                    Err(_) => false,
                }
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    answers.into_iter().any(|active| active)
}

/// A Backup of each tenant, as an SRE takes one by hand; waits for all.
/// Returns the tenant whose Backup finished last.
async fn back_up(client: &Client, names: &[String], timeout: Duration) -> anyhow::Result<String> {
    let backups: Api<Backup> = Api::namespaced(client.clone(), NAMESPACE);
    for name in names {
        let backup =
            json!({"metadata": {"name": format!("{name}-lab")}, "spec": {"tenant": name, "trigger": "Manual"}});
        let backup: Backup = serde_json::from_value(backup)?;
        backups.create(&PostParams::default(), &backup).await.with_context(|| format!("creating {name}'s Backup"))?;
    }
    let deadline = Instant::now() + timeout;
    loop {
        let listed = backups.list(&ListParams::default()).await.context("listing the Backups")?.items;
        let phase = |b: &Backup| b.status.as_ref().map(|s| s.phase);
        let failed: Vec<String> = listed
            .iter()
            .filter(|b| matches!(phase(b), Some(BackupPhase::Failed | BackupPhase::PartiallySucceeded)))
            .map(|b| format!("{} ({:?})", b.name_any(), phase(b)))
            .collect();
        if !failed.is_empty() {
            bail!("Backups did not succeed: {}; `kubectl describe backup` says why", failed.join(", "));
        }
        let succeeded: Vec<&Backup> = listed.iter().filter(|b| phase(b) == Some(BackupPhase::Succeeded)).collect();
        if succeeded.len() >= names.len() {
            let last = succeeded.iter().max_by_key(|b| b.status.as_ref().and_then(|s| s.completion_time.clone()));
            return Ok(last.map_or_else(|| names[0].clone(), |b| b.spec.tenant.clone()));
        }
        if Instant::now() > deadline {
            bail!("the Backups did not all finish within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A Drill of one tenant at the standby, its test invoice sent to SdI's test endpoint.
async fn drill(client: &Client, tenant: &str, test_sdi: &SdiSimServer, progress: &Progress) -> DrillSummary {
    progress
        .step(&format!("drill: a Drill of {tenant} at {STANDBY}: restored, verified, a test invoice sent, torn down"));
    let began = jiff::Timestamp::now();
    let failed = |error: String| DrillSummary {
        tenant: tenant.to_owned(),
        tenants: 1,
        passed: false,
        snapshot: None,
        rto_seconds: 0.0,
        rpo_seconds: None,
        started: began,
        ended: jiff::Timestamp::now(),
        error: Some(error),
    };
    let drills: Api<Drill> = Api::all(client.clone());
    let spec = json!({"metadata": {"name": "lab-drill"}, "spec": {"plan": PLAN,
        "sample": {"tenants": [{"namespace": NAMESPACE, "name": tenant}]}, "sdiTestEndpoint": test_sdi.endpoint()}});
    let created = match serde_json::from_value::<Drill>(spec) {
        Ok(drill) => drills.create(&PostParams::default(), &drill).await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = created {
        progress.step(&format!("  DRILL FAILED: creating it: {e}"));
        return failed(format!("creating the Drill: {e}"));
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        let status = drills.get_opt("lab-drill").await.ok().flatten().and_then(|d| d.status);
        if let Some(status) = status.filter(|s| matches!(s.phase, DrillPhase::Passed | DrillPhase::Failed)) {
            break status;
        }
        if Instant::now() > deadline {
            progress.step("  DRILL FAILED: it did not end within 300 s");
            return failed("it did not end within 300 s".into());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let Some(result) = status.results.first() else {
        let why = status.failures.first().map_or("no result", |f| f.reason.as_str()).to_owned();
        progress.step(&format!("  DRILL FAILED: {why}"));
        return failed(why);
    };
    let summary = DrillSummary {
        tenant: tenant.to_owned(),
        tenants: status.results.len(),
        passed: status.phase == DrillPhase::Passed && result.passed,
        snapshot: result.snapshot.clone(),
        rto_seconds: result.rto_millis as f64 / 1000.0,
        rpo_seconds: Some(result.rpo_seconds as f64),
        started: result.start_time.0,
        ended: result.end_time.0,
        error: result.reason.clone(),
    };
    match &summary.error {
        None if summary.passed => progress.step(&format!(
            "  drill passed: restored, served, test invoice {}, torn down; RTO {:.1} s",
            result.test_invoice.as_deref().unwrap_or("(none)"),
            summary.rto_seconds
        )),
        e => progress.step(&format!("  DRILL FAILED: {}", e.as_deref().unwrap_or("see `kubectl describe drill`"))),
    }
    summary
}

/// The Failover `name`'s status once it ended, with its progress on the terminal.
async fn wait_failover(
    client: &Client,
    name: &str,
    timeout: Duration,
    progress: &Progress,
) -> anyhow::Result<crate::api::failover::FailoverStatus> {
    let failovers: Api<Failover> = Api::all(client.clone());
    let deadline = Instant::now() + timeout;
    let mut told = None;
    loop {
        let status = failovers.get_opt(name).await.ok().flatten().and_then(|f| f.status);
        if let Some(status) = status {
            let now = (status.phase, status.tenants_done, status.tenants_failed);
            if told != Some(now) {
                progress.step(&format!(
                    "  Failover {name}: {:?}, {}/{} tenants done, {} failed",
                    status.phase, status.tenants_done, status.tenants_total, status.tenants_failed
                ));
                told = Some(now);
            }
            if matches!(status.phase, FailoverPhase::Succeeded | FailoverPhase::Failed | FailoverPhase::Aborted) {
                return Ok(status);
            }
        }
        if Instant::now() > deadline {
            bail!("Failover {name} did not end within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Starts the old primary's operator again, with nothing of its former run:
/// it must read a lease another site holds in a higher epoch, stay fenced,
/// and start no stack; the lease must stay where it is.
async fn restart_old_primary(
    options: &LabOptions,
    kubeconfig: &Path,
    client: &Client,
    (witness, timing, epoch): (&Witness, &LeaseTiming, u64),
    progress: &Progress,
) -> anyhow::Result<bool> {
    let again = Operator::start(options, kubeconfig, PRIMARY, "2", None).await?;
    // NB: its leader Lease, then a whole witness lease to read it and write its standing.
    tokio::time::sleep(LEADER_LEASE + timing.lease_duration).await;
    let plans: Api<FailoverPlan> = Api::all(client.clone());
    let plan = plans.get(PLAN).await.context("reading the plan")?.status.unwrap_or_default();
    let standing = plan.sites.iter().find(|s| s.site == PRIMARY).map(|s| s.standing);
    let lease = witness.read().await?.map(|l| l.record);
    let kept = lease.as_ref().is_some_and(|l| l.holder == STANDBY && l.epoch == epoch);
    let stacks = options.work_dir.join(state_dir(PRIMARY, "2"));
    let started = std::fs::read_dir(&stacks)
        .map(|dir| dir.filter_map(Result::ok).any(|e| e.path().join(PRIMARY).join("tenants").exists()))
        .unwrap_or(false);
    progress.step(&format!(
        "{PRIMARY}'s operator started again: its standing {}, the lease {} ({}), {}",
        standing.map_or("unwritten".into(), |s| format!("{s:?}")),
        if kept { "unchanged" } else { "CHANGED" },
        lease.map_or("none".into(), |l| format!("{} in epoch {}", l.holder, l.epoch)),
        if started { "it STARTED stacks" } else { "it started no stack" }
    ));
    again.stop().await;
    Ok(standing == Some(Standing::Fenced) && kept && !started)
}

/// Waits until every app has nothing pending or awaiting a receipt.
async fn drain(apps: &BTreeMap<String, String>, timeout: Duration) {
    let http = http();
    let deadline = Instant::now() + timeout;
    for url in apps.values() {
        while Instant::now() < deadline {
            let stats: Option<Value> = match http.get(format!("{url}/v1/stats")).send().await {
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

/// What each tenant's app holds, read through its HTTP API.
async fn held(apps: &BTreeMap<String, String>) -> anyhow::Result<BTreeMap<String, Held>> {
    let http = http();
    let results: Vec<anyhow::Result<(String, Held)>> =
        stream::iter(apps.iter())
            .map(|(name, url)| {
                let http = http.clone();
                async move {
                    Ok((name.clone(), held_by(&http, url).await.with_context(|| format!("reading {name} at {url}"))?))
                }
            })
            .buffer_unordered(4)
            .collect()
            .await;
    results.into_iter().collect()
}

async fn held_by(http: &reqwest::Client, app: &str) -> anyhow::Result<Held> {
    let stats: Value = http.get(format!("{app}/v1/stats")).send().await?.error_for_status()?.json().await?;
    let series: Vec<String> =
        stats["last_numbers"].as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
    let mut held = Held::default();
    for series in series {
        let mut after = 0;
        loop {
            let page: InvoiceList = http
                .get(format!("{app}/v1/invoices"))
                .query(&[("series", series.as_str()), ("after_number", &after.to_string()), ("limit", "1000")])
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            let Some(last) = page.invoices.last() else { break };
            after = last.number;
            for invoice in page.invoices {
                if let Some(id) = &invoice.sdi_id {
                    let receipts: Value = http
                        .get(format!("{app}/v1/invoices/{}/{}/receipts", invoice.series, invoice.number))
                        .send()
                        .await?
                        .error_for_status()?
                        .json()
                        .await?;
                    if receipts["receipts"].as_array().is_some_and(|r| !r.is_empty()) {
                        held.receipts.insert(id.clone());
                    }
                }
                held.invoices.push(HeldInvoice {
                    series: invoice.series,
                    number: invoice.number,
                    file_name: invoice.file_name,
                    queue_state: invoice.queue_state.as_str().to_owned(),
                    sdi_id: invoice.sdi_id,
                    xml_sha256: invoice.xml_sha256,
                });
            }
        }
    }
    Ok(held)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_malformed_secret_is_named_without_its_values() {
        let document = json!({"metadata": {"name": "repo-s3"}, "immutable": "s3cr3t-value"});
        let error = serde_json::from_value::<Secret>(document).unwrap_err();
        assert!(error.to_string().contains("s3cr3t-value"), "serde quotes the value: {error}");
        let said = malformed("Secret repo-s3", true, &error).to_string();
        assert!(said.starts_with("Secret repo-s3 is malformed") && !said.contains("s3cr3t-value"), "{said}");
    }
}
