//! A durable work queue in SQLite with the semantics of SQS: at-least-once delivery, a
//! visibility timeout per receive, a receive count, and dead-lettering once a message has been
//! received `max_receives` times without being deleted. Senders in the same process wake the
//! consumers at once, so an idle queue costs no polling latency.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::params;
use tokio::sync::Notify;

use super::{Db, sql};
use crate::ports::{DeadLetters, Delivery, QueueConsumer, QueueSender, StoreError};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS queue_messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    message_id TEXT NOT NULL UNIQUE,
    body TEXT NOT NULL,
    visible_at INTEGER NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    receipt TEXT,
    dead INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS queue_ready ON queue_messages (queue, dead, visible_at, seq);
";

/// Dead letters' receipts: never equal to a live receipt, so `delete` cannot take them.
const DEAD_RECEIPT: &str = "dead:";

/// The row a receipt (`{seq}:{uuid}`, see `receive`) names, so deleting or hiding a message
/// is a lookup by primary key, not a scan of every queued message (there is no index on
/// receipts). Anything else names no row.
fn receipt_seq(receipt: &str) -> i64 {
    receipt
        .split_once(':')
        .and_then(|(seq, _)| seq.parse().ok())
        .unwrap_or(-1)
}

fn dead_receipt(message_id: &str) -> String {
    format!("{DEAD_RECEIPT}{message_id}")
}

/// A queue as `/metrics` shows it (SQS's ApproximateNumberOfMessages and
/// ApproximateAgeOfOldestMessage, and its DLQ's depth, on AWS).
#[derive(Debug, Clone, PartialEq)]
pub struct QueueGauges {
    /// Messages waiting, delayed or in flight.
    pub depth: u64,
    pub dead_letters: u64,
    /// Since the oldest of those was sent; `None` when the queue is empty.
    pub oldest_age: Option<Duration>,
}

/// Milliseconds since an arbitrary epoch; injectable so tests can move time.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

pub struct SqliteQueue {
    db: Db,
    name: String,
    max_receives: u32,
    clock: Clock,
    ready: Arc<Notify>,
    /// Messages this process moved to the dead letters, not yet taken by `take_dead_lettered`.
    newly_dead: std::sync::Mutex<Vec<Delivery>>,
}

impl SqliteQueue {
    /// Opens the queue `name` in the database at `path`; a message received `max_receives`
    /// times without deletion goes to the dead letters on its next receive.
    pub fn open(path: &Path, name: &str, max_receives: u32) -> Result<SqliteQueue, StoreError> {
        Self::new(&Db::open(path)?, name, max_receives)
    }

    pub fn new(db: &Db, name: &str, max_receives: u32) -> Result<SqliteQueue, StoreError> {
        let clock: Clock = Arc::new(|| chrono::Utc::now().timestamp_millis());
        Self::with_clock(db, name, max_receives, clock)
    }

    pub fn with_clock(
        db: &Db,
        name: &str,
        max_receives: u32,
        clock: Clock,
    ) -> Result<SqliteQueue, StoreError> {
        db.apply(SCHEMA)?;
        Ok(SqliteQueue {
            db: db.clone(),
            name: name.to_string(),
            max_receives: max_receives.max(1),
            clock,
            ready: Arc::new(Notify::new()),
            newly_dead: Default::default(),
        })
    }

    /// Makes every message still in flight visible again: called when a process starts
    /// consuming, since the process that received them (and would delete them) is gone. Their
    /// receive counts stay, so a message that keeps crashing its consumer still dead-letters.
    pub async fn recover_in_flight(&self) -> Result<u64, StoreError> {
        let (name, now) = (self.name.clone(), (self.clock)());
        let n = self
            .db
            .call(move |c| {
                // Visible since time 0: first in line again (receives take the longest
                // visible first), as they were before the crash.
                c.prepare_cached("UPDATE queue_messages SET visible_at = 0, receipt = NULL WHERE queue = ?1 AND dead = 0 AND receipt IS NOT NULL AND visible_at > ?2").map_err(sql)?.execute(
                    params![name, now],
                )
                .map_err(sql)
            })
            .await?;
        if n > 0 {
            self.ready.notify_one();
        }
        Ok(n as u64)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The messages receives have moved to the dead letters since the last call, so the
    /// consumer can record their jobs as failed (a message that crashed its last receive
    /// never reaches a handler that could).
    pub fn take_dead_lettered(&self) -> Vec<Delivery> {
        std::mem::take(&mut *self.newly_dead.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Resolves when a message may have become available (a send in this process), or at once
    /// if one was sent since the last wait.
    pub async fn wait_ready(&self) {
        self.ready.notified().await
    }

    /// Makes a received message visible again after `delay`; `unreceived` also takes back
    /// the receive it cost (a deferral: it was not attempted). No longer in flight, so a
    /// restart's recovery leaves its back-off alone.
    async fn hide(
        &self,
        receipt: &str,
        delay: Duration,
        unreceived: bool,
    ) -> Result<(), StoreError> {
        let receipt = receipt.to_string();
        let visible_at = (self.clock)() + delay.as_millis() as i64;
        self.db
            .call(move |c| {
                c.prepare_cached(
                    "UPDATE queue_messages SET visible_at = ?2, receipt = NULL, \
                     receive_count = CASE WHEN ?3 THEN MAX(receive_count - 1, 0) ELSE receive_count END \
                     WHERE seq = ?4 AND receipt = ?1 AND dead = 0",
                )
                .and_then(|mut s| s.execute(params![receipt, visible_at, unreceived, receipt_seq(&receipt)]))
                .map_err(sql)?;
                Ok(())
            })
            .await?;
        if delay.is_zero() {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// What `/metrics` shows of this queue (see `QueueGauges`).
    pub async fn gauges(&self) -> Result<QueueGauges, StoreError> {
        let name = self.name.clone();
        let (depth, dead, oldest) = self
            .db
            .call(move |c| {
                c.query_row(
                    "SELECT COALESCE(SUM(dead = 0), 0), COALESCE(SUM(dead = 1), 0), \
                     (SELECT message_id FROM queue_messages WHERE queue = ?1 AND dead = 0 ORDER BY seq LIMIT 1) \
                     FROM queue_messages WHERE queue = ?1",
                    params![name],
                    |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, i64>(1)?,
                            r.get::<_, Option<String>>(2)?,
                        ))
                    },
                )
                .map_err(sql)
            })
            .await?;
        // Message ids are UUIDv7: the oldest live message's id carries the time it was sent.
        let oldest_age = oldest
            .and_then(|id| uuid::Uuid::parse_str(&id).ok())
            .and_then(|id| id.get_timestamp())
            .map(|t| {
                let (secs, nanos) = t.to_unix();
                let sent = std::time::UNIX_EPOCH + Duration::new(secs, nanos);
                std::time::SystemTime::now()
                    .duration_since(sent)
                    .unwrap_or_default()
            });
        Ok(QueueGauges {
            depth: depth as u64,
            dead_letters: dead as u64,
            oldest_age,
        })
    }

    /// Messages waiting or in flight (not dead).
    pub async fn depth(&self) -> Result<u64, StoreError> {
        let name = self.name.clone();
        self.db
            .call(move |c| {
                c.prepare_cached(
                    "SELECT COUNT(*) FROM queue_messages WHERE queue = ?1 AND dead = 0",
                )
                .map_err(sql)?
                .query_row(params![name], |r| r.get::<_, i64>(0))
                .map_err(sql)
            })
            .await
            .map(|n| n as u64)
    }
}

#[async_trait]
impl QueueSender for SqliteQueue {
    async fn send(&self, bodies: &[String]) -> Result<(), StoreError> {
        if bodies.is_empty() {
            return Ok(());
        }
        if let Some(b) = bodies.iter().find(|b| b.len() > 256 * 1024) {
            return Err(StoreError::Invalid(format!(
                "message of {} bytes exceeds 256 KiB",
                b.len()
            )));
        }
        let (name, bodies, now) = (self.name.clone(), bodies.to_vec(), (self.clock)());
        self.db
            .call(move |c| {
                super::in_savepoint(c, |tx| {
                    {
                        let mut stmt = tx.prepare_cached("INSERT INTO queue_messages (queue, message_id, body, visible_at) VALUES (?1, ?2, ?3, ?4)").map_err(sql)?;
                        for body in &bodies {
                            stmt.execute(params![name, uuid::Uuid::now_v7().to_string(), body, now]).map_err(sql)?;
                        }
                    }
                    Ok(())
                })
            })
            .await?;
        self.ready.notify_waiters();
        self.ready.notify_one();
        Ok(())
    }
}

#[async_trait]
impl QueueConsumer for SqliteQueue {
    async fn receive(&self, max: usize, visibility: Duration) -> Result<Vec<Delivery>, StoreError> {
        if !(1..=10).contains(&max) {
            return Err(StoreError::Invalid(format!(
                "receive takes 1 to 10 messages, not {max}"
            )));
        }
        let (name, now, max_receives) = (self.name.clone(), (self.clock)(), self.max_receives);
        let hidden_until = now + visibility.as_millis() as i64;
        let (out, dead) = self.db
            .call(move |c| {
                super::in_savepoint(c, |tx| {
                    let mut out = Vec::new();
                    let mut dead = Vec::new();
                    {
                        let mut pick = tx
                            // Longest visible first, in the index's own order: ordering by `seq` sorted
                        // every visible message on every receive (a burst queues thousands).
                        .prepare_cached("SELECT seq, message_id, body, receive_count FROM queue_messages WHERE queue = ?1 AND dead = 0 AND visible_at <= ?2 ORDER BY visible_at, seq LIMIT ?3")
                            .map_err(sql)?;
                        let rows: Vec<(i64, String, String, u32)> = pick
                            .query_map(params![name, now, (max * 2) as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                            .map_err(sql)?
                            .collect::<Result<_, _>>()
                            .map_err(sql)?;
                        for (seq, message_id, body, count) in rows {
                            if count >= max_receives {
                                tx.prepare_cached("UPDATE queue_messages SET dead = 1, receipt = NULL WHERE seq = ?1").map_err(sql)?.execute(params![seq]).map_err(sql)?;
                                tracing::warn!(queue = %name, %message_id, receives = count, "message moved to the dead-letter queue");
                                dead.push(Delivery { receipt: dead_receipt(&message_id), message_id, body, receive_count: count });
                                continue;
                            }
                            if out.len() == max {
                                break;
                            }
                            let receipt = format!("{seq}:{}", uuid::Uuid::now_v7());
                            tx.prepare_cached("UPDATE queue_messages SET receive_count = receive_count + 1, visible_at = ?2, receipt = ?3 WHERE seq = ?1").map_err(sql)?.execute(params![seq, hidden_until, receipt])
                                .map_err(sql)?;
                            out.push(Delivery { message_id, receipt, body, receive_count: count + 1 });
                        }
                    }
                    Ok((out, dead))
                })
            })
            .await?;
        if !dead.is_empty() {
            self.newly_dead
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(dead);
        }
        Ok(out)
    }

    async fn delete(&self, receipt: &str) -> Result<(), StoreError> {
        let receipt = receipt.to_string();
        self.db
            .call(move |c| {
                c.prepare_cached(
                    "DELETE FROM queue_messages WHERE seq = ?2 AND receipt = ?1 AND dead = 0",
                )
                .map_err(sql)?
                .execute(params![receipt, receipt_seq(&receipt)])
                .map_err(sql)?;
                Ok(())
            })
            .await
    }

    async fn release(&self, receipt: &str, delay: Duration) -> Result<(), StoreError> {
        self.hide(receipt, delay, false).await
    }

    async fn defer(&self, message: &Delivery, delay: Duration) -> Result<(), StoreError> {
        self.hide(&message.receipt, delay, true).await
    }
}

#[async_trait]
impl DeadLetters for SqliteQueue {
    async fn dead_letters(&self, limit: usize) -> Result<Vec<Delivery>, StoreError> {
        let name = self.name.clone();
        self.db
            .call(move |c| {
                let mut stmt = c.prepare_cached("SELECT message_id, body, receive_count FROM queue_messages WHERE queue = ?1 AND dead = 1 ORDER BY seq LIMIT ?2").map_err(sql)?;
                let rows = stmt
                    .query_map(params![name, limit as i64], |r| {
                        let message_id: String = r.get(0)?;
                        Ok(Delivery { receipt: dead_receipt(&message_id), message_id, body: r.get(1)?, receive_count: r.get(2)? })
                    })
                    .map_err(sql)?;
                rows.collect::<Result<_, _>>().map_err(sql)
            })
            .await
    }

    async fn delete_dead_letter(&self, receipt: &str) -> Result<(), StoreError> {
        let Some(message_id) = receipt.strip_prefix(DEAD_RECEIPT) else {
            return Err(StoreError::Invalid(format!(
                "{receipt:?} is not a dead letter's receipt"
            )));
        };
        let (name, message_id) = (self.name.clone(), message_id.to_string());
        self.db
            .call(move |c| {
                c.prepare_cached(
                    "DELETE FROM queue_messages WHERE queue = ?1 AND message_id = ?2 AND dead = 1",
                )
                .map_err(sql)?
                .execute(params![name, message_id])
                .map_err(sql)?;
                Ok(())
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicI64, Ordering};

    use super::*;

    #[tokio::test]
    async fn visibility_timeout_hides_until_it_expires() {
        let dir = tempfile::tempdir().unwrap();
        let now = Arc::new(AtomicI64::new(1_000));
        let t = now.clone();
        let q = SqliteQueue::with_clock(
            &Db::open(&dir.path().join("q.db")).unwrap(),
            "work",
            3,
            Arc::new(move || t.load(Ordering::SeqCst)),
        )
        .unwrap();
        q.send(&["a".into()]).await.unwrap();
        let first = q.receive(10, Duration::from_secs(30)).await.unwrap();
        assert_eq!(first.len(), 1);
        now.fetch_add(29_999, Ordering::SeqCst);
        assert!(
            q.receive(10, Duration::from_secs(30))
                .await
                .unwrap()
                .is_empty(),
            "still hidden"
        );
        now.fetch_add(1, Ordering::SeqCst);
        let again = q.receive(10, Duration::from_secs(30)).await.unwrap();
        assert_eq!(again[0].receive_count, 2);
        q.delete(&first[0].receipt).await.unwrap();
        assert_eq!(
            q.depth().await.unwrap(),
            1,
            "a stale receipt deletes nothing"
        );
        q.delete(&again[0].receipt).await.unwrap();
        assert_eq!(q.depth().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn gauges_count_live_and_dead_messages_and_age_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let q = SqliteQueue::new(&Db::open(&dir.path().join("q.db")).unwrap(), "work", 1).unwrap();
        let empty = q.gauges().await.unwrap();
        assert_eq!(
            (empty.depth, empty.dead_letters, empty.oldest_age),
            (0, 0, None)
        );
        q.send(&["a".into(), "b".into(), "c".into()]).await.unwrap();
        // One receive of a message allowed one: the next receive dead-letters it.
        q.receive(1, Duration::from_secs(0)).await.unwrap();
        q.receive(10, Duration::from_secs(30)).await.unwrap();
        let g = q.gauges().await.unwrap();
        assert_eq!((g.depth, g.dead_letters), (2, 1), "{g:?}");
        let age = g.oldest_age.expect("an oldest message");
        assert!(age < Duration::from_secs(60), "{age:?}");
    }

    #[tokio::test]
    async fn a_new_process_resumes_messages_left_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.db");
        {
            let crashed = SqliteQueue::open(&path, "work", 3).unwrap();
            crashed.send(&["a".into(), "b".into()]).await.unwrap();
            assert_eq!(
                crashed
                    .receive(1, Duration::from_secs(300))
                    .await
                    .unwrap()
                    .len(),
                1
            );
        }
        let q = SqliteQueue::open(&path, "work", 3).unwrap();
        assert_eq!(q.recover_in_flight().await.unwrap(), 1);
        let all = q.receive(10, Duration::from_secs(300)).await.unwrap();
        let counts: Vec<(String, u32)> =
            all.into_iter().map(|d| (d.body, d.receive_count)).collect();
        assert_eq!(counts, [("a".to_string(), 2), ("b".to_string(), 1)]);
    }
}
