//! Following one run's output to its end: [`RunFollower`].
//!
//! The task subscribes to `run:<id>` with `since` = the next sequence number
//! it needs, passes each output frame on exactly once and in order, and ends
//! with the run's terminal status. It never skips output: a hole in the hub's
//! stream ends the follower with [`FollowError::Gap`].

mod task;

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use muster_proto::{OutputFrame, RunId, RunInfo};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::{FOLLOW_CHANNEL_CAPACITY, FollowError};
use crate::client::{Client, Event};
use crate::reconnect::{DEFAULT_GIVE_UP_AFTER, Reconnector};
use task::FollowTask;

/// How to follow a run.
#[derive(Clone, Debug)]
pub struct FollowOptions {
    /// The first output frame wanted (`0`: from the start).
    pub since: u64,
    /// Give up after this long without a successful connection.
    pub give_up_after: Duration,
}

impl Default for FollowOptions {
    fn default() -> Self {
        Self {
            since: 0,
            give_up_after: DEFAULT_GIVE_UP_AFTER,
        }
    }
}

/// Something that happened to the followed run.
#[derive(Clone, Debug)]
pub enum FollowEvent {
    /// The next output frame: every `seq` from `since` on comes exactly once,
    /// in order, the payload byte-exact.
    Output(OutputFrame),
    /// The run waits at this 1-based position in its agent's queue.
    Queued {
        /// The position.
        position: u32,
    },
    /// The run changed state (never to a terminal one: see [`Finished`](Self::Finished)).
    Status(Box<RunInfo>),
    /// A (re)subscription finished replaying stored output; what follows is
    /// live. Comes once per subscription, so again after every reconnect.
    Synced {
        /// The `seq` of the next output frame.
        next_seq: u64,
    },
    /// The run reached its terminal state after all of its output; the last event.
    Finished(Box<RunInfo>),
}

/// Follows one run's output to its end.
///
/// It subscribes to `run:<id>` from `since`, passes every output frame on
/// once and in order, and ends with the run's terminal status. When the
/// connection drops it reconnects on the shared backoff schedule and
/// resubscribes from the next frame it needs; a hole in the hub's stream ends
/// it with [`FollowError::Gap`] rather than skip output.
///
/// Read it with [`next`](Self::next) (cancel-safe) or as a [`Stream`]. Dropping
/// the follower stops its task and closes its connection.
pub struct RunFollower {
    run: RunId,
    events_rx: mpsc::Receiver<Result<FollowEvent, FollowError>>,
    clients_rx: watch::Receiver<Option<Client>>,
    task: JoinHandle<()>,
}

impl RunFollower {
    /// Follows `run` on the hub at `hub_url`, connecting and authenticating
    /// with `token` itself. A failed first connection is retried like a lost
    /// one. Must be called within a tokio runtime.
    pub fn new(hub_url: &str, token: &str, run: RunId, options: FollowOptions) -> Self {
        Self::spawn(None, hub_url, token, run, options)
    }

    /// Follows `run`, starting on an open connection — such as the one that
    /// created the run, possibly already subscribed to it — and reconnecting
    /// to `hub_url` with `token` when it drops. The follower takes over the
    /// connection and its event receiver, and subscribes again from
    /// `options.since`; frames already delivered on it count, duplicates are
    /// dropped. Must be called within a tokio runtime.
    pub fn with_connection(
        client: Client,
        events: mpsc::Receiver<Event>,
        hub_url: &str,
        token: &str,
        run: RunId,
        options: FollowOptions,
    ) -> Self {
        Self::spawn(Some((client, events)), hub_url, token, run, options)
    }

    fn spawn(
        first: Option<(Client, mpsc::Receiver<Event>)>,
        hub_url: &str,
        token: &str,
        run: RunId,
        options: FollowOptions,
    ) -> Self {
        let (events_tx, events_rx) = mpsc::channel(FOLLOW_CHANNEL_CAPACITY);
        let (clients_tx, clients_rx) = watch::channel(None);
        let reconnector = Reconnector::new(hub_url, token, options.give_up_after);
        let task = FollowTask::new(run, options.since, reconnector, events_tx, clients_tx);
        Self {
            run,
            events_rx,
            clients_rx,
            task: tokio::spawn(task.run(first)),
        }
    }

    /// The next event; after [`FollowEvent::Finished`] or an error, `None`.
    ///
    /// Cancel-safe: the follower keeps its place when the future is dropped.
    pub async fn next(&mut self) -> Option<Result<FollowEvent, FollowError>> {
        self.events_rx.recv().await
    }

    /// The run being followed.
    pub fn run(&self) -> RunId {
        self.run
    }

    /// The client of the connection in use; `None` while reconnecting, and
    /// for good once the follower has stopped (then the sender is gone too).
    /// Use it for requests about the run, such as [`Client::cancel_run`]; a
    /// request that fails with [`ClientError::Closed`](crate::ClientError::Closed) can wait for the next
    /// client with `changed()`.
    pub fn clients(&self) -> watch::Receiver<Option<Client>> {
        self.clients_rx.clone()
    }

    /// Stops following and waits until the connection is closed.
    pub async fn close(self) {
        drop(self.events_rx);
        let _ = self.task.await;
    }
}

impl std::fmt::Debug for RunFollower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunFollower")
            .field("run", &self.run)
            .finish_non_exhaustive()
    }
}

impl Stream for RunFollower {
    type Item = Result<FollowEvent, FollowError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.events_rx.poll_recv(cx)
    }
}
