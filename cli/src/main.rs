//! `pai`: paperless-ai-serverless in one process on an embedded store. `serve` runs the HTTP API
//! and the workers; `demo` runs the real pipeline on bundled sample documents; `ingest`, `ask`
//! and `jobs` work on the data folder directly. Configuration is the environment (and `.env`).

mod commands;
mod output;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "pai",
    version,
    about = "AI tagging and document chat for Paperless-ngx, in one process"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API (webhook, uploads, jobs, chat, metrics) and run the workers.
    Serve,
    /// Run the whole pipeline on the bundled sample documents, offline, and ask two questions.
    Demo {
        /// Keep the demo's data in this folder instead of a temporary one.
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
    },
    /// Ingest files or folders (text, Markdown, PDF with a text layer) into DATA_DIR.
    Ingest {
        #[arg(required = true)]
        paths: Vec<std::path::PathBuf>,
    },
    /// Ask the archive in DATA_DIR a question; the answer cites its documents.
    Ask {
        question: String,
        /// Only documents with this tag (repeatable).
        #[arg(long = "tag")]
        tags: Vec<String>,
        #[arg(long)]
        correspondent: Option<String>,
        #[arg(long)]
        document_type: Option<String>,
        /// Created on or after YYYY-MM-DD.
        #[arg(long)]
        from: Option<String>,
        /// Created on or before YYYY-MM-DD.
        #[arg(long)]
        to: Option<String>,
        /// Only this document.
        #[arg(long)]
        document: Option<String>,
    },
    /// Queue documents added or changed in Paperless since the last sync; forget deleted ones.
    Sync,
    /// Show the last suggestion for a document, what was applied and what it replaced.
    Suggestions { document: String },
    /// Apply a document's stored suggestion (review mode) to Paperless, optionally edited.
    Approve {
        document: String,
        #[arg(long)]
        title: Option<String>,
        /// Replace the suggested tags (repeatable).
        #[arg(long = "tag")]
        tags: Vec<String>,
        #[arg(long)]
        correspondent: Option<String>,
        #[arg(long)]
        document_type: Option<String>,
        /// YYYY-MM-DD.
        #[arg(long)]
        created: Option<String>,
    },
    /// Restore what the applied suggestion replaced in Paperless.
    Undo { document: String },
    /// Run failed (or dead-lettered) jobs again: the given ones, or with --all every one.
    Retry {
        /// Job ids, as `pai jobs` and `GET /jobs/{id}` show them.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        jobs: Vec<String>,
        #[arg(long)]
        all: bool,
    },
    /// Tag Paperless documents again, whatever the loop guard says; prints how many documents
    /// and an estimate of the model tokens first. Queued for `pai serve`.
    Retag {
        /// Paperless document ids.
        ids: Vec<u64>,
        /// Every document carrying this tag.
        #[arg(long)]
        tag: Option<String>,
        /// Every document modified on or after this day (YYYY-MM-DD).
        #[arg(long)]
        since: Option<String>,
        /// Every document.
        #[arg(long)]
        all: bool,
        /// Only print the count and the estimate.
        #[arg(long)]
        dry_run: bool,
    },
    /// Tell what the Paperless token may and may not do for the configured policy.
    Check,
    /// List the most recent jobs in DATA_DIR.
    Jobs {
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A `.env` beside the working directory fills in what the environment does not set; the
    // names it filled are remembered so the status page can say where each value came from.
    let from_dotenv: Vec<String> = dotenvy::dotenv_iter()
        .map(|vars| {
            vars.filter_map(Result::ok)
                .map(|(name, _)| name)
                .filter(|name| std::env::var_os(name).is_none())
                .collect()
        })
        .unwrap_or_default();
    let _ = dotenvy::dotenv();
    commands::set_dotenv_names(from_dotenv);
    limit_malloc_arenas();
    // Blocking work is short file I/O (blob writes, reads): a few threads do it; tokio's
    // default of up to 512, each with its own stack and malloc arena, only costs memory.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(16)
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve => commands::serve().await,
            Command::Demo { data_dir } => commands::demo(data_dir).await,
            Command::Ingest { paths } => commands::ingest(paths).await,
            Command::Ask {
                question,
                tags,
                correspondent,
                document_type,
                from,
                to,
                document,
            } => {
                commands::ask(
                    question,
                    tags,
                    correspondent,
                    document_type,
                    from,
                    to,
                    document,
                )
                .await
            }
            Command::Jobs { limit } => commands::jobs(limit).await,
            Command::Sync => commands::sync().await,
            Command::Retry { jobs, all } => commands::retry(jobs, all).await,
            Command::Suggestions { document } => commands::suggestions(document).await,
            Command::Approve {
                document,
                title,
                tags,
                correspondent,
                document_type,
                created,
            } => {
                let edits = shared::pipeline::tag::Edits {
                    title,
                    tags: (!tags.is_empty()).then_some(tags),
                    correspondent,
                    document_type,
                    created,
                    skip: Default::default(),
                };
                commands::approve(document, edits).await
            }
            Command::Undo { document } => commands::undo(document).await,
            Command::Retag {
                ids,
                tag,
                since,
                all,
                dry_run,
            } => commands::retag(ids, tag, since, all, dry_run).await,
            Command::Check => commands::check().await,
        }
    });
    // What a short command traced is exported before it exits (serve has done so already).
    shared::telemetry::shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pai: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// glibc gives every thread that allocates its own malloc arena (up to eight per core), keeps
/// what a thread freed in its arena, and raises its mmap and trim thresholds as large blocks
/// come and go: with tokio's threads and a vector index that grows by doubling, that is
/// several MiB of resident memory doing nothing. One arena (each thread still has its lock-free
/// cache of small blocks) and fixed 128 KiB thresholds return large blocks when freed.
/// `MALLOC_ARENA_MAX` and friends in the environment still win.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: called before any other thread exists; mallopt only sets tunables.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
            libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 128 * 1024);
        }
    }
}
