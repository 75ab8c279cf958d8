//! Azure Blob storage: Azurite's blob service (from npm `azurite`), run with
//! `node` directly.
//!
//! NB: not through `npx azurite-blob`: npx runs node as its own child and, when
//! killed, leaves that child behind. Killing the process group would catch it too,
//! but starting node ourselves keeps one process to watch.

use std::ops::Deref;
use std::path::PathBuf;
use std::process::Command;
use std::sync::LazyLock;

use super::{Error, HttpServer, Result, process};
pub use crate::store::azure::AccountKey;

const SERVER: &str = "azurite";
/// The blob service's entry point inside the npm package.
const BLOB_MAIN: &str = "azurite/dist/src/blob/main.js";

/// The storage account every Azure storage emulator serves.
pub const DEV_ACCOUNT: &str = "devstoreaccount1";

/// The key of [`DEV_ACCOUNT`]. It is public, published by Microsoft for the
/// emulators, but it is key material all the same, so it never prints. The
/// store's own type, so that it signs as any other key does; a `static`, not a
/// `const`, because that type decodes (and zeroizes) at run time.
pub static DEV_ACCOUNT_KEY: LazyLock<AccountKey> = LazyLock::new(|| {
    AccountKey::from_base64("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==")
        .unwrap_or_else(|_| unreachable!("the published key is base64"))
});

/// A running Azurite blob service, stopped and deleted on drop. Its address,
/// port, process id and log come from [`HttpServer`].
#[derive(Debug)]
pub struct AzuriteServer {
    inner: HttpServer,
}

impl Deref for AzuriteServer {
    type Target = HttpServer;

    fn deref(&self) -> &HttpServer {
        &self.inner
    }
}

impl AzuriteServer {
    /// Starts Azurite's blob service on a free port, storing into its own
    /// temporary directory, and waits until it answers like Azure does.
    pub fn start() -> Result<Self> {
        let node = process::find_on_path("node").ok_or(Error::NotInstalled {
            server: SERVER,
            program: "node",
            looked: "PATH".to_owned(),
        })?;
        let main = find_blob_main()?;
        let inner = HttpServer::start(
            SERVER,
            "fenice-azurite-",
            None,
            &super::Placement::here(),
            &format!("/{DEV_ACCOUNT}?comp=list"),
            // Unsigned, so refused; but with Azure's request id.
            |r| r.header("x-ms-request-id").is_some(),
            |addr, dir| {
                let mut cmd = Command::new(&node);
                cmd.arg(&main)
                    .arg("--blobHost")
                    .arg(addr.ip().to_string())
                    .arg("--blobPort")
                    .arg(addr.port().to_string())
                    .arg("--location")
                    .arg(dir.join("data"))
                    .args(["--skipApiVersionCheck", "--disableTelemetry", "--loose"])
                    // Would replace the well-known account and its key.
                    .env_remove("AZURITE_ACCOUNTS");
                cmd
            },
        )?;
        Ok(Self { inner })
    }

    /// The blob endpoint of [`DEV_ACCOUNT`], `http://127.0.0.1:PORT/devstoreaccount1`
    /// (path-style, as for every emulator).
    pub fn blob_endpoint(&self) -> String {
        format!("http://{}/{DEV_ACCOUNT}", self.inner.addr())
    }

    /// A connection string for [`DEV_ACCOUNT`] on this server.
    pub fn connection_string(&self) -> String {
        format!(
            "DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={};BlobEndpoint={};",
            DEV_ACCOUNT_KEY.expose(),
            self.blob_endpoint()
        )
    }
}

/// Azurite's blob entry point: where `azurite-blob` on PATH links to, or else
/// under `npm root -g`.
fn find_blob_main() -> Result<PathBuf> {
    let linked = process::find_on_path("azurite-blob")
        .and_then(|p| std::fs::canonicalize(p).ok())
        .filter(|p| p.ends_with("dist/src/blob/main.js"));
    if let Some(main) = linked {
        return Ok(main);
    }
    // NB: npm may warn on stderr about config it does not know; stdout is the path.
    let npm_root = Command::new("npm")
        .args(["root", "-g"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    npm_root.map(|root| root.join(BLOB_MAIN)).filter(|main| main.is_file()).ok_or(Error::NotInstalled {
        server: SERVER,
        program: "azurite",
        looked: format!("azurite-blob on PATH and $(npm root -g)/{BLOB_MAIN}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_account_key_never_prints() {
        assert_eq!(format!("{:?}", *DEV_ACCOUNT_KEY), "AccountKey([redacted])");
        assert_eq!(format!("{:?}", Some(&*DEV_ACCOUNT_KEY)), "Some(AccountKey([redacted]))");
    }
}
