//! The alerts and the dashboard in manifests/monitoring/ use only metrics the
//! operator exports, and the rules file is a well-formed PrometheusRule.

use std::collections::BTreeSet;

use fenice::controller::metrics::Metrics;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Every `fenice_…` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("fenice_") {
        let name: String =
            rest[at..].chars().take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_').collect();
        rest = &rest[at + name.len()..];
        names.insert(name);
    }
    names
}

/// The families the operator's /metrics declares, from its `# TYPE` lines.
fn exported() -> BTreeSet<String> {
    Metrics::default()
        .render()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_metric_the_alerts_and_the_dashboard_use_is_exported() {
    let exported = exported();
    assert!(exported.contains("fenice_tenant_last_drill_passed"), "{exported:?}");
    for file in ["prometheus-rules.yaml", "grafana-dashboard.json"] {
        let text = std::fs::read_to_string(format!("{ROOT}/manifests/monitoring/{file}")).unwrap();
        let used = metric_names(&text);
        assert!(!used.is_empty(), "{file} uses no metric");
        let missing: Vec<_> = used.difference(&exported).collect();
        assert!(missing.is_empty(), "{file} uses metrics the operator does not export: {missing:?}");
    }
}

#[test]
fn the_rules_are_a_prometheus_rule_with_an_expression_and_a_summary_each() {
    let text = std::fs::read_to_string(format!("{ROOT}/manifests/monitoring/prometheus-rules.yaml")).unwrap();
    let rules: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    assert_eq!(rules["kind"], "PrometheusRule");
    let mut alerts = Vec::new();
    for group in rules["spec"]["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            let name = rule["alert"].as_str().unwrap();
            assert!(rule["expr"].as_str().is_some_and(|e| !e.trim().is_empty()), "{name} has no expr");
            assert!(rule["annotations"]["summary"].as_str().is_some(), "{name} has no summary");
            assert!(["warning", "critical"].contains(&rule["labels"]["severity"].as_str().unwrap_or("")), "{name}");
            alerts.push(name.to_owned());
        }
    }
    for wanted in ["FeniceBackupOlderThanRPO", "FeniceDrillFailed", "FeniceRepositoryImmutabilityOff"] {
        assert!(alerts.iter().any(|a| a == wanted), "{wanted} missing from {alerts:?}");
    }
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{ROOT}/manifests/monitoring/grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    assert!(dashboard["panels"].as_array().is_some_and(|p| p.len() >= 4));
}
