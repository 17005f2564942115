//! The layer every model call goes through, whatever the provider: the prompt and embedding
//! caches (keyed by SHA-256 of everything that shapes the reply, so a change of model, prompt
//! or schema is a miss) and the metrics (latency, errors, tokens, cost, hits and misses).

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use sha2::{Digest, Sha256};

use crate::cost::Prices;
use crate::domain::{Answer, AnswerInput, Suggestion, TagInput};
use crate::metrics as m;
use crate::ports::{Cache, ChatModel, Embedder, ModelError, TokenSink, Usage};

/// A cache key: the kind of value (`embedding`, `tag`, `answer`, `rewrite`) as its family, so
/// each Lambda's IAM policy names the kinds it may read and write, then a hash of `parts`.
fn key(kind: &str, parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    format!("{kind}/{}", hex::encode(h.finalize()))
}

/// Records a call's metrics and returns what it cost (0 when it failed).
fn record(
    prices: &Prices,
    provider: &str,
    kind: &'static str,
    started: Instant,
    result: &Result<Usage, &ModelError>,
) -> f64 {
    let name = provider;
    let provider = provider.to_string();
    metrics::histogram!(m::MODEL_LATENCY, "provider" => provider.clone(), "kind" => kind)
        .record(started.elapsed().as_secs_f64());
    match result {
        Ok(u) => {
            metrics::counter!(m::TOKENS_IN, "provider" => provider.clone(), "kind" => kind)
                .increment(u.input_tokens);
            metrics::counter!(m::TOKENS_OUT, "provider" => provider, "kind" => kind)
                .increment(u.output_tokens);
            let cost = prices.cost(name, u);
            let (provider, model) = crate::cost::provider_and_model(name);
            // A float counter (see `metrics::FLOAT_COUNTERS`); 0 for a free model, so the
            // series exists and shows that it is free.
            metrics::gauge!(m::MODEL_COST, "provider" => provider.to_string(), "model" => model.to_string(), "kind" => kind)
                .increment(cost);
            cost
        }
        Err(_) => {
            metrics::counter!(m::MODEL_ERRORS, "provider" => provider, "kind" => kind).increment(1);
            0.0
        }
    }
}

/// The span of one model call (or of one the cache answered): provider, model, kind, whether
/// the cache answered and, once it returns, the tokens.
fn model_span(name: &str, kind: &'static str, cache_hit: bool) -> tracing::Span {
    let (provider, model) = crate::telemetry::provider_and_model(name);
    tracing::info_span!(
        "model",
        provider,
        model,
        kind,
        cache_hit,
        input_tokens = tracing::field::Empty,
        output_tokens = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    )
}

/// Runs a provider call in its span, recording the tokens it reports.
async fn traced<T>(
    span: tracing::Span,
    call: impl std::future::Future<Output = Result<(T, Usage), ModelError>>,
) -> Result<(T, Usage), ModelError> {
    use tracing::Instrument;
    let result = call.instrument(span.clone()).await;
    match &result {
        Ok((_, usage)) => {
            span.record("input_tokens", usage.input_tokens);
            span.record("output_tokens", usage.output_tokens);
        }
        Err(_) => {
            span.record("otel.status_code", "ERROR");
        }
    }
    result
}

fn cache_event(cache: &'static str, hit: bool) {
    if hit {
        metrics::counter!(m::CACHE_HITS, "cache" => cache).increment(1);
    } else {
        metrics::counter!(m::CACHE_MISSES, "cache" => cache).increment(1);
    }
}

/// The cache of a function that keeps none (ingest, chunk and sync have no cache table: their
/// rare model calls, such as ingest's status checks, are not worth one): every read misses.
pub struct NoCache;

#[async_trait]
impl Cache for NoCache {
    async fn get(&self, _: &str) -> Result<Option<Vec<u8>>, crate::ports::StoreError> {
        Ok(None)
    }
    async fn put(&self, _: &str, _: &[u8], _: Option<i64>) -> Result<(), crate::ports::StoreError> {
        Ok(())
    }
}

/// An embedder with the embedding cache in front: only the misses of a batch reach the
/// provider, in one call.
pub struct CachedEmbedder {
    inner: Arc<dyn Embedder>,
    cache: Arc<dyn Cache>,
    ttl_secs: i64,
    prices: Prices,
}

impl CachedEmbedder {
    pub fn new(inner: Arc<dyn Embedder>, cache: Arc<dyn Cache>, ttl_secs: i64) -> CachedEmbedder {
        CachedEmbedder {
            inner,
            cache,
            ttl_secs,
            prices: Prices::default(),
        }
    }

    /// Prices the calls with `MODEL_PRICES` (the built-in list prices otherwise).
    pub fn with_prices(mut self, prices: Prices) -> CachedEmbedder {
        self.prices = prices;
        self
    }
}

/// Vectors are cached as little-endian f32, 4 bytes a dimension.
fn pack(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn unpack(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[async_trait]
impl Embedder for CachedEmbedder {
    fn space(&self) -> &str {
        self.inner.space()
    }

    fn dimension(&self) -> usize {
        self.inner.dimension()
    }

    async fn embed(&self, texts: &[String]) -> Result<(Vec<Vec<f32>>, Usage), ModelError> {
        let keys: Vec<String> = texts
            .iter()
            .map(|t| key("embedding", &[self.space().as_bytes(), t.as_bytes()]))
            .collect();
        let mut out: Vec<Option<Vec<f32>>> = Vec::with_capacity(texts.len());
        for k in &keys {
            // A cache that cannot be read is a miss, not a failure.
            let hit = self
                .cache
                .get(k)
                .await
                .ok()
                .flatten()
                .map(|b| unpack(&b))
                .filter(|v| v.len() == self.dimension());
            cache_event("embedding", hit.is_some());
            out.push(hit);
        }
        let missing: Vec<usize> = (0..texts.len()).filter(|i| out[*i].is_none()).collect();
        if missing.is_empty() && !texts.is_empty() {
            drop(model_span(self.space(), "embed", true));
        }
        let mut usage = Usage::default();
        if !missing.is_empty() {
            let batch: Vec<String> = missing.iter().map(|i| texts[*i].clone()).collect();
            let started = Instant::now();
            let span = model_span(self.space(), "embed", false);
            let result = traced(span, self.inner.embed(&batch)).await;
            let cost = record(
                &self.prices,
                self.space(),
                "embed",
                started,
                &result.as_ref().map(|(_, u)| *u),
            );
            let (vectors, u) = result?;
            if vectors.len() != batch.len() {
                return Err(ModelError::InvalidReply(format!(
                    "{} vectors for {} texts",
                    vectors.len(),
                    batch.len()
                )));
            }
            usage = Usage {
                cost_usd: cost,
                ..u
            };
            let expires = chrono::Utc::now().timestamp() + self.ttl_secs;
            for (i, v) in missing.into_iter().zip(vectors) {
                let _ = self.cache.put(&keys[i], &pack(&v), Some(expires)).await;
                out[i] = Some(v);
            }
        }
        Ok((out.into_iter().map(|v| v.expect("filled")).collect(), usage))
    }

    /// Queries are not cached: the space names the document side only, so a changed query
    /// prefix would otherwise be served stale vectors, and one short text is cheap to embed.
    async fn embed_query(&self, text: &str) -> Result<(Vec<f32>, Usage), ModelError> {
        let started = Instant::now();
        let span = model_span(self.space(), "embed_query", false);
        let result = traced(span, self.inner.embed_query(text)).await;
        let cost = record(
            &self.prices,
            self.space(),
            "embed",
            started,
            &result.as_ref().map(|(_, u)| *u),
        );
        result.map(|(v, u)| {
            (
                v,
                Usage {
                    cost_usd: cost,
                    ..u
                },
            )
        })
    }
}

/// A chat model with the prompt cache in front. The key covers the provider and model, the
/// whole input (document text, taxonomy slice, policy) and the schema version.
pub struct CachedModel {
    inner: Arc<dyn ChatModel>,
    cache: Arc<dyn Cache>,
    ttl_secs: i64,
    /// The settings that shape a reply but are not in the input (see `reply_shape`).
    reply_shape: String,
    prices: Prices,
}

/// Settings that shape the reply without being part of the input: the instructions
/// (`SYSTEM_PROMPT`), the output cap and, on Ollama, the context size. A change of any is a
/// cache miss; nothing else in the settings is (a new API key answers the same).
pub fn reply_shape(settings: &crate::config::Settings) -> String {
    let ollama = settings.llm.provider == crate::config::Provider::Ollama;
    serde_json::json!({
        "system_prompt": settings.policy.system_prompt,
        "max_output_tokens": settings.policy.max_output_tokens,
        "num_ctx": ollama.then_some(settings.ollama_num_ctx),
    })
    .to_string()
}

/// Bumped whenever prompts or the reply schema change, so old replies are misses.
pub const PROMPT_VERSION: &str = "tag-v1/answer-v1";

impl CachedModel {
    pub fn new(inner: Arc<dyn ChatModel>, cache: Arc<dyn Cache>, ttl_secs: i64) -> CachedModel {
        CachedModel {
            inner,
            cache,
            ttl_secs,
            reply_shape: String::new(),
            prices: Prices::default(),
        }
    }

    /// Prices the calls with `MODEL_PRICES` (the built-in list prices otherwise).
    pub fn with_prices(mut self, prices: Prices) -> CachedModel {
        self.prices = prices;
        self
    }

    pub fn with_reply_shape(mut self, shape: String) -> CachedModel {
        self.reply_shape = shape;
        self
    }

    async fn cached<T, F>(
        &self,
        kind: &'static str,
        input: &impl serde::Serialize,
        call: F,
    ) -> Result<(T, Usage), ModelError>
    where
        T: serde::Serialize + serde::de::DeserializeOwned,
        F: std::future::Future<Output = Result<(T, Usage), ModelError>>,
    {
        let mut body = serde_json::to_value(input).expect("input serialises");
        // Today's date is in the prompt (so the model can tell a date from the future) but not
        // in the key: the reply is checked against today afterwards, and a re-run the next
        // day must not be a paid miss.
        if let Some(fields) = body.as_object_mut() {
            fields.remove("today");
        }
        let body = serde_json::to_vec(&body).expect("input serialises");
        let k = key(
            kind,
            &[
                PROMPT_VERSION.as_bytes(),
                self.inner.name().as_bytes(),
                self.reply_shape.as_bytes(),
                &body,
            ],
        );
        if let Some(hit) = self
            .cache
            .get(&k)
            .await
            .ok()
            .flatten()
            .and_then(|b| serde_json::from_slice::<T>(&b).ok())
        {
            cache_event("prompt", true);
            drop(model_span(self.inner.name(), kind, true));
            return Ok((hit, Usage::default()));
        }
        cache_event("prompt", false);
        let started = Instant::now();
        let result = traced(model_span(self.inner.name(), kind, false), call).await;
        let cost = record(
            &self.prices,
            self.inner.name(),
            kind,
            started,
            &result.as_ref().map(|(_, u)| *u),
        );
        let (value, usage) = result?;
        let usage = Usage {
            cost_usd: cost,
            ..usage
        };
        let _ = self
            .cache
            .put(
                &k,
                &serde_json::to_vec(&value).expect("reply serialises"),
                Some(chrono::Utc::now().timestamp() + self.ttl_secs),
            )
            .await;
        Ok((value, usage))
    }
}

#[async_trait]
impl ChatModel for CachedModel {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn judges_passages(&self) -> bool {
        self.inner.judges_passages()
    }

    async fn suggest(&self, input: &TagInput) -> Result<(Suggestion, Usage), ModelError> {
        self.cached("tag", input, self.inner.suggest(input)).await
    }

    async fn answer(&self, input: &AnswerInput) -> Result<(Answer, Usage), ModelError> {
        self.cached("answer", input, self.inner.answer(input)).await
    }

    async fn answer_streaming(
        &self,
        input: &AnswerInput,
        tokens: &TokenSink,
    ) -> Result<(Answer, Usage), ModelError> {
        // A cached answer is sent whole; a fresh one streams from the provider.
        let streamed = std::sync::atomic::AtomicBool::new(false);
        let (answer, usage) = self
            .cached("answer", input, async {
                streamed.store(true, std::sync::atomic::Ordering::Relaxed);
                self.inner.answer_streaming(input, tokens).await
            })
            .await?;
        if !streamed.load(std::sync::atomic::Ordering::Relaxed) {
            let _ = tokens.send(answer.text.clone());
        }
        Ok((answer, usage))
    }

    async fn standalone(
        &self,
        history: &[(String, String)],
        question: &str,
    ) -> Result<(String, Usage), ModelError> {
        if history.is_empty() {
            return Ok((question.to_string(), Usage::default()));
        }
        self.cached(
            "rewrite",
            &(history, question),
            self.inner.standalone(history, question),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::ports::StoreError;

    #[derive(Default)]
    struct MemoryCache(Mutex<HashMap<String, Vec<u8>>>);

    #[async_trait]
    impl Cache for MemoryCache {
        async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
            Ok(self.0.lock().unwrap().get(key).cloned())
        }
        async fn put(&self, key: &str, value: &[u8], _: Option<i64>) -> Result<(), StoreError> {
            self.0.lock().unwrap().insert(key.into(), value.to_vec());
            Ok(())
        }
    }

    #[derive(Default)]
    struct Counting(AtomicUsize);

    #[async_trait]
    impl ChatModel for Counting {
        fn name(&self) -> &str {
            "test/model"
        }
        async fn suggest(&self, _: &TagInput) -> Result<(Suggestion, Usage), ModelError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok((Suggestion::default(), Usage::default()))
        }
        async fn answer(&self, _: &AnswerInput) -> Result<(Answer, Usage), ModelError> {
            unreachable!()
        }
        async fn standalone(
            &self,
            _: &[(String, String)],
            q: &str,
        ) -> Result<(String, Usage), ModelError> {
            Ok((q.into(), Usage::default()))
        }
    }

    fn settings(pairs: &[(&str, &str)]) -> crate::config::Settings {
        crate::config::Settings::from_map(
            &pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn the_prompt_cache_key_covers_what_shapes_the_reply_and_not_the_date() {
        let inner = Arc::new(Counting::default());
        let cache: Arc<dyn Cache> = Arc::new(MemoryCache::default());
        let model = |pairs: &[(&str, &str)]| {
            CachedModel::new(inner.clone(), cache.clone(), 3600)
                .with_reply_shape(reply_shape(&settings(pairs)))
        };
        let input = |today: &str| TagInput {
            current_title: "scan".into(),
            content: "Rechnung".into(),
            fields: vec![crate::domain::Field::Title],
            tags: vec![],
            correspondents: vec![],
            document_types: vec![],
            custom_fields: vec![],
            storage_paths: vec![],
            restrict_tags: false,
            restrict_correspondents: false,
            restrict_document_types: false,
            taxonomy: Default::default(),
            today: today.into(),
        };
        model(&[]).suggest(&input("2026-12-01")).await.unwrap();
        model(&[]).suggest(&input("2026-12-02")).await.unwrap();
        assert_eq!(inner.0.load(Ordering::SeqCst), 1, "the next day is a hit");
        model(&[("SYSTEM_PROMPT", "Be terse.")])
            .suggest(&input("2026-12-02"))
            .await
            .unwrap();
        assert_eq!(
            inner.0.load(Ordering::SeqCst),
            2,
            "a new SYSTEM_PROMPT is a miss"
        );
        model(&[("MAX_OUTPUT_TOKENS", "100")])
            .suggest(&input("2026-12-02"))
            .await
            .unwrap();
        assert_eq!(
            inner.0.load(Ordering::SeqCst),
            3,
            "a new output cap is a miss"
        );
        model(&[("LLM_API_KEY", "sk-another-key")])
            .suggest(&input("2026-12-02"))
            .await
            .unwrap();
        assert_eq!(
            inner.0.load(Ordering::SeqCst),
            3,
            "a new key answers the same"
        );
    }
}
