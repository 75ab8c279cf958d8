//! `fenice lab`: the whole system on one machine, checked, with a report.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::lab::fault::Fault;
use crate::lab::progress::Progress;
use crate::lab::{LabOptions, LabReport, StandbyMode};
use crate::site::network_cut::SiteLink;

/// Exit code after SIGINT or SIGTERM, as shells report a death by SIGINT.
const EXIT_INTERRUPTED: u8 = 130;

#[derive(Args, Debug)]
pub struct LabArgs {
    /// Tenants to run, each with its own PostgreSQL and app at each site.
    #[arg(long, default_value_t = 20)]
    tenants: usize,
    /// Where lab.json goes.
    #[arg(long, default_value = "fenice-lab")]
    report_dir: PathBuf,
    /// Keep the run's directory (repositories, witness, sites' files, logs)
    /// instead of deleting it at the end; its path is printed.
    #[arg(long)]
    keep: bool,
    /// Tenants restored at once in each wave of the failover.
    #[arg(long, default_value_t = 8)]
    parallelism: u32,
    /// Seconds the tenants keep working after their backups before the primary dies.
    #[arg(long, default_value_t = 10)]
    work_seconds: u64,
    /// Each tenant gets an invoice this often, in milliseconds; by default 500,
    /// or 25 × tenants beyond 20 tenants (about 40 invoices a second in all).
    #[arg(long)]
    invoice_interval_ms: Option<u64>,
    /// How tenants wait at the standby: a synchronous PostgreSQL standby that
    /// a failover promotes (no confirmed invoice lost); a warm standby
    /// replaying the archived WAL from the repositories, which a failover
    /// promotes; or nothing (cold: a failover restores backups and archived
    /// WAL from the repositories); tiered: warm for gold tenants, cold for the others.
    /// `--operators` runs sync and cold.
    #[arg(long, value_enum, default_value = "sync")]
    standby: StandbyMode,
    /// How the primary is lost: every process killed, or its network cut
    /// (network namespaces: needs root and iproute2) while it keeps running.
    #[arg(long, value_enum, default_value = "kill")]
    fault: Fault,
    /// Run one `fenice operator --site` per site against an API server in the
    /// lab's process and drive everything through the custom resources, the
    /// path production takes (with `--standby sync` or `cold`, and `--fault kill`).
    #[arg(long)]
    operators: bool,
}

/// Set inside the network namespace a `--fault network-cut` run goes on in:
/// the link to the primary's namespace, as [`SiteLink::describe`] wrote it.
const LINK_ENV: &str = "FENICE_LAB_LINK";

pub async fn run(args: LabArgs) -> anyhow::Result<ExitCode> {
    let link = match (args.fault, std::env::var(LINK_ENV)) {
        (Fault::Kill, _) => None,
        (Fault::NetworkCut, Err(_)) => return run_behind_a_link().await,
        (Fault::NetworkCut, Ok(described)) => {
            let link = SiteLink::described(&described)?;
            crate::testkit::placement::set_listen_host(link.world_addr())
                .map_err(|_| anyhow::anyhow!("the lab's servers were placed twice"))?;
            Some(Arc::new(link))
        }
    };
    raise_open_files_limit();
    let program = std::env::current_exe().context("finding the fenice binary the lab's processes run")?;
    std::fs::create_dir_all(&args.report_dir)
        .with_context(|| format!("creating the report directory {}", args.report_dir.display()))?;
    // NB: in the system's temporary directory, which PostgreSQL's own user can
    // reach when the lab runs as root (a home directory often is not).
    let work = tempfile::Builder::new().prefix("fenice-lab-").tempdir().context("creating the lab's directory")?;
    crate::site::local::open_to_postgres(work.path())
        .with_context(|| format!("opening {} to PostgreSQL's user", work.path().display()))?;
    let options = LabOptions {
        tenants: args.tenants,
        work_dir: work.path().to_owned(),
        program,
        parallelism: args.parallelism.max(1),
        work_before_kill: Duration::from_secs(args.work_seconds),
        invoice_interval: args
            .invoice_interval_ms
            .map_or_else(|| crate::lab::default_invoice_interval(args.tenants), |ms| Duration::from_millis(ms.max(10))),
        standby: args.standby,
        fault: args.fault,
        link,
    };
    let progress = Progress::new();
    // NB: on Ctrl-C the lab's future is dropped, and with it every process it
    // started and every directory it made: nothing is left behind in /tmp.
    let interrupted = super::serving::shutdown_signal()?;
    let outcome = tokio::select! {
        outcome = async {
            if args.operators { crate::lab::operated::run(&options, &progress).await } else { crate::lab::run(&options, &progress).await }
        } => Some(outcome),
        () = interrupted => {
            progress.step("interrupted: stopping every process the lab started and removing its files");
            None
        }
    };
    if args.keep {
        let kept = work.keep();
        progress.step(&format!("the run's files stay in {}", kept.display()));
    }
    let Some(outcome) = outcome else { return Ok(ExitCode::from(EXIT_INTERRUPTED)) };
    let report = outcome?;
    let path = args.report_dir.join("lab.json");
    let json = serde_json::to_string_pretty(&report)?;
    std::fs::write(&path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
    for (name, page) in &report.pages {
        let page_path = args.report_dir.join(name);
        std::fs::write(&page_path, page).with_context(|| format!("writing {}", page_path.display()))?;
    }
    print_summary(&report, &mut std::io::stdout().lock())?;
    println!("report: {} (and drill.html, failover.html beside it)", path.display());
    Ok(if report.passed { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Makes the primary's namespace and the one at the other end of its link,
/// runs this same command inside the latter (so that nothing is sent from the
/// machine's own namespace to theirs), and removes both when it ends.
async fn run_behind_a_link() -> anyhow::Result<ExitCode> {
    let program = std::env::current_exe().context("finding the fenice binary")?;
    // NB: a run killed outright (SIGKILL) could not remove its namespaces: the next one does.
    for stale in SiteLink::remove_stale()? {
        eprintln!("removed network namespace {stale}, left by a lab that was killed");
    }
    let link = SiteLink::create(&std::process::id().to_string(), crate::lab::PRIMARY)?;
    let mut lab = tokio::process::Command::new("ip")
        .args(["netns", "exec", link.world()])
        .arg(&program)
        .args(std::env::args_os().skip(1))
        .env(LINK_ENV, link.describe())
        .kill_on_drop(true)
        .spawn()
        .context("running the lab inside its network namespace (ip netns exec)")?;
    let mut interrupted = std::pin::pin!(super::serving::shutdown_signal()?);
    let status = tokio::select! {
        status = lab.wait() => status?,
        () = &mut interrupted => {
            // NB: it cleans up after itself on SIGTERM, as on Ctrl-C; then the namespaces go.
            if let Some(pid) = lab.id() {
                // SAFETY: kill only sends a signal, to the child we started.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
            }
            lab.wait().await?
        }
    };
    drop(link);
    Ok(ExitCode::from(status.code().map_or(EXIT_INTERRUPTED, |c| c as u8)))
}

/// The lab holds connections to every tenant's app and database: it may open
/// files up to the hard limit, not only the (often 1024) soft one.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write `limit`.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn print_summary(r: &LabReport, out: &mut impl std::io::Write) -> std::io::Result<()> {
    let mark = |ok: bool| if ok { "ok  " } else { "FAIL" };
    let f = &r.findings;
    writeln!(out)?;
    writeln!(out, "fenice lab: {}", if r.passed { "PASSED" } else { "FAILED" })?;
    writeln!(out, "  tenants                    {}", r.tenants)?;
    writeln!(out, "  invoices issued            {}", f.invoices_issued)?;
    writeln!(out, "  {} invoices lost          {}", mark(f.invoices_lost == 0), f.invoices_lost)?;
    writeln!(out, "  {} duplicate numbers      {}", mark(f.duplicate_numbers == 0), f.duplicate_numbers)?;
    writeln!(out, "  {} SdI duplicates         {}", mark(f.sdi_duplicates == 0), f.sdi_duplicates)?;
    writeln!(out, "  {} sent exactly once      {}", mark(f.pending_sent_exactly_once), f.pending_sent_exactly_once)?;
    writeln!(out, "  {} receipts carried       {}", mark(f.receipts_carried), f.receipts_carried)?;
    writeln!(out, "  {} dual active            {}", mark(!f.dual_active), f.dual_active)?;
    writeln!(out, "  {} old primary fenced     {}", mark(r.old_primary_fenced), r.old_primary_fenced)?;
    writeln!(
        out,
        "  {} drill ({})     {}",
        mark(r.drill.passed),
        r.drill.tenant,
        if r.drill.passed { "passed" } else { "failed" }
    )?;
    writeln!(
        out,
        "  {} failover               {:?}, {} succeeded, {} failed",
        mark(r.failover.phase == crate::failover::machine::Phase::Succeeded),
        r.failover.phase,
        r.failover.succeeded,
        r.failover.failed
    )?;
    writeln!(out, "  detect  p50 {:>7.2} s  max {:>7.2} s", r.detect_seconds.p50, r.detect_seconds.max)?;
    writeln!(out, "  RTO     p50 {:>7.2} s  max {:>7.2} s", r.rto_seconds.p50, r.rto_seconds.max)?;
    writeln!(out, "  RPO     p50 {:>7.2} s  max {:>7.2} s", r.rpo_seconds.p50, r.rpo_seconds.max)?;
    for o in &r.objectives {
        writeln!(
            out,
            "  objective {:<10} {:<6} target {}; measured {}",
            o.name,
            if o.met { "met" } else { "MISSED" },
            o.target,
            o.measured
        )?;
    }
    for problem in f.problems.iter().take(20) {
        writeln!(out, "  problem: {problem}")?;
    }
    if f.problems.len() > 20 {
        writeln!(out, "  … and {} more problems (lab.json lists them all)", f.problems.len() - 20)?;
    }
    Ok(())
}
