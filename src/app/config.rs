//! What one app process serves: which tenant, which database and documents
//! directory, which SdI channel, and under which fencing epoch.

use std::path::PathBuf;
use std::time::Duration;

use super::db::DbTarget;

/// How often the sender looks at the queue unless told otherwise.
pub const DEFAULT_SEND_INTERVAL: Duration = Duration::from_secs(1);

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A setting that cannot work, named after its command-line flag.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--tenant {tenant:?}: use 1 to 63 lowercase letters, digits and '-', starting with a letter or digit")]
    Tenant { tenant: String },

    #[error("--vat {vat:?}: an Italian partita IVA is 11 digits")]
    Vat { vat: String },

    #[error("--company: {why}")]
    Company { why: String },

    #[error("--send-interval must be longer than zero")]
    SendInterval,

    #[error("--epoch must be at least 1")]
    Epoch,

    #[error("--sdi-endpoint {endpoint:?}: use an http:// or https:// URL")]
    SdiEndpoint { endpoint: String },
}

/// Which SdI the channel reaches. SdI numbers its identifiers per
/// environment, so one identifier can name a production transmission and a
/// test one: a drill's copy holds production's and sends to the test endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SdiEnvironment {
    #[default]
    Production,
    Test,
}

impl SdiEnvironment {
    /// As the schema stores it (`invoices.sdi_environment`, `receipts.sdi_environment`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Production => "production",
            Self::Test => "test",
        }
    }
}

/// The configuration of one app process (one tenant).
///
/// NB: `db_url` may hold a password, so `Debug` shows only where it points.
#[derive(Clone)]
pub struct AppConfig {
    /// The tenant's name, as SdI and the operator know it (`acme`).
    pub tenant: String,
    /// The tenant's partita IVA: 11 digits. It names the files (`IT<vat>_…`).
    pub vat: String,
    /// The tenant's company name (Denominazione of the CedentePrestatore).
    pub company: String,
    /// The tenant's PostgreSQL database, as a `postgres://` URL or a key=value string.
    pub db_url: String,
    /// Where the invoice documents live, one file per invoice.
    pub documents: PathBuf,
    /// If set, written to the channel table at start; the sender always reads the table.
    pub sdi_endpoint: Option<String>,
    /// Which SdI the channel reaches; what it transmits and receives is
    /// recorded under it.
    pub sdi_environment: SdiEnvironment,
    /// If set, written to the channel table at start with the endpoint.
    pub certificate_expires: Option<jiff::civil::Date>,
    /// The fencing epoch this process starts with; SdI refuses senders with an older one.
    pub epoch: u64,
    /// Start fenced: no invoice is issued and nothing is sent until `POST /v1/admin/activate`.
    pub start_fenced: bool,
    /// How often the sender looks at the queue.
    pub send_interval: Duration,
}

impl AppConfig {
    /// A configuration with the defaults: epoch 1, active, no channel given,
    /// sending every [`DEFAULT_SEND_INTERVAL`].
    pub fn new(
        tenant: impl Into<String>,
        vat: impl Into<String>,
        company: impl Into<String>,
        db_url: impl Into<String>,
        documents: impl Into<PathBuf>,
    ) -> Self {
        Self {
            tenant: tenant.into(),
            vat: vat.into(),
            company: company.into(),
            db_url: db_url.into(),
            documents: documents.into(),
            sdi_endpoint: None,
            sdi_environment: SdiEnvironment::Production,
            certificate_expires: None,
            epoch: 1,
            start_fenced: false,
            send_interval: DEFAULT_SEND_INTERVAL,
        }
    }

    /// Checks every setting that can be checked without I/O.
    pub fn validate(&self) -> Result<()> {
        if !is_tenant_name(&self.tenant) {
            return Err(Error::Tenant { tenant: self.tenant.clone() });
        }
        if !is_partita_iva(&self.vat) {
            return Err(Error::Vat { vat: self.vat.clone() });
        }
        if let Err(why) = super::fattura::check_latin_text(&self.company, super::fattura::NAME_MAX) {
            return Err(Error::Company { why });
        }
        if self.send_interval.is_zero() {
            return Err(Error::SendInterval);
        }
        if self.epoch == 0 {
            return Err(Error::Epoch);
        }
        if let Some(endpoint) = &self.sdi_endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return Err(Error::SdiEndpoint { endpoint: endpoint.clone() });
        }
        Ok(())
    }
}

impl std::fmt::Debug for AppConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let db = match DbTarget::parse(&self.db_url) {
            Ok(target) => target.to_string(),
            Err(_) => "[unparsable, redacted]".to_string(),
        };
        f.debug_struct("AppConfig")
            .field("tenant", &self.tenant)
            .field("vat", &self.vat)
            .field("company", &self.company)
            .field("db", &db)
            .field("documents", &self.documents)
            .field("sdi_endpoint", &self.sdi_endpoint)
            .field("sdi_environment", &self.sdi_environment)
            .field("certificate_expires", &self.certificate_expires)
            .field("epoch", &self.epoch)
            .field("start_fenced", &self.start_fenced)
            .field("send_interval", &self.send_interval)
            .finish()
    }
}

/// Whether `vat` looks like a partita IVA: exactly 11 ASCII digits.
pub fn is_partita_iva(vat: &str) -> bool {
    vat.len() == 11 && vat.bytes().all(|b| b.is_ascii_digit())
}

/// Tenant names are used in SdI URLs and Kubernetes names: DNS-label-like.
fn is_tenant_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> AppConfig {
        AppConfig::new("acme", "01234567890", "Acme S.r.l.", "postgres://app:s3cr3t@db.example:5433/acme", "/tmp/x")
    }

    #[test]
    fn debug_never_shows_the_database_password() {
        let shown = format!("{:?}", config());
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("db.example:5433"), "{shown}");
        let mut kv = config();
        kv.db_url = "host=db.example password=s3cr3t dbname=acme".into();
        assert!(!format!("{kv:?}").contains("s3cr3t"));
        kv.db_url = "postgres://app:s3cr3t@[bad".into();
        assert!(!format!("{kv:?}").contains("s3cr3t"));
    }

    #[test]
    fn settings_are_checked_by_flag() {
        assert!(config().validate().is_ok());
        for (change, flag) in [
            (Box::new(|c: &mut AppConfig| c.vat = "1234567890".into()) as Box<dyn Fn(&mut AppConfig)>, "--vat"),
            (Box::new(|c: &mut AppConfig| c.vat = "0123456789X".into()), "--vat"),
            (Box::new(|c: &mut AppConfig| c.tenant = "Acme".into()), "--tenant"),
            (Box::new(|c: &mut AppConfig| c.tenant = String::new()), "--tenant"),
            (Box::new(|c: &mut AppConfig| c.company = " ".into()), "--company"),
            (Box::new(|c: &mut AppConfig| c.send_interval = Duration::ZERO), "--send-interval"),
            (Box::new(|c: &mut AppConfig| c.epoch = 0), "--epoch"),
            (Box::new(|c: &mut AppConfig| c.sdi_endpoint = Some("sdi.example:443".into())), "--sdi-endpoint"),
        ] {
            let mut c = config();
            change(&mut c);
            let e = c.validate().expect_err(flag);
            assert!(e.to_string().starts_with(flag), "{e}");
        }
    }
}
