//! A failover's steps when its target Site is Local, carried out by that
//! site's operator ([`super::failover`]). The lease changes hands through the
//! witness and the tenant is served by writing `status.serving`, as at
//! Kubernetes sites ([`KubeFailover`]); in between, each tenant is recovered
//! into a PostgreSQL of its own at the target from the first repository of its
//! BackupPolicy that gives a verified copy (its newest base backup and the WAL
//! archived since, where the policy archives WAL; its newest dump otherwise),
//! and reconciled with the SdI channel configured for the target. The tenant
//! controller then starts its app there under the failover's epoch, sending
//! through that channel.

use std::sync::Arc;

use async_trait::async_trait;
use kube::ResourceExt;

use super::failover_driver::KubeFailover;
use super::local_archiving::{self, Archiving};
use super::{Context, backup_run};
use crate::api::common::TenantRef;
use crate::api::tenant::{InvoicingTenant, SdiChannel};
use crate::app::http::ChannelView;
use crate::error_chain::error_chain;
use crate::failover::executor::{SiteDriver, StepContext};
use crate::failover::machine::{Restored, SourceFence, StepError};
use crate::site::local::TenantSpec;
use crate::site::local_failover::{reconcile_with_sdi, serves_under, verify_recovered};
use crate::stack::pg::DbUrl;
use crate::stack::pitr::{self, PitrRestore};
use crate::stack::restore::TenantRestore;

/// The steps of one failover whose target is a Local site.
pub struct LocalTargetFailover {
    /// The lease's steps, the tenants' lookup and `status.serving`, as at Kubernetes sites.
    pub kube: KubeFailover,
}

impl LocalTargetFailover {
    fn ctx(&self) -> &Context {
        &self.kube.ctx
    }

    /// The tenant's database at the target, once the restore step started it.
    fn database(&self, ctx: &StepContext, tenant: &TenantRef) -> Result<DbUrl, StepError> {
        let url = self.ctx().local.database(&ctx.target, &tenant.namespace, &tenant.name).ok_or_else(|| {
            StepError::retry(format!("tenant {}'s database does not run at Local site {}", tenant.name, ctx.target))
        })?;
        DbUrl::parse(&url).map_err(|e| StepError::fatal(format!("tenant {}'s database URL: {e}", tenant.name)))
    }

    /// The tenant's app at the target, once the tenant controller started it.
    fn app(&self, ctx: &StepContext, tenant: &TenantRef) -> Result<String, StepError> {
        self.ctx().local.app_url(&ctx.target, &tenant.name).ok_or_else(|| {
            StepError::retry(format!("tenant {}'s app does not run at Local site {} yet", tenant.name, ctx.target))
        })
    }

    /// Starts an empty PostgreSQL for the tenant at the target, in place of
    /// anything an earlier attempt left there.
    async fn fresh_database(&self, ctx: &StepContext, tenant: &InvoicingTenant) -> Result<DbUrl, StepError> {
        let (namespace, name) = (tenant.namespace().unwrap_or_default(), tenant.name_any());
        let local = self.ctx().local.clone();
        local.stop(&ctx.target, &namespace, &name);
        let spec = self.spec(ctx, tenant);
        let (site, owner) = (ctx.target.clone(), namespace.clone());
        let started = tokio::task::spawn_blocking(move || local.ensure_database(&site, &owner, &spec)).await;
        let why = match started {
            Ok(Ok(_)) => return self.database(ctx, &TenantRef { namespace, name }),
            Ok(Err(e)) => error_chain(&e),
            Err(e) => e.to_string(),
        };
        Err(StepError::retry(format!("starting tenant {name}'s PostgreSQL at Local site {}: {why}", ctx.target)))
    }
}

impl LocalTargetFailover {
    /// Point-in-time recovery to the end of the archive: the newest base
    /// backup `repo` holds, PostgreSQL started on it at the target replaying
    /// the WAL archived since (`restore_command` reads the repository at
    /// its location), promoted, then checked against what the backup recorded.
    async fn recover(
        &self,
        ctx: &StepContext,
        tenant: &InvoicingTenant,
        (repository, repo): (&str, Arc<crate::repo::repository::Repository>),
        archiving: &Archiving,
    ) -> Result<Restored, String> {
        let (namespace, name) = (tenant.namespace().unwrap_or_default(), tenant.name_any());
        let local = self.ctx().local.clone();
        let site = local.site(&ctx.target);
        let location = archiving.locations.iter().find(|(n, _)| n == repository).map(|(_, l)| l.clone());
        let location = location.ok_or_else(|| "not in the archive's repositories".to_owned())?;
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
        // A retry starts over: the copy of an earlier attempt goes first.
        local.stop(&ctx.target, &namespace, &name);
        let prepared = pitr::prepare(&repo, &request).await.map_err(|e| error_chain(&e))?;
        let spec = TenantSpec { postgres: archiving.fetching(), ..self.spec(ctx, tenant) };
        let (target, owner, pgdata) = (ctx.target.clone(), namespace.clone(), request.pgdata.clone());
        let started =
            tokio::task::spawn_blocking(move || local.ensure_recovering(&target, &owner, &spec, &pgdata)).await;
        match started {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("starting PostgreSQL on the restored data: {}", error_chain(&e))),
            Err(e) => return Err(format!("starting PostgreSQL on the restored data: {e}")),
        }
        let recorded = (prepared.snapshot, &prepared.recorded);
        verify_recovered(&site, &name, recorded, Some(self.kube.declared_loss)).await.map_err(|e| e.message)
    }

    /// The newest dump `repo` holds, restored into a fresh PostgreSQL at the
    /// target and checked against what the backup recorded.
    async fn restore_dump(
        &self,
        ctx: &StepContext,
        tenant: &InvoicingTenant,
        repo: Arc<crate::repo::repository::Repository>,
    ) -> Result<Restored, String> {
        let db = self.fresh_database(ctx, tenant).await.map_err(|e| e.message)?;
        let name = tenant.name_any();
        let request = TenantRestore {
            tenant: name.clone(),
            snapshot: None,
            db: db.clone(),
            documents: self.ctx().local.site(&ctx.target).documents(&name),
            force: true,
            pg_bin: None,
        };
        let outcome = crate::stack::restore::restore(&repo, &request).await.map_err(|e| error_chain(&e))?;
        let client = db.connect().await.map_err(|e| error_chain(&e))?;
        let last = crate::stack::verify::last_write(&client).await.map_err(|e| error_chain(&e))?;
        Ok(Restored { snapshot_id: outcome.snapshot.to_string(), rpo: self.kube.rpo(last) })
    }

    /// The tenant's stack at the target before it serves: its database alone, fenced.
    fn spec(&self, ctx: &StepContext, tenant: &InvoicingTenant) -> TenantSpec {
        TenantSpec {
            name: tenant.name_any(),
            vat: tenant.spec.vat_number.clone(),
            company: tenant.spec.display_name.clone(),
            sdi_endpoint: None,
            epoch: ctx.epoch.unwrap_or(1),
            fenced: true,
            postgres: Default::default(),
        }
    }
}

/// The tenant's SdI channel at `site`.
fn channel_at<'a>(tenant: &'a InvoicingTenant, site: &str) -> Result<&'a SdiChannel, StepError> {
    tenant.spec.sdi.channels.iter().find(|c| c.site == site).ok_or_else(|| {
        StepError::fatal(format!(
            "tenant {} has no SdI channel at {site} (spec.sdi.channels): it could send nothing there; add the \
             channel accredited for that site",
            tenant.name_any()
        ))
    })
}

#[async_trait]
impl SiteDriver for LocalTargetFailover {
    async fn fence_source(&self, ctx: &StepContext) -> SourceFence {
        self.kube.fence_source(ctx).await
    }

    async fn acquire_lease(&self, ctx: &StepContext) {
        self.kube.acquire_lease(ctx).await
    }

    async fn cancel_lease(&self, ctx: &StepContext) {
        self.kube.cancel_lease(ctx).await
    }

    /// Restores the tenant at the target from the first repository of its
    /// BackupPolicy that gives a verified copy, and verifies it.
    async fn restore_tenant(&self, ctx: &StepContext, tenant: &TenantRef) -> Result<Restored, StepError> {
        let found = self.kube.tenant(tenant).await?;
        let policy = &found.spec.backup_policy;
        let Some(policy) = self.ctx().cache.policies.get(policy).await else {
            return Err(StepError::retry(format!(
                "BackupPolicy {policy} of tenant {} does not exist: it says which repositories hold the tenant's \
                 backups",
                tenant.name
            )));
        };
        let archiving = local_archiving::archiving(self.ctx(), &found, &ctx.target)
            .await
            .map_err(|why| StepError::retry(format!("tenant {}: {why}", tenant.name)))?;
        let mut tried = Vec::new();
        for repository in &policy.spec.repositories {
            let (_, _, opened) = backup_run::open_repository(self.ctx(), repository, false).await;
            let restored = match (opened, &archiving) {
                (Err(why), _) => Err(why),
                (Ok(repo), Some(archiving)) => self.recover(ctx, &found, (repository, Arc::new(repo)), archiving).await,
                (Ok(repo), None) => self.restore_dump(ctx, &found, Arc::new(repo)).await,
            };
            match restored {
                Ok(restored) => {
                    tracing::info!(tenant = %tenant.name, %repository, snapshot = %restored.snapshot_id,
                        "restored at the failover's target");
                    return Ok(restored);
                }
                Err(why) => tried.push(format!("repository {repository}: {why}")),
            }
        }
        Err(StepError::retry(format!(
            "tenant {} was restored at Local site {} from no repository of BackupPolicy {}: {}",
            tenant.name,
            ctx.target,
            policy.name_any(),
            tried.join("; ")
        )))
    }

    async fn reconcile_tenant(&self, ctx: &StepContext, tenant: &TenantRef) -> Result<(), StepError> {
        let found = self.kube.tenant(tenant).await?;
        let channel = channel_at(&found, &ctx.target)?;
        let documents = self.ctx().local.site(&ctx.target).documents(&tenant.name);
        reconcile_with_sdi(&self.database(ctx, tenant)?, &documents, &channel.endpoint, &tenant.name).await
    }

    /// `status.serving` names the target: the tenant controller starts the app.
    async fn start_tenant(&self, ctx: &StepContext, tenant: &TenantRef) -> Result<(), StepError> {
        self.kube.start_tenant(ctx, tenant).await
    }

    /// Points the app's SdI channel at the target's, which the app started
    /// with; an app started before with another one is set to it.
    async fn switch_tenant(&self, ctx: &StepContext, tenant: &TenantRef) -> Result<(), StepError> {
        let found = self.kube.tenant(tenant).await?;
        let endpoint = &channel_at(&found, &ctx.target)?.endpoint;
        let app = self.app(ctx, tenant)?;
        let url = format!("{app}/v1/channel");
        let http = super::local_fence::http();
        let failed = |e: reqwest::Error| StepError::retry(format!("{url}: {e}"));
        let now: ChannelView = http.get(&url).send().await.map_err(failed)?.json().await.map_err(failed)?;
        if now.endpoint != *endpoint {
            let channel = serde_json::json!({"endpoint": endpoint, "certificate_expires": now.certificate_expires});
            let answer = http.put(&url).json(&channel).send().await.map_err(failed)?;
            if !answer.status().is_success() {
                return Err(StepError::retry(format!("{url}: HTTP {}", answer.status())));
            }
        }
        self.kube.switch_tenant(ctx, tenant).await
    }

    async fn verify_tenant(&self, ctx: &StepContext, tenant: &TenantRef) -> Result<(), StepError> {
        serves_under(super::local_fence::http(), &self.app(ctx, tenant)?, &tenant.name, ctx.epoch).await
    }

    /// Serves the tenant where it was, and stops its copy at the target.
    async fn discard_tenant(&self, ctx: &StepContext, tenant: &TenantRef) -> Result<(), StepError> {
        self.kube.discard_tenant(ctx, tenant).await?;
        self.ctx().local.stop(&ctx.target, &tenant.namespace, &tenant.name);
        Ok(())
    }
}
