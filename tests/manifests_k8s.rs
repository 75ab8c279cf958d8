//! The deployment manifests in manifests/ (namespace, RBAC, operator) are valid
//! Kubernetes 1.33 objects, checked offline by the `kubernetes-validate` schema
//! validator in strict mode; and the RBAC keeps to its rules: no wildcards, Secrets
//! only through a namespaced Role, every rule explained by a comment.
//!
//! crds.yaml, kustomization.yaml and manifests/examples/ are checked by other tests.
//!
//! NB: `kubernetes-validate` exits 0 when it has no schema for a resource (an
//! unknown `apiVersion` or `kind`) and only prints a WARN line, so this test reads
//! its output and counts one "passed" line per YAML document, instead of trusting
//! the exit code alone.

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The Kubernetes version the manifests must be valid for. kubernetes-validate
/// 1.37.0 ships the schemas of 1.25 to 1.37 inside its package, so this needs no network.
const KUBERNETES_VERSION: &str = "1.33.0";
/// What kubernetes-validate prints for the schema it picked for [`KUBERNETES_VERSION`].
const SCHEMA_VERSION: &str = "1.33";
/// The version scripts/prerequisites.sh installs.
const VALIDATOR_PIN: &str = "1.37.0";
/// Names the validator's program, when it is neither on PATH nor importable by `python3`.
const VALIDATOR_ENV: &str = "KUBERNETES_VALIDATE";

const NAMESPACE: &str = "fenice-system";
const SERVICE_ACCOUNT: &str = "fenice-operator";

fn install_hint() -> String {
    format!(
        "install the prerequisites with `bash scripts/prerequisites.sh`, or just this one with \
         `python3 -m pip install kubernetes-validate=={VALIDATOR_PIN}`; if it lives somewhere else, \
         set {VALIDATOR_ENV} to its program"
    )
}

fn manifests_dir() -> PathBuf {
    Path::new(ROOT).join("manifests")
}

/// The path relative to the crate root, for messages.
fn shown(path: &Path) -> String {
    path.strip_prefix(ROOT).unwrap_or(path).display().to_string()
}

/// Every non-empty YAML document of a file.
fn read_yaml_docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", shown(path)));
    serde_saphyr::from_multiple::<Value>(&text)
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", shown(path)))
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

/// The YAML files at the top of manifests/ that this test validates.
fn deployment_manifests() -> Vec<PathBuf> {
    let dir = manifests_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", shown(&dir)))
        .map(|e| e.expect("reading manifests/").path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .filter(|p| !p.ends_with("crds.yaml") && !p.ends_with("kustomization.yaml"))
        .collect();
    files.sort();
    files
}

/// How to run kubernetes-validate on this machine.
struct Validator {
    program: String,
    leading_args: Vec<String>,
    version: String,
}

impl Validator {
    /// The validator, found once per test binary: the program in
    /// `$KUBERNETES_VALIDATE` if set, else `kubernetes-validate` on PATH, else
    /// `python3 -m kubernetes_validate`. Panics with an install hint if none works.
    fn get() -> &'static Validator {
        static FOUND: OnceLock<Result<Validator, String>> = OnceLock::new();
        match FOUND.get_or_init(Validator::find) {
            Ok(v) => v,
            Err(message) => panic!("{message}"),
        }
    }

    fn find() -> Result<Validator, String> {
        let candidates: Vec<Vec<String>> = match std::env::var(VALIDATOR_ENV) {
            Ok(program) if !program.is_empty() => vec![vec![program]],
            _ => vec![
                vec!["kubernetes-validate".into()],
                vec!["python3".into(), "-m".into(), "kubernetes_validate".into()],
            ],
        };
        let mut tried = Vec::new();
        for candidate in candidates {
            let shown = candidate.join(" ");
            match Command::new(&candidate[0]).args(&candidate[1..]).arg("--version").output() {
                Ok(out) if out.status.success() => {
                    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                    let mut parts = candidate.into_iter();
                    let program = parts.next().unwrap_or_default();
                    return Ok(Validator { program, leading_args: parts.collect(), version });
                }
                Ok(out) => tried.push(format!(
                    "`{shown} --version` failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                )),
                Err(e) if e.kind() == ErrorKind::NotFound => tried.push(format!("`{shown}`: not found")),
                Err(e) => tried.push(format!("`{shown}`: {e}")),
            }
        }
        Err(format!(
            "the Kubernetes schema validator kubernetes-validate is not installed ({}); {}",
            tried.join("; "),
            install_hint()
        ))
    }

    fn args(strict: bool) -> Vec<&'static str> {
        let mut args = vec!["--kubernetes-version", KUBERNETES_VERSION];
        if strict {
            args.push("--strict");
        }
        args
    }

    /// The command line, for messages.
    fn command_line(&self, file: &Path, strict: bool) -> String {
        let mut words = vec![self.program.clone()];
        words.extend(self.leading_args.iter().cloned());
        words.extend(Self::args(strict).into_iter().map(String::from));
        words.push(file.display().to_string());
        words.join(" ")
    }

    fn run(&self, file: &Path, strict: bool) -> Output {
        Command::new(&self.program)
            .args(&self.leading_args)
            .args(Self::args(strict))
            .arg(file)
            .output()
            .unwrap_or_else(|e| panic!("running `{}`: {e}; {}", self.command_line(file, strict), install_hint()))
    }

    /// Validates `file` and checks that every document in it passed against the
    /// schema of [`SCHEMA_VERSION`]. The error names the file, the command and
    /// the validator's whole output.
    fn check(&self, file: &Path, strict: bool) -> Result<(), String> {
        let documents = read_yaml_docs(file).len();
        let out = self.run(file, strict);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let passed = stdout
            .lines()
            .filter(|l| l.starts_with("INFO ") && l.contains(" passed for resource "))
            .filter(|l| l.ends_with(&format!("against version {SCHEMA_VERSION}")))
            .count();
        let complaints: Vec<&str> =
            stdout.lines().filter(|l| ["ERROR", "WARN", "FATAL"].iter().any(|w| l.starts_with(w))).collect();
        let problem = if !out.status.success() {
            Some(format!("it exited with {}", out.status))
        } else if !complaints.is_empty() {
            Some("it printed errors or warnings (a WARN means no schema was found for that resource)".to_owned())
        } else if passed != documents {
            Some(format!(
                "{passed} of the file's {documents} YAML documents passed against Kubernetes {SCHEMA_VERSION}"
            ))
        } else {
            None
        };
        match problem {
            None => Ok(()),
            Some(problem) => Err(format!(
                "{} is not a valid Kubernetes {KUBERNETES_VERSION} manifest: `{}` (kubernetes-validate {}): {problem}\n\
                 --- validator stdout ---\n{stdout}--- validator stderr ---\n{stderr}",
                shown(file),
                self.command_line(file, strict),
                self.version,
            )),
        }
    }
}

#[test]
fn deployment_manifests_are_valid_kubernetes_1_33_objects() {
    let files = deployment_manifests();
    let names: BTreeSet<String> =
        files.iter().filter_map(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()).collect();
    for expected in ["namespace.yaml", "rbac.yaml", "operator.yaml"] {
        assert!(names.contains(expected), "manifests/{expected} is missing; found {names:?}");
    }
    let validator = Validator::get();
    let failures: Vec<String> = files.iter().filter_map(|f| validator.check(f, true).err()).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The lookout's Deployment (a vantage point run at a third provider) is valid
/// too; its command is run against the S3 server in tests/witness_lease.rs.
#[test]
fn the_lookout_manifest_is_valid_kubernetes_1_33_objects() {
    let file = manifests_dir().join("lookout").join("lookout.yaml");
    let docs = read_yaml_docs(&file);
    assert_eq!(docs.len(), 2, "a Namespace and a Deployment");
    let spec = &docs[1]["spec"]["template"]["spec"];
    assert_eq!(spec["automountServiceAccountToken"], false, "a lookout needs no Kubernetes API");
    assert_eq!(docs[1]["spec"]["replicas"], 1, "one process per lookout name");
    if let Err(failure) = Validator::get().check(&file, true) {
        panic!("{failure}");
    }
}

// The checks below prove that the validation above really validates: a known-good
// Deployment passes, and each kind of mistake is refused.

const GOOD_DEPLOYMENT: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: probe
  namespace: default
spec:
  replicas: 2
  selector:
    matchLabels:
      app: probe
  template:
    metadata:
      labels:
        app: probe
    spec:
      containers:
        - name: probe
          image: fenice
          securityContext:
            readOnlyRootFilesystem: true
";

/// A YAML file under the test's temp dir, removed on drop.
struct TempYaml(PathBuf);

impl TempYaml {
    fn new(name: &str, text: &str) -> TempYaml {
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}.yaml", std::process::id()));
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        TempYaml(path)
    }
}

impl Drop for TempYaml {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The good Deployment with one mistake in it.
fn broken_deployment(good: &str, bad: &str) -> String {
    assert!(GOOD_DEPLOYMENT.contains(good), "the fixture has no {good:?}");
    GOOD_DEPLOYMENT.replacen(good, bad, 1)
}

#[test]
fn validator_accepts_a_good_deployment() {
    let file = TempYaml::new("good-deployment", GOOD_DEPLOYMENT);
    let validator = Validator::get();
    validator.check(&file.0, true).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn validator_rejects_a_field_of_the_wrong_type() {
    let file = TempYaml::new("replicas-two", &broken_deployment("replicas: 2", "replicas: \"two\""));
    let err = Validator::get().check(&file.0, true).expect_err("replicas: \"two\" must be refused");
    assert!(err.contains(&shown(&file.0)), "the message must name the file: {err}");
    assert!(
        err.contains("spec.replicas: 'two' is not of type 'integer'"),
        "the message must quote the validator: {err}"
    );
}

#[test]
fn strict_validation_rejects_a_misspelled_field_that_lax_validation_lets_through() {
    let text = broken_deployment("readOnlyRootFilesystem", "readOnlyRootFileSystem");
    let file = TempYaml::new("misspelled-field", &text);
    let validator = Validator::get();
    let err = validator.check(&file.0, true).expect_err("a misspelled field must be refused under --strict");
    assert!(err.contains("'readOnlyRootFileSystem' was unexpected"), "{err}");
    // Without --strict the same mistake passes: that is why the manifests are checked strictly.
    validator.check(&file.0, false).unwrap_or_else(|e| panic!("lax validation was expected to pass: {e}"));
}

#[test]
fn a_resource_without_a_schema_fails_the_check_although_the_validator_exits_0() {
    let file = TempYaml::new("unknown-api-version", &broken_deployment("apps/v1", "apps/v1beta9"));
    let validator = Validator::get();
    let out = validator.run(&file.0, true);
    assert!(out.status.success(), "kubernetes-validate now fails on a missing schema; the NB in this file is stale");
    let err = validator.check(&file.0, true).expect_err("a Deployment in apps/v1beta9 must be refused");
    assert!(err.contains("Couldn't find schema for kind Deployment"), "{err}");
}

// RBAC rules, checked on the parsed YAML.

fn rbac_docs() -> Vec<Value> {
    read_yaml_docs(&manifests_dir().join("rbac.yaml"))
}

fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or("")
}

fn name(doc: &Value) -> &str {
    doc["metadata"]["name"].as_str().unwrap_or("")
}

fn strings<'a>(v: &'a Value, key: &str) -> Vec<&'a str> {
    v[key].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default()
}

/// Every rule of every Role and ClusterRole, with a label for messages.
fn rules(docs: &[Value]) -> Vec<(String, &Value)> {
    docs.iter()
        .filter(|d| matches!(kind(d), "Role" | "ClusterRole"))
        .flat_map(|d| {
            let rules = d["rules"].as_array().map(Vec::as_slice).unwrap_or_default();
            rules.iter().enumerate().map(move |(i, r)| (format!("{} {} rule {}", kind(d), name(d), i + 1), r))
        })
        .collect()
}

#[test]
fn rbac_has_no_wildcards() {
    let docs = rbac_docs();
    let rules = rules(&docs);
    assert!(!rules.is_empty(), "manifests/rbac.yaml has no rules");
    for (label, rule) in rules {
        for key in ["apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"] {
            let wild: Vec<&str> = strings(rule, key).into_iter().filter(|s| s.contains('*')).collect();
            assert!(wild.is_empty(), "manifests/rbac.yaml: {label} has a wildcard in {key}: {wild:?}");
        }
    }
    for doc in docs.iter().filter(|d| kind(d) == "ClusterRole") {
        assert!(doc.get("aggregationRule").is_none(), "ClusterRole {} aggregates other roles", name(doc));
    }
}

#[test]
fn secrets_are_readable_only_through_a_role_in_the_operator_namespace() {
    let docs = rbac_docs();
    let mut secret_rules = 0;
    for doc in docs.iter().filter(|d| matches!(kind(d), "Role" | "ClusterRole")) {
        for rule in doc["rules"].as_array().map(Vec::as_slice).unwrap_or_default() {
            let core = strings(rule, "apiGroups").contains(&"");
            let secrets = strings(rule, "resources").iter().any(|r| *r == "secrets" || r.starts_with("secrets/"));
            if !(core && secrets) {
                continue;
            }
            secret_rules += 1;
            assert_eq!(kind(doc), "Role", "{} {} grants access to Secrets cluster-wide", kind(doc), name(doc));
            assert_eq!(doc["metadata"]["namespace"], NAMESPACE, "Role {} reads Secrets outside {NAMESPACE}", name(doc));
            assert_eq!(strings(rule, "verbs"), ["get"], "Role {} may do more with Secrets than read them", name(doc));
        }
    }
    assert_eq!(secret_rules, 1, "expected exactly one rule on Secrets, in a Role in {NAMESPACE}");
}

#[test]
fn every_rbac_rule_says_why_in_a_comment() {
    let path = manifests_dir().join("rbac.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", shown(&path)));
    let lines: Vec<&str> = text.lines().collect();
    let mut seen = 0;
    for (i, line) in lines.iter().enumerate() {
        if !line.trim_start().starts_with("- apiGroups:") {
            continue;
        }
        seen += 1;
        let previous = lines[..i].iter().rev().find(|l| !l.trim().is_empty()).map(|l| l.trim_start());
        assert!(
            previous.is_some_and(|l| l.starts_with('#')),
            "manifests/rbac.yaml line {}: the rule has no comment above it saying why it is needed",
            i + 1
        );
    }
    assert_eq!(seen, rules(&rbac_docs()).len(), "every rule must start with `- apiGroups:`");
}

#[test]
fn cluster_role_covers_exactly_the_fenice_crds() {
    let crds = fenice::api::crds();
    let plurals: BTreeSet<String> = crds.iter().map(|c| c.spec.names.plural.clone()).collect();
    let crd_names: BTreeSet<String> = crds.iter().filter_map(|c| c.metadata.name.clone()).collect();
    let docs = rbac_docs();
    let role = docs
        .iter()
        .find(|d| kind(d) == "ClusterRole" && name(d) == "fenice-operator")
        .expect("manifests/rbac.yaml has no ClusterRole fenice-operator");
    let rules = role["rules"].as_array().expect("ClusterRole fenice-operator has no rules");
    // The resources that `group` grants `verb` on.
    let granted = |group: &str, verb: &str| -> BTreeSet<String> {
        rules
            .iter()
            .filter(|r| strings(r, "apiGroups").contains(&group) && strings(r, "verbs").contains(&verb))
            .flat_map(|r| strings(r, "resources"))
            .map(str::to_owned)
            .collect()
    };
    // Every kind is watched; which other verbs each needs, tests/operator.rs
    // finds from what the operator does.
    for verb in ["list", "watch"] {
        let with_verb: BTreeSet<String> = granted("fenice.io", verb).into_iter().filter(|r| !r.contains('/')).collect();
        assert_eq!(with_verb, plurals, "fenice.io resources with verb {verb}");
    }
    let named: BTreeSet<String> = rules
        .iter()
        .filter(|r| strings(r, "apiGroups").contains(&"fenice.io"))
        .flat_map(|r| strings(r, "resources"))
        .map(|r| r.split('/').next().unwrap_or_default().to_owned())
        .collect();
    assert!(named.is_subset(&plurals), "fenice.io rules name what is not a CRD: {:?}", &named - &plurals);
    assert!(crd_names.iter().all(|n| n.ends_with(".fenice.io")), "{crd_names:?}");
}

#[test]
fn bindings_grant_each_role_to_the_operator_service_account() {
    let docs = rbac_docs();
    let roles: BTreeSet<(&str, &str)> =
        docs.iter().filter(|d| matches!(kind(d), "Role" | "ClusterRole")).map(|d| (kind(d), name(d))).collect();
    let bindings: Vec<&Value> =
        docs.iter().filter(|d| matches!(kind(d), "RoleBinding" | "ClusterRoleBinding")).collect();
    let bound: BTreeSet<(&str, &str)> = bindings
        .iter()
        .map(|b| (b["roleRef"]["kind"].as_str().unwrap_or(""), b["roleRef"]["name"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(bound, roles, "every Role and ClusterRole is bound, and every binding names one of them");
    for b in bindings {
        let subjects = b["subjects"].as_array().map(Vec::as_slice).unwrap_or_default();
        assert_eq!(subjects.len(), 1, "{} {} must bind exactly one subject", kind(b), name(b));
        let s = &subjects[0];
        assert_eq!(
            (s["kind"].as_str(), s["name"].as_str(), s["namespace"].as_str()),
            (Some("ServiceAccount"), Some(SERVICE_ACCOUNT), Some(NAMESPACE)),
            "{} {} binds the wrong subject",
            kind(b),
            name(b)
        );
    }
    assert!(
        docs.iter().any(|d| kind(d) == "ServiceAccount" && name(d) == SERVICE_ACCOUNT),
        "manifests/rbac.yaml has no ServiceAccount {SERVICE_ACCOUNT}"
    );
}

// The operator's Deployment, checked on the parsed YAML.

fn operator_deployment() -> Value {
    read_yaml_docs(&manifests_dir().join("operator.yaml"))
        .into_iter()
        .find(|d| kind(d) == "Deployment" && name(d) == "fenice-operator")
        .expect("manifests/operator.yaml has no Deployment fenice-operator")
}

#[test]
fn operator_pod_is_locked_down() {
    let deployment = operator_deployment();
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], SERVICE_ACCOUNT);
    let containers = pod["containers"].as_array().expect("no containers");
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["runAsUser"], 65532);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(strings(&sc["capabilities"], "drop"), ["ALL"]);
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    // A read-only root needs a writable /tmp.
    let tmp = c["volumeMounts"].as_array().and_then(|m| m.iter().find(|m| m["mountPath"] == "/tmp"));
    let tmp = tmp.expect("no volume at /tmp for a read-only root filesystem");
    let volume = pod["volumes"].as_array().and_then(|v| v.iter().find(|v| v["name"] == tmp["name"]));
    assert!(volume.is_some_and(|v| v.get("emptyDir").is_some()), "/tmp must be an emptyDir");
    for key in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(c["resources"][key].get(resource).is_some(), "no {key}.{resource} on the operator container");
        }
    }
}

#[test]
fn kustomization_names_the_operator_image_and_the_manifests() {
    let deployment = operator_deployment();
    let image = deployment["spec"]["template"]["spec"]["containers"][0]["image"].as_str().unwrap_or("");
    let kustomization = read_yaml_docs(&manifests_dir().join("kustomization.yaml"));
    let kustomization = kustomization.first().expect("manifests/kustomization.yaml is empty");
    let images = kustomization["images"].as_array().map(Vec::as_slice).unwrap_or_default();
    assert!(
        images.iter().any(|i| i["name"] == image && i.get("newName").is_some()),
        "kustomization.yaml `images:` must replace {image:?}, the image operator.yaml names"
    );
    let resources = strings(kustomization, "resources");
    for file in deployment_manifests() {
        let file = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        assert!(resources.contains(&file.as_str()), "kustomization.yaml does not list {file}");
    }
}

/// What the Kubernetes site driver renders for the example tenants at the
/// example sites, also with CloudNativePG running PostgreSQL (their stacks,
/// database Secrets, warm standbys, backup Jobs, restored copies and restore
/// Jobs) is valid Kubernetes 1.33, strictly (the Gateway API HTTPRoute,
/// external-dns's DNSEndpoint and CloudNativePG's Cluster have no schema in
/// the validator and are left out; the Cluster's fields are checked in
/// tests/kubernetes_render.rs and docs/sites.md says against what).
#[test]
fn rendered_tenant_stacks_are_valid_kubernetes_1_33_objects() {
    use fenice::api::site::Site;
    use fenice::api::tenant::InvoicingTenant;
    use fenice::site::kubernetes::{Images, backup_job, database_secret, render, warm_standby};
    use fenice::site::restore_copy;

    let docs = |file: &str| read_yaml_docs(&manifests_dir().join("examples").join(file));
    let sites: Vec<Site> = docs("sites.yaml").into_iter().map(|d| serde_json::from_value(d).unwrap()).collect();
    let tenants: Vec<InvoicingTenant> =
        docs("tenants.yaml").into_iter().map(|d| serde_json::from_value(d).unwrap()).collect();
    let images = Images { fenice: "0.1.0".into(), postgres: "15-0.1.0".into() };
    let mut text = String::new();
    let mut kinds = BTreeSet::new();
    for site in sites.iter().filter(|s| s.spec.platform.is_some()) {
        for tenant in &tenants {
            let env = std::collections::BTreeMap::from([(
                "FENICE_REPOSITORY".to_owned(),
                zeroize::Zeroizing::new("s3://tenants/prod".to_owned()),
            )]);
            let mut objects = render(tenant, site, &images).unwrap();
            objects.push(backup_job(tenant, site, &images, "manual", "fenice.io/backup=u", true).unwrap());
            let copy = restore_copy::objects(tenant, site, &images, "restore-abc", &env, "pw").unwrap();
            objects.push(copy.secret);
            objects.extend(copy.objects);
            objects.push(
                restore_copy::job(tenant, site, &images, "restore-abc", None, Some("https://sdi-test.example"))
                    .unwrap(),
            );
            objects.extend(warm_standby(tenant, site, &images, "s3://tenants/prod").unwrap());
            objects.push(database_secret(tenant, site, "pw").unwrap());
            // The same site with CloudNativePG running PostgreSQL.
            let mut cnpg = site.clone();
            cnpg.spec.platform.as_mut().unwrap().database = Some(fenice::api::site::DatabaseKind::CloudNativePg);
            let mut at_cnpg = tenant.clone();
            for channel in &mut at_cnpg.spec.sdi.channels {
                channel.site = cnpg.metadata.name.clone().unwrap();
            }
            objects.extend(render(&at_cnpg, &cnpg, &images).unwrap());
            objects.push(database_secret(&at_cnpg, &cnpg, "pw").unwrap());
            for object in objects {
                kinds.insert(kind(&object).to_owned());
                if !matches!(kind(&object), "HTTPRoute" | "DNSEndpoint" | "Cluster") {
                    text.push_str(&format!("---\n{object}\n"));
                }
            }
        }
    }
    let expected = [
        "Cluster",
        "ConfigMap",
        "DNSEndpoint",
        "Deployment",
        "HTTPRoute",
        "Ingress",
        "Job",
        "NetworkPolicy",
        "PersistentVolumeClaim",
        "Secret",
        "StatefulSet",
    ];
    assert!(expected.iter().all(|k| kinds.contains(*k)), "{kinds:?}");
    let file = TempYaml::new("rendered-stacks", &text);
    Validator::get().check(&file.0, true).unwrap_or_else(|e| panic!("{e}"));
}

/// The Role a Kubernetes site's identity gets in each tenant namespace grants
/// what the site driver does and no more: list, patch and delete on each kind
/// it applies; get, create, patch and delete on Secrets, never list; get,
/// patch and delete on the backup and restore Jobs; get on a restored copy's
/// StatefulSet and list on its Job's pods; a namespaced
/// Role, never a ClusterRole.
#[test]
fn the_tenant_namespace_role_grants_what_the_site_driver_does_and_no_more() {
    let path = manifests_dir().join("site/tenant-namespace-rbac.yaml");
    let docs = read_yaml_docs(&path);
    assert!(docs.iter().all(|d| kind(d) != "ClusterRole" && kind(d) != "ClusterRoleBinding"), "{docs:?}");
    let mut granted = BTreeSet::new();
    for (label, rule) in rules(&docs) {
        for group in strings(rule, "apiGroups") {
            for resource in strings(rule, "resources") {
                let verbs = strings(rule, "verbs").join(",");
                assert!(granted.insert((group.to_owned(), resource.to_owned(), verbs)), "{label}: {resource} twice");
            }
        }
    }
    let mut wanted: BTreeSet<(String, String, String)> = fenice::site::cluster::KINDS
        .iter()
        .map(|(group, version, kind)| {
            let resource = kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(group, version, kind));
            (group.to_string(), resource.plural, "list,patch,delete".to_owned())
        })
        .collect();
    wanted.insert((String::new(), "secrets".into(), "get,create,patch,delete".into()));
    wanted.insert(("batch".into(), "jobs".into(), "get,patch,delete".into()));
    wanted.insert(("apps".into(), "statefulsets".into(), "get".into()));
    wanted.insert((String::new(), "pods".into(), "list".into()));
    assert_eq!(granted, wanted, "{} must grant exactly what the site driver does", shown(&path));
    let role_binding = docs.iter().find(|d| kind(d) == "RoleBinding").expect("a RoleBinding");
    assert_eq!(role_binding["subjects"][0]["name"], SERVICE_ACCOUNT);
    Validator::get().check(&path, true).unwrap_or_else(|e| panic!("{e}"));
}
