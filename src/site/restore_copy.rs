//! A Restore at a Kubernetes site: a copy of the tenant beside its stack,
//! never over it. The copy is a PostgreSQL of its own (StatefulSet `<copy>`
//! with its volume, a headless Service), a volume for the invoice documents,
//! a Secret with the copy's database password and what the restore Job opens
//! the one repository it reads with, and a NetworkPolicy that lets only the
//! Job reach the copy. The Job ([`job`]) runs `fenice agent restore`, which
//! restores and verifies, and leaves its report in the pod's termination
//! message, where the operator reads it.
//!
//! The copy's objects carry `fenice.io/restore=<copy>`, not the tenant label:
//! the tenant's Services and NetworkPolicies select by that label, and the
//! copy must never receive the tenant's traffic. Nothing here archives WAL:
//! a copy writing into the tenant's archive would corrupt its history.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::kubernetes::{
    AgentJob, DB_PORT, DOCUMENTS, Images, POSTGRES_HARDENED, Pods, RenderError, TERMINATION_LOG, Who, network_policy,
    platform, resources, without_nulls,
};
use crate::api::site::Site;
use crate::api::tenant::InvoicingTenant;

/// The label every object of a copy carries, with the copy's name.
pub const RESTORE_LABEL: &str = "fenice.io/restore";

fn labels(copy: &str, tenant: &str, component: &str) -> Value {
    json!({
        "app.kubernetes.io/name": "fenice-restore", "app.kubernetes.io/instance": copy,
        "app.kubernetes.io/component": component, "app.kubernetes.io/managed-by": "fenice",
        RESTORE_LABEL: copy, "fenice.io/restored-tenant": tenant,
    })
}

fn metadata(copy: &str, tenant: &str, name: String, component: &str) -> Value {
    json!({"name": name, "labels": labels(copy, tenant, component)})
}

fn documents_claim(copy: &str) -> String {
    format!("{copy}-documents")
}

/// A copy's objects: its Secret, made once (it holds the password the
/// copy's PostgreSQL starts with), and the rest, applied.
pub struct Rendered {
    pub secret: Value,
    pub objects: Vec<Value>,
}

/// The objects of the copy `copy` of `tenant` at `site`: what the Job
/// restores into. `env` is the agents' environment for the one repository
/// read; `password` the copy's new database password.
pub fn objects(
    tenant: &InvoicingTenant,
    site: &Site,
    images: &Images,
    copy: &str,
    env: &BTreeMap<String, Zeroizing<String>>,
    password: &str,
) -> Result<Rendered, RenderError> {
    let who = Who::of(tenant)?;
    let (_, platform) = platform(site)?;
    let pods = Pods { platform };
    let spec = &tenant.spec;
    let meta = |name: String, component: &str| metadata(copy, who.name, name, component);
    let mut secret: BTreeMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let url = format!("postgres://postgres:{password}@{copy}:{DB_PORT}/postgres");
    secret.insert("POSTGRES_PASSWORD", password);
    secret.insert("FENICE_DB_URL", &url);
    let copy_pods = json!({RESTORE_LABEL: copy});
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": meta(copy.to_owned(), "restore"),
        "stringData": secret,
    });
    let objects = vec![
        json!({
            "apiVersion": "v1", "kind": "Service", "metadata": meta(copy.to_owned(), "database"),
            "spec": {
                "clusterIP": "None", "selector": labels(copy, who.name, "database"),
                "ports": [{"name": "postgres", "port": DB_PORT}],
            },
        }),
        json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": meta(copy.to_owned(), "database"),
            "spec": {
                "serviceName": copy,
                "replicas": 1,
                "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete", "whenScaled": "Delete"},
                "selector": {"matchLabels": labels(copy, who.name, "database")},
                "template": pods.template(labels(copy, who.name, "database"), 999, json!({
                    "containers": [{
                        "name": "postgres",
                        "image": format!("{}fenice-postgres:{}", pods.registry(), images.postgres),
                        "env": [
                            {"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"},
                            {"name": "POSTGRES_PASSWORD", "valueFrom": {"secretKeyRef": {"name": copy, "key": "POSTGRES_PASSWORD"}}},
                        ],
                        "ports": [{"name": "postgres", "containerPort": DB_PORT}],
                        "readinessProbe": {"exec": {"command": ["pg_isready", "-U", "postgres"]}, "periodSeconds": 5},
                        "resources": resources((250, 256)),
                        "securityContext": *POSTGRES_HARDENED,
                        "volumeMounts": [{"name": "data", "mountPath": "/var/lib/postgresql/data"}],
                    }],
                })),
                "volumeClaimTemplates": [{
                    "metadata": {"name": "data", "labels": labels(copy, who.name, "database")},
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "storageClassName": platform.storage_class,
                        "resources": {"requests": {"storage": spec.database.storage}},
                    },
                }],
            },
        }),
        json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta(documents_claim(copy), "restore"),
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": platform.storage_class,
                "resources": {"requests": {"storage": spec.documents.storage}},
            },
        }),
        // The Job reaches the copy and the repositories; nothing else reaches the copy.
        network_policy(
            meta(copy.to_owned(), "restore"),
            copy_pods.clone(),
            json!([{"from": [{"podSelector": {"matchLabels": copy_pods}}], "ports": [{"port": DB_PORT}]}]),
            json!([{"to": [{"podSelector": {"matchLabels": copy_pods}}], "ports": [{"port": DB_PORT}]}]),
        ),
    ];
    Ok(Rendered { secret: without_nulls(secret), objects: objects.into_iter().map(without_nulls).collect() })
}

/// The Job that restores `snapshot` (the tenant's newest when `None`) into
/// the copy; for a drill, it then serves the copy's app and sends a test
/// invoice to `drill_endpoint`.
pub fn job(
    tenant: &InvoicingTenant,
    site: &Site,
    images: &Images,
    copy: &str,
    snapshot: Option<&str>,
    drill_endpoint: Option<&str>,
) -> Result<Value, RenderError> {
    let who = Who::of(tenant)?;
    let (_, platform) = platform(site)?;
    let pods = Pods { platform };
    let mut args = vec!["agent", "restore", "--json", "--tenant", who.name, "--documents", DOCUMENTS];
    args.extend(["--result-file", TERMINATION_LOG]);
    if let Some(snapshot) = snapshot {
        args.extend(["--snapshot", snapshot]);
    }
    if let Some(endpoint) = drill_endpoint {
        args.extend(["--drill-endpoint", endpoint, "--vat", &tenant.spec.vat_number]);
        args.extend(["--company", &tenant.spec.display_name]);
    }
    let job = AgentJob {
        metadata: metadata(copy, who.name, copy.to_owned(), "restore"),
        labels: labels(copy, who.name, "restore"),
        container: "restore",
        args: json!(args),
        env: Value::Null,
        env_from: json!([{"secretRef": {"name": copy}}]),
        documents_claim: documents_claim(copy),
        deadline_seconds: 6 * 3600,
    };
    Ok(pods.agent_job(images, job))
}

/// Everything a copy is, as (apiVersion, kind, name), for deleting it: its
/// objects, its Job, and the volume the StatefulSet made for its data.
pub fn names(copy: &str) -> Vec<(&'static str, &'static str, String)> {
    vec![
        ("batch/v1", "Job", copy.to_owned()),
        ("apps/v1", "StatefulSet", copy.to_owned()),
        ("v1", "Service", copy.to_owned()),
        ("networking.k8s.io/v1", "NetworkPolicy", copy.to_owned()),
        ("v1", "PersistentVolumeClaim", documents_claim(copy)),
        ("v1", "PersistentVolumeClaim", format!("data-{copy}-0")),
        ("v1", "Secret", copy.to_owned()),
    ]
}
