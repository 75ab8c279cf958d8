//! Tenant restore: the database from the snapshot's dump (piped into
//! pg_restore), the documents, then verification against what the backup
//! recorded. A restore that does not verify is an error that says what differs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use crate::repo::id::Id;
use crate::repo::repository::Repository;
use crate::repo::restorer::{self, load_tree};
use crate::repo::tree::{NodeType, Snapshot};

use super::child::feed;
use super::pg::{self, DbUrl};
use super::verify::{self, ANNOTATION};
use super::{DUMP, Error, Result, TAG};

/// What to restore, and where.
#[derive(Clone, Debug)]
pub struct TenantRestore {
    pub tenant: String,
    /// A snapshot id or prefix, or `latest` / `None` for the tenant's newest backup.
    pub snapshot: Option<String>,
    pub db: DbUrl,
    pub documents: PathBuf,
    /// Replace what the database and the documents directory hold.
    pub force: bool,
    pub pg_bin: Option<PathBuf>,
}

/// A verified restore.
#[derive(Debug)]
pub struct Outcome {
    pub snapshot: Id,
    /// When the backup was taken (RFC 3339).
    pub time: String,
    pub recorded: verify::Record,
    pub documents: u64,
}

/// The tenant backup `spec` names (or the newest), with its recorded verification data.
pub async fn find(repo: &Repository, tenant: &str, spec: Option<&str>) -> Result<(Id, Snapshot, verify::Record)> {
    let repo_error = |source| Error::Repository { repository: repo.describe(), source: Box::new(source) };
    let (id, snapshot) = match spec.filter(|s| *s != "latest") {
        Some(spec) => {
            let (id, snapshot) = repo.find_snapshot(spec).await.map_err(repo_error)?;
            if snapshot.tenant.as_deref() != Some(tenant) {
                return Err(Error::OtherTenant {
                    snapshot: id.short(),
                    tenant: tenant.to_string(),
                    actual: snapshot.tenant.unwrap_or_else(|| "none".into()),
                });
            }
            (id, snapshot)
        }
        None => {
            let snapshots = repo.snapshots().await.map_err(repo_error)?;
            let backups = snapshots
                .iter()
                .filter(|(_, s)| s.tenant.as_deref() == Some(tenant) && s.tags.iter().any(|t| t == TAG));
            crate::repo::tree::newest(backups)
                .cloned()
                .ok_or_else(|| Error::NoSnapshot { repository: repo.describe(), tenant: tenant.to_string() })?
        }
    };
    let not_backup = |reason: &str| Error::NotTenantBackup { snapshot: id.short(), reason: reason.to_string() };
    let value = snapshot.annotations.get(ANNOTATION).ok_or_else(|| not_backup("it has no verification record"))?;
    let recorded = serde_json::from_value(value.clone())
        .map_err(|e| not_backup(&format!("its verification record is unreadable: {e}")))?;
    Ok((id, snapshot, recorded))
}

/// Restores a tenant and verifies it: the database from the dump, then the
/// documents written out of it, then the record compared.
pub async fn restore(repo: &Arc<Repository>, request: &TenantRestore) -> Result<Outcome> {
    let pg_restore = pg::program("pg_restore", request.pg_bin.as_ref())?;
    let (id, snapshot, recorded) = find(repo, &request.tenant, request.snapshot.as_deref()).await?;
    let restore_error = |source: restorer::Error| Error::Restore { snapshot: id.short(), source: Box::new(source) };
    let root = load_tree(repo, &snapshot.tree).await.map_err(|source| restore_error(source.into()))?;
    if !root.nodes.iter().any(|n| n.name == DUMP && n.node_type == NodeType::File) {
        return Err(Error::NotTenantBackup { snapshot: id.short(), reason: format!("it has no {DUMP}") });
    }
    prepare_documents(&request.documents, request.force)?;
    drop(prepare_database(&request.db, request.force).await?);
    restore_database(repo, &snapshot.tree, &pg_restore, &request.db).await.map_err(|e| match e {
        Error::Restore { source, .. } => restore_error(*source),
        e => e,
    })?;

    // Nothing writes to the restored database yet: the record and the
    // documents are taken at once, each on a connection of its own.
    let (mut client, documents_client) = (request.db.connect().await?, request.db.connect().await?);
    let tx = pg::consistent_view(&mut client, "starting the verification transaction").await?;
    let write_documents = async {
        match recorded.tables.contains_key("invoices") {
            true => verify::write_documents(&documents_client, &request.documents).await,
            false => Ok((0, Vec::new())),
        }
    };
    let (restored, written) = tokio::join!(verify::record(&tx), write_documents);
    let mut differences = verify::compare(&recorded, &restored?);
    let (documents, found) = written?;
    differences.extend(found);
    if !differences.is_empty() {
        return Err(Error::Mismatch { tenant: request.tenant.clone(), snapshot: id.short(), differences });
    }
    Ok(Outcome { snapshot: id, time: snapshot.time, recorded, documents })
}

/// Makes sure the documents directory exists and is empty (or emptied under `force`).
pub(super) fn prepare_documents(dir: &Path, force: bool) -> Result<()> {
    let io = |what| {
        let path = dir.to_owned();
        move |source| Error::Io { what, path, source }
    };
    std::fs::create_dir_all(dir).map_err(io("creating the documents directory"))?;
    let mut entries = std::fs::read_dir(dir).map_err(io("reading the documents directory"))?.peekable();
    if entries.peek().is_none() {
        return Ok(());
    }
    if !force {
        return Err(Error::DocumentsNotEmpty { dir: dir.to_owned() });
    }
    for entry in entries {
        let path = entry.map_err(io("reading the documents directory"))?.path();
        let removed = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        removed.map_err(|source| Error::Io { what: "removing", path, source })?;
    }
    Ok(())
}

/// Creates the database if it does not exist; refuses one that holds tables,
/// unless `force`, which empties it.
async fn prepare_database(db: &DbUrl, force: bool) -> Result<tokio_postgres::Client> {
    let client = match db.connect().await {
        Ok(client) => client,
        Err(connect_error) => {
            // It may just not exist yet: create it through the server's maintenance database.
            let admin = match db.sibling("postgres").connect().await {
                Ok(admin) => admin,
                Err(_) => return Err(connect_error),
            };
            let exists = admin
                .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&db.database()])
                .await
                .map_err(|source| Error::Query { what: "looking the database up", source })?
                .is_some();
            if exists {
                return Err(connect_error);
            }
            let create = format!("CREATE DATABASE \"{}\"", db.database().replace('"', "\"\""));
            admin
                .batch_execute(&create)
                .await
                .map_err(|source| Error::Query { what: "creating the database", source })?;
            db.connect().await?
        }
    };
    let tables: i64 = client
        .query_one("SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')", &[])
        .await
        .map_err(|source| Error::Query { what: "counting tables", source })?
        .get(0);
    if tables > 0 {
        if !force {
            return Err(Error::DatabaseNotEmpty { db: db.to_string(), tables });
        }
        client
            .batch_execute("DROP SCHEMA IF EXISTS public CASCADE; CREATE SCHEMA public")
            .await
            .map_err(|source| Error::Query { what: "emptying the database", source })?;
    }
    Ok(client)
}

/// Streams the snapshot's dump into pg_restore.
async fn restore_database(repo: &Arc<Repository>, root: &Id, pg_restore: &PathBuf, db: &DbUrl) -> Result<()> {
    let (conninfo, password) = db.libpq_args();
    let mut command = Command::new(pg_restore);
    command.args(["--no-owner", "--no-acl", "--exit-on-error", "--single-transaction"]);
    command.arg(format!("--dbname={conninfo}"));
    if let Some(password) = password {
        command.env("PGPASSWORD", password);
    }
    feed(repo, root, DUMP, "pg_restore", command).await
}
