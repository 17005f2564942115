//! The domain's plain data: documents and their identity, jobs, queue messages, manifests,
//! taxonomy, suggestions and answers. Everything here is serialisable and free of I/O, so the
//! AWS doors and `pai` exchange exactly the same messages.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A document's identity: a Paperless-ngx document id, or an upload that never went through
/// Paperless (identified by the hash of its bytes, so uploading the same file twice is one
/// document). Written as `"12"` or `"upload-<hex>"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum DocId {
    Paperless(u64),
    Upload(String),
}

impl DocId {
    pub fn paperless_id(&self) -> Option<u64> {
        match self {
            DocId::Paperless(id) => Some(*id),
            DocId::Upload(_) => None,
        }
    }
}

impl fmt::Display for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DocId::Paperless(id) => write!(f, "{id}"),
            DocId::Upload(h) => write!(f, "upload-{h}"),
        }
    }
}

impl FromStr for DocId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(h) = s.strip_prefix("upload-") {
            if !h.is_empty() && h.len() <= 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Ok(DocId::Upload(h.to_ascii_lowercase()));
            }
        } else if let Ok(id) = s.parse::<u64>() {
            return Ok(DocId::Paperless(id));
        }
        Err(format!("not a document id: {s:?}"))
    }
}

impl From<DocId> for String {
    fn from(d: DocId) -> String {
        d.to_string()
    }
}

impl TryFrom<String> for DocId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

/// How a job entered the system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobOrigin {
    Webhook,
    Upload,
    Sync,
    /// Asked for by `POST /documents/{id}/retag` or `pai retag`.
    Retag,
}

/// The pipeline's steps, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Chunk,
    Embed,
    Tag,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageStatus {
    Pending,
    Done,
    /// Nothing to do (unchanged content, excluded by policy…); the reason is in `detail`.
    Skipped,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageState {
    pub status: StageStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<i64>,
}

/// A job as stored: one document's trip through the pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    pub origin: JobOrigin,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub doc_id: Option<DocId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    pub created_at: i64,
    pub stages: BTreeMap<Stage, StageState>,
    /// Chunks of the document's current text, and how many of them needed embedding.
    #[serde(default)]
    pub chunks_total: u32,
    #[serde(default)]
    pub chunks_new: u32,
    /// Secret the local upload URL must carry (uploads only; never shown by `GET /jobs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// Bytes the upload was announced with: a file of another size is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_size: Option<u64>,
    /// Times the job was re-run (retry): what earlier runs recorded does not count for this one.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempt: u32,
    /// The trace the job's first run opened, continued by retries (when traces are exported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceContext>,
}

/// A W3C trace context (`traceparent`, `tracestate`) carried by queue messages and jobs, so
/// every stage of a document's trip continues one trace. Messages without it still work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceContext {
    pub traceparent: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Overall status, derived from the stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Waiting for its upload or its first worker.
    Queued,
    Running,
    Done,
    Failed,
}

impl Job {
    /// A new job with every stage pending.
    pub fn new(id: String, origin: JobOrigin, doc_id: Option<DocId>, created_at: i64) -> Job {
        let pending = StageState {
            status: StageStatus::Pending,
            detail: None,
            provider: None,
            finished_at: None,
        };
        Job {
            id,
            origin,
            doc_id,
            filename: None,
            created_at,
            stages: [Stage::Chunk, Stage::Embed, Stage::Tag]
                .into_iter()
                .map(|s| (s, pending.clone()))
                .collect(),
            chunks_total: 0,
            chunks_new: 0,
            upload_token: None,
            content_type: None,
            attempt: 0,
            upload_size: None,
            trace: None,
        }
    }

    pub fn status(&self) -> JobStatus {
        let states: Vec<StageStatus> = self.stages.values().map(|s| s.status).collect();
        if states.contains(&StageStatus::Failed) {
            JobStatus::Failed
        } else if states.len() == 3 && states.iter().all(|s| *s != StageStatus::Pending) {
            JobStatus::Done
        } else if states.iter().all(|s| *s == StageStatus::Pending) {
            JobStatus::Queued
        } else {
            JobStatus::Running
        }
    }
}

/// Chunk-queue message: fetch this document's text and split it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum ChunkTask {
    Paperless {
        job_id: String,
        doc_id: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        trace: Option<TraceContext>,
    },
    /// Bytes stored in the blob store under `blob_key` (an upload).
    Upload {
        job_id: String,
        blob_key: String,
        filename: String,
        content_type: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        trace: Option<TraceContext>,
    },
}

impl ChunkTask {
    pub fn job_id(&self) -> &str {
        match self {
            ChunkTask::Paperless { job_id, .. } | ChunkTask::Upload { job_id, .. } => job_id,
        }
    }

    pub fn trace(&self) -> Option<&TraceContext> {
        match self {
            ChunkTask::Paperless { trace, .. } | ChunkTask::Upload { trace, .. } => trace.as_ref(),
        }
    }

    pub fn set_trace(&mut self, context: Option<TraceContext>) {
        match self {
            ChunkTask::Paperless { trace, .. } | ChunkTask::Upload { trace, .. } => {
                *trace = context
            }
        }
    }
}

/// One chunk of a snapshot: byte range and the hash of its text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    pub start: usize,
    pub end: usize,
    /// Hex SHA-256 of the chunk text; the vector key is derived from it, so an unchanged chunk
    /// keeps its vector however the text around it moves.
    pub hash: String,
}

/// Embed-queue message: embed these chunks of this snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbedTask {
    pub job_id: String,
    pub doc_id: DocId,
    pub content_hash: String,
    pub chunks: Vec<ChunkRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceContext>,
}

/// Tag-queue message: suggest (and apply) metadata for this version of the document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TagTask {
    pub job_id: String,
    pub doc_id: DocId,
    pub content_hash: String,
    /// cl100k tokens of that version's text, counted by the chunk stage, so the tag stage
    /// budgets its prompt without tokenizing the same text again. Absent from older messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_tokens: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceContext>,
    /// The Paperless document as the chunk stage read it, so the tag stage decides from that
    /// reading instead of asking Paperless again a moment later (one request per document
    /// fewer). Absent from older messages and for uploads; a reading too old is read again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read: Option<DocumentRead>,
}

/// A Paperless document as one stage read it, without its text (the snapshot under the
/// task's content hash holds that; a queue message stays small whatever the document's size).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DocumentRead {
    /// Unix seconds.
    pub at: i64,
    pub document: Document,
}

/// Metadata of a document that vectors carry as filterable fields (names normalised).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DocMeta {
    pub title: String,
    pub tags: Vec<String>,
    pub correspondent: Option<String>,
    pub document_type: Option<String>,
    /// `YYYY-MM-DD`.
    pub created: Option<String>,
    pub owner: Option<u64>,
    /// Who else may see it: per-user chat narrows its vector query by owner and these.
    #[serde(default)]
    pub shared_with: Sharing,
}

/// The last indexed version of a document: what the next version is diffed against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub doc_id: DocId,
    /// The job that indexed this version: its redelivered messages diff against `previous`.
    pub job_id: String,
    pub content_hash: String,
    /// Empty in a stored item whose chunk lists are paged (see `pipeline::index`).
    #[serde(default)]
    pub chunks: Vec<ChunkRef>,
    /// Chunks of the version before, kept until the next version replaces this one.
    #[serde(default)]
    pub previous: Vec<ChunkRef>,
    pub meta: DocMeta,
}

impl Manifest {
    /// The vector key of a chunk of a document.
    pub fn vector_key(doc_id: &DocId, chunk: &ChunkRef) -> String {
        format!("{doc_id}#{}", &chunk.hash[..16])
    }
}

/// A Paperless tag, correspondent or document type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaxonomyObject {
    pub id: u64,
    pub name: String,
    /// Paperless's own match words (used by the lexical provider).
    #[serde(default, rename = "match")]
    pub match_words: String,
    #[serde(default)]
    pub matching_algorithm: u8,
    #[serde(default)]
    pub document_count: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CustomFieldDef {
    pub id: u64,
    pub name: String,
    pub data_type: String,
    #[serde(default)]
    pub select_options: Vec<SelectOption>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SelectOption {
    pub id: String,
    pub label: String,
}

/// The user's existing taxonomy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Taxonomy {
    #[serde(default)]
    pub tags: Vec<TaxonomyObject>,
    #[serde(default)]
    pub correspondents: Vec<TaxonomyObject>,
    #[serde(default)]
    pub document_types: Vec<TaxonomyObject>,
    #[serde(default)]
    pub custom_fields: Vec<CustomFieldDef>,
    /// Chosen from, never created.
    #[serde(default)]
    pub storage_paths: Vec<TaxonomyObject>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectKind {
    Tag,
    Correspondent,
    DocumentType,
}

impl Taxonomy {
    pub fn objects(&self, kind: ObjectKind) -> &[TaxonomyObject] {
        match kind {
            ObjectKind::Tag => &self.tags,
            ObjectKind::Correspondent => &self.correspondents,
            ObjectKind::DocumentType => &self.document_types,
        }
    }

    pub fn objects_mut(&mut self, kind: ObjectKind) -> &mut Vec<TaxonomyObject> {
        match kind {
            ObjectKind::Tag => &mut self.tags,
            ObjectKind::Correspondent => &mut self.correspondents,
            ObjectKind::DocumentType => &mut self.document_types,
        }
    }

    /// Finds an object by name, case- and accent-insensitively.
    pub fn find(&self, kind: ObjectKind, name: &str) -> Option<&TaxonomyObject> {
        let key = crate::text::fold(name);
        self.objects(kind)
            .iter()
            .find(|o| crate::text::fold(&o.name) == key)
    }

    pub fn name_of(&self, kind: ObjectKind, id: u64) -> Option<&str> {
        self.objects(kind)
            .iter()
            .find(|o| o.id == id)
            .map(|o| o.name.as_str())
    }
}

/// A Paperless-ngx document as the pipeline needs it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Document {
    pub id: u64,
    pub title: String,
    pub content: String,
    pub tags: Vec<u64>,
    pub correspondent: Option<u64>,
    pub document_type: Option<u64>,
    pub created: Option<String>,
    pub owner: Option<u64>,
    #[serde(default)]
    pub storage_path: Option<u64>,
    pub custom_fields: Vec<CustomFieldValue>,
    /// Users and groups given the document besides its owner (view or change), as
    /// `?full_perms=true` shows them.
    #[serde(default)]
    pub shared_with: Sharing,
}

/// Who else may see a document in Paperless.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sharing {
    #[serde(default)]
    pub users: Vec<u64>,
    #[serde(default)]
    pub groups: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CustomFieldValue {
    pub field: u64,
    pub value: Value,
}

/// A PATCH to a document. Sets (`tags`, `custom_fields`) replace the whole set in Paperless,
/// so they are always built by read-merge-write. `Some(None)` clears a field (JSON `null`),
/// `None` leaves it out.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DocumentPatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<u64>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub correspondent: Option<Option<u64>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub document_type: Option<Option<u64>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub created: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_fields: Option<Vec<CustomFieldValue>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub storage_path: Option<Option<u64>>,
}

/// A field that is present is `Some`, even when it is `null` (which clears it).
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

impl DocumentPatch {
    pub fn is_empty(&self) -> bool {
        *self == DocumentPatch::default()
    }
}

/// Fields the tagger may set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    Title,
    Tags,
    Correspondent,
    DocumentType,
    Created,
    CustomFields,
    StoragePath,
}

impl FromStr for Field {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s.trim() {
            "title" => Field::Title,
            "tags" => Field::Tags,
            "correspondent" => Field::Correspondent,
            "document_type" => Field::DocumentType,
            "created" => Field::Created,
            "custom_fields" => Field::CustomFields,
            "storage_path" => Field::StoragePath,
            other => return Err(format!("unknown field {other:?}")),
        })
    }
}

/// What the model sees to suggest metadata for one document.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TagInput {
    pub current_title: String,
    /// Document text, already fitted to the input budget.
    pub content: String,
    pub fields: Vec<Field>,
    /// Names the model may choose from (the relevant slice of the taxonomy).
    pub tags: Vec<String>,
    pub correspondents: Vec<String>,
    pub document_types: Vec<String>,
    pub custom_fields: Vec<CustomFieldDef>,
    /// Existing storage paths (the only ones that may be suggested).
    pub storage_paths: Vec<String>,
    /// Kinds where only the names above are allowed.
    pub restrict_tags: bool,
    pub restrict_correspondents: bool,
    pub restrict_document_types: bool,
    /// The full taxonomy's match words, for providers that match by name (lexical).
    #[serde(skip)]
    pub taxonomy: Taxonomy,
    /// Today, `YYYY-MM-DD`: dates after it are rejected.
    pub today: String,
}

/// The model's suggestion, before policy and validation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Suggestion {
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub correspondent: Option<String>,
    #[serde(default)]
    pub document_type: Option<String>,
    /// `YYYY-MM-DD`, or none when the document shows no date.
    #[serde(default)]
    pub created: Option<String>,
    #[serde(default)]
    pub custom_fields: BTreeMap<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_path: Option<String>,
}

/// A passage handed to the answerer, numbered as it will be cited.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Passage {
    pub n: usize,
    pub doc_id: DocId,
    pub title: String,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnswerInput {
    pub question: String,
    pub passages: Vec<Passage>,
    /// Earlier turns of the session, oldest first: (question, answer).
    pub history: Vec<(String, String)>,
}

/// The answer text with `[n]` markers, and the passage numbers it cites.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub text: String,
    pub cited: Vec<usize>,
}

/// A monetary amount in the form Paperless-ngx stores (`EUR65000.00`: ISO code, optional minus,
/// two decimals), read from what a model writes the way the document's locale means it.
/// A lone separator followed by exactly three digits groups thousands (`65.000 EUR`,
/// `USD 98,000`); otherwise the last separator is the decimal one (`1.234,56 €`, `$1,234.56`).
/// Anything else (words, two currencies, broken grouping) is refused: Paperless accepts any
/// such string, so a wrong guess would be stored silently.
pub fn parse_money(text: &str) -> Result<String, String> {
    let refuse = || format!("{text:?} is not an amount");
    let mut code: Option<String> = None;
    let mut set_code = |c: String| -> Result<(), String> {
        match &code {
            Some(existing) if *existing != c => Err(format!("{text:?} names two currencies")),
            _ => {
                code = Some(c);
                Ok(())
            }
        }
    };
    for (symbol, c) in [
        ('€', "EUR"),
        ('£', "GBP"),
        ('$', "USD"),
        ('¥', "JPY"),
        ('₹', "INR"),
    ] {
        if text.contains(symbol) {
            set_code(c.to_string())?;
        }
    }
    for word in text
        .split(|c: char| !c.is_alphabetic())
        .filter(|w| !w.is_empty())
    {
        let upper = word.to_uppercase();
        match upper.as_str() {
            "EURO" | "EUROS" => set_code("EUR".into())?,
            // `US$`, `CA$`: the symbol already says dollar; the prefix names the country.
            "US" if text.contains('$') => {}
            "CA" | "AU" | "NZ" | "HK" | "SG" if text.contains('$') => {
                set_code(format!("{}D", &upper[..2]))?
            }
            _ if upper.len() == 3 && upper.chars().all(|c| c.is_ascii_uppercase()) => {
                set_code(upper)?
            }
            _ => return Err(refuse()),
        }
    }
    // The number: digits and separators; spaces and apostrophes group thousands (1 234,56;
    // 1'234.50); a trailing ",-" or ".–" means whole units.
    let mut number: String = text
        .chars()
        .filter(|c| c.is_ascii_digit() || matches!(c, '.' | ',' | '-' | '−' | '–'))
        .map(|c| if matches!(c, '−' | '–') { '-' } else { c })
        .collect();
    for suffix in [",-", ".-"] {
        if let Some(n) = number.strip_suffix(suffix) {
            number = n.to_string();
        }
    }
    let negative = number.starts_with('-');
    let digits = number.trim_start_matches('-');
    if digits.is_empty()
        || digits.contains('-')
        || !digits.starts_with(|c: char| c.is_ascii_digit())
    {
        return Err(refuse());
    }
    let seps: Vec<(usize, char)> = digits
        .char_indices()
        .filter(|(_, c)| matches!(c, '.' | ','))
        .collect();
    let grouped = |s: &str, sep: char| -> Option<String> {
        let groups: Vec<&str> = s.split(sep).collect();
        let first_ok = (1..=3).contains(&groups[0].len());
        let rest_ok = groups[1..].iter().all(|g| g.len() == 3);
        (first_ok && rest_ok).then(|| groups.concat())
    };
    let (whole, fraction): (String, String) = match seps.as_slice() {
        [] => (digits.to_string(), String::new()),
        [(at, _)] => {
            let (before, after) = (&digits[..*at], &digits[at + 1..]);
            let thousands = after.len() == 3 && (1..=3).contains(&before.len()) && before != "0";
            if after.is_empty() {
                return Err(refuse());
            } else if thousands {
                (format!("{before}{after}"), String::new())
            } else {
                (before.to_string(), after.to_string())
            }
        }
        many => {
            let (last_at, decimal) = *many.last().expect("not empty");
            let grouping = many[0].1;
            let decimals_used = many.iter().filter(|(_, c)| *c == decimal).count();
            if grouping != decimal && decimals_used == 1 {
                let whole = grouped(&digits[..last_at], grouping).ok_or_else(refuse)?;
                (whole, digits[last_at + 1..].to_string())
            } else if grouping == decimal && many.iter().all(|(_, c)| *c == grouping) {
                (grouped(digits, grouping).ok_or_else(refuse)?, String::new())
            } else {
                return Err(refuse());
            }
        }
    };
    if whole.len() > 15 || fraction.is_empty() && digits.ends_with(['.', ',']) {
        return Err(refuse());
    }
    let whole: u64 = whole.parse().map_err(|_| refuse())?;
    let fraction_digits: Vec<u64> = fraction
        .chars()
        .map(|c| c.to_digit(10).map(u64::from).ok_or_else(refuse))
        .collect::<Result<_, _>>()?;
    let digit = |i: usize| fraction_digits.get(i).copied().unwrap_or(0);
    // Rounded half up to cents.
    let cents = whole * 100 + digit(0) * 10 + digit(1) + u64::from(digit(2) >= 5);
    let sign = if negative && cents > 0 { "-" } else { "" };
    Ok(format!(
        "{}{sign}{}.{:02}",
        code.unwrap_or_default(),
        cents / 100,
        cents % 100
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doc_ids_round_trip_and_reject_garbage() {
        for s in ["12", "upload-0a1b2c"] {
            let id: DocId = s.parse().unwrap();
            assert_eq!(id.to_string(), s);
        }
        for bad in ["", "-1", "upload-", "upload-xyz", "12a", "../etc"] {
            assert!(bad.parse::<DocId>().is_err(), "{bad}");
        }
        let json = serde_json::to_string(&DocId::Paperless(7)).unwrap();
        assert_eq!(json, "\"7\"");
    }

    #[test]
    fn a_patch_can_clear_a_field_and_says_so_after_a_round_trip() {
        let p = DocumentPatch {
            correspondent: Some(None),
            document_type: Some(Some(3)),
            ..Default::default()
        };
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(json, r#"{"correspondent":null,"document_type":3}"#);
        assert_eq!(serde_json::from_str::<DocumentPatch>(&json).unwrap(), p);
    }

    #[test]
    fn job_status_follows_stages() {
        let mut job = Job::new("j".into(), JobOrigin::Webhook, None, 0);
        let st = |status| StageState {
            status,
            detail: None,
            provider: None,
            finished_at: None,
        };
        assert_eq!(job.status(), JobStatus::Queued);
        assert_eq!(job.stages.len(), 3);
        job.stages.insert(Stage::Chunk, st(StageStatus::Done));
        assert_eq!(job.status(), JobStatus::Running);
        job.stages.insert(Stage::Embed, st(StageStatus::Skipped));
        job.stages.insert(Stage::Tag, st(StageStatus::Done));
        assert_eq!(job.status(), JobStatus::Done);
        job.stages.insert(Stage::Tag, st(StageStatus::Failed));
        assert_eq!(job.status(), JobStatus::Failed);
    }

    #[test]
    fn money_is_read_as_the_locale_means_it() {
        for (text, stored) in [
            ("65.000 EUR", "EUR65000.00"),
            ("USD 98,000", "USD98000.00"),
            ("1.234,56 €", "EUR1234.56"),
            ("$1,234.56", "USD1234.56"),
            ("12.500,00 EUR", "EUR12500.00"),
            ("EUR 1.250,00", "EUR1250.00"),
            ("743.04 €", "EUR743.04"),
            ("84,20", "84.20"),
            ("1 234,56 EUR", "EUR1234.56"),
            ("CHF 1'234.50", "CHF1234.50"),
            ("1.234.567,89 €", "EUR1234567.89"),
            ("0.500 EUR", "EUR0.50"),
            ("12,5", "12.50"),
            ("-12,50 €", "EUR-12.50"),
            ("99,- €", "EUR99.00"),
            ("US$ 5", "USD5.00"),
            ("2.345 Euro", "EUR2345.00"),
            ("19.999", "19999.00"),
            ("19.99", "19.99"),
            ("1234.567", "1234.57"),
        ] {
            assert_eq!(parse_money(text).as_deref(), Ok(stored), "{text}");
        }
        for bad in [
            "a lot",
            "about 12 EUR",
            "12 EUR or 14 USD",
            "1,23,456.00",
            "1.2.3",
            "12.",
            "EUR",
            "€ 1.234,56,78",
        ] {
            assert!(parse_money(bad).is_err(), "{bad}");
        }
    }
}
