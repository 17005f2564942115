//! Re-running a document's tagging whatever the loop guard says (`POST
//! /documents/{id}/retag`, `pai retag`), and what such a run would spend.

use chrono::NaiveDate;
use serde::Serialize;
use serde_json::json;

use crate::domain::DocId;
#[cfg(feature = "tokens")]
use crate::domain::ObjectKind;
use crate::pipeline::{Core, PipelineError, Queues, Services};
use crate::ports::Condition;

use super::*;

/// Asks for a re-run of a document's tagging, whatever the loop guard says.
pub async fn request_retag(svc: &Core, doc_id: &DocId, job_id: &str) -> Result<(), PipelineError> {
    svc.state
        .put(
            &retag_key(doc_id),
            &json!({"job_id": job_id, "at": crate::pipeline::now()}),
            Condition::None,
            Some(crate::pipeline::now() + 7 * 86_400),
        )
        .await?;
    Ok(())
}

/// Re-runs a Paperless document's tagging whatever the loop guard says (a new job through
/// the whole pipeline: the text may have changed too).
pub async fn retag<B, M>(
    svc: &Services<B, Queues, M>,
    doc_id: &DocId,
) -> Result<crate::domain::Job, PipelineError> {
    let Some(id) = doc_id.paperless_id() else {
        return Err(PipelineError::Fail(format!(
            "document {doc_id} is an upload, not a Paperless document: upload it again to re-tag it"
        )));
    };
    // The request is recorded before the job exists, so no worker can run it without.
    request_retag(svc, doc_id, "requested").await?;
    crate::pipeline::ingest::paperless_document(svc, id, crate::domain::JobOrigin::Retag).await
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
    svc: &Core,
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
        let (_, estimate) =
            prompt_input(svc, &taxonomy, doc.title.clone(), &doc.content, None, today)?;
        plan.estimated_tokens += estimate as u64;
        plan.documents.push(id);
    }
    Ok(plan)
}
