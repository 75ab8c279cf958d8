//! The failover model: thousands of random schedules of the deterministic
//! simulator (`fenice::failover::sim`) — partitions, message delays and losses,
//! clock rate skew, wall clocks stepped back or forward, crashes and restarts
//! at any step, people starting,
//! approving and aborting failovers — with the invariants checked at every
//! virtual step. Then the same checker on a deliberately unsafe timing, to show
//! it does find a violation when there is one.
//!
//! On a failure the test prints the seed and the event trace; replay it with
//! `simulate(seed, &config, true)`.

use std::ops::Range;
use std::time::{Duration, Instant};

use fenice::failover::sim::{Faults, Report, SimConfig, Stats, simulate};

/// Sums of the runs' statistics.
#[derive(Debug, Default)]
struct Totals {
    runs: u64,
    virtual_ms: u64,
    steps: u64,
    epoch_changes: u64,
    crashes: u64,
    restarts_fenced: u64,
    failovers: u64,
    succeeded: u64,
    failed: u64,
    aborted: u64,
    resumed_steps: u64,
    sdi_sends: u64,
    max_settle_ms: u64,
    min_handoff_gap_ms: Option<u64>,
    ends: std::collections::BTreeMap<String, u64>,
}

impl Totals {
    fn add(&mut self, s: &Stats) {
        self.runs += 1;
        self.virtual_ms += s.virtual_ms;
        self.steps += s.steps;
        self.epoch_changes += s.epoch_changes;
        self.crashes += s.crashes;
        self.restarts_fenced += s.restarts_fenced;
        self.failovers += s.failovers;
        self.succeeded += s.succeeded;
        self.failed += s.failed;
        self.aborted += s.aborted;
        self.resumed_steps += s.resumed_steps;
        self.sdi_sends += s.sdi_sends;
        self.max_settle_ms = self.max_settle_ms.max(s.settle_ms);
        if let Some(gap) = s.min_handoff_gap_ms {
            self.min_handoff_gap_ms = Some(self.min_handoff_gap_ms.map_or(gap, |g| g.min(gap)));
        }
        for (reason, n) in &s.ends {
            *self.ends.entry(reason.clone()).or_default() += n;
        }
    }
}

fn fail(config: &SimConfig, report: &Report) -> ! {
    // NB: the run is deterministic, so the failing seed is replayed with the trace on.
    let replay = simulate(report.seed, config, true);
    let tail = &replay.trace[replay.trace.len().saturating_sub(400)..];
    panic!(
        "seed {} broke an invariant: {}\nlast {} events of the trace:\n{}",
        report.seed,
        report.violation.as_deref().unwrap_or("?"),
        tail.len(),
        tail.join("\n")
    );
}

/// Runs every seed in `seeds` and fails on the first violation.
fn run(family: &str, config: &SimConfig, seeds: Range<u64>) -> Totals {
    let started = Instant::now();
    let mut totals = Totals::default();
    for seed in seeds {
        let report = simulate(seed, config, false);
        if report.violation.is_some() {
            fail(config, &report);
        }
        totals.add(&report.stats);
    }
    eprintln!(
        "{family}: {} schedules, {:.0} virtual minutes in {:.2?}; {totals:?}",
        totals.runs,
        totals.virtual_ms as f64 / 60_000.0,
        started.elapsed()
    );
    totals
}

const SCHEDULES_PER_FAMILY: u64 = 2_500;

#[test]
fn partitions_delays_and_skew_never_make_two_sites_active() {
    let faults = Faults { partitions: true, crashes: false, people: false, skew_changes: true, wall_jumps: false };
    let t = run("partitions", &SimConfig::safe(faults), 0..SCHEDULES_PER_FAMILY);
    assert!(t.epoch_changes > 200, "partitions must cause takeovers: {t:?}");
    assert!(t.succeeded > 100, "{t:?}");
}

#[test]
fn crashes_at_any_step_resume_from_the_persisted_state() {
    let faults = Faults { partitions: true, crashes: true, people: false, skew_changes: false, wall_jumps: false };
    let t = run("crashes", &SimConfig::safe(faults), 10_000..10_000 + SCHEDULES_PER_FAMILY);
    assert!(t.crashes > 2_000, "{t:?}");
    assert!(t.resumed_steps > 50, "some crashes must hit a failover mid-step: {t:?}");
    assert!(t.restarts_fenced > 200, "some sites must come back to find the lease taken: {t:?}");
}

#[test]
fn people_start_fail_over_fail_back_approve_and_abort() {
    let faults = Faults { partitions: false, crashes: false, people: true, skew_changes: false, wall_jumps: false };
    let t = run("people", &SimConfig::safe(faults), 20_000..20_000 + SCHEDULES_PER_FAMILY);
    assert!(t.succeeded > 1_000, "{t:?}");
    assert!(t.aborted > 100, "{t:?}");
}

/// Wall clocks stepped back or forward by up to three hours at any time, with
/// partitions, crashes and people: a failover's retries and its asking the
/// source again are persisted in wall time, and none may wait for a clock set
/// back to catch up (they waited as long as the clock jumped).
#[test]
fn wall_clocks_stepped_back_or_forward_hold_no_failover_up() {
    let faults = Faults { partitions: true, crashes: true, people: true, skew_changes: false, wall_jumps: true };
    let t = run("wall jumps", &SimConfig::safe(faults), 40_000..40_000 + SCHEDULES_PER_FAMILY);
    assert!(t.succeeded > 500 && t.failed > 0, "{t:?}");
}

#[test]
fn everything_at_once() {
    let t = run("all faults", &SimConfig::safe(Faults::ALL), 30_000..30_000 + SCHEDULES_PER_FAMILY);
    assert!(t.epoch_changes > 500 && t.failed > 0 && t.aborted > 0 && t.resumed_steps > 0, "{t:?}");
}

/// The checker must fail when the protocol is broken: with a holder that
/// fences only after twice the lease, a cut-off holder is still writing when the
/// standby takes over.
#[test]
fn the_checker_finds_two_active_sites_when_fence_after_exceeds_the_lease() {
    let mut config = SimConfig::safe(Faults {
        partitions: true,
        crashes: false,
        people: false,
        skew_changes: true,
        wall_jumps: false,
    });
    config.timing.fence_after = config.timing.lease_duration * 2;
    assert!(config.timing.check().is_err(), "the timing check refuses it too");
    let started = Instant::now();
    let found = (0..2_000).map(|seed| simulate(seed, &config, false)).find(|r| r.violation.is_some());
    let report = found.expect("some schedule breaks the unsafe timing");
    let violation = report.violation.clone().unwrap_or_default();
    eprintln!("unsafe timing: seed {} in {:.2?}: {violation}", report.seed, started.elapsed());
    assert!(violation.contains("active"), "{violation}");
    let replay = simulate(report.seed, &config, true);
    assert_eq!(replay.violation, report.violation, "a seed replays identically");
    assert!(replay.trace.iter().any(|l| l.contains("VIOLATION")));
}

/// Also caught: an observer that does not wait for the clock skew margin
/// while clocks run at the extremes, with fencing that takes its full time.
#[test]
fn the_checker_finds_an_observer_that_waits_less_than_the_holder_may_still_write() {
    let mut config = SimConfig::safe(Faults {
        partitions: true,
        crashes: false,
        people: false,
        skew_changes: false,
        wall_jumps: false,
    });
    // fence_after close to the lease: the inequality fails by the skew and the fence time.
    config.timing.fence_after = config.timing.lease_duration - Duration::from_millis(100);
    assert!(config.timing.check().is_err());
    let found = (0..3_000).map(|seed| simulate(seed, &config, false)).find(|r| r.violation.is_some());
    assert!(found.is_some(), "the margin matters: some schedule must break it");
}

#[test]
fn a_seed_replays_identically() {
    let config = SimConfig::safe(Faults::ALL);
    for seed in [7, 30_001, 99_999] {
        let (a, b) = (simulate(seed, &config, true), simulate(seed, &config, true));
        assert_eq!(a, b);
        assert!(!a.trace.is_empty());
    }
}
