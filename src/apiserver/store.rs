//! The objects, the global resourceVersion counter and the change history
//! that watches replay.
//!
//! Everything sits behind one mutex held for the length of a request's
//! decision (no I/O under it), so a write is atomic and changes are recorded
//! and broadcast in resourceVersion order.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::broadcast;

use super::resources::Registry;

/// (group, plural).
pub type ResourceKey = (String, String);

/// A receiver of every change from now on.
pub type Changes = broadcast::Receiver<Arc<Change>>;

/// What happened to an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Added => "ADDED",
            ChangeKind::Modified => "MODIFIED",
            ChangeKind::Deleted => "DELETED",
        }
    }
}

/// One recorded change.
#[derive(Debug)]
pub struct Change {
    pub rv: u64,
    pub resource: ResourceKey,
    /// Empty for cluster-scoped objects.
    pub namespace: String,
    pub kind: ChangeKind,
    /// The object after the change; for a deletion, its last state with the
    /// deletion's resourceVersion.
    pub object: Value,
    /// The object before the change, for watches with selectors.
    pub previous: Option<Value>,
}

/// The whole state of the server.
pub struct Store {
    pub registry: Registry,
    objects: HashMap<ResourceKey, BTreeMap<(String, String), Value>>,
    rv: u64,
    history: VecDeque<Arc<Change>>,
    capacity: usize,
    /// The newest resourceVersion no longer in the history: a watch may
    /// resume from this one or later.
    compacted: u64,
    changes: broadcast::Sender<Arc<Change>>,
    uid_seed: [u8; 32],
    uids: u64,
}

/// How many changes a watcher may fall behind before it gets a 410.
const WATCH_BUFFER: usize = 4096;

impl Store {
    pub fn new(registry: Registry, history: usize) -> Store {
        let (changes, _) = broadcast::channel(WATCH_BUFFER);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let seed_input = format!("{nanos}/{}", std::process::id());
        Store {
            registry,
            objects: HashMap::new(),
            rv: 0,
            history: VecDeque::new(),
            capacity: history.max(1),
            compacted: 0,
            changes,
            uid_seed: *blake3::hash(seed_input.as_bytes()).as_bytes(),
            uids: 0,
        }
    }

    /// The latest resourceVersion handed out.
    pub fn rv(&self) -> u64 {
        self.rv
    }

    /// The oldest resourceVersion a watch may start from.
    pub fn compacted(&self) -> u64 {
        self.compacted
    }

    /// Drops the whole history, as etcd's compaction does: a watch can
    /// resume only from now on.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
    }

    /// A fresh object uid, formatted like a UUID.
    pub fn uid(&mut self) -> String {
        self.uids += 1;
        let mut hasher = blake3::Hasher::new_keyed(&self.uid_seed);
        hasher.update(&self.uids.to_le_bytes());
        let b = hasher.finalize();
        let b = b.as_bytes();
        let hex: String = b[..16].iter().map(|x| format!("{x:02x}")).collect();
        format!("{}-{}-4{}-a{}-{}", &hex[..8], &hex[8..12], &hex[13..16], &hex[17..20], &hex[20..32])
    }

    pub fn get(&self, resource: &ResourceKey, namespace: &str, name: &str) -> Option<&Value> {
        self.objects.get(resource)?.get(&(namespace.to_owned(), name.to_owned()))
    }

    /// Objects of a resource, in one namespace or all (`None`), by namespace then name.
    pub fn list<'a>(&'a self, resource: &ResourceKey, namespace: Option<&'a str>) -> impl Iterator<Item = &'a Value> {
        self.objects
            .get(resource)
            .into_iter()
            .flat_map(|objects| objects.iter())
            .filter(move |((ns, _), _)| namespace.is_none_or(|want| ns == want))
            .map(|(_, object)| object)
    }

    /// The objects of `resource` in (namespace, name) order after `after`, with their keys.
    pub fn list_after<'a>(
        &'a self,
        resource: &ResourceKey,
        namespace: Option<&'a str>,
        after: Option<&(String, String)>,
    ) -> impl Iterator<Item = (&'a (String, String), &'a Value)> {
        use std::ops::Bound;
        let from = after.map_or(Bound::Unbounded, |key| Bound::Excluded(key.clone()));
        self.objects
            .get(resource)
            .into_iter()
            .flat_map(move |objects| objects.range((from.clone(), Bound::Unbounded)))
            .filter(move |((ns, _), _)| namespace.is_none_or(|want| ns == want))
    }

    /// Every object anywhere, with its resource key.
    pub fn everything(&self) -> impl Iterator<Item = (&ResourceKey, &Value)> {
        self.objects.iter().flat_map(|(key, objects)| objects.values().map(move |o| (key, o)))
    }

    /// Whether any object lives in `namespace`.
    pub fn namespace_is_empty(&self, namespace: &str) -> bool {
        !self.objects.values().any(|objects| objects.keys().any(|(ns, _)| ns == namespace))
    }

    /// Stores `object` (created or changed) under a new resourceVersion,
    /// records the change and returns the stored object.
    pub fn put(&mut self, resource: &ResourceKey, namespace: &str, name: &str, mut object: Value) -> Value {
        self.rv += 1;
        set_rv(&mut object, self.rv);
        let key = (namespace.to_owned(), name.to_owned());
        let previous = self.objects.entry(resource.clone()).or_default().insert(key, object.clone());
        let kind = if previous.is_some() { ChangeKind::Modified } else { ChangeKind::Added };
        self.record(resource, namespace, kind, object.clone(), previous);
        object
    }

    /// Removes an object, records its deletion under a new resourceVersion and
    /// returns its last state.
    pub fn remove(&mut self, resource: &ResourceKey, namespace: &str, name: &str) -> Option<Value> {
        let key = (namespace.to_owned(), name.to_owned());
        let mut object = self.objects.get_mut(resource)?.remove(&key)?;
        self.rv += 1;
        let previous = object.clone();
        set_rv(&mut object, self.rv);
        self.record(resource, namespace, ChangeKind::Deleted, object.clone(), Some(previous));
        Some(object)
    }

    fn record(
        &mut self,
        resource: &ResourceKey,
        namespace: &str,
        kind: ChangeKind,
        object: Value,
        previous: Option<Value>,
    ) {
        let change = Arc::new(Change {
            rv: self.rv,
            resource: resource.clone(),
            namespace: namespace.to_owned(),
            kind,
            object,
            previous,
        });
        self.history.push_back(change.clone());
        while self.history.len() > self.capacity {
            if let Some(old) = self.history.pop_front() {
                self.compacted = old.rv;
            }
        }
        // NB: an error only means nobody is watching.
        let _ = self.changes.send(change);
    }

    /// The recorded changes after `rv`, and a receiver for every later one;
    /// `None` when changes after `rv` were already dropped from the history.
    pub fn watch_from(&self, rv: u64) -> Option<(Vec<Arc<Change>>, Changes)> {
        if rv < self.compacted {
            return None;
        }
        let replay = self.history.iter().filter(|c| c.rv > rv).cloned().collect();
        Some((replay, self.changes.subscribe()))
    }
}

fn set_rv(object: &mut Value, rv: u64) {
    if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.insert("resourceVersion".to_owned(), Value::String(rv.to_string()));
    }
}
