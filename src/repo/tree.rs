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
    /// The newest snapshot of the same series (the tenant's, or without a
    /// tenant those of the same paths and host) in this repository when this
    /// one was taken: the series' order whatever the writers' clocks said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Id>,
}

impl Snapshot {
    /// Its time, compared as a time: the text's fraction of a second has as
    /// many digits as it needs. `None` (first in order) when unreadable.
    pub fn dated(&self) -> Option<jiff::Timestamp> {
        self.time.parse().ok()
    }
}

/// The newest of a series of snapshots: the one dated last or, while others
/// name it as their previous, the last of those. A backup taken after its
/// host's clock was set back is dated before the one it follows, and is still
/// the newest.
pub fn newest<'a>(series: impl IntoIterator<Item = &'a (Id, Snapshot)>) -> Option<&'a (Id, Snapshot)> {
    let series: Vec<(&(Id, Snapshot), Option<jiff::Timestamp>)> =
        series.into_iter().map(|entry| (entry, entry.1.dated())).collect();
    let mut next: std::collections::HashMap<Id, Vec<_>> = std::collections::HashMap::new();
    for dated in &series {
        if let Some(previous) = dated.0.1.previous {
            next.entry(previous).or_default().push(dated);
        }
    }
    let mut newest = series.iter().max_by_key(|(_, time)| *time)?;
    // NB: bounded, should a damaged repository hold a loop.
    for _ in 0..series.len() {
        match next.get(&newest.0.0).and_then(|after| after.iter().max_by_key(|(_, time)| *time)) {
            Some(after) => newest = after,
            None => break,
        }
    }
    Some(newest.0)
}

/// A snapshot of `/x` for tests: its id is `n` in every byte, and so is its
/// previous's.
#[cfg(test)]
pub(crate) fn sample(n: u8, tenant: Option<&str>, time: &str, previous: Option<u8>) -> (Id, Snapshot) {
    let s = Snapshot {
        time: time.into(),
        host: "h".into(),
        tenant: tenant.map(Into::into),
        tags: vec![],
        paths: vec!["/x".into()],
        tree: Id([0; 32]),
        totals: Totals::default(),
        annotations: BTreeMap::new(),
        previous: previous.map(|p| Id([p; 32])),
    };
    (Id([n; 32]), s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(n: u8, time: &str, previous: Option<u8>) -> (Id, Snapshot) {
        sample(n, None, time, previous)
    }

    #[test]
    fn the_newest_follows_the_series_past_a_clock_set_back() {
        let before = [snapshot(1, "2026-12-07T09:00:00Z", None), snapshot(2, "2026-12-07T10:00:00Z", Some(1))];
        assert_eq!(newest(&before).unwrap().0, Id([2; 32]));
        // The clock set back three hours after the second: two more, dated before it.
        let mut after = before.to_vec();
        after.push(snapshot(3, "2026-12-07T07:05:00Z", Some(2)));
        after.push(snapshot(4, "2026-12-07T07:10:00Z", Some(3)));
        assert_eq!(newest(&after).unwrap().0, Id([4; 32]));
        // Two written after the same one (two hosts at once): the later of them.
        after.push(snapshot(5, "2026-12-07T07:20:00Z", Some(3)));
        assert_eq!(newest(&after).unwrap().0, Id([5; 32]));
        assert!(newest(&[]).is_none());
    }

    #[test]
    fn a_loop_of_previous_snapshots_ends() {
        let looped = [snapshot(1, "2026-12-07T09:00:00Z", Some(2)), snapshot(2, "2026-12-07T10:00:00Z", Some(1))];
        assert!(newest(&looped).is_some());
    }
}
