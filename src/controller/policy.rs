//! The BackupPolicy controller's schedule: at each time the policy's cron names
//! (in its time zone), one Backup per tenant the policy protects. A controller
//! that was away runs the latest missed time once, not every one it missed.
//! [`Schedule::due`] decides; [`reconcile`] lists tenants, creates Backups (their names
//! carry the scheduled time, so a retry creates nothing twice) and writes status.
//! Each reconcile also judges every protected tenant against the policy's
//! rules (`audit::check_policy`): where its backups go, the providers, and
//! whether the probe found immutability in force; a violation is a False
//! `Compliant` condition, the counts in status, and a Warning Event.
//! Retention is applied by the Backup controller after each successful run.

use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ListParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};

use super::Context;
use super::schedule::{self, Schedule, wait_until};
use crate::api::backup::{Backup, BackupSpec, BackupTrigger};
use crate::api::condition::{self, Observed};
use crate::api::policy::{BackupPolicy, BackupPolicyStatus};
use crate::api::repository::BackupRepository;
use crate::api::tenant::InvoicingTenant;
use crate::audit::{self, Copy, Violation};

pub const CONTROLLER: &str = "backuppolicy";
const SCHEDULED: &str = "Scheduled";
const COMPLIANT: &str = "Compliant";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("BackupPolicy {name}: {what}")]
    Api {
        name: String,
        what: &'static str,
        #[source]
        source: kube::Error,
    },
}

/// The Backup's name for a tenant's run at `at`: `<tenant>-<yyyymmdd-hhmm>` (UTC).
pub fn backup_name(tenant: &str, at: Timestamp) -> String {
    schedule::run_name(tenant, at)
}

pub async fn reconcile(policy: Arc<BackupPolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    super::measured(&ctx, CONTROLLER, reconcile_inner(&policy, &ctx)).await
}

async fn reconcile_inner(policy: &BackupPolicy, ctx: &Context) -> Result<Action, Error> {
    let name = policy.name_any();
    let now = Timestamp::now();
    let schedule = match Schedule::parse(&policy.spec.schedule, &policy.spec.time_zone) {
        Ok(parsed) => parsed,
        Err(e) => {
            let message = e.to_string();
            let scheduled =
                Scheduled { last: None, next: None, ok: false, reason: "InvalidSchedule", message: message.clone() };
            write_status(ctx, policy, scheduled, None, now).await?;
            publish(ctx, policy, EventType::Warning, "InvalidSchedule", message).await;
            return Ok(Action::await_change());
        }
    };
    let compliance = evaluate_rules(ctx, policy).await?;
    let status = policy.status.clone().unwrap_or_default();
    let last = status.last_schedule_time.as_ref().map(|t| t.0);
    let plan = schedule.due(last, policy.metadata.creation_timestamp.as_ref().map(|t| t.0), now);
    let Some(run) = plan.run else {
        let message = "waiting for the next scheduled time".to_owned();
        let scheduled = Scheduled { last, next: plan.next, ok: true, reason: "Waiting", message };
        write_status(ctx, policy, scheduled, Some(&compliance), now).await?;
        publish_violations(ctx, policy, &compliance).await;
        return Ok(Action::requeue(wait_until(plan.next, now)));
    };

    let protected = &compliance.protected;
    let mut created = 0;
    for tenant in protected {
        let namespace = tenant.namespace().unwrap_or_else(|| "default".into());
        let backups: Api<Backup> = Api::namespaced(ctx.client.clone(), &namespace);
        let mut backup = Backup::new(
            &backup_name(&tenant.name_any(), run),
            BackupSpec {
                tenant: tenant.name_any(),
                trigger: BackupTrigger::Scheduled,
                repositories: policy.spec.repositories.clone(),
            },
        );
        backup.metadata.owner_references = Some(vec![super::owner(policy)]);
        match backups.create(&PostParams::default(), &backup).await {
            Ok(_) => created += 1,
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(source) => return Err(Error::Api { name, what: "creating a Backup", source }),
        }
    }
    let message = format!("{} Backups for the run of {run} ({created} new)", protected.len());
    let scheduled =
        Scheduled { last: Some(run), next: plan.next, ok: true, reason: "BackupsCreated", message: message.clone() };
    write_status(ctx, policy, scheduled, Some(&compliance), now).await?;
    publish(ctx, policy, EventType::Normal, "BackupsCreated", message).await;
    publish_violations(ctx, policy, &compliance).await;
    Ok(Action::requeue(wait_until(plan.next, now)))
}

/// Each protected tenant's violations of the policy's rules, judged on where
/// its backups go: the policy's repositories, their providers, and whether
/// the operator's probe found immutability in force at each store.
#[derive(Clone, Debug, Default)]
struct Compliance {
    /// The tenants whose spec.backupPolicy names the policy.
    protected: Vec<Arc<InvoicingTenant>>,
    tenants: u32,
    violations: Vec<(String, Vec<Violation>)>,
}

async fn evaluate_rules(ctx: &Context, policy: &BackupPolicy) -> Result<Compliance, Error> {
    let failed = |what| move |source| Error::Api { name: policy.name_any(), what, source };
    let repositories: Vec<BackupRepository> = Api::<BackupRepository>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await
        .map_err(failed("listing repositories"))?
        .items;
    // NB: from the watches' cache: the tenants are many, and a list of them all is large.
    // NB: from the watches' cache: the tenants are many, and a list of them all is large.
    let (Some(sites), Some(tenants)) = (ctx.cache.sites.all().await, ctx.cache.tenants.all().await) else {
        return Ok(Compliance::default());
    };
    let tenants: Vec<Arc<InvoicingTenant>> =
        tenants.into_iter().filter(|t| t.spec.backup_policy == policy.name_any()).collect();
    let copies: Vec<Copy> = policy
        .spec
        .repositories
        .iter()
        .filter_map(|wanted| repositories.iter().find(|r| r.name_any() == *wanted))
        .map(|r| Copy {
            repository: r.name_any(),
            provider: r.spec.provider,
            immutable: r.status.as_ref().and_then(|s| s.immutability_in_force) == Some(true),
        })
        .collect();
    let mut compliance = Compliance { protected: Vec::new(), tenants: tenants.len() as u32, violations: Vec::new() };
    for tenant in &tenants {
        let Some(site) = sites.iter().find(|s| s.name_any() == tenant.spec.primary_site) else {
            let message = format!(
                "tenant {} names primary site {}, which does not exist",
                tenant.name_any(),
                tenant.spec.primary_site
            );
            compliance.violations.push((tenant.name_any(), vec![Violation { rule: "primarySite", message }]));
            continue;
        };
        let found = audit::check_policy(&tenant.name_any(), &policy.spec.rules, site.spec.provider, &copies);
        if !found.is_empty() {
            compliance.violations.push((tenant.name_any(), found));
        }
    }
    compliance.protected = tenants;
    Ok(compliance)
}

impl Compliance {
    /// The `Compliant` condition.
    fn condition(&self) -> Observed<'static> {
        let violating = self.violations.len();
        let message = match self.violations.first() {
            None => format!("all {} tenants satisfy the rules", self.tenants),
            Some((tenant, found)) => format!(
                "{violating} of {} tenants violate the rules; e.g. {tenant}: {}",
                self.tenants,
                found.iter().map(|v| v.message.as_str()).collect::<Vec<_>>().join("; ")
            ),
        };
        let ok = violating == 0;
        Observed { type_: COMPLIANT, status: ok, reason: if ok { "RulesSatisfied" } else { "RulesViolated" }, message }
    }
}

/// A Warning Event for each violation.
async fn publish_violations(ctx: &Context, policy: &BackupPolicy, compliance: &Compliance) {
    if let Some(note) = violations_note(compliance) {
        publish(ctx, policy, EventType::Warning, "RuleViolated", note).await;
    }
}

/// One note for all violations: with 38,000 tenants an Event each would be a
/// storm (and Events of one reason about one object merge into a series that
/// keeps only the first note anyway). The first few are spelled out.
fn violations_note(compliance: &Compliance) -> Option<String> {
    const SHOWN: usize = 3;
    let lines: Vec<String> = compliance
        .violations
        .iter()
        .flat_map(|(tenant, found)| found.iter().map(move |v| format!("{tenant}: {}", v.message)))
        .collect();
    let (first, rest) = lines.split_at(lines.len().min(SHOWN));
    match (first.is_empty(), rest.len()) {
        (true, _) => None,
        (false, 0) => Some(first.join("; ")),
        (false, more) => Some(format!(
            "{}; and {more} more (status.violatingTenants: {})",
            first.join("; "),
            compliance.violations.len()
        )),
    }
}

/// What the schedule did, for the `Scheduled` condition.
struct Scheduled<'a> {
    last: Option<Timestamp>,
    next: Option<Timestamp>,
    ok: bool,
    reason: &'a str,
    message: String,
}

/// The whole status in one apply: the schedule, and the rules when they were evaluated.
async fn write_status(
    ctx: &Context,
    policy: &BackupPolicy,
    scheduled: Scheduled<'_>,
    compliance: Option<&Compliance>,
    now: Timestamp,
) -> Result<(), Error> {
    let old = policy.status.clone().unwrap_or_default();
    let generation = policy.metadata.generation;
    let observed =
        Observed { type_: SCHEDULED, status: scheduled.ok, reason: scheduled.reason, message: scheduled.message };
    let mut conditions = condition::set(&old.conditions, observed, generation, now);
    let (mut compliant, mut violating) = (old.compliant_tenants, old.violating_tenants);
    if let Some(compliance) = compliance {
        let bad = compliance.violations.len() as u32;
        conditions = condition::set(&conditions, compliance.condition(), generation, now);
        (compliant, violating) = (Some(compliance.tenants - bad), Some(bad));
    }
    let status = BackupPolicyStatus {
        repositories: Some(policy.spec.repositories.len() as u32),
        compliant_tenants: compliant,
        violating_tenants: violating,
        last_schedule_time: scheduled.last.map(Time),
        next_schedule_time: scheduled.next.map(Time),
        observed_generation: generation,
        conditions,
    };
    let api: Api<BackupPolicy> = Api::all(ctx.client.clone());
    super::apply_status(&api, policy, &status).await.map_err(|source| Error::Api {
        name: policy.name_any(),
        what: "writing its status",
        source,
    })
}

async fn publish(ctx: &Context, policy: &BackupPolicy, type_: EventType, reason: &str, note: String) {
    super::publish(ctx, policy, type_, reason, "Schedule", note).await;
}

pub fn error_policy(policy: Arc<BackupPolicy>, error: &Error, _ctx: Arc<Context>) -> Action {
    super::retry_after_error(&policy.name_any(), error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::schedule::Due;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn a_run_is_due_once_per_scheduled_time_and_the_next_is_known() {
        let schedule = Schedule::parse("0 2 * * *", "Europe/Rome").unwrap();
        // Created at noon: nothing due before 02:00 Rome (01:00 UTC) the next day.
        let created = Some(at("2026-11-23T11:00:00Z"));
        let waiting = schedule.due(None, created, at("2026-11-23T20:00:00Z"));
        assert_eq!(waiting, Due { run: None, next: Some(at("2026-11-24T01:00:00Z")) });
        // Three days away: one run, for the latest time missed.
        let back = schedule.due(None, created, at("2026-11-26T09:00:00Z"));
        assert_eq!(back, Due { run: Some(at("2026-11-26T01:00:00Z")), next: Some(at("2026-11-27T01:00:00Z")) });
        // After that run, nothing more until the next one.
        assert_eq!(schedule.due(Some(at("2026-11-26T01:00:00Z")), created, at("2026-11-26T09:00:00Z")).run, None);
    }

    #[test]
    fn backup_names_carry_the_scheduled_time() {
        assert_eq!(backup_name("studio-rossi", at("2026-11-26T01:00:00Z")), "studio-rossi-20261126-0100");
    }

    #[test]
    fn thousands_of_violations_make_one_note_that_spells_out_the_first_few() {
        let violation = |n: usize| (format!("t{n}"), vec![Violation { rule: "minCopies", message: "one copy".into() }]);
        let none = Compliance::default();
        assert_eq!(violations_note(&none), None);
        let two = Compliance { violations: (0..2).map(violation).collect(), ..Compliance::default() };
        assert_eq!(violations_note(&two).unwrap(), "t0: one copy; t1: one copy");
        let many = Compliance { violations: (0..38_000).map(violation).collect(), ..Compliance::default() };
        let note = violations_note(&many).unwrap();
        assert!(note.ends_with("t2: one copy; and 37997 more (status.violatingTenants: 38000)"), "{note}");
    }
}
