//! `Failover`: one execution of a FailoverPlan, with per-tenant progress and the
//! measured RTO and RPO. Its status is the persisted state of the resumable
//! failover state machine at a Kubernetes site.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Duration, TenantRef, conditions_schema};

/// One execution of a plan: manual, automatic, or a failback.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "fenice.io",
    version = "v1alpha1",
    kind = "Failover",
    status = "FailoverStatus",
    shortname = "fo",
    category = "fenice",
    doc = "One execution of a FailoverPlan (manual, automatic, or failback), with per-tenant progress and measured RTO/RPO.",
    printcolumn(name = "Plan", type_ = "string", json_path = ".spec.plan"),
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mode"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Done/Total", type_ = "string", json_path = ".status.done"),
    printcolumn(name = "Epoch", type_ = "integer", json_path = ".status.epoch", priority = 1),
    printcolumn(name = "RTO", type_ = "string", json_path = ".status.rto"),
    printcolumn(name = "RPO", type_ = "string", json_path = ".status.rpo"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct FailoverSpec {
    /// The FailoverPlan to execute.
    pub plan: String,
    pub mode: FailoverTrigger,
    /// Why: shown in Events and the report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub reason: Option<String>,
    /// Set to true to stop after the step in progress; tenants already moved stay moved.
    #[serde(default)]
    pub abort: bool,
    /// Waves a person has approved, for waves whose gate requires approval.
    #[serde(default)]
    pub approved_waves: u32,
    /// When the source was lost, if known before this object was made: the
    /// detection, for an automatic failover; for a person's, the time the
    /// provider's status page gives. RTO is counted and RPO measured from it;
    /// the object's creation time when absent (or later than it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_time: Option<Time>,
}

/// Who started the failover, and in which direction.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum FailoverTrigger {
    /// A person, source to target.
    Manual,
    /// The standby's operator, after detection and lease expiry.
    Automatic,
    /// A person, target back to source, planned and unhurried.
    Failback,
}

/// The steps of a failover, in order.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default, JsonSchema)]
pub enum FailoverPhase {
    #[default]
    Pending,
    /// Stopping writes and SdI sends at the source, taking the lease.
    Fencing,
    /// Restoring each tenant's latest verified state at the target.
    Restoring,
    /// Reconciling the SdI queue with what SdI already received.
    Reconciling,
    Starting,
    /// Pointing endpoints and SdI channels at the target.
    Switching,
    Verifying,
    Succeeded,
    Failed,
    Aborted,
}

/// Observed state of a failover.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailoverStatus {
    #[serde(default)]
    pub phase: FailoverPhase,
    /// The fencing epoch this failover took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// When the source was declared lost: where RTO is measured from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub declared_loss_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Index of the wave in progress, from 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_wave: Option<u32>,
    #[serde(default)]
    pub tenants_total: u32,
    #[serde(default)]
    pub tenants_done: u32,
    #[serde(default)]
    pub tenants_failed: u32,
    /// `done/total`, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done: Option<String>,
    /// The worst RTO among tenants done so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rto: Option<Duration>,
    /// The worst RPO among tenants done so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpo: Option<Duration>,
    /// Tenants in progress or failed. Finished tenants are counted above and listed
    /// in the report, which keeps this object small with tens of thousands of tenants.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 2000))]
    pub tenants: Vec<TenantProgress>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}

/// Where one tenant is.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantProgress {
    pub tenant: TenantRef,
    pub wave: u32,
    pub phase: FailoverPhase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
