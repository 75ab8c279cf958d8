//! The backup repository: content-defined chunks, keyed ids, compression,
//! authenticated encryption, packs, an index and snapshots, on any
//! [`ObjectStore`](crate::store::ObjectStore). docs/repository-format.md is the
//! specification.

pub mod archiver;
mod arriving;
pub mod check;
pub mod chunker;
pub mod copy;
pub mod crypto;
pub mod forget;
pub mod id;
pub mod index;
pub mod intact;
pub mod keyfile;
pub mod lock;
pub mod pack;
pub mod prune;
pub mod repository;
pub mod restorer;
pub mod tree;

/// How far long work is, in bytes: `total` once known, `done` as it goes
/// (a restore's file content written, a check's packs read). What a
/// progress bar shows.
#[derive(Debug, Default)]
pub struct Counted {
    pub total: std::sync::atomic::AtomicU64,
    pub done: std::sync::atomic::AtomicU64,
}

/// This machine's name, recorded in key files, locks and snapshots.
pub fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or_else(|_| "unknown".into())
}
