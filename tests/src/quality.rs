//! Chat quality over the labelled question set (`cli/samples/questions.json`): the bundled
//! corpus goes through the real pipeline with the offline `lexical` provider, then every
//! question is retrieved and asked. Recall@5, MRR and refusal rates come back as JSON, for the
//! benchmark and for a regression test.

use serde_json::{Value, json};

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Retrieval quality with the lexical provider over the labelled question set: the bundled
/// corpus is ingested through the real pipeline, then each question is retrieved and asked.
pub async fn measure() -> Value {
    use shared::embedded::{LocalApp, ingest_bytes, wait_for_jobs};
    use shared::pipeline::chat::{ChatFilters, ChatRequest, ask, retrieve, validate};
    let samples = concat!(env!("CARGO_MANIFEST_DIR"), "/../cli/samples");
    let data = tempfile::tempdir().unwrap();
    std::fs::copy(
        format!("{samples}/taxonomy.json"),
        data.path().join("taxonomy.json"),
    )
    .unwrap();
    let vars = [
        ("DATA_DIR", data.path().display().to_string()),
        ("LLM_PROVIDER", "lexical".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
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
    let _ = stop.send(true);
    for w in workers {
        let _ = w.await;
    }
    let file_of: std::collections::HashMap<String, String> = done
        .iter()
        .map(|j| {
            (
                j.doc_id.as_ref().unwrap().to_string(),
                j.filename.clone().unwrap(),
            )
        })
        .collect();

    let questions: Vec<Value> = serde_json::from_str(
        &std::fs::read_to_string(format!("{samples}/questions.json")).unwrap(),
    )
    .unwrap();
    let (mut answerable, mut hits_at_5, mut reciprocal, mut contains) =
        (0usize, 0usize, 0f64, 0usize);
    let (mut unanswerable, mut refused, mut false_refusals) = (0usize, 0usize, 0usize);
    for q in &questions {
        let filters: Option<ChatFilters> = q
            .get("filters")
            .map(|f| serde_json::from_value(f.clone()).unwrap());
        let req = ChatRequest {
            question: q["question"].as_str().unwrap().into(),
            filters,
            document_id: None,
            session_id: None,
        };
        let filter = validate(&req).unwrap();
        let passages = retrieve(&app.svc, &req.question, filter.as_ref())
            .await
            .unwrap();
        let mut ranked_docs: Vec<String> = Vec::new();
        for p in &passages {
            let f = file_of
                .get(&p.doc_id.to_string())
                .cloned()
                .unwrap_or_default();
            if !ranked_docs.contains(&f) {
                ranked_docs.push(f);
            }
        }
        let reply = ask(&app.svc, &req, None).await.unwrap();
        if q["answerable"] == true {
            answerable += 1;
            let expected: Vec<&str> = q["answer_docs"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(Value::as_str)
                .collect();
            if let Some(rank) = ranked_docs
                .iter()
                .position(|d| expected.contains(&d.as_str()))
            {
                reciprocal += 1.0 / (rank + 1) as f64;
                hits_at_5 += (rank < 5) as usize;
            }
            false_refusals += (!reply.answered) as usize;
            contains += q["expected_answer_contains"]
                .as_str()
                .is_some_and(|s| reply.answer.contains(s)) as usize;
        } else {
            unanswerable += 1;
            refused += (!reply.answered) as usize;
        }
    }
    json!({
        "provider": "lexical", "documents": files.len(), "questions": questions.len(),
        "recall_at_5": round(hits_at_5 as f64 / answerable as f64), "mrr": round(reciprocal / answerable as f64),
        "unanswerable_refused": round(refused as f64 / unanswerable.max(1) as f64),
        "answerable_refused": round(false_refusals as f64 / answerable as f64),
        "answer_contains_expected": round(contains as f64 / answerable as f64),
    })
}
