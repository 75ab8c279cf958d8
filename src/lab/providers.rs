//! The lab's providers besides the two sites: two backup repositories at
//! providers other than the primary's (the S3 server and Azurite when they are
//! installed, a directory each otherwise), the witness at a third, and the SdI
//! simulator.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use zeroize::Zeroizing;

use super::progress::Progress;
use crate::repo::keyfile::RecoveryKey;
use crate::repo::repository::{Repository, Unlock};
use crate::store::ObjectStore;
use crate::store::fs::FsStore;
use crate::testkit::azurite::{DEV_ACCOUNT, DEV_ACCOUNT_KEY};
use crate::testkit::postgres::hand_to_server_user;
use crate::testkit::{AzuriteServer, S3Server, SdiSimServer};

/// The S3 repository's bucket and prefix.
const S3_BUCKET: &str = "fenice-lab-backups";
const S3_PREFIX: &str = "tenants";
/// The Azure Blob repository's container and prefix.
const AZURE_CONTAINER: &str = "fenice-lab";
const AZURE_PREFIX: &str = "tenants";
/// The witness's bucket when it is reached over the network.
pub const WITNESS_BUCKET: &str = "fenice-lab-witness";
/// How long every object of the S3 repository is locked (Object Lock, COMPLIANCE).
const RETENTION_DAYS: &str = "1";

/// One backup repository.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Repo {
    /// Which provider holds it.
    pub provider: String,
    pub location: String,
    /// Every object is locked at the store for a retention period.
    pub immutable: bool,
    /// How an operator reaches it (a BackupRepository's storage).
    #[serde(skip)]
    pub store: RepoStore,
}

/// Where a repository's objects are, as a BackupRepository names them.
#[derive(Clone, Debug)]
pub enum RepoStore {
    S3 { endpoint: String, bucket: String, prefix: String },
    Azure { endpoint: String, account: String, container: String, prefix: String },
    Directory { path: PathBuf },
}

/// The running providers.
pub struct Providers {
    pub repos: Vec<Repo>,
    /// The witness's store (the lease and the failovers' state).
    pub witness: Arc<dyn ObjectStore>,
    /// Where it is, to open it again from another runtime.
    pub witness_place: WitnessPlace,
    pub witness_provider: String,
    pub sdi: SdiSimServer,
    /// The environment every `fenice agent` process runs with: where the
    /// repositories are, how to reach them, and the agents' key file.
    pub agent_env: Vec<(String, String)>,
    recovery: RecoveryKey,
    /// The repositories' password (an operator opens them with it).
    password: Zeroizing<String>,
    s3: Option<S3Server>,
    _azurite: Option<AzuriteServer>,
    _witness_s3: Option<S3Server>,
}

impl Providers {
    /// Starts the stores and the simulator, and creates both repositories,
    /// their master key wrapped for a lab password and for the agents' key.
    /// The witness is a bucket of an S3 server of its own where one can be
    /// started (a directory otherwise), as an object store at a third provider
    /// is; `networked_witness` requires it (a site cut off from the network
    /// must lose it).
    pub async fn start(
        dir: &Path,
        program: &Path,
        networked_witness: bool,
        progress: &Progress,
    ) -> anyhow::Result<Self> {
        let stores = dir.join("providers");
        std::fs::create_dir_all(&stores).with_context(|| format!("creating {}", stores.display()))?;
        let mut env: Vec<(String, String)> = Vec::new();
        let mut repos = Vec::new();

        let s3 = match S3Server::start() {
            Ok(s3) => {
                env.extend([
                    ("AWS_ENDPOINT_URL".to_owned(), s3.endpoint()),
                    ("AWS_ACCESS_KEY_ID".to_owned(), "test".to_owned()),
                    ("AWS_SECRET_ACCESS_KEY".to_owned(), "test".to_owned()),
                    ("AWS_REGION".to_owned(), "us-east-1".to_owned()),
                    ("FENICE_S3_PATH_STYLE".to_owned(), "true".to_owned()),
                ]);
                repos.push(Repo {
                    provider: format!("s3 (S3 server at {})", s3.endpoint()),
                    location: format!("s3://{S3_BUCKET}/{S3_PREFIX}"),
                    immutable: true,
                    store: RepoStore::S3 {
                        endpoint: s3.endpoint(),
                        bucket: S3_BUCKET.into(),
                        prefix: S3_PREFIX.into(),
                    },
                });
                Some(s3)
            }
            Err(e) => {
                progress.note(&format!(
                    "no S3 server ({}): the first repository is a directory instead, without immutability",
                    crate::error_chain::error_chain(&e)
                ));
                repos.push(fs_repo(&stores, "offsite-a"));
                None
            }
        };
        let azurite = match AzuriteServer::start() {
            Ok(azurite) => {
                env.extend([
                    ("FENICE_AZURE_ENDPOINT".to_owned(), azurite.blob_endpoint()),
                    ("AZURE_STORAGE_KEY".to_owned(), DEV_ACCOUNT_KEY.expose().to_owned()),
                ]);
                progress.note("Azurite has no immutability policies: the Azure Blob repository is not locked");
                repos.push(Repo {
                    provider: format!("azure-blob (Azurite at {})", azurite.blob_endpoint()),
                    location: format!("az://{DEV_ACCOUNT}/{AZURE_CONTAINER}/{AZURE_PREFIX}"),
                    immutable: false,
                    store: RepoStore::Azure {
                        endpoint: azurite.blob_endpoint(),
                        account: DEV_ACCOUNT.into(),
                        container: AZURE_CONTAINER.into(),
                        prefix: AZURE_PREFIX.into(),
                    },
                });
                Some(azurite)
            }
            Err(e) => {
                progress.note(&format!(
                    "no Azurite ({}): the second repository is a directory instead",
                    crate::error_chain::error_chain(&e)
                ));
                repos.push(fs_repo(&stores, "offsite-b"));
                None
            }
        };

        // NB: a known password lets a person open the kept repositories by hand (`--keep`).
        let password = match std::env::var(PASSWORD_ENV) {
            Ok(password) if !password.is_empty() => password,
            _ => crate::repo::id::hex(&crate::repo::crypto::random::<16>()),
        };
        let recovery = RecoveryKey::generate();
        let key_file = dir.join("agent.key");
        write_secret(&key_file, recovery.to_text().as_str())?;
        for repo in &repos {
            let mut init = vec!["init"];
            if repo.immutable {
                init.extend(["--retention-days", RETENTION_DAYS]);
            }
            let recipient = recovery.recipient().to_string();
            let add = ["key", "add", "--recipient", recipient.as_str(), "--label", "lab-agents"];
            for args in [init.as_slice(), add.as_slice()] {
                run_repo(program, &env, &password, &repo.location, args)?;
            }
        }
        // NB: archive_command and restore_command run as PostgreSQL's user.
        hand_to_server_user(&key_file)?;
        for repo in repos.iter().filter(|r| r.location.starts_with('/')) {
            hand_to_server_user(Path::new(&repo.location))?;
        }
        let locations: Vec<&str> = repos.iter().map(|r| r.location.as_str()).collect();
        env.push(("FENICE_REPOSITORY".to_owned(), locations.join(",")));
        env.push(("FENICE_RECOVERY_KEY_FILE".to_owned(), key_file.display().to_string()));

        // NB: a server of its own, as at a third provider: the repository's is busy with
        // every tenant's WAL, and a renewal that waits behind it fences the primary.
        let witness_s3 = match (networked_witness, S3Server::start()) {
            (_, Ok(s3)) => Some(s3),
            (true, Err(e)) => {
                return Err(e).context(
                    "cutting the primary's network needs the witness across the network, on an S3 server of its own",
                );
            }
            (false, Err(e)) => {
                progress.note(&format!(
                    "no S3 server ({}): the witness is a directory instead",
                    crate::error_chain::error_chain(&e)
                ));
                None
            }
        };
        let (witness_place, witness_provider) = match &witness_s3 {
            Some(s3) => (
                WitnessPlace::S3 { endpoint: s3.endpoint() },
                format!("witness (a third provider; bucket {WITNESS_BUCKET} of an S3 server at {})", s3.endpoint()),
            ),
            None => {
                let dir = stores.join("witness");
                let provider = format!("witness (a third provider; a directory here: {})", dir.display());
                (WitnessPlace::Dir(dir), provider)
            }
        };
        let witness = witness_place.open().await?;
        if let WitnessPlace::S3 { endpoint } = &witness_place {
            S3Server::store_at(endpoint, WITNESS_BUCKET, "").await?.create_bucket(false).await?;
        }
        let sdi = SdiSimServer::start(program, Duration::from_millis(500)).context("starting the SdI simulator")?;
        Ok(Self {
            repos,
            witness,
            witness_place,
            witness_provider,
            sdi,
            agent_env: env,
            recovery,
            password: Zeroizing::new(password),
            s3,
            _azurite: azurite,
            _witness_s3: witness_s3,
        })
    }

    /// The repositories' password.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The repository failovers and drills restore from: the first one.
    pub fn restore_location(&self) -> &str {
        &self.repos[0].location
    }

    /// Opens [`restore_location`](Self::restore_location) with the agents' key.
    pub async fn open_restore_repo(&self) -> anyhow::Result<Repository> {
        let store: Arc<dyn ObjectStore> = match &self.s3 {
            Some(s3) => Arc::new(s3.store(S3_BUCKET, S3_PREFIX).await?),
            None => Arc::new(FsStore::open(Path::new(self.restore_location()))?),
        };
        let unlock = Unlock::Recovery(RecoveryKey::from_text(self.recovery.to_text().as_str())?);
        Ok(Repository::open(store, &unlock).await?)
    }
}

/// Where the witness's store is.
#[derive(Clone, Debug)]
pub enum WitnessPlace {
    Dir(PathBuf),
    S3 { endpoint: String },
}

impl WitnessPlace {
    /// A handle on the store, with connections of its own made by the runtime that uses it.
    pub async fn open(&self) -> anyhow::Result<Arc<dyn ObjectStore>> {
        Ok(match self {
            WitnessPlace::Dir(dir) => Arc::new(FsStore::open(dir)?),
            WitnessPlace::S3 { endpoint } => Arc::new(S3Server::store_at(endpoint, WITNESS_BUCKET, "").await?),
        })
    }
}

fn fs_repo(stores: &Path, name: &str) -> Repo {
    let path = stores.join(name);
    Repo {
        provider: format!("{name} (a directory standing in for an object store)"),
        location: path.display().to_string(),
        immutable: false,
        store: RepoStore::Directory { path },
    }
}

/// The repositories' password when set; random otherwise.
pub const PASSWORD_ENV: &str = "FENICE_LAB_PASSWORD";

/// Runs `fenice repo ARGS` on `location` with the lab password in its environment.
fn run_repo(
    program: &Path,
    env: &[(String, String)],
    password: &str,
    location: &str,
    args: &[&str],
) -> anyhow::Result<()> {
    let secrets = [("FENICE_PASSWORD", password), ("FENICE_NEW_PASSWORD", password)];
    let all: Vec<&str> = ["repo", "--repo", location].into_iter().chain(args.iter().copied()).collect();
    run_fenice(program, env, &secrets, &all)
}

/// Runs `fenice ARGS` with `env` and `more` in its environment (secrets go
/// there, never on the command line); its stderr is the error when it fails.
pub fn run_fenice(
    program: &Path,
    env: &[(String, String)],
    more: &[(&str, &str)],
    args: &[&str],
) -> anyhow::Result<()> {
    let out = Command::new(program)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .envs(more.iter().copied())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", program.display()))?;
    if !out.status.success() {
        bail!("fenice {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Writes a secret readable by its owner only.
fn write_secret(path: &PathBuf, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(text.as_bytes()).with_context(|| format!("writing {}", path.display()))
}
