//! Micro-benchmarks of the hot paths that set the product's speed targets: exact vector search
//! over 100k chunks (chat retrieval), lexical embedding, chunking, and filter evaluation.

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use shared::adapters::local::SqliteVectorIndex;
use shared::filter::Filter;
use shared::ports::{VectorIndex, VectorRecord};
use shared::providers::lexical::{DEFAULT_DIMENSION, LexicalEmbedder};

const WORDS: &[&str] = &[
    "invoice",
    "rechnung",
    "plumber",
    "boiler",
    "repair",
    "insurance",
    "policy",
    "premium",
    "tax",
    "assessment",
    "salary",
    "payslip",
    "rent",
    "lease",
    "deposit",
    "electricity",
    "gas",
    "water",
    "doctor",
    "prescription",
    "bank",
    "statement",
    "transfer",
    "amount",
    "total",
    "due",
    "date",
    "contract",
    "notice",
    "period",
];

/// A deterministic pseudo-random sentence (no RNG dependency, same text every run).
fn synthetic_text(seed: u64, words: usize) -> String {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..words)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            WORDS[(x % WORDS.len() as u64) as usize]
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn retrieval(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let index =
        SqliteVectorIndex::open(&dir.path().join("bench.db"), "bench", DEFAULT_DIMENSION).unwrap();
    let e = LexicalEmbedder::new(DEFAULT_DIMENSION);
    // `cargo test --all-targets` runs benches once as a smoke test: a small index is enough there.
    let chunks: u64 = if std::env::args().any(|a| a == "--bench") {
        100_000
    } else {
        2_000
    };
    rt.block_on(async {
        let mut batch = Vec::new();
        for i in 0..chunks {
            let meta = json!({"doc_id": (i / 20).to_string(), "tags": [WORDS[(i % 7) as usize]], "created": 20200101 + (i % 1500)});
            batch.push(VectorRecord { key: format!("{}#{i}", i / 20), vector: e.vector(&synthetic_text(i, 40)), metadata: meta.as_object().unwrap().clone(), text: String::new(), title: String::new() });
            if batch.len() == 500 || i + 1 == chunks {
                index.put(std::mem::take(&mut batch)).await.unwrap();
            }
        }
    });
    let q = e.vector("how much was the plumber invoice for the boiler repair");
    c.bench_function("query 100k chunks, top 40", |b| {
        b.iter(|| rt.block_on(index.query(&q, 40, None)).unwrap())
    });
    let f = Filter::parse(&json!({"$and": [{"tags": "invoice"}, {"created": {"$gte": 20200601}}]}))
        .unwrap();
    c.bench_function("query 100k chunks, top 40, filtered", |b| {
        b.iter(|| rt.block_on(index.query(&q, 40, Some(&f))).unwrap())
    });
}

fn text(c: &mut Criterion) {
    let e = LexicalEmbedder::new(DEFAULT_DIMENSION);
    let chunk = synthetic_text(7, 300);
    c.bench_function("lexical embedding of a 300-word chunk", |b| {
        b.iter(|| e.vector(&chunk))
    });
    let doc = synthetic_text(9, 3000);
    c.bench_function("chunk a 3000-word document (400/60 tokens)", |b| {
        b.iter(|| shared::text::chunk_text(&doc, 400, 60))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30);
    targets = retrieval, text
}
criterion_main!(benches);
