//! What a vector index refuses, checked the same way by every adapter: S3 Vectors' limits,
//! which the embedded index keeps too, so what `pai` accepts the Lambdas accept. Each check
//! runs before anything is written, so a refused call changes nothing.

use serde_json::Value;

use crate::ports::{MAX_TOP_K, MAX_VECTORS_PER_CALL, StoreError, VectorRecord};

/// Largest number of keys per get call.
pub(crate) const MAX_GET: usize = 100;
const MAX_KEY_LEN: usize = 1024;
/// Metadata keys per vector, counting the non-filterable `text` and `title`.
const MAX_METADATA_KEYS: usize = 50;
const NON_FILTERABLE_KEYS: usize = 2;
const MAX_FILTERABLE_BYTES: usize = 2048;
/// Filterable and non-filterable metadata together.
const MAX_METADATA_BYTES: usize = 40 * 1024;

fn at_most(n: usize, max: usize, what: &str) -> Result<(), StoreError> {
    if n > max {
        return Err(StoreError::Invalid(format!("{n} {what} (max {max})")));
    }
    Ok(())
}

pub(crate) fn put_count(n: usize) -> Result<(), StoreError> {
    at_most(n, MAX_VECTORS_PER_CALL, "vectors in one put")
}

pub(crate) fn delete_count(n: usize) -> Result<(), StoreError> {
    at_most(n, MAX_VECTORS_PER_CALL, "keys in one delete")
}

pub(crate) fn get_count(n: usize) -> Result<(), StoreError> {
    at_most(n, MAX_GET, "keys in one get")
}

pub(crate) fn top_k(top_k: usize) -> Result<(), StoreError> {
    if !(1..=MAX_TOP_K).contains(&top_k) {
        return Err(StoreError::Invalid(format!(
            "top_k must be 1 to {MAX_TOP_K}, not {top_k}"
        )));
    }
    Ok(())
}

/// A vector (`what` names it in the error: "query", "vector k") a cosine index of `dimension`
/// takes: the right length, finite and not all zero.
pub(crate) fn vector(what: &str, v: &[f32], dimension: usize) -> Result<(), StoreError> {
    if v.len() != dimension {
        return Err(StoreError::Invalid(format!(
            "{what} has {} dimensions, index has {dimension}",
            v.len()
        )));
    }
    if v.iter().any(|x| !x.is_finite()) {
        return Err(StoreError::Invalid(format!(
            "{what} has NaN or infinite values"
        )));
    }
    if v.iter().all(|x| *x == 0.0) {
        return Err(StoreError::Invalid(format!(
            "{what}: a cosine index rejects an all-zero vector"
        )));
    }
    Ok(())
}

/// A record an index of `dimension` takes: its key, its vector, and metadata of scalars or
/// lists of scalars within the key count and size limits.
pub(crate) fn record(r: &VectorRecord, dimension: usize) -> Result<(), StoreError> {
    if r.key.is_empty() || r.key.len() > MAX_KEY_LEN {
        return Err(StoreError::Invalid(format!(
            "vector key must be 1 to {MAX_KEY_LEN} bytes"
        )));
    }
    vector(&format!("vector {}", r.key), &r.vector, dimension)?;
    if r.metadata.len() + NON_FILTERABLE_KEYS > MAX_METADATA_KEYS {
        return Err(StoreError::Invalid(format!(
            "vector {} has more than {MAX_METADATA_KEYS} metadata keys",
            r.key
        )));
    }
    let scalar = |v: &Value| matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_));
    for (k, v) in &r.metadata {
        if !(scalar(v) || matches!(v, Value::Array(items) if items.iter().all(scalar))) {
            return Err(StoreError::Invalid(format!(
                "metadata {k} of {} must be a string, number, boolean or list of those",
                r.key
            )));
        }
    }
    let filterable = Value::Object(r.metadata.clone()).to_string().len();
    if filterable > MAX_FILTERABLE_BYTES {
        return Err(StoreError::Invalid(format!(
            "vector {} has {filterable} bytes of filterable metadata (max {MAX_FILTERABLE_BYTES})",
            r.key
        )));
    }
    if filterable + r.text.len() + r.title.len() > MAX_METADATA_BYTES {
        return Err(StoreError::Invalid(format!(
            "vector {} has more than 40 KB of metadata",
            r.key
        )));
    }
    Ok(())
}
