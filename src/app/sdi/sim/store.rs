//! The simulator's state: on disk under the data directory, and an in-memory
//! index rebuilt from it at start.
//!
//! Layout (docs/sdi-simulator.md is the spec):
//!
//! ```text
//! DIR/next-id                      the next SdI identifier, decimal
//! DIR/tenants/<tenant>/epoch       the highest fencing epoch seen, decimal
//! DIR/tenants/<tenant>/<id>.xml    a file as received
//! DIR/tenants/<tenant>/<id>.json   its Transmission
//! ```
//!
//! Every file is written whole to a temp file in the same directory, fsynced,
//! renamed into place, and the directory fsynced. The `.json` is the commit
//! point: it is written after its `.xml`, and a transmission exists once its
//! `.json` does. `next-id` is written after that, so it may lag behind after a
//! crash; the identifiers on disk raise it again at start.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use jiff::{RoundMode, Timestamp, TimestampRound, Unit};
use sha2::{Digest, Sha256};

use super::receipts::{self, Verdict};
use super::{Error, Result};
use crate::app::sdi::Transmission;
use crate::repo::id::hex;

const NEXT_ID_FILE: &str = "next-id";
const TENANTS_DIR: &str = "tenants";
const EPOCH_FILE: &str = "epoch";
/// Temp files start with this; a start removes those a crash left behind.
const TEMP_PREFIX: &str = ".tmp-";
/// The first SdI identifier of a new data directory.
const FIRST_ID: u64 = 1;

/// A transmission and what SdI decided about its file.
#[derive(Clone, Debug)]
pub struct Entry {
    pub transmission: Transmission,
    pub verdict: Verdict,
}

/// How a transmission ended.
#[derive(Clone, Debug)]
pub enum Outcome {
    Accepted(Transmission),
    /// The file name was already received, in `earlier`.
    Duplicate {
        earlier: Transmission,
    },
    /// The epoch is lower than `highest`, the highest seen for the tenant.
    StaleEpoch {
        highest: u64,
    },
}

/// Every tenant's transmissions, with the files on disk.
#[derive(Debug)]
pub struct Store {
    disk: Arc<Disk>,
    tenants: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Tenant>>>>,
}

impl Store {
    /// Opens the data directory at `root`, creating it if missing, and rebuilds
    /// the index from it.
    pub async fn open(root: PathBuf) -> Result<Self> {
        let (disk, tenants) = blocking(move || Disk::load(root)).await?;
        let tenants = tenants.into_iter().map(|(name, t)| (name, Arc::new(tokio::sync::Mutex::new(t)))).collect();
        Ok(Self { disk: Arc::new(disk), tenants: Mutex::new(tenants) })
    }

    /// The data directory.
    pub fn root(&self) -> &Path {
        &self.disk.root
    }

    /// Receives `xml` as `file_name` for `tenant` under fencing `epoch`: checks
    /// the epoch, then the name, then stores the file. One at a time per tenant.
    ///
    /// NB: callers must not drop this future half-way (run it in its own task):
    /// the disk write would go on while the index missed it, and the name would
    /// be accepted a second time until a restart.
    pub async fn transmit(&self, tenant: &str, epoch: u64, file_name: &str, xml: Bytes) -> Result<Outcome> {
        let state = self.tenant_or_new(tenant);
        let mut state = state.lock().await;
        let admission = admit(&state, epoch, file_name);
        if let Admission::Stale { highest } = admission {
            return Ok(Outcome::StaleEpoch { highest });
        }
        if epoch > state.highest_epoch {
            let (disk, name) = (self.disk.clone(), tenant.to_string());
            blocking(move || disk.write_epoch(&name, epoch)).await?;
            state.highest_epoch = epoch;
        }
        match admission {
            Admission::Stale { .. } => unreachable!("returned above"),
            Admission::Duplicate { earlier } => Ok(Outcome::Duplicate { earlier }),
            Admission::Accept => {
                let (disk, name, file_name) = (self.disk.clone(), tenant.to_string(), file_name.to_string());
                let entry = blocking(move || disk.store(&name, epoch, &file_name, &xml)).await?;
                let transmission = entry.transmission.clone();
                // NB: cannot fail: identifiers are unique and the name was checked under the lock.
                state.insert(entry).map_err(|problem| Error::Corrupt {
                    path: self.disk.tenant_dir(tenant).join(format!("{}.json", transmission.sdi_id)),
                    problem,
                })?;
                Ok(Outcome::Accepted(transmission))
            }
        }
    }

    /// Every transmission of `tenant`, oldest first.
    pub async fn entries(&self, tenant: &str) -> Vec<Entry> {
        match self.existing_tenant(tenant) {
            Some(state) => state.lock().await.entries.values().cloned().collect(),
            None => Vec::new(),
        }
    }

    /// One transmission of `tenant`.
    pub async fn entry(&self, tenant: &str, sdi_id: &str) -> Option<Entry> {
        let id = parse_id(sdi_id)?;
        let state = self.existing_tenant(tenant)?;
        let state = state.lock().await;
        state.entries.get(&id).cloned()
    }

    /// The file of one transmission of `tenant`, as received.
    pub async fn file(&self, tenant: &str, sdi_id: &str) -> Result<Option<Vec<u8>>> {
        if self.entry(tenant, sdi_id).await.is_none() {
            return Ok(None);
        }
        let path = self.disk.tenant_dir(tenant).join(format!("{sdi_id}.xml"));
        let xml = blocking(move || fs::read(&path).map_err(|source| Error::Read { path, source })).await?;
        Ok(Some(xml))
    }

    fn existing_tenant(&self, tenant: &str) -> Option<Arc<tokio::sync::Mutex<Tenant>>> {
        self.tenants.lock().unwrap_or_else(PoisonError::into_inner).get(tenant).cloned()
    }

    fn tenant_or_new(&self, tenant: &str) -> Arc<tokio::sync::Mutex<Tenant>> {
        let mut tenants = self.tenants.lock().unwrap_or_else(PoisonError::into_inner);
        tenants.entry(tenant.to_string()).or_default().clone()
    }
}

/// One tenant's part of the index.
#[derive(Debug, Default)]
struct Tenant {
    highest_epoch: u64,
    /// By SdI identifier, so oldest first.
    entries: BTreeMap<u64, Entry>,
    /// SdI identifier by file name.
    by_name: HashMap<String, u64>,
}

impl Tenant {
    fn insert(&mut self, entry: Entry) -> Result<(), String> {
        let t = &entry.transmission;
        let id = parse_id(&t.sdi_id).ok_or_else(|| format!("SdI identifier {:?} is not a number", t.sdi_id))?;
        if let Some(earlier) = self.by_name.get(&t.file_name) {
            return Err(format!("file name {} is also in transmission {earlier}", t.file_name));
        }
        if self.entries.contains_key(&id) {
            return Err(format!("SdI identifier {id} is used twice"));
        }
        self.highest_epoch = self.highest_epoch.max(t.epoch);
        self.by_name.insert(t.file_name.clone(), id);
        self.entries.insert(id, entry);
        Ok(())
    }
}

/// What to do with a transmission, from the tenant's state alone.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Admission {
    Stale { highest: u64 },
    Duplicate { earlier: Transmission },
    Accept,
}

/// The epoch is checked first: a fenced site learns it is fenced even when it
/// resends a name it sent before.
fn admit(tenant: &Tenant, epoch: u64, file_name: &str) -> Admission {
    if epoch < tenant.highest_epoch {
        return Admission::Stale { highest: tenant.highest_epoch };
    }
    match tenant.by_name.get(file_name).and_then(|id| tenant.entries.get(id)) {
        Some(earlier) => Admission::Duplicate { earlier: earlier.transmission.clone() },
        None => Admission::Accept,
    }
}

/// The blocking file work, run off the async threads.
#[derive(Debug)]
struct Disk {
    root: PathBuf,
    ids: Mutex<Ids>,
}

#[derive(Debug)]
struct Ids {
    /// The next identifier to hand out.
    next: u64,
    /// What `next-id` holds.
    persisted: u64,
}

impl Disk {
    fn load(root: PathBuf) -> Result<(Self, HashMap<String, Tenant>)> {
        let tenants_dir = root.join(TENANTS_DIR);
        fs::create_dir_all(&tenants_dir).map_err(|source| Error::CreateDir { path: tenants_dir.clone(), source })?;
        remove_temp_files(&root)?;
        let next_id_path = root.join(NEXT_ID_FILE);
        let persisted = read_number(&next_id_path)?.unwrap_or(FIRST_ID);
        let mut next = persisted;
        let mut tenants = HashMap::new();
        for (name, dir) in list_dir(&tenants_dir)? {
            if !dir.is_dir() || !super::http::is_tenant_name(&name) {
                return Err(Error::Corrupt {
                    path: dir,
                    problem: "is not a tenant directory (tenant names are DNS labels)".to_string(),
                });
            }
            let tenant = load_tenant(&name, &dir)?;
            if let Some((last, _)) = tenant.entries.last_key_value() {
                next = next.max(last + 1);
            }
            tenants.insert(name, tenant);
        }
        tracing::info!(
            data = %root.display(),
            tenants = tenants.len(),
            transmissions = tenants.values().map(|t| t.entries.len()).sum::<usize>(),
            next_id = next,
            "SdI simulator state loaded"
        );
        Ok((Self { root, ids: Mutex::new(Ids { next, persisted }) }, tenants))
    }

    fn tenant_dir(&self, tenant: &str) -> PathBuf {
        self.root.join(TENANTS_DIR).join(tenant)
    }

    /// The tenant's directory, created (durably) if missing.
    fn ensure_tenant_dir(&self, tenant: &str) -> Result<PathBuf> {
        let dir = self.tenant_dir(tenant);
        match fs::create_dir(&dir) {
            Ok(()) => {
                let parent = self.root.join(TENANTS_DIR);
                sync_dir(&parent).map_err(|source| Error::Write { path: parent, source })?;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => return Err(Error::CreateDir { path: dir, source }),
        }
        Ok(dir)
    }

    fn write_epoch(&self, tenant: &str, epoch: u64) -> Result<()> {
        let dir = self.ensure_tenant_dir(tenant)?;
        write_atomic(&dir, EPOCH_FILE, epoch.to_string().as_bytes())
    }

    /// Stores a new transmission: the file, then its JSON, then the raised
    /// `next-id`.
    fn store(&self, tenant: &str, epoch: u64, file_name: &str, xml: &[u8]) -> Result<Entry> {
        let dir = self.ensure_tenant_dir(tenant)?;
        let verdict = receipts::classify(xml);
        let (id, received_at) = {
            let mut ids = self.ids.lock().unwrap_or_else(PoisonError::into_inner);
            let id = ids.next;
            ids.next += 1;
            // NB: taken under the lock so that received_at follows the identifiers.
            (id, received_now())
        };
        let transmission = Transmission {
            sdi_id: id.to_string(),
            tenant: tenant.to_string(),
            file_name: file_name.to_string(),
            sha256: hex(&Sha256::digest(xml)),
            epoch,
            received_at: received_at.to_string(),
        };
        write_atomic(&dir, &format!("{id}.xml"), xml)?;
        let json = serde_json::to_vec_pretty(&transmission).unwrap_or_else(|e| unreachable!("plain struct: {e}"));
        write_atomic(&dir, &format!("{id}.json"), &json)?;
        self.raise_next_id(id + 1)?;
        Ok(Entry { transmission, verdict })
    }

    /// Makes `next-id` at least `next`. Stores finish out of order across
    /// tenants; it never goes down.
    fn raise_next_id(&self, next: u64) -> Result<()> {
        let mut ids = self.ids.lock().unwrap_or_else(PoisonError::into_inner);
        if next > ids.persisted {
            write_atomic(&self.root, NEXT_ID_FILE, next.to_string().as_bytes())?;
            ids.persisted = next;
        }
        Ok(())
    }
}

/// Now, to the millisecond. NB: truncated, not rounded, so that a receipt due
/// at once is never in the future of a request that follows.
fn received_now() -> Timestamp {
    let now = Timestamp::now();
    now.round(TimestampRound::new().smallest(Unit::Millisecond).mode(RoundMode::Trunc)).unwrap_or(now)
}

/// Rebuilds one tenant from its directory, checking every file against its JSON.
fn load_tenant(name: &str, dir: &Path) -> Result<Tenant> {
    remove_temp_files(dir)?;
    let mut tenant = Tenant { highest_epoch: read_number(&dir.join(EPOCH_FILE))?.unwrap_or(0), ..Tenant::default() };
    let mut files = Vec::new();
    for (file, path) in list_dir(dir)? {
        let corrupt = |problem: &str| Error::Corrupt { path: path.clone(), problem: problem.to_string() };
        if file == EPOCH_FILE {
            continue;
        }
        let (stem, ext) = file.rsplit_once('.').ok_or_else(|| corrupt("unexpected file"))?;
        if parse_id(stem).is_none() || !matches!(ext, "json" | "xml") {
            return Err(corrupt("unexpected file"));
        }
        if ext == "xml" {
            files.push((stem.to_string(), path));
            continue;
        }
        let json = fs::read(&path).map_err(|source| Error::Read { path: path.clone(), source })?;
        let transmission: Transmission =
            serde_json::from_slice(&json).map_err(|e| corrupt(&format!("is not a Transmission in JSON ({e})")))?;
        if transmission.sdi_id != stem || transmission.tenant != name {
            return Err(corrupt("its sdi_id or tenant does not match the file's name or directory"));
        }
        let xml_path = dir.join(format!("{stem}.xml"));
        let xml = fs::read(&xml_path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => Error::Corrupt { path: xml_path.clone(), problem: "is missing".to_string() },
            _ => Error::Read { path: xml_path.clone(), source },
        })?;
        if hex(&Sha256::digest(&xml)) != transmission.sha256 {
            return Err(Error::Corrupt {
                path: xml_path,
                problem: "does not match the sha256 in its JSON".to_string(),
            });
        }
        let entry = Entry { verdict: receipts::classify(&xml), transmission };
        tenant.insert(entry).map_err(|problem| corrupt(&problem))?;
    }
    // NB: a file without its JSON was never acknowledged: a crash came between
    // the two writes. Its identifier may be handed out again.
    for (stem, path) in files {
        if parse_id(&stem).is_some_and(|id| !tenant.entries.contains_key(&id)) {
            tracing::warn!(path = %path.display(), "removing a file left without its transmission by a crash");
            fs::remove_file(&path).map_err(|source| Error::Write { path, source })?;
        }
    }
    Ok(tenant)
}

/// The names and paths in `dir`.
fn list_dir(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let read = |source| Error::Read { path: dir.to_owned(), source };
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(read)? {
        let entry = entry.map_err(read)?;
        let path = entry.path();
        let name = entry
            .file_name()
            .into_string()
            .map_err(|_| Error::Corrupt { path: path.clone(), problem: "has a name that is not UTF-8".to_string() })?;
        out.push((name, path));
    }
    Ok(out)
}

fn remove_temp_files(dir: &Path) -> Result<()> {
    for (name, path) in list_dir(dir)? {
        if name.starts_with(TEMP_PREFIX) {
            tracing::warn!(path = %path.display(), "removing a temp file left by a crash");
            fs::remove_file(&path).map_err(|source| Error::Write { path, source })?;
        }
    }
    Ok(())
}

/// A file holding one decimal number, or `None` if the file is missing.
fn read_number(path: &Path) -> Result<Option<u64>> {
    match fs::read_to_string(path) {
        Ok(text) => text.trim().parse().map(Some).map_err(|_| Error::Corrupt {
            path: path.to_owned(),
            problem: format!("holds {:?}, not a decimal number", text.trim()),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Read { path: path.to_owned(), source }),
    }
}

/// An SdI identifier: decimal digits, no sign, no leading zero.
fn parse_id(text: &str) -> Option<u64> {
    let canonical = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) && !text.starts_with('0');
    canonical.then(|| text.parse().ok()).flatten()
}

/// Writes `dir/name` whole or not at all, durably.
fn write_atomic(dir: &Path, name: &str, data: &[u8]) -> Result<()> {
    let path = dir.join(name);
    let write = || -> io::Result<()> {
        let mut temp = tempfile::Builder::new().prefix(TEMP_PREFIX).tempfile_in(dir)?;
        temp.write_all(data)?;
        temp.as_file().sync_all()?;
        temp.persist(&path).map_err(|e| e.error)?;
        sync_dir(dir)
    };
    write().map_err(|source| Error::Write { path: path.clone(), source })
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transmission(sdi_id: &str, file_name: &str, epoch: u64) -> Transmission {
        Transmission {
            sdi_id: sdi_id.to_string(),
            tenant: "acme".to_string(),
            file_name: file_name.to_string(),
            sha256: String::new(),
            epoch,
            received_at: "2026-03-02T10:00:00Z".to_string(),
        }
    }

    fn tenant_with(epoch: u64, sent: &[(&str, &str)]) -> Tenant {
        let mut tenant = Tenant { highest_epoch: epoch, ..Tenant::default() };
        for (id, name) in sent {
            tenant.insert(Entry { transmission: transmission(id, name, epoch), verdict: Verdict::Delivered }).unwrap();
        }
        tenant
    }

    #[test]
    fn the_epoch_is_checked_before_the_name() {
        let tenant = tenant_with(3, &[("7", "IT1_00001.xml")]);
        assert_eq!(admit(&tenant, 2, "IT1_00001.xml"), Admission::Stale { highest: 3 });
        assert_eq!(admit(&tenant, 2, "IT1_00002.xml"), Admission::Stale { highest: 3 });
        assert_eq!(
            admit(&tenant, 3, "IT1_00001.xml"),
            Admission::Duplicate { earlier: transmission("7", "IT1_00001.xml", 3) }
        );
        assert_eq!(
            admit(&tenant, 9, "IT1_00001.xml"),
            Admission::Duplicate { earlier: transmission("7", "IT1_00001.xml", 3) }
        );
        assert_eq!(admit(&tenant, 3, "IT1_00002.xml"), Admission::Accept);
        assert_eq!(admit(&Tenant::default(), 0, "IT1_00001.xml"), Admission::Accept);
    }

    #[test]
    fn the_index_refuses_a_name_or_identifier_twice() {
        let mut tenant = tenant_with(1, &[("7", "IT1_00001.xml")]);
        let again = Entry { transmission: transmission("8", "IT1_00001.xml", 1), verdict: Verdict::Delivered };
        assert!(tenant.insert(again).unwrap_err().contains("IT1_00001.xml"));
        let same_id = Entry { transmission: transmission("7", "IT1_00002.xml", 1), verdict: Verdict::Delivered };
        assert!(tenant.insert(same_id).unwrap_err().contains("used twice"));
    }

    #[test]
    fn identifiers_are_canonical_decimals() {
        assert_eq!(parse_id("42"), Some(42));
        for bad in ["", "0", "042", "-1", "+1", "1a", "99999999999999999999999"] {
            assert_eq!(parse_id(bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn a_start_removes_what_a_crash_left_and_keeps_identifiers_increasing() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path().to_owned()).await.unwrap();
        let sent = store.transmit("acme", 1, "IT1_00001.xml", Bytes::from_static(b"<a/>")).await.unwrap();
        let Outcome::Accepted(sent) = sent else { panic!("{sent:?}") };
        drop(store);
        let dir = root.path().join("tenants/acme");
        // A crash after the file and before its JSON, and one after the JSON and before next-id.
        fs::write(dir.join("9.xml"), b"<a/>").unwrap();
        fs::write(dir.join(".tmp-x"), b"half").unwrap();
        fs::write(root.path().join(NEXT_ID_FILE), b"1").unwrap();

        let store = Store::open(root.path().to_owned()).await.unwrap();
        assert!(!dir.join("9.xml").exists() && !dir.join(".tmp-x").exists());
        let next = store.transmit("acme", 1, "IT1_00002.xml", Bytes::from_static(b"<a/>")).await.unwrap();
        let Outcome::Accepted(next) = next else { panic!("{next:?}") };
        assert!(parse_id(&next.sdi_id) > parse_id(&sent.sdi_id), "{next:?} after {sent:?}");
    }

    #[tokio::test]
    async fn a_damaged_file_stops_the_start_and_names_the_file() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path().to_owned()).await.unwrap();
        store.transmit("acme", 1, "IT1_00001.xml", Bytes::from_static(b"<a/>")).await.unwrap();
        drop(store);
        let xml = root.path().join("tenants/acme/1.xml");
        fs::write(&xml, b"<b/>").unwrap();
        let err = Store::open(root.path().to_owned()).await.unwrap_err();
        assert!(matches!(&err, Error::Corrupt { path, .. } if *path == xml), "{err:?}");
        assert!(err.to_string().contains("1.xml"), "{err}");
    }
}
