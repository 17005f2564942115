//! A fake OpenAI-compatible model server: chat completions answered from a script (content,
//! an HTTP error with optional `Retry-After`, or a delay) or by a default function of the
//! request, and embeddings that are deterministic bags of hashed words (similar texts get
//! similar vectors). Every request body is recorded for assertions on its shape.
//!
//! Like a real provider it can be slow and limited: a latency per request, a capacity of
//! calls in flight (per model, as OpenAI limits each model on its own, or for the whole
//! server, as one local GPU) above which it answers 429 (a hosted API) or queues (Ollama with
//! one slot), and a per-window request budget announced in OpenAI's `x-ratelimit-*` headers.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

/// One scripted reply to a chat completion.
#[derive(Debug, Clone)]
pub enum Reply {
    /// `choices[0].message.content`, finish reason "stop".
    Content(String),
    /// Content cut off: finish reason "length".
    Truncated(String),
    /// An HTTP error, with an optional `Retry-After` in seconds.
    Status(u16, Option<u64>),
    /// Waits, then answers with the default.
    Delay(Duration),
    /// An HTTP error with this JSON body.
    Body(u16, String),
}

type DefaultReply = Arc<dyn Fn(&Value) -> String + Send + Sync>;

/// What the server does with a call above its capacity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Overflow {
    /// 429 at once, as a hosted API at its concurrency limit.
    Reject,
    /// Waits for a free slot, as Ollama with one parallel slot.
    Queue,
}

/// Calls in flight the server takes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Capacity {
    pub max_in_flight: usize,
    pub overflow: Overflow,
    /// Counted per model (hosted APIs) or for the whole server (one machine).
    pub per_model: bool,
}

/// A request budget per window, announced as OpenAI does in `x-ratelimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestBudget {
    pub requests: u64,
    pub window: Duration,
}

#[derive(Default)]
struct Load {
    in_flight: HashMap<String, usize>,
    slots: HashMap<String, Arc<tokio::sync::Semaphore>>,
    peak: usize,
    rejected: usize,
    window: Option<(Instant, u64)>,
}

/// What the server saw of the load.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LoadStats {
    /// Most calls in flight at once (per capacity group).
    pub peak_in_flight: usize,
    /// Calls answered 429 for capacity or budget.
    pub rejected: usize,
}

struct Script {
    replies: VecDeque<Reply>,
    default: DefaultReply,
    chats: Vec<Value>,
    embeddings: Vec<Value>,
    latency: Duration,
    /// An outage: every chat and embedding request answers 503 (recorded, as a server
    /// behind a load balancer would be reached).
    down: bool,
    embedding_latency: Option<Duration>,
    capacity: Option<Capacity>,
    budget: Option<RequestBudget>,
}

#[derive(Clone)]
struct Ctx {
    key: Option<String>,
    script: Arc<Mutex<Script>>,
    load: Arc<Mutex<Load>>,
}

/// A call's place in the server; leaving drops the count.
struct Admitted {
    load: Arc<Mutex<Load>>,
    group: String,
    _slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some(n) = self.load.lock().unwrap().in_flight.get_mut(&self.group) {
            *n -= 1;
        }
    }
}

/// Admits a call under the capacity and budget, or answers 429 as the provider would.
async fn admit(ctx: &Ctx, request: &Value) -> Result<(Admitted, Vec<(String, String)>), Response> {
    let (capacity, budget) = {
        let s = ctx.script.lock().unwrap();
        (s.capacity, s.budget)
    };
    let mut headers = Vec::new();
    if let Some(b) = budget {
        let mut load = ctx.load.lock().unwrap();
        let now = Instant::now();
        let (start, used) = match load.window {
            Some((start, used)) if now.duration_since(start) < b.window => (start, used),
            _ => (now, 0),
        };
        let reset = b.window.saturating_sub(now.duration_since(start));
        let remaining = b.requests.saturating_sub(used + 1);
        headers = vec![
            ("x-ratelimit-limit-requests".into(), b.requests.to_string()),
            (
                "x-ratelimit-reset-requests".into(),
                format!("{}ms", reset.as_millis() + 1),
            ),
        ];
        if used >= b.requests {
            load.rejected += 1;
            headers.push(("x-ratelimit-remaining-requests".into(), "0".into()));
            return Err(too_many(&headers, "Rate limit reached for requests"));
        }
        load.window = Some((start, used + 1));
        headers.push((
            "x-ratelimit-remaining-requests".into(),
            remaining.to_string(),
        ));
    }
    let group = match capacity {
        Some(c) if c.per_model => request["model"].as_str().unwrap_or("").to_string(),
        _ => String::new(),
    };
    let mut slot = None;
    if let Some(c) = capacity
        && c.overflow == Overflow::Queue
    {
        let sem = ctx
            .load
            .lock()
            .unwrap()
            .slots
            .entry(group.clone())
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(c.max_in_flight)))
            .clone();
        slot = Some(sem.acquire_owned().await.unwrap());
    }
    let mut load = ctx.load.lock().unwrap();
    let current = load.in_flight.get(&group).copied().unwrap_or(0);
    if let Some(c) = capacity
        && c.overflow == Overflow::Reject
        && current >= c.max_in_flight
    {
        load.rejected += 1;
        return Err(too_many(&headers, "Too many concurrent requests"));
    }
    load.in_flight.insert(group.clone(), current + 1);
    load.peak = load.peak.max(current + 1);
    drop(load);
    Ok((
        Admitted {
            load: ctx.load.clone(),
            group,
            _slot: slot,
        },
        headers,
    ))
}

fn too_many(headers: &[(String, String)], message: &str) -> Response {
    let mut r = (
        StatusCode::TOO_MANY_REQUESTS,
        axum::Json(json!({"error": {"message": message, "type": "requests", "code": "rate_limit_exceeded"}})),
    )
        .into_response();
    with_headers(&mut r, headers);
    r
}

fn with_headers(r: &mut Response, headers: &[(String, String)]) {
    for (k, v) in headers {
        r.headers_mut().insert(
            axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
}

pub struct FakeOpenAi {
    url: String,
    script: Arc<Mutex<Script>>,
    load: Arc<Mutex<Load>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeOpenAi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeOpenAi {
    /// Starts on a free loopback port; with `key`, requests need `Authorization: Bearer <key>`.
    pub async fn start(key: Option<&str>) -> FakeOpenAi {
        let script = Arc::new(Mutex::new(Script {
            replies: VecDeque::new(),
            default: Arc::new(|_| "{}".to_string()),
            chats: vec![],
            embeddings: vec![],
            latency: Duration::ZERO,
            down: false,
            embedding_latency: None,
            capacity: None,
            budget: None,
        }));
        let load = Arc::new(Mutex::new(Load::default()));
        let ctx = Ctx {
            key: key.map(str::to_string),
            script: script.clone(),
            load: load.clone(),
        };
        let app = Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/embeddings", post(embeddings))
            .route("/api/chat", post(ollama_chat))
            .route("/api/embed", post(ollama_embed))
            .with_state(ctx);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeOpenAi {
            url,
            script,
            load,
            server,
        }
    }

    /// Base URL without `/v1` (Ollama's native API lives at `/api`).
    pub fn base_url(&self) -> String {
        self.url.trim_end_matches("/v1").to_string()
    }

    /// Base URL including `/v1`.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    pub fn set_default(&self, f: impl Fn(&Value) -> String + Send + Sync + 'static) {
        self.script.lock().unwrap().default = Arc::new(f);
    }

    pub fn push_reply(&self, reply: Reply) {
        self.script.lock().unwrap().replies.push_back(reply);
    }

    /// Latency added to every request (chat and embeddings).
    pub fn set_latency(&self, latency: Duration) {
        self.script.lock().unwrap().latency = latency;
    }

    /// Starts (`true`) or ends an outage: 503 for every chat and embedding request meanwhile.
    pub fn set_down(&self, down: bool) {
        self.script.lock().unwrap().down = down;
    }

    /// Latency of embedding requests, apart from chat's.
    pub fn set_embedding_latency(&self, latency: Duration) {
        self.script.lock().unwrap().embedding_latency = Some(latency);
    }

    /// Calls in flight the server takes (chat and embeddings), and what it does above that.
    pub fn set_capacity(&self, capacity: Capacity) {
        self.script.lock().unwrap().capacity = Some(capacity);
    }

    /// Requests per window, announced in `x-ratelimit-*` headers and refused with 429 beyond.
    pub fn set_request_budget(&self, budget: RequestBudget) {
        self.script.lock().unwrap().budget = Some(budget);
    }

    pub fn load_stats(&self) -> LoadStats {
        let l = self.load.lock().unwrap();
        LoadStats {
            peak_in_flight: l.peak,
            rejected: l.rejected,
        }
    }

    pub fn chat_requests(&self) -> Vec<Value> {
        self.script.lock().unwrap().chats.clone()
    }

    pub fn embedding_requests(&self) -> Vec<Value> {
        self.script.lock().unwrap().embeddings.clone()
    }
}

fn authorized(ctx: &Ctx, headers: &HeaderMap) -> bool {
    match &ctx.key {
        None => true,
        Some(k) => {
            headers.get("authorization").and_then(|v| v.to_str().ok())
                == Some(&format!("Bearer {k}"))
        }
    }
}

fn unauthorized() -> Response {
    (StatusCode::UNAUTHORIZED, axum::Json(json!({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}}))).into_response()
}

/// A streamed completion (`"stream": true`): one event per word, then usage and `[DONE]`.
fn streamed(content: &str) -> Response {
    let mut body = String::new();
    for piece in content.split_inclusive(' ') {
        body.push_str(&format!(
            "data: {}\n\n",
            json!({"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]})
        ));
    }
    body.push_str(&format!(
        "data: {}\n\n",
        json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    ));
    body.push_str(&format!("data: {}\n\n", json!({"choices": [], "usage": {"prompt_tokens": 100, "completion_tokens": content.split_whitespace().count()}})));
    body.push_str("data: [DONE]\n\n");
    ([("content-type", "text/event-stream")], body).into_response()
}

fn completion(content: &str, finish: &str) -> Response {
    let tokens = |s: &str| s.split_whitespace().count() as u64;
    axum::Json(json!({
        "id": "chatcmpl-fake", "object": "chat.completion", "model": "fake",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}],
        "usage": {"prompt_tokens": 100, "completion_tokens": tokens(content), "total_tokens": 100 + tokens(content)}
    }))
    .into_response()
}

fn outage() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(json!({"error": {"message": "the model server is down"}})),
    )
        .into_response()
}

async fn chat(State(ctx): State<Ctx>, headers: HeaderMap, body: Bytes) -> Response {
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    ctx.script.lock().unwrap().chats.push(request.clone());
    if !authorized(&ctx, &headers) {
        return unauthorized();
    }
    let (_admitted, headers) = match admit(&ctx, &request).await {
        Ok(a) => a,
        Err(refused) => return refused,
    };
    let (next, default, latency) = {
        let mut s = ctx.script.lock().unwrap();
        if s.down {
            return outage();
        }
        (s.replies.pop_front(), s.default.clone(), s.latency)
    };
    tokio::time::sleep(latency).await;
    let mut response = match next {
        Some(Reply::Content(c)) => completion(&c, "stop"),
        Some(Reply::Truncated(c)) => completion(&c, "length"),
        Some(Reply::Status(code, retry_after)) => {
            let mut r = (
                StatusCode::from_u16(code).unwrap(),
                axum::Json(json!({"error": {"message": "scripted failure"}})),
            )
                .into_response();
            if let Some(s) = retry_after {
                r.headers_mut()
                    .insert("retry-after", s.to_string().parse().unwrap());
            }
            r
        }
        Some(Reply::Delay(d)) => {
            tokio::time::sleep(d).await;
            completion(&default(&request), "stop")
        }
        Some(Reply::Body(code, body)) => (
            StatusCode::from_u16(code).unwrap(),
            [("content-type", "application/json")],
            body,
        )
            .into_response(),
        None if request["stream"] == true => streamed(&default(&request)),
        None => completion(&default(&request), "stop"),
    };
    with_headers(&mut response, &headers);
    response
}

/// A bag of hashed words: deterministic, and texts sharing words point the same way.
pub fn embedding(text: &str, dims: usize) -> Vec<f32> {
    let mut v = vec![0.0f32; dims];
    for w in text
        .to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.len() > 2)
    {
        let h = w.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
        });
        v[(h % dims as u64) as usize] += 1.0;
    }
    if v.iter().all(|x| *x == 0.0) {
        v[0] = 1.0;
    }
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / n).collect()
}

async fn embeddings(State(ctx): State<Ctx>, headers: HeaderMap, body: Bytes) -> Response {
    if !authorized(&ctx, &headers) {
        return unauthorized();
    }
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let latency = {
        let mut s = ctx.script.lock().unwrap();
        s.embeddings.push(request.clone());
        if s.down {
            return outage();
        }
        s.embedding_latency.unwrap_or(s.latency)
    };
    let (_admitted, headers) = match admit(&ctx, &request).await {
        Ok(a) => a,
        Err(refused) => return refused,
    };
    tokio::time::sleep(latency).await;
    let inputs: Vec<String> = match &request["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({"error": {"message": "input is required"}})),
            )
                .into_response();
        }
    };
    let dims = request["dimensions"].as_u64().unwrap_or(64) as usize;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"object": "embedding", "index": i, "embedding": embedding(t, dims)}))
        .collect();
    let tokens: usize = inputs.iter().map(|t| t.split_whitespace().count()).sum();
    let mut response = axum::Json(json!({"object": "list", "data": data, "model": request["model"], "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})).into_response();
    with_headers(&mut response, &headers);
    response
}

/// Ollama's `/api/chat`: the same script, in Ollama's shape (NDJSON when streaming).
async fn ollama_chat(State(ctx): State<Ctx>, body: Bytes) -> Response {
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (next, default) = {
        let mut s = ctx.script.lock().unwrap();
        s.chats.push(request.clone());
        (s.replies.pop_front(), s.default.clone())
    };
    let done = |content: &str, reason: &str| json!({"model": request["model"], "message": {"role": "assistant", "content": content}, "done": true, "done_reason": reason, "prompt_eval_count": 100, "eval_count": content.split_whitespace().count()});
    let content = match next {
        Some(Reply::Content(c)) => c,
        Some(Reply::Truncated(c)) => return axum::Json(done(&c, "length")).into_response(),
        Some(Reply::Status(code, _) | Reply::Body(code, _)) => {
            return (
                StatusCode::from_u16(code).unwrap(),
                axum::Json(json!({"error": "scripted failure"})),
            )
                .into_response();
        }
        Some(Reply::Delay(d)) => {
            tokio::time::sleep(d).await;
            default(&request)
        }
        None => default(&request),
    };
    if request["stream"] == true {
        let mut lines = String::new();
        for piece in content.split_inclusive(' ') {
            lines.push_str(&format!(
                "{}\n",
                json!({"message": {"role": "assistant", "content": piece}, "done": false})
            ));
        }
        lines.push_str(&format!("{}\n", done("", "stop")));
        return ([("content-type", "application/x-ndjson")], lines).into_response();
    }
    axum::Json(done(&content, "stop")).into_response()
}

/// Ollama's `/api/embed`: a batch of inputs, 64-dimensional bag-of-words vectors.
async fn ollama_embed(State(ctx): State<Ctx>, body: Bytes) -> Response {
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    ctx.script.lock().unwrap().embeddings.push(request.clone());
    let inputs: Vec<String> = match &request["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({"error": "input is required"})),
            )
                .into_response();
        }
    };
    let embeddings: Vec<Vec<f32>> = inputs.iter().map(|t| embedding(t, 64)).collect();
    axum::Json(json!({"model": request["model"], "embeddings": embeddings, "prompt_eval_count": inputs.len() * 10})).into_response()
}
