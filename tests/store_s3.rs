//! The S3 backend against the conformance suite on a real moto server, plus
//! what only S3 can get wrong: Object Lock, versions, unreachable endpoints and
//! missing buckets.
//!
//! Not tested here: a wrong secret key. moto takes any credentials and checks no
//! signature, so a test of it would only test a fake; the mapping of AWS's
//! `InvalidAccessKeyId` / `SignatureDoesNotMatch` (403) to `Error::Denied` is
//! in `S3Store`'s error mapping.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use fenice::store::retry::RetryPolicy;
use fenice::store::s3::{S3Config, S3Store, StaticCredentials};
use fenice::store::{Error, ObjectStore, PutCondition, Retention};
use fenice::testkit::S3Server;

#[path = "common/store_suite.rs"]
mod store_suite;

const DAY: Duration = Duration::from_secs(24 * 3600);

/// moto takes any credentials; these keep the SDK from looking for real ones,
/// without touching the process environment.
fn dummy_credentials() -> StaticCredentials {
    StaticCredentials { access_key_id: "test".to_owned(), secret_access_key: "test".to_owned(), session_token: None }
}

/// Retries short enough for tests, long enough for a loaded two-core machine.
fn quick_retries() -> RetryPolicy {
    RetryPolicy {
        attempts: 3,
        base_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(100),
        attempt_timeout: Duration::from_secs(30),
    }
}

fn config(endpoint: &str, bucket: &str, prefix: &str) -> S3Config {
    S3Config {
        prefix: prefix.to_owned(),
        endpoint: Some(endpoint.to_owned()),
        region: Some("us-east-1".to_owned()),
        force_path_style: true,
        retry: quick_retries(),
        credentials: Some(dummy_credentials()),
        ..S3Config::new(bucket)
    }
}

/// A bucket name no other test in this process uses.
fn fresh_bucket(what: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("fenice-{what}-{}", NEXT.fetch_add(1, Ordering::SeqCst))
}

async fn start_moto() -> S3Server {
    tokio::task::spawn_blocking(S3Server::start).await.unwrap().expect("moto starts (run scripts/prerequisites.sh)")
}

/// A store on a new bucket, created with or without Object Lock.
async fn store_on_new_bucket(server: &S3Server, prefix: &str, object_lock: bool, window: Option<Duration>) -> S3Store {
    let bucket = fresh_bucket(if object_lock { "locked" } else { "plain" });
    let store = S3Store::connect(S3Config { immutability: window, ..config(&server.endpoint(), &bucket, prefix) })
        .await
        .unwrap();
    store.create_bucket(object_lock).await.unwrap();
    store
}

#[tokio::test]
async fn s3_store_passes_the_conformance_suite_with_and_without_a_prefix() {
    let server = start_moto().await;
    let store = store_on_new_bucket(&server, "repos/main", false, None).await;
    assert!(store.describe().starts_with("s3://fenice-plain-"), "{}", store.describe());
    assert!(store.describe().contains("/repos/main at http://127.0.0.1:"), "{}", store.describe());
    store_suite::run_all(&store).await;

    let store = store_on_new_bucket(&server, "", false, None).await;
    let location = store.describe().split(" at ").next().unwrap().to_owned();
    assert!(!location.trim_start_matches("s3://").contains('/'), "{location}");
    store_suite::run_all(&store).await;
}

#[tokio::test]
async fn s3_store_passes_the_conformance_suite_on_a_versioned_object_lock_bucket() {
    // Object Lock buckets are versioned, where a plain DELETE only hides the data
    // behind a delete marker; `delete_on_a_versioned_bucket_removes_every_version`
    // checks that nothing is left behind.
    let server = start_moto().await;
    let store = store_on_new_bucket(&server, "v", true, None).await;
    store_suite::run_all(&store).await;
}

#[tokio::test]
async fn keys_are_stored_under_the_prefix_without_double_slashes() {
    let server = start_moto().await;
    let bucket = fresh_bucket("layout");
    let outer = S3Store::connect(config(&server.endpoint(), &bucket, "")).await.unwrap();
    outer.create_bucket(false).await.unwrap();
    let inner = S3Store::connect(config(&server.endpoint(), &bucket, "/tenants/a/")).await.unwrap();
    inner.put("data/x", Bytes::from_static(b"x"), PutCondition::IfAbsent).await.unwrap();
    let keys: Vec<String> = outer.list("").await.unwrap().into_iter().map(|m| m.key).collect();
    assert_eq!(keys, ["tenants/a/data/x"]);
    let keys: Vec<String> = inner.list("").await.unwrap().into_iter().map(|m| m.key).collect();
    assert_eq!(keys, ["data/x"]);
}

#[tokio::test]
async fn delete_on_a_versioned_bucket_removes_every_version() {
    let server = start_moto().await;
    let bucket = fresh_bucket("versions");
    let store = S3Store::connect(config(&server.endpoint(), &bucket, "")).await.unwrap();
    store.create_bucket(true).await.unwrap();
    let v1 = store.put("lease", Bytes::from_static(b"epoch=1"), PutCondition::IfAbsent).await.unwrap();
    store.put("lease", Bytes::from_static(b"epoch=2"), PutCondition::IfMatch(v1.etag)).await.unwrap();
    store.put("lease-other", Bytes::from_static(b"keep"), PutCondition::IfAbsent).await.unwrap();
    store.delete("lease").await.unwrap();

    // Ask the bucket directly: no version and no delete marker may be left.
    let raw = raw_client(&server.endpoint());
    assert_eq!(versions_left(&raw, &bucket, "lease").await, ["lease-other"]);
}

/// The keys of every version and delete marker under `prefix`, asked of the bucket directly.
async fn versions_left(raw: &aws_sdk_s3::Client, bucket: &str, prefix: &str) -> Vec<String> {
    let versions = raw.list_object_versions().bucket(bucket).prefix(prefix).send().await.unwrap();
    versions
        .versions()
        .iter()
        .filter_map(|v| v.key())
        .chain(versions.delete_markers().iter().filter_map(|m| m.key()))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn an_object_written_once_is_deleted_for_good_from_what_its_write_answered() {
    let server = start_moto().await;
    let raw = raw_client(&server.endpoint());
    for versioned in [true, false] {
        let store = store_on_new_bucket(&server, "", versioned, None).await;
        let bucket = store.describe().trim_start_matches("s3://").split(' ').next().unwrap().to_owned();
        let written = store.put("locks/a", Bytes::from_static(b"lock"), PutCondition::IfAbsent).await.unwrap();
        assert_eq!(written.version.is_some(), versioned, "a versioned bucket names the version: {written:?}");
        store.put("locks/ab", Bytes::from_static(b"keep"), PutCondition::IfAbsent).await.unwrap();
        store.delete_written("locks/a", &written).await.unwrap();
        assert_eq!(versions_left(&raw, &bucket, "locks/").await, ["locks/ab"], "versioned: {versioned}");
    }

    let store = store_on_new_bucket(&server, "immutable", true, Some(DAY)).await;
    let written = store.put("locks/b", Bytes::from_static(b"lock"), PutCondition::IfAbsent).await.unwrap();
    let refused = store.delete_written("locks/b", &written).await.unwrap_err();
    assert!(matches!(&refused, Error::Immutable { key, until: Some(_), .. } if key == "locks/b"), "{refused:?}");
    assert_eq!(store.get("locks/b").await.unwrap(), Bytes::from_static(b"lock"));
}

#[tokio::test]
async fn locked_objects_cannot_be_deleted_or_overwritten_and_stay_readable() {
    let server = start_moto().await;
    let store = store_on_new_bucket(&server, "immutable", true, Some(DAY)).await;
    let before = SystemTime::now();
    let put = store.put("snapshots/1", Bytes::from_static(b"snapshot"), PutCondition::IfAbsent).await.unwrap();
    let until = put.retain_until.expect("a locked write reports its retention");
    assert_close(until, before + DAY);

    match store.retention("snapshots/1").await.unwrap() {
        Retention::Until(read_back) => assert_eq!(read_back, until),
        other => panic!("expected a retention until {until:?}, got {other:?}"),
    }

    let err = store.delete("snapshots/1").await.unwrap_err();
    match &err {
        Error::Immutable { key, until: Some(refused_until), .. } => {
            assert_eq!(key, "snapshots/1");
            assert_eq!(*refused_until, until);
        }
        other => panic!("expected Immutable with its date, got {other:?}"),
    }
    assert!(err.to_string().contains("snapshots/1"), "{err}");

    let overwrite =
        store.put("snapshots/1", Bytes::from_static(b"ransom"), PutCondition::IfMatch(put.etag.clone())).await;
    assert!(matches!(overwrite, Err(Error::Immutable { .. })), "{overwrite:?}");
    let again = store.put("snapshots/1", Bytes::from_static(b"ransom"), PutCondition::IfAbsent).await;
    assert!(matches!(again, Err(Error::AlreadyExists { .. })), "{again:?}");

    assert_eq!(store.get("snapshots/1").await.unwrap(), Bytes::from_static(b"snapshot"));
    assert_eq!(store.head("snapshots/1").await.unwrap().unwrap().etag, put.etag);
}

#[tokio::test]
async fn retention_is_none_on_a_lock_bucket_and_unsupported_without_object_lock() {
    let server = start_moto().await;
    let locked = store_on_new_bucket(&server, "", true, None).await;
    locked.put("obj", Bytes::from_static(b"x"), PutCondition::IfAbsent).await.unwrap();
    assert_eq!(locked.retention("obj").await.unwrap(), Retention::None);

    let plain = store_on_new_bucket(&server, "", false, None).await;
    plain.put("obj", Bytes::from_static(b"x"), PutCondition::IfAbsent).await.unwrap();
    assert!(matches!(plain.retention("obj").await.unwrap(), Retention::Unsupported { .. }));
}

#[tokio::test]
async fn an_immutable_store_on_a_bucket_without_object_lock_says_so() {
    let server = start_moto().await;
    let store = store_on_new_bucket(&server, "", false, Some(DAY)).await;
    let err = store.put("obj", Bytes::from_static(b"x"), PutCondition::IfAbsent).await.unwrap_err();
    assert!(matches!(err, Error::Unsupported { what: "immutability", .. }), "{err:?}");
    assert!(err.to_string().contains("has no Object Lock"), "{err}");
    // Nothing was written unlocked behind the caller's back.
    assert!(store.head("obj").await.unwrap().is_none());
}

#[tokio::test]
async fn create_bucket_is_idempotent() {
    let server = start_moto().await;
    let store = store_on_new_bucket(&server, "", true, None).await;
    store.create_bucket(true).await.unwrap();
    let plain = store_on_new_bucket(&server, "", false, None).await;
    plain.create_bucket(false).await.unwrap();
}

#[tokio::test]
async fn an_existing_bucket_without_object_lock_is_not_passed_off_as_locked() {
    // NB: outside us-east-1, because in us-east-1 moto answers 200 to creating a
    // bucket we own and then switches Object Lock on for it, which AWS never does
    // (Object Lock is chosen at creation). Elsewhere moto answers
    // BucketAlreadyOwnedByYou as AWS does everywhere.
    let server = start_moto().await;
    let config =
        S3Config { region: Some("eu-south-1".to_owned()), ..config(&server.endpoint(), &fresh_bucket("eu"), "") };
    let plain = S3Store::connect(config).await.unwrap();
    plain.create_bucket(false).await.unwrap();
    plain.put("obj", Bytes::from_static(b"x"), PutCondition::IfAbsent).await.unwrap();
    let err = plain.create_bucket(true).await.unwrap_err();
    assert!(matches!(err, Error::Unsupported { what: "immutability", .. }), "{err:?}");
    assert!(err.to_string().contains("has no Object Lock"), "{err}");
}

#[tokio::test]
async fn an_unreachable_endpoint_is_reported_with_the_endpoint_after_retries() {
    let port = {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        listener.local_addr().unwrap().port()
    };
    let endpoint = format!("http://127.0.0.1:{port}");
    let retry = RetryPolicy {
        attempts: 2,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(10),
        attempt_timeout: Duration::from_secs(10),
    };
    let store = S3Store::connect(S3Config { retry, ..config(&endpoint, "bkt", "p") }).await.unwrap();
    let started = Instant::now();
    let err = store.get("config").await.unwrap_err();
    match &err {
        Error::Unreachable { attempts, .. } => assert_eq!(*attempts, 2),
        other => panic!("expected Unreachable, got {other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains(&endpoint), "{text}");
    assert!(text.contains("s3://bkt/p"), "{text}");
    assert!(!text.contains("test"), "no credential in {text}");
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn an_https_endpoint_needs_no_process_wide_crypto_provider() {
    // A server that accepts and hangs up: the TLS handshake fails, and the SDK's
    // rustls client must fail cleanly rather than panic for want of a provider.
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    // Detached: it lives as long as the test binary, however many connections come.
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            drop(stream);
        }
    });
    let retry = RetryPolicy { attempts: 2, base_delay: Duration::from_millis(10), ..quick_retries() };
    let endpoint = format!("https://127.0.0.1:{port}");
    let store = S3Store::connect(S3Config { retry, ..config(&endpoint, "bkt", "") }).await.unwrap();
    let err = store.get("config").await.unwrap_err();
    assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");
}

#[tokio::test]
async fn throttling_is_retried_with_backoff_until_it_passes() {
    let (endpoint, hits) = scripted(vec![SLOW_DOWN, SLOW_DOWN, HELLO]);
    let store = S3Store::connect(config(&endpoint, "bkt", "")).await.unwrap();
    assert_eq!(store.get("obj").await.unwrap(), Bytes::from_static(b"hello"));
    assert_eq!(hits.load(Ordering::SeqCst), 3);
}

/// A connection closed before any answer (a pooled keep-alive connection the
/// server dropped as it was reused: hyper's "connection closed before message
/// completed") is retried like any lost answer.
#[tokio::test]
async fn a_connection_closed_before_the_answer_is_retried() {
    let (endpoint, hits) = scripted(vec!["", HELLO]);
    let store = S3Store::connect(config(&endpoint, "bkt", "")).await.unwrap();
    assert_eq!(store.get("obj").await.unwrap(), Bytes::from_static(b"hello"));
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn throttling_that_never_ends_is_reported_after_the_last_attempt() {
    let (endpoint, hits) = scripted(vec![SLOW_DOWN]);
    let store = S3Store::connect(config(&endpoint, "bkt", "")).await.unwrap();
    let err = store.get("obj").await.unwrap_err();
    assert!(matches!(err, Error::Service { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("503 SlowDown") && text.contains("after 3 attempts") && text.contains("obj"), "{text}");
    assert_eq!(hits.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_missing_bucket_is_a_clear_error_naming_it() {
    let server = start_moto().await;
    let store = S3Store::connect(config(&server.endpoint(), "no-such-bucket", "")).await.unwrap();
    for err in [
        store.put("config", Bytes::from_static(b"x"), PutCondition::IfAbsent).await.unwrap_err(),
        store.get("config").await.unwrap_err(),
        store.list("").await.unwrap_err(),
        // A HEAD answers a bare 404 for both; the store must not take it for a missing key.
        store.head("config").await.unwrap_err(),
    ] {
        let text = err.to_string();
        assert!(matches!(err, Error::Service { .. }), "{err:?}");
        assert!(text.contains("bucket no-such-bucket does not exist"), "{text}");
    }
}

#[tokio::test]
async fn a_bad_location_is_refused_before_any_request() {
    let bad = [
        S3Config::new(""),
        S3Config { prefix: "a/../b".to_owned(), ..S3Config::new("bkt") },
        S3Config { endpoint: Some("minio:9000".to_owned()), ..S3Config::new("bkt") },
    ];
    for config in bad {
        let err = S3Store::connect(config).await.unwrap_err();
        assert!(matches!(err, Error::InvalidLocation { .. }), "{err:?}");
    }
}

/// What S3 answers when it throttles.
const SLOW_DOWN: &str = "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: 88\r\n\
    Connection: close\r\n\r\n\
    <Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>\n";
const HELLO: &str = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nETag: \"5d41\"\r\nConnection: close\r\n\r\nhello";

/// A server on 127.0.0.1 that answers each request with the next of `answers`
/// (the last one over and over), for what moto cannot be made to do. Returns
/// its endpoint and the count of requests it saw.
fn scripted(answers: Vec<&'static str>) -> (String, Arc<AtomicU32>) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicU32::new(0));
    let seen = Arc::clone(&hits);
    // Detached: it lives as long as the test binary.
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            // A GET has no body: the request ends with the blank line.
            let mut request = Vec::new();
            let mut byte = [0u8; 1];
            while !request.ends_with(b"\r\n\r\n") && stream.read(&mut byte).is_ok_and(|n| n == 1) {
                request.push(byte[0]);
            }
            let n = seen.fetch_add(1, Ordering::SeqCst) as usize;
            let answer = answers[n.min(answers.len() - 1)];
            let _ = stream.write_all(answer.as_bytes());
        }
    });
    (endpoint, hits)
}

/// The SDK client itself, to look at what the store left in the bucket.
fn raw_client(endpoint: &str) -> aws_sdk_s3::Client {
    let credentials = aws_sdk_s3::config::Credentials::new("test", "test", None, None, "test");
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .credentials_provider(credentials)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

fn assert_close(actual: SystemTime, expected: SystemTime) {
    let gap = actual.duration_since(expected).or_else(|e| Ok::<_, ()>(e.duration())).unwrap();
    assert!(gap < Duration::from_secs(60), "{actual:?} is {gap:?} away from {expected:?}");
}
