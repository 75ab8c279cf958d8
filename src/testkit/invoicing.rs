//! The invoicing stack's own processes: the SdI simulator and the reference
//! app, each run as `fenice app …` on a free port, like the other servers here.
//! The one-machine lab runs every tenant's app this way, so that killing a site
//! kills real processes.

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{HttpServer, Result};
use crate::app::AppConfig;

/// A running SdI simulator, stopped on drop; its data is in its temporary directory.
#[derive(Debug)]
pub struct SdiSimServer {
    inner: HttpServer,
}

impl Deref for SdiSimServer {
    type Target = HttpServer;

    fn deref(&self) -> &HttpServer {
        &self.inner
    }
}

impl SdiSimServer {
    /// Starts `program app sdi-sim` (`program` is the `fenice` binary).
    pub fn start(program: &Path, receipt_delay: Duration) -> Result<Self> {
        let program = program.to_owned();
        let delay = format!("{}ms", receipt_delay.as_millis());
        let inner = HttpServer::start(
            "sdi-sim",
            "fenice-sdi-sim-",
            None,
            &super::Placement::here(),
            "/healthz",
            |r| r.status == 200,
            |addr, dir| {
                let mut cmd = Command::new(&program);
                cmd.args(["app", "sdi-sim", "--listen", &addr.to_string(), "--receipt-delay", &delay]);
                cmd.arg("--data").arg(dir.join("data"));
                cmd
            },
        )?;
        Ok(Self { inner })
    }

    /// The simulator's URL, `http://127.0.0.1:PORT`, or on the listen host.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.inner.addr())
    }
}

/// How to run one tenant's app: the `fenice` binary, and the app's configuration.
#[derive(Clone, Debug)]
pub struct AppOptions {
    pub program: PathBuf,
    pub config: AppConfig,
    /// Where the app's directory goes ($TMPDIR by default).
    pub run_dir: Option<PathBuf>,
    /// Where it listens and runs.
    pub placement: super::Placement,
}

/// A running reference app for one tenant, stopped on drop.
#[derive(Debug)]
pub struct AppServer {
    inner: HttpServer,
}

impl Deref for AppServer {
    type Target = HttpServer;

    fn deref(&self) -> &HttpServer {
        &self.inner
    }
}

impl AppServer {
    /// Starts `fenice app serve` and waits until its health check names the tenant.
    pub fn start(options: &AppOptions) -> Result<Self> {
        // NB: its own tenant's name: when another server took the port picked for
        // this one, this one exits and another tenant's app may answer there.
        let names_it = format!("\"tenant\":{}", serde_json::Value::from(options.config.tenant.as_str()));
        let inner = HttpServer::start(
            "app",
            "fenice-app-",
            options.run_dir.as_deref(),
            &options.placement,
            "/healthz",
            |r| r.text().contains(&names_it),
            |addr, _dir| {
                let config = &options.config;
                let mut cmd = Command::new(&options.program);
                cmd.args(["app", "serve", "--listen", &addr.to_string()]);
                cmd.args(["--tenant", &config.tenant, "--vat", &config.vat, "--company", &config.company]);
                cmd.arg("--documents").arg(&config.documents);
                cmd.args(["--epoch", &config.epoch.to_string()]);
                cmd.args(["--send-interval", &format!("{}ms", config.send_interval.as_millis())]);
                // NB: the URL goes in the environment, not on a command line others can read.
                cmd.env("FENICE_APP_DB", &config.db_url);
                if let Some(endpoint) = &config.sdi_endpoint {
                    cmd.args(["--sdi-endpoint", endpoint]);
                }
                cmd.args(["--sdi-environment", config.sdi_environment.as_str()]);
                if let Some(expires) = config.certificate_expires {
                    cmd.args(["--certificate-expires", &expires.to_string()]);
                }
                if config.start_fenced {
                    cmd.arg("--fenced");
                }
                cmd
            },
        )?;
        Ok(Self { inner })
    }

    /// The app's URL, `http://HOST:PORT` (127.0.0.1 unless placed elsewhere).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.inner.addr())
    }
}
