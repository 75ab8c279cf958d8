//! The lab's drill and failover reports, as the pages `fenice drill report`
//! writes for a Drill: `drill.html` and `failover.html` beside `lab.json`.

use super::{DrillSummary, NAMESPACE, PLAN, RPO_OBJECTIVE, RTO_OBJECTIVE, tenant_ref};
use crate::api::common::Duration as SpecDuration;
use crate::drill::report::{self as drill_report, Report as DrillReport, TenantRow};
use crate::failover::machine::FailoverState;
use crate::failover::report::{self as failover_report, Objectives};

/// `drill.html` and `failover.html`.
pub fn render(drill: &DrillSummary, failover: &FailoverState, tenants: &[String]) -> Vec<(&'static str, String)> {
    let objectives: Objectives = tenants.iter().map(|t| (tenant_ref(t), (RPO_OBJECTIVE, RTO_OBJECTIVE))).collect();
    vec![
        ("drill.html", drill_report::html(&drill_page(drill))),
        ("failover.html", failover_report::html(&failover_report::of(failover, &objectives))),
    ]
}

fn drill_page(drill: &DrillSummary) -> DrillReport {
    let objective = |d| SpecDuration::from_std(d).as_str().to_owned();
    let row = TenantRow {
        namespace: NAMESPACE.into(),
        tenant: drill.tenant.clone(),
        passed: drill.passed,
        rto_seconds: drill.rto_seconds,
        rto_objective: objective(RTO_OBJECTIVE),
        rpo_seconds: drill.rpo_seconds.map_or(0, |s| s.round() as u64),
        rpo_objective: objective(RPO_OBJECTIVE),
        snapshot: drill.snapshot.clone(),
        started: drill.started.to_string(),
        ended: drill.ended.to_string(),
        reason: drill.error.clone(),
        warnings: Vec::new(),
        test_invoice: None,
    };
    DrillReport {
        drill: "lab-drill".into(),
        plan: PLAN.into(),
        verdict: if drill.passed { "passed" } else { "failed" }.into(),
        started: Some(drill.started.to_string()),
        completed: Some(drill.ended.to_string()),
        sdi_test_endpoint: "no SdI endpoint (the lab's drill verifies the copy without starting its app)".into(),
        tenants_total: 1,
        tenants_passed: u32::from(drill.passed),
        tenants: vec![row],
    }
}
