//! The SQS doors of the chunk, embed and tag functions, one per stage: Lambda's counterpart of `pai`'s queue
//! consumers. Each record runs in its own task (a panic fails that message only: chunk and embed
//! are built to unwind for it; tag takes one message per batch and aborts); a transient
//! failure gets the back-off of `pipeline::healing` (ChangeMessageVisibility) and is reported
//! back as a batch item failure so SQS redelivers just that message then (and dead-letters it
//! after `maxReceiveCount`); a call refused by an open circuit breaker is deferred (a delayed
//! copy, so no receive is spent); a permanent failure is recorded on its job and
//! acknowledged, because retrying cannot help.

use std::future::Future;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::LambdaEvent;

use crate::domain::Stage;
use crate::pipeline::Blobs;
#[cfg(feature = "stage-chunk")]
use crate::pipeline::Queues;
use crate::pipeline::healing::{self, Settlement};
use crate::pipeline::{PipelineError, Services, StageQueue};
use crate::ports::Delivery;

/// Writes the metrics as EMF when dropped: at the end of an invocation, on every path.
struct FlushMetrics;

impl Drop for FlushMetrics {
    fn drop(&mut self) {
        super::emf::flush();
    }
}

/// The chunk function's door: its queue's batch, to the chunk stage.
#[cfg(feature = "stage-chunk")]
pub async fn chunk_batch<M: Clone + Send + Sync + 'static>(
    svc: &Services<Blobs, Queues, M>,
    event: LambdaEvent<SqsEvent>,
) -> Result<SqsBatchResponse, lambda_runtime::Error> {
    let run = |svc: Services<Blobs, Queues, M>, body: String, last| async move {
        crate::pipeline::handle_chunk(&svc, &body, last).await
    };
    batch(svc, Stage::Chunk, event, run).await
}

/// The embed function's door (its own queue, or all three in `pai`'s services).
#[cfg(feature = "stage-embed")]
pub async fn embed_batch<Q, W>(
    svc: &Services<Blobs, Q, crate::pipeline::Models, W>,
    event: LambdaEvent<SqsEvent>,
) -> Result<SqsBatchResponse, lambda_runtime::Error>
where
    Q: StageQueue + Clone + Send + Sync + 'static,
    W: Clone + Send + Sync + 'static,
{
    let run = |svc: Services<Blobs, Q, crate::pipeline::Models, W>, body: String, last| async move {
        crate::pipeline::handle_embed(&svc, &body, last).await
    };
    batch(svc, Stage::Embed, event, run).await
}

/// The tag function's door.
#[cfg(feature = "stage-tag")]
pub async fn tag_batch<Q: StageQueue + Clone + Send + Sync + 'static>(
    svc: &Services<Blobs, Q>,
    event: LambdaEvent<SqsEvent>,
) -> Result<SqsBatchResponse, lambda_runtime::Error> {
    let run = |svc: Services<Blobs, Q>, body: String, last| async move {
        crate::pipeline::handle_tag(&svc, &body, last).await
    };
    batch(svc, Stage::Tag, event, run).await
}

/// One SQS batch of `stage` for services that run every stage (`pai`'s, in tests that drive
/// the Lambda door with them).
#[cfg(all(
    feature = "stage-chunk",
    feature = "stage-embed",
    feature = "stage-tag"
))]
pub async fn handle_batch(
    svc: &Services,
    stage: Stage,
    event: LambdaEvent<SqsEvent>,
) -> Result<SqsBatchResponse, lambda_runtime::Error> {
    match stage {
        Stage::Chunk => chunk_batch(svc, event).await,
        Stage::Embed => embed_batch(svc, event).await,
        Stage::Tag => tag_batch(svc, event).await,
    }
}

/// Processes one SQS batch of `stage` with `run` (the stage's entry point), returning the
/// messages to redeliver. Back-off and deferral go to the stage's own queue (`svc.queues`).
async fn batch<B, Q, M, W, F, Fut>(
    svc: &Services<B, Q, M, W>,
    stage: Stage,
    event: LambdaEvent<SqsEvent>,
    run: F,
) -> Result<SqsBatchResponse, lambda_runtime::Error>
where
    B: Clone + Send + Sync + 'static,
    Q: StageQueue + Clone + Send + Sync + 'static,
    M: Clone + Send + Sync + 'static,
    W: Clone + Send + Sync + 'static,
    F: Fn(Services<B, Q, M, W>, String, bool) -> Fut,
    Fut: Future<Output = Result<(), PipelineError>> + Send + 'static,
{
    // The invocation's metrics are written however the batch ends.
    let _flush = FlushMetrics;
    let records = event.payload.records;
    let max_receives = svc.settings.max_receives;
    // Its own queue only: back-off and deferral of the messages this invocation holds.
    let own = svc.queues.consumer(stage);
    let running: Vec<_> = records
        .into_iter()
        .map(|record| {
            let svc = svc.clone();
            let receives: u32 = record
                .attributes
                .get("ApproximateReceiveCount")
                .and_then(|n| n.parse().ok())
                .unwrap_or(1);
            let message = Delivery {
                message_id: record.message_id.clone().unwrap_or_default(),
                receipt: record.receipt_handle.clone().unwrap_or_default(),
                body: record.body.clone().unwrap_or_default(),
                receive_count: receives,
            };
            let work = tokio::spawn(run(svc, message.body.clone(), receives >= max_receives));
            (record.message_id, message, work)
        })
        .collect();

    let mut response = SqsBatchResponse::default();
    for (message_id, message, work) in running {
        let outcome = work.await.unwrap_or_else(|panic| {
            Err(PipelineError::Retry(format!("handler panicked: {panic}")))
        });
        let settlement = healing::settle(&outcome, message.receive_count);
        let comes_back = match (&outcome, settlement) {
            (Ok(()), _) => false,
            // Recorded on the job by `handle`; acknowledging keeps it out of the DLQ.
            (Err(e), Settlement::Delete) => {
                tracing::warn!(?stage, message_id, reason = %e, "message failed for good");
                false
            }
            (Err(e), Settlement::Defer(_)) => {
                // The delayed copy is the message now; the original is acknowledged.
                match healing::apply(own, &message, settlement).await {
                    Ok(()) => {
                        tracing::info!(?stage, message_id, reason = %e, ?settlement, "message deferred");
                        false
                    }
                    Err(q) => {
                        tracing::warn!(?stage, message_id, error = %q, "could not defer; retried the usual way");
                        true
                    }
                }
            }
            (Err(e), Settlement::Release(_)) => {
                // Without the own queue bound, SQS's visibility timeout is the back-off.
                if let Err(q) = healing::apply(own, &message, settlement).await {
                    tracing::debug!(?stage, error = %q, "back-off not set");
                }
                tracing::warn!(?stage, message_id, receives = message.receive_count, reason = %e, ?settlement, "message will be retried");
                true
            }
        };
        if comes_back {
            match message_id {
                Some(id) => response.add_failure(id),
                // Without an id SQS cannot be told which one: the whole batch comes back,
                // and idempotent steps make that safe.
                None => return Err("a message without id failed".into()),
            }
        }
    }
    Ok(response)
}
