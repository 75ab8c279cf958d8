//! `forget`: which snapshots a retention policy keeps. The choice is a pure
//! function of the snapshots and the policy; deleting is the caller's.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use jiff::tz::TimeZone;

use super::id::Id;
use super::repository::Repository;
use super::tree::Snapshot;
use crate::store;

/// How many snapshots to keep, per group (tenant, or host and paths).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeepPolicy {
    pub last: u32,
    pub hourly: u32,
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
    pub yearly: u32,
}

impl KeepPolicy {
    pub fn is_empty(&self) -> bool {
        *self == KeepPolicy::default()
    }
}

/// Names the bucket (hour, day, …) a moment falls in.
type BucketOf = fn(&jiff::Zoned) -> String;

/// The decision for one snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub id: Id,
    pub group: String,
    pub time: String,
    /// Why it is kept (`last`, `daily`, …); empty means it is forgotten.
    pub reasons: Vec<&'static str>,
}

/// The group a snapshot is judged in: its tenant's snapshots together, or,
/// for a snapshot without a tenant, those of the same host and paths.
pub fn group_of(snapshot: &Snapshot) -> String {
    match &snapshot.tenant {
        Some(tenant) => format!("tenant {tenant}"),
        None => format!("{} {}", snapshot.host, snapshot.paths.join(" ")),
    }
}

/// A snapshot and its time, read once.
type Dated<'a> = (&'a (Id, Snapshot), Timestamp);

/// Decides, newest first in each group, which snapshots `policy` keeps. Buckets
/// are in `tz` (a day is a day in Rome, not in UTC). An empty policy keeps all.
pub fn decide(snapshots: &[(Id, Snapshot)], policy: &KeepPolicy, tz: &TimeZone) -> Vec<Decision> {
    let mut groups: BTreeMap<String, Vec<Dated>> = BTreeMap::new();
    for entry in snapshots {
        let time = entry.1.dated().unwrap_or(Timestamp::UNIX_EPOCH);
        groups.entry(group_of(&entry.1)).or_default().push((entry, time));
    }
    let mut out = Vec::new();
    for (group, mut members) in groups {
        members.sort_by(|a, b| b.1.cmp(&a.1).then(b.0.0.cmp(&a.0.0)));
        // NB: after a clock was set back the newest is dated before others, and
        // a policy counting by time would forget the newest data.
        let newest = super::tree::newest(members.iter().map(|(entry, _)| *entry)).map(|(id, _)| *id);
        let buckets: [(&'static str, u32, BucketOf); 5] = [
            ("hourly", policy.hourly, |z| z.strftime("%Y-%m-%d %H").to_string()),
            ("daily", policy.daily, |z| z.strftime("%Y-%m-%d").to_string()),
            ("weekly", policy.weekly, |z| {
                format!("{}-W{}", z.date().iso_week_date().year(), z.date().iso_week_date().week())
            }),
            ("monthly", policy.monthly, |z| z.strftime("%Y-%m").to_string()),
            ("yearly", policy.yearly, |z| z.strftime("%Y").to_string()),
        ];
        let mut seen: Vec<BTreeSet<String>> = vec![BTreeSet::new(); buckets.len()];
        for (i, ((id, _), time)) in members.iter().enumerate() {
            let mut reasons = Vec::new();
            if policy.is_empty() || (i as u32) < policy.last {
                reasons.push(if policy.is_empty() { "no policy" } else { "last" });
            }
            if i > 0 && newest == Some(*id) && !policy.is_empty() {
                reasons.push("newest of its series");
            }
            let zoned = time.to_zoned(tz.clone());
            for (b, (name, keep, bucket)) in buckets.iter().enumerate() {
                // The newest snapshot of each of the newest `keep` buckets is kept.
                if (seen[b].len() as u32) < *keep && seen[b].insert(bucket(&zoned)) {
                    reasons.push(name);
                }
            }
            out.push(Decision { id: *id, group: group.clone(), time: time.to_string(), reasons });
        }
    }
    out
}

/// What forgetting did to one snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Kept by the policy, for these reasons.
    Kept(Vec<&'static str>),
    /// Not kept by the policy; left because this was a dry run.
    WouldForget,
    Forgotten,
    /// Not kept by the policy, but the store's retention refuses the delete.
    Held,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Kept(reasons) => write!(f, "keep ({})", reasons.join(", ")),
            Outcome::WouldForget => f.write_str("would forget"),
            Outcome::Forgotten => f.write_str("forgotten"),
            Outcome::Held => f.write_str("kept: the store's retention holds it"),
        }
    }
}

/// Carries out `decisions` in `repo`: deletes the snapshot object of each one
/// not kept (unless `dry_run`). Only snapshot objects go: their data stays
/// until a prune, which needs a credential allowed to delete data.
pub async fn apply(
    repo: &Repository,
    decisions: Vec<Decision>,
    dry_run: bool,
) -> Result<Vec<(Decision, Outcome)>, store::Error> {
    let mut out = Vec::with_capacity(decisions.len());
    for d in decisions {
        let outcome = if !d.reasons.is_empty() {
            Outcome::Kept(d.reasons.clone())
        } else if dry_run {
            Outcome::WouldForget
        } else {
            match repo.store().delete(&format!("snapshots/{}", d.id)).await {
                Ok(()) => Outcome::Forgotten,
                Err(store::Error::Immutable { .. }) => Outcome::Held,
                Err(e) => return Err(e),
            }
        };
        out.push((d, outcome));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(tenant: &str, time: &str, n: u8) -> (Id, Snapshot) {
        crate::repo::tree::sample(n, Some(tenant), time, None)
    }

    fn kept(decisions: &[Decision]) -> Vec<u8> {
        let mut ids: Vec<u8> = decisions.iter().filter(|d| !d.reasons.is_empty()).map(|d| d.id.0[0]).collect();
        ids.sort();
        ids
    }

    #[test]
    fn keep_last_keeps_the_newest_per_tenant() {
        let snaps = vec![
            snap("a", "2026-11-01T10:00:00Z", 1),
            snap("a", "2026-11-02T10:00:00Z", 2),
            snap("a", "2026-11-03T10:00:00Z", 3),
            snap("b", "2026-11-01T10:00:00Z", 4),
        ];
        let d = decide(&snaps, &KeepPolicy { last: 2, ..Default::default() }, &TimeZone::UTC);
        assert_eq!(kept(&d), [2, 3, 4]);
    }

    #[test]
    fn keep_daily_keeps_the_newest_of_each_day_in_the_time_zone() {
        // 23:30 UTC on the 1st is already the 2nd in Rome.
        let snaps = vec![
            snap("a", "2026-11-01T08:00:00Z", 1),
            snap("a", "2026-11-01T23:30:00Z", 2),
            snap("a", "2026-11-02T09:00:00Z", 3),
        ];
        let daily = KeepPolicy { daily: 5, ..Default::default() };
        assert_eq!(kept(&decide(&snaps, &daily, &TimeZone::UTC)), [2, 3]);
        let rome = TimeZone::get("Europe/Rome").unwrap();
        assert_eq!(kept(&decide(&snaps, &daily, &rome)), [1, 3]);
    }

    #[test]
    fn buckets_are_counted_not_snapshots() {
        let snaps = vec![
            snap("a", "2026-01-15T10:00:00Z", 1),
            snap("a", "2026-02-15T10:00:00Z", 2),
            snap("a", "2026-03-15T10:00:00Z", 3),
            snap("a", "2026-03-20T10:00:00Z", 4),
        ];
        let monthly = KeepPolicy { monthly: 2, ..Default::default() };
        assert_eq!(kept(&decide(&snaps, &monthly, &TimeZone::UTC)), [2, 4]);
    }

    #[test]
    fn the_newest_of_a_series_dated_before_others_is_kept() {
        // Snapshot 3 followed 2, taken after the clock was set back three hours.
        let mut after = snap("a", "2026-11-02T07:05:00Z", 3);
        after.1.previous = Some(Id([2; 32]));
        let snaps = vec![snap("a", "2026-11-01T10:00:00Z", 1), snap("a", "2026-11-02T10:00:00Z", 2), after];
        let d = decide(&snaps, &KeepPolicy { last: 1, ..Default::default() }, &TimeZone::UTC);
        assert_eq!(kept(&d), [2, 3]);
        let newest = d.iter().find(|d| d.id == Id([3; 32])).unwrap();
        assert_eq!(newest.reasons, ["newest of its series"]);
    }

    #[test]
    fn an_empty_policy_forgets_nothing() {
        let snaps = vec![snap("a", "2026-11-01T10:00:00Z", 1), snap("a", "2026-11-02T10:00:00Z", 2)];
        assert_eq!(kept(&decide(&snaps, &KeepPolicy::default(), &TimeZone::UTC)), [1, 2]);
    }
}
