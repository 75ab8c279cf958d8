//! `fenice operator` against the in-memory Kubernetes API and the moto S3
//! server: it takes the leader Lease, probes each BackupRepository (a store
//! with Object Lock, one without, one whose Secret is missing), writes what
//! it found as status and Events, exports it as metrics, never shows a secret,
//! stops on SIGTERM, and a second replica takes over.

use std::process::Stdio;
use std::time::Duration;

use fenice::api::backup::Backup;
use fenice::api::policy::BackupPolicy;
use fenice::api::repository::BackupRepository;
use fenice::api::tenant::InvoicingTenant;
use fenice::apiserver::{self, ServerOptions};
use fenice::testkit::{S3Server, SdiSimServer};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::await_condition;
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::timeout;

const DEADLINE: Duration = Duration::from_secs(60);
const SECRET_VALUE: &str = "s3cr3t-never-shown-anywhere";
const NAMESPACE: &str = "fenice-system";
const OPERATOR_USER: &str = "fenice-operator";

#[path = "common/faketime.rs"]
mod faketime;
#[path = "common/rbac.rs"]
mod rbac;

/// The tests that run the operator, each ending with [`within_rbac`].
const TESTS_WITH_OPERATOR: usize = 15;
/// What the operator did in each test that ended so far, and how many ended.
static SEEN: std::sync::Mutex<(usize, std::collections::BTreeSet<fenice::apiserver::access::Access>)> =
    std::sync::Mutex::new((0, std::collections::BTreeSet::new()));

/// Every request the operator made in this test is allowed by manifests/rbac.yaml
/// and, in the tenants' namespace, manifests/site/tenant-namespace-rbac.yaml.
/// Once every test that runs the operator ended here, every grant of
/// rbac.yaml must have been used by one of them, or be listed with why not
/// (the tenant-namespace Role's are checked against the site driver's kinds
/// in tests/manifests_k8s.rs, and used in tests/tenant_kubernetes.rs).
fn within_rbac(api: &apiserver::Running) {
    let own = rbac::grants("manifests/rbac.yaml", None);
    let mut grants = own.clone();
    grants.extend(rbac::grants("manifests/site/tenant-namespace-rbac.yaml", Some("invoicing")));
    let accesses = api.accesses();
    let denied = rbac::denied(&accesses, OPERATOR_USER, &grants);
    assert!(denied.is_empty(), "the operator did what manifests/rbac.yaml does not grant:\n{}", denied.join("\n"));
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    seen.0 += 1;
    seen.1.extend(accesses.into_iter().filter(|a| a.user == OPERATOR_USER));
    if seen.0 == TESTS_WITH_OPERATOR {
        for (group, resource, verb, why) in UNUSED_ON_PURPOSE {
            let granted = own
                .iter()
                .any(|g| (g.group.as_str(), g.resource.as_str(), g.verb.as_str()) == (*group, *resource, *verb));
            assert!(granted, "{verb} {group}/{resource} is listed as unused on purpose ({why}) but not granted");
        }
        let used: Vec<_> = seen.1.iter().cloned().collect();
        let unused: Vec<String> = own
            .iter()
            .filter(|g| !used.iter().any(|a| rbac::covers(g, a)))
            .filter(|g| {
                !UNUSED_ON_PURPOSE.iter().any(|(group, resource, verb, _)| {
                    (*group, *resource, *verb) == (g.group.as_str(), g.resource.as_str(), g.verb.as_str())
                })
            })
            .map(|g| format!("{} {}/{} in {:?}", g.verb, g.group, g.resource, g.namespace))
            .collect();
        assert!(unused.is_empty(), "manifests/rbac.yaml grants what the operator never did:\n{}", unused.join("\n"));
    }
}

/// Grants no test here exercises, and why they are there.
const UNUSED_ON_PURPOSE: &[(&str, &str, &str, &str)] = &[
    ("fenice.io", "backups", "get", "a Backup found running is read again before it is taken as interrupted"),
    ("fenice.io", "restores", "get", "a Restore found restoring is read again before it is taken as interrupted"),
    ("fenice.io", "invoicingtenants/finalizers", "update", "blockOwnerDeletion at a Site that is this cluster"),
];

async fn client_from(path: &std::path::Path) -> Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(path).unwrap();
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default()).await.unwrap();
    Client::try_from(config).unwrap()
}

fn repository(name: &str, endpoint: &str, bucket: &str, secret: &str) -> BackupRepository {
    serde_json::from_value(json!({
        "apiVersion": "fenice.io/v1alpha1", "kind": "BackupRepository",
        "metadata": {"name": name},
        "spec": {
            "provider": "Aws",
            "storage": {"type": "S3", "s3": {
                "bucket": bucket, "endpoint": endpoint, "region": "us-east-1", "forcePathStyle": true,
                "credentialsSecretRef": {"name": secret},
            }},
            "immutability": {"enabled": true, "retention": "1d"},
            "passwordSecretRef": {"name": "repo-password", "key": "password"},
        },
    }))
    .unwrap()
}

/// The example repositories at two providers, buckets of `s3` reached at
/// `endpoint`, one with Object Lock; their Secrets.
async fn the_example_repositories(client: &Client, s3: &S3Server, endpoint: &str) -> Api<BackupRepository> {
    s3.store("tenants-locked", "").await.unwrap().create_bucket(true).await.unwrap();
    s3.store("tenants-plain", "").await.unwrap().create_bucket(false).await.unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    for (name, data) in [
        ("repo-s3", json!({"AWS_ACCESS_KEY_ID": "lab", "AWS_SECRET_ACCESS_KEY": SECRET_VALUE})),
        ("repo-password", json!({"password": SECRET_VALUE})),
    ] {
        let secret = serde_json::from_value(json!({"metadata": {"name": name}, "stringData": data})).unwrap();
        secrets.create(&PostParams::default(), &secret).await.unwrap();
    }
    let repos: Api<BackupRepository> = Api::all(client.clone());
    let mut plain = repository("ovh-milan-backups", endpoint, "tenants-plain", "repo-s3");
    plain.spec.provider = fenice::api::common::Provider::Ovhcloud;
    plain.spec.immutability = serde_json::from_value(json!({"enabled": false})).unwrap();
    for repo in [repository("azure-italynorth-backups", endpoint, "tenants-locked", "repo-s3"), plain] {
        repos.create(&PostParams::default(), &repo).await.unwrap();
    }
    repos
}

/// A cluster with the examples' namespaces, repositories (buckets of an S3
/// server reached through a [`fenice::testkit::FaultProxy`]) and Local Sites,
/// and a state directory for the operator's Local sites.
struct LocalCluster {
    api: apiserver::Running,
    dir: tempfile::TempDir,
    client: Client,
    state: tempfile::TempDir,
    s3: S3Server,
    proxy: fenice::testkit::FaultProxy,
    repos: Api<BackupRepository>,
}

async fn local_cluster() -> LocalCluster {
    let (api, dir, client) = cluster().await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for document in examples("namespace.yaml") {
        namespaces.create(&PostParams::default(), &serde_json::from_value(document).unwrap()).await.unwrap();
    }
    let s3 = S3Server::start().expect("moto");
    let proxy = fenice::testkit::FaultProxy::start(s3.addr()).await.unwrap();
    let repos = the_example_repositories(&client, &s3, &proxy.endpoint()).await;
    local_sites(&client).await;
    LocalCluster { api, dir, client, state: tempfile::tempdir().unwrap(), s3, proxy, repos }
}

/// The example Sites, the primary and standby driven by the operator as local processes.
async fn local_sites(client: &Client) {
    let sites: Api<fenice::api::site::Site> = Api::all(client.clone());
    for mut document in examples("sites.yaml") {
        if document["metadata"]["name"] != "aws-witness" {
            document["spec"]["cluster"] = json!({"driver": "Local"});
        }
        sites.create(&PostParams::default(), &serde_json::from_value(document).unwrap()).await.unwrap();
    }
}

/// The in-memory API server with the operator's namespace, its kubeconfig in
/// a temporary directory, and a client.
async fn cluster() -> (apiserver::Running, tempfile::TempDir, Client) {
    let api = apiserver::spawn(ServerOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("kubeconfig"), api.kubeconfig()).unwrap();
    let client = client_from(&dir.path().join("kubeconfig")).await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace: Namespace = serde_json::from_value(json!({"metadata": {"name": NAMESPACE}})).unwrap();
    namespaces.create(&PostParams::default(), &namespace).await.unwrap();
    (api, dir, client)
}

/// Starts `fenice operator` and returns it with its health and metrics URLs.
/// Its Local sites' files go under the kubeconfig's directory, the test's own.
async fn operator(kubeconfig: &std::path::Path, identity: &str) -> (Child, String, String) {
    let state = kubeconfig.parent().expect("the kubeconfig is in a directory").as_os_str();
    operator_with(kubeconfig, identity, &[std::ffi::OsStr::new("--state-dir"), state]).await
}

/// Runs a `fenice` command against the cluster of `kubeconfig`.
fn fenice_on(kubeconfig: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_fenice"))
        .args(args)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .output()
        .unwrap()
}

/// Stops the operator with SIGTERM and waits until it has exited cleanly.
async fn stopped(mut child: Child) {
    use tokio::io::AsyncReadExt;
    stop(&child);
    let mut stderr = child.stderr.take().unwrap();
    let log = tokio::spawn(async move {
        let mut log = Vec::new();
        let _ = stderr.read_to_end(&mut log).await;
        log
    });
    let exited = match timeout(DEADLINE, child.wait()).await {
        Ok(exited) => exited.unwrap(),
        Err(_) => {
            child.kill().await.unwrap();
            let log = log.await.unwrap();
            panic!(
                "the operator did not stop within {DEADLINE:?} of SIGTERM; its log:\n{}",
                String::from_utf8_lossy(&log)
            );
        }
    };
    assert!(exited.success(), "{exited:?}: {}", String::from_utf8_lossy(&log.await.unwrap()));
}

/// [`operator`] with more arguments.
async fn operator_with(
    kubeconfig: &std::path::Path,
    identity: &str,
    extra: &[&std::ffi::OsStr],
) -> (Child, String, String) {
    operator_in(kubeconfig, identity, extra, &[]).await
}

/// [`operator_with`] in more environment variables.
async fn operator_in(
    kubeconfig: &std::path::Path,
    identity: &str,
    extra: &[&std::ffi::OsStr],
    env: &[(&str, std::ffi::OsString)],
) -> (Child, String, String) {
    // NB: the operator's own user, so that the server tells its requests from the test's.
    let own = kubeconfig.with_file_name("operator-kubeconfig");
    let text =
        std::fs::read_to_string(kubeconfig).unwrap().replace("user: {}", &format!("user: {{token: {OPERATOR_USER}}}"));
    std::fs::write(&own, text).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_fenice"))
        .args(["operator", "--health-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0"])
        .args(extra)
        .args(["--operator-namespace", NAMESPACE, "--identity", identity])
        .args(["--lease-seconds", "3", "--probe-interval-seconds", "600", "--kubeconfig"])
        .arg(&own)
        .env("RUST_LOG", "info")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = timeout(DEADLINE, lines.next_line()).await.unwrap().unwrap().unwrap();
    let addr = first.strip_prefix("listening on ").unwrap_or_else(|| panic!("unexpected first line {first:?}"));
    let second = timeout(DEADLINE, lines.next_line()).await.unwrap().unwrap().unwrap();
    let metrics = second.strip_prefix("metrics on ").unwrap_or_else(|| panic!("unexpected second line {second:?}"));
    (child, format!("http://{addr}"), format!("http://{metrics}"))
}

async fn get(url: &str) -> (u16, String) {
    match reqwest::get(url).await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(_) => (0, String::new()),
    }
}

async fn wait_ready(url: &str, ready: bool) {
    let wanted = if ready { 200 } else { 503 };
    timeout(DEADLINE, async {
        while get(&format!("{url}/readyz")).await.0 != wanted {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("/readyz never answered {wanted}"));
}

fn stop(child: &Child) {
    let pid = child.id().unwrap() as libc::pid_t;
    // SAFETY: sends SIGTERM to a child this test started and still owns.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_probes_repositories_and_a_second_replica_takes_over() {
    let (api, dir, client) = cluster().await;
    let kubeconfig = dir.path().join("kubeconfig");

    let s3 = S3Server::start().expect("moto");
    s3.store("locked-backups", "").await.unwrap().create_bucket(true).await.unwrap();
    s3.store("plain-backups", "").await.unwrap().create_bucket(false).await.unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "repo-s3"},
        "stringData": {"AWS_ACCESS_KEY_ID": "lab", "AWS_SECRET_ACCESS_KEY": SECRET_VALUE},
    }))
    .unwrap();
    secrets.create(&PostParams::default(), &secret).await.unwrap();
    let repos: Api<BackupRepository> = Api::all(client.clone());
    for repo in [
        repository("locked", &s3.endpoint(), "locked-backups", "repo-s3"),
        repository("plain", &s3.endpoint(), "plain-backups", "repo-s3"),
        repository("no-secret", &s3.endpoint(), "locked-backups", "nope"),
    ] {
        repos.create(&PostParams::default(), &repo).await.unwrap();
    }

    let (first, url, metrics_url) = operator(&kubeconfig, "replica-1").await;
    wait_ready(&url, true).await;
    let probed =
        |r: Option<&BackupRepository>| r.and_then(|r| r.status.as_ref()).is_some_and(|s| s.reachable.is_some());
    for name in ["locked", "plain", "no-secret"] {
        timeout(DEADLINE, await_condition(repos.clone(), name, probed)).await.unwrap().unwrap();
    }
    let status = |name: &str| {
        let repos = repos.clone();
        let name = name.to_owned();
        async move { repos.get(&name).await.unwrap().status.unwrap() }
    };
    let locked = status("locked").await;
    assert_eq!((locked.reachable, locked.immutability_in_force), (Some(true), Some(true)), "{locked:?}");
    assert!(locked.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"), "{locked:?}");
    let plain = status("plain").await;
    assert_eq!((plain.reachable, plain.immutability_in_force), (Some(true), Some(false)), "{plain:?}");
    let off = plain.conditions.iter().find(|c| c.type_ == "ImmutabilityInForce").unwrap();
    assert_eq!(off.status, "False");
    assert!(!off.message.is_empty(), "{off:?}");
    let missing = status("no-secret").await;
    assert_eq!(missing.reachable, Some(false));
    let unreachable = missing.conditions.iter().find(|c| c.type_ == "Reachable").unwrap();
    assert!(unreachable.message.contains("Secret fenice-system/nope does not exist"), "{unreachable:?}");

    // Every problem is a Warning Event; no secret appears in any status or Event.
    let events: Api<Event> = Api::all(client.clone());
    let listed = timeout(DEADLINE, async {
        loop {
            let listed = events.list(&ListParams::default()).await.unwrap().items;
            if listed.iter().any(|e| e.reason.as_deref() == Some("ImmutabilityOff")) {
                break listed;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("a Warning Event for the repository without Object Lock");
    assert!(listed.iter().any(|e| e.reason.as_deref() == Some("Unreachable") && e.type_.as_deref() == Some("Warning")));
    let everything = serde_json::to_string(&(listed, repos.list(&ListParams::default()).await.unwrap().items)).unwrap();
    assert!(!everything.contains(SECRET_VALUE));

    let (code, metrics) = get(&format!("{metrics_url}/metrics")).await;
    assert_eq!(code, 200);
    assert!(metrics.contains("fenice_repository_immutability_in_force{repository=\"locked\"} 1"), "{metrics}");
    assert!(metrics.contains("fenice_repository_reachable{repository=\"no-secret\"} 0"), "{metrics}");
    assert!(metrics.contains("fenice_reconciles_total{controller=\"backuprepository\"}"), "{metrics}");
    assert_eq!(get(&format!("{url}/healthz")).await.0, 200);

    // A second replica waits; when the first stops, it takes the Lease over.
    let (second, second_url, _) = operator(&kubeconfig, "replica-2").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(get(&format!("{second_url}/readyz")).await.0, 503, "only one replica leads");
    let leases: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    let holder = |l: Lease| l.spec.and_then(|s| s.holder_identity);
    assert_eq!(holder(leases.get("fenice-operator-leader").await.unwrap()).as_deref(), Some("replica-1"));
    stop(&first);
    let exited = timeout(DEADLINE, first.wait_with_output()).await.unwrap().unwrap();
    assert!(exited.status.success(), "{:?}", exited.status);
    let log = String::from_utf8_lossy(&exited.stderr);
    assert!(log.contains("leading"), "{log}");
    assert!(!log.contains(SECRET_VALUE), "a secret in the log: {log}");
    wait_ready(&second_url, true).await;
    assert_eq!(holder(leases.get("fenice-operator-leader").await.unwrap()).as_deref(), Some("replica-2"));
    stopped(second).await;
    within_rbac(&api);
}

/// Who holds the Lease `name` in the operator's namespace.
async fn lease_holder(client: &Client, name: &str) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    leases.get(name).await.unwrap().spec.and_then(|s| s.holder_identity)
}

/// The names of every `K`, sorted.
async fn names_of<K>(api: &Api<K>) -> Vec<String>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut names: Vec<String> =
        api.list(&ListParams::default()).await.unwrap().items.iter().map(|k| k.name_any()).collect();
    names.sort();
    names
}

/// Replicas whose clocks are three hours apart, for real (libfaketime): one
/// whose clock is behind leads, and one whose clock is right waits as long as
/// it renews; once the leader dies the other takes over within seconds, in
/// either direction. Comparing the renewal time written in the Lease with its
/// own clock, a replica whose clock was ahead took over from a leader still
/// renewing (one whose clock was behind would have waited three hours).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_whose_clocks_disagree_take_the_lead_only_from_a_leader_that_stopped_renewing() {
    let (api, dir, client) = cluster().await;
    let kubeconfig = dir.path().join("kubeconfig");
    let clock = dir.path().join("three-hours-behind");
    std::fs::write(&clock, "-3h").unwrap();
    let behind = faketime::env(&clock);
    let leases: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    let holder = || lease_holder(&client, "fenice-operator-leader");

    let (mut first, first_url, _) = operator_in(&kubeconfig, "behind-1", &[], &behind).await;
    wait_ready(&first_url, true).await;
    let renewed = leases.get("fenice-operator-leader").await.unwrap().spec.unwrap().renew_time.unwrap().0;
    assert!(jiff::Timestamp::now().duration_since(renewed) > jiff::SignedDuration::from_mins(170), "{renewed}");
    let (mut second, second_url, _) = operator(&kubeconfig, "right-2").await;
    // More than two lease durations (3 s): the leader renews all along.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(get(&format!("{second_url}/readyz")).await.0, 503, "the leader still renews");
    assert_eq!(holder().await.as_deref(), Some("behind-1"));
    assert_eq!(get(&format!("{first_url}/readyz")).await.0, 200, "the leader still leads");

    first.kill().await.unwrap();
    timeout(Duration::from_secs(20), wait_ready(&second_url, true)).await.expect("the right clock takes over");
    assert_eq!(holder().await.as_deref(), Some("right-2"));

    let (third, third_url, _) = operator_in(&kubeconfig, "behind-3", &[], &behind).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(get(&format!("{third_url}/readyz")).await.0, 503, "only one replica leads");
    second.kill().await.unwrap();
    timeout(Duration::from_secs(20), wait_ready(&third_url, true)).await.expect("the clock behind takes over");
    assert_eq!(holder().await.as_deref(), Some("behind-3"));
    stopped(third).await;
    within_rbac(&api);
}

/// The operator's clock jumps a day forward while it runs, then back, for
/// real (libfaketime, the offset read from a file): at their next reconcile
/// the latest run the jump skipped happens once, a backup schedule's (one
/// Backup per tenant) and a drill schedule's (one Drill), named after that
/// run's time; back again, nothing runs twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_whose_clock_jumps_runs_a_skipped_schedule_once_and_nothing_twice() {
    let (api, dir, client) = cluster().await;
    let kubeconfig = dir.path().join("kubeconfig");
    let clock = dir.path().join("clock");
    std::fs::write(&clock, "+0").unwrap();
    let moved = faketime::env(&clock);
    let policies: Api<BackupPolicy> = Api::all(client.clone());
    let six_hourly = example("policy.yaml", "six-hourly", json!({"spec": {"schedule": "0 */6 * * *"}}));
    policies.create(&PostParams::default(), &serde_json::from_value(six_hourly).unwrap()).await.unwrap();
    let status = json!({"status": {"lastScheduleTime": jiff::Timestamp::now().to_string()}});
    policies.patch_status("six-hourly", &PatchParams::default(), &Patch::Merge(&status)).await.unwrap();
    let plans: Api<fenice::api::plan::FailoverPlan> = Api::all(client.clone());
    let mut plan = examples("plan.yaml").remove(0);
    plan["metadata"] = json!({"name": "six-hourly"});
    plan["spec"]["drills"]["schedule"] = json!("0 */6 * * *");
    plans.create(&PostParams::default(), &serde_json::from_value(plan).unwrap()).await.unwrap();
    let status = json!({"status": {"lastDrillTime": jiff::Timestamp::now().to_string()}});
    plans.patch_status("six-hourly", &PatchParams::default(), &Patch::Merge(&status)).await.unwrap();
    let drills: Api<fenice::api::drill::Drill> = Api::all(client.clone());
    let drill_names = || names_of(&drills);
    let tenants: Api<InvoicingTenant> = Api::namespaced(client.clone(), "default");
    for name in ["acme", "globex"] {
        let tenant = example("tenants.yaml", name, json!({"spec": {"backupPolicy": "six-hourly"}}));
        tenants.create(&PostParams::default(), &serde_json::from_value(tenant).unwrap()).await.unwrap();
    }
    let (operator, url, _) = operator_in(&kubeconfig, "replica-1", &[], &moved).await;
    wait_ready(&url, true).await;
    let backups: Api<Backup> = Api::namespaced(client.clone(), "default");
    let names = || names_of(&backups);
    // Whatever wakes the schedules up next: here a change of them, otherwise their requeue within the hour.
    let touch = |n: u32| {
        let (policies, plans) = (policies.clone(), plans.clone());
        async move {
            let touched = json!({"metadata": {"annotations": {"test/touched": n.to_string()}}});
            policies.patch("six-hourly", &PatchParams::default(), &Patch::Merge(&touched)).await.unwrap();
            plans.patch("six-hourly", &PatchParams::default(), &Patch::Merge(&touched)).await.unwrap();
        }
    };
    touch(1).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(names().await, Vec::<String>::new(), "nothing is due before the jump");
    assert_eq!(drill_names().await, Vec::<String>::new(), "no drill is due before the jump");

    std::fs::write(&clock, "+1d").unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let jumped = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24);
    touch(2).await;
    let created = wait_list(&backups, "the skipped run's Backups", |all| all.len() >= 2).await;
    wait_list(&drills, "the skipped run's Drill", |all| !all.is_empty()).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after_jump = names().await;
    assert_eq!(after_jump.len(), 2, "one run of the four the jump skipped: {after_jump:?}");
    let run = |name: &str| {
        let stamp = name.rsplitn(3, '-').take(2).collect::<Vec<_>>();
        let text = format!("{}-{}", stamp[1], stamp[0]);
        jiff::civil::DateTime::strptime("%Y%m%d-%H%M", &text).unwrap().to_zoned(jiff::tz::TimeZone::UTC).unwrap()
    };
    let (acme, globex) = (run(&after_jump[0]), run(&after_jump[1]));
    assert_eq!(acme, globex, "{after_jump:?}");
    let latest = acme.timestamp();
    assert!(latest <= jumped + jiff::SignedDuration::from_secs(5), "{latest} is after the jumped clock {jumped}");
    assert!(jumped.duration_since(latest) < jiff::SignedDuration::from_hours(6), "{latest}: not the latest run");
    assert!(created.iter().all(|b| b.spec.trigger == fenice::api::backup::BackupTrigger::Scheduled));
    let drilled = drill_names().await;
    assert_eq!(drilled, [format!("six-hourly-{}", latest.strftime("%Y%m%d-%H%M"))], "one drill, the latest run's");

    std::fs::write(&clock, "+0").unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    touch(3).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(names().await, after_jump, "the clock back, nothing runs again");
    assert_eq!(drill_names().await, drilled, "the clock back, no drill runs again");
    let status = policies.get("six-hourly").await.unwrap().status.unwrap();
    assert_eq!(status.last_schedule_time.as_ref().map(|t| t.0), Some(latest), "{status:?}");
    stopped(operator).await;
    within_rbac(&api);
}

/// The operators of two sites watching one cluster both lead, each its own
/// site's Lease; a second replica of one site waits for that site's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operators_of_two_sites_lead_side_by_side_one_replica_each() {
    let (api, dir, client) = cluster().await;
    let kubeconfig = dir.path().join("kubeconfig");
    let at = |site: &'static str| [std::ffi::OsStr::new("--site"), std::ffi::OsStr::new(site)];
    let (rome, rome_url, _) = operator_with(&kubeconfig, "rome-1", &at("westpole-rome")).await;
    let (azure, azure_url, _) = operator_with(&kubeconfig, "azure-1", &at("azure-italynorth")).await;
    wait_ready(&rome_url, true).await;
    wait_ready(&azure_url, true).await;
    let (rome_again, rome_again_url, _) = operator_with(&kubeconfig, "rome-2", &at("westpole-rome")).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(get(&format!("{rome_again_url}/readyz")).await.0, 503, "one replica per site leads");
    assert_eq!(lease_holder(&client, "fenice-operator-leader-westpole-rome").await.as_deref(), Some("rome-1"));
    assert_eq!(lease_holder(&client, "fenice-operator-leader-azure-italynorth").await.as_deref(), Some("azure-1"));
    for operator in [rome, azure, rome_again] {
        stopped(operator).await;
    }
    within_rbac(&api);
}

/// The operators of two Local sites watching one cluster: each runs its own
/// site's stacks and work only. The tenants at the primary run in its
/// operator's processes alone, and their scheduled Backups are run and
/// recorded by it; the standby's operator neither starts a second stack of
/// them nor takes a Backup running in the other process for interrupted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operators_of_two_local_sites_each_run_only_their_own_site_s_stacks_and_backups() {
    use fenice::api::backup::BackupPhase;
    use futures::StreamExt;

    let LocalCluster { api, dir, client, state, s3: _s3, proxy: _proxy, repos: _repos } = local_cluster().await;
    let kubeconfig = dir.path().join("kubeconfig");
    a_policy_due_now(&client, "standard", json!({})).await;
    let tenants = the_example_tenants(&client).await;
    // Every reason a Backup's Ready condition ever gives, as the watch sees it.
    let backups: Api<Backup> = Api::namespaced(client.clone(), "invoicing");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let watching = tokio::spawn({
        let (backups, seen) = (backups.clone(), seen.clone());
        async move {
            use kube::runtime::WatchStreamExt;
            let mut stream = kube::runtime::watcher(backups, Default::default()).applied_objects().boxed();
            while let Some(Ok(backup)) = stream.next().await {
                let reasons = backup.status.iter().flat_map(|s| s.conditions.iter());
                seen.lock().unwrap().extend(reasons.map(|c| format!("{}: {}", c.reason, c.message)));
            }
        }
    });

    let standby_state = tempfile::tempdir().unwrap();
    let (primary_state, standby_dir) = (state.path(), standby_state.path());
    let (primary, primary_url, _) =
        operator_with(&kubeconfig, "westpole-1", &at_site("westpole-rome", primary_state)).await;
    let (standby, standby_url, _) =
        operator_with(&kubeconfig, "azure-1", &at_site("azure-italynorth", standby_dir)).await;
    wait_ready(&primary_url, true).await;
    wait_ready(&standby_url, true).await;

    wait_list(&tenants, "three tenants Ready", |all| all.len() == 3 && all.iter().all(tenant_ready)).await;
    let all =
        wait_list(&backups, "three Backups finished", |all| all.len() == 3 && all.iter().all(backup_finished)).await;
    for backup in &all {
        let status = backup.status.as_ref().unwrap();
        assert_eq!(
            (status.phase, status.copies_summary.as_deref()),
            (BackupPhase::Succeeded, Some("2/2")),
            "{status:#?}"
        );
    }
    // The standby's operator had the time of a lease and more to take them.
    tokio::time::sleep(Duration::from_secs(4)).await;
    watching.abort();
    let seen = seen.lock().unwrap().clone();
    assert!(seen.iter().any(|r| r.starts_with("Succeeded")), "the watch saw the Backups end: {seen:?}");
    assert!(!seen.iter().any(|r| r.starts_with("Interrupted")), "no Backup taken for interrupted: {seen:?}");
    // Each tenant's PostgreSQL and app run under the primary's operator only.
    let sites_under = |dir: &std::path::Path| -> Vec<String> {
        let operators = std::fs::read_dir(dir).unwrap().filter_map(|e| e.ok()).map(|e| e.path());
        let sites = operators.filter(|p| p.is_dir()).flat_map(|p| std::fs::read_dir(p).into_iter().flatten());
        let mut names: Vec<String> =
            sites.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into()).collect();
        names.sort();
        names
    };
    assert!(sites_under(primary_state).contains(&"westpole-rome".to_owned()), "{:?}", sites_under(primary_state));
    assert!(!sites_under(standby_dir).contains(&"westpole-rome".to_owned()), "{:?}", sites_under(standby_dir));
    for operator in [primary, standby] {
        stopped(operator).await;
    }
    within_rbac(&api);
}

/// At a Local site, the tenants' apps follow their FailoverPlan's witness
/// lease as the site's lease agent sees it: once another site holds it (a
/// failover took it), each app is fenced in place, issuing nothing; once the
/// site holds a lease again, each is activated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apps_at_a_local_site_are_fenced_while_another_site_holds_the_lease_and_activated_when_it_holds_it() {
    use fenice::api::plan::FailoverPlan;
    use fenice::api::site::Site;
    use fenice::failover::lease::LeaseRecord;
    use fenice::failover::witness::Witness;

    let LocalCluster { mut api, dir, client, state, s3: _s3, proxy: _proxy, repos: _repos } = local_cluster().await;
    let kubeconfig = dir.path().join("kubeconfig");
    let witness_dir = dir.path().join("witness");
    let store = std::sync::Arc::new(fenice::store::fs::FsStore::open(&witness_dir).unwrap());
    let lease = Witness::new(store, "westpole-to-azure");
    let filesystem = json!({"type": "Filesystem", "s3": null, "filesystem": {"path": witness_dir.to_str().unwrap()}});
    let sites: Api<Site> = Api::all(client.clone());
    let patch = json!({"spec": {"witnessStore": filesystem}});
    sites.patch("aws-witness", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let plans: Api<FailoverPlan> = Api::all(client.clone());
    let manual =
        json!({"spec": {"mode": "Manual", "witness": {"leaseDuration": "3s", "renewInterval": "1s"}, "drills": null}});
    let plan = example("plan.yaml", "westpole-to-azure", manual);
    plans.create(&PostParams::default(), &serde_json::from_value(plan).unwrap()).await.unwrap();
    let tenants = the_example_tenants(&client).await;
    let (operator, url, _) = operator_with(&kubeconfig, "westpole-1", &at_site("westpole-rome", state.path())).await;
    wait_ready(&url, true).await;

    // The site's agent creates the lease; the tenants serve there, active.
    let reason = |t: &InvoicingTenant| {
        let ready = t.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready").cloned());
        ready.map(|c| (c.reason, c.message)).unwrap_or_default()
    };
    let running = wait_list(&tenants, "three tenants running", |all| {
        all.len() == 3 && all.iter().all(|t| reason(t).0 == "StackRunning")
    })
    .await;
    let apps: Vec<String> = running
        .iter()
        .map(|t| reason(t).1.rsplit_once("the app serves ").map(|(_, url)| url.to_owned()).unwrap())
        .collect();
    let health = |app: String| async move {
        let answer = reqwest::get(format!("{app}/healthz")).await.unwrap();
        answer.json::<fenice::app::http::Health>().await.unwrap()
    };
    // An invoice as the app takes it.
    let issue = |app: String| async move {
        let invoice = json!({
            "series": "2026", "issue_date": "2026-11-23", "description": "Manutenzione impianti",
            "customer": {"vat": "09876543210", "name": "Rossi & Figli S.n.c.", "recipient_code": "ABC1234"},
            "taxable_cents": 10000,
        });
        reqwest::Client::new().post(format!("{app}/v1/invoices")).json(&invoice).send().await.unwrap()
    };
    for app in &apps {
        assert!(health(app.clone()).await.active, "{app} is active");
    }
    let held = timeout(DEADLINE, async {
        loop {
            if let Some(held) = lease.read().await.unwrap() {
                break held;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the site's lease agent creates the lease");
    assert_eq!(held.record.holder, "westpole-rome");

    // Another site takes the lease: every app is fenced in place, and says so.
    let taken =
        LeaseRecord { holder: "azure-italynorth".into(), epoch: held.record.epoch + 1, renewals: 1, incarnation: 99 };
    lease.replace(&held.etag, &taken).await.unwrap();
    let fenced = wait_list(&tenants, "three tenants fenced", |all| all.iter().all(|t| reason(t).0 == "Fenced")).await;
    for tenant in &fenced {
        let (_, message) = reason(tenant);
        assert!(message.contains("is fenced (its app issues and sends nothing)"), "{message}");
        assert!(message.contains("westpole-rome's lease agent fenced it"), "{message}");
    }
    for app in &apps {
        let seen = health(app.clone()).await;
        assert!(!seen.active, "{app} is fenced: {seen:?}");
        let refused = issue(app.clone()).await;
        assert_eq!(refused.status(), 503, "{app} issues nothing while fenced: {:?}", refused.text().await);
    }
    let events: Api<Event> = Api::all(client.clone());
    let listed = events.list(&ListParams::default()).await.unwrap().items;
    let fences = listed.iter().filter(|e| e.reason.as_deref() == Some("StackFenced")).count();
    assert_eq!(fences, 3, "an Event per fenced app");

    // The lease goes; the site's agent creates it again, holds it, and the apps serve again.
    let current = lease.read().await.unwrap().unwrap();
    lease.store().delete(lease.key()).await.unwrap();
    assert_eq!(current.record.holder, "azure-italynorth");
    wait_list(&tenants, "three tenants running again", |all| all.iter().all(|t| reason(t).0 == "StackRunning")).await;
    for app in &apps {
        assert!(health(app.clone()).await.active, "{app} is active again");
        let issued = issue(app.clone()).await;
        assert_eq!(issued.status(), 201, "{app} issues again: {:?}", issued.text().await);
    }

    // The API server stops answering; another site takes the lease: the
    // site's agent fences the apps itself, within its deadline (an app that
    // stopped answering instead fails the test: it is fenced, not gone).
    api.halt().await.unwrap();
    let held = lease.read().await.unwrap().unwrap();
    let taken =
        LeaseRecord { holder: "azure-italynorth".into(), epoch: held.record.epoch + 1, renewals: 1, incarnation: 98 };
    lease.replace(&held.etag, &taken).await.unwrap();
    let taken_at = std::time::Instant::now();
    for app in &apps {
        timeout(Duration::from_secs(10), async {
            while health(app.clone()).await.active {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{app} is fenced by the site's agent while the API server is down"));
    }
    println!("fenced {:.1} s after the lease was taken, the API server down", taken_at.elapsed().as_secs_f64());
    // NB: its shutdown would wait for the API server: the test ends it, and its stacks with it.
    drop(operator);
    within_rbac(&api);
}

/// Two Local sites' operators with the FailoverPlan `westpole-to-azure`
/// between them (the example's, a 3 s lease, no drills, `plan` merged in) and
/// a filesystem witness; the example policy archiving WAL every second; the
/// three example tenants, the target's SdI channel at a simulator and the
/// source's reaching nothing (what the source issues stays pending); the
/// source's health probed at its operator. Once the tenants run and their base
/// backups are taken, each issues three invoices, archived.
struct FailoverScene {
    cluster: LocalCluster,
    lease: fenice::failover::witness::Witness,
    sdi: SdiSimServer,
    tenants: Api<InvoicingTenant>,
    primary: Child,
    standby: Child,
    _standby_state: tempfile::TempDir,
    /// Each tenant's app at the source.
    old_apps: Vec<(String, String)>,
    http: reqwest::Client,
}

/// The app's address, from the tenant's Ready condition.
fn app_of(tenant: &InvoicingTenant) -> Option<String> {
    let ready = tenant.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
    ready.and_then(|c| c.message.rsplit_once("the app serves ").map(|(_, url)| url.to_owned()))
}

/// Issues an invoice at `app`; what the app answered.
async fn issue(http: &reqwest::Client, app: &str) -> serde_json::Value {
    let invoice = json!({
        "series": "2026", "issue_date": "2026-11-23", "description": "Manutenzione impianti",
        "customer": {"vat": "09876543210", "name": "Rossi & Figli S.n.c.", "recipient_code": "ABC1234"},
        "taxable_cents": 10000,
    });
    let answer = http.post(format!("{app}/v1/invoices")).json(&invoice).send().await.unwrap();
    assert_eq!(answer.status(), 201, "{app}: {:?}", answer.text().await);
    answer.json().await.unwrap()
}

/// How many files the app at `app` has sent to SdI.
async fn transmitted(http: &reqwest::Client, app: &str) -> u64 {
    let stats: serde_json::Value = http.get(format!("{app}/v1/stats")).send().await.unwrap().json().await.unwrap();
    stats["sender"]["transmitted"].as_u64().unwrap_or(0)
}

impl FailoverScene {
    async fn start(plan: serde_json::Value) -> Self {
        use fenice::api::plan::FailoverPlan;
        use fenice::api::site::Site;

        let cluster = local_cluster().await;
        let (dir, client) = (cluster.dir.path(), &cluster.client);
        let kubeconfig = dir.join("kubeconfig");
        let witness_dir = dir.join("witness");
        let store = std::sync::Arc::new(fenice::store::fs::FsStore::open(&witness_dir).unwrap());
        let lease = fenice::failover::witness::Witness::new(store, "westpole-to-azure");
        let filesystem =
            json!({"type": "Filesystem", "s3": null, "filesystem": {"path": witness_dir.to_str().unwrap()}});
        let sites: Api<Site> = Api::all(client.clone());
        let patch = json!({"spec": {"witnessStore": filesystem}});
        sites.patch("aws-witness", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
        let plans: Api<FailoverPlan> = Api::all(client.clone());
        let mut changes = json!({"spec": {"witness": {"leaseDuration": "3s", "renewInterval": "1s"}, "drills": null}});
        json_patch::merge(&mut changes, &plan);
        let plan = example("plan.yaml", "westpole-to-azure", changes);
        plans.create(&PostParams::default(), &serde_json::from_value(plan).unwrap()).await.unwrap();
        let sdi = SdiSimServer::start(std::path::Path::new(env!("CARGO_BIN_EXE_fenice")), Duration::from_millis(200))
            .expect("the SdI simulator");
        let archiving = json!({"spec": {"walArchiving": {"enabled": true, "archiveTimeout": "1s"}}});
        a_policy_due_now(client, "standard", archiving).await;
        let tenants: Api<InvoicingTenant> = Api::namespaced(client.clone(), "invoicing");
        for mut document in examples("tenants.yaml") {
            for channel in document["spec"]["sdi"]["channels"].as_array_mut().unwrap() {
                let at_target = channel["site"] == "azure-italynorth";
                channel["endpoint"] = json!(if at_target { sdi.endpoint() } else { "http://127.0.0.1:9".into() });
            }
            tenants.create(&PostParams::default(), &serde_json::from_value(document).unwrap()).await.unwrap();
        }
        let (primary, primary_url, _) =
            operator_with(&kubeconfig, "westpole-1", &at_site("westpole-rome", cluster.state.path())).await;
        let health = json!({"endpoints": [{"name": "operator", "url": format!("{primary_url}/healthz")}],
            "interval": "500ms", "timeout": "500ms"});
        let patch = json!({"spec": {"health": health}});
        sites.patch("westpole-rome", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
        let standby_state = tempfile::tempdir().unwrap();
        let (standby, standby_url, _) =
            operator_with(&kubeconfig, "azure-1", &at_site("azure-italynorth", standby_state.path())).await;
        wait_ready(&primary_url, true).await;
        wait_ready(&standby_url, true).await;

        let running = wait_list(&tenants, "three tenants running at westpole-rome", |all| {
            all.len() == 3 && all.iter().all(|t| tenant_ready(t) && app_of(t).is_some())
        })
        .await;
        let old_apps: Vec<(String, String)> = running.iter().map(|t| (t.name_any(), app_of(t).unwrap())).collect();
        let backups: Api<Backup> = Api::namespaced(client.clone(), "invoicing");
        let all =
            wait_list(&backups, "three Backups finished", |all| all.len() == 3 && all.iter().all(backup_finished))
                .await;
        assert!(all.iter().all(|b| phase(b) == Some(fenice::api::backup::BackupPhase::Succeeded)), "{all:#?}");
        let unlock =
            fenice::repo::repository::Unlock::Passphrase(fenice::repo::keyfile::Passphrase::new(SECRET_VALUE.into()));
        let mut repos = Vec::new();
        for bucket in ["tenants-locked", "tenants-plain"] {
            let store: std::sync::Arc<dyn fenice::store::ObjectStore> =
                std::sync::Arc::new(cluster.s3.store(bucket, "").await.unwrap());
            repos.push(fenice::repo::repository::Repository::open(store, &unlock).await.unwrap());
        }
        let http = reqwest::Client::new();
        for (name, app) in &old_apps {
            for number in 1..=3 {
                let issued = issue(&http, app).await;
                assert_eq!(issued["number"], number, "{name}: {issued}");
            }
            // NB: the segment of the third commit is closed now and its archiving awaited, so that
            // the test does not hang on archive_timeout's timing.
            let pid = primary.id().unwrap();
            let db = primary_database(pid, &name.replace('-', "_")).await.expect("the tenant's database");
            let segment: String = db.query_one("SELECT pg_walfile_name(pg_switch_wal())", &[]).await.unwrap().get(0);
            timeout(DEADLINE, async {
                for repo in &repos {
                    while !fenice::stack::wal::is_archived(repo, name, &segment).await.unwrap() {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            })
            .await
            .unwrap_or_else(|_| panic!("{name}'s WAL segment {segment} is archived"));
            assert_eq!(transmitted(&http, app).await, 0, "{name}: the source's channel reaches nothing");
        }
        Self { cluster, lease, sdi, tenants, primary, standby, _standby_state: standby_state, old_apps, http }
    }

    /// The Failover `name`'s status once it ended (within 180 s of the call).
    async fn ended(&self, name: &str) -> fenice::api::failover::FailoverStatus {
        use fenice::api::failover::{Failover, FailoverPhase};
        let failovers: Api<Failover> = Api::all(self.cluster.client.clone());
        timeout(Duration::from_secs(180), async {
            loop {
                let status = failovers.get_opt(name).await.unwrap().and_then(|f| f.status);
                let phase = status.as_ref().map(|s| s.phase);
                if matches!(phase, Some(FailoverPhase::Succeeded | FailoverPhase::Failed | FailoverPhase::Aborted)) {
                    break status.unwrap();
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("Failover {name} ends within 180 s"))
    }

    /// Each tenant serves at the target under `epoch` with its three
    /// invoices (from the archive alone), issues number 4, and sends all four
    /// to SdI from there; its app at the source issues nothing.
    async fn served_at_target(&self, epoch: u64) {
        let http = &self.http;
        let moved = wait_list(&self.tenants, "three tenants running at azure-italynorth", |all| {
            all.iter().all(|t| {
                let status = t.status.as_ref();
                tenant_ready(t) && status.and_then(|s| s.active_site.as_deref()) == Some("azure-italynorth")
            })
        })
        .await;
        for tenant in &moved {
            let name = tenant.name_any();
            assert_eq!(tenant.status.as_ref().unwrap().epoch, Some(epoch), "{name}");
            let app = app_of(tenant).unwrap();
            let old = &self.old_apps.iter().find(|(n, _)| *n == name).unwrap().1;
            assert_ne!(&app, old, "{name} is served by a new app");
            let health: fenice::app::http::Health =
                http.get(format!("{app}/healthz")).send().await.unwrap().json().await.unwrap();
            assert!(health.active && health.epoch == epoch, "{name}: {health:?}");
            let third = http.get(format!("{app}/v1/invoices/2026/3")).send().await.unwrap();
            assert_eq!(third.status(), 200, "{name}: {:?}", third.text().await);
            let fourth = issue(http, &app).await;
            assert_eq!(fourth["number"], 4, "{name}: {fourth}");
            let channel: serde_json::Value =
                http.get(format!("{app}/v1/channel")).send().await.unwrap().json().await.unwrap();
            assert_eq!(channel["endpoint"], json!(self.sdi.endpoint()), "{name}");
            timeout(DEADLINE, async {
                while transmitted(http, &app).await < 4 {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("{name}'s app at azure-italynorth sends its four invoices to SdI"));
            // NB: a dead source's app does not answer at all.
            if let Ok(answer) = http.get(format!("{old}/healthz")).send().await {
                let left: fenice::app::http::Health = answer.json().await.unwrap();
                assert!(!left.active, "{name}'s app at westpole-rome stays fenced: {left:?}");
            }
        }
    }
}

/// A manual failover to a Local site, carried out by that site's operator:
/// the source's operator hands the lease over and fences its apps; each
/// tenant is recovered at the target from its base backup and the WAL its
/// database archived since (the source's SdI channel reached nothing, so its
/// invoices came back from the archive alone), and served under the new
/// epoch, sending through the target's channel; numbering goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_to_a_local_site_recovers_each_tenant_there_from_its_base_backup_and_archive_under_a_new_epoch() {
    use fenice::api::failover::{Failover, FailoverPhase};

    let scene = FailoverScene::start(json!({"spec": {"mode": "Manual"}})).await;
    let before = scene.lease.read().await.unwrap().expect("westpole-rome's agent holds the lease").record;
    assert_eq!(before.holder, "westpole-rome");
    let failovers: Api<Failover> = Api::all(scene.cluster.client.clone());
    let failover = example("failover.yaml", "to-azure", json!({}));
    failovers.create(&PostParams::default(), &serde_json::from_value(failover).unwrap()).await.unwrap();
    let status = scene.ended("to-azure").await;
    assert_eq!(status.phase, FailoverPhase::Succeeded, "{status:#?}");
    let after = scene.lease.read().await.unwrap().unwrap().record;
    assert_eq!((after.holder.as_str(), after.epoch), ("azure-italynorth", before.epoch + 1));
    assert_eq!((status.tenants_done, status.tenants_failed, status.epoch), (3, 0, Some(after.epoch)), "{status:#?}");
    assert!(status.rpo.is_some(), "the worst RPO is measured: {status:#?}");
    scene.served_at_target(after.epoch).await;
    let FailoverScene { cluster: LocalCluster { api, .. }, primary, standby, .. } = scene;
    for operator in [primary, standby] {
        stopped(operator).await;
    }
    within_rbac(&api);
}

/// The whole story through the operators, as the lab tells it: the source
/// site dies (its operator gets SIGKILL, and its stacks with it); the
/// target's operator sees its probes fail and the lease go unrenewed, takes
/// the lease once it expired, declares the Failover and recovers every
/// tenant from its base backup and archive; the source's operator started
/// again stays fenced and starts no stack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_local_site_is_detected_and_its_tenants_recovered_at_the_other_automatically() {
    use fenice::api::failover::FailoverPhase;
    use fenice::api::plan::{FailoverPlan, Standing};

    let detection = json!({"failureThreshold": 2, "window": "1s", "minVantagePoints": 2});
    let mut scene = FailoverScene::start(json!({"spec": {"mode": "Automatic", "detection": detection}})).await;
    let before = scene.lease.read().await.unwrap().expect("westpole-rome's agent holds the lease").record;
    assert_eq!(before.holder, "westpole-rome");
    let killed_at = std::time::Instant::now();
    scene.primary.kill().await.unwrap();
    let name = format!("westpole-to-azure-e{}", before.epoch + 1);
    let status = scene.ended(&name).await;
    assert_eq!(status.phase, FailoverPhase::Succeeded, "{status:#?}");
    assert_eq!((status.tenants_done, status.tenants_failed), (3, 0), "{status:#?}");
    println!(
        "from the kill to the Failover's success: {:.1} s; worst RTO {:?}, worst RPO {:?}",
        killed_at.elapsed().as_secs_f64(),
        status.rto.as_ref().map(|d| d.as_std()),
        status.rpo.as_ref().map(|d| d.as_std())
    );
    let after = scene.lease.read().await.unwrap().unwrap().record;
    assert_eq!((after.holder.as_str(), after.epoch), ("azure-italynorth", before.epoch + 1));
    scene.served_at_target(after.epoch).await;

    // The old primary comes back: its agent reads a lease of another site in a higher epoch.
    let kubeconfig = scene.cluster.dir.path().join("kubeconfig");
    let again_state = tempfile::tempdir().unwrap();
    let (again, again_url, _) =
        operator_with(&kubeconfig, "westpole-2", &at_site("westpole-rome", again_state.path())).await;
    wait_ready(&again_url, true).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let plans: Api<FailoverPlan> = Api::all(scene.cluster.client.clone());
    let plan = plans.get("westpole-to-azure").await.unwrap().status.unwrap();
    let westpole = plan.sites.iter().find(|e| e.site == "westpole-rome").unwrap();
    assert_eq!(westpole.standing, Standing::Fenced, "{plan:?}");
    let now = scene.lease.read().await.unwrap().unwrap().record;
    assert_eq!((now.holder, now.epoch), (after.holder, after.epoch), "the lease stays where it is");
    let stacks = std::fs::read_dir(again_state.path()).unwrap().filter_map(|e| e.ok()).map(|e| e.path());
    let started: Vec<_> = stacks.filter(|operator| operator.join("westpole-rome/tenants").exists()).collect();
    assert!(started.is_empty(), "the old primary's operator starts no stack: {started:?}");
    let FailoverScene { cluster: LocalCluster { api, .. }, standby, .. } = scene;
    for operator in [again, standby] {
        stopped(operator).await;
    }
    within_rbac(&api);
}

/// A Local site's operator dies (SIGKILL), and its stacks with it; started
/// again, it brings each tenant's database back from its base backup and
/// archive, reconciles it with SdI, and only then starts its app: numbering
/// goes on, and what was pending is sent once. Before, it started them empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_site_s_tenants_lost_with_its_operator_are_restored_in_place_when_it_starts_again() {
    let mut scene = FailoverScene::start(json!({"spec": {"mode": "Manual"}})).await;
    // The source's channel reaches SdI from now on.
    for tenant in scene.tenants.list(&ListParams::default()).await.unwrap() {
        let mut channels = serde_json::to_value(&tenant.spec.sdi.channels).unwrap();
        for channel in channels.as_array_mut().unwrap() {
            channel["endpoint"] = json!(scene.sdi.endpoint());
        }
        let patch = json!({"spec": {"sdi": {"channels": channels}}});
        scene.tenants.patch(&tenant.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    }
    scene.primary.kill().await.unwrap();
    let kubeconfig = scene.cluster.dir.path().join("kubeconfig");
    let again_state = tempfile::tempdir().unwrap();
    let (again, again_url, _) =
        operator_with(&kubeconfig, "westpole-2", &at_site("westpole-rome", again_state.path())).await;
    wait_ready(&again_url, true).await;
    let old: Vec<String> = scene.old_apps.iter().map(|(_, app)| app.clone()).collect();
    let back = wait_list(&scene.tenants, "three tenants running again at westpole-rome", |all| {
        all.iter().all(|t| tenant_ready(t) && app_of(t).is_some_and(|app| !old.contains(&app)))
    })
    .await;
    let http = &scene.http;
    for tenant in &back {
        let (name, app) = (tenant.name_any(), app_of(tenant).unwrap());
        let third = http.get(format!("{app}/v1/invoices/2026/3")).send().await.unwrap();
        assert_eq!(third.status(), 200, "{name}: {:?}", third.text().await);
        let fourth = issue(http, &app).await;
        assert_eq!(fourth["number"], 4, "{name}: {fourth}");
        timeout(DEADLINE, async {
            while transmitted(http, &app).await < 4 {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{name} sends its four invoices to SdI"));
    }
    let events: Api<Event> = Api::all(scene.cluster.client.clone());
    let listed = events.list(&ListParams::default()).await.unwrap().items;
    let recovered = listed.iter().filter(|e| e.reason.as_deref() == Some("StackRecovered")).count();
    assert_eq!(recovered, 3, "an Event per tenant brought back");
    let FailoverScene { cluster: LocalCluster { api, .. }, standby, .. } = scene;
    for operator in [again, standby] {
        stopped(operator).await;
    }
    within_rbac(&api);
}

/// A daily schedule (in the policy's time zone, Europe/Rome) whose time was
/// ten minutes ago: with the last run set twelve minutes back, exactly one
/// run is due now and the next one is a day away, however slow the test.
fn due_once() -> String {
    let due = (jiff::Timestamp::now() - jiff::SignedDuration::from_mins(10))
        .to_zoned(jiff::tz::TimeZone::get("Europe/Rome").unwrap());
    format!("{} {} * * *", due.minute(), due.hour())
}

/// The example policy `name` with `changes`, one run due now: its daily time
/// ten minutes ago ([`due_once`]), its last run twelve.
async fn a_policy_due_now(client: &Client, name: &str, changes: serde_json::Value) {
    let policies: Api<BackupPolicy> = Api::all(client.clone());
    let mut policy = example("policy.yaml", name, json!({"spec": {"schedule": due_once()}}));
    json_patch::merge(&mut policy, &changes);
    policies.create(&PostParams::default(), &serde_json::from_value(policy).unwrap()).await.unwrap();
    let last = jiff::Timestamp::now() - jiff::SignedDuration::from_mins(12);
    let status = json!({"status": {"lastScheduleTime": last.to_string()}});
    policies.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await.unwrap();
}

/// Creates the three example tenants (namespace `invoicing`, at westpole-rome).
async fn the_example_tenants(client: &Client) -> Api<InvoicingTenant> {
    let tenants: Api<InvoicingTenant> = Api::namespaced(client.clone(), "invoicing");
    for document in examples("tenants.yaml") {
        tenants.create(&PostParams::default(), &serde_json::from_value(document).unwrap()).await.unwrap();
    }
    tenants
}

/// The operator's arguments for running at `site` with its Local sites' files under `dir`.
fn at_site<'a>(site: &'a str, dir: &'a std::path::Path) -> [&'a std::ffi::OsStr; 4] {
    let arg = std::ffi::OsStr::new;
    [arg("--site"), arg(site), arg("--state-dir"), dir.as_os_str()]
}

/// Whether the tenant's Ready condition is True.
fn tenant_ready(tenant: &InvoicingTenant) -> bool {
    tenant.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Whether the Backup is neither Pending nor Running.
fn backup_finished(backup: &Backup) -> bool {
    use fenice::api::backup::BackupPhase;
    phase(backup).is_some_and(|p| !matches!(p, BackupPhase::Pending | BackupPhase::Running))
}

/// Every document of an example manifest.
fn examples(file: &str) -> Vec<serde_json::Value> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/examples").join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    serde_saphyr::from_multiple::<serde_json::Value>(&text).unwrap().into_iter().filter(|d| !d.is_null()).collect()
}

/// The first document of an example manifest, named `name`, with `changes` merged in.
fn example(file: &str, name: &str, changes: serde_json::Value) -> serde_json::Value {
    let mut document = examples(file).remove(0);
    document["metadata"] = json!({"name": name});
    json_patch::merge(&mut document, &changes);
    document
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_creates_its_drills_at_their_scheduled_times() {
    use fenice::api::drill::Drill;
    use fenice::api::plan::FailoverPlan;

    let (api, dir, client) = cluster().await;
    let kubeconfig = dir.path().join("kubeconfig");
    let plans: Api<FailoverPlan> = Api::all(client.clone());
    let weekly = examples("plan.yaml").remove(0);
    let schedule = |name: &str, schedule: &str| {
        let mut plan = weekly.clone();
        plan["metadata"] = json!({"name": name});
        plan["spec"]["drills"]["schedule"] = json!(schedule);
        serde_json::from_value::<FailoverPlan>(plan).unwrap()
    };
    plans.create(&PostParams::default(), &schedule("daily", &due_once())).await.unwrap();
    plans.create(&PostParams::default(), &schedule("broken", "61 * * * *")).await.unwrap();
    plans.create(&PostParams::default(), &serde_json::from_value(weekly.clone()).unwrap()).await.unwrap();
    // As if the last drill were 12 minutes ago: the one of 10 minutes ago is due now.
    let last = jiff::Timestamp::now() - jiff::SignedDuration::from_mins(12);
    let status = json!({"status": {"lastDrillTime": last.to_string()}});
    plans.patch_status("daily", &PatchParams::default(), &Patch::Merge(&status)).await.unwrap();

    let (operator, url, _) = operator(&kubeconfig, "replica-1").await;
    wait_ready(&url, true).await;
    let drills: Api<Drill> = Api::all(client.clone());
    let created = wait_list(&drills, "the scheduled Drill", |all| !all.is_empty()).await;
    assert_eq!(created.len(), 1, "only the daily plan is due: {created:?}");
    let drill = &created[0];
    // NB: the Drill is created before the plan's status says so.
    let recorded = |p: &[FailoverPlan]| {
        p.iter().any(|p| {
            p.name_any() == "daily"
                && p.status.as_ref().and_then(|s| s.last_drill_time.as_ref()).is_some_and(|t| t.0 > last)
        })
    };
    wait_list(&plans, "the daily plan's new lastDrillTime", recorded).await;
    let daily = plans.get("daily").await.unwrap().status.unwrap();
    let run = daily.last_drill_time.expect("the scheduled time is recorded").0;
    assert!(run > last, "{run} after {last}");
    assert_eq!(drill.name_any(), format!("daily-{}", run.strftime("%Y%m%d-%H%M")));
    assert_eq!((drill.spec.plan.as_str(), drill.spec.sample.percent), ("daily", Some(5)));
    assert_eq!(drill.spec.sdi_test_endpoint, weekly["spec"]["drills"]["sdiTestEndpoint"]);
    let owner = &drill.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("FailoverPlan", "daily"));
    let next = daily.next_drill_time.expect("the next time is known").0;
    assert_eq!(next.duration_since(run).as_hours(), 24, "{run} → {next}");
    // The weekly plan waits for Sunday 03:00 in Rome; the broken one says why it waits for ever.
    let has_next =
        |p: Option<&FailoverPlan>| p.and_then(|p| p.status.as_ref()).is_some_and(|s| s.next_drill_time.is_some());
    timeout(DEADLINE, await_condition(plans.clone(), "westpole-to-azure", has_next)).await.unwrap().unwrap();
    let next = plans.get("westpole-to-azure").await.unwrap().status.unwrap().next_drill_time.unwrap().0;
    let rome = next.to_zoned(jiff::tz::TimeZone::get("Europe/Rome").unwrap());
    assert_eq!((rome.weekday(), rome.hour(), rome.minute()), (jiff::civil::Weekday::Sunday, 3, 0), "{rome}");
    let events: Api<Event> = Api::all(client.clone());
    let told = wait_list(&events, "the Event about the broken schedule", |all| {
        all.iter().any(|e| e.reason.as_deref() == Some("InvalidDrillSchedule"))
    })
    .await;
    let event = told.iter().find(|e| e.reason.as_deref() == Some("InvalidDrillSchedule")).unwrap();
    assert_eq!(event.regarding.as_ref().and_then(|r| r.name.as_deref()), Some("broken"));
    assert!(event.note.as_deref().is_some_and(|n| n.contains("spec.drills")), "{event:?}");
    stopped(operator).await;
    within_rbac(&api);
}

/// The value of the metric line starting with `series` (name and labels).
fn metric_value(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Polls /metrics until `holds` is true of it; the text then.
async fn metrics_when(url: &str, what: &str, holds: impl Fn(&str) -> bool) -> String {
    let mut last = String::new();
    let found = timeout(DEADLINE, async {
        loop {
            last = get(&format!("{url}/metrics")).await.1;
            if holds(&last) {
                return last.clone();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("/metrics never showed {what}; last:\n{last}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_reads_each_plans_witness_lease_and_exports_its_age_epoch_and_reachability() {
    use fenice::api::plan::FailoverPlan;
    use fenice::api::site::Site;
    use fenice::failover::lease::LeaseRecord;
    use fenice::failover::witness::Witness;

    let (api, dir, client) = cluster().await;
    let kubeconfig = dir.path().join("kubeconfig");
    let witness_dir = dir.path().join("witness");
    let store = std::sync::Arc::new(fenice::store::fs::FsStore::open(&witness_dir).unwrap());
    let lease = Witness::new(store, "westpole-to-azure");
    let record = |renewals| LeaseRecord { holder: "westpole-rome".into(), epoch: 4, renewals, incarnation: 7 };
    let etag = lease.create(&record(1)).await.unwrap();

    let mut witness = examples("sites.yaml").into_iter().find(|s| s["metadata"]["name"] == "aws-witness").unwrap();
    let store = json!({"type": "Filesystem", "s3": null, "filesystem": {"path": witness_dir.to_str().unwrap()}});
    json_patch::merge(&mut witness, &json!({"spec": {"witnessStore": store}}));
    Api::<Site>::all(client.clone())
        .create(&PostParams::default(), &serde_json::from_value(witness).unwrap())
        .await
        .unwrap();
    let plans: Api<FailoverPlan> = Api::all(client.clone());
    let timing = json!({"spec": {"witness": {"leaseDuration": "3s", "renewInterval": "1s"}, "drills": null}});
    let plan = example("plan.yaml", "westpole-to-azure", timing.clone());
    plans.create(&PostParams::default(), &serde_json::from_value(plan).unwrap()).await.unwrap();
    let mut elsewhere = timing;
    elsewhere["spec"]["witness"]["site"] = json!("gone-witness");
    let plan = example("plan.yaml", "nowhere", elsewhere);
    plans.create(&PostParams::default(), &serde_json::from_value(plan).unwrap()).await.unwrap();

    let (operator, url, metrics_url) = operator(&kubeconfig, "replica-1").await;
    wait_ready(&url, true).await;
    let ours = r#"{plan="westpole-to-azure",site="aws-witness"}"#;
    let age = |m: &str| metric_value(m, &format!("fenice_witness_lease_age_seconds{ours}"));
    let seen = metrics_when(&metrics_url, "the lease and the unreachable witness", |m| {
        metric_value(m, &format!("fenice_witness_lease_epoch{ours}")) == Some(4.0)
            && metric_value(m, r#"fenice_witness_reachable{plan="nowhere",site="gone-witness"}"#) == Some(0.0)
    })
    .await;
    assert_eq!(metric_value(&seen, &format!("fenice_witness_reachable{ours}")), Some(1.0), "{seen}");
    assert_eq!(metric_value(&seen, &format!("fenice_witness_lease_duration_seconds{ours}")), Some(3.0), "{seen}");
    // Nobody renews it: its age passes the lease's duration, as the alert compares.
    metrics_when(&metrics_url, "an age past the lease's duration", |m| age(m).is_some_and(|a| a > 3.0)).await;
    // A renewal (a new version) starts the age again.
    lease.replace(&etag, &record(2)).await.unwrap();
    metrics_when(&metrics_url, "the age of the renewed lease", |m| age(m).is_some_and(|a| a < 3.0)).await;
    // A plan that goes takes its figures with it.
    plans.delete("nowhere", &Default::default()).await.unwrap();
    metrics_when(&metrics_url, "no figures of the deleted plan", |m| !m.contains(r#"plan="nowhere""#)).await;
    stopped(operator).await;
    within_rbac(&api);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_creates_one_backup_per_tenant_at_each_scheduled_time() {
    let (api, dir, client) = cluster().await;
    let kubeconfig = dir.path().join("kubeconfig");

    let policies: Api<BackupPolicy> = Api::all(client.clone());
    let every_five = example("policy.yaml", "nightly", json!({"spec": {"schedule": due_once()}}));
    policies.create(&PostParams::default(), &serde_json::from_value(every_five).unwrap()).await.unwrap();
    let broken = example("policy.yaml", "broken", json!({"spec": {"schedule": "61 * * * *"}}));
    policies.create(&PostParams::default(), &serde_json::from_value(broken).unwrap()).await.unwrap();
    // As if the last run were 12 minutes ago: the run of 10 minutes ago is due now.
    let last = jiff::Timestamp::now() - jiff::SignedDuration::from_mins(12);
    let status = json!({"status": {"lastScheduleTime": last.to_string()}});
    policies.patch_status("nightly", &PatchParams::default(), &Patch::Merge(&status)).await.unwrap();
    let tenants: Api<InvoicingTenant> = Api::namespaced(client.clone(), "default");
    for (name, policy) in [("acme", "nightly"), ("globex", "nightly"), ("initech", "other")] {
        let tenant = example("tenants.yaml", name, json!({"spec": {"backupPolicy": policy}}));
        tenants.create(&PostParams::default(), &serde_json::from_value(tenant).unwrap()).await.unwrap();
    }

    let (operator, url, _) = operator(&kubeconfig, "replica-1").await;
    wait_ready(&url, true).await;
    let backups: Api<Backup> = Api::namespaced(client.clone(), "default");
    let created = timeout(DEADLINE, async {
        loop {
            let listed = backups.list(&ListParams::default()).await.unwrap().items;
            if listed.len() >= 2 {
                break listed;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("Backups for the due run");
    let mut names: Vec<String> = created.iter().map(|b| b.metadata.name.clone().unwrap()).collect();
    names.sort();
    assert_eq!(names.len(), 2, "initech is not under this policy: {names:?}");
    assert!(names[0].starts_with("acme-") && names[1].starts_with("globex-"), "{names:?}");
    for backup in &created {
        assert_eq!(backup.spec.repositories.len(), 2);
        let owner = &backup.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("BackupPolicy", "nightly"));
    }
    let scheduled = |p: Option<&BackupPolicy>| {
        p.and_then(|p| p.status.as_ref()).is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Scheduled"))
    };
    for name in ["nightly", "broken"] {
        timeout(DEADLINE, await_condition(policies.clone(), name, scheduled)).await.unwrap().unwrap();
    }
    // The Backups wait for the tenants' Site, and say so rather than nothing.
    let told = |b: Option<&Backup>| {
        b.and_then(|b| b.status.as_ref()).is_some_and(|s| s.conditions.iter().any(|c| c.reason == "SiteNotFound"))
    };
    for name in &names {
        timeout(DEADLINE, await_condition(backups.clone(), name, told)).await.unwrap().unwrap();
    }
    let nightly = policies.get("nightly").await.unwrap().status.unwrap();
    // No Site nor repository exists here: both tenants violate the rules, and say why.
    assert_eq!((nightly.compliant_tenants, nightly.violating_tenants), (Some(0), Some(2)), "{nightly:?}");
    let compliant = nightly.conditions.iter().find(|c| c.type_ == "Compliant").unwrap();
    assert_eq!((compliant.status.as_str(), compliant.reason.as_str()), ("False", "RulesViolated"));
    assert!(compliant.message.contains("names primary site westpole-rome, which does not exist"), "{compliant:?}");
    assert!(nightly.conditions.iter().any(|c| c.type_ == "Scheduled" && c.status == "True"), "{nightly:?}");
    assert!(nightly.last_schedule_time.unwrap().0 > last);
    assert!(nightly.next_schedule_time.is_some());
    let broken = policies.get("broken").await.unwrap().status.unwrap();
    let condition = broken.conditions.iter().find(|c| c.type_ == "Scheduled").unwrap();
    assert_eq!((condition.status.as_str(), condition.reason.as_str()), ("False", "InvalidSchedule"));
    assert!(condition.message.contains("minute \"61\""), "{condition:?}");
    stopped(operator).await;
    within_rbac(&api);
}

/// Waits until `check` holds for the listed objects of `api`, or fails naming `what`.
async fn wait_list<K>(api: &Api<K>, what: &str, check: impl Fn(&[K]) -> bool) -> Vec<K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let deadline = Duration::from_secs(180);
    let mut last = Vec::new();
    let waited = timeout(deadline, async {
        loop {
            last = api.list(&ListParams::default()).await.unwrap().items;
            if check(&last) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "{what} within {deadline:?}; last seen: {last:#?}");
    last
}

fn phase(backup: &Backup) -> Option<fenice::api::backup::BackupPhase> {
    backup.status.as_ref().map(|s| s.phase)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_tenants_run_at_a_local_site_and_their_scheduled_backups_are_run_and_recorded() {
    use fenice::api::backup::BackupPhase;

    // NB: the repositories go through a proxy that can throttle them (a drill below).
    let LocalCluster { api, dir, client, state, s3, proxy, repos } = local_cluster().await;
    let kubeconfig = dir.path().join("kubeconfig");
    // The example policy, its last run 12 minutes ago and its daily time 10 minutes ago: one run is due.
    let retention = json!({"keepLast": 1, "keepDaily": null, "keepWeekly": null, "keepMonthly": null});
    a_policy_due_now(&client, "standard", json!({"spec": {"retention": retention}})).await;
    let policies: Api<BackupPolicy> = Api::all(client.clone());
    let tenants = the_example_tenants(&client).await;
    let backups: Api<Backup> = Api::namespaced(client.clone(), "invoicing");
    let ghost: Backup = serde_json::from_value(json!({
        "apiVersion": "fenice.io/v1alpha1", "kind": "Backup",
        "metadata": {"name": "ghost-manual"}, "spec": {"tenant": "ghost"},
    }))
    .unwrap();
    backups.create(&PostParams::default(), &ghost).await.unwrap();

    let apps_dirs = || -> std::collections::BTreeSet<std::path::PathBuf> {
        std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| {
                ["fenice-app-", "fenice-postgres-"].iter().any(|p| e.file_name().to_string_lossy().starts_with(p))
            })
            .map(|e| e.path())
            .collect()
    };
    let apps_before = apps_dirs();
    let state_arg = [std::ffi::OsStr::new("--state-dir"), state.path().as_os_str()];
    let (operator, url, metrics_url) = operator_with(&kubeconfig, "replica-1", &state_arg).await;
    wait_ready(&url, true).await;

    // Each tenant's stack starts at the Local site, under a finalizer.
    let running =
        wait_list(&tenants, "three tenants Ready", |all| all.len() == 3 && all.iter().all(tenant_ready)).await;
    for tenant in &running {
        let status = tenant.status.as_ref().unwrap();
        assert_eq!((status.active_site.as_deref(), status.epoch), (Some("westpole-rome"), Some(1)), "{status:?}");
        assert!(tenant.finalizers().contains(&"fenice.io/local-stack".to_string()));
    }

    // The schedule's Backups run into both repositories and record what they wrote.
    let all =
        wait_list(&backups, "four Backups finished", |all| all.len() == 4 && all.iter().all(backup_finished)).await;
    for backup in all.iter().filter(|b| b.spec.tenant != "ghost") {
        let status = backup.status.as_ref().unwrap();
        assert_eq!(status.phase, BackupPhase::Succeeded, "{status:#?}");
        assert_eq!(status.copies_summary.as_deref(), Some("2/2"));
        assert!(status.snapshot_id.is_some() && status.bytes_total.unwrap() > 0, "{status:?}");
        let verification = status.verification.as_ref().unwrap();
        assert!(verification.tables > 0, "{verification:?}");
        let locked = status.copies.iter().find(|c| c.repository == "azure-italynorth-backups").unwrap();
        assert!(locked.written && locked.immutable_until.is_some(), "{locked:?}");
        let plain = status.copies.iter().find(|c| c.repository == "ovh-milan-backups").unwrap();
        assert!(plain.written && plain.immutable_until.is_none(), "{plain:?}");
        assert!(status.start_time.is_some() && status.completion_time.is_some());
    }
    // A Backup of a tenant that does not exist fails, naming it.
    let ghost = all.iter().find(|b| b.spec.tenant == "ghost").unwrap().status.clone().unwrap();
    assert_eq!(ghost.phase, BackupPhase::Failed);
    let why = ghost.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(why.reason, "TenantNotFound");
    assert!(why.message.contains("InvoicingTenant invoicing/ghost does not exist"), "{why:?}");

    // A second backup of one tenant: the policy keeps one snapshot, so the
    // first is forgotten where the store allows it and held where it is locked.
    let manual: Backup = serde_json::from_value(json!({
        "apiVersion": "fenice.io/v1alpha1", "kind": "Backup",
        "metadata": {"name": "studio-rossi-manual"}, "spec": {"tenant": "studio-rossi"},
    }))
    .unwrap();
    backups.create(&PostParams::default(), &manual).await.unwrap();
    let all =
        wait_list(&backups, "the manual Backup finished", |all| all.len() == 5 && all.iter().all(backup_finished))
            .await;
    let manual = all.iter().find(|b| b.metadata.name.as_deref() == Some("studio-rossi-manual")).unwrap();
    let copies: Vec<_> = manual.status.iter().flat_map(|s| &s.copies).map(|c| (&c.repository, &c.error)).collect();
    assert_eq!(phase(manual), Some(BackupPhase::Succeeded), "copies: {copies:?}");
    let events: Api<Event> = Api::all(client.clone());
    let listed = events.list(&ListParams::default()).await.unwrap().items;
    let note = listed.iter().find(|e| e.reason.as_deref() == Some("Forgotten")).and_then(|e| e.note.clone());
    let note = note.unwrap_or_else(|| panic!("an Event of the retention: {listed:#?}"));
    assert!(
        note.contains("repository ovh-milan-backups: forgot 1 of tenant studio-rossi's snapshots, kept 1"),
        "{note}"
    );
    assert!(
        note.contains(
            "repository azure-italynorth-backups: forgot 0 of tenant studio-rossi's snapshots, kept 1, 1 more held"
        ),
        "{note}"
    );

    // Repositories that do not exist, or whose password Secret lacks the key,
    // fail the copy and are named in it.
    let mut bad_key = repository("bad-key", &s3.endpoint(), "tenants-plain", "repo-s3");
    bad_key.spec.password_secret_ref.key = "passphrase".into();
    repos.create(&PostParams::default(), &bad_key).await.unwrap();
    let broken: Backup = serde_json::from_value(json!({
        "apiVersion": "fenice.io/v1alpha1", "kind": "Backup",
        "metadata": {"name": "comune-broken-repositories"},
        "spec": {"tenant": "comune-di-tivoli", "repositories": ["no-such-repository", "bad-key"]},
    }))
    .unwrap();
    backups.create(&PostParams::default(), &broken).await.unwrap();
    let all = wait_list(&backups, "the Backup to broken repositories finished", |all| {
        all.len() == 6 && all.iter().all(backup_finished)
    })
    .await;
    let broken = all.iter().find(|b| b.metadata.name.as_deref() == Some("comune-broken-repositories")).unwrap();
    let status = broken.status.as_ref().unwrap();
    assert_eq!((status.phase, status.copies_summary.as_deref()), (BackupPhase::Failed, Some("0/2")), "{status:#?}");
    let error = |name: &str| status.copies.iter().find(|c| c.repository == name).and_then(|c| c.error.clone());
    let missing = error("no-such-repository").unwrap();
    assert!(missing.contains("BackupRepository no-such-repository does not exist"), "{missing}");
    let key = error("bad-key").unwrap();
    assert!(key.contains("Secret fenice-system/repo-password has no key \"passphrase\""), "{key}");

    // The snapshots are really there, one per tenant in each repository (the
    // older one of studio-rossi still in the locked one), locked where asked.
    for bucket in ["tenants-locked", "tenants-plain"] {
        let store: std::sync::Arc<dyn fenice::store::ObjectStore> =
            std::sync::Arc::new(s3.store(bucket, "").await.unwrap());
        let unlock =
            fenice::repo::repository::Unlock::Passphrase(fenice::repo::keyfile::Passphrase::new(SECRET_VALUE.into()));
        let repo = fenice::repo::repository::Repository::open(store, &unlock).await.unwrap();
        let mut found: Vec<String> =
            repo.snapshots().await.unwrap().into_iter().filter_map(|(_, s)| s.tenant).collect();
        found.sort();
        let mut wanted = vec!["comune-di-tivoli", "geom-bianchi", "studio-rossi"];
        if bucket == "tenants-locked" {
            wanted.push("studio-rossi");
        }
        assert_eq!(found, wanted, "{bucket}");
        assert_eq!(repo.config().retention_days.is_some(), bucket == "tenants-locked");
    }
    let (_, metrics) = get(&format!("{metrics_url}/metrics")).await;
    assert!(
        metrics
            .contains("fenice_tenant_last_backup_timestamp_seconds{namespace=\"invoicing\",tenant=\"studio-rossi\"}"),
        "{metrics}"
    );

    // A Restore runs side by side at the Local site and is verified against
    // what the backup recorded; its copy goes with it.
    let restores: Api<fenice::api::restore::Restore> = Api::namespaced(client.clone(), "invoicing");
    let mut inspect = examples("restore.yaml").remove(0);
    inspect["spec"]["targetSite"] = json!("westpole-rome");
    inspect["spec"].as_object_mut().unwrap().remove("pointInTime");
    restores.create(&PostParams::default(), &serde_json::from_value(inspect.clone()).unwrap()).await.unwrap();
    let mut earlier = inspect;
    earlier["metadata"]["name"] = json!("studio-rossi-earlier");
    earlier["spec"]["pointInTime"] = json!("2026-11-20T10:15:00Z");
    restores.create(&PostParams::default(), &serde_json::from_value(earlier).unwrap()).await.unwrap();
    let restore_done = |r: &fenice::api::restore::Restore| {
        use fenice::api::restore::RestorePhase;
        r.status.as_ref().is_some_and(|s| matches!(s.phase, RestorePhase::Succeeded | RestorePhase::Failed))
    };
    let done =
        wait_list(&restores, "two Restores finished", |all| all.len() == 2 && all.iter().all(restore_done)).await;
    let restored = done.iter().find(|r| r.metadata.name.as_deref() == Some("studio-rossi-inspect")).unwrap();
    let status = restored.status.as_ref().unwrap();
    assert_eq!(
        (status.phase, status.verified),
        (fenice::api::restore::RestorePhase::Succeeded, Some(true)),
        "{status:#?}"
    );
    assert!(status.mismatches.is_empty() && status.snapshot_id.is_some() && status.duration.is_some(), "{status:?}");
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    let copy = ready.message.split(" into ").nth(1).unwrap().split(',').next().unwrap().to_owned();
    let port: u16 = copy.split(':').nth(2).unwrap().split('/').next().unwrap().parse().unwrap();
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(), "the copy serves at {copy}");
    let earlier = done.iter().find(|r| r.metadata.name.as_deref() == Some("studio-rossi-earlier")).unwrap();
    let why = earlier.status.as_ref().unwrap().conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(why.reason, "PointInTimeNotBuilt", "{why:?}");
    // The audit, from what the operator recorded: studio-rossi has copies at two
    // providers other than Westpole, one locked at the store, and a verified
    // restore; the others were never verified.
    let out = fenice_on(&kubeconfig, &["audit", "--json", "--namespace", "invoicing"]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let audits: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let rossi = audits.iter().find(|a| a["tenant"] == "studio-rossi").unwrap();
    assert_eq!((&rossi["violations"], &rossi["verification"]), (&json!([]), &json!("passed")), "{rossi:#}");
    let tivoli = audits.iter().find(|a| a["tenant"] == "comune-di-tivoli").unwrap();
    assert_eq!(tivoli["violations"][0]["rule"], "0 errors", "{tivoli:#}");
    restores.delete("studio-rossi-inspect", &Default::default()).await.unwrap();
    wait_list(&restores, "the Restore gone", |all| all.len() == 1).await;
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "the copy still serves at {copy}");

    // A drill of the plan's Silver tenants at its target site: restored side
    // by side, verified, served, measured against the objectives, torn down.
    let plans: Api<fenice::api::plan::FailoverPlan> = Api::all(client.clone());
    plans
        .create(&PostParams::default(), &serde_json::from_value(examples("plan.yaml").remove(0)).unwrap())
        .await
        .unwrap();
    // The channels' certificates, which drills check by their own dates.
    let certificate = |name: &str| {
        std::fs::read_to_string(format!("{}/tests/vectors/sdi/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    };
    let channel_secret = |name: &str, pem: String| -> Secret {
        serde_json::from_value(json!({"metadata": {"name": name},
            "stringData": {"tls.crt": pem, "tls.key": "not read by drills"}}))
        .unwrap()
    };
    let channels: Api<Secret> = Api::namespaced(client.clone(), "invoicing");
    for name in ["sdi-channel-rome", "sdi-channel-italynorth"] {
        let secret = channel_secret(name, certificate("until-2036-11-20.pem"));
        channels.create(&PostParams::default(), &secret).await.unwrap();
    }
    // SdI's test endpoint, simulated: the copies transmit their test invoice there.
    let sdi_test = SdiSimServer::start(std::path::Path::new(env!("CARGO_BIN_EXE_fenice")), Duration::from_millis(200))
        .expect("the SdI simulator");
    let drills: Api<fenice::api::drill::Drill> = Api::all(client.clone());
    let mut silver = examples("drill.yaml").remove(0);
    silver["metadata"] = json!({"name": "silver-drill"});
    silver["spec"]["sample"] = json!({"tiers": ["Silver"]});
    silver["spec"]["sdiTestEndpoint"] = json!(sdi_test.endpoint());
    // The example keeps its copies an hour; these drills tear theirs down at once.
    silver["spec"].as_object_mut().unwrap().remove("keepFor");
    drills.create(&PostParams::default(), &serde_json::from_value(silver.clone()).unwrap()).await.unwrap();
    let mut production = silver;
    production["metadata"] = json!({"name": "production-drill"});
    production["spec"]["sdiTestEndpoint"] = json!("https://sdi-rome.fatture.example.it/ws");
    drills.create(&PostParams::default(), &serde_json::from_value(production).unwrap()).await.unwrap();
    let drill_status_done = |s: &fenice::api::drill::DrillStatus| {
        matches!(s.phase, fenice::api::drill::DrillPhase::Passed | fenice::api::drill::DrillPhase::Failed)
    };
    let drill_done = |d: &fenice::api::drill::Drill| d.status.as_ref().is_some_and(drill_status_done);
    let done = wait_list(&drills, "two Drills finished", |all| all.len() == 2 && all.iter().all(drill_done)).await;
    let passed = done.iter().find(|d| d.metadata.name.as_deref() == Some("silver-drill")).unwrap();
    let status = passed.status.as_ref().unwrap();
    assert_eq!(
        (status.phase, status.passed.as_deref()),
        (fenice::api::drill::DrillPhase::Passed, Some("1/1")),
        "{status:#?}"
    );
    assert!(status.rto.is_some() && status.rpo.is_some(), "{status:?}");
    // The copy's numbering went on from the backup, and its test invoice reached the test endpoint.
    let sent = status.results[0].test_invoice.as_deref().unwrap_or_default();
    assert!(sent.starts_with("DRILL/1 sent to http://127.0.0.1:") && !sent.contains("none yet"), "{sent}");
    let refused = done.iter().find(|d| d.metadata.name.as_deref() == Some("production-drill")).unwrap();
    let why = refused.status.as_ref().unwrap().conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(why.reason, "ProductionEndpoint", "{why:?}");
    let tivoli = tenants.get("comune-di-tivoli").await.unwrap().status.unwrap();
    assert_eq!(tivoli.last_drill_passed, Some(true), "{tivoli:?}");
    assert_eq!(tivoli.certificate_expiry.map(|t| t.0.to_string()).as_deref(), Some("2036-11-20T20:19:50Z"));
    assert!(
        tivoli.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"),
        "the tenant's own status stays"
    );
    let (_, metrics) = get(&format!("{metrics_url}/metrics")).await;
    assert!(
        metrics.contains("fenice_tenant_last_drill_passed{namespace=\"invoicing\",tenant=\"comune-di-tivoli\"} 1"),
        "{metrics}"
    );
    // The report: the verdict, the tenant's figures against its objectives, the timeline.
    let report = |format: &str| fenice_on(&kubeconfig, &["drill", "report", "silver-drill", "--format", format]);
    let html = report("html");
    assert!(html.status.success(), "{}", String::from_utf8_lossy(&html.stderr));
    let html = String::from_utf8_lossy(&html.stdout);
    assert!(html.contains("<svg") && html.matches("<rect class=\"bar\"").count() == 1, "{html}");
    assert!(html.contains("invoicing/comune-di-tivoli") && html.contains("passed"), "{html}");
    let json: serde_json::Value = serde_json::from_slice(&report("json").stdout).unwrap();
    assert_eq!((&json["verdict"], &json["tenants"][0]["rtoObjective"]), (&json!("passed"), &json!("30m")), "{json:#}");
    assert!(json["tenants"][0]["snapshot"].is_string(), "{json:#}");
    let refused = fenice_on(&kubeconfig, &["drill", "report", "production-drill"]);
    assert_eq!(refused.status.code(), Some(1), "a failed drill exits 1");

    // Torn down: no process of the drill's copy is left (its app ran as `--tenant drill-<uid>-0`).
    let uid: String =
        passed.metadata.uid.clone().unwrap().chars().filter(char::is_ascii_alphanumeric).take(8).collect();
    let copy = format!("drill-{uid}-0");
    let leftover: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|p| std::fs::read(p.ok()?.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&copy))
        .collect();
    assert!(leftover.is_empty(), "the drill left {leftover:?}");

    // A deleted tenant goes once its stack is stopped.
    let bianchi = running.iter().find(|t| t.metadata.name.as_deref() == Some("geom-bianchi")).unwrap();
    let message = &bianchi.status.as_ref().unwrap().conditions.iter().find(|c| c.type_ == "Ready").unwrap().message;
    let app = message.split("serves ").nth(1).unwrap().to_owned();
    assert_eq!(get(&format!("{app}/healthz")).await.0, 200, "{app}");
    tenants.delete("geom-bianchi", &Default::default()).await.unwrap();
    wait_list(&tenants, "geom-bianchi gone", |all| all.len() == 2).await;
    assert_eq!(get(&format!("{app}/healthz")).await.0, 0, "the app still answers after its tenant was deleted");

    // A writer with the store's credentials can still put a new version over a
    // locked object; every plain read then gets the new bytes. Objects are named
    // by the hash of their content, so the drill reads the locked original of
    // each pack instead, passes, and warns about every pack written over.
    let drill_of = |name: &str| {
        let mut drill = examples("drill.yaml").remove(0);
        drill["metadata"] = json!({"name": name});
        drill["spec"]["sample"] = json!({"tiers": ["Silver"]});
        drill["spec"]["sdiTestEndpoint"] = json!(sdi_test.endpoint());
        drill["spec"].as_object_mut().unwrap().remove("keepFor");
        serde_json::from_value::<fenice::api::drill::Drill>(drill).unwrap()
    };
    let packs_in = |bucket: &'static str| {
        let client = s3.client();
        async move {
            let listed = client.list_objects_v2().bucket(bucket).prefix("data/").send().await.unwrap();
            let packs: Vec<String> = listed.contents().iter().filter_map(|o| o.key().map(str::to_owned)).collect();
            assert!(!packs.is_empty(), "{bucket} has packs");
            packs
        }
    };
    // keepFor: a copy that served stays up for inspection until keptUntil, then goes.
    let mut kept = drill_of("kept-drill");
    kept.spec.keep_for = Some(serde_json::from_value(json!("4s")).unwrap());
    drills.create(&PostParams::default(), &kept).await.unwrap();
    let finished =
        |d: Option<&fenice::api::drill::Drill>| d.and_then(|d| d.status.as_ref()).is_some_and(drill_status_done);
    timeout(DEADLINE, await_condition(drills.clone(), "kept-drill", finished)).await.unwrap().unwrap();
    let status = drills.get("kept-drill").await.unwrap().status.unwrap();
    assert_eq!(status.phase, fenice::api::drill::DrillPhase::Passed, "{status:#?}");
    let until = status.kept_until.clone().expect("keptUntil").0;
    let copy_url = status.results[0].copy.clone().expect("the kept copy's address");
    assert_eq!(get(&format!("{copy_url}/healthz")).await.0, 200, "the kept copy serves at {copy_url}");
    let released = |d: Option<&fenice::api::drill::Drill>| {
        d.is_some_and(|d| d.finalizers().is_empty() && d.status.as_ref().is_some_and(|s| s.kept_until.is_none()))
    };
    timeout(DEADLINE, await_condition(drills.clone(), "kept-drill", released)).await.unwrap().unwrap();
    assert!(jiff::Timestamp::now() >= until, "stopped before {until}");
    assert_eq!(get(&format!("{copy_url}/healthz")).await.0, 0, "the copy still serves after keptUntil");

    // An expired channel certificate fails the drill, naming the channel and
    // the Secret, though the restore itself passed.
    let expired = channel_secret("sdi-channel-italynorth", certificate("expired-2025-03-01.pem"));
    channels.replace("sdi-channel-italynorth", &PostParams::default(), &expired).await.unwrap();
    drills.create(&PostParams::default(), &drill_of("expired-certificate-drill")).await.unwrap();
    let done =
        wait_list(&drills, "the drill with an expired certificate", |all| all.len() == 4 && all.iter().all(drill_done))
            .await;
    let expired = done.iter().find(|d| d.metadata.name.as_deref() == Some("expired-certificate-drill")).unwrap();
    let status = expired.status.as_ref().unwrap();
    assert_eq!(status.phase, fenice::api::drill::DrillPhase::Failed, "{status:#?}");
    let reason = &status.failures[0].reason;
    assert!(
        reason.contains("channel at site azure-italynorth (certificate in Secret invoicing/sdi-channel-italynorth")
            && reason.contains("expired on 2025-03-01T12:00:00Z"),
        "{reason}"
    );
    assert!(!reason.contains("sdi-channel-rome"), "the valid one is not named: {reason}");
    let valid = channel_secret("sdi-channel-italynorth", certificate("until-2036-11-20.pem"));
    channels.replace("sdi-channel-italynorth", &PostParams::default(), &valid).await.unwrap();

    let locked_packs = packs_in("tenants-locked").await;
    for key in &locked_packs {
        s3.write_over("tenants-locked", key, &[0u8; 64]).await;
    }
    drills.create(&PostParams::default(), &drill_of("overwritten-drill")).await.unwrap();
    let done =
        wait_list(&drills, "the drill of a written-over copy", |all| all.len() == 5 && all.iter().all(drill_done))
            .await;
    let overwritten = done.iter().find(|d| d.metadata.name.as_deref() == Some("overwritten-drill")).unwrap();
    let status = overwritten.status.as_ref().unwrap();
    assert_eq!(status.phase, fenice::api::drill::DrillPhase::Passed, "{status:#?}");
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(ready.reason, "PassedWithWarnings", "{ready:?}");
    let warnings = &status.results[0].warnings;
    assert!(
        warnings
            .iter()
            .all(|w| w.starts_with("repository azure-italynorth-backups: data/") && w.contains("written over")),
        "{warnings:?}"
    );
    assert!(
        warnings.iter().any(|w| locked_packs.iter().any(|key| w.contains(key.as_str()))),
        "names a pack: {warnings:?}"
    );

    // Without versions nothing is left to read: the policy's repository that
    // keeps none goes first, its packs are overwritten, and the drill fails
    // naming the repository and the pack, though the other repository holds
    // a good copy.
    let reorder = json!({"spec": {"repositories": ["ovh-milan-backups", "azure-italynorth-backups"]}});
    let patched = policies.patch("standard", &PatchParams::default(), &Patch::Merge(&reorder)).await.unwrap();
    let generation = patched.metadata.generation;
    let seen = |p: Option<&BackupPolicy>| {
        p.and_then(|p| p.status.as_ref())
            .is_some_and(|s| s.observed_generation.is_some() && s.observed_generation >= generation)
    };
    timeout(DEADLINE, await_condition(policies.clone(), "standard", seen)).await.unwrap().unwrap();
    let plain_packs = packs_in("tenants-plain").await;
    for key in &plain_packs {
        s3.write_over("tenants-plain", key, &[0u8; 64]).await;
    }
    drills.create(&PostParams::default(), &drill_of("damaged-drill")).await.unwrap();
    let done =
        wait_list(&drills, "the drill of a damaged copy", |all| all.len() == 6 && all.iter().all(drill_done)).await;
    let damaged = done.iter().find(|d| d.metadata.name.as_deref() == Some("damaged-drill")).unwrap();
    let status = damaged.status.as_ref().unwrap();
    assert_eq!(status.phase, fenice::api::drill::DrillPhase::Failed, "{status:#?}");
    let reason = &status.failures[0].reason;
    assert!(reason.starts_with("repository ovh-milan-backups:") && reason.contains("was altered"), "{reason}");
    assert!(plain_packs.iter().any(|key| reason.contains(key.rsplit('/').next().unwrap())), "names the pack: {reason}");
    let tivoli = tenants.get("comune-di-tivoli").await.unwrap().status.unwrap();
    assert_eq!(tivoli.last_drill_passed, Some(false));

    // A drill whose store throttles every request past its retries fails,
    // naming the repository and the store, and leaves nothing running.
    proxy.throttle(u32::MAX);
    drills.create(&PostParams::default(), &drill_of("throttled-drill")).await.unwrap();
    let ended =
        |d: Option<&fenice::api::drill::Drill>| d.and_then(|d| d.status.as_ref()).is_some_and(drill_status_done);
    timeout(DEADLINE, await_condition(drills.clone(), "throttled-drill", ended)).await.unwrap().unwrap();
    proxy.throttle(0);
    let status = drills.get("throttled-drill").await.unwrap().status.unwrap();
    assert_eq!(status.phase, fenice::api::drill::DrillPhase::Failed, "{status:#?}");
    let reason = &status.failures[0].reason;
    assert!(reason.starts_with("repository ovh-milan-backups:"), "{reason}");
    assert!(reason.contains(&proxy.endpoint().replace("http://", "")), "names the store: {reason}");
    assert!(proxy.throttled() > 0, "the store was asked");

    // A drill interrupted by killing the operator: the copy's processes die
    // with it; the next leader marks the drill Interrupted and removes what
    // the dead operator left on disk.
    drills.create(&PostParams::default(), &drill_of("interrupted-drill")).await.unwrap();
    let restoring = |d: Option<&fenice::api::drill::Drill>| {
        d.and_then(|d| d.status.as_ref()).is_some_and(|s| s.phase == fenice::api::drill::DrillPhase::Restoring)
    };
    timeout(DEADLINE, await_condition(drills.clone(), "interrupted-drill", restoring)).await.unwrap().unwrap();
    let interrupted = drills.get("interrupted-drill").await.unwrap();
    let copy: String = interrupted.uid().unwrap().chars().filter(char::is_ascii_alphanumeric).take(8).collect();
    let copy = format!("drill-{copy}-");
    let mut operator = operator;
    operator.kill().await.unwrap();
    let copies_running = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|p| std::fs::read(p.ok()?.path().join("cmdline")).ok())
            .any(|c| String::from_utf8_lossy(&c).contains(&copy))
    };
    timeout(DEADLINE, async {
        while copies_running() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the drill's copy dies with the operator");
    let dead: Vec<_> = std::fs::read_dir(state.path()).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(dead.len(), 1, "the killed operator's files are left: {dead:?}");
    // NB: this one gives a request to a store 2 s, twice (a silent store below).
    let bounded = ["--store-timeout", "2", "--store-attempts", "2"].map(std::ffi::OsStr::new);
    let args: Vec<&std::ffi::OsStr> = state_arg.iter().copied().chain(bounded).collect();
    let (operator, url, _) = operator_with(&kubeconfig, "replica-2", &args).await;
    wait_ready(&url, true).await;
    timeout(DEADLINE, await_condition(drills.clone(), "interrupted-drill", ended)).await.unwrap().unwrap();
    let status = drills.get("interrupted-drill").await.unwrap().status.unwrap();
    let why = status.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!((status.phase, why.reason.as_str()), (fenice::api::drill::DrillPhase::Failed, "Interrupted"), "{why:?}");
    assert!(!dead[0].exists(), "the next operator removes {}", dead[0].display());

    // A drill whose store falls silent fails within the operator's bound, naming the store.
    proxy.silence(true);
    drills.create(&PostParams::default(), &drill_of("silent-drill")).await.unwrap();
    timeout(DEADLINE, await_condition(drills.clone(), "silent-drill", ended)).await.unwrap().unwrap();
    proxy.silence(false);
    let status = drills.get("silent-drill").await.unwrap().status.unwrap();
    assert_eq!(status.phase, fenice::api::drill::DrillPhase::Failed, "{status:#?}");
    let reason = &status.failures[0].reason;
    assert!(reason.starts_with("repository ovh-milan-backups:"), "{reason}");
    assert!(reason.contains(&proxy.endpoint().replace("http://", "")), "names the store: {reason}");
    assert!(reason.contains("no answer within 2.0s per attempt"), "{reason}");

    // Nothing secret anywhere; on SIGTERM the stacks stop and their files go.
    let everything = serde_json::to_string(&(
        events.list(&ListParams::default()).await.unwrap().items,
        backups.list(&ListParams::default()).await.unwrap().items,
        tenants.list(&ListParams::default()).await.unwrap().items,
        repos.list(&ListParams::default()).await.unwrap().items,
    ))
    .unwrap();
    assert!(!everything.contains(SECRET_VALUE));
    stop(&operator);
    let exited = timeout(DEADLINE, operator.wait_with_output()).await.unwrap().unwrap();
    assert!(exited.status.success(), "{:?}", exited.status);
    let log = String::from_utf8_lossy(&exited.stderr);
    assert!(!log.contains(SECRET_VALUE), "a secret in the log");
    let left: Vec<_> = std::fs::read_dir(state.path()).unwrap().collect();
    assert!(left.is_empty(), "the operator left {left:?}");
    let apps_left: Vec<_> = apps_dirs().difference(&apps_before).cloned().collect();
    assert!(apps_left.is_empty(), "the operator left its stacks' directories {apps_left:?}");
    within_rbac(&api);
}

/// The operator SIGKILLed while a Backup, then a Restore, runs in it at a
/// Local site, each waiting on repositories that fell silent: the next
/// operator marks each Failed `Interrupted` and runs neither again; once the
/// store answers, a new Backup and a new Restore succeed, and both
/// repositories check clean, data included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_killed_while_a_backup_or_a_restore_runs_in_it_leaves_them_interrupted_and_loses_nothing() {
    use fenice::api::backup::BackupPhase;
    use fenice::api::restore::{Restore, RestorePhase};

    let LocalCluster { api, dir, client, state, s3, proxy, .. } = local_cluster().await;
    let kubeconfig = dir.path().join("kubeconfig");
    // The policy's runs are all behind it: only the test's Backups run.
    let policies: Api<BackupPolicy> = Api::all(client.clone());
    let standard = example("policy.yaml", "standard", json!({}));
    policies.create(&PostParams::default(), &serde_json::from_value(standard).unwrap()).await.unwrap();
    let status = json!({"status": {"lastScheduleTime": jiff::Timestamp::now().to_string()}});
    policies.patch_status("standard", &PatchParams::default(), &Patch::Merge(&status)).await.unwrap();
    let tenants: Api<InvoicingTenant> = Api::namespaced(client.clone(), "invoicing");
    let mut rossi = examples("tenants.yaml").into_iter().find(|t| t["metadata"]["name"] == "studio-rossi").unwrap();
    // NB: an operator that replaces a dead one reconciles the tenant it brings back with SdI before it serves.
    let sdi = SdiSimServer::start(std::path::Path::new(env!("CARGO_BIN_EXE_fenice")), Duration::from_millis(200))
        .expect("the SdI simulator");
    for channel in rossi["spec"]["sdi"]["channels"].as_array_mut().unwrap() {
        channel["endpoint"] = json!(sdi.endpoint());
    }
    tenants.create(&PostParams::default(), &serde_json::from_value(rossi).unwrap()).await.unwrap();
    let state_arg = [std::ffi::OsStr::new("--state-dir"), state.path().as_os_str()];
    let (operator, url, _) = operator_with(&kubeconfig, "replica-1", &state_arg).await;
    wait_ready(&url, true).await;
    wait_list(&tenants, "studio-rossi Ready", |all| all.len() == 1 && all.iter().all(tenant_ready)).await;

    // A Backup running when the operator dies.
    let backups: Api<Backup> = Api::namespaced(client.clone(), "invoicing");
    let backup = |name: &str| -> Backup {
        serde_json::from_value(json!({
            "apiVersion": "fenice.io/v1alpha1", "kind": "Backup",
            "metadata": {"name": name}, "spec": {"tenant": "studio-rossi"},
        }))
        .unwrap()
    };
    proxy.silence(true);
    backups.create(&PostParams::default(), &backup("rossi-cut-short")).await.unwrap();
    let running = |b: Option<&Backup>| b.and_then(phase) == Some(BackupPhase::Running);
    timeout(DEADLINE, await_condition(backups.clone(), "rossi-cut-short", running)).await.unwrap().unwrap();
    let operator = killed_and_replaced(operator, &kubeconfig, "replica-2", &state_arg, &proxy).await;
    let status = backup_interrupted(&backups, "rossi-cut-short").await;
    assert!(ready_condition(&status.conditions).message.contains("create a new Backup"), "{status:?}");
    // A new Backup runs in full; the interrupted one is never run again.
    backups.create(&PostParams::default(), &backup("rossi-again")).await.unwrap();
    let all =
        wait_list(&backups, "the new Backup finished", |all| all.len() == 2 && all.iter().all(backup_finished)).await;
    let again = all.iter().find(|b| b.metadata.name.as_deref() == Some("rossi-again")).unwrap();
    let status = again.status.as_ref().unwrap();
    assert_eq!((status.phase, status.copies_summary.as_deref()), (BackupPhase::Succeeded, Some("2/2")), "{status:#?}");
    let cut_short = all.iter().find(|b| b.metadata.name.as_deref() == Some("rossi-cut-short")).unwrap();
    assert_eq!(phase(cut_short), Some(BackupPhase::Failed));

    // A Backup whose operator dies the moment its snapshot lands in a
    // repository, before or after its final status: either way it ends in a
    // clear phase, and the snapshot it wrote is whole (checked below).
    use fenice::store::ObjectStore;
    let plain = s3.store("tenants-plain", "").await.unwrap();
    let snapshots_before = plain.list("snapshots/").await.unwrap().len();
    backups.create(&PostParams::default(), &backup("rossi-snapshot-landed")).await.unwrap();
    timeout(DEADLINE, async {
        while plain.list("snapshots/").await.unwrap().len() == snapshots_before {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the Backup writes a snapshot");
    let operator = killed_and_replaced(operator, &kubeconfig, "replica-2b", &state_arg, &proxy).await;
    let ended = |b: Option<&Backup>| b.and_then(phase).is_some_and(|p| p != BackupPhase::Running);
    timeout(DEADLINE, await_condition(backups.clone(), "rossi-snapshot-landed", ended)).await.unwrap().unwrap();
    let status = backups.get("rossi-snapshot-landed").await.unwrap().status.unwrap();
    let why = status.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    match (status.phase, why.reason.as_str()) {
        (BackupPhase::Failed, "Interrupted") => assert!(status.snapshot_id.is_none(), "{status:#?}"),
        (BackupPhase::Succeeded | BackupPhase::PartiallySucceeded, _) => {
            assert!(status.snapshot_id.is_some(), "{status:#?}")
        }
        other => panic!("a Backup killed with its snapshot written ends Interrupted or recorded, not {other:?}"),
    }
    eprintln!("the Backup killed as its snapshot landed ended {:?} ({})", status.phase, why.reason);

    // A Restore running when the operator dies.
    let restores: Api<Restore> = Api::namespaced(client.clone(), "invoicing");
    let restore = |name: &str| -> Restore {
        let mut restore = examples("restore.yaml").remove(0);
        restore["metadata"]["name"] = json!(name);
        restore["spec"]["targetSite"] = json!("westpole-rome");
        restore["spec"].as_object_mut().unwrap().remove("pointInTime");
        serde_json::from_value(restore).unwrap()
    };
    proxy.silence(true);
    restores.create(&PostParams::default(), &restore("rossi-restore-cut-short")).await.unwrap();
    let restoring = |r: Option<&Restore>| restore_phase(r) == Some(RestorePhase::Restoring);
    timeout(DEADLINE, await_condition(restores.clone(), "rossi-restore-cut-short", restoring)).await.unwrap().unwrap();
    let app = app_of(&tenants.get("studio-rossi").await.unwrap());
    let operator = killed_and_replaced(operator, &kubeconfig, "replica-3", &state_arg, &proxy).await;
    interrupted_then_restored_anew(&restores, "rossi-restore-cut-short", restore("rossi-restore-again")).await;
    assert_eq!(
        restores.get("rossi-restore-cut-short").await.unwrap().status.unwrap().phase,
        RestorePhase::Failed,
        "the interrupted Restore is not run again"
    );

    // The operator killed 1 MiB into pg_dump's 20 MB, then into pg_restore's:
    // the tool ends with it, no snapshot is recorded from the cut dump, and the
    // next operator marks each Interrupted (its Local stacks and copies died
    // with the dead one: it brings the tenant's database back from its
    // backups, then starts a new app, and only then do the notes go in).
    let with_notes = |operator: &Child| notes_in_the_tenant_database(operator.id().unwrap());
    let app = running_anew(&tenants, app).await;
    with_notes(&operator).await;
    backups.create(&PostParams::default(), &backup("rossi-during-pg-dump")).await.unwrap();
    let operator = killed_during(operator, "pg_dump", "wchar", &kubeconfig, "replica-4", &state_arg, &proxy).await;
    backup_interrupted(&backups, "rossi-during-pg-dump").await;
    running_anew(&tenants, app).await;
    with_notes(&operator).await;
    backups.create(&PostParams::default(), &backup("rossi-with-notes")).await.unwrap();
    let status = backup_ended(&backups, "rossi-with-notes").await;
    assert_eq!((status.phase, status.copies_summary.as_deref()), (BackupPhase::Succeeded, Some("2/2")), "{status:#?}");
    restores.create(&PostParams::default(), &restore("rossi-during-pg-restore")).await.unwrap();
    let operator = killed_during(operator, "pg_restore", "rchar", &kubeconfig, "replica-5", &state_arg, &proxy).await;
    interrupted_then_restored_anew(&restores, "rossi-during-pg-restore", restore("rossi-restore-notes")).await;

    // Both repositories are whole: every object the dead operators wrote is sound.
    for bucket in ["tenants-locked", "tenants-plain"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_fenice"))
            .args(["repo", "check", "--read-data", "--repo", &format!("s3://{bucket}")])
            .envs([
                ("AWS_ENDPOINT_URL", s3.endpoint().as_str()),
                ("AWS_ACCESS_KEY_ID", "lab"),
                ("AWS_SECRET_ACCESS_KEY", SECRET_VALUE),
                ("AWS_REGION", "us-east-1"),
                ("FENICE_S3_PATH_STYLE", "true"),
                ("FENICE_PASSWORD", SECRET_VALUE),
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{bucket}: {}", String::from_utf8_lossy(&out.stderr));
    }
    stopped(operator).await;
    within_rbac(&api);
}

/// The Ready condition among `conditions`.
fn ready_condition(
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    conditions.iter().find(|c| c.type_ == "Ready").expect("a Ready condition")
}

/// The status of Backup `name` once it is neither Pending nor Running.
async fn backup_ended(backups: &Api<Backup>, name: &str) -> fenice::api::backup::BackupStatus {
    use fenice::api::backup::BackupPhase;
    let ended = |b: Option<&Backup>| {
        b.and_then(phase).is_some_and(|p| !matches!(p, BackupPhase::Pending | BackupPhase::Running))
    };
    timeout(DEADLINE, await_condition(backups.clone(), name, ended)).await.unwrap().unwrap();
    backups.get(name).await.unwrap().status.unwrap()
}

/// Waits until Backup `name`, whose operator was killed while it ran, is
/// marked Failed `Interrupted` with no snapshot recorded.
async fn backup_interrupted(backups: &Api<Backup>, name: &str) -> fenice::api::backup::BackupStatus {
    let status = backup_ended(backups, name).await;
    let why = ready_condition(&status.conditions).reason.as_str();
    assert_eq!((status.phase, why), (fenice::api::backup::BackupPhase::Failed, "Interrupted"), "{status:#?}");
    assert!(status.snapshot_id.is_none(), "{status:?}");
    status
}

/// Waits until Restore `name`, whose operator was killed while it ran, is
/// marked Failed `Interrupted`; then `anew` restores the same, verified.
async fn interrupted_then_restored_anew(
    restores: &Api<fenice::api::restore::Restore>,
    name: &str,
    anew: fenice::api::restore::Restore,
) {
    use fenice::api::restore::RestorePhase;
    let status = restore_ended(restores, name).await;
    let why = ready_condition(&status.conditions).reason.as_str();
    assert_eq!((status.phase, why), (RestorePhase::Failed, "Interrupted"), "{status:#?}");
    restores.create(&PostParams::default(), &anew).await.unwrap();
    let status = restore_ended(restores, &anew.name_any()).await;
    assert_eq!((status.phase, status.verified), (RestorePhase::Succeeded, Some(true)), "{status:#?}");
}

fn restore_phase(restore: Option<&fenice::api::restore::Restore>) -> Option<fenice::api::restore::RestorePhase> {
    restore.and_then(|r| r.status.as_ref()).map(|s| s.phase)
}

/// The status of Restore `name` once it Succeeded or Failed.
async fn restore_ended(
    restores: &Api<fenice::api::restore::Restore>,
    name: &str,
) -> fenice::api::restore::RestoreStatus {
    use fenice::api::restore::{Restore, RestorePhase};
    let ended = |r: Option<&Restore>| matches!(restore_phase(r), Some(RestorePhase::Succeeded | RestorePhase::Failed));
    timeout(DEADLINE, await_condition(restores.clone(), name, ended)).await.unwrap().unwrap();
    restores.get(name).await.unwrap().status.unwrap()
}

/// Once the operator's child `program` (pg_dump, pg_restore) has moved 1 MiB
/// through `field` of its /proc/PID/io, stops the operator (SIGSTOP: it takes
/// no more of the pipe, so the tool is still at work) and SIGKILLs it; waits
/// until the tool has ended with it, then starts the next operator.
async fn killed_during(
    mut operator: Child,
    program: &str,
    field: &str,
    kubeconfig: &std::path::Path,
    identity: &str,
    state_arg: &[&std::ffi::OsStr],
    proxy: &fenice::testkit::FaultProxy,
) -> Child {
    use fenice::testkit::process::{child_past, is_alive};
    let pid = operator.id().unwrap();
    let deadline = std::time::Instant::now() + DEADLINE;
    let child = loop {
        if let Some(child) = child_past(pid, program, field, 1 << 20) {
            break child;
        }
        if let Some(status) = operator.try_wait().unwrap() {
            panic!("the operator ended ({status}) before running {program}");
        }
        assert!(std::time::Instant::now() < deadline, "the operator never ran {program}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    // SAFETY: a signal to the operator this test started and has not reaped.
    assert_eq!(unsafe { libc::kill(libc::pid_t::try_from(pid).unwrap(), libc::SIGSTOP) }, 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(is_alive(child), "{program} still runs when the operator is killed");
    operator.kill().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while is_alive(child) {
        assert!(std::time::Instant::now() < deadline, "{program} ({child}) outlived the operator by 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    killed_and_replaced(operator, kubeconfig, identity, state_arg, proxy).await
}

/// The app of studio-rossi, once it is Ready with an app other than `before`
/// (started by the operator that replaced the one that ran `before`).
async fn running_anew(tenants: &Api<InvoicingTenant>, before: Option<String>) -> Option<String> {
    let anew = |t: &InvoicingTenant| tenant_ready(t) && app_of(t).is_some_and(|app| Some(&app) != before.as_ref());
    let running = wait_list(tenants, "studio-rossi running under the next operator", |all| all.iter().all(anew)).await;
    running.first().and_then(app_of)
}

/// Puts 20 MB of rows (more than a pipe holds) into studio-rossi's database,
/// the primary one the operator `pid` runs at its Local site, once it runs.
async fn notes_in_the_tenant_database(pid: u32) {
    let deadline = std::time::Instant::now() + DEADLINE;
    while !notes_in_a_tenant_database(pid).await {
        assert!(
            std::time::Instant::now() < deadline,
            "no PostgreSQL of the operator ({pid}) serves studio_rossi as a primary"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn notes_in_a_tenant_database(pid: u32) -> bool {
    let Some(db) = primary_database(pid, "studio_rossi").await else { return false };
    let notes =
        "CREATE TABLE notes AS SELECT g AS id, repeat(md5(g::text), 6) AS body FROM generate_series(1, 100000) g";
    db.batch_execute(notes).await.unwrap();
    true
}

/// The database `name` on a PostgreSQL server the process `pid` started,
/// one that is not in recovery.
async fn primary_database(pid: u32, name: &str) -> Option<tokio_postgres::Client> {
    let servers = fenice::testkit::process::children_of(pid).into_iter().filter_map(|child| {
        let cmdline = std::fs::read(format!("/proc/{child}/cmdline")).ok()?;
        let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        (args.first()?.ends_with("/postgres")).then_some(())?;
        args.iter().position(|a| a == "-p").and_then(|i| args.get(i + 1)).cloned()
    });
    for port in servers.collect::<Vec<_>>() {
        let url = format!("postgres://postgres@127.0.0.1:{port}/{name}");
        let Ok((db, connection)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await else { continue };
        tokio::spawn(connection);
        let primary = db.query_one("SELECT NOT pg_is_in_recovery()", &[]).await.is_ok_and(|r| r.get::<_, bool>(0));
        if primary {
            return Some(db);
        }
    }
    None
}

/// SIGKILLs `operator` (the store silent under it), lets the store answer
/// again, and starts the next operator as `identity` on the same state.
async fn killed_and_replaced(
    mut operator: Child,
    kubeconfig: &std::path::Path,
    identity: &str,
    state_arg: &[&std::ffi::OsStr],
    proxy: &fenice::testkit::FaultProxy,
) -> Child {
    operator.kill().await.unwrap();
    proxy.silence(false);
    let (next, url, _) = operator_with(kubeconfig, identity, state_arg).await;
    wait_ready(&url, true).await;
    next
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_compaction_the_operator_lists_again_and_keeps_reconciling() {
    use fenice::api::site::Site;

    let (api, dir, client) = cluster().await;
    let kubeconfig = dir.path().join("kubeconfig");
    let tenants: Api<InvoicingTenant> = Api::namespaced(client.clone(), "default");
    let acme = example(
        "tenants.yaml",
        "acme",
        json!({"spec": {"primarySite": "elsewhere", "sdi": {"channels": [
            {"site": "elsewhere", "kind": "SDICoop", "endpoint": "https://sdi.example.it/ws", "environment": "Test",
             "certificateSecretRef": {"name": "sdi", "key": "tls.crt"}, "privateKeySecretRef": {"name": "sdi", "key": "tls.key"}},
        ]}}}),
    );
    tenants.create(&PostParams::default(), &serde_json::from_value(acme.clone()).unwrap()).await.unwrap();
    let (operator, url, metrics_url) = operator(&kubeconfig, "replica-1").await;
    wait_ready(&url, true).await;
    let reason = |wanted: &'static str| {
        move |t: Option<&InvoicingTenant>| {
            t.and_then(|t| t.status.as_ref())
                .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.reason == wanted))
        }
    };
    timeout(DEADLINE, await_condition(tenants.clone(), "acme", reason("SiteNotFound"))).await.unwrap().unwrap();

    // Every open watch ends with 410 Gone and no history is left to resume from.
    api.compact();
    // The Site appears: the Site watch (listed again) brings the tenant back.
    let sites: Api<Site> = Api::all(client.clone());
    let mut elsewhere = examples("sites.yaml").remove(0);
    elsewhere["metadata"] = json!({"name": "elsewhere"});
    sites.create(&PostParams::default(), &serde_json::from_value(elsewhere).unwrap()).await.unwrap();
    // (Its kubeconfig Secret is not there: the stack cannot be applied.)
    timeout(DEADLINE, await_condition(tenants.clone(), "acme", reason("StackFailed"))).await.unwrap().unwrap();
    // A tenant created after the compaction is reconciled: the tenant watch runs again.
    let mut globex = acme;
    globex["metadata"] = json!({"name": "globex"});
    tenants.create(&PostParams::default(), &serde_json::from_value(globex).unwrap()).await.unwrap();
    timeout(DEADLINE, await_condition(tenants.clone(), "globex", reason("StackFailed"))).await.unwrap().unwrap();
    // A kind without a controller yet says so, rather than nothing.
    let plans: Api<fenice::api::plan::FailoverPlan> = Api::all(client.clone());
    plans
        .create(&PostParams::default(), &serde_json::from_value(examples("plan.yaml").remove(0)).unwrap())
        .await
        .unwrap();
    let not_built = |p: Option<&fenice::api::plan::FailoverPlan>| {
        p.and_then(|p| p.status.as_ref()).is_some_and(|s| {
            s.conditions.iter().any(|c| c.reason == "NotBuilt" && c.message.contains("no automatic failover happens"))
        })
    };
    timeout(DEADLINE, await_condition(plans.clone(), "westpole-to-azure", not_built)).await.unwrap().unwrap();
    let (_, metrics) = get(&format!("{metrics_url}/metrics")).await;
    assert!(metrics.contains("fenice_reconcile_errors_total{controller=\"invoicingtenant\"} 0"), "{metrics}");
    stopped(operator).await;
    within_rbac(&api);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finalizer_added_to_an_object_changed_meanwhile_is_retried_on_the_fresh_one() {
    let (_api, _dir, client) = cluster().await;
    let tenants: Api<InvoicingTenant> = Api::namespaced(client.clone(), "default");
    let acme = example("tenants.yaml", "acme", json!({}));
    let stale: InvoicingTenant =
        tenants.create(&PostParams::default(), &serde_json::from_value(acme).unwrap()).await.unwrap();
    // Someone else changes it after the controller read it.
    let label = json!({"metadata": {"labels": {"team": "billing"}, "finalizers": ["example.com/other"]}});
    tenants.patch("acme", &PatchParams::default(), &Patch::Merge(&label)).await.unwrap();

    fenice::controller::add_finalizer(&tenants, &stale, "fenice.io/local-stack").await.unwrap();
    let fresh = tenants.get("acme").await.unwrap();
    assert_eq!(fresh.finalizers(), ["example.com/other", "fenice.io/local-stack"], "both kept, ours once");
    assert_eq!(fresh.labels().get("team").map(String::as_str), Some("billing"), "the other change is kept");
    fenice::controller::add_finalizer(&tenants, &fresh, "fenice.io/local-stack").await.unwrap();
    assert_eq!(tenants.get("acme").await.unwrap().finalizers().len(), 2, "adding it again changes nothing");
}

#[test]
fn every_test_that_runs_the_operator_checks_its_rbac() {
    let source = include_str!("operator.rs");
    assert_eq!(source.matches(concat!("within_rbac(", "&api);")).count(), TESTS_WITH_OPERATOR);
}
