//! The chat-model and embedder contract suites, run against every provider available here:
//! `lexical`, and `openai` against the fake OpenAI-compatible server.

use pai_tests::contract;
use pai_tests::fake_openai::FakeOpenAi;
use serde_json::json;
use shared::providers::lexical::{LexicalEmbedder, LexicalModel};
use shared::providers::openai::{OpenAiChat, OpenAiEmbedder};

#[tokio::test]
async fn lexical_chat_model() {
    contract::chat_model(LexicalModel::default()).await;
}

#[tokio::test]
async fn lexical_embedder() {
    contract::embedder(LexicalEmbedder::new(256)).await;
}

#[tokio::test]
async fn openai_chat_model() {
    let fake = FakeOpenAi::start(None).await;
    fake.set_default(|req| {
        if req.get("response_format").is_some() {
            json!({"title": "ACME invoice", "tags": ["Invoice"], "correspondent": "ACME", "document_type": "Invoice", "created": "2025-03-14"}).to_string()
        } else {
            "The total is EUR 120.00 [1].".into()
        }
    });
    contract::chat_model(OpenAiChat::new(Some(&fake.url()), None, Some("m"), 300, None).unwrap())
        .await;
}

#[tokio::test]
async fn openai_embedder() {
    let fake = FakeOpenAi::start(None).await;
    contract::embedder(OpenAiEmbedder::new(Some(&fake.url()), None, Some("e"), Some(64)).unwrap())
        .await;
}
