//! The S3 backend, on the AWS SDK (`aws-sdk-s3`), for AWS and any S3-compatible
//! service (MinIO, Ceph RGW, moto in the tests).
//!
//! Objects are named `<prefix>/<key>` in one bucket. Writes are conditional
//! (`If-None-Match: *`, `If-Match`) and, with an immutability window, carry an
//! Object Lock retention in COMPLIANCE mode. Retries are ours ([`with_retries`],
//! driven by the [`RetryPolicy`] in the config, which also bounds each attempt);
//! the SDK's own retry is switched off so the two never multiply.
//!
//! NB: on a versioned bucket (every Object Lock bucket is one) a plain DELETE only
//! adds a delete marker and an overwrite only stacks a new version: the data
//! survives both. So [`ObjectStore::delete`] removes every version of the key, and
//! an `If-Match` overwrite of an object under retention is refused here, before S3
//! would quietly put a new version on top of the locked one.
//!
//! NB: no rustls crypto provider has to be installed at start-up for this
//! backend: the SDK's default HTTPS client builds its rustls config with an
//! explicit aws-lc-rs provider (`builder_with_provider`), never with the
//! process-wide default.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::ops::Range;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_config::meta::region::RegionProviderChain;
use aws_config::retry::RetryConfig;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{Credentials, Region, RequestChecksumCalculation};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::get_object::builders::GetObjectFluentBuilder;
use aws_sdk_s3::primitives::{ByteStream, ByteStreamError, DateTime};
use aws_sdk_s3::types::{
    BucketLocationConstraint, BucketVersioningStatus, ChecksumAlgorithm, CreateBucketConfiguration, ObjectLockEnabled,
    ObjectLockLegalHoldStatus, ObjectLockMode, VersioningConfiguration,
};
use aws_smithy_types::retry::ErrorKind;
use bytes::Bytes;
use tokio::sync::OnceCell;

use super::error::check_key;
use super::remote::{self, LockSupport, Properties, WriteAttempts, content_hash, retain_until};
use super::retry::{GaveUp, LastFailure, RetryPolicy, with_retries};
use super::{Chunks, Error, Location, ObjectMeta, ObjectStore, PutCondition, PutOutcome, Result, Retention, chunks_of};
use crate::error_chain::error_chain;

/// User metadata entry (`x-amz-meta-fenice-blake3`) holding the
/// [`content_hash`](super::remote::content_hash).
const HASH_META: &str = "fenice-blake3";

/// The region when none is configured anywhere; S3-compatible services mostly
/// ignore it, but SigV4 needs one.
const FALLBACK_REGION: &str = "us-east-1";

/// Where and how to reach a bucket.
#[derive(Clone, Debug)]
pub struct S3Config {
    pub bucket: String,
    /// Key prefix inside the bucket, without leading or trailing `/`; may be empty.
    pub prefix: String,
    /// An S3-compatible endpoint such as `https://minio.example:9000`. When `None`,
    /// the SDK's own resolution applies: `AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`,
    /// the profile, then AWS itself.
    pub endpoint: Option<String>,
    /// When `None`: `AWS_REGION`, the profile, IMDS, then `us-east-1`.
    pub region: Option<String>,
    /// Address buckets as `endpoint/bucket` rather than `bucket.endpoint`; most
    /// S3-compatible services need it.
    pub force_path_style: bool,
    /// Lock every written object for this long (Object Lock, COMPLIANCE mode).
    pub immutability: Option<Duration>,
    pub retry: RetryPolicy,
    /// Fixed credentials. When `None`, the standard AWS chain: environment,
    /// profile, web identity (IRSA), ECS and EC2 instance metadata.
    pub credentials: Option<StaticCredentials>,
}

impl S3Config {
    /// A config for `bucket` with no prefix, AWS's own endpoint and the standard
    /// credential chain, no immutability and the default retries.
    pub fn new(bucket: impl Into<String>) -> Self {
        Self {
            bucket: bucket.into(),
            prefix: String::new(),
            endpoint: None,
            region: None,
            force_path_style: false,
            immutability: None,
            retry: RetryPolicy::default(),
            credentials: None,
        }
    }
}

/// An access key pair given explicitly (tests, the lab, services outside AWS).
/// Its `Debug` never shows the keys.
#[derive(Clone)]
pub struct StaticCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StaticCredentials([redacted])")
    }
}

/// A bucket (and prefix) in S3 or an S3-compatible service.
pub struct S3Store {
    client: Client,
    bucket: String,
    /// `""` or `"some/prefix/"`.
    prefix: String,
    /// The region requests are signed for (and buckets created in).
    region: String,
    describe: String,
    immutability: Option<Duration>,
    retry: RetryPolicy,
    lock: OnceCell<LockSupport>,
    /// Set once the bucket was seen to exist: a HEAD answers a bare 404 for a
    /// missing bucket and for a missing key alike.
    bucket_seen: OnceCell<()>,
}

impl fmt::Debug for S3Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Store")
            .field("at", &self.describe)
            .field("immutability", &self.immutability)
            .finish_non_exhaustive()
    }
}

/// What a HEAD tells: the properties every backend reads, plus Object Lock's
/// legal hold, which locks a version regardless of any date.
struct Head {
    props: Properties,
    legal_hold: bool,
}

/// One version (or delete marker) of a key.
struct Version {
    id: String,
    delete_marker: bool,
}

impl S3Store {
    /// Checks the config and sets up the client, loading the region and the
    /// credential chain. Does not contact the service: the first call does, and
    /// reports an unreachable endpoint then.
    pub async fn connect(config: S3Config) -> Result<Self> {
        let prefix = config.prefix.trim_matches('/').to_owned();
        let location = Location::S3 { bucket: config.bucket.clone(), prefix: prefix.clone() }.to_string();
        let invalid = |why: String| Error::InvalidLocation { location: location.clone(), why };
        if config.bucket.is_empty() || config.bucket.contains('/') {
            return Err(invalid("name the bucket, without `/`: s3://bucket/prefix".to_owned()));
        }
        if !prefix.is_empty() {
            check_key(&prefix).map_err(|_| invalid(format!("prefix {prefix:?} is not a relative path")))?;
        }
        if let Some(endpoint) = &config.endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return Err(invalid(format!(
                "endpoint {} is not an http:// or https:// URL",
                endpoint_for_messages(endpoint)
            )));
        }

        let region = RegionProviderChain::first_try(config.region.clone().map(Region::new))
            .or_default_provider()
            .or_else(Region::from_static(FALLBACK_REGION));
        // NB: retries are ours (with_retries), so the SDK must not retry too.
        let mut loader =
            aws_config::defaults(BehaviorVersion::latest()).region(region).retry_config(RetryConfig::disabled());
        if let Some(endpoint) = &config.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        if let Some(c) = &config.credentials {
            loader = loader.credentials_provider(Credentials::new(
                &c.access_key_id,
                &c.secret_access_key,
                c.session_token.clone(),
                None,
                "fenice-static",
            ));
        }
        let sdk = loader.load().await;
        let region = sdk.region().map_or_else(|| FALLBACK_REGION.to_owned(), ToString::to_string);
        let s3 = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(config.force_path_style)
            // NB: Object Lock writes are refused without an integrity checksum. The
            // default computes one for every PUT, but AWS_REQUEST_CHECKSUM_CALCULATION
            // =when_required or a profile could switch that off; this cannot.
            .request_checksum_calculation(RequestChecksumCalculation::WhenSupported)
            .build();

        // The endpoint the SDK will use, in the same order it picks one.
        let endpoint = config
            .endpoint
            .clone()
            .or_else(|| std::env::var("AWS_ENDPOINT_URL_S3").ok().filter(|e| !e.is_empty()))
            .or_else(|| sdk.endpoint_url().map(str::to_owned))
            .map_or_else(|| format!("AWS S3 in {region}"), |e| endpoint_for_messages(&e));
        Ok(Self {
            client: Client::from_conf(s3),
            bucket: config.bucket,
            prefix: if prefix.is_empty() { String::new() } else { format!("{prefix}/") },
            region,
            describe: format!("{location} at {endpoint}"),
            immutability: config.immutability,
            retry: config.retry,
            lock: OnceCell::new(),
            bucket_seen: OnceCell::new(),
        })
    }

    /// Creates the bucket, with versioning and Object Lock when `object_lock`; a
    /// bucket that already exists and is ours is fine, but then it must already
    /// have Object Lock if asked for (S3 can only switch it on at creation, or
    /// through a support-side migration). For tests, the lab and `fenice repo init`.
    pub async fn create_bucket(&self, object_lock: bool) -> Result<()> {
        let operation = "create bucket";
        let result = self
            .call(|| {
                let mut request = self.client.create_bucket().bucket(&self.bucket);
                // NB: us-east-1 is the one region that refuses its own name as a constraint.
                if self.region != FALLBACK_REGION {
                    let constraint = BucketLocationConstraint::from(self.region.as_str());
                    request = request.create_bucket_configuration(
                        CreateBucketConfiguration::builder().location_constraint(constraint).build(),
                    );
                }
                if object_lock {
                    request = request.object_lock_enabled_for_bucket(true);
                }
                async move { request.send().await.map_err(Failed::from) }
            })
            .await;
        match result {
            // NB: in us-east-1, AWS (and moto) answer 200 for a bucket we already
            // own, so success does not mean "new"; the Object Lock check below is
            // what tells an old bucket without it apart.
            Ok(_) => {}
            // Also what a retry sees when the first attempt's answer was lost.
            Err(f) if f.code() == Some("BucketAlreadyOwnedByYou") => {}
            Err(f) if f.code() == Some("BucketAlreadyExists") => {
                return Err(Error::Service {
                    store: self.describe(),
                    operation,
                    key: self.bucket.clone(),
                    message: "the bucket name is taken by another account (bucket names are global); pick another"
                        .to_owned(),
                });
            }
            Err(f) => return Err(self.error(f, operation, &self.bucket)),
        }
        if !object_lock {
            return Ok(());
        }
        self.object_lock().await?.require(|| self.describe())?;
        // Object Lock switches versioning on by itself on AWS; saying so again is
        // harmless and covers services that do not.
        self.call(|| {
            let versioning = VersioningConfiguration::builder().status(BucketVersioningStatus::Enabled).build();
            let request = self.client.put_bucket_versioning().bucket(&self.bucket).versioning_configuration(versioning);
            async move { request.send().await.map_err(Failed::from) }
        })
        .await
        .map_err(|f| self.error(f, "enable versioning", &self.bucket))?;
        Ok(())
    }

    /// Runs one SDK call with our retries and per-attempt timeout.
    async fn call<T, F, Fut>(&self, op: F) -> std::result::Result<T, Failure>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<T, Failed>>,
    {
        with_retries(&self.retry, op, Failed::is_transient).await.map_err(Failure::from)
    }

    fn full_key(&self, key: &str) -> Result<String> {
        check_key(key)?;
        Ok(format!("{}{key}", self.prefix))
    }

    /// The store error for a failure the caller did not sort out itself.
    fn error(&self, failure: Failure, operation: &'static str, key: &str) -> Error {
        let store = self.describe();
        let key = key.to_owned();
        let attempts = failure.attempts;
        let f = match failure.last {
            LastFailure::TimedOut(limit) => {
                let reason = format!("no answer within {:.1}s per attempt", limit.as_secs_f64());
                return Error::Unreachable { store, attempts, reason };
            }
            LastFailure::Failed(f) => f,
        };
        let status = match f.cause {
            Cause::NoAnswer => return Error::Unreachable { store, attempts, reason: f.detail },
            Cause::Local => return Error::Service { store, operation, key, message: f.detail },
            Cause::Answer { status } => status,
        };
        match (status, f.code.as_deref().unwrap_or("")) {
            (_, "NoSuchBucket") => Error::Service { store, operation, key, message: self.no_such_bucket() },
            (_, "AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "ExpiredToken") | (401 | 403, _) => {
                Error::Denied { store, operation, key }
            }
            (404, _) => Error::NotFound { store, key },
            (501, _) | (_, "NotImplemented") => Error::Unsupported {
                store,
                what: operation,
                why: format!("the service does not implement it: {}", f.detail),
            },
            _ if f.is_transient() => Error::Service {
                store,
                operation,
                key,
                message: format!("the service still answered {} after {attempts} attempts", f.detail),
            },
            _ => Error::Service { store, operation, key, message: f.detail },
        }
    }

    fn no_such_bucket(&self) -> String {
        format!(
            "bucket {} does not exist; create it (`fenice repo init`), or check the bucket name, the region ({}) and \
             the endpoint",
            self.bucket, self.region
        )
    }

    /// The object's properties, or `None` if there is no such object.
    async fn properties(&self, full: &str, key: &str, version: Option<&str>) -> Result<Option<Head>> {
        let result = self
            .call(|| {
                let request =
                    self.client.head_object().bucket(&self.bucket).key(full).set_version_id(version.map(str::to_owned));
                async move { request.send().await.map_err(Failed::from) }
            })
            .await;
        let out = match result {
            Ok(out) => out,
            Err(f) if f.status() == Some(404) => {
                self.confirm_bucket().await?;
                return Ok(None);
            }
            Err(f) => return Err(self.error(f, "read metadata", key)),
        };
        self.bucket_seen.get_or_init(|| async {}).await;
        let retain_until = match out.object_lock_retain_until_date() {
            None => None,
            Some(date) => Some(SystemTime::try_from(*date).map_err(|_| Error::Service {
                store: self.describe(),
                operation: "read metadata",
                key: key.to_owned(),
                message: format!("the service sent an unreadable retain-until date {date}"),
            })?),
        };
        Ok(Some(Head {
            props: Properties {
                size: out.content_length().and_then(|n| u64::try_from(n).ok()).unwrap_or(0),
                etag: etag_text(out.e_tag()),
                hash: out.metadata().and_then(|m| m.get(HASH_META)).cloned(),
                retain_until,
            },
            legal_hold: out.object_lock_legal_hold_status() == Some(&ObjectLockLegalHoldStatus::On),
        }))
    }

    /// Makes sure a 404 meant "no such key", not "no such bucket". Asked until
    /// the bucket has been seen once.
    async fn confirm_bucket(&self) -> Result<()> {
        self.bucket_seen
            .get_or_try_init(|| async {
                let result = self
                    .call(|| {
                        let request = self.client.head_bucket().bucket(&self.bucket);
                        async move { request.send().await.map_err(Failed::from) }
                    })
                    .await;
                match result {
                    Ok(_) => Ok(()),
                    Err(f) if f.status() == Some(404) => Err(Error::Service {
                        store: self.describe(),
                        operation: "read bucket",
                        key: self.bucket.clone(),
                        message: self.no_such_bucket(),
                    }),
                    Err(f) => Err(self.error(f, "read bucket", &self.bucket)),
                }
            })
            .await
            .map(|_| ())
    }

    /// Whether the bucket has Object Lock. Asked once; a failed ask is not remembered.
    async fn object_lock(&self) -> Result<&LockSupport> {
        self.lock
            .get_or_try_init(|| async {
                let operation = "read Object Lock configuration";
                let result = self
                    .call(|| {
                        let request = self.client.get_object_lock_configuration().bucket(&self.bucket);
                        async move { request.send().await.map_err(Failed::from) }
                    })
                    .await;
                let missing = LockSupport::Missing {
                    why: format!(
                        "bucket {} has no Object Lock; create a bucket with Object Lock enabled (`fenice repo init` \
                         does), or disable immutability for this repository",
                        self.bucket
                    ),
                };
                match result {
                    Ok(out) => {
                        let enabled = out.object_lock_configuration().and_then(|c| c.object_lock_enabled());
                        Ok(if enabled == Some(&ObjectLockEnabled::Enabled) { LockSupport::Available } else { missing })
                    }
                    Err(f) if f.code() == Some("ObjectLockConfigurationNotFoundError") => Ok(missing),
                    Err(f) => Err(self.error(f, operation, &self.bucket)),
                }
            })
            .await
    }

    /// After a lost answer, a conflict may be our own earlier attempt: it is if
    /// the object now there has our content.
    async fn own_earlier_write(&self, full: &str, key: &str, hash: &str) -> Result<Option<PutOutcome>> {
        Ok(self.properties(full, key, None).await?.and_then(|h| h.props.if_written_by_us(hash)))
    }

    /// Refuses an `If-Match` overwrite the service would let through but must
    /// not: S3 puts a new version on top of a locked one instead of refusing.
    async fn check_overwrite(&self, full: &str, key: &str, expected: &str) -> Result<()> {
        let refused = |e: Error| Err(e);
        match self.properties(full, key, None).await? {
            None => refused(Error::PreconditionFailed { store: self.describe(), key: key.to_owned() }),
            Some(h) if h.props.etag != expected => {
                refused(Error::PreconditionFailed { store: self.describe(), key: key.to_owned() })
            }
            Some(h) if h.legal_hold || h.props.retain_until.is_some_and(|t| t > SystemTime::now()) => {
                refused(Error::Immutable { store: self.describe(), key: key.to_owned(), until: h.props.retain_until })
            }
            Some(_) => Ok(()),
        }
    }

    /// Every version and delete marker of exactly `full`, oldest data first and
    /// delete markers last, so that a refused deletion stops before the current
    /// version and leaves the object readable.
    async fn all_versions(&self, full: &str, key: &str) -> Result<Vec<Version>> {
        let mut data = Vec::new();
        let mut markers = Vec::new();
        let mut key_marker: Option<String> = None;
        let mut version_marker: Option<String> = None;
        loop {
            // One page per call, so a retry repeats one page, not the listing.
            let page = self
                .call(|| {
                    let request = self
                        .client
                        .list_object_versions()
                        .bucket(&self.bucket)
                        .prefix(full)
                        .set_key_marker(key_marker.clone())
                        .set_version_id_marker(version_marker.clone());
                    async move { request.send().await.map_err(Failed::from) }
                })
                .await
                .map_err(|f| self.error(f, "list versions", key))?;
            // Keys come sorted and `full` sorts before every longer key it prefixes.
            let mut past = false;
            for v in page.versions() {
                match (v.key(), v.version_id()) {
                    (Some(k), Some(id)) if k == full => data.push(Version { id: id.to_owned(), delete_marker: false }),
                    _ => past = true,
                }
            }
            for m in page.delete_markers() {
                if let (Some(k), Some(id)) = (m.key(), m.version_id())
                    && k == full
                {
                    markers.push(Version { id: id.to_owned(), delete_marker: true });
                }
            }
            if past || page.is_truncated() != Some(true) {
                break;
            }
            key_marker = page.next_key_marker().map(str::to_owned);
            version_marker = page.next_version_id_marker().map(str::to_owned);
            if key_marker.as_deref().is_some_and(|k| k != full) {
                break;
            }
        }
        // Listed newest first.
        data.reverse();
        data.extend(markers);
        Ok(data)
    }

    /// Reads the current or one version of an object, whole or `range` of it.
    async fn read(&self, key: &str, version: Option<&str>, range: Option<Range<u64>>) -> Result<Bytes> {
        let full = self.full_key(key)?;
        if range.as_ref().is_some_and(|r| r.start >= r.end) {
            return Ok(Bytes::new());
        }
        let result = self
            .call(|| {
                let request = self.get_request(&full, version, range.clone());
                async move {
                    let out = request.send().await.map_err(Failed::from)?;
                    out.body.collect().await.map(|b| b.into_bytes()).map_err(Failed::body)
                }
            })
            .await;
        match result {
            Ok(bytes) => Ok(bytes),
            // 416: the range starts at or past the end; clamped, that is nothing.
            Err(f) if f.status() == Some(416) => Ok(Bytes::new()),
            Err(f) => Err(self.error(f, "read", key)),
        }
    }

    fn get_request(&self, full: &str, version: Option<&str>, range: Option<Range<u64>>) -> GetObjectFluentBuilder {
        let header = range.map(|r| format!("bytes={}-{}", r.start, r.end - 1));
        let request = self.client.get_object().bucket(&self.bucket).key(full);
        request.set_version_id(version.map(str::to_owned)).set_range(header)
    }

    /// Deletes one version of an object, or without `version` the object as a
    /// plain DELETE does (for good on an unversioned bucket); a refusal is
    /// immutability when the version is under retention or legal hold, and
    /// missing permissions otherwise.
    async fn delete_version(&self, full: &str, key: &str, version: Option<&Version>) -> Result<()> {
        let id = version.map(|v| v.id.clone());
        let result = self
            .call(|| {
                let request = self.client.delete_object().bucket(&self.bucket).key(full).set_version_id(id.clone());
                async move { request.send().await.map_err(Failed::from) }
            })
            .await;
        let f = match result {
            Ok(_) => return Ok(()),
            Err(f) => f,
        };
        // NB: S3 (and moto) refuse a locked version with 403 AccessDenied, the same
        // answer as for missing permissions; the version's own lock tells them apart.
        if f.status() != Some(403) && f.code() != Some("AccessDenied") {
            return Err(self.error(f, "delete", key));
        }
        if version.is_some_and(|v| v.delete_marker) {
            return Err(Error::Denied { store: self.describe(), operation: "delete", key: key.to_owned() });
        }
        match self.properties(full, key, id.as_deref()).await {
            Ok(Some(h)) if !h.legal_hold && h.props.retain_until.is_none_or(|t| t <= SystemTime::now()) => {
                Err(Error::Denied { store: self.describe(), operation: "delete", key: key.to_owned() })
            }
            Ok(h) => Err(Error::Immutable {
                store: self.describe(),
                key: key.to_owned(),
                until: h.and_then(|h| h.props.retain_until),
            }),
            // Refused, and the version cannot be read either: say what is most likely.
            Err(_) => Err(Error::Immutable { store: self.describe(), key: key.to_owned(), until: None }),
        }
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    async fn put(&self, key: &str, data: Bytes, condition: PutCondition) -> Result<PutOutcome> {
        let full = self.full_key(key)?;
        let retain_until =
            retain_until(self.immutability, self.object_lock(), whole_seconds, || self.describe()).await?;
        if let PutCondition::IfMatch(expected) = &condition {
            self.check_overwrite(&full, key, expected).await?;
        }
        let hash = content_hash(&data);
        let attempts = WriteAttempts::default();
        let result = self
            .call(|| {
                let mut request = self
                    .client
                    .put_object()
                    .bucket(&self.bucket)
                    .key(&full)
                    .body(ByteStream::from(data.clone()))
                    .metadata(HASH_META, &hash)
                    // Named, not left to the SDK's default, so that the integrity checksum
                    // Object Lock writes need (S3 and moto accept `x-amz-sdk-checksum-algorithm`
                    // with its `x-amz-checksum-crc32` in place of Content-MD5) stays put.
                    .checksum_algorithm(ChecksumAlgorithm::Crc32);
                request = match &condition {
                    PutCondition::IfAbsent => request.if_none_match("*"),
                    PutCondition::IfMatch(etag) => request.if_match(format!("\"{etag}\"")),
                };
                if let Some(until) = retain_until {
                    // COMPLIANCE, not GOVERNANCE: governance retention can be lifted by
                    // anyone holding s3:BypassGovernanceRetention, which a leaked
                    // credential might; compliance retention by nobody.
                    request = request
                        .object_lock_mode(ObjectLockMode::Compliance)
                        .object_lock_retain_until_date(DateTime::from(until));
                }
                attempts.attempt(async move { request.send().await.map_err(Failed::from) }, Failed::may_have_landed)
            })
            .await;
        let f = match result {
            Ok(out) => {
                let version = out.version_id().map(str::to_owned);
                return Ok(PutOutcome { etag: etag_text(out.e_tag()), retain_until, version });
            }
            Err(f) => f,
        };
        // 412: the condition failed; 409 ConditionalRequestConflict: a concurrent
        // conditional write to the same key won.
        let conflict = matches!(f.status(), Some(409 | 412));
        if conflict
            && attempts.may_have_landed()
            && let Some(outcome) = self.own_earlier_write(&full, key, &hash).await?
        {
            return Ok(outcome);
        }
        Err(match (&condition, f.status()) {
            (PutCondition::IfAbsent, _) if conflict => {
                Error::AlreadyExists { store: self.describe(), key: key.to_owned() }
            }
            // 404: the version we expected is gone altogether (moto answers so).
            (PutCondition::IfMatch(_), Some(404 | 409 | 412)) if f.code() != Some("NoSuchBucket") => {
                Error::PreconditionFailed { store: self.describe(), key: key.to_owned() }
            }
            _ => self.error(f, "write", key),
        })
    }

    async fn get(&self, key: &str) -> Result<Bytes> {
        self.read(key, None, None).await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        self.read(key, None, Some(range)).await
    }

    async fn get_range_chunks(&self, key: &str, range: Range<u64>) -> Result<Chunks> {
        let full = self.full_key(key)?;
        if range.start >= range.end {
            return Ok(chunks_of(Bytes::new()));
        }
        let result = self
            .call(|| {
                let request = self.get_request(&full, None, Some(range.clone()));
                async move { request.send().await.map_err(Failed::from) }
            })
            .await;
        match result {
            Ok(out) => {
                let body = futures::stream::unfold(out.body, |mut body| async { body.next().await.map(|c| (c, body)) });
                Ok(remote::arriving(body, self.retry.attempt_timeout, self.describe(), key))
            }
            Err(f) if f.status() == Some(416) => Ok(chunks_of(Bytes::new())),
            Err(f) => Err(self.error(f, "read", key)),
        }
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        let full = self.full_key(key)?;
        let head = self.properties(&full, key, None).await?;
        Ok(head.map(|h| ObjectMeta { key: key.to_owned(), size: h.props.size, etag: h.props.etag }))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let full_prefix = format!("{}{prefix}", self.prefix);
        let mut token: Option<String> = None;
        let mut out = Vec::new();
        loop {
            // One page per call, so a retry repeats one page, not the listing.
            let page = self
                .call(|| {
                    let request = self
                        .client
                        .list_objects_v2()
                        .bucket(&self.bucket)
                        .set_prefix(Some(full_prefix.clone()).filter(|p| !p.is_empty()))
                        .set_continuation_token(token.clone());
                    async move { request.send().await.map_err(Failed::from) }
                })
                .await
                .map_err(|f| self.error(f, "list", &format!("prefix {prefix:?}")))?;
            for object in page.contents() {
                let Some(key) = object.key().and_then(|k| k.strip_prefix(&self.prefix)) else { continue };
                out.push(ObjectMeta {
                    key: key.to_owned(),
                    size: object.size().and_then(|n| u64::try_from(n).ok()).unwrap_or(0),
                    etag: etag_text(object.e_tag()),
                });
            }
            match page.next_continuation_token() {
                Some(next) if page.is_truncated() == Some(true) && !next.is_empty() => token = Some(next.to_owned()),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let full = self.full_key(key)?;
        // NB: deleting by version id removes data for good; a DELETE without one
        // would only hide it behind a delete marker on a versioned bucket. On an
        // unversioned bucket the one version is listed with the id "null", which
        // deletes the object as a plain DELETE would.
        for version in self.all_versions(&full, key).await? {
            self.delete_version(&full, key, Some(&version)).await?;
        }
        Ok(())
    }

    // NB: listing versions costs a LIST per delete, and moto copies its whole
    // bucket, data included, for each: 1.7 s of a 2 s incremental backup of
    // 1 GiB was releasing its lock.
    async fn delete_written(&self, key: &str, written: &PutOutcome) -> Result<()> {
        let version = written.version.as_ref().map(|id| Version { id: id.clone(), delete_marker: false });
        self.delete_version(&self.full_key(key)?, key, version.as_ref()).await
    }

    async fn versions(&self, key: &str) -> Result<Vec<String>> {
        let full = self.full_key(key)?;
        let versions = self.all_versions(&full, key).await?;
        // Listed oldest first, delete markers last.
        Ok(versions.into_iter().filter(|v| !v.delete_marker).rev().map(|v| v.id).collect())
    }

    async fn get_version(&self, key: &str, version: &str, range: Option<Range<u64>>) -> Result<Bytes> {
        self.read(key, Some(version), range).await
    }

    async fn retention(&self, key: &str) -> Result<Retention> {
        let full = self.full_key(key)?;
        let Some(h) = self.properties(&full, key, None).await? else {
            return Err(Error::NotFound { store: self.describe(), key: key.to_owned() });
        };
        // NB: read from HEAD (x-amz-object-lock-retain-until-date), not from
        // GetObjectRetention: moto's GetObjectRetention is broken, and HEAD needs
        // no extra permission.
        match h.props.retain_until {
            Some(until) if until > SystemTime::now() => Ok(Retention::Until(until)),
            _ => Ok(self.object_lock().await?.retention_when_unlocked()),
        }
    }
}

/// Where a failed attempt stopped.
#[derive(Debug)]
enum Cause {
    /// The service answered with an error status.
    Answer { status: u16 },
    /// No (whole) answer: the connection failed, broke, or timed out.
    NoAnswer,
    /// Nothing useful was sent: a bad request or config, or no credentials.
    Local,
}

/// One failed attempt, reduced to what the store acts on.
#[derive(Debug)]
struct Failed {
    cause: Cause,
    /// S3's error code (`NoSuchKey`, `SlowDown`, …), when it sent one.
    code: Option<String>,
    /// What went wrong, for messages. Never holds a credential: the SDK's errors
    /// do not carry them, and request URLs are not signed with query strings here.
    detail: String,
}

impl<E> From<SdkError<E, HttpResponse>> for Failed
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
{
    fn from(e: SdkError<E, HttpResponse>) -> Self {
        let code = e.code().map(str::to_owned);
        let cause = match &e {
            SdkError::ServiceError(s) => Cause::Answer { status: s.raw().status().as_u16() },
            SdkError::TimeoutError(_) | SdkError::ResponseError(_) => Cause::NoAnswer,
            SdkError::DispatchFailure(d) if d.is_io() || d.is_timeout() => Cause::NoAnswer,
            // NB: hyper's "connection closed before message completed" (a pooled
            // connection the server closed as it was reused) comes as "other",
            // marked transient by the SDK.
            SdkError::DispatchFailure(d)
                if matches!(
                    d.as_other(),
                    Some(ErrorKind::TransientError | ErrorKind::ThrottlingError | ErrorKind::ServerError)
                ) =>
            {
                Cause::NoAnswer
            }
            _ => Cause::Local,
        };
        let detail = match (&cause, &code) {
            (Cause::Answer { status }, Some(code)) => match e.message() {
                Some(message) => format!("{status} {code} ({message})"),
                None => format!("{status} {code}"),
            },
            (Cause::Answer { status }, None) => format!("HTTP {status}"),
            _ => error_chain(&e),
        };
        Self { cause, code, detail }
    }
}

impl Failed {
    /// A response body that broke off while being read.
    fn body(e: ByteStreamError) -> Self {
        Self { cause: Cause::NoAnswer, code: None, detail: format!("the answer broke off: {}", error_chain(&e)) }
    }

    /// Worth another attempt: throttling (503 SlowDown, 429), server errors and
    /// connections that failed or broke. 501 is a server error that never heals.
    fn is_transient(&self) -> bool {
        match self.cause {
            Cause::NoAnswer => true,
            Cause::Local => false,
            Cause::Answer { status } => {
                matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
                    || matches!(
                        self.code.as_deref(),
                        Some("SlowDown" | "RequestTimeout" | "InternalError" | "ServiceUnavailable" | "Throttling")
                    )
            }
        }
    }

    /// Whether the request may have reached the service (so a write may have
    /// happened even though we got no good answer).
    fn may_have_landed(&self) -> bool {
        !matches!(self.cause, Cause::Local)
    }
}

/// The last failure of a call, after retries.
#[derive(Debug)]
struct Failure {
    attempts: u32,
    last: LastFailure<Failed>,
}

impl From<GaveUp<Failed>> for Failure {
    fn from(gave_up: GaveUp<Failed>) -> Self {
        Self { attempts: gave_up.attempts, last: gave_up.last }
    }
}

impl Failure {
    /// The HTTP status the service answered, if it answered.
    fn status(&self) -> Option<u16> {
        match &self.last {
            LastFailure::Failed(Failed { cause: Cause::Answer { status }, .. }) => Some(*status),
            _ => None,
        }
    }

    /// S3's error code, if it sent one.
    fn code(&self) -> Option<&str> {
        match &self.last {
            LastFailure::Failed(f) => f.code.as_deref(),
            LastFailure::TimedOut(_) => None,
        }
    }
}

/// An ETag without the quotes S3 puts around it.
fn etag_text(etag: Option<&str>) -> String {
    etag.unwrap_or_default().trim_matches('"').to_owned()
}

/// An endpoint fit for messages: no user info, no query.
fn endpoint_for_messages(endpoint: &str) -> String {
    let (scheme, rest) = endpoint.split_once("://").unwrap_or(("", endpoint));
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    // Cut at the last `@` anywhere, not only in the authority: a password with a
    // stray `/` must not leak half of itself as a "path".
    let rest = rest.rsplit_once('@').map_or(rest, |(_, after)| after);
    if scheme.is_empty() { rest.to_owned() } else { format!("{scheme}://{rest}") }
}

/// Retain-until dates travel with second precision; rounding up here makes
/// the date we report the date the service stores, and never locks for less than
/// the window. NB: Azure's backend cuts the fraction off instead, as its service does.
fn whole_seconds(t: SystemTime) -> SystemTime {
    let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() + u64::from(since.subsec_nanos() > 0);
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_credentials_never_show_in_debug() {
        let config = S3Config {
            credentials: Some(StaticCredentials {
                access_key_id: "AKIAEXAMPLEKEYID".to_owned(),
                secret_access_key: "very-secret".to_owned(),
                session_token: Some("session-token".to_owned()),
            }),
            ..S3Config::new("bkt")
        };
        let text = format!("{config:?}");
        assert!(text.contains("[redacted]"), "{text}");
        for secret in ["AKIAEXAMPLEKEYID", "very-secret", "session-token"] {
            assert!(!text.contains(secret), "{text}");
        }
    }

    #[test]
    fn endpoints_in_messages_lose_user_info_and_query() {
        assert_eq!(endpoint_for_messages("https://user:pw@minio.example:9000/?x=1"), "https://minio.example:9000/");
        assert_eq!(endpoint_for_messages("https://user:p/w@minio.example"), "https://minio.example");
        assert_eq!(endpoint_for_messages("http://127.0.0.1:5000"), "http://127.0.0.1:5000");
        assert_eq!(endpoint_for_messages("https://s3.example/base#frag"), "https://s3.example/base");
    }

    #[test]
    fn etags_lose_their_quotes() {
        assert_eq!(etag_text(Some("\"abc\"")), "abc");
        assert_eq!(etag_text(None), "");
    }

    #[test]
    fn retain_until_rounds_up_to_whole_seconds() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_500);
        assert_eq!(whole_seconds(t), SystemTime::UNIX_EPOCH + Duration::from_secs(2));
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(7);
        assert_eq!(whole_seconds(t), t);
    }

    #[test]
    fn throttling_and_server_errors_are_retried_but_not_client_errors() {
        let answer = |status: u16, code: &str| Failed {
            cause: Cause::Answer { status },
            code: Some(code.to_owned()),
            detail: String::new(),
        };
        for (status, code) in
            [(503, "SlowDown"), (429, "TooManyRequests"), (500, "InternalError"), (400, "RequestTimeout")]
        {
            assert!(answer(status, code).is_transient(), "{status} {code}");
        }
        for (status, code) in
            [(403, "AccessDenied"), (404, "NoSuchKey"), (412, "PreconditionFailed"), (501, "NotImplemented")]
        {
            assert!(!answer(status, code).is_transient(), "{status} {code}");
        }
        assert!(Failed { cause: Cause::NoAnswer, code: None, detail: String::new() }.is_transient());
        assert!(!Failed { cause: Cause::Local, code: None, detail: String::new() }.is_transient());
    }
}
