//! The AWS adapters against the ports' contract suites, on a moto server (S3, DynamoDB, SQS,
//! S3 Vectors): the same suites the embedded adapters pass, so `pai` and the Lambdas behave
//! the same. What moto lacks (QueryVectors) and failures it cannot produce (a part upload that
//! fails) are answered by `aws-smithy-mocks` clients instead.

use std::sync::Arc;
use std::time::Duration;

use pai_tests::aws_stack;
use pai_tests::contract;
use pai_tests::moto::{MotoServer, unique};
use serde_json::{Map, Value, json};
use shared::adapters::aws::{DynamoCache, DynamoState, S3Blobs, S3VectorIndex, SqsQueue};
use shared::ports::{
    BlobStore, Cache, Condition, DeadLetters, QueueConsumer, QueueSender, StateStore, StoreError,
    VectorIndex, VectorRecord,
};

async fn bucket(moto: &MotoServer) -> S3Blobs {
    S3Blobs::new(moto.s3().await, aws_stack::bucket(moto).await)
}

async fn state(moto: &MotoServer) -> DynamoState {
    DynamoState::new(
        moto.dynamodb().await,
        aws_stack::table(moto, &["pk", "sk"]).await,
    )
}

/// A queue that dead-letters after `max_receives`, with its dead-letter queue.
async fn queue(moto: &MotoServer, max_receives: u32) -> SqsQueue {
    let (url, dlq_url) = aws_stack::queue_pair(moto, max_receives).await;
    SqsQueue::new(moto.sqs().await, url, Some(dlq_url))
}

async fn vector_index(moto: &MotoServer) -> S3VectorIndex {
    let bucket = aws_stack::vector_index(moto, 4).await;
    S3VectorIndex::new(moto.s3vectors().await, bucket, "chunks-v1", 4)
}

#[tokio::test]
async fn blob_store_contract_on_s3() {
    let moto = MotoServer::shared();
    contract::blob_store(bucket(&moto).await).await;
}

#[tokio::test]
async fn a_9_mib_object_round_trips_as_a_multipart_upload() {
    let moto = MotoServer::shared();
    let blobs = bucket(&moto).await;
    let big: Vec<u8> = (0..9 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    blobs.put("text/big.bin", &big).await.unwrap();
    assert_eq!(
        blobs.get("text/big.bin").await.unwrap().as_deref(),
        Some(&big[..])
    );
}

#[tokio::test]
async fn a_presigned_put_lands_in_the_bucket() {
    let moto = MotoServer::shared();
    let blobs = bucket(&moto).await;
    let body = "uploaded straight to S3";
    let target = blobs
        .upload_url(
            "uploads/j1/notes.txt",
            "text/plain",
            body.len() as u64,
            Duration::from_secs(300),
        )
        .await
        .unwrap()
        .expect("S3 hands out upload URLs");
    let url = &target.url;
    assert!(
        url.starts_with(moto.url()) && url.contains("X-Amz-Signature"),
        "{url}"
    );
    // Length and single use are signed, so S3 enforces them (moto does not check signatures).
    let signed = url
        .split(['?', '&'])
        .find_map(|p| p.strip_prefix("X-Amz-SignedHeaders="))
        .expect("signed headers")
        .replace("%3B", ";");
    for header in ["content-length", "content-type", "if-none-match"] {
        assert!(
            signed.split(';').any(|h| h == header),
            "{header} not signed: {signed}"
        );
        assert!(
            target.headers.contains_key(header),
            "{header} not handed to the client"
        );
    }
    let put = || {
        let mut req = reqwest::Client::new().put(url);
        for (k, v) in &target.headers {
            req = req.header(k, v);
        }
        req.body(body).send()
    };
    let reply = put().await.unwrap();
    assert!(reply.status().is_success(), "{}", reply.status());
    assert_eq!(
        blobs.get("uploads/j1/notes.txt").await.unwrap().as_deref(),
        Some(body.as_bytes())
    );
    let again = put().await.unwrap();
    assert_eq!(
        again.status(),
        412,
        "a second PUT to the same URL is refused"
    );
    assert!(
        matches!(
            blobs
                .upload_url("k", "text/plain", 1, Duration::from_secs(8 * 24 * 3600))
                .await,
            Err(StoreError::Invalid(_))
        ),
        "S3 refuses presigned URLs valid for more than 7 days"
    );
}

/// A part that fails aborts the multipart upload: no parts are left behind (billed, invisible).
#[tokio::test]
async fn a_failed_part_aborts_the_multipart_upload() {
    use aws_sdk_s3::operation::{
        abort_multipart_upload::AbortMultipartUploadOutput,
        create_multipart_upload::CreateMultipartUploadOutput, upload_part::UploadPartOutput,
    };
    use aws_smithy_mocks::{RuleMode, mock, mock_client};
    let create = mock!(aws_sdk_s3::Client::create_multipart_upload).then_output(|| {
        CreateMultipartUploadOutput::builder()
            .upload_id("u1")
            .build()
    });
    let first_part = mock!(aws_sdk_s3::Client::upload_part)
        .match_requests(|r| r.part_number() == Some(1))
        .then_output(|| UploadPartOutput::builder().e_tag("\"e1\"").build());
    let second_part = mock!(aws_sdk_s3::Client::upload_part)
        .match_requests(|r| r.part_number() == Some(2))
        .then_http_response(|| {
            aws_sdk_s3::config::http::HttpResponse::new(
                400.try_into().unwrap(),
                aws_smithy_types::body::SdkBody::from(
                    "<Error><Code>InvalidRequest</Code><Message>no</Message></Error>",
                ),
            )
        });
    let abort = mock!(aws_sdk_s3::Client::abort_multipart_upload)
        .match_requests(|r| r.upload_id() == Some("u1") && r.key() == Some("big"))
        .then_output(|| AbortMultipartUploadOutput::builder().build());
    let s3 = mock_client!(
        aws_sdk_s3,
        RuleMode::MatchAny,
        [&create, &first_part, &second_part, &abort]
    );
    let blobs = S3Blobs::new(s3, "b");
    let result = blobs.put("big", &vec![1u8; 9 * 1024 * 1024]).await;
    assert!(matches!(result, Err(StoreError::Invalid(_))), "{result:?}");
    assert_eq!((first_part.num_calls(), abort.num_calls()), (1, 1));
}

#[tokio::test]
async fn state_store_contract_on_dynamodb() {
    let moto = MotoServer::shared();
    contract::state_store(state(&moto).await).await;
}

/// Issue 10: a document of 3,000 chunks failed on AWS only (a manifest over DynamoDB's 400 KB
/// item limit).
#[tokio::test]
async fn manifests_of_any_size_on_dynamodb() {
    let moto = MotoServer::shared();
    contract::manifests_of_any_size(state(&moto).await).await;
}

#[tokio::test]
async fn concurrent_updates_on_dynamodb_lose_nothing() {
    let moto = MotoServer::shared();
    contract::concurrent_updates(Arc::new(state(&moto).await)).await;
}

/// DynamoDB's TTL deletes within days: until then an expired item must look absent.
#[tokio::test]
async fn expired_items_are_absent_until_dynamodb_deletes_them() {
    let moto = MotoServer::shared();
    let store = state(&moto).await;
    let past = chrono_now() - 5;
    let v = store
        .put("session/a", &json!("old"), Condition::None, Some(past))
        .await
        .unwrap();
    assert!(store.get("session/a").await.unwrap().is_none());
    assert!(store.list("session/", None, 10).await.unwrap().is_empty());
    assert!(
        matches!(
            store
                .put("session/a", &json!("x"), Condition::Version(v), None)
                .await,
            Err(StoreError::Conflict(_))
        ),
        "an expired item has no version to match"
    );
    store
        .put(
            "session/b",
            &json!("live"),
            Condition::None,
            Some(past + 3600),
        )
        .await
        .unwrap();
    assert_eq!(
        store.list("session/", None, 10).await.unwrap(),
        [("session/b".to_string(), json!("live"))]
    );

    // Counters live on the item: a put keeps them, a delete takes them with it.
    store.add("job/7", "chunks", 2).await.unwrap();
    assert!(
        store.get("job/7").await.unwrap().is_none(),
        "counters alone are no item"
    );
    store
        .put("job/7", &json!({"stage": "embed"}), Condition::Absent, None)
        .await
        .unwrap();
    assert_eq!(store.counters("job/7").await.unwrap()["chunks"], 2);
    store.delete("job/7").await.unwrap();
    assert!(store.counters("job/7").await.unwrap().is_empty());

    let cache = cache(&moto).await;
    cache.put("e", b"v", Some(past)).await.unwrap();
    assert_eq!(cache.get("e").await.unwrap(), None);
}

/// Expired items are filtered out server-side, so a page may come back short: `list` keeps
/// querying until it has `limit` items or the partition ends.
#[tokio::test]
async fn list_pages_past_expired_items() {
    let moto = MotoServer::shared();
    let store = state(&moto).await;
    for i in 0..7 {
        let expires = [2, 3].contains(&i).then(|| chrono_now() - 5);
        store
            .put(
                &format!("manifest/{i:03}"),
                &json!(i),
                Condition::None,
                expires,
            )
            .await
            .unwrap();
    }
    let page = store
        .list("manifest/", Some("manifest/000"), 3)
        .await
        .unwrap();
    assert_eq!(
        page.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        ["manifest/001", "manifest/004", "manifest/005"]
    );
    assert_eq!(page[1].1, json!(4));
    assert!(
        store
            .list("manifest/", Some("zzz"), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.list("manifest/", Some("a"), 10).await.unwrap().len(),
        5
    );
    assert!(matches!(
        store.list("manifest", None, 10).await,
        Err(StoreError::Invalid(_))
    ));
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

async fn cache(moto: &MotoServer) -> DynamoCache {
    DynamoCache::new(moto.dynamodb().await, aws_stack::table(moto, &["pk"]).await)
}

#[tokio::test]
async fn cache_contract_on_dynamodb() {
    let moto = MotoServer::shared();
    contract::cache(cache(&moto).await).await;
}

// `make` is synchronous; creating the queues is not, so it blocks on them in place (hence the
// multi-threaded runtime).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_queue_contract_on_sqs() {
    let moto = MotoServer::shared();
    contract::work_queue(|max_receives| {
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(queue(&moto, max_receives))
        })
    })
    .await;
}

#[tokio::test]
async fn sends_go_in_batches_of_ten_marked_as_ours() {
    let moto = MotoServer::shared();
    let q = queue(&moto, 3).await;
    // moto, like SQS, refuses a batch of more than 10 entries or 256 KiB: 23 bodies of 40 KiB
    // go through only if split on both limits.
    let bodies: Vec<String> = (0..23)
        .map(|i| format!("{i:02}{}", "x".repeat(40 * 1024)))
        .collect();
    q.send(&bodies).await.unwrap();
    let mut got = Vec::new();
    loop {
        let batch = q.receive(10, Duration::from_secs(60)).await.unwrap();
        if batch.is_empty() {
            break;
        }
        got.extend(batch.into_iter().map(|d| d.body[..2].to_string()));
    }
    got.sort();
    assert_eq!(got, (0..23).map(|i| format!("{i:02}")).collect::<Vec<_>>());
}

#[tokio::test]
async fn sent_messages_carry_sent_by_pai() {
    let moto = MotoServer::shared();
    let (url, dlq_url) = aws_stack::queue_pair(&moto, 3).await;
    let sqs = moto.sqs().await;
    SqsQueue::new(sqs.clone(), &url, Some(dlq_url))
        .send(&["marked".to_string()])
        .await
        .unwrap();
    let got = sqs
        .receive_message()
        .queue_url(&url)
        .message_attribute_names("All")
        .send()
        .await
        .unwrap()
        .messages
        .unwrap();
    let attribute = got[0].message_attributes.as_ref().unwrap()["sent_by"].string_value();
    assert_eq!(attribute, Some("pai"));
}

#[tokio::test]
async fn without_a_dead_letter_queue_there_are_no_dead_letters() {
    let moto = MotoServer::shared();
    let sqs = moto.sqs().await;
    let url = sqs
        .create_queue()
        .queue_name(unique("plain"))
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let q = SqsQueue::new(sqs, url, None);
    q.send(&["a".to_string()]).await.unwrap();
    assert!(q.dead_letters(10).await.unwrap().is_empty());
}

fn record(key: &str, vector: Vec<f32>, meta: Value) -> VectorRecord {
    VectorRecord {
        key: key.into(),
        vector,
        metadata: meta.as_object().cloned().unwrap_or_default(),
        text: format!("text of {key}"),
        title: format!("Title {key}"),
    }
}

/// Everything of the vector contract that does not query (moto has no QueryVectors).
#[tokio::test]
async fn s3_vectors_put_get_delete_on_moto() {
    let moto = MotoServer::shared();
    let index = vector_index(&moto).await;
    assert_eq!(index.dimension(), 4);
    index
        .put(vec![
            record(
                "1#a",
                vec![1.0, 0.0, 0.0, 0.0],
                json!({"doc_id": "1", "tags": ["invoice"], "created": 20250314, "score": 0.5}),
            ),
            record(
                "2#a",
                vec![0.0, 1.0, 0.0, 0.0],
                json!({"doc_id": "2", "tags": []}),
            ),
        ])
        .await
        .unwrap();
    let got = index
        .get(&["2#a".into(), "nope".into(), "1#a".into()])
        .await
        .unwrap();
    assert_eq!(
        got.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(),
        ["2#a", "1#a"],
        "in the order asked, missing keys left out"
    );
    let one = &got[1];
    assert_eq!(one.vector, vec![1.0, 0.0, 0.0, 0.0]);
    assert_eq!(
        (one.text.as_str(), one.title.as_str()),
        ("text of 1#a", "Title 1#a")
    );
    assert_eq!(
        Value::Object(one.metadata.clone()),
        json!({"doc_id": "1", "tags": ["invoice"], "created": 20250314, "score": 0.5}),
        "text and title taken out; integers stay integers"
    );
    assert!(one.metadata["created"].is_u64());

    index
        .put(vec![record(
            "1#a",
            vec![0.5, 0.5, 0.0, 0.0],
            json!({"doc_id": "1"}),
        )])
        .await
        .unwrap();
    let replaced = index.get(&["1#a".into()]).await.unwrap();
    assert_eq!(
        replaced[0].metadata,
        Map::from_iter([("doc_id".to_string(), json!("1"))])
    );

    let refused = [
        record("z", vec![0.0; 4], json!({})),
        record("z", vec![f32::NAN, 1.0, 0.0, 0.0], json!({})),
        record("z", vec![1.0; 3], json!({})),
        record(
            "z",
            vec![1.0, 0.0, 0.0, 0.0],
            json!({"blob": "x".repeat(3000)}),
        ),
        record("z", vec![1.0, 0.0, 0.0, 0.0], json!({"text": "reserved"})),
        record("z", vec![1.0, 0.0, 0.0, 0.0], json!({"nested": {"a": 1}})),
    ];
    for r in refused {
        assert!(
            matches!(
                index.put(vec![r.clone()]).await,
                Err(StoreError::Invalid(_))
            ),
            "{:?}",
            r.metadata
        );
    }
    let too_many: Vec<VectorRecord> = (0..501)
        .map(|i| record(&format!("k{i}"), vec![1.0, 0.0, 0.0, 0.0], json!({})))
        .collect();
    assert!(matches!(
        index.put(too_many).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(
        index
            .get(&["z".into(), "k0".into()])
            .await
            .unwrap()
            .is_empty(),
        "refused puts wrote nothing"
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
    let keys: Vec<String> = (0..100).map(|i| format!("k{i}")).collect();
    assert_eq!(index.get(&keys).await.unwrap().len(), 100);
    index.delete(&["1#a".into(), "never".into()]).await.unwrap();
    assert!(index.get(&["1#a".into()]).await.unwrap().is_empty());
    assert_eq!(index.get(&["2#a".into()]).await.unwrap().len(), 1);
    let all: Vec<String> = (0..500).map(|i| format!("k{i}")).collect();
    index.delete(&all).await.unwrap();
    assert!(index.get(&keys).await.unwrap().is_empty());
}

/// QueryVectors, which moto lacks, against a mocked client: the request carries top-k, the
/// filter as a document, metadata and distances asked for; the reply maps back to hits.
#[tokio::test]
async fn s3_vectors_query_request_and_reply() {
    use aws_sdk_s3vectors::operation::query_vectors::QueryVectorsOutput;
    use aws_sdk_s3vectors::types::{QueryOutputVector, VectorData};
    use aws_smithy_mocks::{mock, mock_client};
    use aws_smithy_types::{Document, Number};
    use shared::filter::Filter;
    use shared::smithy_json::to_document;

    let filter =
        Filter::parse(&json!({"$and": [{"tags": "tax"}, {"created": {"$gte": 20240101}}]}))
            .unwrap();
    let expected_filter = to_document(&filter.to_json());
    let rule = mock!(aws_sdk_s3vectors::Client::query_vectors)
        .match_requests(move |r| {
            r.vector_bucket_name() == Some("vb")
                && r.index_name() == Some("chunks-v1")
                && r.top_k() == Some(5)
                && r.return_metadata() == Some(true)
                && r.return_distance() == Some(true)
                && r.query_vector() == Some(&VectorData::Float32(vec![1.0, 0.0, 0.0, 0.0]))
                && r.filter() == Some(&expected_filter)
        })
        .then_output(|| {
            let meta = |doc: &str| {
                Document::Object(
                    [
                        ("doc_id".to_string(), Document::String(doc.into())),
                        (
                            "created".to_string(),
                            Document::Number(Number::PosInt(20240101)),
                        ),
                        ("text".to_string(), Document::String(format!("text {doc}"))),
                        (
                            "title".to_string(),
                            Document::String(format!("Title {doc}")),
                        ),
                    ]
                    .into(),
                )
            };
            QueryVectorsOutput::builder()
                .vectors(
                    QueryOutputVector::builder()
                        .key("2#a")
                        .distance(0.0)
                        .metadata(meta("2"))
                        .build()
                        .unwrap(),
                )
                .vectors(
                    QueryOutputVector::builder()
                        .key("2#b")
                        .distance(0.25)
                        .metadata(meta("2"))
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap()
        });
    let client = mock_client!(aws_sdk_s3vectors, [&rule]);
    let index = S3VectorIndex::new(client, "vb", "chunks-v1", 4);

    let hits = index
        .query(&[1.0, 0.0, 0.0, 0.0], 5, Some(&filter))
        .await
        .unwrap();
    assert_eq!(rule.num_calls(), 1);
    assert_eq!(
        hits.iter()
            .map(|h| (h.record.key.as_str(), h.distance))
            .collect::<Vec<_>>(),
        [("2#a", 0.0), ("2#b", 0.25)]
    );
    let first = &hits[0].record;
    assert_eq!(
        (first.text.as_str(), first.title.as_str()),
        ("text 2", "Title 2")
    );
    assert_eq!(
        Value::Object(first.metadata.clone()),
        json!({"doc_id": "2", "created": 20240101})
    );

    for (top_k, vector) in [
        (0, vec![1.0, 0.0, 0.0, 0.0]),
        (101, vec![1.0, 0.0, 0.0, 0.0]),
        (5, vec![1.0, 0.0]),
    ] {
        assert!(matches!(
            index.query(&vector, top_k, None).await,
            Err(StoreError::Invalid(_))
        ));
    }
    assert_eq!(rule.num_calls(), 1, "refused before any call");
}
