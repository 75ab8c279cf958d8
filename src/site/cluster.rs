//! Putting a tenant's rendered objects ([`super::kubernetes::render`]) into a
//! Kubernetes site's cluster: server-side apply of each object under one field
//! manager, the database Secret made once, and, by the tenant label, deleting
//! what this manager applied earlier and no longer renders. Only the kinds in
//! [`KINDS`] are ever listed or deleted, and Secrets only by name: Backups,
//! Restores and everything else a tenant is named in are out of reach by
//! construction, and no Secret is ever read (listing Secrets reads them).
//! The tenant's namespace must exist at the site: making namespaces would need
//! a cluster-wide grant (manifests/site/tenant-namespace-rbac.yaml is per namespace).

use std::collections::{BTreeMap, BTreeSet};

use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use kube::{Api, Client};
use serde_json::Value;

use super::kubernetes::TENANT_LABEL;

/// The field manager of the objects applied at sites: what marks an object
/// as this driver's (a PersistentVolumeClaim the StatefulSet controller made
/// from its template carries the tenant label too, and is not ours to delete).
pub const FIELD_MANAGER: &str = "fenice-site";

/// What the renderer can make, as (group, version, kind): the kinds listed
/// for orphans. A kind the renderer stops making stays here so its old
/// objects are still found.
pub const KINDS: &[(&str, &str, &str)] = &[
    ("", "v1", "ConfigMap"),
    ("", "v1", "PersistentVolumeClaim"),
    ("", "v1", "Service"),
    ("apps", "v1", "Deployment"),
    ("apps", "v1", "StatefulSet"),
    ("policy", "v1", "PodDisruptionBudget"),
    ("networking.k8s.io", "v1", "NetworkPolicy"),
    ("networking.k8s.io", "v1", "Ingress"),
    ("gateway.networking.k8s.io", "v1", "HTTPRoute"),
    ("externaldns.k8s.io", "v1alpha1", "DNSEndpoint"),
    ("postgresql.cnpg.io", "v1", "Cluster"),
];

/// Whether a 404 says the namespace is missing (rather than the object or its kind).
fn namespace_missing(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 404
        && status.details.as_ref().is_some_and(|d| d.kind == "namespaces"))
}

/// Whether objects of `kind` are listed (and found as orphans).
fn listed(kind: &str) -> bool {
    KINDS.iter().any(|(_, _, k)| *k == kind)
}

/// A site's cluster, and whether it is the one the InvoicingTenant lives in.
#[derive(Clone)]
pub struct SiteCluster {
    pub site: String,
    pub client: Client,
    /// The tenant object is in this cluster: owner references hold here. In
    /// another cluster an owner's uid names nothing, and the garbage collector
    /// would delete every object pointing at it.
    pub local: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Site {site}: applying {object}")]
    Apply {
        site: String,
        object: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "Site {site}: the cluster does not serve {kind} ({api_version}), which {object} is: install its \
         CustomResourceDefinitions, or change the Site's platform (exposure, dnsSwitch)"
    )]
    NotServed { site: String, kind: String, api_version: String, object: String },
    #[error("Site {site}: listing {kind} in namespace {namespace}")]
    List {
        site: String,
        kind: String,
        namespace: String,
        #[source]
        source: kube::Error,
    },
    #[error("Site {site}: deleting {object}")]
    Delete {
        site: String,
        object: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "Site {site}: namespace {namespace} does not exist in its cluster: create it there (`kubectl create \
         namespace {namespace}`) and apply manifests/site/tenant-namespace-rbac.yaml in it"
    )]
    NoNamespace { site: String, namespace: String },
    #[error("Site {site}: reading Secret {namespace}/{name}")]
    ReadSecret {
        site: String,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("Site {site}: making Secret {namespace}/{name}")]
    Secret {
        site: String,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// What an apply did, by object (`Kind name`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub created: Vec<String>,
    pub updated: Vec<String>,
    pub deleted: Vec<String>,
    /// Workloads not ready yet, as `Kind name (ready/wanted ready)`.
    pub waiting: Vec<String>,
}

impl Applied {
    pub fn changed(&self) -> bool {
        !(self.created.is_empty() && self.updated.is_empty() && self.deleted.is_empty())
    }
}

fn resource(api_version: &str, kind: &str) -> ApiResource {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind))
}

fn text<'a>(object: &'a Value, pointer: &str) -> &'a str {
    object.pointer(pointer).and_then(Value::as_str).unwrap_or_default()
}

/// Whether this driver applied or made `object`.
fn ours(object: &DynamicObject) -> bool {
    object.metadata.managed_fields.iter().flatten().any(|f| f.manager.as_deref() == Some(FIELD_MANAGER))
}

/// The objects of `tenant` in `namespace` that this driver made, by (kind,
/// name), with their resourceVersions.
async fn existing(
    cluster: &SiteCluster,
    namespace: &str,
    tenant: &str,
) -> Result<BTreeMap<(String, String), (ApiResource, String)>, Error> {
    let selector = format!("{TENANT_LABEL}={tenant}");
    let mut found = BTreeMap::new();
    for &(group, version, kind) in KINDS {
        let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
        let api: Api<DynamicObject> = Api::namespaced_with(cluster.client.clone(), namespace, &resource);
        let list = match api.list(&ListParams::default().labels(&selector)).await {
            Ok(list) => list,
            // NB: a kind the cluster does not serve (no Gateway API) holds nothing of ours.
            Err(kube::Error::Api(status)) if status.code == 404 => continue,
            Err(source) => {
                return Err(Error::List {
                    site: cluster.site.clone(),
                    kind: kind.into(),
                    namespace: namespace.into(),
                    source,
                });
            }
        };
        for object in list.items.into_iter().filter(ours) {
            let name = object.metadata.name.clone().unwrap_or_default();
            let version = object.metadata.resource_version.clone().unwrap_or_default();
            found.insert((kind.to_owned(), name), (resource.clone(), version));
        }
    }
    Ok(found)
}

/// Applies `objects` for `tenant` in `namespace`, then deletes what this
/// driver made for the tenant before and is not among them. The Secrets in
/// `made_once` are created first, and only while nothing of the tenant is
/// there yet: a deployed stack has them already (they went first), and
/// asking every reconcile would be one refused create per tenant each time.
pub async fn apply(
    cluster: &SiteCluster,
    namespace: &str,
    tenant: &str,
    objects: Vec<Value>,
    made_once: Vec<Value>,
) -> Result<Applied, Error> {
    let before = existing(cluster, namespace, tenant).await?;
    let mut applied = Applied::default();
    if before.is_empty() {
        for secret in made_once.into_iter().map(|o| placed(o, cluster.local)) {
            if create_secret(cluster, namespace, FIELD_MANAGER, &secret).await? {
                applied.created.push(format!("Secret {}", text(&secret, "/metadata/name")));
            }
        }
    }
    let mut wanted = BTreeSet::new();
    for object in objects.into_iter().map(|o| placed(o, cluster.local)) {
        let (kind, name) = (text(&object, "/kind").to_owned(), text(&object, "/metadata/name").to_owned());
        let result = apply_one(cluster, namespace, FIELD_MANAGER, &object).await?;
        match before.get(&(kind.clone(), name.clone())) {
            // NB: Secrets are never listed, so whether one changed is not known: not told.
            _ if !listed(&kind) => {}
            None => applied.created.push(format!("{kind} {name}")),
            Some((_, version)) if result.metadata.resource_version.as_ref() != Some(version) => {
                applied.updated.push(format!("{kind} {name}"))
            }
            Some(_) => {}
        }
        if let Some(waiting) = not_ready(&kind, &name, &result.data) {
            applied.waiting.push(waiting);
        }
        wanted.insert((kind, name));
    }
    for ((kind, name), (resource, _)) in before {
        if !wanted.contains(&(kind.clone(), name.clone()))
            && delete(cluster, namespace, &resource, &kind, &name).await?
        {
            applied.deleted.push(format!("{kind} {name}"));
        }
    }
    Ok(applied)
}

/// Applies one object under `manager`; the object as the cluster holds it now.
async fn apply_one(
    cluster: &SiteCluster,
    namespace: &str,
    manager: &str,
    object: &Value,
) -> Result<DynamicObject, Error> {
    let site = cluster.site.clone();
    let (kind, name) = (text(object, "/kind").to_owned(), text(object, "/metadata/name"));
    let label = format!("{kind} {namespace}/{name}");
    let api_version = text(object, "/apiVersion").to_owned();
    let api: Api<DynamicObject> =
        Api::namespaced_with(cluster.client.clone(), namespace, &resource(&api_version, &kind));
    match api.patch(name, &PatchParams::apply(manager).force(), &Patch::Apply(object)).await {
        Ok(result) => Ok(result),
        Err(e) if namespace_missing(&e) => Err(Error::NoNamespace { site, namespace: namespace.into() }),
        Err(kube::Error::Api(status)) if status.code == 404 => {
            Err(Error::NotServed { site, kind, api_version, object: label })
        }
        Err(source) => Err(Error::Apply { site, object: label, source }),
    }
}

/// Applies `objects` under `manager`, owned by whoever applies them there and
/// out of the tenant driver's reach (it deletes only what `fenice-site` made):
/// a restored copy, a Job.
pub async fn apply_each(
    cluster: &SiteCluster,
    namespace: &str,
    manager: &str,
    objects: &[Value],
) -> Result<Vec<DynamicObject>, Error> {
    let mut applied = Vec::with_capacity(objects.len());
    for object in objects {
        applied.push(apply_one(cluster, namespace, manager, object).await?);
    }
    Ok(applied)
}

/// Deletes the objects named (apiVersion, kind, name); says which were there.
pub async fn delete_each(
    cluster: &SiteCluster,
    namespace: &str,
    objects: &[(&str, &str, String)],
) -> Result<Vec<String>, Error> {
    let mut deleted = Vec::new();
    for (api_version, kind, name) in objects {
        if delete(cluster, namespace, &resource(api_version, kind), kind, name).await? {
            deleted.push(format!("{kind} {name}"));
        }
    }
    Ok(deleted)
}

/// Deletes everything this driver made for `tenant` in `namespace`, and the
/// Secrets named `secrets` (made once for it); says what.
pub async fn remove(
    cluster: &SiteCluster,
    namespace: &str,
    tenant: &str,
    secrets: &[String],
) -> Result<Vec<String>, Error> {
    let mut deleted = Vec::new();
    for ((kind, name), (resource, _)) in existing(cluster, namespace, tenant).await? {
        if delete(cluster, namespace, &resource, &kind, &name).await? {
            deleted.push(format!("{kind} {name}"));
        }
    }
    for name in secrets {
        if delete(cluster, namespace, &resource("v1", "Secret"), "Secret", name).await? {
            deleted.push(format!("Secret {name}"));
        }
    }
    Ok(deleted)
}

/// Deletes one object; whether it was there.
async fn delete(
    cluster: &SiteCluster,
    namespace: &str,
    resource: &ApiResource,
    kind: &str,
    name: &str,
) -> Result<bool, Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(cluster.client.clone(), namespace, resource);
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
        Err(source) => {
            Err(Error::Delete { site: cluster.site.clone(), object: format!("{kind} {namespace}/{name}"), source })
        }
    }
}

/// `object` as it goes to this cluster: without owner references where the owner is not.
fn placed(mut object: Value, local: bool) -> Value {
    if !local && let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.remove("ownerReferences");
    }
    object
}

/// Creates `secret` (as `manager`) unless it exists; whether it was created.
/// Never overwritten: it holds what was generated once (a database password)
/// and what runs already uses.
pub async fn create_secret(
    cluster: &SiteCluster,
    namespace: &str,
    manager: &str,
    secret: &Value,
) -> Result<bool, Error> {
    let name = text(secret, "/metadata/name").to_owned();
    let fail =
        |source| Error::Secret { site: cluster.site.clone(), namespace: namespace.into(), name: name.clone(), source };
    let object: DynamicObject = serde_json::from_value(secret.clone()).expect("a rendered Secret is an object");
    let api: Api<DynamicObject> = Api::namespaced_with(cluster.client.clone(), namespace, &resource("v1", "Secret"));
    let params = PostParams { field_manager: Some(manager.into()), ..PostParams::default() };
    match api.create(&params, &object).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(e) if namespace_missing(&e) => {
            Err(Error::NoNamespace { site: cluster.site.clone(), namespace: namespace.into() })
        }
        Err(source) => Err(fail(source)),
    }
}

/// The value of `key` in Secret `name`, read by name (never listed); `None`
/// when the Secret or the key is not there.
pub async fn secret_value(
    cluster: &SiteCluster,
    namespace: &str,
    name: &str,
    key: &str,
) -> Result<Option<zeroize::Zeroizing<String>>, Error> {
    let api: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(cluster.client.clone(), namespace);
    let secret = api.get_opt(name).await.map_err(|source| Error::ReadSecret {
        site: cluster.site.clone(),
        namespace: namespace.into(),
        name: name.into(),
        source,
    })?;
    let value = secret.and_then(|s| s.data?.remove(key)).map(|v| String::from_utf8_lossy(&v.0).into_owned());
    Ok(value.map(zeroize::Zeroizing::new))
}

/// `Kind name (ready/wanted ready)` for a Deployment or StatefulSet whose pods
/// are not all ready, from the object the apply returned.
fn not_ready(kind: &str, name: &str, object: &Value) -> Option<String> {
    let (wanted, ready) = match kind {
        "Deployment" | "StatefulSet" => ("/spec/replicas", "/status/readyReplicas"),
        // A CloudNativePG Cluster counts its instances.
        "Cluster" => ("/spec/instances", "/status/readyInstances"),
        _ => return None,
    };
    let wanted = object.pointer(wanted).and_then(Value::as_i64).unwrap_or(1);
    let ready = object.pointer(ready).and_then(Value::as_i64).unwrap_or(0);
    (ready < wanted).then(|| format!("{kind} {name} ({ready}/{wanted} ready)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn workloads_wait_until_every_replica_is_ready() {
        let deployment = json!({"spec": {"replicas": 2}, "status": {"readyReplicas": 1}});
        assert_eq!(not_ready("Deployment", "a-app", &deployment).as_deref(), Some("Deployment a-app (1/2 ready)"));
        let ready = json!({"spec": {"replicas": 1}, "status": {"readyReplicas": 1}});
        assert_eq!(not_ready("StatefulSet", "a-db", &ready), None);
        assert_eq!(not_ready("StatefulSet", "a-db", &json!({})).as_deref(), Some("StatefulSet a-db (0/1 ready)"));
        assert_eq!(not_ready("Service", "a-app", &json!({})), None);
        let cluster = json!({"spec": {"instances": 2}, "status": {"readyInstances": 1}});
        assert_eq!(not_ready("Cluster", "a-db", &cluster).as_deref(), Some("Cluster a-db (1/2 ready)"));
    }

    #[test]
    fn owner_references_go_only_where_the_owner_is() {
        let object = json!({"metadata": {"name": "a", "ownerReferences": [{"uid": "u"}]}});
        assert!(placed(object.clone(), true).pointer("/metadata/ownerReferences").is_some());
        assert!(placed(object, false).pointer("/metadata/ownerReferences").is_none());
    }

    #[test]
    fn kinds_map_to_the_resources_the_api_serves() {
        let plurals: Vec<_> = KINDS.iter().map(|(g, v, k)| resource(&format!("{g}/{v}"), k).plural).collect();
        assert!(plurals.contains(&"networkpolicies".to_owned()), "{plurals:?}");
        assert!(plurals.contains(&"ingresses".to_owned()), "{plurals:?}");
        assert!(plurals.contains(&"httproutes".to_owned()), "{plurals:?}");
        assert_eq!(resource("v1", "Secret").group, "");
    }
}
