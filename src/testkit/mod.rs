//! Real local servers for tests and for `fenice lab`: PostgreSQL, an S3 service
//! (moto), Azure Blob storage (Azurite), and the invoicing stack's own SdI
//! simulator and reference app.
//!
//! Each server runs as a child process on a free port of 127.0.0.1 (or where
//! [`placement`] says), with its own
//! temporary directory that holds its data and its log (stdout and stderr). `start()`
//! returns once the server answers, and dropping the value kills the server's whole
//! process group, reaps it and removes the directory. The programs come from
//! `scripts/prerequisites.sh`; when one is missing, `start()` fails with an
//! [`Error`] that says so.
//!
//! ```no_run
//! # fn main() -> Result<(), fenice::testkit::Error> {
//! let pg = fenice::testkit::PostgresServer::start()?;
//! println!("connect to {}", pg.url("postgres"));
//! # Ok(()) }
//! ```
//!
//! NB: a server must be dropped to clean up. A server kept in a `static` lives until
//! the process exits; it is then killed (see [`process`]) but its temporary
//! directory stays behind, so prefer one server per test.

pub mod azurite;
pub mod fault_proxy;
pub mod http;
pub mod invoicing;
pub mod placement;
pub mod postgres;
pub mod process;
pub mod s3;

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

pub use azurite::{AccountKey, AzuriteServer, DEV_ACCOUNT, DEV_ACCOUNT_KEY};
pub use fault_proxy::FaultProxy;
pub use invoicing::{AppOptions, AppServer, SdiSimServer};
pub use placement::{NetNs, Placement};
pub use postgres::{PostgresOptions, PostgresServer};
pub use s3::S3Server;

/// Result of starting a server.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How long a server may take to answer after it was started, unless told otherwise.
/// Generous: two cores running a parallel `cargo test` make Python and Node slow to start.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// What the installer is called, for messages.
const PREREQUISITES: &str = "run scripts/prerequisites.sh";

/// Why a server could not be started. Each message names the server, says what it
/// printed (the end of its log) and what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{server}: {program} not found (looked in {looked}): {PREREQUISITES}")]
    NotInstalled { server: &'static str, program: &'static str, looked: String },

    #[error(
        "{server}: running as root, so it must run as the system user `{user}`, which does not exist: \
         {PREREQUISITES} (the Debian package creates it), or run the tests as another user"
    )]
    NoServiceUser { server: &'static str, user: &'static str },

    #[error("{server}: could not pick a free port on 127.0.0.1")]
    PickPort {
        server: &'static str,
        #[source]
        source: std::io::Error,
    },

    #[error("{server}: could not prepare its directory {}: {step}", path.display())]
    Prepare {
        server: &'static str,
        step: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{server}: could not run {}: is it installed? {PREREQUISITES}", program.display())]
    Spawn {
        server: &'static str,
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{server}: {step} failed ({status}); it printed:\n{tail}")]
    Setup { server: &'static str, step: &'static str, status: ExitStatus, tail: String },

    #[error("{server}: exited ({status}) before it was ready; its log ends with:\n{tail}")]
    Exited { server: &'static str, status: ExitStatus, tail: String },

    #[error(
        "{server}: not answering after {waited:?}; the machine may be overloaded (pass a longer timeout), \
         or see its log, which ends with:\n{tail}"
    )]
    NotReady { server: &'static str, waited: Duration, tail: String },

    #[error("{server}: every port tried was taken ({attempts} attempts); the last attempt printed:\n{tail}")]
    NoFreePort { server: &'static str, attempts: u32, tail: String },
}

impl Error {
    /// Which server failed: `postgres`, `s3 (moto)` or `azurite`.
    pub fn server(&self) -> &'static str {
        match self {
            Error::NotInstalled { server, .. }
            | Error::NoServiceUser { server, .. }
            | Error::PickPort { server, .. }
            | Error::Prepare { server, .. }
            | Error::Spawn { server, .. }
            | Error::Setup { server, .. }
            | Error::Exited { server, .. }
            | Error::NotReady { server, .. }
            | Error::NoFreePort { server, .. } => server,
        }
    }
}

/// What the S3 and Azurite servers share: a process that answers HTTP on a port
/// (of 127.0.0.1 unless placed elsewhere), with a temporary directory for its data and log. Both servers
/// dereference to it, so its accessors are theirs without being written twice.
#[derive(Debug)]
pub struct HttpServer {
    // NB: declared before `_dir`, so the server is killed before its files are removed.
    process: process::ServerProcess,
    /// Held only to be removed on drop.
    _dir: tempfile::TempDir,
    addr: std::net::SocketAddr,
}

impl HttpServer {
    /// Starts `command(address, dir)` on free ports of `placement` until one
    /// binds, and waits until `GET probe_path` gets an answer that `is_ours`
    /// recognises (and not, say, an answer from a stranger that took the port first).
    #[allow(clippy::too_many_arguments)]
    fn start(
        server: &'static str,
        dir_prefix: &str,
        parent: Option<&std::path::Path>,
        placement: &Placement,
        probe_path: &str,
        is_ours: impl Fn(&http::Response) -> bool,
        command: impl Fn(std::net::SocketAddr, &std::path::Path) -> std::process::Command,
    ) -> Result<Self> {
        let dir = process::temp_dir(server, dir_prefix, parent)?;
        let log = dir.path().join("server.log");
        let (process, addr) = process::on_free_port(server, |port| {
            let addr = placement.addr(port);
            let mut cmd = command(addr, dir.path());
            cmd.current_dir(dir.path());
            let mut process = process::ServerProcess::spawn_in(server, cmd, &log, placement.netns.clone())?;
            process.await_ready(DEFAULT_READY_TIMEOUT, || http::get(addr, probe_path).is_ok_and(|r| is_ours(&r)))?;
            Ok((process, addr))
        })?;
        Ok(Self { process, _dir: dir, addr })
    }

    /// The service's address, for [`http`].
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The server's process id, which is also its process group id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The server's log file.
    pub fn log_path(&self) -> &std::path::Path {
        self.process.log_path()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_program_says_which_server_and_what_to_do() {
        let e = Error::NotInstalled { server: "s3 (moto)", program: "moto_server", looked: "PATH".into() };
        assert_eq!(e.to_string(), "s3 (moto): moto_server not found (looked in PATH): run scripts/prerequisites.sh");
        assert_eq!(e.server(), "s3 (moto)");
    }
}
