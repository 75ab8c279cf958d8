//! A tenant's database brought back at a Local site from its BackupPolicy's
//! repositories, tried in the policy's order until one gives a verified copy:
//! where the policy archives WAL, its newest base backup and the archive
//! replayed to its end (`stack::pitr`); otherwise its newest dump. What a
//! Failover to a Local site restores, and what the tenant controller brings
//! back when a tenant that ran at its site has no stack there any more (the
//! operator that ran it died, and its processes with it).

use std::sync::Arc;

use kube::ResourceExt;

use super::local_archiving::{self, Archiving};
use super::{Context, backup_run};
use crate::api::tenant::{InvoicingTenant, SdiChannel};
use crate::error_chain::error_chain;
use crate::failover::machine::{Restored, StepError};
use crate::repo::repository::Repository;
use crate::site::local::TenantSpec;
use crate::site::local_failover::{promote_standby, rpo, verify_recovered};
use crate::stack::pg::DbUrl;
use crate::stack::pitr::{self, PitrRestore};
use crate::stack::restore::TenantRestore;

/// Which tenant comes back where.
pub struct Recovery<'a> {
    pub ctx: &'a Context,
    pub tenant: &'a InvoicingTenant,
    /// The Local site it comes back at.
    pub site: &'a str,
    /// The epoch its database starts under (its app is started later, by the tenant controller).
    pub epoch: u64,
    /// When the data was lost: the RPO is measured up to it (to the end of the restore without it).
    pub lost_at: Option<jiff::Timestamp>,
}

/// Why no repository gave a verified copy.
#[derive(Debug)]
pub struct NotRecovered {
    /// Each repository and what failed there.
    pub why: String,
    /// Every repository answered, and none holds a backup of the tenant.
    pub no_backup: bool,
}

impl Recovery<'_> {
    /// Brings the tenant's database back at the site, in place of anything
    /// an earlier attempt left there; it runs there fenced, without its app.
    pub async fn run(&self) -> Result<Restored, NotRecovered> {
        let name = self.tenant.name_any();
        let policy = &self.tenant.spec.backup_policy;
        let Some(policy) = self.ctx.cache.policies.get(policy).await else {
            let why = format!("BackupPolicy {policy} does not exist: it says which repositories hold the backups");
            return Err(NotRecovered { why, no_backup: false });
        };
        let archiving = local_archiving::archiving(self.ctx, self.tenant, self.site)
            .await
            .map_err(|why| NotRecovered { why, no_backup: false })?;
        let (mut tried, mut none_held) = (Vec::new(), true);
        for repository in &policy.spec.repositories {
            let (_, _, opened) = backup_run::open_repository(self.ctx, repository, false).await;
            let restored = match (opened, &archiving) {
                (Err(why), _) => Err((why, false)),
                (Ok(repo), Some(archiving)) => self.recover(repository, Arc::new(repo), archiving).await,
                (Ok(repo), None) => self.restore_dump(Arc::new(repo)).await,
            };
            match restored {
                Ok(restored) => {
                    tracing::info!(tenant = %name, site = %self.site, %repository,
                        snapshot = %restored.snapshot_id, "restored at a Local site");
                    return Ok(restored);
                }
                Err((why, no_backup)) => {
                    none_held &= no_backup;
                    tried.push(format!("repository {repository}: {why}"));
                }
            }
        }
        let why = format!(
            "tenant {name} was restored at Local site {} from no repository of BackupPolicy {}: {}",
            self.site,
            policy.name_any(),
            tried.join("; ")
        );
        Err(NotRecovered { why, no_backup: none_held && !tried.is_empty() })
    }

    /// The tenant's stack before its app starts: its database alone, fenced.
    fn spec(&self) -> TenantSpec {
        TenantSpec {
            name: self.tenant.name_any(),
            vat: self.tenant.spec.vat_number.clone(),
            company: self.tenant.spec.display_name.clone(),
            sdi_endpoint: None,
            sdi_environment: crate::app::SdiEnvironment::Production,
            epoch: self.epoch,
            fenced: true,
            postgres: Default::default(),
        }
    }

    /// Point-in-time recovery to the end of the archive: the newest base
    /// backup `repo` holds, PostgreSQL started on it replaying the WAL
    /// archived since (`restore_command` reads the repository at its
    /// location), promoted, then checked against what the backup recorded.
    /// A standby running at the site (spec.standby Synchronous) is promoted
    /// instead, and checked the same way. The error says whether the
    /// repository holds no base backup.
    async fn recover(
        &self,
        repository: &str,
        repo: Arc<Repository>,
        archiving: &Archiving,
    ) -> Result<Restored, (String, bool)> {
        let (namespace, name) = (self.tenant.namespace().unwrap_or_default(), self.tenant.name_any());
        let local = self.ctx.local.clone();
        let site = local.site(self.site);
        let location = archiving.locations.iter().find(|(n, _)| n == repository).map(|(_, l)| l.clone());
        let location = location.ok_or_else(|| ("not in the archive's repositories".to_owned(), false))?;
        let request = PitrRestore {
            tenant: name.clone(),
            repository: location,
            target_time: None,
            snapshot: None,
            pgdata: site.pgdata(&name),
            force: true,
            fenice: local.program().to_owned(),
            standby: false,
        };
        if site.runs_standby(&name) {
            match promote_standby(&site, &repo, &request, self.lost_at).await {
                Ok(restored) => return Ok(restored),
                Err(e) => tracing::warn!(tenant = %name, site = %self.site, error = %e.message,
                    "the standby could not be promoted: restoring from the repository instead"),
            }
        }
        // A retry starts over: the copy of an earlier attempt goes first.
        local.stop(self.site, &namespace, &name);
        let prepared = pitr::prepare(&repo, &request).await.map_err(|e| {
            let no_backup = matches!(e, crate::stack::Error::NoBaseBackup { .. });
            (error_chain(&e), no_backup)
        })?;
        let spec = TenantSpec { postgres: archiving.fetching(), ..self.spec() };
        let (at, owner, pgdata) = (self.site.to_owned(), namespace.clone(), request.pgdata.clone());
        let started = tokio::task::spawn_blocking(move || local.ensure_recovering(&at, &owner, &spec, &pgdata)).await;
        let failed = |why: String| (format!("starting PostgreSQL on the restored data: {why}"), false);
        match started {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(failed(error_chain(&e))),
            Err(e) => return Err(failed(e.to_string())),
        }
        let recorded = (prepared.snapshot, &prepared.recorded);
        verify_recovered(&site, &name, recorded, self.lost_at).await.map_err(|e| (e.message, false))
    }

    /// The newest dump `repo` holds, restored into a fresh PostgreSQL and
    /// checked against what the backup recorded. The error says whether the
    /// repository holds no backup of the tenant.
    async fn restore_dump(&self, repo: Arc<Repository>) -> Result<Restored, (String, bool)> {
        let db = self.fresh_database().await.map_err(|why| (why, false))?;
        let name = self.tenant.name_any();
        let request = TenantRestore {
            tenant: name.clone(),
            snapshot: None,
            db: db.clone(),
            documents: self.ctx.local.site(self.site).documents(&name),
            force: true,
            pg_bin: None,
        };
        let outcome = crate::stack::restore::restore(&repo, &request).await.map_err(|e| {
            let no_backup = matches!(e, crate::stack::Error::NoSnapshot { .. });
            (error_chain(&e), no_backup)
        })?;
        let client = db.connect().await.map_err(|e| (error_chain(&e), false))?;
        let last = crate::stack::verify::last_write(&client).await.map_err(|e| (error_chain(&e), false))?;
        Ok(Restored { snapshot_id: outcome.snapshot.to_string(), rpo: rpo(last, self.lost_at) })
    }

    /// Starts an empty PostgreSQL for the tenant, in place of anything an
    /// earlier attempt left there.
    async fn fresh_database(&self) -> Result<DbUrl, String> {
        let (namespace, name) = (self.tenant.namespace().unwrap_or_default(), self.tenant.name_any());
        let local = self.ctx.local.clone();
        local.stop(self.site, &namespace, &name);
        let spec = self.spec();
        let (at, owner) = (self.site.to_owned(), namespace.clone());
        let started = tokio::task::spawn_blocking(move || local.ensure_database(&at, &owner, &spec)).await;
        let why = match started {
            Ok(Ok(_)) => {
                let url = self.ctx.local.database(self.site, &namespace, &name);
                let url = url.ok_or_else(|| format!("tenant {name}'s database does not run at {}", self.site))?;
                return DbUrl::parse(&url).map_err(|e| format!("tenant {name}'s database URL: {e}"));
            }
            Ok(Err(e)) => error_chain(&e),
            Err(e) => e.to_string(),
        };
        Err(format!("starting tenant {name}'s PostgreSQL at Local site {}: {why}", self.site))
    }
}

/// What [`in_place`] did.
#[derive(Debug)]
pub enum InPlace {
    /// The tenant's database runs here, or the tenant never ran: nothing to bring back.
    Nothing,
    /// Brought back from a backup (and reconciled with SdI where it has a channel here).
    Recovered(Restored),
    /// None of its repositories holds a backup: it starts empty.
    NoBackup(String),
}

/// Brings back, at the Local site `site`, the database of a tenant that ran
/// before (it has an epoch, or a backup) but has none here now: the operator
/// that ran it died, and its processes with it. Restored from its
/// repositories and reconciled with its SdI channel at the site before its
/// app starts again, so that numbering goes on after what it issued and
/// nothing is sent twice; an empty database would number from 1 again.
pub async fn in_place(ctx: &Context, tenant: &InvoicingTenant, site: &str) -> Result<InPlace, String> {
    let (namespace, name) = (tenant.namespace().unwrap_or_default(), tenant.name_any());
    let status = tenant.status.clone().unwrap_or_default();
    let ran = status.epoch.is_some() || status.last_backup.is_some();
    if !ran || ctx.local.database(site, &namespace, &name).is_some() {
        return Ok(InPlace::Nothing);
    }
    let epoch = status.serving.as_ref().map(|s| s.epoch).or(status.epoch).unwrap_or(1);
    let recovery = Recovery { ctx, tenant, site, epoch, lost_at: None };
    let restored = match recovery.run().await {
        Ok(restored) => restored,
        Err(e) if e.no_backup => return Ok(InPlace::NoBackup(e.why)),
        Err(e) => return Err(e.why),
    };
    if let Some(channel) = tenant.spec.sdi.channels.iter().find(|c| c.site == site)
        && let Err(e) = reconcile(ctx, tenant, site, channel).await
    {
        // NB: the next look restores again and reconciles then: the app must not start before.
        ctx.local.stop(site, &namespace, &name);
        return Err(format!("restored, but not reconciled with SdI at {}: {}", channel.endpoint, e.message));
    }
    Ok(InPlace::Recovered(restored))
}

/// Imports what SdI at `channel` holds for the tenant into its database at
/// the Local site `site` (restored there), so that numbering goes on after
/// it and nothing is sent twice.
pub async fn reconcile(
    ctx: &Context,
    tenant: &InvoicingTenant,
    site: &str,
    channel: &SdiChannel,
) -> Result<(), StepError> {
    let (namespace, name) = (tenant.namespace().unwrap_or_default(), tenant.name_any());
    let url = ctx
        .local
        .database(site, &namespace, &name)
        .ok_or_else(|| StepError::retry(format!("tenant {name}'s database does not run at Local site {site}")))?;
    let db = DbUrl::parse(&url).map_err(|e| StepError::fatal(format!("tenant {name}'s database URL: {e}")))?;
    let documents = ctx.local.site(site).documents(&name);
    crate::site::local_failover::reconcile_with_sdi(&db, &documents, &channel.endpoint, &name).await
}
