//! Metric names and descriptions. Everything is recorded through the `metrics` facade: `pai`
//! installs a Prometheus recorder (`GET /metrics`), the Lambdas an Embedded Metric Format one,
//! so instrumented code is the same everywhere.

pub const MODEL_LATENCY: &str = "pai_model_latency_seconds";
pub const MODEL_ERRORS: &str = "pai_model_errors_total";
pub const TOKENS_IN: &str = "pai_model_tokens_in_total";
pub const TOKENS_OUT: &str = "pai_model_tokens_out_total";
pub const CACHE_HITS: &str = "pai_cache_hits_total";
pub const CACHE_MISSES: &str = "pai_cache_misses_total";
pub const CHUNKS_EMBEDDED: &str = "pai_chunks_embedded_total";
pub const DOCUMENTS_TAGGED: &str = "pai_documents_tagged_total";
pub const JOB_DURATION: &str = "pai_job_duration_seconds";
pub const PAPERLESS_ERRORS: &str = "pai_paperless_errors_total";
pub const MESSAGES_FAILED: &str = "pai_messages_failed_total";
pub const CHAT_LATENCY: &str = "pai_chat_latency_seconds";
pub const MODEL_CONCURRENCY_LIMIT: &str = "pai_model_concurrency_limit";
pub const MODEL_IN_FLIGHT: &str = "pai_model_calls_in_flight";

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
}
