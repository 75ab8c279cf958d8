//! Synchronous standbys between Local sites (spec.standby Synchronous). The
//! operator of the site serving a tenant publishes where its database listens
//! (`status.localDatabase`) and, once a standby streams from it, makes it
//! confirm a commit only once the standby holds it; the operator of the
//! FailoverPlan's target site keeps that standby. A Failover to the target
//! promotes it ([`super::local_recovery`]), so it loses no confirmed commit.

use kube::ResourceExt;
use kube::runtime::events::EventType;

use super::Context;
use super::tenant::{Standby, fenced_by, plan_of, standby_sites};
use crate::api::plan::FailoverPlan;
use crate::api::tenant::{InvoicingTenant, StandbyMode};
use crate::error_chain::error_chain;
use crate::site::local::TenantSpec;
use crate::stack::pg::DbUrl;

/// At the Local site `site` that serves the tenant: what its `Standby`
/// condition says. Once a standby streams from the tenant's database there,
/// the database is made synchronous (said once, in an Event).
pub async fn at_primary(ctx: &Context, tenant: &InvoicingTenant, site: &str, plans: &[&FailoverPlan]) -> Standby {
    if tenant.spec.standby != StandbyMode::Synchronous {
        return Standby::NotHere;
    }
    if site != tenant.spec.primary_site {
        return Standby::Moved { site: site.to_owned() };
    }
    let Some(target) = standby_sites(tenant, plans.iter().copied()).into_iter().next() else {
        return Standby::NoPlan;
    };
    let (namespace, name) = (tenant.namespace().unwrap_or_default(), tenant.name_any());
    let Some(url) = ctx.local.database(site, &namespace, &name) else {
        return Standby::AwaitingStream { site: target };
    };
    match make_synchronous(&url).await {
        Ok(Synchronous::NoStandby) => Standby::AwaitingStream { site: target },
        Ok(Synchronous::Already) => Standby::Streaming { site: target },
        Ok(Synchronous::Now) => {
            let note = format!(
                "a standby at Local site {target} streams from the database: a commit is now confirmed once it \
                 holds it"
            );
            super::publish(ctx, tenant, EventType::Normal, "StandbySynchronous", "Replicate", note).await;
            Standby::Streaming { site: target }
        }
        Err(why) => Standby::Failed {
            site: Some(target),
            message: format!("making the database at Local site {site} synchronous: {why}"),
        },
    }
}

/// What [`make_synchronous`] found.
enum Synchronous {
    /// No standby streams: commits are confirmed without one.
    NoStandby,
    /// A standby streams, and commits waited for it already.
    Already,
    /// A standby streams, and commits wait for it from now on.
    Now,
}

/// NB: pg_basebackup's own WAL stream, while a standby is being copied, is no standby.
async fn make_synchronous(url: &str) -> Result<Synchronous, String> {
    let db = DbUrl::parse(url).map_err(|e| e.to_string())?;
    let client = db.connect().await.map_err(|e| error_chain(&e))?;
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM pg_stat_replication \
                     WHERE state = 'streaming' AND application_name <> 'pg_basebackup'), \
                    current_setting('synchronous_standby_names')",
            &[],
        )
        .await
        .map_err(|e| error_chain(&e))?;
    let (streaming, names): (i64, String) = (row.get(0), row.get(1));
    match (streaming, names.is_empty()) {
        (0, _) => Ok(Synchronous::NoStandby),
        (_, false) => Ok(Synchronous::Already),
        (_, true) => {
            // NB: ALTER SYSTEM refuses to run in a transaction block, which a batch of two would be.
            client
                .batch_execute("ALTER SYSTEM SET synchronous_standby_names = '*'")
                .await
                .map_err(|e| error_chain(&e))?;
            client.batch_execute("SELECT pg_reload_conf()").await.map_err(|e| error_chain(&e))?;
            Ok(Synchronous::Now)
        }
    }
}

/// At this operator's own Local site: starts the tenant's synchronous standby
/// there, streaming from its database at the Local site `serving`, when this
/// site is its FailoverPlan's target, `serving` (its primary) holds the
/// plan's lease, and nothing of the tenant runs here yet. True while a
/// standby is wanted here, so that the tenant is looked at again.
pub async fn at_target(ctx: &Context, tenant: &InvoicingTenant, serving: &str, plans: &[&FailoverPlan]) -> bool {
    let Some(own) = ctx.site.as_deref() else { return false };
    let wanted = tenant.spec.standby == StandbyMode::Synchronous
        && serving == tenant.spec.primary_site
        && standby_sites(tenant, plans.iter().copied()).first().is_some_and(|target| target == own);
    if !wanted {
        return false;
    }
    // NB: once the lease left the primary, a failover promotes or restores here: no copy of a dying primary.
    if fenced_by(plan_of(tenant, plans.iter().copied()), serving).is_some() {
        return false;
    }
    let (namespace, name) = (tenant.namespace().unwrap_or_default(), tenant.name_any());
    let Some(upstream) = tenant.status.as_ref().and_then(|s| s.local_database.clone()) else { return true };
    if ctx.local.database(own, &namespace, &name).is_some() {
        return true;
    }
    let postgres = match super::local_archiving::archiving(ctx, tenant, own).await {
        Ok(archiving) => archiving.map(|a| a.options).unwrap_or_default(),
        Err(why) => {
            let note =
                format!("the synchronous standby at Local site {own} cannot archive its WAL once promoted: {why}");
            super::publish(ctx, tenant, EventType::Warning, "StandbyFailed", "Replicate", note).await;
            return true;
        }
    };
    let spec = TenantSpec {
        name: name.clone(),
        vat: tenant.spec.vat_number.clone(),
        company: tenant.spec.display_name.clone(),
        sdi_endpoint: None,
        sdi_environment: crate::app::SdiEnvironment::Production,
        epoch: 1,
        fenced: true,
        postgres,
    };
    let (local, at, owner, from) = (ctx.local.clone(), own.to_owned(), namespace.clone(), upstream.clone());
    let started = tokio::task::spawn_blocking(move || local.ensure_standby(&at, &owner, &spec, &from)).await;
    let (kind, reason, note) = match started {
        Ok(Ok(false)) => return true,
        Ok(Ok(true)) => (
            EventType::Normal,
            "StandbyStarted",
            format!("a standby at Local site {own} streams from the database at {upstream} (Local site {serving})"),
        ),
        Ok(Err(e)) => (
            EventType::Warning,
            "StandbyFailed",
            format!(
                "starting a standby at Local site {own} of the database at {upstream} (Local site {serving}): {}",
                error_chain(&e)
            ),
        ),
        Err(e) => (EventType::Warning, "StandbyFailed", format!("the standby's start was cancelled: {e}")),
    };
    super::publish(ctx, tenant, kind, reason, "Replicate", note).await;
    true
}
