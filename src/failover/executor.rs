//! Carrying a failover out: the [`SiteDriver`] that does each step at the
//! sites, the [`StateStore`] that persists the state before and after each
//! call, and [`run`], which loops `decide → begin → persist → call → complete →
//! persist` with up to a wave's parallelism of calls at once.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};

use super::clock::Clock;
use super::error::{Error, Result};
use super::machine::{
    Action, Call, CallResult, FailoverState, Observation, Phase, Restored, SourceFence, StepError, StepOutput,
    TenantStep, Trigger, Wait, decide,
};
use crate::api::common::TenantRef;
use crate::store::{self, ObjectStore, PutCondition};

/// What a driver call knows of the failover it serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepContext {
    pub failover: String,
    pub plan: String,
    pub trigger: Trigger,
    pub source: String,
    pub target: String,
    /// The fencing epoch the target runs under (none before the lease is taken):
    /// the app is activated with it and SdI refuses anything older.
    pub epoch: Option<u64>,
}

impl StepContext {
    /// The context of `state` as it is now.
    pub fn of(state: &FailoverState) -> Self {
        Self {
            failover: state.name.clone(),
            plan: state.plan.clone(),
            trigger: state.trigger,
            source: state.source.clone(),
            target: state.target.clone(),
            epoch: state.epoch,
        }
    }
}

/// How a site is driven: Kubernetes at a real site, local processes in the lab,
/// a fake in tests. Every method is idempotent: it may run again after a crash,
/// or after an earlier run stopped halfway, and must then finish the job or find
/// it done.
#[async_trait]
pub trait SiteDriver: Send + Sync {
    /// Asks the source to stop writes and SdI sends and hand the lease to the
    /// target. [`SourceFence::Unreachable`] if it does not answer: the lease's
    /// timing fences it anyway.
    async fn fence_source(&self, ctx: &StepContext) -> SourceFence;

    /// Tells this site's lease agent to take the lease as soon as it may
    /// (a manual failover; an automatic one holds it already).
    async fn acquire_lease(&self, ctx: &StepContext);

    /// Tells this site's lease agent to stop trying to take the lease.
    async fn cancel_lease(&self, ctx: &StepContext);

    /// Restores the tenant's latest verified snapshot and its WAL at the target.
    async fn restore_tenant(&self, ctx: &StepContext, tenant: &TenantRef) -> Result<Restored, StepError>;

    /// Imports what SdI already holds for the tenant, so numbering continues and
    /// nothing is sent twice.
    async fn reconcile_tenant(&self, ctx: &StepContext, tenant: &TenantRef) -> Result<(), StepError>;

    /// Starts the tenant's stack at the target, activated under `ctx.epoch`.
    async fn start_tenant(&self, ctx: &StepContext, tenant: &TenantRef) -> Result<(), StepError>;

    /// Points the tenant's endpoint and SdI channel at the target.
    async fn switch_tenant(&self, ctx: &StepContext, tenant: &TenantRef) -> Result<(), StepError>;

    /// Checks the tenant serves at the target, at the application level.
    async fn verify_tenant(&self, ctx: &StepContext, tenant: &TenantRef) -> Result<(), StepError>;

    /// Stops and deletes the tenant's copy at the target (abort before its switch).
    async fn discard_tenant(&self, ctx: &StepContext, tenant: &TenantRef) -> Result<(), StepError>;
}

/// Carries out one call with `driver`.
pub async fn carry_out(
    driver: &dyn SiteDriver,
    ctx: &StepContext,
    tenant: Option<&TenantRef>,
    call: &Call,
) -> CallResult {
    let (step, tenant) = match (call, tenant) {
        (Call::FenceSource, _) => return CallResult::Source(driver.fence_source(ctx).await),
        (Call::AcquireLease, _) => {
            driver.acquire_lease(ctx).await;
            return CallResult::LeaseAsked;
        }
        (Call::CancelLease, _) => {
            driver.cancel_lease(ctx).await;
            return CallResult::LeaseCancelled;
        }
        (Call::Tenant { step, .. }, Some(tenant)) => (*step, tenant),
        (Call::Tenant { .. }, None) => {
            let message = "no such tenant in the failover state".to_owned();
            return CallResult::Step(Err(StepError { message, retryable: false }));
        }
    };
    let done = |r: Result<(), StepError>| CallResult::Step(r.map(|()| StepOutput::Done));
    match step {
        TenantStep::Restoring => CallResult::Step(driver.restore_tenant(ctx, tenant).await.map(StepOutput::Restored)),
        TenantStep::Reconciling => done(driver.reconcile_tenant(ctx, tenant).await),
        TenantStep::Starting => done(driver.start_tenant(ctx, tenant).await),
        TenantStep::Switching => done(driver.switch_tenant(ctx, tenant).await),
        TenantStep::Verifying => done(driver.verify_tenant(ctx, tenant).await),
        TenantStep::RollingBack => done(driver.discard_tenant(ctx, tenant).await),
        other => {
            let message = format!("{other:?} is not a step a driver carries out");
            CallResult::Step(Err(StepError { message, retryable: false }))
        }
    }
}

/// Where a failover's state is persisted between calls.
#[async_trait]
pub trait StateStore: Send {
    /// Persists `state`; an error means it may not be persisted, and the
    /// runner stops before calling anything.
    async fn save(&mut self, state: &FailoverState) -> Result<()>;
}

/// A failover's state as one JSON object in a store (the lab keeps it in the
/// witness store, next to the lease), written with `IfMatch` so that two
/// runners cannot both drive it.
#[derive(Clone, Debug)]
pub struct StateFile {
    store: Arc<dyn ObjectStore>,
    key: String,
    etag: String,
}

impl StateFile {
    /// The key of failover `name` of `plan`.
    pub fn key_for(plan: &str, name: &str) -> String {
        format!("witness/{plan}/failovers/{name}.json")
    }

    /// Persists a new failover; refused if one of that name exists.
    pub async fn create(store: Arc<dyn ObjectStore>, state: &FailoverState) -> Result<Self> {
        let key = Self::key_for(&state.plan, &state.name);
        let body = encode(&key, state)?;
        let etag = match store.put(&key, body, PutCondition::IfAbsent).await {
            Ok(outcome) => outcome.etag,
            Err(store::Error::AlreadyExists { .. }) => return Err(Error::StateConflict { key }),
            Err(source) => return Err(Error::StateStore { key, operation: "create", source: Box::new(source) }),
        };
        Ok(Self { store, key, etag })
    }

    /// Reads a persisted failover, to resume it.
    pub async fn load(store: Arc<dyn ObjectStore>, plan: &str, name: &str) -> Result<Option<(FailoverState, Self)>> {
        let key = Self::key_for(plan, name);
        let failed = |operation, source| Error::StateStore { key: key.clone(), operation, source: Box::new(source) };
        for _ in 0..3 {
            let Some(before) = store.head(&key).await.map_err(|e| failed("read", e))? else { return Ok(None) };
            let bytes = store.get(&key).await.map_err(|e| failed("read", e))?;
            let after = store.head(&key).await.map_err(|e| failed("read", e))?;
            if after.is_some_and(|a| a.etag == before.etag) {
                let state =
                    serde_json::from_slice(&bytes).map_err(|source| Error::StateFormat { key: key.clone(), source })?;
                return Ok(Some((state, Self { store, key, etag: before.etag })));
            }
        }
        Err(Error::StateConflict { key })
    }
}

fn encode(key: &str, state: &FailoverState) -> Result<Bytes> {
    serde_json::to_vec(state).map(Bytes::from).map_err(|source| Error::StateFormat { key: key.to_owned(), source })
}

#[async_trait]
impl StateStore for StateFile {
    async fn save(&mut self, state: &FailoverState) -> Result<()> {
        let body = encode(&self.key, state)?;
        match self.store.put(&self.key, body, PutCondition::IfMatch(self.etag.clone())).await {
            Ok(outcome) => {
                self.etag = outcome.etag;
                Ok(())
            }
            Err(store::Error::PreconditionFailed { .. } | store::Error::NotFound { .. }) => {
                Err(Error::StateConflict { key: self.key.clone() })
            }
            Err(source) => {
                Err(Error::StateStore { key: self.key.clone(), operation: "save", source: Box::new(source) })
            }
        }
    }
}

/// Where [`run`] stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// The failover ended in this phase.
    Finished(Phase),
    /// Nothing more to do until the observation changes or time passes.
    Waiting(Vec<Wait>),
}

type Running<'a> = Pin<Box<dyn Future<Output = (Call, CallResult)> + Send + 'a>>;

/// Drives `state` as far as it goes: decides, records and persists each call
/// before making it, makes the calls (those of a wave in parallel), records and
/// persists their results, and decides again. `observe` is asked before every
/// decision. Returns when the failover ends or has to wait; call it again when
/// the observation changes, after a back-off, or after a restart with the state
/// loaded from the store: then it repeats only the calls that were in flight.
pub async fn run(
    state: &mut FailoverState,
    driver: &dyn SiteDriver,
    states: &mut dyn StateStore,
    clock: &dyn Clock,
    observe: &(dyn Fn() -> Observation + Send + Sync),
) -> Result<Progress> {
    let mut running: FuturesUnordered<Running<'_>> = FuturesUnordered::new();
    let mut calls: HashSet<Call> = HashSet::new();
    // Calls that finished while the state was being saved, not yet recorded.
    let mut finished: Vec<(Call, CallResult)> = Vec::new();
    loop {
        let now = clock.wall();
        let mut changed = false;
        let mut waits = Vec::new();
        let mut started = Vec::new();
        for action in decide(state, &observe(), now) {
            match action {
                Action::Update(update) => {
                    state.apply(&update, now);
                    changed = true;
                }
                Action::Call(call) if !calls.contains(&call) => {
                    state.begin(&call, now);
                    changed = true;
                    started.push(call);
                }
                Action::Call(_) => {}
                Action::Wait(wait) => waits.push(wait),
            }
        }
        if changed {
            save_while_running(states, state, &mut running, &mut finished).await?;
        }
        let ctx = StepContext::of(state);
        for call in started {
            let tenant = match &call {
                Call::Tenant { wave, tenant, .. } => {
                    state.waves.get(*wave).and_then(|w| w.tenants.get(*tenant)).map(|t| t.tenant.clone())
                }
                _ => None,
            };
            calls.insert(call.clone());
            let ctx = ctx.clone();
            running.push(Box::pin(async move {
                let result = carry_out(driver, &ctx, tenant.as_ref(), &call).await;
                (call, result)
            }));
        }
        if changed {
            continue;
        }
        // Nothing new to decide: wait for a call to finish, or stop.
        if finished.is_empty() {
            match running.next().await {
                Some(done) => finished.push(done),
                None if state.phase.is_terminal() => return Ok(Progress::Finished(state.phase)),
                None => return Ok(Progress::Waiting(waits)),
            }
        }
        // NB: every call finished by now is recorded under one save: with 200
        // tenants a save per call was over a thousand writes to the witness
        // store, one after the other.
        while let Some(Some(done)) = running.next().now_or_never() {
            finished.push(done);
        }
        for (call, result) in std::mem::take(&mut finished) {
            calls.remove(&call);
            state.complete(&call, result, clock.wall());
        }
        save_while_running(states, state, &mut running, &mut finished).await?;
    }
}

/// Saves `state`, and meanwhile lets the calls in flight go on (they are only
/// polled here): those that finish are kept in `finished`, to be recorded next.
async fn save_while_running(
    states: &mut dyn StateStore,
    state: &FailoverState,
    running: &mut FuturesUnordered<Running<'_>>,
    finished: &mut Vec<(Call, CallResult)>,
) -> Result<()> {
    let save = states.save(state);
    tokio::pin!(save);
    loop {
        tokio::select! {
            saved = &mut save => return saved,
            Some(done) = running.next(), if !running.is_empty() => finished.push(done),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::time::Duration;

    use tokio::sync::Notify;

    use super::*;
    use crate::api::common::Tier;
    use crate::failover::clock::{VirtualClock, WallTime};
    use crate::failover::machine::{NewFailover, RetryRule};
    use crate::failover::waves::{GateRule, TenantSpec, WaveSpec, assign};
    use crate::store::fs::FsStore;

    /// Counts calls by (tenant name, step); the call number `crash_at` never
    /// returns and wakes `crashed` instead.
    #[derive(Default)]
    struct FakeDriver {
        calls: Mutex<Vec<(String, TenantStep)>>,
        crash_at: Option<usize>,
        crashed: Notify,
    }

    impl FakeDriver {
        async fn step(&self, tenant: &TenantRef, step: TenantStep) -> Result<(), StepError> {
            let n = {
                let mut calls = self.calls.lock().unwrap();
                calls.push((tenant.name.clone(), step));
                calls.len()
            };
            if self.crash_at == Some(n) {
                self.crashed.notify_one();
                std::future::pending::<()>().await;
            }
            Ok(())
        }

        fn count(&self) -> HashMap<(String, TenantStep), usize> {
            let mut out = HashMap::new();
            for c in self.calls.lock().unwrap().iter() {
                *out.entry(c.clone()).or_default() += 1;
            }
            out
        }
    }

    #[async_trait]
    impl SiteDriver for FakeDriver {
        async fn fence_source(&self, _: &StepContext) -> SourceFence {
            SourceFence::Unreachable
        }
        async fn acquire_lease(&self, _: &StepContext) {}
        async fn cancel_lease(&self, _: &StepContext) {}
        async fn restore_tenant(&self, ctx: &StepContext, t: &TenantRef) -> Result<Restored, StepError> {
            assert_eq!(ctx.epoch, Some(4));
            self.step(t, TenantStep::Restoring).await?;
            Ok(Restored { snapshot_id: format!("snap-{}", t.name), rpo: Duration::from_secs(1) })
        }
        async fn reconcile_tenant(&self, _: &StepContext, t: &TenantRef) -> Result<(), StepError> {
            self.step(t, TenantStep::Reconciling).await
        }
        async fn start_tenant(&self, _: &StepContext, t: &TenantRef) -> Result<(), StepError> {
            self.step(t, TenantStep::Starting).await
        }
        async fn switch_tenant(&self, _: &StepContext, t: &TenantRef) -> Result<(), StepError> {
            self.step(t, TenantStep::Switching).await
        }
        async fn verify_tenant(&self, _: &StepContext, t: &TenantRef) -> Result<(), StepError> {
            self.step(t, TenantStep::Verifying).await
        }
        async fn discard_tenant(&self, _: &StepContext, t: &TenantRef) -> Result<(), StepError> {
            self.step(t, TenantStep::RollingBack).await
        }
    }

    fn new_state() -> FailoverState {
        let waves = [WaveSpec {
            name: "all".into(),
            tiers: vec![Tier::Gold, Tier::Silver],
            parallelism: 2,
            gate: GateRule::default(),
        }];
        let tenants: Vec<_> = (0..5)
            .map(|i| TenantSpec {
                tenant: TenantRef { namespace: "ns".into(), name: format!("t{i}") },
                tier: Tier::Gold,
            })
            .collect();
        let new = NewFailover {
            name: "f-4".into(),
            plan: "main".into(),
            trigger: Trigger::Automatic,
            source: "a".into(),
            target: "b".into(),
            declared_loss: WallTime::from_unix_millis(0),
            epoch: Some(4),
        };
        FailoverState::new(new, assign("main", &waves, &tenants).unwrap(), RetryRule::default())
    }

    fn held() -> Observation {
        Observation { lease_holder: Some("b".into()), lease_epoch: 4, active_epoch: Some(4), ..Default::default() }
    }

    #[tokio::test]
    async fn a_runner_that_dies_mid_step_is_resumed_from_the_store_and_repeats_only_that_step() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(FsStore::open(dir.path()).unwrap());
        let clock = VirtualClock::new(WallTime::from_unix_millis(5_000));
        let mut state = new_state();
        let mut file = StateFile::create(store.clone(), &state).await.unwrap();
        assert!(matches!(StateFile::create(store.clone(), &state).await, Err(Error::StateConflict { .. })));

        // The 7th driver call hangs; the runner is dropped there, as in a crash.
        let crashing = FakeDriver { crash_at: Some(7), ..FakeDriver::default() };
        tokio::select! {
            r = run(&mut state, &crashing, &mut file, &clock, &held) => panic!("finished before the crash: {r:?}"),
            () = crashing.crashed.notified() => {}
        }
        let (crashed_call, _) = crashing.calls.lock().unwrap()[6].clone();

        // A new runner loads the state and finishes the failover. NB: a save of
        // the dead runner may still land after the load (here: its blocking
        // write thread; with S3: a request in flight); the new runner's save then
        // fails with StateConflict before it calls anything, and it reloads.
        let driver = FakeDriver::default();
        let mut resumed = None;
        for _ in 0..3 {
            let (mut state, mut file) = StateFile::load(store.clone(), "main", "f-4").await.unwrap().unwrap();
            assert!(state.tenants().any(|(_, t)| t.in_flight));
            match run(&mut state, &driver, &mut file, &clock, &held).await {
                Ok(progress) => {
                    assert_eq!(progress, Progress::Finished(Phase::Succeeded));
                    resumed = Some(state);
                    break;
                }
                Err(Error::StateConflict { .. }) => continue,
                Err(e) => panic!("{e}"),
            }
        }
        let resumed = resumed.expect("the resumed runner finishes");
        assert_eq!(resumed.counts(), (5, 0, 5));

        // Every step ran exactly once over both runners, but those in flight at
        // the crash: twice.
        let (before, after) = (crashing.count(), driver.count());
        let in_flight_at_crash: Vec<_> = before.keys().filter(|k| after.contains_key(*k)).cloned().collect();
        assert!(!in_flight_at_crash.is_empty() && in_flight_at_crash.len() <= 2, "{in_flight_at_crash:?}");
        assert!(in_flight_at_crash.iter().any(|(t, _)| *t == crashed_call));
        for t in 0..5 {
            for step in [
                TenantStep::Restoring,
                TenantStep::Reconciling,
                TenantStep::Starting,
                TenantStep::Switching,
                TenantStep::Verifying,
            ] {
                let key = (format!("t{t}"), step);
                let n = before.get(&key).unwrap_or(&0) + after.get(&key).unwrap_or(&0);
                let expected = if in_flight_at_crash.contains(&key) { 2 } else { 1 };
                assert_eq!(n, expected, "{key:?}");
            }
        }
        let (reloaded, _) = StateFile::load(store, "main", "f-4").await.unwrap().unwrap();
        assert_eq!(reloaded, resumed);
    }

    #[tokio::test]
    async fn a_runner_waits_for_the_lease_and_a_second_runner_on_a_stale_copy_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(FsStore::open(dir.path()).unwrap());
        let clock = VirtualClock::new(WallTime::from_unix_millis(5_000));
        let mut state = new_state();
        let mut file = StateFile::create(store.clone(), &state).await.unwrap();
        let mut stale = file.clone();
        let driver = FakeDriver::default();
        let source_holds = || Observation { lease_holder: Some("a".into()), lease_epoch: 3, ..Observation::default() };
        state.epoch = None;
        let progress = run(&mut state, &driver, &mut file, &clock, &source_holds).await.unwrap();
        assert_eq!(progress, Progress::Waiting(vec![Wait::Lease]));
        assert_eq!(state.phase, Phase::Fencing);
        assert!(matches!(stale.save(&state).await, Err(Error::StateConflict { .. })));
    }
}
