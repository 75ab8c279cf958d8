//! `fenice app`: the reference invoicing app and the SdI simulator.

use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::{app_serve, sdi_sim};

#[derive(Args, Debug)]
pub struct AppArgs {
    #[command(subcommand)]
    command: AppCommand,
}

#[derive(Subcommand, Debug)]
enum AppCommand {
    /// Serve one tenant's invoicing: issue invoices, queue and send them to SdI, record receipts.
    Serve(app_serve::ServeArgs),
    /// A simulator of the SdI exchange, keeping what it receives on disk.
    SdiSim(sdi_sim::SdiSimArgs),
}

pub async fn run(args: AppArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        AppCommand::Serve(args) => app_serve::run(args).await,
        AppCommand::SdiSim(args) => sdi_sim::run(args).await,
    }
}
