//! The ports: every capability the use cases need from the outside world, as small traits.
//!
//! Each port has an embedded adapter (`adapters::local`, used by `pai`) and an AWS adapter; the
//! use cases in `pipeline` only ever see these traits, so the same code runs in both places and
//! one contract suite per port (`pai_tests::contract`, in the test kit) proves every adapter
//! behaves the same. No SDK type appears here.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Map, Value};

use crate::domain::{
    Answer, AnswerInput, Document, DocumentPatch, ObjectKind, Suggestion, TagInput, Taxonomy,
    TaxonomyObject,
};
use crate::filter::Filter;

/// Failure of a storage-like port (blob, state, cache, queue, vectors).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A conditional write found a different version than required.
    #[error("conditional write failed: {0}")]
    Conflict(String),
    /// The request itself was invalid (too many items, bad key, bad filter…).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The backing store failed; retrying may help.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// Documents' text snapshots, manifests and raw uploads, by key.
#[async_trait]
pub trait BlobStore: Send + Sync {
    /// Writes the whole object atomically: a reader sees the old bytes or the new, never a part.
    async fn put(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError>;
    /// Like `put`, for a copy its readers verify and can fetch again (a document's text,
    /// keyed by its hash): as atomic, but a store may leave it to the system to reach the disk
    /// rather than force it there now, so a power cut can take it away. `put` by default.
    async fn put_recoverable(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.put(key, bytes).await
    }
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
    /// Whether clients send uploads straight to the store (`upload_url` answers) rather than
    /// through the server (the embedded store: `pai` serves its own upload route).
    fn direct_uploads(&self) -> bool {
        false
    }
    /// Where a client PUTs exactly `size` bytes of `content_type` for `key`, valid for
    /// `expires`, and the headers it must send with them. The store refuses another length,
    /// another type, and a second write of the key (the URL is good for one upload).
    /// `None` when the store has no such thing (see `direct_uploads`).
    async fn upload_url(
        &self,
        _key: &str,
        _content_type: &str,
        _size: u64,
        _expires: Duration,
    ) -> Result<Option<UploadTarget>, StoreError> {
        Ok(None)
    }
}

/// A direct upload: the URL and the (signed) headers the client must send with its PUT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadTarget {
    pub url: String,
    pub headers: BTreeMap<String, String>,
}

/// One item of the state store with the version a conditional write must name.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned {
    pub value: Value,
    pub version: u64,
}

/// How a state-store write is guarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// Write whatever is there.
    None,
    /// Write only if no item exists under the key (idempotent creation).
    Absent,
    /// Write only if the item is still at this version (optimistic locking).
    Version(u64),
}

/// Jobs, manifests, suggestions, undo records and sessions: JSON items with versions, atomic
/// counters and an optional expiry (DynamoDB on AWS, SQLite in `pai`).
#[async_trait]
pub trait StateStore: Send + Sync {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError>;
    /// Returns the new version. `expires_at` is a Unix time after which the item is gone.
    async fn put(
        &self,
        key: &str,
        value: &Value,
        condition: Condition,
        expires_at: Option<i64>,
    ) -> Result<u64, StoreError>;
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
    /// Adds `delta` to a named counter of the item (created at 0) and returns the new value.
    async fn add(&self, key: &str, counter: &str, delta: i64) -> Result<i64, StoreError>;
    /// Adds several counters of one item at once (one write where the store allows it: a job's
    /// tokens and cost are three counters of every model call).
    async fn add_all(&self, key: &str, deltas: &[(&str, i64)]) -> Result<(), StoreError> {
        for (counter, delta) in deltas {
            self.add(key, counter, *delta).await?;
        }
        Ok(())
    }
    async fn counters(&self, key: &str) -> Result<BTreeMap<String, i64>, StoreError>;
    /// Items whose key starts with `prefix`, newest key last, at most `limit`, starting after `after`.
    async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Value)>, StoreError>;
    /// Like `list` in the other direction: items under `prefix`, newest (greatest) key first,
    /// at most `limit`, starting before `before`. Pages of "most recent jobs" (job ids are
    /// time-ordered) cost one range read each, however many items the store holds.
    ///
    /// The default pages forward through the whole prefix (correct, but linear): adapters
    /// override it with a reverse range read.
    async fn list_newest(
        &self,
        prefix: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Value)>, StoreError> {
        let mut kept: std::collections::VecDeque<(String, Value)> = Default::default();
        let mut after: Option<String> = None;
        loop {
            let page = self.list(prefix, after.as_deref(), 500).await?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            for item in page {
                if before.is_some_and(|b| item.0.as_str() >= b) {
                    break;
                }
                kept.push_back(item);
                if kept.len() > limit {
                    kept.pop_front();
                }
            }
            if before.is_some_and(|b| after.as_deref() >= Some(b)) {
                break;
            }
        }
        Ok(kept.into_iter().rev().collect())
    }
}

/// The record family of a state or cache key: what comes before its first '/' (the whole key
/// if none), e.g. `job` for `job/42`. Stores may partition by it (DynamoDB does), and IAM
/// grants are per family.
pub fn key_family(key: &str) -> &str {
    key.split_once('/').map_or(key, |(family, _)| family)
}

/// Prompt and embedding cache: opaque bytes by key, with an expiry. Keys start with the kind
/// of value they hold (`embedding/…`, `tag/…`): see `key_family`.
#[async_trait]
pub trait Cache: Send + Sync {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    async fn put(&self, key: &str, value: &[u8], expires_at: Option<i64>)
    -> Result<(), StoreError>;
}

/// A message handed out by a queue: delete it with its receipt when done, or it comes back.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub message_id: String,
    pub receipt: String,
    pub body: String,
    /// 1 on first delivery.
    pub receive_count: u32,
}

/// The work queues (chunk, embed, tag) with SQS semantics: at-least-once delivery, visibility
/// timeout, receive count, and dead letters after too many receives. Three ports, as the
/// callers need them: a stage that hands work on only sends ([`QueueSender`]); a worker
/// consumes ([`QueueConsumer`]: `pai`'s workers, and a Lambda door for back-off on the message
/// it holds); retry routes and sync read the dead letters ([`DeadLetters`]). An adapter
/// provides all three ([`WorkQueue`]).
#[async_trait]
pub trait QueueSender: Send + Sync {
    /// Sends the bodies in order; callers may pass any number (adapters batch by 10).
    async fn send(&self, bodies: &[String]) -> Result<(), StoreError>;
}

/// Taking work from a queue: receive, acknowledge, hand back.
#[async_trait]
pub trait QueueConsumer: Send + Sync {
    /// Up to `max` (≤ 10) visible messages, hidden for `visibility` once received.
    async fn receive(&self, max: usize, visibility: Duration) -> Result<Vec<Delivery>, StoreError>;
    /// Acknowledges a message; a stale receipt (the message was redelivered since) is ignored.
    async fn delete(&self, receipt: &str) -> Result<(), StoreError>;
    /// Makes a received message visible again after `delay` (retry with back-off).
    async fn release(&self, receipt: &str, delay: Duration) -> Result<(), StoreError>;
    /// Hands a received message back for later as if this receive had not happened: its
    /// receive count does not grow, so a refusal that never attempted the work (an open
    /// circuit breaker) cannot dead-letter it. Adapters that cannot undo a receive send a
    /// delayed copy and delete the original.
    async fn defer(&self, message: &Delivery, delay: Duration) -> Result<(), StoreError> {
        self.release(&message.receipt, delay).await
    }
}

/// A queue's dead letters: the messages received too often.
#[async_trait]
pub trait DeadLetters: Send + Sync {
    /// Messages moved to the dead-letter queue, oldest first, each with a receipt that
    /// `delete_dead_letter` takes (not `delete`).
    async fn dead_letters(&self, limit: usize) -> Result<Vec<Delivery>, StoreError>;
    /// Removes one dead letter (its job is being re-run, or was recorded as failed).
    async fn delete_dead_letter(&self, receipt: &str) -> Result<(), StoreError>;
}

/// A whole work queue, as each adapter (SQS, the embedded queue) provides it.
pub trait WorkQueue: QueueSender + QueueConsumer + DeadLetters {}

impl<Q: QueueSender + QueueConsumer + DeadLetters + ?Sized> WorkQueue for Q {}

/// Largest top-k a vector query may ask for (S3 Vectors' limit, kept by every adapter).
pub const MAX_TOP_K: usize = 100;
/// Largest number of vectors per put or delete call (S3 Vectors' limit).
pub const MAX_VECTORS_PER_CALL: usize = 500;

/// A vector with its filterable metadata and the non-filterable chunk text and title.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorRecord {
    pub key: String,
    pub vector: Vec<f32>,
    /// Filterable metadata: strings, numbers, booleans, arrays of those.
    pub metadata: Map<String, Value>,
    /// Non-filterable: returned with hits, never matched by filters.
    pub text: String,
    pub title: String,
}

/// One nearest neighbour: cosine distance (0 = same direction, 2 = opposite).
#[derive(Debug, Clone, PartialEq)]
pub struct VectorHit {
    pub record: VectorRecord,
    pub distance: f32,
}

/// The vector index (S3 Vectors on AWS, an embedded index in `pai`): cosine distance, the
/// S3 Vectors filter language, top-k ≤ 100, ≤ 500 vectors per write.
#[async_trait]
pub trait VectorIndex: Send + Sync {
    fn dimension(&self) -> usize;
    /// Inserts or wholly replaces vectors by key.
    async fn put(&self, records: Vec<VectorRecord>) -> Result<(), StoreError>;
    async fn delete(&self, keys: &[String]) -> Result<(), StoreError>;
    async fn get(&self, keys: &[String]) -> Result<Vec<VectorRecord>, StoreError>;
    /// Filter first, then the `top_k` nearest by cosine distance, nearest first.
    async fn query(
        &self,
        vector: &[f32],
        top_k: usize,
        filter: Option<&Filter>,
    ) -> Result<Vec<VectorHit>, StoreError>;

    /// Filter first, then the `top_k` chunks whose text matches `query` best by BM25 (with
    /// their vectors), best first. `None` when the index has no keyword search (S3 Vectors
    /// has none): retrieval then weighs words among the vector neighbours only.
    async fn keyword_query(
        &self,
        _query: &str,
        _top_k: usize,
        _filter: Option<&Filter>,
    ) -> Result<Option<Vec<VectorRecord>>, StoreError> {
        Ok(None)
    }
}

/// Failure of a model call.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The server could not be reached or answered 5xx/429 after retries; try again later.
    #[error("model unavailable: {0}")]
    Unavailable(String),
    /// The reply did not satisfy the schema (after the repair attempt).
    #[error("model reply rejected: {0}")]
    InvalidReply(String),
    /// The request was refused (4xx other than 429): configuration or input problem.
    #[error("model refused the request: {0}")]
    Refused(String),
    /// Not attempted: the circuit breaker is open after repeated failures. The work was not
    /// tried, so it is not a failure of the message; come back after `retry_after`.
    #[error("model circuit open after repeated failures; retrying in {} s", retry_after.as_secs().max(1))]
    CircuitOpen { retry_after: Duration },
}

impl ModelError {
    /// Whether retrying the message later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ModelError::Unavailable(_) | ModelError::CircuitOpen { .. }
        )
    }
}

/// Token counts of one model call (or of several, added up), for budgets and metrics, and
/// what they cost at the model's price (`cost`; 0 for a cache hit or a local model).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    #[serde(default)]
    pub cost_usd: f64,
}

impl Usage {
    /// The usage of two calls together.
    pub fn add(&mut self, other: &Usage) {
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.cost_usd += other.cost_usd;
    }
}

/// Whether a text is embedded as a document chunk or as a search query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmbedKind {
    Document,
    Query,
}

/// Turns text into vectors, many texts per call. Documents and queries are embedded apart:
/// asymmetric models (e5, nomic, Cohere, Voyage…) expect a question to be marked as one
/// (a prefix or an input type), and rank worse when it is embedded like a passage.
#[async_trait]
pub trait Embedder: Send + Sync {
    /// Identifies the vector space (provider, model, dimensions, document marking): part of
    /// every cache key and of the embedded index's name.
    fn space(&self) -> &str;
    fn dimension(&self) -> usize;
    /// Embeds document chunks, what the index stores.
    async fn embed(&self, texts: &[String]) -> Result<(Vec<Vec<f32>>, Usage), ModelError>;
    /// Embeds one search query (a chat question) into the same space as the documents.
    async fn embed_query(&self, text: &str) -> Result<(Vec<f32>, Usage), ModelError>;
}

/// The chat model as the use cases need it: suggest metadata for a document, answer a question
/// from passages. LLM providers build prompts and validate structured output behind this;
/// `lexical` answers without a model.
#[async_trait]
pub trait ChatModel: Send + Sync {
    /// `provider/model`, recorded on jobs and answers.
    fn name(&self) -> &str;
    /// Whether this model reads the passages and says when they do not answer (its answer
    /// then cites none, and chat reports `answered: false`). Chat hands such a model what
    /// retrieval found; an answerer that cannot judge (the offline `lexical` one) gets
    /// passages only when retrieval's own evidence says the archive holds the answer.
    fn judges_passages(&self) -> bool {
        true
    }
    async fn suggest(&self, input: &TagInput) -> Result<(Suggestion, Usage), ModelError>;
    async fn answer(&self, input: &AnswerInput) -> Result<(Answer, Usage), ModelError>;

    /// Like `answer`, sending pieces of the text to `tokens` as they are produced. Providers
    /// that cannot stream send the whole text once.
    async fn answer_streaming(
        &self,
        input: &AnswerInput,
        tokens: &TokenSink,
    ) -> Result<(Answer, Usage), ModelError> {
        let (answer, usage) = self.answer(input).await?;
        let _ = tokens.send(answer.text.clone());
        Ok((answer, usage))
    }

    /// Rewrites a follow-up ("and in 2024?") into a question that stands alone, for retrieval;
    /// returns the question unchanged when there is no history.
    async fn standalone(
        &self,
        history: &[(String, String)],
        question: &str,
    ) -> Result<(String, Usage), ModelError>;
}

/// Where a streaming answer's pieces go.
pub type TokenSink = tokio::sync::mpsc::UnboundedSender<String>;

/// Failure talking to Paperless-ngx.
#[derive(Debug, thiserror::Error)]
pub enum PaperlessError {
    /// The message says what was not found (and whether the token may simply not see it).
    #[error("{0}")]
    NotFound(String),
    #[error("Paperless refused access: {0}")]
    Forbidden(String),
    #[error("Paperless rejected the request: {0}")]
    Rejected(String),
    #[error("Paperless unavailable: {0}")]
    Unavailable(String),
}

impl PaperlessError {
    pub fn is_transient(&self) -> bool {
        matches!(self, PaperlessError::Unavailable(_))
    }
}

/// Which documents to list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DocumentQuery {
    /// Modified strictly after this RFC 3339 time.
    pub modified_after: Option<String>,
    /// Carrying this tag.
    pub tag: Option<u64>,
    /// Only these ids (existence checks).
    pub ids: Option<Vec<u64>>,
}

/// A listed document: enough to decide whether to process it.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct DocumentSummary {
    pub id: u64,
    #[serde(default)]
    pub modified: Option<String>,
}

/// The user behind the Paperless token and its permission codenames (`view_document`,
/// `add_tag`…), as `GET /api/ui_settings/` reports them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TokenPermissions {
    pub username: String,
    pub is_superuser: bool,
    pub permissions: std::collections::BTreeSet<String>,
}

impl TokenPermissions {
    /// The permissions the tagging policy needs that the token lacks (none for a superuser).
    pub fn missing(&self, policy: &crate::config::TaggingPolicy) -> Vec<String> {
        use crate::domain::Field;
        if self.is_superuser {
            return Vec::new();
        }
        let mut needed = vec!["view_document", "change_document", "view_tag"];
        let sets = |f: Field| policy.mode(f) != crate::config::FieldMode::Never;
        // Creating what the model names needs `add_*` unless output is restricted to existing.
        if !policy.restrict.contains(&ObjectKind::Tag) {
            needed.push("add_tag");
        }
        if sets(Field::Correspondent) {
            needed.push("view_correspondent");
            if !policy.restrict.contains(&ObjectKind::Correspondent) {
                needed.push("add_correspondent");
            }
        }
        if sets(Field::DocumentType) {
            needed.push("view_documenttype");
            if !policy.restrict.contains(&ObjectKind::DocumentType) {
                needed.push("add_documenttype");
            }
        }
        if sets(Field::CustomFields) || !policy.custom_fields.is_empty() {
            needed.push("view_customfield");
        }
        if sets(Field::StoragePath) {
            needed.push("view_storagepath");
        }
        needed
            .into_iter()
            .filter(|p| !self.permissions.contains(*p))
            .map(str::to_string)
            .collect()
    }
}

/// The document system, Paperless-ngx's REST API, as two ports: reading documents and the
/// taxonomy ([`PaperlessReader`]: chunk, chat and its per-user views, sync) and writing
/// metadata back ([`PaperlessWriter`]: only tagging and its review). The client provides both
/// ([`Paperless`]).
#[async_trait]
pub trait PaperlessReader: Send + Sync {
    async fn document(&self, id: u64) -> Result<Document, PaperlessError>;
    /// The document without its text (which can be megabytes): for reads that only compare
    /// or merge metadata, such as the one right before writing.
    async fn document_metadata(&self, id: u64) -> Result<Document, PaperlessError> {
        self.document(id).await
    }
    async fn taxonomy(&self) -> Result<Taxonomy, PaperlessError>;
    /// One page (from 1) of documents matching `query`, oldest modification first, and
    /// whether more pages follow.
    async fn list(
        &self,
        query: &DocumentQuery,
        page: u32,
    ) -> Result<(Vec<DocumentSummary>, bool), PaperlessError>;
    /// The web link users open for a document.
    fn document_url(&self, id: u64) -> String;
    /// The user behind the token and its permission codenames (`GET /api/ui_settings/`).
    async fn token_user(&self) -> Result<TokenUser, PaperlessError> {
        Err(PaperlessError::Rejected(
            "this Paperless client cannot tell its user".into(),
        ))
    }
    /// Who the token is and what it may do; `None` when this Paperless cannot say.
    async fn permissions(&self) -> Result<Option<TokenPermissions>, PaperlessError> {
        Ok(None)
    }
    /// The same Paperless as another user's token sees it, for reading only (per-user chat);
    /// `None` when this client cannot act for someone else.
    fn for_user(
        &self,
        _token: crate::config::Secret,
    ) -> Option<std::sync::Arc<dyn PaperlessReader>> {
        None
    }
}

/// Writing to Paperless-ngx: new taxonomy objects and document metadata.
#[async_trait]
pub trait PaperlessWriter: Send + Sync {
    /// Creates a tag/correspondent/document type with matching "none"; an existing object of
    /// the same name (created concurrently) is looked up and returned instead.
    async fn create(&self, kind: ObjectKind, name: &str) -> Result<TaxonomyObject, PaperlessError>;
    async fn patch(&self, id: u64, patch: &DocumentPatch) -> Result<(), PaperlessError>;
}

/// The whole client: both ports.
pub trait Paperless: PaperlessReader + PaperlessWriter {}

impl<P: PaperlessReader + PaperlessWriter + ?Sized> Paperless for P {}

/// The Paperless user a token belongs to, and what it may do globally (object permissions
/// on single documents come on top).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TokenUser {
    pub id: u64,
    pub username: String,
    #[serde(default)]
    pub is_superuser: bool,
    #[serde(default)]
    pub groups: Vec<u64>,
    /// Codenames such as `view_document`, `add_tag`, `view_customfield`.
    #[serde(default)]
    pub permissions: Vec<String>,
}

impl TokenUser {
    pub fn may(&self, codename: &str) -> bool {
        self.is_superuser || self.permissions.iter().any(|p| p == codename)
    }
}
