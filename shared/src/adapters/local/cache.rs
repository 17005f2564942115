//! Cache in SQLite: bytes by key with an expiry; expired entries read as misses.

use std::path::Path;

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};

use super::{Db, now_unix, sql};
use crate::ports::{Cache, StoreError};

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS cache (key TEXT PRIMARY KEY, value BLOB NOT NULL, expires_at INTEGER);";

pub struct SqliteCache {
    db: Db,
}

impl SqliteCache {
    pub fn open(path: &Path) -> Result<SqliteCache, StoreError> {
        Self::new(&Db::open(path)?)
    }

    pub fn new(db: &Db) -> Result<SqliteCache, StoreError> {
        db.apply(SCHEMA)?;
        Ok(SqliteCache { db: db.clone() })
    }
}

#[async_trait]
impl Cache for SqliteCache {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.db.read(|c| {
                c.prepare_cached("SELECT value FROM cache WHERE key = ?1 AND (expires_at IS NULL OR expires_at > ?2)").map_err(sql)?.query_row( params![key, now_unix()], |r| r.get(0))
                    .optional()
                    .map_err(sql)
        })
    }

    async fn put(
        &self,
        key: &str,
        value: &[u8],
        expires_at: Option<i64>,
    ) -> Result<(), StoreError> {
        let (key, value) = (key.to_string(), value.to_vec());
        self.db
            .call(move |c| {
                c.prepare_cached(
                    "INSERT OR REPLACE INTO cache (key, value, expires_at) VALUES (?1, ?2, ?3)",
                )
                .map_err(sql)?
                .execute(params![key, value, expires_at])
                .map_err(sql)?;
                Ok(())
            })
            .await
    }
}
