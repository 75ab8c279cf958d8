//! Condition bookkeeping shared by every status: the pure rule that keeps
//! `lastTransitionTime` when a condition's status did not change.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// The condition types every resource uses; resources add their own.
pub mod types {
    pub const READY: &str = "Ready";
    pub const PROGRESSING: &str = "Progressing";
    pub const DEGRADED: &str = "Degraded";
}

/// What a controller observed for one condition type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed<'a> {
    pub type_: &'a str,
    pub status: bool,
    /// PascalCase, e.g. `RepositoryUnreachable`.
    pub reason: &'a str,
    pub message: String,
}

/// Returns `conditions` with `observed` set: a new entry if the type is absent,
/// otherwise updated in place. `lastTransitionTime` moves only when the status
/// flips, so `kubectl describe` shows since when a problem has lasted.
pub fn set(
    conditions: &[Condition],
    observed: Observed<'_>,
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    let status = if observed.status { "True" } else { "False" };
    let mut out = conditions.to_vec();
    let transition = |old: Option<&Condition>| match old {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => Time(now),
    };
    let position = out.iter().position(|c| c.type_ == observed.type_);
    let new = Condition {
        last_transition_time: transition(position.map(|i| &out[i])),
        message: observed.message,
        observed_generation: generation,
        reason: observed.reason.to_owned(),
        status: status.to_owned(),
        type_: observed.type_.to_owned(),
    };
    match position {
        Some(i) => out[i] = new,
        None => out.push(new),
    }
    out
}

/// Whether the condition of `type_` is present and True.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions.iter().any(|c| c.type_ == type_ && c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    fn ready(status: bool, reason: &str) -> Observed<'_> {
        Observed { type_: types::READY, status, reason, message: format!("{reason} happened") }
    }

    #[test]
    fn new_condition_is_added_with_now_as_transition() {
        let out = set(&[], ready(true, "Reconciled"), Some(3), at(100));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].status, "True");
        assert_eq!(out[0].observed_generation, Some(3));
        assert_eq!(out[0].last_transition_time, Time(at(100)));
    }

    #[test]
    fn same_status_keeps_transition_time_but_updates_reason() {
        let first = set(&[], ready(false, "Unreachable"), Some(1), at(100));
        let second = set(&first, ready(false, "StillUnreachable"), Some(2), at(200));
        assert_eq!(second[0].last_transition_time, Time(at(100)));
        assert_eq!(second[0].reason, "StillUnreachable");
        assert_eq!(second[0].observed_generation, Some(2));
    }

    #[test]
    fn flipped_status_moves_transition_time() {
        let first = set(&[], ready(false, "Unreachable"), Some(1), at(100));
        let second = set(&first, ready(true, "Reachable"), Some(1), at(200));
        assert_eq!(second[0].last_transition_time, Time(at(200)));
        assert!(is_true(&second, types::READY));
    }

    #[test]
    fn other_types_are_left_alone() {
        let degraded = Observed { type_: types::DEGRADED, status: true, reason: "CopyMissing", message: String::new() };
        let first = set(&[], degraded, None, at(1));
        let both = set(&first, ready(true, "Reconciled"), None, at(2));
        assert_eq!(both.len(), 2);
        assert_eq!(both[0], first[0]);
    }
}
