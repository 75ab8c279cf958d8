//! After a restore: bring the tenant's database level with what SdI already
//! holds. A restore goes back to the backup's instant (or a WAL target), but
//! invoices sent after it are issued for good: their numbers are taken, and
//! SdI refuses their file names. Reconciling imports them (row, document,
//! receipts) and records the transmissions the restored data still shows as
//! pending, so that numbering continues after them and nothing is sent twice.
//! It reconciles with production's SdI: what it records is production's
//! (`sdi_environment`), as what the restored tenant sent was.

use std::collections::{BTreeMap, HashMap};

use jiff::Timestamp;

use super::config::SdiEnvironment;
use super::documents::Documents;
use super::fattura::{self, Format};
use super::numbering::sha256_hex;
use super::schema::queue;
use super::sdi::client::{self, Client};
use super::sdi::{ReceiptKind, Record};

const PRODUCTION: &str = SdiEnvironment::Production.as_str();

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reconciling tenant {tenant} with SdI")]
    Sdi {
        tenant: String,
        #[source]
        source: client::Error,
    },

    #[error("reconciling tenant {tenant}: database query failed: {step}")]
    Query {
        tenant: String,
        step: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },

    #[error(
        "reconciling tenant {tenant}: SdI's copy of {file_name} (SdI identifier {sdi_id}) cannot be read back: {why}"
    )]
    Unreadable { tenant: String, file_name: String, sdi_id: String, why: String },

    #[error("reconciling tenant {tenant}: writing document {file_name}")]
    Document {
        tenant: String,
        file_name: String,
        #[source]
        source: super::documents::Error,
    },

    #[error(
        "reconciling tenant {tenant}: the restored data and SdI disagree, nothing was changed:\n  {}",
        conflicts.join("\n  ")
    )]
    Conflicts { tenant: String, conflicts: Vec<String> },
}

/// What reconciling changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Reconciled {
    /// Transmissions SdI holds: all of them were compared.
    pub transmissions: usize,
    /// Invoices sent after the restore point, imported from SdI's copy.
    pub imported: Vec<String>,
    /// Invoices the restored data showed as pending that SdI already has.
    pub adopted: Vec<String>,
    pub receipts_added: u64,
    /// Numbers no invoice holds, per series: invoices issued after the
    /// restore point that never reached SdI. They must be issued again.
    pub gaps: BTreeMap<String, Vec<i64>>,
}

/// What the restored database says about one file.
struct Known {
    sdi_id: Option<String>,
    sha256: String,
    format: String,
}

/// Reconciles the tenant's database with what SdI at `sdi` holds for it.
/// Runs in one transaction that locks the invoices: run it before the app
/// serves the restored data. Conflicts change nothing and are all reported.
pub async fn reconcile(
    db: &mut tokio_postgres::Client,
    documents: &Documents,
    sdi: &Client,
    tenant: &str,
) -> Result<Reconciled> {
    let sdi_error = |source| Error::Sdi { tenant: tenant.to_string(), source };
    let query = |step| move |source| Error::Query { tenant: tenant.to_string(), step, source };
    let records = sdi.list(tenant).await.map_err(sdi_error)?;
    let tx = db.transaction().await.map_err(query("starting the transaction"))?;
    tx.batch_execute("LOCK TABLE invoices IN EXCLUSIVE MODE").await.map_err(query("locking the invoices"))?;
    let vat: Option<String> = tx
        .query_opt("SELECT value FROM fenice_meta WHERE key = 'vat'", &[])
        .await
        .map_err(query("reading the tenant's VAT number"))?
        .map(|row| row.get(0));
    let mut known: HashMap<String, Known> = HashMap::new();
    let mut taken: HashMap<(String, i64), String> = HashMap::new();
    for row in tx
        .query("SELECT file_name, sdi_id, xml_sha256, format, series, number FROM invoices", &[])
        .await
        .map_err(query("reading the invoices"))?
    {
        let file_name: String = row.get(0);
        taken.insert((row.get(4), row.get(5)), file_name.clone());
        known.insert(file_name, Known { sdi_id: row.get(1), sha256: row.get(2), format: row.get(3) });
    }
    let mut plan = Vec::new();
    let mut conflicts = Vec::new();
    for record in &records {
        let t = &record.transmission;
        match known.get(&t.file_name) {
            Some(k) if k.sha256 != t.sha256 => conflicts.push(format!(
                "{}: SdI holds other content (sha256 {}) than the restored document (sha256 {})",
                t.file_name,
                short(&t.sha256),
                short(&k.sha256)
            )),
            Some(Known { sdi_id: Some(id), .. }) if *id != t.sdi_id => {
                conflicts.push(format!("{}: restored as SdI identifier {id}, SdI says {}", t.file_name, t.sdi_id))
            }
            Some(k) => plan.push(Step::Known {
                record,
                public_body: k.format == Format::Fpa12.as_str(),
                pending: k.sdi_id.is_none(),
            }),
            None => {
                let xml = sdi.file(tenant, &t.sdi_id).await.map_err(sdi_error)?;
                let unreadable = |why: String| Error::Unreadable {
                    tenant: tenant.to_string(),
                    file_name: t.file_name.clone(),
                    sdi_id: t.sdi_id.clone(),
                    why,
                };
                if sha256_hex(&xml) != t.sha256 {
                    return Err(unreadable("its SHA-256 differs from the one SdI recorded".into()));
                }
                let invoice = fattura::parse(&xml).map_err(|e| unreadable(e.to_string()))?;
                if vat.as_deref().is_some_and(|vat| vat != invoice.supplier_vat) {
                    conflicts.push(format!(
                        "{}: issued by VAT number {}, this tenant's is {}",
                        t.file_name,
                        invoice.supplier_vat,
                        vat.as_deref().unwrap_or_default()
                    ));
                    continue;
                }
                if let Some(other) = taken.get(&(invoice.series.clone(), invoice.number)) {
                    conflicts.push(format!(
                        "{}: number {}/{} is held by {other} in the restored data",
                        t.file_name, invoice.series, invoice.number
                    ));
                    continue;
                }
                plan.push(Step::Import { record, invoice: Box::new(invoice), xml });
            }
        }
    }
    if !conflicts.is_empty() {
        return Err(Error::Conflicts { tenant: tenant.to_string(), conflicts });
    }

    let mut reconciled = Reconciled { transmissions: records.len(), ..Reconciled::default() };
    for step in plan {
        let (record, public_body) = match step {
            Step::Known { record, public_body, pending } => {
                if pending {
                    let t = &record.transmission;
                    let sent_at: Timestamp = t.received_at.parse().unwrap_or_else(|_| Timestamp::now());
                    tx.execute(
                        "UPDATE invoices SET queue_state = $2, sdi_id = $3, sent_at = $4, sent_epoch = $5, \
                             sdi_environment = $7 \
                         WHERE file_name = $1 AND queue_state = $6",
                        &[
                            &t.file_name,
                            &queue::SENT,
                            &t.sdi_id,
                            &sent_at,
                            &(t.epoch as i64),
                            &queue::PENDING,
                            &PRODUCTION,
                        ],
                    )
                    .await
                    .map_err(query("recording a transmission SdI holds"))?;
                    reconciled.adopted.push(t.file_name.clone());
                }
                (record, public_body)
            }
            Step::Import { record, invoice, xml } => {
                import(&tx, documents, tenant, record, &invoice, xml).await?;
                reconciled.imported.push(record.transmission.file_name.clone());
                (record, invoice.format.is_public_body())
            }
        };
        reconciled.receipts_added += record_receipts(&tx, tenant, record, public_body).await?;
    }
    reconciled.gaps = gaps(&tx, tenant).await?;
    tx.commit().await.map_err(query("committing"))?;
    Ok(reconciled)
}

enum Step<'a> {
    Known { record: &'a Record, public_body: bool, pending: bool },
    Import { record: &'a Record, invoice: Box<fattura::Fattura>, xml: Vec<u8> },
}

/// Stores an invoice SdI holds and the restored data lacks: its row as sent,
/// its document (in the table and the directory), and the counters moved past it.
async fn import(
    tx: &tokio_postgres::Transaction<'_>,
    documents: &Documents,
    tenant: &str,
    record: &Record,
    invoice: &fattura::Fattura,
    xml: Vec<u8>,
) -> Result<()> {
    let query = |step| move |source| Error::Query { tenant: tenant.to_string(), step, source };
    let t = &record.transmission;
    tx.execute(
        "INSERT INTO series (name, last_number) VALUES ($1, $2) \
         ON CONFLICT (name) DO UPDATE SET last_number = GREATEST(series.last_number, $2)",
        &[&invoice.series, &invoice.number],
    )
    .await
    .map_err(query("moving the series past an imported invoice"))?;
    tx.execute(
        "INSERT INTO file_progressive (id, last) VALUES (1, $1) \
         ON CONFLICT (id) DO UPDATE SET last = GREATEST(file_progressive.last, $1)",
        &[&(invoice.progressive as i64)],
    )
    .await
    .map_err(query("moving the file progressive past an imported invoice"))?;
    let sent_at: Timestamp = t.received_at.parse().unwrap_or_else(|_| Timestamp::now());
    tx.execute(
        "INSERT INTO invoices (series, number, issue_date, format, customer_vat, customer_name, recipient_code, \
         description, taxable_cents, vat_cents, file_name, xml_sha256, queue_state, sdi_id, sent_at, sent_epoch) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
        &[
            &invoice.series,
            &invoice.number,
            &invoice.issue_date,
            &invoice.format.as_str(),
            &invoice.customer_vat,
            &invoice.customer_name,
            &invoice.recipient_code,
            &invoice.description,
            &invoice.taxable_cents,
            &invoice.vat_cents,
            &t.file_name,
            &t.sha256,
            &queue::SENT,
            &t.sdi_id,
            &sent_at,
            &(t.epoch as i64),
        ],
    )
    .await
    .map_err(query("importing an invoice"))?;
    tx.execute("INSERT INTO documents (file_name, content) VALUES ($1, $2)", &[&t.file_name, &xml])
        .await
        .map_err(query("storing an imported document"))?;
    // Written before the commit, as the app does: a document without its row
    // is harmless (the name is set aside if ever issued), a row without its
    // document is not.
    documents.write(&t.file_name, xml).await.map_err(|source| Error::Document {
        tenant: tenant.to_string(),
        file_name: t.file_name.clone(),
        source,
    })
}

/// Stores the receipts SdI issued; marks the invoice done when one is final.
async fn record_receipts(
    tx: &tokio_postgres::Transaction<'_>,
    tenant: &str,
    record: &Record,
    public_body: bool,
) -> Result<u64> {
    let query = |step| move |source| Error::Query { tenant: tenant.to_string(), step, source };
    let mut added = 0;
    for receipt in &record.receipts {
        let received_at: Timestamp = receipt.issued_at.parse().unwrap_or_else(|_| Timestamp::now());
        added += tx
            .execute(
                "INSERT INTO receipts (sdi_environment, sdi_id, kind, received_at, detail) VALUES ($5, $1, $2, $3, $4) \
                 ON CONFLICT (sdi_environment, sdi_id, kind) DO NOTHING",
                &[&record.transmission.sdi_id, &receipt.kind.as_str(), &received_at, &receipt.detail, &PRODUCTION],
            )
            .await
            .map_err(query("recording a receipt"))?;
    }
    if record.receipts.iter().any(|r| ReceiptKind::is_final(r.kind, public_body)) {
        tx.execute(
            "UPDATE invoices SET queue_state = $2 WHERE sdi_id = $1 AND queue_state = $3 AND sdi_environment = $4",
            &[&record.transmission.sdi_id, &queue::DONE, &queue::SENT, &PRODUCTION],
        )
        .await
        .map_err(query("marking an invoice done"))?;
    }
    Ok(added)
}

/// The numbers below each series' last that no invoice holds.
async fn gaps(tx: &tokio_postgres::Transaction<'_>, tenant: &str) -> Result<BTreeMap<String, Vec<i64>>> {
    let rows = tx
        .query(
            "SELECT s.name, n FROM series s, generate_series(1, s.last_number) n \
             WHERE NOT EXISTS (SELECT 1 FROM invoices i WHERE i.series = s.name AND i.number = n) ORDER BY 1, 2",
            &[],
        )
        .await
        .map_err(|source| Error::Query { tenant: tenant.to_string(), step: "looking for gaps", source })?;
    let mut gaps: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for row in rows {
        gaps.entry(row.get(0)).or_default().push(row.get(1));
    }
    Ok(gaps)
}

fn short(sha256: &str) -> &str {
    &sha256[..sha256.len().min(12)]
}
