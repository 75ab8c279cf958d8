//! `fenice audit` against the in-memory API server: a tenant whose copies sit
//! at two providers other than its primary's, one locked at the store and
//! verified by a restore, passes; a tenant whose only copies sit at one
//! provider is caught, named, and makes the command exit 1.

use std::process::Command;

use fenice::apiserver::{self, ServerOptions};
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use kube::{Api, Client};
use serde_json::{Value, json};

fn resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: "fenice.io".into(),
        version: "v1alpha1".into(),
        api_version: "fenice.io/v1alpha1".into(),
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// Creates the object, then writes its status through the status subresource.
async fn put(client: &Client, kind: &str, plural: &str, object: Value) {
    let resource = resource(kind, plural);
    let api: Api<DynamicObject> = match object["metadata"]["namespace"].as_str() {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    };
    let mut object = object;
    object["apiVersion"] = json!("fenice.io/v1alpha1");
    object["kind"] = json!(kind);
    let status = object.as_object_mut().unwrap().remove("status");
    let name = object["metadata"]["name"].as_str().unwrap().to_owned();
    api.create(&PostParams::default(), &serde_json::from_value(object).unwrap()).await.unwrap();
    if let Some(status) = status {
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(json!({"status": status}))).await.unwrap();
    }
}

fn tenant(name: &str) -> Value {
    json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "displayName": name, "vatNumber": "01234567897", "tier": "Gold", "primarySite": "westpole-rome",
            "objectives": {"rpo": "1m", "rto": "5m"}, "backupPolicy": "standard",
            "sdi": {"channels": [{"site": "westpole-rome", "kind": "SDICoop", "endpoint": "https://sdi.example.it",
                "environment": "Test", "certificateSecretRef": {"name": "c", "key": "k"},
                "privateKeySecretRef": {"name": "c", "key": "k"}}]},
        },
    })
}

fn backup(tenant: &str, copies: Value) -> Value {
    json!({
        "metadata": {"name": format!("{tenant}-20261123-0100"), "namespace": "default"},
        "spec": {"tenant": tenant},
        "status": {"phase": "Succeeded", "completionTime": jiff::Timestamp::now().to_string(), "copies": copies},
    })
}

fn repository(name: &str, provider: &str, locked: bool) -> Value {
    json!({
        "metadata": {"name": name},
        "spec": {"provider": provider, "storage": {"type": "S3", "s3": {"bucket": name}},
                 "immutability": if locked { json!({"enabled": true, "retention": "30d"}) } else { json!({"enabled": false}) },
                 "passwordSecretRef": {"name": "p", "key": "password"}},
        "status": {"reachable": true, "immutabilityInForce": locked},
    })
}

fn audit(kubeconfig: &std::path::Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_fenice"))
        .arg("audit")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(extra)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_passes_a_protected_tenant_and_catches_one_whose_copies_sit_at_one_provider() {
    let api = apiserver::spawn(ServerOptions::default()).await.unwrap();
    let client = api.client().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig()).unwrap();

    let site = json!({"metadata": {"name": "westpole-rome"},
        "spec": {"provider": "Westpole", "region": "rome", "role": "Primary", "cluster": {"driver": "Local"}}});
    put(&client, "Site", "sites", site).await;
    put(&client, "BackupRepository", "backuprepositories", repository("azure-locked", "Azure", true)).await;
    put(&client, "BackupRepository", "backuprepositories", repository("ovh-plain", "Ovhcloud", false)).await;
    put(&client, "BackupRepository", "backuprepositories", repository("azure-second", "Azure", true)).await;
    let until = (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * 30)).to_string();

    put(&client, "InvoicingTenant", "invoicingtenants", tenant("protected")).await;
    let copies = json!([
        {"repository": "azure-locked", "provider": "Azure", "written": true, "immutableUntil": until},
        {"repository": "ovh-plain", "provider": "Ovhcloud", "written": true},
    ]);
    put(&client, "Backup", "backups", backup("protected", copies)).await;
    let restore = json!({"metadata": {"name": "protected-check", "namespace": "default"},
        "spec": {"tenant": "protected", "repository": "azure-locked"},
        "status": {"phase": "Succeeded", "verified": true, "completionTime": jiff::Timestamp::now().to_string()}});
    put(&client, "Restore", "restores", restore).await;

    let out = audit(&kubeconfig, &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("1 of 1 tenants satisfy 3-2-1-1-0"), "{text}");

    // Its copies at one provider only: caught, named, exit 1.
    put(&client, "InvoicingTenant", "invoicingtenants", tenant("one-provider")).await;
    let copies = json!([
        {"repository": "azure-locked", "provider": "Azure", "written": true, "immutableUntil": until},
        {"repository": "azure-second", "provider": "Azure", "written": true, "immutableUntil": until},
    ]);
    put(&client, "Backup", "backups", backup("one-provider", copies)).await;
    let restore = json!({"metadata": {"name": "one-provider-check", "namespace": "default"},
        "spec": {"tenant": "one-provider", "repository": "azure-locked"},
        "status": {"phase": "Succeeded", "verified": true, "completionTime": jiff::Timestamp::now().to_string()}});
    put(&client, "Restore", "restores", restore).await;
    let out = audit(&kubeconfig, &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("default/one-provider: [2 providers] tenant one-provider's backups are at 1 provider(s) other than its primary's Westpole (Azure)"),
        "{text}"
    );
    assert!(text.contains("1 of 2 tenants satisfy 3-2-1-1-0"), "{text}");

    let out = audit(&kubeconfig, &["--json"]);
    let audits: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let caught = audits.iter().find(|a| a["tenant"] == "one-provider").unwrap();
    assert_eq!(caught["violations"][0]["rule"], "2 providers");
    assert_eq!(caught["verification"], "passed");
    let passed = audits.iter().find(|a| a["tenant"] == "protected").unwrap();
    assert_eq!(passed["violations"], json!([]));
    assert_eq!(passed["copies"].as_array().unwrap().len(), 2);

    // An unreachable cluster is a clear error, not a table.
    std::fs::write(&kubeconfig, apiserver::kubeconfig("127.0.0.1:1".parse().unwrap())).unwrap();
    let out = audit(&kubeconfig, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("listing InvoicingTenants"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
