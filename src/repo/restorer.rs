//! Restore: write a snapshot's files back, or one file to a stream. A damaged
//! blob costs only the file that holds it: the others are restored and the
//! damaged ones reported.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::id::Id;
use super::repository::{Error as RepoError, Repository};
use super::tree::{Node, NodeType, Tree};

/// What a restore did.
#[derive(Debug, Default)]
pub struct RestoreReport {
    pub files: u64,
    pub dirs: u64,
    pub bytes: u64,
    /// Files that could not be restored, with why.
    pub damaged: Vec<(String, String)>,
}

/// Why a restore stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not in the snapshot")]
    NotInSnapshot { path: String },
    #[error("{path} is a directory: --to-stdout restores one file")]
    NotAFile { path: String },
    #[error(transparent)]
    Repo(#[from] RepoError),
}

/// Loads and parses a tree blob.
pub async fn load_tree(repo: &Repository, id: &Id) -> Result<Tree, RepoError> {
    let bytes = repo.load_blob(id).await?;
    serde_json::from_slice(&bytes).map_err(|e| RepoError::Corrupt {
        location: repo.describe(),
        what: format!("tree {id}"),
        reason: e.to_string(),
    })
}

/// Restores the tree `root` into `target`.
pub async fn restore(repo: &Repository, root: &Id, target: &Path) -> Result<RestoreReport, Error> {
    let mut report = RestoreReport::default();
    std::fs::create_dir_all(target).map_err(|source| Error::Write { path: target.to_owned(), source })?;
    let mut stack = vec![(*root, target.to_owned(), String::new())];
    while let Some((tree_id, dir, shown)) = stack.pop() {
        let tree = load_tree(repo, &tree_id).await?;
        for node in tree.nodes {
            let path = dir.join(&node.name);
            let shown = if shown.is_empty() { node.name.clone() } else { format!("{shown}/{}", node.name) };
            let write = |source| Error::Write { path: path.clone(), source };
            match node.node_type {
                NodeType::Dir => {
                    std::fs::create_dir_all(&path).map_err(write)?;
                    report.dirs += 1;
                    if let Some(subtree) = node.subtree {
                        stack.push((subtree, path, shown));
                    }
                }
                NodeType::Symlink => {
                    let _ = std::fs::remove_file(&path);
                    std::os::unix::fs::symlink(node.target.as_deref().unwrap_or_default(), &path).map_err(write)?;
                }
                NodeType::File => match restore_file(repo, &node, &path).await {
                    Ok(()) => {
                        report.files += 1;
                        report.bytes += node.size;
                    }
                    Err(FileError::Repo(e)) => report.damaged.push((shown, e.to_string())),
                    Err(FileError::Io(source)) => return Err(Error::Write { path, source }),
                },
            }
        }
    }
    report.damaged.sort();
    Ok(report)
}

enum FileError {
    Repo(RepoError),
    Io(std::io::Error),
}

async fn restore_file(repo: &Repository, node: &Node, path: &Path) -> Result<(), FileError> {
    // Write beside the final name, so a damaged file never leaves half its content there.
    let partial = path.with_file_name(format!(".{}.fenice-partial", node.name));
    let mut file = std::fs::File::create(&partial).map_err(FileError::Io)?;
    for id in &node.content {
        match repo.load_blob(id).await {
            Ok(data) => file.write_all(&data).map_err(FileError::Io)?,
            Err(e) => {
                drop(file);
                let _ = std::fs::remove_file(&partial);
                return Err(FileError::Repo(e));
            }
        }
    }
    file.set_permissions(std::fs::Permissions::from_mode(node.mode)).map_err(FileError::Io)?;
    if let Ok(mtime) = node.mtime.parse::<jiff::Timestamp>() {
        let _ = file.set_modified(mtime.into());
    }
    file.sync_all().map_err(FileError::Io)?;
    std::fs::rename(&partial, path).map_err(FileError::Io)
}

/// Writes one file of the snapshot to `out`, e.g. a database dump piped into
/// `psql` or `pg_restore`.
pub async fn write_file(repo: &Repository, root: &Id, path: &str, out: &mut impl Write) -> Result<u64, Error> {
    let mut tree = load_tree(repo, root).await?;
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        let node = tree
            .nodes
            .into_iter()
            .find(|n| n.name == *part)
            .ok_or_else(|| Error::NotInSnapshot { path: path.to_owned() })?;
        if i + 1 < parts.len() {
            let subtree = node.subtree.ok_or_else(|| Error::NotInSnapshot { path: path.to_owned() })?;
            tree = load_tree(repo, &subtree).await?;
            continue;
        }
        if node.node_type != NodeType::File {
            return Err(Error::NotAFile { path: path.to_owned() });
        }
        let mut written = 0;
        for id in &node.content {
            let data = repo.load_blob(id).await?;
            out.write_all(&data).map_err(|source| Error::Write { path: PathBuf::from("<stdout>"), source })?;
            written += data.len() as u64;
        }
        return Ok(written);
    }
    Err(Error::NotInSnapshot { path: path.to_owned() })
}
