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
    let wanted = [
        "FeniceBackupOlderThanRPO",
        "FeniceDrillFailed",
        "FeniceRepositoryImmutabilityOff",
        "FeniceWitnessLeaseNotRenewed",
        "FeniceWitnessUnreachable",
    ];
    for wanted in wanted {
        assert!(alerts.iter().any(|a| a == wanted), "{wanted} missing from {alerts:?}");
    }
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{ROOT}/manifests/monitoring/grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    assert!(dashboard["panels"].as_array().is_some_and(|p| p.len() >= 4));
}

/// Runs promtool (Debian's `prometheus` package, installed by
/// scripts/prerequisites.sh) in `dir`.
fn promtool(dir: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool (Debian package prometheus): run scripts/prerequisites.sh");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

/// promtool checks the rules and runs them on made-up series: each alert
/// fires when it should and not before.
#[test]
fn promtool_accepts_the_rules_and_the_alerts_fire_when_they_should() {
    let text = std::fs::read_to_string(format!("{ROOT}/manifests/monitoring/prometheus-rules.yaml")).unwrap();
    let rule: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let groups = serde_json::json!({"groups": rule["spec"]["groups"]});
    std::fs::write(dir.path().join("rules.json"), groups.to_string()).unwrap();
    let checked = promtool(dir.path(), &["check", "rules", "rules.json"]);
    assert!(checked.contains("SUCCESS"), "{checked}");

    // Time starts at the Unix epoch in promtool's tests: a certificate that
    // ends 1,000,000 s after it expires on day 11.6; a drill at 0 is 35 days
    // old on day 35; a backup at 0 is older than a 1-hour RPO after an hour.
    let tenant = r#"{namespace="invoicing",tenant="acme"}"#;
    let rules: Vec<serde_json::Value> = rule["spec"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().clone())
        .collect();
    // promtool compares annotations too: render the label templates they use.
    let annotations = |name: &str, labels: &serde_json::Value| {
        let rule = rules.iter().find(|r| r["alert"] == name).unwrap_or_else(|| panic!("no alert {name}"));
        let mut rendered = serde_json::Map::new();
        for (key, value) in rule["annotations"].as_object().unwrap() {
            let mut text = value.as_str().unwrap().to_owned();
            for (label, value) in labels.as_object().unwrap() {
                text = text.replace(&format!("{{{{ $labels.{label} }}}}"), value.as_str().unwrap());
            }
            rendered.insert(key.clone(), text.into());
        }
        rendered
    };
    let alert_of = |labels: serde_json::Value| {
        move |at: &str, name: &str, severity: Option<&str>| {
            let expected: Vec<serde_json::Value> = severity
                .map(|s| {
                    let mut exp_labels = labels.clone();
                    exp_labels["severity"] = s.into();
                    serde_json::json!({"exp_labels": exp_labels, "exp_annotations": annotations(name, &labels)})
                })
                .into_iter()
                .collect();
            serde_json::json!({"eval_time": at, "alertname": name, "exp_alerts": expected})
        }
    };
    let alert = alert_of(serde_json::json!({"namespace": "invoicing", "tenant": "acme"}));
    // A lease renewed until minute 0 only, whose store stops answering at minute 10.
    let witness = alert_of(serde_json::json!({"plan": "rome-to-milan", "site": "frankfurt"}));
    let plan = r#"{plan="rome-to-milan",site="frankfurt"}"#;
    let tests = serde_json::json!({
        "rule_files": ["rules.json"],
        "evaluation_interval": "5m",
        "tests": [{
            // Within Prometheus' 5-minute lookback, so a series never goes stale.
            "interval": "5m",
            "input_series": [
                {"series": format!("fenice_tenant_certificate_expiry_timestamp_seconds{tenant}"), "values": "1000000x11000"},
                {"series": format!("fenice_tenant_last_drill_timestamp_seconds{tenant}"), "values": "0x11000"},
                {"series": format!("fenice_tenant_last_backup_timestamp_seconds{tenant}"), "values": "0x11000"},
                {"series": format!("fenice_tenant_rpo_objective_seconds{tenant}"), "values": "3600x11000"},
            ],
            "alert_rule_test": [
                alert("1d", "FeniceCertificateExpiringSoon", Some("warning")),
                alert("1d", "FeniceCertificateExpired", None),
                alert("12d", "FeniceCertificateExpired", Some("critical")),
                alert("34d", "FeniceDrillOverdue", None),
                alert("36d", "FeniceDrillOverdue", Some("warning")),
                alert("30m", "FeniceBackupOlderThanRPO", None),
                alert("2h", "FeniceBackupOlderThanRPO", Some("warning")),
                alert("2h", "FeniceTenantNeverBackedUp", None),
            ],
        }, {
            "interval": "1m",
            "input_series": [
                {"series": format!("fenice_witness_lease_age_seconds{plan}"), "values": "0+60x60"},
                {"series": format!("fenice_witness_lease_duration_seconds{plan}"), "values": "30x60"},
                {"series": format!("fenice_witness_reachable{plan}"), "values": "1x9 0x50"},
            ],
            "alert_rule_test": [
                witness("0m", "FeniceWitnessLeaseNotRenewed", None),
                witness("5m", "FeniceWitnessLeaseNotRenewed", None),
                witness("10m", "FeniceWitnessLeaseNotRenewed", Some("critical")),
                witness("10m", "FeniceWitnessUnreachable", None),
                witness("15m", "FeniceWitnessUnreachable", Some("critical")),
            ],
        }],
    });
    std::fs::write(dir.path().join("tests.json"), tests.to_string()).unwrap();
    let tested = promtool(dir.path(), &["test", "rules", "tests.json"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}
