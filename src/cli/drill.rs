//! `fenice drill`: drill reports. Starting and following drills is done by
//! creating Drill objects (the operator runs them); the other subcommands
//! say they are not built.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use kube::Api;

use super::EXIT_USAGE;
use super::output::ReportFormat;
use crate::api::drill::{Drill, DrillPhase};
use crate::drill::report;

#[derive(Args, Debug)]
pub struct DrillArgs {
    #[command(subcommand)]
    command: DrillCommand,
}

#[derive(Subcommand, Debug)]
enum DrillCommand {
    /// The report of a Drill, from its status: verdict, per-tenant RTO and RPO
    /// against the objectives, evidence, timeline. Exit 1 when the drill failed.
    Report(ReportArgs),
    #[command(external_subcommand)]
    Other(Vec<String>),
}

#[derive(Args, Debug)]
struct ReportArgs {
    /// The Drill's name.
    name: String,
    #[arg(long, value_enum, default_value_t = ReportFormat::Md)]
    format: ReportFormat,
    /// The cluster; in-cluster configuration (or $KUBECONFIG) otherwise.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
}

pub async fn run(args: DrillArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        DrillCommand::Report(args) => print_report(args).await,
        DrillCommand::Other(words) => {
            eprintln!(
                "fenice drill {}: not available in fenice {} yet; create a Drill object for the operator to run, \
                 and read it with `fenice drill report NAME`",
                words.first().map(String::as_str).unwrap_or_default(),
                env!("CARGO_PKG_VERSION"),
            );
            Ok(ExitCode::from(EXIT_USAGE))
        }
    }
}

async fn print_report(args: ReportArgs) -> anyhow::Result<ExitCode> {
    let client = super::operator::client(args.kubeconfig.as_ref()).await?;
    let drill = Api::<Drill>::all(client)
        .get_opt(&args.name)
        .await
        .with_context(|| format!("reading Drill {}", args.name))?
        .with_context(|| format!("Drill {} does not exist: `kubectl get drills` lists them", args.name))?;
    let report = report::of(&drill);
    let text = args.format.render(&report, report::markdown, report::html)?;
    std::io::stdout().lock().write_all(text.as_bytes())?;
    let failed = drill.status.is_some_and(|s| s.phase == DrillPhase::Failed);
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}
