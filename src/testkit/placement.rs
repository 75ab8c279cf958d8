//! Where a server runs: the address it listens on and, for a site whose network
//! can be cut, the network namespace its processes run in.
//!
//! Servers listen on 127.0.0.1 unless the process says otherwise with
//! [`set_listen_host`]: `fenice lab --fault network-cut` runs inside a network
//! namespace of its own, where the providers must answer on the address the
//! cut site reaches them at.

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::{Arc, OnceLock};

static LISTEN_HOST: OnceLock<Ipv4Addr> = OnceLock::new();

/// Makes every server started from now on listen on `host` (once per process).
pub fn set_listen_host(host: Ipv4Addr) -> Result<(), Ipv4Addr> {
    LISTEN_HOST.set(host)
}

/// The address servers listen on: 127.0.0.1 unless [`set_listen_host`] said otherwise.
pub fn listen_host() -> Ipv4Addr {
    LISTEN_HOST.get().copied().unwrap_or(Ipv4Addr::LOCALHOST)
}

/// A network namespace, held open by its file (`/run/netns/NAME`, as `ip netns add` makes it).
#[derive(Debug)]
pub struct NetNs {
    name: String,
    file: File,
}

impl NetNs {
    /// Opens the namespace `ip netns add NAME` made.
    pub fn open(name: &str) -> io::Result<Self> {
        let path = format!("/run/netns/{name}");
        let file = File::open(&path).map_err(|e| io::Error::new(e.kind(), format!("opening {path}: {e}")))?;
        Ok(Self { name: name.to_owned(), file })
    }

    /// The namespace this thread is in now.
    pub fn current() -> io::Result<Self> {
        Ok(Self { name: "(current)".into(), file: File::open("/proc/thread-self/ns/net")? })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Moves the calling thread into the namespace: the sockets it makes from
    /// then on, and the processes it forks, are there.
    pub fn enter(&self) -> io::Result<()> {
        // SAFETY: setns only changes this thread's namespace; the fd is ours and open.
        match unsafe { libc::setns(self.file.as_raw_fd(), libc::CLONE_NEWNET) } {
            0 => Ok(()),
            _ => {
                let e = io::Error::last_os_error();
                Err(io::Error::new(e.kind(), format!("entering network namespace {}: {e}", self.name)))
            }
        }
    }
}

/// Where a server runs: its address, and the namespace its process starts in
/// (this process's own when `None`).
#[derive(Clone, Debug)]
pub struct Placement {
    pub host: Ipv4Addr,
    pub netns: Option<Arc<NetNs>>,
}

impl Default for Placement {
    fn default() -> Self {
        Self { host: listen_host(), netns: None }
    }
}

impl Placement {
    /// This process's namespace, on [`listen_host`].
    pub fn here() -> Self {
        Self::default()
    }

    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.host, port))
    }

    /// Whether the host is this machine's loopback, which only its own namespace reaches.
    pub fn is_loopback(&self) -> bool {
        self.host.is_loopback()
    }
}
