//! Vantage points away from both sites. A lookout (`fenice failover witness
//! lookout`, run at a third provider) probes a site's health endpoints and
//! posts what it sees in the witness store, the one place both sites reach:
//! `witness/<plan>/lookouts/<name>.json`, rewritten after each probe. The
//! standby's prober reads every lookout's report as one more vantage point
//! ([`Lookouts`]).
//!
//! A report carries the lookout's own count of failures in a row and how long
//! they lasted on its monotonic clock, so the reader judges them by the plan's
//! rule without comparing anyone's wall clock. Whether the lookout is alive is
//! judged on the reader's clock: a report that stopped changing does not vote.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::clock::{Clock, MonoTime};
use super::error::{Error, Result};
use super::health::{DetectionRule, Probe, VantageTracker, VantageVerdict, verdict_of_run};
use crate::store::{self, ObjectStore, PutCondition};

/// What a lookout saw of a site, as of its latest probe.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// The site probed.
    pub site: String,
    /// The lookout's probes so far: a new one changes it.
    pub probes: u64,
    /// How often the lookout probes: a report unchanged for three of these is stale.
    pub interval_ms: u64,
    /// Whether the latest probe found the site answering.
    pub ok: bool,
    /// Failed probes in a row (0 after a success).
    pub failures: u64,
    /// From the first to the latest of those failures.
    pub failing_for_ms: u64,
}

impl Report {
    /// What the report says by `rule`.
    pub fn verdict(&self, rule: &DetectionRule) -> VantageVerdict {
        if self.ok {
            return VantageVerdict::Up;
        }
        verdict_of_run(self.failures, Duration::from_millis(self.failing_for_ms), rule)
    }
}

/// The prefix of a plan's lookout reports.
pub fn prefix(plan: &str) -> String {
    format!("witness/{plan}/lookouts/")
}

/// The key of the lookout `name`'s report.
pub fn key(plan: &str, name: &str) -> String {
    format!("{}{name}.json", prefix(plan))
}

/// A lookout's side: counts its probes and posts each in the witness.
pub struct Poster {
    key: String,
    site: String,
    interval: Duration,
    probes: u64,
    tracker: VantageTracker,
    etag: Option<String>,
}

impl Poster {
    pub fn new(plan: &str, name: &str, site: &str, interval: Duration) -> Self {
        Self {
            key: key(plan, name),
            site: site.to_owned(),
            interval,
            probes: 0,
            tracker: VantageTracker::default(),
            etag: None,
        }
    }

    /// The report after a probe at `now` that found the site answering or not.
    pub fn record(&mut self, now: MonoTime, ok: bool) -> Report {
        self.probes += 1;
        self.tracker.record(Probe { at: now, ok });
        let (failures, failing_for) = self.tracker.failing();
        Report {
            site: self.site.clone(),
            probes: self.probes,
            interval_ms: self.interval.as_millis() as u64,
            ok,
            failures,
            failing_for_ms: failing_for.as_millis() as u64,
        }
    }

    /// Writes `report` over this lookout's last one. Another writer of the
    /// same key (a restarted lookout) is written over: the newest counts.
    pub async fn post(&mut self, store: &dyn ObjectStore, report: &Report) -> Result<()> {
        let body = Bytes::from(serde_json::to_vec(report).expect("a report serializes"));
        for _ in 0..3 {
            let condition = match &self.etag {
                Some(etag) => PutCondition::IfMatch(etag.clone()),
                None => PutCondition::IfAbsent,
            };
            match store.put(&self.key, body.clone(), condition).await {
                Ok(outcome) => {
                    self.etag = Some(outcome.etag);
                    return Ok(());
                }
                Err(
                    store::Error::PreconditionFailed { .. }
                    | store::Error::AlreadyExists { .. }
                    | store::Error::NotFound { .. },
                ) => {
                    let head = store.head(&self.key).await;
                    self.etag = head.map_err(|e| self.failed(e))?.map(|meta| meta.etag);
                }
                Err(e) => return Err(self.failed(e)),
            }
        }
        Err(Error::LookoutContended { key: self.key.clone() })
    }

    fn failed(&self, e: store::Error) -> Error {
        Error::Lookout { key: self.key.clone(), operation: "write", source: Box::new(e) }
    }
}

/// The reader's side: the plan's lookouts that report on one site, each a
/// vantage point while its report keeps changing.
pub struct Lookouts {
    prefix: String,
    site: String,
    /// Unchanged this long (or three of the lookout's intervals, if longer), a report does not vote.
    stale_after: Duration,
    seen: BTreeMap<String, Seen>,
}

struct Seen {
    etag: String,
    changed_at: MonoTime,
    report: Option<Report>,
}

impl Lookouts {
    pub fn new(plan: &str, site: &str, stale_after: Duration) -> Self {
        Self { prefix: prefix(plan), site: site.to_owned(), stale_after, seen: BTreeMap::new() }
    }

    /// Reads the reports that changed since the last call (one listing, and one
    /// read per changed report) and returns each lookout's verdict on `clock`
    /// once read. A report that cannot be read or parsed does not vote; a store
    /// that cannot be listed leaves every lookout as it was, aging.
    pub async fn verdicts(
        &mut self,
        store: &dyn ObjectStore,
        clock: &dyn Clock,
        rule: &DetectionRule,
    ) -> Vec<VantageVerdict> {
        let listed = store.list(&self.prefix).await;
        let now = clock.now();
        if let Ok(listed) = listed {
            self.seen.retain(|key, _| listed.iter().any(|m| &m.key == key));
            for meta in listed {
                if self.seen.get(&meta.key).is_some_and(|s| s.etag == meta.etag) {
                    continue;
                }
                let report = match store.get(&meta.key).await {
                    Ok(bytes) => serde_json::from_slice::<Report>(&bytes).ok(),
                    Err(_) => None,
                };
                self.seen.insert(meta.key, Seen { etag: meta.etag, changed_at: now, report });
            }
        }
        self.seen
            .values()
            .filter_map(|seen| {
                let report = seen.report.as_ref().filter(|r| r.site == self.site)?;
                let stale = self.stale_after.max(Duration::from_millis(report.interval_ms) * 3);
                Some(match now.saturating_since(seen.changed_at) < stale {
                    true => report.verdict(rule),
                    false => VantageVerdict::Unknown,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::fs::FsStore;

    fn at(millis: u64) -> MonoTime {
        MonoTime::from_origin(Duration::from_millis(millis))
    }

    fn rule() -> DetectionRule {
        DetectionRule { failure_threshold: 3, window: Duration::from_secs(2), min_vantage_points: 2 }
    }

    #[test]
    fn a_lookout_counts_its_failures_in_a_row_and_their_span_on_its_own_clock() {
        let mut poster = Poster::new("p", "milan", "westpole-rome", Duration::from_secs(1));
        let reports: Vec<Report> =
            [(0, true), (1000, false), (2000, false), (3000, false)].map(|(t, ok)| poster.record(at(t), ok)).into();
        assert_eq!(reports[0].verdict(&rule()), VantageVerdict::Up);
        assert_eq!((reports[2].failures, reports[2].failing_for_ms), (2, 1000));
        assert_eq!(reports[2].verdict(&rule()), VantageVerdict::Failing);
        assert_eq!((reports[3].failures, reports[3].failing_for_ms), (3, 2000));
        assert_eq!(reports[3].verdict(&rule()), VantageVerdict::Down);
        let again = poster.record(at(4000), true);
        assert_eq!((again.failures, again.failing_for_ms, again.probes), (0, 0, 5));
    }

    #[tokio::test]
    async fn the_reader_counts_a_lookout_while_its_report_changes_and_never_one_about_another_site() {
        use crate::failover::clock::{VirtualClock, WallTime};
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(FsStore::open(dir.path()).unwrap());
        let clock = VirtualClock::new(WallTime::from_unix_millis(0));
        let mut reader = Lookouts::new("p", "westpole-rome", Duration::from_secs(2));
        let mut read = async |advance_ms: u64| {
            clock.advance(Duration::from_millis(advance_ms));
            reader.verdicts(store.as_ref(), &clock, &rule()).await
        };
        assert!(read(0).await.is_empty(), "no lookout, no vote");

        let mut milan = Poster::new("p", "milan", "westpole-rome", Duration::from_millis(500));
        let mut other = Poster::new("p", "paris", "azure-italynorth", Duration::from_millis(500));
        for (t, seen) in [(0, VantageVerdict::Failing), (1000, VantageVerdict::Failing), (2000, VantageVerdict::Down)] {
            let report = milan.record(at(t), false);
            milan.post(store.as_ref(), &report).await.unwrap();
            let report = other.record(at(t), false);
            other.post(store.as_ref(), &report).await.unwrap();
            assert_eq!(read(if t == 0 { 0 } else { 1000 }).await, vec![seen], "at {t} ms");
        }
        // The lookout stops posting: its last word ages out and stops voting.
        assert_eq!(read(1900).await, vec![VantageVerdict::Down]);
        assert_eq!(read(100).await, vec![VantageVerdict::Unknown]);
        // A restarted lookout of the same name writes over the old report.
        let mut restarted = Poster::new("p", "milan", "westpole-rome", Duration::from_millis(500));
        let report = restarted.record(at(0), true);
        restarted.post(store.as_ref(), &report).await.unwrap();
        assert_eq!(read(100).await, vec![VantageVerdict::Up]);
        // A report that is not one does not vote.
        store.put(&key("p", "junk"), Bytes::from_static(b"{"), PutCondition::IfAbsent).await.unwrap();
        assert_eq!(read(100).await, vec![VantageVerdict::Up]);
    }
}
