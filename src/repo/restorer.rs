//! Restore: write a snapshot's files back, or one file to a stream. A damaged
//! blob costs only the file that holds it: the others are restored and the
//! damaged ones reported.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::StreamExt;

use super::Counted;
use super::arriving::Arriving;
use super::id::Id;
use super::intact::IntactReads;
use super::pack::{BlobEntry, PackError};
use super::repository::{Error as RepoError, Repository, pack_key};
use super::tree::{Node, NodeType, Tree};

/// What a restore did.
#[derive(Debug, Default)]
pub struct RestoreReport {
    pub files: u64,
    pub dirs: u64,
    pub bytes: u64,
    /// Files that could not be restored, and nodes that were not (a name that
    /// is not one, twice the same name), with why.
    pub damaged: Vec<(String, String)>,
}

/// Why a restore stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not in the snapshot")]
    NotInSnapshot { path: String },
    #[error("{path} is not a regular file (a directory or a symlink): --to-stdout restores one file")]
    NotAFile { path: String },
    #[error(transparent)]
    Repo(#[from] RepoError),
}

impl Error {
    /// The repository's store did not answer: worth trying again later.
    pub fn may_pass(&self) -> bool {
        matches!(self, Error::Repo(e) if e.may_pass())
    }
}

/// Loads and parses a tree blob.
pub async fn load_tree(repo: &Repository, id: &Id) -> Result<Tree, RepoError> {
    let bytes = repo.load_blob(id).await?;
    serde_json::from_slice(&bytes).map_err(|e| RepoError::Corrupt {
        location: repo.describe(),
        what: format!("tree {id}"),
        reason: e.to_string(),
    })
}

/// Why `name` cannot be a node's name, if it cannot: it must stay in its directory.
fn not_a_name(name: &str) -> Option<String> {
    let bad = name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']);
    bad.then(|| "a tree names a node with this, which is not a file name: not restored".to_owned())
}

/// Makes the directory `path`, or finds it there as a directory: never a
/// symlink to one, which would take what is restored below it elsewhere.
fn real_dir(path: &Path) -> std::io::Result<()> {
    match std::fs::create_dir(path) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let found = std::fs::symlink_metadata(path)?;
            if found.is_dir() {
                Ok(())
            } else {
                Err(std::io::Error::other("it exists and is not a directory (a symlink is never followed)"))
            }
        }
        other => other,
    }
}

/// A file being restored: written beside its final name until every blob is in.
struct PendingFile {
    node: Node,
    shown: String,
    damage: Option<String>,
}

/// What the windows share about one file: the window that writes its last
/// blob gives it its mode and time and its final name, through the descriptor
/// it already holds (one open per file instead of three: with thousands of
/// small invoices the opens were most of a restore's system time).
struct FileSlot {
    partial: PathBuf,
    path: PathBuf,
    size: u64,
    mode: u32,
    mtime: Option<std::time::SystemTime>,
    /// Blob writes still to come; the window that brings it to zero finishes the file.
    remaining: std::sync::atomic::AtomicUsize,
}

impl FileSlot {
    fn new(path: PathBuf, node: &Node) -> FileSlot {
        FileSlot {
            partial: path.with_file_name(format!(".{}.fenice-partial", node.name)),
            path,
            size: node.size,
            mode: node.mode,
            mtime: node.mtime.parse::<jiff::Timestamp>().ok().map(Into::into),
            remaining: node.content.len().into(),
        }
    }

    fn open(&self) -> std::io::Result<std::fs::File> {
        // A file made here needs no length: its blobs fill it from 0 to its size.
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&self.partial) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            made => return made,
        }
        let file = std::fs::OpenOptions::new().write(true).open(&self.partial)?;
        // NB: not truncated to zero, as another window may have written part of
        // it; but a partial file a killed restore left may be longer.
        file.set_len(self.size)?;
        Ok(file)
    }

    /// Gives the written file its mode and time, then its name.
    fn finish(&self, file: &std::fs::File) -> std::io::Result<()> {
        file.set_permissions(std::fs::Permissions::from_mode(self.mode))?;
        if let Some(mtime) = self.mtime {
            file.set_modified(mtime)?;
        }
        // NB: no fsync per file: thousands of them would dominate a restore, and what
        // runs on the restored data (PostgreSQL) syncs what it needs itself.
        std::fs::rename(&self.partial, &self.path)
    }
}

/// Where one blob's plaintext goes: file index and byte offset.
type Targets = Vec<(usize, u64)>;

/// Reads in flight at once; each holds at most one batch in memory. Each is a
/// pack as it arrives: 4 kept two writers busy as 8 did, with less at the peak
/// (26 tenants to a tmpfs, 2026-12-07: 90-91 MiB against 101-107 from the S3
/// server, 89-90 against 109-121 from a directory).
const PARALLEL_READS: usize = 4;
/// One read covers the blobs of a pack, unless this many unwanted bytes lie
/// between two of them: a second request costs less than carrying them.
const GAP_BYTES: u64 = 1024 * 1024;
/// A read hands its blobs to a writer this many bytes at a time, as they
/// arrive: a read of a whole pack is never held whole.
const BATCH_BYTES: usize = 2 * 1024 * 1024;
/// Reads of a window in a row that broke before a blob arrived whole.
const READ_ATTEMPTS: u32 = 3;

/// Restores the tree `root` into `target`. Files are planned first, then each
/// pack is read once and its blobs written where they belong, several packs at
/// a time; a damaged blob costs only the files that use it.
pub async fn restore(repo: &Repository, root: &Id, target: &Path) -> Result<RestoreReport, Error> {
    restore_with_progress(repo, root, target, Arc::default()).await
}

/// [`restore`], counting in `progress` the bytes of file content to write and written.
pub async fn restore_with_progress(
    repo: &Repository,
    root: &Id,
    target: &Path,
    progress: Arc<Counted>,
) -> Result<RestoreReport, Error> {
    let mut report = RestoreReport::default();
    let write_err = |path: &Path| {
        let path = path.to_owned();
        move |source| Error::Write { path, source }
    };
    std::fs::create_dir_all(target).map_err(write_err(target))?;
    let mut files: Vec<PendingFile> = Vec::new();
    let mut slots: Vec<FileSlot> = Vec::new();
    let mut dirs: Vec<(PathBuf, Node)> = Vec::new();
    let mut stack = vec![(*root, target.to_owned(), String::new())];
    while let Some((tree_id, dir, shown)) = stack.pop() {
        // A damaged directory listing costs what is below it, not the whole restore.
        let tree = match load_tree(repo, &tree_id).await {
            Ok(tree) => tree,
            Err(e @ (RepoError::Pack { .. } | RepoError::Corrupt { .. } | RepoError::MissingBlob { .. })) => {
                report.damaged.push((format!("{shown}/"), e.to_string()));
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let mut seen = HashSet::new();
        for node in tree.nodes {
            // NB: a holder of the key writes trees too: a name is one path
            // component, once per directory, or it is not restored at all.
            let shown = if shown.is_empty() { node.name.clone() } else { format!("{shown}/{}", node.name) };
            if let Some(why) = not_a_name(&node.name) {
                report.damaged.push((format!("{shown:?}"), why));
                continue;
            }
            if !seen.insert(node.name.clone()) {
                report.damaged.push((shown, "named twice in its directory: only the first is restored".into()));
                continue;
            }
            let path = dir.join(&node.name);
            match node.node_type {
                NodeType::Dir => {
                    real_dir(&path).map_err(write_err(&path))?;
                    report.dirs += 1;
                    if let Some(subtree) = node.subtree {
                        stack.push((subtree, path.clone(), shown));
                    }
                    dirs.push((path, node));
                }
                NodeType::Symlink => {
                    let _ = std::fs::remove_file(&path);
                    std::os::unix::fs::symlink(node.target.as_deref().unwrap_or_default(), &path)
                        .map_err(write_err(&path))?;
                }
                NodeType::File => {
                    slots.push(FileSlot::new(path, &node));
                    files.push(PendingFile { node, shown, damage: None });
                }
            }
        }
    }

    // Which blob goes where, grouped by the pack that holds it.
    let mut wanted: HashMap<Id, Targets> = HashMap::new();
    for (i, file) in files.iter().enumerate() {
        let mut offset = 0;
        for id in &file.node.content {
            wanted.entry(*id).or_default().push((i, offset));
            let size = repo.locate(id).map_or(0, |l| u64::from(l.entry.raw_length));
            offset += size;
        }
    }
    let mut by_pack: HashMap<Id, Vec<(BlobEntry, Targets)>> = HashMap::new();
    for (id, targets) in wanted {
        match repo.locate(&id) {
            Some(location) => by_pack.entry(location.pack).or_default().push((location.entry, targets)),
            None => {
                let missing = RepoError::MissingBlob { location: repo.describe(), id };
                for (i, _) in targets {
                    files[i].damage.get_or_insert_with(|| missing.to_string());
                }
            }
        }
    }
    progress.total.store(files.iter().map(|f| f.node.size).sum(), Ordering::Relaxed);
    let mut windows = Vec::new();
    for (pack, mut blobs) in by_pack {
        blobs.sort_by_key(|(entry, _)| entry.offset);
        let mut current: Vec<(BlobEntry, Targets)> = Vec::new();
        for blob in blobs {
            let end = current.last().map(|(e, _)| u64::from(e.offset) + u64::from(e.length));
            if end.is_some_and(|end| u64::from(blob.0.offset).saturating_sub(end) > GAP_BYTES) {
                windows.push((pack, std::mem::take(&mut current)));
            }
            current.push(blob);
        }
        if !current.is_empty() {
            windows.push((pack, current));
        }
    }
    windows.sort_by_key(|(pack, blobs)| (*pack, blobs.first().map(|(e, _)| e.offset)));
    let slots = Arc::new(slots);
    // NB: reads wait on the store, writes on the CPU and the disk: on a tmpfs,
    // 4 or 8 writers restored no faster than 2 on two cores.
    let writer_count = std::thread::available_parallelism().map_or(2, |n| n.get());
    let writers = Arc::new(tokio::sync::Semaphore::new(writer_count));
    let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut damage: Vec<(usize, String)> = Vec::new();
    let mut queue = windows.into_iter();
    let mut running = tokio::task::JoinSet::new();
    loop {
        while running.len() < PARALLEL_READS {
            let Some((pack, blobs)) = queue.next() else { break };
            let window = Window {
                reads: repo.reads().clone(),
                keys: repo.keys().clone(),
                location: repo.describe(),
                pack,
                blobs: Arc::new(blobs),
                slots: slots.clone(),
                writers: writers.clone(),
                stopped: stopped.clone(),
                progress: progress.clone(),
            };
            running.spawn(async move { window.restore().await });
        }
        let Some(done) = running.join_next().await else { break };
        let outcome = done.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        match outcome {
            Ok(hit) => damage.extend(hit),
            Err((path, source)) => {
                // NB: a full disk, a read-only target: no half-written file stays
                // behind, nor is one created after the clean-up by a writer still
                // running (a blocking task outlives its aborted caller, and holds
                // its permit to its end). Files already whole stay.
                stopped.store(true, Ordering::Relaxed);
                running.abort_all();
                let _ = writers.acquire_many(writer_count as u32).await;
                for slot in slots.iter() {
                    let _ = std::fs::remove_file(&slot.partial);
                }
                return Err(Error::Write { path, source });
            }
        }
    }
    for (i, why) in damage {
        files[i].damage.get_or_insert(why);
    }

    for (file, slot) in files.into_iter().zip(slots.iter()) {
        if let Some(why) = file.damage {
            let _ = std::fs::remove_file(&slot.partial);
            report.damaged.push((file.shown, why));
            continue;
        }
        if file.node.content.is_empty() {
            // An empty file has no blob whose window would finish it.
            let done = slot.open().and_then(|f| slot.finish(&f));
            done.map_err(write_err(&slot.path))?;
        }
        report.files += 1;
        report.bytes += file.node.size;
    }
    // Directory times last: writing into a directory changes its mtime.
    for (path, node) in dirs.iter().rev() {
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(node.mode));
        set_mtime(path, &node.mtime);
    }
    report.damaged.sort();
    Ok(report)
}

/// One window of a pack and the files its blobs go to.
struct Window {
    reads: IntactReads,
    keys: super::crypto::Keys,
    location: String,
    pack: Id,
    blobs: Arc<Vec<(BlobEntry, Targets)>>,
    slots: Arc<Vec<FileSlot>>,
    writers: Arc<tokio::sync::Semaphore>,
    /// Set when the restore stops on an error: writers still running end.
    stopped: Arc<std::sync::atomic::AtomicBool>,
    progress: Arc<Counted>,
}

/// A blob of a window (its index there) that could not be written, and why.
type Damaged = Vec<(usize, String)>;

impl Window {
    /// Reads the window and writes each of its blobs to their files; when some
    /// fail authentication and the pack was written over, writes them all again
    /// from the pack's intact version. Returns the files hit by damaged blobs; an
    /// I/O error writing the target stops the restore.
    async fn restore(self) -> Result<Vec<(usize, String)>, (PathBuf, std::io::Error)> {
        let all: Vec<usize> = (0..self.blobs.len()).collect();
        let mut damaged = self.write(all).await?;
        if !damaged.is_empty() && self.reads.recover(&pack_key(&self.pack)).await.unwrap_or(false) {
            // NB: only the damaged blobs again: the others have counted down their files.
            damaged = self.write(damaged.into_iter().map(|(blob, _)| blob).collect()).await?;
        }
        let files = |(blob, why): (usize, String)| self.blobs[blob].1.iter().map(move |(i, _)| (*i, why.clone()));
        Ok(damaged.into_iter().flat_map(files).collect())
    }

    /// Writes the window's blobs numbered in `which` to their files, finishing
    /// each file whose last blob this was. A read that breaks part way is
    /// taken up again at the first blob not yet written.
    async fn write(&self, mut which: Vec<usize>) -> Result<Damaged, (PathBuf, std::io::Error)> {
        which.sort_by_key(|&b| self.blobs[b].0.offset);
        let mut rest = std::collections::VecDeque::from(which);
        let mut damaged = Vec::new();
        let mut broken = 0;
        while let Some(&first) = rest.front() {
            let start = u64::from(self.blobs[first].0.offset);
            let end = rest.iter().map(|&b| u64::from(self.blobs[b].0.offset) + u64::from(self.blobs[b].0.length));
            let range = start..end.max().unwrap_or(start);
            let why = match self.reads.get_range_chunks(&pack_key(&self.pack), range).await {
                Ok(chunks) => match self.write_arriving(Arriving::new(chunks, start), &mut rest, &mut damaged).await? {
                    Read::Whole => break,
                    Read::Broke { progressed, why } => {
                        broken = if progressed { 1 } else { broken + 1 };
                        if broken < READ_ATTEMPTS {
                            continue;
                        }
                        why
                    }
                },
                Err(e) => RepoError::from(e).to_string(),
            };
            damaged.extend(rest.drain(..).map(|b| (b, why.clone())));
        }
        Ok(damaged)
    }

    /// Writes the blobs of `rest` as they arrive, taking each from `rest` once
    /// it went to a writer (or was found cut off by the pack's end).
    async fn write_arriving(
        &self,
        mut arriving: Arriving,
        rest: &mut std::collections::VecDeque<usize>,
        damaged: &mut Damaged,
    ) -> Result<Read, (PathBuf, std::io::Error)> {
        let mut progressed = false;
        // NB: one buffer for the whole read: a fresh one per batch was mapped
        // and faulted in anew each time (main.rs returns large ones to the system).
        let mut batch = Vec::with_capacity(BATCH_BYTES);
        loop {
            batch.clear();
            let mut placed = Vec::new();
            let mut broke = None;
            while let Some(&b) = rest.front() {
                let entry = &self.blobs[b].0;
                let full = !batch.is_empty() && batch.len() + entry.length as usize > BATCH_BYTES;
                if full || self.stopped.load(Ordering::Relaxed) {
                    break;
                }
                let at = batch.len();
                match arriving.append(u64::from(entry.offset), entry.length as usize, &mut batch).await {
                    Ok(true) => {
                        rest.pop_front();
                        placed.push((b, at));
                    }
                    Ok(false) => {
                        rest.pop_front();
                        batch.truncate(at);
                        damaged.push((b, damage(&self.location, self.pack, PackError::TooShort)));
                    }
                    Err(e) => {
                        batch.truncate(at);
                        broke = Some(RepoError::from(e).to_string());
                        break;
                    }
                }
            }
            progressed |= !placed.is_empty();
            let stopped = self.stopped.load(Ordering::Relaxed);
            if !placed.is_empty() {
                let (hit, back) = self.write_batch(batch, placed).await?;
                damaged.extend(hit);
                batch = back;
            }
            match broke {
                Some(why) => return Ok(Read::Broke { progressed, why }),
                None if rest.is_empty() || stopped => return Ok(Read::Whole),
                None => {}
            }
        }
    }

    /// Opens the blobs `placed` in `batch` (blob, where it starts) and writes
    /// them to their files, on a writer thread; gives the buffer back.
    async fn write_batch(
        &self,
        mut batch: Vec<u8>,
        placed: Vec<(usize, usize)>,
    ) -> Result<(Damaged, Vec<u8>), (PathBuf, std::io::Error)> {
        let (keys, blobs, slots, progress) =
            (self.keys.clone(), self.blobs.clone(), self.slots.clone(), self.progress.clone());
        let (location, pack) = (self.location.clone(), self.pack);
        let writer = self.writers.clone().acquire_owned().await.expect("the writers' semaphore is never closed");
        let stopped = self.stopped.clone();
        tokio::task::spawn_blocking(move || {
            let _writer = writer;
            let mut damaged = Vec::new();
            // A file's blobs mostly sit next to each other in a pack: keeping the
            // last file open saves reopening it, and keeps one descriptor per read
            // however many small files it holds.
            let mut open: Option<(usize, std::fs::File)> = None;
            let mut scratch = Vec::new();
            for (b, at) in placed {
                if stopped.load(Ordering::Relaxed) {
                    break;
                }
                let (entry, targets) = &blobs[b];
                let sealed = &mut batch[at..at + entry.length as usize];
                let plaintext = match super::pack::open_blob_in_place(&keys, entry, sealed, &mut scratch) {
                    Ok(plaintext) => plaintext,
                    Err(source) => {
                        damaged.push((b, damage(&location, pack, source)));
                        continue;
                    }
                };
                for &(i, offset) in targets {
                    let slot = &slots[i];
                    let failed = |e| (slot.path.clone(), e);
                    if open.as_ref().is_none_or(|(last, _)| *last != i) {
                        open = Some((i, slot.open().map_err(failed)?));
                    }
                    let (_, file) = open.as_ref().expect("opened above");
                    // NB: a blob may be 8 MiB.
                    crate::write_in_pieces::write_all_at(file, plaintext, offset).map_err(failed)?;
                    progress.done.fetch_add(plaintext.len() as u64, Ordering::Relaxed);
                    if slot.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                        slot.finish(file).map_err(failed)?;
                    }
                }
            }
            Ok((damaged, batch))
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }
}

/// Why a blob of `pack` could not be restored.
fn damage(location: &str, pack: Id, source: PackError) -> String {
    RepoError::Pack { location: location.to_owned(), pack, source }.to_string()
}

/// How a read of a window ended.
enum Read {
    /// Every blob asked for went to a writer or was found cut off by the
    /// pack's end, or the restore stopped.
    Whole,
    /// The read broke; `progressed` if some blob arrived whole before.
    Broke { progressed: bool, why: String },
}

fn set_mtime(path: &Path, mtime: &str) {
    if let (Ok(t), Ok(dir)) = (mtime.parse::<jiff::Timestamp>(), std::fs::File::open(path)) {
        let _ = dir.set_modified(t.into());
    }
}

/// Writes one file of the snapshot to `out`, e.g. a database dump piped into
/// `psql` or `pg_restore`.
pub async fn write_file(repo: &Repository, root: &Id, path: &str, out: &mut impl Write) -> Result<u64, Error> {
    let mut tree = load_tree(repo, root).await?;
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        let node = tree
            .nodes
            .into_iter()
            .find(|n| n.name == *part)
            .ok_or_else(|| Error::NotInSnapshot { path: path.to_owned() })?;
        if i + 1 < parts.len() {
            let subtree = node.subtree.ok_or_else(|| Error::NotInSnapshot { path: path.to_owned() })?;
            tree = load_tree(repo, &subtree).await?;
            continue;
        }
        if node.node_type != NodeType::File {
            return Err(Error::NotAFile { path: path.to_owned() });
        }
        let mut written = 0;
        // Blobs are fetched several at a time, in order, so a remote store's
        // latency is paid once per batch rather than once per chunk.
        let mut blobs = futures::stream::iter(&node.content).map(|id| repo.load_blob(id)).buffered(PARALLEL_READS);
        while let Some(data) = blobs.next().await {
            let data = data?;
            out.write_all(&data).map_err(|source| Error::Write { path: PathBuf::from("<stdout>"), source })?;
            written += data.len() as u64;
        }
        return Ok(written);
    }
    Err(Error::NotInSnapshot { path: path.to_owned() })
}
