//! A tenant database for tests: connections, and invoices issued the way the
//! app issues them, straight in SQL.

use std::path::Path;

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

/// Issues one invoice the way the app does: number and progressive in one
/// transaction, the document written before the commit.
pub async fn issue(db: &mut tokio_postgres::Client, documents: &Path, series: &str) -> i64 {
    let tx = db.transaction().await.unwrap();
    let number: i64 = tx
        .query_one(
            "INSERT INTO series (name, last_number) VALUES ($1, 1) \
             ON CONFLICT (name) DO UPDATE SET last_number = series.last_number + 1 RETURNING last_number",
            &[&series],
        )
        .await
        .unwrap()
        .get(0);
    let progressive: i64 = tx
        .query_one(
            "INSERT INTO file_progressive (id, last) VALUES (1, 1) \
             ON CONFLICT (id) DO UPDATE SET last = file_progressive.last + 1 RETURNING last",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let file_name = format!("IT01234567890_{progressive:05}.xml");
    let xml = format!("<FatturaElettronica versione=\"FPR12\"><Numero>{series}/{number}</Numero></FatturaElettronica>");
    std::fs::write(documents.join(&file_name), &xml).unwrap();
    let sha = fenice::app::numbering::sha256_hex(xml.as_bytes());
    tx.execute(
        "INSERT INTO invoices (series, number, issue_date, format, customer_vat, customer_name, recipient_code, \
         description, taxable_cents, vat_cents, file_name, xml_sha256) \
         VALUES ($1, $2, '2026-11-23', 'FPR12', '09876543210', 'Cliente', 'ABC1234', 'consulenza', 10000, 2200, $3, $4)",
        &[&series, &number, &file_name, &sha],
    )
    .await
    .unwrap();
    tx.execute("INSERT INTO documents (file_name, content) VALUES ($1, $2)", &[&file_name, &xml.as_bytes()])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    number
}
