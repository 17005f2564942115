//! Prompt and embedding cache on a DynamoDB table with TTL: `pk` (S, hash), `value` (B, the
//! bytes as given, e.g. packed little-endian f32 vectors) and `expires_at` (N, Unix seconds,
//! the TTL attribute). TTL deletes lazily, so an entry past its expiry reads as a miss here.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;

use super::{now_unix, store_error};
use crate::ports::{Cache, StoreError};

pub struct DynamoCache {
    client: Client,
    table: String,
}

impl DynamoCache {
    pub fn new(client: Client, table: impl Into<String>) -> DynamoCache {
        DynamoCache {
            client,
            table: table.into(),
        }
    }
}

#[async_trait]
impl Cache for DynamoCache {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        // An eventually consistent read is enough: a stale miss only costs a recomputation.
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(key.into()))
            .send()
            .await
            .map_err(|e| store_error("DynamoDB GetItem cache", e))?;
        let Some(item) = out.item else {
            return Ok(None);
        };
        let expires_at = item
            .get("expires_at")
            .and_then(|v| v.as_n().ok())
            .and_then(|n| n.parse::<i64>().ok());
        if expires_at.is_some_and(|t| t <= now_unix()) {
            return Ok(None);
        }
        Ok(item
            .get("value")
            .and_then(|v| v.as_b().ok())
            .map(|b| b.as_ref().to_vec()))
    }

    async fn put(
        &self,
        key: &str,
        value: &[u8],
        expires_at: Option<i64>,
    ) -> Result<(), StoreError> {
        let mut item = HashMap::from([
            ("pk".to_string(), AttributeValue::S(key.into())),
            ("value".to_string(), AttributeValue::B(Blob::new(value))),
        ]);
        if let Some(t) = expires_at {
            item.insert("expires_at".into(), AttributeValue::N(t.to_string()));
        }
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| store_error("DynamoDB PutItem cache", e))?;
        Ok(())
    }
}
