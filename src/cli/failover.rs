//! `fenice failover`: failovers as an SRE runs them. `simulate`, `report`
//! and `witness` are built so far; the other commands say so.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::EXIT_USAGE;
use super::output::ReportFormat;
use super::repo::StoreArgs;
use crate::failover::capacity::{self, Costs, Scenario};
use crate::failover::executor::StateFile;
use crate::failover::machine::Phase;
use crate::failover::report;

#[derive(Args, Debug)]
pub struct FailoverArgs {
    #[command(subcommand)]
    command: FailoverCommand,
}

#[derive(Subcommand, Debug)]
enum FailoverCommand {
    /// How long a failover of many tenants takes with the real wave logic,
    /// on a virtual clock, from per-tenant step costs.
    Simulate(SimulateArgs),
    /// The report of a failover, from the state it persisted in the witness
    /// store: verdict, epoch, each tenant's RTO, RPO, snapshot and steps, a
    /// timeline. Exit 1 unless it succeeded.
    Report(ReportArgs),
    /// A plan's witness lease: read it, or seed a new witness store when the
    /// old one is lost.
    Witness(super::failover_witness::WitnessArgs),
    #[command(external_subcommand)]
    Other(Vec<String>),
}

#[derive(Args, Debug)]
struct SimulateArgs {
    #[arg(long, default_value_t = 38_000)]
    tenants: usize,
    /// Tenants restored at once in each wave.
    #[arg(long, default_value_t = 64)]
    parallelism: u32,
    /// Share of Gold tenants (first wave), in percent.
    #[arg(long, default_value_t = 10)]
    gold_percent: usize,
    /// Share of Silver tenants (second wave), in percent; the rest are Bronze.
    #[arg(long, default_value_t = 30)]
    silver_percent: usize,
    /// Seconds to restore one tenant (base backup + WAL replay + verification).
    #[arg(long, default_value_t = 6.0)]
    restore_seconds: f64,
    #[arg(long, default_value_t = 0.5)]
    reconcile_seconds: f64,
    #[arg(long, default_value_t = 1.0)]
    start_seconds: f64,
    #[arg(long, default_value_t = 0.2)]
    switch_seconds: f64,
    #[arg(long, default_value_t = 0.3)]
    verify_seconds: f64,
    /// Print one JSON document on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct ReportArgs {
    /// The failover's name.
    name: String,
    /// The plan it ran for.
    #[arg(long)]
    plan: String,
    /// The witness store: a path, s3://bucket/prefix or az://account/container/prefix.
    #[arg(long)]
    witness: String,
    #[arg(long, value_enum, default_value_t = ReportFormat::Md)]
    format: ReportFormat,
    #[command(flatten)]
    stores: StoreArgs,
}

pub fn run(args: FailoverArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        // NB: simulate runs its own runtime on a virtual clock.
        FailoverCommand::Simulate(args) => simulate(args),
        FailoverCommand::Report(args) => super::runtime()?.block_on(print_report(args)),
        FailoverCommand::Witness(args) => super::runtime()?.block_on(super::failover_witness::run(args)),
        FailoverCommand::Other(words) => {
            eprintln!(
                "fenice failover {}: not available in fenice {} yet; `fenice failover simulate`, `report` and `witness` are",
                words.first().map(String::as_str).unwrap_or_default(),
                env!("CARGO_PKG_VERSION"),
            );
            Ok(ExitCode::from(EXIT_USAGE))
        }
    }
}

async fn print_report(args: ReportArgs) -> anyhow::Result<ExitCode> {
    let store = args.stores.open(&args.witness).await?;
    let key = StateFile::key_for(&args.plan, &args.name);
    let Some((state, _)) = StateFile::load(store.clone(), &args.plan, &args.name).await? else {
        anyhow::bail!(
            "no failover {} of plan {} at {} (no {key}): check the name, the plan and the witness location",
            args.name,
            args.plan,
            store.describe()
        );
    };
    // NB: the persisted state has no objectives: the report gives the figures alone.
    let report = report::of(&state, &report::Objectives::new());
    let text = args.format.render(&report, report::markdown, report::html)?;
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(if state.phase == Phase::Succeeded { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn simulate(args: SimulateArgs) -> anyhow::Result<ExitCode> {
    if args.gold_percent + args.silver_percent > 100 {
        anyhow::bail!("--gold-percent and --silver-percent add up to more than 100");
    }
    let gold = args.tenants * args.gold_percent / 100;
    let silver = args.tenants * args.silver_percent / 100;
    let seconds =
        |s: f64| Duration::try_from_secs_f64(s).map_err(|_| anyhow::anyhow!("{s}: not a duration in seconds"));
    let scenario = Scenario {
        gold,
        silver,
        bronze: args.tenants - gold - silver,
        parallelism: args.parallelism.max(1),
        costs: Costs {
            restore: seconds(args.restore_seconds)?,
            reconcile: seconds(args.reconcile_seconds)?,
            start: seconds(args.start_seconds)?,
            switch: seconds(args.switch_seconds)?,
            verify: seconds(args.verify_seconds)?,
        },
    };
    let outcome = capacity::simulate_blocking(&scenario)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string(&outcome)?)?;
    } else {
        writeln!(
            out,
            "{} tenants, parallelism {} per wave: {:?} after {:.0} s ({:.1} min); RTO p50 {:.0} s, max {:.0} s",
            outcome.tenants,
            scenario.parallelism,
            outcome.phase,
            outcome.total_seconds,
            outcome.total_seconds / 60.0,
            outcome.rto_p50_seconds,
            outcome.rto_max_seconds,
        )?;
        for (wave, end) in &outcome.waves {
            writeln!(out, "  wave {wave}: last tenant serving at {end:.0} s")?;
        }
    }
    Ok(if outcome.phase == Phase::Succeeded { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
