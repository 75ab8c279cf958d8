//! What a restore run elsewhere (a Job at a Kubernetes site) tells the
//! operator: one JSON document, small enough for a container's termination
//! message (the kubelet keeps 4096 bytes of it), read back by the Restore
//! controller. Never a secret: the same words the agent prints.

use serde::{Deserialize, Serialize};

use super::restore::Outcome;
use super::{Error, Result};

/// What the kubelet keeps of a termination message.
pub const LIMIT: usize = 4096;

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub tenant: String,
    /// The snapshot restored (its full id when verified, short on a mismatch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// When the backup was taken (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// Every recorded count and checksum matched.
    pub verified: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub documents: Option<u64>,
    /// What the restored data has that differs from what was recorded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mismatches: Vec<String>,
    /// How many differences there were, when `mismatches` had to be cut to fit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mismatch_count: Option<usize>,
    /// Why nothing verifiable was restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A drill's copy served: the test invoice it issued and transmitted
    /// (series/number, the test endpoint and SdI's id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_invoice: Option<String>,
    /// Why a drill's copy, restored and verified, did not serve or send its test invoice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serve_error: Option<String>,
    /// When the newest invoice the restored data holds was written (RFC
    /// 3339): a failover's RPO is the loss's time minus this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_write: Option<String>,
}

impl Report {
    pub fn of(tenant: &str, result: &Result<Outcome>) -> Report {
        let base = Report { tenant: tenant.to_owned(), ..Report::default() };
        match result {
            Ok(outcome) => Report {
                snapshot: Some(outcome.snapshot.to_string()),
                time: Some(outcome.time.clone()),
                verified: true,
                documents: Some(outcome.documents),
                ..base
            },
            Err(Error::Mismatch { snapshot, differences, .. }) => Report {
                snapshot: Some(snapshot.clone()),
                mismatches: differences.iter().map(ToString::to_string).collect(),
                ..base
            },
            Err(e) => Report::failed(tenant, &crate::error_chain::error_chain(e)),
        }
    }

    pub fn failed(tenant: &str, why: &str) -> Report {
        Report { tenant: tenant.to_owned(), error: Some(why.to_owned()), ..Report::default() }
    }

    /// The report as one line of JSON within [`LIMIT`]: differences past
    /// what fits are counted, not listed; the longest over-long error is cut.
    pub fn message(&self) -> String {
        let mut report = self.clone();
        let total = report.mismatches.len();
        loop {
            let text = serde_json::to_string(&report).unwrap_or_default();
            if text.len() <= LIMIT {
                return text;
            }
            if report.mismatches.pop().is_some() {
                report.mismatch_count = Some(total);
            } else if let Some(error) = [&mut report.error, &mut report.serve_error]
                .into_iter()
                .flatten()
                .max_by_key(|e| e.len())
                .filter(|e| e.len() > 3)
            {
                let keep = error.len().saturating_sub(text.len() - LIMIT + 3);
                let mut cut = keep;
                while !error.is_char_boundary(cut) {
                    cut -= 1;
                }
                error.truncate(cut);
                error.push('…');
            } else {
                return text;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_report_fits_a_termination_message_and_says_how_much_was_cut() {
        let mut report = Report { tenant: "acme".into(), snapshot: Some("ab12".into()), ..Report::default() };
        report.mismatches = (0..500).map(|i| format!("table t{i}: recorded 1 rows, restored 0 rows")).collect();
        let text = report.message();
        assert!(text.len() <= LIMIT, "{}", text.len());
        let back: Report = serde_json::from_str(&text).unwrap();
        assert_eq!(back.mismatch_count, Some(500));
        assert!(!back.mismatches.is_empty() && back.mismatches.len() < 500);
        assert_eq!(back.mismatches[0], report.mismatches[0]);

        let failed = Report::failed("acme", &"é".repeat(5000));
        let back: Report = serde_json::from_str(&failed.message()).unwrap();
        assert!(back.error.unwrap().ends_with('…'));
        let served = Report { serve_error: Some("x".repeat(5000)), ..Report::failed("acme", "short") };
        let back: Report = serde_json::from_str(&served.message()).unwrap();
        assert!(back.serve_error.unwrap().ends_with('…'));
        assert_eq!(back.error.as_deref(), Some("short"));
        let short = Report::failed("acme", "wrong password");
        assert_eq!(serde_json::from_str::<Report>(&short.message()).unwrap(), short);
    }
}
