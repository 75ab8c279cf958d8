//! The Drill controller, at a plan's target Site with the Local driver: a
//! Pending Drill runs once. The sample's tenants are taken from the plan
//! (`drill::select`), the test SdI endpoint is checked against every
//! production channel first (`drill::guard_endpoint`), then each tenant's
//! newest backup is restored side by side at the target site, verified
//! against what it recorded, its app started on the copy and sending to the
//! test endpoint, and its RTO and RPO measured and judged against its
//! objectives; every copy is torn down, also when it failed. The result goes
//! to the Drill's status, Events, metrics, and each tenant's
//! `lastDrillTime`/`lastDrillPassed`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};

use super::metrics::Drilled;
use super::restore::{Copy, Failure, restore_side_by_side};
use super::tenant::{self, Placement};
use super::{Context, RETRY};
use super::{certificates, drill_job};
use crate::api::common::{Duration as SpecDuration, Objectives, TenantRef};
use crate::api::condition::{self, Observed};
use crate::api::drill::{Drill, DrillFailure, DrillPhase, DrillStatus, DrillTenantResult};
use crate::api::plan::FailoverPlan;
use crate::api::tenant::InvoicingTenant;
use crate::app::SdiEnvironment;
use crate::drill::{self, Measured};
use crate::site::local::TenantSpec;

pub const CONTROLLER: &str = "drill";
/// The field manager of the tenant status fields drills write
/// (`lastDrillTime`, `lastDrillPassed`): the tenant controller owns the rest.
const DRILL_MANAGER: &str = "fenice-drill";

pub type Error = super::ObjectError;

/// A status with `phase` and `Ready` set, the rest kept.
pub fn with_phase(drill: &Drill, phase: DrillPhase, reason: &str, message: String, now: Timestamp) -> DrillStatus {
    let old = drill.status.clone().unwrap_or_default();
    let observed = Observed { type_: condition::types::READY, status: phase == DrillPhase::Passed, reason, message };
    let conditions = condition::set(&old.conditions, observed, drill.metadata.generation, now);
    let finished = matches!(phase, DrillPhase::Passed | DrillPhase::Failed);
    DrillStatus {
        phase,
        start_time: old.start_time.clone().or_else(|| (!finished).then_some(Time(now))),
        completion_time: if finished { Some(Time(now)) } else { old.completion_time.clone() },
        observed_generation: drill.metadata.generation,
        conditions,
        ..old
    }
}

/// One tenant's result from what was measured and the verdict on it.
pub fn result_of(m: Measured, verdict: Option<String>, objectives: Objectives) -> DrillTenantResult {
    DrillTenantResult {
        tenant: m.tenant,
        passed: verdict.is_none(),
        start_time: Time(m.started),
        end_time: Time(m.ended),
        rto_millis: m.rto.as_millis() as u64,
        rpo_seconds: m.rpo.as_secs(),
        objectives,
        snapshot: m.snapshot,
        reason: verdict,
        warnings: m.warnings,
        test_invoice: m.test_invoice,
        copy: m.kept,
    }
}

/// The drill's final status from each tenant's result.
pub fn finished(drill: &Drill, results: Vec<DrillTenantResult>, now: Timestamp) -> DrillStatus {
    let kept = results.iter().filter(|r| r.copy.is_some()).count();
    let kept_until = drill.spec.keep_for.as_ref().filter(|_| kept > 0).map(|d| now + d.as_std());
    let total = results.len() as u32;
    let failures: Vec<DrillFailure> = results
        .iter()
        .filter_map(|r| r.reason.as_ref().map(|why| DrillFailure { tenant: r.tenant.clone(), reason: why.clone() }))
        .collect();
    let failed = failures.len() as u32;
    let rto = results.iter().map(|r| Duration::from_millis(r.rto_millis)).max().map(SpecDuration::from_std);
    let rpo = results.iter().map(|r| Duration::from_secs(r.rpo_seconds)).max().map(SpecDuration::from_std);
    let warned: Vec<String> = results
        .iter()
        .flat_map(|r| r.warnings.iter().map(|w| format!("{}/{}: {w}", r.tenant.namespace, r.tenant.name)))
        .collect();
    let (phase, reason, message) = match failures.first() {
        None if warned.is_empty() => (
            DrillPhase::Passed,
            "Passed",
            format!("all {total} tenants restored, verified, served and within objectives"),
        ),
        None => (
            DrillPhase::Passed,
            "PassedWithWarnings",
            format!(
                "all {total} tenants restored, verified, served and within objectives, with {} warnings; e.g. {}",
                warned.len(),
                warned[0]
            ),
        ),
        Some(first) => (
            DrillPhase::Failed,
            "Failed",
            format!(
                "{failed} of {total} tenants failed; e.g. {}/{}: {}",
                first.tenant.namespace, first.tenant.name, first.reason
            ),
        ),
    };
    DrillStatus {
        tenants_total: total,
        tenants_passed: total - failed,
        tenants_failed: failed,
        passed: Some(format!("{}/{total}", total - failed)),
        rto,
        rpo,
        failures,
        results,
        copies: Vec::new(),
        report: Some(format!("fenice drill report {}", drill.name_any())),
        kept_until: kept_until.map(Time),
        ..with_phase(drill, phase, reason, kept_note(message, kept, kept_until), now)
    }
}

/// Judges one tenant's measurement (its channel certificates checked now,
/// against its objectives) and records the verdict on the tenant and in the
/// metrics.
pub async fn conclude(ctx: &Context, tenant: &InvoicingTenant, mut measured: Measured) -> DrillTenantResult {
    let certificates = certificates::check(ctx, tenant, Timestamp::now()).await;
    measured.warnings.extend(certificates.warnings);
    if measured.outcome.is_ok() && !certificates.failures.is_empty() {
        measured.outcome = Err(certificates.failures.join("; "));
    }
    let verdict = drill::verdict(&measured, &tenant.spec.objectives);
    record_on_tenant(ctx, tenant, verdict.is_none(), measured.started, certificates.earliest).await;
    let drilled = Drilled {
        passed: verdict.is_none(),
        rto: measured.rto,
        rpo: measured.rpo,
        at: measured.started,
        certificate_expiry: certificates.earliest,
    };
    ctx.metrics.drilled(&measured.tenant.namespace, &measured.tenant.name, &drilled);
    result_of(measured, verdict, tenant.spec.objectives.clone())
}

/// Writes the drill's final status and says how it went in an Event.
pub async fn announce(ctx: &Context, drill: &Drill, status: DrillStatus) -> Result<(), Error> {
    let api: Api<Drill> = Api::all(ctx.client.clone());
    let passed = status.phase == DrillPhase::Passed;
    let warned = status.results.iter().any(|r| !r.warnings.is_empty());
    let conditions = status.conditions.clone();
    super::apply_status(&api, drill, &status).await.map_err(super::about(drill, "writing its status"))?;
    if passed && warned {
        let message = conditions.iter().find(|c| c.type_ == "Ready").map(|c| c.message.clone()).unwrap_or_default();
        super::publish(ctx, drill, EventType::Warning, "PassedWithWarnings", "Drill", message).await;
    } else {
        let reason = if passed { "Passed" } else { "Failed" };
        super::publish_outcome(ctx, drill, passed, reason, "Drill", &conditions).await;
    }
    Ok(())
}

fn kept_note(message: String, kept: usize, until: Option<Timestamp>) -> String {
    match until {
        Some(until) => format!(
            "{message}; {kept} copies kept for inspection until {until} (results[].copy); deleting the Drill stops \
             them sooner"
        ),
        None => message,
    }
}

pub async fn reconcile(drill: Arc<Drill>, ctx: Arc<Context>) -> Result<Action, Error> {
    super::measured(&ctx, CONTROLLER, reconcile_inner(&drill, &ctx)).await
}

async fn reconcile_inner(drill: &Drill, ctx: &Context) -> Result<Action, Error> {
    let api: Api<Drill> = Api::all(ctx.client.clone());
    let write = |status: DrillStatus| {
        let api = api.clone();
        async move { super::apply_status(&api, drill, &status).await.map_err(super::about(drill, "writing its status")) }
    };
    // NB: copies at a Local site run in that site's operator, which alone can stop them or tell them interrupted.
    let elsewhere = || async {
        let plan = ctx.cache.plans.get(&drill.spec.plan).await;
        match plan {
            Some(plan) => ctx.local_elsewhere(&plan.spec.target_site).await,
            None => false,
        }
    };
    if drill.metadata.deletion_timestamp.is_some() {
        if drill.finalizers().iter().any(|f| f == FINALIZER) {
            if elsewhere().await {
                return Ok(Action::await_change());
            }
            stop_copies(ctx, drill).await?;
            super::remove_finalizer(&api, drill, FINALIZER)
                .await
                .map_err(super::about(drill, "removing its finalizer"))?;
        }
        return Ok(Action::await_change());
    }
    let phase = drill.status.as_ref().map_or(DrillPhase::Pending, |s| s.phase);
    match phase {
        DrillPhase::Passed | DrillPhase::Failed => {
            let status = drill.status.clone().unwrap_or_default();
            let Some(until) = status.kept_until.as_ref().map(|t| t.0) else { return Ok(Action::await_change()) };
            if elsewhere().await {
                return Ok(Action::await_change());
            }
            let left = until.duration_since(Timestamp::now());
            if left.is_positive() {
                return Ok(Action::requeue(left.unsigned_abs().max(Duration::from_secs(1))));
            }
            stop_copies(ctx, drill).await?;
            let results = status.results.iter().cloned().map(|r| DrillTenantResult { copy: None, ..r }).collect();
            write(DrillStatus { kept_until: None, results, ..status }).await?;
            super::remove_finalizer(&api, drill, FINALIZER)
                .await
                .map_err(super::about(drill, "removing its finalizer"))?;
            return Ok(Action::await_change());
        }
        _ if elsewhere().await => return Ok(Action::requeue(super::ELSEWHERE)),
        DrillPhase::Pending => {}
        _ => {
            if !super::still_current(&api, drill).await.map_err(super::about(drill, "reading it again"))? {
                return Ok(Action::requeue(super::OUTDATED));
            }
            if drill.status.as_ref().is_some_and(|s| !s.sample.is_empty()) {
                return drill_job::step(ctx, drill).await;
            }
            // NB: the Local driver's copies ended with the operator that ran them.
            let message = "the operator stopped while this drill ran; its copies ended with it; create a new Drill";
            write(with_phase(drill, DrillPhase::Failed, "Interrupted", message.into(), Timestamp::now())).await?;
            return Ok(Action::await_change());
        }
    }
    let plan = Api::<FailoverPlan>::all(ctx.client.clone())
        .get_opt(&drill.spec.plan)
        .await
        .map_err(super::about(drill, "reading its FailoverPlan"))?;
    let hold = |phase: DrillPhase, reason: &'static str, message: String| {
        let old = drill.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
        let changed = old.is_none_or(|c| c.message != message);
        async move {
            if changed {
                write(with_phase(drill, phase, reason, message.clone(), Timestamp::now())).await?;
                super::publish(ctx, drill, EventType::Warning, reason, "Drill", message).await;
            }
            Ok(if phase == DrillPhase::Failed { Action::await_change() } else { Action::requeue(RETRY) })
        }
    };
    let Some(plan) = plan else {
        let message = format!("FailoverPlan {} does not exist: fix spec.plan and create a new Drill", drill.spec.plan);
        return hold(DrillPhase::Failed, "PlanNotFound", message).await;
    };
    let site_name = plan.spec.target_site.clone();
    let site = ctx.cache.sites.get(&site_name).await;
    let site = match tenant::placement(&site_name, site.as_deref()) {
        Placement::Local { site } => Ok(site),
        Placement::Invalid { reason, message } => return hold(DrillPhase::Pending, reason, message).await,
        Placement::Kubernetes { site } => Err(site),
    };
    let Some(all) = ctx.cache.tenants.all().await else { return Ok(Action::requeue(RETRY)) };
    if let Err(why) = drill::guard_endpoint(&drill.spec.sdi_test_endpoint, &all) {
        return hold(DrillPhase::Failed, "ProductionEndpoint", why).await;
    }
    let seed = drill.uid().unwrap_or_else(|| drill.name_any());
    let chosen = match drill::select(&plan.spec.tenants, &all, &drill.spec.sample, &seed) {
        Ok(chosen) => chosen.into_iter().cloned().collect::<Vec<InvoicingTenant>>(),
        Err(why) => return hold(DrillPhase::Failed, "NoTenants", why).await,
    };
    let site = match site {
        Ok(site) => site,
        Err(site) => return drill_job::start(ctx, drill, &site, &chosen).await,
    };

    if drill.spec.keep_for.is_some() {
        super::add_finalizer(&api, drill, FINALIZER).await.map_err(super::about(drill, "adding its finalizer"))?;
    }
    let started = Timestamp::now();
    let message = format!("restoring {} tenants at Local site {site}", chosen.len());
    let mut status = with_phase(drill, DrillPhase::Restoring, "Restoring", message, started);
    status.tenants_total = chosen.len() as u32;
    write(status).await?;
    let mut results = Vec::new();
    for (index, tenant) in chosen.iter().enumerate() {
        let measured = drill_tenant(ctx, drill, &site, index, tenant, started).await;
        results.push(conclude(ctx, tenant, measured).await);
    }
    announce(ctx, drill, finished(drill, results, Timestamp::now())).await?;
    Ok(Action::await_change())
}

/// The finalizer of a Drill whose copies are kept (`spec.keepFor`): deleting
/// it stops them.
pub const FINALIZER: &str = "fenice.io/drill-copies";

/// The name of the drill's copy of its `index`th tenant.
pub fn copy_name(drill: &Drill, index: usize) -> String {
    format!("drill-{}-{index}", super::short_uid(drill, 8))
}

/// Stops the copies a drill kept or has in progress (at a Local site, none
/// are left after an operator restart: the Local driver's copies end with
/// the operator).
async fn stop_copies(ctx: &Context, drill: &Drill) -> Result<(), Error> {
    if drill.status.as_ref().is_some_and(|s| !s.sample.is_empty()) {
        return drill_job::remove_copies(ctx, drill).await;
    }
    for (index, result) in drill.status.iter().flat_map(|s| s.results.iter()).enumerate() {
        ctx.local.stop_everywhere(&result.tenant.namespace, &copy_name(drill, index));
    }
    Ok(())
}

/// Restores, verifies, serves and measures one tenant, then tears its copy
/// down (with `keepFor`, a copy that served stays until the drill's `keptUntil`).
async fn drill_tenant(
    ctx: &Context,
    drill: &Drill,
    site: &str,
    index: usize,
    tenant: &InvoicingTenant,
    drill_start: Timestamp,
) -> Measured {
    let (began, started) = (Instant::now(), Timestamp::now());
    let namespace = tenant.namespace().unwrap_or_else(|| "default".into());
    let reference = TenantRef { namespace: namespace.clone(), name: tenant.name_any() };
    let name = copy_name(drill, index);
    let copy = Copy { site, namespace: &namespace, name: &name };
    let outcome = restore_and_serve(ctx, drill, &copy, tenant).await;
    let rto = began.elapsed();
    let keep = drill.spec.keep_for.is_some() && outcome.as_ref().is_ok_and(|s| s.test_invoice.is_ok());
    let kept = if keep { ctx.local.app_url(site, &name) } else { None };
    if kept.is_none() {
        ctx.local.stop(site, &namespace, &name);
    }
    let (rpo, snapshot, outcome, warnings, test_invoice) = match outcome {
        Ok(served) => {
            let (rpo, clocks) = crate::drill::backup_age(drill_start, served.taken, &served.snapshot);
            let (outcome, sent) = match served.test_invoice {
                Ok(sent) => (Ok(()), Some(sent)),
                Err(why) => (Err(why), None),
            };
            let mut warnings = served.warnings;
            warnings.extend(clocks);
            (rpo, Some(served.snapshot), outcome, warnings, sent)
        }
        Err(why) => (Duration::ZERO, None, Err(why), Vec::new(), None),
    };
    Measured {
        tenant: reference,
        started,
        ended: Timestamp::now(),
        snapshot,
        rto,
        rpo,
        outcome,
        warnings,
        test_invoice,
        kept,
    }
}

/// A copy that served: when its backup was taken, the snapshot, and what
/// needs attention.
struct Served {
    taken: Timestamp,
    snapshot: String,
    warnings: Vec<String>,
    /// The test invoice sent, or why that failed: RTO and RPO are measured either way.
    test_invoice: Result<String, String>,
}

/// The copy restored from the first of the tenant's policy's repositories
/// that has a backup of it, verified, and its app serving.
async fn restore_and_serve(
    ctx: &Context,
    drill: &Drill,
    copy: &Copy<'_>,
    tenant: &InvoicingTenant,
) -> Result<Served, String> {
    let policy = ctx.cache.policies.get(&tenant.spec.backup_policy).await.ok_or_else(|| {
        format!("its BackupPolicy {} does not exist: nothing to restore from", tenant.spec.backup_policy)
    })?;
    // NB: only a repository without a backup of the tenant is passed over: an
    // unreachable or damaged copy fails the drill, loudly, even if another
    // repository could have served; finding that out is what drills are for.
    let mut tried = Vec::new();
    let mut restored = None;
    let mut warnings = Vec::new();
    for repository in &policy.spec.repositories {
        match restore_side_by_side(ctx, copy, tenant, repository, "latest").await {
            Ok(done) => {
                tracing::info!(tenant = tenant.name_any(), repository, snapshot = %done.outcome.snapshot, "drill: restored");
                warnings.extend(done.overwritten.iter().map(|o| format!("repository {repository}: {o}")));
                restored = Some(done);
                break;
            }
            Err(Failure::NoBackup(why)) => {
                tracing::info!(
                    tenant = tenant.name_any(),
                    repository,
                    "drill: no backup here, trying the next repository"
                );
                tried.push(format!("{repository}: {why}"));
            }
            Err(failure) => return Err(format!("repository {repository}: {}", failure.summary())),
        }
    }
    let restored = restored.ok_or_else(|| format!("no repository gave a backup to restore: {}", tried.join("; ")))?;
    let spec = TenantSpec {
        name: copy.name.to_owned(),
        vat: tenant.spec.vat_number.clone(),
        company: tenant.spec.display_name.clone(),
        sdi_endpoint: Some(drill.spec.sdi_test_endpoint.clone()),
        sdi_environment: SdiEnvironment::Test,
        epoch: 1,
        fenced: false,
        postgres: Default::default(),
    };
    let (local, serving) = (ctx.local.site(copy.site), tenant.name_any());
    tokio::task::spawn_blocking(move || local.start_app_serving(&spec, &serving))
        .await
        .map_err(|e| format!("starting the app on the copy: {e}"))?
        .map_err(|e| format!("the app on the restored copy did not serve: {}", crate::error_chain::error_chain(&e)))?;
    let taken = restored.outcome.time.parse::<Timestamp>();
    let taken = taken.map_err(|e| format!("the snapshot's time {:?}: {e}", restored.outcome.time))?;
    let url = ctx.local.app_url(copy.site, copy.name).ok_or("the app on the restored copy stopped")?;
    let (series, number) = drill::next_invoice(&restored.outcome.recorded.last_numbers);
    let test_invoice = drill::test_invoice::send(&url, &series, number, &drill.spec.sdi_test_endpoint).await;
    Ok(Served { taken, snapshot: restored.outcome.snapshot.to_string(), warnings, test_invoice })
}

/// Writes the drill's verdict on the tenant (its own field manager: the
/// tenant controller owns the rest of the status). Best effort: a failure
/// is logged, the drill's own status holds the result.
async fn record_on_tenant(
    ctx: &Context,
    tenant: &InvoicingTenant,
    passed: bool,
    at: Timestamp,
    certificate_expiry: Option<Timestamp>,
) {
    let namespace = tenant.namespace().unwrap_or_else(|| "default".into());
    let api: Api<InvoicingTenant> = Api::namespaced(ctx.client.clone(), &namespace);
    let mut status = serde_json::json!({"lastDrillTime": Time(at), "lastDrillPassed": passed});
    if let Some(expiry) = certificate_expiry {
        status["certificateExpiry"] = serde_json::json!(Time(expiry));
    }
    if let Err(e) = super::apply_status_as(&api, tenant, &status, DRILL_MANAGER).await {
        tracing::warn!(tenant = tenant.name_any(), error = %e, "recording the drill on the tenant");
    }
}

pub fn error_policy(drill: Arc<Drill>, error: &Error, _ctx: Arc<Context>) -> Action {
    super::retry_after_error(&drill.name_any(), error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::drill::DrillSpec;

    fn drill() -> Drill {
        let spec: DrillSpec = serde_json::from_value(serde_json::json!({
            "plan": "p", "sample": {"all": true}, "sdiTestEndpoint": "http://127.0.0.1:1/",
        }))
        .unwrap();
        Drill::new("d", spec)
    }

    fn measured(name: &str, rto: u64, rpo: u64) -> DrillTenantResult {
        let tenant = TenantRef { namespace: "invoicing".into(), name: name.into() };
        let (started, ended) = (Timestamp::from_second(10).unwrap(), Timestamp::from_second(10 + rto as i64).unwrap());
        let measured = Measured {
            tenant,
            started,
            ended,
            snapshot: Some("ab12".into()),
            rto: Duration::from_secs(rto),
            rpo: Duration::from_secs(rpo),
            outcome: Ok(()),
            warnings: Vec::new(),
            test_invoice: None,
            kept: None,
        };
        let objectives = serde_json::from_value(serde_json::json!({"rpo": "15m", "rto": "5m"})).unwrap();
        result_of(measured, None, objectives)
    }

    fn failing(m: DrillTenantResult, why: &str) -> DrillTenantResult {
        DrillTenantResult { passed: false, reason: Some(why.into()), ..m }
    }

    #[test]
    fn a_drill_reports_the_worst_figures_and_names_each_failure() {
        let d = drill();
        let at = Timestamp::from_second(100).unwrap();
        let passed = finished(&d, vec![measured("a", 30, 60), measured("b", 45, 20)], at);
        assert_eq!(passed.phase, DrillPhase::Passed);
        assert_eq!((passed.passed.as_deref(), passed.rto.as_ref().map(|d| d.as_str())), (Some("2/2"), Some("45s")));
        assert_eq!(passed.rpo.as_ref().map(|d| d.as_str()), Some("1m"));
        let failed = finished(
            &d,
            vec![measured("a", 30, 60), failing(measured("b", 360, 20), "RTO 6m over the objective 5m")],
            at,
        );
        assert_eq!((failed.phase, failed.tenants_failed, failed.tenants_passed), (DrillPhase::Failed, 1, 1));
        assert_eq!(failed.failures[0].tenant.name, "b");
        let ready = failed.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert!(ready.message.contains("1 of 2 tenants failed; e.g. invoicing/b: RTO 6m"), "{ready:?}");
        assert_eq!(failed.results.len(), 2);
        assert_eq!((failed.results[1].passed, failed.results[1].rto_millis), (false, 360_000));
        assert_eq!(failed.report.as_deref(), Some("fenice drill report d"));
    }

    #[test]
    fn a_drill_with_warnings_passes_and_says_so() {
        let mut warned = measured("a", 30, 60);
        warned.warnings.push("repository r: data/ab/ab12: the current version was written over".into());
        let status = finished(&drill(), vec![warned, measured("b", 45, 20)], Timestamp::from_second(100).unwrap());
        assert_eq!(status.phase, DrillPhase::Passed);
        let ready = status.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.reason, "PassedWithWarnings");
        assert!(ready.message.contains("with 1 warnings; e.g. invoicing/a: repository r: data/ab/ab12"), "{ready:?}");
        assert_eq!(status.results[0].warnings.len(), 1);
        assert!(status.results[1].warnings.is_empty());
    }
}
