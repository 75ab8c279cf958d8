//! The Azure Blob Storage backend, on the official SDK (`azure_storage_blob`).
//!
//! Objects are block blobs named `<prefix>/<key>` in one container. Writes are
//! conditional (`If-None-Match: *`, `If-Match`) and, with an immutability window,
//! carry a version-level immutability policy. Retries are ours
//! ([`with_retries`], driven by the [`RetryPolicy`] in the config); the SDK's own
//! retry policy is switched off so the two never multiply.
//!
//! NB: Azurite, the emulator the tests run against, has no immutability at all;
//! see [`AZURITE_HAS_NO_IMMUTABILITY`]. The store says so instead of pretending.

mod auth;
mod failure;
mod objects;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use azure_core::credentials::TokenCredential;
use azure_core::http::{ClientOptions, Etag, RetryOptions, Url};
use azure_storage_blob::models::{
    BlobClientGetPropertiesResultHeaders as _, BlobContainerClientGetPropertiesResultHeaders as _,
};
use azure_storage_blob::{BlobClient, BlobContainerClient, BlobContainerClientOptions};
use tokio::sync::OnceCell;

pub use auth::{AccountKey, AzureAuth, SAS_VERSION, SasUrl, account_sas};

use self::failure::{CONTAINER_EXISTS, Failure, is_azurite, is_transient, scrub};
use super::error::check_key;
use super::remote::{LockSupport, Properties};
use super::retry::{RetryPolicy, with_retries};
use super::{Error, ObjectStore as _, PutOutcome, Result};

/// Metadata entry holding the [`content_hash`](super::remote::content_hash).
/// NB: not S3's `fenice-blake3`: Azure metadata names must be C# identifiers.
const HASH_META: &str = "fenice_blake3";

/// Why an Azurite-backed store refuses immutable writes.
pub const AZURITE_HAS_NO_IMMUTABILITY: &str = "the service is Azurite, the storage emulator, which has no \
    immutability policies (it ignores x-ms-immutability-policy-* on upload and answers 501 Not Implemented to \
    Set Blob Immutability Policy); use real Azure Blob Storage with version-level immutability enabled on the \
    container, or disable immutability for this repository";

/// Where and how to reach a container.
#[derive(Clone)]
pub struct AzureConfig {
    /// The Blob endpoint: `https://<account>.blob.core.windows.net`, or
    /// Azurite's `http://127.0.0.1:<port>/devstoreaccount1`.
    pub endpoint: String,
    /// The storage account, for messages.
    pub account: String,
    /// The container; [`AzureStore::create_container`] makes it.
    pub container: String,
    /// Key prefix inside the container, without leading or trailing `/`; may be empty.
    pub prefix: String,
    /// How requests are authorized.
    pub auth: AzureAuth,
    /// Lock every written object for this long (version-level immutability).
    pub immutability: Option<Duration>,
    /// Retries of throttled, failed and timed-out calls.
    pub retry: RetryPolicy,
}

impl fmt::Debug for AzureConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureConfig")
            .field("endpoint", &endpoint_without_secrets(&self.endpoint))
            .field("account", &self.account)
            .field("container", &self.container)
            .field("prefix", &self.prefix)
            .field("auth", &self.auth)
            .field("immutability", &self.immutability)
            .field("retry", &self.retry)
            .finish()
    }
}

/// A container (and prefix) in Azure Blob Storage.
pub struct AzureStore {
    describe: String,
    container_name: String,
    container: BlobContainerClient,
    /// `""` or `"some/prefix/"`.
    prefix: String,
    immutability: Option<Duration>,
    retry: RetryPolicy,
    support: OnceCell<LockSupport>,
}

impl fmt::Debug for AzureStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureStore")
            .field("at", &self.describe)
            .field("immutability", &self.immutability)
            .finish_non_exhaustive()
    }
}

impl AzureStore {
    /// Checks the config and sets up the client. Does not contact the service:
    /// the first call does, and reports an unreachable endpoint then.
    pub fn connect(config: AzureConfig) -> Result<Self> {
        let endpoint = endpoint_without_secrets(&config.endpoint);
        let prefix = config.prefix.trim_matches('/');
        let mut describe = format!("az://{}/{}", config.account, config.container);
        if !prefix.is_empty() {
            describe = format!("{describe}/{prefix}");
        }
        let location = describe.clone();
        describe = format!("{describe} at {endpoint}");
        let invalid = |why: String| Error::InvalidLocation { location: location.clone(), why };
        if config.account.is_empty() || config.container.is_empty() {
            return Err(invalid("name the account and the container".to_owned()));
        }
        if !prefix.is_empty() {
            check_key(prefix).map_err(|_| invalid(format!("prefix {prefix:?} is not a relative path")))?;
        }
        let mut url =
            Url::parse(&config.endpoint).map_err(|e| invalid(format!("endpoint {endpoint} is not a URL: {e}")))?;
        url.set_query(None);
        url.set_fragment(None);
        url.path_segments_mut()
            .map_err(|()| invalid(format!("endpoint {endpoint} cannot have a path")))?
            .pop_if_empty()
            .push(&config.container);
        let credential: Option<Arc<dyn TokenCredential>> = match &config.auth {
            AzureAuth::SasUrl(sas) => {
                url.set_query(Some(&sas.token()?));
                None
            }
            AzureAuth::EntraId if url.scheme() != "https" => {
                return Err(invalid(format!(
                    "Entra ID tokens are only sent over https, and the endpoint is {endpoint}; use https or a SAS"
                )));
            }
            AzureAuth::EntraId => Some(Arc::new(auth::EntraChain::from_environment())),
        };
        let options = BlobContainerClientOptions {
            // NB: retries are ours (with_retries), so the SDK must not retry too.
            client_options: ClientOptions { retry: RetryOptions::none(), ..Default::default() },
            ..Default::default()
        };
        let container = BlobContainerClient::new(url, credential, Some(options))
            .map_err(|e| invalid(format!("cannot set up the client: {}", scrub(&e.to_string()))))?;
        Ok(Self {
            describe,
            container_name: config.container,
            container,
            prefix: if prefix.is_empty() { String::new() } else { format!("{prefix}/") },
            immutability: config.immutability,
            retry: config.retry,
            support: OnceCell::new(),
        })
    }

    /// Creates the container; an existing one is fine. For tests, the lab and
    /// `fenice repo init`. NB: version-level immutability cannot be switched on
    /// here (only through Azure Resource Manager: portal, `az storage
    /// container-rm create --enable-vlw`, Terraform), so an immutable repository
    /// needs a container made there.
    pub async fn create_container(&self) -> Result<()> {
        match self.call(|| self.container.create(None)).await {
            Ok(_) => Ok(()),
            // Also what a retry sees when the first attempt's answer was lost.
            Err(f) if f.code() == Some(CONTAINER_EXISTS) => Ok(()),
            Err(f) => Err(f.into_error(self.describe(), "create container", &self.container_name)),
        }
    }

    /// Runs one SDK call with our retries and per-attempt timeout.
    async fn call<T, F, Fut>(&self, op: F) -> std::result::Result<T, Failure>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = azure_core::Result<T>>,
    {
        with_retries(&self.retry, op, is_transient).await.map_err(Failure::from)
    }

    fn blob(&self, key: &str) -> Result<BlobClient> {
        check_key(key)?;
        Ok(self.container.blob_client(&format!("{}{key}", self.prefix)))
    }

    /// The object's properties, or `None` if there is no such object.
    async fn properties(&self, blob: &BlobClient, key: &str) -> Result<Option<Properties>> {
        let rsp = match self.call(|| blob.get_properties(None)).await {
            Ok(rsp) => rsp,
            Err(f) if f.status() == Some(404) => return Ok(None),
            Err(f) => return Err(f.into_error(self.describe(), "read properties", key)),
        };
        let bad = |what: &str| Error::Service {
            store: self.describe(),
            operation: "read properties",
            key: key.to_owned(),
            message: format!("the service sent an unreadable {what}"),
        };
        Ok(Some(Properties {
            size: rsp.content_length().map_err(|_| bad("Content-Length"))?.unwrap_or(0),
            etag: etag_text(rsp.etag().map_err(|_| bad("ETag"))?.as_ref()),
            hash: rsp.metadata().map_err(|_| bad("metadata"))?.remove(HASH_META),
            retain_until: rsp
                .immutability_policy_expires_on()
                .map_err(|_| bad("immutability policy date"))?
                .map(SystemTime::from),
        }))
    }

    /// Whether the container has version-level immutability, from its
    /// properties (`x-ms-immutable-storage-with-versioning-enabled`). Asked once;
    /// a failed ask is not remembered.
    async fn support(&self) -> Result<&LockSupport> {
        self.support
            .get_or_try_init(|| async {
                let operation = "read container properties";
                let rsp = self.call(|| self.container.get_properties(None)).await.map_err(|f| match f.status() {
                    Some(404) => Error::Service {
                        store: self.describe(),
                        operation,
                        key: self.container_name.clone(),
                        message: "the container does not exist; create it first".to_owned(),
                    },
                    _ => f.into_error(self.describe(), operation, &self.container_name),
                })?;
                if rsp.is_immutable_storage_with_versioning_enabled().ok().flatten() == Some(true) {
                    Ok(LockSupport::Available)
                } else if is_azurite(rsp.headers()) {
                    Ok(LockSupport::Missing { why: AZURITE_HAS_NO_IMMUTABILITY.to_owned() })
                } else {
                    Ok(LockSupport::Missing {
                        why: format!(
                            "container {} does not have version-level immutability; enable it on the container or \
                             the account (`az storage container-rm create --enable-vlw`, or migrate the container), \
                             or disable immutability for this repository",
                            self.container_name
                        ),
                    })
                }
            })
            .await
    }

    /// After a lost answer, a conflict may be our own earlier attempt: it is
    /// if the object now there has our content.
    async fn own_earlier_write(&self, blob: &BlobClient, key: &str, hash: &str) -> Result<Option<PutOutcome>> {
        Ok(self.properties(blob, key).await?.and_then(|p| p.if_written_by_us(hash)))
    }
}

/// ETags without their quotes: list answers carry none, headers do.
fn etag_text(etag: Option<&Etag>) -> String {
    etag.map(|e| e.as_ref().trim_matches('"').to_owned()).unwrap_or_default()
}

/// The service keeps policy dates to the second (RFC 7231 dates), cutting off the
/// fraction; cutting it off here makes the date we report the date it stores.
/// NB: S3's backend rounds up instead, so the two stay separate.
fn whole_seconds(t: SystemTime) -> SystemTime {
    let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    SystemTime::UNIX_EPOCH + Duration::from_secs(since.as_secs())
}

/// The endpoint for messages: no query string (someone may paste a SAS URL
/// there), no user info, no trailing slash.
fn endpoint_without_secrets(endpoint: &str) -> String {
    match Url::parse(endpoint) {
        Ok(mut url) => {
            url.set_query(None);
            url.set_fragment(None);
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.as_str().trim_end_matches('/').to_owned()
        }
        Err(_) => scrub(endpoint.split('?').next().unwrap_or_default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(endpoint: &str, auth: AzureAuth) -> AzureConfig {
        AzureConfig {
            endpoint: endpoint.to_owned(),
            account: "acct".to_owned(),
            container: "backups".to_owned(),
            prefix: "/tenant-a/".to_owned(),
            auth,
            immutability: None,
            retry: RetryPolicy::default(),
        }
    }

    #[test]
    fn describe_names_the_place_and_never_the_sas() {
        let sas = AzureAuth::SasUrl(SasUrl::new("sv=1&sig=SECRET"));
        let store = AzureStore::connect(config("https://acct.blob.core.windows.net/?sv=1&sig=OTHER", sas)).unwrap();
        assert_eq!(store.describe(), "az://acct/backups/tenant-a at https://acct.blob.core.windows.net");
        let debug =
            format!("{store:?} {:?}", config("https://h/?sig=OTHER", AzureAuth::SasUrl(SasUrl::new("sig=SECRET"))));
        assert!(!debug.contains("SECRET") && !debug.contains("OTHER") && debug.contains("[redacted]"), "{debug}");
    }

    #[test]
    fn entra_id_needs_https() {
        let err =
            AzureStore::connect(config("http://127.0.0.1:10000/devstoreaccount1", AzureAuth::EntraId)).unwrap_err();
        assert!(matches!(err, Error::InvalidLocation { .. }) && err.to_string().contains("https"), "{err}");
    }

    #[test]
    fn a_sas_without_signature_is_refused_without_echoing_it() {
        let err =
            AzureStore::connect(config("https://h", AzureAuth::SasUrl(SasUrl::new("sv=1&sp=r&se=TOKEN")))).unwrap_err();
        assert!(err.to_string().contains("no signature") && !err.to_string().contains("TOKEN"), "{err}");
    }
}
