//! `prune`: remove the data no snapshot needs any more. Meant to run with a
//! separate credential the operator does not hold, and never able to remove
//! what the store's retention protects.
//!
//! Order, so that a prune killed at any point leaves a valid repository:
//! repacked packs, then one new index of everything kept, then the old index
//! objects, then the packs no longer needed.

use std::collections::{HashMap, HashSet};
use std::time::SystemTime;

use super::id::Id;
use super::index::{IndexFile, PackEntry};
use super::lock;
use super::pack::{BlobEntry, PackBuilder};
use super::repository::{Error, Repository, Result, pack_key};
use super::restorer::load_tree;
use super::tree::NodeType;
use crate::store::{self, Retention};

/// Repack a pack once more than this share of its bytes is unused.
const REPACK_UNUSED_SHARE: f64 = 0.2;

/// What prune did, or would do.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PruneReport {
    pub packs: usize,
    pub packs_deleted: usize,
    pub packs_repacked: usize,
    /// Packs that would go but the store's retention still holds.
    pub packs_held: usize,
    pub bytes_freed: u64,
    pub index_objects_replaced: usize,
}

/// What to do with one pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PackFate {
    Keep,
    Delete,
    /// Copy these still-used blobs to a new pack, then delete this one.
    Repack(Vec<BlobEntry>),
}

/// Decides a pack's fate from which of its blobs are used. Pure.
pub fn fate(blobs: &[BlobEntry], used: &HashSet<Id>, duplicate_elsewhere: &HashSet<Id>) -> PackFate {
    let needed: Vec<BlobEntry> =
        blobs.iter().filter(|b| used.contains(&b.id) && !duplicate_elsewhere.contains(&b.id)).copied().collect();
    if needed.is_empty() {
        return PackFate::Delete;
    }
    let total: u64 = blobs.iter().map(|b| u64::from(b.length)).sum();
    let kept: u64 = needed.iter().map(|b| u64::from(b.length)).sum();
    if total > 0 && (total - kept) as f64 / total as f64 > REPACK_UNUSED_SHARE {
        PackFate::Repack(needed)
    } else {
        PackFate::Keep
    }
}

/// Every blob (data and tree) some snapshot needs. Fails rather than guess:
/// a tree that cannot be read would make prune delete what it references.
async fn used_blobs(repo: &Repository) -> Result<HashSet<Id>> {
    let mut used = HashSet::new();
    for (_, snapshot) in repo.snapshots().await? {
        let mut stack = vec![snapshot.tree];
        while let Some(tree_id) = stack.pop() {
            if !used.insert(tree_id) {
                continue;
            }
            for node in load_tree(repo, &tree_id).await?.nodes {
                used.extend(node.content.iter().copied());
                if let (NodeType::Dir, Some(sub)) = (node.node_type, node.subtree) {
                    stack.push(sub);
                }
            }
        }
    }
    Ok(used)
}

async fn still_held(repo: &Repository, key: &str) -> Result<bool> {
    Ok(match repo.store().retention(key).await? {
        Retention::Until(until) => until > SystemTime::now(),
        Retention::None | Retention::Unsupported { .. } => false,
    })
}

/// Prunes the repository, or with `dry_run` only reports what it would do.
pub async fn prune(repo: &Repository, dry_run: bool) -> Result<PruneReport> {
    let lock = lock::acquire(repo, true).await?;
    lock::hold(vec![(repo, lock)], lock::REFRESH_EVERY, prune_locked(repo, dry_run)).await
}

async fn prune_locked(repo: &Repository, dry_run: bool) -> Result<PruneReport> {
    repo.adopt_unindexed_packs().await?;
    let used = used_blobs(repo).await?;
    let index_files = repo.index_files().await?;
    // Packs listed by an index object the store still holds must stay, or that
    // index would point readers at a missing pack.
    let mut protected = HashSet::new();
    let mut replaceable = Vec::new();
    for (key, file) in &index_files {
        if still_held(repo, key).await? {
            protected.extend(file.packs.iter().map(|p| p.id));
        } else {
            replaceable.push(key.clone());
        }
    }
    let packs: HashMap<Id, Vec<BlobEntry>> = repo.with_index(|i| i.packs().map(|(id, b)| (*id, b.clone())).collect());
    let mut report = PruneReport { packs: packs.len(), ..PruneReport::default() };

    // A blob stored twice is kept in the first pack (by id) that keeps it.
    let mut ids: Vec<&Id> = packs.keys().collect();
    ids.sort();
    let mut claimed: HashSet<Id> = HashSet::new();
    let mut keep: Vec<PackEntry> = Vec::new();
    let mut to_repack: Vec<(Id, Vec<BlobEntry>)> = Vec::new();
    let mut to_delete: Vec<(Id, u64)> = Vec::new();
    for id in ids {
        let blobs = &packs[id];
        let size: u64 = blobs.iter().map(|b| u64::from(b.length)).sum();
        let held = protected.contains(id) || still_held(repo, &pack_key(id)).await?;
        match fate(blobs, &used, &claimed) {
            PackFate::Keep => {}
            _ if held => report.packs_held += 1,
            PackFate::Delete => {
                to_delete.push((*id, size));
                continue;
            }
            PackFate::Repack(needed) => {
                claimed.extend(needed.iter().map(|b| b.id));
                to_repack.push((*id, needed));
                continue;
            }
        }
        claimed.extend(blobs.iter().filter(|b| used.contains(&b.id)).map(|b| b.id));
        keep.push(PackEntry { id: *id, blobs: blobs.clone() });
    }
    report.packs_deleted = to_delete.len();
    report.packs_repacked = to_repack.len();
    report.bytes_freed = to_delete.iter().map(|(_, s)| s).sum::<u64>()
        + to_repack
            .iter()
            .map(|(id, needed)| {
                let all: u64 = packs[id].iter().map(|b| u64::from(b.length)).sum();
                all - needed.iter().map(|b| u64::from(b.length)).sum::<u64>()
            })
            .sum::<u64>();
    if dry_run || (to_delete.is_empty() && to_repack.is_empty()) {
        return Ok(report);
    }

    let mut builder = PackBuilder::default();
    for (id, needed) in &to_repack {
        let bytes = repo.reads().get(&pack_key(id)).await?;
        for blob in needed {
            // NB: in usize: an index entry may end past 4 GiB.
            let range = blob.offset as usize..blob.offset as usize + blob.length as usize;
            let sealed = bytes.get(range).ok_or_else(|| Error::Corrupt {
                location: repo.describe(),
                what: format!("pack {id}"),
                reason: "shorter than its index says".into(),
            })?;
            // Sealed blobs move as they are: their AAD is their id, not their place.
            builder.add(blob.id, blob.blob_type, sealed, blob.raw_length as usize);
            if builder.is_full() {
                keep.push(repo.write_pack(std::mem::take(&mut builder)).await?);
            }
        }
    }
    if !builder.is_empty() {
        keep.push(repo.write_pack(builder).await?);
    }
    let new_index = repo.write_index(&IndexFile { packs: keep }).await?;
    for key in replaceable.iter().filter(|k| **k != new_index) {
        match repo.store().delete(key).await {
            Ok(()) | Err(store::Error::Immutable { .. }) => report.index_objects_replaced += 1,
            Err(e) => return Err(e.into()),
        }
    }
    for id in to_delete.iter().map(|(id, _)| id).chain(to_repack.iter().map(|(id, _)| id)) {
        match repo.store().delete(&pack_key(id)).await {
            Ok(()) => {}
            Err(store::Error::Immutable { .. }) => report.packs_held += 1,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::pack::BlobType;

    fn blob(n: u8, length: u32) -> BlobEntry {
        BlobEntry { id: Id([n; 32]), blob_type: BlobType::Data, offset: 0, length, raw_length: length }
    }

    #[test]
    fn a_pack_with_nothing_used_is_deleted() {
        let used = HashSet::new();
        assert_eq!(fate(&[blob(1, 10), blob(2, 10)], &used, &HashSet::new()), PackFate::Delete);
    }

    #[test]
    fn a_mostly_used_pack_is_kept_and_a_mostly_unused_one_repacked() {
        let used: HashSet<Id> = [Id([1; 32])].into();
        assert_eq!(fate(&[blob(1, 90), blob(2, 10)], &used, &HashSet::new()), PackFate::Keep);
        assert_eq!(fate(&[blob(1, 10), blob(2, 90)], &used, &HashSet::new()), PackFate::Repack(vec![blob(1, 10)]));
    }

    #[test]
    fn a_blob_kept_in_another_pack_does_not_keep_this_one() {
        let used: HashSet<Id> = [Id([1; 32])].into();
        let elsewhere: HashSet<Id> = [Id([1; 32])].into();
        assert_eq!(fate(&[blob(1, 10)], &used, &elsewhere), PackFate::Delete);
    }
}
