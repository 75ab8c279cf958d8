//! Tenant backup: one snapshot holding a consistent dump of the tenant's
//! database, streamed from pg_dump (no copy on disk), its documents, and the
//! verification data of exactly the dumped state.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;

use crate::repo::archiver::{self, BackupOptions, CopyResult, Entry, Progress, Source};
use crate::repo::repository::Repository;

use super::child::ChildReader;
use super::pg::{self, DbUrl};
use super::verify::{self, ANNOTATION};
use super::{BASE, DOCUMENTS, DUMP, Error, Result, TAG};

/// What to back up.
#[derive(Clone, Debug)]
pub struct TenantBackup {
    pub tenant: String,
    pub db: DbUrl,
    pub documents: PathBuf,
    pub host: String,
    /// Where pg_dump is; found on PATH or in Debian's directories otherwise.
    pub pg_bin: Option<PathBuf>,
    /// Also take a physical base backup (pg_basebackup), the starting point of
    /// point-in-time recovery with the archived WAL.
    pub physical: bool,
}

/// The result of a tenant backup: one copy per repository, and what was recorded.
#[derive(Debug)]
pub struct Outcome {
    pub copies: Vec<CopyResult>,
    pub recorded: verify::Record,
}

/// Backs the tenant up into every repository in `repos`, reading the database
/// and the documents once.
///
/// NB: the verification record and the dump come from one exported snapshot of
/// a read-only repeatable-read transaction, so they describe the same state
/// even while invoices are being issued. Documents are written before their
/// invoice commits, so every invoice in the dump has its document on disk by
/// the time the directory is read.
pub async fn backup(repos: Vec<Arc<Repository>>, request: &TenantBackup, progress: Arc<Progress>) -> Result<Outcome> {
    let pg_dump = pg::program("pg_dump", request.pg_bin.as_ref())?;
    if !request.documents.is_dir() {
        return Err(Error::Io {
            what: "documents directory",
            path: request.documents.clone(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory"),
        });
    }
    let mut client = request.db.connect().await?;
    let query = |what: &'static str| move |source| Error::Query { what, source };
    let tx = pg::consistent_view(&mut client, "starting the backup transaction").await?;
    let snapshot: String =
        tx.query_one("SELECT pg_export_snapshot()", &[]).await.map_err(query("exporting a snapshot"))?.get(0);
    let recorded = verify::record(&tx).await?;
    let (conninfo, password) = request.db.libpq_args();
    let mut command = Command::new(&pg_dump);
    command
        .args(["--format=custom", "--compress=0"])
        .arg(format!("--snapshot={snapshot}"))
        .arg(format!("--dbname={conninfo}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(password) = &password {
        command.env("PGPASSWORD", password);
    }
    let child = command.spawn().map_err(|source| Error::Spawn { program: pg_dump.clone(), source })?;
    let mut entries = vec![
        Entry::Stream { name: DUMP.into(), reader: Box::new(ChildReader::new("pg_dump", child)) },
        Entry::Path { name: DOCUMENTS.into(), path: request.documents.clone() },
    ];
    if request.physical {
        let pg_basebackup = pg::program("pg_basebackup", request.pg_bin.as_ref())?;
        let mut command = Command::new(&pg_basebackup);
        // NB: tar to stdout allows WAL fetched at the end, not streamed; the
        // fetched WAL makes the base backup consistent on its own.
        command.args(["--pgdata=-", "--format=tar", "--wal-method=fetch", "--checkpoint=fast"]);
        command.arg(format!("--dbname={conninfo}"));
        if let Some(password) = &password {
            command.env("PGPASSWORD", password);
        }
        entries
            .push(Entry::Stream { name: BASE.into(), reader: Box::new(ChildReader::lazy("pg_basebackup", command)) });
    }
    let source = Source::Entries(entries);
    let options = BackupOptions {
        force_read: false,
        host: request.host.clone(),
        tenant: Some(request.tenant.clone()),
        tags: vec![TAG.into()],
        annotations: [
            (ANNOTATION.to_string(), serde_json::to_value(&recorded).expect("record serializes")),
            ("database".to_string(), serde_json::Value::String(request.db.database().to_string())),
        ]
        .into(),
    };
    let copies = archiver::backup(repos, source, options, progress)
        .await
        .map_err(|source| Error::Backup { tenant: request.tenant.clone(), source: Box::new(source) })?;
    // Ends the transaction, and with it the exported snapshot pg_dump used.
    tx.commit().await.map_err(query("ending the backup transaction"))?;
    Ok(Outcome { copies, recorded })
}
