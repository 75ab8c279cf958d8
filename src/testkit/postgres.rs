//! A throwaway PostgreSQL cluster: `initdb` into a temporary directory, then
//! `postgres` on a free port of 127.0.0.1 (or where it is placed), trusting
//! every local connection.
//!
//! NB: PostgreSQL refuses to run as root, and CI runs as root. Then `initdb` and
//! `postgres` run as the `postgres` system user (created by Debian's package),
//! and the temporary directory is handed to that user. The directory must sit
//! where that user can reach it: the default temporary directory (/tmp) is fine,
//! a TMPDIR under /root is not.

use std::ffi::{CStr, OsString};
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::placement::Placement;
use super::process::{self, ServerProcess};
use super::{DEFAULT_READY_TIMEOUT, Error, Result};

const SERVER: &str = "postgres";
/// Where Debian installs each major version's server programs, as VERSION/bin.
const DEBIAN_ROOT: &str = "/usr/lib/postgresql";
/// The superuser, made by `initdb -U`; the system user the server runs as under root.
pub const USER: &str = "postgres";
const USER_C: &CStr = c"postgres";
/// How long an immediate shutdown may take before the server is killed.
const QUICK_STOP_GRACE: Duration = Duration::from_secs(5);

/// How to start a [`PostgresServer`]: extra server settings (`-c name=value`),
/// extra environment, and how long to wait for it.
///
/// ```no_run
/// # use fenice::testkit::{PostgresOptions, PostgresServer};
/// # fn main() -> Result<(), fenice::testkit::Error> {
/// let pg = PostgresServer::start_with(
///     PostgresOptions::new().setting("wal_level", "replica").setting("archive_mode", "on"),
/// )?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PostgresOptions {
    settings: Vec<(String, String)>,
    env: Vec<(OsString, OsString)>,
    ready_timeout: Duration,
    existing_data: Option<PathBuf>,
    wal_segment_mb: Option<u32>,
    run_dir: Option<PathBuf>,
    placement: Placement,
}

// NB: the environment may hold what opens the repositories (restore_command's): only its names are shown.
impl std::fmt::Debug for PostgresOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let env: Vec<_> = self.env.iter().map(|(name, _)| name).collect();
        f.debug_struct("PostgresOptions")
            .field("settings", &self.settings)
            .field("env", &env)
            .field("ready_timeout", &self.ready_timeout)
            .field("existing_data", &self.existing_data)
            .field("wal_segment_mb", &self.wal_segment_mb)
            .field("run_dir", &self.run_dir)
            .field("placement", &self.placement)
            .finish()
    }
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            settings: Vec::new(),
            env: Vec::new(),
            ready_timeout: DEFAULT_READY_TIMEOUT,
            existing_data: None,
            wal_segment_mb: None,
            run_dir: None,
            placement: Placement::default(),
        }
    }
}

impl PostgresOptions {
    /// The defaults: no extra settings, [`DEFAULT_READY_TIMEOUT`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `-c name=value` to the server's command line (after ours, so it wins).
    pub fn setting(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((name.into(), value.into()));
        self
    }

    /// Sets an environment variable for the server, and so for the commands it
    /// runs, such as `archive_command`.
    pub fn env(mut self, name: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    /// Runs on an existing data directory (a restored one, say) instead of a
    /// fresh `initdb`. The directory is handed to the postgres user when we are
    /// root, and is left in place when the server stops.
    pub fn existing_data(mut self, dir: impl Into<PathBuf>) -> Self {
        self.existing_data = Some(dir.into());
        self
    }

    /// Makes the server's directory (sockets, log, a fresh cluster's data) in
    /// `dir` rather than $TMPDIR: an owner that dies without stopping it then
    /// leaves it where the owner's own files are.
    pub fn run_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.run_dir = Some(dir.into());
        self
    }

    /// WAL segments of `mb` MiB (a power of two; 16 by default) for a fresh
    /// cluster: with `archive_timeout`, every segment is archived whole, so
    /// small ones keep frequent archiving cheap.
    pub fn wal_segment_mb(mut self, mb: u32) -> Self {
        self.wal_segment_mb = Some(mb);
        self
    }

    /// Listens on `placement`'s address and runs in its namespace; a server
    /// off loopback also trusts connections from the networks it is on (the
    /// other sites' standbys and agents, which reach it over its link).
    pub fn placed(mut self, placement: Placement) -> Self {
        self.placement = placement;
        self
    }

    /// How long to wait for the server to accept connections.
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }
}

/// A running PostgreSQL server, stopped and deleted on drop.
#[derive(Debug)]
pub struct PostgresServer {
    // NB: declared before `dir`, so the server is killed before its files are removed.
    process: ServerProcess,
    dir: TempDir,
    socket_dir: PathBuf,
    /// The socket's own directory, when `dir` is too deep for a socket.
    _short_socket_dir: Option<TempDir>,
    data: PathBuf,
    bin_dir: PathBuf,
    host: Ipv4Addr,
    port: u16,
}

impl PostgresServer {
    /// Starts a server with the default options.
    pub fn start() -> Result<Self> {
        Self::start_with(PostgresOptions::default())
    }

    /// Starts a server with `options`.
    pub fn start_with(options: PostgresOptions) -> Result<Self> {
        let bin_dir = bin_dir()?;
        let run_as = if is_root() { Some(system_user()?) } else { None };
        let dir = process::temp_dir(SERVER, "fenice-postgres-", options.run_dir.as_deref())?;
        let (socket_dir, short_socket_dir) = socket_dir_for(dir.path())?;
        if let Some((uid, gid)) = run_as {
            for path in [dir.path(), &socket_dir] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid))
                    .map_err(|source| prepare("handing it to the postgres user", path, source))?;
            }
        }
        let data = match &options.existing_data {
            Some(data) => {
                adopt_data_dir(data, run_as)?;
                data.clone()
            }
            None => {
                initdb(&bin_dir, dir.path(), options.wal_segment_mb, run_as)?;
                dir.path().join("data")
            }
        };

        if !options.placement.is_loopback() {
            trust_the_links(&data)?;
        }
        let host = options.placement.host;
        let log = dir.path().join("postgres.log");
        let (process, port) = process::on_free_port(SERVER, |port| {
            let mut cmd = Command::new(bin_dir.join("postgres"));
            cmd.arg("-D").arg(&data);
            cmd.arg("-p").arg(port.to_string());
            cmd.arg("-k").arg(&socket_dir);
            for (name, value) in [("listen_addresses", host.to_string().as_str()), ("fsync", "off")] {
                cmd.arg("-c").arg(format!("{name}={value}"));
            }
            for (name, value) in &options.settings {
                cmd.arg("-c").arg(format!("{name}={value}"));
            }
            cmd.envs(options.env.iter().map(|(k, v)| (k, v)));
            prepare_command(&mut cmd, dir.path(), run_as);
            let mut process = ServerProcess::spawn_in(SERVER, cmd, &log, options.placement.netns.clone())?;
            // SIGQUIT is PostgreSQL's immediate shutdown: no checkpoint, as abrupt as
            // a crash for the data, but the postmaster reaps its children first.
            process.set_quick_stop(libc::SIGQUIT, QUICK_STOP_GRACE);
            process.await_ready(options.ready_timeout, || accepts_connections(&bin_dir, &socket_dir, port))?;
            Ok((process, port))
        })?;
        Ok(Self { process, dir, socket_dir, _short_socket_dir: short_socket_dir, data, bin_dir, host, port })
    }

    /// The TCP port on [`host`](Self::host).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address it listens on: 127.0.0.1 unless placed elsewhere.
    pub fn host(&self) -> Ipv4Addr {
        self.host
    }

    /// The directory of the server's Unix socket (`psql -h DIR`).
    pub fn socket_dir(&self) -> PathBuf {
        self.socket_dir.clone()
    }

    /// The cluster's data directory (PGDATA).
    pub fn data_dir(&self) -> PathBuf {
        self.data.clone()
    }

    /// The directory of the server's programs; the clients there (`psql`,
    /// `pg_dump`, `pg_restore`, …) match the server's version.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The superuser's name; local connections need no password.
    pub fn user(&self) -> &'static str {
        USER
    }

    /// A `postgres://` URL for database `db` as the superuser, over TCP.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{USER}@{}:{}/{db}", self.host, self.port)
    }

    /// A command for one of the client programs in [`bin_dir`](Self::bin_dir),
    /// with PGHOST, PGPORT, PGUSER and PGDATABASE (`postgres`) pointing here.
    pub fn client(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin_dir.join(program));
        cmd.env("PGHOST", self.host.to_string())
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", USER)
            .env("PGDATABASE", "postgres")
            .env_remove("PGPASSWORD")
            .env_remove("PGSERVICE");
        cmd
    }

    /// The server's process id, which is also its process group id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The server's log file.
    pub fn log_path(&self) -> &Path {
        self.process.log_path()
    }

    /// Kills the server at once (SIGKILL to its process group) and keeps its
    /// files, as a machine's disk outlives its processes: the data directory,
    /// and the guard that deletes the server's directory when dropped.
    pub fn crash(self) -> (PathBuf, TempDir) {
        let Self { mut process, dir, data, .. } = self;
        process.set_quick_stop(libc::SIGKILL, QUICK_STOP_GRACE);
        drop(process);
        (data, dir)
    }
}

fn prepare(step: &'static str, path: &Path, source: std::io::Error) -> Error {
    Error::Prepare { server: SERVER, step, path: path.to_owned(), source }
}

/// Makes an existing data directory one the server accepts: mode 0700, owned
/// by the user it runs as.
fn adopt_data_dir(data: &Path, run_as: Option<(u32, u32)>) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let step = "preparing the existing data directory";
    std::fs::set_permissions(data, std::fs::Permissions::from_mode(0o700))
        .map_err(|source| prepare(step, data, source))?;
    chown_tree(data, run_as, step)
}

/// Hands `path` and everything below it to the user PostgreSQL runs as, when
/// that is not us (we are root): for files its `archive_command` and
/// `restore_command` read or write, such as a key file or a directory repository.
pub fn hand_to_server_user(path: &Path) -> Result<()> {
    let run_as = if is_root() { Some(system_user()?) } else { None };
    chown_tree(path, run_as, "handing it to the postgres user")
}

fn chown_tree(data: &Path, run_as: Option<(u32, u32)>, step: &'static str) -> Result<()> {
    if let Some((uid, gid)) = run_as {
        let mut stack = vec![data.to_owned()];
        while let Some(path) = stack.pop() {
            std::os::unix::fs::lchown(&path, Some(uid), Some(gid)).map_err(|source| prepare(step, &path, source))?;
            if path.is_dir() && !path.is_symlink() {
                for entry in std::fs::read_dir(&path).map_err(|source| prepare(step, &path, source))? {
                    stack.push(entry.map_err(|source| prepare(step, &path, source))?.path());
                }
            }
        }
    }
    Ok(())
}

/// Runs `initdb` into `dir/data`, its output in `dir/initdb.log`.
fn initdb(bin_dir: &Path, dir: &Path, wal_segment_mb: Option<u32>, run_as: Option<(u32, u32)>) -> Result<()> {
    let program = bin_dir.join("initdb");
    let log = dir.join("initdb.log");
    let out = std::fs::File::create(&log).map_err(|source| prepare("creating initdb.log", &log, source))?;
    let err = out.try_clone().map_err(|source| prepare("creating initdb.log", &log, source))?;
    let mut cmd = Command::new(&program);
    cmd.arg("-D").arg(dir.join("data"));
    cmd.args(["-U", USER, "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions"]);
    if let Some(mb) = wal_segment_mb {
        cmd.arg(format!("--wal-segsize={mb}"));
    }
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    prepare_command(&mut cmd, dir, run_as);
    let status = cmd.status().map_err(|source| Error::Spawn { server: SERVER, program, source })?;
    if !status.success() {
        return Err(Error::Setup { server: SERVER, step: "initdb", status, tail: process::log_tail(&log) });
    }
    Ok(())
}

/// Runs in `dir`, as the postgres user when we are root, without the PG*
/// variables of whoever runs the tests.
fn prepare_command(cmd: &mut Command, dir: &Path, run_as: Option<(u32, u32)>) {
    cmd.current_dir(dir);
    for var in ["PGDATA", "PGPORT", "PGHOST", "PGUSER", "PGDATABASE", "PGOPTIONS"] {
        cmd.env_remove(var);
    }
    if let Some((uid, gid)) = run_as {
        cmd.uid(uid).gid(gid);
    }
}

/// Lets in, without a password as on loopback, connections from the networks
/// the server is directly on (`samenet`), replication too: said once in the
/// data directory, which a copy (a standby's) inherits.
fn trust_the_links(data: &Path) -> Result<()> {
    use std::io::Write;
    const LINES: &str = "host all all samenet trust\nhost replication all samenet trust\n";
    let hba = data.join("pg_hba.conf");
    let step = "trusting the site's links in pg_hba.conf";
    let text = std::fs::read_to_string(&hba).map_err(|source| prepare(step, &hba, source))?;
    if text.contains(LINES) {
        return Ok(());
    }
    let mut file = std::fs::OpenOptions::new().append(true).open(&hba).map_err(|source| prepare(step, &hba, source))?;
    file.write_all(format!("\n{LINES}").as_bytes()).map_err(|source| prepare(step, &hba, source))
}

/// The longest directory a socket `.s.PGSQL.<port>` fits in: a Unix
/// socket's path is at most 107 bytes.
const SOCKET_DIR_MAX: usize = 107 - "/.s.PGSQL.65535".len();

/// Where the server's Unix socket goes: `sock` in its directory `dir`; or,
/// where that is too deep for a socket's path (a deep run directory, such as
/// an operator's Local site's under a long `TMPDIR`), a directory of its own
/// under /tmp, removed with the server.
fn socket_dir_for(dir: &Path) -> Result<(PathBuf, Option<TempDir>)> {
    let inside = dir.join("sock");
    if inside.as_os_str().len() > SOCKET_DIR_MAX {
        let short = process::temp_dir(SERVER, "fenice-pg-", Some(Path::new("/tmp")))?;
        return Ok((short.path().to_owned(), Some(short)));
    }
    std::fs::create_dir(&inside).map_err(|source| prepare("creating the socket directory", &inside, source))?;
    Ok((inside, None))
}

/// Whether the server whose Unix socket is in `socket_dir` accepts
/// connections. NB: not over TCP: when another server took the port we
/// picked, ours exits, and the other one would answer there in its stead.
fn accepts_connections(bin_dir: &Path, socket_dir: &Path, port: u16) -> bool {
    Command::new(bin_dir.join("pg_isready"))
        .args(["-q", "-U", USER, "-d", "postgres", "-t", "2", "-h"])
        .arg(socket_dir)
        .arg("-p")
        .arg(port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The directory of the PostgreSQL programs, server and clients of one
/// version: Debian's newest major version, or else `postgres` on PATH
/// (following symlinks, as in /usr/local/bin/postgres -> /usr/lib/postgresql/15/bin/postgres).
pub fn bin_dir() -> Result<PathBuf> {
    let complete =
        |dir: &Path| ["postgres", "initdb", "pg_isready"].iter().all(|p| process::is_executable(&dir.join(p)));
    let mut debian: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir(DEBIAN_ROOT)
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let entry = entry.ok()?;
            // "15", or "9.6" in older releases: compared as numbers, not text.
            let version =
                entry.file_name().to_str()?.split('.').map(str::parse).collect::<Result<Vec<u32>, _>>().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, bin)| complete(bin))
        .collect();
    debian.sort();
    if let Some((_, bin)) = debian.pop() {
        return Ok(bin);
    }
    let on_path = process::find_on_path("postgres")
        .and_then(|p| std::fs::canonicalize(p).ok())
        .and_then(|p| p.parent().map(Path::to_owned))
        .filter(|dir| complete(dir));
    on_path.ok_or(Error::NotInstalled {
        server: SERVER,
        program: "the PostgreSQL server (postgres, initdb, pg_isready)",
        looked: format!("{DEBIAN_ROOT}/*/bin and PATH"),
    })
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

/// The uid and gid of the `postgres` system user.
fn system_user() -> Result<(u32, u32)> {
    let missing = Error::NoServiceUser { server: SERVER, user: USER };
    // SAFETY: getpwnam_r writes only into `pwd` and `buf`, which outlive the call,
    // and `result` points to `pwd` or is null.
    unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 16 * 1024];
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwnam_r(USER_C.as_ptr(), &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result);
        if rc != 0 || result.is_null() {
            return Err(missing);
        }
        Ok((pwd.pw_uid, pwd.pw_gid))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_options_show_the_environment_s_names_never_its_values() {
        let options = super::PostgresOptions::new().env("FENICE_PASSWORD", "s3cr3t").setting("archive_mode", "on");
        let shown = format!("{options:?}");
        assert!(shown.contains("FENICE_PASSWORD") && shown.contains("archive_mode"), "{shown}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
    }
}
