//! A tenant's app at a Local site made to agree with its FailoverPlan's
//! lease: fenced while its site may not serve (`tenant::fenced_by`), active
//! under the tenant's epoch once it may. At a Kubernetes site the app is
//! stopped instead; a Local app fences itself in place (`POST
//! /v1/admin/fence`: it issues and sends nothing), so that a database the
//! failover may still read from keeps running.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use kube::ResourceExt;
use kube::runtime::events::EventType;

use super::Context;
use crate::app::http::{FenceView, Health};

/// How long the app may take to answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an app may take to confirm a fence its site's lease agent asks
/// for: the agent must renew, or fence, within its deadline.
const FENCE_TIMEOUT: Duration = Duration::from_secs(2);
/// Apps told at once.
const FENCE_PARALLELISM: usize = 32;

/// What was changed to make the app agree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Fenced,
    Activated,
}

pub(super) fn http() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    client(&CLIENT, REQUEST_TIMEOUT)
}

fn client(cell: &'static OnceLock<reqwest::Client>, timeout: Duration) -> &'static reqwest::Client {
    cell.get_or_init(|| reqwest::Client::builder().timeout(timeout).build().unwrap_or_default())
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

/// Fences, at once and directly, the apps of FailoverPlan `plan`'s tenants
/// at `site` when that is this operator's own Local site: what its lease
/// agent decided is carried out within the agent's deadline, whether or not
/// the API server answers (only the watches' last view of the tenants is
/// read). An app that does not confirm is stopped (its database runs on);
/// the tenant controller starts it again fenced. The tenant controller keeps
/// new starts fenced and activates the apps once the site may serve.
pub async fn fence_plan_apps(ctx: &Arc<Context>, plan: &str, site: &str) {
    if ctx.site.as_deref() != Some(site) {
        return;
    }
    let sites = ctx.cache.sites.store.state();
    let found = sites.iter().find(|s| s.name_any() == site);
    if !matches!(super::tenant::placement(site, found.map(|s| &**s)), super::tenant::Placement::Local { .. }) {
        return;
    }
    let plans = ctx.cache.plans.store.state();
    let plan = plans.iter().find(|p| p.name_any() == plan);
    // NB: a plan whose selector cannot be read fences every app of the site: fencing too much is safe.
    let matcher = plan.and_then(|p| crate::drill::Matcher::new(&p.spec.tenants).ok());
    let tenants = ctx.cache.tenants.store.state();
    let apps: Vec<_> = tenants
        .iter()
        .filter(|t| matcher.as_ref().is_none_or(|m| m.matches(t)))
        .filter_map(|t| ctx.local.app_url(site, &t.name_any()).map(|url| (t.clone(), url)))
        .collect();
    let fenced = |(tenant, app): (_, String)| async move {
        let answer = fence_http().post(format!("{app}/v1/admin/fence")).json(&serde_json::json!({})).send().await;
        let view = match answer {
            Ok(a) if a.status().is_success() => Some(a.json::<FenceView>().await.ok()),
            _ => None,
        };
        (tenant, app, view)
    };
    let answers: Vec<_> = futures::stream::iter(apps).map(fenced).buffer_unordered(FENCE_PARALLELISM).collect().await;
    for (tenant, app, view) in answers {
        match view {
            None => {
                tracing::warn!(%site, tenant = %tenant.name_any(), "the app did not confirm the fence: stopping it");
                ctx.local.site(site).stop_app(&tenant.name_any());
            }
            // NB: said aside: the site's agent does not wait for the API server.
            Some(Some(FenceView { was_active: Some(true), .. })) => {
                let note = format!(
                    "fenced the app at Local site {site} ({app}): its lease agent fenced the site; it issues and \
                     sends nothing"
                );
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    super::publish(&ctx, &*tenant, EventType::Warning, "StackFenced", "Fence", note).await;
                });
            }
            Some(_) => {}
        }
    }
}

fn fence_http() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    client(&CLIENT, FENCE_TIMEOUT)
}
