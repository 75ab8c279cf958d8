//! A tenant's PostgreSQL as a CloudNativePG `Cluster` (postgresql.cnpg.io/v1),
//! at Sites whose `platform.database` is `CloudNativePG`: that operator runs
//! the instances, their failover within the cluster and their Services. The
//! mapping from what the StatefulSet flavour renders:
//!
//! | StatefulSet flavour | Cluster |
//! |---|---|
//! | 1 replica | `instances`: 2 for Gold (a streaming replica), 1 otherwise |
//! | `fenice-postgres:15-<v>` | `imageName`: `<registry>/postgresql:15`, CloudNativePG's operand image, mirrored into the Site's registry (`ghcr.io/cloudnative-pg/postgresql:15` without one): PostgreSQL 15, the major version the agents' pg_dump matches |
//! | volume claim `data` | `storage.size`, `storage.storageClass` |
//! | resources by tier | `resources`, the same |
//! | `nodeSelector`, `tolerations` | `affinity.nodeSelector`, `affinity.tolerations` |
//! | Secret `<tenant>-db` (`password`, `url`) | `superuserSecret` (type `kubernetes.io/basic-auth`, `username` `postgres`), `enableSuperuserAccess: true`; `url` names `<tenant>-db-rw` |
//! | Service `<tenant>-db` | CloudNativePG's `<tenant>-db-rw` (and `-ro`, `-r`) |
//! | pod labels | `inheritedMetadata.labels`: the tenant's, so the app's and backups' NetworkPolicies reach it |
//! | `archive_command = fenice agent wal-push` | none: CloudNativePG owns `archive_command` (its own archiver, barman-cloud or a plugin) |
//!
//! What follows from the last row: no WAL reaches the tenant's repositories,
//! so there is no point-in-time recovery or warm standby from Fenice's
//! archive, and backups there are logical only (`pg_basebackup` needs a
//! replication connection, which CloudNativePG grants its own replicas
//! only). CloudNativePG's own backups can be configured beside Fenice's.

use serde_json::{Value, json};

use super::kubernetes::{DB_PORT, Pods, Who, database_secret_name, network_policy, resources, sizes};
use crate::api::common::Tier;
use crate::api::tenant::InvoicingTenant;

/// CloudNativePG's read-write Service of the tenant's Cluster: the primary.
pub fn primary(tenant: &str) -> String {
    format!("{}-rw", database_secret_name(tenant))
}

/// The Cluster `<tenant>-db`.
pub(super) fn cluster(who: &Who<'_>, pods: &Pods<'_>, tenant: &InvoicingTenant) -> Value {
    let db = database_secret_name(who.name);
    let (_, db_size) = sizes(tenant.spec.tier);
    let registry = pods.registry();
    let image = match registry.is_empty() {
        true => "ghcr.io/cloudnative-pg/postgresql:15".to_owned(),
        false => format!("{registry}postgresql:15"),
    };
    json!({
        "apiVersion": "postgresql.cnpg.io/v1", "kind": "Cluster", "metadata": who.metadata(db.clone(), "database"),
        "spec": {
            "instances": if tenant.spec.tier == Tier::Gold { 2 } else { 1 },
            "imageName": image,
            "enableSuperuserAccess": true,
            "superuserSecret": {"name": db},
            "storage": {"size": tenant.spec.database.storage, "storageClass": pods.platform.storage_class},
            "resources": resources(db_size),
            "affinity": {"nodeSelector": pods.platform.node_selector, "tolerations": pods.platform.tolerations},
            "inheritedMetadata": {"labels": who.labels("database")},
        },
    })
}

/// The Cluster's pods take connections from the tenant's app and backup
/// Jobs, from each other (replication) and from the CloudNativePG operator
/// (its instance manager's port 8000, from namespace `cnpg-system`); they
/// reach each other and the Kubernetes API (the instance manager watches it).
pub(super) fn policy(who: &Who<'_>) -> Value {
    let db = database_secret_name(who.name);
    let from = |component| json!({"podSelector": {"matchLabels": who.selector(component)}});
    let instances = json!({"podSelector": {"matchLabels": {"cnpg.io/cluster": db}}});
    let operator = json!({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "cnpg-system"}}});
    network_policy(
        who.metadata(db.clone(), "database"),
        who.selector("database"),
        json!([
            {"from": [from("app"), from("backup"), instances.clone()], "ports": [{"port": DB_PORT}]},
            {"from": [operator], "ports": [{"port": 8000}]},
        ]),
        json!([
            {"to": [instances], "ports": [{"port": DB_PORT}]},
            {"ports": [{"port": 6443, "protocol": "TCP"}]},
        ]),
    )
}
