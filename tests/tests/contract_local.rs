//! The port contract suites run against the embedded adapters.

use std::sync::Arc;

use pai_tests::contract;
use shared::adapters::local::{
    Db, FileBlobStore, LocalBlobStore, SqliteCache, SqliteQueue, SqliteStateStore,
    SqliteVectorIndex,
};

#[tokio::test]
async fn blob_store() {
    let dir = tempfile::tempdir().unwrap();
    contract::blob_store(FileBlobStore::open(dir.path()).unwrap()).await;
}

#[tokio::test]
async fn local_blob_store() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&dir.path().join("pai.sqlite3")).unwrap();
    contract::blob_store(LocalBlobStore::new(&dir.path().join("blobs"), &db).unwrap()).await;
}

#[tokio::test]
async fn local_blob_store_reads_the_files_of_a_data_folder_written_before_it_and_deletes_them() {
    use shared::ports::BlobStore;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("blobs");
    FileBlobStore::open(&root)
        .unwrap()
        .put_recoverable("text/paperless-1/h.txt", b"older text")
        .await
        .unwrap();
    let db = Db::open(&dir.path().join("pai.sqlite3")).unwrap();
    let store = LocalBlobStore::new(&root, &db).unwrap();
    assert_eq!(
        store
            .get("text/paperless-1/h.txt")
            .await
            .unwrap()
            .as_deref(),
        Some(&b"older text"[..])
    );
    store
        .put_recoverable("text/paperless-2/h.txt", b"newer text")
        .await
        .unwrap();
    assert!(
        !root.join("text/paperless-2").exists(),
        "a recoverable copy is a row, not a file"
    );
    store.delete("text/paperless-1/h.txt").await.unwrap();
    assert_eq!(store.get("text/paperless-1/h.txt").await.unwrap(), None);
    assert!(!root.join("text/paperless-1/h.txt").exists());
    for key in ["../x", "/etc/passwd", ""] {
        assert!(store.put_recoverable(key, b"x").await.is_err(), "{key}");
    }
}

#[tokio::test]
async fn blob_store_refuses_keys_that_escape_its_folder() {
    use shared::ports::BlobStore;
    let dir = tempfile::tempdir().unwrap();
    let store = FileBlobStore::open(&dir.path().join("blobs")).unwrap();
    for key in ["../x", "/etc/passwd", "a/../../x", ""] {
        assert!(store.put(key, b"x").await.is_err(), "{key}");
    }
}

#[tokio::test]
async fn state_store() {
    let dir = tempfile::tempdir().unwrap();
    contract::state_store(SqliteStateStore::open(&dir.path().join("s.db")).unwrap()).await;
}

#[tokio::test]
async fn manifests_of_any_size() {
    let dir = tempfile::tempdir().unwrap();
    contract::manifests_of_any_size(SqliteStateStore::open(&dir.path().join("s.db")).unwrap())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn state_store_concurrent_updates() {
    let dir = tempfile::tempdir().unwrap();
    contract::concurrent_updates(Arc::new(
        SqliteStateStore::open(&dir.path().join("s.db")).unwrap(),
    ))
    .await;
}

#[tokio::test]
async fn cache() {
    let dir = tempfile::tempdir().unwrap();
    contract::cache(SqliteCache::open(&dir.path().join("c.db")).unwrap()).await;
}

#[tokio::test]
async fn work_queue() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("q.db");
    let n = std::sync::atomic::AtomicU32::new(0);
    contract::work_queue(|max| {
        SqliteQueue::open(
            &db,
            &format!("q{}", n.fetch_add(1, std::sync::atomic::Ordering::SeqCst)),
            max,
        )
        .unwrap()
    })
    .await;
}

#[tokio::test]
async fn vector_index() {
    let dir = tempfile::tempdir().unwrap();
    contract::vector_index(
        SqliteVectorIndex::open(&dir.path().join("v.db"), "chunks-test", 4).unwrap(),
    )
    .await;
}

#[tokio::test]
async fn embedded_stores_survive_a_restart() {
    use serde_json::json;
    use shared::ports::{
        Condition, QueueConsumer, QueueSender, StateStore, VectorIndex, VectorRecord,
    };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pai.db");
    {
        let state = SqliteStateStore::open(&db).unwrap();
        state
            .put("job/1", &json!({"kept": true}), Condition::None, None)
            .await
            .unwrap();
        let q = SqliteQueue::open(&db, "chunk", 3).unwrap();
        q.send(&["pending".into()]).await.unwrap();
        let v = SqliteVectorIndex::open(&db, "idx", 2).unwrap();
        v.put(vec![VectorRecord {
            key: "k".into(),
            vector: vec![1.0, 1.0],
            metadata: Default::default(),
            text: "t".into(),
            title: "T".into(),
        }])
        .await
        .unwrap();
    }
    let state = SqliteStateStore::open(&db).unwrap();
    assert_eq!(
        state.get("job/1").await.unwrap().unwrap().value,
        json!({"kept": true})
    );
    let q = SqliteQueue::open(&db, "chunk", 3).unwrap();
    assert_eq!(
        q.receive(10, std::time::Duration::from_secs(1))
            .await
            .unwrap()[0]
            .body,
        "pending"
    );
    let v = SqliteVectorIndex::open(&db, "idx", 2).unwrap();
    assert_eq!(
        v.query(&[1.0, 0.9], 1, None).await.unwrap()[0].record.key,
        "k"
    );
    assert!(
        SqliteVectorIndex::open(&db, "idx", 3).is_err(),
        "an index keeps its dimension"
    );
}
