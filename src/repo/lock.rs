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
use crate::store::{self, PutCondition};

/// A lock older than this is treated as left by a killed process.
pub const STALE_AFTER: Duration = Duration::from_secs(2 * 3600);
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
}

fn conflicts(ours_exclusive: bool, theirs: &LockFile, now: Timestamp) -> bool {
    let fresh = theirs
        .time
        .parse::<Timestamp>()
        .ok()
        .and_then(|t| now.duration_since(t).try_into().ok())
        .is_some_and(|age: Duration| age < STALE_AFTER);
    fresh && (ours_exclusive || theirs.exclusive)
}

const RELEASED: &str = ".released";

async fn locks(repo: &Repository) -> Result<Vec<(String, LockFile)>> {
    let mut out = Vec::new();
    let listed = repo.store().list("locks/").await?;
    let released: HashSet<&str> = listed.iter().filter_map(|m| m.key.strip_suffix(RELEASED)).collect();
    for meta in listed.iter().filter(|m| !m.key.ends_with(RELEASED) && !released.contains(m.key.as_str())) {
        let sealed = match repo.store().get(&meta.key).await {
            Ok(sealed) => sealed,
            Err(store::Error::NotFound { .. }) => continue, // released meanwhile
            Err(e) => return Err(e.into()),
        };
        let Ok(json) = repo.keys().open(&sealed, LOCK_AAD) else { continue };
        if let Ok(lock) = serde_json::from_slice::<LockFile>(&json) {
            out.push((meta.key.clone(), lock));
        }
    }
    Ok(out)
}

fn locked_error(repo: &Repository, lock: &LockFile) -> Error {
    Error::Locked {
        location: repo.describe(),
        holder: format!("{} pid {}", lock.host, lock.pid),
        since: lock.time.clone(),
        exclusive: lock.exclusive,
    }
}

/// Takes a shared (backup) or exclusive (prune) lock.
pub async fn acquire(repo: &Repository, exclusive: bool) -> Result<Lock> {
    let now = Timestamp::now();
    if let Some((_, held)) = locks(repo).await?.iter().find(|(_, l)| conflicts(exclusive, l, now)) {
        return Err(locked_error(repo, held));
    }
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
    repo.store().put(&key, Bytes::from(sealed), PutCondition::IfAbsent).await?;
    let lock = Lock { key };
    // Two writers may have checked at the same moment: look again now that ours is visible.
    let rivals = locks(repo).await?;
    if let Some((_, held)) = rivals.iter().find(|(k, l)| *k != lock.key && conflicts(exclusive, l, now)) {
        let error = locked_error(repo, held);
        lock.release(repo).await;
        return Err(error);
    }
    Ok(lock)
}

impl Lock {
    /// Removes the lock, or on an immutable store marks it released.
    pub async fn release(self, repo: &Repository) {
        if let Err(store::Error::Immutable { .. }) = repo.store().delete(&self.key).await {
            let marker = format!("{}{RELEASED}", self.key);
            // Best effort: if even this fails, the lock goes stale after STALE_AFTER.
            let _ = repo.store().put(&marker, Bytes::new(), PutCondition::IfAbsent).await;
        }
    }
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

    #[test]
    fn stale_locks_are_ignored() {
        let now = Timestamp::now();
        assert!(!conflicts(true, &lock(3 * 3600, true), now));
        let garbled = LockFile { time: "yesterday".into(), ..lock(0, true) };
        assert!(!conflicts(true, &garbled, now));
    }
}
