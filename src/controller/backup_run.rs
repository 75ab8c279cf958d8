//! Running one Backup: find the tenant's stack and repositories, open each
//! repository (creating it on first use), stream the backup into all of them
//! at once, and record the outcome; at a Kubernetes site, start its Job
//! (`backup_job`). Whatever is missing is named in the Backup's status: a
//! tenant or policy that does not exist fails it; a stack not running yet
//! leaves it Pending with a condition.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};

use super::backup::{self, Attempt, Error, Written};
use super::retention;
use super::tenant::{self, Placement};
use super::{Context, repository::open_store, secrets};
use crate::api::backup::{Backup, BackupPhase};
use crate::api::repository::BackupRepository;
use crate::api::site::Site;
use crate::api::tenant::InvoicingTenant;
use crate::error_chain::error_chain;
use crate::repo::archiver::Progress;
use crate::repo::forget::KeepPolicy;
use crate::repo::keyfile::{KdfParams, Passphrase};
use crate::repo::repository::{self, Repository, Unlock};
use crate::stack::backup::TenantBackup;
use crate::stack::pg::DbUrl;

/// Where the backup runs.
enum Runs {
    /// Here, reading the tenant's database at a Local site.
    Here(Box<DbUrl>),
    /// As a Job at the tenant's Kubernetes site.
    Job { tenant: Box<InvoicingTenant>, site: Arc<Site> },
}

/// Where the backup's data is, once everything it needs was found.
struct Source {
    runs: Runs,
    repositories: Vec<String>,
    physical: bool,
    /// The tenant's policy's retention, applied after a successful backup.
    retention: Option<(KeepPolicy, jiff::tz::TimeZone)>,
}

/// Why a Backup does not run now: it waits (Pending) or cannot ever run (Failed).
struct NotNow {
    phase: BackupPhase,
    reason: &'static str,
    message: String,
    retry: Option<Duration>,
}

impl NotNow {
    fn wait(reason: &'static str, message: String, retry: Duration) -> Self {
        NotNow { phase: BackupPhase::Pending, reason, message, retry: Some(retry) }
    }

    fn fail(reason: &'static str, message: String) -> Self {
        NotNow { phase: BackupPhase::Failed, reason, message, retry: None }
    }
}

pub async fn run(ctx: &Context, backup: &Backup) -> Result<Action, Error> {
    let namespace = backup.namespace().unwrap_or_else(|| "default".into());
    let source =
        match find_source(ctx, backup, &namespace).await.map_err(super::about(backup, "finding what to back up"))? {
            Ok(source) => source,
            Err(not_now) => return hold(ctx, backup, not_now).await,
        };

    let db = match source.runs {
        Runs::Here(db) => *db,
        Runs::Job { tenant, site } => {
            return super::backup_job::start(ctx, backup, &tenant, &site, &source.repositories, source.physical).await;
        }
    };
    let status = backup::with_phase(
        backup,
        BackupPhase::Running,
        "Running",
        format!("writing to {}", source.repositories.join(", ")),
        Timestamp::now(),
    );
    backup::write_status(ctx, backup, &status).await?;
    let mut running = backup.clone();
    running.status = Some(status);

    let opened =
        futures::future::join_all(source.repositories.iter().map(|name| open_repository(ctx, name, true))).await;
    let (mut attempts, mut repos) = (Vec::new(), Vec::new());
    for (name, (provider, locked_for, repo)) in source.repositories.iter().zip(opened) {
        let result = match repo {
            Ok(repo) => {
                repos.push((attempts.len(), Arc::new(repo)));
                Err(String::new())
            }
            Err(why) => Err(why),
        };
        attempts.push(Attempt { repository: name.clone(), provider, locked_for, result });
    }
    let mut recorded = None;
    let mut failure = None;
    if !repos.is_empty() {
        let request = TenantBackup {
            tenant: backup.spec.tenant.clone(),
            db: db.clone(),
            host: crate::repo::host_name(),
            pg_bin: None,
            physical: source.physical,
            tags: Vec::new(),
        };
        let targets = repos.iter().map(|(_, r)| r.clone()).collect();
        match crate::stack::backup::backup(targets, &request, Arc::new(Progress::default())).await {
            Ok(outcome) => {
                for ((index, _), copy) in repos.iter().zip(outcome.copies) {
                    attempts[*index].result = match copy.result {
                        Ok((id, snapshot)) => Ok(Written {
                            snapshot_id: id.to_string(),
                            bytes_total: snapshot.totals.bytes,
                            bytes_added: snapshot.totals.added_bytes,
                        }),
                        Err(e) => Err(error_chain(&e)),
                    };
                }
                recorded = Some(outcome.recorded);
            }
            Err(e) => {
                let why = error_chain(&e);
                for (index, _) in &repos {
                    attempts[*index].result = Err("not written: the backup failed".into());
                }
                failure = Some(why);
            }
        }
    }
    let status = backup::finished(&running, &attempts, recorded.as_ref(), failure.as_deref(), Timestamp::now());
    // NB: before the final status, so that a finished Backup has its retention applied too.
    if let Some((keep, tz)) = &source.retention {
        let written = repos.iter().filter(|(index, _)| attempts[*index].result.is_ok());
        let written: Vec<_> =
            written.map(|(index, repo)| (attempts[*index].repository.as_str(), repo.as_ref())).collect();
        apply_retention(ctx, backup, &written, keep, tz).await;
    }
    backup::write_status(ctx, backup, &status).await?;
    let reason = match status.phase {
        BackupPhase::Succeeded => "Succeeded",
        BackupPhase::PartiallySucceeded => "PartiallySucceeded",
        _ => "Failed",
    };
    super::publish_outcome(ctx, backup, status.phase == BackupPhase::Succeeded, reason, "Backup", &status.conditions)
        .await;
    if status.phase == BackupPhase::Succeeded {
        ctx.metrics.backed_up(&namespace, &backup.spec.tenant, Timestamp::now());
    }
    Ok(Action::await_change())
}

/// Forgets the tenant's snapshots the policy does not keep in each of
/// `repos`, saying what it did in one Event (Events with the same reason on one
/// object are merged into a series that keeps the first note).
pub(super) async fn apply_retention(
    ctx: &Context,
    backup: &Backup,
    repos: &[(&str, &Repository)],
    keep: &KeepPolicy,
    tz: &jiff::tz::TimeZone,
) {
    let tenant = &backup.spec.tenant;
    let (mut done, mut failed) = (Vec::new(), Vec::new());
    for (name, repo) in repos {
        match retention::forget_tenant(repo, tenant, keep, tz).await {
            Ok(f) if f.forgotten + f.held > 0 => done.push(format!(
                "repository {name}: forgot {} of tenant {tenant}'s snapshots, kept {}{}",
                f.forgotten,
                f.kept,
                if f.held > 0 { format!(", {} more held by the store's retention", f.held) } else { String::new() }
            )),
            Ok(_) => {}
            Err(e) => failed.push(format!("repository {name}: applying the retention: {}", error_chain(&e))),
        }
    }
    if !done.is_empty() {
        super::publish(ctx, backup, EventType::Normal, "Forgotten", "Retention", done.join("; ")).await;
    }
    if !failed.is_empty() {
        super::publish(ctx, backup, EventType::Warning, "RetentionFailed", "Retention", failed.join("; ")).await;
    }
}

/// Records why the Backup does not run now, once, and when to look again.
async fn hold(ctx: &Context, backup: &Backup, not_now: NotNow) -> Result<Action, Error> {
    let old = backup.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
    if old.is_none_or(|c| c.reason != not_now.reason || c.message != not_now.message) {
        let status =
            backup::with_phase(backup, not_now.phase, not_now.reason, not_now.message.clone(), Timestamp::now());
        backup::write_status(ctx, backup, &status).await?;
        let type_ = if not_now.phase == BackupPhase::Failed { EventType::Warning } else { EventType::Normal };
        super::publish(ctx, backup, type_, not_now.reason, "Backup", not_now.message).await;
    }
    Ok(not_now.retry.map_or_else(Action::await_change, Action::requeue))
}

/// The tenant's database and the repositories to write to, or why not now.
async fn find_source(ctx: &Context, backup: &Backup, namespace: &str) -> Result<Result<Source, NotNow>, kube::Error> {
    let name = &backup.spec.tenant;
    let tenants: Api<InvoicingTenant> = Api::namespaced(ctx.client.clone(), namespace);
    let Some(tenant) = tenants.get_opt(name).await? else {
        let message =
            format!("InvoicingTenant {namespace}/{name} does not exist: fix spec.tenant and create a new Backup");
        return Ok(Err(NotNow::fail("TenantNotFound", message)));
    };
    let policy = ctx.cache.policies.get(&tenant.spec.backup_policy).await;
    let repositories = match (&backup.spec.repositories, &policy) {
        (names, _) if !names.is_empty() => names.clone(),
        (_, Some(policy)) => policy.spec.repositories.clone(),
        (_, None) => {
            let message = format!(
                "the Backup names no repositories and the tenant's BackupPolicy {} does not exist: \
                 create it, or list spec.repositories",
                tenant.spec.backup_policy
            );
            return Ok(Err(NotNow::fail("PolicyNotFound", message)));
        }
    };
    let physical = policy.as_ref().and_then(|p| p.spec.wal_archiving.as_ref()).is_some_and(|w| w.enabled);
    // NB: a time zone the policy controller cannot read is reported there (InvalidSchedule).
    let retention = policy.as_ref().and_then(|p| {
        let tz = jiff::tz::TimeZone::get(&p.spec.time_zone).ok()?;
        Some((retention::keep_policy(&p.spec.retention), tz))
    });

    let site_name = tenant::active_site(&tenant);
    let site = ctx.cache.sites.get(&site_name).await;
    Ok(match tenant::placement(&site_name, site.as_deref()) {
        Placement::Invalid { reason, message } => Err(NotNow::wait(reason, message, Duration::from_secs(30))),
        Placement::Kubernetes { site: site_name } => {
            let held = policy.as_ref().map(|p| p.spec.repositories.clone()).unwrap_or_default();
            if repositories != held {
                let message = format!(
                    "tenant {name} runs at Kubernetes site {site_name}, where its backup Job can write only to its \
                     BackupPolicy's repositories ({}): leave spec.repositories empty",
                    held.join(", ")
                );
                return Ok(Err(NotNow::fail("RepositoriesNotAtSite", message)));
            }
            let site = site.expect("a Kubernetes placement has its Site");
            // NB: CloudNativePG grants replication connections to its own replicas only: logical backups there.
            let physical = physical && !site.cloud_native_pg();
            Ok(Source { runs: Runs::Job { tenant: Box::new(tenant), site }, repositories, physical, retention })
        }
        Placement::Local { site } => match ctx.local.database(&site, namespace, name).map(|db| DbUrl::parse(&db)) {
            Some(Ok(db)) => Ok(Source { runs: Runs::Here(Box::new(db)), repositories, physical, retention }),
            Some(Err(e)) => Err(NotNow::fail("DatabaseUrlInvalid", format!("tenant {name}'s database URL: {e}"))),
            None => Err(NotNow::wait(
                "StackNotRunning",
                format!(
                    "tenant {name}'s stack does not run at Local site {site} yet: the InvoicingTenant's Ready \
                     condition says why"
                ),
                Duration::from_secs(10),
            )),
        },
    })
}

/// Opens the repository `name` (creating it when its store is empty and
/// `create`), with its provider and how long its store locks what is written.
pub(super) async fn open_repository(
    ctx: &Context,
    name: &str,
    create: bool,
) -> (Option<crate::api::common::Provider>, Option<Duration>, Result<Repository, String>) {
    let found = match Api::<BackupRepository>::all(ctx.client.clone()).get_opt(name).await {
        Ok(Some(found)) => found,
        Ok(None) => {
            let why = format!("BackupRepository {name} does not exist: create it, or fix the list of repositories");
            return (None, None, Err(why));
        }
        Err(e) => return (None, None, Err(format!("reading BackupRepository {name}: {}", error_chain(&e)))),
    };
    let spec = &found.spec;
    let opened = open_or_create(ctx, &found, create).await;
    match opened {
        Ok((locked_for, repo)) => (Some(spec.provider), locked_for, Ok(repo)),
        Err(why) => (Some(spec.provider), None, Err(why)),
    }
}

/// Opens the repository, or creates it in an empty store. Two Backups may
/// find the store empty at once: the one that loses the race opens what the
/// other created.
async fn open_or_create(
    ctx: &Context,
    found: &BackupRepository,
    create: bool,
) -> Result<(Option<Duration>, Repository), String> {
    let name = found.name_any();
    let (name, spec) = (name.as_str(), &found.spec);
    let chain = |e: &dyn std::error::Error| error_chain(e);
    let password = secrets::key(&ctx.client, &ctx.namespace, &spec.password_secret_ref)
        .await
        .map_err(|e| format!("BackupRepository {name}: {e}"))?;
    let plain = open_store(ctx, name, spec, None).await.map_err(|e| chain(&e))?;
    // The store, locking what it writes for `days` when set.
    let store = |days: Option<u32>| {
        let plain = plain.clone();
        async move {
            match days {
                Some(d) => open_store(ctx, name, spec, Some(days_to_duration(d))).await.map_err(|e| chain(&e)),
                None => Ok(plain),
            }
        }
    };
    for _ in 0..2 {
        match Repository::read_config(plain.as_ref()).await {
            Ok(config) => {
                // NB: what the repository was created with binds, as for `fenice repo`.
                let days = config.retention_days;
                let unlock = Unlock::Passphrase(Passphrase::new(password.to_string()));
                let repo = Repository::open(store(days).await?, &unlock).await.map_err(|e| chain(&e))?;
                return Ok((days.map(days_to_duration), repo));
            }
            Err(e @ repository::Error::NotARepository { .. }) if !create => return Err(chain(&e)),
            Err(repository::Error::NotARepository { .. }) => {
                let wanted = spec.immutability.retention.as_ref().filter(|_| spec.immutability.enabled);
                let days = wanted.map(|r| r.as_std().as_secs().div_ceil(86_400).max(1) as u32);
                match Repository::init(
                    store(days).await?,
                    &Passphrase::new(password.to_string()),
                    KdfParams::default(),
                    days,
                )
                .await
                {
                    Ok(repo) => {
                        let note = format!("created the repository at {}", repo.describe());
                        super::publish(ctx, found, EventType::Normal, "Initialized", "Backup", note).await;
                        return Ok((days.map(days_to_duration), repo));
                    }
                    Err(repository::Error::AlreadyInitialized { .. }) => continue,
                    Err(e) => return Err(chain(&e)),
                }
            }
            Err(e) => return Err(chain(&e)),
        }
    }
    Err(format!("BackupRepository {name}: created by someone else meanwhile, and still not readable"))
}

fn days_to_duration(days: u32) -> Duration {
    Duration::from_secs(u64::from(days) * 86_400)
}
