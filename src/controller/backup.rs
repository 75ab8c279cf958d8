//! The Backup controller, so far only honest: it does not run backups yet
//! (`fenice agent backup` does, by hand or in the lab), and says so on every
//! Backup it sees, once, as a False `Ready` condition with phase Pending.

use std::sync::Arc;

use jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};

use super::{Context, FIELD_MANAGER};
use crate::api::backup::{Backup, BackupPhase, BackupStatus};
use crate::api::condition::{self, Observed};

pub const CONTROLLER: &str = "backup";
pub const NOT_RUN: &str = "NotRunByOperator";

#[derive(Debug, thiserror::Error)]
#[error("Backup {namespace}/{name}: writing its status")]
pub struct Error {
    namespace: String,
    name: String,
    #[source]
    source: kube::Error,
}

/// The status that says this Backup will not run here yet; `None` when it says so already.
pub fn not_run_status(backup: &Backup, now: Timestamp) -> Option<BackupStatus> {
    let old = backup.status.clone().unwrap_or_default();
    if old.conditions.iter().any(|c| c.reason == NOT_RUN) || old.phase != BackupPhase::Pending {
        return None;
    }
    let observed = Observed {
        type_: condition::types::READY,
        status: false,
        reason: NOT_RUN,
        message: "this operator does not run Backups yet: take the backup with `fenice agent backup` \
                  (docs/tenant-backup.md)"
            .into(),
    };
    let conditions = condition::set(&old.conditions, observed, backup.metadata.generation, now);
    Some(BackupStatus { observed_generation: backup.metadata.generation, conditions, ..old })
}

pub async fn reconcile(backup: Arc<Backup>, ctx: Arc<Context>) -> Result<Action, Error> {
    super::measured(&ctx, CONTROLLER, reconcile_inner(&backup, &ctx)).await
}

async fn reconcile_inner(backup: &Backup, ctx: &Context) -> Result<Action, Error> {
    let Some(status) = not_run_status(backup, Timestamp::now()) else { return Ok(Action::await_change()) };
    let namespace = backup.namespace().unwrap_or_else(|| "default".into());
    let api: Api<Backup> = Api::namespaced(ctx.client.clone(), &namespace);
    let patch = serde_json::json!({"apiVersion": "fenice.io/v1alpha1", "kind": "Backup", "status": status});
    api.patch_status(&backup.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map_err(|source| Error { namespace, name: backup.name_any(), source })?;
    Ok(Action::await_change())
}

pub fn error_policy(backup: Arc<Backup>, error: &Error, _ctx: Arc<Context>) -> Action {
    super::retry_after_error(&backup.name_any(), error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::backup::{BackupSpec, BackupTrigger};

    #[test]
    fn a_pending_backup_is_told_once_that_it_does_not_run_here() {
        let mut backup = Backup::new(
            "acme-20261126-0100",
            BackupSpec { tenant: "acme".into(), trigger: BackupTrigger::Scheduled, repositories: vec![] },
        );
        let status = not_run_status(&backup, Timestamp::UNIX_EPOCH).unwrap();
        assert_eq!(status.phase, BackupPhase::Pending);
        assert_eq!(status.conditions[0].reason, NOT_RUN);
        backup.status = Some(status);
        assert_eq!(not_run_status(&backup, Timestamp::UNIX_EPOCH), None, "said once");
        backup.status = Some(BackupStatus { phase: BackupPhase::Succeeded, ..BackupStatus::default() });
        assert_eq!(not_run_status(&backup, Timestamp::UNIX_EPOCH), None, "someone ran it");
    }
}
