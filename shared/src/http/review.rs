//! `GET /review`: the review queue as cards — for each document with a suggestion not applied
//! (review mode, or undone), every field's current value in Paperless next to the suggested
//! one, so the web UI's Review page can show a diff and approve it with edits
//! (`POST /documents/{id}/approve`). `state=applied` lists what is applied, for undo.
//!
//! Suggestions are keyed by document, so a page is a range read after the last document shown,
//! reading at most `SCAN_WINDOW` suggestions per request and saying where it stopped.

use std::collections::BTreeMap;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{ApiError, ApiState};
use crate::config::FieldMode;
use crate::domain::{DocId, Document, Field, ObjectKind, Taxonomy};
use crate::pipeline::tag::SuggestionRecord;
use crate::pipeline::{Core, PipelineError};

/// Most suggestions read to answer one request.
pub const SCAN_WINDOW: usize = 1000;
const MAX_PAGE: usize = 50;
const DEFAULT_PAGE: usize = 10;

/// Which suggestions a page lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReviewState {
    /// Not applied (review mode), or applied and undone: waiting for a decision.
    Pending,
    /// Applied and not undone: can be undone.
    Applied,
}

impl ReviewState {
    pub fn of(record: &SuggestionRecord) -> ReviewState {
        if record.applied.is_some() && record.undone_at.is_none() {
            ReviewState::Applied
        } else {
            ReviewState::Pending
        }
    }
}

/// One field of a card: what Paperless shows now and what the suggestion would set.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldDiff {
    pub field: Field,
    pub current: Value,
    pub suggested: Value,
    /// The configured write mode (`never` fields are shown, not applied).
    pub mode: FieldMode,
}

/// A review card.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReviewCard {
    pub doc_id: DocId,
    pub job_id: String,
    pub provider: String,
    pub at: i64,
    pub state: &'static str,
    /// The document in Paperless (absent for uploads that never went through Paperless).
    pub url: Option<String>,
    /// Why the current values could not be read (document gone, no permission, Paperless down).
    pub current_error: Option<String>,
    pub fields: Vec<FieldDiff>,
    /// Parts of the model's reply that were refused, with the reason.
    pub rejected: Vec<String>,
}

/// The fields the Review page edits (those `POST /documents/{id}/approve` accepts).
const FIELDS: [Field; 5] = [
    Field::Title,
    Field::Tags,
    Field::Correspondent,
    Field::DocumentType,
    Field::Created,
];

fn name(taxonomy: &Taxonomy, kind: ObjectKind, id: Option<u64>) -> Value {
    match id {
        None => Value::Null,
        Some(id) => json!(
            taxonomy
                .name_of(kind, id)
                .map_or_else(|| format!("#{id}"), str::to_string)
        ),
    }
}

/// The card of one record, given the document as Paperless shows it now.
pub fn card(
    svc: &Core,
    record: &SuggestionRecord,
    current: Result<Option<&Document>, String>,
    taxonomy: &Taxonomy,
) -> ReviewCard {
    let s = &record.suggestion;
    let (doc, current_error) = match current {
        Ok(d) => (d, None),
        Err(e) => (None, Some(e)),
    };
    let fields = FIELDS
        .iter()
        .map(|&field| {
            let (current, suggested) = match field {
                Field::Title => (doc.map(|d| json!(d.title)), json!(s.title)),
                Field::Tags => (
                    doc.map(|d| {
                        json!(
                            d.tags
                                .iter()
                                .map(|t| name(taxonomy, ObjectKind::Tag, Some(*t)))
                                .collect::<Vec<_>>()
                        )
                    }),
                    json!(s.tags),
                ),
                Field::Correspondent => (
                    doc.map(|d| name(taxonomy, ObjectKind::Correspondent, d.correspondent)),
                    json!(s.correspondent),
                ),
                Field::DocumentType => (
                    doc.map(|d| name(taxonomy, ObjectKind::DocumentType, d.document_type)),
                    json!(s.document_type),
                ),
                _ => (doc.map(|d| json!(d.created)), json!(s.created)),
            };
            FieldDiff {
                field,
                current: current.unwrap_or(Value::Null),
                suggested,
                mode: svc.settings.policy.mode(field),
            }
        })
        .collect();
    let url = match (&record.doc_id, &svc.paperless) {
        (DocId::Paperless(id), Some(p)) => Some(p.document_url(*id)),
        _ => None,
    };
    ReviewCard {
        doc_id: record.doc_id.clone(),
        job_id: record.job_id.clone(),
        provider: record.provider.clone(),
        at: record.at,
        state: match ReviewState::of(record) {
            ReviewState::Pending => "pending",
            ReviewState::Applied => "applied",
        },
        url,
        current_error,
        fields,
        rejected: record.rejected.clone(),
    }
}

/// A page of cards after `cursor` (a document id) and where the next page starts.
pub async fn review_page(
    svc: &Core,
    state: ReviewState,
    cursor: Option<&DocId>,
    limit: usize,
) -> Result<(Vec<ReviewCard>, Option<String>), PipelineError> {
    let mut after = cursor.map(crate::pipeline::tag::suggestion_key);
    let mut records = Vec::new();
    let mut scanned = 0;
    let mut more = true;
    while records.len() < limit && scanned < SCAN_WINDOW {
        let want = (SCAN_WINDOW - scanned).min(200);
        let items = svc
            .state
            .list(crate::state_keys::SUGGESTIONS, after.as_deref(), want)
            .await?;
        more = items.len() == want;
        for (key, value) in items {
            scanned += 1;
            after = Some(key);
            let Ok(record) = serde_json::from_value::<SuggestionRecord>(value) else {
                continue;
            };
            if ReviewState::of(&record) == state {
                records.push(record);
                if records.len() == limit {
                    more = true;
                    break;
                }
            }
        }
        if !more {
            break;
        }
    }
    // The current values, read from Paperless for all cards at once.
    let taxonomy = svc.taxonomy().await.ok();
    let empty = Taxonomy::default();
    let taxonomy = taxonomy.as_deref().unwrap_or(&empty);
    let docs: BTreeMap<u64, Result<Document, String>> = match &svc.paperless {
        None => BTreeMap::new(),
        Some(p) => {
            let ids: Vec<u64> = records
                .iter()
                .filter_map(|r| r.doc_id.paperless_id())
                .collect();
            futures::future::join_all(ids.iter().map(|id| p.document(*id)))
                .await
                .into_iter()
                .zip(&ids)
                .map(|(r, id)| (*id, r.map_err(|e| e.to_string())))
                .collect()
        }
    };
    let cards = records
        .iter()
        .map(|r| {
            let current = match r.doc_id.paperless_id() {
                None => Ok(None),
                Some(id) => match docs.get(&id) {
                    Some(Ok(d)) => Ok(Some(d)),
                    Some(Err(e)) => Err(e.clone()),
                    None => Err("PAPERLESS_URL is not configured".to_string()),
                },
            };
            card(svc, r, current, taxonomy)
        })
        .collect();
    let next = if more {
        after.map(|k| {
            k.trim_start_matches(crate::state_keys::SUGGESTIONS)
                .to_string()
        })
    } else {
        None
    };
    Ok((cards, next))
}

#[derive(Deserialize)]
pub(super) struct ReviewQuery {
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    cursor: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
    /// Only this document's card, whatever its state (the page re-reads one card after an
    /// approve or undo).
    #[serde(default)]
    doc: Option<String>,
}

/// The card of one document, if it has a suggestion.
pub async fn one_card(svc: &Core, doc: &DocId) -> Result<Option<ReviewCard>, PipelineError> {
    let Some(v) = svc
        .state
        .get(&crate::pipeline::tag::suggestion_key(doc))
        .await?
    else {
        return Ok(None);
    };
    let record: SuggestionRecord = serde_json::from_value(v.value)
        .map_err(|e| PipelineError::Fail(format!("corrupt suggestion of {doc}: {e}")))?;
    let taxonomy = svc.taxonomy().await.ok();
    let empty = Taxonomy::default();
    let taxonomy = taxonomy.as_deref().unwrap_or(&empty);
    let current = match (doc.paperless_id(), &svc.paperless) {
        (None, _) => Ok(None),
        (Some(_), None) => Err("PAPERLESS_URL is not configured".to_string()),
        (Some(id), Some(p)) => p.document(id).await.map(Some).map_err(|e| e.to_string()),
    };
    Ok(Some(card(
        svc,
        &record,
        current.as_ref().map(Option::as_ref).map_err(Clone::clone),
        taxonomy,
    )))
}

pub(super) async fn review(
    State(state): State<ApiState>,
    Query(q): Query<ReviewQuery>,
) -> Result<Response, ApiError> {
    if let Some(doc) = q.doc.as_deref() {
        let doc: DocId = doc.parse().map_err(ApiError::bad_request)?;
        let cards: Vec<ReviewCard> = one_card(&state.svc, &doc).await?.into_iter().collect();
        return Ok(axum::Json(json!({
            "cards": cards,
            "next_cursor": null,
            "review_mode": state.svc.settings.policy.review_mode,
        }))
        .into_response());
    }
    let which = match q.state.as_deref().unwrap_or("pending") {
        "pending" => ReviewState::Pending,
        "applied" => ReviewState::Applied,
        other => {
            return Err(ApiError::bad_request(format!(
                "state {other:?} is not pending or applied"
            )));
        }
    };
    let cursor: Option<DocId> = q
        .cursor
        .as_deref()
        .filter(|c| !c.is_empty())
        .map(|c| c.parse().map_err(ApiError::bad_request))
        .transpose()?;
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be from 1 to {MAX_PAGE}"
        )));
    }
    let (cards, next) = review_page(&state.svc, which, cursor.as_ref(), limit).await?;
    Ok(axum::Json(json!({
        "cards": cards,
        "next_cursor": next,
        "review_mode": state.svc.settings.policy.review_mode,
    }))
    .into_response())
}
