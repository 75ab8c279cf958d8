//! One conformance suite for every `ObjectStore` backend: each backend's test
//! file starts its server and calls `run_all` on a fresh store.

use bytes::Bytes;
use fenice::store::{Error, ObjectStore, PutCondition};

/// Runs every check against `store`, which must be empty.
pub async fn run_all(store: &dyn ObjectStore) {
    put_if_absent_writes_once(store).await;
    get_range_reads_the_asked_bytes(store).await;
    head_reports_size_and_absence(store).await;
    list_filters_by_prefix_and_sorts(store).await;
    if_match_replaces_only_the_expected_version(store).await;
    delete_is_idempotent(store).await;
    missing_objects_are_not_found(store).await;
    bad_keys_are_refused(store).await;
    binary_and_empty_objects_round_trip(store).await;
}

async fn put_if_absent_writes_once(store: &dyn ObjectStore) {
    let put = store.put("once/a", Bytes::from_static(b"first"), PutCondition::IfAbsent).await.unwrap();
    assert!(!put.etag.is_empty());
    let again = store.put("once/a", Bytes::from_static(b"second"), PutCondition::IfAbsent).await;
    assert!(matches!(again, Err(Error::AlreadyExists { .. })), "{again:?}");
    assert_eq!(store.get("once/a").await.unwrap(), Bytes::from_static(b"first"));
}

async fn get_range_reads_the_asked_bytes(store: &dyn ObjectStore) {
    let data: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
    store.put("range/obj", Bytes::from(data.clone()), PutCondition::IfAbsent).await.unwrap();
    assert_eq!(store.get_range("range/obj", 0..10).await.unwrap(), &data[0..10]);
    assert_eq!(store.get_range("range/obj", 4_000..9_999).await.unwrap(), &data[4_000..9_999]);
    assert_eq!(store.get_range("range/obj", 9_990..10_000).await.unwrap(), &data[9_990..]);
}

async fn head_reports_size_and_absence(store: &dyn ObjectStore) {
    store.put("head/obj", Bytes::from_static(b"12345"), PutCondition::IfAbsent).await.unwrap();
    let meta = store.head("head/obj").await.unwrap().expect("object exists");
    assert_eq!(meta.size, 5);
    assert_eq!(meta.key, "head/obj");
    assert!(store.head("head/none").await.unwrap().is_none());
}

async fn list_filters_by_prefix_and_sorts(store: &dyn ObjectStore) {
    for key in ["list/b/2", "list/a/1", "list/b/1", "listing/x", "other/y"] {
        store.put(key, Bytes::from(key.to_owned()), PutCondition::IfAbsent).await.unwrap();
    }
    let keys: Vec<String> = store.list("list/").await.unwrap().into_iter().map(|m| m.key).collect();
    assert_eq!(keys, ["list/a/1", "list/b/1", "list/b/2"]);
    let keys: Vec<String> = store.list("list/b/").await.unwrap().into_iter().map(|m| m.key).collect();
    assert_eq!(keys, ["list/b/1", "list/b/2"]);
    let sizes: Vec<u64> = store.list("listing").await.unwrap().into_iter().map(|m| m.size).collect();
    assert_eq!(sizes, [9]);
    assert!(store.list("nothing-here/").await.unwrap().is_empty());
}

async fn if_match_replaces_only_the_expected_version(store: &dyn ObjectStore) {
    let v1 = store.put("lease", Bytes::from_static(b"epoch=1"), PutCondition::IfAbsent).await.unwrap();
    let v2 = store.put("lease", Bytes::from_static(b"epoch=2"), PutCondition::IfMatch(v1.etag.clone())).await.unwrap();
    assert_ne!(v1.etag, v2.etag);
    let stale = store.put("lease", Bytes::from_static(b"epoch=3"), PutCondition::IfMatch(v1.etag)).await;
    assert!(matches!(stale, Err(Error::PreconditionFailed { .. })), "{stale:?}");
    assert_eq!(store.get("lease").await.unwrap(), Bytes::from_static(b"epoch=2"));
    assert_eq!(store.head("lease").await.unwrap().unwrap().etag, v2.etag);
}

async fn delete_is_idempotent(store: &dyn ObjectStore) {
    store.put("del/obj", Bytes::from_static(b"x"), PutCondition::IfAbsent).await.unwrap();
    store.delete("del/obj").await.unwrap();
    assert!(store.head("del/obj").await.unwrap().is_none());
    store.delete("del/obj").await.unwrap();
    store.put("del/obj", Bytes::from_static(b"y"), PutCondition::IfAbsent).await.unwrap();
}

async fn missing_objects_are_not_found(store: &dyn ObjectStore) {
    let err = store.get("missing/obj").await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("missing/obj"), "{err}");
    let err = store.get_range("missing/obj", 0..1).await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
}

async fn bad_keys_are_refused(store: &dyn ObjectStore) {
    for key in ["../escape", "/abs", "a//b"] {
        let err = store.put(key, Bytes::new(), PutCondition::IfAbsent).await.unwrap_err();
        assert!(matches!(err, Error::InvalidKey { .. }), "{key}: {err:?}");
    }
}

async fn binary_and_empty_objects_round_trip(store: &dyn ObjectStore) {
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    store.put("big/obj", Bytes::from(data.clone()), PutCondition::IfAbsent).await.unwrap();
    assert_eq!(store.get("big/obj").await.unwrap(), data);
    store.put("empty/obj", Bytes::new(), PutCondition::IfAbsent).await.unwrap();
    assert!(store.get("empty/obj").await.unwrap().is_empty());
}
