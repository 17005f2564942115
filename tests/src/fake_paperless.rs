//! A stateful fake of the Paperless-ngx REST API, faithful where the tagger depends on it
//! (as a real Paperless-ngx 3.0.5 behaved, reference Appendix D): per-user tokens with
//! permission codenames (403 on a list the user may not view, e.g. `/api/storage_paths/`
//! without `view_storagepath`), groups and superusers, per-document owner and view/change
//! permissions (no owner: visible to every user with `view_document`; a document the user may
//! not view answers 404, one it may view but not change 403 on PATCH), `GET /api/ui_settings/`
//! with the user and its permissions, `?full_perms=true`, `?id__in=`; paginated taxonomy with
//! unique names (400 on a duplicate), PATCH replacing whole tag and custom-field sets,
//! `modified` advancing on every change, and a "Document Updated" webhook queued after every
//! PATCH (ours or a user's edit), delivered when the test says so (the Celery worker).
//! It records every request and can inject failures and latency.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

/// A document to seed.
#[derive(Debug, Clone)]
pub struct DocSeed {
    pub title: String,
    pub content: String,
    pub tags: Vec<u64>,
    pub correspondent: Option<u64>,
    pub document_type: Option<u64>,
    pub created: Option<String>,
    /// The owning user; `None`: visible to (and changeable by) every user with the global
    /// document permissions.
    pub owner: Option<u64>,
    /// `false`: no user may change it, not even a superuser (a shortcut for a locked document).
    pub user_can_change: bool,
    pub custom_fields: Vec<Value>,
    /// Object permissions besides the owner's (user and group ids).
    pub perms: DocPerms,
}

/// A document's object permissions, as `?full_perms=true` shows them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DocPerms {
    pub view_users: Vec<u64>,
    pub view_groups: Vec<u64>,
    pub change_users: Vec<u64>,
    pub change_groups: Vec<u64>,
}

/// A Paperless user behind a token.
#[derive(Debug, Clone)]
pub struct FakeUser {
    pub id: u64,
    pub username: String,
    pub is_superuser: bool,
    pub groups: Vec<u64>,
    /// Global permission codenames (`view_document`, `change_document`, `view_tag`, …).
    pub permissions: Vec<String>,
}

/// Every codename a superuser has, in the kinds the fake serves.
pub const ALL_PERMISSIONS: [&str; 24] = [
    "view_document",
    "add_document",
    "change_document",
    "delete_document",
    "view_tag",
    "add_tag",
    "change_tag",
    "delete_tag",
    "view_correspondent",
    "add_correspondent",
    "change_correspondent",
    "delete_correspondent",
    "view_documenttype",
    "add_documenttype",
    "change_documenttype",
    "delete_documenttype",
    "view_storagepath",
    "add_storagepath",
    "change_storagepath",
    "delete_storagepath",
    "view_customfield",
    "add_customfield",
    "change_customfield",
    "delete_customfield",
];

/// What the restricted user of Appendix D could do: documents, tags, correspondents and
/// types, but neither storage paths nor custom fields.
pub const RESTRICTED_PERMISSIONS: [&str; 9] = [
    "view_document",
    "change_document",
    "view_tag",
    "add_tag",
    "view_correspondent",
    "add_correspondent",
    "view_documenttype",
    "add_documenttype",
    "view_uisettings",
];

impl Default for DocSeed {
    fn default() -> Self {
        DocSeed {
            title: String::new(),
            content: String::new(),
            tags: vec![],
            correspondent: None,
            document_type: None,
            created: Some("2025-01-01".into()),
            owner: None,
            user_can_change: true,
            custom_fields: vec![],
            perms: DocPerms::default(),
        }
    }
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    pub query: String,
    pub body: Value,
}

#[derive(Default)]
struct Store {
    documents: BTreeMap<u64, Map<String, Value>>,
    perms: BTreeMap<u64, DocPerms>,
    /// Documents no one but a superuser may change.
    locked: std::collections::BTreeSet<u64>,
    /// By token.
    users: BTreeMap<String, FakeUser>,
    groups: BTreeMap<u64, String>,
    next_user: u64,
    /// Where "Document Updated" webhooks go: URL and `X-Webhook-Secret`.
    webhook: Option<(String, String)>,
    /// Documents updated since the last delivery, in order.
    outbox: Vec<u64>,
    /// The next PATCHes are applied but answered with this status (a proxy timing out after
    /// Paperless committed the change).
    fail_after_patch: Vec<u16>,
    /// tags, correspondents, document_types, storage_paths, custom_fields
    objects: BTreeMap<&'static str, BTreeMap<u64, Map<String, Value>>>,
    next_id: u64,
    tick: u64,
    log: Vec<RecordedRequest>,
    fail: Vec<u16>,
    /// The next PATCHes answer this status without touching state (other requests pass).
    fail_patch: Vec<u16>,
    latency: Duration,
}

impl Store {
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn now(&mut self) -> String {
        self.tick += 1;
        chrono_like(self.tick)
    }
}

/// 2025-01-01T00:00:00Z plus `secs` seconds, without a date library.
fn chrono_like(secs: u64) -> String {
    let (d, rem) = (secs / 86_400, secs % 86_400);
    format!(
        "2025-01-{:02}T{:02}:{:02}:{:02}Z",
        1 + d.min(27),
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

const KINDS: [&str; 5] = [
    "tags",
    "correspondents",
    "document_types",
    "storage_paths",
    "custom_fields",
];

pub struct FakePaperless {
    url: String,
    store: Arc<Mutex<Store>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakePaperless {
    fn drop(&mut self) {
        self.server.abort();
    }
}

#[derive(Clone)]
struct Ctx {
    store: Arc<Mutex<Store>>,
}

impl Store {
    fn user(&self, token: &str) -> Option<FakeUser> {
        self.users.get(token).cloned()
    }

    fn may(&self, user: &FakeUser, codename: &str) -> bool {
        user.is_superuser || user.permissions.iter().any(|p| p == codename)
    }

    fn in_any(user: &FakeUser, users: &[u64], groups: &[u64]) -> bool {
        users.contains(&user.id) || user.groups.iter().any(|g| groups.contains(g))
    }

    /// Paperless's object permissions: superuser, no owner, the owner, or granted.
    fn can_view(&self, user: &FakeUser, id: u64) -> bool {
        if user.is_superuser {
            return true;
        }
        if !self.may(user, "view_document") {
            return false;
        }
        let owner = self.documents.get(&id).and_then(|d| d["owner"].as_u64());
        let p = self.perms.get(&id).cloned().unwrap_or_default();
        owner.is_none_or(|o| o == user.id)
            || Self::in_any(user, &p.view_users, &p.view_groups)
            || Self::in_any(user, &p.change_users, &p.change_groups)
    }

    fn can_change(&self, user: &FakeUser, id: u64) -> bool {
        if self.locked.contains(&id) {
            return false;
        }
        if user.is_superuser {
            return true;
        }
        if !self.may(user, "change_document") {
            return false;
        }
        let owner = self.documents.get(&id).and_then(|d| d["owner"].as_u64());
        let p = self.perms.get(&id).cloned().unwrap_or_default();
        owner.is_none_or(|o| o == user.id) || Self::in_any(user, &p.change_users, &p.change_groups)
    }

    /// A document as this user sees it: `user_can_change`, and with `full_perms` its
    /// object permissions.
    fn render(&self, user: &FakeUser, id: u64, full_perms: bool) -> Map<String, Value> {
        let mut doc = self.documents[&id].clone();
        if full_perms {
            let p = self.perms.get(&id).cloned().unwrap_or_default();
            doc.insert(
                "permissions".into(),
                json!({"view": {"users": p.view_users, "groups": p.view_groups},
                       "change": {"users": p.change_users, "groups": p.change_groups}}),
            );
        } else {
            doc.insert("user_can_change".into(), json!(self.can_change(user, id)));
        }
        doc
    }
}

/// The permission model name of a kind's endpoint.
fn model_of(kind: &str) -> &'static str {
    match kind {
        "tags" => "tag",
        "correspondents" => "correspondent",
        "document_types" => "documenttype",
        "storage_paths" => "storagepath",
        _ => "customfield",
    }
}

fn forbidden() -> Response {
    reply(
        StatusCode::FORBIDDEN,
        json!({"detail": "You do not have permission to perform this action."}),
    )
}

impl FakePaperless {
    /// Starts the fake on a free loopback port; `token` belongs to a superuser (`admin`,
    /// id 1). Requests need `Authorization: Token <token>` of a known user.
    pub async fn start(token: &str) -> FakePaperless {
        let mut initial = Store {
            next_user: 1,
            ..Default::default()
        };
        initial.users.insert(
            token.to_string(),
            FakeUser {
                id: 1,
                username: "admin".into(),
                is_superuser: true,
                groups: vec![],
                permissions: vec![],
            },
        );
        let store = Arc::new(Mutex::new(initial));
        let ctx = Ctx {
            store: store.clone(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = Router::new().fallback(handle).with_state(ctx);
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakePaperless { url, store, server }
    }

    /// Base URL, without `/api`.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// A user with its own token, global permission codenames and groups; returns its id.
    pub fn add_user(
        &self,
        username: &str,
        token: &str,
        permissions: &[&str],
        groups: &[u64],
    ) -> u64 {
        let mut s = self.store.lock().unwrap();
        s.next_user += 1;
        let id = s.next_user;
        s.users.insert(
            token.to_string(),
            FakeUser {
                id,
                username: username.into(),
                is_superuser: false,
                groups: groups.to_vec(),
                permissions: permissions.iter().map(|p| p.to_string()).collect(),
            },
        );
        id
    }

    pub fn add_group(&self, name: &str) -> u64 {
        let mut s = self.store.lock().unwrap();
        let id = s.groups.len() as u64 + 1;
        s.groups.insert(id, name.into());
        id
    }

    /// Sends a "Document Updated" webhook to `url` after every PATCH (like a workflow with a
    /// webhook action), once `deliver_webhooks` is called.
    pub fn set_webhook(&self, url: &str, secret: &str) {
        self.store.lock().unwrap().webhook = Some((url.into(), secret.into()));
    }

    /// Documents updated whose webhook is not delivered yet.
    pub fn pending_webhooks(&self) -> Vec<u64> {
        self.store.lock().unwrap().outbox.clone()
    }

    /// Delivers the queued webhooks (as Paperless's Celery worker does, in order), and returns
    /// how many were sent. Paperless v2.20 sends `doc_url` only: so does this.
    pub async fn deliver_webhooks(&self) -> usize {
        let (target, outbox) = {
            let mut s = self.store.lock().unwrap();
            (s.webhook.clone(), std::mem::take(&mut s.outbox))
        };
        let Some((url, secret)) = target else {
            return 0;
        };
        let http = reqwest::Client::new();
        for id in &outbox {
            let body = json!({"doc_url": format!("{}/documents/{id}/", self.url)});
            let r = http
                .post(&url)
                .header("X-Webhook-Secret", &secret)
                .json(&body)
                .send()
                .await
                .expect("webhook delivered");
            assert_eq!(r.status().as_u16(), 202, "webhook refused");
        }
        outbox.len()
    }

    /// A user's edit in the web UI: the fields change, `modified` advances, and the
    /// "Document Updated" webhook is queued.
    pub fn user_edit(&self, id: u64, fields: Value) {
        let mut s = self.store.lock().unwrap();
        let now = s.now();
        let doc = s.documents.get_mut(&id).expect("document exists");
        for (k, v) in fields.as_object().cloned().unwrap_or_default() {
            doc.insert(k, v);
        }
        doc.insert("modified".into(), json!(now));
        s.outbox.push(id);
    }

    fn add_object(&self, kind: &'static str, name: &str, extra: Value) -> u64 {
        let mut s = self.store.lock().unwrap();
        let id = s.id();
        let mut obj = json!({"id": id, "slug": name.to_lowercase().replace(' ', "-"), "name": name, "owner": null}).as_object().unwrap().clone();
        obj.extend(extra.as_object().cloned().unwrap_or_default());
        s.objects.entry(kind).or_default().insert(id, obj);
        id
    }

    pub fn add_tag(&self, name: &str, match_words: &str) -> u64 {
        self.add_object("tags", name, json!({"match": match_words, "matching_algorithm": 1, "is_insensitive": true, "is_inbox_tag": false, "color": "#a6cee3"}))
    }

    pub fn add_correspondent(&self, name: &str, match_words: &str) -> u64 {
        self.add_object(
            "correspondents",
            name,
            json!({"match": match_words, "matching_algorithm": 1, "is_insensitive": true}),
        )
    }

    pub fn add_document_type(&self, name: &str, match_words: &str) -> u64 {
        self.add_object(
            "document_types",
            name,
            json!({"match": match_words, "matching_algorithm": 1, "is_insensitive": true}),
        )
    }

    pub fn add_storage_path(&self, name: &str) -> u64 {
        self.add_object("storage_paths", name, json!({"path": format!("{{{{ correspondent }}}}/{name}"), "match": "", "matching_algorithm": 0}))
    }

    /// A custom field; `select_options` are labels (ids are generated).
    pub fn add_custom_field(&self, name: &str, data_type: &str, select_options: &[&str]) -> u64 {
        let options: Vec<Value> = select_options
            .iter()
            .enumerate()
            .map(|(i, l)| json!({"id": format!("opt{i}"), "label": l}))
            .collect();
        self.add_object(
            "custom_fields",
            name,
            json!({"data_type": data_type, "extra_data": {"select_options": options}}),
        )
    }

    pub fn add_document(&self, seed: DocSeed) -> u64 {
        let mut s = self.store.lock().unwrap();
        let id = s.id();
        let now = s.now();
        let doc = json!({
            "id": id, "title": seed.title, "content": seed.content, "tags": seed.tags, "correspondent": seed.correspondent,
            "document_type": seed.document_type, "storage_path": null, "created": seed.created, "modified": now, "added": now,
            "owner": seed.owner, "custom_fields": seed.custom_fields, "notes": [],
            "mime_type": "application/pdf", "original_file_name": format!("scan_{id}.pdf"),
        });
        s.documents.insert(id, doc.as_object().unwrap().clone());
        s.perms.insert(id, seed.perms);
        if !seed.user_can_change {
            s.locked.insert(id);
        }
        id
    }

    pub fn document(&self, id: u64) -> Option<Value> {
        self.store
            .lock()
            .unwrap()
            .documents
            .get(&id)
            .cloned()
            .map(Value::Object)
    }

    /// A user's edit in the Paperless UI: changes the document's fields and, as Paperless
    /// does on every save, its `modified` time (so sync sees it).
    pub fn edit_document(&self, id: u64, change: impl FnOnce(&mut serde_json::Map<String, Value>)) {
        let mut s = self.store.lock().unwrap();
        let now = s.now();
        let doc = s.documents.get_mut(&id).expect("document exists");
        change(doc);
        doc.insert("modified".into(), json!(now));
    }

    pub fn delete_document(&self, id: u64) {
        self.store.lock().unwrap().documents.remove(&id);
    }

    pub fn tags(&self) -> Vec<Value> {
        self.objects("tags")
    }

    pub fn objects(&self, kind: &str) -> Vec<Value> {
        let s = self.store.lock().unwrap();
        s.objects
            .get(kind)
            .map(|m| m.values().cloned().map(Value::Object).collect())
            .unwrap_or_default()
    }

    pub fn tag_names(&self, ids: &[u64]) -> Vec<String> {
        let s = self.store.lock().unwrap();
        let tags = s.objects.get("tags").cloned().unwrap_or_default();
        ids.iter()
            .filter_map(|id| tags.get(id))
            .map(|t| t["name"].as_str().unwrap().to_string())
            .collect()
    }

    /// Documents carrying the tag named `name`.
    pub fn count_documents_with_tag(&self, name: &str) -> usize {
        let s = self.store.lock().unwrap();
        let Some(id) = s
            .objects
            .get("tags")
            .and_then(|t| t.values().find(|t| t["name"] == name))
            .and_then(|t| t["id"].as_u64())
        else {
            return 0;
        };
        s.documents
            .values()
            .filter(|d| d["tags"].as_array().is_some_and(|a| a.contains(&json!(id))))
            .count()
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.store.lock().unwrap().log.clone()
    }

    /// Requests with this method whose path starts with `prefix`.
    pub fn count(&self, method: &str, prefix: &str) -> usize {
        self.store
            .lock()
            .unwrap()
            .log
            .iter()
            .filter(|r| r.method == method && r.path.starts_with(prefix))
            .count()
    }

    /// The next `n` requests answer `status` (e.g. 500, 503) without touching state.
    pub fn fail_next(&self, n: usize, status: u16) {
        self.store
            .lock()
            .unwrap()
            .fail
            .extend(std::iter::repeat_n(status, n));
    }

    /// The next `n` PATCHes answer `status` without changing anything; reads still work.
    pub fn fail_next_patches(&self, n: usize, status: u16) {
        self.store
            .lock()
            .unwrap()
            .fail_patch
            .extend(std::iter::repeat_n(status, n));
    }

    /// Forgets the injected failures not yet answered (an outage that ends).
    pub fn clear_failures(&self) {
        let mut s = self.store.lock().unwrap();
        s.fail.clear();
        s.fail_patch.clear();
    }

    /// The next `n` PATCHes change the document (and fire the webhook) but answer `status`.
    pub fn apply_then_fail_next_patch(&self, n: usize, status: u16) {
        self.store
            .lock()
            .unwrap()
            .fail_after_patch
            .extend(std::iter::repeat_n(status, n));
    }

    pub fn set_latency(&self, latency: Duration) {
        self.store.lock().unwrap().latency = latency;
    }
}

fn reply(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

fn not_found() -> Response {
    reply(
        StatusCode::NOT_FOUND,
        json!({"detail": "No Document matches the given query."}),
    )
}

fn query_pairs(q: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(q.as_bytes()).into_owned().collect()
}

/// `{count, next, previous, results}` for one page, with absolute next/previous links.
fn paginate(base: &str, path: &str, items: Vec<Value>, q: &[(String, String)]) -> Response {
    let get = |k: &str| {
        q.iter()
            .find(|(key, _)| key == k)
            .and_then(|(_, v)| v.parse::<usize>().ok())
    };
    let page_size = get("page_size").unwrap_or(25).clamp(1, 100_000);
    let page = get("page").unwrap_or(1).max(1);
    let count = items.len();
    let start = (page - 1) * page_size;
    if start >= count && page > 1 {
        return reply(StatusCode::NOT_FOUND, json!({"detail": "Invalid page."}));
    }
    let results: Vec<Value> = items.into_iter().skip(start).take(page_size).collect();
    let link = |p: usize| json!(format!("{base}{path}?page={p}&page_size={page_size}"));
    let next = if start + page_size < count {
        link(page + 1)
    } else {
        Value::Null
    };
    let previous = if page > 1 {
        link(page - 1)
    } else {
        Value::Null
    };
    reply(
        StatusCode::OK,
        json!({"count": count, "next": next, "previous": previous, "results": results}),
    )
}

fn fold(s: &str) -> String {
    s.trim().to_lowercase()
}

async fn handle(
    State(ctx): State<Ctx>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let query = uri.query().unwrap_or("").to_string();
    let body_json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (latency, fail) = {
        let mut s = ctx.store.lock().unwrap();
        s.log.push(RecordedRequest {
            method: method.to_string(),
            path: path.clone(),
            query: query.clone(),
            body: body_json.clone(),
        });
        let fail = if !s.fail.is_empty() {
            Some(s.fail.remove(0))
        } else if method == Method::PATCH && !s.fail_patch.is_empty() {
            Some(s.fail_patch.remove(0))
        } else {
            None
        };
        (s.latency, fail)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if let Some(status) = fail {
        return reply(
            StatusCode::from_u16(status).unwrap(),
            json!({"detail": "injected failure"}),
        );
    }
    // The web UI's document page (what `document_url` links to): the browser's session, not
    // the API token, decides there, so it answers a plain page.
    if let ("GET", ["documents", id, "details"]) = (
        method.as_str(),
        path.trim_matches('/')
            .split('/')
            .collect::<Vec<_>>()
            .as_slice(),
    ) {
        let title = format!("Document {id} - Paperless-ngx");
        return (
            StatusCode::OK,
            [("content-type", "text/html; charset=utf-8")],
            format!("<!doctype html><title>{title}</title><h1>{title}</h1>"),
        )
            .into_response();
    }
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let user = auth
        .strip_prefix("Token ")
        .and_then(|t| ctx.store.lock().unwrap().user(t));
    let Some(user) = user else {
        return reply(
            StatusCode::UNAUTHORIZED,
            json!({"detail": "Invalid token."}),
        );
    };
    if let Some(accept) = headers.get("accept").and_then(|v| v.to_str().ok())
        && let Some(v) = accept.split("version=").nth(1)
        && !matches!(v.trim(), "9" | "10")
    {
        return reply(
            StatusCode::NOT_ACCEPTABLE,
            json!({"detail": format!("Invalid version in \"Accept\" header. Allowed: 9, 10")}),
        );
    }
    let q = query_pairs(&query);
    let base = format!(
        "http://{}",
        headers
            .get("host")
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost")
    );
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let mut s = ctx.store.lock().unwrap();
    let full_perms = q.iter().any(|(k, v)| k == "full_perms" && v == "true");
    match (method.as_str(), parts.as_slice()) {
        ("GET", ["api", "ui_settings"]) => {
            let permissions: Vec<String> = if user.is_superuser {
                ALL_PERMISSIONS.iter().map(|p| p.to_string()).collect()
            } else {
                user.permissions.clone()
            };
            reply(
                StatusCode::OK,
                json!({"user": {"id": user.id, "username": user.username, "is_staff": user.is_superuser,
                                "is_superuser": user.is_superuser, "groups": user.groups},
                       "settings": {}, "permissions": permissions}),
            )
        }
        ("GET", ["api", "profile"]) => reply(
            StatusCode::OK,
            json!({"id": user.id, "username": user.username, "email": "", "first_name": "", "last_name": ""}),
        ),
        ("GET", ["api", "documents"]) => {
            if !s.may(&user, "view_document") {
                return forbidden();
            }
            let get = |k: &str| q.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
            let visible: Vec<u64> = s
                .documents
                .keys()
                .copied()
                .filter(|id| s.can_view(&user, *id))
                .collect();
            let mut docs: Vec<Value> = visible
                .iter()
                .map(|id| Value::Object(s.render(&user, *id, full_perms)))
                .collect();
            if let Some(after) = get("modified__gt") {
                docs.retain(|d| d["modified"].as_str().unwrap_or("") > after.as_str());
            }
            if let Some(ids) = get("id__in") {
                let ids: Vec<u64> = ids.split(',').filter_map(|i| i.parse().ok()).collect();
                docs.retain(|d| ids.contains(&d["id"].as_u64().unwrap()));
            }
            if let Some(t) = get("tags__id__all").or(get("tags__id__in")) {
                let want: Vec<Value> = t
                    .split(',')
                    .filter_map(|i| i.parse::<u64>().ok())
                    .map(|i| json!(i))
                    .collect();
                let all = get("tags__id__all").is_some();
                docs.retain(|d| {
                    let has = d["tags"].as_array().cloned().unwrap_or_default();
                    if all {
                        want.iter().all(|w| has.contains(w))
                    } else {
                        want.iter().any(|w| has.contains(w))
                    }
                });
            }
            if get("ordering").as_deref() == Some("modified") {
                docs.sort_by(|a, b| a["modified"].as_str().cmp(&b["modified"].as_str()));
            }
            if let Some(fields) = get("fields") {
                let fields: Vec<&str> = fields.split(',').collect();
                for d in &mut docs {
                    if let Value::Object(m) = d {
                        m.retain(|k, _| fields.contains(&k.as_str()));
                    }
                }
            }
            paginate(&base, &path, docs, &q)
        }
        (m, ["api", "documents", id]) => {
            let Ok(id) = id.parse::<u64>() else {
                return not_found();
            };
            // A document this user may not view does not exist for it: 404, not 403.
            if !s.documents.contains_key(&id) || !s.can_view(&user, id) {
                return not_found();
            }
            match m {
                "GET" => {
                    let doc = s.render(&user, id, full_perms);
                    let trimmed = match q.iter().find(|(k, _)| k == "fields") {
                        Some((_, f)) => f
                            .split(',')
                            .filter_map(|k| doc.get(k).map(|v| (k.to_string(), v.clone())))
                            .collect(),
                        None => doc,
                    };
                    reply(StatusCode::OK, Value::Object(trimmed))
                }
                "DELETE" => {
                    s.documents.remove(&id);
                    StatusCode::NO_CONTENT.into_response()
                }
                "PATCH" => {
                    if !s.can_change(&user, id) {
                        return forbidden();
                    }
                    let Value::Object(patch) = body_json else {
                        return reply(
                            StatusCode::BAD_REQUEST,
                            json!({"non_field_errors": ["Invalid data."]}),
                        );
                    };
                    for (field, kind) in [
                        ("correspondent", "correspondents"),
                        ("document_type", "document_types"),
                        ("storage_path", "storage_paths"),
                    ] {
                        if let Some(v) = patch.get(field).and_then(Value::as_u64)
                            && !s.objects.get(kind).is_some_and(|o| o.contains_key(&v))
                        {
                            return reply(
                                StatusCode::BAD_REQUEST,
                                json!({field: [format!("Invalid pk \"{v}\" - object does not exist.")]}),
                            );
                        }
                    }
                    if let Some(tags) = patch.get("tags") {
                        let Some(list) = tags.as_array() else {
                            return reply(
                                StatusCode::BAD_REQUEST,
                                json!({"tags": ["Expected a list of items."]}),
                            );
                        };
                        for t in list {
                            let known = t.as_u64().is_some_and(|t| {
                                s.objects.get("tags").is_some_and(|o| o.contains_key(&t))
                            });
                            if !known {
                                return reply(
                                    StatusCode::BAD_REQUEST,
                                    json!({"tags": [format!("Invalid pk \"{t}\" - object does not exist.")]}),
                                );
                            }
                        }
                    }
                    if let Some(created) = patch.get("created").and_then(Value::as_str)
                        && (created.len() < 10 || created.as_bytes()[4] != b'-')
                    {
                        return reply(
                            StatusCode::BAD_REQUEST,
                            json!({"created": ["Date has wrong format. Use one of these formats instead: YYYY-MM-DD."]}),
                        );
                    }
                    let now = s.now();
                    let doc = s.documents.get_mut(&id).unwrap();
                    for (k, v) in patch {
                        if matches!(
                            k.as_str(),
                            "title"
                                | "tags"
                                | "correspondent"
                                | "document_type"
                                | "created"
                                | "custom_fields"
                                | "storage_path"
                                | "owner"
                        ) {
                            doc.insert(k, v);
                        }
                    }
                    doc.insert("modified".into(), json!(now));
                    // Every PATCH fires "Document Updated" (also one that only adds a tag).
                    s.outbox.push(id);
                    if !s.fail_after_patch.is_empty() {
                        let status = s.fail_after_patch.remove(0);
                        return reply(
                            StatusCode::from_u16(status).unwrap(),
                            json!({"detail": "upstream timed out"}),
                        );
                    }
                    reply(StatusCode::OK, Value::Object(s.render(&user, id, false)))
                }
                _ => reply(
                    StatusCode::METHOD_NOT_ALLOWED,
                    json!({"detail": "Method not allowed."}),
                ),
            }
        }
        (m, ["api", kind]) if KINDS.contains(kind) => {
            let kind: &'static str = KINDS.iter().find(|k| *k == kind).unwrap();
            let needed = match m {
                "GET" => "view",
                "POST" => "add",
                _ => "change",
            };
            if !s.may(&user, &format!("{needed}_{}", model_of(kind))) {
                return forbidden();
            }
            match m {
                "GET" => {
                    let docs = s.documents.values().cloned().collect::<Vec<_>>();
                    let mut items: Vec<Value> = s
                        .objects
                        .get(kind)
                        .map(|o| o.values().cloned().collect::<Vec<_>>())
                        .unwrap_or_default()
                        .into_iter()
                        .map(|mut o| {
                            let id = o["id"].clone();
                            let count = docs
                                .iter()
                                .filter(|d| {
                                    d["tags"].as_array().is_some_and(|a| a.contains(&id))
                                        || d.get(&kind[..kind.len() - 1]) == Some(&id)
                                })
                                .count();
                            o.insert("document_count".into(), json!(count));
                            Value::Object(o)
                        })
                        .collect();
                    for (k, v) in &q {
                        match k.as_str() {
                            "name__iexact" => {
                                items.retain(|o| fold(o["name"].as_str().unwrap_or("")) == fold(v))
                            }
                            "name__icontains" => items.retain(|o| {
                                fold(o["name"].as_str().unwrap_or("")).contains(&fold(v))
                            }),
                            "id__in" => {
                                let ids: Vec<u64> =
                                    v.split(',').filter_map(|i| i.parse().ok()).collect();
                                items.retain(|o| ids.contains(&o["id"].as_u64().unwrap()));
                            }
                            _ => {}
                        }
                    }
                    paginate(&base, &path, items, &q)
                }
                "POST" => {
                    let name = body_json["name"].as_str().unwrap_or("").trim().to_string();
                    if name.is_empty() {
                        return reply(
                            StatusCode::BAD_REQUEST,
                            json!({"name": ["This field may not be blank."]}),
                        );
                    }
                    let owner = body_json.get("owner").cloned().unwrap_or(Value::Null);
                    let exists = s.objects.get(kind).is_some_and(|o| {
                        o.values().any(|x| {
                            fold(x["name"].as_str().unwrap_or("")) == fold(&name)
                                && x["owner"] == owner
                        })
                    });
                    if exists {
                        return reply(
                            StatusCode::BAD_REQUEST,
                            json!({"error": "Object violates owner / name unique constraint"}),
                        );
                    }
                    let id = s.id();
                    let mut obj = json!({
                        "id": id, "slug": name.to_lowercase().replace(' ', "-"), "name": name, "owner": owner,
                        "match": body_json.get("match").cloned().unwrap_or(json!("")),
                        "matching_algorithm": body_json.get("matching_algorithm").cloned().unwrap_or(json!(6)),
                        "is_insensitive": true, "document_count": 0,
                    })
                    .as_object()
                    .unwrap()
                    .clone();
                    if kind == "custom_fields" {
                        obj.insert(
                            "data_type".into(),
                            body_json
                                .get("data_type")
                                .cloned()
                                .unwrap_or(json!("string")),
                        );
                    }
                    s.objects.entry(kind).or_default().insert(id, obj.clone());
                    reply(StatusCode::CREATED, Value::Object(obj))
                }
                _ => reply(
                    StatusCode::METHOD_NOT_ALLOWED,
                    json!({"detail": "Method not allowed."}),
                ),
            }
        }
        _ => reply(StatusCode::NOT_FOUND, json!({"detail": "Not found."})),
    }
}
