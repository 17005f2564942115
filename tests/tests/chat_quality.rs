//! A regression guard on retrieval and refusal quality: the lexical provider over the sample
//! corpus must keep finding the right documents and refusing what the archive does not hold.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lexical_retrieval_quality_on_the_sample_corpus() {
    let q = pai_tests::quality::measure().await;
    assert!(q["recall_at_5"].as_f64().unwrap() >= 0.9, "{q}");
    assert!(q["mrr"].as_f64().unwrap() >= 0.85, "{q}");
    assert!(q["unanswerable_refused"].as_f64().unwrap() >= 0.9, "{q}");
    assert!(q["answerable_refused"].as_f64().unwrap() <= 0.1, "{q}");
}
