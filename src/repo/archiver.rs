//! Backup: read files (or a stream) once, cut them into content-defined chunks,
//! and store them in one or more repositories, each under its own keys.
//!
//! One thread reads, chunks and hashes; worker threads compress, seal and pack
//! the chunks a repository does not have yet. Memory stays bounded by the
//! channel between them, whatever the size of the input.

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

use tokio::runtime::Handle;

use super::chunker::Chunker;
use super::id::Id;
use super::lock;
use super::pack::BlobType;
use super::repository::{Error as RepoError, Repository};
use super::restorer::load_tree;
use super::tree::{Node, NodeType, Snapshot, Totals, Tree};

/// Chunks waiting to be sealed, at most; with 8 MiB chunks that bounds the
/// memory in flight to some tens of MiB.
const QUEUE_DEPTH: usize = 8;

/// What to record with the snapshot.
#[derive(Clone, Debug, Default)]
pub struct BackupOptions {
    /// Read every file even when the previous snapshot of the same paths says
    /// it is unchanged (same size and modification time).
    pub force_read: bool,
    pub host: String,
    pub tenant: Option<String>,
    pub tags: Vec<String>,
    pub annotations: Annotations,
}

/// What to back up.
pub enum Source {
    /// Files and directories, each at the snapshot's root under its own name.
    Paths(Vec<PathBuf>),
    /// Named entries at the snapshot's root: streams and paths together, e.g. a
    /// tenant's database dump and its documents directory.
    Entries(Vec<Entry>),
}

/// One entry of [`Source::Entries`].
pub enum Entry {
    /// A stream, stored as a single file of this name.
    Stream { name: String, reader: Box<dyn Read + Send> },
    /// A file or directory, stored under this name.
    Path { name: String, path: PathBuf },
}

impl Entry {
    fn name(&self) -> &str {
        match self {
            Entry::Stream { name, .. } | Entry::Path { name, .. } => name,
        }
    }
}

impl Source {
    /// One stream, stored as a single file called `name`.
    pub fn stream(name: String, reader: Box<dyn Read + Send>) -> Self {
        Source::Entries(vec![Entry::Stream { name, reader }])
    }

    /// The paths the snapshot records, also used to find a parent snapshot.
    fn shown(&self) -> Vec<String> {
        match self {
            Source::Paths(paths) => shown_paths(paths),
            Source::Entries(entries) => entries.iter().map(|e| e.name().to_owned()).collect(),
        }
    }
}

/// What went wrong in a backup.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: two paths given end in the same name {name:?}; back them up separately")]
    DuplicateName { path: PathBuf, name: String },
    #[error("{path} is not a file, directory or symlink")]
    Unsupported { path: PathBuf },
    #[error("recording the snapshot's annotations")]
    Annotate {
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The outcome for one repository.
#[derive(Debug)]
pub struct CopyResult {
    pub repository: String,
    pub result: Result<(Id, Snapshot), RepoError>,
}

/// Progress counters, readable while a backup runs.
#[derive(Debug, Default)]
pub struct Progress {
    pub bytes_read: AtomicU64,
    /// Bytes of files unchanged since the parent snapshot, not read again.
    pub bytes_skipped: AtomicU64,
    pub files: AtomicU64,
    /// Sockets, FIFOs and devices met inside directories: not backed up.
    pub special_skipped: AtomicU64,
}

struct Job {
    repo: usize,
    id: Id,
    data: Arc<Vec<u8>>,
}

/// Per-repository state shared with the workers.
struct Target {
    repo: Arc<Repository>,
    failed: Mutex<Option<RepoError>>,
    new_blobs: AtomicU64,
    added_bytes: AtomicU64,
}

impl Target {
    fn ok(&self) -> bool {
        self.failed.lock().unwrap_or_else(|e| e.into_inner()).is_none()
    }

    fn fail(&self, error: RepoError) {
        self.failed.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(error);
    }
}

/// Backs `source` up into every repository in `repos` with one read of the
/// source. A repository that fails does not stop the others; each gets its
/// own result. Runs on blocking threads; call from a Tokio runtime.
pub async fn backup(
    repos: Vec<Arc<Repository>>,
    source: Source,
    options: BackupOptions,
    progress: Arc<Progress>,
) -> Result<Vec<CopyResult>, Error> {
    backup_annotated(repos, source, options, progress, std::future::ready(Ok(Annotations::new()))).await
}

/// Annotations a snapshot records.
pub type Annotations = std::collections::BTreeMap<String, serde_json::Value>;

/// [`backup`], with more annotations computed while the source is read (a
/// tenant backup's verification record, taken in a second database session
/// while pg_dump streams): they join the snapshot when both are done, and a
/// failure to compute them fails the backup before any snapshot is saved.
pub async fn backup_annotated(
    repos: Vec<Arc<Repository>>,
    source: Source,
    mut options: BackupOptions,
    progress: Arc<Progress>,
    annotate: impl Future<Output = Result<Annotations, Box<dyn std::error::Error + Send + Sync>>>,
) -> Result<Vec<CopyResult>, Error> {
    let handle = Handle::current();
    let mut locks = Vec::new();
    let mut list = Vec::new();
    for repo in repos {
        // A shared lock keeps prune away while this backup may reference old
        // packs; the index is read again under it, as a prune may have run
        // since it was loaded.
        let lock = match lock::acquire(&repo, false).await {
            Ok(lock) => match repo.refresh_index().await {
                Ok(()) => Ok(lock),
                Err(e) => {
                    lock.release(&repo).await;
                    Err(e)
                }
            },
            Err(e) => Err(e),
        };
        if lock.is_ok() {
            // Reuse what an interrupted run uploaded; a failure here shows again below.
            let _ = repo.adopt_unindexed_packs().await;
        }
        let target = Target { repo, failed: Mutex::new(None), new_blobs: 0.into(), added_bytes: 0.into() };
        match lock {
            Ok(lock) => locks.push((list.len(), lock)),
            Err(e) => target.fail(e),
        }
        list.push(target);
    }
    let targets: Arc<Vec<Target>> = Arc::new(list);
    let walks_paths = match &source {
        Source::Paths(_) => true,
        Source::Entries(entries) => entries.iter().any(|e| matches!(e, Entry::Path { .. })),
    };
    let (mut parents, mut previous) = (Vec::new(), Vec::new());
    for target in targets.iter() {
        // NB: a stream's backup (a tenant's dump) too, though it has no files
        // to reuse: its previous keeps the tenant's backups in order when the
        // clock was set back. That reads each snapshot of the repository once
        // per open repository, as the retention applied after a tenant's
        // backup does.
        let follows = match target.ok() {
            true => follows(&target.repo, &source.shown(), &options).await,
            false => Follows::default(),
        };
        parents.push(match (&follows.parent, walks_paths && !options.force_read) {
            (Some(snapshot), true) => load_tree(&target.repo, &snapshot.tree).await.ok(),
            _ => None,
        });
        previous.push(follows.previous);
    }
    let walk = {
        let targets = targets.clone();
        let handle = handle.clone();
        tokio::task::spawn_blocking(move || run(&handle, &targets, source, parents, &progress))
    };
    let held = locks.into_iter().map(|(i, lock)| (&*targets[i].repo, lock)).collect();
    lock::hold(held, lock::REFRESH_EVERY, async {
        let (walked, annotated) = tokio::join!(walk, annotate);
        let walked = walked.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        match (walked, annotated) {
            (Ok(walked), Ok(annotations)) => {
                options.annotations.extend(annotations);
                Ok(save_snapshots(&targets, walked, &previous, &options).await)
            }
            (Err(e), _) => Err(e),
            (Ok(_), Err(source)) => Err(Error::Annotate { source }),
        }
    })
    .await
}

/// The paths a snapshot records for `paths`.
fn shown_paths(paths: &[PathBuf]) -> Vec<String> {
    paths.iter().map(|p| fs::canonicalize(p).unwrap_or_else(|_| p.clone()).display().to_string()).collect()
}

/// What a new snapshot follows in its repository.
#[derive(Default)]
struct Follows {
    /// The newest of its series: the tenant's snapshots, or without a tenant
    /// those of the same paths and host.
    previous: Option<Id>,
    /// The newest snapshot of the same paths (and tenant, or host when there
    /// is no tenant): files unchanged since it are not read again.
    parent: Option<Snapshot>,
}

async fn follows(repo: &Repository, shown: &[String], options: &BackupOptions) -> Follows {
    let Ok(snapshots) = repo.snapshots().await else { return Follows::default() };
    let same_paths = |s: &Snapshot| {
        s.paths == shown && s.tenant == options.tenant && (options.tenant.is_some() || s.host == options.host)
    };
    let parent = super::tree::newest(snapshots.iter().filter(|(_, s)| same_paths(s)));
    let previous = match &options.tenant {
        Some(tenant) => super::tree::newest(snapshots.iter().filter(|(_, s)| s.tenant.as_ref() == Some(tenant))),
        None => parent,
    };
    Follows { previous: previous.map(|(id, _)| *id), parent: parent.map(|(_, s)| s.clone()) }
}

/// The node called `name` in a parent tree (trees are sorted by name).
fn parent_node(tree: Option<&Tree>, name: &str) -> Option<Node> {
    let tree = tree?;
    tree.nodes.binary_search_by(|n| n.name.as_str().cmp(name)).ok().map(|i| tree.nodes[i].clone())
}

/// Saves one snapshot per repository that did not fail.
async fn save_snapshots(
    targets: &[Target],
    walked: Walked,
    previous: &[Option<Id>],
    options: &BackupOptions,
) -> Vec<CopyResult> {
    let (roots, paths, mut totals) = walked;
    let mut results = Vec::new();
    for (i, target) in targets.iter().enumerate() {
        let repository = target.repo.describe();
        let error = target.failed.lock().unwrap_or_else(|e| e.into_inner()).take();
        let result = match error {
            Some(e) => Err(e),
            None => {
                totals.new_blobs = target.new_blobs.load(Ordering::Relaxed);
                totals.added_bytes = target.added_bytes.load(Ordering::Relaxed);
                let snapshot = Snapshot {
                    time: jiff::Timestamp::now().to_string(),
                    host: options.host.clone(),
                    tenant: options.tenant.clone(),
                    tags: options.tags.clone(),
                    paths: paths.clone(),
                    tree: roots[i],
                    totals: totals.clone(),
                    annotations: options.annotations.clone(),
                    previous: previous[i],
                };
                target.repo.save_snapshot(&snapshot).await.map(|id| (id, snapshot))
            }
        };
        results.push(CopyResult { repository, result });
    }
    results
}

type Walked = (Vec<Id>, Vec<String>, Totals);

fn run(
    handle: &Handle,
    targets: &Arc<Vec<Target>>,
    source: Source,
    parents: Vec<Option<Tree>>,
    progress: &Progress,
) -> Result<Walked, Error> {
    let (tx, rx) = sync_channel::<Job>(QUEUE_DEPTH);
    let rx = Arc::new(Mutex::new(rx));
    let workers: Vec<_> = (0..worker_count())
        .map(|_| {
            let (rx, targets, handle) = (rx.clone(), targets.clone(), handle.clone());
            std::thread::spawn(move || seal_worker(&handle, &targets, &rx))
        })
        .collect();
    let chunker = Chunker::new(targets[0].repo.config().chunker);
    let mut walker = Walker { handle, targets, tx, totals: Totals::default(), progress, chunker };
    let walked = walker.walk_source(source, &parents);
    let dirs = walker.totals.dirs;
    drop(walker);
    for worker in workers {
        let _ = worker.join();
    }
    let (nodes, paths) = walked?;
    // Trees are saved after the data they point to has been queued and packed.
    let roots = (0..targets.len()).map(|r| save_tree(handle, &targets[r], nodes[r].clone())).collect();
    let totals = Totals {
        files: progress.files.load(Ordering::Relaxed),
        dirs,
        bytes: progress.bytes_read.load(Ordering::Relaxed) + progress.bytes_skipped.load(Ordering::Relaxed),
        ..Totals::default()
    };
    Ok((roots, paths, totals))
}

fn worker_count() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 8)
}

fn seal_worker(handle: &Handle, targets: &[Target], rx: &Mutex<Receiver<Job>>) {
    loop {
        let job = match rx.lock().unwrap_or_else(|e| e.into_inner()).recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        let target = &targets[job.repo];
        if !target.ok() {
            continue;
        }
        match handle.block_on(target.repo.save_blob_with_id(BlobType::Data, job.id, &job.data)) {
            Ok((_, 0)) => {}
            Ok((_, added)) => {
                target.new_blobs.fetch_add(1, Ordering::Relaxed);
                target.added_bytes.fetch_add(added, Ordering::Relaxed);
            }
            Err(e) => target.fail(e),
        }
    }
}

/// Saves a tree blob (and counts it); on failure the repository's copy fails.
fn save_tree(handle: &Handle, target: &Target, mut nodes: Vec<Node>) -> Id {
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    // NB: Tree serializes infallibly; only the store can fail.
    let json = serde_json::to_vec(&Tree { nodes }).expect("tree serializes");
    let id = target.repo.keys().blob_id(&json);
    if target.ok() {
        match handle.block_on(target.repo.save_blob_with_id(BlobType::Tree, id, &json)) {
            Ok((_, added)) if added > 0 => {
                target.new_blobs.fetch_add(1, Ordering::Relaxed);
                target.added_bytes.fetch_add(added, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(e) => target.fail(e),
        }
    }
    id
}

struct Walker<'a> {
    handle: &'a Handle,
    targets: &'a Arc<Vec<Target>>,
    tx: SyncSender<Job>,
    totals: Totals,
    progress: &'a Progress,
    chunker: Chunker,
}

/// Nodes per repository (ids differ between repositories, so trees do too).
type NodesPerRepo = Vec<Vec<Node>>;

impl Walker<'_> {
    fn repos(&self) -> usize {
        self.targets.len()
    }

    fn walk_source(&mut self, source: Source, parents: &[Option<Tree>]) -> Result<(NodesPerRepo, Vec<String>), Error> {
        let shown = source.shown();
        let entries: Vec<Entry> = match source {
            Source::Entries(entries) => entries,
            Source::Paths(paths) => {
                let mut entries = Vec::new();
                for path in paths {
                    // `.` or `backup/..` are named after the directory they stand for.
                    let canonical = fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
                    let name =
                        canonical.file_name().map_or_else(|| "root".to_owned(), |n| n.to_string_lossy().into_owned());
                    entries.push(Entry::Path { name, path });
                }
                entries
            }
        };
        let mut nodes = vec![Vec::new(); self.repos()];
        let mut names = std::collections::BTreeSet::new();
        for entry in entries {
            let name = entry.name().to_owned();
            if !names.insert(name.clone()) {
                let path = match entry {
                    Entry::Path { path, .. } => path,
                    Entry::Stream { .. } => PathBuf::from(&name),
                };
                return Err(Error::DuplicateName { path, name });
            }
            let made = match entry {
                Entry::Stream { name, reader } => self.stream_node(name, reader)?,
                Entry::Path { name, path } => {
                    let previous: Vec<Option<Node>> = parents.iter().map(|t| parent_node(t.as_ref(), &name)).collect();
                    self.node(&path, name, &previous)?
                }
            };
            for (r, node) in made.into_iter().enumerate() {
                nodes[r].push(node);
            }
        }
        Ok((nodes, shown))
    }

    /// One node per repository for a stream stored as the file `name`.
    fn stream_node(&mut self, name: String, reader: Box<dyn Read + Send>) -> Result<Vec<Node>, Error> {
        let (content, size) = self.store_content(reader, &PathBuf::from(&name), None)?;
        self.progress.files.fetch_add(1, Ordering::Relaxed);
        let now = jiff::Timestamp::now().to_string();
        Ok(content
            .into_iter()
            .map(|ids| Node {
                name: name.clone(),
                node_type: NodeType::File,
                mode: 0o600,
                mtime: now.clone(),
                size,
                content: ids,
                subtree: None,
                target: None,
            })
            .collect())
    }

    /// One node per repository for `path`; `previous` holds the same path's node
    /// in each repository's parent snapshot, if any.
    fn node(&mut self, path: &Path, name: String, previous: &[Option<Node>]) -> Result<Vec<Node>, Error> {
        let read = |source| Error::Read { path: path.to_owned(), source };
        let meta = fs::symlink_metadata(path).map_err(read)?;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| jiff::Timestamp::try_from(t).ok())
            .map_or_else(String::new, |t| t.to_string());
        let base = Node {
            name,
            node_type: NodeType::File,
            mode: meta.permissions().mode() & 0o7777,
            mtime,
            size: 0,
            content: Vec::new(),
            subtree: None,
            target: None,
        };
        let repos = self.repos();
        if meta.is_symlink() {
            let target = fs::read_link(path).map_err(read)?.to_string_lossy().into_owned();
            return Ok(vec![Node { node_type: NodeType::Symlink, target: Some(target), ..base }; repos]);
        }
        if meta.is_file() {
            if let Some(reused) = self.unchanged(&base, meta.len(), previous) {
                self.progress.files.fetch_add(1, Ordering::Relaxed);
                self.progress.bytes_skipped.fetch_add(meta.len(), Ordering::Relaxed);
                return Ok(reused);
            }
            let file = fs::File::open(path).map_err(read)?;
            let (content, size) = self.store_content(Box::new(file), path, Some(meta.len()))?;
            self.progress.files.fetch_add(1, Ordering::Relaxed);
            return Ok(content.into_iter().map(|ids| Node { size, content: ids, ..base.clone() }).collect());
        }
        if meta.is_dir() {
            self.totals.dirs += 1;
            let previous_trees: Vec<Option<Tree>> = previous
                .iter()
                .zip(self.targets.iter())
                .map(|(node, target)| {
                    let subtree = node.as_ref().filter(|n| n.node_type == NodeType::Dir)?.subtree?;
                    self.handle.block_on(load_tree(&target.repo, &subtree)).ok()
                })
                .collect();
            let mut children = vec![Vec::new(); repos];
            let mut entries: Vec<_> = fs::read_dir(path).map_err(read)?.collect::<Result<_, _>>().map_err(read)?;
            entries.sort_by_key(|e| e.file_name());
            for entry in entries {
                let child_name = entry.file_name().to_string_lossy().into_owned();
                let child_previous: Vec<Option<Node>> =
                    previous_trees.iter().map(|t| parent_node(t.as_ref(), &child_name)).collect();
                match self.node(&entry.path(), child_name, &child_previous) {
                    Ok(nodes) => nodes.into_iter().enumerate().for_each(|(r, n)| children[r].push(n)),
                    Err(Error::Unsupported { .. }) => {
                        // Sockets, FIFOs and devices hold no data to keep; counted, so the run says so.
                        self.progress.special_skipped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            return Ok((0..repos)
                .map(|r| {
                    let subtree = save_tree(self.handle, &self.targets[r], std::mem::take(&mut children[r]));
                    Node { node_type: NodeType::Dir, subtree: Some(subtree), ..base.clone() }
                })
                .collect());
        }
        Err(Error::Unsupported { path: path.to_owned() })
    }

    /// The parent snapshot's nodes, when the file has the same size and
    /// modification time there in every repository and all its blobs are still
    /// stored: then it is not read again.
    fn unchanged(&self, base: &Node, size: u64, previous: &[Option<Node>]) -> Option<Vec<Node>> {
        previous
            .iter()
            .zip(self.targets.iter())
            .map(|(node, target)| {
                let node = node.as_ref()?;
                let same = node.node_type == NodeType::File
                    && node.size == size
                    && node.mtime == base.mtime
                    && !base.mtime.is_empty()
                    && node.content.iter().all(|id| target.repo.has_blob(id));
                same.then(|| Node { content: node.content.clone(), size, ..base.clone() })
            })
            .collect()
    }

    /// Chunks a stream and queues its new chunks; returns the chunk ids per
    /// repository and the byte count.
    fn store_content(
        &mut self,
        mut reader: Box<dyn Read + Send>,
        path: &Path,
        size_hint: Option<u64>,
    ) -> Result<(Vec<Vec<Id>>, u64), Error> {
        let min = self.targets[0].repo.config().chunker.min_size as usize;
        let read = |source| Error::Read { path: path.to_owned(), source };
        let mut content = vec![Vec::new(); self.repos()];
        let mut size = 0;
        // Most files (invoices, receipts) are below the smallest chunk: the
        // chunker would return them whole, so skip its 8 MiB buffer.
        if size_hint.is_some_and(|n| n <= min as u64) {
            let mut head = Vec::with_capacity(size_hint.unwrap_or(0) as usize);
            (&mut reader).take(min as u64 + 1).read_to_end(&mut head).map_err(read)?;
            if head.len() <= min {
                if !head.is_empty() {
                    size = head.len() as u64;
                    queue_chunk(self.targets, &self.tx, self.progress, head, &mut content);
                }
                return Ok((content, size));
            }
            // It grew while we read: chunk it after all, from the start.
            reader = Box::new(std::io::Cursor::new(head).chain(reader));
        }
        let (targets, tx, progress) = (self.targets, &self.tx, self.progress);
        let chunked =
            self.chunker.chunks(&mut reader, |chunk| queue_chunk(targets, tx, progress, chunk.to_vec(), &mut content));
        Ok((content, size + chunked.map_err(read)?))
    }
}

/// Hashes a chunk for every repository and queues it where it is new.
fn queue_chunk(targets: &[Target], tx: &SyncSender<Job>, progress: &Progress, data: Vec<u8>, content: &mut [Vec<Id>]) {
    progress.bytes_read.fetch_add(data.len() as u64, Ordering::Relaxed);
    let data = Arc::new(data);
    for (r, target) in targets.iter().enumerate() {
        let id = target.repo.keys().blob_id(&data);
        content[r].push(id);
        if target.ok() && !target.repo.has_blob(&id) {
            // A closed channel means every worker stopped; errors are reported per repository.
            let _ = tx.send(Job { repo: r, id, data: data.clone() });
        }
    }
}
