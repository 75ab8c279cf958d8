//! The kinds the server knows: a fixed set of built-in ones, stored as JSON
//! without a schema, and one per CustomResourceDefinition, checked against
//! its openAPIV3Schema.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceColumnDefinition, CustomResourceDefinition, JSONSchemaProps,
};

use super::status::{ApiError, Cause};

/// The group of CustomResourceDefinitions.
pub const APIEXTENSIONS: &str = "apiextensions.k8s.io";

/// One served resource (`invoicingtenants.fenice.io`).
#[derive(Clone, Debug)]
pub struct Resource {
    /// `""` for the core group.
    pub group: String,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub list_kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub versions: Vec<Version>,
    /// Whether objects carry `metadata.generation` (custom resources and
    /// kinds with a spec do; ConfigMaps and Secrets do not).
    pub generation: bool,
    /// Defined by a CustomResourceDefinition (validated, pruned, defaulted).
    pub custom: bool,
}

/// One served version of a resource.
#[derive(Clone, Debug)]
pub struct Version {
    pub name: String,
    /// The structural schema; `None` for built-in kinds.
    pub schema: Option<Arc<JSONSchemaProps>>,
    /// Whether the version has a `status` subresource.
    pub status: bool,
    pub printer_columns: Vec<CustomResourceColumnDefinition>,
}

impl Resource {
    /// `fenice.io/v1alpha1`, or `v1` for the core group.
    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() { version.to_owned() } else { format!("{}/{version}", self.group) }
    }

    pub fn version(&self, name: &str) -> Option<&Version> {
        self.versions.iter().find(|v| v.name == name)
    }

    /// Whether any served version has a status subresource.
    pub fn has_status(&self, version: &str) -> bool {
        self.version(version).is_some_and(|v| v.status)
    }
}

/// A built-in kind: (group, version, kind, plural, namespaced, short names,
/// status subresource, generation).
type Builtin = (&'static str, &'static str, &'static str, &'static str, bool, &'static [&'static str], bool, bool);

/// NB: only what the operator needs, what `kubectl apply -k manifests/`
/// installs, and a few kinds the stack is made of. Nothing runs behind them:
/// a Job never starts a Pod, a Deployment never gets replicas, RBAC is
/// stored but never enforced.
const BUILTINS: &[Builtin] = &[
    ("", "v1", "Namespace", "namespaces", false, &["ns"], true, false),
    ("", "v1", "ConfigMap", "configmaps", true, &["cm"], false, false),
    ("", "v1", "Secret", "secrets", true, &[], false, false),
    ("", "v1", "Event", "events", true, &["ev"], false, false),
    ("", "v1", "Service", "services", true, &["svc"], true, false),
    ("", "v1", "ServiceAccount", "serviceaccounts", true, &["sa"], false, false),
    ("", "v1", "Pod", "pods", true, &["po"], true, false),
    ("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", true, &["pvc"], true, false),
    ("events.k8s.io", "v1", "Event", "events", true, &["ev"], false, false),
    ("coordination.k8s.io", "v1", "Lease", "leases", true, &[], false, false),
    ("batch", "v1", "Job", "jobs", true, &[], true, true),
    ("apps", "v1", "Deployment", "deployments", true, &["deploy"], true, true),
    ("apps", "v1", "StatefulSet", "statefulsets", true, &["sts"], true, true),
    ("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies", true, &["netpol"], false, true),
    ("networking.k8s.io", "v1", "Ingress", "ingresses", true, &["ing"], true, true),
    ("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets", true, &["pdb"], true, true),
    ("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", false, &[], false, false),
    ("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "clusterrolebindings", false, &[], false, false),
    ("rbac.authorization.k8s.io", "v1", "Role", "roles", true, &[], false, false),
    ("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings", true, &[], false, false),
    (APIEXTENSIONS, "v1", "CustomResourceDefinition", "customresourcedefinitions", false, &["crd", "crds"], true, true),
];

/// Every resource, by (group, plural).
#[derive(Clone, Debug, Default)]
pub struct Registry {
    resources: BTreeMap<(String, String), Arc<Resource>>,
}

impl Registry {
    /// The built-in kinds, without any CRD.
    pub fn builtin() -> Registry {
        let mut registry = Registry::default();
        for &(group, version, kind, plural, namespaced, short_names, status, generation) in BUILTINS {
            registry.insert(Resource {
                group: group.to_owned(),
                plural: plural.to_owned(),
                singular: kind.to_lowercase(),
                kind: kind.to_owned(),
                list_kind: format!("{kind}List"),
                namespaced,
                short_names: short_names.iter().map(|s| (*s).to_owned()).collect(),
                categories: Vec::new(),
                versions: vec![Version { name: version.to_owned(), schema: None, status, printer_columns: Vec::new() }],
                generation,
                custom: false,
            });
        }
        registry
    }

    pub fn insert(&mut self, resource: Resource) {
        self.resources.insert((resource.group.clone(), resource.plural.clone()), Arc::new(resource));
    }

    pub fn remove(&mut self, group: &str, plural: &str) -> Option<Arc<Resource>> {
        self.resources.remove(&(group.to_owned(), plural.to_owned()))
    }

    pub fn get(&self, group: &str, plural: &str) -> Option<&Arc<Resource>> {
        self.resources.get(&(group.to_owned(), plural.to_owned()))
    }

    /// The resource at `group/version/plural`, if that version is served.
    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<&Arc<Resource>> {
        self.get(group, plural).filter(|r| r.version(version).is_some())
    }

    /// Every resource served in `group/version`.
    pub fn in_group_version<'a>(&'a self, group: &'a str, version: &'a str) -> impl Iterator<Item = &'a Arc<Resource>> {
        self.resources.values().filter(move |r| r.group == group && r.version(version).is_some())
    }

    /// The named groups (not the core one) with their versions, preferred first.
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for resource in self.resources.values().filter(|r| !r.group.is_empty()) {
            let versions = groups.entry(resource.group.clone()).or_default();
            for version in &resource.versions {
                if !versions.contains(&version.name) {
                    versions.push(version.name.clone());
                }
            }
        }
        groups.into_iter().collect()
    }
}

/// The resource a CRD defines, or why the CRD is invalid (422 causes).
pub fn from_crd(crd: &CustomResourceDefinition) -> Result<Resource, Vec<Cause>> {
    let spec = &crd.spec;
    let names = &spec.names;
    let mut causes = Vec::new();
    let invalid =
        |field: &str, message: String| Cause { reason: "FieldValueInvalid", message, field: field.to_owned() };
    let name = crd.metadata.name.clone().unwrap_or_default();
    let expected = format!("{}.{}", names.plural, spec.group);
    if name != expected {
        causes.push(invalid(
            "metadata.name",
            format!("Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"),
        ));
    }
    if !spec.group.contains('.') {
        causes.push(invalid(
            "spec.group",
            format!("Invalid value: \"{}\": should be a domain with at least one dot", spec.group),
        ));
    }
    let scope = spec.scope.as_str();
    if scope != "Namespaced" && scope != "Cluster" {
        causes.push(Cause {
            reason: "FieldValueNotSupported",
            message: format!("Unsupported value: \"{scope}\": supported values: \"Cluster\", \"Namespaced\""),
            field: "spec.scope".to_owned(),
        });
    }
    let storage = spec.versions.iter().filter(|v| v.storage).count();
    if storage != 1 {
        causes.push(invalid(
            "spec.versions",
            format!("Invalid value: {storage}: must have exactly one version marked as storage version"),
        ));
    }
    if !causes.is_empty() {
        return Err(causes);
    }
    // The storage version first: it is the one discovery prefers.
    let mut versions: Vec<Version> = spec
        .versions
        .iter()
        .filter(|v| v.served)
        .map(|v| Version {
            name: v.name.clone(),
            schema: v.schema.as_ref().and_then(|s| s.open_api_v3_schema.clone()).map(Arc::new),
            status: v.subresources.as_ref().is_some_and(|s| s.status.is_some()),
            printer_columns: v.additional_printer_columns.clone().unwrap_or_default(),
        })
        .collect();
    let storage_name = spec.versions.iter().find(|v| v.storage).map(|v| v.name.clone()).unwrap_or_default();
    versions.sort_by_key(|v| v.name != storage_name);
    Ok(Resource {
        group: spec.group.clone(),
        plural: names.plural.clone(),
        singular: names.singular.clone().unwrap_or_else(|| names.kind.to_lowercase()),
        kind: names.kind.clone(),
        list_kind: names.list_kind.clone().unwrap_or_else(|| format!("{}List", names.kind)),
        namespaced: scope == "Namespaced",
        short_names: names.short_names.clone().unwrap_or_default(),
        categories: names.categories.clone().unwrap_or_default(),
        versions,
        generation: true,
        custom: true,
    })
}

/// The CRD status the real server reports once the names are accepted.
pub fn crd_status(crd: &CustomResourceDefinition, now: &str) -> serde_json::Value {
    let stored: Vec<&str> = crd.spec.versions.iter().filter(|v| v.storage).map(|v| v.name.as_str()).collect();
    let condition = |type_: &str, reason: &str, message: &str| {
        serde_json::json!({
            "type": type_,
            "status": "True",
            "lastTransitionTime": now,
            "reason": reason,
            "message": message,
        })
    };
    serde_json::json!({
        "acceptedNames": crd.spec.names,
        "conditions": [
            condition("NamesAccepted", "NoConflicts", "no conflicts found"),
            condition("Established", "InitialNamesAccepted", "the initial names have been accepted"),
        ],
        "storedVersions": stored,
    })
}

/// Parses a CRD object, or says why it is not one.
pub fn parse_crd(object: &serde_json::Value) -> Result<CustomResourceDefinition, ApiError> {
    serde_json::from_value(object.clone()).map_err(|e| {
        ApiError::bad_request(format!("CustomResourceDefinition in version \"v1\" cannot be handled: {e}"))
    })
}
