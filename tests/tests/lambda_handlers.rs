//! Every function's handler driven by its `events/` file, built exactly as a cold start builds
//! it (`shared::lambda::load`: secrets from SSM, AWS adapters from the environment), against
//! the template's resources on a moto server and a fake Paperless-ngx.
//!
//! The flow a Paperless webhook starts goes through all of them: ingest → chunk → embed → tag,
//! with each SQS event carrying the message the previous function really sent.

use std::collections::HashMap;
use std::sync::Arc;

use aws_lambda_events::event::cloudwatch_events::CloudWatchEvent;
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use lambda_http::tower::ServiceExt;
use lambda_runtime::{Context, LambdaEvent};
use pai_tests::aws_stack::Stack;
use pai_tests::fake_paperless::{DocSeed, FakePaperless};
use pai_tests::moto::{MotoServer, unique};
use serde_json::{Value, json};
use shared::lambda::wire::Wired;
use shared::lambda::{Env, Function, load};

const TOKEN: &str = "paperless-token-for-lambda-tests";
/// The values the sample events carry.
const WEBHOOK_SECRET: &str = "test-webhook-secret";
const API_KEY: &str = "test-api-key-0123456789";

fn event_file(name: &str) -> String {
    let path = format!("{}/../events/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

struct World {
    moto: Arc<MotoServer>,
    paperless: FakePaperless,
    env: HashMap<String, String>,
    doc: u64,
}

impl World {
    async fn new() -> World {
        let moto = MotoServer::shared();
        let paperless = FakePaperless::start(TOKEN).await;
        paperless.add_tag("Invoice", "invoice");
        let doc = paperless.add_document(DocSeed {
            title: "scan_0001".into(),
            content: "Berger Haustechnik GmbH\nInvoice 2025-117\nDate: 14.03.2025\n\
                      Boiler repair and maintenance. Total EUR 1,250.00."
                .into(),
            ..DocSeed::default()
        });
        let stack = Stack::create(&moto, 3, 256).await;
        let prefix = format!("/{}/", unique("pai"));
        Stack::put_secrets(
            &moto,
            &prefix,
            &[
                ("PAPERLESS_TOKEN", TOKEN),
                ("WEBHOOK_SECRET", WEBHOOK_SECRET),
                ("API_KEYS", API_KEY),
            ],
        )
        .await;
        let mut env = stack.env;
        env.insert("PAPERLESS_URL".into(), paperless.url());
        env.insert("SECRETS_PREFIX".into(), prefix);
        env.insert("EMBEDDING_DIMENSIONS".into(), "256".into());
        World {
            moto,
            paperless,
            env,
            doc,
        }
    }

    async fn function(&self, function: Function) -> Wired {
        let sdk = self.moto.sdk_config().await;
        match load(function, &sdk, &mut Env::from_map(self.env.clone())).await {
            Ok(svc) => svc,
            Err(e) => panic!("{} does not start: {e}", function.name()),
        }
    }

    /// Takes the messages waiting on a queue, as SQS hands them to a function.
    async fn receive(&self, queue_var: &str) -> Vec<(String, String, u32)> {
        let sqs = self.moto.sqs().await;
        let reply = sqs
            .receive_message()
            .queue_url(&self.env[queue_var])
            .max_number_of_messages(10)
            .message_system_attribute_names(
                aws_sdk_sqs::types::MessageSystemAttributeName::ApproximateReceiveCount,
            )
            .send()
            .await
            .expect("receive");
        reply
            .messages()
            .iter()
            .map(|m| {
                let receives = m
                    .attributes()
                    .and_then(|a| {
                        a.get(&aws_sdk_sqs::types::MessageSystemAttributeName::ApproximateReceiveCount)
                    })
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(1);
                (
                    m.message_id().unwrap_or_default().to_string(),
                    m.body().unwrap_or_default().to_string(),
                    receives,
                )
            })
            .collect()
    }
}

/// The sample SQS event with its records' bodies replaced by real messages.
fn sqs_event(file: &str, messages: &[(String, String, u32)]) -> SqsEvent {
    let mut event: SqsEvent = serde_json::from_str(&event_file(file)).expect("SQS event");
    let template = event.records[0].clone();
    event.records = messages
        .iter()
        .map(|(id, body, receives)| {
            let mut r = template.clone();
            r.message_id = Some(id.clone());
            r.body = Some(body.clone());
            r.attributes
                .insert("ApproximateReceiveCount".into(), receives.to_string());
            r
        })
        .collect();
    event
}

/// An SQS batch through the function's door.
async fn run_batch(function: &Wired, event: SqsEvent) -> SqsBatchResponse {
    function
        .sqs_batch(LambdaEvent::new(event, Context::default()))
        .await
        .expect("batch handled")
}

/// An HTTP event file through the ingest door's router: status and JSON body.
async fn http(ingest: &Wired, event: &str) -> (u16, Value) {
    call(ingest.router(), event).await
}

/// An HTTP event file through a router: status and JSON body.
async fn call(router: axum::Router, event: &str) -> (u16, Value) {
    let request = lambda_http::request::from_str(event).expect("HTTP event");
    let response = router.oneshot(request).await.expect("router answers");
    let status = response.status().as_u16();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

async fn job(ingest: &Wired, job_id: &str) -> Value {
    let event =
        event_file("ingest-job.json").replace("00000000-0000-7000-8000-000000000000", job_id);
    let (status, body) = http(ingest, &event).await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paperless_webhook_flows_through_ingest_chunk_embed_and_tag() {
    let world = World::new().await;
    let ingest = world.function(Function::Ingest).await;
    let event = event_file("ingest-webhook.json")
        .replace(
            r#"\"doc_id\":\"1\""#,
            &format!(r#"\"doc_id\":\"{}\""#, world.doc),
        )
        .replace("/documents/1/", &format!("/documents/{}/", world.doc));
    let (status, accepted) = http(&ingest, &event).await;
    assert_eq!(status, 202, "{accepted}");
    let job_id = accepted["job_id"].as_str().expect("job id").to_string();

    let chunk = world.function(Function::Chunk).await;
    let messages = world.receive("CHUNK_QUEUE_URL").await;
    assert_eq!(messages.len(), 1, "one chunk message per webhook");
    let failures = run_batch(&chunk, sqs_event("chunk-sqs.json", &messages)).await;
    assert!(failures.batch_item_failures.is_empty());

    let embed = world.function(Function::Embed).await;
    let messages = world.receive("EMBED_QUEUE_URL").await;
    assert!(!messages.is_empty(), "chunk sent embedding work");
    let failures = run_batch(&embed, sqs_event("embed-sqs.json", &messages)).await;
    assert!(failures.batch_item_failures.is_empty());

    let tag = world.function(Function::Tag).await;
    let messages = world.receive("TAG_QUEUE_URL").await;
    assert_eq!(messages.len(), 1, "chunk sent one tagging message");
    let failures = run_batch(&tag, sqs_event("tag-sqs.json", &messages)).await;
    assert!(failures.batch_item_failures.is_empty());

    let job = job(&ingest, &job_id).await;
    assert_eq!(job["status"], "done", "{job}");
    let doc = world.paperless.document(world.doc).expect("document");
    assert_ne!(
        doc["title"], "scan_0001",
        "the title was written back: {doc}"
    );
    assert!(
        world.paperless.count("PATCH", "/api/documents/") >= 1,
        "tag wrote to Paperless"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_goes_straight_to_s3_and_arrives_as_a_notification() {
    let world = World::new().await;
    let ingest = world.function(Function::Ingest).await;
    let (status, created) = http(&ingest, &event_file("ingest-upload.json")).await;
    assert_eq!(status, 201, "{created}");
    let upload_url = created["upload_url"].as_str().expect("upload url");
    assert!(
        upload_url.starts_with(world.moto.url()) && upload_url.contains("X-Amz-Signature"),
        "a presigned S3 URL: {upload_url}"
    );
    // The event announces 18,231 bytes: the URL is signed for exactly that length.
    let line = "Lease agreement 2021 between Anna Example and Hausverwaltung Meyer.\n";
    let mut text = line.repeat(18_231 / line.len() + 1);
    text.truncate(18_231);
    let mut put = reqwest::Client::new().put(upload_url);
    for (k, v) in created["upload_headers"]
        .as_object()
        .expect("upload headers")
    {
        put = put.header(k, v.as_str().expect("header value"));
    }
    let put = put.body(text).send().await.expect("PUT to S3");
    assert!(put.status().is_success(), "{}", put.status());

    // S3's notification for the object, and the test event S3 sends when it is configured.
    let job_id = created["job_id"].as_str().expect("job id");
    let key = shared::pipeline::ingest::upload_key(job_id, "lease-2021.txt");
    let mut event: SqsEvent =
        serde_json::from_str(&event_file("chunk-s3-upload.json")).expect("SQS event");
    let mut notification: Value =
        serde_json::from_str(event.records[0].body.as_deref().expect("body")).expect("S3 event");
    notification["Records"][0]["s3"]["object"]["key"] = Value::from(key);
    event.records[0].body = Some(notification.to_string());
    let chunk = world.function(Function::Chunk).await;
    let failures = run_batch(&chunk, event).await;
    assert!(failures.batch_item_failures.is_empty());

    let job = job(&ingest, job_id).await;
    assert_eq!(job["stages"]["chunk"]["status"], "done", "{job}");
    assert_eq!(world.receive("TAG_QUEUE_URL").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_for_unknown_jobs_are_acknowledged_not_retried() {
    let world = World::new().await;
    for (function, file) in [
        (Function::Chunk, "chunk-sqs.json"),
        (Function::Embed, "embed-sqs.json"),
        (Function::Tag, "tag-sqs.json"),
    ] {
        let svc = world.function(function).await;
        let event: SqsEvent = serde_json::from_str(&event_file(file)).expect("SQS event");
        let records = event.records.len();
        let response = run_batch(&svc, event).await;
        assert!(
            response.batch_item_failures.is_empty(),
            "{file}: {records} records for jobs that do not exist fail for good, they do not \
             come back: {:?}",
            response.batch_item_failures
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_reports_only_the_messages_to_retry() {
    let world = World::new().await;
    let chunk = world.function(Function::Chunk).await;
    // Paperless is down for the first request: that message comes back, the malformed one
    // does not (retrying cannot fix it).
    world.paperless.fail_next(10, 503);
    let body = format!(
        r#"{{"source": "paperless", "job_id": "{}", "doc_id": {}}}"#,
        "0193a1b2-0000-7000-8000-0000000000aa", world.doc
    );
    let event = sqs_event(
        "chunk-sqs.json",
        &[
            ("retry-me".into(), body, 1),
            ("drop-me".into(), "{not json".into(), 1),
        ],
    );
    let response = run_batch(&chunk, event).await;
    let ids: Vec<_> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    assert_eq!(ids, ["retry-me"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedule_queues_what_changed_in_paperless() {
    let world = World::new().await;
    let sync = world.function(Function::Sync).await;
    let event: CloudWatchEvent =
        serde_json::from_str(&event_file("sync-schedule.json")).expect("schedule event");
    let report =
        shared::lambda::sync_on_schedule(sync.sync(), LambdaEvent::new(event, Context::default()))
            .await
            .expect("sync runs");
    assert_eq!(report["queued"], 1, "{report}");
    assert_eq!(world.receive("CHUNK_QUEUE_URL").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_checks_its_api_key_and_fails_clearly_without_a_vector_query() {
    let world = World::new().await;
    let chat = world.function(Function::Chat).await;
    let router = || chat.router();
    let wrong = event_file("chat-url.json").replace(API_KEY, "not-the-key-0123456789");
    let (status, body) = call(router(), &wrong).await;
    assert_eq!(status, 401, "{body}");
    // The public function URL serves chat only: the webhook belongs to ingest.
    let webhook = event_file("ingest-webhook.json");
    let (status, body) = call(router(), &webhook).await;
    assert_eq!(status, 404, "{body}");
    // moto has no QueryVectors (tested against mocks in aws_contract): the answer is a clear,
    // short error naming the failing call, not a hang, a made-up reply or an SDK dump.
    let (status, body) = call(router(), &event_file("chat-url.json")).await;
    assert!(status >= 422, "{status} {body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("QueryVectors"), "{body}");
    assert!(
        message.len() < 300 && !message.contains("SdkBody"),
        "{body}"
    );
}

/// An API Gateway (HTTP API v2) event for `method path` with an API key, from the sample.
fn api_event(method: &str, path: &str, body: &str) -> String {
    let mut event: Value = serde_json::from_str(&event_file("ingest-job.json")).expect("event");
    event["routeKey"] = json!(format!("{method} {path}"));
    event["rawPath"] = json!(path);
    event["requestContext"]["http"]["method"] = json!(method);
    event["requestContext"]["http"]["path"] = json!(path);
    event["requestContext"]["routeKey"] = json!(format!("{method} {path}"));
    event["headers"]["content-type"] = json!("application/json");
    event["body"] = json!(body);
    event.as_object_mut().unwrap().remove("pathParameters");
    event.to_string()
}

impl World {
    /// A webhook for `doc` through the ingest function: the job id.
    async fn webhook(&self, ingest: &Wired, doc: u64) -> String {
        let event = event_file("ingest-webhook.json")
            .replace(r#"\"doc_id\":\"1\""#, &format!(r#"\"doc_id\":\"{doc}\""#))
            .replace("/documents/1/", &format!("/documents/{doc}/"));
        let (status, accepted) = http(ingest, &event).await;
        assert_eq!(status, 202, "{accepted}");
        accepted["job_id"].as_str().expect("job id").to_string()
    }

    /// What SQS does after `MaxReceives` receives of a message that kept killing its worker:
    /// every chunk message waiting now moves to the chunk DLQ.
    async fn dead_letter_chunk_messages(&self) {
        let sqs = self.moto.sqs().await;
        let taken = sqs
            .receive_message()
            .queue_url(&self.env["CHUNK_QUEUE_URL"])
            .max_number_of_messages(10)
            .send()
            .await
            .expect("receive");
        assert!(
            !taken.messages().is_empty(),
            "a chunk message to dead-letter"
        );
        for message in taken.messages() {
            sqs.send_message()
                .queue_url(&self.env["CHUNK_DLQ_URL"])
                .message_body(message.body().unwrap_or_default())
                .send()
                .await
                .expect("dead-letter");
            sqs.delete_message()
                .queue_url(&self.env["CHUNK_QUEUE_URL"])
                .receipt_handle(message.receipt_handle().unwrap_or_default())
                .send()
                .await
                .expect("delete");
        }
    }

    async fn dead_letters_left(&self) -> usize {
        let sqs = self.moto.sqs().await;
        sqs.receive_message()
            .queue_url(&self.env["CHUNK_DLQ_URL"])
            .max_number_of_messages(10)
            .visibility_timeout(0)
            .send()
            .await
            .expect("receive dlq")
            .messages()
            .len()
    }

    /// Runs what waits on the chunk, embed and tag queues through their functions, in order.
    async fn run_queues(&self) {
        for (function, var, file) in [
            (Function::Chunk, "CHUNK_QUEUE_URL", "chunk-sqs.json"),
            (Function::Embed, "EMBED_QUEUE_URL", "embed-sqs.json"),
            (Function::Tag, "TAG_QUEUE_URL", "tag-sqs.json"),
        ] {
            let svc = self.function(function).await;
            loop {
                let messages = self.receive(var).await;
                if messages.is_empty() {
                    break;
                }
                // One at a time: two jobs of one document in a batch would meet at its lease.
                for message in messages {
                    let event = sqs_event(file, std::slice::from_ref(&message));
                    let failures = run_batch(&svc, event).await;
                    assert!(
                        failures.batch_item_failures.is_empty(),
                        "{var}: {message:?}"
                    );
                }
            }
        }
    }
}

/// On AWS nothing else watches the DLQs: ingest's retry route notes a dead letter, removes it
/// and queues its job again; a sync run turns a dead letter into a failed job and, as the
/// failure may heal, runs it again by itself. Either way the document ends up tagged. Both
/// functions read the DLQs through the template's variables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_on_aws_are_run_again_by_the_retry_route_and_by_sync() {
    let world = World::new().await;
    let ingest = world.function(Function::Ingest).await;

    let by_hand = world.webhook(&ingest, world.doc).await;
    world.dead_letter_chunk_messages().await;
    assert_eq!(job(&ingest, &by_hand).await["status"], "queued");
    let retry = api_event("POST", &format!("/jobs/{by_hand}/retry"), "");
    let (status, body) = http(&ingest, &retry).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        world.dead_letters_left().await,
        0,
        "the dead letter was removed"
    );
    world.run_queues().await;
    let done = job(&ingest, &by_hand).await;
    assert_eq!(done["status"], "done", "{done}");

    let second = world.paperless.add_document(DocSeed {
        title: "scan_0002".into(),
        content: "Stadtwerke Musterstadt\nInvoice 88-2025\nElectricity, March. EUR 71.20.".into(),
        ..DocSeed::default()
    });
    let by_sync = world.webhook(&ingest, second).await;
    world.dead_letter_chunk_messages().await;
    let sync = world.function(Function::Sync).await;
    let schedule: CloudWatchEvent =
        serde_json::from_str(&event_file("sync-schedule.json")).expect("schedule event");
    shared::lambda::sync_on_schedule(sync.sync(), LambdaEvent::new(schedule, Context::default()))
        .await
        .expect("sync runs");
    assert_eq!(
        world.dead_letters_left().await,
        0,
        "sync took the dead letter"
    );
    let again = job(&ingest, &by_sync).await;
    assert_eq!(
        again["attempt"], 1,
        "sync ran the dead-lettered job again: {again}"
    );
    world.run_queues().await;
    let done = job(&ingest, &by_sync).await;
    assert_eq!(done["status"], "done", "{done}");
}

/// Every state and cache call goes through the function's grants (shared/src/lambda/grants.rs,
/// mirrored by the template's IAM): a call outside them panics in tests. So every route of the
/// ingest door and every path of the workers and sync is walked once here, on moto: review,
/// approve, undo, retag, the status page, a tag failure on its last receive while Paperless is
/// down (its failed tag kept for sync), a sync that runs it again, a retry of all failed jobs,
/// and a sync that forgets a document deleted in Paperless.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_and_stage_stays_within_its_function_s_grants() {
    let world = World::new().await;
    let ingest = world.function(Function::Ingest).await;
    let first = world.webhook(&ingest, world.doc).await;
    world.run_queues().await;
    assert_eq!(job(&ingest, &first).await["status"], "done");

    let doc = world.doc;
    for (method, path, body) in [
        ("GET", "/jobs".to_string(), ""),
        ("GET", "/status".to_string(), ""),
        ("GET", "/status/checks".to_string(), ""),
        ("GET", "/review".to_string(), ""),
        ("GET", format!("/documents/{doc}/suggestions"), ""),
        ("POST", format!("/documents/{doc}/undo"), "{}"),
        ("POST", format!("/documents/{doc}/approve"), "{}"),
    ] {
        let (status, reply) = http(&ingest, &api_event(method, &path, body)).await;
        assert!(status < 500, "{method} {path}: {status} {reply}");
    }

    // A re-tag whose tagging fails on its last receive while Paperless is down.
    let (status, retag) = http(
        &ingest,
        &api_event("POST", &format!("/documents/{doc}/retag"), "{}"),
    )
    .await;
    assert_eq!(status, 202, "{retag}");
    let retag_job = retag["job_id"].as_str().expect("job id").to_string();
    let chunk = world.function(Function::Chunk).await;
    let messages = world.receive("CHUNK_QUEUE_URL").await;
    run_batch(&chunk, sqs_event("chunk-sqs.json", &messages)).await;
    let embed = world.function(Function::Embed).await;
    let messages = world.receive("EMBED_QUEUE_URL").await;
    run_batch(&embed, sqs_event("embed-sqs.json", &messages)).await;
    world.paperless.fail_next(100, 503);
    let tag = world.function(Function::Tag).await;
    let last_receive: Vec<_> = world
        .receive("TAG_QUEUE_URL")
        .await
        .into_iter()
        .map(|(id, body, _)| (id, body, 8))
        .collect();
    assert_eq!(last_receive.len(), 1, "the re-tag reached tagging");
    run_batch(&tag, sqs_event("tag-sqs.json", &last_receive)).await;
    assert_eq!(job(&ingest, &retag_job).await["status"], "failed");

    // Paperless is back: sync writes the kept failed tag; the retry runs the job again.
    world.paperless.clear_failures();
    let sync = world.function(Function::Sync).await;
    let schedule = || {
        let event: CloudWatchEvent =
            serde_json::from_str(&event_file("sync-schedule.json")).expect("schedule event");
        LambdaEvent::new(event, Context::default())
    };
    let report = shared::lambda::sync_on_schedule(sync.sync(), schedule())
        .await
        .expect("sync runs");
    // Run again (the outage may heal), so its kept failed tag is dropped, not written.
    assert_eq!(report["retried"], json!([retag_job]), "{report}");
    assert_eq!(report["failed_tags_written"], 0, "{report}");
    let (status, retried) = http(&ingest, &api_event("POST", "/jobs/retry-failed", "{}")).await;
    assert!(status < 500, "{retried}");
    world.run_queues().await;

    // Deleted in Paperless: the next sync forgets the document.
    assert_eq!(job(&ingest, &retag_job).await["status"], "done");
    world.paperless.delete_document(doc);
    let report = shared::lambda::sync_on_schedule(sync.sync(), schedule())
        .await
        .expect("sync runs");
    assert_eq!(report["removed"], 1, "{report}");
}
