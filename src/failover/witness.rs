//! The witness lease on an [`ObjectStore`]: reads and conditional writes of the
//! lease object, and the loop that runs a site's [`LeaseAgent`] against it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::time::MissedTickBehavior;

use super::clock::{Clock, MonoTime};
use super::error::{Error, Result};
use super::fencing::FenceControl;
use super::health::SiteHealth;
use super::lease::{
    LeaseAction, LeaseAgent, LeaseRecord, LeaseView, Standing, Takeover, Versioned, WitnessOp, WitnessReply,
    WitnessRequest, lease_key,
};
use crate::store::{self, ObjectStore, PutCondition};

/// Reads of a lease that changes in between are retried this often.
const READ_ATTEMPTS: usize = 3;

/// A plan's lease object in the witness store.
#[derive(Clone, Debug)]
pub struct Witness {
    store: Arc<dyn ObjectStore>,
    plan: String,
    key: String,
}

/// A person's failover asks the site holding the lease in an epoch to hand it
/// over: `witness/<plan>/handover/<epoch>`, written once (a request cannot be
/// changed nor replayed: once the lease is handed over, its epoch is past).
/// The holder's agent reads it and hands over ([`LeaseCommand::HandOver`]);
/// the witness is the one place both sites reach, so it carries the request.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HandOverRequest {
    /// The site the lease goes to.
    pub to: String,
    /// The Failover that asks.
    pub failover: String,
}

impl Witness {
    /// The lease of `plan` in `store`, under [`lease_key`].
    pub fn new(store: Arc<dyn ObjectStore>, plan: &str) -> Self {
        Self { store, plan: plan.to_owned(), key: lease_key(plan) }
    }

    fn handover_key(&self, epoch: u64) -> String {
        format!("witness/{}/handover/{epoch}", self.plan)
    }

    /// Asks the holder of `epoch` to hand the lease over; asking again for
    /// the same site is no change, for another is refused.
    pub async fn request_handover(&self, epoch: u64, request: &HandOverRequest) -> Result<()> {
        let key = self.handover_key(epoch);
        let body = serde_json::to_vec(request).map_err(|source| Error::HandOverFormat { key: key.clone(), source })?;
        match self.store.put(&key, Bytes::from(body), PutCondition::IfAbsent).await {
            Ok(_) => Ok(()),
            Err(store::Error::AlreadyExists { .. }) => match self.handover_request(epoch).await? {
                Some(asked) if asked.to == request.to => Ok(()),
                asked => Err(Error::HandOverConflict { key, asked: asked.map(|a| a.to).unwrap_or_default() }),
            },
            Err(e) => Err(Error::Witness { key, operation: "request hand-over", source: Box::new(e) }),
        }
    }

    /// The hand-over asked of the holder of `epoch`, if any.
    pub async fn handover_request(&self, epoch: u64) -> Result<Option<HandOverRequest>> {
        let key = self.handover_key(epoch);
        match self.store.get(&key).await {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map(Some).map_err(|source| Error::HandOverFormat { key, source })
            }
            Err(store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(Error::Witness { key, operation: "read hand-over", source: Box::new(e) }),
        }
    }

    /// The object's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The plan whose lease this is.
    pub fn plan(&self) -> &str {
        &self.plan
    }

    /// The store that holds it.
    pub fn store(&self) -> &dyn ObjectStore {
        self.store.as_ref()
    }

    /// The lease and its ETag, or `None` if there is none. The ETag is read
    /// before and after the content, and the read retried if they differ, so
    /// the pair is one version.
    pub async fn read(&self) -> Result<Option<Versioned>> {
        for _ in 0..READ_ATTEMPTS {
            let Some(before) = self.store.head(&self.key).await.map_err(|e| self.witness("read", e))? else {
                return Ok(None);
            };
            let bytes = match self.store.get(&self.key).await {
                Ok(bytes) => bytes,
                Err(store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(self.witness("read", e)),
            };
            let after = self.store.head(&self.key).await.map_err(|e| self.witness("read", e))?;
            if after.is_some_and(|a| a.etag == before.etag) {
                let record = serde_json::from_slice(&bytes)
                    .map_err(|source| Error::LeaseFormat { key: self.key.clone(), source })?;
                return Ok(Some(Versioned { etag: before.etag, record }));
            }
        }
        Err(Error::LeaseUnstable { key: self.key.clone() })
    }

    /// Writes the first lease (`IfAbsent`); the new ETag.
    pub async fn create(&self, record: &LeaseRecord) -> Result<String> {
        self.put(record, PutCondition::IfAbsent, "create").await
    }

    /// Replaces the lease if its ETag is still `if_match` (`IfMatch`); the new ETag.
    pub async fn replace(&self, if_match: &str, record: &LeaseRecord) -> Result<String> {
        self.put(record, PutCondition::IfMatch(if_match.to_owned()), "replace").await
    }

    async fn put(&self, record: &LeaseRecord, condition: PutCondition, operation: &'static str) -> Result<String> {
        let body = serde_json::to_vec(record).map_err(|source| Error::LeaseFormat { key: self.key.clone(), source })?;
        match self.store.put(&self.key, Bytes::from(body), condition).await {
            Ok(outcome) => Ok(outcome.etag),
            // NB: a replace of a deleted lease is a conflict too: the version
            // the writer saw is gone.
            Err(
                store::Error::PreconditionFailed { .. }
                | store::Error::AlreadyExists { .. }
                | store::Error::NotFound { .. },
            ) => Err(Error::LeaseConflict { key: self.key.clone() }),
            Err(e) => Err(self.witness(operation, e)),
        }
    }

    /// Carries out one request of an agent. Errors other than a failed
    /// condition become [`WitnessReply::Failed`]: the outcome is unknown.
    pub async fn execute(&self, op: &WitnessOp) -> WitnessReply {
        let result = match op {
            WitnessOp::Read => self.read().await.map(WitnessReply::Read),
            WitnessOp::Create(record) => self.create(record).await.map(|etag| WitnessReply::Written { etag }),
            WitnessOp::Replace { if_match, record } => {
                self.replace(if_match, record).await.map(|etag| WitnessReply::Written { etag })
            }
        };
        match result {
            Ok(reply) => reply,
            Err(Error::LeaseConflict { .. }) => WitnessReply::Conflict,
            Err(e) => {
                tracing::warn!(key = %self.key, error = &e as &dyn std::error::Error, "witness request failed");
                WitnessReply::Failed
            }
        }
    }

    fn witness(&self, operation: &'static str, source: store::Error) -> Error {
        Error::Witness { key: self.key.clone(), operation, source: Box::new(source) }
    }
}

/// Ticks `agent` at `now` and carries out its requests one after the other,
/// until it has nothing more to send at this instant. Returns its decisions
/// (`Fence`, `Activate`) for the caller to carry out; after a `Fence` the caller
/// calls [`LeaseAgent::confirm_fenced`]. For tests and one-shot commands with a
/// virtual clock; a site runs [`keep`].
pub async fn pump(
    agent: &mut LeaseAgent,
    witness: &Witness,
    now: MonoTime,
    holder_health: SiteHealth,
) -> Vec<LeaseAction> {
    let mut decisions = Vec::new();
    // NB: bounded: at one instant an agent sends at most a read, a write and a
    // read to settle it, then waits for time to pass.
    for _ in 0..16 {
        let mut actions = agent.tick(now, holder_health);
        let mut sent = false;
        while let Some(request) = take_request(&mut actions, &mut decisions) {
            sent = true;
            let reply = witness.execute(&request.op).await;
            actions = agent.on_reply(now, request.id, reply);
        }
        if !sent {
            break;
        }
    }
    decisions
}

/// Moves the decisions of `actions` to `decisions` and returns its request, if any.
fn take_request(actions: &mut Vec<LeaseAction>, decisions: &mut Vec<LeaseAction>) -> Option<WitnessRequest> {
    let mut request = None;
    for action in actions.drain(..) {
        match action {
            LeaseAction::Send(r) => request = Some(r),
            decision => decisions.push(decision),
        }
    }
    request
}

/// A command to a running [`keep`] loop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseCommand {
    SetTakeover(Takeover),
    /// Hand the lease to this site (planned failover or failback).
    HandOver {
        to: String,
    },
}

/// What [`keep`] publishes after every step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseStatus {
    pub standing: Standing,
    pub view: LeaseView,
}

type Reply = Pin<Box<dyn Future<Output = (u64, WitnessReply)> + Send>>;

/// Runs a site's lease agent until `commands` closes: ticks it every
/// `check_interval`, sends its requests to the witness (one at a time, while
/// still ticking so the fence deadline is kept even if the store hangs),
/// carries out its decisions with `fence`, and publishes its standing.
/// `holder_health` is the health of the site the lease names, kept up to date
/// by the prober. Returns the agent.
pub async fn keep(
    mut agent: LeaseAgent,
    witness: Witness,
    fence: Arc<dyn FenceControl>,
    clock: Arc<dyn Clock>,
    holder_health: watch::Receiver<SiteHealth>,
    mut commands: mpsc::Receiver<LeaseCommand>,
    status: watch::Sender<LeaseStatus>,
) -> LeaseAgent {
    let mut inflight: Option<Reply> = None;
    let mut ticker = tokio::time::interval(agent.timing().check_interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let actions = tokio::select! {
            _ = ticker.tick() => {
                let health = *holder_health.borrow();
                agent.tick(clock.now(), health)
            }
            (id, reply) = async {
                match inflight.as_mut() {
                    Some(reply) => reply.await,
                    None => std::future::pending().await,
                }
            } => {
                inflight = None;
                tracing::debug!(site = agent.site(), id, ?reply, "the witness answered");
                agent.on_reply(clock.now(), id, reply)
            }
            command = commands.recv() => match command {
                None => break,
                Some(LeaseCommand::SetTakeover(takeover)) => {
                    agent.set_takeover(takeover);
                    Vec::new()
                }
                Some(LeaseCommand::HandOver { to }) => agent.hand_over(to),
            },
        };
        for action in actions {
            match action {
                LeaseAction::Fence => {
                    tracing::warn!(site = agent.site(), "fencing: no write nor SdI send until the lease is renewed");
                    let began = std::time::Instant::now();
                    fence.fence().await;
                    agent.confirm_fenced();
                    slow(agent.site(), "fencing the site", began, agent.timing().renew_interval);
                }
                LeaseAction::Activate { epoch } => {
                    tracing::info!(site = agent.site(), epoch, "active under the witness lease");
                    let began = std::time::Instant::now();
                    fence.activate(epoch).await;
                    slow(agent.site(), "activating the site", began, agent.timing().renew_interval);
                }
                LeaseAction::Send(request) => {
                    let (witness, site, every) =
                        (witness.clone(), agent.site().to_owned(), agent.timing().renew_interval);
                    inflight = Some(Box::pin(async move {
                        let began = std::time::Instant::now();
                        let reply = witness.execute(&request.op).await;
                        slow(&site, "the witness's answer", began, every);
                        (request.id, reply)
                    }));
                }
            }
        }
        status.send_replace(LeaseStatus { standing: agent.standing(clock.now()), view: agent.view() });
    }
    agent
}

/// Says so when `what` took longer than the lease's renew interval: the
/// agent renews no lease meanwhile, and a site that renews late fences itself.
fn slow(site: &str, what: &str, began: std::time::Instant, renew_interval: std::time::Duration) {
    let took = began.elapsed();
    if took > renew_interval {
        tracing::warn!(
            site,
            took_ms = took.as_millis() as u64,
            renew_ms = renew_interval.as_millis() as u64,
            "{what} took longer than the lease's renew interval"
        );
    }
}

/// A site's lease agent running [`keep`] as a task: its published status, the
/// task, and its command channel. Dropped, it stops the task at once: a
/// replaced agent (the plan or its witness changed) must not go on renewing
/// the old lease nor writing its site's standing beside the new one.
pub struct RunningAgent {
    pub status: watch::Receiver<LeaseStatus>,
    task: tokio::task::JoinHandle<LeaseAgent>,
    commands: mpsc::Sender<LeaseCommand>,
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RunningAgent {
    /// Starts `agent` against `witness`, fencing and activating with `fence`.
    pub fn start(
        agent: LeaseAgent,
        witness: Witness,
        fence: Arc<dyn FenceControl>,
        clock: Arc<dyn Clock>,
        holder_health: watch::Receiver<SiteHealth>,
    ) -> Self {
        let (commands, commands_rx) = mpsc::channel(4);
        let (status_tx, status) = watch::channel(LeaseStatus { standing: Standing::Fenced, view: LeaseView::Unknown });
        let task = tokio::spawn(keep(agent, witness, fence, clock, holder_health, commands_rx, status_tx));
        Self { status, task, commands }
    }

    /// Stops the loop at once, as a crash would (the lab's kill of a site).
    pub fn abort(&self) {
        self.task.abort();
    }

    /// Sends the loop a command; false if it has ended.
    pub async fn command(&self, command: LeaseCommand) -> bool {
        self.commands.send(command).await.is_ok()
    }

    /// A sender of commands to the loop, for another task; it does not keep
    /// the loop running once this is dropped.
    pub fn commander(&self) -> mpsc::WeakSender<LeaseCommand> {
        self.commands.downgrade()
    }

    /// What a failover runner at this site observes of the lease.
    pub fn observation(status: &watch::Receiver<LeaseStatus>) -> super::machine::Observation {
        let status = status.borrow();
        let (lease_holder, lease_epoch) = match &status.view {
            LeaseView::Held { holder, epoch, .. } => (Some(holder.clone()), *epoch),
            _ => (None, 0),
        };
        let active_epoch = match status.standing {
            Standing::Active { epoch, .. } => Some(epoch),
            Standing::Fenced => None,
        };
        super::machine::Observation { lease_holder, lease_epoch, active_epoch, ..Default::default() }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::failover::clock::SystemClock;
    use crate::failover::fencing::{FenceEvent, FenceLog};
    use crate::failover::lease::{LeaseTiming, new_incarnation};
    use crate::store::fs::FsStore;

    fn at(ms: u64) -> MonoTime {
        MonoTime::from_origin(Duration::from_millis(ms))
    }

    fn timing() -> LeaseTiming {
        LeaseTiming::for_lease(Duration::from_millis(3_000), Duration::from_millis(1_000)).unwrap()
    }

    fn witness(dir: &tempfile::TempDir) -> Witness {
        Witness::new(Arc::new(FsStore::open(dir.path()).unwrap()), "main")
    }

    fn record(holder: &str, epoch: u64, renewals: u64) -> LeaseRecord {
        LeaseRecord { holder: holder.into(), epoch, renewals, incarnation: 7 }
    }

    #[tokio::test]
    async fn create_then_renew_with_the_etag_and_a_stale_etag_is_a_conflict() {
        let dir = tempfile::tempdir().unwrap();
        let w = witness(&dir);
        assert_eq!(w.key(), "witness/main/lease");
        assert_eq!(w.read().await.unwrap(), None);
        let e1 = w.create(&record("a", 1, 1)).await.unwrap();
        assert!(matches!(w.create(&record("b", 1, 1)).await, Err(Error::LeaseConflict { .. })));
        let read = w.read().await.unwrap().unwrap();
        assert_eq!(read, Versioned { etag: e1.clone(), record: record("a", 1, 1) });
        let e2 = w.replace(&e1, &record("a", 1, 2)).await.unwrap();
        assert_ne!(e1, e2);
        assert!(matches!(w.replace(&e1, &record("b", 2, 3)).await, Err(Error::LeaseConflict { .. })));
        assert_eq!(
            w.execute(&WitnessOp::Replace { if_match: e1, record: record("b", 2, 3) }).await,
            WitnessReply::Conflict
        );
        assert_eq!(w.read().await.unwrap().unwrap().record, record("a", 1, 2));
    }

    #[tokio::test]
    async fn a_corrupt_lease_is_an_error_and_the_agent_sees_a_failed_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(FsStore::open(dir.path()).unwrap());
        store.put("witness/main/lease", Bytes::from_static(b"{not json"), PutCondition::IfAbsent).await.unwrap();
        let w = Witness::new(store, "main");
        assert!(matches!(w.read().await, Err(Error::LeaseFormat { .. })));
        assert_eq!(w.execute(&WitnessOp::Read).await, WitnessReply::Failed);
    }

    #[tokio::test]
    async fn agents_on_a_filesystem_witness_expire_on_the_observers_clock_and_raise_the_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let w = witness(&dir);
        let mut a = LeaseAgent::new("a", 1, timing(), Takeover::WhenHolderDown, true);
        let mut b = LeaseAgent::new("b", 2, timing(), Takeover::WhenHolderDown, false);
        pump(&mut a, &w, at(0), SiteHealth::Up).await;
        assert_eq!(pump(&mut a, &w, at(3_100), SiteHealth::Up).await, vec![LeaseAction::Activate { epoch: 1 }]);
        // B first sees A's ETag at 100 ms of its own clock; A dies.
        pump(&mut b, &w, at(100), SiteHealth::Down).await;
        let wait = timing().observer_wait().as_millis() as u64;
        assert!(pump(&mut b, &w, at(99 + wait), SiteHealth::Down).await.is_empty());
        assert_eq!(pump(&mut b, &w, at(100 + wait), SiteHealth::Down).await, vec![LeaseAction::Activate { epoch: 2 }]);
        // A comes back as a new process: it stays fenced; later it takes over again.
        let mut a2 = LeaseAgent::new("a", 3, timing(), Takeover::WhenHolderDown, true);
        assert!(pump(&mut a2, &w, at(0), SiteHealth::Up).await.is_empty());
        assert_eq!(a2.standing(at(0)), Standing::Fenced);
        assert_eq!(pump(&mut a2, &w, at(10_000), SiteHealth::Down).await, vec![LeaseAction::Activate { epoch: 3 }]);
        let lease = w.read().await.unwrap().unwrap().record;
        assert_eq!((lease.holder.as_str(), lease.epoch), ("a", 3));
    }

    #[tokio::test]
    async fn keep_runs_the_protocol_in_real_time_until_its_commands_close() {
        let dir = tempfile::tempdir().unwrap();
        let w = witness(&dir);
        let timing = LeaseTiming::for_lease(Duration::from_millis(2_000), Duration::from_millis(300)).unwrap();
        let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
        let start = |site: &str, create: bool, takeover: Takeover| {
            let fence = Arc::new(FenceLog::default());
            let agent = LeaseAgent::new(site, new_incarnation(), timing.clone(), takeover, create);
            let (_health_tx, health) = watch::channel(SiteHealth::Down);
            let (commands, commands_rx) = mpsc::channel(4);
            let (status_tx, status) =
                watch::channel(LeaseStatus { standing: Standing::Fenced, view: LeaseView::Unknown });
            let task =
                tokio::spawn(keep(agent, w.clone(), fence.clone(), clock.clone(), health, commands_rx, status_tx));
            (fence, commands, status, task, _health_tx)
        };
        let (a_fence, a_commands, mut a_status, a_task, _a_health) = start("a", true, Takeover::Never);
        wait_until(&mut a_status, |s| matches!(s.standing, Standing::Active { epoch: 1, .. })).await;
        let (b_fence, b_commands, mut b_status, b_task, _b_health) = start("b", false, Takeover::WhenHolderDown);
        // A hands the lease to B: A fences first, B activates at epoch 2.
        a_commands.send(LeaseCommand::HandOver { to: "b".into() }).await.unwrap();
        wait_until(&mut b_status, |s| matches!(s.standing, Standing::Active { epoch: 2, .. })).await;
        let a_events = a_fence.events();
        assert_eq!(a_events.first(), Some(&FenceEvent::Activated { epoch: 1 }), "{a_events:?}");
        assert_eq!(a_events.last(), Some(&FenceEvent::Fenced), "{a_events:?}");
        drop((a_commands, b_commands));
        a_task.await.unwrap();
        b_task.await.unwrap();
        assert_eq!(b_fence.events().first(), Some(&FenceEvent::Activated { epoch: 2 }));
    }

    async fn wait_until(status: &mut watch::Receiver<LeaseStatus>, done: impl Fn(&LeaseStatus) -> bool) {
        tokio::time::timeout(Duration::from_secs(30), status.wait_for(done))
            .await
            .expect("condition reached within 30 s")
            .expect("the loop is running");
    }
}
