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
use super::{BASE, DATABASE_TIME, DUMP, Error, Result, TAG};

/// What to back up.
#[derive(Clone, Debug)]
pub struct TenantBackup {
    pub tenant: String,
    pub db: DbUrl,
    pub host: String,
    /// Where pg_dump is; found on PATH or in Debian's directories otherwise.
    pub pg_bin: Option<PathBuf>,
    /// Also take a physical base backup (pg_basebackup), the starting point of
    /// point-in-time recovery with the archived WAL.
    pub physical: bool,
    /// Tags besides `tenant-backup`, e.g. the Backup object a Job ran for.
    pub tags: Vec<String>,
}

/// The result of a tenant backup: one copy per repository, and what was recorded.
#[derive(Debug)]
pub struct Outcome {
    pub copies: Vec<CopyResult>,
    pub recorded: verify::Record,
}

/// Backs the tenant up into every repository in `repos`, reading the database once.
///
/// NB: the verification record and the dump describe the same state even while
/// invoices are being issued: a read-only repeatable-read transaction exports
/// its snapshot, pg_dump dumps that snapshot, and a second session imports it
/// to compute the record while the dump streams. The invoice documents are rows
/// of the database (table `documents`), so they are in the dump, consistent
/// with their invoices; restores write them back out.
pub async fn backup(repos: Vec<Arc<Repository>>, request: &TenantBackup, progress: Arc<Progress>) -> Result<Outcome> {
    let pg_dump = pg::program("pg_dump", request.pg_bin.as_ref())?;
    let mut client = request.db.connect().await?;
    let query = |what: &'static str| move |source| Error::Query { what, source };
    let tx = pg::consistent_view(&mut client, "starting the backup transaction").await?;
    let row = tx.query_one("SELECT pg_export_snapshot(), now()", &[]).await.map_err(query("exporting a snapshot"))?;
    let (snapshot, database_time): (String, jiff::Timestamp) = (row.get(0), row.get(1));
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
    let mut entries = vec![Entry::Stream { name: DUMP.into(), reader: Box::new(ChildReader::new("pg_dump", child)) }];
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
    let options = BackupOptions {
        force_read: false,
        host: request.host.clone(),
        tenant: Some(request.tenant.clone()),
        tags: std::iter::once(TAG.to_owned()).chain(request.tags.iter().cloned()).collect(),
        annotations: [
            ("database".to_string(), serde_json::Value::String(request.db.database().to_string())),
            (DATABASE_TIME.to_string(), serde_json::Value::String(database_time.to_string())),
        ]
        .into(),
    };
    let recorded = Arc::new(std::sync::Mutex::new(None));
    let annotate = {
        let (db, snapshot, recorded) = (request.db.clone(), snapshot.clone(), recorded.clone());
        async move {
            let record = record_in_snapshot(&db, &snapshot).await?;
            let value = serde_json::to_value(&record).expect("record serializes");
            *recorded.lock().unwrap_or_else(|e| e.into_inner()) = Some(record);
            Ok([(ANNOTATION.to_string(), value)].into())
        }
    };
    let copies = archiver::backup_annotated(repos, Source::Entries(entries), options, progress, annotate)
        .await
        .map_err(|source| Error::Backup { tenant: request.tenant.clone(), source: Box::new(source) })?;
    // Ends the transaction, and with it the exported snapshot pg_dump used.
    tx.commit().await.map_err(query("ending the backup transaction"))?;
    let recorded = recorded.lock().unwrap_or_else(|e| e.into_inner()).take().unwrap_or_default();
    Ok(Outcome { copies, recorded })
}

/// The verification record of an exported snapshot, from a session of its own.
async fn record_in_snapshot(
    db: &DbUrl,
    snapshot: &str,
) -> Result<verify::Record, Box<dyn std::error::Error + Send + Sync>> {
    if !snapshot.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        return Err(format!("unexpected snapshot id {snapshot:?}").into());
    }
    let mut client = db.connect().await?;
    let tx = pg::consistent_view(&mut client, "starting the verification transaction").await?;
    tx.batch_execute(&format!("SET TRANSACTION SNAPSHOT '{snapshot}'"))
        .await
        .map_err(|source| Error::Query { what: "importing the backup's snapshot", source })?;
    Ok(verify::record(&tx).await?)
}
