//! The world the browser tests (tests/ui/run.mjs) run in: a fake Paperless-ngx with a small
//! archive, a fake OpenAI-compatible model, and a real `pai serve` (review mode, an API key)
//! that has processed the archive: three suggestions wait for review and one job has failed
//! (its model reply would not validate; a retry succeeds).
//!
//! Usage: `pai-ui-fixture PATH_TO_PAI`. Prints one JSON line (`url`, `api_key`,
//! `paperless_url`, `paperless_token`, `documents`), then serves until its standard input
//! closes, and stops `pai serve`.

use std::io::{BufRead, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pai_tests::fake_openai::FakeOpenAi;
use pai_tests::fake_paperless::{DocSeed, FakePaperless};
use serde_json::{Value, json};

const TOKEN: &str = "paperless-token-for-the-ui";
const SECRET: &str = "webhook-secret-0123456789";
const API_KEY: &str = "ui-test-api-key-0123456789";
/// The document whose first tagging fails (both the reply and its repair are not JSON).
const BROKEN: &str = "BROKEN-SCAN";

/// What the model suggests for each document, by a word of its text.
fn suggestion(prompt: &str) -> Value {
    if prompt.contains("kitchen sink") {
        json!({"title": "Acme Plumbing invoice March 2025", "tags": ["Invoice", "Plumbing"], "correspondent": "Acme Plumbing", "document_type": "Invoice", "created": "2025-03-12"})
    } else if prompt.contains("deposit of 1500") {
        json!({"title": "Tenancy agreement Hauptstrasse 5", "tags": ["Contract"], "correspondent": "Hausverwaltung Mueller", "document_type": "Contract", "created": "2024-09-01"})
    } else if prompt.contains("210 kWh") {
        json!({"title": "Stadtwerke electricity bill October 2025", "tags": ["Invoice", "Utilities"], "correspondent": "Stadtwerke", "document_type": "Invoice", "created": "2025-10-31"})
    } else {
        json!({"title": "Bank letter", "tags": ["Bank"], "correspondent": "Sparkasse", "document_type": "Letter", "created": "2025-06-02"})
    }
}

async fn wait_until_idle(http: &reqwest::Client, url: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let page: Value = http
            .get(format!("{url}/jobs?status=waiting&limit=1"))
            .bearer_auth(API_KEY)
            .send()
            .await
            .expect("GET /jobs")
            .json()
            .await
            .expect("jobs JSON");
        let all: Value = http
            .get(format!("{url}/jobs?limit=10"))
            .bearer_auth(API_KEY)
            .send()
            .await
            .expect("GET /jobs")
            .json()
            .await
            .expect("jobs JSON");
        let waiting = page["jobs"].as_array().is_some_and(|j| !j.is_empty());
        if !waiting && all["jobs"].as_array().map_or(0, Vec::len) >= 4 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the archive was not processed in time: {all}"
        );
        // Polling another process's progress: there is nothing to await.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let pai = std::env::args()
        .nth(1)
        .expect("usage: pai-ui-fixture PATH_TO_PAI");
    let paperless = FakePaperless::start(TOKEN).await;
    for (tag, words) in [
        ("Invoice", "invoice"),
        ("Contract", "contract"),
        ("Plumbing", ""),
        ("Utilities", ""),
        ("Bank", ""),
        ("Inbox", ""),
    ] {
        paperless.add_tag(tag, words);
    }
    let inbox = paperless.add_tag("Scanned", "");
    paperless.add_correspondent("Acme Plumbing", "acme");
    paperless.add_correspondent("Stadtwerke", "stadtwerke");
    paperless.add_document_type("Invoice", "invoice");
    paperless.add_document_type("Contract", "contract");
    paperless.add_document_type("Letter", "letter");
    let docs = [
        (
            "scan-0001",
            "Invoice from Acme Plumbing. Repair of the kitchen sink on 12 March 2025. Total due: 120.00 EUR. Please pay within 14 days.",
        ),
        (
            "scan-0002",
            "Tenancy agreement for the flat at Hauptstrasse 5. The tenant pays a deposit of 1500 EUR. Signed 1 September 2024.",
        ),
        (
            "scan-0003",
            "Stadtwerke electricity bill for October 2025. Consumption 210 kWh. Amount 84.20 EUR, paid by direct debit.",
        ),
        (
            "scan-0004",
            "BROKEN-SCAN letter from the Sparkasse about the new account terms from 2 June 2025.",
        ),
    ];
    let mut ids = Vec::new();
    for (title, content) in docs {
        ids.push(paperless.add_document(DocSeed {
            title: title.into(),
            content: content.into(),
            tags: vec![inbox],
            ..Default::default()
        }));
    }

    let model = FakeOpenAi::start(None).await;
    let broken_calls = Arc::new(AtomicUsize::new(0));
    {
        let broken_calls = broken_calls.clone();
        model.set_default(move |req| {
            let prompt = req["messages"].to_string();
            if req.get("response_format").is_some() {
                // The first tagging of the broken scan and its repair: not JSON, so the job
                // fails; a retry afterwards gets a valid reply.
                if prompt.contains(BROKEN) && broken_calls.fetch_add(1, Ordering::SeqCst) < 2 {
                    return "I cannot read this scan.".into();
                }
                return suggestion(&prompt).to_string();
            }
            if prompt.contains("status check") {
                return "OK [1]".into();
            }
            "You paid Acme Plumbing 120.00 EUR for repairing the kitchen sink [1].".into()
        });
    }

    let data = tempfile::tempdir().expect("temp dir");
    let mut env = pai_tests::serve_env(data.path(), &paperless, TOKEN, SECRET, &model);
    env.extend([
        ("REVIEW_MODE", "true".to_string()),
        ("API_KEYS", API_KEY.to_string()),
        ("SYNC_INTERVAL_MINUTES", "0".to_string()),
        ("MAX_RECEIVES", "1".to_string()),
        ("EMBEDDING_DIMENSIONS", "32".to_string()),
    ]);
    let (mut child, url) = pai_tests::spawn_pai_serve(&pai, &env);

    let http = reqwest::Client::new();
    for id in &ids {
        let r = http
            .post(format!("{url}/webhooks/paperless"))
            .header("X-Webhook-Secret", SECRET)
            .json(&json!({"doc_url": format!("{}/documents/{id}/", paperless.url())}))
            .send()
            .await
            .expect("webhook");
        assert_eq!(r.status().as_u16(), 202, "webhook for document {id}");
    }
    wait_until_idle(&http, &url).await;

    println!(
        "{}",
        json!({
            "url": url,
            "api_key": API_KEY,
            "paperless_url": paperless.url(),
            "paperless_token": TOKEN,
            "documents": ids,
            "broken_document": ids[3],
        })
    );
    let _ = std::io::stdout().flush();
    // Serve until the test runner closes our standard input (or dies).
    let _ = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        while std::io::stdin()
            .lock()
            .read_line(&mut line)
            .is_ok_and(|n| n > 0)
        {
            line.clear();
        }
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
}
