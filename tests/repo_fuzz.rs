//! Hostile repository objects. Anyone who can write to the store can put any
//! bytes under any key, and anyone who holds the key can seal any contents:
//! every parser of what a reader gets back must answer with an error (or a
//! value), never panic, and never allocate more than its input warrants.
//!
//! Each parser gets two kinds of input: arbitrary bytes, and a valid object made
//! by the real writer (a repository built once in a temporary directory) with
//! bytes flipped, cut, appended, or length fields set to huge values. Sealed
//! objects stop almost every mutation at authentication, so the contents behind
//! the seal are also mutated and sealed again with the repository's own key: a
//! hostile holder of the key must not be able to crash a reader either.
//!
//! A counting allocator fails a case when one allocation made while a parser
//! runs exceeds [`ALLOCATION_LIMIT`]: the inputs here are at most a few hundred
//! KiB, so anything that large was asked for by a length field, not warranted
//! by the input.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::{Arc, OnceLock};

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::Config;
use serde_json::{Value, json};

use fenice::repo::archiver::{self, BackupOptions, Progress, Source};
use fenice::repo::check;
use fenice::repo::crypto::{Keys, MasterKey, Sealer};
use fenice::repo::forget::{self, KeepPolicy};
use fenice::repo::id::{Id, hex, unhex};
use fenice::repo::index::INDEX_AAD;
use fenice::repo::keyfile::{Holder, KdfParams, KeyError, KeyFile, Passphrase, Recipient, RecoveryKey};
use fenice::repo::lock;
use fenice::repo::pack::{self, BlobEntry, BlobType, PackError};
use fenice::repo::repository::{ChunkerParams, Config as RepoConfig, Error, FORMAT_VERSION, Repository, Unlock};
use fenice::repo::restorer::load_tree;
use fenice::repo::tree::{SNAPSHOT_AAD, Snapshot, Tree};
use fenice::stack::wal;
use fenice::store::ObjectStore;
use fenice::store::fs::FsStore;

// ---------------------------------------------------------------------------
// The allocation bound.

/// The largest single allocation a parser may make on these inputs.
const ALLOCATION_LIMIT: usize = 64 * 1024 * 1024;

thread_local! {
    static WATCHING: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

/// The system allocator, noting the largest request made on a watching thread.
/// NB: it still allocates: failing here would abort the whole test binary, so
/// the check is made by [`bounded`] once the parser returns.
struct Watching;

fn note(size: usize) {
    let _ = WATCHING.try_with(|watching| {
        if watching.get() {
            let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(size)));
        }
    });
}

unsafe impl GlobalAlloc for Watching {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Watching = Watching;

/// Stops watching even when the parser panics, so the next case starts clean.
struct Watch;

impl Watch {
    fn start() -> Self {
        LARGEST.set(0);
        WATCHING.set(true);
        Watch
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        WATCHING.set(false);
    }
}

/// Runs `parse`, failing if any single allocation it made on this thread was
/// over [`ALLOCATION_LIMIT`].
fn bounded<T>(parse: impl FnOnce() -> T) -> T {
    bounded_by(ALLOCATION_LIMIT, parse)
}

/// Runs `parse`, failing if any single allocation it made on this thread was
/// over `limit`.
fn bounded_by<T>(limit: usize, parse: impl FnOnce() -> T) -> T {
    let watch = Watch::start();
    let out = parse();
    drop(watch);
    let largest = LARGEST.get();
    assert!(largest <= limit, "one allocation of {largest} bytes, over the {limit} allowed");
    out
}

/// Runs a future on this thread's runtime, so that the parsing it does is on
/// the watched thread (the store's file reads go to the blocking pool).
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a Tokio runtime");
    }
    RUNTIME.with(|runtime| runtime.block_on(future))
}

// ---------------------------------------------------------------------------
// A real repository, built once.

const PASSPHRASE: &str = "fuzz – passphrase";
const FAST: KdfParams = KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 };
const TENANT: &str = "studio-rossi";
const WAL_NAME: &str = "000000010000000000000003";
/// Associated data the format gives pack headers and locks (the writers'
/// constants are private; the specification is the contract).
const HEADER_AAD: &[u8] = b"fenice.io pack header v1";
const LOCK_AAD: &[u8] = b"fenice.io lock v1";
const WRAP_AAD: &[u8] = b"fenice.io master key v1";

/// Every object of a repository with one backup and one archived WAL file.
struct Fixture {
    objects: BTreeMap<String, Vec<u8>>,
    master: MasterKey,
    keys: Keys,
    recovery: String,
    /// The JSON of the snapshot's root tree.
    root_tree: Vec<u8>,
}

impl Fixture {
    /// The first object whose key starts with `prefix`.
    fn object(&self, prefix: &str) -> (&str, &[u8]) {
        self.objects
            .iter()
            .find(|(key, _)| key.starts_with(prefix))
            .map(|(key, bytes)| (key.as_str(), bytes.as_slice()))
            .unwrap_or_else(|| panic!("the fixture has no object under {prefix}"))
    }

    fn packs(&self) -> Vec<&[u8]> {
        self.objects.iter().filter(|(key, _)| key.starts_with("data/")).map(|(_, b)| b.as_slice()).collect()
    }

    fn passphrase_key_file(&self) -> (&str, &[u8]) {
        self.objects
            .iter()
            .find(|(key, bytes)| key.starts_with("keys/") && bytes.windows(10).any(|w| w == b"passphrase"))
            .map(|(key, bytes)| (key.as_str(), bytes.as_slice()))
            .expect("a passphrase key file")
    }

    fn recipient_key_file(&self) -> (&str, &[u8]) {
        self.objects
            .iter()
            .find(|(key, bytes)| key.starts_with("keys/") && bytes.windows(9).any(|w| w == b"recipient"))
            .map(|(key, bytes)| (key.as_str(), bytes.as_slice()))
            .expect("a recipient key file")
    }

    /// The JSON inside a sealed, compressed object.
    fn unsealed_json(&self, prefix: &str, aad: &[u8]) -> Vec<u8> {
        let compressed = self.keys.open(self.object(prefix).1, aad).expect("the fixture's objects open");
        zstd::stream::decode_all(&compressed[..]).expect("the fixture's objects decompress")
    }

    /// The objects with `key` replaced by `bytes`, stored under the name of
    /// their content, as a writer would have.
    fn with_replaced(&self, key: &str, bytes: Vec<u8>) -> BTreeMap<String, Vec<u8>> {
        let mut objects = self.objects.clone();
        objects.remove(key);
        objects.insert(content_key(key, &bytes), bytes);
        objects
    }
}

/// `key` with its last part replaced by the BLAKE3 of `bytes`.
fn content_key(key: &str, bytes: &[u8]) -> String {
    match key.rsplit_once('/') {
        Some((folder, _)) => format!("{folder}/{}", Id::of_content(bytes)),
        None => key.to_owned(),
    }
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a Tokio runtime");
        runtime.block_on(build_fixture())
    })
}

async fn build_fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store: Arc<dyn ObjectStore> = Arc::new(FsStore::open(dir.path().join("repo")).expect("a store"));
    let repo = Repository::init(store.clone(), &Passphrase::new(PASSPHRASE.into()), FAST, None).await.expect("init");
    let recovery = RecoveryKey::generate();
    let recipient = KeyFile::for_recipient(repo.master_key(), &recovery.recipient(), "offline recovery");
    repo.add_key_file(&recipient).await.expect("a recipient key file");

    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("documents/2026")).expect("source folders");
    let dump: String = (0..3000).map(|i| format!("INSERT INTO invoices VALUES ({i}, 'IT0123456789');\n")).collect();
    std::fs::write(src.join("dump.sql"), dump).expect("a source file");
    let noise: Vec<u8> = (0..20_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(src.join("noise.bin"), noise).expect("a source file");
    std::fs::write(src.join("documents/2026/IT01234567897_00001.xml"), "<FatturaElettronica/>").expect("a file");
    std::fs::write(src.join("empty"), "").expect("a source file");
    std::os::unix::fs::symlink("dump.sql", src.join("current")).expect("a symlink");

    let repo = Arc::new(repo);
    let options = BackupOptions {
        host: "fuzz".into(),
        tenant: Some(TENANT.into()),
        tags: vec!["nightly".into()],
        annotations: BTreeMap::from([("verification".into(), json!({"rows": {"invoices": 3000}, "sum": "9f0c"}))]),
        ..BackupOptions::default()
    };
    let copies = archiver::backup(vec![repo.clone()], Source::Paths(vec![src]), options, Arc::new(Progress::default()))
        .await
        .expect("a backup");
    let (_, snapshot) = copies.into_iter().next().and_then(|c| c.result.ok()).expect("a snapshot");
    let root_tree = repo.load_blob(&snapshot.tree).await.expect("the root tree");

    let segment = dir.path().join(WAL_NAME);
    std::fs::write(&segment, vec![7u8; 4096]).expect("a WAL file");
    wal::push(&repo, TENANT, &segment).await.expect("WAL pushed");

    let mut objects = BTreeMap::new();
    for meta in store.list("").await.expect("listing") {
        let bytes = store.get(&meta.key).await.expect("reading an object");
        objects.insert(meta.key, bytes.to_vec());
    }
    let master = MasterKey::from_bytes(*repo.master_key().as_bytes());
    let keys = master.derive();
    Fixture { objects, master, keys, recovery: recovery.to_text().to_string(), root_tree }
}

/// A store holding `objects`, in a directory that goes when the first value is dropped.
fn store_of(objects: &BTreeMap<String, Vec<u8>>) -> (tempfile::TempDir, Arc<dyn ObjectStore>) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    for (key, bytes) in objects {
        let path = dir.path().join(key);
        std::fs::create_dir_all(path.parent().expect("keys have a folder or a name")).expect("a folder");
        std::fs::write(path, bytes).expect("an object");
    }
    let store: Arc<dyn ObjectStore> = Arc::new(FsStore::open(dir.path()).expect("a store"));
    (dir, store)
}

fn passphrase() -> Unlock {
    Unlock::Passphrase(Passphrase::new(PASSPHRASE.into()))
}

/// Reads everything a restore, `check` and `forget` read, ignoring the
/// answers: only panics and allocations matter here.
async fn read_everything(repo: &Repository) {
    if let Ok(snapshots) = repo.snapshots().await {
        let policy = KeepPolicy { last: 1, hourly: 2, daily: 2, weekly: 2, monthly: 2, yearly: 2 };
        let _ = forget::decide(&snapshots, &policy, &jiff::tz::TimeZone::fixed(jiff::tz::offset(14)));
        let mut seen = HashSet::new();
        let mut stack: Vec<Id> = snapshots.iter().map(|(_, s)| s.tree).collect();
        while let Some(id) = stack.pop() {
            // NB: a hostile tree may name one subtree many times over.
            if !seen.insert(id) || seen.len() > 64 {
                continue;
            }
            let Ok(tree) = load_tree(repo, &id).await else { continue };
            for node in tree.nodes {
                stack.extend(node.subtree);
                for blob in node.content.iter().take(16) {
                    let _ = repo.load_blob(blob).await;
                }
            }
        }
    }
    let _ = repo.find_snapshot("latest").await;
    let _ = check::check(repo, true).await;
}

// ---------------------------------------------------------------------------
// Mutations.

/// A length field's worst values, and some ordinary ones.
fn huge_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(u32::MAX),
        Just(u32::MAX - 1),
        Just(1 << 31),
        Just(1 << 24),
        Just(0),
        Just(1),
        any::<u32>(),
        0u32..4096,
    ]
}

fn huge_u64() -> impl Strategy<Value = u64> {
    prop_oneof![Just(u64::MAX), Just(u64::MAX - 1), Just(1 << 63), Just(u64::from(u32::MAX) + 1), any::<u64>()]
}

/// One change to an object's bytes.
#[derive(Clone, Debug)]
enum Mutation {
    Flip(Index, u8),
    Truncate(Index),
    Append(Vec<u8>),
    Insert(Index, Vec<u8>),
    Remove(Index, usize),
    Le32(Index, u32),
    Le64(Index, u64),
    /// The last 4 bytes: a pack's header length.
    Trailer(u32),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), 1..=255u8).prop_map(|(at, mask)| Mutation::Flip(at, mask)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => proptest::collection::vec(any::<u8>(), 1..64).prop_map(Mutation::Append),
        1 => (any::<Index>(), proptest::collection::vec(any::<u8>(), 1..16)).prop_map(|(at, b)| Mutation::Insert(at, b)),
        1 => (any::<Index>(), 1..64usize).prop_map(|(at, n)| Mutation::Remove(at, n)),
        2 => (any::<Index>(), huge_u32()).prop_map(|(at, v)| Mutation::Le32(at, v)),
        1 => (any::<Index>(), huge_u64()).prop_map(|(at, v)| Mutation::Le64(at, v)),
        2 => huge_u32().prop_map(Mutation::Trailer),
    ]
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    proptest::collection::vec(mutation(), 1..4)
}

fn overwrite(bytes: &mut [u8], at: &Index, value: &[u8]) {
    if bytes.len() >= value.len() {
        let start = at.index(bytes.len() - value.len() + 1);
        bytes[start..start + value.len()].copy_from_slice(value);
    }
}

fn mutate(original: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut bytes = original.to_vec();
    for m in mutations {
        let len = bytes.len();
        match m {
            Mutation::Flip(at, mask) if len > 0 => bytes[at.index(len)] ^= mask,
            Mutation::Truncate(at) if len > 0 => bytes.truncate(at.index(len)),
            Mutation::Append(junk) => bytes.extend_from_slice(junk),
            Mutation::Insert(at, junk) => {
                let at = at.index(len + 1);
                bytes.splice(at..at, junk.iter().copied());
            }
            Mutation::Remove(at, n) if len > 0 => {
                let at = at.index(len);
                bytes.drain(at..(at + n).min(len));
            }
            Mutation::Le32(at, value) => overwrite(&mut bytes, at, &value.to_le_bytes()),
            Mutation::Le64(at, value) => overwrite(&mut bytes, at, &value.to_le_bytes()),
            Mutation::Trailer(value) if len >= 4 => bytes[len - 4..].copy_from_slice(&value.to_le_bytes()),
            _ => {}
        }
    }
    bytes
}

/// Arbitrary bytes, short and long.
fn junk() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![proptest::collection::vec(any::<u8>(), 0..64), proptest::collection::vec(any::<u8>(), 0..4096),]
}

/// A JSON value a hostile writer might put anywhere.
fn hostile_value() -> impl Strategy<Value = Value> {
    // NB: no number between 1 KiB and 1 GiB: those are valid Argon2 memory
    // sizes, which a key file may ask for and which would take seconds here.
    let number = prop_oneof![
        Just(json!(u64::MAX)),
        Just(json!(u32::MAX)),
        Just(json!(u64::from(u32::MAX) + 1)),
        Just(json!(1u64 << 31)),
        Just(json!(1u64 << 24)),
        Just(json!(-1)),
        Just(json!(i64::MIN)),
        Just(json!(0.5)),
        Just(json!(1e300)),
        (0u32..=64).prop_map(|n| json!(n)),
    ];
    let text = prop_oneof![
        ".{0,40}".prop_map(Value::String),
        "[0-9a-f]{0,80}".prop_map(Value::String),
        "[0-9a-f]{64}".prop_map(Value::String),
        Just(json!("../../../../etc/passwd")),
        Just(json!("\u{0}")),
        Just(json!("9999-12-31T23:59:59.999999999Z")),
        Just(json!("-009999-01-01T00:00:00Z")),
    ];
    let shape = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        Just(json!([])),
        Just(json!({})),
        Just(json!({"type": "dir", "name": "x"})),
        // serde_json refuses nesting deeper than 128; deeper must still be an error.
        (1usize..300).prop_map(nested),
    ];
    prop_oneof![3 => number, 2 => text, 1 => shape]
}

fn nested(depth: usize) -> Value {
    (0..depth).fold(json!([]), |inner, _| json!([inner]))
}

/// One change to a JSON document.
#[derive(Clone, Debug)]
enum Edit {
    /// Any node replaced by anything.
    Replace(Index, Value),
    Remove(Index),
    /// A number (an offset, a length, a size, a cost) set to a length field's
    /// worst values.
    Number(Index, Value),
    /// Two strings (ids, types, names) swapped: still well typed.
    Swap(Index, Index),
}

/// A u32 as a length field would hold it. NB: none between 1 KiB and 1 GiB,
/// valid Argon2 memory sizes a key file may ask for, which take seconds.
fn length_value() -> impl Strategy<Value = Value> {
    huge_u32().prop_filter("a valid Argon2 memory size", |n| !(1024..=1 << 20).contains(n)).prop_map(|n| json!(n))
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let number = prop_oneof![3 => length_value(), 1 => huge_u64().prop_map(|n| json!(n))];
    let edit = prop_oneof![
        3 => (any::<Index>(), hostile_value()).prop_map(|(at, v)| Edit::Replace(at, v)),
        1 => any::<Index>().prop_map(Edit::Remove),
        3 => (any::<Index>(), number).prop_map(|(at, v)| Edit::Number(at, v)),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Edit::Swap(a, b)),
    ];
    proptest::collection::vec(edit, 1..4)
}

/// Edits that keep the document well typed, so that it gets past parsing to
/// whatever uses the values.
fn typed_edits() -> impl Strategy<Value = Vec<Edit>> {
    let edit = prop_oneof![
        3 => (any::<Index>(), length_value()).prop_map(|(at, v)| Edit::Number(at, v)),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Edit::Swap(a, b)),
    ];
    proptest::collection::vec(edit, 1..6)
}

/// Which nodes [`pointers`] lists.
#[derive(Clone, Copy, PartialEq)]
enum Nodes {
    All,
    Numbers,
    Strings,
}

/// JSON pointers of the `which` nodes under `value`.
fn pointers(value: &Value, at: String, which: Nodes, out: &mut Vec<String>) {
    let listed = match which {
        Nodes::All => true,
        Nodes::Numbers => value.is_number(),
        Nodes::Strings => value.is_string(),
    };
    if listed {
        out.push(at.clone());
    }
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                pointers(child, format!("{at}/{}", key.replace('~', "~0").replace('/', "~1")), which, out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                pointers(child, format!("{at}/{i}"), which, out);
            }
        }
        _ => {}
    }
}

fn edit_json(original: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut doc: Value = serde_json::from_slice(original).expect("the writer's JSON parses");
    for edit in edits {
        let which = match edit {
            Edit::Replace(..) | Edit::Remove(_) => Nodes::All,
            Edit::Number(..) => Nodes::Numbers,
            Edit::Swap(..) => Nodes::Strings,
        };
        let mut all = Vec::new();
        pointers(&doc, String::new(), which, &mut all);
        match edit {
            Edit::Swap(a, b) => {
                if all.is_empty() {
                    continue;
                }
                let (a, b) = (&all[a.index(all.len())], &all[b.index(all.len())]);
                if a == b {
                    continue;
                }
                let taken = doc.pointer_mut(a).map(Value::take).unwrap_or_default();
                if let Some(other) = doc.pointer_mut(b) {
                    let other = std::mem::replace(other, taken);
                    if let Some(first) = doc.pointer_mut(a) {
                        *first = other;
                    }
                }
            }
            Edit::Replace(at, value) | Edit::Number(at, value) => {
                if all.is_empty() {
                    continue;
                }
                if let Some(node) = doc.pointer_mut(&all[at.index(all.len())]) {
                    *node = value.clone();
                }
            }
            Edit::Remove(at) => {
                let pointer = &all[at.index(all.len())];
                let Some((parent, last)) = pointer.rsplit_once('/') else { continue };
                let last = last.replace("~1", "/").replace("~0", "~");
                match doc.pointer_mut(parent) {
                    Some(Value::Object(map)) => {
                        map.remove(&last);
                    }
                    Some(Value::Array(items)) => {
                        if let Ok(i) = last.parse::<usize>() {
                            items.remove(i);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    serde_json::to_vec(&doc).expect("a Value serializes")
}

/// What goes behind a seal in place of the writer's JSON.
#[derive(Clone, Debug)]
enum Contents {
    /// The writer's JSON with nodes replaced or removed.
    Edited(Vec<Edit>),
    /// The writer's JSON text with bytes changed.
    Mangled(Vec<Mutation>),
    /// Any bytes at all, compressed.
    Junk(Vec<u8>),
    /// Not zstd.
    Raw(Vec<u8>),
    /// The writer's JSON, then this many MiB of spaces: a few KiB of zstd.
    Bomb(u32),
}

fn contents() -> impl Strategy<Value = Contents> {
    prop_oneof![
        4 => edits().prop_map(Contents::Edited),
        4 => typed_edits().prop_map(Contents::Edited),
        2 => mutations().prop_map(Contents::Mangled),
        1 => junk().prop_map(Contents::Junk),
        1 => junk().prop_map(Contents::Raw),
        1 => prop_oneof![1u32..=64, Just(4096)].prop_map(Contents::Bomb),
    ]
}

/// One zstd frame of 1 MiB of spaces; frames concatenate.
fn spaces_frame() -> &'static [u8] {
    static FRAME: OnceLock<Vec<u8>> = OnceLock::new();
    FRAME.get_or_init(|| zstd::bulk::compress(&[b' '; 1 << 20], 19).expect("zstd compresses"))
}

/// Compressed `json` followed by `mib` MiB of spaces: valid JSON, however large.
fn json_bomb(json: &[u8], mib: u32) -> Vec<u8> {
    let mut out = zstd::bulk::compress(json, 3).expect("zstd compresses");
    (0..mib).for_each(|_| out.extend_from_slice(spaces_frame()));
    out
}

/// The compressed bytes a hostile holder of the key would seal in place of `json`.
fn hostile_compressed(json: &[u8], contents: &Contents) -> Vec<u8> {
    let compress = |bytes: &[u8]| zstd::bulk::compress(bytes, 3).expect("zstd compresses");
    match contents {
        Contents::Edited(edits) => compress(&edit_json(json, edits)),
        Contents::Mangled(mutations) => compress(&mutate(json, mutations)),
        Contents::Junk(bytes) => compress(bytes),
        Contents::Raw(bytes) => bytes.clone(),
        Contents::Bomb(mib) => json_bomb(json, *mib),
    }
}

fn config(cases: u32) -> Config {
    Config { cases, failure_persistence: None, ..Config::default() }
}

// ---------------------------------------------------------------------------
// Packs: the trailer and header are read before anything is authenticated.

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn a_pack_of_arbitrary_bytes_has_no_header(bytes in junk()) {
        let keys = &fixture().keys;
        let read = bounded(|| pack::read_header(keys, &bytes));
        prop_assert!(read.is_err(), "{read:?}");
        let parsed = bounded(|| pack::parse_header(keys, &bytes));
        prop_assert!(parsed.is_err(), "{parsed:?}");
        let _ = bounded(|| pack::header_length(&bytes));
    }

    #[test]
    fn a_mutated_pack_yields_its_own_header_or_an_error(which in any::<Index>(), mutations in mutations()) {
        let f = fixture();
        let packs = f.packs();
        let original = packs[which.index(packs.len())];
        let entries = pack::read_header(&f.keys, original).expect("the writer's pack");
        let mutated = mutate(original, &mutations);
        let read = bounded(|| pack::read_header(&f.keys, &mutated));
        // The header is authenticated: it is the writer's, or nothing.
        if let Ok(read) = read {
            prop_assert_eq!(read, entries);
        }
    }

    /// A hostile holder of the key writes the header's plaintext.
    #[test]
    fn an_authentic_hostile_pack_header_never_panics(
        which in any::<Index>(),
        plaintext in prop_oneof![
            2 => mutations().prop_map(Some),
            1 => Just(None),
        ],
        junk in junk(),
    ) {
        let f = fixture();
        let packs = f.packs();
        let original = packs[which.index(packs.len())];
        let entries = pack::read_header(&f.keys, original).expect("the writer's pack");
        let header = match &plaintext {
            Some(mutations) => mutate(&header_plaintext(&entries), mutations),
            None => junk,
        };
        let body_len = entries.iter().map(|e| e.length as usize).sum::<usize>();
        let pack = repack(&f.keys, &original[..body_len], &header);
        let read = bounded(|| pack::read_header(&f.keys, &pack));
        if let Ok(read) = read {
            // Whatever it says, its offsets are in order and do not wrap.
            let mut offset = 0u64;
            for entry in &read {
                prop_assert_eq!(u64::from(entry.offset), offset);
                offset += u64::from(entry.length);
            }
            prop_assert_eq!(read.len() * 41 + 1, header.len());
        }
    }
}

/// A pack header's plaintext, as the format lays it out.
fn header_plaintext(entries: &[BlobEntry]) -> Vec<u8> {
    let mut header = vec![1u8];
    for e in entries {
        header.push(match e.blob_type {
            BlobType::Data => 0,
            BlobType::Tree => 1,
        });
        header.extend_from_slice(&e.length.to_le_bytes());
        header.extend_from_slice(&e.raw_length.to_le_bytes());
        header.extend_from_slice(&e.id.0);
    }
    header
}

/// `body`, then `header` sealed, then its length: a pack.
fn repack(keys: &Keys, body: &[u8], header: &[u8]) -> Vec<u8> {
    let sealed = keys.seal(header, HEADER_AAD);
    let mut pack = body.to_vec();
    pack.extend_from_slice(&sealed);
    pack.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
    pack
}

#[test]
fn a_trailer_claiming_4_gib_on_100_bytes_is_too_short() {
    let keys = &fixture().keys;
    let mut pack = vec![0u8; 100];
    pack[96..].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(bounded(|| pack::read_header(keys, &pack)), Err(PackError::TooShort));
    assert_eq!(bounded(|| pack::read_header(keys, &[])), Err(PackError::TooShort));
}

#[test]
fn an_authentic_header_of_4_gib_blobs_lists_them_without_allocating_them() {
    let keys = &fixture().keys;
    let entry =
        BlobEntry { id: Id([7; 32]), blob_type: BlobType::Data, offset: 0, length: u32::MAX, raw_length: u32::MAX };
    let pack = repack(keys, &[], &header_plaintext(&[entry, entry]));
    let read = bounded(|| pack::read_header(keys, &pack));
    assert_eq!(read, Err(PackError::Malformed("offsets overflow")));
    let one = repack(keys, &[], &header_plaintext(&[entry]));
    assert_eq!(bounded(|| pack::read_header(keys, &one)), Ok(vec![entry]));
}

// ---------------------------------------------------------------------------
// Sealed blobs.

fn entry_strategy() -> impl Strategy<Value = BlobEntry> {
    (any::<[u8; 32]>(), any::<bool>(), huge_u32(), huge_u32(), huge_u32()).prop_map(
        |(id, tree, offset, length, raw_length)| BlobEntry {
            id: Id(id),
            blob_type: if tree { BlobType::Tree } else { BlobType::Data },
            offset,
            length,
            raw_length,
        },
    )
}

/// Every blob of the fixture, with its sealed bytes.
fn sealed_blobs() -> Vec<(BlobEntry, &'static [u8])> {
    let f = fixture();
    f.packs()
        .into_iter()
        .flat_map(|pack| {
            let entries = pack::read_header(&f.keys, pack).expect("the writer's pack");
            entries.into_iter().map(move |e| (e, &pack[e.offset as usize..(e.offset + e.length) as usize]))
        })
        .collect()
}

/// How a hostile holder of the key frames a blob.
#[derive(Clone, Debug)]
enum Framing {
    Stored(Vec<u8>),
    Compressed(Vec<u8>),
    /// Framing byte 1, then this many MiB of zeros as concatenated zstd frames.
    Bomb(u32),
    /// Framing byte 1, then anything.
    NotZstd(Vec<u8>),
    /// An unknown framing byte, or none.
    Unknown(Vec<u8>),
}

fn framing() -> impl Strategy<Value = Framing> {
    prop_oneof![
        junk().prop_map(Framing::Stored),
        junk().prop_map(Framing::Compressed),
        prop_oneof![1u32..=48, Just(1024), Just(4096)].prop_map(Framing::Bomb),
        junk().prop_map(Framing::NotZstd),
        junk().prop_map(Framing::Unknown),
    ]
}

/// One zstd frame of 1 MiB of zeros.
fn zeros_frame() -> &'static [u8] {
    static FRAME: OnceLock<Vec<u8>> = OnceLock::new();
    FRAME.get_or_init(|| zstd::bulk::compress(&[0; 1 << 20], 19).expect("zstd compresses"))
}

fn framed(framing: &Framing) -> (Vec<u8>, Option<Vec<u8>>) {
    match framing {
        Framing::Stored(bytes) => ([&[0], &bytes[..]].concat(), Some(bytes.clone())),
        Framing::Compressed(bytes) => {
            ([&[1], &zstd::bulk::compress(bytes, 3).expect("zstd compresses")[..]].concat(), Some(bytes.clone()))
        }
        Framing::Bomb(mib) => {
            let mut out = vec![1];
            (0..*mib).for_each(|_| out.extend_from_slice(zeros_frame()));
            (out, None)
        }
        Framing::NotZstd(bytes) => ([&[1], &bytes[..]].concat(), None),
        Framing::Unknown(bytes) => {
            let first = bytes.first().map_or(0, |b| b.max(&2).to_owned());
            ([&[first], bytes.get(1..).unwrap_or_default()].concat(), None)
        }
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn an_arbitrary_sealed_blob_is_refused(entry in entry_strategy(), bytes in junk()) {
        let keys = &fixture().keys;
        let opened = bounded(|| pack::open_blob(keys, &entry, &bytes));
        prop_assert!(matches!(opened, Err(PackError::BlobUnauthentic { .. })), "{opened:?}");
    }

    #[test]
    fn a_mutated_sealed_blob_is_refused(
        which in any::<Index>(),
        mutations in mutations(),
        raw_length in prop::option::of(huge_u32()),
    ) {
        let blobs = sealed_blobs();
        let (mut entry, sealed) = blobs[which.index(blobs.len())];
        let mutated = mutate(sealed, &mutations);
        let changed = raw_length.is_some_and(|r| r != entry.raw_length);
        entry.raw_length = raw_length.unwrap_or(entry.raw_length);
        let opened = bounded(|| pack::open_blob(&fixture().keys, &entry, &mutated));
        if mutated != sealed || changed {
            prop_assert!(opened.is_err(), "a changed blob opened");
        } else {
            prop_assert!(opened.is_ok(), "{opened:?}");
        }
    }

    /// A hostile holder of the key seals any framing under any id, and writes
    /// any raw length into the header.
    #[test]
    fn an_authentic_hostile_blob_never_panics_nor_overallocates(
        framing in framing(),
        blob_type in prop_oneof![Just(BlobType::Data), Just(BlobType::Tree)],
        raw_length in prop_oneof![huge_u32(), Just(u32::MAX)],
        true_id in any::<bool>(),
    ) {
        let keys = &fixture().keys;
        let (framed, plaintext) = framed(&framing);
        let id = match (&plaintext, true_id) {
            (Some(plaintext), true) => keys.blob_id(plaintext),
            _ => Id([3; 32]),
        };
        // NB: a tree may be as large as its raw length says (up to 4 GiB, for
        // a directory of millions of files), so a big authentic one takes that
        // memory; keep the claim under the limit here when the content is big.
        let raw_length = match (blob_type, &framing) {
            (BlobType::Tree, Framing::Bomb(mib)) if *mib > 32 => raw_length.min(32 << 20),
            _ => raw_length,
        };
        let entry = BlobEntry { id, blob_type, offset: 0, length: 0, raw_length };
        let sealed = keys.seal(&framed, &id.0);
        let opened = bounded(|| pack::open_blob(keys, &entry, &sealed));
        if let Ok(opened) = opened {
            prop_assert_eq!(opened.len(), raw_length as usize);
            prop_assert_eq!(keys.blob_id(&opened), id);
        }
    }
}

// ---------------------------------------------------------------------------
// Generic sealing.

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn sealed_values_open_only_as_written(
        which in any::<Index>(),
        mutations in mutations(),
        aad in proptest::collection::vec(any::<u8>(), 0..32),
        bytes in junk(),
    ) {
        let f = fixture();
        let sealed: Vec<(&[u8], &[u8])> = vec![
            (f.object("index/").1, INDEX_AAD),
            (f.object("snapshots/").1, SNAPSHOT_AAD),
        ];
        let (original, right) = sealed[which.index(sealed.len())];
        let mutated = mutate(original, &mutations);
        let opened = bounded(|| f.keys.open(&mutated, right));
        prop_assert_eq!(opened.is_ok(), mutated == original);
        prop_assert!(bounded(|| f.keys.open(&bytes, &aad)).is_err());
        prop_assert!(bounded(|| Sealer::new(&[9; 32]).open(original, right)).is_err());
    }
}

// ---------------------------------------------------------------------------
// Index objects: sealed, read when a repository opens.

fn index_key() -> &'static str {
    fixture().object("index/").0
}

/// Opens `objects` with the passphrase and reads everything, on the watched thread.
fn open_and_read(objects: &BTreeMap<String, Vec<u8>>) -> Result<(), Error> {
    let (_dir, store) = store_of(objects);
    bounded(|| {
        block_on(async {
            let repo = Repository::open(store, &passphrase()).await?;
            read_everything(&repo).await;
            Ok(())
        })
    })
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn an_index_object_of_arbitrary_or_mutated_bytes_is_named_as_damaged(
        bytes in prop_oneof![junk().prop_map(Ok), mutations().prop_map(Err)],
    ) {
        let f = fixture();
        let bytes = match bytes {
            Ok(junk) => junk,
            Err(mutations) => mutate(f.object("index/").1, &mutations),
        };
        prop_assume!(bytes != f.object("index/").1);
        let key = content_key(index_key(), &bytes);
        let opened = open_and_read(&f.with_replaced(index_key(), bytes));
        prop_assert!(matches!(&opened, Err(Error::Corrupt { what, .. }) if *what == key), "{opened:?}");
    }

    /// A hostile holder of the key writes an index that points anywhere.
    #[test]
    fn an_authentic_hostile_index_never_panics(contents in contents()) {
        let f = fixture();
        let json = f.unsealed_json("index/", INDEX_AAD);
        let sealed = f.keys.seal(&hostile_compressed(&json, &contents), INDEX_AAD);
        let _ = open_and_read(&f.with_replaced(index_key(), sealed));
    }
}

// ---------------------------------------------------------------------------
// Snapshots.

fn snapshot_key() -> &'static str {
    fixture().object("snapshots/").0
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn a_snapshot_of_arbitrary_or_mutated_bytes_is_named_as_damaged(
        bytes in prop_oneof![junk().prop_map(Ok), mutations().prop_map(Err)],
    ) {
        let f = fixture();
        let bytes = match bytes {
            Ok(junk) => junk,
            Err(mutations) => mutate(f.object("snapshots/").1, &mutations),
        };
        prop_assume!(bytes != f.object("snapshots/").1);
        let key = content_key(snapshot_key(), &bytes);
        let (_dir, store) = store_of(&f.with_replaced(snapshot_key(), bytes));
        let loaded = bounded(|| block_on(async {
            let repo = Repository::open(store, &passphrase()).await?;
            repo.snapshots().await
        }));
        prop_assert!(matches!(&loaded, Err(Error::Corrupt { what, .. }) if *what == key), "{loaded:?}");
    }

    #[test]
    fn an_authentic_hostile_snapshot_never_panics(contents in contents()) {
        let f = fixture();
        let json = f.unsealed_json("snapshots/", SNAPSHOT_AAD);
        let sealed = f.keys.seal(&hostile_compressed(&json, &contents), SNAPSHOT_AAD);
        let _ = open_and_read(&f.with_replaced(snapshot_key(), sealed));
    }
}

// ---------------------------------------------------------------------------
// Trees: the JSON of a tree blob.

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn the_tree_parser_never_panics(
        input in prop_oneof![
            junk().prop_map(Contents::Raw),
            mutations().prop_map(Contents::Mangled),
            edits().prop_map(Contents::Edited),
            typed_edits().prop_map(Contents::Edited),
        ],
    ) {
        let f = fixture();
        let json = match &input {
            Contents::Raw(bytes) => bytes.clone(),
            Contents::Mangled(mutations) => mutate(&f.root_tree, mutations),
            Contents::Edited(edits) => edit_json(&f.root_tree, edits),
            _ => unreachable!("not generated"),
        };
        let _ = bounded(|| serde_json::from_slice::<Tree>(&json));
        let _ = bounded(|| serde_json::from_slice::<Snapshot>(&json));
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// A hostile holder of the key stores a tree blob and a snapshot naming it:
    /// reading, `check` and `forget` must cope with whatever it lists.
    #[test]
    fn an_authentic_hostile_tree_never_panics(edits in prop_oneof![edits(), typed_edits()]) {
        let f = fixture();
        let json = edit_json(&f.root_tree, &edits);
        let (_dir, store) = store_of(&f.objects);
        bounded(|| block_on(async {
            let repo = Repository::open(store, &passphrase()).await.expect("the fixture opens");
            let (tree, _) = repo.save_blob(BlobType::Tree, &json).await.expect("a blob saved");
            let (_, mut snapshot) = repo.find_snapshot("latest").await.expect("the fixture's snapshot");
            snapshot.tree = tree;
            snapshot.time = "2030-01-01T00:00:00Z".into();
            repo.save_snapshot(&snapshot).await.expect("a snapshot saved");
            read_everything(&repo).await;
        }));
    }
}

// ---------------------------------------------------------------------------
// Key files: JSON in the clear.

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn the_key_file_parser_never_panics(
        which in any::<bool>(),
        input in prop_oneof![
            junk().prop_map(Contents::Raw),
            mutations().prop_map(Contents::Mangled),
            edits().prop_map(Contents::Edited),
            typed_edits().prop_map(Contents::Edited),
        ],
    ) {
        let f = fixture();
        let (_, original) = if which { f.passphrase_key_file() } else { f.recipient_key_file() };
        let json = match &input {
            Contents::Raw(bytes) => bytes.clone(),
            Contents::Mangled(mutations) => mutate(original, mutations),
            Contents::Edited(edits) => edit_json(original, edits),
            _ => unreachable!("not generated"),
        };
        let Ok(file) = bounded(|| serde_json::from_slice::<KeyFile>(&json)) else { return Ok(()) };
        let recovery = RecoveryKey::from_text(&f.recovery).expect("the fixture's recovery key");
        let opened = bounded(|| match &file.holder {
            Holder::Passphrase { kdf, .. } => {
                prop_assume!(kdf.check().is_err() || kdf.memory_kib <= 1024);
                Ok(file.open_with_passphrase(&Passphrase::new(PASSPHRASE.into())))
            }
            Holder::Recipient { .. } => Ok(file.open_with_recovery(&recovery)),
        })?;
        // Only the writer's wrapped key opens, and only to the master key.
        if let Ok(master) = opened {
            prop_assert_eq!(master.as_bytes(), f.master.as_bytes());
        }
    }

    #[test]
    fn kdf_check_accepts_exactly_the_documented_range(
        memory_kib in huge_u32(),
        iterations in huge_u32(),
        parallelism in huge_u32(),
    ) {
        let kdf = KdfParams { memory_kib, iterations, parallelism };
        let documented = (1..=1024 * 1024).contains(&memory_kib)
            && (1..=16).contains(&iterations)
            && (1..=16).contains(&parallelism);
        prop_assert_eq!(kdf.check().is_ok(), documented);
    }

    /// A key file asking for more than the bound is refused before Argon2 runs.
    #[test]
    fn a_key_file_beyond_the_kdf_bound_is_refused_without_running_it(
        memory_kib in prop_oneof![(1024 * 1024 + 1)..=u32::MAX, Just(0)],
        iterations in 1u32..=16,
    ) {
        let f = fixture();
        let mut file: KeyFile = serde_json::from_slice(f.passphrase_key_file().1).expect("the writer's key file");
        if let Holder::Passphrase { kdf, .. } = &mut file.holder {
            *kdf = KdfParams { memory_kib, iterations, parallelism: 1 };
        }
        let opened = bounded(|| file.open_with_passphrase(&Passphrase::new(PASSPHRASE.into())));
        prop_assert!(matches!(opened, Err(KeyError::Kdf { .. })), "{opened:?}");
    }

    #[test]
    fn recovery_and_recipient_texts_parse_or_are_refused(text in ".{0,120}", hexish in "[0-9a-fA-F -]{0,100}") {
        for text in [text.clone(), format!("fenice-recovery-1:{hexish}"), format!("fenice-recipient-1:{hexish}")] {
            let _ = bounded(|| RecoveryKey::from_text(&text));
            let _ = bounded(|| text.parse::<Recipient>());
        }
    }

    /// Retyped from paper: any case, spaces and line breaks anywhere, and
    /// dashes after the prefix.
    #[test]
    fn a_retyped_recovery_key_parses_to_the_same_key(
        noise in proptest::collection::vec((any::<Index>(), prop_oneof![Just(" "), Just("\n"), Just("-"), Just("\t")]), 0..8),
        upper in any::<bool>(),
    ) {
        let f = fixture();
        let prefix = "fenice-recovery-1:".len();
        let mut text = f.recovery.clone();
        if upper {
            text = text.to_uppercase();
        }
        for (at, noise) in &noise {
            let at = prefix + at.index(text.len() - prefix + 1);
            text.insert_str(at, noise);
        }
        let parsed = RecoveryKey::from_text(&text).expect("a retyped recovery key parses");
        prop_assert_eq!(parsed.recipient(), RecoveryKey::from_text(&f.recovery).expect("parses").recipient());
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// Anyone who can write to the store can add a key file: one that is junk
    /// must not stop the others from opening the repository.
    #[test]
    fn a_junk_key_file_does_not_stop_the_repository_opening(
        which in any::<bool>(),
        input in prop_oneof![
            junk().prop_map(Contents::Raw),
            mutations().prop_map(Contents::Mangled),
            edits().prop_map(Contents::Edited),
            typed_edits().prop_map(Contents::Edited),
        ],
    ) {
        let f = fixture();
        let (_, original) = if which { f.passphrase_key_file() } else { f.recipient_key_file() };
        let json = match &input {
            Contents::Raw(bytes) => bytes.clone(),
            Contents::Mangled(mutations) => mutate(original, mutations),
            Contents::Edited(edits) => edit_json(original, edits),
            _ => unreachable!("not generated"),
        };
        if let Ok(KeyFile { holder: Holder::Passphrase { kdf, .. }, .. }) = serde_json::from_slice::<KeyFile>(&json) {
            prop_assume!(kdf.check().is_err() || kdf.memory_kib <= 1024);
        }
        let mut objects = f.objects.clone();
        // NB: "keys/0…" lists first, so it is tried first.
        objects.insert(format!("keys/{}", "0".repeat(64)), json);
        let (_dir, store) = store_of(&objects);
        let recovery = Unlock::Recovery(RecoveryKey::from_text(&f.recovery).expect("the fixture's recovery key"));
        for unlock in [passphrase(), recovery] {
            let opened = bounded(|| block_on(Repository::open(store.clone(), &unlock)));
            let opened = opened.map(|repo| *repo.master_key().as_bytes());
            prop_assert!(matches!(&opened, Ok(master) if master == f.master.as_bytes()), "{opened:?}");
        }
    }
}

// ---------------------------------------------------------------------------
// The config: JSON in the clear.

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn the_config_parser_never_panics(
        input in prop_oneof![
            junk().prop_map(Contents::Raw),
            mutations().prop_map(Contents::Mangled),
            edits().prop_map(Contents::Edited),
            typed_edits().prop_map(Contents::Edited),
        ],
    ) {
        let f = fixture();
        let original = f.object("config").1;
        let json = match &input {
            Contents::Raw(bytes) => bytes.clone(),
            Contents::Mangled(mutations) => mutate(original, mutations),
            Contents::Edited(edits) => edit_json(original, edits),
            _ => unreachable!("not generated"),
        };
        let parsed = bounded(|| serde_json::from_slice::<RepoConfig>(&json));
        let mut objects = f.objects.clone();
        objects.insert("config".into(), json);
        let (_dir, store) = store_of(&objects);
        let read = bounded(|| block_on(Repository::read_config(store.as_ref())));
        if let Ok(config) = &read {
            prop_assert!(config.version <= FORMAT_VERSION);
            prop_assert!(config.chunker.check().is_ok());
            prop_assert_eq!(Some(config), parsed.as_ref().ok());
        }
        let _ = bounded(|| block_on(Repository::open(store, &passphrase())));
    }

    #[test]
    fn the_chunker_check_accepts_exactly_the_documented_bounds(
        min_size in huge_u32(),
        avg_size in huge_u32(),
        max_size in huge_u32(),
    ) {
        let params = ChunkerParams { min_size, avg_size, max_size };
        let documented = (64..=1 << 20).contains(&min_size)
            && (256..=4 << 20).contains(&avg_size)
            && (1024..=16 << 20).contains(&max_size)
            && min_size <= avg_size
            && avg_size <= max_size;
        prop_assert_eq!(params.check().is_ok(), documented);
    }
}

// ---------------------------------------------------------------------------
// Ids: every JSON parser above reads them.

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn ids_parse_from_64_hex_digits_only(
        text in prop_oneof![
            ".{0,70}".boxed(),
            "[0-9a-f]{64}".boxed(),
            // Pairs that integer parsing of a byte might let through.
            proptest::collection::vec(prop_oneof![30 => "[0-9a-fA-F]{2}", 1 => "[+-][0-9a-f]", 1 => " [0-9]"], 32)
                .prop_map(|pairs| pairs.concat())
                .boxed(),
        ],
    ) {
        let parsed = text.parse::<Id>();
        let hex_digits = text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit());
        prop_assert_eq!(parsed.is_ok(), hex_digits, "{}", text);
        if let Ok(id) = parsed {
            prop_assert_eq!(id.to_string(), text.to_lowercase());
        }
    }
}

// ---------------------------------------------------------------------------
// WAL objects and locks: sealed, read by wal-fetch and by every writer.

fn wal_key() -> &'static str {
    fixture().object("wal/").0
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn a_damaged_wal_object_is_refused(
        bytes in prop_oneof![junk().prop_map(Ok), mutations().prop_map(Err)],
    ) {
        let f = fixture();
        let original = f.object("wal/").1;
        let bytes = match bytes {
            Ok(junk) => junk,
            Err(mutations) => mutate(original, &mutations),
        };
        prop_assume!(bytes != original);
        let (dir, store) = store_of(&f.with_replaced(wal_key(), bytes));
        let dest = dir.path().join("RECOVERYXLOG");
        let fetched = bounded(|| block_on(async {
            let repo = Repository::open_unindexed(store, &passphrase()).await.expect("the fixture opens");
            wal::fetch(&repo, TENANT, WAL_NAME, &dest).await
        }));
        prop_assert!(matches!(fetched, Err(wal::Error::Damaged { .. })), "{fetched:?}");
    }

    /// Anything but a decompression bomb (see
    /// `an_authentic_wal_bomb_is_refused_without_inflating_it`).
    #[test]
    fn an_authentic_hostile_wal_object_never_panics(
        contents in prop_oneof![
            mutations().prop_map(Contents::Mangled),
            junk().prop_map(Contents::Junk),
            junk().prop_map(Contents::Raw),
        ],
    ) {
        let f = fixture();
        let (key, _) = f.object("wal/");
        let tenant_key = key.split('/').nth(1).expect("wal/<tenant key>/<name>/<id>");
        let aad = format!("fenice.io wal v1 {tenant_key}/{WAL_NAME}");
        let original = zstd::stream::decode_all(&f.keys.open(f.object("wal/").1, aad.as_bytes()).expect("opens")[..])
            .expect("decompresses");
        let sealed = f.keys.seal(&hostile_compressed(&original, &contents), aad.as_bytes());
        let (dir, store) = store_of(&f.with_replaced(key, sealed));
        let dest = dir.path().join("RECOVERYXLOG");
        let _ = bounded(|| block_on(async {
            let repo = Repository::open_unindexed(store, &passphrase()).await.expect("the fixture opens");
            wal::fetch(&repo, TENANT, WAL_NAME, &dest).await
        }));
    }

    /// Every backup and prune reads every lock.
    #[test]
    fn a_hostile_lock_never_panics(
        input in prop_oneof![
            junk().prop_map(Contents::Raw),
            edits().prop_map(Contents::Edited),
            typed_edits().prop_map(Contents::Edited),
        ],
        exclusive in any::<bool>(),
    ) {
        let f = fixture();
        let lock = serde_json::to_vec(&json!({
            "time": jiff::Timestamp::now().to_string(), "host": "h", "pid": 1, "exclusive": false, "nonce": "00"
        })).expect("JSON");
        let sealed = match &input {
            Contents::Raw(bytes) => bytes.clone(),
            Contents::Edited(edits) => f.keys.seal(&edit_json(&lock, edits), LOCK_AAD),
            _ => unreachable!("not generated"),
        };
        let mut objects = f.objects.clone();
        objects.insert(format!("locks/{}", Id::of_content(&sealed)), sealed);
        let (_dir, store) = store_of(&objects);
        let taken = bounded(|| block_on(async {
            let repo = Repository::open(store, &passphrase()).await.expect("the fixture opens");
            let taken = lock::acquire(&repo, exclusive).await;
            match taken {
                Ok(lock) => {
                    lock.release(&repo).await;
                    Ok(())
                }
                Err(e) => Err(e),
            }
        }));
        prop_assert!(matches!(taken, Ok(()) | Err(Error::Locked { .. })), "{taken:?}");
    }
}

/// A WAL file is at most a segment (16 MiB by default, 1 GiB at most): a few
/// KiB of sealed zstd holding more must be refused, not inflated. NB: it takes
/// 1 GiB of memory for a moment whether or not it passes.
#[test]
fn an_authentic_wal_bomb_is_refused_without_inflating_it() {
    let f = fixture();
    let (key, _) = f.object("wal/");
    let tenant_key = key.split('/').nth(1).expect("wal/<tenant key>/<name>/<id>");
    let aad = format!("fenice.io wal v1 {tenant_key}/{WAL_NAME}");
    let mut bomb = Vec::new();
    (0..1025).for_each(|_| bomb.extend_from_slice(zeros_frame()));
    let sealed = f.keys.seal(&bomb, aad.as_bytes());
    let (dir, store) = store_of(&f.with_replaced(key, sealed));
    let dest = dir.path().join("RECOVERYXLOG");
    let fetched = bounded_by(2 << 30, || {
        block_on(async {
            let repo = Repository::open_unindexed(store, &passphrase()).await.expect("the fixture opens");
            wal::fetch(&repo, TENANT, WAL_NAME, &dest).await
        })
    });
    assert!(fetched.is_err(), "a WAL object of 1025 MiB was fetched");
}

// ---------------------------------------------------------------------------
// What the properties found, kept as plain tests.

/// The blob entries of an index's JSON.
fn index_blobs(index: &mut Value) -> impl Iterator<Item = &mut Value> {
    let packs = index["packs"].as_array_mut().expect("an index lists packs");
    packs.iter_mut().flat_map(|pack| pack["blobs"].as_array_mut().expect("a pack lists blobs").iter_mut())
}

/// The fixture's objects, with its index's JSON changed by `edit` and sealed
/// with the repository's key.
fn with_index_edited(edit: impl FnOnce(&mut Value)) -> BTreeMap<String, Vec<u8>> {
    let f = fixture();
    let mut index: Value = serde_json::from_slice(&f.unsealed_json("index/", INDEX_AAD)).expect("index JSON");
    edit(&mut index);
    let json = serde_json::to_vec(&index).expect("JSON");
    let sealed = f.keys.seal(&zstd::bulk::compress(&json, 3).expect("zstd compresses"), INDEX_AAD);
    f.with_replaced(index_key(), sealed)
}

#[test]
fn an_index_inflating_to_35_mib_of_spaces_is_refused_as_damaged() {
    let f = fixture();
    let sealed = f.keys.seal(&json_bomb(&f.unsealed_json("index/", INDEX_AAD), 35), INDEX_AAD);
    let key = content_key(index_key(), &sealed);
    let opened = open_and_read(&f.with_replaced(index_key(), sealed));
    assert!(
        matches!(&opened, Err(Error::Corrupt { what, reason, .. }) if *what == key && reason.contains("decompresses to more than")),
        "{opened:?}"
    );
}

#[test]
fn a_snapshot_inflating_to_65_mib_of_spaces_is_refused_as_damaged() {
    let f = fixture();
    let sealed = f.keys.seal(&json_bomb(&f.unsealed_json("snapshots/", SNAPSHOT_AAD), 65), SNAPSHOT_AAD);
    let key = content_key(snapshot_key(), &sealed);
    let (_dir, store) = store_of(&f.with_replaced(snapshot_key(), sealed));
    let loaded = bounded(|| {
        block_on(async {
            let repo = Repository::open(store, &passphrase()).await?;
            repo.snapshots().await
        })
    });
    assert!(
        matches!(&loaded, Err(Error::Corrupt { what, reason, .. }) if *what == key && reason.contains("decompresses to more than")),
        "{loaded:?}"
    );
}

#[test]
fn a_data_blob_claiming_4_gib_is_refused_before_it_inflates() {
    let keys = &fixture().keys;
    let (framed, _) = framed(&Framing::Bomb(65));
    let id = Id([3; 32]);
    let entry = BlobEntry { id, blob_type: BlobType::Data, offset: 0, length: 0, raw_length: u32::MAX };
    let opened = bounded(|| pack::open_blob(keys, &entry, &keys.seal(&framed, &id.0)));
    assert!(
        matches!(&opened, Err(PackError::BlobCorrupt { reason, .. }) if reason.contains("more than any chunk")),
        "{opened:?}"
    );
}

#[test]
fn a_tree_blob_inflates_no_further_than_its_raw_length() {
    let keys = &fixture().keys;
    let (framed, _) = framed(&Framing::Bomb(65));
    let id = Id([3; 32]);
    let entry = BlobEntry { id, blob_type: BlobType::Tree, offset: 0, length: 0, raw_length: 1 << 20 };
    let opened = bounded(|| pack::open_blob(keys, &entry, &keys.seal(&framed, &id.0)));
    assert!(
        matches!(&opened, Err(PackError::BlobCorrupt { reason, .. }) if reason.contains("more than its raw length")),
        "{opened:?}"
    );
}

#[test]
fn a_tree_blob_the_index_places_past_its_pack_is_an_error() {
    let objects = with_index_edited(|index| {
        index_blobs(index).filter(|b| b["type"] == "tree").for_each(|b| b["offset"] = json!(u32::MAX));
    });
    let (_dir, store) = store_of(&objects);
    let loaded = bounded(|| {
        block_on(async {
            let repo = Repository::open(store, &passphrase()).await?;
            let (_, snapshot) = repo.find_snapshot("latest").await?;
            load_tree(&repo, &snapshot.tree).await
        })
    });
    assert!(matches!(loaded, Err(Error::Pack { source: PackError::BlobUnauthentic { .. }, .. })), "{loaded:?}");
}

#[test]
fn check_reports_a_blob_the_index_places_past_4_gib() {
    let objects = with_index_edited(|index| {
        index_blobs(index).filter(|b| b["type"] == "data").for_each(|b| b["offset"] = json!(u32::MAX));
    });
    let (_dir, store) = store_of(&objects);
    let report = bounded(|| {
        block_on(async {
            let repo = Repository::open(store, &passphrase()).await?;
            check::check(&repo, true).await
        })
    })
    .expect("check runs");
    assert_eq!(report.damaged_packs.len(), 1, "{report:?}");
}

#[test]
fn a_key_file_that_is_not_json_does_not_stop_the_repository_opening() {
    let f = fixture();
    let mut objects = f.objects.clone();
    objects.insert(format!("keys/{}", "0".repeat(64)), b"\x81\x04?".to_vec());
    let (_dir, store) = store_of(&objects);
    let opened = block_on(Repository::open(store.clone(), &passphrase())).map(|r| *r.master_key().as_bytes());
    assert_eq!(opened.ok(), Some(*f.master.as_bytes()));
    // Listing the keys still says which one is damaged.
    let listed = block_on(Repository::key_files(&store));
    assert!(matches!(&listed, Err(Error::Corrupt { what, .. }) if what.starts_with("keys/0000")), "{listed:?}");
}

#[test]
fn an_id_with_plus_signs_is_not_an_id() {
    let text = "+0".repeat(32);
    assert!(text.parse::<Id>().is_err());
    let index = with_index_edited(|index| index["packs"][0]["id"] = json!(text));
    let opened = block_on(Repository::open(store_of(&index).1, &passphrase()));
    assert!(matches!(opened, Err(Error::Corrupt { .. })), "{opened:?}");
}

/// X25519 public keys whose product with any secret is zero (RFC 7748's
/// low-order points, and their non-canonical forms).
const LOW_ORDER: [&str; 7] = [
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0100000000000000000000000000000000000000000000000000000000000000",
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
];

/// Anyone who can write to the store can write a key file for the recovery
/// key's public half with a low-order ephemeral key: the wrapping key is then
/// known without the recovery secret, and the file would open to a master key
/// of the writer's choosing.
#[test]
fn a_recipient_key_file_with_a_low_order_ephemeral_key_does_not_open() {
    let f = fixture();
    let recovery = RecoveryKey::from_text(&f.recovery).expect("the fixture's recovery key");
    let secret: String = f.recovery["fenice-recovery-1:".len()..].replace('-', "")[..64].to_owned();
    let secret = x25519_dalek::StaticSecret::from(<[u8; 32]>::try_from(unhex(&secret).expect("hex")).expect("32"));
    let file: KeyFile = serde_json::from_slice(f.recipient_key_file().1).expect("the writer's key file");
    let Holder::Recipient { recipient, .. } = &file.holder else { panic!("a recipient key file") };
    for point in LOW_ORDER {
        let point = unhex(point).expect("hex");
        let public = x25519_dalek::PublicKey::from(<[u8; 32]>::try_from(point.clone()).expect("32 bytes"));
        assert_eq!(secret.diffie_hellman(&public).as_bytes(), &[0; 32]);
        let material = [&[0; 32][..], &point, &unhex(recipient).expect("hex")].concat();
        let kek = blake3::derive_key("fenice.io 2026-11 x25519 key wrap v1", &material);
        let forged = KeyFile {
            holder: Holder::Recipient { recipient: recipient.clone(), ephemeral: hex(&point) },
            wrapped_key: hex(&Sealer::new(&kek).seal(&[0x66; 32], WRAP_AAD)),
            ..file.clone()
        };
        let opened = forged.open_with_recovery(&recovery);
        assert!(matches!(opened, Err(KeyError::Malformed { .. })), "{opened:?}");
    }
}

/// Restores the fixture's root tree after `edit`; returns the temporary
/// directory (the target is `restore/target` in it) and the report.
fn restore_edited(edit: impl FnOnce(&mut Value)) -> (tempfile::TempDir, fenice::repo::restorer::RestoreReport) {
    let f = fixture();
    let mut tree: Value = serde_json::from_slice(&f.root_tree).expect("tree JSON");
    edit(&mut tree);
    let json = serde_json::to_vec(&tree).expect("JSON");
    let (dir, store) = store_of(&f.objects);
    let target = dir.path().join("restore/target");
    let report = block_on(async {
        let repo = Repository::open(store, &passphrase()).await.expect("the fixture opens");
        let (root, _) = repo.save_blob(BlobType::Tree, &json).await.expect("a blob saved");
        repo.flush().await.expect("flushed");
        fenice::repo::restorer::restore(&repo, &root, &target).await.expect("the rest restores")
    });
    (dir, report)
}

/// A hostile holder of the key can name a tree's node `../x`, or `/x`: not restored, and said.
#[test]
fn a_tree_naming_a_parent_folder_is_not_restored_outside_the_target() {
    for name in ["../escaped", "/tmp/escaped-absolute", "a/../../escaped", "..", "."] {
        let (dir, report) = restore_edited(|tree| tree["nodes"][0]["name"] = json!(name));
        assert!(!dir.path().join("restore/escaped").exists(), "{name}: restored outside the target");
        assert!(!Path::new("/tmp/escaped-absolute").exists(), "{name}: restored at an absolute path");
        assert!(report.damaged.iter().any(|(what, _)| what.contains(name)), "{name}: {:?}", report.damaged);
    }
}

/// A symlink and a directory of one name: the directory's files never go
/// where the symlink points.
#[test]
fn a_symlink_named_like_a_directory_does_not_take_its_files_elsewhere() {
    let outside = tempfile::tempdir().expect("a directory");
    let (dir, report) = restore_edited(|tree| {
        let nodes = tree["nodes"].as_array_mut().expect("nodes");
        let dir_node = nodes.iter().find(|n| n["type"] == "dir").expect("the fixture has a directory").clone();
        let link = json!({
            "name": dir_node["name"], "type": "symlink", "mode": 0o777, "mtime": dir_node["mtime"],
            "target": outside.path().display().to_string(),
        });
        nodes.insert(0, link);
    });
    let escaped: Vec<_> = std::fs::read_dir(outside.path()).expect("listing").collect();
    assert!(escaped.is_empty(), "restored through a symlink into {}: {escaped:?}", outside.path().display());
    assert!(report.damaged.iter().any(|(_, why)| why.contains("named twice")), "{:?}", report.damaged);
    drop(dir);
}

/// A directory that names one subtree twice, at every one of 40 levels: a
/// walk per path would take 2^40 steps (this test would never end); `check`
/// walks each tree once per snapshot.
#[test]
fn a_tree_naming_one_subtree_twice_at_every_level_is_checked_in_linear_time() {
    let f = fixture();
    let (_dir, store) = store_of(&f.objects);
    let report = block_on(async {
        let repo = Repository::open(store, &passphrase()).await.expect("the fixture opens");
        let (mut tree, _) = repo.save_blob(BlobType::Tree, br#"{"nodes": []}"#).await.expect("a blob saved");
        for _ in 0..40 {
            let node = |name: &str| json!({"name": name, "type": "dir", "mode": 0o755, "mtime": "2026-11-23T00:00:00Z", "subtree": tree.to_string()});
            let json = serde_json::to_vec(&json!({"nodes": [node("a"), node("b")]})).expect("JSON");
            tree = repo.save_blob(BlobType::Tree, &json).await.expect("a blob saved").0;
        }
        repo.flush().await.expect("flushed");
        let snapshot = fenice::repo::tree::Snapshot {
            time: "2026-11-23T00:00:00Z".into(),
            host: "hostile".into(),
            tenant: None,
            tags: Vec::new(),
            paths: vec!["/".into()],
            tree,
            totals: Default::default(),
            annotations: Default::default(),
            previous: None,
        };
        repo.save_snapshot(&snapshot).await.expect("a snapshot saved");
        fenice::repo::check::check(&repo, false).await.expect("checked")
    });
    assert!(report.errors.is_empty(), "{:?}", report.errors);
}
