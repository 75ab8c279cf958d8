//! `FailoverPlan`: which tenants move from which site to which, how loss is
//! detected, the witness, the waves and the drill schedule.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Duration, Tier, conditions_schema, cron_schema, time_zone_schema, url_schema};
use super::drill::Sample;

/// A prepared failover: source and target sites, tenants, detection thresholds,
/// witness, waves by tier, and the drills that prove it.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "fenice.io",
    version = "v1alpha1",
    kind = "FailoverPlan",
    status = "FailoverPlanStatus",
    shortname = "fplan",
    category = "fenice",
    doc = "Which tenants fail over from which site to which, automatically or not, with detection thresholds, witness, waves and drill schedule.",
    printcolumn(name = "Source", type_ = "string", json_path = ".spec.sourceSite"),
    printcolumn(name = "Target", type_ = "string", json_path = ".spec.targetSite"),
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mode"),
    printcolumn(name = "Tenants", type_ = "integer", json_path = ".status.tenants"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Last Drill", type_ = "date", json_path = ".status.lastDrillTime"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.sourceSite != self.targetSite").message("sourceSite and targetSite must differ"),
    validation = Rule::new("self.mode != 'Automatic' || has(self.witness)").message("an Automatic plan needs a witness: without one two sites could both take writes"),
    validation = Rule::new("self.waves.all(w, self.waves.exists_one(v, v.name == w.name))").message("wave names must be unique"),
)]
pub struct FailoverPlanSpec {
    /// The Site tenants normally run at.
    pub source_site: String,
    /// The Site they move to.
    pub target_site: String,
    /// Which tenants the plan moves.
    pub tenants: TenantSelection,
    /// Manual: a person creates the Failover. Automatic: the standby creates it when
    /// the source is down and the witness lease has expired.
    pub mode: FailoverMode,
    #[serde(default)]
    pub detection: Detection,
    /// The lease that makes two active sites impossible. Required when Automatic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub witness: Option<Witness>,
    /// Tenants move in this order, one wave after the other.
    #[schemars(length(min = 1, max = 10))]
    pub waves: Vec<Wave>,
    /// Drills that prove the plan, on a schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drills: Option<DrillSchedule>,
}

/// Which tenants a plan covers: those matching the label selector, in the listed
/// namespaces (all namespaces when empty).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantSelection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub namespaces: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum FailoverMode {
    Manual,
    Automatic,
}

/// When the source counts as down.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Detection {
    /// Failed probes in a row before a vantage point calls the source down.
    #[serde(default = "three")]
    #[schemars(range(min = 1, max = 100))]
    pub failure_threshold: u32,
    /// The failures must span at least this long.
    #[serde(default = "one_minute")]
    pub window: Duration,
    /// Vantage points that must agree: the standby's probes, the witness's view
    /// of the lease renewals, and each lookout posting in the witness
    /// (`fenice failover witness lookout`).
    #[serde(default = "two")]
    #[schemars(range(min = 1, max = 5))]
    pub min_vantage_points: u32,
}

impl Default for Detection {
    fn default() -> Self {
        Self { failure_threshold: three(), window: one_minute(), min_vantage_points: two() }
    }
}

fn two() -> u32 {
    2
}

fn three() -> u32 {
    3
}

fn one_minute() -> Duration {
    Duration::from_std(std::time::Duration::from_secs(60))
}

/// The witness lease.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Witness {
    /// A Site whose role is Witness, at a third provider.
    pub site: String,
    /// How long a lease holds without renewal.
    #[serde(default = "thirty_seconds")]
    pub lease_duration: Duration,
    /// How often the active site renews; it fences itself if it cannot renew
    /// before the lease would expire.
    #[serde(default = "ten_seconds")]
    pub renew_interval: Duration,
}

fn thirty_seconds() -> Duration {
    Duration::from_std(std::time::Duration::from_secs(30))
}

fn ten_seconds() -> Duration {
    Duration::from_std(std::time::Duration::from_secs(10))
}

/// A group of tenants that fail over together.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Wave {
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// Tenants of these tiers go in this wave.
    #[schemars(length(min = 1, max = 3))]
    pub tiers: Vec<Tier>,
    /// Tenants restored at the same time.
    #[serde(default = "four")]
    #[schemars(range(min = 1, max = 1000))]
    pub parallelism: u32,
    /// What must hold before the next wave starts.
    #[serde(default)]
    pub gate: Gate,
}

fn four() -> u32 {
    4
}

/// The check between waves.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Gate {
    /// Failed tenants tolerated in this wave before the failover stops for a person.
    #[serde(default)]
    pub max_failed_tenants: u32,
    /// Wait for a person to set `spec.approvedWaves` on the Failover.
    #[serde(default)]
    pub require_approval: bool,
}

/// Scheduled drills of this plan.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrillSchedule {
    #[schemars(schema_with = "cron_schema")]
    pub schedule: String,
    #[serde(default = "utc")]
    #[schemars(schema_with = "time_zone_schema")]
    pub time_zone: String,
    pub sample: Sample,
    /// Test endpoint the drill's SdI channel points at (never a production one).
    #[schemars(schema_with = "url_schema")]
    pub sdi_test_endpoint: String,
}

fn utc() -> String {
    "UTC".to_owned()
}

/// Whether a site may serve the plan's tenants, as its lease agent says.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SiteStanding {
    pub site: String,
    pub standing: Standing,
    /// The epoch the site is active under; when Fenced, the epoch it was last
    /// active under (absent if never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// When the standing last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
}

/// A site's standing under the witness lease.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum Standing {
    /// Holds the lease: may write and transmit to SdI.
    Active,
    /// Must not write nor transmit: it does not hold the lease, or could not renew it.
    Fenced,
}

/// The `sites` list, merged by `site` under server-side apply so that each
/// site's agent owns its own entry.
fn standings_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = generator.subschema_for::<Vec<SiteStanding>>();
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert("x-kubernetes-list-map-keys".into(), serde_json::json!(["site"]));
    schema
}

/// Observed state of a plan.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailoverPlanStatus {
    /// Tenants the plan covers now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenants: Option<u32>,
    /// Which site holds the witness lease, and in which epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_holder: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// A failover is handing the lease from the holder to this site: the
    /// plan's tenants are served nowhere until it has taken the lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handover: Option<String>,
    /// What each site's lease agent says of its site (`fenice operator
    /// --site`): a site serves the plan's tenants only while Active. Each
    /// agent applies its own entry (field manager `fenice-lease-<site>`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "standings_schema")]
    pub sites: Vec<SiteStanding>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failover: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_drill_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_drill_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}
