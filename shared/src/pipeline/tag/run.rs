//! The tag stage (feature `stage-tag`): one worker per document (a lease renewed while it
//! works), the loop guard, the model call and the outcome: the review mark, the suggestion
//! record, and what follows a write (the index's metadata, the loop guard, the job).

use std::sync::Arc;

use serde_json::json;

use crate::domain::{
    DocId, DocMeta, Document, DocumentPatch, Manifest, ObjectKind, Stage, StageStatus, TagTask,
    Taxonomy,
};
use crate::pipeline::chunk::load_manifest;
use crate::pipeline::index::read_snapshot;
use crate::pipeline::{Blobs, Core, PipelineError, Services, Writer, set_stage};
use crate::ports::{Condition, StoreError};
use crate::text::fold;

use super::*;
use crate::state_keys::{tag_lease_key as lease_key, tagged_key};

/// How long one worker holds a document without renewing it: longer than any model call with
/// its retries, short enough that a crashed worker's document is picked up again the same hour.
pub(super) const LEASE_SECS: i64 = 15 * 60;

/// A worker renews its lease this often while it works (a heartbeat).
pub(super) const LEASE_BEAT: std::time::Duration = std::time::Duration::from_secs(20);

/// A lease of our own job whose heartbeat is older than this belongs to a worker that died;
/// a younger one to a worker still at it (a redelivery while a slow model thinks).
pub(super) const LEASE_STALE_SECS: i64 = 60;

/// How long a job waits for another job tagging the same document.
pub(super) const LEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// This process, in its leases: a lease of our own job held by another process is a dead
/// one's (a `pai` that was killed and restarted, a Lambda instance that timed out before SQS
/// made the message visible again), and is taken over at once.
pub(super) static INSTANCE: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| uuid::Uuid::new_v4().to_string());

pub(super) fn lease_value(task: &TagTask) -> serde_json::Value {
    json!({"job_id": task.job_id, "beat": crate::pipeline::now(), "instance": *INSTANCE})
}

/// One writer per document: a conditional write with expiry, renewed while the work goes on.
/// Another job holding it means a duplicate (webhook and sync) is running, and so does our own
/// job's lease held in this process with a fresh heartbeat (a redelivery while the first
/// delivery still works): this one waits and then finds the document tagged. Our own job's
/// lease from another process, or with a stale heartbeat, is a dead worker's: taken over.
/// Returns the lease's version.
pub(super) async fn acquire_lease(svc: &Core, task: &TagTask) -> Result<u64, PipelineError> {
    let key = lease_key(&task.doc_id);
    let until = crate::pipeline::now() + LEASE_SECS;
    let busy = |holder: &str| PipelineError::Deferred {
        reason: format!("document {} is being tagged by job {holder}", task.doc_id),
        after: LEASE_WAIT,
    };
    match svc
        .state
        .put(&key, &lease_value(task), Condition::Absent, Some(until))
        .await
    {
        Ok(version) => Ok(version),
        Err(StoreError::Conflict(_)) => match svc.state.get(&key).await? {
            Some(h)
                if h.value["job_id"] == task.job_id.as_str()
                    && (h.value["instance"] != INSTANCE.as_str()
                        || crate::pipeline::now() - h.value["beat"].as_i64().unwrap_or(0)
                            > LEASE_STALE_SECS) =>
            {
                svc.state
                    .put(
                        &key,
                        &lease_value(task),
                        Condition::Version(h.version),
                        Some(until),
                    )
                    .await
                    .map_err(|_| busy(&task.job_id))
            }
            // Not a failure of this message: it waits without spending a receive, so a slow
            // duplicate cannot dead-letter it (the lease expires on its own).
            Some(h) => Err(busy(h.value["job_id"].as_str().unwrap_or("?"))),
            None => Err(PipelineError::Retry("lease released meanwhile".into())),
        },
        Err(e) => Err(e.into()),
    }
}

/// Runs `work` holding the lease at `version`, renewing it every `LEASE_BEAT`.
pub(super) async fn holding_lease<F>(
    svc: &Core,
    task: &TagTask,
    mut version: u64,
    work: F,
) -> F::Output
where
    F: std::future::Future,
{
    let key = lease_key(&task.doc_id);
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + LEASE_BEAT, LEASE_BEAT);
    tokio::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = beat.tick() => {
                let until = crate::pipeline::now() + LEASE_SECS;
                match svc.state.put(&key, &lease_value(task), Condition::Version(version), Some(until)).await {
                    Ok(v) => version = v,
                    Err(e) => tracing::warn!(job_id = %task.job_id, error = %e, "could not renew the document's lease"),
                }
            }
        }
    }
}

pub(super) async fn release_lease(svc: &Core, task: &TagTask) {
    let key = lease_key(&task.doc_id);
    if let Ok(Some(h)) = svc.state.get(&key).await
        && h.value["job_id"] == task.job_id.as_str()
    {
        let _ = svc.state.delete(&key).await;
    }
}

/// Tags one document version. Everything, from the loop guard's verdict on, happens holding
/// the document's lease: a duplicate that waited for it reads what the first run wrote.
pub async fn run<Q: Sync>(svc: &Services<Blobs, Q>, task: &TagTask) -> Result<(), PipelineError> {
    let version = acquire_lease(svc, task).await?;
    let result = holding_lease(svc, task, version, run_leased(svc, task)).await;
    release_lease(svc, task).await;
    result
}

pub(super) async fn run_leased<Q: Sync>(
    svc: &Services<Blobs, Q>,
    task: &TagTask,
) -> Result<(), PipelineError> {
    let policy = &svc.settings.policy;
    let guard = json!({"content_hash": task.content_hash, "policy": policy.fingerprint(), "model": svc.models.model.name()});
    let tagged = svc
        .state
        .get(&tagged_key(&task.doc_id))
        .await?
        .map(|v| v.value);
    if tagged
        .as_ref()
        .is_some_and(|t| t["guard"] == guard && t["job_id"] == task.job_id.as_str())
    {
        // This very message, delivered again: its job already records the outcome.
        return Ok(());
    }
    let known_here = tagged.is_some();
    let same_guard = tagged.as_ref().is_some_and(|t| t["guard"] == guard);
    let retag_requested = svc.state.get(&retag_key(&task.doc_id)).await?.is_some();
    let existing: Option<SuggestionRecord> = svc
        .state
        .get(&suggestion_key(&task.doc_id))
        .await?
        .and_then(|v| serde_json::from_value(v.value).ok());
    let taxonomy = svc.taxonomy().await?;
    // A pending intent means a PATCH may have landed after the chunk stage's reading: only
    // Paperless can tell.
    let pending = existing.as_ref().is_some_and(|r| r.pending);
    let paperless_doc: Option<Document> = match (&task.doc_id, &svc.paperless) {
        (DocId::Paperless(id), Some(p)) => Some(match recent_read(task).filter(|_| !pending) {
            Some(doc) => doc,
            None => p.document(*id).await?,
        }),
        (DocId::Paperless(_), None) => {
            return Err(PipelineError::Fail(
                "PAPERLESS_URL is not configured".into(),
            ));
        }
        _ => None,
    };
    let taxonomy = match &paperless_doc {
        Some(doc) => svc.taxonomy_for(doc).await?,
        None => taxonomy,
    };
    let has = |name: Option<&str>| {
        tag_id(&taxonomy, name)
            .is_some_and(|t| paperless_doc.as_ref().is_some_and(|d| d.tags.contains(&t)))
    };
    // The trigger tag is the user asking from Paperless for a re-run.
    let forced = retag_requested || has(policy.trigger_tag.as_deref());
    let failed_before = match svc.state.get(&failed_key(&task.doc_id)).await? {
        Some(f) if f.value["guard"] == guard && has(Some(&policy.failed_tag)) => {
            Some(f.value["reason"].as_str().unwrap_or("").to_string())
        }
        _ => None,
    };
    // A recorded intent whose PATCH already shows in Paperless: the worker stopped between the
    // PATCH and its bookkeeping (the processed tag it shows is ours, not a reinstall's).
    let recovering = match (&paperless_doc, &existing) {
        (Some(doc), Some(r)) => {
            r.pending
                && r.content_hash == task.content_hash
                && r.applied.as_ref().is_some_and(|a| visible_in(doc, a))
        }
        _ => false,
    };
    let skip = if let Some(reason) = paperless_doc
        .as_ref()
        .and_then(|doc| excluded(doc, &taxonomy, policy))
    {
        Some(reason)
    } else if forced || recovering {
        None
    } else if same_guard {
        metrics::counter!(crate::metrics::DOCUMENTS_TAGGED, "outcome" => "unchanged").increment(1);
        Some("already tagged: same text, same policy".to_string())
    } else if !known_here && has(Some(&policy.processed_tag)) {
        // A store that has never tagged this document (a reinstall, a second instance) trusts
        // the processed tag Paperless shows: no second model call, no second bill.
        metrics::counter!(crate::metrics::DOCUMENTS_TAGGED, "outcome" => "unchanged").increment(1);
        Some(format!(
            "already carries {:?} in Paperless",
            policy.processed_tag
        ))
    } else {
        // Our own failed-tag PATCH fires a webhook too: it must not buy a second attempt.
        failed_before.map(|reason| {
            format!(
                "failed before with the same text and policy ({reason}); add {} or POST /documents/{}/retag to try again",
                policy
                    .trigger_tag
                    .as_deref()
                    .map(|t| format!("the tag {t:?}"))
                    .unwrap_or_else(|| "TRIGGER_TAG".into()),
                task.doc_id
            )
        })
    };
    if let Some(reason) = skip {
        set_stage(
            svc.state.as_ref(),
            &task.job_id,
            Stage::Tag,
            StageStatus::Skipped,
            Some(reason),
            None,
        )
        .await?;
        return Ok(());
    }
    let recovered = existing.filter(|_| recovering);
    tag_leased(svc, task, &guard, paperless_doc, taxonomy, recovered).await
}

/// How old the chunk stage's reading of a document may be for the tag stage to decide from
/// it (seconds): behind a longer queue the document is read again.
pub(super) const READ_MAX_AGE_SECS: i64 = 60;

/// The chunk stage's reading of this task's document, when it is recent (either way round:
/// stages on two machines do not share a clock). Its text is not in it.
pub(super) fn recent_read(task: &TagTask) -> Option<Document> {
    let read = task.read.as_ref()?;
    let for_this = matches!(task.doc_id, DocId::Paperless(id) if id == read.document.id);
    (for_this && (crate::pipeline::now() - read.at).abs() <= READ_MAX_AGE_SECS)
        .then(|| read.document.clone())
}

/// The text to tag: the document's when it was read with its text, else the snapshot the
/// chunk stage kept of this version; a Paperless document whose snapshot is gone (deleted
/// with the index entry meanwhile) is read again. With it, its token count when the chunk
/// stage's count is of this very text (the snapshot of the task's version).
pub(super) async fn version_text<Q: Sync>(
    svc: &Services<Blobs, Q>,
    task: &TagTask,
    doc: Option<&Document>,
) -> Result<(String, Option<usize>), PipelineError> {
    if let Some(doc) = doc.filter(|d| !d.content.is_empty()) {
        return Ok((doc.content.clone(), None));
    }
    let snapshot = read_snapshot(svc.blobs.as_ref(), &task.doc_id, &task.content_hash).await?;
    match (snapshot, doc, &svc.paperless) {
        (Some(text), _, _) => Ok((text, task.text_tokens)),
        (None, Some(doc), Some(paperless)) => Ok((paperless.document(doc.id).await?.content, None)),
        (None, _, _) => Err(PipelineError::Fail("text snapshot is missing".into())),
    }
}

/// Whether every field of `applied` already shows in `doc`: the PATCH of a recorded intent
/// reached Paperless before the worker stopped.
pub(super) fn visible_in(doc: &Document, applied: &DocumentPatch) -> bool {
    let date = |d: &Option<String>| d.as_deref().map(|d| d.chars().take(10).collect::<String>());
    applied.title.as_ref().is_none_or(|t| *t == doc.title)
        && applied.tags.as_ref().is_none_or(|t| {
            let mut a = t.clone();
            let mut b = doc.tags.clone();
            a.sort_unstable();
            b.sort_unstable();
            a == b
        })
        && applied.correspondent.is_none_or(|c| c == doc.correspondent)
        && applied.document_type.is_none_or(|c| c == doc.document_type)
        && applied.storage_path.is_none_or(|c| c == doc.storage_path)
        && applied
            .created
            .as_ref()
            .is_none_or(|c| date(c) == date(&doc.created))
        && applied
            .custom_fields
            .as_ref()
            .is_none_or(|f| f.iter().all(|f| doc.custom_fields.contains(f)))
}

/// The tagging proper, holding the document's lease.
pub(super) async fn tag_leased<Q: Sync>(
    svc: &Services<Blobs, Q>,
    task: &TagTask,
    guard: &serde_json::Value,
    paperless_doc: Option<Document>,
    taxonomy: Arc<Taxonomy>,
    recovered: Option<SuggestionRecord>,
) -> Result<(), PipelineError> {
    let policy = &svc.settings.policy;
    let manifest = load_manifest(svc, &task.doc_id).await?;
    // Finish the bookkeeping of a PATCH that happened: no second model call, undo intact.
    if let (Some(doc), Some(mut record)) = (&paperless_doc, recovered) {
        record.pending = false;
        put_record(svc, &record).await?;
        return finish(
            svc,
            task,
            guard,
            manifest,
            Some(doc.clone()),
            None,
            "applied",
            &record.rejected,
        )
        .await;
    }
    let (text, text_tokens) = version_text(svc, task, paperless_doc.as_ref()).await?;
    let current_title = paperless_doc
        .as_ref()
        .map(|d| d.title.clone())
        .or_else(|| manifest.as_ref().map(|(m, _)| m.meta.title.clone()))
        .unwrap_or_default();
    let today = svc.settings.today();
    let (input, estimate) = {
        let svc = svc.core.clone();
        let taxonomy = taxonomy.clone();
        tokio::task::spawn_blocking(move || {
            prompt_input(&svc, &taxonomy, current_title, &text, text_tokens, today)
        })
        .await
        .map_err(|e| PipelineError::Retry(format!("budgeting task failed: {e}")))??
    };
    // The day's tagging budget, reserved before the call (atomically: concurrent workers
    // cannot all pass a check and then overspend together), settled after it.
    let cap = svc.settings.llm_daily_tokens;
    let usage_key = crate::state_keys::tagging_usage_key(today);
    let reserved = if cap > 0 {
        let reserve = estimate as i64;
        let used = svc.state.add(&usage_key, "tokens", reserve).await?;
        if used > cap as i64 {
            svc.state.add(&usage_key, "tokens", -reserve).await?;
            return Err(PipelineError::Fail(format!(
                "the daily tagging budget of {cap} model tokens (LLM_DAILY_TOKENS) is used up; re-queue the document tomorrow"
            )));
        }
        reserve
    } else {
        0
    };
    let reply = svc.models.model.suggest(&input).await;
    if let Ok((_, usage)) = &reply {
        crate::pipeline::add_job_usage(svc.state.as_ref(), &task.job_id, usage).await;
    }
    let spent = reply
        .as_ref()
        .map(|(_, u)| (u.input_tokens + u.output_tokens) as i64)
        .unwrap_or(0);
    if cap > 0 {
        svc.state
            .add(&usage_key, "tokens", spent - reserved)
            .await?;
    } else if spent > 0 {
        svc.state.add(&usage_key, "tokens", spent).await?;
    }
    let (raw, _) = reply?;
    let control = control_tags(&svc.settings);
    let (suggestion, rejected) = validate(raw, &input, today, &control);

    let mut record = SuggestionRecord {
        doc_id: task.doc_id.clone(),
        job_id: task.job_id.clone(),
        provider: svc.models.model.name().to_string(),
        content_hash: task.content_hash.clone(),
        suggestion: suggestion.clone(),
        rejected: rejected.clone(),
        applied: None,
        previous: None,
        review: policy.review_mode,
        at: crate::pipeline::now(),
        undone_at: None,
        undone: None,
        pending: false,
        kept_by_user: Vec::new(),
    };
    let (outcome, after) = match &paperless_doc {
        Some(doc) => {
            let (Some(paperless), Some(writer)) = (&svc.paperless, &svc.writer) else {
                unreachable!("a Paperless document has Paperless, to read and to write")
            };
            // Read again right before writing: the model took seconds (minutes on Ollama), and
            // what the user changed meanwhile wins.
            let fresh = paperless.document_metadata(doc.id).await?;
            let (patch, previous, kept) = if policy.review_mode {
                let (patch, previous) = review_mark(svc, &svc.writer, &fresh, &taxonomy).await?;
                (patch, previous, Vec::new())
            } else {
                plan(svc, &svc.writer, doc, &fresh, &suggestion, &taxonomy).await?
            };
            record.kept_by_user = kept;
            if !policy.review_mode {
                record.applied = Some(patch.clone());
                record.previous = Some(previous);
            }
            // The intent is recorded before the PATCH: a crash after it loses neither the
            // suggestion nor what undo needs.
            record.pending = !patch.is_empty() && !policy.review_mode;
            put_record(svc, &record).await?;
            if !patch.is_empty() {
                writer.patch(doc.id, &patch).await?;
            }
            if record.pending {
                record.pending = false;
                put_record(svc, &record).await?;
            }
            let outcome = if policy.review_mode {
                "stored"
            } else {
                "applied"
            };
            (outcome, Some(apply(&fresh, &patch)))
        }
        None => {
            put_record(svc, &record).await?;
            ("stored", None)
        }
    };
    let suggested_meta = paperless_doc.is_none().then_some(&suggestion);
    finish(
        svc,
        task,
        guard,
        manifest,
        after,
        suggested_meta,
        outcome,
        &rejected,
    )
    .await
}

pub(super) async fn put_record(svc: &Core, record: &SuggestionRecord) -> Result<(), PipelineError> {
    svc.state
        .put(
            &suggestion_key(&record.doc_id),
            &serde_json::to_value(record).expect("record serialises"),
            Condition::None,
            None,
        )
        .await?;
    Ok(())
}

/// The document as it is after `patch` (what Paperless now shows).
pub(super) fn apply(doc: &Document, patch: &DocumentPatch) -> Document {
    let mut d = doc.clone();
    if let Some(t) = &patch.title {
        d.title = t.clone();
    }
    if let Some(t) = &patch.tags {
        d.tags = t.clone();
    }
    if let Some(c) = patch.correspondent {
        d.correspondent = c;
    }
    if let Some(c) = patch.document_type {
        d.document_type = c;
    }
    if let Some(c) = &patch.created {
        d.created = c.clone();
    }
    if let Some(c) = patch.storage_path {
        d.storage_path = c;
    }
    if let Some(f) = &patch.custom_fields {
        d.custom_fields = f.clone();
    }
    d
}

/// After the write: the index's metadata follows what Paperless shows, the loop guard is set,
/// a pending retag request and an earlier failure are cleared, and the job shows the outcome.
#[allow(clippy::too_many_arguments)]
pub(super) async fn finish(
    svc: &Core,
    task: &TagTask,
    guard: &serde_json::Value,
    manifest: Option<(Manifest, u64)>,
    after: Option<Document>,
    suggested: Option<&Suggestion>,
    outcome: &'static str,
    rejected: &[String],
) -> Result<(), PipelineError> {
    // The manifest read before the model call may have moved on meanwhile (another job of the
    // same document chunked it): the metadata is written over a fresh read, a few times.
    let mut manifest = manifest;
    for _ in 0..5 {
        let Some((mut m, version)) = manifest.take() else {
            break;
        };
        let meta = match (&after, suggested) {
            (Some(doc), _) => crate::pipeline::chunk::paperless_meta(doc, &*svc.taxonomy().await?),
            (None, Some(s)) => DocMeta {
                title: s.title.clone().unwrap_or(m.meta.title.clone()),
                tags: s.tags.iter().map(|t| fold(t)).collect(),
                correspondent: s.correspondent.as_deref().map(fold),
                document_type: s.document_type.as_deref().map(fold),
                created: s.created.clone(),
                owner: m.meta.owner,
                shared_with: m.meta.shared_with.clone(),
            },
            (None, None) => m.meta.clone(),
        };
        if meta == m.meta {
            break;
        }
        m.meta = meta;
        match crate::pipeline::index::save_manifest(svc, &m, Condition::Version(version)).await {
            Ok(_) => {
                crate::pipeline::index::refresh_vector_metadata(svc, &m).await?;
                break;
            }
            Err(PipelineError::Retry(_)) => manifest = load_manifest(svc, &task.doc_id).await?,
            Err(e) => return Err(e),
        }
    }
    svc.state
        .put(
            &tagged_key(&task.doc_id),
            &json!({"guard": guard, "job_id": task.job_id}),
            Condition::None,
            None,
        )
        .await?;
    svc.state.delete(&retag_key(&task.doc_id)).await?;
    svc.state.delete(&failed_key(&task.doc_id)).await?;
    metrics::counter!(crate::metrics::DOCUMENTS_TAGGED, "outcome" => outcome).increment(1);
    let mut detail = format!("suggestion {outcome}");
    if !rejected.is_empty() {
        detail.push_str(&format!("; refused: {}", rejected.join("; ")));
    }
    // The latest outcome is what the job shows: a retried job that now succeeds is done.
    crate::pipeline::set_stage_latest(
        svc.state.as_ref(),
        &task.job_id,
        Stage::Tag,
        StageStatus::Done,
        Some(detail),
        Some(svc.names.model.clone()),
    )
    .await?;
    tracing::info!(outcome, "tagged");
    Ok(())
}

/// The review mark: `REVIEW_TAG` added (and the trigger tag removed), so a Paperless user
/// finds what waits for review; nothing else changes until approval.
pub(super) async fn review_mark(
    svc: &Core,
    writer: &Writer,
    fresh: &Document,
    taxonomy: &Taxonomy,
) -> Result<(DocumentPatch, DocumentPatch), PipelineError> {
    let policy = &svc.settings.policy;
    let review = object_id(
        svc,
        writer,
        taxonomy,
        ObjectKind::Tag,
        &svc.settings.review_tag,
    )
    .await?;
    let drop = [
        tag_id(taxonomy, policy.trigger_tag.as_deref()),
        tag_id(taxonomy, Some(&policy.failed_tag)),
    ];
    let mut tags: Vec<u64> = fresh
        .tags
        .iter()
        .copied()
        .filter(|t| !drop.contains(&Some(*t)))
        .collect();
    if !tags.contains(&review) {
        tags.push(review);
    }
    let mut patch = DocumentPatch::default();
    let mut previous = DocumentPatch::default();
    if tags != fresh.tags {
        patch.tags = Some(tags);
        previous.tags = Some(fresh.tags.clone());
    }
    Ok((patch, previous))
}
