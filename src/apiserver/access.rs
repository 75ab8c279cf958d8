//! Who asked for what: each request to a resource, as RBAC sees it (user,
//! verb, API group, resource with subresource, namespace). The server
//! authorizes nothing; tests compare what a client did with what its Roles
//! grant.

use std::collections::BTreeSet;

use axum::http::{HeaderMap, Method, header};

/// One kind of request, as an RBAC rule would have to allow it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Access {
    /// The bearer token the client sent (the user its kubeconfig names); empty without one.
    pub user: String,
    pub verb: &'static str,
    /// `""` for the core group.
    pub group: String,
    /// `deployments`, or `deployments/status` for the subresource.
    pub resource: String,
    /// `None` for a cluster-scoped request, or one across all namespaces.
    pub namespace: Option<String>,
}

/// The RBAC verb of a request: `get`, `list`, `watch`, `create`, `update`,
/// `patch`, `delete` or `deletecollection`.
pub fn verb(method: &Method, named: bool, watch: bool) -> &'static str {
    match (method.as_str(), named) {
        ("GET", _) if watch => "watch",
        ("GET", true) => "get",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => "unknown",
    }
}

/// The user a request came from: its bearer token.
pub fn user(headers: &HeaderMap) -> String {
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or_default();
    authorization.strip_prefix("Bearer ").unwrap_or_default().to_owned()
}

/// Every distinct access seen.
#[derive(Default)]
pub struct Accesses(std::sync::Mutex<BTreeSet<Access>>);

impl Accesses {
    pub fn record(&self, access: Access) {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(access);
    }

    pub fn all(&self) -> Vec<Access> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_map_to_rbac_verbs() {
        assert_eq!(verb(&Method::GET, false, true), "watch");
        assert_eq!(verb(&Method::GET, true, false), "get");
        assert_eq!(verb(&Method::GET, false, false), "list");
        assert_eq!(verb(&Method::PATCH, true, false), "patch");
        assert_eq!(verb(&Method::DELETE, false, false), "deletecollection");
        let mut headers = HeaderMap::new();
        assert_eq!(user(&headers), "");
        headers.insert(header::AUTHORIZATION, "Bearer fenice-operator".parse().unwrap());
        assert_eq!(user(&headers), "fenice-operator");
    }
}
