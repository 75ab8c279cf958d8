//! Is the other site down? Several vantage points probe it; each calls it down
//! after `failure_threshold` failed probes in a row that span at least `window`,
//! and the site is [`SiteHealth::Down`] when at least `min_vantage_points` of
//! them agree (by default 2 of 3: the standby's own probes, the witness's view of
//! the lease renewals, and a third prober).
//!
//! Health only decides *when* an automatic takeover is wanted. It is not what
//! makes a takeover safe: that is the witness lease (see `lease`), so a wrong
//! verdict here can cost availability, never two active sites.

use std::time::Duration;

use super::clock::MonoTime;

/// One probe of the site from one vantage point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    /// When the probe's answer (or its timeout) was seen, on the observer's clock.
    pub at: MonoTime,
    pub ok: bool,
}

/// When the site counts as down (the plan's `detection`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DetectionRule {
    /// Failed probes in a row before one vantage point calls the site down.
    pub failure_threshold: u32,
    /// The failures must span at least this long (first to last failure).
    pub window: Duration,
    /// Vantage points that must call the site down.
    pub min_vantage_points: u32,
}

impl Default for DetectionRule {
    /// The plan's defaults: 3 failures over a minute, from 2 vantage points.
    fn default() -> Self {
        Self { failure_threshold: 3, window: Duration::from_secs(60), min_vantage_points: 2 }
    }
}

/// What one vantage point says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VantageVerdict {
    /// It has not probed yet: it does not vote.
    Unknown,
    /// Its last probe succeeded.
    Up,
    /// Its last probe failed, but not yet enough of them for long enough.
    Failing,
    /// `failure_threshold` failures in a row spanning at least `window`.
    Down,
}

/// The site's health as all vantage points together see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SiteHealth {
    Up,
    /// Some vantage point sees failures, not enough of them agree yet.
    Suspect,
    Down,
}

/// The verdict of one vantage point from its probes, oldest first.
pub fn vantage_verdict(history: &[Probe], rule: &DetectionRule) -> VantageVerdict {
    let Some(last) = history.last() else { return VantageVerdict::Unknown };
    if last.ok {
        return VantageVerdict::Up;
    }
    // The trailing run of failures: everything after the last success.
    let run_start = history.iter().rposition(|p| p.ok).map_or(0, |i| i + 1);
    let run = &history[run_start..];
    verdict_of_run(run.len() as u64, last.at.saturating_since(run[0].at), rule)
}

/// The verdict of `failures` failed probes in a row, `span` from the first to the last.
pub(super) fn verdict_of_run(failures: u64, span: Duration, rule: &DetectionRule) -> VantageVerdict {
    if failures >= u64::from(rule.failure_threshold.max(1)) && span >= rule.window {
        VantageVerdict::Down
    } else {
        VantageVerdict::Failing
    }
}

/// The site's health from the verdicts of all vantage points.
pub fn site_health(verdicts: &[VantageVerdict], rule: &DetectionRule) -> SiteHealth {
    let down = verdicts.iter().filter(|v| **v == VantageVerdict::Down).count() as u64;
    if down >= u64::from(rule.min_vantage_points.max(1)) {
        SiteHealth::Down
    } else if verdicts.iter().any(|v| matches!(v, VantageVerdict::Failing | VantageVerdict::Down)) {
        SiteHealth::Suspect
    } else {
        SiteHealth::Up
    }
}

/// The site's health from each vantage point's probe history.
pub fn assess(histories: &[&[Probe]], rule: &DetectionRule) -> SiteHealth {
    let verdicts: Vec<_> = histories.iter().map(|h| vantage_verdict(h, rule)).collect();
    site_health(&verdicts, rule)
}

/// The same verdict as [`vantage_verdict`] in constant memory: it keeps only the
/// trailing run of failures, for a prober that runs forever.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VantageTracker {
    last_ok: Option<bool>,
    failures: u64,
    first_failure: MonoTime,
    last_failure: MonoTime,
}

impl VantageTracker {
    /// Adds the newest probe.
    pub fn record(&mut self, probe: Probe) {
        self.last_ok = Some(probe.ok);
        if probe.ok {
            self.failures = 0;
        } else {
            if self.failures == 0 {
                self.first_failure = probe.at;
            }
            self.failures += 1;
            self.last_failure = probe.at;
        }
    }

    /// What this vantage point says now.
    pub fn verdict(&self, rule: &DetectionRule) -> VantageVerdict {
        match self.last_ok {
            None => VantageVerdict::Unknown,
            Some(true) => VantageVerdict::Up,
            Some(false) => {
                let (failures, span) = self.failing();
                verdict_of_run(failures, span, rule)
            }
        }
    }

    /// The trailing run of failures: how many, and from the first to the last.
    pub fn failing(&self) -> (u64, Duration) {
        match self.failures {
            0 => (0, Duration::ZERO),
            n => (n, self.last_failure.saturating_since(self.first_failure)),
        }
    }
}

/// The witness's view of a site: whether the site keeps renewing the lease.
/// Each read of the lease becomes a probe, failed when the lease names the site
/// but its ETag has not changed for `stale_after` (on the reader's clock), or
/// when the lease names another site.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenewalWatch {
    site: String,
    stale_after: Duration,
    last: Option<(String, MonoTime)>,
}

impl RenewalWatch {
    /// Watches `site`; `stale_after` is typically twice the renew interval.
    pub fn new(site: impl Into<String>, stale_after: Duration) -> Self {
        Self { site: site.into(), stale_after, last: None }
    }

    /// The probe that a read of the lease at `now` amounts to: `holder` and
    /// `etag` as read (`None` when there is no lease).
    pub fn observe(&mut self, now: MonoTime, holder: Option<&str>, etag: Option<&str>) -> Probe {
        let (Some(holder), Some(etag)) = (holder, etag) else {
            self.last = None;
            return Probe { at: now, ok: false };
        };
        let changed_at = match &self.last {
            Some((seen, at)) if seen == etag => *at,
            _ => now,
        };
        self.last = Some((etag.to_owned(), changed_at));
        Probe { at: now, ok: holder == self.site && now.saturating_since(changed_at) < self.stale_after }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> MonoTime {
        MonoTime::from_origin(Duration::from_secs(secs))
    }

    /// `probes`: one char per probe, `.` ok, `x` failed, ten seconds apart.
    fn history(probes: &str) -> Vec<Probe> {
        probes.chars().enumerate().map(|(i, c)| Probe { at: at(10 * i as u64), ok: c == '.' }).collect()
    }

    fn rule(failure_threshold: u32, window_secs: u64, min_vantage_points: u32) -> DetectionRule {
        DetectionRule { failure_threshold, window: Duration::from_secs(window_secs), min_vantage_points }
    }

    #[test]
    fn a_vantage_point_needs_enough_failures_in_a_row_over_the_window() {
        // (probes, threshold, window in s, expected)
        let table = [
            ("", 3, 20, VantageVerdict::Unknown),
            ("...", 3, 20, VantageVerdict::Up),
            ("xx.", 3, 20, VantageVerdict::Up),
            ("x", 3, 20, VantageVerdict::Failing),
            ("xx", 3, 20, VantageVerdict::Failing),
            ("xxx", 3, 20, VantageVerdict::Down),
            // three failures but a success between them: the run is two long
            ("xx.xx", 3, 20, VantageVerdict::Failing),
            ("xx.xxx", 3, 20, VantageVerdict::Down),
            // enough failures, not long enough: 3 probes span 20 s < 30 s
            ("xxx", 3, 30, VantageVerdict::Failing),
            ("xxxx", 3, 30, VantageVerdict::Down),
            // long enough, not enough failures
            ("xx", 3, 10, VantageVerdict::Failing),
            // threshold 1 and no window: one failure is enough
            ("x", 1, 0, VantageVerdict::Down),
        ];
        for (probes, threshold, window, expected) in table {
            let r = rule(threshold, window, 1);
            assert_eq!(
                vantage_verdict(&history(probes), &r),
                expected,
                "{probes:?} threshold {threshold} window {window}"
            );
        }
    }

    #[test]
    fn the_site_is_down_only_when_enough_vantage_points_agree() {
        use VantageVerdict::*;
        // (verdicts, min vantage points, expected)
        let table: [(&[VantageVerdict], u32, SiteHealth); 8] = [
            (&[Up, Up, Up], 2, SiteHealth::Up),
            (&[Unknown, Unknown, Unknown], 2, SiteHealth::Up),
            (&[Down, Up, Up], 2, SiteHealth::Suspect),
            (&[Failing, Up, Up], 2, SiteHealth::Suspect),
            (&[Down, Failing, Up], 2, SiteHealth::Suspect),
            (&[Down, Down, Up], 2, SiteHealth::Down),
            (&[Down, Up, Unknown], 1, SiteHealth::Down),
            // two vantage points cannot satisfy three
            (&[Down, Down, Unknown], 3, SiteHealth::Suspect),
        ];
        for (verdicts, min, expected) in table {
            assert_eq!(site_health(verdicts, &rule(3, 0, min)), expected, "{verdicts:?} min {min}");
        }
    }

    #[test]
    fn assess_combines_histories() {
        let r = rule(3, 20, 2);
        let (standby, witness, third) = (history("..xxx"), history("xxxx"), history("...."));
        assert_eq!(assess(&[&standby, &witness, &third], &r), SiteHealth::Down);
        let third = history("xx");
        let witness = history("xxx.");
        assert_eq!(assess(&[&standby, &witness, &third], &r), SiteHealth::Suspect);
    }

    #[test]
    fn the_tracker_agrees_with_the_history_on_every_prefix() {
        // A fixed pseudo-random sequence; every prefix is compared.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut probes = Vec::new();
        let mut tracker = VantageTracker::default();
        let r = rule(4, 25, 1);
        for i in 0..2_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let probe = Probe {
                at: MonoTime::from_origin(Duration::from_millis(i * 3_000 + x % 2_000)),
                ok: x.is_multiple_of(5),
            };
            probes.push(probe);
            tracker.record(probe);
            assert_eq!(tracker.verdict(&r), vantage_verdict(&probes, &r), "after {} probes", i + 1);
        }
    }

    #[test]
    fn the_renewal_watch_fails_when_the_etag_stands_still_or_another_site_holds() {
        let mut watch = RenewalWatch::new("a", Duration::from_secs(20));
        assert!(watch.observe(at(0), Some("a"), Some("e1")).ok);
        assert!(watch.observe(at(10), Some("a"), Some("e1")).ok);
        assert!(!watch.observe(at(20), Some("a"), Some("e1")).ok, "unchanged for 20 s");
        assert!(watch.observe(at(25), Some("a"), Some("e2")).ok, "renewed");
        assert!(!watch.observe(at(30), Some("b"), Some("e3")).ok, "another holder");
        assert!(!watch.observe(at(40), None, None).ok, "no lease");
    }
}
