//! Model providers behind the `ChatModel` and `Embedder` ports, chosen by configuration.

#[cfg(feature = "bedrock")]
pub mod bedrock;
pub mod embedding;
pub mod lexical;
pub mod llm;
pub mod marking;
pub mod names;
#[cfg(feature = "clients")]
pub mod ollama;
#[cfg(feature = "clients")]
pub mod openai;

/// Where a provider on AWS (Bedrock) takes its region and credentials from.
#[derive(Clone)]
pub enum AwsConfig {
    /// A configuration the caller built: a Lambda's, from the variables Lambda sets
    /// (`lambda::sdk_config`), so a function links none of the provider chains that never
    /// answer there.
    /// (A Lambda wiring builds it whether or not Bedrock is linked: only Bedrock reads it.)
    #[cfg(any(feature = "bedrock", feature = "lambda"))]
    #[cfg_attr(not(feature = "bedrock"), allow(dead_code))]
    Given(Box<aws_config::SdkConfig>),
    /// The SDK's default provider chains (environment, profile files and SSO, container or
    /// instance role), loaded on first use: `pai`, which may run with any of them.
    #[cfg(feature = "local")]
    DefaultChain,
}

#[cfg(feature = "clients")]
mod assembly {
    //! Which provider serves, from the settings, and the layers every deployment puts around
    //! it (guard, then cache): `pai` and the Lambdas assemble models through here alike.

    use std::sync::Arc;

    use crate::config::{ConfigError, Provider, Settings};
    use crate::models::{CachedEmbedder, CachedModel};
    use crate::ports::{Cache, ChatModel, Embedder};
    use crate::resilience::{AdaptiveLimit, Guard, GuardedEmbedder, GuardedModel};

    use super::AwsConfig;
    use super::lexical::{DEFAULT_DIMENSION, LexicalEmbedder, LexicalModel};
    use super::ollama::{OllamaChat, OllamaEmbedder};
    use super::openai::{OpenAiChat, OpenAiEmbedder};

    #[cfg(not(feature = "bedrock"))]
    const WITHOUT_BEDROCK: &str = "this build has no bedrock support (built without the `bedrock` feature): use openai, ollama or lexical, or a build with bedrock";

    /// The chat model the settings name (on Bedrock, configured from `aws`).
    #[cfg_attr(not(feature = "bedrock"), allow(unused_variables))]
    pub fn chat_model(
        settings: &Settings,
        aws: &AwsConfig,
    ) -> Result<Arc<dyn ChatModel>, ConfigError> {
        let llm = &settings.llm;
        Ok(match llm.provider {
            Provider::Lexical => Arc::new(LexicalModel::default()),
            Provider::OpenAi => Arc::new(
                OpenAiChat::new(
                    llm.base_url.as_deref(),
                    llm.api_key.clone(),
                    llm.model.as_deref(),
                    settings.policy.max_output_tokens,
                    settings.policy.system_prompt.clone(),
                )
                .map_err(|e| config("LLM_BASE_URL", e.to_string()))?,
            ),
            Provider::Ollama => Arc::new(
                OllamaChat::new(
                    llm.base_url.as_deref(),
                    llm.model.as_deref(),
                    settings.ollama_num_ctx,
                    settings.policy.max_output_tokens,
                    settings.policy.system_prompt.clone(),
                )
                .map_err(|e| config("LLM_BASE_URL", e.to_string()))?,
            ),
            #[cfg(feature = "bedrock")]
            Provider::Bedrock => Arc::new(super::bedrock::BedrockChat::new(
                aws,
                llm.base_url.as_deref(),
                llm.model.as_deref(),
                settings.policy.max_input_tokens,
                settings.policy.max_output_tokens,
                settings.policy.system_prompt.clone(),
            )),
            #[cfg(not(feature = "bedrock"))]
            Provider::Bedrock => return Err(config("LLM_PROVIDER", WITHOUT_BEDROCK)),
        })
    }

    use super::names::{config, marking};

    /// The embedder the settings name (on Bedrock, configured from `aws`).
    #[cfg_attr(not(feature = "bedrock"), allow(unused_variables))]
    pub fn embedder(
        settings: &Settings,
        aws: &AwsConfig,
    ) -> Result<Arc<dyn Embedder>, ConfigError> {
        let e = &settings.embedding;
        Ok(match e.provider {
            Provider::Lexical => Arc::new(LexicalEmbedder::new(
                e.dimensions.unwrap_or(DEFAULT_DIMENSION),
            )),
            Provider::OpenAi => Arc::new(
                OpenAiEmbedder::new(
                    e.base_url.as_deref(),
                    e.api_key.clone(),
                    e.model.as_deref(),
                    e.dimensions,
                )
                .map_err(|m| config("EMBEDDING_DIMENSIONS", m))?
                .with_marking(marking(e, super::openai::DEFAULT_EMBEDDING_MODEL)),
            ),
            Provider::Ollama => {
                super::names::check_ollama_embedding(e)?;
                Arc::new(
                    OllamaEmbedder::new(e.base_url.as_deref(), e.model.as_deref(), e.dimensions)
                        .map_err(|m| config("EMBEDDING_DIMENSIONS", m))?
                        .with_marking(marking(e, super::ollama::DEFAULT_EMBEDDING_MODEL)),
                )
            }
            #[cfg(feature = "bedrock")]
            Provider::Bedrock => Arc::new(super::bedrock::BedrockEmbedder::new(
                aws,
                e.base_url.as_deref(),
                e.model.as_deref(),
                e.dimensions,
            )?),
            #[cfg(not(feature = "bedrock"))]
            Provider::Bedrock => return Err(config("EMBEDDING_PROVIDER", WITHOUT_BEDROCK)),
        })
    }

    /// The chat model and the embedder, as the use cases hold them.
    pub type Models = (Arc<dyn ChatModel>, Arc<dyn Embedder>);

    /// Which calls share one adaptive concurrency limit: hosted APIs limit each model on its
    /// own (so chat and embeddings do not share), one Ollama server is one machine's capacity
    /// whatever the model.
    fn endpoint(provider: Provider, base_url: Option<&str>, model: Option<&str>) -> String {
        let base = base_url.unwrap_or("default").trim_end_matches('/');
        match provider {
            Provider::Ollama => format!("ollama {base}"),
            other => format!("{other:?} {base} {}", model.unwrap_or("default")),
        }
    }

    /// The model and embedder the use cases get: network providers behind a guard
    /// (adaptive concurrency per endpoint, rate, circuit breaker) with the cache in front, so
    /// a hit never waits for a place. Tagging, chat answers and rewrites share the chat
    /// model's limit; embeddings (indexing and questions) the embedder's, which is the same
    /// one when both are on one endpoint. `raw_embedder` is passed in because the caller also
    /// needs its space first; `aws` configures a Bedrock chat model.
    pub fn assemble(
        settings: &Settings,
        raw_embedder: Arc<dyn Embedder>,
        cache: Arc<dyn Cache>,
        aws: &AwsConfig,
    ) -> Result<Models, ConfigError> {
        let limits = settings.model_limits;
        let (e, llm) = (&settings.embedding, &settings.llm);
        let embed_endpoint = endpoint(e.provider, e.base_url.as_deref(), e.model.as_deref());
        let embed_limit = (e.provider != Provider::Lexical).then(|| {
            Arc::new(AdaptiveLimit::new(
                raw_embedder.space(),
                limits.max_concurrency,
            ))
        });
        let guarded_embedder: Arc<dyn Embedder> = match &embed_limit {
            None => raw_embedder,
            Some(limit) => Arc::new(GuardedEmbedder::new(
                raw_embedder,
                Arc::new(Guard::sharing(limits, limit.clone())),
            )),
        };
        let embedder: Arc<dyn Embedder> = Arc::new(
            CachedEmbedder::new(guarded_embedder, cache.clone(), settings.cache_ttl_secs)
                .with_prices(settings.model_prices.clone()),
        );
        let raw_model = match (llm.provider, e.provider) {
            // The offline answerer borrows a real embedder's sense of meaning when there is one.
            (Provider::Lexical, Provider::Lexical) => chat_model(settings, aws)?,
            (Provider::Lexical, _) => Arc::new(LexicalModel::with_embedder(embedder.clone())),
            _ => chat_model(settings, aws)?,
        };
        let guarded_model: Arc<dyn ChatModel> = match llm.provider {
            Provider::Lexical => raw_model,
            _ => {
                let same_endpoint =
                    endpoint(llm.provider, llm.base_url.as_deref(), llm.model.as_deref())
                        == embed_endpoint;
                let limit = match embed_limit {
                    Some(l) if same_endpoint => l,
                    _ => Arc::new(AdaptiveLimit::new(raw_model.name(), limits.max_concurrency)),
                };
                Arc::new(GuardedModel::new(
                    raw_model,
                    Arc::new(Guard::sharing(limits, limit)),
                ))
            }
        };
        let model: Arc<dyn ChatModel> = Arc::new(
            CachedModel::new(guarded_model, cache, settings.cache_ttl_secs)
                .with_reply_shape(crate::models::reply_shape(settings))
                .with_prices(settings.model_prices.clone()),
        );
        Ok((model, embedder))
    }
}
#[cfg(feature = "clients")]
pub use assembly::{assemble, chat_model, embedder};
