//! Runbooks are run, not just read: every `sh` block of a runbook is executed
//! in order, as an SRE would paste it, against a repository prepared here.

use std::path::Path;
use std::process::{Command, Stdio};

use fenice::app::schema::SCHEMA;
use fenice::testkit::PostgresServer;

#[path = "common/operator.rs"]
mod operator;
#[path = "common/runbook.rs"]
mod runbook;
use runbook::{kubectl, kubectl_shim, run_runbook, run_runbook_beside, shell_blocks};
#[path = "common/rbac.rs"]
mod rbac;
#[path = "common/tenant.rs"]
mod tenant;
use tenant::{connect, issue};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn fenice(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_fenice"))
        .args(args)
        .envs(env.iter().copied())
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("running fenice");
    assert!(out.status.success(), "fenice {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn shell_blocks_are_found_in_order() {
    let blocks = shell_blocks("text\n```sh\na\nb\n```\n```text\nno\n```\n```sh\nc\n```\n");
    assert_eq!(blocks, ["a\nb\n", "c\n"]);
}

/// scripts/real-cluster.sh (opt-in, for real clusters) runs the runbooks the
/// tests run: install.md's blocks, its `sh kubelet` ones too, then
/// planned-failover.md's, in order, and nothing else of them.
#[test]
fn the_real_cluster_script_runs_the_tested_runbooks_blocks_in_order() {
    let out = Command::new("bash")
        .args([&format!("{ROOT}/scripts/real-cluster.sh"), "--print"])
        .env("RUN_FAILOVER", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8(out.stdout).unwrap();
    let read = |file: &str| std::fs::read_to_string(format!("{ROOT}/runbooks/{file}")).unwrap();
    let install = read("install.md");
    let kubelet = install.replace("```sh kubelet\n", "```sh\n");
    let (with_pods, tested) = (shell_blocks(&kubelet), shell_blocks(&install));
    assert!(with_pods.len() > tested.len(), "install.md has blocks that need a kubelet");
    let failover = shell_blocks(&read("planned-failover.md"));
    let mut rest = printed.as_str();
    for block in with_pods.iter().chain(&failover) {
        let at = rest.find(block.as_str()).unwrap_or_else(|| panic!("not run, or not in order:\n{block}"));
        rest = &rest[at + block.len()..];
    }
    assert!(!printed.contains("abort"), "planned-failover.md's abort is not part of the run:\n{printed}");
    let syntax = Command::new("bash").args(["-n", "-c", &printed]).output().unwrap();
    assert!(syntax.status.success(), "{}", String::from_utf8_lossy(&syntax.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_glass_restore_works_with_only_the_recovery_key() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("nas-copy");
    let repo = repo.to_str().unwrap();
    let with_password = [("FENICE_PASSWORD", "operator password")];
    fenice(dir.path(), &with_password, &["repo", "--repo", repo, "init"]);
    let generated: serde_json::Value =
        serde_json::from_str(&fenice(dir.path(), &[], &["repo", "key", "generate-recovery", "--json"])).unwrap();
    let recipient = generated["recipient"].as_str().unwrap();
    fenice(dir.path(), &with_password, &["repo", "--repo", repo, "key", "add", "--recipient", recipient]);

    // The tenant as it was backed up before the provider died: three invoices.
    let pg = PostgresServer::start().expect("PostgreSQL starts");
    connect(&pg.url("postgres")).await.batch_execute("CREATE DATABASE studio_rossi").await.unwrap();
    let mut db = connect(&pg.url("studio_rossi")).await;
    db.batch_execute(SCHEMA).await.unwrap();
    let documents = dir.path().join("documents");
    std::fs::create_dir_all(&documents).unwrap();
    for _ in 0..3 {
        issue(&mut db, &documents, "2026").await;
    }
    let url = pg.url("studio_rossi");
    fenice(dir.path(), &with_password, &["agent", "backup", "--tenant", "studio-rossi", "--db", &url, "--repo", repo]);

    // The SRE has the key on paper, retyped with line breaks; no password.
    let key = generated["recoveryKey"].as_str().unwrap().replacen('-', "-\n", 2);
    let work = dir.path().join("sre");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("recovery-key.txt"), key).unwrap();

    let out = run_runbook(
        "break-glass-restore.md",
        &work,
        &[("REPO", repo), ("TENANT", "studio-rossi"), ("DB", &pg.url("restored"))],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("no errors"), "the check step ran: {stdout}");
    assert!(stdout.contains("verified"), "the tenant was restored and verified: {stdout}");
    let restored: i64 =
        connect(&pg.url("restored")).await.query_one("SELECT count(*) FROM invoices", &[]).await.unwrap().get(0);
    assert_eq!(restored, 3);
    assert_eq!(std::fs::read_dir(work.join("restore/documents")).unwrap().count(), 3);
    assert!(work.join("restore/files/database.dump").exists());
}

#[test]
fn key_rotation_retires_the_old_password_and_keeps_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let repo = repo.to_str().unwrap();
    let (old, new) = ("the old password", "the new password");
    fenice(dir.path(), &[("FENICE_PASSWORD", old)], &["repo", "--repo", repo, "init"]);
    std::fs::write(dir.path().join("invoice.xml"), "<Fattura/>").unwrap();
    fenice(dir.path(), &[("FENICE_PASSWORD", old)], &["repo", "--repo", repo, "backup", "invoice.xml"]);

    let work = dir.path().join("sre");
    std::fs::create_dir_all(&work).unwrap();
    let out = run_runbook(
        "key-rotation.md",
        &work,
        &[("REPO", repo), ("OLD_PASSWORD", old), ("NEW_PASSWORD", new), ("OLD_LABEL", "initial")],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("no errors"), "the check step ran: {stdout}");
    // Checked again from outside: one holder left, the new password, the data intact.
    let listed = fenice(dir.path(), &[], &["repo", "--repo", repo, "key", "list", "--json"]);
    let holders: Vec<serde_json::Value> = serde_json::from_str(&listed).unwrap();
    assert_eq!(holders.len(), 1, "{listed}");
    assert!(holders[0]["key"]["label"].as_str().unwrap().starts_with("rotated-"), "{listed}");
    let snapshots = fenice(dir.path(), &[("FENICE_PASSWORD", new)], &["repo", "--repo", repo, "snapshots", "--json"]);
    assert_eq!(serde_json::from_str::<Vec<serde_json::Value>>(&snapshots).unwrap().len(), 1);
    assert!(!work.join("new-password.txt").exists(), "the password file is removed at the end");
}

/// The install runbook against two in-memory clusters and the S3 server, with
/// both sites' operators running here (the runbook's Deployments have no
/// kubelet to run them): the operators installed, both sites, the witness
/// holding the plan's lease for the primary, a repository they reach, a warm
/// tenant with its standby at the standby cluster, and a first backup started
/// as a Job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_brings_two_clusters_and_a_first_tenant_under_protection() {
    use fenice::apiserver::{self, ServerOptions};
    use fenice::testkit::S3Server;
    let Some(real_kubectl) = kubectl() else { return };
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("sre");
    let shims = kubectl_shim(dir.path(), &real_kubectl);
    // The checkout the runbook runs from: its manifests.
    std::fs::create_dir_all(&work).unwrap();
    let copied = Command::new("cp").arg("-r").arg(format!("{ROOT}/manifests")).arg(&work).status().unwrap();
    assert!(copied.success());

    let s3 = S3Server::start().expect("the S3 server starts");
    for bucket in ["tenants", "witness"] {
        s3.store(bucket, "").await.unwrap().create_bucket(false).await.unwrap();
    }
    let primary = apiserver::spawn(ServerOptions::default()).await.unwrap();
    let standby = apiserver::spawn(ServerOptions { crds: Vec::new(), ..ServerOptions::default() }).await.unwrap();
    let contexts = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: primary\n  cluster: {{server: 'http://{p}'}}\n\
         - name: standby\n  cluster: {{server: 'http://{s}'}}\nusers:\n- name: sre\n  user: {{token: sre}}\n\
         contexts:\n- name: westpole\n  context: {{cluster: primary, user: sre}}\n\
         - name: aks\n  context: {{cluster: standby, user: sre}}\ncurrent-context: westpole\n",
        p = primary.addr(),
        s = standby.addr()
    );
    std::fs::write(work.join("kubeconfig"), contexts).unwrap();
    std::fs::write(work.join("standby.kubeconfig"), standby.kubeconfig_as("fenice-site")).unwrap();
    std::fs::write(work.join("control.kubeconfig"), primary.kubeconfig_as("fenice-operator-standby")).unwrap();
    for (file, text) in [
        ("access-key-id.txt", "test"),
        ("secret-access-key.txt", "test"),
        ("repository-password.txt", "install runbook password"),
    ] {
        std::fs::write(work.join(file), text).unwrap();
    }
    let state = tempfile::tempdir().unwrap();
    let (stop, running) =
        operator::run_at(&primary, "fenice-operator", "fenice-system", state.path(), Some("primary")).await;
    let standby_state = tempfile::tempdir().unwrap();
    let (stop_standby, running_standby) =
        operator::run_at(&primary, "fenice-operator-standby", "fenice-system", standby_state.path(), Some("standby"))
            .await;

    let kubeconfig = work.join("kubeconfig");
    let endpoint = s3.endpoint();
    let env = [
        ("KUBECONFIG", kubeconfig.to_str().unwrap()),
        ("PRIMARY", "westpole"),
        ("STANDBY", "aks"),
        ("STANDBY_KUBECONFIG", "standby.kubeconfig"),
        ("STANDBY_USER", "fenice-site"),
        ("CONTROL_KUBECONFIG", "control.kubeconfig"),
        ("CONTROL_USER", "fenice-operator-standby"),
        ("REPO_BUCKET", "tenants"),
        ("REPO_ENDPOINT", endpoint.as_str()),
        ("REPO_REGION", "us-east-1"),
        ("WITNESS_BUCKET", "witness"),
    ];
    let out = run_runbook_beside("install.md", &work, &shims, &env).await;
    for (stop, running) in [(stop, running), (stop_standby, running_standby)] {
        let _ = stop.send(());
        let _ = tokio::time::timeout(std::time::Duration::from_secs(40), running).await;
    }
    let out = out.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    let said = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("condition met"), "the waits ran: {said}");
    assert!(said.contains("studio-rossi-db"), "the standby's database is listed: {said}");
    assert!(said.contains("primary Active epoch 1") && said.contains("standby Fenced"), "the lease: {said}");
    assert!(
        said.contains("FENICE_SITE=standby") && said.contains("FENICE_KUBECONFIG=/etc/fenice/control/kubeconfig"),
        "the standby's operator told where it runs and what it watches: {said}"
    );
    // At the standby, only what its operator needs there.
    let at_standby = standby.client().await.unwrap();
    let deployments: kube::Api<k8s_openapi::api::apps::v1::Deployment> =
        kube::Api::namespaced(at_standby.clone(), "fenice-system");
    assert!(deployments.get_opt("fenice-operator").await.unwrap().is_some(), "{said}");
    let roles: kube::Api<k8s_openapi::api::rbac::v1::ClusterRole> = kube::Api::all(at_standby);
    assert!(roles.get_opt("fenice-operator").await.unwrap().is_none(), "no ClusterRole at the standby: {said}");
    let backups: kube::Api<fenice::api::backup::Backup> =
        kube::Api::namespaced(primary.client().await.unwrap(), "invoicing");
    let first = backups.get("studio-rossi-first").await.unwrap().status.unwrap_or_default();
    assert_eq!(
        first.job.as_deref(),
        Some("primary/invoicing/backup-studio-rossi-first"),
        "the first backup runs as a Job"
    );
    // What the operator did, it did within what the runbook granted it at each site.
    for user in ["fenice-operator", "fenice-operator-standby"] {
        operator::within(&primary.accesses(), user, &standby.accesses(), "fenice-site", "invoicing");
    }
}

/// A drill's status as the operator writes it: two tenants, the second
/// failed on a damaged backup and a missed objective, the first with a
/// certificate close to expiry.
fn drill_status(failed: bool) -> serde_json::Value {
    let tenant = |name: &str| serde_json::json!({"namespace": "invoicing", "name": name});
    let result = |name: &str, passed: bool, reason: Option<&str>, warnings: Vec<&str>| {
        serde_json::json!({
            "tenant": tenant(name), "passed": passed,
            "startTime": "2026-11-22T03:00:05Z", "endTime": "2026-11-22T03:02:10Z",
            "rtoMillis": if passed { 48_000 } else { 412_000 }, "rpoSeconds": 540,
            "objectives": {"rpo": "15m", "rto": "5m"},
            "snapshot": "5f2b9c4e1d3a4b6c8e7f0a1b2c3d4e5f5f2b9c4e1d3a4b6c8e7f0a1b2c3d4e5f",
            "reason": reason, "warnings": warnings,
            "testInvoice": "2026/7 sent as SdI id 118",
        })
    };
    let damaged = "repository ovh-milan-backups: pack 3f2a9c… was altered at the store (authentication failed); \
                   RTO 6m52s over the objective 5m";
    let expiring = "the SDICoop channel at site azure-italynorth (certificate in Secret invoicing/sdi-channel-italynorth, \
                    key \"tls.crt\") expires on 2026-12-01, in 9 days: renew it before it does";
    let mut results = vec![result("studio-rossi", true, None, vec![expiring])];
    let mut failures = vec![];
    if failed {
        results.push(result("comune-di-tivoli", false, Some(damaged), vec![]));
        failures.push(serde_json::json!({"tenant": tenant("comune-di-tivoli"), "reason": damaged}));
    }
    let (phase, total, passed) = if failed { ("Failed", 2, 1) } else { ("Passed", 1, 1) };
    serde_json::json!({"status": {
        "phase": phase, "startTime": "2026-11-22T03:00:00Z", "completionTime": "2026-11-22T03:02:30Z",
        "tenantsTotal": total, "tenantsPassed": passed, "tenantsFailed": total - passed,
        "passed": format!("{passed}/{total}"), "rto": if failed { "6m52s" } else { "48s" }, "rpo": "9m",
        "failures": failures, "results": results,
        "conditions": [{"type": "Ready", "status": if failed { "False" } else { "True" }, "reason": phase,
                        "message": "see the report", "lastTransitionTime": "2026-11-22T03:02:30Z"}],
    }})
}

/// The drill-report runbook against an in-memory API server holding a
/// passed and a failed drill: the report in each format, the failures one
/// line each, the warnings, and a new Drill to run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_a_drill_report_finds_the_failures_and_runs_the_drill_again() {
    use fenice::api::drill::Drill;
    use fenice::apiserver::{self, ServerOptions};
    use kube::api::{Api, Patch, PatchParams, PostParams};
    let Some(real_kubectl) = kubectl() else { return };
    let server = apiserver::spawn(ServerOptions::default()).await.unwrap();
    let drills: Api<Drill> = Api::all(server.client().await.unwrap());
    for (name, failed) in [("gold-2026-11-15", false), ("gold-2026-11-22", true)] {
        let drill: Drill = serde_json::from_value(serde_json::json!({
            "apiVersion": "fenice.io/v1alpha1", "kind": "Drill", "metadata": {"name": name},
            "spec": {"plan": "westpole-to-azure", "sample": {"tiers": ["Gold"]},
                     "sdiTestEndpoint": "https://sdi-test.fatture.example.it/ws"},
        }))
        .unwrap();
        drills.create(&PostParams::default(), &drill).await.unwrap();
        drills.patch_status(name, &PatchParams::default(), &Patch::Merge(&drill_status(failed))).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("kubeconfig"), server.kubeconfig_as("sre")).unwrap();
    let shims = kubectl_shim(dir.path(), &real_kubectl);
    let kubeconfig = dir.path().join("kubeconfig");
    let env = [("KUBECONFIG", kubeconfig.to_str().unwrap()), ("DRILL", "gold-2026-11-22")];
    let out = run_runbook_beside("drill-report.md", dir.path(), &shims, &env).await;
    let out = out.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("gold-2026-11-15") && said.contains("1/2"), "the drills are listed: {said}");
    assert!(said.contains("failed: see the failures below"), "the report's exit code was noticed: {said}");
    assert!(said.contains("invoicing/comune-di-tivoli: repository ovh-milan-backups: pack"), "{said}");
    assert!(said.contains("studio-rossi: [\"the SDICoop channel"), "the warning is shown: {said}");
    let html = std::fs::read_to_string(dir.path().join("gold-2026-11-22.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("comune-di-tivoli"), "the auditor's page has its timeline");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("gold-2026-11-22.json")).unwrap()).unwrap();
    assert!(json.to_string().contains("comune-di-tivoli"), "{json}");
    let again = drills.get("gold-2026-11-22-again").await.expect("a new Drill to run again");
    assert_eq!(again.spec.plan, "westpole-to-azure");
    assert_eq!(again.spec.sdi_test_endpoint, "https://sdi-test.fatture.example.it/ws");
}

/// The immutability runbook: a BackupRepository asking for a 30-day lock from
/// a bucket without Object Lock (found off by the operator's probe), a
/// snapshot in it; the runbook copies it into a locked repository in a new
/// bucket, points the BackupRepository there, and the probe finds the lock in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immutability_found_off_is_restored_by_copying_into_a_locked_bucket() {
    use fenice::api::repository::BackupRepository;
    use fenice::apiserver::{self, ServerOptions};
    use fenice::testkit::S3Server;
    use kube::api::{Api, PostParams};
    let Some(real_kubectl) = kubectl() else { return };
    let s3 = S3Server::start().expect("the S3 server starts");
    s3.store("tenants", "").await.unwrap().create_bucket(false).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("repository-password.txt"), "immutability runbook password").unwrap();
    std::fs::write(dir.path().join("invoice.xml"), "<FatturaElettronica/>").unwrap();
    let endpoint = s3.endpoint();
    let aws = [
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
        ("FENICE_S3_PATH_STYLE", "true"),
        ("FENICE_PASSWORD_FILE", "repository-password.txt"),
    ];
    fenice(dir.path(), &aws, &["repo", "--repo", "s3://tenants/fenice", "init"]);
    fenice(dir.path(), &aws, &["repo", "--repo", "s3://tenants/fenice", "backup", "invoice.xml"]);

    let server = apiserver::spawn(ServerOptions::default()).await.unwrap();
    let client = server.client().await.unwrap();
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let ns: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "fenice-system"}})).unwrap();
    namespaces.create(&PostParams::default(), &ns).await.unwrap();
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), "fenice-system");
    let secret = serde_json::from_value(serde_json::json!({"metadata": {"name": "repo-offsite"}, "stringData": {
        "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "password": "immutability runbook password",
    }}))
    .unwrap();
    secrets.create(&PostParams::default(), &secret).await.unwrap();
    let repositories: Api<BackupRepository> = Api::all(client.clone());
    let repository = serde_json::from_value(serde_json::json!({"metadata": {"name": "offsite"}, "spec": {
        "provider": "Ovhcloud", "immutability": {"enabled": true, "retention": "30d"},
        "storage": {"type": "S3", "s3": {
            "bucket": "tenants", "prefix": "fenice", "endpoint": endpoint, "region": "us-east-1",
            "forcePathStyle": true, "credentialsSecretRef": {"name": "repo-offsite"},
        }},
        "passwordSecretRef": {"name": "repo-offsite", "key": "password"},
    }}))
    .unwrap();
    repositories.create(&PostParams::default(), &repository).await.unwrap();
    let state = tempfile::tempdir().unwrap();
    let (stop, running) = operator::run(&server, "fenice-operator", "fenice-system", state.path()).await;
    // The alert's cause: the probe finds no lock at the store.
    let off = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        loop {
            let status = repositories.get("offsite").await.unwrap().status.unwrap_or_default();
            if status.immutability_in_force == Some(false) {
                return status;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the probe finds the lock off");
    assert!(off.conditions.iter().any(|c| c.reason == "RetentionNotInForce"), "{off:?}");

    std::fs::write(dir.path().join("kubeconfig"), server.kubeconfig_as("sre")).unwrap();
    let shims = kubectl_shim(dir.path(), &real_kubectl);
    let kubeconfig = dir.path().join("kubeconfig");
    let mut env = aws.to_vec();
    env.retain(|(k, _)| *k != "FENICE_PASSWORD_FILE");
    env.extend([
        ("KUBECONFIG", kubeconfig.to_str().unwrap()),
        ("REPO_NAME", "offsite"),
        ("OLD_BUCKET", "tenants"),
        ("LOCKED_BUCKET", "tenants-locked"),
    ]);
    let out = run_runbook_beside("immutability-off.md", dir.path(), &shims, &env).await;
    let _ = stop.send(());
    let _ = tokio::time::timeout(std::time::Duration::from_secs(40), running).await;
    let out = out.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("bucket tenants has no Object Lock"), "step 1 shows why: {said}");
    assert!(said.contains("condition met"), "{said}");
    let status = repositories.get("offsite").await.unwrap().status.unwrap_or_default();
    assert_eq!(status.immutability_in_force, Some(true), "{status:?}");
    let copied = fenice(dir.path(), &aws, &["repo", "--repo", "s3://tenants-locked/fenice", "ls", "latest"]);
    assert!(copied.contains("invoice.xml"), "the snapshot is in the locked repository: {copied}");
}

/// Runs `openssl ARGS` in `dir`.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl runs");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The certificate runbook: a channel Secret whose certificate expires in 9
/// days, a new pair for the same subject; the runbook names the tenant that
/// uses it, checks the pair and puts it in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sdi_certificate_is_checked_and_replaced() {
    use fenice::apiserver::{self, ServerOptions};
    use k8s_openapi::api::core::v1::{Namespace, Secret};
    use kube::api::{Api, PostParams};
    let Some(real_kubectl) = kubectl() else { return };
    let dir = tempfile::tempdir().unwrap();
    let subject = "/C=IT/O=Studio Rossi/CN=IT01234567890 SdI channel";
    for (name, days) in [("old", "9"), ("new", "365")] {
        let (key, crt) = (format!("{name}.key"), format!("{name}.crt"));
        openssl(
            dir.path(),
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &crt,
                "-days",
                days,
                "-subj",
                subject,
            ],
        );
    }
    let server = apiserver::spawn(ServerOptions::default()).await.unwrap();
    let client = server.client().await.unwrap();
    let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": "invoicing"}})).unwrap();
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.unwrap();
    let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "sdi-channel-rome"}, "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": read("old.crt"), "tls.key": read("old.key")},
    }))
    .unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "invoicing");
    secrets.create(&PostParams::default(), &secret).await.unwrap();
    let text = std::fs::read_to_string(format!("{ROOT}/manifests/examples/tenants.yaml")).unwrap();
    let tenant: serde_json::Value = serde_saphyr::from_multiple::<serde_json::Value>(&text).unwrap().remove(0);
    let tenants: Api<fenice::api::tenant::InvoicingTenant> = Api::namespaced(client.clone(), "invoicing");
    tenants.create(&PostParams::default(), &serde_json::from_value(tenant).unwrap()).await.unwrap();
    std::fs::remove_file(dir.path().join("old.key")).unwrap();
    std::fs::remove_file(dir.path().join("old.crt")).unwrap();

    std::fs::write(dir.path().join("kubeconfig"), server.kubeconfig_as("sre")).unwrap();
    let shims = kubectl_shim(dir.path(), &real_kubectl);
    let kubeconfig = dir.path().join("kubeconfig");
    let env =
        [("KUBECONFIG", kubeconfig.to_str().unwrap()), ("NAMESPACE", "invoicing"), ("SECRET", "sdi-channel-rome")];
    let out = run_runbook_beside("sdi-certificate-renewal.md", dir.path(), &shims, &env).await;
    let out = out.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("studio-rossi: sdi-channel-rome"), "the tenant using it is named: {said}");
    let now = secrets.get("sdi-channel-rome").await.unwrap().data.unwrap();
    assert_eq!(String::from_utf8_lossy(&now["tls.crt"].0), read("new.crt"), "the new certificate is in");
    assert_eq!(String::from_utf8_lossy(&now["tls.key"].0), read("new.key"), "with its key");
    assert!(!dir.path().join("current.crt").exists(), "the runbook cleans up after itself");
}

/// Every runbook is listed in runbooks/README.md and run by a test (its file
/// name appears in a test, which runs its `sh` blocks), and says which.
#[test]
fn every_runbook_is_listed_and_run_by_a_test() {
    let index = std::fs::read_to_string(format!("{ROOT}/runbooks/README.md")).unwrap();
    let mut tests = String::new();
    for entry in std::fs::read_dir(format!("{ROOT}/tests")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rs") {
            tests.push_str(&std::fs::read_to_string(path).unwrap());
        }
    }
    let mut runbooks = 0;
    for entry in std::fs::read_dir(format!("{ROOT}/runbooks")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name == "README.md" || !name.ends_with(".md") {
            continue;
        }
        runbooks += 1;
        let text = std::fs::read_to_string(format!("{ROOT}/runbooks/{name}")).unwrap();
        assert!(index.contains(&format!("]({name})")), "runbooks/README.md does not list {name}");
        assert!(tests.contains(&format!("\"{name}\"")), "no test runs runbooks/{name}");
        assert!(text.contains("Tested by"), "runbooks/{name} does not say which test runs it");
        assert!(!shell_blocks(&text).is_empty(), "runbooks/{name} has no sh block");
    }
    assert!(runbooks >= 9, "{runbooks} runbooks found");
}
