//! The Restore controller: a Pending Restore
//! runs once. A fresh PostgreSQL is started at the target Site, side by side
//! with the tenant (never over it), the snapshot's dump is restored into it
//! and its invoice documents written out, and the result is compared with
//! what the backup recorded. The copy stays for inspection until the Restore
//! is deleted (finalizer). At Kubernetes sites the copy is made there and a
//! Job restores into it (`restore_job`). Point-in-time restores are not run
//! by the operator yet; the Restore says so.

use std::fmt::Write as _;
use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};

use super::tenant::{self, Placement};
use super::{Context, backup_run, restore_job};
use crate::api::common::Duration as SpecDuration;
use crate::api::condition::{self, Observed};
use crate::api::restore::{Restore, RestorePhase, RestoreStatus};
use crate::api::site::Site;
use crate::api::tenant::InvoicingTenant;
use crate::error_chain::error_chain;
use crate::site::local::TenantSpec;
use crate::stack::restore::TenantRestore;

pub const CONTROLLER: &str = "restore";
/// Held while the restored copy runs at a Local site.
pub const FINALIZER: &str = "fenice.io/local-restore";

pub type Error = super::ObjectError;

/// The name the restored copy runs under at its site: short and unique (a
/// PostgreSQL database name holds 63 bytes).
pub fn copy_name(restore: &Restore) -> String {
    format!("restore-{}", super::short_uid(restore, 12))
}

/// A status with `phase` and `Ready` set, the rest kept.
pub fn with_phase(
    restore: &Restore,
    phase: RestorePhase,
    reason: &str,
    message: String,
    now: Timestamp,
) -> RestoreStatus {
    let old = restore.status.clone().unwrap_or_default();
    let ready = phase == RestorePhase::Succeeded;
    let observed = Observed { type_: condition::types::READY, status: ready, reason, message };
    let conditions = condition::set(&old.conditions, observed, restore.metadata.generation, now);
    let start_time = match phase {
        RestorePhase::Restoring => Some(Time(now)),
        _ => old.start_time.clone(),
    };
    let finished = matches!(phase, RestorePhase::Succeeded | RestorePhase::Failed);
    let completion_time = if finished { Some(Time(now)) } else { old.completion_time.clone() };
    let duration = match (&start_time, finished) {
        (Some(start), true) => {
            // NB: a clock set back during the run would otherwise count backwards.
            let took = now.duration_since(start.0).max(jiff::SignedDuration::ZERO).unsigned_abs();
            Some(SpecDuration::from_std(took))
        }
        _ => old.duration.clone(),
    };
    RestoreStatus {
        phase,
        start_time,
        completion_time,
        duration,
        observed_generation: restore.metadata.generation,
        conditions,
        ..old
    }
}

pub async fn reconcile(restore: Arc<Restore>, ctx: Arc<Context>) -> Result<Action, Error> {
    super::measured(&ctx, CONTROLLER, reconcile_inner(&restore, &ctx)).await
}

async fn reconcile_inner(restore: &Restore, ctx: &Context) -> Result<Action, Error> {
    let namespace = restore.namespace().unwrap_or_else(|| "default".into());
    let api: Api<Restore> = Api::namespaced(ctx.client.clone(), &namespace);
    let fail = |what| super::about(restore, what);
    // NB: a copy at a Local site runs in that site's operator, which alone can stop it or tell it interrupted.
    let elsewhere = || ctx.tenant_elsewhere(&namespace, &restore.spec.tenant, restore.spec.target_site.as_deref());
    if restore.metadata.deletion_timestamp.is_some() {
        if restore.finalizers().iter().any(|f| f == FINALIZER) {
            if elsewhere().await {
                return Ok(Action::await_change());
            }
            ctx.local.stop_everywhere(&namespace, &copy_name(restore));
            super::remove_finalizer(&api, restore, FINALIZER).await.map_err(fail("removing its finalizer"))?;
        }
        if restore.finalizers().iter().any(|f| f == restore_job::FINALIZER) {
            if let Err(why) = restore_job::remove(ctx, restore).await {
                tracing::warn!(restore = restore.name_any(), why, "removing the copy at its site");
                return Ok(Action::requeue(super::RETRY));
            }
            let finalizer = restore_job::FINALIZER;
            super::remove_finalizer(&api, restore, finalizer).await.map_err(fail("removing its finalizer"))?;
        }
        return Ok(Action::await_change());
    }
    let write = |status: RestoreStatus| {
        let api = api.clone();
        let fail = fail("writing its status");
        async move { super::apply_status(&api, restore, &status).await.map_err(fail) }
    };
    let phase = restore.status.as_ref().map_or(RestorePhase::Pending, |s| s.phase);
    match phase {
        RestorePhase::Succeeded | RestorePhase::Failed => return Ok(Action::await_change()),
        RestorePhase::Restoring if restore.status.as_ref().is_some_and(|s| s.job.is_some()) => {
            return restore_job::watch(ctx, restore).await;
        }
        _ if elsewhere().await => return Ok(Action::requeue(super::ELSEWHERE)),
        RestorePhase::Restoring | RestorePhase::Verifying => {
            if !super::still_current(&api, restore).await.map_err(fail("reading it again"))? {
                return Ok(Action::requeue(super::OUTDATED));
            }
            let message = "the operator stopped while this restore ran, so it did not finish; create a new Restore";
            write(with_phase(restore, RestorePhase::Failed, "Interrupted", message.into(), Timestamp::now())).await?;
            return Ok(Action::await_change());
        }
        RestorePhase::Pending => {}
    }

    let (site, tenant) = match where_to(ctx, restore, &namespace).await.map_err(fail("reading its tenant or Site"))? {
        Ok((Target::Local(site), tenant)) => (site, tenant),
        Ok((Target::Kubernetes(site), tenant)) => return restore_job::start(ctx, restore, &tenant, &site).await,
        Err((phase, reason, message)) => {
            let old = restore.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
            if old.is_none_or(|c| c.message != message) {
                let type_ = if phase == RestorePhase::Failed { EventType::Warning } else { EventType::Normal };
                write(with_phase(restore, phase, reason, message.clone(), Timestamp::now())).await?;
                super::publish(ctx, restore, type_, reason, "Restore", message).await;
            }
            return Ok(if phase == RestorePhase::Failed {
                Action::await_change()
            } else {
                Action::requeue(super::RETRY)
            });
        }
    };
    super::add_finalizer(&api, restore, FINALIZER).await.map_err(fail("adding its finalizer"))?;
    let copy = copy_name(restore);
    let message = format!("restoring at Local site {site} as {copy}");
    let mut running = restore.clone();
    running.status = Some(with_phase(restore, RestorePhase::Restoring, "Restoring", message, Timestamp::now()));
    write(running.status.clone().unwrap_or_default()).await?;

    let status = run(ctx, &running, &namespace, &site, &tenant).await;
    let ok = status.phase == RestorePhase::Succeeded;
    let conditions = status.conditions.clone();
    write(status).await?;
    let reason = if ok { "Succeeded" } else { "Failed" };
    super::publish_outcome(ctx, restore, ok, reason, "Restore", &conditions).await;
    Ok(Action::await_change())
}

type NotNow = (RestorePhase, &'static str, String);

/// Where a restore runs.
enum Target {
    /// In the operator, at a Local site.
    Local(String),
    /// As a Job at a Kubernetes site.
    Kubernetes(Arc<Site>),
}

/// The site to restore at and the tenant, or why not (now).
async fn where_to(
    ctx: &Context,
    restore: &Restore,
    namespace: &str,
) -> Result<Result<(Target, InvoicingTenant), NotNow>, kube::Error> {
    let name = &restore.spec.tenant;
    let Some(tenant) = Api::<InvoicingTenant>::namespaced(ctx.client.clone(), namespace).get_opt(name).await? else {
        let message =
            format!("InvoicingTenant {namespace}/{name} does not exist: fix spec.tenant and create a new Restore");
        return Ok(Err((RestorePhase::Failed, "TenantNotFound", message)));
    };
    if restore.spec.point_in_time.is_some() {
        let message = "this operator does not run point-in-time restores yet: restore with \
                       `fenice agent restore --pgdata DIR --target-time …` (docs/tenant-backup.md), \
                       or leave pointInTime out to restore the snapshot"
            .to_owned();
        return Ok(Err((RestorePhase::Failed, "PointInTimeNotBuilt", message)));
    }
    let site_name = restore.spec.target_site.clone().unwrap_or_else(|| tenant::active_site(&tenant));
    let site = ctx.cache.sites.get(&site_name).await;
    Ok(match (tenant::placement(&site_name, site.as_deref()), site) {
        (Placement::Local { site }, _) => Ok((Target::Local(site), tenant)),
        (Placement::Invalid { reason, message }, _) => Err((RestorePhase::Pending, reason, message)),
        (Placement::Kubernetes { .. }, site) => {
            Ok((Target::Kubernetes(site.expect("a Kubernetes placement has its Site")), tenant))
        }
    })
}

/// Where a side-by-side copy goes: its site, the namespace that owns it and its name there.
pub struct Copy<'a> {
    pub site: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
}

/// A copy restored and verified.
pub struct Restored {
    pub outcome: crate::stack::restore::Outcome,
    /// The copy's database URL (no password: the Local driver's servers trust loopback).
    pub url: String,
    /// Objects of the repository found written over and read from their
    /// intact versions.
    pub overwritten: Vec<crate::repo::intact::Overwritten>,
}

/// Why a side-by-side restore did not give a verified copy.
pub enum Failure {
    /// The repository, or the copy's PostgreSQL: nothing was restored.
    NotStarted {
        reason: &'static str,
        message: String,
    },
    /// The repository holds no backup of the tenant.
    NoBackup(String),
    /// Restored, but what the backup recorded differs.
    Mismatch {
        snapshot: String,
        differences: Vec<String>,
        url: String,
    },
    Failed(String),
}

impl Failure {
    /// One line for a condition or a drill's failure list.
    pub fn summary(&self) -> String {
        match self {
            Failure::NotStarted { message, .. } | Failure::NoBackup(message) | Failure::Failed(message) => {
                message.clone()
            }
            Failure::Mismatch { snapshot, differences, .. } => {
                format!(
                    "snapshot {snapshot} restored, but it differs from what was recorded: {}",
                    differences.join("; ")
                )
            }
        }
    }
}

/// Starts a fresh PostgreSQL for `copy` at its Local site and restores
/// `tenant`'s `snapshot` from `repository` into it, verified against what the
/// backup recorded. Shared by Restores and Drills.
pub async fn restore_side_by_side(
    ctx: &Context,
    copy: &Copy<'_>,
    tenant: &InvoicingTenant,
    repository: &str,
    snapshot: &str,
) -> Result<Restored, Failure> {
    let not_started = |reason, message| Failure::NotStarted { reason, message };
    let (_, _, repo) = backup_run::open_repository(ctx, repository, false).await;
    let repo = Arc::new(repo.map_err(|why| not_started("RepositoryUnavailable", why))?);
    let spec = TenantSpec {
        name: copy.name.to_owned(),
        vat: tenant.spec.vat_number.clone(),
        company: tenant.spec.display_name.clone(),
        sdi_endpoint: None,
        sdi_environment: crate::app::SdiEnvironment::Production,
        epoch: 0,
        fenced: true,
        postgres: Default::default(),
    };
    let site = copy.site;
    let (local, site_owned, namespace_owned) = (ctx.local.clone(), site.to_owned(), copy.namespace.to_owned());
    let started =
        tokio::task::spawn_blocking(move || local.ensure_database(&site_owned, &namespace_owned, &spec)).await;
    let start_failed =
        |why: String| not_started("CopyNotStarted", format!("starting PostgreSQL at Local site {site}: {why}"));
    match started {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(start_failed(error_chain(&e))),
        Err(e) => return Err(start_failed(e.to_string())),
    }
    let url =
        ctx.local.database(site, copy.namespace, copy.name).ok_or_else(|| start_failed("it is not running".into()))?;
    let db = crate::stack::pg::DbUrl::parse(&url).map_err(|e| start_failed(format!("the copy's database URL: {e}")))?;
    let request = TenantRestore {
        tenant: tenant.name_any(),
        snapshot: Some(snapshot.to_owned()),
        db,
        documents: ctx.local.site(site).documents(copy.name),
        force: false,
        pg_bin: None,
    };
    match crate::stack::restore::restore(&repo, &request).await {
        Ok(outcome) => Ok(Restored { outcome, url, overwritten: repo.overwritten() }),
        Err(crate::stack::Error::Mismatch { snapshot, differences, .. }) => {
            Err(Failure::Mismatch { snapshot, differences: differences.iter().map(ToString::to_string).collect(), url })
        }
        Err(e @ crate::stack::Error::NoSnapshot { .. }) => Err(Failure::NoBackup(error_chain(&e))),
        Err(e) => Err(Failure::Failed(format!("at Local site {site}: {}", error_chain(&e)))),
    }
}

/// A restore that verified, wherever it ran.
pub struct Done {
    pub snapshot: String,
    /// When the backup was taken (RFC 3339).
    pub time: String,
    pub documents: u64,
    /// Something the SRE must know although the restore verified.
    pub warning: Option<String>,
}

/// The final status of a restore that ran `place` (`at Local site a into
/// postgres://…`): verified, or what differs, or why it failed.
pub fn finished(restore: &Restore, place: &str, result: Result<Done, Failure>) -> RestoreStatus {
    let now = Timestamp::now;
    match result {
        Ok(done) => {
            let mut message = format!(
                "restored snapshot {} of tenant {} (taken {}) {place}, {} documents, every recorded count and \
                 checksum matched; delete this Restore to remove the copy",
                done.snapshot.get(..8).unwrap_or(&done.snapshot),
                restore.spec.tenant,
                done.time,
                done.documents
            );
            if let Some(warning) = &done.warning {
                let _ = write!(message, "; WARNING: {warning}");
            }
            let mut status = with_phase(restore, RestorePhase::Succeeded, "Verified", message, now());
            status.restored_up_to = done.time.parse::<Timestamp>().ok().map(Time);
            status.snapshot_id = Some(done.snapshot);
            status.verified = Some(true);
            status
        }
        Err(Failure::Mismatch { snapshot, differences, .. }) => {
            let (phase, reason) = match restore.spec.verify {
                true => (RestorePhase::Failed, "VerificationFailed"),
                false => (RestorePhase::Succeeded, "RestoredUnverified"),
            };
            let message = format!(
                "restored snapshot {snapshot} {place}, but {} recorded values differ (status.mismatches); the \
                 copy stays for inspection until this Restore is deleted",
                differences.len()
            );
            let mut status = with_phase(restore, phase, reason, message, now());
            status.snapshot_id = Some(snapshot);
            status.verified = Some(false);
            status.mismatches = differences;
            status
        }
        Err(Failure::NotStarted { reason, message }) => {
            with_phase(restore, RestorePhase::Failed, reason, message, now())
        }
        Err(Failure::NoBackup(message)) => with_phase(restore, RestorePhase::Failed, "NoBackup", message, now()),
        Err(Failure::Failed(message)) => with_phase(restore, RestorePhase::Failed, "RestoreFailed", message, now()),
    }
}

/// Restores the copy at a Local site and verifies it; the final status.
async fn run(ctx: &Context, restore: &Restore, namespace: &str, site: &str, tenant: &InvoicingTenant) -> RestoreStatus {
    let name = copy_name(restore);
    let copy = Copy { site, namespace, name: &name };
    let result = restore_side_by_side(ctx, &copy, tenant, &restore.spec.repository, &restore.spec.snapshot).await;
    let url = match &result {
        Ok(restored) => restored.url.clone(),
        Err(Failure::Mismatch { url, .. }) => url.clone(),
        Err(_) => String::new(),
    };
    let done = result.map(|Restored { outcome, overwritten, .. }| Done {
        snapshot: outcome.snapshot.to_string(),
        time: outcome.time,
        documents: outcome.documents,
        warning: overwritten.first().map(|first| {
            format!(
                "{} objects of repository {} were written over at the store and read from their original \
                 versions, e.g. {first}",
                overwritten.len(),
                restore.spec.repository
            )
        }),
    });
    finished(restore, &format!("at Local site {site} into {url}"), done)
}

pub fn error_policy(restore: Arc<Restore>, error: &Error, _ctx: Arc<Context>) -> Action {
    super::retry_after_error(&restore.name_any(), error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::restore::RestoreSpec;

    fn restore() -> Restore {
        let spec: RestoreSpec =
            serde_json::from_value(serde_json::json!({"tenant": "acme", "repository": "r"})).unwrap();
        let mut restore = Restore::new("acme-inspect", spec);
        restore.metadata.uid = Some("5f2b9c4e-1d3a-4b6c-8e7f-0a1b2c3d4e5f".into());
        restore
    }

    #[test]
    fn the_copy_has_a_short_name_of_its_own() {
        assert_eq!(copy_name(&restore()), "restore-5f2b9c4e1d3a");
    }

    #[test]
    fn a_restore_records_its_times_and_duration() {
        let mut r = restore();
        let start = Timestamp::from_second(1_000).unwrap();
        let message = "restoring at Local site azure-italynorth as restore-5f2b9c4e1d3a".to_owned();
        r.status = Some(with_phase(&r, RestorePhase::Restoring, "Restoring", message, start));
        let done = with_phase(
            &r,
            RestorePhase::Succeeded,
            "Verified",
            "at Local site azure-italynorth into x".into(),
            Timestamp::from_second(1_075).unwrap(),
        );
        assert_eq!(done.duration.as_ref().map(|d| d.as_str()), Some("1m15s"));
        assert_eq!(done.start_time, Some(Time(start)));
        assert!(condition::is_true(&done.conditions, "Ready"));
        let failed =
            with_phase(&r, RestorePhase::Failed, "RestoreFailed", "no".into(), Timestamp::from_second(1_001).unwrap());
        assert!(!condition::is_true(&failed.conditions, "Ready"));
        assert_eq!(failed.duration.as_ref().map(|d| d.as_str()), Some("1s"));
        // The host's clock set back 10 s while it ran: no time, rather than 9 s.
        let back =
            with_phase(&r, RestorePhase::Succeeded, "Verified", "into x".into(), Timestamp::from_second(991).unwrap());
        assert_eq!(back.duration.as_ref().map(|d| d.as_str()), Some("0s"));
    }
}
