//! Each Lambda function's services, wired at compile time: one function per Lambda that builds
//! exactly the adapters it binds. A wiring is compiled only when its function crate enables the
//! backends it names (`aws-s3`, `aws-sqs`, `aws-s3vectors`, the stage), so a function cannot
//! build an adapter it has no feature for, and a per-package build links no SDK crate it does
//! not use. What a function does not bind is no slot at all: its services' type says `Unbound`
//! there (`pipeline::Services`), so code that would use it does not compile for the function.
//!
//! | function | state | cache | blobs | queues (send) | vectors | Paperless | stage |
//! |---|---|---|---|---|---|---|---|
//! | ingest | ✓ | – | S3 | chunk; dead letters | ✓ | read, write (review) | – |
//! | chunk | ✓ | – | S3 | chunk, embed, tag | ✓ | read, write (failed tag) | chunk (no model) |
//! | embed | ✓ | ✓ | S3 | – (consumes embed) | ✓ | – | embed |
//! | tag | ✓ | ✓ | S3 | – (consumes tag) | ✓ | read, write | tag |
//! | chat | ✓ | ✓ | – | – | ✓ | read as the user, links | – |
//! | sync | ✓ | – | – | chunk; dead letters | ✓ | read, write (failed tag) | – (no model) |

// A function's build compiles only its own wiring, which uses a subset of the helpers.
#![cfg_attr(not(every_wiring), allow(dead_code))]

use std::sync::Arc;

use aws_config::SdkConfig;

use super::grants::{ScopedCache, ScopedState};
use super::{Env, Function, StartError};
use crate::adapters::aws::{DynamoCache, DynamoState};
use crate::config::{ConfigError, Secret, Settings};
use crate::domain::Taxonomy;
use crate::paperless::PaperlessClient;
use crate::pipeline::{Blobs, Core, Models, OwnQueue, Queues, Services, Unbound, Writer};
use crate::ports::{Cache, PaperlessReader, PaperlessWriter, StateStore, VectorIndex};

/// A function's wiring: which function it is (its name, secrets and required settings) and
/// how its services (`S`: their type names the slots it binds) are built from the SDK
/// configuration and its environment.
pub struct Wiring<S> {
    pub function: Function,
    pub build: fn(&SdkConfig, &Env) -> Result<S, StartError>,
}

impl<S> Clone for Wiring<S> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<S> Copy for Wiring<S> {}

/// The services of the chunk function: the bucket and the three queues; no model (the
/// models' names, which key the vectors, come from the settings).
pub type ChunkServices = Services<Blobs, Queues, Unbound>;
/// The services of the embed function: the bucket, its own queue, the models; it writes
/// nothing to Paperless.
pub type EmbedServices = Services<Blobs, OwnQueue, Models, Unbound>;
/// The services of the tag function: the bucket, its own queue, the models, the Paperless
/// writer.
pub type TagServices = Services<Blobs, OwnQueue>;
/// The services of the chat function: no bucket, no queue, no Paperless writer.
pub type ChatServices = Services<Unbound, Unbound, Models, Unbound>;
/// The services of the sync function: the queues (chunk to send to, dead letters); no bucket,
/// no model.
pub type SyncServices = Services<Unbound, Queues, Unbound>;

#[cfg(wire_ingest)]
pub const INGEST: Wiring<Services> = Wiring {
    function: Function::Ingest,
    build: ingest,
};
#[cfg(wire_chunk)]
pub const CHUNK: Wiring<ChunkServices> = Wiring {
    function: Function::Chunk,
    build: chunk,
};
#[cfg(wire_embed)]
pub const EMBED: Wiring<EmbedServices> = Wiring {
    function: Function::Embed,
    build: embed,
};
#[cfg(wire_tag)]
pub const TAG: Wiring<TagServices> = Wiring {
    function: Function::Tag,
    build: tag,
};
#[cfg(wire_chat)]
pub const CHAT: Wiring<ChatServices> = Wiring {
    function: Function::Chat,
    build: chat,
};
#[cfg(wire_sync)]
pub const SYNC: Wiring<SyncServices> = Wiring {
    function: Function::Sync,
    build: sync,
};

/// A function's services, whichever it is: what the test suite (a build with every function's
/// features) loads by name; a function's own binary names its wiring constant instead.
#[cfg(every_wiring)]
pub enum Wired {
    Ingest(Services),
    Chunk(ChunkServices),
    Embed(EmbedServices),
    Tag(TagServices),
    Chat(ChatServices),
    Sync(SyncServices),
}

#[cfg(every_wiring)]
impl Wired {
    /// An SQS batch through the door of a queue-driven function (chunk, embed, tag).
    pub async fn sqs_batch(
        &self,
        event: lambda_runtime::LambdaEvent<aws_lambda_events::event::sqs::SqsEvent>,
    ) -> Result<aws_lambda_events::event::sqs::SqsBatchResponse, lambda_runtime::Error> {
        match self {
            Wired::Chunk(s) => super::sqs::chunk_batch(s, event).await,
            Wired::Embed(s) => super::sqs::embed_batch(s, event).await,
            Wired::Tag(s) => super::sqs::tag_batch(s, event).await,
            _ => Err("this function has no SQS door".into()),
        }
    }

    /// The HTTP door of the ingest or chat function.
    pub fn router(&self) -> axum::Router {
        match self {
            Wired::Ingest(s) => super::http_router(s.clone()),
            Wired::Chat(s) => super::chat_router(s.clone()),
            _ => panic!("this function has no HTTP door"),
        }
    }

    /// The sync function's services (its schedule door is `lambda::sync_on_schedule`).
    pub fn sync(&self) -> &SyncServices {
        match self {
            Wired::Sync(s) => s,
            _ => panic!("not the sync function"),
        }
    }

    /// What every function has.
    pub fn core(&self) -> &Core {
        match self {
            Wired::Ingest(s) => s,
            Wired::Chunk(s) => s,
            Wired::Embed(s) => s,
            Wired::Tag(s) => s,
            Wired::Chat(s) => s,
            Wired::Sync(s) => s,
        }
    }
}

/// Builds `function`'s services through its wiring, after `prepare` (its secrets) ran.
#[cfg(every_wiring)]
pub(super) fn build(function: Function, sdk: &SdkConfig, env: &Env) -> Result<Wired, StartError> {
    Ok(match function {
        Function::Ingest => Wired::Ingest((INGEST.build)(sdk, env)?),
        Function::Chunk => Wired::Chunk((CHUNK.build)(sdk, env)?),
        Function::Embed => Wired::Embed((EMBED.build)(sdk, env)?),
        Function::Tag => Wired::Tag((TAG.build)(sdk, env)?),
        Function::Chat => Wired::Chat((CHAT.build)(sdk, env)?),
        Function::Sync => Wired::Sync((SYNC.build)(sdk, env)?),
    })
}

/// The HTTP API: uploads to S3, new jobs to the chunk queue, dead letters of all three queues
/// for its retry routes.
#[cfg(wire_ingest)]
fn ingest(sdk: &SdkConfig, env: &Env) -> Result<Services, StartError> {
    let f = Function::Ingest;
    let mut settings = settings(f, env)?;
    // The web UI the ingest function serves sends chat to the chat function's URL.
    settings.chat_url = env.get("CHAT_URL").filter(|u| !u.trim().is_empty());
    let (core, client) = core(sdk, env, settings, state(f, sdk, env)?, true)?;
    let models = models(sdk, &core, None)?;
    Ok(core.with(
        s3::blobs(sdk, env)?,
        sqs::queues(sdk, env, true)?,
        models,
        writer(client),
    ))
}

/// Reads or fetches a document and chunks it: sends to all three queues (its own for back-off).
#[cfg(wire_chunk)]
fn chunk(sdk: &SdkConfig, env: &Env) -> Result<ChunkServices, StartError> {
    let f = Function::Chunk;
    let (core, client) = core(sdk, env, settings(f, env)?, state(f, sdk, env)?, true)?;
    Ok(core.with(
        s3::blobs(sdk, env)?,
        sqs::queues(sdk, env, false)?,
        Unbound,
        writer(client),
    ))
}

/// Embeds chunks: no Paperless, only its own queue.
#[cfg(wire_embed)]
fn embed(sdk: &SdkConfig, env: &Env) -> Result<EmbedServices, StartError> {
    let f = Function::Embed;
    let cache = cache(f, sdk, env)?;
    let (core, _) = core(sdk, env, settings(f, env)?, state(f, sdk, env)?, false)?;
    let models = models(sdk, &core, Some(cache))?;
    Ok(core.with(
        s3::blobs(sdk, env)?,
        sqs::own(sdk, env, "EMBED_QUEUE_URL")?,
        models,
        Unbound,
    ))
}

/// Suggests and writes back metadata: only its own queue.
#[cfg(wire_tag)]
fn tag(sdk: &SdkConfig, env: &Env) -> Result<TagServices, StartError> {
    let f = Function::Tag;
    let cache = cache(f, sdk, env)?;
    let (core, client) = core(sdk, env, settings(f, env)?, state(f, sdk, env)?, true)?;
    let models = models(sdk, &core, Some(cache))?;
    Ok(core.with(
        s3::blobs(sdk, env)?,
        sqs::own(sdk, env, "TAG_QUEUE_URL")?,
        models,
        writer(client),
    ))
}

/// Answers questions: no queue, no bucket, no Paperless writer; its Paperless client only
/// links to documents (and reads as a user who asks with their own token).
#[cfg(wire_chat)]
fn chat(sdk: &SdkConfig, env: &Env) -> Result<ChatServices, StartError> {
    let f = Function::Chat;
    let cache = cache(f, sdk, env)?;
    // Its client only reads: chat makes no writer of it.
    let (core, _) = core(sdk, env, settings(f, env)?, state(f, sdk, env)?, true)?;
    let models = models(sdk, &core, Some(cache))?;
    Ok(core.with(Unbound, Unbound, models, Unbound))
}

/// Queues what changed in Paperless: no bucket; reads the dead letters.
#[cfg(wire_sync)]
fn sync(sdk: &SdkConfig, env: &Env) -> Result<SyncServices, StartError> {
    let f = Function::Sync;
    let (core, client) = core(sdk, env, settings(f, env)?, state(f, sdk, env)?, true)?;
    Ok(core.with(
        Unbound,
        sqs::queues(sdk, env, true)?,
        Unbound,
        writer(client),
    ))
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

#[cfg(feature = "aws-s3")]
mod s3 {
    use super::*;
    use crate::adapters::aws::S3Blobs;

    /// The document bucket.
    pub fn blobs(sdk: &SdkConfig, env: &Env) -> Result<Blobs, StartError> {
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

    /// The three queues (ingest and sync send to chunk's; chunk to all three, its own for
    /// back-off), with their dead-letter queues when `dead_letters` (ingest's retry routes,
    /// sync turning dead letters into failed jobs). The template lets ingest and sync send to
    /// the chunk queue alone.
    pub fn queues(sdk: &SdkConfig, env: &Env, dead_letters: bool) -> Result<Queues, StartError> {
        let sqs = aws_sdk_sqs::Client::new(sdk);
        let queue =
            |var: &'static str, dead_var: &'static str| -> Result<Arc<dyn WorkQueue>, StartError> {
                let dead = match dead_letters {
                    true => Some(env.require(dead_var)?),
                    false => None,
                };
                Ok(Arc::new(SqsQueue::new(
                    sqs.clone(),
                    env.require(var)?,
                    dead,
                )))
            };
        Ok(Queues {
            chunk: queue("CHUNK_QUEUE_URL", "CHUNK_DLQ_URL")?,
            embed: queue("EMBED_QUEUE_URL", "EMBED_DLQ_URL")?,
            tag: queue("TAG_QUEUE_URL", "TAG_DLQ_URL")?,
        })
    }

    /// The queue the embed or tag function consumes (`var` names it): a transient failure
    /// backs off on it (ChangeMessageVisibility) and a breaker refusal is deferred as a
    /// delayed copy.
    pub fn own(sdk: &SdkConfig, env: &Env, var: &'static str) -> Result<OwnQueue, StartError> {
        let queue = SqsQueue::new(aws_sdk_sqs::Client::new(sdk), env.require(var)?, None);
        Ok(OwnQueue(Arc::new(queue)))
    }
}

/// What every function has: its settings and state, the vector index (its dimension from the
/// embedding model's name, `names`) and, when `with_paperless`, reading Paperless; the client
/// comes back too, for the functions that write with it (`writer`).
#[cfg(feature = "aws-s3vectors")]
fn core(
    sdk: &SdkConfig,
    env: &Env,
    settings: Settings,
    state: Arc<dyn StateStore>,
    with_paperless: bool,
) -> Result<(Core, Option<Arc<PaperlessClient>>), StartError> {
    let names = crate::providers::names::of(&settings)?;
    let vectors: Arc<dyn VectorIndex> = Arc::new(crate::adapters::aws::S3VectorIndex::new(
        aws_sdk_s3vectors::Client::new(sdk),
        env.require("VECTOR_BUCKET")?,
        env.require("VECTOR_INDEX")?,
        names.dimension,
    ));
    let client = match with_paperless {
        true => paperless(&settings)?,
        false => None,
    };
    let core = Core::new(
        Arc::new(settings),
        state,
        vectors,
        names,
        client.clone().map(|c| c as Arc<dyn PaperlessReader>),
        Taxonomy::default(),
    );
    Ok((core, client))
}

/// The models, as `pai` assembles them, in front of `cache` where the function has the cache
/// table: only the functions that call a model (ingest's status page, embed, tag, chat) build
/// them, so only they link the providers (and Bedrock).
fn models(
    sdk: &SdkConfig,
    core: &Core,
    cache: Option<Arc<dyn Cache>>,
) -> Result<Models, StartError> {
    // Bedrock from the same configuration as the other clients: Lambda's variables.
    let aws = crate::providers::AwsConfig::Given(Box::new(sdk.clone()));
    let settings = &core.settings;
    let raw_embedder = crate::providers::embedder(settings, &aws)?;
    let cache = cache.unwrap_or_else(|| Arc::new(crate::models::NoCache));
    let (model, embedder) = crate::providers::assemble(settings, raw_embedder, cache, &aws)?;
    let models = Models { model, embedder };
    core.names
        .check(models.model.as_ref(), models.embedder.as_ref())?;
    Ok(models)
}

/// Writing to Paperless through `client`: only the functions that write turn their client
/// into a writer, so only they link the writing half.
fn writer(client: Option<Arc<PaperlessClient>>) -> Writer {
    client.map(|c| c as Arc<dyn PaperlessWriter>)
}

/// The Paperless client, when `PAPERLESS_URL` is set. Chat's holds no token of its own: it
/// reads as the asking user, or only links to documents.
fn paperless(settings: &Settings) -> Result<Option<Arc<PaperlessClient>>, StartError> {
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
