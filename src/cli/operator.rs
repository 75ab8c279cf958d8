//! `fenice operator`: the controllers, with leader election, health and
//! metrics endpoints, and a graceful stop on SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use clap::Args;
use kube::Client;
use tokio::sync::watch;

use super::serving;
use crate::controller::leader::Elector;
use crate::controller::local_sites::LocalSites;
use crate::controller::metrics::Metrics;
use crate::controller::{self, Context};

#[derive(Args, Debug)]
pub struct OperatorArgs {
    /// The kubeconfig of the cluster that holds Fenice's resources (another
    /// site's operator reaches it this way); in-cluster configuration (or
    /// $KUBECONFIG) otherwise.
    #[arg(long, env = "FENICE_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// The Site this operator runs at (its own Site resource's name).
    #[arg(long, env = "FENICE_SITE")]
    site: Option<String>,
    /// Namespaces whose tenants this operator serves; all by default.
    #[arg(long = "namespace")]
    namespaces: Vec<String>,
    /// The operator's own namespace: its leader Lease, and the default namespace
    /// of Secrets that cluster-scoped resources reference.
    #[arg(long, env = "FENICE_NAMESPACE", default_value = "fenice-system")]
    operator_namespace: String,
    /// Where /healthz and /readyz are served (port 0 picks a free one).
    #[arg(long, default_value = "0.0.0.0:8080")]
    health_addr: String,
    /// Where Prometheus /metrics is served.
    #[arg(long, default_value = "0.0.0.0:9090")]
    metrics_addr: String,
    /// This replica's name in the leader Lease; the host name by default.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Seconds a leader's Lease holds without renewal.
    #[arg(long, default_value_t = 15)]
    lease_seconds: u64,
    /// Seconds between two probes of a BackupRepository.
    #[arg(long, default_value_t = 300)]
    probe_interval_seconds: u64,
    /// Where Sites with the Local driver keep their processes' files (in a
    /// directory of their own, removed when the operator stops); $TMPDIR by default.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// How the operator's own requests to the repositories and witnesses are bounded.
    #[command(flatten)]
    store: super::repo::StoreRetryArgs,
}

#[derive(Clone)]
struct Served {
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
}

pub async fn run(args: OperatorArgs) -> anyhow::Result<ExitCode> {
    let shutdown = serving::shutdown_signal()?;
    let client = client(args.kubeconfig.as_ref()).await?;
    let identity = args.identity.clone().unwrap_or_else(crate::repo::host_name);
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let served = Served { metrics: metrics.clone(), ready: ready.clone() };
    let (health, health_addr) = serving::bind(&args.health_addr).await?;
    let (exported, metrics_addr) = serving::bind(&args.metrics_addr).await?;
    let health_routes = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(served.clone());
    let metrics_routes = Router::new()
        .route("/metrics", get(|State(s): State<Served>| async move { s.metrics.render() }))
        .with_state(served);
    tokio::spawn(async move { axum::serve(health, health_routes).await });
    tokio::spawn(async move { axum::serve(exported, metrics_routes).await });
    serving::announce(health_addr)?;
    println!("metrics on {metrics_addr}");
    if !args.namespaces.is_empty() {
        tracing::info!(namespaces = ?args.namespaces, "namespaced kinds are not reconciled yet: the namespaces wait for them");
    }

    let (stop_tx, stop) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let elector = Elector::new(
        client.clone(),
        &args.operator_namespace,
        &leader_lease(args.site.as_deref()),
        &identity,
        Duration::from_secs(args.lease_seconds.max(3)),
    );
    if !lead(&elector, stop.clone()).await? {
        return Ok(ExitCode::SUCCESS);
    }
    tracing::info!(identity, site = ?args.site, "leading: reconciling");
    ready.store(true, Ordering::SeqCst);
    let (lost_tx, mut lost) = watch::channel(false);
    tokio::spawn(keep_leading(elector, lost_tx));
    let state_parent = args.state_dir.clone().unwrap_or_else(std::env::temp_dir);
    remove_dead_operators_state(&state_parent);
    let state = tempfile::Builder::new()
        .prefix(STATE_PREFIX)
        .tempdir_in(&state_parent)
        .with_context(|| format!("creating a directory for Local sites in {}", state_parent.display()))?;
    crate::site::local::open_to_postgres(state.path())
        .with_context(|| format!("opening {} to PostgreSQL's user", state.path().display()))?;
    let pid_file = state.path().join(PID_FILE);
    std::fs::write(&pid_file, std::process::id().to_string())
        .with_context(|| format!("writing {}", pid_file.display()))?;
    let program = std::env::current_exe().context("finding the fenice program the Local sites run")?;
    let local = Arc::new(LocalSites::new(state.path(), &program));
    let mut ctx = Context::new(client, &args.operator_namespace, Some(identity), metrics, local.clone());
    ctx.probe_interval = Duration::from_secs(args.probe_interval_seconds.max(1));
    ctx.site = args.site.clone();
    ctx.store_retry = args.store.policy();
    let mut stopped = stop.clone();
    let mut lost_wait = lost.clone();
    let until = async move {
        tokio::select! {
            _ = stopped.wait_for(|s| *s) => {}
            _ = lost_wait.wait_for(|l| *l) => {}
        }
    };
    controller::run(Arc::new(ctx), until).await;
    ready.store(false, Ordering::SeqCst);
    local.stop_all();
    if *lost.borrow_and_update() {
        anyhow::bail!("lost the leader Lease: stopped reconciling so that another replica can take over");
    }
    Ok(ExitCode::SUCCESS)
}

/// The directories of Local sites' files: `<state dir>/fenice-operator-XXXX`,
/// each holding the pid of the operator that made it.
const STATE_PREFIX: &str = "fenice-operator-";
const PID_FILE: &str = "operator.pid";

/// Removes what operators that died without stopping (SIGKILL, a crash) left
/// in `parent`: their Local sites' processes died with them, their files did
/// not. A directory whose operator still runs, or without a pid yet (being
/// made), is left alone.
fn remove_dead_operators_state(parent: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        let dir = entry.path();
        if !entry.file_name().to_string_lossy().starts_with(STATE_PREFIX) {
            continue;
        }
        let Some(pid) = std::fs::read_to_string(dir.join(PID_FILE)).ok().and_then(|p| p.trim().parse::<u32>().ok())
        else {
            continue;
        };
        // NB: a pid reused by another program is not an operator.
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains("operator") {
            continue;
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => tracing::info!(dir = %dir.display(), pid, "removed the files of an operator that died"),
            Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "removing the files of an operator that died"),
        }
    }
}

async fn readyz(State(s): State<Served>) -> (StatusCode, &'static str) {
    match s.ready.load(Ordering::SeqCst) {
        true => (StatusCode::OK, "leading\n"),
        false => (StatusCode::SERVICE_UNAVAILABLE, "not leading\n"),
    }
}

/// The leader Lease's name: one leader per site, so that the operators of a
/// plan's two sites both reconcile when they watch one cluster.
fn leader_lease(site: Option<&str>) -> String {
    match site {
        Some(site) => format!("fenice-operator-leader-{site}"),
        None => "fenice-operator-leader".to_owned(),
    }
}

/// Waits until this replica leads; false if stopped first.
async fn lead(elector: &Elector, mut stop: watch::Receiver<bool>) -> anyhow::Result<bool> {
    loop {
        match elector.try_lead().await {
            Ok(true) => return Ok(true),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "reading the leader Lease"),
        }
        tokio::select! {
            _ = tokio::time::sleep(elector.retry_period()) => {}
            _ = stop.wait_for(|s| *s) => return Ok(false),
        }
    }
}

/// Renews the Lease; says `lost` once a renewal was refused, or none succeeded
/// for the Lease's duration (another replica may then take over).
async fn keep_leading(elector: Elector, lost: watch::Sender<bool>) {
    // NB: another replica counts the lease from when it reads a renewal, which
    // is after the renewal was sent: counted from the sending, the lease is
    // ours for no longer than anyone else's count says.
    let mut renewed = Instant::now();
    loop {
        tokio::time::sleep(elector.retry_period()).await;
        let sent = Instant::now();
        let left = elector.duration().saturating_sub(renewed.elapsed());
        match tokio::time::timeout(left, elector.try_lead()).await {
            Ok(Ok(true)) => renewed = sent,
            Ok(Ok(false)) => break,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "renewing the leader Lease");
                if renewed.elapsed() >= elector.duration() {
                    break;
                }
            }
            Err(_) => {
                tracing::warn!("no renewal of the leader Lease answered within its duration");
                break;
            }
        }
    }
    let _ = lost.send(true);
}

/// A client from `--kubeconfig`, or the in-cluster configuration, or $KUBECONFIG.
pub(super) async fn client(kubeconfig: Option<&PathBuf>) -> anyhow::Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("using kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer().await.context("no --kubeconfig, no in-cluster configuration, no $KUBECONFIG")?,
    };
    Client::try_from(config).context("building the Kubernetes client")
}
