//! A child process's output as a stream that fails if the process does: a dump
//! cut short must never be stored as if it were whole.

use std::io::Read;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::repo::id::Id;
use crate::repo::repository::Repository;
use crate::repo::restorer;

use super::{Error, Result};

/// The last bytes of a program's stderr kept for its error message.
const STDERR_TAIL: usize = 4096;

/// Reads a child's stdout; at the end, waits for it and turns a non-zero exit
/// into a read error carrying the end of its stderr.
pub struct ChildReader {
    program: &'static str,
    state: State,
    finished: bool,
}

enum State {
    /// Started at the first read, so that a program whose output is read last
    /// does not sit blocked on a full pipe meanwhile.
    NotStarted(Box<Command>),
    Running {
        stdout: ChildStdout,
        child: Child,
        stderr: Option<JoinHandle<Vec<u8>>>,
    },
    Done,
}

impl ChildReader {
    /// Takes `child`, spawned with stdout and stderr piped.
    pub fn new(program: &'static str, mut child: Child) -> Self {
        let stdout = child.stdout.take().expect("spawned with stdout piped");
        let stderr = collect_stderr(&mut child);
        Self { program, state: State::Running { stdout, child, stderr }, finished: false }
    }

    /// Runs `command` (stdout and stderr are piped here) when first read.
    pub fn lazy(program: &'static str, mut command: Command) -> Self {
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        Self { program, state: State::NotStarted(Box::new(command)), finished: false }
    }

    fn finish(&mut self) -> std::io::Result<()> {
        self.finished = true;
        let State::Running { mut child, stderr, .. } = std::mem::replace(&mut self.state, State::Done) else {
            return Ok(());
        };
        let status = child.wait()?;
        let stderr = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
        if status.success() {
            return Ok(());
        }
        Err(std::io::Error::other(format!(
            "{} failed ({status}): {}",
            self.program,
            String::from_utf8_lossy(&stderr).trim()
        )))
    }
}

impl Read for ChildReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.finished {
            return Ok(0);
        }
        if let State::NotStarted(command) = &mut self.state {
            let mut child = command
                .spawn()
                .map_err(|e| std::io::Error::new(e.kind(), format!("cannot run {}: {e}", self.program)))?;
            let stdout = child.stdout.take().expect("spawned with stdout piped");
            let stderr = collect_stderr(&mut child);
            self.state = State::Running { stdout, child, stderr };
        }
        let State::Running { stdout, .. } = &mut self.state else {
            return Ok(0);
        };
        match stdout.read(buf)? {
            0 => self.finish().map(|()| 0),
            n => Ok(n),
        }
    }
}

impl Drop for ChildReader {
    fn drop(&mut self) {
        if let State::Running { child, .. } = &mut self.state {
            // Stopped early (the backup failed elsewhere): do not leave the program running.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Reads a stream to its end, keeping the last [`STDERR_TAIL`] bytes.
pub fn tail(mut stream: impl Read) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        kept.extend_from_slice(&buf[..n]);
        if kept.len() > 2 * STDERR_TAIL {
            kept.drain(..kept.len() - STDERR_TAIL);
        }
    }
    if kept.len() > STDERR_TAIL {
        kept.drain(..kept.len() - STDERR_TAIL);
    }
    kept
}

/// A stderr collected on a thread, for programs whose stdout goes elsewhere.
pub fn collect_stderr(child: &mut Child) -> Option<JoinHandle<Vec<u8>>> {
    child.stderr.take().map(|stderr| std::thread::spawn(move || tail(stderr)))
}

/// Feeds the file `path` of the snapshot tree `root` into `command`'s standard
/// input (pg_restore, tar) and waits for it to finish.
///
/// NB: a damaged file is reported as such even when the program also fails,
/// since the program's complaint would only be about the cut input.
pub async fn feed(
    repo: &Arc<Repository>,
    root: &Id,
    path: &'static str,
    program: &'static str,
    mut command: Command,
) -> Result<()> {
    command.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped());
    let spawn_error = |source| Error::Spawn { program: program.into(), source };
    let mut child = command.spawn().map_err(spawn_error)?;
    let stderr = collect_stderr(&mut child);
    let mut stdin = child.stdin.take().expect("spawned with stdin piped");
    let handle = tokio::runtime::Handle::current();
    let (repo, root) = (repo.clone(), *root);
    // Writing to the pipe blocks while the program is busy: a blocking thread does it.
    let fed = tokio::task::spawn_blocking(move || {
        let fed = handle.block_on(restorer::write_file(&repo, &root, path, &mut stdin));
        drop(stdin);
        fed
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
        .map_err(spawn_error)?;
    fed.map_err(|source| Error::Restore { snapshot: root.short(), source: Box::new(source) })?;
    if !status.success() {
        let stderr = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
        return Err(Error::ProgramFailed {
            program,
            status: status.to_string(),
            stderr: String::from_utf8_lossy(&stderr).trim().to_string(),
        });
    }
    Ok(())
}
