//! The SQS door of the chunk, embed and tag functions: Lambda's counterpart of `pai`'s queue
//! consumers. Each record runs in its own task (a panic fails that message only); a transient
//! failure is reported back as a batch item failure so SQS redelivers just that message (and
//! dead-letters it after `maxReceiveCount`), a permanent one is recorded on its job and
//! acknowledged, because retrying cannot help.

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use lambda_runtime::LambdaEvent;

use crate::domain::Stage;
use crate::pipeline::{PipelineError, Services, handle};

/// Processes one SQS batch for `stage`, returning the messages to redeliver.
pub async fn handle_batch(
    svc: &Services,
    stage: Stage,
    event: LambdaEvent<SqsEvent>,
) -> Result<SqsBatchResponse, lambda_runtime::Error> {
    let response = process(svc, stage, event.payload.records).await;
    super::emf::flush();
    response
}

async fn process(
    svc: &Services,
    stage: Stage,
    records: Vec<SqsMessage>,
) -> Result<SqsBatchResponse, lambda_runtime::Error> {
    let max_receives = svc.settings.max_receives;
    let running: Vec<_> = records
        .into_iter()
        .map(|record| {
            let svc = svc.clone();
            let receives: u32 = record
                .attributes
                .get("ApproximateReceiveCount")
                .and_then(|n| n.parse().ok())
                .unwrap_or(1);
            let work = tokio::spawn(async move {
                let body = record.body.unwrap_or_default();
                handle(&svc, stage, &body, receives >= max_receives).await
            });
            (record.message_id, receives, work)
        })
        .collect();

    let mut response = SqsBatchResponse::default();
    for (message_id, receives, work) in running {
        let outcome = work.await.unwrap_or_else(|panic| {
            Err(PipelineError::Retry(format!("handler panicked: {panic}")))
        });
        match outcome {
            Ok(()) => {}
            // Recorded on the job by `handle`; acknowledging keeps it out of the DLQ.
            Err(PipelineError::Fail(reason)) => {
                tracing::warn!(?stage, message_id, %reason, "message failed for good");
            }
            Err(PipelineError::Retry(reason)) => {
                tracing::warn!(?stage, message_id, receives, %reason, "message will be retried");
                match message_id {
                    Some(id) => response.add_failure(id),
                    // Without an id SQS cannot be told which one: the whole batch comes back,
                    // and idempotent steps make that safe.
                    None => return Err(format!("a message without id failed: {reason}").into()),
                }
            }
        }
    }
    Ok(response)
}
