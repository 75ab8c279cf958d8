//! The failover steps carried out between two Local sites: the
//! [`SiteDriver`] the lab's failovers run with. Each step is idempotent: run
//! again after a crash, it redoes its work or finds it done.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::local::{LocalSite, TenantSpec};
use crate::api::common::TenantRef;
use crate::app::documents::Documents;
use crate::app::{reconcile, sdi};
use crate::error_chain::error_chain;
use crate::failover::executor::{SiteDriver, StepContext};
use crate::failover::machine::{Restored, SourceFence, StepError};
use crate::repo::repository::Repository;
use crate::stack::pg::DbUrl;
use crate::stack::pitr::{self, PitrRestore};
use crate::stack::{promote, verify};

/// How long a recovering database may take to replay the archive and promote.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a warm standby may take to replay the rest of the archive before it is promoted.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(120);
/// How long an app may take to answer a request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Moves tenants from `source` to `target`, restoring them from `repository`.
pub struct LocalFailover {
    pub source: Arc<LocalSite>,
    pub target: Arc<LocalSite>,
    /// How each tenant runs at the target (its PostgreSQL options carry the
    /// environment `restore_command` needs: repository and credentials).
    pub tenants: BTreeMap<String, TenantSpec>,
    pub repo: Arc<Repository>,
    /// The repository's location, as `restore_command` opens it.
    pub repository: String,
    /// The `fenice` program `restore_command` runs.
    pub program: PathBuf,
    /// The SdI endpoint and certificate expiry the target's channel is switched to.
    pub sdi_endpoint: String,
    pub certificate_expires: jiff::civil::Date,
    /// Where each tenant is served: the lab's stand-in for DNS.
    pub endpoints: Mutex<BTreeMap<String, String>>,
    /// When the source was lost; RPO is measured up to it (to the restore's end otherwise).
    pub lost_at: Mutex<Option<jiff::Timestamp>>,
    /// Restore up to this time rather than to the end of the archive (a drill
    /// while the source still writes: its archive has no end).
    pub until: Option<jiff::Timestamp>,
    http: reqwest::Client,
}

impl LocalFailover {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        source: Arc<LocalSite>,
        target: Arc<LocalSite>,
        tenants: BTreeMap<String, TenantSpec>,
        repo: Arc<Repository>,
        repository: String,
        program: PathBuf,
        sdi_endpoint: String,
        certificate_expires: jiff::civil::Date,
    ) -> Self {
        let http = reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build().unwrap_or_default();
        Self {
            source,
            target,
            tenants,
            repo,
            repository,
            program,
            sdi_endpoint,
            certificate_expires,
            endpoints: Mutex::new(BTreeMap::new()),
            lost_at: Mutex::new(None),
            until: None,
            http,
        }
    }

    fn spec(&self, tenant: &TenantRef) -> Result<&TenantSpec, StepError> {
        self.tenants
            .get(&tenant.name)
            .ok_or_else(|| StepError::fatal(format!("tenant {} is not in this failover", tenant.name)))
    }

    /// The tenant's app at the target, as a base URL.
    fn app_url(&self, tenant: &str) -> Result<String, StepError> {
        self.target
            .with_tenant(tenant, |stack| stack.app.as_ref().map(|app| app.base_url()))
            .flatten()
            .ok_or_else(|| StepError::retry(format!("tenant {tenant}'s app does not run at {}", self.target.name())))
    }

    async fn post(&self, url: String, body: serde_json::Value) -> Result<serde_json::Value, StepError> {
        let response =
            self.http.post(&url).json(&body).send().await.map_err(|e| StepError::retry(format!("{url}: {e}")))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| StepError::retry(format!("{url}: {e}")))?;
        if !status.is_success() {
            return Err(StepError::retry(format!("{url}: HTTP {status}: {text}")));
        }
        Ok(serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
    }
    fn lost_at(&self) -> Option<jiff::Timestamp> {
        *self.lost_at.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pitr_request(&self, tenant: &str) -> PitrRestore {
        PitrRestore {
            tenant: tenant.to_owned(),
            repository: self.repository.clone(),
            target_time: self.until,
            snapshot: None,
            pgdata: self.target.pgdata(tenant),
            force: true,
            fenice: self.program.clone(),
            standby: false,
        }
    }

    /// Starts the tenant's warm standby at the target: its newest base backup,
    /// replaying the archived WAL as it arrives. A failover then promotes it
    /// ([`SiteDriver::restore_tenant`]) instead of restoring.
    pub async fn start_warm_standby(&self, tenant: &str) -> Result<(), StepError> {
        let spec = self.spec(&TenantRef { namespace: String::new(), name: tenant.to_owned() })?.clone();
        let request = PitrRestore { standby: true, target_time: None, ..self.pitr_request(tenant) };
        self.target.stop_tenant(tenant);
        pitr::prepare(&self.repo, &request).await.map_err(|e| StepError::fatal(error_chain(&e)))?;
        let target = self.target.clone();
        tokio::task::spawn_blocking(move || target.start_standby_on(&spec, &request.pgdata))
            .await
            .map_err(|e| StepError::retry(e.to_string()))?
            .map_err(|e| StepError::retry(error_chain(&e)))
    }
}

/// The tenant's database at `site`.
fn database(site: &LocalSite, tenant: &str) -> Result<DbUrl, StepError> {
    let url = site
        .with_tenant(tenant, |stack| stack.db_url(tenant))
        .ok_or_else(|| StepError::retry(format!("tenant {tenant}'s database does not run at {}", site.name())))?;
    DbUrl::parse(&url).map_err(|e| StepError::fatal(e.to_string()))
}

/// Promotes the tenant's standby at `site`: a synchronous one holds every
/// commit the primary confirmed; a warm one is first let replay up to the
/// newest segment the archive holds, so that it loses no more than a restore
/// would (promotion ends replay at the first segment it cannot fetch:
/// [`promote::promote`]); then verifies it as a restore of the newest backup
/// `repo` holds (`request` says where), measuring the RPO up to `lost_at`.
pub async fn promote_standby(
    site: &LocalSite,
    repo: &Repository,
    request: &PitrRestore,
    lost_at: Option<jiff::Timestamp>,
) -> Result<Restored, StepError> {
    let tenant = &request.tenant;
    let (snapshot, recorded) =
        pitr::latest_backup(repo, request).await.map_err(|e| StepError::retry(error_chain(&e)))?;
    let db = database(site, tenant)?;
    let client = db.connect().await.map_err(|e| StepError::retry(error_chain(&e)))?;
    let promoted = promote::promote(repo, tenant, &client, CATCH_UP_TIMEOUT)
        .await
        .map_err(|e| StepError::retry(error_chain(&e)))?;
    if let promote::Promoted::Behind { newest, replayed } = promoted {
        tracing::warn!(%tenant, newest, replayed = ?replayed,
            "the warm standby did not catch up with the archive: promoted anyway");
    }
    site.promoted(tenant);
    verify_recovered(site, tenant, (snapshot, &recorded), lost_at).await
}

/// Waits for the tenant's recovering database at `site` to promote; fails at
/// once, with the end of its log, if its PostgreSQL exits meanwhile (a
/// recovery target past the archive's end, a missing segment) rather than
/// after the timeout.
async fn wait_until_promoted(site: &LocalSite, tenant: &str, db: &DbUrl) -> Result<tokio_postgres::Client, StepError> {
    let deadline = std::time::Instant::now() + RECOVERY_TIMEOUT;
    loop {
        match verify::wait_until_promoted(db, Duration::from_secs(5)).await {
            Ok(client) => return Ok(client),
            Err(e) if std::time::Instant::now() >= deadline => return Err(StepError::retry(error_chain(&e))),
            Err(_) => {}
        }
        let exited = site.with_tenant(tenant, |s| {
            (!crate::testkit::process::is_alive(s.postgres.pid()))
                .then(|| crate::testkit::process::log_tail(s.postgres.log_path()))
        });
        if let Some(Some(log)) = exited {
            return Err(StepError::retry(format!(
                "tenant {tenant}'s PostgreSQL exited during recovery; its log ends:\n{log}"
            )));
        }
    }
}

/// Waits until the tenant's recovering database at `site` serves, brings
/// back the documents, checks it against what the backup `snapshot`
/// recorded, and measures the RPO up to `lost_at` (to now without it).
pub async fn verify_recovered(
    site: &LocalSite,
    tenant: &str,
    (snapshot, recorded): (crate::repo::id::Id, &verify::Record),
    lost_at: Option<jiff::Timestamp>,
) -> Result<Restored, StepError> {
    let db = database(site, tenant)?;
    let client = wait_until_promoted(site, tenant, &db).await?;
    let (_, mut differences) = verify::write_documents(&client, &site.documents(tenant))
        .await
        .map_err(|e| StepError::retry(error_chain(&e)))?;
    let (_, more) = verify::check_recovered(&client, recorded).await.map_err(|e| StepError::retry(error_chain(&e)))?;
    differences.extend(more);
    if !differences.is_empty() {
        let shown: Vec<String> = differences.iter().map(ToString::to_string).collect();
        return Err(StepError::fatal(format!("restored tenant {tenant} does not verify: {}", shown.join("; "))));
    }
    let last = verify::last_write(&client).await.map_err(|e| StepError::retry(error_chain(&e)))?;
    Ok(Restored { snapshot_id: snapshot.to_string(), rpo: rpo(last, lost_at) })
}

/// What was lost: from the last write a restore holds to `lost_at` (to now
/// without it); nothing when it holds none.
pub fn rpo(last_write: Option<jiff::Timestamp>, lost_at: Option<jiff::Timestamp>) -> Duration {
    let lost_at = lost_at.unwrap_or_else(jiff::Timestamp::now);
    last_write.map_or(Duration::ZERO, |last| Duration::try_from(lost_at.duration_since(last)).unwrap_or(Duration::ZERO))
}

/// Imports what SdI at `endpoint` already holds for `tenant` into its restored
/// database at `db` and its documents at `documents`, so that numbering goes
/// on after it and nothing is sent twice.
pub async fn reconcile_with_sdi(db: &DbUrl, documents: &Path, endpoint: &str, tenant: &str) -> Result<(), StepError> {
    let mut client = db.connect().await.map_err(|e| StepError::retry(error_chain(&e)))?;
    let documents = Documents::open(documents).map_err(|e| StepError::fatal(error_chain(&e)))?;
    let sdi = sdi::client::Client::new(endpoint).map_err(|e| StepError::fatal(error_chain(&e)))?;
    let done = reconcile::reconcile(&mut client, &documents, &sdi, tenant).await.map_err(|e| match e {
        reconcile::Error::Conflicts { .. } => StepError::fatal(error_chain(&e)),
        e => StepError::retry(error_chain(&e)),
    })?;
    tracing::info!(
        tenant,
        imported = done.imported.len(),
        adopted = done.adopted.len(),
        gaps = done.gaps.len(),
        "reconciled with SdI"
    );
    Ok(())
}

/// Whether the app at `app` serves `tenant`, active under `epoch`.
pub async fn serves_under(
    http: &reqwest::Client,
    app: &str,
    tenant: &str,
    epoch: Option<u64>,
) -> Result<(), StepError> {
    let health: serde_json::Value = http
        .get(format!("{app}/healthz"))
        .send()
        .await
        .map_err(|e| StepError::retry(format!("{app}/healthz: {e}")))?
        .json()
        .await
        .map_err(|e| StepError::retry(format!("{app}/healthz: {e}")))?;
    match health["active"] == true && health["epoch"].as_u64() == epoch {
        true => Ok(()),
        false => Err(StepError::retry(format!("tenant {tenant} does not serve under epoch {epoch:?}: {health}"))),
    }
}

#[async_trait]
impl SiteDriver for LocalFailover {
    async fn fence_source(&self, _ctx: &StepContext) -> SourceFence {
        let apps: Vec<String> = self
            .source
            .tenants()
            .iter()
            .filter_map(|t| self.source.with_tenant(t, |s| s.app.as_ref().map(|a| a.base_url())).flatten())
            .collect();
        if apps.is_empty() {
            return SourceFence::Unreachable;
        }
        for app in apps {
            if self.post(format!("{app}/v1/admin/fence"), serde_json::json!({})).await.is_err() {
                return SourceFence::Unreachable;
            }
        }
        SourceFence::Fenced
    }

    /// The lab's lease agents take the lease themselves.
    async fn acquire_lease(&self, _ctx: &StepContext) {}

    async fn cancel_lease(&self, _ctx: &StepContext) {}

    async fn restore_tenant(&self, _ctx: &StepContext, tenant: &TenantRef) -> Result<Restored, StepError> {
        let spec = self.spec(tenant)?;
        let request = self.pitr_request(&tenant.name);
        if self.target.runs_standby(&tenant.name) {
            match promote_standby(&self.target, &self.repo, &request, self.lost_at()).await {
                Ok(restored) => return Ok(restored),
                Err(e) => tracing::warn!(
                    tenant = %tenant.name,
                    error = %e.message,
                    "the standby could not be promoted: restoring from the repository instead"
                ),
            }
        }
        // A retry starts over: the copy of an earlier attempt goes first.
        self.target.stop_tenant(&tenant.name);
        // NB: a store that does not answer now may later: the failover tries again.
        let prepared = pitr::prepare(&self.repo, &request).await.map_err(|e| match e.may_pass() {
            true => StepError::retry(error_chain(&e)),
            false => StepError::fatal(error_chain(&e)),
        })?;
        let target = self.target.clone();
        let (spec, pgdata) = (spec.clone(), request.pgdata.clone());
        tokio::task::spawn_blocking(move || target.start_database(&spec, Some(&pgdata)))
            .await
            .map_err(|e| StepError::retry(e.to_string()))?
            .map_err(|e| StepError::retry(error_chain(&e)))?;
        verify_recovered(&self.target, &tenant.name, (prepared.snapshot, &prepared.recorded), self.lost_at()).await
    }

    async fn reconcile_tenant(&self, _ctx: &StepContext, tenant: &TenantRef) -> Result<(), StepError> {
        let db = database(&self.target, &tenant.name)?;
        reconcile_with_sdi(&db, &self.target.documents(&tenant.name), &self.sdi_endpoint, &tenant.name).await
    }

    async fn start_tenant(&self, ctx: &StepContext, tenant: &TenantRef) -> Result<(), StepError> {
        let epoch = ctx.epoch.ok_or_else(|| StepError::fatal("no fencing epoch yet: the lease is not taken".into()))?;
        let spec = TenantSpec {
            epoch,
            fenced: false,
            sdi_endpoint: Some(self.sdi_endpoint.clone()),
            ..self.spec(tenant)?.clone()
        };
        let target = self.target.clone();
        tokio::task::spawn_blocking(move || target.start_app(&spec))
            .await
            .map_err(|e| StepError::retry(e.to_string()))?
            .map_err(|e| StepError::retry(error_chain(&e)))
    }

    async fn switch_tenant(&self, _ctx: &StepContext, tenant: &TenantRef) -> Result<(), StepError> {
        let app = self.app_url(&tenant.name)?;
        let channel = serde_json::json!({
            "endpoint": self.sdi_endpoint,
            "certificate_expires": self.certificate_expires.to_string(),
        });
        let response = self.http.put(format!("{app}/v1/channel")).json(&channel).send().await;
        match response {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => return Err(StepError::retry(format!("{app}/v1/channel: HTTP {}", r.status()))),
            Err(e) => return Err(StepError::retry(format!("{app}/v1/channel: {e}"))),
        }
        self.endpoints.lock().unwrap_or_else(|e| e.into_inner()).insert(tenant.name.clone(), app);
        Ok(())
    }

    async fn verify_tenant(&self, ctx: &StepContext, tenant: &TenantRef) -> Result<(), StepError> {
        serves_under(&self.http, &self.app_url(&tenant.name)?, &tenant.name, ctx.epoch).await
    }

    async fn discard_tenant(&self, _ctx: &StepContext, tenant: &TenantRef) -> Result<(), StepError> {
        self.target.stop_tenant(&tenant.name);
        match std::fs::remove_dir_all(self.target.pgdata(&tenant.name)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StepError::retry(format!("removing tenant {}'s restored data: {e}", tenant.name))),
        }
    }
}
