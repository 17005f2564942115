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
use std::sync::Arc;

use rusqlite::Connection;

use crate::ports::StoreError;

pub use blob::{FileBlobStore, LocalBlobStore};
pub use cache::SqliteCache;
pub use queue::{Clock, QueueGauges, SqliteQueue};
pub use state::SqliteStateStore;
pub use vectors::SqliteVectorIndex;

/// One SQLite connection shared by every adapter of a process, owned by a writer thread
/// that commits in groups: every operation waiting when the thread comes round runs in its own
/// savepoint inside one transaction, and all of them are answered after the single COMMIT.
/// SQLite runs one writer at a time anyway; grouping turns fifty concurrent webhooks into a
/// handful of commits instead of fifty queued ones, which keeps acknowledgement latency low
/// while the workers write too.
#[derive(Clone)]
pub struct Db {
    ops: std::sync::mpsc::Sender<Op>,
    path: PathBuf,
    /// Connections for reads, which need no writer: see [`Db::read`].
    readers: Arc<std::sync::Mutex<Vec<Connection>>>,
    /// The checkpoint thread stops once every handle is gone.
    _alive: Arc<()>,
}

/// How often the WAL is checkpointed.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// Checkpoints the WAL in the background (PASSIVE: never blocks the writer).
fn spawn_checkpointer(path: &Path, alive: std::sync::Weak<()>) -> Result<(), StoreError> {
    let conn = Connection::open(path).map_err(sql)?;
    conn.busy_timeout(std::time::Duration::from_secs(1))
        .map_err(sql)?;
    // Checkpoints copy pages once: a small cache is enough.
    conn.execute_batch("PRAGMA cache_size=-256;").map_err(sql)?;
    std::thread::Builder::new()
        .name("pai-checkpoint".into())
        .spawn(move || {
            while alive.upgrade().is_some() {
                std::thread::sleep(CHECKPOINT_EVERY);
                if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE);") {
                    tracing::warn!(error = %e, "WAL checkpoint failed");
                }
            }
            let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
        })
        .map_err(|e| StoreError::Unavailable(format!("starting the checkpoint thread: {e}")))?;
    Ok(())
}

/// Read connections kept for the next read.
const MAX_IDLE_READERS: usize = 4;

/// A connection that only reads, with a small page cache (the writer's holds the hot pages too,
/// and the OS caches the file).
fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(sql)?;
    conn.busy_timeout(std::time::Duration::from_secs(1))
        .map_err(sql)?;
    conn.set_prepared_statement_cache_capacity(16);
    conn.execute_batch("PRAGMA query_only=1; PRAGMA cache_size=-256;")
        .map_err(sql)?;
    Ok(conn)
}

/// Runs `f` in a savepoint of its own: released when `f` succeeds, rolled back when it fails,
/// so a failing operation leaves nothing behind in its group's transaction. Made of cached
/// statements: rusqlite's `savepoint()` parses its SQL on every call (2 % of `pai`'s CPU in
/// the bench).
fn in_savepoint<R>(
    c: &mut Connection,
    f: impl FnOnce(&Connection) -> Result<R, StoreError>,
) -> Result<R, StoreError> {
    let run = |c: &Connection, sql_text: &str| {
        c.prepare_cached(sql_text)
            .and_then(|mut s| s.execute([]))
            .map_err(sql)
    };
    run(c, "SAVEPOINT operation")?;
    match f(c) {
        Ok(r) => run(c, "RELEASE operation").map(|_| r),
        Err(e) => {
            // Undone whatever the rollback says: the error to report is the operation's.
            let _ = run(c, "ROLLBACK TO operation");
            let _ = run(c, "RELEASE operation");
            Err(e)
        }
    }
}

/// An operation for the writer thread: runs on the connection, returns what to do once the
/// group is committed (answer the caller with its result, or with the commit's error).
type Op = Box<dyn FnOnce(&mut Connection) -> Box<dyn FnOnce(Result<(), String>) + Send> + Send>;

/// Most operations grouped into one transaction.
const MAX_GROUP: usize = 128;

impl Db {
    /// Opens (creating if needed) the database at `path` and starts its writer thread.
    pub fn open(path: &Path) -> Result<Db, StoreError> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| {
                StoreError::Unavailable(format!("creating {}: {e}", parent.display()))
            })?;
        }
        let mut conn = Connection::open(path).map_err(sql)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(sql)?;
        // Every adapter's statements are prepared once on this one connection (rusqlite keeps
        // 16 by default, fewer than the adapters use: the rest would be parsed on every call).
        conn.set_prepared_statement_cache_capacity(64);
        // Checkpoints (copying the WAL back into the database, with an fsync) run on their own
        // connection and thread, so the writer never stalls behind one.
        // A 1 MiB page cache (SQLite's default is 2 MiB per connection): the hot pages are
        // few (queue heads, recent jobs), and the OS caches the file anyway.
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA wal_autocheckpoint=0; PRAGMA cache_size=-1024;",
        )
        .map_err(sql)?;
        let alive = Arc::new(());
        spawn_checkpointer(path, Arc::downgrade(&alive))?;
        let (ops, queue) = std::sync::mpsc::channel::<Op>();
        std::thread::Builder::new()
            .name("pai-sqlite".into())
            .spawn(move || {
                // Ends when the last `Db` handle is dropped.
                while let Ok(first) = queue.recv() {
                    let mut group = vec![first];
                    while group.len() < MAX_GROUP {
                        match queue.try_recv() {
                            Ok(op) => group.push(op),
                            Err(_) => break,
                        }
                    }
                    let began = conn
                        .prepare_cached("BEGIN IMMEDIATE")
                        .and_then(|mut s| s.execute([]))
                        .map_err(|e| e.to_string());
                    let answers: Vec<_> = group.into_iter().map(|op| op(&mut conn)).collect();
                    let committed = began.and_then(|_| {
                        conn.prepare_cached("COMMIT")
                            .and_then(|mut s| s.execute([]).map(|_| ()))
                            .map_err(|e| e.to_string())
                    });
                    if committed.is_err() {
                        let _ = conn.execute_batch("ROLLBACK");
                    }
                    for answer in answers {
                        answer(committed.clone());
                    }
                }
            })
            .map_err(|e| StoreError::Unavailable(format!("starting the database thread: {e}")))?;
        Ok(Db {
            ops,
            path: path.to_path_buf(),
            readers: Arc::default(),
            _alive: alive,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn submit<R, F>(
        &self,
        f: F,
    ) -> Result<std::sync::mpsc::Receiver<Result<R, StoreError>>, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R, StoreError> + Send + 'static,
    {
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        self.enqueue(f, move |r| {
            let _ = reply.send(r);
        })?;
        Ok(answer)
    }

    fn enqueue<R, F>(
        &self,
        f: F,
        reply: impl FnOnce(Result<R, StoreError>) + Send + 'static,
    ) -> Result<(), StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R, StoreError> + Send + 'static,
    {
        let op: Op = Box::new(move |conn: &mut Connection| {
            // Operations of several statements open their own savepoint, so a failing one
            // rolls back alone; the group's COMMIT makes the survivors durable together.
            let result = f(conn);
            Box::new(move |committed: Result<(), String>| {
                reply(match committed {
                    Ok(()) => result,
                    Err(e) => Err(StoreError::Unavailable(format!("sqlite commit: {e}"))),
                })
            })
        });
        self.ops
            .send(op)
            .map_err(|_| StoreError::Unavailable("the database thread has stopped".into()))
    }

    /// Runs `f` and waits for it: for building adapters, outside the async hot path.
    pub fn setup<R>(
        &self,
        f: impl FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError>
    where
        R: Send + 'static,
    {
        self.submit(move |c| f(c))?
            .recv()
            .map_err(|_| StoreError::Unavailable("the database thread has stopped".into()))?
    }

    /// Creates an adapter's tables if they do not exist.
    pub fn apply(&self, schema: &'static str) -> Result<(), StoreError> {
        self.setup(move |c| c.execute_batch(schema).map_err(sql))
    }

    /// Runs a read on a connection of its own, on the calling thread, and sees what is
    /// committed. Through the writer thread, a point read was a channel send, a wake-up and a
    /// place in a group commit, for microseconds of work: reads were four in ten of its
    /// operations in the bench. A read cannot miss a write it depends on: a write answers
    /// only once it is committed. Only for reads of a few rows (a read blocks its async
    /// worker while it runs).
    pub fn read<R>(
        &self,
        f: impl FnOnce(&Connection) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let idle = self.readers.lock().expect("readers").pop();
        let conn = match idle {
            Some(c) => c,
            None => open_reader(&self.path)?,
        };
        let result = f(&conn);
        let mut idle = self.readers.lock().expect("readers");
        // As many as read at once (about one per worker thread); more would only hold caches.
        if idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
        result
    }

    /// Runs `f` on the connection in its own savepoint; answers once its group is committed.
    pub async fn call<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R, StoreError> + Send + 'static,
    {
        self.call_then(f, |_| {}).await
    }

    /// [`Db::call`], and `committed` run on the writer thread once `f`'s write is committed,
    /// before the caller is answered. Committed writes are answered in the order they were
    /// committed, so state kept beside the database (the vector index's memory) follows that
    /// order: updated after the await instead, two writers of one row could leave memory
    /// holding the one the database overwrote.
    pub async fn call_then<R, F>(
        &self,
        f: F,
        committed: impl FnOnce(&R) + Send + 'static,
    ) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R, StoreError> + Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.enqueue(f, move |r| {
            if let Ok(done) = &r {
                committed(done);
            }
            let _ = reply.send(r);
        })?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the database thread has stopped".into()))?
    }
}

pub(crate) fn sql(e: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(format!("sqlite: {e}"))
}

pub(crate) fn now_unix() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Every embedded adapter of one data folder, on one shared connection.
pub struct LocalStores {
    pub blobs: LocalBlobStore,
    pub state: SqliteStateStore,
    pub cache: SqliteCache,
    pub db: Db,
}

impl LocalStores {
    pub fn open(data_dir: &Path) -> Result<LocalStores, StoreError> {
        let db = Db::open(&data_dir.join("pai.sqlite3"))?;
        Ok(LocalStores {
            blobs: LocalBlobStore::new(&data_dir.join("blobs"), &db)?,
            state: SqliteStateStore::new(&db)?,
            cache: SqliteCache::new(&db)?,
            db,
        })
    }
}
