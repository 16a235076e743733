//! The runs in flight on this agent, which outlive any one hub connection.
//!
//! Each `run.start` becomes a task that drives the executor and queues the
//! run's messages on the agent's single outgoing channel. A run stays in the
//! table while its task lives, so `run.cancel` can find it; the table entry is a
//! guard the task drops on its way out, whether it finished or was aborted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use muster_proto::RunId;
use muster_proto::messages::RunStart;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::executor::{Executor, drive};
use crate::sink::Outgoing;

/// Cancellation tokens of the runs in flight. A std `Mutex` is right here: it
/// is held only for a map operation, never across an `.await`.
type Table = Arc<Mutex<HashMap<RunId, CancellationToken>>>;

/// Starts, cancels and stops runs.
pub(crate) struct Runs {
    executor: Arc<dyn Executor>,
    /// Shared by every run; the current connection (if any) drains it.
    outgoing_tx: mpsc::Sender<Outgoing>,
    table: Table,
    /// Owning the tasks lets shutdown wait for them and abort the stragglers.
    tasks: JoinSet<()>,
}

impl Runs {
    pub(crate) fn new(executor: Arc<dyn Executor>, outgoing_tx: mpsc::Sender<Outgoing>) -> Self {
        Self {
            executor,
            outgoing_tx,
            table: Table::default(),
            tasks: JoinSet::new(),
        }
    }

    /// Starts a run, unless one with the same id is already in flight.
    pub(crate) fn start(&mut self, start: RunStart) {
        self.reap();
        let run = start.run;
        let cancel = CancellationToken::new();
        let entry = match Entry::insert(&self.table, run, cancel.clone()) {
            Some(entry) => entry,
            None => {
                tracing::warn!(%run, "ignoring run.start for a run already in flight");
                return;
            }
        };
        let executor = self.executor.clone();
        let outgoing_tx = self.outgoing_tx.clone();
        self.tasks.spawn(async move {
            drive(executor, start, cancel, outgoing_tx).await;
            drop(entry);
        });
    }

    /// Cancels a run in flight; false when no such run is running here.
    pub(crate) fn cancel(&self, run: RunId) -> bool {
        let table = self.table.lock().expect("run table lock poisoned");
        table.get(&run).inspect(|cancel| cancel.cancel()).is_some()
    }

    /// Asks every run to stop (SIGTERM, grace, SIGKILL for processes).
    pub(crate) fn cancel_all(&self) {
        for cancel in self.table.lock().expect("run table lock poisoned").values() {
            cancel.cancel();
        }
    }

    /// Waits for the next run task to finish; `None` when none is left.
    pub(crate) async fn join_next(&mut self) -> Option<()> {
        let joined = self.tasks.join_next().await?;
        log_panic(joined);
        Some(())
    }

    /// Aborts every run task and waits until they are gone; dropping an
    /// execution kills its process group.
    pub(crate) async fn abort_all(&mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }

    /// Collects finished tasks so the set does not grow without bound.
    fn reap(&mut self) {
        while let Some(joined) = self.tasks.try_join_next() {
            log_panic(joined);
        }
    }
}

fn log_panic(joined: Result<(), tokio::task::JoinError>) {
    if let Err(e) = joined
        && e.is_panic()
    {
        tracing::error!("a run task panicked: {e}");
    }
}

/// A run's place in the table, removed on drop.
struct Entry {
    table: Table,
    run: RunId,
}

impl Entry {
    /// Registers `run`; `None` if it is already registered.
    fn insert(table: &Table, run: RunId, cancel: CancellationToken) -> Option<Self> {
        let mut map = table.lock().expect("run table lock poisoned");
        if map.contains_key(&run) {
            return None;
        }
        map.insert(run, cancel);
        Some(Self {
            table: table.clone(),
            run,
        })
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        if let Ok(mut map) = self.table.lock() {
            map.remove(&self.run);
        }
    }
}
