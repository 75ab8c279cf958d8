//! The InvoicingTenant controller: the tenant's stack at its primary Site, and
//! whether a BackupPolicy protects it. With the Local site driver the stack is
//! started here (PostgreSQL and the app, as processes); at a Kubernetes site
//! its objects are applied to the Site's cluster ([`super::tenant_site`]).
//! Either way under a finalizer that takes the stack down when the tenant is
//! deleted. [`assess`] decides from (spec, Site, policy, what runs);
//! [`reconcile`] does the I/O.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};

use super::Context;
use super::local_fence::Change;
use crate::api::condition::{self, Observed};
use crate::api::plan::{FailoverPlan, Standing};
use crate::api::site::{Driver, Site, SiteRole};
use crate::api::tenant::{InvoicingTenant, InvoicingTenantStatus, StandbyMode};
use crate::site::local::TenantSpec;

/// What a running stack's Ready message puts before its app's address.
const SERVES: &str = "; the app serves ";

/// The address a tenant's app serves at, as its Ready condition says while
/// its stack runs (the lab and an SRE's scripts find the app this way).
pub fn serving_url(tenant: &InvoicingTenant) -> Option<String> {
    let status = tenant.status.as_ref()?;
    let ready = status.conditions.iter().find(|c| c.type_ == condition::types::READY && c.status == "True")?;
    ready.message.rsplit_once(SERVES).map(|(_, url)| url.to_owned())
}

pub const CONTROLLER: &str = "invoicingtenant";
/// Held while the tenant's stack runs at a Local site.
pub const FINALIZER: &str = "fenice.io/local-stack";
/// Held while objects applied for the tenant may be at a Kubernetes site.
pub const SITE_FINALIZER: &str = "fenice.io/site-objects";
pub const PROTECTED: &str = "Protected";
/// Whether what runs at the standby site is what spec.standby asks for.
pub const STANDBY: &str = "Standby";
/// How often a Local stack is looked at again (a process may have died).
const LOCAL_RECHECK: Duration = Duration::from_secs(60);
/// How often a Local primary looks for its synchronous standby's stream
/// until it streams (the standby's site's operator writes nothing here).
const STANDBY_RECHECK: Duration = Duration::from_secs(5);
/// How often a Kubernetes stack is looked at while its pods start.
const STARTING_RECHECK: Duration = Duration::from_secs(20);
/// How often a running Kubernetes stack is applied again, undoing hand edits.
const DRIFT_RECHECK: Duration = Duration::from_secs(3600);

pub type Error = super::ObjectError;

/// Where the tenant's stack is to run, as its primary Site says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Started by this operator, as processes.
    Local { site: String },
    /// Applied to the Site's cluster.
    Kubernetes { site: String },
    /// The Site does not exist, or cannot run stacks.
    Invalid { reason: &'static str, message: String },
}

/// Where a stack runs at the Site `name` (`site`: `None` when not found).
pub fn placement(name: &str, site: Option<&Site>) -> Placement {
    let name = name.to_owned();
    let Some(site) = site else {
        return Placement::Invalid {
            reason: "SiteNotFound",
            message: format!("Site {name} does not exist: create it, or fix spec.primarySite"),
        };
    };
    if site.spec.role == SiteRole::Witness {
        return Placement::Invalid {
            reason: "SiteIsWitness",
            message: format!("Site {name} is a witness and runs no stacks: choose a Primary or Standby site"),
        };
    }
    match site.spec.cluster.as_ref().map(|c| c.driver) {
        Some(Driver::Local) => Placement::Local { site: name },
        Some(Driver::Kubernetes) => Placement::Kubernetes { site: name },
        None => Placement::Invalid {
            reason: "SiteHasNoCluster",
            message: format!("Site {name} has no spec.cluster: say how to reach it (driver Kubernetes or Local)"),
        },
    }
}

/// The sites a warm standby of `tenant` runs at: the target of each
/// FailoverPlan from its primary site that selects it, sorted.
pub fn standby_sites<'a>(tenant: &InvoicingTenant, plans: impl IntoIterator<Item = &'a FailoverPlan>) -> Vec<String> {
    let primary = &tenant.spec.primary_site;
    let mut sites: Vec<String> = plans
        .into_iter()
        .filter(|p| p.spec.source_site == *primary && p.spec.target_site != *primary)
        .filter(|p| crate::drill::Matcher::new(&p.spec.tenants).is_ok_and(|m| m.matches(tenant)))
        .map(|p| p.spec.target_site.clone())
        .collect();
    sites.sort();
    sites.dedup();
    sites
}

/// The FailoverPlan that moves `tenant`: from its primary site, selecting it.
pub fn plan_of<'a>(
    tenant: &InvoicingTenant,
    plans: impl IntoIterator<Item = &'a FailoverPlan>,
) -> Option<&'a FailoverPlan> {
    plans.into_iter().find(|p| {
        p.spec.source_site == tenant.spec.primary_site
            && crate::drill::Matcher::new(&p.spec.tenants).is_ok_and(|m| m.matches(tenant))
    })
}

/// Where the tenant is served: where a failover moved it, else its primary site.
/// The Site the tenant is active at, as its status says: its primary until
/// the tenant controller recorded another.
pub fn active_site(tenant: &InvoicingTenant) -> String {
    let recorded = tenant.status.as_ref().and_then(|s| s.active_site.clone());
    recorded.unwrap_or_else(|| tenant.spec.primary_site.clone())
}

pub fn serving_site(tenant: &InvoicingTenant) -> String {
    let moved = tenant.status.as_ref().and_then(|s| s.serving.as_ref()).map(|s| s.site.clone());
    moved.unwrap_or_else(|| tenant.spec.primary_site.clone())
}

/// Why the tenants of `plan` may not serve at `site` now, if they may not:
/// none while the lease is handed over; where the site's lease agent runs
/// (`status.sites`), only while it says Active; elsewhere only the site
/// holding the plan's lease (its source until a failover took it).
pub fn fenced_by(plan: Option<&FailoverPlan>, site: &str) -> Option<String> {
    let plan = plan?;
    let status = plan.status.clone().unwrap_or_default();
    let holder = status.lease_holder.unwrap_or_else(|| plan.spec.source_site.clone());
    let name = plan.metadata.name.as_deref().unwrap_or_default();
    let standing = status.sites.iter().find(|s| s.site == site).map(|s| s.standing);
    match (status.handover, standing) {
        (Some(to), _) => Some(format!("FailoverPlan {name} is handing its lease from {holder} to {to}")),
        (None, Some(Standing::Active)) => None,
        (None, Some(Standing::Fenced)) => {
            Some(format!("{site}'s lease agent fenced it: it does not hold FailoverPlan {name}'s witness lease"))
        }
        (None, None) if holder != site => Some(format!("FailoverPlan {name}'s lease is held by {holder}")),
        (None, None) => None,
    }
}

/// What happened to the stack in this reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stack {
    Running {
        site: String,
        app: Option<String>,
    },
    /// Applied at a Kubernetes site; these workloads are not ready yet.
    Starting {
        site: String,
        waiting: Vec<String>,
    },
    /// Applied with its app stopped (at a Local site: running, fenced): the
    /// tenant may not serve at this site now.
    Fenced {
        site: String,
        why: String,
    },
    Failed {
        message: String,
    },
    NotAttempted,
}

/// What runs for the tenant at its standby site, after this reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Standby {
    /// Not run by this operator (a stack at a Local site: `fenice lab` runs warm standbys there).
    NotHere,
    Cold,
    /// Warm, but no FailoverPlan from the primary site selects the tenant.
    NoPlan,
    Starting {
        site: String,
        waiting: Vec<String>,
    },
    Replaying {
        site: String,
    },
    /// Synchronous, served at `site` after a failover: its standby was
    /// promoted there, and none is kept until it serves at its primary again.
    Moved {
        site: String,
    },
    /// Synchronous at Local sites: no standby at `site` streams yet, so
    /// commits are confirmed without one.
    AwaitingStream {
        site: String,
    },
    /// Synchronous at Local sites: the standby at `site` streams, and the
    /// database confirms a commit once it holds it.
    Streaming {
        site: String,
    },
    /// `site`: where a standby may still be, to remove later.
    Failed {
        site: Option<String>,
        message: String,
    },
}

/// The `Standby` condition and where the standby is, or `None` when this operator does not say.
fn standby_condition<'a>(tenant: &InvoicingTenant, standby: &'a Standby) -> Option<(Observed<'a>, Option<String>)> {
    let (status, reason, message, site) = match standby {
        Standby::NotHere => return None,
        Standby::Cold => (
            true,
            "Cold",
            "nothing runs at a standby site: a failover restores this tenant from its repositories".into(),
            None,
        ),
        Standby::NoPlan => (
            false,
            "NoStandbySite",
            format!(
                "spec.standby is {:?}, but no FailoverPlan from Site {} selects this tenant: nothing runs at a standby \
                 site",
                tenant.spec.standby, tenant.spec.primary_site
            ),
            None,
        ),
        Standby::Starting { site, waiting } => (
            false,
            "StandbyStarting",
            format!("a warm standby is applied at Kubernetes site {site}; waiting for {}", waiting.join(", ")),
            Some(site.clone()),
        ),
        Standby::Replaying { site } => (
            true,
            "StandbyReplaying",
            format!(
                "a warm standby at Kubernetes site {site} replays the WAL archive; a failover or failback promotes it"
            ),
            Some(site.clone()),
        ),
        Standby::Moved { site } => (
            false,
            "NoStandby",
            format!(
                "served at Local site {site} after a failover, which promoted its synchronous standby: no standby \
                 is kept until it serves at its primary site {} again",
                tenant.spec.primary_site
            ),
            None,
        ),
        Standby::AwaitingStream { site } => (
            false,
            "StandbyStarting",
            format!(
                "waiting for the synchronous standby at Local site {site} to stream: until it does, a commit is \
                 confirmed without it"
            ),
            Some(site.clone()),
        ),
        Standby::Streaming { site } => (
            true,
            "StandbyStreaming",
            format!(
                "a synchronous standby at Local site {site} streams the WAL: a commit is confirmed once it holds it \
                 (while it is away, commits wait); a failover promotes it"
            ),
            Some(site.clone()),
        ),
        Standby::Failed { site, message } => (false, "StandbyFailed", message.clone(), site.clone()),
    };
    Some((Observed { type_: STANDBY, status, reason, message }, site))
}

/// The tenant's status after this reconcile. Fields other controllers own
/// (last backup, last drill) are left out: they write those themselves.
pub fn assess(
    tenant: &InvoicingTenant,
    placement: &Placement,
    (stack, standby): (&Stack, &Standby),
    policy_found: bool,
    now: Timestamp,
) -> InvoicingTenantStatus {
    let old = tenant.status.clone().unwrap_or_default();
    let generation = tenant.metadata.generation;
    let ready = match (placement, stack) {
        (Placement::Invalid { reason, message }, _) => {
            Observed { type_: condition::types::READY, status: false, reason, message: message.clone() }
        }
        (Placement::Local { site } | Placement::Kubernetes { site }, stack) => {
            let at = match placement {
                Placement::Local { .. } => format!("Local site {site}"),
                _ => format!("Kubernetes site {site}"),
            };
            let (status, reason, message) = match stack {
                Stack::Running { app: Some(url), .. } => {
                    (true, "StackRunning", format!("PostgreSQL and the app run at {at}{SERVES}{url}"))
                }
                Stack::Running { app: None, .. } => {
                    (true, "StackRunning", format!("PostgreSQL and the app run at {at}"))
                }
                Stack::Starting { waiting, .. } => (
                    false,
                    "StackStarting",
                    format!("the stack is applied at {at}; waiting for {}", waiting.join(", ")),
                ),
                Stack::Fenced { why, .. } => {
                    let how = match placement {
                        Placement::Local { .. } => "its app issues and sends nothing",
                        _ => "its app stopped",
                    };
                    (false, "Fenced", format!("the stack at {at} is fenced ({how}): {why}"))
                }
                Stack::Failed { message } => (false, "StackFailed", format!("starting the stack at {at}: {message}")),
                Stack::NotAttempted => (false, "StackPending", format!("the stack at {at} is not started yet")),
            };
            Observed { type_: condition::types::READY, status, reason, message }
        }
    };
    let protected = if policy_found {
        Observed {
            type_: PROTECTED,
            status: true,
            reason: "PolicyFound",
            message: format!("BackupPolicy {} protects this tenant", tenant.spec.backup_policy),
        }
    } else {
        Observed {
            type_: PROTECTED,
            status: false,
            reason: "PolicyNotFound",
            message: format!(
                "BackupPolicy {} does not exist: nothing backs this tenant up; create it, or fix spec.backupPolicy",
                tenant.spec.backup_policy
            ),
        }
    };
    let conditions = condition::set(&old.conditions, ready, generation, now);
    let mut conditions = condition::set(&conditions, protected, generation, now);
    let mut standby_site = old.standby_site.clone();
    if let Some((observed, site)) = standby_condition(tenant, standby) {
        conditions = condition::set(&conditions, observed, generation, now);
        standby_site = site;
    }
    let active_site = match stack {
        Stack::Running { site, .. } | Stack::Starting { site, .. } => Some(site.clone()),
        _ => None,
    };
    let serving = tenant.status.as_ref().and_then(|s| s.serving.as_ref());
    InvoicingTenantStatus {
        active_site,
        standby_site,
        epoch: serving.map(|s| s.epoch).or_else(|| active_site_epoch(&old, stack)),
        observed_generation: generation,
        conditions,
        ..InvoicingTenantStatus::default()
    }
}

/// The epoch the tenant's app runs under: the first one when it starts.
fn active_site_epoch(old: &InvoicingTenantStatus, stack: &Stack) -> Option<u64> {
    match stack {
        Stack::Running { .. } | Stack::Starting { .. } => Some(old.epoch.unwrap_or(1)),
        _ => old.epoch,
    }
}

/// Whether `new` says anything the tenant's status does not say yet.
fn changed(old: Option<&InvoicingTenantStatus>, new: &InvoicingTenantStatus) -> bool {
    let Some(old) = old else { return true };
    let mine = InvoicingTenantStatus {
        active_site: old.active_site.clone(),
        standby_site: old.standby_site.clone(),
        local_database: old.local_database.clone(),
        epoch: old.epoch,
        observed_generation: old.observed_generation,
        conditions: old.conditions.clone(),
        ..InvoicingTenantStatus::default()
    };
    &mine != new
}

pub async fn reconcile(tenant: Arc<InvoicingTenant>, ctx: Arc<Context>) -> Result<Action, Error> {
    super::measured(&ctx, CONTROLLER, reconcile_inner(&tenant, &ctx)).await
}

async fn reconcile_inner(tenant: &InvoicingTenant, ctx: &Context) -> Result<Action, Error> {
    let namespace = tenant.namespace().unwrap_or_else(|| "default".into());
    let name = tenant.name_any();
    let fail = |what| super::about(tenant, what);
    let api: Api<InvoicingTenant> = Api::namespaced(ctx.client.clone(), &namespace);
    let holds = |finalizer: &str| tenant.finalizers().iter().any(|f| f == finalizer);
    if tenant.metadata.deletion_timestamp.is_some() {
        ctx.metrics.forget_tenant(&namespace, &name);
        let site = active_site(tenant);
        // A tenant a failover moved has a fenced stack left at its primary site too.
        let primary = Some(tenant.spec.primary_site.clone()).filter(|p| *p != site);
        if holds(FINALIZER) {
            if ctx.local_elsewhere(&site).await {
                // NB: the stack is in that site's operator: it stops it and removes the finalizer.
                if let Some(own) = &ctx.site {
                    ctx.local.stop(own, &namespace, &name);
                }
                return Ok(Action::await_change());
            }
            ctx.local.stop(&site, &namespace, &name);
            super::remove_finalizer(&api, tenant, FINALIZER).await.map_err(fail("removing its finalizer"))?;
            super::publish(ctx, tenant, EventType::Normal, "StackStopped", "Delete", format!("stopped at {site}"))
                .await;
        }
        if holds(SITE_FINALIZER) {
            let removed = match ctx.cache.sites.get(&site).await {
                Some(found) => {
                    let mut removed = remove_standby(ctx, tenant).await;
                    if let Some(primary) = &primary {
                        removed = removed.and(match ctx.cache.sites.get(primary).await {
                            Some(primary) => super::tenant_site::remove(ctx, tenant, &primary).await,
                            None => Err(format!("Site {primary}, the tenant's primary, does not exist")),
                        });
                    }
                    removed.and(super::tenant_site::remove(ctx, tenant, &found).await)
                }
                None => Err(format!(
                    "Site {site} does not exist, so what was applied there cannot be removed: create the Site again, \
                     or delete the objects labelled {}={name} there by hand and then remove the finalizer \
                     ({SITE_FINALIZER})",
                    crate::site::kubernetes::TENANT_LABEL
                )),
            };
            // NB: a stack never applied in full was never active; when its site
            // cannot be reached either, waiting for it would keep the tenant forever.
            let never_active = tenant.status.as_ref().is_none_or(|s| s.active_site.is_none());
            match removed {
                Ok(()) => {}
                Err(message) if never_active => {
                    let note = format!("{message}; the stack never ran there, so the tenant goes anyway");
                    super::publish(ctx, tenant, EventType::Warning, "StackNotRemoved", "Delete", note).await;
                }
                Err(message) => {
                    super::publish(ctx, tenant, EventType::Warning, "StackNotRemoved", "Delete", message).await;
                    return Ok(Action::requeue(super::RETRY));
                }
            }
            // NB: a re-read tenant, since removing the other finalizer changed the list's indexes.
            let current = api.get(&name).await.map_err(fail("reading it again"))?;
            super::remove_finalizer(&api, &current, SITE_FINALIZER).await.map_err(fail("removing its finalizer"))?;
        }
        return Ok(Action::await_change());
    }

    let serving = serving_site(tenant);
    let site = ctx.cache.sites.get(&serving).await;
    let policy_found = ctx.cache.policies.get(&tenant.spec.backup_policy).await.is_some();
    let placement = placement(&serving, site.as_deref());
    let plans = ctx.cache.plans.all().await.unwrap_or_default();
    let plans: Vec<&FailoverPlan> = plans.iter().map(|p| &**p).collect();
    if let Placement::Local { site } = &placement
        && ctx.local_elsewhere(site).await
    {
        // NB: that site's operator runs the stack and writes the status.
        fence_left_behind(ctx, tenant).await;
        return Ok(match super::local_standby::at_target(ctx, tenant, site, &plans).await {
            true => Action::requeue(LOCAL_RECHECK),
            false => Action::await_change(),
        });
    }
    let plan = plan_of(tenant, plans.iter().copied());
    let stack = match (&placement, &site) {
        (Placement::Local { site }, _) => {
            if !holds(FINALIZER) {
                super::add_finalizer(&api, tenant, FINALIZER).await.map_err(fail("adding its finalizer"))?;
            }
            let fenced = fenced_by(plan, &serving);
            match recovered_in_place(ctx, tenant, site).await {
                Some(failed) => failed,
                None => match (start_local(ctx, tenant, &namespace, site, fenced.is_some()).await, fenced) {
                    (Stack::Running { site, .. }, Some(why)) => Stack::Fenced { site, why },
                    (stack, _) => stack,
                },
            }
        }
        (Placement::Kubernetes { .. }, Some(site)) => {
            if !holds(SITE_FINALIZER) {
                super::add_finalizer(&api, tenant, SITE_FINALIZER).await.map_err(fail("adding its finalizer"))?;
            }
            let fenced = fenced_by(plan, &serving);
            // NB: a moved tenant's primary runs its warm standby (below).
            let stack = super::tenant_site::deploy(ctx, tenant, site, fenced.is_some()).await;
            match (stack, fenced) {
                (Stack::Running { site, .. } | Stack::Starting { site, .. }, Some(why)) => Stack::Fenced { site, why },
                (stack, _) => stack,
            }
        }
        _ => Stack::NotAttempted,
    };
    let standby = match (&placement, &site) {
        (Placement::Kubernetes { .. }, Some(site)) => super::tenant_site::standby(ctx, tenant, site).await,
        (Placement::Local { site }, _) if matches!(stack, Stack::Running { .. } | Stack::Fenced { .. }) => {
            super::local_standby::at_primary(ctx, tenant, site, &plans).await
        }
        _ => Standby::NotHere,
    };
    let objectives = &tenant.spec.objectives;
    ctx.metrics.objectives(&namespace, &name, objectives.rpo.as_std(), objectives.rto.as_std());
    let local_database = match &placement {
        Placement::Local { site } => ctx.local.database_address(site, &namespace, &name),
        _ => None,
    };
    let status = InvoicingTenantStatus {
        local_database,
        ..assess(tenant, &placement, (&stack, &standby), policy_found, Timestamp::now())
    };
    if changed(tenant.status.as_ref(), &status) {
        super::apply_status(&api, tenant, &status).await.map_err(fail("writing its status"))?;
    }
    // NB: a missing Site or policy needs no polling: the controller watches
    // both and looks at the tenants naming one when it appears.
    Ok(match (&placement, &stack) {
        (Placement::Local { .. }, Stack::Running { .. } | Stack::Fenced { .. })
            if matches!(standby, Standby::AwaitingStream { .. }) =>
        {
            Action::requeue(STANDBY_RECHECK)
        }
        (Placement::Local { .. }, Stack::Running { .. } | Stack::Fenced { .. }) => Action::requeue(LOCAL_RECHECK),
        (Placement::Local { .. }, _) => Action::requeue(super::RETRY),
        (Placement::Kubernetes { .. }, _) if matches!(standby, Standby::Starting { .. } | Standby::Failed { .. }) => {
            Action::requeue(STARTING_RECHECK)
        }
        (Placement::Kubernetes { .. }, Stack::Running { .. }) => Action::requeue(DRIFT_RECHECK),
        (Placement::Kubernetes { .. }, Stack::Starting { .. }) => Action::requeue(STARTING_RECHECK),
        (Placement::Kubernetes { .. }, _) => Action::requeue(super::RETRY),
        _ => Action::await_change(),
    })
}

/// Removes the tenant's warm standby, if one was applied, and a Cold
/// tenant's Secrets kept at its plan's target.
async fn remove_standby(ctx: &Context, tenant: &InvoicingTenant) -> Result<(), String> {
    let mut sites: Vec<String> = tenant.status.as_ref().and_then(|s| s.standby_site.clone()).into_iter().collect();
    if tenant.spec.standby == StandbyMode::Cold {
        let plans = ctx.cache.plans.all().await.unwrap_or_default();
        sites.extend(standby_sites(tenant, plans.iter().map(|p| &**p)).into_iter().take(1));
    }
    sites.dedup();
    for site in sites {
        match ctx.cache.sites.get(&site).await {
            Some(found) if placement(&site, Some(&found)) == (Placement::Kubernetes { site: site.clone() }) => {
                super::tenant_site::remove(ctx, tenant, &found).await?
            }
            Some(_) => {}
            None => {
                return Err(format!(
                    "Site {site}, where the tenant's standby or its Secrets are, does not exist: delete the objects \
                     labelled {}={} there by hand",
                    crate::site::kubernetes::TENANT_LABEL,
                    tenant.name_any()
                ));
            }
        }
    }
    Ok(())
}

/// Brings back the database of a tenant whose stack at the Local site
/// `site` was lost with the operator that ran it
/// ([`super::local_recovery::in_place`]), and says so in an Event; the stack
/// that failed when it could not be brought back.
async fn recovered_in_place(ctx: &Context, tenant: &InvoicingTenant, site: &str) -> Option<Stack> {
    use super::local_recovery::InPlace;
    let (reason, note) = match super::local_recovery::in_place(ctx, tenant, site).await {
        Ok(InPlace::Nothing) => return None,
        Ok(InPlace::Recovered(restored)) => (
            "StackRecovered",
            format!(
                "its stack at Local site {site} was gone with the operator that ran it: its database was restored \
                 from snapshot {} (and the WAL archived since, where its policy archives it) and reconciled with SdI, \
                 before its app starts again",
                restored.snapshot_id.get(..8).unwrap_or(&restored.snapshot_id)
            ),
        ),
        Ok(InPlace::NoBackup(why)) => (
            "StackNotRecovered",
            format!("its stack at Local site {site} was gone and no backup holds it: it starts empty ({why})"),
        ),
        Err(why) => {
            let message = format!("its stack at Local site {site} was gone and is not brought back yet: {why}");
            super::publish(ctx, tenant, EventType::Warning, "StackNotRecovered", "Recover", message.clone()).await;
            return Some(Stack::Failed { message });
        }
    };
    super::publish(ctx, tenant, EventType::Warning, reason, "Recover", note).await;
    None
}

/// Fences the tenant's app at this operator's own Local site, if one runs
/// there while the tenant is served elsewhere (a failover moved it): whatever
/// the lease says, it must issue and send nothing.
async fn fence_left_behind(ctx: &Context, tenant: &InvoicingTenant) {
    let Some(url) = ctx.site.as_deref().and_then(|own| ctx.local.app_url(own, &tenant.name_any())) else { return };
    match super::local_fence::agree(&url, true, 0).await {
        Ok(Some(_)) => {
            let note = format!("fenced the app left at {url}: the tenant is served at {}", serving_site(tenant));
            super::publish(ctx, tenant, EventType::Warning, "StackFenced", "Fence", note).await;
        }
        Ok(None) => {}
        Err(why) => tracing::warn!(tenant = %tenant.name_any(), %why, "the app left behind could not be fenced"),
    }
}

/// Starts the tenant's stack at the Local site `site` unless it runs, and
/// makes its app `fenced` or active as asked (docs/operator.md,
/// InvoicingTenant); says what runs.
async fn start_local(ctx: &Context, tenant: &InvoicingTenant, namespace: &str, site: &str, fenced: bool) -> Stack {
    // NB: a failover that moved the tenant here names the epoch it runs under.
    let status = tenant.status.as_ref();
    let epoch = status.and_then(|s| s.serving.as_ref().map(|v| v.epoch).or(s.epoch)).unwrap_or(1);
    let channel = tenant.spec.sdi.channels.iter().find(|c| c.site == site);
    // NB: a database that runs keeps the settings it was started with.
    let postgres = match ctx.local.database(site, namespace, &tenant.name_any()) {
        Some(_) => Default::default(),
        None => match super::local_archiving::archiving(ctx, tenant, site).await {
            Ok(archiving) => archiving.map(|a| a.options).unwrap_or_default(),
            Err(message) => {
                let message = format!("its WAL cannot be archived: {message}");
                super::publish(ctx, tenant, EventType::Warning, "StackFailed", "Start", message.clone()).await;
                return Stack::Failed { message };
            }
        },
    };
    let spec = TenantSpec {
        name: tenant.name_any(),
        vat: tenant.spec.vat_number.clone(),
        company: tenant.spec.display_name.clone(),
        sdi_endpoint: channel.map(|c| c.endpoint.clone()),
        sdi_environment: crate::app::SdiEnvironment::Production,
        epoch,
        fenced,
        postgres,
    };
    let local = ctx.local.clone();
    let (site_name, namespace_owned) = (site.to_owned(), namespace.to_owned());
    let started = tokio::task::spawn_blocking(move || local.ensure_running(&site_name, &namespace_owned, &spec)).await;
    match started {
        Ok(Ok(fresh)) => {
            if fresh {
                let note = format!("PostgreSQL and the app started at Local site {site}");
                super::publish(ctx, tenant, EventType::Normal, "StackStarted", "Start", note).await;
            }
            let app = ctx.local.app_url(site, &tenant.name_any());
            let changed = match &app {
                Some(url) => super::local_fence::agree(url, fenced, epoch).await,
                None => Ok(None),
            };
            let (kind, reason, note) = match changed {
                Ok(None) => return Stack::Running { site: site.to_owned(), app },
                Err(message) => return Stack::Failed { message },
                Ok(Some(Change::Fenced)) => (
                    EventType::Warning,
                    "StackFenced",
                    format!(
                        "fenced the app at Local site {site}: it issues and sends nothing while the site may not serve"
                    ),
                ),
                Ok(Some(Change::Activated)) => (
                    EventType::Normal,
                    "StackActivated",
                    format!("activated the app at Local site {site} under epoch {epoch}"),
                ),
            };
            super::publish(ctx, tenant, kind, reason, "Fence", note).await;
            Stack::Running { site: site.to_owned(), app }
        }
        Ok(Err(e)) => {
            let message = crate::error_chain::error_chain(&e);
            super::publish(ctx, tenant, EventType::Warning, "StackFailed", "Start", message.clone()).await;
            Stack::Failed { message }
        }
        Err(e) => Stack::Failed { message: format!("the start was cancelled: {e}") },
    }
}

pub fn error_policy(tenant: Arc<InvoicingTenant>, error: &Error, _ctx: Arc<Context>) -> Action {
    super::retry_after_error(&tenant.name_any(), error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::site::SiteSpec;

    fn tenant(site: &str) -> InvoicingTenant {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/manifests/examples/tenants.yaml")).unwrap();
        let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).unwrap();
        let mut tenant: InvoicingTenant =
            serde_json::from_value(docs.into_iter().find(|d| !d.is_null()).unwrap()).unwrap();
        tenant.spec.primary_site = site.into();
        tenant.metadata.generation = Some(2);
        tenant
    }

    fn site(role: SiteRole, driver: Option<Driver>) -> Site {
        let cluster = driver.map(|d| serde_json::json!({"driver": d}));
        let spec: SiteSpec = serde_json::from_value(serde_json::json!({
            "provider": "Azure", "region": "italynorth", "role": role, "cluster": cluster,
        }))
        .unwrap();
        Site::new("here", spec)
    }

    #[test]
    fn the_primary_site_decides_where_the_stack_runs() {
        let t = tenant("here");
        assert_eq!(
            placement(&t.spec.primary_site, Some(&site(SiteRole::Primary, Some(Driver::Local)))),
            Placement::Local { site: "here".into() }
        );
        assert_eq!(
            placement(&t.spec.primary_site, Some(&site(SiteRole::Standby, Some(Driver::Kubernetes)))),
            Placement::Kubernetes { site: "here".into() }
        );
        let Placement::Invalid { reason, message } = placement(&t.spec.primary_site, None) else { panic!() };
        assert_eq!(reason, "SiteNotFound");
        assert!(message.contains("Site here does not exist"), "{message}");
        let witness = placement(&t.spec.primary_site, Some(&site(SiteRole::Witness, None)));
        assert!(matches!(witness, Placement::Invalid { reason: "SiteIsWitness", .. }), "{witness:?}");
        let bare = placement(&t.spec.primary_site, Some(&site(SiteRole::Primary, None)));
        assert!(matches!(bare, Placement::Invalid { reason: "SiteHasNoCluster", .. }), "{bare:?}");
    }

    #[test]
    fn the_status_names_what_is_missing_and_settles() {
        let mut t = tenant("nowhere");
        let missing = placement(&t.spec.primary_site, None);
        let status = assess(&t, &missing, (&Stack::NotAttempted, &Standby::NotHere), false, Timestamp::UNIX_EPOCH);
        let ready = status.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "SiteNotFound"));
        let protected = status.conditions.iter().find(|c| c.type_ == PROTECTED).unwrap();
        assert!(protected.message.contains("BackupPolicy standard does not exist"), "{protected:?}");
        assert_eq!(status.active_site, None);
        assert!(changed(t.status.as_ref(), &status));
        // The next reconcile computes the same status: nothing to write, no loop.
        t.status = Some(status);
        let again =
            assess(&t, &missing, (&Stack::NotAttempted, &Standby::NotHere), false, Timestamp::from_second(60).unwrap());
        assert!(!changed(t.status.as_ref(), &again), "{again:?}");
    }

    #[test]
    fn a_warm_tenant_says_where_its_standby_replays_and_a_cold_one_that_none_runs() {
        let mut t = tenant("westpole-rome");
        let k8s = Placement::Kubernetes { site: "westpole-rome".into() };
        let running = Stack::Running { site: "westpole-rome".into(), app: None };
        let replaying = Standby::Replaying { site: "azure-italynorth".into() };
        let status = assess(&t, &k8s, (&running, &replaying), true, Timestamp::UNIX_EPOCH);
        assert_eq!(status.standby_site.as_deref(), Some("azure-italynorth"));
        assert!(condition::is_true(&status.conditions, STANDBY));
        t.status = Some(status);
        // A failure keeps the site known, so that what may be there is removed later.
        let failed = Standby::Failed { site: None, message: "no".into() };
        let status = assess(&t, &k8s, (&running, &failed), true, Timestamp::UNIX_EPOCH);
        assert_eq!(status.standby_site.as_deref(), None, "Failed without a site says none is there");
        let cold = assess(&t, &k8s, (&running, &Standby::Cold), true, Timestamp::UNIX_EPOCH);
        assert_eq!(cold.standby_site, None);
        assert!(condition::is_true(&cold.conditions, STANDBY));
        let no_plan = assess(&t, &k8s, (&running, &Standby::NoPlan), true, Timestamp::UNIX_EPOCH);
        let said = no_plan.conditions.iter().find(|c| c.type_ == STANDBY).unwrap();
        assert!(said.message.contains("no FailoverPlan from Site westpole-rome selects this tenant"), "{said:?}");
        // A Local stack: this operator says nothing about a standby.
        let local = assess(
            &t,
            &Placement::Local { site: "x".into() },
            (&running, &Standby::NotHere),
            true,
            Timestamp::UNIX_EPOCH,
        );
        assert_eq!(local.standby_site.as_deref(), Some("azure-italynorth"), "kept as it was");
    }

    #[test]
    fn a_synchronous_tenant_says_whether_its_standby_streams_and_that_none_is_kept_once_moved() {
        let mut t = tenant("westpole");
        t.spec.standby = StandbyMode::Synchronous;
        let local = Placement::Local { site: "westpole".into() };
        let running = Stack::Running { site: "westpole".into(), app: None };
        let said = |standby: &Standby| {
            let status = assess(&t, &local, (&running, standby), true, Timestamp::UNIX_EPOCH);
            let condition = status.conditions.iter().find(|c| c.type_ == STANDBY).cloned().unwrap();
            (status.standby_site, condition.status, condition.reason, condition.message)
        };
        let (site, status, reason, message) = said(&Standby::AwaitingStream { site: "azure".into() });
        assert_eq!((site.as_deref(), status.as_str(), reason.as_str()), (Some("azure"), "False", "StandbyStarting"));
        assert!(message.contains("a commit is confirmed without it"), "{message}");
        let (site, status, reason, message) = said(&Standby::Streaming { site: "azure".into() });
        assert_eq!((site.as_deref(), status.as_str(), reason.as_str()), (Some("azure"), "True", "StandbyStreaming"));
        assert!(message.contains("commits wait"), "{message}");
        let (site, status, reason, message) = said(&Standby::Moved { site: "azure".into() });
        assert_eq!((site, status.as_str(), reason.as_str()), (None, "False", "NoStandby"));
        assert!(message.contains("until it serves at its primary site westpole again"), "{message}");
        let (_, _, _, message) = said(&Standby::NoPlan);
        assert!(message.starts_with("spec.standby is Synchronous, but no FailoverPlan"), "{message}");
    }

    #[test]
    fn a_plan_from_the_tenants_primary_site_that_selects_it_names_its_standby_site() {
        let mut t = tenant("westpole-rome");
        t.metadata.namespace = Some("invoicing".into());
        t.metadata.labels = Some([("fenice.io/plan".to_owned(), "westpole-to-azure".to_owned())].into());
        let plan = |source: &str, target: &str, label: &str| -> FailoverPlan {
            let spec = serde_json::json!({
                "sourceSite": source, "targetSite": target,
                "tenants": {"selector": {"matchLabels": {"fenice.io/plan": label}}, "namespaces": ["invoicing"]},
                "mode": "Manual", "detection": {}, "waves": [{"name": "all", "tiers": ["Gold", "Silver", "Bronze"]}],
            });
            FailoverPlan::new("p", serde_json::from_value(spec).unwrap())
        };
        let plans = [
            plan("westpole-rome", "azure-italynorth", "westpole-to-azure"),
            plan("westpole-rome", "aws-milan", "other"),
            plan("azure-italynorth", "westpole-rome", "westpole-to-azure"),
        ];
        assert_eq!(standby_sites(&t, &plans), ["azure-italynorth"]);
        assert!(standby_sites(&t, &plans[1..]).is_empty());
    }

    #[test]
    fn a_running_local_stack_makes_the_tenant_ready_at_its_site_under_epoch_one() {
        let mut t = tenant("here");
        let local = Placement::Local { site: "here".into() };
        let running = Stack::Running { site: "here".into(), app: Some("http://127.0.0.1:1".into()) };
        let status = assess(&t, &local, (&running, &Standby::NotHere), true, Timestamp::UNIX_EPOCH);
        assert_eq!((status.active_site.as_deref(), status.epoch), (Some("here"), Some(1)));
        assert!(condition::is_true(&status.conditions, "Ready"));
        assert!(condition::is_true(&status.conditions, PROTECTED));
        // Fields other controllers write are kept out of the comparison.
        t.status = Some(InvoicingTenantStatus { last_backup: Some("b".into()), ..status.clone() });
        assert!(!changed(t.status.as_ref(), &status));
        let failed = Stack::Failed { message: "initdb: no space".into() };
        let down = assess(&t, &local, (&failed, &Standby::NotHere), true, Timestamp::UNIX_EPOCH);
        assert!(!condition::is_true(&down.conditions, "Ready"));
        assert_eq!(down.active_site, None);
    }
}
