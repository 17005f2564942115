//! Sync: catches what webhooks miss (Paperless retries a webhook only on HTTP errors, not on a
//! refused connection) and heals what outages broke. Each run queues the documents modified
//! since the last run and those carrying the trigger tag, runs again the jobs that failed for a
//! transient reason, fails the jobs of dead-lettered messages, and checks a rotating window of
//! known documents so no run re-lists the whole library: those deleted in Paperless leave the
//! index, those whose index is incomplete (a chunk without its vector) are queued again.
//! Idempotent: re-queued documents are no-ops downstream (same text, same policy).

use std::collections::BTreeSet;

use serde::Serialize;
use serde_json::json;

use super::{BlobSlot, Core, PipelineError, Queues, Services, healing, index};
use crate::domain::{JobOrigin, JobStatus, Manifest, ObjectKind, Stage};
use crate::ports::{Condition, DocumentQuery};

use crate::state_keys::{MANIFESTS, SYNC_CURSOR as CURSOR_KEY, SYNC_DELETION_CURSOR};
/// Known documents checked for deletion per run.
const DELETION_WINDOW: usize = 500;

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SyncReport {
    /// Documents queued for processing, and their jobs.
    pub queued: usize,
    pub jobs: Vec<String>,
    /// Documents deleted in Paperless whose vectors were removed.
    pub removed: usize,
    /// Documents queued again because their index lacked chunks.
    #[serde(default)]
    pub incomplete: usize,
    /// Jobs that had failed for a transient reason, run again.
    #[serde(default)]
    pub retried: Vec<String>,
    /// Failed tags written now that Paperless was unreachable for when their jobs failed.
    #[serde(default)]
    pub failed_tags_written: usize,
    /// The newest modification time seen (the next run starts after it).
    pub cursor: Option<String>,
}

async fn all_pages(
    paperless: &dyn crate::ports::PaperlessReader,
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

/// One sync run, traced as one `sync` span (its Paperless listing calls beneath it); each
/// document it queues opens a trace of its own.
pub async fn run<B: BlobSlot, M>(
    svc: &Services<B, Queues, M>,
) -> Result<SyncReport, PipelineError> {
    use tracing::Instrument;
    sync_once(svc)
        .instrument(tracing::info_span!(parent: None, "sync"))
        .await
}

async fn sync_once<B: BlobSlot, M>(
    svc: &Services<B, Queues, M>,
) -> Result<SyncReport, PipelineError> {
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
            let key = crate::state_keys::sync_trigger_key(d.id);
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
    // On AWS nothing else watches the dead-letter queues (`pai`'s workers do it themselves);
    // queues this function cannot read are skipped.
    for (stage, queue) in [
        (Stage::Chunk, &svc.queues.chunk),
        (Stage::Embed, &svc.queues.embed),
        (Stage::Tag, &svc.queues.tag),
    ] {
        if let Err(e) = healing::note_dead_letters(svc, &svc.writer, stage, queue.as_ref()).await {
            tracing::debug!(?stage, error = %e, "dead letters not checked");
        }
    }
    let retried = healing::retry_transient_failures(svc).await?;
    let marked = super::tag::write_pending_failed_marks(svc, &svc.writer).await?;
    let (removed, incomplete) = check_window(svc, &ids).await?;
    if newest != cursor {
        let condition = saved.map_or(Condition::Absent, |v| Condition::Version(v.version));
        state
            .put(CURSOR_KEY, &json!({"modified": newest}), condition, None)
            .await?;
    }
    tracing::info!(
        queued = ids.len(),
        removed,
        incomplete,
        retried = retried.len(),
        failed_tags_written = marked,
        "sync done"
    );
    Ok(SyncReport {
        queued: ids.len() + incomplete,
        jobs,
        removed,
        incomplete,
        retried,
        failed_tags_written: marked,
        cursor: newest,
    })
}

/// How long a job may go on before sync treats it as abandoned (its messages lost).
const ABANDONED_AFTER_SECS: i64 = 86_400;

/// Checks the next window of indexed Paperless documents: those Paperless no longer has are
/// forgotten (vectors, manifest, loop-guard record); those whose index lacks chunks, and whose
/// last job is not still at work, are queued again (`queued_now` were queued by this run).
/// Returns (removed, re-queued).
async fn check_window<B: BlobSlot, M>(
    svc: &Services<B, Queues, M>,
    queued_now: &BTreeSet<u64>,
) -> Result<(usize, usize), PipelineError> {
    let paperless = svc.paperless.clone().expect("checked by run");
    let state = svc.state.as_ref();
    let after = state
        .get(SYNC_DELETION_CURSOR)
        .await?
        .and_then(|v| v.value.as_str().map(str::to_string));
    let mut window = state
        .list(MANIFESTS, after.as_deref(), DELETION_WINDOW)
        .await?;
    // Wrap around: a library smaller than the window is checked whole on every run.
    if window.len() < DELETION_WINDOW && after.is_some() {
        let head = state
            .list(MANIFESTS, None, DELETION_WINDOW - window.len())
            .await?;
        let end = after.clone().unwrap_or_default();
        window.extend(head.into_iter().filter(|(k, _)| *k <= end));
    }
    let next = window.last().map(|(k, _)| k.clone());
    let mut manifests: Vec<Manifest> = Vec::with_capacity(window.len());
    for (key, value) in window {
        match index::resolve(svc, value).await {
            Ok(m) if m.doc_id.paperless_id().is_some() => manifests.push(m),
            Ok(_) => {}
            Err(e) => tracing::warn!(key, error = %e, "manifest not checked"),
        }
    }
    let (mut removed, mut requeued) = (0, 0);
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
        for m in batch {
            let id = m.doc_id.paperless_id().expect("filtered");
            if !existing.contains(&id) {
                index::forget_index(svc, m).await?;
                if let Some(blobs) = svc.blobs.store() {
                    index::forget_snapshot(blobs, m).await;
                }
                state
                    .delete(&crate::state_keys::tagged_key(&m.doc_id))
                    .await?;
                tracing::info!(doc_id = %m.doc_id, "document deleted in Paperless: removed from the index");
                removed += 1;
                continue;
            }
            if queued_now.contains(&id) || still_at_work(svc, &m.job_id).await? {
                continue;
            }
            let lacking = index::unindexed(svc, m, &[&m.job_id]).await?;
            if !lacking.is_empty() {
                tracing::info!(doc_id = %m.doc_id, missing = lacking.len(), "index incomplete: document queued again");
                super::ingest::paperless_document(svc, id, JobOrigin::Sync).await?;
                requeued += 1;
            }
        }
    }
    if let Some(k) = next {
        state
            .put(SYNC_DELETION_CURSOR, &json!(k), Condition::None, None)
            .await?;
    }
    Ok((removed, requeued))
}

/// Whether a document's last job is still queued or running (and not abandoned).
async fn still_at_work(svc: &Core, job_id: &str) -> Result<bool, PipelineError> {
    let Some(job) = super::load_job(svc.state.as_ref(), job_id).await? else {
        return Ok(false);
    };
    Ok(
        matches!(job.status(), JobStatus::Queued | JobStatus::Running)
            && super::now() - job.created_at < ABANDONED_AFTER_SECS,
    )
}
