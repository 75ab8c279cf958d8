//! Object stores: where repositories, WAL and the witness lease live.
//!
//! One trait, [`ObjectStore`], with a backend per service (filesystem, S3, Azure
//! Blob). The repository format, the failover witness and the tests depend on the
//! trait only, so one conformance suite checks every backend alike.

pub mod azure;
pub mod error;
pub mod fs;
pub mod location;
pub mod open;
mod remote;
pub mod retry;
pub mod s3;

use std::ops::Range;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

pub use error::{Error, Result};
pub use location::Location;

/// A ranged read's bytes as they arrive ([`ObjectStore::get_range_chunks`]).
pub type Chunks = std::pin::Pin<Box<dyn futures::Stream<Item = Result<Bytes>> + Send>>;

/// Bytes already read, as [`Chunks`].
pub fn chunks_of(bytes: Bytes) -> Chunks {
    Box::pin(futures::stream::once(async { Ok(bytes) }))
}

/// When a write may happen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PutCondition {
    /// Only if no object has the key (repository objects: written once, never rewritten).
    IfAbsent,
    /// Only if the object's current ETag is this one (the witness lease).
    IfMatch(String),
}

/// What a successful write left behind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutOutcome {
    /// The new object's ETag, for a later [`PutCondition::IfMatch`].
    pub etag: String,
    /// Until when the store refuses to delete or overwrite it, if immutable.
    pub retain_until: Option<SystemTime>,
    /// The version the write made, where the store keeps versions and said which.
    pub version: Option<String>,
}

/// An object's metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    pub etag: String,
}

/// Retention of one object as the store itself reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Retention {
    /// The store enforces retention and this object has none in force.
    None,
    /// The store refuses deletion and overwriting until this instant.
    Until(SystemTime),
    /// The backend has no retention at all (filesystem, Azurite).
    Unsupported { why: String },
}

/// A place to keep objects by key. Keys are `/`-separated relative paths such
/// as `data/3f/3f2a…`.
///
/// Implementations retry throttling and 5xx answers with backoff and bound every
/// call with a timeout; the errors they return are final.
#[async_trait]
pub trait ObjectStore: Send + Sync + std::fmt::Debug {
    /// Where the store is, for messages: never includes a credential.
    fn describe(&self) -> String;

    /// Writes `data` under `key` if `condition` holds. With an immutability window
    /// configured, the store locks the object for that window.
    async fn put(&self, key: &str, data: Bytes, condition: PutCondition) -> Result<PutOutcome>;

    /// Reads a whole object.
    async fn get(&self, key: &str) -> Result<Bytes>;

    /// Reads `range` (bytes, end exclusive) of an object.
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes>;

    /// Reads `range` of an object as it arrives, for reads too large to hold
    /// whole. The request is retried as any other; the stream ends with an
    /// error when the connection breaks or a chunk does not come within the
    /// per-attempt timeout, and the reader asks again for what it lacks. It
    /// ends early, without an error, where the object is shorter.
    async fn get_range_chunks(&self, key: &str, range: Range<u64>) -> Result<Chunks> {
        Ok(chunks_of(self.get_range(key, range).await?))
    }

    /// The object's metadata, or `None` if there is no such object.
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>>;

    /// Every object whose key starts with `prefix`, sorted by key.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>>;

    /// Deletes an object; deleting a missing one succeeds. Refused with
    /// [`Error::Immutable`] inside the retention window.
    async fn delete(&self, key: &str) -> Result<()>;

    /// Deletes an object the caller wrote once ([`PutCondition::IfAbsent`]),
    /// from what the write answered, without listing its versions: the version
    /// the write named (its only one), or without one as a plain delete does
    /// (S3: for good on an unversioned bucket; should the answer of a write to
    /// a versioned bucket have been lost, that version stays behind a delete
    /// marker, out of listings).
    async fn delete_written(&self, key: &str, written: &PutOutcome) -> Result<()> {
        let _ = written;
        self.delete(key).await
    }

    /// The retention in force on an object, read back from the store.
    async fn retention(&self, key: &str) -> Result<Retention>;

    /// The ids of the versions the store keeps of an object, newest first (S3
    /// with versioning keeps every version a write replaced); empty where the
    /// store keeps only the current content.
    async fn versions(&self, key: &str) -> Result<Vec<String>> {
        let _ = key;
        Ok(Vec::new())
    }

    /// Reads one version [`versions`](Self::versions) listed: whole, or `range`
    /// of it (bytes, end exclusive).
    async fn get_version(&self, key: &str, version: &str, range: Option<Range<u64>>) -> Result<Bytes> {
        let _ = (version, range);
        Err(Error::Unsupported {
            store: self.describe(),
            what: "reading an older version",
            why: format!("the store keeps only the current content of {key}"),
        })
    }
}
