//! The contract of every port, as one generic test suite per port. Each adapter's tests call
//! the suite with a factory for fresh, empty instances, so the embedded store and AWS provably
//! behave the same; a broken contract panics. Test code only: it lives in this dev-only kit,
//! beside the fakes, so no build of the library contains it.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Map, Value, json};
use shared::filter::Filter;
use shared::ports::{
    BlobStore, Cache, Condition, DeadLetters, QueueConsumer, QueueSender, StateStore, StoreError,
    VectorIndex, VectorRecord, WorkQueue,
};

pub async fn blob_store<B: BlobStore>(store: B) {
    assert_eq!(
        store.get("a/b.txt").await.unwrap(),
        None,
        "missing key reads as None"
    );
    store.put("a/b.txt", b"one").await.unwrap();
    assert_eq!(
        store.get("a/b.txt").await.unwrap().as_deref(),
        Some(&b"one"[..])
    );
    store.put("a/b.txt", b"two, longer").await.unwrap();
    assert_eq!(
        store.get("a/b.txt").await.unwrap().as_deref(),
        Some(&b"two, longer"[..]),
        "put replaces"
    );
    store
        .put_recoverable("a/c/d.txt", b"a copy that can be made again")
        .await
        .unwrap();
    assert_eq!(
        store.get("a/c/d.txt").await.unwrap().as_deref(),
        Some(&b"a copy that can be made again"[..]),
        "a recoverable put reads back like any other"
    );
    store.put_recoverable("a/b.txt", b"three").await.unwrap();
    assert_eq!(
        store.get("a/b.txt").await.unwrap().as_deref(),
        Some(&b"three"[..]),
        "and replaces like any other"
    );
    store.put("a/b.txt", b"four").await.unwrap();
    assert_eq!(
        store.get("a/b.txt").await.unwrap().as_deref(),
        Some(&b"four"[..]),
        "a put replaces a recoverable copy"
    );
    let big = vec![7u8; 3 * 1024 * 1024];
    store.put("big.bin", &big).await.unwrap();
    assert_eq!(
        store.get("big.bin").await.unwrap().unwrap().len(),
        big.len()
    );
    store.delete("a/b.txt").await.unwrap();
    assert_eq!(store.get("a/b.txt").await.unwrap(), None);
    store.delete("a/b.txt").await.unwrap();
    store
        .put("text/upload-0a/ü ß.txt", "ü".as_bytes())
        .await
        .unwrap();
    assert!(
        store.get("text/upload-0a/ü ß.txt").await.unwrap().is_some(),
        "unicode keys"
    );
}

pub async fn state_store<S: StateStore>(store: S) {
    let now = chrono::Utc::now().timestamp();
    assert!(store.get("job/1").await.unwrap().is_none());
    let v1 = store
        .put("job/1", &json!({"n": 1}), Condition::Absent, None)
        .await
        .unwrap();
    assert!(
        matches!(
            store
                .put("job/1", &json!({"n": 9}), Condition::Absent, None)
                .await,
            Err(StoreError::Conflict(_))
        ),
        "Absent refuses an existing item"
    );
    let got = store.get("job/1").await.unwrap().unwrap();
    assert_eq!((got.value.clone(), got.version), (json!({"n": 1}), v1));
    let v2 = store
        .put("job/1", &json!({"n": 2}), Condition::Version(v1), None)
        .await
        .unwrap();
    assert_ne!(v1, v2);
    assert!(
        matches!(
            store
                .put("job/1", &json!({"n": 3}), Condition::Version(v1), None)
                .await,
            Err(StoreError::Conflict(_))
        ),
        "a stale version is refused"
    );
    assert_eq!(
        store.get("job/1").await.unwrap().unwrap().value,
        json!({"n": 2})
    );
    store
        .put("job/1", &json!({"n": 4}), Condition::None, None)
        .await
        .unwrap();

    store
        .put("session/old", &json!(1), Condition::None, Some(now - 10))
        .await
        .unwrap();
    assert!(
        store.get("session/old").await.unwrap().is_none(),
        "an expired item is gone"
    );
    store
        .put(
            "session/old",
            &json!(2),
            Condition::Absent,
            Some(now + 3600),
        )
        .await
        .unwrap();
    assert_eq!(
        store.get("session/old").await.unwrap().unwrap().value,
        json!(2),
        "an expired item can be created again"
    );

    assert_eq!(store.add("job/1", "chunks_embedded", 3).await.unwrap(), 3);
    assert_eq!(store.add("job/1", "chunks_embedded", 4).await.unwrap(), 7);
    assert_eq!(store.add("job/1", "other", -1).await.unwrap(), -1);
    let counters = store.counters("job/1").await.unwrap();
    assert_eq!((counters["chunks_embedded"], counters["other"]), (7, -1));
    assert!(store.counters("job/none").await.unwrap().is_empty());
    store
        .add_all("job/1", &[("chunks_embedded", 1), ("tokens", 5)])
        .await
        .unwrap();
    let counters = store.counters("job/1").await.unwrap();
    assert_eq!((counters["chunks_embedded"], counters["tokens"]), (8, 5));

    for i in 0..5 {
        store
            .put(&format!("list/{i}"), &json!(i), Condition::None, None)
            .await
            .unwrap();
    }
    store
        .put(
            "listing",
            &json!("not under the prefix"),
            Condition::None,
            None,
        )
        .await
        .unwrap();
    let page = store.list("list/", None, 3).await.unwrap();
    assert_eq!(
        page.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        ["list/0", "list/1", "list/2"]
    );
    let rest = store.list("list/", Some("list/2"), 10).await.unwrap();
    assert_eq!(
        rest.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>(),
        [json!(3), json!(4)]
    );
    // Newest first, paged by the last key seen; other prefixes never leak in.
    let newest = store.list_newest("list/", None, 2).await.unwrap();
    assert_eq!(
        newest.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        ["list/4", "list/3"]
    );
    let older = store
        .list_newest("list/", Some("list/3"), 10)
        .await
        .unwrap();
    assert_eq!(
        older.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        ["list/2", "list/1", "list/0"]
    );
    assert!(
        store
            .list_newest("list/", Some("list/0"), 10)
            .await
            .unwrap()
            .is_empty()
    );

    store.delete("job/1").await.unwrap();
    assert!(store.get("job/1").await.unwrap().is_none());
}

pub async fn concurrent_updates<S: StateStore + 'static>(store: std::sync::Arc<S>) {
    // Optimistic locking: many writers, each retrying on conflict, lose no increment.
    store
        .put("race", &json!({"n": 0}), Condition::Absent, None)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                loop {
                    let cur = store.get("race").await.unwrap().unwrap();
                    let n = cur.value["n"].as_i64().unwrap();
                    match store
                        .put(
                            "race",
                            &json!({"n": n + 1}),
                            Condition::Version(cur.version),
                            None,
                        )
                        .await
                    {
                        Ok(_) => break,
                        Err(StoreError::Conflict(_)) => continue,
                        Err(e) => panic!("{e}"),
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        store.get("race").await.unwrap().unwrap().value,
        json!({"n": 80})
    );
}

/// Manifests of any size round-trip through the store: a 3,000-chunk document (with the
/// 3,000 chunks of its previous version, ~600 KB, beyond one DynamoDB item) is stored in
/// pages; replacing it with a smaller version leaves neither the old pages nor lost chunks.
pub async fn manifests_of_any_size<S: StateStore>(store: S) {
    use shared::domain::{ChunkRef, DocId, DocMeta, Manifest};
    use shared::pipeline::index::{load_manifest_in, save_manifest_in};
    let chunk = |version: &str, i: usize| ChunkRef {
        start: i * 100,
        end: i * 100 + 120,
        hash: shared::text::sha256_hex(format!("{version}-{i}").as_bytes()),
    };
    let doc_id = DocId::Paperless(77);
    let big = Manifest {
        doc_id: doc_id.clone(),
        job_id: "j2".into(),
        content_hash: "h2".into(),
        chunks: (0..3000).map(|i| chunk("v2", i)).collect(),
        previous: (0..3000).map(|i| chunk("v1", i)).collect(),
        meta: DocMeta {
            title: "A very long report".into(),
            tags: vec!["report".into()],
            ..DocMeta::default()
        },
    };
    let v1 = save_manifest_in(&store, &big, Condition::Absent)
        .await
        .expect("a 3,000-chunk manifest is stored");
    let (read, version) = load_manifest_in(&store, &doc_id).await.unwrap().unwrap();
    assert_eq!(version, v1);
    assert_eq!(
        read, big,
        "every chunk of both versions comes back, in order"
    );
    let item = store.get("manifest/77").await.unwrap().unwrap().value;
    assert!(
        item.to_string().len() < 100_000,
        "the item itself stays small: {} bytes",
        item.to_string().len()
    );
    let pages = store
        .list("manifest-page/77/", None, 100)
        .await
        .unwrap()
        .len();
    assert!(pages >= 6, "the chunk lists are paged: {pages} pages");

    // A metadata change rewrites the item and reuses the pages.
    let mut retitled = big.clone();
    retitled.meta.title = "Retitled".into();
    let v2 = save_manifest_in(&store, &retitled, Condition::Version(v1))
        .await
        .unwrap();
    assert_eq!(
        load_manifest_in(&store, &doc_id).await.unwrap().unwrap().0,
        retitled
    );
    assert!(
        save_manifest_in(&store, &big, Condition::Version(v1))
            .await
            .is_err(),
        "a stale version is refused"
    );

    // A small next version goes back inline; the old pages are gone.
    let small = Manifest {
        job_id: "j3".into(),
        content_hash: "h3".into(),
        chunks: (0..3).map(|i| chunk("v3", i)).collect(),
        previous: retitled.chunks[..3].to_vec(),
        ..retitled.clone()
    };
    save_manifest_in(&store, &small, Condition::Version(v2))
        .await
        .unwrap();
    assert_eq!(
        load_manifest_in(&store, &doc_id).await.unwrap().unwrap().0,
        small
    );
    assert!(
        store
            .list("manifest-page/77/", None, 100)
            .await
            .unwrap()
            .is_empty(),
        "replaced pages are deleted"
    );
}

pub async fn cache<C: Cache>(cache: C) {
    let now = chrono::Utc::now().timestamp();
    assert_eq!(cache.get("k").await.unwrap(), None);
    cache
        .put("k", b"\x00\x01binary", Some(now + 60))
        .await
        .unwrap();
    assert_eq!(
        cache.get("k").await.unwrap().as_deref(),
        Some(&b"\x00\x01binary"[..])
    );
    cache.put("k", b"new", None).await.unwrap();
    assert_eq!(cache.get("k").await.unwrap().as_deref(), Some(&b"new"[..]));
    cache.put("old", b"x", Some(now - 1)).await.unwrap();
    assert_eq!(
        cache.get("old").await.unwrap(),
        None,
        "expired entries are misses"
    );
}

/// `make(max_receives)` returns an empty queue that dead-letters after that many receives.
/// Every queue port's suite, each on a fresh queue of the adapter.
pub async fn work_queue<Q: WorkQueue>(make: impl Fn(u32) -> Q) {
    queue_delivery(&make(3)).await;
    dead_letters(&make(3)).await;
    queue_release(&make(5)).await;
    queue_deferral(&make(2)).await;
}

/// [`QueueSender`] with [`QueueConsumer`]: every message sent is delivered, once while it is
/// invisible, in batches of 1 to 10, and acknowledged by its receipt.
pub async fn queue_delivery<Q: QueueSender + QueueConsumer>(q: &Q) {
    assert!(
        q.receive(10, Duration::from_secs(30))
            .await
            .unwrap()
            .is_empty()
    );
    let bodies: Vec<String> = (0..25).map(|i| format!("{{\"n\":{i}}}")).collect();
    q.send(&bodies).await.unwrap();
    let mut seen = HashSet::new();
    loop {
        let batch = q.receive(10, Duration::from_secs(60)).await.unwrap();
        if batch.is_empty() {
            break;
        }
        assert!(batch.len() <= 10);
        for d in batch {
            assert_eq!(d.receive_count, 1);
            assert!(
                seen.insert(d.body.clone()),
                "no message twice while invisible"
            );
            q.delete(&d.receipt).await.unwrap();
        }
    }
    assert_eq!(seen.len(), 25, "every message delivered");
    assert!(
        q.receive(0, Duration::ZERO).await.is_err() && q.receive(11, Duration::ZERO).await.is_err(),
        "batch size 1..=10"
    );
}

/// [`DeadLetters`], on a queue that dead-letters after 3 receives: a message never deleted is
/// delivered again with a growing count, then moves to the dead letters, which are removed by
/// their own receipts.
pub async fn dead_letters<Q: QueueSender + QueueConsumer + DeadLetters>(q: &Q) {
    // Not deleted: delivered again, with a growing receive count, then dead-lettered.
    q.send(&["poison".to_string()]).await.unwrap();
    for expected in 1..=3 {
        let d = q.receive(1, Duration::ZERO).await.unwrap();
        assert_eq!(d.len(), 1, "receive {expected}");
        assert_eq!(
            (d[0].body.as_str(), d[0].receive_count),
            ("poison", expected)
        );
    }
    assert!(
        q.receive(10, Duration::ZERO).await.unwrap().is_empty(),
        "moved to the dead letters"
    );
    let dead = q.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body, "poison");
    q.delete_dead_letter(&dead[0].receipt).await.unwrap();
    assert!(
        q.dead_letters(10).await.unwrap().is_empty(),
        "a dead letter is removed by its receipt"
    );
    q.delete_dead_letter(&dead[0].receipt).await.unwrap();
}

/// [`QueueConsumer::release`], on a queue that dead-letters after 5 receives.
pub async fn queue_release<Q: QueueSender + QueueConsumer>(q: &Q) {
    // Release makes a message visible again; a stale receipt deletes nothing.
    q.send(&["retry".to_string()]).await.unwrap();
    let first = q
        .receive(1, Duration::from_secs(600))
        .await
        .unwrap()
        .remove(0);
    assert!(
        q.receive(1, Duration::from_secs(600))
            .await
            .unwrap()
            .is_empty(),
        "invisible while in flight"
    );
    q.release(&first.receipt, Duration::ZERO).await.unwrap();
    let second = q
        .receive(1, Duration::from_secs(600))
        .await
        .unwrap()
        .remove(0);
    assert_eq!((second.body.as_str(), second.receive_count), ("retry", 2));
    q.delete(&first.receipt).await.unwrap();
    q.release(&second.receipt, Duration::ZERO).await.unwrap();
    let third = q.receive(1, Duration::ZERO).await.unwrap();
    assert_eq!(third.len(), 1, "a stale receipt did not delete the message");
    q.delete(&third[0].receipt).await.unwrap();
    assert!(q.receive(10, Duration::ZERO).await.unwrap().is_empty());
}

/// [`QueueConsumer::defer`], on a queue that dead-letters after 2 receives.
pub async fn queue_deferral<Q: QueueSender + QueueConsumer>(q: &Q) {
    // Deferring hands a message back for later without spending one of its receives.
    q.send(&["deferred".to_string()]).await.unwrap();
    for _ in 0..4 {
        let d = q.receive(1, Duration::from_secs(600)).await.unwrap();
        assert_eq!(d.len(), 1, "a deferred message is never dead-lettered");
        assert_eq!(d[0].receive_count, 1, "deferral does not count a receive");
        q.defer(&d[0], Duration::ZERO).await.unwrap();
    }
    let d = q.receive(1, Duration::from_secs(600)).await.unwrap();
    q.delete(&d[0].receipt).await.unwrap();
    assert!(q.receive(10, Duration::ZERO).await.unwrap().is_empty());
}

fn record(key: &str, vector: Vec<f32>, meta: Value) -> VectorRecord {
    let metadata: Map<String, Value> = meta.as_object().cloned().unwrap_or_default();
    VectorRecord {
        key: key.into(),
        vector,
        metadata,
        text: format!("text of {key}"),
        title: "Title".into(),
    }
}

/// `make()` returns an empty index of dimension 4.
pub async fn vector_index<V: VectorIndex>(index: V) {
    assert_eq!(index.dimension(), 4);
    let q = [1.0, 0.0, 0.0, 0.0];
    assert!(index.query(&q, 5, None).await.unwrap().is_empty());
    index
        .put(vec![
            record("1#a", vec![1.0, 0.0, 0.0, 0.0], json!({"doc_id": "1", "tags": ["invoice", "home"], "created": 20250314})),
            record("1#b", vec![0.9, 0.1, 0.0, 0.0], json!({"doc_id": "1", "tags": ["invoice", "home"], "created": 20250314})),
            record("2#a", vec![0.0, 1.0, 0.0, 0.0], json!({"doc_id": "2", "tags": ["tax"], "created": 20240101, "correspondent": "finanzamt"})),
            record("3#a", vec![-1.0, 0.0, 0.0, 0.0], json!({"doc_id": "3", "tags": [], "created": 20230505})),
        ])
        .await
        .unwrap();
    let hits = index.query(&q, 3, None).await.unwrap();
    assert_eq!(
        hits.iter()
            .map(|h| h.record.key.as_str())
            .collect::<Vec<_>>(),
        ["1#a", "1#b", "2#a"],
        "nearest first"
    );
    assert!(
        hits[0].distance.abs() < 1e-5 && (hits[2].distance - 1.0).abs() < 1e-5,
        "cosine distance"
    );
    assert_eq!(hits[0].record.text, "text of 1#a");
    assert_eq!(hits[0].record.metadata["doc_id"], json!("1"));

    let f = |v: Value| Filter::parse(&v).unwrap();
    let keys = |hits: Vec<shared::ports::VectorHit>| {
        hits.into_iter().map(|h| h.record.key).collect::<Vec<_>>()
    };
    assert_eq!(
        keys(
            index
                .query(&q, 10, Some(&f(json!({"tags": "tax"}))))
                .await
                .unwrap()
        ),
        ["2#a"],
        "filter before neighbours"
    );
    assert_eq!(
        keys(
            index
                .query(&q, 10, Some(&f(json!({"created": {"$lt": 20240601}}))))
                .await
                .unwrap()
        ),
        ["2#a", "3#a"]
    );
    assert_eq!(
        keys(
            index
                .query(&q, 1, Some(&f(json!({"doc_id": {"$in": ["1", "3"]}}))))
                .await
                .unwrap()
        ),
        ["1#a"]
    );
    assert_eq!(
        keys(
            index
                .query(
                    &q,
                    10,
                    Some(&f(json!({"correspondent": {"$exists": true}})))
                )
                .await
                .unwrap()
        ),
        ["2#a"]
    );
    assert!(
        index
            .query(&q, 10, Some(&f(json!({"doc_id": "9"}))))
            .await
            .unwrap()
            .is_empty()
    );

    // Keyword search, where the index has one: BM25 after the filter, records with vectors.
    if let Some(found) = index.keyword_query("text of 2", 10, None).await.unwrap() {
        assert_eq!(found.len(), 4, "every chunk shares \"text\"");
        assert_eq!(found[0].key, "2#a", "the rare term ranks first");
        assert_eq!(found[0].vector.len(), 4);
        let mut filtered: Vec<String> = index
            .keyword_query("text of 2", 10, Some(&f(json!({"tags": "invoice"}))))
            .await
            .unwrap()
            .unwrap()
            .into_iter()
            .map(|r| r.key)
            .collect();
        filtered.sort();
        assert_eq!(filtered, ["1#a", "1#b"], "filter first");
        assert!(
            index
                .keyword_query("nothing shared", 10, None)
                .await
                .unwrap()
                .unwrap()
                .is_empty()
        );
    }

    // Put replaces the whole vector and its metadata.
    index
        .put(vec![record(
            "3#a",
            vec![1.0, 0.0, 0.0, 0.01],
            json!({"doc_id": "3", "tags": ["moved"]}),
        )])
        .await
        .unwrap();
    assert_eq!(
        keys(
            index
                .query(&q, 10, Some(&f(json!({"tags": "moved"}))))
                .await
                .unwrap()
        ),
        ["3#a"]
    );
    let got = index.get(&["3#a".into(), "nope".into()]).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].metadata.get("created"),
        None,
        "old metadata replaced"
    );

    index
        .delete(&["1#a".into(), "1#b".into(), "never".into()])
        .await
        .unwrap();
    assert_eq!(
        keys(index.query(&q, 10, None).await.unwrap()),
        ["3#a", "2#a"]
    );

    // Limits and bad input are refused, whole.
    assert!(matches!(
        index.query(&q, 0, None).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        index.query(&q, 101, None).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        index.query(&[1.0, 0.0], 1, None).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(
        matches!(
            index.put(vec![record("z", vec![0.0; 4], json!({}))]).await,
            Err(StoreError::Invalid(_))
        ),
        "zero vector"
    );
    assert!(matches!(
        index
            .put(vec![record("z", vec![f32::NAN, 1.0, 0.0, 0.0], json!({}))])
            .await,
        Err(StoreError::Invalid(_))
    ));
    assert!(
        matches!(
            index.put(vec![record("z", vec![1.0; 3], json!({}))]).await,
            Err(StoreError::Invalid(_))
        ),
        "wrong dimension"
    );
    let too_many: Vec<VectorRecord> = (0..501)
        .map(|i| record(&format!("k{i}"), vec![1.0, 0.0, 0.0, 0.0], json!({})))
        .collect();
    assert!(
        matches!(index.put(too_many).await, Err(StoreError::Invalid(_))),
        "at most 500 per put"
    );
    let fat = json!({"blob": "x".repeat(3000)});
    assert!(
        matches!(
            index
                .put(vec![record("z", vec![1.0, 0.0, 0.0, 0.0], fat)])
                .await,
            Err(StoreError::Invalid(_))
        ),
        "filterable metadata ≤ 2 KB"
    );
    assert!(
        index.get(&["z".into()]).await.unwrap().is_empty(),
        "a refused put wrote nothing"
    );
    let five_hundred: Vec<VectorRecord> = (0..500)
        .map(|i| {
            record(
                &format!("k{i}"),
                vec![1.0, i as f32, 0.0, 0.0],
                json!({"i": i}),
            )
        })
        .collect();
    index.put(five_hundred).await.unwrap();
    assert_eq!(index.query(&q, 100, None).await.unwrap().len(), 100);
}

/// Any embedder: one vector per text, in order, of the advertised dimension, the same text
/// giving the same vector, and texts that share words closer than texts that do not.
pub async fn embedder<E: shared::ports::Embedder>(e: E) {
    let (none, _) = e.embed(&[]).await.unwrap();
    assert!(none.is_empty());
    let texts: Vec<String> = [
        "invoice for the boiler repair",
        "the boiler repair invoice total",
        "blood test results and cholesterol",
    ]
    .map(String::from)
    .to_vec();
    let (v, _) = e.embed(&texts).await.unwrap();
    assert_eq!(v.len(), 3);
    assert!(v.iter().all(|x| x.len() == e.dimension()));
    let (again, _) = e.embed(&texts[..1]).await.unwrap();
    assert_eq!(again[0], v[0], "deterministic");
    let cos = |a: &[f32], b: &[f32]| {
        let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        dot / (a.iter().map(|x| x * x).sum::<f32>().sqrt()
            * b.iter().map(|x| x * x).sum::<f32>().sqrt())
    };
    assert!(cos(&v[0], &v[1]) > cos(&v[0], &v[2]));
    // A question, embedded as a query, lands nearer the passage that answers it.
    let (q, _) = e.embed_query("boiler repair invoice").await.unwrap();
    assert_eq!(q.len(), e.dimension());
    assert!(cos(&q, &v[0]) > cos(&q, &v[2]));
    assert!(!e.space().is_empty());
}

/// Any chat model: a suggestion in the domain's shape (names, a plausible date or none), and
/// an answer that cites only passages it was given.
pub async fn chat_model<M: shared::ports::ChatModel>(m: M) {
    use shared::domain::{AnswerInput, DocId, Field, Passage, TagInput, Taxonomy, TaxonomyObject};
    let object = |id, name: &str| TaxonomyObject {
        id,
        name: name.into(),
        match_words: String::new(),
        matching_algorithm: 0,
        document_count: 0,
    };
    let taxonomy = Taxonomy {
        tags: vec![object(1, "Invoice")],
        correspondents: vec![object(1, "ACME")],
        document_types: vec![object(1, "Invoice")],
        custom_fields: vec![],
        storage_paths: vec![],
    };
    let input = TagInput {
        current_title: "scan".into(),
        content: "ACME\nInvoice 2025-031\nDate: 14.03.2025\nTotal: EUR 120.00".into(),
        fields: vec![
            Field::Title,
            Field::Tags,
            Field::Correspondent,
            Field::DocumentType,
            Field::Created,
        ],
        tags: vec!["Invoice".into()],
        correspondents: vec!["ACME".into()],
        document_types: vec!["Invoice".into()],
        custom_fields: vec![],
        storage_paths: vec![],
        restrict_tags: true,
        restrict_correspondents: true,
        restrict_document_types: true,
        taxonomy,
        today: "2025-06-01".into(),
    };
    let (s, _) = m.suggest(&input).await.unwrap();
    assert!(
        s.tags.iter().all(|t| input.tags.contains(t)),
        "{:?}",
        s.tags
    );
    if let Some(c) = &s.created {
        assert!(
            chrono::NaiveDate::parse_from_str(c, "%Y-%m-%d").is_ok(),
            "{c}"
        );
    }
    let passages = vec![Passage {
        n: 1,
        doc_id: DocId::Paperless(7),
        title: "ACME invoice".into(),
        text: "The invoice total is EUR 120.00.".into(),
    }];
    let (a, _) = m
        .answer(&AnswerInput {
            question: "What is the invoice total?".into(),
            passages,
            history: vec![],
        })
        .await
        .unwrap();
    assert!(
        !a.cited.is_empty() && a.cited.iter().all(|n| *n == 1),
        "{a:?}"
    );
    assert!(!m.name().is_empty());
}

/// The document system: read, write back with sets replaced, create objects without
/// duplicates, and typed failures. `doc` is a document id that exists and may be changed.
pub async fn paperless<P: shared::ports::Paperless>(p: P, doc: u64) {
    use shared::domain::{DocumentPatch, ObjectKind};
    use shared::ports::PaperlessError;
    let before = p.document(doc).await.unwrap();
    let tag = p.create(ObjectKind::Tag, "contract-suite").await.unwrap();
    let same = p.create(ObjectKind::Tag, "Contract-Suite").await.unwrap();
    assert_eq!(
        tag.id, same.id,
        "an existing name is reused, case-insensitively"
    );
    let mut tags = before.tags.clone();
    tags.push(tag.id);
    p.patch(
        doc,
        &DocumentPatch {
            tags: Some(tags.clone()),
            title: Some("contract title".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let after = p.document(doc).await.unwrap();
    assert_eq!((after.tags, after.title.as_str()), (tags, "contract title"));
    assert!(
        p.taxonomy()
            .await
            .unwrap()
            .tags
            .iter()
            .any(|t| t.id == tag.id)
    );
    assert!(matches!(
        p.document(u64::MAX / 2).await,
        Err(PaperlessError::NotFound(_))
    ));
    assert!(p.document_url(doc).contains(&doc.to_string()));
}
