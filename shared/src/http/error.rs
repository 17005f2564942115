//! API errors: JSON `{"error": {"code", "message"}}` with the right status. Internal details
//! are logged, never returned; messages never carry secrets.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::pipeline::PipelineError;
#[cfg(feature = "chat")]
use crate::pipeline::chat::ChatError;
use crate::pipeline::ingest::IngestError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds, sent as `Retry-After` (429, 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn retry_after(mut self, seconds: u64) -> ApiError {
        self.retry_after = Some(seconds);
        self
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn internal(detail: impl std::fmt::Display) -> ApiError {
        tracing::error!(%detail, "internal error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    }
}

impl From<PipelineError> for ApiError {
    fn from(e: PipelineError) -> Self {
        match e {
            PipelineError::Retry(m) => {
                tracing::warn!(error = %m, "upstream unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "a backing service is unavailable; try again",
                )
            }
            PipelineError::Deferred { reason, .. } => {
                tracing::warn!(error = %reason, "upstream refused by its circuit breaker");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "a backing service is unavailable; try again",
                )
            }
            PipelineError::Fail(m) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "failed", m),
        }
    }
}

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::BadRequest(m) => ApiError::bad_request(m),
            IngestError::TooLarge(m) => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", m)
            }
            IngestError::Unsupported(m) => {
                ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported", m)
            }
            IngestError::NotFound(m) => ApiError::not_found(m),
            IngestError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            IngestError::Pipeline(p) => p.into(),
        }
    }
}

impl From<crate::pipeline::tag::ReviewError> for ApiError {
    fn from(e: crate::pipeline::tag::ReviewError) -> Self {
        use crate::pipeline::tag::ReviewError;
        match e {
            ReviewError::NotFound(doc) => {
                ApiError::not_found(format!("no suggestion for document {doc}"))
            }
            ReviewError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            ReviewError::Pipeline(p) => p.into(),
        }
    }
}

#[cfg(feature = "chat")]
impl From<ChatError> for ApiError {
    fn from(e: ChatError) -> Self {
        match e {
            ChatError::BadRequest(m) => ApiError::bad_request(m),
            ChatError::UnknownSession(id) => ApiError::not_found(format!("no session {id}")),
            ChatError::Pipeline(p) => p.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = axum::Json(json!({"error": {"code": self.code, "message": self.message}}));
        let mut response = (self.status, body).into_response();
        if let Some(s) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, s.into());
        }
        response
    }
}
