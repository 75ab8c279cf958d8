//! `Restore`: one restore of a tenant from a repository, with verification
//! against the data recorded at backup time.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Duration, conditions_schema};

/// One restore of a tenant.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "fenice.io",
    version = "v1alpha1",
    kind = "Restore",
    namespaced,
    status = "RestoreStatus",
    shortname = "frs",
    category = "fenice",
    doc = "One restore of a tenant, verified against what its backup recorded.",
    printcolumn(name = "Tenant", type_ = "string", json_path = ".spec.tenant"),
    printcolumn(name = "Site", type_ = "string", json_path = ".spec.targetSite"),
    printcolumn(name = "Snapshot", type_ = "string", json_path = ".status.snapshotId"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Verified", type_ = "boolean", json_path = ".status.verified"),
    printcolumn(name = "Duration", type_ = "string", json_path = ".status.duration"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.pointInTime) && self.snapshot != 'latest')").message("pointInTime picks the snapshot itself: leave snapshot at latest"))]
pub struct RestoreSpec {
    /// The InvoicingTenant, in this namespace.
    pub tenant: String,
    /// The BackupRepository to read from.
    pub repository: String,
    /// A snapshot id, or `latest` (the newest verified snapshot of the tenant).
    #[serde(default = "latest")]
    #[schemars(regex(pattern = r"^(latest|[0-9a-f]{8,64})$"))]
    pub snapshot: String,
    /// Replay WAL up to this instant (RFC 3339) for point-in-time recovery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub point_in_time: Option<Time>,
    /// The Site to restore at; the tenant's active site when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_site: Option<String>,
    /// Restore into this namespace instead of the tenant's (side by side, not in place).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_namespace: Option<String>,
    /// Compare the restored data with the snapshot's recorded counts and checksums.
    #[serde(default = "yes")]
    pub verify: bool,
}

fn latest() -> String {
    "latest".to_owned()
}

fn yes() -> bool {
    true
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum RestorePhase {
    #[default]
    Pending,
    Restoring,
    Verifying,
    Succeeded,
    Failed,
}

/// Observed state of a restore.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreStatus {
    #[serde(default)]
    pub phase: RestorePhase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<Duration>,
    /// Every recorded count and checksum matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified: Option<bool>,
    /// What did not match, one line each (table or document and both values).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mismatches: Vec<String>,
    /// The copy and its Job at a Kubernetes site, as `site/namespace/name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// Time of the last write the restored data contains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_up_to: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}
