//! Failures on the document: the failed tag, written now or by a later sync run, and
//! forgetting a failure when a person asks for another attempt.

use serde_json::json;

use crate::domain::{DocId, DocumentPatch, ObjectKind};
use crate::pipeline::{Core, PipelineError, Writer};
use crate::ports::{Condition, StoreError};

use super::*;

/// Forgets that tagging failed on the document's current text: a retry is a person (or sync,
/// a bounded number of times) asking for another attempt, which the loop guard must not skip
/// as "failed before". A document tagged successfully stays guarded by its own record.
pub(crate) async fn forget_failure(svc: &Core, doc_id: &DocId) -> Result<(), StoreError> {
    svc.state.delete(&failed_key(doc_id)).await
}

/// Marks a Paperless document with the failed tag. When the tag stage failed on a known text
/// (`content_hash`), the failure is remembered under the loop guard first: the PATCH fires
/// "Document Updated", and that webhook must not buy a second full attempt at the same text
/// and policy. A write that fails is kept under `FAILED_MARK_PREFIX`, and every sync run
/// tries it again (`write_pending_failed_marks`) until it lands or the job runs again.
pub async fn mark_failed(
    svc: &Core,
    writer: &Writer,
    job_id: &str,
    content_hash: Option<&str>,
    reason: &str,
) {
    if let Err(e) = try_mark_failed(svc, writer, job_id, content_hash, reason).await {
        tracing::warn!(job_id, error = %e, "could not add the failed tag: sync will try again");
        let pending = json!({"content_hash": content_hash, "reason": reason});
        if let Err(e) = svc
            .state
            .put(&failed_mark_key(job_id), &pending, Condition::None, None)
            .await
        {
            tracing::warn!(job_id, error = %e, "could not keep the failed tag for sync either");
        }
    }
}

/// Sync's part: writes the failed tags that could not be written when their jobs failed.
/// A job that is no longer failed (it ran again) needs none. Returns how many were written.
pub async fn write_pending_failed_marks(
    svc: &Core,
    writer: &Writer,
) -> Result<usize, PipelineError> {
    let waiting = crate::pipeline::list_all(svc.state.as_ref(), FAILED_MARK_PREFIX).await?;
    let mut written = 0;
    for (key, pending) in waiting {
        let job_id = key.trim_start_matches(FAILED_MARK_PREFIX);
        let still_failed = crate::pipeline::load_job(svc.state.as_ref(), job_id)
            .await?
            .is_some_and(|job| job.status() == crate::domain::JobStatus::Failed);
        if still_failed {
            let hash = pending["content_hash"].as_str();
            let reason = pending["reason"].as_str().unwrap_or("failed");
            if let Err(e) = try_mark_failed(svc, writer, job_id, hash, reason).await {
                // Still unreachable: the next run tries again.
                tracing::info!(job_id, error = %e, "failed tag still not written");
                continue;
            }
            written += 1;
        }
        svc.state.delete(&key).await?;
    }
    Ok(written)
}

pub(super) async fn try_mark_failed(
    svc: &Core,
    writer: &Writer,
    job_id: &str,
    content_hash: Option<&str>,
    reason: &str,
) -> Result<(), PipelineError> {
    let Some(job) = crate::pipeline::load_job(svc.state.as_ref(), job_id).await? else {
        return Ok(());
    };
    let (Some(doc_id @ DocId::Paperless(id)), Some(paperless), Some(write)) =
        (job.doc_id, &svc.paperless, writer)
    else {
        return Ok(());
    };
    if let Some(hash) = content_hash {
        let guard = json!({"content_hash": hash, "policy": svc.settings.policy.fingerprint(), "model": svc.names.model});
        svc.state
            .put(
                &failed_key(&doc_id),
                &json!({"guard": guard, "job_id": job_id, "reason": reason}),
                Condition::None,
                None,
            )
            .await?;
    }
    // The request to re-run was answered (with a failure): it does not stand.
    svc.state.delete(&retag_key(&doc_id)).await?;
    let taxonomy = svc.taxonomy().await?;
    let doc = paperless.document(id).await?;
    let tag = object_id(
        svc,
        writer,
        &taxonomy,
        ObjectKind::Tag,
        &svc.settings.policy.failed_tag,
    )
    .await?;
    let trigger = tag_id(&taxonomy, svc.settings.policy.trigger_tag.as_deref());
    let mut tags: Vec<u64> = doc
        .tags
        .iter()
        .copied()
        .filter(|t| Some(*t) != trigger)
        .collect();
    if !tags.contains(&tag) {
        tags.push(tag);
    }
    if tags != doc.tags {
        write
            .patch(
                id,
                &DocumentPatch {
                    tags: Some(tags),
                    ..Default::default()
                },
            )
            .await?;
    }
    Ok(())
}
