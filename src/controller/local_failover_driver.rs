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

use async_trait::async_trait;
use kube::ResourceExt;

use super::Context;
use super::failover_driver::KubeFailover;
use super::local_recovery::{self, Recovery};
use crate::api::common::TenantRef;
use crate::api::tenant::{InvoicingTenant, SdiChannel};
use crate::app::http::ChannelView;
use crate::failover::executor::{SiteDriver, StepContext};
use crate::failover::machine::{Restored, SourceFence, StepError};
use crate::site::local_failover::serves_under;

/// The steps of one failover whose target is a Local site.
pub struct LocalTargetFailover {
    /// The lease's steps, the tenants' lookup and `status.serving`, as at Kubernetes sites.
    pub kube: KubeFailover,
}

impl LocalTargetFailover {
    fn ctx(&self) -> &Context {
        &self.kube.ctx
    }

    /// The tenant's app at the target, once the tenant controller started it.
    fn app(&self, ctx: &StepContext, tenant: &TenantRef) -> Result<String, StepError> {
        self.ctx().local.app_url(&ctx.target, &tenant.name).ok_or_else(|| {
            StepError::retry(format!("tenant {}'s app does not run at Local site {} yet", tenant.name, ctx.target))
        })
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
        let recovery = Recovery {
            ctx: self.ctx(),
            tenant: &found,
            site: &ctx.target,
            epoch: ctx.epoch.unwrap_or(1),
            lost_at: Some(self.kube.declared_loss),
        };
        recovery.run().await.map_err(|e| StepError::retry(e.why))
    }

    async fn reconcile_tenant(&self, ctx: &StepContext, tenant: &TenantRef) -> Result<(), StepError> {
        let found = self.kube.tenant(tenant).await?;
        local_recovery::reconcile(self.ctx(), &found, &ctx.target, channel_at(&found, &ctx.target)?).await
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
