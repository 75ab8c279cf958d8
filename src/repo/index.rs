//! The index: which pack holds which blob. Stored as `index/<id>` objects, each
//! sealed zstd-compressed JSON listing packs and their blobs. Readers take the
//! union of all index objects; an index can be rebuilt from the packs' headers.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::id::Id;
use super::pack::{BlobEntry, BlobType};

/// Associated data of index objects.
pub const INDEX_AAD: &[u8] = b"fenice.io index v1";

/// One pack and its blobs, as an index object lists them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PackEntry {
    pub id: Id,
    pub blobs: Vec<BlobEntry>,
}

/// The JSON of an index object.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct IndexFile {
    pub packs: Vec<PackEntry>,
}

/// Where a blob is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    pub pack: Id,
    pub entry: BlobEntry,
}

/// The union of index objects, in memory.
#[derive(Default, Debug)]
pub struct Index {
    blobs: HashMap<Id, Location>,
    packs: HashMap<Id, Vec<BlobEntry>>,
}

impl Index {
    pub fn add_pack(&mut self, pack: Id, blobs: &[BlobEntry]) {
        for entry in blobs {
            self.blobs.entry(entry.id).or_insert(Location { pack, entry: *entry });
        }
        self.packs.insert(pack, blobs.to_vec());
    }

    pub fn add_file(&mut self, file: &IndexFile) {
        for pack in &file.packs {
            self.add_pack(pack.id, &pack.blobs);
        }
    }

    pub fn get(&self, id: &Id) -> Option<&Location> {
        self.blobs.get(id)
    }

    pub fn contains(&self, id: &Id) -> bool {
        self.blobs.contains_key(id)
    }

    /// The blobs of one pack.
    pub fn pack(&self, pack: &Id) -> Option<&Vec<BlobEntry>> {
        self.packs.get(pack)
    }

    pub fn has_pack(&self, pack: &Id) -> bool {
        self.packs.contains_key(pack)
    }

    /// Packs and their blobs.
    pub fn packs(&self) -> impl Iterator<Item = (&Id, &Vec<BlobEntry>)> {
        self.packs.iter()
    }

    pub fn blob_count(&self, blob_type: BlobType) -> usize {
        self.blobs.values().filter(|l| l.entry.blob_type == blob_type).count()
    }
}
