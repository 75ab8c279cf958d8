//! What every long-running server command does the same way: stop on SIGTERM
//! or SIGINT, bind its address, and say on stdout where it listens, so that
//! a caller that asked for port 0 learns the port.

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

/// Completes on the first SIGTERM or SIGINT. The handlers are installed before
/// this returns, so a signal sent once the address is printed is not missed.
pub fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    let mut terminate = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        let name = tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "stopping");
    })
}

/// Binds `listen` (`IP:PORT`; port 0 picks a free one).
pub async fn bind(listen: &str) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(listen).await.with_context(|| {
        format!(
            "listening on {listen}: is another process using it? pick another with --listen (port 0 picks a free one)"
        )
    })?;
    let addr = listener.local_addr().context("reading the address listened on")?;
    Ok((listener, addr))
}

/// Prints the one `listening on IP:PORT` line, once the server is ready.
pub fn announce(addr: SocketAddr) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {addr}").and_then(|()| stdout.flush()).context("writing to stdout")
}
