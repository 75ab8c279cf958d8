//! The SdI simulator, driven through the protocol's client: in-process on a
//! free port over a temp dir, and once as the real binary.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use fenice::app::sdi::client::{Client, Error as ClientError};
use fenice::app::sdi::sim::{self, SimConfig};
use fenice::app::sdi::{ReceiptKind, Record, RefusalKind, Transmission};
use jiff::Timestamp;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};

/// How long a test waits for something that takes milliseconds.
const DEADLINE: Duration = Duration::from_secs(20);
/// A delay no test outlives: receipts never appear.
const NEVER: Duration = Duration::from_secs(3600);

/// A simulator running in this process.
struct Sim {
    client: Client,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), sim::Error>>,
}

async fn start(dir: &Path, receipt_delay: Duration) -> Sim {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let config = SimConfig { data_dir: dir.to_owned(), receipt_delay };
    let task = tokio::spawn(sim::serve(listener, config, async move {
        let _ = stopped.await;
    }));
    let client = Client::new(&format!("http://{addr}")).unwrap();
    Sim { client, stop, task }
}

impl Sim {
    async fn stop(self) {
        let _ = self.stop.send(());
        timeout(DEADLINE, self.task).await.expect("the simulator stops").unwrap().unwrap();
    }
}

fn fpr12(codice_destinatario: &str, pec: Option<&str>) -> Vec<u8> {
    invoice("FPR12", codice_destinatario, pec)
}

fn invoice(versione: &str, codice_destinatario: &str, pec: Option<&str>) -> Vec<u8> {
    let pec = pec.map(|p| format!("\r\n      <PECDestinatario>{p}</PECDestinatario>")).unwrap_or_default();
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\r\n\
         <p:FatturaElettronica versione=\"{versione}\" \
         xmlns:p=\"http://ivaservizi.agenziaentrate.gov.it/docs/xsd/fatture/v1.2\">\r\n\
         <FatturaElettronicaHeader>\r\n    <DatiTrasmissione>\r\n      \
         <CodiceDestinatario>{codice_destinatario}</CodiceDestinatario>{pec}\r\n    </DatiTrasmissione>\r\n  \
         <CedentePrestatore><Denominazione>Società Dolciaria Già Srl</Denominazione></CedentePrestatore>\r\n  \
         </FatturaElettronicaHeader>\r\n</p:FatturaElettronica>\r\n"
    )
    .into_bytes()
}

fn sha256_hex(bytes: &[u8]) -> String {
    fenice::repo::id::hex(&Sha256::digest(bytes))
}

fn id(t: &Transmission) -> u64 {
    t.sdi_id.parse().unwrap_or_else(|_| panic!("SdI identifier {:?} is not decimal", t.sdi_id))
}

/// Receipts a test expects: kind and a part of the detail.
type Receipts = &'static [(ReceiptKind, &'static str)];

/// Polls one transmission until it has `count` receipts.
async fn await_receipts(client: &Client, tenant: &str, sdi_id: &str, count: usize) -> Record {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let record = client.record(tenant, sdi_id).await.unwrap();
        if record.receipts.len() >= count {
            return record;
        }
        assert!(Instant::now() < deadline, "transmission {sdi_id} still has {:?}", record.receipts);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_accepted_file_is_listed_and_read_back_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start(dir.path(), NEVER).await;
    let xml = fpr12("ABC1234", None);
    let before = Timestamp::now();

    let sent = sim.client.send("acme", 3, "IT01234567890_00001.xml", xml.clone()).await.unwrap();

    assert_eq!((sent.tenant.as_str(), sent.file_name.as_str(), sent.epoch), ("acme", "IT01234567890_00001.xml", 3));
    assert_eq!(sent.sha256, sha256_hex(&xml));
    let received_at: Timestamp = sent.received_at.parse().unwrap();
    assert!(sent.received_at.ends_with('Z'), "{}", sent.received_at);
    assert!(received_at >= before.round(jiff::Unit::Millisecond).unwrap() - jiff::SignedDuration::from_millis(1));
    id(&sent);
    let record = Record { transmission: sent.clone(), receipts: vec![] };
    assert_eq!(sim.client.list("acme").await.unwrap(), std::slice::from_ref(&record));
    assert_eq!(sim.client.record("acme", &sent.sdi_id).await.unwrap(), record);
    assert_eq!(sim.client.file("acme", &sent.sdi_id).await.unwrap(), xml);
    assert_eq!(sim.client.list("other").await.unwrap(), []);
    sim.stop().await;
}

#[tokio::test]
async fn a_file_name_seen_before_is_refused_with_the_earlier_transmission() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start(dir.path(), NEVER).await;
    let first = sim.client.send("acme", 1, "IT01234567890_00001.xml", fpr12("ABC1234", None)).await.unwrap();

    for (epoch, xml) in [(1, fpr12("ABC1234", None)), (2, fpr12("XYZ9876", None))] {
        match sim.client.send("acme", epoch, "IT01234567890_00001.xml", xml).await {
            Err(ClientError::Duplicate { earlier, file_name, .. }) => {
                assert_eq!(*earlier, first);
                assert_eq!(file_name, "IT01234567890_00001.xml");
            }
            other => panic!("epoch {epoch}: expected a duplicate, got {other:?}"),
        }
    }
    // The refused duplicate at epoch 2 still raised the bar.
    let stale = sim.client.send("acme", 1, "IT01234567890_00002.xml", fpr12("ABC1234", None)).await;
    assert!(matches!(stale, Err(ClientError::StaleEpoch { highest: 2, .. })), "{stale:?}");
    assert_eq!(sim.client.list("acme").await.unwrap().len(), 1);
    sim.stop().await;
}

#[tokio::test]
async fn a_stale_epoch_is_refused_and_a_higher_one_raises_the_bar() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start(dir.path(), NEVER).await;
    let client = &sim.client;
    let send = |epoch: u64, n: u32| async move {
        client.send("acme", epoch, &format!("IT01234567890_{n:05}.xml"), fpr12("ABC1234", None)).await
    };

    send(5, 1).await.unwrap();
    match send(4, 2).await {
        Err(ClientError::StaleEpoch { epoch, highest, tenant, .. }) => {
            assert_eq!((epoch, highest, tenant.as_str()), (4, 5, "acme"));
        }
        other => panic!("expected a stale epoch, got {other:?}"),
    }
    send(7, 3).await.unwrap();
    let stale = send(5, 4).await;
    assert!(matches!(stale, Err(ClientError::StaleEpoch { highest: 7, .. })), "{stale:?}");
    send(7, 5).await.unwrap();

    let epochs: Vec<u64> = sim.client.list("acme").await.unwrap().iter().map(|r| r.transmission.epoch).collect();
    assert_eq!(epochs, [5, 7, 7]);
    sim.stop().await;
}

#[tokio::test]
async fn tenants_have_their_own_epochs_and_file_names() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start(dir.path(), NEVER).await;
    let name = "IT01234567890_00001.xml";

    let a = sim.client.send("tenant-a", 9, name, fpr12("ABC1234", None)).await.unwrap();
    let b = sim.client.send("tenant-b", 1, name, fpr12("ABC1234", None)).await.unwrap();

    assert!(id(&b) > id(&a), "identifiers increase across tenants: {a:?} then {b:?}");
    let stale = sim.client.send("tenant-a", 1, "IT01234567890_00002.xml", fpr12("ABC1234", None)).await;
    assert!(matches!(stale, Err(ClientError::StaleEpoch { highest: 9, .. })), "{stale:?}");
    let transmissions = |records: Vec<Record>| records.into_iter().map(|r| r.transmission).collect::<Vec<_>>();
    assert_eq!(transmissions(sim.client.list("tenant-a").await.unwrap()), std::slice::from_ref(&a));
    assert_eq!(transmissions(sim.client.list("tenant-b").await.unwrap()), std::slice::from_ref(&b));
    let other = sim.client.record("tenant-b", &a.sdi_id).await;
    assert!(matches!(other, Err(ClientError::Refused { kind: RefusalKind::NotFound, .. })), "{other:?}");
    sim.stop().await;
}

#[tokio::test]
async fn receipts_follow_the_content_and_the_delay() {
    let dir = tempfile::tempdir().unwrap();
    let delay = Duration::from_millis(200);
    let sim = start(dir.path(), delay).await;
    let cases: [(&str, Vec<u8>, Receipts); 6] = [
        ("00001", fpr12("ABC1234", None), &[(ReceiptKind::RC, "")]),
        ("00002", fpr12("0000000", Some("buyer@pec.example.it")), &[(ReceiptKind::RC, "")]),
        ("00003", fpr12("0000000", None), &[(ReceiptKind::MC, "PECDestinatario")]),
        ("00004", b"<FatturaElettronica versione=\"FPR12\"><Header>".to_vec(), &[(ReceiptKind::NS, "not well-formed")]),
        ("00005", invoice("FPR13", "ABC1234", None), &[(ReceiptKind::NS, "FPR13")]),
        ("00006", invoice("FPA12", "UFABCD", None), &[(ReceiptKind::RC, ""), (ReceiptKind::NE, "EC01 accepted")]),
    ];
    let mut sent = Vec::new();
    for (progressive, xml, _) in &cases {
        let name = format!("IT01234567890_{progressive}.xml");
        sent.push(sim.client.send("acme", 1, &name, xml.clone()).await.unwrap());
    }

    for ((_, _, expected), transmission) in cases.iter().zip(&sent) {
        let record = await_receipts(&sim.client, "acme", &transmission.sdi_id, expected.len()).await;
        let received_at: Timestamp = transmission.received_at.parse().unwrap();
        assert_eq!(record.receipts.len(), expected.len(), "{record:?}");
        for (k, (receipt, (kind, detail))) in record.receipts.iter().zip(expected.iter()).enumerate() {
            assert_eq!(receipt.kind, *kind, "{record:?}");
            assert!(receipt.detail.contains(detail), "{record:?} should say {detail:?}");
            let issued_at: Timestamp = receipt.issued_at.parse().unwrap();
            assert_eq!(issued_at, received_at + delay * (k as u32 + 1), "{record:?}");
        }
    }
    // The list carries the same receipts.
    let listed = sim.client.list("acme").await.unwrap();
    let kinds: Vec<Vec<ReceiptKind>> = listed.iter().map(|r| r.receipts.iter().map(|x| x.kind).collect()).collect();
    use ReceiptKind::{MC, NE, NS, RC};
    assert_eq!(kinds, [vec![RC], vec![RC], vec![MC], vec![NS], vec![NS], vec![RC, NE]]);
    sim.stop().await;
}

#[tokio::test]
async fn a_restart_over_the_same_directory_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start(dir.path(), Duration::ZERO).await;
    let a = sim.client.send("acme", 4, "IT01234567890_00001.xml", fpr12("ABC1234", None)).await.unwrap();
    let b = sim.client.send("beta", 2, "IT01234567890_00001.xml", invoice("FPA12", "UFABCD", None)).await.unwrap();
    let before = (sim.client.list("acme").await.unwrap(), sim.client.list("beta").await.unwrap());
    sim.stop().await;

    let sim = start(dir.path(), Duration::ZERO).await;
    assert_eq!((sim.client.list("acme").await.unwrap(), sim.client.list("beta").await.unwrap()), before);
    assert_eq!(sim.client.file("beta", &b.sdi_id).await.unwrap(), invoice("FPA12", "UFABCD", None));
    let again = sim.client.send("acme", 4, "IT01234567890_00001.xml", fpr12("ABC1234", None)).await;
    assert!(matches!(&again, Err(ClientError::Duplicate { earlier, .. }) if **earlier == a), "{again:?}");
    let stale = sim.client.send("acme", 3, "IT01234567890_00002.xml", fpr12("ABC1234", None)).await;
    assert!(matches!(stale, Err(ClientError::StaleEpoch { highest: 4, .. })), "{stale:?}");
    let c = sim.client.send("acme", 4, "IT01234567890_00002.xml", fpr12("ABC1234", None)).await.unwrap();
    assert!(id(&c) > id(&a).max(id(&b)), "{c:?} after {a:?} and {b:?}");
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_twenty_concurrent_sends_of_one_name_exactly_one_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start(dir.path(), NEVER).await;
    let sends: Vec<_> = (0..20)
        .map(|_| {
            let client = sim.client.clone();
            tokio::spawn(async move { client.send("acme", 1, "IT01234567890_00001.xml", fpr12("ABC1234", None)).await })
        })
        .collect();
    let mut accepted = Vec::new();
    let mut earlier = Vec::new();
    for send in sends {
        match send.await.unwrap() {
            Ok(t) => accepted.push(t),
            Err(ClientError::Duplicate { earlier: e, .. }) => earlier.push(*e),
            Err(other) => panic!("{other:?}"),
        }
    }
    assert_eq!(accepted.len(), 1, "{accepted:?}");
    assert_eq!(earlier.len(), 19);
    assert!(earlier.iter().all(|e| *e == accepted[0]), "{earlier:?}");
    let listed = sim.client.list("acme").await.unwrap();
    assert_eq!(listed.len(), 1);
    sim.stop().await;
}

#[tokio::test]
async fn bad_requests_are_refused_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start(dir.path(), NEVER).await;
    let url = format!("{}/v1/tenants/acme/transmissions", sim.client.endpoint());
    let http = reqwest::Client::new();
    let xml = fpr12("ABC1234", None);
    let name = [("file_name", "IT01234567890_00001.xml")];
    let raw = [
        (http.post(&url).query(&name).body(xml.clone()), "Fenice-Epoch is missing"),
        (http.post(&url).query(&name).header("Fenice-Epoch", "one").body(xml.clone()), "not a decimal number"),
        (http.post(&url).query(&name).header("Fenice-Epoch", "-1").body(xml.clone()), "not a decimal number"),
        (http.post(&url).header("Fenice-Epoch", "1").body(xml.clone()), "file_name is missing"),
        (http.post(&url).query(&name).header("Fenice-Epoch", "1"), "is empty"),
    ];
    for (request, says) in raw {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 400);
        let refusal: fenice::app::sdi::Refusal = response.json().await.unwrap();
        assert_eq!(refusal.error, RefusalKind::BadRequest);
        assert!(refusal.message.contains(says), "{:?} should say {says:?}", refusal.message);
    }

    let refused = [
        (sim.client.send("acme", 1, "IT01234567890_0001.xml", xml.clone()).await, "IT01234567890_0001.xml"),
        (sim.client.send("acme", 1, "../IT01234567890_00001.xml", xml.clone()).await, "is not IT"),
        (sim.client.send("Acme", 1, "IT01234567890_00001.xml", xml.clone()).await, "\"Acme\" is not a DNS label"),
        (sim.client.send("a..b", 1, "IT01234567890_00001.xml", xml.clone()).await, "\"a..b\" is not a DNS label"),
    ];
    for (result, says) in refused {
        match result {
            Err(ClientError::Refused { kind: RefusalKind::BadRequest, message, .. }) => {
                assert!(message.contains(says), "{message:?} should say {says:?}");
            }
            other => panic!("expected a bad request saying {says:?}, got {other:?}"),
        }
    }
    let listed = sim.client.list("Acme").await;
    assert!(matches!(listed, Err(ClientError::Refused { kind: RefusalKind::BadRequest, .. })), "{listed:?}");
    let missing = sim.client.record("acme", "42").await;
    assert!(matches!(missing, Err(ClientError::Refused { kind: RefusalKind::NotFound, .. })), "{missing:?}");
    let missing = sim.client.file("acme", "42").await;
    assert!(matches!(missing, Err(ClientError::Refused { kind: RefusalKind::NotFound, .. })), "{missing:?}");
    assert_eq!(sim.client.list("acme").await.unwrap(), []);
    assert!(!dir.path().join("tenants/Acme").exists());
    sim.stop().await;
}

#[tokio::test]
async fn the_binary_prints_its_address_serves_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("sdi");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_fenice"))
        .args(["app", "sdi-sim", "--listen", "127.0.0.1:0"])
        .env("FENICE_SDI_DATA", &data)
        .env("FENICE_SDI_RECEIPT_DELAY", "0s")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = timeout(DEADLINE, lines.next_line()).await.expect("a line in time").unwrap().expect("a line");
    let addr = line.strip_prefix("listening on ").unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    assert_ne!(addr.port(), 0);

    let client = Client::new(&format!("http://{addr}")).unwrap();
    let sent = client.send("acme", 1, "IT01234567890_00001.xml", fpr12("0000000", None)).await.unwrap();
    let record = await_receipts(&client, "acme", &sent.sdi_id, 1).await;
    assert_eq!(record.receipts[0].kind, ReceiptKind::MC);
    assert!(data.join(format!("tenants/acme/{}.json", sent.sdi_id)).is_file());

    let pid = i32::try_from(child.id().expect("still running")).unwrap();
    // SAFETY: kill only sends a signal, to the child this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = timeout(DEADLINE, child.wait()).await.expect("exits in time").unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(lines.next_line().await.unwrap(), None, "nothing else on stdout");
}
