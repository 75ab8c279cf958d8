//! The witness lease: one JSON object on a store at a third provider, written
//! only with conditional puts, that makes two active sites impossible.
//!
//! This module is the protocol without I/O: a [`LeaseAgent`] is fed the time,
//! the health of the other site and the witness's replies, and answers with the
//! requests to send and the fencing decisions to carry out. `witness` runs it
//! against an [`ObjectStore`](crate::store::ObjectStore); the model test runs the
//! very same agent over a simulated network with delays, losses, crashes and
//! skewed clocks. docs/failover.md states the rules and the safety argument.
//!
//! In short:
//! - a site is active only while `now < sent + fence_after`, where `sent` is when
//!   it *sent* its newest write that it knows succeeded (create, renewal,
//!   takeover or the renewal that adopts a handover), on its own monotonic clock;
//! - another site may take over only with a write conditioned on an ETag it has
//!   seen unchanged for [`LeaseTiming::observer_wait`] on its own monotonic clock,
//!   counted from when it first *received* that ETag;
//! - `fence_after` is small enough that the first rule ends before the second can
//!   fire, whatever the clock rate skew within `max_rate_skew_ppm` ([`LeaseTiming::check`]).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::clock::MonoTime;
use super::error::{Error, Result};
use super::health::SiteHealth;

/// The key of a plan's lease in the witness store.
pub fn lease_key(plan: &str) -> String {
    format!("witness/{plan}/lease")
}

/// The lease object, as JSON in the witness store.
///
/// Every write changes `renewals` to a value above every value before it, so no
/// two writes of the lease have the same bytes: S3's ETag is a digest of the
/// bytes, and the protocol needs an ETag never to come back.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LeaseRecord {
    /// The site that may be active.
    pub holder: String,
    /// The fencing token: rises with every change of holder, never falls.
    pub epoch: u64,
    /// Counts writes: above that of the version the write replaced.
    pub renewals: u64,
    /// The process (one run of one site's agent) that wrote this version, so a
    /// process can tell its own writes from those of an earlier run.
    pub incarnation: u64,
}

/// A version of the lease: its ETag and its content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned {
    pub etag: String,
    pub record: LeaseRecord,
}

/// A fresh random incarnation number for a new [`LeaseAgent`].
pub fn new_incarnation() -> u64 {
    let mut bytes = [0u8; 8];
    // NB: without randomness two runs of a site could not tell their writes
    // apart; a failure here is a broken operating system, reported at startup.
    getrandom::fill(&mut bytes).expect("the operating system's random generator failed");
    u64::from_le_bytes(bytes)
}

/// The timing of the lease. See [`check`](LeaseTiming::check) for the rule
/// that makes it safe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseTiming {
    /// How long a lease holds without renewal, as other sites count it.
    pub lease_duration: Duration,
    /// How often the holder renews.
    pub renew_interval: Duration,
    /// The holder fences itself when it has no successful renewal sent within
    /// this long (its own clock). Well below `lease_duration`.
    pub fence_after: Duration,
    /// Bound on how much any site's monotonic clock runs fast or slow against
    /// real time, in parts per million (10 000 = 1 %).
    pub max_rate_skew_ppm: u32,
    /// The longest fencing takes, from the decision until no write or SdI send is
    /// in flight.
    pub max_fence_time: Duration,
    /// How often the agent is ticked; the fence deadline is noticed this late at worst.
    pub check_interval: Duration,
}

const PPM: u128 = 1_000_000;

impl LeaseTiming {
    /// The timing for a plan's `leaseDuration` and `renewInterval`:
    /// `fence_after` = half the lease, ρ = 1 %, fencing within a quarter of the
    /// lease, checks every renew interval / 10 (at most 1 s). Refused if unsafe.
    pub fn for_lease(lease_duration: Duration, renew_interval: Duration) -> Result<Self> {
        let timing = Self {
            lease_duration,
            renew_interval,
            fence_after: lease_duration / 2,
            max_rate_skew_ppm: 10_000,
            max_fence_time: lease_duration / 4,
            check_interval: (renew_interval / 10).min(Duration::from_secs(1)),
        };
        timing.check()?;
        Ok(timing)
    }

    /// How long an observer waits, on its own clock, after first seeing an ETag
    /// before it may replace it: `lease_duration` plus a margin of 2ρ of it, so
    /// that in real time it waits at least `lease_duration` even on a fast clock.
    pub fn observer_wait(&self) -> Duration {
        let margin = self.lease_duration.as_nanos() * 2 * u128::from(self.max_rate_skew_ppm) / PPM;
        self.lease_duration + nanos(margin)
    }

    /// A request without an answer after this long counts as failed (its outcome
    /// unknown).
    ///
    /// NB: a third of `fence_after` (at least half the renew interval): a
    /// loaded store answers a renewal in more than half a renew interval, and
    /// a write given up on may still land, so that the next one, on the old
    /// ETag, conflicts; at 20 tenants on two cores the holder then fenced
    /// itself every few seconds. A renewal answered late still counts from when
    /// it was sent, and three attempts fit before the holder must fence.
    pub fn request_timeout(&self) -> Duration {
        (self.fence_after / 3).max(self.renew_interval / 2)
    }

    /// Delay before retrying after a failed request.
    pub fn retry_interval(&self) -> Duration {
        (self.renew_interval / 4).max(Duration::from_millis(1))
    }

    /// How often a site that does not hold the lease reads it.
    pub fn poll_interval(&self) -> Duration {
        (self.renew_interval / 2).max(Duration::from_millis(1))
    }

    /// The latest real time, after the holder sent its last successful write, at
    /// which it has stopped: `(fence_after + check_interval) / (1 − ρ) + max_fence_time`.
    pub fn holder_stops_within(&self) -> Duration {
        let rho = u128::from(self.max_rate_skew_ppm).min(PPM - 1);
        let local = (self.fence_after + self.check_interval).as_nanos();
        nanos(local * PPM / (PPM - rho)) + self.max_fence_time
    }

    /// The earliest real time, after an observer first saw an ETag, at which its
    /// takeover can succeed: `observer_wait / (1 + ρ)`.
    pub fn observer_waits_at_least(&self) -> Duration {
        let rho = u128::from(self.max_rate_skew_ppm);
        nanos(self.observer_wait().as_nanos() * PPM / (PPM + rho))
    }

    /// Refuses timings where a holder could still be writing when another site
    /// takes over: safe iff [`holder_stops_within`](Self::holder_stops_within) <
    /// [`observer_waits_at_least`](Self::observer_waits_at_least). Also refuses a
    /// renew interval that leaves no time to renew before fencing.
    pub fn check(&self) -> Result<()> {
        let unsafe_timing = |why: String| Err(Error::UnsafeTiming { why });
        if self.max_rate_skew_ppm >= 100_000 {
            return unsafe_timing(format!(
                "a clock rate skew of {} ppm is beyond what the protocol assumes (< 10 %)",
                self.max_rate_skew_ppm
            ));
        }
        if self.renew_interval.is_zero() || self.renew_interval >= self.fence_after {
            return unsafe_timing(format!(
                "renewInterval {:?} must be above zero and below fenceAfter {:?} (half the leaseDuration)",
                self.renew_interval, self.fence_after
            ));
        }
        let (stop, wait) = (self.holder_stops_within(), self.observer_waits_at_least());
        if stop >= wait {
            return unsafe_timing(format!(
                "a holder may still be active {stop:?} after its last renewal, but another site may take over after {wait:?}"
            ));
        }
        Ok(())
    }
}

fn nanos(n: u128) -> Duration {
    Duration::from_nanos(u64::try_from(n).unwrap_or(u64::MAX))
}

/// When the agent may take the lease from another site.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Takeover {
    /// Never (a Manual plan, or the configured source site).
    Never,
    /// An Automatic plan: when the holder is [`SiteHealth::Down`] and the lease expired.
    WhenHolderDown,
    /// A person started a failover: as soon as the lease expired, whatever the health.
    WhenExpired,
}

/// A request to the witness store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WitnessRequest {
    /// Pairs the reply with the request.
    pub id: u64,
    pub op: WitnessOp,
}

/// One operation on the lease object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WitnessOp {
    /// Read the ETag and the content.
    Read,
    /// Write only if there is no lease (`PutCondition::IfAbsent`).
    Create(LeaseRecord),
    /// Write only if the lease's ETag is `if_match` (`PutCondition::IfMatch`).
    Replace { if_match: String, record: LeaseRecord },
}

/// The witness's answer to a [`WitnessRequest`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WitnessReply {
    /// The lease, or `None` if there is none.
    Read(Option<Versioned>),
    /// The write happened; the new ETag.
    Written { etag: String },
    /// The condition did not hold (412, or the object already exists). Usually
    /// nothing was written, but a store that retried the put may answer this
    /// after its first attempt landed: the agent settles it with a read.
    Conflict,
    /// No answer, or an error: the write may or may not have happened.
    Failed,
}

/// What the agent wants done, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseAction {
    /// Stop app writes and the SdI sender now. Carry it out before anything
    /// after it, then call [`LeaseAgent::confirm_fenced`].
    Fence,
    /// The site may write and transmit under `epoch` (the app's
    /// `/v1/admin/activate {"epoch": N}`).
    Activate { epoch: u64 },
    /// Send this to the witness and pass the reply to [`LeaseAgent::on_reply`].
    Send(WitnessRequest),
}

/// What this site is, as far as the lease goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// May write and transmit under `epoch` until `until` (own clock).
    Active { epoch: u64, until: MonoTime },
    /// Must not write nor transmit.
    Fenced,
}

/// What the agent last learned of the lease, for status and Events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseView {
    /// Nothing read yet.
    Unknown,
    /// There is no lease object.
    Absent,
    /// The last version read or written.
    Held { holder: String, epoch: u64, etag: String },
}

#[derive(Clone, Debug)]
enum Seen {
    Nothing,
    /// No lease object, since this (first reply saying so).
    Absent {
        since: MonoTime,
    },
    /// This version, first received then.
    Version {
        version: Versioned,
        since: MonoTime,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WriteKind {
    Create,
    Renew,
    Takeover,
    HandOver,
}

#[derive(Clone, Debug)]
struct Pending {
    id: u64,
    sent_at: MonoTime,
    /// `None` for a read.
    write: Option<(WriteKind, LeaseRecord)>,
}

/// A write of this process whose outcome is not known yet.
#[derive(Clone, Copy, Debug)]
struct Unresolved {
    renewals: u64,
    sent_at: MonoTime,
}

#[derive(Clone, Debug)]
struct HandOver {
    to: String,
    /// The handover's own `Fence` is number `fence`: the write waits until as
    /// many fences are confirmed.
    fence: u64,
}

#[derive(Clone, Copy, Debug)]
struct Active {
    epoch: u64,
    until: MonoTime,
}

/// One site's side of the lease protocol, without I/O. Create one per process
/// run with a fresh random `incarnation`; a new agent starts fenced and must be
/// started with the app fenced.
#[derive(Clone, Debug)]
pub struct LeaseAgent {
    site: String,
    incarnation: u64,
    timing: LeaseTiming,
    takeover: Takeover,
    may_create: bool,
    seen: Seen,
    /// The version this site may renew: the lease names this site.
    held: Option<Versioned>,
    active: Option<Active>,
    hand_over: Option<HandOver>,
    fences_issued: u64,
    fences_confirmed: u64,
    pending: Option<Pending>,
    unresolved: Vec<Unresolved>,
    next_renew: MonoTime,
    next_read: MonoTime,
    read_asap: bool,
    next_id: u64,
    /// Highest `renewals` sent or seen.
    renewals: u64,
    /// Highest epoch seen.
    max_epoch: u64,
}

impl LeaseAgent {
    /// The agent of `site` in this process run (`incarnation`: random, fresh per
    /// run). `may_create`: this site creates the lease when there is none (the
    /// plan's source site).
    pub fn new(
        site: impl Into<String>,
        incarnation: u64,
        timing: LeaseTiming,
        takeover: Takeover,
        may_create: bool,
    ) -> Self {
        Self {
            site: site.into(),
            incarnation,
            timing,
            takeover,
            may_create,
            seen: Seen::Nothing,
            held: None,
            active: None,
            hand_over: None,
            fences_issued: 0,
            fences_confirmed: 0,
            pending: None,
            unresolved: Vec::new(),
            next_renew: MonoTime::ZERO,
            next_read: MonoTime::ZERO,
            read_asap: false,
            next_id: 1,
            renewals: 0,
            max_epoch: 0,
        }
    }

    /// Starts the agent knowing that epochs up to `floor` were used: a lease it
    /// creates or takes is above them. A witness moved to an empty store (its
    /// old one lost) then goes on above every epoch the sites recorded, never
    /// back to 1.
    pub fn with_epoch_floor(mut self, floor: u64) -> Self {
        self.max_epoch = self.max_epoch.max(floor);
        self
    }

    /// The site this agent speaks for.
    pub fn site(&self) -> &str {
        &self.site
    }

    /// The timing in use.
    pub fn timing(&self) -> &LeaseTiming {
        &self.timing
    }

    /// Changes when this site may take the lease (a person started or ended a
    /// manual failover).
    pub fn set_takeover(&mut self, takeover: Takeover) {
        self.takeover = takeover;
    }

    /// Whether this site may write and transmit at `now`.
    pub fn standing(&self, now: MonoTime) -> Standing {
        match self.active {
            Some(a) if now < a.until && self.hand_over.is_none() => Standing::Active { epoch: a.epoch, until: a.until },
            _ => Standing::Fenced,
        }
    }

    /// The lease as last read or written.
    pub fn view(&self) -> LeaseView {
        match &self.seen {
            Seen::Nothing => LeaseView::Unknown,
            Seen::Absent { .. } => LeaseView::Absent,
            Seen::Version { version, .. } => LeaseView::Held {
                holder: version.record.holder.clone(),
                epoch: version.record.epoch,
                etag: version.etag.clone(),
            },
        }
    }

    /// The highest epoch this agent has seen or written successfully.
    pub fn max_epoch(&self) -> u64 {
        self.max_epoch
    }

    /// Whether a request is out and unanswered.
    pub fn awaiting_reply(&self) -> bool {
        self.pending.is_some()
    }

    /// The earliest time at which [`tick`](Self::tick) may do something: a
    /// deadline, a request timing out, a renewal, a read, or the end of an
    /// observer's wait. `None` if it waits only for a reply or a fence
    /// confirmation. A runner may sleep until then (or until a reply comes).
    pub fn next_wake(&self) -> Option<MonoTime> {
        let mut wake = self.active.map(|a| a.until);
        let mut at = |t: MonoTime| wake = Some(wake.map_or(t, |w| w.min(t)));
        if let Some(p) = &self.pending {
            at(p.sent_at + self.timing.request_timeout());
        } else if let Some(h) = &self.hand_over {
            if self.fences_confirmed >= h.fence {
                at(if self.held.is_some() && !self.read_asap { MonoTime::ZERO } else { self.next_read });
            }
        } else if self.read_asap {
            at(MonoTime::ZERO);
        } else if self.held.is_some() {
            at(self.next_renew);
        } else {
            at(self.next_read);
            match &self.seen {
                Seen::Version { since, .. } | Seen::Absent { since } => at(*since + self.timing.observer_wait()),
                Seen::Nothing => {}
            }
        }
        wake
    }

    /// Hands the lease to `to`, for a planned failover or failback: fences this
    /// site at once, and once [`confirm_fenced`](Self::confirm_fenced) says the
    /// fence is complete, writes the lease naming `to` with the next epoch.
    /// Returns the actions to carry out (a `Fence`, if the site was active).
    pub fn hand_over(&mut self, to: impl Into<String>) -> Vec<LeaseAction> {
        let to = to.into();
        if to == self.site {
            return Vec::new();
        }
        self.active = None;
        // NB: a Fence even when not active, so that the runner confirms it and
        // the order "fenced, then written" holds in every case.
        self.fences_issued += 1;
        self.hand_over = Some(HandOver { to, fence: self.fences_issued });
        vec![LeaseAction::Fence]
    }

    /// The runner finished carrying out a `Fence` (the oldest not yet
    /// confirmed): nothing is in flight. Every `Fence` must be confirmed, in order.
    pub fn confirm_fenced(&mut self) {
        self.fences_confirmed = (self.fences_confirmed + 1).min(self.fences_issued);
    }

    /// Advances to `now`: fences if the deadline passed, gives up on an
    /// unanswered request, and sends the next request when one is due.
    /// `holder_health` is the health of the site the lease names, if another.
    pub fn tick(&mut self, now: MonoTime, holder_health: SiteHealth) -> Vec<LeaseAction> {
        let mut out = Vec::new();
        self.check_deadline(now, &mut out);
        let timeout = self.timing.request_timeout();
        if let Some(p) = self.pending.take_if(|p| now >= p.sent_at + timeout) {
            self.failed(now, &p);
        }
        self.unresolved.retain(|u| now < u.sent_at + self.timing.fence_after);
        if self.pending.is_none()
            && let Some(op) = self.next_op(now, holder_health)
        {
            out.push(LeaseAction::Send(self.send(now, op)));
        }
        out
    }

    /// The witness answered request `id` (replies to requests given up on are ignored).
    pub fn on_reply(&mut self, now: MonoTime, id: u64, reply: WitnessReply) -> Vec<LeaseAction> {
        let mut out = Vec::new();
        let Some(pending) = self.pending.take_if(|p| p.id == id) else { return out };
        match (pending.write.clone(), reply) {
            (None, WitnessReply::Read(None)) => {
                if !matches!(self.seen, Seen::Absent { .. }) {
                    self.seen = Seen::Absent { since: now };
                }
                self.lost(&mut out);
                self.next_read = now + self.timing.poll_interval();
            }
            (None, WitnessReply::Read(Some(version))) => {
                self.saw(now, version, &mut out);
                self.next_read = now + self.timing.poll_interval();
            }
            (Some((kind, record)), WitnessReply::Written { etag }) => {
                self.unresolved.retain(|u| u.renewals != record.renewals);
                self.max_epoch = self.max_epoch.max(record.epoch);
                let version = Versioned { etag, record };
                self.seen = Seen::Version { version: version.clone(), since: now };
                if kind == WriteKind::HandOver {
                    self.hand_over = None;
                    self.held = None;
                    self.next_read = now + self.timing.poll_interval();
                } else {
                    self.next_renew = pending.sent_at + self.timing.renew_interval;
                    self.held = Some(version.clone());
                    self.credit(now, pending.sent_at, version.record.epoch, &mut out);
                }
            }
            (Some(_), WitnessReply::Conflict) => {
                // Someone wrote first (or an earlier write of ours did). Read to
                // learn which; a takeover is off. NB: the write stays unresolved:
                // a store that retries a put after a timeout answers 412 when its
                // first attempt landed, and only a read can tell.
                self.read_asap = true;
            }
            _ => self.failed(now, &pending),
        }
        self.check_deadline(now, &mut out);
        out
    }

    fn failed(&mut self, now: MonoTime, pending: &Pending) {
        match pending.write {
            // The write may still land: it stays unresolved and a read settles it.
            Some(_) => {
                self.read_asap = true;
                self.next_renew = self.next_renew.max(now + self.timing.retry_interval());
            }
            None => self.next_read = now + self.timing.retry_interval(),
        }
    }

    fn check_deadline(&mut self, now: MonoTime, out: &mut Vec<LeaseAction>) {
        if self.active.is_some_and(|a| now >= a.until) {
            self.active = None;
            self.fences_issued += 1;
            out.push(LeaseAction::Fence);
        }
    }

    /// The lease no longer names this site: fence now.
    fn lost(&mut self, out: &mut Vec<LeaseAction>) {
        self.held = None;
        if self.active.take().is_some() {
            self.fences_issued += 1;
            out.push(LeaseAction::Fence);
        }
    }

    /// A write of this process, sent at `sent_at`, is known to have succeeded.
    fn credit(&mut self, now: MonoTime, sent_at: MonoTime, epoch: u64, out: &mut Vec<LeaseAction>) {
        if self.hand_over.is_some() {
            return;
        }
        let until = sent_at + self.timing.fence_after;
        if until <= now {
            return;
        }
        match &mut self.active {
            Some(a) if a.epoch == epoch => a.until = a.until.max(until),
            _ => {
                self.active = Some(Active { epoch, until });
                out.push(LeaseAction::Activate { epoch });
            }
        }
    }

    fn saw(&mut self, now: MonoTime, version: Versioned, out: &mut Vec<LeaseAction>) {
        self.max_epoch = self.max_epoch.max(version.record.epoch);
        self.renewals = self.renewals.max(version.record.renewals);
        let since = match &self.seen {
            Seen::Version { version: old, since } if old.etag == version.etag => *since,
            _ => now,
        };
        if version.record.holder == self.site {
            let mine = version.record.incarnation == self.incarnation;
            let sent =
                self.unresolved.iter().find(|u| mine && u.renewals == version.record.renewals).map(|u| u.sent_at);
            match sent {
                Some(sent_at) => {
                    self.unresolved.retain(|u| u.renewals != version.record.renewals);
                    self.next_renew = sent_at + self.timing.renew_interval;
                    self.held = Some(version.clone());
                    self.credit(now, sent_at, version.record.epoch, out);
                }
                None => {
                    // Ours from an earlier run, or handed to us: renewable, but
                    // this process is active only once its own renewal succeeds.
                    if self.held.as_ref().is_none_or(|h| h.etag != version.etag) {
                        self.next_renew = now;
                    }
                    self.held = Some(version.clone());
                }
            }
        } else {
            if self.hand_over.as_ref().is_some_and(|h| h.to == version.record.holder) {
                self.hand_over = None;
            }
            self.lost(out);
        }
        self.seen = Seen::Version { version, since };
    }

    fn next_op(&mut self, now: MonoTime, holder_health: SiteHealth) -> Option<WitnessOp> {
        if let Some(h) = &self.hand_over {
            if self.fences_confirmed < h.fence {
                return None;
            }
            if let Some(held) = self.held.as_ref().filter(|_| !self.read_asap) {
                let record = self.record(&h.to, held.record.epoch + 1);
                return Some(WitnessOp::Replace { if_match: held.etag.clone(), record });
            }
            return (self.read_asap || now >= self.next_read).then_some(WitnessOp::Read);
        }
        if self.read_asap {
            return Some(WitnessOp::Read);
        }
        if let Some(held) = &self.held {
            if now < self.next_renew {
                return None;
            }
            let record = self.record(&self.site, held.record.epoch);
            return Some(WitnessOp::Replace { if_match: held.etag.clone(), record });
        }
        let expired = |since: MonoTime| now.saturating_since(since) >= self.timing.observer_wait();
        match &self.seen {
            Seen::Version { version, since } if expired(*since) && self.may_take_over(holder_health) => {
                let record = self.record(&self.site, version.record.epoch.max(self.max_epoch) + 1);
                return Some(WitnessOp::Replace { if_match: version.etag.clone(), record });
            }
            // NB: a missing lease is treated like an ETag: created only after it
            // has been seen missing for a whole lease, in case it was deleted
            // under an active holder.
            Seen::Absent { since } if self.may_create && expired(*since) => {
                return Some(WitnessOp::Create(self.record(&self.site, self.max_epoch + 1)));
            }
            _ => {}
        }
        (now >= self.next_read).then_some(WitnessOp::Read)
    }

    fn may_take_over(&self, holder_health: SiteHealth) -> bool {
        match self.takeover {
            Takeover::Never => false,
            Takeover::WhenHolderDown => holder_health == SiteHealth::Down,
            Takeover::WhenExpired => true,
        }
    }

    /// A record for the next write: `renewals` above everything sent or seen.
    fn record(&self, holder: &str, epoch: u64) -> LeaseRecord {
        LeaseRecord { holder: holder.to_owned(), epoch, renewals: self.renewals + 1, incarnation: self.incarnation }
    }

    fn send(&mut self, now: MonoTime, op: WitnessOp) -> WitnessRequest {
        let id = self.next_id;
        self.next_id += 1;
        let write = match &op {
            WitnessOp::Read => {
                self.read_asap = false;
                None
            }
            WitnessOp::Create(record) => Some((WriteKind::Create, record.clone())),
            WitnessOp::Replace { record, .. } => {
                let kind = if self.hand_over.is_some() {
                    WriteKind::HandOver
                } else if self.held.is_some() {
                    WriteKind::Renew
                } else {
                    WriteKind::Takeover
                };
                Some((kind, record.clone()))
            }
        };
        if let Some((_, record)) = &write {
            // NB: not max_epoch: a write that fails must not push the next
            // takeover's epoch further.
            self.renewals = record.renewals;
            self.unresolved.push(Unresolved { renewals: record.renewals, sent_at: now });
        }
        self.pending = Some(Pending { id, sent_at: now, write });
        WitnessRequest { id, op }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn at(n: u64) -> MonoTime {
        MonoTime::from_origin(ms(n))
    }

    /// Lease 3 s, renew 1 s, fence after 1.5 s.
    fn timing() -> LeaseTiming {
        LeaseTiming::for_lease(ms(3_000), ms(1_000)).unwrap()
    }

    fn sent(actions: &[LeaseAction]) -> Option<&WitnessRequest> {
        actions.iter().find_map(|a| match a {
            LeaseAction::Send(r) => Some(r),
            _ => None,
        })
    }

    /// A one-object witness with ETags "e1", "e2", ….
    #[derive(Default)]
    struct Witness {
        current: Option<Versioned>,
        writes: u64,
    }

    impl Witness {
        fn apply(&mut self, op: &WitnessOp) -> WitnessReply {
            let ok = match op {
                WitnessOp::Read => return WitnessReply::Read(self.current.clone()),
                WitnessOp::Create(_) => self.current.is_none(),
                WitnessOp::Replace { if_match, .. } => self.current.as_ref().is_some_and(|v| &v.etag == if_match),
            };
            if !ok {
                return WitnessReply::Conflict;
            }
            let (WitnessOp::Create(record) | WitnessOp::Replace { record, .. }) = op else { unreachable!() };
            self.writes += 1;
            let etag = format!("e{}", self.writes);
            self.current = Some(Versioned { etag: etag.clone(), record: record.clone() });
            WitnessReply::Written { etag }
        }
    }

    /// Ticks `agent` at `now` and answers at once, until nothing is sent.
    fn run(agent: &mut LeaseAgent, witness: &mut Witness, now: MonoTime, health: SiteHealth) -> Vec<LeaseAction> {
        let mut decisions = Vec::new();
        for _ in 0..8 {
            let actions = agent.tick(now, health);
            let mut request = sent(&actions).cloned();
            decisions.extend(actions.into_iter().filter(|a| !matches!(a, LeaseAction::Send(_))));
            let Some(mut req) = request.take() else { break };
            loop {
                let reply = witness.apply(&req.op);
                let actions = agent.on_reply(now, req.id, reply);
                let next = sent(&actions).cloned();
                decisions.extend(actions.into_iter().filter(|a| !matches!(a, LeaseAction::Send(_))));
                match next {
                    Some(n) => req = n,
                    None => break,
                }
            }
        }
        decisions
    }

    #[test]
    fn the_plan_defaults_are_safe_and_an_unsafe_timing_is_refused() {
        let t = LeaseTiming::for_lease(Duration::from_secs(30), Duration::from_secs(10)).unwrap();
        assert_eq!(t.fence_after, Duration::from_secs(15));
        assert_eq!(t.observer_wait(), Duration::from_millis(30_600));
        assert!(t.holder_stops_within() < t.observer_waits_at_least());
        let slow_fence = LeaseTiming { fence_after: Duration::from_secs(29), ..t.clone() };
        assert!(matches!(slow_fence.check(), Err(Error::UnsafeTiming { .. })));
        let renew_too_rare = LeaseTiming::for_lease(Duration::from_secs(30), Duration::from_secs(15));
        assert!(matches!(renew_too_rare, Err(Error::UnsafeTiming { .. })));
        let wild_clocks = LeaseTiming { max_rate_skew_ppm: 200_000, ..t };
        assert!(wild_clocks.check().is_err());
    }

    #[test]
    fn a_lease_created_in_an_empty_store_starts_above_the_epochs_already_used() {
        let mut witness = Witness::default();
        let mut a = LeaseAgent::new("a", 1, timing(), Takeover::Never, true).with_epoch_floor(4);
        assert!(run(&mut a, &mut witness, at(0), SiteHealth::Up).is_empty());
        let decisions = run(&mut a, &mut witness, at(3_100), SiteHealth::Up);
        assert_eq!(decisions, vec![LeaseAction::Activate { epoch: 5 }]);
        assert_eq!(witness.current.unwrap().record.epoch, 5);
    }

    #[test]
    fn the_source_creates_the_lease_after_seeing_it_absent_for_a_lease_and_becomes_active() {
        let mut witness = Witness::default();
        let mut a = LeaseAgent::new("a", 1, timing(), Takeover::Never, true);
        assert!(run(&mut a, &mut witness, at(0), SiteHealth::Up).is_empty());
        assert_eq!(a.view(), LeaseView::Absent);
        assert!(run(&mut a, &mut witness, at(2_000), SiteHealth::Up).is_empty(), "absent for too short a time");
        let decisions = run(&mut a, &mut witness, at(3_100), SiteHealth::Up);
        assert_eq!(decisions, vec![LeaseAction::Activate { epoch: 1 }]);
        assert!(matches!(a.standing(at(3_100)), Standing::Active { epoch: 1, .. }));
    }

    /// A holds the lease at epoch 1 from 3.1 s, B watches it.
    fn established() -> (Witness, LeaseAgent, LeaseAgent) {
        let mut witness = Witness::default();
        let mut a = LeaseAgent::new("a", 1, timing(), Takeover::Never, true);
        run(&mut a, &mut witness, at(0), SiteHealth::Up);
        run(&mut a, &mut witness, at(3_100), SiteHealth::Up);
        let b = LeaseAgent::new("b", 2, timing(), Takeover::WhenHolderDown, false);
        (witness, a, b)
    }

    #[test]
    fn the_holder_renews_and_stays_active() {
        let (mut witness, mut a, _) = established();
        for t in (3_200..20_000).step_by(100) {
            assert!(run(&mut a, &mut witness, at(t), SiteHealth::Up).is_empty(), "at {t} ms");
            assert!(matches!(a.standing(at(t)), Standing::Active { epoch: 1, .. }));
        }
        assert!(witness.writes > 15, "{} writes", witness.writes);
    }

    #[test]
    fn the_holder_fences_itself_fence_after_its_last_successful_renewal_was_sent() {
        let (mut witness, mut a, _) = established();
        // Renewal sent at 4.1 s succeeds; then the witness is unreachable.
        run(&mut a, &mut witness, at(4_100), SiteHealth::Up);
        let mut fenced_at = None;
        for t in (4_200..8_000).step_by(10) {
            let actions = a.tick(at(t), SiteHealth::Up);
            if let Some(req) = sent(&actions) {
                a.on_reply(at(t), req.id, WitnessReply::Failed);
            }
            if actions.contains(&LeaseAction::Fence) {
                fenced_at = Some(t);
                break;
            }
        }
        assert_eq!(fenced_at, Some(5_600), "4.1 s + fence_after 1.5 s");
        assert_eq!(a.standing(at(5_600)), Standing::Fenced);
    }

    #[test]
    fn the_observer_takes_over_only_after_seeing_one_etag_for_the_lease_on_its_own_clock() {
        let (mut witness, _a, mut b) = established();
        // A dies after 3.1 s. B first reads the lease at 10 s (its clock).
        run(&mut b, &mut witness, at(10_000), SiteHealth::Down);
        let wait = timing().observer_wait().as_millis() as u64;
        for t in (10_100..10_000 + wait).step_by(100) {
            let decisions = run(&mut b, &mut witness, at(t), SiteHealth::Down);
            assert!(decisions.is_empty(), "took over at {t} ms, before {wait} ms of its own");
        }
        let decisions = run(&mut b, &mut witness, at(10_000 + wait), SiteHealth::Down);
        assert_eq!(decisions, vec![LeaseAction::Activate { epoch: 2 }]);
        assert_eq!(witness.current.as_ref().unwrap().record.holder, "b");
    }

    #[test]
    fn no_takeover_while_the_holder_is_up_or_the_plan_forbids_it() {
        let (mut witness, _a, mut b) = established();
        run(&mut b, &mut witness, at(10_000), SiteHealth::Up);
        assert!(run(&mut b, &mut witness, at(60_000), SiteHealth::Suspect).is_empty());
        b.set_takeover(Takeover::Never);
        assert!(run(&mut b, &mut witness, at(70_000), SiteHealth::Down).is_empty());
        b.set_takeover(Takeover::WhenExpired);
        assert_eq!(run(&mut b, &mut witness, at(80_000), SiteHealth::Up), vec![LeaseAction::Activate { epoch: 2 }]);
    }

    #[test]
    fn a_renewal_between_read_and_takeover_makes_the_takeover_fail_with_no_activation() {
        let (mut witness, mut a, mut b) = established();
        run(&mut b, &mut witness, at(4_000), SiteHealth::Down);
        let wait = timing().observer_wait().as_millis() as u64;
        // B decides to take over; before its request lands, A renews.
        let actions = b.tick(at(4_000 + wait), SiteHealth::Down);
        let takeover = sent(&actions).cloned().unwrap();
        assert!(matches!(takeover.op, WitnessOp::Replace { ref record, .. } if record.epoch == 2));
        // A renews on its own schedule (its clock differs; any time works here).
        run(&mut a, &mut witness, at(4_100), SiteHealth::Up);
        let reply = witness.apply(&takeover.op);
        assert_eq!(reply, WitnessReply::Conflict);
        assert!(b.on_reply(at(4_000 + wait), takeover.id, reply).is_empty());
        assert_eq!(b.standing(at(4_000 + wait)), Standing::Fenced);
        // B reads the new ETag and starts counting again.
        assert!(run(&mut b, &mut witness, at(4_001 + wait), SiteHealth::Down).is_empty());
        assert_eq!(witness.current.as_ref().unwrap().record.holder, "a");
    }

    #[test]
    fn the_old_holder_learns_of_the_takeover_and_stays_fenced_and_epochs_rise_on_each_takeover() {
        let (mut witness, mut a, mut b) = established();
        a.set_takeover(Takeover::WhenHolderDown);
        run(&mut b, &mut witness, at(4_000), SiteHealth::Down);
        assert_eq!(run(&mut b, &mut witness, at(8_000), SiteHealth::Down), vec![LeaseAction::Activate { epoch: 2 }]);
        // A was cut off meanwhile; when it reaches the witness again it sees B.
        let decisions = run(&mut a, &mut witness, at(9_000), SiteHealth::Up);
        assert_eq!(decisions, vec![LeaseAction::Fence], "fenced on its own deadline");
        assert!(run(&mut a, &mut witness, at(9_100), SiteHealth::Up).is_empty());
        assert_eq!(
            a.view(),
            LeaseView::Held { holder: "b".into(), epoch: 2, etag: witness.current.clone().unwrap().etag }
        );
        // B dies; A takes over with epoch 3; B comes back as a new process and stays fenced.
        assert_eq!(run(&mut a, &mut witness, at(14_000), SiteHealth::Down), vec![LeaseAction::Activate { epoch: 3 }]);
        let mut b2 = LeaseAgent::new("b", 3, timing(), Takeover::WhenHolderDown, false);
        for t in (0..5_000).step_by(100) {
            assert!(run(&mut b2, &mut witness, at(t), SiteHealth::Up).is_empty());
            assert_eq!(b2.standing(at(t)), Standing::Fenced);
        }
        assert_eq!(witness.current.as_ref().unwrap().record.epoch, 3);
    }

    #[test]
    fn a_restarted_holder_resumes_only_through_a_renewal_of_its_own() {
        let (mut witness, _a, _) = established();
        let mut a2 = LeaseAgent::new("a", 9, timing(), Takeover::Never, true);
        let decisions = run(&mut a2, &mut witness, at(0), SiteHealth::Up);
        assert_eq!(decisions, vec![LeaseAction::Activate { epoch: 1 }]);
        let record = &witness.current.as_ref().unwrap().record;
        assert_eq!((record.incarnation, record.epoch), (9, 1));
    }

    #[test]
    fn a_write_with_an_unknown_outcome_is_credited_only_when_a_read_shows_it() {
        let (mut witness, mut a, _) = established();
        // The renewal sent at 4.1 s lands, but its reply is lost.
        let actions = a.tick(at(4_100), SiteHealth::Up);
        let req = sent(&actions).cloned().unwrap();
        witness.apply(&req.op);
        a.on_reply(at(4_200), req.id, WitnessReply::Failed);
        // The read shows our write: credited with its send time 4.1 s.
        assert!(run(&mut a, &mut witness, at(4_300), SiteHealth::Up).is_empty());
        assert!(matches!(a.standing(at(4_300)), Standing::Active { until, .. } if until == at(5_600)));
    }

    #[test]
    fn a_handover_fences_first_and_the_successor_activates_by_renewing() {
        let (mut witness, mut a, mut b) = established();
        run(&mut b, &mut witness, at(3_500), SiteHealth::Up);
        assert_eq!(a.hand_over("b"), vec![LeaseAction::Fence]);
        assert!(
            run(&mut a, &mut witness, at(3_600), SiteHealth::Up).is_empty(),
            "nothing written before the fence is confirmed"
        );
        assert_eq!(witness.current.as_ref().unwrap().record.holder, "a");
        a.confirm_fenced();
        run(&mut a, &mut witness, at(3_700), SiteHealth::Up);
        assert_eq!(
            witness.current.as_ref().unwrap().record,
            LeaseRecord { holder: "b".into(), epoch: 2, renewals: 2, incarnation: 1 }
        );
        assert_eq!(a.standing(at(3_700)), Standing::Fenced);
        // B reads the handover at its next poll and renews it.
        assert_eq!(run(&mut b, &mut witness, at(4_100), SiteHealth::Up), vec![LeaseAction::Activate { epoch: 2 }]);
        assert!(run(&mut a, &mut witness, at(6_000), SiteHealth::Up).is_empty());
        assert_eq!(a.standing(at(6_000)), Standing::Fenced);
    }
}
