//! The filesystem backend: a directory tree, one file per object. Writes go to
//! a temp file that is fsynced and then linked or renamed into place, so a crash
//! never leaves a half-written object under its real name.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::ops::Range;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;

use super::error::check_key;
use super::{Chunks, Error, ObjectMeta, ObjectStore, PutCondition, PutOutcome, Result, Retention};

/// Names of temp files start with this; listing skips them.
const TEMP_PREFIX: &str = ".tmp-";
/// Serializes conditional overwrites (If-Match) across processes.
const LOCK_FILE: &str = ".fenice-lock";

/// A store in a local directory (or a mounted NAS share).
#[derive(Clone, Debug)]
pub struct FsStore {
    root: PathBuf,
}

impl FsStore {
    /// A store rooted at `root`, created if missing.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(|source| Error::Io {
            store: root.display().to_string(),
            operation: "create directory",
            key: String::new(),
            source,
        })?;
        Ok(Self { root })
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        check_key(key)?;
        if key.split('/').any(|part| part.starts_with(TEMP_PREFIX) || part == LOCK_FILE) {
            return Err(Error::InvalidKey { key: key.to_owned() });
        }
        Ok(self.root.join(key))
    }

    fn io(&self, operation: &'static str, key: &str) -> impl FnOnce(io::Error) -> Error + '_ {
        let key = key.to_owned();
        move |source| match source.kind() {
            io::ErrorKind::NotFound => Error::NotFound { store: self.describe(), key },
            io::ErrorKind::PermissionDenied => Error::Denied { store: self.describe(), operation, key },
            _ => Error::Io { store: self.describe(), operation, key, source },
        }
    }

    fn put_blocking(&self, key: &str, data: &[u8], condition: &PutCondition) -> Result<PutOutcome> {
        let path = self.path(key)?;
        let dir = path.parent().unwrap_or(&self.root).to_owned();
        fs::create_dir_all(&dir).map_err(self.io("create directory", key))?;
        let temp = write_temp(&dir, data).map_err(self.io("write", key))?;
        let result = match condition {
            // NB: link() fails if the name exists, which makes put-if-absent atomic
            // even between processes and on NFS, where O_EXCL is unreliable.
            PutCondition::IfAbsent => fs::hard_link(&temp, &path).map_err(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => Error::AlreadyExists { store: self.describe(), key: key.to_owned() },
                _ => self.io("write", key)(e),
            }),
            PutCondition::IfMatch(expected) => self.replace_if_match(key, &path, &temp, expected),
        };
        let _ = fs::remove_file(&temp);
        result?;
        sync_dir(&dir).map_err(self.io("sync directory", key))?;
        let meta = fs::metadata(&path).map_err(self.io("stat", key))?;
        Ok(PutOutcome { etag: etag(&meta), retain_until: None, version: None })
    }

    fn replace_if_match(&self, key: &str, path: &Path, temp: &Path, expected: &str) -> Result<()> {
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.root.join(LOCK_FILE))
            .map_err(self.io("lock", key))?;
        lock.lock().map_err(self.io("lock", key))?;
        let current = fs::metadata(path).map_err(self.io("stat", key))?;
        if etag(&current) != expected {
            return Err(Error::PreconditionFailed { store: self.describe(), key: key.to_owned() });
        }
        fs::rename(temp, path).map_err(self.io("write", key))
    }

    fn read_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        let (file, len) = self.open_range(key, range)?;
        self.read_next(file, key, len).map(|(_, bytes)| bytes)
    }

    /// The object opened at the start of `range`, and how much of the range it holds.
    fn open_range(&self, key: &str, range: Range<u64>) -> Result<(File, u64)> {
        let mut file = File::open(self.path(key)?).map_err(self.io("read", key))?;
        let size = file.metadata().map_err(self.io("stat", key))?.len();
        let end = range.end.min(size);
        let start = range.start.min(end);
        file.seek(SeekFrom::Start(start)).map_err(self.io("read", key))?;
        Ok((file, end - start))
    }

    /// The next `len` bytes of an object opened by [`Self::open_range`].
    fn read_next(&self, mut file: File, key: &str, len: u64) -> Result<(File, Bytes)> {
        let mut buf = vec![0; usize::try_from(len).unwrap_or(usize::MAX)];
        file.read_exact(&mut buf).map_err(self.io("read", key))?;
        Ok((file, Bytes::from(buf)))
    }

    fn list_blocking(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let mut out = Vec::new();
        let mut stack = vec![(self.root.clone(), String::new())];
        while let Some((dir, rel)) = stack.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(self.io("list", &rel)(e)),
            };
            for entry in entries {
                let entry = entry.map_err(self.io("list", &rel))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(TEMP_PREFIX) || name == LOCK_FILE {
                    continue;
                }
                let key = if rel.is_empty() { name } else { format!("{rel}/{name}") };
                // Only descend where keys below can still match the prefix.
                let meta = entry.metadata().map_err(self.io("list", &key))?;
                if meta.is_dir() {
                    if prefix.starts_with(&key) || key.starts_with(prefix) {
                        stack.push((entry.path(), key));
                    }
                } else if key.starts_with(prefix) {
                    out.push(ObjectMeta { etag: etag(&meta), size: meta.len(), key });
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}

/// The ETag of a file: a new one for every write, since every write creates a
/// new inode (link or rename of a fresh temp file).
fn etag(meta: &fs::Metadata) -> String {
    format!("{:x}-{:x}-{:x}.{:x}", meta.ino(), meta.len(), meta.mtime(), meta.mtime_nsec())
}

fn write_temp(dir: &Path, data: &[u8]) -> io::Result<PathBuf> {
    for attempt in 0..16u32 {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let temp = dir.join(format!("{TEMP_PREFIX}{}-{nanos:x}-{attempt}", std::process::id()));
        let mut file = match OpenOptions::new().write(true).create_new(true).open(&temp) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        };
        let written = crate::write_in_pieces::write_all(&mut file, data).and_then(|()| file.sync_all());
        if let Err(e) = written {
            let _ = fs::remove_file(&temp);
            return Err(e);
        }
        return Ok(temp);
    }
    Err(io::Error::new(io::ErrorKind::AlreadyExists, "could not pick a fresh temp file name"))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// How much of a ranged read one chunk carries.
const READ_CHUNK: u64 = 1024 * 1024;

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

#[async_trait]
impl ObjectStore for FsStore {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    async fn put(&self, key: &str, data: Bytes, condition: PutCondition) -> Result<PutOutcome> {
        let (store, key) = (self.clone(), key.to_owned());
        blocking(move || store.put_blocking(&key, &data, &condition)).await
    }

    async fn get(&self, key: &str) -> Result<Bytes> {
        let (store, key) = (self.clone(), key.to_owned());
        blocking(move || fs::read(store.path(&key)?).map(Bytes::from).map_err(store.io("read", &key))).await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        let (store, key) = (self.clone(), key.to_owned());
        blocking(move || store.read_range(&key, range)).await
    }

    async fn get_range_chunks(&self, key: &str, range: Range<u64>) -> Result<Chunks> {
        let (store, owned) = (self.clone(), key.to_owned());
        let opened = blocking(move || store.open_range(&owned, range)).await?;
        let (store, key) = (self.clone(), key.to_owned());
        Ok(Box::pin(futures::stream::unfold(Some(opened), move |state| {
            let (store, key) = (store.clone(), key.clone());
            async move {
                let (file, left) = state.filter(|(_, left)| *left > 0)?;
                let len = left.min(READ_CHUNK);
                match blocking(move || store.read_next(file, &key, len)).await {
                    Ok((file, bytes)) => Some((Ok(bytes), Some((file, left - len)))),
                    Err(e) => Some((Err(e), None)),
                }
            }
        })))
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        let (store, key) = (self.clone(), key.to_owned());
        blocking(move || match fs::metadata(store.path(&key)?) {
            Ok(meta) if meta.is_file() => Ok(Some(ObjectMeta { etag: etag(&meta), size: meta.len(), key })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(store.io("stat", &key)(e)),
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let (store, prefix) = (self.clone(), prefix.to_owned());
        blocking(move || store.list_blocking(&prefix)).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let (store, key) = (self.clone(), key.to_owned());
        blocking(move || match fs::remove_file(store.path(&key)?) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(store.io("delete", &key)(e)),
            _ => Ok(()),
        })
        .await
    }

    async fn retention(&self, key: &str) -> Result<Retention> {
        self.path(key)?;
        Ok(Retention::Unsupported {
            why: "a filesystem cannot lock files against their owner; use S3 Object Lock or Azure immutability"
                .to_owned(),
        })
    }
}
