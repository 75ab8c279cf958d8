//! `BackupRepository`: an object-storage location that holds encrypted,
//! deduplicated and (where the store allows) immutable tenant backups.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Duration, Provider, SecretKeyRef, StoreLocation, conditions_schema};

/// An object-storage location for backups: S3, Azure Blob or a filesystem, its
/// provider, credentials and immutability window.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "fenice.io",
    version = "v1alpha1",
    kind = "BackupRepository",
    status = "BackupRepositoryStatus",
    shortname = "brepo",
    category = "fenice",
    doc = "An object-storage location for encrypted, immutable backups, at a provider other than the primary's.",
    printcolumn(name = "Provider", type_ = "string", json_path = ".spec.provider"),
    printcolumn(name = "Type", type_ = "string", json_path = ".spec.storage.type"),
    printcolumn(name = "Reachable", type_ = "boolean", json_path = ".status.reachable"),
    printcolumn(name = "Immutable", type_ = "boolean", json_path = ".status.immutabilityInForce"),
    printcolumn(name = "Retention", type_ = "string", json_path = ".spec.immutability.retention"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!self.immutability.enabled || self.storage.type != 'Filesystem'").message("a Filesystem repository cannot be immutable: use S3 with Object Lock or Azure Blob with version-level immutability, or set immutability.enabled: false"))]
pub struct BackupRepositorySpec {
    /// The provider that runs the store: the failure domain that policies count.
    pub provider: Provider,
    /// Where the repository's objects live.
    pub storage: StoreLocation,
    /// Retention enforced by the store itself, so that neither ransomware nor the
    /// operator's own credentials can delete a backup inside the window.
    pub immutability: Immutability,
    /// The repository passphrase that unwraps the master key. The offline recovery
    /// key is never given to the cluster.
    pub password_secret_ref: SecretKeyRef,
}

/// Store-enforced retention.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!self.enabled || has(self.retention)").message("immutability.enabled needs a retention, e.g. 30d"))]
pub struct Immutability {
    pub enabled: bool,
    /// How long each object stays undeletable (S3 Object Lock in COMPLIANCE mode,
    /// Azure version-level immutability).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Duration>,
}

/// What the last probe of the repository found.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupRepositoryStatus {
    /// The store answered the last probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reachable: Option<bool>,
    /// A probe object was written and its retention read back from the store:
    /// immutability checked at the store, not read from this spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub immutability_in_force: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_probe_time: Option<Time>,
    /// Snapshots the repository holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshots: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}
