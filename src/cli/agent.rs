//! `fenice agent`: what the operator's Jobs run inside a site: tenant backup
//! and restore (WAL archiving and SdI reconciliation to follow).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::json;

use super::repo::{Index, StoreArgs, open_all, open_each, report_copies, with_progress};
use super::secrets::UnlockArgs;
use crate::app::AppConfig;
use crate::app::documents::Documents;
use crate::app::{reconcile, sdi};
use crate::repo::archiver::Progress;
use crate::stack::backup::{self, TenantBackup};
use crate::stack::pg::DbUrl;
use crate::stack::pitr::{self, PitrRestore};
use crate::stack::restore::{self, TenantRestore};
use crate::stack::restore_report;
use crate::stack::{promote, verify, wal, wal_archiver};

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
    /// Archive WAL files for every database of the machine: opens the
    /// repositories once and takes the files `wal-push --via SOCKET` hands it,
    /// a few at a time, until SIGTERM.
    WalArchiver(WalArchiverArgs),
    /// Fetch one archived WAL file from the first repository that has it:
    /// PostgreSQL's `restore_command = 'fenice agent wal-fetch %f %p'`.
    WalFetch(WalFetchArgs),
    /// Verify a tenant's recovered database (after `restore --pgdata` and a
    /// PostgreSQL started on it): waits until recovery has promoted it, brings
    /// back the documents of invoices issued after the backup, and checks
    /// numbering, documents, and that nothing the backup recorded is gone.
    Verify(VerifyArgs),
    /// After a restore, before the app serves: import what SdI already holds
    /// for the tenant but the restored data lacks, so numbering continues after
    /// it and nothing is sent twice.
    ReconcileSdi(ReconcileArgs),
}

#[derive(Args, Debug)]
struct ReconcileArgs {
    #[arg(long, env = "FENICE_TENANT")]
    tenant: String,
    #[arg(long, env = "FENICE_DB_URL", hide_env_values = true, help = DB_HELP)]
    db: String,
    /// The tenant's invoice documents directory.
    #[arg(long, env = "FENICE_DOCUMENTS")]
    documents: PathBuf,
    /// The SdI endpoint the tenant transmits to.
    #[arg(long, env = "FENICE_SDI_ENDPOINT")]
    sdi_endpoint: String,
    /// Print one JSON document on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct VerifyArgs {
    #[command(flatten)]
    tenant: TenantArgs,
    #[arg(long, env = "FENICE_DB_URL", hide_env_values = true, help = DB_HELP)]
    db: String,
    /// The directory the invoice documents are written to (out of the recovered database).
    #[arg(long, env = "FENICE_DOCUMENTS")]
    documents: PathBuf,
    /// The snapshot the restore started from; the tenant's newest backup by default.
    #[arg(long)]
    snapshot: Option<String>,
    /// How long to wait for recovery to finish, in seconds.
    #[arg(long, default_value_t = 600)]
    wait_seconds: u64,
    /// A failover of a warm standby: let it replay up to the newest archived
    /// segment (at most --catch-up-seconds), promote it, then verify.
    #[arg(long)]
    promote: bool,
    /// With --promote: how long the standby may take to replay the newest
    /// archived segment, and then the new timeline's history file to reach the archive.
    #[arg(long, default_value_t = 120, requires = "promote")]
    catch_up_seconds: u64,
    /// Also write the outcome as JSON to this file, e.g. a container's
    /// /dev/termination-log: verified or not, what differs, or why it failed,
    /// and when the newest restored invoice was written.
    #[arg(long)]
    result_file: Option<PathBuf>,
    #[command(flatten)]
    target: RepoTarget,
}

#[derive(Args, Debug)]
struct WalPushArgs {
    /// The WAL file (PostgreSQL's %p, relative to the data directory it runs in).
    path: PathBuf,
    #[arg(long, env = "FENICE_TENANT")]
    tenant: String,
    /// Hand the file to the `wal-archiver` listening at this Unix socket
    /// instead of opening the repositories here.
    #[arg(long, env = "FENICE_WAL_ARCHIVER")]
    via: Option<PathBuf>,
    #[command(flatten)]
    target: RepoTarget,
}

#[derive(Args, Debug)]
struct WalArchiverArgs {
    /// The Unix socket to take WAL files on; made accessible to its owner
    /// only (give it to the database's user).
    #[arg(long)]
    socket: PathBuf,
    /// How many WAL files are archived at once; the others wait their turn.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    parallelism: u16,
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
    /// Also fetch this many of the following segments into --spool, where the
    /// next calls find them (recovery asks for one segment after the other).
    #[arg(long, default_value_t = 0, requires = "spool")]
    prefetch: usize,
    /// The directory prefetched segments wait in (relative to the data
    /// directory, where PostgreSQL runs restore_command).
    #[arg(long)]
    spool: Option<PathBuf>,
    #[command(flatten)]
    target: RepoTarget,
}

/// Which tenant, and where its data lives.
#[derive(Args, Debug)]
struct TenantArgs {
    /// The tenant's name, as its snapshots record it.
    #[arg(long, env = "FENICE_TENANT")]
    tenant: String,
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

// One help text for the three commands that take the database URL.
const DB_HELP: &str = "The tenant's database, postgres://USER:PASSWORD@HOST:PORT/DATABASE (the password never shows in output, errors or command lines)";

#[derive(Args, Debug)]
struct BackupArgs {
    #[command(flatten)]
    tenant: TenantArgs,
    #[arg(long, env = "FENICE_DB_URL", hide_env_values = true, help = DB_HELP)]
    db: String,
    /// Also take a physical base backup (pg_basebackup), the starting point of
    /// point-in-time recovery from the WAL that `wal-push` archives.
    #[arg(long, env = "FENICE_PHYSICAL")]
    physical: bool,
    /// The host name recorded in the snapshot.
    #[arg(long)]
    host: Option<String>,
    /// A tag recorded in the snapshot besides `tenant-backup` (repeatable).
    #[arg(long = "tag")]
    tags: Vec<String>,
    #[command(flatten)]
    target: RepoTarget,
}

#[derive(Args, Debug)]
struct RestoreArgs {
    #[command(flatten)]
    tenant: TenantArgs,
    /// Logical restore: the database to restore the dump into (created if missing).
    #[arg(long, env = "FENICE_DB_URL", hide_env_values = true, required_unless_present = "pgdata")]
    db: Option<String>,
    /// Logical restore: the directory the invoice documents are written to
    /// (out of the restored database).
    #[arg(long, env = "FENICE_DOCUMENTS", required_unless_present = "pgdata")]
    documents: Option<PathBuf>,
    /// Point-in-time recovery: the data directory to prepare from the base
    /// backup, set to replay the archived WAL when PostgreSQL starts on it.
    #[arg(long, conflicts_with_all = ["db", "documents"])]
    pgdata: Option<PathBuf>,
    /// With --pgdata: replay up to this time (RFC 3339); to the end of the archive otherwise.
    #[arg(long, requires = "pgdata")]
    target_time: Option<jiff::Timestamp>,
    /// With --pgdata: prepare a warm standby, which replays the archive as it
    /// grows and waits to be promoted (`pg_ctl promote`), instead of a recovery.
    #[arg(long, requires = "pgdata", conflicts_with = "target_time")]
    standby: bool,
    /// With --pgdata: succeed without touching a data directory that already
    /// holds a database (PG_VERSION): a warm standby's init container, run
    /// again on every pod start, leaves a standby replaying, or one promoted since, as it is.
    #[arg(long, requires = "pgdata")]
    keep_initialised: bool,
    /// With --keep-initialised and --standby: a data directory holding a
    /// primary whose timeline a later promotion replaced (the archive holds a
    /// newer history file) is moved aside, kept whole beside it, and a fresh
    /// standby made in its place: a failover's old primary, or the site a
    /// failback left, becomes the tenant's standby again.
    #[arg(long, requires_all = ["keep_initialised", "standby"])]
    set_aside_diverged: bool,
    /// The snapshot to restore; the tenant's newest backup (before --target-time) by default.
    #[arg(long)]
    snapshot: Option<String>,
    /// Replace what the database and the documents directory already hold.
    #[arg(long)]
    force: bool,
    /// Logical restore: also write the outcome (verified or not, what
    /// differs, or why it failed) as JSON to this file, e.g. a container's
    /// /dev/termination-log.
    #[arg(long, conflicts_with = "pgdata")]
    result_file: Option<PathBuf>,
    /// A drill: once restored and verified, serve the tenant's app on the
    /// restored data with its SdI channel pointed at this test endpoint (never
    /// a production one), issue one invoice, which must get the number after
    /// the backup's last, and wait until it reaches the endpoint.
    #[arg(long, conflicts_with = "pgdata", requires_all = ["vat", "company"])]
    drill_endpoint: Option<String>,
    /// With --drill-endpoint: the tenant's partita IVA, which names its invoice files.
    #[arg(long)]
    vat: Option<String>,
    /// With --drill-endpoint: the tenant's company name, as invoices show it.
    #[arg(long)]
    company: Option<String>,
    #[command(flatten)]
    target: RepoTarget,
}

pub async fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match args.command {
        AgentCommand::Backup(args) => run_backup(args, &mut out).await,
        AgentCommand::Restore(args) => run_restore(args, &mut out).await,
        AgentCommand::WalPush(args) => run_wal_push(args).await,
        AgentCommand::WalArchiver(args) => run_wal_archiver(args).await,
        AgentCommand::WalFetch(args) => run_wal_fetch(args).await,
        AgentCommand::Verify(args) => run_verify(args, &mut out).await,
        AgentCommand::ReconcileSdi(args) => run_reconcile(args, &mut out).await,
    }
}

async fn run_backup(args: BackupArgs, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let repos = open_all(&args.target.repos, &args.target.stores, &args.target.unlock).await?;
    let request = TenantBackup {
        tenant: args.tenant.tenant,
        db: DbUrl::parse(&args.db)?,
        host: args.host.unwrap_or_else(crate::repo::host_name),
        pg_bin: args.tenant.pg_bin,
        physical: args.physical,
        tags: args.tags,
    };
    let progress = Arc::new(Progress::default());
    let outcome = with_progress(&progress, args.target.json, backup::backup(repos, &request, progress.clone())).await?;
    let extra = json!({"tenant": request.tenant, "verification": outcome.recorded});
    let extra = extra.as_object().cloned().unwrap_or_default();
    report_copies(&outcome.copies, args.target.json, extra, out)
}

/// The one repository a command reads.
async fn open_one(target: &RepoTarget) -> anyhow::Result<Arc<crate::repo::repository::Repository>> {
    Ok(Arc::new(super::repo::open_one(&target.repos, &target.stores, &target.unlock).await?))
}

async fn run_restore(args: RestoreArgs, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let initialised = args.pgdata.as_ref().is_some_and(|p| args.keep_initialised && p.join("PG_VERSION").exists());
    // NB: before opening the repository: a standby whose repository is unreachable still starts.
    if let Some(pgdata) =
        args.pgdata.as_ref().filter(|p| initialised && (!args.set_aside_diverged || p.join("standby.signal").exists()))
    {
        writeln!(out, "{} already holds a database: left as it is", pgdata.display())?;
        return Ok(ExitCode::SUCCESS);
    }
    let repo = match open_one(&args.target).await {
        Ok(repo) => repo,
        Err(e) => {
            let report = restore_report::Report::failed(&args.tenant.tenant, &format!("{e:#}"));
            write_result(args.result_file.as_deref(), &report)?;
            return Err(e);
        }
    };
    if let Some(pgdata) = args.pgdata {
        if initialised && args.set_aside_diverged {
            match pitr::set_aside_if_diverged(&repo, &args.tenant.tenant, &pgdata).await? {
                pitr::DataDir::SetAside { timeline, newest, to } => writeln!(
                    out,
                    "{} held a primary of timeline {timeline}, which timeline {newest} replaced: set aside as {} \
                     (kept whole; remove it once nothing in it is wanted); a fresh standby is made",
                    pgdata.display(),
                    to.display()
                )?,
                found => {
                    writeln!(
                        out,
                        "{} holds the tenant's newest database ({found:?}): left as it is",
                        pgdata.display()
                    )?;
                    return Ok(ExitCode::SUCCESS);
                }
            }
        }
        let request = PitrRestore {
            tenant: args.tenant.tenant,
            repository: args.target.repos[0].clone(),
            target_time: args.target_time,
            snapshot: args.snapshot,
            pgdata,
            force: args.force,
            fenice: std::env::current_exe().context("finding the fenice program for restore_command")?,
            standby: args.standby,
        };
        let prepared = pitr::prepare(&repo, &request).await?;
        let target = match (request.standby, request.target_time) {
            (true, _) => "the end of the archive as it grows, until promoted (warm standby)".to_string(),
            (false, Some(time)) => time.to_string(),
            (false, None) => "the end of the archive".to_string(),
        };
        if args.target.json {
            let report = json!({
                "tenant": request.tenant,
                "snapshot": prepared.snapshot,
                "time": prepared.time,
                "pgdata": request.pgdata,
                "target": target,
            });
            writeln!(out, "{report}")?;
        } else {
            writeln!(
                out,
                "tenant {} prepared in {} from base backup {} ({}); start PostgreSQL on it to replay WAL to {}, \
                 then run `fenice agent verify --snapshot {}`",
                request.tenant,
                request.pgdata.display(),
                prepared.snapshot.short(),
                prepared.time,
                target,
                prepared.snapshot.short(),
            )?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let db = args.db.context("--db or --pgdata is needed")?;
    let request = TenantRestore {
        tenant: args.tenant.tenant,
        snapshot: args.snapshot,
        db: DbUrl::parse(&db)?,
        documents: args.documents.context("--documents is needed")?,
        force: args.force,
        pg_bin: args.tenant.pg_bin,
    };
    let result = restore::restore(&repo, &request).await;
    let mut report = restore_report::Report::of(&request.tenant, &result);
    let drill = match (&result, args.drill_endpoint, args.vat, args.company) {
        (Ok(outcome), Some(endpoint), Some(vat), Some(company)) => {
            let config = AppConfig::new(&request.tenant, &vat, &company, &db, &request.documents);
            let sent =
                crate::drill::test_invoice::serve_and_send(config, &outcome.recorded.last_numbers, &endpoint).await;
            match &sent {
                Ok(sent) => report.test_invoice = Some(sent.clone()),
                Err(why) => report.serve_error = Some(why.clone()),
            }
            Some(sent)
        }
        _ => None,
    };
    write_result(args.result_file.as_deref(), &report)?;
    let outcome = result?;
    if let Some(Err(why)) = drill {
        anyhow::bail!("tenant {} restored and verified, but its copy did not serve: {why}", request.tenant);
    }
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

/// Writes a restore's report where `--result-file` says, if it says.
fn write_result(path: Option<&std::path::Path>, report: &restore_report::Report) -> anyhow::Result<()> {
    if let Some(path) = path {
        std::fs::write(path, report.message()).with_context(|| format!("writing the result to {}", path.display()))?;
    }
    Ok(())
}

async fn run_verify(args: VerifyArgs, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let tenant = args.tenant.tenant.clone();
    let result = verify_recovered(&args).await;
    let report = match &result {
        Ok(v) => restore_report::Report {
            tenant: tenant.clone(),
            snapshot: Some(v.snapshot.to_string()),
            time: Some(v.time.clone()),
            verified: true,
            documents: Some(v.rebuilt),
            last_write: v.last_write.map(|t| t.to_string()),
            ..Default::default()
        },
        Err(e) => match e.downcast_ref::<crate::stack::Error>() {
            Some(crate::stack::Error::Mismatch { snapshot, differences, .. }) => restore_report::Report {
                tenant: tenant.clone(),
                snapshot: Some(snapshot.clone()),
                mismatches: differences.iter().map(ToString::to_string).collect(),
                ..Default::default()
            },
            _ => restore_report::Report::failed(&tenant, &format!("{e:#}")),
        },
    };
    write_result(args.result_file.as_deref(), &report)?;
    let verified = result?;
    if args.target.json {
        let report = json!({
            "tenant": tenant,
            "snapshot": verified.snapshot,
            "verified": true,
            "documents_rebuilt": verified.rebuilt,
            "state": verified.restored,
            "last_write": verified.last_write,
        });
        writeln!(out, "{report}")?;
    } else {
        let invoices: i64 = verified.restored.queue.values().sum();
        writeln!(
            out,
            "tenant {tenant} verified: {invoices} invoices, numbering without gaps, every document present ({} rebuilt from the database)",
            verified.rebuilt,
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// What [`verify_recovered`] found.
struct Verified {
    snapshot: crate::repo::id::Id,
    time: String,
    rebuilt: u64,
    restored: verify::Record,
    last_write: Option<jiff::Timestamp>,
}

/// Promotes the standby if asked, waits until recovery ended, and checks the
/// database against what the backup recorded.
async fn verify_recovered(args: &VerifyArgs) -> anyhow::Result<Verified> {
    let tenant = &args.tenant.tenant;
    let repo = open_one(&args.target).await?;
    let (snapshot, manifest, recorded) = restore::find(&repo, tenant, args.snapshot.as_deref()).await?;
    let time = manifest.time;
    let db = DbUrl::parse(&args.db)?;
    if args.promote {
        let client = db.connect().await?;
        let catch_up = Duration::from_secs(args.catch_up_seconds);
        if let promote::Promoted::Behind { newest, replayed } =
            promote::promote(&repo, tenant, &client, catch_up).await?
        {
            tracing::warn!(tenant, newest, replayed = ?replayed, "the standby had not replayed the newest archived segment: promoted anyway");
        }
    }
    let client = verify::wait_until_promoted(&db, Duration::from_secs(args.wait_seconds)).await?;
    if args.promote {
        let within = Duration::from_secs(args.catch_up_seconds);
        promote::wait_until_timeline_archived(&repo, tenant, &client, within).await?;
    }
    let (rebuilt, mut differences) = verify::write_documents(&client, &args.documents).await?;
    let (restored, more) = verify::check_recovered(&client, &recorded).await?;
    differences.extend(more);
    if !differences.is_empty() {
        return Err(
            crate::stack::Error::Mismatch { tenant: tenant.clone(), snapshot: snapshot.short(), differences }.into()
        );
    }
    let last_write = verify::last_write(&client).await?;
    Ok(Verified { snapshot, time, rebuilt, restored, last_write })
}

async fn run_wal_push(args: WalPushArgs) -> anyhow::Result<ExitCode> {
    if let Some(socket) = &args.via {
        wal_archiver::push_via(socket, &args.tenant, &args.path).await?;
        return Ok(ExitCode::SUCCESS);
    }
    // NB: every repository must hold the segment before PostgreSQL may recycle
    // it; a failure makes PostgreSQL retry the whole push later.
    let repos = open_each(&args.target.repos, &args.target.stores, &args.target.unlock, Index::Skip).await?;
    futures::future::try_join_all(repos.iter().map(|repo| wal::push(repo, &args.tenant, &args.path))).await?;
    Ok(ExitCode::SUCCESS)
}

async fn run_wal_archiver(args: WalArchiverArgs) -> anyhow::Result<ExitCode> {
    let repos = open_each(&args.target.repos, &args.target.stores, &args.target.unlock, Index::Skip).await?;
    let listener = wal_archiver::listen(&args.socket)?;
    let stop = super::serving::shutdown_signal()?;
    eprintln!(
        "fenice agent wal-archiver: archiving into {} repositories the WAL files handed over at {}",
        repos.len(),
        args.socket.display()
    );
    tokio::select! {
        never = wal_archiver::serve(listener, repos, usize::from(args.parallelism)) => match never {},
        () = stop => {}
    }
    let _ = std::fs::remove_file(&args.socket);
    Ok(ExitCode::SUCCESS)
}

async fn run_wal_fetch(args: WalFetchArgs) -> anyhow::Result<ExitCode> {
    // NB: recovery asks for one segment after the other, each in a process of
    // its own: a prefetched one must not cost opening the repositories again,
    // or a warm standby falls behind an archive that grows every second.
    if let Some(spool) = &args.spool
        && wal::take_spooled(&args.name, &args.dest, spool).await
    {
        return Ok(ExitCode::SUCCESS);
    }
    let mut missing = Vec::new();
    for repo in open_each(&args.target.repos, &args.target.stores, &args.target.unlock, Index::Skip).await? {
        let fetched = match &args.spool {
            Some(spool) => wal::fetch_ahead(&repo, &args.tenant, &args.name, &args.dest, spool, args.prefetch).await,
            None => wal::fetch(&repo, &args.tenant, &args.name, &args.dest).await,
        };
        match fetched {
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

async fn run_reconcile(args: ReconcileArgs, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let db = DbUrl::parse(&args.db)?;
    let mut client = db.connect().await?;
    let documents = Documents::open(&args.documents)?;
    let sdi = sdi::client::Client::new(&args.sdi_endpoint)?;
    let done = reconcile::reconcile(&mut client, &documents, &sdi, &args.tenant).await?;
    if args.json {
        writeln!(out, "{}", json!({"tenant": args.tenant, "reconciled": done}))?;
    } else {
        writeln!(
            out,
            "tenant {}: {} transmissions at SdI; {} invoices imported, {} pending ones recorded as sent, {} receipts added",
            args.tenant,
            done.transmissions,
            done.imported.len(),
            done.adopted.len(),
            done.receipts_added
        )?;
    }
    if done.gaps.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    for (series, numbers) in &done.gaps {
        let numbers: Vec<String> = numbers.iter().map(ToString::to_string).collect();
        eprintln!(
            "fenice agent reconcile-sdi: series {series}: no invoice holds number(s) {}: they were issued after the \
             restore point and never reached SdI; issue them again",
            numbers.join(", ")
        );
    }
    Ok(ExitCode::from(super::repo::EXIT_PARTIAL))
}
