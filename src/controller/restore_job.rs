//! Restores at Kubernetes sites: a copy of the tenant is made beside its
//! stack ([`restore_copy`]: its own PostgreSQL, documents volume and Secret),
//! and once its PostgreSQL is ready a Job restores the snapshot into it and
//! verifies it. The Job's report comes back in its pod's termination message
//! (the same words `fenice agent restore` prints, never a secret). The copy
//! is named in `status.job`, so a restarted operator goes on watching it; it
//! stays for inspection until the Restore is deleted, which deletes it.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use serde_json::Value;

use super::Context;
use super::backup_job::{JobOutcome, Looked, job_ref, log_hint, look, outcome};
use super::restore::{Done, Error, Failure, copy_name, finished, with_phase};
use super::tenant_site::{password, read_env};
use crate::api::restore::{Restore, RestorePhase, RestoreStatus};
use crate::api::site::Site;
use crate::api::tenant::InvoicingTenant;
use crate::error_chain::error_chain;
use crate::site::agent_env::Reach;
use crate::site::cluster::{self, SiteCluster};
use crate::site::restore_copy;
use crate::stack::restore_report::Report;

/// Held while a copy exists at a Kubernetes site.
pub const FINALIZER: &str = "fenice.io/site-restore";
/// The field manager of copies and their Jobs: neither the site driver's
/// (which would take them for a tenant's orphans) nor the backups'.
const FIELD_MANAGER: &str = "fenice-restore";
/// How often a copy starting or a Job running is looked at.
const WATCH: Duration = Duration::from_secs(10);
/// How long the copy's PostgreSQL may take to be ready (a volume to provision, an image to pull).
pub const START_WITHIN: SignedDuration = SignedDuration::from_mins(15);
/// The Ready reason while the Job runs: a Job gone then was not just slow to be made.
const JOB_RUNNING: &str = "JobRunning";

async fn write(ctx: &Context, restore: &Restore, status: RestoreStatus) -> Result<(), Error> {
    let api: Api<Restore> = Api::namespaced(ctx.client.clone(), &restore.namespace().unwrap_or_default());
    super::apply_status(&api, restore, &status).await.map_err(super::about(restore, "writing its status"))
}

/// Ends the Restore: the final status, and an Event saying how it went.
async fn end(ctx: &Context, restore: &Restore, status: RestoreStatus) -> Result<Action, Error> {
    let ok = status.phase == RestorePhase::Succeeded;
    let conditions = status.conditions.clone();
    write(ctx, restore, status).await?;
    super::publish_outcome(ctx, restore, ok, if ok { "Succeeded" } else { "Failed" }, "Restore", &conditions).await;
    Ok(Action::await_change())
}

async fn fail(ctx: &Context, restore: &Restore, reason: &'static str, message: String) -> Result<Action, Error> {
    end(ctx, restore, with_phase(restore, RestorePhase::Failed, reason, message, Timestamp::now())).await
}

/// Where the copy goes: the Restore's target namespace, or the tenant's.
fn namespace_of(restore: &Restore, tenant: &InvoicingTenant) -> String {
    restore.spec.target_namespace.clone().unwrap_or_else(|| tenant.namespace().unwrap_or_default())
}

/// Makes the copy at `site`; its Job follows once the copy's PostgreSQL is ready.
pub async fn start(ctx: &Context, restore: &Restore, tenant: &InvoicingTenant, site: &Site) -> Result<Action, Error> {
    let api: Api<Restore> = Api::namespaced(ctx.client.clone(), &restore.namespace().unwrap_or_default());
    super::add_finalizer(&api, restore, FINALIZER).await.map_err(super::about(restore, "adding its finalizer"))?;
    let copy = copy_name(restore);
    let owner = format!("Restore {}/{}", restore.namespace().unwrap_or_default(), restore.name_any());
    let namespace = namespace_of(restore, tenant);
    let place = Place { site, namespace: &namespace, copy: &copy };
    let cluster = match make_copy(ctx, &owner, tenant, &place, &restore.spec.repository).await {
        Ok(cluster) => cluster,
        Err((reason, message)) => return fail(ctx, restore, reason, message).await,
    };
    let message =
        format!("starting the copy's PostgreSQL (StatefulSet {namespace}/{copy}) at Kubernetes site {}", cluster.site);
    let mut status = with_phase(restore, RestorePhase::Restoring, "CopyStarting", message, Timestamp::now());
    status.job = Some(format!("{}/{namespace}/{copy}", cluster.site));
    write(ctx, restore, status).await?;
    Ok(Action::requeue(WATCH))
}

/// Where a copy goes: a Kubernetes site, a namespace there, its name.
pub struct Place<'a> {
    pub site: &'a Site,
    pub namespace: &'a str,
    pub copy: &'a str,
}

/// Makes the copy of `tenant` at `place` (for `owner`, named in errors),
/// to be restored from `repository`: the reason and message of what failed.
pub async fn make_copy(
    ctx: &Context,
    owner: &str,
    tenant: &InvoicingTenant,
    place: &Place<'_>,
    repository: &str,
) -> Result<SiteCluster, (&'static str, String)> {
    let env =
        read_env(ctx, owner, &[repository.to_owned()], Reach::Pods).await.map_err(|m| ("RepositoryUnavailable", m))?;
    let rendered = restore_copy::objects(tenant, place.site, &ctx.images, place.copy, &env, &password())
        .map_err(|e| ("CopyNotRendered", e.to_string()))?;
    let cluster = ctx
        .site_clients
        .cluster(&ctx.client, &ctx.namespace, place.site)
        .await
        .map_err(|e| ("SiteUnreachable", error_chain(&e)))?;
    // NB: the Secret first, and made once: a second start must not change
    // the password of a database that may have started with the first.
    let made = async {
        cluster::create_secret(&cluster, place.namespace, FIELD_MANAGER, &rendered.secret).await?;
        cluster::apply_each(&cluster, place.namespace, FIELD_MANAGER, &rendered.objects).await
    };
    made.await.map_err(|e| ("CopyNotCreated", error_chain(&e)))?;
    Ok(cluster)
}

/// Whether the copy's PostgreSQL has a ready pod.
pub async fn copy_ready(cluster: &SiteCluster, namespace: &str, copy: &str) -> Result<bool, kube::Error> {
    let sets: Api<StatefulSet> = Api::namespaced(cluster.client.clone(), namespace);
    Ok(sets.get_opt(copy).await?.and_then(|s| s.status).and_then(|s| s.ready_replicas).unwrap_or(0) > 0)
}

/// The message of a copy that did not start in time.
pub fn not_started(cluster: &SiteCluster, namespace: &str, copy: &str) -> String {
    format!(
        "the copy's PostgreSQL (StatefulSet {namespace}/{copy}) at Kubernetes site {} has no ready pod after \
         {START_WITHIN:#}: see `kubectl -n {namespace} describe statefulset {copy}` there",
        cluster.site
    )
}

/// Applies a copy's Job.
pub async fn apply_job(cluster: &SiteCluster, namespace: &str, job: Value) -> Result<(), (&'static str, String)> {
    cluster::apply_each(cluster, namespace, FIELD_MANAGER, &[job])
        .await
        .map_err(|e| ("JobNotCreated", error_chain(&e)))?;
    Ok(())
}

/// Looks at the copy and its Job: starts the Job once the copy is ready,
/// records the outcome once it ended.
pub async fn watch(ctx: &Context, restore: &Restore) -> Result<Action, Error> {
    let status = restore.status.clone().unwrap_or_default();
    let (site, cluster, namespace, copy, job) = match look(ctx, &restore.name_any(), status.job.as_deref()).await {
        None => return Ok(Action::await_change()),
        Some(Looked::Later) => return Ok(Action::requeue(WATCH)),
        Some(Looked::SiteGone { site, namespace, name }) => {
            let message = format!("Site {site}, where the copy {namespace}/{name} is, does not exist any more");
            return fail(ctx, restore, "SiteNotFound", message).await;
        }
        Some(Looked::Found { site, cluster, namespace, name, job }) => (site, cluster, namespace, name, job),
    };
    let site_name = site.name_any();
    let running = status.conditions.iter().any(|c| c.type_ == "Ready" && c.reason == JOB_RUNNING);
    match job {
        None if running => {
            let message = format!(
                "Job {namespace}/{copy} at Kubernetes site {site_name} is gone before it finished: create a new \
                 Restore (delete this one to remove the copy)"
            );
            fail(ctx, restore, "JobGone", message).await
        }
        None => start_job(ctx, restore, &cluster, &site, namespace, copy).await,
        Some(job) => match outcome(&job) {
            JobOutcome::Running => Ok(Action::requeue(WATCH)),
            ended => {
                let place = format!("at Kubernetes site {site_name} into StatefulSet {namespace}/{copy}");
                let status = match left(&cluster, namespace, copy).await.map(|l| l.report) {
                    Ok(Some(report)) => finished(restore, &place, from_report(report, &place)),
                    Ok(None) => {
                        let why = match ended {
                            JobOutcome::Failed(why) => format!("failed ({why})"),
                            _ => "ended without a report".to_owned(),
                        };
                        let message = format!(
                            "Job {namespace}/{copy} at Kubernetes site {site_name} {why}; {}",
                            log_hint(namespace, copy)
                        );
                        with_phase(restore, RestorePhase::Failed, "JobFailed", message, Timestamp::now())
                    }
                    Err(e) => {
                        tracing::warn!(restore = restore.name_any(), error = error_chain(&e), "reading its pods");
                        return Ok(Action::requeue(WATCH));
                    }
                };
                end(ctx, restore, status).await
            }
        },
    }
}

/// Starts the Job once the copy's PostgreSQL is ready; gives up after [`START_WITHIN`].
async fn start_job(
    ctx: &Context,
    restore: &Restore,
    cluster: &SiteCluster,
    site: &Site,
    namespace: &str,
    copy: &str,
) -> Result<Action, Error> {
    let ready = match copy_ready(cluster, namespace, copy).await {
        Ok(ready) => ready,
        Err(e) => {
            tracing::warn!(restore = restore.name_any(), error = error_chain(&e), "reading the copy's StatefulSet");
            return Ok(Action::requeue(WATCH));
        }
    };
    if !ready {
        let started = restore.status.as_ref().and_then(|s| s.start_time.as_ref()).map_or(Timestamp::now(), |t| t.0);
        if Timestamp::now().duration_since(started) < START_WITHIN {
            return Ok(Action::requeue(WATCH));
        }
        let message = format!("{}; delete this Restore to remove the copy", not_started(cluster, namespace, copy));
        return fail(ctx, restore, "CopyNotStarted", message).await;
    }
    let tenants: Api<InvoicingTenant> = Api::namespaced(ctx.client.clone(), &restore.namespace().unwrap_or_default());
    let tenant = match tenants.get_opt(&restore.spec.tenant).await {
        Ok(Some(tenant)) => tenant,
        Ok(None) => {
            let message = format!("InvoicingTenant {} went away before its restore started", restore.spec.tenant);
            return fail(ctx, restore, "TenantNotFound", message).await;
        }
        Err(e) => return Err(super::about(restore, "reading its tenant")(e)),
    };
    let snapshot = Some(restore.spec.snapshot.as_str()).filter(|s| *s != "latest");
    let job = match restore_copy::job(&tenant, site, &ctx.images, copy, snapshot, None) {
        Ok(job) => job,
        Err(e) => return fail(ctx, restore, "JobNotRendered", e.to_string()).await,
    };
    if let Err((reason, message)) = apply_job(cluster, namespace, job).await {
        return fail(ctx, restore, reason, message).await;
    }
    let message = format!(
        "Job {namespace}/{copy} restores snapshot {} into the copy at Kubernetes site {}",
        restore.spec.snapshot, cluster.site
    );
    write(ctx, restore, with_phase(restore, RestorePhase::Restoring, JOB_RUNNING, message, Timestamp::now())).await?;
    Ok(Action::requeue(WATCH))
}

/// What a copy's Job left: the report in its pod's termination message (its
/// last log lines as an error when the agent ended before writing one), and
/// when the pod's container ended.
pub struct Left {
    /// Whether the container ended (a success may leave no message).
    pub ended: bool,
    pub report: Option<Report>,
    pub at: Option<Timestamp>,
}

/// What the Job `job`'s pod left (its `restore` container).
pub async fn left(cluster: &SiteCluster, namespace: &str, job: &str) -> Result<Left, kube::Error> {
    left_by(cluster, namespace, job, "restore").await
}

/// What the container `container` of the Job `job`'s pod left.
pub async fn left_by(cluster: &SiteCluster, namespace: &str, job: &str, container: &str) -> Result<Left, kube::Error> {
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), namespace);
    let listed = pods.list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}"))).await?;
    let ended = listed
        .items
        .iter()
        .flat_map(|p| p.status.iter().flat_map(|s| s.container_statuses.iter().flatten()))
        .filter(|c| c.name == container)
        .find_map(|c| c.state.as_ref()?.terminated.clone());
    let Some(ended) = ended else { return Ok(Left { ended: false, report: None, at: None }) };
    // NB: a container that succeeded without writing a report leaves an empty message.
    let report = ended
        .message
        .filter(|text| !text.trim().is_empty())
        .map(|text| serde_json::from_str::<Report>(&text).unwrap_or_else(|_| Report::failed("", text.trim())));
    Ok(Left { ended: true, report, at: ended.finished_at.map(|t| t.0) })
}

fn from_report(report: Report, place: &str) -> Result<Done, Failure> {
    match report {
        Report { error: Some(why), .. } => Err(Failure::Failed(format!("{place}: {why}"))),
        Report { verified: true, snapshot: Some(snapshot), time, documents, .. } => {
            Ok(Done { snapshot, time: time.unwrap_or_default(), documents: documents.unwrap_or(0), warning: None })
        }
        Report { snapshot, mut mismatches, mismatch_count, .. } => {
            if let Some(total) = mismatch_count.filter(|t| *t > mismatches.len()) {
                mismatches.push(format!("… and {} more: see the Job's log", total - mismatches.len()));
            }
            let snapshot = snapshot.unwrap_or_default();
            Err(Failure::Mismatch { snapshot, differences: mismatches, url: place.to_owned() })
        }
    }
}

/// Deletes the copy and its Job at their site, when the Restore goes.
pub async fn remove(ctx: &Context, restore: &Restore) -> Result<(), String> {
    let status = restore.status.clone().unwrap_or_default();
    let Some((site_name, namespace, copy)) = job_ref(status.job.as_deref()) else { return Ok(()) };
    let Some(site) = ctx.cache.sites.get(site_name).await else {
        let note = format!(
            "Site {site_name} does not exist any more: the copy {namespace}/{copy} there, if its cluster still \
             holds it, is left (`kubectl -n {namespace} delete all,pvc,secret,networkpolicy -l \
             {}={copy}`)",
            restore_copy::RESTORE_LABEL
        );
        super::publish(ctx, restore, EventType::Warning, "CopyNotRemoved", "Delete", note).await;
        return Ok(());
    };
    let cluster = ctx.site_clients.cluster(&ctx.client, &ctx.namespace, &site).await.map_err(|e| error_chain(&e))?;
    let deleted =
        cluster::delete_each(&cluster, namespace, &restore_copy::names(copy)).await.map_err(|e| error_chain(&e))?;
    let note = format!("Kubernetes site {site_name}: deleted {}", deleted.join(", "));
    super::publish(ctx, restore, EventType::Normal, "CopyRemoved", "Delete", note).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_becomes_the_outcome_it_tells() {
        let place = "at Kubernetes site s into StatefulSet n/c";
        let verified = Report {
            tenant: "acme".into(),
            snapshot: Some("ab12cd34ef".into()),
            time: Some("2026-11-24T01:00:00Z".into()),
            verified: true,
            documents: Some(3),
            ..Report::default()
        };
        let done = from_report(verified, place).ok().unwrap();
        assert_eq!((done.snapshot.as_str(), done.documents), ("ab12cd34ef", 3));
        let differs = Report {
            snapshot: Some("ab12cd34".into()),
            mismatches: vec!["table invoices: recorded 3 rows, restored 2 rows".into()],
            mismatch_count: Some(40),
            ..Report::default()
        };
        match from_report(differs, place) {
            Err(Failure::Mismatch { snapshot, differences, .. }) => {
                assert_eq!(snapshot, "ab12cd34");
                assert_eq!(differences.len(), 2);
                assert_eq!(differences[1], "… and 39 more: see the Job's log");
            }
            _ => panic!("a mismatch"),
        }
        match from_report(Report::failed("", "Error: the password is wrong"), place) {
            Err(Failure::Failed(message)) => assert_eq!(message, format!("{place}: Error: the password is wrong")),
            _ => panic!("a failure"),
        }
    }
}
