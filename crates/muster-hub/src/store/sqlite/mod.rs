//! The SQLite implementation of [`Store`], embedded in the data dir.
//!
//! The only write connection applies each batch in one transaction, on the
//! thread that commits: the hub's writer runs on a thread of its own for
//! that, so a commit costs no hand-off between threads however many changes
//! it holds. Reads run on a small pool of read-only connections, on tokio's
//! blocking threads; in WAL mode they never wait for the writer. A third
//! thread folds the WAL back into the database in the background.
//!
//! WAL mode with `synchronous = NORMAL`: a committed batch survives a crash
//! of the hub process (the case `kill -9` tests), and may lose the last
//! batches only on a power loss.

mod codes;
mod files;
mod migrate;
mod read;
mod write;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc as std_mpsc};
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use async_trait::async_trait;
use muster_proto::jobs::{JobInfo, JobState, JobTarget};
use muster_proto::messages::{AuditEntry, SeriesPoint, StoredEvent};
use muster_proto::{AgentName, JobId, RunId, RunInfo, UnixMillis};
use rusqlite::{Connection, OpenFlags};
use tokio::sync::Semaphore;

use super::{Change, RunFilter, Snapshot, Store, StoredChunk};

/// Read connections: replays and listings of several clients at once.
const READERS: usize = 4;
/// How long a connection waits for a lock another holds (only checkpoints
/// and migrations take one the writer or a reader must wait for).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the checkpointer folds the WAL back into the database. The
/// writer never checkpoints itself: a checkpoint copies pages and syncs the
/// file, and a commit waiting behind one is a latency spike for everyone.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);
/// Memory-mapped I/O for readers, so replays read pages without copying
/// them through SQLite's cache first.
const READER_MMAP_BYTES: u64 = 256 * 1024 * 1024;

/// A [`Store`] backed by one SQLite file.
#[derive(Clone)]
pub struct SqliteStore {
    path: PathBuf,
    shared: Arc<Shared>,
}

struct Shared {
    /// The write connection. A std `Mutex`: only the hub's writer commits,
    /// one batch at a time, so it is never contended.
    writer: Mutex<Connection>,
    readers: Readers,
    /// Dropped with the store: tells the checkpoint thread to finish.
    _stop_checkpoints: std_mpsc::Sender<()>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Idle read connections. A std `Mutex`: held only to take or return one.
struct Readers {
    idle: Mutex<Vec<Connection>>,
    available: Semaphore,
}

impl SqliteStore {
    /// Opens (creating if needed) `muster.db` in `data_dir`, applies
    /// migrations and starts the checkpoint thread.
    pub async fn open(data_dir: &Path) -> anyhow::Result<Self> {
        let data_dir = data_dir.to_owned();
        tokio::task::spawn_blocking(move || Self::open_blocking(&data_dir))
            .await
            .context("opening the store")?
    }

    fn open_blocking(data_dir: &Path) -> anyhow::Result<Self> {
        files::data_dir(data_dir)?;
        let now = crate::clock::now_ms() as i64;
        let path = files::database(data_dir, |conn| {
            migrate::run(conn, now)
                .map(|_| ())
                .context("making a new database")
        })?;
        let mut conn = open_writer(&path)?;
        migrate::run(&mut conn, now).with_context(|| format!("migrating {}", path.display()))?;
        let readers = (0..READERS)
            .map(|_| open_reader(&path))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let checkpointer = open_reader_writer(&path)?;
        let (stop_tx, stop_rx) = std_mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("muster-store-checkpoint".into())
            .spawn(move || checkpoint_loop(checkpointer, stop_rx))
            .context("starting the store checkpoint thread")?;
        Ok(Self {
            path,
            shared: Arc::new(Shared {
                writer: Mutex::new(conn),
                readers: Readers {
                    idle: Mutex::new(readers),
                    available: Semaphore::new(READERS),
                },
                _stop_checkpoints: stop_tx,
            }),
        })
    }

    /// Runs `f` on a read connection, on a blocking thread.
    async fn read<T, F>(&self, f: F) -> anyhow::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> anyhow::Result<T> + Send + 'static,
    {
        let _permit = self
            .shared
            .readers
            .available
            .acquire()
            .await
            .context("the store is closed")?;
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            let readers = &shared.readers;
            let conn = readers
                .idle
                .lock()
                .expect("readers lock poisoned")
                .pop()
                .ok_or_else(|| anyhow!("no idle read connection"))?;
            let result = f(&conn);
            readers
                .idle
                .lock()
                .expect("readers lock poisoned")
                .push(conn);
            result
        })
        .await
        .context("a store read panicked")?
    }
}

fn open_writer(path: &Path) -> anyhow::Result<Connection> {
    let conn = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// A second read-write connection, for checkpoints only.
fn open_reader_writer(path: &Path) -> anyhow::Result<Connection> {
    let conn = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    Ok(conn)
}

/// Folds the WAL back into the database every [`CHECKPOINT_INTERVAL`],
/// without blocking the writer (a passive checkpoint copies what no reader
/// still needs), until the writer thread ends.
fn checkpoint_loop(conn: Connection, stop: std_mpsc::Receiver<()>) {
    while let Err(std_mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_INTERVAL) {
        let done = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, i64>(2)?,
            ))
        });
        if let Err(e) = done {
            tracing::debug!(error = %e, "checkpoint failed; trying again later");
        }
    }
    // The writer is gone: fold everything in, so the WAL is empty on disk.
    let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
}

fn open_reader(path: &Path) -> anyhow::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .with_context(|| format!("opening {} for reading", path.display()))?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "mmap_size", READER_MMAP_BYTES)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

fn commit_batch(conn: &mut Connection, changes: &[Change]) -> anyhow::Result<()> {
    let tx = conn.transaction()?;
    write::apply(&tx, changes)?;
    tx.commit().context("committing")?;
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    async fn load(&self) -> anyhow::Result<Snapshot> {
        self.read(read::snapshot).await
    }

    /// Commits on the calling thread, blocking it for the transaction: the
    /// hub's writer, the only caller, runs on a thread of its own.
    async fn commit(&self, changes: Arc<Vec<Change>>) -> anyhow::Result<()> {
        let mut conn = self.shared.writer.lock().expect("writer lock poisoned");
        commit_batch(&mut conn, &changes)
    }

    async fn run(&self, id: RunId) -> anyhow::Result<Option<RunInfo>> {
        self.read(move |conn| read::run(conn, id)).await
    }

    async fn run_by_idempotency_key(
        &self,
        requested_by: &str,
        key: &str,
    ) -> anyhow::Result<Option<RunInfo>> {
        let (requested_by, key) = (requested_by.to_owned(), key.to_owned());
        self.read(move |conn| read::run_by_key(conn, &requested_by, &key))
            .await
    }

    async fn runs(
        &self,
        filter: &RunFilter,
        before: Option<RunId>,
        limit: u32,
    ) -> anyhow::Result<Vec<RunInfo>> {
        let filter = filter.clone();
        self.read(move |conn| read::runs(conn, &filter, before, limit))
            .await
    }

    async fn output_since(
        &self,
        run: RunId,
        since: u64,
        limit: u32,
    ) -> anyhow::Result<Vec<StoredChunk>> {
        self.read(move |conn| read::output_since(conn, run, since, limit))
            .await
    }

    async fn events_since(
        &self,
        agent: &AgentName,
        since: u64,
        limit: u32,
    ) -> anyhow::Result<Vec<StoredEvent>> {
        let agent = agent.clone();
        self.read(move |conn| read::events_since(conn, &agent, since, limit))
            .await
    }

    async fn metrics_since(
        &self,
        agent: &AgentName,
        since_ms: UnixMillis,
    ) -> anyhow::Result<Vec<SeriesPoint>> {
        let agent = agent.clone();
        self.read(move |conn| read::metrics_since(conn, &agent, since_ms))
            .await
    }

    async fn job(&self, id: JobId) -> anyhow::Result<Option<JobInfo>> {
        self.read(move |conn| read::job(conn, id)).await
    }

    async fn job_by_idempotency_key(
        &self,
        requested_by: &str,
        key: &str,
    ) -> anyhow::Result<Option<JobInfo>> {
        let (requested_by, key) = (requested_by.to_owned(), key.to_owned());
        self.read(move |conn| read::job_by_key(conn, &requested_by, &key))
            .await
    }

    async fn job_targets(
        &self,
        job: JobId,
        after: Option<&AgentName>,
        limit: u32,
    ) -> anyhow::Result<Vec<JobTarget>> {
        let after = after.cloned();
        self.read(move |conn| read::job_targets(conn, job, after.as_ref(), limit))
            .await
    }

    async fn jobs(
        &self,
        state: Option<JobState>,
        before: Option<JobId>,
        agents: Option<&[AgentName]>,
        limit: u32,
    ) -> anyhow::Result<Vec<JobInfo>> {
        let agents = agents.map(<[AgentName]>::to_vec);
        self.read(move |conn| read::jobs(conn, state, before, agents.as_deref(), limit))
            .await
    }

    async fn job_events_since(
        &self,
        job: JobId,
        since: u64,
        limit: u32,
    ) -> anyhow::Result<Vec<(u64, String)>> {
        self.read(move |conn| read::job_events_since(conn, job, since, limit))
            .await
    }

    async fn audit(
        &self,
        since_ms: UnixMillis,
        after: u64,
        limit: u32,
    ) -> anyhow::Result<Vec<AuditEntry>> {
        self.read(move |conn| read::audit(conn, since_ms, after, limit))
            .await
    }
}
