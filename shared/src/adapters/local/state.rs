//! State store in SQLite: JSON items with versions and expiry, plus named counters.

use std::collections::BTreeMap;
use std::path::Path;

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};
use serde_json::Value;

use super::{Db, now_unix, sql};
use crate::ports::{Condition, StateStore, StoreError, Versioned};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL, version INTEGER NOT NULL, expires_at INTEGER);
CREATE TABLE IF NOT EXISTS counters (key TEXT NOT NULL, name TEXT NOT NULL, value INTEGER NOT NULL, PRIMARY KEY (key, name));
";

pub struct SqliteStateStore {
    db: Db,
}

impl SqliteStateStore {
    pub fn open(path: &Path) -> Result<SqliteStateStore, StoreError> {
        Self::new(&Db::open(path)?)
    }

    pub fn new(db: &Db) -> Result<SqliteStateStore, StoreError> {
        db.apply(SCHEMA)?;
        Ok(SqliteStateStore { db: db.clone() })
    }
}

#[async_trait]
impl StateStore for SqliteStateStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        self.db.read(|c| {
                let row: Option<(String, i64)> = c
                    .prepare_cached("SELECT value, version FROM state WHERE key = ?1 AND (expires_at IS NULL OR expires_at > ?2)").map_err(sql)?.query_row(
                        params![key, now_unix()],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()
                    .map_err(sql)?;
                row.map(|(v, version)| {
                    let value = serde_json::from_str(&v).map_err(|e| StoreError::Unavailable(format!("corrupt item {key}: {e}")))?;
                    Ok(Versioned { value, version: version as u64 })
                })
                .transpose()
        })
    }

    async fn put(
        &self,
        key: &str,
        value: &Value,
        condition: Condition,
        expires_at: Option<i64>,
    ) -> Result<u64, StoreError> {
        let key = key.to_string();
        let text = value.to_string();
        self.db
            .call(move |c| {
                super::in_savepoint(c, |tx| {
                    let current: Option<u64> = tx
                        .prepare_cached("SELECT version FROM state WHERE key = ?1 AND (expires_at IS NULL OR expires_at > ?2)").map_err(sql)?.query_row( params![key, now_unix()], |r| r.get::<_, i64>(0))
                        .optional()
                        .map_err(sql)?
                        .map(|v| v as u64);
                    match (condition, current) {
                        (Condition::Absent, Some(_)) => return Err(StoreError::Conflict(format!("{key} exists"))),
                        (Condition::Version(want), found) if found != Some(want) => {
                            return Err(StoreError::Conflict(format!("{key} is at version {found:?}, not {want}")));
                        }
                        _ => {}
                    }
                    let version = current.unwrap_or(0) + 1;
                    tx.prepare_cached("INSERT INTO state (key, value, version, expires_at) VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT(key) DO UPDATE SET value = excluded.value, version = excluded.version, expires_at = excluded.expires_at").map_err(sql)?.execute(
                        params![key, text, version as i64, expires_at],
                    )
                    .map_err(sql)?;
                    Ok(version)
                })
            })
            .await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let key = key.to_string();
        self.db
            .call(move |c| {
                super::in_savepoint(c, |sp| {
                    sp.prepare_cached("DELETE FROM state WHERE key = ?1")
                        .map_err(sql)?
                        .execute(params![key])
                        .map_err(sql)?;
                    sp.prepare_cached("DELETE FROM counters WHERE key = ?1")
                        .map_err(sql)?
                        .execute(params![key])
                        .map_err(sql)?;
                    Ok(())
                })
            })
            .await
    }

    async fn add(&self, key: &str, counter: &str, delta: i64) -> Result<i64, StoreError> {
        let (key, counter) = (key.to_string(), counter.to_string());
        self.db
            .call(move |c| {
                c.prepare_cached("INSERT INTO counters (key, name, value) VALUES (?1, ?2, ?3)
                     ON CONFLICT(key, name) DO UPDATE SET value = value + excluded.value RETURNING value").map_err(sql)?.query_row(
                    params![key, counter, delta],
                    |r| r.get(0),
                )
                .map_err(sql)
            })
            .await
    }

    async fn add_all(&self, key: &str, deltas: &[(&str, i64)]) -> Result<(), StoreError> {
        let key = key.to_string();
        let deltas: Vec<(String, i64)> = deltas.iter().map(|(c, d)| (c.to_string(), *d)).collect();
        self.db
            .call(move |c| {
                let mut stmt = c
                    .prepare_cached(
                        "INSERT INTO counters (key, name, value) VALUES (?1, ?2, ?3)
                         ON CONFLICT(key, name) DO UPDATE SET value = value + excluded.value",
                    )
                    .map_err(sql)?;
                for (counter, delta) in &deltas {
                    stmt.execute(params![key, counter, delta]).map_err(sql)?;
                }
                Ok(())
            })
            .await
    }

    async fn counters(&self, key: &str) -> Result<BTreeMap<String, i64>, StoreError> {
        self.db.read(|c| {
            let mut stmt = c
                .prepare_cached("SELECT name, value FROM counters WHERE key = ?1")
                .map_err(sql)?;
            let rows = stmt
                .query_map(params![key], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(sql)?;
            rows.collect::<Result<_, _>>().map_err(sql)
        })
    }

    async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Value)>, StoreError> {
        let prefix = prefix.to_string();
        let after = after.unwrap_or("").to_string();
        self.db
            .call(move |c| {
                // Keys are compared as text; `prefix || char(1114111)` bounds the range from above.
                let mut stmt = c
                    .prepare_cached(
                        "SELECT key, value FROM state WHERE key >= ?1 AND key < ?1 || char(1114111) AND key > ?2
                         AND (expires_at IS NULL OR expires_at > ?3) ORDER BY key LIMIT ?4",
                    )
                    .map_err(sql)?;
                let rows = stmt.query_map(params![prefix, after, now_unix(), limit as i64], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))).map_err(sql)?;
                let mut out = Vec::new();
                for row in rows {
                    let (k, v) = row.map_err(sql)?;
                    out.push((k, serde_json::from_str(&v).map_err(|e| StoreError::Unavailable(format!("corrupt item: {e}")))?));
                }
                Ok(out)
            })
            .await
    }

    async fn list_newest(
        &self,
        prefix: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Value)>, StoreError> {
        let prefix = prefix.to_string();
        let before = before.map(str::to_string);
        self.db
            .call(move |c| {
                // The primary key's index read backwards: a page costs `limit` rows, not a scan.
                let mut stmt = c
                    .prepare_cached(
                        "SELECT key, value FROM state WHERE key >= ?1 AND key < ?1 || char(1114111)
                         AND (?2 IS NULL OR key < ?2)
                         AND (expires_at IS NULL OR expires_at > ?3) ORDER BY key DESC LIMIT ?4",
                    )
                    .map_err(sql)?;
                let rows = stmt
                    .query_map(params![prefix, before, now_unix(), limit as i64], |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                    })
                    .map_err(sql)?;
                let mut out = Vec::new();
                for row in rows {
                    let (k, v) = row.map_err(sql)?;
                    out.push((
                        k,
                        serde_json::from_str(&v)
                            .map_err(|e| StoreError::Unavailable(format!("corrupt item: {e}")))?,
                    ));
                }
                Ok(out)
            })
            .await
    }
}
