//! The reference invoicing app against a real PostgreSQL (test kit) and, for
//! the sender, the real SdI simulator binary.
//!
//! NB: these never skip: a missing PostgreSQL fails the test with the test
//! kit's message saying how to install it.

use std::collections::{BTreeMap, BTreeSet};
use std::error::Error as _;
use std::process::Stdio;

use fenice::app::fattura::Format;
use fenice::app::{App, AppConfig, SdiEnvironment};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

#[path = "common/app.rs"]
mod app_kit;
use app_kit::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_issuers_number_each_series_without_gap_or_duplicate() {
    let (_pg, url) = postgres().await;
    let documents = tempfile::tempdir().unwrap();
    let app = start(config(&url, documents.path())).await;

    let mut tasks = Vec::new();
    for task in 0..8 {
        let (http, base) = (app.http.clone(), app.base.clone());
        tasks.push(tokio::spawn(async move {
            let mut issued = Vec::new();
            for i in 0..50 {
                let series = if (task + i) % 2 == 0 { "2026" } else { "B2026" };
                let code = if i % 5 == 0 { "UFXXXX" } else { "ABC1234" };
                let response =
                    http.post(format!("{base}/v1/invoices")).json(&invoice_body(series, code)).send().await.unwrap();
                assert_eq!(response.status(), StatusCode::CREATED);
                let invoice: Value = response.json().await.unwrap();
                issued.push((
                    invoice["series"].as_str().unwrap().to_string(),
                    invoice["number"].as_i64().unwrap(),
                    invoice["file_name"].as_str().unwrap().to_string(),
                ));
            }
            issued
        }));
    }
    let mut numbers: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut file_names = BTreeSet::new();
    for task in tasks {
        for (series, number, file_name) in task.await.unwrap() {
            numbers.entry(series).or_default().push(number);
            assert!(file_names.insert(file_name.clone()), "{file_name} issued twice");
        }
    }
    for (series, mut numbers) in numbers.clone() {
        numbers.sort();
        assert_eq!(numbers, (1..=200).collect::<Vec<_>>(), "series {series}");
    }
    let progressives: Vec<u64> = file_names
        .iter()
        .map(|name| {
            let code = name.strip_prefix(&format!("IT{VAT}_")).unwrap().strip_suffix(".xml").unwrap();
            fenice::app::numbering::progressive_from_code(code).unwrap()
        })
        .collect();
    assert_eq!(progressives, (1..=400).collect::<Vec<_>>(), "file progressives 1..400, no gap");
    let on_disk: BTreeSet<String> = std::fs::read_dir(documents.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(on_disk, file_names, "exactly one document per invoice, no temporary file left");

    let stats = app.stats().await;
    assert_eq!(stats["last_numbers"], json!({"2026": 200, "B2026": 200}));
    assert_eq!(stats["last_file_progressive"], 400);
    assert_eq!(stats["last_file_name"], format!("IT{VAT}_000B4.xml"));
    assert_eq!(stats["invoices"], json!({"pending": 400, "sent": 0, "done": 0}));

    // Paging through one series.
    let (_, page) = app.get("/v1/invoices?series=2026&limit=150").await;
    let page = page["invoices"].as_array().unwrap().clone();
    assert_eq!(page.len(), 150);
    assert_eq!((page[0]["number"].as_i64(), page[149]["number"].as_i64()), (Some(1), Some(150)));
    let (_, rest) = app.get("/v1/invoices?series=2026&after_number=150&limit=1000").await;
    let rest: Vec<i64> = rest["invoices"].as_array().unwrap().iter().map(|i| i["number"].as_i64().unwrap()).collect();
    assert_eq!(rest, (151..=200).collect::<Vec<_>>());
    app.stop().await;
}

#[tokio::test]
async fn documents_are_fatturapa_by_recipient_and_match_their_stored_hash() {
    let (_pg, url) = postgres().await;
    let documents = tempfile::tempdir().unwrap();
    let app = start(config(&url, documents.path())).await;

    let business = app.issue(invoice_body("2026", "ABC1234")).await;
    let mut public_body = invoice_body("2026", "UFXXXX");
    public_body.as_object_mut().unwrap().remove("issue_date");
    public_body["vat_rate_percent"] = json!(10);
    public_body["taxable_cents"] = json!(12_345);
    let public_body = app.issue(public_body).await;

    let today = jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::get("Europe/Rome").unwrap()).date();
    assert_eq!(public_body["issue_date"], today.to_string(), "no issue_date: today in Rome");
    for (invoice, format, versione) in [(&business, Format::Fpr12, "FPR12"), (&public_body, Format::Fpa12, "FPA12")] {
        assert_eq!(invoice["format"], versione);
        assert_eq!(invoice["queue_state"], "pending");
        let number = invoice["number"].as_i64().unwrap();
        let xml = app.xml("2026", number).await;
        let file = std::fs::read(documents.path().join(invoice["file_name"].as_str().unwrap())).unwrap();
        assert_eq!(xml, file, "the API serves the stored document");
        assert_eq!(invoice["xml_sha256"], sha256_hex(&xml));

        // Well-formed, to the end, with the FatturaPA root.
        let mut reader = quick_xml::Reader::from_reader(xml.as_slice());
        let mut root = None;
        loop {
            match reader.read_event().unwrap_or_else(|e| panic!("{versione}: not well-formed: {e}")) {
                quick_xml::events::Event::Start(start) if root.is_none() => {
                    root = Some(String::from_utf8(start.name().as_ref().to_vec()).unwrap());
                    let version = start.try_get_attribute("versione").unwrap().unwrap();
                    assert_eq!(version.value.as_ref(), versione.as_bytes());
                }
                quick_xml::events::Event::Eof => break,
                _ => {}
            }
        }
        assert_eq!(root.as_deref(), Some("p:FatturaElettronica"));
        let text = String::from_utf8(xml.clone()).unwrap();
        assert!(text.contains("xmlns:p=\"http://ivaservizi.agenziaentrate.gov.it/docs/xsd/fatture/v1.2\""));
        assert!(text.contains("<Denominazione>Rossi &amp; Figli S.n.c.</Denominazione>"), "{text}");

        // What the restore side reads back is what the app stored.
        let parsed = fenice::app::parse(&xml).unwrap();
        assert_eq!(parsed.format, format);
        assert_eq!((parsed.series.as_str(), parsed.number), ("2026", number));
        assert_eq!(parsed.issue_date.to_string(), invoice["issue_date"].as_str().unwrap());
        assert_eq!(parsed.customer_vat, invoice["customer"]["vat"].as_str().unwrap());
        assert_eq!(parsed.customer_name, "Rossi & Figli S.n.c.");
        assert_eq!(parsed.recipient_code, invoice["customer"]["recipient_code"].as_str().unwrap());
        assert_eq!(parsed.description, "Manutenzione impianti <novembre>");
        assert_eq!(parsed.taxable_cents, invoice["taxable_cents"].as_i64().unwrap());
        assert_eq!(parsed.vat_cents, invoice["vat_cents"].as_i64().unwrap());
        assert_eq!(
            fenice::app::numbering::file_name(VAT, parsed.progressive).unwrap(),
            invoice["file_name"].as_str().unwrap()
        );
    }
    assert_eq!(public_body["vat_cents"], 1235, "10% of 123.45, rounded half up");
    assert_eq!(public_body["total_cents"], 13580);

    // The database carries the document too, for point-in-time recovery.
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let stored: Vec<u8> = client
        .query_one("SELECT content FROM documents WHERE file_name = $1", &[&business["file_name"].as_str().unwrap()])
        .await
        .unwrap()
        .get(0);
    assert_eq!(sha256_hex(&stored), business["xml_sha256"].as_str().unwrap());
    app.stop().await;
}

#[tokio::test]
async fn a_commit_that_fails_leaves_no_document_and_no_gap() {
    let (_pg, url) = postgres().await;
    let documents = tempfile::tempdir().unwrap();
    let app = start(config(&url, documents.path())).await;
    // A check that PostgreSQL runs only at COMMIT, after the app wrote the document.
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client
        .batch_execute(
            "CREATE FUNCTION refuse_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN IF NEW.customer_name = 'Refused At Commit' THEN RAISE EXCEPTION 'refused at commit'; END IF; \
             RETURN NEW; END $$; \
             CREATE CONSTRAINT TRIGGER refuse_at_commit AFTER INSERT ON invoices \
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse_at_commit();",
        )
        .await
        .unwrap();

    let mut refused = invoice_body("2026", "ABC1234");
    refused["customer"]["name"] = json!("Refused At Commit");
    let (status, error) = app.post("/v1/invoices", refused).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{error}");
    assert!(error["message"].as_str().unwrap().contains("refused at commit"), "{error}");
    let left: Vec<_> = std::fs::read_dir(documents.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, Vec::<std::ffi::OsString>::new(), "the document of the failed issue is gone");

    let next = app.issue(invoice_body("2026", "ABC1234")).await;
    assert_eq!((next["number"].as_i64(), next["file_name"].as_str()), (Some(1), Some("IT01234567890_00001.xml")));
    assert!(documents.path().join("IT01234567890_00001.xml").is_file());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sender_transmits_each_invoice_once_and_records_receipts_until_done() {
    let (_pg, url) = postgres().await;
    let sim = sim("100ms").await;
    let documents = tempfile::tempdir().unwrap();
    let app = start(AppConfig { sdi_endpoint: Some(sim.endpoint.clone()), ..config(&url, documents.path()) }).await;

    let mut issued = Vec::new();
    for code in ["ABC1234", "UFXXXX", "ABC1234", "UFABCD", "0000000", "ABC1234"] {
        issued.push(app.issue(invoice_body("2026", code)).await);
    }
    wait_for("every invoice done", || async {
        let stats = app.stats().await;
        (stats["invoices"]["done"] == 6).then_some(())
    })
    .await;

    let records = sim.client.list("acme").await.unwrap();
    let sent_names: Vec<&str> = records.iter().map(|r| r.transmission.file_name.as_str()).collect();
    let ours: Vec<&str> = issued.iter().map(|i| i["file_name"].as_str().unwrap()).collect();
    assert_eq!(sent_names, ours, "each invoice transmitted exactly once, oldest first");
    for (invoice, record) in issued.iter().zip(&records) {
        let (_, stored) = app.get(&format!("/v1/invoices/2026/{}", invoice["number"])).await;
        assert_eq!(stored["queue_state"], "done");
        assert_eq!(stored["sdi_id"], record.transmission.sdi_id.as_str());
        assert_eq!(stored["sent_epoch"], 1);
        assert_eq!(record.transmission.sha256, invoice["xml_sha256"].as_str().unwrap());
        let (_, receipts) = app.get(&format!("/v1/invoices/2026/{}/receipts", invoice["number"])).await;
        let kinds: Vec<&str> =
            receipts["receipts"].as_array().unwrap().iter().map(|r| r["kind"].as_str().unwrap()).collect();
        let expected: &[&str] = match invoice["customer"]["recipient_code"].as_str().unwrap() {
            "UFXXXX" | "UFABCD" => &["RC", "NE"],
            "0000000" => &["MC"],
            _ => &["RC"],
        };
        assert_eq!(kinds, expected, "{}", invoice["file_name"]);
    }
    let stats = app.stats().await;
    assert_eq!(stats["receipts"], json!({"RC": 5, "NE": 2, "MC": 1, "NS": 0, "DT": 0, "AT": 0}));
    assert_eq!(stats["sender"]["transmitted"], 6);
    assert_eq!(stats["sender"]["adopted"], 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_app_refuses_invoices_sends_nothing_and_activates_only_forward() {
    let (_pg, url) = postgres().await;
    let sim = sim("50ms").await;
    let documents = tempfile::tempdir().unwrap();
    // No channel yet: the sender has nowhere to send while the invoices are issued.
    let app = start(AppConfig { epoch: 2, ..config(&url, documents.path()) }).await;
    let first = app.issue(invoice_body("2026", "ABC1234")).await;
    app.issue(invoice_body("2026", "ABC1234")).await;

    let (status, fenced) = app.post("/v1/admin/fence", json!({})).await;
    assert_eq!((status, fenced), (StatusCode::OK, json!({"active": false, "epoch": 2, "was_active": true})));
    let (status, refused) = app.post("/v1/invoices", invoice_body("2026", "ABC1234")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{refused}");
    assert_eq!(refused["error"], "fenced");
    let (_, health) = app.get("/healthz").await;
    assert_eq!(
        health,
        json!({"tenant": "acme", "active": false, "epoch": 2, "schema_version": fenice::app::schema::SCHEMA_VERSION, "database": "ok"})
    );

    // A fenced standby may prepare its channel; its sender still sends nothing.
    let (status, channel) =
        app.put("/v1/channel", json!({"endpoint": sim.endpoint, "certificate_expires": "2029-11-23"})).await;
    assert_eq!(status, StatusCode::OK, "{channel}");
    let rounds = app.stats().await["sender"]["rounds"].as_u64().unwrap();
    wait_for("three more sender rounds", || async {
        (app.stats().await["sender"]["rounds"].as_u64().unwrap() >= rounds + 3).then_some(())
    })
    .await;
    assert_eq!(sim.client.list("acme").await.unwrap(), [], "a fenced app transmits nothing");
    assert_eq!(app.stats().await["invoices"]["pending"], 2);

    let (status, stale) = app.post("/v1/admin/activate", json!({"epoch": 1})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{stale}");
    assert_eq!(stale["error"], "stale_epoch");
    let (status, bad) = app.post("/v1/admin/activate", json!({})).await;
    assert_eq!((status, bad["field"].as_str()), (StatusCode::BAD_REQUEST, Some("epoch")));

    let (status, active) = app.post("/v1/admin/activate", json!({"epoch": 3})).await;
    assert_eq!((status, active), (StatusCode::OK, json!({"active": true, "epoch": 3})));
    wait_for("both invoices sent", || async { (sim.client.list("acme").await.unwrap().len() == 2).then_some(()) })
        .await;
    let records = sim.client.list("acme").await.unwrap();
    assert!(records.iter().all(|r| r.transmission.epoch == 3), "{records:?}");
    assert_eq!(records[0].transmission.file_name, first["file_name"].as_str().unwrap());
    app.issue(invoice_body("2026", "ABC1234")).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_epoch_at_sdi_fences_the_app() {
    let (_pg, url) = postgres().await;
    let sim = sim("50ms").await;
    // Another site took over at epoch 5 and transmitted already.
    let theirs = sim.client.send("acme", 5, &format!("IT{VAT}_00009.xml"), b"<x/>".to_vec()).await.unwrap();
    let documents = tempfile::tempdir().unwrap();
    let app = start(AppConfig { sdi_endpoint: Some(sim.endpoint.clone()), ..config(&url, documents.path()) }).await;

    let invoice = app.issue(invoice_body("2026", "ABC1234")).await;
    let health = wait_for("the app fences itself", || async {
        let (_, health) = app.get("/healthz").await;
        (health["active"] == false).then_some(health)
    })
    .await;
    assert_eq!(health["epoch"], 1);
    let (_, stored) = app.get(&format!("/v1/invoices/2026/{}", invoice["number"])).await;
    assert_eq!(stored["queue_state"], "pending", "the refused invoice waits for the site that took over");
    let (status, _) = app.post("/v1/invoices", invoice_body("2026", "ABC1234")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let names: Vec<String> =
        sim.client.list("acme").await.unwrap().into_iter().map(|r| r.transmission.file_name).collect();
    assert_eq!(names, [theirs.file_name]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_earlier_transmission_of_ours_is_recorded_as_sent_without_a_second_one() {
    let (_pg, url) = postgres().await;
    let sim = sim("50ms").await;
    let documents = tempfile::tempdir().unwrap();
    let app = start(config(&url, documents.path())).await;
    let mut issued = Vec::new();
    for _ in 0..3 {
        issued.push(app.issue(invoice_body("2026", "ABC1234")).await);
    }
    let name = |i: usize| issued[i]["file_name"].as_str().unwrap().to_string();

    // Invoice 1 reached SdI before a crash (same bytes); SdI holds another file under invoice 2's name.
    let earlier = sim.client.send("acme", 1, &name(0), app.xml("2026", 1).await).await.unwrap();
    let mut other = app.xml("2026", 2).await;
    other.extend_from_slice(b"<!-- not ours -->\n");
    let clash = sim.client.send("acme", 1, &name(1), other).await.unwrap();

    let (status, _) =
        app.put("/v1/channel", json!({"endpoint": sim.endpoint, "certificate_expires": "2029-11-23"})).await;
    assert_eq!(status, StatusCode::OK);
    wait_for("invoices 1 and 3 done", || async {
        let (_, first) = app.get("/v1/invoices/2026/1").await;
        let (_, third) = app.get("/v1/invoices/2026/3").await;
        (first["queue_state"] == "done" && third["queue_state"] == "done").then_some(())
    })
    .await;

    let (_, first) = app.get("/v1/invoices/2026/1").await;
    assert_eq!(first["sdi_id"], earlier.sdi_id.as_str(), "recorded under the earlier transmission");
    let (_, second) = app.get("/v1/invoices/2026/2").await;
    assert_eq!(second["queue_state"], "pending", "a clash waits for a person");
    let records = sim.client.list("acme").await.unwrap();
    let names: Vec<&str> = records.iter().map(|r| r.transmission.file_name.as_str()).collect();
    assert_eq!(names, [name(0), name(1), name(2)], "no second transmission of invoice 1");
    assert_eq!(records[1].transmission.sdi_id, clash.sdi_id);
    let stats = app.stats().await;
    assert_eq!((stats["sender"]["adopted"].as_u64(), stats["sender"]["transmitted"].as_u64()), (Some(1), Some(1)));
    app.stop().await;
}

#[tokio::test]
async fn an_unreachable_database_is_a_clear_error_without_the_password() {
    // A port nobody listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let documents = tempfile::tempdir().unwrap();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_fenice"))
        .args(["app", "serve", "--tenant", "acme", "--vat", VAT, "--company", "Acme", "--listen", "127.0.0.1:0"])
        .arg("--documents")
        .arg(documents.path())
        .env("FENICE_APP_DB", format!("postgres://app:Sup3r-s3cret@127.0.0.1:{port}/acme_invoices"))
        .stdin(Stdio::null())
        .output();
    let output = tokio::time::timeout(DEADLINE, output).await.expect("fenice gives up").unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(output.stdout.is_empty(), "nothing listens: {}", String::from_utf8_lossy(&output.stdout));
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
    assert!(stderr.contains("acme_invoices"), "{stderr}");
    assert!(stderr.contains("cannot connect"), "{stderr}");
    assert!(!stderr.contains("Sup3r-s3cret"), "the password leaked: {stderr}");
}

#[tokio::test]
async fn bad_input_is_400_naming_the_field() {
    let (_pg, url) = postgres().await;
    let documents = tempfile::tempdir().unwrap();
    let app = start(config(&url, documents.path())).await;

    let mut cases = Vec::new();
    let mut body = invoice_body("2026", "ABC1234");
    body["customer"].as_object_mut().unwrap().remove("vat");
    cases.push((body, "customer.vat"));
    cases.push((invoice_body("2026", "ABC12"), "customer.recipient_code"));
    let mut body = invoice_body("2026", "ABC1234");
    body["taxable_cents"] = json!(100.5);
    cases.push((body, "taxable_cents"));
    let mut body = invoice_body("2026", "ABC1234");
    body["issue_date"] = json!("23/11/2026");
    cases.push((body, "issue_date"));
    cases.push((invoice_body("20/26", "ABC1234"), "series"));
    let mut body = invoice_body("2026", "ABC1234");
    body["description"] = json!("prezzo in €");
    cases.push((body, "description"));
    for (body, field) in cases {
        let (status, error) = app.post("/v1/invoices", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{field}: {error}");
        assert_eq!(error["error"], "invalid_request");
        assert_eq!(error["field"], field);
        assert!(error["message"].as_str().unwrap().starts_with(field), "{error}");
    }
    let response = app.http.post(format!("{}/v1/invoices", app.base)).body("{not json").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(response.json::<Value>().await.unwrap()["field"], "body");

    let (status, error) = app.get("/v1/invoices?queue_state=lost").await;
    assert_eq!((status, error["field"].as_str()), (StatusCode::BAD_REQUEST, Some("queue_state")));
    let (status, error) = app.get("/v1/invoices?after_number=3").await;
    assert_eq!((status, error["field"].as_str()), (StatusCode::BAD_REQUEST, Some("after_number")));
    let (status, error) = app.get("/v1/invoices/2026/1").await;
    assert_eq!((status, error["error"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
    let (status, error) =
        app.put("/v1/channel", json!({"endpoint": "sdi.example", "certificate_expires": "2029-01-01"})).await;
    assert_eq!((status, error["field"].as_str()), (StatusCode::BAD_REQUEST, Some("endpoint")));
    assert_eq!(app.stats().await["last_file_progressive"], 0, "nothing was numbered");
    app.stop().await;
}

/// A client that names the tenant it means (`fenice-tenant`) and reached
/// another tenant's app (a stale address whose port was reused) is refused
/// with 421, and nothing is issued; naming the right tenant issues as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invoice_meant_for_another_tenant_is_refused_as_misdirected() {
    let (_pg, url) = postgres().await;
    let documents = tempfile::tempdir().unwrap();
    let app = start(config(&url, documents.path())).await;
    let post = |tenant: &'static str| {
        (app.http.post(format!("{}/v1/invoices", app.base)))
            .header(fenice::app::http::TENANT_HEADER, tenant)
            .json(&invoice_body("2026", "ABC1234"))
            .send()
    };
    let refused = post("globex").await.unwrap();
    assert_eq!(refused.status(), StatusCode::MISDIRECTED_REQUEST);
    let refused: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(refused["error"], "misdirected", "{refused}");
    assert!(refused["message"].as_str().unwrap().contains("serves tenant acme, not globex"), "{refused}");
    let issued = post("acme").await.unwrap();
    assert_eq!(issued.status(), StatusCode::CREATED);
    let issued: serde_json::Value = issued.json().await.unwrap();
    assert_eq!(issued["number"], 1, "the refused request took no number: {issued}");
    app.stop().await;
}

#[tokio::test]
async fn numbering_survives_a_restart_and_another_tenant_is_refused() {
    let (_pg, url) = postgres().await;
    let documents = tempfile::tempdir().unwrap();
    let app = start(config(&url, documents.path())).await;
    let (status, missing) = app.get("/v1/channel").await;
    assert_eq!((status, missing["error"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
    app.issue(invoice_body("2026", "ABC1234")).await;
    app.stop().await;

    let restarted = start(AppConfig {
        sdi_endpoint: Some("http://127.0.0.1:9/".into()),
        certificate_expires: Some(jiff::civil::date(2026, 12, 10)),
        ..config(&url, documents.path())
    })
    .await;
    let second = restarted.issue(invoice_body("2026", "ABC1234")).await;
    assert_eq!((second["number"].as_i64(), second["file_name"].as_str()), (Some(2), Some("IT01234567890_00002.xml")));
    let (_, channel) = restarted.get("/v1/channel").await;
    assert_eq!(channel["endpoint"], "http://127.0.0.1:9/");
    assert_eq!(channel["certificate_expires"], "2026-12-10");
    assert_eq!(channel["certificate_warning"], true, "expires within 30 days");
    restarted.stop().await;

    let other = App::open(AppConfig::new("globex", VAT, "Globex", &url, documents.path())).await;
    let Err(e) = other else { panic!("opened another tenant's database") };
    let message = format!("{e}: {}", e.source().unwrap());
    assert!(message.contains("belongs to tenant \"acme\", not \"globex\""), "{message}");
}

#[tokio::test]
async fn the_binary_prints_its_address_serves_and_stops_on_sigterm() {
    let (_pg, url) = postgres().await;
    let documents = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_fenice"))
        .args(["app", "serve", "--tenant", "acme", "--vat", VAT, "--company", "Acme", "--listen", "127.0.0.1:0"])
        .args(["--db", &url, "--send-interval", "200ms", "--epoch", "4", "--fenced"])
        .arg("--documents")
        .arg(documents.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    tokio::time::timeout(DEADLINE, stdout.read_line(&mut line)).await.expect("the app starts").unwrap();
    let address = line.trim_end().strip_prefix("listening on ").unwrap_or_else(|| panic!("printed {line:?}"));
    let health: Value = reqwest::get(format!("http://{address}/healthz")).await.unwrap().json().await.unwrap();
    assert_eq!(
        health,
        json!({"tenant": "acme", "active": false, "epoch": 4, "schema_version": fenice::app::schema::SCHEMA_VERSION, "database": "ok"})
    );

    let pid = i32::try_from(child.id().unwrap()).unwrap();
    // SAFETY: kill only sends a signal to the child we started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = tokio::time::timeout(DEADLINE, child.wait()).await.expect("the app stops").unwrap();
    assert!(status.success(), "{status}");
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).await.unwrap();
    assert_eq!(rest, "", "exactly one line on stdout");
}

#[test]
fn render_and_parse_are_inverses() {
    use fenice::app::fattura::{Fattura, vat_cents};
    let fattura = Fattura {
        format: Format::Fpa12,
        progressive: 1_234_567,
        supplier_vat: VAT.into(),
        supplier_name: "Fenice & C. S.a.s.".into(),
        recipient_code: "UFXY12".into(),
        customer_vat: "80012345678".into(),
        customer_name: "Comune di Sant'Agata <Ufficio Tributi>".into(),
        series: "PA-2026".into(),
        number: 42,
        issue_date: jiff::civil::date(2026, 2, 28),
        description: "Servizio di conservazione \"a norma\", annualità 2026".into(),
        taxable_cents: 99_999,
        vat_rate_percent: 22,
        vat_cents: vat_cents(99_999, 22),
    };
    assert_eq!(fenice::app::parse(&fattura.render()).unwrap(), fattura);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoices_near_their_sdi_deadline_are_listed() {
    let (_pg, url) = postgres().await;
    let documents = tempfile::tempdir().unwrap();
    // No SdI endpoint: everything stays pending.
    let app = start(config(&url, documents.path())).await;
    let today = jiff::Zoned::now().with_time_zone(jiff::tz::TimeZone::get("Europe/Rome").unwrap()).date();
    let old = today.checked_sub(jiff::ToSpan::days(11)).unwrap();
    let mut late = invoice_body("2026", "ABC1234");
    late["issue_date"] = json!(old.to_string());
    let late = app.issue(late).await;
    let mut fresh = invoice_body("2026", "ABC1234");
    fresh["issue_date"] = json!(today.to_string());
    app.issue(fresh).await;

    // Its deadline, the invoice date plus 12 days, is tomorrow: inside 48 hours, not inside 0.
    let (status, listed) = app.get("/v1/deadlines?within_hours=48").await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    let invoices = listed["invoices"].as_array().unwrap();
    assert_eq!(invoices.len(), 1, "{listed}");
    assert_eq!(invoices[0]["file_name"], late["file_name"]);
    assert_eq!(invoices[0]["deadline"], old.checked_add(jiff::ToSpan::days(12)).unwrap().to_string());
    assert!(invoices[0]["rule"].as_str().unwrap().contains("12 days"));
    let (_, none) = app.get("/v1/deadlines?within_hours=0").await;
    assert_eq!(none["invoices"], json!([]), "{none}");
    let (status, bad) = app.get("/v1/deadlines?within_hours=soon").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    app.stop().await;
}

/// A drill's copy of the database at `url`: its channel reaches SdI's test
/// environment, the simulator `test`.
fn drill_copy(url: &str, documents: &std::path::Path, test: &Sim) -> AppConfig {
    AppConfig {
        sdi_endpoint: Some(test.endpoint.clone()),
        sdi_environment: SdiEnvironment::Test,
        ..config(url, documents)
    }
}

/// Waits until `n` invoices of `app` are done (a final receipt recorded).
async fn all_done(app: &RunningApp, n: u64, what: &str) {
    wait_for(what, || async { (app.stats().await["invoices"]["done"] == n).then_some(()) }).await;
}

/// A drill's copy holds production's SdI identifiers and transmits to SdI's
/// test environment, which numbers its own: the same identifier comes back
/// for another invoice, and both are recorded, each with its receipts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_sending_to_sdi_s_test_environment_may_be_handed_an_identifier_production_used() {
    let (_pg, url) = postgres().await;
    let documents = tempfile::tempdir().unwrap();
    let production = sim("50ms").await;
    let app =
        start(AppConfig { sdi_endpoint: Some(production.endpoint.clone()), ..config(&url, documents.path()) }).await;
    let first = app.issue(invoice_body("2026", "ABC1234")).await;
    all_done(&app, 1, "production's invoice done").await;
    app.stop().await;

    let test = sim("50ms").await;
    let copy = start(drill_copy(&url, documents.path(), &test)).await;
    let second = copy.issue(invoice_body("2026", "ABC1234")).await;
    all_done(&copy, 2, "the test invoice done").await;
    let (_, stored_first) = copy.get(&format!("/v1/invoices/2026/{}", first["number"])).await;
    let (_, stored_second) = copy.get(&format!("/v1/invoices/2026/{}", second["number"])).await;
    assert_eq!(stored_first["sdi_id"], stored_second["sdi_id"], "each SdI environment numbered from its own start");
    for number in [&first["number"], &second["number"]] {
        let (_, receipts) = copy.get(&format!("/v1/invoices/2026/{number}/receipts")).await;
        let kinds: Vec<&str> =
            receipts["receipts"].as_array().unwrap().iter().map(|r| r["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["RC"], "invoice {number}");
    }
    let names = |records: Vec<fenice::app::sdi::Record>| -> Vec<String> {
        records.into_iter().map(|r| r.transmission.file_name).collect()
    };
    assert_eq!(names(production.client.list("acme").await.unwrap()), [first["file_name"].as_str().unwrap()]);
    assert_eq!(names(test.client.list("acme").await.unwrap()), [second["file_name"].as_str().unwrap()]);
    copy.stop().await;
}

/// A database written by schema version 1 (SdI identifiers unique on their
/// own) is migrated when the app opens it: what it held stays, and a test
/// transmission may then reuse a production identifier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_database_is_migrated_and_keeps_its_invoices_and_receipts() {
    let (_pg, url) = postgres().await;
    let (db, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    db.batch_execute(include_str!("golden/app/schema_v1.sql")).await.unwrap();
    db.batch_execute(&format!(
        "INSERT INTO fenice_meta VALUES ('schema_version', '1'), ('tenant', 'acme'), ('vat', '{VAT}'), \
             ('company', 'Fenice Dimostrativa S.r.l.');
         INSERT INTO series VALUES ('2026', 1);
         INSERT INTO file_progressive VALUES (1, 1);
         INSERT INTO invoices (series, number, issue_date, format, customer_vat, customer_name, recipient_code, \
             description, taxable_cents, vat_cents, file_name, xml_sha256, queue_state, sdi_id, sent_at, sent_epoch) \
         VALUES ('2026', 1, '2026-01-02', 'FPR12', '01234567890', 'Cliente', 'ABC1234', 'Consulenza', 10000, 2200, \
             'IT{VAT}_00001.xml', 'aa', 'done', '1', '2026-01-02T10:00:00Z', 1);
         INSERT INTO receipts VALUES ('1', 'RC', '2026-01-02T10:05:00Z', 'consegnata');"
    ))
    .await
    .unwrap();

    let documents = tempfile::tempdir().unwrap();
    let test = sim("50ms").await;
    let copy = start(drill_copy(&url, documents.path(), &test)).await;
    let version = db.query_one("SELECT value FROM fenice_meta WHERE key = 'schema_version'", &[]).await.unwrap();
    assert_eq!(version.get::<_, String>(0), fenice::app::schema::SCHEMA_VERSION.to_string());
    let second = copy.issue(invoice_body("2026", "ABC1234")).await;
    assert_eq!(second["number"], 2);
    all_done(&copy, 2, "the test invoice done").await;
    let (_, stored) = copy.get("/v1/invoices/2026/2").await;
    assert_eq!(stored["sdi_id"], "1", "the test environment's first identifier, also production's");
    let (_, receipts) = copy.get("/v1/invoices/2026/1/receipts").await;
    assert_eq!(receipts["receipts"].as_array().unwrap().len(), 1, "{receipts}");
    assert_eq!(receipts["receipts"][0]["detail"], "consegnata", "production's receipt is kept as it was");
    copy.stop().await;
}
