//! `pai`'s queue consumers: the in-process counterpart of Lambda's SQS event sources. Each
//! message runs in its own task (a panic fails that message only), is deleted when handled or
//! failed for good, and released with exponential back-off when it may succeed later; the
//! queue dead-letters it after `MAX_RECEIVES` receives, exactly like an SQS redrive policy.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::adapters::local::SqliteQueue;
use crate::domain::Stage;
use crate::pipeline::{PipelineError, Services, handle};
use crate::ports::WorkQueue;

/// How long a received message stays hidden: far longer than any step takes.
pub const VISIBILITY: Duration = Duration::from_secs(300);
/// Fallback poll when no in-process send wakes the consumer (e.g. messages released later).
const IDLE_POLL: Duration = Duration::from_millis(500);

fn backoff(receive_count: u32) -> Duration {
    Duration::from_secs(2u64.saturating_pow(receive_count.min(6))).min(Duration::from_secs(60))
}

/// Consumes `queue` for `stage` with at most `concurrency` messages in flight, until `stop`.
pub async fn consume(
    svc: Services,
    queue: Arc<SqliteQueue>,
    stage: Stage,
    concurrency: usize,
    max_receives: u32,
    mut stop: watch::Receiver<bool>,
) {
    match queue.recover_in_flight().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            queue = queue.name(),
            messages = n,
            "resumed messages left in flight by a previous run"
        ),
        Err(e) => {
            tracing::error!(queue = queue.name(), error = %e, "could not resume messages left in flight")
        }
    }
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut running = JoinSet::new();
    loop {
        if *stop.borrow() {
            break;
        }
        while running.try_join_next().is_some() {}
        let free = permits.available_permits().min(10);
        if free == 0 {
            tokio::select! {
                _ = running.join_next() => {}
                _ = stop.changed() => {}
            }
            continue;
        }
        let batch = match queue.receive(free, VISIBILITY).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(queue = queue.name(), error = %e, "receive failed");
                tokio::time::sleep(IDLE_POLL).await;
                continue;
            }
        };
        if batch.is_empty() {
            tokio::select! {
                _ = queue.wait_ready() => {}
                _ = tokio::time::sleep(IDLE_POLL) => {}
                _ = stop.changed() => {}
            }
            continue;
        }
        for delivery in batch {
            let permit = permits
                .clone()
                .acquire_owned()
                .await
                .expect("semaphore open");
            let (svc, queue) = (svc.clone(), queue.clone());
            running.spawn(async move {
                let final_attempt = delivery.receive_count >= max_receives;
                let work = {
                    let svc = svc.clone();
                    let body = delivery.body.clone();
                    tokio::spawn(async move { handle(&svc, stage, &body, final_attempt).await })
                };
                let outcome = work.await.unwrap_or_else(|panic| Err(PipelineError::Retry(format!("handler panicked: {panic}"))));
                let ack = match &outcome {
                    Ok(()) | Err(PipelineError::Fail(_)) => queue.delete(&delivery.receipt).await,
                    Err(PipelineError::Retry(reason)) => {
                        tracing::warn!(queue = queue.name(), message_id = %delivery.message_id, receives = delivery.receive_count, %reason, "will retry");
                        queue.release(&delivery.receipt, backoff(delivery.receive_count)).await
                    }
                };
                if let Err(e) = ack {
                    tracing::error!(queue = queue.name(), error = %e, "could not acknowledge a message");
                }
                drop(permit);
            });
        }
    }
    while running.join_next().await.is_some() {}
}
