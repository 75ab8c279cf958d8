//! The operator's Prometheus metrics, in the text exposition format: a few
//! counters and gauges do not need a metrics library.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// A counter family: name, type, help, and the value of one controller's counts.
type Family = (&'static str, &'static str, &'static str, fn(&Reconciles) -> String);
/// A gauge family: name, help, and the value of one repository's probe.
type Gauge = (&'static str, &'static str, fn(&(bool, bool)) -> bool);

#[derive(Clone, Copy, Debug, Default)]
struct Reconciles {
    total: u64,
    errors: u64,
    seconds: f64,
}

/// What the operator exports at /metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    reconciles: Mutex<BTreeMap<&'static str, Reconciles>>,
    /// Per repository: reachable, immutability in force.
    repositories: Mutex<BTreeMap<String, (bool, bool)>>,
    /// Per tenant (namespace, name): what its last backup and drill showed.
    tenants: Mutex<BTreeMap<(String, String), TenantFigures>>,
    /// Per FailoverPlan: what the last read of its witness lease found.
    witnesses: Mutex<BTreeMap<String, WitnessFigures>>,
}

/// What the operator saw of a plan's witness lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WitnessFigures {
    /// The witness Site.
    pub site: String,
    /// Whether its store answered the last read.
    pub reachable: bool,
    /// The lease's epoch, if the last read found one.
    pub epoch: Option<u64>,
    /// When the version of the lease last read was first seen (a renewal
    /// writes a new version); `None` without a lease.
    pub renewed_at: Option<std::time::Instant>,
    /// How long the plan says a lease holds without renewal.
    pub lease_duration: Duration,
}

/// The per-tenant figures.
#[derive(Clone, Copy, Debug, Default)]
struct TenantFigures {
    /// When its last backup succeeded, in Unix seconds.
    last_backup: Option<i64>,
    /// Its last drill: passed, RTO and RPO in seconds.
    drill: Option<(bool, f64, f64)>,
    /// Its objectives, RPO and RTO in seconds, for alerts to compare with.
    objectives: Option<(u64, u64)>,
    /// When its last drill ran, in Unix seconds.
    last_drill: Option<i64>,
    /// When the first of its SdI channel certificates expires, in Unix seconds,
    /// as its last drill read them.
    certificate_expiry: Option<i64>,
}

/// What a drill found of one tenant.
#[derive(Clone, Copy, Debug)]
pub struct Drilled {
    pub passed: bool,
    pub rto: Duration,
    pub rpo: Duration,
    /// When the drill ran.
    pub at: jiff::Timestamp,
    /// When the first of the tenant's channel certificates expires, if read.
    pub certificate_expiry: Option<jiff::Timestamp>,
}

/// A per-tenant gauge: name, help, and its value if the tenant has one.
type TenantGauge = (&'static str, &'static str, fn(&TenantFigures) -> Option<String>);

impl Metrics {
    /// One reconcile of `controller` took `took` and succeeded or not.
    pub fn reconciled(&self, controller: &'static str, took: Duration, ok: bool) {
        let mut all = self.reconciles.lock().unwrap_or_else(PoisonError::into_inner);
        let r = all.entry(controller).or_default();
        r.total += 1;
        r.errors += u64::from(!ok);
        r.seconds += took.as_secs_f64();
    }

    /// A repository's last probe.
    pub fn repository(&self, name: &str, reachable: bool, immutable: bool) {
        self.repositories
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_owned(), (reachable, immutable));
    }

    /// A repository that no longer exists.
    pub fn forget_repository(&self, name: &str) {
        self.repositories.lock().unwrap_or_else(PoisonError::into_inner).remove(name);
    }

    /// A backup of the tenant succeeded at `at`.
    pub fn backed_up(&self, namespace: &str, tenant: &str, at: jiff::Timestamp) {
        self.tenant(namespace, tenant, |f| f.last_backup = Some(at.as_second()));
    }

    /// A drill of the tenant passed or not, with what it measured.
    pub fn drilled(&self, namespace: &str, tenant: &str, drilled: &Drilled) {
        self.tenant(namespace, tenant, |f| {
            f.drill = Some((drilled.passed, drilled.rto.as_secs_f64(), drilled.rpo.as_secs_f64()));
            f.last_drill = Some(drilled.at.as_second());
            f.certificate_expiry = drilled.certificate_expiry.map(|t| t.as_second()).or(f.certificate_expiry);
        });
    }

    /// The tenant's objectives (RPO, RTO).
    pub fn objectives(&self, namespace: &str, tenant: &str, rpo: Duration, rto: Duration) {
        self.tenant(namespace, tenant, |f| f.objectives = Some((rpo.as_secs(), rto.as_secs())));
    }

    /// A tenant that no longer exists.
    pub fn forget_tenant(&self, namespace: &str, tenant: &str) {
        self.tenants.lock().unwrap_or_else(PoisonError::into_inner).remove(&(namespace.to_owned(), tenant.to_owned()));
    }

    fn tenant(&self, namespace: &str, tenant: &str, change: impl FnOnce(&mut TenantFigures)) {
        let mut all = self.tenants.lock().unwrap_or_else(PoisonError::into_inner);
        change(all.entry((namespace.to_owned(), tenant.to_owned())).or_default());
    }

    /// What the last reads of the plans' witness leases found, replacing
    /// what was there (plans not named are gone).
    pub fn witnesses(&self, figures: BTreeMap<String, WitnessFigures>) {
        *self.witnesses.lock().unwrap_or_else(PoisonError::into_inner) = figures;
    }

    /// What the last read of `plan`'s witness lease found.
    pub fn witness_of(&self, plan: &str) -> Option<WitnessFigures> {
        self.witnesses.lock().unwrap_or_else(PoisonError::into_inner).get(plan).cloned()
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let reconciles = self.reconciles.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let families: [Family; 4] = [
            ("fenice_reconciles_total", "counter", "Reconciles run, by controller.", |r| r.total.to_string()),
            ("fenice_reconcile_errors_total", "counter", "Reconciles that failed, by controller.", |r| {
                r.errors.to_string()
            }),
            ("fenice_reconcile_duration_seconds_sum", "counter", "Time spent reconciling, by controller.", |r| {
                r.seconds.to_string()
            }),
            ("fenice_reconcile_duration_seconds_count", "counter", "Reconciles timed, by controller.", |r| {
                r.total.to_string()
            }),
        ];
        for (name, kind, help, value) in families {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (controller, r) in &reconciles {
                let _ = writeln!(out, "{name}{{controller=\"{controller}\"}} {}", value(r));
            }
        }
        let repositories = self.repositories.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let gauges: [Gauge; 2] = [
            ("fenice_repository_reachable", "1 when the repository's store answered its last probe.", |r| r.0),
            (
                "fenice_repository_immutability_in_force",
                "1 when the store itself reported retention on the last probe object.",
                |r| r.1,
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for (repository, r) in &repositories {
                let _ = writeln!(out, "{name}{{repository=\"{}\"}} {}", escape(repository), u8::from(value(r)));
            }
        }
        let tenants = self.tenants.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let gauges: [TenantGauge; 8] = [
            ("fenice_tenant_rpo_objective_seconds", "The tenant's recovery point objective.", |f| {
                f.objectives.map(|(rpo, _)| rpo.to_string())
            }),
            ("fenice_tenant_rto_objective_seconds", "The tenant's recovery time objective.", |f| {
                f.objectives.map(|(_, rto)| rto.to_string())
            }),
            (
                "fenice_tenant_last_backup_timestamp_seconds",
                "When the tenant's last backup succeeded (its age: time() minus this).",
                |f| f.last_backup.map(|t| t.to_string()),
            ),
            ("fenice_tenant_last_drill_passed", "1 when the tenant's last drill passed.", |f| {
                f.drill.map(|(passed, _, _)| u8::from(passed).to_string())
            }),
            ("fenice_tenant_last_drill_rto_seconds", "The RTO the tenant's last drill measured.", |f| {
                f.drill.map(|(_, rto, _)| rto.to_string())
            }),
            ("fenice_tenant_last_drill_rpo_seconds", "The RPO the tenant's last drill measured.", |f| {
                f.drill.map(|(_, _, rpo)| rpo.to_string())
            }),
            ("fenice_tenant_last_drill_timestamp_seconds", "When the tenant's last drill ran.", |f| {
                f.last_drill.map(|t| t.to_string())
            }),
            (
                "fenice_tenant_certificate_expiry_timestamp_seconds",
                "When the first of the tenant's SdI channel certificates expires, as its last drill read them.",
                |f| f.certificate_expiry.map(|t| t.to_string()),
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for ((namespace, tenant), figures) in &tenants {
                if let Some(v) = value(figures) {
                    let _ = writeln!(
                        out,
                        "{name}{{namespace=\"{}\",tenant=\"{}\"}} {v}",
                        escape(namespace),
                        escape(tenant)
                    );
                }
            }
        }
        render_witnesses(&mut out, &self.witnesses.lock().unwrap_or_else(PoisonError::into_inner));
        out
    }
}

/// A per-plan witness gauge: name, help, and its value if the plan has one.
type WitnessGauge = (&'static str, &'static str, fn(&WitnessFigures) -> Option<String>);

fn render_witnesses(out: &mut String, witnesses: &BTreeMap<String, WitnessFigures>) {
    let gauges: [WitnessGauge; 4] = [
        ("fenice_witness_reachable", "1 when the plan's witness store answered the last read of its lease.", |w| {
            Some(u8::from(w.reachable).to_string())
        }),
        ("fenice_witness_lease_epoch", "The epoch of the plan's witness lease, as last read.", |w| {
            w.epoch.map(|e| e.to_string())
        }),
        (
            "fenice_witness_lease_age_seconds",
            "Seconds since the operator first saw the lease's current version (since its last renewal).",
            |w| w.renewed_at.map(|at| at.elapsed().as_secs_f64().to_string()),
        ),
        ("fenice_witness_lease_duration_seconds", "How long the plan's lease holds without renewal.", |w| {
            Some(w.lease_duration.as_secs_f64().to_string())
        }),
    ];
    for (name, help, value) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (plan, figures) in witnesses {
            if let Some(v) = value(figures) {
                let _ = writeln!(out, "{name}{{plan=\"{}\",site=\"{}\"}} {v}", escape(plan), escape(&figures.site));
            }
        }
    }
}

/// A label value as the exposition format quotes it.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_gauges_render_in_the_exposition_format() {
        let m = Metrics::default();
        m.reconciled("backuprepository", Duration::from_millis(250), true);
        m.reconciled("backuprepository", Duration::from_millis(750), false);
        m.repository("azure-italynorth", true, false);
        let text = m.render();
        assert!(text.contains("fenice_reconciles_total{controller=\"backuprepository\"} 2\n"), "{text}");
        assert!(text.contains("fenice_reconcile_errors_total{controller=\"backuprepository\"} 1\n"), "{text}");
        assert!(text.contains("fenice_reconcile_duration_seconds_sum{controller=\"backuprepository\"} 1\n"), "{text}");
        assert!(text.contains("fenice_repository_reachable{repository=\"azure-italynorth\"} 1\n"), "{text}");
        assert!(text.contains("fenice_repository_immutability_in_force{repository=\"azure-italynorth\"} 0\n"));
        assert!(text.contains("# TYPE fenice_repository_reachable gauge\n"));
        m.backed_up("invoicing", "acme", jiff::Timestamp::from_second(1_700_000_000).unwrap());
        let text = m.render();
        assert!(
            text.contains(
                "fenice_tenant_last_backup_timestamp_seconds{namespace=\"invoicing\",tenant=\"acme\"} 1700000000\n"
            ),
            "{text}"
        );
        let at = jiff::Timestamp::from_second(1_700_000_100).unwrap();
        let expiry = Some(jiff::Timestamp::from_second(1_800_000_000).unwrap());
        let drilled = Drilled {
            passed: false,
            rto: Duration::from_secs(75),
            rpo: Duration::from_secs(600),
            at,
            certificate_expiry: expiry,
        };
        m.drilled("invoicing", "acme", &drilled);
        let text = m.render();
        assert!(text.contains(
            "fenice_tenant_last_drill_timestamp_seconds{namespace=\"invoicing\",tenant=\"acme\"} 1700000100\n"
        ));
        assert!(text.contains(
            "fenice_tenant_certificate_expiry_timestamp_seconds{namespace=\"invoicing\",tenant=\"acme\"} 1800000000\n"
        ));
        assert!(
            text.contains("fenice_tenant_last_drill_passed{namespace=\"invoicing\",tenant=\"acme\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("fenice_tenant_last_drill_rto_seconds{namespace=\"invoicing\",tenant=\"acme\"} 75\n"));
        m.objectives("invoicing", "acme", Duration::from_secs(60), Duration::from_secs(300));
        assert!(
            m.render().contains("fenice_tenant_rpo_objective_seconds{namespace=\"invoicing\",tenant=\"acme\"} 60\n")
        );
        m.forget_tenant("invoicing", "acme");
        assert!(!m.render().contains("tenant=\"acme\""));
        m.forget_repository("azure-italynorth");
        assert!(!m.render().contains("azure-italynorth"));
    }

    #[test]
    fn a_witness_lease_renders_its_age_and_a_plan_left_out_goes() {
        let m = Metrics::default();
        let renewed_at = std::time::Instant::now() - Duration::from_secs(42);
        let lease_duration = Duration::from_secs(30);
        let seen = WitnessFigures {
            site: "frankfurt".into(),
            reachable: true,
            epoch: Some(7),
            renewed_at: Some(renewed_at),
            lease_duration,
        };
        m.witnesses(BTreeMap::from([("rome-to-milan".to_owned(), seen)]));
        let text = m.render();
        assert!(text.contains("fenice_witness_reachable{plan=\"rome-to-milan\",site=\"frankfurt\"} 1\n"), "{text}");
        assert!(text.contains("fenice_witness_lease_epoch{plan=\"rome-to-milan\",site=\"frankfurt\"} 7\n"), "{text}");
        assert!(text.contains("fenice_witness_lease_duration_seconds{plan=\"rome-to-milan\",site=\"frankfurt\"} 30\n"));
        let age = text.lines().find_map(|l| {
            l.strip_prefix("fenice_witness_lease_age_seconds{plan=\"rome-to-milan\",site=\"frankfurt\"} ")
        });
        let age: f64 = age.expect("an age").parse().unwrap();
        assert!((42.0..100.0).contains(&age), "{age}");
        m.witnesses(BTreeMap::new());
        assert!(!m.render().contains("rome-to-milan"));
    }
}
