//! How the Azure backend proves who it is: a SAS, or an Entra ID token from the
//! environment. Also the account SAS signer used against Azurite and in the lab,
//! where the only credential is an account key.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use async_trait::async_trait;
use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use azure_core::error::ErrorKind;
use azure_core::http::Url;
use azure_identity::{DeveloperToolsCredential, ManagedIdentityCredential, WorkloadIdentityCredential};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit as _, Mac as _};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::store::Error;

/// The SAS format we sign; the account SAS string-to-sign is the same for every
/// service version since 2020-12-06 (it added the encryption scope line).
pub const SAS_VERSION: &str = "2025-11-05";

/// How requests are authorized.
#[derive(Clone, Debug)]
pub enum AzureAuth {
    /// A shared access signature: a full SAS URL (`https://…?sv=…&sig=…`) or
    /// just its query string. Only the query string is used; requests go to
    /// the configured endpoint. It needs `rwdlac` (`c` only for
    /// `create_container`), plus `i` for a repository with immutability.
    SasUrl(SasUrl),
    /// An Entra ID token, from the first of: workload identity (AKS, from
    /// `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_FEDERATED_TOKEN_FILE`),
    /// managed identity, developer tools (`az login`, `azd auth login`).
    /// Needs an `https` endpoint.
    EntraId,
}

/// A SAS URL or token. It grants access by itself, so `Debug` never shows it.
#[derive(Clone)]
pub struct SasUrl(Zeroizing<String>);

impl SasUrl {
    /// Wraps a SAS URL or token as the portal, `az` or [`account_sas`] gives it.
    pub fn new(text: impl Into<String>) -> Self {
        Self(Zeroizing::new(text.into()))
    }

    /// The SAS as given, for handing to another tool. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The query string that carries the signature, without the `?`.
    pub(super) fn token(&self) -> Result<String, Error> {
        let invalid = |why: &str| Error::InvalidLocation { location: "[SAS redacted]".to_owned(), why: why.to_owned() };
        let text = self.0.trim();
        let token = if text.starts_with("https://") || text.starts_with("http://") {
            let url = Url::parse(text).map_err(|_| invalid("the SAS URL is not a URL"))?;
            url.query().unwrap_or_default().to_owned()
        } else {
            text.trim_start_matches('?').to_owned()
        };
        if !token.split('&').any(|pair| pair.starts_with("sig=")) {
            return Err(invalid("the SAS has no signature (sig=…); paste the whole SAS URL or token"));
        }
        Ok(token)
    }
}

impl fmt::Debug for SasUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SasUrl([redacted])")
    }
}

/// A storage account key (base64 in the portal and in Azurite's docs).
#[derive(Clone)]
pub struct AccountKey {
    /// Decoded, for signing.
    key: Zeroizing<Vec<u8>>,
    /// As given (trimmed), for [`AccountKey::expose`].
    base64: Zeroizing<String>,
}

impl AccountKey {
    /// Decodes a key as the portal and Azurite's docs print it.
    pub fn from_base64(text: &str) -> Result<Self, Error> {
        let text = text.trim();
        let key = BASE64.decode(text).map_err(|_| Error::InvalidLocation {
            location: "[account key redacted]".to_owned(),
            why: "the account key is not base64".to_owned(),
        })?;
        Ok(Self { key: Zeroizing::new(key), base64: Zeroizing::new(text.to_owned()) })
    }

    /// The key, base64 as given, for handing to another tool (a connection
    /// string, `AZURE_STORAGE_KEY`). Never log it.
    pub fn expose(&self) -> &str {
        &self.base64
    }
}

impl fmt::Debug for AccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccountKey([redacted])")
    }
}

/// An account SAS for the Blob service on containers and objects (`ss=b`,
/// `srt=co`), valid until `expiry`. `permissions` are SAS letters in the
/// service's order, e.g. `rwdlac`.
pub fn account_sas(account: &str, key: &AccountKey, permissions: &str, expiry: SystemTime) -> SasUrl {
    let expiry =
        jiff::Timestamp::try_from(expiry).unwrap_or(jiff::Timestamp::MAX).strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let (services, resource_types) = ("b", "co");
    // Account SAS string-to-sign, version 2020-12-06 and later: account, sp,
    // ss, srt, st, se, sip, spr, sv, ses, and a final empty line.
    let string_to_sign =
        [account, permissions, services, resource_types, "", &expiry, "", "", SAS_VERSION, "", ""].join("\n");
    let mut mac =
        Hmac::<Sha256>::new_from_slice(&key.key).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(string_to_sign.as_bytes());
    let signature = BASE64.encode(mac.finalize().into_bytes());
    let mut url = Url::parse("http://sas.invalid/").unwrap_or_else(|_| unreachable!("a literal URL parses"));
    url.query_pairs_mut()
        .append_pair("sv", SAS_VERSION)
        .append_pair("ss", services)
        .append_pair("srt", resource_types)
        .append_pair("sp", permissions)
        .append_pair("se", &expiry)
        .append_pair("sig", &signature);
    SasUrl::new(url.query().unwrap_or_default())
}

/// The Entra ID credential chain: what `DefaultAzureCredential` does in the
/// other Azure SDKs, which the Rust SDK leaves out. The first source that gives
/// a token is used from then on.
#[derive(Debug)]
pub(super) struct EntraChain {
    sources: Vec<(&'static str, Arc<dyn TokenCredential>)>,
    /// Sources that could not even be set up (say, no workload identity env vars).
    skipped: Vec<String>,
    chosen: OnceLock<usize>,
}

impl EntraChain {
    pub(super) fn from_environment() -> Self {
        let mut sources: Vec<(&'static str, Arc<dyn TokenCredential>)> = Vec::new();
        let mut skipped = Vec::new();
        match WorkloadIdentityCredential::new(None) {
            Ok(c) => sources.push(("workload identity", c)),
            Err(e) => skipped.push(format!("workload identity: {e}")),
        }
        match ManagedIdentityCredential::new(None) {
            Ok(c) => sources.push(("managed identity", c)),
            Err(e) => skipped.push(format!("managed identity: {e}")),
        }
        match DeveloperToolsCredential::new(None) {
            Ok(c) => sources.push(("developer tools", c)),
            Err(e) => skipped.push(format!("developer tools: {e}")),
        }
        Self { sources, skipped, chosen: OnceLock::new() }
    }
}

#[async_trait]
impl TokenCredential for EntraChain {
    async fn get_token(
        &self,
        scopes: &[&str],
        options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        if let Some(&i) = self.chosen.get() {
            return self.sources[i].1.get_token(scopes, options).await;
        }
        let mut failures = self.skipped.clone();
        for (i, (name, source)) in self.sources.iter().enumerate() {
            match source.get_token(scopes, options.clone()).await {
                Ok(token) => {
                    let _ = self.chosen.set(i);
                    return Ok(token);
                }
                Err(e) => failures.push(format!("{name}: {e}")),
            }
        }
        Err(azure_core::Error::with_message(
            ErrorKind::Credential,
            format!("no Entra ID credential gave a token ({})", failures.join("; ")),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Azurite's published development account key.
    const DEV_KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

    #[test]
    fn account_sas_matches_an_independent_signer() {
        // 2030-01-01T00:00:00Z; the signature was computed with Python's hmac
        // module from the string-to-sign in the REST docs.
        let expiry = SystemTime::UNIX_EPOCH + Duration::from_secs(1_893_456_000);
        let sas = account_sas("devstoreaccount1", &AccountKey::from_base64(DEV_KEY).unwrap(), "rwdlac", expiry);
        assert_eq!(
            sas.token().unwrap(),
            "sv=2025-11-05&ss=b&srt=co&sp=rwdlac&se=2030-01-01T00%3A00%3A00Z\
             &sig=gXORUu%2FzWmZsIf0P5oIcXN61Vx73DB%2FGDGngIkfObeY%3D"
        );
    }

    #[test]
    fn sas_urls_and_bare_tokens_give_the_same_token() {
        let bare = SasUrl::new("?sv=1&sig=abc").token().unwrap();
        let url = SasUrl::new("https://a.blob.core.windows.net/c?sv=1&sig=abc").token().unwrap();
        assert_eq!(bare, "sv=1&sig=abc");
        assert_eq!(url, bare);
        let err = SasUrl::new("https://a.blob.core.windows.net/c").token().unwrap_err();
        assert!(err.to_string().contains("no signature"), "{err}");
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let sas = SasUrl::new("sv=1&sig=SECRET");
        let key = AccountKey::from_base64(DEV_KEY).unwrap();
        for text in [format!("{sas:?}"), format!("{key:?}"), format!("{:?}", AzureAuth::SasUrl(sas))] {
            assert!(text.contains("[redacted]") && !text.contains("SECRET") && !text.contains("Eby8"), "{text}");
        }
    }
}
