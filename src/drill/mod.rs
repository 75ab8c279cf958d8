//! Drills: which tenants a drill takes, the guard that keeps a drill away from
//! the production SdI, and the verdict per tenant and for the drill. Pure: the
//! Drill controller restores, starts and measures, then asks these.

pub mod certificate;
pub mod report;
pub mod test_invoice;

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::time::Duration;

use kube::ResourceExt;
use kube::core::SelectorExt;

use crate::api::common::TenantRef;
use crate::api::drill::Sample;
use crate::api::plan::TenantSelection;
use crate::api::tenant::{InvoicingTenant, SdiEnvironment};

/// Which tenants a FailoverPlan selects: in its namespaces (any, when it
/// names none) and matching its label selector (every one, without).
pub struct Matcher<'a> {
    namespaces: &'a [String],
    selector: Option<kube::core::Selector>,
}

impl<'a> Matcher<'a> {
    pub fn new(selection: &'a TenantSelection) -> Result<Matcher<'a>, String> {
        let selector = match &selection.selector {
            Some(s) => Some(s.clone().try_into().map_err(|e| format!("the plan's tenant selector: {e}"))?),
            None => None,
        };
        Ok(Matcher { namespaces: &selection.namespaces, selector })
    }

    pub fn matches(&self, tenant: &InvoicingTenant) -> bool {
        let empty = BTreeMap::new();
        let labels = tenant.metadata.labels.as_ref().unwrap_or(&empty);
        (self.namespaces.is_empty() || tenant.namespace().is_some_and(|ns| self.namespaces.contains(&ns)))
            && self.selector.as_ref().is_none_or(|s| s.matches(labels))
    }
}

/// The plan's tenants the sample takes, in a stable order. `seed` (the
/// drill's uid) makes a percent sample differ between drills and repeat
/// within one.
pub fn select<'a, T: Borrow<InvoicingTenant>>(
    selection: &TenantSelection,
    tenants: &'a [T],
    sample: &Sample,
    seed: &str,
) -> Result<Vec<&'a InvoicingTenant>, String> {
    let plan = Matcher::new(selection)?;
    let mut planned: Vec<&InvoicingTenant> = tenants.iter().map(Borrow::borrow).filter(|t| plan.matches(t)).collect();
    planned.sort_by_key(|t| (t.namespace(), t.name_any()));
    let chosen: Vec<&InvoicingTenant> = if let Some(percent) = sample.percent {
        let wanted = (planned.len() * percent.min(100) as usize).div_ceil(100).max(1).min(planned.len());
        let mut shuffled = planned;
        shuffled.sort_by_cached_key(|t| {
            blake3::hash(format!("{seed}/{}/{}", t.namespace().unwrap_or_default(), t.name_any()).as_bytes())
                .to_hex()
                .to_string()
        });
        let mut taken: Vec<&InvoicingTenant> = shuffled.into_iter().take(wanted).collect();
        taken.sort_by_key(|t| (t.namespace(), t.name_any()));
        taken
    } else if let Some(tiers) = &sample.tiers {
        planned.into_iter().filter(|t| tiers.contains(&t.spec.tier)).collect()
    } else if let Some(names) = &sample.tenants {
        let missing: Vec<String> = names
            .iter()
            .filter(|r| {
                !planned.iter().any(|t| t.namespace().as_deref() == Some(&r.namespace) && t.name_any() == r.name)
            })
            .map(|r| format!("{}/{}", r.namespace, r.name))
            .collect();
        if !missing.is_empty() {
            return Err(format!("not tenants of the plan: {}", missing.join(", ")));
        }
        planned
            .into_iter()
            .filter(|t| names.iter().any(|r| t.namespace().as_deref() == Some(&r.namespace) && t.name_any() == r.name))
            .collect()
    } else {
        planned
    };
    if chosen.is_empty() {
        return Err("the sample takes no tenant: the plan selects none, or none of the sample's".into());
    }
    Ok(chosen)
}

/// Refuses a test endpoint that any tenant declares as a Production channel:
/// a drill must never transmit to the real SdI.
pub fn guard_endpoint<T: Borrow<InvoicingTenant>>(endpoint: &str, tenants: &[T]) -> Result<(), String> {
    let normalized = |url: &str| url.trim_end_matches('/').to_ascii_lowercase();
    for tenant in tenants.iter().map(Borrow::borrow) {
        for channel in &tenant.spec.sdi.channels {
            if channel.environment == SdiEnvironment::Production
                && normalized(&channel.endpoint) == normalized(endpoint)
            {
                return Err(format!(
                    "sdiTestEndpoint {endpoint} is tenant {}'s Production SdI channel at site {}: a drill never \
                     transmits to production; use the SdI simulator or SdI's test environment",
                    tenant.name_any(),
                    channel.site
                ));
            }
        }
    }
    Ok(())
}

/// What a drill measured for one tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Measured {
    pub tenant: TenantRef,
    /// When its restore started and when its copy was torn down.
    pub started: jiff::Timestamp,
    pub ended: jiff::Timestamp,
    /// The snapshot restored, when one was.
    pub snapshot: Option<String>,
    /// From the start of its restore until its app served.
    pub rto: Duration,
    /// The age of the backup it was restored from, at the drill's start.
    pub rpo: Duration,
    /// `Err` with what failed: the restore, the verification, the app.
    pub outcome: Result<(), String>,
    /// What passed but needs attention.
    pub warnings: Vec<String>,
    /// The test invoice the copy issued and transmitted to the test endpoint.
    pub test_invoice: Option<String>,
    /// The copy's app address, when it is kept for inspection.
    pub kept: Option<String>,
}

/// The series a drill's test invoice goes in, and the number it must get: the
/// next after the last one the backup recorded, in the first series recorded
/// (a tenant that never issued one: series `DRILL`, number 1).
pub fn next_invoice(last_numbers: &BTreeMap<String, i64>) -> (String, i64) {
    last_numbers.iter().next().map_or(("DRILL".to_owned(), 1), |(series, last)| (series.clone(), last + 1))
}

/// A backup's age at the drill's start (its RPO) and, when it is dated after
/// that start, a warning: the clocks of the host that took it and of this
/// operator disagree, or one was set back. Its age then counts as zero, not as
/// the size of the disagreement, which would fail a drill on a clock.
pub fn backup_age(drill_start: jiff::Timestamp, taken: jiff::Timestamp, snapshot: &str) -> (Duration, Option<String>) {
    let age = drill_start.duration_since(taken);
    if !age.is_negative() {
        return (age.unsigned_abs(), None);
    }
    let ahead = crate::api::common::Duration::from_std(age.unsigned_abs());
    let warning = format!(
        "snapshot {snapshot} is dated {} after the drill started ({taken} against {drill_start}): the clocks of \
         the host that took it and of this operator disagree, or one was set back; its RPO counts as 0",
        ahead.as_str()
    );
    (Duration::ZERO, Some(warning))
}

/// Why a tenant failed (`None`: it passed): what failed, or the objective missed.
pub fn verdict(measured: &Measured, objectives: &crate::api::common::Objectives) -> Option<String> {
    if let Err(why) = &measured.outcome {
        return Some(why.clone());
    }
    let fmt = |d: Duration| crate::api::common::Duration::from_std(d).as_str().to_owned();
    let mut missed = Vec::new();
    if measured.rto > objectives.rto.as_std() {
        missed.push(format!("RTO {} over the objective {}", fmt(measured.rto), objectives.rto.as_str()));
    }
    if measured.rpo > objectives.rpo.as_std() {
        missed.push(format!(
            "RPO {} over the objective {} (the newest backup was that old)",
            fmt(measured.rpo),
            objectives.rpo.as_str()
        ));
    }
    (!missed.is_empty()).then(|| missed.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::common::Tier;

    fn tenants() -> Vec<InvoicingTenant> {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/manifests/examples/tenants.yaml")).unwrap();
        let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).unwrap();
        docs.into_iter().filter(|d| !d.is_null()).map(|d| serde_json::from_value(d).unwrap()).collect()
    }

    fn plan_selection() -> TenantSelection {
        serde_json::from_value(serde_json::json!({
            "selector": {"matchLabels": {"fenice.io/plan": "westpole-to-azure"}}, "namespaces": ["invoicing"],
        }))
        .unwrap()
    }

    fn names(chosen: &[&InvoicingTenant]) -> Vec<String> {
        chosen.iter().map(|t| t.name_any()).collect()
    }

    #[test]
    fn a_sample_takes_tiers_names_a_share_or_all_of_the_plans_tenants() {
        let all = tenants();
        let sample = |v: serde_json::Value| serde_json::from_value::<Sample>(v).unwrap();
        let gold = select(&plan_selection(), &all, &sample(serde_json::json!({"tiers": ["Gold"]})), "s").unwrap();
        assert_eq!(names(&gold), ["studio-rossi"]);
        let every = select(&plan_selection(), &all, &sample(serde_json::json!({"all": true})), "s").unwrap();
        assert_eq!(names(&every), ["comune-di-tivoli", "geom-bianchi", "studio-rossi"]);
        let third = select(&plan_selection(), &all, &sample(serde_json::json!({"percent": 30})), "drill-1").unwrap();
        assert_eq!(third.len(), 1, "30% of 3 is at least one");
        let again = select(&plan_selection(), &all, &sample(serde_json::json!({"percent": 30})), "drill-1").unwrap();
        assert_eq!(names(&third), names(&again), "the same drill takes the same sample");
        let named = sample(serde_json::json!({"tenants": [{"namespace": "invoicing", "name": "ghost"}]}));
        assert!(select(&plan_selection(), &all, &named, "s").unwrap_err().contains("invoicing/ghost"));
        let other: TenantSelection = serde_json::from_value(serde_json::json!({"namespaces": ["elsewhere"]})).unwrap();
        assert!(select(&other, &all, &sample(serde_json::json!({"all": true})), "s").is_err());
        assert_eq!(all[0].spec.tier, Tier::Gold);
    }

    #[test]
    fn a_backup_dated_after_the_drill_started_is_zero_old_with_a_warning() {
        let start: jiff::Timestamp = "2026-12-07T01:00:00Z".parse().unwrap();
        let before: jiff::Timestamp = "2026-12-07T00:59:30Z".parse().unwrap();
        assert_eq!(backup_age(start, before, "ab12"), (Duration::from_secs(30), None));
        let after: jiff::Timestamp = "2026-12-07T02:00:00Z".parse().unwrap();
        let (age, warning) = backup_age(start, after, "ab12");
        assert_eq!(age, Duration::ZERO, "not the hour the clocks disagree by");
        let warning = warning.expect("a warning");
        assert!(warning.contains("snapshot ab12 is dated 1h after the drill started"), "{warning}");
    }

    #[test]
    fn a_production_endpoint_is_refused_before_anything_starts() {
        let all = tenants();
        let refused = guard_endpoint("https://sdi-rome.fatture.example.it/ws/", &all).unwrap_err();
        assert!(refused.contains("Production SdI channel"), "{refused}");
        assert!(guard_endpoint("http://127.0.0.1:9000/sdi", &all).is_ok());
    }

    #[test]
    fn the_test_invoice_follows_the_last_recorded_number() {
        assert_eq!(next_invoice(&BTreeMap::new()), ("DRILL".to_owned(), 1));
        let recorded = BTreeMap::from([("2026".to_owned(), 41), ("PA".to_owned(), 7)]);
        assert_eq!(next_invoice(&recorded), ("2026".to_owned(), 42));
    }

    #[test]
    fn a_tenant_fails_on_an_error_or_a_missed_objective() {
        let objectives: crate::api::common::Objectives =
            serde_json::from_value(serde_json::json!({"rpo": "15m", "rto": "5m"})).unwrap();
        let tenant = TenantRef { namespace: "invoicing".into(), name: "acme".into() };
        let ok = Measured {
            tenant: tenant.clone(),
            started: jiff::Timestamp::UNIX_EPOCH,
            ended: jiff::Timestamp::UNIX_EPOCH,
            snapshot: None,
            rto: Duration::from_secs(40),
            rpo: Duration::from_secs(60),
            outcome: Ok(()),
            warnings: Vec::new(),
            test_invoice: None,
            kept: None,
        };
        assert_eq!(verdict(&ok, &objectives), None);
        let slow = Measured { rto: Duration::from_secs(400), rpo: Duration::from_secs(3600), ..ok.clone() };
        let why = verdict(&slow, &objectives).unwrap();
        assert!(
            why.contains("RTO 6m40s over the objective 5m") && why.contains("RPO 1h over the objective 15m"),
            "{why}"
        );
        let broken = Measured { outcome: Err("table invoices: recorded 7 rows, restored 6 rows".into()), ..ok };
        assert!(verdict(&broken, &objectives).unwrap().contains("recorded 7 rows"));
    }
}
