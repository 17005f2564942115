//! Metric names and descriptions. Everything is recorded through the `metrics` facade: `pai`
//! installs a Prometheus recorder (`GET /metrics`), the Lambdas an Embedded Metric Format one,
//! so instrumented code is the same everywhere.

pub const MODEL_LATENCY: &str = "pai_model_latency_seconds";
pub const MODEL_ERRORS: &str = "pai_model_errors_total";
pub const TOKENS_IN: &str = "pai_model_tokens_in_total";
pub const TOKENS_OUT: &str = "pai_model_tokens_out_total";
pub const MODEL_COST: &str = "pai_model_cost_usd_total";
pub const CACHE_HITS: &str = "pai_cache_hits_total";
pub const CACHE_MISSES: &str = "pai_cache_misses_total";
pub const CHUNKS_EMBEDDED: &str = "pai_chunks_embedded_total";
pub const DOCUMENTS_TAGGED: &str = "pai_documents_tagged_total";
pub const DOCUMENTS_INDEXED: &str = "pai_documents_indexed_total";
pub const JOB_DURATION: &str = "pai_job_duration_seconds";
pub const PAPERLESS_ERRORS: &str = "pai_paperless_errors_total";
pub const MESSAGES_FAILED: &str = "pai_messages_failed_total";
pub const CHAT_LATENCY: &str = "pai_chat_latency_seconds";
pub const MODEL_CONCURRENCY_LIMIT: &str = "pai_model_concurrency_limit";
pub const MODEL_IN_FLIGHT: &str = "pai_model_calls_in_flight";
pub const QUEUE_DEPTH: &str = "pai_queue_depth";
pub const QUEUE_OLDEST_AGE: &str = "pai_queue_oldest_message_age_seconds";
pub const QUEUE_DEAD_LETTERS: &str = "pai_queue_dead_letters";

/// Every metric `describe` registers: what dashboards may use.
pub const ALL: &[&str] = &[
    MODEL_LATENCY,
    MODEL_ERRORS,
    TOKENS_IN,
    TOKENS_OUT,
    MODEL_COST,
    CACHE_HITS,
    CACHE_MISSES,
    CHUNKS_EMBEDDED,
    DOCUMENTS_TAGGED,
    DOCUMENTS_INDEXED,
    JOB_DURATION,
    PAPERLESS_ERRORS,
    MESSAGES_FAILED,
    CHAT_LATENCY,
    MODEL_CONCURRENCY_LIMIT,
    MODEL_IN_FLIGHT,
    QUEUE_DEPTH,
    QUEUE_OLDEST_AGE,
    QUEUE_DEAD_LETTERS,
];

/// Counters of fractional amounts (dollars). The `metrics` facade counts in whole numbers, so
/// these are recorded as gauges that only ever grow: `prometheus_text` declares them counters
/// again, and the EMF recorder reports their increase per flush like any counter.
pub const FLOAT_COUNTERS: &[&str] = &[MODEL_COST];

/// The Prometheus exposition as `/metrics` serves it: the exporter's text with the float
/// counters typed as the counters they are.
pub fn prometheus_text(rendered: String) -> String {
    let mut text = rendered;
    for name in FLOAT_COUNTERS {
        text = text.replace(
            &format!("# TYPE {name} gauge\n"),
            &format!("# TYPE {name} counter\n"),
        );
    }
    text
}

/// Registers units and help texts with whatever recorder is installed.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_histogram!(
        MODEL_LATENCY,
        Unit::Seconds,
        "Latency of model calls (chat and embeddings), by provider and kind"
    );
    describe_counter!(MODEL_ERRORS, "Failed model calls, by provider and kind");
    describe_counter!(
        TOKENS_IN,
        "Input tokens sent to models, by provider and kind"
    );
    describe_counter!(
        TOKENS_OUT,
        "Output tokens received from models, by provider and kind"
    );
    describe_gauge!(
        MODEL_COST,
        "What model calls cost in USD at the model's price (MODEL_PRICES), by provider, model and kind"
    );
    describe_counter!(CACHE_HITS, "Prompt and embedding cache hits, by cache");
    describe_counter!(CACHE_MISSES, "Prompt and embedding cache misses, by cache");
    describe_counter!(
        CHUNKS_EMBEDDED,
        "Chunks embedded and written to the vector index"
    );
    describe_counter!(
        DOCUMENTS_TAGGED,
        "Documents tagged, by outcome (applied, stored, unchanged, failed)"
    );
    describe_counter!(
        DOCUMENTS_INDEXED,
        "Documents whose embedding stage ended, by outcome (indexed: chunks embedded; unchanged: every chunk already indexed; failed)"
    );
    describe_histogram!(
        JOB_DURATION,
        Unit::Seconds,
        "Time from a job's creation to its last stage"
    );
    describe_counter!(
        PAPERLESS_ERRORS,
        "Failed Paperless-ngx API calls, by operation"
    );
    describe_counter!(
        MESSAGES_FAILED,
        "Queue messages that failed, by stage and whether they will be retried"
    );
    describe_histogram!(CHAT_LATENCY, Unit::Seconds, "Time to answer a chat request");
    describe_gauge!(
        MODEL_CONCURRENCY_LIMIT,
        "Model calls allowed in flight now by the adaptive limit, by endpoint"
    );
    describe_gauge!(MODEL_IN_FLIGHT, "Model calls in flight, by endpoint");
    describe_gauge!(
        QUEUE_DEPTH,
        "Messages waiting, delayed or in flight, by queue (chunk, embed, tag)"
    );
    describe_gauge!(
        QUEUE_OLDEST_AGE,
        Unit::Seconds,
        "Age of the oldest message still in the queue (0 when empty), by queue"
    );
    describe_gauge!(
        QUEUE_DEAD_LETTERS,
        "Dead-lettered messages, by queue (their jobs are failed; POST /jobs/retry-failed)"
    );
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Mutex;

    use metrics::{
        Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
    };

    /// Notes the names described; records nothing.
    #[derive(Default)]
    struct Described(Mutex<BTreeSet<String>>);

    impl Described {
        fn note(&self, key: KeyName) {
            self.0.lock().unwrap().insert(key.as_str().to_string());
        }
    }

    impl Recorder for Described {
        fn describe_counter(&self, key: KeyName, _: Option<Unit>, _: SharedString) {
            self.note(key);
        }
        fn describe_gauge(&self, key: KeyName, _: Option<Unit>, _: SharedString) {
            self.note(key);
        }
        fn describe_histogram(&self, key: KeyName, _: Option<Unit>, _: SharedString) {
            self.note(key);
        }
        fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
            Counter::noop()
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }

    #[test]
    fn all_lists_exactly_the_described_metrics() {
        let recorder = Described::default();
        metrics::with_local_recorder(&recorder, super::describe);
        let described = recorder.0.into_inner().unwrap();
        let all: BTreeSet<String> = super::ALL.iter().map(|s| s.to_string()).collect();
        assert_eq!(described, all);
    }

    #[test]
    fn float_counters_are_typed_counters_in_the_exposition() {
        let text = "# HELP pai_model_cost_usd_total x\n# TYPE pai_model_cost_usd_total gauge\npai_model_cost_usd_total{kind=\"tag\"} 0.5\n# TYPE pai_queue_depth gauge\n";
        let fixed = super::prometheus_text(text.to_string());
        assert!(
            fixed.contains("# TYPE pai_model_cost_usd_total counter\n"),
            "{fixed}"
        );
        assert!(fixed.contains("# TYPE pai_queue_depth gauge\n"), "{fixed}");
    }
}
