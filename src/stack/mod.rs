//! The invoicing stack's data, as the agent backs it up and restores it: a
//! tenant's PostgreSQL database (a consistent dump streamed into the
//! repository), which holds its invoice documents too, and the verification
//! data that proves a restore complete.
//!
//! A tenant snapshot holds, at its root:
//!
//! | entry | what |
//! | --- | --- |
//! | `database.dump` | `pg_dump --format=custom --compress=0` of the tenant's database |
//! | `pgdata.tar` | with `--physical`: `pg_basebackup --format=tar --wal-method=fetch`, the base of point-in-time recovery |
//!
//! with the tenant's name, the tag [`TAG`], the [`verify::Record`] of the
//! dumped state in the annotation [`verify::ANNOTATION`], and the database's
//! time at the backup's start in the annotation [`DATABASE_TIME`].

pub mod backup;
mod child;
pub mod pg;
pub mod pitr;
pub mod promote;
pub mod restore;
pub mod restore_report;
pub mod verify;
pub mod wal;
pub mod wal_archiver;

use std::path::PathBuf;

/// The snapshot entry holding the database dump.
pub const DUMP: &str = "database.dump";
/// The snapshot entry holding the physical base backup (a tar of the data
/// directory with the WAL that makes it consistent), when one was taken.
pub const BASE: &str = "pgdata.tar";
/// The tag of every tenant backup snapshot.
pub const TAG: &str = "tenant-backup";
/// The snapshot annotation holding the database server's time when the backup
/// began (RFC 3339, UTC): the clock the WAL's commit times, and so a
/// point-in-time target, are read on. The snapshot's own date is the backup
/// host's clock, which may disagree.
pub const DATABASE_TIME: &str = "databaseTime";

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database URL: {reason}")]
    DbUrl { reason: String },

    #[error("cannot connect to {db}; check the URL, that the server runs and accepts this user")]
    Connect {
        db: String,
        #[source]
        source: tokio_postgres::Error,
    },

    #[error("database query failed: {what}")]
    Query {
        what: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },

    #[error("{program} not found (looked in {looked}); install PostgreSQL's client programs or pass --pg-bin")]
    NoProgram { program: &'static str, looked: String },

    #[error("cannot run {program}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{program} failed ({status}): {stderr}")]
    ProgramFailed { program: &'static str, status: String, stderr: String },

    #[error("backing up tenant {tenant}")]
    Backup {
        tenant: String,
        #[source]
        source: Box<crate::repo::archiver::Error>,
    },

    #[error("repository {repository}")]
    Repository {
        repository: String,
        #[source]
        source: Box<crate::repo::repository::Error>,
    },

    #[error("restoring snapshot {snapshot}")]
    Restore {
        snapshot: String,
        #[source]
        source: Box<crate::repo::restorer::Error>,
    },

    #[error("repository {repository} holds no backup of tenant {tenant}; list them with `fenice repo snapshots`")]
    NoSnapshot { repository: String, tenant: String },

    #[error("snapshot {snapshot} belongs to tenant {actual}, not {tenant}")]
    OtherTenant { snapshot: String, tenant: String, actual: String },

    #[error("snapshot {snapshot} is not a tenant backup: {reason}")]
    NotTenantBackup { snapshot: String, reason: String },

    #[error(
        "{db} is not empty ({tables} tables); restore into a fresh database, or pass --force to replace its contents"
    )]
    DatabaseNotEmpty { db: String, tables: i64 },

    #[error(
        "documents directory {dir} is not empty; restore into an empty one, or pass --force to replace its contents"
    )]
    DocumentsNotEmpty { dir: PathBuf },

    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "{what} {value:?} has characters a restore_command cannot carry unquoted (allowed: letters, digits, / : . _ @ -)"
    )]
    Unquotable { what: &'static str, value: String },

    #[error(
        "repository {repository} holds no base backup of tenant {tenant}{}; take one with `fenice agent backup --physical`",
        before.as_ref().map(|t| format!(" taken before {t}")).unwrap_or_default()
    )]
    NoBaseBackup { repository: String, tenant: String, before: Option<String> },

    #[error("data directory {dir} is not empty; restore into an empty one, or pass --force to replace it")]
    DataDirNotEmpty { dir: PathBuf },

    #[error("{db} is still recovering after {waited_seconds} s; see the server's log for the WAL it asks for")]
    StillRecovering { db: String, waited_seconds: u64 },

    #[error("restored tenant {tenant} differs from what snapshot {snapshot} recorded:\n  {}", differences.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
    Mismatch { tenant: String, snapshot: String, differences: Vec<verify::Difference> },

    #[error("tenant {tenant}: reading the WAL archive's timelines")]
    Timelines {
        tenant: String,
        #[source]
        source: Box<wal::Error>,
    },
}

impl Error {
    /// The repository's store did not answer: worth trying again later, unlike
    /// a missing backup, damaged data or a difference from what was recorded.
    pub fn may_pass(&self) -> bool {
        match self {
            Error::Repository { source, .. } => source.may_pass(),
            Error::Restore { source, .. } => source.may_pass(),
            _ => false,
        }
    }
}
