//! Chunk: fetch a document's text, keep a snapshot keyed by its content hash, split it into
//! token-sized overlapping chunks, diff them against the last manifest, and hand the new chunks
//! to the embed queue and the document to the tag queue. Vectors of chunks that vanished are
//! deleted; unchanged chunks are never embedded again.

use std::collections::HashSet;

use super::{PipelineError, Services, set_stage};
use crate::domain::{
    ChunkRef, ChunkTask, DocId, DocMeta, Document, EmbedTask, Manifest, ObjectKind, Stage,
    StageStatus, TagTask, Taxonomy,
};
use crate::ports::{Condition, MAX_VECTORS_PER_CALL};
use crate::text::{chunk_ranges, fold, sha256_hex};

/// Chunks per embed message: one batched model call each.
pub const EMBED_BATCH: usize = 32;

pub fn manifest_key(doc_id: &DocId) -> String {
    format!("manifest/{doc_id}")
}

pub fn snapshot_key(doc_id: &DocId, content_hash: &str) -> String {
    format!("text/{doc_id}/{content_hash}.txt")
}

/// The filterable metadata of a Paperless document, with names resolved and normalised.
pub fn paperless_meta(doc: &Document, taxonomy: &Taxonomy) -> DocMeta {
    let name = |kind, id: Option<u64>| id.and_then(|id| taxonomy.name_of(kind, id)).map(fold);
    DocMeta {
        title: doc.title.clone(),
        tags: doc
            .tags
            .iter()
            .filter_map(|id| taxonomy.name_of(ObjectKind::Tag, *id))
            .map(fold)
            .collect(),
        correspondent: name(ObjectKind::Correspondent, doc.correspondent),
        document_type: name(ObjectKind::DocumentType, doc.document_type),
        created: doc.created.clone().map(|c| c.chars().take(10).collect()),
        owner: doc.owner,
    }
}

pub async fn load_manifest(
    svc: &Services,
    doc_id: &DocId,
) -> Result<Option<(Manifest, u64)>, PipelineError> {
    match svc.state.get(&manifest_key(doc_id)).await? {
        None => Ok(None),
        Some(v) => Ok(Some((
            serde_json::from_value(v.value)
                .map_err(|e| PipelineError::Fail(format!("corrupt manifest of {doc_id}: {e}")))?,
            v.version,
        ))),
    }
}

pub async fn run(svc: &Services, task: &ChunkTask) -> Result<(), PipelineError> {
    let job_id = task.job_id();
    let (doc_id, text, meta) = match task {
        ChunkTask::Paperless { doc_id, .. } => {
            let paperless = svc
                .paperless
                .as_ref()
                .ok_or_else(|| PipelineError::Fail("PAPERLESS_URL is not configured".into()))?;
            let doc = paperless.document(*doc_id).await?;
            let taxonomy = svc.taxonomy().await?;
            (
                DocId::Paperless(*doc_id),
                doc.content.clone(),
                paperless_meta(&doc, &taxonomy),
            )
        }
        ChunkTask::Upload {
            blob_key,
            filename,
            content_type,
            ..
        } => {
            let bytes = svc.blobs.get(blob_key).await?.ok_or_else(|| {
                PipelineError::Fail(format!("uploaded file {blob_key} is missing"))
            })?;
            let text =
                super::ingest::extract_text(&bytes, content_type).map_err(PipelineError::Fail)?;
            let doc_id = DocId::Upload(sha256_hex(&bytes)[..16].to_string());
            (
                doc_id,
                text,
                DocMeta {
                    title: filename.clone(),
                    ..DocMeta::default()
                },
            )
        }
    };
    if text.trim().is_empty() {
        return Err(PipelineError::Fail(
            "the document has no text (is OCR finished in Paperless?)".into(),
        ));
    }
    let content_hash = sha256_hex(text.as_bytes());
    svc.blobs
        .put(&snapshot_key(&doc_id, &content_hash), text.as_bytes())
        .await?;

    // Tokenising is CPU work: off the async threads, so requests are not kept waiting.
    let (max, overlap) = (svc.settings.chunk_tokens, svc.settings.chunk_overlap);
    let chunks = tokio::task::spawn_blocking(move || {
        let mut seen = HashSet::new();
        let chunks: Vec<ChunkRef> = chunk_ranges(&text, max, overlap)
            .into_iter()
            .map(|(start, end)| ChunkRef {
                start,
                end,
                hash: sha256_hex(&text.as_bytes()[start..end]),
            })
            .filter(|c| seen.insert(c.hash.clone()))
            .collect();
        chunks
    })
    .await
    .map_err(|e| PipelineError::Retry(format!("chunking task failed: {e}")))?;

    // The base to diff against: the last manifest, or — when this job already wrote it (a
    // redelivered message) — the version before it, so the redelivery redoes the same work.
    let existing = load_manifest(svc, &doc_id).await?;
    let (base, version) = match &existing {
        Some((m, v)) if m.job_id == job_id => (m.previous.clone(), Some(*v)),
        Some((m, v)) => (m.chunks.clone(), Some(*v)),
        None => (Vec::new(), None),
    };
    let unchanged_version = existing
        .as_ref()
        .is_some_and(|(m, _)| m.job_id != job_id && m.content_hash == content_hash);
    let base_hashes: HashSet<&str> = base.iter().map(|c| c.hash.as_str()).collect();
    let new_hashes: HashSet<&str> = chunks.iter().map(|c| c.hash.as_str()).collect();
    let fresh: Vec<ChunkRef> = chunks
        .iter()
        .filter(|c| !base_hashes.contains(c.hash.as_str()))
        .cloned()
        .collect();
    let vanished: Vec<String> = base
        .iter()
        .filter(|c| !new_hashes.contains(c.hash.as_str()))
        .map(|c| Manifest::vector_key(&doc_id, c))
        .collect();

    let manifest = Manifest {
        doc_id: doc_id.clone(),
        job_id: job_id.to_string(),
        content_hash: content_hash.clone(),
        chunks: chunks.clone(),
        previous: base,
        meta,
    };
    let condition = version.map_or(Condition::Absent, Condition::Version);
    svc.state
        .put(
            &manifest_key(&doc_id),
            &serde_json::to_value(&manifest).expect("manifest serialises"),
            condition,
            None,
        )
        .await
        .map_err(|e| match e {
            crate::ports::StoreError::Conflict(_) => {
                PipelineError::Retry(format!("manifest of {doc_id} changed concurrently"))
            }
            other => other.into(),
        })?;

    for batch in vanished.chunks(MAX_VECTORS_PER_CALL) {
        svc.vectors.delete(batch).await?;
    }
    let embed_bodies: Vec<String> = fresh
        .chunks(EMBED_BATCH)
        .map(|batch| {
            serde_json::to_string(&EmbedTask {
                job_id: job_id.to_string(),
                doc_id: doc_id.clone(),
                content_hash: content_hash.clone(),
                chunks: batch.to_vec(),
            })
            .expect("task serialises")
        })
        .collect();
    svc.queues.embed.send(&embed_bodies).await?;

    super::update_job(svc.state.as_ref(), job_id, |job| {
        job.doc_id = Some(doc_id.clone());
        job.chunks_total = chunks.len() as u32;
        job.chunks_new = fresh.len() as u32;
    })
    .await?;
    let detail = if unchanged_version {
        "text unchanged since the last version".to_string()
    } else {
        format!(
            "{} chunks, {} new, {} removed",
            chunks.len(),
            fresh.len(),
            vanished.len()
        )
    };
    set_stage(
        svc.state.as_ref(),
        job_id,
        Stage::Chunk,
        StageStatus::Done,
        Some(detail),
        None,
    )
    .await?;
    if fresh.is_empty() {
        set_stage(
            svc.state.as_ref(),
            job_id,
            Stage::Embed,
            StageStatus::Skipped,
            Some("no new chunks".into()),
            Some(svc.embedder.space().to_string()),
        )
        .await?;
    }
    let tag = TagTask {
        job_id: job_id.to_string(),
        doc_id: doc_id.clone(),
        content_hash,
    };
    svc.queues
        .tag
        .send(&[serde_json::to_string(&tag).expect("task serialises")])
        .await?;
    tracing::info!(
        chunks = chunks.len(),
        new = fresh.len(),
        removed = vanished.len(),
        "chunked"
    );
    Ok(())
}
