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

use super::chunk::{load_manifest, snapshot_key};
use super::{PipelineError, Services, set_stage};
use crate::config::FieldMode;
use crate::domain::{
    DocId, DocMeta, Document, DocumentPatch, Field, Manifest, ObjectKind, Stage, StageStatus,
    Suggestion, TagInput, TagTask, Taxonomy,
};
use crate::ports::{Condition, Paperless, StoreError};
#[cfg(feature = "tokens")]
use crate::text::fit_head_tail;
use crate::text::{calendar_date, fold, plausible_date};

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
    /// Recorded before the PATCH and cleared after it: a pending record whose PATCH shows in
    /// Paperless means the worker stopped in between.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending: bool,
    /// Fields left as the user set them (changed while the model was thinking, or after we
    /// wrote them, for undo).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kept_by_user: Vec<String>,
}

pub use crate::state_keys::{FAILED_MARK_PREFIX, retag_key, suggestion_key};
use crate::state_keys::{failed_key, failed_mark_key, tag_lease_key as lease_key, tagged_key};

/// The names of one kind to show the model: all of a small taxonomy; for a large one, those
/// the document mentions first, then the most used.
fn slice(
    taxonomy: &Taxonomy,
    kind: ObjectKind,
    content_words: &BTreeSet<String>,
    cap: usize,
) -> Vec<String> {
    let mut objects: Vec<_> = taxonomy.objects(kind).iter().collect();
    if objects.len() > cap {
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
        objects.truncate(cap);
    }
    objects.into_iter().map(|o| o.name.clone()).collect()
}

/// Validates the model's suggestion against the policy and the taxonomy: drops what it may
/// not set, with reasons. Never substitutes a value of its own. `control` are the folded
/// names of `pai`'s own tags, which the model may never set.
pub fn validate(
    mut s: Suggestion,
    input: &TagInput,
    today: NaiveDate,
    control: &BTreeSet<String>,
) -> (Suggestion, Vec<String>) {
    let mut rejected = Vec::new();
    let wants = |f: Field| input.fields.contains(&f);
    s.title = s
        .title
        .map(|t| {
            t.chars()
                .filter(|c| !c.is_control())
                .take(128)
                .collect::<String>()
                .trim()
                .to_string()
        })
        .filter(|t| !t.is_empty() && wants(Field::Title));
    if let Some(t) = &s.title
        && let Some(why) =
            implausible_name(t).filter(|w| !w.starts_with("longer") && !w.starts_with("more"))
    {
        rejected.push(format!("title {t:?} left alone: {why}"));
        s.title = None;
    }
    let check_name = |kind: ObjectKind,
                      restricted: bool,
                      name: Option<String>,
                      rejected: &mut Vec<String>|
     -> Option<String> {
        let name = name?.trim().chars().take(128).collect::<String>();
        if name.is_empty() {
            return None;
        }
        if kind == ObjectKind::Tag && control.contains(&fold(&name)) {
            rejected.push(format!("tag {name:?} is one of pai's control tags"));
            return None;
        }
        if let Some(existing) = input.taxonomy.find(kind, &name) {
            return Some(existing.name.clone());
        }
        if restricted {
            rejected.push(format!("{kind:?} {name:?} is not in the existing taxonomy"));
            return None;
        }
        // A new name is created in Paperless: it must look like one.
        if let Some(why) = implausible_name(&name) {
            rejected.push(format!("new {kind:?} {name:?} not created: {why}"));
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
            match custom_value(def, &value) {
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
        // Due dates and expiry dates lie ahead: only the created date may not be in the future.
        "date" => calendar_date(&text).map(|d| json!(d.to_string())),
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
        "monetary" => match value {
            // A JSON number has no locale: it is the amount itself.
            Value::Number(n) => n
                .as_f64()
                .filter(|n| n.is_finite())
                .map(|n| json!(format!("{n:.2}")))
                .ok_or_else(|| format!("{n} is not an amount")),
            _ => crate::domain::parse_money(&text).map(|m| json!(m)),
        },
        "select" => def
            .select_options
            .iter()
            .find(|o| fold(&o.label) == fold(&text))
            .map(|o| json!(o.id))
            .ok_or_else(|| format!("{text:?} is not one of its options")),
        other => Err(format!("fields of type {other} are not filled")),
    }
}

/// Names of the tags `pai` itself manages (processed, failed, review, trigger, include and
/// exclude), folded: never shown to the model, never taken from its reply. A model that could
/// tag a document `private` could hide it from the index, or pull it in.
pub fn control_tags(settings: &crate::config::Settings) -> BTreeSet<String> {
    let p = &settings.policy;
    [&p.processed_tag, &p.failed_tag, &settings.review_tag]
        .into_iter()
        .chain(p.trigger_tag.iter())
        .chain(p.include_tags.iter())
        .chain(p.exclude_tags.iter())
        .map(|t| fold(t))
        .collect()
}

/// Why a name the model invented (not in the taxonomy) is not created, if it is not: a new
/// tag, correspondent or type must look like a name, not like a link, markup or a sentence a
/// document slipped into the reply.
pub fn implausible_name(name: &str) -> Option<String> {
    let lower = name.to_lowercase();
    if name.chars().count() > 64 {
        return Some("longer than 64 characters".into());
    }
    if name.split_whitespace().count() > 8 {
        return Some("more than 8 words".into());
    }
    // "Amazon.de" is a correspondent; "https://…" or "www.…" is an instruction to click.
    if ["://", "www.", "mailto:", "javascript:", "data:"]
        .iter()
        .any(|p| lower.contains(p))
    {
        return Some("looks like a link".into());
    }
    if name.chars().any(|c| {
        c.is_control() || matches!(c, '<' | '>' | '{' | '}' | '[' | ']' | '`' | '|' | '\\')
    }) {
        return Some("contains markup or control characters".into());
    }
    if !name.chars().any(char::is_alphanumeric) {
        return Some("has no letters or digits".into());
    }
    None
}

/// Forgets that tagging failed on the document's current text: a retry is a person (or sync,
/// a bounded number of times) asking for another attempt, which the loop guard must not skip
/// as "failed before". A document tagged successfully stays guarded by its own record.
pub(crate) async fn forget_failure(svc: &Services, doc_id: &DocId) -> Result<(), StoreError> {
    svc.state.delete(&failed_key(doc_id)).await
}

/// How long one worker holds a document without renewing it: longer than any model call with
/// its retries, short enough that a crashed worker's document is picked up again the same hour.
const LEASE_SECS: i64 = 15 * 60;
/// A worker renews its lease this often while it works (a heartbeat).
const LEASE_BEAT: std::time::Duration = std::time::Duration::from_secs(20);
/// A lease of our own job whose heartbeat is older than this belongs to a worker that died;
/// a younger one to a worker still at it (a redelivery while a slow model thinks).
const LEASE_STALE_SECS: i64 = 60;

/// Asks for a re-run of a document's tagging, whatever the loop guard says.
pub async fn request_retag(
    svc: &Services,
    doc_id: &DocId,
    job_id: &str,
) -> Result<(), PipelineError> {
    svc.state
        .put(
            &retag_key(doc_id),
            &json!({"job_id": job_id, "at": super::now()}),
            Condition::None,
            Some(super::now() + 7 * 86_400),
        )
        .await?;
    Ok(())
}

/// Re-runs a Paperless document's tagging whatever the loop guard says (a new job through
/// the whole pipeline: the text may have changed too).
pub async fn retag(svc: &Services, doc_id: &DocId) -> Result<crate::domain::Job, PipelineError> {
    let Some(id) = doc_id.paperless_id() else {
        return Err(PipelineError::Fail(format!(
            "document {doc_id} is an upload, not a Paperless document: upload it again to re-tag it"
        )));
    };
    // The request is recorded before the job exists, so no worker can run it without.
    request_retag(svc, doc_id, "requested").await?;
    super::ingest::paperless_document(svc, id, crate::domain::JobOrigin::Retag).await
}

/// Which documents `pai retag` re-runs.
#[derive(Debug, Clone, PartialEq)]
pub enum RetagSelection {
    Ids(Vec<u64>),
    /// Carrying this tag (by name).
    Tag(String),
    /// Modified in Paperless on or after this day (`YYYY-MM-DD`).
    Since(NaiveDate),
    All,
}

/// What a re-run would do, told before it spends anything.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RetagPlan {
    pub documents: Vec<u64>,
    /// Selected but skipped by policy (INCLUDE_TAGS / EXCLUDE_TAGS): never sent to a model.
    pub excluded: Vec<u64>,
    /// Model tokens (prompt and reply cap) the run would spend, before cache hits.
    pub estimated_tokens: u64,
}

/// Resolves a selection to documents and estimates the tokens their re-run spends (the same
/// prompt budgeting the tag stage uses).
#[cfg(feature = "tokens")]
pub async fn plan_retag(
    svc: &Services,
    selection: &RetagSelection,
) -> Result<RetagPlan, PipelineError> {
    let paperless = svc
        .paperless
        .clone()
        .ok_or_else(|| PipelineError::Fail("re-tagging needs PAPERLESS_URL".into()))?;
    let taxonomy = svc.taxonomy().await?;
    let ids: Vec<u64> = match selection {
        RetagSelection::Ids(ids) => ids.clone(),
        other => {
            let query = match other {
                RetagSelection::Tag(name) => crate::ports::DocumentQuery {
                    tag: Some(
                        taxonomy
                            .find(ObjectKind::Tag, name)
                            .ok_or_else(|| {
                                PipelineError::Fail(format!("no tag {name:?} in Paperless"))
                            })?
                            .id,
                    ),
                    ..Default::default()
                },
                RetagSelection::Since(day) => crate::ports::DocumentQuery {
                    modified_after: Some(format!("{}T23:59:59Z", day.pred_opt().unwrap_or(*day))),
                    ..Default::default()
                },
                _ => crate::ports::DocumentQuery::default(),
            };
            let mut ids = Vec::new();
            for page in 1.. {
                let (items, more) = paperless.list(&query, page).await?;
                ids.extend(items.into_iter().map(|d| d.id));
                if !more {
                    break;
                }
            }
            ids
        }
    };
    let mut plan = RetagPlan::default();
    let today = svc.settings.today();
    for id in ids {
        let doc = paperless.document(id).await?;
        if excluded(&doc, &taxonomy, &svc.settings.policy).is_some() {
            plan.excluded.push(id);
            continue;
        }
        let (_, estimate) = prompt_input(svc, &taxonomy, doc.title.clone(), &doc.content, today)?;
        plan.estimated_tokens += estimate as u64;
        plan.documents.push(id);
    }
    Ok(plan)
}

/// How long a job waits for another job tagging the same document.
const LEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// This process, in its leases: a lease of our own job held by another process is a dead
/// one's (a `pai` that was killed and restarted, a Lambda instance that timed out before SQS
/// made the message visible again), and is taken over at once.
static INSTANCE: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| uuid::Uuid::new_v4().to_string());

fn lease_value(task: &TagTask) -> serde_json::Value {
    json!({"job_id": task.job_id, "beat": super::now(), "instance": *INSTANCE})
}

/// One writer per document: a conditional write with expiry, renewed while the work goes on.
/// Another job holding it means a duplicate (webhook and sync) is running, and so does our own
/// job's lease held in this process with a fresh heartbeat (a redelivery while the first
/// delivery still works): this one waits and then finds the document tagged. Our own job's
/// lease from another process, or with a stale heartbeat, is a dead worker's: taken over.
/// Returns the lease's version.
async fn acquire_lease(svc: &Services, task: &TagTask) -> Result<u64, PipelineError> {
    let key = lease_key(&task.doc_id);
    let until = super::now() + LEASE_SECS;
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
                        || super::now() - h.value["beat"].as_i64().unwrap_or(0)
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
async fn holding_lease<F>(svc: &Services, task: &TagTask, mut version: u64, work: F) -> F::Output
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
                let until = super::now() + LEASE_SECS;
                match svc.state.put(&key, &lease_value(task), Condition::Version(version), Some(until)).await {
                    Ok(v) => version = v,
                    Err(e) => tracing::warn!(job_id = %task.job_id, error = %e, "could not renew the document's lease"),
                }
            }
        }
    }
}

async fn release_lease(svc: &Services, task: &TagTask) {
    let key = lease_key(&task.doc_id);
    if let Ok(Some(h)) = svc.state.get(&key).await
        && h.value["job_id"] == task.job_id.as_str()
    {
        let _ = svc.state.delete(&key).await;
    }
}

/// The tag id of a named tag, if it exists.
fn tag_id(taxonomy: &Taxonomy, name: Option<&str>) -> Option<u64> {
    name.and_then(|n| taxonomy.find(ObjectKind::Tag, n))
        .map(|t| t.id)
}

/// Tags one document version. Everything, from the loop guard's verdict on, happens holding
/// the document's lease: a duplicate that waited for it reads what the first run wrote.
#[cfg(feature = "stage-tag")]
pub async fn run(svc: &Services, task: &TagTask) -> Result<(), PipelineError> {
    let version = acquire_lease(svc, task).await?;
    let result = holding_lease(svc, task, version, run_leased(svc, task)).await;
    release_lease(svc, task).await;
    result
}

#[cfg(feature = "stage-tag")]
async fn run_leased(svc: &Services, task: &TagTask) -> Result<(), PipelineError> {
    let policy = &svc.settings.policy;
    let guard = json!({"content_hash": task.content_hash, "policy": policy.fingerprint(), "model": svc.model.name()});
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
const READ_MAX_AGE_SECS: i64 = 60;

/// The chunk stage's reading of this task's document, when it is recent (either way round:
/// stages on two machines do not share a clock). Its text is not in it.
fn recent_read(task: &TagTask) -> Option<Document> {
    let read = task.read.as_ref()?;
    let for_this = matches!(task.doc_id, DocId::Paperless(id) if id == read.document.id);
    (for_this && (super::now() - read.at).abs() <= READ_MAX_AGE_SECS).then(|| read.document.clone())
}

/// The text to tag: the document's when it was read with its text, else the snapshot the
/// chunk stage kept of this version; a Paperless document whose snapshot is gone (deleted
/// with the index entry meanwhile) is read again.
async fn version_text(
    svc: &Services,
    task: &TagTask,
    doc: Option<&Document>,
) -> Result<String, PipelineError> {
    if let Some(doc) = doc.filter(|d| !d.content.is_empty()) {
        return Ok(doc.content.clone());
    }
    let snapshot = svc
        .blobs
        .get(&snapshot_key(&task.doc_id, &task.content_hash))
        .await?;
    match (snapshot, doc, &svc.paperless) {
        (Some(bytes), _, _) => String::from_utf8(bytes)
            .map_err(|_| PipelineError::Fail("text snapshot is not UTF-8".into())),
        (None, Some(doc), Some(paperless)) => Ok(paperless.document(doc.id).await?.content),
        (None, _, _) => Err(PipelineError::Fail("text snapshot is missing".into())),
    }
}

/// Whether every field of `applied` already shows in `doc`: the PATCH of a recorded intent
/// reached Paperless before the worker stopped.
fn visible_in(doc: &Document, applied: &DocumentPatch) -> bool {
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
#[cfg(feature = "stage-tag")]
async fn tag_leased(
    svc: &Services,
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
    let text = version_text(svc, task, paperless_doc.as_ref()).await?;
    let current_title = paperless_doc
        .as_ref()
        .map(|d| d.title.clone())
        .or_else(|| manifest.as_ref().map(|(m, _)| m.meta.title.clone()))
        .unwrap_or_default();
    let today = svc.settings.today();
    let (input, estimate) = {
        let svc = svc.clone();
        let taxonomy = taxonomy.clone();
        tokio::task::spawn_blocking(move || {
            prompt_input(&svc, &taxonomy, current_title, &text, today)
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
    let reply = svc.model.suggest(&input).await;
    if let Ok((_, usage)) = &reply {
        super::add_job_usage(svc.state.as_ref(), &task.job_id, usage).await;
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
        pending: false,
        kept_by_user: Vec::new(),
    };
    let (outcome, after) = match &paperless_doc {
        Some(doc) => {
            let paperless = svc
                .paperless
                .clone()
                .expect("a Paperless document has Paperless");
            // Read again right before writing: the model took seconds (minutes on Ollama), and
            // what the user changed meanwhile wins.
            let fresh = paperless.document_metadata(doc.id).await?;
            let (patch, previous, kept) = if policy.review_mode {
                let (patch, previous) = review_mark(svc, &fresh, &taxonomy).await?;
                (patch, previous, Vec::new())
            } else {
                plan(svc, doc, &fresh, &suggestion, &taxonomy).await?
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
                paperless.patch(doc.id, &patch).await?;
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

async fn put_record(svc: &Services, record: &SuggestionRecord) -> Result<(), PipelineError> {
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
fn apply(doc: &Document, patch: &DocumentPatch) -> Document {
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
async fn finish(
    svc: &Services,
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
            (Some(doc), _) => super::chunk::paperless_meta(doc, &*svc.taxonomy().await?),
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
        match super::index::save_manifest(svc, &m, Condition::Version(version)).await {
            Ok(_) => {
                super::index::refresh_vector_metadata(svc, &m).await?;
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
    super::set_stage_latest(
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

/// What the model sees, and an estimate of the model tokens the call spends. The whole prompt
/// (instructions, taxonomy slice, document text) fits `MAX_INPUT_TOKENS` and, on Ollama, the
/// context (`OLLAMA_NUM_CTX`) less the reply; a large taxonomy gives up names before the
/// document gives up text below a floor.
#[cfg(feature = "tokens")]
pub fn prompt_input(
    svc: &Services,
    taxonomy: &Taxonomy,
    current_title: String,
    text: &str,
    today: NaiveDate,
) -> Result<(TagInput, usize), PipelineError> {
    let settings = &svc.settings;
    let policy = &settings.policy;
    let control = control_tags(settings);
    let content_words: BTreeSet<String> = crate::text::words(text).into_iter().collect();
    let mut limit = policy.max_input_tokens;
    if settings.llm.provider == crate::config::Provider::Ollama {
        limit =
            limit.min((settings.ollama_num_ctx as usize).saturating_sub(policy.max_output_tokens));
    }
    // Budgets are in the model's tokens; text is counted in cl100k tokens.
    let factor =
        crate::text::token_factor(settings.llm.model.as_deref().unwrap_or(svc.model.name()));
    let limit = (limit as f64 / factor) as usize;
    const TEXT_FLOOR: usize = 256;
    const MARGIN: usize = 32;
    // Counted once, whatever the taxonomy's size.
    let text_tokens = crate::text::count_tokens(text);
    for cap in [MAX_NAMES_PER_KIND, 75, 40, 20, 10, 0] {
        let mut input = TagInput {
            current_title: current_title.clone(),
            content: String::new(),
            fields: policy.fields.iter().copied().collect(),
            tags: slice(taxonomy, ObjectKind::Tag, &content_words, cap)
                .into_iter()
                .filter(|t| !control.contains(&fold(t)))
                .collect(),
            correspondents: slice(taxonomy, ObjectKind::Correspondent, &content_words, cap),
            document_types: slice(taxonomy, ObjectKind::DocumentType, &content_words, cap),
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
                    .take(cap.max(1) * 2)
                    .map(|p| p.name.clone())
                    .collect()
            },
            restrict_tags: policy.restrict.contains(&ObjectKind::Tag),
            restrict_correspondents: policy.restrict.contains(&ObjectKind::Correspondent),
            restrict_document_types: policy.restrict.contains(&ObjectKind::DocumentType),
            taxonomy: taxonomy.clone(),
            today: today.to_string(),
        };
        let overhead = prompt_tokens(&input, policy.system_prompt.as_deref());
        let Some(room) = limit.checked_sub(overhead + MARGIN) else {
            continue;
        };
        if room < TEXT_FLOOR.min(text_tokens) && cap > 0 {
            continue;
        }
        if room == 0 {
            break;
        }
        let used = if text_tokens <= room {
            input.content = text.to_string();
            overhead + text_tokens
        } else {
            input.content = fit_head_tail(text, room);
            overhead + crate::text::count_tokens(&input.content)
        };
        let estimate = (used as f64 * factor) as usize + policy.max_output_tokens;
        return Ok((input, estimate));
    }
    Err(PipelineError::Fail(format!(
        "MAX_INPUT_TOKENS ({}) leaves no room for the document after the instructions{}",
        policy.max_input_tokens,
        if settings.llm.provider == crate::config::Provider::Ollama {
            " (OLLAMA_NUM_CTX less MAX_OUTPUT_TOKENS also bounds the prompt)"
        } else {
            ""
        }
    )))
}

/// Tokens of the tagging prompt without the document: instructions, taxonomy and schema.
#[cfg(feature = "tokens")]
fn prompt_tokens(input: &TagInput, system_prompt: Option<&str>) -> usize {
    let messages = crate::providers::llm::tag_messages(input, system_prompt);
    let schema = crate::providers::llm::tag_schema(input);
    messages
        .iter()
        .map(|m| crate::text::count_tokens(&m.content) + 4)
        .sum::<usize>()
        + crate::text::count_tokens(&schema.to_string())
}

/// Why a document is not to be processed by policy, if it is not.
fn excluded(
    doc: &Document,
    taxonomy: &Taxonomy,
    policy: &crate::config::TaggingPolicy,
) -> Option<String> {
    let names = super::index::tag_names(doc, taxonomy);
    if !policy.include_tags.is_empty()
        && !policy.include_tags.iter().any(|t| names.contains(&fold(t)))
    {
        return Some("none of INCLUDE_TAGS on the document".into());
    }
    super::chunk::exclude_tag(doc, taxonomy, policy)
        .map(|t| format!("document has excluded tag {t:?}"))
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

/// The review mark: `REVIEW_TAG` added (and the trigger tag removed), so a Paperless user
/// finds what waits for review; nothing else changes until approval.
async fn review_mark(
    svc: &Services,
    fresh: &Document,
    taxonomy: &Taxonomy,
) -> Result<(DocumentPatch, DocumentPatch), PipelineError> {
    let policy = &svc.settings.policy;
    let review = object_id(svc, taxonomy, ObjectKind::Tag, &svc.settings.review_tag).await?;
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

/// The PATCH for a suggestion, by three-way merge: `base` is the document the model saw,
/// `fresh` what Paperless shows right before writing. A field the user changed in between is
/// left as the user set it (and named in the third value); the others follow the field modes.
/// Sets (tags, custom fields) are merged into the fresh ones. Returns the PATCH, the values
/// it replaces (for undo) and the fields kept as the user set them.
async fn plan(
    svc: &Services,
    base: &Document,
    fresh: &Document,
    s: &Suggestion,
    taxonomy: &Taxonomy,
) -> Result<(DocumentPatch, DocumentPatch, Vec<String>), PipelineError> {
    let policy = &svc.settings.policy;
    let mut patch = DocumentPatch::default();
    let mut previous = DocumentPatch::default();
    let mut kept = Vec::new();
    let write = |field: Field, is_empty: bool| match policy.mode(field) {
        FieldMode::Overwrite => true,
        FieldMode::IfEmpty => is_empty,
        FieldMode::Never => false,
    };
    let date = |d: &Option<String>| d.as_deref().map(|d| d.chars().take(10).collect::<String>());
    // A field the user changed since the model's read is named in `kept` and left alone.
    fn user_changed(kept: &mut Vec<String>, name: &str, changed: bool) -> bool {
        if changed {
            kept.push(name.to_string());
        }
        changed
    }
    if let Some(t) = &s.title
        && !user_changed(&mut kept, "title", base.title != fresh.title)
        && write(Field::Title, fresh.title.trim().is_empty())
        && *t != fresh.title
    {
        patch.title = Some(t.clone());
        previous.title = Some(fresh.title.clone());
    }
    if let Some(c) = &s.correspondent
        && !user_changed(
            &mut kept,
            "correspondent",
            base.correspondent != fresh.correspondent,
        )
        && write(Field::Correspondent, fresh.correspondent.is_none())
    {
        let id = object_id(svc, taxonomy, ObjectKind::Correspondent, c).await?;
        if fresh.correspondent != Some(id) {
            patch.correspondent = Some(Some(id));
            previous.correspondent = Some(fresh.correspondent);
        }
    }
    if let Some(d) = &s.document_type
        && !user_changed(
            &mut kept,
            "document_type",
            base.document_type != fresh.document_type,
        )
        && write(Field::DocumentType, fresh.document_type.is_none())
    {
        let id = object_id(svc, taxonomy, ObjectKind::DocumentType, d).await?;
        if fresh.document_type != Some(id) {
            patch.document_type = Some(Some(id));
            previous.document_type = Some(fresh.document_type);
        }
    }
    if let Some(c) = &s.created
        && !user_changed(
            &mut kept,
            "created",
            date(&base.created) != date(&fresh.created),
        )
        && write(Field::Created, fresh.created.is_none())
        && date(&fresh.created).as_deref() != Some(c.as_str())
    {
        patch.created = Some(Some(c.clone()));
        previous.created = Some(fresh.created.clone());
    }
    // Tags: what the document has now, plus the suggestion and the processed tag, minus the
    // trigger, failed and review tags. A suggested tag the user removed meanwhile stays removed;
    // nothing else is ever removed.
    let mut tags: Vec<u64> = fresh.tags.clone();
    let mut names: Vec<String> = s.tags.clone();
    names.push(policy.processed_tag.clone());
    for name in names {
        let existing = taxonomy.find(ObjectKind::Tag, &name).map(|t| t.id);
        if existing.is_some_and(|id| base.tags.contains(&id) && !fresh.tags.contains(&id)) {
            kept.push(format!("tag {name:?} (removed by the user)"));
            continue;
        }
        let id = match existing {
            Some(id) => id,
            None => object_id(svc, taxonomy, ObjectKind::Tag, &name).await?,
        };
        if !tags.contains(&id) {
            tags.push(id);
        }
    }
    let drop = [
        tag_id(taxonomy, policy.trigger_tag.as_deref()),
        tag_id(taxonomy, Some(&policy.failed_tag)),
        tag_id(taxonomy, Some(&svc.settings.review_tag)),
    ];
    tags.retain(|id| !drop.contains(&Some(*id)));
    if tags != fresh.tags {
        patch.tags = Some(tags);
        previous.tags = Some(fresh.tags.clone());
    }
    if let Some(path) = s
        .storage_path
        .as_deref()
        .and_then(|p| taxonomy.storage_paths.iter().find(|x| x.name == p))
        && !user_changed(
            &mut kept,
            "storage_path",
            base.storage_path != fresh.storage_path,
        )
        && write(Field::StoragePath, fresh.storage_path.is_none())
        && fresh.storage_path != Some(path.id)
    {
        patch.storage_path = Some(Some(path.id));
        previous.storage_path = Some(fresh.storage_path);
    }
    // Custom fields: PATCH replaces the whole set, so merge into what the document has now.
    let cf_mode = policy.mode(Field::CustomFields);
    if cf_mode != FieldMode::Never && !s.custom_fields.is_empty() {
        let value_in = |doc: &Document, id: u64| {
            doc.custom_fields
                .iter()
                .find(|f| f.field == id)
                .map(|f| f.value.clone())
        };
        let mut fields = fresh.custom_fields.clone();
        for (name, value) in &s.custom_fields {
            let Some(def) = taxonomy.custom_fields.iter().find(|f| f.name == *name) else {
                continue;
            };
            if value_in(base, def.id) != value_in(fresh, def.id) {
                kept.push(format!("custom field {name:?}"));
                continue;
            }
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
        if fields != fresh.custom_fields {
            patch.custom_fields = Some(fields);
            previous.custom_fields = Some(fresh.custom_fields.clone());
        }
    }
    Ok((patch, previous, kept))
}

/// Marks a Paperless document with the failed tag. When the tag stage failed on a known text
/// (`content_hash`), the failure is remembered under the loop guard first: the PATCH fires
/// "Document Updated", and that webhook must not buy a second full attempt at the same text
/// and policy. A write that fails is kept under `FAILED_MARK_PREFIX`, and every sync run
/// tries it again (`write_pending_failed_marks`) until it lands or the job runs again.
pub async fn mark_failed(svc: &Services, job_id: &str, content_hash: Option<&str>, reason: &str) {
    if let Err(e) = try_mark_failed(svc, job_id, content_hash, reason).await {
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
pub async fn write_pending_failed_marks(svc: &Services) -> Result<usize, PipelineError> {
    let waiting = super::list_all(svc.state.as_ref(), FAILED_MARK_PREFIX).await?;
    let mut written = 0;
    for (key, pending) in waiting {
        let job_id = key.trim_start_matches(FAILED_MARK_PREFIX);
        let still_failed = super::load_job(svc.state.as_ref(), job_id)
            .await?
            .is_some_and(|job| job.status() == crate::domain::JobStatus::Failed);
        if still_failed {
            let hash = pending["content_hash"].as_str();
            let reason = pending["reason"].as_str().unwrap_or("failed");
            if let Err(e) = try_mark_failed(svc, job_id, hash, reason).await {
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

async fn try_mark_failed(
    svc: &Services,
    job_id: &str,
    content_hash: Option<&str>,
    reason: &str,
) -> Result<(), PipelineError> {
    let Some(job) = super::load_job(svc.state.as_ref(), job_id).await? else {
        return Ok(());
    };
    let (Some(doc_id @ DocId::Paperless(id)), Some(paperless)) = (job.doc_id, &svc.paperless)
    else {
        return Ok(());
    };
    if let Some(hash) = content_hash {
        let guard = json!({"content_hash": hash, "policy": svc.settings.policy.fingerprint(), "model": svc.model.name()});
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
    let taxonomy = svc.taxonomy().await?;
    let meta = super::chunk::paperless_meta(doc, &taxonomy);
    super::index::update_meta(svc, doc_id, meta)
        .await
        .map(|_| ())
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
    let (patch, previous, _) = plan(svc, &doc, &doc, &s, &taxonomy).await?;
    if !patch.is_empty() {
        paperless.patch(id, &patch).await?;
    }
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

/// Restores what the applied suggestion replaced, where it is still ours: a field whose
/// current value is no longer what we wrote keeps the user's value (and is named in
/// `kept_by_user`). Tags it added are removed; tags the user added since are kept; the review
/// mark comes back (the suggestion waits for review again). The trigger and failed tags it
/// removed are not put back: both were answered, and a trigger tag put back would start a new
/// run at once (its "Document Updated" webhook), undoing the undo.
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
        paperless.patch(id, &patch).await?;
    }
    record.undone_at = Some(super::now());
    record.undone = Some(applied);
    record.kept_by_user = kept;
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
        let ok = |t: &str, v: serde_json::Value| custom_value(&def(t), &v).unwrap();
        assert_eq!(ok("monetary", json!("EUR 1.250,00")), json!("EUR1250.00"));
        assert_eq!(ok("monetary", json!("743.04 €")), json!("EUR743.04"));
        assert_eq!(ok("monetary", json!(12.5)), json!("12.50"));
        assert_eq!(ok("select", json!("hoch")), json!("opt1"));
        assert_eq!(ok("date", json!("2025-03-14")), json!("2025-03-14"));
        // A due date lies ahead (it was refused as "in the future").
        assert_eq!(ok("date", json!("2099-01-01")), json!("2099-01-01"));
        // Thousands are thousands (they were read as decimals: EUR65.00, USD98.00).
        assert_eq!(ok("monetary", json!("65.000 EUR")), json!("EUR65000.00"));
        assert_eq!(ok("monetary", json!("USD 98,000")), json!("USD98000.00"));
        assert_eq!(ok("boolean", json!("yes")), json!(true));
        assert_eq!(ok("integer", json!("42")), json!(42));
        assert_eq!(ok("float", json!("3,5")), json!(3.5));
        assert_eq!(
            ok("url", json!("https://example.org/x")),
            json!("https://example.org/x")
        );
        for (t, v) in [
            ("select", json!("Mittel")),
            ("date", json!("2300-01-01")),
            ("date", json!("14.03.2025")),
            ("integer", json!("4.5")),
            ("url", json!("javascript:alert(1)")),
            ("monetary", json!("a lot")),
            ("string", json!([1])),
        ] {
            assert!(custom_value(&def(t), &v).is_err(), "{t} {v}");
        }
    }

    #[test]
    fn invented_names_must_look_like_names() {
        for ok in [
            "Plumbing",
            "Amazon.de",
            "Stadtwerke München",
            "Tax 2025",
            "C&A",
        ] {
            assert_eq!(implausible_name(ok), None, "{ok}");
        }
        let long = "x".repeat(65);
        for bad in [
            "visit https://evil.example/x",
            "www.example.org",
            "<script>",
            "a name with far too many words to be any kind of tag",
            "line\nbreak",
            "---",
            long.as_str(),
        ] {
            assert!(implausible_name(bad).is_some(), "{bad}");
        }
    }
}
