//! Point-in-time recovery: a physical base backup from a tenant snapshot, set
//! up to replay the tenant's archived WAL up to a target time (or to the end
//! of the archive) and then promote. Whoever runs the tenant's PostgreSQL
//! (the site driver, a StatefulSet) starts it on the prepared directory;
//! `fenice agent verify` then writes the documents out of the recovered
//! database and checks the result.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use crate::repo::id::Id;
use crate::repo::repository::Repository;
use crate::repo::restorer::{self, load_tree};
use crate::repo::tree::NodeType;

use super::child::feed;
use super::verify;
use super::{BASE, DATABASE_TIME, Error, Result, TAG};

/// What to prepare.
#[derive(Clone, Debug)]
pub struct PitrRestore {
    pub tenant: String,
    /// The repository location, as `restore_command` will open it.
    pub repository: String,
    /// Replay up to this instant; to the end of the archive when `None`.
    pub target_time: Option<jiff::Timestamp>,
    /// A snapshot id or prefix; otherwise the newest base backup before the target.
    pub snapshot: Option<String>,
    pub pgdata: PathBuf,
    pub force: bool,
    /// The `fenice` program `restore_command` runs.
    pub fenice: PathBuf,
    /// Stay a standby (warm standby): replay the archive as it grows, never
    /// promote on its own; a failover promotes it. `target_time` is ignored.
    pub standby: bool,
}

/// A prepared data directory.
#[derive(Debug)]
pub struct Prepared {
    pub snapshot: Id,
    pub time: String,
    pub recorded: verify::Record,
}

/// Restores the base backup and the documents, and writes the recovery settings.
pub async fn prepare(repo: &Arc<Repository>, request: &PitrRestore) -> Result<Prepared> {
    let fenice = request.fenice.display().to_string();
    for (what, value) in
        [("tenant", &request.tenant), ("repository", &request.repository), ("fenice program path", &fenice)]
    {
        if !value.bytes().all(|b| b.is_ascii_alphanumeric() || b"/:._@-".contains(&b)) {
            return Err(Error::Unquotable { what, value: value.clone() });
        }
    }
    let (id, snapshot, recorded) = newest_base(repo, request).await?;
    let restore_error = |source: restorer::Error| Error::Restore { snapshot: id.short(), source: Box::new(source) };
    prepare_empty_dir(&request.pgdata, request.force)?;
    extract(repo, &snapshot.tree, &request.pgdata).await.map_err(|e| match e {
        Error::Restore { source, .. } => restore_error(*source),
        e => e,
    })?;
    write_recovery_settings(request, &id)?;
    Ok(Prepared { snapshot: id, time: snapshot.time, recorded })
}

/// The tenant's newest base backup (before `request.target_time`, or the one
/// `request.snapshot` names) and what it recorded, without restoring anything:
/// what a promoted standby is verified against.
pub async fn latest_backup(repo: &Repository, request: &PitrRestore) -> Result<(Id, verify::Record)> {
    let (id, _, recorded) = newest_base(repo, request).await?;
    Ok((id, recorded))
}

/// [`base_snapshot`], after loading the index objects written since the
/// repository was opened: a long-running process restores later backups too.
async fn newest_base(
    repo: &Repository,
    request: &PitrRestore,
) -> Result<(Id, crate::repo::tree::Snapshot, verify::Record)> {
    repo.refresh_index()
        .await
        .map_err(|source| Error::Repository { repository: repo.describe(), source: Box::new(source) })?;
    base_snapshot(repo, request).await
}

/// The order in which a tenant's backups are tried as the base: begun before
/// `target` by the database's clock, the last first; without a target, the
/// newest of the series first, even when dated before others (taken after a
/// clock was set back): recovery replays all the WAL after it.
fn in_turn(backups: Vec<&(Id, crate::repo::tree::Snapshot)>, target: Option<jiff::Timestamp>) -> Vec<Id> {
    let mut dated: Vec<(jiff::Timestamp, Id)> = backups
        .iter()
        .filter_map(|(id, s)| Some((begun(s)?, *id)))
        .filter(|(time, _)| target.is_none_or(|target| *time < target))
        .collect();
    dated.sort();
    let newest = crate::repo::tree::newest(backups).map(|(id, _)| *id).filter(|_| target.is_none());
    newest.into_iter().chain(dated.into_iter().rev().map(|(_, id)| id).filter(|id| Some(*id) != newest)).collect()
}

/// When a backup began by the database's clock, which a target time is read
/// on (the WAL's commit times are the server's); by the snapshot's date, the
/// backup host's clock, for a backup that did not record it.
fn begun(snapshot: &crate::repo::tree::Snapshot) -> Option<jiff::Timestamp> {
    let recorded = snapshot.annotations.get(DATABASE_TIME).and_then(|t| t.as_str()?.parse().ok());
    recorded.or_else(|| snapshot.dated())
}

/// The snapshot named, or the tenant's newest one with a base backup taken
/// before the target time.
async fn base_snapshot(
    repo: &Repository,
    request: &PitrRestore,
) -> Result<(Id, crate::repo::tree::Snapshot, verify::Record)> {
    let repo_error = |source| Error::Repository { repository: repo.describe(), source: Box::new(source) };
    let candidates: Vec<String> = match &request.snapshot {
        Some(spec) => vec![spec.clone()],
        None => {
            let snapshots = repo.snapshots().await.map_err(repo_error)?;
            let backups = snapshots.iter().filter(|(_, s)| {
                s.tenant.as_deref() == Some(request.tenant.as_str()) && s.tags.iter().any(|t| t == TAG)
            });
            in_turn(backups.collect(), request.target_time).iter().map(Id::to_string).collect()
        }
    };
    for spec in &candidates {
        let (id, snapshot, recorded) = super::restore::find(repo, &request.tenant, Some(spec)).await?;
        let root = load_tree(repo, &snapshot.tree)
            .await
            .map_err(|source| Error::Restore { snapshot: id.short(), source: Box::new(source.into()) })?;
        if root.nodes.iter().any(|n| n.name == BASE && n.node_type == NodeType::File) {
            return Ok((id, snapshot, recorded));
        }
        if request.snapshot.is_some() {
            return Err(Error::NotTenantBackup {
                snapshot: id.short(),
                reason: format!("it has no {BASE}: take backups with --physical for point-in-time recovery"),
            });
        }
    }
    Err(Error::NoBaseBackup {
        repository: repo.describe(),
        tenant: request.tenant.clone(),
        before: request.target_time.map(|t| t.to_string()),
    })
}

fn prepare_empty_dir(dir: &Path, force: bool) -> Result<()> {
    let io = |what| move |source| Error::Io { what, path: dir.to_owned(), source };
    std::fs::create_dir_all(dir).map_err(io("creating the data directory"))?;
    let mut entries = std::fs::read_dir(dir).map_err(io("reading the data directory"))?.peekable();
    if entries.peek().is_none() {
        return Ok(());
    }
    if !force {
        return Err(Error::DataDirNotEmpty { dir: dir.to_owned() });
    }
    std::fs::remove_dir_all(dir).map_err(io("emptying the data directory"))?;
    std::fs::create_dir_all(dir).map_err(io("creating the data directory"))
}

/// What [`set_aside_if_diverged`] found in a data directory.
#[derive(Debug, PartialEq, Eq)]
pub enum DataDir {
    /// A standby (`standby.signal`): it replays the archive, whatever timeline comes.
    Standby,
    /// A primary of the newest timeline the archive knows: the tenant's database.
    Newest { timeline: u32 },
    /// A primary of a timeline that a promotion elsewhere since replaced:
    /// moved to `to`, beside it, untouched.
    SetAside { timeline: u32, newest: u32, to: PathBuf },
}

/// Moves `pgdata` aside (a sibling directory, on the same volume, renamed
/// whole) when it holds a primary whose timeline the archive shows replaced:
/// the old primary of a failover, or a site a failback left. Such a database
/// may hold writes that never reached the archive, so it is kept, never
/// deleted; a fresh standby is then made in its place. A primary is on the
/// timeline of the newest history file in its `pg_wal` (a promotion writes
/// one before it takes any write), or 1.
pub async fn set_aside_if_diverged(repo: &Repository, tenant: &str, pgdata: &Path) -> Result<DataDir> {
    if pgdata.join("standby.signal").exists() {
        return Ok(DataDir::Standby);
    }
    let newest = super::wal::newest_timeline(repo, tenant)
        .await
        .map_err(|source| Error::Timelines { tenant: tenant.to_owned(), source: Box::new(source) })?;
    let io = |what, path: &Path| {
        let path = path.to_owned();
        move |source| Error::Io { what, path, source }
    };
    let wal = pgdata.join("pg_wal");
    let timeline = std::fs::read_dir(&wal)
        .map_err(io("reading", &wal))?
        .filter_map(|e| e.ok()?.file_name().to_str().and_then(super::wal::history_timeline))
        .max()
        .unwrap_or(1);
    if timeline >= newest {
        return Ok(DataDir::Newest { timeline });
    }
    let stamp = jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ");
    let name = pgdata.file_name().and_then(|n| n.to_str()).unwrap_or("pgdata");
    let to = pgdata.with_file_name(format!("{name}.diverged-tl{timeline}-{stamp}"));
    std::fs::rename(pgdata, &to).map_err(io("setting aside", pgdata))?;
    Ok(DataDir::SetAside { timeline, newest, to })
}

/// Streams the base backup's tar into `tar -x`.
async fn extract(repo: &Arc<Repository>, root: &Id, pgdata: &Path) -> Result<()> {
    let mut command = Command::new("tar");
    command.arg("-x").arg("-f").arg("-").arg("-C").arg(pgdata);
    feed(repo, root, BASE, "tar", command).await
}

/// `recovery.signal` and the settings that replay the archive: appended to
/// `postgresql.auto.conf`, which the server reads last.
///
/// NB: archiving is switched off in the restored copy, so that a drill never
/// writes into the tenant's archive; a failover's new primary turns it on
/// with its own settings on the command line, which win over this file. And
/// a copy of a primary that waited for its synchronous standby would wait
/// for one it does not have: it waits for none.
/// Segments `restore_command` fetches ahead, and where they wait (in the data
/// directory, where PostgreSQL runs the command).
const PREFETCH: usize = 16;
const SPOOL: &str = "fenice-wal-prefetch";

fn write_recovery_settings(request: &PitrRestore, snapshot: &Id) -> Result<()> {
    let io = |path: PathBuf| move |source| Error::Io { what: "writing", path, source };
    // NB: in standby mode a segment not archived yet is asked for again every
    // few seconds (wal_retrieve_retry_interval), and a promotion first replays
    // whatever the archive holds: a warm standby loses no more than a restore.
    let (signal, what, end) = match request.standby {
        true => ("standby.signal", "warm standby", ""),
        false => ("recovery.signal", "point-in-time recovery", "recovery_target_action = 'promote'\n"),
    };
    let signal = request.pgdata.join(signal);
    std::fs::write(&signal, "").map_err(io(signal.clone()))?;
    let fenice = request.fenice.display();
    let mut settings = format!(
        "\n# fenice agent restore: {what} of tenant {tenant} from snapshot {snapshot}\n\
         restore_command = '{fenice} agent wal-fetch --tenant {tenant} --repo {repository} \
         --prefetch {PREFETCH} --spool {SPOOL} %f %p'\n\
         {end}archive_mode = 'off'\n\
         synchronous_standby_names = ''\n",
        tenant = request.tenant,
        repository = request.repository,
        snapshot = snapshot.short(),
    );
    if let Some(target) = request.target_time.filter(|_| !request.standby) {
        // PostgreSQL reads `2026-11-23 11:48:34.296691+00`, not RFC 3339's T and Z.
        let shown = target.to_zoned(jiff::tz::TimeZone::UTC).strftime("%Y-%m-%d %H:%M:%S%.f+00");
        settings.push_str(&format!("recovery_target_time = '{shown}'\n"));
    }
    let auto_conf = request.pgdata.join("postgresql.auto.conf");
    let mut existing = std::fs::read_to_string(&auto_conf).unwrap_or_default();
    existing.push_str(&settings);
    std::fs::write(&auto_conf, existing).map_err(io(auto_conf.clone()))?;
    // A base backup holds no postmaster.pid, but one copied by hand might.
    let _ = std::fs::remove_file(request.pgdata.join("postmaster.pid"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::tree::sample;

    #[test]
    fn a_base_taken_after_the_clock_was_set_back_is_tried_first_without_a_target() {
        // 2 follows 1 but was dated three hours before it.
        let backups = [
            sample(1, Some("acme"), "2026-12-07T10:00:00Z", None),
            sample(2, Some("acme"), "2026-12-07T07:30:00Z", Some(1)),
        ];
        let ids = |ids: Vec<Id>| ids.iter().map(|id| id.0[0]).collect::<Vec<u8>>();
        assert_eq!(ids(in_turn(backups.iter().collect(), None)), [2, 1]);
        // NB: with a target, by the dates, when the backups did not record the
        // database's time.
        let target = "2026-12-07T09:00:00Z".parse().ok();
        assert_eq!(ids(in_turn(backups.iter().collect(), target)), [2]);
        let target = "2026-12-07T11:00:00Z".parse().ok();
        assert_eq!(ids(in_turn(backups.iter().collect(), target)), [1, 2]);
    }

    #[test]
    fn with_a_target_bases_are_chosen_by_the_database_s_clock() {
        // 2 began at 10:30 by the database's clock, but its host's clock was
        // set back: dated 09:30, between 1 and the target.
        let mut backups = [
            sample(1, Some("acme"), "2026-12-07T09:00:00Z", None),
            sample(2, Some("acme"), "2026-12-07T09:30:00Z", Some(1)),
        ];
        for ((_, snapshot), began) in backups.iter_mut().zip(["2026-12-07T09:00:00.5Z", "2026-12-07T10:30:00Z"]) {
            snapshot.annotations.insert(DATABASE_TIME.into(), began.into());
        }
        let ids = |ids: Vec<Id>| ids.iter().map(|id| id.0[0]).collect::<Vec<u8>>();
        let target = "2026-12-07T10:00:00Z".parse().ok();
        assert_eq!(ids(in_turn(backups.iter().collect(), target)), [1], "2 began after the target");
        let target = "2026-12-07T11:00:00Z".parse().ok();
        assert_eq!(ids(in_turn(backups.iter().collect(), target)), [2, 1]);
        // An unreadable time falls back to the snapshot's date.
        backups[1].1.annotations.insert(DATABASE_TIME.into(), "yesterday".into());
        let target = "2026-12-07T10:00:00Z".parse().ok();
        assert_eq!(ids(in_turn(backups.iter().collect(), target)), [2, 1]);
    }
}
