//! The in-memory API server, driven by kube-rs exactly as the operator will:
//! a client from a kubeconfig file, typed `Api`s, `watcher`, `Controller`.
//! Each test starts its own server on a free loopback port.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fenice::api::{InvoicingTenant, InvoicingTenantStatus};
use fenice::apiserver::{self, Running, ServerOptions};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::core::{ApiResource, GroupVersionKind, PartialObjectMeta};
use kube::discovery::{Discovery, Scope};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::wait::await_condition;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::time::timeout;

/// How long a test waits for something that takes milliseconds.
const DEADLINE: Duration = Duration::from_secs(20);

/// A server in this process and a client that reached it through a kubeconfig file.
struct Server {
    running: Running,
    client: Client,
    _dir: tempfile::TempDir,
}

async fn start() -> Server {
    start_with(ServerOptions::default()).await
}

async fn start_with(options: ServerOptions) -> Server {
    let running = apiserver::spawn(options).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    std::fs::write(&path, running.kubeconfig()).unwrap();
    let client = client_from(&path).await;
    Server { running, client, _dir: dir }
}

/// A client built the way the operator builds one from `--kubeconfig FILE`.
async fn client_from(path: &Path) -> Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(path).unwrap();
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default()).await.unwrap();
    Client::try_from(config).unwrap()
}

impl Server {
    /// Stops the server; open watches must not hold it up.
    async fn stop(self) {
        timeout(DEADLINE, self.running.stop()).await.expect("the server stops in time").unwrap();
    }

    fn tenants(&self, namespace: &str) -> Api<InvoicingTenant> {
        Api::namespaced(self.client.clone(), namespace)
    }

    async fn namespace(&self, name: &str) {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let namespace: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        namespaces.create(&PostParams::default(), &namespace).await.unwrap();
    }
}

/// The first tenant of manifests/examples/tenants.yaml, renamed.
fn tenant(name: &str) -> InvoicingTenant {
    let mut document = examples("tenants.yaml").remove(0);
    document["metadata"] = json!({"name": name});
    serde_json::from_value(document).unwrap()
}

fn examples(file: &str) -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/examples").join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    serde_saphyr::from_multiple::<Value>(&text).unwrap().into_iter().filter(|d| !d.is_null()).collect()
}

/// The Status of a failed call.
fn api_error<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> kube::core::Status {
    match result {
        Err(kube::Error::Api(status)) => *status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn names<K: Resource>(list: &[K]) -> Vec<String> {
    list.iter().map(|o| o.meta().name.clone().unwrap_or_default()).collect()
}

fn erased_tenants(server: &Server, namespace: &str) -> Api<DynamicObject> {
    Api::namespaced_with(server.client.clone(), namespace, &ApiResource::erase::<InvoicingTenant>(&()))
}

#[tokio::test]
async fn create_get_and_list_with_selectors() {
    let server = start().await;
    server.namespace("shop").await;
    let tenants = server.tenants("shop");
    for (name, tier) in [("acme", Some("gold")), ("bolt", Some("silver")), ("cork", None)] {
        let mut t = tenant(name);
        if let Some(tier) = tier {
            t.labels_mut().insert("tier".into(), tier.into());
        }
        let created = tenants.create(&PostParams::default(), &t).await.unwrap();
        assert!(created.uid().is_some());
        assert!(created.creation_timestamp().is_some());
        assert_eq!(created.meta().generation, Some(1));
    }
    let got = tenants.get("acme").await.unwrap();
    assert_eq!(got.spec.vat_number, "01234567897");

    let cases = [
        ("tier=gold", vec!["acme"]),
        ("tier==silver", vec!["bolt"]),
        ("tier!=gold", vec!["bolt", "cork"]),
        ("tier in (gold,silver)", vec!["acme", "bolt"]),
        ("tier notin (gold)", vec!["bolt", "cork"]),
        ("tier", vec!["acme", "bolt"]),
        ("!tier", vec!["cork"]),
    ];
    for (selector, want) in cases {
        let list = tenants.list(&ListParams::default().labels(selector)).await.unwrap();
        assert_eq!(names(&list.items), want, "{selector}");
    }
    let by_name = tenants.list(&ListParams::default().fields("metadata.name=bolt")).await.unwrap();
    assert_eq!(names(&by_name.items), ["bolt"]);
    let everywhere: Api<InvoicingTenant> = Api::all(server.client.clone());
    let paged = everywhere.list(&ListParams::default().limit(1)).await.unwrap();
    assert_eq!(paged.items.len(), 1, "one page of one");
    assert!(paged.metadata.resource_version.is_some() && paged.metadata.continue_.is_some());

    let again = api_error(tenants.create(&PostParams::default(), &tenant("acme")).await);
    assert_eq!((again.code, again.reason.as_str()), (409, "AlreadyExists"));
    assert_eq!(again.message, "invoicingtenants.fenice.io \"acme\" already exists");
    let missing = api_error(tenants.get("nope").await);
    assert_eq!((missing.code, missing.reason.as_str()), (404, "NotFound"));
    assert_eq!(missing.message, "invoicingtenants.fenice.io \"nope\" not found");
    let elsewhere = api_error(server.tenants("nowhere").create(&PostParams::default(), &tenant("x")).await);
    assert_eq!((elsewhere.code, elsewhere.message.as_str()), (404, "namespaces \"nowhere\" not found"));
    let bad = api_error(tenants.list(&ListParams::default().labels("tier in gold")).await);
    assert_eq!((bad.code, bad.reason.as_str()), (400, "BadRequest"));
}

#[tokio::test]
async fn lists_come_in_pages_that_a_watch_from_their_version_completes() {
    let server = start().await;
    server.namespace("shop").await;
    let tenants = server.tenants("shop");
    for name in ["acme", "bolt", "cork", "dune", "echo"] {
        tenants.create(&PostParams::default(), &tenant(name)).await.unwrap();
    }
    let first = tenants.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(names(&first.items), ["acme", "bolt"]);
    let token = first.metadata.continue_.clone().expect("a continue token on a partial page");
    // A change between pages: the version of every page stays the first one.
    let label = json!({"metadata": {"labels": {"seen": "late"}}});
    tenants.patch("acme", &PatchParams::default(), &Patch::Merge(&label)).await.unwrap();
    let second = tenants.list(&ListParams::default().limit(2).continue_token(&token)).await.unwrap();
    assert_eq!(names(&second.items), ["cork", "dune"]);
    assert_eq!(second.metadata.resource_version, first.metadata.resource_version);
    let token = second.metadata.continue_.clone().unwrap();
    let last = tenants.list(&ListParams::default().limit(2).continue_token(&token)).await.unwrap();
    assert_eq!(names(&last.items), ["echo"]);
    assert_eq!(last.metadata.continue_, None, "the last page has no token");
    // A watch from the pages' version sees what changed while they were read.
    let params = WatchParams::default().timeout(1);
    let version = first.metadata.resource_version.unwrap();
    let events: Vec<_> = tenants.watch(&params, &version).await.unwrap().try_collect().await.unwrap();
    assert!(events.iter().any(|e| matches!(e, WatchEvent::Modified(t) if t.name_any() == "acme")), "{events:?}");
    // Without a limit, one complete list; a selector pages over what matches.
    assert_eq!(tenants.list(&ListParams::default()).await.unwrap().items.len(), 5);
    let late = tenants.list(&ListParams::default().labels("seen=late").limit(1)).await.unwrap();
    assert_eq!((names(&late.items), late.metadata.continue_), (vec!["acme".to_string()], None));
    let broken = api_error(tenants.list(&ListParams::default().continue_token("not-a-token")).await);
    assert_eq!(broken.code, 400, "{broken:?}");
    // kube's watcher lists in pages of its own and still sees everything.
    let seen: Vec<InvoicingTenant> = watcher(tenants.clone(), watcher::Config::default().page_size(2))
        .default_backoff()
        .applied_objects()
        .take(5)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(names(&seen), ["acme", "bolt", "cork", "dune", "echo"]);
    server.stop().await;
}

#[tokio::test]
async fn generate_name_gives_a_fresh_name() {
    let server = start().await;
    let maps: Api<ConfigMap> = Api::default_namespaced(server.client.clone());
    let template: ConfigMap = serde_json::from_value(json!({"metadata": {"generateName": "run-"}})).unwrap();
    let a = maps.create(&PostParams::default(), &template).await.unwrap();
    let b = maps.create(&PostParams::default(), &template).await.unwrap();
    assert!(a.name_any().starts_with("run-") && a.name_any().len() == 9, "{}", a.name_any());
    assert_ne!(a.name_any(), b.name_any());
}

#[tokio::test]
async fn update_with_a_stale_resource_version_conflicts() {
    let server = start().await;
    let tenants = server.tenants("default");
    let created = tenants.create(&PostParams::default(), &tenant("acme")).await.unwrap();

    let mut first = created.clone();
    first.spec.display_name = "Acme S.p.A.".into();
    let replaced = tenants.replace("acme", &PostParams::default(), &first).await.unwrap();
    assert_ne!(replaced.resource_version(), created.resource_version());
    assert_eq!(replaced.meta().generation, Some(2));

    let mut stale = created.clone();
    stale.spec.display_name = "Lost update".into();
    let conflict = api_error(tenants.replace("acme", &PostParams::default(), &stale).await);
    assert_eq!((conflict.code, conflict.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        conflict.message,
        "Operation cannot be fulfilled on invoicingtenants.fenice.io \"acme\": the object has been modified; \
         please apply your changes to the latest version and try again"
    );
    assert_eq!(tenants.get("acme").await.unwrap().spec.display_name, "Acme S.p.A.");
}

#[tokio::test]
async fn merge_json_and_strategic_patches() {
    let server = start().await;
    let tenants = server.tenants("default");
    tenants.create(&PostParams::default(), &tenant("acme")).await.unwrap();

    let merge = json!({"metadata": {"labels": {"tier": "gold"}}, "spec": {"displayName": "Acme"}});
    let patched = tenants.patch("acme", &PatchParams::default(), &Patch::Merge(&merge)).await.unwrap();
    assert_eq!(patched.labels().get("tier").map(String::as_str), Some("gold"));
    assert_eq!(patched.spec.display_name, "Acme");

    let operations: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/spec/displayName", "value": "Acme"},
        {"op": "replace", "path": "/spec/displayName", "value": "Acme S.r.l."},
        {"op": "add", "path": "/metadata/labels/region", "value": "rome"},
    ]))
    .unwrap();
    let patched = tenants.patch("acme", &PatchParams::default(), &Patch::Json::<()>(operations)).await.unwrap();
    assert_eq!(patched.spec.display_name, "Acme S.r.l.");
    assert_eq!(patched.labels().get("region").map(String::as_str), Some("rome"));

    let failing: json_patch::Patch =
        serde_json::from_value(json!([{"op": "test", "path": "/spec/displayName", "value": "Other"}])).unwrap();
    let refused = api_error(tenants.patch("acme", &PatchParams::default(), &Patch::Json::<()>(failing)).await);
    assert_eq!(refused.code, 422);

    let stale = json!({"metadata": {"resourceVersion": "1"}, "spec": {"displayName": "x"}});
    let conflict = api_error(tenants.patch("acme", &PatchParams::default(), &Patch::Merge(&stale)).await);
    assert_eq!(conflict.code, 409);

    let maps: Api<ConfigMap> = Api::default_namespaced(server.client.clone());
    let map: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "m"}, "data": {"a": "1"}})).unwrap();
    maps.create(&PostParams::default(), &map).await.unwrap();
    let strategic = json!({"data": {"b": "2"}});
    let patched = maps.patch("m", &PatchParams::default(), &Patch::Strategic(&strategic)).await.unwrap();
    assert_eq!(patched.data.unwrap().len(), 2);

    let missing = api_error(tenants.patch("nope", &PatchParams::default(), &Patch::Merge(&merge)).await);
    assert_eq!(missing.code, 404);
}

#[tokio::test]
async fn server_side_apply_conflicts_between_managers_until_forced() {
    let server = start().await;
    let tenants = server.tenants("default");
    let mut applied = serde_json::to_value(tenant("acme")).unwrap();
    applied["metadata"]["labels"] = json!({"owner": "a"});
    let created = tenants.patch("acme", &PatchParams::apply("manager-a"), &Patch::Apply(&applied)).await.unwrap();
    assert_eq!(created.spec.display_name, "Studio Associato Rossi");
    let managers: Vec<(String, String)> =
        created.managed_fields().iter().map(|m| (m.manager.clone().unwrap(), m.operation.clone().unwrap())).collect();
    assert_eq!(managers, [("manager-a".to_owned(), "Apply".to_owned())]);

    // Manager b sets a field manager a owns to another value.
    let other = json!({
        "apiVersion": "fenice.io/v1alpha1", "kind": "InvoicingTenant",
        "metadata": {"name": "acme"},
        "spec": {"tier": "Silver", "displayName": "Studio Associato Rossi"},
    });
    let conflict = api_error(tenants.patch("acme", &PatchParams::apply("manager-b"), &Patch::Apply(&other)).await);
    assert_eq!((conflict.code, conflict.reason.as_str()), (409, "Conflict"));
    assert_eq!(conflict.message, "Apply failed with 1 conflict: conflict with \"manager-a\": .spec.tier");
    let causes = conflict.details.unwrap().causes;
    assert_eq!(causes.len(), 1);
    assert_eq!((causes[0].reason.as_str(), causes[0].field.as_str()), ("FieldManagerConflict", ".spec.tier"));

    // With force, b takes tier over; displayName has the same value, so both own it.
    let forced = tenants.patch("acme", &PatchParams::apply("manager-b").force(), &Patch::Apply(&other)).await.unwrap();
    assert_eq!(serde_json::to_value(forced.spec.tier).unwrap(), json!("Silver"));
    let owners = |object: &InvoicingTenant, field: &str| -> Vec<String> {
        let mut owners: Vec<String> = object
            .managed_fields()
            .iter()
            .filter(|m| m.fields_v1.as_ref().is_some_and(|f| f.0.pointer(field).is_some()))
            .map(|m| m.manager.clone().unwrap())
            .collect();
        owners.sort();
        owners
    };
    assert_eq!(owners(&forced, "/f:spec/f:tier"), ["manager-b"]);
    assert_eq!(owners(&forced, "/f:spec/f:displayName"), ["manager-a", "manager-b"]);

    // Manager a drops its label: it alone owned it, so it goes; tier stays b's.
    applied["metadata"]["labels"] = json!({});
    applied["spec"]["tier"] = json!("Silver");
    let reapplied = tenants.patch("acme", &PatchParams::apply("manager-a"), &Patch::Apply(&applied)).await.unwrap();
    assert!(reapplied.labels().get("owner").is_none());
    assert_eq!(serde_json::to_value(reapplied.spec.tier).unwrap(), json!("Silver"));

    // Applying the same thing again changes nothing, not even the resourceVersion.
    let before = tenants.get("acme").await.unwrap();
    let again = tenants.patch("acme", &PatchParams::apply("manager-a"), &Patch::Apply(&applied)).await.unwrap();
    assert_eq!(again.resource_version(), before.resource_version());

    // A plain update by a third manager takes the field it changes from the appliers.
    let merge = json!({"spec": {"tier": "Bronze"}});
    let updated = tenants.patch("acme", &PatchParams::default(), &Patch::Merge(&merge)).await.unwrap();
    assert_eq!(owners(&updated, "/f:spec/f:tier").len(), 1);
    assert!(!owners(&updated, "/f:spec/f:tier").contains(&"manager-b".to_owned()));
    // So applying the old value again conflicts with that manager.
    let conflict = api_error(tenants.patch("acme", &PatchParams::apply("manager-a"), &Patch::Apply(&applied)).await);
    assert_eq!(conflict.code, 409);

    let no_manager = api_error(tenants.patch("acme", &PatchParams::default(), &Patch::Apply(&other)).await);
    assert_eq!(no_manager.code, 422);
}

#[tokio::test]
async fn status_subresource_writes_only_status_and_keeps_generation() {
    let server = start().await;
    let tenants = server.tenants("default");
    let mut with_status = tenant("acme");
    with_status.status = Some(InvoicingTenantStatus { active_site: Some("ignored".into()), ..Default::default() });
    let created = tenants.create(&PostParams::default(), &with_status).await.unwrap();
    assert!(created.status.is_none(), "status is not set on create");

    // A status write changes status only, and not the generation.
    let body = json!({"spec": {"displayName": "not through status"}, "status": {"activeSite": "westpole-rome"}});
    let patched = tenants.patch_status("acme", &PatchParams::default(), &Patch::Merge(&body)).await.unwrap();
    assert_eq!(patched.status.as_ref().unwrap().active_site.as_deref(), Some("westpole-rome"));
    assert_eq!(patched.spec.display_name, "Studio Associato Rossi");
    assert_eq!(patched.meta().generation, Some(1));

    // Server-side apply on status, the way controllers write it.
    let status = json!({
        "apiVersion": "fenice.io/v1alpha1", "kind": "InvoicingTenant",
        "status": {"activeSite": "westpole-rome", "observedGeneration": 1},
    });
    let applied = tenants
        .patch_status("acme", &PatchParams::apply("fenice-tenant").force(), &Patch::Apply(&status))
        .await
        .unwrap();
    assert_eq!(applied.status.as_ref().unwrap().observed_generation, Some(1));
    assert!(applied.managed_fields().iter().any(|m| m.subresource.as_deref() == Some("status")));

    // A write to the main resource ignores status; a spec change bumps the generation.
    let mut changed = applied.clone();
    changed.spec.display_name = "Acme".into();
    changed.status = Some(InvoicingTenantStatus { active_site: Some("elsewhere".into()), ..Default::default() });
    let replaced = tenants.replace("acme", &PostParams::default(), &changed).await.unwrap();
    assert_eq!(replaced.status.as_ref().unwrap().active_site.as_deref(), Some("westpole-rome"));
    assert_eq!(replaced.meta().generation, Some(2));

    // Metadata changes do not bump it either.
    let labels = json!({"metadata": {"labels": {"x": "y"}}});
    let relabelled = tenants.patch("acme", &PatchParams::default(), &Patch::Merge(&labels)).await.unwrap();
    assert_eq!(relabelled.meta().generation, Some(2));

    let status_of_nothing = api_error(tenants.get_status("nope").await);
    assert_eq!(status_of_nothing.code, 404);
}

#[tokio::test]
async fn defaults_are_applied_unknown_fields_pruned_and_violations_rejected() {
    let server = start().await;
    let tenants = erased_tenants(&server, "default");
    let mut minimal = serde_json::to_value(tenant("acme")).unwrap();
    for field in ["invoiceFormat", "standby", "app", "database", "documents"] {
        minimal["spec"].as_object_mut().unwrap().remove(field);
    }
    minimal["spec"]["bogus"] = json!(true);
    minimal["unknownTopLevel"] = json!(1);
    let object: DynamicObject = serde_json::from_value(minimal).unwrap();
    let created = tenants.create(&PostParams::default(), &object).await.unwrap();
    let spec = &created.data["spec"];
    assert_eq!(spec["invoiceFormat"], "FPR12");
    assert_eq!(spec["standby"], "Cold");
    assert_eq!(spec["app"]["replicas"], 1);
    assert_eq!(spec["database"], json!({"storage": "10Gi"}));
    assert!(spec.get("bogus").is_none(), "unknown fields are pruned");
    assert!(created.data.get("unknownTopLevel").is_none());

    let mut bad = serde_json::to_value(tenant("broken")).unwrap();
    bad["spec"]["vatNumber"] = json!("123");
    bad["spec"]["tier"] = json!("Platinum");
    bad["spec"]["app"]["replicas"] = json!(0);
    bad["spec"]["displayName"] = json!("");
    bad["spec"]["objectives"].as_object_mut().unwrap().remove("rpo");
    bad["spec"]["sdi"]["channels"][0]["endpoint"] = json!(42);
    let object: DynamicObject = serde_json::from_value(bad).unwrap();
    let invalid = api_error(tenants.create(&PostParams::default(), &object).await);
    assert_eq!((invalid.code, invalid.reason.as_str()), (422, "Invalid"));
    assert!(invalid.message.starts_with("InvoicingTenant.fenice.io \"broken\" is invalid: ["), "{}", invalid.message);
    let causes = invalid.details.unwrap().causes;
    let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
    for field in [
        "spec.vatNumber",
        "spec.tier",
        "spec.app.replicas",
        "spec.displayName",
        "spec.objectives.rpo",
        "spec.sdi.channels[0].endpoint",
    ] {
        assert!(fields.contains(&field), "{field} missing from {fields:?}");
    }
    let cause = |field: &str| causes.iter().find(|c| c.field == field).unwrap();
    assert_eq!(
        cause("spec.vatNumber").message,
        "Invalid value: \"123\": spec.vatNumber in body should match '^[0-9]{11}$'"
    );
    assert_eq!(cause("spec.tier").reason, "FieldValueNotSupported");
    assert_eq!(cause("spec.objectives.rpo").message, "Required value");
    assert_eq!(
        cause("spec.app.replicas").message,
        "Invalid value: 0: spec.app.replicas in body should be greater than or equal to 1"
    );
    assert_eq!(cause("spec.sdi.channels[0].endpoint").reason, "FieldValueTypeInvalid");
}

#[tokio::test]
async fn every_example_manifest_is_accepted() {
    let server = start().await;
    let discovery = Discovery::new(server.client.clone()).run().await.unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/examples");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| f.ends_with(".yaml") && f != "kustomization.yaml")
        .collect();
    // The namespace first, as kustomize orders it.
    files.sort_by_key(|f| (f != "namespace.yaml", f.clone()));
    let mut applied = 0;
    for file in files {
        for document in examples(&file) {
            let gvk =
                GroupVersionKind::try_from(&serde_json::from_value::<kube::core::TypeMeta>(document.clone()).unwrap())
                    .unwrap();
            let (resource, capabilities) =
                discovery.resolve_gvk(&gvk).unwrap_or_else(|| panic!("{file}: {gvk:?} is not served"));
            let name = document["metadata"]["name"].as_str().unwrap().to_owned();
            let api: Api<DynamicObject> = match capabilities.scope {
                Scope::Namespaced => {
                    let namespace = document["metadata"]["namespace"].as_str().unwrap_or("default");
                    Api::namespaced_with(server.client.clone(), namespace, &resource)
                }
                Scope::Cluster => Api::all_with(server.client.clone(), &resource),
            };
            let result = api.patch(&name, &PatchParams::apply("examples"), &Patch::Apply(&document)).await;
            let stored = result.unwrap_or_else(|e| panic!("{file}: {name} refused: {e}"));
            assert_eq!(stored.metadata.name.as_deref(), Some(name.as_str()));
            applied += 1;
        }
    }
    assert!(applied >= 12, "only {applied} example objects");
    let tenants: Api<InvoicingTenant> = Api::namespaced(server.client.clone(), "invoicing");
    assert_eq!(tenants.list(&ListParams::default()).await.unwrap().items.len(), 3);
}

#[tokio::test]
async fn deleting_with_a_finalizer_waits_until_it_is_removed() {
    let server = start().await;
    let tenants = server.tenants("default");
    let mut guarded = tenant("acme");
    guarded.finalizers_mut().push("fenice.io/cleanup".into());
    let created = tenants.create(&PostParams::default(), &guarded).await.unwrap();
    let mut events = tenants
        .watch(&WatchParams::default().fields("metadata.name=acme"), &created.resource_version().unwrap())
        .await
        .unwrap()
        .boxed();

    let deleted = tenants.delete("acme", &DeleteParams::default()).await.unwrap();
    let marked = deleted.left().expect("an object with a finalizer comes back, not a Status");
    assert!(marked.meta().deletion_timestamp.is_some());
    assert!(tenants.get("acme").await.unwrap().meta().deletion_timestamp.is_some());

    let more = json!({"metadata": {"finalizers": ["fenice.io/cleanup", "fenice.io/other"]}});
    let refused = api_error(tenants.patch("acme", &PatchParams::default(), &Patch::Merge(&more)).await);
    assert_eq!(refused.code, 422);

    let remove: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/finalizers", "value": ["fenice.io/cleanup"]},
        {"op": "remove", "path": "/metadata/finalizers"},
    ]))
    .unwrap();
    tenants.patch("acme", &PatchParams::default(), &Patch::Json::<()>(remove)).await.unwrap();
    assert_eq!(api_error(tenants.get("acme").await).code, 404);

    let mut seen = Vec::new();
    while !seen.contains(&"DELETED") {
        let event = timeout(DEADLINE, events.try_next()).await.expect("an event in time").unwrap().unwrap();
        seen.push(match event {
            WatchEvent::Modified(_) => "MODIFIED",
            WatchEvent::Deleted(_) => "DELETED",
            WatchEvent::Added(_) => "ADDED",
            WatchEvent::Bookmark(_) => continue,
            WatchEvent::Error(e) => panic!("watch error {e:?}"),
        });
    }
    assert_eq!(seen.first(), Some(&"MODIFIED"));

    // Without finalizers an object goes at once.
    tenants.create(&PostParams::default(), &tenant("bolt")).await.unwrap();
    tenants.delete("bolt", &DeleteParams::default()).await.unwrap();
    assert_eq!(api_error(tenants.get("bolt").await).code, 404);
    let missing = api_error(tenants.delete("bolt", &DeleteParams::default()).await);
    assert_eq!((missing.code, missing.reason.as_str()), (404, "NotFound"));
}

#[tokio::test]
async fn owned_objects_and_namespace_contents_are_deleted_with_their_owner() {
    let server = start().await;
    server.namespace("shop").await;
    let tenants = server.tenants("shop");
    let owner = tenants.create(&PostParams::default(), &tenant("acme")).await.unwrap();
    let maps: Api<ConfigMap> = Api::namespaced(server.client.clone(), "shop");
    let owned: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "acme-config", "ownerReferences": [owner.controller_owner_ref(&()).unwrap()]},
    }))
    .unwrap();
    maps.create(&PostParams::default(), &owned).await.unwrap();
    tenants.delete("acme", &DeleteParams::default()).await.unwrap();
    assert_eq!(api_error(maps.get("acme-config").await).code, 404);

    let secrets: Api<Secret> = Api::namespaced(server.client.clone(), "shop");
    let secret: Secret = serde_json::from_value(json!({"metadata": {"name": "s"}})).unwrap();
    secrets.create(&PostParams::default(), &secret).await.unwrap();
    let namespaces: Api<Namespace> = Api::all(server.client.clone());
    namespaces.delete("shop", &DeleteParams::default()).await.unwrap();
    assert_eq!(api_error(secrets.get("s").await).code, 404);
    assert_eq!(api_error(namespaces.get("shop").await).code, 404);
}

#[tokio::test]
async fn a_watcher_sees_objects_added_and_modified() {
    let server = start().await;
    let tenants = server.tenants("default");
    tenants.create(&PostParams::default(), &tenant("before")).await.unwrap();
    let mut stream = watcher(Api::<InvoicingTenant>::all(server.client.clone()), watcher::Config::default())
        .touched_objects()
        .boxed();
    let first = timeout(DEADLINE, stream.try_next()).await.unwrap().unwrap().unwrap();
    assert_eq!(first.name_any(), "before");

    tenants.create(&PostParams::default(), &tenant("acme")).await.unwrap();
    let patch = json!({"spec": {"displayName": "Acme"}});
    tenants.patch("acme", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let mut names_seen = Vec::new();
    loop {
        let object = timeout(DEADLINE, stream.try_next()).await.unwrap().unwrap().unwrap();
        names_seen.push(object.name_any());
        if object.spec.display_name == "Acme" {
            break;
        }
    }
    assert_eq!(names_seen, ["acme", "acme"]);
    server.stop().await;
    // The watch ends with the server; the watcher then fails to reconnect.
    let after = timeout(DEADLINE, stream.try_next()).await.expect("the watch ends with the server");
    assert!(after.is_err(), "{after:?}");
}

#[tokio::test]
async fn a_metadata_watcher_sees_only_metadata() {
    let server = start().await;
    let tenants = server.tenants("default");
    tenants.create(&PostParams::default(), &tenant("acme")).await.unwrap();
    let metadata: Api<PartialObjectMeta<InvoicingTenant>> = Api::all(server.client.clone());
    let mut stream = watcher(metadata, watcher::Config::default()).touched_objects().boxed();
    let first = timeout(DEADLINE, stream.try_next()).await.unwrap().unwrap().unwrap();
    assert_eq!(first.name_any(), "acme");
    assert_eq!(first.types.unwrap().kind, "PartialObjectMetadata");
    let listed = tenants.list_metadata(&ListParams::default()).await.unwrap();
    assert_eq!(names(&listed.items), ["acme"]);
}

#[tokio::test]
async fn a_watch_from_a_compacted_version_gets_410_and_the_watcher_lists_again() {
    let options = ServerOptions { history: 3, bookmark_interval: Duration::from_secs(3600), ..Default::default() };
    let server = start_with(options).await;
    let maps: Api<ConfigMap> = Api::default_namespaced(server.client.clone());
    let secrets: Api<Secret> = Api::default_namespaced(server.client.clone());
    let make_secrets = |from: usize| {
        let secrets = secrets.clone();
        async move {
            for i in from..from + 5 {
                let secret: Secret = serde_json::from_value(json!({"metadata": {"name": format!("s{i}")}})).unwrap();
                secrets.create(&PostParams::default(), &secret).await.unwrap();
            }
        }
    };
    make_secrets(0).await;

    // A raw watch from a resourceVersion the history no longer has.
    let mut raw = maps.watch(&WatchParams::default(), "1").await.unwrap().boxed();
    match timeout(DEADLINE, raw.try_next()).await.unwrap().unwrap() {
        Some(WatchEvent::Error(status)) => assert_eq!(status.code, 410),
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }

    // timeoutSeconds ends a watch.
    let mut short = maps.watch(&WatchParams::default().timeout(1), "0").await.unwrap().boxed();
    assert!(timeout(DEADLINE, short.try_next()).await.expect("the watch ends").unwrap().is_none());

    // kube's watcher resumes from a version compacted meanwhile (its watch
    // starts after the changes, or ends after a second and restarts), gets
    // 410 and lists again.
    let map: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "m"}})).unwrap();
    maps.create(&PostParams::default(), &map).await.unwrap();
    let mut stream = watcher(maps.clone(), watcher::Config::default().timeout(1)).boxed();
    loop {
        match timeout(DEADLINE, stream.next()).await.unwrap().unwrap() {
            Ok(watcher::Event::InitDone) => break,
            Ok(_) => {}
            Err(e) => panic!("watcher failed before its first list: {e}"),
        }
    }
    make_secrets(10).await;
    let mut gone = false;
    loop {
        match timeout(DEADLINE, stream.next()).await.expect("the watcher recovers").unwrap() {
            Err(watcher::Error::WatchError(status)) if status.code == 410 => gone = true,
            Err(e) => panic!("unexpected watcher error: {e}"),
            Ok(watcher::Event::InitApply(object)) if gone => assert_eq!(object.name_any(), "m"),
            Ok(watcher::Event::InitDone) if gone => break,
            Ok(_) => {}
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("reconcile failed")]
struct ReconcileError(#[source] kube::Error);

#[tokio::test]
async fn a_controller_reconciles_tenants() {
    let server = start().await;
    let tenants = server.tenants("default");
    let reconciled = Arc::new(AtomicUsize::new(0));

    async fn reconcile(
        tenant: Arc<InvoicingTenant>,
        ctx: Arc<(Client, Arc<AtomicUsize>)>,
    ) -> Result<Action, ReconcileError> {
        ctx.1.fetch_add(1, Ordering::SeqCst);
        let api: Api<InvoicingTenant> = Api::namespaced(ctx.0.clone(), &tenant.namespace().unwrap());
        let status = json!({
            "apiVersion": "fenice.io/v1alpha1", "kind": "InvoicingTenant",
            "status": {"activeSite": tenant.spec.primary_site, "observedGeneration": tenant.meta().generation},
        });
        api.patch_status(&tenant.name_any(), &PatchParams::apply("fenice-test").force(), &Patch::Apply(&status))
            .await
            .map_err(ReconcileError)?;
        Ok(Action::await_change())
    }
    fn error_policy(_: Arc<InvoicingTenant>, _: &ReconcileError, _: Arc<(Client, Arc<AtomicUsize>)>) -> Action {
        Action::requeue(Duration::from_millis(100))
    }

    let controller = Controller::new(Api::<InvoicingTenant>::all(server.client.clone()), watcher::Config::default())
        .run(reconcile, error_policy, Arc::new((server.client.clone(), reconciled.clone())))
        .for_each(|_| futures::future::ready(()));
    let controller = tokio::spawn(controller);

    tenants.create(&PostParams::default(), &tenant("acme")).await.unwrap();
    let served_by = |site: &'static str, generation: i64| {
        move |t: Option<&InvoicingTenant>| {
            t.and_then(|t| t.status.as_ref())
                .is_some_and(|s| s.active_site.as_deref() == Some(site) && s.observed_generation == Some(generation))
        }
    };
    timeout(DEADLINE, await_condition(tenants.clone(), "acme", served_by("westpole-rome", 1))).await.unwrap().unwrap();

    let moved = json!({"spec": {"primarySite": "azure-italynorth"}});
    tenants.patch("acme", &PatchParams::default(), &Patch::Merge(&moved)).await.unwrap();
    timeout(DEADLINE, await_condition(tenants.clone(), "acme", served_by("azure-italynorth", 2)))
        .await
        .unwrap()
        .unwrap();
    assert!(reconciled.load(Ordering::SeqCst) >= 2);
    controller.abort();
}

#[tokio::test]
async fn discovery_and_crds_created_through_the_api() {
    let server = start().await;
    let version = server.client.apiserver_version().await.unwrap();
    assert_eq!(version.major, "1");

    let discovery = Discovery::new(server.client.clone()).run().await.unwrap();
    let gvk = GroupVersionKind::gvk("fenice.io", "v1alpha1", "InvoicingTenant");
    let (resource, capabilities) = discovery.resolve_gvk(&gvk).unwrap();
    assert_eq!(resource.plural, "invoicingtenants");
    assert_eq!(capabilities.scope, Scope::Namespaced);
    assert!(
        capabilities.subresources.iter().any(|(r, _)| r.plural == "invoicingtenants/status" || r.plural == "status")
    );
    for (group, kind) in
        [("", "Secret"), ("coordination.k8s.io", "Lease"), ("batch", "Job"), ("events.k8s.io", "Event")]
    {
        let version = "v1";
        assert!(discovery.resolve_gvk(&GroupVersionKind::gvk(group, version, kind)).is_some(), "{kind}");
    }

    // A new CRD makes a new kind servable; deleting it takes the kind away.
    let crds: Api<CustomResourceDefinition> = Api::all(server.client.clone());
    assert_eq!(crds.list(&ListParams::default()).await.unwrap().items.len(), fenice::api::crds().len());
    let widget_crd: CustomResourceDefinition = serde_json::from_value(json!({
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com",
            "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "required": ["size"], "properties": {
                        "size": {"type": "integer", "maximum": 10},
                    }},
                }}},
            }],
        },
    }))
    .unwrap();
    let created = crds.create(&PostParams::default(), &widget_crd).await.unwrap();
    let established = created.status.unwrap().conditions.unwrap();
    assert!(established.iter().any(|c| c.type_ == "Established" && c.status == "True"));

    let widget = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("example.com", "v1", "Widget"), "widgets");
    let widgets: Api<DynamicObject> = Api::default_namespaced_with(server.client.clone(), &widget);
    let good: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": 3},
    }))
    .unwrap();
    widgets.create(&PostParams::default(), &good).await.unwrap();
    let mut too_big = good.clone();
    too_big.metadata.name = Some("big".into());
    too_big.data["spec"]["size"] = json!(11);
    let invalid = api_error(widgets.create(&PostParams::default(), &too_big).await);
    assert_eq!(invalid.details.unwrap().causes[0].field, "spec.size");

    crds.delete("widgets.example.com", &DeleteParams::default()).await.unwrap();
    assert_eq!(api_error(widgets.get("w").await).code, 404);
}

#[tokio::test]
async fn the_binary_serves_and_writes_a_kubeconfig() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_fenice"))
        .args(["apiserver", "--listen", "127.0.0.1:0", "--kubeconfig-out"])
        .arg(&kubeconfig)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let first = timeout(DEADLINE, lines.next_line()).await.unwrap().unwrap().unwrap();
    let addr = first.strip_prefix("listening on ").unwrap_or_else(|| panic!("unexpected first line {first:?}"));
    let written = std::fs::read_to_string(&kubeconfig).unwrap();
    assert!(written.contains(&format!("server: http://{addr}")));
    assert!(written.contains("current-context: fenice-memory"));

    let client = client_from(&kubeconfig).await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let listed = namespaces.list(&ListParams::default()).await.unwrap();
    assert!(names(&listed.items).contains(&"default".to_owned()));
    let tenants: Api<InvoicingTenant> = Api::default_namespaced(client);
    tenants.create(&PostParams::default(), &tenant("acme")).await.unwrap();

    let pid = child.id().unwrap() as libc::pid_t;
    // SAFETY: sends SIGTERM to the child this test started and still owns.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = timeout(DEADLINE, child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn a_streaming_list_watcher_gets_its_initial_events() {
    let server = start().await;
    let tenants = server.tenants("default");
    tenants.create(&PostParams::default(), &tenant("acme")).await.unwrap();
    let config = watcher::Config::default().streaming_lists();
    let mut stream = watcher(Api::<InvoicingTenant>::all(server.client.clone()), config).boxed();
    let mut initial = Vec::new();
    loop {
        match timeout(DEADLINE, stream.try_next()).await.unwrap().unwrap().unwrap() {
            watcher::Event::InitApply(object) => initial.push(object.name_any()),
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(initial, ["acme"]);
    tenants.create(&PostParams::default(), &tenant("bolt")).await.unwrap();
    match timeout(DEADLINE, stream.try_next()).await.unwrap().unwrap().unwrap() {
        watcher::Event::Apply(object) => assert_eq!(object.name_any(), "bolt"),
        other => panic!("expected bolt to be applied, got {other:?}"),
    }
}

#[tokio::test]
async fn events_are_recorded_the_way_kubes_recorder_writes_them() {
    use k8s_openapi::api::events::v1::Event as K8sEvent;
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};

    let server = start().await;
    let created = server.tenants("default").create(&PostParams::default(), &tenant("acme")).await.unwrap();
    let recorder = Recorder::new(server.client.clone(), Reporter { controller: "fenice-test".into(), instance: None });
    let event = Event {
        type_: EventType::Normal,
        reason: "FailoverStarted".into(),
        note: Some("tenant acme moves to azure-italynorth".into()),
        action: "Failover".into(),
        secondary: None,
    };
    let reference = created.object_ref(&());
    recorder.publish(&event, &reference).await.unwrap();
    recorder.publish(&event, &reference).await.unwrap();
    let events: Api<K8sEvent> = Api::default_namespaced(server.client.clone());
    let listed = events.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(listed.len(), 1, "the repeat is a patch of the same Event");
    assert_eq!(listed[0].reason.as_deref(), Some("FailoverStarted"));
    assert_eq!(listed[0].series.as_ref().map(|s| s.count), Some(2));
    let about_acme = events.list(&ListParams::default().fields("regarding.name=acme")).await.unwrap().items;
    assert_eq!(about_acme.len(), 1);
}

#[tokio::test]
async fn kubectl_gets_tables_with_the_printer_columns() {
    let server = start().await;
    server.tenants("default").create(&PostParams::default(), &tenant("acme")).await.unwrap();
    let request = axum::http::Request::get("/apis/fenice.io/v1alpha1/namespaces/default/invoicingtenants")
        .header("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io,application/json")
        .body(Vec::new())
        .unwrap();
    let table: Value = serde_json::from_str(&server.client.request_text(request).await.unwrap()).unwrap();
    assert_eq!(table["kind"], "Table");
    let columns: Vec<&str> =
        table["columnDefinitions"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(columns, ["Name", "Site", "Tier", "Standby", "Last Backup", "Ready", "Age"]);
    let cells = &table["rows"][0]["cells"];
    assert_eq!((&cells[0], &cells[2], &cells[3]), (&json!("acme"), &json!("Gold"), &json!("Warm")));
    assert_eq!(table["rows"][0]["object"]["kind"], "PartialObjectMetadata");
}

#[tokio::test]
async fn secret_string_data_is_merged_and_creates_refuse_a_resource_version() {
    let server = start().await;
    let secrets: Api<Secret> = Api::default_namespaced(server.client.clone());
    let secret: Secret =
        serde_json::from_value(json!({"metadata": {"name": "repo"}, "stringData": {"password": "hunter2"}})).unwrap();
    let created = secrets.create(&PostParams::default(), &secret).await.unwrap();
    assert!(created.string_data.is_none(), "stringData is write-only");
    let data = created.data.unwrap();
    assert_eq!(data["password"].0, b"hunter2");
    let resource_version_set: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "x", "resourceVersion": "5"}})).unwrap();
    let maps: Api<ConfigMap> = Api::default_namespaced(server.client.clone());
    let refused = api_error(maps.create(&PostParams::default(), &resource_version_set).await);
    assert_eq!(refused.code, 400);
}

/// Runs kubectl against `kubeconfig`, its discovery cache beside it; `None`
/// when kubectl is not installed.
async fn kubectl(kubeconfig: &Path, args: &[&str]) -> Option<std::process::Output> {
    let cache = kubeconfig.with_file_name("kubectl-cache");
    let run = tokio::process::Command::new("kubectl")
        .args(args)
        .arg("--cache-dir")
        .arg(cache)
        .env("KUBECONFIG", kubeconfig)
        .output();
    match timeout(DEADLINE, run).await.expect("kubectl finishes in time") {
        Ok(output) => Some(output),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("running kubectl: {e}"),
    }
}

#[tokio::test]
async fn kubectl_installs_fenice_and_its_examples() {
    let server = start().await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, server.running.kubeconfig()).unwrap();
    let manifests = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests");
    let manifests = manifests.to_str().unwrap();
    let examples = format!("{manifests}/examples");
    let steps: [&[&str]; 5] = [
        &["apply", "--validate=false", "-k", manifests],
        &["apply", "--validate=false", "-k", &examples],
        &["apply", "--server-side", "--validate=false", "-f", &format!("{manifests}/crds.yaml")],
        &["create", "secret", "generic", "repo-azure", "-n", "invoicing", "--from-literal=password=x"],
        &["label", "tenant", "studio-rossi", "-n", "invoicing", "checked=yes"],
    ];
    for args in steps {
        let Some(output) = kubectl(&kubeconfig, args).await else {
            eprintln!("kubectl is not installed: skipping the kubectl checks");
            return;
        };
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "kubectl {args:?}: {stderr}");
    }
    let table = kubectl(&kubeconfig, &["get", "tenant", "-A"]).await.unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.starts_with("NAMESPACE   NAME"), "{text}");
    assert!(text.contains("TIER") && text.contains("studio-rossi") && text.contains("Gold"), "{text}");
    let labelled: Api<InvoicingTenant> = Api::namespaced(server.client.clone(), "invoicing");
    assert_eq!(labelled.list(&ListParams::default().labels("checked=yes")).await.unwrap().items.len(), 1);
}
