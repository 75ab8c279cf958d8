//! Opens the store at a [`Location`] with the settings a command line or a
//! BackupRepository gives. Credentials come from the environment or the
//! standard chains, never from arguments.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::azure::{AccountKey, AzureAuth, AzureConfig, AzureStore, SasUrl, account_sas};
use super::fs::FsStore;
use super::retry::RetryPolicy;
use super::s3::{S3Config, S3Store};
use super::{Error, Location, ObjectStore, Result};

/// Environment variable with a SAS URL (or token) for Azure Blob.
pub const AZURE_SAS_ENV: &str = "AZURE_STORAGE_SAS_URL";
/// Environment variable with a storage account key (base64), from which a
/// short-lived SAS is signed; meant for Azurite's development account.
pub const AZURE_KEY_ENV: &str = "AZURE_STORAGE_KEY";

/// How to reach stores, beyond what the location says.
#[derive(Clone, Debug, Default)]
pub struct StoreOptions {
    /// S3-compatible endpoint; AWS's own (or AWS_ENDPOINT_URL) when absent.
    pub s3_endpoint: Option<String>,
    pub s3_region: Option<String>,
    pub s3_path_style: bool,
    /// Azure Blob endpoint; `https://<account>.blob.core.windows.net` when absent.
    pub azure_endpoint: Option<String>,
    /// Lock every written object for this long.
    pub immutability: Option<Duration>,
    pub retry: Option<RetryPolicy>,
}

/// Opens the store. Nothing is contacted yet for S3 and Azure beyond building
/// the client; the first operation is.
pub async fn open(location: &Location, options: &StoreOptions) -> Result<Arc<dyn ObjectStore>> {
    match location {
        Location::Filesystem { path } => {
            if options.immutability.is_some() {
                return Err(Error::Unsupported {
                    store: path.display().to_string(),
                    what: "immutability",
                    why: "a filesystem cannot lock files against their owner; use S3 Object Lock or Azure immutability"
                        .into(),
                });
            }
            Ok(Arc::new(FsStore::open(path)?))
        }
        Location::S3 { bucket, prefix } => Ok(Arc::new(s3_store(bucket, prefix, options).await?)),
        Location::Azure { account, container, prefix } => {
            Ok(Arc::new(azure_store(account, container, prefix, options)?))
        }
    }
}

async fn s3_store(bucket: &str, prefix: &str, options: &StoreOptions) -> Result<S3Store> {
    let mut config = S3Config::new(bucket);
    config.prefix = prefix.to_owned();
    config.endpoint = options.s3_endpoint.clone();
    config.region = options.s3_region.clone();
    config.force_path_style = options.s3_path_style;
    config.immutability = options.immutability;
    config.retry = options.retry.clone().unwrap_or_default();
    S3Store::connect(config).await
}

fn azure_store(account: &str, container: &str, prefix: &str, options: &StoreOptions) -> Result<AzureStore> {
    let endpoint = options.azure_endpoint.clone().unwrap_or_else(|| format!("https://{account}.blob.core.windows.net"));
    AzureStore::connect(AzureConfig {
        endpoint,
        account: account.to_owned(),
        container: container.to_owned(),
        prefix: prefix.to_owned(),
        auth: azure_auth(account)?,
        immutability: options.immutability,
        retry: options.retry.clone().unwrap_or_default(),
    })
}

/// Opens the store and creates its bucket or container if missing (with
/// Object Lock when `options.immutability` is set), for `repo init`.
pub async fn create(location: &Location, options: &StoreOptions) -> Result<Arc<dyn ObjectStore>> {
    match location {
        Location::S3 { bucket, prefix } => {
            let store = s3_store(bucket, prefix, options).await?;
            store.create_bucket(options.immutability.is_some()).await?;
            Ok(Arc::new(store))
        }
        Location::Azure { account, container, prefix } => {
            let store = azure_store(account, container, prefix, options)?;
            store.create_container().await?;
            Ok(Arc::new(store))
        }
        Location::Filesystem { .. } => open(location, options).await,
    }
}

fn azure_auth(account: &str) -> Result<AzureAuth> {
    if let Ok(sas) = std::env::var(AZURE_SAS_ENV) {
        return Ok(AzureAuth::SasUrl(SasUrl::new(sas)));
    }
    if let Ok(key) = std::env::var(AZURE_KEY_ENV) {
        let key = AccountKey::from_base64(&key)?;
        // A day is longer than any backup or restore; the SAS is never stored.
        let expiry = SystemTime::now() + Duration::from_secs(24 * 3600);
        return Ok(AzureAuth::SasUrl(account_sas(account, &key, "rwdlaci", expiry)));
    }
    Ok(AzureAuth::EntraId)
}
