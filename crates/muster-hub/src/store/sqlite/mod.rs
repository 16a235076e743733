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
//!
//! Run output lives in a second file, `output.db`, attached to every
//! connection as `output`, with 64 KiB pages: a 10 KiB chunk then fits in
//! one page instead of a chain of overflow pages, which makes storing and
//! replaying output cheaper, while `muster.db` keeps the 4 KiB pages that
//! suit its small rows. A batch commits its output first, then the rest,
//! each in one transaction: a crash between the two leaves chunks stored
//! that nothing acknowledged, which the agent sends again and the store
//! ignores, never a state that counts output the store does not hold.

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
use bytes::Bytes;
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
        let output = files::output_database(data_dir)?;
        let path = files::database(data_dir, |conn| {
            attach_output(conn, &output, true)?;
            migrate::run(conn, now)
                .map(|_| ())
                .context("making a new database")
        })?;
        let mut conn = open_writer(&path, &output)?;
        migrate::run(&mut conn, now).with_context(|| format!("migrating {}", path.display()))?;
        let readers = (0..READERS)
            .map(|_| open_reader(&path, &output))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let checkpointer = open_reader_writer(&path, &output)?;
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

/// Attaches `output.db` as `output`; with `schema`, also makes it a WAL
/// database with 64 KiB pages and its table, if it has not got them.
fn attach_output(conn: &Connection, output: &Path, schema: bool) -> anyhow::Result<()> {
    let shown = output.display();
    let name = output
        .to_str()
        .with_context(|| format!("{shown} is not a UTF-8 path"))?;
    conn.execute("ATTACH DATABASE ?1 AS output", [name])
        .with_context(|| format!("attaching {shown}"))?;
    if schema {
        conn.execute_batch(migrate::OUTPUT_SCHEMA)
            .with_context(|| format!("making the schema of {shown}"))?;
        conn.pragma_update(Some("output"), "journal_mode", "WAL")?;
    }
    Ok(())
}

fn open_writer(path: &Path, output: &Path) -> anyhow::Result<Connection> {
    let conn = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    attach_output(&conn, output, true)?;
    for schema in ["main", "output"] {
        conn.pragma_update(Some(schema), "journal_mode", "WAL")?;
        conn.pragma_update(Some(schema), "synchronous", "NORMAL")?;
    }
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// A second read-write connection, for checkpoints only.
fn open_reader_writer(path: &Path, output: &Path) -> anyhow::Result<Connection> {
    let conn = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    attach_output(&conn, output, false)?;
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

fn open_reader(path: &Path, output: &Path) -> anyhow::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .with_context(|| format!("opening {} for reading", path.display()))?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    attach_output(&conn, output, false)?;
    for schema in ["main", "output"] {
        conn.pragma_update(Some(schema), "mmap_size", READER_MMAP_BYTES)?;
    }
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Commits a batch: its output first, then everything else, each in one
/// transaction (see the module documentation).
fn commit_batch(conn: &mut Connection, changes: &[Change]) -> anyhow::Result<()> {
    if changes.iter().any(write::is_output) {
        let tx = conn.transaction()?;
        write::apply(&tx, changes.iter().filter(|c| write::is_output(c)))?;
        tx.commit().context("committing output")?;
    }
    let tx = conn.transaction()?;
    write::apply(&tx, changes.iter().filter(|c| !write::is_output(c)))?;
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

    async fn output_frames_since(
        &self,
        run: RunId,
        since: u64,
        limit: u32,
    ) -> anyhow::Result<Vec<(u64, Bytes)>> {
        self.read(move |conn| read::output_frames_since(conn, run, since, limit))
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use bytes::Bytes;
    use muster_proto::OutputStream;
    use muster_proto::types::{CommandSpec, RunRequest};

    use super::*;

    #[tokio::test]
    async fn output_lives_in_its_own_private_file_with_large_pages_and_must_stay() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).await.unwrap();
        let request = RunRequest::new(
            AgentName::new("a").unwrap(),
            CommandSpec::Argv(vec!["true".into()]),
        );
        let run = RunInfo::queued(request, 1);
        let chunk = StoredChunk {
            seq: 0,
            stream: OutputStream::Stdout,
            offset: 0,
            at: None,
            data: Bytes::from(vec![7u8; 10 * 1024]),
        };
        let changes = vec![
            Change::InsertRun(Box::new(run.clone())),
            Change::AppendOutput(run.id, chunk.clone()),
        ];
        store.commit(Arc::new(changes)).await.unwrap();
        assert_eq!(store.output_since(run.id, 0, 10).await.unwrap(), [chunk]);
        drop(store);

        let output = dir.path().join(files::OUTPUT_FILE);
        let mode = std::fs::metadata(&output).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let conn = Connection::open(&output).unwrap();
        let page_size: i64 = conn
            .query_row("PRAGMA page_size", [], |row| row.get(0))
            .unwrap();
        assert_eq!(page_size, 65536);
        drop(conn);

        // The same data dir opens again, with its output.
        let store = SqliteStore::open(dir.path()).await.unwrap();
        assert_eq!(store.output_since(run.id, 0, 10).await.unwrap().len(), 1);
        drop(store);
        // Without its output file, it does not open at all.
        for file in files::with_wal_files(&output) {
            let _ = std::fs::remove_file(file);
        }
        let err = SqliteStore::open(dir.path()).await.unwrap_err();
        assert!(format!("{err:#}").contains("missing or empty"), "{err:#}");
    }
}
