//! The vector index on Amazon S3 Vectors (cosine, float32). Metadata sent with each vector is
//! the record's filterable metadata plus `text` and `title`, which the index is created with as
//! non-filterable keys (so the chunk text is returned with hits, never filtered on and not
//! billed as data processed); reads take those two back out into the record. Limits are
//! checked before any call by `vector_checks`, as in the embedded index, so a refused put
//! writes nothing.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_s3vectors::Client;
use aws_sdk_s3vectors::types::{
    GetOutputVector, IndexMode, PutInputVector, QueryOutputVector, VectorData,
};
use aws_smithy_types::Document;
use serde_json::{Map, Value};

use super::super::vector_checks as check;
use super::store_error;
use crate::filter::Filter;
use crate::ports::{StoreError, VectorHit, VectorIndex, VectorRecord};
use crate::smithy_json::{to_document, to_json_map};

/// The non-filterable metadata keys the index must be created with.
pub const NON_FILTERABLE_KEYS: [&str; 2] = ["text", "title"];

pub struct S3VectorIndex {
    client: Client,
    vector_bucket: String,
    index: String,
    dimension: usize,
}

impl S3VectorIndex {
    pub fn new(
        client: Client,
        vector_bucket: impl Into<String>,
        index: impl Into<String>,
        dimension: usize,
    ) -> S3VectorIndex {
        S3VectorIndex {
            client,
            vector_bucket: vector_bucket.into(),
            index: index.into(),
            dimension,
        }
    }

    /// The record as S3 Vectors takes it, or why S3 Vectors would refuse it.
    fn to_input(&self, r: &VectorRecord) -> Result<PutInputVector, StoreError> {
        check::record(r, self.dimension)?;
        if let Some(k) = NON_FILTERABLE_KEYS
            .iter()
            .find(|k| r.metadata.contains_key(**k))
        {
            return Err(StoreError::Invalid(format!(
                "metadata key {k} of {} is reserved for the non-filterable field",
                r.key
            )));
        }
        let mut metadata = r.metadata.clone();
        metadata.insert("text".into(), Value::String(r.text.clone()));
        metadata.insert("title".into(), Value::String(r.title.clone()));
        PutInputVector::builder()
            .key(&r.key)
            .data(VectorData::Float32(r.vector.clone()))
            .metadata(to_document(&Value::Object(metadata)))
            .build()
            .map_err(|e| StoreError::Invalid(format!("vector {}: {e}", r.key)))
    }
}

/// Splits stored metadata into the filterable part and the non-filterable text and title.
fn split_metadata(doc: Option<&Document>) -> (Map<String, Value>, String, String) {
    let mut metadata = match doc {
        Some(Document::Object(map)) => to_json_map(map.iter()),
        _ => Map::new(),
    };
    let mut take = |k: &str| match metadata.remove(k) {
        Some(Value::String(s)) => s,
        _ => String::new(),
    };
    let (text, title) = (take("text"), take("title"));
    (metadata, text, title)
}

fn record_of(v: GetOutputVector) -> VectorRecord {
    let (metadata, text, title) = split_metadata(v.metadata.as_ref());
    let vector = match v.data {
        Some(VectorData::Float32(f)) => f,
        _ => Vec::new(),
    };
    VectorRecord {
        key: v.key,
        vector,
        metadata,
        text,
        title,
    }
}

/// A hit: S3 Vectors returns no vector data with query results, so `record.vector` is empty.
fn hit_of(v: QueryOutputVector) -> VectorHit {
    let (metadata, text, title) = split_metadata(v.metadata.as_ref());
    VectorHit {
        distance: v.distance.unwrap_or(f32::MAX).max(0.0),
        record: VectorRecord {
            key: v.key,
            vector: Vec::new(),
            metadata,
            text,
            title,
        },
    }
}

#[async_trait]
impl VectorIndex for S3VectorIndex {
    fn dimension(&self) -> usize {
        self.dimension
    }

    async fn put(&self, records: Vec<VectorRecord>) -> Result<(), StoreError> {
        check::put_count(records.len())?;
        if records.is_empty() {
            return Ok(());
        }
        let inputs = records
            .iter()
            .map(|r| self.to_input(r))
            .collect::<Result<Vec<_>, _>>()?;
        self.client
            .put_vectors()
            .vector_bucket_name(&self.vector_bucket)
            .index_name(&self.index)
            .set_vectors(Some(inputs))
            .send()
            .await
            .map_err(|e| store_error("S3 Vectors PutVectors", e))?;
        Ok(())
    }

    async fn delete(&self, keys: &[String]) -> Result<(), StoreError> {
        check::delete_count(keys.len())?;
        if keys.is_empty() {
            return Ok(());
        }
        // Keys that are not there are no error: deleting is idempotent.
        self.client
            .delete_vectors()
            .vector_bucket_name(&self.vector_bucket)
            .index_name(&self.index)
            .set_keys(Some(keys.to_vec()))
            .send()
            .await
            .map_err(|e| store_error("S3 Vectors DeleteVectors", e))?;
        Ok(())
    }

    async fn get(&self, keys: &[String]) -> Result<Vec<VectorRecord>, StoreError> {
        check::get_count(keys.len())?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let out = self
            .client
            .get_vectors()
            .vector_bucket_name(&self.vector_bucket)
            .index_name(&self.index)
            .set_keys(Some(keys.to_vec()))
            .return_data(true)
            .return_metadata(true)
            .send()
            .await
            .map_err(|e| store_error("S3 Vectors GetVectors", e))?;
        // In the order asked for; keys that are not there are left out.
        let mut found: HashMap<String, VectorRecord> = out
            .vectors
            .into_iter()
            .map(|v| (v.key.clone(), record_of(v)))
            .collect();
        Ok(keys.iter().filter_map(|k| found.remove(k)).collect())
    }

    async fn query(
        &self,
        vector: &[f32],
        top_k: usize,
        filter: Option<&Filter>,
    ) -> Result<Vec<VectorHit>, StoreError> {
        check::top_k(top_k)?;
        check::vector("query", vector, self.dimension)?;
        let mut hits = Vec::new();
        let mut next_token = None;
        // Every page is asked with the same vector, top-k, filter and mode, as the API
        // requires for a token; a bounded number of pages guards against a token loop.
        for _ in 0..=top_k {
            let out = self
                .client
                .query_vectors()
                .vector_bucket_name(&self.vector_bucket)
                .index_name(&self.index)
                .top_k(top_k as i32)
                .query_vector(VectorData::Float32(vector.to_vec()))
                .set_filter(filter.map(|f| to_document(&f.to_json())))
                // Filter first, then nearest neighbours, whatever mode the index was created
                // in (older indexes default to CLASSIC, which filters during the search and
                // can return fewer than top-k; only ENHANCED knows `$startsWith`).
                .query_mode(IndexMode::Enhanced)
                .return_metadata(true)
                .return_distance(true)
                .set_next_token(next_token.take())
                .send()
                .await
                .map_err(|e| store_error("S3 Vectors QueryVectors", e))?;
            hits.extend(out.vectors.into_iter().map(hit_of));
            match out.next_token {
                Some(t) if hits.len() < top_k && !t.is_empty() => next_token = Some(t),
                _ => break,
            }
        }
        hits.sort_by(|a, b| a.distance.total_cmp(&b.distance));
        hits.truncate(top_k);
        Ok(hits)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use aws_sdk_s3vectors::operation::query_vectors::QueryVectorsOutput;
    use aws_smithy_mocks::{RuleMode, mock, mock_client};
    use serde_json::json;

    use super::*;

    fn hit(key: &str, distance: f32) -> QueryOutputVector {
        QueryOutputVector::builder()
            .key(key)
            .distance(distance)
            .build()
            .unwrap()
    }

    /// What the mock saw of one QueryVectors call: top-k, page token, mode, filter given.
    type SeenQuery = (Option<i32>, Option<String>, Option<IndexMode>, bool);

    /// A filtered query pages its results: every page is asked with the same top-k, filter
    /// and ENHANCED mode and the previous page's token, until no token comes back.
    #[tokio::test]
    async fn queries_are_enhanced_and_follow_every_page() {
        let seen: Arc<Mutex<Vec<SeenQuery>>> = Arc::default();
        let log = seen.clone();
        let record = move |r: &aws_sdk_s3vectors::operation::query_vectors::QueryVectorsInput| {
            log.lock().unwrap().push((
                r.top_k(),
                r.next_token().map(str::to_string),
                r.query_mode().cloned(),
                r.filter().is_some(),
            ));
            true
        };
        let (r1, r2) = (record.clone(), record.clone());
        let first = mock!(aws_sdk_s3vectors::Client::query_vectors)
            .match_requests(move |r| r.next_token().is_none() && r1(r))
            .then_output(|| {
                QueryVectorsOutput::builder()
                    .vectors(hit("a", 0.1))
                    .vectors(hit("b", 0.2))
                    .next_token("page-2")
                    .build()
                    .unwrap()
            });
        let second = mock!(aws_sdk_s3vectors::Client::query_vectors)
            .match_requests(move |r| r.next_token() == Some("page-2") && r2(r))
            .then_output(|| {
                QueryVectorsOutput::builder()
                    .vectors(hit("c", 0.15))
                    .build()
                    .unwrap()
            });
        let client = mock_client!(aws_sdk_s3vectors, RuleMode::MatchAny, [&first, &second]);
        let index = S3VectorIndex::new(client, "vb", "chunks-v1", 2);
        let filter = Filter::parse(&json!({"doc_id": {"$startsWith": "1"}})).unwrap();
        let hits = index.query(&[1.0, 0.0], 5, Some(&filter)).await.unwrap();
        assert_eq!(
            hits.iter()
                .map(|h| h.record.key.as_str())
                .collect::<Vec<_>>(),
            ["a", "c", "b"],
            "all pages, nearest first"
        );
        let seen = seen.lock().unwrap();
        assert_eq!(
            *seen,
            [
                (Some(5), None, Some(IndexMode::Enhanced), true),
                (
                    Some(5),
                    Some("page-2".into()),
                    Some(IndexMode::Enhanced),
                    true
                ),
            ]
        );
    }

    /// A server that keeps handing out tokens cannot keep the query looping.
    #[tokio::test]
    async fn an_endless_token_stops_after_a_bounded_number_of_pages() {
        let endless = mock!(aws_sdk_s3vectors::Client::query_vectors).then_output(|| {
            QueryVectorsOutput::builder()
                .set_vectors(Some(vec![]))
                .next_token("again")
                .build()
                .unwrap()
        });
        let client = mock_client!(aws_sdk_s3vectors, RuleMode::MatchAny, [&endless]);
        let index = S3VectorIndex::new(client, "vb", "chunks-v1", 2);
        let hits = index.query(&[1.0, 0.0], 3, None).await.unwrap();
        assert!(hits.is_empty());
        assert_eq!(endless.num_calls(), 4);
    }
}
