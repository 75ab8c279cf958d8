//! A tenant's app at a Local site made to agree with its FailoverPlan's
//! lease: fenced while its site may not serve (`tenant::fenced_by`), active
//! under the tenant's epoch once it may. At a Kubernetes site the app is
//! stopped instead; a Local app fences itself in place (`POST
//! /v1/admin/fence`: it issues and sends nothing), so that a database the
//! failover may still read from keeps running.

use std::sync::OnceLock;
use std::time::Duration;

use crate::app::http::Health;

/// How long the app may take to answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What was changed to make the app agree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Fenced,
    Activated,
}

pub(super) fn http() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build().unwrap_or_default())
}

/// Fences the app at `app` when `fenced`, else activates it under `epoch`,
/// unless it already is so; says what it changed. An app fenced under a
/// higher epoch than `epoch` refuses to be activated: the error says so.
pub async fn agree(app: &str, fenced: bool, epoch: u64) -> Result<Option<Change>, String> {
    // NB: /healthz answers 503 with its body while the database does not: the fence is still read.
    let (_, text) = answer(http().get(format!("{app}/healthz")), app, "/healthz").await?;
    let health: Health = serde_json::from_str(&text)
        .map_err(|_| format!("the app at {app} answered /healthz with what is not its health: {text}"))?;
    // NB: an active app under an older epoch (a tenant a failover moved here) is activated anew.
    let (path, body, change) = match (fenced, health.active) {
        (true, true) => ("/v1/admin/fence", serde_json::json!({}), Change::Fenced),
        (false, active) if !active || health.epoch < epoch => {
            ("/v1/admin/activate", serde_json::json!({"epoch": epoch}), Change::Activated)
        }
        _ => return Ok(None),
    };
    match answer(http().post(format!("{app}{path}")).json(&body), app, path).await? {
        (status, _) if status.is_success() => Ok(Some(change)),
        (status, text) => Err(format!("the app at {app} refused {path} (HTTP {status}): {text}")),
    }
}

async fn answer(
    request: reqwest::RequestBuilder,
    app: &str,
    path: &str,
) -> Result<(reqwest::StatusCode, String), String> {
    let response = request.send().await.map_err(|e| format!("the app at {app} did not answer {path}: {e}"))?;
    let status = response.status();
    let text = response.text().await.map_err(|e| format!("the app at {app} broke off its answer to {path}: {e}"))?;
    Ok((status, text))
}
