//! The failover state machine, without I/O: [`decide`] looks at the persisted
//! [`FailoverState`] and what the site observes now, and returns what to do;
//! the executor (`executor`, or the model) carries the calls out through a
//! site driver and feeds the results back with [`FailoverState::complete`].
//!
//! A failover goes Pending → Fencing → Running (wave after wave; each tenant
//! Restoring → Reconciling → Starting → Switching → Verifying → Succeeded or
//! Failed) → Succeeded, Failed or Aborted. Progress is recorded *before* each
//! call ([`FailoverState::begin`]) and persisted, so a runner that crashes
//! repeats at most the calls that were in flight, which are idempotent.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::clock::WallTime;
use super::waves::{GateVerdict, WaveState};
use crate::api::common::TenantRef;

/// Who started the failover and in which direction.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// A person, source to target.
    Manual,
    /// The standby, after detection and lease expiry.
    Automatic,
    /// A person, back to the original site: a planned failover with source and
    /// target swapped.
    Failback,
}

/// Where the failover as a whole is.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Pending,
    /// Fencing the source and taking the lease with its epoch.
    Fencing,
    /// Moving tenants, wave by wave.
    Running,
    Succeeded,
    Failed,
    Aborted,
}

impl Phase {
    /// Whether the failover has ended.
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed | Phase::Aborted)
    }
}

/// Where one tenant is.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TenantStep {
    /// Its wave has not reached it.
    Waiting,
    /// Restoring the latest verified snapshot and the WAL at the target.
    Restoring,
    /// Reconciling the SdI queue with what SdI already holds.
    Reconciling,
    /// Starting the stack at the target.
    Starting,
    /// Pointing the endpoint and the SdI channel at the target.
    Switching,
    /// Checking the tenant serves, at the application level.
    Verifying,
    /// Aborted before its switch: discarding its copy at the target.
    RollingBack,
    Succeeded,
    Failed,
    /// Aborted before its switch; the copy at the target is gone.
    RolledBack,
    /// Aborted before it started; nothing was done for it at the target.
    NotStarted,
}

impl TenantStep {
    /// A step that is a call of the site driver.
    pub fn is_work(self) -> bool {
        matches!(
            self,
            TenantStep::Restoring
                | TenantStep::Reconciling
                | TenantStep::Starting
                | TenantStep::Switching
                | TenantStep::Verifying
                | TenantStep::RollingBack
        )
    }

    /// The tenant is done with, one way or another.
    pub fn is_terminal(self) -> bool {
        matches!(self, TenantStep::Succeeded | TenantStep::Failed | TenantStep::RolledBack | TenantStep::NotStarted)
    }

    /// Before the switch: the tenant's endpoint still points at the source, so an
    /// abort can discard the copy at the target.
    pub fn is_before_switch(self) -> bool {
        matches!(self, TenantStep::Restoring | TenantStep::Reconciling | TenantStep::Starting)
    }

    fn after_success(self) -> TenantStep {
        match self {
            TenantStep::Restoring => TenantStep::Reconciling,
            TenantStep::Reconciling => TenantStep::Starting,
            TenantStep::Starting => TenantStep::Switching,
            TenantStep::Switching => TenantStep::Verifying,
            TenantStep::Verifying => TenantStep::Succeeded,
            TenantStep::RollingBack => TenantStep::RolledBack,
            other => other,
        }
    }
}

/// One tenant's progress.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TenantState {
    pub tenant: TenantRef,
    pub step: TenantStep,
    /// The call for `step` was begun and has not finished: a runner resuming
    /// after a crash repeats it.
    #[serde(default)]
    pub in_flight: bool,
    /// Attempts of `step` so far.
    #[serde(default)]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<WallTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    /// Recovery point: the source's last write minus the last restored one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpo_ms: Option<u64>,
    /// Recovery time: from the declared loss to serving again at the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rto_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When each step it went through began and ended (retries included), for
    /// the report's timeline.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub timeline: Vec<StepSpan>,
}

/// One step of one tenant, in time.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StepSpan {
    pub step: TenantStep,
    pub began: WallTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<WallTime>,
}

impl TenantState {
    /// A tenant not reached yet.
    pub fn waiting(tenant: TenantRef) -> Self {
        Self {
            tenant,
            step: TenantStep::Waiting,
            in_flight: false,
            attempts: 0,
            retry_at: None,
            snapshot_id: None,
            rpo_ms: None,
            rto_ms: None,
            error: None,
            timeline: Vec::new(),
        }
    }

    fn end_span(&mut self, step: TenantStep, now: WallTime) {
        if let Some(span) = self.timeline.last_mut().filter(|s| s.step == step && s.ended.is_none()) {
            span.ended = Some(now);
        }
    }
}

/// How failed calls are retried.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RetryRule {
    /// Attempts of one step before the tenant fails.
    pub max_attempts: u32,
    /// Back-off after the first failure; doubles after each.
    pub base_millis: u64,
    pub max_millis: u64,
    /// While waiting for the lease, ask the source to fence again this often.
    pub refence_millis: u64,
}

impl Default for RetryRule {
    fn default() -> Self {
        Self { max_attempts: 3, base_millis: 5_000, max_millis: 60_000, refence_millis: 10_000 }
    }
}

/// Whether a wait until `until`, at most `longest` long when it was set, is
/// still on at `now`. Waits are persisted in wall time (they outlive a
/// restart); one further away than it could ever have been set means the wall
/// clock was set back since, and it is over: waiting for the clock to catch up
/// would stall the failover for as long as the clock jumped.
fn still_waiting(now: WallTime, until: WallTime, longest: Duration) -> bool {
    now < until && until.saturating_since(now) <= longest
}

impl RetryRule {
    fn backoff(&self, attempts: u32) -> Duration {
        let factor = 1u64 << attempts.saturating_sub(1).min(20);
        Duration::from_millis(self.base_millis.saturating_mul(factor).min(self.max_millis))
    }
}

/// What came of asking the source to fence.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceFence {
    /// The source confirmed it stopped (and hands the lease over).
    Fenced,
    /// The source did not answer: the lease's timing fences it.
    Unreachable,
}

/// Progress of the Fencing phase.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct FencingState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceFence>,
    /// When the source was last asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asked_at: Option<WallTime>,
    #[serde(default)]
    pub in_flight: bool,
    /// The site's lease agent was told to take the lease.
    #[serde(default)]
    pub lease_asked: bool,
}

/// Why a failover ended.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum EndReason {
    /// Every wave went through its gate.
    Completed,
    /// Aborted before the source was asked to fence: nothing happened.
    AbortedBeforeFencing,
    /// Aborted while waiting for the lease: the target stopped trying to take it.
    AbortedWhileFencing,
    /// Aborted while moving tenants.
    Aborted,
    /// More tenants of a wave failed than its gate tolerates.
    GateClosed { wave: usize, failed: u32 },
    /// Another site took the lease with a later epoch.
    Superseded { holder: String, epoch: u64 },
}

impl std::fmt::Display for EndReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EndReason::Completed => write!(f, "every wave went through its gate"),
            EndReason::AbortedBeforeFencing => {
                write!(f, "aborted before the source was asked to fence: nothing changed")
            }
            EndReason::AbortedWhileFencing => {
                write!(f, "aborted while waiting for the lease: the target stopped trying to take it")
            }
            EndReason::Aborted => write!(f, "aborted while tenants moved: those moved stay moved"),
            EndReason::GateClosed { wave, failed } => write!(
                f,
                "the gate of wave {} closed with {failed} tenants failed: each one's error is in status.tenants",
                wave + 1
            ),
            EndReason::Superseded { holder, epoch } => {
                write!(f, "{holder} took the lease in epoch {epoch}: this failover may not go on")
            }
        }
    }
}

/// The whole persisted state of one failover.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FailoverState {
    pub name: String,
    pub plan: String,
    pub trigger: Trigger,
    pub source: String,
    pub target: String,
    pub phase: Phase,
    /// The fencing epoch this failover runs under, once the lease is taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// When the source was declared lost: where RTO is measured from.
    pub declared_loss: WallTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<WallTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<WallTime>,
    #[serde(default)]
    pub fencing: FencingState,
    #[serde(default)]
    pub current_wave: usize,
    pub waves: Vec<WaveState>,
    #[serde(default)]
    pub retry: RetryRule,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<EndReason>,
}

/// What identifies a new failover.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewFailover {
    pub name: String,
    pub plan: String,
    pub trigger: Trigger,
    pub source: String,
    pub target: String,
    pub declared_loss: WallTime,
    /// The epoch the target already holds: an automatic failover is created
    /// after its takeover. `None` for a person's failover.
    pub epoch: Option<u64>,
}

/// What the site running the failover observes now (not persisted).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Observation {
    /// The lease's holder and epoch as this site last saw them.
    pub lease_holder: Option<String>,
    pub lease_epoch: u64,
    /// `Some(epoch)` while this site is active under the lease.
    pub active_epoch: Option<u64>,
    /// A person asked to abort.
    pub abort: bool,
    /// Waves a person has approved (the Failover's `spec.approvedWaves`).
    pub approved_waves: u32,
}

/// A call of the site driver. Every call is idempotent.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Call {
    /// Tell the source to stop and hand the lease to the target.
    FenceSource,
    /// Tell this site's lease agent to take the lease once it may.
    AcquireLease,
    /// Tell this site's lease agent to stop trying (abort while fencing).
    CancelLease,
    /// Carry out `step` for tenant `tenant` of wave `wave`.
    Tenant { wave: usize, tenant: usize, step: TenantStep },
}

/// A change of the state that needs no I/O.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Update {
    BeginFencing,
    /// The target is active under the lease with this epoch.
    LeaseTaken {
        epoch: u64,
    },
    StartTenant {
        wave: usize,
        tenant: usize,
    },
    SkipTenant {
        wave: usize,
        tenant: usize,
    },
    RollBack {
        wave: usize,
        tenant: usize,
    },
    NextWave,
    Finish {
        phase: Phase,
        reason: EndReason,
    },
}

/// Why nothing (more) can be done now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wait {
    /// The target does not hold the lease yet.
    Lease,
    /// The target holds the lease but is fenced (cannot renew).
    Fenced,
    /// A failed step is retried then.
    Retry { until: WallTime },
    /// The gate after this wave waits for a person.
    Approval { wave: usize },
}

/// What [`decide`] asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Apply with [`FailoverState::apply`].
    Update(Update),
    /// Record with [`FailoverState::begin`], persist, carry out, then record the
    /// result with [`FailoverState::complete`]. A call already running is not
    /// started twice.
    Call(Call),
    Wait(Wait),
}

/// A successful restore: the snapshot and the recovery point it reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restored {
    pub snapshot_id: String,
    /// The source's last write minus the last restored write.
    pub rpo: Duration,
}

/// What a tenant step produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepOutput {
    Restored(Restored),
    Done,
}

/// A failed tenant step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepError {
    /// What failed, for the status (no secrets).
    pub message: String,
    /// Worth another attempt (a timeout), or not (a checksum mismatch).
    pub retryable: bool,
}

impl StepError {
    /// A failure worth another attempt: a store or a process that may answer later.
    pub fn retry(message: String) -> Self {
        Self { message, retryable: true }
    }

    /// A failure that another attempt would repeat: a mismatch, a missing setting.
    pub fn fatal(message: String) -> Self {
        Self { message, retryable: false }
    }
}

/// The result of a [`Call`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallResult {
    Source(SourceFence),
    LeaseAsked,
    LeaseCancelled,
    Step(Result<StepOutput, StepError>),
}

impl FailoverState {
    /// A failover about to start, with its tenants already put in waves.
    pub fn new(new: NewFailover, waves: Vec<WaveState>, retry: RetryRule) -> Self {
        Self {
            name: new.name,
            plan: new.plan,
            trigger: new.trigger,
            source: new.source,
            target: new.target,
            phase: Phase::Pending,
            epoch: new.epoch,
            declared_loss: new.declared_loss,
            started_at: None,
            completed_at: None,
            fencing: FencingState::default(),
            current_wave: 0,
            waves,
            retry,
            end: None,
        }
    }

    /// Every tenant with its wave index.
    pub fn tenants(&self) -> impl Iterator<Item = (usize, &TenantState)> {
        self.waves.iter().enumerate().flat_map(|(i, w)| w.tenants.iter().map(move |t| (i, t)))
    }

    fn tenant_mut(&mut self, wave: usize, tenant: usize) -> Option<&mut TenantState> {
        self.waves.get_mut(wave).and_then(|w| w.tenants.get_mut(tenant))
    }

    /// Applies an update from [`decide`].
    pub fn apply(&mut self, update: &Update, now: WallTime) {
        match update {
            Update::BeginFencing => {
                self.phase = Phase::Fencing;
                self.started_at.get_or_insert(now);
            }
            Update::LeaseTaken { epoch } => {
                self.epoch = Some(*epoch);
                if self.phase == Phase::Fencing {
                    self.phase = Phase::Running;
                }
            }
            Update::StartTenant { wave, tenant } => {
                if let Some(t) = self.tenant_mut(*wave, *tenant).filter(|t| t.step == TenantStep::Waiting) {
                    t.step = TenantStep::Restoring;
                    t.attempts = 0;
                }
            }
            Update::SkipTenant { wave, tenant } => {
                if let Some(t) = self.tenant_mut(*wave, *tenant).filter(|t| t.step == TenantStep::Waiting) {
                    t.step = TenantStep::NotStarted;
                }
            }
            Update::RollBack { wave, tenant } => {
                if let Some(t) = self.tenant_mut(*wave, *tenant).filter(|t| !t.in_flight && t.step.is_before_switch()) {
                    t.step = TenantStep::RollingBack;
                    t.attempts = 0;
                    t.retry_at = None;
                }
            }
            Update::NextWave => {
                if self.current_wave + 1 < self.waves.len() {
                    self.current_wave += 1;
                }
            }
            Update::Finish { phase, reason } => {
                self.phase = *phase;
                self.end = Some(reason.clone());
                self.completed_at = Some(now);
                for t in self.waves.iter_mut().flat_map(|w| w.tenants.iter_mut()) {
                    if t.step == TenantStep::Waiting {
                        t.step = TenantStep::NotStarted;
                    } else if !t.step.is_terminal() {
                        t.step = TenantStep::Failed;
                        t.in_flight = false;
                        t.error.get_or_insert_with(|| format!("the failover ended ({reason:?}) during this step"));
                    }
                }
            }
        }
    }

    /// Records that `call` is about to be carried out. Persist the state after
    /// this and before the call.
    pub fn begin(&mut self, call: &Call, now: WallTime) {
        match call {
            Call::FenceSource => {
                self.fencing.in_flight = true;
                self.fencing.asked_at = Some(now);
            }
            Call::AcquireLease | Call::CancelLease => {}
            Call::Tenant { wave, tenant, step } => {
                if let Some(t) = self.tenant_mut(*wave, *tenant).filter(|t| t.step == *step) {
                    // NB: resuming an in-flight step is the same attempt.
                    if !t.in_flight {
                        t.in_flight = true;
                        t.attempts += 1;
                        t.retry_at = None;
                        if t.timeline.last().is_none_or(|s| s.step != *step) {
                            t.timeline.push(StepSpan { step: *step, began: now, ended: None });
                        }
                    }
                }
            }
        }
    }

    /// Records the result of `call`. Results that no longer apply (the
    /// failover ended, the tenant moved on) are ignored.
    pub fn complete(&mut self, call: &Call, result: CallResult, now: WallTime) {
        if self.phase.is_terminal() {
            return;
        }
        match (call, result) {
            (Call::FenceSource, CallResult::Source(outcome)) => {
                self.fencing.in_flight = false;
                self.fencing.source = Some(outcome);
            }
            (Call::AcquireLease, CallResult::LeaseAsked) => self.fencing.lease_asked = true,
            (Call::CancelLease, CallResult::LeaseCancelled) => {
                self.apply(&Update::Finish { phase: Phase::Aborted, reason: EndReason::AbortedWhileFencing }, now);
            }
            (Call::Tenant { wave, tenant, step }, CallResult::Step(result)) => {
                let (retry, declared_loss) = (self.retry, self.declared_loss);
                let Some(t) = self.tenant_mut(*wave, *tenant).filter(|t| t.step == *step && t.in_flight) else {
                    return;
                };
                t.in_flight = false;
                match result {
                    Ok(output) => {
                        t.end_span(*step, now);
                        if let StepOutput::Restored(r) = output {
                            t.snapshot_id = Some(r.snapshot_id);
                            t.rpo_ms = Some(u64::try_from(r.rpo.as_millis()).unwrap_or(u64::MAX));
                        }
                        t.step = t.step.after_success();
                        t.attempts = 0;
                        t.retry_at = None;
                        t.error = None;
                        if t.step == TenantStep::Succeeded {
                            t.rto_ms = Some(
                                u64::try_from(now.saturating_since(declared_loss).as_millis()).unwrap_or(u64::MAX),
                            );
                        }
                    }
                    Err(e) if e.retryable && t.attempts < retry.max_attempts => {
                        t.retry_at = Some(now + retry.backoff(t.attempts));
                        t.error = Some(e.message);
                    }
                    Err(e) => {
                        t.end_span(*step, now);
                        t.step = TenantStep::Failed;
                        t.error = Some(e.message);
                    }
                }
            }
            // A result of the wrong kind for the call: a driver bug; the call
            // stays as it was and is tried again.
            _ => {}
        }
    }

    /// Tenants finished (Succeeded), failed, and in all.
    pub fn counts(&self) -> (u32, u32, u32) {
        let (mut done, mut failed, mut total) = (0, 0, 0);
        for (_, t) in self.tenants() {
            total += 1;
            match t.step {
                TenantStep::Succeeded => done += 1,
                TenantStep::Failed => failed += 1,
                _ => {}
            }
        }
        (done, failed, total)
    }

    /// The worst RTO and RPO among the tenants that have them.
    pub fn worst(&self) -> (Option<Duration>, Option<Duration>) {
        let rto = self.tenants().filter_map(|(_, t)| t.rto_ms).max().map(Duration::from_millis);
        let rpo = self.tenants().filter_map(|(_, t)| t.rpo_ms).max().map(Duration::from_millis);
        (rto, rpo)
    }
}

/// What to do next. Pure: the same state and observation give the same actions.
pub fn decide(state: &FailoverState, seen: &Observation, now: WallTime) -> Vec<Action> {
    match state.phase {
        Phase::Succeeded | Phase::Failed | Phase::Aborted => Vec::new(),
        Phase::Pending if seen.abort => {
            vec![Action::Update(Update::Finish { phase: Phase::Aborted, reason: EndReason::AbortedBeforeFencing })]
        }
        Phase::Pending => vec![Action::Update(Update::BeginFencing)],
        Phase::Fencing => decide_fencing(state, seen, now),
        Phase::Running => decide_running(state, seen, now),
    }
}

fn decide_fencing(state: &FailoverState, seen: &Observation, now: WallTime) -> Vec<Action> {
    let f = &state.fencing;
    if seen.abort && f.asked_at.is_none() && !f.lease_asked {
        return vec![Action::Update(Update::Finish { phase: Phase::Aborted, reason: EndReason::AbortedBeforeFencing })];
    }
    let Some(holder) = seen.lease_holder.as_deref() else {
        // NB: nothing before the lease is known (after a restart, say): an old
        // failover must not ask the source to hand over a lease it won since.
        return vec![Action::Wait(Wait::Lease)];
    };
    let held = holder == state.target;
    let known = state.epoch.unwrap_or(0);
    if !held && seen.lease_epoch > known && state.epoch.is_some() {
        let reason = EndReason::Superseded { holder: holder.to_owned(), epoch: seen.lease_epoch };
        return vec![Action::Update(Update::Finish { phase: Phase::Failed, reason })];
    }
    if let (true, Some(epoch), Some(_)) = (held, seen.active_epoch.filter(|e| *e >= known), f.source) {
        return vec![Action::Update(Update::LeaseTaken { epoch })];
    }
    if seen.abort && !held {
        return vec![Action::Call(Call::CancelLease)];
    }
    let mut out = Vec::new();
    let refence = Duration::from_millis(state.retry.refence_millis);
    let due = f.asked_at.is_none_or(|at| !still_waiting(now, at + refence, refence));
    if f.in_flight || f.source.is_none() || (due && !held) {
        out.push(Action::Call(Call::FenceSource));
    }
    if !f.lease_asked {
        out.push(Action::Call(Call::AcquireLease));
    }
    out.push(Action::Wait(if held { Wait::Fenced } else { Wait::Lease }));
    out
}

fn decide_running(state: &FailoverState, seen: &Observation, now: WallTime) -> Vec<Action> {
    let longest_backoff = Duration::from_millis(state.retry.max_millis);
    let epoch = state.epoch.unwrap_or(0);
    let holder = seen.lease_holder.as_deref().unwrap_or_default();
    if seen.lease_epoch > epoch && holder != state.target {
        let reason = EndReason::Superseded { holder: holder.to_owned(), epoch: seen.lease_epoch };
        return vec![Action::Update(Update::Finish { phase: Phase::Failed, reason })];
    }
    let mut out = Vec::new();
    let active = match seen.active_epoch {
        Some(e) if e > epoch && holder == state.target => {
            // Lost and retaken by this site: carry on under the new epoch.
            out.push(Action::Update(Update::LeaseTaken { epoch: e }));
            true
        }
        Some(e) => e == epoch,
        None => false,
    };
    let index = state.current_wave;
    let Some(wave) = state.waves.get(index) else {
        out.push(Action::Update(Update::Finish { phase: Phase::Succeeded, reason: EndReason::Completed }));
        return out;
    };
    let mut in_progress = wave.in_progress();
    for (i, t) in wave.tenants.iter().enumerate() {
        let call = Action::Call(Call::Tenant { wave: index, tenant: i, step: t.step });
        match t.step {
            TenantStep::Waiting if seen.abort => {
                out.push(Action::Update(Update::SkipTenant { wave: index, tenant: i }))
            }
            TenantStep::Waiting if active && in_progress < wave.parallelism as usize => {
                in_progress += 1;
                out.push(Action::Update(Update::StartTenant { wave: index, tenant: i }));
                out.push(Action::Call(Call::Tenant { wave: index, tenant: i, step: TenantStep::Restoring }));
            }
            step if step.is_work() => {
                // NB: discarding a copy at the target is safe fenced or not;
                // everything else acts as the active site and waits for the lease.
                let may_act = active || step == TenantStep::RollingBack;
                if t.in_flight {
                    out.push(if may_act { call } else { Action::Wait(Wait::Fenced) });
                } else if seen.abort && step.is_before_switch() {
                    out.push(Action::Update(Update::RollBack { wave: index, tenant: i }));
                } else if let Some(until) = t.retry_at.filter(|at| still_waiting(now, *at, longest_backoff)) {
                    out.push(Action::Wait(Wait::Retry { until }));
                } else {
                    out.push(if may_act { call } else { Action::Wait(Wait::Fenced) });
                }
            }
            _ => {}
        }
    }
    if !out.is_empty() {
        return out;
    }
    // Every tenant of the wave is done with.
    if seen.abort {
        return vec![Action::Update(Update::Finish { phase: Phase::Aborted, reason: EndReason::Aborted })];
    }
    let last = index + 1 >= state.waves.len();
    match wave.gate_verdict(index, seen.approved_waves) {
        GateVerdict::WaveRunning => Vec::new(),
        GateVerdict::Closed { failed } => {
            vec![Action::Update(Update::Finish {
                phase: Phase::Failed,
                reason: EndReason::GateClosed { wave: index, failed },
            })]
        }
        GateVerdict::Open | GateVerdict::AwaitingApproval if last => {
            vec![Action::Update(Update::Finish { phase: Phase::Succeeded, reason: EndReason::Completed })]
        }
        GateVerdict::AwaitingApproval => vec![Action::Wait(Wait::Approval { wave: index })],
        GateVerdict::Open => vec![Action::Update(Update::NextWave)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::common::Tier;
    use crate::failover::waves::{GateRule, TenantSpec, WaveSpec, assign};

    fn t0() -> WallTime {
        WallTime::from_unix_millis(1_000_000)
    }

    fn secs(n: u64) -> WallTime {
        t0() + Duration::from_secs(n)
    }

    fn state(tenants: usize, parallelism: u32, gate: GateRule) -> FailoverState {
        let waves = [
            WaveSpec { name: "gold".into(), tiers: vec![Tier::Gold], parallelism, gate },
            WaveSpec { name: "rest".into(), tiers: vec![Tier::Silver], parallelism, gate: GateRule::default() },
        ];
        let specs: Vec<_> = (0..tenants)
            .map(|i| TenantSpec {
                tenant: TenantRef { namespace: "ns".into(), name: format!("t{i}") },
                tier: if i % 2 == 0 { Tier::Gold } else { Tier::Silver },
            })
            .collect();
        let new = NewFailover {
            name: "f1".into(),
            plan: "p".into(),
            trigger: Trigger::Automatic,
            source: "a".into(),
            target: "b".into(),
            declared_loss: t0(),
            epoch: None,
        };
        let retry = RetryRule { max_attempts: 2, base_millis: 1_000, max_millis: 4_000, refence_millis: 10_000 };
        FailoverState::new(new, assign("p", &waves, &specs).unwrap(), retry)
    }

    fn held(epoch: u64) -> Observation {
        Observation {
            lease_holder: Some("b".into()),
            lease_epoch: epoch,
            active_epoch: Some(epoch),
            ..Default::default()
        }
    }

    fn calls(actions: &[Action]) -> Vec<Call> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Call(c) => Some(c.clone()),
                _ => None,
            })
            .collect()
    }

    /// Applies updates, and carries out calls at once with `result`, until only waits remain.
    fn drive(
        s: &mut FailoverState,
        seen: &Observation,
        now: WallTime,
        result: impl Fn(&Call) -> CallResult,
    ) -> Vec<Call> {
        let mut log = Vec::new();
        for _ in 0..1_000 {
            let actions = decide(s, seen, now);
            if actions.iter().all(|a| matches!(a, Action::Wait(_))) {
                break;
            }
            for a in actions {
                match a {
                    Action::Update(u) => s.apply(&u, now),
                    Action::Call(c) => {
                        s.begin(&c, now);
                        let r = result(&c);
                        s.complete(&c, r, now);
                        log.push(c);
                    }
                    Action::Wait(_) => {}
                }
            }
        }
        log
    }

    fn ok(call: &Call) -> CallResult {
        match call {
            Call::FenceSource => CallResult::Source(SourceFence::Unreachable),
            Call::AcquireLease => CallResult::LeaseAsked,
            Call::CancelLease => CallResult::LeaseCancelled,
            Call::Tenant { step: TenantStep::Restoring, tenant, .. } => {
                CallResult::Step(Ok(StepOutput::Restored(Restored {
                    snapshot_id: format!("snap{tenant}"),
                    rpo: Duration::from_millis(800),
                })))
            }
            Call::Tenant { .. } => CallResult::Step(Ok(StepOutput::Done)),
        }
    }

    /// The lease as read: held by the source.
    fn source_holds() -> Observation {
        Observation { lease_holder: Some("a".into()), lease_epoch: 1, ..Default::default() }
    }

    #[test]
    fn fencing_waits_for_the_lease_then_tenants_run_every_step_in_order() {
        let mut s = state(4, 2, GateRule::default());
        assert!(drive(&mut s, &Observation::default(), secs(1), ok).is_empty(), "nothing before the lease is read");
        assert_eq!(s.phase, Phase::Fencing);
        let log = drive(&mut s, &source_holds(), secs(1), ok);
        assert_eq!(log, [Call::FenceSource, Call::AcquireLease]);
        assert_eq!(s.phase, Phase::Fencing);
        drive(&mut s, &held(7), secs(100), ok);
        assert_eq!((s.phase, s.epoch, s.end.clone()), (Phase::Succeeded, Some(7), Some(EndReason::Completed)));
        assert_eq!(s.counts(), (4, 0, 4));
        let t = &s.waves[0].tenants[0];
        assert_eq!((t.snapshot_id.as_deref(), t.rpo_ms, t.rto_ms), (Some("snap0"), Some(800), Some(100_000)));
        let steps: Vec<_> = t.timeline.iter().map(|span| (span.step, span.began, span.ended)).collect();
        let done = |step| (step, secs(100), Some(secs(100)));
        use TenantStep::*;
        assert_eq!(steps, [done(Restoring), done(Reconciling), done(Starting), done(Switching), done(Verifying)]);
    }

    #[test]
    fn a_step_retried_is_one_span_from_its_first_attempt_to_its_failure() {
        let mut s = state(1, 1, GateRule::default());
        let failing = |c: &Call| match c {
            Call::Tenant { step: TenantStep::Restoring, .. } => {
                CallResult::Step(Err(StepError { message: "store 503".into(), retryable: true }))
            }
            other => ok(other),
        };
        drive(&mut s, &held(1), secs(1), failing);
        drive(&mut s, &held(1), secs(5), failing);
        let t = &s.waves[0].tenants[0];
        assert_eq!(t.step, TenantStep::Failed);
        let span = StepSpan { step: TenantStep::Restoring, began: secs(1), ended: Some(secs(5)) };
        assert_eq!(t.timeline, [span]);
    }

    #[test]
    fn at_most_parallelism_tenants_of_a_wave_run_and_waves_go_in_order() {
        let mut s = state(8, 2, GateRule::default());
        drive(&mut s, &held(1), secs(1), |c| match c {
            Call::Tenant { .. } => CallResult::Step(Err(StepError { message: "slow".into(), retryable: true })),
            other => ok(other),
        });
        // NB: two gold tenants began, failed once and wait for their retry.
        let actions = decide(&s, &held(1), secs(1));
        assert_eq!(actions.iter().filter(|a| matches!(a, Action::Wait(Wait::Retry { .. }))).count(), 2, "{actions:?}");
        assert_eq!(s.waves[0].in_progress(), 2);
        assert_eq!(s.waves[1].in_progress(), 0);
        let started: Vec<_> = s.waves[0].tenants.iter().map(|t| t.step).collect();
        assert_eq!(started, [TenantStep::Restoring, TenantStep::Restoring, TenantStep::Waiting, TenantStep::Waiting]);
    }

    #[test]
    fn retryable_errors_back_off_and_then_fail_the_tenant_and_a_closed_gate_fails_the_failover() {
        let mut s = state(2, 4, GateRule { max_failed_tenants: 0, require_approval: false });
        let broken = |c: &Call| match c {
            Call::Tenant { step: TenantStep::Reconciling, tenant: 0, .. } => {
                CallResult::Step(Err(StepError { message: "SdI unreachable".into(), retryable: true }))
            }
            other => ok(other),
        };
        drive(&mut s, &held(1), secs(1), broken);
        let t = &s.waves[0].tenants[0];
        assert_eq!((t.step, t.attempts, t.retry_at), (TenantStep::Reconciling, 1, Some(secs(2))));
        drive(&mut s, &held(1), secs(2), broken);
        assert_eq!(s.waves[0].tenants[0].step, TenantStep::Failed);
        assert_eq!(s.waves[0].tenants[0].error.as_deref(), Some("SdI unreachable"));
        assert_eq!((s.phase, s.end.clone()), (Phase::Failed, Some(EndReason::GateClosed { wave: 0, failed: 1 })));
        assert_eq!(s.waves[1].tenants[0].step, TenantStep::NotStarted);
    }

    #[test]
    fn a_wall_clock_set_back_holds_back_neither_a_retry_nor_asking_the_source_again() {
        let mut s = state(2, 4, GateRule::default());
        let broken = |c: &Call| match c {
            Call::Tenant { step: TenantStep::Reconciling, tenant: 0, .. } => {
                CallResult::Step(Err(StepError { message: "SdI unreachable".into(), retryable: true }))
            }
            other => ok(other),
        };
        drive(&mut s, &held(1), secs(1), broken);
        assert_eq!(s.waves[0].tenants[0].retry_at, Some(secs(2)));
        let retry = Call::Tenant { wave: 0, tenant: 0, step: TenantStep::Reconciling };
        assert!(decide(&s, &held(1), secs(1)).contains(&Action::Wait(Wait::Retry { until: secs(2) })));
        // The clock set back ten minutes: the retry is not 10 minutes away.
        let set_back = WallTime::from_unix_millis(secs(1).unix_millis() - 600_000);
        assert!(decide(&s, &held(1), set_back).contains(&Action::Call(retry)), "{:?}", decide(&s, &held(1), set_back));

        // Fencing: asked at 1 s, asked again 10 s later, or at once on a clock set back.
        let mut s = state(2, 4, GateRule::default());
        let seen = Observation { lease_holder: Some("a".into()), lease_epoch: 1, ..Default::default() };
        s.apply(&Update::BeginFencing, secs(1));
        s.begin(&Call::FenceSource, secs(1));
        s.complete(&Call::FenceSource, CallResult::Source(SourceFence::Unreachable), secs(1));
        assert!(!calls(&decide(&s, &seen, secs(5))).contains(&Call::FenceSource));
        assert!(calls(&decide(&s, &seen, secs(11))).contains(&Call::FenceSource));
        assert!(calls(&decide(&s, &seen, set_back)).contains(&Call::FenceSource));
    }

    #[test]
    fn a_gate_that_requires_approval_holds_the_next_wave_until_approved() {
        let mut s = state(2, 4, GateRule { max_failed_tenants: 0, require_approval: true });
        drive(&mut s, &held(1), secs(1), ok);
        assert_eq!(decide(&s, &held(1), secs(1)), [Action::Wait(Wait::Approval { wave: 0 })]);
        assert_eq!(s.waves[1].tenants[0].step, TenantStep::Waiting);
        drive(&mut s, &Observation { approved_waves: 1, ..held(1) }, secs(2), ok);
        assert_eq!(s.phase, Phase::Succeeded);
    }

    #[test]
    fn abort_skips_waiting_tenants_rolls_back_those_before_the_switch_and_finishes_the_switched() {
        let mut s = state(6, 3, GateRule::default());
        drive(&mut s, &held(1), secs(1), |c| match c {
            Call::Tenant { tenant: 0, step: TenantStep::Starting, .. } => {
                CallResult::Step(Err(StepError { message: "busy".into(), retryable: true }))
            }
            Call::Tenant { tenant: 1, step: TenantStep::Verifying, .. } => {
                CallResult::Step(Err(StepError { message: "busy".into(), retryable: true }))
            }
            Call::Tenant { tenant: 2, .. } => {
                CallResult::Step(Err(StepError { message: "down".into(), retryable: false }))
            }
            other => ok(other),
        });
        let steps: Vec<_> = s.waves[0].tenants.iter().map(|t| t.step).collect();
        assert_eq!(steps, [TenantStep::Starting, TenantStep::Verifying, TenantStep::Failed]);
        let aborting = Observation { abort: true, ..held(1) };
        let log = drive(&mut s, &aborting, secs(60), ok);
        assert!(log.contains(&Call::Tenant { wave: 0, tenant: 0, step: TenantStep::RollingBack }), "{log:?}");
        assert!(log.contains(&Call::Tenant { wave: 0, tenant: 1, step: TenantStep::Verifying }), "{log:?}");
        let steps: Vec<_> = s.tenants().map(|(_, t)| t.step).collect();
        assert_eq!(
            steps,
            [
                TenantStep::RolledBack,
                TenantStep::Succeeded,
                TenantStep::Failed,
                TenantStep::NotStarted,
                TenantStep::NotStarted,
                TenantStep::NotStarted
            ]
        );
        assert_eq!((s.phase, s.end.clone()), (Phase::Aborted, Some(EndReason::Aborted)));
    }

    #[test]
    fn abort_before_fencing_does_nothing_and_while_fencing_cancels_the_takeover() {
        let mut s = state(2, 1, GateRule::default());
        let aborting = Observation { abort: true, ..Default::default() };
        assert!(drive(&mut s, &aborting, secs(1), ok).is_empty());
        assert_eq!((s.phase, s.end.clone()), (Phase::Aborted, Some(EndReason::AbortedBeforeFencing)));
        let mut s = state(2, 1, GateRule::default());
        drive(&mut s, &source_holds(), secs(1), ok);
        let aborting = Observation { abort: true, ..source_holds() };
        assert_eq!(drive(&mut s, &aborting, secs(2), ok), [Call::CancelLease]);
        assert_eq!((s.phase, s.end.clone()), (Phase::Aborted, Some(EndReason::AbortedWhileFencing)));
    }

    #[test]
    fn the_source_is_asked_again_while_the_lease_does_not_come() {
        let mut s = state(2, 1, GateRule::default());
        drive(&mut s, &source_holds(), secs(1), ok);
        assert!(drive(&mut s, &source_holds(), secs(5), ok).is_empty());
        assert_eq!(drive(&mut s, &source_holds(), secs(11), ok), [Call::FenceSource]);
    }

    #[test]
    fn an_automatic_failover_whose_epoch_was_overtaken_while_fencing_is_superseded() {
        let mut s = state(2, 1, GateRule::default());
        s.epoch = Some(2);
        let overtaken = Observation { lease_holder: Some("a".into()), lease_epoch: 3, ..Default::default() };
        assert!(drive(&mut s, &overtaken, secs(1), ok).is_empty(), "the source is not asked to hand over");
        assert_eq!(s.end, Some(EndReason::Superseded { holder: "a".into(), epoch: 3 }));
        let mut s = state(2, 1, GateRule::default());
        s.epoch = Some(2);
        drive(&mut s, &held(2), secs(1), ok);
        assert_eq!((s.phase, s.epoch), (Phase::Succeeded, Some(2)));
    }

    #[test]
    fn a_later_epoch_of_another_site_supersedes_the_failover_and_fenced_means_wait() {
        let mut s = state(2, 1, GateRule::default());
        let log = drive(&mut s, &held(3), secs(1), |c| match c {
            Call::Tenant { step: TenantStep::Starting, .. } => {
                CallResult::Step(Err(StepError { message: "x".into(), retryable: true }))
            }
            other => ok(other),
        });
        assert!(!log.is_empty());
        let fenced = Observation { active_epoch: None, ..held(3) };
        assert!(decide(&s, &fenced, secs(100)).iter().all(|a| matches!(a, Action::Wait(Wait::Fenced))));
        let lost =
            Observation { lease_holder: Some("a".into()), lease_epoch: 4, active_epoch: None, ..Default::default() };
        drive(&mut s, &lost, secs(100), ok);
        assert_eq!(s.phase, Phase::Failed);
        assert_eq!(s.end, Some(EndReason::Superseded { holder: "a".into(), epoch: 4 }));
        assert_eq!(s.waves[0].tenants[0].step, TenantStep::Failed);
    }

    #[test]
    fn a_crash_repeats_only_the_in_flight_call_and_the_state_survives_json() {
        let mut s = state(2, 1, GateRule::default());
        drive(&mut s, &held(1), secs(1), |c| match c {
            Call::Tenant { step: TenantStep::Switching, .. } => {
                CallResult::Step(Err(StepError { message: "x".into(), retryable: true }))
            }
            other => ok(other),
        });
        // The retry of Switching begins, is persisted, and the runner dies.
        let switching = Call::Tenant { wave: 0, tenant: 0, step: TenantStep::Switching };
        s.begin(&switching, secs(30));
        let persisted = serde_json::to_string(&s).unwrap();
        let mut resumed: FailoverState = serde_json::from_str(&persisted).unwrap();
        assert_eq!(resumed, s);
        assert_eq!(calls(&decide(&resumed, &held(1), secs(31))), std::slice::from_ref(&switching));
        let log = drive(&mut resumed, &held(1), secs(31), ok);
        assert_eq!(log.iter().filter(|c| **c == switching).count(), 1, "{log:?}");
        assert_eq!(resumed.phase, Phase::Succeeded);
        assert!(persisted.contains("\"inFlight\":true"), "{persisted}");
    }
}
