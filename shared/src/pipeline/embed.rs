//! Embed: one batched embedding call for a batch of new chunks (cache first), then the vectors
//! with the document's filterable metadata into the index. Redelivery rewrites the same keys
//! and counts the batch once.

use serde_json::{Map, Value, json};

use super::chunk::{load_manifest, snapshot_key};
use super::{PipelineError, Services, set_stage};
use crate::domain::{DocMeta, EmbedTask, Manifest, Stage, StageStatus};
use crate::ports::{Condition, StoreError, VectorRecord};

/// Filterable metadata of a document's vectors, in the shape the chat filters query.
pub fn vector_metadata(doc_id: &crate::domain::DocId, meta: &DocMeta) -> Map<String, Value> {
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
    if let Some(o) = meta.owner {
        m.insert("owner".into(), json!(o));
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

pub async fn run(svc: &Services, task: &EmbedTask) -> Result<(), PipelineError> {
    let Some((manifest, _)) = load_manifest(svc, &task.doc_id).await? else {
        return Err(PipelineError::Fail(format!(
            "no manifest for {}",
            task.doc_id
        )));
    };
    if manifest.content_hash != task.content_hash {
        // A newer version was chunked since: its own embed messages cover its chunks.
        set_stage(
            svc.state.as_ref(),
            &task.job_id,
            Stage::Embed,
            StageStatus::Skipped,
            Some("superseded by a newer version".into()),
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
    let (vectors, _usage) = svc.embedder.embed(&texts).await?;
    if vectors.len() != texts.len() {
        return Err(PipelineError::Retry(format!(
            "embedder returned {} vectors for {} texts",
            vectors.len(),
            texts.len()
        )));
    }
    let metadata = vector_metadata(&task.doc_id, &manifest.meta);
    let records: Vec<VectorRecord> = task
        .chunks
        .iter()
        .zip(texts)
        .zip(vectors)
        .filter(|(_, v)| v.iter().any(|x| *x != 0.0))
        .map(|((c, text), vector)| VectorRecord {
            key: Manifest::vector_key(&task.doc_id, c),
            vector,
            metadata: metadata.clone(),
            text,
            title: manifest.meta.title.clone(),
        })
        .collect();
    let written = records.len();
    if !records.is_empty() {
        svc.vectors.put(records).await?;
    }

    // Tagging may have changed the metadata while this batch was embedded: write it again.
    if let Some((latest, _)) = load_manifest(svc, &task.doc_id).await?
        && latest.meta != manifest.meta
    {
        super::tag::refresh_vector_metadata(svc, &latest).await?;
    }

    // Count the batch once, however often this message is delivered.
    let marker = format!(
        "embedded/{}/{}",
        task.job_id,
        task.chunks
            .first()
            .map(|c| c.hash.as_str())
            .unwrap_or("none")
    );
    match svc
        .state
        .put(
            &marker,
            &json!({"chunks": task.chunks.len()}),
            Condition::Absent,
            Some(super::now() + 30 * 86_400),
        )
        .await
    {
        Ok(_) => {
            metrics::counter!(crate::metrics::CHUNKS_EMBEDDED).increment(written as u64);
            let done = svc
                .state
                .add(
                    &super::job_key(&task.job_id),
                    "chunks_embedded",
                    task.chunks.len() as i64,
                )
                .await?;
            let job = super::load_job(svc.state.as_ref(), &task.job_id).await?;
            if job.is_some_and(|j| done >= j.chunks_new as i64) {
                set_stage(
                    svc.state.as_ref(),
                    &task.job_id,
                    Stage::Embed,
                    StageStatus::Done,
                    Some(format!("{done} chunks embedded")),
                    Some(svc.embedder.space().to_string()),
                )
                .await?;
            }
        }
        Err(StoreError::Conflict(_)) => tracing::debug!("batch already counted"),
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_dates_become_numbers() {
        assert_eq!(created_number("2025-03-14"), Some(20250314));
        assert_eq!(created_number("2025-03-14T00:00:00Z"), Some(20250314));
        assert_eq!(created_number("2025-02-30"), None);
        assert_eq!(created_number("14.03.2025"), None);
    }
}
