//! manifests/crds.yaml is exactly what `fenice crd` prints, and the CRDs carry
//! what an SRE relies on: status subresource, category, short names, printer
//! columns that point at real fields.

use std::process::Command;

use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const REGENERATE: &str = "cargo run -q -- crd > manifests/crds.yaml";

fn fenice_crd_output() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_fenice")).arg("crd").output().expect("running fenice crd");
    assert!(out.status.success(), "fenice crd failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("fenice crd prints UTF-8")
}

fn generated_crds() -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(&fenice_crd_output())
        .expect("fenice crd prints valid YAML")
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

#[test]
fn committed_crds_match_fenice_crd() {
    let generated = fenice_crd_output();
    let path = format!("{ROOT}/manifests/crds.yaml");
    let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}; run `{REGENERATE}`"));
    if committed != generated {
        let line = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .map_or_else(|| committed.lines().count().min(generated.lines().count()) + 1, |i| i + 1);
        panic!(
            "manifests/crds.yaml differs from `fenice crd` from line {line} on:\n  committed: {:?}\n  generated: {:?}\nRegenerate it with `{REGENERATE}` and commit it.",
            committed.lines().nth(line - 1).unwrap_or("<end of file>"),
            generated.lines().nth(line - 1).unwrap_or("<end of file>"),
        );
    }
}

#[test]
fn every_crd_has_status_category_short_names_and_age() {
    let crds = generated_crds();
    assert_eq!(crds.len(), 9);
    for crd in &crds {
        let name = crd["metadata"]["name"].as_str().unwrap_or_default();
        assert!(name.ends_with(".fenice.io"), "{name}");
        assert_eq!(crd["spec"]["names"]["categories"], serde_json::json!(["fenice"]), "{name}: category");
        assert!(crd["spec"]["names"]["shortNames"].as_array().is_some_and(|s| !s.is_empty()), "{name}: shortNames");
        let version = &crd["spec"]["versions"][0];
        assert_eq!(version["name"], "v1alpha1", "{name}");
        assert!(version["subresources"]["status"].is_object(), "{name}: status subresource");
        let columns = version["additionalPrinterColumns"].as_array().expect("printer columns");
        assert!(columns.iter().any(|c| c["name"] == "Age"), "{name}: Age column");
    }
}

/// Follows a printer column's JSONPath (`.status.conditions[?(@.type=="Ready")].status`)
/// through the schema's properties.
fn path_exists(schema: &Value, json_path: &str) -> bool {
    if json_path.starts_with(".metadata.") {
        return true;
    }
    let mut node = schema;
    for part in json_path.trim_start_matches('.').split('.') {
        let (field, indexed) = match part.find('[') {
            Some(i) => (&part[..i], true),
            None => (part, false),
        };
        if field.is_empty() || field.contains('"') || field.contains(')') {
            continue; // inside a filter expression
        }
        match node["properties"].get(field) {
            Some(next) => node = if indexed { &next["items"] } else { next },
            None => return false,
        }
    }
    true
}

#[test]
fn printer_columns_point_at_fields_that_exist() {
    let mut broken = Vec::new();
    for crd in generated_crds() {
        let version = &crd["spec"]["versions"][0];
        let schema = &version["schema"]["openAPIV3Schema"];
        for column in version["additionalPrinterColumns"].as_array().into_iter().flatten() {
            let path = column["jsonPath"].as_str().unwrap_or_default();
            if !path_exists(schema, path) {
                broken.push(format!("{} column {}: {path}", crd["spec"]["names"]["kind"], column["name"]));
            }
        }
    }
    assert!(broken.is_empty(), "printer columns whose JSONPath is not in the schema: {broken:?}");
}

#[test]
fn the_sre_columns_are_there() {
    let wanted = [
        ("Site", &["Provider", "Region", "Role", "Healthy", "Age"][..]),
        ("InvoicingTenant", &["Site", "Tier", "Last Backup", "Ready"]),
        ("Failover", &["Plan", "Phase", "Done/Total", "RTO"]),
        ("Drill", &["Phase", "Passed", "RTO", "RPO"]),
    ];
    let crds = generated_crds();
    for (kind, columns) in wanted {
        let crd = crds.iter().find(|c| c["spec"]["names"]["kind"] == kind).expect(kind);
        let names: Vec<&str> = crd["spec"]["versions"][0]["additionalPrinterColumns"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str())
            .collect();
        for column in columns {
            assert!(names.contains(column), "{kind} lacks column {column}: has {names:?}");
        }
    }
}

#[test]
fn conditions_merge_by_type_under_server_side_apply() {
    for crd in generated_crds() {
        let conditions = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
            ["conditions"];
        let kind = &crd["spec"]["names"]["kind"];
        assert_eq!(conditions["x-kubernetes-list-type"], "map", "{kind}");
        assert_eq!(conditions["x-kubernetes-list-map-keys"], serde_json::json!(["type"]), "{kind}");
        let status = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"];
        assert!(status["observedGeneration"].is_object(), "{kind}: status.observedGeneration");
    }
}

#[test]
fn a_column_with_a_misspelt_path_is_caught() {
    let crds = generated_crds();
    let schema = &crds[0]["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    assert!(path_exists(schema, ".spec.provider"));
    assert!(path_exists(schema, ".status.conditions[?(@.type==\"Ready\")].status"));
    assert!(!path_exists(schema, ".spec.provder"));
    assert!(!path_exists(schema, ".status.conditions[?(@.type==\"Ready\")].stat"));
}
