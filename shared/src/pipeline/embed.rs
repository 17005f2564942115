//! Embed: one batched embedding call for a batch of new chunks (cache first), then the vectors
//! with the document's filterable metadata into the index. Redelivery rewrites the same keys
//! and counts the batch once.

use super::index::{self, load_manifest, snapshot_key};
use super::{Blobs, Models, PipelineError, Services, set_stage};
use crate::domain::{EmbedTask, Manifest, Stage, StageStatus};
use crate::ports::VectorRecord;

pub use super::index::{created_number, vector_metadata};

pub async fn run<Q: Sync, W: Sync>(
    svc: &Services<Blobs, Q, Models, W>,
    task: &EmbedTask,
) -> Result<(), PipelineError> {
    let Some((manifest, _)) = load_manifest(svc, &task.doc_id).await? else {
        // Deleted in Paperless or excluded since: nothing of it may be indexed.
        set_stage(
            svc.state.as_ref(),
            &task.job_id,
            Stage::Embed,
            StageStatus::Skipped,
            Some("the document left the index".into()),
            None,
        )
        .await?;
        return Ok(());
    };
    if manifest.content_hash != task.content_hash {
        // A newer version was chunked since. Its chunk run queued every chunk the index
        // lacked, these included, so skipping loses nothing.
        set_stage(
            svc.state.as_ref(),
            &task.job_id,
            Stage::Embed,
            StageStatus::Skipped,
            Some("superseded by a newer version, whose job indexes every chunk".into()),
            None,
        )
        .await?;
        return Ok(());
    }
    let text = svc
        .blobs
        .get(&snapshot_key(&task.doc_id, &task.content_hash))
        .await?
        .ok_or_else(|| PipelineError::Fail("text snapshot is missing".into()))?;
    let text = String::from_utf8(text)
        .map_err(|_| PipelineError::Fail("text snapshot is not UTF-8".into()))?;
    let mut texts = Vec::with_capacity(task.chunks.len());
    for c in &task.chunks {
        texts.push(
            text.get(c.start..c.end)
                .ok_or_else(|| {
                    PipelineError::Fail(format!(
                        "chunk {}..{} outside the snapshot",
                        c.start, c.end
                    ))
                })?
                .to_string(),
        );
    }
    let (vectors, usage) = svc.models.embedder.embed(&texts).await?;
    super::add_job_usage(svc.state.as_ref(), &task.job_id, &usage).await;
    if vectors.len() != texts.len() {
        return Err(PipelineError::Retry(format!(
            "embedder returned {} vectors for {} texts",
            vectors.len(),
            texts.len()
        )));
    }
    let metadata = vector_metadata(&task.doc_id, &manifest.meta);
    let mut empty = Vec::new();
    let mut records = Vec::with_capacity(task.chunks.len());
    for ((c, text), vector) in task.chunks.iter().zip(texts).zip(vectors) {
        if vector.iter().all(|x| *x == 0.0) {
            empty.push(c.hash.clone());
            continue;
        }
        records.push(VectorRecord {
            key: Manifest::vector_key(&task.doc_id, c),
            vector,
            metadata: metadata.clone(),
            text,
            title: manifest.meta.title.clone(),
        });
    }
    let written = records.len();
    if !records.is_empty() {
        svc.vectors.put(records).await?;
    }

    match load_manifest(svc, &task.doc_id).await? {
        // Tagging or a user's edit changed the metadata while this batch was embedded.
        Some((latest, _)) if latest.content_hash == manifest.content_hash => {
            if latest.meta != manifest.meta {
                index::refresh_vector_metadata(svc, &latest).await?;
            }
        }
        // A newer version (or the removal of the document) raced this write: vectors of
        // chunks it no longer has must not stay behind in the index.
        latest => {
            let keep: std::collections::HashSet<String> = latest
                .map(|(m, _)| {
                    m.chunks
                        .iter()
                        .map(|c| Manifest::vector_key(&m.doc_id, c))
                        .collect()
                })
                .unwrap_or_default();
            let stale: Vec<String> = task
                .chunks
                .iter()
                .map(|c| Manifest::vector_key(&task.doc_id, c))
                .filter(|k| !keep.contains(k))
                .collect();
            if !stale.is_empty() {
                svc.vectors.delete(&stale).await?;
            }
        }
    }

    let Some(job) = super::load_job(svc.state.as_ref(), &task.job_id).await? else {
        return Ok(());
    };
    if index::record_batch(svc, &task.job_id, job.attempt, &task.chunks, &empty).await? {
        metrics::counter!(crate::metrics::CHUNKS_EMBEDDED).increment(written as u64);
        // Shown by `GET /jobs`; completion below does not depend on it.
        svc.state
            .add(
                &super::job_key(&task.job_id),
                "chunks_embedded",
                task.chunks.len() as i64,
            )
            .await?;
    } else {
        tracing::debug!("batch already counted");
    }
    // Complete when the markers cover the job's batches and the index confirms every chunk of
    // this version; recomputed by every batch (and its redeliveries), so a crash between two
    // writes cannot leave the stage pending.
    let prefix = index::marker_prefix(&task.job_id, Some(job.attempt));
    if index::markers(svc, &prefix).await?.0 >= job.chunks_new as usize {
        let lacking = index::unindexed(svc, &manifest, &[&task.job_id, &manifest.job_id]).await?;
        if lacking.is_empty() {
            set_stage(
                svc.state.as_ref(),
                &task.job_id,
                Stage::Embed,
                StageStatus::Done,
                Some(format!("{} chunks indexed", manifest.chunks.len())),
                Some(svc.models.embedder.space().to_string()),
            )
            .await?;
        }
    }
    Ok(())
}
