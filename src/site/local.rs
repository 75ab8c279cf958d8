//! The Local site driver's processes: a site on one machine is, per tenant, a
//! PostgreSQL server and the reference app, each a process group of its own
//! on free ports of 127.0.0.1 (or of the site's own address, in a network
//! namespace of its own, when its network is to be cut), and once per site the
//! WAL archiver its databases may hand their WAL to. Killing the site sends
//! SIGKILL to every one of them at once, as when a provider's machines die.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use crate::app::{AppConfig, SdiEnvironment};
use crate::testkit::process::ServerProcess;
use crate::testkit::{self, AppOptions, AppServer, Placement, PostgresOptions, PostgresServer};

/// How often each app looks at its SdI queue: often, so the lab's RPO at SdI is short.
pub const SEND_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);
/// The WAL archiver's socket, in the site's directory of running servers.
const WAL_ARCHIVER_SOCKET: &str = "wal-archiver.sock";
/// How long the WAL archiver may take to open the repositories and listen.
const ARCHIVER_START: std::time::Duration = std::time::Duration::from_secs(60);

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("site {site}: starting tenant {tenant}'s {what}")]
    Start {
        site: String,
        tenant: String,
        what: &'static str,
        #[source]
        source: Box<testkit::Error>,
    },

    #[error("site {site}: starting its WAL archiver")]
    StartArchiver {
        site: String,
        #[source]
        source: Box<testkit::Error>,
    },

    #[error(
        "site {site}: its WAL archiver's socket {path} is longer than the {max} bytes a Unix socket's path may \
         have: give the site a shorter directory (the operator's --state-dir)"
    )]
    SocketPathTooLong { site: String, path: PathBuf, max: usize },

    #[error("site {site}: tenant {tenant}, {what}: {message}")]
    Sql { site: String, tenant: String, what: &'static str, message: String },

    #[error("site {site}: tenant {tenant} already runs here")]
    AlreadyRunning { site: String, tenant: String },

    #[error("site {site}: tenant {tenant}'s database does not run here")]
    NotRunning { site: String, tenant: String },

    #[error("site {site}: {what} {}", path.display())]
    Io {
        site: String,
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Who a tenant is and how its stack runs.
#[derive(Clone, Debug)]
pub struct TenantSpec {
    pub name: String,
    /// The tenant's partita IVA.
    pub vat: String,
    pub company: String,
    pub sdi_endpoint: Option<String>,
    /// Which SdI that endpoint is: SdI's test environment for a drill's copy.
    pub sdi_environment: SdiEnvironment,
    /// The fencing epoch the app runs under.
    pub epoch: u64,
    /// Start the app fenced: it neither issues nor transmits until activated.
    pub fenced: bool,
    /// PostgreSQL settings (e.g. WAL archiving) and their environment (the
    /// repository and its credentials, for `archive_command`).
    pub postgres: PostgresOptions,
}

/// One tenant's running stack: its database, and its app once started.
#[derive(Debug)]
pub struct TenantStack {
    pub postgres: PostgresServer,
    pub app: Option<AppServer>,
    /// The files of a database that crashed here and was started again on them.
    crashed: Option<tempfile::TempDir>,
    /// The database is a standby of the tenant's primary at another site.
    standby: bool,
}

impl TenantStack {
    /// The tenant database's URL (database named after the tenant).
    pub fn db_url(&self, tenant: &str) -> String {
        self.postgres.url(&database_name(tenant))
    }

    /// The process groups of the stack.
    fn groups(&self) -> Vec<u32> {
        self.app.iter().map(|a| a.pid()).chain([self.postgres.pid()]).collect()
    }
}

/// A site made of local processes.
#[derive(Debug)]
pub struct LocalSite {
    name: String,
    /// The `fenice` binary, which runs the app.
    program: PathBuf,
    /// Where the site keeps its tenants' documents.
    dir: PathBuf,
    tenants: Mutex<BTreeMap<String, TenantStack>>,
    /// What [`kill`](Self::kill) left on disk: each tenant's data directory.
    crashed: Mutex<BTreeMap<String, (PathBuf, tempfile::TempDir)>>,
    /// Where its servers listen and run.
    placement: Placement,
    /// How often its apps look for invoices to send to SdI.
    send_interval: std::time::Duration,
    /// Each `fenice agent wal-archiver` started, by its socket's name.
    archivers: Mutex<BTreeMap<String, ServerProcess>>,
}

/// A tenant's database name: its name with `-` as `_`.
pub fn database_name(tenant: &str) -> String {
    tenant.replace('-', "_")
}

/// Lets PostgreSQL's own user (it runs as `postgres` when we are root) through
/// `dir`, as it can through $TMPDIR; what is secret inside is 0600.
pub fn open_to_postgres(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
}

impl LocalSite {
    pub fn new(name: &str, program: &Path, dir: &Path) -> Self {
        Self::placed(name, program, dir, Placement::here())
    }

    /// A site whose servers listen on `placement`'s address, in its network
    /// namespace: a site whose network can be cut.
    pub fn placed(name: &str, program: &Path, dir: &Path, placement: Placement) -> Self {
        Self {
            name: name.into(),
            program: program.into(),
            dir: dir.into(),
            tenants: Mutex::new(BTreeMap::new()),
            crashed: Mutex::new(BTreeMap::new()),
            placement,
            send_interval: SEND_INTERVAL,
            archivers: Mutex::new(BTreeMap::new()),
        }
    }

    /// The same site, its apps looking for invoices to send every `interval`
    /// (200 ms otherwise): each look is a few queries, and hundreds of apps
    /// looking five times a second keep one machine busy on their own.
    pub fn sending_every(self, interval: std::time::Duration) -> Self {
        Self { send_interval: interval, ..self }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where the site's servers keep their directories (sockets, logs, fresh
    /// data), inside the site's own directory: whoever removes that after a
    /// crash removes them too.
    fn run_dir(&self) -> Result<PathBuf> {
        let run = self.dir.join("run");
        let io = |what, source| Error::Io { site: self.name.clone(), what, path: run.clone(), source };
        std::fs::create_dir_all(&run).map_err(|e| io("creating the servers' directory", e))?;
        open_to_postgres(&run).map_err(|e| io("opening", e))?;
        Ok(run)
    }

    /// The tenant's documents directory at this site.
    pub fn documents(&self, tenant: &str) -> PathBuf {
        self.dir.join("tenants").join(tenant).join("documents")
    }

    /// Where the tenant's database restored at this site keeps its data.
    pub fn pgdata(&self, tenant: &str) -> PathBuf {
        self.dir.join("tenants").join(tenant).join("pgdata")
    }

    /// Starts a new tenant: a fresh PostgreSQL with the tenant's database, and its app.
    pub fn start_tenant(&self, spec: &TenantSpec) -> Result<()> {
        self.start_database(spec, None)?;
        let database = database_name(&spec.name);
        self.psql(&spec.name, &[&format!("CREATE DATABASE \"{database}\"")], "creating its database")?;
        self.start_app(spec)
    }

    /// Runs SQL statements with psql on the tenant's server, one `-c` each.
    fn psql(&self, tenant: &str, statements: &[&str], what: &'static str) -> Result<()> {
        let failed = |message: String| Error::Sql { site: self.name.clone(), tenant: tenant.to_owned(), what, message };
        // The command is built under the lock and run outside it.
        let mut psql = self
            .with_tenant(tenant, |stack| stack.postgres.client("psql"))
            .ok_or_else(|| Error::NotRunning { site: self.name.clone(), tenant: tenant.to_owned() })?;
        psql.args(["-X", "-q", "-v", "ON_ERROR_STOP=1"]);
        for statement in statements {
            psql.args(["-c", statement]);
        }
        let out = psql.output().map_err(|e| failed(e.to_string()))?;
        if !out.status.success() {
            return Err(failed(String::from_utf8_lossy(&out.stderr).trim().to_string()));
        }
        Ok(())
    }

    /// Starts a synchronous standby here of the tenant's database at `primary`
    /// ([`Self::start_standby_from`]), and makes the primary confirm a commit
    /// only once this copy has it, so a commit the app confirmed survives the
    /// primary's provider.
    pub fn start_standby(&self, spec: &TenantSpec, primary: &LocalSite) -> Result<()> {
        let upstream = primary
            .database_address(&spec.name)
            .ok_or_else(|| Error::NotRunning { site: primary.name.clone(), tenant: spec.name.clone() })?;
        self.start_standby_from(spec, &upstream)?;
        primary.make_standbys_synchronous(&spec.name)
    }

    /// Starts a standby here of the tenant's database listening at `upstream`
    /// (HOST:PORT, a Local site's, which trusts its links): a base backup
    /// streamed from it, then PostgreSQL replaying its WAL as it is written.
    /// `spec`'s settings (archiving) take effect when it is promoted.
    pub fn start_standby_from(&self, spec: &TenantSpec, upstream: &str) -> Result<()> {
        let data = self.dir.join("tenants").join(&spec.name).join("standby");
        let io = |what, source| Error::Io { site: self.name.clone(), what, path: data.clone(), source };
        let copying = |message: String| Error::Sql {
            site: self.name.clone(),
            tenant: spec.name.clone(),
            what: "copying the primary",
            message,
        };
        let (host, port) = upstream
            .rsplit_once(':')
            .ok_or_else(|| copying(format!("{upstream:?} is not HOST:PORT (status.localDatabase)")))?;
        if data.exists() {
            std::fs::remove_dir_all(&data).map_err(|e| io("removing an earlier standby", e))?;
        }
        std::fs::create_dir_all(data.parent().unwrap_or(&self.dir)).map_err(|e| io("creating", e))?;
        let bin = testkit::postgres::bin_dir().map_err(|e| copying(crate::error_chain::error_chain(&e)))?;
        let out = Command::new(bin.join("pg_basebackup"))
            .env("PGHOST", host)
            .env("PGPORT", port)
            .env("PGUSER", testkit::postgres::USER)
            .env_remove("PGPASSWORD")
            .env_remove("PGSERVICE")
            .arg("-D")
            .arg(&data)
            .args(["--write-recovery-conf", "--wal-method=stream", "--checkpoint=fast", "--no-sync"])
            .output()
            .map_err(|e| io("running pg_basebackup into", e))?;
        if !out.status.success() {
            return Err(copying(String::from_utf8_lossy(&out.stderr).trim().to_string()));
        }
        // NB: the copy holds the primary's settings, which may wait for a standby: once
        // promoted it has none of its own. ALTER SYSTEM rewrites the file, as a later standby needs.
        let auto_conf = data.join("postgresql.auto.conf");
        let mut settings = std::fs::read_to_string(&auto_conf).map_err(|e| io("reading postgresql.auto.conf in", e))?;
        settings.push_str(
            "\n# fenice: a standby of its own is made synchronous when one streams\nsynchronous_standby_names = ''\n",
        );
        std::fs::write(&auto_conf, settings).map_err(|e| io("writing postgresql.auto.conf in", e))?;
        self.start_standby_on(spec, &data)
    }

    /// Makes the tenant's database here confirm a commit only once a standby
    /// holds it (any standby streaming from it).
    pub fn make_standbys_synchronous(&self, tenant: &str) -> Result<()> {
        self.psql(
            tenant,
            &["ALTER SYSTEM SET synchronous_standby_names = '*'", "SELECT pg_reload_conf()"],
            "making its standby synchronous",
        )
    }

    /// Where the tenant's database here listens: HOST:PORT.
    pub fn database_address(&self, tenant: &str) -> Option<String> {
        self.with_tenant(tenant, |stack| format!("{}:{}", stack.postgres.host(), stack.postgres.port()))
    }

    /// Starts the tenant's PostgreSQL on `pgdata` prepared as a warm standby
    /// (replaying the archive, see [`crate::stack::pitr`]).
    pub fn start_standby_on(&self, spec: &TenantSpec, pgdata: &Path) -> Result<()> {
        self.start_database(spec, Some(pgdata))?;
        if let Some(stack) = self.lock().get_mut(&spec.name) {
            stack.standby = true;
        }
        Ok(())
    }

    /// Whether the tenant's database here is a standby (not promoted by this site yet).
    pub fn runs_standby(&self, tenant: &str) -> bool {
        self.with_tenant(tenant, |stack| stack.standby).unwrap_or(false)
    }

    /// Marks the tenant's standby here as promoted.
    pub fn promoted(&self, tenant: &str) {
        if let Some(stack) = self.lock().get_mut(tenant) {
            stack.standby = false;
        }
    }

    /// Starts the tenant's PostgreSQL: fresh, or on a restored data directory
    /// (where it replays what the restore set up, WAL to a target, and
    /// promotes). The app is started separately, once the database serves.
    pub fn start_database(&self, spec: &TenantSpec, pgdata: Option<&Path>) -> Result<()> {
        if self.lock().contains_key(&spec.name) {
            return Err(Error::AlreadyRunning { site: self.name.clone(), tenant: spec.name.clone() });
        }
        let run = self.run_dir()?;
        let options = match pgdata {
            Some(dir) => spec.postgres.clone().existing_data(dir),
            None => spec.postgres.clone(),
        }
        .run_dir(run)
        .placed(self.placement.clone());
        let postgres = PostgresServer::start_with(options).map_err(|source| Error::Start {
            site: self.name.clone(),
            tenant: spec.name.clone(),
            what: "PostgreSQL",
            source: Box::new(source),
        })?;
        self.lock().insert(spec.name.clone(), TenantStack { postgres, app: None, crashed: None, standby: false });
        Ok(())
    }

    /// Starts a tenant again on what [`kill`](Self::kill) left of it, as a
    /// machine that comes back with its disk: PostgreSQL recovers from the crash,
    /// then the app starts as `spec` says (fenced, for an old primary).
    pub fn restart_tenant(&self, spec: &TenantSpec) -> Result<()> {
        let Some((data, files)) = self.crashed.lock().unwrap_or_else(|e| e.into_inner()).remove(&spec.name) else {
            return Err(Error::NotRunning { site: self.name.clone(), tenant: spec.name.clone() });
        };
        // NB: the killed postmaster's lock file names its pid, which the machine
        // may have given to another process since (pids wrap at pid_max, 32768
        // here): PostgreSQL would then refuse to start. It was killed and reaped.
        let lock = data.join("postmaster.pid");
        if let Err(source) = std::fs::remove_file(&lock)
            && source.kind() != std::io::ErrorKind::NotFound
        {
            return Err(Error::Io {
                site: self.name.clone(),
                what: "removing the stale lock file",
                path: lock,
                source,
            });
        }
        self.start_database(spec, Some(&data))?;
        if let Some(stack) = self.lock().get_mut(&spec.name) {
            stack.crashed = Some(files);
        }
        self.start_app(spec)
    }

    /// The data directory [`kill`](Self::kill) left of `tenant`.
    pub fn crashed_data(&self, tenant: &str) -> Option<PathBuf> {
        self.crashed.lock().unwrap_or_else(|e| e.into_inner()).get(tenant).map(|(data, _)| data.clone())
    }

    /// The tenants [`kill`](Self::kill) left on disk.
    pub fn crashed_tenants(&self) -> Vec<String> {
        self.crashed.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect()
    }

    /// Starts the tenant's app on its running database (replacing an app
    /// already running, e.g. to change its epoch).
    pub fn start_app(&self, spec: &TenantSpec) -> Result<()> {
        self.start_app_serving(spec, &spec.name)
    }

    /// Starts an app on the stack `spec.name` that serves `tenant`: a copy of
    /// a tenant's data (a drill's) runs under a name of its own, and its app
    /// must still be the tenant's, or it refuses the tenant's database.
    pub fn start_app_serving(&self, spec: &TenantSpec, tenant: &str) -> Result<()> {
        let documents = self.documents(&spec.name);
        std::fs::create_dir_all(&documents).map_err(|source| Error::Io {
            site: self.name.clone(),
            what: "creating the documents directory",
            path: documents.clone(),
            source,
        })?;
        let db_url = self
            .with_tenant(&spec.name, |stack| stack.db_url(&spec.name))
            .ok_or_else(|| Error::NotRunning { site: self.name.clone(), tenant: spec.name.clone() })?;
        let config = AppConfig {
            sdi_endpoint: spec.sdi_endpoint.clone(),
            sdi_environment: spec.sdi_environment,
            epoch: spec.epoch,
            start_fenced: spec.fenced,
            send_interval: self.send_interval,
            ..AppConfig::new(tenant, &spec.vat, &spec.company, db_url, documents)
        };
        let run_dir = Some(self.run_dir()?);
        let app = AppServer::start(&AppOptions {
            program: self.program.clone(),
            config,
            run_dir,
            placement: self.placement.clone(),
        })
        .map_err(|source| Error::Start {
            site: self.name.clone(),
            tenant: spec.name.clone(),
            what: "app",
            source: Box::new(source),
        })?;
        if let Some(stack) = self.lock().get_mut(&spec.name) {
            stack.app = Some(app);
        }
        Ok(())
    }

    /// Runs `f` on a tenant's stack, if it runs here.
    pub fn with_tenant<T>(&self, tenant: &str, f: impl FnOnce(&TenantStack) -> T) -> Option<T> {
        self.lock().get(tenant).map(f)
    }

    /// The tenants running here.
    pub fn tenants(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Stops the tenant's app alone; its database runs on.
    pub fn stop_app(&self, tenant: &str) {
        let app = self.lock().get_mut(tenant).and_then(|stack| stack.app.take());
        drop(app);
    }

    /// Stops one tenant's stack (app first, then its database) and forgets it.
    pub fn stop_tenant(&self, tenant: &str) {
        let stack = self.lock().remove(tenant);
        drop(stack);
    }

    /// Whether the site runs the WAL archiver listening on the socket `name`.
    pub fn runs_wal_archiver(&self, name: &str) -> bool {
        self.archivers.lock().unwrap_or_else(|e| e.into_inner()).contains_key(name)
    }

    /// Stops every WAL archiver the site runs.
    pub fn stop_archivers(&self) {
        let archivers = std::mem::take(&mut *self.archivers.lock().unwrap_or_else(|e| e.into_inner()));
        drop(archivers);
    }

    /// Starts the site's WAL archiver, `fenice agent wal-archiver` with `env`
    /// (the repositories and what opens them), and hands its socket to
    /// PostgreSQL's user: the site's databases archive through it with
    /// `archive_command = 'fenice agent wal-push --via SOCKET %p'`, and the
    /// repositories are opened once for all of them. Returns the socket.
    pub fn start_wal_archiver(&self, env: &[(String, String)]) -> Result<PathBuf> {
        self.start_wal_archiver_named(WAL_ARCHIVER_SOCKET, env)
    }

    /// [`start_wal_archiver`](Self::start_wal_archiver) listening on the
    /// socket `name`, unless one runs there already: a site whose tenants
    /// archive to different repositories runs one archiver for each set.
    pub fn start_wal_archiver_named(&self, name: &str, env: &[(String, String)]) -> Result<PathBuf> {
        let failed = |source| Error::StartArchiver { site: self.name.clone(), source: Box::new(source) };
        let run = self.run_dir()?;
        let socket = run.join(name);
        // NB: sun_path holds 108 bytes with the terminating NUL; the archiver would fail on a longer one.
        const SOCKET_PATH_MAX: usize = 107;
        if socket.as_os_str().len() > SOCKET_PATH_MAX {
            return Err(Error::SocketPathTooLong { site: self.name.clone(), path: socket, max: SOCKET_PATH_MAX });
        }
        let mut archivers = self.archivers.lock().unwrap_or_else(|e| e.into_inner());
        if archivers.contains_key(name) {
            return Ok(socket);
        }
        let mut command = std::process::Command::new(&self.program);
        command.envs(env.iter().map(|(k, v)| (k, v))).args(["agent", "wal-archiver", "--socket"]).arg(&socket);
        let log = run.join(format!("{name}.log"));
        let mut archiver =
            ServerProcess::spawn_in("wal-archiver", command, &log, self.placement.netns.clone()).map_err(failed)?;
        archiver
            .await_ready(ARCHIVER_START, || std::os::unix::net::UnixStream::connect(&socket).is_ok())
            .map_err(failed)?;
        testkit::postgres::hand_to_server_user(&socket).map_err(failed)?;
        archivers.insert(name.to_owned(), archiver);
        Ok(socket)
    }

    /// Every process of the site dies at once (SIGKILL to each process group),
    /// as when a provider's machines die; their databases' files stay on disk
    /// for [`restart_tenant`](Self::restart_tenant). Returns the process groups signalled.
    pub fn kill(&self) -> Vec<u32> {
        let stacks = std::mem::take(&mut *self.lock());
        let archivers = std::mem::take(&mut *self.archivers.lock().unwrap_or_else(|e| e.into_inner()));
        let groups: Vec<u32> =
            stacks.values().flat_map(TenantStack::groups).chain(archivers.values().map(ServerProcess::pid)).collect();
        for group in &groups {
            // SAFETY: kill only sends a signal, to a process group this site started.
            unsafe { libc::kill(-(*group as libc::pid_t), libc::SIGKILL) };
        }
        drop(archivers);
        // Reaps the killed processes; the apps' directories go, the data stays.
        let mut crashed = self.crashed.lock().unwrap_or_else(|e| e.into_inner());
        for (tenant, stack) in stacks {
            let TenantStack { postgres, app, crashed: earlier, .. } = stack;
            drop(app);
            let (data, files) = postgres.crash();
            // NB: a database started on crashed files keeps its data in those.
            crashed.insert(tenant, (data, earlier.unwrap_or(files)));
        }
        groups
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, TenantStack>> {
        self.tenants.lock().unwrap_or_else(|e| e.into_inner())
    }
}
