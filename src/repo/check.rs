//! `check`: every snapshot's trees load, every blob they name is indexed, every
//! indexed pack exists; with `read_data`, every pack is read and every blob
//! opened, and a damaged blob is traced to the files that hold it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::id::Id;
use super::intact::Overwritten;
use super::pack::read_header;
use super::repository::{Error as RepoError, Repository, pack_key};
use super::restorer::load_tree;
use super::tree::NodeType;

/// A pack whose bytes are damaged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedPack {
    pub pack: Id,
    pub reason: String,
    /// Files (as `snapshot-short:path`) that hold a damaged blob of this pack.
    pub files: Vec<String>,
}

/// What `check` found.
#[derive(Debug, Default)]
pub struct CheckReport {
    pub snapshots: usize,
    pub packs: usize,
    pub blobs_referenced: usize,
    pub packs_read: usize,
    /// Problems that make some data unrestorable.
    pub errors: Vec<String>,
    pub damaged_packs: Vec<DamagedPack>,
    /// Packs present but in no index (left by an interrupted backup): harmless,
    /// reused by the next backup.
    pub unindexed_packs: usize,
    /// Objects written over at the store, read from their intact version: the
    /// data restores, but someone wrote where nobody should.
    pub overwritten: Vec<Overwritten>,
}

impl CheckReport {
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty() && self.damaged_packs.is_empty() && self.overwritten.is_empty()
    }
}

/// Checks the repository's structure, and with `read_data` all of its data.
pub async fn check(repo: &Repository, read_data: bool) -> Result<CheckReport, RepoError> {
    check_with_progress(repo, read_data, Default::default()).await
}

/// [`check`], counting in `progress` the bytes of packs to read and read.
pub async fn check_with_progress(
    repo: &Repository,
    read_data: bool,
    progress: std::sync::Arc<super::Counted>,
) -> Result<CheckReport, RepoError> {
    let mut report = CheckReport::default();
    let mut present: BTreeMap<Id, u64> = repo
        .store()
        .list("data/")
        .await?
        .into_iter()
        .filter_map(|m| m.key.rsplit('/').next().and_then(|n| n.parse().ok()).map(|id| (id, m.size)))
        .collect();
    let indexed: BTreeSet<Id> = repo.with_index(|index| index.packs().map(|(id, _)| *id).collect());
    report.packs = indexed.len();
    report.unindexed_packs = present.keys().filter(|id| !indexed.contains(id)).count();
    for missing in indexed.iter().filter(|id| !present.contains_key(id)).copied().collect::<Vec<_>>() {
        // A delete marker hides it from listings; an intact version may be kept.
        if repo.reads().recover(&pack_key(&missing)).await? {
            present.insert(missing, 0);
        } else {
            report.errors.push(format!("pack {missing} is in the index but missing from the store"));
        }
    }

    // Which files use which blob, to name them when a blob is damaged.
    let mut users: HashMap<Id, Vec<String>> = HashMap::new();
    let snapshots = repo.snapshots().await?;
    report.snapshots = snapshots.len();
    for (snap_id, snapshot) in &snapshots {
        let mut stack = vec![(snapshot.tree, String::new())];
        // NB: a tree is walked once per snapshot: whoever holds the key can
        // make a directory name one subtree twice at every level, and walking
        // it per path would take 2^depth steps. Its files are named by the first path.
        let mut walked = HashSet::new();
        while let Some((tree_id, prefix)) = stack.pop() {
            if !walked.insert(tree_id) {
                continue;
            }
            users.entry(tree_id).or_default().push(format!("{}:{}/", snap_id.short(), prefix));
            let tree = match load_tree(repo, &tree_id).await {
                Ok(tree) => tree,
                Err(e) => {
                    report.errors.push(format!("snapshot {}: tree of /{prefix}: {e}", snap_id.short()));
                    continue;
                }
            };
            for node in tree.nodes {
                let path = if prefix.is_empty() { node.name.clone() } else { format!("{prefix}/{}", node.name) };
                match node.node_type {
                    NodeType::Dir => stack.extend(node.subtree.map(|t| (t, path))),
                    NodeType::File => {
                        for id in &node.content {
                            if repo.locate(id).is_none() {
                                report.errors.push(format!(
                                    "snapshot {}: {path}: blob {} is missing",
                                    snap_id.short(),
                                    id.short()
                                ));
                            }
                            users.entry(*id).or_default().push(format!("{}:{path}", snap_id.short()));
                        }
                    }
                    NodeType::Symlink => {}
                }
            }
        }
    }
    report.blobs_referenced = users.len();

    if read_data {
        let total = indexed.iter().filter_map(|p| present.get(p)).sum();
        progress.total.store(total, std::sync::atomic::Ordering::Relaxed);
        for pack in &indexed {
            let Some(size) = present.get(pack) else { continue };
            report.packs_read += 1;
            if let Some(damaged) = read_pack(repo, pack, *size, &users).await? {
                report.damaged_packs.push(damaged);
            }
            progress.done.fetch_add(*size, std::sync::atomic::Ordering::Relaxed);
        }
    }
    report.overwritten = repo.overwritten();
    Ok(report)
}

async fn read_pack(
    repo: &Repository,
    pack: &Id,
    size: u64,
    users: &HashMap<Id, Vec<String>>,
) -> Result<Option<DamagedPack>, RepoError> {
    let bytes = repo.reads().get(&pack_key(pack)).await?;
    let mut reasons = Vec::new();
    let mut damaged_blobs = Vec::new();
    // NB: the size listed is the current version's (0 when hidden by a delete
    // marker); an intact older one differs.
    let written_over = repo.reads().is_written_over(&pack_key(pack));
    if (bytes.len() as u64 != size && !written_over) || Id::of_content(&bytes) != *pack {
        reasons.push("content does not match its name".to_owned());
    }
    let indexed: Vec<_> = repo.with_index(|index| index.pack(pack).cloned().unwrap_or_default());
    if let Err(e) = read_header(repo.keys(), &bytes) {
        reasons.push(format!("header: {e}"));
    }
    for entry in &indexed {
        // NB: in usize: an index entry may end past 4 GiB.
        let range = entry.offset as usize..entry.offset as usize + entry.length as usize;
        let opened = bytes
            .get(range)
            .ok_or(super::pack::PackError::TooShort)
            .and_then(|sealed| super::pack::open_blob(repo.keys(), entry, sealed));
        if let Err(e) = opened {
            reasons.push(e.to_string());
            damaged_blobs.push(entry.id);
        }
    }
    if reasons.is_empty() {
        return Ok(None);
    }
    let mut files: Vec<String> =
        damaged_blobs.iter().flat_map(|id| users.get(id).cloned().unwrap_or_default()).collect();
    files.sort();
    files.dedup();
    Ok(Some(DamagedPack { pack: *pack, reason: reasons.join("; "), files }))
}
