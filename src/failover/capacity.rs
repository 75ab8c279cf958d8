//! How long a failover of many tenants takes: the real wave logic
//! ([`super::machine::decide`]) and executor ([`super::executor::run`]) with a
//! driver whose steps take the given times on a paused Tokio clock, so tens of
//! thousands of tenants run in seconds of real time.

use std::time::Duration;

use async_trait::async_trait;

use super::clock::{Clock, MonoTime, WallTime};
use super::executor::{Progress, SiteDriver, StateStore, StepContext, run};
use super::machine::{
    FailoverState, NewFailover, Observation, Phase, Restored, RetryRule, SourceFence, StepError, Trigger,
};
use super::waves::{GateRule, TenantSpec, WaveSpec, assign};
use crate::api::common::{TenantRef, Tier};

/// What one tenant's steps cost, and how the tenants are spread.
#[derive(Clone, Debug, PartialEq)]
pub struct Costs {
    pub restore: Duration,
    pub reconcile: Duration,
    pub start: Duration,
    pub switch: Duration,
    pub verify: Duration,
}

/// A failover to simulate: tenants per tier, and each wave's parallelism.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    pub gold: usize,
    pub silver: usize,
    pub bronze: usize,
    /// Tenants restored at once in each wave (gold, silver, bronze).
    pub parallelism: u32,
    pub costs: Costs,
}

/// What the simulation found.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Outcome {
    pub tenants: usize,
    pub phase: Phase,
    /// From the declared loss to the last tenant serving.
    pub total_seconds: f64,
    pub rto_p50_seconds: f64,
    pub rto_max_seconds: f64,
    /// When the last tenant of each wave served, from the declared loss.
    pub waves: Vec<(String, f64)>,
}

/// A clock that follows Tokio's (paused) time.
#[derive(Debug)]
struct TokioClock {
    origin: tokio::time::Instant,
    wall_origin: WallTime,
}

impl Clock for TokioClock {
    fn now(&self) -> MonoTime {
        MonoTime::from_origin(self.origin.elapsed())
    }

    fn wall(&self) -> WallTime {
        self.wall_origin + self.origin.elapsed()
    }
}

/// Each step takes its cost, and always succeeds.
struct CostDriver(Costs);

#[async_trait]
impl SiteDriver for CostDriver {
    async fn fence_source(&self, _: &StepContext) -> SourceFence {
        SourceFence::Unreachable
    }

    async fn acquire_lease(&self, _: &StepContext) {}

    async fn cancel_lease(&self, _: &StepContext) {}

    async fn restore_tenant(&self, _: &StepContext, _: &TenantRef) -> Result<Restored, StepError> {
        tokio::time::sleep(self.0.restore).await;
        Ok(Restored { snapshot_id: "simulated".into(), rpo: Duration::ZERO })
    }

    async fn reconcile_tenant(&self, _: &StepContext, _: &TenantRef) -> Result<(), StepError> {
        tokio::time::sleep(self.0.reconcile).await;
        Ok(())
    }

    async fn start_tenant(&self, _: &StepContext, _: &TenantRef) -> Result<(), StepError> {
        tokio::time::sleep(self.0.start).await;
        Ok(())
    }

    async fn switch_tenant(&self, _: &StepContext, _: &TenantRef) -> Result<(), StepError> {
        tokio::time::sleep(self.0.switch).await;
        Ok(())
    }

    async fn verify_tenant(&self, _: &StepContext, _: &TenantRef) -> Result<(), StepError> {
        tokio::time::sleep(self.0.verify).await;
        Ok(())
    }

    async fn discard_tenant(&self, _: &StepContext, _: &TenantRef) -> Result<(), StepError> {
        Ok(())
    }
}

/// The state is kept in memory only.
struct Nowhere;

#[async_trait]
impl StateStore for Nowhere {
    async fn save(&mut self, _: &FailoverState) -> super::error::Result<()> {
        Ok(())
    }
}

/// Runs the scenario on a paused clock. Call on a current-thread runtime
/// (`tokio::time::pause` needs one); see [`simulate_blocking`].
pub async fn simulate(scenario: &Scenario) -> super::error::Result<Outcome> {
    tokio::time::pause();
    let clock = TokioClock { origin: tokio::time::Instant::now(), wall_origin: WallTime::from_unix_millis(0) };
    let mut tenants = Vec::new();
    for (tier, count) in [(Tier::Gold, scenario.gold), (Tier::Silver, scenario.silver), (Tier::Bronze, scenario.bronze)]
    {
        for i in 0..count {
            let name = format!("{}-{i:05}", format!("{tier:?}").to_lowercase());
            tenants.push(TenantSpec { tenant: TenantRef { namespace: "tenants".into(), name }, tier });
        }
    }
    let waves: Vec<WaveSpec> = [Tier::Gold, Tier::Silver, Tier::Bronze]
        .into_iter()
        .map(|tier| WaveSpec {
            name: format!("{tier:?}").to_lowercase(),
            tiers: vec![tier],
            parallelism: scenario.parallelism,
            gate: GateRule { max_failed_tenants: u32::MAX, require_approval: false },
        })
        .collect();
    let waves = assign("simulated", &waves, &tenants)?;
    let new = NewFailover {
        name: "simulated".into(),
        plan: "simulated".into(),
        trigger: Trigger::Automatic,
        source: "primary".into(),
        target: "standby".into(),
        declared_loss: clock.wall(),
        epoch: Some(2),
    };
    let mut state = FailoverState::new(new, waves, RetryRule::default());
    let observe = || Observation {
        lease_holder: Some("standby".into()),
        lease_epoch: 2,
        active_epoch: Some(2),
        ..Observation::default()
    };
    let driver = CostDriver(scenario.costs.clone());
    let phase = loop {
        match run(&mut state, &driver, &mut Nowhere, &clock, &observe).await? {
            Progress::Finished(phase) => break phase,
            // Nothing is retried or approved here; a wait only passes time.
            Progress::Waiting(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let mut rtos: Vec<u64> = state.tenants().filter_map(|(_, t)| t.rto_ms).collect();
    rtos.sort_unstable();
    let seconds = |ms: u64| ms as f64 / 1000.0;
    let waves = state
        .waves
        .iter()
        .map(|w| (w.name.clone(), seconds(w.tenants.iter().filter_map(|t| t.rto_ms).max().unwrap_or(0))))
        .collect();
    Ok(Outcome {
        tenants: tenants.len(),
        phase,
        total_seconds: seconds(rtos.last().copied().unwrap_or(0)),
        rto_p50_seconds: seconds(rtos.get(rtos.len().saturating_sub(1) / 2).copied().unwrap_or(0)),
        rto_max_seconds: seconds(rtos.last().copied().unwrap_or(0)),
        waves,
    })
}

/// [`simulate`] on a runtime of its own.
pub fn simulate_blocking(scenario: &Scenario) -> super::error::Result<Outcome> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("a Tokio runtime");
    runtime.block_on(simulate(scenario))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn costs() -> Costs {
        Costs {
            restore: Duration::from_secs(6),
            reconcile: Duration::from_millis(500),
            start: Duration::from_secs(1),
            switch: Duration::from_millis(200),
            verify: Duration::from_millis(300),
        }
    }

    #[test]
    fn tenants_go_in_rounds_of_the_parallelism() {
        let scenario = Scenario { gold: 4, silver: 0, bronze: 0, parallelism: 2, costs: costs() };
        let outcome = simulate_blocking(&scenario).unwrap();
        assert_eq!(outcome.phase, Phase::Succeeded, "{outcome:?}");
        assert_eq!(outcome.tenants, 4);
        // Two rounds of 8 s of steps each: the second pair serves after about 16 s.
        assert!((16.0..18.0).contains(&outcome.total_seconds), "{outcome:?}");
        assert!(outcome.rto_p50_seconds < outcome.rto_max_seconds);
    }

    #[test]
    fn waves_follow_each_other_by_tier() {
        let scenario = Scenario { gold: 2, silver: 2, bronze: 2, parallelism: 2, costs: costs() };
        let outcome = simulate_blocking(&scenario).unwrap();
        assert_eq!(outcome.phase, Phase::Succeeded, "{outcome:?}");
        let ends: Vec<f64> = outcome.waves.iter().map(|(_, end)| *end).collect();
        assert!(ends.windows(2).all(|w| w[0] < w[1]), "gold, then silver, then bronze: {outcome:?}");
    }
}
