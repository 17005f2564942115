//! Work queues on SQS (chunk, embed, tag), each with its dead-letter queue: sends in batches of
//! ten, receives with the receive count, releases by changing visibility, and peeks at the
//! dead letters without taking them.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{
    Message, MessageAttributeValue, MessageSystemAttributeName, SendMessageBatchRequestEntry,
};
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use super::store_error;
use crate::ports::{DeadLetters, Delivery, QueueConsumer, QueueSender, StoreError};

/// SQS's limits: messages per batch call, bytes per message and per batch.
const MAX_BATCH: usize = 10;
const MAX_BYTES: usize = 256 * 1024;
/// SQS's longest visibility timeout (12 hours).
const MAX_VISIBILITY_SECS: u64 = 43_200;
/// SQS's longest delivery delay of a message (15 minutes).
const MAX_DELAY_SECS: i32 = 900;
/// Receipts remembered per process before the memory is dropped (see `Receipts`).
const MAX_REMEMBERED: usize = 10_000;

pub struct SqsQueue {
    client: Client,
    queue_url: String,
    dead_letter_url: Option<String>,
    receipts: Mutex<Receipts>,
}

/// The receipts this queue handed out, so a stale one (its message was received again since)
/// is ignored as the port promises. SQS itself only says a stale receipt's delete "might not"
/// delete (and moto always deletes), so only this process's own redeliveries can be told
/// apart; receipts from other processes are passed to SQS as they are. Bounded: once too many
/// are remembered (messages received but never deleted here), the memory starts afresh.
#[derive(Default)]
struct Receipts {
    latest: HashMap<String, String>,
    message_of: HashMap<String, String>,
    superseded: HashSet<String>,
}

impl Receipts {
    fn received(&mut self, message_id: &str, receipt: &str) {
        if self.message_of.len() + self.superseded.len() >= MAX_REMEMBERED {
            *self = Receipts::default();
        }
        if let Some(old) = self.latest.insert(message_id.into(), receipt.into()) {
            self.superseded.insert(old);
        }
        self.message_of.insert(receipt.into(), message_id.into());
    }

    fn is_stale(&self, receipt: &str) -> bool {
        self.superseded.contains(receipt)
    }

    /// Forgets a message once deleted.
    fn deleted(&mut self, receipt: &str) {
        if let Some(id) = self.message_of.remove(receipt) {
            self.latest.remove(&id);
            self.message_of.retain(|_, m| *m != id);
        }
    }
}

impl SqsQueue {
    pub fn new(
        client: Client,
        queue_url: impl Into<String>,
        dead_letter_url: Option<String>,
    ) -> SqsQueue {
        SqsQueue {
            client,
            queue_url: queue_url.into(),
            dead_letter_url,
            receipts: Mutex::new(Receipts::default()),
        }
    }

    fn receipts(&self) -> std::sync::MutexGuard<'_, Receipts> {
        // The map stays consistent even if a holder panicked: each update is one statement.
        self.receipts.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn send_batch(&self, batch: &[String]) -> Result<(), StoreError> {
        let sent_by = MessageAttributeValue::builder()
            .data_type("String")
            .string_value("pai")
            .build()
            .map_err(|e| StoreError::Invalid(format!("SQS message attribute: {e}")))?;
        let entries = batch
            .iter()
            .enumerate()
            .map(|(i, body)| {
                SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(body)
                    .message_attributes("sent_by", sent_by.clone())
                    .build()
                    .map_err(|e| StoreError::Invalid(format!("SQS batch entry: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let out = self
            .client
            .send_message_batch()
            .queue_url(&self.queue_url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| store_error("SQS SendMessageBatch", e))?;
        if out.failed.is_empty() {
            return Ok(());
        }
        let named: Vec<String> = out
            .failed
            .iter()
            .map(|f| {
                let n: usize = f.id.parse().unwrap_or(usize::MAX);
                let head: String = batch
                    .get(n)
                    .map(|b| b.chars().take(60).collect())
                    .unwrap_or_default();
                format!(
                    "#{} {:?} ({}: {})",
                    f.id,
                    head,
                    f.code,
                    f.message.as_deref().unwrap_or("")
                )
            })
            .collect();
        let detail = format!(
            "SQS SendMessageBatch: {} of {} messages not sent: {}",
            out.failed.len(),
            batch.len(),
            named.join("; ")
        );
        // Our fault (bad body) will not get better by retrying; theirs might.
        Err(if out.failed.iter().all(|f| f.sender_fault) {
            StoreError::Invalid(detail)
        } else {
            StoreError::Unavailable(detail)
        })
    }

    async fn receive_from(
        &self,
        url: &str,
        max: usize,
        visibility_secs: i32,
    ) -> Result<Vec<Message>, StoreError> {
        let out = self
            .client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(max as i32)
            .visibility_timeout(visibility_secs)
            // No long polling: callers poll on their own schedule and tests stay fast.
            .wait_time_seconds(0)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .send()
            .await
            .map_err(|e| store_error("SQS ReceiveMessage", e))?;
        Ok(out.messages.unwrap_or_default())
    }
}

fn delivery(m: Message) -> Result<(Delivery, i64), StoreError> {
    let attribute = |name: MessageSystemAttributeName| {
        m.attributes
            .as_ref()
            .and_then(|a| a.get(&name))
            .and_then(|v| v.parse::<i64>().ok())
    };
    let receive_count = attribute(MessageSystemAttributeName::ApproximateReceiveCount).unwrap_or(1);
    let sent = attribute(MessageSystemAttributeName::SentTimestamp).unwrap_or_default();
    let (Some(message_id), Some(receipt)) = (m.message_id, m.receipt_handle) else {
        return Err(StoreError::Unavailable(
            "SQS ReceiveMessage returned a message without id or receipt".into(),
        ));
    };
    Ok((
        Delivery {
            message_id,
            receipt,
            body: m.body.unwrap_or_default(),
            receive_count: u32::try_from(receive_count).unwrap_or(1),
        },
        sent,
    ))
}

/// Seconds for SQS from a duration: rounded up (never shorter than asked), at most 12 hours.
fn seconds(d: Duration) -> i32 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    s.min(MAX_VISIBILITY_SECS) as i32
}

/// Whether SQS refused a receipt because its message is gone or no longer in flight.
fn receipt_gone<E: ProvideErrorMetadata>(e: &E) -> bool {
    e.code()
        .is_some_and(|c| c.contains("ReceiptHandleIsInvalid") || c.contains("MessageNotInflight"))
}

#[async_trait]
impl QueueSender for SqsQueue {
    async fn send(&self, bodies: &[String]) -> Result<(), StoreError> {
        if let Some(b) = bodies.iter().find(|b| b.len() > MAX_BYTES) {
            return Err(StoreError::Invalid(format!(
                "message of {} bytes exceeds 256 KiB",
                b.len()
            )));
        }
        // Batches keep the order; each holds ≤ 10 messages and ≤ 256 KiB in all.
        let mut start = 0;
        while start < bodies.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < bodies.len()
                && end - start < MAX_BATCH
                && bytes + bodies[end].len() <= MAX_BYTES
            {
                bytes += bodies[end].len();
                end += 1;
            }
            self.send_batch(&bodies[start..end]).await?;
            start = end;
        }
        Ok(())
    }
}

#[async_trait]
impl QueueConsumer for SqsQueue {
    async fn receive(&self, max: usize, visibility: Duration) -> Result<Vec<Delivery>, StoreError> {
        if !(1..=MAX_BATCH).contains(&max) {
            return Err(StoreError::Invalid(format!(
                "receive takes 1 to 10 messages, not {max}"
            )));
        }
        let messages = self
            .receive_from(&self.queue_url, max, seconds(visibility))
            .await?;
        let mut out = Vec::with_capacity(messages.len());
        for m in messages {
            let (d, _) = delivery(m)?;
            self.receipts().received(&d.message_id, &d.receipt);
            out.push(d);
        }
        Ok(out)
    }

    async fn delete(&self, receipt: &str) -> Result<(), StoreError> {
        if self.receipts().is_stale(receipt) {
            tracing::debug!("stale receipt: the message was received again since; not deleted");
            return Ok(());
        }
        match self
            .client
            .delete_message()
            .queue_url(&self.queue_url)
            .receipt_handle(receipt)
            .send()
            .await
        {
            Ok(_) => {}
            Err(e) if e.as_service_error().is_some_and(receipt_gone) => {
                tracing::debug!(error = %store_error("SQS DeleteMessage", e), "receipt no longer valid; ignored");
            }
            Err(e) => return Err(store_error("SQS DeleteMessage", e)),
        }
        self.receipts().deleted(receipt);
        Ok(())
    }

    async fn release(&self, receipt: &str, delay: Duration) -> Result<(), StoreError> {
        if self.receipts().is_stale(receipt) {
            return Ok(());
        }
        match self
            .client
            .change_message_visibility()
            .queue_url(&self.queue_url)
            .receipt_handle(receipt)
            .visibility_timeout(seconds(delay))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            // Already deleted or redelivered: nothing of ours left to release.
            Err(e) if e.as_service_error().is_some_and(receipt_gone) => Ok(()),
            Err(e) => Err(store_error("SQS ChangeMessageVisibility", e)),
        }
    }

    /// SQS cannot undo a receive: a copy goes out with a delay (at most SQS's 15 minutes; it
    /// is deferred again if still too early) and the original is deleted. A crash between the
    /// two leaves a duplicate, which idempotent steps absorb.
    async fn defer(&self, message: &Delivery, delay: Duration) -> Result<(), StoreError> {
        self.client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(&message.body)
            .delay_seconds(seconds(delay).min(MAX_DELAY_SECS))
            .send()
            .await
            .map_err(|e| store_error("SQS SendMessage", e))?;
        self.delete(&message.receipt).await
    }
}

#[async_trait]
impl DeadLetters for SqsQueue {
    async fn delete_dead_letter(&self, receipt: &str) -> Result<(), StoreError> {
        let Some(url) = self.dead_letter_url.as_deref() else {
            return Err(StoreError::Invalid(
                "this queue has no dead-letter queue configured".into(),
            ));
        };
        match self
            .client
            .delete_message()
            .queue_url(url)
            .receipt_handle(receipt)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().is_some_and(receipt_gone) => Ok(()),
            Err(e) => Err(store_error("SQS DeleteMessage (dead letter)", e)),
        }
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<Delivery>, StoreError> {
        let Some(url) = self.dead_letter_url.as_deref() else {
            return Ok(Vec::new());
        };
        // Peek: visibility 0 leaves each message where it is. SQS returns a sample per call,
        // so keep asking until a round brings nothing new (bounded, as the sample may repeat).
        let mut seen = HashSet::new();
        let mut found = Vec::new();
        for _ in 0..limit.div_ceil(MAX_BATCH) + 2 {
            if found.len() >= limit {
                break;
            }
            let want = (limit - found.len()).min(MAX_BATCH);
            let mut fresh = false;
            for m in self.receive_from(url, want, 0).await? {
                let (mut d, sent) = delivery(m)?;
                if seen.insert(d.message_id.clone()) {
                    fresh = true;
                    // The receipt belongs to the dead-letter queue: for `delete_dead_letter`.
                    found.push((sent, d));
                } else if let Some((_, earlier)) =
                    found.iter_mut().find(|(_, e)| e.message_id == d.message_id)
                {
                    // SQS honours only a message's latest receipt.
                    earlier.receipt = std::mem::take(&mut d.receipt);
                }
            }
            if !fresh {
                break;
            }
        }
        found.sort_by_key(|(sent, _)| *sent);
        Ok(found.into_iter().take(limit).map(|(_, d)| d).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_later_receipt_supersedes_the_earlier_one() {
        let mut r = Receipts::default();
        r.received("m1", "r1");
        assert!(!r.is_stale("r1"));
        r.received("m1", "r2");
        assert!(r.is_stale("r1") && !r.is_stale("r2"));
        r.deleted("r2");
        assert!(r.latest.is_empty() && r.message_of.is_empty());
    }

    #[test]
    fn visibility_rounds_up_and_is_capped() {
        assert_eq!(seconds(Duration::ZERO), 0);
        assert_eq!(seconds(Duration::from_millis(1)), 1);
        assert_eq!(seconds(Duration::from_secs(30)), 30);
        assert_eq!(seconds(Duration::from_secs(100_000)), 43_200);
    }
}
