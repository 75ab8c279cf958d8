//! The Azure Blob backend against a real Azurite: the conformance suite, plus
//! what only Azure can get wrong (SAS signatures, immutability, endpoints).

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use fenice::store::azure::{AccountKey, AzureAuth, AzureConfig, AzureStore, SasUrl, account_sas};
use fenice::store::retry::RetryPolicy;
use fenice::store::{Error, ObjectStore, PutCondition, Retention};
use fenice::testkit::{self, AzuriteServer, DEV_ACCOUNT, DEV_ACCOUNT_KEY};

#[path = "common/store_suite.rs"]
mod store_suite;

/// Starts Azurite, or skips the test when it is not installed, except on CI
/// (`CI` set), where a missing server is a failure.
fn azurite() -> Option<AzuriteServer> {
    match AzuriteServer::start() {
        Ok(server) => Some(server),
        Err(e @ testkit::Error::NotInstalled { .. }) if std::env::var_os("CI").is_none() => {
            eprintln!("skipped: {e}");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

fn dev_key() -> AccountKey {
    AccountKey::from_base64(DEV_ACCOUNT_KEY.expose()).unwrap()
}

fn sas_for(key: &AccountKey) -> AzureAuth {
    let expiry = SystemTime::now() + Duration::from_secs(3600);
    AzureAuth::SasUrl(account_sas(DEV_ACCOUNT, key, "rwdlac", expiry))
}

fn config(endpoint: String, container: &str, auth: AzureAuth) -> AzureConfig {
    AzureConfig {
        endpoint,
        account: DEV_ACCOUNT.to_owned(),
        container: container.to_owned(),
        prefix: "tenants/acme".to_owned(),
        auth,
        immutability: None,
        retry: RetryPolicy {
            attempts: 3,
            base_delay: Duration::from_millis(50),
            max_delay: Duration::from_millis(200),
            attempt_timeout: Duration::from_secs(30),
        },
    }
}

async fn fresh_store(server: &AzuriteServer, container: &str) -> AzureStore {
    let store = AzureStore::connect(config(server.blob_endpoint(), container, sas_for(&dev_key()))).unwrap();
    store.create_container().await.unwrap();
    store
}

#[tokio::test]
async fn azure_store_passes_the_conformance_suite() {
    let Some(server) = azurite() else { return };
    let store = fresh_store(&server, "conformance").await;
    store_suite::run_all(&store).await;
    // Creating the container again is not an error (`fenice repo init` twice).
    store.create_container().await.unwrap();
    // Keys are relative to the prefix, which stays out of the listing.
    let keys: Vec<String> = store.list("once/").await.unwrap().into_iter().map(|m| m.key).collect();
    assert_eq!(keys, ["once/a"]);
    let err = store.get("missing/obj").await.unwrap_err().to_string();
    assert!(err.contains("az://devstoreaccount1/conformance/tenants/acme at http://127.0.0.1:"), "{err}");
}

#[tokio::test]
async fn azurite_has_no_immutability_and_the_store_says_so() {
    let Some(server) = azurite() else { return };
    let plain = fresh_store(&server, "immutability").await;
    let mut immutable = config(server.blob_endpoint(), "immutability", sas_for(&dev_key()));
    immutable.immutability = Some(Duration::from_secs(86_400));
    let immutable = AzureStore::connect(immutable).unwrap();

    let err = immutable.put("locked", Bytes::from_static(b"x"), PutCondition::IfAbsent).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::Unsupported { what: "immutability", .. }), "{err:?}");
    assert!(text.contains("Azurite") && text.contains("immutability"), "{text}");
    assert!(text.contains("disable immutability for this repository"), "{text}");
    // Refused before writing anything: no unprotected copy is left behind.
    assert!(plain.head("locked").await.unwrap().is_none());

    plain.put("obj", Bytes::from_static(b"x"), PutCondition::IfAbsent).await.unwrap();
    for store in [&plain, &immutable] {
        match store.retention("obj").await.unwrap() {
            Retention::Unsupported { why } => assert!(why.contains("Azurite"), "{why}"),
            other => panic!("Azurite has no retention, yet the store reported {other:?}"),
        }
    }
    let err = plain.retention("none").await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
}

/// Why the store checks the container before an immutable write instead of
/// trusting the upload: Azurite takes the immutability headers, answers 201 and
/// keeps nothing. If this ever fails, Azurite learnt immutability: revisit
/// `AZURITE_HAS_NO_IMMUTABILITY`.
#[tokio::test]
async fn azurite_takes_immutability_headers_and_keeps_nothing() {
    use azure_core::http::Url;
    use azure_storage_blob::BlobClient;
    use azure_storage_blob::models::{
        BlobClientGetPropertiesResultHeaders as _, BlobClientUploadOptions, ImmutabilityPolicyMode,
    };
    let Some(server) = azurite() else { return };
    fresh_store(&server, "ignored").await;
    let sas = account_sas(DEV_ACCOUNT, &dev_key(), "rwdlaci", SystemTime::now() + Duration::from_secs(600));
    let url = Url::parse(&format!("{}/ignored/probe?{}", server.blob_endpoint(), sas.expose())).unwrap();
    let blob = BlobClient::new(url, None, None).unwrap();
    let options = BlobClientUploadOptions {
        immutability_policy_expiry: Some((SystemTime::now() + Duration::from_secs(86_400)).into()),
        immutability_policy_mode: Some(ImmutabilityPolicyMode::Locked),
        ..Default::default()
    };
    blob.upload(Bytes::from_static(b"x").into(), Some(options)).await.unwrap();
    let props = blob.get_properties(None).await.unwrap();
    assert_eq!(props.immutability_policy_expires_on().unwrap(), None);
    assert_eq!(props.immutability_policy_mode().unwrap(), None);
}

#[tokio::test]
async fn an_endpoint_with_nothing_listening_is_unreachable_quickly() {
    // A port that was free a moment ago, with nothing listening on it now.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let endpoint = format!("http://127.0.0.1:{port}/{DEV_ACCOUNT}");
    let mut config = config(endpoint.clone(), "nowhere", sas_for(&dev_key()));
    config.retry = RetryPolicy {
        attempts: 3,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(20),
        attempt_timeout: Duration::from_secs(2),
    };
    let store = AzureStore::connect(config).unwrap();
    let started = Instant::now();
    let err = store.get("some/key").await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    assert!(matches!(err, Error::Unreachable { attempts: 3, .. }), "{err:?}");
    let (text, debug) = (err.to_string(), format!("{err:?}"));
    assert!(text.contains(&endpoint), "{text}");
    for shown in [&text, &debug] {
        assert!(!shown.contains("sig=") && !shown.contains("sv="), "{shown}");
    }
}

#[tokio::test]
async fn a_sas_signed_with_the_wrong_key_is_denied_without_showing_it() {
    let Some(server) = azurite() else { return };
    fresh_store(&server, "denied").await;
    let wrong = AccountKey::from_base64("d3Jvbmcga2V5IHdyb25nIGtleSB3cm9uZyBrZXk=").unwrap();
    let store = AzureStore::connect(config(server.blob_endpoint(), "denied", sas_for(&wrong))).unwrap();
    let errors = [
        store.put("k", Bytes::from_static(b"x"), PutCondition::IfAbsent).await.unwrap_err(),
        store.get("k").await.unwrap_err(),
        store.list("").await.unwrap_err(),
    ];
    for err in errors {
        assert!(matches!(err, Error::Denied { .. }), "{err:?}");
        let (text, debug) = (err.to_string(), format!("{err:?}"));
        for shown in [&text, &debug] {
            assert!(!shown.contains("sig=") && !shown.contains("se="), "{shown}");
        }
    }
}

#[tokio::test]
async fn credentials_never_show_in_debug() {
    let sas = account_sas(DEV_ACCOUNT, &dev_key(), "rwdlac", SystemTime::now() + Duration::from_secs(60));
    let config = config("http://127.0.0.1:1/devstoreaccount1".to_owned(), "c", AzureAuth::SasUrl(sas.clone()));
    let store = AzureStore::connect(config.clone()).unwrap();
    for shown in [format!("{sas:?}"), format!("{:?}", config.auth), format!("{config:?}"), format!("{store:?}")] {
        assert!(!shown.contains("sig=") && !shown.contains("sv="), "{shown}");
        assert!(shown.contains("[redacted]") || shown.starts_with("AzureStore"), "{shown}");
    }
    let key = format!("{:?}", dev_key());
    assert_eq!(key, "AccountKey([redacted])");
    let raw = SasUrl::new(format!("http://127.0.0.1:1/devstoreaccount1?{}", "sv=x&sig=SECRET"));
    assert_eq!(format!("{raw:?}"), "SasUrl([redacted])");
}

#[tokio::test]
async fn objects_larger_than_one_block_round_trip_and_stay_conditional() {
    let Some(server) = azurite() else { return };
    let store = fresh_store(&server, "blocks").await;
    // Over the SDK's 4 MiB partition size: staged blocks and a commit.
    let data: Vec<u8> = (0..9_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    store.put("big", Bytes::from(data.clone()), PutCondition::IfAbsent).await.unwrap();
    let again = store.put("big", Bytes::from_static(b"small"), PutCondition::IfAbsent).await;
    assert!(matches!(again, Err(Error::AlreadyExists { .. })), "{again:?}");
    assert_eq!(store.get("big").await.unwrap(), data);
    assert_eq!(store.get_range("big", 4_000_000..8_500_000).await.unwrap(), &data[4_000_000..8_500_000]);
    assert_eq!(store.get_range("big", 8_999_990..9_100_000).await.unwrap(), &data[8_999_990..]);
    assert!(store.get_range("big", 9_500_000..9_600_000).await.unwrap().is_empty());
    assert!(store.get_range("big", 10..10).await.unwrap().is_empty());
}

/// What a proxy in front of Azurite does to its first connection.
#[derive(Clone, Copy)]
enum Fault {
    /// Answers 503 ServerBusy itself, as a throttled account does.
    Busy,
    /// Passes the request on, then hangs up before the answer comes back.
    LoseAnswer,
}

/// A TCP proxy to `upstream` that spoils the first connection with `fault`
/// and passes every later one through.
async fn flaky_proxy(upstream: std::net::SocketAddr, fault: Fault) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((mut client, _)) = listener.accept().await {
            let spoil = std::mem::take(&mut first);
            tokio::spawn(async move {
                let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else { return };
                match (spoil, fault) {
                    (true, Fault::Busy) => {
                        let mut buf = vec![0; 64 * 1024];
                        let _ = client.read(&mut buf).await;
                        let busy = "HTTP/1.1 503 The server is busy.\r\nx-ms-error-code: ServerBusy\r\n\
                                    Content-Length: 0\r\nConnection: close\r\n\r\n";
                        let _ = client.write_all(busy.as_bytes()).await;
                    }
                    (true, Fault::LoseAnswer) => {
                        let (mut client_read, _client_write) = client.split();
                        let (mut server_read, mut server_write) = server.split();
                        let forward = tokio::io::copy(&mut client_read, &mut server_write);
                        let mut answer = [0u8; 1];
                        // The answer's first byte means the write happened; then hang up.
                        tokio::select! {
                            _ = forward => {}
                            _ = server_read.read(&mut answer) => {}
                        }
                    }
                    (false, _) => {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                }
            });
        }
    });
    format!("http://{addr}/{DEV_ACCOUNT}")
}

#[tokio::test]
async fn throttling_is_retried_with_backoff() {
    let Some(server) = azurite() else { return };
    fresh_store(&server, "throttled").await;
    let endpoint = flaky_proxy(server.addr(), Fault::Busy).await;
    let store = AzureStore::connect(config(endpoint, "throttled", sas_for(&dev_key()))).unwrap();
    store.put("k", Bytes::from_static(b"x"), PutCondition::IfAbsent).await.unwrap();
    assert_eq!(store.get("k").await.unwrap(), Bytes::from_static(b"x"));
}

#[tokio::test]
async fn a_write_whose_answer_was_lost_is_recognised_on_retry() {
    let Some(server) = azurite() else { return };
    let direct = fresh_store(&server, "lost").await;
    let endpoint = flaky_proxy(server.addr(), Fault::LoseAnswer).await;
    let store = AzureStore::connect(config(endpoint, "lost", sas_for(&dev_key()))).unwrap();
    // The first attempt writes but its answer never arrives; the retry meets
    // 409 BlobAlreadyExists, which is our own write, not someone else's.
    let put = store.put("k", Bytes::from_static(b"mine"), PutCondition::IfAbsent).await.unwrap();
    assert_eq!(direct.head("k").await.unwrap().unwrap().etag, put.etag);
    // Someone else's object with other content is still a conflict.
    let theirs = store.put("k", Bytes::from_static(b"theirs"), PutCondition::IfAbsent).await;
    assert!(matches!(theirs, Err(Error::AlreadyExists { .. })), "{theirs:?}");
}
