//! What the six Lambda doors share: which ports each function binds to which AWS resource,
//! settings from the environment plus secrets from SSM Parameter Store, the SQS batch and
//! schedule handlers, and metrics as CloudWatch Embedded Metric Format.
//!
//! A function's `main` only picks its `Function` and the runtime entry point; everything else
//! lives here so it is tested once, against moto, with the same code that runs on AWS.

pub mod emf;
mod env;
pub mod grants;
mod secrets;
pub mod sqs;
mod unconfigured;

use std::sync::Arc;

use aws_config::SdkConfig;

pub use env::Env;
use grants::{ScopedCache, ScopedState};
pub use unconfigured::Unconfigured;

use crate::adapters::aws::{DynamoCache, DynamoState, S3Blobs, S3VectorIndex, SqsQueue};
use crate::config::{ApiKeysRule, ConfigError, Required, Secret, Settings};
use crate::domain::Taxonomy;
use crate::paperless::PaperlessClient;
use crate::pipeline::{Queues, Services};
use crate::ports::{BlobStore, Cache, Paperless, StateStore, VectorIndex, WorkQueue};

/// The Lambda functions of the SAM template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Function {
    /// HTTP API: webhook, uploads, jobs, suggestions.
    Ingest,
    /// SQS: fetch or read the document, chunk it (also S3 upload notifications).
    Chunk,
    /// SQS: embed new chunks into the vector index.
    Embed,
    /// SQS: suggest and write back metadata.
    Tag,
    /// Function URL, streaming: questions over the archive.
    Chat,
    /// EventBridge schedule: queue what changed in Paperless.
    Sync,
}

/// Which outside resources a function binds; everything else is `Unconfigured`.
struct Binds {
    blobs: bool,
    cache: bool,
    chunk_queue: bool,
    embed_queue: bool,
    tag_queue: bool,
    /// Reads the three dead-letter queues (`<STAGE>_DLQ_URL`): sync turns dead letters into
    /// failed jobs, ingest's retry routes move them back.
    dead_letters: bool,
}

impl Function {
    pub const ALL: [Function; 6] = [
        Function::Ingest,
        Function::Chunk,
        Function::Embed,
        Function::Tag,
        Function::Chat,
        Function::Sync,
    ];

    /// The name in `functions/<name>` and in metrics' `Function` dimension.
    pub fn name(self) -> &'static str {
        match self {
            Function::Ingest => "ingest",
            Function::Chunk => "chunk",
            Function::Embed => "embed",
            Function::Tag => "tag",
            Function::Chat => "chat",
            Function::Sync => "sync",
        }
    }

    /// The secrets it reads from SSM when `SECRETS` does not say otherwise; the template's
    /// IAM policy allows exactly these names.
    pub fn secrets(self) -> &'static [&'static str] {
        match self {
            Function::Ingest => &["WEBHOOK_SECRET", "API_KEYS", "PAPERLESS_TOKEN"],
            Function::Chunk | Function::Sync => &["PAPERLESS_TOKEN"],
            Function::Embed => &["LLM_API_KEY", "EMBEDDING_API_KEY"],
            Function::Tag => &["PAPERLESS_TOKEN", "LLM_API_KEY"],
            Function::Chat => &["API_KEYS", "LLM_API_KEY", "EMBEDDING_API_KEY"],
        }
    }

    /// What must accompany the settings for this function to do its work: a function that
    /// never calls Paperless or a model starts without their credentials.
    fn required(self) -> Required {
        let is = |fs: &[Function]| fs.contains(&self);
        Required {
            api_keys: match self {
                Function::Ingest => ApiKeysRule::Required,
                Function::Chat => ApiKeysRule::RequiredUnlessIam,
                _ => ApiKeysRule::NotNeeded,
            },
            paperless_token: is(&[
                Function::Ingest,
                Function::Chunk,
                Function::Tag,
                Function::Sync,
            ]),
            webhook_secret: self == Function::Ingest,
            llm_key: is(&[Function::Tag, Function::Chat]),
            embedding_key: is(&[Function::Embed, Function::Chat]),
        }
    }

    fn binds(self) -> Binds {
        let is = |fs: &[Function]| fs.contains(&self);
        use Function::*;
        // A consumer binds its own queue too: a transient failure backs off on it
        // (ChangeMessageVisibility) and a breaker refusal is deferred as a delayed copy.
        // Ingest and sync bind the embed and tag queues for their dead letters only; the
        // template lets them send to the chunk queue alone.
        Binds {
            blobs: is(&[Ingest, Chunk, Embed, Tag]),
            cache: is(&[Embed, Tag, Chat]),
            chunk_queue: is(&[Ingest, Sync, Chunk]),
            embed_queue: is(&[Ingest, Sync, Chunk, Embed]),
            tag_queue: is(&[Ingest, Sync, Chunk, Tag]),
            dead_letters: is(&[Ingest, Sync]),
        }
    }
}

/// Why a cold start could not build the function.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("reading secrets from SSM Parameter Store: {0}")]
    Secrets(String),
}

/// Builds the function's services from `env` (which already holds its secrets): the AWS
/// adapters for what it binds, `Unconfigured` for the rest, models as `pai` assembles them.
pub fn services(function: Function, sdk: &SdkConfig, env: &Env) -> Result<Services, StartError> {
    let lookup = |k: &str| env.get(k);
    let mut settings = Settings::from_lookup_requiring(&lookup, function.required())?;
    settings.mark_sources(env.secrets_from_ssm(), crate::config::Source::Ssm);
    // The web UI the ingest function serves sends chat to the chat function's URL.
    if function == Function::Ingest {
        settings.chat_url = env.get("CHAT_URL").filter(|u| !u.trim().is_empty());
    }
    let settings = Arc::new(settings);
    let binds = function.binds();
    let table = |var: &'static str| env.require(var);

    // Each table only as far as the function's IAM policy lets it (see `grants`).
    let state: Arc<dyn StateStore> = Arc::new(ScopedState::new(
        Arc::new(DynamoState::new(
            aws_sdk_dynamodb::Client::new(sdk),
            table("STATE_TABLE")?,
        )),
        function,
    ));
    let cache: Arc<dyn Cache> = if binds.cache {
        Arc::new(ScopedCache::new(
            Arc::new(DynamoCache::new(
                aws_sdk_dynamodb::Client::new(sdk),
                table("CACHE_TABLE")?,
            )),
            function,
        ))
    } else {
        Arc::new(Unconfigured::new("CACHE_TABLE"))
    };
    let blobs: Arc<dyn BlobStore> = if binds.blobs {
        Arc::new(S3Blobs::new(
            s3_client(sdk),
            env.require("DOCUMENT_BUCKET")?,
        ))
    } else {
        Arc::new(Unconfigured::new("DOCUMENT_BUCKET"))
    };
    let sqs = aws_sdk_sqs::Client::new(sdk);
    let queue = |bound: bool,
                 var: &'static str,
                 dead_var: &'static str|
     -> Result<Arc<dyn WorkQueue>, StartError> {
        Ok(if bound {
            let dead_letters = match binds.dead_letters {
                true => Some(env.require(dead_var)?),
                false => None,
            };
            Arc::new(SqsQueue::new(sqs.clone(), env.require(var)?, dead_letters))
        } else {
            Arc::new(Unconfigured::new(var))
        })
    };
    let queues = Queues {
        chunk: queue(binds.chunk_queue, "CHUNK_QUEUE_URL", "CHUNK_DLQ_URL")?,
        embed: queue(binds.embed_queue, "EMBED_QUEUE_URL", "EMBED_DLQ_URL")?,
        tag: queue(binds.tag_queue, "TAG_QUEUE_URL", "TAG_DLQ_URL")?,
    };

    let raw_embedder = crate::providers::embedder(&settings)?;
    let dimension = raw_embedder.dimension();
    let vectors: Arc<dyn VectorIndex> = Arc::new(S3VectorIndex::new(
        aws_sdk_s3vectors::Client::new(sdk),
        env.require("VECTOR_BUCKET")?,
        env.require("VECTOR_INDEX")?,
        dimension,
    ));
    let (model, embedder) = crate::providers::assemble(&settings, raw_embedder, cache.clone())?;

    // Chat only links to documents: its client holds no token and is never used to call.
    let paperless: Option<Arc<dyn Paperless>> = match &settings.paperless_url {
        Some(url) => {
            let token = settings
                .paperless_token
                .clone()
                .unwrap_or_else(|| Secret::new(""));
            Some(Arc::new(
                PaperlessClient::new(url, token, std::time::Duration::from_secs(20))
                    .map_err(|e| ConfigError {
                        var: "PAPERLESS_URL",
                        message: e.to_string(),
                    })?
                    .with_owner(settings.paperless_owner)
                    .with_public_url(settings.paperless_public_url.clone())
                    .with_needs(crate::paperless::TaxonomyNeeds::of(&settings.policy)),
            ))
        }
        None => None,
    };
    Ok(Services::new(
        settings,
        blobs,
        state,
        cache,
        queues,
        vectors,
        model,
        embedder,
        paperless,
        Taxonomy::default(),
    ))
}

/// S3 with path-style addressing when the endpoint is overridden (an emulator or a VPC
/// endpoint has no per-bucket host names).
fn s3_client(sdk: &SdkConfig) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::config::Builder::from(sdk)
        .force_path_style(sdk.endpoint_url().is_some())
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// A cold start: JSON logs (and spans, with an OTLP endpoint), the EMF recorder, the AWS configuration from the standard chain
/// (region, credentials, `AWS_ENDPOINT_URL`), then `load`. Errors here fail the init phase
/// with one message naming what is wrong.
pub async fn start(function: Function) -> Result<Services, lambda_runtime::Error> {
    crate::telemetry::init_lambda_subscriber(function.name());
    emf::install(function);
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    load(function, &sdk, &mut Env::from_process())
        .await
        .inspect_err(
            |e| tracing::error!(error = %e, function = function.name(), "cold start failed"),
        )
        .map_err(Into::into)
}

/// The function's secrets from SSM, added to `env`, then its services.
pub async fn load(
    function: Function,
    sdk: &SdkConfig,
    env: &mut Env,
) -> Result<Services, StartError> {
    let names = env.secret_names(function);
    if !names.is_empty() {
        let ssm = aws_sdk_ssm::Client::new(sdk);
        env.add_secrets(secrets::fetch(&ssm, &env.secrets_prefix(), &names).await?);
    }
    services(function, sdk, env)
}

/// The schedule door: one sync run per event; a failure fails the invocation (EventBridge
/// retries it) after its metrics are written.
pub async fn sync_on_schedule(
    svc: &Services,
    _event: lambda_runtime::LambdaEvent<
        aws_lambda_events::event::cloudwatch_events::CloudWatchEvent,
    >,
) -> Result<serde_json::Value, lambda_runtime::Error> {
    let outcome = crate::pipeline::sync::run(svc).await;
    emf::flush();
    let report = outcome?;
    Ok(serde_json::to_value(&report)?)
}

/// The HTTP API as the ingest door serves it: the same router as `pai serve`, with metrics
/// written after every response.
#[cfg(feature = "lambda-http")]
pub fn http_router(svc: Services) -> axum::Router {
    let state = crate::http::ApiState::new(svc, String::new(), None);
    with_metrics_flush(crate::http::router(state))
}

/// What the chat door's public function URL serves: `POST /chat` and `/health` only.
#[cfg(feature = "lambda-http")]
pub fn chat_router(svc: Services) -> axum::Router {
    let state = crate::http::ApiState::new(svc, String::new(), None);
    with_metrics_flush(crate::http::chat_router(state))
}

#[cfg(feature = "lambda-http")]
fn with_metrics_flush(router: axum::Router) -> axum::Router {
    router.layer(axum::middleware::map_response(
        |response: axum::response::Response| async move {
            emf::flush();
            response
        },
    ))
}
