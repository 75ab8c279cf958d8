//! The filesystem backend against the conformance suite, plus what only a
//! filesystem can get wrong.

use bytes::Bytes;
use fenice::store::fs::FsStore;
use fenice::store::{Error, ObjectStore, PutCondition, Retention};

#[path = "common/store_suite.rs"]
mod store_suite;

#[tokio::test]
async fn filesystem_store_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open(dir.path().join("repo")).unwrap();
    store_suite::run_all(&store).await;
}

#[tokio::test]
async fn a_leftover_temp_file_is_not_an_object() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open(dir.path()).unwrap();
    store.put("data/a", Bytes::from_static(b"a"), PutCondition::IfAbsent).await.unwrap();
    // What a crash between write and link leaves behind.
    std::fs::write(dir.path().join("data/.tmp-123-abc-0"), b"half").unwrap();
    let keys: Vec<String> = store.list("").await.unwrap().into_iter().map(|m| m.key).collect();
    assert_eq!(keys, ["data/a"]);
}

#[tokio::test]
async fn concurrent_put_if_absent_has_exactly_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open(dir.path()).unwrap();
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(
                async move { store.put("race", Bytes::from(format!("writer {i}")), PutCondition::IfAbsent).await },
            )
        })
        .collect();
    let mut winners = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => winners += 1,
            Err(Error::AlreadyExists { .. }) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(winners, 1);
}

#[tokio::test]
async fn retention_is_reported_unsupported_never_faked() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open(dir.path()).unwrap();
    store.put("obj", Bytes::from_static(b"x"), PutCondition::IfAbsent).await.unwrap();
    assert!(matches!(store.retention("obj").await.unwrap(), Retention::Unsupported { .. }));
}

#[tokio::test]
async fn an_unwritable_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"").unwrap();
    let err = FsStore::open(file.join("repo")).unwrap_err();
    assert!(err.to_string().contains("not-a-dir"), "{err}");
}
