//! `fenice app sdi-sim`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

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
    let shutdown = shutdown_signal().context("installing the SIGTERM and SIGINT handlers")?;
    let listener = TcpListener::bind(&args.listen).await.with_context(|| {
        format!(
            "listening on {}: is another process using it? pick another with --listen (port 0 picks a free one)",
            args.listen
        )
    })?;
    let addr = listener.local_addr().context("reading the address listened on")?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {addr}").and_then(|()| stdout.flush()).context("writing to stdout")?;
    drop(stdout);
    simulator.serve(listener, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

/// Completes on the first SIGTERM or SIGINT. The handlers are installed before
/// this returns, so a signal sent once the address is printed is not missed.
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        let name = tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "stopping");
    })
}
