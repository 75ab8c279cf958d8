//! The Kubernetes site driver's renderer: the objects one tenant's stack is at
//! a Kubernetes site. Pure: the same InvoicingTenant gives the same objects on
//! any provider's cluster, and only what the Site declares (storage class,
//! exposure, DNS, registry, node placement) differs. The controller applies
//! them with server-side apply and deletes, by label, what it no longer renders.
//!
//! Per tenant: the app (ConfigMap, Deployment running `fenice app serve`,
//! Service, PodDisruptionBudget, the documents' PersistentVolumeClaim),
//! PostgreSQL (StatefulSet archiving WAL with `fenice agent wal-push`, headless
//! Service), a NetworkPolicy for each, an Ingress or a Gateway API HTTPRoute,
//! and, where the Site switches DNS that way, an external-dns DNSEndpoint.

use serde_json::{Value, json};

use super::cloud_native_pg;
use crate::api::common::Tier;
use crate::api::site::{DnsSwitch, ExposureKind, Platform, Site};
use crate::api::tenant::InvoicingTenant;

/// The label every rendered object carries, with the tenant's name: what the
/// controller lists and deletes by.
pub const TENANT_LABEL: &str = "fenice.io/tenant";
const APP_PORT: u16 = 8080;
pub(super) const DB_PORT: u16 = 5432;

/// What the images are called; the registry comes from the Site.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Images {
    /// Tag of the `fenice` image (the app, the agents).
    pub fenice: String,
    /// Tag of the `fenice-postgres` image: PostgreSQL with the `fenice` binary for `archive_command`.
    pub postgres: String,
}

impl Images {
    /// The images of this build: `fenice:<version>`, and `fenice-postgres:15-<version>`
    /// (PostgreSQL 15, the major version the agents' dumps and WAL are made with).
    pub fn of_this_build() -> Images {
        let version = env!("CARGO_PKG_VERSION");
        Images { fenice: version.to_owned(), postgres: format!("15-{version}") }
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("InvoicingTenant {tenant} has no namespace")]
    NoNamespace { tenant: String },
    #[error("Site {site} has no platform settings (spec.platform): storage class, exposure and registry are needed")]
    NoPlatform { site: String },
    #[error("InvoicingTenant {tenant} has no SdI channel at Site {site}: add one to spec.sdi.channels")]
    NoChannel { tenant: String, site: String },
    #[error(
        "InvoicingTenant {tenant}: Site {site} runs PostgreSQL with CloudNativePG, whose WAL archiving is its own, so \
         no warm standby can replay Fenice's archive there: set spec.standby to Cold, or use a Site whose \
         platform.database is StatefulSet"
    )]
    CloudNativePgStandby { tenant: String, site: String },
}

/// Requests and limits by tier: CPU (millicores) and memory (MiB), for the app and for PostgreSQL.
pub(super) fn sizes(tier: Tier) -> ((u32, u32), (u32, u32)) {
    match tier {
        Tier::Gold => ((500, 512), (1000, 2048)),
        Tier::Silver => ((250, 256), (500, 1024)),
        Tier::Bronze => ((100, 128), (250, 512)),
    }
}

pub(super) fn resources((millicores, mebibytes): (u32, u32)) -> Value {
    // NB: no CPU limit (throttling hurts latency more than it protects); memory limited at twice the request.
    json!({
        "requests": {"cpu": format!("{millicores}m"), "memory": format!("{mebibytes}Mi")},
        "limits": {"memory": format!("{}Mi", mebibytes * 2)},
    })
}

/// The tenant's objects at `site`.
pub fn render(tenant: &InvoicingTenant, site: &Site, images: &Images) -> Result<Vec<Value>, RenderError> {
    let who = Who::of(tenant)?;
    let name = who.name.to_owned();
    let (site_name, platform) = platform(site)?;
    let spec = &tenant.spec;
    let channel = spec
        .sdi
        .channels
        .iter()
        .find(|c| c.site == site_name)
        .ok_or_else(|| RenderError::NoChannel { tenant: name.clone(), site: site_name.clone() })?;
    let pods = Pods { platform };
    let registry = pods.registry();
    let selector = |component: &str| who.selector(component);
    let metadata = |object: String, component: &str| who.metadata(object, component);
    let (app_size, _) = sizes(spec.tier);
    let app_resources = match &spec.app.resources {
        Some(custom) => serde_json::to_value(custom).unwrap_or(Value::Null),
        None => resources(app_size),
    };
    let template = |component: &str, uid: u32, spec: Value| pods.template(who.labels(component), uid, spec);
    let hardened = HARDENED.clone();
    let storage_class = platform.storage_class.clone();
    let (app, db) = (format!("{name}-app"), format!("{name}-db"));
    let host = spec.app.host.clone().unwrap_or_else(|| match &platform.dns_zone {
        Some(zone) => format!("{name}.{zone}"),
        None => name.clone(),
    });

    let mut objects = vec![
        json!({
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata(app.clone(), "app"),
            "data": {
                "FENICE_TENANT": name, "FENICE_VAT": spec.vat_number, "FENICE_COMPANY": spec.display_name,
                "FENICE_SDI_ENDPOINT": channel.endpoint, "FENICE_SITE": site_name,
                // NB: the epoch a failover moved the tenant under: SdI refuses a sender of an older one.
                "FENICE_APP_EPOCH": tenant.status.as_ref().and_then(|s| s.serving.as_ref()).map_or(1, |s| s.epoch).to_string(),
            },
        }),
        json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": metadata(format!("{name}-documents"), "app"),
            "spec": {
                "accessModes": [if spec.app.replicas > 1 { "ReadWriteMany" } else { "ReadWriteOnce" }],
                "storageClassName": storage_class,
                "resources": {"requests": {"storage": spec.documents.storage}},
            },
        }),
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata(app.clone(), "app"),
            "spec": {
                "replicas": spec.app.replicas,
                "selector": {"matchLabels": selector("app")},
                "template": template("app", 10001, json!({
                        "containers": [{
                            "name": "app",
                            "image": format!("{registry}fenice:{}", images.fenice),
                            "args": [
                                "app", "serve", "--listen", format!("0.0.0.0:{APP_PORT}"),
                                "--tenant", "$(FENICE_TENANT)", "--vat", "$(FENICE_VAT)",
                                "--company", "$(FENICE_COMPANY)", "--documents", DOCUMENTS,
                                "--sdi-endpoint", "$(FENICE_SDI_ENDPOINT)",
                            ],
                            "envFrom": [{"configMapRef": {"name": app}}],
                            // NB: the database URL carries a password: a Secret, never the ConfigMap.
                            "env": [{"name": "FENICE_APP_DB", "valueFrom": {"secretKeyRef": {"name": db, "key": "url"}}}],
                            "ports": [{"name": "http", "containerPort": APP_PORT}],
                            "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 5},
                            "livenessProbe": {
                                "httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10, "failureThreshold": 6,
                            },
                            "resources": app_resources,
                            "securityContext": hardened,
                            "volumeMounts": [
                                {"name": "documents", "mountPath": DOCUMENTS},
                                {"name": "tmp", "mountPath": "/tmp"},
                            ],
                        }],
                        "volumes": [
                            {"name": "documents", "persistentVolumeClaim": {"claimName": format!("{name}-documents")}},
                            {"name": "tmp", "emptyDir": {}},
                        ],
                })),
            },
        }),
        json!({
            "apiVersion": "v1", "kind": "Service", "metadata": metadata(app.clone(), "app"),
            "spec": {"selector": selector("app"), "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
        }),
        json!({
            "apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": metadata(app.clone(), "app"),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector("app")}},
        }),
    ];
    let cloud_native_pg = site.cloud_native_pg();
    match cloud_native_pg {
        true => objects.push(cloud_native_pg::cluster(&who, &pods, tenant)),
        false => objects.extend([database_set(&who, &pods, tenant, images, None), database_service(&who)]),
    }
    objects.push(network_policy(
        metadata(app.clone(), "app"),
        selector("app"),
        json!([{"ports": [{"port": APP_PORT}]}]),
        json!([{"to": [{"podSelector": {"matchLabels": selector("database")}}], "ports": [{"port": DB_PORT}]}]),
    ));
    objects.push(match cloud_native_pg {
        true => cloud_native_pg::policy(&who),
        false => database_policy(&who),
    });
    // The backup Jobs' pods take no connections, and reach their database and the repositories.
    objects.push(network_policy(metadata(format!("{name}-backup"), "backup"), selector("backup"), json!([]), {
        json!([{"to": [{"podSelector": {"matchLabels": selector("database")}}], "ports": [{"port": DB_PORT}]}])
    }));
    let exposure = platform.exposure.as_ref();
    let mut annotations = serde_json::Map::new();
    if platform.dns_switch == Some(DnsSwitch::ExternalDnsAnnotation) {
        annotations.insert("external-dns.alpha.kubernetes.io/hostname".into(), json!(host));
    }
    let mut exposed = metadata(app.clone(), "app");
    exposed["annotations"] = Value::Object(annotations);
    match exposure.map(|e| e.kind) {
        Some(ExposureKind::HttpRoute) => {
            let gateway = exposure.and_then(|e| e.gateway_ref.as_deref()).unwrap_or_default();
            let (gateway_namespace, gateway_name) = gateway.split_once('/').unwrap_or(("", gateway));
            objects.push(json!({
                "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": exposed,
                "spec": {
                    "parentRefs": [{"name": gateway_name, "namespace": gateway_namespace}],
                    "hostnames": [host],
                    "rules": [{"backendRefs": [{"name": app, "port": 80}]}],
                },
            }));
        }
        Some(ExposureKind::Ingress) | None => objects.push(json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": exposed,
            "spec": {
                "ingressClassName": exposure.and_then(|e| e.ingress_class_name.clone()),
                "rules": [{"host": host, "http": {"paths": [{
                    "path": "/", "pathType": "Prefix",
                    "backend": {"service": {"name": app, "port": {"name": "http"}}},
                }]}}],
            },
        })),
    }
    if platform.dns_switch == Some(DnsSwitch::DnsEndpoint)
        && let Some(target) = &platform.dns_target
    {
        let record = if target.parse::<std::net::Ipv4Addr>().is_ok() { "A" } else { "CNAME" };
        objects.push(json!({
            "apiVersion": "externaldns.k8s.io/v1alpha1", "kind": "DNSEndpoint", "metadata": metadata(app.clone(), "app"),
            // NB: a short TTL: on failover the record moves to the other site.
            "spec": {"endpoints": [{"dnsName": host, "recordType": record, "recordTTL": 60, "targets": [target]}]},
        }));
    }
    Ok(objects.into_iter().map(without_nulls).collect())
}

/// The stack [`render`] made, fenced: the app stopped (no replicas) and no
/// DNS record pointing clients at this site; the database and its volumes
/// stay as they are. What a site that is not the tenant's serving site runs.
pub fn fence(objects: &mut Vec<Value>) {
    objects.retain(|o| o["kind"] != "DNSEndpoint");
    for object in objects.iter_mut() {
        if let Some(annotations) = object["metadata"]["annotations"].as_object_mut() {
            annotations.remove("external-dns.alpha.kubernetes.io/hostname");
        }
        if object["kind"] == "Deployment" && object["metadata"]["labels"]["app.kubernetes.io/component"] == "app" {
            object["spec"]["replicas"] = json!(0);
        }
    }
}

/// Where a tenant's PostgreSQL keeps its data, in its pod.
const PGDATA: &str = "/var/lib/postgresql/data/pgdata";

/// The tenant's PostgreSQL: a StatefulSet `<tenant>-db` archiving WAL with
/// `fenice agent wal-push`. With `prepare`, an init container that makes its
/// data directory first (a warm standby's). The same StatefulSet at either
/// site, so that the standby's volume (`data-<tenant>-db-0`) becomes the
/// database when the rest of the stack is applied there: a StatefulSet's
/// name, selector and volume claims cannot change once made. Archiving is
/// on in both: a standby does not archive until it is promoted.
fn database_set(
    who: &Who<'_>,
    pods: &Pods<'_>,
    tenant: &InvoicingTenant,
    images: &Images,
    prepare: Option<Value>,
) -> Value {
    let db = database_secret_name(who.name);
    let (_, db_size) = sizes(tenant.spec.tier);
    let mut pod = json!({
        "containers": [{
            "name": "postgres",
            "image": format!("{}fenice-postgres:{}", pods.registry(), images.postgres),
            "args": [
                "-c", "archive_mode=on",
                "-c", "archive_command=fenice agent wal-push %p",
                "-c", "archive_timeout=60",
            ],
            "env": [
                {"name": "PGDATA", "value": PGDATA},
                {"name": "FENICE_TENANT", "value": who.name},
                {"name": "POSTGRES_PASSWORD", "valueFrom": {"secretKeyRef": {"name": db, "key": "password"}}},
            ],
            "envFrom": [{"secretRef": {"name": repositories_secret_name(who.name)}}],
            "ports": [{"name": "postgres", "containerPort": DB_PORT}],
            "readinessProbe": {"exec": {"command": ["pg_isready", "-U", "postgres"]}, "periodSeconds": 5},
            "resources": resources(db_size),
            "securityContext": *POSTGRES_HARDENED,
            "volumeMounts": [{"name": "data", "mountPath": "/var/lib/postgresql/data"}],
        }],
    });
    if let Some(init) = prepare {
        pod["initContainers"] = json!([init]);
    }
    json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": who.metadata(db.clone(), "database"),
        "spec": {
            "serviceName": db,
            "replicas": 1,
            // NB: the database volume goes with the tenant; its backups stay in the repositories.
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete", "whenScaled": "Retain"},
            "selector": {"matchLabels": who.selector("database")},
            "template": pods.template(who.labels("database"), 999, pod),
            "volumeClaimTemplates": [{
                "metadata": {"name": "data", "labels": who.labels("database")},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "storageClassName": pods.platform.storage_class,
                    "resources": {"requests": {"storage": tenant.spec.database.storage}},
                },
            }],
        },
    })
}

fn database_service(who: &Who<'_>) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service", "metadata": who.metadata(database_secret_name(who.name), "database"),
        "spec": {"clusterIP": "None", "selector": who.selector("database"), "ports": [{"name": "postgres", "port": DB_PORT}]},
    })
}

/// The database takes connections from the tenant's app and backup Jobs only.
fn database_policy(who: &Who<'_>) -> Value {
    let from = |component| json!({"podSelector": {"matchLabels": who.selector(component)}});
    network_policy(
        who.metadata(database_secret_name(who.name), "database"),
        who.selector("database"),
        json!([{"from": [from("app"), from("backup")], "ports": [{"port": DB_PORT}]}]),
        json!([]),
    )
}

/// A warm standby of the tenant at a standby `site`: its PostgreSQL
/// ([`database_set`]) made, on first start, from the newest base backup in
/// `repository` (`fenice agent restore --standby`), then replaying the WAL
/// archive as it grows. Its init container leaves a standby's data
/// directory alone (a pod restarted keeps replaying where it was), and a
/// primary's of the newest timeline (one promoted stays promoted); a primary
/// whose timeline a promotion elsewhere replaced (a failover's old primary,
/// the site a failback left) is set aside whole and a fresh standby made.
/// With its Service and NetworkPolicy; the Secrets
/// it needs are the tenant's (the database's, copied from the primary: the
/// restored data has the primary's password; the repositories').
pub fn warm_standby(
    tenant: &InvoicingTenant,
    site: &Site,
    images: &Images,
    repository: &str,
) -> Result<Vec<Value>, RenderError> {
    let who = Who::of(tenant)?;
    let (site_name, platform) = platform(site)?;
    if site.cloud_native_pg() {
        return Err(RenderError::CloudNativePgStandby { tenant: who.name.to_owned(), site: site_name });
    }
    let pods = Pods { platform };
    let prepare = json!({
        "name": "prepare",
        "image": format!("{}fenice-postgres:{}", pods.registry(), images.postgres),
        "command": ["fenice"],
        "args": [
            "agent", "restore", "--tenant", who.name, "--repo", repository,
            "--pgdata", PGDATA, "--standby", "--keep-initialised", "--set-aside-diverged",
        ],
        "envFrom": [{"secretRef": {"name": repositories_secret_name(who.name)}}],
        "resources": resources((250, 256)),
        "securityContext": *POSTGRES_HARDENED,
        "volumeMounts": [{"name": "data", "mountPath": "/var/lib/postgresql/data"}],
    });
    let objects =
        [database_set(&who, &pods, tenant, images, Some(prepare)), database_service(&who), database_policy(&who)];
    Ok(objects.into_iter().map(without_nulls).collect())
}

/// The Site's name and its platform settings, which every pod there needs.
pub(super) fn platform(site: &Site) -> Result<(String, &Platform), RenderError> {
    let name = site.metadata.name.clone().unwrap_or_default();
    let platform = site.spec.platform.as_ref().ok_or_else(|| RenderError::NoPlatform { site: name.clone() })?;
    Ok((name, platform))
}

/// What every container runs with: no privileges, no writes outside its volumes.
pub(super) static HARDENED: std::sync::LazyLock<Value> = std::sync::LazyLock::new(|| {
    json!({
        "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "runAsNonRoot": true,
        "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
    })
});

/// [`HARDENED`] for PostgreSQL, which writes its socket and lock files
/// outside its data volume.
pub(super) static POSTGRES_HARDENED: std::sync::LazyLock<Value> = std::sync::LazyLock::new(|| {
    let mut context = HARDENED.clone();
    context.as_object_mut().map(|m| m.remove("readOnlyRootFilesystem"));
    context
});

/// The pods at one site.
pub(super) struct Pods<'a> {
    pub(super) platform: &'a Platform,
}

impl Pods<'_> {
    /// `registry/`, or nothing when the Site names none.
    pub(super) fn registry(&self) -> String {
        self.platform.image_registry.as_deref().map_or(String::new(), |r| format!("{}/", r.trim_end_matches('/')))
    }

    /// A pod template: `spec`'s containers and volumes, as user `uid`, on the Site's nodes.
    pub(super) fn template(&self, labels: Value, uid: u32, mut spec: Value) -> Value {
        spec["automountServiceAccountToken"] = json!(false);
        spec["securityContext"] = json!({"runAsNonRoot": true, "runAsUser": uid, "fsGroup": uid});
        spec["nodeSelector"] = json!(self.platform.node_selector);
        spec["tolerations"] = serde_json::to_value(&self.platform.tolerations).unwrap_or(Value::Null);
        json!({"metadata": {"labels": labels}, "spec": spec})
    }
}

/// The Job that runs one Backup at the tenant's site: `fenice agent backup`
/// against the tenant's database (`<tenant>-db`) into its policy's
/// repositories (`<tenant>-repositories`), tagging the snapshot with
/// `tag` so that the operator finds it. Named by [`backup_job_name`].
pub fn backup_job(
    tenant: &InvoicingTenant,
    site: &Site,
    images: &Images,
    backup: &str,
    tag: &str,
    physical: bool,
) -> Result<Value, RenderError> {
    let who = Who::of(tenant)?;
    let (site_name, platform) = platform(site)?;
    let pods = Pods { platform };
    let mut args = vec!["agent", "backup", "--json", "--tenant", who.name, "--host", &site_name, "--tag", tag];
    if physical {
        args.push("--physical");
    }
    let mut metadata = who.metadata(backup_job_name(backup), "backup");
    metadata["labels"]["fenice.io/backup"] = json!(backup);
    // NB: no owner: the Job outlives a tenant deleted mid-backup only until its TTL.
    metadata.as_object_mut().map(|m| m.remove("ownerReferences"));
    let job = json!({
        "apiVersion": "batch/v1", "kind": "Job", "metadata": metadata,
        "spec": {
            "backoffLimit": 1,
            "activeDeadlineSeconds": 6 * 3600,
            "ttlSecondsAfterFinished": 24 * 3600,
            "template": pods.template(who.labels("backup"), 10001, json!({
                "restartPolicy": "Never",
                "containers": [{
                    "name": "backup",
                    "image": format!("{}fenice:{}", pods.registry(), images.fenice),
                    "args": args,
                    "env": [{"name": "FENICE_DB_URL", "valueFrom": {"secretKeyRef": {"name": database_secret_name(who.name), "key": "url"}}}],
                    "envFrom": [{"secretRef": {"name": repositories_secret_name(who.name)}}],
                    "resources": resources((250, 256)),
                    "securityContext": *HARDENED,
                    "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                }],
                "volumes": [{"name": "tmp", "emptyDir": {}}],
            })),
        },
    });
    Ok(without_nulls(job))
}

/// What a failover's Job does for one tenant at the target site.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FailoverJob {
    /// Promote the tenant's warm standby and verify it (`agent verify --promote`),
    /// writing its report to the termination message.
    Promote,
    /// Import what SdI already holds for the tenant (`agent reconcile-sdi`).
    ReconcileSdi,
}

impl FailoverJob {
    fn step(&self) -> &'static str {
        match self {
            FailoverJob::Promote => "promote",
            FailoverJob::ReconcileSdi => "reconcile",
        }
    }
}

/// Where a Job's agent writes its report, which Kubernetes keeps as the
/// container's termination message.
pub const TERMINATION_LOG: &str = "/dev/termination-log";

/// The container of a failover's Job, whose termination message is read.
pub const FAILOVER_CONTAINER: &str = "failover";

/// The Job of `job` for the tenant in the failover of `epoch`, at the
/// failover's target `site`: on the tenant's database Secret, repositories
/// Secret and documents volume, with the backup Jobs' network access.
pub fn failover_job(
    tenant: &InvoicingTenant,
    site: &Site,
    images: &Images,
    epoch: u64,
    job: &FailoverJob,
) -> Result<Value, RenderError> {
    let who = Who::of(tenant)?;
    let (site_name, platform) = platform(site)?;
    let pods = Pods { platform };
    let documents = DOCUMENTS;
    let args: Vec<String> = match job {
        FailoverJob::Promote => vec!["agent", "verify", "--promote", "--tenant", who.name, "--documents", documents]
            .into_iter()
            .map(str::to_owned)
            .chain(["--result-file".to_owned(), TERMINATION_LOG.to_owned()])
            .collect(),
        FailoverJob::ReconcileSdi => {
            let channel = tenant
                .spec
                .sdi
                .channels
                .iter()
                .find(|c| c.site == site_name)
                .ok_or_else(|| RenderError::NoChannel { tenant: who.name.to_owned(), site: site_name.clone() })?;
            ["agent", "reconcile-sdi", "--json", "--tenant", who.name, "--documents", documents]
                .into_iter()
                .map(str::to_owned)
                .chain(["--sdi-endpoint".to_owned(), channel.endpoint.clone()])
                .collect()
        }
    };
    let name = failover_job_name(who.name, epoch, job);
    let mut metadata = who.metadata(name, "backup");
    metadata["labels"]["fenice.io/failover-epoch"] = json!(epoch.to_string());
    metadata.as_object_mut().map(|m| m.remove("ownerReferences"));
    let env = json!([{"name": "FENICE_DB_URL", "valueFrom": {"secretKeyRef": {"name": database_secret_name(who.name), "key": "url"}}}]);
    let job = AgentJob {
        metadata,
        labels: who.labels("backup"),
        container: FAILOVER_CONTAINER,
        args: json!(args),
        env,
        env_from: json!([{"secretRef": {"name": repositories_secret_name(who.name)}}]),
        documents_claim: format!("{}-documents", who.name),
        deadline_seconds: 3600,
    };
    Ok(pods.agent_job(images, job))
}

/// A Job whose one container runs `fenice agent …` once, with the tenant's
/// documents volume and a scratch `/tmp`, leaving its report (or, when it
/// failed before writing one, its last log lines) as its termination message.
pub(super) struct AgentJob<'a> {
    pub(super) metadata: Value,
    /// The pod's labels.
    pub(super) labels: Value,
    pub(super) container: &'a str,
    pub(super) args: Value,
    /// `env` and `envFrom` of the container (`null` for none).
    pub(super) env: Value,
    pub(super) env_from: Value,
    pub(super) documents_claim: String,
    pub(super) deadline_seconds: u64,
}

impl Pods<'_> {
    pub(super) fn agent_job(&self, images: &Images, job: AgentJob<'_>) -> Value {
        let job = json!({
            "apiVersion": "batch/v1", "kind": "Job", "metadata": job.metadata,
            "spec": {
                // NB: no retry: whoever started the Job tries again with a new look at
                // why it failed (a restore's second run would meet a database the first wrote into).
                "backoffLimit": 0,
                "activeDeadlineSeconds": job.deadline_seconds,
                "ttlSecondsAfterFinished": 24 * 3600,
                "template": self.template(job.labels, 10001, json!({
                    "restartPolicy": "Never",
                    "containers": [{
                        "name": job.container,
                        "image": format!("{}fenice:{}", self.registry(), images.fenice),
                        "args": job.args,
                        "env": job.env,
                        "envFrom": job.env_from,
                        "terminationMessagePolicy": "FallbackToLogsOnError",
                        "resources": resources((250, 256)),
                        "securityContext": *HARDENED,
                        "volumeMounts": [
                            {"name": "documents", "mountPath": DOCUMENTS},
                            {"name": "tmp", "mountPath": "/tmp"},
                        ],
                    }],
                    "volumes": [
                        {"name": "documents", "persistentVolumeClaim": {"claimName": job.documents_claim}},
                        {"name": "tmp", "emptyDir": {}},
                    ],
                })),
            },
        });
        without_nulls(job)
    }
}

/// Where agents and the app keep a tenant's invoice documents, in their pods.
pub(super) const DOCUMENTS: &str = "/var/lib/fenice/documents";

/// The name of the tenant's Job of `job` in the failover of `epoch`.
pub fn failover_job_name(tenant: &str, epoch: u64, job: &FailoverJob) -> String {
    let suffix = format!("-{}-e{epoch}", job.step());
    let keep = 63usize.saturating_sub(suffix.len());
    format!("{}{suffix}", tenant.chars().take(keep).collect::<String>().trim_end_matches('-'))
}

/// The name of the Job that runs the Backup `backup` (at most 63 characters).
pub fn backup_job_name(backup: &str) -> String {
    let name = format!("backup-{backup}");
    name.chars().take(63).collect::<String>().trim_end_matches('-').to_owned()
}

/// The tenant the objects are for: their names, labels and owner.
pub(super) struct Who<'a> {
    pub(super) name: &'a str,
    pub(super) namespace: &'a str,
    uid: &'a str,
}

impl Who<'_> {
    pub(super) fn of(tenant: &InvoicingTenant) -> Result<Who<'_>, RenderError> {
        let name = tenant.metadata.name.as_deref().unwrap_or_default();
        let namespace =
            tenant.metadata.namespace.as_deref().ok_or_else(|| RenderError::NoNamespace { tenant: name.to_owned() })?;
        Ok(Who { name, namespace, uid: tenant.metadata.uid.as_deref().unwrap_or_default() })
    }

    pub(super) fn labels(&self, component: &str) -> Value {
        json!({
            "app.kubernetes.io/name": "fenice-tenant", "app.kubernetes.io/instance": self.name,
            "app.kubernetes.io/component": component, "app.kubernetes.io/managed-by": "fenice", TENANT_LABEL: self.name,
        })
    }

    /// What picks the tenant's pods of `component`.
    pub(super) fn selector(&self, component: &str) -> Value {
        json!({TENANT_LABEL: self.name, "app.kubernetes.io/component": component})
    }

    pub(super) fn metadata(&self, object: String, component: &str) -> Value {
        json!({
            "name": object, "namespace": self.namespace, "labels": self.labels(component),
            "ownerReferences": [{
                "apiVersion": "fenice.io/v1alpha1", "kind": "InvoicingTenant", "name": self.name, "uid": self.uid,
                "controller": true, "blockOwnerDeletion": true,
            }],
        })
    }
}

/// The name of the tenant's database Secret (and of its StatefulSet and Service).
pub fn database_secret_name(tenant: &str) -> String {
    format!("{tenant}-db")
}

/// The Secret `<tenant>-db`: the PostgreSQL superuser's `password` and the
/// app's `url` with it. Made once with a generated password and never
/// rendered again: the database keeps the password it was initialised with.
/// At a CloudNativePG site it is the Cluster's superuser Secret, of the type
/// that operator wants, and the URL names its read-write Service.
pub fn database_secret(tenant: &InvoicingTenant, site: &Site, password: &str) -> Result<Value, RenderError> {
    let who = Who::of(tenant)?;
    let db = database_secret_name(who.name);
    let metadata = who.metadata(db.clone(), "database");
    Ok(match site.cloud_native_pg() {
        true => json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": metadata, "type": "kubernetes.io/basic-auth",
            "stringData": {
                "username": "postgres", "password": password,
                "url": format!("postgres://postgres:{password}@{}:{DB_PORT}/postgres", cloud_native_pg::primary(who.name)),
            },
        }),
        false => json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": metadata, "type": "Opaque",
            "stringData": {"password": password, "url": format!("postgres://postgres:{password}@{db}:{DB_PORT}/postgres")},
        }),
    })
}

/// The name of the Secret the tenant's agents open its repositories with.
pub fn repositories_secret_name(tenant: &str) -> String {
    format!("{tenant}-repositories")
}

/// The Secret `<tenant>-repositories`: the agents' environment
/// ([`crate::site::agent_env`]), applied on every reconcile so that it follows
/// the policy's repositories and their Secrets.
pub fn repositories_secret(
    tenant: &InvoicingTenant,
    env: &std::collections::BTreeMap<String, zeroize::Zeroizing<String>>,
) -> Result<Value, RenderError> {
    use base64::Engine;
    let who = Who::of(tenant)?;
    let encode = |value: &str| base64::engine::general_purpose::STANDARD.encode(value);
    let data: serde_json::Map<String, Value> = env.iter().map(|(k, v)| (k.clone(), json!(encode(v)))).collect();
    Ok(json!({
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": who.metadata(repositories_secret_name(who.name), "database"), "data": data,
    }))
}

/// A NetworkPolicy for the pods `selector` picks: `ingress` as given; egress to
/// `egress` plus DNS and HTTPS (SdI and the object stores are outside the
/// cluster, by name: a NetworkPolicy cannot name them closer than the port).
pub(super) fn network_policy(metadata: Value, selector: Value, ingress: Value, egress: Value) -> Value {
    let mut egress = egress.as_array().cloned().unwrap_or_default();
    egress.push(json!({"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}));
    egress.push(json!({"ports": [{"port": 443, "protocol": "TCP"}]}));
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": metadata,
        "spec": {
            "podSelector": {"matchLabels": selector},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": ingress,
            "egress": egress,
        },
    })
}

/// Drops null fields and empty maps that a Site leaves unset (no node
/// selector, no annotations), so an apply does not claim fields it has no
/// value for. An empty `emptyDir` is a value and stays.
pub(super) fn without_nulls(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k, without_nulls(v)))
                .filter(|(k, v)| !v.is_null() && (k == "emptyDir" || v.as_object().is_none_or(|m| !m.is_empty())))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(without_nulls).collect()),
        other => other,
    }
}
