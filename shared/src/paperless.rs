//! The Paperless-ngx REST client: token auth, API version 9 (accepted by late 2.x and 3.x),
//! trimmed document reads, the taxonomy paged in, objects created with matching "none" (and a
//! concurrent duplicate resolved by name), and PATCH for write-back.
//!
//! Least privilege: storage paths and custom fields are read only when the policy uses them,
//! and a 403 on a list other than tags turns that part off with one warning instead of failing
//! every document. Paperless answers 404 for a document the token may not view: the error
//! says so, naming the token's user.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::Secret;
use crate::domain::{
    CustomFieldDef, CustomFieldValue, Document, DocumentPatch, ObjectKind, SelectOption, Sharing,
    Taxonomy, TaxonomyObject,
};
use crate::ports::{
    DocumentQuery, DocumentSummary, PaperlessError, PaperlessReader, PaperlessWriter,
    TokenPermissions, TokenUser,
};

const ACCEPT: &str = "application/json; version=9";
const PAGE_SIZE: usize = 1000;
/// Largest response read from Paperless (a document's content can be long, but not this long).
const MAX_BODY: usize = 64 * 1024 * 1024;
/// What the pipeline reads of a document…
const DOCUMENT_FIELDS: &str = "id,title,content,tags,correspondent,document_type,created,owner,custom_fields,storage_path,permissions";
/// …and of it without its text.
const METADATA_FIELDS: &str = "id,title,tags,correspondent,document_type,created,owner,custom_fields,storage_path,permissions";

pub struct PaperlessClient {
    http: reqwest::Client,
    base: String,
    token: Secret,
    owner: Option<u64>,
    /// Browser-facing base for links (`PAPERLESS_PUBLIC_URL`); `base` when unset.
    public_base: Option<String>,
    needs: TaxonomyNeeds,
    /// Lists already warned about (403): one warning per process, not one per document.
    warned: std::sync::Mutex<std::collections::BTreeSet<&'static str>>,
    user: std::sync::Mutex<Option<TokenUser>>,
}

/// The optional parts of the taxonomy a policy reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaxonomyNeeds {
    pub custom_fields: bool,
    pub storage_paths: bool,
}

impl TaxonomyNeeds {
    pub const ALL: TaxonomyNeeds = TaxonomyNeeds {
        custom_fields: true,
        storage_paths: true,
    };

    pub fn of(policy: &crate::config::TaggingPolicy) -> TaxonomyNeeds {
        use crate::config::FieldMode;
        use crate::domain::Field;
        TaxonomyNeeds {
            custom_fields: policy.mode(Field::CustomFields) != FieldMode::Never
                && !policy.custom_fields.is_empty(),
            storage_paths: policy.mode(Field::StoragePath) != FieldMode::Never,
        }
    }
}

#[derive(Deserialize)]
struct Page<T> {
    #[serde(default)]
    next: Option<String>,
    results: Vec<T>,
}

#[derive(Deserialize)]
struct RawCustomField {
    id: u64,
    name: String,
    data_type: String,
    #[serde(default)]
    extra_data: Option<Value>,
}

fn endpoint(kind: ObjectKind) -> &'static str {
    match kind {
        ObjectKind::Tag => "tags",
        ObjectKind::Correspondent => "correspondents",
        ObjectKind::DocumentType => "document_types",
    }
}

impl PaperlessClient {
    pub fn new(
        base_url: &str,
        token: Secret,
        timeout: Duration,
    ) -> Result<PaperlessClient, PaperlessError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(5))
            // A redirect would turn a PATCH into a GET and send the token to another place:
            // a 3xx is reported, never followed.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!(
                "paperless-ai-serverless/",
                env!("CARGO_PKG_VERSION")
            ))
            .build()
            .map_err(|e| PaperlessError::Unavailable(format!("http client: {e}")))?;
        Ok(PaperlessClient {
            http,
            base: base_url.trim_end_matches('/').to_string(),
            token,
            owner: None,
            public_base: None,
            needs: TaxonomyNeeds::ALL,
            warned: Default::default(),
            user: Default::default(),
        })
    }

    /// Links (citations, jobs) use this browser-facing base URL.
    pub fn with_public_url(mut self, public: Option<String>) -> PaperlessClient {
        self.public_base = public.map(|u| u.trim_end_matches('/').to_string());
        self
    }

    /// Reads only the optional taxonomy parts the policy uses.
    pub fn with_needs(mut self, needs: TaxonomyNeeds) -> PaperlessClient {
        self.needs = needs;
        self
    }

    /// A list the policy can do without: empty (with one warning) when the token may not
    /// read it.
    async fn optional<T: for<'de> Deserialize<'de>>(
        &self,
        path: &'static str,
        needed: bool,
        feature: &str,
    ) -> Result<Vec<T>, PaperlessError> {
        if !needed {
            return Ok(Vec::new());
        }
        match self.all(path).await {
            Err(PaperlessError::Forbidden(reason)) => {
                if self.warned.lock().expect("warned").insert(path) {
                    tracing::warn!(%reason, "the Paperless token may not read /api/{path}: {feature} is off (see `pai check`)");
                }
                Ok(Vec::new())
            }
            other => other,
        }
    }

    /// The token's user, asked once.
    async fn user_cached(&self) -> Result<TokenUser, PaperlessError> {
        if let Some(u) = self.user.lock().expect("user").clone() {
            return Ok(u);
        }
        let v = self.call(Method::GET, "ui_settings/", &[], None).await?;
        let mut user: TokenUser = serde_json::from_value(v["user"].clone()).map_err(|e| {
            PaperlessError::Rejected(format!("GET ui_settings/: unexpected user: {e}"))
        })?;
        user.permissions = v["permissions"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        *self.user.lock().expect("user") = Some(user.clone());
        Ok(user)
    }

    /// A 404 for a document: missing, or (for a user who is not a superuser) perhaps only
    /// invisible to this token.
    async fn document_not_found(&self, id: u64) -> PaperlessError {
        match self.user_cached().await {
            Ok(u) if u.is_superuser => {
                PaperlessError::NotFound(format!("document {id} not found in Paperless"))
            }
            Ok(u) => PaperlessError::NotFound(format!(
                "document {id} not found in Paperless, or not visible to the token's user {:?} (Paperless answers 404 for a document its owner has not shared with that user)",
                u.username
            )),
            Err(_) => PaperlessError::NotFound(format!(
                "document {id} not found in Paperless, or not visible to this token"
            )),
        }
    }

    /// Objects this client creates are owned by this Paperless user.
    pub fn with_owner(mut self, owner: Option<u64>) -> PaperlessClient {
        self.owner = owner;
        self
    }

    /// One Paperless API call in its span: method, route (ids as `{id}`) and status.
    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Value, PaperlessError> {
        use tracing::Instrument;
        let span = tracing::info_span!(
            "paperless",
            http.request.method = %method,
            http.route = crate::telemetry::route_template(path),
            http.response.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        let result = self
            .request(method, path, query, body)
            .instrument(span.clone())
            .await;
        if result.is_err() {
            span.record("otel.status_code", "ERROR");
        }
        result
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Value, PaperlessError> {
        let url = format!("{}/api/{}", self.base, path.trim_start_matches('/'));
        let mut req = self
            .http
            .request(method.clone(), &url)
            .header("Authorization", format!("Token {}", self.token.expose()))
            .header("Accept", ACCEPT)
            .query(query);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| {
            PaperlessError::Unavailable(format!("{method} {path}: {}", without_url(&e)))
        })?;
        let status = resp.status();
        tracing::Span::current().record("http.response.status_code", status.as_u16());
        if resp.content_length().is_some_and(|l| l as usize > MAX_BODY) {
            return Err(PaperlessError::Rejected(format!(
                "{method} {path}: response too large"
            )));
        }
        let bytes = resp.bytes().await.map_err(|e| {
            PaperlessError::Unavailable(format!("{method} {path}: {}", without_url(&e)))
        })?;
        // Paperless's own words stay in the debug log: error messages reach API callers.
        let log_excerpt = || {
            tracing::debug!(
                %method, path, %status,
                body = %String::from_utf8_lossy(&bytes[..bytes.len().min(300)]),
                "Paperless refused"
            )
        };
        match status {
            s if s.is_success() => {
                if bytes.is_empty() {
                    return Ok(Value::Null);
                }
                // A proxy's error page or a body cut off in transit: try again later.
                serde_json::from_slice(&bytes).map_err(|e| {
                    PaperlessError::Unavailable(format!("{method} {path}: reply is not JSON: {e}"))
                })
            }
            StatusCode::UNAUTHORIZED => Err(PaperlessError::Forbidden(format!(
                "{method} {path}: PAPERLESS_TOKEN was rejected (401)"
            ))),
            StatusCode::FORBIDDEN => Err(PaperlessError::Forbidden(format!(
                "{method} {path}: the token may not do this (403)"
            ))),
            StatusCode::NOT_FOUND => Err(PaperlessError::NotFound(format!(
                "{method} {path}: not found in Paperless (404)"
            ))),
            StatusCode::TOO_MANY_REQUESTS | StatusCode::REQUEST_TIMEOUT => Err(
                PaperlessError::Unavailable(format!("{method} {path}: {status}")),
            ),
            s if s.is_server_error() => Err(PaperlessError::Unavailable(format!(
                "{method} {path}: {status}"
            ))),
            s if s.is_redirection() => Err(PaperlessError::Rejected(format!(
                "{method} {path}: Paperless answered {s}, a redirect, which is not followed: set PAPERLESS_URL to the address it redirects to"
            ))),
            s => {
                log_excerpt();
                Err(PaperlessError::Rejected(format!("{method} {path}: {s}")))
            }
        }
    }

    /// One document with only `fields`.
    async fn document_fields(&self, id: u64, fields: &str) -> Result<Document, PaperlessError> {
        match self
            .call(
                Method::GET,
                &format!("documents/{id}/"),
                &[("fields", fields.into()), ("full_perms", "true".into())],
                None,
            )
            .await
        {
            Err(PaperlessError::NotFound(_)) => Err(self.document_not_found(id).await),
            other => document_from(other?),
        }
    }

    async fn all<T: for<'de> Deserialize<'de>>(
        &self,
        path: &str,
    ) -> Result<Vec<T>, PaperlessError> {
        let mut out = Vec::new();
        for page in 1..=10_000 {
            let v = self
                .call(
                    Method::GET,
                    path,
                    &[
                        ("page", page.to_string()),
                        ("page_size", PAGE_SIZE.to_string()),
                    ],
                    None,
                )
                .await?;
            let p: Page<T> = serde_json::from_value(v).map_err(|e| {
                PaperlessError::Rejected(format!("GET {path}: unexpected page: {e}"))
            })?;
            out.extend(p.results);
            if p.next.is_none() {
                return Ok(out);
            }
        }
        Err(PaperlessError::Rejected(format!(
            "GET {path}: more than 10000 pages"
        )))
    }
}

/// reqwest errors name the URL; ours must never echo a URL that could carry a secret.
fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_decode() || e.is_body() {
        "broken response"
    } else {
        "request failed"
    };
    kind.to_string()
}

fn document_from(v: Value) -> Result<Document, PaperlessError> {
    #[derive(Deserialize)]
    struct Raw {
        id: u64,
        #[serde(default)]
        title: String,
        #[serde(default)]
        content: Option<String>,
        #[serde(default)]
        tags: Vec<u64>,
        correspondent: Option<u64>,
        document_type: Option<u64>,
        created: Option<String>,
        owner: Option<u64>,
        #[serde(default)]
        custom_fields: Vec<CustomFieldValue>,
        #[serde(default)]
        storage_path: Option<u64>,
        #[serde(default)]
        permissions: Option<Perms>,
    }
    #[derive(Deserialize, Default)]
    struct Grant {
        #[serde(default)]
        users: Vec<u64>,
        #[serde(default)]
        groups: Vec<u64>,
    }
    #[derive(Deserialize)]
    struct Perms {
        #[serde(default)]
        view: Grant,
        #[serde(default)]
        change: Grant,
    }
    let r: Raw = serde_json::from_value(v)
        .map_err(|e| PaperlessError::Rejected(format!("unexpected document: {e}")))?;
    Ok(Document {
        id: r.id,
        title: r.title,
        content: r.content.unwrap_or_default(),
        tags: r.tags,
        correspondent: r.correspondent,
        document_type: r.document_type,
        created: r.created,
        owner: r.owner,
        custom_fields: r.custom_fields,
        storage_path: r.storage_path,
        shared_with: r
            .permissions
            .map(|p| {
                let mut users: Vec<u64> = p.view.users.into_iter().chain(p.change.users).collect();
                let mut groups: Vec<u64> =
                    p.view.groups.into_iter().chain(p.change.groups).collect();
                users.sort_unstable();
                users.dedup();
                groups.sort_unstable();
                groups.dedup();
                Sharing { users, groups }
            })
            .unwrap_or_default(),
    })
}

#[async_trait]
impl PaperlessReader for PaperlessClient {
    async fn document(&self, id: u64) -> Result<Document, PaperlessError> {
        self.document_fields(id, DOCUMENT_FIELDS).await
    }

    async fn document_metadata(&self, id: u64) -> Result<Document, PaperlessError> {
        self.document_fields(id, METADATA_FIELDS).await
    }

    async fn taxonomy(&self) -> Result<Taxonomy, PaperlessError> {
        let (tags, correspondents, document_types, fields, storage_paths) = tokio::try_join!(
            self.all::<TaxonomyObject>("tags/"),
            self.optional::<TaxonomyObject>("correspondents/", true, "correspondents"),
            self.optional::<TaxonomyObject>("document_types/", true, "document types"),
            self.optional::<RawCustomField>(
                "custom_fields/",
                self.needs.custom_fields,
                "filling custom fields"
            ),
            self.optional::<TaxonomyObject>(
                "storage_paths/",
                self.needs.storage_paths,
                "choosing storage paths"
            ),
        )?;
        let custom_fields = fields
            .into_iter()
            .map(|f| {
                let options = f
                    .extra_data
                    .as_ref()
                    .and_then(|e| e.get("select_options"))
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let select_options = options
                    .iter()
                    .enumerate()
                    .filter_map(|(i, o)| match o {
                        // API ≥ 7: {id, label}; older: plain labels addressed by position.
                        Value::Object(m) => Some(SelectOption {
                            id: m
                                .get("id")
                                .map(|v| v.as_str().map(str::to_string).unwrap_or(v.to_string()))?,
                            label: m.get("label")?.as_str()?.to_string(),
                        }),
                        Value::String(s) => Some(SelectOption {
                            id: i.to_string(),
                            label: s.clone(),
                        }),
                        _ => None,
                    })
                    .collect();
                CustomFieldDef {
                    id: f.id,
                    name: f.name,
                    data_type: f.data_type,
                    select_options,
                }
            })
            .collect();
        Ok(Taxonomy {
            tags,
            correspondents,
            document_types,
            custom_fields,
            storage_paths,
        })
    }

    async fn list(
        &self,
        query: &DocumentQuery,
        page: u32,
    ) -> Result<(Vec<DocumentSummary>, bool), PaperlessError> {
        let mut q: Vec<(&str, String)> = vec![
            ("page", page.max(1).to_string()),
            ("page_size", "100".into()),
            ("ordering", "modified".into()),
            ("fields", "id,modified".into()),
        ];
        if let Some(after) = &query.modified_after {
            q.push(("modified__gt", after.clone()));
        }
        if let Some(tag) = query.tag {
            q.push(("tags__id__all", tag.to_string()));
        }
        if let Some(ids) = &query.ids {
            q.push((
                "id__in",
                ids.iter().map(u64::to_string).collect::<Vec<_>>().join(","),
            ));
        }
        let v = self.call(Method::GET, "documents/", &q, None).await?;
        let page: Page<DocumentSummary> = serde_json::from_value(v)
            .map_err(|e| PaperlessError::Rejected(format!("unexpected document list: {e}")))?;
        Ok((page.results, page.next.is_some()))
    }

    fn document_url(&self, id: u64) -> String {
        let base = self.public_base.as_deref().unwrap_or(&self.base);
        format!("{base}/documents/{id}/details")
    }

    async fn token_user(&self) -> Result<TokenUser, PaperlessError> {
        self.user_cached().await
    }

    fn for_user(&self, token: Secret) -> Option<Arc<dyn PaperlessReader>> {
        Some(Arc::new(PaperlessClient {
            http: self.http.clone(),
            base: self.base.clone(),
            token,
            owner: None,
            public_base: self.public_base.clone(),
            needs: self.needs,
            warned: Default::default(),
            user: Default::default(),
        }))
    }

    async fn permissions(&self) -> Result<Option<TokenPermissions>, PaperlessError> {
        #[derive(Deserialize, Default)]
        struct User {
            #[serde(default)]
            username: String,
            #[serde(default)]
            is_superuser: bool,
        }
        #[derive(Deserialize)]
        struct UiSettings {
            #[serde(default)]
            user: User,
            #[serde(default)]
            permissions: Vec<String>,
        }
        let v = self.call(Method::GET, "ui_settings/", &[], None).await?;
        let s: UiSettings = serde_json::from_value(v).map_err(|e| {
            PaperlessError::Rejected(format!("GET ui_settings/: unexpected answer: {e}"))
        })?;
        Ok(Some(TokenPermissions {
            username: s.user.username,
            is_superuser: s.user.is_superuser,
            permissions: s.permissions.into_iter().collect(),
        }))
    }
}

#[async_trait]
impl PaperlessWriter for PaperlessClient {
    async fn create(&self, kind: ObjectKind, name: &str) -> Result<TaxonomyObject, PaperlessError> {
        let path = format!("{}/", endpoint(kind));
        match self
            .call(
                Method::POST,
                &path,
                &[],
                Some(&json!({"name": name, "matching_algorithm": 0, "owner": self.owner})),
            )
            .await
        {
            Ok(v) => serde_json::from_value(v)
                .map_err(|e| PaperlessError::Rejected(format!("unexpected created object: {e}"))),
            Err(PaperlessError::Rejected(reason)) => {
                // Another worker created it first (unique name): use that one.
                let v = self
                    .call(
                        Method::GET,
                        &path,
                        &[("name__iexact", name.to_string())],
                        None,
                    )
                    .await?;
                let page: Page<TaxonomyObject> = serde_json::from_value(v)
                    .map_err(|e| PaperlessError::Rejected(format!("unexpected page: {e}")))?;
                page.results
                    .into_iter()
                    .next()
                    .ok_or(PaperlessError::Rejected(reason))
            }
            Err(e) => Err(e),
        }
    }

    async fn patch(&self, id: u64, patch: &DocumentPatch) -> Result<(), PaperlessError> {
        let body = serde_json::to_value(patch).expect("patch serialises");
        match self
            .call(Method::PATCH, &format!("documents/{id}/"), &[], Some(&body))
            .await
        {
            Err(PaperlessError::NotFound(_)) => Err(self.document_not_found(id).await),
            Err(PaperlessError::Forbidden(_)) => Err(PaperlessError::Forbidden(format!(
                "PATCH documents/{id}/: the token may view but not change this document (403)"
            ))),
            other => other.map(|_| ()),
        }
    }
}
