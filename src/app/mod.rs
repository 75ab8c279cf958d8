//! The reference invoicing app that Fenice protects, and the SdI simulator it
//! transmits to. One app process serves one tenant over that tenant's own
//! PostgreSQL database and documents directory (DESIGN.md, "The invoicing domain").
//!
//! ```no_run
//! # async fn example() -> Result<(), fenice::app::Error> {
//! use fenice::app::{App, AppConfig};
//! let config = AppConfig::new("acme", "01234567890", "Acme S.r.l.", "postgres://app@127.0.0.1/acme", "/srv/acme/documents");
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
//! let app = App::open(config).await?; // connects, applies the schema, checks the tenant
//! app.serve(listener, async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```
//!
//! Modules: [`config`] (what a process serves), [`db`] (connecting, schema,
//! tenant check, channel row), [`numbering`] (issuing: numbers, progressives,
//! documents, one transaction), [`fattura`] (FatturaPA XML), [`documents`] (the
//! documents directory), [`invoices`] (request checks and reads), [`fencing`],
//! [`sender`] (the SdI queue), [`http`] (the API).

pub mod config;
pub mod db;
pub mod documents;
pub mod fattura;
pub mod fencing;
pub mod http;
pub mod invoices;
pub mod numbering;
pub mod reconcile;
pub mod schema;
pub mod sdi;
pub mod sender;

use std::future::Future;
use std::sync::Arc;

use tokio::sync::watch;

pub use config::{AppConfig, SdiEnvironment};
pub use fattura::{ParsedInvoice, parse};

/// Europe/Rome as a POSIX rule, for machines without a time zone database:
/// CET, and CEST from the last Sunday of March to the last Sunday of October.
const ROME_POSIX: &str = "CET-1CEST,M3.5.0,M10.5.0/3";

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why the app could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("tenant {tenant}: invalid setting")]
    Config {
        tenant: String,
        #[source]
        source: config::Error,
    },

    #[error("tenant {tenant}: opening its database")]
    Db {
        tenant: String,
        #[source]
        source: db::Error,
    },

    #[error("tenant {tenant}: opening its documents directory")]
    Documents {
        tenant: String,
        #[source]
        source: documents::Error,
    },

    #[error("tenant {tenant}: serving HTTP")]
    Serve {
        tenant: String,
        #[source]
        source: std::io::Error,
    },
}

/// The time zone of Italian invoice dates.
pub fn rome() -> jiff::tz::TimeZone {
    jiff::tz::TimeZone::get("Europe/Rome").unwrap_or_else(|_| {
        tracing::warn!("no time zone database entry for Europe/Rome; using the CET/CEST rule");
        jiff::tz::TimeZone::posix(ROME_POSIX).unwrap_or(jiff::tz::TimeZone::fixed(jiff::tz::offset(1)))
    })
}

/// An app opened on its database and documents, ready to serve.
pub struct App {
    tenant: String,
    state: http::AppState,
    sender: sender::Sender,
}

impl App {
    /// Checks the configuration, connects to the database, applies the schema,
    /// checks that the database is this tenant's, writes the channel row if the
    /// configuration names an endpoint, and opens the documents directory.
    pub async fn open(config: AppConfig) -> Result<App> {
        let tenant = config.tenant.clone();
        config.validate().map_err(|source| Error::Config { tenant: tenant.clone(), source })?;
        let rome = rome();
        let today = jiff::Timestamp::now().to_zoned(rome.clone()).date();
        let db = db::Db::open(&config, today).await.map_err(|source| Error::Db { tenant: tenant.clone(), source })?;
        if let Ok(Some(channel)) = db.channel().await {
            let days = http::days_between(today, channel.certificate_expires);
            if days <= http::CERTIFICATE_WARNING_DAYS {
                tracing::warn!(
                    tenant = %tenant, endpoint = %channel.endpoint, expires = %channel.certificate_expires, days,
                    "the SdI channel certificate expires within {} days (or has expired)", http::CERTIFICATE_WARNING_DAYS
                );
            }
        }
        let documents = documents::Documents::open(&config.documents)
            .map_err(|source| Error::Documents { tenant: tenant.clone(), source })?;
        let fencing = Arc::new(fencing::Fencing::new(config.epoch, !config.start_fenced));
        let stats = Arc::new(sender::SenderStats::default());
        let issuer = numbering::Issuer { vat: config.vat.clone(), company: config.company.clone() };
        let state = http::AppState::from(http::Inner {
            tenant: tenant.clone(),
            issuer,
            db: db.clone(),
            documents: documents.clone(),
            fencing: fencing.clone(),
            sender: stats.clone(),
            rome,
        });
        let sender = sender::Sender {
            tenant: tenant.clone(),
            db: db.clone(),
            documents,
            fencing,
            interval: config.send_interval,
            environment: config.sdi_environment,
            stats,
        };
        tracing::info!(
            tenant = %tenant, db = %db.target, documents = %config.documents.display(), epoch = config.epoch,
            active = !config.start_fenced, "app opened"
        );
        Ok(App { tenant, state, sender })
    }

    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// Serves the API on `listener` and runs the sender until `shutdown`
    /// completes; then stops the sender and lets requests in flight finish.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let (stop, stopped) = watch::channel(false);
        let sender = tokio::spawn(self.sender.run(stopped));
        let graceful = async move {
            shutdown.await;
            let _ = stop.send(true);
        };
        let result = axum::serve(listener, http::router(self.state)).with_graceful_shutdown(graceful).await;
        // NB: if serving failed, `stop` was dropped with the future, which stops the sender too.
        if let Err(e) = sender.await {
            tracing::error!(tenant = %self.tenant, error = &e as &dyn std::error::Error, "the sender task failed");
        }
        tracing::info!(tenant = %self.tenant, "app stopped");
        result.map_err(|source| Error::Serve { tenant: self.tenant, source })
    }
}

/// Opens the app for `config` and serves it on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: AppConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    App::open(config).await?.serve(listener, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rome_rule_matches_the_time_zone_database() {
        let posix = jiff::tz::TimeZone::posix(ROME_POSIX).unwrap();
        let Ok(tzdb) = jiff::tz::TimeZone::get("Europe/Rome") else { return };
        for instant in [
            "2026-03-29T00:59:59Z",
            "2026-03-29T01:00:00Z",
            "2026-10-25T00:59:59Z",
            "2026-10-25T01:00:00Z",
            "2026-07-01T12:00:00Z",
        ] {
            let t: jiff::Timestamp = instant.parse().unwrap();
            assert_eq!(posix.to_offset(t), tzdb.to_offset(t), "{instant}");
        }
    }
}
