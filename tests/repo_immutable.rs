//! The ransomware check: a repository on S3 with Object Lock, written by
//! `fenice repo`, attacked with the backup's own credentials. Every delete and
//! overwrite inside the retention fails, and every snapshot stays restorable.
//! Also: a repository on Azure Blob and on an unreachable endpoint.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fenice::store::{Error, ObjectStore, PutCondition, Retention};
use fenice::testkit::{AzuriteServer, S3Server};

fn fenice(dir: &Path, env: &[(&str, String)], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fenice"))
        .env_remove("FENICE_REPOSITORY")
        .env("FENICE_PASSWORD", "pw")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .arg("repo")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("running fenice")
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "fenice failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn s3_env(server: &S3Server) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", server.endpoint()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("FENICE_S3_PATH_STYLE", "true".into()),
    ]
}

fn write_source(dir: &Path) {
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let dump: String = (0..5000).map(|i| format!("INSERT INTO invoices VALUES ({i});\n")).collect();
    std::fs::write(src.join("dump.sql"), dump).unwrap();
    std::fs::write(src.join("IT01234567897_00001.xml"), "<FatturaElettronica/>").unwrap();
}

#[test]
fn with_object_lock_the_backup_credentials_cannot_delete_or_overwrite_anything() {
    let server = S3Server::start().expect("moto");
    let dir = tempfile::tempdir().unwrap();
    write_source(dir.path());
    let env = s3_env(&server);
    let repo = "s3://locked-backups/tenants";
    ok(fenice(dir.path(), &env, &["--repo", repo, "init", "--retention-days", "1"]));
    ok(fenice(dir.path(), &env, &["--repo", repo, "backup", "src", "--tenant", "studio-rossi"]));
    ok(fenice(dir.path(), &env, &["--repo", repo, "backup", "src", "--tenant", "studio-rossi"]));

    // The attacker holds the same credentials the backup used.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = server.store("locked-backups", "tenants").await.unwrap();
        let objects = store.list("").await.unwrap();
        assert!(objects.len() >= 5, "config, key, pack, index, snapshots: {objects:?}");
        for object in &objects {
            match store.retention(&object.key).await.unwrap() {
                Retention::Until(until) => {
                    assert!(until > std::time::SystemTime::now() + Duration::from_secs(23 * 3600), "{}", object.key)
                }
                other => panic!("{} is not locked: {other:?}", object.key),
            }
            let deleted = store.delete(&object.key).await;
            assert!(matches!(deleted, Err(Error::Immutable { .. })), "{}: delete gave {deleted:?}", object.key);
            let overwritten = store
                .put(
                    &object.key,
                    Bytes::from_static(b"encrypted by ransomware"),
                    PutCondition::IfMatch(object.etag.clone()),
                )
                .await;
            assert!(overwritten.is_err(), "{}: overwrite succeeded", object.key);
        }
    });

    // fenice's own forget cannot remove them either, and says why.
    let out = fenice(dir.path(), &env, &["--repo", repo, "forget", "--keep-last", "1"]);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("retention holds it"));

    // Nor can prune, even after the snapshot objects were gone.
    let pruned: serde_json::Value =
        serde_json::from_str(&ok(fenice(dir.path(), &env, &["--repo", repo, "prune", "--json"]))).unwrap();
    assert_eq!(pruned["packsDeleted"], 0, "{pruned}");

    let snapshots: serde_json::Value =
        serde_json::from_str(&ok(fenice(dir.path(), &env, &["--repo", repo, "snapshots", "--json"]))).unwrap();
    assert_eq!(snapshots.as_array().unwrap().len(), 2, "both snapshots survive");
    for (i, s) in snapshots.as_array().unwrap().iter().enumerate() {
        let target = format!("out{i}");
        ok(fenice(dir.path(), &env, &["--repo", repo, "restore", s["id"].as_str().unwrap(), "--target", &target]));
        let restored = std::fs::read(dir.path().join(&target).join("src/dump.sql")).unwrap();
        assert_eq!(restored, std::fs::read(dir.path().join("src/dump.sql")).unwrap());
    }
    let check: serde_json::Value =
        serde_json::from_str(&ok(fenice(dir.path(), &env, &["--repo", repo, "check", "--read-data", "--json"])))
            .unwrap();
    assert_eq!(check["ok"], true, "{check}");

    // Object Lock refuses deletes, but on a versioned bucket a plain PUT still
    // puts a new current version over every object, config included, and one
    // pack is hidden behind a delete marker. The locked originals restore,
    // and check says what was written over.
    let (before, attacked) = runtime.block_on(async {
        let client = server.client();
        let listed = client.list_objects_v2().bucket("locked-backups").prefix("tenants/").send().await.unwrap();
        let keys: Vec<String> = listed.contents().iter().filter_map(|o| o.key().map(str::to_owned)).collect();
        let store = server.store("locked-backups", "tenants").await.unwrap();
        let before = store.get("config").await.unwrap();
        for key in &keys {
            server.write_over("locked-backups", key, b"encrypted by ransomware").await;
        }
        let hidden = keys.iter().find(|k| k.contains("/data/")).unwrap();
        client.delete_object().bucket("locked-backups").key(hidden).send().await.unwrap();
        (before, keys)
    });
    assert!(attacked.iter().any(|k| k.ends_with("/config")) && attacked.iter().any(|k| k.contains("/snapshots/")));
    assert_ne!(before.as_ref(), b"encrypted by ransomware");
    let snapshots: serde_json::Value =
        serde_json::from_str(&ok(fenice(dir.path(), &env, &["--repo", repo, "snapshots", "--json"]))).unwrap();
    assert_eq!(snapshots.as_array().unwrap().len(), 2, "{snapshots}");
    let out = fenice(dir.path(), &env, &["--repo", repo, "restore", "latest", "--target", "after-attack"]);
    let warned = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{warned}");
    assert_eq!(
        std::fs::read(dir.path().join("after-attack/src/dump.sql")).unwrap(),
        std::fs::read(dir.path().join("src/dump.sql")).unwrap()
    );
    assert!(
        warned.contains("warning:") && warned.contains("config: the current version is not the one written"),
        "{warned}"
    );
    let out = fenice(dir.path(), &env, &["--repo", repo, "check", "--read-data", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let check: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (check["ok"].as_bool(), check["damagedPacks"].as_array().map(Vec::len)),
        (Some(false), Some(0)),
        "{check}"
    );
    let found: Vec<&str> =
        check["overwritten"].as_array().unwrap().iter().map(|o| o["key"].as_str().unwrap()).collect();
    for key in &attacked {
        let key = key.strip_prefix("tenants/").unwrap();
        if !key.starts_with("locks/") {
            assert!(found.contains(&key), "check does not name {key}: {check}");
        }
    }
}

#[test]
fn a_repository_on_azure_blob_round_trips_and_refuses_immutability_azurite_lacks() {
    let server = AzuriteServer::start().expect("azurite");
    let dir = tempfile::tempdir().unwrap();
    write_source(dir.path());
    let env = vec![
        ("FENICE_AZURE_ENDPOINT", server.blob_endpoint()),
        ("AZURE_STORAGE_KEY", fenice::testkit::azurite::DEV_ACCOUNT_KEY.expose().to_owned()),
    ];
    let repo = "az://devstoreaccount1/backups/tenants";
    ok(fenice(dir.path(), &env, &["--repo", repo, "init"]));
    ok(fenice(dir.path(), &env, &["--repo", repo, "backup", "src"]));
    ok(fenice(dir.path(), &env, &["--repo", repo, "restore", "latest", "--target", "out"]));
    assert_eq!(
        std::fs::read(dir.path().join("out/src/dump.sql")).unwrap(),
        std::fs::read(dir.path().join("src/dump.sql")).unwrap()
    );
    let out = fenice(dir.path(), &env, &["--repo", "az://devstoreaccount1/locked", "init", "--retention-days", "30"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Azurite") && err.contains("immutability"), "{err}");
}

#[test]
fn an_unreachable_store_is_a_clear_error_naming_the_endpoint() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("http://127.0.0.1:{port}");
    let env = vec![
        ("AWS_ENDPOINT_URL", endpoint.clone()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("FENICE_S3_PATH_STYLE", "true".into()),
    ];
    let started = Instant::now();
    let out = fenice(dir.path(), &env, &["--repo", "s3://backups", "snapshots"]);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&endpoint) && err.contains("unreachable after"), "{err}");
    assert!(took < Duration::from_secs(120), "retries must be bounded: took {took:?}");
}
