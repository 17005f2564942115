//! Amazon Bedrock against the chat-model and embedder contract suites, through the providers'
//! public constructors from a ready client: an `aws-smithy-mocks` client answers Converse (a
//! stand-in Claude) and InvokeModel (a stand-in Titan), so no AWS account is needed.

use aws_sdk_bedrockruntime::Client;
use aws_sdk_bedrockruntime::config::retry::RetryConfig;
use aws_sdk_bedrockruntime::operation::converse::{ConverseInput, ConverseOutput};
use aws_sdk_bedrockruntime::operation::invoke_model::{InvokeModelInput, InvokeModelOutput};
use aws_sdk_bedrockruntime::primitives::Blob;
use aws_sdk_bedrockruntime::types::{
    ContentBlock, ConversationRole, ConverseOutput as ConverseMessage, Message, StopReason,
    TokenUsage, ToolUseBlock,
};
use aws_smithy_mocks::{Rule, RuleMode, mock, mock_client};
use pai_tests::contract;
use serde_json::{Value, json};
use shared::providers::bedrock::{BedrockChat, BedrockEmbedder};
use shared::smithy_json::to_document;

/// A client answering from `rule`, without retries (a retried throttle would just wait).
fn client(rule: &Rule) -> Client {
    mock_client!(aws_sdk_bedrockruntime, RuleMode::MatchAny, &[rule], |c| c
        .retry_config(RetryConfig::disabled()))
}

/// The assistant's reply of one content block, with the usage Bedrock reports.
fn reply(block: ContentBlock, stop: StopReason) -> ConverseOutput {
    let message = Message::builder()
        .role(ConversationRole::Assistant)
        .content(block)
        .build()
        .unwrap();
    ConverseOutput::builder()
        .output(ConverseMessage::Message(message))
        .stop_reason(stop)
        .usage(
            TokenUsage::builder()
                .input_tokens(100)
                .output_tokens(20)
                .total_tokens(120)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap()
}

#[tokio::test]
async fn bedrock_chat_model() {
    // Tagging forces the one tool the request offers, so the suggestion is that tool's input;
    // answers come without tools, as plain cited text.
    let rule = mock!(Client::converse).then_compute_output(|r: &ConverseInput| {
        match r.tool_config().map(|c| c.tools()) {
            Some([tool, ..]) => {
                let name = tool.as_tool_spec().expect("a tool spec").name();
                let suggestion = json!({"title": "ACME invoice 2025-031", "tags": ["Invoice"],
                    "correspondent": "ACME", "document_type": "Invoice", "created": "2025-03-14"});
                let call = ToolUseBlock::builder()
                    .tool_use_id("tooluse_1")
                    .name(name)
                    .input(to_document(&suggestion))
                    .build()
                    .unwrap();
                reply(ContentBlock::ToolUse(call), StopReason::ToolUse)
            }
            _ => reply(
                ContentBlock::Text("The invoice total is EUR 120.00 [1].".into()),
                StopReason::EndTurn,
            ),
        }
    });
    contract::chat_model(BedrockChat::with_client(
        client(&rule),
        None,
        6000,
        600,
        None,
    ))
    .await;
}

#[tokio::test]
async fn bedrock_embedder() {
    // A stand-in Titan: hashed words, normalised, so shared words mean nearby vectors.
    let rule = mock!(Client::invoke_model).then_compute_output(|r: &InvokeModelInput| {
        let body: Value = serde_json::from_slice(r.body().unwrap().as_ref()).unwrap();
        let mut v = vec![0.0f32; 256];
        for w in shared::text::words(body["inputText"].as_str().unwrap()) {
            let h = w.bytes().fold(0x811c_9dc5u32, |h, b| {
                (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
            });
            v[h as usize % 256] += 1.0;
        }
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
        let v: Vec<f32> = v.iter().map(|x| x / norm).collect();
        InvokeModelOutput::builder()
            .body(Blob::new(
                json!({"embedding": v, "inputTextTokenCount": 5}).to_string(),
            ))
            .content_type("application/json")
            .build()
            .unwrap()
    });
    let embedder = BedrockEmbedder::with_client(
        client(&rule),
        Some("amazon.titan-embed-text-v2:0"),
        Some(256),
    )
    .unwrap();
    contract::embedder(embedder).await;
}
