//! The Failover controller: the operator of the failover's target site
//! (`fenice operator --site`) carries it out with the failover logic's state
//! machine ([`crate::failover::executor`]) and the steps of the target's
//! driver: [`KubeFailover`] at a Kubernetes site, [`LocalTargetFailover`] at a
//! Local one. The whole state is one JSON object in the plan's
//! witness store (`witness/<plan>/failovers/<name>.json`, written with
//! `IfMatch`, so two runners cannot both drive it, and an operator that
//! restarts goes on from it); the Failover's status is its summary, written as
//! the state changes (at most once a second, and at every end).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};

use super::failover_driver::KubeFailover;
use super::local_failover_driver::LocalTargetFailover;
use super::{Context, ObjectError, about};
use crate::api::condition::{self, Observed};
use crate::api::failover::{Failover, FailoverPhase, FailoverStatus, FailoverTrigger};
use crate::api::plan::FailoverPlan;
use crate::error_chain::error_chain;
use crate::failover::clock::{SystemClock, WallTime};
use crate::failover::executor::{self, Progress, SiteDriver, StateFile, StateStore};
use crate::failover::lease::{LeaseView, Takeover};
use crate::failover::machine::{EndReason, FailoverState, NewFailover, Phase, RetryRule};
use crate::failover::waves::{TenantSpec, WaveSpec, assign};
use crate::failover::witness::{LeaseCommand, RunningAgent};

pub const CONTROLLER: &str = "failover";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Object(#[from] ObjectError),

    #[error("Failover {name}: its state in the witness store")]
    State {
        name: String,
        #[source]
        source: crate::failover::error::Error,
    },
}

/// How soon a failover that waits (for the lease, a retry, an approval) is looked at again.
const AGAIN: Duration = Duration::from_secs(2);
/// The status is written at most this often while tenants move.
const STATUS_EVERY: Duration = Duration::from_secs(1);

pub async fn reconcile(failover: Arc<Failover>, ctx: Arc<Context>) -> Result<Action, Error> {
    super::measured(&ctx, CONTROLLER, reconcile_inner(&failover, &ctx)).await
}

pub fn error_policy(failover: Arc<Failover>, error: &Error, _ctx: Arc<Context>) -> Action {
    super::retry_after_error(&failover.name_any(), error)
}

/// The failover's direction: (source, target).
pub fn direction(failover: &Failover, plan: &FailoverPlan) -> (String, String) {
    match failover.spec.mode {
        FailoverTrigger::Failback => (plan.spec.target_site.clone(), plan.spec.source_site.clone()),
        _ => (plan.spec.source_site.clone(), plan.spec.target_site.clone()),
    }
}

async fn reconcile_inner(failover: &Failover, ctx: &Arc<Context>) -> Result<Action, Error> {
    let status = failover.status.clone().unwrap_or_default();
    if matches!(status.phase, FailoverPhase::Succeeded | FailoverPhase::Failed | FailoverPhase::Aborted) {
        return Ok(Action::await_change());
    }
    let name = failover.name_any();
    let Some(site) = ctx.site.clone() else {
        let why = "this operator runs at no Site (--site): the operator of the failover's target site carries it out";
        return held(ctx, failover, "NoSite", why.to_owned(), None).await;
    };
    let Some(plan) = ctx.cache.plans.get(&failover.spec.plan).await else {
        let why = format!("FailoverPlan {} does not exist", failover.spec.plan);
        return held(ctx, failover, "PlanNotFound", why, Some(Duration::from_secs(30))).await;
    };
    let (source, target) = direction(failover, &plan);
    if target != site {
        // NB: the target's operator carries it out; this one leaves the object alone.
        return Ok(Action::await_change());
    }
    if plan.spec.witness.is_none() {
        let why = format!(
            "FailoverPlan {} has no witness: a failover at Kubernetes sites takes the lease and keeps its state there",
            plan.name_any()
        );
        return ended(ctx, failover, "NoWitness", why).await;
    }
    let Some(agent) = ctx.lease_agents.get(&plan.name_any()) else {
        let why = format!("waiting for {site}'s lease agent of FailoverPlan {}", plan.name_any());
        return held(ctx, failover, "WaitingForLeaseAgent", why, Some(Duration::from_secs(5))).await;
    };
    let loaded =
        StateFile::load(agent.store.clone(), &plan.name_any(), &name).await.map_err(|e| state_error(failover, e))?;
    let (mut state, file) = match loaded {
        Some(found) => found,
        None => {
            // NB: an automatic failover is declared after its site took the lease: it runs under that epoch.
            let held = match (&agent.status.borrow().view, failover.spec.mode) {
                (LeaseView::Held { holder, epoch, .. }, FailoverTrigger::Automatic) if *holder == target => {
                    Some(*epoch)
                }
                _ => None,
            };
            let state = new_state(ctx, failover, &plan, (&source, &target), held).await;
            let state = match state {
                Ok(state) => state,
                Err(why) => return ended(ctx, failover, "InvalidPlan", why).await,
            };
            let file = StateFile::create(agent.store.clone(), &state).await.map_err(|e| state_error(failover, e))?;
            let note = format!(
                "{} tenants from {source} to {target}, in {} waves; its state is kept in the witness store",
                state.counts().2,
                state.waves.len()
            );
            super::publish(ctx, failover, EventType::Normal, "FailoverStarted", "Start", note).await;
            (state, file)
        }
    };
    if state.phase == Phase::Fencing && state.fencing.lease_asked && !failover.spec.abort {
        // NB: the setting is the agent's, not the state's: an agent started
        // anew since it was asked (an operator restart) is asked again.
        agent.command(LeaseCommand::SetTakeover(Takeover::WhenExpired)).await;
    }
    let declared_loss =
        Timestamp::from_millisecond(state.declared_loss.unix_millis() as i64).unwrap_or_else(|_| Timestamp::now());
    let kube = KubeFailover { ctx: ctx.clone(), plan: plan.clone(), agent: agent.clone(), declared_loss };
    let found = ctx.cache.sites.get(&target).await;
    let driver: Box<dyn SiteDriver> = match super::tenant::placement(&target, found.as_deref()) {
        super::tenant::Placement::Local { .. } => Box::new(LocalTargetFailover { kube }),
        _ => Box::new(kube),
    };
    let mut mirror = Mirror { file, ctx: ctx.clone(), failover: failover.clone(), written: None };
    let spec = failover.spec.clone();
    let status_rx = agent.status.clone();
    let observe = move || crate::failover::convert::observe_spec(&spec, RunningAgent::observation(&status_rx));
    let progress = executor::run(&mut state, driver.as_ref(), &mut mirror, &SystemClock::new(), &observe)
        .await
        .map_err(|e| state_error(failover, e))?;
    mirror.write(&state).await?;
    match progress {
        Progress::Finished(phase) => {
            let (kind, reason) = match phase {
                Phase::Succeeded => (EventType::Normal, "FailoverSucceeded"),
                _ => (EventType::Warning, "FailoverEnded"),
            };
            super::publish(ctx, failover, kind, reason, "Finish", summary(&state)).await;
            Ok(Action::await_change())
        }
        Progress::Waiting(_) => Ok(Action::requeue(AGAIN)),
    }
}

/// A new failover's state: the plan's tenants served at `source`, in the plan's waves.
async fn new_state(
    ctx: &Context,
    failover: &Failover,
    plan: &FailoverPlan,
    (source, target): (&str, &str),
    epoch: Option<u64>,
) -> Result<FailoverState, String> {
    let matcher = crate::drill::Matcher::new(&plan.spec.tenants)?;
    let tenants: Vec<TenantSpec> = ctx
        .cache
        .tenants
        .all()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|t| matcher.matches(t) && super::tenant::serving_site(t) == source)
        .map(|t| TenantSpec {
            tenant: crate::api::common::TenantRef { namespace: t.namespace().unwrap_or_default(), name: t.name_any() },
            tier: t.spec.tier,
        })
        .collect();
    let waves: Vec<WaveSpec> = plan.spec.waves.iter().map(WaveSpec::from).collect();
    let waves = assign(&plan.name_any(), &waves, &tenants).map_err(|e| error_chain(&e))?;
    let new = NewFailover {
        name: failover.name_any(),
        plan: plan.name_any(),
        trigger: failover.spec.mode.into(),
        source: source.to_owned(),
        target: target.to_owned(),
        declared_loss: WallTime::from_unix_millis(declared_loss(failover)),
        epoch,
    };
    Ok(FailoverState::new(new, waves, RetryRule::default()))
}

/// When the source was lost, in Unix milliseconds: `spec.lossTime` (the
/// detection, or what a person knows), else the Failover's creation; never
/// after the creation.
fn declared_loss(failover: &Failover) -> u64 {
    let created = failover.metadata.creation_timestamp.as_ref().map_or_else(Timestamp::now, |t| t.0);
    let lost = failover.spec.loss_time.as_ref().map_or(created, |t| t.0.min(created));
    u64::try_from(lost.as_millisecond()).unwrap_or_default()
}

fn state_error(failover: &Failover, source: crate::failover::error::Error) -> Error {
    Error::State { name: failover.name_any(), source }
}

/// One line on how the failover ended.
fn summary(state: &FailoverState) -> String {
    let (done, failed, total) = state.counts();
    let why = match &state.end {
        Some(EndReason::Completed) | None => String::new(),
        Some(reason) => format!(" ({reason})"),
    };
    format!("{:?}{why}: {done}/{total} tenants serve at {}, {failed} failed", state.phase, state.target)
}

/// The Ready condition of a failover in `state`.
fn ready_of(state: &FailoverState) -> (bool, &'static str, String) {
    match state.phase {
        Phase::Succeeded => (true, "Succeeded", summary(state)),
        Phase::Failed => (false, "Failed", summary(state)),
        Phase::Aborted => (false, "Aborted", summary(state)),
        Phase::Pending | Phase::Fencing => {
            (false, "Fencing", format!("asking {} to hand the lease over to {}", state.source, state.target))
        }
        Phase::Running => {
            let (done, failed, total) = state.counts();
            (false, "InProgress", format!("{done}/{total} tenants serve at {}, {failed} failed", state.target))
        }
    }
}

/// Persists the state in the witness store, and mirrors it on the Failover's status.
struct Mirror {
    file: StateFile,
    ctx: Arc<Context>,
    failover: Failover,
    written: Option<Instant>,
}

impl Mirror {
    async fn write(&mut self, state: &FailoverState) -> Result<(), Error> {
        let mut status: FailoverStatus = state.to_status();
        let old = self.failover.status.clone().unwrap_or_default();
        let (ready, reason, message) = ready_of(state);
        let observed = Observed { type_: condition::types::READY, status: ready, reason, message };
        let generation = self.failover.metadata.generation;
        status.conditions = condition::set(&old.conditions, observed, generation, Timestamp::now());
        status.observed_generation = generation;
        let api: Api<Failover> = Api::all(self.ctx.client.clone());
        super::apply_status(&api, &self.failover, &status)
            .await
            .map_err(about(&self.failover, "writing its status"))?;
        self.failover.status = Some(status);
        self.written = Some(Instant::now());
        Ok(())
    }
}

#[async_trait]
impl StateStore for Mirror {
    async fn save(&mut self, state: &FailoverState) -> crate::failover::error::Result<()> {
        self.file.save(state).await?;
        let due = self.written.is_none_or(|at| at.elapsed() >= STATUS_EVERY) || state.phase.is_terminal();
        // NB: the state is persisted; a status not written catches up at the next write.
        if due && let Err(e) = self.write(state).await {
            tracing::warn!(failover = %self.failover.name_any(), error = %error_chain(&e), "status not written");
        }
        Ok(())
    }
}

/// Says why the failover does not go on here, and looks again after `again`.
async fn held(
    ctx: &Context,
    failover: &Failover,
    reason: &str,
    why: String,
    again: Option<Duration>,
) -> Result<Action, Error> {
    write_condition(ctx, failover, FailoverPhase::Pending, reason, why).await?;
    Ok(again.map_or_else(Action::await_change, Action::requeue))
}

/// Ends the failover before it started, for `why`: nothing was changed.
async fn ended(ctx: &Context, failover: &Failover, reason: &str, why: String) -> Result<Action, Error> {
    super::publish(ctx, failover, EventType::Warning, reason, "Refuse", why.clone()).await;
    write_condition(ctx, failover, FailoverPhase::Failed, reason, why).await?;
    Ok(Action::await_change())
}

async fn write_condition(
    ctx: &Context,
    failover: &Failover,
    phase: FailoverPhase,
    reason: &str,
    why: String,
) -> Result<(), Error> {
    let old = failover.status.clone().unwrap_or_default();
    if old.phase == phase && old.conditions.iter().any(|c| c.reason == reason && c.message == why) {
        return Ok(());
    }
    let observed = Observed { type_: condition::types::READY, status: false, reason, message: why };
    let generation = failover.metadata.generation;
    let status = FailoverStatus {
        phase,
        conditions: condition::set(&old.conditions, observed, generation, Timestamp::now()),
        observed_generation: generation,
        ..old
    };
    let api: Api<Failover> = Api::all(ctx.client.clone());
    super::apply_status(&api, failover, &status).await.map_err(about(failover, "writing its status"))?;
    Ok(())
}
