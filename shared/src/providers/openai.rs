//! `openai`: any OpenAI-compatible server (OpenAI, vLLM, LM Studio, llama.cpp server, LiteLLM,
//! OpenRouter…). Tagging uses chat completions with a strict JSON-schema response format and
//! one repair turn; embeddings send a whole batch of inputs per call.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::embedding::{EmbeddingModel, EmbeddingRequest};
use super::llm::{Completion, Message, answer_messages, cited};
use super::marking::Marking;
use crate::config::Secret;
use crate::domain::{Answer, AnswerInput};
use crate::ports::{EmbedKind, ModelError, TokenSink, Usage};

pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";
pub use super::names::{
    OPENAI_CHAT_MODEL as DEFAULT_CHAT_MODEL, OPENAI_EMBEDDING_MODEL as DEFAULT_EMBEDDING_MODEL,
};
/// Attempts per call for 429 and 5xx replies, honouring `Retry-After` (capped).
const ATTEMPTS: u32 = 3;
const MAX_RETRY_AFTER: Duration = Duration::from_secs(20);

/// Reads a streamed response line by line (SSE or NDJSON), handing each non-empty line to
/// `on_line`, which returns `Some(result)` when the stream is complete.
pub(crate) async fn read_lines<T>(
    response: reqwest::Response,
    mut on_line: impl FnMut(&str) -> Result<Option<T>, ModelError>,
) -> Result<T, ModelError> {
    use futures::StreamExt;
    let mut stream = response.bytes_stream();
    let mut buffer = Vec::new();
    while let Some(chunk) = stream.next().await {
        buffer.extend_from_slice(
            &chunk.map_err(|_| ModelError::Unavailable("chat stream broke off".into()))?,
        );
        while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            if !line.trim().is_empty()
                && let Some(done) = on_line(line.trim())?
            {
                return Ok(done);
            }
        }
    }
    Err(ModelError::Unavailable("chat stream ended early".into()))
}

/// Full jitter: a random wait between zero and `cap`, so retrying clients spread out.
fn jitter(cap: Duration) -> Duration {
    let r = uuid::Uuid::new_v4().as_u128() as u64;
    cap.mul_f64((r % 10_000) as f64 / 10_000.0)
}

pub use super::names::known_dimensions;

/// A JSON-over-HTTP client for model servers: bearer key, timeouts, and retries of
/// connection failures, 429 and 5xx (honouring `Retry-After`). Shared by the HTTP providers.
#[derive(Clone)]
pub(crate) struct Client {
    http: reqwest::Client,
    base: String,
    key: Option<Secret>,
}

impl Client {
    pub(crate) fn new(
        base: Option<&str>,
        key: Option<Secret>,
        timeout: Duration,
    ) -> Result<Client, ModelError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(5))
            // A redirect would resend the API key elsewhere (and turn a POST into a GET).
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ModelError::Refused(format!("http client: {e}")))?;
        Ok(Client {
            http,
            base: base
                .unwrap_or(DEFAULT_BASE_URL)
                .trim_end_matches('/')
                .to_string(),
            key,
        })
    }

    /// Sends a request, retrying connection failures, 429 and 5xx (honouring `Retry-After`);
    /// returns the successful response with its body unread, so it can be streamed.
    pub(crate) async fn send(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<reqwest::Response, ModelError> {
        let mut last = String::new();
        for attempt in 1..=ATTEMPTS {
            let mut req = self.http.post(format!("{}/{path}", self.base)).json(body);
            if let Some(k) = &self.key {
                req = req.bearer_auth(k.expose());
            }
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    // A timeout is push-back: the provider is too busy to answer in time.
                    let timed_out = e.is_timeout();
                    if timed_out {
                        crate::resilience::report_overload();
                    }
                    last = if timed_out {
                        "timed out"
                    } else {
                        "could not connect"
                    }
                    .into();
                    if attempt < ATTEMPTS {
                        let delay = jitter(Duration::from_millis(200 * 2u64.pow(attempt)));
                        match timed_out {
                            true => crate::resilience::wait_to_retry(delay).await,
                            false => tokio::time::sleep(delay).await,
                        }
                    }
                    continue;
                }
            };
            let status = resp.status();
            crate::resilience::report_rate_headers(&crate::resilience::RateHeaders::parse(|n| {
                resp.headers().get(n).and_then(|v| v.to_str().ok())
            }));
            if status.is_success() {
                return Ok(resp);
            }
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            // The server's own words stay in the debug log: they can echo the request (a
            // document's text) and reach callers of the public chat URL otherwise.
            let text = resp.text().await.unwrap_or_default();
            let excerpt: String = text.chars().take(300).collect();
            tracing::debug!(path, %status, body = %excerpt, "model server error");
            if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
                crate::resilience::report_overload();
                last = format!("HTTP {status}");
                if attempt < ATTEMPTS {
                    let backoff = jitter(Duration::from_millis(500 * 2u64.pow(attempt)));
                    crate::resilience::wait_to_retry(
                        retry_after.unwrap_or(backoff).min(MAX_RETRY_AFTER),
                    )
                    .await;
                }
                continue;
            }
            let hint = match status.as_u16() {
                401 | 403 => " (the server refused the API key: LLM_API_KEY / EMBEDDING_API_KEY)",
                404 => " (no such model or path: LLM_MODEL / EMBEDDING_MODEL, the base URL)",
                400 if mentions_schema(&text) => SCHEMA_REFUSED,
                _ => "",
            };
            return Err(ModelError::Refused(format!("{path}: HTTP {status}{hint}")));
        }
        Err(ModelError::Unavailable(format!("{path}: {last}")))
    }

    pub(crate) async fn post(&self, path: &str, body: &Value) -> Result<Value, ModelError> {
        let text = self
            .send(path, body)
            .await?
            .text()
            .await
            .map_err(|_| ModelError::Unavailable(format!("{path}: broken response")))?;
        // A 2xx body that is not JSON is a proxy's page or a reply cut off in transit, not
        // the model's answer: transient, like the 5xx it usually stands for.
        serde_json::from_str(&text)
            .map_err(|e| ModelError::Unavailable(format!("{path}: reply is not JSON: {e}")))
    }
}

pub struct OpenAiChat {
    client: Client,
    model: String,
    name: String,
    max_output_tokens: usize,
    system_prompt: Option<String>,
    /// Set once the server has refused a JSON schema.
    json_mode_only: std::sync::atomic::AtomicBool,
}

/// Whether a 4xx says the server does not support `json_schema` response formats.
/// What a refusal says (in our words) when the server rejected structured output.
const SCHEMA_REFUSED: &str = " (structured output refused)";

fn mentions_schema(body: &str) -> bool {
    let b = body.to_ascii_lowercase();
    b.contains("response_format") || b.contains("json_schema")
}

fn refuses_schema(reason: &str) -> bool {
    reason.ends_with(SCHEMA_REFUSED)
}

/// JSON mode: the schema moves into the system message; returns the response format.
fn json_mode_format(body: &mut Value, schema: &Value) -> Value {
    if let Some(system) = body["messages"][0]["content"].as_str() {
        body["messages"][0]["content"] = json!(format!(
            "{system}\n\nReply with one JSON object matching this JSON schema:\n{schema}"
        ));
    }
    json!({"type": "json_object"})
}

impl OpenAiChat {
    pub fn new(
        base: Option<&str>,
        key: Option<Secret>,
        model: Option<&str>,
        max_output_tokens: usize,
        system_prompt: Option<String>,
    ) -> Result<OpenAiChat, ModelError> {
        let model = model.unwrap_or(DEFAULT_CHAT_MODEL).to_string();
        Ok(OpenAiChat {
            client: Client::new(base, key, Duration::from_secs(120))?,
            name: super::names::chat_name("openai", &model),
            model,
            max_output_tokens,
            system_prompt,
            json_mode_only: Default::default(),
        })
    }
}

#[async_trait]
impl Completion for OpenAiChat {
    fn model_name(&self) -> &str {
        &self.name
    }

    fn system_prompt(&self) -> Option<&str> {
        self.system_prompt.as_deref()
    }

    async fn completion(
        &self,
        messages: &[Message],
        schema: Option<&Value>,
    ) -> Result<(String, Usage), ModelError> {
        let mut body = json!({"model": self.model, "messages": messages, "temperature": 0, "max_tokens": self.max_output_tokens});
        let json_mode = self
            .json_mode_only
            .load(std::sync::atomic::Ordering::Relaxed);
        if let Some(s) = schema {
            body["response_format"] = if json_mode {
                json_mode_format(&mut body, s)
            } else {
                json!({"type": "json_schema", "json_schema": {"name": "document_metadata", "strict": true, "schema": s}})
            };
        }
        let reply = match self.client.post("chat/completions", &body).await {
            // Servers without structured output refuse the schema: fall back to JSON mode with
            // the schema in the prompt (the reply is still validated), and remember.
            Err(ModelError::Refused(reason))
                if schema.is_some() && !json_mode && refuses_schema(&reason) =>
            {
                tracing::warn!(%reason, "the server refuses JSON schemas: using JSON mode");
                self.json_mode_only
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                body["response_format"] = json_mode_format(&mut body, schema.expect("checked"));
                self.client.post("chat/completions", &body).await?
            }
            other => other?,
        };
        let choice = &reply["choices"][0];
        if choice["finish_reason"] == "length" {
            return Err(ModelError::InvalidReply(
                "the reply was cut off at the output token limit".into(),
            ));
        }
        let content = choice["message"]["content"]
            .as_str()
            .ok_or_else(|| ModelError::InvalidReply("the reply has no message content".into()))?
            .to_string();
        let usage = Usage {
            input_tokens: reply["usage"]["prompt_tokens"].as_u64().unwrap_or(0),
            output_tokens: reply["usage"]["completion_tokens"].as_u64().unwrap_or(0),
            cost_usd: 0.0,
        };
        Ok((content, usage))
    }

    async fn stream_answer(
        &self,
        input: &AnswerInput,
        tokens: &TokenSink,
    ) -> Result<(Answer, Usage), ModelError> {
        let body = json!({
            "model": self.model, "messages": answer_messages(input), "temperature": 0,
            "max_tokens": self.max_output_tokens, "stream": true, "stream_options": {"include_usage": true},
        });
        let response = self.client.send("chat/completions", &body).await?;
        let (mut text, mut usage) = (String::new(), Usage::default());
        // Server-sent events: `data: {json}` lines, ending with `data: [DONE]`.
        read_lines(response, |line| {
            let Some(data) = line.strip_prefix("data:").map(str::trim) else {
                return Ok(None);
            };
            if data == "[DONE]" {
                return Ok(Some((cited(&text, input.passages.len()), usage)));
            }
            let event: Value = serde_json::from_str(data)
                .map_err(|e| ModelError::InvalidReply(format!("bad stream event: {e}")))?;
            if let Some(piece) = event["choices"][0]["delta"]["content"]
                .as_str()
                .filter(|p| !p.is_empty())
            {
                text.push_str(piece);
                let _ = tokens.send(piece.to_string());
            }
            if event["choices"][0]["finish_reason"] == "length" {
                return Err(ModelError::InvalidReply(
                    "the answer was cut off at the output token limit".into(),
                ));
            }
            if let Some(u) = event.get("usage").filter(|u| u.is_object()) {
                usage = Usage {
                    input_tokens: u["prompt_tokens"].as_u64().unwrap_or(0),
                    output_tokens: u["completion_tokens"].as_u64().unwrap_or(0),
                    cost_usd: 0.0,
                };
            }
            Ok(None)
        })
        .await
    }
}

pub struct OpenAiEmbedder {
    client: Client,
    model: EmbeddingModel,
    send_dimensions: bool,
}

impl OpenAiEmbedder {
    /// `dimensions` set by the user is sent to the server; otherwise the model's known size.
    pub fn new(
        base: Option<&str>,
        key: Option<Secret>,
        model: Option<&str>,
        dimensions: Option<usize>,
    ) -> Result<OpenAiEmbedder, String> {
        let model = model.unwrap_or(DEFAULT_EMBEDDING_MODEL).to_string();
        let dimension = super::names::http_dimension(&model, dimensions)?;
        let client = Client::new(base, key, Duration::from_secs(60)).map_err(|e| e.to_string())?;
        let marking = Marking::new(&model, None, None, None);
        Ok(OpenAiEmbedder {
            client,
            model: EmbeddingModel::new("openai", model, dimension, Some(marking)),
            send_dimensions: dimensions.is_some(),
        })
    }

    /// How queries and documents are marked (prefixes, input types), replacing the model's
    /// default; the space follows.
    pub fn with_marking(mut self, marking: Marking) -> OpenAiEmbedder {
        self.model.set_marking(marking);
        self
    }
}

#[async_trait]
impl EmbeddingRequest for OpenAiEmbedder {
    fn model(&self) -> &EmbeddingModel {
        &self.model
    }

    async fn embed_as(
        &self,
        kind: EmbedKind,
        texts: &[String],
    ) -> Result<(Vec<Vec<f32>>, Usage), ModelError> {
        let input: Vec<String> = texts.iter().map(|t| self.model.text(kind, t)).collect();
        let mut body = json!({"model": self.model.name(), "input": input});
        if self.send_dimensions {
            body["dimensions"] = json!(self.model.dimension());
        }
        if let Some(input_type) = self.model.input_type(kind) {
            body["input_type"] = json!(input_type);
        }
        let reply = self.client.post("embeddings", &body).await?;
        let data = reply["data"]
            .as_array()
            .ok_or_else(|| ModelError::InvalidReply("embeddings reply has no data".into()))?;
        let mut out: Vec<Option<Vec<f32>>> = vec![None; texts.len()];
        for (pos, item) in data.iter().enumerate() {
            let index = item["index"].as_u64().map(|i| i as usize).unwrap_or(pos);
            let v: Vec<f32> = item["embedding"]
                .as_array()
                .ok_or_else(|| ModelError::InvalidReply("embedding is not an array".into()))?
                .iter()
                .filter_map(Value::as_f64)
                .map(|x| x as f32)
                .collect();
            *out.get_mut(index).ok_or_else(|| {
                ModelError::InvalidReply(format!("embedding index {index} out of range"))
            })? = Some(v);
        }
        let vectors = out
            .into_iter()
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ModelError::InvalidReply("embeddings reply is missing inputs".into()))?;
        let usage = Usage {
            input_tokens: reply["usage"]["prompt_tokens"].as_u64().unwrap_or(0),
            output_tokens: 0,
            cost_usd: 0.0,
        };
        Ok((vectors, usage))
    }
}
