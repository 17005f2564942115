//! `GET /jobs`: the most recent jobs, newest first, filtered by what a user acts on (failed,
//! excluded, waiting, done), for the web UI's Jobs page.
//!
//! Job ids are UUIDv7 (time-ordered), so "newest first" is a reverse range read of the `job/`
//! keys and a page starts after the last id the previous page showed: a page costs the same
//! with ten jobs or a million. A filter reads at most `SCAN_WINDOW` jobs per request and hands
//! back where it stopped, so a rare status never turns one request into a full scan.

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, ApiState};
use crate::domain::{DocId, Job, JobStatus, Stage, StageStatus};
use crate::pipeline::{Core, PipelineError, job_key};

/// Most jobs read to answer one filtered request.
pub const SCAN_WINDOW: usize = 1000;
/// Largest page a client may ask for.
pub const MAX_PAGE: usize = 100;
const DEFAULT_PAGE: usize = 25;

/// What the Jobs page filters on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobClass {
    /// A stage failed: retry it.
    Failed,
    /// Tagging skipped it (policy exclusion, already tagged, unchanged text).
    Excluded,
    /// Queued or running.
    Waiting,
    Done,
}

impl JobClass {
    pub fn of(job: &Job) -> JobClass {
        match job.status() {
            JobStatus::Failed => JobClass::Failed,
            JobStatus::Queued | JobStatus::Running => JobClass::Waiting,
            JobStatus::Done
                if job
                    .stages
                    .get(&Stage::Tag)
                    .is_some_and(|s| s.status == StageStatus::Skipped) =>
            {
                JobClass::Excluded
            }
            JobStatus::Done => JobClass::Done,
        }
    }

    fn name(self) -> &'static str {
        match self {
            JobClass::Failed => "failed",
            JobClass::Excluded => "excluded",
            JobClass::Waiting => "waiting",
            JobClass::Done => "done",
        }
    }

    fn parse(s: &str) -> Result<Option<JobClass>, ApiError> {
        Ok(Some(match s {
            "" | "all" => return Ok(None),
            "failed" => JobClass::Failed,
            "excluded" => JobClass::Excluded,
            "waiting" => JobClass::Waiting,
            "done" => JobClass::Done,
            other => {
                return Err(ApiError::bad_request(format!(
                    "status {other:?} is not all, failed, excluded, waiting or done"
                )));
            }
        }))
    }
}

#[derive(Deserialize)]
pub(super) struct JobsQuery {
    #[serde(default)]
    status: String,
    /// The last job id of the previous page.
    #[serde(default)]
    cursor: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

/// One page of jobs and where the next starts (`None`: there is no older job).
#[derive(Debug)]
pub struct JobPage {
    pub jobs: Vec<Job>,
    pub next_cursor: Option<String>,
    pub scanned: usize,
}

/// Jobs older than `cursor` (a job id), newest first, of `class` if given.
pub async fn list_jobs(
    svc: &Core,
    class: Option<JobClass>,
    cursor: Option<&str>,
    limit: usize,
) -> Result<JobPage, PipelineError> {
    let limit = limit.clamp(1, MAX_PAGE);
    let mut before = cursor.map(job_key);
    let mut jobs = Vec::new();
    let mut scanned = 0;
    loop {
        // Unfiltered: exactly one page. Filtered: bigger reads, bounded by the window.
        let want = match class {
            None => limit - jobs.len(),
            Some(_) => (SCAN_WINDOW - scanned).min(200),
        };
        let items = svc
            .state
            .list_newest(crate::state_keys::JOBS, before.as_deref(), want)
            .await?;
        let exhausted = items.len() < want;
        for (key, value) in items {
            scanned += 1;
            before = Some(key);
            // A job this version cannot read (corrupt or from the future) is skipped, not fatal.
            let Ok(job) = serde_json::from_value::<Job>(value) else {
                continue;
            };
            if class.is_none_or(|c| JobClass::of(&job) == c) {
                jobs.push(job);
                if jobs.len() == limit {
                    break;
                }
            }
        }
        let full = jobs.len() == limit;
        if exhausted && !full {
            return Ok(JobPage {
                jobs,
                next_cursor: None,
                scanned,
            });
        }
        if full || scanned >= SCAN_WINDOW {
            let next_cursor =
                before.map(|k| k.trim_start_matches(crate::state_keys::JOBS).to_string());
            return Ok(JobPage {
                jobs,
                next_cursor,
                scanned,
            });
        }
    }
}

/// A job as a list row: what `GET /jobs/{id}` shows (no counters), its class, and the
/// document's link in Paperless.
pub fn job_row(svc: &Core, job: &Job) -> Value {
    let mut v = serde_json::to_value(job).expect("job serialises");
    let obj = v.as_object_mut().expect("object");
    obj.remove("upload_token");
    obj.insert("status".into(), json!(job.status()));
    obj.insert("class".into(), json!(JobClass::of(job).name()));
    if let (Some(DocId::Paperless(id)), Some(p)) = (&job.doc_id, &svc.paperless) {
        obj.insert("doc_url".into(), json!(p.document_url(*id)));
    }
    v
}

fn valid_cursor(c: &str) -> bool {
    !c.is_empty() && c.len() <= 64 && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

pub(super) async fn jobs(
    State(state): State<ApiState>,
    Query(q): Query<JobsQuery>,
) -> Result<Response, ApiError> {
    let class = JobClass::parse(q.status.trim())?;
    let cursor = q.cursor.as_deref().map(str::trim).filter(|c| !c.is_empty());
    if let Some(c) = cursor
        && !valid_cursor(c)
    {
        return Err(ApiError::bad_request(format!(
            "cursor {c:?} is not a job id"
        )));
    }
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be from 1 to {MAX_PAGE}"
        )));
    }
    let page = list_jobs(&state.svc, class, cursor, limit).await?;
    let rows: Vec<Value> = page.jobs.iter().map(|j| job_row(&state.svc, j)).collect();
    Ok(axum::Json(json!({
        "jobs": rows,
        "next_cursor": page.next_cursor,
        "scanned": page.scanned,
    }))
    .into_response())
}

#[cfg(all(test, feature = "local"))]
mod tests {
    use super::*;
    use crate::domain::{JobOrigin, StageState};
    use crate::ports::Condition;

    fn stage(status: StageStatus) -> StageState {
        StageState {
            status,
            detail: None,
            provider: None,
            finished_at: None,
        }
    }

    /// 10,050 jobs, ids in time order as UUIDv7 gives them; every 100th failed.
    async fn app_with_jobs(dir: &std::path::Path) -> crate::embedded::LocalApp {
        let mut env = std::collections::HashMap::new();
        env.insert("DATA_DIR".to_string(), dir.display().to_string());
        let app = crate::embedded::LocalApp::build(
            crate::config::Settings::from_map(&env).expect("settings"),
        )
        .expect("app");
        for i in 0..10_050u32 {
            let mut job = Job::new(format!("{i:08}"), JobOrigin::Webhook, None, i64::from(i));
            for s in [Stage::Chunk, Stage::Embed, Stage::Tag] {
                let status = if i % 100 == 7 && s == Stage::Tag {
                    StageStatus::Failed
                } else {
                    StageStatus::Done
                };
                job.stages.insert(s, stage(status));
            }
            app.svc
                .state
                .put(
                    &job_key(&job.id),
                    &serde_json::to_value(&job).unwrap(),
                    Condition::None,
                    None,
                )
                .await
                .unwrap();
        }
        app
    }

    #[tokio::test]
    async fn pages_newest_first_by_cursor_and_filters_within_a_bounded_window() {
        let dir = tempfile::tempdir().unwrap();
        let app = app_with_jobs(dir.path()).await;
        let svc = &app.svc;
        // Newest first, one page at a time, each starting after the last id shown.
        let first = list_jobs(svc, None, None, 25).await.unwrap();
        assert_eq!(first.jobs.len(), 25);
        assert_eq!(first.jobs[0].id, "00010049");
        assert_eq!(
            first.scanned, 25,
            "an unfiltered page reads only its own rows"
        );
        let cursor = first.next_cursor.clone().unwrap();
        assert_eq!(cursor, "00010025");
        let second = list_jobs(svc, None, Some(&cursor), 25).await.unwrap();
        assert_eq!(second.jobs[0].id, "00010024");
        // The oldest page ends the list.
        let last = list_jobs(svc, None, Some("00000003"), 25).await.unwrap();
        assert_eq!(
            last.jobs.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(),
            ["00000002", "00000001", "00000000"]
        );
        assert_eq!(last.next_cursor, None);

        // Failed jobs are 1 in 100: a page of 25 would need 2,500 reads, so it stops at the
        // window with what it found and where to continue.
        let failed = list_jobs(svc, Some(JobClass::Failed), None, 25)
            .await
            .unwrap();
        assert_eq!(failed.scanned, SCAN_WINDOW);
        assert_eq!(failed.jobs.len(), 10);
        assert!(
            failed
                .jobs
                .iter()
                .all(|j| JobClass::of(j) == JobClass::Failed)
        );
        assert_eq!(failed.jobs[0].id, "00010007");
        let more = list_jobs(
            svc,
            Some(JobClass::Failed),
            failed.next_cursor.as_deref(),
            25,
        )
        .await
        .unwrap();
        assert_eq!(
            more.jobs[0].id, "00009007",
            "continues where the window stopped"
        );
        // Every failed job is reached by following the cursors, none twice.
        let (mut seen, mut cursor) = (Vec::new(), None::<String>);
        loop {
            let page = list_jobs(svc, Some(JobClass::Failed), cursor.as_deref(), 100)
                .await
                .unwrap();
            seen.extend(page.jobs.into_iter().map(|j| j.id));
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(seen.len(), 101);
        seen.dedup();
        assert_eq!(seen.len(), 101);
    }
}
