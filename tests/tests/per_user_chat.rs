//! Chat as each Paperless user sees the archive (issue 13): a request with the user's own
//! token (`Authorization: Token …`) is answered only from documents Paperless lets that token
//! view — in the answer, its citations, the streamed events and follow-ups — and sessions
//! belong to whoever created them. Against the fake Paperless with users, groups, owners and
//! object permissions, through the HTTP API `pai serve` runs.

mod common;

use common::{Pai, SECRET};
use pai_tests::fake_paperless::{DocPerms, DocSeed};
use serde_json::{Value, json};

const ALICE: &str = "alice-paperless-token-0123";
const BOB: &str = "bob-paperless-token-4567";

struct Household {
    pai: Pai,
    alice: u64,
    salary: u64,
    medical: u64,
    insurance: u64,
}

async fn household() -> Household {
    // Offline answering: the answer is the passages' own sentences, so what it says shows
    // which documents it drew on.
    let pai = Pai::start(&[
        ("LLM_PROVIDER", "lexical"),
        ("EMBEDDING_PROVIDER", "lexical"),
    ])
    .await;
    pai.paperless
        .set_webhook(&pai.url("/webhooks/paperless"), SECRET);
    let family = pai.paperless.add_group("family");
    let reader = [
        "view_document",
        "view_tag",
        "view_correspondent",
        "view_documenttype",
    ];
    let alice = pai.paperless.add_user("alice", ALICE, &reader, &[family]);
    let bob = pai.paperless.add_user("bob", BOB, &reader, &[]);
    let salary = pai.paperless.add_document(DocSeed {
        title: "Salary statement".into(),
        content: "Contoso payroll. Salary statement for Alice: gross salary EUR 5,400 per month."
            .into(),
        owner: Some(alice),
        ..Default::default()
    });
    let medical = pai.paperless.add_document(DocSeed {
        title: "Medical report".into(),
        content:
            "Dr. Weber, medical report for Bob: blood pressure 140/90, diagnosis hypertension."
                .into(),
        owner: Some(bob),
        ..Default::default()
    });
    let insurance = pai.paperless.add_document(DocSeed {
        title: "Household insurance".into(),
        content: "Household insurance policy: the yearly premium is EUR 312, paid in January."
            .into(),
        ..Default::default()
    });
    for id in [salary, medical, insurance] {
        pai.webhook_job(&json!({"doc_id": id}).to_string()).await;
    }
    pai.drain().await;
    // Our own write-backs' webhooks.
    pai.paperless.deliver_webhooks().await;
    pai.drain().await;
    Household {
        pai,
        alice,
        salary,
        medical,
        insurance,
    }
}

async fn ask(pai: &Pai, token: &str, body: Value) -> (u16, Value) {
    let r = pai
        .http
        .post(pai.url("/chat"))
        .header("Authorization", format!("Token {token}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

fn cited(answer: &Value) -> Vec<String> {
    answer["citations"]
        .as_array()
        .map(|c| {
            c.iter()
                .map(|c| c["doc_id"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_user_gets_answers_only_from_documents_they_may_view() {
    let h = household().await;
    let question =
        json!({"question": "What is Bob's blood pressure diagnosis in the medical report?"});

    let (status, bobs) = ask(&h.pai, BOB, question.clone()).await;
    assert_eq!(status, 200, "{bobs}");
    assert!(cited(&bobs).contains(&h.medical.to_string()), "{bobs:#}");

    // Alice asks about Bob's document by name: nothing of it reaches her.
    let (status, alices) = ask(&h.pai, ALICE, question.clone()).await;
    assert_eq!(status, 200, "{alices}");
    assert!(
        !cited(&alices).contains(&h.medical.to_string()),
        "{alices:#}"
    );
    let text = alices.to_string();
    assert!(
        !text.contains("140/90") && !text.contains("hypertension"),
        "{alices:#}"
    );

    // Her own and the shared documents she does get.
    let (_, salary) = ask(
        &h.pai,
        ALICE,
        json!({"question": "How much is my gross salary per month?"}),
    )
    .await;
    assert!(cited(&salary).contains(&h.salary.to_string()), "{salary:#}");
    let (_, premium) = ask(
        &h.pai,
        ALICE,
        json!({"question": "What is the yearly household insurance premium?"}),
    )
    .await;
    assert!(
        cited(&premium).contains(&h.insurance.to_string()),
        "{premium:#}"
    );

    // The streamed answer keeps the same bounds.
    let stream = h
        .pai
        .http
        .post(h.pai.url("/chat"))
        .header("Authorization", format!("Token {ALICE}"))
        .header("Accept", "text/event-stream")
        .json(&question)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !stream.contains("140/90") && !stream.contains("hypertension"),
        "{stream}"
    );
    assert!(
        !stream.contains(&format!("\"doc_id\":\"{}\"", h.medical)),
        "{stream}"
    );

    // An API key sees what the service token sees.
    let (_, service) = h.pai.post_json("/chat", question).await;
    assert!(
        cited(&service).contains(&h.medical.to_string()),
        "{service:#}"
    );

    // A token Paperless does not know is refused.
    let (status, _) = ask(
        &h.pai,
        "not-a-paperless-token",
        json!({"question": "salary?"}),
    )
    .await;
    assert_eq!(status, 401);
    h.pai.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_belong_to_who_created_them() {
    let h = household().await;
    let (_, first) = ask(
        &h.pai,
        BOB,
        json!({"question": "What is the diagnosis in my medical report?"}),
    )
    .await;
    let session = first["session_id"].as_str().unwrap().to_string();
    // Alice cannot read or continue Bob's conversation, even knowing its id.
    let (status, reply) = ask(
        &h.pai,
        ALICE,
        json!({"question": "And the blood pressure?", "session_id": session}),
    )
    .await;
    assert_eq!(status, 404, "{reply}");
    assert!(!reply.to_string().contains("hypertension"), "{reply}");
    let (status, _) = h
        .pai
        .post_json(
            "/chat",
            json!({"question": "And the blood pressure?", "session_id": session}),
        )
        .await;
    assert_eq!(
        status, 404,
        "an API key does not take over a user's session either"
    );
    let (status, follow) = ask(
        &h.pai,
        BOB,
        json!({"question": "And the blood pressure?", "session_id": session}),
    )
    .await;
    assert_eq!(status, 200, "{follow}");
    h.pai.shutdown().await;
}

/// Revoking in Paperless counts on the next question (Paperless itself is asked); sharing
/// reaches chat once its "Document Updated" webhook (or the next sync) refreshes the index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permission_changed_in_paperless_applies_to_the_next_question() {
    let h = household().await;
    let question =
        json!({"question": "What is Bob's blood pressure diagnosis in the medical report?"});
    let (_, before) = ask(&h.pai, ALICE, question.clone()).await;
    assert!(!cited(&before).contains(&h.medical.to_string()));

    h.pai.paperless.set_permissions(
        h.medical,
        DocPerms {
            view_users: vec![h.alice],
            ..Default::default()
        },
    );
    h.pai.paperless.deliver_webhooks().await;
    h.pai.drain().await;
    let (_, shared) = ask(&h.pai, ALICE, question.clone()).await;
    assert!(
        cited(&shared).contains(&h.medical.to_string()),
        "{shared:#}"
    );

    // Taken back: the index still says "shared", Paperless says no, and Paperless decides.
    h.pai
        .paperless
        .set_permissions(h.medical, DocPerms::default());
    let (_, revoked) = ask(&h.pai, ALICE, question).await;
    assert!(
        !cited(&revoked).contains(&h.medical.to_string()),
        "{revoked:#}"
    );
    assert!(!revoked.to_string().contains("140/90"), "{revoked:#}");
    h.pai.shutdown().await;
}
