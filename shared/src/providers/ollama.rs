//! `ollama`: Ollama's native API. Tagging sends the JSON schema as `format` (Ollama constrains
//! the output to it); every call uses the same configured `num_ctx`, because a context size
//! that changes per document makes Ollama reload the model each time. Embeddings send a batch
//! of inputs to `/api/embed`; answers stream as NDJSON.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};

use super::embedding::{EmbeddingModel, EmbeddingRequest};
use super::llm::{Completion, Message, answer_messages, cited};
use super::marking::Marking;
use super::openai::{Client, read_lines};
use crate::domain::{Answer, AnswerInput};
use crate::ports::{EmbedKind, ModelError, TokenSink, Usage};

pub const DEFAULT_BASE_URL: &str = "http://localhost:11434";
pub use super::names::{
    OLLAMA_CHAT_MODEL as DEFAULT_CHAT_MODEL, OLLAMA_EMBEDDING_MODEL as DEFAULT_EMBEDDING_MODEL,
};

fn usage(reply: &Value) -> Usage {
    Usage {
        input_tokens: reply["prompt_eval_count"].as_u64().unwrap_or(0),
        output_tokens: reply["eval_count"].as_u64().unwrap_or(0),
        cost_usd: 0.0,
    }
}

pub struct OllamaChat {
    client: Client,
    model: String,
    name: String,
    num_ctx: u32,
    max_output_tokens: usize,
    system_prompt: Option<String>,
}

impl OllamaChat {
    pub fn new(
        base: Option<&str>,
        model: Option<&str>,
        num_ctx: u32,
        max_output_tokens: usize,
        system_prompt: Option<String>,
    ) -> Result<OllamaChat, ModelError> {
        let model = model.unwrap_or(DEFAULT_CHAT_MODEL).to_string();
        // Local models are slow on CPU: a generous read timeout.
        let client = Client::new(
            Some(base.unwrap_or(DEFAULT_BASE_URL)),
            None,
            Duration::from_secs(300),
        )?;
        Ok(OllamaChat {
            client,
            name: super::names::chat_name("ollama", &model),
            model,
            num_ctx,
            max_output_tokens,
            system_prompt,
        })
    }

    fn body(&self, messages: &[Message], format: Option<&Value>, stream: bool) -> Value {
        let mut body = json!({
            "model": self.model, "messages": messages, "stream": stream,
            "options": {"num_ctx": self.num_ctx, "temperature": 0, "num_predict": self.max_output_tokens},
        });
        if let Some(f) = format {
            body["format"] = f.clone();
        }
        body
    }
}

#[async_trait]
impl Completion for OllamaChat {
    fn model_name(&self) -> &str {
        &self.name
    }

    fn system_prompt(&self) -> Option<&str> {
        self.system_prompt.as_deref()
    }

    async fn completion(
        &self,
        messages: &[Message],
        format: Option<&Value>,
    ) -> Result<(String, Usage), ModelError> {
        let reply = self
            .client
            .post("api/chat", &self.body(messages, format, false))
            .await?;
        if reply["done_reason"] == "length" {
            return Err(ModelError::InvalidReply(
                "the reply was cut off at the output token limit".into(),
            ));
        }
        let content = reply["message"]["content"]
            .as_str()
            .ok_or_else(|| ModelError::InvalidReply("the reply has no message content".into()))?;
        Ok((content.to_string(), usage(&reply)))
    }

    async fn stream_answer(
        &self,
        input: &AnswerInput,
        tokens: &TokenSink,
    ) -> Result<(Answer, Usage), ModelError> {
        let response = self
            .client
            .send("api/chat", &self.body(&answer_messages(input), None, true))
            .await?;
        let mut text = String::new();
        // One JSON object per line; the last has `"done": true` and the token counts.
        read_lines(response, |line| {
            let event: Value = serde_json::from_str(line)
                .map_err(|e| ModelError::InvalidReply(format!("bad stream line: {e}")))?;
            if let Some(piece) = event["message"]["content"]
                .as_str()
                .filter(|p| !p.is_empty())
            {
                text.push_str(piece);
                let _ = tokens.send(piece.to_string());
            }
            if event["done"] != true {
                return Ok(None);
            }
            if event["done_reason"] == "length" {
                return Err(ModelError::InvalidReply(
                    "the answer was cut off at the output token limit".into(),
                ));
            }
            Ok(Some((cited(&text, input.passages.len()), usage(&event))))
        })
        .await
    }
}

pub struct OllamaEmbedder {
    client: Client,
    model: EmbeddingModel,
}

impl OllamaEmbedder {
    pub fn new(
        base: Option<&str>,
        model: Option<&str>,
        dimensions: Option<usize>,
    ) -> Result<OllamaEmbedder, String> {
        let model = model.unwrap_or(DEFAULT_EMBEDDING_MODEL).to_string();
        let dimension = super::names::http_dimension(&model, dimensions)?;
        let client = Client::new(
            Some(base.unwrap_or(DEFAULT_BASE_URL)),
            None,
            Duration::from_secs(120),
        )
        .map_err(|e| e.to_string())?;
        let marking = Marking::new(&model, None, None, None);
        Ok(OllamaEmbedder {
            client,
            model: EmbeddingModel::new("ollama", model, dimension, Some(marking)),
        })
    }

    /// How queries and documents are marked (Ollama's API has no input type: prefixes
    /// only), replacing the model's default; the space follows.
    pub fn with_marking(mut self, marking: Marking) -> OllamaEmbedder {
        self.model.set_marking(marking);
        self
    }
}

#[async_trait]
impl EmbeddingRequest for OllamaEmbedder {
    fn model(&self) -> &EmbeddingModel {
        &self.model
    }

    async fn embed_as(
        &self,
        kind: EmbedKind,
        texts: &[String],
    ) -> Result<(Vec<Vec<f32>>, Usage), ModelError> {
        let input: Vec<String> = texts.iter().map(|t| self.model.text(kind, t)).collect();
        let reply = self
            .client
            .post(
                "api/embed",
                &json!({"model": self.model.name(), "input": input}),
            )
            .await?;
        let rows = reply["embeddings"]
            .as_array()
            .ok_or_else(|| ModelError::InvalidReply("embed reply has no embeddings".into()))?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let v: Vec<f32> = row
                .as_array()
                .ok_or_else(|| ModelError::InvalidReply("embedding is not an array".into()))?
                .iter()
                .filter_map(Value::as_f64)
                .map(|x| x as f32)
                .collect();
            out.push(v);
        }
        Ok((
            out,
            Usage {
                input_tokens: reply["prompt_eval_count"].as_u64().unwrap_or(0),
                output_tokens: 0,
                cost_usd: 0.0,
            },
        ))
    }
}
