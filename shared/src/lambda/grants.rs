//! Which DynamoDB items each function may touch, and how: the one declaration the template's
//! IAM policies mirror (`dynamodb:LeadingKeys` per action, checked by tests/tests/template.rs)
//! and the Lambda wiring enforces (`ScopedState`, `ScopedCache`).
//!
//! Both tables are keyed by record family: the state table's partition key is a key's first
//! segment (`job`, `manifest`, …), the cache table's is the whole key, which starts with the
//! kind of reply it holds (`embedding/…`, `tag/…`). So a function that only answers questions
//! cannot rewrite jobs, and one that only embeds cannot plant a tagging reply.
//!
//! A call outside the declaration is a bug that AWS would answer with AccessDenied in
//! production only. The scoped stores refuse it the same way everywhere, so the tests on moto
//! (which enforces no IAM) find it; in debug builds they panic, so a call whose error the code
//! ignores (`let _ = …`) cannot hide it either.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use super::Function;
use crate::ports::{Cache, Condition, StateStore, StoreError, Versioned, key_family as family};

/// What a function does to items of a family, as DynamoDB actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// Reads an item or its counters (`GetItem`).
    Get,
    /// Writes an item or adds to a counter (`UpdateItem` on the state table, `PutItem` on the
    /// cache table).
    Put,
    /// `DeleteItem`.
    Delete,
    /// Lists a family in key order (`Query`).
    List,
}

/// The two tables of the template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Table {
    State,
    Cache,
}

impl Access {
    /// The IAM action this access needs on `table`.
    pub fn action(self, table: Table) -> &'static str {
        match (self, table) {
            (Access::Get, _) => "dynamodb:GetItem",
            (Access::Put, Table::State) => "dynamodb:UpdateItem",
            (Access::Put, Table::Cache) => "dynamodb:PutItem",
            (Access::Delete, _) => "dynamodb:DeleteItem",
            (Access::List, _) => "dynamodb:Query",
        }
    }
}

/// One family and what the function does to it.
pub type Grant = (&'static str, &'static [Access]);

use Access::{Delete as D, Get as G, List as L, Put as P};

impl Function {
    /// The state table's families this function uses, and how.
    pub fn state_grants(self) -> &'static [Grant] {
        match self {
            Function::Ingest => &[
                // Webhooks, uploads and retags start jobs (deleted again when their message
                // cannot be sent); job pages and retries read, count and list them.
                ("job", &[G, P, D, L]),
                ("suggestion", &[G, P, L]),
                // Approve and undo refresh the document's metadata in its manifest.
                ("manifest", &[G, P]),
                ("manifest-page", &[G, P, D]),
                // The per-key daily token cap; the status page's tokens today.
                ("usage", &[G, P]),
                ("status", &[G]),
                // A retry forgets the document's tag failure; before it, the retry routes
                // fail the jobs of dead letters not noted yet, as sync does (see Sync).
                ("retag", &[P, D]),
                ("failed", &[P, D]),
                ("failed-transient", &[P]),
                ("failed-mark", &[P]),
            ],
            Function::Chunk => &[
                ("job", &[G, P]),
                ("manifest", &[G, P, D]),
                ("manifest-page", &[G, P, D]),
                // A final failure: sync runs transient ones again; the failed tag is written
                // (or kept for sync when Paperless refuses it), ending a pending retag.
                ("failed-transient", &[P]),
                ("failed", &[P]),
                ("failed-mark", &[P]),
                ("retag", &[D]),
            ],
            Function::Embed => &[
                ("job", &[G, P]),
                ("manifest", &[G]),
                ("manifest-page", &[G]),
                // One marker per embedded batch: a redelivered batch is not counted twice.
                ("embedded", &[P, L]),
                ("failed-transient", &[P]),
            ],
            Function::Tag => &[
                ("job", &[G, P]),
                ("lease", &[G, P, D]),
                ("suggestion", &[G, P]),
                // The loop guard: what was tagged, and the failure remembered per text.
                ("tagged", &[G, P]),
                ("failed", &[G, P, D]),
                ("retag", &[G, D]),
                ("usage", &[G, P]),
                // After write-back the manifest gets the metadata Paperless now shows.
                ("manifest", &[G, P]),
                ("manifest-page", &[G, P, D]),
                ("failed-transient", &[P]),
                ("failed-mark", &[P]),
            ],
            Function::Chat => &[("session", &[G, P]), ("usage", &[G, P])],
            Function::Sync => &[
                // Cursors and the trigger tag's last sighting per document.
                ("sync", &[G, P]),
                ("job", &[G, P, D, L]),
                // Documents deleted in Paperless: their manifests, pages and loop guards go.
                ("manifest", &[G, D, L]),
                ("manifest-page", &[D]),
                ("tagged", &[D]),
                ("retag", &[P, D]),
                ("failed", &[P, D]),
                ("failed-transient", &[P, D, L]),
                ("failed-mark", &[P, D, L]),
            ],
        }
    }

    /// The cache table's families (reply kinds) this function reads and writes.
    pub fn cache_grants(self) -> &'static [Grant] {
        match self {
            Function::Embed => &[("embedding", &[G, P])],
            Function::Tag => &[("tag", &[G, P])],
            // The question's embedding, the rewritten follow-up, the answer.
            Function::Chat => &[
                ("embedding", &[G, P]),
                ("rewrite", &[G, P]),
                ("answer", &[G, P]),
            ],
            Function::Ingest | Function::Chunk | Function::Sync => &[],
        }
    }
}

fn check(
    function: Function,
    table: Table,
    grants: &[Grant],
    key: &str,
    access: Access,
) -> Result<(), StoreError> {
    let family = family(key);
    if grants
        .iter()
        .any(|(f, how)| *f == family && how.contains(&access))
    {
        return Ok(());
    }
    let message = format!(
        "the {} function may not {access:?} {family}/ items of the {table:?} table: it is not in Function::{}_grants (nor in the template's IAM policy)",
        function.name(),
        match table {
            Table::State => "state",
            Table::Cache => "cache",
        }
    );
    if cfg!(debug_assertions) {
        panic!("{message}");
    }
    tracing::error!(key, "{message}");
    Err(StoreError::Invalid(message))
}

/// The state store as one function may use it.
pub struct ScopedState {
    inner: Arc<dyn StateStore>,
    function: Function,
}

impl ScopedState {
    pub fn new(inner: Arc<dyn StateStore>, function: Function) -> ScopedState {
        ScopedState { inner, function }
    }

    fn allow(&self, key: &str, access: Access) -> Result<(), StoreError> {
        check(
            self.function,
            Table::State,
            self.function.state_grants(),
            key,
            access,
        )
    }
}

#[async_trait]
impl StateStore for ScopedState {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        self.allow(key, Access::Get)?;
        self.inner.get(key).await
    }

    async fn put(
        &self,
        key: &str,
        value: &Value,
        condition: Condition,
        expires_at: Option<i64>,
    ) -> Result<u64, StoreError> {
        self.allow(key, Access::Put)?;
        self.inner.put(key, value, condition, expires_at).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.allow(key, Access::Delete)?;
        self.inner.delete(key).await
    }

    async fn add(&self, key: &str, counter: &str, delta: i64) -> Result<i64, StoreError> {
        self.allow(key, Access::Put)?;
        self.inner.add(key, counter, delta).await
    }

    async fn add_all(&self, key: &str, deltas: &[(&str, i64)]) -> Result<(), StoreError> {
        self.allow(key, Access::Put)?;
        self.inner.add_all(key, deltas).await
    }

    async fn counters(&self, key: &str) -> Result<BTreeMap<String, i64>, StoreError> {
        self.allow(key, Access::Get)?;
        self.inner.counters(key).await
    }

    async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Value)>, StoreError> {
        self.allow(prefix, Access::List)?;
        self.inner.list(prefix, after, limit).await
    }

    async fn list_newest(
        &self,
        prefix: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Value)>, StoreError> {
        self.allow(prefix, Access::List)?;
        self.inner.list_newest(prefix, before, limit).await
    }
}

/// The cache as one function may use it.
pub struct ScopedCache {
    inner: Arc<dyn Cache>,
    function: Function,
}

impl ScopedCache {
    pub fn new(inner: Arc<dyn Cache>, function: Function) -> ScopedCache {
        ScopedCache { inner, function }
    }

    fn allow(&self, key: &str, access: Access) -> Result<(), StoreError> {
        check(
            self.function,
            Table::Cache,
            self.function.cache_grants(),
            key,
            access,
        )
    }
}

#[async_trait]
impl Cache for ScopedCache {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.allow(key, Access::Get)?;
        self.inner.get(key).await
    }

    async fn put(
        &self,
        key: &str,
        value: &[u8],
        expires_at: Option<i64>,
    ) -> Result<(), StoreError> {
        self.allow(key, Access::Put)?;
        self.inner.put(key, value, expires_at).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_function_uses_only_what_it_declares() {
        let grants = Function::Chat.state_grants();
        assert!(
            check(
                Function::Chat,
                Table::State,
                grants,
                "session/x",
                Access::Put
            )
            .is_ok()
        );
        let refused = std::panic::catch_unwind(|| {
            check(Function::Chat, Table::State, grants, "job/1", Access::Get)
        });
        // A panic in debug builds, an error in release ones: never a pass.
        assert!(!matches!(refused, Ok(Ok(()))));
    }
}
