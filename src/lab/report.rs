//! The lab's checks: what the customers were told (every confirmed invoice),
//! what the standby holds after the failover, and what SdI received, compared;
//! and the figures (detection, RTO, RPO) against the objectives.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Serialize;

use super::traffic::Committed;
use crate::app::sdi::Record;
use crate::failover::fencing::FenceEvent;

/// One invoice as the standby's database holds it.
#[derive(Clone, Debug)]
pub struct HeldInvoice {
    pub series: String,
    pub number: i64,
    pub file_name: String,
    pub queue_state: String,
    pub sdi_id: Option<String>,
    pub xml_sha256: String,
}

/// One tenant at the standby after the failover.
#[derive(Clone, Debug, Default)]
pub struct Held {
    pub invoices: Vec<HeldInvoice>,
    /// SdI identifiers with at least one receipt recorded.
    pub receipts: BTreeSet<String>,
}

/// A figure over the tenants.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Spread {
    pub p50: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: &[Duration]) -> Self {
        let mut secs: Vec<f64> = values.iter().map(Duration::as_secs_f64).collect();
        secs.sort_by(f64::total_cmp);
        match secs.len() {
            0 => Self::default(),
            n => Self { p50: round(secs[(n - 1) / 2]), max: round(secs[n - 1]) },
        }
    }
}

fn round(secs: f64) -> f64 {
    (secs * 1000.0).round() / 1000.0
}

/// An objective and whether the run met it.
#[derive(Clone, Debug, Serialize)]
pub struct Objective {
    pub name: &'static str,
    pub target: String,
    pub measured: String,
    pub met: bool,
}

/// What the checks found, as `lab.json` has it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Findings {
    pub invoices_issued: usize,
    pub invoices_lost: usize,
    pub duplicate_numbers: usize,
    pub sdi_duplicates: usize,
    pub pending_sent_exactly_once: bool,
    pub receipts_carried: bool,
    pub dual_active: bool,
    /// Why a check failed, one line each (empty when all passed).
    pub problems: Vec<String>,
}

/// Compares what the customers were confirmed, what the standby holds and
/// what SdI received.
pub fn compare(
    committed: &[Committed],
    held: &BTreeMap<String, Held>,
    sdi: &BTreeMap<String, Vec<Record>>,
) -> Findings {
    let mut f = Findings { invoices_issued: committed.len(), ..Findings::default() };
    let empty = Held::default();

    // Lost: confirmed, and not at the standby as that same invoice.
    let mut confirmed_numbers: BTreeMap<(&str, &str, i64), usize> = BTreeMap::new();
    for c in committed {
        *confirmed_numbers.entry((&c.tenant, &c.series, c.number)).or_default() += 1;
        let there = held.get(&c.tenant).unwrap_or(&empty);
        // NB: the same number and file name with other content is another
        // invoice that took the lost one's number.
        let same = |h: &&HeldInvoice| {
            h.series == c.series && h.number == c.number && h.file_name == c.file_name && h.xml_sha256 == c.xml_sha256
        };
        if !there.invoices.iter().any(|h| same(&h)) {
            f.invoices_lost += 1;
            f.problems.push(format!("lost: tenant {} invoice {}/{} ({})", c.tenant, c.series, c.number, c.file_name));
        }
    }
    // Duplicates: one number confirmed twice (two invoices with it).
    for ((tenant, series, number), n) in confirmed_numbers.into_iter().filter(|(_, n)| *n > 1) {
        f.duplicate_numbers += n - 1;
        f.problems.push(format!("number {series}/{number} of tenant {tenant} was confirmed {n} times"));
    }

    f.pending_sent_exactly_once = true;
    f.receipts_carried = true;
    for (tenant, records) in sdi {
        let there = held.get(tenant).unwrap_or(&empty);
        let by_file: BTreeMap<&str, &HeldInvoice> = there.invoices.iter().map(|h| (h.file_name.as_str(), h)).collect();
        let mut files: BTreeMap<&str, usize> = BTreeMap::new();
        let mut numbers: BTreeMap<(&str, i64), usize> = BTreeMap::new();
        for record in records {
            let file = record.transmission.file_name.as_str();
            *files.entry(file).or_default() += 1;
            let Some(invoice) = by_file.get(file) else {
                f.pending_sent_exactly_once = false;
                f.problems.push(format!("SdI holds {file} of tenant {tenant}, the standby does not"));
                continue;
            };
            *numbers.entry((&invoice.series, invoice.number)).or_default() += 1;
            if invoice.sdi_id.as_deref() != Some(record.transmission.sdi_id.as_str()) {
                f.receipts_carried = false;
                f.problems
                    .push(format!("{file} of tenant {tenant}: SdI id {} not recorded", record.transmission.sdi_id));
            } else if !record.receipts.is_empty() && !there.receipts.contains(&record.transmission.sdi_id) {
                f.receipts_carried = false;
                f.problems.push(format!("{file} of tenant {tenant}: SdI issued a receipt, the standby has none"));
            }
        }
        for (file, n) in files.iter().filter(|(_, n)| **n > 1) {
            f.sdi_duplicates += n - 1;
            f.problems.push(format!("SdI received {file} of tenant {tenant} {n} times"));
        }
        for ((series, number), n) in numbers.iter().filter(|(_, n)| **n > 1) {
            f.sdi_duplicates += n - 1;
            f.problems.push(format!("SdI received invoice {series}/{number} of tenant {tenant} {n} times"));
        }
        for invoice in &there.invoices {
            if files.get(invoice.file_name.as_str()) != Some(&1) || invoice.queue_state == "pending" {
                f.pending_sent_exactly_once = false;
                f.problems.push(format!(
                    "{} of tenant {tenant} ({}) reached SdI {} times",
                    invoice.file_name,
                    invoice.queue_state,
                    files.get(invoice.file_name.as_str()).unwrap_or(&0)
                ));
            }
        }
    }
    for tenant in held.keys().filter(|t| !sdi.contains_key(*t)) {
        f.pending_sent_exactly_once = false;
        f.problems.push(format!("no SdI listing for tenant {tenant}"));
    }
    f
}

/// A site's fence decisions in order, with when each was carried out.
pub type FenceHistory = [(jiff::Timestamp, FenceEvent)];

/// Whether a site was activated while another was still active. `sites`: each
/// site's history, and when the site died, if it did.
pub fn dual_active(sites: &[(&FenceHistory, Option<jiff::Timestamp>)]) -> bool {
    let intervals: Vec<(jiff::Timestamp, jiff::Timestamp)> =
        sites.iter().flat_map(|(events, died)| active_intervals(events, *died)).collect();
    intervals.iter().enumerate().any(|(i, a)| intervals[i + 1..].iter().any(|b| a.0 < b.1 && b.0 < a.1))
}

fn active_intervals(events: &FenceHistory, died: Option<jiff::Timestamp>) -> Vec<(jiff::Timestamp, jiff::Timestamp)> {
    let end_of_time = died.unwrap_or(jiff::Timestamp::MAX);
    let mut out = Vec::new();
    let mut since = None;
    for (at, event) in events {
        match event {
            FenceEvent::Activated { .. } => {
                since.get_or_insert(*at);
            }
            FenceEvent::Fenced => {
                if let Some(start) = since.take() {
                    out.push((start, (*at).min(end_of_time)));
                }
            }
        }
    }
    if let Some(start) = since {
        out.push((start, end_of_time));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn committed(tenant: &str, number: i64) -> Committed {
        Committed {
            tenant: tenant.into(),
            series: "2026".into(),
            number,
            file_name: format!("IT01234567890_{number:05}.xml"),
            xml_sha256: format!("sha-{number}"),
        }
    }

    fn held(number: i64, state: &str) -> HeldInvoice {
        HeldInvoice {
            series: "2026".into(),
            number,
            file_name: format!("IT01234567890_{number:05}.xml"),
            queue_state: state.into(),
            sdi_id: (state != "pending").then(|| format!("{number}")),
            xml_sha256: format!("sha-{number}"),
        }
    }

    fn record(number: i64, receipts: usize) -> Record {
        serde_json::from_value(serde_json::json!({
            "sdi_id": format!("{number}"), "tenant": "acme",
            "file_name": format!("IT01234567890_{number:05}.xml"), "sha256": "00", "epoch": 1,
            "received_at": "2026-11-23T10:00:00Z",
            "receipts": (0..receipts).map(|_| serde_json::json!({"kind": "RC", "issued_at": "2026-11-23T10:00:01Z"}))
                .collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    #[test]
    fn a_faithful_standby_passes_every_check() {
        let held = BTreeMap::from([(
            "acme".to_owned(),
            Held { invoices: vec![held(1, "done"), held(2, "done")], receipts: ["1".into(), "2".into()].into() },
        )]);
        let sdi = BTreeMap::from([("acme".to_owned(), vec![record(1, 1), record(2, 1)])]);
        let f = compare(&[committed("acme", 1), committed("acme", 2)], &held, &sdi);
        assert_eq!((f.invoices_lost, f.duplicate_numbers, f.sdi_duplicates), (0, 0, 0), "{:?}", f.problems);
        assert!(f.pending_sent_exactly_once && f.receipts_carried, "{:?}", f.problems);
    }

    #[test]
    fn each_kind_of_damage_is_found() {
        // Invoice 2 was confirmed but is gone; 1 was confirmed twice; SdI has 3
        // twice; 1's receipt did not come along; 4 never left the queue.
        let held = BTreeMap::from([(
            "acme".to_owned(),
            Held {
                invoices: vec![held(1, "done"), held(3, "done"), held(4, "pending")],
                receipts: ["3".into()].into(),
            },
        )]);
        let sdi = BTreeMap::from([("acme".to_owned(), vec![record(1, 1), record(3, 1), record(3, 1)])]);
        let f = compare(&[committed("acme", 1), committed("acme", 1), committed("acme", 2)], &held, &sdi);
        assert_eq!(f.invoices_lost, 1);
        assert_eq!(f.duplicate_numbers, 1);
        assert_eq!(f.sdi_duplicates, 2, "the same file twice, so the same number twice: {:?}", f.problems);
        assert!(!f.receipts_carried);
        assert!(!f.pending_sent_exactly_once);
    }

    #[test]
    fn two_sites_active_at_once_is_found_and_a_handover_is_not() {
        let t = |s: i64| jiff::Timestamp::from_second(s).unwrap();
        let a = [(t(0), FenceEvent::Activated { epoch: 1 }), (t(10), FenceEvent::Fenced)];
        let b = [(t(11), FenceEvent::Activated { epoch: 2 })];
        assert!(!dual_active(&[(&a, None), (&b, None)]));
        let late = [(t(9), FenceEvent::Activated { epoch: 2 })];
        assert!(dual_active(&[(&a, None), (&late, None)]));
        // A site that died stops being active then.
        let died = [(t(0), FenceEvent::Activated { epoch: 1 })];
        assert!(!dual_active(&[(&died, Some(t(5))), (&late, None)]));
        assert!(dual_active(&[(&died, Some(t(10))), (&late, None)]));
    }
}
