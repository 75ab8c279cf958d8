//! The InvoicingTenant controller at Kubernetes sites, against two in-memory
//! API servers: the operator's cluster, and a site's cluster reached with the
//! kubeconfig in the Site's Secret. A missing namespace there is named; a tenant's objects are applied there (no
//! owner references across clusters), a second apply changes nothing, what
//! the Site no longer asks for is deleted and what the driver did not make is
//! left alone, an unusable kubeconfig is named without its contents, and
//! deleting the tenant removes its objects but never its Backups. A site that
//! is the operator's own cluster gets owner references. A Backup of a tenant
//! there runs as a Job at the site (its command run here with the Job's own
//! environment, against a real PostgreSQL and S3 server) and is recorded from
//! what the repository holds, by an operator restarted while the Job ran. A
//! Restore there makes a copy beside the tenant, starts its Job once the
//! copy's PostgreSQL is ready, records the report the Job's pod leaves (the
//! copy really holds the invoices; the operator was restarted while the Job
//! ran), and deleting it deletes the copy.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use fenice::api::policy::BackupPolicy;
use fenice::api::repository::BackupRepository;
use fenice::api::restore::{Restore, RestorePhase};
use fenice::api::site::Site;
use fenice::api::tenant::{InvoicingTenant, InvoicingTenantStatus};
use fenice::apiserver::{self, ServerOptions};
use fenice::site::cluster::{self, SiteCluster};
use fenice::site::kubernetes::{self, Images, TENANT_LABEL};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, PersistentVolumeClaim, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

#[path = "common/health.rs"]
mod health;
#[path = "common/operator.rs"]
mod operator_run;
#[path = "common/rbac.rs"]
mod rbac;
#[path = "common/runbook.rs"]
mod runbook;
#[path = "common/tenant.rs"]
mod tenant_db;

const DEADLINE: Duration = Duration::from_secs(60);
const OPERATOR_NAMESPACE: &str = "fenice-system";
const NAMESPACE: &str = "invoicing";
const TOKEN: &str = "kubeconfig-token-never-shown";
const OPERATOR_USER: &str = "fenice-operator";
const SITE_USER: &str = "fenice-site";
const S3_SECRET: &str = "s3-secret-never-shown";
const SAS_SECRET: &str = "sas-signature-never-shown";
const REPO_PASSWORD: &str = "repository-password-never-shown";

fn examples<T: serde::de::DeserializeOwned>(file: &str) -> Vec<T> {
    let text = std::fs::read_to_string(format!("{}/manifests/examples/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    serde_saphyr::from_multiple::<Value>(&text)
        .unwrap()
        .into_iter()
        .filter(|d| !d.is_null())
        .map(|d| serde_json::from_value(d).unwrap())
        .collect()
}

fn example<T: serde::de::DeserializeOwned + ResourceExt>(file: &str, name: &str) -> T {
    examples::<T>(file).into_iter().find(|o| o.name_any() == name).unwrap()
}

/// A CustomResourceDefinition of `kind` (plural `plural`) in `group`, `version`,
/// keeping whatever its objects hold.
fn crd(group: &str, version: &str, kind: &str, plural: &str) -> Value {
    let singular = kind.to_lowercase();
    json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{plural}.{group}")},
        "spec": {
            "group": group, "scope": "Namespaced",
            "names": {"plural": plural, "singular": singular, "kind": kind, "listKind": format!("{kind}List")},
            "versions": [{
                "name": version, "served": true, "storage": true, "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
            }],
        },
    })
}

/// Makes the cluster of `client` serve what a Site's platform may need:
/// HTTPRoute and, with `dns`, external-dns's DNSEndpoint.
async fn install_crds(client: &Client, dns: bool) {
    let crds: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &ApiResource::from_gvk(&GroupVersionKind::gvk("apiextensions.k8s.io", "v1", "CustomResourceDefinition")),
    );
    let mut wanted = vec![crd("gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes")];
    if dns {
        wanted.push(crd("externaldns.k8s.io", "v1alpha1", "DNSEndpoint", "dnsendpoints"));
    }
    for crd in wanted {
        crds.create(&PostParams::default(), &serde_json::from_value(crd).unwrap()).await.unwrap();
    }
}

async fn create<K>(api: &Api<K>, object: Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    api.create(&PostParams::default(), &serde_json::from_value(object).unwrap()).await.unwrap();
}

/// Every object labelled for `tenant` in the namespace, by `Kind name`, with its resourceVersion.
async fn objects_of(client: &Client, tenant: &str) -> BTreeMap<String, String> {
    // NB: the driver's kinds, and Secrets, which it never lists itself.
    let kinds = cluster::KINDS.iter().copied().chain([("", "v1", "Secret")]);
    let mut found = BTreeMap::new();
    for (group, version, kind) in kinds {
        let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), NAMESPACE, &resource);
        let Ok(list) = api.list(&ListParams::default().labels(&format!("{TENANT_LABEL}={tenant}"))).await else {
            continue;
        };
        for object in list.items {
            found.insert(format!("{kind} {}", object.name_any()), object.resource_version().unwrap_or_default());
        }
    }
    found
}

/// The tenant's `Ready` condition, once `holds` is true of it.
async fn ready_when(
    tenants: &Api<InvoicingTenant>,
    name: &str,
    holds: impl Fn(&str, &str) -> bool,
) -> (String, String) {
    let mut last = None;
    let found = tokio::time::timeout(DEADLINE, async {
        loop {
            let tenant = tenants.get(name).await.unwrap();
            let ready = tenant.status.iter().flat_map(|s| s.conditions.iter()).find(|c| c.type_ == "Ready").cloned();
            if let Some(c) = ready {
                if holds(&c.reason, &c.message) {
                    return (c.reason, c.message);
                }
                last = Some((c.reason, c.message));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("tenant {name}: the Ready condition never became what was expected; last {last:?}"))
}

async fn events_about(client: &Client, name: &str, reason: &str) -> Vec<Event> {
    let events: Api<Event> = Api::namespaced(client.clone(), NAMESPACE);
    let all = events.list(&ListParams::default()).await.unwrap().items;
    all.into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .filter(|e| e.reason.as_deref() == Some(reason))
        .collect()
}

async fn gone(tenants: &Api<InvoicingTenant>, name: &str) {
    vanished(tenants, name, "the tenant, its finalizers removed").await;
}

/// The object `name` once `api` has it, within `within`; `what` it is, for the failure.
async fn appeared<K>(api: &Api<K>, name: &str, within: Duration, what: &str) -> K
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    tokio::time::timeout(within, async {
        loop {
            match api.get_opt(name).await.unwrap() {
                Some(found) => return found,
                None => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{name} never appeared: {what}"))
}

/// Waits until `api` no longer has `name`; `what` should go, for the failure.
async fn vanished<K>(api: &Api<K>, name: &str, what: &str)
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    tokio::time::timeout(DEADLINE, async {
        while api.get_opt(name).await.unwrap().is_some() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{name} is still there: {what}"));
}

/// The operator's cluster (its namespace and the tenants', and the Secret
/// `site-westpole-rome` with a kubeconfig of the site) and the site's cluster
/// (nothing in it yet), with a client of each.
async fn clusters() -> (apiserver::Running, apiserver::Running, Client, Client) {
    let control = apiserver::spawn(ServerOptions::default()).await.unwrap();
    let remote = apiserver::spawn(ServerOptions { crds: Vec::new(), ..ServerOptions::default() }).await.unwrap();
    let client = control.client().await.unwrap();
    let site_client = remote.client().await.unwrap();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for namespace in [OPERATOR_NAMESPACE, NAMESPACE] {
        create(&namespaces, json!({"metadata": {"name": namespace}})).await;
    }
    let kubeconfig = json!({"kubeconfig": remote.kubeconfig_as(SITE_USER)});
    let secrets: Api<Secret> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    create(&secrets, json!({"metadata": {"name": "site-westpole-rome"}, "stringData": kubeconfig})).await;
    (control, remote, client, site_client)
}

/// The BackupRepository `s3-backups` at `endpoint` (its Secret `repo-s3`
/// with the keys and the password) and the example BackupPolicy writing to it alone.
async fn s3_policy(client: &Client, endpoint: &str) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    create(
        &secrets,
        json!({"metadata": {"name": "repo-s3"}, "stringData": {
            "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": S3_SECRET, "password": REPO_PASSWORD,
        }}),
    )
    .await;
    create(
        &Api::<BackupRepository>::all(client.clone()),
        json!({"metadata": {"name": "s3-backups"}, "spec": {
            "provider": "Ovhcloud", "immutability": {"enabled": false},
            "storage": {"type": "S3", "s3": {
                "bucket": "tenants", "prefix": "prod", "endpoint": endpoint, "region": "us-east-1",
                "forcePathStyle": true, "credentialsSecretRef": {"name": "repo-s3"},
            }},
            "passwordSecretRef": {"name": "repo-s3", "key": "password"},
        }}),
    )
    .await;
    let mut policy: Value = examples::<Value>("policy.yaml").remove(0);
    policy["spec"]["repositories"] = json!(["s3-backups"]);
    create(&Api::<BackupPolicy>::all(client.clone()), policy).await;
}

/// Changes the Site, so that the controller looks at the tenants on it again.
async fn touch_site(sites: &Api<Site>, name: &str, annotation: &str) {
    let patch = json!({"metadata": {"annotations": {"test/touched": annotation}}});
    sites.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_deployed_at_kubernetes_sites_and_removed_with_them() {
    let (control, remote, client, site_client) = clusters().await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    // Valid YAML, a token, and no cluster: not a kubeconfig anything can use.
    let broken = format!("apiVersion: v1\nkind: Config\nusers: [{{name: u, user: {{token: {TOKEN}}}}}]\n");
    create(&secrets, json!({"metadata": {"name": "site-azure-italynorth"}, "stringData": {"kubeconfig": broken}}))
        .await;
    let sites: Api<Site> = Api::all(client.clone());
    sites.create(&PostParams::default(), &example::<Site>("sites.yaml", "westpole-rome")).await.unwrap();
    sites.create(&PostParams::default(), &example::<Site>("sites.yaml", "azure-italynorth")).await.unwrap();
    let mut home: Site = example("sites.yaml", "westpole-rome");
    home.metadata.name = Some("home".into());
    home.spec.cluster = Some(serde_json::from_value(json!({"driver": "Kubernetes", "inCluster": true})).unwrap());
    sites.create(&PostParams::default(), &home).await.unwrap();

    // The policy's repositories, whose Secrets the agents at the site get.
    create(
        &secrets,
        json!({"metadata": {"name": "repo-s3"}, "stringData": {
            "AWS_ACCESS_KEY_ID": "lab", "AWS_SECRET_ACCESS_KEY": S3_SECRET, "password": REPO_PASSWORD,
        }}),
    )
    .await;
    create(&secrets, json!({"metadata": {"name": "repo-az"}, "stringData": {
        "sasUrl": format!("http://127.0.0.1:9/devstoreaccount1/tenants?sig={SAS_SECRET}"), "password": REPO_PASSWORD,
    }}))
    .await;
    let repositories: Api<BackupRepository> = Api::all(client.clone());
    create(
        &repositories,
        json!({"metadata": {"name": "s3-backups"}, "spec": {
            "provider": "Ovhcloud", "immutability": {"enabled": false},
            "storage": {"type": "S3", "s3": {
                "bucket": "tenants", "prefix": "prod", "endpoint": "http://127.0.0.1:9", "region": "eu-south-mil",
                "forcePathStyle": true, "credentialsSecretRef": {"name": "repo-s3"},
            }},
            "passwordSecretRef": {"name": "repo-s3", "key": "password"},
        }}),
    )
    .await;
    create(&repositories, json!({"metadata": {"name": "az-backups"}, "spec": {
        "provider": "Azure", "immutability": {"enabled": false},
        "storage": {"type": "AzureBlob", "azureBlob": {
            "account": "devstoreaccount1", "container": "tenants", "endpoint": "http://127.0.0.1:9/devstoreaccount1",
            "sasUrlSecretRef": {"name": "repo-az", "key": "sasUrl"},
        }},
        "passwordSecretRef": {"name": "repo-az", "key": "password"},
    }}))
    .await;
    let mut policy: Value = examples::<Value>("policy.yaml").remove(0);
    policy["spec"]["repositories"] = json!(["s3-backups", "az-backups"]);
    let policies: Api<BackupPolicy> = Api::all(client.clone());
    create(&policies, policy).await;

    let tenants: Api<InvoicingTenant> = Api::namespaced(client.clone(), NAMESPACE);
    let rossi: InvoicingTenant = example("tenants.yaml", "studio-rossi");
    tenants.create(&PostParams::default(), &rossi).await.unwrap();
    let mut tivoli: InvoicingTenant = example("tenants.yaml", "comune-di-tivoli");
    tivoli.spec.primary_site = "azure-italynorth".into();
    tenants.create(&PostParams::default(), &tivoli).await.unwrap();
    let mut bianchi: InvoicingTenant = example("tenants.yaml", "geom-bianchi");
    bianchi.spec.primary_site = "home".into();
    bianchi.spec.sdi.channels[0].site = "home".into();
    tenants.create(&PostParams::default(), &bianchi).await.unwrap();
    // A Backup of the tenant, which deleting the tenant must leave alone.
    let backups: Api<fenice::api::backup::Backup> = Api::namespaced(client.clone(), NAMESPACE);
    create(
        &backups,
        json!({"metadata": {"name": "studio-rossi-manual"}, "spec": {"tenant": "studio-rossi", "trigger": "Manual"}}),
    )
    .await;

    let state = tempfile::tempdir().unwrap();
    let (stop, running) = operator(&control, state.path()).await;

    // The tenant's namespace must exist at the site: nothing makes namespaces there.
    let (_, message) = ready_when(&tenants, "studio-rossi", |reason, _| reason == "StackFailed").await;
    assert!(message.contains("namespace invoicing does not exist"), "{message}");
    assert!(message.contains("manifests/site/tenant-namespace-rbac.yaml"), "{message}");
    let remote_namespaces: Api<Namespace> = Api::all(site_client.clone());
    create(&remote_namespaces, json!({"metadata": {"name": NAMESPACE}})).await;
    touch_site(&sites, "westpole-rome", "namespace").await;

    // Applied at the remote site; the pods never start in an API without kubelets.
    let (_, message) = ready_when(&tenants, "studio-rossi", |reason, _| reason == "StackStarting").await;
    assert!(message.contains("Kubernetes site westpole-rome"), "{message}");
    assert!(message.contains("Deployment studio-rossi-app (0/2 ready)"), "{message}");
    assert!(message.contains("StatefulSet studio-rossi-db (0/1 ready)"), "{message}");
    let site: Site = sites.get("westpole-rome").await.unwrap();
    let rossi = tenants.get("studio-rossi").await.unwrap();
    assert_eq!(rossi.status.as_ref().unwrap().active_site.as_deref(), Some("westpole-rome"));
    let rendered = kubernetes::render(&rossi, &site, &Images::of_this_build()).unwrap();
    let mut expected: Vec<String> = rendered
        .iter()
        .map(|o| format!("{} {}", o["kind"].as_str().unwrap(), o["metadata"]["name"].as_str().unwrap()))
        .collect();
    expected.push("Secret studio-rossi-db".into());
    expected.push("Secret studio-rossi-repositories".into());
    expected.sort();
    let first = objects_of(&site_client, "studio-rossi").await;
    assert_eq!(first.keys().cloned().collect::<Vec<_>>(), expected);
    let remote_namespaces: Api<Namespace> = Api::all(site_client.clone());
    assert!(
        remote_namespaces.get_opt(NAMESPACE).await.unwrap().is_some(),
        "the tenant's namespace is made at the site"
    );
    let deployments: Api<DynamicObject> = Api::namespaced_with(
        site_client.clone(),
        NAMESPACE,
        &ApiResource::from_gvk(&GroupVersionKind::gvk("apps", "v1", "Deployment")),
    );
    let deployment = deployments.get("studio-rossi-app").await.unwrap();
    assert!(deployment.metadata.owner_references.is_none(), "no owner reference across clusters: {deployment:?}");
    let db: Secret = Api::namespaced(site_client.clone(), NAMESPACE).get("studio-rossi-db").await.unwrap();
    let data = db.data.unwrap();
    let password = String::from_utf8(data["password"].0.clone()).unwrap();
    let url = String::from_utf8(data["url"].0.clone()).unwrap();
    assert_eq!(password.len(), 32);
    assert_eq!(url, format!("postgres://postgres:{password}@studio-rossi-db:5432/postgres"));
    assert_eq!(events_about(&client, "studio-rossi", "StackCreated").await.len(), 1);
    // The agents' environment: both repositories, their credentials, one password.
    let agents: Secret =
        Api::namespaced(site_client.clone(), NAMESPACE).get("studio-rossi-repositories").await.unwrap();
    let env: BTreeMap<String, String> =
        agents.data.unwrap().into_iter().map(|(k, v)| (k, String::from_utf8(v.0).unwrap())).collect();
    assert_eq!(env["FENICE_REPOSITORY"], "s3://tenants/prod,az://devstoreaccount1/tenants");
    assert_eq!(env["FENICE_PASSWORD"], REPO_PASSWORD);
    assert_eq!(env["AWS_SECRET_ACCESS_KEY"], S3_SECRET);
    assert_eq!(env["AWS_ENDPOINT_URL"], "http://127.0.0.1:9");
    assert!(env["AZURE_STORAGE_SAS_URL"].contains(SAS_SECRET));
    assert!(!env.contains_key("password"), "only the agents' variables: {:?}", env.keys());

    // What the driver did not make stays, though it carries the tenant label: a
    // note, and the volume the StatefulSet controller makes from its template
    // (which that controller deletes with the StatefulSet in a real cluster).
    let label = json!({TENANT_LABEL: "studio-rossi"});
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(site_client.clone(), NAMESPACE);
    create(
        &claims,
        json!({
            "metadata": {"name": "data-studio-rossi-db-0", "labels": label},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "20Gi"}}},
        }),
    )
    .await;
    let notes: Api<ConfigMap> = Api::namespaced(site_client.clone(), NAMESPACE);
    create(&notes, json!({"metadata": {"name": "studio-rossi-notes", "labels": label}, "data": {"a": "b"}})).await;

    // Without its BackupPolicy the database has nowhere to archive to: said so.
    let patch = json!({"spec": {"backupPolicy": "nope"}});
    tenants.patch("studio-rossi", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let (_, message) = ready_when(&tenants, "studio-rossi", |reason, _| reason == "StackFailed").await;
    assert!(message.contains("BackupPolicy nope does not exist"), "{message}");
    // Back on its policy, a second apply writes nothing: no object changes,
    // the password stays, no Event.
    let patch = json!({"spec": {"backupPolicy": "standard"}});
    tenants.patch("studio-rossi", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    ready_when(&tenants, "studio-rossi", |reason, _| reason == "StackStarting").await;
    let second = objects_of(&site_client, "studio-rossi").await;
    let ours: BTreeMap<_, _> =
        second.iter().filter(|(k, _)| first.contains_key(*k)).map(|(k, v)| (k.clone(), v.clone())).collect();
    assert_eq!(ours, first, "a second apply changed objects");
    assert_eq!(events_about(&client, "studio-rossi", "StackCreated").await.len(), 1);
    assert!(events_about(&client, "studio-rossi", "StackChanged").await.is_empty(), "nothing changed, nothing told");
    // The library call says the same.
    let target = SiteCluster { site: "westpole-rome".into(), client: site_client.clone(), local: false };
    let rossi = tenants.get("studio-rossi").await.unwrap();
    let again = cluster::apply(
        &target,
        NAMESPACE,
        "studio-rossi",
        kubernetes::render(&rossi, &site, &Images::of_this_build()).unwrap(),
        vec![kubernetes::database_secret(&rossi, &site, "another-password").unwrap()],
    )
    .await
    .unwrap();
    assert!(!again.changed(), "{again:?}");
    let db: Secret = Api::namespaced(site_client.clone(), NAMESPACE).get("studio-rossi-db").await.unwrap();
    assert_eq!(
        String::from_utf8(db.data.unwrap()["password"].0.clone()).unwrap(),
        password,
        "the password is made once"
    );

    // The Site switches to a Gateway API HTTPRoute the cluster does not serve yet: a clear error.
    let patch = json!({"spec": {"platform": {"exposure": {"kind": "HTTPRoute", "gatewayRef": "gateway-system/public", "ingressClassName": null}}}});
    sites.patch("westpole-rome", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let (_, message) = ready_when(&tenants, "studio-rossi", |reason, _| reason == "StackFailed").await;
    assert!(message.contains("does not serve HTTPRoute (gateway.networking.k8s.io/v1)"), "{message}");
    assert!(message.contains("install its CustomResourceDefinitions"), "{message}");
    // Once it does, the HTTPRoute replaces the Ingress, which is deleted.
    install_crds(&site_client, false).await;
    touch_site(&sites, "westpole-rome", "crd").await;
    ready_when(&tenants, "studio-rossi", |reason, _| reason == "StackStarting").await;
    let third = objects_of(&site_client, "studio-rossi").await;
    assert!(third.contains_key("HTTPRoute studio-rossi-app"), "{third:?}");
    assert!(!third.contains_key("Ingress studio-rossi-app"), "{third:?}");
    assert!(
        third.contains_key("ConfigMap studio-rossi-notes")
            && third.contains_key("PersistentVolumeClaim data-studio-rossi-db-0")
    );
    let applied = events_about(&client, "studio-rossi", "StackChanged").await;
    assert_eq!(applied.len(), 1, "one Event, after the Site changed");
    let notes: Vec<_> = applied.iter().filter_map(|e| e.note.clone()).collect();
    assert!(notes.iter().any(|n| n.contains("created HTTPRoute studio-rossi-app") && n.contains("deleted Ingress studio-rossi-app")), "{notes:?}");

    // An unusable kubeconfig is named, its contents never shown.
    let (_, message) = ready_when(&tenants, "comune-di-tivoli", |reason, _| reason == "StackFailed").await;
    assert!(message.contains("Secret fenice-system/site-azure-italynorth"), "{message}");
    assert!(message.contains("not a usable kubeconfig"), "{message}");
    assert!(!message.contains(TOKEN), "{message}");
    for event in events_about(&client, "comune-di-tivoli", "StackFailed").await {
        assert!(!event.note.unwrap_or_default().contains(TOKEN));
    }

    // A tenant whose stack never got to its site can still be deleted, with a warning.
    tenants.delete("comune-di-tivoli", &DeleteParams::default()).await.unwrap();
    gone(&tenants, "comune-di-tivoli").await;
    let warned = events_about(&client, "comune-di-tivoli", "StackNotRemoved").await;
    assert!(warned[0].note.as_deref().unwrap_or_default().contains("the stack never ran there"), "{warned:?}");

    // At the operator's own cluster the objects are owned by the tenant.
    ready_when(&tenants, "geom-bianchi", |reason, _| reason == "StackStarting").await;
    let bianchi = tenants.get("geom-bianchi").await.unwrap();
    let own_deployments: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        NAMESPACE,
        &ApiResource::from_gvk(&GroupVersionKind::gvk("apps", "v1", "Deployment")),
    );
    let owners = own_deployments.get("geom-bianchi-app").await.unwrap().metadata.owner_references.unwrap();
    assert_eq!(owners[0].uid, bianchi.uid().unwrap());

    // Deleting the tenant removes what the driver made, and only that; the Backup stays.
    tenants.delete("studio-rossi", &DeleteParams::default()).await.unwrap();
    gone(&tenants, "studio-rossi").await;
    let left = objects_of(&site_client, "studio-rossi").await;
    assert_eq!(
        left.keys().cloned().collect::<Vec<_>>(),
        ["ConfigMap studio-rossi-notes", "PersistentVolumeClaim data-studio-rossi-db-0"]
    );
    assert!(
        backups.get_opt("studio-rossi-manual").await.unwrap().is_some(),
        "deleting a tenant never deletes its Backups"
    );
    let removed = events_about(&client, "studio-rossi", "StackRemoved").await;
    assert!(
        removed[0].note.as_deref().unwrap_or_default().contains("deleted ConfigMap studio-rossi-app"),
        "{removed:?}"
    );

    // No secret value in any status or Event.
    let all_events: Api<Event> = Api::all(client.clone());
    let mut said: Vec<String> =
        all_events.list(&ListParams::default()).await.unwrap().items.iter().filter_map(|e| e.note.clone()).collect();
    let all_tenants: Api<InvoicingTenant> = Api::all(client.clone());
    said.extend(
        all_tenants
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .map(|t| serde_json::to_string(&t.status).unwrap()),
    );
    for secret in [S3_SECRET, SAS_SECRET, REPO_PASSWORD, TOKEN, &password] {
        assert!(said.iter().all(|s| !s.contains(secret)), "a secret value was shown: {said:?}");
    }

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(40), running).await.expect("the operator stopped").unwrap();
    within_rbac(&control, &remote);
}

/// What a kubelet would run for the Job's one container: its args, and its
/// environment with the Secrets read at the site.
async fn job_command(site: &Client, name: &str) -> (Vec<String>, BTreeMap<String, String>) {
    use k8s_openapi::api::batch::v1::Job;
    let jobs: Api<Job> = Api::namespaced(site.clone(), NAMESPACE);
    let job = jobs.get(name).await.unwrap();
    let pod = job.spec.unwrap().template.spec.unwrap();
    let container = &pod.containers[0];
    let secrets: Api<Secret> = Api::namespaced(site.clone(), NAMESPACE);
    let text = |v: &k8s_openapi::ByteString| String::from_utf8(v.0.clone()).unwrap();
    let mut env = BTreeMap::new();
    for source in container.env_from.iter().flatten() {
        let secret = secrets.get(&source.secret_ref.as_ref().unwrap().name).await.unwrap();
        let data = secret.data.unwrap_or_default().into_iter().map(|(k, v)| (k, text(&v)));
        env.extend(data.chain(secret.string_data.unwrap_or_default()));
    }
    for var in container.env.iter().flatten() {
        let value = match (&var.value, var.value_from.as_ref().and_then(|f| f.secret_key_ref.as_ref())) {
            (Some(value), _) => value.clone(),
            (None, Some(key)) => text(&secrets.get(&key.name).await.unwrap().data.unwrap()[&key.key]),
            (None, None) => panic!("{var:?}"),
        };
        env.insert(var.name.clone(), value);
    }
    (container.args.clone().unwrap_or_default(), env)
}

/// Runs a Job's command here, as [`job_command`] says, with `FENICE_DB_URL`
/// pointing at `db` (the cluster's DNS names do not resolve here) and `swap`
/// replacing arguments (paths inside the pod).
async fn run_command(site: &Client, name: &str, db: &str, swap: &[(&str, &str)]) -> std::process::Output {
    let (mut args, mut env) = job_command(site, name).await;
    env.insert("FENICE_DB_URL".into(), db.to_owned());
    for arg in &mut args {
        if let Some((_, to)) = swap.iter().find(|(from, _)| arg == from) {
            *arg = (*to).to_owned();
        }
    }
    tokio::process::Command::new(env!("CARGO_BIN_EXE_fenice"))
        .args(&args)
        .env_remove("FENICE_REPOSITORY")
        .envs(&env)
        .output()
        .await
        .unwrap()
}

/// What a kubelet would do with the backup Job: run its command against the
/// tenant's database at `db`, then record the end in the Job's status, as
/// the Job controller would.
async fn run_job(site: &Client, name: &str, db: &str) {
    let (_, env) = job_command(site, name).await;
    assert!(env["FENICE_DB_URL"].contains("@studio-rossi-db:5432/"), "{}", env["FENICE_DB_URL"]);
    let out = run_command(site, name, db, &[]).await;
    assert!(out.status.success(), "the Job's command failed: {}", String::from_utf8_lossy(&out.stderr));
    job_ended(site, name, true).await;
}

/// Records a Job's end in its status, as the Job controller would.
async fn job_ended(site: &Client, name: &str, succeeded: bool) {
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(site.clone(), NAMESPACE);
    let done = match succeeded {
        true => json!({"status": {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}}),
        false => json!({"status": {"failed": 1, "conditions": [
            {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"},
        ]}}),
    };
    jobs.patch_status(name, &PatchParams::default(), &Patch::Merge(&done)).await.unwrap();
}

/// What a kubelet does with a restore Job: runs its command against `db`
/// with the documents in a temporary directory, and leaves what the command
/// wrote to its termination-log file as the pod's termination message.
async fn run_restore_job(site: &Client, name: &str, db: &str) -> std::process::Output {
    let scratch = tempfile::tempdir().unwrap();
    let documents = scratch.path().join("documents");
    let result = scratch.path().join("termination-log");
    let swap = [
        ("/var/lib/fenice/documents", documents.to_str().unwrap()),
        ("/dev/termination-log", result.to_str().unwrap()),
    ];
    let out = run_command(site, name, db, &swap).await;
    let message = std::fs::read_to_string(&result).unwrap_or_default();
    pod_ended(site, name, "restore", out.status.code().unwrap_or(1), &message).await;
    out
}

/// What a kubelet leaves of the Job `name`'s pod once its `container`
/// exited with `exit_code`, with `message` as its termination message; and the
/// Job's own status.
async fn pod_ended(site: &Client, name: &str, container: &str, exit_code: i32, message: &str) {
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(site.clone(), NAMESPACE);
    let pod = format!("{name}-x7k2p");
    let labels = json!({"batch.kubernetes.io/job-name": name, "job-name": name});
    create(&pods, json!({"metadata": {"name": pod, "labels": labels}, "spec": {"containers": [{"name": container, "image": "fenice"}]}})).await;
    let terminated = json!({"status": {"containerStatuses": [{
        "name": container, "image": "fenice", "imageID": "", "ready": false, "restartCount": 0,
        "state": {"terminated": {"exitCode": exit_code, "message": message, "finishedAt": jiff::Timestamp::now().to_string()}},
    }]}});
    pods.patch_status(&pod, &PatchParams::default(), &Patch::Merge(&terminated)).await.unwrap();
    job_ended(site, name, exit_code == 0).await;
}

fn reason_of(conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]) -> &str {
    conditions.iter().find(|c| c.type_ == "Ready").map_or("", |c| c.reason.as_str())
}

fn ready_status() -> Value {
    json!({"status": {"replicas": 1, "readyReplicas": 1}})
}

/// An object's status once `holds` is true of it.
async fn status_when<K, S: std::fmt::Debug>(
    api: &Api<K>,
    name: &str,
    status: impl Fn(K) -> Option<S>,
    holds: impl Fn(&S) -> bool,
) -> S
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut last = None;
    let found = tokio::time::timeout(DEADLINE, async {
        loop {
            if let Some(status) = status(api.get(name).await.unwrap()) {
                if holds(&status) {
                    return status;
                }
                last = Some(status);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("{name} never got where expected; last {last:?}"))
}

async fn backup_when(
    backups: &Api<fenice::api::backup::Backup>,
    name: &str,
    holds: impl Fn(&fenice::api::backup::BackupStatus) -> bool,
) -> fenice::api::backup::BackupStatus {
    status_when(backups, name, |b| b.status, holds).await
}

async fn restore_when(
    restores: &Api<Restore>,
    name: &str,
    holds: impl Fn(&fenice::api::restore::RestoreStatus) -> bool,
) -> fenice::api::restore::RestoreStatus {
    status_when(restores, name, |r| r.status, holds).await
}

/// The name of a Restore's copy at its site.
async fn copy_of(restores: &Api<Restore>, name: &str) -> String {
    let uid = restores.get(name).await.unwrap().uid().unwrap().replace('-', "");
    format!("restore-{}", &uid[..12])
}

/// Runs the controllers, as their own user, until the returned sender is used or dropped.
async fn operator(
    control: &apiserver::Running,
    state: &std::path::Path,
) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    operator_run::run(control, OPERATOR_USER, OPERATOR_NAMESPACE, state).await
}

/// The requests the operator made in both clusters are within its grants (tests/common/rbac.rs).
fn within_rbac(control: &apiserver::Running, site: &apiserver::Running) {
    operator_run::within(&control.accesses(), OPERATOR_USER, &site.accesses(), SITE_USER, NAMESPACE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_and_restores_at_a_kubernetes_site_run_as_jobs_there_and_are_recorded_from_what_they_wrote() {
    let (control, remote, client, site_client) = clusters().await;
    create(&Api::<Namespace>::all(site_client.clone()), json!({"metadata": {"name": NAMESPACE}})).await;
    let s3 = fenice::testkit::S3Server::start().expect("the S3 server starts");
    s3.store("tenants", "").await.unwrap().create_bucket(false).await.unwrap();
    s3_policy(&client, &s3.endpoint()).await;
    Api::<Site>::all(client.clone())
        .create(&PostParams::default(), &example::<Site>("sites.yaml", "westpole-rome"))
        .await
        .unwrap();
    let tenants: Api<InvoicingTenant> = Api::namespaced(client.clone(), NAMESPACE);
    tenants.create(&PostParams::default(), &example::<InvoicingTenant>("tenants.yaml", "studio-rossi")).await.unwrap();

    // The tenant's database, with three invoices (the StatefulSet's, in a real cluster).
    let pg = fenice::testkit::PostgresServer::start().expect("PostgreSQL starts");
    let admin = tenant_db::connect(&pg.url("postgres")).await;
    admin.batch_execute("CREATE DATABASE studio_rossi").await.unwrap();
    let mut db = tenant_db::connect(&pg.url("studio_rossi")).await;
    db.batch_execute(fenice::app::schema::SCHEMA).await.unwrap();
    let documents = tempfile::tempdir().unwrap();
    for _ in 0..3 {
        tenant_db::issue(&mut db, documents.path(), "2026").await;
    }

    let state = tempfile::tempdir().unwrap();
    let (stop, running) = operator(&control, state.path()).await;
    ready_when(&tenants, "studio-rossi", |reason, _| reason == "StackStarting").await;
    let backups: Api<fenice::api::backup::Backup> = Api::namespaced(client.clone(), NAMESPACE);
    create(&backups, json!({"metadata": {"name": "studio-rossi-manual"}, "spec": {"tenant": "studio-rossi"}})).await;
    let running_status = backup_when(&backups, "studio-rossi-manual", |s| s.job.is_some()).await;
    assert_eq!(running_status.job.as_deref(), Some("westpole-rome/invoicing/backup-studio-rossi-manual"));
    let ready = running_status.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert!(ready.message.contains("Job invoicing/backup-studio-rossi-manual runs the backup"), "{ready:?}");

    // The operator stops while the Job runs; the next one goes on watching it.
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(40), running).await.expect("the operator stopped").unwrap();
    run_job(&site_client, "backup-studio-rossi-manual", &pg.url("studio_rossi")).await;
    let (stop, running) = operator(&control, state.path()).await;
    let done = backup_when(&backups, "studio-rossi-manual", |s| s.completion_time.is_some()).await;
    let ready = done.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(done.phase, fenice::api::backup::BackupPhase::Succeeded, "{ready:?}");
    assert_eq!(done.copies_summary.as_deref(), Some("1/1"));
    assert_eq!(done.verification.as_ref().map(|v| v.invoices), Some(3));
    // The snapshot is the Job's: physical (the policy archives WAL), tagged with the Backup.
    let store = s3.store("tenants", "prod").await.unwrap();
    let unlock =
        fenice::repo::repository::Unlock::Passphrase(fenice::repo::keyfile::Passphrase::new(REPO_PASSWORD.into()));
    let repo = fenice::repo::repository::Repository::open(Arc::new(store), &unlock).await.unwrap();
    let backup = backups.get("studio-rossi-manual").await.unwrap();
    let (id, snapshot) = repo.find_snapshot(done.snapshot_id.as_deref().unwrap()).await.unwrap();
    assert!(snapshot.tags.contains(&format!("fenice.io/backup={}", backup.uid().unwrap())), "{:?}", snapshot.tags);
    assert_eq!(snapshot.host, "westpole-rome");
    assert_eq!(id.to_string(), *done.snapshot_id.as_ref().unwrap(), "the status names the Job's snapshot in full");

    // A Restore there makes a copy beside the tenant; once the copy's
    // PostgreSQL is ready a Job restores into it, and its report comes back.
    let restores: Api<Restore> = Api::namespaced(client.clone(), NAMESPACE);
    let spec = json!({"tenant": "studio-rossi", "repository": "s3-backups"});
    create(&restores, json!({"metadata": {"name": "studio-rossi-check"}, "spec": spec})).await;
    let starting = restore_when(&restores, "studio-rossi-check", |s| s.job.is_some()).await;
    let copy = copy_of(&restores, "studio-rossi-check").await;
    assert_eq!(starting.job, Some(format!("westpole-rome/invoicing/{copy}")));
    let sets: Api<StatefulSet> = Api::namespaced(site_client.clone(), NAMESPACE);
    let set = sets.get(&copy).await.expect("the copy's PostgreSQL is at the site");
    let labels = set.metadata.labels.clone().unwrap_or_default();
    assert!(!labels.contains_key(TENANT_LABEL), "the copy must not carry the tenant's label: {labels:?}");
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(site_client.clone(), NAMESPACE);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(jobs.get_opt(&copy).await.unwrap().is_none(), "no Job before the copy's PostgreSQL is ready");
    sets.patch_status(&copy, &PatchParams::default(), &Patch::Merge(&ready_status())).await.unwrap();
    restore_when(&restores, "studio-rossi-check", |s| reason_of(&s.conditions) == "JobRunning").await;
    // The operator stops while the restore Job runs; the next one goes on watching it.
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(40), running).await.expect("the operator stopped").unwrap();
    admin.batch_execute("CREATE DATABASE studio_rossi_copy").await.unwrap();
    let out = run_restore_job(&site_client, &copy, &pg.url("studio_rossi_copy")).await;
    let (stop, running) = operator(&control, state.path()).await;
    assert!(out.status.success(), "the restore Job failed: {}", String::from_utf8_lossy(&out.stderr));
    let restored = restore_when(&restores, "studio-rossi-check", |s| s.completion_time.is_some()).await;
    let ready = restored.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(restored.phase, RestorePhase::Succeeded, "{ready:?}");
    assert_eq!((restored.verified, restored.snapshot_id.as_ref()), (Some(true), done.snapshot_id.as_ref()));
    assert!(ready.message.contains(&format!("into StatefulSet invoicing/{copy}")), "{ready:?}");
    let copy_db = tenant_db::connect(&pg.url("studio_rossi_copy")).await;
    let invoices: i64 = copy_db.query_one("SELECT count(*) FROM invoices", &[]).await.unwrap().get(0);
    assert_eq!(invoices, 3, "the copy holds the tenant's invoices");

    // A restore that cannot run says why, from the Job's report, without a secret in it.
    let spec = json!({"tenant": "studio-rossi", "repository": "s3-backups", "snapshot": "deadbeef"});
    create(&restores, json!({"metadata": {"name": "studio-rossi-old"}, "spec": spec})).await;
    restore_when(&restores, "studio-rossi-old", |s| s.job.is_some()).await;
    let old_copy = copy_of(&restores, "studio-rossi-old").await;
    sets.patch_status(&old_copy, &PatchParams::default(), &Patch::Merge(&ready_status())).await.unwrap();
    restore_when(&restores, "studio-rossi-old", |s| reason_of(&s.conditions) == "JobRunning").await;
    admin.batch_execute("CREATE DATABASE studio_rossi_old").await.unwrap();
    let out = run_restore_job(&site_client, &old_copy, &pg.url("studio_rossi_old")).await;
    assert!(!out.status.success());
    let failed = restore_when(&restores, "studio-rossi-old", |s| s.completion_time.is_some()).await;
    let ready = failed.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!((failed.phase, ready.reason.as_str()), (RestorePhase::Failed, "RestoreFailed"), "{ready:?}");
    assert!(ready.message.contains("deadbeef"), "{ready:?}");
    let said = serde_json::to_string(&failed).unwrap();
    for secret in [S3_SECRET, REPO_PASSWORD] {
        assert!(!said.contains(secret), "a secret in the status: {said}");
    }

    // Deleting a Restore deletes its copy at the site, and nothing of the tenant.
    restores.delete("studio-rossi-check", &DeleteParams::default()).await.unwrap();
    tokio::time::timeout(DEADLINE, async {
        while restores.get_opt("studio-rossi-check").await.unwrap().is_some() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the Restore goes once its copy is deleted");
    assert!(sets.get_opt(&copy).await.unwrap().is_none(), "the copy's StatefulSet is deleted");
    assert!(jobs.get_opt(&copy).await.unwrap().is_none(), "the copy's Job is deleted");
    let site_secrets: Api<Secret> = Api::namespaced(site_client.clone(), NAMESPACE);
    assert!(site_secrets.get_opt(&copy).await.unwrap().is_none(), "the copy's Secret is deleted");
    assert!(sets.get_opt("studio-rossi-db").await.unwrap().is_some(), "the tenant's database stays");
    assert!(sets.get_opt(&old_copy).await.unwrap().is_some(), "another Restore's copy stays");

    // A Job that gives up fails its Backup, saying where its log is.
    create(&backups, json!({"metadata": {"name": "studio-rossi-again"}, "spec": {"tenant": "studio-rossi"}})).await;
    backup_when(&backups, "studio-rossi-again", |s| s.job.is_some()).await;
    let gave_up = json!({"status": {"failed": 2, "conditions": [
        {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"},
    ]}});
    jobs.patch_status("backup-studio-rossi-again", &PatchParams::default(), &Patch::Merge(&gave_up)).await.unwrap();
    let failed = backup_when(&backups, "studio-rossi-again", |s| s.completion_time.is_some()).await;
    assert_eq!(failed.phase, fenice::api::backup::BackupPhase::Failed);
    let ready = failed.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert!(ready.message.contains("BackoffLimitExceeded"), "{ready:?}");
    assert!(ready.message.contains("kubectl -n invoicing logs job/backup-studio-rossi-again"), "{ready:?}");

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(40), running).await.expect("the operator stopped").unwrap();
    within_rbac(&control, &remote);
}

/// A tenant with `standby: Warm` on a FailoverPlan from its primary site gets
/// its database at the plan's target site, made from the newest base backup
/// by an init container and replaying the archive, with the primary's
/// database password (the restored data has it) and nothing else of the
/// stack; turned Cold, the standby is deleted and only its Secrets stay there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_tenant_has_its_database_replaying_at_the_standby_site_and_a_cold_one_only_its_secrets() {
    let (control, remote, client, site_client) = clusters().await;
    let (standby, standby_client) = standby_cluster(&client, &site_client).await;
    s3_policy(&client, "http://127.0.0.1:9").await;
    let sites: Api<Site> = Api::all(client.clone());
    for name in ["westpole-rome", "azure-italynorth"] {
        sites.create(&PostParams::default(), &example::<Site>("sites.yaml", name)).await.unwrap();
    }
    let plan: fenice::api::plan::FailoverPlan = example("plan.yaml", "westpole-to-azure");
    Api::<fenice::api::plan::FailoverPlan>::all(client.clone()).create(&PostParams::default(), &plan).await.unwrap();
    let tenants: Api<InvoicingTenant> = Api::namespaced(client.clone(), NAMESPACE);
    let tenant: InvoicingTenant = example("tenants.yaml", "studio-rossi");
    assert_eq!(tenant.spec.standby, fenice::api::tenant::StandbyMode::Warm);
    tenants.create(&PostParams::default(), &tenant).await.unwrap();

    let state = tempfile::tempdir().unwrap();
    let (stop, running) = operator(&control, state.path()).await;
    let standby_when = |reason: &'static str| {
        let tenants = tenants.clone();
        async move {
            status_when(
                &tenants,
                "studio-rossi",
                |t| t.status,
                |s| s.conditions.iter().any(|c| c.type_ == "Standby" && c.reason == reason),
            )
            .await
        }
    };
    let starting = standby_when("StandbyStarting").await;
    assert_eq!(starting.standby_site.as_deref(), Some("azure-italynorth"));
    let condition = starting.conditions.iter().find(|c| c.type_ == "Standby").unwrap();
    assert!(condition.message.contains("StatefulSet studio-rossi-db (0/1 ready)"), "{condition:?}");

    // At the standby site: the database and what it needs, nothing else of the stack.
    let at_standby = objects_of(&standby_client, "studio-rossi").await;
    let kinds: Vec<&str> = at_standby.keys().map(String::as_str).collect();
    let expected = [
        "NetworkPolicy studio-rossi-db",
        "Secret studio-rossi-db",
        "Secret studio-rossi-repositories",
        "Service studio-rossi-db",
        "StatefulSet studio-rossi-db",
    ];
    assert_eq!(kinds, expected, "{at_standby:?}");
    let sets: Api<StatefulSet> = Api::namespaced(standby_client.clone(), NAMESPACE);
    let set = sets.get("studio-rossi-db").await.unwrap();
    let pod = set.spec.as_ref().unwrap().template.spec.clone().unwrap();
    let init = &pod.init_containers.as_ref().expect("an init container prepares the standby")[0];
    let args = init.args.clone().unwrap().join(" ");
    assert!(args.contains("agent restore --tenant studio-rossi --repo s3://tenants/prod"), "{args}");
    assert!(args.contains("--standby --keep-initialised"), "{args}");
    // The StatefulSet the whole stack has at that site, but for the init
    // container: the standby's volume becomes the database when the stack is
    // applied there (a StatefulSet's selector and volume claims never change).
    let standby_site = sites.get("azure-italynorth").await.unwrap();
    let tenant_now = tenants.get("studio-rossi").await.unwrap();
    let stack = kubernetes::render(&tenant_now, &standby_site, &Images::of_this_build()).unwrap();
    let stack_set = stack.into_iter().find(|o| o["kind"] == "StatefulSet").unwrap();
    let stack_set: StatefulSet = serde_json::from_value(stack_set).unwrap();
    let mut applied = set.spec.clone().unwrap();
    applied.template.spec.as_mut().unwrap().init_containers = None;
    assert_eq!(stack_set.spec.unwrap(), applied, "the standby's StatefulSet is the stack's plus its init container");
    let password = |client: &Client| {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
        async move { secrets.get("studio-rossi-db").await.unwrap().data.unwrap()["password"].clone() }
    };
    assert_eq!(password(&standby_client).await, password(&site_client).await, "the standby has the primary's password");

    // Once its pod is ready it replays; turned cold, it goes.
    let ready = json!({"status": {"replicas": 1, "readyReplicas": 1}});
    sets.patch_status("studio-rossi-db", &PatchParams::default(), &Patch::Merge(&ready)).await.unwrap();
    touch_site(&sites, "azure-italynorth", "ready").await;
    let replaying = standby_when("StandbyReplaying").await;
    let condition = replaying.conditions.iter().find(|c| c.type_ == "Standby").unwrap();
    assert_eq!(condition.status, "True", "{condition:?}");
    let cold = json!({"spec": {"standby": "Cold"}});
    tenants.patch("studio-rossi", &PatchParams::default(), &Patch::Merge(&cold)).await.unwrap();
    let now_cold = standby_when("Cold").await;
    assert_eq!(now_cold.standby_site, None);
    let kept = tokio::time::timeout(DEADLINE, async {
        loop {
            let now: Vec<String> = objects_of(&standby_client, "studio-rossi").await.into_keys().collect();
            if now.iter().all(|o| o.starts_with("Secret ")) {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the standby is deleted");
    // NB: a Cold tenant's Secrets wait at its plan's target, for a failover to make its database there.
    assert_eq!(kept, ["Secret studio-rossi-db", "Secret studio-rossi-repositories"]);
    assert!(!objects_of(&site_client, "studio-rossi").await.is_empty(), "the primary's stack stays");

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(40), running).await.expect("the operator stopped").unwrap();
    within_rbac(&control, &remote);
    within_rbac(&control, &standby);
}

/// A Drill whose plan targets a Kubernetes site makes a copy of each sampled
/// tenant there, starts its Job once the copy's PostgreSQL is ready, and
/// judges the tenant from the Job's report: restored, verified, its app
/// served and its test invoice (the number after the backup's last) reached
/// the test endpoint. The operator is restarted while the Job runs and goes
/// on; every copy is deleted afterwards, also when the Job failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_at_a_kubernetes_site_restores_serves_and_sends_a_test_invoice_there_then_tears_down() {
    use fenice::api::drill::{Drill, DrillPhase};
    let (control, remote, client, site_client) = clusters().await;
    let (standby, standby_client) = standby_cluster(&client, &site_client).await;
    let s3 = fenice::testkit::S3Server::start().expect("the S3 server starts");
    s3.store("tenants", "").await.unwrap().create_bucket(false).await.unwrap();
    s3_policy(&client, &s3.endpoint()).await;
    let sites: Api<Site> = Api::all(client.clone());
    for name in ["westpole-rome", "azure-italynorth"] {
        sites.create(&PostParams::default(), &example::<Site>("sites.yaml", name)).await.unwrap();
    }
    let plan: fenice::api::plan::FailoverPlan = example("plan.yaml", "westpole-to-azure");
    Api::<fenice::api::plan::FailoverPlan>::all(client.clone()).create(&PostParams::default(), &plan).await.unwrap();
    let mut tenant: InvoicingTenant = example("tenants.yaml", "studio-rossi");
    tenant.spec.standby = fenice::api::tenant::StandbyMode::Cold;
    let tenants: Api<InvoicingTenant> = Api::namespaced(client.clone(), NAMESPACE);
    tenants.create(&PostParams::default(), &tenant).await.unwrap();
    // The channels' certificates, which drills check by their own dates.
    let pem = std::fs::read_to_string(format!("{}/tests/vectors/sdi/until-2036-11-20.pem", env!("CARGO_MANIFEST_DIR")))
        .unwrap();
    let channels: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    for name in ["sdi-channel-rome", "sdi-channel-italynorth"] {
        create(&channels, json!({"metadata": {"name": name}, "stringData": {"tls.crt": pem, "tls.key": "unread"}}))
            .await;
    }

    // The tenant's database with three invoices, backed up by its Job.
    let pg = fenice::testkit::PostgresServer::start().expect("PostgreSQL starts");
    let admin = tenant_db::connect(&pg.url("postgres")).await;
    admin.batch_execute("CREATE DATABASE studio_rossi").await.unwrap();
    let mut db = tenant_db::connect(&pg.url("studio_rossi")).await;
    db.batch_execute(fenice::app::schema::SCHEMA).await.unwrap();
    let documents = tempfile::tempdir().unwrap();
    for _ in 0..3 {
        tenant_db::issue(&mut db, documents.path(), "2026").await;
    }
    let state = tempfile::tempdir().unwrap();
    let (stop, running) = operator(&control, state.path()).await;
    ready_when(&tenants, "studio-rossi", |reason, _| reason == "StackStarting").await;
    let backups: Api<fenice::api::backup::Backup> = Api::namespaced(client.clone(), NAMESPACE);
    create(&backups, json!({"metadata": {"name": "before-drill"}, "spec": {"tenant": "studio-rossi"}})).await;
    backup_when(&backups, "before-drill", |s| s.job.is_some()).await;
    run_job(&site_client, "backup-before-drill", &pg.url("studio_rossi")).await;
    let backed_up = backup_when(&backups, "before-drill", |s| s.completion_time.is_some()).await;
    assert_eq!(backed_up.phase, fenice::api::backup::BackupPhase::Succeeded);

    // The drill: a copy at the standby site, its Job once the copy is ready.
    let sdi_test = fenice::testkit::SdiSimServer::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_fenice")),
        Duration::from_millis(200),
    )
    .expect("the SdI simulator");
    let drills: Api<Drill> = Api::all(client.clone());
    let drill = |name: &str| {
        json!({"metadata": {"name": name}, "spec": {
            "plan": "westpole-to-azure", "sdiTestEndpoint": sdi_test.endpoint(),
            "sample": {"tenants": [{"namespace": NAMESPACE, "name": "studio-rossi"}]},
        }})
    };
    create(&drills, drill("k8s-drill")).await;
    let restoring = status_when(&drills, "k8s-drill", |d| d.status, |s| !s.copies.is_empty()).await;
    assert_eq!(restoring.site.as_deref(), Some("azure-italynorth"));
    let (site_name, copy) = restoring.copies[0].copy.split_once(&format!("/{NAMESPACE}/")).unwrap();
    let copy = copy.to_owned();
    assert_eq!(site_name, "azure-italynorth");
    let sets: Api<StatefulSet> = Api::namespaced(standby_client.clone(), NAMESPACE);
    let set = sets.get(&copy).await.expect("the copy's PostgreSQL is at the standby site");
    assert!(!set.labels().contains_key(TENANT_LABEL), "the copy must not carry the tenant's label");
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(standby_client.clone(), NAMESPACE);
    assert!(jobs.get_opt(&copy).await.unwrap().is_none(), "no Job before the copy's PostgreSQL is ready");
    // The operator stops while the copy's PostgreSQL starts; the next one waits for the same copy.
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(40), running).await.expect("the operator stopped").unwrap();
    let uid = set.uid();
    let (stop, running) = operator(&control, state.path()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let restarted = status_when(&drills, "k8s-drill", |d| d.status, |s| !s.copies.is_empty()).await;
    assert_eq!(restarted.copies.len(), 1, "one copy, not a second: {restarted:?}");
    assert!(restarted.copies[0].copy.ends_with(&format!("/{copy}")), "{restarted:?}");
    assert_eq!(sets.get(&copy).await.unwrap().uid(), uid, "the same StatefulSet, not made again");
    assert!(jobs.get_opt(&copy).await.unwrap().is_none(), "still no Job before the copy is ready");
    sets.patch_status(&copy, &PatchParams::default(), &Patch::Merge(&ready_status())).await.unwrap();
    status_when(&drills, "k8s-drill", |d| d.status, |s| s.copies.iter().any(|c| c.job)).await;
    let (args, _) = job_command(&standby_client, &copy).await;
    let args = args.join(" ");
    assert!(args.contains(&format!("--drill-endpoint {}", sdi_test.endpoint())), "{args}");

    // The operator stops while the Job runs; the next one goes on.
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(40), running).await.expect("the operator stopped").unwrap();
    admin.batch_execute("CREATE DATABASE drill_copy").await.unwrap();
    let out = run_restore_job(&standby_client, &copy, &pg.url("drill_copy")).await;
    assert!(out.status.success(), "the drill Job failed: {}", String::from_utf8_lossy(&out.stderr));
    let (stop, running) = operator(&control, state.path()).await;
    let done = status_when(&drills, "k8s-drill", |d| d.status, |s| s.completion_time.is_some()).await;
    let ready = done.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(done.phase, DrillPhase::Passed, "{ready:?}");
    let result = &done.results[0];
    assert_eq!(result.snapshot, backed_up.snapshot_id, "the newest backup was restored");
    let sent = result.test_invoice.as_deref().unwrap_or_default();
    assert!(sent.starts_with("2026/4 sent to"), "the test invoice follows the backup's last number: {result:?}");
    assert!(result.rto_millis > 0 && done.copies.is_empty(), "{done:?}");
    let copy_db = tenant_db::connect(&pg.url("drill_copy")).await;
    let invoices: i64 = copy_db.query_one("SELECT count(*) FROM invoices", &[]).await.unwrap().get(0);
    assert_eq!(invoices, 4, "the copy holds the tenant's three invoices and the drill's");
    let original: i64 = db.query_one("SELECT count(*) FROM invoices", &[]).await.unwrap().get(0);
    assert_eq!(original, 3, "the tenant's own database is untouched");
    let torn_down = |copy: String| {
        let (sets, jobs) = (sets.clone(), jobs.clone());
        let secrets: Api<Secret> = Api::namespaced(standby_client.clone(), NAMESPACE);
        async move {
            tokio::time::timeout(DEADLINE, async {
                while sets.get_opt(&copy).await.unwrap().is_some()
                    || jobs.get_opt(&copy).await.unwrap().is_some()
                    || secrets.get_opt(&copy).await.unwrap().is_some()
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("the copy {copy} is deleted"));
        }
    };
    torn_down(copy).await;
    let finalizers = drills.get("k8s-drill").await.unwrap().finalizers().to_vec();
    assert!(finalizers.is_empty(), "{finalizers:?}");

    // A Job that gives up fails the drill, naming the tenant and where its log is; its copy goes too.
    create(&drills, drill("k8s-drill-fails")).await;
    let restoring = status_when(&drills, "k8s-drill-fails", |d| d.status, |s| !s.copies.is_empty()).await;
    let copy = restoring.copies[0].copy.rsplit('/').next().unwrap().to_owned();
    sets.patch_status(&copy, &PatchParams::default(), &Patch::Merge(&ready_status())).await.unwrap();
    status_when(&drills, "k8s-drill-fails", |d| d.status, |s| s.copies.iter().any(|c| c.job)).await;
    job_ended(&standby_client, &copy, false).await;
    let failed = status_when(&drills, "k8s-drill-fails", |d| d.status, |s| s.completion_time.is_some()).await;
    assert_eq!(failed.phase, DrillPhase::Failed);
    assert_eq!(failed.failures[0].tenant.name, "studio-rossi");
    assert!(failed.failures[0].reason.contains("BackoffLimitExceeded"), "{:?}", failed.failures);
    assert!(
        failed.failures[0].reason.contains(&format!("kubectl -n {NAMESPACE} logs job/{copy}")),
        "{:?}",
        failed.failures
    );
    torn_down(copy).await;
    let said = serde_json::to_string(&failed).unwrap() + &serde_json::to_string(&done).unwrap();
    for secret in [S3_SECRET, REPO_PASSWORD] {
        assert!(!said.contains(secret), "a secret in the status: {said}");
    }

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(40), running).await.expect("the operator stopped").unwrap();
    within_rbac(&control, &remote);
    within_rbac(&control, &standby);
}

/// What a failover does to a tenant, as the tenant controller carries it
/// out: while the plan's lease is handed over, the tenant's app is stopped at
/// its primary site; once a failover served it at the standby site, the whole
/// stack runs there on the warm standby's very StatefulSet (never deleted,
/// never remade) under the failover's epoch, and the primary runs the
/// tenant's warm standby on its database's StatefulSet, for a failback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_a_failover_moved_is_served_at_the_standby_site_and_fenced_at_its_primary() {
    use fenice::api::plan::FailoverPlan;
    use k8s_openapi::api::apps::v1::Deployment;
    let (control, remote, client, site_client) = clusters().await;
    let (standby, standby_client) = standby_cluster(&client, &site_client).await;
    s3_policy(&client, "http://127.0.0.1:9").await;
    // The example Site exposes apps with an HTTPRoute and switches DNS with external-dns.
    install_crds(&standby_client, true).await;
    let sites: Api<Site> = Api::all(client.clone());
    for name in ["westpole-rome", "azure-italynorth"] {
        sites.create(&PostParams::default(), &example::<Site>("sites.yaml", name)).await.unwrap();
    }
    let plans: Api<FailoverPlan> = Api::all(client.clone());
    plans.create(&PostParams::default(), &example("plan.yaml", "westpole-to-azure")).await.unwrap();
    let tenants: Api<InvoicingTenant> = Api::namespaced(client.clone(), NAMESPACE);
    tenants.create(&PostParams::default(), &example("tenants.yaml", "studio-rossi")).await.unwrap();
    let state = tempfile::tempdir().unwrap();
    let (stop, running) = operator(&control, state.path()).await;
    let condition = |type_: &'static str, reason: &'static str| {
        let tenants = tenants.clone();
        async move {
            status_when(
                &tenants,
                "studio-rossi",
                |t| t.status,
                |s| s.conditions.iter().any(|c| c.type_ == type_ && c.reason == reason),
            )
            .await
        }
    };
    condition("Standby", "StandbyStarting").await;
    let apps = |client: &Client| Api::<Deployment>::namespaced(client.clone(), NAMESPACE);
    let replicas = |client: &Client| {
        let apps = apps(client);
        async move { apps.get("studio-rossi-app").await.unwrap().spec.unwrap().replicas }
    };
    assert_eq!(replicas(&site_client).await, Some(2));
    let standby_sets: Api<StatefulSet> = Api::namespaced(standby_client.clone(), NAMESPACE);
    let standby_db = standby_sets.get("studio-rossi-db").await.unwrap().uid();
    let primary_sets: Api<StatefulSet> = Api::namespaced(site_client.clone(), NAMESPACE);
    let primary_uid = primary_sets.get("studio-rossi-db").await.unwrap().uid();

    // The lease is being handed over: the primary's app stops.
    let handover = json!({"status": {"handover": "azure-italynorth"}});
    plans.patch_status("westpole-to-azure", &PatchParams::default(), &Patch::Merge(&handover)).await.unwrap();
    let fenced = condition("Ready", "Fenced").await;
    let ready = fenced.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert!(ready.message.contains("handing its lease from westpole-rome to azure-italynorth"), "{ready:?}");
    assert_eq!(replicas(&site_client).await, Some(0));

    // The standby site took the lease and a failover served the tenant there.
    let taken = json!({"status": {"handover": null, "leaseHolder": "azure-italynorth", "epoch": 2}});
    plans.patch_status("westpole-to-azure", &PatchParams::default(), &Patch::Merge(&taken)).await.unwrap();
    let serving = json!({"apiVersion": "fenice.io/v1alpha1", "kind": "InvoicingTenant",
        "status": {"serving": {"site": "azure-italynorth", "epoch": 2, "failover": "rome-lost"}}});
    let as_failover = PatchParams::apply("fenice-failover").force();
    tenants.patch_status("studio-rossi", &as_failover, &Patch::Apply(&serving)).await.unwrap();
    let moved =
        status_when(&tenants, "studio-rossi", |t| t.status, |s| s.active_site.as_deref() == Some("azure-italynorth"))
            .await;
    assert_eq!(moved.epoch, Some(2), "{moved:?}");
    assert_eq!(replicas(&standby_client).await, Some(2), "the app runs at the standby site");
    let config: Api<ConfigMap> = Api::namespaced(standby_client.clone(), NAMESPACE);
    let config = config.get("studio-rossi-app").await.unwrap().data.unwrap();
    assert_eq!(config["FENICE_APP_EPOCH"], "2");
    assert_eq!(config["FENICE_SITE"], "azure-italynorth");
    let db = standby_sets.get("studio-rossi-db").await.unwrap();
    assert_eq!(db.uid(), standby_db, "the standby's StatefulSet is the database now, never made again");
    assert!(
        db.spec.unwrap().template.spec.unwrap().init_containers.is_none(),
        "the stack's StatefulSet: no standby init container any more"
    );

    // The primary runs the tenant's warm standby now: no app, its database's
    // StatefulSet (the same one) with the init container that sets the old
    // primary's data aside and makes a fresh standby of the new timeline.
    let primary_db = primary_sets.get("studio-rossi-db").await.unwrap();
    assert_eq!(primary_db.uid(), primary_uid, "the same StatefulSet, never made again");
    let init = primary_db.spec.unwrap().template.spec.unwrap().init_containers.expect("a standby's init container");
    let args = init[0].args.clone().unwrap().join(" ");
    assert!(args.contains("--standby --keep-initialised --set-aside-diverged"), "{args}");
    condition("Standby", "StandbyStarting").await;
    assert!(apps(&site_client).get_opt("studio-rossi-app").await.unwrap().is_none(), "no app at the old primary");
    primary_sets
        .patch_status("studio-rossi-db", &PatchParams::default(), &Patch::Merge(&ready_status()))
        .await
        .unwrap();
    let replaying = condition("Standby", "StandbyReplaying").await;
    assert_eq!(replaying.standby_site.as_deref(), Some("westpole-rome"), "{replaying:?}");

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(40), running).await.expect("the operator stopped").unwrap();
    within_rbac(&control, &remote);
    within_rbac(&control, &standby);
}

/// A second site's cluster (the standby, `azure-italynorth`) with the
/// tenants' namespace, which the primary's site cluster gets too, and the
/// Secret the operator reaches it with.
async fn standby_cluster(client: &Client, site_client: &Client) -> (apiserver::Running, Client) {
    let standby = apiserver::spawn(ServerOptions { crds: Vec::new(), ..ServerOptions::default() }).await.unwrap();
    let standby_client = standby.client().await.unwrap();
    for site in [site_client, &standby_client] {
        create(&Api::<Namespace>::all(site.clone()), json!({"metadata": {"name": NAMESPACE}})).await;
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let kubeconfig = json!({"kubeconfig": standby.kubeconfig_as(SITE_USER)});
    create(&secrets, json!({"metadata": {"name": "site-azure-italynorth"}, "stringData": kubeconfig})).await;
    (standby, standby_client)
}

/// The witness's store: the S3 server, and the proxy the sites reach it through
/// (to make it fall silent).
struct WitnessStore {
    s3: fenice::testkit::S3Server,
    proxy: fenice::testkit::FaultProxy,
}

impl WitnessStore {
    /// The example plan's lease, read past the proxy.
    async fn lease(&self) -> fenice::failover::witness::Witness {
        let store = self.s3.store("fenice-witness-eu-south-1", "leases").await.unwrap();
        fenice::failover::witness::Witness::new(std::sync::Arc::new(store), "westpole-to-azure")
    }
}

/// The example witness Site on the S3 server (with its Secret) and the example
/// plan, changed by `changes`, with a lease of 3 s renewed every second.
async fn witnessed_plan(client: &Client, changes: Value) -> (WitnessStore, Api<fenice::api::plan::FailoverPlan>) {
    use fenice::api::plan::FailoverPlan;
    let s3 = fenice::testkit::S3Server::start().expect("moto");
    s3.store("fenice-witness-eu-south-1", "").await.unwrap().create_bucket(false).await.unwrap();
    let proxy = fenice::testkit::FaultProxy::start(s3.addr()).await.unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let keys = json!({"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"});
    create(&secrets, json!({"metadata": {"name": "witness-aws"}, "stringData": keys})).await;
    let mut witness: Site = example("sites.yaml", "aws-witness");
    let store = witness.spec.witness_store.as_mut().unwrap().s3.as_mut().unwrap();
    (store.endpoint, store.force_path_style) = (Some(proxy.endpoint()), true);
    Api::<Site>::all(client.clone()).create(&PostParams::default(), &witness).await.unwrap();
    let plans: Api<FailoverPlan> = Api::all(client.clone());
    let mut plan = serde_json::to_value(example::<FailoverPlan>("plan.yaml", "westpole-to-azure")).unwrap();
    json_patch::merge(&mut plan, &json!({"spec": {"witness": {"leaseDuration": "3s", "renewInterval": "1s"}}}));
    json_patch::merge(&mut plan, &changes);
    plans.create(&PostParams::default(), &serde_json::from_value(plan).unwrap()).await.unwrap();
    (WitnessStore { s3, proxy }, plans)
}

/// The example tenant at westpole-rome, its plan with a witness at the S3
/// server (a lease of 3 s renewed every second), and the operator of
/// westpole-rome running, until its agent holds the lease and the tenant's
/// stack is applied unfenced.
struct Witnessed {
    control: apiserver::Running,
    remote: apiserver::Running,
    site_client: Client,
    witness: WitnessStore,
    plans: Api<fenice::api::plan::FailoverPlan>,
    tenants: Api<InvoicingTenant>,
    stop: tokio::sync::oneshot::Sender<()>,
    running: tokio::task::JoinHandle<()>,
    _state: tempfile::TempDir,
}

impl Witnessed {
    async fn start() -> Self {
        use fenice::api::plan::Standing;
        let (control, remote, client, site_client) = clusters().await;
        create(&Api::<Namespace>::all(site_client.clone()), json!({"metadata": {"name": NAMESPACE}})).await;
        s3_policy(&client, "http://127.0.0.1:9").await;
        let sites: Api<Site> = Api::all(client.clone());
        sites.create(&PostParams::default(), &example::<Site>("sites.yaml", "westpole-rome")).await.unwrap();
        let (witness, plans) = witnessed_plan(&client, json!({})).await;
        let tenants: Api<InvoicingTenant> = Api::namespaced(client.clone(), NAMESPACE);
        tenants.create(&PostParams::default(), &example("tenants.yaml", "studio-rossi")).await.unwrap();

        let state = tempfile::tempdir().unwrap();
        let (stop, running) =
            operator_run::run_at(&control, OPERATOR_USER, OPERATOR_NAMESPACE, state.path(), Some("westpole-rome"))
                .await;
        let witnessed = Self { control, remote, site_client, witness, plans, tenants, stop, running, _state: state };
        let active = witnessed.standing(Standing::Active).await;
        let entry = active.sites.iter().find(|e| e.site == "westpole-rome").unwrap();
        assert_eq!(entry.epoch, Some(1), "the source created the lease in epoch 1: {active:?}");
        let held = witnessed.witness.lease().await.read().await.unwrap().expect("the lease was created");
        assert_eq!((held.record.holder.as_str(), held.record.epoch), ("westpole-rome", 1));
        ready_when(&witnessed.tenants, "studio-rossi", |reason, _| reason == "StackStarting").await;
        assert_eq!(witnessed.replicas().await, Some(2));
        witnessed
    }

    /// The plan's status once westpole-rome's entry says `wanted`.
    async fn standing(&self, wanted: fenice::api::plan::Standing) -> fenice::api::plan::FailoverPlanStatus {
        status_when(
            &self.plans,
            "westpole-to-azure",
            |p| p.status,
            |s| s.sites.iter().any(|e| e.site == "westpole-rome" && e.standing == wanted),
        )
        .await
    }

    /// The replicas of the tenant's app at westpole-rome.
    async fn replicas(&self) -> Option<i32> {
        let apps: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(self.site_client.clone(), NAMESPACE);
        apps.get("studio-rossi-app").await.unwrap().spec.unwrap().replicas
    }

    /// The tenant is fenced at westpole-rome, for `why`.
    async fn fenced(&self, why: &str) {
        let (_, message) = ready_when(&self.tenants, "studio-rossi", |reason, _| reason == "Fenced").await;
        assert!(message.contains(why), "{message}");
        assert_eq!(self.replicas().await, Some(0));
    }

    /// The tenant is fenced at westpole-rome, for `why`; then the operator stops.
    async fn fenced_then_stop(self, why: &str) {
        self.fenced(why).await;
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(40), self.running).await.expect("the operator stopped").unwrap();
        within_rbac(&self.control, &self.remote);
    }
}

/// `fenice operator --site westpole-rome` runs that site's lease agent for the
/// example plan: it creates the witness lease and renews it, and the plan's
/// tenants are served at the site while the agent holds it; once the witness
/// stops answering, the agent fences the site before its lease could expire
/// and the tenant's app is stopped there. When the witness answers again, the
/// agent renews the lease it still holds and the site serves again, in the
/// same epoch; when it is gone for good, the site stays fenced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_serves_its_tenants_only_while_its_lease_agent_holds_the_witness_lease() {
    use fenice::api::plan::Standing;
    let witnessed = Witnessed::start().await;
    // A write to the witness Site's status is no change of its store: the agent goes on (same incarnation).
    let before = witnessed.witness.lease().await.read().await.unwrap().unwrap().record;
    let sites: Api<Site> = Api::all(witnessed.control.client().await.unwrap());
    let note = json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Checked",
        "message": "a status write", "lastTransitionTime": "2026-12-06T12:00:00Z"}]}});
    sites.patch_status("aws-witness", &PatchParams::default(), &Patch::Merge(&note)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(7)).await;
    let after = witnessed.witness.lease().await.read().await.unwrap().unwrap().record;
    assert_eq!(after.incarnation, before.incarnation, "the same agent renews: {before:?} {after:?}");
    assert!(after.renewals > before.renewals, "{after:?}");
    let fenced_by_agent = "westpole-rome's lease agent fenced it";
    witnessed.witness.proxy.silence(true);
    let fenced = witnessed.standing(Standing::Fenced).await;
    let entry = fenced.sites.iter().find(|e| e.site == "westpole-rome").unwrap();
    assert_eq!(entry.epoch, Some(1), "a fenced entry keeps the epoch it was last active under: {fenced:?}");
    witnessed.fenced(fenced_by_agent).await;

    witnessed.witness.proxy.silence(false);
    let back = witnessed.standing(Standing::Active).await;
    let entry = back.sites.iter().find(|e| e.site == "westpole-rome").unwrap();
    assert_eq!(entry.epoch, Some(1), "the same lease, renewed: {back:?}");
    ready_when(&witnessed.tenants, "studio-rossi", |reason, _| reason == "StackStarting").await;
    assert_eq!(witnessed.replicas().await, Some(2));

    // The witness goes away for good.
    witnessed.witness.proxy.silence(true);
    witnessed.standing(Standing::Fenced).await;
    witnessed.fenced_then_stop(fenced_by_agent).await;
}

/// A Failover asks, through the witness, for the lease of epoch 1 to go to
/// the standby site: westpole-rome's agent fences its site, then writes the
/// lease naming azure-italynorth in epoch 2. A request for a site outside the
/// plan, or a second one for the same epoch, changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_holder_hands_the_lease_over_when_a_failover_asks_through_the_witness() {
    use fenice::failover::witness::HandOverRequest;
    let witnessed = Witnessed::start().await;
    let lease = witnessed.witness.lease().await;
    let ask = |to: &str| HandOverRequest { to: to.into(), failover: "rome-planned".into() };
    lease.request_handover(1, &ask("azure-italynorth")).await.unwrap();
    lease.request_handover(1, &ask("azure-italynorth")).await.expect("asking again is no change");
    let refused = lease.request_handover(1, &ask("aws-witness")).await.unwrap_err().to_string();
    assert!(refused.contains("already asks for azure-italynorth"), "{refused}");
    witnessed.standing(fenice::api::plan::Standing::Fenced).await;
    let handed = tokio::time::timeout(DEADLINE, async {
        loop {
            match lease.read().await.unwrap() {
                Some(v) if v.record.holder == "azure-italynorth" => return v.record,
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    })
    .await
    .expect("the lease was handed over");
    assert_eq!(handed.epoch, 2);
    witnessed.fenced_then_stop("westpole-rome's lease agent fenced it").await;
}

/// Two Kubernetes sites and a witness on the S3 server, the example plan
/// (changed by `plan_changes`) with a lease of 3 s renewed every second, the
/// warm example tenant, and each site's operator running with its lease
/// agent, until the primary holds the lease and the standby is applied.
struct TwoSites {
    control: apiserver::Running,
    remote: apiserver::Running,
    standby: apiserver::Running,
    client: Client,
    site_client: Client,
    standby_client: Client,
    witness: WitnessStore,
    plans: Api<fenice::api::plan::FailoverPlan>,
    tenants: Api<InvoicingTenant>,
    /// Each site's operator: its stop and its task.
    operators: Vec<(tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>)>,
    _states: Vec<tempfile::TempDir>,
}

impl TwoSites {
    async fn start(plan_changes: Value, westpole_health: Option<String>) -> Self {
        use fenice::api::plan::Standing;
        let (control, remote, client, site_client) = clusters().await;
        let (standby, standby_client) = standby_cluster(&client, &site_client).await;
        install_crds(&standby_client, true).await;
        s3_policy(&client, "http://127.0.0.1:9").await;
        let sites: Api<Site> = Api::all(client.clone());
        let mut westpole: Site = example("sites.yaml", "westpole-rome");
        westpole.spec.health = westpole_health.map(|url| {
            serde_json::from_value(
                json!({"endpoints": [{"name": "probe", "url": url}], "interval": "500ms", "timeout": "500ms"}),
            )
            .unwrap()
        });
        sites.create(&PostParams::default(), &westpole).await.unwrap();
        sites.create(&PostParams::default(), &example::<Site>("sites.yaml", "azure-italynorth")).await.unwrap();
        let (witness, plans) = witnessed_plan(&client, plan_changes).await;
        let tenants: Api<InvoicingTenant> = Api::namespaced(client.clone(), NAMESPACE);
        tenants.create(&PostParams::default(), &example("tenants.yaml", "studio-rossi")).await.unwrap();

        let mut operators = Vec::new();
        let mut states = Vec::new();
        for site in ["westpole-rome", "azure-italynorth"] {
            let state = tempfile::tempdir().unwrap();
            operators.push(
                operator_run::run_at(&control, OPERATOR_USER, OPERATOR_NAMESPACE, state.path(), Some(site)).await,
            );
            states.push(state);
        }
        let two = Self {
            control,
            remote,
            standby,
            client,
            site_client,
            standby_client,
            witness,
            plans,
            tenants,
            operators,
            _states: states,
        };
        two.standing_of("westpole-rome", Standing::Active).await;
        two.standing_of("azure-italynorth", Standing::Fenced).await;
        let warm = status_when(&two.tenants, "studio-rossi", |t| t.status, |s| s.standby_site.is_some()).await;
        assert_eq!(warm.standby_site.as_deref(), Some("azure-italynorth"));
        two.standby_replays_at(&two.standby_client).await;
        two
    }

    /// The standby's StatefulSet at the site `client` reaches becomes ready
    /// (its pod replays), until the tenant says its standby replays.
    async fn standby_replays_at(&self, client: &Client) -> InvoicingTenantStatus {
        let sets: Api<StatefulSet> = Api::namespaced(client.clone(), NAMESPACE);
        sets.patch_status("studio-rossi-db", &PatchParams::default(), &Patch::Merge(&ready_status())).await.unwrap();
        let replaying = |s: &InvoicingTenantStatus| {
            s.conditions.iter().any(|c| c.type_ == "Standby" && c.reason == "StandbyReplaying")
        };
        status_when(&self.tenants, "studio-rossi", |t| t.status, replaying).await
    }

    /// The plan's status once `site`'s entry says `wanted`.
    async fn standing_of(
        &self,
        site: &str,
        wanted: fenice::api::plan::Standing,
    ) -> fenice::api::plan::FailoverPlanStatus {
        status_when(
            &self.plans,
            "westpole-to-azure",
            |p| p.status,
            |s| s.sites.iter().any(|e| e.site == site && e.standing == wanted),
        )
        .await
    }

    /// The Job `name` at the standby site, once it is there.
    async fn job(&self, name: &str) -> k8s_openapi::api::batch::v1::Job {
        self.job_at(&self.standby_client, name).await
    }

    /// The Job `name` at the site `client` reaches, once it is there.
    async fn job_at(&self, client: &Client, name: &str) -> k8s_openapi::api::batch::v1::Job {
        let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(client.clone(), NAMESPACE);
        appeared(&jobs, name, DEADLINE, "the failover's Job").await
    }

    /// What the standby site's kubelet does while the failover `name` runs in
    /// `epoch`: the promote Job reports a verified standby whose newest invoice
    /// was written `lag` before now, the reconcile Job succeeds, and the stack
    /// applied there becomes ready; until the Failover succeeded.
    async fn kubelet_runs(
        &self,
        name: &str,
        epoch: u64,
        lag: jiff::SignedDuration,
    ) -> fenice::api::failover::FailoverStatus {
        self.kubelet_runs_at((&self.standby_client, "azure-italynorth"), name, epoch, lag).await
    }

    /// [`Self::kubelet_runs`] at the failover's target `site` (its client and name).
    async fn kubelet_runs_at(
        &self,
        site: (&Client, &str),
        name: &str,
        epoch: u64,
        lag: jiff::SignedDuration,
    ) -> fenice::api::failover::FailoverStatus {
        use fenice::api::failover::{Failover, FailoverPhase};
        self.kubelet_moves(site, "studio-rossi", name, epoch, lag).await;
        let failovers: Api<Failover> = Api::all(self.client.clone());
        status_when(&failovers, name, |f| f.status, |s| s.phase == FailoverPhase::Succeeded).await
    }

    /// What the target `site`'s kubelet does for `tenant` in the failover
    /// `name` of `epoch`: its promote Job reports a verified database whose
    /// newest invoice was written `lag` before now, its reconcile Job
    /// succeeds, and its stack applied there becomes ready.
    async fn kubelet_moves(
        &self,
        (site, site_name): (&Client, &str),
        tenant: &str,
        name: &str,
        epoch: u64,
        lag: jiff::SignedDuration,
    ) {
        self.promote_job_ends(site, tenant, epoch, lag).await;
        self.reconcile_job_ends(site, tenant, epoch).await;
        self.stack_ready((site, site_name), tenant, name, epoch).await;
    }

    /// The arguments of the Job `job`'s container.
    fn job_args(job: k8s_openapi::api::batch::v1::Job) -> String {
        job.spec.unwrap().template.spec.unwrap().containers[0].args.clone().unwrap().join(" ")
    }

    /// `tenant`'s promote Job at `site` reports a verified database whose
    /// newest invoice was written `lag` before now.
    async fn promote_job_ends(&self, site: &Client, tenant: &str, epoch: u64, lag: jiff::SignedDuration) {
        let promote = format!("{tenant}-promote-e{epoch}");
        let args = Self::job_args(self.job_at(site, &promote).await);
        assert!(args.contains(&format!("agent verify --promote --tenant {tenant}")), "{args}");
        let last_write = jiff::Timestamp::now() - lag;
        let report =
            json!({"tenant": tenant, "snapshot": "5e1f0c2a", "verified": true, "last_write": last_write.to_string()});
        pod_ended(site, &promote, "failover", 0, &report.to_string()).await;
    }

    /// `tenant`'s reconcile Job at `site` succeeds.
    async fn reconcile_job_ends(&self, site: &Client, tenant: &str, epoch: u64) {
        let reconcile = format!("{tenant}-reconcile-e{epoch}");
        let args = Self::job_args(self.job_at(site, &reconcile).await);
        assert!(args.contains(&format!("agent reconcile-sdi --json --tenant {tenant}")), "{args}");
        pod_ended(site, &reconcile, "failover", 0, "").await;
    }

    /// `tenant` is served at `site` under `epoch` by the failover `name`
    /// (`status.serving`), and the stack applied there becomes ready.
    async fn stack_ready(&self, (site, site_name): (&Client, &str), tenant: &str, name: &str, epoch: u64) {
        use k8s_openapi::api::apps::v1::Deployment;
        let serves_here = |s: &InvoicingTenantStatus| s.serving.as_ref().is_some_and(|s| s.epoch == epoch);
        let moved = status_when(&self.tenants, tenant, |t| t.status, serves_here).await;
        let serving = moved.serving.unwrap();
        assert_eq!((serving.site.as_str(), serving.epoch, serving.failover.as_str()), (site_name, epoch, name));
        let apps: Api<Deployment> = Api::namespaced(site.clone(), NAMESPACE);
        let app = format!("{tenant}-app");
        appeared(&apps, &app, DEADLINE, "the app, applied at the target site").await;
        let ready = json!({"status": {"replicas": 2, "readyReplicas": 2, "availableReplicas": 2}});
        apps.patch_status(&app, &PatchParams::default(), &Patch::Merge(&ready)).await.unwrap();
        let sets: Api<StatefulSet> = Api::namespaced(site.clone(), NAMESPACE);
        sets.patch_status(&format!("{tenant}-db"), &PatchParams::default(), &Patch::Merge(&ready_status()))
            .await
            .unwrap();
    }

    /// The standby's operator dies (its task aborted, as by SIGKILL: nothing
    /// of it runs on) and a new one starts at the same site on a fresh state.
    async fn standby_operator_dies_and_comes_back(&mut self) {
        let (_, running) = self.operators.remove(1);
        running.abort();
        let _ = running.await;
        let state = tempfile::tempdir().unwrap();
        let back = operator_run::run_at(
            &self.control,
            OPERATOR_USER,
            OPERATOR_NAMESPACE,
            state.path(),
            Some("azure-italynorth"),
        );
        self.operators.push(back.await);
        self._states.push(state);
    }

    /// The Event that says the failover `name` succeeded.
    async fn succeeded(&self, name: &str) -> Event {
        let events: Api<Event> = Api::all(self.client.clone());
        tokio::time::timeout(DEADLINE, async {
            loop {
                let all = events.list(&ListParams::default()).await.unwrap().items;
                let found = all.into_iter().find(|e| {
                    e.reason.as_deref() == Some("FailoverSucceeded")
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
                });
                match found {
                    Some(event) => return event,
                    None => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        })
        .await
        .expect("an Event says it succeeded")
    }

    /// The primary site runs the tenant's warm standby (no app), an Event says
    /// the failover `name` succeeded; then both operators stop.
    async fn primary_standby_then_stop(self, name: &str) {
        use k8s_openapi::api::apps::v1::Deployment;
        let primary_apps: Api<Deployment> = Api::namespaced(self.site_client.clone(), NAMESPACE);
        vanished(&primary_apps, "studio-rossi-app", "the primary runs the tenant's standby, no app").await;
        self.succeeded_then_stop(name).await;
    }

    /// The failover `name` said it succeeded; then both operators stop.
    async fn succeeded_then_stop(self, name: &str) {
        let told = self.succeeded(name).await;
        assert!(told.note.as_deref().is_some_and(|n| n.contains("1/1 tenants serve at azure-italynorth")), "{told:?}");
        self.stop().await;
    }

    /// Both operators stop; neither used more of either cluster than RBAC grants.
    async fn stop(self) {
        for (stop, running) in self.operators {
            let _ = stop.send(());
            tokio::time::timeout(Duration::from_secs(40), running).await.expect("the operator stopped").unwrap();
        }
        within_rbac(&self.control, &self.remote);
        within_rbac(&self.control, &self.standby);
    }
}

/// A person's failover at Kubernetes sites, carried out by the operator of
/// the standby site: the lease is handed over through the witness (the
/// primary's operator fences its site first), the tenant's warm standby is
/// promoted and verified by a Job there, SdI is reconciled by another, the
/// tenant is served there under the new epoch on the standby's StatefulSet,
/// and the Failover ends Succeeded with its RPO; the primary stays fenced.
/// The Jobs' pods are ended by the test, as a kubelet would (the agent's
/// `verify --promote` runs against real PostgreSQL in tests/pitr.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_failover_moves_a_warm_tenant_to_the_standby_site_through_the_witness() {
    use fenice::api::failover::Failover;
    use fenice::api::plan::Standing;
    let two = TwoSites::start(json!({"spec": {"mode": "Manual"}}), None).await;
    let standby_sets: Api<StatefulSet> = Api::namespaced(two.standby_client.clone(), NAMESPACE);
    let standby_db = standby_sets.get("studio-rossi-db").await.unwrap().uid();
    let failovers: Api<Failover> = Api::all(two.client.clone());
    let failover: Failover = serde_json::from_value(json!({
        "apiVersion": "fenice.io/v1alpha1", "kind": "Failover", "metadata": {"name": "rome-planned"},
        "spec": {"plan": "westpole-to-azure", "mode": "Manual", "reason": "planned maintenance at Westpole"},
    }))
    .unwrap();
    failovers.create(&PostParams::default(), &failover).await.unwrap();

    // The primary hands the lease over before the standby's operator promotes anything.
    two.job("studio-rossi-promote-e2").await;
    let handed = two.standing_of("westpole-rome", Standing::Fenced).await;
    let azure = handed.sites.iter().find(|e| e.site == "azure-italynorth").unwrap();
    assert_eq!((azure.standing, azure.epoch), (Standing::Active, Some(2)), "{handed:?}");
    let done = two.kubelet_runs("rome-planned", 2, jiff::SignedDuration::from_secs(2)).await;
    assert_eq!((done.epoch, done.tenants_done, done.tenants_total), (Some(2), 1, 1), "{done:?}");
    // Planned: the primary wrote until it was fenced, after the Failover was created.
    assert_eq!(done.rpo.as_ref().map(|r| r.as_std()), Some(Duration::ZERO), "{done:?}");
    assert_eq!(
        standby_sets.get("studio-rossi-db").await.unwrap().uid(),
        standby_db,
        "the standby's StatefulSet serves"
    );
    let config: Api<ConfigMap> = Api::namespaced(two.standby_client.clone(), NAMESPACE);
    assert_eq!(config.get("studio-rossi-app").await.unwrap().data.unwrap()["FENICE_APP_EPOCH"], "2");
    two.primary_standby_then_stop("rome-planned").await;
}

/// The automatic path at Kubernetes sites: the primary's operator and its
/// health endpoint die; the standby's operator sees the endpoint fail and the
/// lease go unrenewed (two vantage points), its agent takes the lease once it
/// expired, declares the Failover `westpole-to-azure-e2`, and carries it out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_primary_is_detected_and_its_tenant_failed_over_automatically() {
    dead_primary(Loss::Operator).await;
}

/// As above, with the primary's cluster lost too (its API server stops, as
/// when the provider dies): nothing the failover does may need it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_lost_with_its_cluster_is_failed_over_automatically() {
    dead_primary(Loss::Cluster).await;
}

/// What of the primary dies.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Loss {
    /// Its operator and its health endpoint.
    Operator,
    /// Those and its cluster's API server.
    Cluster,
}

async fn dead_primary(loss: Loss) {
    use fenice::api::failover::{Failover, FailoverTrigger};
    use fenice::api::plan::Standing;
    let (url, answering) = health::health_endpoint().await;
    let detection = json!({"failureThreshold": 2, "window": "1s", "minVantagePoints": 2});
    let mut two = TwoSites::start(json!({"spec": {"mode": "Automatic", "detection": detection}}), Some(url)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let plan = two.plans.get("westpole-to-azure").await.unwrap().status.unwrap();
    let westpole = plan.sites.iter().find(|e| e.site == "westpole-rome").unwrap();
    assert_eq!((westpole.standing, westpole.epoch), (Standing::Active, Some(1)), "no takeover while it answers");

    // The primary dies: its operator (and lease agent), and what answered its probes.
    let killed_at = jiff::Timestamp::now();
    let (stop, running) = two.operators.remove(0);
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(40), running).await.expect("the operator stopped").unwrap();
    answering.abort();
    if loss == Loss::Cluster {
        two.remote.halt().await.unwrap();
    }

    let taken = two.standing_of("azure-italynorth", Standing::Active).await;
    let azure = taken.sites.iter().find(|e| e.site == "azure-italynorth").unwrap();
    assert_eq!(azure.epoch, Some(2), "{taken:?}");
    let failovers: Api<Failover> = Api::all(two.client.clone());
    let declared = appeared(&failovers, "westpole-to-azure-e2", DEADLINE, "the standby declares the Failover").await;
    assert_eq!(declared.spec.mode, FailoverTrigger::Automatic);
    let detected = declared.spec.loss_time.clone().expect("the detection's time").0;
    let created = declared.metadata.creation_timestamp.clone().unwrap().0;
    // NB: API times are whole seconds.
    assert!(killed_at.as_second() <= detected.as_second() && detected <= created, "{killed_at} {detected} {created}");
    assert!(declared.spec.reason.as_deref().is_some_and(|r| r.contains("westpole-rome was down")), "{declared:?}");
    let done = two.kubelet_runs("westpole-to-azure-e2", 2, jiff::SignedDuration::from_secs(1)).await;
    assert_eq!((done.epoch, done.tenants_done), (Some(2), 1), "{done:?}");
    assert_eq!(
        done.declared_loss_time.as_ref().map(|t| t.0),
        Some(detected),
        "RTO counts from the detection: {done:?}"
    );
    let (to_detection, to_failover) = (detected.duration_since(killed_at), created.duration_since(detected));
    println!("detected {to_detection:#} after the kill; the Failover made {to_failover:#} after the detection");
    let took = jiff::Timestamp::now().duration_since(killed_at);
    println!("from the kill to the Failover's success: {took:#}");
    match loss {
        Loss::Operator => two.primary_standby_then_stop("westpole-to-azure-e2").await,
        Loss::Cluster => two.succeeded_then_stop("westpole-to-azure-e2").await,
    }
}

/// An SRE's working directory: a kubeconfig whose context `control` reaches
/// the cluster holding the resources, and kubectl.
struct Sre {
    _dir: tempfile::TempDir,
    work: std::path::PathBuf,
    shims: std::path::PathBuf,
    kubeconfig: String,
}

impl Sre {
    fn new(two: &TwoSites, kubectl: &std::path::Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let shims = runbook::kubectl_shim(dir.path(), kubectl);
        let work = dir.path().join("sre");
        std::fs::create_dir_all(&work).unwrap();
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: control\n  cluster: {{server: 'http://{}'}}\n\
             users:\n- name: sre\n  user: {{token: sre}}\ncontexts:\n- name: control\n  context: {{cluster: control, user: sre}}\n\
             current-context: control\n",
            two.control.addr()
        );
        std::fs::write(work.join("kubeconfig"), text).unwrap();
        let kubeconfig = work.join("kubeconfig").display().to_string();
        Self { _dir: dir, work, shims, kubeconfig }
    }

    /// The runbooks' variables for the failover `failover`.
    fn env<'a>(&'a self, failover: &'a str, reason: &'a str) -> [(&'a str, &'a str); 6] {
        [
            ("KUBECONFIG", self.kubeconfig.as_str()),
            ("CONTROL", "control"),
            ("PLAN", "westpole-to-azure"),
            ("PRIMARY", "westpole-rome"),
            ("FAILOVER", failover),
            ("REASON", reason),
        ]
    }

    /// What a runbook run printed.
    fn said(out: Result<std::process::Output, tokio::task::JoinError>) -> String {
        let out = out.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Whether `said` has a line of the tenant served at the standby site in epoch 2.
fn served_at_the_standby(said: &str) -> bool {
    said.lines().any(|l| {
        l.split_whitespace().collect::<Vec<_>>() == ["studio-rossi", "azure-italynorth", "azure-italynorth", "2"]
    })
}

/// runbooks/planned-failover.md, line by line with kubectl, against the two
/// sites: checks, creates the Failover, follows it to Succeeded while the
/// test ends the Jobs' pods as a kubelet would, and checks the result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_planned_failover_runbook_moves_the_plans_tenants_line_by_line() {
    let Some(real_kubectl) = runbook::kubectl() else { return };
    let two = TwoSites::start(json!({"spec": {"mode": "Manual"}}), None).await;
    let sre = Sre::new(&two, &real_kubectl);
    let env = sre.env("rome-planned", "maintenance at Westpole");
    let (done, out) = tokio::join!(
        two.kubelet_runs("rome-planned", 2, jiff::SignedDuration::from_secs(2)),
        runbook::run_runbook_beside("planned-failover.md", &sre.work, &sre.shims, &env)
    );
    let said = Sre::said(out);
    assert_eq!(done.epoch, Some(2), "{done:?}");
    assert!(said.contains("westpole-rome Active epoch 1"), "before: {said}");
    assert!(said.contains("Succeeded epoch 2 done 1/1"), "the result: {said}");
    assert!(said.contains("westpole-rome Fenced"), "the primary fenced: {said}");
    assert!(said.contains("azure-italynorth Active epoch 2"), "the standby holds the lease: {said}");
    assert!(served_at_the_standby(&said), "the tenant is served at the standby: {said}");
    two.primary_standby_then_stop("rome-planned").await;
}

/// runbooks/emergency-failover.md, line by line with kubectl: the primary's
/// operator and its cluster's API server are gone (its lease no longer
/// renewed) when the runbook starts; the standby takes the lease once it
/// expired and serves the tenant; the primary's operator comes back before
/// the last step (its cluster not yet) and stays fenced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_emergency_failover_runbook_brings_the_tenants_back_when_the_primary_is_gone() {
    use fenice::api::plan::Standing;
    let Some(real_kubectl) = runbook::kubectl() else { return };
    let mut two = TwoSites::start(json!({"spec": {"mode": "Manual"}}), None).await;
    let (stop, running) = two.operators.remove(0);
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(40), running).await.expect("the primary's operator stopped").unwrap();
    // The primary's cluster is gone with its provider (the resources' cluster is not).
    two.remote.halt().await.unwrap();
    let sre = Sre::new(&two, &real_kubectl);
    let lost_at = (jiff::Timestamp::now() - jiff::SignedDuration::from_secs(90)).round(jiff::Unit::Second).unwrap();
    let lost_text = lost_at.to_string();
    let mut env = sre.env("rome-lost", "Westpole down since 03:12 by its status page").to_vec();
    env.push(("LOST_AT", &lost_text));
    let state = tempfile::tempdir().unwrap();
    let ((done, back), out) = tokio::join!(
        async {
            let done = two.kubelet_runs("rome-lost", 2, jiff::SignedDuration::from_secs(1)).await;
            // The primary comes back.
            let back = operator_run::run_at(
                &two.control,
                OPERATOR_USER,
                OPERATOR_NAMESPACE,
                state.path(),
                Some("westpole-rome"),
            )
            .await;
            (done, back)
        },
        runbook::run_runbook_beside("emergency-failover.md", &sre.work, &sre.shims, &env)
    );
    two.operators.push(back);
    let said = Sre::said(out);
    assert_eq!(done.epoch, Some(2), "{done:?}");
    assert_eq!(
        done.declared_loss_time.as_ref().map(|t| t.0),
        Some(lost_at),
        "RTO and RPO count from the loss: {done:?}"
    );
    assert!(said.contains("westpole-rome Active epoch 1"), "the dead primary's last word: {said}");
    assert!(said.contains("Succeeded epoch 2 done 1/1"), "the result: {said}");
    assert!(served_at_the_standby(&said), "the tenant is served at the standby: {said}");
    assert!(said.lines().last().is_some_and(|l| l == "westpole-rome Fenced"), "the primary came back fenced: {said}");
    let plan = two.standing_of("azure-italynorth", Standing::Active).await;
    let azure = plan.sites.iter().find(|e| e.site == "azure-italynorth").unwrap();
    assert_eq!(azure.epoch, Some(2), "{plan:?}");
    two.succeeded_then_stop("rome-lost").await;
}

/// The standby's operator dies in the middle of a failover at each step that
/// waits on its site (its tasks dropped while the promote Job runs, while the
/// reconcile Job runs, while the stack applied there is not ready yet) and
/// starts again each time: it goes on from the state in the witness store,
/// finds the Jobs it had started rather than starting others, and the
/// Failover succeeds under the same epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_goes_on_after_the_standbys_operator_dies_at_each_step() {
    use fenice::api::failover::Failover;
    let mut two = TwoSites::start(json!({"spec": {"mode": "Manual"}}), None).await;
    let failovers: Api<Failover> = Api::all(two.client.clone());
    let failover: Failover = serde_json::from_value(json!({
        "apiVersion": "fenice.io/v1alpha1", "kind": "Failover", "metadata": {"name": "rome-planned"},
        "spec": {"plan": "westpole-to-azure", "mode": "Manual"},
    }))
    .unwrap();
    failovers.create(&PostParams::default(), &failover).await.unwrap();
    let standby = two.standby_client.clone();

    // The standby's operator dies with each step in flight, and comes back.
    let promote = two.job("studio-rossi-promote-e2").await.uid();
    two.standby_operator_dies_and_comes_back().await;
    two.promote_job_ends(&standby, "studio-rossi", 2, jiff::SignedDuration::from_secs(2)).await;
    let reconcile = two.job("studio-rossi-reconcile-e2").await.uid();
    two.standby_operator_dies_and_comes_back().await;
    two.reconcile_job_ends(&standby, "studio-rossi", 2).await;
    let apps: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(standby.clone(), NAMESPACE);
    appeared(&apps, "studio-rossi-app", DEADLINE, "the app, applied at the target site").await;
    two.standby_operator_dies_and_comes_back().await;
    two.stack_ready((&standby, "azure-italynorth"), "studio-rossi", "rome-planned", 2).await;

    use fenice::api::failover::FailoverPhase;
    let done = status_when(&failovers, "rome-planned", |f| f.status, |s| s.phase == FailoverPhase::Succeeded).await;
    assert_eq!((done.epoch, done.tenants_done), (Some(2), 1), "{done:?}");
    assert_eq!(two.job("studio-rossi-promote-e2").await.uid(), promote, "the Job it had started, not another");
    assert_eq!(two.job("studio-rossi-reconcile-e2").await.uid(), reconcile, "the Job it had started, not another");
    two.primary_standby_then_stop("rome-planned").await;
}

/// runbooks/witness-unreachable.md, line by line with kubectl and fenice: the
/// witness falls silent under both sites' operators and the primary fences
/// itself; the runbook seeds a new witness store on another S3 server with
/// the next epoch and points the witness Site at it; the primary serves again
/// under epoch 2 from the new store. The old witness then answers again and
/// no site writes it any more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_witness_unreachable_runbook_moves_the_witness_and_the_primary_serves_again() {
    use fenice::api::plan::Standing;
    let Some(real_kubectl) = runbook::kubectl() else { return };
    let two = TwoSites::start(json!({"spec": {"mode": "Manual"}}), None).await;
    two.witness.proxy.silence(true);
    two.standing_of("westpole-rome", Standing::Fenced).await;
    ready_when(&two.tenants, "studio-rossi", |reason, _| reason == "Fenced").await;

    let new = fenice::testkit::S3Server::start().expect("moto");
    new.store("fenice-witness-moved", "").await.unwrap().create_bucket(false).await.unwrap();
    let sre = Sre::new(&two, &real_kubectl);
    for file in ["witness.env", "new-witness.env"] {
        std::fs::write(sre.work.join(file), "AWS_ACCESS_KEY_ID=test\nAWS_SECRET_ACCESS_KEY=test\n").unwrap();
    }
    let (old_endpoint, new_endpoint) = (two.witness.proxy.endpoint(), new.endpoint());
    let mut env = sre.env("", "").to_vec();
    env.extend([
        ("WITNESS_SITE", "aws-witness"),
        ("OPERATOR_NAMESPACE", OPERATOR_NAMESPACE),
        ("WITNESS", "s3://fenice-witness-eu-south-1/leases"),
        ("WITNESS_ENDPOINT", old_endpoint.as_str()),
        ("NEW_BUCKET", "fenice-witness-moved"),
        ("NEW_PREFIX", "leases"),
        ("NEW_REGION", "us-east-1"),
        ("NEW_ENDPOINT", new_endpoint.as_str()),
        ("NEW_SECRET", "witness-moved"),
    ]);
    let said = Sre::said(runbook::run_runbook_beside("witness-unreachable.md", &sre.work, &sre.shims, &env).await);
    assert!(said.contains("westpole-rome Fenced epoch 1"), "the primary fenced itself: {said}");
    assert!(said.contains("the witness does not answer from here either"), "{said}");
    assert!(said.contains("no failover of westpole-to-azure under way"), "{said}");
    assert!(said.contains("last active: westpole-rome in epoch 1"), "{said}");
    assert!(said.contains("seeded the lease of plan westpole-to-azure"), "{said}");
    assert!(said.contains("westpole-rome Active epoch 2"), "the primary serves again under the new store: {said}");
    assert!(!said.lines().last().unwrap_or_default().contains("Fenced"), "the tenant is not fenced: {said}");

    ready_when(&two.tenants, "studio-rossi", |reason, _| reason == "StackStarting").await;
    let apps: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(two.site_client.clone(), NAMESPACE);
    assert_eq!(apps.get("studio-rossi-app").await.unwrap().spec.unwrap().replicas, Some(2));
    let moved = fenice::failover::witness::Witness::new(
        std::sync::Arc::new(new.store("fenice-witness-moved", "leases").await.unwrap()),
        "westpole-to-azure",
    );
    let lease = moved.read().await.unwrap().unwrap().record;
    assert_eq!((lease.holder.as_str(), lease.epoch), ("westpole-rome", 2));
    assert!(lease.renewals > 1, "renewed by the primary's agent: {lease:?}");
    let secrets: Api<Secret> = Api::namespaced(two.client.clone(), OPERATOR_NAMESPACE);
    assert!(secrets.get_opt("witness-aws").await.unwrap().is_none(), "the old witness's Secret is gone");

    // The old witness answers again: nobody renews nor takes its lease (three renew intervals).
    two.witness.proxy.silence(false);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let old = two.witness.lease().await.read().await.unwrap().unwrap();
    assert_eq!((old.record.holder.as_str(), old.record.epoch), ("westpole-rome", 1));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(two.witness.lease().await.read().await.unwrap().unwrap(), old);
    let plan = two.standing_of("westpole-rome", Standing::Active).await;
    let azure = plan.sites.iter().find(|e| e.site == "azure-italynorth").unwrap();
    assert_eq!(azure.standing, Standing::Fenced, "{plan:?}");
    two.stop().await;
}

/// A failback at Kubernetes sites: after a planned failover to the standby
/// site, the primary runs the tenant's warm standby (its old database set
/// aside by the init container, a fresh standby of the new timeline); a
/// Failover in mode Failback, carried out by the primary's operator, has the
/// standby site hand the lease back (epoch 3), promotes the primary's
/// standby in a Job there, and serves the tenant at its primary again; the
/// standby site runs the warm standby again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failback_serves_the_tenant_at_its_primary_again_through_the_standby_made_there() {
    use fenice::api::failover::Failover;
    use fenice::api::plan::Standing;
    use k8s_openapi::api::apps::v1::Deployment;
    let two = TwoSites::start(json!({"spec": {"mode": "Manual"}}), None).await;
    let failovers: Api<Failover> = Api::all(two.client.clone());
    let create = |name: &str, mode: &str| {
        let failover: Failover = serde_json::from_value(json!({
            "apiVersion": "fenice.io/v1alpha1", "kind": "Failover", "metadata": {"name": name},
            "spec": {"plan": "westpole-to-azure", "mode": mode},
        }))
        .unwrap();
        let failovers = failovers.clone();
        async move { failovers.create(&PostParams::default(), &failover).await.unwrap() }
    };
    create("rome-planned", "Manual").await;
    two.kubelet_runs("rome-planned", 2, jiff::SignedDuration::from_secs(1)).await;
    let at_primary = two.standby_replays_at(&two.site_client).await;
    assert_eq!(at_primary.standby_site.as_deref(), Some("westpole-rome"), "{at_primary:?}");

    create("rome-back", "Failback").await;
    let done = two
        .kubelet_runs_at((&two.site_client, "westpole-rome"), "rome-back", 3, jiff::SignedDuration::from_secs(1))
        .await;
    assert_eq!((done.epoch, done.tenants_done), (Some(3), 1), "{done:?}");
    let plan = two.standing_of("westpole-rome", Standing::Active).await;
    let entry = plan.sites.iter().find(|e| e.site == "westpole-rome").unwrap();
    assert_eq!(entry.epoch, Some(3), "the lease handed back: {plan:?}");
    two.standing_of("azure-italynorth", Standing::Fenced).await;

    let served = status_when(
        &two.tenants,
        "studio-rossi",
        |t| t.status,
        |s| s.active_site.as_deref() == Some("westpole-rome") && s.standby_site.as_deref() == Some("azure-italynorth"),
    )
    .await;
    assert_eq!(served.epoch, Some(3), "{served:?}");
    let standby_apps: Api<Deployment> = Api::namespaced(two.standby_client.clone(), NAMESPACE);
    vanished(&standby_apps, "studio-rossi-app", "the standby site runs the warm standby again, no app").await;
    let sets: Api<StatefulSet> = Api::namespaced(two.standby_client.clone(), NAMESPACE);
    let init = sets.get("studio-rossi-db").await.unwrap().spec.unwrap().template.spec.unwrap().init_containers;
    assert!(init.is_some_and(|i| i[0].args.as_ref().unwrap().iter().any(|a| a == "--set-aside-diverged")));
    let primary_sets: Api<StatefulSet> = Api::namespaced(two.site_client.clone(), NAMESPACE);
    let primary_db = primary_sets.get("studio-rossi-db").await.unwrap();
    assert!(primary_db.spec.unwrap().template.spec.unwrap().init_containers.is_none(), "the primary's database serves");
    let told = two.succeeded("rome-back").await;
    assert!(told.note.as_deref().is_some_and(|n| n.contains("1/1 tenants serve at westpole-rome")), "{told:?}");
    two.stop().await;
}

/// runbooks/failback.md, line by line with kubectl, after a planned failover:
/// it waits for the primary's fresh standby to replay, creates the Failback,
/// follows it to Succeeded while the test does the pods' work, and checks the
/// tenant is served at its primary again under epoch 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_failback_runbook_serves_the_plans_tenants_at_their_primary_again_line_by_line() {
    use fenice::api::failover::Failover;
    let Some(real_kubectl) = runbook::kubectl() else { return };
    let two = TwoSites::start(json!({"spec": {"mode": "Manual"}}), None).await;
    let failover: Failover = serde_json::from_value(json!({
        "apiVersion": "fenice.io/v1alpha1", "kind": "Failover", "metadata": {"name": "rome-planned"},
        "spec": {"plan": "westpole-to-azure", "mode": "Manual"},
    }))
    .unwrap();
    Api::<Failover>::all(two.client.clone()).create(&PostParams::default(), &failover).await.unwrap();
    two.kubelet_runs("rome-planned", 2, jiff::SignedDuration::from_secs(1)).await;

    let sre = Sre::new(&two, &real_kubectl);
    let env = sre.env("rome-back", "Westpole is back: incident closed");
    let (done, out) = tokio::join!(
        async {
            // The fresh standby at the primary takes a while to replay.
            tokio::time::sleep(Duration::from_secs(3)).await;
            two.standby_replays_at(&two.site_client).await;
            let primary = (&two.site_client, "westpole-rome");
            two.kubelet_runs_at(primary, "rome-back", 3, jiff::SignedDuration::from_secs(1)).await
        },
        runbook::run_runbook_beside("failback.md", &sre.work, &sre.shims, &env)
    );
    let said = Sre::said(out);
    assert_eq!(done.epoch, Some(3), "{done:?}");
    assert!(said.contains("azure-italynorth Active epoch 2"), "before: {said}");
    assert!(said.contains("not ready yet: studio-rossi westpole-rome StandbyStarting"), "it waited: {said}");
    assert!(said.contains("Succeeded epoch 3 done 1/1"), "the result: {said}");
    let back = |l: &str| {
        l.split_whitespace().collect::<Vec<_>>() == ["studio-rossi", "westpole-rome", "azure-italynorth", "3"]
    };
    assert!(said.lines().any(back), "served at the primary, its standby at the other site: {said}");
    assert!(said.contains("westpole-rome Active epoch 3"), "the primary holds the lease: {said}");
    two.stop().await;
}

/// A Cold tenant fails over at Kubernetes sites too: while its primary runs,
/// only its Secrets wait at the plan's target (the database password, which a
/// lost primary could no longer give); the failover's restore step makes its
/// database there (the warm standby's StatefulSet, restoring the newest base
/// backup and replaying the archive), waits until it is ready, and promotes
/// it as for a Warm tenant, in the second wave after the Gold one. Then its
/// primary runs a warm standby, which a failback promotes; the stack that
/// served at the target goes, its Secrets stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_tenant_fails_over_through_a_database_made_at_the_target_from_its_repositories_and_back() {
    use fenice::api::failover::Failover;
    use k8s_openapi::api::apps::v1::Deployment;
    let two = TwoSites::start(json!({"spec": {"mode": "Manual"}}), None).await;
    two.tenants.create(&PostParams::default(), &example("tenants.yaml", "comune-di-tivoli")).await.unwrap();
    let secrets = |client: &Client| Api::<Secret>::namespaced(client.clone(), NAMESPACE);
    let password = |secret: Secret| secret.data.unwrap()["password"].0.clone();
    let waiting = "the Cold tenant's database Secret waits at the target";
    let kept = appeared(&secrets(&two.standby_client), "comune-di-tivoli-db", DEADLINE, waiting).await;
    let primary = secrets(&two.site_client).get("comune-di-tivoli-db").await.unwrap();
    assert_eq!(password(kept), password(primary), "the primary's password");
    assert!(secrets(&two.standby_client).get_opt("comune-di-tivoli-repositories").await.unwrap().is_some());
    let standby_sets: Api<StatefulSet> = Api::namespaced(two.standby_client.clone(), NAMESPACE);
    assert!(standby_sets.get_opt("comune-di-tivoli-db").await.unwrap().is_none(), "no database runs there");

    let failover: Failover = serde_json::from_value(json!({
        "apiVersion": "fenice.io/v1alpha1", "kind": "Failover", "metadata": {"name": "rome-planned"},
        "spec": {"plan": "westpole-to-azure", "mode": "Manual"},
    }))
    .unwrap();
    Api::<Failover>::all(two.client.clone()).create(&PostParams::default(), &failover).await.unwrap();
    let cold = async {
        let making = "the restore step makes the Cold tenant's database at the target";
        let made = appeared(&standby_sets, "comune-di-tivoli-db", Duration::from_secs(120), making).await;
        let init = made.spec.unwrap().template.spec.unwrap().init_containers.unwrap()[0].args.clone().unwrap();
        assert!(init.join(" ").contains("agent restore --tenant comune-di-tivoli"), "{init:?}");
        // Its pod restores the newest base backup and replays: then ready.
        standby_sets
            .patch_status("comune-di-tivoli-db", &PatchParams::default(), &Patch::Merge(&ready_status()))
            .await
            .unwrap();
        two.kubelet_moves(
            (&two.standby_client, "azure-italynorth"),
            "comune-di-tivoli",
            "rome-planned",
            2,
            jiff::SignedDuration::from_secs(3),
        )
        .await;
    };
    let (done, ()) = tokio::join!(two.kubelet_runs("rome-planned", 2, jiff::SignedDuration::from_secs(1)), cold);
    assert_eq!((done.epoch, done.tenants_done, done.tenants_total), (Some(2), 2, 2), "{done:?}");
    let moved = status_when(
        &two.tenants,
        "comune-di-tivoli",
        |t| t.status,
        |s| s.active_site.as_deref() == Some("azure-italynorth"),
    )
    .await;
    assert_eq!(moved.epoch, Some(2), "{moved:?}");

    // Moved, its primary runs a warm standby as a Warm tenant's does: the
    // diverged database set aside, no app.
    let primary_apps: Api<Deployment> = Api::namespaced(two.site_client.clone(), NAMESPACE);
    vanished(&primary_apps, "comune-di-tivoli-app", "the moved Cold tenant's app at its primary").await;
    let primary_sets: Api<StatefulSet> = Api::namespaced(two.site_client.clone(), NAMESPACE);
    let init = |set: StatefulSet| set.spec.unwrap().template.spec.unwrap().init_containers;
    let standby = init(primary_sets.get("comune-di-tivoli-db").await.unwrap());
    assert!(standby.is_some_and(|i| i[0].args.as_ref().unwrap().iter().any(|a| a == "--set-aside-diverged")));
    two.standby_replays_at(&two.site_client).await;
    primary_sets
        .patch_status("comune-di-tivoli-db", &PatchParams::default(), &Patch::Merge(&ready_status()))
        .await
        .unwrap();
    let replaying = |s: &InvoicingTenantStatus| {
        s.standby_site.as_deref() == Some("westpole-rome")
            && s.conditions.iter().any(|c| c.type_ == "Standby" && c.reason == "StandbyReplaying")
    };
    status_when(&two.tenants, "comune-di-tivoli", |t| t.status, replaying).await;

    // The failback promotes it there; the stack that served at the target
    // goes, its two Secrets stay for the next failover.
    let failback: Failover = serde_json::from_value(json!({
        "apiVersion": "fenice.io/v1alpha1", "kind": "Failover", "metadata": {"name": "rome-back"},
        "spec": {"plan": "westpole-to-azure", "mode": "Failback"},
    }))
    .unwrap();
    Api::<Failover>::all(two.client.clone()).create(&PostParams::default(), &failback).await.unwrap();
    let primary = (&two.site_client, "westpole-rome");
    let lag = jiff::SignedDuration::from_secs(1);
    let cold = two.kubelet_moves(primary, "comune-di-tivoli", "rome-back", 3, lag);
    let (done, ()) = tokio::join!(two.kubelet_runs_at(primary, "rome-back", 3, lag), cold);
    assert_eq!((done.epoch, done.tenants_done, done.tenants_total), (Some(3), 2, 2), "{done:?}");
    let home =
        |s: &InvoicingTenantStatus| s.active_site.as_deref() == Some("westpole-rome") && s.standby_site.is_none();
    let back = status_when(&two.tenants, "comune-di-tivoli", |t| t.status, home).await;
    assert_eq!(back.epoch, Some(3), "{back:?}");
    let serving = init(primary_sets.get("comune-di-tivoli-db").await.unwrap());
    assert!(serving.is_none(), "the primary's database serves: {serving:?}");
    let standby_apps: Api<Deployment> = Api::namespaced(two.standby_client.clone(), NAMESPACE);
    vanished(&standby_apps, "comune-di-tivoli-app", "the app that served at the target").await;
    vanished(&standby_sets, "comune-di-tivoli-db", "the database that served at the target").await;
    for kept in ["comune-di-tivoli-db", "comune-di-tivoli-repositories"] {
        assert!(
            secrets(&two.standby_client).get_opt(kept).await.unwrap().is_some(),
            "Secret {kept} stays at the target"
        );
    }
    two.stop().await;
}
