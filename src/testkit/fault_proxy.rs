//! A TCP proxy on 127.0.0.1 in front of a server (the S3 server, Azurite), that
//! a test tells to misbehave the way a provider's store does on a bad day:
//! answer `503 SlowDown` to new connections, stop answering altogether (also
//! on connections already open and in the middle of a request), or break a
//! connection in the middle of an answer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What S3 answers when it throttles.
const SLOW_DOWN: &str = "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: 88\r\n\
    Connection: close\r\n\r\n\
    <Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>\n";

#[derive(Default)]
struct Faults {
    /// New connections still to be answered 503 and closed.
    throttle: AtomicU32,
    /// Nothing goes through any more, either way; connections stay open.
    silent: AtomicBool,
    /// Falls silent once this many bytes went to the server (0: never).
    silent_after: AtomicU64,
    /// Bytes sent on to the server so far.
    forwarded: AtomicU64,
    throttled: AtomicU32,
    /// Answers still to be cut off, and after how many bytes of each.
    cut: AtomicU32,
    cut_after: AtomicU64,
    cuts: AtomicU32,
}

/// The proxy; it stops when dropped (connections in flight are cut).
pub struct FaultProxy {
    addr: SocketAddr,
    faults: Arc<Faults>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free port of 127.0.0.1 and passes everything to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let faults = Arc::new(Faults::default());
        let shared = faults.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                connections.spawn(serve(client, upstream, shared.clone()));
            }
        });
        Ok(FaultProxy { addr, faults, task })
    }

    /// `http://127.0.0.1:PORT`, to use as the store's endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next `connections` new connections get `503 SlowDown` and are closed.
    pub fn throttle(&self, connections: u32) {
        self.faults.throttle.store(connections, Ordering::SeqCst);
    }

    /// How many connections were answered 503.
    pub fn throttled(&self) -> u32 {
        self.faults.throttled.load(Ordering::SeqCst)
    }

    /// Stops passing anything on, on every connection, open or new; or passes again.
    pub fn silence(&self, silent: bool) {
        self.faults.silent.store(silent, Ordering::SeqCst);
        if !silent {
            self.faults.silent_after.store(0, Ordering::SeqCst);
        }
    }

    /// Falls silent once `bytes` more went to the server.
    pub fn silence_after(&self, bytes: u64) {
        let at = self.faults.forwarded.load(Ordering::SeqCst) + bytes.max(1);
        self.faults.silent_after.store(at, Ordering::SeqCst);
    }

    /// The next `answers` connections to pass on more than `bytes` bytes of
    /// answers (a pack's read, for small `answers` and `bytes` above any other
    /// object) are closed there, mid-answer, as a connection that breaks.
    pub fn cut_answers(&self, answers: u32, bytes: u64) {
        self.faults.cut_after.store(bytes, Ordering::SeqCst);
        self.faults.cut.store(answers, Ordering::SeqCst);
    }

    /// How many answers were cut off.
    pub fn cuts(&self) -> u32 {
        self.faults.cuts.load(Ordering::SeqCst)
    }

    /// Bytes passed on to the server so far.
    pub fn forwarded(&self) -> u64 {
        self.faults.forwarded.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut client: TcpStream, upstream: SocketAddr, faults: Arc<Faults>) {
    let throttle = faults.throttle.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
    if throttle {
        faults.throttled.fetch_add(1, Ordering::SeqCst);
        let mut request = vec![0; 64 * 1024];
        let _ = client.read(&mut request).await;
        let _ = client.write_all(SLOW_DOWN.as_bytes()).await;
        return;
    }
    let Ok(server) = TcpStream::connect(upstream).await else { return };
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = pump(client_read, server_write, faults.clone(), true);
    let down = pump(server_read, client_write, faults, false);
    let _ = tokio::join!(up, down);
}

/// Copies `from` to `to` until either ends; once the proxy falls silent it
/// holds the connection open and passes nothing more.
async fn pump(mut from: impl AsyncRead + Unpin, mut to: impl AsyncWrite + Unpin, faults: Arc<Faults>, up: bool) {
    let mut buf = vec![0; 16 * 1024];
    let mut answered = 0;
    loop {
        let Ok(n) = from.read(&mut buf).await else { return };
        if n == 0 {
            let _ = to.shutdown().await;
            return;
        }
        if faults.silent.load(Ordering::SeqCst) {
            // Silent: the connection stays open and nothing more passes, either way.
            std::future::pending::<()>().await;
        }
        let mut chunk = &buf[..n];
        if up {
            let before = faults.forwarded.fetch_add(n as u64, Ordering::SeqCst);
            let after = faults.silent_after.load(Ordering::SeqCst);
            if after > 0 && before + n as u64 >= after {
                // NB: what comes before the threshold still goes: the store sees half a request.
                chunk = &chunk[..(after.saturating_sub(before) as usize).min(n)];
                faults.silent.store(true, Ordering::SeqCst);
            }
        }
        if !up {
            let after = faults.cut_after.load(Ordering::SeqCst);
            if answered + n as u64 > after
                && faults.cut.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
            {
                // NB: dropping this half closes the connection to the client there.
                let _ = to.write_all(&chunk[..(after - answered) as usize]).await;
                faults.cuts.fetch_add(1, Ordering::SeqCst);
                return;
            }
            answered += n as u64;
        }
        if !chunk.is_empty() && to.write_all(chunk).await.is_err() {
            return;
        }
    }
}
