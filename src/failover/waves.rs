//! Waves: tenants move by tier, one wave after the other, at most `parallelism`
//! tenants of a wave at once, and a gate between waves.

use serde::{Deserialize, Serialize};

use super::error::{Error, Result};
use super::machine::{TenantState, TenantStep};
use crate::api::common::{TenantRef, Tier};

/// A wave as a plan declares it (the plan's `waves[]`, without kube types).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaveSpec {
    pub name: String,
    pub tiers: Vec<Tier>,
    pub parallelism: u32,
    pub gate: GateRule,
}

/// What must hold before the next wave starts.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct GateRule {
    /// Failed tenants tolerated in the wave; one more and the failover stops, Failed.
    pub max_failed_tenants: u32,
    /// The next wave waits until a person has approved this one.
    pub require_approval: bool,
}

/// A tenant the failover moves, with its tier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantSpec {
    pub tenant: TenantRef,
    pub tier: Tier,
}

/// One wave of a running failover: its rule and its tenants' progress.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct WaveState {
    pub name: String,
    pub parallelism: u32,
    pub gate: GateRule,
    pub tenants: Vec<TenantState>,
}

/// Puts each tenant in the first wave that lists its tier, in name order within
/// a wave. A tenant whose tier no wave lists is an error: it would otherwise be
/// silently left behind.
pub fn assign(plan: &str, waves: &[WaveSpec], tenants: &[TenantSpec]) -> Result<Vec<WaveState>> {
    if waves.is_empty() {
        return Err(Error::NoWaves { plan: plan.to_owned() });
    }
    let mut out: Vec<WaveState> = waves
        .iter()
        .map(|w| WaveState {
            name: w.name.clone(),
            parallelism: w.parallelism.max(1),
            gate: w.gate,
            tenants: Vec::new(),
        })
        .collect();
    let mut sorted: Vec<&TenantSpec> = tenants.iter().collect();
    sorted.sort_by(|a, b| (&a.tenant.namespace, &a.tenant.name).cmp(&(&b.tenant.namespace, &b.tenant.name)));
    sorted.dedup_by(|a, b| a.tenant == b.tenant);
    for t in sorted {
        let Some(i) = waves.iter().position(|w| w.tiers.contains(&t.tier)) else {
            return Err(Error::TierWithoutWave {
                plan: plan.to_owned(),
                tenant: format!("{}/{}", t.tenant.namespace, t.tenant.name),
                tier: t.tier,
            });
        };
        out[i].tenants.push(TenantState::waiting(t.tenant.clone()));
    }
    Ok(out)
}

/// Where the gate after a wave stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GateVerdict {
    /// Some tenant of the wave is not finished.
    WaveRunning,
    /// The next wave may start.
    Open,
    /// Finished within the tolerance, waiting for a person's approval.
    AwaitingApproval,
    /// More tenants failed than the gate tolerates.
    Closed { failed: u32 },
}

impl WaveState {
    /// Tenants of the wave being worked on now (between Restoring and Verifying, or rolling back).
    pub fn in_progress(&self) -> usize {
        self.tenants.iter().filter(|t| t.step.is_work()).count()
    }

    /// Tenants of the wave that failed.
    pub fn failed(&self) -> u32 {
        self.tenants.iter().filter(|t| t.step == TenantStep::Failed).count() as u32
    }

    /// The gate after this wave, the wave being number `index` (from 0), with
    /// `approved_waves` waves approved by a person.
    pub fn gate_verdict(&self, index: usize, approved_waves: u32) -> GateVerdict {
        if !self.tenants.iter().all(|t| t.step.is_terminal()) {
            return GateVerdict::WaveRunning;
        }
        let failed = self.failed();
        if failed > self.gate.max_failed_tenants {
            GateVerdict::Closed { failed }
        } else if self.gate.require_approval && (approved_waves as usize) <= index {
            GateVerdict::AwaitingApproval
        } else {
            GateVerdict::Open
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(name: &str, tier: Tier) -> TenantSpec {
        TenantSpec { tenant: TenantRef { namespace: "t".into(), name: name.into() }, tier }
    }

    fn wave(name: &str, tiers: &[Tier], gate: GateRule) -> WaveSpec {
        WaveSpec { name: name.into(), tiers: tiers.to_vec(), parallelism: 2, gate }
    }

    #[test]
    fn tenants_go_to_the_first_wave_listing_their_tier_in_name_order() {
        let waves = [
            wave("gold", &[Tier::Gold], GateRule::default()),
            wave("rest", &[Tier::Silver, Tier::Bronze, Tier::Gold], GateRule::default()),
        ];
        let tenants = [
            tenant("c", Tier::Bronze),
            tenant("b", Tier::Gold),
            tenant("a", Tier::Silver),
            tenant("d", Tier::Gold),
            tenant("b", Tier::Gold),
        ];
        let out = assign("p", &waves, &tenants).unwrap();
        let names = |w: &WaveState| w.tenants.iter().map(|t| t.tenant.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&out[0]), ["b", "d"]);
        assert_eq!(names(&out[1]), ["a", "c"]);
        assert!(out.iter().flat_map(|w| &w.tenants).all(|t| t.step == TenantStep::Waiting));
    }

    #[test]
    fn a_tier_without_a_wave_and_a_plan_without_waves_are_errors() {
        let waves = [wave("gold", &[Tier::Gold], GateRule::default())];
        let err = assign("p", &waves, &[tenant("x", Tier::Bronze)]).unwrap_err();
        assert!(err.to_string().contains("tenant t/x has tier Bronze"), "{err}");
        assert!(matches!(assign("p", &[], &[]), Err(Error::NoWaves { .. })));
    }

    #[test]
    fn the_gate_counts_failures_and_waits_for_approval() {
        let mut w = assign(
            "p",
            &[wave("w", &[Tier::Gold], GateRule { max_failed_tenants: 1, require_approval: true })],
            &[tenant("a", Tier::Gold), tenant("b", Tier::Gold), tenant("c", Tier::Gold)],
        )
        .unwrap()
        .remove(0);
        assert_eq!(w.gate_verdict(0, 0), GateVerdict::WaveRunning);
        w.tenants[0].step = TenantStep::Succeeded;
        w.tenants[1].step = TenantStep::Failed;
        w.tenants[2].step = TenantStep::Verifying;
        assert_eq!(w.in_progress(), 1);
        assert_eq!(w.gate_verdict(0, 0), GateVerdict::WaveRunning);
        w.tenants[2].step = TenantStep::Succeeded;
        assert_eq!(w.gate_verdict(0, 0), GateVerdict::AwaitingApproval);
        assert_eq!(w.gate_verdict(0, 1), GateVerdict::Open);
        w.tenants[2].step = TenantStep::Failed;
        assert_eq!(w.gate_verdict(0, 1), GateVerdict::Closed { failed: 2 });
    }
}
