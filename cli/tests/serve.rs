//! The `pai` binary itself: configuration errors name their variable, `serve` answers and
//! exports metrics, a `kill -9` in the middle of the pipeline loses nothing, and `demo` runs.

use std::process::Command;
use std::time::{Duration, Instant};

use pai_tests::fake_openai::FakeOpenAi;
use pai_tests::fake_paperless::{DocSeed, FakePaperless};
use serde_json::{Value, json};

const PAI: &str = env!("CARGO_BIN_EXE_pai");
const TOKEN: &str = "paperless-token";
const SECRET: &str = "webhook-secret-0123456789";

fn pai(args: &[&str], env: &[(&str, String)]) -> Command {
    let mut c = Command::new(PAI);
    c.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn");
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

/// `GET url` as JSON.
async fn get_json(http: &reqwest::Client, url: &str) -> Value {
    http.get(url).send().await.unwrap().json().await.unwrap()
}

fn serve(env: &[(&str, String)]) -> (std::process::Child, String) {
    pai_tests::spawn_pai_serve(PAI, env)
}

#[test]
fn a_bad_setting_stops_start_up_naming_the_variable() {
    for (var, value) in [
        ("PORT", "eighty"),
        ("LLM_PROVIDER", "gpt"),
        ("PAPERLESS_URL", "paperless:8000"),
        ("BIND", "0.0.0.0"),
        ("MODEL_PRICES", "gpt-4o-mini=free"),
    ] {
        let out = pai(
            &["serve"],
            &[
                (var, value.to_string()),
                ("DATA_DIR", std::env::temp_dir().display().to_string()),
            ],
        )
        .output()
        .unwrap();
        assert_eq!(out.status.code(), Some(2), "{var}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(var) && err.lines().count() == 1,
            "{var}: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_survives_kill_9_mid_pipeline_and_exports_metrics() {
    let paperless = FakePaperless::start(TOKEN).await;
    let model = FakeOpenAi::start(None).await;
    model.set_default(|req| {
        if req.get("response_format").is_some() {
            json!({"title": "Letter", "tags": ["Mail"], "correspondent": null, "document_type": null, "created": null}).to_string()
        } else {
            "ok [1]".into()
        }
    });
    // Slow Paperless answers keep documents in flight when the process is killed.
    paperless.set_latency(Duration::from_millis(20));
    let ids: Vec<u64> = (0..30)
        .map(|i| {
            paperless.add_document(DocSeed {
                title: format!("scan {i}"),
                content: format!("Letter number {i} about the garden fence."),
                ..Default::default()
            })
        })
        .collect();
    let data = tempfile::tempdir().unwrap();
    let mut env = pai_tests::serve_env(data.path(), &paperless, TOKEN, SECRET, &model);
    env.extend([
        ("EMBEDDING_MODEL", "e".to_string()),
        ("EMBEDDING_DIMENSIONS", "32".to_string()),
        ("WORKERS", "2".to_string()),
    ]);
    let http = reqwest::Client::new();
    let (mut first, url) = serve(&env);
    assert_eq!(
        http.get(format!("{url}/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    for id in &ids {
        let r = http
            .post(format!("{url}/webhooks/paperless"))
            .header("X-Webhook-Secret", SECRET)
            .json(&json!({"doc_id": id.to_string()}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    first.kill().unwrap(); // SIGKILL: no shutdown code runs.
    first.wait().unwrap();
    let before = paperless.count_documents_with_tag("ai-processed");
    assert!(
        before < ids.len(),
        "killed before the pipeline finished ({before} done)"
    );

    paperless.set_latency(Duration::ZERO);
    let (mut second, url) = serve(&env);
    let started = Instant::now();
    while paperless.count_documents_with_tag("ai-processed") < ids.len() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "documents lost: {} of {}",
            paperless.count_documents_with_tag("ai-processed"),
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Tags merge by id, so even a document processed twice carries its processed tag once.
    for id in &ids {
        let doc = paperless.document(*id).unwrap();
        let names = paperless.tag_names(
            &doc["tags"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect::<Vec<_>>(),
        );
        assert_eq!(names.iter().filter(|n| *n == "ai-processed").count(), 1);
    }
    let metrics = http
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "pai_documents_tagged_total",
        "pai_chunks_embedded_total",
        "pai_model_latency_seconds",
        "pai_cache_misses_total",
        "pai_queue_depth{queue=\"chunk\"}",
        "pai_queue_oldest_message_age_seconds{queue=\"tag\"}",
        "pai_queue_dead_letters{queue=\"embed\"}",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    let answer: Value = http
        .post(format!("{url}/chat"))
        .json(&json!({"question": "What about the garden fence letter number 7?"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        !answer["citations"].as_array().unwrap().is_empty(),
        "{answer}"
    );
    second.kill().unwrap();
    second.wait().unwrap();
}

#[test]
fn demo_runs_offline_and_answers_with_citations() {
    let out = pai(&["demo"], &[]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.matches("✓ ").count(), 36, "{stdout}");
    assert!(
        stdout.contains("743.04") && stdout.contains("4.260,00"),
        "{stdout}"
    );
    assert!(stdout.contains("   [1] "), "answers cite: {stdout}");
    // Piped, progress is one final line, not carriage returns that make a log one long line.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains('\r'), "{stderr:?}");
    assert!(stderr.contains("processed 36/36 documents\n"), "{stderr:?}");
}

#[test]
fn ingest_then_ask_from_the_data_folder() {
    let data = tempfile::tempdir().unwrap();
    let docs = data.path().join("in");
    std::fs::create_dir_all(&docs).unwrap();
    std::fs::write(
        docs.join("note.md"),
        "# Bicycle\nThe bicycle frame number is WTU-4471-X, bought at Cabot Cycles.",
    )
    .unwrap();
    std::fs::write(docs.join("image.png"), [0x89, b'P', b'N', b'G']).unwrap();
    let env = [("DATA_DIR", data.path().join("store").display().to_string())];
    let out = pai(&["ingest", docs.to_str().unwrap()], &env)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("✓ note.md"));
    let out = pai(&["ask", "What is the bicycle frame number?"], &env)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("WTU-4471-X") && stdout.contains("[1]"),
        "{stdout}"
    );
    let out = pai(&["jobs"], &env).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("done"));
}

/// `pai retry` queues a failed job again from the data folder (the server may be stopped);
/// `pai serve` then runs it to the end. Unknown jobs are refused by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pai_retry_runs_a_failed_job_again() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let paperless = FakePaperless::start(TOKEN).await;
    let model = FakeOpenAi::start(None).await;
    let broken = Arc::new(AtomicBool::new(true));
    let b = broken.clone();
    model.set_default(move |req| {
        if req.get("response_format").is_none() {
            "ok [1]".into()
        } else if b.load(Ordering::SeqCst) {
            "not json at all".into()
        } else {
            json!({"title": "Fence letter", "tags": ["Mail"], "correspondent": null, "document_type": null, "created": null}).to_string()
        }
    });
    paperless.add_document(DocSeed {
        title: "scan".into(),
        content: "A letter about the garden fence.".into(),
        ..Default::default()
    });
    let data = tempfile::tempdir().unwrap();
    let mut env = pai_tests::serve_env(data.path(), &paperless, TOKEN, SECRET, &model);
    env.extend([
        ("EMBEDDING_MODEL", "e".to_string()),
        ("EMBEDDING_DIMENSIONS", "32".to_string()),
    ]);
    let http = reqwest::Client::new();
    // The first job listed under `status`, once there is one.
    let first_job = |url: String, status: &'static str| {
        let http = http.clone();
        async move {
            let started = Instant::now();
            loop {
                let page: Value = get_json(&http, &format!("{url}/jobs?status={status}")).await;
                if let Some(job) = page["jobs"].get(0) {
                    return job.clone();
                }
                assert!(started.elapsed() < Duration::from_secs(60), "{page}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };

    // The start-up sync finds the document; the model's replies fail it for good.
    let (mut server, url) = serve(&env);
    let failed = first_job(url.clone(), "failed").await;
    let job = failed["id"].as_str().unwrap().to_string();
    let metrics = http
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("pai_documents_tagged_total{outcome=\"failed\"} 1"),
        "a failed tagging is counted: {metrics}"
    );
    let durations: Vec<f64> = metrics
        .lines()
        .filter(|l| l.starts_with("pai_job_duration_seconds{quantile="))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    assert!(
        !durations.is_empty() && durations.iter().any(|d| *d > 0.0),
        "job durations are measured, not 0: {durations:?}"
    );
    server.kill().unwrap();
    server.wait().unwrap();

    broken.store(false, Ordering::SeqCst);
    let out = pai(&["retry", &job], &env).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("queued 1 failed jobs again") && stdout.contains(&job),
        "{stdout}"
    );
    let out = pai(&["retry", "no-such-job"], &env).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no job no-such-job"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The restart's sync may queue the document too (the failed tag changed it): either
    // way the retried job finishes and the document ends tagged, not failed.
    let (mut server, url) = serve(&env);
    let started = Instant::now();
    loop {
        let j: Value = get_json(&http, &format!("{url}/jobs/{job}")).await;
        if j["status"] == "done" {
            assert_eq!(j["attempt"], 1, "{j}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{j}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    while paperless.count_documents_with_tag("ai-processed") == 0 {
        assert!(started.elapsed() < Duration::from_secs(60), "never tagged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(paperless.count_documents_with_tag("ai-failed"), 0);
    let out = pai(&["retry", "--all"], &env).output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("queued 0 failed jobs again"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    server.kill().unwrap();
    server.wait().unwrap();
}

/// `pai retag` picks documents by tag (or ids, date, all), prints how many and what they will
/// cost before anything is spent, queues them unless `--dry-run`, and `pai serve` runs them
/// whatever the loop guard says. `pai check` tells what the token may do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pai_retag_prints_its_cost_first_then_queues_the_selection() {
    let paperless = FakePaperless::start(TOKEN).await;
    let model = FakeOpenAi::start(None).await;
    model.set_default(|req| {
        if req.get("response_format").is_some() {
            json!({"title": "Fence letter", "tags": ["Mail"], "correspondent": null, "document_type": null, "created": null}).to_string()
        } else {
            "ok [1]".into()
        }
    });
    let invoice = paperless.add_tag("Invoice", "");
    let seeds = [("a", vec![invoice]), ("b", vec![invoice]), ("c", vec![])];
    for (title, tags) in seeds {
        paperless.add_document(DocSeed {
            title: title.into(),
            content: format!("Letter {title} about the garden fence and its repair."),
            tags,
            ..Default::default()
        });
    }
    let data = tempfile::tempdir().unwrap();
    let env = pai_tests::serve_env(data.path(), &paperless, TOKEN, SECRET, &model);
    let run = |args: &[&str]| {
        let out = pai(args, &env).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };

    let tag_calls = || {
        model
            .chat_requests()
            .iter()
            .filter(|r| r.get("response_format").is_some())
            .count()
    };
    let processed = |n: usize| {
        let started = Instant::now();
        while paperless.count_documents_with_tag("ai-processed") < n {
            assert!(started.elapsed() < Duration::from_secs(60), "not processed");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // First everything is tagged once (the start-up sync).
    let (mut server, _) = serve(&env);
    processed(3);
    server.kill().unwrap();
    server.wait().unwrap();
    assert_eq!(tag_calls(), 3);

    let (ok, _, err) = run(&["retag"]);
    assert!(!ok && err.contains("name the documents"), "{err}");
    let (ok, _, err) = run(&["retag", "--all", "--tag", "Invoice"]);
    assert!(!ok, "{err}");
    let (ok, out, err) = run(&["retag", "--tag", "Invoice", "--dry-run"]);
    assert!(ok, "{err}");
    let tokens: u64 = out
        .split("about ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no estimate in {out:?}"));
    assert!(
        out.starts_with("2 documents to re-tag") && tokens > 0,
        "{out}"
    );
    assert!(!out.contains("queued"), "a dry run queues nothing: {out}");

    let (ok, out, err) = run(&["retag", "--tag", "Invoice"]);
    assert!(ok, "{err}");
    assert!(out.contains("queued 2 documents"), "{out}");
    let (ok, out, err) = run(&["check"]);
    assert!(ok, "{err}");
    assert!(!out.trim().is_empty(), "pai check reports: {out}");

    // The two asked for run again although their text and policy did not change; the third
    // (queued again by the start-up sync, since our PATCH changed it) is left alone.
    let (mut server, url) = serve(&env);
    let http = reqwest::Client::new();
    let started = Instant::now();
    loop {
        let page: Value = get_json(&http, &format!("{url}/jobs?status=waiting")).await;
        if tag_calls() >= 5 && page["jobs"].as_array().is_some_and(|j| j.is_empty()) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{page}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        tag_calls(),
        5,
        "exactly the two re-tagged documents called the model"
    );
    server.kill().unwrap();
    server.wait().unwrap();
}

/// The metric names a PromQL expression reads, each with the label names its selector
/// matches on (`pai_x{cache="embedding"}` → `pai_x`, `{cache}`).
fn promql_selectors(expr: &str) -> Vec<(String, Vec<String>)> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut found = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("pai_") {
        if rest[..at].chars().last().is_some_and(ident) {
            rest = &rest[at + 4..];
            continue;
        }
        let tail = &rest[at..];
        let end = tail.find(|c: char| !ident(c)).unwrap_or(tail.len());
        let name = tail[..end].to_string();
        let mut labels = Vec::new();
        if let Some(selector) = tail[end..].strip_prefix('{') {
            let close = selector.find('}').expect("a closed selector");
            for matcher in selector[..close].split(',') {
                let label = matcher.split(['=', '!', '~']).next().unwrap().trim();
                labels.push(label.to_string());
            }
        }
        found.push((name, labels));
        rest = &tail[end..];
    }
    found
}

/// Every metric a panel of the Grafana dashboard (infra/grafana) queries is in a real `pai
/// serve`'s /metrics after a small run — one refused model call and a webhook for a document
/// Paperless does not have included, so the error series exist — with the labels the panel selects on. The same run
/// checks the cost arithmetic: the job's and the chat answer's `usage.cost_usd` are their
/// tokens at MODEL_PRICES, and /metrics counts the cost by provider, model and kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_panels_query_exported_metrics_and_costs_follow_model_prices() {
    use pai_tests::fake_openai::Reply;
    let paperless = FakePaperless::start(TOKEN).await;
    let model = FakeOpenAi::start(None).await;
    model.set_default(|req| {
        if req.get("response_format").is_some() {
            json!({"title": "Letter", "tags": ["Mail"], "correspondent": null, "document_type": null, "created": null}).to_string()
        } else {
            "The fence is mended [1].".into()
        }
    });
    // The first tagging call is refused: a model error, a failed message, a failed outcome.
    model.push_reply(Reply::Status(400, None));
    let fence = "A letter about the garden fence and the neighbour who mends it.";
    let seeded: Vec<u64> = [
        ("a", "An invoice for new roof tiles, due in March."),
        ("b", fence),
    ]
    .into_iter()
    .map(|(title, content)| {
        paperless.add_document(DocSeed {
            title: title.into(),
            content: content.into(),
            ..Default::default()
        })
    })
    .collect();
    let data = tempfile::tempdir().unwrap();
    let mut env = pai_tests::serve_env(data.path(), &paperless, TOKEN, SECRET, &model);
    env.extend([
        ("EMBEDDING_MODEL", "e".to_string()),
        ("EMBEDDING_DIMENSIONS", "32".to_string()),
        // The embedder's input is priced like the chat model's, so a job's cost follows
        // from its token totals alone.
        ("MODEL_PRICES", "gpt-4o-mini=2/8,e=2".to_string()),
    ]);
    let http = reqwest::Client::new();
    let (mut server, url) = serve(&env);
    let wait = |what: &'static str, started: Instant| {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "waited for {what}"
        );
    };
    let started = Instant::now();
    loop {
        let done: Value = get_json(&http, &format!("{url}/jobs?status=done")).await;
        let failed: Value = get_json(&http, &format!("{url}/jobs?status=failed")).await;
        if done["jobs"].as_array().unwrap().len() + failed["jobs"].as_array().unwrap().len() == 2 {
            break;
        }
        wait("the start-up sync's two jobs", started);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A third document with the second's text (its chunks are embedding-cache hits, but not
    // in the index under this document), one Paperless does not have (a Paperless error),
    // and the second again (every chunk already indexed).
    let third = paperless.add_document(DocSeed {
        title: "c".into(),
        content: fence.into(),
        ..Default::default()
    });
    let mut jobs = Vec::new();
    for doc_id in [third, 424_242, seeded[1]] {
        let queued: Value = http
            .post(format!("{url}/webhooks/paperless"))
            .header("X-Webhook-Secret", SECRET)
            .json(&json!({"doc_id": doc_id.to_string()}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        jobs.push(queued["job_id"].as_str().expect("a job").to_string());
    }
    let started = Instant::now();
    let job = loop {
        let job: Value = get_json(&http, &format!("{url}/jobs/{}", jobs[0])).await;
        let missing: Value = get_json(&http, &format!("{url}/jobs/{}", jobs[1])).await;
        let again: Value = get_json(&http, &format!("{url}/jobs/{}", jobs[2])).await;
        if job["status"] == "done" && missing["status"] == "failed" && again["status"] == "done" {
            break job;
        }
        wait("the last three jobs", started);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The job's cost: its tokens at 2 USD per 1M in and 8 USD per 1M out.
    let usage = &job["usage"];
    let (tokens_in, tokens_out) = (
        usage["input_tokens"].as_u64().unwrap(),
        usage["output_tokens"].as_u64().unwrap(),
    );
    assert!(tokens_in >= 100 && tokens_out > 0, "{job}");
    let cost = usage["cost_usd"].as_f64().unwrap();
    let expected = (tokens_in as f64 * 2.0 + tokens_out as f64 * 8.0) / 1e6;
    assert!(
        (cost - expected).abs() < 1e-9,
        "{cost} != {expected}: {job}"
    );

    let answer: Value = http
        .post(format!("{url}/chat"))
        .json(&json!({"question": "Who mends the garden fence?"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let usage = &answer["usage"];
    let (tokens_in, tokens_out) = (
        usage["input_tokens"].as_u64().unwrap(),
        usage["output_tokens"].as_u64().unwrap(),
    );
    // The answer's 100 prompt tokens and the question's embedding.
    assert!(tokens_in > 100 && tokens_out > 0, "{answer}");
    let expected = (tokens_in as f64 * 2.0 + tokens_out as f64 * 8.0) / 1e6;
    assert!(
        (usage["cost_usd"].as_f64().unwrap() - expected).abs() < 1e-9,
        "{answer}"
    );

    let metrics = http
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    server.kill().unwrap();
    server.wait().unwrap();
    // Sample lines: name → the label names seen on it.
    let mut exported: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    for line in metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = exported.entry(line[..end].to_string()).or_default();
        if let Some(inner) = line[end..].strip_prefix('{') {
            for pair in inner[..inner.find('}').unwrap()].split(',') {
                labels.insert(pair.split('=').next().unwrap().to_string());
            }
        }
    }
    let path = pai_tests::template::workspace_root().join("infra/grafana/pai-dashboard.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut queried = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for (name, labels) in promql_selectors(expr) {
                queried += 1;
                let Some(seen) = exported.get(&name) else {
                    panic!(
                        "panel {:?} queries {name}, not in /metrics:\n{metrics}",
                        panel["title"]
                    );
                };
                for label in labels {
                    assert!(
                        seen.contains(&label),
                        "{name} has no label {label}: {seen:?}"
                    );
                }
            }
        }
    }
    assert!(queried >= 20, "the panels query {queried} metrics");

    // Three documents embedded, one whose every chunk was indexed already (counted as
    // unchanged, not as indexed), one never read (not an embedding outcome at all).
    for (outcome, n) in [("indexed", 3), ("unchanged", 1)] {
        let line = format!("pai_documents_indexed_total{{outcome=\"{outcome}\"}} {n}\n");
        assert!(metrics.contains(&line), "{line}: {metrics}");
    }
    assert!(!metrics.contains("pai_documents_indexed_total{outcome=\"failed\"}"));
    // The cost counter, by provider, model and kind, typed as a counter.
    assert!(
        metrics.contains("# TYPE pai_model_cost_usd_total counter"),
        "{metrics}"
    );
    let cost_of = |kind: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("pai_model_cost_usd_total{")
                    && l.contains(&format!("kind=\"{kind}\""))
                    && l.contains("provider=\"openai\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    // Two documents tagged (one refused call costs nothing), each reply 100 tokens in.
    assert!(cost_of("tag") >= 2.0 * 100.0 * 2.0 / 1e6, "{metrics}");
    // The answer call: its 100 prompt tokens and every output token of the answer.
    let answer_call = (100.0 * 2.0 + tokens_out as f64 * 8.0) / 1e6;
    assert!(
        cost_of("embed") > 0.0 && (cost_of("answer") - answer_call).abs() < 1e-9,
        "{metrics}"
    );
    assert!(
        metrics.contains("model=\"gpt-4o-mini\"") && metrics.contains("model=\"e\""),
        "{metrics}"
    );
}

/// The value of one sample line of /metrics (`name{labels}`), 0 when absent.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The queue gauges tell the truth through `pai serve`'s /metrics: while a slow model keeps
/// messages waiting, their queue shows a depth and an oldest-message age above 0; once the
/// work is done, both fall back to 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_gauges_show_waiting_work_and_fall_back_to_zero() {
    let paperless = FakePaperless::start(TOKEN).await;
    let model = FakeOpenAi::start(None).await;
    model.set_default(|req| {
        if req.get("response_format").is_some() {
            json!({"title": "Letter", "tags": ["Mail"], "correspondent": null, "document_type": null, "created": null}).to_string()
        } else {
            "ok [1]".into()
        }
    });
    // Eight calls of 1.5 s a queue outlast the gauges' 5 s refresh.
    model.set_latency(Duration::from_millis(1500));
    for i in 0..8 {
        paperless.add_document(DocSeed {
            title: format!("scan {i}"),
            content: format!("Letter number {i} about the garden fence."),
            ..Default::default()
        });
    }
    let data = tempfile::tempdir().unwrap();
    let mut env = pai_tests::serve_env(data.path(), &paperless, TOKEN, SECRET, &model);
    env.extend([
        ("EMBEDDING_MODEL", "e".to_string()),
        ("EMBEDDING_DIMENSIONS", "32".to_string()),
        // One model call at a time: the start-up sync's documents queue up behind it.
        ("LLM_MAX_CONCURRENCY", "1".to_string()),
        ("WORKERS", "1".to_string()),
    ]);
    let http = reqwest::Client::new();
    let (mut server, url) = serve(&env);
    let metrics = || {
        let (http, url) = (http.clone(), url.clone());
        async move {
            http.get(format!("{url}/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    let started = Instant::now();
    let waiting = loop {
        let m = metrics().await;
        let busy = ["embed", "tag"].into_iter().find(|q| {
            sample(&m, &format!("pai_queue_depth{{queue=\"{q}\"}}")) >= 1.0
                && sample(
                    &m,
                    &format!("pai_queue_oldest_message_age_seconds{{queue=\"{q}\"}}"),
                ) > 0.0
        });
        if let Some(q) = busy {
            break q;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no queue ever showed waiting work:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    while paperless.count_documents_with_tag("ai-processed") < 8 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "not all tagged"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    loop {
        let m = metrics().await;
        let idle = ["chunk", "embed", "tag"].iter().all(|q| {
            sample(&m, &format!("pai_queue_depth{{queue=\"{q}\"}}")) == 0.0
                && sample(
                    &m,
                    &format!("pai_queue_oldest_message_age_seconds{{queue=\"{q}\"}}"),
                ) == 0.0
        });
        if idle {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(150),
            "the {waiting} queue never showed empty:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.kill().unwrap();
    server.wait().unwrap();
}
