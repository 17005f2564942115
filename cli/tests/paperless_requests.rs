//! The request economy with Paperless (issue 17): a burst of documents through `pai serve`
//! costs at most three Paperless requests per document — the chunk stage's read, the read
//! right before writing, the PATCH — and the taxonomy is read once for the burst, not per
//! document. Counts, not timings: the fake Paperless records every request.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pai_tests::fake_openai::FakeOpenAi;
use pai_tests::fake_paperless::{DocSeed, FakePaperless};
use serde_json::json;

const PAI: &str = env!("CARGO_BIN_EXE_pai");
const TOKEN: &str = "paperless-token";
const SECRET: &str = "webhook-secret-0123456789";
const DOCUMENTS: usize = 64;
const SENDERS: usize = 16;

/// `GET /api/documents/17/` → `GET /api/documents/{id}/`.
fn route(method: &str, path: &str) -> String {
    let path: Vec<&str> = path
        .split('/')
        .map(|p| if p.parse::<u64>().is_ok() { "{id}" } else { p })
        .collect();
    format!("{method} {}", path.join("/"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_costs_at_most_three_paperless_requests_per_document() {
    let paperless = FakePaperless::start(TOKEN).await;
    let model = FakeOpenAi::start(None).await;
    model.set_default(|req| {
        if req.get("response_format").is_some() {
            json!({"title": "Invoice", "tags": ["Invoice"], "correspondent": "Berger Haustechnik GmbH", "document_type": "Invoice", "created": "2025-03-14"}).to_string()
        } else {
            "See [1].".into()
        }
    });
    paperless.add_tag("Invoice", "rechnung invoice");
    paperless.add_correspondent("Berger Haustechnik GmbH", "berger");
    paperless.add_document_type("Invoice", "rechnung invoice");
    let ids: Vec<u64> = (0..DOCUMENTS)
        .map(|i| {
            paperless.add_document(DocSeed {
                title: format!("scan_{i:03}"),
                content: format!(
                    "Rechnung Nr. {i} der Berger Haustechnik GmbH vom 14.03.2025 über die Wartung der Heizung."
                ),
                ..Default::default()
            })
        })
        .collect();
    let data = tempfile::tempdir().unwrap();
    let mut env = pai_tests::serve_env(data.path(), &paperless, TOKEN, SECRET, &model);
    env.extend([
        ("EMBEDDING_MODEL", "bench-embed".to_string()),
        ("EMBEDDING_DIMENSIONS", "256".to_string()),
        // The burst is the webhooks': no start-up sync pulling the same documents in beside
        // them (each would cost its own read).
        ("SYNC_INTERVAL_MINUTES", "0".to_string()),
    ]);
    let (mut child, base) = pai_tests::spawn_pai_serve(PAI, &env);
    let before = paperless.requests().len();

    let http = reqwest::Client::new();
    let senders: Vec<_> = (0..SENDERS)
        .map(|s| {
            let (http, base) = (http.clone(), base.clone());
            let mine: Vec<u64> = ids.iter().copied().skip(s).step_by(SENDERS).collect();
            tokio::spawn(async move {
                for id in mine {
                    let r = http
                        .post(format!("{base}/webhooks/paperless"))
                        .header("X-Webhook-Secret", SECRET)
                        .json(&json!({"doc_id": id.to_string()}))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 202);
                }
            })
        })
        .collect();
    for s in senders {
        s.await.unwrap();
    }
    // Done when every document carries the processed tag (a bound against hanging only).
    let started = Instant::now();
    while paperless.count_documents_with_tag("ai-processed") < DOCUMENTS {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "only {} of {DOCUMENTS} documents were tagged",
            paperless.count_documents_with_tag("ai-processed")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();

    let requests = &paperless.requests()[before..];
    let mut by_route = BTreeMap::<String, usize>::new();
    for r in requests {
        *by_route.entry(route(&r.method, &r.path)).or_default() += 1;
    }
    let count = |route: &str| by_route.get(route).copied().unwrap_or(0);
    let document_requests = count("GET /api/documents/{id}/") + count("PATCH /api/documents/{id}/");
    assert!(
        document_requests <= 3 * DOCUMENTS,
        "{document_requests} requests about the {DOCUMENTS} documents: {by_route:#?}"
    );
    assert_eq!(
        count("PATCH /api/documents/{id}/"),
        DOCUMENTS,
        "{by_route:#?}"
    );
    // The taxonomy is kept: one read for the burst (a second only if the burst outlived the
    // copy's bounded age on a slow machine), never one per document.
    for list in [
        "GET /api/tags/",
        "GET /api/correspondents/",
        "GET /api/document_types/",
        "GET /api/storage_paths/",
        "GET /api/custom_fields/",
    ] {
        assert!(
            count(list) <= 2,
            "{list} read {} times: {by_route:#?}",
            count(list)
        );
    }
    // Besides the documents' own: the taxonomy read and creating the processed tag.
    let others = requests.len() - document_requests;
    assert!(
        others <= 12,
        "{others} requests besides the documents' own: {by_route:#?}"
    );
}
