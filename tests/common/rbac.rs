//! What the RBAC manifests grant, and whether a request the in-memory API
//! server saw (`fenice::apiserver::access::Access`) is among it.

use fenice::apiserver::access::Access;
use serde_json::Value;

/// One verb on one resource, cluster-wide (`namespace: None`) or in one namespace.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Grant {
    pub group: String,
    pub resource: String,
    pub verb: String,
    pub namespace: Option<String>,
    /// Limited to named objects: a list or watch is not covered.
    pub named_only: bool,
}

/// The grants of the Roles and ClusterRoles in `file` (relative to the crate
/// root); a Role without a namespace is taken as applied in `namespace`.
pub fn grants(file: &str, namespace: Option<&str>) -> Vec<Grant> {
    let path = format!("{}/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
    let strings = |v: &Value| -> Vec<String> {
        v.as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_owned).collect()
    };
    let mut out = Vec::new();
    for doc in docs.iter().filter(|d| matches!(d["kind"].as_str(), Some("Role" | "ClusterRole"))) {
        let scope = match doc["kind"].as_str() {
            Some("Role") => {
                Some(doc["metadata"]["namespace"].as_str().or(namespace).expect("a Role's namespace").to_owned())
            }
            _ => None,
        };
        for rule in doc["rules"].as_array().into_iter().flatten() {
            let named_only = rule.get("resourceNames").is_some();
            for group in strings(&rule["apiGroups"]) {
                for resource in strings(&rule["resources"]) {
                    for verb in strings(&rule["verbs"]) {
                        let (group, resource) = (group.clone(), resource.clone());
                        out.push(Grant { group, resource, verb, namespace: scope.clone(), named_only });
                    }
                }
            }
        }
    }
    out
}

/// Whether `access` is allowed by one of `grants`.
pub fn allows(grants: &[Grant], access: &Access) -> bool {
    grants.iter().any(|g| covers(g, access))
}

/// Whether `grant` covers `access`.
pub fn covers(grant: &Grant, access: &Access) -> bool {
    grant.group == access.group
        && grant.resource == access.resource
        && grant.verb == access.verb
        && (grant.namespace.is_none() || grant.namespace == access.namespace)
        && !(grant.named_only && matches!(access.verb, "list" | "watch"))
}

/// Every access of `user` not allowed by `grants`, shown one per line.
pub fn denied(accesses: &[Access], user: &str, grants: &[Grant]) -> Vec<String> {
    accesses
        .iter()
        .filter(|a| a.user == user && !allows(grants, a))
        .map(|a| format!("{} {}/{} in {:?}", a.verb, a.group, a.resource, a.namespace))
        .collect()
}
