//! Review: approving a stored suggestion (with a reviewer's edits) and undoing an applied one.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::Deserialize;

use crate::domain::{DocId, Document, DocumentPatch, Field, ObjectKind};
use crate::pipeline::{Core, PipelineError, Writer};
use crate::ports::{Condition, PaperlessReader, PaperlessWriter, StoreError};
use crate::text::plausible_date;

use super::*;

/// Why a review action (approve, undo) was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("no suggestion for document {0}")]
    NotFound(DocId),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
}

impl From<StoreError> for ReviewError {
    fn from(e: StoreError) -> Self {
        ReviewError::Pipeline(e.into())
    }
}

impl From<crate::ports::PaperlessError> for ReviewError {
    fn from(e: crate::ports::PaperlessError) -> Self {
        ReviewError::Pipeline(e.into())
    }
}

/// Changes a reviewer makes to a suggestion before approving it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Edits {
    pub title: Option<String>,
    pub tags: Option<Vec<String>>,
    pub correspondent: Option<String>,
    pub document_type: Option<String>,
    pub created: Option<String>,
    /// Fields the reviewer switched off: left as they are in Paperless.
    #[serde(default)]
    pub skip: BTreeSet<Field>,
}

pub(super) async fn load_record(
    svc: &Core,
    doc_id: &DocId,
) -> Result<(SuggestionRecord, u64), ReviewError> {
    let v = svc
        .state
        .get(&suggestion_key(doc_id))
        .await?
        .ok_or_else(|| ReviewError::NotFound(doc_id.clone()))?;
    let record = serde_json::from_value(v.value)
        .map_err(|e| PipelineError::Fail(format!("corrupt suggestion of {doc_id}: {e}")))?;
    Ok((record, v.version))
}

/// A reviewed document in Paperless: its id, and Paperless to read it and to write it.
pub(super) type Target = (u64, Arc<dyn PaperlessReader>, Arc<dyn PaperlessWriter>);

pub(super) fn paperless_target(
    svc: &Core,
    writer: &Writer,
    doc_id: &DocId,
) -> Result<Target, ReviewError> {
    match (doc_id.paperless_id(), &svc.paperless, writer) {
        (Some(id), Some(read), Some(write)) => Ok((id, read.clone(), write.clone())),
        _ => Err(ReviewError::Conflict(format!(
            "document {doc_id} is not in Paperless: there is nothing to write back"
        ))),
    }
}

/// Makes the index's filterable metadata what Paperless shows for the document now.
pub(super) async fn sync_index_meta(
    svc: &Core,
    doc_id: &DocId,
    doc: &Document,
) -> Result<(), PipelineError> {
    let taxonomy = svc.taxonomy().await?;
    let meta = crate::pipeline::chunk::paperless_meta(doc, &taxonomy);
    crate::pipeline::index::update_meta(svc, doc_id, meta)
        .await
        .map(|_| ())
}

/// Stores a reviewed record at the version it was read at (a concurrent review conflicts),
/// then makes the index's metadata what Paperless shows after the write.
async fn save_and_sync(
    svc: &Core,
    doc_id: &DocId,
    (id, paperless): (u64, &Arc<dyn PaperlessReader>),
    record: &SuggestionRecord,
    version: u64,
) -> Result<(), ReviewError> {
    svc.state
        .put(
            &suggestion_key(doc_id),
            &serde_json::to_value(record).expect("record serialises"),
            Condition::Version(version),
            None,
        )
        .await?;
    sync_index_meta(svc, doc_id, &paperless.document(id).await?).await?;
    Ok(())
}

/// Applies a stored suggestion (review mode), with the reviewer's edits, by read-merge-write.
pub async fn approve(
    svc: &Core,
    writer: &Writer,
    doc_id: &DocId,
    edits: Edits,
) -> Result<SuggestionRecord, ReviewError> {
    let (mut record, version) = load_record(svc, doc_id).await?;
    let (id, paperless, write) = paperless_target(svc, writer, doc_id)?;
    if record.applied.is_some() && record.undone_at.is_none() {
        return Err(ReviewError::Conflict(format!(
            "the suggestion for document {doc_id} is already applied"
        )));
    }
    let mut s = record.suggestion.clone();
    s.title = edits.title.or(s.title);
    s.tags = edits.tags.unwrap_or(s.tags);
    s.correspondent = edits.correspondent.or(s.correspondent);
    s.document_type = edits.document_type.or(s.document_type);
    s.created = edits.created.or(s.created);
    for field in &edits.skip {
        match field {
            Field::Title => s.title = None,
            Field::Tags => s.tags.clear(),
            Field::Correspondent => s.correspondent = None,
            Field::DocumentType => s.document_type = None,
            Field::Created => s.created = None,
            Field::CustomFields => s.custom_fields.clear(),
            Field::StoragePath => s.storage_path = None,
        }
    }
    let taxonomy = svc.taxonomy().await.map_err(ReviewError::from)?;
    let policy = &svc.settings.policy;
    let restricted = |kind: ObjectKind, name: &str| {
        policy.restrict.contains(&kind) && taxonomy.find(kind, name).is_none()
    };
    if let Some(bad) = s.tags.iter().find(|t| restricted(ObjectKind::Tag, t)) {
        return Err(ReviewError::Pipeline(PipelineError::Fail(format!(
            "tag {bad:?} is not in the existing taxonomy"
        ))));
    }
    for (kind, name) in [
        (ObjectKind::Correspondent, &s.correspondent),
        (ObjectKind::DocumentType, &s.document_type),
    ] {
        if let Some(n) = name.as_deref().filter(|n| restricted(kind, n)) {
            return Err(ReviewError::Pipeline(PipelineError::Fail(format!(
                "{kind:?} {n:?} is not in the existing taxonomy"
            ))));
        }
    }
    if let Some(c) = &s.created {
        plausible_date(c, svc.settings.today())
            .map_err(|e| ReviewError::Pipeline(PipelineError::Fail(format!("created: {e}"))))?;
    }
    let doc = paperless.document(id).await?;
    // The reviewer decides now, on what the document shows now: no three-way merge.
    let (patch, previous, _) = plan(svc, writer, &doc, &doc, &s, &taxonomy).await?;
    if !patch.is_empty() {
        write.patch(id, &patch).await?;
    }
    record.suggestion = s;
    record.applied = Some(patch);
    record.previous = Some(previous);
    record.review = false;
    record.undone_at = None;
    record.undone = None;
    save_and_sync(svc, doc_id, (id, &paperless), &record, version).await?;
    Ok(record)
}

/// Restores what the applied suggestion replaced, where it is still ours: a field whose
/// current value is no longer what we wrote keeps the user's value (and is named in
/// `kept_by_user`). Tags it added are removed; tags the user added since are kept; the review
/// mark comes back (the suggestion waits for review again). The trigger and failed tags it
/// removed are not put back: both were answered, and a trigger tag put back would start a new
/// run at once (its "Document Updated" webhook), undoing the undo.
pub async fn undo(
    svc: &Core,
    writer: &Writer,
    doc_id: &DocId,
) -> Result<SuggestionRecord, ReviewError> {
    let (mut record, version) = load_record(svc, doc_id).await?;
    let (id, paperless, write) = paperless_target(svc, writer, doc_id)?;
    let (Some(applied), Some(previous)) = (record.applied.clone(), record.previous.clone()) else {
        return Err(ReviewError::Conflict(format!(
            "nothing applied to document {doc_id} to undo"
        )));
    };
    if record.undone_at.is_some() {
        return Err(ReviewError::Conflict(format!(
            "the suggestion for document {doc_id} was already undone"
        )));
    }
    let doc = paperless.document(id).await?;
    let mut patch = DocumentPatch::default();
    let mut kept = Vec::new();
    let date = |d: &Option<String>| d.as_deref().map(|d| d.chars().take(10).collect::<String>());
    if let (Some(ours), Some(before)) = (&applied.title, &previous.title) {
        if doc.title == *ours {
            patch.title = Some(before.clone());
        } else {
            kept.push("title".to_string());
        }
    }
    for (name, ours, before, now, slot) in [
        (
            "correspondent",
            applied.correspondent,
            previous.correspondent,
            doc.correspondent,
            &mut patch.correspondent,
        ),
        (
            "document_type",
            applied.document_type,
            previous.document_type,
            doc.document_type,
            &mut patch.document_type,
        ),
        (
            "storage_path",
            applied.storage_path,
            previous.storage_path,
            doc.storage_path,
            &mut patch.storage_path,
        ),
    ] {
        if let (Some(ours), Some(before)) = (ours, before) {
            if now == ours {
                *slot = Some(before);
            } else {
                kept.push(name.to_string());
            }
        }
    }
    if let (Some(ours), Some(before)) = (&applied.created, &previous.created) {
        if date(&doc.created) == date(ours) {
            patch.created = Some(before.clone());
        } else {
            kept.push("created".to_string());
        }
    }
    if let (Some(after), Some(before)) = (&applied.tags, &previous.tags) {
        let mut tags: Vec<u64> = doc
            .tags
            .iter()
            .copied()
            .filter(|t| before.contains(t) || !after.contains(t))
            .collect();
        let taxonomy = svc.taxonomy().await?;
        let policy = &svc.settings.policy;
        let answered: Vec<u64> = [
            policy.trigger_tag.as_deref(),
            Some(policy.failed_tag.as_str()),
        ]
        .into_iter()
        .filter_map(|name| tag_id(&taxonomy, name))
        .collect();
        let restored: Vec<u64> = before
            .iter()
            .copied()
            .filter(|t| !after.contains(t) && !tags.contains(t) && !answered.contains(t))
            .collect();
        tags.extend(restored);
        if tags != doc.tags {
            patch.tags = Some(tags);
        }
    }
    // Custom fields we set go back to their previous values (or away) while they still hold
    // what we wrote; others stay.
    if let (Some(after), Some(before)) = (&applied.custom_fields, &previous.custom_fields) {
        let ours: Vec<&crate::domain::CustomFieldValue> =
            after.iter().filter(|f| !before.contains(f)).collect();
        let mut fields = doc.custom_fields.clone();
        for written in ours {
            match fields.iter().position(|f| f.field == written.field) {
                Some(i) if fields[i].value == written.value => {
                    match before.iter().find(|b| b.field == written.field) {
                        Some(old) => fields[i] = old.clone(),
                        None => {
                            fields.remove(i);
                        }
                    }
                }
                // Changed or removed by the user since: theirs.
                _ => kept.push(format!("custom field {}", written.field)),
            }
        }
        if fields != doc.custom_fields {
            patch.custom_fields = Some(fields);
        }
    }
    if !patch.is_empty() {
        write.patch(id, &patch).await?;
    }
    record.undone_at = Some(crate::pipeline::now());
    record.undone = Some(applied);
    record.kept_by_user = kept;
    save_and_sync(svc, doc_id, (id, &paperless), &record, version).await?;
    Ok(record)
}
