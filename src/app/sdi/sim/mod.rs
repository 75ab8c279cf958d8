//! The SdI simulator (`fenice app sdi-sim`): the server side of the protocol in
//! the parent module, keeping everything it receives on disk so that a test can
//! count each invoice exactly once and a restart loses nothing.
//!
//! docs/sdi-simulator.md says what it models and what it does not. The parts:
//! [`http`] answers the routes, [`store`] keeps the state on disk and the
//! index in memory, [`receipts`] decides the receipts.

mod http;
pub mod receipts;
mod store;

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use store::Store;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "SdI simulator: cannot create directory {}: check that its parent exists and is writable, or pass another --data",
        path.display()
    )]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("SdI simulator: cannot read {}: check its permissions", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "SdI simulator: cannot write {}: check that the data directory is writable and the disk is not full",
        path.display()
    )]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "SdI simulator: {} {problem}: the data directory was damaged or not written by the simulator; \
         repair or remove it, or start over with an empty --data directory",
        path.display()
    )]
    Corrupt { path: PathBuf, problem: String },

    #[error("SdI simulator: cannot read the address it listens on")]
    LocalAddr {
        #[source]
        source: io::Error,
    },

    #[error("SdI simulator: serving HTTP on {addr} failed")]
    Serve {
        addr: String,
        #[source]
        source: io::Error,
    },
}

/// How to run a simulator.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Where everything received is kept; created if missing.
    pub data_dir: PathBuf,
    /// How long after a file is received its first receipt is issued, and each
    /// further receipt after the one before.
    pub receipt_delay: Duration,
}

/// A simulator whose state is loaded, ready to serve.
#[derive(Debug)]
pub struct Simulator {
    store: Arc<Store>,
    receipt_delay: Duration,
}

impl Simulator {
    /// Opens the data directory (creating it if missing) and rebuilds the state
    /// from it. Fails, naming the file, if the directory holds anything the
    /// simulator did not write.
    pub async fn open(config: SimConfig) -> Result<Self> {
        let store = Store::open(config.data_dir).await?;
        Ok(Self { store: Arc::new(store), receipt_delay: config.receipt_delay })
    }

    /// Serves the protocol on `listener` until `shutdown` completes, then
    /// finishes the requests under way and returns.
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let addr = listener.local_addr().map_err(|source| Error::LocalAddr { source })?;
        tracing::info!(%addr, data = %self.store.root().display(), delay = ?self.receipt_delay, "SdI simulator serving");
        let router = http::router(self.store, self.receipt_delay);
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|source| Error::Serve { addr: addr.to_string(), source })?;
        tracing::info!(%addr, "SdI simulator stopped");
        Ok(())
    }
}

/// Opens the data directory of `config` and serves on `listener` until
/// `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    config: SimConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    Simulator::open(config).await?.serve(listener, shutdown).await
}
