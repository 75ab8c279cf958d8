//! The Backup controller: a Pending Backup runs once, into every repository
//! it names (or its tenant's policy names), and its status records each copy,
//! the snapshot, sizes and the verification counts. With the Local site driver
//! the backup runs in the operator (pg_dump of the tenant's database there);
//! at Kubernetes sites it runs as a Job there (`backup_job`), which a
//! restarted operator goes on watching. A Backup found Running when no run of it is in progress
//! was interrupted by an operator restart: it is marked Failed, never run
//! twice. [`next_step`] and [`finished`] decide; `backup_run` does the work.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};

use super::Context;
use crate::api::backup::{Backup, BackupCopy, BackupPhase, BackupStatus, VerificationSummary};
use crate::api::common::Provider;
use crate::api::condition::{self, Observed};
use crate::stack::verify::Record;

pub const CONTROLLER: &str = "backup";

pub type Error = super::ObjectError;

/// What to do with a Backup now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Pending: run it (or say what it waits for).
    Run,
    /// Running, but no run is in progress here: an operator stopped during it.
    Interrupted,
    /// Running as a Job at a Kubernetes site: see how it goes.
    Watch,
    /// Finished: nothing more to do.
    Done,
}

pub fn next_step(backup: &Backup) -> Step {
    match backup.status.as_ref().map_or(BackupPhase::Pending, |s| s.phase) {
        BackupPhase::Pending => Step::Run,
        BackupPhase::Running if backup.status.as_ref().is_some_and(|s| s.job.is_some()) => Step::Watch,
        BackupPhase::Running => Step::Interrupted,
        BackupPhase::Succeeded | BackupPhase::PartiallySucceeded | BackupPhase::Failed => Step::Done,
    }
}

/// One repository the backup was to be written to, and what became of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    pub repository: String,
    /// `None` when the BackupRepository was not found.
    pub provider: Option<Provider>,
    /// How long the store locks what was written, when it does.
    pub locked_for: Option<Duration>,
    pub result: Result<Written, String>,
}

/// A copy written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    pub snapshot_id: String,
    pub bytes_total: u64,
    pub bytes_added: u64,
}

/// A status that only sets the phase and `Ready`, keeping what is there.
pub fn with_phase(backup: &Backup, phase: BackupPhase, reason: &str, message: String, now: Timestamp) -> BackupStatus {
    let old = backup.status.clone().unwrap_or_default();
    let observed =
        Observed { type_: condition::types::READY, status: phase == BackupPhase::Succeeded, reason, message };
    let conditions = condition::set(&old.conditions, observed, backup.metadata.generation, now);
    let start_time = match phase {
        BackupPhase::Running => Some(Time(now)),
        _ => old.start_time.clone(),
    };
    let completion_time = match phase {
        BackupPhase::Failed => Some(Time(now)),
        _ => old.completion_time.clone(),
    };
    BackupStatus {
        phase,
        start_time,
        completion_time,
        observed_generation: backup.metadata.generation,
        conditions,
        ..old
    }
}

/// The status of a run that ended: each copy, the phase the copies make, sizes
/// and the verification counts. `failure` is why the run itself failed (the
/// database could not be read), when it did.
pub fn finished(
    backup: &Backup,
    attempts: &[Attempt],
    recorded: Option<&Record>,
    failure: Option<&str>,
    now: Timestamp,
) -> BackupStatus {
    let base = backup.status.clone().unwrap_or_default();
    let started = base.start_time.clone().map_or(now, |t| t.0);
    let copies: Vec<BackupCopy> = attempts
        .iter()
        .map(|a| BackupCopy {
            repository: a.repository.clone(),
            provider: a.provider,
            written: a.result.is_ok(),
            immutable_until: match (&a.result, a.locked_for) {
                (Ok(_), Some(d)) => {
                    jiff::SignedDuration::try_from(d).ok().and_then(|d| now.checked_add(d).ok()).map(Time)
                }
                _ => None,
            },
            error: a.result.as_ref().err().cloned(),
        })
        .collect();
    let written: Vec<&Written> = attempts.iter().filter_map(|a| a.result.as_ref().ok()).collect();
    let (phase, reason) = match (written.len(), failure) {
        (_, Some(_)) | (0, None) => (BackupPhase::Failed, "BackupFailed"),
        (n, None) if n == attempts.len() => (BackupPhase::Succeeded, "Succeeded"),
        _ => (BackupPhase::PartiallySucceeded, "PartiallySucceeded"),
    };
    // NB: a clock set back during the run would otherwise count backwards.
    let took = jiff::SignedDuration::from_secs((now.as_second() - started.as_second()).max(0));
    let message = match (phase, failure) {
        (_, Some(why)) => format!("the backup failed: {why}"),
        (BackupPhase::Failed, None) => format!("no copy was written: {}", failures(attempts)),
        (BackupPhase::Succeeded, None) => {
            let copies = if written.len() == 1 { "copy" } else { "copies" };
            format!("{} {copies} written in {took:#}", written.len())
        }
        _ => format!("{} of {} copies written; {}", written.len(), attempts.len(), failures(attempts)),
    };
    let observed =
        Observed { type_: condition::types::READY, status: phase == BackupPhase::Succeeded, reason, message };
    let first = written.first();
    BackupStatus {
        phase,
        completion_time: Some(Time(now)),
        snapshot_id: first.map(|w| w.snapshot_id.clone()),
        copies_summary: Some(format!("{}/{}", written.len(), attempts.len())),
        size: first.map(|w| crate::cli::output::size(w.bytes_total)),
        bytes_total: first.map(|w| w.bytes_total),
        bytes_added: first.map(|w| w.bytes_added),
        verification: recorded.filter(|_| !written.is_empty()).map(summary),
        conditions: condition::set(&base.conditions, observed, backup.metadata.generation, now),
        observed_generation: backup.metadata.generation,
        start_time: Some(Time(started)),
        job: base.job.clone(),
        copies,
    }
}

/// `repo: why; repo: why`, for a condition message.
fn failures(attempts: &[Attempt]) -> String {
    let failed: Vec<String> =
        attempts.iter().filter_map(|a| a.result.as_ref().err().map(|e| format!("{}: {e}", a.repository))).collect();
    failed.join("; ")
}

/// The counts an SRE compares after a restore, from the verification record.
pub fn summary(record: &Record) -> VerificationSummary {
    let rows = |table: &str| record.tables.get(table).map_or(0, |t| t.rows.max(0) as u64);
    VerificationSummary {
        tables: record.tables.len() as u32,
        rows: record.tables.values().map(|t| t.rows.max(0) as u64).sum(),
        documents: record.documents.count.max(0) as u64,
        invoices: rows("invoices"),
        pending_transmissions: record.queue.get("pending").copied().unwrap_or(0).max(0) as u64,
        receipts: record.receipts.values().map(|n| (*n).max(0) as u64).sum(),
    }
}

pub async fn reconcile(backup: Arc<Backup>, ctx: Arc<Context>) -> Result<Action, Error> {
    super::measured(&ctx, CONTROLLER, reconcile_inner(&backup, &ctx)).await
}

async fn reconcile_inner(backup: &Backup, ctx: &Context) -> Result<Action, Error> {
    let step = next_step(backup);
    let namespace = backup.namespace().unwrap_or_else(|| "default".into());
    // NB: the tenant's database runs in that site's operator, which runs the backup.
    if matches!(step, Step::Run | Step::Interrupted)
        && ctx.tenant_elsewhere(&namespace, &backup.spec.tenant, None).await
    {
        return Ok(Action::requeue(super::ELSEWHERE));
    }
    match step {
        Step::Done => Ok(Action::await_change()),
        Step::Interrupted => {
            let api: Api<Backup> = Api::namespaced(ctx.client.clone(), &namespace);
            if !super::still_current(&api, backup).await.map_err(super::about(backup, "reading it again"))? {
                return Ok(Action::requeue(super::OUTDATED));
            }
            let message = "the operator stopped while this backup ran, so it did not finish; \
                           create a new Backup (copies it wrote stay in the repositories until forgotten)";
            let status = with_phase(backup, BackupPhase::Failed, "Interrupted", message.into(), Timestamp::now());
            write_status(ctx, backup, &status).await?;
            Ok(Action::await_change())
        }
        Step::Run => super::backup_run::run(ctx, backup).await,
        Step::Watch => super::backup_job::watch(ctx, backup).await,
    }
}

/// Writes `status` with server-side apply.
pub async fn write_status(ctx: &Context, backup: &Backup, status: &BackupStatus) -> Result<(), Error> {
    let namespace = backup.namespace().unwrap_or_else(|| "default".into());
    let api: Api<Backup> = Api::namespaced(ctx.client.clone(), &namespace);
    super::apply_status(&api, backup, status).await.map_err(super::about(backup, "writing its status"))
}

pub fn error_policy(backup: Arc<Backup>, error: &Error, _ctx: Arc<Context>) -> Action {
    super::retry_after_error(&backup.name_any(), error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::backup::{BackupSpec, BackupTrigger};

    fn backup(phase: Option<BackupPhase>) -> Backup {
        let mut backup = Backup::new(
            "acme-20261126-0100",
            BackupSpec { tenant: "acme".into(), trigger: BackupTrigger::Scheduled, repositories: vec![] },
        );
        backup.status = phase.map(|phase| BackupStatus { phase, ..BackupStatus::default() });
        backup
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    fn written(repository: &str, locked: bool) -> Attempt {
        Attempt {
            repository: repository.into(),
            provider: Some(Provider::Azure),
            locked_for: locked.then_some(Duration::from_secs(86_400)),
            result: Ok(Written { snapshot_id: "ab12".into(), bytes_total: 3 << 20, bytes_added: 1 << 20 }),
        }
    }

    fn refused(repository: &str) -> Attempt {
        Attempt { repository: repository.into(), provider: None, locked_for: None, result: Err("no such".into()) }
    }

    #[test]
    fn a_backup_runs_once_and_a_run_cut_short_is_not_run_again() {
        assert_eq!(next_step(&backup(None)), Step::Run);
        assert_eq!(next_step(&backup(Some(BackupPhase::Pending))), Step::Run);
        assert_eq!(next_step(&backup(Some(BackupPhase::Running))), Step::Interrupted);
        let mut as_job = backup(Some(BackupPhase::Running));
        as_job.status.as_mut().unwrap().job = Some("westpole-rome/invoicing/backup-acme".into());
        assert_eq!(next_step(&as_job), Step::Watch);
        for done in [BackupPhase::Succeeded, BackupPhase::PartiallySucceeded, BackupPhase::Failed] {
            assert_eq!(next_step(&backup(Some(done))), Step::Done);
        }
    }

    #[test]
    fn every_copy_written_is_a_success_with_sizes_and_lock_dates() {
        let mut b = backup(None);
        b.status = Some(with_phase(&b, BackupPhase::Running, "Running", "started".into(), at(100)));
        let status = finished(&b, &[written("a", true), written("b", false)], None, None, at(103));
        assert_eq!(status.phase, BackupPhase::Succeeded);
        assert_eq!(status.copies_summary.as_deref(), Some("2/2"));
        assert_eq!(status.size.as_deref(), Some("3.0 MiB"));
        assert_eq!(status.start_time, Some(Time(at(100))));
        assert_eq!(status.copies[0].immutable_until, Some(Time(at(103 + 86_400))));
        assert_eq!(status.copies[1].immutable_until, None);
        let ready = status.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!((ready.status.as_str(), ready.message.as_str()), ("True", "2 copies written in 3s"));
        // The host's clock set back 60 s while it ran.
        let status = finished(&b, &[written("a", true)], None, None, at(40));
        let ready = status.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.message, "1 copy written in 0s");
    }

    #[test]
    fn missing_copies_are_named_and_no_copy_is_a_failure() {
        let b = backup(None);
        let partial = finished(&b, &[written("a", false), refused("gone")], None, None, at(5));
        assert_eq!(partial.phase, BackupPhase::PartiallySucceeded);
        let ready = partial.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert!(ready.message.contains("1 of 2 copies written; gone: no such"), "{ready:?}");
        assert_eq!(partial.copies[1].error.as_deref(), Some("no such"));
        let none = finished(&b, &[refused("gone")], None, None, at(5));
        assert_eq!((none.phase, none.snapshot_id), (BackupPhase::Failed, None));
        let broken = finished(&b, &[written("a", false)], None, Some("pg_dump: connection refused"), at(5));
        assert_eq!(broken.phase, BackupPhase::Failed);
    }

    #[test]
    fn the_verification_counts_come_from_the_record() {
        let record: Record = serde_json::from_value(serde_json::json!({
            "tables": {"invoices": {"rows": 7, "sha256": "x"}, "receipts": {"rows": 2, "sha256": "y"}},
            "last_numbers": {}, "last_progressive": 7,
            "queue": {"pending": 3, "done": 4}, "receipts": {"RC": 2},
            "documents": {"count": 7, "sha256": "z"},
        }))
        .unwrap();
        let s = summary(&record);
        assert_eq!((s.tables, s.rows, s.invoices, s.documents), (2, 9, 7, 7));
        assert_eq!((s.pending_transmissions, s.receipts), (3, 2));
    }
}
