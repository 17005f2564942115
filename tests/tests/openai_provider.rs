//! The `openai` provider's wire format against the fake server: the strict JSON schema, the
//! one repair turn, retries on 429/5xx honouring `Retry-After`, refusals, truncated replies,
//! and batched embeddings.

use pai_tests::fake_openai::{FakeOpenAi, Reply};
use serde_json::json;
use shared::config::Secret;
use shared::domain::{Field, TagInput, Taxonomy};
use shared::ports::{ChatModel, Embedder, ModelError};
use shared::providers::openai::{OpenAiChat, OpenAiEmbedder};

fn input() -> TagInput {
    TagInput {
        current_title: "scan".into(),
        content: "Invoice from ACME, 14.03.2025".into(),
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
        restrict_correspondents: false,
        restrict_document_types: false,
        taxonomy: Taxonomy::default(),
        today: "2025-06-01".into(),
    }
}

const GOOD: &str = r#"{"title":"ACME invoice","tags":["Invoice"],"correspondent":"ACME","document_type":"Invoice","created":"2025-03-14"}"#;

async fn chat(fake: &FakeOpenAi) -> OpenAiChat {
    OpenAiChat::new(
        Some(&fake.url()),
        Some(Secret::new("k")),
        Some("m"),
        300,
        None,
    )
    .unwrap()
}

#[tokio::test]
async fn sends_a_strict_schema_and_repairs_once() {
    let fake = FakeOpenAi::start(Some("k")).await;
    fake.push_reply(Reply::Content(r#"{"title":"x","tags":"Invoice","correspondent":null,"document_type":null,"created":null}"#.into()));
    fake.push_reply(Reply::Content(GOOD.into()));
    let (s, usage) = chat(&fake).await.suggest(&input()).await.unwrap();
    assert_eq!(s.tags, vec!["Invoice"]);
    assert!(usage.input_tokens > 0);
    let reqs = fake.chat_requests();
    assert_eq!(reqs.len(), 2);
    let schema = &reqs[0]["response_format"]["json_schema"];
    assert_eq!(schema["strict"], true);
    assert_eq!(
        schema["schema"]["properties"]["tags"]["items"]["enum"],
        json!(["Invoice"])
    );
    assert_eq!(reqs[0]["temperature"], 0);
    assert_eq!(reqs[0]["max_tokens"], 300);
    let repair = reqs[1]["messages"].as_array().unwrap();
    assert!(
        repair.last().unwrap()["content"]
            .as_str()
            .unwrap()
            .contains("tags must be array"),
        "the model is told what was wrong"
    );
}

#[tokio::test]
async fn retries_on_429_and_5xx_then_gives_up_as_transient() {
    let fake = FakeOpenAi::start(Some("k")).await;
    fake.push_reply(Reply::Status(429, Some(0)));
    fake.push_reply(Reply::Status(503, Some(0)));
    fake.push_reply(Reply::Content(GOOD.into()));
    assert!(chat(&fake).await.suggest(&input()).await.is_ok());
    for _ in 0..3 {
        fake.push_reply(Reply::Status(500, Some(0)));
    }
    let e = chat(&fake).await.suggest(&input()).await.unwrap_err();
    assert!(e.is_transient(), "{e}");
}

#[tokio::test]
async fn refusals_and_truncation_are_not_retried() {
    let fake = FakeOpenAi::start(Some("k")).await;
    let wrong_key = OpenAiChat::new(
        Some(&fake.url()),
        Some(Secret::new("nope")),
        Some("m"),
        300,
        None,
    )
    .unwrap();
    assert!(matches!(
        wrong_key.suggest(&input()).await,
        Err(ModelError::Refused(_))
    ));
    assert_eq!(fake.chat_requests().len(), 1, "a 401 is not retried");
    fake.push_reply(Reply::Truncated(r#"{"title":"AC"#.into()));
    assert!(
        matches!(chat(&fake).await.suggest(&input()).await, Err(ModelError::InvalidReply(m)) if m.contains("cut off"))
    );
}

#[tokio::test]
async fn embeds_a_batch_in_one_call() {
    let fake = FakeOpenAi::start(None).await;
    let e = OpenAiEmbedder::new(Some(&fake.url()), None, Some("emb"), Some(48)).unwrap();
    let texts: Vec<String> = (0..20).map(|i| format!("chunk number {i}")).collect();
    let (vectors, _) = e.embed(&texts).await.unwrap();
    assert_eq!((vectors.len(), vectors[0].len()), (20, 48));
    let reqs = fake.embedding_requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0]["input"].as_array().unwrap().len(), 20);
    assert_eq!(reqs[0]["dimensions"], 48);
    assert!(
        OpenAiEmbedder::new(Some(&fake.url()), None, Some("unknown-model"), None).is_err(),
        "unknown size needs EMBEDDING_DIMENSIONS"
    );
}

#[tokio::test]
async fn falls_back_to_json_mode_when_the_server_refuses_schemas() {
    let fake = FakeOpenAi::start(Some("k")).await;
    fake.set_default(|_| GOOD.to_string());
    fake.push_reply(Reply::Body(
        400,
        r#"{"error":{"message":"Unsupported parameter: response_format.json_schema"}}"#.into(),
    ));
    let m = chat(&fake).await;
    assert_eq!(m.suggest(&input()).await.unwrap().0.tags, vec!["Invoice"]);
    m.suggest(&input()).await.unwrap();
    let reqs = fake.chat_requests();
    assert_eq!(
        reqs.len(),
        3,
        "one refused, one fallback, then JSON mode straight away"
    );
    assert_eq!(reqs[0]["response_format"]["type"], "json_schema");
    for r in &reqs[1..] {
        assert_eq!(r["response_format"]["type"], "json_object");
        assert!(
            r["messages"][0]["content"]
                .as_str()
                .unwrap()
                .contains("JSON schema"),
            "the schema moved into the prompt"
        );
    }
}

/// A model server's error body can echo the request (a document's text) or its internals:
/// it stays in the debug log, and the error callers see (a job's reason, a chat 422 on the
/// public URL) says only what failed and what to check.
#[tokio::test]
async fn error_bodies_stay_out_of_the_errors_callers_see() {
    let fake = FakeOpenAi::start(Some("k")).await;
    for status in [400, 401, 404, 422] {
        fake.push_reply(Reply::Body(
            status,
            r#"{"error":{"message":"echo: Invoice from ACME, internal host 10.0.0.7"}}"#.into(),
        ));
        let m = chat(&fake).await;
        let err = m.suggest(&input()).await.unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, ModelError::Refused(_)), "{status}: {text}");
        assert!(
            !text.contains("ACME") && !text.contains("10.0.0.7"),
            "{status}: {text}"
        );
        assert!(text.contains(&status.to_string()), "{status}: {text}");
    }
}
