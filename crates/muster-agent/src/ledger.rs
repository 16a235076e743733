//! The ledger: which run ids this agent has started, so a run executes at most
//! once even when its `run.start` comes again (a hub re-dispatch after a
//! reconnect, or after this agent restarted).
//!
//! A run id is claimed when its `run.start` arrives; the claim is written to
//! `runs.ledger` in the state dir and fsynced before the process is spawned.
//! When the hub acknowledges the run's exit, the run is settled (a line that is
//! not synced: losing it only means the run is reported `unknown` once more,
//! which the hub ignores for a run it has already ended). Claimed runs that an
//! earlier agent process never settled are orphans: `hello` reports them
//! `unknown` until a hub has acknowledged that hello.
//!
//! Without a state dir the ledger lives in memory only. It still refuses a
//! repeated `run.start` within one agent process, but at-most-once across agent
//! restarts needs a state dir.
//!
//! The ledger is bounded: opening it compacts it to the [`LEDGER_KEEP_RUNS`]
//! most recent run ids, rewritten atomically; the same happens in memory, and
//! then on disk, whenever it reaches [`LEDGER_COMPACT_AT`] ids. A `run.start`
//! for an id older than that would execute again (a run in flight is still
//! protected by the run table); the hub re-dispatches only runs it has just
//! dispatched.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Context;
use muster_proto::RunId;
use tokio_util::task::TaskTracker;

use self::file::LedgerFile;
use self::index::{Index, Line};

mod file;
mod index;
#[cfg(test)]
mod tests;

/// How many of the most recent run ids a compaction keeps: far more than any
/// hub keeps in flight for one agent, and a file of well under 1 MiB.
pub(crate) const LEDGER_KEEP_RUNS: usize = 10_000;

/// How many run ids the ledger may reach before it is compacted while the agent runs.
pub(crate) const LEDGER_COMPACT_AT: usize = 2 * LEDGER_KEEP_RUNS;

/// The agent's record of started runs; cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Ledger {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// A std `Mutex`: held for map operations only, never across I/O or `.await`.
    index: Mutex<Index>,
    /// `None` for an in-memory ledger. Locked only on blocking threads, and
    /// before `index` when both are needed.
    file: Option<Mutex<LedgerFile>>,
    /// Set when a compaction dropped ids the file still holds.
    rewrite_pending: AtomicBool,
    /// Writes that nobody waits for (settling), so closing can wait for them.
    writes: TaskTracker,
}

impl Ledger {
    /// Opens (and compacts) the ledger in `state_dir`, or an in-memory one.
    /// Blocks on file I/O.
    pub(crate) fn open(state_dir: Option<&Path>) -> anyhow::Result<Self> {
        let Some(dir) = state_dir else {
            return Ok(Self::with(Index::default(), None));
        };
        let (file, lines) = LedgerFile::open(dir, |lines| {
            let mut index = Index::replay(lines);
            index.compact(LEDGER_KEEP_RUNS);
            index.lines()
        })
        .context("cannot open the run ledger")?;
        Ok(Self::with(Index::replay(lines), Some(file)))
    }

    fn with(index: Index, file: Option<LedgerFile>) -> Self {
        let shared = Shared {
            index: Mutex::new(index),
            file: file.map(Mutex::new),
            rewrite_pending: AtomicBool::new(false),
            writes: TaskTracker::new(),
        };
        Self {
            shared: Arc::new(shared),
        }
    }

    /// Claims `run` for this process; false when the ledger knows the id already.
    pub(crate) fn claim(&self, run: RunId) -> bool {
        let mut index = self.index();
        if !index.claim(run) {
            return false;
        }
        if index.len() >= LEDGER_COMPACT_AT {
            index.compact(LEDGER_KEEP_RUNS);
            self.shared.rewrite_pending.store(true, Ordering::Release);
        }
        true
    }

    /// Makes `run`'s claim durable; the run may be spawned once this returns `Ok`.
    pub(crate) async fn record_started(&self, run: RunId) -> anyhow::Result<()> {
        if self.shared.file.is_none() {
            return Ok(());
        }
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || shared.write_started(run))
            .await
            .context("the ledger writer panicked")?
    }

    /// Settles `run` (the hub stored its exit report).
    pub(crate) fn settle(&self, run: RunId) {
        if self.index().settle(run) {
            self.write_later(vec![Line::Settled(run)]);
        }
    }

    /// Runs an earlier agent process started and never settled.
    pub(crate) fn orphans(&self) -> Vec<RunId> {
        self.index().orphans()
    }

    /// Settles every orphan, once a hub acknowledged a hello that reported them.
    pub(crate) fn settle_orphans(&self) {
        let mut index = self.index();
        let settled: Vec<_> = index
            .orphans()
            .into_iter()
            .filter(|run| index.settle(*run))
            .map(Line::Settled)
            .collect();
        drop(index);
        if !settled.is_empty() {
            self.write_later(settled);
        }
    }

    /// Waits until every write started so far is done.
    pub(crate) async fn flush(&self) {
        self.shared.writes.close();
        self.shared.writes.wait().await;
        self.shared.writes.reopen();
    }

    /// Appends `lines` on a blocking thread, without syncing; failures are logged.
    fn write_later(&self, lines: Vec<Line>) {
        if self.shared.file.is_none() {
            return;
        }
        let shared = self.shared.clone();
        self.shared.writes.spawn_blocking(move || {
            if let Err(e) = shared.file().append(&lines, false) {
                tracing::warn!("cannot record settled runs in the ledger: {e:#}");
            }
        });
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        self.shared.index()
    }
}

impl Shared {
    /// Appends and syncs `run`'s claim; rewrites the file if a compaction is pending.
    fn write_started(&self, run: RunId) -> anyhow::Result<()> {
        let mut file = self.file();
        file.append(&[Line::Started(run)], true)?;
        if self.rewrite_pending.swap(false, Ordering::AcqRel) {
            let lines = self.index().lines();
            file.rewrite(&lines)
                .context("cannot compact the run ledger")?;
        }
        Ok(())
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        self.index.lock().expect("ledger index lock poisoned")
    }

    fn file(&self) -> MutexGuard<'_, LedgerFile> {
        let file = self.file.as_ref().expect("only file-backed ledgers write");
        file.lock().expect("ledger file lock poisoned")
    }
}
