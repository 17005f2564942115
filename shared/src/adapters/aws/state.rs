//! State store on DynamoDB: jobs, manifests, suggestions, undo records and sessions.
//!
//! Table schema: `pk` (S, hash) = the key up to its first '/', `sk` (S, range) = the whole key,
//! so one `Query` lists a prefix in key order. Attributes: `value` (S, JSON text), `version`
//! (N), `expires_at` (N, Unix seconds, the table's TTL attribute) and one N attribute per
//! counter, named `c:<counter>`. Counters live on the item so `delete` removes them with it;
//! `put` therefore uses `UpdateItem` (it must not wipe them) and "the item exists" means "has a
//! `version`" (an `add` alone creates an item with counters only). DynamoDB's TTL deletes
//! lazily (within days), so every read and condition also treats `expires_at <= now` as absent.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use serde_json::Value;

use super::{now_unix, store_error};
use crate::ports::{Condition, StateStore, StoreError, Versioned};

/// Prefix of counter attributes, so they cannot clash with `value`, `version`, `pk`…
const COUNTER: &str = "c:";
/// Largest page asked of one `Query`.
const PAGE: i32 = 500;

pub struct DynamoState {
    client: Client,
    table: String,
}

impl DynamoState {
    pub fn new(client: Client, table: impl Into<String>) -> DynamoState {
        DynamoState {
            client,
            table: table.into(),
        }
    }

    /// The whole item under `key`, read consistently (a write just made is always seen).
    async fn read(&self, key: &str) -> Result<Option<HashMap<String, AttributeValue>>, StoreError> {
        self.client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key_of(key)))
            .consistent_read(true)
            .send()
            .await
            .map(|out| out.item)
            .map_err(|e| store_error("DynamoDB GetItem", e))
    }
}

/// The partition of a key is its family (what comes before its first '/').
use crate::ports::key_family as partition;

fn key_of(key: &str) -> HashMap<String, AttributeValue> {
    HashMap::from([
        ("pk".to_string(), AttributeValue::S(partition(key).into())),
        ("sk".to_string(), AttributeValue::S(key.into())),
    ])
}

fn number<T: std::str::FromStr>(item: &HashMap<String, AttributeValue>, name: &str) -> Option<T> {
    item.get(name)?.as_n().ok()?.parse().ok()
}

/// Whether an item read back is past its expiry (DynamoDB may not have deleted it yet).
fn expired(item: &HashMap<String, AttributeValue>, now: i64) -> bool {
    number::<i64>(item, "expires_at").is_some_and(|t| t <= now)
}

/// The stored JSON of a live item; `None` for counters-only or expired items.
fn value_of(
    key: &str,
    item: &HashMap<String, AttributeValue>,
    now: i64,
) -> Result<Option<Value>, StoreError> {
    if expired(item, now) {
        return Ok(None);
    }
    let Some(text) = item.get("value").and_then(|v| v.as_s().ok()) else {
        return Ok(None);
    };
    serde_json::from_str(text)
        .map(Some)
        .map_err(|e| StoreError::Unavailable(format!("corrupt item {key}: {e}")))
}

#[async_trait]
impl StateStore for DynamoState {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        let Some(item) = self.read(key).await? else {
            return Ok(None);
        };
        let (Some(value), Some(version)) = (
            value_of(key, &item, now_unix())?,
            number::<u64>(&item, "version"),
        ) else {
            return Ok(None);
        };
        Ok(Some(Versioned { value, version }))
    }

    async fn put(
        &self,
        key: &str,
        value: &Value,
        condition: Condition,
        expires_at: Option<i64>,
    ) -> Result<u64, StoreError> {
        // DynamoDB refuses unused placeholders: each of these appears in every update.
        let names = HashMap::from([
            ("#v".to_string(), "value".to_string()),
            ("#ver".to_string(), "version".to_string()),
            ("#exp".to_string(), "expires_at".to_string()),
        ]);
        let mut values = HashMap::from([
            (":v".to_string(), AttributeValue::S(value.to_string())),
            (":zero".to_string(), AttributeValue::N("0".into())),
            (":one".to_string(), AttributeValue::N("1".into())),
        ]);
        // The version only grows, even across an expired item being created again.
        let mut update = "SET #v = :v, #ver = if_not_exists(#ver, :zero) + :one".to_string();
        match expires_at {
            Some(t) => {
                update.push_str(", #exp = :exp");
                values.insert(":exp".into(), AttributeValue::N(t.to_string()));
            }
            None => update.push_str(" REMOVE #exp"),
        }
        let guard = match condition {
            Condition::None => None,
            Condition::Absent => {
                values.insert(":now".into(), AttributeValue::N(now_unix().to_string()));
                Some("attribute_not_exists(#ver) OR #exp <= :now")
            }
            Condition::Version(v) => {
                values.insert(":now".into(), AttributeValue::N(now_unix().to_string()));
                values.insert(":want".into(), AttributeValue::N(v.to_string()));
                Some("#ver = :want AND (attribute_not_exists(#exp) OR #exp > :now)")
            }
        };
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key_of(key)))
            .update_expression(update)
            .set_condition_expression(guard.map(str::to_string))
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .return_values(ReturnValue::UpdatedNew)
            .send()
            .await
            .map_err(|e| match store_error("DynamoDB UpdateItem", e) {
                StoreError::Conflict(_) => StoreError::Conflict(match condition {
                    Condition::Version(v) => format!("{key} is no longer at version {v}"),
                    _ => format!("{key} exists"),
                }),
                other => other,
            })?;
        out.attributes
            .as_ref()
            .and_then(|a| number::<u64>(a, "version"))
            .ok_or_else(|| {
                StoreError::Unavailable(format!("DynamoDB UpdateItem {key}: no version returned"))
            })
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key_of(key)))
            .send()
            .await
            .map_err(|e| store_error("DynamoDB DeleteItem", e))?;
        Ok(())
    }

    async fn add(&self, key: &str, counter: &str, delta: i64) -> Result<i64, StoreError> {
        let attribute = format!("{COUNTER}{counter}");
        // ADD is atomic and treats a missing attribute (or item) as 0.
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key_of(key)))
            .update_expression("ADD #c :d")
            .expression_attribute_names("#c", &attribute)
            .expression_attribute_values(":d", AttributeValue::N(delta.to_string()))
            .return_values(ReturnValue::UpdatedNew)
            .send()
            .await
            .map_err(|e| store_error("DynamoDB UpdateItem ADD", e))?;
        out.attributes
            .as_ref()
            .and_then(|a| number::<i64>(a, &attribute))
            .ok_or_else(|| {
                StoreError::Unavailable(format!("DynamoDB ADD {key}: no counter returned"))
            })
    }

    async fn add_all(&self, key: &str, deltas: &[(&str, i64)]) -> Result<(), StoreError> {
        if deltas.is_empty() {
            return Ok(());
        }
        let mut update = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key_of(key)));
        let mut clauses = Vec::with_capacity(deltas.len());
        for (i, (counter, delta)) in deltas.iter().enumerate() {
            clauses.push(format!("#c{i} :d{i}"));
            update = update
                .expression_attribute_names(format!("#c{i}"), format!("{COUNTER}{counter}"))
                .expression_attribute_values(
                    format!(":d{i}"),
                    AttributeValue::N(delta.to_string()),
                );
        }
        update
            .update_expression(format!("ADD {}", clauses.join(", ")))
            .send()
            .await
            .map_err(|e| store_error("DynamoDB UpdateItem ADD", e))?;
        Ok(())
    }

    async fn counters(&self, key: &str) -> Result<BTreeMap<String, i64>, StoreError> {
        Ok(self
            .read(key)
            .await?
            .unwrap_or_default()
            .iter()
            .filter_map(|(name, v)| {
                let counter = name.strip_prefix(COUNTER)?;
                Some((counter.to_string(), v.as_n().ok()?.parse().ok()?))
            })
            .collect())
    }

    async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Value)>, StoreError> {
        self.query_prefix(prefix, after, limit, true).await
    }

    async fn list_newest(
        &self,
        prefix: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Value)>, StoreError> {
        self.query_prefix(prefix, before, limit, false).await
    }
}

impl DynamoState {
    /// One partition's keys under `prefix`, in key order (`forward`) or reversed, starting
    /// past `from` (exclusive) in that direction.
    async fn query_prefix(
        &self,
        prefix: &str,
        from: Option<&str>,
        limit: usize,
        forward: bool,
    ) -> Result<Vec<(String, Value)>, StoreError> {
        // One partition per first segment: a prefix must name it (every caller's does, "job/").
        if !prefix.contains('/') {
            return Err(StoreError::Invalid(format!(
                "list prefix {prefix:?} must include the '/' ending its partition"
            )));
        }
        let mut start = match from {
            // A start key outside the key condition's range is refused by DynamoDB.
            Some(a) if a.starts_with(prefix) => Some(key_of(a)),
            // Past the whole range in the reading direction: nothing left.
            Some(a) if forward == (a > prefix) => return Ok(Vec::new()),
            _ => None,
        };
        let now = now_unix();
        let mut out = Vec::new();
        while out.len() < limit {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .consistent_read(true)
                .scan_index_forward(forward)
                .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
                .filter_expression(
                    "attribute_exists(#ver) AND (attribute_not_exists(#exp) OR #exp > :now)",
                )
                .projection_expression("sk, #v")
                .expression_attribute_names("#ver", "version")
                .expression_attribute_names("#exp", "expires_at")
                .expression_attribute_names("#v", "value")
                .expression_attribute_values(":pk", AttributeValue::S(partition(prefix).into()))
                .expression_attribute_values(":prefix", AttributeValue::S(prefix.into()))
                .expression_attribute_values(":now", AttributeValue::N(now.to_string()))
                .set_exclusive_start_key(start.take())
                .limit(
                    PAGE.min(i32::try_from(limit - out.len()).unwrap_or(PAGE))
                        .max(1),
                )
                .send()
                .await
                .map_err(|e| store_error("DynamoDB Query", e))?;
            for item in page.items() {
                let Some(key) = item.get("sk").and_then(|v| v.as_s().ok()) else {
                    continue;
                };
                if let Some(value) = value_of(key, item, now)? {
                    out.push((key.clone(), value));
                }
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        out.truncate(limit);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_partition_is_the_first_segment() {
        assert_eq!(partition("job/1"), "job");
        assert_eq!(partition("manifest/doc/7"), "manifest");
        assert_eq!(partition("race"), "race");
    }

    #[test]
    fn expired_and_counter_only_items_have_no_value() {
        let now = 1_000;
        let mut item = HashMap::from([
            ("value".to_string(), AttributeValue::S("{\"n\":1}".into())),
            ("expires_at".to_string(), AttributeValue::N("1000".into())),
        ]);
        assert_eq!(
            value_of("k", &item, now).unwrap(),
            None,
            "expiry is inclusive"
        );
        item.insert("expires_at".into(), AttributeValue::N("1001".into()));
        assert_eq!(
            value_of("k", &item, now).unwrap(),
            Some(serde_json::json!({"n": 1}))
        );
        let counters_only = HashMap::from([("c:n".to_string(), AttributeValue::N("3".into()))]);
        assert_eq!(value_of("k", &counters_only, now).unwrap(), None);
    }
}
