//! A fake OpenAI-compatible model server: chat completions answered from a script (content,
//! an HTTP error with optional `Retry-After`, or a delay) or by a default function of the
//! request, and embeddings that are deterministic bags of hashed words (similar texts get
//! similar vectors). Every request body is recorded for assertions on its shape.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

struct Script {
    replies: VecDeque<Reply>,
    default: DefaultReply,
    chats: Vec<Value>,
    embeddings: Vec<Value>,
    latency: Duration,
    /// An outage: every chat and embedding request answers 503 (recorded, as a server
    /// behind a load balancer would be reached).
    down: bool,
}

#[derive(Clone)]
struct Ctx {
    key: Option<String>,
    script: Arc<Mutex<Script>>,
}

pub struct FakeOpenAi {
    url: String,
    script: Arc<Mutex<Script>>,
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
        }));
        let ctx = Ctx {
            key: key.map(str::to_string),
            script: script.clone(),
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
    let (next, default, latency) = {
        let mut s = ctx.script.lock().unwrap();
        if s.down {
            return outage();
        }
        (s.replies.pop_front(), s.default.clone(), s.latency)
    };
    tokio::time::sleep(latency).await;
    match next {
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
    }
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
        s.latency
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
    axum::Json(json!({"object": "list", "data": data, "model": request["model"], "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})).into_response()
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
