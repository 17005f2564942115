//! Each Lambda function's services, wired at compile time: one function per Lambda that builds
//! exactly the adapters it binds. A wiring is compiled only when its function crate enables the
//! backends it names (`aws-s3`, `aws-sqs`, `aws-s3vectors`, the stage), so a function cannot
//! build an adapter it has no feature for, and a per-package build links no SDK crate it does
//! not use. What a function does not bind is `Unconfigured` in `Services` (failing loudly,
//! naming the variable): those slots hold no client and link no SDK code.
//!
//! | function | state | cache | blobs | queues (send) | vectors | Paperless | stage |
//! |---|---|---|---|---|---|---|---|
//! | ingest | ✓ | – | S3 | chunk; dead letters | ✓ | ✓ | – |
//! | chunk | ✓ | – | S3 | chunk, embed, tag | ✓ | ✓ | chunk |
//! | embed | ✓ | ✓ | S3 | embed | ✓ | – | embed |
//! | tag | ✓ | ✓ | S3 | tag | ✓ | ✓ | tag |
//! | chat | ✓ | ✓ | – | – | ✓ | links only | – |
//! | sync | ✓ | – | – | chunk; dead letters | ✓ | ✓ | – |

// A function's build compiles only its own wiring, which uses a subset of the helpers.
#![cfg_attr(not(every_wiring), allow(dead_code))]

use std::sync::Arc;

use aws_config::SdkConfig;

use super::grants::{ScopedCache, ScopedState};
use super::{Env, Function, StartError, Unconfigured};
use crate::adapters::aws::{DynamoCache, DynamoState};
use crate::config::{ConfigError, Secret, Settings};
use crate::domain::Taxonomy;
use crate::paperless::PaperlessClient;
use crate::pipeline::{Queues, Services};
use crate::ports::{BlobStore, Cache, Paperless, StateStore, VectorIndex};

/// A function's wiring: which function it is (its name, secrets and required settings) and
/// how its services are built from the SDK configuration and its environment.
#[derive(Clone, Copy)]
pub struct Wiring {
    pub function: Function,
    pub build: fn(&SdkConfig, &Env) -> Result<Services, StartError>,
}

#[cfg(wire_ingest)]
pub const INGEST: Wiring = Wiring {
    function: Function::Ingest,
    build: ingest,
};
#[cfg(wire_chunk)]
pub const CHUNK: Wiring = Wiring {
    function: Function::Chunk,
    build: chunk,
};
#[cfg(wire_embed)]
pub const EMBED: Wiring = Wiring {
    function: Function::Embed,
    build: embed,
};
#[cfg(wire_tag)]
pub const TAG: Wiring = Wiring {
    function: Function::Tag,
    build: tag,
};
#[cfg(wire_chat)]
pub const CHAT: Wiring = Wiring {
    function: Function::Chat,
    build: chat,
};
#[cfg(wire_sync)]
pub const SYNC: Wiring = Wiring {
    function: Function::Sync,
    build: sync,
};

/// Every function's wiring, by name: only in a build with all their features (the test suite);
/// a function's own binary names its wiring constant instead.
#[cfg(every_wiring)]
pub fn of(function: Function) -> Wiring {
    match function {
        Function::Ingest => INGEST,
        Function::Chunk => CHUNK,
        Function::Embed => EMBED,
        Function::Tag => TAG,
        Function::Chat => CHAT,
        Function::Sync => SYNC,
    }
}

/// The HTTP API: uploads to S3, new jobs to the chunk queue, dead letters of all three queues
/// for its retry routes.
#[cfg(wire_ingest)]
fn ingest(sdk: &SdkConfig, env: &Env) -> Result<Services, StartError> {
    let f = Function::Ingest;
    let mut settings = settings(f, env)?;
    // The web UI the ingest function serves sends chat to the chat function's URL.
    settings.chat_url = env.get("CHAT_URL").filter(|u| !u.trim().is_empty());
    let settings = Arc::new(settings);
    let state = state(f, sdk, env)?;
    let cache = unbound_cache();
    let blobs = s3::blobs(sdk, env)?;
    let queues = sqs::queues(sdk, env, sqs::Bind::ALL, true)?;
    finish(sdk, env, settings, state, cache, blobs, queues, true)
}

/// Reads or fetches a document and chunks it: sends to all three queues (its own for back-off).
#[cfg(wire_chunk)]
fn chunk(sdk: &SdkConfig, env: &Env) -> Result<Services, StartError> {
    let f = Function::Chunk;
    let settings = Arc::new(settings(f, env)?);
    let state = state(f, sdk, env)?;
    let cache = unbound_cache();
    let blobs = s3::blobs(sdk, env)?;
    let queues = sqs::queues(sdk, env, sqs::Bind::ALL, false)?;
    finish(sdk, env, settings, state, cache, blobs, queues, true)
}

/// Embeds chunks: no Paperless, only its own queue.
#[cfg(wire_embed)]
fn embed(sdk: &SdkConfig, env: &Env) -> Result<Services, StartError> {
    let f = Function::Embed;
    let settings = Arc::new(settings(f, env)?);
    let state = state(f, sdk, env)?;
    let cache = cache(f, sdk, env)?;
    let blobs = s3::blobs(sdk, env)?;
    let queues = sqs::queues(sdk, env, sqs::Bind::EMBED, false)?;
    finish(sdk, env, settings, state, cache, blobs, queues, false)
}

/// Suggests and writes back metadata: only its own queue.
#[cfg(wire_tag)]
fn tag(sdk: &SdkConfig, env: &Env) -> Result<Services, StartError> {
    let f = Function::Tag;
    let settings = Arc::new(settings(f, env)?);
    let state = state(f, sdk, env)?;
    let cache = cache(f, sdk, env)?;
    let blobs = s3::blobs(sdk, env)?;
    let queues = sqs::queues(sdk, env, sqs::Bind::TAG, false)?;
    finish(sdk, env, settings, state, cache, blobs, queues, true)
}

/// Answers questions: no queue, no bucket; its Paperless client only links to documents.
#[cfg(wire_chat)]
fn chat(sdk: &SdkConfig, env: &Env) -> Result<Services, StartError> {
    let f = Function::Chat;
    let settings = Arc::new(settings(f, env)?);
    let state = state(f, sdk, env)?;
    let cache = cache(f, sdk, env)?;
    let blobs = unbound_blobs();
    let queues = unbound_queues();
    finish(sdk, env, settings, state, cache, blobs, queues, true)
}

/// Queues what changed in Paperless: no bucket; reads the dead letters.
#[cfg(wire_sync)]
fn sync(sdk: &SdkConfig, env: &Env) -> Result<Services, StartError> {
    let f = Function::Sync;
    let settings = Arc::new(settings(f, env)?);
    let state = state(f, sdk, env)?;
    let cache = unbound_cache();
    let blobs = unbound_blobs();
    let queues = sqs::queues(sdk, env, sqs::Bind::ALL, true)?;
    finish(sdk, env, settings, state, cache, blobs, queues, true)
}

/// The settings with what this function requires, and which came from SSM.
fn settings(function: Function, env: &Env) -> Result<Settings, StartError> {
    let lookup = |k: &str| env.get(k);
    let mut settings = Settings::from_lookup_requiring(&lookup, function.required())?;
    settings.mark_sources(env.secrets_from_ssm(), crate::config::Source::Ssm);
    Ok(settings)
}

/// The state table, only as far as the function's IAM policy lets it (see `grants`).
fn state(
    function: Function,
    sdk: &SdkConfig,
    env: &Env,
) -> Result<Arc<dyn StateStore>, StartError> {
    Ok(Arc::new(ScopedState::new(
        Arc::new(DynamoState::new(
            aws_sdk_dynamodb::Client::new(sdk),
            env.require("STATE_TABLE")?,
        )),
        function,
    )))
}

/// The model cache table (embed, tag, chat), scoped like the state table.
fn cache(function: Function, sdk: &SdkConfig, env: &Env) -> Result<Arc<dyn Cache>, StartError> {
    Ok(Arc::new(ScopedCache::new(
        Arc::new(DynamoCache::new(
            aws_sdk_dynamodb::Client::new(sdk),
            env.require("CACHE_TABLE")?,
        )),
        function,
    )))
}

fn unbound_cache() -> Arc<dyn Cache> {
    Arc::new(Unconfigured::new("CACHE_TABLE"))
}

fn unbound_blobs() -> Arc<dyn BlobStore> {
    Arc::new(Unconfigured::new("DOCUMENT_BUCKET"))
}

fn unbound_queues() -> Queues {
    Queues {
        chunk: Arc::new(Unconfigured::new("CHUNK_QUEUE_URL")),
        embed: Arc::new(Unconfigured::new("EMBED_QUEUE_URL")),
        tag: Arc::new(Unconfigured::new("TAG_QUEUE_URL")),
    }
}

#[cfg(feature = "aws-s3")]
mod s3 {
    use super::*;
    use crate::adapters::aws::S3Blobs;

    /// The document bucket.
    pub fn blobs(sdk: &SdkConfig, env: &Env) -> Result<Arc<dyn BlobStore>, StartError> {
        Ok(Arc::new(S3Blobs::new(
            client(sdk),
            env.require("DOCUMENT_BUCKET")?,
        )))
    }

    /// S3 with path-style addressing when the endpoint is overridden (an emulator or a VPC
    /// endpoint has no per-bucket host names).
    fn client(sdk: &SdkConfig) -> aws_sdk_s3::Client {
        let config = aws_sdk_s3::config::Builder::from(sdk)
            .force_path_style(sdk.endpoint_url().is_some())
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }
}

#[cfg(feature = "aws-sqs")]
mod sqs {
    use super::*;
    use crate::adapters::aws::SqsQueue;
    use crate::ports::WorkQueue;

    /// Which of the three queues a function binds. A consumer binds its own queue too: a
    /// transient failure backs off on it (ChangeMessageVisibility) and a breaker refusal is
    /// deferred as a delayed copy. Ingest and sync bind the embed and tag queues for their
    /// dead letters only; the template lets them send to the chunk queue alone.
    #[derive(Clone, Copy)]
    pub struct Bind {
        chunk: bool,
        embed: bool,
        tag: bool,
    }

    impl Bind {
        pub const ALL: Bind = Bind {
            chunk: true,
            embed: true,
            tag: true,
        };
        pub const EMBED: Bind = Bind {
            chunk: false,
            embed: true,
            tag: false,
        };
        pub const TAG: Bind = Bind {
            chunk: false,
            embed: false,
            tag: true,
        };
    }

    /// The queues `bind` names, with their dead-letter queues when `dead_letters` (ingest's
    /// retry routes, sync turning dead letters into failed jobs).
    pub fn queues(
        sdk: &SdkConfig,
        env: &Env,
        bind: Bind,
        dead_letters: bool,
    ) -> Result<Queues, StartError> {
        let sqs = aws_sdk_sqs::Client::new(sdk);
        let queue = |bound: bool,
                     var: &'static str,
                     dead_var: &'static str|
         -> Result<Arc<dyn WorkQueue>, StartError> {
            Ok(if bound {
                let dead = match dead_letters {
                    true => Some(env.require(dead_var)?),
                    false => None,
                };
                Arc::new(SqsQueue::new(sqs.clone(), env.require(var)?, dead))
            } else {
                Arc::new(Unconfigured::new(var))
            })
        };
        Ok(Queues {
            chunk: queue(bind.chunk, "CHUNK_QUEUE_URL", "CHUNK_DLQ_URL")?,
            embed: queue(bind.embed, "EMBED_QUEUE_URL", "EMBED_DLQ_URL")?,
            tag: queue(bind.tag, "TAG_QUEUE_URL", "TAG_DLQ_URL")?,
        })
    }
}

/// The vector index, the models (as `pai` assembles them) and, when `with_paperless`, the
/// Paperless client; then the services.
#[cfg(feature = "aws-s3vectors")]
#[allow(clippy::too_many_arguments)]
fn finish(
    sdk: &SdkConfig,
    env: &Env,
    settings: Arc<Settings>,
    state: Arc<dyn StateStore>,
    cache: Arc<dyn Cache>,
    blobs: Arc<dyn BlobStore>,
    queues: Queues,
    with_paperless: bool,
) -> Result<Services, StartError> {
    // Bedrock from the same configuration as the other clients: Lambda's variables.
    let aws = crate::providers::AwsConfig::Given(Box::new(sdk.clone()));
    let raw_embedder = crate::providers::embedder(&settings, &aws)?;
    let dimension = raw_embedder.dimension();
    let vectors: Arc<dyn VectorIndex> = Arc::new(crate::adapters::aws::S3VectorIndex::new(
        aws_sdk_s3vectors::Client::new(sdk),
        env.require("VECTOR_BUCKET")?,
        env.require("VECTOR_INDEX")?,
        dimension,
    ));
    let (model, embedder) =
        crate::providers::assemble(&settings, raw_embedder, cache.clone(), &aws)?;
    let paperless = match with_paperless {
        true => paperless(&settings)?,
        false => None,
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

/// The Paperless client, when `PAPERLESS_URL` is set. Chat's holds no token and is never used
/// to call.
fn paperless(settings: &Settings) -> Result<Option<Arc<dyn Paperless>>, StartError> {
    let Some(url) = &settings.paperless_url else {
        return Ok(None);
    };
    let token = settings
        .paperless_token
        .clone()
        .unwrap_or_else(|| Secret::new(""));
    let client = PaperlessClient::new(url, token, std::time::Duration::from_secs(20))
        .map_err(|e| ConfigError {
            var: "PAPERLESS_URL",
            message: e.to_string(),
        })?
        .with_owner(settings.paperless_owner)
        .with_public_url(settings.paperless_public_url.clone())
        .with_needs(crate::paperless::TaxonomyNeeds::of(&settings.policy));
    Ok(Some(Arc::new(client)))
}
