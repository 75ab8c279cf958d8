//! Fencing and activating a Local site's apps: what a site's lease agent
//! decides, carried out over each app's admin API, with every decision kept
//! with its time so the lab can check that two sites were never active at once.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::watch;

use crate::failover::fencing::{FenceControl, FenceEvent};
use crate::site::local::LocalSite;

/// An app that does not answer within this long is stopped instead.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(2);
/// Apps told at once.
const ADMIN_PARALLELISM: usize = 32;

/// A [`FenceControl`] for the apps of a [`LocalSite`].
pub struct SiteFence {
    site: Arc<LocalSite>,
    http: reqwest::Client,
    events: Mutex<Vec<(jiff::Timestamp, FenceEvent)>>,
    /// The epoch the site is active under, for whoever waits on an activation.
    active: watch::Sender<Option<u64>>,
}

impl SiteFence {
    pub fn new(site: Arc<LocalSite>) -> Self {
        let http = reqwest::Client::builder().timeout(ADMIN_TIMEOUT).build().unwrap_or_default();
        Self { site, http, events: Mutex::new(Vec::new()), active: watch::channel(None).0 }
    }

    /// Every decision carried out, with when.
    pub fn events(&self) -> Vec<(jiff::Timestamp, FenceEvent)> {
        self.events.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Follows the epoch the site is active under.
    pub fn subscribe(&self) -> watch::Receiver<Option<u64>> {
        self.active.subscribe()
    }

    fn record(&self, event: FenceEvent) {
        self.events.lock().unwrap_or_else(PoisonError::into_inner).push((jiff::Timestamp::now(), event));
    }

    /// Posts `body` to `path` of every app of the site, many at once (the
    /// lease agent waits for this, and must renew within its deadline); the
    /// tenants whose app did not answer.
    async fn post_all(&self, path: &str, body: serde_json::Value) -> Vec<String> {
        let apps: Vec<(String, String)> = self
            .site
            .tenants()
            .into_iter()
            .filter_map(|t| {
                let url = self.site.with_tenant(&t, |s| s.app.as_ref().map(|a| a.base_url())).flatten()?;
                Some((t, url))
            })
            .collect();
        let (http, body) = (&self.http, &body);
        futures::stream::iter(apps)
            .map(|(tenant, url)| async move {
                let answer = http.post(format!("{url}{path}")).json(body).send().await;
                (!answer.is_ok_and(|a| a.status().is_success())).then_some(tenant)
            })
            .buffer_unordered(ADMIN_PARALLELISM)
            .filter_map(|failed| async move { failed })
            .collect()
            .await
    }
}

#[async_trait]
impl FenceControl for SiteFence {
    async fn fence(&self) {
        self.record(FenceEvent::Fenced);
        self.active.send_replace(None);
        // NB: an app that cannot be told must not go on: it is stopped.
        for tenant in self.post_all("/v1/admin/fence", serde_json::json!({})).await {
            tracing::warn!(site = self.site.name(), %tenant, "the app did not confirm the fence: stopping it");
            self.site.stop_tenant(&tenant);
        }
    }

    async fn activate(&self, epoch: u64) {
        self.record(FenceEvent::Activated { epoch });
        for tenant in self.post_all("/v1/admin/activate", serde_json::json!({ "epoch": epoch })).await {
            tracing::warn!(site = self.site.name(), %tenant, epoch, "the app did not take the epoch");
        }
        self.active.send_replace(Some(epoch));
    }
}
