//! The reference app and the SdI simulator for tests: a PostgreSQL with an
//! empty database, the app served in the test's process, the simulator run as
//! the real binary, and polling with a deadline.

use std::error::Error as _;
use std::future::Future;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use fenice::app::sdi::client::Client;
use fenice::app::{App, AppConfig};
use fenice::testkit::PostgresServer;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How long a test waits for something that takes well under a second on an idle machine.
pub const DEADLINE: Duration = Duration::from_secs(60);
/// Between two looks at a condition.
pub const POLL: Duration = Duration::from_millis(50);
/// The tenant's partita IVA in every test.
pub const VAT: &str = "01234567890";

/// Polls `check` until it returns Some, or fails the test after [`DEADLINE`].
pub async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "gave up waiting: {what}");
        tokio::time::sleep(POLL).await;
    }
}

/// A fresh PostgreSQL with an empty database `app`.
pub async fn postgres() -> (PostgresServer, String) {
    let pg = tokio::task::spawn_blocking(PostgresServer::start).await.unwrap().unwrap_or_else(|e| {
        let mut message = e.to_string();
        let mut source = e.source();
        while let Some(cause) = source {
            message.push_str(&format!("\ncaused by: {cause}"));
            source = cause.source();
        }
        panic!("{message}")
    });
    let (client, connection) = tokio_postgres::connect(&pg.url("postgres"), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client.batch_execute("CREATE DATABASE app").await.unwrap();
    let url = pg.url("app");
    (pg, url)
}

pub fn config(db_url: &str, documents: &Path) -> AppConfig {
    AppConfig {
        send_interval: Duration::from_millis(100),
        ..AppConfig::new("acme", VAT, "Fenice Dimostrativa S.r.l.", db_url, documents)
    }
}

/// The app, served in this process on a free port.
pub struct RunningApp {
    pub base: String,
    pub http: reqwest::Client,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), fenice::app::Error>>,
}

pub async fn start(config: AppConfig) -> RunningApp {
    let app = App::open(config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(app.serve(listener, async move {
        let _ = stopped.await;
    }));
    RunningApp { base, http: reqwest::Client::new(), stop, task }
}

impl RunningApp {
    pub async fn request(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{path}: not JSON: {text}"));
        (status, value)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.request(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.request(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.request(reqwest::Method::PUT, path, Some(body)).await
    }

    /// Issues an invoice that must be accepted.
    pub async fn issue(&self, body: Value) -> Value {
        let (status, invoice) = self.post("/v1/invoices", body).await;
        assert_eq!(status, StatusCode::CREATED, "{invoice}");
        invoice
    }

    pub async fn xml(&self, series: &str, number: i64) -> Vec<u8> {
        let response = self.http.get(format!("{}/v1/invoices/{series}/{number}/xml", self.base)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "application/xml");
        response.bytes().await.unwrap().to_vec()
    }

    pub async fn stats(&self) -> Value {
        let (status, stats) = self.get("/v1/stats").await;
        assert_eq!(status, StatusCode::OK, "{stats}");
        stats
    }

    pub async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(DEADLINE, self.task).await.expect("the app stops").unwrap().unwrap();
    }
}

pub fn invoice_body(series: &str, recipient_code: &str) -> Value {
    json!({
        "series": series,
        "issue_date": "2026-11-23",
        "customer": {"vat": "09876543210", "name": "Rossi & Figli S.n.c.", "recipient_code": recipient_code},
        "description": "Manutenzione impianti <novembre>",
        "taxable_cents": 10000,
    })
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    fenice::repo::id::hex(&Sha256::digest(bytes))
}

/// The SdI simulator, run as the real binary on a free port.
pub struct Sim {
    pub endpoint: String,
    pub client: Client,
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

pub async fn sim(receipt_delay: &str) -> Sim {
    let dir = tempfile::tempdir().unwrap();
    let log = std::fs::File::create(dir.path().join("sim.log")).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_fenice"))
        .args(["app", "sdi-sim", "--listen", "127.0.0.1:0", "--receipt-delay", receipt_delay, "--data"])
        .arg(dir.path().join("data"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(DEADLINE, lines.next_line()).await.expect("the simulator starts").unwrap();
    let Some(address) = line.as_deref().and_then(|l| l.strip_prefix("listening on ")) else {
        let log = std::fs::read_to_string(dir.path().join("sim.log")).unwrap_or_default();
        panic!("the simulator printed {line:?}; its log:\n{log}");
    };
    let endpoint = format!("http://{address}");
    let client = Client::new(&endpoint).unwrap();
    Sim { endpoint, client, _child: child, _dir: dir }
}
