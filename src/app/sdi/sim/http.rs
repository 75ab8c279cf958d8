//! The routes of the protocol (parent of the parent module), answered from the
//! [`Store`]: requests are checked here, decided there.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use jiff::Timestamp;
use serde::Deserialize;

use super::Error;
use super::receipts;
use super::store::{Entry, Outcome, Store};
use crate::app::sdi::{EPOCH_HEADER, Record, Refusal, RefusalKind};

/// The largest file accepted: SdI's limit for one file sent over its web channels.
const MAX_FILE_BYTES: usize = 5 * 1024 * 1024;

#[derive(Clone, Debug)]
struct AppState {
    store: Arc<Store>,
    receipt_delay: Duration,
}

pub(super) fn router(store: Arc<Store>, receipt_delay: Duration) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/tenants/{tenant}/transmissions", get(list).post(transmit))
        .route("/v1/tenants/{tenant}/transmissions/{sdi_id}", get(record))
        .route("/v1/tenants/{tenant}/transmissions/{sdi_id}/file", get(file))
        .fallback(no_route)
        .layer(DefaultBodyLimit::max(MAX_FILE_BYTES))
        .with_state(AppState { store, receipt_delay })
}

/// The query of a transmission.
#[derive(Debug, Deserialize)]
struct TransmitQuery {
    file_name: Option<String>,
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn transmit(
    State(state): State<AppState>,
    tenant: Result<Path<String>, PathRejection>,
    query: Result<Query<TransmitQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Failure> {
    let Path(tenant) = tenant.map_err(|e| Failure::bad_request(e.body_text()))?;
    check_tenant(&tenant)?;
    let epoch = epoch(&headers)?;
    let Query(query) = query.map_err(|e| Failure::bad_request(e.body_text()))?;
    let file_name = query.file_name.ok_or_else(|| {
        Failure::bad_request(
            "query parameter file_name is missing: name the file, e.g. ?file_name=IT01234567890_00001.xml",
        )
    })?;
    if !is_file_name(&file_name) {
        return Err(Failure::bad_request(format!(
            "file name {file_name:?} is not IT<1 to 28 letters or digits>_<5 letters or digits>.xml, \
             e.g. IT01234567890_00001.xml"
        )));
    }
    let body = body.map_err(|e| {
        let message = match e.status() {
            StatusCode::PAYLOAD_TOO_LARGE => format!(
                "tenant {tenant}: {file_name} is larger than {} MiB, SdI's limit for one file",
                MAX_FILE_BYTES >> 20
            ),
            _ => format!("tenant {tenant}: reading the body of {file_name}: {}", e.body_text()),
        };
        Failure::refused(e.status(), RefusalKind::BadRequest, message)
    })?;
    if body.is_empty() {
        return Err(Failure::bad_request(format!(
            "tenant {tenant}: the body of {file_name} is empty: send the invoice XML"
        )));
    }

    // NB: in a task of its own, so that a client that hangs up cannot stop the
    // write half-way (see `Store::transmit`).
    let store = state.store.clone();
    let (t, f) = (tenant.clone(), file_name.clone());
    let outcome = tokio::spawn(async move { store.transmit(&t, epoch, &f, body).await })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
    match outcome {
        Outcome::Accepted(transmission) => {
            tracing::info!(%tenant, %file_name, epoch, sdi_id = %transmission.sdi_id, "transmission accepted");
            Ok((StatusCode::CREATED, Json(transmission)).into_response())
        }
        Outcome::Duplicate { earlier } => {
            tracing::info!(%tenant, %file_name, epoch, earlier = %earlier.sdi_id, "duplicate file name refused");
            let message = format!(
                "tenant {tenant}: file name {file_name} was already received as SdI identifier {} at {}",
                earlier.sdi_id, earlier.received_at
            );
            let mut refusal = refusal(RefusalKind::DuplicateFileName, message);
            refusal.earlier = Some(earlier);
            Err(Failure::Refused(StatusCode::CONFLICT, Box::new(refusal)))
        }
        Outcome::StaleEpoch { highest } => {
            tracing::info!(%tenant, %file_name, epoch, highest, "stale epoch refused");
            let message = format!(
                "tenant {tenant}: epoch {epoch} is lower than epoch {highest} already seen: \
                 another site has taken over this tenant"
            );
            let mut refusal = refusal(RefusalKind::StaleEpoch, message);
            refusal.highest_epoch = Some(highest);
            Err(Failure::Refused(StatusCode::CONFLICT, Box::new(refusal)))
        }
    }
}

async fn list(
    State(state): State<AppState>,
    tenant: Result<Path<String>, PathRejection>,
) -> Result<Json<Vec<Record>>, Failure> {
    let Path(tenant) = tenant.map_err(|e| Failure::bad_request(e.body_text()))?;
    check_tenant(&tenant)?;
    let now = Timestamp::now();
    let entries = state.store.entries(&tenant).await;
    Ok(Json(entries.into_iter().map(|entry| to_record(entry, state.receipt_delay, now)).collect()))
}

async fn record(
    State(state): State<AppState>,
    ids: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<Record>, Failure> {
    let Path((tenant, sdi_id)) = ids.map_err(|e| Failure::bad_request(e.body_text()))?;
    check_tenant(&tenant)?;
    let entry = state.store.entry(&tenant, &sdi_id).await.ok_or_else(|| not_found(&tenant, &sdi_id))?;
    Ok(Json(to_record(entry, state.receipt_delay, Timestamp::now())))
}

async fn file(
    State(state): State<AppState>,
    ids: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, Failure> {
    let Path((tenant, sdi_id)) = ids.map_err(|e| Failure::bad_request(e.body_text()))?;
    check_tenant(&tenant)?;
    let xml = state.store.file(&tenant, &sdi_id).await?.ok_or_else(|| not_found(&tenant, &sdi_id))?;
    Ok(([(header::CONTENT_TYPE, "application/xml")], xml).into_response())
}

async fn no_route(method: Method, uri: Uri) -> Failure {
    let message = format!("no route {method} {}: docs/sdi-simulator.md lists the routes", uri.path());
    Failure::refused(StatusCode::NOT_FOUND, RefusalKind::NotFound, message)
}

fn to_record(entry: Entry, delay: Duration, now: Timestamp) -> Record {
    // NB: received_at was written by the store, so it parses; if someone edited
    // it by hand, the transmission simply gets no receipts.
    let receipts = match entry.transmission.received_at.parse::<Timestamp>() {
        Ok(received_at) => receipts::receipts(&entry.verdict, received_at, delay, now),
        Err(_) => Vec::new(),
    };
    Record { transmission: entry.transmission, receipts }
}

/// The sender's fencing epoch, from its header.
fn epoch(headers: &HeaderMap) -> Result<u64, Failure> {
    let value = headers.get(EPOCH_HEADER).ok_or_else(|| {
        Failure::bad_request(format!(
            "header {EPOCH_HEADER} is missing: send the sender's fencing epoch, a decimal number"
        ))
    })?;
    value.to_str().ok().and_then(|v| v.trim().parse().ok()).ok_or_else(|| {
        Failure::bad_request(format!(
            "header {EPOCH_HEADER} is {value:?}, not a decimal number (the sender's fencing epoch)"
        ))
    })
}

fn check_tenant(tenant: &str) -> Result<(), Failure> {
    if is_tenant_name(tenant) {
        return Ok(());
    }
    Err(Failure::bad_request(format!(
        "tenant name {tenant:?} is not a DNS label: 1 to 63 lowercase letters, digits and '-', \
         starting and ending with a letter or digit"
    )))
}

/// Whether `name` can name a tenant: a DNS label, so it is a safe directory name.
pub(super) fn is_tenant_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let inner = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-';
    let edge = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    (1..=63).contains(&bytes.len()) && edge(bytes.first()) && edge(bytes.last()) && bytes.iter().all(inner)
}

/// Whether `name` is an invoice file name as SdI wants it:
/// `IT<1 to 28 letters or digits>_<5 letters or digits>.xml`.
pub(super) fn is_file_name(name: &str) -> bool {
    let Some((sender, progressive)) =
        name.strip_prefix("IT").and_then(|rest| rest.strip_suffix(".xml")).and_then(|rest| rest.split_once('_'))
    else {
        return false;
    };
    let alphanumeric = |s: &str| s.bytes().all(|b| b.is_ascii_alphanumeric());
    (1..=28).contains(&sender.len()) && alphanumeric(sender) && progressive.len() == 5 && alphanumeric(progressive)
}

fn refusal(error: RefusalKind, message: String) -> Refusal {
    Refusal { error, message, earlier: None, highest_epoch: None }
}

fn not_found(tenant: &str, sdi_id: &str) -> Failure {
    Failure::refused(
        StatusCode::NOT_FOUND,
        RefusalKind::NotFound,
        format!("tenant {tenant}: no transmission {sdi_id:?}"),
    )
}

/// A request that does not get its answer.
#[derive(Debug)]
enum Failure {
    /// The protocol's refusal, as JSON.
    Refused(StatusCode, Box<Refusal>),
    /// The simulator failed (its disk, mostly): 500, as text, since the
    /// protocol has no refusal for it.
    Internal(Error),
}

impl Failure {
    fn refused(status: StatusCode, kind: RefusalKind, message: impl Into<String>) -> Self {
        Failure::Refused(status, Box::new(refusal(kind, message.into())))
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::refused(StatusCode::BAD_REQUEST, RefusalKind::BadRequest, message)
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Internal(e)
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        match self {
            Failure::Refused(status, refusal) => (status, Json(*refusal)).into_response(),
            Failure::Internal(e) => {
                tracing::error!(error = &e as &dyn std::error::Error, "request failed");
                (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_names_are_dns_labels() {
        for good in ["a", "acme", "acme-2", "0", &"a".repeat(63)] {
            assert!(is_tenant_name(good), "{good}");
        }
        for bad in ["", "-a", "a-", "Acme", "a_b", "a.b", "..", "a/b", "à", &"a".repeat(64)] {
            assert!(!is_tenant_name(bad), "{bad}");
        }
    }

    #[test]
    fn file_names_follow_sdi_naming() {
        for good in ["IT01234567890_00001.xml", "ITA_abcde.xml", &format!("IT{}_Z9z9Z.xml", "9".repeat(28))] {
            assert!(is_file_name(good), "{good}");
        }
        let too_long = format!("IT{}_00001.xml", "9".repeat(29));
        for bad in [
            "",
            "IT_00001.xml",
            "IT0123_0001.xml",
            "IT0123_000001.xml",
            "IT0123_00001.XML",
            "IT0123_00001.xml.p7m",
            "it0123_00001.xml",
            "DE0123_00001.xml",
            "IT01_23_00001.xml",
            "IT0123_0000-.xml",
            "IT../x_00001.xml",
            &too_long,
        ] {
            assert!(!is_file_name(bad), "{bad}");
        }
    }
}
