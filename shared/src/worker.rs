//! `pai`'s queue consumers: the in-process counterpart of Lambda's SQS event sources. Each
//! message runs in its own task (a panic fails that message only), is deleted when handled or
//! failed for good, released with a back-off growing to hours when it may succeed later, and
//! deferred without counting a receive when an open circuit breaker refused it (see
//! `pipeline::healing`); the queue dead-letters it after `MAX_RECEIVES` receives, exactly like
//! an SQS redrive policy, and the consumer then fails its job with the reason.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::adapters::local::SqliteQueue;
use crate::domain::Stage;
use crate::pipeline::{PipelineError, Services, handle, healing};
use crate::ports::{Delivery, QueueConsumer};

/// How long a received message stays hidden: far longer than any step takes.
pub const VISIBILITY: Duration = Duration::from_secs(300);
/// Fallback poll when no in-process send wakes the consumer (e.g. messages released later).
const IDLE_POLL: Duration = Duration::from_millis(500);

/// Handles one received message and settles it (delete, release with back-off, or defer), as
/// every consumer does; the handler runs in its own task, so a panic fails this message only.
pub async fn process(
    svc: &Services,
    queue: &SqliteQueue,
    stage: Stage,
    delivery: &Delivery,
    max_receives: u32,
) {
    let final_attempt = delivery.receive_count >= max_receives;
    let work = {
        let svc = svc.clone();
        let body = delivery.body.clone();
        tokio::spawn(async move { handle(&svc, stage, &body, final_attempt).await })
    };
    let outcome = work
        .await
        .unwrap_or_else(|panic| Err(PipelineError::Retry(format!("handler panicked: {panic}"))));
    let settlement = healing::settle(&outcome, delivery.receive_count);
    match (&outcome, settlement) {
        (Err(_), healing::Settlement::Delete) | (Ok(()), _) => {}
        // Waiting for a breaker or another job's lease is expected, not a failure.
        (Err(reason), healing::Settlement::Defer(_)) => {
            tracing::info!(queue = queue.name(), message_id = %delivery.message_id, ?settlement, %reason, "will retry");
        }
        (Err(reason), _) => {
            tracing::warn!(queue = queue.name(), message_id = %delivery.message_id, receives = delivery.receive_count, ?settlement, %reason, "will retry");
        }
    }
    if let Err(e) = healing::apply(queue, delivery, settlement).await {
        tracing::error!(queue = queue.name(), error = %e, "could not acknowledge a message");
    }
}

/// Fails the jobs of the messages the queue has dead-lettered since the last call.
pub async fn note_dead_lettered(svc: &Services, queue: &SqliteQueue, stage: Stage) {
    for d in queue.take_dead_lettered() {
        if let Err(e) =
            healing::dead_lettered(svc, &svc.writer, stage, &d.body, d.receive_count).await
        {
            tracing::error!(queue = queue.name(), error = %e, "could not fail the job of a dead letter");
        }
    }
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
    // Dead letters of earlier runs (a crash may have come between dead-lettering a message and
    // failing its job): noted again, which changes nothing for jobs already failed.
    if let Err(e) = healing::note_dead_letters(&svc, &svc.writer, stage, queue.as_ref()).await {
        tracing::error!(queue = queue.name(), error = %e, "could not check the dead letters");
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
        note_dead_lettered(&svc, &queue, stage).await;
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
                process(&svc, queue.as_ref(), stage, &delivery, max_receives).await;
                drop(permit);
            });
        }
    }
    while running.join_next().await.is_some() {}
}
