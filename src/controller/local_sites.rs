//! The operator's Local site driver: each Site whose `cluster.driver` is
//! `Local` is a [`LocalSite`] of processes on the operator's own machine,
//! under one state directory that goes when the operator stops. Stacks there
//! live as long as the operator process, as in `fenice lab`: this driver is
//! for trying Fenice and for tests, not for production.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use zeroize::Zeroizing;

use crate::site::local::{self, LocalSite, TenantSpec};

/// Why a tenant's stack cannot run at a Local site.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "site {site} already runs a tenant named {tenant} for namespace {owner}: \
         at a Local site tenant names are unique across namespaces; rename one of them"
    )]
    NameTaken { site: String, tenant: String, owner: String },

    #[error(transparent)]
    Site(#[from] local::Error),
}

/// The socket of the WAL archiver for `env`: named after a digest of the
/// environment, which holds secrets, never after its values.
fn archiver_name(env: &BTreeMap<String, Zeroizing<String>>) -> String {
    let mut digest = blake3::Hasher::new();
    for (key, value) in env {
        digest.update(key.as_bytes()).update(b"=").update(value.as_bytes()).update(b"\0");
    }
    format!("wal-archiver-{}.sock", &digest.finalize().to_hex()[..12])
}

/// What [`LocalSites::ensure`] starts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Start<'a> {
    /// PostgreSQL with a fresh database, and the app.
    Stack,
    /// PostgreSQL alone, fresh or on a prepared data directory.
    Database(Option<&'a Path>),
    /// PostgreSQL alone, a standby of the database listening at HOST:PORT.
    Standby(&'a str),
}

/// Every Local site the operator drives, created when first needed.
pub struct LocalSites {
    dir: PathBuf,
    program: PathBuf,
    sites: Mutex<BTreeMap<String, Arc<LocalSite>>>,
    /// Which namespace each running tenant belongs to, per site.
    owners: Mutex<BTreeMap<(String, String), String>>,
}

impl LocalSites {
    /// Sites under `dir`, whose apps run `program` (the fenice binary).
    pub fn new(dir: &Path, program: &Path) -> Self {
        Self {
            dir: dir.into(),
            program: program.into(),
            sites: Mutex::new(BTreeMap::new()),
            owners: Mutex::new(BTreeMap::new()),
        }
    }

    /// The Local site `name`.
    pub fn site(&self, name: &str) -> Arc<LocalSite> {
        let mut sites = self.sites.lock().unwrap_or_else(|e| e.into_inner());
        sites
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(LocalSite::new(name, &self.program, &self.dir.join(name))))
            .clone()
    }

    /// Starts the tenant's stack at `site` unless it runs there; an app that
    /// did not start is started again. True when something was started.
    /// Blocking: it waits for PostgreSQL and the app to serve.
    pub fn ensure_running(&self, site: &str, namespace: &str, spec: &TenantSpec) -> Result<bool, Error> {
        self.ensure(site, namespace, spec, Start::Stack)
    }

    /// Starts a PostgreSQL server alone for `spec` at `site` unless one runs
    /// there (a restore creates its database). True when it was started.
    pub fn ensure_database(&self, site: &str, namespace: &str, spec: &TenantSpec) -> Result<bool, Error> {
        self.ensure(site, namespace, spec, Start::Database(None))
    }

    /// Starts a PostgreSQL server alone for `spec` at `site` on the data
    /// directory `pgdata` (prepared for recovery) unless one runs there.
    pub fn ensure_recovering(
        &self,
        site: &str,
        namespace: &str,
        spec: &TenantSpec,
        pgdata: &Path,
    ) -> Result<bool, Error> {
        self.ensure(site, namespace, spec, Start::Database(Some(pgdata)))
    }

    /// Starts a standby for `spec` at `site` of the tenant's database
    /// listening at `upstream` (HOST:PORT) unless the tenant's database runs
    /// there, standby or not. True when it was started. Blocking: it copies
    /// the database first.
    pub fn ensure_standby(
        &self,
        site: &str,
        namespace: &str,
        spec: &TenantSpec,
        upstream: &str,
    ) -> Result<bool, Error> {
        self.ensure(site, namespace, spec, Start::Standby(upstream))
    }

    fn ensure(&self, site: &str, namespace: &str, spec: &TenantSpec, start: Start<'_>) -> Result<bool, Error> {
        let key = (site.to_owned(), spec.name.clone());
        {
            let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
            match owners.get(&key) {
                Some(owner) if owner != namespace => {
                    return Err(Error::NameTaken { site: key.0, tenant: key.1, owner: owner.clone() });
                }
                Some(_) => {}
                None => {
                    owners.insert(key.clone(), namespace.to_owned());
                }
            }
        }
        let local = self.site(site);
        let app = start == Start::Stack;
        let started = |local: &LocalSite| match start {
            Start::Stack => local.start_tenant(spec),
            Start::Database(pgdata) => local.start_database(spec, pgdata),
            Start::Standby(upstream) => local.start_standby_from(spec, upstream),
        };
        match local.with_tenant(&spec.name, |stack| stack.app.is_some()) {
            Some(running) if running || !app => Ok(false),
            Some(_) => Ok(local.start_app(spec).map(|()| true)?),
            None => match started(&local) {
                Ok(()) => Ok(true),
                Err(e) => {
                    // A fresh tenant holds nothing yet: undo the half start so a retry starts clean.
                    local.stop_tenant(&spec.name);
                    Err(e.into())
                }
            },
        }
    }

    /// Stops the tenant's stack at `site` (if it runs there for `namespace`) and forgets it.
    pub fn stop(&self, site: &str, namespace: &str, tenant: &str) {
        let key = (site.to_owned(), tenant.to_owned());
        let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        if owners.get(&key).is_some_and(|owner| owner == namespace) {
            owners.remove(&key);
            self.site(site).stop_tenant(tenant);
        }
    }

    /// Stops every stack at every site, e.g. when the operator stops: their
    /// processes and files go now, whoever still holds this registry.
    pub fn stop_all(&self) {
        self.owners.lock().unwrap_or_else(|e| e.into_inner()).clear();
        let sites: Vec<Arc<LocalSite>> =
            self.sites.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        for site in sites {
            for tenant in site.tenants() {
                site.stop_tenant(&tenant);
            }
            site.stop_archivers();
        }
    }

    /// The socket of `site`'s WAL archiver for the repositories `env` opens,
    /// started unless it runs: one per set of repositories, which it opens
    /// once for every database handing it WAL. Blocking: it waits until the
    /// archiver listens.
    pub fn archiver(&self, site: &str, env: &BTreeMap<String, Zeroizing<String>>) -> Result<PathBuf, Error> {
        let pairs: Vec<(String, String)> = env.iter().map(|(k, v)| (k.clone(), v.to_string())).collect();
        Ok(self.site(site).start_wal_archiver_named(&archiver_name(env), &pairs)?)
    }

    /// Whether `site` runs the WAL archiver for the repositories `env` opens.
    pub fn archiver_runs(&self, site: &str, env: &BTreeMap<String, Zeroizing<String>>) -> bool {
        self.site(site).runs_wal_archiver(&archiver_name(env))
    }

    /// Stops `name` of `namespace` at every site it runs at.
    pub fn stop_everywhere(&self, namespace: &str, name: &str) {
        let sites: Vec<String> = {
            let owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
            owners
                .iter()
                .filter(|((_, n), o)| n == name && *o == namespace)
                .map(|((site, _), _)| site.clone())
                .collect()
        };
        for site in sites {
            self.stop(&site, namespace, name);
        }
    }

    /// The tenant's database URL at `site`, if its stack runs there for `namespace`.
    pub fn database(&self, site: &str, namespace: &str, tenant: &str) -> Option<String> {
        let key = (site.to_owned(), tenant.to_owned());
        let owned = self.owners.lock().unwrap_or_else(|e| e.into_inner()).get(&key).is_some_and(|o| o == namespace);
        owned.then(|| self.site(site).with_tenant(tenant, |stack| stack.db_url(tenant))).flatten()
    }

    /// Where the tenant's database at `site` listens (HOST:PORT), if its stack runs there for `namespace`.
    pub fn database_address(&self, site: &str, namespace: &str, tenant: &str) -> Option<String> {
        self.database(site, namespace, tenant)?;
        self.site(site).database_address(tenant)
    }

    /// The `fenice` program the sites' processes run.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// The tenant's app address at `site`, when it runs.
    pub fn app_url(&self, site: &str, tenant: &str) -> Option<String> {
        self.site(site).with_tenant(tenant, |stack| stack.app.as_ref().map(|app| app.base_url())).flatten()
    }
}
