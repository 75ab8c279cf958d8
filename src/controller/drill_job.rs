//! Drills at a Kubernetes site. Each sampled tenant gets a copy at the
//! plan's target site (`restore_copy`: its own PostgreSQL, documents volume
//! and Secret, and a NetworkPolicy that lets only its Job reach it and lets
//! out only DNS and HTTPS, to the repositories and the test endpoint), in
//! the Drill's namespace or the tenant's. Once the copy's PostgreSQL is ready
//! a Job restores the tenant's newest backup into it, verifies it against what
//! the backup recorded, serves the tenant's app on it with its SdI channel
//! pointed at the drill's test endpoint and sends one test invoice
//! (`fenice agent restore --drill-endpoint`); its report comes back in the
//! pod's termination message. Then the copy is deleted (kept for
//! `spec.keepFor` if it served).
//!
//! A drill there spans many reconciles: what was drawn (`status.sample`),
//! the copies in progress (`status.copies`) and the results so far are in
//! the Drill's status, so an operator that restarts goes on where the last
//! one stopped, and deleting the Drill deletes whatever copies it has.

use std::collections::BTreeSet;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};

use super::Context;
use super::backup_job::{JobOutcome, job_ref, log_hint, outcome};
use super::drill::{Error, FINALIZER, announce, conclude, copy_name, finished, result_of, with_phase};
use super::restore_job::{Place, START_WITHIN, apply_job, copy_ready, left, make_copy, not_started};
use crate::api::common::{Duration as SpecDuration, Objectives, TenantRef};
use crate::api::drill::{Drill, DrillCopy, DrillPhase, DrillStatus, DrillTenantResult};
use crate::api::site::Site;
use crate::api::tenant::InvoicingTenant;
use crate::drill::Measured;
use crate::error_chain::error_chain;
use crate::site::cluster::{self, SiteCluster};
use crate::site::restore_copy;
use crate::stack::restore_report::Report;

/// Tenants restored at once at the site: a drill must not starve the
/// standby site, which may have to take every tenant at any moment.
pub const PARALLEL: usize = 4;
/// How often copies starting and Jobs running are looked at.
const WATCH: Duration = Duration::from_secs(10);

fn reference(tenant: &InvoicingTenant) -> TenantRef {
    TenantRef { namespace: tenant.namespace().unwrap_or_default(), name: tenant.name_any() }
}

async fn write(ctx: &Context, drill: &Drill, status: &DrillStatus) -> Result<(), Error> {
    let api: Api<Drill> = Api::all(ctx.client.clone());
    super::apply_status(&api, drill, status).await.map_err(super::about(drill, "writing its status"))
}

/// Starts a drill of `chosen` at the Kubernetes site `site`: records the
/// sample; the copies follow, [`PARALLEL`] at a time.
pub async fn start(ctx: &Context, drill: &Drill, site: &str, chosen: &[InvoicingTenant]) -> Result<Action, Error> {
    let api: Api<Drill> = Api::all(ctx.client.clone());
    super::add_finalizer(&api, drill, FINALIZER).await.map_err(super::about(drill, "adding its finalizer"))?;
    let message = format!("restoring {} tenants at Kubernetes site {site}, {PARALLEL} at a time", chosen.len());
    let mut status = with_phase(drill, DrillPhase::Restoring, "Restoring", message, Timestamp::now());
    status.site = Some(site.to_owned());
    status.sample = chosen.iter().map(reference).collect();
    status.tenants_total = chosen.len() as u32;
    write(ctx, drill, &status).await?;
    Ok(Action::requeue(Duration::from_secs(1)))
}

/// Goes on with a drill at a Kubernetes site: looks at each copy, starts
/// the next ones, and ends the drill once every tenant has its result.
pub async fn step(ctx: &Context, drill: &Drill) -> Result<Action, Error> {
    let mut status = drill.status.clone().unwrap_or_default();
    let site_name = status.site.clone().unwrap_or_default();
    if !ctx.cache.tenants.ready().await {
        return Ok(Action::requeue(WATCH));
    }
    let Some(site) = ctx.cache.sites.get(&site_name).await else {
        let why = format!("Site {site_name}, where this drill restores, does not exist any more");
        return end(ctx, drill, status, &why).await;
    };
    let cluster = match ctx.site_clients.cluster(&ctx.client, &ctx.namespace, &site).await {
        Ok(cluster) => cluster,
        Err(e) => {
            tracing::warn!(drill = drill.name_any(), site = site_name, error = error_chain(&e), "reaching its site");
            return Ok(Action::requeue(WATCH));
        }
    };
    let drill_start = status.start_time.as_ref().map_or_else(Timestamp::now, |t| t.0);
    // NB: looked up, not searched: a drill looks at each of its tenants every step.
    let tenants = &ctx.cache.tenants;
    let mut copies = Vec::new();
    for copy in std::mem::take(&mut status.copies) {
        let tenant = tenants.get_in(&copy.tenant.namespace, &copy.tenant.name).await;
        match look_at(ctx, drill, &cluster, &site, copy, tenant.as_deref(), drill_start).await {
            Next::Running(copy) => copies.push(copy),
            Next::Done(result) => status.results.push(*result),
        }
    }
    let busy: BTreeSet<TenantRef> =
        copies.iter().map(|c| c.tenant.clone()).chain(status.results.iter().map(|r| r.tenant.clone())).collect();
    for (index, wanted) in status.sample.iter().enumerate().filter(|(_, t)| !busy.contains(t)) {
        if copies.len() >= PARALLEL {
            break;
        }
        let started = Timestamp::now();
        let Some(tenant) = tenants.get_in(&wanted.namespace, &wanted.name).await else {
            status.results.push(failed(wanted, started, "the InvoicingTenant was deleted during the drill".into()));
            continue;
        };
        let namespace = drill.spec.namespace.clone().unwrap_or_else(|| wanted.namespace.clone());
        let copy = copy_name(drill, index);
        let place = Place { site: &site, namespace: &namespace, copy: &copy };
        let owner = format!("Drill {}", drill.name_any());
        let made = match ctx.cache.policies.get(&tenant.spec.backup_policy).await {
            // NB: the policy's first repository, as failovers restore from it.
            Some(policy) => match policy.spec.repositories.first() {
                Some(repository) => make_copy(ctx, &owner, &tenant, &place, repository).await.map(|_| ()),
                None => Err(("NoRepository", format!("BackupPolicy {} names no repository", policy.name_any()))),
            },
            None => Err(("PolicyNotFound", format!("its BackupPolicy {} does not exist", tenant.spec.backup_policy))),
        };
        match made {
            Ok(()) => copies.push(DrillCopy {
                tenant: wanted.clone(),
                copy: format!("{site_name}/{namespace}/{copy}"),
                start_time: Time(started),
                job: false,
            }),
            Err((_, why)) => {
                let measured = measured_failure(wanted, started, why);
                status.results.push(conclude(ctx, &tenant, measured).await);
            }
        }
    }
    status.copies = copies;
    if status.results.len() >= status.sample.len() {
        let kept = status.results.iter().any(|r| r.copy.is_some());
        announce(ctx, drill, finished(drill, status.results, Timestamp::now())).await?;
        if !kept {
            let api: Api<Drill> = Api::all(ctx.client.clone());
            super::remove_finalizer(&api, drill, FINALIZER)
                .await
                .map_err(super::about(drill, "removing its finalizer"))?;
        }
        return Ok(Action::await_change());
    }
    let done = status.results.len();
    let failed = status.results.iter().filter(|r| !r.passed).count() as u32;
    let message = format!(
        "{done} of {} tenants done at Kubernetes site {site_name} ({failed} failed), {} restoring",
        status.sample.len(),
        status.copies.len()
    );
    let status = DrillStatus {
        tenants_passed: done as u32 - failed,
        tenants_failed: failed,
        passed: Some(format!("{}/{}", done as u32 - failed, status.sample.len())),
        ..with_phase(
            &Drill { status: Some(status), ..drill.clone() },
            DrillPhase::Restoring,
            "Restoring",
            message,
            Timestamp::now(),
        )
    };
    if drill.status.as_ref() != Some(&status) {
        write(ctx, drill, &status).await?;
    }
    Ok(Action::requeue(WATCH))
}

/// Ends a drill whose site is gone: every tenant without a result fails.
async fn end(ctx: &Context, drill: &Drill, mut status: DrillStatus, why: &str) -> Result<Action, Error> {
    let done: BTreeSet<TenantRef> = status.results.iter().map(|r| r.tenant.clone()).collect();
    let now = Timestamp::now();
    for tenant in status.sample.iter().filter(|t| !done.contains(t)) {
        status.results.push(failed(tenant, now, why.to_owned()));
    }
    announce(ctx, drill, finished(drill, status.results, now)).await?;
    let api: Api<Drill> = Api::all(ctx.client.clone());
    super::remove_finalizer(&api, drill, FINALIZER).await.map_err(super::about(drill, "removing its finalizer"))?;
    Ok(Action::await_change())
}

fn measured_failure(tenant: &TenantRef, started: Timestamp, why: String) -> Measured {
    Measured {
        tenant: tenant.clone(),
        started,
        ended: Timestamp::now(),
        snapshot: None,
        rto: Duration::ZERO,
        rpo: Duration::ZERO,
        outcome: Err(why),
        warnings: Vec::new(),
        test_invoice: None,
        kept: None,
    }
}

/// The result of a tenant that is no longer there to be judged by its objectives.
fn failed(tenant: &TenantRef, started: Timestamp, why: String) -> DrillTenantResult {
    let zero = SpecDuration::from_std(Duration::ZERO);
    let measured = measured_failure(tenant, started, why.clone());
    result_of(measured, Some(why), Objectives { rpo: zero.clone(), rto: zero })
}

/// What became of a copy.
enum Next {
    Running(DrillCopy),
    Done(Box<DrillTenantResult>),
}

/// Looks at one copy: starts its Job once its PostgreSQL is ready; once the
/// Job ended, reads its report, tears the copy down and judges the tenant.
async fn look_at(
    ctx: &Context,
    drill: &Drill,
    cluster: &SiteCluster,
    site: &Site,
    mut copy: DrillCopy,
    tenant: Option<&InvoicingTenant>,
    drill_start: Timestamp,
) -> Next {
    let Some((_, namespace, name)) = job_ref(Some(&copy.copy)) else {
        let why = format!("{}: not a copy's place (site/namespace/name)", copy.copy);
        return Next::Done(Box::new(failed(&copy.tenant, copy.start_time.0, why)));
    };
    let (namespace, name) = (namespace.to_owned(), name.to_owned());
    let started = copy.start_time.0;
    let jobs: Api<Job> = Api::namespaced(cluster.client.clone(), &namespace);
    let job = match jobs.get_opt(&name).await {
        Ok(job) => job,
        Err(e) => {
            tracing::warn!(drill = drill.name_any(), copy = copy.copy, error = error_chain(&e), "reading its Job");
            return Next::Running(copy);
        }
    };
    let where_ = format!("Job {namespace}/{name} at Kubernetes site {}", cluster.site);
    let outcome = match (job, tenant) {
        (_, None) => Err("the InvoicingTenant was deleted during the drill".to_owned()),
        (None, Some(_)) if copy.job => Err(format!("{where_} is gone before it finished")),
        (None, Some(tenant)) => {
            let ready = match copy_ready(cluster, &namespace, &name).await {
                Ok(ready) => ready,
                Err(e) => {
                    tracing::warn!(drill = drill.name_any(), copy = copy.copy, error = error_chain(&e), "reading it");
                    return Next::Running(copy);
                }
            };
            if !ready && Timestamp::now().duration_since(started) < START_WITHIN {
                return Next::Running(copy);
            }
            if !ready {
                Err(not_started(cluster, &namespace, &name))
            } else {
                let endpoint = drill.spec.sdi_test_endpoint.as_str();
                let job = restore_copy::job(tenant, site, &ctx.images, &name, None, Some(endpoint));
                let applied = match job {
                    Ok(job) => apply_job(cluster, &namespace, job).await,
                    Err(e) => Err(("JobNotRendered", e.to_string())),
                };
                match applied {
                    Ok(()) => {
                        copy.job = true;
                        return Next::Running(copy);
                    }
                    Err((_, why)) => Err(why),
                }
            }
        }
        (Some(job), Some(_)) => match outcome(&job) {
            JobOutcome::Running => return Next::Running(copy),
            ended => match left(cluster, &namespace, &name).await {
                Ok(left) => Ok((ended, left)),
                Err(e) => {
                    tracing::warn!(
                        drill = drill.name_any(),
                        copy = copy.copy,
                        error = error_chain(&e),
                        "reading its pods"
                    );
                    return Next::Running(copy);
                }
            },
        },
    };
    let mut measured = measured_failure(&copy.tenant, started, String::new());
    match outcome {
        Err(why) => measured.outcome = Err(why),
        Ok((ended, left)) => {
            let end = left.at.unwrap_or_else(Timestamp::now);
            measured.rto = end.duration_since(started).unsigned_abs();
            judge(&mut measured, left.report, drill_start, || match ended {
                JobOutcome::Failed(why) => format!("{where_} failed ({why}); {}", log_hint(&namespace, &name)),
                _ => format!("{where_} ended without a report; {}", log_hint(&namespace, &name)),
            });
        }
    }
    let keep = drill.spec.keep_for.is_some() && measured.outcome.is_ok();
    if keep {
        measured.kept = Some(copy.copy.clone());
    } else if let Err(e) = cluster::delete_each(cluster, &namespace, &restore_copy::names(&name)).await {
        measured.warnings.push(format!(
            "the copy was not deleted ({}): delete it with `kubectl -n {namespace} delete \
             statefulset,job,service,networkpolicy,pvc,secret -l {}={name}` at site {}",
            error_chain(&e),
            restore_copy::RESTORE_LABEL,
            cluster.site
        ));
    }
    measured.ended = Timestamp::now();
    let result = match tenant {
        Some(tenant) => conclude(ctx, tenant, measured).await,
        None => {
            let why = measured.outcome.clone().err().unwrap_or_default();
            failed(&copy.tenant, started, why)
        }
    };
    Next::Done(Box::new(result))
}

/// What the Job's report says of the tenant: the snapshot, its age at the
/// drill's start, the test invoice, or what failed (`missing` when there is
/// no report).
fn judge(measured: &mut Measured, report: Option<Report>, drill_start: Timestamp, missing: impl FnOnce() -> String) {
    let Some(report) = report else {
        measured.outcome = Err(missing());
        return;
    };
    measured.snapshot = report.snapshot.clone();
    if let Some(taken) = report.time.as_deref().and_then(|t| t.parse::<Timestamp>().ok()) {
        let (rpo, clocks) = crate::drill::backup_age(drill_start, taken, report.snapshot.as_deref().unwrap_or(""));
        measured.rpo = rpo;
        measured.warnings.extend(clocks);
    }
    measured.test_invoice = report.test_invoice.clone();
    measured.outcome = match report {
        Report { error: Some(why), .. } => Err(why),
        Report { verified: false, snapshot, mismatches, mismatch_count, .. } => {
            let count = mismatch_count.unwrap_or(mismatches.len());
            Err(format!(
                "snapshot {}: the restored data differs from what the backup recorded ({count} differences): {}",
                snapshot.unwrap_or_default(),
                mismatches.join("; ")
            ))
        }
        Report { serve_error: Some(why), .. } => Err(why),
        Report { test_invoice: None, .. } => Err("the Job did not send a test invoice".into()),
        Report { .. } => Ok(()),
    };
}

/// Deletes a Kubernetes drill's copies (in progress and kept): the Drill is
/// deleted, or its `keptUntil` came. A Site gone is said in an Event.
pub async fn remove_copies(ctx: &Context, drill: &Drill) -> Result<(), Error> {
    let status = drill.status.clone().unwrap_or_default();
    let places =
        status.copies.iter().map(|c| c.copy.as_str()).chain(status.results.iter().filter_map(|r| r.copy.as_deref()));
    for place in places {
        let Some((site_name, namespace, name)) = job_ref(Some(place)) else { continue };
        let Some(site) = ctx.cache.sites.get(site_name).await else {
            let note = format!(
                "Site {site_name} does not exist any more: the copy {namespace}/{name} there, if its cluster still \
                 holds it, is left"
            );
            super::publish(ctx, drill, EventType::Warning, "CopyNotRemoved", "Delete", note).await;
            continue;
        };
        let removed = async {
            let cluster =
                ctx.site_clients.cluster(&ctx.client, &ctx.namespace, &site).await.map_err(|e| error_chain(&e))?;
            cluster::delete_each(&cluster, namespace, &restore_copy::names(name)).await.map_err(|e| error_chain(&e))
        };
        if let Err(why) = removed.await {
            let message = format!("deleting the copy {namespace}/{name} at Kubernetes site {site_name}: {why}");
            return Err(super::about(drill, "deleting its copies")(kube::Error::Service(message.into())));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured() -> Measured {
        let tenant = TenantRef { namespace: "invoicing".into(), name: "acme".into() };
        measured_failure(&tenant, Timestamp::from_second(100).unwrap(), String::new())
    }

    #[test]
    fn a_report_is_judged_by_what_it_says_and_what_it_lacks() {
        let start: Timestamp = "2026-11-24T02:00:00Z".parse().unwrap();
        let served = Report {
            tenant: "acme".into(),
            snapshot: Some("ab12cd34".into()),
            time: Some("2026-11-24T01:50:00Z".into()),
            verified: true,
            documents: Some(3),
            test_invoice: Some("2026/4 sent to http://sdi-test (SdI id 7)".into()),
            ..Report::default()
        };
        let mut m = measured();
        judge(&mut m, Some(served.clone()), start, || unreachable!());
        assert_eq!(m.outcome, Ok(()));
        assert_eq!((m.rpo, m.snapshot.as_deref()), (Duration::from_secs(600), Some("ab12cd34")));
        assert_eq!(m.test_invoice.as_deref(), Some("2026/4 sent to http://sdi-test (SdI id 7)"));

        let refused = Report { test_invoice: None, serve_error: Some("got number 3, not 4".into()), ..served.clone() };
        judge(&mut m, Some(refused), start, || unreachable!());
        assert_eq!(m.outcome, Err("got number 3, not 4".into()));

        let differs =
            Report { verified: false, mismatches: vec!["table invoices: 3 rows, 2 restored".into()], ..served };
        judge(&mut m, Some(differs), start, || unreachable!());
        assert!(m.outcome.as_ref().unwrap_err().contains("(1 differences): table invoices"), "{:?}", m.outcome);

        judge(&mut m, None, start, || "Job n/c ended without a report".into());
        assert_eq!(m.outcome, Err("Job n/c ended without a report".into()));
    }
}
