//! The backup repository: content-defined chunks, keyed ids, compression,
//! authenticated encryption, packs, an index and snapshots, on any
//! [`ObjectStore`](crate::store::ObjectStore). docs/repository-format.md is the
//! specification.

pub mod archiver;
pub mod check;
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

/// This machine's name, recorded in key files, locks and snapshots.
pub fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or_else(|_| "unknown".into())
}
