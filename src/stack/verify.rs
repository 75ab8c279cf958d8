//! Verification data: what a tenant's database and documents held at backup
//! time, recorded in the snapshot, and compared after every restore. A restore
//! (or a drill) passes only on equality.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::app::numbering::sha256_hex;

use super::{Error, Result};

/// The snapshot annotation that holds a [`Record`].
pub const ANNOTATION: &str = "verification";

/// What a tenant's data held at one instant.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Per table of the `public` schema: rows, and a SHA-256 over the sorted
    /// MD5 digests of the rows (columns in their text forms joined by `|`,
    /// NULL as `\N`, binary columns by their length).
    pub tables: BTreeMap<String, TableSum>,
    /// The last invoice number per series.
    pub last_numbers: BTreeMap<String, i64>,
    /// The last file progressive used in an invoice file name.
    pub last_progressive: i64,
    /// Invoices per outbound queue state (pending, sent, done).
    pub queue: BTreeMap<String, i64>,
    /// Receipts per kind (RC, NS, …).
    pub receipts: BTreeMap<String, i64>,
    /// The invoice documents the database refers to: how many, and a SHA-256
    /// over their sorted `name:sha256` lines.
    pub documents: DocumentSum,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSum {
    pub rows: i64,
    pub sha256: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocumentSum {
    pub count: i64,
    pub sha256: String,
}

/// Session settings that make the text form of every value the same on any
/// server, so checksums taken at backup and after restore compare.
const STABLE_TEXT: &str = "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'iso_8601'; \
                           SET extra_float_digits = 3; SET bytea_output = 'hex'";

/// Reads the record inside the caller's transaction, so that it describes
/// exactly the state the transaction sees (for a backup: the state pg_dump dumps).
pub async fn record(db: &impl tokio_postgres::GenericClient) -> Result<Record> {
    let query = |what: &'static str| move |source| Error::Query { what, source };
    db.batch_execute(STABLE_TEXT).await.map_err(query("setting stable text forms"))?;
    let mut record = Record::default();
    let tables = db
        .query(
            "SELECT table_name::text FROM information_schema.tables \
             WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY 1",
            &[],
        )
        .await
        .map_err(query("listing tables"))?;
    for row in tables {
        let table: String = row.get(0);
        let columns = db
            .query(
                "SELECT column_name::text, data_type::text FROM information_schema.columns \
                 WHERE table_schema = 'public' AND table_name = $1 ORDER BY ordinal_position",
                &[&table],
            )
            .await
            .map_err(query("listing columns"))?;
        let columns: Vec<(String, String)> = columns.iter().map(|c| (c.get(0), c.get(1))).collect();
        let sum = db.query_one(&table_sum_sql(&table, &columns), &[]).await.map_err(query("summing a table"))?;
        record.tables.insert(table, TableSum { rows: sum.get(0), sha256: sum.get(1) });
    }
    if !record.tables.contains_key("invoices") {
        // Not (yet) an invoicing database: the table sums are all there is.
        return Ok(record);
    }
    for row in db.query("SELECT name, last_number FROM series", &[]).await.map_err(query("reading series"))? {
        record.last_numbers.insert(row.get(0), row.get(1));
    }
    record.last_progressive = db
        .query_opt("SELECT last FROM file_progressive WHERE id = 1", &[])
        .await
        .map_err(query("reading the file progressive"))?
        .map_or(0, |row| row.get(0));
    let counts = db
        .query("SELECT queue_state, count(*) FROM invoices GROUP BY 1", &[])
        .await
        .map_err(query("counting the queue"))?;
    record.queue = counts.iter().map(|row| (row.get(0), row.get(1))).collect();
    let counts =
        db.query("SELECT kind, count(*) FROM receipts GROUP BY 1", &[]).await.map_err(query("counting receipts"))?;
    record.receipts = counts.iter().map(|row| (row.get(0), row.get(1))).collect();
    let documents = db
        .query("SELECT file_name, xml_sha256 FROM invoices ORDER BY file_name", &[])
        .await
        .map_err(query("listing documents"))?;
    record.documents = document_sum(documents.iter().map(|row| (row.get::<_, String>(0), row.get::<_, String>(1))));
    Ok(record)
}

/// The query that sums one table: per row, an MD5 over its columns, then a
/// SHA-256 over the sorted row digests, so memory stays at 32 bytes a row
/// whatever the rows hold.
///
/// NB: binary columns enter by their length, which PostgreSQL knows without
/// reading them: hashing the documents' content would cost five times the rest
/// of the record. Their content is checked where the schema records its hash:
/// each document against its invoice's `xml_sha256` ([`write_documents`]),
/// and that column is in the invoices' sum.
fn table_sum_sql(table: &str, columns: &[(String, String)]) -> String {
    let parts: Vec<String> = columns
        .iter()
        .map(|(name, data_type)| {
            let column = format!("t.{}", quote_ident(name));
            // NULL is written as \N, as COPY does: distinct from any text value.
            match data_type.as_str() {
                "bytea" => format!("coalesce(octet_length({column})::text, '\\N')"),
                _ => format!("coalesce({column}::text, '\\N')"),
            }
        })
        .collect();
    let row = if parts.is_empty() { "''".to_string() } else { parts.join(" || '|' || ") };
    format!(
        "SELECT count(*), coalesce(encode(sha256(convert_to(string_agg(h, '' ORDER BY h COLLATE \"C\"), 'UTF8')), 'hex'), '') \
         FROM (SELECT md5({row}) AS h FROM public.{} t) rows",
        quote_ident(table)
    )
}

fn document_sum(lines: impl Iterator<Item = (String, String)>) -> DocumentSum {
    let mut hasher = Sha256::new();
    let mut count = 0;
    for (name, sha256) in lines {
        hasher.update(format!("{name}:{sha256}\n"));
        count += 1;
    }
    DocumentSum { count, sha256: crate::repo::id::hex(&hasher.finalize()) }
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// One way in which restored data differs from what was recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Difference {
    pub what: String,
    pub recorded: String,
    pub restored: String,
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: recorded {}, restored {}", self.what, self.recorded, self.restored)
    }
}

/// Every difference between the recorded and the restored state, in a stable order.
pub fn compare(recorded: &Record, restored: &Record) -> Vec<Difference> {
    let mut differences = Vec::new();
    let mut differ = |what: String, a: String, b: String| {
        if a != b {
            differences.push(Difference { what, recorded: a, restored: b });
        }
    };
    let shown = |sum: Option<&TableSum>| sum.map_or("no table".to_string(), |s| format!("{} rows", s.rows));
    for name in recorded.tables.keys().chain(restored.tables.keys().filter(|n| !recorded.tables.contains_key(*n))) {
        let (a, b) = (recorded.tables.get(name), restored.tables.get(name));
        if a.map(|s| s.rows) != b.map(|s| s.rows) {
            differ(format!("table {name}"), shown(a), shown(b));
        } else if a != b {
            differ(format!("table {name} content"), format!("sha256 {}", short(a)), format!("sha256 {}", short(b)));
        }
    }
    let series = recorded.last_numbers.keys().chain(restored.last_numbers.keys());
    for name in series.collect::<std::collections::BTreeSet<_>>() {
        let shown = |m: &BTreeMap<String, i64>| m.get(name).map_or("none".into(), |n| n.to_string());
        differ(format!("last number of series {name}"), shown(&recorded.last_numbers), shown(&restored.last_numbers));
    }
    differ(
        "last file progressive".into(),
        recorded.last_progressive.to_string(),
        restored.last_progressive.to_string(),
    );
    differ("invoices per queue state".into(), counts(&recorded.queue), counts(&restored.queue));
    differ("receipts per kind".into(), counts(&recorded.receipts), counts(&restored.receipts));
    differ(
        "invoice documents".into(),
        format!(
            "{} ({})",
            recorded.documents.count,
            &recorded.documents.sha256[..recorded.documents.sha256.len().min(12)]
        ),
        format!(
            "{} ({})",
            restored.documents.count,
            &restored.documents.sha256[..restored.documents.sha256.len().min(12)]
        ),
    );
    differences
}

fn short(sum: Option<&TableSum>) -> String {
    sum.map_or(String::new(), |s| s.sha256.chars().take(12).collect())
}

fn counts(map: &BTreeMap<String, i64>) -> String {
    if map.is_empty() {
        return "none".into();
    }
    map.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
}

/// Writes each invoice's document out of the database into `dir`, and checks
/// every document against the hash its invoice recorded: one difference per
/// document that is missing, or whose content (in the database or, when the
/// database holds none, in `dir`) does not match. A file already in `dir` is
/// checked, never overwritten. Returns how many files were written.
pub async fn write_documents(db: &impl tokio_postgres::GenericClient, dir: &Path) -> Result<(u64, Vec<Difference>)> {
    let query = |what: &'static str| move |source| Error::Query { what, source };
    let stored = db
        .query_opt(
            "SELECT 1 FROM information_schema.tables WHERE table_schema = 'public' AND table_name = 'documents'",
            &[],
        )
        .await
        .map_err(query("looking for the documents table"))?
        .is_some();
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        what: "creating the documents directory",
        path: dir.to_owned(),
        source,
    })?;
    let expected: Vec<(String, String)> = db
        .query("SELECT file_name, xml_sha256 FROM invoices ORDER BY file_name", &[])
        .await
        .map_err(query("listing documents"))?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let (mut written, mut differences) = (0, Vec::new());
    // In batches: the contents of a large tenant do not fit in memory at once.
    for batch in expected.chunks(500) {
        let mut contents: std::collections::HashMap<String, Vec<u8>> = std::collections::HashMap::new();
        if stored {
            let names: Vec<&String> = batch.iter().map(|(name, _)| name).collect();
            let rows = db
                .query("SELECT file_name, content FROM documents WHERE file_name = ANY($1)", &[&names])
                .await
                .map_err(query("reading stored documents"))?;
            contents = rows.into_iter().map(|row| (row.get(0), row.get(1))).collect();
        }
        let (batch, dir) = (batch.to_vec(), dir.to_owned());
        let (n, found) = tokio::task::spawn_blocking(move || write_batch(&dir, batch, contents))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
        written += n;
        differences.extend(found);
    }
    Ok((written, differences))
}

fn write_batch(
    dir: &Path,
    batch: Vec<(String, String)>,
    mut contents: std::collections::HashMap<String, Vec<u8>>,
) -> Result<(u64, Vec<Difference>)> {
    let mut written = 0;
    let mut differences = Vec::new();
    let mut differ = |name: &str, sha256: &str, restored: String| {
        differences.push(Difference {
            what: format!("document {name}"),
            recorded: format!("sha256 {}", &sha256[..sha256.len().min(12)]),
            restored,
        })
    };
    for (name, sha256) in batch {
        // Names come from the database: anything but a plain name is reported, never followed.
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            differ(&name, &sha256, "not a plain file name".into());
            continue;
        }
        let path = dir.join(&name);
        let on_disk = match std::fs::read(&path) {
            Ok(bytes) => Some(sha256_hex(&bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => Some(format!("unreadable ({e})")),
        };
        match (on_disk, contents.remove(&name)) {
            (Some(actual), _) if actual == sha256 => {}
            (Some(actual), _) => {
                let shown =
                    if actual.len() == 64 { format!("sha256 {} in the directory", &actual[..12]) } else { actual };
                differ(&name, &sha256, shown);
            }
            (None, Some(content)) => {
                let actual = sha256_hex(&content);
                if actual != sha256 {
                    differ(&name, &sha256, format!("sha256 {} in the database", &actual[..12]));
                    continue;
                }
                let partial = dir.join(format!(".{name}.partial"));
                let io = |source| Error::Io { what: "writing document", path: path.clone(), source };
                std::fs::write(&partial, &content).map_err(io)?;
                std::fs::rename(&partial, &path).map_err(io)?;
                written += 1;
            }
            (None, None) => differ(&name, &sha256, "missing".into()),
        }
    }
    Ok((written, differences))
}

/// When the newest invoice the database holds was written, if it holds any:
/// what a restore or a failover keeps, against when the source was lost (RPO).
pub async fn last_write(db: &impl tokio_postgres::GenericClient) -> Result<Option<jiff::Timestamp>> {
    let row = db
        .query_one("SELECT max(created_at) FROM invoices", &[])
        .await
        .map_err(|source| Error::Query { what: "reading the newest invoice's time", source })?;
    Ok(row.get(0))
}

/// Checks a database recovered to a point at or after its base backup, where
/// equality with the backup's record cannot hold: every series numbered 1…last
/// without a gap, and nothing the backup recorded gone. (Documents are checked
/// by [`write_documents`].)
pub async fn check_recovered(
    db: &impl tokio_postgres::GenericClient,
    recorded: &Record,
) -> Result<(Record, Vec<Difference>)> {
    let restored = record(db).await?;
    let mut differences = Vec::new();
    let rows = db
        .query(
            "SELECT s.name, s.last_number, count(i.number), coalesce(max(i.number), 0) \
             FROM series s LEFT JOIN invoices i ON i.series = s.name GROUP BY 1, 2 ORDER BY 1",
            &[],
        )
        .await
        .map_err(|source| Error::Query { what: "checking numbering", source })?;
    for row in rows {
        let (name, last, count, max): (String, i64, i64, i64) = (row.get(0), row.get(1), row.get(2), row.get(3));
        if count != last || max != last {
            differences.push(Difference {
                what: format!("numbering of series {name}"),
                recorded: format!("1..{last} without a gap"),
                restored: format!("{count} invoices, highest number {max}"),
            });
        }
    }
    for (series, number) in &recorded.last_numbers {
        let now = restored.last_numbers.get(series).copied().unwrap_or(0);
        if now < *number {
            differences.push(Difference {
                what: format!("last number of series {series}"),
                recorded: format!("{number} at backup time"),
                restored: now.to_string(),
            });
        }
    }
    Ok((restored, differences))
}

/// Waits until the server behind `db` accepts connections and has left
/// recovery (a point-in-time recovery promotes when it reaches its target).
pub async fn wait_until_promoted(
    db: &super::pg::DbUrl,
    timeout: std::time::Duration,
) -> Result<tokio_postgres::Client> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match db.connect().await {
            Ok(client) => match client.query_one("SELECT pg_is_in_recovery()", &[]).await {
                Ok(row) if !row.get::<_, bool>(0) => return Ok(client),
                Ok(_) => {}
                Err(source) => last_error = Some(Error::Query { what: "asking whether recovery is over", source }),
            },
            Err(e) => last_error = Some(e),
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(match last_error {
                Some(e @ Error::Connect { .. }) => e,
                _ => Error::StillRecovering { db: db.to_string(), waited_seconds: timeout.as_secs() },
            });
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        Record {
            tables: [("invoices".to_string(), TableSum { rows: 3, sha256: "ab".repeat(32) })].into(),
            last_numbers: [("2026".to_string(), 3)].into(),
            last_progressive: 3,
            queue: [("done".to_string(), 3)].into(),
            receipts: [("RC".to_string(), 3)].into(),
            documents: DocumentSum { count: 3, sha256: "cd".repeat(32) },
        }
    }

    #[test]
    fn equal_records_have_no_difference() {
        assert!(compare(&sample(), &sample()).is_empty());
    }

    #[test]
    fn each_difference_is_named() {
        let mut restored = sample();
        restored.tables.get_mut("invoices").unwrap().rows = 2;
        restored.last_numbers.insert("2026".into(), 2);
        restored.tables.insert("extra".into(), TableSum::default());
        let differences = compare(&sample(), &restored);
        let shown: Vec<String> = differences.iter().map(ToString::to_string).collect();
        assert_eq!(shown[0], "table invoices: recorded 3 rows, restored 2 rows");
        assert_eq!(shown[1], "table extra: recorded no table, restored 0 rows");
        assert_eq!(shown[2], "last number of series 2026: recorded 3, restored 2");
        assert_eq!(shown.len(), 3);
    }

    #[test]
    fn same_rows_other_content_is_a_content_difference() {
        let mut restored = sample();
        restored.tables.get_mut("invoices").unwrap().sha256 = "ef".repeat(32);
        let differences = compare(&sample(), &restored);
        assert_eq!(differences.len(), 1);
        assert_eq!(differences[0].what, "table invoices content");
    }

    #[test]
    fn binary_columns_enter_by_their_length() {
        let sql =
            table_sum_sql("documents", &[("file_name".into(), "text".into()), ("content".into(), "bytea".into())]);
        assert!(
            sql.contains(
                r#"coalesce(t."file_name"::text, '\N') || '|' || coalesce(octet_length(t."content")::text, '\N')"#
            ),
            "{sql}"
        );
        assert!(sql.contains(r#"FROM public."documents" t"#), "{sql}");
    }

    #[test]
    fn document_sum_depends_on_names_and_hashes() {
        let a = document_sum([("a".to_string(), "1".to_string())].into_iter());
        let b = document_sum([("a".to_string(), "2".to_string())].into_iter());
        assert_eq!(a.count, 1);
        assert_ne!(a.sha256, b.sha256);
    }
}
