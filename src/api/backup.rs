//! `Backup`: one backup run of a tenant, written to every repository of its
//! policy, with the copies and verification data it produced.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Provider, conditions_schema};

/// One backup run of a tenant.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "fenice.io",
    version = "v1alpha1",
    kind = "Backup",
    namespaced,
    status = "BackupStatus",
    shortname = "fbk",
    category = "fenice",
    doc = "One backup run of a tenant, with its copies and measured results.",
    printcolumn(name = "Tenant", type_ = "string", json_path = ".spec.tenant"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Copies", type_ = "string", json_path = ".status.copiesSummary"),
    printcolumn(name = "Snapshot", type_ = "string", json_path = ".status.snapshotId"),
    printcolumn(name = "Size", type_ = "string", json_path = ".status.size"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct BackupSpec {
    /// The InvoicingTenant, in this namespace.
    pub tenant: String,
    /// Why the backup runs.
    #[serde(default = "manual")]
    pub trigger: BackupTrigger,
    /// Repositories to write to; the tenant's policy's when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub repositories: Vec<String>,
}

fn manual() -> BackupTrigger {
    BackupTrigger::Manual
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum BackupTrigger {
    /// Created by a BackupPolicy's schedule.
    Scheduled,
    /// Created by a person.
    Manual,
    /// Taken before a planned failover or failback.
    PreFailover,
}

/// Where a run is.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum BackupPhase {
    #[default]
    Pending,
    Running,
    Succeeded,
    /// Some copies were written, not all: the policy's rules decide if that is enough.
    PartiallySucceeded,
    Failed,
}

/// Observed state of a backup run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupStatus {
    #[serde(default)]
    pub phase: BackupPhase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// The snapshot id (the same in every repository).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    /// The Job running this backup at a Kubernetes site, as `site/namespace/name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// One entry per repository written to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub copies: Vec<BackupCopy>,
    /// `written/wanted`, e.g. `2/2`, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copies_summary: Option<String>,
    /// Logical size of the backed-up data, e.g. `1.2 GiB`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_total: Option<u64>,
    /// New bytes stored after deduplication and compression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_added: Option<u64>,
    /// What the snapshot records for verifying a restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<VerificationSummary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}

/// One copy of a backup.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupCopy {
    pub repository: String,
    /// The BackupRepository's provider; absent when the repository was not found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<Provider>,
    pub written: bool,
    /// Until when the store refuses to delete it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub immutable_until: Option<Time>,
    /// Why the copy was not written. Never holds credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Counts recorded in a snapshot so a restore can be compared with it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerificationSummary {
    pub tables: u32,
    pub rows: u64,
    pub documents: u64,
    pub invoices: u64,
    pub pending_transmissions: u64,
    pub receipts: u64,
}
