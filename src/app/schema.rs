//! The app's database schema. The tenant agent (src/stack) reads these tables to
//! record and check verification data, and `reconcile-sdi` writes invoices back
//! into them, so the names here are a contract between the two.

/// The statements that create the schema; each is idempotent, so the app runs
/// them at every start.
pub const SCHEMA: &str = include_str!("schema.sql");

/// The schema version this build writes into `fenice_meta`.
pub const SCHEMA_VERSION: i32 = 1;

/// Where each invoice stands in the outbound SdI queue.
pub mod queue {
    /// Issued, not yet accepted by SdI.
    pub const PENDING: &str = "pending";
    /// Accepted by SdI (it has an SdI identifier), no final receipt yet.
    pub const SENT: &str = "sent";
    /// A final receipt came back (see the receipts table for which).
    pub const DONE: &str = "done";
}
