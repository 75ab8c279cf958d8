//! `Drill`: an isolated restore of a sample of tenants at the standby, verified
//! and measured, then torn down.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Duration, TenantRef, Tier, conditions_schema, url_schema};

/// One drill of a plan.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "fenice.io",
    version = "v1alpha1",
    kind = "Drill",
    status = "DrillStatus",
    shortname = "fdrill",
    category = "fenice",
    doc = "One drill: isolated restore at the standby, verification, measured RTO/RPO, report.",
    printcolumn(name = "Plan", type_ = "string", json_path = ".spec.plan"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Passed", type_ = "string", json_path = ".status.passed"),
    printcolumn(name = "RTO", type_ = "string", json_path = ".status.rto"),
    printcolumn(name = "RPO", type_ = "string", json_path = ".status.rpo"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct DrillSpec {
    /// The FailoverPlan whose target site the drill restores at.
    pub plan: String,
    pub sample: Sample,
    /// The SdI endpoint the restored apps send to: a simulator or SdI's test
    /// environment. A drill refuses an endpoint declared Production anywhere.
    #[schemars(schema_with = "url_schema")]
    pub sdi_test_endpoint: String,
    /// Keep the isolated copy this long after verification, for inspection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_for: Option<Duration>,
    /// At a Kubernetes site: the namespace the copies go to, one where the
    /// site's Role is bound (default: each tenant's own namespace there). The
    /// copies are isolated by their NetworkPolicy either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
}

/// Which tenants a drill restores: exactly one of `percent`, `tiers`, `tenants` or `all`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.percent) || (self.percent >= 1 && self.percent <= 100)").message("sample.percent must be between 1 and 100"),
    validation = Rule::new("[has(self.percent), has(self.tiers), has(self.tenants), has(self.all) && self.all].filter(x, x).size() == 1").message("sample: set exactly one of percent, tiers, tenants or all: true"),
)]
pub struct Sample {
    /// A random sample of this share of the plan's tenants, at least one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 3))]
    pub tiers: Option<Vec<Tier>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1000))]
    pub tenants: Option<Vec<TenantRef>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all: Option<bool>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default, JsonSchema)]
pub enum DrillPhase {
    #[default]
    Pending,
    /// Creating the isolated place at the standby.
    Preparing,
    Restoring,
    Verifying,
    TearingDown,
    Passed,
    Failed,
}

/// Observed state of a drill.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrillStatus {
    #[serde(default)]
    pub phase: DrillPhase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    #[serde(default)]
    pub tenants_total: u32,
    #[serde(default)]
    pub tenants_passed: u32,
    #[serde(default)]
    pub tenants_failed: u32,
    /// `passed/total`, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passed: Option<String>,
    /// The worst measured RTO in the sample.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rto: Option<Duration>,
    /// The worst measured RPO in the sample.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpo: Option<Duration>,
    /// Tenants whose objectives were missed or whose verification failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000))]
    pub failures: Vec<DrillFailure>,
    /// What the drill did and measured for each tenant, for the report.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000))]
    pub results: Vec<DrillTenantResult>,
    /// Where the full report is, e.g. `fenice drill report <name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<String>,
    /// The plan's target site when the drill started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// The tenants drawn for this drill, in the order they are drilled (at a
    /// Kubernetes site, where a drill spans many reconciles).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000))]
    pub sample: Vec<TenantRef>,
    /// Copies being restored now at a Kubernetes site.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000))]
    pub copies: Vec<DrillCopy>,
    /// With `spec.keepFor`: the copies that served run until then, for
    /// inspection (their addresses in `results[].copy`); deleting the Drill
    /// stops them sooner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept_until: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}

/// A tenant's copy being restored at a Kubernetes site.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrillCopy {
    pub tenant: TenantRef,
    /// `<site>/<namespace>/<name>`: the copy's StatefulSet and Job there.
    pub copy: String,
    /// When the copy was made: where its RTO is measured from.
    pub start_time: Time,
    /// Its Job was made (a Job gone after that did not finish).
    #[serde(default)]
    pub job: bool,
}

/// One tenant's part of a drill: when, what was restored, what was measured
/// against which objectives, and the verdict.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrillTenantResult {
    pub tenant: TenantRef,
    pub passed: bool,
    /// When its restore started and when its copy was torn down.
    pub start_time: Time,
    pub end_time: Time,
    /// From the start of its restore until its app served, in milliseconds.
    pub rto_millis: u64,
    /// The age of the restored backup when the drill started, in seconds.
    pub rpo_seconds: u64,
    pub objectives: super::common::Objectives,
    /// The snapshot restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What passed but needs attention (a backup object found written over
    /// at its store, a channel certificate close to expiry).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// The invoice the copy issued (with the number that should come next)
    /// and transmitted to the test endpoint: series/number and SdI's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_invoice: Option<String>,
    /// The copy's app address while it is kept (`spec.keepFor`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy: Option<String>,
}

/// One tenant that failed a drill, and why.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrillFailure {
    pub tenant: TenantRef,
    pub reason: String,
}
