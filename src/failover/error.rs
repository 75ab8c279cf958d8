//! Errors of the failover logic.

use crate::store;

/// Result of a failover operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong in the failover logic.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("witness timing is unsafe: {why}; lengthen leaseDuration or shorten renewInterval")]
    UnsafeTiming { why: String },

    #[error("witness lease {key}: {operation} failed")]
    Witness {
        key: String,
        operation: &'static str,
        #[source]
        source: Box<store::Error>,
    },

    #[error("witness lease {key} is not a lease record; it must be restored by hand, never deleted")]
    LeaseFormat {
        key: String,
        #[source]
        source: serde_json::Error,
    },

    #[error("witness lease {key} changed on every read; retry later")]
    LeaseUnstable { key: String },

    #[error("witness lease {key} changed since it was read (another site wrote it)")]
    LeaseConflict { key: String },

    #[error("hand-over request {key} is not a hand-over request; remove it, it is read only while its epoch holds")]
    HandOverFormat {
        key: String,
        #[source]
        source: serde_json::Error,
    },

    #[error("hand-over request {key} already asks for {asked}; a lease is handed over once per epoch")]
    HandOverConflict { key: String, asked: String },

    #[error("lookout report {key} in the witness store: {operation} failed")]
    Lookout {
        key: String,
        operation: &'static str,
        #[source]
        source: Box<store::Error>,
    },

    #[error("lookout report {key} was written by someone else on every try: run one lookout per --name")]
    LookoutContended { key: String },

    #[error("tenant {tenant} has tier {tier:?}, which no wave of plan {plan} lists; add the tier to a wave")]
    TierWithoutWave { plan: String, tenant: String, tier: crate::api::common::Tier },

    #[error("plan {plan} has no waves; a failover needs at least one")]
    NoWaves { plan: String },

    #[error("failover state {key}: {operation} failed")]
    StateStore {
        key: String,
        operation: &'static str,
        #[source]
        source: Box<store::Error>,
    },

    #[error("failover state {key} is not valid JSON of a failover state")]
    StateFormat {
        key: String,
        #[source]
        source: serde_json::Error,
    },

    #[error(
        "failover state {key} was written by another runner since this one read it; only one runner may drive a failover"
    )]
    StateConflict { key: String },
}

impl Error {
    /// A short stable label for metrics and Events.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::UnsafeTiming { .. } => "UnsafeTiming",
            Error::Witness { .. } => "WitnessUnreachable",
            Error::LeaseFormat { .. } => "LeaseCorrupt",
            Error::LeaseUnstable { .. } => "LeaseUnstable",
            Error::LeaseConflict { .. } => "LeaseConflict",
            Error::HandOverFormat { .. } => "HandOverCorrupt",
            Error::HandOverConflict { .. } => "HandOverConflict",
            Error::Lookout { .. } => "LookoutUnreachable",
            Error::LookoutContended { .. } => "LookoutContended",
            Error::TierWithoutWave { .. } => "TierWithoutWave",
            Error::NoWaves { .. } => "NoWaves",
            Error::StateStore { .. } => "StateStoreFailed",
            Error::StateFormat { .. } => "StateCorrupt",
            Error::StateConflict { .. } => "StateConflict",
        }
    }
}
