//! A tenant restored from a backup that is older than its last transmissions:
//! `fenice agent reconcile-sdi` imports what SdI already holds, so the
//! restored app continues the numbering and SdI never sees a number twice.

use std::collections::BTreeMap;
use std::process::{Command, Output, Stdio};

use fenice::app::AppConfig;
use serde_json::Value;

#[path = "common/app.rs"]
#[allow(dead_code)]
mod app_kit;
use app_kit::*;

const PASSWORD: &str = "reconcile-test-pw";

fn fenice(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fenice"))
        .env("FENICE_PASSWORD", PASSWORD)
        .env_remove("FENICE_REPOSITORY")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running fenice")
}

fn ok(args: &[&str]) -> String {
    let out = fenice(args);
    assert!(out.status.success(), "fenice {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Waits until the app has no invoice left to transmit.
async fn all_sent(app: &RunningApp) {
    wait_for("every invoice transmitted", || async {
        let stats = app.stats().await;
        (stats["invoices"]["pending"].as_i64() == Some(0)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_restore_and_reconcile_numbering_continues_without_a_duplicate_at_sdi() {
    let (pg, url) = postgres().await;
    let sim = sim("0s").await;
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let repo = repo.to_str().unwrap();
    ok(&["repo", "--repo", repo, "init"]);
    let documents = dir.path().join("documents");
    std::fs::create_dir_all(&documents).unwrap();

    // Five invoices sent, a backup, then three more sent after it.
    let app = start(AppConfig { sdi_endpoint: Some(sim.endpoint.clone()), ..config(&url, &documents) }).await;
    for _ in 0..5 {
        app.issue(invoice_body("2026", "ABC1234")).await;
    }
    all_sent(&app).await;
    ok(&["agent", "backup", "--tenant", "acme", "--db", &url, "--repo", repo]);
    for _ in 0..3 {
        app.issue(invoice_body("2026", "ABC1234")).await;
    }
    all_sent(&app).await;
    app.stop().await;

    // The primary is lost: restore the backup elsewhere, then reconcile.
    let restored_url = pg.url("restored");
    let restored_docs = dir.path().join("restored-documents");
    let restored_docs_arg = restored_docs.to_str().unwrap();
    ok(&[
        "agent",
        "restore",
        "--tenant",
        "acme",
        "--db",
        &restored_url,
        "--documents",
        restored_docs_arg,
        "--repo",
        repo,
    ]);
    let reconcile = || -> Value {
        let args =
            ["agent", "reconcile-sdi", "--tenant", "acme", "--db", &restored_url, "--documents", restored_docs_arg];
        let out = ok(&[&args[..], &["--sdi-endpoint", &sim.endpoint, "--json"]].concat());
        serde_json::from_str(&out).unwrap()
    };
    let report = reconcile();
    let reconciled = &report["reconciled"];
    assert_eq!(reconciled["transmissions"], 8, "{report}");
    assert_eq!(reconciled["imported"].as_array().unwrap().len(), 3, "{report}");
    assert_eq!(reconciled["gaps"], serde_json::json!({}), "{report}");
    // Reconciling again changes nothing.
    let again = reconcile();
    assert_eq!(again["reconciled"]["imported"], serde_json::json!([]), "{again}");

    // The restored app, under a higher epoch, continues at 9.
    let restored = start(AppConfig {
        sdi_endpoint: Some(sim.endpoint.clone()),
        epoch: 2,
        ..config(&restored_url, &restored_docs)
    })
    .await;
    for expected in [9, 10] {
        let invoice = restored.issue(invoice_body("2026", "ABC1234")).await;
        assert_eq!(invoice["number"], expected, "{invoice}");
    }
    all_sent(&restored).await;
    restored.stop().await;

    // SdI holds each number exactly once.
    let mut numbers: BTreeMap<i64, usize> = BTreeMap::new();
    for record in sim.client.list("acme").await.unwrap() {
        let xml = sim.client.file("acme", &record.transmission.sdi_id).await.unwrap();
        *numbers.entry(fenice::app::parse(&xml).unwrap().number).or_default() += 1;
    }
    assert_eq!(numbers, (1..=10).map(|n| (n, 1)).collect::<BTreeMap<_, _>>());
}
