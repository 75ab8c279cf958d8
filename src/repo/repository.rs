//! A repository on an object store: create, unlock, store and load blobs,
//! snapshots and key files.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::crypto::{Keys, MasterKey, Unauthentic, random};
use super::id::{Id, hex};
use super::index::{INDEX_AAD, Index, IndexFile, PackEntry};
use super::intact::{IntactReads, Overwritten};
use super::keyfile::{KdfParams, KeyError, KeyFile, Passphrase, RecoveryKey};
use super::pack::{
    BlobEntry, BlobType, PackBuilder, PackError, decompress, header_length, open_blob, parse_header, seal_blob,
};
use super::tree::{SNAPSHOT_AAD, Snapshot};
use crate::store::{self, ObjectStore, PutCondition};

/// The format version this build writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;
const CONFIG_KEY: &str = "config";

/// Content-defined chunking bounds, fixed per repository so that every writer
/// cuts the same data at the same places.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ChunkerParams {
    pub min_size: u32,
    pub avg_size: u32,
    pub max_size: u32,
}

impl ChunkerParams {
    /// `Ok` if the chunker can run with these bounds. The config is not
    /// sealed: bounds outside FastCDC's would stop every backup, and huge ones
    /// would hold that much of a file in memory per chunk.
    pub fn check(&self) -> Result<(), String> {
        use fastcdc::v2020::{AVERAGE_MAX, AVERAGE_MIN, MAXIMUM_MAX, MAXIMUM_MIN, MINIMUM_MAX, MINIMUM_MIN};
        let (min, avg, max) = (self.min_size as usize, self.avg_size as usize, self.max_size as usize);
        let fits = (MINIMUM_MIN..=MINIMUM_MAX).contains(&min)
            && (AVERAGE_MIN..=AVERAGE_MAX).contains(&avg)
            && (MAXIMUM_MIN..=MAXIMUM_MAX).contains(&max)
            && min <= avg
            && avg <= max;
        if fits {
            Ok(())
        } else {
            Err(format!(
                "chunk sizes {min}/{avg}/{max} (min/avg/max) are outside what FastCDC 2020 cuts with \
                 ({MINIMUM_MIN}..={MINIMUM_MAX}, {AVERAGE_MIN}..={AVERAGE_MAX}, {MAXIMUM_MIN}..={MAXIMUM_MAX}, in order)"
            ))
        }
    }
}

impl Default for ChunkerParams {
    fn default() -> Self {
        Self { min_size: 512 * 1024, avg_size: 1024 * 1024, max_size: 8 * 1024 * 1024 }
    }
}

/// The `config` object, in the clear: nothing in it is secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Config {
    pub version: u32,
    /// Random, hex; tells repositories apart.
    pub id: String,
    pub chunker: ChunkerParams,
    pub created: String,
    /// Days each object is locked at the store (S3 Object Lock, Azure
    /// immutability); every writer must apply it. Absent: not immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_days: Option<u32>,
    /// Which master key is this repository's: [`key_check`] of it, hex. Two
    /// `init`s racing on one empty store both write a key file before one of
    /// them wins the config; the loser's key file opens with the same
    /// passphrase but holds another master key, and this tells it apart.
    /// Absent in repositories made before it: every key file is trusted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_check: Option<String>,
}

/// The check value of `master` for the repository `id`: a keyed hash, so it
/// says nothing about the key.
fn key_check(master: &MasterKey, id: &str) -> String {
    master.derive().blob_id(format!("fenice.io key check v1 {id}").as_bytes()).to_string()
}

/// What went wrong with a repository.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no repository at {location}: create one with `fenice repo init`")]
    NotARepository { location: String },
    #[error("a repository already exists at {location}")]
    AlreadyInitialized { location: String },
    #[error(
        "repository at {location} has format version {found}; this fenice reads up to version {FORMAT_VERSION}: use a newer fenice"
    )]
    NewerFormat { location: String, found: u32 },
    #[error("the password does not open any key of the repository at {location}")]
    WrongPassword { location: String },
    #[error("the recovery key does not open any key of the repository at {location}")]
    WrongRecoveryKey { location: String },
    #[error("{what} at {location} is damaged: {reason}")]
    Corrupt { location: String, what: String, reason: String },
    #[error("blob {id} is not in the index of {location}: the repository is incomplete; run `fenice repo check`")]
    MissingBlob { location: String, id: Id },
    #[error("pack {pack} at {location}: {source}")]
    Pack {
        location: String,
        pack: Id,
        #[source]
        source: PackError,
    },
    #[error("repository at {location} has no key {id}: `fenice repo key list` shows the keys")]
    NoSuchKey { location: String, id: Id },
    #[error(
        "key {id} is the last key of the repository at {location}: add another holder first, or the data becomes unreadable"
    )]
    LastKey { location: String, id: Id },
    #[error("repository at {location} has no snapshot {spec}: `fenice repo snapshots` lists them")]
    NoSuchSnapshot { location: String, spec: String },
    #[error("{spec} matches several snapshots at {location}: give more digits")]
    AmbiguousSnapshot { location: String, spec: String },
    #[error(
        "repository at {location} is locked by {holder} since {since}{}: wait for it to finish, or if that process is gone, the lock goes stale after 2 hours",
        if *exclusive { " (prune)" } else { " (a backup)" }
    )]
    Locked { location: String, holder: String, since: String, exclusive: bool },
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Store(#[from] store::Error),
}

impl Error {
    /// The store did not answer, or answered with a passing failure: worth trying again later.
    pub fn may_pass(&self) -> bool {
        matches!(self, Error::Store(e) if e.may_pass())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How to unlock a repository.
#[derive(Debug)]
pub enum Unlock {
    Passphrase(Passphrase),
    Recovery(RecoveryKey),
}

/// Blobs waiting to be packed and packs written in this session.
#[derive(Default)]
struct Writer {
    /// Open packs: data blobs and tree blobs go to separate packs, so that
    /// walking trees reads a few small packs rather than all of them.
    data_pack: PackBuilder,
    tree_pack: PackBuilder,
    /// Blobs in the open pack or in a pack being uploaded.
    pending: HashSet<Id>,
    /// Packs uploaded but not yet listed in an index object.
    unindexed: Vec<PackEntry>,
    /// The memory of an uploaded pack, for the next one.
    // NB: a pack's 16 MiB are mapped anew for each pack otherwise (main.rs
    // has large buffers returned to the system), and faulting them in was
    // about a tenth of a cold backup's time.
    spare: Option<Vec<u8>>,
}

/// An open repository.
pub struct Repository {
    master: MasterKey,
    keys: Keys,
    config: Config,
    index: RwLock<Index>,
    /// The index objects loaded into `index`.
    index_loaded: Mutex<HashSet<String>>,
    writer: Mutex<Writer>,
    /// Whole packs of tree blobs, read once: walking a snapshot reads every tree.
    tree_packs: Mutex<HashMap<Id, Bytes>>,
    /// Snapshots already read. Each is written once and never changed, so a
    /// listing reads only those it has not seen (a failover of 200 tenants
    /// looked up each one's newest snapshot by reading all 200, one by one).
    snapshots_read: Mutex<HashMap<Id, Snapshot>>,
    reads: IntactReads,
}

/// Index and snapshot objects read at once.
const PARALLEL_METADATA_READS: usize = 16;

/// Bytes of tree packs kept in memory at most.
const TREE_CACHE_BYTES: usize = 64 * 1024 * 1024;

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository").field("store", &self.store().describe()).finish_non_exhaustive()
    }
}

/// The key of a pack: `data/<first two hex digits>/<id>`.
pub fn pack_key(id: &Id) -> String {
    let hex = id.to_string();
    format!("data/{}/{hex}", &hex[..2])
}

fn corrupt(store: &dyn ObjectStore, what: impl Into<String>, reason: impl ToString) -> Error {
    Error::Corrupt { location: store.describe(), what: what.into(), reason: reason.to_string() }
}

/// Serializes, compresses and seals a JSON value.
fn seal_json<T: Serialize>(keys: &Keys, value: &T, aad: &[u8]) -> Vec<u8> {
    // NB: our types always serialize; a failure here is a bug, not input.
    let json = serde_json::to_vec(value).expect("repository JSON serializes");
    let compressed = zstd::bulk::compress(&json, 3).expect("zstd compresses in memory");
    keys.seal(&compressed, aad)
}

fn parse_config(store: &dyn ObjectStore, bytes: &[u8]) -> Result<Config> {
    let config: Config = serde_json::from_slice(bytes).map_err(|e| corrupt(store, "config", e))?;
    if config.version > FORMAT_VERSION {
        return Err(Error::NewerFormat { location: store.describe(), found: config.version });
    }
    config.chunker.check().map_err(|why| corrupt(store, "config", why))?;
    Ok(config)
}

/// How much larger than its zstd an index or snapshot's JSON may be. Writers'
/// JSON is mostly random ids and compresses about 3 to 1; a few KiB of zstd
/// sealed by a hostile holder of the key can hold gigabytes of spaces.
const MAX_JSON_EXPANSION: u64 = 64;
/// What any index or snapshot may decompress to, however small its zstd.
const JSON_ALLOWANCE: u64 = 1024 * 1024;

fn open_json<T: for<'de> Deserialize<'de>>(keys: &Keys, sealed: &[u8], aad: &[u8]) -> Result<T, String> {
    let compressed = keys.open(sealed, aad).map_err(|Unauthentic| Unauthentic.to_string())?;
    let limit = (compressed.len() as u64).saturating_mul(MAX_JSON_EXPANSION).saturating_add(JSON_ALLOWANCE);
    let json = decompress(&compressed, limit, compressed.len().saturating_mul(4))
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("it decompresses to more than {limit} bytes, which no writer makes"))?;
    serde_json::from_slice(&json).map_err(|e| e.to_string())
}

impl Repository {
    /// Creates a repository with a new master key, wrapped for `passphrase`.
    /// With `retention_days`, `store` must already lock what it writes for that long.
    pub async fn init(
        store: Arc<dyn ObjectStore>,
        passphrase: &Passphrase,
        kdf: KdfParams,
        retention_days: Option<u32>,
    ) -> Result<Self> {
        if store.head(CONFIG_KEY).await?.is_some() {
            return Err(Error::AlreadyInitialized { location: store.describe() });
        }
        let master = MasterKey::generate();
        let key_file = KeyFile::for_passphrase(&master, passphrase, kdf, "initial")?;
        let id = hex(&random::<16>());
        let config = Config {
            version: FORMAT_VERSION,
            key_check: Some(key_check(&master, &id)),
            id,
            chunker: ChunkerParams::default(),
            created: key_file.created.clone(),
            retention_days,
        };
        let repo = Self::assemble(IntactReads::new(store), master, config);
        repo.add_key_file(&key_file).await?;
        let json = serde_json::to_vec_pretty(&repo.config).expect("config serializes");
        match repo.store().put(CONFIG_KEY, Bytes::from(json), PutCondition::IfAbsent).await {
            Err(store::Error::AlreadyExists { .. }) => {
                return Err(Error::AlreadyInitialized { location: repo.store().describe() });
            }
            other => other?,
        };
        Ok(repo)
    }

    fn assemble(reads: IntactReads, master: MasterKey, config: Config) -> Self {
        let keys = master.derive();
        Repository {
            reads,
            master,
            keys,
            config,
            index: RwLock::new(Index::default()),
            index_loaded: Mutex::new(HashSet::new()),
            writer: Mutex::new(Writer::default()),
            tree_packs: Mutex::new(HashMap::new()),
            snapshots_read: Mutex::new(HashMap::new()),
        }
    }

    /// Reads the config and checks the format version, without unlocking.
    pub async fn read_config(store: &dyn ObjectStore) -> Result<Config> {
        let bytes = match store.get(CONFIG_KEY).await {
            Err(store::Error::NotFound { .. }) => return Err(Error::NotARepository { location: store.describe() }),
            other => other?,
        };
        parse_config(store, &bytes)
    }

    /// The config as first written, when the store keeps versions and the
    /// current one is not it: the config is written once, so a later version
    /// (or a delete marker) is someone else's write. With its version id.
    async fn original_config(store: &dyn ObjectStore) -> Result<Option<(String, Config)>> {
        let versions = store.versions(CONFIG_KEY).await?;
        let Some(oldest) = versions.last() else { return Ok(None) };
        if versions.len() == 1 && store.head(CONFIG_KEY).await?.is_some() {
            return Ok(None);
        }
        let bytes = store.get_version(CONFIG_KEY, oldest, None).await?;
        Ok(Some((oldest.clone(), parse_config(store, &bytes)?)))
    }

    /// Unlocks a repository and loads its index.
    pub async fn open(store: Arc<dyn ObjectStore>, unlock: &Unlock) -> Result<Self> {
        let repo = Self::open_unindexed(store, unlock).await?;
        repo.load_index().await?;
        Ok(repo)
    }

    /// Unlocks a repository without loading its index, for work on objects
    /// outside it (the WAL archive): PostgreSQL runs one process per WAL file,
    /// and the index grows with every backup.
    pub async fn open_unindexed(store: Arc<dyn ObjectStore>, unlock: &Unlock) -> Result<Self> {
        let current = Self::read_config(store.as_ref()).await;
        Self::open_with_config(store, unlock, current).await
    }

    /// [`open_unindexed`](Self::open_unindexed) with the config the caller
    /// already read from `store` with [`read_config`](Self::read_config): one
    /// request fewer for a process that opens a repository to archive one WAL file.
    pub async fn open_with_config(
        store: Arc<dyn ObjectStore>,
        unlock: &Unlock,
        current: Result<Config>,
    ) -> Result<Self> {
        let reads = IntactReads::new(store.clone());
        let opened = match current {
            Ok(config) => Self::unlock(&reads, unlock, &config).await.map(|master| (master, config)),
            Err(e) => Err(e),
        };
        let failed = match opened {
            Ok((master, config)) => return Ok(Self::assemble(reads, master, config)),
            Err(e) => e,
        };
        // NB: asked only after a failure, so a healthy open costs no version listing.
        let Some((version, config)) = Self::original_config(store.as_ref()).await? else { return Err(failed) };
        let master = Self::unlock(&reads, unlock, &config).await?;
        tracing::warn!(store = %store.describe(), version, "the config was written over; reading its original version");
        reads.pin(CONFIG_KEY, version);
        Ok(Self::assemble(reads, master, config))
    }

    async fn unlock(reads: &IntactReads, unlock: &Unlock, config: &Config) -> Result<MasterKey> {
        let store = reads.store().as_ref();
        for (key, bytes) in Self::read_key_objects(reads).await? {
            // NB: anyone who can write to the store can add a key file; one that
            // does not parse must not stop the others from opening the repository.
            let file: KeyFile = match serde_json::from_slice(&bytes) {
                Ok(file) => file,
                Err(e) => {
                    tracing::warn!(store = %store.describe(), key, error = %e, "skipping a key file that does not parse");
                    continue;
                }
            };
            let opened = match unlock {
                Unlock::Passphrase(p) if matches!(file.holder, super::keyfile::Holder::Passphrase { .. }) => {
                    file.open_with_passphrase(p)
                }
                Unlock::Recovery(r) if file.is_for(&r.recipient()) => file.open_with_recovery(r),
                _ => continue,
            };
            match opened {
                Ok(master) if config.key_check.as_ref().is_none_or(|c| *c == key_check(&master, &config.id)) => {
                    return Ok(master);
                }
                // A key file of another master key: left by an init that lost the race.
                Ok(_) => continue,
                Err(KeyError::Wrong(_)) => continue,
                // NB: one unusable key file (anyone who can write to the store can
                // add one) must not stop the others from opening the repository.
                Err(e @ (KeyError::Kdf { .. } | KeyError::Malformed { .. })) => {
                    tracing::warn!(store = %store.describe(), error = %e, "skipping a key file that cannot be used");
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(match unlock {
            Unlock::Passphrase(_) => Error::WrongPassword { location: store.describe() },
            Unlock::Recovery(_) => Error::WrongRecoveryKey { location: store.describe() },
        })
    }

    /// Every key file, with its id.
    pub async fn key_files(store: &Arc<dyn ObjectStore>) -> Result<Vec<(Id, KeyFile)>> {
        Self::read_key_files(&IntactReads::new(store.clone())).await
    }

    async fn read_key_files(reads: &IntactReads) -> Result<Vec<(Id, KeyFile)>> {
        let store = reads.store().as_ref();
        let objects = Self::read_key_objects(reads).await?;
        objects
            .into_iter()
            .map(|(key, bytes)| {
                let file: KeyFile = serde_json::from_slice(&bytes).map_err(|e| corrupt(store, &key, e))?;
                Ok((Id::of_content(&bytes), file))
            })
            .collect()
    }

    /// Every object under `keys/`, with its key.
    async fn read_key_objects(reads: &IntactReads) -> Result<Vec<(String, Bytes)>> {
        let mut objects = Vec::new();
        for meta in reads.store().list("keys/").await? {
            let bytes = reads.get(&meta.key).await?;
            objects.push((meta.key, bytes));
        }
        Ok(objects)
    }

    /// Stores a key file for another holder; data is not touched.
    pub async fn add_key_file(&self, file: &KeyFile) -> Result<Id> {
        let json = serde_json::to_vec_pretty(file).expect("key file serializes");
        let id = Id::of_content(&json);
        self.put_once(&format!("keys/{id}"), json).await?;
        Ok(id)
    }

    /// Removes a holder's key file; refuses to remove the last one.
    pub async fn remove_key_file(&self, id: &Id) -> Result<()> {
        let files = Self::read_key_files(&self.reads).await?;
        if !files.iter().any(|(f, _)| f == id) {
            return Err(Error::NoSuchKey { location: self.describe(), id: *id });
        }
        if files.len() == 1 {
            return Err(Error::LastKey { location: self.describe(), id: *id });
        }
        Ok(self.store().delete(&format!("keys/{id}")).await?)
    }

    pub fn master_key(&self) -> &MasterKey {
        &self.master
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        self.reads.store()
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn describe(&self) -> String {
        self.store().describe()
    }

    async fn put_once(&self, key: &str, data: Vec<u8>) -> Result<()> {
        self.put_returning(key, data).await.map(drop)
    }

    /// As [`put_once`](Self::put_once), giving the buffer back when the store
    /// kept no hold of it.
    async fn put_returning(&self, key: &str, data: Vec<u8>) -> Result<Option<Vec<u8>>> {
        let data = Bytes::from(data);
        match self.store().put(key, data.clone(), PutCondition::IfAbsent).await {
            // Content-addressed: an existing object under this name has this content.
            Ok(_) | Err(store::Error::AlreadyExists { .. }) => Ok(data.is_unique().then(|| Vec::from(data))),
            Err(e) => Err(e.into()),
        }
    }

    /// Every index object, with its key.
    pub async fn index_files(&self) -> Result<Vec<(String, IndexFile)>> {
        let keys = self.store().list("index/").await?.into_iter().map(|meta| meta.key).collect();
        self.read_index_objects(keys).await
    }

    /// Reads and opens the index objects `keys`, several at a time: a
    /// repository that many tenants back up into holds hundreds of them, and
    /// every process that opens it reads them all.
    async fn read_index_objects(&self, keys: Vec<String>) -> Result<Vec<(String, IndexFile)>> {
        use futures::{StreamExt, TryStreamExt};
        futures::stream::iter(keys)
            .map(|key| async move {
                let sealed = self.reads.get(&key).await?;
                let file =
                    open_json(&self.keys, &sealed, INDEX_AAD).map_err(|e| corrupt(self.store().as_ref(), &key, e))?;
                Ok::<_, Error>((key, file))
            })
            .buffered(PARALLEL_METADATA_READS)
            .try_collect()
            .await
    }

    pub(crate) async fn load_index(&self) -> Result<()> {
        self.replace_index(self.index_files().await?);
        Ok(())
    }

    /// Makes the in-memory index the union of `files`, and nothing else.
    fn replace_index(&self, files: Vec<(String, IndexFile)>) {
        let mut index = Index::default();
        files.iter().for_each(|(_, f)| index.add_file(f));
        *self.index.write().unwrap_or_else(|e| e.into_inner()) = index;
        *self.index_loaded.lock().unwrap_or_else(|e| e.into_inner()) = files.into_iter().map(|(key, _)| key).collect();
    }

    /// Brings the index up to what the store holds: loads the index objects
    /// written since it was loaded (by other processes' backups), so that a
    /// long-running process restores their snapshots too; when one it had
    /// loaded is gone, a prune rewrote the index and deleted packs, and the
    /// index is loaded anew. A backup calls it once it holds its lock, or it
    /// would take blobs of deleted packs for stored.
    pub async fn refresh_index(&self) -> Result<()> {
        let known = self.index_loaded.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let listed: HashSet<String> = self.store().list("index/").await?.into_iter().map(|meta| meta.key).collect();
        if !known.is_subset(&listed) {
            self.replace_index(self.read_index_objects(listed.into_iter().collect()).await?);
            return Ok(());
        }
        let new = listed.into_iter().filter(|key| !known.contains(key)).collect();
        for (key, file) in self.read_index_objects(new).await? {
            self.index.write().unwrap_or_else(|e| e.into_inner()).add_file(&file);
            self.index_loaded.lock().unwrap_or_else(|e| e.into_inner()).insert(key);
        }
        Ok(())
    }

    /// Uploads a finished pack as is, outside the session's bookkeeping (for
    /// prune's repacking, which writes its own index).
    pub async fn write_pack(&self, pack: PackBuilder) -> Result<PackEntry> {
        let (bytes, blobs) = pack.finish(&self.keys);
        let id = Id::of_content(&bytes);
        self.put_once(&pack_key(&id), bytes).await?;
        Ok(PackEntry { id, blobs })
    }

    /// Writes one index object; returns its key.
    pub async fn write_index(&self, file: &IndexFile) -> Result<String> {
        let sealed = seal_json(&self.keys, file, INDEX_AAD);
        let key = format!("index/{}", Id::of_content(&sealed));
        self.put_once(&key, sealed).await?;
        Ok(key)
    }

    /// Adds packs that were uploaded but never indexed (a backup killed before it
    /// wrote its index), so their blobs are reused instead of uploaded again.
    /// Returns how many packs were found.
    pub async fn adopt_unindexed_packs(&self) -> Result<usize> {
        let mut adopted = 0;
        for meta in self.store().list("data/").await? {
            let Some(id) = meta.key.rsplit('/').next().and_then(|name| name.parse::<Id>().ok()) else {
                continue;
            };
            if self.index.read().unwrap_or_else(|e| e.into_inner()).has_pack(&id) {
                continue;
            }
            let Ok(blobs) = self.read_pack_header(&id, meta.size).await else {
                continue; // a damaged stray pack: `check` reports it, backup need not.
            };
            self.index.write().unwrap_or_else(|e| e.into_inner()).add_pack(id, &blobs);
            self.lock_writer().unindexed.push(PackEntry { id, blobs });
            adopted += 1;
        }
        Ok(adopted)
    }

    /// Reads a pack's header with two ranged reads.
    pub async fn read_pack_header(&self, pack: &Id, size: u64) -> Result<Vec<BlobEntry>> {
        let key = pack_key(pack);
        let header = self.intact_pack(pack, || self.read_header_once(&key, size)).await?;
        header.map_err(|source| Error::Pack { location: self.describe(), pack: *pack, source })
    }

    async fn read_header_once(&self, key: &str, size: u64) -> Result<Result<Vec<BlobEntry>, PackError>> {
        let tail = self.reads.get_range(key, size.saturating_sub(4)..size).await?;
        let len = match header_length(&tail) {
            Ok(len) => len as u64,
            Err(e) => return Ok(Err(e)),
        };
        let Some(start) = size.checked_sub(4 + len) else { return Ok(Err(PackError::TooShort)) };
        let sealed = self.reads.get_range(key, start..size - 4).await?;
        Ok(parse_header(&self.keys, &sealed))
    }

    /// Runs `read` (ranged reads of a pack and the check of what they read);
    /// when the check fails and the store keeps an intact version of the pack
    /// (it was written over), runs it again on that version.
    async fn intact_pack<T, F>(&self, pack: &Id, read: impl Fn() -> F) -> Result<Result<T, PackError>>
    where
        F: std::future::Future<Output = Result<Result<T, PackError>>>,
    {
        let first = read().await?;
        if first.is_ok() || !self.reads.recover(&pack_key(pack)).await? {
            return Ok(first);
        }
        read().await
    }

    /// Reads of the repository's objects that go to an object's intact
    /// version when it was written over.
    pub fn reads(&self) -> &IntactReads {
        &self.reads
    }

    /// The objects found written over so far (see [`super::intact`]).
    pub fn overwritten(&self) -> Vec<Overwritten> {
        self.reads.overwritten()
    }

    fn lock_writer(&self) -> std::sync::MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the repository already has (or is writing) a blob.
    pub fn has_blob(&self, id: &Id) -> bool {
        self.index.read().unwrap_or_else(|e| e.into_inner()).contains(id) || self.lock_writer().pending.contains(id)
    }

    /// Stores a blob unless the repository has it. Returns its id and the
    /// sealed bytes added (0 when it was already there).
    pub async fn save_blob(&self, blob_type: BlobType, plaintext: &[u8]) -> Result<(Id, u64)> {
        let id = self.keys.blob_id(plaintext);
        self.save_blob_with_id(blob_type, id, plaintext).await
    }

    /// As [`save_blob`](Self::save_blob), for a caller that computed the id.
    pub async fn save_blob_with_id(&self, blob_type: BlobType, id: Id, plaintext: &[u8]) -> Result<(Id, u64)> {
        if self.index.read().unwrap_or_else(|e| e.into_inner()).contains(&id) || !self.lock_writer().pending.insert(id)
        {
            return Ok((id, 0));
        }
        let sealed = seal_blob(&self.keys, &id, plaintext);
        let added = sealed.len() as u64;
        let full = {
            let mut guard = self.lock_writer();
            let writer = &mut *guard;
            let pack = match blob_type {
                BlobType::Data => &mut writer.data_pack,
                BlobType::Tree => &mut writer.tree_pack,
            };
            pack.add(id, blob_type, &sealed, plaintext.len());
            if pack.is_full() {
                let next = PackBuilder::in_buffer(writer.spare.take().unwrap_or_default());
                Some(std::mem::replace(pack, next))
            } else {
                None
            }
        };
        if let Some(pack) = full {
            self.upload_pack(pack).await?;
        }
        Ok((id, added))
    }

    async fn upload_pack(&self, pack: PackBuilder) -> Result<()> {
        let (bytes, blobs) = pack.finish(&self.keys);
        let id = Id::of_content(&bytes);
        let spare = self.put_returning(&pack_key(&id), bytes).await?;
        self.index.write().unwrap_or_else(|e| e.into_inner()).add_pack(id, &blobs);
        let mut writer = self.lock_writer();
        writer.spare = writer.spare.take().or(spare);
        blobs.iter().for_each(|b| {
            writer.pending.remove(&b.id);
        });
        writer.unindexed.push(PackEntry { id, blobs });
        Ok(())
    }

    /// Uploads the open pack and writes an index object for every pack this
    /// session uploaded. Snapshots must be saved only after this.
    pub async fn flush(&self) -> Result<()> {
        let open = {
            let mut writer = self.lock_writer();
            [std::mem::take(&mut writer.data_pack), std::mem::take(&mut writer.tree_pack)]
        };
        for pack in open.into_iter().filter(|p| !p.is_empty()) {
            self.upload_pack(pack).await?;
        }
        let packs = std::mem::take(&mut self.lock_writer().unindexed);
        if packs.is_empty() {
            return Ok(());
        }
        self.write_index(&IndexFile { packs }).await.map(|_| ())
    }

    /// Where a blob is, if indexed.
    pub fn locate(&self, id: &Id) -> Option<super::index::Location> {
        self.index.read().unwrap_or_else(|e| e.into_inner()).get(id).copied()
    }

    /// Loads and checks one blob.
    pub async fn load_blob(&self, id: &Id) -> Result<Vec<u8>> {
        let location = self.locate(id).ok_or(Error::MissingBlob { location: self.describe(), id: *id })?;
        let entry = location.entry;
        let range = u64::from(entry.offset)..u64::from(entry.offset) + u64::from(entry.length);
        if let Some(pack) = self.tree_pack(&location.pack).await? {
            // NB: cut as a ranged read of the store would be: an index may name
            // any range (a holder of the key writes them), and what lies beyond
            // the pack then fails to authenticate.
            let end = (range.end as usize).min(pack.len());
            let sealed = pack.slice((range.start as usize).min(end)..end);
            return open_blob(&self.keys, &entry, &sealed).map_err(|source| Error::Pack {
                location: self.describe(),
                pack: location.pack,
                source,
            });
        }
        let key = pack_key(&location.pack);
        let open_once = || async {
            let sealed = self.reads.get_range(&key, range.clone()).await?;
            Ok(open_blob(&self.keys, &entry, &sealed))
        };
        let opened = self.intact_pack(&location.pack, open_once).await?;
        opened.map_err(|source| Error::Pack { location: self.describe(), pack: location.pack, source })
    }

    /// The whole pack, from memory, if it holds only tree blobs.
    async fn tree_pack(&self, pack: &Id) -> Result<Option<Bytes>> {
        if let Some(bytes) = self.tree_packs.lock().unwrap_or_else(|e| e.into_inner()).get(pack) {
            return Ok(Some(bytes.clone()));
        }
        let only_trees = self.with_index(|index| {
            index.pack(pack).is_some_and(|blobs| blobs.iter().all(|b| b.blob_type == BlobType::Tree))
        });
        if !only_trees {
            return Ok(None);
        }
        let bytes = self.reads.get(&pack_key(pack)).await?;
        let mut cache = self.tree_packs.lock().unwrap_or_else(|e| e.into_inner());
        if cache.values().map(Bytes::len).sum::<usize>() + bytes.len() <= TREE_CACHE_BYTES {
            cache.insert(*pack, bytes.clone());
        }
        Ok(Some(bytes))
    }

    /// Runs `f` over the index.
    pub fn with_index<T>(&self, f: impl FnOnce(&Index) -> T) -> T {
        f(&self.index.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Saves a snapshot after flushing its data; returns its id.
    pub async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<Id> {
        self.flush().await?;
        let sealed = seal_json(&self.keys, snapshot, SNAPSHOT_AAD);
        let id = Id::of_content(&sealed);
        self.put_once(&format!("snapshots/{id}"), sealed).await?;
        Ok(id)
    }

    /// Every snapshot, oldest first.
    pub async fn snapshots(&self) -> Result<Vec<(Id, Snapshot)>> {
        use futures::{StreamExt, TryStreamExt};
        let listed = self.store().list("snapshots/").await?;
        let ids: Vec<Id> =
            listed.iter().filter_map(|m| m.key.strip_prefix("snapshots/").and_then(|s| s.parse().ok())).collect();
        let unread: Vec<Id> = {
            let read = self.snapshots_read.lock().unwrap_or_else(|e| e.into_inner());
            ids.iter().filter(|id| !read.contains_key(id)).copied().collect()
        };
        let loaded: Vec<(Id, Snapshot)> = futures::stream::iter(unread)
            .map(|id| async move { Ok::<_, Error>((id, self.load_snapshot(&id).await?)) })
            .buffered(PARALLEL_METADATA_READS)
            .try_collect()
            .await?;
        let mut read = self.snapshots_read.lock().unwrap_or_else(|e| e.into_inner());
        read.extend(loaded);
        let mut out: Vec<(Id, Snapshot)> = ids.iter().filter_map(|id| Some((*id, read.get(id)?.clone()))).collect();
        out.sort_by_cached_key(|(_, s)| s.dated());
        Ok(out)
    }

    pub async fn load_snapshot(&self, id: &Id) -> Result<Snapshot> {
        let key = format!("snapshots/{id}");
        let sealed = self.reads.get(&key).await?;
        open_json(&self.keys, &sealed, SNAPSHOT_AAD).map_err(|e| corrupt(self.store().as_ref(), key, e))
    }

    /// Finds a snapshot by id, unique id prefix, or `latest`.
    pub async fn find_snapshot(&self, spec: &str) -> Result<(Id, Snapshot)> {
        let snapshots = self.snapshots().await?;
        let found: Vec<_> = if spec == "latest" {
            super::tree::newest(&snapshots).into_iter().cloned().collect()
        } else {
            snapshots.into_iter().filter(|(id, _)| id.to_string().starts_with(spec)).collect()
        };
        match <[_; 1]>::try_from(found) {
            Ok([one]) => Ok(one),
            Err(found) if found.is_empty() => {
                Err(Error::NoSuchSnapshot { location: self.describe(), spec: spec.to_owned() })
            }
            Err(_) => Err(Error::AmbiguousSnapshot { location: self.describe(), spec: spec.to_owned() }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fs::FsStore;

    const FAST: KdfParams = KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 };

    #[tokio::test]
    async fn a_key_file_left_by_an_init_that_lost_the_race_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(FsStore::open(dir.path()).unwrap());
        let passphrase = || Passphrase::new("same passphrase".into());
        let winner = Repository::init(store.clone(), &passphrase(), FAST, None).await.unwrap();
        // The loser's key file: same passphrase, another master key, listed first.
        let orphan = KeyFile::for_passphrase(&MasterKey::generate(), &passphrase(), FAST, "initial").unwrap();
        let json = Bytes::from(serde_json::to_vec(&orphan).unwrap());
        store.put(&format!("keys/{}", "0".repeat(64)), json, PutCondition::IfAbsent).await.unwrap();
        assert_eq!(Repository::key_files(&store).await.unwrap().len(), 2);

        let opened = Repository::open(store.clone(), &Unlock::Passphrase(passphrase())).await.unwrap();
        assert_eq!(opened.master_key().as_bytes(), winner.master_key().as_bytes());
        // A second init finds the repository and changes nothing.
        let again = Repository::init(store.clone(), &passphrase(), FAST, None).await;
        assert!(matches!(again, Err(Error::AlreadyInitialized { .. })));
    }

    #[tokio::test]
    async fn a_key_file_asking_for_unbounded_work_is_skipped_not_run() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(FsStore::open(dir.path()).unwrap());
        let passphrase = || Passphrase::new("pw".into());
        let repo = Repository::init(store.clone(), &passphrase(), FAST, None).await.unwrap();
        // Anyone who can write to the store can add a key file: this one asks
        // Argon2id for 4 TiB and 4 billion passes, and is listed first.
        let mut hostile = KeyFile::for_passphrase(repo.master_key(), &passphrase(), FAST, "hostile").unwrap();
        if let super::super::keyfile::Holder::Passphrase { kdf, .. } = &mut hostile.holder {
            *kdf = KdfParams { memory_kib: u32::MAX, iterations: u32::MAX, parallelism: 1 };
        }
        let json = Bytes::from(serde_json::to_vec(&hostile).unwrap());
        store.put(&format!("keys/{}", "0".repeat(64)), json, PutCondition::IfAbsent).await.unwrap();
        let opened = Repository::open(store.clone(), &Unlock::Passphrase(passphrase())).await.unwrap();
        assert_eq!(opened.master_key().as_bytes(), repo.master_key().as_bytes());
        // Nor can such a key file be made.
        let huge = KdfParams { memory_kib: 2 * 1024 * 1024, ..FAST };
        let refused = KeyFile::for_passphrase(repo.master_key(), &passphrase(), huge, "too big");
        assert!(matches!(&refused, Err(KeyError::Kdf { what }) if what.contains("2097152 KiB")), "{refused:?}");
        assert!(KdfParams::default().check().is_ok() && KdfParams::MAX.check().is_ok());
        assert!(KdfParams { iterations: 0, ..FAST }.check().is_err());
    }

    #[tokio::test]
    async fn a_config_with_chunk_sizes_the_chunker_cannot_use_is_refused_as_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(FsStore::open(dir.path()).unwrap());
        Repository::init(store.clone(), &Passphrase::new("pw".into()), FAST, None).await.unwrap();
        let path = dir.path().join(CONFIG_KEY);
        let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        config["chunker"]["maxSize"] = serde_json::json!(1u32 << 30);
        std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
        let refused = Repository::open(store, &Unlock::Passphrase(Passphrase::new("pw".into()))).await;
        let message = refused.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("config") && message.contains("chunk sizes 524288/1048576/1073741824"), "{message}");
        assert!(ChunkerParams::default().check().is_ok());
    }
}
