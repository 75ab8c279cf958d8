//! Command-line interface: argument parsing and output. The work itself is done
//! by the library modules each subcommand calls.

mod agent;
mod apiserver;
mod app;
mod app_serve;
mod audit;
mod crd;
mod drill;
mod failover;
mod failover_witness;
mod lab;
mod operator;
pub(crate) mod output;
pub mod repo;
mod sdi_sim;
mod secrets;
mod serving;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit code for usage errors and for commands this build does not have yet.
pub const EXIT_USAGE: u8 = 2;

/// Fenice keeps a multi-tenant e-invoicing stack running when a whole cloud
/// provider dies: encrypted immutable backups at other providers, scheduled
/// restore drills, and cross-cloud failover.
#[derive(Parser, Debug)]
#[command(name = "fenice", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the controllers, in-cluster or from a kubeconfig.
    Operator(Box<operator::OperatorArgs>),
    /// Print every CustomResourceDefinition as one multi-document YAML
    /// (manifests/crds.yaml is its output).
    Crd,
    /// The backup repository: init, backup, snapshots, restore, check, copy,
    /// forget, prune, keys; usable by hand for break-glass recovery.
    Repo(Box<repo::RepoArgs>),
    /// What the operator's Jobs run inside a site: tenant backup, restore,
    /// verify, WAL push and fetch.
    Agent(Box<agent::AgentArgs>),
    /// Plan, start, abort and follow failovers; failover reports.
    Failover(Box<failover::FailoverArgs>),
    /// DR drill reports (drills run as Drill objects, by the operator).
    Drill(drill::DrillArgs),
    /// Check every tenant against the 3-2-1-1-0 rule, from what the cluster records.
    Audit(audit::AuditArgs),
    /// The reference invoicing app and the SdI simulator.
    App(Box<app::AppArgs>),
    /// An in-memory Kubernetes API for trying Fenice without a cluster (not for production).
    Apiserver(apiserver::ApiserverArgs),
    /// The whole system on one machine: simulated clouds, tenants, backups, a
    /// drill, an outage, an automatic failover and a report.
    Lab(lab::LabArgs),
}

/// Runs the parsed command and returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Crd => {
            crd::print(&mut std::io::stdout().lock())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Repo(args) => runtime()?.block_on(repo::run(*args)),
        Command::Agent(args) => runtime()?.block_on(agent::run(*args)),
        Command::App(args) => runtime()?.block_on(app::run(*args)),
        Command::Failover(args) => failover::run(*args),
        Command::Apiserver(args) => runtime()?.block_on(apiserver::run(args)),
        Command::Lab(args) => runtime()?.block_on(lab::run(args)),
        Command::Operator(args) => runtime()?.block_on(operator::run(*args)),
        Command::Audit(args) => runtime()?.block_on(audit::run(args)),
        Command::Drill(args) => runtime()?.block_on(drill::run(args)),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context;
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")
}

/// The exit code for an error: specific codes for what scripts want to tell
/// apart (README lists them), 1 for everything else.
pub fn exit_code(error: &anyhow::Error) -> ExitCode {
    use crate::repo::repository::Error as RepoError;
    match error.downcast_ref::<RepoError>() {
        Some(RepoError::NotARepository { .. }) => ExitCode::from(repo::EXIT_NO_REPOSITORY),
        Some(RepoError::WrongPassword { .. } | RepoError::WrongRecoveryKey { .. }) => {
            ExitCode::from(repo::EXIT_WRONG_KEY)
        }
        _ => ExitCode::FAILURE,
    }
}
