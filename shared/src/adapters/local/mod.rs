//! The embedded adapters that `pai` runs on: files and SQLite in one data folder.
//!
//! They are real, persistent software with the same semantics as their AWS counterparts (the
//! port contract suites prove it): SQLite in WAL mode with `synchronous=NORMAL` keeps every
//! committed transaction through a `kill -9`, and blobs are written to a temporary file and
//! renamed into place, so nothing is ever half-written.

mod blob;
mod cache;
mod queue;
mod state;
mod vectors;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::Connection;

use crate::ports::StoreError;

pub use blob::FileBlobStore;
pub use cache::SqliteCache;
pub use queue::SqliteQueue;
pub use state::SqliteStateStore;
pub use vectors::SqliteVectorIndex;

/// One SQLite connection, used from async code through the blocking pool.
#[derive(Clone)]
pub struct Db {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

impl Db {
    /// Opens (creating if needed) the database at `path` and applies `schema`.
    pub fn open(path: &Path, schema: &str) -> Result<Db, StoreError> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| {
                StoreError::Unavailable(format!("creating {}: {e}", parent.display()))
            })?;
        }
        let conn = Connection::open(path).map_err(sql)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(sql)?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;",
        )
        .map_err(sql)?;
        conn.execute_batch(schema).map_err(sql)?;
        Ok(Db {
            conn: Arc::new(Mutex::new(conn)),
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` with the connection on the blocking pool.
    pub async fn call<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R, StoreError> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("database task failed: {e}")))?
    }
}

pub(crate) fn sql(e: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(format!("sqlite: {e}"))
}

pub(crate) fn now_unix() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Every embedded adapter of one data folder.
pub struct LocalStores {
    pub blobs: FileBlobStore,
    pub state: SqliteStateStore,
    pub cache: SqliteCache,
    pub db: PathBuf,
}

impl LocalStores {
    pub fn open(data_dir: &Path) -> Result<LocalStores, StoreError> {
        let db = data_dir.join("pai.sqlite3");
        Ok(LocalStores {
            blobs: FileBlobStore::open(&data_dir.join("blobs"))?,
            state: SqliteStateStore::open(&db)?,
            cache: SqliteCache::open(&db)?,
            db,
        })
    }
}
