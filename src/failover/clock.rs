//! Clocks. Every failover decision takes the time as an argument; the runners
//! read it from a [`Clock`], which is real in the operator and virtual in tests
//! and in the model.
//!
//! Two kinds of time, never mixed:
//! - [`MonoTime`], a reading of this process's monotonic clock. Every safety
//!   rule of the witness lease is measured in it, and only ever compared with
//!   readings of the same clock. It is never persisted nor sent to another site.
//! - [`WallTime`], milliseconds since the Unix epoch, for what a person reads
//!   and for measurements across restarts (RTO, retry back-off). No safety rule
//!   depends on it: wall clocks of two sites may disagree by any amount.

use std::fmt;
use std::ops::{Add, Sub};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// A reading of a monotonic clock: the time since that clock's origin.
///
/// NB: readings of two clocks (two sites, or two incarnations of one process)
/// cannot be compared; the type has no serde on purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct MonoTime(Duration);

impl MonoTime {
    /// The clock's origin.
    pub const ZERO: MonoTime = MonoTime(Duration::ZERO);

    /// The reading `since_origin` after the origin.
    pub const fn from_origin(since_origin: Duration) -> Self {
        Self(since_origin)
    }

    /// Time since the clock's origin.
    pub const fn since_origin(self) -> Duration {
        self.0
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_since(self, earlier: MonoTime) -> Duration {
        self.0.saturating_sub(earlier.0)
    }
}

impl Add<Duration> for MonoTime {
    type Output = MonoTime;

    fn add(self, d: Duration) -> MonoTime {
        MonoTime(self.0.saturating_add(d))
    }
}

impl Sub<Duration> for MonoTime {
    type Output = MonoTime;

    fn sub(self, d: Duration) -> MonoTime {
        MonoTime(self.0.saturating_sub(d))
    }
}

/// A wall-clock time: milliseconds since the Unix epoch. Serialized as a number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WallTime(u64);

impl WallTime {
    /// The time `millis` milliseconds after the Unix epoch.
    pub const fn from_unix_millis(millis: u64) -> Self {
        Self(millis)
    }

    /// Milliseconds since the Unix epoch.
    pub const fn unix_millis(self) -> u64 {
        self.0
    }

    /// The same instant as a [`SystemTime`].
    pub fn to_system_time(self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(self.0)
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_since(self, earlier: WallTime) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl From<SystemTime> for WallTime {
    /// Times before the epoch become the epoch.
    fn from(t: SystemTime) -> Self {
        let millis = t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis());
        Self(u64::try_from(millis).unwrap_or(u64::MAX))
    }
}

impl Add<Duration> for WallTime {
    type Output = WallTime;

    fn add(self, d: Duration) -> WallTime {
        WallTime(self.0.saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)))
    }
}

impl fmt::Display for WallTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:03}s", self.0 / 1000, self.0 % 1000)
    }
}

/// Where the failover logic gets the time from.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The monotonic clock of this process.
    fn now(&self) -> MonoTime;

    /// The wall clock.
    fn wall(&self) -> WallTime;
}

/// The real clocks: [`std::time::Instant`] and [`SystemTime`].
#[derive(Clone, Copy, Debug)]
pub struct SystemClock {
    origin: std::time::Instant,
}

impl SystemClock {
    /// A clock whose monotonic origin is now.
    pub fn new() -> Self {
        Self { origin: std::time::Instant::now() }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> MonoTime {
        MonoTime(self.origin.elapsed())
    }

    fn wall(&self) -> WallTime {
        WallTime::from(SystemTime::now())
    }
}

/// A clock that moves only when told to; clones share the same time.
///
/// `rate_ppm` makes it run fast or slow against the time passed to
/// [`advance`](VirtualClock::advance): with +10 000 ppm, advancing by 1 s moves it
/// by 1.01 s. The model uses this for clock rate skew.
#[derive(Clone, Debug)]
pub struct VirtualClock {
    inner: Arc<Mutex<VirtualState>>,
}

#[derive(Debug)]
struct VirtualState {
    mono: Duration,
    wall: WallTime,
    rate_ppm: i64,
    /// Sub-nanosecond remainder of rate scaling, so many small steps add up exactly.
    carry: i128,
}

impl VirtualClock {
    /// A clock at the monotonic origin and at wall time `wall`, at the true rate.
    pub fn new(wall: WallTime) -> Self {
        Self::with_rate(wall, 0)
    }

    /// A clock that runs `rate_ppm` parts per million fast (negative: slow).
    pub fn with_rate(wall: WallTime, rate_ppm: i64) -> Self {
        let state = VirtualState { mono: Duration::ZERO, wall, rate_ppm, carry: 0 };
        Self { inner: Arc::new(Mutex::new(state)) }
    }

    /// Moves both clocks on by `real` scaled by the rate.
    pub fn advance(&self, real: Duration) {
        let mut state = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let scaled = real.as_nanos() as i128 * (1_000_000 + state.rate_ppm as i128) + state.carry;
        let nanos = scaled.div_euclid(1_000_000).max(0);
        state.carry = scaled.rem_euclid(1_000_000);
        let step = Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
        state.mono += step;
        state.wall = state.wall + step;
    }
}

impl Clock for VirtualClock {
    fn now(&self) -> MonoTime {
        MonoTime(self.inner.lock().unwrap_or_else(PoisonError::into_inner).mono)
    }

    fn wall(&self) -> WallTime {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).wall
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_clock_moves_only_when_advanced_and_clones_share_it() {
        let clock = VirtualClock::new(WallTime::from_unix_millis(1_000));
        let other = clock.clone();
        assert_eq!(clock.now(), MonoTime::ZERO);
        clock.advance(Duration::from_millis(1_500));
        assert_eq!(other.now(), MonoTime::from_origin(Duration::from_millis(1_500)));
        assert_eq!(other.wall(), WallTime::from_unix_millis(2_500));
    }

    #[test]
    fn virtual_clock_rate_skew_accumulates_exactly_over_small_steps() {
        let fast = VirtualClock::with_rate(WallTime::default(), 10_000);
        let slow = VirtualClock::with_rate(WallTime::default(), -10_000);
        for _ in 0..1_000 {
            fast.advance(Duration::from_micros(1_000));
            slow.advance(Duration::from_micros(1_000));
        }
        assert_eq!(fast.now().since_origin(), Duration::from_millis(1_010));
        assert_eq!(slow.now().since_origin(), Duration::from_millis(990));
    }

    #[test]
    fn system_clock_is_monotonic() {
        let clock = SystemClock::new();
        let (a, b) = (clock.now(), clock.now());
        assert!(b >= a);
        assert!(clock.wall() > WallTime::from_unix_millis(1_600_000_000_000));
    }

    #[test]
    fn wall_time_serializes_as_a_number() {
        let t = WallTime::from_unix_millis(1_700_000_000_123);
        assert_eq!(serde_json::to_string(&t).unwrap(), "1700000000123");
        assert_eq!(t.to_string(), "1700000000.123s");
        assert_eq!(WallTime::from(t.to_system_time()), t);
    }
}
