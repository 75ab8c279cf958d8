//! The test invoice a drill's copy issues: it must get the number after the
//! last one its backup recorded, and reach the test endpoint. Shared by the
//! operator (Local sites) and `fenice agent restore --drill-endpoint` (the
//! drill Job at a Kubernetes site).

use std::time::{Duration, Instant};

/// How long the copy's app gets to transmit the test invoice.
pub const TRANSMIT_WITHIN: Duration = Duration::from_secs(30);

/// Issues one invoice on the copy's app at `url`, which must get `number` in
/// `series` (the restored numbering goes on where the backup left it), and
/// waits until the app has transmitted it to the test endpoint.
pub async fn send(url: &str, series: &str, number: i64, endpoint: &str) -> Result<String, String> {
    use crate::app::invoices::{Invoice, QueueState};
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().map_err(|e| e.to_string())?;
    let body = serde_json::json!({
        "series": series,
        "customer": {"vat": "01234567890", "name": "Fenice drill", "recipient_code": "0000000"},
        "description": "Test invoice of a Fenice drill: never sent to production",
        "taxable_cents": 100,
    });
    let issued = http.post(format!("{url}/v1/invoices")).json(&body).send().await;
    let issued = issued.map_err(|e| format!("issuing the test invoice on the copy: {e}"))?;
    if issued.status() != reqwest::StatusCode::CREATED {
        let status = issued.status();
        let text = issued.text().await.unwrap_or_default();
        return Err(format!("the copy refused the test invoice: {status} {text}"));
    }
    let invoice: Invoice = issued.json().await.map_err(|e| format!("the copy's answer to the test invoice: {e}"))?;
    if invoice.number != number {
        return Err(format!(
            "the test invoice got number {} in series {series}, not {number}: the restored numbering does not go on \
             from the backup",
            invoice.number
        ));
    }
    let deadline = Instant::now() + TRANSMIT_WITHIN;
    loop {
        let got = http.get(format!("{url}/v1/invoices/{series}/{number}")).send().await;
        let sent = match got {
            Ok(r) if r.status().is_success() => r.json::<Invoice>().await.ok(),
            _ => None,
        };
        if let Some(sent) = sent.filter(|i| i.queue_state != QueueState::Pending) {
            let id = sent.sdi_id.unwrap_or_else(|| "none yet".into());
            return Ok(format!("{series}/{number} sent to {endpoint} (SdI id {id})"));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the test invoice {series}/{number} was not transmitted to the test endpoint {endpoint} within {} s",
                TRANSMIT_WITHIN.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Serves the app `config` describes (a restored copy) on a loopback port with
/// its SdI channel pointed at `endpoint`, sends the test invoice that follows
/// `last_numbers` (what the backup recorded), and stops the app.
pub async fn serve_and_send(
    mut config: crate::app::AppConfig,
    last_numbers: &std::collections::BTreeMap<String, i64>,
    endpoint: &str,
) -> Result<String, String> {
    config.sdi_endpoint = Some(endpoint.to_owned());
    config.sdi_environment = crate::app::SdiEnvironment::Test;
    config.send_interval = Duration::from_millis(250);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| format!("binding a port: {e}"))?;
    let address = listener.local_addr().map_err(|e| format!("binding a port: {e}"))?;
    let app = crate::app::App::open(config)
        .await
        .map_err(|e| format!("the app did not open on the restored copy: {}", crate::error_chain::error_chain(&e)))?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(app.serve(listener, async move {
        let _ = stopped.await;
    }));
    let (series, number) = super::next_invoice(last_numbers);
    let sent = send(&format!("http://{address}"), &series, number, endpoint).await;
    let _ = stop.send(());
    match serving.await {
        Ok(Ok(())) => sent,
        Ok(Err(e)) => Err(format!("the app on the restored copy failed: {}", crate::error_chain::error_chain(&e))),
        Err(e) => Err(format!("the app on the restored copy failed: {e}")),
    }
}
