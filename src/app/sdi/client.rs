//! A client of the SdI protocol (see the parent module), used by the app's sender
//! loop and by `fenice agent reconcile-sdi`.

use std::time::Duration;

use super::{EPOCH_HEADER, Record, Refusal, RefusalKind, Transmission};

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("SdI at {endpoint}: {file_name} was already transmitted (SdI identifier {})", earlier.sdi_id)]
    Duplicate { endpoint: String, file_name: String, earlier: Box<Transmission> },

    #[error(
        "SdI at {endpoint}: refused epoch {epoch} for tenant {tenant}, it has seen epoch {highest}: \
         another site has taken over this tenant; this site must stay fenced"
    )]
    StaleEpoch { endpoint: String, tenant: String, epoch: u64, highest: u64 },

    #[error("SdI at {endpoint}: {message}")]
    Refused { endpoint: String, kind: RefusalKind, message: String },

    #[error("SdI at {endpoint}: {what}: unexpected HTTP {status}: {body}")]
    Status { endpoint: String, what: String, status: u16, body: String },

    #[error("SdI at {endpoint}: {what}")]
    Transport {
        endpoint: String,
        what: String,
        #[source]
        source: reqwest::Error,
    },

    #[error("SdI endpoint {endpoint:?} is not an http(s) URL")]
    BadEndpoint { endpoint: String },
}

/// Talks to one SdI endpoint.
#[derive(Clone, Debug)]
pub struct Client {
    endpoint: String,
    http: reqwest::Client,
}

impl Client {
    /// A client of the SdI at `endpoint` (e.g. `http://127.0.0.1:8081`).
    pub fn new(endpoint: &str) -> Result<Self> {
        let endpoint = endpoint.trim_end_matches('/').to_string();
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(Error::BadEndpoint { endpoint });
        }
        let http = reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build().map_err(|source| Error::Transport {
            endpoint: endpoint.clone(),
            what: "setting up".into(),
            source,
        })?;
        Ok(Self { endpoint, http })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Transmits one invoice file for `tenant` under fencing `epoch`.
    pub async fn send(&self, tenant: &str, epoch: u64, file_name: &str, xml: Vec<u8>) -> Result<Transmission> {
        let what = format!("sending {file_name}");
        let response = self
            .http
            .post(self.url(&format!("/v1/tenants/{tenant}/transmissions")))
            .query(&[("file_name", file_name)])
            .header(EPOCH_HEADER, epoch.to_string())
            .header(reqwest::header::CONTENT_TYPE, "application/xml")
            .body(xml)
            .send()
            .await
            .map_err(|source| self.transport(&what, source))?;
        if response.status() == reqwest::StatusCode::CREATED {
            return response.json().await.map_err(|source| self.transport(&what, source));
        }
        let refusal = self.refusal(&what, response).await?;
        Err(match (refusal.error, refusal.earlier, refusal.highest_epoch) {
            (RefusalKind::DuplicateFileName, Some(earlier), _) => Error::Duplicate {
                endpoint: self.endpoint.clone(),
                file_name: file_name.to_string(),
                earlier: Box::new(earlier),
            },
            (RefusalKind::StaleEpoch, _, Some(highest)) => {
                Error::StaleEpoch { endpoint: self.endpoint.clone(), tenant: tenant.to_string(), epoch, highest }
            }
            (kind, _, _) => Error::Refused { endpoint: self.endpoint.clone(), kind, message: refusal.message },
        })
    }

    /// Every transmission SdI holds for `tenant`, with its receipts, oldest first.
    pub async fn list(&self, tenant: &str) -> Result<Vec<Record>> {
        self.get_json(&format!("/v1/tenants/{tenant}/transmissions"), &format!("listing tenant {tenant}")).await
    }

    /// One transmission with its receipts.
    pub async fn record(&self, tenant: &str, sdi_id: &str) -> Result<Record> {
        self.get_json(
            &format!("/v1/tenants/{tenant}/transmissions/{sdi_id}"),
            &format!("reading transmission {sdi_id}"),
        )
        .await
    }

    /// The file of one transmission, as SdI received it.
    pub async fn file(&self, tenant: &str, sdi_id: &str) -> Result<Vec<u8>> {
        let what = format!("reading the file of transmission {sdi_id}");
        let response = self
            .http
            .get(self.url(&format!("/v1/tenants/{tenant}/transmissions/{sdi_id}/file")))
            .send()
            .await
            .map_err(|source| self.transport(&what, source))?;
        if !response.status().is_success() {
            let refusal = self.refusal(&what, response).await?;
            return Err(Error::Refused {
                endpoint: self.endpoint.clone(),
                kind: refusal.error,
                message: refusal.message,
            });
        }
        Ok(response.bytes().await.map_err(|source| self.transport(&what, source))?.to_vec())
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str, what: &str) -> Result<T> {
        let response = self.http.get(self.url(path)).send().await.map_err(|source| self.transport(what, source))?;
        if response.status().is_success() {
            return response.json().await.map_err(|source| self.transport(what, source));
        }
        let refusal = self.refusal(what, response).await?;
        Err(Error::Refused { endpoint: self.endpoint.clone(), kind: refusal.error, message: refusal.message })
    }

    /// Reads a refusal body; anything else is an unexpected answer.
    async fn refusal(&self, what: &str, response: reqwest::Response) -> Result<Refusal> {
        let status = response.status().as_u16();
        let body = response.text().await.map_err(|source| self.transport(what, source))?;
        serde_json::from_str(&body).map_err(|_| Error::Status {
            endpoint: self.endpoint.clone(),
            what: what.to_string(),
            status,
            body: cut(&body),
        })
    }

    fn transport(&self, what: &str, source: reqwest::Error) -> Error {
        Error::Transport { endpoint: self.endpoint.clone(), what: what.to_string(), source }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.endpoint)
    }
}

/// A response body cut to what fits in an error message.
fn cut(body: &str) -> String {
    const MAX: usize = 300;
    match body.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}…", &body[..at]),
        None => body.to_string(),
    }
}
