//! The examples in manifests/examples/ are valid objects of their kinds: each one
//! parses into its Rust type, validates against its generated CRD schema with a
//! standard JSON Schema validator (check-jsonschema), and passes its CRD's CEL
//! rules; and for every CEL rule in the CRDs, a broken copy of an example is
//! refused with that rule's message.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use fenice::api;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// One YAML document of one example file.
struct Doc {
    file: String,
    index: usize,
    value: Value,
}

impl Doc {
    fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or("")
    }

    fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or("")
    }

    fn label(&self) -> String {
        format!("manifests/examples/{} (document {}, {} {})", self.file, self.index + 1, self.kind(), self.name())
    }
}

/// A CRD's schema and scope, by kind.
struct Crd {
    schema: Value,
    namespaced: bool,
}

fn read_yaml_docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_saphyr::from_multiple::<Value>(&text)
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()))
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

fn crds() -> BTreeMap<String, Crd> {
    let path = Path::new(ROOT).join("manifests/crds.yaml");
    read_yaml_docs(&path)
        .into_iter()
        .map(|crd| {
            let kind = crd["spec"]["names"]["kind"].as_str().expect("CRD without kind").to_owned();
            let schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone();
            let namespaced = crd["spec"]["scope"] == "Namespaced";
            (kind, Crd { schema, namespaced })
        })
        .collect()
}

fn example_files() -> Vec<PathBuf> {
    let dir = Path::new(ROOT).join("manifests/examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("reading manifests/examples").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml") && !p.ends_with("kustomization.yaml"))
        .collect();
    files.sort();
    files
}

/// Every document of every example file that is one of our kinds.
fn fenice_docs() -> Vec<Doc> {
    example_files()
        .iter()
        .flat_map(|path| {
            let file = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
            read_yaml_docs(path).into_iter().enumerate().map(move |(index, value)| Doc {
                file: file.clone(),
                index,
                value,
            })
        })
        .filter(|d| d.value["apiVersion"] == format!("{}/{}", api::GROUP, api::VERSION))
        .collect()
}

#[test]
fn examples_cover_every_kind() {
    let crds = crds();
    let wanted: BTreeSet<&str> = crds.keys().map(String::as_str).collect();
    let docs = fenice_docs();
    let seen: BTreeSet<&str> = docs.iter().map(Doc::kind).collect();
    assert_eq!(wanted.len(), 9, "manifests/crds.yaml should hold nine CRDs");
    let missing: Vec<_> = wanted.difference(&seen).collect();
    assert!(missing.is_empty(), "manifests/examples/ has no example of {missing:?}");
    let unknown: Vec<_> = seen.difference(&wanted).collect();
    assert!(unknown.is_empty(), "manifests/examples/ has objects of unknown kinds {unknown:?}");
}

#[test]
fn examples_cover_the_scenario_the_docs_describe() {
    let docs = fenice_docs();
    let of_kind = |k: &str| docs.iter().filter(move |d| d.kind() == k).collect::<Vec<_>>();
    let sites = of_kind("Site");
    let provider_of = |role: &str| {
        sites.iter().find(|s| s.value["spec"]["role"] == role).map(|s| s.value["spec"]["provider"].clone())
    };
    let primary = provider_of("Primary").expect("an example Primary site");
    let standby = provider_of("Standby").expect("an example Standby site");
    let witness = provider_of("Witness").expect("an example Witness site");
    assert!(primary != standby && standby != witness && primary != witness, "three providers expected");
    let repo_providers: BTreeSet<String> =
        of_kind("BackupRepository").iter().map(|r| r.value["spec"]["provider"].to_string()).collect();
    assert!(repo_providers.len() >= 2, "repositories at two providers expected");
    assert!(!repo_providers.contains(&primary.to_string()), "no repository may be at the primary's provider");
    let tiers: BTreeSet<String> =
        of_kind("InvoicingTenant").iter().map(|t| t.value["spec"]["tier"].to_string()).collect();
    assert_eq!(tiers.len(), 3, "three tenants of different tiers expected");
}

fn parse_as<K: DeserializeOwned>(doc: &Doc) -> Result<(), String> {
    serde_path_to_error::deserialize::<_, K>(&doc.value)
        .map(|_| ())
        .map_err(|e| format!("{}: field {}: {}", doc.label(), e.path(), e.inner()))
}

fn parse_into_rust_type(doc: &Doc) -> Result<(), String> {
    match doc.kind() {
        "Site" => parse_as::<api::Site>(doc),
        "BackupRepository" => parse_as::<api::BackupRepository>(doc),
        "BackupPolicy" => parse_as::<api::BackupPolicy>(doc),
        "InvoicingTenant" => parse_as::<api::InvoicingTenant>(doc),
        "Backup" => parse_as::<api::Backup>(doc),
        "Restore" => parse_as::<api::Restore>(doc),
        "FailoverPlan" => parse_as::<api::FailoverPlan>(doc),
        "Failover" => parse_as::<api::Failover>(doc),
        "Drill" => parse_as::<api::Drill>(doc),
        other => Err(format!("{}: unknown kind {other}", doc.label())),
    }
}

#[test]
fn examples_parse_into_their_rust_types() {
    let errors: Vec<String> = fenice_docs().iter().filter_map(|d| parse_into_rust_type(d).err()).collect();
    assert!(errors.is_empty(), "examples that do not parse:\n{}", errors.join("\n"));
}

#[test]
fn a_malformed_example_is_named_by_file_and_field() {
    let docs = fenice_docs();
    let site = docs.iter().find(|d| d.kind() == "Site").expect("a Site example");
    let mut broken = Doc { file: site.file.clone(), index: site.index, value: site.value.clone() };
    broken.value["spec"]["health"]["interval"] = json!("ten seconds");
    let err = parse_into_rust_type(&broken).unwrap_err();
    assert!(err.contains("manifests/examples/sites.yaml"), "{err}");
    assert!(err.contains("spec.health.interval"), "{err}");
    assert!(err.contains("ten seconds"), "{err}");
}

// ---- structural validation with a standard JSON Schema validator ----

/// Turns a CRD's OpenAPI v3 schema into a JSON Schema that check-jsonschema
/// enforces as the API server would, and stricter where a typo would otherwise
/// pass silently: unknown fields are errors (the API server would prune them).
fn to_json_schema(schema: &Value) -> Value {
    match schema {
        Value::Object(map) => {
            let mut out = serde_json::Map::new();
            for (key, value) in map {
                match key.as_str() {
                    "properties" => {
                        let props = value.as_object().map(|p| {
                            p.iter().map(|(k, v)| (k.clone(), to_json_schema(v))).collect::<serde_json::Map<_, _>>()
                        });
                        out.insert(key.clone(), Value::Object(props.unwrap_or_default()));
                    }
                    "items" | "additionalProperties" if value.is_object() => {
                        out.insert(key.clone(), to_json_schema(value));
                    }
                    "nullable" | "x-kubernetes-int-or-string" => {}
                    k if k.starts_with("x-kubernetes-") => {}
                    _ => {
                        out.insert(key.clone(), value.clone());
                    }
                }
            }
            if map.get("x-kubernetes-int-or-string") == Some(&json!(true)) {
                out.insert("type".into(), json!(["integer", "string"]));
            }
            if map.get("nullable") == Some(&json!(true))
                && let Some(t) = out.get("type").and_then(Value::as_str).map(str::to_owned)
            {
                out.insert("type".into(), json!([t, "null"]));
            }
            let preserves = map.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
            if map.contains_key("properties") && !map.contains_key("additionalProperties") && !preserves {
                out.insert("additionalProperties".into(), json!(false));
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

/// The whole object's schema: the CRD's, plus apiVersion, kind and metadata.
fn object_schema(kind: &str, crd: &Crd) -> Value {
    let mut schema = to_json_schema(&crd.schema);
    let mut metadata_required = vec!["name"];
    if crd.namespaced {
        metadata_required.push("namespace");
    }
    let props = schema["properties"].as_object_mut().expect("CRD schema has properties");
    props.insert("apiVersion".into(), json!({"const": format!("{}/{}", api::GROUP, api::VERSION)}));
    props.insert("kind".into(), json!({"const": kind}));
    props.insert("metadata".into(), json!({"type": "object", "required": metadata_required}));
    schema["required"] = json!(["apiVersion", "kind", "metadata", "spec"]);
    schema["$schema"] = json!("http://json-schema.org/draft-07/schema#");
    schema
}

fn check_jsonschema() -> Command {
    let found = Command::new("check-jsonschema").arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(found, "check-jsonschema is not installed: run scripts/prerequisites.sh");
    Command::new("check-jsonschema")
}

/// Validates `docs` against their kinds' schemas; returns the validator's report
/// per kind that failed.
fn validate_with_check_jsonschema(docs: &[Doc]) -> Vec<String> {
    let crds = crds();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut by_kind: BTreeMap<&str, Vec<PathBuf>> = BTreeMap::new();
    for doc in docs {
        let file = dir.path().join(format!(
            "{}--doc{}--{}.json",
            doc.file.trim_end_matches(".yaml"),
            doc.index + 1,
            doc.name()
        ));
        std::fs::write(&file, serde_json::to_vec_pretty(&doc.value).expect("JSON")).expect("write instance");
        by_kind.entry(doc.kind()).or_default().push(file);
    }
    let mut failures = Vec::new();
    for (kind, instances) in by_kind {
        let crd = crds.get(kind).unwrap_or_else(|| panic!("no CRD for kind {kind}"));
        let schema_file = dir.path().join(format!("{kind}.schema.json"));
        std::fs::write(&schema_file, serde_json::to_vec_pretty(&object_schema(kind, crd)).expect("JSON"))
            .expect("write schema");
        let out = check_jsonschema()
            .arg("--schemafile")
            .arg(&schema_file)
            .arg("--output-format")
            .arg("text")
            .args(&instances)
            .output()
            .expect("running check-jsonschema");
        if !out.status.success() {
            failures.push(format!(
                "{kind}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    failures
}

#[test]
fn examples_validate_against_the_crd_schemas() {
    let failures = validate_with_check_jsonschema(&fenice_docs());
    assert!(
        failures.is_empty(),
        "examples that do not match manifests/crds.yaml (instance files are named <example>--doc<N>--<name>):\n{}",
        failures.join("\n")
    );
}

#[test]
fn the_schema_validator_catches_typos_bad_enums_and_bad_durations() {
    let docs = fenice_docs();
    let site = docs.iter().find(|d| d.kind() == "Site").expect("a Site example");
    let variants: [(&str, Breaker); 4] = [
        ("typo", |v| v["spec"]["regoin"] = json!("rome")),
        ("enum", |v| v["spec"]["provider"] = json!("Westpoll")),
        ("duration", |v| v["spec"]["health"]["interval"] = json!("10 seconds")),
        ("missing", |v| {
            v["spec"].as_object_mut().map(|s| s.remove("region"));
        }),
    ];
    for (what, break_it) in variants {
        let mut value = site.value.clone();
        break_it(&mut value);
        let broken = Doc { file: format!("broken-{what}.yaml"), index: 0, value };
        let failures = validate_with_check_jsonschema(std::slice::from_ref(&broken));
        assert_eq!(failures.len(), 1, "check-jsonschema accepted a Site with a {what} error");
        assert!(failures[0].contains(&format!("broken-{what}")), "report should name the file: {}", failures[0]);
    }
}

// ---- CEL rules ----

fn cel_errors(kind: &str, value: &Value) -> Vec<String> {
    let crds = crds();
    let crd = crds.get(kind).unwrap_or_else(|| panic!("no CRD for kind {kind}"));
    match kube_cel::validate(&crd.schema, value, None) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn examples_pass_their_cel_rules() {
    let failures: Vec<String> = fenice_docs()
        .iter()
        .flat_map(|d| cel_errors(d.kind(), &d.value).into_iter().map(move |e| format!("{}: {e}", d.label())))
        .collect();
    assert!(failures.is_empty(), "examples that break a CEL rule:\n{}", failures.join("\n"));
}

type Breaker = fn(&mut Value);

/// For each CEL rule: an example of a kind, how to break it, and the words of
/// the rule's message that the refusal must carry.
fn cel_cases() -> Vec<(&'static str, &'static str, Breaker, &'static str)> {
    vec![
        ("Site", "westpole-rome", |v| v["spec"]["role"] = json!("Witness"), "a Witness site needs witnessStore"),
        ("Site", "aws-witness", |v| v["spec"]["role"] = json!("Standby"), "a Primary or Standby site needs cluster"),
        ("Site", "aws-witness", |v| v["spec"]["cluster"] = json!({"driver": "Local"}), "a Witness site runs no stack"),
        (
            "Site",
            "westpole-rome",
            |v| {
                v["spec"]["cluster"].as_object_mut().map(|c| c.remove("kubeconfigSecretRef"));
            },
            "a Kubernetes site needs inCluster: true or a kubeconfigSecretRef",
        ),
        (
            "Site",
            "westpole-rome",
            |v| v["spec"]["platform"]["exposure"] = json!({"kind": "HTTPRoute", "ingressClassName": "nginx"}),
            "exposure: Ingress needs ingressClassName, HTTPRoute needs gatewayRef",
        ),
        (
            "Site",
            "azure-italynorth",
            |v| {
                v["spec"]["platform"].as_object_mut().map(|p| p.remove("dnsTarget"));
            },
            "dnsSwitch: DnsEndpoint needs dnsTarget",
        ),
        (
            "Site",
            "aws-witness",
            |v| v["spec"]["witnessStore"]["type"] = json!("AzureBlob"),
            "storage: set s3 exactly when type is S3",
        ),
        (
            "BackupRepository",
            "ovh-milan-backups",
            |v| v["spec"]["storage"]["type"] = json!("AzureBlob"),
            "storage: set azureBlob exactly when type is AzureBlob",
        ),
        (
            "BackupRepository",
            "ovh-milan-backups",
            |v| v["spec"]["storage"]["filesystem"] = json!({"path": "/mnt/nas"}),
            "storage: set filesystem exactly when type is Filesystem",
        ),
        (
            "BackupRepository",
            "ovh-milan-backups",
            |v| v["spec"]["storage"] = json!({"type": "Filesystem", "filesystem": {"path": "/mnt/nas"}}),
            "a Filesystem repository cannot be immutable",
        ),
        (
            "BackupRepository",
            "azure-italynorth-backups",
            |v| v["spec"]["immutability"] = json!({"enabled": true}),
            "immutability.enabled needs a retention",
        ),
        (
            "BackupPolicy",
            "standard",
            |v| v["spec"]["rules"]["minDistinctProviders"] = json!(3),
            "rules.minDistinctProviders is above the number of repositories",
        ),
        (
            "BackupPolicy",
            "standard",
            |v| v["spec"]["rules"]["minCopies"] = json!(3),
            "rules.minCopies is above the number of repositories",
        ),
        (
            "InvoicingTenant",
            "studio-rossi",
            |v| v["spec"]["primarySite"] = json!("aruba-arezzo"),
            "sdi.channels needs a channel for the primarySite",
        ),
        (
            "InvoicingTenant",
            "studio-rossi",
            |v| v["spec"]["sdi"]["channels"][1]["site"] = json!("westpole-rome"),
            "sdi.channels: one channel per site",
        ),
        (
            "Restore",
            "studio-rossi-inspect",
            |v| v["spec"]["snapshot"] = json!("4f2a9c1e"),
            "pointInTime picks the snapshot itself",
        ),
        (
            "FailoverPlan",
            "westpole-to-azure",
            |v| v["spec"]["targetSite"] = json!("westpole-rome"),
            "sourceSite and targetSite must differ",
        ),
        (
            "FailoverPlan",
            "westpole-to-azure",
            |v| {
                v["spec"].as_object_mut().map(|s| s.remove("witness"));
            },
            "an Automatic plan needs a witness",
        ),
        (
            "FailoverPlan",
            "westpole-to-azure",
            |v| v["spec"]["waves"][1]["name"] = json!("gold"),
            "wave names must be unique",
        ),
        (
            "Drill",
            "gold-drill-2026-11",
            |v| v["spec"]["sample"] = json!({"percent": 0}),
            "sample.percent must be between 1 and 100",
        ),
        (
            "Drill",
            "gold-drill-2026-11",
            |v| v["spec"]["sample"] = json!({"percent": 101}),
            "sample.percent must be between 1 and 100",
        ),
        (
            "Drill",
            "gold-drill-2026-11",
            |v| v["spec"]["sample"] = json!({"percent": 5, "all": true}),
            "sample: set exactly one of percent, tiers, tenants or all: true",
        ),
        (
            "FailoverPlan",
            "westpole-to-azure",
            |v| v["spec"]["drills"]["sample"] = json!({"percent": 150}),
            "sample.percent must be between 1 and 100",
        ),
    ]
}

#[test]
fn each_cel_rule_refuses_an_example_that_breaks_it() {
    let docs = fenice_docs();
    let mut failures = Vec::new();
    for (kind, name, break_it, message) in cel_cases() {
        let doc = docs
            .iter()
            .find(|d| d.kind() == kind && d.name() == name)
            .unwrap_or_else(|| panic!("no example {kind} {name}"));
        let mut value = doc.value.clone();
        break_it(&mut value);
        let errors = cel_errors(kind, &value);
        if !errors.iter().any(|e| e.contains(message)) {
            failures.push(format!("{kind} {name}: expected a refusal saying {message:?}, got {errors:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_cel_rule_in_the_crds_has_a_case() {
    let crds = crds();
    let mut messages = BTreeSet::new();
    fn collect(schema: &Value, out: &mut BTreeSet<String>) {
        match schema {
            Value::Object(map) => {
                if let Some(Value::Array(rules)) = map.get("x-kubernetes-validations") {
                    for rule in rules {
                        out.insert(rule["message"].as_str().unwrap_or_default().to_owned());
                    }
                }
                map.values().for_each(|v| collect(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| collect(v, out)),
            _ => {}
        }
    }
    for crd in crds.values() {
        collect(&crd.schema, &mut messages);
    }
    let cases = cel_cases();
    let uncovered: Vec<_> =
        messages.iter().filter(|m| !cases.iter().any(|(_, _, _, expected)| m.contains(expected))).collect();
    assert!(uncovered.is_empty(), "CEL rules without a test case in cel_cases(): {uncovered:?}");
}
