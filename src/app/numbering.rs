//! Issuing an invoice: its number in the series, its file progressive, its row
//! and its document, all or nothing.
//!
//! Rules (DESIGN.md, "The invoicing domain"): numbers run 1, 2, 3… per series,
//! progressives 1, 2, 3… per tenant, with no gap and no duplicate, whatever the
//! concurrency and whatever fails. One transaction bumps `series.last_number`
//! and `file_progressive.last` with `INSERT … ON CONFLICT DO UPDATE … RETURNING`
//! (the row locks serialize concurrent issuers until COMMIT), inserts the
//! invoice and its document (table `documents`), and writes the document file
//! before COMMIT; if the commit fails the file is removed again.

use jiff::civil::Date;
use sha2::{Digest, Sha256};

use super::db::{self, Db};
use super::documents::{self, Documents};
use super::fattura::{self, Fattura};
use super::invoices::{COLUMNS, Invoice, NewInvoice};

/// Characters of the progressive in a file name.
pub const PROGRESSIVE_WIDTH: usize = 5;
/// The last progressive: ZZZZZ in base 36.
pub const PROGRESSIVE_MAX: u64 = 36u64.pow(PROGRESSIVE_WIDTH as u32) - 1;

const DIGITS: &[u8; 36] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "file progressive {progressive} is beyond ZZZZZ: every file name IT<VAT>_00001…ZZZZZ of this tenant is used"
    )]
    ProgressiveExhausted { progressive: u64 },

    #[error(
        "series {series}: number {number} no longer fits Numero ({} characters); start a new series",
        fattura::NUMERO_MAX
    )]
    SeriesExhausted { series: String, number: i64 },

    #[error("issuing in series {series}")]
    Db {
        series: String,
        #[source]
        source: Box<db::Error>,
    },

    #[error("issuing {file_name}")]
    Document {
        file_name: String,
        #[source]
        source: documents::Error,
    },
}

/// The progressive as five base-36 characters, `00001` to `ZZZZZ`.
pub fn progressive_code(progressive: u64) -> Result<String> {
    if progressive == 0 || progressive > PROGRESSIVE_MAX {
        return Err(Error::ProgressiveExhausted { progressive });
    }
    let mut code = [b'0'; PROGRESSIVE_WIDTH];
    let mut rest = progressive;
    for slot in code.iter_mut().rev() {
        *slot = DIGITS[(rest % 36) as usize];
        rest /= 36;
    }
    Ok(code.iter().map(|&b| char::from(b)).collect())
}

/// Reads a progressive of 1 to 5 base-36 characters (uppercase); 0 is not one.
pub fn progressive_from_code(code: &str) -> Option<u64> {
    if code.is_empty() || code.len() > PROGRESSIVE_WIDTH {
        return None;
    }
    let mut value = 0u64;
    for b in code.bytes() {
        let digit = DIGITS.iter().position(|&d| d == b)? as u64;
        value = value * 36 + digit;
    }
    (value > 0).then_some(value)
}

/// The document's file name: `IT<vat>_<progressive>.xml`.
pub fn file_name(vat: &str, progressive: u64) -> Result<String> {
    Ok(format!("IT{vat}_{}.xml", progressive_code(progressive)?))
}

/// The hex SHA-256 of a document, as `invoices.xml_sha256` and SdI keep it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    crate::repo::id::hex(&Sha256::digest(bytes))
}

/// Who issues: the tenant as every document names it.
#[derive(Clone, Debug)]
pub struct Issuer {
    pub vat: String,
    pub company: String,
}

/// Issues `new`: numbers it, stores its row and its document, and returns it
/// queued for SdI. `today` is the issue date when the request names none.
pub async fn issue(db: &Db, documents: &Documents, issuer: &Issuer, new: &NewInvoice, today: Date) -> Result<Invoice> {
    let series = new.series.clone();
    let db_error = |source: db::Error| Error::Db { series: series.clone(), source: Box::new(source) };
    let query = |step| {
        move |source| Error::Db { series: new.series.clone(), source: Box::new(db::Error::Query { step, source }) }
    };

    let mut client = db.pool.get().await.map_err(|e| db_error(e.into()))?;
    let tx = client.transaction().await.map_err(query("starting the transaction"))?;
    // NB: always the series row first, then the progressive row: one lock order, no deadlock.
    let number: i64 = tx
        .query_one(
            "INSERT INTO series (name, last_number) VALUES ($1, 1) \
             ON CONFLICT (name) DO UPDATE SET last_number = series.last_number + 1 \
             RETURNING last_number",
            &[&new.series],
        )
        .await
        .map_err(query("numbering"))?
        .get(0);
    let progressive: i64 = tx
        .query_one(
            "INSERT INTO file_progressive (id, last) VALUES (1, 1) \
             ON CONFLICT (id) DO UPDATE SET last = file_progressive.last + 1 \
             RETURNING last",
            &[],
        )
        .await
        .map_err(query("taking a file progressive"))?
        .get(0);
    // Both counters are positive: the table checks last >= 0 and we just added 1.
    let progressive = progressive.unsigned_abs();
    let file_name = file_name(&issuer.vat, progressive)?;

    let fattura = Fattura {
        format: new.format,
        progressive,
        supplier_vat: issuer.vat.clone(),
        supplier_name: issuer.company.clone(),
        recipient_code: new.customer.recipient_code.clone(),
        customer_vat: new.customer.vat.clone(),
        customer_name: new.customer.name.clone(),
        series: new.series.clone(),
        number,
        issue_date: new.issue_date.unwrap_or(today),
        description: new.description.clone(),
        taxable_cents: new.taxable_cents,
        vat_rate_percent: new.vat_rate_percent,
        vat_cents: fattura::vat_cents(new.taxable_cents, new.vat_rate_percent),
    };
    if fattura.numero().len() > fattura::NUMERO_MAX {
        return Err(Error::SeriesExhausted { series: new.series.clone(), number });
    }
    let xml = fattura.render();
    let sha256 = sha256_hex(&xml);
    let row = tx
        .query_one(
            &format!(
                "INSERT INTO invoices (series, number, issue_date, format, customer_vat, customer_name, \
                     recipient_code, description, taxable_cents, vat_cents, file_name, xml_sha256) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING {COLUMNS}"
            ),
            &[
                &fattura.series,
                &fattura.number,
                &fattura.issue_date,
                &fattura.format.as_str(),
                &fattura.customer_vat,
                &fattura.customer_name,
                &fattura.recipient_code,
                &fattura.description,
                &fattura.taxable_cents,
                &fattura.vat_cents,
                &file_name,
                &sha256,
            ],
        )
        .await
        .map_err(query("storing the invoice"))?;
    let invoice = Invoice::from_row(&row).map_err(db_error)?;
    // The database carries the document too, so a point-in-time recovery can
    // rebuild the documents directory (schema.sql, table documents).
    tx.execute("INSERT INTO documents (file_name, content) VALUES ($1, $2)", &[&file_name, &xml])
        .await
        .map_err(query("storing the document"))?;

    let document_error = |source| Error::Document { file_name: file_name.clone(), source };
    documents.write(&file_name, xml).await.map_err(document_error)?;
    let Err(source) = tx.commit().await else {
        return Ok(invoice);
    };
    drop(client);
    let commit_error =
        Error::Db { series: new.series.clone(), source: Box::new(db::Error::Query { step: "committing", source }) };
    // NB: a commit can fail on the way back after the server committed. Remove
    // the document only when the row is certainly not there.
    match db.invoice(&invoice.series, invoice.number).await {
        Ok(Some(stored)) if stored.file_name == invoice.file_name => Ok(stored),
        Ok(_) => {
            if let Err(e) = documents.remove(&file_name).await {
                tracing::error!(file = %file_name, error = &e as &dyn std::error::Error, "removing the document of an invoice that did not commit");
            }
            Err(commit_error)
        }
        Err(e) => {
            tracing::warn!(
                file = %file_name,
                error = &e as &dyn std::error::Error,
                "cannot tell whether the invoice committed; its document stays (the next issue of this name sets it aside)"
            );
            Err(commit_error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progressives_are_five_base36_characters() {
        let cases = [(1, "00001"), (35, "0000Z"), (36, "00010"), (1295, "000ZZ"), (PROGRESSIVE_MAX, "ZZZZZ")];
        for (n, code) in cases {
            assert_eq!(progressive_code(n).unwrap(), code);
            assert_eq!(progressive_from_code(code), Some(n));
        }
        assert_eq!(PROGRESSIVE_MAX, 60_466_175);
        assert!(matches!(progressive_code(PROGRESSIVE_MAX + 1), Err(Error::ProgressiveExhausted { .. })));
        assert!(progressive_code(0).is_err());
        for bad in ["", "00000", "zzzzz", "000001", "0000-"] {
            assert_eq!(progressive_from_code(bad), None, "{bad}");
        }
    }

    #[test]
    fn codes_sort_like_their_numbers() {
        let codes: Vec<String> = (1..3000).map(|n| progressive_code(n).unwrap()).collect();
        assert!(codes.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn file_names_carry_vat_and_progressive() {
        assert_eq!(file_name("01234567890", 46).unwrap(), "IT01234567890_0001A.xml");
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
