//! Blob stores of a data folder: files, one per key under a root folder, written atomically;
//! and `pai`'s own, which keeps the copies it can make again (a document's text) as rows of
//! its database instead.

use std::path::{Component, Path, PathBuf};

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};

use super::{Db, sql};
use crate::ports::{BlobStore, StoreError};

pub struct FileBlobStore {
    root: PathBuf,
}

impl FileBlobStore {
    pub fn open(root: &Path) -> Result<FileBlobStore, StoreError> {
        std::fs::create_dir_all(root)
            .map_err(|e| StoreError::Unavailable(format!("creating {}: {e}", root.display())))?;
        Ok(FileBlobStore {
            root: root.to_path_buf(),
        })
    }

    /// Maps a key to a path inside the root; keys that would escape it are refused.
    fn path(&self, key: &str) -> Result<PathBuf, StoreError> {
        let rel = Path::new(key);
        let safe = !key.is_empty()
            && key.len() <= 1024
            && rel.components().all(|c| matches!(c, Component::Normal(_)))
            && !key.contains('\0');
        if !safe {
            return Err(StoreError::Invalid(format!("bad blob key {key:?}")));
        }
        Ok(self.root.join(rel))
    }
}

impl FileBlobStore {
    /// Writes a temporary file and renames it into place (readers never see a part),
    /// forcing the bytes to disk first when `sync`.
    async fn write(&self, key: &str, bytes: &[u8], sync: bool) -> Result<(), StoreError> {
        let path = self.path(key)?;
        let bytes = bytes.to_vec();
        tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
            use std::io::Write;
            let dir = path.parent().expect("inside root");
            std::fs::create_dir_all(dir).map_err(io)?;
            let tmp = dir.join(format!(
                ".{}.tmp-{}",
                path.file_name().and_then(|n| n.to_str()).unwrap_or("blob"),
                uuid::Uuid::now_v7()
            ));
            let mut file = std::fs::File::create(&tmp).map_err(io)?;
            file.write_all(&bytes)
                .and_then(|_| if sync { file.sync_data() } else { Ok(()) })
                .map_err(io)?;
            std::fs::rename(&tmp, &path).map_err(io)
        })
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?
    }
}

fn io(e: std::io::Error) -> StoreError {
    StoreError::Unavailable(format!("blob store: {e}"))
}

#[async_trait]
impl BlobStore for FileBlobStore {
    async fn put(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.write(key, bytes, true).await
    }

    /// Without `fdatasync`: a tenth of `pai`'s CPU and most of the chunk stage's wait in the
    /// 1,000-document bench went to syncing each document's text snapshot.
    async fn put_recoverable(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.write(key, bytes, false).await
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match tokio::fs::read(self.path(key)?).await {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(e)),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match tokio::fs::remove_file(self.path(key)?).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(e)),
            _ => Ok(()),
        }
    }
}

const SCHEMA: &str =
    "CREATE TABLE IF NOT EXISTS recoverable_blobs (key TEXT PRIMARY KEY, bytes BLOB NOT NULL);";

/// `pai`'s blob store: what must survive (uploads, their text) in files as [`FileBlobStore`]
/// keeps them, and the recoverable copies in the database. A file per document's text cost a
/// directory and a file created, renamed and later deleted: the file system's inode
/// allocation took a fifth of `pai`'s CPU in the 1,000-document bench, where a row joins the
/// writer's group commit. Reads look in the database first, then for a file (where copies
/// written before this store are): a row shadows a file of the same key, so a recoverable
/// write need not touch the file system, while a `put` removes the row; `delete` removes
/// both.
pub struct LocalBlobStore {
    files: FileBlobStore,
    db: Db,
}

impl LocalBlobStore {
    pub fn new(root: &Path, db: &Db) -> Result<LocalBlobStore, StoreError> {
        db.apply(SCHEMA)?;
        Ok(LocalBlobStore {
            files: FileBlobStore::open(root)?,
            db: db.clone(),
        })
    }

    async fn delete_row(&self, key: &str) -> Result<(), StoreError> {
        let key = key.to_string();
        self.db
            .call(move |c| {
                c.prepare_cached("DELETE FROM recoverable_blobs WHERE key = ?1")
                    .and_then(|mut s| s.execute(params![key]))
                    .map(|_| ())
                    .map_err(sql)
            })
            .await
    }
}

#[async_trait]
impl BlobStore for LocalBlobStore {
    async fn put(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.files.put(key, bytes).await?;
        self.delete_row(key).await
    }

    async fn put_recoverable(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        // The same keys as files, so a key a file could not have is refused here too.
        self.files.path(key)?;
        let (key, bytes) = (key.to_string(), bytes.to_vec());
        self.db
            .call(move |c| {
                c.prepare_cached(
                    "INSERT OR REPLACE INTO recoverable_blobs (key, bytes) VALUES (?1, ?2)",
                )
                .and_then(|mut s| s.execute(params![key, bytes]))
                .map(|_| ())
                .map_err(sql)
            })
            .await
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.files.path(key)?;
        let row = self.db.read(|c| {
            c.prepare_cached("SELECT bytes FROM recoverable_blobs WHERE key = ?1")
                .and_then(|mut s| s.query_row(params![key], |r| r.get(0)).optional())
                .map_err(sql)
        })?;
        match row {
            Some(bytes) => Ok(Some(bytes)),
            None => self.files.get(key).await,
        }
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.files.delete(key).await?;
        self.delete_row(key).await
    }
}
