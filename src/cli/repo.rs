//! `fenice repo`: the backup repository by hand, for everyday use and for
//! break-glass recovery with only this binary and a key.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::json;

use super::output::{ProgressLine, bar, error_chain, size, table};
use super::secrets::{UnlockArgs, new_password, password_from};
use crate::repo::Counted;
use crate::repo::archiver::{self, BackupOptions, CopyResult, Progress, Source};
use crate::repo::check::check_with_progress;
use crate::repo::copy;
use crate::repo::forget::{self, KeepPolicy, decide};
use crate::repo::id::Id;
use crate::repo::keyfile::{Holder, KdfParams, KeyFile, Recipient, RecoveryKey};
use crate::repo::prune;
use crate::repo::repository::{Config, Repository, Unlock};
use crate::repo::restorer::{self, load_tree};
use crate::repo::tree::NodeType;
use crate::store::open::StoreOptions;
use crate::store::retry::RetryPolicy;
use crate::store::{self, Location, ObjectStore};

/// Exit code: finished, but some files or copies were not saved or restored.
pub const EXIT_PARTIAL: u8 = 3;
/// Exit code: there is no repository at the location.
pub const EXIT_NO_REPOSITORY: u8 = 10;
/// Exit code: the password or recovery key opens no key of the repository.
pub const EXIT_WRONG_KEY: u8 = 12;

#[derive(Args, Debug)]
pub struct RepoArgs {
    /// Repository location: a path or file://…, s3://bucket/prefix, az://account/container/prefix.
    /// `backup` takes it several times to write one snapshot to several repositories.
    #[arg(long = "repo", env = "FENICE_REPOSITORY", value_delimiter = ',', global = true)]
    pub repos: Vec<String>,
    #[command(flatten)]
    pub unlock: UnlockArgs,
    #[command(flatten)]
    pub stores: StoreArgs,
    /// Print one JSON document on stdout instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: RepoCommand,
}

/// How to reach S3 and Azure Blob stores. Credentials come from the standard
/// AWS chain, AZURE_STORAGE_SAS_URL, AZURE_STORAGE_KEY or Entra ID, never from flags.
#[derive(Args, Debug, Clone)]
pub struct StoreArgs {
    /// S3-compatible endpoint, e.g. https://s3.eu-south-mil.io.cloud.ovh.net.
    #[arg(long, env = "AWS_ENDPOINT_URL", global = true)]
    pub s3_endpoint: Option<String>,
    #[arg(long, env = "AWS_REGION", global = true)]
    pub s3_region: Option<String>,
    /// Address buckets as endpoint/bucket (most S3-compatible services need it).
    #[arg(long, env = "FENICE_S3_PATH_STYLE", global = true)]
    pub s3_path_style: bool,
    /// Azure Blob endpoint; https://<account>.blob.core.windows.net by default.
    #[arg(long, env = "FENICE_AZURE_ENDPOINT", global = true)]
    pub azure_endpoint: Option<String>,
    #[command(flatten)]
    pub retry: StoreRetryArgs,
}

/// How long a request to S3 or Azure Blob may take, and how often it is made.
#[derive(Args, Debug, Clone)]
pub struct StoreRetryArgs {
    /// Give up on one request to S3 or Azure Blob after this many seconds
    /// (it is then tried again, up to --store-attempts times).
    #[arg(long, env = "FENICE_STORE_TIMEOUT", global = true, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub store_timeout: u64,
    /// How many times a request that failed for a passing reason (no answer,
    /// throttled, a 5xx) is made before the command gives up.
    #[arg(long, env = "FENICE_STORE_ATTEMPTS", global = true, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub store_attempts: u32,
}

impl StoreRetryArgs {
    pub fn policy(&self) -> RetryPolicy {
        RetryPolicy {
            attempts: self.store_attempts,
            attempt_timeout: Duration::from_secs(self.store_timeout),
            ..RetryPolicy::default()
        }
    }
}

impl StoreArgs {
    fn options(&self, retention_days: Option<u32>) -> StoreOptions {
        StoreOptions {
            s3_endpoint: self.s3_endpoint.clone(),
            s3_region: self.s3_region.clone(),
            s3_path_style: self.s3_path_style,
            azure_endpoint: self.azure_endpoint.clone(),
            immutability: retention_days.map(|d| Duration::from_secs(u64::from(d) * 86_400)),
            retry: Some(self.retry.policy()),
        }
    }

    /// Opens the store, locking what it writes as the repository's config says.
    pub async fn open(&self, location: &str) -> anyhow::Result<Arc<dyn ObjectStore>> {
        Ok(self.open_reading_config(location).await?.0)
    }

    /// As [`open`](Self::open), with the config it read there (or why not).
    async fn open_reading_config(
        &self,
        location: &str,
    ) -> anyhow::Result<(Arc<dyn ObjectStore>, crate::repo::repository::Result<Config>)> {
        let location: Location = location.parse()?;
        let store = store::open::open(&location, &self.options(None)).await?;
        let config = Repository::read_config(store.as_ref()).await;
        match &config {
            Ok(Config { retention_days: Some(days), .. }) => {
                Ok((store::open::open(&location, &self.options(Some(*days))).await?, config))
            }
            _ => Ok((store, config)),
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum RepoCommand {
    /// Create a repository, its master key wrapped for the password.
    Init {
        /// Lock every object at the store for this many days (S3 Object Lock in
        /// COMPLIANCE mode, Azure version-level immutability): not even this
        /// repository's own credentials can delete a backup before then.
        #[arg(long)]
        retention_days: Option<u32>,
    },
    /// Back up paths, or standard input, into one snapshot per repository.
    Backup(BackupArgs),
    /// List snapshots.
    Snapshots {
        /// Only this tenant's snapshots.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// List the files of a snapshot.
    Ls { snapshot: String },
    /// Restore a snapshot into a directory, or one of its files to stdout.
    Restore(RestoreArgs),
    /// Check the repository's structure, and with --read-data all of its data.
    Check {
        #[arg(long)]
        read_data: bool,
    },
    /// Copy snapshots into another repository, re-encrypted for its keys; only
    /// blobs it lacks are uploaded. All snapshots when none are named.
    Copy {
        /// The destination repository.
        #[arg(long)]
        to: String,
        /// The destination's password file; otherwise FENICE_TO_PASSWORD or a prompt.
        #[arg(long, env = "FENICE_TO_PASSWORD_FILE")]
        to_password_file: Option<PathBuf>,
        snapshots: Vec<String>,
    },
    /// Forget the snapshots a retention policy does not keep. Data stays until
    /// `prune`; snapshots under store-enforced retention stay until it ends.
    Forget(ForgetArgs),
    /// Remove data no snapshot needs. Run it with a separate credential that the
    /// operator does not hold; it never removes what the store's retention holds.
    Prune {
        /// Only say what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
    /// Holders of the master key: passwords and offline recovery keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Sizes and counts.
    Stats,
}

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// Files and directories to back up.
    pub paths: Vec<PathBuf>,
    /// Read the data from standard input instead (streamed, constant memory).
    #[arg(long, conflicts_with = "paths", requires = "stdin_name")]
    pub stdin: bool,
    /// The file name standard input is stored under.
    #[arg(long)]
    pub stdin_name: Option<String>,
    #[arg(long)]
    pub tenant: Option<String>,
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Host name to record; this machine's by default.
    #[arg(long)]
    pub host: Option<String>,
    /// Read every file, even those the previous snapshot of the same paths shows
    /// unchanged (same size and modification time).
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// Snapshot id, unique id prefix, or `latest`.
    pub snapshot: String,
    /// Directory to restore into.
    #[arg(long, required_unless_present = "to_stdout")]
    pub target: Option<PathBuf>,
    /// Write this one file of the snapshot to standard output.
    #[arg(long, value_name = "PATH")]
    pub to_stdout: Option<String>,
}

#[derive(Args, Debug)]
pub struct ForgetArgs {
    #[arg(long, default_value_t = 0)]
    pub keep_last: u32,
    #[arg(long, default_value_t = 0)]
    pub keep_hourly: u32,
    #[arg(long, default_value_t = 0)]
    pub keep_daily: u32,
    #[arg(long, default_value_t = 0)]
    pub keep_weekly: u32,
    #[arg(long, default_value_t = 0)]
    pub keep_monthly: u32,
    #[arg(long, default_value_t = 0)]
    pub keep_yearly: u32,
    /// Time zone that days, weeks and months are counted in.
    #[arg(long, default_value = "UTC")]
    pub time_zone: String,
    /// Only say what would be forgotten.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// List the key files: who holds the master key.
    List,
    /// Wrap the master key for a new password (FENICE_NEW_PASSWORD, --new-password-file
    /// or a prompt), or for a recovery key's public half.
    Add {
        #[arg(long)]
        new_password_file: Option<PathBuf>,
        /// A recipient printed by `generate-recovery` (fenice-recipient-1:…).
        #[arg(long)]
        recipient: Option<String>,
        #[arg(long, default_value = "added")]
        label: String,
    },
    /// Remove a key file by id (prefix); never the last one.
    Remove { id: String },
    /// Make an offline recovery key: prints the secret (to lock away) and its
    /// recipient (for `key add --recipient`). Needs no repository.
    GenerateRecovery,
}

fn host_name(given: Option<&String>) -> String {
    given.cloned().unwrap_or_else(crate::repo::host_name)
}

fn one_repo(args: &RepoArgs) -> anyhow::Result<&str> {
    the_one(&args.repos)
}

/// The one location of a command that works on one repository.
fn the_one(repos: &[String]) -> anyhow::Result<&str> {
    match repos {
        [one] => Ok(one),
        [] => bail!("no repository given: pass --repo or set FENICE_REPOSITORY"),
        _ => bail!("this command works on one repository; --repo was given {} times", repos.len()),
    }
}

async fn open(args: &RepoArgs) -> anyhow::Result<Repository> {
    open_one(&args.repos, &args.stores, &args.unlock).await
}

/// Opens the one repository in `repos`, refusing none or several before unlocking anything.
pub(super) async fn open_one(repos: &[String], stores: &StoreArgs, unlock: &UnlockArgs) -> anyhow::Result<Repository> {
    let store = stores.open(the_one(repos)?).await?;
    Ok(Repository::open(store, &unlock.unlock()?).await?)
}

pub async fn run(args: RepoArgs) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match &args.command {
        RepoCommand::Init { retention_days } => {
            let location = one_repo(&args)?;
            let store = store::open::create(&location.parse()?, &args.stores.options(*retention_days)).await?;
            let password = args.unlock.password("new repository password: ")?;
            let repo = Repository::init(store, &password, KdfParams::default(), *retention_days).await?;
            if args.json {
                writeln!(out, "{}", json!({"repository": repo.describe(), "id": repo.config().id}))?;
            } else {
                writeln!(out, "created repository {} at {}", repo.config().id, repo.describe())?;
            }
        }
        RepoCommand::Backup(backup) => return run_backup(&args, backup, &mut out).await,
        RepoCommand::Snapshots { tenant } => {
            let repo = open(&args).await?;
            let snapshots: Vec<_> =
                repo.snapshots().await?.into_iter().filter(|(_, s)| tenant.is_none() || s.tenant == *tenant).collect();
            if args.json {
                let list: Vec<_> = snapshots.iter().map(|(id, s)| json!({"id": id, "snapshot": s})).collect();
                writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
            } else {
                let rows: Vec<Vec<String>> = snapshots
                    .iter()
                    .map(|(id, s)| {
                        vec![
                            id.short(),
                            s.time.chars().take(19).collect(),
                            s.host.clone(),
                            s.tenant.clone().unwrap_or_default(),
                            s.tags.join(","),
                            size(s.totals.bytes),
                            s.paths.join(" "),
                        ]
                    })
                    .collect();
                table(&mut out, &["ID", "Time", "Host", "Tenant", "Tags", "Size", "Paths"], &rows)?;
            }
        }
        RepoCommand::Ls { snapshot } => {
            let repo = open(&args).await?;
            let (_, snap) = repo.find_snapshot(snapshot).await?;
            let mut entries = Vec::new();
            let mut stack = vec![(snap.tree, String::new())];
            while let Some((tree, prefix)) = stack.pop() {
                for node in load_tree(&repo, &tree).await?.nodes {
                    let path = format!("{prefix}/{}", node.name);
                    if let (NodeType::Dir, Some(sub)) = (node.node_type, node.subtree) {
                        stack.push((sub, path.clone()));
                    }
                    entries.push((path, node));
                }
            }
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            if args.json {
                let list: Vec<_> = entries
                    .iter()
                    .map(|(p, n)| json!({"path": p, "type": n.node_type, "size": n.size, "mode": n.mode, "mtime": n.mtime}))
                    .collect();
                writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
            } else {
                let rows: Vec<Vec<String>> = entries
                    .iter()
                    .map(|(p, n)| {
                        vec![format!("{:o}", n.mode), size(n.size), n.mtime.chars().take(19).collect(), p.clone()]
                    })
                    .collect();
                table(&mut out, &["Mode", "Size", "Modified", "Path"], &rows)?;
            }
        }
        RepoCommand::Restore(restore) => {
            let repo = open(&args).await?;
            let (id, snap) = repo.find_snapshot(&restore.snapshot).await?;
            if let Some(path) = &restore.to_stdout {
                restorer::write_file(&repo, &snap.tree, path, &mut out).await?;
                out.flush()?;
                return Ok(ExitCode::SUCCESS);
            }
            let target = restore.target.as_ref().context("--target is required")?;
            let progress = Arc::new(Counted::default());
            let restoring = restorer::restore_with_progress(&repo, &snap.tree, target, progress.clone());
            let report = showing(args.json, restoring, counted(progress)).await?;
            if args.json {
                let damaged: Vec<_> = report.damaged.iter().map(|(p, e)| json!({"path": p, "error": e})).collect();
                let doc = json!({"snapshot": id, "files": report.files, "dirs": report.dirs, "bytes": report.bytes, "damaged": damaged});
                writeln!(out, "{doc}")?;
            } else {
                writeln!(
                    out,
                    "restored snapshot {} to {}: {} files, {} dirs, {}",
                    id.short(),
                    target.display(),
                    report.files,
                    report.dirs,
                    size(report.bytes)
                )?;
                for (path, error) in &report.damaged {
                    eprintln!("not restored: {path}: {error}");
                }
            }
            for o in repo.overwritten() {
                eprintln!("warning: {}: written over: {o}", repo.describe());
            }
            if !report.damaged.is_empty() {
                return Ok(ExitCode::from(EXIT_PARTIAL));
            }
        }
        RepoCommand::Check { read_data } => {
            let repo = open(&args).await?;
            let progress = Arc::new(Counted::default());
            let checking = check_with_progress(&repo, *read_data, progress.clone());
            // NB: without --read-data there is nothing long to show.
            let report = showing(args.json || !*read_data, checking, counted(progress)).await?;
            if args.json {
                let damaged: Vec<_> = report
                    .damaged_packs
                    .iter()
                    .map(|d| json!({"pack": d.pack, "reason": d.reason, "files": d.files}))
                    .collect();
                let doc = json!({"ok": report.is_ok(), "snapshots": report.snapshots, "packs": report.packs,
                    "packsRead": report.packs_read, "unindexedPacks": report.unindexed_packs,
                    "errors": report.errors, "damagedPacks": damaged,
                    "overwritten": report.overwritten.iter().map(|o| json!({"key": o.key, "version": o.version}))
                        .collect::<Vec<_>>()});
                writeln!(out, "{doc}")?;
            } else {
                writeln!(
                    out,
                    "{} snapshots, {} packs ({} read), {} blobs referenced",
                    report.snapshots, report.packs, report.packs_read, report.blobs_referenced
                )?;
                if report.unindexed_packs > 0 {
                    writeln!(
                        out,
                        "{} packs from an interrupted backup; the next backup reuses them",
                        report.unindexed_packs
                    )?;
                }
                for e in &report.errors {
                    writeln!(out, "error: {e}")?;
                }
                for d in &report.damaged_packs {
                    writeln!(out, "damaged pack {}: {}", d.pack, d.reason)?;
                    for f in &d.files {
                        writeln!(out, "  affects {f}")?;
                    }
                }
                for o in &report.overwritten {
                    writeln!(out, "written over: {o}")?;
                }
                if !report.overwritten.is_empty() {
                    writeln!(
                        out,
                        "someone with write access to {} wrote over objects of this repository: the data still \
                         restores from the original versions, but find who wrote and revoke that access",
                        repo.describe()
                    )?;
                }
                writeln!(out, "{}", if report.is_ok() { "no errors" } else { "ERRORS FOUND" })?;
            }
            if !report.is_ok() {
                return Ok(ExitCode::FAILURE);
            }
        }
        RepoCommand::Key(key) => return run_key(&args, key, &mut out).await,
        RepoCommand::Copy { to, to_password_file, snapshots } => {
            let from = open(&args).await?;
            let password = password_from(to_password_file.as_ref(), "FENICE_TO_PASSWORD", "destination password: ")?;
            let dest = Repository::open(args.stores.open(to).await?, &Unlock::Passphrase(password)).await?;
            let chosen = if snapshots.is_empty() {
                from.snapshots().await?
            } else {
                let mut chosen = Vec::new();
                for spec in snapshots {
                    chosen.push(from.find_snapshot(spec).await?);
                }
                chosen
            };
            let mut copies = Vec::new();
            for (id, snapshot) in &chosen {
                let (new_id, added) = copy::copy_snapshot(&from, &dest, snapshot).await?;
                if !args.json {
                    writeln!(
                        out,
                        "snapshot {} copied to {} as {}: {} uploaded",
                        id.short(),
                        dest.describe(),
                        new_id.short(),
                        size(added)
                    )?;
                }
                copies.push(json!({"from": id, "to": new_id, "addedBytes": added}));
            }
            if args.json {
                writeln!(out, "{}", json!({"copies": copies}))?;
            }
        }
        RepoCommand::Forget(forget) => return run_forget(&args, forget, &mut out).await,
        RepoCommand::Prune { dry_run } => {
            let repo = open(&args).await?;
            let report = prune::prune(&repo, *dry_run).await?;
            if args.json {
                let doc = json!({"dryRun": dry_run, "packs": report.packs, "packsDeleted": report.packs_deleted,
                    "packsRepacked": report.packs_repacked, "packsHeld": report.packs_held,
                    "bytesFreed": report.bytes_freed, "indexObjectsReplaced": report.index_objects_replaced});
                writeln!(out, "{doc}")?;
            } else {
                let verb = if *dry_run { "would remove" } else { "removed" };
                writeln!(
                    out,
                    "{} packs: {verb} {}, repacked {}, {} held by the store's retention; {} freed",
                    report.packs,
                    report.packs_deleted,
                    report.packs_repacked,
                    report.packs_held,
                    size(report.bytes_freed)
                )?;
            }
        }
        RepoCommand::Stats => {
            let repo = open(&args).await?;
            let packs = repo.store().list("data/").await?;
            let stored: u64 = packs.iter().map(|m| m.size).sum();
            let snapshots = repo.snapshots().await?;
            let (data, trees) = repo.with_index(|i| {
                (i.blob_count(crate::repo::pack::BlobType::Data), i.blob_count(crate::repo::pack::BlobType::Tree))
            });
            if args.json {
                let doc = json!({"snapshots": snapshots.len(), "packs": packs.len(), "storedBytes": stored, "dataBlobs": data, "treeBlobs": trees});
                writeln!(out, "{doc}")?;
            } else {
                let rows = vec![
                    vec!["snapshots".into(), snapshots.len().to_string()],
                    vec!["packs".into(), packs.len().to_string()],
                    vec!["stored".into(), size(stored)],
                    vec!["data blobs".into(), data.to_string()],
                    vec!["tree blobs".into(), trees.to_string()],
                ];
                table(&mut out, &["What", "Value"], &rows)?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn run_backup(args: &RepoArgs, backup: &BackupArgs, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let repos = open_all(&args.repos, &args.stores, &args.unlock).await?;
    let source = if backup.stdin {
        let name = backup.stdin_name.clone().context("--stdin needs --stdin-name")?;
        Source::stream(name, Box::new(std::io::stdin()))
    } else {
        if backup.paths.is_empty() {
            bail!("nothing to back up: give paths, or --stdin with --stdin-name");
        }
        Source::Paths(backup.paths.clone())
    };
    let options = BackupOptions {
        force_read: backup.force,
        host: host_name(backup.host.as_ref()),
        tenant: backup.tenant.clone(),
        tags: backup.tags.clone(),
        annotations: Default::default(),
    };
    let progress = Arc::new(Progress::default());
    let results =
        with_progress(&progress, args.json, archiver::backup(repos, source, options, progress.clone())).await?;
    let special = progress.special_skipped.load(Ordering::Relaxed);
    if special > 0 {
        eprintln!("fenice repo backup: {special} sockets, FIFOs or devices skipped: they hold no data to back up");
    }
    report_copies(&results, args.json, serde_json::Map::new(), out)
}

/// Opens every repository in `locations` with one unlock.
pub(super) async fn open_all(
    locations: &[String],
    stores: &StoreArgs,
    unlock: &UnlockArgs,
) -> anyhow::Result<Vec<Arc<Repository>>> {
    open_each(locations, stores, unlock, Index::Load).await
}

/// Whether opening a repository loads its index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Index {
    Load,
    /// For work outside the index (the WAL archive).
    Skip,
}

/// Opens every repository of `locations`, unlocked with one key.
pub(super) async fn open_each(
    locations: &[String],
    stores: &StoreArgs,
    unlock: &UnlockArgs,
    index: Index,
) -> anyhow::Result<Vec<Arc<Repository>>> {
    if locations.is_empty() {
        bail!("no repository given: pass --repo or set FENICE_REPOSITORY");
    }
    let unlock = unlock.unlock()?;
    let mut repos = Vec::new();
    for location in locations {
        let (store, config) = stores.open_reading_config(location).await?;
        let repo = Repository::open_with_config(store, &unlock, config).await?;
        if index == Index::Load {
            repo.load_index().await?;
        }
        repos.push(Arc::new(repo));
    }
    Ok(repos)
}

/// Runs a backup while a progress line on stderr shows what it has read.
pub(super) async fn with_progress<T>(progress: &Arc<Progress>, quiet: bool, work: impl Future<Output = T>) -> T {
    let progress = progress.clone();
    showing(quiet, work, move || {
        let (files, read) = (progress.files.load(Ordering::Relaxed), progress.bytes_read.load(Ordering::Relaxed));
        format!("{files} files, {} read", size(read))
    })
    .await
}

/// A progress bar of `progress`.
fn counted(progress: Arc<Counted>) -> impl Fn() -> String + Send + Sync + 'static {
    move || bar(progress.done.load(Ordering::Relaxed), progress.total.load(Ordering::Relaxed))
}

/// Runs `work` while a progress line on stderr (on a terminal, unless
/// `quiet`) says what `line` says, four times a second.
async fn showing<T>(
    quiet: bool,
    work: impl Future<Output = T>,
    line: impl Fn() -> String + Send + Sync + 'static,
) -> T {
    let line = Arc::new(line);
    let ticker = {
        let (shown, line) = (ProgressLine::new(quiet), line.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                shown.show(&line());
            }
        })
    };
    let result = work.await;
    ticker.abort();
    // NB: the last state stays on the terminal: how much was done, also when it stopped short.
    ProgressLine::new(quiet).finish(&line());
    result
}

/// Prints one line (or JSON object) per repository a backup wrote to; the exit
/// code says whether all, some or none of the copies were saved. `extra` goes
/// into the JSON document beside the copies.
pub(super) fn report_copies(
    results: &[CopyResult],
    json: bool,
    mut extra: serde_json::Map<String, serde_json::Value>,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let failed = results.iter().filter(|r| r.result.is_err()).count();
    if json {
        let copies: Vec<_> = results
            .iter()
            .map(|r| match &r.result {
                Ok((id, s)) => json!({"repository": r.repository, "snapshot": id, "totals": s.totals}),
                Err(e) => json!({"repository": r.repository, "error": error_chain(e)}),
            })
            .collect();
        extra.insert("copies".into(), copies.into());
        writeln!(out, "{}", serde_json::Value::Object(extra))?;
    } else {
        for r in results {
            match &r.result {
                Ok((id, s)) => writeln!(
                    out,
                    "snapshot {} saved to {}: {} files, {} read, {} added",
                    id.short(),
                    r.repository,
                    s.totals.files,
                    size(s.totals.bytes),
                    size(s.totals.added_bytes)
                )?,
                Err(e) => {
                    // NB: most errors name the repository already.
                    let text = error_chain(e);
                    match text.starts_with(&r.repository) {
                        true => writeln!(out, "FAILED {text}")?,
                        false => writeln!(out, "FAILED {}: {text}", r.repository)?,
                    }
                }
            }
        }
    }
    Ok(match failed {
        0 => ExitCode::SUCCESS,
        n if n == results.len() => ExitCode::FAILURE,
        _ => ExitCode::from(EXIT_PARTIAL),
    })
}

async fn run_forget(args: &RepoArgs, forget: &ForgetArgs, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let policy = KeepPolicy {
        last: forget.keep_last,
        hourly: forget.keep_hourly,
        daily: forget.keep_daily,
        weekly: forget.keep_weekly,
        monthly: forget.keep_monthly,
        yearly: forget.keep_yearly,
    };
    if policy.is_empty() {
        bail!("give at least one --keep-* option: forget keeps nothing else");
    }
    let tz = jiff::tz::TimeZone::get(&forget.time_zone)
        .with_context(|| format!("unknown time zone {:?}; use an IANA name such as Europe/Rome", forget.time_zone))?;
    let repo = open(args).await?;
    let decisions = decide(&repo.snapshots().await?, &policy, &tz);
    let done = forget::apply(&repo, decisions, forget.dry_run).await?;
    let held = done.iter().filter(|(_, o)| *o == forget::Outcome::Held).count();
    let rows: Vec<Vec<String>> = done
        .iter()
        .map(|(d, o)| vec![d.id.short(), d.group.clone(), d.time.chars().take(19).collect(), o.to_string()])
        .collect();
    let decisions: Vec<_> = done.into_iter().map(|(d, _)| d).collect();
    if args.json {
        let list: Vec<_> = decisions
            .iter()
            .zip(&rows)
            .map(|(d, r)| json!({"id": d.id, "group": d.group, "time": d.time, "keep": d.reasons, "outcome": r[3]}))
            .collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
    } else {
        table(out, &["ID", "Group", "Time", "Outcome"], &rows)?;
    }
    Ok(if held > 0 { ExitCode::from(EXIT_PARTIAL) } else { ExitCode::SUCCESS })
}

async fn run_key(args: &RepoArgs, key: &KeyCommand, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    match key {
        KeyCommand::GenerateRecovery => {
            let recovery = RecoveryKey::generate();
            if args.json {
                let doc =
                    json!({"recoveryKey": recovery.to_text().as_str(), "recipient": recovery.recipient().to_string()});
                writeln!(out, "{doc}")?;
            } else {
                writeln!(out, "# Offline recovery key: print it, lock it away, and delete this output.")?;
                writeln!(out, "{}", recovery.to_text().as_str())?;
                writeln!(out, "# Recipient, for `fenice repo key add --recipient`:")?;
                writeln!(out, "{}", recovery.recipient())?;
            }
        }
        KeyCommand::List => {
            let location = one_repo(args)?;
            let store = args.stores.open(location).await?;
            Repository::read_config(store.as_ref()).await?;
            let files = Repository::key_files(&store).await?;
            let describe = |f: &KeyFile| match &f.holder {
                Holder::Passphrase { .. } => "password".to_owned(),
                Holder::Recipient { recipient, .. } => {
                    format!("recovery key {}…", &recipient[..16.min(recipient.len())])
                }
            };
            if args.json {
                let list: Vec<_> = files.iter().map(|(id, f)| json!({"id": id, "key": f})).collect();
                writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
            } else {
                let rows: Vec<Vec<String>> = files
                    .iter()
                    .map(|(id, f)| vec![id.short(), describe(f), f.label.clone(), f.host.clone(), f.created.clone()])
                    .collect();
                table(out, &["ID", "Holder", "Label", "Host", "Created"], &rows)?;
            }
        }
        KeyCommand::Add { new_password_file, recipient, label } => {
            let repo = open(args).await?;
            let file = match recipient {
                Some(text) => KeyFile::for_recipient(repo.master_key(), &text.parse::<Recipient>()?, label),
                None => {
                    let password = new_password(new_password_file.as_ref())?;
                    KeyFile::for_passphrase(repo.master_key(), &password, KdfParams::default(), label)?
                }
            };
            let id = repo.add_key_file(&file).await?;
            writeln!(out, "{}", if args.json { json!({"id": id}).to_string() } else { format!("added key {id}") })?;
        }
        KeyCommand::Remove { id } => {
            let repo = open(args).await?;
            let files = Repository::key_files(repo.store()).await?;
            let matches: Vec<Id> = files.iter().map(|(i, _)| *i).filter(|i| i.to_string().starts_with(id)).collect();
            let [found] = matches.as_slice() else {
                bail!("{id} matches {} keys; `fenice repo key list` shows their ids", matches.len());
            };
            repo.remove_key_file(found).await?;
            writeln!(
                out,
                "{}",
                if args.json { json!({"removed": found}).to_string() } else { format!("removed key {found}") }
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
