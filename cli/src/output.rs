//! How `pai` shows suggestions, answers and jobs on a terminal.

use anyhow::Result;
use shared::domain::{Job, JobStatus, StageStatus};
use shared::pipeline::Core;
use shared::pipeline::chat::ChatResponse;
use shared::pipeline::tag::{SuggestionRecord, suggestion_key};

/// One block per job: the document and what was suggested for it (or why it failed).
pub async fn print_jobs(svc: &Core, jobs: &[Job]) -> Result<()> {
    for job in jobs {
        let name = job.filename.clone().unwrap_or_else(|| {
            job.doc_id
                .as_ref()
                .map(|d| d.to_string())
                .unwrap_or_default()
        });
        if job.status() == JobStatus::Failed {
            let reason = job
                .stages
                .values()
                .find(|s| s.status == StageStatus::Failed)
                .and_then(|s| s.detail.clone())
                .unwrap_or_default();
            println!("✗ {name}\n    failed: {reason}");
            continue;
        }
        let record = match &job.doc_id {
            Some(doc) => svc
                .state
                .get(&suggestion_key(doc))
                .await?
                .and_then(|v| serde_json::from_value::<SuggestionRecord>(v.value).ok()),
            None => None,
        };
        println!("✓ {name}");
        let Some(r) = record else {
            println!("    (no suggestion)");
            continue;
        };
        let s = &r.suggestion;
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "—".into());
        println!("    title:         {}", show(&s.title));
        println!("    type:          {}", show(&s.document_type));
        println!("    correspondent: {}", show(&s.correspondent));
        println!("    created:       {}", show(&s.created));
        println!(
            "    tags:          {}",
            if s.tags.is_empty() {
                "—".to_string()
            } else {
                s.tags.join(", ")
            }
        );
        for reason in &r.rejected {
            println!("    refused:       {reason}");
        }
    }
    Ok(())
}

pub fn print_answer(question: &str, reply: &ChatResponse) {
    println!("Q: {question}");
    println!("A: {}", reply.answer.replace('\n', "\n   "));
    for c in &reply.citations {
        let link = c
            .url
            .clone()
            .unwrap_or_else(|| format!("document {}", c.doc_id));
        println!("   [{}] {} ({link})", c.n, c.title);
    }
    println!();
}

pub fn print_job_table(jobs: &[Job]) {
    for j in jobs {
        let stages: Vec<String> = j
            .stages
            .iter()
            .map(|(s, st)| {
                format!(
                    "{}:{}",
                    format!("{s:?}").to_lowercase(),
                    format!("{:?}", st.status).to_lowercase()
                )
            })
            .collect();
        let doc = j
            .doc_id
            .as_ref()
            .map(|d| d.to_string())
            .unwrap_or_else(|| "-".into());
        println!(
            "{}  {:<8}  doc {:<24}  {}",
            j.id,
            format!("{:?}", j.status()).to_lowercase(),
            doc,
            stages.join(" ")
        );
    }
}
