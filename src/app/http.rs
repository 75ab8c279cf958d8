//! The app's HTTP API (docs/invoicing-app.md). JSON in and out; every error is
//! `{"error": "<kind>", "message": "…"}` with a status that fits.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use jiff::Timestamp;
use jiff::civil::Date;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::db::{self, Db};
use super::documents::Documents;
use super::fencing::{self, FenceState, Fencing};
use super::invoices::{self, Counters, InvalidField, Invoice, ListFilter, NewInvoice, QueueState, StoredReceipt};
use super::numbering::{self, Issuer};
use super::schema::SCHEMA_VERSION;
use super::sender::{SenderCounters, SenderStats};

/// How long `/healthz` waits for the database.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
/// `GET /v1/channel` warns this many days before the certificate expires.
pub const CERTIFICATE_WARNING_DAYS: i64 = 30;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

/// What [`AppState`] is made of.
pub(crate) struct Inner {
    pub(crate) tenant: String,
    pub(crate) issuer: Issuer,
    pub(crate) db: Db,
    pub(crate) documents: Documents,
    pub(crate) fencing: Arc<Fencing>,
    pub(crate) sender: Arc<SenderStats>,
    pub(crate) rome: jiff::tz::TimeZone,
}

impl From<Inner> for AppState {
    fn from(inner: Inner) -> Self {
        Self { inner: Arc::new(inner) }
    }
}

impl AppState {
    fn today(&self) -> Date {
        Timestamp::now().to_zoned(self.inner.rome.clone()).date()
    }
}

/// The routes of the API.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/invoices", post(create_invoice).get(list_invoices))
        .route("/v1/invoices/{series}/{number}", get(get_invoice))
        .route("/v1/invoices/{series}/{number}/xml", get(get_xml))
        .route("/v1/invoices/{series}/{number}/receipts", get(get_receipts))
        .route("/v1/channel", get(get_channel).put(put_channel))
        .route("/v1/admin/fence", post(fence))
        .route("/v1/admin/activate", post(activate))
        .route("/v1/stats", get(stats))
        .route("/v1/deadlines", get(deadlines))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, ErrorKind::NotFound, "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, ErrorKind::MethodNotAllowed, "method not allowed here")
        })
        .with_state(state)
}

/// The `error` of an error answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidRequest,
    NotFound,
    MethodNotAllowed,
    Fenced,
    StaleEpoch,
    ProgressiveExhausted,
    SeriesExhausted,
    DatabaseUnavailable,
    Misdirected,
    Internal,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::NotFound => "not_found",
            ErrorKind::MethodNotAllowed => "method_not_allowed",
            ErrorKind::Fenced => "fenced",
            ErrorKind::StaleEpoch => "stale_epoch",
            ErrorKind::ProgressiveExhausted => "progressive_exhausted",
            ErrorKind::SeriesExhausted => "series_exhausted",
            ErrorKind::DatabaseUnavailable => "database_unavailable",
            ErrorKind::Misdirected => "misdirected",
            ErrorKind::Internal => "internal",
        }
    }
}

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: ErrorKind,
    message: String,
    field: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { status, kind, message: message.into(), field: None }
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorKind::NotFound, message)
    }

    fn invalid(field: &str, why: impl std::fmt::Display) -> Self {
        Self::from(InvalidField { field: field.to_string(), why: why.to_string() })
    }

    /// A failure of ours: logged with its chain, answered 500 (503 when the database is away).
    fn internal(what: &str, error: &(dyn std::error::Error + 'static), unavailable: bool) -> Self {
        tracing::error!(error, "{what}");
        let (status, kind) = if unavailable {
            (StatusCode::SERVICE_UNAVAILABLE, ErrorKind::DatabaseUnavailable)
        } else {
            (StatusCode::INTERNAL_SERVER_ERROR, ErrorKind::Internal)
        };
        Self::new(status, kind, format!("{what}: {}", crate::error_chain::error_chain(error)))
    }
}

impl From<InvalidField> for ApiError {
    fn from(e: InvalidField) -> Self {
        let mut error = Self::new(StatusCode::BAD_REQUEST, ErrorKind::InvalidRequest, e.to_string());
        error.field = Some(e.field);
        error
    }
}

impl From<db::Error> for ApiError {
    fn from(e: db::Error) -> Self {
        let unavailable = e.is_unavailable();
        Self::internal("database", &e, unavailable)
    }
}

impl From<fencing::Error> for ApiError {
    fn from(e: fencing::Error) -> Self {
        match e {
            fencing::Error::Fenced { .. } => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, ErrorKind::Fenced, e.to_string())
            }
            fencing::Error::StaleEpoch { .. } => Self::new(StatusCode::CONFLICT, ErrorKind::StaleEpoch, e.to_string()),
        }
    }
}

impl From<numbering::Error> for ApiError {
    fn from(e: numbering::Error) -> Self {
        match &e {
            numbering::Error::ProgressiveExhausted { .. } => {
                Self::new(StatusCode::CONFLICT, ErrorKind::ProgressiveExhausted, e.to_string())
            }
            numbering::Error::SeriesExhausted { .. } => {
                Self::new(StatusCode::CONFLICT, ErrorKind::SeriesExhausted, e.to_string())
            }
            numbering::Error::Db { source, .. } => {
                let unavailable = source.is_unavailable();
                Self::internal("issuing an invoice", &e, unavailable)
            }
            numbering::Error::Document { .. } => Self::internal("issuing an invoice", &e, false),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": self.kind.as_str(), "message": self.message});
        if let Some(field) = self.field {
            body["field"] = Value::String(field);
        }
        (self.status, axum::Json(body)).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

fn json_body(body: &Bytes) -> ApiResult<Value> {
    serde_json::from_slice(body).map_err(|e| ApiError::invalid("body", format!("is not JSON: {e}")))
}

/// `{series}/{number}` of a path.
fn invoice_key(series: &str, number: &str) -> ApiResult<i64> {
    match number.parse::<i64>() {
        Ok(n) if n >= 1 && number.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
        _ => Err(ApiError::invalid("number", format!("{number:?} is not an invoice number in series {series}"))),
    }
}

/// `GET /healthz`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub tenant: String,
    pub active: bool,
    pub epoch: u64,
    pub schema_version: i32,
    /// `ok`, or `unavailable` (then the answer is 503).
    pub database: String,
}

async fn healthz(State(state): State<AppState>) -> Response {
    let FenceState { active, epoch } = state.inner.fencing.state();
    let reachable = tokio::time::timeout(HEALTH_TIMEOUT, async {
        let client = state.inner.db.pool.get().await.ok()?;
        client.query_one("SELECT 1", &[]).await.ok()
    })
    .await
    .ok()
    .flatten()
    .is_some();
    let health = Health {
        tenant: state.inner.tenant.clone(),
        active,
        epoch,
        schema_version: SCHEMA_VERSION,
        database: if reachable { "ok" } else { "unavailable" }.to_string(),
    };
    let status = if reachable { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(health)).into_response()
}

/// The header a client names the tenant it means with; an app of another
/// tenant refuses the request (421). A failed-over tenant's old address may
/// answer with another tenant's app once its port is reused, and an invoice
/// issued there is in the wrong company's books.
pub const TENANT_HEADER: &str = "fenice-tenant";

async fn create_invoice(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> ApiResult<(StatusCode, axum::Json<Invoice>)> {
    let inner = &state.inner;
    if let Some(meant) = headers.get(TENANT_HEADER)
        && meant.as_bytes() != inner.tenant.as_bytes()
    {
        let message = format!(
            "this app serves tenant {}, not {}: the address is stale; resolve the tenant's endpoint again",
            inner.tenant,
            String::from_utf8_lossy(meant.as_bytes())
        );
        return Err(ApiError::new(StatusCode::MISDIRECTED_REQUEST, ErrorKind::Misdirected, message));
    }
    let new = NewInvoice::from_json(&json_body(&body)?)?;
    let _permit = inner.fencing.permit().await?;
    let invoice = numbering::issue(&inner.db, &inner.documents, &inner.issuer, &new, state.today()).await?;
    tracing::info!(
        tenant = %inner.tenant, series = %invoice.series, number = invoice.number, file = %invoice.file_name,
        "invoice issued"
    );
    Ok((StatusCode::CREATED, axum::Json(invoice)))
}

/// `GET /v1/invoices`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceList {
    pub invoices: Vec<Invoice>,
}

async fn list_invoices(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> ApiResult<axum::Json<InvoiceList>> {
    const KNOWN: [&str; 4] = ["series", "queue_state", "limit", "after_number"];
    if let Some(unknown) = params.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(ApiError::invalid(unknown, format!("unknown parameter; the parameters are {}", KNOWN.join(", "))));
    }
    let number = |name: &str, min: i64, max: i64| -> ApiResult<Option<i64>> {
        params
            .get(name)
            .map(|text| match text.parse::<i64>() {
                Ok(n) if (min..=max).contains(&n) => Ok(n),
                _ => Err(ApiError::invalid(name, format!("{text:?}: use a whole number from {min} to {max}"))),
            })
            .transpose()
    };
    let filter = ListFilter {
        series: params.get("series").cloned(),
        queue_state: params
            .get("queue_state")
            .map(|s| {
                QueueState::parse(s)
                    .ok_or_else(|| ApiError::invalid("queue_state", format!("{s:?}: use pending, sent or done")))
            })
            .transpose()?,
        after_number: number("after_number", 0, i64::MAX)?,
        limit: number("limit", 1, invoices::LIST_MAX)?,
    };
    if filter.after_number.is_some() && filter.series.is_none() {
        return Err(ApiError::invalid("after_number", "pages within one series: give series too"));
    }
    Ok(axum::Json(InvoiceList { invoices: state.inner.db.invoices(&filter).await? }))
}

async fn get_invoice(
    State(state): State<AppState>,
    Path((series, number)): Path<(String, String)>,
) -> ApiResult<axum::Json<Invoice>> {
    let n = invoice_key(&series, &number)?;
    match state.inner.db.invoice(&series, n).await? {
        Some(invoice) => Ok(axum::Json(invoice)),
        None => Err(ApiError::not_found(format!("no invoice {series}/{n}"))),
    }
}

async fn get_xml(State(state): State<AppState>, Path((series, number)): Path<(String, String)>) -> ApiResult<Response> {
    let n = invoice_key(&series, &number)?;
    let invoice = state
        .inner
        .db
        .invoice(&series, n)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no invoice {series}/{n}")))?;
    let xml = state
        .inner
        .documents
        .read(&invoice.file_name)
        .await
        .map_err(|e| ApiError::internal(&format!("reading the document of invoice {series}/{n}"), &e, false))?;
    Ok(([(header::CONTENT_TYPE, "application/xml")], xml).into_response())
}

/// `GET /v1/invoices/{series}/{number}/receipts`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptList {
    pub receipts: Vec<StoredReceipt>,
}

async fn get_receipts(
    State(state): State<AppState>,
    Path((series, number)): Path<(String, String)>,
) -> ApiResult<axum::Json<ReceiptList>> {
    let n = invoice_key(&series, &number)?;
    match state.inner.db.receipts(&series, n).await? {
        Some(receipts) => Ok(axum::Json(ReceiptList { receipts })),
        None => Err(ApiError::not_found(format!("no invoice {series}/{n}"))),
    }
}

/// `GET /v1/channel`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelView {
    pub endpoint: String,
    pub certificate_expires: Date,
    pub updated_at: Timestamp,
    /// Days until the certificate expires (negative: expired).
    pub expires_in_days: i64,
    /// Whether it expires within [`CERTIFICATE_WARNING_DAYS`] (or has).
    pub certificate_warning: bool,
}

fn channel_view(channel: db::Channel, today: Date) -> ChannelView {
    let expires_in_days = days_between(today, channel.certificate_expires);
    ChannelView {
        endpoint: channel.endpoint,
        certificate_expires: channel.certificate_expires,
        updated_at: channel.updated_at,
        expires_in_days,
        certificate_warning: expires_in_days <= CERTIFICATE_WARNING_DAYS,
    }
}

/// Whole days from `from` to `to`.
pub fn days_between(from: Date, to: Date) -> i64 {
    from.until((jiff::Unit::Day, to)).map_or(0, |span| i64::from(span.get_days()))
}

async fn get_channel(State(state): State<AppState>) -> ApiResult<axum::Json<ChannelView>> {
    match state.inner.db.channel().await? {
        Some(channel) => Ok(axum::Json(channel_view(channel, state.today()))),
        None => Err(ApiError::not_found("no SdI channel configured; PUT /v1/channel")),
    }
}

async fn put_channel(State(state): State<AppState>, body: Bytes) -> ApiResult<axum::Json<ChannelView>> {
    let body = json_body(&body)?;
    let endpoint = match body.get("endpoint") {
        Some(Value::String(s)) => s.clone(),
        _ => return Err(ApiError::invalid("endpoint", "is required: the SdI endpoint URL")),
    };
    if let Err(e) = super::sdi::client::Client::new(&endpoint) {
        return Err(ApiError::invalid("endpoint", e));
    }
    let expires = match body.get("certificate_expires") {
        Some(Value::String(s)) => s
            .parse::<Date>()
            .map_err(|_| ApiError::invalid("certificate_expires", format!("{s:?} is not a YYYY-MM-DD date")))?,
        _ => return Err(ApiError::invalid("certificate_expires", "is required: YYYY-MM-DD")),
    };
    // NB: no fencing permit: a fenced standby must be able to prepare its channel before it is activated.
    let view = channel_view(state.inner.db.set_channel(&endpoint, expires).await?, state.today());
    tracing::info!(tenant = %state.inner.tenant, endpoint = %view.endpoint, expires = %view.certificate_expires, "SdI channel set");
    if view.certificate_warning {
        tracing::warn!(
            tenant = %state.inner.tenant, expires = %view.certificate_expires, days = view.expires_in_days,
            "the SdI channel certificate expires within {CERTIFICATE_WARNING_DAYS} days"
        );
    }
    Ok(axum::Json(view))
}

/// The answer of `POST /v1/admin/fence` and `/v1/admin/activate`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceView {
    pub active: bool,
    pub epoch: u64,
    /// A fence's answer: whether the app was active until this fence (so
    /// that whoever fenced it says so once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub was_active: Option<bool>,
}

impl From<FenceState> for FenceView {
    fn from(s: FenceState) -> Self {
        Self { active: s.active, epoch: s.epoch, was_active: None }
    }
}

async fn fence(State(state): State<AppState>) -> axum::Json<FenceView> {
    let was_active = state.inner.fencing.state().active;
    let fenced = state.inner.fencing.fence().await;
    tracing::warn!(tenant = %state.inner.tenant, epoch = fenced.epoch, "fenced: issuing nothing, sending nothing");
    axum::Json(FenceView { was_active: Some(was_active), ..fenced.into() })
}

async fn activate(State(state): State<AppState>, body: Bytes) -> ApiResult<axum::Json<FenceView>> {
    let body = json_body(&body)?;
    let epoch = match body.get("epoch") {
        Some(Value::Number(n)) => n.as_u64().filter(|&e| e >= 1),
        _ => None,
    }
    .ok_or_else(|| ApiError::invalid("epoch", "is required: a whole number, at least 1"))?;
    let active = state.inner.fencing.activate(epoch).await?;
    tracing::info!(tenant = %state.inner.tenant, epoch, "activated");
    Ok(axum::Json(active.into()))
}

/// `GET /v1/stats`: what the lab and the agent compare between sites.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub tenant: String,
    pub active: bool,
    pub epoch: u64,
    #[serde(flatten)]
    pub counters: Counters,
    /// The file name of the last progressive (None before the first invoice).
    pub last_file_name: Option<String>,
    pub sender: SenderCounters,
}

async fn stats(State(state): State<AppState>) -> ApiResult<axum::Json<Stats>> {
    let inner = &state.inner;
    let counters = inner.db.counters().await?;
    let last_file_name = u64::try_from(counters.last_file_progressive)
        .ok()
        .and_then(|p| numbering::file_name(&inner.issuer.vat, p).ok());
    let FenceState { active, epoch } = inner.fencing.state();
    Ok(axum::Json(Stats {
        tenant: inner.tenant.clone(),
        active,
        epoch,
        counters,
        last_file_name,
        sender: inner.sender.counters(),
    }))
}

/// `GET /v1/deadlines?within_hours=N` (24 by default): invoices whose SdI
/// deadline falls within the next N hours, counted in days in Italy.
async fn deadlines(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> ApiResult<axum::Json<DeadlineList>> {
    if let Some(unknown) = params.keys().find(|k| k.as_str() != "within_hours") {
        return Err(ApiError::invalid(unknown, "unknown parameter; the parameter is within_hours".to_string()));
    }
    let hours = match params.get("within_hours") {
        None => 24,
        Some(text) => match text.parse::<i64>() {
            Ok(n) if (0..=24 * 366).contains(&n) => n,
            _ => return Err(ApiError::invalid("within_hours", format!("{text:?}: use a whole number of hours"))),
        },
    };
    let until = Timestamp::now() + jiff::SignedDuration::from_hours(hours);
    let before = until.to_zoned(state.inner.rome.clone()).date();
    let invoices = state.inner.db.deadlines(before).await?;
    Ok(axum::Json(DeadlineList { before, invoices }))
}

/// The answer of `GET /v1/deadlines`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeadlineList {
    /// Deadlines on or before this day are listed.
    pub before: Date,
    pub invoices: Vec<crate::app::invoices::Deadline>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_count_to_the_expiry() {
        let today = jiff::civil::date(2026, 11, 23);
        assert_eq!(days_between(today, jiff::civil::date(2026, 12, 23)), 30);
        assert_eq!(days_between(today, jiff::civil::date(2026, 11, 22)), -1);
        assert_eq!(days_between(today, jiff::civil::date(2029, 11, 23)), 1096);
    }

    #[test]
    fn invoice_numbers_in_paths_are_positive_integers() {
        assert_eq!(invoice_key("2026", "17").unwrap(), 17);
        for bad in ["0", "-1", "+1", "x", "1.0", ""] {
            assert!(invoice_key("2026", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn errors_carry_the_field_and_the_kind() {
        let response = ApiError::invalid("customer.vat", "is not a partita IVA").into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let fenced: ApiError = fencing::Error::Fenced { epoch: 2 }.into();
        assert_eq!((fenced.status, fenced.kind), (StatusCode::SERVICE_UNAVAILABLE, ErrorKind::Fenced));
        let stale: ApiError = fencing::Error::StaleEpoch { requested: 1, current: 2 }.into();
        assert_eq!((stale.status, stale.kind), (StatusCode::CONFLICT, ErrorKind::StaleEpoch));
    }
}
