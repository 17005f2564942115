//! Tag: one structured model call per document version, validated against the taxonomy and
//! the write policy, then written back to Paperless-ngx by read-merge-write (a PATCH replaces
//! whole sets), or stored as a suggestion (review mode, uploads). A version already tagged under
//! the same policy is a no-op: our own PATCH fires Paperless "Document Updated" workflows, and
//! they must not loop back into a second model call.

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::chunk::{load_manifest, manifest_key, snapshot_key};
use super::{PipelineError, Services, set_stage};
use crate::config::FieldMode;
use crate::domain::{
    DocId, DocMeta, Document, DocumentPatch, Field, Manifest, ObjectKind, Stage, StageStatus,
    Suggestion, TagInput, TagTask, Taxonomy,
};
use crate::ports::{Condition, MAX_VECTORS_PER_CALL, Paperless, StoreError};
use crate::text::{fit_head_tail, fold, plausible_date};

/// At most this many names of one kind go into a prompt; the rest of a large taxonomy is
/// represented by the names most relevant to the document and the most used.
pub const MAX_NAMES_PER_KIND: usize = 150;

/// What was suggested, what was applied, and what it replaced (for undo).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SuggestionRecord {
    pub doc_id: DocId,
    pub job_id: String,
    pub provider: String,
    pub content_hash: String,
    pub suggestion: Suggestion,
    /// Parts of the model's reply that were refused, with the reason.
    pub rejected: Vec<String>,
    /// The PATCH sent to Paperless, if any.
    pub applied: Option<DocumentPatch>,
    /// The values the PATCH replaced.
    pub previous: Option<DocumentPatch>,
    pub review: bool,
    pub at: i64,
    /// When an undo restored the previous values, and what it undid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undone_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undone: Option<DocumentPatch>,
}

pub fn suggestion_key(doc_id: &DocId) -> String {
    format!("suggestion/{doc_id}")
}

fn tagged_key(doc_id: &DocId) -> String {
    format!("tagged/{doc_id}")
}

/// The names of one kind to show the model: all of a small taxonomy; for a large one, those
/// the document mentions first, then the most used.
fn slice(taxonomy: &Taxonomy, kind: ObjectKind, content_words: &BTreeSet<String>) -> Vec<String> {
    let mut objects: Vec<_> = taxonomy.objects(kind).iter().collect();
    if objects.len() > MAX_NAMES_PER_KIND {
        // Mentioned: by its whole name, or by one of its Paperless match words.
        let mentioned = |o: &crate::domain::TaxonomyObject| {
            crate::text::words(&o.name)
                .iter()
                .all(|w| content_words.contains(w))
                || crate::text::words(&o.match_words)
                    .iter()
                    .any(|w| w.len() > 2 && content_words.contains(w))
        };
        objects.sort_by_key(|o| (!mentioned(o), std::cmp::Reverse(o.document_count), o.id));
        objects.truncate(MAX_NAMES_PER_KIND);
    }
    objects.into_iter().map(|o| o.name.clone()).collect()
}

/// Validates the model's suggestion against the policy and the taxonomy: drops what it may
/// not set, with reasons. Never substitutes a value of its own.
pub fn validate(
    mut s: Suggestion,
    input: &TagInput,
    today: NaiveDate,
) -> (Suggestion, Vec<String>) {
    let mut rejected = Vec::new();
    let wants = |f: Field| input.fields.contains(&f);
    s.title = s
        .title
        .map(|t| t.trim().chars().take(128).collect::<String>())
        .filter(|t| !t.is_empty() && wants(Field::Title));
    let check_name = |kind: ObjectKind,
                      restricted: bool,
                      name: Option<String>,
                      rejected: &mut Vec<String>|
     -> Option<String> {
        let name = name?.trim().chars().take(128).collect::<String>();
        if name.is_empty() {
            return None;
        }
        if let Some(existing) = input.taxonomy.find(kind, &name) {
            return Some(existing.name.clone());
        }
        if restricted {
            rejected.push(format!("{kind:?} {name:?} is not in the existing taxonomy"));
            return None;
        }
        Some(name)
    };
    let mut tags = Vec::new();
    for t in std::mem::take(&mut s.tags) {
        if let Some(name) = check_name(ObjectKind::Tag, input.restrict_tags, Some(t), &mut rejected)
            && !tags.iter().any(|x: &String| fold(x) == fold(&name))
        {
            tags.push(name);
        }
    }
    s.tags = if wants(Field::Tags) {
        tags.into_iter().take(12).collect()
    } else {
        Vec::new()
    };
    s.correspondent = check_name(
        ObjectKind::Correspondent,
        input.restrict_correspondents,
        s.correspondent.take(),
        &mut rejected,
    )
    .filter(|_| wants(Field::Correspondent));
    s.document_type = check_name(
        ObjectKind::DocumentType,
        input.restrict_document_types,
        s.document_type.take(),
        &mut rejected,
    )
    .filter(|_| wants(Field::DocumentType));
    s.created = match s.created.take().filter(|_| wants(Field::Created)) {
        None => None,
        Some(c) => match plausible_date(&c, today) {
            Ok(d) => Some(d.to_string()),
            Err(reason) => {
                rejected.push(format!("created date left alone: {reason}"));
                None
            }
        },
    };
    // Storage paths are chosen from the existing ones only, never created.
    s.storage_path = match s.storage_path.take().filter(|_| wants(Field::StoragePath)) {
        Some(p) => match input
            .taxonomy
            .storage_paths
            .iter()
            .find(|x| fold(&x.name) == fold(&p))
        {
            Some(existing) => Some(existing.name.clone()),
            None => {
                rejected.push(format!("storage path {p:?} does not exist"));
                None
            }
        },
        None => None,
    };
    let suggested = std::mem::take(&mut s.custom_fields);
    if wants(Field::CustomFields) {
        for (name, value) in suggested {
            let Some(def) = input
                .custom_fields
                .iter()
                .find(|f| fold(&f.name) == fold(&name))
            else {
                rejected.push(format!("custom field {name:?} is not one of CUSTOM_FIELDS"));
                continue;
            };
            if value.is_null() {
                continue;
            }
            match custom_value(def, &value, today) {
                Ok(v) => {
                    s.custom_fields.insert(def.name.clone(), v);
                }
                Err(reason) => {
                    rejected.push(format!("custom field {:?} left alone: {reason}", def.name))
                }
            }
        }
    }
    (s, rejected)
}

/// A model's value for a custom field, in the form Paperless stores for its data type, or
/// why it cannot be one.
pub fn custom_value(
    def: &crate::domain::CustomFieldDef,
    value: &serde_json::Value,
    today: NaiveDate,
) -> Result<serde_json::Value, String> {
    use serde_json::Value;
    let text = match value {
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => return Err(format!("{other} is not a single value")),
    };
    let number = |t: &str| -> Option<f64> {
        // "1.234,56" and "1,234.56" both mean 1234.56; a lone comma is a decimal comma.
        let t: String = t
            .chars()
            .filter(|c| c.is_ascii_digit() || matches!(c, '.' | ',' | '-'))
            .collect();
        let normalised = match (t.rfind(','), t.rfind('.')) {
            (Some(c), Some(d)) if c > d => t.replace('.', "").replace(',', "."),
            (Some(_), Some(_)) => t.replace(',', ""),
            (Some(_), None) => t.replace(',', "."),
            _ => t,
        };
        normalised.parse::<f64>().ok().filter(|n| n.is_finite())
    };
    match def.data_type.as_str() {
        "string" | "longtext" => {
            let limit = if def.data_type == "string" {
                128
            } else {
                10_000
            };
            (!text.is_empty())
                .then(|| json!(text.chars().take(limit).collect::<String>()))
                .ok_or_else(|| "empty".into())
        }
        "url" if text.starts_with("https://") || text.starts_with("http://") => Ok(json!(text)),
        "url" => Err(format!("{text:?} is not a URL")),
        "date" => plausible_date(&text, today).map(|d| json!(d.to_string())),
        "boolean" => match text.to_ascii_lowercase().as_str() {
            "true" | "yes" | "ja" => Ok(json!(true)),
            "false" | "no" | "nein" => Ok(json!(false)),
            _ => Err(format!("{text:?} is not true or false")),
        },
        "integer" => text
            .parse::<i64>()
            .map(|n| json!(n))
            .map_err(|_| format!("{text:?} is not a whole number")),
        "float" => number(&text)
            .map(|n| json!(n))
            .ok_or_else(|| format!("{text:?} is not a number")),
        "monetary" => {
            let currency: String = text
                .chars()
                .filter(|c| c.is_ascii_alphabetic())
                .collect::<String>()
                .to_ascii_uppercase();
            let symbol = if text.contains('€') {
                "EUR"
            } else if text.contains('£') {
                "GBP"
            } else if text.contains('$') {
                "USD"
            } else {
                ""
            };
            let code = if currency.len() == 3 {
                currency.as_str()
            } else {
                symbol
            };
            let amount = number(&text).ok_or_else(|| format!("{text:?} is not an amount"))?;
            Ok(json!(format!("{code}{amount:.2}")))
        }
        "select" => def
            .select_options
            .iter()
            .find(|o| fold(&o.label) == fold(&text))
            .map(|o| json!(o.id))
            .ok_or_else(|| format!("{text:?} is not one of its options")),
        other => Err(format!("fields of type {other} are not filled")),
    }
}

pub async fn run(svc: &Services, task: &TagTask) -> Result<(), PipelineError> {
    let policy = &svc.settings.policy;
    let guard = json!({"content_hash": task.content_hash, "policy": policy.fingerprint(), "model": svc.model.name()});
    let tagged = svc
        .state
        .get(&tagged_key(&task.doc_id))
        .await?
        .map(|v| v.value);
    let known_here = tagged.is_some();
    if let Some(tagged) = tagged.filter(|t| t["guard"] == guard) {
        if tagged["job_id"] == task.job_id.as_str() {
            // This very message, delivered again: its job already records the outcome.
            return Ok(());
        }
        metrics::counter!(crate::metrics::DOCUMENTS_TAGGED, "outcome" => "unchanged").increment(1);
        set_stage(
            svc.state.as_ref(),
            &task.job_id,
            Stage::Tag,
            StageStatus::Skipped,
            Some("already tagged: same text, same policy".into()),
            None,
        )
        .await?;
        return Ok(());
    }
    let taxonomy = svc.taxonomy().await?;
    let paperless_doc: Option<Document> = match (&task.doc_id, &svc.paperless) {
        (DocId::Paperless(id), Some(p)) => Some(p.document(*id).await?),
        (DocId::Paperless(_), None) => {
            return Err(PipelineError::Fail(
                "PAPERLESS_URL is not configured".into(),
            ));
        }
        _ => None,
    };
    // A store that has never tagged this document (a reinstall, a second instance) trusts the
    // processed tag Paperless shows: no second model call, no second bill.
    let processed = taxonomy
        .find(ObjectKind::Tag, &policy.processed_tag)
        .map(|t| t.id);
    let skip = paperless_doc.as_ref().and_then(|doc| {
        if !known_here && processed.is_some_and(|p| doc.tags.contains(&p)) {
            metrics::counter!(crate::metrics::DOCUMENTS_TAGGED, "outcome" => "unchanged")
                .increment(1);
            return Some(format!(
                "already carries {:?} in Paperless",
                policy.processed_tag
            ));
        }
        excluded(doc, &taxonomy, policy)
    });
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
    let text = match &paperless_doc {
        Some(doc) => doc.content.clone(),
        None => {
            let bytes = svc
                .blobs
                .get(&snapshot_key(&task.doc_id, &task.content_hash))
                .await?
                .ok_or_else(|| PipelineError::Fail("text snapshot is missing".into()))?;
            String::from_utf8(bytes)
                .map_err(|_| PipelineError::Fail("text snapshot is not UTF-8".into()))?
        }
    };
    let manifest = load_manifest(svc, &task.doc_id).await?;
    let current_title = paperless_doc
        .as_ref()
        .map(|d| d.title.clone())
        .or_else(|| manifest.as_ref().map(|(m, _)| m.meta.title.clone()))
        .unwrap_or_default();
    let today = chrono::Utc::now().date_naive();
    let content_words: BTreeSet<String> = crate::text::words(&text).into_iter().collect();
    let input = TagInput {
        current_title,
        content: {
            let (text, budget) = (text.clone(), policy.max_input_tokens);
            tokio::task::spawn_blocking(move || fit_head_tail(&text, budget))
                .await
                .map_err(|e| PipelineError::Retry(format!("budgeting task failed: {e}")))?
        },
        fields: policy.fields.iter().copied().collect(),
        tags: slice(&taxonomy, ObjectKind::Tag, &content_words),
        correspondents: slice(&taxonomy, ObjectKind::Correspondent, &content_words),
        document_types: slice(&taxonomy, ObjectKind::DocumentType, &content_words),
        custom_fields: taxonomy
            .custom_fields
            .iter()
            .filter(|f| {
                policy
                    .custom_fields
                    .iter()
                    .any(|n| fold(n) == fold(&f.name))
            })
            .cloned()
            .collect(),
        storage_paths: if policy.mode(Field::StoragePath) == FieldMode::Never {
            Vec::new()
        } else {
            taxonomy
                .storage_paths
                .iter()
                .map(|p| p.name.clone())
                .collect()
        },
        restrict_tags: policy.restrict.contains(&ObjectKind::Tag),
        restrict_correspondents: policy.restrict.contains(&ObjectKind::Correspondent),
        restrict_document_types: policy.restrict.contains(&ObjectKind::DocumentType),
        taxonomy: (*taxonomy).clone(),
        today: today.to_string(),
    };
    // The day's tagging budget: refused clearly once used up, never silently exceeded.
    let cap = svc.settings.llm_daily_tokens;
    let usage_key = format!("usage/tagging/{today}");
    if cap > 0 {
        let used = svc
            .state
            .counters(&usage_key)
            .await?
            .get("tokens")
            .copied()
            .unwrap_or(0);
        if used >= cap as i64 {
            return Err(PipelineError::Fail(format!(
                "the daily tagging budget of {cap} model tokens (LLM_DAILY_TOKENS) is used up; re-queue the document tomorrow"
            )));
        }
    }
    let (raw, usage) = svc.model.suggest(&input).await?;
    let spent = usage.input_tokens + usage.output_tokens;
    if spent > 0 {
        svc.state.add(&usage_key, "tokens", spent as i64).await?;
    }
    let (suggestion, rejected) = validate(raw, &input, today);

    let mut record = SuggestionRecord {
        doc_id: task.doc_id.clone(),
        job_id: task.job_id.clone(),
        provider: svc.model.name().to_string(),
        content_hash: task.content_hash.clone(),
        suggestion: suggestion.clone(),
        rejected: rejected.clone(),
        applied: None,
        previous: None,
        review: policy.review_mode,
        at: super::now(),
        undone_at: None,
        undone: None,
    };
    let outcome = match (&paperless_doc, policy.review_mode) {
        (Some(doc), false) => {
            let (patch, previous) = write_back(svc, doc, &suggestion, &taxonomy).await?;
            record.applied = Some(patch);
            record.previous = Some(previous);
            "applied"
        }
        _ => "stored",
    };
    svc.state
        .put(
            &suggestion_key(&task.doc_id),
            &serde_json::to_value(&record).expect("record serialises"),
            Condition::None,
            None,
        )
        .await?;

    // Vectors carry what Paperless now shows (uploads: what was suggested).
    if let Some((mut m, version)) = manifest {
        let meta = match &paperless_doc {
            Some(_) if outcome == "applied" => merged_meta(&m.meta, &suggestion, policy),
            Some(_) => m.meta.clone(),
            None => DocMeta {
                title: suggestion.title.clone().unwrap_or(m.meta.title.clone()),
                tags: suggestion.tags.iter().map(|t| fold(t)).collect(),
                correspondent: suggestion.correspondent.as_deref().map(fold),
                document_type: suggestion.document_type.as_deref().map(fold),
                created: suggestion.created.clone(),
                owner: m.meta.owner,
            },
        };
        if meta != m.meta {
            m.meta = meta;
            match svc
                .state
                .put(
                    &manifest_key(&task.doc_id),
                    &serde_json::to_value(&m).expect("manifest serialises"),
                    Condition::Version(version),
                    None,
                )
                .await
            {
                Ok(_) => refresh_vector_metadata(svc, &m).await?,
                Err(StoreError::Conflict(_)) => {
                    return Err(PipelineError::Retry(
                        "manifest changed while tagging".into(),
                    ));
                }
                Err(e) => return Err(e.into()),
            }
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
    metrics::counter!(crate::metrics::DOCUMENTS_TAGGED, "outcome" => outcome).increment(1);
    let mut detail = format!("suggestion {outcome}");
    if !rejected.is_empty() {
        detail.push_str(&format!("; refused: {}", rejected.join("; ")));
    }
    set_stage(
        svc.state.as_ref(),
        &task.job_id,
        Stage::Tag,
        StageStatus::Done,
        Some(detail),
        Some(svc.model.name().to_string()),
    )
    .await?;
    tracing::info!(outcome, "tagged");
    Ok(())
}

/// Why a document is not to be processed by policy, if it is not.
fn excluded(
    doc: &Document,
    taxonomy: &Taxonomy,
    policy: &crate::config::TaggingPolicy,
) -> Option<String> {
    let names: Vec<String> = doc
        .tags
        .iter()
        .filter_map(|id| taxonomy.name_of(ObjectKind::Tag, *id))
        .map(fold)
        .collect();
    let has = |n: &String| names.contains(&fold(n));
    if !policy.include_tags.is_empty() && !policy.include_tags.iter().any(has) {
        return Some("none of INCLUDE_TAGS on the document".into());
    }
    if let Some(t) = policy.exclude_tags.iter().find(|t| has(t)) {
        return Some(format!("document has excluded tag {t:?}"));
    }
    None
}

fn merged_meta(old: &DocMeta, s: &Suggestion, policy: &crate::config::TaggingPolicy) -> DocMeta {
    let pick = |field: Field, old: &Option<String>, new: &Option<String>| match (
        policy.mode(field),
        old,
        new,
    ) {
        (FieldMode::Overwrite, _, Some(n)) | (FieldMode::IfEmpty, None, Some(n)) => Some(fold(n)),
        _ => old.clone(),
    };
    let mut tags = old.tags.clone();
    for t in s
        .tags
        .iter()
        .map(|t| fold(t))
        .chain([fold(&policy.processed_tag)])
    {
        if !tags.contains(&t) {
            tags.push(t);
        }
    }
    if let Some(trigger) = &policy.trigger_tag {
        tags.retain(|t| *t != fold(trigger));
    }
    DocMeta {
        title: match policy.mode(Field::Title) {
            FieldMode::Overwrite => s.title.clone().unwrap_or(old.title.clone()),
            _ => old.title.clone(),
        },
        tags,
        correspondent: pick(Field::Correspondent, &old.correspondent, &s.correspondent),
        document_type: pick(Field::DocumentType, &old.document_type, &s.document_type),
        created: match policy.mode(Field::Created) {
            FieldMode::Overwrite => s.created.clone().or(old.created.clone()),
            _ => old.created.clone(),
        },
        owner: old.owner,
    }
}

/// The id of a named object, created (matching "none") when missing and allowed.
async fn object_id(
    svc: &Services,
    taxonomy: &Taxonomy,
    kind: ObjectKind,
    name: &str,
) -> Result<u64, PipelineError> {
    svc.object_id(taxonomy, kind, name).await
}

/// Read-merge-write of the suggestion onto the freshly read document, per field mode.
/// Returns the PATCH and the values it replaced.
async fn write_back(
    svc: &Services,
    doc: &Document,
    s: &Suggestion,
    taxonomy: &Taxonomy,
) -> Result<(DocumentPatch, DocumentPatch), PipelineError> {
    let policy = &svc.settings.policy;
    let mut patch = DocumentPatch::default();
    let mut previous = DocumentPatch::default();
    let write = |field: Field, is_empty: bool| match policy.mode(field) {
        FieldMode::Overwrite => true,
        FieldMode::IfEmpty => is_empty,
        FieldMode::Never => false,
    };
    if let Some(t) = &s.title
        && write(Field::Title, doc.title.trim().is_empty())
        && *t != doc.title
    {
        patch.title = Some(t.clone());
        previous.title = Some(doc.title.clone());
    }
    if let Some(c) = &s.correspondent
        && write(Field::Correspondent, doc.correspondent.is_none())
    {
        let id = object_id(svc, taxonomy, ObjectKind::Correspondent, c).await?;
        if doc.correspondent != Some(id) {
            patch.correspondent = Some(Some(id));
            previous.correspondent = Some(doc.correspondent);
        }
    }
    if let Some(d) = &s.document_type
        && write(Field::DocumentType, doc.document_type.is_none())
    {
        let id = object_id(svc, taxonomy, ObjectKind::DocumentType, d).await?;
        if doc.document_type != Some(id) {
            patch.document_type = Some(Some(id));
            previous.document_type = Some(doc.document_type);
        }
    }
    if let Some(c) = &s.created
        && write(Field::Created, doc.created.is_none())
        && doc.created.as_deref().map(|d| &d[..d.len().min(10)]) != Some(c.as_str())
    {
        patch.created = Some(Some(c.clone()));
        previous.created = Some(doc.created.clone());
    }
    // Tags: what the document has, plus the suggestion and the processed tag, minus the
    // trigger tag. Never removes anything else.
    let mut tags: Vec<u64> = doc.tags.clone();
    let names = s.tags.iter().cloned().chain([policy.processed_tag.clone()]);
    for name in names {
        let id = object_id(svc, taxonomy, ObjectKind::Tag, &name).await?;
        if !tags.contains(&id) {
            tags.push(id);
        }
    }
    if let Some(trigger) = policy
        .trigger_tag
        .as_deref()
        .and_then(|t| taxonomy.find(ObjectKind::Tag, t))
    {
        tags.retain(|id| *id != trigger.id);
    }
    if tags != doc.tags {
        patch.tags = Some(tags);
        previous.tags = Some(doc.tags.clone());
    }
    if let Some(path) = s
        .storage_path
        .as_deref()
        .and_then(|p| taxonomy.storage_paths.iter().find(|x| x.name == p))
        && write(Field::StoragePath, doc.storage_path.is_none())
        && doc.storage_path != Some(path.id)
    {
        patch.storage_path = Some(Some(path.id));
        previous.storage_path = Some(doc.storage_path);
    }
    // Custom fields: PATCH replaces the whole set, so merge into what the document has.
    let cf_mode = policy.mode(Field::CustomFields);
    if cf_mode != FieldMode::Never && !s.custom_fields.is_empty() {
        let mut fields = doc.custom_fields.clone();
        for (name, value) in &s.custom_fields {
            let Some(def) = taxonomy.custom_fields.iter().find(|f| f.name == *name) else {
                continue;
            };
            match fields.iter_mut().find(|f| f.field == def.id) {
                Some(existing) if cf_mode == FieldMode::Overwrite || existing.value.is_null() => {
                    existing.value = value.clone()
                }
                Some(_) => {}
                None => fields.push(crate::domain::CustomFieldValue {
                    field: def.id,
                    value: value.clone(),
                }),
            }
        }
        if fields != doc.custom_fields {
            patch.custom_fields = Some(fields);
            previous.custom_fields = Some(doc.custom_fields.clone());
        }
    }
    if !patch.is_empty() {
        svc.paperless
            .as_ref()
            .expect("write-back needs Paperless")
            .patch(doc.id, &patch)
            .await?;
    }
    Ok((patch, previous))
}

/// Rewrites the metadata of a document's vectors without re-embedding them.
pub async fn refresh_vector_metadata(
    svc: &Services,
    manifest: &Manifest,
) -> Result<(), PipelineError> {
    let metadata = super::embed::vector_metadata(&manifest.doc_id, &manifest.meta);
    let keys: Vec<String> = manifest
        .chunks
        .iter()
        .map(|c| Manifest::vector_key(&manifest.doc_id, c))
        .collect();
    let mut updated = Vec::new();
    for batch in keys.chunks(100) {
        for mut r in svc.vectors.get(batch).await? {
            r.metadata = metadata.clone();
            r.title = manifest.meta.title.clone();
            updated.push(r);
        }
    }
    for batch in updated.chunks(MAX_VECTORS_PER_CALL) {
        svc.vectors.put(batch.to_vec()).await?;
    }
    Ok(())
}

/// Marks a Paperless document with the failed tag (best effort: the job already has the reason).
pub async fn mark_failed(svc: &Services, job_id: &str) {
    let Ok(Some(job)) = super::load_job(svc.state.as_ref(), job_id).await else {
        return;
    };
    let (Some(DocId::Paperless(id)), Some(paperless)) = (job.doc_id, &svc.paperless) else {
        return;
    };
    let result: Result<(), PipelineError> = async {
        let taxonomy = svc.taxonomy().await?;
        let doc = paperless.document(id).await?;
        let tag = object_id(
            svc,
            &taxonomy,
            ObjectKind::Tag,
            &svc.settings.policy.failed_tag,
        )
        .await?;
        if !doc.tags.contains(&tag) {
            let mut tags = doc.tags.clone();
            tags.push(tag);
            paperless
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
    .await;
    if let Err(e) = result {
        tracing::warn!(job_id, doc_id = id, error = %e, "could not add the failed tag");
    }
}

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
}

async fn load_record(
    svc: &Services,
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

fn paperless_target(
    svc: &Services,
    doc_id: &DocId,
) -> Result<(u64, Arc<dyn Paperless>), ReviewError> {
    match (doc_id.paperless_id(), &svc.paperless) {
        (Some(id), Some(p)) => Ok((id, p.clone())),
        _ => Err(ReviewError::Conflict(format!(
            "document {doc_id} is not in Paperless: there is nothing to write back"
        ))),
    }
}

/// Makes the index's filterable metadata what Paperless shows for the document now.
async fn sync_index_meta(
    svc: &Services,
    doc_id: &DocId,
    doc: &Document,
) -> Result<(), PipelineError> {
    let Some((mut manifest, version)) = load_manifest(svc, doc_id).await? else {
        return Ok(());
    };
    let taxonomy = svc.taxonomy().await?;
    let meta = super::chunk::paperless_meta(doc, &taxonomy);
    if meta == manifest.meta {
        return Ok(());
    }
    manifest.meta = meta;
    match svc
        .state
        .put(
            &manifest_key(doc_id),
            &serde_json::to_value(&manifest).expect("manifest serialises"),
            Condition::Version(version),
            None,
        )
        .await
    {
        Ok(_) => refresh_vector_metadata(svc, &manifest).await,
        Err(StoreError::Conflict(_)) => {
            Err(PipelineError::Retry("manifest changed concurrently".into()))
        }
        Err(e) => Err(e.into()),
    }
}

/// Applies a stored suggestion (review mode), with the reviewer's edits, by read-merge-write.
pub async fn approve(
    svc: &Services,
    doc_id: &DocId,
    edits: Edits,
) -> Result<SuggestionRecord, ReviewError> {
    let (mut record, version) = load_record(svc, doc_id).await?;
    let (id, paperless) = paperless_target(svc, doc_id)?;
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
        plausible_date(c, chrono::Utc::now().date_naive())
            .map_err(|e| ReviewError::Pipeline(PipelineError::Fail(format!("created: {e}"))))?;
    }
    let doc = paperless.document(id).await?;
    let (patch, previous) = write_back(svc, &doc, &s, &taxonomy).await?;
    record.suggestion = s;
    record.applied = Some(patch);
    record.previous = Some(previous);
    record.review = false;
    record.undone_at = None;
    record.undone = None;
    svc.state
        .put(
            &suggestion_key(doc_id),
            &serde_json::to_value(&record).expect("record serialises"),
            Condition::Version(version),
            None,
        )
        .await?;
    sync_index_meta(svc, doc_id, &paperless.document(id).await?).await?;
    Ok(record)
}

/// Restores exactly what the applied suggestion replaced: fields back to their previous
/// values, tags it added removed and tags it removed (the trigger tag) added back; tags the
/// user added since are kept.
pub async fn undo(svc: &Services, doc_id: &DocId) -> Result<SuggestionRecord, ReviewError> {
    let (mut record, version) = load_record(svc, doc_id).await?;
    let (id, paperless) = paperless_target(svc, doc_id)?;
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
    let mut patch = DocumentPatch {
        title: previous.title.clone(),
        correspondent: previous.correspondent,
        document_type: previous.document_type,
        created: previous.created.clone(),
        storage_path: previous.storage_path,
        ..Default::default()
    };
    if let (Some(after), Some(before)) = (&applied.tags, &previous.tags) {
        let mut tags: Vec<u64> = doc
            .tags
            .iter()
            .copied()
            .filter(|t| before.contains(t) || !after.contains(t))
            .collect();
        let restored: Vec<u64> = before
            .iter()
            .copied()
            .filter(|t| !after.contains(t) && !tags.contains(t))
            .collect();
        tags.extend(restored);
        if tags != doc.tags {
            patch.tags = Some(tags);
        }
    }
    // Custom fields we set go back to their previous values (or away); others stay.
    if let (Some(after), Some(before)) = (&applied.custom_fields, &previous.custom_fields) {
        let ours: Vec<u64> = after
            .iter()
            .filter(|f| !before.contains(f))
            .map(|f| f.field)
            .collect();
        let mut fields: Vec<_> = doc
            .custom_fields
            .iter()
            .filter(|f| !ours.contains(&f.field))
            .cloned()
            .collect();
        fields.extend(before.iter().filter(|f| ours.contains(&f.field)).cloned());
        if fields != doc.custom_fields {
            patch.custom_fields = Some(fields);
        }
    }
    if !patch.is_empty() {
        paperless.patch(id, &patch).await?;
    }
    record.undone_at = Some(super::now());
    record.undone = Some(applied);
    svc.state
        .put(
            &suggestion_key(doc_id),
            &serde_json::to_value(&record).expect("record serialises"),
            Condition::Version(version),
            None,
        )
        .await?;
    sync_index_meta(svc, doc_id, &paperless.document(id).await?).await?;
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{CustomFieldDef, SelectOption};

    fn def(data_type: &str) -> CustomFieldDef {
        let select_options = vec![
            SelectOption {
                id: "opt1".into(),
                label: "Hoch".into(),
            },
            SelectOption {
                id: "opt2".into(),
                label: "Niedrig".into(),
            },
        ];
        CustomFieldDef {
            id: 1,
            name: "F".into(),
            data_type: data_type.into(),
            select_options,
        }
    }

    #[test]
    fn include_and_exclude_tags_decide_what_is_processed() {
        use crate::domain::TaxonomyObject;
        let tag = |id, name: &str| TaxonomyObject {
            id,
            name: name.into(),
            match_words: String::new(),
            matching_algorithm: 0,
            document_count: 0,
        };
        let taxonomy = Taxonomy {
            tags: vec![tag(1, "Inbox"), tag(2, "Private"), tag(3, "Tax")],
            ..Default::default()
        };
        let settings = |pairs: &[(&str, &str)]| {
            crate::config::Settings::from_map(
                &pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
            .unwrap()
        };
        let doc = |tags: Vec<u64>| Document {
            id: 1,
            tags,
            ..Default::default()
        };
        let include = settings(&[("INCLUDE_TAGS", "inbox,tax")]).policy;
        assert!(excluded(&doc(vec![1]), &taxonomy, &include).is_none());
        assert!(
            excluded(&doc(vec![2]), &taxonomy, &include)
                .unwrap()
                .contains("INCLUDE_TAGS")
        );
        let exclude = settings(&[("EXCLUDE_TAGS", "PRIVATE")]).policy;
        assert!(
            excluded(&doc(vec![1, 2]), &taxonomy, &exclude)
                .unwrap()
                .contains("excluded tag"),
            "matched case-insensitively"
        );
        assert!(excluded(&doc(vec![]), &taxonomy, &exclude).is_none());
    }

    #[test]
    fn custom_values_take_paperless_form_or_are_refused() {
        let today = NaiveDate::from_ymd_opt(2026, 1, 1).unwrap();
        let ok = |t: &str, v: serde_json::Value| custom_value(&def(t), &v, today).unwrap();
        assert_eq!(ok("monetary", json!("EUR 1.250,00")), json!("EUR1250.00"));
        assert_eq!(ok("monetary", json!("743.04 €")), json!("EUR743.04"));
        assert_eq!(ok("monetary", json!(12.5)), json!("12.50"));
        assert_eq!(ok("select", json!("hoch")), json!("opt1"));
        assert_eq!(ok("date", json!("2025-03-14")), json!("2025-03-14"));
        assert_eq!(ok("boolean", json!("yes")), json!(true));
        assert_eq!(ok("integer", json!("42")), json!(42));
        assert_eq!(ok("float", json!("3,5")), json!(3.5));
        assert_eq!(
            ok("url", json!("https://example.org/x")),
            json!("https://example.org/x")
        );
        for (t, v) in [
            ("select", json!("Mittel")),
            ("date", json!("2099-01-01")),
            ("date", json!("14.03.2025")),
            ("integer", json!("4.5")),
            ("url", json!("javascript:alert(1)")),
            ("monetary", json!("a lot")),
            ("string", json!([1])),
        ] {
            assert!(custom_value(&def(t), &v, today).is_err(), "{t} {v}");
        }
    }
}
