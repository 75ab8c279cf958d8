//! One WAL archiver for every database of a machine: `fenice agent
//! wal-archiver` opens the repositories once and archives the segments that
//! `fenice agent wal-push --via SOCKET` hands it over a Unix socket, a few at
//! a time.
//!
//! PostgreSQL starts an `archive_command` per segment. On its own, each one
//! opens every repository (several requests per store) before its one upload;
//! hundreds of databases whose `archive_timeout` ran out together started
//! hundreds of them at once, and the machine spent itself on those.
//!
//! One segment per connection: the client sends a line of JSON,
//! `{"tenant": T, "name": N, "size": S}`, then the S bytes of the file; the
//! archiver answers one line once every repository holds the segment: `ok`,
//! or `error: ` and why. The client reads the file (as the database's user)
//! and sends its content: the archiver opens no path on a client's word.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;

use super::wal;
use crate::repo::repository::Repository;

/// PostgreSQL's largest WAL segment: nothing larger is read from a client.
pub const MAX_SEGMENT: u64 = 1 << 30;
/// The longest header line read from a client.
const MAX_HEADER: u64 = 4096;

#[derive(Serialize, Deserialize, Debug)]
struct Header {
    tenant: String,
    name: String,
    size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ViaError {
    #[error(
        "no WAL archiver answers at {}: is `fenice agent wal-archiver --socket {}` running?",
        socket.display(),
        socket.display()
    )]
    Unreachable {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Wal(#[from] wal::Error),
    #[error("the WAL archiver at {} stopped answering while taking {name}", socket.display())]
    Cut {
        socket: PathBuf,
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the WAL archiver at {} did not archive {name}: {why}", socket.display())]
    Refused { socket: PathBuf, name: String, why: String },
}

/// Hands the WAL file at `path` of `tenant` to the archiver listening at
/// `socket`; returns once every repository holds it.
pub async fn push_via(socket: &Path, tenant: &str, path: &Path) -> Result<(), ViaError> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
    let content = tokio::fs::read(path).await.map_err(|source| wal::Error::Read { path: path.to_owned(), source })?;
    let mut stream = UnixStream::connect(socket)
        .await
        .map_err(|source| ViaError::Unreachable { socket: socket.to_owned(), source })?;
    let cut = |source| ViaError::Cut { socket: socket.to_owned(), name: name.clone(), source };
    let header = Header { tenant: tenant.to_owned(), name: name.clone(), size: content.len() as u64 };
    let mut line = serde_json::to_vec(&header).expect("a header serializes");
    line.push(b'\n');
    stream.write_all(&line).await.map_err(cut)?;
    stream.write_all(&content).await.map_err(cut)?;
    let mut answer = String::new();
    BufReader::new(stream.take(MAX_HEADER)).read_line(&mut answer).await.map_err(cut)?;
    match answer.trim_end() {
        "ok" => Ok(()),
        "" => Err(cut(std::io::ErrorKind::UnexpectedEof.into())),
        other => Err(ViaError::Refused {
            socket: socket.to_owned(),
            name,
            why: other.strip_prefix("error: ").unwrap_or(other).to_owned(),
        }),
    }
}

/// Listens at `socket`, accessible to its owner only. A socket file left by
/// an archiver that died is replaced; one another archiver answers at is not.
pub fn listen(socket: &Path) -> anyhow::Result<UnixListener> {
    use anyhow::Context;
    use std::os::unix::fs::PermissionsExt;
    if std::os::unix::net::UnixStream::connect(socket).is_ok() {
        anyhow::bail!("another WAL archiver already answers at {}: stop it first", socket.display());
    }
    match std::fs::remove_file(socket) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing the stale socket {}", socket.display()));
        }
        _ => {}
    }
    let listener = UnixListener::bind(socket).with_context(|| format!("listening at {}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("making {} its owner's only", socket.display()))?;
    Ok(listener)
}

/// Takes segments on `listener` and archives each into every one of `repos`,
/// `parallelism` at a time, for as long as it is polled.
pub async fn serve(
    listener: UnixListener,
    repos: Vec<Arc<Repository>>,
    parallelism: usize,
) -> std::convert::Infallible {
    let repos = Arc::new(repos);
    let permits = Arc::new(Semaphore::new(parallelism.max(1)));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            // NB: every database's archiving goes through here: a passing failure
            // (too many open files) must not end it; the client tries again.
            Err(e) => {
                tracing::warn!(error = %e, "taking a WAL file failed; going on");
                tokio::time::sleep(ACCEPT_PAUSE).await;
                continue;
            }
        };
        let (repos, permits) = (repos.clone(), permits.clone());
        tokio::spawn(async move { take_one(stream, &repos, &permits).await });
    }
}

/// How long the archiver waits after a connection it could not take.
const ACCEPT_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

async fn take_one(stream: UnixStream, repos: &[Arc<Repository>], permits: &Semaphore) {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let answer = match archive_one(&mut read, repos, permits).await {
        Ok(()) => "ok\n".to_owned(),
        Err(why) => format!("error: {}\n", why.replace('\n', " ")),
    };
    // NB: a client gone before the answer is PostgreSQL giving up; it tries the segment again.
    let _ = write.write_all(answer.as_bytes()).await;
}

async fn archive_one(
    read: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
    repos: &[Arc<Repository>],
    permits: &Semaphore,
) -> Result<(), String> {
    let mut line = String::new();
    (&mut *read).take(MAX_HEADER).read_line(&mut line).await.map_err(|e| format!("reading the header: {e}"))?;
    let header: Header = serde_json::from_str(&line).map_err(|e| format!("not a segment header: {e}"))?;
    if header.size > MAX_SEGMENT {
        return Err(format!("{} is {} bytes, more than a WAL segment can be", header.name, header.size));
    }
    // NB: the content is read only with a permit: waiting clients hold their bytes, not the archiver.
    let _permit = permits.acquire().await.map_err(|e| e.to_string())?;
    let mut content = vec![0; header.size as usize];
    read.read_exact(&mut content).await.map_err(|e| format!("reading {}: {e}", header.name))?;
    let pushes = repos.iter().map(|repo| wal::push_content(repo, &header.tenant, &header.name, &content));
    if let Err(e) = futures::future::try_join_all(pushes).await {
        let why = crate::error_chain::error_chain(&e);
        tracing::warn!(tenant = %header.tenant, segment = %header.name, error = %why, "archiving failed");
        return Err(why);
    }
    tracing::debug!(tenant = %header.tenant, segment = %header.name, "archived");
    Ok(())
}
