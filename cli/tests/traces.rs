//! Traces: with `OTEL_EXPORTER_OTLP_ENDPOINT` set, `pai serve` exports OTLP/HTTP (protobuf) to
//! a fake receiver. One document's trip is one trace, from the webhook through the queue
//! messages to chunk, embed and tag, with a span per model call and per Paperless call, the
//! job and document ids on every span; the retry of the failed job continues that trace; a
//! chat request is a trace of its own.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pai_tests::fake_openai::FakeOpenAi;
use pai_tests::fake_otlp::{FakeOtlp, ReceivedSpan};
use pai_tests::fake_paperless::{DocSeed, FakePaperless};
use serde_json::{Value, json};

const PAI: &str = env!("CARGO_BIN_EXE_pai");
const TOKEN: &str = "paperless-token";
const SECRET: &str = "webhook-secret-0123456789";

/// Waits (at most a minute: the batch exporter sends every 50 ms here) until `ready` holds
/// for the spans received; returns them.
async fn spans_when(
    otlp: &FakeOtlp,
    what: &str,
    ready: impl Fn(&[ReceivedSpan]) -> bool,
) -> Vec<ReceivedSpan> {
    let started = Instant::now();
    loop {
        let spans = otlp.spans();
        if ready(&spans) {
            return spans;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "never received {what}: {:#?}",
            spans
                .iter()
                .map(|s| (&s.name, &s.trace_id, &s.attributes))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn in_trace<'a>(spans: &'a [ReceivedSpan], trace: &str, name: &str) -> Vec<&'a ReceivedSpan> {
    spans
        .iter()
        .filter(|s| s.trace_id == trace && s.name == name)
        .collect()
}

async fn job_with_status(http: &reqwest::Client, url: &str, job: &str, status: &str) -> Value {
    let started = Instant::now();
    loop {
        let j: Value = http
            .get(format!("{url}/jobs/{job}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if j["status"] == status {
            return j;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{j}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_document_is_one_trace_across_stages_calls_and_its_retry() {
    let paperless = FakePaperless::start(TOKEN).await;
    let model = FakeOpenAi::start(None).await;
    let otlp = FakeOtlp::start().await;
    // Tagging fails for good until `broken` is cleared; answers cite passage 1.
    let broken = Arc::new(AtomicBool::new(true));
    let b = broken.clone();
    model.set_default(move |req| {
        if req.get("response_format").is_none() {
            "The fence is 1.20 m high [1].".into()
        } else if b.load(Ordering::SeqCst) {
            "not json at all".into()
        } else {
            json!({"title": "Fence letter", "tags": ["Mail"], "correspondent": null, "document_type": null, "created": null}).to_string()
        }
    });
    let id = paperless.add_document(DocSeed {
        title: "scan".into(),
        content: "A letter about the garden fence: it may be at most 1.20 m high.".into(),
        ..Default::default()
    });
    let doc = id.to_string();
    let data = tempfile::tempdir().unwrap();
    let mut env = pai_tests::serve_env(data.path(), &paperless, TOKEN, SECRET, &model);
    env.extend([
        ("EMBEDDING_MODEL", "e".to_string()),
        ("EMBEDDING_DIMENSIONS", "32".to_string()),
        // The webhook starts the job, not a start-up sync.
        ("SYNC_INTERVAL_MINUTES", "0".to_string()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.url()),
        ("OTEL_SERVICE_NAME", "pai-under-test".to_string()),
        ("OTEL_BSP_SCHEDULE_DELAY", "50".to_string()),
    ]);
    let (mut server, url) = pai_tests::spawn_pai_serve(PAI, &env);
    let http = reqwest::Client::new();
    let accepted: Value = http
        .post(format!("{url}/webhooks/paperless"))
        .header("X-Webhook-Secret", SECRET)
        .json(&json!({"doc_id": doc}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let job = accepted["job_id"]
        .as_str()
        .or(accepted["id"].as_str())
        .unwrap_or_else(|| panic!("no job id in {accepted}"))
        .to_string();
    job_with_status(&http, &url, &job, "failed").await;

    // The first run: ingest opens the trace, every stage continues it.
    let of_job = |s: &ReceivedSpan| s.attr("job_id") == Some(job.as_str());
    let spans = spans_when(&otlp, "the first run's stages", |spans| {
        let names: Vec<&str> = spans
            .iter()
            .filter(|s| of_job(s))
            .map(|s| s.name.as_str())
            .collect();
        ["ingest", "chunk", "embed", "tag"]
            .iter()
            .all(|n| names.contains(n))
            // The failure is marked on the document (a Paperless call) after the tag span's
            // model call; the tag span ends last.
            && spans.iter().any(|s| of_job(s) && s.name == "tag")
    })
    .await;
    let ingest = spans
        .iter()
        .find(|s| s.name == "ingest" && of_job(s))
        .unwrap();
    let trace = ingest.trace_id.clone();
    assert_eq!(ingest.parent_span_id, "", "ingest opens the trace");
    assert_eq!(ingest.service, "pai-under-test");
    let chunk = in_trace(&spans, &trace, "chunk");
    let embed = in_trace(&spans, &trace, "embed");
    let tag = in_trace(&spans, &trace, "tag");
    assert_eq!(
        (chunk.len(), tag.len()),
        (1, 1),
        "one chunk and one tag span"
    );
    assert!(!embed.is_empty());
    // The context travelled in the messages: each stage's parent is the one that queued it.
    assert_eq!(chunk[0].parent_span_id, ingest.span_id);
    assert!(embed.iter().all(|e| e.parent_span_id == chunk[0].span_id));
    assert_eq!(tag[0].parent_span_id, chunk[0].span_id);
    for stage in [ingest].into_iter().chain(chunk).chain(embed).chain(tag) {
        assert_eq!(stage.attr("job_id"), Some(job.as_str()), "{stage:?}");
        assert_eq!(stage.attr("doc_id"), Some(doc.as_str()), "{stage:?}");
    }

    // Every model and Paperless call of the run is a span in the trace, with the job's ids.
    let calls: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.trace_id == trace && (s.name == "model" || s.name == "paperless"))
        .collect();
    for call in &calls {
        assert_eq!(call.attr("job_id"), Some(job.as_str()), "{call:?}");
        assert_eq!(call.attr("doc_id"), Some(doc.as_str()), "{call:?}");
    }
    let models: Vec<&&ReceivedSpan> = calls.iter().filter(|s| s.name == "model").collect();
    let embedding = models
        .iter()
        .find(|s| s.attr("kind") == Some("embed"))
        .expect("an embedding call");
    assert_eq!(embedding.attr("provider"), Some("openai"));
    assert_eq!(embedding.attr("model"), Some("e"));
    assert_eq!(embedding.attr("cache_hit"), Some("false"));
    assert!(
        embedding
            .attr("input_tokens")
            .is_some_and(|t| t.parse::<u64>().unwrap() > 0),
        "{embedding:?}"
    );
    let tagging = models
        .iter()
        .find(|s| s.attr("kind") == Some("tag"))
        .expect("a tagging call");
    assert_eq!(tagging.attr("provider"), Some("openai"));
    assert!(tagging.attr("model").is_some_and(|m| !m.is_empty()));
    assert_eq!(tagging.attr("cache_hit"), Some("false"));
    let fetch = calls
        .iter()
        .find(|s| s.name == "paperless" && s.attr("http.route") == Some("documents/{id}/"))
        .expect("the document fetch");
    assert_eq!(fetch.attr("http.request.method"), Some("GET"));
    assert_eq!(fetch.attr("http.response.status_code"), Some("200"));
    assert!(
        calls
            .iter()
            .any(|s| s.name == "paperless" && s.attr("http.request.method") == Some("PATCH")),
        "the failure marked on the document is a Paperless call too"
    );

    // The retry of the failed job runs it again in the same trace.
    broken.store(false, Ordering::SeqCst);
    let r = http
        .post(format!("{url}/jobs/{job}/retry"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    job_with_status(&http, &url, &job, "done").await;
    let spans = spans_when(&otlp, "the retry's stages", |spans| {
        in_trace(spans, &trace, "retry").len() == 1
            && in_trace(spans, &trace, "chunk").len() == 2
            && in_trace(spans, &trace, "tag").len() == 2
    })
    .await;
    let retry = in_trace(&spans, &trace, "retry")[0];
    assert_eq!(retry.attr("job_id"), Some(job.as_str()));
    assert_eq!(retry.attr("attempt"), Some("1"));
    let rerun = in_trace(&spans, &trace, "chunk")
        .into_iter()
        .find(|c| c.parent_span_id == retry.span_id)
        .expect("the re-run's chunk stage continues from the retry");
    let retag = in_trace(&spans, &trace, "tag")
        .into_iter()
        .find(|t| t.parent_span_id == rerun.span_id)
        .expect("the re-run's tag stage");
    assert_eq!(retag.attr("doc_id"), Some(doc.as_str()));
    // The failed run's tag stage is an error in the trace; the re-run's is not.
    assert_eq!(tag_statuses(&spans, &trace), vec!["ERROR", ""]);
    assert!(
        spans.iter().any(|s| s.trace_id == trace
            && s.name == "model"
            && s.attr("kind") == Some("tag")
            && s.attr("output_tokens").is_some()),
        "the re-run's tagging call, with its tokens"
    );

    // A chat request: its own trace, with retrieval and the model calls beneath it.
    let answer: Value = http
        .post(format!("{url}/chat"))
        .json(&json!({"question": "How high may the fence be?", "document_id": id}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["citations"][0]["doc_id"], doc, "{answer}");
    let spans = spans_when(&otlp, "the chat's spans", |spans| {
        spans.iter().any(|s| s.name == "chat")
    })
    .await;
    let chat = spans.iter().find(|s| s.name == "chat").unwrap();
    assert_ne!(chat.trace_id, trace);
    assert_eq!(chat.parent_span_id, "");
    assert_eq!(chat.attr("passages"), Some("1"), "{chat:?}");
    let retrieve = in_trace(&spans, &chat.trace_id, "retrieve");
    assert_eq!(retrieve.len(), 1);
    assert_eq!(retrieve[0].parent_span_id, chat.span_id);
    let chat_models: Vec<&str> = in_trace(&spans, &chat.trace_id, "model")
        .iter()
        .filter_map(|s| s.attr("kind"))
        .collect();
    assert!(chat_models.contains(&"embed_query"), "{chat_models:?}");
    assert!(chat_models.contains(&"answer"), "{chat_models:?}");
    assert_eq!(otlp.rejected(), 0);
    server.kill().unwrap();
    server.wait().unwrap();
}

/// The OTLP status of each of a trace's tag spans, in the order received ("" when unset).
fn tag_statuses(spans: &[ReceivedSpan], trace: &str) -> Vec<String> {
    in_trace(spans, trace, "tag")
        .iter()
        .map(|s| s.status.clone())
        .collect()
}
