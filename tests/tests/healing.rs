//! Issue 10 end to end, through the application `pai serve` builds: outages heal by
//! themselves (a model down for minutes, a worker killed during a message's last receive), the
//! index follows Paperless (metadata edited there, text changed while embed batches wait), and
//! a document with an exclude tag never reaches a model. The queues run on a test clock, so
//! hours of back-off pass in one step; messages are handled exactly as `pai`'s workers do.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use common::Pai;
use pai_tests::fake_paperless::DocSeed;
use serde_json::{Value, json};
use shared::domain::{DocId, Stage};
use shared::ports::{DeadLetters, QueueConsumer};

const INVOICE: &str = "Berger Haustechnik GmbH\nRechnung Nr. 2025-031\nDatum: 14.03.2025\n\nReparatur des Heizkessels (boiler repair), Austausch der Umwälzpumpe.\nGesamtbetrag: EUR 1.250,00\nZahlbar bis 28.03.2025.";
const LETTER: &str = "Stadtwerke Musterstadt\nJahresabrechnung Strom 2025\nVerbrauch 3.200 kWh, Nachzahlung EUR 212,40 (electricity bill).";

/// The queues' clock, in milliseconds; tests move it.
struct TestClock(Arc<AtomicI64>);

impl TestClock {
    fn new() -> TestClock {
        TestClock(Arc::new(AtomicI64::new(1_000_000)))
    }
    fn clock(&self) -> shared::adapters::local::Clock {
        let t = self.0.clone();
        Arc::new(move || t.load(Ordering::SeqCst))
    }
    fn advance(&self, d: Duration) {
        self.0.fetch_add(d.as_millis() as i64, Ordering::SeqCst);
    }
}

/// Handles every message visible now, as `pai`'s workers do (settling each one with its
/// back-off or deferral, failing the jobs of dead letters), until none is visible.
async fn pump(pai: &Pai) -> usize {
    let max = pai.app.svc.settings.max_receives;
    let mut handled = 0;
    loop {
        let mut any = false;
        for (stage, q) in [
            (Stage::Chunk, &pai.app.chunk),
            (Stage::Embed, &pai.app.embed),
            (Stage::Tag, &pai.app.tag),
        ] {
            let batch = q.receive(10, Duration::from_secs(300)).await.unwrap();
            shared::worker::note_dead_lettered(&pai.app.svc, q, stage).await;
            for d in batch {
                any = true;
                handled += 1;
                shared::worker::process(&pai.app.svc, q, stage, &d, max).await;
            }
        }
        if !any {
            return handled;
        }
    }
}

async fn job(pai: &Pai, id: &str) -> Value {
    pai.get_json(&format!("/jobs/{id}")).await.1
}

async fn dead_letters(pai: &Pai) -> usize {
    let mut n = 0;
    for q in [&pai.app.chunk, &pai.app.embed, &pai.app.tag] {
        n += q.dead_letters(100).await.unwrap().len();
    }
    n
}

fn seed_taxonomy(pai: &Pai) {
    pai.paperless.add_tag("Invoice", "rechnung");
    pai.paperless
        .add_correspondent("Berger Haustechnik GmbH", "berger");
    pai.paperless.add_document_type("Invoice", "rechnung");
}

fn add_doc(pai: &Pai, title: &str, content: &str) -> u64 {
    pai.paperless.add_document(DocSeed {
        title: title.into(),
        content: content.into(),
        ..Default::default()
    })
}

async fn webhook(pai: &Pai, id: u64) -> String {
    pai.webhook_job(&json!({"doc_id": id.to_string()}).to_string())
        .await
}

/// The documents a chat answer cites.
async fn cited(pai: &Pai, question: &str, filters: Value) -> Vec<String> {
    let (status, answer) = pai
        .post_json("/chat", json!({"question": question, "filters": filters}))
        .await;
    assert_eq!(status, 200, "{answer}");
    answer["citations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["doc_id"].as_str().unwrap().to_string())
        .collect()
}

/// The model breaker's cooldown in the outage test: real time, the shortest there is.
const BREAKER_COOLDOWN: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_outage_of_minutes_heals_with_no_manual_action() {
    let clock = TestClock::new();
    let pai = Pai::start_clocked(
        &[
            ("MAX_RECEIVES", "8"),
            ("LLM_BREAKER_FAILURES", "1"),
            (
                "LLM_BREAKER_COOLDOWN_SECS",
                &BREAKER_COOLDOWN.as_secs().to_string(),
            ),
        ],
        clock.clock(),
    )
    .await;
    seed_taxonomy(&pai);
    let docs = [
        add_doc(&pai, "scan_1", INVOICE),
        add_doc(&pai, "scan_2", LETTER),
    ];
    pai.model.set_down(true);
    let mut jobs = Vec::new();
    for id in docs {
        jobs.push(webhook(&pai, id).await);
    }
    // Ten minutes of outage, a minute at a time: every message keeps failing or being refused.
    for _ in 0..10 {
        pump(&pai).await;
        clock.advance(Duration::from_secs(60));
    }
    assert!(
        !pai.model.embedding_requests().is_empty(),
        "the outage was met"
    );
    for id in &jobs {
        let j = job(&pai, id).await;
        assert_ne!(
            j["status"], "failed",
            "an outage of minutes fails nothing: {j:#}"
        );
    }
    assert_eq!(dead_letters(&pai).await, 0, "nothing dead-lettered");

    // The model is back; time passes, nobody does a thing. The breakers' cooldown runs on
    // real time, not on the test clock, and seven simulated hours of pumping take less real
    // time than that: wait it out once, or a breaker opened by the last failing call is still
    // open when the loop ends (and every message deferred by it waits in vain). No call runs
    // meanwhile, so nothing can open a breaker again.
    pai.model.set_down(false);
    tokio::time::sleep(BREAKER_COOLDOWN + Duration::from_millis(200)).await;
    // How far each message's back-off grew depends on how many calls met the outage rather
    // than the open breaker, which real time decides: wait out the longest back-off there
    // is, 6 h, a minute at a time.
    for _ in 0..7 * 60 {
        pump(&pai).await;
        let mut finished = 0;
        for id in &jobs {
            if matches!(
                job(&pai, id).await["status"].as_str(),
                Some("done" | "failed")
            ) {
                finished += 1;
            }
        }
        if finished == jobs.len() {
            break;
        }
        clock.advance(Duration::from_secs(60));
    }
    for (id, doc) in jobs.iter().zip(docs) {
        let j = job(&pai, id).await;
        assert_eq!(j["status"], "done", "{j:#}");
        assert_eq!(j["stages"]["embed"]["status"], "done", "{j:#}");
        let tags = pai.paperless.tag_names(
            &serde_json::from_value::<Vec<u64>>(
                pai.paperless.document(doc).unwrap()["tags"].clone(),
            )
            .unwrap(),
        );
        assert!(tags.contains(&"ai-processed".to_string()), "{tags:?}");
        assert!(!tags.contains(&"ai-failed".to_string()), "{tags:?}");
    }
    assert!(
        cited(&pai, "boiler repair cost", json!({}))
            .await
            .contains(&docs[0].to_string())
    );
    assert!(
        cited(&pai, "electricity bill Stadtwerke", json!({}))
            .await
            .contains(&docs[1].to_string())
    );
    assert_eq!(dead_letters(&pai).await, 0);
    pai.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_during_the_last_receive_fails_the_job_and_a_retry_processes_it() {
    let clock = TestClock::new();
    let pai = Pai::start_clocked(&[("MAX_RECEIVES", "2")], clock.clock()).await;
    seed_taxonomy(&pai);
    let id = add_doc(&pai, "scan_1", INVOICE);
    let job_id = webhook(&pai, id).await;

    // The worker takes the chunk message and is killed (-9) before settling it, twice: each
    // restart puts what was in flight back, as `pai serve` does when it starts.
    for _ in 0..2 {
        let got = pai
            .app
            .chunk
            .receive(1, Duration::from_secs(300))
            .await
            .unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(pai.app.chunk.recover_in_flight().await.unwrap(), 1);
    }
    // The next receive dead-letters it without running it.
    pump(&pai).await;
    assert_eq!(pai.app.chunk.dead_letters(10).await.unwrap().len(), 1);
    let failed = job(&pai, &job_id).await;
    assert_eq!(
        failed["status"], "failed",
        "no job stays queued forever: {failed:#}"
    );
    assert!(
        failed["stages"]["chunk"]["detail"]
            .as_str()
            .unwrap()
            .contains("dead-lettered"),
        "{failed:#}"
    );

    // A retry removes the dead letter and runs the job again, to the end.
    let (status, retried) = pai
        .post_json(&format!("/jobs/{job_id}/retry"), json!({}))
        .await;
    assert_eq!(status, 202, "{retried}");
    assert_eq!(retried["status"], "queued");
    assert_eq!(pai.app.chunk.dead_letters(10).await.unwrap().len(), 0);
    pump(&pai).await;
    let done = job(&pai, &job_id).await;
    assert_eq!(done["status"], "done", "{done:#}");
    assert!(
        cited(&pai, "boiler repair cost", json!({}))
            .await
            .contains(&id.to_string())
    );

    // Only failed jobs are re-run; unknown ones are 404.
    let (status, _) = pai
        .post_json(&format!("/jobs/{job_id}/retry"), json!({}))
        .await;
    assert_eq!(status, 409);
    let (status, _) = pai.post_json("/jobs/no-such-job/retry", json!({})).await;
    assert_eq!(status, 404);
    pai.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_failed_runs_every_failed_job_again() {
    let clock = TestClock::new();
    let pai = Pai::start_clocked(&[("MAX_RECEIVES", "1")], clock.clock()).await;
    seed_taxonomy(&pai);
    let ids = [add_doc(&pai, "a", INVOICE), add_doc(&pai, "b", LETTER)];
    let mut jobs = Vec::new();
    for id in ids {
        jobs.push(webhook(&pai, id).await);
    }
    // Paperless answers 503 for long enough to exhaust the single receive.
    pai.paperless.fail_next(1000, 503);
    pump(&pai).await;
    for j in &jobs {
        assert_eq!(job(&pai, j).await["status"], "failed");
    }
    pai.paperless.clear_failures();
    let (status, reply) = pai.post_json("/jobs/retry-failed", json!({})).await;
    assert_eq!(status, 202, "{reply}");
    assert_eq!(reply["count"], 2, "{reply}");
    pump(&pai).await;
    for j in &jobs {
        assert_eq!(job(&pai, j).await["status"], "done");
    }
    pai.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_changed_in_paperless_reaches_filtered_chat_without_reembedding() {
    let pai = Pai::start(&[]).await;
    seed_taxonomy(&pai);
    let id = add_doc(&pai, "scan_1", INVOICE);
    let first = webhook(&pai, id).await;
    pai.drain().await;
    assert_eq!(pai.wait_job(&first).await["status"], "done");
    let question = "boiler repair cost";
    assert!(
        cited(&pai, question, json!({"tags": ["Urgent"]}))
            .await
            .is_empty()
    );

    // The user adds a tag and changes the correspondent in Paperless; the webhook follows.
    let urgent = pai.paperless.add_tag("Urgent", "");
    let other = pai
        .paperless
        .add_correspondent("Stadtwerke Musterstadt", "");
    pai.paperless.edit_document(id, |doc| {
        doc["tags"].as_array_mut().unwrap().push(json!(urgent));
        doc.insert("correspondent".into(), json!(other));
    });
    let embeds = pai.model.embedding_requests().len();
    let second = webhook(&pai, id).await;
    pai.drain().await;
    assert_eq!(pai.wait_job(&second).await["status"], "done");
    assert_eq!(
        pai.model.embedding_requests().len(),
        embeds,
        "metadata alone is never embedded again"
    );
    let doc = id.to_string();
    assert_eq!(
        cited(&pai, question, json!({"tags": ["Urgent"]})).await,
        std::slice::from_ref(&doc)
    );
    assert_eq!(
        cited(
            &pai,
            question,
            json!({"correspondent": "Stadtwerke Musterstadt"})
        )
        .await,
        std::slice::from_ref(&doc)
    );
    assert!(
        cited(
            &pai,
            question,
            json!({"correspondent": "Berger Haustechnik GmbH"})
        )
        .await
        .is_empty()
    );

    // An edit no webhook reports (Paperless down for the call): the next sync catches it.
    pai.paperless.edit_document(id, |doc| {
        doc["tags"]
            .as_array_mut()
            .unwrap()
            .retain(|t| *t != json!(urgent));
    });
    shared::pipeline::sync::run(&pai.app.svc).await.unwrap();
    pai.drain().await;
    assert!(
        cited(&pai, question, json!({"tags": ["Urgent"]}))
            .await
            .is_empty()
    );
    assert_eq!(cited(&pai, question, json!({})).await, [doc]);
    pai.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_changed_while_embed_batches_wait_indexes_every_chunk_of_the_new_version() {
    let pai = Pai::start(&[("CHUNK_TOKENS", "32"), ("CHUNK_OVERLAP", "4")]).await;
    let paragraphs: Vec<String> = (0..60)
        .map(|i| format!("Paragraph {i} of the maintenance contract covers heating unit {i}, its yearly inspection and the spare parts list number {i}."))
        .collect();
    let v1 = paragraphs.join("\n");
    let id = add_doc(&pai, "contract", &v1);
    webhook(&pai, id).await;
    // Only the chunk step runs; the embed batches of version 1 wait in their queue.
    let chunk = pai
        .app
        .chunk
        .receive(1, Duration::from_secs(60))
        .await
        .unwrap();
    shared::pipeline::handle(&pai.app.svc, Stage::Chunk, &chunk[0].body, false)
        .await
        .unwrap();
    pai.app.chunk.delete(&chunk[0].receipt).await.unwrap();

    // The text changes (OCR redone, a page appended) before they run.
    pai.paperless.edit_document(id, |doc| {
        doc.insert(
            "content".into(),
            json!(format!("{v1}\nAnnex: the contract was extended to 2027.")),
        );
    });
    let second = webhook(&pai, id).await;
    pai.drain().await;
    let j = pai.wait_job(&second).await;
    assert_eq!(j["status"], "done", "{j:#}");
    assert_eq!(j["stages"]["embed"]["status"], "done", "{j:#}");

    let (manifest, _) = shared::pipeline::index::load_manifest(&pai.app.svc, &DocId::Paperless(id))
        .await
        .unwrap()
        .unwrap();
    assert!(
        manifest.chunks.len() > shared::pipeline::chunk::EMBED_BATCH,
        "several batches: {}",
        manifest.chunks.len()
    );
    let missing =
        shared::pipeline::index::missing(&pai.app.svc, &manifest.doc_id, &manifest.chunks)
            .await
            .unwrap();
    assert!(
        missing.is_empty(),
        "{} chunks of the new version lack a vector",
        missing.len()
    );
    pai.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excluded_documents_never_reach_a_model_and_leave_the_index_when_excluded_later() {
    let pai = Pai::start(&[("EXCLUDE_TAGS", "private")]).await;
    seed_taxonomy(&pai);
    let private = pai.paperless.add_tag("private", "");
    let secret = pai.paperless.add_document(DocSeed {
        title: "diary".into(),
        content: "My private diary: the boiler repair made me cry. Zebra-unique-word.".into(),
        tags: vec![private],
        ..Default::default()
    });
    let open = add_doc(&pai, "scan_1", INVOICE);
    let j1 = webhook(&pai, secret).await;
    let j2 = webhook(&pai, open).await;
    pai.drain().await;
    let excluded = pai.wait_job(&j1).await;
    assert_eq!(excluded["status"], "done", "{excluded:#}");
    for stage in ["chunk", "embed", "tag"] {
        assert_eq!(
            excluded["stages"][stage]["status"], "skipped",
            "{excluded:#}"
        );
    }
    assert_eq!(pai.wait_job(&j2).await["status"], "done");
    let everything_sent = format!(
        "{:?}{:?}",
        pai.model.embedding_requests(),
        pai.model.chat_requests()
    );
    assert!(
        !everything_sent.contains("Zebra-unique-word"),
        "the excluded text never went to a model"
    );
    assert!(
        !cited(&pai, "boiler repair diary", json!({}))
            .await
            .contains(&secret.to_string())
    );

    // The open document becomes private: it leaves the index at its next webhook.
    pai.paperless.edit_document(open, |doc| {
        doc["tags"].as_array_mut().unwrap().push(json!(private));
    });
    let chats = pai.model.chat_requests().len();
    let j3 = webhook(&pai, open).await;
    pai.drain().await;
    assert_eq!(
        pai.wait_job(&j3).await["stages"]["chunk"]["status"],
        "skipped"
    );
    assert!(
        !cited(&pai, "boiler repair cost", json!({}))
            .await
            .contains(&open.to_string())
    );
    let later: Vec<Value> = pai.model.chat_requests()[chats..].to_vec();
    assert!(
        !format!("{later:?}").contains("Heizkessels"),
        "no prompt after the exclusion holds its text"
    );
    pai.shutdown().await;
}

/// A job that fails while Paperless refuses writes (often why it failed) gets its failed tag
/// once Paperless is back: the write is kept, and the next sync makes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_tag_paperless_refused_is_written_by_the_next_sync() {
    let pai = Pai::start(&[]).await;
    seed_taxonomy(&pai);
    pai.model.set_default(|req| {
        if req.get("response_format").is_some() {
            "not json at all".to_string()
        } else {
            common::scripted_model(req)
        }
    });
    let id = add_doc(&pai, "scan_1", INVOICE);
    let tags = |pai: &Pai| {
        let doc = pai.paperless.document(id).unwrap();
        let ids: Vec<u64> = doc["tags"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_u64)
            .collect();
        pai.paperless.tag_names(&ids)
    };
    let job_id = webhook(&pai, id).await;
    pai.paperless.fail_next_patches(100, 503);
    pai.drain().await;
    assert_eq!(job(&pai, &job_id).await["status"], "failed");
    assert!(
        !tags(&pai).contains(&"ai-failed".to_string()),
        "Paperless refused the write"
    );

    pai.paperless.clear_failures();
    let report = shared::pipeline::sync::run(&pai.app.svc).await.unwrap();
    assert_eq!(report.failed_tags_written, 1, "{report:?}");
    assert!(
        tags(&pai).contains(&"ai-failed".to_string()),
        "{:?}",
        tags(&pai)
    );
    let again = shared::pipeline::sync::run(&pai.app.svc).await.unwrap();
    assert_eq!(again.failed_tags_written, 0, "written once");
    pai.shutdown().await;
}

/// Sync runs a transiently failed job again by itself a few times, not forever: a document
/// whose model calls keep failing would otherwise cost every sync run its full receives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_runs_a_failing_job_again_a_bounded_number_of_times() {
    let pai = Pai::start(&[("MAX_RECEIVES", "1"), ("LLM_BREAKER_FAILURES", "1000")]).await;
    seed_taxonomy(&pai);
    let id = add_doc(&pai, "scan_1", INVOICE);
    let job_id = webhook(&pai, id).await;
    pai.model.set_down(true);
    pump(&pai).await;
    assert_eq!(job(&pai, &job_id).await["status"], "failed");
    let mut reruns = 0;
    for _ in 0..shared::pipeline::healing::AUTOMATIC_RUNS + 2 {
        let report = shared::pipeline::sync::run(&pai.app.svc).await.unwrap();
        reruns += report.retried.iter().filter(|j| **j == job_id).count();
        pump(&pai).await;
        assert_eq!(job(&pai, &job_id).await["status"], "failed");
    }
    assert_eq!(reruns as u32, shared::pipeline::healing::AUTOMATIC_RUNS);
    // A person can still run it again.
    pai.model.set_down(false);
    let (status, _) = pai
        .post_json(&format!("/jobs/{job_id}/retry"), json!({}))
        .await;
    assert_eq!(status, 202);
    pump(&pai).await;
    assert_eq!(job(&pai, &job_id).await["status"], "done");
    pai.shutdown().await;
}
