//! The web UI: Review, Jobs, Chat and Status pages at `/`, plain HTML/CSS/ES modules compiled
//! into the binary (no Node.js to build, nothing fetched from the internet at run time). The
//! pages are public files; everything they show comes from the API with the user's key, so
//! the same router serves them from `pai serve` and from the ingest Lambda.
//!
//! Also registers the read routes the pages need (`GET /jobs`, `GET /review`, `GET /status`,
//! `GET /status/checks`), kept here so `http/mod.rs` gains one line.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::{ApiError, ApiState, job_list, review, status};

/// The page shell; `{{CHAT_URL}}` becomes where chat is served (empty: this origin),
/// `{{AUTH}}` whether the API needs a key (`key`) or not (`none`).
const INDEX: &str = include_str!("../../ui/index.html");

/// Every asset under `/ui/`, with its content type.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/app.js"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/api.js"),
    ),
    (
        "review.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/review.js"),
    ),
    (
        "jobs.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/jobs.js"),
    ),
    (
        "chat.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/chat.js"),
    ),
    (
        "status.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/status.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../../ui/style.css"),
    ),
    (
        "icon.svg",
        "image/svg+xml",
        include_str!("../../ui/icon.svg"),
    ),
];

/// The pages and their files: public (they hold no data; their scripts call the API with a key).
pub(super) fn pages() -> Router<ApiState> {
    Router::new()
        .route("/", get(index))
        .route("/ui/{file}", get(asset))
}

/// What the pages' scripts read: behind the API key like every API route.
pub(super) fn page_data() -> Router<ApiState> {
    Router::new()
        .route("/jobs", get(job_list::jobs))
        .route("/review", get(review::review))
        .route("/status", get(status::status))
        .route("/status/checks", get(status::checks))
}

/// Only what the pages need: their own files, the API of this origin and, on AWS, the chat
/// function URL; no inline script, no framing.
fn content_security_policy(chat_url: &str) -> String {
    let chat_origin = origin(chat_url).unwrap_or_default();
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self' {chat_origin}; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    )
}

/// `https://host[:port]` of a URL.
fn origin(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let host = rest.split(['/', '?', '#']).next()?;
    (!host.is_empty() && matches!(scheme, "http" | "https")).then(|| format!("{scheme}://{host}"))
}

fn escape_attr(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

async fn index(State(state): State<ApiState>) -> Response {
    let chat_url = state.svc.settings.chat_url.clone().unwrap_or_default();
    // Whether to ask for a key before the first call (no request fails just to find out).
    let auth = if state.api_keys.is_empty() {
        "none"
    } else {
        "key"
    };
    let body = INDEX
        .replace("{{CHAT_URL}}", &escape_attr(&chat_url))
        .replace("{{AUTH}}", auth);
    let mut response = ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response();
    let headers = response.headers_mut();
    if let Ok(csp) = HeaderValue::from_str(&content_security_policy(&chat_url)) {
        headers.insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

async fn asset(Path(file): Path<String>) -> Result<Response, ApiError> {
    let Some((_, content_type, body)) = ASSETS.iter().find(|(name, _, _)| *name == file) else {
        return Err(ApiError::not_found(format!("no UI file {file:?}")));
    };
    Ok((
        [
            (header::CONTENT_TYPE, *content_type),
            // Assets change with the binary: revalidate rather than cache stale code.
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        *body,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_allows_only_this_origin_and_the_chat_url() {
        assert_eq!(
            origin("https://abc.lambda-url.eu-west-1.on.aws/chat").as_deref(),
            Some("https://abc.lambda-url.eu-west-1.on.aws")
        );
        assert_eq!(origin("javascript:alert(1)"), None);
        let csp = content_security_policy("https://abc.lambda-url.eu-west-1.on.aws/");
        assert!(csp.contains("connect-src 'self' https://abc.lambda-url.eu-west-1.on.aws;"));
        assert!(content_security_policy("").contains("connect-src 'self' ;"));
    }

    #[test]
    fn every_asset_the_pages_import_is_served() {
        // A module or stylesheet named in the pages but missing here would 404 in the browser.
        let mut sources = vec![INDEX];
        sources.extend(ASSETS.iter().map(|(_, _, body)| *body));
        for src in sources {
            for part in src.split("/ui/").skip(1) {
                let name: String = part
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '-')
                    .collect();
                assert!(
                    ASSETS.iter().any(|(n, _, _)| *n == name),
                    "/ui/{name} is referenced but not served"
                );
            }
        }
    }
}
