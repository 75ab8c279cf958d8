//! A drill's report, from its status: the verdict, each tenant's measured RTO
//! and RPO against its objectives, the evidence (snapshots, times), and a
//! timeline picture (inline SVG, a lane per tenant). As JSON, Markdown, or a
//! self-contained HTML page an auditor can open anywhere.

use std::fmt::Write;

use jiff::Timestamp;
use kube::ResourceExt;
use serde::Serialize;

use crate::api::drill::{Drill, DrillPhase};
use crate::report_page::{self, Bar, Lane, Page, escape};

/// The report's content.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub drill: String,
    pub plan: String,
    /// `passed`, `failed`, or the phase of a drill still under way.
    pub verdict: String,
    pub started: Option<String>,
    pub completed: Option<String>,
    pub sdi_test_endpoint: String,
    pub tenants_total: u32,
    pub tenants_passed: u32,
    pub tenants: Vec<TenantRow>,
}

/// One tenant's line.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TenantRow {
    pub namespace: String,
    pub tenant: String,
    pub passed: bool,
    pub rto_seconds: f64,
    pub rto_objective: String,
    pub rpo_seconds: u64,
    pub rpo_objective: String,
    pub snapshot: Option<String>,
    pub started: String,
    pub ended: String,
    pub reason: Option<String>,
    pub warnings: Vec<String>,
    pub test_invoice: Option<String>,
}

impl TenantRow {
    /// Why it failed and what needs attention, on one line.
    fn remarks(&self) -> String {
        let warnings = self.warnings.iter().map(|w| format!("warning: {w}"));
        self.reason.iter().cloned().chain(warnings).collect::<Vec<_>>().join("; ")
    }
}

/// The report of `drill` as its status stands.
pub fn of(drill: &Drill) -> Report {
    let status = drill.status.clone().unwrap_or_default();
    let verdict = match status.phase {
        DrillPhase::Passed => "passed".to_owned(),
        DrillPhase::Failed => "failed".to_owned(),
        other => format!("under way ({other:?})"),
    };
    let tenants = status
        .results
        .iter()
        .map(|r| TenantRow {
            namespace: r.tenant.namespace.clone(),
            tenant: r.tenant.name.clone(),
            passed: r.passed,
            rto_seconds: r.rto_millis as f64 / 1000.0,
            rto_objective: r.objectives.rto.as_str().to_owned(),
            rpo_seconds: r.rpo_seconds,
            rpo_objective: r.objectives.rpo.as_str().to_owned(),
            snapshot: r.snapshot.clone(),
            started: r.start_time.0.to_string(),
            ended: r.end_time.0.to_string(),
            reason: r.reason.clone(),
            warnings: r.warnings.clone(),
            test_invoice: r.test_invoice.clone(),
        })
        .collect();
    Report {
        drill: drill.name_any(),
        plan: drill.spec.plan.clone(),
        verdict,
        started: status.start_time.map(|t| t.0.to_string()),
        completed: status.completion_time.map(|t| t.0.to_string()),
        sdi_test_endpoint: drill.spec.sdi_test_endpoint.clone(),
        tenants_total: status.tenants_total,
        tenants_passed: status.tenants_passed,
        tenants,
    }
}

/// The report in Markdown.
pub fn markdown(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Drill {}: {}\n", report.drill, report.verdict.to_uppercase());
    let _ = writeln!(out, "- plan: {}", report.plan);
    let _ = writeln!(out, "- started: {}", report.started.as_deref().unwrap_or("not yet"));
    let _ = writeln!(out, "- completed: {}", report.completed.as_deref().unwrap_or("not yet"));
    let _ = writeln!(out, "- SdI endpoint of the copies: {}", report.sdi_test_endpoint);
    let _ = writeln!(out, "- tenants passed: {}/{}\n", report.tenants_passed, report.tenants_total);
    let _ = writeln!(
        out,
        "| tenant | verdict | RTO | RTO objective | RPO | RPO objective | snapshot | test invoice | why |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---|---|---|");
    for t in &report.tenants {
        let _ = writeln!(
            out,
            "| {}/{} | {} | {:.1} s | {} | {} s | {} | {} | {} | {} |",
            t.namespace,
            t.tenant,
            if t.passed { "passed" } else { "FAILED" },
            t.rto_seconds,
            t.rto_objective,
            t.rpo_seconds,
            t.rpo_objective,
            t.snapshot.as_deref().unwrap_or("-"),
            t.test_invoice.as_deref().unwrap_or("-"),
            t.remarks().replace('|', "\\|").replace('\n', " "),
        );
    }
    out
}

/// The report as one self-contained HTML page with the timeline picture.
pub fn html(report: &Report) -> String {
    let mut rows = String::new();
    for t in &report.tenants {
        let _ = writeln!(
            rows,
            "<tr class=\"{}\"><td>{}/{}</td><td>{}</td><td>{:.1} s</td><td>{}</td><td>{} s</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
            if t.passed { "passed" } else { "failed" },
            escape(&t.namespace),
            escape(&t.tenant),
            if t.passed { "passed" } else { "FAILED" },
            t.rto_seconds,
            escape(&t.rto_objective),
            t.rpo_seconds,
            escape(&t.rpo_objective),
            escape(t.snapshot.as_deref().unwrap_or("-")),
            escape(t.test_invoice.as_deref().unwrap_or("-")),
            escape(&t.remarks()),
        );
    }
    let summary_html = format!(
        "Plan {}; started {}; completed {}; the copies sent to {}; {}/{} tenants passed.",
        escape(&report.plan),
        escape(report.started.as_deref().unwrap_or("not yet")),
        escape(report.completed.as_deref().unwrap_or("not yet")),
        escape(&report.sdi_test_endpoint),
        report.tenants_passed,
        report.tenants_total,
    );
    report_page::html(&Page {
        kind: "Drill",
        name: &report.drill,
        verdict: &report.verdict,
        good: report.verdict == "passed",
        summary_html,
        timeline_svg: timeline(report),
        note: None,
        headers: &[
            "tenant",
            "verdict",
            "RTO",
            "RTO objective",
            "RPO",
            "RPO objective",
            "snapshot",
            "test invoice",
            "why",
        ],
        rows_html: rows,
    })
}

/// A lane per tenant, its bar from the start of its restore to its teardown,
/// green when it passed and red when not, on a shared time axis in seconds.
pub fn timeline(report: &Report) -> String {
    let at = |s: &str| s.parse::<Timestamp>().map(|t| t.as_millisecond() as f64 / 1000.0).unwrap_or(0.0);
    let lanes: Vec<Lane> = report
        .tenants
        .iter()
        .map(|t| Lane {
            label: format!("{}/{}", t.namespace, t.tenant),
            bars: vec![Bar {
                start: at(&t.started),
                end: at(&t.ended),
                colour: if t.passed { PASSED } else { FAILED },
                title: t.tenant.clone(),
            }],
        })
        .collect();
    report_page::svg("drill timeline", &lanes, &[(PASSED, "passed"), (FAILED, "failed")])
}

const PASSED: &str = "#2a2";
const FAILED: &str = "#c22";

#[cfg(test)]
mod tests {
    use super::*;

    fn drill() -> Drill {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "fenice.io/v1alpha1", "kind": "Drill", "metadata": {"name": "gold-drill"},
            "spec": {"plan": "westpole-to-azure", "sample": {"all": true}, "sdiTestEndpoint": "http://127.0.0.1:9/sdi"},
            "status": {
                "phase": "Failed", "startTime": "2026-11-23T10:00:00Z", "completionTime": "2026-11-23T10:01:00Z",
                "tenantsTotal": 2, "tenantsPassed": 1, "tenantsFailed": 1,
                "results": [
                    {"tenant": {"namespace": "invoicing", "name": "studio-rossi"}, "passed": true,
                     "startTime": "2026-11-23T10:00:00Z", "endTime": "2026-11-23T10:00:20Z",
                     "rtoMillis": 18500, "rpoSeconds": 40, "objectives": {"rpo": "1m", "rto": "5m"}, "snapshot": "ab12",
                     "warnings": ["repository r: data/ab/ab12: written over"], "testInvoice": "2026/8 sent"},
                    {"tenant": {"namespace": "invoicing", "name": "geom-<b>"}, "passed": false,
                     "startTime": "2026-11-23T10:00:20Z", "endTime": "2026-11-23T10:01:00Z",
                     "rtoMillis": 40000, "rpoSeconds": 0, "objectives": {"rpo": "6h", "rto": "4h"},
                     "reason": "table invoices: recorded 7 rows, restored 6 rows"},
                ],
            },
        }))
        .unwrap()
    }

    #[test]
    fn the_report_names_the_verdict_each_tenants_figures_and_why_one_failed() {
        let report = of(&drill());
        assert_eq!((report.verdict.as_str(), report.tenants.len()), ("failed", 2));
        assert_eq!(report.tenants[0].rto_seconds, 18.5);
        let md = markdown(&report);
        assert!(md.starts_with("# Drill gold-drill: FAILED"), "{md}");
        assert!(
            md.contains("| invoicing/studio-rossi | passed | 18.5 s | 5m | 40 s | 1m | ab12 | 2026/8 sent | warning: repository r:"),
            "{md}"
        );
        assert!(md.contains("recorded 7 rows, restored 6 rows"), "{md}");
    }

    #[test]
    fn the_html_page_carries_a_timeline_with_a_bar_per_tenant_and_escapes_names() {
        let page = html(&of(&drill()));
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert_eq!(page.matches("<rect class=\"bar\"").count(), 2, "{page}");
        assert!(page.contains("fill=\"#c22\"") && page.contains("fill=\"#2a2\""));
        assert!(page.contains("geom-&lt;b&gt;") && !page.contains("geom-<b>"), "names are escaped");
        // The second tenant's bar starts where the first one's ends, 20 s into a 60 s axis.
        assert!(page.contains(">60.0 s</text>"), "{page}");
    }
}
