//! `bedrock`: Amazon Bedrock, with the role's IAM credentials (no API key). Tagging uses the
//! Converse API with one tool whose input schema is the reply's JSON schema and a tool choice
//! that forces it, so the reply arrives as the tool's input; it is validated and repaired once
//! like every provider's (`llm`). Answers stream through ConverseStream. Embeddings use
//! InvokeModel: Amazon Titan Text Embeddings (one text per call, several calls at once) or
//! Cohere Embed (up to 96 texts per call).
//!
//! The SDK client is built on first use, so building a provider stays synchronous like the
//! other providers', from the configuration the caller names ([`AwsConfig`]: a Lambda's own, or
//! `pai`'s default chains); tests hand in a ready client instead.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_bedrockruntime::Client;
use aws_sdk_bedrockruntime::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_bedrockruntime::operation::converse::ConverseOutput as ConverseReply;
use aws_sdk_bedrockruntime::primitives::Blob;
use aws_sdk_bedrockruntime::types::{
    AnyToolChoice, AutoToolChoice, ContentBlock, ContentBlockDelta, ConversationRole,
    ConverseOutput, ConverseStreamOutput, InferenceConfiguration, Message as BedrockMessage,
    SpecificToolChoice, StopReason, SystemContentBlock, TokenUsage, Tool, ToolChoice,
    ToolConfiguration, ToolInputSchema, ToolSpecification,
};
use futures::{StreamExt, TryStreamExt};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use super::AwsConfig;
use super::embedding::{EmbeddingModel, EmbeddingRequest};
use super::llm::{Completion, Message, answer_messages, cited};
use crate::config::ConfigError;
use crate::domain::{Answer, AnswerInput, TagInput};
use crate::ports::{EmbedKind, ModelError, TokenSink, Usage};
use crate::smithy_json::{to_document, to_json};

use super::names::bedrock::Family;
pub use super::names::bedrock::{DEFAULT_CHAT_MODEL, DEFAULT_EMBEDDING_MODEL};
/// The tool the model must call to reply with a suggestion.
const TAG_TOOL: &str = "suggest_metadata";
/// Titan embeds one text per call: this many calls run at once.
const TITAN_CONCURRENCY: usize = 8;
/// Cohere Embed takes at most this many texts per call.
const COHERE_BATCH: usize = 96;

/// The SDK client, built on first use from `aws` (region and credentials); `endpoint`
/// (LLM_BASE_URL / EMBEDDING_BASE_URL) overrides the Bedrock endpoint, for VPC endpoints and
/// tests.
struct LazyClient {
    aws: Option<AwsConfig>,
    endpoint: Option<String>,
    timeout: Duration,
    client: OnceCell<Client>,
}

impl LazyClient {
    fn new(aws: &AwsConfig, endpoint: Option<&str>, timeout: Duration) -> LazyClient {
        LazyClient {
            aws: Some(aws.clone()),
            endpoint: endpoint.map(str::to_string),
            timeout,
            client: OnceCell::new(),
        }
    }

    fn ready(client: Client) -> LazyClient {
        LazyClient {
            aws: None,
            endpoint: None,
            timeout: Duration::ZERO,
            client: OnceCell::from(client),
        }
    }

    async fn get(&self) -> Result<&Client, ModelError> {
        self.client
            .get_or_try_init(|| async {
                let timeouts = TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .operation_attempt_timeout(self.timeout)
                    .build();
                let conf = match self
                    .aws
                    .as_ref()
                    .expect("a client that is not ready has a configuration")
                {
                    AwsConfig::Given(sdk) => {
                        let mut conf = sdk.to_builder().timeout_config(timeouts);
                        if let Some(url) = &self.endpoint {
                            conf = conf.endpoint_url(url);
                        }
                        conf.build()
                    }
                    #[cfg(feature = "local")]
                    AwsConfig::DefaultChain => {
                        let mut loader =
                            aws_config::defaults(aws_config::BehaviorVersion::latest())
                                .timeout_config(timeouts);
                        if let Some(url) = &self.endpoint {
                            loader = loader.endpoint_url(url);
                        }
                        loader.load().await
                    }
                };
                if conf.region().is_none() {
                    return Err(ModelError::Refused(
                        "bedrock: no AWS region is configured: set AWS_REGION".into(),
                    ));
                }
                Ok(Client::new(&conf))
            })
            .await
    }
}

/// The error code and message of a service error. The modelled errors print as
/// `Code: message`, which also covers errors whose metadata carries no code.
fn service_error<E, R>(err: &SdkError<E, R>) -> Option<(String, String)>
where
    E: ProvideErrorMetadata + std::error::Error,
{
    let e = err.as_service_error()?;
    let shown = e.to_string();
    let (shown_code, shown_message) = shown.split_once(':').unwrap_or((&shown, ""));
    let code = e.code().unwrap_or(shown_code.trim()).to_string();
    let message = e
        .message()
        .map(str::to_string)
        .unwrap_or_else(|| shown_message.trim().to_string());
    Some((code, message))
}

/// Maps an SDK failure to the port's error: throttling, capacity, timeouts and transport
/// failures are worth retrying; access, validation and unknown models are configuration
/// problems, told with what to check. `var` names the setting that holds the model id.
fn model_error<E, R>(err: SdkError<E, R>, model: &str, var: &str) -> ModelError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let Some((code, message)) = service_error(&err) else {
        tracing::debug!(model, error = %DisplayErrorContext(&err), "bedrock call failed");
        return match &err {
            SdkError::ConstructionFailure(_) => ModelError::Refused(format!(
                "bedrock {model}: the request could not be built ({}): check the AWS region and credentials",
                DisplayErrorContext(&err)
            )),
            SdkError::TimeoutError(_) => {
                ModelError::Unavailable(format!("bedrock {model}: timed out"))
            }
            // Dispatch failures (no connection, no credentials yet) and broken responses.
            _ => ModelError::Unavailable(format!("bedrock {model}: {}", DisplayErrorContext(&err))),
        };
    };
    // AWS's own message stays in the debug log: callers (chat on a public URL) get the code
    // and what to check.
    tracing::debug!(model, %code, %message, "bedrock call failed");
    match code.as_str() {
        "ThrottlingException"
        | "ServiceUnavailableException"
        | "ServiceQuotaExceededException"
        | "ModelNotReadyException"
        | "ModelTimeoutException"
        | "InternalServerException"
        | "ModelErrorException"
        | "ModelStreamErrorException" => {
            ModelError::Unavailable(format!("bedrock {model}: {code}"))
        }
        "AccessDeniedException" => ModelError::Refused(format!(
            "bedrock {model} ({var}): access denied. Check that access to this model is enabled in the Bedrock console (Model access) in this region, and that the role may call bedrock:InvokeModel (and bedrock:InvokeModelWithResponseStream for streamed answers) on it"
        )),
        "ResourceNotFoundException" => ModelError::Refused(format!(
            "bedrock {model} ({var}): not found. Check the model id and that the model is offered in this region; some models are reached only through an inference profile id (us., eu., apac., global.)"
        )),
        "ValidationException" => ModelError::Refused(format!(
            "bedrock {model} ({var}): request rejected. Check the model id, that the model supports this API in this region, or use an inference profile id (us., eu., apac., global.)"
        )),
        // Codes the SDK does not model yet: judged by name.
        code => {
            let text = format!("bedrock {model} ({var}): {code}");
            if ["Throttl", "Unavailable", "Internal", "Timeout", "NotReady"]
                .iter()
                .any(|w| code.contains(w))
            {
                ModelError::Unavailable(text)
            } else {
                ModelError::Refused(text)
            }
        }
    }
}

fn build_error(e: impl std::fmt::Display) -> ModelError {
    ModelError::Refused(format!("bedrock request: {e}"))
}

/// The conversation in Converse's shape: system messages apart, consecutive turns of one role
/// merged (Converse wants user and assistant to alternate), no blank text (Converse refuses it).
fn converse_messages(
    messages: &[Message],
) -> Result<(Vec<SystemContentBlock>, Vec<BedrockMessage>), ModelError> {
    let mut system = Vec::new();
    let mut turns: Vec<(ConversationRole, Vec<ContentBlock>)> = Vec::new();
    for m in messages {
        let text = if m.content.trim().is_empty() {
            "(empty)".to_string()
        } else {
            m.content.clone()
        };
        let role = match m.role {
            "system" => {
                system.push(SystemContentBlock::Text(text));
                continue;
            }
            "assistant" => ConversationRole::Assistant,
            _ => ConversationRole::User,
        };
        match turns.last_mut() {
            Some((last, blocks)) if *last == role => blocks.push(ContentBlock::Text(text)),
            _ => turns.push((role, vec![ContentBlock::Text(text)])),
        }
    }
    let turns = turns
        .into_iter()
        .map(|(role, content)| {
            BedrockMessage::builder()
                .role(role)
                .set_content(Some(content))
                .build()
                .map_err(build_error)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((system, turns))
}

/// How the model is made to call the tool: a specific tool where the model supports it (Claude,
/// Mistral Large, Nova), else any tool (there is only one), else left to the model; the prompt
/// asks for the JSON in any case and the reply is validated.
const CHOICE_TOOL: u8 = 0;
const CHOICE_ANY: u8 = 1;
const CHOICE_AUTO: u8 = 2;

fn tool_config(schema: &Value, choice: u8) -> Result<ToolConfiguration, ModelError> {
    let spec = ToolSpecification::builder()
        .name(TAG_TOOL)
        .description("Record the document's metadata, as the schema describes.")
        .input_schema(ToolInputSchema::Json(to_document(schema)))
        .build()
        .map_err(build_error)?;
    let choice = match choice {
        CHOICE_TOOL => ToolChoice::Tool(
            SpecificToolChoice::builder()
                .name(TAG_TOOL)
                .build()
                .map_err(build_error)?,
        ),
        CHOICE_ANY => ToolChoice::Any(AnyToolChoice::builder().build()),
        _ => ToolChoice::Auto(AutoToolChoice::builder().build()),
    };
    ToolConfiguration::builder()
        .tools(Tool::ToolSpec(spec))
        .tool_choice(choice)
        .build()
        .map_err(build_error)
}

fn usage(u: Option<&TokenUsage>) -> Usage {
    u.map(|u| Usage {
        input_tokens: u.input_tokens.max(0) as u64,
        output_tokens: u.output_tokens.max(0) as u64,
        cost_usd: 0.0,
    })
    .unwrap_or_default()
}

/// Why a stop ends the call, if it does: a cut-off reply or a filtered one is not worth
/// repairing.
fn stop_problem(reason: &StopReason) -> Option<ModelError> {
    match reason {
        StopReason::MaxTokens => Some(ModelError::InvalidReply(
            "the reply was cut off at the output token limit".into(),
        )),
        StopReason::ContentFiltered | StopReason::GuardrailIntervened => Some(ModelError::Refused(
            "bedrock: the reply was blocked by a content filter or guardrail".into(),
        )),
        StopReason::ModelContextWindowExceeded => Some(ModelError::Refused(
            "bedrock: the prompt exceeds the model's context window: lower MAX_INPUT_TOKENS".into(),
        )),
        _ => None,
    }
}

/// The reply's text: the forced tool's input as JSON when the model called it, else its text
/// (which validation then judges).
fn reply_text(out: ConverseReply) -> Result<(String, Usage), ModelError> {
    if let Some(problem) = stop_problem(&out.stop_reason) {
        return Err(problem);
    }
    let usage = usage(out.usage.as_ref());
    let Some(ConverseOutput::Message(message)) = out.output else {
        return Err(ModelError::InvalidReply("the reply has no message".into()));
    };
    let mut text = String::new();
    for block in message.content {
        match block {
            ContentBlock::ToolUse(tool) => return Ok((to_json(&tool.input).to_string(), usage)),
            ContentBlock::Text(t) => text.push_str(&t),
            _ => {}
        }
    }
    Ok((text, usage))
}

/// A streamed answer as it arrives: text deltas appended (and handed out), the stop reason and
/// the token counts of the closing metadata event.
#[derive(Default)]
struct StreamedAnswer {
    text: String,
    usage: Usage,
    stopped: bool,
}

impl StreamedAnswer {
    /// Takes one event; returns the piece of text to send on, if it carries one.
    fn apply(&mut self, event: ConverseStreamOutput) -> Result<Option<String>, ModelError> {
        match event {
            ConverseStreamOutput::ContentBlockDelta(d) => {
                if let Some(ContentBlockDelta::Text(piece)) = d.delta
                    && !piece.is_empty()
                {
                    self.text.push_str(&piece);
                    return Ok(Some(piece));
                }
            }
            ConverseStreamOutput::MessageStop(stop) => {
                if let Some(problem) = stop_problem(&stop.stop_reason) {
                    return Err(match problem {
                        ModelError::InvalidReply(_) => ModelError::InvalidReply(
                            "the answer was cut off at the output token limit".into(),
                        ),
                        other => other,
                    });
                }
                self.stopped = true;
            }
            ConverseStreamOutput::Metadata(m) => self.usage = usage(m.usage.as_ref()),
            _ => {}
        }
        Ok(None)
    }

    fn finish(self, passages: usize) -> Result<(Answer, Usage), ModelError> {
        if !self.stopped {
            return Err(ModelError::Unavailable("chat stream ended early".into()));
        }
        Ok((cited(&self.text, passages), self.usage))
    }
}

pub struct BedrockChat {
    client: LazyClient,
    model: String,
    name: String,
    /// Read only where documents are fitted again (`fitted`, with `tokens`).
    #[cfg_attr(not(feature = "tokens"), allow(dead_code))]
    max_input_tokens: usize,
    max_output_tokens: usize,
    system_prompt: Option<String>,
    /// `CHOICE_*`: lowered for good once the model refuses a stricter tool choice.
    tool_choice: AtomicU8,
}

impl BedrockChat {
    /// `endpoint` (LLM_BASE_URL) overrides the Bedrock endpoint; `model` defaults to
    /// [`DEFAULT_CHAT_MODEL`]. `max_input_tokens` is the document budget in cl100k tokens.
    pub fn new(
        aws: &AwsConfig,
        endpoint: Option<&str>,
        model: Option<&str>,
        max_input_tokens: usize,
        max_output_tokens: usize,
        system_prompt: Option<String>,
    ) -> BedrockChat {
        Self::build(
            LazyClient::new(aws, endpoint, Duration::from_secs(120)),
            model,
            max_input_tokens,
            max_output_tokens,
            system_prompt,
        )
    }

    /// With a ready client (tests, or a caller that configured its own).
    pub fn with_client(
        client: Client,
        model: Option<&str>,
        max_input_tokens: usize,
        max_output_tokens: usize,
        system_prompt: Option<String>,
    ) -> BedrockChat {
        Self::build(
            LazyClient::ready(client),
            model,
            max_input_tokens,
            max_output_tokens,
            system_prompt,
        )
    }

    fn build(
        client: LazyClient,
        model: Option<&str>,
        max_input_tokens: usize,
        max_output_tokens: usize,
        system_prompt: Option<String>,
    ) -> BedrockChat {
        let model = model.unwrap_or(DEFAULT_CHAT_MODEL).to_string();
        BedrockChat {
            client,
            name: super::names::chat_name("bedrock", &model),
            model,
            max_input_tokens,
            max_output_tokens,
            system_prompt,
            tool_choice: AtomicU8::new(CHOICE_TOOL),
        }
    }

    /// The pipeline fits the document to the budget in cl100k tokens; this model's tokenizer
    /// makes more of the same text, so the budget shrinks by the family's estimated factor.
    #[cfg(feature = "tokens")]
    fn fitted<'a>(&self, input: &'a TagInput) -> Cow<'a, TagInput> {
        let factor = crate::text::token_factor(&self.model);
        if factor <= 1.0 {
            return Cow::Borrowed(input);
        }
        let budget = (self.max_input_tokens as f64 / factor) as usize;
        let mut fitted = input.clone();
        fitted.content = crate::text::fit_head_tail(&input.content, budget);
        Cow::Owned(fitted)
    }

    /// A build without the tokenizer has no tag use case (it needs `tokens`), so no prompt
    /// budgeted in cl100k tokens comes here to be fitted again.
    #[cfg(not(feature = "tokens"))]
    fn fitted<'a>(&self, input: &'a TagInput) -> Cow<'a, TagInput> {
        Cow::Borrowed(input)
    }

    fn inference(&self) -> InferenceConfiguration {
        InferenceConfiguration::builder()
            .max_tokens(self.max_output_tokens.min(i32::MAX as usize) as i32)
            .temperature(0.0)
            .build()
    }

    fn error<E, R>(&self, err: SdkError<E, R>) -> ModelError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + Send + Sync + 'static,
    {
        model_error(err, &self.model, "LLM_MODEL")
    }
}

#[async_trait]
impl Completion for BedrockChat {
    fn model_name(&self) -> &str {
        &self.name
    }

    fn system_prompt(&self) -> Option<&str> {
        self.system_prompt.as_deref()
    }

    /// One Converse call; with a schema, the reply is the forced tool's input as JSON text.
    async fn completion(
        &self,
        messages: &[Message],
        schema: Option<&Value>,
    ) -> Result<(String, Usage), ModelError> {
        let client = self.client.get().await?;
        let (system, turns) = converse_messages(messages)?;
        loop {
            let choice = self.tool_choice.load(Ordering::Relaxed);
            let mut request = client
                .converse()
                .model_id(&self.model)
                .set_system(Some(system.clone()))
                .set_messages(Some(turns.clone()))
                .inference_config(self.inference());
            if let Some(s) = schema {
                request = request.tool_config(tool_config(s, choice)?);
            }
            match request.send().await {
                Ok(out) => return reply_text(out),
                // Models without forced tool choice say so in a validation error: step down
                // to a looser choice, and remember.
                Err(e) => {
                    let refuses_choice = service_error(&e).is_some_and(|(code, message)| {
                        code == "ValidationException"
                            && message.to_ascii_lowercase().contains("toolchoice")
                    });
                    if !(refuses_choice && schema.is_some() && choice < CHOICE_AUTO) {
                        return Err(self.error(e));
                    }
                    tracing::warn!(model = %self.model, error = %DisplayErrorContext(&e),
                        "the model refuses this tool choice: using a looser one");
                    self.tool_choice.store(choice + 1, Ordering::Relaxed);
                }
            }
        }
    }

    fn tag_input<'a>(&self, input: &'a TagInput) -> Cow<'a, TagInput> {
        self.fitted(input)
    }

    async fn stream_answer(
        &self,
        input: &AnswerInput,
        tokens: &TokenSink,
    ) -> Result<(Answer, Usage), ModelError> {
        let client = self.client.get().await?;
        let (system, turns) = converse_messages(&answer_messages(input))?;
        let mut out = client
            .converse_stream()
            .model_id(&self.model)
            .set_system(Some(system))
            .set_messages(Some(turns))
            .inference_config(self.inference())
            .send()
            .await
            .map_err(|e| self.error(e))?;
        let mut answer = StreamedAnswer::default();
        while let Some(event) = out.stream.recv().await.map_err(|e| self.error(e))? {
            if let Some(piece) = answer.apply(event)? {
                let _ = tokens.send(piece);
            }
        }
        answer.finish(input.passages.len())
    }
}

pub struct BedrockEmbedder {
    client: LazyClient,
    model: EmbeddingModel,
    family: Family,
}

impl BedrockEmbedder {
    /// `endpoint` (EMBEDDING_BASE_URL) overrides the Bedrock endpoint; `model` defaults to
    /// [`DEFAULT_EMBEDDING_MODEL`]; `dimensions` must be one the model produces.
    pub fn new(
        aws: &AwsConfig,
        endpoint: Option<&str>,
        model: Option<&str>,
        dimensions: Option<usize>,
    ) -> Result<BedrockEmbedder, ConfigError> {
        Self::build(
            LazyClient::new(aws, endpoint, Duration::from_secs(60)),
            model,
            dimensions,
        )
    }

    /// With a ready client (tests, or a caller that configured its own).
    pub fn with_client(
        client: Client,
        model: Option<&str>,
        dimensions: Option<usize>,
    ) -> Result<BedrockEmbedder, ConfigError> {
        Self::build(LazyClient::ready(client), model, dimensions)
    }

    fn build(
        client: LazyClient,
        model: Option<&str>,
        dimensions: Option<usize>,
    ) -> Result<BedrockEmbedder, ConfigError> {
        let model = model.unwrap_or(DEFAULT_EMBEDDING_MODEL).to_string();
        let (family, dimension) = super::names::bedrock::embedding(&model, dimensions)?;
        Ok(BedrockEmbedder {
            client,
            model: EmbeddingModel::new("bedrock", model, dimension, None),
            family,
        })
    }

    async fn invoke(&self, client: &Client, body: &Value) -> Result<Value, ModelError> {
        let out = client
            .invoke_model()
            .model_id(self.model.name())
            .content_type("application/json")
            .accept("application/json")
            .body(Blob::new(body.to_string()))
            .send()
            .await
            .map_err(|e| model_error(e, self.model.name(), "EMBEDDING_MODEL"))?;
        serde_json::from_slice(out.body.as_ref()).map_err(|e| {
            ModelError::InvalidReply(format!(
                "bedrock {}: reply is not JSON: {e}",
                self.model.name()
            ))
        })
    }

    /// One vector of a reply (its dimension is checked with the others: `embedding::checked`).
    fn vector(&self, v: &Value) -> Result<Vec<f32>, ModelError> {
        Ok(v.as_array()
            .ok_or_else(|| ModelError::InvalidReply("embedding is not an array".into()))?
            .iter()
            .filter_map(Value::as_f64)
            .map(|x| x as f32)
            .collect())
    }

    async fn titan(&self, client: &Client, text: &str) -> Result<(Vec<f32>, u64), ModelError> {
        let body = if self.family == Family::TitanV2 {
            json!({"inputText": text, "dimensions": self.model.dimension(), "normalize": true})
        } else {
            json!({"inputText": text})
        };
        let reply = self.invoke(client, &body).await?;
        let tokens = reply["inputTextTokenCount"].as_u64().unwrap_or(0);
        Ok((self.vector(&reply["embedding"])?, tokens))
    }

    /// One Cohere batch, with the input type Cohere documents for retrieval: chunks as
    /// `search_document`, questions as `search_query`.
    async fn cohere(
        &self,
        client: &Client,
        kind: EmbedKind,
        texts: &[String],
    ) -> Result<(Vec<Vec<f32>>, u64), ModelError> {
        let input_type = match kind {
            EmbedKind::Document => "search_document",
            EmbedKind::Query => "search_query",
        };
        let mut body =
            json!({"texts": texts, "input_type": input_type, "embedding_types": ["float"]});
        if self.family == Family::CohereV4 {
            body["output_dimension"] = json!(self.model.dimension());
        }
        let reply = self.invoke(client, &body).await?;
        // `embeddings` is `{float: [...]}` when types were asked for, a bare list otherwise.
        let list = reply["embeddings"]
            .get("float")
            .unwrap_or(&reply["embeddings"])
            .as_array()
            .ok_or_else(|| ModelError::InvalidReply("embeddings reply has no vectors".into()))?;
        if list.len() != texts.len() {
            return Err(ModelError::InvalidReply(format!(
                "embeddings reply has {} vectors for {} texts",
                list.len(),
                texts.len()
            )));
        }
        let vectors = list
            .iter()
            .map(|v| self.vector(v))
            .collect::<Result<Vec<_>, _>>()?;
        // Bedrock's Cohere replies carry no token count: estimated, for metrics and budgets.
        let tokens = reply["meta"]["billed_units"]["input_tokens"]
            .as_u64()
            .unwrap_or_else(|| estimated_tokens(texts));
        Ok((vectors, tokens))
    }
}

/// Tokens of texts whose reply does not count them: in cl100k tokens where the tokenizer is
/// linked; else (the embed function, which links no vocabulary for an estimate) a quarter of
/// the bytes, about what cl100k makes of prose.
fn estimated_tokens(texts: &[String]) -> u64 {
    #[cfg(feature = "tokens")]
    let count = |t: &str| crate::text::count_tokens(t);
    #[cfg(not(feature = "tokens"))]
    let count = |t: &str| t.len().div_ceil(4);
    texts.iter().map(|t| count(t) as u64).sum()
}

#[async_trait]
impl EmbeddingRequest for BedrockEmbedder {
    fn model(&self) -> &EmbeddingModel {
        &self.model
    }

    /// Titan Text Embeddings take no input type (AWS documents one request shape for queries
    /// and documents alike); Cohere Embed takes `search_query` / `search_document`.
    async fn embed_as(
        &self,
        kind: EmbedKind,
        texts: &[String],
    ) -> Result<(Vec<Vec<f32>>, Usage), ModelError> {
        let client = self.client.get().await?;
        let mut vectors = Vec::with_capacity(texts.len());
        let mut tokens = 0;
        match self.family {
            Family::TitanV2 | Family::TitanV1 => {
                // `buffered` runs several calls at once and yields their results in order.
                // (The futures are made first: a closure in the stream trips async_trait's
                // `Send` check.)
                let calls: Vec<_> = texts.iter().map(|t| self.titan(client, t)).collect();
                let results: Vec<(Vec<f32>, u64)> = futures::stream::iter(calls)
                    .buffered(TITAN_CONCURRENCY)
                    .try_collect()
                    .await?;
                for (v, t) in results {
                    vectors.push(v);
                    tokens += t;
                }
            }
            Family::CohereV3 | Family::CohereV4 => {
                for batch in texts.chunks(COHERE_BATCH) {
                    let (v, t) = self.cohere(client, kind, batch).await?;
                    vectors.extend(v);
                    tokens += t;
                }
            }
        }
        Ok((
            vectors,
            Usage {
                input_tokens: tokens,
                output_tokens: 0,
                cost_usd: 0.0,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use aws_sdk_bedrockruntime::config::http::HttpResponse;
    use aws_sdk_bedrockruntime::config::retry::RetryConfig;
    use aws_sdk_bedrockruntime::operation::converse::{ConverseError, ConverseInput};
    use aws_sdk_bedrockruntime::operation::invoke_model::{InvokeModelInput, InvokeModelOutput};
    use aws_sdk_bedrockruntime::types::ToolUseBlock;
    use aws_sdk_bedrockruntime::types::error::{
        AccessDeniedException, ThrottlingException, ValidationException,
    };
    use aws_smithy_mocks::{Rule, RuleMode, mock, mock_client};
    use aws_smithy_types::body::SdkBody;

    use super::*;
    use crate::domain::{DocId, Field, Passage, Taxonomy};
    use crate::ports::{ChatModel, Embedder};
    use crate::providers::llm::tag_schema;
    use crate::text::{count_tokens, fit_head_tail};

    /// A client answering from `rules`, without retries (a retried throttle would just wait).
    fn client(rules: &[&Rule], mode: RuleMode) -> Client {
        mock_client!(aws_sdk_bedrockruntime, mode, rules, |c| c
            .retry_config(RetryConfig::disabled()))
    }

    fn tag_input() -> TagInput {
        TagInput {
            current_title: "scan".into(),
            content: "ACME GmbH\nInvoice 2025-031\nDate: 14.03.2025\nTotal: EUR 120.00".into(),
            fields: vec![
                Field::Title,
                Field::Tags,
                Field::Correspondent,
                Field::DocumentType,
                Field::Created,
            ],
            tags: vec!["Invoice".into(), "Tax".into()],
            correspondents: vec!["ACME".into()],
            document_types: vec!["Invoice".into()],
            custom_fields: vec![],
            storage_paths: vec![],
            restrict_tags: true,
            restrict_correspondents: false,
            restrict_document_types: true,
            taxonomy: Taxonomy::default(),
            today: "2025-06-01".into(),
        }
    }

    fn valid() -> Value {
        json!({"title": "ACME invoice 2025-031", "tags": ["Invoice"], "correspondent": "ACME",
               "document_type": "Invoice", "created": "2025-03-14"})
    }

    fn reply(block: ContentBlock, stop: StopReason) -> ConverseReply {
        let message = BedrockMessage::builder()
            .role(ConversationRole::Assistant)
            .content(block)
            .build()
            .unwrap();
        ConverseReply::builder()
            .output(ConverseOutput::Message(message))
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

    fn tool_reply(input: Value) -> ConverseReply {
        let tool = ToolUseBlock::builder()
            .tool_use_id("tooluse_1")
            .name(TAG_TOOL)
            .input(to_document(&input))
            .build()
            .unwrap();
        reply(ContentBlock::ToolUse(tool), StopReason::ToolUse)
    }

    /// A converse rule that records every request it answers.
    fn recording(
        seen: &Arc<Mutex<Vec<ConverseInput>>>,
    ) -> aws_smithy_mocks::RuleBuilder<ConverseInput, ConverseReply, ConverseError> {
        let seen = seen.clone();
        mock!(Client::converse).match_requests(move |r| {
            seen.lock().unwrap().push(r.clone());
            true
        })
    }

    fn chat(client: Client) -> BedrockChat {
        BedrockChat::with_client(client, None, 6000, 600, None)
    }

    fn text_of(m: &BedrockMessage) -> String {
        m.content()
            .iter()
            .filter_map(|b| b.as_text().ok().cloned())
            .collect()
    }

    #[tokio::test]
    async fn converse_request_forces_the_schema_tool_with_the_limits_and_system_prompt() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let rule = recording(&seen).then_output(|| tool_reply(valid()));
        let model = chat(client(&[&rule], RuleMode::MatchAny));
        assert_eq!(model.name(), format!("bedrock/{DEFAULT_CHAT_MODEL}"));
        model.suggest(&tag_input()).await.unwrap();

        let request = seen.lock().unwrap()[0].clone();
        assert_eq!(request.model_id(), Some(DEFAULT_CHAT_MODEL));
        let inference = request.inference_config().unwrap();
        assert_eq!(inference.max_tokens(), Some(600));
        assert_eq!(inference.temperature(), Some(0.0));
        let system = request.system()[0].as_text().unwrap();
        assert!(system.contains("untrusted"), "{system}");
        assert!(
            text_of(&request.messages()[0]).contains("<document>\nACME GmbH"),
            "the document is in the user turn"
        );
        let tools = request.tool_config().expect("tool config");
        let Tool::ToolSpec(spec) = &tools.tools()[0] else {
            panic!("{:?}", tools.tools())
        };
        assert_eq!(spec.name(), TAG_TOOL);
        assert_eq!(
            spec.input_schema(),
            Some(&ToolInputSchema::Json(to_document(&tag_schema(
                &tag_input()
            ))))
        );
        assert_eq!(
            tools.tool_choice(),
            Some(&ToolChoice::Tool(
                SpecificToolChoice::builder()
                    .name(TAG_TOOL)
                    .build()
                    .unwrap()
            ))
        );
    }

    #[tokio::test]
    async fn tool_use_reply_is_the_suggestion_with_its_usage() {
        let rule = mock!(Client::converse).then_output(|| tool_reply(valid()));
        let (s, usage) = chat(client(&[&rule], RuleMode::MatchAny))
            .suggest(&tag_input())
            .await
            .unwrap();
        assert_eq!(s.title.as_deref(), Some("ACME invoice 2025-031"));
        assert_eq!(s.tags, vec!["Invoice"]);
        assert_eq!(s.correspondent.as_deref(), Some("ACME"));
        assert_eq!(s.created.as_deref(), Some("2025-03-14"));
        assert_eq!(
            usage,
            Usage {
                input_tokens: 100,
                output_tokens: 20,
                cost_usd: 0.0
            }
        );
    }

    #[tokio::test]
    async fn an_invalid_reply_is_repaired_once_with_its_error() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let bad = recording(&seen).then_output(|| tool_reply(json!({"title": "x"})));
        let good = recording(&seen).then_output(|| tool_reply(valid()));
        let (s, usage) = chat(client(&[&bad, &good], RuleMode::Sequential))
            .suggest(&tag_input())
            .await
            .unwrap();
        assert_eq!(s.tags, vec!["Invoice"]);
        assert_eq!(usage.input_tokens, 200, "both calls count");
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2);
        let repair = seen[1].messages();
        assert_eq!(repair.len(), 3, "user, the bad reply, the correction");
        assert_eq!(repair[1].role(), &ConversationRole::Assistant);
        assert!(text_of(&repair[1]).contains(r#""title":"x""#));
        let correction = text_of(&repair[2]);
        assert!(
            correction.contains("That reply is invalid") && correction.contains("missing property"),
            "{correction}"
        );
        assert!(seen[1].tool_config().is_some(), "the tool is forced again");
    }

    #[tokio::test]
    async fn invalid_twice_is_an_invalid_reply() {
        let rule = mock!(Client::converse).then_output(|| tool_reply(json!({"tags": 7})));
        let err = chat(client(&[&rule], RuleMode::MatchAny))
            .suggest(&tag_input())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ModelError::InvalidReply(m) if m.contains("after one repair")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_cut_off_reply_is_not_repaired() {
        let rule = mock!(Client::converse).then_output(|| {
            reply(
                ContentBlock::Text("{\"title\": \"AC".into()),
                StopReason::MaxTokens,
            )
        });
        let err = chat(client(&[&rule], RuleMode::MatchAny))
            .suggest(&tag_input())
            .await
            .unwrap_err();
        assert!(matches!(&err, ModelError::InvalidReply(m) if m.contains("cut off")));
    }

    #[tokio::test]
    async fn throttling_is_unavailable() {
        let rule = mock!(Client::converse).then_error(|| {
            ConverseError::ThrottlingException(
                ThrottlingException::builder()
                    .message("Too many requests")
                    .build(),
            )
        });
        let err = chat(client(&[&rule], RuleMode::MatchAny))
            .suggest(&tag_input())
            .await
            .unwrap_err();
        assert!(err.is_transient(), "{err}");
    }

    #[tokio::test]
    async fn access_denied_is_refused_naming_the_model_and_what_to_check() {
        let rule = mock!(Client::converse).then_error(|| {
            ConverseError::AccessDeniedException(
                AccessDeniedException::builder()
                    .message("You don't have access to the model with the specified model ID.")
                    .build(),
            )
        });
        let err = chat(client(&[&rule], RuleMode::MatchAny))
            .answer(&answer_input())
            .await
            .unwrap_err();
        let ModelError::Refused(message) = &err else {
            panic!("{err}")
        };
        assert!(message.contains(DEFAULT_CHAT_MODEL), "{message}");
        assert!(message.contains("Model access") && message.contains("region"));
        assert!(!err.is_transient());
    }

    #[tokio::test]
    async fn a_model_without_forced_tool_choice_gets_a_looser_one() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let refused = recording(&seen).then_error(|| {
            ConverseError::ValidationException(
                ValidationException::builder()
                    .message("This model doesn't support the toolConfig.toolChoice.tool field. Remove toolConfig.toolChoice.tool and try again.")
                    .build(),
            )
        });
        let good = recording(&seen).then_output(|| tool_reply(valid()));
        let later = recording(&seen).then_output(|| tool_reply(valid()));
        let model = chat(client(&[&refused, &good, &later], RuleMode::Sequential));
        model.suggest(&tag_input()).await.unwrap();
        model.suggest(&tag_input()).await.unwrap();
        let seen = seen.lock().unwrap();
        let choices: Vec<_> = seen
            .iter()
            .map(|r| r.tool_config().unwrap().tool_choice().unwrap().clone())
            .collect();
        assert!(choices[0].is_tool());
        assert!(choices[1].is_any() && choices[2].is_any(), "{choices:?}");
    }

    #[tokio::test]
    async fn claude_gets_a_smaller_document_budget_than_cl100k_counts() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let rule = recording(&seen).then_output(|| tool_reply(valid()));
        let model = BedrockChat::with_client(
            client(&[&rule], RuleMode::MatchAny),
            Some("eu.anthropic.claude-haiku-4-5-20251001-v1:0"),
            200,
            600,
            None,
        );
        let mut input = tag_input();
        input.content = fit_head_tail(&"Rechnung Nummer 42 über Wartung. ".repeat(100), 200);
        model.suggest(&input).await.unwrap();
        let user = text_of(&seen.lock().unwrap()[0].messages()[0]);
        let document = &user[user.find("<document>").unwrap()..];
        assert!(count_tokens(document) <= 200 / 5 * 4 + 10, "{document}");
        assert_eq!(document.matches('…').count(), 1, "one cut mark: {document}");
    }

    fn answer_input() -> AnswerInput {
        AnswerInput {
            question: "What is the invoice total?".into(),
            passages: vec![Passage {
                n: 1,
                doc_id: DocId::Paperless(7),
                title: "ACME invoice".into(),
                text: "The invoice total is EUR 120.00.".into(),
            }],
            history: vec![("Who sent it?".into(), "ACME [1].".into())],
        }
    }

    #[tokio::test]
    async fn answers_and_standalone_questions_are_plain_text_without_tools() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let rule = recording(&seen).then_output(|| {
            reply(
                ContentBlock::Text("The total is EUR 120.00 [1].".into()),
                StopReason::EndTurn,
            )
        });
        let model = chat(client(&[&rule], RuleMode::MatchAny));
        let (a, _) = model.answer(&answer_input()).await.unwrap();
        assert_eq!(a.cited, vec![1]);
        let (q, _) = model
            .standalone(&[("Who sent it?".into(), "ACME".into())], "and the total?")
            .await
            .unwrap();
        assert_eq!(q, "The total is EUR 120.00 [1].");
        let seen = seen.lock().unwrap();
        assert!(seen.iter().all(|r| r.tool_config().is_none()));
        let roles: Vec<_> = seen[0]
            .messages()
            .iter()
            .map(|m| m.role().clone())
            .collect();
        assert_eq!(
            roles,
            [
                ConversationRole::User,
                ConversationRole::Assistant,
                ConversationRole::User
            ],
            "history, then passages and question"
        );
    }

    /// CRC-32 (IEEE), as event-stream frames carry it.
    fn crc32(bytes: &[u8]) -> u32 {
        let mut c = !0u32;
        for b in bytes {
            c ^= u32::from(*b);
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0xEDB8_8320
                } else {
                    c >> 1
                };
            }
        }
        !c
    }

    /// One AWS event-stream frame: prelude, string headers, JSON payload, checksums.
    fn frame(event_type: &str, payload: Value) -> Vec<u8> {
        let mut headers = Vec::new();
        for (name, value) in [
            (":message-type", "event"),
            (":event-type", event_type),
            (":content-type", "application/json"),
        ] {
            headers.push(name.len() as u8);
            headers.extend(name.as_bytes());
            headers.push(7);
            headers.extend((value.len() as u16).to_be_bytes());
            headers.extend(value.as_bytes());
        }
        let payload = payload.to_string().into_bytes();
        let total = 12 + headers.len() + payload.len() + 4;
        let mut m = Vec::new();
        m.extend((total as u32).to_be_bytes());
        m.extend((headers.len() as u32).to_be_bytes());
        m.extend(crc32(&m).to_be_bytes());
        m.extend(headers);
        m.extend(payload);
        m.extend(crc32(&m).to_be_bytes());
        m
    }

    fn stream_rule(stop: &'static str) -> Rule {
        mock!(Client::converse_stream).then_http_response(move || {
            let mut body = Vec::new();
            body.extend(frame("messageStart", json!({"role": "assistant"})));
            for piece in ["The total is ", "EUR 120.00 [1]."] {
                body.extend(frame(
                    "contentBlockDelta",
                    json!({"contentBlockIndex": 0, "delta": {"text": piece}}),
                ));
            }
            body.extend(frame("contentBlockStop", json!({"contentBlockIndex": 0})));
            body.extend(frame("messageStop", json!({"stopReason": stop})));
            body.extend(frame(
                "metadata",
                json!({"usage": {"inputTokens": 50, "outputTokens": 7, "totalTokens": 57},
                       "metrics": {"latencyMs": 12}}),
            ));
            HttpResponse::new(200u16.try_into().unwrap(), SdkBody::from(body))
        })
    }

    #[tokio::test]
    async fn streamed_answers_send_their_deltas_and_count_tokens() {
        let rule = stream_rule("end_turn");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let (answer, usage) = chat(client(&[&rule], RuleMode::MatchAny))
            .answer_streaming(&answer_input(), &tx)
            .await
            .unwrap();
        drop(tx);
        let mut pieces = Vec::new();
        while let Some(p) = rx.recv().await {
            pieces.push(p);
        }
        assert_eq!(pieces, ["The total is ", "EUR 120.00 [1]."]);
        assert_eq!(answer.text, "The total is EUR 120.00 [1].");
        assert_eq!(answer.cited, vec![1]);
        assert_eq!(
            usage,
            Usage {
                input_tokens: 50,
                output_tokens: 7,
                cost_usd: 0.0
            }
        );
    }

    #[tokio::test]
    async fn a_streamed_answer_cut_off_or_broken_off_fails() {
        let rule = stream_rule("max_tokens");
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let err = chat(client(&[&rule], RuleMode::MatchAny))
            .answer_streaming(&answer_input(), &tx)
            .await
            .unwrap_err();
        assert!(matches!(&err, ModelError::InvalidReply(m) if m.contains("cut off")));
        // A stream that ends without its stop event broke off: worth retrying.
        let mut partial = StreamedAnswer::default();
        let delta = ConverseStreamOutput::ContentBlockDelta(
            aws_sdk_bedrockruntime::types::ContentBlockDeltaEvent::builder()
                .content_block_index(0)
                .delta(ContentBlockDelta::Text("The total".into()))
                .build()
                .unwrap(),
        );
        assert_eq!(partial.apply(delta).unwrap().as_deref(), Some("The total"));
        assert!(partial.finish(1).unwrap_err().is_transient());
    }

    fn body_of(r: &InvokeModelInput) -> Value {
        serde_json::from_slice(r.body().unwrap().as_ref()).unwrap()
    }

    fn invoke_reply(body: Value) -> InvokeModelOutput {
        InvokeModelOutput::builder()
            .body(Blob::new(body.to_string()))
            .content_type("application/json")
            .build()
            .unwrap()
    }

    #[tokio::test]
    async fn titan_sends_one_text_per_call_and_keeps_the_order() {
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let seen = bodies.clone();
        let rule = mock!(Client::invoke_model)
            .match_requests(move |r| {
                seen.lock()
                    .unwrap()
                    .push((r.model_id().map(str::to_string), body_of(r)));
                true
            })
            .then_compute_output(|r| {
                let body = body_of(r);
                let n: f32 = body["inputText"].as_str().unwrap()[5..].parse().unwrap();
                let mut v = vec![0.0f32; 512];
                v[0] = n;
                invoke_reply(json!({"embedding": v, "inputTextTokenCount": 3}))
            });
        let e = BedrockEmbedder::with_client(client(&[&rule], RuleMode::MatchAny), None, Some(512))
            .unwrap();
        assert_eq!(e.space(), "bedrock/amazon.titan-embed-text-v2:0/512");
        let texts: Vec<String> = (0..30).map(|i| format!("text {i}")).collect();
        let (vectors, usage) = e.embed(&texts).await.unwrap();
        let firsts: Vec<f32> = vectors.iter().map(|v| v[0]).collect();
        assert_eq!(firsts, (0..30).map(|i| i as f32).collect::<Vec<_>>());
        assert_eq!(usage.input_tokens, 90);
        let bodies = bodies.lock().unwrap();
        assert_eq!(bodies.len(), 30);
        let (model, body) = &bodies[0];
        assert_eq!(model.as_deref(), Some(DEFAULT_EMBEDDING_MODEL));
        assert!(body["inputText"].as_str().unwrap().starts_with("text "));
        assert_eq!(body["dimensions"], 512);
        assert_eq!(body["normalize"], true);
    }

    #[tokio::test]
    async fn cohere_embeds_in_batches_of_at_most_96_as_documents() {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let seen = batches.clone();
        let rule = mock!(Client::invoke_model)
            .match_requests(move |r| {
                seen.lock().unwrap().push(body_of(r));
                true
            })
            .then_compute_output(|r| {
                let texts = body_of(r)["texts"].as_array().unwrap().clone();
                let vectors: Vec<Vec<f32>> = texts
                    .iter()
                    .map(|t| {
                        let mut v = vec![0.0f32; 1024];
                        v[0] = t.as_str().unwrap()[5..].parse().unwrap();
                        v
                    })
                    .collect();
                invoke_reply(json!({"id": "x", "embeddings": {"float": vectors}, "response_type": "embeddings_by_type"}))
            });
        let e = BedrockEmbedder::with_client(
            client(&[&rule], RuleMode::MatchAny),
            Some("cohere.embed-multilingual-v3"),
            None,
        )
        .unwrap();
        assert_eq!(e.dimension(), 1024);
        let texts: Vec<String> = (0..200).map(|i| format!("text {i}")).collect();
        let (vectors, usage) = e.embed(&texts).await.unwrap();
        let firsts: Vec<f32> = vectors.iter().map(|v| v[0]).collect();
        assert_eq!(firsts, (0..200).map(|i| i as f32).collect::<Vec<_>>());
        assert!(usage.input_tokens > 0, "estimated when the reply has none");
        {
            let sent = batches.lock().unwrap();
            let sizes: Vec<usize> = sent
                .iter()
                .map(|b| b["texts"].as_array().unwrap().len())
                .collect();
            assert_eq!(sizes, [96, 96, 8]);
            assert!(sent.iter().all(|b| b["input_type"] == "search_document"));
        }
        let (q, _) = e.embed_query("text 7").await.unwrap();
        assert_eq!(q[0], 7.0);
        let last = batches.lock().unwrap().last().cloned().unwrap();
        assert_eq!(
            last["input_type"], "search_query",
            "a question is a search query"
        );
    }

    #[tokio::test]
    async fn embedding_errors_are_mapped_like_chat_errors() {
        use aws_sdk_bedrockruntime::operation::invoke_model::InvokeModelError;
        let rule = mock!(Client::invoke_model).then_error(|| {
            InvokeModelError::ThrottlingException(ThrottlingException::builder().build())
        });
        let e =
            BedrockEmbedder::with_client(client(&[&rule], RuleMode::MatchAny), None, None).unwrap();
        assert!(e.embed(&["x".into()]).await.unwrap_err().is_transient());
    }

    #[tokio::test]
    async fn a_given_configuration_is_used_instead_of_the_default_chains() {
        let sdk = |region: Option<&str>| {
            let mut b = aws_config::SdkConfig::builder()
                .behavior_version(aws_config::BehaviorVersion::latest());
            if let Some(r) = region {
                b = b.region(aws_config::Region::new(r.to_string()));
            }
            AwsConfig::Given(Box::new(b.build()))
        };
        let lazy = LazyClient::new(
            &sdk(Some("eu-south-2")),
            Some("http://127.0.0.1:9"),
            Duration::from_secs(7),
        );
        let client = lazy.get().await.unwrap();
        assert_eq!(
            client.config().region().map(|r| r.as_ref()),
            Some("eu-south-2")
        );
        // Without a region in it, none is looked for elsewhere (profile files, IMDS).
        let lazy = LazyClient::new(&sdk(None), None, Duration::from_secs(7));
        assert!(matches!(lazy.get().await, Err(ModelError::Refused(_))));
    }

    #[test]
    fn embedding_dimensions_are_checked_at_build() {
        let make = |model: Option<&str>, dims| {
            BedrockEmbedder::new(&AwsConfig::DefaultChain, None, model, dims)
        };
        assert_eq!(make(None, None).unwrap().dimension(), 1024);
        assert_eq!(make(None, Some(256)).unwrap().dimension(), 256);
        let err = make(None, Some(300)).err().unwrap();
        assert_eq!(err.var, "EMBEDDING_DIMENSIONS");
        assert!(err.message.contains("1024, 512, 256"), "{}", err.message);
        let err = make(Some("cohere.embed-english-v3"), Some(512))
            .err()
            .unwrap();
        assert_eq!(err.var, "EMBEDDING_DIMENSIONS");
        assert_eq!(
            make(Some("cohere.embed-v4:0"), None).unwrap().space(),
            "bedrock/cohere.embed-v4:0/1536"
        );
        let err = make(Some("amazon.nova-pro-v1:0"), None).err().unwrap();
        assert_eq!(err.var, "EMBEDDING_MODEL");
    }

    #[test]
    fn the_factories_build_bedrock_without_touching_aws() {
        let env: HashMap<String, String> = [
            ("LLM_PROVIDER", "bedrock"),
            ("LLM_MODEL", "eu.anthropic.claude-haiku-4-5-20251001-v1:0"),
            ("EMBEDDING_DIMENSIONS", "512"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let settings = crate::config::Settings::from_map(&env).unwrap();
        let model = crate::providers::chat_model(&settings, &AwsConfig::DefaultChain).unwrap();
        assert_eq!(
            model.name(),
            "bedrock/eu.anthropic.claude-haiku-4-5-20251001-v1:0"
        );
        let embedder = crate::providers::embedder(&settings, &AwsConfig::DefaultChain).unwrap();
        assert_eq!(embedder.space(), "bedrock/amazon.titan-embed-text-v2:0/512");
        let mut env = env;
        env.insert("EMBEDDING_DIMENSIONS".into(), "768".into());
        let settings = crate::config::Settings::from_map(&env).unwrap();
        let err = crate::providers::embedder(&settings, &AwsConfig::DefaultChain)
            .err()
            .unwrap();
        assert_eq!(err.var, "EMBEDDING_DIMENSIONS");
    }
}
