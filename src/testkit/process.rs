//! One server process: started in its own process group with its output in a log
//! file, awaited with a deadline, and killed with its whole group on drop.
//!
//! NB, on dying with the test process: every server is started with
//! `PR_SET_PDEATHSIG(SIGKILL)`, so that a test binary that panics, is killed, or
//! exits without dropping a server does not leave the server running. Linux sends
//! that signal when the *thread* that forked the child exits, not the process. A
//! server forked by a test's own thread would die when that test ends, which breaks
//! a server shared by several tests or held by `fenice lab` across tokio's
//! short-lived blocking threads. So all forks go through one spawner thread that
//! lives as long as the process does: the servers die with the process, and only
//! with it. (A change of user clears the setting, but std runs `pre_exec` after
//! `CommandExt::uid`, so PostgreSQL run as the `postgres` user keeps it; the test
//! `servers_die_with_the_test_process` checks both.)

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use super::placement::NetNs;
use super::{Error, Result};

/// How many ports a server tries before giving up, when the one picked was taken
/// between picking it and the server binding it.
const PORT_ATTEMPTS: u32 = 4;
/// How many lines of a log an error message quotes.
const TAIL_LINES: usize = 25;
/// How many bytes from the end of a log an error message reads at most.
const TAIL_BYTES: u64 = 8 * 1024;
/// How long stopping a server waits for a state change that normally takes
/// microseconds (a process stopping, a killed one going away).
const STOP_WAIT: Duration = Duration::from_secs(5);

/// A running server process, killed with its process group when dropped.
#[derive(Debug)]
pub struct ServerProcess {
    server: &'static str,
    child: Child,
    log: PathBuf,
    /// A signal that asks the server to stop at once and clean up after itself,
    /// and how long to give it, before the SIGKILL.
    quick_stop: Option<(libc::c_int, Duration)>,
    /// Set once the process has been killed and reaped.
    status: Option<ExitStatus>,
}

impl ServerProcess {
    /// Starts `command` for `server` in a new process group, with stdin closed and
    /// stdout and stderr written to `log` (truncated first).
    pub fn spawn(server: &'static str, command: Command, log: &Path) -> Result<Self> {
        Self::spawn_in(server, command, log, None)
    }

    /// [`spawn`](Self::spawn), in the network namespace `netns` (this process's own when `None`).
    pub fn spawn_in(server: &'static str, mut command: Command, log: &Path, netns: Option<Arc<NetNs>>) -> Result<Self> {
        let prepare = |source| Error::Prepare { server, step: "creating its log file", path: log.to_owned(), source };
        let out = File::create(log).map_err(prepare)?;
        let err = out.try_clone().map_err(prepare)?;
        let parent = std::process::id();
        command.stdin(Stdio::null()).stdout(out).stderr(err).process_group(0);
        // SAFETY: the closure runs in the forked child before exec and only makes
        // async-signal-safe calls (prctl, getppid), allocating nothing.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died before the prctl: then nobody would kill us.
                if libc::getppid() as u32 != parent {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        let program = PathBuf::from(command.get_program());
        let child =
            spawn_from_long_lived_thread(command, netns).map_err(|source| Error::Spawn { server, program, source })?;
        Ok(Self { server, child, log: log.to_owned(), quick_stop: None, status: None })
    }

    /// Makes [`stop`](Self::stop) send `signal` to the process first and give it
    /// up to `grace` to exit, for a server that then reaps its own children: they
    /// left its process group, and once orphaned they would be reaped by PID 1,
    /// which in some containers never reaps, leaving zombies. The SIGKILL follows
    /// in any case.
    pub fn set_quick_stop(&mut self, signal: libc::c_int, grace: Duration) {
        self.quick_stop = Some((signal, grace));
    }

    /// The process id, which is also its process group id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The file that receives the process's stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last lines of the log, for error messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log)
    }

    /// Calls `ready` until it says yes, the process exits, or `timeout` passes.
    /// Between calls it pauses briefly, a little longer each time.
    pub fn await_ready(&mut self, timeout: Duration, mut ready: impl FnMut() -> bool) -> Result<()> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(10);
        loop {
            if self.has_exited() {
                let status = self.stop();
                return Err(Error::Exited { server: self.server, status, tail: self.log_tail() });
            }
            if ready() {
                return Ok(());
            }
            if started.elapsed() >= timeout {
                return Err(Error::NotReady { server: self.server, waited: timeout, tail: self.log_tail() });
            }
            thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    /// Whether the process has exited, without reaping it: while it is an
    /// unreaped zombie its pid, and so its process group id, cannot be reused,
    /// so [`stop`](Self::stop) can still signal the group safely.
    fn has_exited(&self) -> bool {
        if self.status.is_some() {
            return true;
        }
        // SAFETY: waitid writes only into `info`, which is zeroed and ours.
        unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
            let rc = libc::waitid(libc::P_PID, self.child.id(), &mut info, flags);
            // With WNOHANG, si_pid stays 0 while the child runs.
            rc == 0 && info.si_pid() != 0
        }
    }

    /// Kills the process group with SIGKILL, and the process's children that left
    /// the group, reaps the process and waits until those children are gone too.
    /// With a [quick stop](Self::set_quick_stop), asks the process to exit first.
    /// Idempotent.
    ///
    /// NB: PostgreSQL's postmaster puts every child (backends, checkpointer,
    /// archiver) in a session of its own, out of the group. They would exit by
    /// themselves on seeing the postmaster die, but only soon, not at once, and
    /// may meanwhile write into the directory we are about to remove. So the
    /// group is stopped first (SIGSTOP: it can fork no more), its children are
    /// listed and killed with their own groups, then the group is killed.
    pub fn stop(&mut self) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        // Our own child: std's Child holds it unreaped until the wait below, so
        // its pid, and the group id, cannot name someone else's processes. The
        // same holds for its children while it is stopped and cannot reap them.
        let pid = self.child.id();
        if let Some((signal, grace)) = self.quick_stop {
            // SAFETY: kill has no memory effects.
            unsafe { libc::kill(pid as libc::pid_t, signal) };
            let deadline = Instant::now() + grace;
            while !self.has_exited() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(2));
            }
        }
        signal_group(pid, libc::SIGSTOP);
        let deadline = Instant::now() + STOP_WAIT;
        while proc_stat(pid).is_some_and(|s| !matches!(s.state, 'T' | 'Z' | 'X')) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(1));
        }
        let children = children_of(pid);
        for &child in &children {
            signal_group(child, libc::SIGKILL);
            // SAFETY: kill has no memory effects.
            unsafe { libc::kill(child as libc::pid_t, libc::SIGKILL) };
        }
        signal_group(pid, libc::SIGKILL);
        // An error means it is not our child any more (cannot happen unless someone
        // reaped it behind std's back): nothing left to wait for.
        let status = self.child.wait().unwrap_or_default();
        self.status = Some(status);
        let deadline = Instant::now() + STOP_WAIT;
        while children.iter().any(|&c| is_alive(c)) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        status
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Forks `command` from the spawner thread (see the module docs for why), in
/// `netns` when given.
fn spawn_from_long_lived_thread(command: Command, netns: Option<Arc<NetNs>>) -> io::Result<Child> {
    struct Request {
        command: Command,
        netns: Option<Arc<NetNs>>,
        reply: mpsc::Sender<io::Result<Child>>,
    }
    static SPAWNER: Mutex<Option<mpsc::Sender<Request>>> = Mutex::new(None);

    let requests = {
        let mut spawner = SPAWNER.lock().unwrap_or_else(PoisonError::into_inner);
        match &*spawner {
            Some(requests) => requests.clone(),
            None => {
                let (requests, incoming) = mpsc::channel::<Request>();
                // The sender stays in the static, so this loop and its thread last
                // until the process exits.
                thread::Builder::new().name("testkit-spawner".into()).spawn(move || {
                    let home = NetNs::current();
                    for mut request in incoming {
                        let spawned = match &request.netns {
                            None => request.command.spawn(),
                            Some(netns) => spawn_in_namespace(&mut request.command, netns, &home),
                        };
                        let _ = request.reply.send(spawned);
                    }
                })?;
                spawner.insert(requests).clone()
            }
        }
    };
    let (reply, answer) = mpsc::channel();
    requests
        .send(Request { command, netns, reply })
        .map_err(|_| io::Error::other("the testkit spawner thread is gone"))?;
    answer.recv().map_err(|_| io::Error::other("the testkit spawner thread is gone"))?
}

/// Forks `command` with the calling thread moved into `netns` for the fork
/// (setns in the child would come after a change of user, which may not enter
/// a namespace), and moved back to `home`.
fn spawn_in_namespace(command: &mut Command, netns: &NetNs, home: &io::Result<NetNs>) -> io::Result<Child> {
    let home = home.as_ref().map_err(|e| io::Error::new(e.kind(), format!("the spawner's own namespace: {e}")))?;
    netns.enter()?;
    let spawned = command.spawn();
    if let Err(e) = home.enter() {
        // NB: every later server would start in the wrong namespace: better none.
        panic!("the testkit spawner could not return to its network namespace: {e}");
    }
    spawned
}

/// Runs `start` with a free port, and again with another one when the server
/// exited saying the port was taken (someone else bound it after we picked it).
pub fn on_free_port<T>(server: &'static str, mut start: impl FnMut(u16) -> Result<T>) -> Result<T> {
    let mut tail = String::new();
    for _ in 0..PORT_ATTEMPTS {
        let port = free_port().map_err(|source| Error::PickPort { server, source })?;
        match start(port) {
            Err(Error::Exited { tail: printed, .. }) if port_was_taken(&printed) => tail = printed,
            outcome => return outcome,
        }
    }
    Err(Error::NoFreePort { server, attempts: PORT_ATTEMPTS, tail })
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port())
}

/// Whether a server's output says its port was taken (PostgreSQL, Python and Node
/// say it in these words).
fn port_was_taken(output: &str) -> bool {
    output.contains("Address already in use") || output.contains("EADDRINUSE")
}

/// The first `name` on PATH that is an executable file.
pub fn find_on_path(name: impl AsRef<OsStr>) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name.as_ref())).find(|file| is_executable(file))
}

/// Whether `file` is a regular file someone may execute.
pub fn is_executable(file: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    file.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Creates the temporary directory of one server, named after it, in `parent`
/// ($TMPDIR by default).
pub fn temp_dir(server: &'static str, prefix: &str, parent: Option<&Path>) -> Result<tempfile::TempDir> {
    let parent = parent.map_or_else(std::env::temp_dir, Path::to_path_buf);
    tempfile::Builder::new().prefix(prefix).tempdir_in(&parent).map_err(|source| Error::Prepare {
        server,
        step: "creating a temporary directory",
        path: parent,
        source,
    })
}

/// Sends `signal` to the process group `pgid`.
fn signal_group(pgid: u32, signal: libc::c_int) {
    // SAFETY: kill has no memory effects; a negative pid names a process group.
    unsafe { libc::kill(-(pgid as libc::pid_t), signal) };
}

/// What /proc/PID/stat says of a process.
struct ProcStat {
    /// R, S, D, T (stopped), Z (zombie: dead, not yet reaped), X (dead), …
    state: char,
    ppid: u32,
    pgrp: u32,
}

fn proc_stat(pid: u32) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid pgrp ...", where comm may hold spaces and
    // parentheses, so the fields are counted from the last ')'.
    let (_, fields) = stat.rsplit_once(')')?;
    let mut fields = fields.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some(ProcStat { state, ppid, pgrp })
}

/// Every process, with what /proc says of it.
fn all_processes() -> impl Iterator<Item = (u32, ProcStat)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, proc_stat(pid)?)))
}

/// Whether process `pid` is alive: it exists and is not a zombie (dead, waiting
/// to be reaped by whoever inherited it).
pub fn is_alive(pid: u32) -> bool {
    proc_stat(pid).is_some_and(|s| !matches!(s.state, 'Z' | 'X'))
}

/// The live processes of process group `pgid`. For tests that check nothing was
/// left behind.
pub fn live_members(pgid: u32) -> Vec<u32> {
    all_processes().filter(|(_, s)| s.pgrp == pgid && !matches!(s.state, 'Z' | 'X')).map(|(pid, _)| pid).collect()
}

/// The live children of process `pid`, in its group or not.
pub fn children_of(pid: u32) -> Vec<u32> {
    all_processes().filter(|(_, s)| s.ppid == pid && !matches!(s.state, 'Z' | 'X')).map(|(child, _)| child).collect()
}

/// The bytes process `pid` has moved so far through `field` of /proc/PID/io
/// (`rchar` read, `wchar` written), 0 once it is gone.
pub fn io_bytes(pid: u32, field: &str) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    let value = io.lines().find_map(|line| line.strip_prefix(field)?.strip_prefix(": "));
    value.and_then(|n| n.trim().parse().ok()).unwrap_or(0)
}

/// A live child of `pid` running `program` (its name in /proc) that has moved
/// more than `bytes` through `field` of its /proc/PID/io: a tool caught in the
/// middle of its work, for tests that kill its parent there.
pub fn child_past(pid: u32, program: &str, field: &str, bytes: u64) -> Option<u32> {
    let named = |child: &u32| std::fs::read_to_string(format!("/proc/{child}/comm")).is_ok_and(|c| c.trim() == program);
    children_of(pid).into_iter().find(|child| named(child) && io_bytes(*child, field) > bytes)
}

/// The last lines of a log file, or a note saying why there are none.
pub fn log_tail(log: &Path) -> String {
    let mut text = Vec::new();
    let read = File::open(log).and_then(|mut f| {
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(TAIL_BYTES)))?;
        f.read_to_end(&mut text)
    });
    if let Err(e) = read {
        return format!("(could not read {}: {e})", log.display());
    }
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    if lines.is_empty() {
        return "(nothing)".to_owned();
    }
    lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_in_use_is_recognised_in_each_servers_words() {
        assert!(port_was_taken("LOG:  could not bind IPv4 address \"127.0.0.1\": Address already in use"));
        assert!(port_was_taken("OSError: [Errno 98] Address already in use"));
        assert!(port_was_taken("Error: listen EADDRINUSE: address already in use 127.0.0.1:10000"));
        assert!(!port_was_taken("FATAL:  data directory \"/x\" has wrong ownership"));
    }

    fn exited(tail: &str) -> Error {
        use std::os::unix::process::ExitStatusExt;
        Error::Exited { server: "test", status: ExitStatus::from_raw(1 << 8), tail: tail.to_owned() }
    }

    #[test]
    fn a_taken_port_is_retried_with_another_but_other_failures_are_not() {
        let mut ports = Vec::new();
        let port = on_free_port("test", |port| {
            ports.push(port);
            if ports.len() < 3 { Err(exited("Address already in use")) } else { Ok(port) }
        })
        .unwrap();
        assert_eq!((ports.len(), Some(&port)), (3, ports.last()));

        let mut calls = 0;
        let err = on_free_port("test", |_| -> Result<()> {
            calls += 1;
            Err(exited("FATAL:  unrecognized configuration parameter"))
        })
        .unwrap_err();
        assert_eq!(calls, 1);
        assert!(matches!(err, Error::Exited { .. }), "{err:?}");

        let err = on_free_port("test", |_| -> Result<()> { Err(exited("EADDRINUSE")) }).unwrap_err();
        assert!(matches!(err, Error::NoFreePort { attempts: PORT_ATTEMPTS, .. }), "{err:?}");
    }

    #[test]
    fn log_tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let text: String = (0..100).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&log, text).unwrap();
        let tail = log_tail(&log);
        assert!(tail.starts_with(&format!("line {}", 100 - TAIL_LINES)), "{tail}");
        assert!(tail.ends_with("line 99"), "{tail}");
        assert!(log_tail(&dir.path().join("absent")).starts_with("(could not read"));
    }

    #[test]
    fn a_process_is_awaited_and_its_group_and_children_killed_on_drop() {
        // Adopt the orphans, to reap them below: PID 1 may not (see `set_quick_stop`).
        // SAFETY: prctl with these arguments touches no memory.
        assert_eq!(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) }, 0);
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sh");
        // One child stays in the group, one leaves it for a session of its own, as
        // PostgreSQL's children do: both must die with the server.
        cmd.args(["-c", "sleep 600 & setsid sleep 600 & echo started; wait"]);
        let mut p = ServerProcess::spawn("test", cmd, &dir.path().join("log")).unwrap();
        let log = p.log_path().to_owned();
        p.await_ready(Duration::from_secs(10), || std::fs::read_to_string(&log).is_ok_and(|s| s.contains("started")))
            .unwrap();
        let pid = p.pid();
        let deadline = Instant::now() + Duration::from_secs(10);
        // Wait until setsid has made its session (it runs after the fork).
        while !children_of(pid).iter().any(|&c| proc_stat(c).is_some_and(|s| s.pgrp == c)) {
            assert!(Instant::now() < deadline, "the setsid child never appeared: {:?}", children_of(pid));
            thread::sleep(Duration::from_millis(10));
        }
        let children = children_of(pid);
        assert_eq!(children.len(), 2, "{children:?}");
        assert_eq!(live_members(pid).len(), 2, "the shell and one sleep: {:?}", live_members(pid));

        drop(p);
        // Drop waits until they are gone.
        assert!(!is_alive(pid));
        assert_eq!(children.iter().filter(|&&c| is_alive(c)).count(), 0, "{children:?}");
        assert_eq!(live_members(pid), Vec::<u32>::new());
        for child in children {
            // SAFETY: waitpid on a pid of ours, with no status wanted.
            assert_eq!(unsafe { libc::waitpid(child as libc::pid_t, std::ptr::null_mut(), 0) }, child as libc::pid_t);
        }
    }

    #[test]
    fn a_process_that_exits_early_reports_its_output() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo boom >&2; exit 3"]);
        let mut p = ServerProcess::spawn("test", cmd, &dir.path().join("log")).unwrap();
        let err = p.await_ready(Duration::from_secs(10), || false).unwrap_err();
        match err {
            Error::Exited { status, tail, .. } => {
                assert_eq!(status.code(), Some(3));
                assert_eq!(tail, "boom");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
