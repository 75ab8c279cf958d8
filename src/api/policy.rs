//! `BackupPolicy`: when tenants are backed up, how long backups are kept, and the
//! rules a set of copies must satisfy to count as protection.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Duration, Provider, conditions_schema, cron_schema, time_zone_schema};

/// Schedule, retention, repositories and the rules the copies must satisfy.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "fenice.io",
    version = "v1alpha1",
    kind = "BackupPolicy",
    status = "BackupPolicyStatus",
    shortname = "bpol",
    category = "fenice",
    doc = "Backup schedule, retention, repositories, and the rules that the copies must satisfy.",
    printcolumn(name = "Schedule", type_ = "string", json_path = ".spec.schedule"),
    printcolumn(name = "Repositories", type_ = "integer", json_path = ".status.repositories"),
    printcolumn(name = "Compliant", type_ = "integer", json_path = ".status.compliantTenants"),
    printcolumn(name = "Violating", type_ = "integer", json_path = ".status.violatingTenants"),
    printcolumn(name = "Last Run", type_ = "date", json_path = ".status.lastScheduleTime"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.rules.minCopies <= size(self.repositories)").message("rules.minCopies is above the number of repositories: add repositories or lower minCopies"),
    validation = Rule::new("self.rules.minDistinctProviders <= size(self.repositories)").message("rules.minDistinctProviders is above the number of repositories: every provider needs a repository of its own"),
)]
pub struct BackupPolicySpec {
    /// When backups run.
    #[schemars(schema_with = "cron_schema")]
    pub schedule: String,
    #[serde(default = "utc")]
    #[schemars(schema_with = "time_zone_schema")]
    pub time_zone: String,
    /// BackupRepository names; every run writes one copy to each.
    #[schemars(length(min = 1, max = 8))]
    pub repositories: Vec<String>,
    pub retention: Retention,
    #[serde(default)]
    pub rules: Rules,
    /// Continuous WAL archiving between scheduled backups, for an RPO of seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal_archiving: Option<WalArchiving>,
}

fn utc() -> String {
    "UTC".to_owned()
}

/// How many snapshots `forget` keeps. Store-side immutability keeps each one at
/// least for the repository's retention regardless.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Retention {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub keep_last: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_hourly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_daily: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_weekly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_monthly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_yearly: Option<u32>,
}

/// What a tenant's set of copies must satisfy; a violation is a False condition
/// and a Warning Event.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rules {
    /// Copies of the latest backup that must exist.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 8))]
    pub min_copies: u32,
    /// Distinct providers that must hold a copy (the primary's own never counts).
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 8))]
    pub min_distinct_providers: u32,
    /// No copy may live at the provider of the tenant's primary site.
    #[serde(default = "yes")]
    pub forbid_primary_provider: bool,
    /// Providers that may never hold a copy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub forbidden_providers: Vec<Provider>,
    /// At least one copy must sit in a repository whose immutability is in force.
    #[serde(default = "yes")]
    pub require_immutable: bool,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            min_copies: 1,
            min_distinct_providers: 1,
            forbid_primary_provider: true,
            forbidden_providers: Vec::new(),
            require_immutable: true,
        }
    }
}

fn one() -> u32 {
    1
}

fn yes() -> bool {
    true
}

/// WAL archiving settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WalArchiving {
    pub enabled: bool,
    /// PostgreSQL's archive_timeout: the longest a quiet WAL segment waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive_timeout: Option<Duration>,
}

/// Observed state of a policy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupPolicyStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repositories: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compliant_tenants: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub violating_tenants: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_schedule_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}
