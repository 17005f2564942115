//! Assembly of the embedded deployment: every port bound to its local adapter in one data
//! folder, providers chosen by configuration, and the queue consumers. `pai` and the end-to-end
//! tests build the application through here, so they run exactly the same thing.

use std::path::Path;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::adapters::local::{LocalStores, SqliteQueue, SqliteVectorIndex};
use crate::config::{ConfigError, Settings};
use crate::domain::{Stage, Taxonomy};
use crate::paperless::PaperlessClient;
use crate::pipeline::{Core, Models, Queues, Services};
use crate::ports::{Cache, PaperlessReader, PaperlessWriter};

/// The embedded application: services plus the local queues its workers consume.
pub struct LocalApp {
    pub svc: Services,
    /// The model cache the models were assembled with (`DATA_DIR`'s SQLite).
    pub cache: Arc<dyn Cache>,
    pub chunk: Arc<SqliteQueue>,
    pub embed: Arc<SqliteQueue>,
    pub tag: Arc<SqliteQueue>,
}

/// Why the application could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("data folder: {0}")]
    Store(String),
}

fn config(var: &'static str, message: impl Into<String>) -> BuildError {
    BuildError::Config(ConfigError {
        var,
        message: message.into(),
    })
}

/// Reads `DATA_DIR/taxonomy.json` (the taxonomy used without Paperless), if present.
pub fn local_taxonomy(data_dir: &Path) -> Result<Taxonomy, BuildError> {
    let path = data_dir.join("taxonomy.json");
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            config(
                "DATA_DIR",
                format!("{} is not a valid taxonomy: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Taxonomy::default()),
        Err(e) => Err(BuildError::Store(format!("{}: {e}", path.display()))),
    }
}

impl LocalApp {
    pub fn build(settings: Settings) -> Result<LocalApp, BuildError> {
        Self::build_with_clock(settings, None)
    }

    /// Like `build`, with the queues on `clock` (milliseconds) instead of the wall clock, so
    /// tests can let hours of back-off pass at once.
    pub fn build_with_clock(
        settings: Settings,
        clock: Option<crate::adapters::local::Clock>,
    ) -> Result<LocalApp, BuildError> {
        let settings = Arc::new(settings);
        let store = |e: crate::ports::StoreError| BuildError::Store(e.to_string());
        let dir = settings.data_dir.clone();
        std::fs::create_dir_all(&dir)
            .map_err(|e| BuildError::Store(format!("creating {}: {e}", dir.display())))?;
        let stores = LocalStores::open(&dir).map_err(store)?;
        let queue = |name: &str| {
            match &clock {
                Some(c) => {
                    SqliteQueue::with_clock(&stores.db, name, settings.max_receives, c.clone())
                }
                None => SqliteQueue::new(&stores.db, name, settings.max_receives),
            }
            .map(Arc::new)
            .map_err(store)
        };
        let (chunk, embed, tag) = (queue("chunk")?, queue("embed")?, queue("tag")?);
        let cache: Arc<dyn Cache> = Arc::new(stores.cache);
        // `pai` may run with any of the SDK's credential sources (profile, SSO, a role).
        let aws = crate::providers::AwsConfig::DefaultChain;
        let raw_embedder = crate::providers::embedder(&settings, &aws)?;
        let index_name: String = raw_embedder
            .space()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        let vectors = SqliteVectorIndex::new(&stores.db, &index_name, raw_embedder.dimension())
            .map_err(store)?;
        let (model, embedder) =
            crate::providers::assemble(&settings, raw_embedder, cache.clone(), &aws)?;
        let paperless: Option<Arc<PaperlessClient>> =
            match (&settings.paperless_url, &settings.paperless_token) {
                (Some(url), Some(token)) => Some(Arc::new(
                    PaperlessClient::new(url, token.clone(), std::time::Duration::from_secs(30))
                        .map_err(|e| config("PAPERLESS_URL", e.to_string()))?
                        .with_owner(settings.paperless_owner)
                        .with_public_url(settings.paperless_public_url.clone())
                        .with_needs(crate::paperless::TaxonomyNeeds::of(&settings.policy)),
                )),
                _ => None,
            };
        let taxonomy = local_taxonomy(&dir)?;
        let queues = Queues {
            chunk: chunk.clone(),
            embed: embed.clone(),
            tag: tag.clone(),
        };
        let names = crate::providers::names::of(&settings)?;
        names.check(model.as_ref(), embedder.as_ref())?;
        let svc = Core::new(
            settings,
            Arc::new(stores.state),
            Arc::new(vectors),
            names,
            paperless.clone().map(|p| p as Arc<dyn PaperlessReader>),
            taxonomy,
        )
        .with(
            Arc::new(stores.blobs) as Arc<dyn crate::ports::BlobStore>,
            queues,
            Models { model, embedder },
            paperless.map(|p| p as Arc<dyn PaperlessWriter>),
        );
        Ok(LocalApp {
            svc,
            cache,
            chunk,
            embed,
            tag,
        })
    }

    /// Runs sync at once (what changed while `pai` was down, and what failed before) and then
    /// every `SYNC_INTERVAL_MINUTES` until `stop`, when Paperless is configured and the interval
    /// is not 0.
    pub fn start_sync_timer(&self, mut stop: watch::Receiver<bool>) -> Option<JoinHandle<()>> {
        let minutes = self.svc.settings.sync_interval_minutes;
        if minutes == 0 || self.svc.paperless.is_none() {
            return None;
        }
        let svc = self.svc.clone();
        Some(tokio::spawn(async move {
            // The first tick is immediate: the start-up run.
            let mut every = tokio::time::interval(std::time::Duration::from_secs(minutes * 60));
            loop {
                tokio::select! {
                    _ = every.tick() => {
                        if let Err(e) = crate::pipeline::sync::run(&svc).await {
                            tracing::warn!(error = %e, "sync failed; next run at the next interval");
                        }
                    }
                    _ = stop.changed() => break,
                }
            }
        }))
    }

    /// Sets the queue gauges (`pai_queue_depth`, `pai_queue_oldest_message_age_seconds`,
    /// `pai_queue_dead_letters`) now and every few seconds until `stop`.
    pub fn start_queue_gauges(&self, mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
        let queues = [self.chunk.clone(), self.embed.clone(), self.tag.clone()];
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = every.tick() => record_queue_gauges(&queues).await,
                    _ = stop.changed() => break,
                }
            }
        })
    }

    /// Starts the chunk, embed and tag consumers; they stop when `stop` turns true.
    pub fn start_workers(&self, stop: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
        let s = &self.svc.settings;
        [
            (self.chunk.clone(), Stage::Chunk),
            (self.embed.clone(), Stage::Embed),
            (self.tag.clone(), Stage::Tag),
        ]
        .into_iter()
        .map(|(q, stage)| {
            // Model-bound stages take as many messages as the model's ceiling, so the adaptive
            // limit, not the worker count, decides how many calls are in flight.
            let provider = match stage {
                Stage::Chunk => crate::config::Provider::Lexical,
                Stage::Embed => s.embedding.provider,
                Stage::Tag => s.llm.provider,
            };
            let concurrency = match provider {
                crate::config::Provider::Lexical => s.workers,
                _ => s.workers.max(s.model_limits.max_concurrency),
            };
            tokio::spawn(crate::worker::consume(
                self.svc.clone(),
                q,
                stage,
                concurrency,
                s.max_receives,
                stop.clone(),
            ))
        })
        .collect()
    }
}

async fn record_queue_gauges(queues: &[Arc<SqliteQueue>]) {
    use crate::metrics::{QUEUE_DEAD_LETTERS, QUEUE_DEPTH, QUEUE_OLDEST_AGE};
    for q in queues {
        match q.gauges().await {
            Ok(g) => {
                let queue = q.name().to_string();
                metrics::gauge!(QUEUE_DEPTH, "queue" => queue.clone()).set(g.depth as f64);
                metrics::gauge!(QUEUE_DEAD_LETTERS, "queue" => queue.clone())
                    .set(g.dead_letters as f64);
                metrics::gauge!(QUEUE_OLDEST_AGE, "queue" => queue)
                    .set(g.oldest_age.map_or(0.0, |a| a.as_secs_f64()));
            }
            Err(e) => tracing::debug!(queue = q.name(), error = %e, "queue gauges not read"),
        }
    }
}

/// Ingests one file as an upload (what `POST /documents` plus the PUT do), returning its job.
pub async fn ingest_bytes(
    svc: &Services,
    filename: &str,
    bytes: &[u8],
) -> Result<crate::domain::Job, crate::pipeline::ingest::IngestError> {
    use crate::pipeline::ingest;
    let content_type = ingest::check_content_type("", filename)?;
    let job = ingest::create_upload(svc, filename, content_type, Some(bytes.len() as u64)).await?;
    ingest::receive_upload(
        svc,
        &job.id,
        job.upload_token.as_deref().unwrap_or_default(),
        bytes,
    )
    .await
}

/// Waits until every job is done or failed, calling `progress(finished, total)` as they end.
pub async fn wait_for_jobs(
    svc: &Core,
    job_ids: &[String],
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<crate::domain::Job>, crate::pipeline::PipelineError> {
    use crate::domain::JobStatus;
    let mut last = usize::MAX;
    loop {
        let mut jobs = Vec::with_capacity(job_ids.len());
        for id in job_ids {
            if let Some(j) = crate::pipeline::load_job(svc.state.as_ref(), id).await? {
                jobs.push(j);
            }
        }
        let finished = jobs
            .iter()
            .filter(|j| matches!(j.status(), JobStatus::Done | JobStatus::Failed))
            .count();
        if finished != last {
            progress(finished, job_ids.len());
            last = finished;
        }
        if finished == job_ids.len() {
            return Ok(jobs);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
