//! `fenice app serve`: one tenant's invoicing app.
//!
//! Prints one line `listening on IP:PORT` on stdout once the database is open
//! and the port bound; logs go to stderr. Stops gracefully on SIGTERM or Ctrl-C.

use super::serving;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use crate::app::{App, AppConfig, SdiEnvironment};

#[derive(Args)]
pub struct ServeArgs {
    /// The tenant's name.
    #[arg(long, env = "FENICE_APP_TENANT")]
    tenant: String,
    /// The tenant's partita IVA (11 digits); it names the invoice files.
    #[arg(long, env = "FENICE_APP_VAT")]
    vat: String,
    /// The tenant's company name, as invoices show it.
    #[arg(long, env = "FENICE_APP_COMPANY")]
    company: String,
    /// The tenant's database: postgres://USER[:PASSWORD]@HOST:PORT/DATABASE.
    #[arg(long = "db", env = "FENICE_APP_DB", hide_env_values = true)]
    db: String,
    /// The directory of invoice documents (created if missing).
    #[arg(long, env = "FENICE_APP_DOCUMENTS")]
    documents: PathBuf,
    /// Where to serve the API, e.g. 127.0.0.1:8080 (port 0: any free port).
    #[arg(long, env = "FENICE_APP_LISTEN")]
    listen: String,
    /// The SdI endpoint to write into the channel table at start.
    #[arg(long, env = "FENICE_APP_SDI_ENDPOINT")]
    sdi_endpoint: Option<String>,
    /// Which SdI the channel reaches: `test` for a drill's copy, whose
    /// transmissions must not be taken for production's.
    #[arg(long, env = "FENICE_APP_SDI_ENVIRONMENT", value_enum, default_value_t = SdiEnvironment::Production)]
    sdi_environment: SdiEnvironment,
    /// When the channel certificate expires (YYYY-MM-DD).
    #[arg(long, env = "FENICE_APP_CERTIFICATE_EXPIRES")]
    certificate_expires: Option<jiff::civil::Date>,
    /// The fencing epoch to start with.
    #[arg(long, env = "FENICE_APP_EPOCH", default_value_t = 1)]
    epoch: u64,
    /// Start fenced: issue and send nothing until POST /v1/admin/activate.
    #[arg(long, env = "FENICE_APP_FENCED")]
    fenced: bool,
    /// How often the sender looks at the queue (e.g. 1s, 200ms).
    #[arg(long, env = "FENICE_APP_SEND_INTERVAL", default_value = "1s", value_parser = parse_interval)]
    send_interval: Duration,
}

// NB: by hand, so that the database URL (which may hold a password) never shows.
impl std::fmt::Debug for ServeArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeArgs")
            .field("tenant", &self.tenant)
            .field("listen", &self.listen)
            .field("config", &self.config())
            .finish_non_exhaustive()
    }
}

impl ServeArgs {
    fn config(&self) -> AppConfig {
        AppConfig {
            sdi_endpoint: self.sdi_endpoint.clone(),
            sdi_environment: self.sdi_environment,
            certificate_expires: self.certificate_expires,
            epoch: self.epoch,
            start_fenced: self.fenced,
            send_interval: self.send_interval,
            ..AppConfig::new(&self.tenant, &self.vat, &self.company, &self.db, &self.documents)
        }
    }
}

/// A duration such as `1s`, `200ms` or `1m 30s`.
pub(super) fn parse_interval(text: &str) -> Result<Duration, String> {
    let span: jiff::SignedDuration =
        text.parse().map_err(|_| format!("{text:?}: use a duration such as 1s or 200ms"))?;
    Duration::try_from(span).map_err(|_| format!("{text:?}: must not be negative"))
}

pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    // Installed before anything else, so a stop request during start-up is not lost.
    let shutdown = serving::shutdown_signal()?;
    let (listener, addr) = serving::bind(&args.listen).await?;
    let app = App::open(args.config()).await?;
    serving::announce(addr)?;
    app.serve(listener, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_read_like_people_write_them() {
        assert_eq!(parse_interval("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_interval("200ms").unwrap(), Duration::from_millis(200));
        assert_eq!(parse_interval("1m 30s").unwrap(), Duration::from_secs(90));
        assert!(parse_interval("-1s").is_err());
        assert!(parse_interval("soon").is_err());
    }
}
