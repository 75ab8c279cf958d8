//! The sender: transmits pending invoices to SdI, oldest first, and records the
//! receipts of sent ones until a final receipt arrives.
//!
//! Each round (every `send_interval`, and at once on activation) runs only
//! while the app is active, and each transmission and each write holds a
//! fencing [`Permit`](super::fencing::Permit). The channel endpoint is read
//! from the channel table every round, so `PUT /v1/channel` takes effect at the
//! next one.
//!
//! NB: a crash between SdI accepting a file and the app recording it leaves the
//! invoice pending; the next transmission of that file is refused as a
//! duplicate and the refusal carries the earlier transmission. If its SHA-256
//! is ours, the earlier transmission was ours and is recorded as sent, with its
//! SdI identifier, exactly once.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use super::config::SdiEnvironment;
use super::db::{self, Db};
use super::documents::Documents;
use super::fattura::Format;
use super::fencing::Fencing;
use super::numbering::sha256_hex;
use super::schema::queue;
use super::sdi::client::{self, Client};
use super::sdi::{Receipt, RefusalKind, Transmission};

/// Invoices looked at per round, in each of the two steps.
const BATCH: i64 = 200;

/// What happened to one transmission attempt, decided from SdI's answer alone.
#[derive(Debug)]
pub enum Outcome {
    /// SdI accepted the file now.
    Accepted(Transmission),
    /// SdI already had this very file (same SHA-256): an earlier attempt of
    /// ours got through but was not recorded.
    EarlierWasOurs(Transmission),
    /// SdI has a different file under this name: a person must look.
    Clash { earlier: Box<Transmission> },
    /// SdI has seen a newer epoch for this tenant: another site took over.
    StaleEpoch { highest: u64 },
    /// SdI refused the file for another reason; it stays pending.
    Refused { kind: RefusalKind, message: String },
    /// SdI did not answer usefully; try again next round.
    Retry(Box<client::Error>),
}

/// Sorts SdI's answer to sending a file whose SHA-256 is `our_sha256`.
pub fn outcome(result: client::Result<Transmission>, our_sha256: &str) -> Outcome {
    match result {
        Ok(transmission) => Outcome::Accepted(transmission),
        Err(client::Error::Duplicate { earlier, .. }) if earlier.sha256.eq_ignore_ascii_case(our_sha256) => {
            Outcome::EarlierWasOurs(*earlier)
        }
        Err(client::Error::Duplicate { earlier, .. }) => Outcome::Clash { earlier },
        Err(client::Error::StaleEpoch { highest, .. }) => Outcome::StaleEpoch { highest },
        Err(client::Error::Refused { kind, message, .. }) => Outcome::Refused { kind, message },
        Err(
            e @ (client::Error::Status { .. } | client::Error::Transport { .. } | client::Error::BadEndpoint { .. }),
        ) => Outcome::Retry(Box::new(e)),
    }
}

/// What the sender has done since start; `GET /v1/stats` shows it.
#[derive(Debug, Default)]
pub struct SenderStats {
    rounds: AtomicU64,
    transmitted: AtomicU64,
    adopted: AtomicU64,
    receipts: AtomicU64,
    failed_rounds: AtomicU64,
}

/// A copy of [`SenderStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenderCounters {
    /// Wake-ups of the sender loop, fenced or not.
    pub rounds: u64,
    /// Files SdI accepted from this process.
    pub transmitted: u64,
    /// Earlier transmissions of ours recorded from a duplicate refusal.
    pub adopted: u64,
    /// Receipts recorded (each once).
    pub receipts: u64,
    /// Rounds that stopped on an error (logged).
    pub failed_rounds: u64,
}

impl SenderStats {
    pub fn counters(&self) -> SenderCounters {
        SenderCounters {
            rounds: self.rounds.load(Ordering::Relaxed),
            transmitted: self.transmitted.load(Ordering::Relaxed),
            adopted: self.adopted.load(Ordering::Relaxed),
            receipts: self.receipts.load(Ordering::Relaxed),
            failed_rounds: self.failed_rounds.load(Ordering::Relaxed),
        }
    }
}

/// The sender of one tenant.
pub struct Sender {
    pub tenant: String,
    pub db: Db,
    pub documents: Documents,
    pub fencing: Arc<Fencing>,
    pub interval: Duration,
    /// Which SdI the channel reaches: transmissions and receipts are recorded
    /// under it, and only its own are followed up.
    pub environment: SdiEnvironment,
    pub stats: Arc<SenderStats>,
}

/// What the sender keeps from one round to the next.
#[derive(Default)]
struct Memory {
    /// The client of the last endpoint.
    client: Option<Client>,
    said_no_channel: bool,
    /// Files already logged as stuck (clash, refusal, missing or altered document):
    /// logged once per process, not every round.
    complained: HashSet<String>,
}

/// One invoice waiting for SdI.
struct Queued {
    series: String,
    number: i64,
    file_name: String,
    xml_sha256: String,
}

/// One invoice waiting for its final receipt.
struct Sent {
    series: String,
    number: i64,
    file_name: String,
    sdi_id: String,
    public_body: bool,
}

/// Why a round stopped early.
#[derive(Debug, thiserror::Error)]
enum RoundError {
    #[error(transparent)]
    Db(#[from] db::Error),
    #[error(transparent)]
    Sdi(#[from] client::Error),
}

impl Sender {
    /// Runs rounds until `stop` turns true (or its sender is dropped).
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut fence_changes = self.fencing.subscribe();
        let mut memory = Memory::default();
        loop {
            tokio::select! {
                _ = stop.wait_for(|stop| *stop) => return,
                _ = ticks.tick() => {}
                changed = fence_changes.changed() => if changed.is_err() { return },
            }
            self.stats.rounds.fetch_add(1, Ordering::Relaxed);
            if !self.fencing.state().active {
                continue;
            }
            let round = self.round(&mut memory);
            let result = tokio::select! {
                // NB: dropping a round mid-transmission is a crash as far as SdI
                // knows; the duplicate rule above covers it.
                _ = stop.wait_for(|stop| *stop) => return,
                result = round => result,
            };
            if let Err(e) = result {
                self.stats.failed_rounds.fetch_add(1, Ordering::Relaxed);
                warn!(tenant = %self.tenant, error = &e as &dyn std::error::Error, "sender round stopped; retrying next round");
            }
        }
    }

    async fn round(&self, memory: &mut Memory) -> Result<(), RoundError> {
        let Some(channel) = self.db.channel().await? else {
            if !memory.said_no_channel {
                warn!(tenant = %self.tenant, "no SdI channel configured (PUT /v1/channel); nothing is sent");
                memory.said_no_channel = true;
            }
            return Ok(());
        };
        memory.said_no_channel = false;
        let client = match memory.client.take() {
            Some(c) if c.endpoint() == channel.endpoint.trim_end_matches('/') => c,
            _ => Client::new(&channel.endpoint)?,
        };
        let client = memory.client.insert(client).clone();
        self.send_pending(&client, &mut memory.complained).await?;
        self.collect_receipts(&client).await?;
        Ok(())
    }

    async fn send_pending(&self, client: &Client, complained: &mut HashSet<String>) -> Result<(), RoundError> {
        for queued in pending(&self.db).await? {
            let Ok(permit) = self.fencing.permit().await else { return Ok(()) };
            let file = queued.file_name.as_str();
            let xml = match self.documents.read(file).await {
                Ok(xml) => xml,
                Err(e) => {
                    if complained.insert(queued.file_name.clone()) {
                        error!(tenant = %self.tenant, file = %file, error = &e as &dyn std::error::Error, "cannot read the document of a pending invoice; not sent");
                    }
                    continue;
                }
            };
            let actual = sha256_hex(&xml);
            if actual != queued.xml_sha256 {
                if complained.insert(queued.file_name.clone()) {
                    error!(tenant = %self.tenant, file = %file, expected = %queued.xml_sha256, %actual, "document does not match its stored SHA-256; not sent");
                }
                continue;
            }
            let epoch = permit.epoch();
            debug!(tenant = %self.tenant, file = %file, epoch, "transmitting");
            match outcome(client.send(&self.tenant, epoch, file, xml).await, &queued.xml_sha256) {
                Outcome::Accepted(t) => {
                    if mark_sent(&self.db, self.environment, &queued, &t).await? {
                        self.stats.transmitted.fetch_add(1, Ordering::Relaxed);
                        info!(tenant = %self.tenant, file = %file, sdi_id = %t.sdi_id, epoch, "transmitted to SdI");
                    }
                }
                Outcome::EarlierWasOurs(t) => {
                    if mark_sent(&self.db, self.environment, &queued, &t).await? {
                        self.stats.adopted.fetch_add(1, Ordering::Relaxed);
                        info!(
                            tenant = %self.tenant, file = %file, sdi_id = %t.sdi_id, earlier_epoch = t.epoch,
                            "SdI already had this very file from an earlier attempt; recorded it as sent"
                        );
                    }
                }
                Outcome::Clash { earlier } => {
                    if complained.insert(queued.file_name.clone()) {
                        error!(
                            tenant = %self.tenant, file = %file, sdi_id = %earlier.sdi_id, theirs = %earlier.sha256, ours = %queued.xml_sha256,
                            "SdI holds a different file under this name; left pending for a person to reconcile"
                        );
                    }
                }
                Outcome::StaleEpoch { highest } => {
                    drop(permit);
                    if self.fencing.fence_epoch(epoch).await.is_some() {
                        error!(
                            tenant = %self.tenant, epoch, highest,
                            "SdI has seen a newer epoch: another site has taken over this tenant; fenced"
                        );
                    }
                    return Ok(());
                }
                Outcome::Refused { kind, message } => {
                    if complained.insert(queued.file_name.clone()) {
                        error!(tenant = %self.tenant, file = %file, ?kind, %message, "SdI refused the file; left pending");
                    }
                }
                Outcome::Retry(e) => return Err(RoundError::Sdi(*e)),
            }
        }
        Ok(())
    }

    async fn collect_receipts(&self, client: &Client) -> Result<(), RoundError> {
        for sent in sent(&self.db, self.environment).await? {
            let record = match client.record(&self.tenant, &sent.sdi_id).await {
                Ok(record) => record,
                Err(e @ client::Error::Refused { .. }) => {
                    warn!(tenant = %self.tenant, file = %sent.file_name, error = &e as &dyn std::error::Error, "SdI does not know a sent invoice");
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            if record.transmission.file_name != sent.file_name {
                error!(
                    tenant = %self.tenant, sdi_id = %sent.sdi_id, ours = %sent.file_name, theirs = %record.transmission.file_name,
                    "SdI's transmission under this identifier is another file; receipts not recorded"
                );
                continue;
            }
            if record.receipts.is_empty() {
                continue;
            }
            let Ok(_permit) = self.fencing.permit().await else { return Ok(()) };
            let (recorded, done) = record_receipts(&self.db, self.environment, &sent, &record.receipts).await?;
            self.stats.receipts.fetch_add(recorded, Ordering::Relaxed);
            if done {
                info!(tenant = %self.tenant, file = %sent.file_name, sdi_id = %sent.sdi_id, "final receipt recorded; done");
            }
        }
        Ok(())
    }
}

/// Pending invoices in issue order (file names sort like their progressives).
async fn pending(db: &Db) -> db::Result<Vec<Queued>> {
    let rows = db
        .pool
        .get()
        .await?
        .query(
            "SELECT series, number, file_name, xml_sha256 FROM invoices \
             WHERE queue_state = $1 ORDER BY file_name LIMIT $2",
            &[&queue::PENDING, &BATCH],
        )
        .await
        .map_err(db::Error::query("listing pending invoices"))?;
    Ok(rows
        .iter()
        .map(|row| Queued { series: row.get(0), number: row.get(1), file_name: row.get(2), xml_sha256: row.get(3) })
        .collect())
}

/// Sent invoices waiting for a final receipt from `environment`, in issue order.
async fn sent(db: &Db, environment: SdiEnvironment) -> db::Result<Vec<Sent>> {
    let rows = db
        .pool
        .get()
        .await?
        .query(
            "SELECT series, number, file_name, sdi_id, format FROM invoices \
             WHERE queue_state = $1 AND sdi_environment = $3 ORDER BY file_name LIMIT $2",
            &[&queue::SENT, &BATCH, &environment.as_str()],
        )
        .await
        .map_err(db::Error::query("listing sent invoices"))?;
    Ok(rows
        .iter()
        .map(|row| Sent {
            series: row.get(0),
            number: row.get(1),
            file_name: row.get(2),
            sdi_id: row.get(3),
            public_body: Format::parse(row.get(4)).is_some_and(Format::is_public_body),
        })
        .collect())
}

/// Records a transmission of a pending invoice; false if it was no longer
/// pending (then nothing changed).
async fn mark_sent(db: &Db, environment: SdiEnvironment, queued: &Queued, t: &Transmission) -> db::Result<bool> {
    let sent_at: Timestamp = t.received_at.parse().unwrap_or_else(|_| Timestamp::now());
    let epoch = i64::try_from(t.epoch).unwrap_or(i64::MAX);
    let updated = db
        .pool
        .get()
        .await?
        .execute(
            "UPDATE invoices SET queue_state = $3, sdi_id = $4, sent_at = $5, sent_epoch = $6, sdi_environment = $8 \
             WHERE series = $1 AND number = $2 AND queue_state = $7",
            &[
                &queued.series,
                &queued.number,
                &queue::SENT,
                &t.sdi_id,
                &sent_at,
                &epoch,
                &queue::PENDING,
                &environment.as_str(),
            ],
        )
        .await
        .map_err(db::Error::query("recording a transmission"))?;
    if updated == 0 {
        warn!(file = %queued.file_name, "invoice was no longer pending when its transmission was recorded");
    }
    Ok(updated == 1)
}

/// Stores receipts (each kind once) and marks the invoice done when one is
/// final. Returns how many receipts were new, and whether it marked it done.
async fn record_receipts(
    db: &Db,
    environment: SdiEnvironment,
    sent: &Sent,
    receipts: &[Receipt],
) -> db::Result<(u64, bool)> {
    let mut client = db.pool.get().await?;
    let tx = client.transaction().await.map_err(db::Error::query("starting to record receipts"))?;
    let mut done = false;
    let mut recorded = 0;
    for receipt in receipts {
        let received_at: Timestamp = receipt.issued_at.parse().unwrap_or_else(|_| Timestamp::now());
        recorded += tx
            .execute(
                "INSERT INTO receipts (sdi_environment, sdi_id, kind, received_at, detail) VALUES ($5, $1, $2, $3, $4) \
             ON CONFLICT (sdi_environment, sdi_id, kind) DO NOTHING",
                &[&sent.sdi_id, &receipt.kind.as_str(), &received_at, &receipt.detail, &environment.as_str()],
            )
            .await
            .map_err(db::Error::query("recording a receipt"))?;
        done |= receipt.kind.is_final(sent.public_body);
    }
    let mut marked = false;
    if done {
        marked = tx
            .execute(
                "UPDATE invoices SET queue_state = $3 WHERE series = $1 AND number = $2 AND queue_state = $4",
                &[&sent.series, &sent.number, &queue::DONE, &queue::SENT],
            )
            .await
            .map_err(db::Error::query("marking an invoice done"))?
            == 1;
    }
    tx.commit().await.map_err(db::Error::query("committing receipts"))?;
    Ok((recorded, marked))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transmission(sha256: &str) -> Transmission {
        Transmission {
            sdi_id: "1001".into(),
            tenant: "acme".into(),
            file_name: "IT01234567890_00001.xml".into(),
            sha256: sha256.into(),
            epoch: 1,
            received_at: "2026-11-23T10:00:00Z".into(),
        }
    }

    fn duplicate(sha256: &str) -> client::Error {
        client::Error::Duplicate {
            endpoint: "http://sdi".into(),
            file_name: "IT01234567890_00001.xml".into(),
            earlier: Box::new(transmission(sha256)),
        }
    }

    #[test]
    fn sdi_answers_sort_into_outcomes() {
        assert!(matches!(outcome(Ok(transmission("aa")), "aa"), Outcome::Accepted(t) if t == transmission("aa")));
        assert!(matches!(outcome(Err(duplicate("aa")), "aa"), Outcome::EarlierWasOurs(t) if t.sdi_id == "1001"));
        assert!(matches!(outcome(Err(duplicate("AA")), "aa"), Outcome::EarlierWasOurs(_)));
        assert!(matches!(outcome(Err(duplicate("bb")), "aa"), Outcome::Clash { earlier } if earlier.sha256 == "bb"));
        let stale = client::Error::StaleEpoch { endpoint: "e".into(), tenant: "acme".into(), epoch: 1, highest: 4 };
        assert!(matches!(outcome(Err(stale), "aa"), Outcome::StaleEpoch { highest: 4 }));
        let refused =
            client::Error::Refused { endpoint: "e".into(), kind: RefusalKind::BadRequest, message: "m".into() };
        assert!(matches!(outcome(Err(refused), "aa"), Outcome::Refused { kind: RefusalKind::BadRequest, .. }));
        let status = client::Error::Status { endpoint: "e".into(), what: "w".into(), status: 503, body: String::new() };
        assert!(matches!(outcome(Err(status), "aa"), Outcome::Retry(_)));
    }
}
