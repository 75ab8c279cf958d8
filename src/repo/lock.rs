//! Repository locks. Backups take a shared lock, `prune` an exclusive one, so
//! prune never deletes a pack that a running backup is about to reference.
//! A lock is a sealed object under `locks/`; one older than [`STALE_AFTER`] is
//! ignored, since a killed writer cannot remove its own. On an immutable store
//! a lock cannot be deleted either: releasing it then writes a marker
//! `locks/<id>.released` beside it.

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::id::Id;
use super::repository::{Error, Repository, Result};
use crate::store::{self, PutCondition, PutOutcome};

/// A lock older than this is treated as left by a killed process.
pub const STALE_AFTER: Duration = Duration::from_secs(2 * 3600);
/// How often a holder writes its lock anew, so that work longer than
/// [`STALE_AFTER`] (a backup of a large tenant, a prune of a large repository)
/// is never taken for a killed one's.
pub const REFRESH_EVERY: Duration = Duration::from_secs(30 * 60);
const LOCK_AAD: &[u8] = b"fenice.io lock v1";

/// The JSON of a lock object.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LockFile {
    pub time: String,
    pub host: String,
    pub pid: u32,
    pub exclusive: bool,
    /// Random, so two locks taken at once never share a name.
    pub nonce: String,
}

/// A held lock; [`release`](Lock::release) removes it.
#[derive(Debug)]
pub struct Lock {
    key: String,
    /// What writing it answered: the version to delete, where the store has them.
    written: PutOutcome,
    exclusive: bool,
}

fn conflicts(ours_exclusive: bool, theirs: &LockFile, now: Timestamp) -> bool {
    // NB: a lock dated after `now` is fresh, not unreadable: it was refreshed
    // since, or written on a host whose clock is ahead.
    let stale = jiff::SignedDuration::try_from(STALE_AFTER).unwrap_or(jiff::SignedDuration::MAX);
    let fresh = theirs.time.parse::<Timestamp>().is_ok_and(|t| now.duration_since(t) < stale);
    fresh && (ours_exclusive || theirs.exclusive)
}

const RELEASED: &str = ".released";

/// How many times the locks are listed again when one vanished between the
/// list and its read.
const RELISTS: usize = 5;

/// Locks read at once: each backup of a repository that many tenants back up
/// into at the same time reads every other one's lock, twice.
const PARALLEL_LOCK_READS: usize = 16;

/// The locks held, but `own` (the caller's, which it need not read back).
async fn locks(repo: &Repository, own: Option<&str>) -> Result<Vec<(String, LockFile)>> {
    use futures::{StreamExt, TryStreamExt};
    let mut attempt = 0;
    loop {
        attempt += 1;
        let listed = repo.store().list("locks/").await?;
        let released: HashSet<&str> = listed.iter().filter_map(|m| m.key.strip_suffix(RELEASED)).collect();
        let held: Vec<String> = listed
            .iter()
            .map(|m| m.key.as_str())
            .filter(|key| !key.ends_with(RELEASED) && !released.contains(key) && Some(*key) != own)
            .map(str::to_owned)
            .collect();
        let read: Vec<(String, Option<Bytes>)> = futures::stream::iter(held)
            .map(|key| async move {
                match repo.store().get(&key).await {
                    Ok(sealed) => Ok((key, Some(sealed))),
                    Err(store::Error::NotFound { .. }) => Ok((key, None)),
                    Err(e) => Err(e),
                }
            })
            .buffered(PARALLEL_LOCK_READS)
            .try_collect()
            .await?;
        // NB: gone since the listing: released, or refreshed (a refresh writes
        // the new lock before removing the old, so listing again finds it).
        if attempt < RELISTS && read.iter().any(|(_, sealed)| sealed.is_none()) {
            continue;
        }
        let open = |sealed: &Bytes| repo.keys().open(sealed, LOCK_AAD).ok();
        return Ok(read
            .into_iter()
            .filter_map(|(key, sealed)| {
                let lock = serde_json::from_slice::<LockFile>(&open(sealed.as_ref()?)?).ok()?;
                Some((key, lock))
            })
            .collect());
    }
}

fn locked_error(repo: &Repository, lock: &LockFile) -> Error {
    Error::Locked {
        location: repo.describe(),
        holder: format!("{} pid {}", lock.host, lock.pid),
        since: lock.time.clone(),
        exclusive: lock.exclusive,
    }
}

/// Writes a new lock object dated `now`; its key.
async fn write(repo: &Repository, exclusive: bool, now: Timestamp) -> Result<(String, PutOutcome)> {
    let file = LockFile {
        time: now.to_string(),
        host: super::host_name(),
        pid: std::process::id(),
        exclusive,
        nonce: super::id::hex(&super::crypto::random::<16>()),
    };
    // NB: LockFile serializes infallibly.
    let sealed = repo.keys().seal(&serde_json::to_vec(&file).expect("lock serializes"), LOCK_AAD);
    let key = format!("locks/{}", Id::of_content(&sealed));
    let written = repo.store().put(&key, Bytes::from(sealed), PutCondition::IfAbsent).await?;
    Ok((key, written))
}

/// Takes a shared (backup) or exclusive (prune) lock.
pub async fn acquire(repo: &Repository, exclusive: bool) -> Result<Lock> {
    let now = Timestamp::now();
    if let Some((_, held)) = locks(repo, None).await?.iter().find(|(_, l)| conflicts(exclusive, l, now)) {
        return Err(locked_error(repo, held));
    }
    let (key, written) = write(repo, exclusive, now).await?;
    let lock = Lock { key, written, exclusive };
    // Two writers may have checked at the same moment: look again now that ours is visible.
    let rivals = locks(repo, Some(&lock.key)).await?;
    if let Some((_, held)) = rivals.iter().find(|(_, l)| conflicts(exclusive, l, now)) {
        let error = locked_error(repo, held);
        lock.release(repo).await;
        return Err(error);
    }
    Ok(lock)
}

impl Lock {
    /// Removes the lock, or on an immutable store marks it released.
    pub async fn release(self, repo: &Repository) {
        remove(repo, &self.key, &self.written).await;
    }

    /// Dates the lock now: a new lock object, then the old one removed (lock
    /// objects, like every object, are never rewritten). The lock is held
    /// throughout: the new one is there before the old one goes.
    pub async fn refresh(&mut self, repo: &Repository) -> Result<()> {
        let (key, written) = write(repo, self.exclusive, Timestamp::now()).await?;
        let old = (std::mem::replace(&mut self.key, key), std::mem::replace(&mut self.written, written));
        remove(repo, &old.0, &old.1).await;
        Ok(())
    }
}

async fn remove(repo: &Repository, key: &str, written: &PutOutcome) {
    // NB: in a repository that locks every object for days, a lock just written
    // cannot be deleted: the attempt (a refused delete, and reading the
    // version's retention to tell why) is skipped.
    let locked = repo.config().retention_days.is_some();
    if locked || matches!(repo.store().delete_written(key, written).await, Err(store::Error::Immutable { .. })) {
        let marker = format!("{key}{RELEASED}");
        // Best effort: if even this fails, the lock goes stale after STALE_AFTER.
        let _ = repo.store().put(&marker, Bytes::new(), PutCondition::IfAbsent).await;
    }
}

/// Runs `work` while holding `held`, refreshing each lock `every` (production:
/// [`REFRESH_EVERY`]); releases them when it ends.
pub async fn hold<T>(mut held: Vec<(&Repository, Lock)>, every: Duration, work: impl Future<Output = T>) -> T {
    let mut work = std::pin::pin!(work);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        tokio::select! {
            result = &mut work => break result,
            _ = ticks.tick() => {
                for (repo, lock) in &mut held {
                    if let Err(e) = lock.refresh(repo).await {
                        // NB: the work goes on; past STALE_AFTER a prune could take this lock for a dead one.
                        tracing::warn!(repository = repo.describe(), error = %e, "refreshing the repository lock");
                    }
                }
            }
        }
    };
    for (repo, lock) in held {
        lock.release(repo).await;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock(age_secs: i64, exclusive: bool) -> LockFile {
        let time = Timestamp::now() - jiff::SignedDuration::from_secs(age_secs);
        LockFile { time: time.to_string(), host: "h".into(), pid: 1, exclusive, nonce: String::new() }
    }

    #[test]
    fn shared_locks_coexist_and_exclusive_ones_do_not() {
        let now = Timestamp::now();
        assert!(!conflicts(false, &lock(10, false), now));
        assert!(conflicts(true, &lock(10, false), now));
        assert!(conflicts(false, &lock(10, true), now));
        assert!(conflicts(true, &lock(10, true), now));
    }

    async fn repository(dir: &std::path::Path) -> Repository {
        use crate::repo::keyfile::{KdfParams, Passphrase};
        let store: std::sync::Arc<dyn crate::store::ObjectStore> =
            std::sync::Arc::new(crate::store::fs::FsStore::open(dir).unwrap());
        let fast = KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 };
        Repository::init(store, &Passphrase::new("pw".into()), fast, None).await.unwrap()
    }

    /// Work longer than STALE_AFTER keeps its lock fresh: it is written anew
    /// while the work runs (a newer lock before the older goes), a prune
    /// asking at any moment is refused, and none is left once the work ends.
    #[tokio::test]
    async fn a_held_lock_is_dated_anew_while_the_work_runs_and_released_after() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repository(dir.path()).await;
        let lock = acquire(&repo, false).await.unwrap();
        let first = locks(&repo, None).await.unwrap();
        assert_eq!(first.len(), 1);
        let every = Duration::from_millis(50);
        let seen = hold(vec![(&repo, lock)], every, async {
            let mut seen = Vec::new();
            for _ in 0..6 {
                tokio::time::sleep(every).await;
                // NB: acquire looks again after writing its own lock, so a
                // refresh between its list and its read does not fool it.
                assert!(matches!(acquire(&repo, true).await, Err(Error::Locked { .. })), "a prune got in");
                seen.extend(locks(&repo, None).await.unwrap());
            }
            seen
        })
        .await;
        let keys: HashSet<&str> = seen.iter().map(|(k, _)| k.as_str()).collect();
        assert!(keys.len() >= 3, "the lock was not written anew: {seen:?}");
        let newest = seen.iter().map(|(_, l)| l.time.as_str()).max().unwrap();
        assert!(newest > first[0].1.time.as_str(), "{seen:?}");
        assert!(locks(&repo, None).await.unwrap().is_empty(), "released when the work ended");
    }

    #[test]
    fn stale_locks_are_ignored() {
        let now = Timestamp::now();
        assert!(!conflicts(true, &lock(3 * 3600, true), now));
        // From the future (a clock ahead, a refresh since): fresh.
        assert!(conflicts(true, &lock(-30, false), now));
        let garbled = LockFile { time: "yesterday".into(), ..lock(0, true) };
        assert!(!conflicts(true, &garbled, now));
    }
}
