//! Every key of the state store, in one place: the use cases ask for a job's, a manifest's or a
//! lease's key here instead of spelling it.
//!
//! The keys are a persisted contract: what a DynamoDB table or a SQLite file holds is read by
//! them, so none may change. The first segment is the family, and on DynamoDB the partition
//! key (`adapters::aws::state`), which the functions' IAM policies scope by
//! (`lambda::grants`, `template.yaml`): adding a family is a table design decision too.

use crate::domain::DocId;

/// A job: its stages, counts and outcome (`GET /jobs/{id}`).
pub fn job_key(job_id: &str) -> String {
    format!("{JOBS}{job_id}")
}

/// What `GET /jobs` lists, newest first.
pub const JOBS: &str = "job/";

/// A document's manifest: its version, chunks and filterable metadata.
pub fn manifest_key(doc_id: &DocId) -> String {
    format!("{MANIFESTS}{doc_id}")
}

/// What sync walks to find documents deleted in Paperless.
pub const MANIFESTS: &str = "manifest/";

/// A page of a manifest's chunk lists; not under `manifest/`, so listing manifests skips them.
pub fn manifest_page_key(doc_id: &DocId, pages: &str, n: usize) -> String {
    format!("manifest-page/{doc_id}/{pages}/{n}")
}

/// The prefix of the markers of the embed batches a job wrote in one attempt (`None`: all).
pub fn marker_prefix(job_id: &str, attempt: Option<u32>) -> String {
    match attempt {
        Some(a) => format!("embedded/{job_id}/{a}/"),
        None => format!("embedded/{job_id}/"),
    }
}

/// The marker of one embed batch, named by its first chunk's hash.
pub fn marker_key(job_id: &str, attempt: u32, first_chunk: Option<&str>) -> String {
    format!(
        "{}{}",
        marker_prefix(job_id, Some(attempt)),
        first_chunk.unwrap_or("none")
    )
}

/// A document's suggestion record (what was suggested, applied and replaced).
pub fn suggestion_key(doc_id: &DocId) -> String {
    format!("{SUGGESTIONS}{doc_id}")
}

/// What the review page lists.
pub const SUGGESTIONS: &str = "suggestion/";

/// The tag stage's loop guard: the version and policy a document was last tagged under.
pub fn tagged_key(doc_id: &DocId) -> String {
    format!("tagged/{doc_id}")
}

/// One tagging worker per document.
pub fn tag_lease_key(doc_id: &DocId) -> String {
    format!("lease/tag/{doc_id}")
}

/// Set by `POST /documents/{id}/retag` and `pai retag`: the next tagging of the document runs
/// whatever the loop guard says.
pub fn retag_key(doc_id: &DocId) -> String {
    format!("retag/{doc_id}")
}

/// That tagging failed on a document's current text (the loop guard's other half).
pub fn failed_key(doc_id: &DocId) -> String {
    format!("failed/{doc_id}")
}

/// Where a failed tag that could not be written waits for sync to write it.
pub const FAILED_MARK_PREFIX: &str = "failed-mark/";

pub fn failed_mark_key(job_id: &str) -> String {
    format!("{FAILED_MARK_PREFIX}{job_id}")
}

/// Where jobs that failed for a transient reason wait for sync to run them again.
pub const FAILED_TRANSIENT_PREFIX: &str = "failed-transient/";

pub fn failed_transient_key(job_id: &str) -> String {
    format!("{FAILED_TRANSIENT_PREFIX}{job_id}")
}

/// A chat session's turns and owner.
pub fn session_key(id: &str) -> String {
    format!("session/{id}")
}

/// A day's model tokens spent by tagging (`LLM_DAILY_TOKENS`' counter).
pub fn tagging_usage_key(day: impl std::fmt::Display) -> String {
    format!("usage/tagging/{day}")
}

/// A day's chat tokens of one API key (or Paperless user).
pub fn chat_usage_key(caller: &str, day: impl std::fmt::Display) -> String {
    format!("usage/{caller}/{day}")
}

/// Sync's cursor over Paperless's modification times.
pub const SYNC_CURSOR: &str = "sync/cursor";
/// Sync's cursor over the manifests it checks for deletion.
pub const SYNC_DELETION_CURSOR: &str = "sync/deletion_cursor";

/// The version of a document sync last queued for still carrying the trigger tag.
pub fn sync_trigger_key(paperless_id: u64) -> String {
    format!("sync/trigger/{paperless_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stored formats, spelled out: a change here would orphan existing data.
    #[test]
    fn the_key_formats_are_the_stored_ones() {
        let doc = DocId::Paperless(12);
        let up: DocId = "upload-0a1b".parse().unwrap();
        assert_eq!(job_key("j1"), "job/j1");
        assert_eq!(manifest_key(&doc), "manifest/12");
        assert_eq!(manifest_key(&up), "manifest/upload-0a1b");
        assert_eq!(
            manifest_page_key(&doc, "chunks", 3),
            "manifest-page/12/chunks/3"
        );
        assert_eq!(marker_prefix("j1", None), "embedded/j1/");
        assert_eq!(marker_prefix("j1", Some(2)), "embedded/j1/2/");
        assert_eq!(marker_key("j1", 2, Some("ab")), "embedded/j1/2/ab");
        assert_eq!(marker_key("j1", 2, None), "embedded/j1/2/none");
        assert_eq!(suggestion_key(&doc), "suggestion/12");
        assert_eq!(tagged_key(&doc), "tagged/12");
        assert_eq!(tag_lease_key(&doc), "lease/tag/12");
        assert_eq!(retag_key(&doc), "retag/12");
        assert_eq!(failed_key(&doc), "failed/12");
        assert_eq!(failed_mark_key("j1"), "failed-mark/j1");
        assert_eq!(failed_transient_key("j1"), "failed-transient/j1");
        assert_eq!(session_key("s-12345678"), "session/s-12345678");
        assert_eq!(tagging_usage_key("2026-12-01"), "usage/tagging/2026-12-01");
        assert_eq!(chat_usage_key("k1", "2026-12-01"), "usage/k1/2026-12-01");
        assert_eq!(sync_trigger_key(7), "sync/trigger/7");
        assert_eq!(
            (SYNC_CURSOR, SYNC_DELETION_CURSOR),
            ("sync/cursor", "sync/deletion_cursor")
        );
        assert_eq!(
            (JOBS, MANIFESTS, SUGGESTIONS),
            ("job/", "manifest/", "suggestion/")
        );
    }
}
