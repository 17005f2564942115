//! Ingest: turns a Paperless-ngx webhook or an upload into a job and a chunk-queue message.
//! Nothing here waits for a model; the job row is written before the message is sent, and
//! removed again if the send fails, so a caller never holds a job id that no worker will see.

use serde_json::Value;

use super::{Blobs, PipelineError, Queues, Services, job_key, now};
use crate::domain::{ChunkTask, DocId, Job, JobOrigin};
use crate::ports::Condition;
use crate::telemetry::JobIds;

/// Why an ingest request was refused (the HTTP layer maps these to 4xx).
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
}

/// Largest webhook body accepted: Paperless sends ~100 bytes.
pub const MAX_WEBHOOK_BYTES: usize = 64 * 1024;

/// Reads the document id from a webhook body: a JSON object, a JSON string holding one, or a
/// form; `doc_id` (number or string) or, failing that, `doc_url` ending in `/documents/<id>/`.
pub fn parse_webhook(body: &[u8]) -> Result<u64, IngestError> {
    if body.len() > MAX_WEBHOOK_BYTES {
        return Err(IngestError::TooLarge(format!(
            "webhook body over {MAX_WEBHOOK_BYTES} bytes"
        )));
    }
    let text = std::str::from_utf8(body)
        .map_err(|_| IngestError::BadRequest("webhook body is not UTF-8".into()))?
        .trim();
    if text.is_empty() {
        return Err(IngestError::BadRequest(
            "empty webhook body: send doc_id or doc_url".into(),
        ));
    }
    let fields: Vec<(String, String)> = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => object_fields(&map),
        Ok(Value::String(inner)) => match serde_json::from_str::<Value>(&inner) {
            Ok(Value::Object(map)) => object_fields(&map),
            _ => {
                return Err(IngestError::BadRequest(
                    "webhook body is a JSON string that does not hold an object".into(),
                ));
            }
        },
        Ok(_) => {
            return Err(IngestError::BadRequest(
                "webhook JSON must be an object with doc_id or doc_url".into(),
            ));
        }
        Err(_) if text.starts_with('{') || text.starts_with('"') || text.starts_with('[') => {
            return Err(IngestError::BadRequest(
                "webhook body is malformed JSON".into(),
            ));
        }
        Err(_) => form_urlencoded::parse(text.as_bytes())
            .into_owned()
            .collect(),
    };
    let get = |k: &str| {
        fields
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    if let Some(id) = get("doc_id") {
        return id.parse::<u64>().ok().filter(|id| *id > 0).ok_or_else(|| {
            IngestError::BadRequest(format!("doc_id {id:?} is not a positive integer"))
        });
    }
    if let Some(url) = get("doc_url") {
        return id_from_doc_url(&url).ok_or_else(|| {
            IngestError::BadRequest(format!("doc_url {url:?} does not contain /documents/<id>/"))
        });
    }
    Err(IngestError::BadRequest(
        "webhook body has neither doc_id nor doc_url".into(),
    ))
}

fn object_fields(map: &serde_json::Map<String, Value>) -> Vec<(String, String)> {
    map.iter()
        .filter_map(|(k, v)| match v {
            Value::String(s) => Some((k.clone(), s.clone())),
            Value::Number(n) => Some((k.clone(), n.to_string())),
            _ => None,
        })
        .collect()
}

fn id_from_doc_url(url: &str) -> Option<u64> {
    let (_, rest) = url.rsplit_once("/documents/")?;
    rest.split('/')
        .next()?
        .parse::<u64>()
        .ok()
        .filter(|id| *id > 0)
}

fn new_job_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Writes a new job and sends its chunk message; undoes the job if the send fails. The job's
/// trace starts here: the job and its chunk message carry its context.
async fn start<B, M>(
    svc: &Services<B, Queues, M>,
    mut job: Job,
    mut task: Option<ChunkTask>,
) -> Result<Job, PipelineError> {
    use tracing::Instrument;
    let doc_id = job.doc_id.as_ref().map(ToString::to_string);
    let span = tracing::info_span!(parent: None, "ingest", job_id = %job.id, doc_id = doc_id.as_deref(), origin = ?job.origin);
    crate::telemetry::continue_trace(&span, None, JobIds::new(&job.id, doc_id));
    async {
        job.trace = crate::telemetry::current();
        if let Some(task) = &mut task {
            task.set_trace(job.trace.clone());
        }
        write_and_send(svc, job, task).await
    }
    .instrument(span)
    .await
}

async fn write_and_send<B, M>(
    svc: &Services<B, Queues, M>,
    job: Job,
    task: Option<ChunkTask>,
) -> Result<Job, PipelineError> {
    let key = job_key(&job.id);
    svc.state
        .put(
            &key,
            &serde_json::to_value(&job).expect("job serialises"),
            Condition::Absent,
            None,
        )
        .await?;
    if let Some(task) = task {
        let body = serde_json::to_string(&task).expect("task serialises");
        if let Err(e) = svc.queues.chunk.send(&[body]).await {
            let _ = svc.state.delete(&key).await;
            return Err(e.into());
        }
    }
    Ok(job)
}

/// A Paperless document to (re)process: one job, one chunk message.
pub async fn paperless_document<B, M>(
    svc: &Services<B, Queues, M>,
    doc_id: u64,
    origin: JobOrigin,
) -> Result<Job, PipelineError> {
    if svc.paperless.is_none() {
        return Err(PipelineError::Fail(
            "PAPERLESS_URL is not configured".into(),
        ));
    }
    let job = Job::new(new_job_id(), origin, Some(DocId::Paperless(doc_id)), now());
    let task = ChunkTask::Paperless {
        job_id: job.id.clone(),
        doc_id,
        trace: None,
    };
    tracing::info!(job_id = %job.id, doc_id, "document queued");
    start(svc, job, Some(task)).await
}

/// Content types an upload may have, and the reason others are refused.
pub fn check_content_type(content_type: &str, filename: &str) -> Result<&'static str, IngestError> {
    let ct = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let ext = filename
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match (ct.as_str(), ext.as_str()) {
        ("text/plain", _) | (_, "txt") => Ok("text/plain"),
        ("text/markdown", _) | (_, "md" | "markdown") => Ok("text/markdown"),
        ("application/pdf", _) | (_, "pdf") => Ok("application/pdf"),
        _ => Err(IngestError::Unsupported(format!(
            "{content_type:?} is not supported: upload plain text, Markdown or a PDF with a text layer (send scans through Paperless-ngx, which runs OCR)"
        ))),
    }
}

fn check_filename(filename: &str) -> Result<String, IngestError> {
    let name = filename.rsplit(['/', '\\']).next().unwrap_or("").trim();
    if name.is_empty()
        || name.len() > 255
        || name.chars().any(char::is_control)
        || name == "."
        || name == ".."
    {
        return Err(IngestError::BadRequest(format!(
            "bad filename {filename:?}"
        )));
    }
    Ok(name.to_string())
}

/// `POST /documents`: a job waiting for its bytes, with the secret its upload URL carries.
pub async fn create_upload(
    svc: &Services,
    filename: &str,
    content_type: &str,
    size: Option<u64>,
) -> Result<Job, IngestError> {
    let filename = check_filename(filename)?;
    let content_type = check_content_type(content_type, &filename)?;
    if let Some(size) = size
        && size > svc.settings.max_upload_bytes as u64
    {
        return Err(IngestError::TooLarge(format!(
            "{size} bytes is over the upload limit of {} bytes",
            svc.settings.max_upload_bytes
        )));
    }
    if size.is_none() && svc.blobs.direct_uploads() {
        return Err(IngestError::BadRequest(
            "size is required: the upload URL is signed for exactly that many bytes".into(),
        ));
    }
    let mut job = Job::new(new_job_id(), JobOrigin::Upload, None, now());
    job.filename = Some(filename);
    job.content_type = Some(content_type.to_string());
    job.upload_token = Some(uuid::Uuid::new_v4().simple().to_string());
    job.upload_size = size;
    Ok(start(svc, job, None).await?)
}

/// Extracts the text of an upload; refuses what is not text.
pub fn extract_text(bytes: &[u8], content_type: &str) -> Result<String, String> {
    if content_type == "application/pdf" {
        if !bytes.starts_with(b"%PDF-") {
            return Err("the file is not a PDF".into());
        }
        #[cfg(feature = "pdf")]
        {
            let text = std::panic::catch_unwind(|| pdf_extract::extract_text_from_mem(bytes))
                .map_err(|_| "the PDF could not be read".to_string())?
                .map_err(|e| format!("the PDF could not be read: {e}"))?;
            if text.trim().is_empty() {
                return Err(
                    "the PDF has no text layer (send scans through Paperless-ngx, which runs OCR)"
                        .into(),
                );
            }
            return Ok(text);
        }
        #[cfg(not(feature = "pdf"))]
        return Err("PDF uploads are not enabled in this build".into());
    }
    let text = std::str::from_utf8(bytes).map_err(|_| "the file is not UTF-8 text".to_string())?;
    if text.contains('\0') {
        return Err("the file is binary, not text".into());
    }
    if text.trim().is_empty() {
        return Err("the file is empty".into());
    }
    Ok(text.to_string())
}

/// Where an upload's bytes are stored: under the job, with a name derived from (not equal to)
/// the client's filename, so no client-chosen text ends up in a key.
pub fn upload_key(job_id: &str, filename: &str) -> String {
    let ext = filename
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .filter(|e| !e.is_empty() && e.len() <= 10 && e.chars().all(|c| c.is_ascii_alphanumeric()))
        .unwrap_or_else(|| "bin".into());
    format!(
        "uploads/{job_id}/{}.{ext}",
        &crate::text::sha256_hex(filename.as_bytes())[..16]
    )
}

/// An object the blob store says has arrived (an S3 event notification on AWS).
#[derive(Debug, Clone, PartialEq)]
pub struct ArrivedObject {
    pub key: String,
    pub size: u64,
}

/// Reads an S3 event notification (as S3 delivers it to SQS). `None` if the body is not one;
/// an empty list for S3's `s3:TestEvent` and for events other than object creation.
pub fn parse_s3_notification(body: &str) -> Option<Vec<ArrivedObject>> {
    let v: Value = serde_json::from_str(body).ok()?;
    if v.get("Event").and_then(Value::as_str) == Some("s3:TestEvent") {
        return Some(Vec::new());
    }
    let records = v.get("Records")?.as_array()?;
    let mut out = Vec::new();
    for r in records {
        if r.get("eventSource").and_then(Value::as_str) != Some("aws:s3") {
            return None;
        }
        if !r
            .get("eventName")
            .and_then(Value::as_str)
            .is_some_and(|n| n.starts_with("ObjectCreated:"))
        {
            continue;
        }
        let object = r.get("s3").and_then(|s| s.get("object"))?;
        // S3 URL-encodes keys in notifications, with '+' for spaces.
        let raw = object.get("key").and_then(Value::as_str)?.replace('+', " ");
        let key = form_urlencoded::parse(format!("k={}", raw.replace('&', "%26")).as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())?;
        let size = object.get("size").and_then(Value::as_u64).unwrap_or(0);
        out.push(ArrivedObject { key, size });
    }
    Some(out)
}

/// The job an upload key belongs to (`uploads/<job_id>/<name>`).
pub fn upload_job_id(key: &str) -> Option<&str> {
    let rest = key.strip_prefix("uploads/")?;
    let (job_id, name) = rest.split_once('/')?;
    (!job_id.is_empty() && !name.is_empty() && !name.contains('/')).then_some(job_id)
}

/// An upload arrived in the blob store directly (a presigned PUT on AWS): check it against its
/// job and return the chunk task, or why it is refused. Redelivery of the same notification
/// yields the same task (chunking is idempotent); an object no job expects is refused.
pub async fn upload_arrived<M: Sync>(
    svc: &Services<Blobs, Queues, M>,
    object: &ArrivedObject,
) -> Result<ChunkTask, PipelineError> {
    let job_id = upload_job_id(&object.key)
        .ok_or_else(|| PipelineError::Fail(format!("{} is not an upload key", object.key)))?;
    let Some(job) = super::load_job(svc.state.as_ref(), job_id).await? else {
        return Err(PipelineError::Fail(format!(
            "no upload job {job_id} for {}",
            object.key
        )));
    };
    let filename = job.filename.clone().unwrap_or_else(|| "upload.txt".into());
    if upload_key(job_id, &filename) != object.key {
        return Err(PipelineError::Fail(format!(
            "{} is not the object job {job_id} expects",
            object.key
        )));
    }
    if object.size > svc.settings.max_upload_bytes as u64 {
        let _ = svc.blobs.delete(&object.key).await;
        return Err(PipelineError::Fail(format!(
            "{} bytes is over the upload limit of {} bytes",
            object.size, svc.settings.max_upload_bytes
        )));
    }
    // S3 enforces the signed length; this holds for any store that does not.
    if let Some(announced) = job.upload_size
        && announced != object.size
        && job.doc_id.is_none()
    {
        let _ = svc.blobs.delete(&object.key).await;
        return Err(PipelineError::Fail(format!(
            "the upload has {} bytes, not the {announced} it was announced with",
            object.size
        )));
    }
    let content_type = job
        .content_type
        .clone()
        .unwrap_or_else(|| "text/plain".into());
    if job.doc_id.is_none() {
        let bytes = svc.blobs.get(&object.key).await?.ok_or_else(|| {
            PipelineError::Fail(format!("uploaded file {} is missing", object.key))
        })?;
        if bytes.len() > svc.settings.max_upload_bytes {
            let _ = svc.blobs.delete(&object.key).await;
            return Err(PipelineError::Fail(format!(
                "{} bytes is over the upload limit of {} bytes",
                bytes.len(),
                svc.settings.max_upload_bytes
            )));
        }
        extract_text(&bytes, &content_type).map_err(PipelineError::Fail)?;
        let doc_id = DocId::Upload(crate::text::sha256_hex(&bytes)[..16].to_string());
        super::update_job(svc.state.as_ref(), job_id, |j| {
            j.doc_id = Some(doc_id.clone())
        })
        .await?;
        tracing::info!(job_id, doc_id = %doc_id, "upload arrived");
    }
    Ok(ChunkTask::Upload {
        job_id: job_id.to_string(),
        blob_key: object.key.clone(),
        filename,
        content_type,
        trace: job.trace.clone(),
    })
}

/// The bytes of an upload arrived: store them, name the document, start the pipeline.
/// Idempotent: a repeated PUT of the same job after it started is refused, not re-run.
pub async fn receive_upload(
    svc: &Services,
    job_id: &str,
    token: &str,
    bytes: &[u8],
) -> Result<Job, IngestError> {
    use tracing::Instrument;
    let Some(job) = super::load_job(svc.state.as_ref(), job_id).await? else {
        return Err(IngestError::NotFound(format!("no upload job {job_id}")));
    };
    let span = tracing::info_span!(parent: None, "upload", job_id, doc_id = tracing::field::Empty);
    crate::telemetry::continue_trace(&span, job.trace.as_ref(), JobIds::new(job_id, None));
    store_upload(svc, job, token, bytes).instrument(span).await
}

async fn store_upload(
    svc: &Services,
    job: Job,
    token: &str,
    bytes: &[u8],
) -> Result<Job, IngestError> {
    let job_id = job.id.as_str();
    let expected = job.upload_token.clone().unwrap_or_default();
    if expected.is_empty() || !crate::auth::constant_time_eq(token.as_bytes(), expected.as_bytes())
    {
        return Err(IngestError::NotFound(format!("no upload job {job_id}")));
    }
    if job.doc_id.is_some() {
        return Err(IngestError::Conflict(format!(
            "job {job_id} already received its file"
        )));
    }
    if bytes.len() > svc.settings.max_upload_bytes {
        return Err(IngestError::TooLarge(format!(
            "{} bytes is over the upload limit of {} bytes",
            bytes.len(),
            svc.settings.max_upload_bytes
        )));
    }
    if let Some(announced) = job.upload_size
        && announced != bytes.len() as u64
    {
        return Err(IngestError::BadRequest(format!(
            "the upload has {} bytes, not the {announced} it was announced with",
            bytes.len()
        )));
    }
    let content_type = job
        .content_type
        .clone()
        .unwrap_or_else(|| "text/plain".into());
    extract_text(bytes, &content_type).map_err(IngestError::Unsupported)?;
    let filename = job.filename.clone().unwrap_or_else(|| "upload.txt".into());
    let doc_id = DocId::Upload(crate::text::sha256_hex(bytes)[..16].to_string());
    let blob_key = upload_key(job_id, &filename);
    svc.blobs
        .put(&blob_key, bytes)
        .await
        .map_err(PipelineError::from)?;
    let job = super::update_job(svc.state.as_ref(), job_id, |j| {
        j.doc_id = Some(doc_id.clone())
    })
    .await?;
    tracing::Span::current().record("doc_id", doc_id.to_string());
    let task = ChunkTask::Upload {
        job_id: job_id.to_string(),
        blob_key,
        filename,
        content_type,
        trace: crate::telemetry::current(),
    };
    svc.queues
        .chunk
        .send(&[serde_json::to_string(&task).expect("task serialises")])
        .await
        .map_err(PipelineError::from)?;
    tracing::info!(job_id, doc_id = %doc_id, "upload queued");
    Ok(job)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_bodies_paperless_sends() {
        assert_eq!(
            parse_webhook(br#"{"doc_id":"12","doc_url":"http://p/documents/12/"}"#).unwrap(),
            12
        );
        assert_eq!(parse_webhook(br#"{"doc_id": 7}"#).unwrap(), 7);
        assert_eq!(
            parse_webhook(br#""{\"doc_url\": \"https://p.example/documents/33/\"}""#).unwrap(),
            33
        );
        assert_eq!(
            parse_webhook(b"doc_url=http%3A%2F%2Fp%2Fdocuments%2F9%2F&title=x+y").unwrap(),
            9
        );
        assert_eq!(parse_webhook(b"doc_id=5").unwrap(), 5);
        assert_eq!(
            parse_webhook(br#"{"doc_url":"http://p/paperless/documents/41/details"}"#).unwrap(),
            41
        );
    }

    #[test]
    fn hostile_webhook_bodies_get_clear_errors() {
        for (body, needle) in [
            (&b""[..], "empty"),
            (b"{", "malformed"),
            (b"[1,2]", "object"),
            (b"42", "object"),
            (br#"{"doc_id":"-3"}"#, "positive"),
            (br#"{"doc_id":"1; DROP TABLE"}"#, "positive"),
            (br#"{"doc_url":"http://evil/"}"#, "documents"),
            (br#"{"title":"x"}"#, "neither"),
            (br#""not json inside""#, "does not hold"),
            (b"\xff\xfe", "UTF-8"),
        ] {
            let e = parse_webhook(body).unwrap_err().to_string();
            assert!(e.contains(needle), "{body:?}: {e}");
        }
        assert!(matches!(
            parse_webhook(&vec![b'a'; MAX_WEBHOOK_BYTES + 1]),
            Err(IngestError::TooLarge(_))
        ));
    }

    #[test]
    fn s3_notifications() {
        let body = r#"{"Records":[{"eventVersion":"2.1","eventSource":"aws:s3","eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"b"},"object":{"key":"uploads/j1/my+notes%C3%A4.txt","size":12}}},{"eventSource":"aws:s3","eventName":"ObjectRemoved:Delete","s3":{"object":{"key":"uploads/j2/x.txt"}}}]}"#;
        assert_eq!(
            parse_s3_notification(body).unwrap(),
            vec![ArrivedObject {
                key: "uploads/j1/my notesä.txt".into(),
                size: 12
            }]
        );
        assert_eq!(
            parse_s3_notification(r#"{"Service":"Amazon S3","Event":"s3:TestEvent","Bucket":"b"}"#),
            Some(vec![])
        );
        assert_eq!(
            parse_s3_notification(r#"{"job_id":"x","source":"paperless"}"#),
            None
        );
        assert_eq!(parse_s3_notification("not json"), None);
        assert_eq!(upload_job_id("uploads/j1/abc.txt"), Some("j1"));
        assert_eq!(upload_job_id("uploads/j1/a/b.txt"), None);
        assert_eq!(upload_job_id("text/j1/abc.txt"), None);
        assert!(upload_key("j", "Report.PDF").ends_with(".pdf"));
        assert!(upload_key("j", "x.../etc").ends_with(".bin"));
    }

    #[test]
    fn upload_types() {
        assert_eq!(
            check_content_type("text/plain; charset=utf-8", "a.txt").unwrap(),
            "text/plain"
        );
        assert_eq!(
            check_content_type("application/octet-stream", "notes.md").unwrap(),
            "text/markdown"
        );
        assert!(
            check_content_type("image/png", "scan.png")
                .unwrap_err()
                .to_string()
                .contains("OCR")
        );
        assert!(check_filename("../../etc/passwd").unwrap() == "passwd");
        assert!(check_filename("..").is_err());
        assert!(extract_text(b"\x00\x01", "text/plain").is_err());
        assert!(
            extract_text(b"hello", "application/pdf")
                .unwrap_err()
                .contains("not a PDF")
        );
    }
}

#[cfg(test)]
mod sample_events {
    use super::parse_webhook;
    use crate::domain::{ChunkTask, EmbedTask, TagTask};

    fn event(name: &str) -> Vec<u8> {
        std::fs::read(format!("{}/../events/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    #[test]
    fn the_sample_events_parse() {
        assert_eq!(parse_webhook(&event("webhook-paperless.json")).unwrap(), 1);
        assert_eq!(
            parse_webhook(&event("webhook-paperless-2x.form")).unwrap(),
            1
        );
        serde_json::from_slice::<ChunkTask>(&event("chunk-message.json")).unwrap();
        serde_json::from_slice::<EmbedTask>(&event("embed-message.json")).unwrap();
        serde_json::from_slice::<TagTask>(&event("tag-message.json")).unwrap();
        serde_json::from_slice::<crate::pipeline::chat::ChatRequest>(&event("chat-request.json"))
            .unwrap();
    }
}
