//! Ports that count what their calls would cost on AWS: each embedded adapter call is
//! counted as the request the AWS adapter makes for it (DynamoDB for the state store and the
//! cache, S3 for blobs, S3 Vectors for the index, SQS for sends), with the capacity units or
//! bytes AWS bills by. `scripts/cost.sh` prices the totals.
//!
//! Units follow the AWS adapters: a state or cache read is a strongly consistent GetItem
//! (1 read unit per 4 KB of item), a write 1 write unit per 1 KB, a counter increment an
//! UpdateItem (billed on the item's size; counted as 1 unit, the jobs it updates are small),
//! a list a Query (read units on the bytes returned), a send `ceil(n/10)` SendMessageBatch.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use shared::filter::Filter;
use shared::ports::{
    BlobStore, Cache, Condition, DeadLetters, Delivery, QueueConsumer, QueueSender, StateStore,
    StoreError, UploadTarget, VectorHit, VectorIndex, VectorRecord, Versioned, WorkQueue,
};

/// Totals by name (`dynamodb_read_units`, `s3_put_requests`, `s3_vectors_put_bytes`…).
#[derive(Default, Clone)]
pub struct Counts(Arc<Mutex<BTreeMap<&'static str, u64>>>);

impl Counts {
    fn add(&self, name: &'static str, n: u64) {
        *self.0.lock().unwrap().entry(name).or_default() += n;
    }

    pub fn get(&self, name: &str) -> u64 {
        self.0.lock().unwrap().get(name).copied().unwrap_or(0)
    }

    pub fn all(&self) -> BTreeMap<&'static str, u64> {
        self.0.lock().unwrap().clone()
    }
}

fn units(bytes: usize, unit: usize) -> u64 {
    bytes.div_ceil(unit).max(1) as u64
}

fn json_len(v: &Value) -> usize {
    serde_json::to_vec(v).map(|b| b.len()).unwrap_or(0)
}

/// A port with its calls counted.
pub struct Counted<P: ?Sized> {
    inner: Arc<P>,
    counts: Counts,
}

impl<P: ?Sized> Counted<P> {
    pub fn new(inner: Arc<P>, counts: &Counts) -> Arc<Counted<P>> {
        Arc::new(Counted {
            inner,
            counts: counts.clone(),
        })
    }
}

#[async_trait]
impl StateStore for Counted<dyn StateStore> {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        let r = self.inner.get(key).await?;
        let size = r.as_ref().map_or(0, |v| json_len(&v.value));
        self.counts.add("dynamodb_read_units", units(size, 4096));
        Ok(r)
    }
    async fn put(
        &self,
        key: &str,
        value: &Value,
        condition: Condition,
        expires_at: Option<i64>,
    ) -> Result<u64, StoreError> {
        self.counts
            .add("dynamodb_write_units", units(json_len(value), 1024));
        self.inner.put(key, value, condition, expires_at).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.counts.add("dynamodb_write_units", 1);
        self.inner.delete(key).await
    }
    async fn add(&self, key: &str, counter: &str, delta: i64) -> Result<i64, StoreError> {
        self.counts.add("dynamodb_write_units", 1);
        self.inner.add(key, counter, delta).await
    }
    async fn add_all(&self, key: &str, deltas: &[(&str, i64)]) -> Result<(), StoreError> {
        self.counts.add("dynamodb_write_units", 1);
        self.inner.add_all(key, deltas).await
    }
    async fn counters(&self, key: &str) -> Result<BTreeMap<String, i64>, StoreError> {
        self.counts.add("dynamodb_read_units", 1);
        self.inner.counters(key).await
    }
    async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Value)>, StoreError> {
        let r = self.inner.list(prefix, after, limit).await?;
        let size: usize = r.iter().map(|(k, v)| k.len() + json_len(v)).sum();
        self.counts.add("dynamodb_read_units", units(size, 4096));
        Ok(r)
    }
    async fn list_newest(
        &self,
        prefix: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Value)>, StoreError> {
        let r = self.inner.list_newest(prefix, before, limit).await?;
        let size: usize = r.iter().map(|(k, v)| k.len() + json_len(v)).sum();
        self.counts.add("dynamodb_read_units", units(size, 4096));
        Ok(r)
    }
}

#[async_trait]
impl Cache for Counted<dyn Cache> {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let r = self.inner.get(key).await?;
        let size = r.as_ref().map_or(0, Vec::len);
        self.counts.add("dynamodb_read_units", units(size, 4096));
        Ok(r)
    }
    async fn put(
        &self,
        key: &str,
        value: &[u8],
        expires_at: Option<i64>,
    ) -> Result<(), StoreError> {
        self.counts
            .add("dynamodb_write_units", units(key.len() + value.len(), 1024));
        self.counts
            .add("dynamodb_stored_bytes", (key.len() + value.len()) as u64);
        self.inner.put(key, value, expires_at).await
    }
}

#[async_trait]
impl BlobStore for Counted<dyn BlobStore> {
    async fn put(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.counts.add("s3_put_requests", 1);
        self.counts.add("s3_stored_bytes", bytes.len() as u64);
        self.inner.put(key, bytes).await
    }
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.counts.add("s3_get_requests", 1);
        self.inner.get(key).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        // DELETE requests are free on S3.
        self.inner.delete(key).await
    }
    fn direct_uploads(&self) -> bool {
        self.inner.direct_uploads()
    }
    async fn upload_url(
        &self,
        key: &str,
        content_type: &str,
        size: u64,
        expires: Duration,
    ) -> Result<Option<UploadTarget>, StoreError> {
        self.inner
            .upload_url(key, content_type, size, expires)
            .await
    }
}

/// What S3 Vectors bills a vector by: 4 bytes a dimension, its key and its metadata (the
/// chunk text and title travel as non-filterable metadata).
fn logical_bytes(r: &VectorRecord) -> u64 {
    (r.vector.len() * 4
        + r.key.len()
        + json_len(&Value::Object(r.metadata.clone()))
        + r.text.len()
        + r.title.len()) as u64
}

#[async_trait]
impl VectorIndex for Counted<dyn VectorIndex> {
    fn dimension(&self) -> usize {
        self.inner.dimension()
    }
    async fn put(&self, records: Vec<VectorRecord>) -> Result<(), StoreError> {
        self.counts.add("s3_vectors_put_requests", 1);
        let bytes: u64 = records.iter().map(logical_bytes).sum();
        self.counts.add("s3_vectors_put_bytes", bytes);
        self.inner.put(records).await
    }
    async fn delete(&self, keys: &[String]) -> Result<(), StoreError> {
        self.counts.add("s3_vectors_other_requests", 1);
        self.inner.delete(keys).await
    }
    async fn get(&self, keys: &[String]) -> Result<Vec<VectorRecord>, StoreError> {
        self.counts.add("s3_vectors_other_requests", 1);
        self.inner.get(keys).await
    }
    async fn query(
        &self,
        vector: &[f32],
        top_k: usize,
        filter: Option<&Filter>,
    ) -> Result<Vec<VectorHit>, StoreError> {
        self.counts.add("s3_vectors_query_requests", 1);
        self.inner.query(vector, top_k, filter).await
    }
    async fn keyword_query(
        &self,
        query: &str,
        top_k: usize,
        filter: Option<&Filter>,
    ) -> Result<Option<Vec<VectorRecord>>, StoreError> {
        self.inner.keyword_query(query, top_k, filter).await
    }
}

#[async_trait]
impl QueueSender for Counted<dyn WorkQueue> {
    async fn send(&self, bodies: &[String]) -> Result<(), StoreError> {
        if !bodies.is_empty() {
            self.counts
                .add("sqs_send_requests", bodies.len().div_ceil(10) as u64);
            self.counts.add("sqs_messages", bodies.len() as u64);
        }
        self.inner.send(bodies).await
    }
}

#[async_trait]
impl QueueConsumer for Counted<dyn WorkQueue> {
    async fn receive(&self, max: usize, visibility: Duration) -> Result<Vec<Delivery>, StoreError> {
        self.inner.receive(max, visibility).await
    }

    async fn delete(&self, receipt: &str) -> Result<(), StoreError> {
        self.inner.delete(receipt).await
    }

    async fn release(&self, receipt: &str, delay: Duration) -> Result<(), StoreError> {
        self.inner.release(receipt, delay).await
    }

    async fn defer(&self, message: &Delivery, delay: Duration) -> Result<(), StoreError> {
        self.inner.defer(message, delay).await
    }
}

#[async_trait]
impl DeadLetters for Counted<dyn WorkQueue> {
    async fn dead_letters(&self, limit: usize) -> Result<Vec<Delivery>, StoreError> {
        self.inner.dead_letters(limit).await
    }

    async fn delete_dead_letter(&self, receipt: &str) -> Result<(), StoreError> {
        self.inner.delete_dead_letter(receipt).await
    }
}
