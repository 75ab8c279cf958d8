//! The documents directory: one file per invoice, named as SdI knows it.
//!
//! A document is written to a temporary file, synced, and renamed into place,
//! and the directory is synced, so a crash leaves either the whole document or
//! none. NB: a file already carrying the name is never overwritten: it can only
//! be a leftover of an issue whose commit failed (its number was not used), or a
//! document newer than a restored database; either way it is moved into
//! `orphaned/` for a person to look at, and a warning is logged.

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Where superseded files go, below the documents directory.
pub const ORPHANED_DIR: &str = "orphaned";

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("documents: {step} {}", path.display())]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("documents: {name:?} is not a document name")]
    BadName { name: String },

    #[error("documents: the file task stopped")]
    Task(#[source] tokio::task::JoinError),
}

/// The documents directory of one tenant.
#[derive(Clone, Debug)]
pub struct Documents {
    dir: PathBuf,
}

impl Documents {
    /// Opens (creating it if needed) the directory.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io { step: "creating", path: dir.clone(), source })?;
        Ok(Self { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of document `name`.
    pub fn path(&self, name: &str) -> Result<PathBuf> {
        check_name(name)?;
        Ok(self.dir.join(name))
    }

    /// Writes document `name` durably (see the module doc).
    pub async fn write(&self, name: &str, contents: Vec<u8>) -> Result<()> {
        let path = self.path(name)?;
        let dir = self.dir.clone();
        blocking(move || write_durably(&dir, &path, &contents)).await
    }

    /// Reads document `name`.
    pub async fn read(&self, name: &str) -> Result<Vec<u8>> {
        let path = self.path(name)?;
        tokio::fs::read(&path).await.map_err(|source| Error::Io { step: "reading", path, source })
    }

    /// Removes document `name`; a missing file is fine.
    pub async fn remove(&self, name: &str) -> Result<()> {
        let path = self.path(name)?;
        let dir = self.dir.clone();
        blocking(move || {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(source) => return Err(Error::Io { step: "removing", path, source }),
            }
            sync_dir(&dir)
        })
        .await
    }
}

/// A document name is a plain file name: no separator, no dot files.
fn check_name(name: &str) -> Result<()> {
    let plain = !name.is_empty()
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if plain { Ok(()) } else { Err(Error::BadName { name: name.to_string() }) }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(Error::Task)?
}

fn write_durably(dir: &Path, path: &Path, contents: &[u8]) -> Result<()> {
    let io = |step: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { step, path, source }
    };
    if path.exists() {
        set_aside(dir, path)?;
    }
    let mut file =
        tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir).map_err(io("creating a temporary file in", dir))?;
    file.write_all(contents).map_err(io("writing", file.path()))?;
    file.as_file().sync_all().map_err(io("syncing", file.path()))?;
    // NB: persist_noclobber: a file that appeared meanwhile is not replaced.
    file.persist_noclobber(path).map_err(|e| Error::Io {
        step: "renaming into",
        path: path.to_path_buf(),
        source: e.error,
    })?;
    sync_dir(dir)
}

/// Moves an existing file out of the way, into `orphaned/NAME.<nanoseconds>`.
fn set_aside(dir: &Path, path: &Path) -> Result<()> {
    let orphans = dir.join(ORPHANED_DIR);
    std::fs::create_dir_all(&orphans).map_err(|source| Error::Io {
        step: "creating",
        path: orphans.clone(),
        source,
    })?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let stamp = jiff::Timestamp::now().as_nanosecond();
    let target = orphans.join(format!("{name}.{stamp}"));
    std::fs::rename(path, &target).map_err(|source| Error::Io {
        step: "setting aside",
        path: path.to_path_buf(),
        source,
    })?;
    tracing::warn!(
        file = %path.display(),
        moved_to = %target.display(),
        "a document with this name existed without an invoice row (an issue that failed to commit, \
         or a documents directory newer than the database); set it aside"
    );
    sync_dir(&orphans)?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|source| Error::Io {
        step: "syncing",
        path: dir.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_read_back_and_an_existing_file_is_set_aside() {
        let tmp = tempfile::tempdir().unwrap();
        let docs = Documents::open(tmp.path().join("docs")).unwrap();
        docs.write("IT01234567890_00001.xml", b"first".to_vec()).await.unwrap();
        assert_eq!(docs.read("IT01234567890_00001.xml").await.unwrap(), b"first");
        docs.write("IT01234567890_00001.xml", b"second".to_vec()).await.unwrap();
        assert_eq!(docs.read("IT01234567890_00001.xml").await.unwrap(), b"second");
        let orphans: Vec<_> = std::fs::read_dir(docs.dir().join(ORPHANED_DIR)).unwrap().collect();
        assert_eq!(orphans.len(), 1);
        let names: Vec<_> = std::fs::read_dir(docs.dir()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 2, "no temporary file left: {names:?}");
        docs.remove("IT01234567890_00001.xml").await.unwrap();
        docs.remove("IT01234567890_00001.xml").await.unwrap();
        assert!(docs.read("IT01234567890_00001.xml").await.is_err());
    }

    #[test]
    fn names_are_plain_file_names() {
        assert!(check_name("IT01234567890_0000A.xml").is_ok());
        for bad in ["", "../x.xml", "a/b.xml", ".tmp-1", "x y.xml"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
