//! The HTTP API of DESIGN §5 as one axum `Router`: `pai serve` serves it with `axum::serve`, the
//! ingest and chat Lambdas with `lambda_http`, so routes, auth and errors are the same code.
//! Handlers only translate: parse, call a use case, map the result or error to a response.

mod error;
pub mod job_list;
pub mod limits;
pub mod review;
pub mod status;
mod ui;

#[cfg(feature = "chat")]
use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
#[cfg(feature = "chat")]
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;
use serde_json::{Value, json};

pub use error::ApiError;

use crate::auth::{ApiKeys, constant_time_eq};
use crate::config::{Keyless, Secret};
use crate::domain::{DocId, JobOrigin};
#[cfg(feature = "chat")]
use crate::pipeline::chat::{ChatRequest, Viewer, ask_as, validate};
use crate::pipeline::ingest::{self, MAX_WEBHOOK_BYTES};
use crate::pipeline::tag::{self, SuggestionRecord, suggestion_key};
use crate::pipeline::{Blobs, Core, Models, Queues, Services, Writer, load_job};

/// How long an upload URL stays valid.
pub const UPLOAD_TTL_SECS: i64 = 3600;
const MAX_JSON_BYTES: usize = 64 * 1024;

/// Renders the metrics page (installed by the process that owns the recorder).
pub type MetricsRender = Arc<dyn Fn() -> String + Send + Sync>;

/// What every route's handler gets: the services (of `pai` or the function serving the route:
/// the chat function's have no bucket and no queue), keys, and the shared limits.
#[derive(Clone)]
pub struct ApiState<B = Blobs, Q = Queues, W = Writer> {
    pub svc: Services<B, Q, Models, W>,
    pub api_keys: ApiKeys,
    pub webhook_secret: Option<Secret>,
    /// Base URL of this server as clients reach it (for upload links).
    pub public_url: String,
    pub metrics: Option<MetricsRender>,
    pub rate_limiter: Arc<limits::RateLimiter>,
}

impl<B, Q, W> ApiState<B, Q, W> {
    pub fn new(
        svc: Services<B, Q, Models, W>,
        public_url: String,
        metrics: Option<MetricsRender>,
    ) -> Self {
        let api_keys = ApiKeys::new(svc.settings.api_keys.iter().map(Secret::expose));
        let webhook_secret = svc.settings.webhook_secret.clone();
        let per_minute = svc.settings.chat_requests_per_minute;
        ApiState {
            svc,
            api_keys,
            webhook_secret,
            public_url: public_url.trim_end_matches('/').to_string(),
            metrics,
            rate_limiter: Arc::new(limits::RateLimiter::new(per_minute)),
        }
    }
}

pub fn router(state: ApiState) -> Router {
    // A new route needs its HttpApi event in template.yaml too (tests/tests/template.rs).
    // Every route is behind the API key (`require_key`, a layer: no handler can forget it)
    // unless it is in `public` on purpose, with its own check or no data.
    let protected = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/documents", post(create_upload))
        .route("/jobs/{job_id}", get(job))
        .route("/jobs/{job_id}/retry", post(retry_job))
        .route("/jobs/retry-failed", post(retry_failed))
        .route("/documents/{doc_id}/suggestions", get(suggestions))
        .route("/documents/{doc_id}/suggestions/approve", post(approve))
        .route("/documents/{doc_id}/approve", post(approve))
        .route("/documents/{doc_id}/suggestions/undo", post(undo))
        .route("/documents/{doc_id}/undo", post(undo))
        .route("/documents/{doc_id}/retag", post(retag))
        .merge(ui::page_data())
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_key::<Blobs, Queues, Writer>,
        ));
    let public = Router::new()
        .route("/health", get(health))
        // Its own secret (Paperless sends no API key).
        .route("/webhooks/paperless", post(webhook))
        // Its job's upload token.
        .route("/uploads/{job_id}", put(receive_upload))
        .merge(ui::pages());
    // Without the chat use case (the ingest function: API Gateway sends chat to the chat
    // function's URL) there is no `/chat` here. Chat takes an API key or a Paperless user's
    // token (`chat_viewer`).
    #[cfg(feature = "chat")]
    let public = public.route("/chat", post(chat::<Blobs, Queues, Writer>));
    public
        .merge(protected)
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}

/// The API key check of every protected route, before its handler runs.
async fn require_key<B, Q, W>(
    State(state): State<ApiState<B, Q, W>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Result<Response, ApiError> {
    authorize(&state, request.headers())?;
    Ok(next.run(request).await)
}

/// Only `POST /chat` and `/health`: what the chat Lambda's public function URL serves (the
/// other routes belong to the ingest function, whose resources and secrets chat does not have).
#[cfg(feature = "chat")]
pub fn chat_router<B, Q, W>(state: ApiState<B, Q, W>) -> Router
where
    B: Clone + Send + Sync + 'static,
    Q: Clone + Send + Sync + 'static,
    W: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/health", get(health))
        .route("/chat", post(chat::<B, Q, W>))
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}

/// Checks `Authorization: Bearer <key>`; returns who is calling (a key's id). Without
/// configured keys it answers only where that was chosen (`pai` on loopback, IAM auth on the
/// chat function URL): anything else fails closed.
fn authorize<B, Q, W>(state: &ApiState<B, Q, W>, headers: &HeaderMap) -> Result<String, ApiError> {
    if state.api_keys.is_empty() {
        return match state.svc.settings.keyless {
            Keyless::Loopback => Ok("local".into()),
            Keyless::Iam => Ok("iam".into()),
            Keyless::Refused => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "no API keys are configured on this server",
            )),
        };
    }
    let key = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match key {
        Some(k) if state.api_keys.accepts(k) => Ok(ApiKeys::id(k)),
        Some(_) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "API key not accepted",
        )),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send Authorization: Bearer <api key>",
        )),
    }
}

/// Reads a body up to `limit` bytes, answering 413 beyond.
async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("body over {limit} bytes"),
        )
    })
}

fn parse_json<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

async fn health() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

async fn metrics_page(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let render = state
        .metrics
        .as_ref()
        .ok_or_else(|| ApiError::not_found("metrics are not exported here"))?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        render(),
    )
        .into_response())
}

async fn webhook(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Some(secret) = &state.webhook_secret else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_configured",
            "the webhook needs PAPERLESS_URL and WEBHOOK_SECRET to be configured",
        ));
    };
    let given = headers
        .get("x-webhook-secret")
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if !constant_time_eq(given, secret.expose().as_bytes()) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong X-Webhook-Secret",
        ));
    }
    let bytes = read_body(body, MAX_WEBHOOK_BYTES).await?;
    let doc_id = ingest::parse_webhook(&bytes)?;
    let job = ingest::paperless_document(&state.svc, doc_id, JobOrigin::Webhook).await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({"job_id": job.id, "doc_id": doc_id.to_string()})),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UploadRequest {
    filename: String,
    content_type: String,
    #[serde(default)]
    size: Option<u64>,
}

async fn create_upload(State(state): State<ApiState>, body: Body) -> Result<Response, ApiError> {
    let req: UploadRequest = parse_json(&read_body(body, MAX_JSON_BYTES).await?)?;
    let job = ingest::create_upload(&state.svc, &req.filename, &req.content_type, req.size).await?;
    // A store that takes uploads directly (S3: a presigned PUT) gets them without passing
    // through this server; otherwise the client PUTs to our own upload route, with the job's
    // secret in a header (a query string would end up in proxy logs).
    let key = ingest::upload_key(&job.id, job.filename.as_deref().unwrap_or_default());
    let direct = match job.upload_size {
        Some(size) => state
            .svc
            .blobs
            .upload_url(
                &key,
                job.content_type.as_deref().unwrap_or("text/plain"),
                size,
                std::time::Duration::from_secs(UPLOAD_TTL_SECS as u64),
            )
            .await
            .map_err(|e| ApiError::from(crate::pipeline::PipelineError::from(e)))?,
        None => None,
    };
    let (upload_url, upload_headers) = match direct {
        Some(target) => (target.url, target.headers),
        None => (
            format!("{}/uploads/{}", state.public_url, job.id),
            [(
                UPLOAD_TOKEN_HEADER.to_string(),
                job.upload_token.clone().unwrap_or_default(),
            )]
            .into(),
        ),
    };
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({
            "job_id": job.id,
            "upload_url": upload_url,
            "upload_headers": upload_headers,
            "expires_in": UPLOAD_TTL_SECS,
        })),
    )
        .into_response())
}

/// The header carrying a local upload's secret.
pub const UPLOAD_TOKEN_HEADER: &str = "x-upload-token";

async fn receive_upload(
    State(state): State<ApiState>,
    Path(job_id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let token = headers
        .get(UPLOAD_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if let Some(job) = load_job(state.svc.state.as_ref(), &job_id)
        .await
        .map_err(ApiError::from)?
        && job.doc_id.is_none()
        && crate::pipeline::now() > job.created_at + UPLOAD_TTL_SECS
    {
        return Err(ApiError::new(
            StatusCode::GONE,
            "expired",
            "the upload URL has expired: create a new upload",
        ));
    }
    let bytes = read_body(body, state.svc.settings.max_upload_bytes).await?;
    let job = ingest::receive_upload(&state.svc, &job_id, token, &bytes).await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({"job_id": job.id, "doc_id": job.doc_id})),
    )
        .into_response())
}

/// A job as `GET /jobs/{id}` shows it: status, stages, counts; never the upload secret.
pub async fn job_view(svc: &Core, job_id: &str) -> Result<Option<Value>, ApiError> {
    let Some(job) = load_job(svc.state.as_ref(), job_id).await? else {
        return Ok(None);
    };
    let counters = svc
        .state
        .counters(&crate::pipeline::job_key(job_id))
        .await
        .map_err(crate::pipeline::PipelineError::from)?;
    let mut v = serde_json::to_value(&job).expect("job serialises");
    let obj = v.as_object_mut().expect("object");
    obj.remove("upload_token");
    obj.insert("status".into(), json!(job.status()));
    obj.insert(
        "chunks_embedded".into(),
        json!(counters.get("chunks_embedded").copied().unwrap_or(0)),
    );
    // Tokens and dollars its model calls took, over every attempt.
    obj.insert("usage".into(), json!(crate::pipeline::job_usage(&counters)));
    // The link a user opens (PAPERLESS_PUBLIC_URL when set).
    if let (Some(id), Some(p)) = (
        job.doc_id.as_ref().and_then(DocId::paperless_id),
        &svc.paperless,
    ) {
        obj.insert("document_url".into(), json!(p.document_url(id)));
    }
    Ok(Some(v))
}

async fn job(
    State(state): State<ApiState>,
    Path(job_id): Path<String>,
) -> Result<Response, ApiError> {
    match job_view(&state.svc, &job_id).await? {
        Some(v) => Ok(axum::Json(v).into_response()),
        None => Err(ApiError::not_found(format!("no job {job_id}"))),
    }
}

/// `POST /jobs/{id}/retry`: runs a failed (or dead-lettered) job again; `202` with the job.
async fn retry_job(
    State(state): State<ApiState>,
    Path(job_id): Path<String>,
) -> Result<Response, ApiError> {
    use crate::pipeline::healing::RetryError;
    match crate::pipeline::healing::retry_job(&state.svc, &job_id).await {
        Ok(_) => {
            let view = job_view(&state.svc, &job_id).await?.unwrap_or(Value::Null);
            Ok((StatusCode::ACCEPTED, axum::Json(view)).into_response())
        }
        Err(RetryError::NotFound(id)) => Err(ApiError::not_found(format!("no job {id}"))),
        Err(RetryError::Conflict(m)) => Err(ApiError::new(StatusCode::CONFLICT, "conflict", m)),
        Err(RetryError::Pipeline(e)) => Err(e.into()),
    }
}

/// `POST /jobs/retry-failed`: runs every failed job again; `202 {"retried": [job ids]}`.
async fn retry_failed(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let retried = crate::pipeline::healing::retry_failed(&state.svc).await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({"retried": retried, "count": retried.len()})),
    )
        .into_response())
}

async fn suggestions(
    State(state): State<ApiState>,
    Path(doc_id): Path<String>,
) -> Result<Response, ApiError> {
    let doc: DocId = doc_id.parse().map_err(ApiError::bad_request)?;
    let record = state
        .svc
        .state
        .get(&suggestion_key(&doc))
        .await
        .map_err(crate::pipeline::PipelineError::from)?;
    let Some(record) = record else {
        return Err(ApiError::not_found(format!(
            "no suggestion for document {doc}"
        )));
    };
    let record: SuggestionRecord = serde_json::from_value(record.value)
        .map_err(|e| ApiError::internal(format!("corrupt suggestion: {e}")))?;
    Ok(axum::Json(record).into_response())
}

/// `POST /documents/{id}/suggestions/approve`: applies the stored suggestion, with edits.
async fn approve(
    State(state): State<ApiState>,
    Path(doc_id): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let doc: DocId = doc_id.parse().map_err(ApiError::bad_request)?;
    let bytes = read_body(body, MAX_JSON_BYTES).await?;
    let edits: tag::Edits = if bytes.iter().all(u8::is_ascii_whitespace) {
        tag::Edits::default()
    } else {
        parse_json(&bytes)?
    };
    Ok(axum::Json(tag::approve(&state.svc, &state.svc.writer, &doc, edits).await?).into_response())
}

/// `POST /documents/{id}/suggestions/undo`: restores what the applied suggestion replaced.
async fn undo(
    State(state): State<ApiState>,
    Path(doc_id): Path<String>,
) -> Result<Response, ApiError> {
    let doc: DocId = doc_id.parse().map_err(ApiError::bad_request)?;
    Ok(axum::Json(tag::undo(&state.svc, &state.svc.writer, &doc).await?).into_response())
}

/// `POST /documents/{id}/retag`: tags the document again whatever the loop guard says.
async fn retag(
    State(state): State<ApiState>,
    Path(doc_id): Path<String>,
) -> Result<Response, ApiError> {
    let doc: DocId = doc_id.parse().map_err(ApiError::bad_request)?;
    if doc.paperless_id().is_none() {
        return Err(ApiError::bad_request(format!(
            "document {doc} is an upload, not a Paperless document: upload it again to re-tag it"
        )));
    }
    let job = tag::retag(&state.svc, &doc).await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({"job_id": job.id, "doc_id": doc.to_string()})),
    )
        .into_response())
}

/// Who asks: a Paperless user by their own token (`Authorization: Token …`, as Paperless's
/// API takes it), checked with Paperless; otherwise an API key, as for every route.
#[cfg(feature = "chat")]
async fn chat_viewer<B, Q, W>(
    state: &ApiState<B, Q, W>,
    headers: &HeaderMap,
) -> Result<Viewer, ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Token "))
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let Some(token) = token else {
        return Ok(Viewer::Service {
            caller: authorize(state, headers)?,
        });
    };
    let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m);
    let paperless = state
        .svc
        .paperless
        .as_ref()
        .and_then(|p| p.for_user(Secret::new(token)))
        .ok_or_else(|| unauthorized("chat with a Paperless token needs PAPERLESS_URL"))?;
    match paperless.token_user().await {
        Ok(user) => Ok(Viewer::User { user, paperless }),
        Err(crate::ports::PaperlessError::Forbidden(_)) => {
            Err(unauthorized("Paperless did not accept this token"))
        }
        Err(e) => Err(crate::pipeline::PipelineError::from(e).into()),
    }
}

#[cfg(feature = "chat")]
async fn chat<B, Q, W>(
    State(state): State<ApiState<B, Q, W>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError>
where
    B: Clone + Send + Sync + 'static,
    Q: Clone + Send + Sync + 'static,
    W: Clone + Send + Sync + 'static,
{
    let viewer = chat_viewer(&state, &headers).await?;
    let caller = viewer.caller();
    let req: ChatRequest = parse_json(&read_body(body, MAX_JSON_BYTES).await?)?;
    validate(&req)?;
    if let Err(wait) = state.rate_limiter.check(&caller) {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many chat requests: retry in {wait} s"),
        )
        .retry_after(wait));
    }
    let cap = state.svc.settings.chat_daily_tokens;
    let used = limits::tokens_today(state.svc.state.as_ref(), &caller)
        .await
        .map_err(crate::pipeline::PipelineError::from)?;
    if used >= cap as i64 {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "token_cap",
            format!("the daily chat budget of {cap} model tokens is used up"),
        )
        .retry_after(3600));
    }
    let wants_stream = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/event-stream"));
    if !wants_stream {
        let reply = ask_as(&state.svc, &req, None, &viewer).await?;
        let _ = limits::add_tokens(
            state.svc.state.as_ref(),
            &caller,
            reply.usage.input_tokens + reply.usage.output_tokens,
        )
        .await;
        return Ok(axum::Json(reply).into_response());
    }
    // Token events as the model writes, then one final event with the citations (or an
    // error event: the status line has gone out already).
    let (sink, tokens) = tokio::sync::mpsc::unbounded_channel::<String>();
    let svc = state.svc.clone();
    let answering = tokio::spawn(async move {
        let reply = ask_as(&svc, &req, Some(&sink), &viewer).await;
        if let Ok(r) = &reply {
            let _ = limits::add_tokens(
                svc.state.as_ref(),
                &caller,
                r.usage.input_tokens + r.usage.output_tokens,
            )
            .await;
        }
        reply
    });
    // Streamed text is made plain as it goes (no links or images), like the final answer.
    let plain = crate::text::PlainAnswerStream::default();
    let events = futures::stream::unfold(
        (tokens, plain, Some(answering)),
        |(mut tokens, mut plain, answering)| async move {
            let answering = answering?;
            while let Some(piece) = tokens.recv().await {
                let shown = plain.push(&piece);
                if !shown.is_empty() {
                    return Some((
                        Ok::<Event, Infallible>(Event::default().event("token").data(shown)),
                        (tokens, plain, Some(answering)),
                    ));
                }
            }
            let rest = plain.finish();
            if !rest.is_empty() {
                return Some((
                    Ok(Event::default().event("token").data(rest)),
                    (tokens, plain, Some(answering)),
                ));
            }
            let answering = Some(answering);
            let event = match answering?.await {
            Ok(Ok(r)) => Event::default().event("done").data(json!({"citations": r.citations, "session_id": r.session_id, "provider": r.provider, "answered": r.answered, "usage": r.usage}).to_string()),
            Ok(Err(e)) => {
                let e = ApiError::from(e);
                Event::default().event("error").data(json!({"error": {"code": e.code, "message": e.message}}).to_string())
            }
            Err(_) => Event::default().event("error").data(json!({"error": {"code": "internal", "message": "internal error"}}).to_string()),
        };
            Some((Ok(event), (tokens, plain, None)))
        },
    );
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}
