//! Cron schedules in a time zone, as a BackupPolicy states them: five fields
//! (minute hour day-of-month month day-of-week) or `@hourly`, `@daily`,
//! `@weekly`, `@monthly`. Times are civil times in the zone: at the spring
//! daylight-saving gap a skipped time runs right after the gap, and at the
//! autumn fold a repeated time runs once, the first time.
//!
//! [`Schedule::due`] is what the scheduled kinds (BackupPolicy, FailoverPlan's
//! drills) share: a controller that was away runs the latest missed time once,
//! not every one it missed.

use std::time::Duration;

use jiff::Timestamp;
use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error(
        "schedule {schedule:?}: {why}; write five fields (minute hour day-of-month month day-of-week), e.g. \"30 2 * * *\", or @hourly, @daily, @weekly, @monthly"
    )]
    Invalid { schedule: String, why: String },

    #[error("time zone {zone:?} is not known: use an IANA name such as Europe/Rome, or UTC")]
    UnknownZone { zone: String },
}

/// How far ahead a schedule is searched: a 29 February schedule fires within 8 years.
const SEARCH_DAYS: i32 = 8 * 366;

/// A parsed schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cron {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    /// Day-of-month and day-of-week both restricted: a day matching either runs (as cron does).
    either_day: bool,
}

struct Field {
    name: &'static str,
    min: u8,
    max: u8,
    names: &'static [&'static str],
}

const MINUTE: Field = Field { name: "minute", min: 0, max: 59, names: &[] };
const HOUR: Field = Field { name: "hour", min: 0, max: 23, names: &[] };
const DAY: Field = Field { name: "day-of-month", min: 1, max: 31, names: &[] };
const MONTH: Field = Field {
    name: "month",
    min: 1,
    max: 12,
    names: &["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"],
};
// NB: 7 is Sunday too, folded onto 0 after parsing.
const WEEKDAY: Field =
    Field { name: "day-of-week", min: 0, max: 7, names: &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"] };

impl Cron {
    pub fn parse(schedule: &str) -> Result<Self, Error> {
        let invalid = |why: String| Error::Invalid { schedule: schedule.to_owned(), why };
        let text = match schedule.trim() {
            "@hourly" => "0 * * * *",
            "@daily" | "@midnight" => "0 0 * * *",
            "@weekly" => "0 0 * * 0",
            "@monthly" => "0 0 1 * *",
            other if other.starts_with('@') => return Err(invalid(format!("unknown macro {other}"))),
            other => other,
        };
        let fields: Vec<&str> = text.split_whitespace().collect();
        let [minute, hour, day, month, weekday] = fields[..] else {
            return Err(invalid(format!("{} fields", fields.len())));
        };
        let mut weekdays = set(weekday, &WEEKDAY).map_err(invalid)?;
        if weekdays & (1 << 7) != 0 {
            weekdays = (weekdays & !(1 << 7)) | 1;
        }
        Ok(Self {
            minutes: set(minute, &MINUTE).map_err(invalid)?,
            hours: set(hour, &HOUR).map_err(invalid)?,
            days: set(day, &DAY).map_err(invalid)?,
            months: set(month, &MONTH).map_err(invalid)?,
            weekdays,
            either_day: !day.starts_with('*') && !weekday.starts_with('*'),
        })
    }

    fn day_matches(&self, date: Date) -> bool {
        let by_day = self.days & (1 << date.day()) != 0;
        let by_weekday = self.weekdays & (1 << date.weekday().to_sunday_zero_offset()) != 0;
        let month = self.months & (1 << date.month()) != 0;
        month && if self.either_day { by_day || by_weekday } else { by_day && by_weekday }
    }

    /// The first time strictly after `after` that the schedule names, in `zone`.
    pub fn next_after(&self, after: Timestamp, zone: &TimeZone) -> Option<Timestamp> {
        let start = zone.to_datetime(after).date();
        for offset in 0..SEARCH_DAYS {
            let date = start.checked_add(jiff::Span::new().days(offset)).ok()?;
            if !self.day_matches(date) {
                continue;
            }
            for hour in (0..24).filter(|h| self.hours & (1 << h) != 0) {
                for minute in (0..60).filter(|m| self.minutes & (1 << m) != 0) {
                    let civil = DateTime::from_parts(date, jiff::civil::time(hour, minute, 0, 0));
                    let Ok(zoned) = zone.to_ambiguous_zoned(civil).compatible() else { continue };
                    if zoned.timestamp() > after {
                        return Some(zoned.timestamp());
                    }
                }
            }
        }
        None
    }

    /// The last time at or before `now`, and after `after`, that the schedule
    /// names: what a controller that was away runs once on its return.
    pub fn latest_between(&self, after: Timestamp, now: Timestamp, zone: &TimeZone) -> Option<Timestamp> {
        let mut latest = None;
        let mut at = after;
        while let Some(next) = self.next_after(at, zone).filter(|n| *n <= now) {
            latest = Some(next);
            at = next;
        }
        latest
    }
}

/// The time zone named, or why not.
pub fn zone(name: &str) -> Result<TimeZone, Error> {
    TimeZone::get(name).map_err(|_| Error::UnknownZone { zone: name.to_owned() })
}

/// A cron schedule in its time zone.
#[derive(Clone, Debug)]
pub struct Schedule {
    cron: Cron,
    zone: TimeZone,
}

/// What to do now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Due {
    /// Run now, for this scheduled time.
    pub run: Option<Timestamp>,
    /// The time after that (or after the last run).
    pub next: Option<Timestamp>,
}

/// Longest wait between two looks at a scheduled object, whatever its schedule says.
const MAX_WAIT: Duration = Duration::from_secs(3600);

impl Schedule {
    pub fn parse(cron: &str, zone_name: &str) -> Result<Self, Error> {
        Ok(Self { cron: Cron::parse(cron)?, zone: zone(zone_name)? })
    }

    /// The run due at `now`, if any, since the last run (or, before the
    /// first, since the object was created).
    pub fn due(&self, last: Option<Timestamp>, created: Option<Timestamp>, now: Timestamp) -> Due {
        let since = last.or(created).unwrap_or(now);
        let run = self.cron.latest_between(since, now, &self.zone);
        let next = self.cron.next_after(run.unwrap_or(since).max(now), &self.zone);
        Due { run, next }
    }
}

/// How long to wait for `next`: at least a second, at most an hour.
pub fn wait_until(next: Option<Timestamp>, now: Timestamp) -> Duration {
    next.and_then(|n| Duration::try_from(n.duration_since(now)).ok())
        .map_or(MAX_WAIT, |d| d.min(MAX_WAIT))
        .max(Duration::from_secs(1))
}

/// The name of what a run at `at` creates: `<prefix>-<yyyymmdd-hhmm>` (UTC),
/// so that a retry creates nothing twice.
pub fn run_name(prefix: &str, at: Timestamp) -> String {
    format!("{prefix}-{}", at.strftime("%Y%m%d-%H%M")).to_ascii_lowercase()
}

/// One field as a bit set.
fn set(text: &str, field: &Field) -> Result<u64, String> {
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => {
                let step: u8 = step.parse().ok().filter(|s| *s > 0).ok_or_else(|| {
                    format!("{} field {text:?}: step {step:?} is not a whole number above 0", field.name)
                })?;
                (range, step)
            }
            None => (part, 1),
        };
        let (low, high) = match range {
            "*" => (field.min, field.max),
            _ => match range.split_once('-') {
                Some((a, b)) => (value(a, field)?, value(b, field)?),
                None if step > 1 => (value(range, field)?, field.max),
                None => {
                    let v = value(range, field)?;
                    (v, v)
                }
            },
        };
        if low > high {
            return Err(format!("{} field {text:?}: range {low}-{high} runs backwards", field.name));
        }
        for v in (low..=high).step_by(usize::from(step)) {
            bits |= 1 << v;
        }
    }
    Ok(bits)
}

fn value(text: &str, field: &Field) -> Result<u8, String> {
    let upper = text.to_ascii_uppercase();
    if let Some(i) = field.names.iter().position(|n| *n == upper) {
        return Ok(i as u8 + field.min);
    }
    text.parse::<u8>()
        .ok()
        .filter(|v| (field.min..=field.max).contains(v))
        .ok_or_else(|| format!("{} {text:?} is not a number from {} to {}", field.name, field.min, field.max))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rome() -> TimeZone {
        zone("Europe/Rome").unwrap()
    }

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn the_next_time_follows_the_fields() {
        let utc = TimeZone::UTC;
        let next = |s: &str, after: &str| Cron::parse(s).unwrap().next_after(at(after), &utc).unwrap().to_string();
        assert_eq!(next("30 2 * * *", "2026-11-23T10:00:00Z"), "2026-11-24T02:30:00Z");
        assert_eq!(next("*/15 * * * *", "2026-11-23T10:07:00Z"), "2026-11-23T10:15:00Z");
        assert_eq!(next("@hourly", "2026-11-23T10:00:00Z"), "2026-11-23T11:00:00Z", "strictly after");
        assert_eq!(next("0 0 1 * *", "2026-11-23T00:00:00Z"), "2026-12-01T00:00:00Z");
        assert_eq!(next("0 9 * * MON-FRI", "2026-11-28T10:00:00Z"), "2026-11-30T09:00:00Z", "Saturday to Monday");
        assert_eq!(next("0 0 * * 7", "2026-11-23T00:00:00Z"), "2026-11-29T00:00:00Z", "7 is Sunday");
        // Day-of-month and day-of-week both given: either matches.
        assert_eq!(next("0 0 13 * FRI", "2026-11-01T00:00:00Z"), "2026-11-06T00:00:00Z");
        assert_eq!(next("0 0 29 2 *", "2026-03-01T00:00:00Z"), "2028-02-29T00:00:00Z");
    }

    #[test]
    fn daylight_saving_gaps_run_after_the_gap_and_folds_run_once() {
        let cron = Cron::parse("30 2 * * *").unwrap();
        // 29 March 2026: 02:00 → 03:00 in Rome; 02:30 does not exist.
        let spring = cron.next_after(at("2026-03-28T12:00:00Z"), &rome()).unwrap();
        assert_eq!(spring, at("2026-03-29T01:30:00Z"), "03:30 CEST");
        // 25 October 2026: 03:00 → 02:00; 02:30 happens twice, it runs at the first.
        let autumn = cron.next_after(at("2026-10-24T12:00:00Z"), &rome()).unwrap();
        assert_eq!(autumn, at("2026-10-25T00:30:00Z"), "02:30 CEST");
        assert_eq!(cron.next_after(autumn, &rome()).unwrap(), at("2026-10-26T01:30:00Z"), "not again at 02:30 CET");
    }

    #[test]
    fn a_returning_controller_runs_the_latest_missed_time_once() {
        let cron = Cron::parse("0 * * * *").unwrap();
        let latest = cron.latest_between(at("2026-11-23T10:00:00Z"), at("2026-11-23T13:20:00Z"), &TimeZone::UTC);
        assert_eq!(latest, Some(at("2026-11-23T13:00:00Z")));
        assert_eq!(cron.latest_between(at("2026-11-23T13:00:00Z"), at("2026-11-23T13:20:00Z"), &TimeZone::UTC), None);
    }

    /// The operator's host clock jumps: forward, the latest missed run happens
    /// once; back (the last run now looks in the future), nothing runs again
    /// until the next time after that last run.
    #[test]
    fn a_clock_that_jumps_runs_nothing_twice() {
        let schedule = Schedule::parse("0 */6 * * *", "UTC").unwrap();
        let last = at("2026-11-23T12:00:00Z");
        let forward = schedule.due(Some(last), None, at("2026-11-25T01:00:00Z"));
        assert_eq!(forward.run, Some(at("2026-11-25T00:00:00Z")), "one run, the latest missed");
        let back = schedule.due(Some(last), None, at("2026-11-23T09:00:00Z"));
        assert_eq!(back.run, None, "nothing again after a jump back");
        assert_eq!(back.next, Some(at("2026-11-23T18:00:00Z")), "the next run after the last one");
        // Back to the time of the last run, and past it: that run is not due again.
        assert_eq!(schedule.due(Some(last), None, at("2026-11-23T12:05:00Z")).run, None);
    }

    #[test]
    fn bad_schedules_and_zones_say_what_is_wrong() {
        let why = |s: &str| Cron::parse(s).unwrap_err().to_string();
        assert!(why("0 2 * *").contains("4 fields"), "{}", why("0 2 * *"));
        assert!(why("61 * * * *").contains("minute \"61\" is not a number from 0 to 59"));
        assert!(why("*/0 * * * *").contains("step \"0\""));
        assert!(why("0 5-2 * * *").contains("runs backwards"));
        assert!(why("@yearly").contains("unknown macro"));
        assert!(why("0 0 * * FUNDAY").contains("day-of-week"));
        assert_eq!(zone("Mars/Olympus").unwrap_err(), Error::UnknownZone { zone: "Mars/Olympus".into() });
    }
}
