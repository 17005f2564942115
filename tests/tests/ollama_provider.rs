//! The `ollama` provider against a fake of Ollama's native API: the schema goes in `format`,
//! `num_ctx` is the same for every call, embeddings are batched, answers stream as NDJSON, and
//! the chat-model and embedder contract suites hold.

use pai_tests::contract;
use pai_tests::fake_openai::{FakeOpenAi, Reply};
use serde_json::json;
use shared::domain::{AnswerInput, DocId, Field, Passage, TagInput, Taxonomy};
use shared::ports::{ChatModel, Embedder, ModelError};
use shared::providers::ollama::{OllamaChat, OllamaEmbedder};

fn scripted(req: &serde_json::Value) -> String {
    if req.get("format").is_some() {
        json!({"title": "ACME invoice", "tags": ["Invoice"], "correspondent": "ACME", "document_type": "Invoice", "created": "2025-03-14"}).to_string()
    } else {
        "The total is EUR 120.00 [1].".into()
    }
}

fn input(content: &str) -> TagInput {
    TagInput {
        current_title: "scan".into(),
        content: content.into(),
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

#[tokio::test]
async fn the_contracts_hold() {
    let fake = FakeOpenAi::start(None).await;
    fake.set_default(scripted);
    contract::chat_model(
        OllamaChat::new(Some(&fake.base_url()), Some("m"), 8192, 300, None).unwrap(),
    )
    .await;
    contract::embedder(OllamaEmbedder::new(Some(&fake.base_url()), Some("e"), Some(64)).unwrap())
        .await;
}

#[tokio::test]
async fn schema_in_format_and_a_fixed_context_size() {
    let fake = FakeOpenAi::start(None).await;
    fake.set_default(scripted);
    let m = OllamaChat::new(Some(&fake.base_url()), Some("qwen"), 16384, 300, None).unwrap();
    m.suggest(&input("short")).await.unwrap();
    m.suggest(&input(&"a much longer document ".repeat(500)))
        .await
        .unwrap();
    let reqs = fake.chat_requests();
    assert_eq!(reqs.len(), 2);
    for r in &reqs {
        assert_eq!(
            r["options"]["num_ctx"], 16384,
            "the same num_ctx whatever the document"
        );
        assert_eq!(r["stream"], false);
        assert_eq!(
            r["format"]["properties"]["tags"]["items"]["enum"],
            json!(["Invoice"])
        );
        assert_eq!(r["options"]["num_predict"], 300);
    }
    fake.push_reply(Reply::Content("{\"title\": 5}".into()));
    fake.push_reply(Reply::Content("still not json".into()));
    assert!(
        matches!(m.suggest(&input("x")).await, Err(ModelError::InvalidReply(e)) if e.contains("repair"))
    );
    fake.push_reply(Reply::Truncated("{\"title\"".into()));
    assert!(
        matches!(m.suggest(&input("x")).await, Err(ModelError::InvalidReply(e)) if e.contains("cut off"))
    );
}

#[tokio::test]
async fn embeds_in_batches_and_streams_answers() {
    let fake = FakeOpenAi::start(None).await;
    fake.set_default(scripted);
    let e = OllamaEmbedder::new(Some(&fake.base_url()), Some("nomic"), Some(64)).unwrap();
    let texts: Vec<String> = (0..12)
        .map(|i| format!("chunk {i} about invoices"))
        .collect();
    let (v, _) = e.embed(&texts).await.unwrap();
    assert_eq!(v.len(), 12);
    assert_eq!(fake.embedding_requests().len(), 1, "one call for the batch");

    let m = OllamaChat::new(Some(&fake.base_url()), Some("qwen"), 8192, 300, None).unwrap();
    let (sink, mut pieces) = tokio::sync::mpsc::unbounded_channel();
    let passages = vec![Passage {
        n: 1,
        doc_id: DocId::Paperless(1),
        title: "t".into(),
        text: "The total is EUR 120.00.".into(),
    }];
    let (answer, usage) = m
        .answer_streaming(
            &AnswerInput {
                question: "total?".into(),
                passages,
                history: vec![],
            },
            &sink,
        )
        .await
        .unwrap();
    drop(sink);
    let mut streamed = String::new();
    let mut count = 0;
    while let Some(p) = pieces.recv().await {
        streamed.push_str(&p);
        count += 1;
    }
    assert!(
        count > 3 && streamed == answer.text && answer.cited == vec![1],
        "{streamed:?} {answer:?}"
    );
    assert_eq!(usage.input_tokens, 100);
}
