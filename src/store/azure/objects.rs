//! The [`ObjectStore`] operations of [`AzureStore`].

use std::collections::HashMap;
use std::ops::Range;
use std::time::SystemTime;

use async_trait::async_trait;
use azure_core::http::{Etag, NoFormat, RequestContent};
use azure_core::time::OffsetDateTime;
use azure_storage_blob::models::{
    BlobClientDownloadOptions, BlobClientUploadOptions, BlobContainerClientListBlobsOptions, HttpRange,
    ImmutabilityPolicyMode, ListBlobsResponse,
};
use bytes::Bytes;
use futures::StreamExt as _;

use super::failure::{BLOB_IMMUTABLE, may_have_landed};
use super::{AzureStore, HASH_META, etag_text, whole_seconds};
use crate::store::remote::{self, WriteAttempts, content_hash, retain_until};
use crate::store::{Chunks, Error, ObjectMeta, ObjectStore, PutCondition, PutOutcome, Result, Retention, chunks_of};

#[async_trait]
impl ObjectStore for AzureStore {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    async fn put(&self, key: &str, data: Bytes, condition: PutCondition) -> Result<PutOutcome> {
        let blob = self.blob(key)?;
        let retain_until = retain_until(self.immutability, self.support(), whole_seconds, || self.describe()).await?;
        let hash = content_hash(&data);
        let attempts = WriteAttempts::default();
        let result = self
            .call(|| {
                let mut options = BlobClientUploadOptions {
                    metadata: Some(HashMap::from([(HASH_META.to_owned(), hash.clone())])),
                    ..Default::default()
                };
                match &condition {
                    PutCondition::IfAbsent => options.if_none_match = Some(Etag::from("*")),
                    PutCondition::IfMatch(etag) => options.if_match = Some(Etag::from(format!("\"{etag}\""))),
                }
                if let Some(until) = retain_until {
                    options.immutability_policy_expiry = Some(OffsetDateTime::from(until));
                    // Locked, not Unlocked: an unlocked policy can be shortened or
                    // deleted by whoever holds the immutability permission, which
                    // our own credential must have to set policies at all; a leaked
                    // credential could then unlock and delete the backups. A locked
                    // policy can only be extended, and the window is bounded by the
                    // config, so a mistake costs storage for at most that window.
                    options.immutability_policy_mode = Some(ImmutabilityPolicyMode::Locked);
                }
                let content: RequestContent<Bytes, NoFormat> = data.clone().into();
                attempts.attempt(blob.upload(content, Some(options)), may_have_landed)
            })
            .await;
        let f = match result {
            Ok(rsp) => return Ok(PutOutcome { etag: etag_text(rsp.etag.as_ref()), retain_until, version: None }),
            Err(f) => f,
        };
        let conflict = matches!(f.status(), Some(409 | 412)) && f.code() != Some(BLOB_IMMUTABLE);
        if conflict
            && attempts.may_have_landed()
            && let Some(outcome) = self.own_earlier_write(&blob, key, &hash).await?
        {
            return Ok(outcome);
        }
        Err(match (&condition, f.status()) {
            (PutCondition::IfAbsent, _) if conflict => {
                Error::AlreadyExists { store: self.describe(), key: key.to_owned() }
            }
            // 404: the version we expected is gone altogether.
            (PutCondition::IfMatch(_), Some(404 | 412)) => {
                Error::PreconditionFailed { store: self.describe(), key: key.to_owned() }
            }
            _ => f.into_error(self.describe(), "write", key),
        })
    }

    async fn get(&self, key: &str) -> Result<Bytes> {
        let blob = self.blob(key)?;
        self.call(|| async { blob.download(None).await?.body.collect().await })
            .await
            .map_err(|f| f.into_error(self.describe(), "read", key))
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        let blob = self.blob(key)?;
        if range.start >= range.end {
            return Ok(Bytes::new());
        }
        let result = self.call(|| async { blob.download(Some(ranged(&range))).await?.body.collect().await }).await;
        match result {
            Ok(bytes) => Ok(bytes),
            // 416: the range starts at or past the end; clamped, that is nothing.
            Err(f) if f.status() == Some(416) => Ok(Bytes::new()),
            Err(f) => Err(f.into_error(self.describe(), "read", key)),
        }
    }

    async fn get_range_chunks(&self, key: &str, range: Range<u64>) -> Result<Chunks> {
        let blob = self.blob(key)?;
        if range.start >= range.end {
            return Ok(chunks_of(Bytes::new()));
        }
        match self.call(|| blob.download(Some(ranged(&range)))).await {
            Ok(answer) => Ok(remote::arriving(answer.body, self.retry.attempt_timeout, self.describe(), key)),
            Err(f) if f.status() == Some(416) => Ok(chunks_of(Bytes::new())),
            Err(f) => Err(f.into_error(self.describe(), "read", key)),
        }
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        let blob = self.blob(key)?;
        let props = self.properties(&blob, key).await?;
        Ok(props.map(|p| ObjectMeta { key: key.to_owned(), size: p.size, etag: p.etag }))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let full_prefix = format!("{}{prefix}", self.prefix);
        let mut marker: Option<String> = None;
        let mut out = Vec::new();
        loop {
            // One page per call, so a retry repeats one page, not the listing.
            let page = self
                .call(|| async {
                    let options = BlobContainerClientListBlobsOptions {
                        prefix: Some(full_prefix.clone()).filter(|p| !p.is_empty()),
                        marker: marker.clone(),
                        ..Default::default()
                    };
                    match self.container.list_blobs(Some(options))?.into_pages().next().await {
                        Some(page) => page?.into_model(),
                        None => Ok(ListBlobsResponse::default()),
                    }
                })
                .await
                .map_err(|f| f.into_error(self.describe(), "list", prefix))?;
            for item in page.blob_items {
                let Some(key) = item.name.as_deref().and_then(|n| n.strip_prefix(&self.prefix)) else { continue };
                let props = item.properties.as_ref();
                out.push(ObjectMeta {
                    key: key.to_owned(),
                    size: props.and_then(|p| p.content_length).unwrap_or(0),
                    etag: etag_text(props.and_then(|p| p.etag.as_ref())),
                });
            }
            match page.next_marker {
                Some(next) if !next.is_empty() => marker = Some(next),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let blob = self.blob(key)?;
        match self.call(|| blob.delete(None)).await {
            Ok(_) => Ok(()),
            // Missing, or deleted by an attempt whose answer was lost.
            Err(f) if f.status() == Some(404) => Ok(()),
            Err(f) if f.code() == Some(BLOB_IMMUTABLE) => {
                let until = self.properties(&blob, key).await.ok().flatten().and_then(|p| p.retain_until);
                Err(Error::Immutable { store: self.describe(), key: key.to_owned(), until })
            }
            Err(f) => Err(f.into_error(self.describe(), "delete", key)),
        }
    }

    async fn retention(&self, key: &str) -> Result<Retention> {
        let blob = self.blob(key)?;
        let props = self
            .properties(&blob, key)
            .await?
            .ok_or_else(|| Error::NotFound { store: self.describe(), key: key.to_owned() })?;
        if let Some(until) = props.retain_until {
            return Ok(if until > SystemTime::now() { Retention::Until(until) } else { Retention::None });
        }
        Ok(self.support().await?.retention_when_unlocked())
    }
}

fn ranged(range: &Range<u64>) -> BlobClientDownloadOptions<'static> {
    BlobClientDownloadOptions { range: Some(HttpRange::from(range.clone())), ..Default::default() }
}
