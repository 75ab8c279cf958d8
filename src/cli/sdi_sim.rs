//! `fenice app sdi-sim`.

use super::serving;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::api::common::Duration;
use crate::app::sdi::sim::{SimConfig, Simulator};

#[derive(Args, Debug)]
pub struct SdiSimArgs {
    /// Address to listen on. Port 0 picks a free port; the first line on stdout,
    /// `listening on IP:PORT`, says which.
    #[arg(long, env = "FENICE_SDI_LISTEN", default_value = "127.0.0.1:8081")]
    listen: String,

    /// Directory that keeps everything received (created if missing). One
    /// simulator per directory.
    #[arg(long, env = "FENICE_SDI_DATA")]
    data: PathBuf,

    /// How long after a file arrives its first receipt is issued, and each
    /// further one after the one before: 500ms, 2s, 0s...
    #[arg(long, env = "FENICE_SDI_RECEIPT_DELAY", default_value = "1s")]
    receipt_delay: Duration,
}

pub async fn run(args: SdiSimArgs) -> anyhow::Result<ExitCode> {
    let config = SimConfig { data_dir: args.data, receipt_delay: args.receipt_delay.as_std() };
    let simulator = Simulator::open(config).await?;
    let shutdown = serving::shutdown_signal()?;
    let (listener, addr) = serving::bind(&args.listen).await?;
    serving::announce(addr)?;
    simulator.serve(listener, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}
