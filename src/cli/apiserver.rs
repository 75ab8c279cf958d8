//! `fenice apiserver`.

use super::serving;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

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
    let shutdown = serving::shutdown_signal()?;
    let (listener, addr) = serving::bind(&args.listen).await?;
    if let Some(path) = &args.kubeconfig_out {
        std::fs::write(path, apiserver::kubeconfig(addr)).with_context(|| {
            format!("writing the kubeconfig to {}: check that its directory exists and is writable", path.display())
        })?;
    }
    serving::announce(addr)?;
    server.serve(listener, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}
