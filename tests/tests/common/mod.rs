//! The end-to-end harness: the embedded application built exactly as `pai serve` builds it,
//! its HTTP API on a free loopback port, wired to a fake Paperless-ngx and a fake
//! OpenAI-compatible server. Workers run on demand (`drain`) or in the background.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use pai_tests::fake_openai::FakeOpenAi;
use pai_tests::fake_paperless::FakePaperless;
use serde_json::{Value, json};
use shared::config::Settings;
use shared::domain::Stage;
use shared::embedded::LocalApp;
use shared::http::{ApiState, router};
use shared::ports::QueueConsumer;
use tokio::sync::watch;

pub const TOKEN: &str = "paperless-test-token";
pub const SECRET: &str = "webhook-secret-0123456789";
pub const API_KEY: &str = "api-key-0123456789abcdef";
pub const MODEL_KEY: &str = "sk-test-model-key";

pub struct Pai {
    pub app: LocalApp,
    pub base: String,
    pub http: reqwest::Client,
    pub paperless: Arc<FakePaperless>,
    pub model: FakeOpenAi,
    pub dir: tempfile::TempDir,
    stop: watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

/// A reply of the fake model: a tagging JSON when a schema was sent, else a cited answer.
pub fn scripted_model(request: &Value) -> String {
    let system = request["messages"][0]["content"].as_str().unwrap_or("");
    if system.starts_with("Rewrite") {
        return "How much did the boiler repair cost?".to_string();
    }
    if request.get("response_format").is_some() {
        json!({
            "title": "Invoice for boiler repair",
            "tags": ["Invoice", "Plumbing"],
            "correspondent": "Berger Haustechnik GmbH",
            "document_type": "Invoice",
            "created": "2025-03-14"
        })
        .to_string()
    } else {
        "The boiler repair cost EUR 1,250.00 [1].".to_string()
    }
}

impl Pai {
    pub async fn start(extra: &[(&str, &str)]) -> Pai {
        Self::start_with(extra, None).await
    }

    /// Like `start`, against an existing fake Paperless (a second install of the same user).
    pub async fn start_with(extra: &[(&str, &str)], paperless: Option<Arc<FakePaperless>>) -> Pai {
        Self::start_full(extra, paperless, None).await
    }

    /// Like `start`, with the queues on a test clock (milliseconds) that the test moves.
    pub async fn start_clocked(
        extra: &[(&str, &str)],
        clock: shared::adapters::local::Clock,
    ) -> Pai {
        Self::start_full(extra, None, Some(clock)).await
    }

    async fn start_full(
        extra: &[(&str, &str)],
        paperless: Option<Arc<FakePaperless>>,
        clock: Option<shared::adapters::local::Clock>,
    ) -> Pai {
        let paperless = match paperless {
            Some(p) => p,
            None => Arc::new(FakePaperless::start(TOKEN).await),
        };
        let model = FakeOpenAi::start(Some(MODEL_KEY)).await;
        model.set_default(scripted_model);
        let dir = tempfile::tempdir().unwrap();
        let mut vars: HashMap<String, String> = [
            ("DATA_DIR", dir.path().display().to_string()),
            ("PAPERLESS_URL", paperless.url()),
            ("PAPERLESS_TOKEN", TOKEN.into()),
            ("WEBHOOK_SECRET", SECRET.into()),
            ("API_KEYS", API_KEY.into()),
            ("LLM_PROVIDER", "openai".into()),
            ("LLM_BASE_URL", model.url()),
            ("LLM_API_KEY", MODEL_KEY.into()),
            ("LLM_MODEL", "test-model".into()),
            ("EMBEDDING_MODEL", "test-embed".into()),
            ("EMBEDDING_DIMENSIONS", "64".into()),
            ("MAX_RECEIVES", "3".into()),
            ("MAX_UPLOAD_BYTES", "100000".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        for (k, v) in extra {
            vars.insert(k.to_string(), v.to_string());
        }
        let settings = Settings::from_map(&vars).expect("test settings");
        let app = LocalApp::build_with_clock(settings, clock).expect("app builds");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = ApiState::new(app.svc.clone(), base.clone(), None);
        let (stop, stopped) = watch::channel(false);
        let mut shutdown = stopped.clone();
        let server = tokio::spawn(async move {
            axum::serve(listener, router(state))
                .with_graceful_shutdown(async move {
                    let _ = shutdown.wait_for(|s| *s).await;
                })
                .await
                .unwrap();
        });
        Pai {
            app,
            base,
            http: reqwest::Client::new(),
            paperless,
            model,
            dir,
            stop,
            server,
            workers: Vec::new(),
        }
    }

    /// Runs the workers in the background (as `pai serve` does).
    pub fn start_workers(&mut self) {
        let (_, rx) = (0, self.stop.subscribe());
        self.workers = self.app.start_workers(rx);
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn webhook(&self, body: &str) -> reqwest::Response {
        self.http
            .post(self.url("/webhooks/paperless"))
            .header("X-Webhook-Secret", SECRET)
            .header("Content-Type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap()
    }

    /// Sends a webhook that must be accepted and returns its job id.
    pub async fn webhook_job(&self, body: &str) -> String {
        let r = self.webhook(body).await;
        assert_eq!(r.status(), 202);
        let reply: Value = r.json().await.unwrap();
        reply["job_id"].as_str().expect("job_id").to_string()
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(self.url(path))
            .bearer_auth(API_KEY)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post_json(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(self.url(path))
            .bearer_auth(API_KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    /// Processes every queued message, as a worker would, until all queues are empty.
    /// Returns the bodies handled, per stage, so tests can deliver them again.
    pub async fn drain(&self) -> Vec<(Stage, String)> {
        let mut handled = Vec::new();
        loop {
            let mut any = false;
            for (stage, q) in [
                (Stage::Chunk, &self.app.chunk),
                (Stage::Embed, &self.app.embed),
                (Stage::Tag, &self.app.tag),
            ] {
                for d in q.receive(10, Duration::from_secs(60)).await.unwrap() {
                    any = true;
                    let result = shared::pipeline::handle(
                        &self.app.svc,
                        stage,
                        &d.body,
                        d.receive_count >= 3,
                    )
                    .await;
                    match result {
                        Err(shared::pipeline::PipelineError::Retry(_)) => {
                            q.release(&d.receipt, Duration::ZERO).await.unwrap()
                        }
                        _ => q.delete(&d.receipt).await.unwrap(),
                    }
                    handled.push((stage, d.body));
                }
            }
            if !any {
                return handled;
            }
        }
    }

    /// Polls a job until it is done or failed.
    pub async fn wait_job(&self, job_id: &str) -> Value {
        for _ in 0..1000 {
            let (_, job) = self.get_json(&format!("/jobs/{job_id}")).await;
            if matches!(job["status"].as_str(), Some("done" | "failed")) {
                return job;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("job {job_id} did not finish");
    }

    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for w in self.workers {
            let _ = w.await;
        }
        let _ = self.server.await;
    }
}
