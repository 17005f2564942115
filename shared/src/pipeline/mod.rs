//! The use cases: ingest, chunk, embed, tag and chat, as plain async functions over the ports.
//!
//! Every queue-driven step is idempotent: SQS (and the embedded queue) deliver at least once, so
//! a redelivered message must change nothing twice. Each stage has one entry point taking a
//! message body (`handle_chunk`, `handle_embed`, `handle_tag`): the Lambda doors call their
//! stage's, `pai`'s workers all three through `handle`.

pub mod access;
#[cfg(feature = "chat")]
pub mod chat;
pub mod chunk;
pub mod embed;
pub mod healing;
pub mod index;
pub mod ingest;
pub mod sync;
pub mod tag;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::Settings;
use crate::domain::{Document, Job, ObjectKind, Stage, StageState, StageStatus, Taxonomy};
use crate::ports::{
    BlobStore, ChatModel, Condition, Embedder, ModelError, PaperlessError, PaperlessReader,
    PaperlessWriter, QueueConsumer, StateStore, StoreError, VectorIndex, WorkQueue,
};
pub use crate::providers::names::ModelNames;
#[cfg(feature = "stage")]
use crate::telemetry::{self, JobIds};

/// The three work queues.
#[derive(Clone)]
pub struct Queues {
    pub chunk: Arc<dyn WorkQueue>,
    pub embed: Arc<dyn WorkQueue>,
    pub tag: Arc<dyn WorkQueue>,
}

/// The blob store, in the `blobs` slot of the functions that bind one.
pub type Blobs = Arc<dyn BlobStore>;

/// Writing to Paperless (tagging's write-back and the objects it creates, the review's approve
/// and undo), in the `writer` slot of what writes: `pai`, ingest (the review routes) and tag.
/// `None` where no Paperless is configured, as [`Core::paperless`] is.
pub type Writer = Option<Arc<dyn PaperlessWriter>>;

/// A slot of `Services` whose resource the function does not bind (chat: no bucket and no
/// queue; sync: no bucket; embed and tag send to no queue). It implements no port, so code
/// that would use the resource does not compile for that function.
#[derive(Clone, Copy, Debug, Default)]
pub struct Unbound;

/// A `blobs` slot, bound or not, for work that only tidies up: sync deletes the text snapshot
/// of a document deleted in Paperless where it has the bucket (`pai`); the sync function has
/// none, so there the snapshot stays (nothing reads it again).
pub trait BlobSlot: Send + Sync {
    fn store(&self) -> Option<&dyn BlobStore>;
}

impl BlobSlot for Blobs {
    fn store(&self) -> Option<&dyn BlobStore> {
        Some(self.as_ref())
    }
}

impl BlobSlot for Unbound {
    fn store(&self) -> Option<&dyn BlobStore> {
        None
    }
}

/// The one queue a queue-driven function consumes, and sends nothing to: its messages' back-off
/// and deferral (the embed and tag functions).
#[derive(Clone)]
pub struct OwnQueue(pub Arc<dyn QueueConsumer>);

/// The queue a stage's messages come from, to back them off or defer them on.
pub trait StageQueue {
    fn consumer(&self, stage: Stage) -> &dyn QueueConsumer;
}

impl StageQueue for Queues {
    fn consumer(&self, stage: Stage) -> &dyn QueueConsumer {
        match stage {
            Stage::Chunk => self.chunk.as_ref(),
            Stage::Embed => self.embed.as_ref(),
            Stage::Tag => self.tag.as_ref(),
        }
    }
}

impl StageQueue for OwnQueue {
    fn consumer(&self, _: Stage) -> &dyn QueueConsumer {
        self.0.as_ref()
    }
}

/// What every function has, built once per process (per cold start on Lambda): settings, the
/// state store, the vector index, the models' names and (when configured) Paperless. A use
/// case that needs nothing else takes `&Core`.
#[derive(Clone)]
pub struct Core {
    pub settings: Arc<Settings>,
    pub state: Arc<dyn StateStore>,
    pub vectors: Arc<dyn VectorIndex>,
    /// What the configured models are called (recorded on jobs, part of the tagging guard),
    /// known without building them: chunk and sync record them but call no model.
    pub names: Arc<ModelNames>,
    /// Reading Paperless; writing is the `writer` slot of [`Services`].
    pub paperless: Option<Arc<dyn PaperlessReader>>,
    /// The taxonomy used when no Paperless is configured (e.g. `DATA_DIR/taxonomy.json`).
    pub local_taxonomy: Arc<Taxonomy>,
    taxonomy_cache: Arc<TaxonomyCache>,
}

/// A function's services: the core, plus the blob store, the queues, the models and the
/// Paperless writer where it binds them. The slots are types, so what a function lacks is a
/// compile error, not a run-time failure: `pai` and the ingest function have everything
/// (`Services`); chunk `Services<Blobs, Queues, Unbound, Unbound>`; embed `Services<Blobs,
/// OwnQueue, Models, Unbound>`; tag `Services<Blobs, OwnQueue>`; sync `Services<Unbound,
/// Queues, Unbound, Unbound>`; chat `Services<Unbound, Unbound, Models, Unbound>`. A use case
/// names the slots it uses and is generic over the others.
#[derive(Clone)]
pub struct Services<B = Blobs, Q = Queues, M = Models, W = Writer> {
    pub core: Core,
    pub blobs: B,
    pub queues: Q,
    pub models: M,
    pub writer: W,
}

/// The models a function calls, as the use cases hold them (behind their guard and cache).
#[derive(Clone)]
pub struct Models {
    pub model: Arc<dyn ChatModel>,
    pub embedder: Arc<dyn Embedder>,
}

impl<B, Q, M, W> std::ops::Deref for Services<B, Q, M, W> {
    type Target = Core;
    fn deref(&self) -> &Core {
        &self.core
    }
}

impl<B, Q, M, W> std::ops::DerefMut for Services<B, Q, M, W> {
    fn deref_mut(&mut self) -> &mut Core {
        &mut self.core
    }
}

/// The Paperless taxonomy as this process knows it: read once and kept, so a burst of
/// documents does not re-list five kinds of objects per document. One reader at a time
/// refreshes it (single flight: the others wait and take its result); objects we create are
/// added in place; it is read again at a bounded age, or when a name we need is missing and
/// the copy is old enough that someone else may have created it since.
#[derive(Default)]
struct TaxonomyCache {
    current: Mutex<Option<CachedTaxonomy>>,
    refreshing: tokio::sync::Mutex<()>,
    /// Creates run one at a time, so two workers never create the same name twice.
    creating: tokio::sync::Mutex<()>,
}

/// A Paperless taxonomy, when it was fetched, and whether it must be read again.
#[derive(Clone)]
struct CachedTaxonomy {
    fetched: Instant,
    stale: bool,
    taxonomy: Arc<Taxonomy>,
}

/// How long a fetched Paperless taxonomy is used before it is read again.
const TAXONOMY_MAX_AGE: Duration = Duration::from_secs(60);
/// A name missing from a copy at least this old re-reads the taxonomy before it is created.
const TAXONOMY_MISS_REFRESH: Duration = Duration::from_secs(10);

impl Core {
    pub fn new(
        settings: Arc<Settings>,
        state: Arc<dyn StateStore>,
        vectors: Arc<dyn VectorIndex>,
        names: ModelNames,
        paperless: Option<Arc<dyn PaperlessReader>>,
        local_taxonomy: Taxonomy,
    ) -> Core {
        Core {
            settings,
            state,
            vectors,
            names: Arc::new(names),
            paperless,
            local_taxonomy: Arc::new(local_taxonomy),
            taxonomy_cache: Default::default(),
        }
    }

    /// These services with a blob store, queues, models and a Paperless writer in their slots.
    pub fn with<B, Q, M, W>(
        self,
        blobs: B,
        queues: Q,
        models: M,
        writer: W,
    ) -> Services<B, Q, M, W> {
        Services {
            core: self,
            blobs,
            queues,
            models,
            writer,
        }
    }

    fn cached_taxonomy(&self, max_age: Duration) -> Option<Arc<Taxonomy>> {
        self.taxonomy_cache
            .current
            .lock()
            .expect("taxonomy cache")
            .as_ref()
            .filter(|c| !c.stale && c.fetched.elapsed() < max_age)
            .map(|c| c.taxonomy.clone())
    }

    /// The user's taxonomy: Paperless's (kept for a bounded age), or the local one.
    pub async fn taxonomy(&self) -> Result<Arc<Taxonomy>, PipelineError> {
        self.taxonomy_not_older_than(TAXONOMY_MAX_AGE).await
    }

    async fn taxonomy_not_older_than(
        &self,
        max_age: Duration,
    ) -> Result<Arc<Taxonomy>, PipelineError> {
        let Some(paperless) = &self.paperless else {
            return Ok(self.local_taxonomy.clone());
        };
        if let Some(t) = self.cached_taxonomy(max_age) {
            return Ok(t);
        }
        let _flight = self.taxonomy_cache.refreshing.lock().await;
        // Whoever held the flight before us may just have read it.
        if let Some(t) = self.cached_taxonomy(max_age) {
            return Ok(t);
        }
        let fresh = Arc::new(paperless.taxonomy().await.map_err(PipelineError::from)?);
        *self.taxonomy_cache.current.lock().expect("taxonomy cache") = Some(CachedTaxonomy {
            fetched: Instant::now(),
            stale: false,
            taxonomy: fresh.clone(),
        });
        Ok(fresh)
    }

    /// The taxonomy as it must be to judge `doc`: an object the kept copy does not know was
    /// created since it was read (a new exclude tag must keep a private document from every
    /// model; new names must reach the vectors' metadata), so then it is read again.
    pub async fn taxonomy_for(&self, doc: &Document) -> Result<Arc<Taxonomy>, PipelineError> {
        let taxonomy = self.taxonomy().await?;
        let unknown =
            |kind, id: Option<u64>| id.is_some_and(|id| taxonomy.name_of(kind, id).is_none());
        if doc.tags.iter().any(|t| unknown(ObjectKind::Tag, Some(*t)))
            || unknown(ObjectKind::Correspondent, doc.correspondent)
            || unknown(ObjectKind::DocumentType, doc.document_type)
        {
            self.taxonomy_changed();
            return self.taxonomy().await;
        }
        Ok(taxonomy)
    }

    /// Makes the next read of the taxonomy go to Paperless (until then, the copy serves).
    pub fn taxonomy_changed(&self) {
        if let Some(c) = self
            .taxonomy_cache
            .current
            .lock()
            .expect("taxonomy cache")
            .as_mut()
        {
            c.stale = true;
        }
    }

    /// The id of a named object, created in Paperless (matching "none") when it is missing
    /// there: `seen` is the taxonomy the caller worked from; the kept copy is asked next (a
    /// neighbour may have created it), then Paperless if the copy is not recent.
    pub async fn object_id(
        &self,
        writer: &Writer,
        seen: &Taxonomy,
        kind: ObjectKind,
        name: &str,
    ) -> Result<u64, PipelineError> {
        if let Some(o) = seen.find(kind, name) {
            return Ok(o.id);
        }
        let paperless = writer
            .as_ref()
            .ok_or_else(|| PipelineError::Fail("PAPERLESS_URL is not configured".into()))?;
        let _one_creator = self.taxonomy_cache.creating.lock().await;
        if let Some(o) = self.taxonomy().await?.find(kind, name) {
            return Ok(o.id);
        }
        if let Some(o) = self
            .taxonomy_not_older_than(TAXONOMY_MISS_REFRESH)
            .await?
            .find(kind, name)
        {
            return Ok(o.id);
        }
        let created = paperless.create(kind, name).await?;
        if let Some(c) = self
            .taxonomy_cache
            .current
            .lock()
            .expect("taxonomy cache")
            .as_mut()
        {
            let mut updated = (*c.taxonomy).clone();
            updated.objects_mut(kind).push(created.clone());
            c.taxonomy = Arc::new(updated);
        }
        Ok(created.id)
    }
}

/// Why a step failed, and whether the message should come back.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// Transient: the message is retried (and dead-lettered after too many receives).
    #[error("{0}")]
    Retry(String),
    /// Permanent: recorded on the job; retrying cannot help.
    #[error("{0}")]
    Fail(String),
    /// Not attempted (a model's circuit breaker is open): the message comes back after
    /// `after` without this receive counting against it.
    #[error("{reason}")]
    Deferred { reason: String, after: Duration },
}

impl PipelineError {
    /// Whether the message should come back (after a failure that may heal, or deferred).
    pub fn is_retry(&self) -> bool {
        matches!(
            self,
            PipelineError::Retry(_) | PipelineError::Deferred { .. }
        )
    }
}

impl From<StoreError> for PipelineError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Invalid(m) => PipelineError::Fail(m),
            other => PipelineError::Retry(other.to_string()),
        }
    }
}

impl From<ModelError> for PipelineError {
    fn from(e: ModelError) -> Self {
        if let ModelError::CircuitOpen { retry_after } = e {
            return PipelineError::Deferred {
                reason: e.to_string(),
                after: retry_after,
            };
        }
        if e.is_transient() {
            PipelineError::Retry(e.to_string())
        } else {
            PipelineError::Fail(e.to_string())
        }
    }
}

impl From<PaperlessError> for PipelineError {
    fn from(e: PaperlessError) -> Self {
        metrics::counter!(crate::metrics::PAPERLESS_ERRORS, "kind" => match e {
            PaperlessError::NotFound(_) => "not_found",
            PaperlessError::Forbidden(_) => "forbidden",
            PaperlessError::Rejected(_) => "rejected",
            PaperlessError::Unavailable(_) => "unavailable",
        })
        .increment(1);
        if e.is_transient() {
            PipelineError::Retry(e.to_string())
        } else {
            PipelineError::Fail(e.to_string())
        }
    }
}

pub(crate) fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

pub use crate::state_keys::job_key;

/// Reads a job.
pub async fn load_job(state: &dyn StateStore, job_id: &str) -> Result<Option<Job>, PipelineError> {
    match state.get(&job_key(job_id)).await? {
        None => Ok(None),
        Some(v) => serde_json::from_value(v.value)
            .map(Some)
            .map_err(|e| PipelineError::Fail(format!("corrupt job {job_id}: {e}"))),
    }
}

/// Counters of a job's model usage (all its attempts: a retry spends again), shown by
/// `GET /jobs/{id}` as `usage`.
pub const USAGE_COUNTERS: [&str; 3] = ["tokens_in", "tokens_out", "cost_nano_usd"];

/// Adds a model call's tokens and cost to its job. Bookkeeping only: a failed write is
/// logged, not a reason to call the model again.
pub async fn add_job_usage(state: &dyn StateStore, job_id: &str, usage: &crate::ports::Usage) {
    let deltas = [
        usage.input_tokens as i64,
        usage.output_tokens as i64,
        crate::cost::to_nano_usd(usage.cost_usd),
    ];
    // One write for the three; a cache hit or a free model adds nothing: no write.
    let changed: Vec<(&str, i64)> = USAGE_COUNTERS
        .into_iter()
        .zip(deltas)
        .filter(|(_, delta)| *delta != 0)
        .collect();
    if changed.is_empty() {
        return;
    }
    if let Err(e) = state.add_all(&job_key(job_id), &changed).await {
        tracing::warn!(job_id, error = %e, "could not add the model usage to the job");
    }
}

/// The `usage` a job shows, from its counters.
pub fn job_usage(counters: &std::collections::BTreeMap<String, i64>) -> crate::ports::Usage {
    let get = |name: &str| counters.get(name).copied().unwrap_or(0);
    crate::ports::Usage {
        input_tokens: get(USAGE_COUNTERS[0]).max(0) as u64,
        output_tokens: get(USAGE_COUNTERS[1]).max(0) as u64,
        cost_usd: crate::cost::from_nano_usd(get(USAGE_COUNTERS[2])),
    }
}

/// How a job's embedding stage ended, counted once per change: `indexed` (chunks embedded),
/// `unchanged` (every chunk was already indexed) or `failed`.
fn count_index_outcome(before: &Job, after: &Job) {
    let status = |job: &Job| job.stages.get(&Stage::Embed).map(|s| s.status);
    if status(before) == status(after) {
        return;
    }
    let outcome = match status(after) {
        Some(StageStatus::Done) => "indexed",
        Some(StageStatus::Skipped) => "unchanged",
        Some(StageStatus::Failed) => "failed",
        _ => return,
    };
    metrics::counter!(crate::metrics::DOCUMENTS_INDEXED, "outcome" => outcome).increment(1);
}

/// Applies `change` to a job with optimistic locking, retrying on concurrent updates.
pub async fn update_job(
    state: &dyn StateStore,
    job_id: &str,
    change: impl Fn(&mut Job),
) -> Result<Job, PipelineError> {
    let key = job_key(job_id);
    for _ in 0..50 {
        let Some(current) = state.get(&key).await? else {
            return Err(PipelineError::Fail(format!("job {job_id} does not exist")));
        };
        let mut job: Job = serde_json::from_value(current.value)
            .map_err(|e| PipelineError::Fail(format!("corrupt job {job_id}: {e}")))?;
        let before = job.clone();
        change(&mut job);
        if job == before {
            return Ok(job);
        }
        let value = serde_json::to_value(&job).expect("job serialises");
        match state
            .put(&key, &value, Condition::Version(current.version), None)
            .await
        {
            Ok(_) => {
                count_index_outcome(&before, &job);
                if job.status() != before.status()
                    && matches!(
                        job.status(),
                        crate::domain::JobStatus::Done | crate::domain::JobStatus::Failed
                    )
                {
                    metrics::histogram!(crate::metrics::JOB_DURATION).record(job_age_secs(&job));
                }
                return Ok(job);
            }
            Err(StoreError::Conflict(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(PipelineError::Retry(format!(
        "job {job_id} is being updated by too many workers"
    )))
}

/// Sets a stage's outcome (a stage already failed stays failed).
pub async fn set_stage(
    state: &dyn StateStore,
    job_id: &str,
    stage: Stage,
    status: StageStatus,
    detail: Option<String>,
    provider: Option<String>,
) -> Result<Job, PipelineError> {
    write_stage(state, job_id, stage, status, detail, provider, false).await
}

/// Sets a stage's outcome, replacing an earlier failure: the job shows its latest outcome
/// (a retried tag stage that now succeeds is done).
pub async fn set_stage_latest(
    state: &dyn StateStore,
    job_id: &str,
    stage: Stage,
    status: StageStatus,
    detail: Option<String>,
    provider: Option<String>,
) -> Result<Job, PipelineError> {
    write_stage(state, job_id, stage, status, detail, provider, true).await
}

/// `latest`: the outcome replaces a failure and is timed now; otherwise a failure stays and
/// a stage keeps the time it first finished.
async fn write_stage(
    state: &dyn StateStore,
    job_id: &str,
    stage: Stage,
    status: StageStatus,
    detail: Option<String>,
    provider: Option<String>,
    latest: bool,
) -> Result<Job, PipelineError> {
    update_job(state, job_id, |job| {
        let earlier = job.stages.get(&stage);
        if !latest
            && earlier
                .is_some_and(|s| s.status == StageStatus::Failed && status != StageStatus::Failed)
        {
            return;
        }
        let finished_at = match latest {
            true => Some(now()),
            false => earlier.and_then(|s| s.finished_at).or(Some(now())),
        };
        job.stages.insert(
            stage,
            StageState {
                status,
                detail: detail.clone(),
                provider: provider.clone(),
                finished_at: finished_at.filter(|_| status != StageStatus::Pending),
            },
        );
    })
    .await
}

/// Processes one message of a stage's queue (`pai`'s workers run all three stages in one
/// process). `final_attempt` is set when the queue will dead-letter the message if this
/// attempt fails, so the job records the failure now.
#[cfg(all(
    feature = "stage-chunk",
    feature = "stage-embed",
    feature = "stage-tag"
))]
pub async fn handle(
    svc: &Services,
    stage: Stage,
    body: &str,
    final_attempt: bool,
) -> Result<(), PipelineError> {
    match stage {
        Stage::Chunk => handle_chunk(svc, body, final_attempt).await,
        Stage::Embed => handle_embed(svc, body, final_attempt).await,
        Stage::Tag => handle_tag(svc, body, final_attempt).await,
    }
}

#[cfg(feature = "stage")]
fn malformed(stage: Stage) -> impl Fn(serde_json::Error) -> PipelineError {
    move |e| PipelineError::Fail(format!("malformed {stage:?} message: {e}"))
}

/// The chunk stage's entry point: a document to read and split (or S3 notifications of
/// uploads). It sends to the embed and tag queues, so it needs every slot.
#[cfg(feature = "stage-chunk")]
pub async fn handle_chunk<M: Sync>(
    svc: &Services<Blobs, Queues, M>,
    body: &str,
    final_attempt: bool,
) -> Result<(), PipelineError> {
    use tracing::Instrument;
    // Uploads that went straight to S3 arrive as S3 event notifications on this queue.
    if let Some(objects) = ingest::parse_s3_notification(body) {
        for object in objects {
            uploaded(svc, &object, final_attempt).await?;
        }
        return Ok(());
    }
    let t: crate::domain::ChunkTask =
        serde_json::from_str(body).map_err(malformed(Stage::Chunk))?;
    let doc_id = match &t {
        crate::domain::ChunkTask::Paperless { doc_id, .. } => {
            Some(crate::domain::DocId::Paperless(*doc_id).to_string())
        }
        crate::domain::ChunkTask::Upload { .. } => None,
    };
    let span = tracing::info_span!(
        "chunk",
        job_id = t.job_id(),
        doc_id = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    if let Some(d) = &doc_id {
        span.record("doc_id", d.as_str());
    }
    telemetry::continue_trace(&span, t.trace(), JobIds::new(t.job_id(), doc_id));
    let result = chunk::run(svc, &t).instrument(span.clone()).await;
    finish_stage(
        (svc, &svc.writer),
        Stage::Chunk,
        t.job_id(),
        result,
        final_attempt,
        None,
        span,
    )
    .await
}

/// The embed stage's entry point: chunks to embed. It reads the document's text snapshot,
/// sends to no queue and writes nothing to Paperless.
#[cfg(feature = "stage-embed")]
pub async fn handle_embed<Q: Sync, W: Sync>(
    svc: &Services<Blobs, Q, Models, W>,
    body: &str,
    final_attempt: bool,
) -> Result<(), PipelineError> {
    use tracing::Instrument;
    let t: crate::domain::EmbedTask =
        serde_json::from_str(body).map_err(malformed(Stage::Embed))?;
    let span = tracing::info_span!("embed", job_id = %t.job_id, doc_id = %t.doc_id, chunks = t.chunks.len(), otel.status_code = tracing::field::Empty);
    let ids = JobIds::new(&t.job_id, Some(t.doc_id.to_string()));
    telemetry::continue_trace(&span, t.trace.as_ref(), ids);
    let result = embed::run(svc, &t).instrument(span.clone()).await;
    // Embedding failures are not marked on the document (`record_failure`): no writer.
    finish_stage(
        (svc, &None),
        Stage::Embed,
        &t.job_id,
        result,
        final_attempt,
        None,
        span,
    )
    .await
}

/// The tag stage's entry point: a document version to suggest metadata for and write back.
/// It reads the text snapshot and sends to no queue.
#[cfg(feature = "stage-tag")]
pub async fn handle_tag<Q: Sync>(
    svc: &Services<Blobs, Q>,
    body: &str,
    final_attempt: bool,
) -> Result<(), PipelineError> {
    use tracing::Instrument;
    let t: crate::domain::TagTask = serde_json::from_str(body).map_err(malformed(Stage::Tag))?;
    let span = tracing::info_span!("tag", job_id = %t.job_id, doc_id = %t.doc_id, otel.status_code = tracing::field::Empty);
    let ids = JobIds::new(&t.job_id, Some(t.doc_id.to_string()));
    telemetry::continue_trace(&span, t.trace.as_ref(), ids);
    let result = tag::run(svc, &t).instrument(span.clone()).await;
    // The failure is marked on the document for the text this version has.
    let hash = Some(t.content_hash.as_str());
    finish_stage(
        (svc, &svc.writer),
        Stage::Tag,
        &t.job_id,
        result,
        final_attempt,
        hash,
        span,
    )
    .await
}

/// A stage's outcome: an error shows on its span, and a failure is recorded in the stage's
/// span (marking it on the document is part of its trace).
#[cfg(feature = "stage")]
async fn finish_stage(
    (svc, writer): (&Core, &Writer),
    stage: Stage,
    job_id: &str,
    result: Result<(), PipelineError>,
    final_attempt: bool,
    content_hash: Option<&str>,
    span: tracing::Span,
) -> Result<(), PipelineError> {
    use tracing::Instrument;
    mark_error(&span, &result);
    record_failure(
        svc,
        writer,
        stage,
        job_id,
        &result,
        final_attempt,
        content_hash,
    )
    .instrument(span)
    .await;
    result
}

/// A stage that failed (not one deferred by a breaker) shows as an error in its trace.
#[cfg(feature = "stage")]
fn mark_error(span: &tracing::Span, result: &Result<(), PipelineError>) {
    if matches!(result, Err(e) if !matches!(e, PipelineError::Deferred { .. })) {
        span.record("otel.status_code", "ERROR");
    }
}

/// An upload that arrived in the blob store: checked against its job, then chunked.
#[cfg(feature = "stage-chunk")]
async fn uploaded<M: Sync>(
    svc: &Services<Blobs, Queues, M>,
    object: &ingest::ArrivedObject,
    final_attempt: bool,
) -> Result<(), PipelineError> {
    use tracing::Instrument;
    let job_id = ingest::upload_job_id(&object.key)
        .unwrap_or_default()
        .to_string();
    let span = tracing::info_span!(
        "chunk",
        job_id = %job_id,
        doc_id = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    // An S3 notification carries no trace context: the job record has it.
    let job = match telemetry::active() {
        true => load_job(svc.state.as_ref(), &job_id).await.ok().flatten(),
        false => None,
    };
    let doc_id = job
        .as_ref()
        .and_then(|j| j.doc_id.as_ref())
        .map(ToString::to_string);
    telemetry::continue_trace(
        &span,
        job.as_ref().and_then(|j| j.trace.as_ref()),
        JobIds::new(&job_id, doc_id),
    );
    async {
        let result = async {
            let task = ingest::upload_arrived(svc, object).await?;
            chunk::run(svc, &task).await
        }
        .await;
        mark_error(&tracing::Span::current(), &result);
        record_failure(
            svc,
            &svc.writer,
            Stage::Chunk,
            &job_id,
            &result,
            final_attempt,
            None,
        )
        .await;
        result
    }
    .instrument(span)
    .await
}

/// Every record under `prefix`, in key order, read page by page.
pub(crate) async fn list_all(
    state: &dyn StateStore,
    prefix: &str,
) -> Result<Vec<(String, serde_json::Value)>, StoreError> {
    const PAGE: usize = 500;
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = state.list(prefix, after.as_deref(), PAGE).await?;
        let done = page.len() < PAGE;
        after = page.last().map(|(k, _)| k.clone());
        all.extend(page);
        if done {
            return Ok(all);
        }
    }
}

/// How long a job has existed, in seconds with milliseconds: from its UUIDv7 id (the time it
/// was made), as `created_at` counts whole seconds and most jobs take less than one.
fn job_age_secs(job: &Job) -> f64 {
    let made_ms = uuid::Uuid::parse_str(&job.id)
        .ok()
        .and_then(|id| id.get_timestamp())
        .map(|t| {
            let (secs, nanos) = t.to_unix();
            secs as i64 * 1000 + i64::from(nanos / 1_000_000)
        })
        .unwrap_or(job.created_at * 1000);
    (chrono::Utc::now().timestamp_millis() - made_ms).max(0) as f64 / 1000.0
}

/// Counts a failed step and, when it will not be retried, records why on the job.
/// `content_hash` is the text a failed tag stage worked on.
#[cfg(feature = "stage")]
async fn record_failure(
    svc: &Core,
    writer: &Writer,
    stage: Stage,
    job_id: &str,
    result: &Result<(), PipelineError>,
    final_attempt: bool,
    content_hash: Option<&str>,
) {
    if let Err(e) = result {
        if let PipelineError::Deferred { reason, .. } = e {
            // Not attempted: no failure of this message, on its last receive or not.
            metrics::counter!(crate::metrics::MESSAGES_FAILED, "stage" => format!("{stage:?}").to_lowercase(), "outcome" => "deferred").increment(1);
            tracing::info!(job_id, ?stage, %reason, "deferred");
            return;
        }
        let label = if e.is_retry() && !final_attempt {
            "retry"
        } else {
            "fail"
        };
        metrics::counter!(crate::metrics::MESSAGES_FAILED, "stage" => format!("{stage:?}").to_lowercase(), "outcome" => label).increment(1);
        if !e.is_retry() || final_attempt {
            let reason = if e.is_retry() {
                format!("gave up after repeated failures: {e}")
            } else {
                e.to_string()
            };
            tracing::warn!(job_id, ?stage, %reason, "stage failed");
            if e.is_retry()
                && let Err(e) = healing::failed_transiently(svc, job_id).await
            {
                tracing::warn!(job_id, error = %e, "could not note the job for sync to retry");
            }
            // The job may not exist (a message for a deleted job): nothing more to record then.
            let _ = set_stage(
                svc.state.as_ref(),
                job_id,
                stage,
                StageStatus::Failed,
                Some(reason.clone()),
                None,
            )
            .await;
            if stage == Stage::Tag {
                metrics::counter!(crate::metrics::DOCUMENTS_TAGGED, "outcome" => "failed")
                    .increment(1);
            }
            // The document shows the failure in Paperless too (not for embedding: its tagging
            // may still succeed, and chat is what misses the document).
            if stage != Stage::Embed {
                tag::mark_failed(svc, writer, job_id, content_hash, &reason).await;
            }
        }
    }
}

#[cfg(test)]
mod job_age_tests {
    use super::*;

    #[test]
    fn a_job_s_age_has_milliseconds_from_its_id() {
        let id = uuid::Uuid::now_v7().to_string();
        let job = Job::new(id, crate::domain::JobOrigin::Webhook, None, now());
        let age = job_age_secs(&job);
        assert!((0.0..5.0).contains(&age), "{age}");
        // An id that is not a UUIDv7 falls back to the whole seconds of `created_at`.
        let old = Job::new(
            "job-1".into(),
            crate::domain::JobOrigin::Webhook,
            None,
            now() - 90,
        );
        assert!((89.0..95.0).contains(&job_age_secs(&old)));
    }
}
