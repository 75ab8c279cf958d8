//! A deterministic model of the whole failover: two sites, each with its lease
//! agent (renewals, self-fencing, health probes, automatic takeover) and its
//! failover runner (the state machine, persisted as JSON), a witness store with
//! ETags and conditional puts, a third prober, an SdI that refuses old epochs,
//! and a person who starts, approves and aborts failovers. The network delays
//! and loses messages and is partitioned at random; sites crash and restart at
//! any step; clocks run fast or slow within bounds. Time is virtual, so a run of
//! minutes takes milliseconds, and everything follows from one seed.
//!
//! Every step of the model checks the invariants (see [`simulate`]); the model
//! test (`tests/failover_model.rs`) runs it over thousands of seeds. The agents
//! and the state machine are the production code; only the world around them
//! is modelled.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use super::clock::{MonoTime, WallTime};
use super::health::{DetectionRule, Probe, RenewalWatch, SiteHealth, VantageTracker, site_health};
use super::lease::{
    LeaseAction, LeaseAgent, LeaseTiming, LeaseView, Standing, Takeover, Versioned, WitnessOp, WitnessReply,
    WitnessRequest,
};
use super::machine::{
    Action, Call, CallResult, FailoverState, NewFailover, Observation, Phase, Restored, RetryRule, SourceFence,
    StepError, StepOutput, TenantStep, Trigger, decide,
};
use super::waves::{GateRule, GateVerdict, TenantSpec, WaveSpec, assign};
use crate::api::common::{TenantRef, Tier};

const SITES: [&str; 2] = ["a", "b"];
const WALL_BASE_MS: u64 = 1_700_000_000_000;
const MICROS: u64 = 1_000_000;

/// A small seeded generator (SplitMix64): the model's only source of chance.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator whose whole sequence follows from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// Uniform in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        unit < p
    }
}

/// Which faults a run injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Faults {
    /// Cut and restore site↔witness (both ways, or replies only), site↔site and prober↔site links.
    pub partitions: bool,
    /// Crash sites and restart them later, at any step.
    pub crashes: bool,
    /// A person starts manual failovers and failbacks, and aborts some.
    pub people: bool,
    /// Change clock rates during the run (within the bound).
    pub skew_changes: bool,
    /// Step a site's wall clock back or forward by up to three hours (an NTP
    /// step, a host set by hand); its monotonic clock runs on.
    pub wall_jumps: bool,
}

impl Faults {
    /// Every kind of fault.
    pub const ALL: Faults =
        Faults { partitions: true, crashes: true, people: true, skew_changes: true, wall_jumps: true };
}

/// The model's settings.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The agents' lease timing. Not checked here: the checker's own test runs
    /// an unsafe one on purpose.
    pub timing: LeaseTiming,
    pub detection: DetectionRule,
    pub probe_interval: Duration,
    /// Real time between two steps of the model; agents are ticked every step,
    /// so this must not exceed `timing.check_interval`.
    pub tick: Duration,
    /// Faults happen during this long from the start; then the network heals and
    /// crashed sites restart.
    pub fault_time: Duration,
    /// Clock rates are drawn within ± this many ppm.
    pub clock_skew_ppm: u32,
    /// Fencing an app takes up to this long (at most `timing.max_fence_time`).
    pub max_fence_delay: Duration,
    /// Usual message delay range.
    pub delay: (Duration, Duration),
    /// Some messages take up to this long.
    pub long_delay: Duration,
    pub long_delay_chance: f64,
    pub faults: Faults,
    /// Tenants per failover, half Gold (first wave), half Silver.
    pub tenants: usize,
    pub retry: RetryRule,
    /// How long a tenant step takes.
    pub step_time: (Duration, Duration),
    /// Chance a tenant step fails (mostly retryable).
    pub step_failure_chance: f64,
}

impl SimConfig {
    /// A safe configuration: lease 3 s, renewals every 750 ms, fence after 1.5 s,
    /// clocks within ±1 %, fencing within 500 ms, messages 1–150 ms and
    /// sometimes up to 8 s.
    pub fn safe(faults: Faults) -> Self {
        let tick = Duration::from_millis(20);
        let timing = LeaseTiming {
            lease_duration: Duration::from_millis(3_000),
            renew_interval: Duration::from_millis(750),
            fence_after: Duration::from_millis(1_500),
            max_rate_skew_ppm: 10_000,
            max_fence_time: Duration::from_millis(500),
            check_interval: tick,
        };
        Self {
            timing,
            detection: DetectionRule {
                failure_threshold: 3,
                window: Duration::from_millis(600),
                min_vantage_points: 2,
            },
            probe_interval: Duration::from_millis(250),
            tick,
            fault_time: Duration::from_secs(25),
            clock_skew_ppm: 10_000,
            max_fence_delay: Duration::from_millis(500),
            delay: (Duration::from_millis(1), Duration::from_millis(150)),
            long_delay: Duration::from_secs(8),
            long_delay_chance: 0.03,
            faults,
            tenants: 4,
            retry: RetryRule { max_attempts: 3, base_millis: 200, max_millis: 800, refence_millis: 2_000 },
            step_time: (Duration::from_millis(40), Duration::from_millis(400)),
            step_failure_chance: 0.08,
        }
    }

    /// The bound on the time from healing until every failover has ended and
    /// one site is active: late messages, a lease expiry and detection, a
    /// takeover, then every tenant step with all its retries, wave after wave.
    pub fn settle_bound(&self) -> Duration {
        let lease = self.long_delay + self.timing.observer_wait() * 3 + self.detection.window + self.probe_interval * 4;
        let attempts = self.retry.max_attempts.max(1);
        let step = self.step_time.1 + Duration::from_millis(self.retry.max_millis);
        let per_tenant = step * 5 * attempts + step;
        let (gold, silver) = (self.tenants.div_ceil(2), self.tenants / 2);
        let slots = gold.div_ceil(2) + silver.div_ceil(3) + 1;
        let approvals = Duration::from_secs(3) * 2;
        lease + per_tenant * slots as u32 + approvals + Duration::from_millis(self.retry.refence_millis) * 2
    }
}

/// What a run did, and the first invariant it found broken.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub seed: u64,
    /// The first broken invariant, with the virtual time.
    pub violation: Option<String>,
    pub stats: Stats,
    /// The event trace, when asked for.
    pub trace: Vec<String>,
}

/// Counts over a run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub virtual_ms: u64,
    pub steps: u64,
    /// Writes of the lease that raised the epoch (takeovers and handovers).
    pub epoch_changes: u64,
    pub max_epoch: u64,
    pub crashes: u64,
    /// Restarts that found another site holding the lease and stayed fenced.
    pub restarts_fenced: u64,
    pub failovers: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub aborted: u64,
    /// Tenant steps repeated after a crash (they were in flight).
    pub resumed_steps: u64,
    pub sdi_sends: u64,
    /// Longest RTO of a tenant.
    pub worst_rto_ms: u64,
    /// From healing until the model was settled.
    pub settle_ms: u64,
    /// The shortest time between one site's app being last seen active and the
    /// other's first being seen active: how close the run came to an overlap.
    pub min_handoff_gap_ms: Option<u64>,
    /// Ended failovers by reason (`Completed`, `GateClosed`, `Superseded`, …).
    pub ends: BTreeMap<String, u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    Up,
    Down,
    /// Requests arrive, replies are lost.
    RepliesLost,
}

#[derive(Clone, Debug)]
enum Fault {
    Witness { site: usize, link: Link },
    Peer { up: bool },
    Prober { site: usize, up: bool },
    Crash { site: usize, down_for: u64 },
    Skew { site: usize, ppm: i64 },
    WallJump { site: usize, by_ms: i64 },
    ManualFailover,
}

#[derive(Clone, Debug)]
enum Payload {
    Request {
        site: usize,
        incarnation: u64,
        request: WitnessRequest,
    },
    Reply {
        site: usize,
        incarnation: u64,
        id: u64,
        reply: WitnessReply,
    },
    /// Asks site `to` to hand the lease to `target`.
    HandOver {
        to: usize,
        target: usize,
    },
}

#[derive(Clone, Debug)]
struct Msg {
    at: u64,
    seq: u64,
    payload: Payload,
}

/// A monotonic clock with a rate that may change: `local(t)` in µs.
#[derive(Clone, Copy, Debug)]
struct LocalClock {
    base_real: u64,
    base_local: u64,
    ppm: i64,
}

impl LocalClock {
    fn local(&self, t: u64) -> u64 {
        let elapsed = (t - self.base_real) as i128;
        self.base_local + (elapsed * (1_000_000 + self.ppm as i128) / 1_000_000) as u64
    }

    /// The first real time at which the clock reads at least `local`.
    fn real(&self, local: u64) -> u64 {
        let ahead = local.saturating_sub(self.base_local) as u128;
        let rate = (1_000_000 + self.ppm) as u128;
        self.base_real + (ahead * 1_000_000).div_ceil(rate) as u64
    }

    fn set_rate(&mut self, t: u64, ppm: i64) {
        self.base_local = self.local(t);
        self.base_real = t;
        self.ppm = ppm;
    }
}

#[derive(Clone, Copy, Debug)]
enum AppCmd {
    Fence,
    Activate(u64),
}

/// The invoicing app at a site, as far as fencing goes.
#[derive(Clone, Debug, Default)]
struct App {
    active: Option<u64>,
    /// The highest epoch it was ever activated with (durable).
    highest: u64,
    queue: VecDeque<(u64, AppCmd)>,
    busy_until: u64,
}

/// A tenant step of one failover attempt, to check that nothing is repeated
/// but what was in flight at a crash.
type StartKey = (usize, String, usize, usize, TenantStep, u32);

#[derive(Clone, Debug)]
struct RunningCall {
    call: Call,
    done_at: u64,
    result: CallResult,
}

#[derive(Clone, Debug)]
struct SimFailover {
    /// The durable copy.
    json: String,
    state: FailoverState,
    abort_at: Option<u64>,
    approved: u32,
    approve_at: Option<u64>,
    running: Vec<RunningCall>,
    counted: bool,
}

#[derive(Clone, Debug)]
struct Site {
    name: &'static str,
    up: bool,
    restart_at: Option<u64>,
    incarnation: u64,
    clock: LocalClock,
    /// The site's wall clock minus the model's time (negative: behind).
    wall_offset_ms: i64,
    agent: LeaseAgent,
    app: App,
    vantage: [VantageTracker; 3],
    watch: RenewalWatch,
    failovers: Vec<SimFailover>,
    /// Durable: the highest epoch this site was activated under.
    last_activation: u64,
}

struct World<'c> {
    cfg: &'c SimConfig,
    rng: SplitMix64,
    t: u64,
    tick: u64,
    sites: [Site; 2],
    witness: Option<Versioned>,
    witness_writes: u64,
    links_witness: [Link; 2],
    link_peer: bool,
    links_prober: [bool; 2],
    net: Vec<Msg>,
    seq: u64,
    faults: Vec<(u64, Fault)>,
    next_fault: usize,
    healed_at: u64,
    healed: bool,
    next_probe: u64,
    sdi_highest: u64,
    sdi_epochs: BTreeMap<u64, usize>,
    activations: BTreeMap<u64, usize>,
    /// When each site's app was last seen active (or stopped being active).
    last_active: [Option<u64>; 2],
    was_active: [bool; 2],
    starts: BTreeMap<StartKey, u32>,
    resumable: BTreeSet<StartKey>,
    crash_counts: [u32; 2],
    manual_failovers: u64,
    violation: Option<String>,
    stats: Stats,
    trace: Option<Vec<String>>,
}

/// Runs the model for `seed`. Time moves on a grid of `config.tick`, from one
/// tick at which something is due to the next (nothing changes in between).
/// Checks at every step:
/// - at most one site's app is active, and never one right after the other
///   within a step (the intervals during which sites are active and unfenced
///   never overlap, nor touch);
/// - an active site is the one the lease names, at the epoch it runs under (so a
///   site that comes back with an old epoch stays fenced);
/// - epochs only grow: each lease write, each app's activations, SdI's view;
///   no epoch is ever used by two sites;
/// - SdI never refuses a send from an active site (its epoch is the newest);
/// - a tenant step is started again only if it was in flight when its site crashed;
/// - once the network heals, within [`SimConfig::settle_bound`] every failover
///   has ended (Succeeded, Failed or Aborted) and exactly one site is active.
pub fn simulate(seed: u64, config: &SimConfig, trace: bool) -> Report {
    let mut world = World::new(seed, config, trace);
    world.run();
    Report { seed, violation: world.violation, stats: world.stats, trace: world.trace.unwrap_or_default() }
}

fn us(d: Duration) -> u64 {
    d.as_micros() as u64
}

macro_rules! trace {
    ($w:expr, $($arg:tt)*) => {
        if let Some(trace) = $w.trace.as_mut() {
            let line = format!($($arg)*);
            trace.push(format!("{:>9.3} s  {line}", $w.t as f64 / MICROS as f64));
        }
    };
}

impl<'c> World<'c> {
    fn new(seed: u64, cfg: &'c SimConfig, trace: bool) -> Self {
        let mut rng = SplitMix64::new(seed);
        let sites = [0, 1].map(|i| {
            let ppm = skew(&mut rng, cfg.clock_skew_ppm);
            new_site(i, cfg, rng.next_u64(), LocalClock { base_real: 0, base_local: 0, ppm }, rng.below(4_000) as i64)
        });
        let fault_end = us(cfg.fault_time);
        let mut faults = Vec::new();
        let f = cfg.faults;
        if f.partitions {
            for _ in 0..rng.below(14) {
                let at = rng.below(fault_end);
                let fault = match rng.below(5) {
                    0 | 1 => {
                        let link = match rng.below(4) {
                            0 => Link::RepliesLost,
                            1 => Link::Up,
                            _ => Link::Down,
                        };
                        Fault::Witness { site: rng.below(2) as usize, link }
                    }
                    2 => Fault::Peer { up: rng.chance(0.4) },
                    _ => Fault::Prober { site: rng.below(2) as usize, up: rng.chance(0.4) },
                };
                faults.push((at, fault));
            }
        }
        if f.crashes {
            for _ in 0..rng.below(5) {
                let at = rng.below(fault_end);
                let down_for = rng.between(us(cfg.tick), 10 * MICROS);
                faults.push((at, Fault::Crash { site: rng.below(2) as usize, down_for }));
            }
        }
        if f.skew_changes {
            for _ in 0..rng.below(6) {
                let at = rng.below(fault_end);
                let site = rng.below(2) as usize;
                faults.push((at, Fault::Skew { site, ppm: skew(&mut rng, cfg.clock_skew_ppm) }));
            }
        }
        if f.wall_jumps {
            for _ in 0..rng.below(4) {
                let at = rng.below(fault_end);
                let site = rng.below(2) as usize;
                let by = rng.between(1_000, 3 * 3_600_000) as i64;
                faults.push((at, Fault::WallJump { site, by_ms: if rng.chance(0.5) { -by } else { by } }));
            }
        }
        if f.people {
            for _ in 0..rng.below(4) {
                faults.push((rng.below(fault_end), Fault::ManualFailover));
            }
        }
        faults.sort_by_key(|(at, _)| *at);
        Self {
            cfg,
            rng,
            t: 0,
            tick: us(cfg.tick).max(1),
            sites,
            witness: None,
            witness_writes: 0,
            links_witness: [Link::Up; 2],
            link_peer: true,
            links_prober: [true; 2],
            net: Vec::new(),
            seq: 0,
            faults,
            next_fault: 0,
            healed_at: fault_end,
            healed: false,
            next_probe: 0,
            sdi_highest: 0,
            sdi_epochs: BTreeMap::new(),
            activations: BTreeMap::new(),
            last_active: [None; 2],
            was_active: [false; 2],
            starts: BTreeMap::new(),
            resumable: BTreeSet::new(),
            crash_counts: [0; 2],
            manual_failovers: 0,
            violation: None,
            stats: Stats::default(),
            trace: trace.then(Vec::new),
        }
    }

    fn violate(&mut self, what: String) {
        if self.violation.is_none() {
            trace!(self, "VIOLATION: {what}");
            self.violation = Some(format!("at {:.3} s: {what}", self.t as f64 / MICROS as f64));
        }
    }

    fn run(&mut self) {
        let deadline = self.healed_at + us(self.cfg.settle_bound());
        while self.violation.is_none() {
            self.step();
            self.stats.steps += 1;
            if self.healed && self.settled() {
                self.stats.settle_ms = (self.t - self.healed_at) / 1_000;
                break;
            }
            if self.t >= deadline {
                let what = self.unsettled();
                self.violate(format!(
                    "not settled {} s after the network healed: {what}",
                    (self.t - self.healed_at) / MICROS
                ));
                break;
            }
            self.t = self.next_step().min(deadline.next_multiple_of(self.tick));
        }
        self.stats.virtual_ms = self.t / 1_000;
        for s in &self.sites {
            for f in &s.failovers {
                for (_, t) in f.state.tenants() {
                    self.stats.worst_rto_ms = self.stats.worst_rto_ms.max(t.rto_ms.unwrap_or(0));
                }
            }
        }
    }

    fn step(&mut self) {
        self.apply_faults();
        for i in 0..2 {
            if self.sites[i].restart_at.is_some_and(|at| at <= self.t) {
                self.restart(i);
            }
        }
        self.deliver();
        for i in 0..2 {
            self.run_app(i);
        }
        if self.t >= self.next_probe {
            self.probe();
            self.next_probe = self.t + us(self.cfg.probe_interval);
        }
        for i in 0..2 {
            if self.sites[i].up {
                self.tick_agent(i);
                self.run_failovers(i);
                self.person(i);
            }
        }
        self.check();
    }

    /// The next step: the first tick at which something is due. Between two
    /// steps nothing changes, so the invariants hold in between too.
    fn next_step(&self) -> u64 {
        let soon = self.t + self.tick;
        let mut next = self.next_probe;
        let mut at = |t: u64| next = next.min(t);
        if let Some((t, _)) = self.faults.get(self.next_fault) {
            at(*t);
        }
        if !self.healed {
            at(self.healed_at);
        }
        self.net.iter().for_each(|m| at(m.at));
        for s in &self.sites {
            if let Some(t) = s.restart_at.filter(|_| !s.up) {
                at(t);
            }
            if !s.up {
                continue;
            }
            if let Some((t, _)) = s.app.queue.front() {
                at(*t);
            }
            if let Some(wake) = s.agent.next_wake() {
                at(s.clock.real(wake.since_origin().as_micros() as u64));
            }
            // A failover changes only when a call ends, a wall-clock time it
            // waits for comes (a retry, asking the source again), the person
            // acts, or its observation changes (an agent event, above).
            let real = |w: WallTime| {
                let since_base = w.unix_millis() as i64 - WALL_BASE_MS as i64 - s.wall_offset_ms;
                (since_base.max(0) as u64 + 1) * 1_000
            };
            for f in &s.failovers {
                f.running.iter().for_each(|c| at(c.done_at));
                if f.state.phase.is_terminal() {
                    continue;
                }
                f.abort_at.filter(|t| *t > self.t).into_iter().chain(f.approve_at).for_each(&mut at);
                f.state.tenants().filter_map(|(_, t)| t.retry_at).for_each(|w| at(real(w)));
                if let Some(asked) = f.state.fencing.asked_at {
                    at(real(asked + Duration::from_millis(f.state.retry.refence_millis)));
                }
            }
        }
        next.next_multiple_of(self.tick).max(soon)
    }

    fn local(&self, i: usize) -> MonoTime {
        MonoTime::from_origin(Duration::from_micros(self.sites[i].clock.local(self.t)))
    }

    fn wall(&self, i: usize) -> WallTime {
        let millis = WALL_BASE_MS as i64 + (self.t / 1_000) as i64 + self.sites[i].wall_offset_ms;
        WallTime::from_unix_millis(millis.max(0) as u64)
    }

    fn delay(&mut self) -> u64 {
        if self.rng.chance(self.cfg.long_delay_chance) {
            self.rng.between(us(self.cfg.delay.1), us(self.cfg.long_delay))
        } else {
            self.rng.between(us(self.cfg.delay.0), us(self.cfg.delay.1))
        }
    }

    fn send(&mut self, payload: Payload) {
        let at = self.t + self.delay();
        self.seq += 1;
        self.net.push(Msg { at, seq: self.seq, payload });
    }

    fn apply_faults(&mut self) {
        while self.next_fault < self.faults.len() && self.faults[self.next_fault].0 <= self.t {
            let fault = self.faults[self.next_fault].1.clone();
            self.next_fault += 1;
            trace!(self, "fault: {fault:?}");
            match fault {
                Fault::Witness { site, link } => self.links_witness[site] = link,
                Fault::Peer { up } => self.link_peer = up,
                Fault::Prober { site, up } => self.links_prober[site] = up,
                Fault::Crash { site, down_for } => self.crash(site, down_for),
                Fault::Skew { site, ppm } => {
                    let t = self.t;
                    self.sites[site].clock.set_rate(t, ppm);
                }
                Fault::WallJump { site, by_ms } => self.sites[site].wall_offset_ms += by_ms,
                Fault::ManualFailover => self.manual_failover(),
            }
        }
        if !self.healed && self.t >= self.healed_at {
            self.healed = true;
            trace!(self, "network heals; crashed sites restart");
            self.links_witness = [Link::Up; 2];
            self.link_peer = true;
            self.links_prober = [true; 2];
            for i in 0..2 {
                if !self.sites[i].up {
                    self.restart(i);
                }
            }
        }
    }

    fn crash(&mut self, i: usize, down_for: u64) {
        if !self.sites[i].up {
            return;
        }
        self.stats.crashes += 1;
        self.crash_counts[i] += 1;
        // What a resumed runner may repeat: the steps in flight in the durable state.
        let mut in_flight = Vec::new();
        for f in &self.sites[i].failovers {
            match serde_json::from_str::<FailoverState>(&f.json) {
                Ok(durable) => {
                    for (w, wave) in durable.waves.iter().enumerate() {
                        for (k, t) in wave.tenants.iter().enumerate().filter(|(_, t)| t.in_flight) {
                            in_flight.push((i, durable.name.clone(), w, k, t.step, t.attempts));
                        }
                    }
                }
                Err(e) => in_flight.push((i, format!("unparsable state: {e}"), 0, 0, TenantStep::Failed, 0)),
            }
        }
        if let Some((_, what, ..)) = in_flight.iter().find(|k| k.1.starts_with("unparsable")) {
            let what = what.clone();
            self.violate(format!("failover state of {} does not parse after a crash: {what}", SITES[i]));
        }
        self.resumable.extend(in_flight);
        if self.sites[i].app.active.is_some() {
            self.last_active[i] = Some(self.t);
        }
        let s = &mut self.sites[i];
        s.up = false;
        s.app.active = None;
        s.app.queue.clear();
        s.restart_at = Some(self.t + down_for);
        trace!(self, "{} crashes", SITES[i]);
    }

    fn restart(&mut self, i: usize) {
        let ppm = skew(&mut self.rng, self.cfg.clock_skew_ppm);
        let incarnation = self.rng.next_u64();
        let old = &self.sites[i];
        let mut site = new_site(
            i,
            self.cfg,
            incarnation,
            LocalClock { base_real: self.t, base_local: 0, ppm },
            old.wall_offset_ms,
        );
        site.app.highest = old.app.highest;
        site.last_activation = old.last_activation;
        site.failovers = old
            .failovers
            .iter()
            .map(|f| {
                let state = serde_json::from_str(&f.json).unwrap_or_else(|_| f.state.clone());
                SimFailover { state, running: Vec::new(), ..f.clone() }
            })
            .collect();
        let resumed = site.failovers.len();
        self.sites[i] = site;
        let holder = self.witness.as_ref().map(|v| v.record.holder.clone());
        if holder.as_deref().is_some_and(|h| h != SITES[i]) {
            self.stats.restarts_fenced += 1;
        }
        trace!(
            self,
            "{} restarts (incarnation {incarnation:x}, clock {ppm:+} ppm), {resumed} failovers resumed", SITES[i]
        );
    }

    fn deliver(&mut self) {
        if self.net.iter().all(|m| m.at > self.t) {
            return;
        }
        let mut due: Vec<Msg> = Vec::new();
        let mut i = 0;
        while i < self.net.len() {
            if self.net[i].at <= self.t {
                due.push(self.net.swap_remove(i));
            } else {
                i += 1;
            }
        }
        due.sort_by_key(|m| (m.at, m.seq));
        for msg in due {
            match msg.payload {
                Payload::Request { site, incarnation, request } => {
                    if self.links_witness[site] == Link::Down {
                        continue;
                    }
                    let mut reply = self.witness_apply(site, &request.op);
                    if matches!(reply, WitnessReply::Written { .. }) {
                        // A store client that retried after its first attempt
                        // landed answers 412, or gives up with an error.
                        match self.rng.below(100) {
                            0 | 1 => reply = WitnessReply::Conflict,
                            2 | 3 => reply = WitnessReply::Failed,
                            _ => {}
                        }
                    }
                    if self.links_witness[site] == Link::Up {
                        self.send(Payload::Reply { site, incarnation, id: request.id, reply });
                    }
                }
                Payload::Reply { site, incarnation, id, reply } => {
                    let s = &self.sites[site];
                    if !s.up || s.incarnation != incarnation || self.links_witness[site] != Link::Up {
                        continue;
                    }
                    let now = self.local(site);
                    if let WitnessReply::Read(v) = &reply {
                        let (holder, etag) = match v {
                            Some(v) => (Some(v.record.holder.as_str()), Some(v.etag.as_str())),
                            None => (None, None),
                        };
                        let probe = self.sites[site].watch.observe(now, holder, etag);
                        self.sites[site].vantage[1].record(probe);
                    }
                    let actions = self.sites[site].agent.on_reply(now, id, reply);
                    self.carry_out(site, actions);
                }
                Payload::HandOver { to, target } => {
                    let s = &self.sites[to];
                    if !s.up || !self.link_peer {
                        continue;
                    }
                    let holds = matches!(s.agent.view(), LeaseView::Held { ref holder, .. } if holder == s.name);
                    if holds {
                        trace!(self, "{} hands the lease over to {}", SITES[to], SITES[target]);
                        let actions = self.sites[to].agent.hand_over(SITES[target]);
                        self.carry_out(to, actions);
                    }
                }
            }
        }
    }

    fn witness_apply(&mut self, site: usize, op: &WitnessOp) -> WitnessReply {
        let ok = match op {
            WitnessOp::Read => return WitnessReply::Read(self.witness.clone()),
            WitnessOp::Create(_) => self.witness.is_none(),
            WitnessOp::Replace { if_match, .. } => self.witness.as_ref().is_some_and(|v| &v.etag == if_match),
        };
        let (WitnessOp::Create(record) | WitnessOp::Replace { record, .. }) = op else { return WitnessReply::Failed };
        if !ok {
            trace!(self, "witness: 412 for {} writing {record:?}", SITES[site]);
            return WitnessReply::Conflict;
        }
        let old_epoch = self.witness.as_ref().map_or(0, |v| v.record.epoch);
        if record.epoch < old_epoch {
            self.violate(format!(
                "the lease epoch fell from {old_epoch} to {} ({} wrote it)",
                record.epoch, SITES[site]
            ));
        }
        if record.epoch > old_epoch {
            self.stats.epoch_changes += 1;
            self.stats.max_epoch = record.epoch;
        }
        self.witness_writes += 1;
        let etag = format!("\"w{}\"", self.witness_writes);
        trace!(self, "witness: {} wrote {record:?} -> {etag}", SITES[site]);
        self.witness = Some(Versioned { etag: etag.clone(), record: record.clone() });
        WitnessReply::Written { etag }
    }

    fn carry_out(&mut self, i: usize, actions: Vec<LeaseAction>) {
        for action in actions {
            match action {
                LeaseAction::Send(request) => {
                    if self.links_witness[i] != Link::Down {
                        let incarnation = self.sites[i].incarnation;
                        self.send(Payload::Request { site: i, incarnation, request });
                    }
                }
                LeaseAction::Fence => {
                    let d = self.rng.between(0, us(self.cfg.max_fence_delay));
                    self.enqueue(i, AppCmd::Fence, d);
                    trace!(self, "{} agent: fence (done in {} ms)", SITES[i], d / 1_000);
                }
                LeaseAction::Activate { epoch } => {
                    let d = self.rng.between(0, 20_000);
                    self.enqueue(i, AppCmd::Activate(epoch), d);
                    trace!(self, "{} agent: activate epoch {epoch}", SITES[i]);
                    self.maybe_start_automatic(i, epoch);
                }
            }
        }
    }

    fn enqueue(&mut self, i: usize, cmd: AppCmd, delay: u64) {
        let app = &mut self.sites[i].app;
        let at = app.busy_until.max(self.t) + delay;
        app.busy_until = at;
        app.queue.push_back((at, cmd));
    }

    fn run_app(&mut self, i: usize) {
        while self.sites[i].up && self.sites[i].app.queue.front().is_some_and(|(at, _)| *at <= self.t) {
            let Some((_, cmd)) = self.sites[i].app.queue.pop_front() else { break };
            match cmd {
                AppCmd::Fence => {
                    if self.sites[i].app.active.take().is_some() {
                        // Active until this very instant.
                        self.last_active[i] = Some(self.t);
                    }
                    self.sites[i].agent.confirm_fenced();
                    trace!(self, "{} app: fenced", SITES[i]);
                }
                AppCmd::Activate(epoch) => {
                    let highest = self.sites[i].app.highest;
                    if epoch < highest {
                        self.violate(format!(
                            "{} activated with epoch {epoch} below {highest}, which it had used",
                            SITES[i]
                        ));
                    }
                    match self.activations.get(&epoch) {
                        Some(other) if *other != i => {
                            self.violate(format!("epoch {epoch} activated at {} and at {}", SITES[*other], SITES[i]));
                        }
                        _ => {
                            self.activations.insert(epoch, i);
                        }
                    }
                    self.sites[i].app.active = Some(epoch);
                    self.sites[i].app.highest = highest.max(epoch);
                    trace!(self, "{} app: active under epoch {epoch}", SITES[i]);
                }
            }
        }
    }

    fn probe(&mut self) {
        let serving = |w: &World<'_>, i: usize| w.sites[i].up && w.sites[i].app.active.is_some();
        for i in 0..2 {
            let peer = 1 - i;
            if !self.sites[i].up {
                continue;
            }
            let now = self.local(i);
            let own = Probe { at: now, ok: self.link_peer && serving(self, peer) };
            let third = Probe { at: now, ok: self.links_prober[peer] && serving(self, peer) };
            self.sites[i].vantage[0].record(own);
            self.sites[i].vantage[2].record(third);
        }
    }

    fn peer_health(&self, i: usize) -> SiteHealth {
        let rule = &self.cfg.detection;
        let verdicts = self.sites[i].vantage.map(|v| v.verdict(rule));
        site_health(&verdicts, rule)
    }

    fn tick_agent(&mut self, i: usize) {
        let fencing =
            self.sites[i].failovers.iter().any(|f| f.state.phase == Phase::Fencing && f.state.fencing.lease_asked);
        let takeover = if fencing { Takeover::WhenExpired } else { Takeover::WhenHolderDown };
        self.sites[i].agent.set_takeover(takeover);
        let (now, health) = (self.local(i), self.peer_health(i));
        let actions = self.sites[i].agent.tick(now, health);
        self.carry_out(i, actions);
    }

    fn maybe_start_automatic(&mut self, i: usize, epoch: u64) {
        let site = &self.sites[i];
        let last = site.last_activation;
        let running_here = site.failovers.iter().any(|f| !f.state.phase.is_terminal() && f.state.target == site.name);
        self.sites[i].last_activation = last.max(epoch);
        if epoch < 2 || epoch <= last || running_here {
            return;
        }
        let name = format!("auto-{}-e{epoch}", SITES[i]);
        self.start_failover(i, name, Trigger::Automatic, Some(epoch));
    }

    fn manual_failover(&mut self) {
        let Some(holder) = self.witness.as_ref().map(|v| v.record.holder.clone()) else { return };
        let Some(target) = SITES.iter().position(|s| *s != holder) else { return };
        let s = &self.sites[target];
        if !s.up || s.failovers.iter().any(|f| !f.state.phase.is_terminal()) {
            return;
        }
        self.manual_failovers += 1;
        let trigger = if target == 1 { Trigger::Manual } else { Trigger::Failback };
        let name = format!("manual-{}", self.manual_failovers);
        self.start_failover(target, name, trigger, None);
    }

    fn start_failover(&mut self, i: usize, name: String, trigger: Trigger, epoch: Option<u64>) {
        let waves = [
            WaveSpec {
                name: "gold".into(),
                tiers: vec![Tier::Gold],
                parallelism: 2,
                gate: GateRule { max_failed_tenants: 1, require_approval: self.rng.chance(0.5) },
            },
            WaveSpec {
                name: "rest".into(),
                tiers: vec![Tier::Silver, Tier::Bronze],
                parallelism: 3,
                gate: GateRule::default(),
            },
        ];
        let tenants: Vec<TenantSpec> = (0..self.cfg.tenants)
            .map(|k| TenantSpec {
                tenant: TenantRef { namespace: "tenants".into(), name: format!("t{k}") },
                tier: if k % 2 == 0 { Tier::Gold } else { Tier::Silver },
            })
            .collect();
        let Ok(waves) = assign("model", &waves, &tenants) else {
            self.violate("the model's waves do not cover its tenants".into());
            return;
        };
        let new = NewFailover {
            name: name.clone(),
            plan: "model".into(),
            trigger,
            source: SITES[1 - i].into(),
            target: SITES[i].into(),
            declared_loss: self.wall(i),
            epoch,
        };
        let state = FailoverState::new(new, waves, self.cfg.retry);
        let abort_at = (self.cfg.faults.people && self.rng.chance(0.15)).then(|| self.t + self.rng.below(10 * MICROS));
        let json = serde_json::to_string(&state).unwrap_or_default();
        trace!(
            self,
            "{} starts failover {name} ({trigger:?}){}",
            SITES[i],
            if abort_at.is_some() { ", to be aborted" } else { "" }
        );
        self.stats.failovers += 1;
        self.sites[i].failovers.push(SimFailover {
            json,
            state,
            abort_at,
            approved: 0,
            approve_at: None,
            running: Vec::new(),
            counted: false,
        });
    }

    fn observation(&self, i: usize, f: &SimFailover) -> Observation {
        let s = &self.sites[i];
        let (lease_holder, lease_epoch) = match s.agent.view() {
            LeaseView::Held { holder, epoch, .. } => (Some(holder), epoch),
            _ => (None, 0),
        };
        let active_epoch = match s.agent.standing(self.local(i)) {
            Standing::Active { epoch, .. } => Some(epoch),
            Standing::Fenced => None,
        };
        Observation {
            lease_holder,
            lease_epoch,
            active_epoch,
            abort: f.abort_at.is_some_and(|at| at <= self.t),
            approved_waves: f.approved,
        }
    }

    fn run_failovers(&mut self, i: usize) {
        for k in 0..self.sites[i].failovers.len() {
            let f = &self.sites[i].failovers[k];
            if f.counted && f.running.is_empty() {
                continue;
            }
            let wall = self.wall(i);
            let mut changed = false;
            // Finished calls.
            let (done, running): (Vec<_>, Vec<_>) =
                std::mem::take(&mut self.sites[i].failovers[k].running).into_iter().partition(|c| c.done_at <= self.t);
            self.sites[i].failovers[k].running = running;
            for c in done {
                trace!(self, "{} {}: {:?} -> {:?}", SITES[i], self.sites[i].failovers[k].state.name, c.call, c.result);
                self.sites[i].failovers[k].state.complete(&c.call, c.result, wall);
                changed = true;
            }
            // New decisions, until only calls in progress and waits remain.
            for _ in 0..16 {
                let f = &self.sites[i].failovers[k];
                if f.state.phase.is_terminal() {
                    break;
                }
                let seen = self.observation(i, f);
                let actions = decide(&f.state, &seen, wall);
                let mut updated = false;
                for action in actions {
                    match action {
                        Action::Update(update) => {
                            trace!(self, "{} {}: {update:?}", SITES[i], self.sites[i].failovers[k].state.name);
                            self.sites[i].failovers[k].state.apply(&update, wall);
                            updated = true;
                        }
                        Action::Call(call) => {
                            if self.sites[i].failovers[k].running.iter().any(|c| c.call == call) {
                                continue;
                            }
                            self.sites[i].failovers[k].state.begin(&call, wall);
                            changed = true;
                            self.start_call(i, k, call);
                        }
                        Action::Wait(_) => {}
                    }
                }
                changed |= updated;
                if !updated {
                    break;
                }
            }
            if changed {
                let f = &mut self.sites[i].failovers[k];
                match serde_json::to_string(&f.state) {
                    Ok(json) => f.json = json,
                    Err(e) => self.violate(format!("failover state does not serialize: {e}")),
                }
            }
            let f = &mut self.sites[i].failovers[k];
            if f.state.phase.is_terminal() && !f.counted {
                f.counted = true;
                match f.state.phase {
                    Phase::Succeeded => self.stats.succeeded += 1,
                    Phase::Failed => self.stats.failed += 1,
                    _ => self.stats.aborted += 1,
                }
                let reason = format!("{:?}", f.state.end);
                let kind =
                    reason.trim_start_matches("Some(").split([' ', ')', '{']).next().unwrap_or_default().to_owned();
                *self.stats.ends.entry(kind).or_default() += 1;
                trace!(self, "{} failover {} ended {:?} ({reason})", SITES[i], f.state.name, f.state.phase);
            }
        }
    }

    fn start_call(&mut self, i: usize, k: usize, call: Call) {
        let (done_at, result) = match &call {
            Call::FenceSource => {
                if self.link_peer {
                    let d = self.delay();
                    self.send(Payload::HandOver { to: 1 - i, target: i });
                    (self.t + 2 * d, CallResult::Source(SourceFence::Fenced))
                } else {
                    (self.t + MICROS, CallResult::Source(SourceFence::Unreachable))
                }
            }
            Call::AcquireLease => (self.t, CallResult::LeaseAsked),
            Call::CancelLease => (self.t, CallResult::LeaseCancelled),
            Call::Tenant { wave, tenant, step } => {
                let state = &self.sites[i].failovers[k].state;
                let attempts = state.waves[*wave].tenants[*tenant].attempts;
                let key: StartKey = (i, state.name.clone(), *wave, *tenant, *step, attempts);
                let crashes = self.crash_counts[i];
                match self.starts.get(&key) {
                    Some(c) if *c == crashes => {
                        self.violate(format!("{key:?} started twice without a crash between"));
                    }
                    Some(_) if !self.resumable.remove(&key) => {
                        self.violate(format!("{key:?} started again after a crash, but it was not in flight"));
                    }
                    Some(_) => self.stats.resumed_steps += 1,
                    None => {}
                }
                self.starts.insert(key, crashes);
                let duration = self.rng.between(us(self.cfg.step_time.0), us(self.cfg.step_time.1));
                let result = if self.rng.chance(self.cfg.step_failure_chance) {
                    let retryable = self.rng.chance(0.8);
                    Err(StepError { message: format!("{step:?} failed"), retryable })
                } else if *step == TenantStep::Restoring {
                    let rpo = Duration::from_millis(self.rng.below(2_000));
                    Ok(StepOutput::Restored(Restored { snapshot_id: format!("snap-{tenant}"), rpo }))
                } else {
                    Ok(StepOutput::Done)
                };
                (self.t + duration, CallResult::Step(result))
            }
        };
        self.sites[i].failovers[k].running.push(RunningCall { call, done_at, result });
    }

    fn person(&mut self, i: usize) {
        for k in 0..self.sites[i].failovers.len() {
            let f = &self.sites[i].failovers[k];
            if f.state.phase != Phase::Running {
                continue;
            }
            let wave = f.state.current_wave;
            let waiting = f
                .state
                .waves
                .get(wave)
                .is_some_and(|w| w.gate_verdict(wave, f.approved) == GateVerdict::AwaitingApproval);
            if !waiting {
                continue;
            }
            match f.approve_at {
                None => {
                    let at = self.t + self.rng.below(3 * MICROS);
                    self.sites[i].failovers[k].approve_at = Some(at);
                }
                Some(at) if at <= self.t => {
                    let f = &mut self.sites[i].failovers[k];
                    f.approved = wave as u32 + 1;
                    f.approve_at = None;
                    trace!(self, "person approves wave {wave} of {}", self.sites[i].failovers[k].state.name);
                }
                Some(_) => {}
            }
        }
    }

    fn check(&mut self) {
        for i in 0..2 {
            let Some(epoch) = self.sites[i].app.active.filter(|_| self.sites[i].up) else { continue };
            let other = 1 - i;
            if let Some(last) = self.last_active[other]
                && last + self.tick >= self.t
            {
                self.violate(format!(
                    "{} is active (epoch {epoch}) while {} was active {} ms ago",
                    self.sites[i].name,
                    self.sites[other].name,
                    (self.t - last) / 1_000
                ));
            }
            match &self.witness {
                Some(v) if v.record.holder == self.sites[i].name && v.record.epoch == epoch => {}
                lease => {
                    let lease = lease.as_ref().map(|v| format!("{} at epoch {}", v.record.holder, v.record.epoch));
                    self.violate(format!(
                        "{} is active under epoch {epoch}, but the lease names {lease:?}",
                        self.sites[i].name
                    ));
                }
            }
            // The SdI sender transmits under the epoch; SdI refuses an older one.
            if self.rng.chance(0.2) {
                self.stats.sdi_sends += 1;
                if epoch < self.sdi_highest {
                    self.violate(format!(
                        "SdI refused epoch {epoch} from active {}: it has seen {}",
                        self.sites[i].name, self.sdi_highest
                    ));
                }
                if let Some(sender) = self.sdi_epochs.get(&epoch).filter(|s| **s != i) {
                    self.violate(format!(
                        "SdI got epoch {epoch} from {} and from {}",
                        self.sites[*sender].name, self.sites[i].name
                    ));
                }
                self.sdi_epochs.insert(epoch, i);
                self.sdi_highest = self.sdi_highest.max(epoch);
            }
        }
        for i in 0..2 {
            let active = self.sites[i].up && self.sites[i].app.active.is_some();
            if active {
                if let (false, Some(other)) = (self.was_active[i], self.last_active[1 - i]) {
                    let gap = (self.t - other) / 1_000;
                    self.stats.min_handoff_gap_ms = Some(self.stats.min_handoff_gap_ms.map_or(gap, |g| g.min(gap)));
                }
                self.last_active[i] = Some(self.t);
            }
            self.was_active[i] = active;
        }
    }

    fn settled(&self) -> bool {
        let active = self.sites.iter().filter(|s| s.up && s.app.active.is_some()).count();
        active == 1
            && self.net.is_empty()
            && self
                .sites
                .iter()
                .all(|s| s.up && s.failovers.iter().all(|f| f.state.phase.is_terminal() && f.running.is_empty()))
    }

    fn unsettled(&self) -> String {
        let mut out = Vec::new();
        for s in &self.sites {
            for f in s.failovers.iter().filter(|f| !f.state.phase.is_terminal()) {
                out.push(format!("{} failover {} in {:?}", s.name, f.state.name, f.state.phase));
            }
            out.push(format!("{} app active: {:?}, lease view {:?}", s.name, s.app.active, s.agent.view()));
        }
        out.join("; ")
    }
}

fn skew(rng: &mut SplitMix64, max_ppm: u32) -> i64 {
    let max = i64::from(max_ppm);
    // NB: the extremes half of the time: they are where bugs hide.
    match rng.below(4) {
        0 => max,
        1 => -max,
        _ => rng.below(2 * max as u64 + 1) as i64 - max,
    }
}

fn new_site(i: usize, cfg: &SimConfig, incarnation: u64, clock: LocalClock, wall_offset_ms: i64) -> Site {
    let agent = LeaseAgent::new(SITES[i], incarnation, cfg.timing.clone(), Takeover::WhenHolderDown, i == 0);
    Site {
        name: SITES[i],
        up: true,
        restart_at: None,
        incarnation,
        clock,
        wall_offset_ms,
        agent,
        app: App::default(),
        vantage: [VantageTracker::default(); 3],
        watch: RenewalWatch::new(SITES[1 - i], cfg.timing.renew_interval * 2),
        failovers: Vec::new(),
        last_activation: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generator_is_deterministic_and_spread() {
        let mut a = SplitMix64::new(42);
        let mut b = SplitMix64::new(42);
        let xs: Vec<u64> = (0..100).map(|_| a.below(10)).collect();
        let ys: Vec<u64> = (0..100).map(|_| b.below(10)).collect();
        assert_eq!(xs, ys);
        assert!((0..10).all(|d| xs.contains(&d)));
    }

    #[test]
    fn a_quiet_run_settles_with_one_active_site() {
        let cfg = SimConfig::safe(Faults {
            partitions: false,
            crashes: false,
            people: false,
            skew_changes: false,
            wall_jumps: false,
        });
        let report = simulate(1, &cfg, false);
        assert_eq!(report.violation, None);
        assert_eq!(report.stats.max_epoch, 1);
        assert_eq!(report.stats.failovers, 0);
    }

    #[test]
    fn a_few_faulty_runs_keep_every_invariant() {
        let cfg = SimConfig::safe(Faults::ALL);
        for seed in 0..30 {
            let report = simulate(seed, &cfg, false);
            if let Some(v) = &report.violation {
                let trace = simulate(seed, &cfg, true).trace;
                panic!("seed {seed}: {v}\n{}", trace[trace.len().saturating_sub(80)..].join("\n"));
            }
        }
    }
}
