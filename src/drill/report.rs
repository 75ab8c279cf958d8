//! A drill's report, from its status: the verdict, each tenant's measured RTO
//! and RPO against its objectives, the evidence (snapshots, times), and a
//! timeline picture (inline SVG, a lane per tenant). As JSON, Markdown, or a
//! self-contained HTML page an auditor can open anywhere.

use std::fmt::Write;

use jiff::Timestamp;
use kube::ResourceExt;
use serde::Serialize;

use crate::api::drill::{Drill, DrillPhase};

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
    let _ = writeln!(out, "| tenant | verdict | RTO | RTO objective | RPO | RPO objective | snapshot | why |");
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---|---|");
    for t in &report.tenants {
        let _ = writeln!(
            out,
            "| {}/{} | {} | {:.1} s | {} | {} s | {} | {} | {} |",
            t.namespace,
            t.tenant,
            if t.passed { "passed" } else { "FAILED" },
            t.rto_seconds,
            t.rto_objective,
            t.rpo_seconds,
            t.rpo_objective,
            t.snapshot.as_deref().unwrap_or("-"),
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
            "<tr class=\"{}\"><td>{}/{}</td><td>{}</td><td>{:.1} s</td><td>{}</td><td>{} s</td><td>{}</td><td><code>{}</code></td><td>{}</td></tr>",
            if t.passed { "passed" } else { "failed" },
            escape(&t.namespace),
            escape(&t.tenant),
            if t.passed { "passed" } else { "FAILED" },
            t.rto_seconds,
            escape(&t.rto_objective),
            t.rpo_seconds,
            escape(&t.rpo_objective),
            escape(t.snapshot.as_deref().unwrap_or("-")),
            escape(&t.remarks()),
        );
    }
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Drill {name}: {verdict}</title>\n\
         <style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #999;padding:4px 8px}}\
         tr.failed td{{background:#fdd}}.verdict-passed{{color:#060}}.verdict-failed{{color:#b00}}</style></head><body>\n\
         <h1>Drill {name}: <span class=\"verdict-{verdict_class}\">{verdict}</span></h1>\n\
         <p>Plan {plan}; started {started}; completed {completed}; the copies sent to {endpoint}; {passed}/{total} tenants passed.</p>\n\
         <h2>Timeline</h2>\n{svg}\n<h2>Tenants</h2>\n<table><tr><th>tenant</th><th>verdict</th><th>RTO</th><th>RTO objective</th>\
         <th>RPO</th><th>RPO objective</th><th>snapshot</th><th>why</th></tr>\n{rows}</table>\n</body></html>\n",
        name = escape(&report.drill),
        verdict = escape(&report.verdict),
        verdict_class = if report.verdict == "passed" { "passed" } else { "failed" },
        plan = escape(&report.plan),
        started = escape(report.started.as_deref().unwrap_or("not yet")),
        completed = escape(report.completed.as_deref().unwrap_or("not yet")),
        endpoint = escape(&report.sdi_test_endpoint),
        passed = report.tenants_passed,
        total = report.tenants_total,
        svg = timeline(report),
    )
}

/// A lane per tenant, its bar from the start of its restore to its teardown,
/// green when it passed and red when not, on a shared time axis in seconds.
pub fn timeline(report: &Report) -> String {
    const WIDTH: f64 = 900.0;
    const LABEL: f64 = 220.0;
    const LANE: f64 = 24.0;
    let times: Vec<(f64, f64)> = report
        .tenants
        .iter()
        .map(|t| {
            let at = |s: &str| s.parse::<Timestamp>().map(|t| t.as_millisecond() as f64 / 1000.0).unwrap_or(0.0);
            (at(&t.started), at(&t.ended))
        })
        .collect();
    let origin = times.iter().map(|(s, _)| *s).fold(f64::INFINITY, f64::min);
    let end = times.iter().map(|(_, e)| *e).fold(f64::NEG_INFINITY, f64::max);
    let span = if times.is_empty() { 1.0 } else { (end - origin).max(1.0) };
    let scale = (WIDTH - LABEL - 20.0) / span;
    let height = LANE * report.tenants.len() as f64 + 40.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" role=\"img\" \
         aria-label=\"drill timeline\"><rect width=\"100%\" height=\"100%\" fill=\"#fff\"/>"
    );
    for (i, (t, (start, stop))) in report.tenants.iter().zip(&times).enumerate() {
        let y = 10.0 + LANE * i as f64;
        let x = LABEL + (start - origin) * scale;
        let w = ((stop - start) * scale).max(2.0);
        let colour = if t.passed { "#2a2" } else { "#c22" };
        let _ = write!(
            svg,
            "<text x=\"4\" y=\"{:.1}\" font-size=\"12\">{}/{}</text><rect class=\"bar\" x=\"{x:.1}\" y=\"{y:.1}\" \
             width=\"{w:.1}\" height=\"{:.1}\" fill=\"{colour}\"><title>{}: {:.1} s</title></rect>",
            y + 14.0,
            escape(&t.namespace),
            escape(&t.tenant),
            LANE - 6.0,
            escape(&t.tenant),
            stop - start,
        );
    }
    let axis = 10.0 + LANE * report.tenants.len() as f64 + 16.0;
    let _ = write!(
        svg,
        "<text x=\"{LABEL}\" y=\"{axis:.1}\" font-size=\"11\">0 s</text><text x=\"{:.1}\" y=\"{axis:.1}\" \
         font-size=\"11\" text-anchor=\"end\">{span:.1} s</text></svg>",
        WIDTH - 20.0
    );
    svg
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

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
                     "warnings": ["repository r: data/ab/ab12: written over"]},
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
            md.contains("| invoicing/studio-rossi | passed | 18.5 s | 5m | 40 s | 1m | ab12 | warning: repository r:"),
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
        assert!(page.contains("60.0 s</text></svg>"), "{page}");
    }
}
