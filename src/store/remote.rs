//! What the remote backends ([`super::s3`], [`super::azure`]) share around a
//! write: whether the service can lock objects and until when a new object is
//! locked, and how a write whose answer was lost recognises itself on retry.
//!
//! The service calls stay in each backend; this module only holds the decisions
//! and the bookkeeping that would otherwise be written twice.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::{Error, PutOutcome, Result, Retention};

/// Whether the bucket or container can lock objects (S3 Object Lock,
/// Azure version-level immutability), asked once per store.
#[derive(Clone, Debug)]
pub(super) enum LockSupport {
    Available,
    Missing { why: String },
}

impl LockSupport {
    /// `Ok` if objects can be locked; otherwise the error an immutable
    /// repository gets, saying why not.
    pub(super) fn require(&self, store: impl FnOnce() -> String) -> Result<()> {
        match self {
            Self::Available => Ok(()),
            Self::Missing { why } => Err(Error::Unsupported { store: store(), what: "immutability", why: why.clone() }),
        }
    }

    /// The retention of an object that carries no lock (or an expired one).
    pub(super) fn retention_when_unlocked(&self) -> Retention {
        match self {
            Self::Available => Retention::None,
            Self::Missing { why } => Retention::Unsupported { why: why.clone() },
        }
    }
}

/// Until when a write made now must be locked: `None` without an immutability
/// window, and the Unsupported error when the service cannot lock. `support` is
/// awaited only when there is a window, so a mutable repository never asks.
/// `to_service_precision` turns the date into the one the service will store,
/// so the date we report is the date it keeps.
pub(super) async fn retain_until<'a>(
    window: Option<Duration>,
    support: impl Future<Output = Result<&'a LockSupport>>,
    to_service_precision: fn(SystemTime) -> SystemTime,
    store: impl FnOnce() -> String,
) -> Result<Option<SystemTime>> {
    let Some(window) = window else { return Ok(None) };
    support.await?.require(store)?;
    Ok(Some(to_service_precision(SystemTime::now() + window)))
}

/// The BLAKE3 hash of an object's content, hex, as stored in its metadata so that
/// a write whose answer was lost can recognise itself on retry.
pub(super) fn content_hash(data: &Bytes) -> String {
    blake3::hash(data).to_hex().to_string()
}

/// An object's properties as far as the store cares.
pub(super) struct Properties {
    pub(super) size: u64,
    pub(super) etag: String,
    /// The [`content_hash`] written with the object, if it has one.
    pub(super) hash: Option<String>,
    pub(super) retain_until: Option<SystemTime>,
}

impl Properties {
    /// After a lost answer, a conflict may be our own earlier attempt: it is if
    /// the object now there has our content (`hash`).
    pub(super) fn if_written_by_us(self, hash: &str) -> Option<PutOutcome> {
        (self.hash.as_deref() == Some(hash)).then_some(PutOutcome {
            etag: self.etag,
            retain_until: self.retain_until,
            version: None,
        })
    }
}

/// Whether any attempt of one write may have reached the service although none
/// got a good answer, so that a conflict afterwards may be our own write.
#[derive(Default)]
pub(super) struct WriteAttempts {
    /// An attempt is under way. Still set when the next one starts means it was
    /// cut off by its timeout, after it may have sent.
    pending: AtomicBool,
    landed: AtomicBool,
}

impl WriteAttempts {
    /// Runs one attempt, `send`, noting whether it may have landed: it was cut
    /// off, or it failed in a way that `may_have_landed` says could come after
    /// the request reached the service. Call it inside the retried closure, so
    /// that each attempt is counted as it starts.
    pub(super) fn attempt<T, E, F>(
        &self,
        send: F,
        may_have_landed: fn(&E) -> bool,
    ) -> impl Future<Output = std::result::Result<T, E>>
    where
        F: Future<Output = std::result::Result<T, E>>,
    {
        if self.pending.swap(true, Ordering::SeqCst) {
            self.landed.store(true, Ordering::SeqCst);
        }
        async move {
            let result = send.await;
            self.pending.store(false, Ordering::SeqCst);
            if result.as_ref().is_err_and(may_have_landed) {
                self.landed.store(true, Ordering::SeqCst);
            }
            result
        }
    }

    /// Whether some attempt may have written.
    pub(super) fn may_have_landed(&self) -> bool {
        self.landed.load(Ordering::SeqCst)
    }
}

/// A response body's chunks as a store's [`super::Chunks`]: a chunk that does
/// not come within `limit`, or a broken body, ends them with an error naming
/// the store and the key.
pub(super) fn arriving<S, E>(body: S, limit: Duration, store: String, key: &str) -> super::Chunks
where
    S: futures::Stream<Item = std::result::Result<Bytes, E>> + Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    use futures::StreamExt;
    // NB: the names ride along and go into the error only: a body comes in
    // chunks of a few KiB.
    let state = Some((Box::pin(body), store, key.to_owned()));
    Box::pin(futures::stream::unfold(state, move |state| async move {
        let (mut body, store, key) = state?;
        let source = match tokio::time::timeout(limit, body.next()).await {
            Ok(None) => return None,
            Ok(Some(Ok(chunk))) => return Some((Ok(chunk), Some((body, store, key)))),
            Ok(Some(Err(e))) => std::io::Error::other(e),
            Err(_) => {
                let why = format!("no data for {:.1}s in the middle of an answer", limit.as_secs_f64());
                std::io::Error::new(std::io::ErrorKind::TimedOut, why)
            }
        };
        Some((Err(Error::Io { store, operation: "read", key, source }), None))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_attempt_cut_off_or_failed_after_sending_may_have_landed() {
        let sent = |_: &()| true;
        let attempts = WriteAttempts::default();
        let _ = attempts.attempt(async { Ok::<(), ()>(()) }, sent).await;
        assert!(!attempts.may_have_landed());
        // Started but never finished: the next attempt finds it pending.
        drop(attempts.attempt(async { Ok::<(), ()>(()) }, sent));
        let _ = attempts.attempt(async { Ok::<(), ()>(()) }, sent).await;
        assert!(attempts.may_have_landed());

        let attempts = WriteAttempts::default();
        let _ = attempts.attempt(async { Err::<(), ()>(()) }, |_| false).await;
        assert!(!attempts.may_have_landed());
        let _ = attempts.attempt(async { Err::<(), ()>(()) }, sent).await;
        assert!(attempts.may_have_landed());
    }

    #[tokio::test]
    async fn without_a_window_support_is_never_asked() {
        let missing = LockSupport::Missing { why: "no lock".to_owned() };
        // Asked, this would fail the call.
        let unanswered =
            async { Err::<&LockSupport, _>(Error::NotFound { store: "s".to_owned(), key: "k".to_owned() }) };
        assert_eq!(retain_until(None, unanswered, |t| t, || "store".to_owned()).await.unwrap(), None);
        let err = retain_until(Some(Duration::from_secs(1)), async { Ok(&missing) }, |t| t, || "store".to_owned())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Unsupported { what: "immutability", .. }), "{err}");
    }
}
