//! Healing: what makes an outage cost time, never documents. A transient failure comes back
//! with a growing delay (seconds at first, hours at most), so a model or Paperless outage of
//! hours does not exhaust a message's receives; a call refused by an open circuit breaker is
//! deferred without counting as a receive at all. A message dead-lettered for any reason —
//! including a worker that crashed or timed out on its last receive — fails its job with the
//! reason, and `retry` re-runs failed jobs (their dead letters removed, their document indexed
//! from scratch where anything is missing). Both queue doors (`pai`'s workers and the Lambda
//! SQS door) settle messages through `settle`, so they heal the same way.

use std::time::Duration;

use super::{
    Core, PipelineError, Queues, Services, Writer, ingest, load_job, set_stage, update_job,
};
use crate::domain::{
    ChunkTask, DocId, EmbedTask, Job, JobStatus, Stage, StageState, StageStatus, TagTask,
};
use crate::ports::{DeadLetters, Delivery, QueueConsumer, StoreError};

/// Delay after the first transient failure.
pub const FIRST_RETRY: Duration = Duration::from_secs(30);
/// Longest delay between two attempts.
pub const LONGEST_RETRY: Duration = Duration::from_secs(6 * 3600);

/// Delay before the next attempt after `receives` attempts that failed transiently: 30 s,
/// 2 min, 8 min, 32 min, about 2 h, then 6 h — with the default 8 receives a message keeps
/// trying for about 15 hours before it is dead-lettered.
pub fn backoff(receives: u32) -> Duration {
    let n = receives.saturating_sub(1).min(10);
    FIRST_RETRY
        .saturating_mul(4u32.saturating_pow(n))
        .min(LONGEST_RETRY)
}

/// What to do with a message once its handler returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// Done, or failed for good (recorded on its job).
    Delete,
    /// Failed transiently: back after the delay, this receive counted.
    Release(Duration),
    /// Not attempted: back after the delay, this receive not counted.
    Defer(Duration),
}

pub fn settle(outcome: &Result<(), PipelineError>, receive_count: u32) -> Settlement {
    match outcome {
        Ok(()) | Err(PipelineError::Fail(_)) => Settlement::Delete,
        Err(PipelineError::Retry(_)) => Settlement::Release(backoff(receive_count)),
        Err(PipelineError::Deferred { after, .. }) => {
            Settlement::Defer((*after).clamp(Duration::from_secs(1), LONGEST_RETRY))
        }
    }
}

/// Applies a settlement to a received message.
pub async fn apply(
    queue: &dyn QueueConsumer,
    message: &Delivery,
    settlement: Settlement,
) -> Result<(), StoreError> {
    match settlement {
        Settlement::Delete => queue.delete(&message.receipt).await,
        Settlement::Release(delay) => queue.release(&message.receipt, delay).await,
        Settlement::Defer(delay) => queue.defer(message, delay).await,
    }
}

/// The job a queue message belongs to, if the body names one.
pub fn job_of(stage: Stage, body: &str) -> Option<String> {
    match stage {
        Stage::Chunk => {
            if let Some(objects) = ingest::parse_s3_notification(body) {
                return objects
                    .first()
                    .and_then(|o| ingest::upload_job_id(&o.key))
                    .map(str::to_string);
            }
            serde_json::from_str::<ChunkTask>(body)
                .ok()
                .map(|t| t.job_id().to_string())
        }
        Stage::Embed => serde_json::from_str::<EmbedTask>(body)
            .ok()
            .map(|t| t.job_id),
        Stage::Tag => serde_json::from_str::<TagTask>(body).ok().map(|t| t.job_id),
    }
}

/// A message of `stage` was dead-lettered after `receives` receives: its job fails with the
/// reason, unless the stage already finished (the message was handled but its deletion lost)
/// or already failed. Idempotent, so every dead letter may be noted any number of times.
pub async fn dead_lettered(
    svc: &Core,
    writer: &Writer,
    stage: Stage,
    body: &str,
    receives: u32,
) -> Result<(), PipelineError> {
    let Some(job_id) = job_of(stage, body) else {
        tracing::warn!(?stage, "a dead letter names no job");
        return Ok(());
    };
    let Some(job) = load_job(svc.state.as_ref(), &job_id).await? else {
        return Ok(());
    };
    if job
        .stages
        .get(&stage)
        .is_some_and(|s| s.status != StageStatus::Pending)
    {
        return Ok(());
    }
    let reason = format!(
        "dead-lettered after {receives} receives without finishing (the worker crashed, timed out or kept failing); POST /jobs/{job_id}/retry runs it again"
    );
    tracing::warn!(%job_id, ?stage, %reason, "stage failed");
    set_stage(
        svc.state.as_ref(),
        &job_id,
        stage,
        StageStatus::Failed,
        Some(reason.clone()),
        None,
    )
    .await?;
    failed_transiently(svc, &job_id).await?;
    if stage != Stage::Embed {
        // No content hash: a dead letter is no verdict on the text, a retry must run again.
        super::tag::mark_failed(svc, writer, &job_id, None, &reason).await;
    }
    Ok(())
}

use crate::state_keys::{FAILED_TRANSIENT_PREFIX as TRANSIENT_PREFIX, failed_transient_key};

/// Records that a job failed for a reason that may heal (an outage outlasted its receives, or
/// its message was dead-lettered), so sync runs it again.
pub async fn failed_transiently(svc: &Core, job_id: &str) -> Result<(), PipelineError> {
    svc.state
        .put(
            &failed_transient_key(job_id),
            &serde_json::json!({"at": super::now()}),
            crate::ports::Condition::None,
            None,
        )
        .await?;
    Ok(())
}

/// How many times sync runs a job again by itself. A document that keeps killing its worker
/// (dead-lettered each time) would otherwise cost `MAX_RECEIVES` runs on every sync; after
/// these it stays failed until someone retries it.
pub const AUTOMATIC_RUNS: u32 = 3;

/// Sync's part: runs again every job recorded by `failed_transiently` (at most
/// `AUTOMATIC_RUNS` times each). Returns their ids.
pub async fn retry_transient_failures<B, M>(
    svc: &Services<B, Queues, M>,
) -> Result<Vec<String>, PipelineError> {
    // One pass over what is recorded now; a job failing again meanwhile waits for the next run.
    let pending: Vec<String> = super::list_all(svc.state.as_ref(), TRANSIENT_PREFIX)
        .await?
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let mut retried = Vec::new();
    for key in pending {
        let job_id = key.trim_start_matches(TRANSIENT_PREFIX);
        svc.state.delete(&key).await?;
        if let Some(job) = load_job(svc.state.as_ref(), job_id).await?
            && job.attempt >= AUTOMATIC_RUNS
        {
            tracing::warn!(
                job_id,
                attempt = job.attempt,
                "failed again after its automatic runs: left for a manual retry"
            );
            continue;
        }
        match retry_job(svc, job_id).await {
            Ok(_) => retried.push(job_id.to_string()),
            Err(RetryError::Pipeline(e)) => {
                // Still unreachable: keep it for the next run.
                failed_transiently(svc, job_id).await?;
                return Err(e);
            }
            // Gone, or already run again by hand: nothing left to heal.
            Err(e) => tracing::debug!(job_id, error = %e, "not run again"),
        }
    }
    Ok(retried)
}

/// A queue's dead letters; none for a queue this process does not bind (a Lambda reads only
/// the queues its template gives it).
async fn dead_of(queue: &dyn DeadLetters) -> Result<Vec<Delivery>, StoreError> {
    match queue.dead_letters(1000).await {
        Err(StoreError::Invalid(_)) => Ok(Vec::new()),
        other => other,
    }
}

/// Notes every dead letter of a queue (see `dead_lettered`); returns how many there are.
/// `pai` runs it when its workers start, sync runs it on AWS.
pub async fn note_dead_letters(
    svc: &Core,
    writer: &Writer,
    stage: Stage,
    queue: &dyn DeadLetters,
) -> Result<usize, PipelineError> {
    let dead = dead_of(queue).await?;
    for d in &dead {
        dead_lettered(svc, writer, stage, &d.body, d.receive_count).await?;
    }
    Ok(dead.len())
}

/// Why a job could not be re-run.
#[derive(Debug, thiserror::Error)]
pub enum RetryError {
    #[error("no job {0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
}

impl From<StoreError> for RetryError {
    fn from(e: StoreError) -> Self {
        RetryError::Pipeline(e.into())
    }
}

/// The chunk message that runs a job's document again from the start.
fn chunk_task(job: &Job) -> Result<ChunkTask, RetryError> {
    match (&job.doc_id, &job.filename, &job.content_type) {
        (Some(DocId::Paperless(id)), _, _) => Ok(ChunkTask::Paperless {
            job_id: job.id.clone(),
            doc_id: *id,
            trace: None,
        }),
        (_, Some(filename), Some(content_type))
            if job.origin == crate::domain::JobOrigin::Upload =>
        {
            Ok(ChunkTask::Upload {
                job_id: job.id.clone(),
                blob_key: ingest::upload_key(&job.id, filename),
                filename: filename.clone(),
                content_type: content_type.clone(),
                trace: None,
            })
        }
        _ => Err(RetryError::Conflict(format!(
            "job {} has no document to run again",
            job.id
        ))),
    }
}

/// The queues' dead letters, with their stages.
fn queues<B, M>(svc: &Services<B, Queues, M>) -> [(Stage, &dyn DeadLetters); 3] {
    [
        (Stage::Chunk, svc.queues.chunk.as_ref()),
        (Stage::Embed, svc.queues.embed.as_ref()),
        (Stage::Tag, svc.queues.tag.as_ref()),
    ]
}

/// `POST /jobs/{id}/retry`, `pai retry ID`: re-runs a failed job from its first stage under the
/// same id (its dead letters removed first, so they cannot fail it again). Chunking compares
/// the document with the index, so only what is missing is embedded, and tagging's loop guard
/// keeps a document already tagged from being billed twice.
pub async fn retry_job<B, M>(
    svc: &Services<B, Queues, M>,
    job_id: &str,
) -> Result<Job, RetryError> {
    use tracing::Instrument;
    // The re-run continues the trace of the job's first run.
    let trace = match crate::telemetry::active() {
        true => load_job(svc.state.as_ref(), job_id)
            .await?
            .and_then(|job| job.trace),
        false => None,
    };
    let span = tracing::info_span!(parent: None, "retry", job_id, attempt = tracing::field::Empty);
    crate::telemetry::continue_trace(
        &span,
        trace.as_ref(),
        crate::telemetry::JobIds::new(job_id, None),
    );
    run_again(svc, job_id).instrument(span).await
}

async fn run_again<B, M>(svc: &Services<B, Queues, M>, job_id: &str) -> Result<Job, RetryError> {
    // A message that died without reaching its handler may not be noted yet.
    for (stage, queue) in queues(svc) {
        for d in dead_of(queue).await? {
            if job_of(stage, &d.body).as_deref() == Some(job_id) {
                dead_lettered(svc, &svc.writer, stage, &d.body, d.receive_count).await?;
            }
        }
    }
    let job = load_job(svc.state.as_ref(), job_id)
        .await?
        .ok_or_else(|| RetryError::NotFound(job_id.to_string()))?;
    if job.status() != JobStatus::Failed {
        return Err(RetryError::Conflict(format!(
            "job {job_id} is {}: only failed jobs are run again",
            serde_json::to_value(job.status()).expect("status serialises")
        )));
    }
    let mut task = chunk_task(&job)?;
    task.set_trace(crate::telemetry::current());
    if let Some(doc_id) = &job.doc_id {
        super::tag::forget_failure(svc, doc_id).await?;
    }
    for (stage, queue) in queues(svc) {
        for d in dead_of(queue).await? {
            if job_of(stage, &d.body).as_deref() == Some(job_id) {
                queue.delete_dead_letter(&d.receipt).await?;
            }
        }
    }
    let shown = svc
        .state
        .counters(&super::job_key(job_id))
        .await?
        .get("chunks_embedded")
        .copied()
        .unwrap_or(0);
    if shown != 0 {
        svc.state
            .add(&super::job_key(job_id), "chunks_embedded", -shown)
            .await?;
    }
    let trace = crate::telemetry::current();
    let job = update_job(svc.state.as_ref(), job_id, |job| {
        // A job from before traces were exported gets the trace its re-run opens.
        if job.trace.is_none() {
            job.trace = trace.clone();
        }
        job.attempt += 1;
        job.chunks_total = 0;
        job.chunks_new = 0;
        for state in job.stages.values_mut() {
            *state = StageState {
                status: StageStatus::Pending,
                detail: None,
                provider: None,
                finished_at: None,
            };
        }
    })
    .await?;
    let body = serde_json::to_string(&task).expect("task serialises");
    svc.queues.chunk.send(&[body]).await?;
    tracing::Span::current().record("attempt", job.attempt);
    tracing::info!(job_id, attempt = job.attempt, "job queued again");
    Ok(job)
}

/// `POST /jobs/retry-failed`, `pai retry --all`: re-runs every failed job (dead letters are
/// noted first, so a job whose message died unseen is included). Returns the jobs re-run.
pub async fn retry_failed<B, M>(
    svc: &Services<B, Queues, M>,
) -> Result<Vec<String>, PipelineError> {
    for (stage, queue) in queues(svc) {
        note_dead_letters(svc, &svc.writer, stage, queue).await?;
    }
    let mut failed = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = svc
            .state
            .list(crate::state_keys::JOBS, after.as_deref(), 500)
            .await?;
        for (_, v) in &page {
            if let Ok(job) = serde_json::from_value::<Job>(v.clone())
                && job.status() == JobStatus::Failed
            {
                failed.push(job.id);
            }
        }
        if page.len() < 500 {
            break;
        }
        after = page.last().map(|(k, _)| k.clone());
    }
    let mut retried = Vec::with_capacity(failed.len());
    for id in failed {
        match retry_job(svc, &id).await {
            Ok(_) => retried.push(id),
            Err(RetryError::Pipeline(e)) => return Err(e),
            Err(e) => tracing::warn!(job_id = %id, error = %e, "not run again"),
        }
    }
    Ok(retried)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_failures_back_off_from_seconds_to_hours() {
        let delays: Vec<u64> = (1..=8).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(delays, [30, 120, 480, 1920, 7680, 21600, 21600, 21600]);
        let total: u64 = (1..8).map(|n| backoff(n).as_secs()).sum();
        assert!(total > 10 * 3600, "8 receives span many hours: {total} s");
        assert_eq!(backoff(1000), LONGEST_RETRY);
    }

    #[test]
    fn a_refused_call_is_deferred_and_only_failures_for_good_are_deleted() {
        assert_eq!(settle(&Ok(()), 1), Settlement::Delete);
        assert_eq!(
            settle(&Err(PipelineError::Fail("bad".into())), 1),
            Settlement::Delete
        );
        assert_eq!(
            settle(&Err(PipelineError::Retry("503".into())), 2),
            Settlement::Release(Duration::from_secs(120))
        );
        assert_eq!(
            settle(
                &Err(PipelineError::Deferred {
                    reason: "circuit open".into(),
                    after: Duration::from_millis(10)
                }),
                5
            ),
            Settlement::Defer(Duration::from_secs(1))
        );
    }

    #[test]
    fn every_message_names_its_job() {
        let chunk = r#"{"source":"paperless","job_id":"j1","doc_id":3}"#;
        assert_eq!(job_of(Stage::Chunk, chunk).as_deref(), Some("j1"));
        let s3 = r#"{"Records":[{"eventSource":"aws:s3","eventName":"ObjectCreated:Put","s3":{"object":{"key":"uploads/j2/a.txt","size":1}}}]}"#;
        assert_eq!(job_of(Stage::Chunk, s3).as_deref(), Some("j2"));
        let tag = r#"{"job_id":"j3","doc_id":"4","content_hash":"h"}"#;
        assert_eq!(job_of(Stage::Tag, tag).as_deref(), Some("j3"));
        assert_eq!(job_of(Stage::Embed, "not json"), None);
    }
}
