//! Chunk: fetch a document's text, keep a snapshot keyed by its content hash, split it into
//! token-sized overlapping chunks, diff them against the last manifest, and hand the new chunks
//! to the embed queue and the document (as read, without its text) to the tag queue. Vectors of chunks that vanished are
//! deleted; unchanged chunks are never embedded again.

// The stage itself (`run`) is compiled with `stage-chunk` only (it splits text: `splitter`);
// without it, what only the stage imports is unused.
#![cfg_attr(not(feature = "stage-chunk"), allow(unused_imports))]

use std::collections::HashSet;

use super::index::{self, save_manifest};
use super::{Blobs, PipelineError, Queues, Services, set_stage};
use crate::domain::{
    ChunkRef, ChunkTask, DocId, DocMeta, Document, DocumentRead, EmbedTask, Manifest, Stage,
    StageStatus, TagTask, Taxonomy,
};
use crate::ports::{Condition, MAX_VECTORS_PER_CALL};
#[cfg(feature = "splitter")]
use crate::text::chunk_text;
use crate::text::{fold, sha256_hex};

pub use super::index::{load_manifest, manifest_key, paperless_meta, snapshot_key};

/// Chunks per embed message: one batched model call each.
pub const EMBED_BATCH: usize = 32;

/// The exclude tag a Paperless document carries, if any: such a document is never sent to a
/// model and is not in the index.
pub fn exclude_tag(
    doc: &Document,
    taxonomy: &Taxonomy,
    policy: &crate::config::TaggingPolicy,
) -> Option<String> {
    let names = index::tag_names(doc, taxonomy);
    policy
        .exclude_tags
        .iter()
        .find(|t| names.contains(&fold(t)))
        .cloned()
}

/// An excluded document: whatever the index holds of it goes, and no stage runs.
#[cfg(feature = "stage-chunk")]
async fn exclude<M: Sync>(
    svc: &Services<Blobs, Queues, M>,
    job_id: &str,
    doc_id: &DocId,
    tag: &str,
) -> Result<(), PipelineError> {
    if let Some((manifest, _)) = load_manifest(svc, doc_id).await? {
        index::forget(svc, &manifest).await?;
        tracing::info!(%doc_id, tag, "document gained an exclude tag: removed from the index");
    }
    super::update_job(svc.state.as_ref(), job_id, |job| {
        job.doc_id = Some(doc_id.clone());
    })
    .await?;
    let reason = format!("document has excluded tag {tag:?}: never sent to a model");
    for stage in [Stage::Chunk, Stage::Embed, Stage::Tag] {
        set_stage(
            svc.state.as_ref(),
            job_id,
            stage,
            StageStatus::Skipped,
            Some(reason.clone()),
            None,
        )
        .await?;
    }
    Ok(())
}

#[cfg(feature = "stage-chunk")]
pub async fn run<M: Sync>(
    svc: &Services<Blobs, Queues, M>,
    task: &ChunkTask,
) -> Result<(), PipelineError> {
    let job_id = task.job_id();
    let (doc_id, text, meta, read) = match task {
        ChunkTask::Paperless { doc_id, .. } => {
            let paperless = svc
                .paperless
                .as_ref()
                .ok_or_else(|| PipelineError::Fail("PAPERLESS_URL is not configured".into()))?;
            let doc = paperless.document(*doc_id).await?;
            let taxonomy = svc.taxonomy_for(&doc).await?;
            if let Some(tag) = exclude_tag(&doc, &taxonomy, &svc.settings.policy) {
                return exclude(svc, job_id, &DocId::Paperless(*doc_id), &tag).await;
            }
            let meta = paperless_meta(&doc, &taxonomy);
            let text = doc.content;
            let read = DocumentRead {
                at: super::now(),
                document: Document {
                    content: String::new(),
                    ..doc
                },
            };
            (DocId::Paperless(*doc_id), text, meta, Some(read))
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
                None,
            )
        }
    };
    // An upload's document id is known once its bytes are read.
    tracing::Span::current().record("doc_id", doc_id.to_string());
    if text.trim().is_empty() {
        return Err(PipelineError::Fail(
            "the document has no text (is OCR finished in Paperless?)".into(),
        ));
    }
    let content_hash = sha256_hex(text.as_bytes());
    super::index::keep_snapshot(svc.blobs.as_ref(), &doc_id, &content_hash, &text).await?;

    // Tokenising is CPU work: off the async threads, so requests are not kept waiting.
    let (max, overlap) = (svc.settings.chunk_tokens, svc.settings.chunk_overlap);
    let (chunks, text_tokens) = tokio::task::spawn_blocking(move || {
        let mut seen = HashSet::new();
        let cut = chunk_text(&text, max, overlap);
        let chunks: Vec<ChunkRef> = cut
            .ranges
            .into_iter()
            .map(|(start, end)| ChunkRef {
                start,
                end,
                hash: sha256_hex(&text.as_bytes()[start..end]),
            })
            .filter(|c| seen.insert(c.hash.clone()))
            .collect();
        (chunks, cut.text_tokens)
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
    let new_hashes: HashSet<&str> = chunks.iter().map(|c| c.hash.as_str()).collect();
    let vanished: Vec<String> = base
        .iter()
        .filter(|c| !new_hashes.contains(c.hash.as_str()))
        .map(|c| Manifest::vector_key(&doc_id, c))
        .collect();
    let meta_changed = existing.as_ref().is_some_and(|(m, _)| m.meta != meta);

    let manifest = Manifest {
        doc_id: doc_id.clone(),
        job_id: job_id.to_string(),
        content_hash: content_hash.clone(),
        chunks: chunks.clone(),
        previous: base,
        meta,
    };
    let condition = version.map_or(Condition::Absent, Condition::Version);
    save_manifest(svc, &manifest, condition).await?;

    for batch in vanished.chunks(MAX_VECTORS_PER_CALL) {
        svc.vectors.delete(batch).await?;
    }
    // The user changed tags, correspondent, type, date or owner in Paperless: the vectors
    // already indexed carry it now, without being embedded again.
    if meta_changed {
        index::refresh_vector_metadata(svc, &manifest).await?;
    }
    // What to embed is what the index lacks, not what the last manifest lacked: chunks lost to
    // an outage, a dead-lettered or superseded batch are queued again here.
    let fresh = index::missing(svc, &doc_id, &chunks).await?;

    // Counted before the messages go out, so no batch can finish before its job knows.
    super::update_job(svc.state.as_ref(), job_id, |job| {
        job.doc_id = Some(doc_id.clone());
        job.chunks_total = chunks.len() as u32;
        job.chunks_new = fresh.len() as u32;
    })
    .await?;
    let embed_bodies: Vec<String> = fresh
        .chunks(EMBED_BATCH)
        .map(|batch| {
            serde_json::to_string(&EmbedTask {
                job_id: job_id.to_string(),
                doc_id: doc_id.clone(),
                content_hash: content_hash.clone(),
                chunks: batch.to_vec(),
                trace: crate::telemetry::current(),
            })
            .expect("task serialises")
        })
        .collect();
    svc.queues.embed.send(&embed_bodies).await?;

    let detail = match (unchanged_version, fresh.len()) {
        (true, 0) => "text unchanged since the last version".to_string(),
        (true, n) => format!(
            "text unchanged since the last version; {n} chunks missing from the index queued again"
        ),
        _ => format!(
            "{} chunks, {} new, {} removed",
            chunks.len(),
            fresh.len(),
            vanished.len()
        ),
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
            Some("every chunk is already indexed".into()),
            Some(svc.names.space.clone()),
        )
        .await?;
    }
    let tag = TagTask {
        job_id: job_id.to_string(),
        doc_id: doc_id.clone(),
        content_hash,
        text_tokens: Some(text_tokens),
        trace: crate::telemetry::current(),
        read,
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
