//! Traces on Lambda: the SQS door exports the spans of its batch before it returns (Lambda
//! may freeze the process right after), each stage continues the trace its message carries,
//! and a message with a malformed trace context still runs, in a trace of its own.
//!
//! One test in its own binary: it installs the process's global subscriber, as a Lambda's
//! cold start does, with an export interval so long that only the door's flush can deliver.

mod common;

use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use common::Pai;
use lambda_runtime::{Context, LambdaEvent};
use pai_tests::fake_otlp::FakeOtlp;
use pai_tests::fake_paperless::DocSeed;
use shared::domain::Stage;
use shared::lambda::sqs;

fn event(bodies: Vec<String>) -> LambdaEvent<SqsEvent> {
    let mut event = SqsEvent::default();
    event.records = bodies
        .into_iter()
        .enumerate()
        .map(|(i, body)| {
            let mut m = SqsMessage::default();
            m.message_id = Some(format!("m{i}"));
            m.body = Some(body);
            m.attributes
                .insert("ApproximateReceiveCount".into(), "1".into());
            m
        })
        .collect();
    LambdaEvent::new(event, Context::default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqs_door_exports_its_spans_before_it_returns() {
    let otlp = FakeOtlp::start().await;
    // SAFETY: the only test of this binary, before any thread of it reads the environment.
    unsafe {
        std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.url());
        std::env::set_var("OTEL_BSP_SCHEDULE_DELAY", "600000");
    }
    shared::telemetry::init_lambda_subscriber("chunk");
    assert!(shared::telemetry::active());

    let pai = Pai::start(&[]).await;
    let id = pai.paperless.add_document(DocSeed {
        title: "scan".into(),
        content: "Rechnung Berger Haustechnik GmbH, Betrag 120,00 EUR".into(),
        ..Default::default()
    });
    let job = pai.webhook_job(&format!(r#"{{"doc_id": {id}}}"#)).await;
    let chunk = pai
        .app
        .svc
        .queues
        .chunk
        .receive(10, std::time::Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(chunk.len(), 1);
    assert!(
        otlp.spans().is_empty(),
        "nothing is sent before the door flushes"
    );

    let response = sqs::handle_batch(
        &pai.app.svc,
        Stage::Chunk,
        event(vec![chunk[0].body.clone()]),
    )
    .await
    .unwrap();
    assert!(response.batch_item_failures.is_empty());
    // No waiting: the door returned only after the export.
    let spans = otlp.spans();
    let ingest = spans
        .iter()
        .find(|s| s.name == "ingest")
        .expect("the webhook's span");
    let chunk_span = spans
        .iter()
        .find(|s| s.name == "chunk")
        .expect("the chunk stage's span");
    assert_eq!(chunk_span.trace_id, ingest.trace_id);
    assert_eq!(chunk_span.parent_span_id, ingest.span_id);
    assert_eq!(chunk_span.attr("job_id"), Some(job.as_str()));
    assert_eq!(chunk_span.service, "pai-chunk");
    assert!(
        spans.iter().any(|s| s.name == "paperless"
            && s.trace_id == ingest.trace_id
            && s.attr("http.route") == Some("documents/{id}/")
            && s.attr("job_id") == Some(job.as_str())),
        "the document fetch, in the document's trace"
    );

    // A tag message whose trace context is garbage still runs, as a trace of its own.
    let mut tag = pai
        .app
        .svc
        .queues
        .tag
        .receive(10, std::time::Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(tag.len(), 1);
    let mut body: serde_json::Value = serde_json::from_str(&tag.remove(0).body).unwrap();
    body["trace"] = serde_json::json!({"traceparent": "00-not-a-trace-01", "tracestate": "x"});
    let before = otlp.spans().len();
    // Whatever its outcome, the stage runs and is traced.
    sqs::handle_batch(&pai.app.svc, Stage::Tag, event(vec![body.to_string()]))
        .await
        .unwrap();
    let spans = otlp.spans();
    let tag_span = spans[before..]
        .iter()
        .find(|s| s.name == "tag")
        .expect("the tag stage's span");
    assert_eq!(tag_span.parent_span_id, "", "a fresh trace");
    assert_ne!(tag_span.trace_id, ingest.trace_id);
    assert_ne!(tag_span.trace_id, "0".repeat(32));
    assert_eq!(tag_span.attr("job_id"), Some(job.as_str()));
    assert_eq!(tag_span.attr("doc_id"), Some(id.to_string().as_str()));
    assert_eq!(otlp.rejected(), 0);
    pai.shutdown().await;
}
