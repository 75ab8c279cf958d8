//! A failover's report, from its persisted state: the verdict, each tenant's
//! RTO and RPO against its objectives, the evidence (snapshots, epoch,
//! times), and a timeline picture with a lane per tenant and a bar per step.
//! As JSON, Markdown, or a self-contained HTML page.

use std::collections::HashMap;
use std::fmt::Write;
use std::time::Duration;

use serde::Serialize;

use super::clock::WallTime;
use super::machine::{FailoverState, Phase, TenantStep};
use crate::api::common::TenantRef;
use crate::report_page::{self, Bar, Lane, Page, escape};

/// The report's content.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub failover: String,
    pub plan: String,
    pub trigger: String,
    pub source: String,
    pub target: String,
    pub epoch: Option<u64>,
    /// `succeeded`, `failed`, `aborted`, or the phase of one under way.
    pub verdict: String,
    pub declared_loss: String,
    pub completed: Option<String>,
    pub tenants_total: u32,
    pub tenants_succeeded: u32,
    pub tenants_failed: u32,
    /// Tenants over their RTO or RPO objective.
    pub objectives_missed: u32,
    pub tenants: Vec<TenantRow>,
}

/// One tenant's line and its steps.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TenantRow {
    pub namespace: String,
    pub tenant: String,
    pub wave: String,
    pub step: TenantStep,
    pub rto_seconds: Option<f64>,
    pub rto_objective: Option<f64>,
    pub rpo_seconds: Option<f64>,
    pub rpo_objective: Option<f64>,
    /// Both measured and within the objectives given.
    pub objectives_met: bool,
    pub snapshot: Option<String>,
    pub error: Option<String>,
    pub steps: Vec<StepRow>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StepRow {
    pub step: TenantStep,
    pub began: String,
    pub ended: Option<String>,
    #[serde(skip)]
    span: (f64, Option<f64>),
}

/// A tenant's objectives: RPO, then RTO.
pub type Objectives = HashMap<TenantRef, (Duration, Duration)>;

fn rfc3339(t: WallTime) -> String {
    jiff::Timestamp::from_millisecond(t.unix_millis() as i64).map(|t| t.to_string()).unwrap_or_default()
}

fn seconds(t: WallTime) -> f64 {
    t.unix_millis() as f64 / 1000.0
}

/// The report of `state`, judged against `objectives`.
pub fn of(state: &FailoverState, objectives: &Objectives) -> Report {
    let verdict = match state.phase {
        Phase::Succeeded => "succeeded".to_owned(),
        Phase::Failed => "failed".to_owned(),
        Phase::Aborted => "aborted".to_owned(),
        other => format!("under way ({other:?})"),
    };
    let mut tenants = Vec::new();
    for wave in &state.waves {
        for t in &wave.tenants {
            let (rpo_objective, rto_objective) = objectives.get(&t.tenant).copied().unzip();
            let rto = t.rto_ms.map(|ms| ms as f64 / 1000.0);
            let rpo = t.rpo_ms.map(|ms| ms as f64 / 1000.0);
            let within = |measured: Option<f64>, objective: Option<Duration>| match (measured, objective) {
                (Some(m), Some(o)) => m <= o.as_secs_f64(),
                (Some(_), None) => true,
                (None, _) => false,
            };
            let steps = t
                .timeline
                .iter()
                .map(|s| StepRow {
                    step: s.step,
                    began: rfc3339(s.began),
                    ended: s.ended.map(rfc3339),
                    span: (seconds(s.began), s.ended.map(seconds)),
                })
                .collect();
            tenants.push(TenantRow {
                namespace: t.tenant.namespace.clone(),
                tenant: t.tenant.name.clone(),
                wave: wave.name.clone(),
                step: t.step,
                rto_seconds: rto,
                rto_objective: rto_objective.map(|d| d.as_secs_f64()),
                rpo_seconds: rpo,
                rpo_objective: rpo_objective.map(|d| d.as_secs_f64()),
                objectives_met: t.step == TenantStep::Succeeded
                    && within(rto, rto_objective)
                    && within(rpo, rpo_objective),
                snapshot: t.snapshot_id.clone(),
                error: t.error.clone(),
                steps,
            });
        }
    }
    let (succeeded, failed, total) = state.counts();
    Report {
        failover: state.name.clone(),
        plan: state.plan.clone(),
        trigger: format!("{:?}", state.trigger),
        source: state.source.clone(),
        target: state.target.clone(),
        epoch: state.epoch,
        verdict,
        declared_loss: rfc3339(state.declared_loss),
        completed: state.completed_at.map(rfc3339),
        tenants_total: total,
        tenants_succeeded: succeeded,
        tenants_failed: failed,
        objectives_missed: tenants.iter().filter(|t| t.step == TenantStep::Succeeded && !t.objectives_met).count()
            as u32,
        tenants,
    }
}

fn shown(value: Option<f64>) -> String {
    value.map_or("-".to_owned(), |v| format!("{v:.1} s"))
}

/// The report in Markdown.
pub fn markdown(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Failover {}: {}\n", report.failover, report.verdict.to_uppercase());
    let _ = writeln!(out, "- plan: {} ({}), {} → {}", report.plan, report.trigger, report.source, report.target);
    let _ = writeln!(out, "- epoch: {}", report.epoch.map_or("-".into(), |e| e.to_string()));
    let _ = writeln!(out, "- source declared lost: {}", report.declared_loss);
    let _ = writeln!(out, "- completed: {}", report.completed.as_deref().unwrap_or("not yet"));
    let _ = writeln!(
        out,
        "- tenants: {} succeeded, {} failed, of {}; {} over an objective\n",
        report.tenants_succeeded, report.tenants_failed, report.tenants_total, report.objectives_missed
    );
    let _ = writeln!(out, "| tenant | wave | step | RTO | RTO objective | RPO | RPO objective | snapshot | error |");
    let _ = writeln!(out, "|---|---|---|---:|---:|---:|---:|---|---|");
    for t in &report.tenants {
        let _ = writeln!(
            out,
            "| {}/{} | {} | {:?} | {} | {} | {} | {} | {} | {} |",
            t.namespace,
            t.tenant,
            t.wave,
            t.step,
            shown(t.rto_seconds),
            shown(t.rto_objective),
            shown(t.rpo_seconds),
            shown(t.rpo_objective),
            t.snapshot.as_deref().unwrap_or("-"),
            t.error.as_deref().unwrap_or("").replace('|', "\\|").replace('\n', " "),
        );
    }
    out
}

const STEP_COLOURS: [(TenantStep, &str, &str); 6] = [
    (TenantStep::Restoring, "#36c", "restore"),
    (TenantStep::Reconciling, "#9c3", "reconcile with SdI"),
    (TenantStep::Starting, "#c93", "start"),
    (TenantStep::Switching, "#939", "switch"),
    (TenantStep::Verifying, "#2a2", "verify"),
    (TenantStep::RollingBack, "#c22", "roll back"),
];

/// A lane per tenant, a bar per step it went through.
pub fn timeline(report: &Report) -> String {
    let lanes: Vec<Lane> = report
        .tenants
        .iter()
        .map(|t| Lane {
            label: format!("{} {}/{}", t.wave, t.namespace, t.tenant),
            bars: t
                .steps
                .iter()
                .map(|s| {
                    let (colour, name) = STEP_COLOURS
                        .iter()
                        .find(|(step, _, _)| *step == s.step)
                        .map_or(("#999", "other"), |(_, c, n)| (*c, *n));
                    // NB: a step still running (or cut off) ends where its lane is looked at: its start.
                    Bar { start: s.span.0, end: s.span.1.unwrap_or(s.span.0), colour, title: name.to_owned() }
                })
                .collect(),
        })
        .collect();
    let legend: Vec<(&str, &str)> = STEP_COLOURS.iter().map(|(_, c, n)| (*c, *n)).collect();
    report_page::svg("failover timeline", &lanes, &legend)
}

/// The report as one self-contained HTML page with the timeline picture.
pub fn html(report: &Report) -> String {
    let mut rows = String::new();
    for t in &report.tenants {
        let failed = t.step != TenantStep::Succeeded || !t.objectives_met;
        let _ = writeln!(
            rows,
            "<tr class=\"{}\"><td>{}/{}</td><td>{}</td><td>{:?}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td><code>{}</code></td><td>{}</td></tr>",
            if failed { "failed" } else { "passed" },
            escape(&t.namespace),
            escape(&t.tenant),
            escape(&t.wave),
            t.step,
            shown(t.rto_seconds),
            shown(t.rto_objective),
            shown(t.rpo_seconds),
            shown(t.rpo_objective),
            escape(t.snapshot.as_deref().unwrap_or("-")),
            escape(t.error.as_deref().unwrap_or("")),
        );
    }
    let summary_html = format!(
        "Plan {} ({}), {} → {}, epoch {}; the source declared lost at {}; completed {}; {} of {} tenants \
         succeeded, {} failed, {} over an objective.",
        escape(&report.plan),
        escape(&report.trigger),
        escape(&report.source),
        escape(&report.target),
        report.epoch.map_or("-".into(), |e| e.to_string()),
        escape(&report.declared_loss),
        escape(report.completed.as_deref().unwrap_or("not yet")),
        report.tenants_succeeded,
        report.tenants_total,
        report.tenants_failed,
        report.objectives_missed,
    );
    report_page::html(&Page {
        kind: "Failover",
        name: &report.failover,
        verdict: &report.verdict,
        good: report.verdict == "succeeded",
        summary_html,
        timeline_svg: timeline(report),
        note: Some(
            "RTO: from the source declared lost to the tenant verified at the target. RPO: the work after the last \
             restored write.",
        ),
        headers: &["tenant", "wave", "step", "RTO", "RTO objective", "RPO", "RPO objective", "snapshot", "error"],
        rows_html: rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failover::machine::{StepSpan, TenantState};

    fn at(secs: u64) -> WallTime {
        WallTime::from_unix_millis(1_800_000_000_000 + secs * 1000)
    }

    fn state() -> FailoverState {
        let tenant = |name: &str, rto: u64, rpo_ms: u64| {
            let steps = [TenantStep::Restoring, TenantStep::Reconciling, TenantStep::Starting];
            let timeline = steps
                .iter()
                .enumerate()
                .map(|(i, step)| StepSpan { step: *step, began: at(2 * i as u64), ended: Some(at(2 * i as u64 + 2)) })
                .collect();
            TenantState {
                step: TenantStep::Succeeded,
                snapshot_id: Some(format!("snap-{name}")),
                rto_ms: Some(rto * 1000),
                rpo_ms: Some(rpo_ms),
                timeline,
                ..TenantState::waiting(TenantRef { namespace: "invoicing".into(), name: name.into() })
            }
        };
        let mut failed = tenant("geom-<b>", 0, 0);
        (failed.step, failed.rto_ms, failed.rpo_ms, failed.error) =
            (TenantStep::Failed, None, None, Some("restore: no backup".into()));
        serde_json::from_value(serde_json::json!({
            "name": "westpole-lost", "plan": "westpole-to-azure", "trigger": "Automatic", "source": "westpole",
            "target": "azure", "phase": "Failed", "epoch": 2, "declaredLoss": at(0), "completedAt": at(60),
            "waves": [{"name": "gold", "parallelism": 4, "gate": {"maxFailedTenants": 0, "requireApproval": false},
                       "tenants": [tenant("studio-rossi", 8, 300), tenant("slow", 400, 200), failed]}],
        }))
        .unwrap()
    }

    fn objectives() -> Objectives {
        ["studio-rossi", "slow", "geom-<b>"]
            .into_iter()
            .map(|n| {
                let t = TenantRef { namespace: "invoicing".into(), name: n.into() };
                (t, (Duration::from_secs(60), Duration::from_secs(300)))
            })
            .collect()
    }

    #[test]
    fn the_report_judges_each_tenant_against_its_objectives() {
        let report = of(&state(), &objectives());
        assert_eq!((report.verdict.as_str(), report.epoch, report.tenants_failed), ("failed", Some(2), 1));
        assert_eq!(report.objectives_missed, 1, "slow took 400 s against 300 s");
        let met: Vec<bool> = report.tenants.iter().map(|t| t.objectives_met).collect();
        assert_eq!(met, [true, false, false]);
        let md = markdown(&report);
        assert!(md.starts_with("# Failover westpole-lost: FAILED"), "{md}");
        assert!(md.contains(
            "| invoicing/studio-rossi | gold | Succeeded | 8.0 s | 300.0 s | 0.3 s | 60.0 s | snap-studio-rossi |"
        ));
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["tenants"][0]["steps"][1]["step"], "Reconciling");
    }

    #[test]
    fn the_html_page_draws_a_bar_per_step_and_escapes_names() {
        let page = html(&of(&state(), &objectives()));
        assert_eq!(page.matches("<rect class=\"bar\"").count(), 9, "three steps of three tenants");
        assert!(page.contains("fill=\"#36c\"") && page.contains("restore"), "{page}");
        assert!(page.contains("geom-&lt;b&gt;") && !page.contains("geom-<b>"));
        assert!(page.contains("<span class=\"bad\">failed</span>"), "{page}");
    }
}
