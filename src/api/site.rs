//! `Site`: a cloud location that runs (or can run) the invoicing stack, or that
//! holds the failover witness.

use k8s_openapi::api::core::v1::Toleration;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Duration, Provider, SecretKeyRef, StoreLocation, conditions_schema, url_schema};

/// A cloud location: its provider (the failure domain), region, how its cluster is
/// reached, how its health is probed, and what differs between providers when the
/// stack is deployed there.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "fenice.io",
    version = "v1alpha1",
    kind = "Site",
    status = "SiteStatus",
    shortname = "fsite",
    category = "fenice",
    doc = "A cloud location: provider (the failure domain), region, how to reach its cluster, health probes.",
    printcolumn(name = "Provider", type_ = "string", json_path = ".spec.provider"),
    printcolumn(name = "Region", type_ = "string", json_path = ".spec.region"),
    printcolumn(name = "Role", type_ = "string", json_path = ".spec.role"),
    printcolumn(name = "Active", type_ = "boolean", json_path = ".status.active"),
    printcolumn(name = "Healthy", type_ = "boolean", json_path = ".status.healthy"),
    printcolumn(name = "Epoch", type_ = "integer", json_path = ".status.epoch", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.role == 'Witness' ? has(self.witnessStore) : has(self.cluster)").message("a Witness site needs witnessStore; a Primary or Standby site needs cluster"),
    validation = Rule::new("self.role != 'Witness' || !has(self.cluster)").message("a Witness site runs no stack: remove cluster"),
)]
pub struct SiteSpec {
    /// The provider: sites of one provider are one failure domain.
    pub provider: Provider,
    /// The provider's region or data centre, e.g. `italynorth`, `rome`.
    #[schemars(length(min = 1, max = 63))]
    pub region: String,
    /// The declared role. Which site is active right now is in status.
    pub role: SiteRole,
    /// How to reach the site's cluster (Primary and Standby sites).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterAccess>,
    /// The object store that holds the failover lease (Witness sites).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub witness_store: Option<StoreLocation>,
    /// How the site's health is probed from other vantage points.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthProbes>,
    /// What differs between providers when a tenant's stack is deployed here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

/// The role a site is declared for.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SiteRole {
    /// Serves the tenants in normal operation.
    Primary,
    /// Ready to take over; drills restore here.
    Standby,
    /// Holds the failover lease at a third provider and runs no stack.
    Witness,
}

/// How the operator drives a site.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Driver {
    /// A Kubernetes cluster.
    Kubernetes,
    /// Processes on the operator's own machine (the lab).
    Local,
}

/// How to reach a site's cluster.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.driver != 'Kubernetes' || self.inCluster || has(self.kubeconfigSecretRef)").message("a Kubernetes site needs inCluster: true or a kubeconfigSecretRef"))]
pub struct ClusterAccess {
    pub driver: Driver,
    /// The site is the cluster the operator itself runs in.
    #[serde(default)]
    pub in_cluster: bool,
    /// A kubeconfig for a remote cluster, kept in a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig_secret_ref: Option<SecretKeyRef>,
}

/// Health probes of a site, run from every other site and the witness.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthProbes {
    /// HTTP endpoints that answer 2xx while the site serves.
    #[schemars(length(min = 1, max = 16))]
    pub endpoints: Vec<ProbeEndpoint>,
    #[serde(default = "default_probe_interval")]
    pub interval: Duration,
    #[serde(default = "default_probe_timeout")]
    pub timeout: Duration,
}

fn default_probe_interval() -> Duration {
    Duration::from_std(std::time::Duration::from_secs(10))
}

fn default_probe_timeout() -> Duration {
    Duration::from_std(std::time::Duration::from_secs(3))
}

/// One probed endpoint.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProbeEndpoint {
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    #[schemars(schema_with = "url_schema")]
    pub url: String,
}

/// Provider differences, and only those: the same tenant deploys unchanged on
/// any site.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.dnsSwitch) || self.dnsSwitch != 'DnsEndpoint' || has(self.dnsTarget)").message("dnsSwitch: DnsEndpoint needs dnsTarget, the load balancer's host name or address that tenant host names point at"))]
pub struct Platform {
    /// StorageClass for PostgreSQL and document volumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<String>,
    /// How tenants are exposed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposure: Option<Exposure>,
    /// DNS zone that tenant host names live in, e.g. `fatture.example.it`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_zone: Option<String>,
    /// How DNS records are switched on failover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_switch: Option<DnsSwitch>,
    /// What tenant host names point at here, for `dnsSwitch: DnsEndpoint`: the
    /// load balancer's host name (a CNAME) or IPv4 address (an A record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub dns_target: Option<String>,
    /// Registry that images are pulled from at this site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_registry: Option<String>,
    /// What runs tenants' PostgreSQL here: a StatefulSet (the default), or a
    /// CloudNativePG `Cluster` where that operator is installed (docs/sites.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<DatabaseKind>,
    /// Node labels the stack's pods must match.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub node_selector: std::collections::BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
}

impl Site {
    /// Whether tenants' PostgreSQL here is a CloudNativePG Cluster.
    pub fn cloud_native_pg(&self) -> bool {
        self.spec.platform.as_ref().is_some_and(|p| p.database == Some(DatabaseKind::CloudNativePg))
    }
}

/// What runs tenants' PostgreSQL at a site.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum DatabaseKind {
    /// A StatefulSet of Fenice's PostgreSQL image, archiving WAL into the tenant's repositories.
    StatefulSet,
    /// A CloudNativePG `Cluster`: its operator runs PostgreSQL, and its WAL archiving is its own.
    #[serde(rename = "CloudNativePG")]
    CloudNativePg,
}

/// Ingress or Gateway API.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.kind == 'Ingress' ? has(self.ingressClassName) : has(self.gatewayRef)").message("exposure: Ingress needs ingressClassName, HTTPRoute needs gatewayRef"))]
pub struct Exposure {
    pub kind: ExposureKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_class_name: Option<String>,
    /// Gateway as `namespace/name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z0-9-]+/[a-z0-9-]+$"))]
    pub gateway_ref: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ExposureKind {
    Ingress,
    #[serde(rename = "HTTPRoute")]
    HttpRoute,
}

/// How a tenant's DNS record is pointed at this site.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum DnsSwitch {
    /// external-dns annotations on the Ingress or HTTPRoute.
    ExternalDnsAnnotation,
    /// An external-dns `DNSEndpoint` object.
    DnsEndpoint,
    /// Records are switched outside Fenice; the runbook says how.
    Manual,
}

/// Observed state of a site.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SiteStatus {
    /// Whether the site serves tenants now (holds the witness lease).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<bool>,
    /// Whether enough vantage points see the site healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy: Option<bool>,
    /// Failed probes in a row, from this operator's vantage point.
    #[serde(default)]
    pub consecutive_failures: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_probe_time: Option<Time>,
    /// The fencing epoch this site last held or saw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}
