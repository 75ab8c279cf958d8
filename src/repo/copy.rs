//! `copy`: a snapshot from one repository into another, re-encrypted under
//! the destination's keys. Ids differ between repositories (they are keyed),
//! so trees are rewritten; only blobs the destination lacks are uploaded.

use std::collections::HashMap;

use super::id::Id;
use super::pack::BlobType;
use super::repository::{Error, Repository};
use super::restorer::load_tree;
use super::tree::{Snapshot, Totals, Tree};

/// Copies one snapshot; returns the new snapshot's id in `to` and the sealed
/// bytes uploaded.
pub async fn copy_snapshot(from: &Repository, to: &Repository, snapshot: &Snapshot) -> Result<(Id, u64), Error> {
    let mut copier = Copier { from, to, mapped: HashMap::new(), added: 0, new_blobs: 0 };
    let tree = copier.copy_tree(&snapshot.tree).await?;
    let copied = Snapshot {
        tree,
        totals: Totals { new_blobs: copier.new_blobs, added_bytes: copier.added, ..snapshot.totals.clone() },
        // NB: the source's previous is an id of the source; the destination's
        // copies are in the order of their times.
        previous: None,
        ..snapshot.clone()
    };
    let id = to.save_snapshot(&copied).await?;
    Ok((id, copier.added))
}

struct Copier<'a> {
    from: &'a Repository,
    to: &'a Repository,
    /// Source id to destination id, for blobs seen in this run.
    mapped: HashMap<Id, Id>,
    added: u64,
    new_blobs: u64,
}

impl Copier<'_> {
    async fn copy_blob(&mut self, blob_type: BlobType, id: &Id) -> Result<Id, Error> {
        if let Some(done) = self.mapped.get(id) {
            return Ok(*done);
        }
        let plaintext = self.from.load_blob(id).await?;
        let (new_id, added) = self.to.save_blob(blob_type, &plaintext).await?;
        if added > 0 {
            self.added += added;
            self.new_blobs += 1;
        }
        self.mapped.insert(*id, new_id);
        Ok(new_id)
    }

    async fn copy_tree(&mut self, id: &Id) -> Result<Id, Error> {
        if let Some(done) = self.mapped.get(id) {
            return Ok(*done);
        }
        let tree = load_tree(self.from, id).await?;
        let mut nodes = Vec::with_capacity(tree.nodes.len());
        for mut node in tree.nodes {
            let mut content = Vec::with_capacity(node.content.len());
            for blob in &node.content {
                content.push(self.copy_blob(BlobType::Data, blob).await?);
            }
            node.content = content;
            if let Some(subtree) = node.subtree {
                node.subtree = Some(Box::pin(self.copy_tree(&subtree)).await?);
            }
            nodes.push(node);
        }
        // NB: Tree serializes infallibly.
        let json = serde_json::to_vec(&Tree { nodes }).expect("tree serializes");
        let (new_id, added) = self.to.save_blob(BlobType::Tree, &json).await?;
        if added > 0 {
            self.added += added;
            self.new_blobs += 1;
        }
        self.mapped.insert(*id, new_id);
        Ok(new_id)
    }
}
