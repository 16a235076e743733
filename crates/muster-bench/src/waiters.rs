//! Routes terminal run statuses from a client's event stream to the round
//! trips waiting for them.
//!
//! One task drains the [`Event`] receiver for as long as the connection lives
//! (an undrained receiver would stall the connection, replies included) and
//! stamps each terminal `run.status` with the instant it was read. Replies and
//! events travel different paths inside the client, so a run's terminal status
//! can be read before its creator has learnt the run id from `run.accepted`:
//! such an early status is parked until the creator claims it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use muster_client::Event;
use muster_proto::messages::RunEnvelope;
use muster_proto::{HubToClient, RunId, RunState};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How a run ended, and when this process learnt it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Finish {
    /// When the terminal `run.status` was read from the event stream.
    pub(crate) at: Instant,
    /// The terminal state.
    pub(crate) state: RunState,
}

/// One run's entry: a creator waiting, or a status waiting for its creator.
enum Slot {
    Waiting(oneshot::Sender<Finish>),
    Finished(Finish),
}

#[derive(Default)]
struct Table {
    slots: HashMap<RunId, Slot>,
    /// Set when the connection ended; no status will arrive any more.
    closed: Option<String>,
}

/// The meeting point of creators and the drain task; cheap to clone.
///
/// A std `Mutex` suffices: it is held only for one map operation, never across
/// an `.await`.
#[derive(Clone, Default)]
pub(crate) struct Waiters {
    table: Arc<Mutex<Table>>,
}

impl Waiters {
    /// Starts draining `events`; the task ends with the connection.
    pub(crate) fn spawn(events: mpsc::Receiver<Event>) -> (Self, JoinHandle<()>) {
        let waiters = Self::default();
        let task = tokio::spawn(waiters.clone().drain(events));
        (waiters, task)
    }

    /// Resolves with `run`'s terminal status; fails if the connection ends first.
    pub(crate) fn claim(&self, run: RunId) -> oneshot::Receiver<Finish> {
        let (finish_tx, finish_rx) = oneshot::channel();
        let mut table = self.lock();
        match table.slots.remove(&run) {
            Some(Slot::Finished(finish)) => {
                let _ = finish_tx.send(finish);
            }
            // A closed table drops `finish_tx`, which fails the receiver.
            _ if table.closed.is_some() => {}
            _ => {
                table.slots.insert(run, Slot::Waiting(finish_tx));
            }
        }
        finish_rx
    }

    /// Drops `run`'s entry after its creator gave up waiting.
    pub(crate) fn forget(&self, run: RunId) {
        self.lock().slots.remove(&run);
    }

    /// Why the connection ended, once it has.
    pub(crate) fn closed(&self) -> Option<String> {
        self.lock().closed.clone()
    }

    async fn drain(self, mut events: mpsc::Receiver<Event>) {
        while let Some(event) = events.recv().await {
            match event {
                Event::Message(envelope) => self.on_message(envelope.msg),
                Event::Output(_) => {}
                Event::Closed { code, reason } => {
                    self.close(format!("connection closed ({code:?}): {reason}"));
                    return;
                }
            }
        }
        self.close("the event stream ended".to_owned());
    }

    fn on_message(&self, msg: HubToClient) {
        match msg {
            HubToClient::RunStatus(RunEnvelope { run }) if run.state.is_terminal() => {
                let finish = Finish {
                    at: Instant::now(),
                    state: run.state,
                };
                self.finish(run.id, finish);
            }
            HubToClient::Error(error) => {
                tracing::warn!("hub reported {}: {}", error.code, error.message);
            }
            _ => {}
        }
    }

    fn finish(&self, run: RunId, finish: Finish) {
        let mut table = self.lock();
        match table.slots.remove(&run) {
            Some(Slot::Waiting(finish_tx)) => {
                let _ = finish_tx.send(finish);
            }
            // A repeated terminal status keeps the first one.
            Some(Slot::Finished(first)) => {
                table.slots.insert(run, Slot::Finished(first));
            }
            None => {
                table.slots.insert(run, Slot::Finished(finish));
            }
        }
    }

    fn close(&self, reason: String) {
        let mut table = self.lock();
        table.closed.get_or_insert(reason);
        table.slots.clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().expect("waiters lock poisoned")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finish(state: RunState) -> Finish {
        Finish {
            at: Instant::now(),
            state,
        }
    }

    #[tokio::test]
    async fn status_before_claim_is_parked() {
        let waiters = Waiters::default();
        let run = RunId::generate();
        waiters.finish(run, finish(RunState::Completed));
        let got = waiters.claim(run).await.unwrap();
        assert_eq!(got.state, RunState::Completed);
        assert!(waiters.lock().slots.is_empty());
    }

    #[tokio::test]
    async fn claim_before_status_is_woken() {
        let waiters = Waiters::default();
        let run = RunId::generate();
        let claimed = waiters.claim(run);
        waiters.finish(run, finish(RunState::Failed));
        assert_eq!(claimed.await.unwrap().state, RunState::Failed);
    }

    #[tokio::test]
    async fn closing_fails_waiters_and_later_claims() {
        let waiters = Waiters::default();
        let pending = waiters.claim(RunId::generate());
        waiters.close("gone".to_owned());
        assert!(pending.await.is_err());
        assert!(waiters.claim(RunId::generate()).await.is_err());
        assert_eq!(waiters.closed().as_deref(), Some("gone"));
    }
}
