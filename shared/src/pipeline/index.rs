//! The document index: the one owner of what the archive's search knows about a document —
//! its manifest (the chunks of its current text), its text snapshot, and its vectors'
//! metadata. Chunk, embed, tag and sync go through here, so "what is indexed" has one
//! definition: a chunk counts only once its vector is in the vector index. Every chunk run and
//! every sync compares the manifest with the index and re-queues what is missing, which is
//! what heals outages, lost messages and superseded batches.
//!
//! Manifests of large documents do not fit one DynamoDB item (400 KB): their chunk lists are
//! stored as immutable, content-addressed pages beside the item, in the same state store.

use std::collections::HashSet;

use serde_json::{Map, Value, json};

use super::{Blobs, Core, PipelineError, Services};
use crate::domain::{ChunkRef, DocId, DocMeta, Document, Manifest, ObjectKind, Taxonomy};
use crate::ports::{Condition, MAX_VECTORS_PER_CALL, StateStore, StoreError};
use crate::text::{fold, sha256_hex};

/// Largest number of keys one vector `get` may name (S3 Vectors' GetVectors limit).
const GET_BATCH: usize = 100;
/// Chunk lists longer than this (chunks + previous) are stored in pages, not in the item.
pub const INLINE_CHUNKS: usize = 600;
/// Chunks per page: ~100 bytes each, so a page stays far below DynamoDB's item limit.
pub const PAGE_CHUNKS: usize = 1_000;

pub use crate::state_keys::{manifest_key, marker_prefix};
use crate::state_keys::{manifest_page_key, marker_key};

pub fn snapshot_key(doc_id: &DocId, content_hash: &str) -> String {
    format!("text/{doc_id}/{content_hash}.txt")
}

/// Keeps the text of a document's version for the stages after chunk. A Paperless document's
/// text can be read again, so its snapshot need not be forced to disk (`put_recoverable`):
/// [`read_snapshot`] checks it against its hash. An upload's text exists nowhere else.
pub async fn keep_snapshot(
    blobs: &dyn crate::ports::BlobStore,
    doc_id: &DocId,
    content_hash: &str,
    text: &str,
) -> Result<(), crate::ports::StoreError> {
    let key = snapshot_key(doc_id, content_hash);
    match doc_id {
        DocId::Paperless(_) => blobs.put_recoverable(&key, text.as_bytes()).await,
        DocId::Upload(_) => blobs.put(&key, text.as_bytes()).await,
    }
}

/// The text snapshot of a version, if it is there whole: one a power cut cut short, or that is
/// otherwise not the text its hash names, is no snapshot.
pub async fn read_snapshot(
    blobs: &dyn crate::ports::BlobStore,
    doc_id: &DocId,
    content_hash: &str,
) -> Result<Option<String>, crate::ports::StoreError> {
    let Some(bytes) = blobs.get(&snapshot_key(doc_id, content_hash)).await? else {
        return Ok(None);
    };
    if crate::text::sha256_hex(&bytes) != content_hash {
        tracing::warn!(%doc_id, "text snapshot does not match its hash: read again");
        return Ok(None);
    }
    Ok(String::from_utf8(bytes).ok())
}

/// The document's tag names, folded (what filters and the tag policy compare).
pub fn tag_names(doc: &Document, taxonomy: &Taxonomy) -> Vec<String> {
    doc.tags
        .iter()
        .filter_map(|id| taxonomy.name_of(ObjectKind::Tag, *id))
        .map(fold)
        .collect()
}

/// The filterable metadata of a Paperless document, with names resolved and normalised.
pub fn paperless_meta(doc: &Document, taxonomy: &Taxonomy) -> DocMeta {
    let name = |kind, id: Option<u64>| id.and_then(|id| taxonomy.name_of(kind, id)).map(fold);
    DocMeta {
        title: doc.title.clone(),
        tags: tag_names(doc, taxonomy),
        correspondent: name(ObjectKind::Correspondent, doc.correspondent),
        document_type: name(ObjectKind::DocumentType, doc.document_type),
        created: doc.created.clone().map(|c| c.chars().take(10).collect()),
        owner: doc.owner,
        shared_with: doc.shared_with.clone(),
    }
}

/// Filterable metadata of a document's vectors, in the shape the chat filters query.
pub fn vector_metadata(doc_id: &DocId, meta: &DocMeta) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("doc_id".into(), json!(doc_id.to_string()));
    m.insert("tags".into(), json!(meta.tags));
    if let Some(c) = &meta.correspondent {
        m.insert("correspondent".into(), json!(c));
    }
    if let Some(t) = &meta.document_type {
        m.insert("document_type".into(), json!(t));
    }
    if let Some(day) = meta.created.as_deref().and_then(created_number) {
        m.insert("created".into(), json!(day));
    }
    // Who may see it, for per-user chat's vector query: no owner means every user.
    if let Some(o) = meta.owner {
        m.insert("owner".into(), json!(o));
        let viewers: Vec<u64> = std::iter::once(o)
            .chain(meta.shared_with.users.iter().copied())
            .collect();
        m.insert("viewers".into(), json!(viewers));
        if !meta.shared_with.groups.is_empty() {
            m.insert("viewer_groups".into(), json!(meta.shared_with.groups));
        }
    }
    m
}

/// `2025-03-14` as the number 20250314, so date ranges are numeric `$gte`/`$lte` filters.
pub fn created_number(date: &str) -> Option<u32> {
    let d = chrono::NaiveDate::parse_from_str(date.get(..10)?, "%Y-%m-%d").ok()?;
    date[..10]
        .replace('-', "")
        .parse()
        .ok()
        .filter(|_| d.to_string() == date[..10])
}

fn corrupt(doc_id: &DocId, e: impl std::fmt::Display) -> PipelineError {
    PipelineError::Fail(format!("corrupt manifest of {doc_id}: {e}"))
}

/// A manifest as stored: the item, with its chunk lists inline or in pages.
pub async fn resolve(svc: &Core, value: Value) -> Result<Manifest, PipelineError> {
    resolve_in(svc.state.as_ref(), value).await
}

/// `resolve` on a bare state store (what the contract suite runs on every adapter).
pub async fn resolve_in(
    state: &dyn StateStore,
    mut value: Value,
) -> Result<Manifest, PipelineError> {
    let pages = value.get("pages").cloned();
    if let Some(pages) = pages {
        let doc_id: DocId = serde_json::from_value(value["doc_id"].clone())
            .map_err(|e| PipelineError::Fail(format!("corrupt manifest: {e}")))?;
        let (id, count) = (
            pages["id"].as_str().unwrap_or_default().to_string(),
            pages["count"].as_u64().unwrap_or(0) as usize,
        );
        let mut all: Vec<(bool, ChunkRef)> = Vec::new();
        for n in 0..count {
            let page = state
                .get(&manifest_page_key(&doc_id, &id, n))
                .await?
                // Replaced by a newer version between reading the item and its pages.
                .ok_or_else(|| {
                    PipelineError::Retry(format!("manifest of {doc_id} changed while read"))
                })?;
            let part: Vec<(bool, ChunkRef)> =
                serde_json::from_value(page.value).map_err(|e| corrupt(&doc_id, e))?;
            all.extend(part);
        }
        let (chunks, previous): (Vec<_>, Vec<_>) = all.into_iter().partition(|(cur, _)| *cur);
        value["chunks"] = json!(chunks.into_iter().map(|(_, c)| c).collect::<Vec<_>>());
        value["previous"] = json!(previous.into_iter().map(|(_, c)| c).collect::<Vec<_>>());
    }
    let doc = value["doc_id"].to_string();
    serde_json::from_value(value)
        .map_err(|e| PipelineError::Fail(format!("corrupt manifest of {doc}: {e}")))
}

pub async fn load_manifest(
    svc: &Core,
    doc_id: &DocId,
) -> Result<Option<(Manifest, u64)>, PipelineError> {
    load_manifest_in(svc.state.as_ref(), doc_id).await
}

pub async fn load_manifest_in(
    state: &dyn StateStore,
    doc_id: &DocId,
) -> Result<Option<(Manifest, u64)>, PipelineError> {
    match state.get(&manifest_key(doc_id)).await? {
        None => Ok(None),
        Some(v) => Ok(Some((resolve_in(state, v.value).await?, v.version))),
    }
}

/// The page set a manifest refers to, if it is paged.
fn pages_of(value: &Value) -> Option<(String, usize)> {
    let p = value.get("pages")?;
    Some((p["id"].as_str()?.to_string(), p["count"].as_u64()? as usize))
}

/// Writes a manifest under `condition`: small ones as one item, large ones as pages first and
/// then the item naming them (so a reader never finds an item whose pages are missing). Pages
/// are named by their content: rewriting the same chunk lists (a metadata change) reuses them.
pub async fn save_manifest(
    svc: &Core,
    manifest: &Manifest,
    condition: Condition,
) -> Result<u64, PipelineError> {
    save_manifest_in(svc.state.as_ref(), manifest, condition).await
}

/// `save_manifest` on a bare state store.
pub async fn save_manifest_in(
    state: &dyn StateStore,
    manifest: &Manifest,
    condition: Condition,
) -> Result<u64, PipelineError> {
    let key = manifest_key(&manifest.doc_id);
    let mut value = serde_json::to_value(manifest).expect("manifest serialises");
    let paged = manifest.chunks.len() + manifest.previous.len() > INLINE_CHUNKS;
    let mut written_pages = None;
    if paged {
        let all: Vec<(bool, &ChunkRef)> = manifest
            .chunks
            .iter()
            .map(|c| (true, c))
            .chain(manifest.previous.iter().map(|c| (false, c)))
            .collect();
        let id = sha256_hex(
            serde_json::to_string(&all)
                .expect("chunks serialise")
                .as_bytes(),
        )[..16]
            .to_string();
        let pages: Vec<_> = all.chunks(PAGE_CHUNKS).collect();
        for (n, page) in pages.iter().enumerate() {
            state
                .put(
                    &manifest_page_key(&manifest.doc_id, &id, n),
                    &json!(page),
                    Condition::None,
                    None,
                )
                .await?;
        }
        value["chunks"] = json!([]);
        value["previous"] = json!([]);
        value["pages"] = json!({"id": id, "count": pages.len()});
        written_pages = Some((id, pages.len()));
    }
    let before = match condition {
        Condition::Absent => None,
        _ => state.get(&key).await?.and_then(|v| pages_of(&v.value)),
    };
    let version = state
        .put(&key, &value, condition, None)
        .await
        .map_err(|e| match e {
            StoreError::Conflict(_) => PipelineError::Retry(format!(
                "manifest of {} changed concurrently",
                manifest.doc_id
            )),
            other => other.into(),
        })?;
    // The pages of the replaced version are garbage now (best effort: a leftover costs bytes).
    if let Some((old, count)) = before
        && written_pages.as_ref().is_none_or(|(new, _)| *new != old)
    {
        for n in 0..count {
            let _ = state
                .delete(&manifest_page_key(&manifest.doc_id, &old, n))
                .await;
        }
    }
    Ok(version)
}

/// Removes a document from the index: its vectors, manifest (and pages) and text snapshot.
/// Used when it gains an exclude tag.
pub async fn forget<Q: Sync, M: Sync>(
    svc: &Services<Blobs, Q, M>,
    manifest: &Manifest,
) -> Result<(), PipelineError> {
    forget_index(svc, manifest).await?;
    forget_snapshot(svc.blobs.as_ref(), manifest).await;
    Ok(())
}

/// Removes a document's vectors and manifest (and pages): what the index holds of it.
pub async fn forget_index(svc: &Core, manifest: &Manifest) -> Result<(), PipelineError> {
    let keys: Vec<String> = manifest
        .chunks
        .iter()
        .chain(&manifest.previous)
        .map(|c| Manifest::vector_key(&manifest.doc_id, c))
        .collect();
    for batch in keys.chunks(MAX_VECTORS_PER_CALL) {
        svc.vectors.delete(batch).await?;
    }
    let key = manifest_key(&manifest.doc_id);
    let pages = svc.state.get(&key).await?.and_then(|v| pages_of(&v.value));
    svc.state.delete(&key).await?;
    if let Some((id, count)) = pages {
        for n in 0..count {
            svc.state
                .delete(&manifest_page_key(&manifest.doc_id, &id, n))
                .await?;
        }
    }
    Ok(())
}

/// Deletes the text snapshot of the manifest's version. Best effort: an orphaned snapshot is
/// text nothing reads again.
pub async fn forget_snapshot(blobs: &dyn crate::ports::BlobStore, manifest: &Manifest) {
    let key = snapshot_key(&manifest.doc_id, &manifest.content_hash);
    if let Err(e) = blobs.delete(&key).await {
        tracing::warn!(doc_id = %manifest.doc_id, error = %e, "text snapshot not deleted");
    }
}

/// The chunks of `chunks` whose vector is not in the index.
pub async fn missing(
    svc: &Core,
    doc_id: &DocId,
    chunks: &[ChunkRef],
) -> Result<Vec<ChunkRef>, PipelineError> {
    let mut present = HashSet::new();
    let keys: Vec<String> = chunks
        .iter()
        .map(|c| Manifest::vector_key(doc_id, c))
        .collect();
    for batch in keys.chunks(GET_BATCH) {
        for r in svc.vectors.get(batch).await? {
            present.insert(r.key);
        }
    }
    Ok(chunks
        .iter()
        .zip(&keys)
        .filter(|(_, k)| !present.contains(*k))
        .map(|(c, _)| c.clone())
        .collect())
}

/// Records that a batch's vectors are in the index (written only after them), with the chunks
/// whose embedding was all zeros: a cosine index cannot hold those, so they are indexed as
/// nothing. Returns whether this is the first record of the batch.
pub async fn record_batch(
    svc: &Core,
    job_id: &str,
    attempt: u32,
    chunks: &[ChunkRef],
    empty: &[String],
) -> Result<bool, PipelineError> {
    let marker = marker_key(job_id, attempt, chunks.first().map(|c| c.hash.as_str()));
    match svc
        .state
        .put(
            &marker,
            &json!({"chunks": chunks.len(), "empty": empty}),
            Condition::Absent,
            Some(super::now() + 30 * 86_400),
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(StoreError::Conflict(_)) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The chunks the markers under `prefix` cover, and the hashes of those with no vector.
pub async fn markers(svc: &Core, prefix: &str) -> Result<(usize, HashSet<String>), PipelineError> {
    let (mut total, mut empty) = (0, HashSet::new());
    let mut after: Option<String> = None;
    loop {
        let page = svc.state.list(prefix, after.as_deref(), 1000).await?;
        for (_, v) in &page {
            total += v["chunks"].as_u64().unwrap_or(0) as usize;
            empty.extend(
                v["empty"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|h| h.as_str().map(str::to_string)),
            );
        }
        if page.len() < 1000 {
            return Ok((total, empty));
        }
        after = page.last().map(|(k, _)| k.clone());
    }
}

/// The chunks of a manifest that are not indexed: no vector, and not known (from the batch
/// markers of `jobs`) to have an empty embedding.
pub async fn unindexed(
    svc: &Core,
    manifest: &Manifest,
    jobs: &[&str],
) -> Result<Vec<ChunkRef>, PipelineError> {
    let lacking = missing(svc, &manifest.doc_id, &manifest.chunks).await?;
    if lacking.is_empty() {
        return Ok(lacking);
    }
    let mut empty = HashSet::new();
    for job in jobs {
        empty.extend(markers(svc, &marker_prefix(job, None)).await?.1);
    }
    Ok(lacking
        .into_iter()
        .filter(|c| !empty.contains(&c.hash))
        .collect())
}

/// Rewrites the metadata of a document's vectors without re-embedding them.
pub async fn refresh_vector_metadata(svc: &Core, manifest: &Manifest) -> Result<(), PipelineError> {
    let metadata = vector_metadata(&manifest.doc_id, &manifest.meta);
    let keys: Vec<String> = manifest
        .chunks
        .iter()
        .map(|c| Manifest::vector_key(&manifest.doc_id, c))
        .collect();
    let mut updated = Vec::new();
    for batch in keys.chunks(GET_BATCH) {
        for mut r in svc.vectors.get(batch).await? {
            if r.metadata != metadata || r.title != manifest.meta.title {
                r.metadata = metadata.clone();
                r.title = manifest.meta.title.clone();
                updated.push(r);
            }
        }
    }
    for batch in updated.chunks(MAX_VECTORS_PER_CALL) {
        svc.vectors.put(batch.to_vec()).await?;
    }
    Ok(())
}

/// Makes the index's metadata of a document `meta` (what Paperless shows now, or what tagging
/// wrote), without re-embedding: the manifest first, then its vectors. Returns whether
/// anything changed.
pub async fn update_meta(svc: &Core, doc_id: &DocId, meta: DocMeta) -> Result<bool, PipelineError> {
    for _ in 0..10 {
        let Some((mut manifest, version)) = load_manifest(svc, doc_id).await? else {
            return Ok(false);
        };
        if manifest.meta == meta {
            return Ok(false);
        }
        manifest.meta = meta.clone();
        match save_manifest(svc, &manifest, Condition::Version(version)).await {
            Ok(_) => {
                refresh_vector_metadata(svc, &manifest).await?;
                return Ok(true);
            }
            Err(PipelineError::Retry(_)) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(PipelineError::Retry(format!(
        "manifest of {doc_id} keeps changing concurrently"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_snapshot_cut_short_or_altered_is_no_snapshot() {
        use crate::ports::BlobStore;
        let dir = tempfile::tempdir().unwrap();
        let blobs = crate::adapters::local::FileBlobStore::open(dir.path()).unwrap();
        let doc = DocId::Paperless(7);
        let text = "Rechnung Nr. 17 über 12,50 EUR";
        let hash = crate::text::sha256_hex(text.as_bytes());
        keep_snapshot(&blobs, &doc, &hash, text).await.unwrap();
        assert_eq!(
            read_snapshot(&blobs, &doc, &hash).await.unwrap().as_deref(),
            Some(text)
        );
        // What a power cut leaves of a file the system had not written yet: nothing, or a part.
        for torn in ["", "Rechnung Nr. 17"] {
            blobs
                .put(&snapshot_key(&doc, &hash), torn.as_bytes())
                .await
                .unwrap();
            assert_eq!(read_snapshot(&blobs, &doc, &hash).await.unwrap(), None);
        }
        assert_eq!(
            read_snapshot(&blobs, &DocId::Paperless(8), &hash)
                .await
                .unwrap(),
            None
        );
    }

    #[test]
    fn created_dates_become_numbers() {
        assert_eq!(created_number("2025-03-14"), Some(20250314));
        assert_eq!(created_number("2025-03-14T00:00:00Z"), Some(20250314));
        assert_eq!(created_number("2025-02-30"), None);
        assert_eq!(created_number("14.03.2025"), None);
    }
}
