//! Sync: catches what webhooks miss (Paperless retries a webhook only on HTTP errors, not on a
//! refused connection). Each run queues the documents modified since the last run and those
//! carrying the trigger tag, and removes from the index documents deleted in Paperless, checking
//! a rotating window of known documents so no run re-lists the whole library. Idempotent:
//! re-queued documents are no-ops downstream (same text, same policy).

use std::collections::BTreeSet;

use serde::Serialize;
use serde_json::json;

use super::chunk::manifest_key;
use super::{PipelineError, Services};
use crate::domain::{JobOrigin, Manifest, ObjectKind};
use crate::ports::{Condition, DocumentQuery, MAX_VECTORS_PER_CALL};

const CURSOR_KEY: &str = "sync/cursor";
/// Known documents checked for deletion per run.
const DELETION_WINDOW: usize = 500;

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SyncReport {
    /// Documents queued for processing, and their jobs.
    pub queued: usize,
    pub jobs: Vec<String>,
    /// Documents deleted in Paperless whose vectors were removed.
    pub removed: usize,
    /// The newest modification time seen (the next run starts after it).
    pub cursor: Option<String>,
}

async fn all_pages(
    paperless: &dyn crate::ports::Paperless,
    query: &DocumentQuery,
    mut each: impl FnMut(crate::ports::DocumentSummary),
) -> Result<(), PipelineError> {
    for page in 1.. {
        let (items, more) = paperless.list(query, page).await?;
        items.into_iter().for_each(&mut each);
        if !more {
            break;
        }
    }
    Ok(())
}

pub async fn run(svc: &Services) -> Result<SyncReport, PipelineError> {
    let paperless = svc
        .paperless
        .clone()
        .ok_or_else(|| PipelineError::Fail("sync needs PAPERLESS_URL".into()))?;
    let state = svc.state.as_ref();
    let saved = state.get(CURSOR_KEY).await?;
    let cursor = saved
        .as_ref()
        .and_then(|v| v.value["modified"].as_str().map(str::to_string));
    let mut newest = cursor.clone();
    let mut ids = BTreeSet::new();
    all_pages(
        paperless.as_ref(),
        &DocumentQuery {
            modified_after: cursor.clone(),
            ..Default::default()
        },
        |d| {
            if d.modified.as_deref() > newest.as_deref() {
                newest = d.modified.clone();
            }
            ids.insert(d.id);
        },
    )
    .await?;
    if let Some(trigger) = &svc.settings.policy.trigger_tag
        && let Some(tag) = svc.taxonomy().await?.find(ObjectKind::Tag, trigger)
    {
        let mut triggered = Vec::new();
        all_pages(
            paperless.as_ref(),
            &DocumentQuery {
                tag: Some(tag.id),
                ..Default::default()
            },
            |d| triggered.push(d),
        )
        .await?;
        // A document still carrying the trigger tag after its run (excluded, or a run that
        // could not remove it) is queued once per version, not by every sync.
        for d in triggered {
            let key = format!("sync/trigger/{}", d.id);
            let seen = state.get(&key).await?;
            if seen.is_some_and(|v| v.value["modified"].as_str() == d.modified.as_deref()) {
                continue;
            }
            state
                .put(
                    &key,
                    &json!({"modified": d.modified}),
                    Condition::None,
                    Some(super::now() + 90 * 86_400),
                )
                .await?;
            ids.insert(d.id);
        }
    }
    let mut jobs = Vec::with_capacity(ids.len());
    for id in &ids {
        jobs.push(
            super::ingest::paperless_document(svc, *id, JobOrigin::Sync)
                .await?
                .id,
        );
    }
    let removed = remove_deleted(svc).await?;
    if newest != cursor {
        let condition = saved.map_or(Condition::Absent, |v| Condition::Version(v.version));
        state
            .put(CURSOR_KEY, &json!({"modified": newest}), condition, None)
            .await?;
    }
    tracing::info!(queued = ids.len(), removed, "sync done");
    Ok(SyncReport {
        queued: ids.len(),
        jobs,
        removed,
        cursor: newest,
    })
}

/// Checks the next window of indexed Paperless documents and forgets those Paperless no
/// longer has: their vectors, manifest and loop-guard record.
async fn remove_deleted(svc: &Services) -> Result<usize, PipelineError> {
    let paperless = svc.paperless.clone().expect("checked by run");
    let state = svc.state.as_ref();
    let after = state
        .get("sync/deletion_cursor")
        .await?
        .and_then(|v| v.value.as_str().map(str::to_string));
    let mut window = state
        .list("manifest/", after.as_deref(), DELETION_WINDOW)
        .await?;
    // Wrap around: a library smaller than the window is checked whole on every run.
    if window.len() < DELETION_WINDOW && after.is_some() {
        let head = state
            .list("manifest/", None, DELETION_WINDOW - window.len())
            .await?;
        let end = after.clone().unwrap_or_default();
        window.extend(head.into_iter().filter(|(k, _)| *k <= end));
    }
    let next = window.last().map(|(k, _)| k.clone());
    let manifests: Vec<Manifest> = window
        .into_iter()
        .filter_map(|(_, v)| serde_json::from_value(v).ok())
        .filter(|m: &Manifest| m.doc_id.paperless_id().is_some())
        .collect();
    let mut removed = 0;
    for batch in manifests.chunks(100) {
        let wanted: Vec<u64> = batch
            .iter()
            .filter_map(|m| m.doc_id.paperless_id())
            .collect();
        let mut existing = BTreeSet::new();
        all_pages(
            paperless.as_ref(),
            &DocumentQuery {
                ids: Some(wanted),
                ..Default::default()
            },
            |d| {
                existing.insert(d.id);
            },
        )
        .await?;
        for m in batch.iter().filter(|m| {
            !m.doc_id
                .paperless_id()
                .is_some_and(|id| existing.contains(&id))
        }) {
            let keys: Vec<String> = m
                .chunks
                .iter()
                .map(|c| Manifest::vector_key(&m.doc_id, c))
                .collect();
            for k in keys.chunks(MAX_VECTORS_PER_CALL) {
                svc.vectors.delete(k).await?;
            }
            state.delete(&manifest_key(&m.doc_id)).await?;
            state.delete(&format!("tagged/{}", m.doc_id)).await?;
            tracing::info!(doc_id = %m.doc_id, "document deleted in Paperless: removed from the index");
            removed += 1;
        }
    }
    if let Some(k) = next {
        state
            .put("sync/deletion_cursor", &json!(k), Condition::None, None)
            .await?;
    }
    Ok(removed)
}
