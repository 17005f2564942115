//! What `pai serve` writes to its log when stderr is a file, as under systemd or `2>pai.log`:
//! plain text without colour codes, or one JSON object a line with `LOG_FORMAT=json`; the
//! lines of a job carry its job id and document id either way, and a bad `LOG_FORMAT` stops
//! start-up naming the variable.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pai_tests::fake_paperless::{DocSeed, FakePaperless};
use serde_json::{Value, json};

const PAI: &str = env!("CARGO_BIN_EXE_pai");
const TOKEN: &str = "paperless-token";
const SECRET: &str = "webhook-secret-0123456789";

/// Runs one document through `pai serve` with stderr going to a file; returns that file's text.
async fn log_of_one_document(log_format: Option<&str>) -> String {
    use std::io::BufRead;
    let paperless = FakePaperless::start(TOKEN).await;
    let id = paperless.add_document(DocSeed {
        title: "scan".into(),
        content: "Rechnung Berger Haustechnik GmbH, 14.03.2025, Betrag 120,00 EUR".into(),
        ..Default::default()
    });
    let data = tempfile::tempdir().unwrap();
    let log_path = data.path().join("pai.log");
    let mut cmd = Command::new(PAI);
    cmd.arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .env("DATA_DIR", data.path().join("data"))
        .env("PORT", "0")
        .env("PAPERLESS_URL", paperless.url())
        .env("PAPERLESS_TOKEN", TOKEN)
        .env("WEBHOOK_SECRET", SECRET);
    if let Some(f) = log_format {
        cmd.env("LOG_FORMAT", f);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .to_string();
    let r = reqwest::Client::new()
        .post(format!("{base}/webhooks/paperless"))
        .header("X-Webhook-Secret", SECRET)
        .json(&json!({"doc_id": id.to_string()}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let deadline = Instant::now() + Duration::from_secs(60);
    while paperless.count_documents_with_tag("ai-processed") < 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The document shows its tags a moment before the worker logs that it tagged it.
    let logged =
        |log: &str| log.contains(": tagged outcome=") || log.contains("\"message\":\"tagged\"");
    while !logged(&std::fs::read_to_string(&log_path).unwrap_or_default())
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    std::fs::read_to_string(&log_path).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_file_gets_no_colour_codes_and_job_lines_carry_their_ids() {
    let log = log_of_one_document(None).await;
    assert!(!log.is_empty());
    assert!(
        !log.contains('\u{1b}'),
        "no ANSI escape codes in a file: {log:?}"
    );
    let tagged = log
        .lines()
        .find(|l| l.contains(": tagged outcome="))
        .unwrap_or_else(|| panic!("a line for the tagged document in {log}"));
    assert!(
        tagged.contains("job_id=") && tagged.contains("doc_id="),
        "{tagged}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_json_writes_one_object_a_line_with_the_span_ids() {
    let log = log_of_one_document(Some("json")).await;
    let lines: Vec<Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?} is not JSON: {e}")))
        .collect();
    let tagged = lines
        .iter()
        .find(|l| l["fields"]["message"] == "tagged")
        .unwrap_or_else(|| panic!("a line for the tagged document in {log}"));
    assert!(tagged["span"]["job_id"].is_string(), "{tagged}");
    assert!(!tagged["span"]["doc_id"].is_null(), "{tagged}");
}

#[test]
fn a_bad_log_format_stops_start_up_naming_the_variable() {
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(PAI)
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATA_DIR", data.path())
        .env("PORT", "0")
        .env("LOG_FORMAT", "xml")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("LOG_FORMAT"), "{stderr}");
}
