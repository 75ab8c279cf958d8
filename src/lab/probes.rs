//! Is a site down? Three vantage points, as the failover plan has them: the
//! standby's probes of the site's apps, the witness's view of the site's lease
//! renewals, and a third prober. In the lab all three run in this process on
//! one machine, so they share its view of the network; they differ in what they
//! look at and in their connections.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::future::join_all;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::failover::clock::Clock;
use crate::failover::health::{DetectionRule, Probe, RenewalWatch, SiteHealth, VantageTracker, site_health};
use crate::failover::witness::Witness;

/// A running set of probers of one site.
pub struct Probing {
    pub health: watch::Receiver<SiteHealth>,
    /// When the site was first seen down.
    pub down_at: Arc<Mutex<Option<jiff::Timestamp>>>,
    task: JoinHandle<()>,
}

impl Drop for Probing {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Probing {
    pub fn down_at(&self) -> Option<jiff::Timestamp> {
        *self.down_at.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Probes `site` every `interval`: its apps at `urls` (`/healthz`) from two
/// vantage points, its renewals of the lease in `witness` from the third.
pub fn spawn(
    site: &str,
    urls: Vec<String>,
    witness: Witness,
    rule: DetectionRule,
    interval: Duration,
    clock: Arc<dyn Clock>,
) -> Probing {
    let (tx, health) = watch::channel(SiteHealth::Up);
    let down_at = Arc::new(Mutex::new(None));
    let down = down_at.clone();
    let site = site.to_owned();
    let task = tokio::spawn(async move {
        let client = || reqwest::Client::builder().timeout(interval / 2).build().unwrap_or_default();
        let (standby, third) = (client(), client());
        let mut renewals = RenewalWatch::new(site.clone(), interval * 4);
        let mut trackers = [VantageTracker::default(); 3];
        let mut ticker = tokio::time::interval(interval);
        loop {
            ticker.tick().await;
            let (a, b, lease) = tokio::join!(apps_answer(&standby, &urls), apps_answer(&third, &urls), witness.read());
            let now = clock.now();
            let (holder, etag) = match &lease {
                Ok(Some(v)) => (Some(v.record.holder.as_str()), Some(v.etag.as_str())),
                _ => (None, None),
            };
            let renewing = renewals.observe(now, holder, etag);
            trackers[0].record(Probe { at: now, ok: a });
            trackers[1].record(renewing);
            trackers[2].record(Probe { at: now, ok: b });
            let verdicts = trackers.map(|t| t.verdict(&rule));
            let health = site_health(&verdicts, &rule);
            if health == SiteHealth::Down {
                down.lock().unwrap_or_else(PoisonError::into_inner).get_or_insert_with(jiff::Timestamp::now);
            }
            tx.send_if_modified(|h| std::mem::replace(h, health) != health);
        }
    });
    Probing { health, down_at, task }
}

/// Whether most of the apps answer their health check.
async fn apps_answer(client: &reqwest::Client, urls: &[String]) -> bool {
    let answers = join_all(urls.iter().map(|url| async move {
        client.get(format!("{url}/healthz")).send().await.is_ok_and(|r| r.status().is_success())
    }))
    .await;
    let up = answers.iter().filter(|ok| **ok).count();
    up * 2 > urls.len()
}
