//! The Paperless port's adapter (the REST client) against the stateful fake: paging through a
//! large taxonomy, the version header, read and write, a concurrent duplicate name, and each
//! failure mapped to its kind (transient or not).

use std::time::Duration;

use pai_tests::fake_paperless::{DocSeed, FakePaperless};
use shared::config::Secret;
use shared::domain::{DocumentPatch, ObjectKind};
use shared::paperless::PaperlessClient;
use shared::ports::{PaperlessError, PaperlessReader, PaperlessWriter};

const TOKEN: &str = "client-test-token";

fn client(fake: &FakePaperless, token: &str) -> PaperlessClient {
    PaperlessClient::new(&fake.url(), Secret::new(token), Duration::from_secs(5)).unwrap()
}

#[tokio::test]
async fn reads_a_large_taxonomy_across_pages() {
    let fake = FakePaperless::start(TOKEN).await;
    for i in 0..2500 {
        fake.add_tag(&format!("tag-{i:04}"), "");
    }
    fake.add_correspondent("ACME", "acme");
    fake.add_custom_field("Priority", "select", &["low", "high"]);
    let t = client(&fake, TOKEN).taxonomy().await.unwrap();
    assert_eq!(t.tags.len(), 2500);
    assert_eq!(t.correspondents[0].match_words, "acme");
    assert_eq!(t.custom_fields[0].select_options[1].label, "high");
    let pages = fake
        .requests()
        .iter()
        .filter(|r| r.path == "/api/tags/")
        .count();
    assert_eq!(pages, 3, "1000 per page");
}

#[tokio::test]
async fn reads_and_patches_documents() {
    let fake = FakePaperless::start(TOKEN).await;
    let tag = fake.add_tag("Inbox", "");
    let id = fake.add_document(DocSeed {
        title: "scan".into(),
        content: "text".into(),
        tags: vec![tag],
        ..Default::default()
    });
    let c = client(&fake, TOKEN);
    let doc = c.document(id).await.unwrap();
    assert_eq!(
        (doc.title.as_str(), doc.content.as_str(), doc.tags.clone()),
        ("scan", "text", vec![tag])
    );
    let get = fake
        .requests()
        .into_iter()
        .find(|r| r.method == "GET")
        .unwrap();
    assert!(
        get.query.contains("fields="),
        "reads only the fields it needs"
    );
    c.patch(
        id,
        &DocumentPatch {
            title: Some("Invoice".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(fake.document(id).unwrap()["title"], "Invoice");
    assert_eq!(
        fake.document(id).unwrap()["tags"],
        serde_json::json!([tag]),
        "a PATCH without tags leaves them"
    );
    assert_eq!(
        c.document_url(id),
        format!("{}/documents/{id}/details", fake.url())
    );
}

#[tokio::test]
async fn a_name_created_concurrently_is_looked_up_not_duplicated() {
    let fake = FakePaperless::start(TOKEN).await;
    let existing = fake.add_tag("Invoices", "");
    let c = client(&fake, TOKEN);
    let got = c.create(ObjectKind::Tag, "invoices").await.unwrap();
    assert_eq!(got.id, existing);
    let created = c.create(ObjectKind::DocumentType, "Payslip").await.unwrap();
    assert_eq!(created.matching_algorithm, 0, "matching none");
    assert_eq!(fake.tags().len(), 1);
}

#[tokio::test]
async fn failures_are_typed() {
    let fake = FakePaperless::start(TOKEN).await;
    let locked = fake.add_document(DocSeed {
        content: "x".into(),
        user_can_change: false,
        ..Default::default()
    });
    let c = client(&fake, TOKEN);
    assert!(matches!(
        c.document(999).await,
        Err(PaperlessError::NotFound(_))
    ));
    assert!(matches!(
        c.patch(
            locked,
            &DocumentPatch {
                title: Some("t".into()),
                ..Default::default()
            }
        )
        .await,
        Err(PaperlessError::Forbidden(_))
    ));
    assert!(
        matches!(client(&fake, "wrong").document(locked).await, Err(PaperlessError::Forbidden(m)) if m.contains("401"))
    );
    fake.fail_next(1, 503);
    let e = c.document(locked).await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    let bad_tag = DocumentPatch {
        tags: Some(vec![12345]),
        ..Default::default()
    };
    assert!(matches!(
        c.patch(locked, &bad_tag).await,
        Err(PaperlessError::Forbidden(_))
    ));
    let open = fake.add_document(DocSeed {
        content: "y".into(),
        ..Default::default()
    });
    assert!(
        // The status, never Paperless's own text: error messages reach API callers.
        matches!(c.patch(open, &bad_tag).await, Err(PaperlessError::Rejected(m)) if m.contains("400") && !m.contains("Invalid pk"))
    );
    let dead = PaperlessClient::new(
        "http://127.0.0.1:9",
        Secret::new(TOKEN),
        Duration::from_secs(2),
    )
    .unwrap();
    assert!(dead.taxonomy().await.unwrap_err().is_transient());
}

#[tokio::test]
async fn the_paperless_port_contract() {
    let fake = FakePaperless::start(TOKEN).await;
    let tag = fake.add_tag("Inbox", "");
    let id = fake.add_document(DocSeed {
        title: "scan".into(),
        content: "text".into(),
        tags: vec![tag],
        ..Default::default()
    });
    pai_tests::contract::paperless(client(&fake, TOKEN), id).await;
}

/// A redirect is reported, never followed: following it would turn the PATCH into a GET and
/// carry the token to wherever the redirect points.
#[tokio::test]
async fn redirects_are_not_followed() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::Router;
    use axum::http::{StatusCode, header};
    use axum::routing::any;

    let followed = Arc::new(AtomicUsize::new(0));
    let hits = followed.clone();
    let app = Router::new()
        .route(
            "/api/documents/{id}/",
            any(|| async { (StatusCode::FOUND, [(header::LOCATION, "/elsewhere/")]) }),
        )
        .route(
            "/elsewhere/",
            any(move || {
                hits.fetch_add(1, Ordering::SeqCst);
                async { "{}" }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let c = PaperlessClient::new(&base, Secret::new(TOKEN), Duration::from_secs(5)).unwrap();
    let patch = DocumentPatch {
        title: Some("new".into()),
        ..Default::default()
    };
    let err = c.patch(7, &patch).await.unwrap_err();
    assert!(
        matches!(&err, PaperlessError::Rejected(m) if m.contains("302") && m.contains("redirect")),
        "{err}"
    );
    assert!(c.document(7).await.is_err());
    assert_eq!(
        followed.load(Ordering::SeqCst),
        0,
        "the redirect was followed"
    );
    server.abort();
}
