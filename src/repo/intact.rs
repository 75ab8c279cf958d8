//! Reads that survive an overwritten object.
//!
//! S3 Object Lock keeps a locked version from being deleted or changed, but on
//! a versioned bucket anyone allowed to write can still put a new *current*
//! version on top of it, and every plain read then gets the new bytes: the
//! locked backup still exists and no longer restores. That is the ransomware
//! case immutability is bought for. Every repository object is named by the
//! hash of its content, so a reader can tell an overwritten object from the one
//! that was written and go back to the newest kept version that matches its
//! name. Each such finding is remembered, logged and reported by `check` and
//! drills: a repository whose objects were overwritten was written to by
//! someone who should not have.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::id::Id;
use crate::store::{Chunks, Error, ObjectStore, Result};

/// An object whose current content does not match its name, read instead from
/// an older version that does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Overwritten {
    pub key: String,
    /// The store's id of the version that is read instead.
    pub version: String,
}

impl std::fmt::Display for Overwritten {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: the current version is not the one written (it was written over, or a delete marker hides it); the \
             original, version {}, is read instead",
            self.key, self.version
        )
    }
}

/// The id an object's key names, when the key is `…/<64 hex digits>`.
fn named_id(key: &str) -> Option<Id> {
    key.rsplit('/').next().and_then(|name| name.parse().ok())
}

/// Reads `key` whole. When its name is a content hash and the current content
/// does not match it (or a delete marker hides it), returns the newest kept
/// version that does, with its version id; when none does, the current
/// content (or the error), for the caller to report.
pub async fn get(store: &dyn ObjectStore, key: &str) -> Result<(Bytes, Option<String>)> {
    let Some(id) = named_id(key) else { return Ok((store.get(key).await?, None)) };
    let current = match store.get(key).await {
        Ok(current) if Id::of_content(&current) == id => return Ok((current, None)),
        Err(e) if !matches!(e, Error::NotFound { .. }) => return Err(e),
        other => other,
    };
    for version in store.versions(key).await? {
        let bytes = store.get_version(key, &version, None).await?;
        if Id::of_content(&bytes) == id {
            tracing::warn!(
                store = %store.describe(),
                key,
                version,
                "an object was written over; reading its original version"
            );
            return Ok((bytes, Some(version)));
        }
    }
    current.map(|bytes| (bytes, None))
}

/// One repository's reads of content-named objects, remembering which were
/// found overwritten so that later ranged reads of them go to the intact version.
#[derive(Clone, Debug)]
pub struct IntactReads {
    store: Arc<dyn ObjectStore>,
    pinned: Arc<Mutex<BTreeMap<String, String>>>,
}

impl IntactReads {
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        IntactReads { store, pinned: Arc::default() }
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    fn pinned(&self, key: &str) -> Option<String> {
        self.pinned.lock().unwrap_or_else(|e| e.into_inner()).get(key).cloned()
    }

    /// Reads of `key` go to `version` from now on (see [`overwritten`](Self::overwritten)).
    pub fn pin(&self, key: &str, version: String) {
        self.pinned.lock().unwrap_or_else(|e| e.into_inner()).insert(key.to_owned(), version);
    }

    /// Reads an object whole, from its intact version if it was overwritten.
    pub async fn get(&self, key: &str) -> Result<Bytes> {
        if let Some(version) = self.pinned(key) {
            return self.store.get_version(key, &version, None).await;
        }
        let (bytes, version) = get(self.store.as_ref(), key).await?;
        if let Some(version) = version {
            self.pin(key, version);
        }
        Ok(bytes)
    }

    /// Reads `range` of an object, from its intact version once one was found.
    pub async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        if let Some(version) = self.pinned(key) {
            return self.store.get_version(key, &version, Some(range)).await;
        }
        match self.store.get_range(key, range.clone()).await {
            // A delete marker hides it: an intact version may still be kept.
            Err(Error::NotFound { .. }) if named_id(key).is_some() && self.recover(key).await? => {
                Box::pin(self.get_range(key, range)).await
            }
            other => other,
        }
    }

    /// [`get_range`](Self::get_range) handed on as it arrives.
    pub async fn get_range_chunks(&self, key: &str, range: Range<u64>) -> Result<Chunks> {
        if let Some(version) = self.pinned(key) {
            return Ok(crate::store::chunks_of(self.store.get_version(key, &version, Some(range)).await?));
        }
        match self.store.get_range_chunks(key, range.clone()).await {
            Err(Error::NotFound { .. }) if named_id(key).is_some() && self.recover(key).await? => {
                Box::pin(self.get_range_chunks(key, range)).await
            }
            other => other,
        }
    }

    /// After a ranged read failed authentication: looks for an intact version
    /// of the whole object. `true` if one was found and later reads use it;
    /// `false` if there is none, or the intact version is already in use (the
    /// damage is then in what was written).
    pub async fn recover(&self, key: &str) -> Result<bool> {
        if self.pinned(key).is_some() {
            return Ok(false);
        }
        let (_, version) = get(self.store.as_ref(), key).await?;
        Ok(version.map(|v| self.pin(key, v)).is_some())
    }

    /// Whether `key` was found written over (and is read from an older version).
    pub fn is_written_over(&self, key: &str) -> bool {
        self.pinned(key).is_some()
    }

    /// The objects found overwritten so far, by key.
    pub fn overwritten(&self) -> Vec<Overwritten> {
        let pinned = self.pinned.lock().unwrap_or_else(|e| e.into_inner());
        pinned.iter().map(|(key, version)| Overwritten { key: key.clone(), version: version.clone() }).collect()
    }
}
