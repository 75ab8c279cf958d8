//! Is a site down? Vantage points as the failover plan has them: HTTP probes
//! of the site's endpoints (each prober with its own connections) and the
//! witness's view of the site's lease renewals, and the lookouts that post
//! what they see in the witness ([`super::lookout`]). The lab runs two HTTP
//! probers and the witness's view in one process; the operator of a standby
//! site runs one HTTP prober of the Site's health endpoints, the witness's
//! view, and reads the plan's lookouts.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::future::join_all;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::clock::Clock;
use super::health::{DetectionRule, Probe, RenewalWatch, SiteHealth, VantageTracker, site_health};
use super::lookout::Lookouts;
use super::witness::Witness;

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

/// How a site is probed.
#[derive(Clone, Debug)]
pub struct Probes {
    /// URLs that answer 2xx while the site serves.
    pub urls: Vec<String>,
    /// HTTP probers, each a vantage point with its own connections.
    pub http_vantage_points: usize,
    pub interval: Duration,
    /// How long one probe may take.
    pub timeout: Duration,
    /// The witness's view calls the site failing once its lease has not
    /// changed for this long.
    pub stale_after: Duration,
}

/// Probes `site` every `probes.interval`: its `urls` from each HTTP vantage
/// point, its renewals of the lease in `witness` from one more, and reads
/// the plan's lookouts' reports on it, one vantage point each.
pub fn spawn(site: &str, probes: Probes, witness: Witness, rule: DetectionRule, clock: Arc<dyn Clock>) -> Probing {
    let (tx, health) = watch::channel(SiteHealth::Up);
    let down_at = Arc::new(Mutex::new(None));
    let down = down_at.clone();
    let site = site.to_owned();
    let task = tokio::spawn(async move {
        let client = || reqwest::Client::builder().timeout(probes.timeout).build().unwrap_or_default();
        let clients: Vec<reqwest::Client> = (0..probes.http_vantage_points).map(|_| client()).collect();
        let mut renewals = RenewalWatch::new(site.clone(), probes.stale_after);
        let mut trackers = vec![VantageTracker::default(); clients.len() + 1];
        let mut lookouts = Lookouts::new(witness.plan(), &site, probes.stale_after);
        let mut ticker = tokio::time::interval(probes.interval);
        loop {
            ticker.tick().await;
            let answers = join_all(clients.iter().map(|c| answer(c, &probes.urls)));
            let afar = lookouts.verdicts(witness.store(), clock.as_ref(), &rule);
            let (answers, lease, afar) = tokio::join!(answers, witness.read(), afar);
            let now = clock.now();
            let (holder, etag) = match &lease {
                Ok(Some(v)) => (Some(v.record.holder.as_str()), Some(v.etag.as_str())),
                _ => (None, None),
            };
            trackers[0].record(renewals.observe(now, holder, etag));
            for (tracker, ok) in trackers[1..].iter_mut().zip(answers) {
                tracker.record(Probe { at: now, ok });
            }
            let verdicts: Vec<_> = trackers.iter().map(|t| t.verdict(&rule)).chain(afar).collect();
            let health = site_health(&verdicts, &rule);
            if health == SiteHealth::Down {
                down.lock().unwrap_or_else(PoisonError::into_inner).get_or_insert_with(jiff::Timestamp::now);
            }
            tx.send_if_modified(|h| std::mem::replace(h, health) != health);
        }
    });
    Probing { health, down_at, task }
}

/// Whether most of `urls` answer 2xx.
pub async fn answer(client: &reqwest::Client, urls: &[String]) -> bool {
    let answers = join_all(
        urls.iter().map(|url| async move { client.get(url).send().await.is_ok_and(|r| r.status().is_success()) }),
    )
    .await;
    let up = answers.iter().filter(|ok| **ok).count();
    up * 2 > urls.len()
}
