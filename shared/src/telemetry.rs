//! Traces: OpenTelemetry spans exported over OTLP/HTTP (protobuf) when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, with the
//! standard variables (`OTEL_SERVICE_NAME`, `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_TRACES_SAMPLER`,
//! `OTEL_BSP_*`); unset, no layer is installed and every function here is a cheap no-op.
//!
//! One trace per document version: ingest opens it, its W3C trace context travels in every
//! queue message (`TraceContext`) and on the job record (for retries), and each stage continues
//! it. The job and document ids ride in the OpenTelemetry context, so every span under a stage
//! (model calls, Paperless calls) carries them too, not only the stage's own span.
//!
//! Without the `otel` cargo feature the same functions exist and do nothing.

use crate::domain::TraceContext;

/// The job and document a span works for: set as `job_id`/`doc_id` on it and on every span
/// beneath it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobIds {
    pub job_id: String,
    pub doc_id: Option<String>,
}

impl JobIds {
    pub fn new(job_id: &str, doc_id: Option<String>) -> JobIds {
        JobIds {
            job_id: job_id.to_string(),
            doc_id,
        }
    }
}

#[cfg(feature = "otel")]
mod otel {
    use std::collections::HashMap;
    use std::sync::OnceLock;
    use std::time::Duration;

    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
    use opentelemetry::{Context, KeyValue};
    use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use opentelemetry_sdk::trace::{
        BatchSpanProcessor, SdkTracerProvider, Span, SpanData, SpanProcessor,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;

    use super::{JobIds, TraceContext};

    /// The provider, once installed: flushed at the end of a Lambda invocation and on shutdown.
    static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

    pub fn active() -> bool {
        PROVIDER.get().is_some()
    }

    /// Whether the environment asks for traces: an OTLP endpoint is set and the SDK is not
    /// disabled.
    pub fn wanted() -> bool {
        let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
        let disabled =
            std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.trim().eq_ignore_ascii_case("true"));
        !disabled
            && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
    }

    /// Copies the `JobIds` of the context a span starts in onto the span, and hands the span to
    /// the batch processor.
    #[derive(Debug)]
    struct WithJobIds(BatchSpanProcessor);

    impl SpanProcessor for WithJobIds {
        fn on_start(&self, span: &mut Span, cx: &Context) {
            use opentelemetry::trace::Span as _;
            if let Some(ids) = cx.get::<JobIds>() {
                span.set_attribute(KeyValue::new("job_id", ids.job_id.clone()));
                if let Some(doc) = &ids.doc_id {
                    span.set_attribute(KeyValue::new("doc_id", doc.clone()));
                }
            }
            self.0.on_start(span, cx)
        }
        /// A stage's span has its ids as fields too: each key is kept once.
        fn on_end(&self, mut span: SpanData) {
            let mut seen = std::collections::HashSet::new();
            span.attributes.retain(|kv| seen.insert(kv.key.clone()));
            self.0.on_end(span)
        }
        fn force_flush(&self) -> OTelSdkResult {
            self.0.force_flush()
        }
        fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
            self.0.shutdown_with_timeout(timeout)
        }
        fn set_resource(&mut self, resource: &Resource) {
            self.0.set_resource(resource)
        }
    }

    /// The exporter's HTTP client: the workspace's reqwest (rustls), run on a runtime of its
    /// own. The SDK's batch processor exports from its own thread with a blocking executor;
    /// a runtime of the exporter's own means a flush called from a busy (or single-threaded)
    /// application runtime never waits on itself.
    #[derive(Debug)]
    struct ExportClient {
        http: reqwest::Client,
        runtime: tokio::runtime::Handle,
    }

    #[async_trait::async_trait]
    impl opentelemetry_http::HttpClient for ExportClient {
        async fn send_bytes(
            &self,
            request: http::Request<bytes::Bytes>,
        ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
            let http = self.http.clone();
            let sent = self.runtime.spawn(async move {
                let (parts, body) = request.into_parts();
                let mut req = http.request(parts.method, parts.uri.to_string());
                for (name, value) in &parts.headers {
                    req = req.header(name, value);
                }
                let resp = req.body(body).send().await?;
                let mut out = http::Response::builder().status(resp.status());
                for (name, value) in resp.headers() {
                    out = out.header(name, value);
                }
                let body = resp.bytes().await?;
                Ok::<_, opentelemetry_http::HttpError>(out.body(body)?)
            });
            sent.await?
        }
    }

    /// A runtime with one thread for the exporter's requests, kept for the process.
    fn export_runtime() -> Result<tokio::runtime::Handle, String> {
        static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
        if let Some(r) = RUNTIME.get() {
            return Ok(r.handle().clone());
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("otlp-export")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the OTLP exporter's runtime: {e}"))?;
        Ok(RUNTIME.get_or_init(|| runtime).handle().clone())
    }

    pub fn layer<S>(
        default_service: &str,
    ) -> Result<Option<Box<dyn tracing_subscriber::Layer<S> + Send + Sync>>, String>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a> + Send + Sync,
    {
        if !wanted() {
            return Ok(None);
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("cannot build the OTLP exporter's HTTP client: {e}"))?;
        let client = ExportClient {
            http,
            runtime: export_runtime()?,
        };
        // Endpoint, headers, timeout and compression come from the OTEL_EXPORTER_OTLP_*
        // variables, read by the exporter itself.
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_http_client(client)
            .build()
            .map_err(|e| format!("OTEL_EXPORTER_OTLP_ENDPOINT: {e}"))?;
        let mut resource = Resource::builder();
        if std::env::var("OTEL_SERVICE_NAME").is_err() {
            resource = resource.with_service_name(default_service.to_string());
        }
        let provider = SdkTracerProvider::builder()
            .with_span_processor(WithJobIds(BatchSpanProcessor::builder(exporter).build()))
            .with_resource(resource.build())
            .build();
        let tracer = provider.tracer("paperless-ai-serverless");
        if PROVIDER.set(provider).is_err() {
            return Err("traces were set up twice".into());
        }
        Ok(Some(Box::new(
            tracing_opentelemetry::layer().with_tracer(tracer),
        )))
    }

    pub fn current() -> Option<TraceContext> {
        if !active() {
            return None;
        }
        let cx = tracing::Span::current().context();
        if !cx.span().span_context().is_valid() {
            return None;
        }
        let mut carrier = HashMap::new();
        TraceContextPropagator::new().inject_context(&cx, &mut carrier);
        Some(TraceContext {
            traceparent: carrier.remove("traceparent")?,
            tracestate: carrier.remove("tracestate").filter(|s| !s.is_empty()),
        })
    }

    pub fn continue_trace(span: &tracing::Span, from: Option<&TraceContext>, ids: JobIds) {
        if !active() {
            return;
        }
        let parent = match from {
            Some(t) => {
                let mut carrier = HashMap::new();
                carrier.insert("traceparent".to_string(), t.traceparent.clone());
                if let Some(state) = &t.tracestate {
                    carrier.insert("tracestate".to_string(), state.clone());
                }
                // A malformed traceparent (messages are outside input) extracts to nothing:
                // the stage starts a trace of its own.
                TraceContextPropagator::new().extract(&carrier)
            }
            None => Context::new(),
        };
        let _ = span.set_parent(parent.with_value(ids));
    }

    /// Exports what is buffered now. Blocks until done; see `flush_async` in async code.
    pub fn flush() {
        if let Some(p) = PROVIDER.get()
            && let Err(e) = p.force_flush()
        {
            tracing::debug!(error = %e, "could not export the spans");
        }
    }

    pub fn shutdown() {
        if let Some(p) = PROVIDER.get()
            && let Err(e) = p.shutdown()
        {
            tracing::debug!(error = %e, "could not export the last spans");
        }
    }
}

#[cfg(feature = "otel")]
pub use otel::{active, continue_trace, current, flush, layer, shutdown, wanted};

#[cfg(not(feature = "otel"))]
mod off {
    use super::{JobIds, TraceContext};

    pub fn active() -> bool {
        false
    }
    pub fn wanted() -> bool {
        false
    }
    pub fn current() -> Option<TraceContext> {
        None
    }
    pub fn continue_trace(_: &tracing::Span, _: Option<&TraceContext>, _: JobIds) {}
    pub fn flush() {}
    pub fn shutdown() {}
}

#[cfg(not(feature = "otel"))]
pub use off::{active, continue_trace, current, flush, shutdown, wanted};

/// A Lambda's subscriber: the runtime's default log lines (`AWS_LAMBDA_LOG_FORMAT`,
/// `AWS_LAMBDA_LOG_LEVEL` or `RUST_LOG`, to stdout without timestamps: CloudWatch adds them)
/// and, when an OTLP endpoint is set (the ADOT collector layer listens on localhost:4318),
/// the spans. A bad OTLP setting is logged, not fatal: traces are not worth a failed start.
#[cfg(feature = "lambda")]
pub fn init_lambda_subscriber(function: &str) {
    use tracing_subscriber::filter::LevelFilter;
    use tracing_subscriber::prelude::*;
    let filter = lambda_log_filter(
        std::env::var("AWS_LAMBDA_LOG_LEVEL").ok().as_deref(),
        std::env::var("RUST_LOG").ok().as_deref(),
    );
    let json = std::env::var("AWS_LAMBDA_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let lines = lambda_log_lines(json, std::io::stdout);
    let registry = tracing_subscriber::registry().with(lines.with_filter(filter));
    #[cfg(feature = "otel")]
    let (registry, failed) = {
        let (layer, failed) = match layer(&format!("pai-{function}")) {
            Ok(layer) => (layer, None),
            Err(e) => (None, Some(e)),
        };
        (registry.with(layer.with_filter(LevelFilter::INFO)), failed)
    };
    #[cfg(not(feature = "otel"))]
    let failed: Option<String> = {
        let _ = function;
        None
    };
    if registry.try_init().is_ok()
        && let Some(e) = failed
    {
        tracing::error!(error = %e, "traces are not exported");
    }
}

/// A Lambda's log lines, as text or JSON objects. Plain text: CloudWatch shows terminal
/// colour codes as they are (`\x1b[31mERROR\x1b[0m`), and adds its own timestamps.
#[cfg(feature = "lambda")]
fn lambda_log_lines<S, W>(
    json: bool,
    writer: W,
) -> Box<dyn tracing_subscriber::Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    use tracing_subscriber::Layer;
    let lines = tracing_subscriber::fmt::layer()
        .with_target(false)
        .without_time()
        .with_ansi(false)
        .with_writer(writer);
    match json {
        true => lines.json().boxed(),
        false => lines.boxed(),
    }
}

/// The log lines' filter: `RUST_LOG`'s `level` and `target=level` directives
/// (`info,aws_smithy_runtime=debug`), the level by default coming from Lambda's logging
/// configuration (`AWS_LAMBDA_LOG_LEVEL`) when it is set, else `info`. A directive that does
/// not parse is skipped, not the whole filter. By target, not `EnvFilter`'s span
/// and field patterns: those need a regex engine in every binary for a filter nobody sets there.
#[cfg(feature = "lambda")]
fn lambda_log_filter(
    lambda_level: Option<&str>,
    rust_log: Option<&str>,
) -> tracing_subscriber::filter::Targets {
    use std::str::FromStr;
    use tracing_subscriber::filter::{LevelFilter, Targets};
    // A bare level parses to a filter with only a default, `target=level` to one without.
    let directives: Vec<Targets> = rust_log
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .filter_map(|d| Targets::from_str(d).ok())
        .collect();
    let default = lambda_level
        .and_then(|l| LevelFilter::from_str(l.trim()).ok())
        .or_else(|| {
            directives
                .iter()
                .filter_map(Targets::default_level)
                .next_back()
        })
        .unwrap_or(LevelFilter::INFO);
    directives
        .into_iter()
        .fold(Targets::new().with_default(default), |filter, targets| {
            filter.with_targets(targets)
        })
}

/// Exports the buffered spans without holding up the async runtime: what a Lambda does at the
/// end of each invocation (the runtime may freeze the process right after).
pub async fn flush_async() {
    if active() {
        let _ = tokio::task::spawn_blocking(flush).await;
    }
}

/// Exports the last spans when the process stops.
pub async fn shutdown_async() {
    if active() {
        let _ = tokio::task::spawn_blocking(shutdown).await;
    }
}

/// `METHOD path` with the ids in a Paperless API path replaced by `{id}`: the route a span
/// is named by, so one route is one series whatever document it touched.
pub fn route_template(path: &str) -> String {
    path.trim_start_matches('/')
        .split('/')
        .map(|s| {
            if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                "{id}"
            } else {
                s
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// A model's provider and model from its name (`openai/gpt-4o-mini`,
/// `openai/text-embedding-3-small/1536`).
pub fn provider_and_model(name: &str) -> (&str, &str) {
    let mut parts = name.splitn(3, '/');
    let provider = parts.next().unwrap_or("");
    (provider, parts.next().unwrap_or(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "lambda")]
    #[test]
    fn a_lambda_logs_plain_lines_and_json_objects() {
        use std::sync::{Arc, Mutex};
        use tracing_subscriber::prelude::*;
        #[derive(Clone, Default)]
        struct Captured(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Captured {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        for json in [false, true] {
            let out = Captured::default();
            let writer = out.clone();
            let subscriber =
                tracing_subscriber::registry().with(lambda_log_lines(json, move || writer.clone()));
            tracing::subscriber::with_default(subscriber, || {
                tracing::error!(error = "refused", "cold start failed");
            });
            let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
            assert!(text.contains("cold start failed"), "{text}");
            assert!(
                !text.contains('\x1b'),
                "colour codes in CloudWatch: {text:?}"
            );
            if json {
                let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
                assert_eq!(line["level"], "ERROR");
                assert_eq!(line["fields"]["error"], "refused");
            }
        }
    }

    #[cfg(feature = "lambda")]
    #[test]
    fn a_lambda_filters_its_log_by_target_and_level() {
        use tracing::Level;
        let on = |f: &tracing_subscriber::filter::Targets, target: &str, level: Level| {
            f.would_enable(target, &level)
        };
        let default = lambda_log_filter(None, None);
        assert!(on(&default, "shared::pipeline", Level::INFO));
        assert!(!on(&default, "shared::pipeline", Level::DEBUG));

        let tuned = lambda_log_filter(None, Some("warn, aws_smithy_runtime=debug,shared=trace"));
        assert!(!on(&tuned, "lambda_runtime", Level::INFO));
        assert!(on(&tuned, "aws_smithy_runtime::client", Level::DEBUG));
        assert!(on(&tuned, "shared::pipeline::tag", Level::TRACE));

        // Lambda's logging configuration sets the level; RUST_LOG still tunes targets.
        let both = lambda_log_filter(Some("ERROR"), Some("debug,shared=info"));
        assert!(!on(&both, "lambda_runtime", Level::WARN));
        assert!(on(&both, "shared::lambda", Level::INFO));

        // What EnvFilter alone understands (span and field patterns) or garbage is skipped,
        // directive by directive, not the whole filter.
        let odd = lambda_log_filter(
            Some("nonsense"),
            Some("shared[run{id=1}]=trace,no=such,aws_sdk_s3=warn"),
        );
        assert!(on(&odd, "shared", Level::INFO));
        assert!(!on(&odd, "shared", Level::TRACE));
        assert!(!on(&odd, "aws_sdk_s3", Level::INFO));
    }

    #[test]
    fn routes_name_no_document() {
        assert_eq!(route_template("documents/42/"), "documents/{id}/");
        assert_eq!(route_template("/tags/"), "tags/");
        assert_eq!(
            route_template("documents/7/notes/12"),
            "documents/{id}/notes/{id}"
        );
        assert_eq!(route_template("ui_settings/"), "ui_settings/");
    }

    #[test]
    fn provider_and_model_come_from_the_name() {
        assert_eq!(
            provider_and_model("openai/gpt-4o-mini"),
            ("openai", "gpt-4o-mini")
        );
        assert_eq!(
            provider_and_model("openai/text-embedding-3-small/1536"),
            ("openai", "text-embedding-3-small")
        );
        assert_eq!(provider_and_model("lexical"), ("lexical", ""));
    }
}
