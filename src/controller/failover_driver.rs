//! A failover's steps at Kubernetes sites, carried out by the operator of the
//! target site ([`super::failover`]): the lease changes hands through the
//! witness, each tenant's warm standby is promoted and verified by a Job at
//! the target, SdI is reconciled by another Job, and the tenant is served
//! there by writing `status.serving`, which the tenant controller carries out
//! (the whole stack on the standby's StatefulSet, fenced at the source).
//!
//! A failback is the same steps the other way: the tenant controller runs a
//! fresh warm standby at a moved tenant's primary (the old database set
//! aside), which the failback promotes.
//!
//! A Cold tenant gets its standby made at the target by the restore step (the
//! newest base backup, then the archive), then promoted like a warm one; once
//! moved, its primary runs a warm standby like a Warm tenant's, which a
//! failback promotes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};

use super::Context;
use super::lease_agent::Handle;
use super::restore_job::left_by;
use crate::api::common::TenantRef;
use crate::api::plan::FailoverPlan;
use crate::api::site::Site;
use crate::api::tenant::{InvoicingTenant, StandbyMode};
use crate::error_chain::error_chain;
use crate::failover::convert;
use crate::failover::executor::{SiteDriver, StepContext};
use crate::failover::lease::{LeaseView, Takeover};
use crate::failover::machine::{Restored, SourceFence, StepError, Trigger};
use crate::failover::witness::{HandOverRequest, LeaseCommand};
use crate::site::cluster::{self, SiteCluster};
use crate::site::kubernetes::{self, FAILOVER_CONTAINER, FailoverJob};
use crate::stack::restore_report::Report;

/// The field manager of `status.serving`.
pub const MANAGER: &str = "fenice-failover";
/// How long a step's Job may take.
const JOB_WITHIN: Duration = Duration::from_secs(30 * 60);
/// How long a started tenant may take to serve.
const SERVE_WITHIN: Duration = Duration::from_secs(10 * 60);
/// How often a Job or a tenant is looked at while waiting.
const LOOK_EVERY: Duration = Duration::from_secs(2);

/// The steps of one failover at the target site.
pub struct KubeFailover {
    pub ctx: Arc<Context>,
    pub plan: Arc<FailoverPlan>,
    /// The target site's lease agent of the plan.
    pub agent: Handle,
    /// When the source was declared lost: RPO is measured against it.
    pub declared_loss: Timestamp,
}

impl KubeFailover {
    /// The lease's holder and epoch as the agent last saw them.
    fn lease(&self) -> Option<(String, u64)> {
        match &self.agent.status.borrow().view {
            LeaseView::Held { holder, epoch, .. } => Some((holder.clone(), *epoch)),
            _ => None,
        }
    }

    /// What the tenant lost: from its last write the restore holds to the declared loss.
    fn rpo(&self, last_write: Option<Timestamp>) -> Duration {
        crate::site::local_failover::rpo(last_write, Some(self.declared_loss))
    }

    pub(super) async fn tenant(&self, tenant: &TenantRef) -> Result<Arc<InvoicingTenant>, StepError> {
        // NB: looked up, not searched: a failover asks once per step of every tenant.
        self.ctx.cache.tenants.get_in(&tenant.namespace, &tenant.name).await.ok_or_else(|| {
            StepError::fatal(format!("InvoicingTenant {}/{} does not exist", tenant.namespace, tenant.name))
        })
    }

    async fn target(&self, ctx: &StepContext) -> Result<(Arc<Site>, SiteCluster), StepError> {
        let site = self
            .ctx
            .cache
            .sites
            .get(&ctx.target)
            .await
            .ok_or_else(|| StepError::retry(format!("Site {} does not exist", ctx.target)))?;
        let cluster = self
            .ctx
            .site_clients
            .cluster(&self.ctx.client, &self.ctx.namespace, &site)
            .await
            .map_err(|e| StepError::retry(error_chain(&e)))?;
        Ok((site, cluster))
    }

    /// Runs the tenant's Job of `job` at the target (or finds it run) and
    /// returns what it reported.
    async fn run_job(
        &self,
        ctx: &StepContext,
        tenant: &InvoicingTenant,
        job: FailoverJob,
    ) -> Result<Report, StepError> {
        let (site, cluster) = self.target(ctx).await?;
        let namespace = tenant.namespace().unwrap_or_default();
        let epoch = ctx.epoch.unwrap_or_default();
        let name = kubernetes::failover_job_name(&tenant.name_any(), epoch, &job);
        let place = format!("Job {namespace}/{name} at Kubernetes site {}", ctx.target);
        // NB: a Job that ended before (a step retried after a restart) is read, not run again.
        let ended = left_by(&cluster, &namespace, &name, FAILOVER_CONTAINER)
            .await
            .map_err(|e| StepError::retry(format!("{place}: {}", error_chain(&e))))?;
        if !ended.ended {
            let rendered = kubernetes::failover_job(tenant, &site, &self.ctx.images, epoch, &job)
                .map_err(|e| StepError::fatal(e.to_string()))?;
            cluster::apply_each(&cluster, &namespace, super::FIELD_MANAGER, &[rendered])
                .await
                .map_err(|e| StepError::retry(format!("{place}: {}", error_chain(&e))))?;
        }
        let deadline = Instant::now() + JOB_WITHIN;
        loop {
            let ended = left_by(&cluster, &namespace, &name, FAILOVER_CONTAINER)
                .await
                .map_err(|e| StepError::retry(format!("{place}: {}", error_chain(&e))))?;
            if ended.ended {
                let report = ended.report.unwrap_or_else(|| Report { tenant: tenant.name_any(), ..Report::default() });
                return match &report.error {
                    Some(why) => {
                        // NB: the next attempt runs the Job anew.
                        let _ = cluster::delete_each(&cluster, &namespace, &[("batch/v1", "Job", name.clone())]).await;
                        Err(StepError::retry(format!("{place}: {why}")))
                    }
                    None => Ok(report),
                };
            }
            if Instant::now() >= deadline {
                return Err(StepError::retry(format!(
                    "{place} did not end within {JOB_WITHIN:?}: see `kubectl -n {namespace} describe job {name}` there"
                )));
            }
            tokio::time::sleep(LOOK_EVERY).await;
        }
    }

    /// Writes (or, with `None`, removes) where the tenant is served.
    pub(super) async fn serve(
        &self,
        tenant: &InvoicingTenant,
        serving: Option<serde_json::Value>,
    ) -> Result<(), StepError> {
        let api: Api<InvoicingTenant> =
            Api::namespaced(self.ctx.client.clone(), &tenant.namespace().unwrap_or_default());
        let status = match serving {
            Some(serving) => serde_json::json!({"serving": serving}),
            None => serde_json::json!({}),
        };
        let patch =
            serde_json::json!({"apiVersion": "fenice.io/v1alpha1", "kind": "InvoicingTenant", "status": status});
        api.patch_status(&tenant.name_any(), &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch))
            .await
            .map(|_| ())
            .map_err(|e| {
                StepError::retry(format!(
                    "InvoicingTenant {}: writing status.serving: {}",
                    tenant.name_any(),
                    error_chain(&e)
                ))
            })
    }

    /// The tenant's workload `<tenant>-<suffix>` of kind `K` at the target.
    async fn workload<K>(
        &self,
        ctx: &StepContext,
        tenant: &InvoicingTenant,
        suffix: &str,
    ) -> Result<Option<K>, StepError>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let (_, cluster) = self.target(ctx).await?;
        let api: Api<K> = Api::namespaced(cluster.client.clone(), &tenant.namespace().unwrap_or_default());
        // NB: listed by the tenant's label: the site Role lets the operator list, not get.
        let label = format!("{}={}", kubernetes::TENANT_LABEL, tenant.name_any());
        let listed = api
            .list(&kube::api::ListParams::default().labels(&label))
            .await
            .map_err(|e| StepError::retry(error_chain(&e)))?;
        let name = format!("{}-{suffix}", tenant.name_any());
        Ok(listed.items.into_iter().find(|d| d.name_any() == name))
    }

    /// A Cold tenant's database at the target, made now: its warm standby
    /// (the newest base backup, then the archive replayed), applied as the
    /// tenant controller would, with the Secrets it keeps there; waits until
    /// it replays, for the promote Job. The restore of a base backup is why a
    /// Cold tenant's RTO is longer.
    async fn make_standby(&self, ctx: &StepContext, tenant: &InvoicingTenant) -> Result<(), StepError> {
        let (site, cluster) = self.target(ctx).await?;
        let namespace = tenant.namespace().unwrap_or_default();
        let secret = kubernetes::database_secret_name(&tenant.name_any());
        let kept = cluster::secret_value(&cluster, &namespace, &secret, "password")
            .await
            .map_err(|e| StepError::retry(error_chain(&e)))?;
        if kept.is_none() {
            return Err(StepError::fatal(format!(
                "Secret {namespace}/{secret} is not at {}: the operator keeps a Cold tenant's Secrets at its plan's \
                 target while the primary runs (see the tenant's Standby condition); without the password the \
                 restored database cannot be served there",
                ctx.target
            )));
        }
        let objects = super::tenant_site::standby_objects(&self.ctx, tenant, &site).await.map_err(StepError::retry)?;
        cluster::apply_each(&cluster, &namespace, cluster::FIELD_MANAGER, &objects)
            .await
            .map_err(|e| StepError::retry(error_chain(&e)))?;
        let deadline = Instant::now() + JOB_WITHIN;
        loop {
            let set: Option<StatefulSet> = self.workload(ctx, tenant, "db").await?;
            let ready = set.and_then(|s| s.status).and_then(|s| s.ready_replicas).unwrap_or(0);
            if ready > 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(StepError::retry(format!(
                    "tenant {}'s database made at {} from its repositories is not ready within {JOB_WITHIN:?}: see \
                     its pod {}-db-0 there (the prepare init container restores the newest base backup)",
                    tenant.name_any(),
                    ctx.target,
                    tenant.name_any()
                )));
            }
            tokio::time::sleep(LOOK_EVERY).await;
        }
    }
}

#[async_trait]
impl SiteDriver for KubeFailover {
    /// Asks the holder, through the witness, to hand the lease to the target,
    /// and waits up to a lease's duration for it to do so.
    async fn fence_source(&self, ctx: &StepContext) -> SourceFence {
        let Some((holder, epoch)) = self.lease() else { return SourceFence::Unreachable };
        if holder == ctx.target {
            return SourceFence::Fenced;
        }
        let request = HandOverRequest { to: ctx.target.clone(), failover: ctx.failover.clone() };
        if let Err(e) = self.agent.witness.request_handover(epoch, &request).await {
            tracing::warn!(failover = %ctx.failover, error = %error_chain(&e), "the hand-over could not be asked");
            return SourceFence::Unreachable;
        }
        let deadline = Instant::now() + self.agent.timing.lease_duration;
        while Instant::now() < deadline {
            if self.lease().is_some_and(|(holder, _)| holder == ctx.target) {
                return SourceFence::Fenced;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        SourceFence::Unreachable
    }

    async fn acquire_lease(&self, _ctx: &StepContext) {
        self.agent.command(LeaseCommand::SetTakeover(Takeover::WhenExpired)).await;
    }

    async fn cancel_lease(&self, ctx: &StepContext) {
        let takeover = convert::takeover(self.plan.spec.mode, &ctx.target, &self.plan.spec.target_site);
        self.agent.command(LeaseCommand::SetTakeover(takeover)).await;
    }

    /// Promotes the tenant's warm standby at the target and verifies it.
    async fn restore_tenant(&self, ctx: &StepContext, tenant: &TenantRef) -> Result<Restored, StepError> {
        let found = self.tenant(tenant).await?;
        let status = found.status.clone().unwrap_or_default();
        let standby = status.standby_site.as_deref();
        if standby == Some(ctx.target.as_str()) {
            // NB: a failback's standby is made afresh after the failover: it must have started replaying.
            let replaying = status.conditions.iter().find(|c| c.type_ == super::tenant::STANDBY);
            if !replaying.is_some_and(|c| c.status == "True" && c.reason == "StandbyReplaying") {
                let why = replaying.map_or_else(|| "no Standby condition".to_owned(), |c| c.message.clone());
                return Err(StepError::retry(format!(
                    "tenant {}'s warm standby at {} is not replaying yet: {why}",
                    tenant.name, ctx.target
                )));
            }
        } else if found.spec.standby == StandbyMode::Cold && ctx.trigger != Trigger::Failback {
            self.make_standby(ctx, &found).await?;
        } else {
            return Err(StepError::fatal(format!(
                "tenant {}/{} has no warm standby at {} (status.standbySite {standby:?}): a failover at Kubernetes \
                 sites promotes one (a Cold tenant gets one made from its repositories; a failback promotes the one \
                 its primary runs once it moved)",
                tenant.namespace, tenant.name, ctx.target
            )));
        }
        // The documents volume the app will have there: the Job writes the documents into it.
        let (site, cluster) = self.target(ctx).await?;
        let stack = kubernetes::render(&found, &site, &self.ctx.images).map_err(|e| StepError::fatal(e.to_string()))?;
        let documents = format!("{}-documents", tenant.name);
        let volume: Vec<_> = stack
            .into_iter()
            .filter(|o| o["kind"] == "PersistentVolumeClaim" && o["metadata"]["name"] == documents.as_str())
            .collect();
        cluster::apply_each(&cluster, &tenant.namespace, super::FIELD_MANAGER, &volume)
            .await
            .map_err(|e| StepError::retry(error_chain(&e)))?;
        let report = self.run_job(ctx, &found, FailoverJob::Promote).await?;
        if !report.verified {
            let mut differences = report.mismatches.join("; ");
            if let Some(total) = report.mismatch_count {
                differences.push_str(&format!(" (of {total})"));
            }
            return Err(StepError::fatal(format!(
                "tenant {} promoted at {} does not verify: {differences}",
                tenant.name, ctx.target
            )));
        }
        let last_write = report.last_write.as_deref().and_then(|t| t.parse::<Timestamp>().ok());
        Ok(Restored { snapshot_id: report.snapshot.unwrap_or_default(), rpo: self.rpo(last_write) })
    }

    async fn reconcile_tenant(&self, ctx: &StepContext, tenant: &TenantRef) -> Result<(), StepError> {
        let found = self.tenant(tenant).await?;
        self.run_job(ctx, &found, FailoverJob::ReconcileSdi).await.map(|_| ())
    }

    /// Serves the tenant at the target under the failover's epoch, and waits
    /// until its stack runs there.
    async fn start_tenant(&self, ctx: &StepContext, tenant: &TenantRef) -> Result<(), StepError> {
        let found = self.tenant(tenant).await?;
        let epoch = ctx.epoch.ok_or_else(|| StepError::fatal("no epoch: the lease is not taken".into()))?;
        let serving = serde_json::json!({"site": ctx.target, "epoch": epoch, "failover": ctx.failover});
        self.serve(&found, Some(serving)).await?;
        let deadline = Instant::now() + SERVE_WITHIN;
        loop {
            let now = self.tenant(tenant).await?;
            let status = now.status.clone().unwrap_or_default();
            let ready = status.conditions.iter().find(|c| c.type_ == "Ready");
            if status.active_site.as_deref() == Some(ctx.target.as_str()) && ready.is_some_and(|c| c.status == "True") {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let why =
                    ready.map_or_else(|| "no Ready condition".to_owned(), |c| format!("{}: {}", c.reason, c.message));
                return Err(StepError::retry(format!(
                    "tenant {} does not serve at {} yet: {why}",
                    tenant.name, ctx.target
                )));
            }
            tokio::time::sleep(LOOK_EVERY).await;
        }
    }

    /// The tenant's endpoint is rendered with its stack at the serving site
    /// (DNS record, Ingress or HTTPRoute): the switch is that it is not fenced there.
    async fn switch_tenant(&self, ctx: &StepContext, tenant: &TenantRef) -> Result<(), StepError> {
        let found = self.tenant(tenant).await?;
        let status = found.status.clone().unwrap_or_default();
        let fenced = status.conditions.iter().any(|c| c.type_ == "Ready" && c.reason == "Fenced");
        match status.active_site.as_deref() == Some(ctx.target.as_str()) && !fenced {
            true => Ok(()),
            false => Err(StepError::retry(format!(
                "tenant {}'s endpoint is not served from {} yet",
                tenant.name, ctx.target
            ))),
        }
    }

    async fn verify_tenant(&self, ctx: &StepContext, tenant: &TenantRef) -> Result<(), StepError> {
        let found = self.tenant(tenant).await?;
        let app: Option<Deployment> = self.workload(ctx, &found, "app").await?;
        let ready = app.and_then(|d| d.status).and_then(|s| s.ready_replicas).unwrap_or(0);
        let epoch = found.status.as_ref().and_then(|s| s.epoch);
        match (ready > 0, epoch == ctx.epoch) {
            (true, true) => Ok(()),
            (false, _) => {
                Err(StepError::retry(format!("tenant {}'s app at {} has no ready replica", tenant.name, ctx.target)))
            }
            (true, false) => Err(StepError::retry(format!(
                "tenant {} runs under epoch {epoch:?}, not the failover's {:?}",
                tenant.name, ctx.epoch
            ))),
        }
    }

    /// Serves the tenant where it was before this failover: its primary, or
    /// for a failback the site it left (under this epoch: the lease stays
    /// where it is, and going back is a failover again).
    async fn discard_tenant(&self, ctx: &StepContext, tenant: &TenantRef) -> Result<(), StepError> {
        let found = self.tenant(tenant).await?;
        match ctx.trigger {
            Trigger::Failback => {
                let epoch = ctx.epoch.or(found.status.as_ref().and_then(|s| s.epoch)).unwrap_or(1);
                let serving = serde_json::json!({"site": ctx.source, "epoch": epoch, "failover": ctx.failover});
                self.serve(&found, Some(serving)).await
            }
            _ => self.serve(&found, None).await,
        }
    }
}
