//! WAL archiving for point-in-time recovery: `archive_command` pushes each
//! finished WAL segment (and timeline history file) into the tenant's
//! repositories, `restore_command` fetches them back.
//!
//! A WAL object is `wal/<tenant key>/<file name>/<id>`, holding
//! `seal(zstd(file), encryption key, AAD "fenice.io wal v1 " || tenant key || "/" || file name)`,
//! where `<id>` is the BLAKE3 of the object (like every repository object) and
//! `<tenant key>` is the hex blob id of `"fenice.io wal tenant v1 " || tenant`,
//! so that the store learns neither the tenant's name nor the content. The AAD
//! binds each object to its name: one cannot be passed off as another.

use std::path::Path;

use bytes::Bytes;
use futures::StreamExt;

use crate::repo::id::{Id, hex};
use crate::repo::repository::Repository;
use crate::store::{self, PutCondition};

/// WAL segments compress well (a segment switched early by archive_timeout is
/// mostly zeros); a low level keeps archive_command fast.
const ZSTD_LEVEL: i32 = 3;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("WAL file name {name:?} is not a plain file name")]
    BadName { name: String },

    #[error("cannot read {}", path.display())]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot write {}", path.display())]
    Write {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{repository}: WAL file {name}")]
    Store {
        repository: String,
        name: String,
        #[source]
        source: Box<store::Error>,
    },

    #[error(
        "{repository}: WAL file {name} is already archived with other content; two servers may be archiving \
         as tenant {tenant}: check which one is the tenant's primary before anything else"
    )]
    Conflict { repository: String, tenant: String, name: String },

    #[error("{repository}: WAL file {name} is not archived")]
    NotArchived { repository: String, name: String },

    #[error("{repository}: WAL object {key} is damaged or was not written with this repository's key")]
    Damaged { repository: String, key: String },
}

/// The store prefix of one tenant's WAL.
fn tenant_key(repo: &Repository, tenant: &str) -> String {
    hex(&repo.keys().blob_id(format!("fenice.io wal tenant v1 {tenant}").as_bytes()).0)
}

fn check_name(name: &str) -> Result<()> {
    let plain = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
        && !name.starts_with('.');
    if plain { Ok(()) } else { Err(Error::BadName { name: name.to_string() }) }
}

fn aad(tenant_key: &str, name: &str) -> Vec<u8> {
    format!("fenice.io wal v1 {tenant_key}/{name}").into_bytes()
}

/// Archives the WAL file at `path` for `tenant`. Pushing the same file again
/// succeeds (PostgreSQL may retry after a crash); a different file under the
/// same name is refused.
pub async fn push(repo: &Repository, tenant: &str, path: &Path) -> Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    check_name(name)?;
    let content = tokio::fs::read(path).await.map_err(|source| Error::Read { path: path.to_owned(), source })?;
    push_content(repo, tenant, name, &content).await
}

/// [`push`] of a WAL file read elsewhere (by `fenice agent wal-push --via`).
pub async fn push_content(repo: &Repository, tenant: &str, name: &str, content: &[u8]) -> Result<()> {
    check_name(name)?;
    let name = name.to_owned();
    let tenant_key = tenant_key(repo, tenant);
    let store_error =
        |source| Error::Store { repository: repo.describe(), name: name.clone(), source: Box::new(source) };
    let prefix = format!("wal/{tenant_key}/{name}/");
    let existing = objects_of(repo, &tenant_key, &name).await?;
    if !existing.is_empty() {
        for object in &existing {
            if open(repo, &tenant_key, &name, &object.key).await? == content {
                return Ok(());
            }
        }
        return Err(Error::Conflict { repository: repo.describe(), tenant: tenant.to_string(), name });
    }
    let compressed = zstd::bulk::compress(content, ZSTD_LEVEL).expect("compressing in memory");
    let sealed = repo.keys().seal(&compressed, &aad(&tenant_key, &name));
    let key = format!("{prefix}{}", hex(&Id::of_content(&sealed).0));
    match repo.store().put(&key, Bytes::from(sealed), PutCondition::IfAbsent).await {
        Ok(_) | Err(store::Error::AlreadyExists { .. }) => Ok(()),
        Err(source) => Err(store_error(source)),
    }
}

/// Fetches the archived WAL file `name` of `tenant` into `dest`, written
/// atomically. [`Error::NotArchived`] when there is none, which PostgreSQL's
/// recovery expects at the end of the archive.
pub async fn fetch(repo: &Repository, tenant: &str, name: &str, dest: &Path) -> Result<()> {
    check_name(name)?;
    let tenant_key = tenant_key(repo, tenant);
    let objects = objects_of(repo, &tenant_key, name).await?;
    let mut last_error = None;
    for object in &objects {
        // Two objects under one name only exist after a refused conflicting push
        // raced another; any copy that opens is the one that was archived first.
        match open(repo, &tenant_key, name, &object.key).await {
            Ok(content) => return write_atomically(dest, content).await,
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or(Error::NotArchived { repository: repo.describe(), name: name.to_string() }))
}

/// How many prefetched segments are fetched at once.
const PREFETCH_PARALLELISM: usize = 4;

/// Like [`fetch`], for a recovery that asks for one segment after the other:
/// a segment already in `spool` is moved to `dest`; otherwise it is fetched,
/// and the `ahead` segments that follow it on its timeline are fetched into
/// `spool` for the next calls. PostgreSQL runs one `restore_command` per
/// segment, and without this each paid for a process, an unlock and a round
/// trip. Prefetching is best effort; the spool goes once the end of the
/// archive is reached.
pub async fn fetch_ahead(
    repo: &Repository,
    tenant: &str,
    name: &str,
    dest: &Path,
    spool: &Path,
    ahead: usize,
) -> Result<()> {
    check_name(name)?;
    if take_spooled(name, dest, spool).await {
        return Ok(());
    }
    match fetch(repo, tenant, name, dest).await {
        Err(end @ Error::NotArchived { .. }) => {
            // NB: best effort; a leftover spool is only read for names it holds.
            let _ = tokio::fs::remove_dir_all(spool).await;
            Err(end)
        }
        Err(e) => Err(e),
        Ok(()) => {
            if is_segment(name) && ahead > 0 {
                prefetch(repo, tenant, name, spool, ahead).await;
            }
            Ok(())
        }
    }
}

/// Moves the segment `name` from `spool` to `dest` if an earlier fetch
/// prefetched it there; whether it did.
pub async fn take_spooled(name: &str, dest: &Path, spool: &Path) -> bool {
    check_name(name).is_ok() && is_segment(name) && tokio::fs::rename(spool.join(name), dest).await.is_ok()
}

/// The newest segment the repository holds for `tenant` (by name: within a
/// timeline, names sort in replay order), if any.
pub async fn newest_segment(repo: &Repository, tenant: &str) -> Result<Option<String>> {
    let names = archived_names(repo, tenant, "the archive's newest segment").await?;
    Ok(names.into_iter().filter(|n| is_segment(n)).max())
}

/// The names of the WAL files archived for `tenant` (`what`: what they are
/// listed for, in an error).
async fn archived_names(repo: &Repository, tenant: &str, what: &str) -> Result<Vec<String>> {
    let tenant_key = tenant_key(repo, tenant);
    let objects = repo.store().list(&format!("wal/{tenant_key}/")).await.map_err(|source| Error::Store {
        repository: repo.describe(),
        name: what.into(),
        source: Box::new(source),
    })?;
    Ok(objects.iter().filter_map(|o| o.key.split('/').nth(2)).map(str::to_owned).collect())
}

/// The newest timeline the archive knows of `tenant`: the highest whose
/// history file (written by the promotion that began it) is archived; 1 when
/// none is.
pub async fn newest_timeline(repo: &Repository, tenant: &str) -> Result<u32> {
    let names = archived_names(repo, tenant, "the archive's timeline history files").await?;
    Ok(names.iter().filter_map(|n| history_timeline(n)).max().unwrap_or(1))
}

/// Whether the WAL file `name` of `tenant` is archived.
pub async fn is_archived(repo: &Repository, tenant: &str, name: &str) -> Result<bool> {
    check_name(name)?;
    Ok(!objects_of(repo, &tenant_key(repo, tenant), name).await?.is_empty())
}

/// The objects holding the archived WAL file `name` (more than one only
/// after a refused conflicting push raced another).
async fn objects_of(repo: &Repository, tenant_key: &str, name: &str) -> Result<Vec<store::ObjectMeta>> {
    repo.store().list(&format!("wal/{tenant_key}/{name}/")).await.map_err(|source| Error::Store {
        repository: repo.describe(),
        name: name.to_string(),
        source: Box::new(source),
    })
}

/// The timeline a history file's name begins (`00000002.history` → 2).
pub fn history_timeline(name: &str) -> Option<u32> {
    let hex = name.strip_suffix(".history").filter(|h| h.len() == 8)?;
    u32::from_str_radix(hex, 16).ok()
}

/// The history file's name of `timeline`.
pub fn history_file(timeline: u32) -> String {
    format!("{timeline:08X}.history")
}

/// The position of the segment `name` (timeline left out), for `segment_size`-byte segments.
pub fn segment_number(name: &str, segment_size: u64) -> Option<u64> {
    if !is_segment(name) || segment_size == 0 {
        return None;
    }
    let log = u64::from_str_radix(&name[8..16], 16).ok()?;
    let seg = u64::from_str_radix(&name[16..24], 16).ok()?;
    Some(log * (0x1_0000_0000 / segment_size) + seg)
}

/// A WAL segment's name: 24 hex digits, timeline then position, so that names
/// sort in replay order within a timeline.
fn is_segment(name: &str) -> bool {
    name.len() == 24 && name.bytes().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
}

async fn prefetch(repo: &Repository, tenant: &str, after: &str, spool: &Path, ahead: usize) {
    let Ok(names) = archived_names(repo, tenant, "segments to prefetch").await else { return };
    let timeline = &after[..8];
    let next: std::collections::BTreeSet<&str> =
        names.iter().map(String::as_str).filter(|n| is_segment(n) && n.starts_with(timeline) && *n > after).collect();
    if tokio::fs::create_dir_all(spool).await.is_err() {
        return;
    }
    let wanted = next.into_iter().take(ahead).filter(|n| !spool.join(n).exists());
    futures::stream::iter(wanted)
        .for_each_concurrent(PREFETCH_PARALLELISM, |name| async move {
            if let Err(e) = fetch(repo, tenant, name, &spool.join(name)).await {
                tracing::debug!(name, error = &e as &dyn std::error::Error, "prefetching a WAL segment");
            }
        })
        .await;
}

/// PostgreSQL's largest WAL segment size.
const MAX_SEGMENT: u64 = 1 << 30;

async fn open(repo: &Repository, tenant_key: &str, name: &str, key: &str) -> Result<Vec<u8>> {
    let damaged = || Error::Damaged { repository: repo.describe(), key: key.to_string() };
    let sealed = repo.store().get(key).await.map_err(|source| Error::Store {
        repository: repo.describe(),
        name: name.to_string(),
        source: Box::new(source),
    })?;
    let compressed = repo.keys().open(&sealed, &aad(tenant_key, name)).map_err(|_| damaged())?;
    // NB: a holder of the key can seal a few bytes of zstd that inflate to
    // gigabytes: no segment is larger than PostgreSQL's largest, 1 GiB.
    crate::repo::pack::decompress(&compressed, MAX_SEGMENT, 16 << 20).ok().flatten().ok_or_else(damaged)
}

/// Writes a segment (16 MiB) beside `dest`, in pieces, then names it `dest`.
async fn write_atomically(dest: &Path, content: Vec<u8>) -> Result<()> {
    let write_error = |source| Error::Write { path: dest.to_owned(), source };
    let partial =
        dest.with_file_name(format!(".{}.fenice-partial", dest.file_name().and_then(|n| n.to_str()).unwrap_or("wal")));
    let temp = partial.clone();
    tokio::task::spawn_blocking(move || crate::write_in_pieces::write_all(&mut std::fs::File::create(temp)?, &content))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
        .map_err(write_error)?;
    tokio::fs::rename(&partial, dest).await.map_err(write_error)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::repo::keyfile::{KdfParams, Passphrase};
    use crate::store::fs::FsStore;

    const FAST: KdfParams = KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 };

    fn segment(n: u32) -> String {
        format!("00000001000000000000{n:04X}")
    }

    #[test]
    fn segment_names_give_their_position_in_the_log() {
        // 16 MiB segments: 256 per log file; 1 MiB: 4096.
        assert_eq!(segment_number("000000010000000200000003", 16 << 20), Some(2 * 256 + 3));
        assert_eq!(segment_number("00000002000000000000FFF", 1 << 20), None);
        assert_eq!(segment_number("000000010000000000000FFF", 1 << 20), Some(0xFFF));
    }

    #[tokio::test]
    async fn the_newest_timeline_is_the_highest_whose_history_file_is_archived() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(FsStore::open(dir.path().join("repo")).unwrap());
        let repo = Repository::init(store, &Passphrase::new("pw".into()), FAST, None).await.unwrap();
        assert_eq!(newest_timeline(&repo, "acme").await.unwrap(), 1, "no promotion yet");
        let wal = dir.path().join("pg_wal");
        std::fs::create_dir(&wal).unwrap();
        for name in [segment(1), history_file(2), "0000000A.history".into(), "0000000B0000000000000001".into()] {
            std::fs::write(wal.join(&name), &name).unwrap();
            push(&repo, "acme", &wal.join(&name)).await.unwrap();
        }
        assert_eq!(newest_timeline(&repo, "acme").await.unwrap(), 10, "a segment is no history file");
        assert_eq!(newest_timeline(&repo, "globex").await.unwrap(), 1);
        assert!(is_archived(&repo, "acme", "00000002.history").await.unwrap());
        assert!(!is_archived(&repo, "acme", "00000003.history").await.unwrap());
        assert_eq!((history_timeline("00000002.history"), history_timeline("2.history")), (Some(2), None));
    }

    #[tokio::test]
    async fn recovery_finds_the_following_segments_prefetched_and_the_spool_goes_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(FsStore::open(dir.path().join("repo")).unwrap());
        let repo = Repository::init(store, &Passphrase::new("pw".into()), FAST, None).await.unwrap();
        let wal = dir.path().join("pg_wal");
        std::fs::create_dir(&wal).unwrap();
        for n in 1..=5 {
            std::fs::write(wal.join(segment(n)), format!("segment {n}")).unwrap();
            push(&repo, "acme", &wal.join(segment(n))).await.unwrap();
        }
        assert_eq!(newest_segment(&repo, "acme").await.unwrap(), Some(segment(5)));
        assert_eq!(newest_segment(&repo, "globex").await.unwrap(), None);
        // Another timeline's segment is never prefetched for this one.
        std::fs::write(wal.join("000000020000000000000003"), "other timeline").unwrap();
        push(&repo, "acme", &wal.join("000000020000000000000003")).await.unwrap();

        let (spool, dest) = (dir.path().join("spool"), dir.path().join("RECOVERYXLOG"));
        fetch_ahead(&repo, "acme", &segment(1), &dest, &spool, 2).await.unwrap();
        assert_eq!(std::fs::read_to_string(&dest).unwrap(), "segment 1");
        let mut spooled: Vec<String> =
            std::fs::read_dir(&spool).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        spooled.sort();
        assert_eq!(spooled, [segment(2), segment(3)]);

        // The next call takes its segment from the spool, not the archive
        // (marked here so the two can be told apart).
        std::fs::write(spool.join(segment(2)), "segment 2, spooled").unwrap();
        fetch_ahead(&repo, "acme", &segment(2), &dest, &spool, 2).await.unwrap();
        assert_eq!(std::fs::read_to_string(&dest).unwrap(), "segment 2, spooled");
        assert!(!spool.join(segment(2)).exists());
        for n in 3..=5 {
            fetch_ahead(&repo, "acme", &segment(n), &dest, &spool, 2).await.unwrap();
            assert_eq!(std::fs::read_to_string(&dest).unwrap(), format!("segment {n}"));
        }
        // The end of the archive: PostgreSQL is told so, and the spool goes.
        let end = fetch_ahead(&repo, "acme", &segment(6), &dest, &spool, 2).await;
        assert!(matches!(end, Err(Error::NotArchived { .. })), "{end:?}");
        assert!(!spool.exists());
    }
}
