//! Tag: one structured model call per document version, validated against the taxonomy and
//! the write policy, then written back to Paperless-ngx by read-merge-write (a PATCH replaces
//! whole sets), or stored as a suggestion (review mode, uploads). A version already tagged under
//! the same policy is a no-op: our own PATCH fires Paperless "Document Updated" workflows, and
//! they must not loop back into a second model call.
//!
//! By concern: `policy` (what may be applied, without I/O), `prompt` (the budgeted prompt),
//! `run` (the stage), `write` (the merge and write-back), `failure` (the failed tag), `retag`
//! and `review` (approve, undo).

use serde::{Deserialize, Serialize};

use crate::domain::{DocId, DocumentPatch, Suggestion};

mod failure;
mod policy;
#[cfg(feature = "tokens")]
mod prompt;
mod retag;
mod review;
#[cfg(feature = "stage-tag")]
mod run;
#[cfg(test)]
mod tests;
mod write;

pub use failure::*;
pub use policy::*;
#[cfg(feature = "tokens")]
pub use prompt::*;
pub use retag::*;
pub use review::*;
#[cfg(feature = "stage-tag")]
pub use run::*;
use write::*;

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

use crate::state_keys::{failed_key, failed_mark_key};
