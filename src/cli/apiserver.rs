//! `fenice apiserver`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

use crate::apiserver::{self, ApiServer, ServerOptions};

/// The end of `fenice apiserver --help`.
// NB: clap takes the subcommand's about from the `Command::Apiserver` doc
// comment, so the details go after the options.
const AFTER_HELP: &str = "NOT FOR PRODUCTION: no authentication or authorization (anyone who reaches the port \
can do anything), no persistence (everything is lost when it stops), a single process.

It serves Fenice's CRDs, the built-in kinds the operator uses (Namespace, Secret, \
ConfigMap, Event, Lease, Job, ...) and any CRD applied to it, over plain HTTP. Nothing \
runs behind the built-in kinds: a Job never starts a Pod. CEL validation rules are not \
evaluated. With kubectl, pass --validate=false (there is no OpenAPI document). \
docs/apiserver.md lists what works and what does not.";

#[derive(Args, Debug)]
#[command(after_help = AFTER_HELP)]
pub struct ApiserverArgs {
    /// Address to listen on (plain HTTP). Port 0 picks a free port; the line
    /// `listening on IP:PORT` on stdout says which.
    #[arg(long, env = "FENICE_APISERVER_LISTEN", default_value = "127.0.0.1:0")]
    listen: String,

    /// Where to write a kubeconfig for this server (context `fenice-memory`,
    /// no credentials). Use it with KUBECONFIG=FILE or --kubeconfig FILE.
    #[arg(long, env = "FENICE_APISERVER_KUBECONFIG_OUT")]
    kubeconfig_out: Option<PathBuf>,

    /// How many changes are kept for watches to resume from; older
    /// resourceVersions get 410 Gone and clients list again.
    #[arg(long, env = "FENICE_APISERVER_HISTORY", default_value_t = 10_000)]
    history: usize,
}

pub async fn run(args: ApiserverArgs) -> anyhow::Result<ExitCode> {
    let options = ServerOptions { history: args.history, ..ServerOptions::default() };
    let server = ApiServer::new(options)?;
    let shutdown = shutdown_signal().context("installing the SIGTERM and SIGINT handlers")?;
    let listener = TcpListener::bind(&args.listen).await.with_context(|| {
        format!(
            "listening on {}: is another process using it? pick another with --listen (port 0 picks a free one)",
            args.listen
        )
    })?;
    let addr = listener.local_addr().context("reading the address listened on")?;
    if let Some(path) = &args.kubeconfig_out {
        std::fs::write(path, apiserver::kubeconfig(addr)).with_context(|| {
            format!("writing the kubeconfig to {}: check that its directory exists and is writable", path.display())
        })?;
    }
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {addr}").and_then(|()| stdout.flush()).context("writing to stdout")?;
    drop(stdout);
    server.serve(listener, shutdown).await?;
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
