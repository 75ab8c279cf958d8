//! `fenice agent`: what the operator's Jobs run inside a site: tenant backup
//! and restore (WAL archiving and SdI reconciliation to follow).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Subcommand};
use serde_json::json;

use super::repo::{StoreArgs, open_all, report_copies, with_progress};
use super::secrets::UnlockArgs;
use crate::repo::archiver::Progress;
use crate::stack::backup::{self, TenantBackup};
use crate::stack::pg::DbUrl;
use crate::stack::restore::{self, TenantRestore};
use crate::stack::wal;

#[derive(Args, Debug)]
pub struct AgentArgs {
    #[command(subcommand)]
    command: AgentCommand,
}

#[derive(Subcommand, Debug)]
enum AgentCommand {
    /// Back a tenant up: a consistent dump of its database streamed into each
    /// repository, its documents, and the verification data of the dumped state.
    Backup(BackupArgs),
    /// Restore a tenant into a fresh database and documents directory, then
    /// verify it against what its backup recorded.
    Restore(RestoreArgs),
    /// Archive one WAL file into every repository: PostgreSQL's
    /// `archive_command = 'fenice agent wal-push %p'`.
    WalPush(WalPushArgs),
    /// Fetch one archived WAL file from the first repository that has it:
    /// PostgreSQL's `restore_command = 'fenice agent wal-fetch %f %p'`.
    WalFetch(WalFetchArgs),
}

#[derive(Args, Debug)]
struct WalPushArgs {
    /// The WAL file (PostgreSQL's %p, relative to the data directory it runs in).
    path: PathBuf,
    #[arg(long, env = "FENICE_TENANT")]
    tenant: String,
    #[command(flatten)]
    target: RepoTarget,
}

#[derive(Args, Debug)]
struct WalFetchArgs {
    /// The WAL file's name (PostgreSQL's %f).
    name: String,
    /// Where to write it (PostgreSQL's %p).
    dest: PathBuf,
    #[arg(long, env = "FENICE_TENANT")]
    tenant: String,
    #[command(flatten)]
    target: RepoTarget,
}

/// Which tenant, and where its data lives.
#[derive(Args, Debug)]
struct TenantArgs {
    /// The tenant's name, as its snapshots record it.
    #[arg(long, env = "FENICE_TENANT")]
    tenant: String,
    /// The tenant's database, postgres://USER:PASSWORD@HOST:PORT/DATABASE. Its
    /// password never shows in output, errors or other programs' command lines.
    #[arg(long, env = "FENICE_DB_URL", hide_env_values = true)]
    db: String,
    /// The tenant's invoice documents directory.
    #[arg(long, env = "FENICE_DOCUMENTS")]
    documents: PathBuf,
    /// Where pg_dump and pg_restore are; PATH or Debian's directories otherwise.
    #[arg(long, env = "FENICE_PG_BIN")]
    pg_bin: Option<PathBuf>,
}

/// The repositories and how to open them.
#[derive(Args, Debug)]
struct RepoTarget {
    /// Repository location; `backup` takes it several times to write one
    /// snapshot to several repositories.
    #[arg(long = "repo", env = "FENICE_REPOSITORY", value_delimiter = ',')]
    repos: Vec<String>,
    #[command(flatten)]
    unlock: UnlockArgs,
    #[command(flatten)]
    stores: StoreArgs,
    /// Print one JSON document on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct BackupArgs {
    #[command(flatten)]
    tenant: TenantArgs,
    /// The host name recorded in the snapshot.
    #[arg(long)]
    host: Option<String>,
    #[command(flatten)]
    target: RepoTarget,
}

#[derive(Args, Debug)]
struct RestoreArgs {
    #[command(flatten)]
    tenant: TenantArgs,
    /// The snapshot to restore; the tenant's newest backup by default.
    #[arg(long)]
    snapshot: Option<String>,
    /// Replace what the database and the documents directory already hold.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    target: RepoTarget,
}

pub async fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match args.command {
        AgentCommand::Backup(args) => run_backup(args, &mut out).await,
        AgentCommand::Restore(args) => run_restore(args, &mut out).await,
        AgentCommand::WalPush(args) => run_wal_push(args).await,
        AgentCommand::WalFetch(args) => run_wal_fetch(args).await,
    }
}

async fn run_backup(args: BackupArgs, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let repos = open_all(&args.target.repos, &args.target.stores, &args.target.unlock).await?;
    let request = TenantBackup {
        tenant: args.tenant.tenant,
        db: DbUrl::parse(&args.tenant.db)?,
        documents: args.tenant.documents,
        host: args.host.unwrap_or_else(crate::repo::host_name),
        pg_bin: args.tenant.pg_bin,
    };
    let progress = Arc::new(Progress::default());
    let outcome = with_progress(&progress, args.target.json, backup::backup(repos, &request, progress.clone())).await?;
    let extra = json!({"tenant": request.tenant, "verification": outcome.recorded});
    let extra = extra.as_object().cloned().unwrap_or_default();
    report_copies(&outcome.copies, args.target.json, extra, out)
}

async fn run_restore(args: RestoreArgs, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let repos = open_all(&args.target.repos, &args.target.stores, &args.target.unlock).await?;
    let [repo] = <[_; 1]>::try_from(repos)
        .map_err(|r| anyhow::anyhow!("restore reads one repository; --repo was given {} times", r.len()))?;
    let request = TenantRestore {
        tenant: args.tenant.tenant,
        snapshot: args.snapshot,
        db: DbUrl::parse(&args.tenant.db)?,
        documents: args.tenant.documents,
        force: args.force,
        pg_bin: args.tenant.pg_bin,
    };
    let outcome = restore::restore(&repo, &request).await?;
    if args.target.json {
        writeln!(
            out,
            "{}",
            json!({
                "tenant": request.tenant,
                "snapshot": outcome.snapshot,
                "time": outcome.time,
                "verified": true,
                "verification": outcome.recorded,
                "documents": outcome.documents,
            })
        )?;
    } else {
        let invoices: i64 = outcome.recorded.queue.values().sum();
        writeln!(
            out,
            "tenant {} restored from snapshot {} ({}) and verified: {} tables, {} invoices, {} documents ({} files restored)",
            request.tenant,
            outcome.snapshot.short(),
            outcome.time,
            outcome.recorded.tables.len(),
            invoices,
            outcome.recorded.documents.count,
            outcome.documents,
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn run_wal_push(args: WalPushArgs) -> anyhow::Result<ExitCode> {
    // NB: every repository must hold the segment before PostgreSQL may recycle
    // it; a failure makes PostgreSQL retry the whole push later.
    for repo in open_all(&args.target.repos, &args.target.stores, &args.target.unlock).await? {
        wal::push(&repo, &args.tenant, &args.path).await?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn run_wal_fetch(args: WalFetchArgs) -> anyhow::Result<ExitCode> {
    let mut missing = Vec::new();
    for repo in open_all(&args.target.repos, &args.target.stores, &args.target.unlock).await? {
        match wal::fetch(&repo, &args.tenant, &args.name, &args.dest).await {
            Ok(()) => return Ok(ExitCode::SUCCESS),
            Err(e) => missing.push(e),
        }
    }
    // PostgreSQL asks for files past the end of the archive: that is how it
    // learns recovery is complete, so say it briefly.
    for e in &missing {
        eprintln!("fenice agent wal-fetch: {}", super::output::error_chain(e));
    }
    Ok(ExitCode::FAILURE)
}
