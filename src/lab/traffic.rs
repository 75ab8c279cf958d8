//! The tenants' customers: each tenant gets invoices issued continuously at
//! whichever site its endpoint points to, and the lab keeps every invoice the
//! app confirmed (201), the ground truth of what must survive a failover.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// An invoice an app confirmed.
#[derive(Clone, Debug, Deserialize)]
pub struct Committed {
    #[serde(skip)]
    pub tenant: String,
    pub series: String,
    pub number: i64,
    pub file_name: String,
    /// The document's SHA-256: tells this invoice from another with its number.
    pub xml_sha256: String,
}

/// Where a tenant is served now (the lab's stand-in for DNS).
pub type Resolve = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// The running traffic.
pub struct Traffic {
    committed: Arc<Mutex<Vec<Committed>>>,
    refused: Arc<AtomicU64>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Traffic {
    /// Issues an invoice for each tenant every `interval`, at the site `resolve` names.
    pub fn start(tenants: &[String], resolve: Resolve, interval: Duration) -> Self {
        let committed = Arc::new(Mutex::new(Vec::new()));
        let refused = Arc::new(AtomicU64::new(0));
        let (stop, stopped) = watch::channel(false);
        let http = reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build().unwrap_or_default();
        let series = jiff::Zoned::now().year().to_string();
        let tasks = tenants
            .iter()
            .map(|tenant| {
                let customer = Customer {
                    tenant: tenant.clone(),
                    series: series.clone(),
                    http: http.clone(),
                    resolve: resolve.clone(),
                    committed: committed.clone(),
                    refused: refused.clone(),
                };
                tokio::spawn(customer.run(interval, stopped.clone()))
            })
            .collect();
        Self { committed, refused, stop, tasks }
    }

    /// Invoices confirmed so far.
    pub fn confirmed(&self) -> usize {
        self.committed.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Requests that got no confirmation (fenced, unreachable, failed).
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Stops issuing; waits for requests in flight. Every confirmed invoice.
    pub async fn stop(self) -> Vec<Committed> {
        self.stop.send_replace(true);
        for task in self.tasks {
            let _ = task.await;
        }
        std::mem::take(&mut *self.committed.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

struct Customer {
    tenant: String,
    series: String,
    http: reqwest::Client,
    resolve: Resolve,
    committed: Arc<Mutex<Vec<Committed>>>,
    refused: Arc<AtomicU64>,
}

impl Customer {
    async fn run(self, interval: Duration, mut stop: watch::Receiver<bool>) {
        let mut ticker = tokio::time::interval(interval);
        let mut request = 0;
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
            request += 1;
            match self.issue(request).await {
                Some(invoice) => self.committed.lock().unwrap_or_else(PoisonError::into_inner).push(invoice),
                None => {
                    self.refused.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    async fn issue(&self, request: u64) -> Option<Committed> {
        let url = (self.resolve)(&self.tenant)?;
        // NB: each request's own description, so that a lost invoice and the one
        // that took its number differ in content, and the check can tell them apart.
        let body = serde_json::json!({
            "series": self.series,
            "customer": {"vat": "09876543210", "name": "Studio Rossi", "recipient_code": "ABC1234"},
            "description": format!("Consulenza, richiesta {request}"),
            "taxable_cents": 10_000,
        });
        // NB: a tenant not yet failed over still resolves to its dead primary's
        // port, which an app started since at the standby may have taken.
        let answer = (self.http.post(format!("{url}/v1/invoices")))
            .header(crate::app::http::TENANT_HEADER, &self.tenant)
            .json(&body)
            .send()
            .await
            .ok()?;
        if answer.status() != reqwest::StatusCode::CREATED {
            return None;
        }
        let mut invoice: Committed = answer.json().await.ok()?;
        invoice.tenant = self.tenant.clone();
        Some(invoice)
    }
}
