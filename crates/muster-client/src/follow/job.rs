//! Following a job to its end — its events and every step's output, over
//! one connection at a time — with [`JobFollower`]; its docs say what it
//! promises. The connections are in `task.rs`, what each message means in
//! `streams.rs`.

mod events;
mod streams;
mod task;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use muster_proto::jobs::JobInfo;
use muster_proto::{AgentName, JobId, OutputStream, RunId, RunInfo};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::{FOLLOW_CHANNEL_CAPACITY, FollowError};
use crate::client::{Client, Event};
use crate::reconnect::{DEFAULT_GIVE_UP_AFTER, Reconnector};
use task::{Delivery, JobTask};

pub use events::JobEvent;

/// How to follow a job.
#[derive(Clone, Debug)]
pub struct JobFollowOptions {
    /// Follow each step's output (`run:<id>`). Without it, only the job's
    /// events and its end are passed on, and no run is subscribed to.
    pub output: bool,
    /// Give up after this long without a working connection.
    pub give_up_after: Duration,
}

impl Default for JobFollowOptions {
    fn default() -> Self {
        Self {
            output: true,
            give_up_after: DEFAULT_GIVE_UP_AFTER,
        }
    }
}

/// Which step of which target a run executes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepRef {
    /// The run.
    pub run: RunId,
    /// The target's agent.
    pub agent: AgentName,
    /// The step's 0-based index.
    pub step: u32,
    /// The step's name.
    pub name: String,
}

/// A chunk of a step's output.
#[derive(Clone, Debug)]
pub struct StepOutput {
    /// The step it belongs to.
    pub step: Arc<StepRef>,
    /// The stream it was written to.
    pub stream: OutputStream,
    /// Its sequence number in the run, over both streams.
    pub seq: u64,
    /// The bytes, as the command wrote them.
    pub payload: Bytes,
}

/// Something that happened to a job a [`JobFollower`] follows.
#[derive(Clone, Debug)]
pub enum JobFollowEvent {
    /// The job's next event: each one from `seq` 0 once, in order.
    Job(JobEvent),
    /// The next chunk of a step's output.
    Output(StepOutput),
    /// The step's output was cut at the hub's per-run cap: nothing past the
    /// chunks passed on was stored.
    OutputTruncated(Arc<StepRef>),
    /// The step's run ended, after all of its output.
    RunEnded {
        /// The step.
        step: Arc<StepRef>,
        /// The run in its terminal state.
        run: Box<RunInfo>,
    },
    /// The step's output cannot be followed (the hub refused the
    /// subscription, or lost part of the output); nothing more comes for it.
    /// How the step ended still comes as a [`JobEvent`].
    RunUnavailable {
        /// The step.
        step: Arc<StepRef>,
        /// Why, for people.
        reason: String,
    },
    /// The connection was lost. The follower reconnects once the next event
    /// is asked for (so a display can tidy up before the reconnect warnings
    /// are logged); what was missed is replayed.
    Reconnecting {
        /// Why it was lost.
        reason: String,
    },
    /// The job ended and every run it started has ended: the job as the hub
    /// stored it, with every target. The last event.
    Finished(Box<JobInfo>),
}

/// Follows one job to its end: its events and every step's output.
///
/// It subscribes to `job:<id>` from event 0 (or takes over a connection
/// that `job.create` subscribed). On each `job.step.started` it subscribes to
/// the step's `run:<id>` from output frame 0, and passes each frame on, with
/// the agent and step it belongs to, until the run's terminal status. Job
/// events come once each, in `seq` order; each run's frames come once each,
/// in order; a run's frames come after its `job.step.started`, and its
/// [`RunEnded`](JobFollowEvent::RunEnded) after its last frame. Frames of
/// different runs interleave, and the order between a job's events and its
/// runs' frames is the hub's (protocol section 9.6).
///
/// When the connection drops, it reports
/// [`Reconnecting`](JobFollowEvent::Reconnecting), reconnects on the shared
/// backoff schedule and subscribes again: the job from the next event it
/// needs, every unfinished run from the next frame it needs. A hole in a
/// stream is replayed once more on a new connection; if the replay has the
/// same hole, a run is given up with
/// [`RunUnavailable`](JobFollowEvent::RunUnavailable) and the job's own
/// events end the follower with [`FollowError::JobGap`].
///
/// The job is over when its final `job.progress` has come and every run it
/// started has ended; the follower then reads the job as the hub stored it
/// (every target, page by page), passes it as
/// [`Finished`](JobFollowEvent::Finished), and stops.
///
/// Read it with [`next`](Self::next) (cancel-safe) or as a [`Stream`].
/// Dropping the follower stops its task and closes its connection.
pub struct JobFollower {
    job: JobId,
    events_rx: mpsc::Receiver<Delivery>,
    /// Held while the consumer handles a [`JobFollowEvent::Reconnecting`];
    /// dropping it lets the task go on.
    seen: Option<oneshot::Sender<()>>,
    clients_rx: watch::Receiver<Option<Client>>,
    task: JoinHandle<()>,
}

impl JobFollower {
    /// Follows `job` on the hub at `hub_url`, connecting and authenticating
    /// with `token` itself, from the job's first event. A failed first
    /// connection is retried like a lost one. Must be called within a tokio
    /// runtime.
    pub fn new(hub_url: &str, token: &str, job: JobId, options: JobFollowOptions) -> Self {
        Self::spawn(None, hub_url, token, job, options)
    }

    /// Follows `job`, starting on an open connection and reconnecting to
    /// `hub_url` with `token` when it drops. With `subscribed`, the
    /// connection already receives the job's events from event 0 (it sent
    /// `job.create` with `subscribe` and the job was created); otherwise the
    /// follower subscribes from event 0 itself. Events already queued on the
    /// connection count. Must be called within a tokio runtime.
    pub fn with_connection(
        (client, events): (Client, mpsc::Receiver<Event>),
        hub_url: &str,
        token: &str,
        job: JobId,
        subscribed: bool,
        options: JobFollowOptions,
    ) -> Self {
        let first = Some(((client, events), subscribed));
        Self::spawn(first, hub_url, token, job, options)
    }

    fn spawn(
        first: Option<task::First>,
        hub_url: &str,
        token: &str,
        job: JobId,
        options: JobFollowOptions,
    ) -> Self {
        let (events_tx, events_rx) = mpsc::channel(FOLLOW_CHANNEL_CAPACITY);
        let (clients_tx, clients_rx) = watch::channel(None);
        let reconnector = Reconnector::new(hub_url, token, options.give_up_after);
        let task = JobTask::new(job, options.output, reconnector, events_tx, clients_tx);
        Self {
            job,
            events_rx,
            seen: None,
            clients_rx,
            task: tokio::spawn(task.run(first)),
        }
    }

    /// The next event; after [`JobFollowEvent::Finished`] or an error, `None`.
    ///
    /// Cancel-safe: the follower keeps its place when the future is dropped.
    pub async fn next(&mut self) -> Option<Result<JobFollowEvent, FollowError>> {
        self.seen = None;
        let delivery = self.events_rx.recv().await?;
        self.seen = delivery.seen;
        Some(delivery.result)
    }

    /// The job being followed.
    pub fn job(&self) -> JobId {
        self.job
    }

    /// The client of the connection in use; `None` while reconnecting, and
    /// for good once the follower has stopped. Use it for requests about the
    /// job, such as [`Client::cancel_job`]; a request that fails with
    /// [`ClientError::Closed`](crate::ClientError::Closed) can wait for the
    /// next client with `changed()`.
    pub fn clients(&self) -> watch::Receiver<Option<Client>> {
        self.clients_rx.clone()
    }

    /// Stops following and waits until the connection is closed.
    pub async fn close(self) {
        drop(self.events_rx);
        drop(self.seen);
        let _ = self.task.await;
    }
}

impl std::fmt::Debug for JobFollower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobFollower")
            .field("job", &self.job)
            .finish_non_exhaustive()
    }
}

impl Stream for JobFollower {
    type Item = Result<JobFollowEvent, FollowError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        this.seen = None;
        this.events_rx.poll_recv(cx).map(|delivery| {
            delivery.map(|delivery| {
                this.seen = delivery.seen;
                delivery.result
            })
        })
    }
}
