//! Snapshots and the trees they point to. A tree is one directory's listing,
//! stored as a Tree blob; a snapshot is a small sealed object naming the root
//! tree and saying when, where and what was backed up.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::id::Id;

/// Associated data of snapshot objects.
pub const SNAPSHOT_AAD: &[u8] = b"fenice.io snapshot v1";

/// What a node is.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NodeType {
    File,
    Dir,
    Symlink,
}

/// One entry of a directory.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    pub name: String,
    #[serde(rename = "type")]
    pub node_type: NodeType,
    /// Unix permission bits.
    pub mode: u32,
    /// Modification time, RFC 3339 with nanoseconds.
    pub mtime: String,
    /// Bytes of a file; 0 for others.
    #[serde(default)]
    pub size: u64,
    /// A file's data blobs, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub content: Vec<Id>,
    /// A directory's tree blob.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtree: Option<Id>,
    /// A symlink's target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// A directory listing, nodes sorted by name.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Tree {
    pub nodes: Vec<Node>,
}

/// Totals of a snapshot.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    pub files: u64,
    pub dirs: u64,
    /// Bytes of file content.
    pub bytes: u64,
    /// Blobs this run stored that the repository did not have.
    pub new_blobs: u64,
    /// Sealed bytes this run added.
    pub added_bytes: u64,
}

/// The JSON of a snapshot object.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// RFC 3339.
    pub time: String,
    pub host: String,
    /// The tenant the snapshot belongs to, when it is a tenant backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// The paths as given on the command line (or the stdin name).
    pub paths: Vec<String>,
    /// The root tree: one node per path given.
    pub tree: Id,
    pub totals: Totals,
    /// Free-form facts recorded by the writer, e.g. a tenant backup's
    /// verification data (row counts, checksums, last invoice numbers).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, serde_json::Value>,
}
