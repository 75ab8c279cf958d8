//! `InvoicingTenant`: one tenant's invoicing stack and how it is protected.

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Objectives, SecretKeyRef, Tier, conditions_schema, url_schema};

/// One tenant's stack (app, PostgreSQL, documents), its SdI channel at every
/// site, its tier and its recovery objectives.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "fenice.io",
    version = "v1alpha1",
    kind = "InvoicingTenant",
    namespaced,
    status = "InvoicingTenantStatus",
    shortname = "itenant",
    shortname = "tenant",
    category = "fenice",
    doc = "One tenant's invoicing stack: app, PostgreSQL, documents, SdI channel per site, tier, RPO/RTO objectives.",
    printcolumn(name = "Site", type_ = "string", json_path = ".status.activeSite"),
    printcolumn(name = "Tier", type_ = "string", json_path = ".spec.tier"),
    printcolumn(name = "Standby", type_ = "string", json_path = ".spec.standby"),
    printcolumn(name = "Last Backup", type_ = "date", json_path = ".status.lastBackupTime"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.sdi.channels.exists(c, c.site == self.primarySite)").message("sdi.channels needs a channel for the primarySite"),
    validation = Rule::new("self.sdi.channels.all(c, self.sdi.channels.exists_one(d, d.site == c.site))").message("sdi.channels: one channel per site"),
)]
pub struct InvoicingTenantSpec {
    /// The tenant's legal name.
    #[schemars(length(min = 1, max = 200))]
    pub display_name: String,
    /// Italian VAT number (partita IVA), 11 digits; it names the FatturaPA files
    /// (`IT<vatNumber>_<progressive>.xml`).
    #[schemars(regex(pattern = r"^[0-9]{11}$"))]
    pub vat_number: String,
    /// FPR12 for business customers, FPA12 for public administration.
    #[serde(default = "fpr12")]
    pub invoice_format: InvoiceFormat,
    pub tier: Tier,
    /// The Site that serves this tenant in normal operation.
    pub primary_site: String,
    /// What runs for this tenant at the standby site.
    #[serde(default = "cold")]
    pub standby: StandbyMode,
    pub objectives: Objectives,
    /// The BackupPolicy that protects this tenant.
    pub backup_policy: String,
    #[serde(default)]
    pub app: AppSettings,
    #[serde(default)]
    pub database: DatabaseSettings,
    #[serde(default)]
    pub documents: DocumentSettings,
    pub sdi: SdiSettings,
}

fn fpr12() -> InvoiceFormat {
    InvoiceFormat::Fpr12
}

fn cold() -> StandbyMode {
    StandbyMode::Cold
}

/// FatturaPA transmission format (schema 1.2.3).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum InvoiceFormat {
    /// Between private parties.
    #[serde(rename = "FPR12")]
    Fpr12,
    /// To a public administration.
    #[serde(rename = "FPA12")]
    Fpa12,
}

/// What runs at the standby site.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum StandbyMode {
    /// Nothing; a failover restores from the repositories.
    Cold,
    /// A PostgreSQL replaying WAL from the repositories; a failover promotes it.
    Warm,
    /// A PostgreSQL streaming from the primary, which confirms a commit only
    /// once it holds it: a failover promotes it and loses nothing; while it is
    /// away, commits wait. Between Local sites only.
    Synchronous,
}

/// The reference invoicing app.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppSettings {
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 20))]
    pub replicas: i32,
    /// Overrides the resources that follow from the tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Host name the tenant is served at, inside the site's DNS zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$"))]
    pub host: Option<String>,
}

impl Default for AppSettings {
    fn default() -> Self {
        Self { replicas: 1, resources: None, host: None }
    }
}

fn one() -> i32 {
    1
}

/// The tenant's PostgreSQL.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseSettings {
    #[serde(default = "ten_gi")]
    pub storage: Quantity,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self { storage: ten_gi() }
    }
}

fn ten_gi() -> Quantity {
    Quantity("10Gi".to_owned())
}

/// The volume for invoice XML files and receipts.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DocumentSettings {
    #[serde(default = "ten_gi")]
    pub storage: Quantity,
}

impl Default for DocumentSettings {
    fn default() -> Self {
        Self { storage: ten_gi() }
    }
}

/// The tenant's transmission to SdI.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SdiSettings {
    /// The accredited channel at each site, prepared before the day it is needed.
    #[schemars(length(min = 1, max = 8))]
    pub channels: Vec<SdiChannel>,
}

/// An accredited SdI channel as configured at one site.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SdiChannel {
    /// The Site this channel is configured at.
    pub site: String,
    pub kind: SdiChannelKind,
    /// The endpoint invoices are sent to.
    #[schemars(schema_with = "url_schema")]
    pub endpoint: String,
    /// Production (the real SdI) or Test. Drills refuse a Production endpoint.
    pub environment: SdiEnvironment,
    /// The client certificate and key of the accreditation (PEM, in a Secret).
    pub certificate_secret_ref: SecretKeyRef,
    pub private_key_secret_ref: SecretKeyRef,
}

/// The accredited channel type.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SdiChannelKind {
    #[serde(rename = "SDICoop")]
    SdiCoop,
    #[serde(rename = "SDIFTP")]
    SdiFtp,
    #[serde(rename = "PEC")]
    Pec,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SdiEnvironment {
    Production,
    Test,
}

/// Where a failover moved a tenant.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Serving {
    pub site: String,
    /// The fencing epoch the app runs under there (SdI refuses older ones).
    pub epoch: u64,
    /// The Failover that moved it.
    pub failover: String,
}

/// Observed state of a tenant.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InvoicingTenantStatus {
    /// The Site serving the tenant now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_site: Option<String>,
    /// Where the tenant's warm standby runs (spec.standby Warm, at a FailoverPlan's target site).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby_site: Option<String>,
    /// Where the tenant's database listens (HOST:PORT) at the Local site
    /// that serves it: a synchronous standby at another Local site streams
    /// from it. Local sites trust their loopback links, so it holds no secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_database: Option<String>,
    /// The fencing epoch the tenant's sender carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// Where a failover moved the tenant: the site that serves it and the
    /// epoch its app runs under there. Written by failovers (field manager
    /// `fenice-failover`); absent, the tenant is served at `spec.primarySite`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving: Option<Serving>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup_time: Option<Time>,
    /// Name of the last successful Backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_drill_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_drill_passed: Option<bool>,
    /// Earliest expiry among the tenant's channel certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_expiry: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}
