//! Conversions between the custom resources (`api::plan`, `api::failover`) and
//! the plain types of the failover logic. The only file of `failover` that
//! knows the resources; the logic itself never sees a kube type.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::clock::WallTime;
use super::error::Result;
use super::health::DetectionRule;
use super::lease::{LeaseTiming, Takeover};
use super::machine::{FailoverState, Observation, Phase, TenantStep, Trigger};
use super::waves::{GateRule, WaveSpec};
use crate::api::common::Duration;
use crate::api::failover::{FailoverPhase, FailoverSpec, FailoverStatus, FailoverTrigger, TenantProgress};
use crate::api::plan::{Detection, FailoverMode, Wave, Witness};

impl From<&Detection> for DetectionRule {
    fn from(d: &Detection) -> Self {
        Self {
            failure_threshold: d.failure_threshold,
            window: d.window.as_std(),
            min_vantage_points: d.min_vantage_points,
        }
    }
}

/// The lease timing of a plan's witness; refused if unsafe.
pub fn lease_timing(w: &Witness) -> Result<LeaseTiming> {
    LeaseTiming::for_lease(w.lease_duration.as_std(), w.renew_interval.as_std())
}

/// When the site `site` may take the lease under a plan from `source` to `target`:
/// only the target, and only in an Automatic plan, on its own.
pub fn takeover(mode: FailoverMode, site: &str, target: &str) -> Takeover {
    match mode {
        FailoverMode::Automatic if site == target => Takeover::WhenHolderDown,
        _ => Takeover::Never,
    }
}

impl From<&Wave> for WaveSpec {
    fn from(w: &Wave) -> Self {
        Self {
            name: w.name.clone(),
            tiers: w.tiers.clone(),
            parallelism: w.parallelism,
            gate: GateRule { max_failed_tenants: w.gate.max_failed_tenants, require_approval: w.gate.require_approval },
        }
    }
}

impl From<FailoverTrigger> for Trigger {
    fn from(t: FailoverTrigger) -> Self {
        match t {
            FailoverTrigger::Manual => Trigger::Manual,
            FailoverTrigger::Automatic => Trigger::Automatic,
            FailoverTrigger::Failback => Trigger::Failback,
        }
    }
}

/// What the spec of a Failover adds to the observation (abort, approvals).
pub fn observe_spec(spec: &FailoverSpec, mut seen: Observation) -> Observation {
    seen.abort = spec.abort;
    seen.approved_waves = spec.approved_waves;
    seen
}

impl From<TenantStep> for FailoverPhase {
    fn from(step: TenantStep) -> Self {
        match step {
            TenantStep::Waiting => FailoverPhase::Pending,
            TenantStep::Restoring => FailoverPhase::Restoring,
            TenantStep::Reconciling => FailoverPhase::Reconciling,
            TenantStep::Starting => FailoverPhase::Starting,
            TenantStep::Switching => FailoverPhase::Switching,
            TenantStep::Verifying => FailoverPhase::Verifying,
            TenantStep::Succeeded => FailoverPhase::Succeeded,
            TenantStep::Failed => FailoverPhase::Failed,
            TenantStep::RollingBack | TenantStep::RolledBack | TenantStep::NotStarted => FailoverPhase::Aborted,
        }
    }
}

fn time(t: WallTime) -> Option<Time> {
    Timestamp::from_millisecond(i64::try_from(t.unix_millis()).ok()?).ok().map(Time)
}

impl FailoverState {
    /// The phase shown on the Failover: while tenants move, the least advanced
    /// step among those of the current wave in progress.
    pub fn failover_phase(&self) -> FailoverPhase {
        match self.phase {
            Phase::Pending => FailoverPhase::Pending,
            Phase::Fencing => FailoverPhase::Fencing,
            Phase::Succeeded => FailoverPhase::Succeeded,
            Phase::Failed => FailoverPhase::Failed,
            Phase::Aborted => FailoverPhase::Aborted,
            Phase::Running => self
                .waves
                .get(self.current_wave)
                .and_then(|w| {
                    w.tenants
                        .iter()
                        .filter(|t| t.step.is_work() && t.step != TenantStep::RollingBack)
                        .map(|t| t.step)
                        .min()
                })
                .map_or(FailoverPhase::Restoring, FailoverPhase::from),
        }
    }

    /// The Failover's status (without conditions and observedGeneration, which
    /// the controller sets). Lists tenants in progress or failed only.
    pub fn to_status(&self) -> FailoverStatus {
        let (done, failed, total) = self.counts();
        let (rto, rpo) = self.worst();
        let tenants = self
            .tenants()
            .filter(|(_, t)| t.step.is_work() || t.step == TenantStep::Failed)
            .map(|(wave, t)| TenantProgress {
                tenant: t.tenant.clone(),
                wave: wave as u32,
                phase: t.step.into(),
                snapshot_id: t.snapshot_id.clone(),
                error: t.error.clone(),
            })
            .collect();
        FailoverStatus {
            phase: self.failover_phase(),
            epoch: self.epoch,
            declared_loss_time: time(self.declared_loss),
            start_time: self.started_at.and_then(time),
            completion_time: self.completed_at.and_then(time),
            current_wave: (self.phase == Phase::Running).then_some(self.current_wave as u32),
            tenants_total: total,
            tenants_done: done,
            tenants_failed: failed,
            done: Some(format!("{done}/{total}")),
            rto: rto.map(Duration::from_std),
            rpo: rpo.map(Duration::from_std),
            tenants,
            observed_generation: None,
            conditions: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::common::{TenantRef, Tier};
    use crate::api::plan::Gate;
    use crate::failover::machine::{NewFailover, RetryRule};
    use crate::failover::waves::{TenantSpec, assign};

    #[test]
    fn plan_defaults_convert_to_safe_logic_settings() {
        let rule = DetectionRule::from(&Detection::default());
        assert_eq!(rule, DetectionRule::default());
        let witness: Witness = serde_json::from_str(r#"{"site": "w"}"#).unwrap();
        let timing = lease_timing(&witness).unwrap();
        assert_eq!(timing.lease_duration, std::time::Duration::from_secs(30));
        let unsafe_witness: Witness =
            serde_json::from_str(r#"{"site": "w", "leaseDuration": "10s", "renewInterval": "10s"}"#).unwrap();
        assert!(lease_timing(&unsafe_witness).is_err());
        assert_eq!(takeover(FailoverMode::Automatic, "b", "b"), Takeover::WhenHolderDown);
        assert_eq!(takeover(FailoverMode::Automatic, "a", "b"), Takeover::Never);
        assert_eq!(takeover(FailoverMode::Manual, "b", "b"), Takeover::Never);
    }

    #[test]
    fn the_status_counts_tenants_and_lists_those_in_progress() {
        let wave = Wave { name: "gold".into(), tiers: vec![Tier::Gold], parallelism: 2, gate: Gate::default() };
        let tenants: Vec<_> = (0..3)
            .map(|i| TenantSpec {
                tenant: TenantRef { namespace: "ns".into(), name: format!("t{i}") },
                tier: Tier::Gold,
            })
            .collect();
        let new = NewFailover {
            name: "f".into(),
            plan: "p".into(),
            trigger: FailoverTrigger::Manual.into(),
            source: "a".into(),
            target: "b".into(),
            declared_loss: WallTime::from_unix_millis(1_700_000_000_000),
            epoch: None,
        };
        let mut s =
            FailoverState::new(new, assign("p", &[WaveSpec::from(&wave)], &tenants).unwrap(), RetryRule::default());
        s.phase = Phase::Running;
        s.epoch = Some(2);
        s.waves[0].tenants[0].step = TenantStep::Succeeded;
        s.waves[0].tenants[0].rto_ms = Some(252_000);
        s.waves[0].tenants[0].rpo_ms = Some(1_000);
        s.waves[0].tenants[1].step = TenantStep::Switching;
        s.waves[0].tenants[2].step = TenantStep::Reconciling;
        let status = s.to_status();
        assert_eq!(status.phase, FailoverPhase::Reconciling);
        assert_eq!(status.done.as_deref(), Some("1/3"));
        assert_eq!(status.rto.as_ref().map(|d| d.as_str()), Some("4m12s"));
        assert_eq!(status.rpo.as_ref().map(|d| d.as_str()), Some("1s"));
        assert_eq!(status.tenants.len(), 2);
        assert_eq!(status.current_wave, Some(0));
        assert_eq!(status.declared_loss_time.unwrap().0.as_millisecond(), 1_700_000_000_000);
    }
}
