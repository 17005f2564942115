//! Tagging that never fights the user and never leaks a private document (issue 11), end to
//! end through the embedded application against the fake Paperless-ngx made to behave as the
//! real one did (Appendix D): per-user tokens and permissions, a "Document Updated" webhook
//! after every PATCH, a user edit arriving while the model is thinking.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{Pai, SECRET, scripted_model};
use pai_tests::fake_paperless::{DocSeed, FakePaperless, RESTRICTED_PERMISSIONS};
use serde_json::{Value, json};

const INVOICE: &str = "Berger Haustechnik GmbH\nRechnung Nr. 2025-031\nDatum: 14.03.2025\n\nReparatur des Heizkessels (boiler repair).\nGesamtbetrag: 65.000 EUR\nZahlbar bis 15.12.2099.";

fn tag_calls(pai: &Pai) -> usize {
    pai.model
        .chat_requests()
        .iter()
        .filter(|r| r.get("response_format").is_some())
        .count()
}

fn tag_names(pai: &Pai, id: u64) -> Vec<String> {
    let doc = pai.paperless.document(id).unwrap();
    let ids: Vec<u64> = doc["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let mut names = pai.paperless.tag_names(&ids);
    names.sort();
    names
}

fn seed(paperless: &FakePaperless) -> u64 {
    let inbox = paperless.add_tag("Inbox", "");
    paperless.add_tag("Invoice", "rechnung");
    paperless.add_correspondent("Berger Haustechnik GmbH", "berger");
    paperless.add_document_type("Invoice", "rechnung");
    paperless.add_document(DocSeed {
        title: "scan_0031".into(),
        content: INVOICE.into(),
        tags: vec![inbox],
        ..Default::default()
    })
}

async fn tag_once(pai: &Pai, id: u64) -> Value {
    let job = pai.webhook_job(&json!({"doc_id": id}).to_string()).await;
    pai.drain().await;
    pai.wait_job(&job).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trigger_tag_and_the_retag_route_re_run_a_tagged_document() {
    let pai = Pai::start(&[("TRIGGER_TAG", "ai-redo"), ("EXCLUDE_TAGS", "private")]).await;
    pai.paperless
        .set_webhook(&pai.url("/webhooks/paperless"), SECRET);
    let id = seed(&pai.paperless);
    let redo = pai.paperless.add_tag("ai-redo", "");
    let job = tag_once(&pai, id).await;
    assert_eq!(job["status"], "done", "{job:#}");
    assert_eq!(tag_calls(&pai), 1);
    // Our own PATCH's webhook: a no-op.
    assert_eq!(pai.paperless.deliver_webhooks().await, 1);
    pai.drain().await;
    assert_eq!(tag_calls(&pai), 1, "the loop guard holds");

    // The user adds the trigger tag in Paperless: tagged again, and the tag is gone.
    let mut tags = pai.paperless.document(id).unwrap()["tags"].clone();
    tags.as_array_mut().unwrap().push(json!(redo));
    pai.paperless.user_edit(id, json!({"tags": tags}));
    pai.paperless.deliver_webhooks().await;
    pai.drain().await;
    assert_eq!(tag_calls(&pai), 2, "re-run whatever the loop guard says");
    assert!(!tag_names(&pai, id).contains(&"ai-redo".to_string()));
    pai.paperless.deliver_webhooks().await;
    pai.drain().await;
    assert_eq!(tag_calls(&pai), 2, "removing the trigger tag does not loop");

    // The same from the API.
    let (status, reply) = pai
        .post_json(&format!("/documents/{id}/retag"), json!({}))
        .await;
    assert_eq!(status, 202, "{reply}");
    pai.drain().await;
    let job = pai.wait_job(reply["job_id"].as_str().unwrap()).await;
    assert_eq!(job["status"], "done", "{job:#}");
    assert_eq!(job["origin"], "retag");
    assert!(
        job["stages"]["tag"]["detail"]
            .as_str()
            .unwrap()
            .starts_with("suggestion applied"),
        "re-run, not skipped as already tagged: {job:#}"
    );
    let (status, _) = pai
        .post_json("/documents/upload-ab12/retag", json!({}))
        .await;
    assert_eq!(status, 400);

    // A document that keeps the trigger tag (excluded: never sent to a model) is queued by
    // one sync, not by every sync.
    let private = pai.paperless.add_tag("private", "");
    let kept = pai.paperless.add_document(DocSeed {
        title: "diary".into(),
        content: "Dear diary".into(),
        tags: vec![private, redo],
        ..Default::default()
    });
    let calls = tag_calls(&pai);
    let first = shared::pipeline::sync::run(&pai.app.svc).await.unwrap();
    pai.drain().await;
    assert!(!first.jobs.is_empty());
    let second = shared::pipeline::sync::run(&pai.app.svc).await.unwrap();
    assert_eq!(second.queued, 0, "{second:?}");
    assert_eq!(
        tag_calls(&pai),
        calls,
        "the private document never reached the model"
    );
    assert!(tag_names(&pai, kept).contains(&"private".to_string()));
    pai.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_edit_while_the_model_thinks_is_left_as_the_user_set_it() {
    let pai = Pai::start(&[]).await;
    let id = seed(&pai.paperless);
    let mine = pai.paperless.add_tag("Mine", "");
    let inbox = pai
        .paperless
        .tags()
        .into_iter()
        .find(|t| t["name"] == "Inbox")
        .unwrap()["id"]
        .as_u64()
        .unwrap();
    let (paperless, edited) = (pai.paperless.clone(), Arc::new(AtomicBool::new(false)));
    let once = edited.clone();
    pai.model.set_default(move |req| {
        if req.get("response_format").is_some() && !once.swap(true, Ordering::SeqCst) {
            paperless.user_edit(id, json!({"title": "My own title", "tags": [inbox, mine]}));
        }
        scripted_model(req)
    });
    let job = tag_once(&pai, id).await;
    assert_eq!(job["status"], "done", "{job:#}");
    assert!(edited.load(Ordering::SeqCst));
    let doc = pai.paperless.document(id).unwrap();
    assert_eq!(doc["title"], "My own title", "the user's title wins");
    assert_eq!(
        tag_names(&pai, id),
        ["Inbox", "Invoice", "Mine", "Plumbing", "ai-processed"],
        "the user's tag is kept, ours merged in"
    );
    assert!(
        doc["correspondent"].as_u64().is_some(),
        "untouched fields are written"
    );
    let (_, s) = pai.get_json(&format!("/documents/{id}/suggestions")).await;
    assert_eq!(s["kept_by_user"], json!(["title"]), "{s}");
    pai.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_writer_per_document_and_a_crash_after_the_patch_keeps_undo() {
    let pai = Pai::start(&[]).await;
    let id = seed(&pai.paperless);
    // Another worker holds the document: this one neither calls the model nor writes.
    let doc = shared::domain::DocId::Paperless(id);
    pai.app
        .svc
        .state
        .put(
            &format!("lease/tag/{doc}"),
            &json!({"job_id": "another-job"}),
            shared::ports::Condition::Absent,
            Some(chrono_now() + 600),
        )
        .await
        .unwrap();
    let task = shared::domain::TagTask {
        job_id: "this-job".into(),
        doc_id: doc.clone(),
        content_hash: "0".repeat(64),
        text_tokens: None,
        trace: None,
        read: None,
    };
    let err = shared::pipeline::tag::run(&pai.app.svc, &task)
        .await
        .unwrap_err();
    assert!(
        err.is_retry() && err.to_string().contains("another-job"),
        "{err}"
    );
    assert_eq!(tag_calls(&pai), 0, "a duplicate never calls the model");
    assert_eq!(pai.paperless.count("PATCH", "/api/documents/"), 0);
    pai.app
        .svc
        .state
        .delete(&format!("lease/tag/{doc}"))
        .await
        .unwrap();

    // The PATCH is applied but its answer lost (a proxy timeout): the retry neither calls
    // the model again nor loses what undo needs.
    pai.paperless.apply_then_fail_next_patch(1, 504);
    let job = pai.webhook_job(&json!({"doc_id": id}).to_string()).await;
    pai.drain().await;
    let job = pai.wait_job(&job).await;
    assert_eq!(job["status"], "done", "{job:#}");
    assert_eq!(tag_calls(&pai), 1);
    assert_eq!(
        pai.paperless.document(id).unwrap()["title"],
        "Invoice for boiler repair"
    );
    let (status, undone) = pai
        .post_json(&format!("/documents/{id}/undo"), json!({}))
        .await;
    assert_eq!(status, 200, "{undone}");
    assert_eq!(pai.paperless.document(id).unwrap()["title"], "scan_0031");
    pai.shutdown().await;
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undo_restores_only_what_is_still_ours() {
    let pai = Pai::start(&[]).await;
    let id = seed(&pai.paperless);
    tag_once(&pai, id).await;
    pai.paperless
        .user_edit(id, json!({"title": "Renamed by me"}));
    let (status, undone) = pai
        .post_json(&format!("/documents/{id}/undo"), json!({}))
        .await;
    assert_eq!(status, 200, "{undone}");
    let doc = pai.paperless.document(id).unwrap();
    assert_eq!(doc["title"], "Renamed by me", "the user's later edit stays");
    assert_eq!(doc["correspondent"], Value::Null, "ours is restored");
    assert_eq!(doc["created"], "2025-01-01");
    assert_eq!(undone["kept_by_user"], json!(["title"]));
    pai.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amounts_and_due_dates_are_stored_as_the_document_means_them() {
    let pai = Pai::start(&[
        ("TAG_FIELDS", "title,tags,custom_fields"),
        ("CUSTOM_FIELDS", "Amount,Due,Deposit"),
    ])
    .await;
    let amount = pai.paperless.add_custom_field("Amount", "monetary", &[]);
    let due = pai.paperless.add_custom_field("Due", "date", &[]);
    let deposit = pai.paperless.add_custom_field("Deposit", "monetary", &[]);
    let id = seed(&pai.paperless);
    pai.model.set_default(|req| {
        if req.get("response_format").is_some() {
            json!({"title": "Boiler repair", "tags": [], "custom_fields": {"Amount": "65.000 EUR", "Due": "2099-12-15", "Deposit": "USD 98,000"}}).to_string()
        } else {
            scripted_model(req)
        }
    });
    let job = tag_once(&pai, id).await;
    assert_eq!(job["status"], "done", "{job:#}");
    let fields = pai.paperless.document(id).unwrap()["custom_fields"].clone();
    let value = |f: u64| {
        fields
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["field"] == f)
            .map(|v| v["value"].clone())
    };
    assert_eq!(value(amount), Some(json!("EUR65000.00")), "{fields}");
    assert_eq!(value(deposit), Some(json!("USD98000.00")));
    assert_eq!(
        value(due),
        Some(json!("2099-12-15")),
        "a due date lies ahead"
    );
    pai.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_least_privilege_token_tags_and_tells_what_it_cannot_do() {
    let paperless = Arc::new(FakePaperless::start(common::TOKEN).await);
    let user = paperless.add_user("scanner", "restricted-token", &RESTRICTED_PERMISSIONS, &[]);
    let id = seed(&paperless);
    // Owned by the admin and not shared: invisible to the restricted user.
    let private = paperless.add_document(DocSeed {
        title: "salary".into(),
        content: INVOICE.into(),
        owner: Some(1),
        ..Default::default()
    });
    let shared_read_only = paperless.add_document(DocSeed {
        title: "shared".into(),
        content: INVOICE.into(),
        owner: Some(1),
        perms: pai_tests::fake_paperless::DocPerms {
            view_users: vec![user],
            ..Default::default()
        },
        ..Default::default()
    });
    let pai = Pai::start_with(
        &[
            ("PAPERLESS_TOKEN", "restricted-token"),
            (
                "TAG_FIELDS",
                "title,tags,correspondent,document_type,created,custom_fields",
            ),
            ("CUSTOM_FIELDS", "Amount"),
        ],
        Some(paperless),
    )
    .await;
    let job = tag_once(&pai, id).await;
    assert_eq!(
        job["status"], "done",
        "403 on custom fields turns that part off: {job:#}"
    );
    assert_eq!(
        pai.paperless.document(id).unwrap()["title"],
        "Invoice for boiler repair"
    );

    let job = tag_once(&pai, private).await;
    assert_eq!(job["status"], "failed");
    let reason = job["stages"]["chunk"]["detail"]
        .as_str()
        .unwrap_or_default()
        .to_string()
        + job["stages"]["tag"]["detail"].as_str().unwrap_or_default();
    assert!(
        reason.contains("not visible to the token's user \"scanner\""),
        "{job:#}"
    );

    let job = tag_once(&pai, shared_read_only).await;
    assert_eq!(job["status"], "failed");
    assert!(
        job["stages"]["tag"]["detail"]
            .as_str()
            .unwrap()
            .contains("may view but not change"),
        "{job:#}"
    );

    let report = shared::pipeline::access::check(&pai.app.svc).await.unwrap();
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.user.username, "scanner");
    let missing: Vec<&str> = report
        .lines
        .iter()
        .filter(|l| !l.granted)
        .map(|l| l.permission.as_str())
        .collect();
    assert_eq!(missing, ["view_customfield"]);
    // Storage paths are not in TAG_FIELDS: never asked for, so their 403 never happens.
    assert_eq!(pai.paperless.count("GET", "/api/storage_paths/"), 0);
    pai.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_tags_are_never_offered_nor_taken_and_invented_names_are_checked() {
    let pai = Pai::start(&[("EXCLUDE_TAGS", "private"), ("TRIGGER_TAG", "ai-redo")]).await;
    let id = seed(&pai.paperless);
    pai.paperless.add_tag("private", "");
    pai.paperless.add_tag("ai-processed", "");
    pai.paperless.add_tag("ai-redo", "");
    pai.model.set_default(|req| {
        if req.get("response_format").is_some() {
            json!({"title": "Invoice", "tags": ["private", "AI-Processed", "Invoice", "visit https://evil.example/x", "<b>bold</b>"],
                   "correspondent": "Berger Haustechnik GmbH", "document_type": "Invoice", "created": "2025-03-14"}).to_string()
        } else {
            scripted_model(req)
        }
    });
    let job = tag_once(&pai, id).await;
    assert_eq!(job["status"], "done", "{job:#}");
    let call = pai
        .model
        .chat_requests()
        .into_iter()
        .find(|r| r.get("response_format").is_some())
        .unwrap()
        .to_string();
    for control in ["private", "ai-processed", "ai-redo", "ai-failed"] {
        assert!(!call.contains(control), "{control} offered to the model");
    }
    assert_eq!(tag_names(&pai, id), ["Inbox", "Invoice", "ai-processed"]);
    assert!(
        pai.paperless
            .tags()
            .iter()
            .all(|t| !t["name"].as_str().unwrap().contains("evil")
                && !t["name"].as_str().unwrap().contains('<')),
        "implausible names are not created"
    );
    let detail = job["stages"]["tag"]["detail"].as_str().unwrap();
    assert!(
        detail.contains("control tags") && detail.contains("looks like a link"),
        "{detail}"
    );
    pai.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_costs_one_attempt_and_a_later_success_clears_it() {
    let pai = Pai::start(&[]).await;
    pai.paperless
        .set_webhook(&pai.url("/webhooks/paperless"), SECRET);
    let id = seed(&pai.paperless);
    let good = Arc::new(AtomicBool::new(false));
    let g = good.clone();
    pai.model.set_default(move |req| {
        if req.get("response_format").is_some() && !g.load(Ordering::SeqCst) {
            "not json at all".to_string()
        } else {
            scripted_model(req)
        }
    });
    let job = tag_once(&pai, id).await;
    assert_eq!(job["status"], "failed", "{job:#}");
    assert_eq!(tag_calls(&pai), 2, "one call and its repair");
    assert!(tag_names(&pai, id).contains(&"ai-failed".to_string()));
    // The failed-tag PATCH fires "Document Updated": it must not buy a second attempt.
    assert_eq!(pai.paperless.deliver_webhooks().await, 1);
    pai.drain().await;
    assert_eq!(tag_calls(&pai), 2);

    good.store(true, Ordering::SeqCst);
    let (status, reply) = pai
        .post_json(&format!("/documents/{id}/retag"), json!({}))
        .await;
    assert_eq!(status, 202);
    pai.drain().await;
    let job = pai.wait_job(reply["job_id"].as_str().unwrap()).await;
    assert_eq!(job["status"], "done", "{job:#}");
    assert!(
        !tag_names(&pai, id).contains(&"ai-failed".to_string()),
        "success clears ai-failed"
    );
    pai.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_mode_marks_what_waits_and_approval_clears_the_mark() {
    let pai = Pai::start(&[("REVIEW_MODE", "true")]).await;
    let id = seed(&pai.paperless);
    tag_once(&pai, id).await;
    assert_eq!(tag_names(&pai, id), ["Inbox", "ai-review"]);
    assert_eq!(pai.paperless.document(id).unwrap()["title"], "scan_0031");
    let (status, _) = pai
        .post_json(&format!("/documents/{id}/approve"), json!({}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        tag_names(&pai, id),
        ["Inbox", "Invoice", "Plumbing", "ai-processed"]
    );
    pai.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_use_the_browser_facing_paperless_url() {
    let pai = Pai::start(&[("PAPERLESS_PUBLIC_URL", "https://paperless.example.org/")]).await;
    let id = seed(&pai.paperless);
    let job = tag_once(&pai, id).await;
    let link = format!("https://paperless.example.org/documents/{id}/details");
    assert_eq!(job["document_url"], link.as_str(), "{job:#}");
    let (_, answer) = pai
        .post_json(
            "/chat",
            json!({"question": "How much did the boiler repair cost?"}),
        )
        .await;
    assert_eq!(answer["citations"][0]["url"], link.as_str(), "{answer}");
    pai.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_prompt_fits_the_budget_and_the_daily_cap_is_reserved_first() {
    let pai = Pai::start(&[("MAX_INPUT_TOKENS", "1500")]).await;
    for i in 0..400 {
        pai.paperless.add_tag(
            &format!("a rather long tag name number {i:04} of the archive"),
            "",
        );
    }
    let long = pai.paperless.add_document(DocSeed {
        title: "long".into(),
        content: format!(
            "{INVOICE}\n{}",
            "Weitere Positionen der Rechnung. ".repeat(2000)
        ),
        ..Default::default()
    });
    let job = tag_once(&pai, long).await;
    assert_eq!(job["status"], "done", "{job:#}");
    let call = pai
        .model
        .chat_requests()
        .into_iter()
        .find(|r| r.get("response_format").is_some())
        .unwrap();
    let prompt: usize = call["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| shared::text::count_tokens(m["content"].as_str().unwrap()))
        .sum::<usize>()
        + shared::text::count_tokens(&call["response_format"].to_string());
    assert!(prompt <= 1500, "{prompt} tokens sent for a budget of 1500");
    pai.shutdown().await;

    // A call the day's cap cannot afford is not made (reserved before, not checked after).
    let pai = Pai::start(&[("LLM_DAILY_TOKENS", "300")]).await;
    let id = seed(&pai.paperless);
    let job = tag_once(&pai, id).await;
    assert_eq!(job["status"], "failed");
    assert!(
        job["stages"]["tag"]["detail"]
            .as_str()
            .unwrap()
            .contains("LLM_DAILY_TOKENS")
    );
    assert_eq!(tag_calls(&pai), 0);
    pai.shutdown().await;
}

/// Undo with the recommended trigger workflow ("Document Updated" → webhook): the trigger tag
/// that asked for the run is not put back, so undoing does not start a new run that would
/// undo the undo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undo_does_not_re_arm_the_trigger_tag() {
    let pai = Pai::start(&[("TRIGGER_TAG", "ai-redo")]).await;
    pai.paperless
        .set_webhook(&pai.url("/webhooks/paperless"), SECRET);
    let id = seed(&pai.paperless);
    let redo = pai.paperless.add_tag("ai-redo", "");
    let mut tags = pai.paperless.document(id).unwrap()["tags"].clone();
    tags.as_array_mut().unwrap().push(json!(redo));
    pai.paperless.user_edit(id, json!({"tags": tags}));
    pai.paperless.deliver_webhooks().await;
    pai.drain().await;
    assert_eq!(tag_calls(&pai), 1);
    assert!(!tag_names(&pai, id).contains(&"ai-redo".to_string()));
    pai.paperless.deliver_webhooks().await;
    pai.drain().await;

    let (status, undone) = pai
        .post_json(&format!("/documents/{id}/undo"), json!({}))
        .await;
    assert_eq!(status, 200, "{undone}");
    assert_eq!(pai.paperless.document(id).unwrap()["title"], "scan_0031");
    assert_eq!(
        tag_names(&pai, id),
        ["Inbox"],
        "the trigger tag stays answered"
    );
    pai.paperless.deliver_webhooks().await;
    pai.drain().await;
    assert_eq!(tag_calls(&pai), 1, "undo's own webhook starts no run");
    assert_eq!(pai.paperless.document(id).unwrap()["title"], "scan_0031");
    pai.shutdown().await;
}

/// A tag message delivered twice at once (a redelivery while a slow model still thinks, or a
/// duplicate SQS delivery in one batch) calls the model once and writes once: the second
/// delivery waits for the document's lease instead of taking it over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_delivery_of_a_running_tag_message_waits() {
    use shared::domain::Stage;
    use shared::ports::QueueConsumer;
    use std::time::Duration;
    let pai = Pai::start(&[]).await;
    let id = seed(&pai.paperless);
    pai.webhook_job(&json!({"doc_id": id}).to_string()).await;
    let max = pai.app.svc.settings.max_receives;
    for (stage, q) in [
        (Stage::Chunk, &pai.app.chunk),
        (Stage::Embed, &pai.app.embed),
    ] {
        for d in q.receive(10, Duration::from_secs(300)).await.unwrap() {
            shared::worker::process(&pai.app.svc, q, stage, &d, max).await;
        }
    }
    let tag = pai
        .app
        .tag
        .receive(1, Duration::from_secs(300))
        .await
        .unwrap()
        .remove(0);
    pai.model.set_latency(Duration::from_millis(400));
    let run = |d: shared::ports::Delivery| {
        let svc = pai.app.svc.clone();
        let body = d.body.clone();
        async move { shared::pipeline::handle(&svc, Stage::Tag, &body, false).await }
    };
    let (first, second) = tokio::join!(run(tag.clone()), run(tag.clone()));
    let outcomes = [first, second];
    assert_eq!(
        outcomes.iter().filter(|o| o.is_ok()).count(),
        1,
        "{outcomes:?}"
    );
    assert!(
        outcomes
            .iter()
            .any(|o| matches!(o, Err(shared::pipeline::PipelineError::Deferred { .. }))),
        "{outcomes:?}"
    );
    assert_eq!(tag_calls(&pai), 1, "one model call");
    assert_eq!(
        pai.paperless.count("PATCH", "/api/documents/"),
        1,
        "one write"
    );
    pai.shutdown().await;
}

/// With `RESTRICT_TO_EXISTING=tags` the tags are an enum in the reply's schema: the control
/// tags are not among its values, and a reply naming one anyway is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_restricted_tag_enum_never_holds_a_control_tag() {
    let pai = Pai::start(&[
        ("EXCLUDE_TAGS", "private"),
        ("TRIGGER_TAG", "ai-redo"),
        ("RESTRICT_TO_EXISTING", "tags"),
    ])
    .await;
    let id = seed(&pai.paperless);
    for control in [
        "private",
        "ai-processed",
        "ai-redo",
        "ai-failed",
        "ai-review",
    ] {
        pai.paperless.add_tag(control, "");
    }
    pai.model.set_default(|req| {
        if req.get("response_format").is_some() {
            json!({"title": "Invoice", "tags": ["Invoice", "private"], "correspondent": null,
                   "document_type": null, "created": null})
            .to_string()
        } else {
            scripted_model(req)
        }
    });
    let job = tag_once(&pai, id).await;
    let call = pai
        .model
        .chat_requests()
        .into_iter()
        .find(|r| r.get("response_format").is_some())
        .unwrap();
    let schema = call["response_format"].to_string();
    assert!(
        schema.contains("\"Invoice\""),
        "the enum holds the taxonomy: {schema}"
    );
    for control in [
        "private",
        "ai-processed",
        "ai-redo",
        "ai-failed",
        "ai-review",
    ] {
        assert!(!schema.contains(control), "{control} in the enum: {schema}");
    }
    assert!(
        !tag_names(&pai, id).contains(&"private".to_string()),
        "{job:#}"
    );
    pai.shutdown().await;
}
