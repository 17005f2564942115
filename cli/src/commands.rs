//! The `pai` commands: each builds the embedded application from the configuration and calls
//! the same use cases the HTTP API and the Lambdas call.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use include_dir::{Dir, include_dir};
use shared::config::{Settings, Source};
use shared::embedded::{LocalApp, ingest_bytes, wait_for_jobs};
use shared::http::{ApiState, router};
use shared::pipeline::chat::{ChatFilters, ChatRequest, ask as chat};
use tokio::sync::watch;

use crate::output;

/// The bundled sample corpus and its taxonomy (compiled in, so `pai demo` runs anywhere).
static SAMPLES: Dir = include_dir!("$CARGO_MANIFEST_DIR/samples");

/// The demo's two questions: one in English, one in German.
pub const DEMO_QUESTIONS: [&str; 2] = [
    "How much did I pay the plumber in 2025?",
    "Wie viel Kaution leistet der Mieter laut Mietvertrag?",
];

/// The variables `main` took from `.env` (set once, before any command runs).
static DOTENV_NAMES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

pub fn set_dotenv_names(names: Vec<String>) {
    let _ = DOTENV_NAMES.set(names);
}

fn settings_from_env() -> Result<Settings> {
    let mut settings = Settings::from_env().map_err(|e| anyhow!("configuration error: {e}"))?;
    if let Some(names) = DOTENV_NAMES.get() {
        settings.mark_sources(names.iter().map(String::as_str), Source::DotEnv);
    }
    Ok(settings)
}

/// How log lines are written (`LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines; colour only when stderr is a terminal.
    Text,
    /// One JSON object a line, with the job and document ids of the current spans.
    Json,
}

/// Reads `LOG_FORMAT`: `text` (or unset) or `json`.
pub fn log_format(value: Option<&str>) -> Result<LogFormat> {
    match value.map(str::trim) {
        None | Some("") | Some("text") => Ok(LogFormat::Text),
        Some("json") => Ok(LogFormat::Json),
        Some(other) => Err(anyhow!(
            "configuration error: LOG_FORMAT: {other:?} is neither \"text\" nor \"json\""
        )),
    }
}

fn init_logging(default_level: &str) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::prelude::*;
    let format = match log_format(std::env::var("LOG_FORMAT").ok().as_deref()) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let lines = match format {
        LogFormat::Json => lines.json().with_current_span(true).boxed(),
        // A log file or a pipe gets no colour codes.
        LogFormat::Text => lines.with_ansi(std::io::stderr().is_terminal()).boxed(),
    };
    let registry = tracing_subscriber::registry().with(lines.with_filter(filter));
    // Spans go to OTLP at info whatever RUST_LOG says: the log's level is not the trace's.
    #[cfg(feature = "otel")]
    let registry =
        registry.with(traces_layer().with_filter(tracing_subscriber::filter::LevelFilter::INFO));
    registry.init();
}

/// The OTLP layer when `OTEL_EXPORTER_OTLP_ENDPOINT` is set; a bad setting stops start-up.
#[cfg(feature = "otel")]
fn traces_layer<S>() -> Option<Box<dyn tracing_subscriber::Layer<S> + Send + Sync>>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a> + Send + Sync,
{
    match shared::telemetry::layer("pai") {
        Ok(layer) => layer,
        Err(e) => {
            eprintln!("configuration error: {e}");
            std::process::exit(2);
        }
    }
}

fn install_metrics() -> Result<metrics_exporter_prometheus::PrometheusHandle> {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("installing the metrics recorder")?;
    shared::metrics::describe();
    Ok(handle)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

pub async fn serve() -> Result<()> {
    let settings = settings_from_env()?;
    settings
        .check_serve()
        .map_err(|e| anyhow!("configuration error: {e}"))?;
    init_logging("info");
    let metrics = install_metrics()?;
    let addr: SocketAddr = format!("{}:{}", settings.bind, settings.port)
        .parse()
        .context("BIND/PORT")?;
    let public_url = settings.public_url.clone();
    let app = LocalApp::build(settings)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    let (stop, stopped) = watch::channel(false);
    let mut workers = app.start_workers(stopped.clone());
    workers.push(app.start_queue_gauges(stopped.clone()));
    workers.extend(app.start_sync_timer(stopped));
    let state = ApiState::new(
        app.svc.clone(),
        public_url.unwrap_or_else(|| format!("http://{local}")),
        Some(Arc::new(move || {
            shared::metrics::prometheus_text(metrics.render())
        })),
    );
    if app.svc.paperless.is_some() {
        match shared::pipeline::access::check(&app.svc).await {
            // Log lines (stderr, in LOG_FORMAT): stdout's first line stays the address.
            Ok(report) if report.ok() => tracing::info!("{}", report.summary()),
            Ok(report) => tracing::warn!("{} (see `pai check`)", report.summary()),
            Err(e) => tracing::warn!(error = %e, "could not check the Paperless token"),
        }
    }
    println!(
        "pai listening on http://{local} (data in {}, model {}, embeddings {})",
        app.svc.settings.data_dir.display(),
        app.svc.names.model,
        app.svc.names.space
    );
    let _ = std::io::stdout().flush();
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving")?;
    let _ = stop.send(true);
    for w in workers {
        let _ = w.await;
    }
    // The workers have stopped: their last spans are exported before the process ends.
    shared::telemetry::shutdown_async().await;
    Ok(())
}

/// Files to ingest under the given paths (folders recursively), in a stable order.
fn collect_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).with_context(|| format!("cannot read {}", p.display()))?;
        if meta.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(p)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .collect();
            entries.sort();
            out.extend(collect_files(&entries)?.into_iter().filter(|f| {
                matches!(
                    f.extension().and_then(|e| e.to_str()),
                    Some("txt" | "md" | "markdown" | "pdf")
                )
            }));
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// Runs the pipeline on `files` (name, bytes) with the workers, showing progress.
async fn run_pipeline(
    app: &LocalApp,
    files: Vec<(String, Vec<u8>)>,
) -> Result<Vec<shared::domain::Job>> {
    let (stop, stopped) = watch::channel(false);
    let workers = app.start_workers(stopped);
    let total = files.len();
    let mut ids = Vec::with_capacity(total);
    for (name, bytes) in files {
        match ingest_bytes(&app.svc, &name, &bytes).await {
            Ok(job) => ids.push(job.id),
            Err(e) => eprintln!("  skipped {name}: {e}"),
        }
    }
    // A terminal shows one line counting up; a log file or pipe gets the final count only
    // (carriage returns would make it one long line).
    let live = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let jobs = wait_for_jobs(&app.svc, &ids, |done, total| {
        if live {
            eprint!("\r  processed {done}/{total} documents");
            let _ = std::io::stderr().flush();
        }
    })
    .await?;
    match live {
        true => eprintln!(),
        false => eprintln!("  processed {}/{} documents", jobs.len(), ids.len()),
    }
    let _ = stop.send(true);
    for w in workers {
        let _ = w.await;
    }
    Ok(jobs)
}

pub async fn demo(data_dir: Option<PathBuf>) -> Result<()> {
    init_logging("warn");
    let temporary = data_dir.is_none();
    let dir = data_dir
        .unwrap_or_else(|| std::env::temp_dir().join(format!("pai-demo-{}", std::process::id())));
    let vars: HashMap<String, String> = [
        ("DATA_DIR", dir.display().to_string()),
        ("LLM_PROVIDER", "lexical".into()),
        ("WORKERS", "4".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let settings = Settings::from_map(&vars).map_err(|e| anyhow!("{e}"))?;
    std::fs::create_dir_all(&dir)?;
    let taxonomy = SAMPLES
        .get_file("taxonomy.json")
        .ok_or_else(|| anyhow!("the build has no sample taxonomy"))?;
    std::fs::write(dir.join("taxonomy.json"), taxonomy.contents())?;
    let app = LocalApp::build(settings)?;
    let docs = SAMPLES
        .get_dir("documents")
        .ok_or_else(|| anyhow!("the build has no sample documents"))?;
    let mut files: Vec<(String, Vec<u8>)> = docs
        .files()
        .map(|f| {
            (
                f.path()
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
                f.contents().to_vec(),
            )
        })
        .collect();
    files.sort();
    println!(
        "pai demo: {} sample documents, provider {} (offline), data in {}\n",
        files.len(),
        app.svc.names.model,
        dir.display()
    );
    let started = Instant::now();
    let jobs = run_pipeline(&app, files).await?;
    let elapsed = started.elapsed();
    output::print_jobs(&app.svc, &jobs).await?;
    println!(
        "\n{} documents chunked, embedded, indexed and tagged in {:.2} s ({:.0} documents/s)\n",
        jobs.len(),
        elapsed.as_secs_f64(),
        jobs.len() as f64 / elapsed.as_secs_f64().max(1e-9)
    );
    for q in DEMO_QUESTIONS {
        let reply = chat(
            &app.svc,
            &ChatRequest {
                question: q.into(),
                filters: None,
                document_id: None,
                session_id: None,
            },
            None,
        )
        .await?;
        output::print_answer(q, &reply);
    }
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

pub async fn ingest(paths: Vec<PathBuf>) -> Result<()> {
    init_logging("warn");
    let app = LocalApp::build(settings_from_env()?)?;
    let files = collect_files(&paths)?;
    if files.is_empty() {
        bail!("no .txt, .md or .pdf files under the given paths");
    }
    let mut loaded = Vec::with_capacity(files.len());
    for f in &files {
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        loaded.push((
            name,
            std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?,
        ));
    }
    println!(
        "ingesting {} files into {}",
        loaded.len(),
        app.svc.settings.data_dir.display()
    );
    let jobs = run_pipeline(&app, loaded).await?;
    output::print_jobs(&app.svc, &jobs).await
}

#[allow(clippy::too_many_arguments)]
pub async fn ask(
    question: String,
    tags: Vec<String>,
    correspondent: Option<String>,
    document_type: Option<String>,
    from: Option<String>,
    to: Option<String>,
    document: Option<String>,
) -> Result<()> {
    init_logging("warn");
    let app = LocalApp::build(settings_from_env()?)?;
    let any_filter = !tags.is_empty()
        || correspondent.is_some()
        || document_type.is_some()
        || from.is_some()
        || to.is_some();
    let filters = any_filter.then_some(ChatFilters {
        tags,
        correspondent,
        document_type,
        created_from: from,
        created_to: to,
    });
    let req = ChatRequest {
        question: question.clone(),
        filters,
        document_id: document.map(serde_json::Value::String),
        session_id: None,
    };
    let reply = chat(&app.svc, &req, None).await?;
    output::print_answer(&question, &reply);
    Ok(())
}

pub async fn jobs(limit: usize) -> Result<()> {
    let app = LocalApp::build(settings_from_env()?)?;
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = app
            .svc
            .state
            .list(shared::state_keys::JOBS, after.as_deref(), 500)
            .await?;
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        all.extend(page);
        if all.len() > limit * 4 {
            all.drain(..all.len() - limit);
        }
    }
    let start = all.len().saturating_sub(limit);
    let jobs: Vec<shared::domain::Job> = all[start..]
        .iter()
        .filter_map(|(_, v)| serde_json::from_value(v.clone()).ok())
        .collect();
    if jobs.is_empty() {
        println!("no jobs in {}", data_dir_of(&app).display());
    }
    output::print_job_table(&jobs);
    Ok(())
}

fn data_dir_of(app: &LocalApp) -> &Path {
    &app.svc.settings.data_dir
}

fn doc_id(s: &str) -> Result<shared::domain::DocId> {
    s.parse().map_err(|e: String| anyhow!(e))
}

pub async fn suggestions(document: String) -> Result<()> {
    let app = LocalApp::build(settings_from_env()?)?;
    let doc = doc_id(&document)?;
    let record = app
        .svc
        .state
        .get(&shared::pipeline::tag::suggestion_key(&doc))
        .await?
        .ok_or_else(|| anyhow!("no suggestion for document {doc}"))?;
    println!("{}", serde_json::to_string_pretty(&record.value)?);
    Ok(())
}

pub async fn approve(document: String, edits: shared::pipeline::tag::Edits) -> Result<()> {
    let app = LocalApp::build(settings_from_env()?)?;
    let record =
        shared::pipeline::tag::approve(&app.svc, &app.svc.writer, &doc_id(&document)?, edits)
            .await?;
    println!(
        "applied to document {document}: {}",
        serde_json::to_string(&record.applied)?
    );
    Ok(())
}

pub async fn undo(document: String) -> Result<()> {
    let app = LocalApp::build(settings_from_env()?)?;
    let record =
        shared::pipeline::tag::undo(&app.svc, &app.svc.writer, &doc_id(&document)?).await?;
    println!(
        "restored document {document}: undid {}",
        serde_json::to_string(&record.undone)?
    );
    Ok(())
}

/// `pai retry`: the jobs are queued again here; `pai serve` (or its running workers, which
/// share the data folder) processes them.
pub async fn retry(jobs: Vec<String>, all: bool) -> Result<()> {
    use shared::pipeline::healing;
    init_logging("warn");
    let app = LocalApp::build(settings_from_env()?)?;
    let retried = if all {
        healing::retry_failed(&app.svc).await?
    } else {
        let mut retried = Vec::new();
        let mut refused = Vec::new();
        for id in &jobs {
            match healing::retry_job(&app.svc, id).await {
                Ok(_) => retried.push(id.clone()),
                Err(healing::RetryError::Pipeline(e)) => return Err(e.into()),
                Err(e) => refused.push(e.to_string()),
            }
        }
        if !refused.is_empty() {
            for r in &refused {
                eprintln!("{r}");
            }
            if retried.is_empty() {
                return Err(anyhow!("no job was queued again"));
            }
        }
        retried
    };
    println!("queued {} failed jobs again", retried.len());
    for id in &retried {
        println!("  {id}");
    }
    if !retried.is_empty() {
        println!("they are processed by `pai serve`; follow them with `pai jobs`");
    }
    Ok(())
}

pub async fn sync() -> Result<()> {
    init_logging("warn");
    let app = LocalApp::build(settings_from_env()?)?;
    let report = shared::pipeline::sync::run(&app.svc).await?;
    println!(
        "queued {} documents, removed {} deleted ones; next sync starts after {}",
        report.queued,
        report.removed,
        report.cursor.as_deref().unwrap_or("the beginning")
    );
    if report.queued > 0 {
        println!("the documents are processed by `pai serve` (or the next `pai ingest`)");
    }
    Ok(())
}

pub async fn retag(
    ids: Vec<u64>,
    tag: Option<String>,
    since: Option<String>,
    all: bool,
    dry_run: bool,
) -> Result<()> {
    use shared::pipeline::tag::{RetagSelection, plan_retag};
    init_logging("warn");
    let chosen = [!ids.is_empty(), tag.is_some(), since.is_some(), all]
        .iter()
        .filter(|c| **c)
        .count();
    if chosen != 1 {
        bail!("name the documents: IDs, --tag NAME, --since YYYY-MM-DD or --all (one of them)");
    }
    let selection = if let Some(t) = tag {
        RetagSelection::Tag(t)
    } else if let Some(d) = since {
        RetagSelection::Since(shared::text::calendar_date(&d).map_err(|e| anyhow!("--since: {e}"))?)
    } else if all {
        RetagSelection::All
    } else {
        RetagSelection::Ids(ids)
    };
    let app = LocalApp::build(settings_from_env()?)?;
    let plan = plan_retag(&app.svc, &selection).await?;
    let n = plan.documents.len();
    println!(
        "{n} documents to re-tag, about {} model tokens ({} per document){}",
        plan.estimated_tokens,
        plan.estimated_tokens / (n.max(1) as u64),
        if plan.excluded.is_empty() {
            String::new()
        } else {
            format!(
                "; {} skipped by INCLUDE_TAGS/EXCLUDE_TAGS",
                plan.excluded.len()
            )
        }
    );
    if dry_run || n == 0 {
        return Ok(());
    }
    for id in &plan.documents {
        shared::pipeline::tag::retag(&app.svc, &shared::domain::DocId::Paperless(*id)).await?;
    }
    println!("queued {n} documents: `pai serve` processes them");
    Ok(())
}

pub async fn check() -> Result<()> {
    init_logging("warn");
    let app = LocalApp::build(settings_from_env()?)?;
    let report = shared::pipeline::access::check(&app.svc).await?;
    println!("{}", report.summary());
    for line in &report.lines {
        println!(
            "  {} {:<22} {}{}",
            if line.granted { "ok     " } else { "MISSING" },
            line.permission,
            line.needed_for,
            if line.required && !line.granted {
                " (required)"
            } else {
                ""
            }
        );
    }
    if !report.user.is_superuser {
        println!(
            "  note: documents owned by other users and not shared with {:?} answer 404 to this token and are not tagged",
            report.user.username
        );
    }
    if !report.ok() {
        bail!("the token lacks permissions the policy requires");
    }
    Ok(())
}
