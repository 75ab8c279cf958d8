//! Backups of tenants at Kubernetes sites: each runs as a Job there
//! (`fenice agent backup`, [`kubernetes::backup_job`]), and the Backup's
//! status is filled from what the Job wrote, read from the repositories with
//! the operator's own credentials (never from the Job's log). The Job is
//! named in `status.job`, so a restarted operator goes on watching it.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};

use super::Context;
use super::backup::{self, Attempt, Error, Written};
use super::backup_run::{apply_retention, open_repository};
use crate::api::backup::{Backup, BackupPhase};
use crate::api::policy::BackupPolicy;
use crate::api::site::Site;
use crate::api::tenant::InvoicingTenant;
use crate::error_chain::error_chain;
use crate::repo::forget::KeepPolicy;
use crate::repo::id::Id;
use crate::repo::repository::Repository;
use crate::repo::tree::Snapshot;
use crate::site::cluster::SiteCluster;
use crate::site::kubernetes;
use crate::stack::verify::{ANNOTATION, Record};

/// The field manager of the Jobs: not the site driver's, so that applying a
/// tenant's stack never takes them for objects it no longer renders.
const FIELD_MANAGER: &str = "fenice-backup";
/// How often a running Job is looked at.
const WATCH: Duration = Duration::from_secs(10);

/// The tag a Backup's snapshot carries: the Backup's uid.
fn tag(backup: &Backup) -> String {
    format!("fenice.io/backup={}", backup.uid().unwrap_or_default())
}

/// Where a Job runs: (site, namespace, name), from `status.job` of a Backup or a Restore.
pub fn job_ref(job: Option<&str>) -> Option<(&str, &str, &str)> {
    let mut parts = job?.splitn(3, '/');
    Some((parts.next()?, parts.next()?, parts.next()?))
}

/// Starts the Backup's Job at `site`, once every repository exists (the
/// agent only opens them: creating one is the operator's).
pub async fn start(
    ctx: &Context,
    backup: &Backup,
    tenant: &InvoicingTenant,
    site: &Site,
    repositories: &[String],
    physical: bool,
) -> Result<Action, Error> {
    let fail = |reason: &'static str, message: String| async move {
        let status = backup::with_phase(backup, BackupPhase::Failed, reason, message, Timestamp::now());
        backup::write_status(ctx, backup, &status).await?;
        Ok(Action::await_change())
    };
    for name in repositories {
        if let (_, _, Err(why)) = open_repository(ctx, name, true).await {
            tracing::warn!(backup = backup.name_any(), repository = %name, why, "a repository the Job writes to");
        }
    }
    let name = backup.name_any();
    let job = match kubernetes::backup_job(tenant, site, &ctx.images, &name, &tag(backup), physical) {
        Ok(job) => job,
        Err(e) => return fail("JobNotRendered", e.to_string()).await,
    };
    let cluster = match ctx.site_clients.cluster(&ctx.client, &ctx.namespace, site).await {
        Ok(cluster) => cluster,
        Err(e) => return fail("SiteUnreachable", error_chain(&e)).await,
    };
    let namespace = tenant.namespace().unwrap_or_default();
    let job_name = kubernetes::backup_job_name(&name);
    let jobs: Api<Job> = Api::namespaced(cluster.client.clone(), &namespace);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    if let Err(e) = jobs.patch(&job_name, &params, &Patch::Apply(&job)).await {
        let message =
            format!("creating Job {namespace}/{job_name} at Kubernetes site {}: {}", cluster.site, error_chain(&e));
        return fail("JobNotCreated", message).await;
    }
    let message = format!("Job {namespace}/{job_name} runs the backup at Kubernetes site {}", cluster.site);
    let mut status = backup::with_phase(backup, BackupPhase::Running, "JobRunning", message, Timestamp::now());
    status.job = Some(format!("{}/{namespace}/{job_name}", cluster.site));
    backup::write_status(ctx, backup, &status).await?;
    Ok(Action::requeue(WATCH))
}

/// How a Job ended, from its status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobOutcome {
    Running,
    Succeeded,
    Failed(String),
}

pub fn outcome(job: &Job) -> JobOutcome {
    let status = job.status.clone().unwrap_or_default();
    if status.succeeded.unwrap_or(0) > 0 {
        return JobOutcome::Succeeded;
    }
    let failed = status.conditions.iter().flatten().find(|c| c.type_ == "Failed" && c.status == "True");
    match failed {
        Some(c) => JobOutcome::Failed(
            [c.reason.as_deref(), c.message.as_deref()].into_iter().flatten().collect::<Vec<_>>().join(": "),
        ),
        None => JobOutcome::Running,
    }
}

/// A Job named in a status (`site/namespace/name`), as its site holds it now.
pub enum Looked<'a> {
    /// The Site it runs at does not exist any more.
    SiteGone {
        site: &'a str,
        namespace: &'a str,
        name: &'a str,
    },
    /// The site or the Job could not be read now (logged): look again later.
    Later,
    Found {
        site: Arc<Site>,
        cluster: SiteCluster,
        namespace: &'a str,
        name: &'a str,
        job: Option<Box<Job>>,
    },
}

/// Reads the Job `job` (`site/namespace/name`) at its site, for `object`
/// (named in the log); `None` when there is no such reference.
pub async fn look<'a>(ctx: &Context, object: &str, job: Option<&'a str>) -> Option<Looked<'a>> {
    let (site_name, namespace, name) = job_ref(job)?;
    let Some(site) = ctx.cache.sites.get(site_name).await else {
        return Some(Looked::SiteGone { site: site_name, namespace, name });
    };
    let cluster = match ctx.site_clients.cluster(&ctx.client, &ctx.namespace, &site).await {
        Ok(cluster) => cluster,
        Err(e) => {
            tracing::warn!(object, error = error_chain(&e), "reaching the site of its Job");
            return Some(Looked::Later);
        }
    };
    let jobs: Api<Job> = Api::namespaced(cluster.client.clone(), namespace);
    match jobs.get_opt(name).await {
        Ok(job) => Some(Looked::Found { site, cluster, namespace, name, job: job.map(Box::new) }),
        Err(e) => {
            tracing::warn!(object, error = error_chain(&e), "reading its Job");
            Some(Looked::Later)
        }
    }
}

/// Where a Job's log is, for a message.
pub fn log_hint(namespace: &str, name: &str) -> String {
    format!("its log: `kubectl -n {namespace} logs job/{name}` in that cluster")
}

/// Looks at the Backup's Job; when it ended, records the outcome.
pub async fn watch(ctx: &Context, backup: &Backup) -> Result<Action, Error> {
    let status = backup.status.clone().unwrap_or_default();
    let end = |phase, reason: &'static str, message: String| async move {
        let status = backup::with_phase(backup, phase, reason, message, Timestamp::now());
        backup::write_status(ctx, backup, &status).await?;
        Ok(Action::await_change())
    };
    let (site_name, namespace, job_name, job) = match look(ctx, &backup.name_any(), status.job.as_deref()).await {
        None => return Ok(Action::await_change()),
        Some(Looked::Later) => return Ok(Action::requeue(WATCH)),
        Some(Looked::SiteGone { site, namespace, name }) => {
            let message = format!("Site {site}, where Job {namespace}/{name} runs, does not exist any more");
            return end(BackupPhase::Failed, "SiteNotFound", message).await;
        }
        Some(Looked::Found { site, namespace, name, job, .. }) => (site.name_any(), namespace, name, job),
    };
    let Some(job) = job else {
        let message = format!(
            "Job {namespace}/{job_name} at Kubernetes site {site_name} is gone before it finished: create a new Backup"
        );
        return end(BackupPhase::Failed, "JobGone", message).await;
    };
    match outcome(&job) {
        JobOutcome::Running => Ok(Action::requeue(WATCH)),
        JobOutcome::Failed(why) => {
            let message = format!(
                "Job {namespace}/{job_name} at Kubernetes site {site_name} failed ({why}); {}",
                log_hint(namespace, job_name)
            );
            end(BackupPhase::Failed, "JobFailed", message).await
        }
        JobOutcome::Succeeded => record(ctx, backup).await,
    }
}

/// The Job succeeded: each repository's copy, found by the Backup's tag.
async fn record(ctx: &Context, backup: &Backup) -> Result<Action, Error> {
    let repositories = written_to(ctx, backup).await;
    let tag = tag(backup);
    let mut attempts = Vec::new();
    let mut recorded: Option<Record> = None;
    let mut written = Vec::new();
    for name in &repositories {
        let (provider, locked_for, opened) = open_repository(ctx, name, false).await;
        let result = match opened {
            Ok(repo) => match tagged(&repo, &backup.spec.tenant, &tag).await {
                Ok(Some((id, snapshot))) => {
                    let record = snapshot.annotations.get(ANNOTATION).cloned();
                    if recorded.is_none() {
                        recorded = record.and_then(|r| serde_json::from_value(r).ok());
                    }
                    written.push((name.clone(), repo));
                    Ok(Written {
                        snapshot_id: id.to_string(),
                        bytes_total: snapshot.totals.bytes,
                        bytes_added: snapshot.totals.added_bytes,
                    })
                }
                Ok(None) => Err("the Job succeeded but this repository holds no snapshot of it".to_owned()),
                Err(why) => Err(why),
            },
            Err(why) => Err(why),
        };
        attempts.push(Attempt { repository: name.clone(), provider, locked_for, result });
    }
    let status = backup::finished(backup, &attempts, recorded.as_ref(), None, Timestamp::now());
    // NB: before the final status, as for backups run here.
    if let Some((keep, tz)) = retention(ctx, backup).await {
        let written: Vec<(&str, &Repository)> = written.iter().map(|(n, r)| (n.as_str(), r)).collect();
        apply_retention(ctx, backup, &written, &keep, &tz).await;
    }
    backup::write_status(ctx, backup, &status).await?;
    let succeeded = status.phase == BackupPhase::Succeeded;
    let reason = match status.phase {
        BackupPhase::Succeeded => "Succeeded",
        BackupPhase::PartiallySucceeded => "PartiallySucceeded",
        _ => "Failed",
    };
    super::publish_outcome(ctx, backup, succeeded, reason, "Backup", &status.conditions).await;
    if succeeded {
        let namespace = backup.namespace().unwrap_or_default();
        ctx.metrics.backed_up(&namespace, &backup.spec.tenant, Timestamp::now());
    }
    Ok(Action::await_change())
}

/// The tenant's BackupPolicy, as the cache holds it.
async fn policy(ctx: &Context, backup: &Backup) -> Option<std::sync::Arc<BackupPolicy>> {
    let namespace = backup.namespace().unwrap_or_default();
    let tenants: Api<InvoicingTenant> = Api::namespaced(ctx.client.clone(), &namespace);
    let tenant = tenants.get_opt(&backup.spec.tenant).await.ok().flatten()?;
    ctx.cache.policies.get(&tenant.spec.backup_policy).await
}

/// The repositories the Job wrote to: the tenant's policy's (the Secret at the site holds those).
async fn written_to(ctx: &Context, backup: &Backup) -> Vec<String> {
    if !backup.spec.repositories.is_empty() {
        return backup.spec.repositories.clone();
    }
    policy(ctx, backup).await.map(|p| p.spec.repositories.clone()).unwrap_or_default()
}

/// The policy's retention, applied after a successful backup.
async fn retention(ctx: &Context, backup: &Backup) -> Option<(KeepPolicy, jiff::tz::TimeZone)> {
    let policy = policy(ctx, backup).await?;
    let tz = jiff::tz::TimeZone::get(&policy.spec.time_zone).ok()?;
    Some((super::retention::keep_policy(&policy.spec.retention), tz))
}

/// The tenant's snapshot tagged `tag` in `repo`.
async fn tagged(repo: &Repository, tenant: &str, tag: &str) -> Result<Option<(Id, Snapshot)>, String> {
    let snapshots = repo.snapshots().await.map_err(|e| error_chain(&e))?;
    Ok(snapshots.into_iter().find(|(_, s)| s.tenant.as_deref() == Some(tenant) && s.tags.iter().any(|t| t == tag)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::backup::BackupStatus;

    fn job(status: serde_json::Value) -> Job {
        serde_json::from_value(serde_json::json!({"metadata": {"name": "backup-a"}, "status": status})).unwrap()
    }

    #[test]
    fn a_job_ends_when_it_succeeds_or_gives_up() {
        assert_eq!(outcome(&job(serde_json::json!({"active": 1}))), JobOutcome::Running);
        assert_eq!(outcome(&job(serde_json::json!({"succeeded": 1}))), JobOutcome::Succeeded);
        let failed = job(serde_json::json!({"failed": 2, "conditions": [
            {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"},
        ]}));
        assert_eq!(
            outcome(&failed),
            JobOutcome::Failed("BackoffLimitExceeded: Job has reached the specified backoff limit".into())
        );
        // One failed pod of two allowed is not the end.
        assert_eq!(outcome(&job(serde_json::json!({"failed": 1, "active": 1}))), JobOutcome::Running);
    }

    #[test]
    fn the_job_is_found_again_from_the_status() {
        assert_eq!(job_ref(Some("westpole-rome/invoicing/backup-a")), Some(("westpole-rome", "invoicing", "backup-a")));
        assert_eq!(job_ref(BackupStatus::default().job.as_deref()), None);
    }
}
