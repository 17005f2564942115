//! Chat: answer a question from the archive with numbered citations. Retrieval is hybrid:
//! the request's filters go into both the vector query and the keyword (BM25) query, the two
//! rankings are fused by reciprocal rank (the keyword side weighted by how much of the
//! question it finds), similarities are centred per document language so a multilingual
//! model's preference for the question's own language does not decide, and whether the
//! archive holds the answer is judged from how far the best passage stands out in the
//! embedding space together with the keywords it holds. With the offline answerer a question
//! the archive cannot answer is refused by that evidence; a model judges the passages itself
//! (it cites none when they do not answer); a scope the user chose is never refused.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::embed::created_number;
use super::{Models, PipelineError, Services};
use crate::domain::{AnswerInput, DocId, Passage};
use crate::filter::Filter;
use crate::keyword;
use crate::ports::{Condition, PaperlessReader, TokenSink, TokenUser, Usage, VectorRecord};
use crate::text::{count_tokens, detect_language, fold};

pub const MAX_QUESTION_CHARS: usize = 2000;
/// Candidates fetched from each side (vector neighbours, keyword matches) before fusion.
const CANDIDATES: usize = 40;
/// Reciprocal rank fusion's constant (the usual 60): the first ranks of either side count,
/// and no score scale enters.
const RRF_K: f32 = 60.0;
/// Passages handed to the answerer, and at most this many from one document.
const MAX_PASSAGES: usize = 6;
const MAX_PER_DOCUMENT: usize = 2;
const CONTEXT_TOKENS: usize = 3000;
/// The evidence score combines, each capped at its weight: how far the best similarity stands
/// out (full weight at `STANDOUT_SCALE` spreads) and the keyword share. Below `MIN_EVIDENCE`
/// the archive is taken not to hold the answer. Calibrated on the original labelled
/// questions (`cli/samples/questions.json`) with both the `lexical` embedder and
/// multilingual-e5-small, and measured on the unseen ones (README, "Chat quality").
const STANDOUT_WEIGHT: f32 = 0.3;
const STANDOUT_SCALE: f32 = 6.0;
const KEYWORD_WEIGHT: f32 = 0.7;
const MIN_EVIDENCE: f32 = 0.48;
/// Similarities are centred per document language only where a language has this many
/// candidates: fewer say nothing about where that language's cosines sit.
const MIN_LANGUAGE_GROUP: usize = 3;
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

use crate::state_keys::session_key;

fn refusal(question: &str) -> &'static str {
    match detect_language(question) {
        "de" => "Ihre Dokumente enthalten keine Antwort auf diese Frage.",
        "fr" => "Vos documents ne contiennent pas de réponse à cette question.",
        _ => "Your documents do not contain an answer to this question.",
    }
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

/// A candidate passage with the evidence retrieval weighs.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub record: VectorRecord,
    /// Cosine similarity to the question's embedding.
    pub similarity: f32,
    /// The similarity centred on its document language's mean among the candidates: a
    /// multilingual model puts every passage in the question's language closer than any in
    /// another, so raw cosines rank a German answer below English passages on other topics.
    pub adjusted: f32,
    /// BM25 of the text among the candidates (0 when it shares no term with the question).
    pub keyword: f32,
    /// Reciprocal-rank fusion of the two rankings.
    pub fused: f32,
}

/// How sure retrieval is that the archive holds the answer, from evidence that works across
/// languages (how far the best passage's similarity stands out from the candidates') and the
/// share of the question's keywords the best passage holds.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Evidence {
    /// Best similarity minus the median of the candidates', in units of their spread.
    pub standout: f32,
    /// Share of the question's term weight (BM25 idf) the best keyword passage holds.
    pub keyword_share: f32,
    pub score: f32,
}

/// What retrieval found: candidates best first, and the evidence.
pub struct Retrieval {
    pub candidates: Vec<Candidate>,
    pub evidence: Evidence,
    /// The question's embedding: part of what the answer cost.
    pub usage: Usage,
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm =
        a.iter().map(|x| x * x).sum::<f32>().sqrt() * b.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 { dot / norm } else { 0.0 }
}

/// Ranks 0-based positions of `scores` from best to worst; `None` for non-positive scores
/// when `positive_only`.
fn ranks(scores: &[f32], positive_only: bool) -> Vec<Option<usize>> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|a, b| scores[*b].total_cmp(&scores[*a]).then(a.cmp(b)));
    let mut out = vec![None; scores.len()];
    for (rank, i) in order.into_iter().enumerate() {
        if !positive_only || scores[i] > 0.0 {
            out[i] = Some(rank);
        }
    }
    out
}

fn median(mut xs: Vec<f32>) -> f32 {
    if xs.is_empty() {
        return 0.0;
    }
    xs.sort_by(f32::total_cmp);
    xs[xs.len() / 2]
}

/// Hybrid retrieval: the vector index's nearest neighbours and the keyword index's best BM25
/// matches (where the index has one), both after the filter, fused by reciprocal rank so
/// neither side's scale can drown the other.
pub async fn rank<B: Sync, Q: Sync, W: Sync>(
    svc: &Services<B, Q, Models, W>,
    query: &str,
    filter: Option<&Filter>,
) -> Result<Retrieval, PipelineError> {
    let (qv, usage) = svc.models.embedder.embed_query(query).await?;
    let mut candidates: Vec<Candidate> = Vec::new();
    if qv.iter().any(|x| *x != 0.0) {
        for hit in svc.vectors.query(&qv, CANDIDATES, filter).await? {
            candidates.push(Candidate {
                similarity: 1.0 - hit.distance,
                adjusted: 0.0,
                record: hit.record,
                keyword: 0.0,
                fused: 0.0,
            });
        }
    }
    if let Some(records) = svc.vectors.keyword_query(query, CANDIDATES, filter).await? {
        for record in records {
            if candidates.iter().any(|c| c.record.key == record.key) {
                continue;
            }
            let similarity = if record.vector.len() == qv.len() {
                cosine(&qv, &record.vector)
            } else {
                0.0
            };
            candidates.push(Candidate {
                record,
                similarity,
                adjusted: 0.0,
                keyword: 0.0,
                fused: 0.0,
            });
        }
    }
    // One order whatever order the stores return equal scores in (it follows indexing, which
    // concurrent workers interleave): every tie below is then broken by key.
    candidates.sort_by(|a, b| a.record.key.cmp(&b.record.key));
    let texts: Vec<&str> = candidates.iter().map(|c| c.record.text.as_str()).collect();
    let bm25 = keyword::score_texts(query, &texts);
    let keyword_share = keyword::best_share(query, &texts);
    centre_by_language(&mut candidates);
    let adjusted: Vec<f32> = candidates.iter().map(|c| c.adjusted).collect();
    let (by_vector, by_keyword) = (ranks(&adjusted, false), ranks(&bm25, true));
    for (i, c) in candidates.iter_mut().enumerate() {
        c.keyword = bm25[i];
        // The keyword ranking counts as much as the question's terms are found at all: a
        // question in other words or another language matches only stray terms, whose
        // ranking would otherwise push the embedder's answer down.
        c.fused = by_vector[i].map_or(0.0, |r| 1.0 / (RRF_K + r as f32 + 1.0))
            + by_keyword[i].map_or(0.0, |r| keyword_share / (RRF_K + r as f32 + 1.0));
    }
    let evidence = weigh(&candidates, keyword_share);
    candidates.sort_by(|a, b| b.fused.total_cmp(&a.fused));
    Ok(Retrieval {
        candidates,
        evidence,
        usage,
    })
}

/// Centres each candidate's similarity on the mean of its document language's candidates
/// (moved to the mean of all), so passages compete on topic, not on sharing the question's
/// language. A language with fewer than `MIN_LANGUAGE_GROUP` candidates keeps its cosines.
fn centre_by_language(candidates: &mut [Candidate]) {
    let languages: Vec<&'static str> = candidates
        .iter()
        .map(|c| detect_language(&c.record.text))
        .collect();
    let mean = |xs: &mut dyn Iterator<Item = f32>| {
        let (sum, n) = xs.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
        (sum / n.max(1) as f32, n)
    };
    let (overall, _) = mean(&mut candidates.iter().map(|c| c.similarity));
    let mut group: HashMap<&str, (f32, usize)> = HashMap::new();
    for language in &languages {
        if !group.contains_key(language) {
            let stats = mean(
                &mut candidates
                    .iter()
                    .zip(&languages)
                    .filter(|(_, l)| *l == language)
                    .map(|(c, _)| c.similarity),
            );
            group.insert(language, stats);
        }
    }
    for (c, language) in candidates.iter_mut().zip(&languages) {
        let (centre, n) = group[language];
        c.adjusted = if n >= MIN_LANGUAGE_GROUP {
            c.similarity - centre + overall
        } else {
            c.similarity
        };
    }
}

/// The evidence that the best candidates answer the question.
fn weigh(candidates: &[Candidate], keyword_share: f32) -> Evidence {
    let sims: Vec<f32> = candidates.iter().map(|c| c.adjusted).collect();
    let best = sims.iter().copied().fold(f32::MIN, f32::max);
    let mid = median(sims.clone());
    // Spread: the median absolute deviation, floored so a tight cluster is not divided by ~0.
    let spread = median(sims.iter().map(|s| (s - mid).abs()).collect()).max(0.01);
    let standout = if candidates.is_empty() {
        0.0
    } else {
        (best - mid) / spread
    };
    let score =
        STANDOUT_WEIGHT * (standout / STANDOUT_SCALE).min(1.0) + KEYWORD_WEIGHT * keyword_share;
    Evidence {
        standout,
        keyword_share,
        score,
    }
}

/// The passages that answer `query` best, numbered from 1: hybrid retrieval under the filter,
/// at most a few per document, within the context budget. For an answerer that cannot judge
/// the passages itself (the offline one), empty when the evidence says the archive does not
/// hold the answer; a model that judges (an LLM: it cites nothing when the passages do not
/// answer) is handed what was found, since no score threshold separates answerable from
/// unanswerable questions in other words or languages. A scope the user chose (one
/// document, or filters) is never refused: the user has said where the answer is, and a
/// question's words need not be the document's.
pub async fn retrieve<B: Sync, Q: Sync, W: Sync>(
    svc: &Services<B, Q, Models, W>,
    query: &str,
    filter: Option<&Filter>,
) -> Result<Vec<Passage>, PipelineError> {
    Ok(retrieve_costed(svc, query, filter).await?.0)
}

/// `retrieve`, with what embedding the question cost.
pub async fn retrieve_costed<B: Sync, Q: Sync, W: Sync>(
    svc: &Services<B, Q, Models, W>,
    query: &str,
    filter: Option<&Filter>,
) -> Result<(Vec<Passage>, Usage), PipelineError> {
    let retrieval = rank(svc, query, filter).await?;
    let judged_here = filter.is_none() && !svc.models.model.judges_passages();
    if judged_here && retrieval.evidence.score < MIN_EVIDENCE {
        return Ok((Vec::new(), retrieval.usage));
    }
    Ok((select(retrieval.candidates), retrieval.usage))
}

/// The best candidates as numbered passages: a few per document, within the budget.
fn select(candidates: Vec<Candidate>) -> Vec<Passage> {
    let mut passages = Vec::new();
    let mut per_doc: HashMap<String, usize> = HashMap::new();
    let mut tokens = 0;
    for c in candidates {
        let doc = c
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
        let t = count_tokens(&c.record.text);
        if *count >= MAX_PER_DOCUMENT || tokens + t > CONTEXT_TOKENS {
            continue;
        }
        *count += 1;
        tokens += t;
        passages.push(Passage {
            n: passages.len() + 1,
            doc_id,
            title: c.record.title,
            text: c.record.text,
        });
        if passages.len() == MAX_PASSAGES {
            break;
        }
    }
    passages
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
        paperless: Arc<dyn PaperlessReader>,
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
pub async fn ask<B: Sync, Q: Sync, W: Sync>(
    svc: &Services<B, Q, Models, W>,
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
pub async fn ask_as<B: Sync, Q: Sync, W: Sync>(
    svc: &Services<B, Q, Models, W>,
    req: &ChatRequest,
    tokens: Option<&TokenSink>,
    viewer: &Viewer,
) -> Result<ChatResponse, ChatError> {
    use tracing::Instrument;
    // Each question is a trace of its own: retrieval and the model calls beneath it.
    let span = tracing::info_span!(parent: None, "chat", passages = tracing::field::Empty);
    answer_as(svc, req, tokens, viewer).instrument(span).await
}

async fn answer_as<B: Sync, Q: Sync, W: Sync>(
    svc: &Services<B, Q, Models, W>,
    req: &ChatRequest,
    tokens: Option<&TokenSink>,
    viewer: &Viewer,
) -> Result<ChatResponse, ChatError> {
    use tracing::Instrument;
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
        .models
        .model
        .standalone(&history, question)
        .await
        .map_err(PipelineError::from)?;
    let retrieval = tracing::info_span!("retrieve", candidates = tracing::field::Empty);
    let (found, search_usage) = retrieve_costed(svc, &query, filter.as_ref())
        .instrument(retrieval.clone())
        .await?;
    retrieval.record("candidates", found.len());
    let passages = viewer.keep_visible(found).instrument(retrieval).await?;
    tracing::Span::current().record("passages", passages.len());

    let mut usage = rewrite_usage;
    usage.add(&search_usage);
    let (answer, citations) = if passages.is_empty() {
        (None, Vec::new())
    } else {
        let input = AnswerInput {
            question: question.to_string(),
            passages: passages.clone(),
            history,
        };
        let (answer, u) = match tokens {
            Some(sink) => svc.models.model.answer_streaming(&input, sink).await,
            None => svc.models.model.answer(&input).await,
        }
        .map_err(PipelineError::from)?;
        usage.add(&u);
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
        provider: svc.models.model.name().to_string(),
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
