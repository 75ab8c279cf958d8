//! The app's database schema. The tenant agent (src/stack) reads these tables to
//! record and check verification data, and `reconcile-sdi` writes invoices back
//! into them, so the names here are a contract between the two.

/// The statements that create the schema; each is idempotent, so the app runs
/// them at every start.
pub const SCHEMA: &str = include_str!("schema.sql");

/// The schema version this build writes into `fenice_meta`.
pub const SCHEMA_VERSION: i32 = 2;

/// Brings a version 1 database to version 2: SdI identifiers become unique
/// per SdI environment (production, test), in invoices and in receipts.
/// Everything already there was production's. Run once, in the schema
/// transaction, when `fenice_meta` says version 1.
pub const MIGRATE_FROM_1: &str = "
ALTER TABLE invoices ADD COLUMN sdi_environment text NOT NULL DEFAULT 'production'
    CHECK (sdi_environment IN ('production', 'test'));
ALTER TABLE invoices DROP CONSTRAINT invoices_sdi_id_key;
ALTER TABLE invoices ADD CONSTRAINT invoices_sdi_environment_sdi_id_key UNIQUE (sdi_environment, sdi_id);
ALTER TABLE receipts ADD COLUMN sdi_environment text NOT NULL DEFAULT 'production'
    CHECK (sdi_environment IN ('production', 'test'));
ALTER TABLE receipts DROP CONSTRAINT receipts_pkey;
ALTER TABLE receipts ADD PRIMARY KEY (sdi_environment, sdi_id, kind);
";

/// Where each invoice stands in the outbound SdI queue.
pub mod queue {
    /// Issued, not yet accepted by SdI.
    pub const PENDING: &str = "pending";
    /// Accepted by SdI (it has an SdI identifier), no final receipt yet.
    pub const SENT: &str = "sent";
    /// A final receipt came back (see the receipts table for which).
    pub const DONE: &str = "done";
}
