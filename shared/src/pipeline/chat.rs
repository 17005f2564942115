//! Chat: answer a question from the archive with numbered citations. The request's filters go
//! into the vector query (filter first, then nearest neighbours), the candidates are reranked
//! by fusing vector similarity with keyword coverage, and a question the archive cannot answer
//! is refused without a model call.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::embed::created_number;
use super::{PipelineError, Services};
use crate::domain::{AnswerInput, DocId, Passage};
use crate::filter::Filter;
use crate::ports::{Condition, Paperless, TokenSink, TokenUser, Usage, VectorHit};
use crate::text::{count_tokens, detect_language, fold, is_stopword, words};

pub const MAX_QUESTION_CHARS: usize = 2000;
/// Candidates fetched from the index before reranking.
const CANDIDATES: usize = 40;
/// Passages handed to the answerer, and at most this many from one document.
const MAX_PASSAGES: usize = 6;
const MAX_PER_DOCUMENT: usize = 2;
const CONTEXT_TOKENS: usize = 3000;
/// Below this share of the question's (weighted) words in the best passage, the archive is
/// taken not to contain the answer.
const MIN_COVERAGE: f32 = 0.45;
const SESSION_TTL_SECS: i64 = 24 * 3600;
const SESSION_TURNS: usize = 6;

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatFilters {
    #[serde(default)]
    pub tags: Vec<String>,
    pub correspondent: Option<String>,
    pub document_type: Option<String>,
    pub created_from: Option<String>,
    pub created_to: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ChatRequest {
    pub question: String,
    #[serde(default)]
    pub filters: Option<ChatFilters>,
    /// Chat with one document: a number or a document id string.
    #[serde(default)]
    pub document_id: Option<Value>,
    #[serde(default)]
    pub session_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Citation {
    pub n: usize,
    pub doc_id: DocId,
    pub title: String,
    pub url: Option<String>,
    pub snippet: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatResponse {
    pub answer: String,
    pub citations: Vec<Citation>,
    pub session_id: String,
    pub provider: String,
    /// False when the archive did not contain the answer.
    pub answered: bool,
    /// Model tokens this answer cost (rewrite and answer).
    pub usage: Usage,
}

#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("{0}")]
    BadRequest(String),
    /// A session of another caller: answered like one that does not exist.
    #[error("no session {0}")]
    UnknownSession(String),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
}

fn bad<T>(m: impl Into<String>) -> Result<T, ChatError> {
    Err(ChatError::BadRequest(m.into()))
}

/// The request's filters as an S3 Vectors filter on the vectors' metadata.
pub fn build_filter(req: &ChatRequest) -> Result<Option<Filter>, ChatError> {
    let mut doc = serde_json::Map::new();
    let mut parts = Vec::new();
    if let Some(f) = &req.filters {
        for t in &f.tags {
            parts.push(json!({"tags": {"$eq": fold(t)}}));
        }
        if let Some(c) = &f.correspondent {
            parts.push(json!({"correspondent": {"$eq": fold(c)}}));
        }
        if let Some(t) = &f.document_type {
            parts.push(json!({"document_type": {"$eq": fold(t)}}));
        }
        let mut range = serde_json::Map::new();
        for (key, op, value) in [
            ("created_from", "$gte", &f.created_from),
            ("created_to", "$lte", &f.created_to),
        ] {
            if let Some(v) = value {
                let Some(n) = created_number(v).filter(|_| v.len() == 10) else {
                    return bad(format!(
                        "filters.{key} must be a date YYYY-MM-DD, not {v:?}"
                    ));
                };
                range.insert(op.into(), json!(n));
            }
        }
        if !range.is_empty() {
            parts.push(json!({"created": range}));
        }
    }
    if let Some(id) = &req.document_id {
        let id: DocId = match id {
            Value::Number(n) => n.to_string().parse(),
            Value::String(s) => s.parse(),
            _ => Err(String::new()),
        }
        .map_err(|_| ChatError::BadRequest(format!("document_id {id} is not a document id")))?;
        parts.push(json!({"doc_id": {"$eq": id.to_string()}}));
    }
    if parts.is_empty() {
        return Ok(None);
    }
    doc.insert("$and".into(), Value::Array(parts));
    Filter::parse(&Value::Object(doc))
        .map(Some)
        .map_err(|e| ChatError::BadRequest(e.to_string()))
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Session {
    turns: Vec<(String, String)>,
    /// Who created it (`Viewer::caller`): nobody else may read or continue it.
    #[serde(default)]
    caller: Option<String>,
}

fn session_key(id: &str) -> String {
    format!("session/{id}")
}

fn refusal(question: &str) -> &'static str {
    match detect_language(question) {
        "de" => "Ihre Dokumente enthalten keine Antwort auf diese Frage.",
        "fr" => "Vos documents ne contiennent pas de réponse à cette question.",
        _ => "Your documents do not contain an answer to this question.",
    }
}

/// Words of questions that documents rarely contain ("how high is…", "how much did I pay…"):
/// they are left out of keyword coverage so a natural question is not refused for them.
fn is_question_filler(w: &str) -> bool {
    const FILLER: &[&str] = &[
        "hoch",
        "lange",
        "viele",
        "betragt",
        "betrug",
        "kostet",
        "kostete",
        "bezahlt",
        "zahlen",
        "gezahlt",
        "laut",
        "gemass",
        "steht",
        "cost",
        "costs",
        "pay",
        "paid",
        "long",
        "according",
        "say",
        "says",
        "tell",
        "show",
        "quel",
        "quelle",
        "combien",
        "coute",
        "paye",
        "selon",
    ];
    FILLER.contains(&w)
}

/// A candidate after reranking.
struct Ranked {
    hit: VectorHit,
    coverage: f32,
    score: f32,
}

/// Fuses vector similarity with keyword coverage, where each question word weighs by how rare
/// it is among the candidates (a word every candidate has tells nothing).
fn rerank(question_words: &[String], hits: Vec<VectorHit>) -> Vec<Ranked> {
    let chunk_words: Vec<BTreeSet<String>> = hits
        .iter()
        .map(|h| words(&h.record.text).into_iter().collect())
        .collect();
    let n = hits.len().max(1) as f32;
    let weights: Vec<f32> = question_words
        .iter()
        .map(|w| {
            (1.0 + n / (1.0 + chunk_words.iter().filter(|c| c.contains(w)).count() as f32)).ln()
        })
        .collect();
    let total: f32 = weights.iter().sum::<f32>().max(f32::EPSILON);
    let mut ranked: Vec<Ranked> = hits
        .into_iter()
        .zip(&chunk_words)
        .map(|(hit, cw)| {
            let covered: f32 = question_words
                .iter()
                .zip(&weights)
                .filter(|(w, _)| cw.contains(*w))
                .map(|(_, x)| x)
                .sum();
            let coverage = covered / total;
            let score = 0.4 * (1.0 - hit.distance) + 0.6 * coverage;
            Ranked {
                hit,
                coverage,
                score,
            }
        })
        .collect();
    ranked.sort_by(|a, b| b.score.total_cmp(&a.score));
    ranked
}

/// Checks a request before any work: question length, filters, session id. Streaming
/// answers call this first, so a bad request is a 400, not a broken stream.
pub fn validate(req: &ChatRequest) -> Result<Option<Filter>, ChatError> {
    let question = req.question.trim();
    if question.is_empty() {
        return bad("question is empty");
    }
    if question.chars().count() > MAX_QUESTION_CHARS {
        return bad(format!(
            "question is longer than {MAX_QUESTION_CHARS} characters"
        ));
    }
    if let Some(id) = &req.session_id {
        let ok = (8..=64).contains(&id.len())
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !ok {
            return bad(format!(
                "session_id {id:?} must be 8 to 64 letters, digits, - or _"
            ));
        }
    }
    build_filter(req)
}

/// Words that carry a question's meaning (no stop words, no question filler).
fn content_words(s: &str) -> Vec<String> {
    words(s)
        .into_iter()
        .filter(|w| !is_stopword(w) && !is_question_filler(w))
        .collect()
}

/// The passages that answer `query` best, numbered from 1: the filter goes into the vector
/// query, candidates are reranked, at most a few per document, within the context budget.
/// Empty when even the best candidate covers too little of the question.
pub async fn retrieve(
    svc: &Services,
    query: &str,
    filter: Option<&Filter>,
) -> Result<Vec<Passage>, PipelineError> {
    let q_words: Vec<String> = content_words(query)
        .into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let (vectors, _) = svc.embedder.embed(&[query.to_string()]).await?;
    let qv = vectors.into_iter().next().unwrap_or_default();
    if qv.iter().all(|x| *x == 0.0) {
        return Ok(Vec::new());
    }
    let ranked = rerank(&q_words, svc.vectors.query(&qv, CANDIDATES, filter).await?);
    let mut passages = Vec::new();
    if !ranked.first().is_some_and(|r| r.coverage >= MIN_COVERAGE) {
        return Ok(passages);
    }
    let mut per_doc: HashMap<String, usize> = HashMap::new();
    let mut tokens = 0;
    for r in &ranked {
        let doc = r
            .hit
            .record
            .metadata
            .get("doc_id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let Ok(doc_id) = doc.parse::<DocId>() else {
            continue;
        };
        let count = per_doc.entry(doc).or_default();
        let t = count_tokens(&r.hit.record.text);
        if *count >= MAX_PER_DOCUMENT
            || tokens + t > CONTEXT_TOKENS
            || r.coverage < MIN_COVERAGE / 2.0
        {
            continue;
        }
        *count += 1;
        tokens += t;
        passages.push(Passage {
            n: passages.len() + 1,
            doc_id,
            title: r.hit.record.title.clone(),
            text: r.hit.record.text.clone(),
        });
        if passages.len() == MAX_PASSAGES {
            break;
        }
    }
    Ok(passages)
}

/// Whose documents a chat request may draw on.
#[derive(Clone)]
pub enum Viewer {
    /// An API key (or a keyless loopback server): everything the service token sees.
    /// `caller` names it, and binds its sessions.
    Service { caller: String },
    /// A Paperless user asking with their own token: only what Paperless lets them view.
    User {
        user: TokenUser,
        paperless: Arc<dyn Paperless>,
    },
}

impl Viewer {
    /// Who is asking: the key's id, or `paperless-user-<id>`.
    pub fn caller(&self) -> String {
        match self {
            Viewer::Service { caller } => caller.clone(),
            Viewer::User { user, .. } => format!("paperless-user-{}", user.id),
        }
    }

    /// The vector query's narrowing to what the user may see, from the owner and sharing the
    /// index keeps (current as of the last webhook or sync); `None` for the service and for
    /// superusers.
    fn narrowing(&self) -> Option<Filter> {
        use crate::filter::{Condition, Scalar};
        let Viewer::User { user, .. } = self else {
            return None;
        };
        if user.is_superuser {
            return None;
        }
        let mut any = vec![
            Filter::Field("owner".into(), Condition::Exists(false)),
            Filter::Field("viewers".into(), Condition::Eq(Scalar::Num(user.id as f64))),
        ];
        if !user.groups.is_empty() {
            any.push(Filter::Field(
                "viewer_groups".into(),
                Condition::In(user.groups.iter().map(|g| Scalar::Num(*g as f64)).collect()),
            ));
        }
        Some(Filter::Or(any))
    }

    /// The passages Paperless lets this viewer see now (asked with their token, so a
    /// permission revoked a second ago counts), numbered again from 1. Uploads, which are not
    /// in Paperless, are for API keys only.
    async fn keep_visible(&self, passages: Vec<Passage>) -> Result<Vec<Passage>, PipelineError> {
        let Viewer::User { paperless, .. } = self else {
            return Ok(passages);
        };
        let ids: BTreeSet<u64> = passages
            .iter()
            .filter_map(|p| p.doc_id.paperless_id())
            .collect();
        let visible: BTreeSet<u64> = if ids.is_empty() {
            BTreeSet::new()
        } else {
            let query = crate::ports::DocumentQuery {
                ids: Some(ids.into_iter().collect()),
                ..Default::default()
            };
            let (found, _) = paperless.list(&query, 1).await?;
            found.into_iter().map(|d| d.id).collect()
        };
        Ok(passages
            .into_iter()
            .filter(|p| {
                p.doc_id
                    .paperless_id()
                    .is_some_and(|id| visible.contains(&id))
            })
            .enumerate()
            .map(|(i, p)| Passage { n: i + 1, ..p })
            .collect())
    }
}

/// Answers a question from the archive for a keyless local caller (see `ask_as`).
pub async fn ask(
    svc: &Services,
    req: &ChatRequest,
    tokens: Option<&TokenSink>,
) -> Result<ChatResponse, ChatError> {
    let local = Viewer::Service {
        caller: "local".into(),
    };
    ask_as(svc, req, tokens, &local).await
}

/// Answers a question from the archive, from what `viewer` may see. With `tokens`, the
/// answer's text is also sent there piece by piece as the model produces it (the final
/// response carries the citations).
pub async fn ask_as(
    svc: &Services,
    req: &ChatRequest,
    tokens: Option<&TokenSink>,
    viewer: &Viewer,
) -> Result<ChatResponse, ChatError> {
    let started = std::time::Instant::now();
    let filter = match (validate(req)?, viewer.narrowing()) {
        (Some(f), Some(n)) => Some(Filter::And(vec![f, n])),
        (f, n) => f.or(n),
    };
    let question = req.question.trim();
    let session_id = req
        .session_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let session: Session = match svc
        .state
        .get(&session_key(&session_id))
        .await
        .map_err(PipelineError::from)?
    {
        Some(v) => serde_json::from_value(v.value).unwrap_or_default(),
        None => Session::default(),
    };
    let caller = viewer.caller();
    if session.caller.as_ref().is_some_and(|c| *c != caller) {
        return Err(ChatError::UnknownSession(session_id));
    }
    let history: Vec<(String, String)> = session
        .turns
        .iter()
        .rev()
        .take(SESSION_TURNS)
        .rev()
        .cloned()
        .collect();
    // A follow-up ("and in 2024?") is made to stand alone before it is searched for.
    let (query, rewrite_usage) = svc
        .model
        .standalone(&history, question)
        .await
        .map_err(PipelineError::from)?;
    let passages = viewer
        .keep_visible(retrieve(svc, &query, filter.as_ref()).await?)
        .await?;

    let mut usage = rewrite_usage;
    let (answer, citations) = if passages.is_empty() {
        (None, Vec::new())
    } else {
        let input = AnswerInput {
            question: question.to_string(),
            passages: passages.clone(),
            history,
        };
        let (answer, u) = match tokens {
            Some(sink) => svc.model.answer_streaming(&input, sink).await,
            None => svc.model.answer(&input).await,
        }
        .map_err(PipelineError::from)?;
        usage.input_tokens += u.input_tokens;
        usage.output_tokens += u.output_tokens;
        let citations: Vec<Citation> = answer
            .cited
            .iter()
            .filter_map(|n| passages.iter().find(|p| p.n == *n))
            .map(|p| Citation {
                n: p.n,
                doc_id: p.doc_id.clone(),
                title: p.title.clone(),
                url: match (&svc.paperless, p.doc_id.paperless_id()) {
                    (Some(pl), Some(id)) => Some(pl.document_url(id)),
                    _ => None,
                },
                snippet: p.text.chars().take(300).collect(),
            })
            .collect();
        (
            Some(crate::text::plain_answer(&answer.text)).filter(|_| !citations.is_empty()),
            citations,
        )
    };
    let answered = answer.is_some();
    let answer = answer.unwrap_or_else(|| {
        // Nothing relevant enough: said plainly, without a model call.
        let text = refusal(question).to_string();
        if let Some(sink) = tokens {
            let _ = sink.send(text.clone());
        }
        text
    });

    let mut turns = session.turns;
    turns.push((question.to_string(), answer.clone()));
    let keep = turns.len().saturating_sub(SESSION_TURNS);
    let session = Session {
        turns: turns.split_off(keep),
        caller: Some(caller),
    };
    svc.state
        .put(
            &session_key(&session_id),
            &serde_json::to_value(&session).expect("session serialises"),
            Condition::None,
            Some(super::now() + SESSION_TTL_SECS),
        )
        .await
        .map_err(PipelineError::from)?;
    metrics::histogram!(crate::metrics::CHAT_LATENCY).record(started.elapsed().as_secs_f64());
    Ok(ChatResponse {
        answer,
        citations,
        session_id,
        provider: svc.model.name().to_string(),
        answered,
        usage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(filters: Value) -> ChatRequest {
        serde_json::from_value(json!({"question": "q", "filters": filters})).unwrap()
    }

    #[test]
    fn filters_become_metadata_filters() {
        let f = build_filter(&req(json!({"tags": ["Invoice", "Home"], "correspondent": "Müller GmbH", "created_from": "2025-01-01", "created_to": "2025-12-31"}))).unwrap().unwrap();
        let meta = json!({"tags": ["invoice", "home"], "correspondent": "muller gmbh", "created": 20250314}).as_object().unwrap().clone();
        assert!(f.matches(&meta));
        let outside = json!({"tags": ["invoice", "home"], "correspondent": "muller gmbh", "created": 20240314}).as_object().unwrap().clone();
        assert!(!f.matches(&outside));
        assert!(build_filter(&req(json!({"created_from": "2025-13-01"}))).is_err());
        assert!(
            serde_json::from_value::<ChatRequest>(
                json!({"question": "q", "filters": {"colour": "red"}})
            )
            .is_err()
        );
        let one: ChatRequest =
            serde_json::from_value(json!({"question": "q", "document_id": 12})).unwrap();
        assert_eq!(
            build_filter(&one).unwrap().unwrap().to_json(),
            json!({"$and": [{"doc_id": {"$eq": "12"}}]})
        );
    }
}
