//! A small stand-in for the Lambda Runtime API (and for the one SSM call a cold start makes),
//! on loopback: enough to start a function binary as Lambda would and see when its init phase
//! ends, i.e. when it first asks for an event. The bench measures cold starts with it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// Every secret the functions read, with values that pass the settings' checks.
const SECRETS: &[(&str, &str)] = &[
    ("PAPERLESS_TOKEN", "emulated-paperless-token"),
    ("WEBHOOK_SECRET", "emulated-webhook-secret-0123"),
    ("API_KEYS", "emulated-api-key-0123456789"),
    ("LLM_API_KEY", "emulated-llm-key"),
    ("EMBEDDING_API_KEY", "emulated-embedding-key"),
];

pub struct RuntimeApi {
    pub addr: SocketAddr,
    next: mpsc::UnboundedReceiver<Instant>,
    init_errors: Arc<Mutex<Vec<String>>>,
    server: tokio::task::JoinHandle<()>,
}

impl RuntimeApi {
    pub async fn start() -> RuntimeApi {
        let (tx, next) = mpsc::unbounded_channel();
        let init_errors = Arc::new(Mutex::new(Vec::new()));
        let errors = init_errors.clone();
        let app = Router::new()
            .route(
                "/2018-06-01/runtime/invocation/next",
                get(move || {
                    let _ = tx.send(Instant::now());
                    async {
                        // Long poll with no event: the caller stops the function now.
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        StatusCode::NO_CONTENT
                    }
                }),
            )
            .route(
                "/2018-06-01/runtime/init/error",
                post(move |body: Bytes| {
                    errors
                        .lock()
                        .expect("errors")
                        .push(String::from_utf8_lossy(&body).into_owned());
                    async { StatusCode::ACCEPTED }
                }),
            )
            .route("/", post(ssm_get_parameters));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("address");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        RuntimeApi {
            addr,
            next,
            init_errors,
            server,
        }
    }

    /// When the function next asked for an event, or `None` after `timeout`.
    pub async fn wait_next(&mut self, timeout: Duration) -> Option<Instant> {
        tokio::time::timeout(timeout, self.next.recv())
            .await
            .ok()
            .flatten()
    }

    /// Init errors the function reported.
    pub fn init_errors(&self) -> Vec<String> {
        self.init_errors.lock().expect("errors").clone()
    }

    /// The environment Lambda gives a function, pointing it (and its AWS clients) here.
    pub fn lambda_env(&self, function: &str) -> Vec<(String, String)> {
        let here = format!("http://{}", self.addr);
        [
            ("AWS_LAMBDA_RUNTIME_API", self.addr.to_string()),
            ("AWS_LAMBDA_FUNCTION_NAME", format!("pai-{function}")),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512".into()),
            ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".into()),
            ("AWS_LAMBDA_LOG_FORMAT", "JSON".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "emulated".into()),
            ("AWS_SECRET_ACCESS_KEY", "emulated".into()),
            ("AWS_ENDPOINT_URL", here),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

impl Drop for RuntimeApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// SSM `GetParameters` (JSON 1.1 protocol): every requested name exists.
async fn ssm_get_parameters(
    body: Bytes,
) -> (StatusCode, [(&'static str, &'static str); 1], String) {
    let request: Value = serde_json::from_slice(&body).unwrap_or_default();
    let parameters: Vec<Value> = request["Names"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter_map(|full| {
            let short = full.rsplit('/').next()?;
            let value = SECRETS.iter().find(|(k, _)| *k == short)?.1;
            Some(json!({"Name": full, "Type": "SecureString", "Value": value, "Version": 1}))
        })
        .collect();
    (
        StatusCode::OK,
        [("content-type", "application/x-amz-json-1.1")],
        json!({"Parameters": parameters, "InvalidParameters": []}).to_string(),
    )
}
