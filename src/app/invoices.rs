//! Invoices as the API shows them: what a client asks to issue (checked field
//! by field), the stored invoice, its receipts, and the tenant's counters.

use std::collections::BTreeMap;

use jiff::Timestamp;
use jiff::civil::Date;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_postgres::Row;

use super::db::{Db, Error, Result};
use super::fattura::{self, Format};
use super::schema::queue;
use super::sdi::ReceiptKind;

/// Longest series name; with the number it must fit Numero (20 characters).
pub const SERIES_MAX: usize = 10;
/// Invoices per page of `GET /v1/invoices` unless asked, and at most.
pub const LIST_DEFAULT: i64 = 100;
pub const LIST_MAX: i64 = 1000;
/// The VAT rate when the request names none.
pub const DEFAULT_VAT_RATE: i64 = 22;

/// Where an invoice stands in the outbound SdI queue (see [`queue`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueState {
    Pending,
    Sent,
    Done,
}

impl QueueState {
    pub const ALL: [QueueState; 3] = [QueueState::Pending, QueueState::Sent, QueueState::Done];

    pub fn as_str(self) -> &'static str {
        match self {
            QueueState::Pending => queue::PENDING,
            QueueState::Sent => queue::SENT,
            QueueState::Done => queue::DONE,
        }
    }

    pub fn parse(s: &str) -> Option<QueueState> {
        QueueState::ALL.into_iter().find(|state| state.as_str() == s)
    }
}

/// The customer of an invoice (CessionarioCommittente).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Customer {
    pub vat: String,
    pub name: String,
    /// 7 characters for a business (FPR12), 6 for a public body (FPA12).
    pub recipient_code: String,
}

/// An invoice to issue, every field checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewInvoice {
    pub series: String,
    /// None: today in Europe/Rome.
    pub issue_date: Option<Date>,
    pub customer: Customer,
    pub format: Format,
    pub description: String,
    pub taxable_cents: i64,
    pub vat_rate_percent: i64,
}

/// A request field that is missing or wrong; `field` is its JSON path.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {why}")]
pub struct InvalidField {
    pub field: String,
    pub why: String,
}

fn invalid(field: &str, why: impl Into<String>) -> InvalidField {
    InvalidField { field: field.to_string(), why: why.into() }
}

impl NewInvoice {
    /// Reads the body of `POST /v1/invoices`.
    pub fn from_json(body: &Value) -> std::result::Result<NewInvoice, InvalidField> {
        let object = body.as_object().ok_or_else(|| invalid("body", "must be a JSON object"))?;
        const KNOWN: [&str; 6] =
            ["series", "issue_date", "customer", "description", "taxable_cents", "vat_rate_percent"];
        if let Some(unknown) = object.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            return Err(invalid(unknown, format!("unknown field; the fields are {}", KNOWN.join(", "))));
        }

        let series = string(object.get("series"), "series")?;
        check_series(&series).map_err(|why| invalid("series", why))?;

        let issue_date = match object.get("issue_date") {
            None | Some(Value::Null) => None,
            Some(value) => Some(date(value, "issue_date")?),
        };

        let customer_value = object.get("customer").ok_or_else(|| invalid("customer", "is required"))?;
        let customer_object = customer_value
            .as_object()
            .ok_or_else(|| invalid("customer", "must be an object with vat, name, recipient_code"))?;
        if let Some(unknown) = customer_object.keys().find(|k| !["vat", "name", "recipient_code"].contains(&k.as_str()))
        {
            return Err(invalid(
                &format!("customer.{unknown}"),
                "unknown field; the fields are vat, name, recipient_code",
            ));
        }
        let vat = string(customer_object.get("vat"), "customer.vat")?;
        if !super::config::is_partita_iva(&vat) {
            return Err(invalid("customer.vat", format!("{vat:?} is not a partita IVA (11 digits)")));
        }
        let name = string(customer_object.get("name"), "customer.name")?;
        fattura::check_latin_text(&name, fattura::NAME_MAX).map_err(|why| invalid("customer.name", why))?;
        let recipient_code = string(customer_object.get("recipient_code"), "customer.recipient_code")?;
        let format = Format::for_recipient_code(&recipient_code).ok_or_else(|| {
            invalid(
                "customer.recipient_code",
                format!(
                    "{recipient_code:?} is neither a 7-character codice destinatario (a business) nor a \
                     6-character codice ufficio (a public body), in uppercase letters and digits"
                ),
            )
        })?;

        let description = string(object.get("description"), "description")?;
        fattura::check_latin_text(&description, fattura::DESCRIPTION_MAX).map_err(|why| invalid("description", why))?;

        let taxable_cents = integer(object.get("taxable_cents"), "taxable_cents")?
            .ok_or_else(|| invalid("taxable_cents", "is required"))?;
        let vat_rate_percent = integer(object.get("vat_rate_percent"), "vat_rate_percent")?.unwrap_or(DEFAULT_VAT_RATE);
        if !fattura::VAT_RATES.contains(&vat_rate_percent) {
            return Err(invalid(
                "vat_rate_percent",
                format!("{vat_rate_percent} is not an Italian VAT rate; use one of {:?}", fattura::VAT_RATES),
            ));
        }
        // The largest taxable amount whose total still fits a FatturaPA amount.
        let max_taxable = fattura::AMOUNT_MAX_CENTS * 100 / (100 + vat_rate_percent);
        if !(1..=max_taxable).contains(&taxable_cents) {
            return Err(invalid(
                "taxable_cents",
                format!("{taxable_cents} is out of range: use 1 to {max_taxable} cents"),
            ));
        }

        Ok(NewInvoice {
            series,
            issue_date,
            customer: Customer { vat, name, recipient_code },
            format,
            description,
            taxable_cents,
            vat_rate_percent,
        })
    }
}

/// A series name: 1 to [`SERIES_MAX`] letters, digits or '-' (it sits in URLs and in Numero).
pub fn check_series(series: &str) -> std::result::Result<(), String> {
    if series.is_empty() || series.len() > SERIES_MAX {
        return Err(format!("{series:?}: use 1 to {SERIES_MAX} characters"));
    }
    if !series.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(format!("{series:?}: use letters, digits and '-' only"));
    }
    Ok(())
}

fn string(value: Option<&Value>, field: &str) -> std::result::Result<String, InvalidField> {
    match value {
        None | Some(Value::Null) => Err(invalid(field, "is required")),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(invalid(field, "must be a string")),
    }
}

fn integer(value: Option<&Value>, field: &str) -> std::result::Result<Option<i64>, InvalidField> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            n.as_i64().map(Some).ok_or_else(|| invalid(field, "must be a whole number (cents, not euros)"))
        }
        Some(_) => Err(invalid(field, "must be a number")),
    }
}

fn date(value: &Value, field: &str) -> std::result::Result<Date, InvalidField> {
    let text = value.as_str().ok_or_else(|| invalid(field, "must be a YYYY-MM-DD string"))?;
    let shaped = text.len() == 10 && text.as_bytes()[4] == b'-' && text.as_bytes()[7] == b'-';
    match text.parse::<Date>() {
        Ok(date) if shaped => Ok(date),
        _ => Err(invalid(field, format!("{text:?} is not a YYYY-MM-DD date"))),
    }
}

/// An issued invoice, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invoice {
    pub series: String,
    pub number: i64,
    pub issue_date: Date,
    pub format: Format,
    pub customer: Customer,
    pub description: String,
    pub taxable_cents: i64,
    pub vat_cents: i64,
    pub total_cents: i64,
    pub file_name: String,
    pub xml_sha256: String,
    pub queue_state: QueueState,
    pub sdi_id: Option<String>,
    pub sent_at: Option<Timestamp>,
    pub sent_epoch: Option<i64>,
    pub created_at: Timestamp,
}

/// The invoice columns in the order [`Invoice::from_row`] reads them.
pub const COLUMNS: &str = "series, number, issue_date, format, customer_vat, customer_name, recipient_code, \
     description, taxable_cents, vat_cents, file_name, xml_sha256, queue_state, sdi_id, sent_at, sent_epoch, created_at";

impl Invoice {
    /// Reads a row selected with [`COLUMNS`].
    pub fn from_row(row: &Row) -> Result<Invoice> {
        let format: String = row.get(3);
        let queue_state: String = row.get(12);
        let taxable_cents: i64 = row.get(8);
        let vat_cents: i64 = row.get(9);
        Ok(Invoice {
            series: row.get(0),
            number: row.get(1),
            issue_date: row.get(2),
            format: Format::parse(&format).ok_or(Error::Unexpected { what: format!("invoice format {format:?}") })?,
            customer: Customer { vat: row.get(4), name: row.get(5), recipient_code: row.get(6) },
            description: row.get(7),
            taxable_cents,
            vat_cents,
            total_cents: taxable_cents + vat_cents,
            file_name: row.get(10),
            xml_sha256: row.get(11),
            queue_state: QueueState::parse(&queue_state)
                .ok_or(Error::Unexpected { what: format!("queue state {queue_state:?}") })?,
            sdi_id: row.get(13),
            sent_at: row.get(14),
            sent_epoch: row.get(15),
            created_at: row.get(16),
        })
    }
}

/// A receipt as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredReceipt {
    pub kind: ReceiptKind,
    pub received_at: Timestamp,
    pub detail: String,
}

/// Reads a receipt kind as the receipts table stores it.
pub fn receipt_kind(s: &str) -> Option<ReceiptKind> {
    use ReceiptKind::*;
    [RC, NS, MC, NE, DT, AT].into_iter().find(|kind| kind.as_str() == s)
}

/// Which invoices `GET /v1/invoices` lists.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListFilter {
    pub series: Option<String>,
    pub queue_state: Option<QueueState>,
    /// With `series`: only numbers above this one (paging).
    pub after_number: Option<i64>,
    pub limit: Option<i64>,
}

/// An invoice whose SdI deadline is near.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deadline {
    pub series: String,
    pub number: i64,
    pub file_name: String,
    pub queue_state: String,
    pub deadline: Date,
    pub rule: String,
}

/// The tenant's counters, read in one snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Invoices per queue state; every state is present.
    pub invoices: BTreeMap<QueueState, i64>,
    /// Receipts per kind; every kind is present.
    pub receipts: BTreeMap<String, i64>,
    /// The last number issued in each series.
    pub last_numbers: BTreeMap<String, i64>,
    /// The last file progressive used (0: none yet).
    pub last_file_progressive: i64,
}

impl Db {
    /// One invoice.
    pub async fn invoice(&self, series: &str, number: i64) -> Result<Option<Invoice>> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                &format!("SELECT {COLUMNS} FROM invoices WHERE series = $1 AND number = $2"),
                &[&series, &number],
            )
            .await
            .map_err(Error::query("reading an invoice"))?;
        row.as_ref().map(Invoice::from_row).transpose()
    }

    /// Invoices ordered by series and number.
    pub async fn invoices(&self, filter: &ListFilter) -> Result<Vec<Invoice>> {
        let limit = filter.limit.unwrap_or(LIST_DEFAULT).clamp(1, LIST_MAX);
        let state = filter.queue_state.map(QueueState::as_str);
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM invoices \
                     WHERE ($1::text IS NULL OR series = $1) \
                       AND ($2::text IS NULL OR queue_state = $2) \
                       AND ($3::bigint IS NULL OR number > $3) \
                     ORDER BY series, number LIMIT $4"
                ),
                &[&filter.series, &state, &filter.after_number, &limit],
            )
            .await
            .map_err(Error::query("listing invoices"))?;
        rows.iter().map(Invoice::from_row).collect()
    }

    /// The receipts of one invoice, oldest first; None if there is no such invoice.
    pub async fn receipts(&self, series: &str, number: i64) -> Result<Option<Vec<StoredReceipt>>> {
        let client = self.pool.get().await?;
        let Some(invoice) = client
            .query_opt(
                "SELECT sdi_id, sdi_environment FROM invoices WHERE series = $1 AND number = $2",
                &[&series, &number],
            )
            .await
            .map_err(Error::query("reading an invoice"))?
        else {
            return Ok(None);
        };
        let Some(sdi_id) = invoice.get::<_, Option<String>>(0) else { return Ok(Some(Vec::new())) };
        let environment: String = invoice.get(1);
        let rows = client
            .query(
                "SELECT kind, received_at, detail FROM receipts WHERE sdi_id = $1 AND sdi_environment = $2 \
                 ORDER BY received_at, kind",
                &[&sdi_id, &environment],
            )
            .await
            .map_err(Error::query("reading receipts"))?;
        let receipts = rows
            .iter()
            .map(|row| {
                let kind: String = row.get(0);
                Ok(StoredReceipt {
                    kind: receipt_kind(&kind).ok_or(Error::Unexpected { what: format!("receipt kind {kind:?}") })?,
                    received_at: row.get(1),
                    detail: row.get(2),
                })
            })
            .collect::<Result<_>>()?;
        Ok(Some(receipts))
    }

    /// The counters, all from one snapshot of the database.
    /// Invoices whose SdI deadline falls on or before `before` (a day in
    /// Italy): pending ones must reach SdI within 12 days of their date, and
    /// rejected ones (NS) be sent again within 5 days of the rejection. A
    /// failover whose RTO crosses one of these dates must say so.
    pub async fn deadlines(&self, before: Date) -> Result<Vec<Deadline>> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT series, number, file_name, queue_state, issue_date + 12 AS deadline, 'transmit' AS rule \
                 FROM invoices WHERE queue_state = 'pending' AND issue_date + 12 <= $1 \
                 UNION ALL \
                 SELECT i.series, i.number, i.file_name, i.queue_state, \
                        (r.received_at AT TIME ZONE 'Europe/Rome')::date + 5, 'resend' \
                 FROM invoices i JOIN receipts r ON r.sdi_id = i.sdi_id AND r.sdi_environment = i.sdi_environment AND r.kind = 'NS' \
                 WHERE (r.received_at AT TIME ZONE 'Europe/Rome')::date + 5 <= $1 \
                 ORDER BY 5, 1, 2",
                &[&before],
            )
            .await
            .map_err(Error::query("looking for deadlines"))?;
        Ok(rows
            .iter()
            .map(|row| Deadline {
                series: row.get(0),
                number: row.get(1),
                file_name: row.get(2),
                queue_state: row.get(3),
                deadline: row.get(4),
                rule: match row.get::<_, &str>(5) {
                    "resend" => "resend within 5 days of the rejection (NS)",
                    _ => "transmit within 12 days of the invoice date",
                }
                .to_string(),
            })
            .collect())
    }

    pub async fn counters(&self) -> Result<Counters> {
        let mut client = self.pool.get().await?;
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(Error::query("starting a snapshot"))?;
        let mut invoices: BTreeMap<QueueState, i64> = QueueState::ALL.into_iter().map(|s| (s, 0)).collect();
        for row in tx
            .query("SELECT queue_state, count(*) FROM invoices GROUP BY queue_state", &[])
            .await
            .map_err(Error::query("counting invoices"))?
        {
            let state: String = row.get(0);
            let state =
                QueueState::parse(&state).ok_or(Error::Unexpected { what: format!("queue state {state:?}") })?;
            invoices.insert(state, row.get(1));
        }
        let mut receipts: BTreeMap<String, i64> =
            ["RC", "NS", "MC", "NE", "DT", "AT"].into_iter().map(|k| (k.to_string(), 0)).collect();
        for row in tx
            .query("SELECT kind, count(*) FROM receipts GROUP BY kind", &[])
            .await
            .map_err(Error::query("counting receipts"))?
        {
            receipts.insert(row.get(0), row.get(1));
        }
        let last_numbers = tx
            .query("SELECT name, last_number FROM series ORDER BY name", &[])
            .await
            .map_err(Error::query("reading series"))?
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
        let last_file_progressive = tx
            .query_opt("SELECT last FROM file_progressive WHERE id = 1", &[])
            .await
            .map_err(Error::query("reading the file progressive"))?
            .map_or(0, |row| row.get(0));
        tx.commit().await.map_err(Error::query("ending the snapshot"))?;
        Ok(Counters { invoices, receipts, last_numbers, last_file_progressive })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn body() -> Value {
        json!({
            "series": "2026",
            "issue_date": "2026-11-23",
            "customer": {"vat": "09876543210", "name": "Rossi S.r.l.", "recipient_code": "ABC1234"},
            "description": "Consulenza",
            "taxable_cents": 10000,
        })
    }

    #[test]
    fn a_good_request_reads_with_defaults() {
        let new = NewInvoice::from_json(&body()).unwrap();
        assert_eq!(new.format, Format::Fpr12);
        assert_eq!(new.vat_rate_percent, 22);
        assert_eq!(new.issue_date, Some(jiff::civil::date(2026, 11, 23)));
        let mut public = body();
        public["customer"]["recipient_code"] = json!("UFXXXX");
        public["issue_date"] = Value::Null;
        let new = NewInvoice::from_json(&public).unwrap();
        assert_eq!((new.format, new.issue_date), (Format::Fpa12, None));
    }

    #[test]
    fn each_bad_field_is_named() {
        type Change = Box<dyn Fn(&mut Value)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|b| b["series"] = json!("")), "series"),
            (Box::new(|b| b["series"] = json!("20/26")), "series"),
            (Box::new(|b| b["series"] = json!(2026)), "series"),
            (Box::new(|b| b["issue_date"] = json!("23/11/2026")), "issue_date"),
            (Box::new(|b| b["issue_date"] = json!("2026-02-30")), "issue_date"),
            (Box::new(|b| b["customer"] = json!("Rossi")), "customer"),
            (Box::new(|b| b["customer"]["vat"] = json!("123")), "customer.vat"),
            (Box::new(|b| b["customer"]["name"] = json!("")), "customer.name"),
            (Box::new(|b| b["customer"]["name"] = json!("Ø€")), "customer.name"),
            (Box::new(|b| b["customer"]["recipient_code"] = json!("ABC12")), "customer.recipient_code"),
            (Box::new(|b| b["customer"]["pec"] = json!("x@pec.it")), "customer.pec"),
            (Box::new(|b| b["description"] = json!("x".repeat(1001))), "description"),
            (Box::new(|b| b["taxable_cents"] = json!(100.5)), "taxable_cents"),
            (Box::new(|b| b["taxable_cents"] = json!(0)), "taxable_cents"),
            (Box::new(|b| b["taxable_cents"] = json!("100")), "taxable_cents"),
            (Box::new(|b| b["vat_rate_percent"] = json!(21)), "vat_rate_percent"),
            (Box::new(|b| b["total"] = json!(1)), "total"),
            (Box::new(|b| *b = json!([])), "body"),
        ];
        for (change, field) in cases {
            let mut b = body();
            change(&mut b);
            let e = NewInvoice::from_json(&b).expect_err(field);
            assert_eq!(e.field, field, "{e}");
        }
        let mut b = body();
        b.as_object_mut().unwrap().remove("taxable_cents");
        assert_eq!(NewInvoice::from_json(&b).unwrap_err().to_string(), "taxable_cents: is required");
    }
}
