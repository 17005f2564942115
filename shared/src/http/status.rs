//! `GET /status` and `GET /status/checks`: what the web UI's Status page shows instead of a
//! setup wizard — the effective configuration with where each value came from (environment,
//! `.env`, SSM, default; secrets masked), figures (tokens today, job outcomes, cache hit
//! rate, queue depth), and on demand the connection checks (Paperless and what its token may
//! do, the chat model, the embedder, the state store), each with the reason when it fails.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};

use super::job_list::{JobClass, SCAN_WINDOW};
use super::{ApiError, ApiState};
use crate::config::{FieldMode, Provider, Secret, Settings, Source};
use crate::domain::{AnswerInput, DocId, Field, ObjectKind, Passage};
use crate::pipeline::{Core, Services};

/// One variable as the Status page shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConfigEntry {
    pub name: String,
    /// The value in effect (a default when unset); `***`-masked for secrets.
    pub value: String,
    pub source: Source,
    pub secret: bool,
}

fn provider(p: Provider) -> String {
    match p {
        Provider::Lexical => "lexical",
        Provider::OpenAi => "openai",
        Provider::Ollama => "ollama",
        Provider::Bedrock => "bedrock",
    }
    .into()
}

fn or_unset(v: &Option<String>, unset: &str) -> String {
    v.clone().unwrap_or_else(|| unset.to_string())
}

fn masked(v: Option<&Secret>) -> String {
    if v.is_some() { "set (***)" } else { "not set" }.into()
}

fn joined(v: &[String], empty: &str) -> String {
    if v.is_empty() {
        empty.into()
    } else {
        v.join(",")
    }
}

fn mode(m: FieldMode) -> &'static str {
    match m {
        FieldMode::Overwrite => "overwrite",
        FieldMode::IfEmpty => "if_empty",
        FieldMode::Never => "never",
    }
}

fn field(f: Field) -> String {
    serde_json::to_value(f)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The effective configuration, one entry per variable, in the order of DESIGN §5; variables
/// set that this list does not know (added later) follow with their source.
pub fn config_entries(s: &Settings, model_name: &str, embedder: &str) -> Vec<ConfigEntry> {
    let p = &s.policy;
    let plain = |name: &str, value: String| (name.to_string(), value, false);
    let secret = |name: &str, value: String| (name.to_string(), value, true);
    let mut rows = vec![
        plain(
            "PAPERLESS_URL",
            or_unset(
                &s.paperless_url,
                "not set: suggestions are stored, nothing written back",
            ),
        ),
        secret("PAPERLESS_TOKEN", masked(s.paperless_token.as_ref())),
        secret("WEBHOOK_SECRET", masked(s.webhook_secret.as_ref())),
        secret(
            "API_KEYS",
            if s.api_keys.is_empty() {
                "none: no key needed (loopback only)".into()
            } else {
                format!("{} key(s) (***)", s.api_keys.len())
            },
        ),
        plain("LLM_PROVIDER", provider(s.llm.provider)),
        plain(
            "LLM_BASE_URL",
            or_unset(&s.llm.base_url, "provider's usual"),
        ),
        secret("LLM_API_KEY", masked(s.llm.api_key.as_ref())),
        plain(
            "LLM_MODEL",
            s.llm
                .model
                .clone()
                .unwrap_or_else(|| model_name.to_string()),
        ),
        plain("EMBEDDING_PROVIDER", provider(s.embedding.provider)),
        plain(
            "EMBEDDING_BASE_URL",
            or_unset(&s.embedding.base_url, "provider's usual"),
        ),
        secret("EMBEDDING_API_KEY", masked(s.embedding.api_key.as_ref())),
        plain(
            "EMBEDDING_MODEL",
            s.embedding
                .model
                .clone()
                .unwrap_or_else(|| embedder.to_string()),
        ),
        plain(
            "EMBEDDING_DIMENSIONS",
            s.embedding
                .dimensions
                .map_or_else(|| "model's own".into(), |d| d.to_string()),
        ),
        plain(
            "TAG_FIELDS",
            p.fields
                .iter()
                .map(|f| field(*f))
                .collect::<Vec<_>>()
                .join(","),
        ),
        plain(
            "FIELD_MODES",
            p.fields
                .iter()
                .map(|f| format!("{}={}", field(*f), mode(p.mode(*f))))
                .collect::<Vec<_>>()
                .join(","),
        ),
        plain(
            "RESTRICT_TO_EXISTING",
            if p.restrict.is_empty() {
                "none".into()
            } else {
                p.restrict
                    .iter()
                    .map(|k| match k {
                        ObjectKind::Tag => "tags",
                        ObjectKind::Correspondent => "correspondents",
                        ObjectKind::DocumentType => "document_types",
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            },
        ),
        plain("PROCESSED_TAG", p.processed_tag.clone()),
        plain("FAILED_TAG", p.failed_tag.clone()),
        plain("TRIGGER_TAG", or_unset(&p.trigger_tag, "not set")),
        plain("INCLUDE_TAGS", joined(&p.include_tags, "all documents")),
        plain("EXCLUDE_TAGS", joined(&p.exclude_tags, "none")),
        plain("CUSTOM_FIELDS", joined(&p.custom_fields, "none")),
        plain("REVIEW_MODE", p.review_mode.to_string()),
        plain(
            "SYSTEM_PROMPT",
            p.system_prompt.as_ref().map_or_else(
                || "built in".into(),
                |t| format!("custom ({} characters)", t.chars().count()),
            ),
        ),
        plain("MAX_INPUT_TOKENS", p.max_input_tokens.to_string()),
        plain("MAX_OUTPUT_TOKENS", p.max_output_tokens.to_string()),
        plain(
            "LLM_DAILY_TOKENS",
            match s.llm_daily_tokens {
                0 => "no cap".into(),
                n => n.to_string(),
            },
        ),
        plain(
            "LLM_MAX_CONCURRENCY",
            s.model_limits.max_concurrency.to_string(),
        ),
        plain(
            "CHAT_REQUESTS_PER_MINUTE",
            s.chat_requests_per_minute.to_string(),
        ),
        plain("CHAT_DAILY_TOKENS", s.chat_daily_tokens.to_string()),
        plain("CHUNK_TOKENS", s.chunk_tokens.to_string()),
        plain("CHUNK_OVERLAP", s.chunk_overlap.to_string()),
        plain("SYNC_INTERVAL_MINUTES", s.sync_interval_minutes.to_string()),
        plain("MAX_RECEIVES", s.max_receives.to_string()),
        plain("MAX_UPLOAD_BYTES", s.max_upload_bytes.to_string()),
        plain("CACHE_TTL_DAYS", (s.cache_ttl_secs / 86_400).to_string()),
        plain("OLLAMA_NUM_CTX", s.ollama_num_ctx.to_string()),
        plain("MODEL_PRICES", s.model_prices.to_string()),
        plain(
            "LLM_REQUESTS_PER_MINUTE",
            match s.model_limits.requests_per_minute {
                0 => "no limit".into(),
                n => n.to_string(),
            },
        ),
        plain(
            "LLM_BREAKER_FAILURES",
            s.model_limits.breaker_failures.to_string(),
        ),
        plain(
            "LLM_BREAKER_COOLDOWN_SECS",
            s.model_limits.breaker_cooldown.as_secs().to_string(),
        ),
        plain(
            "PAPERLESS_OWNER_ID",
            s.paperless_owner
                .map_or_else(|| "not set".into(), |o| o.to_string()),
        ),
        plain("WORKERS", s.workers.to_string()),
        plain("PUBLIC_URL", or_unset(&s.public_url, "http://BIND:PORT")),
        plain("DATA_DIR", s.data_dir.display().to_string()),
        plain("BIND", s.bind.clone()),
        plain("PORT", s.port.to_string()),
    ];
    // Secrets of variables this list does not know are still never shown.
    for name in s.sources.keys() {
        if !rows.iter().any(|(n, _, _)| n == name) {
            let is_secret = looks_secret(name);
            rows.push((
                name.clone(),
                if is_secret { "set (***)" } else { "set" }.into(),
                is_secret,
            ));
        }
    }
    rows.into_iter()
        .map(|(name, value, secret)| ConfigEntry {
            source: s.source(&name),
            name,
            value,
            secret,
        })
        .collect()
}

/// A variable this page does not know is masked if its name says it holds a secret.
fn looks_secret(name: &str) -> bool {
    ["TOKEN", "KEY", "SECRET", "PASSWORD", "CREDENTIAL"]
        .iter()
        .any(|w| name.contains(w))
}

/// Sums of the Prometheus text exposition by metric name and label set.
fn prometheus(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, rest) = match line.find('}') {
            Some(end) => (&line[..=end], &line[end + 1..]),
            None => match line.split_once(' ') {
                Some((s, r)) => (s, r),
                None => continue,
            },
        };
        let Some(value) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        let labels = labels
            .split("\",")
            .filter_map(|kv| kv.split_once("=\""))
            .map(|(k, v)| (k.trim().to_string(), v.trim_end_matches('"').to_string()))
            .collect();
        out.push((name.to_string(), labels, value));
    }
    out
}

/// The figures this process's metrics hold (since it started).
pub fn metric_figures(text: &str) -> Value {
    let series = prometheus(text);
    let sum = |name: &str, label: Option<(&str, &str)>| -> f64 {
        series
            .iter()
            .filter(|(n, l, _)| {
                n == name && label.is_none_or(|(k, v)| l.get(k).is_some_and(|x| x == v))
            })
            .map(|(_, _, v)| v)
            .sum::<f64>()
            // An empty float sum is -0.0, shown as "-0".
            + 0.0
    };
    let by_label = |name: &str, label: &str| -> BTreeMap<String, f64> {
        let mut m = BTreeMap::new();
        for (n, l, v) in &series {
            if n == name {
                *m.entry(l.get(label).cloned().unwrap_or_default())
                    .or_default() += v;
            }
        }
        m
    };
    let hits = sum(crate::metrics::CACHE_HITS, None);
    let misses = sum(crate::metrics::CACHE_MISSES, None);
    let depth = by_label("pai_queue_depth", "queue");
    json!({
        "documents_tagged": by_label(crate::metrics::DOCUMENTS_TAGGED, "outcome"),
        "messages_failed": sum(crate::metrics::MESSAGES_FAILED, None),
        "tokens_in": sum(crate::metrics::TOKENS_IN, None),
        "tokens_out": sum(crate::metrics::TOKENS_OUT, None),
        "cache_hit_rate": (hits + misses > 0.0).then_some(hits / (hits + misses)),
        "queue_depth": (!depth.is_empty()).then_some(depth),
    })
}

/// Model tokens used today: tagging (`LLM_DAILY_TOKENS`' counter) and chat, per API key.
async fn tokens_today(state: &ApiState) -> Result<(i64, i64), crate::ports::StoreError> {
    let store = state.svc.state.as_ref();
    let today = chrono::Utc::now().date_naive();
    let tagging = store
        .counters(&crate::state_keys::tagging_usage_key(today))
        .await?
        .get("tokens")
        .copied()
        .unwrap_or(0);
    let mut ids: Vec<String> = state
        .svc
        .settings
        .api_keys
        .iter()
        .map(|k| crate::auth::ApiKeys::id(k.expose()))
        .collect();
    ids.push("local".into());
    let mut chat = 0;
    for id in ids {
        chat += super::limits::tokens_today(store, &id).await?;
    }
    Ok((tagging, chat))
}

pub(super) async fn status(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let svc = &state.svc;
    let config = config_entries(&svc.settings, &svc.names.model, &svc.names.space);
    let (tagging, chat) = tokens_today(&state)
        .await
        .map_err(crate::pipeline::PipelineError::from)?;
    // Outcomes of the most recent jobs: one bounded read, the same on SQLite and DynamoDB.
    let recent = svc
        .state
        .list_newest(crate::state_keys::JOBS, None, SCAN_WINDOW)
        .await
        .map_err(crate::pipeline::PipelineError::from)?;
    let mut classes: BTreeMap<&str, usize> =
        [("failed", 0), ("excluded", 0), ("waiting", 0), ("done", 0)].into();
    for (_, v) in &recent {
        if let Ok(job) = serde_json::from_value::<crate::domain::Job>(v.clone()) {
            let name = match JobClass::of(&job) {
                JobClass::Failed => "failed",
                JobClass::Excluded => "excluded",
                JobClass::Waiting => "waiting",
                JobClass::Done => "done",
            };
            *classes.entry(name).or_default() += 1;
        }
    }
    let metrics = state
        .metrics
        .as_ref()
        .map(|render| metric_figures(&render()));
    Ok(axum::Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "model": svc.names.model,
        "embedder": svc.names.space,
        "review_mode": svc.settings.policy.review_mode,
        "paperless": svc.paperless.is_some(),
        "config": config,
        "figures": {
            "tokens_today": {"tagging": tagging, "chat": chat},
            "recent_jobs": {"scanned": recent.len(), "by_status": classes},
            "metrics": metrics,
        },
    }))
    .into_response())
}

/// One connection check: `ok` is `None` when the thing is not configured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: Option<bool>,
    pub detail: String,
    pub millis: u64,
}

const CHECK_TIMEOUT: Duration = Duration::from_secs(15);

async fn timed<F>(name: &'static str, f: F) -> Check
where
    F: std::future::Future<Output = (Option<bool>, String)>,
{
    let start = Instant::now();
    let (ok, detail) = match tokio::time::timeout(CHECK_TIMEOUT, f).await {
        Ok(r) => r,
        Err(_) => (
            Some(false),
            format!("no answer within {} s", CHECK_TIMEOUT.as_secs()),
        ),
    };
    Check {
        name,
        ok,
        detail,
        millis: start.elapsed().as_millis() as u64,
    }
}

async fn check_paperless(svc: &Core) -> (Option<bool>, String) {
    let Some(p) = &svc.paperless else {
        return (
            None,
            "PAPERLESS_URL is not set: suggestions are stored, nothing is written back".into(),
        );
    };
    let taxonomy = match p.taxonomy().await {
        Ok(t) => t,
        Err(e) => return (Some(false), e.to_string()),
    };
    let mut detail = format!(
        "reached: {} tags, {} correspondents, {} document types",
        taxonomy.tags.len(),
        taxonomy.correspondents.len(),
        taxonomy.document_types.len()
    );
    match p.permissions().await {
        Ok(Some(perms)) => {
            let missing = perms.missing(&svc.settings.policy);
            if missing.is_empty() {
                detail.push_str(&format!(
                    "; the token's user {:?} may do everything the policy needs",
                    perms.username
                ));
            } else {
                detail.push_str(&format!(
                    "; the token's user {:?} lacks: {}",
                    perms.username,
                    missing.join(", ")
                ));
                return (Some(false), detail);
            }
        }
        Ok(None) => {}
        Err(e) => {
            detail.push_str(&format!("; its permissions could not be read: {e}"));
            return (Some(false), detail);
        }
    }
    (Some(true), detail)
}

/// What a process that does not call a model (the ingest Lambda) says instead of checking it.
const ELSEWHERE: &str =
    "not used by this function: the tag and chat functions call it (see their logs and alarms)";

async fn check_model<B: Sync, Q: Sync>(svc: &Services<B, Q>) -> (Option<bool>, String) {
    if !svc.settings.required.llm_key {
        return (None, ELSEWHERE.into());
    }
    if svc.settings.llm.provider == Provider::Lexical {
        return (
            Some(true),
            "lexical: extractive answers and taxonomy matching, no model server".into(),
        );
    }
    let input = AnswerInput {
        question: "What does the status check passage say?".into(),
        passages: vec![Passage {
            n: 1,
            doc_id: DocId::Upload("0".into()),
            title: "status check".into(),
            text: "The status check passage says OK.".into(),
        }],
        history: Vec::new(),
    };
    match svc.models.model.answer(&input).await {
        Ok((answer, usage)) => (
            Some(true),
            format!(
                "{} answered ({} characters, {} tokens)",
                svc.models.model.name(),
                answer.text.chars().count(),
                usage.input_tokens + usage.output_tokens
            ),
        ),
        Err(e) => (Some(false), format!("{}: {e}", svc.models.model.name())),
    }
}

async fn check_embeddings<B: Sync, Q: Sync>(svc: &Services<B, Q>) -> (Option<bool>, String) {
    if !svc.settings.required.embedding_key {
        return (None, ELSEWHERE.replace("tag and chat", "embed and chat"));
    }
    match svc
        .models
        .embedder
        .embed(&["status check".to_string()])
        .await
    {
        Ok((vectors, _)) => {
            let got = vectors.first().map_or(0, Vec::len);
            let want = svc.vectors.dimension();
            if got == want {
                (
                    Some(true),
                    format!(
                        "{} answered with {got} dimensions",
                        svc.models.embedder.space()
                    ),
                )
            } else {
                (
                    Some(false),
                    format!(
                        "{} answered with {got} dimensions; the vector index has {want}",
                        svc.models.embedder.space()
                    ),
                )
            }
        }
        Err(e) => (Some(false), format!("{}: {e}", svc.models.embedder.space())),
    }
}

async fn check_store(svc: &Core) -> (Option<bool>, String) {
    match svc.state.get("status/probe").await {
        Ok(_) => (Some(true), "state store readable".into()),
        Err(e) => (Some(false), e.to_string()),
    }
}

/// Every check, run at once.
pub async fn run_checks<B: Sync, Q: Sync>(svc: &Services<B, Q>) -> Vec<Check> {
    let (paperless, model, embeddings, store) = tokio::join!(
        timed("paperless", check_paperless(svc)),
        timed("model", check_model(svc)),
        timed("embeddings", check_embeddings(svc)),
        timed("state store", check_store(svc)),
    );
    vec![paperless, model, embeddings, store]
}

pub(super) async fn checks(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let checks = run_checks(&state.svc).await;
    Ok(axum::Json(json!({ "checks": checks })).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_figures_sum_by_label() {
        let text = "# HELP x\n\
            pai_documents_tagged_total{outcome=\"applied\"} 3\n\
            pai_documents_tagged_total{outcome=\"failed\"} 1\n\
            pai_cache_hits_total{cache=\"prompt\"} 3\n\
            pai_cache_misses_total{cache=\"prompt\"} 1\n\
            pai_model_tokens_in_total{provider=\"openai\",kind=\"chat\"} 120\n\
            pai_queue_depth{queue=\"tag\"} 4\n";
        let f = metric_figures(text);
        assert_eq!(f["documents_tagged"]["applied"], 3.0);
        assert_eq!(f["documents_tagged"]["failed"], 1.0);
        assert_eq!(f["cache_hit_rate"], 0.75);
        assert_eq!(f["tokens_in"], 120.0);
        assert_eq!(f["queue_depth"]["tag"], 4.0);
        assert!(metric_figures("")["cache_hit_rate"].is_null());
    }

    #[test]
    fn secrets_are_masked_and_sources_shown() {
        let mut s = Settings::from_map(
            &[
                ("API_KEYS", "a-very-long-api-key-1"),
                ("LLM_API_KEY", "sk-secret-value"),
                ("LLM_PROVIDER", "openai"),
                ("REVIEW_MODE", "true"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        )
        .unwrap();
        s.mark_sources(["REVIEW_MODE"], Source::DotEnv);
        let entries = config_entries(&s, "openai/gpt-4o-mini", "lexical");
        let shown = serde_json::to_string(&entries).unwrap();
        assert!(
            !shown.contains("a-very-long") && !shown.contains("sk-secret"),
            "{shown}"
        );
        let get = |n: &str| entries.iter().find(|e| e.name == n).unwrap();
        assert_eq!(get("LLM_API_KEY").source, Source::Environment);
        assert!(get("LLM_API_KEY").secret);
        assert_eq!(get("REVIEW_MODE").source, Source::DotEnv);
        assert_eq!(get("REVIEW_MODE").value, "true");
        assert_eq!(get("PORT").source, Source::Default);
        assert_eq!(get("PORT").value, "8080");
        assert_eq!(get("LLM_MODEL").value, "openai/gpt-4o-mini");
    }
}
