//! The job follower's task: one connection at a time, with the job's
//! subscription and one per unfinished run on it, while where each stream
//! stands outlives every connection.
//!
//! This file owns the connections: the first one, serving one until the job
//! is over or it drops, replacing it, and reading the job's final record.
//! What each message means for the job and its runs is in `streams.rs`.
//! `subscribe` requests never block reading: their replies are awaited in a
//! set of futures next to the event receiver, because a connection's events
//! must be read for its replies to come through.

use std::collections::HashMap;
use std::pin::Pin;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use muster_proto::jobs::{JobInfo, JobState};
use muster_proto::{Channel, JobId, RunId};
use tokio::sync::{mpsc, oneshot, watch};

use super::JobFollowEvent;
use super::streams::StepRun;
use crate::Subscribed;
use crate::client::{Client, Event};
use crate::error::ClientError;
use crate::follow::FollowError;
use crate::reconnect::{ReconnectError, Reconnector, is_retryable};

/// After this long without a message, with the job over but a run's output
/// not complete, the task connects again and replays what is missing rather
/// than wait for something that may never come. (One second in unit tests.)
const RESYNC_AFTER_SILENCE: Duration = if cfg!(test) {
    Duration::from_secs(1)
} else {
    Duration::from_secs(10)
};

/// One open connection: its client handle and its events.
pub(super) type Connection = (Client, mpsc::Receiver<Event>);

/// A connection to start on, and whether it receives the job's events already.
pub(super) type First = (Connection, bool);

/// What the task hands to the [`JobFollower`](super::JobFollower).
pub(super) struct Delivery {
    /// The event, or why the follower stopped.
    pub(super) result: Result<JobFollowEvent, FollowError>,
    /// Dropped by the follower when the consumer asks for the next event.
    pub(super) seen: Option<oneshot::Sender<()>>,
}

/// A `subscribe` request in flight, and what it was for.
type Pending = Pin<Box<dyn Future<Output = (Sub, Result<Subscribed, ClientError>)> + Send>>;

/// What a `subscribe` request was for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Sub {
    /// The job's channel.
    Job,
    /// A run's channel.
    Run(RunId),
}

/// How serving a connection ended.
pub(super) enum End {
    /// The job and every run followed are over.
    Done,
    /// Nobody listens any more.
    Gone,
    /// Stop with this error.
    Failed(FollowError),
    /// The connection was lost, or a stream had a hole, for this reason:
    /// reconnect and replay.
    Dropped(String),
}

/// Whether to go on (`Ok`) or how serving the connection ends (`Err`).
pub(super) type Flow = Result<(), End>;

/// One connection in use, with its `subscribe` requests in flight.
pub(super) struct Link {
    pub(super) client: Client,
    events: mpsc::Receiver<Event>,
    pending: FuturesUnordered<Pending>,
}

impl Link {
    fn new((client, events): Connection) -> Self {
        Self {
            client,
            events,
            pending: FuturesUnordered::new(),
        }
    }

    /// Subscribes to `channel` from `since`, without waiting for the reply.
    pub(super) fn subscribe(&mut self, sub: Sub, channel: Channel, since: u64) {
        let client = self.client.clone();
        self.pending.push(Box::pin(async move {
            let reply = client.subscribe(&channel.to_string(), Some(since)).await;
            (sub, reply)
        }));
    }
}

/// The state of a job follower's task.
pub(super) struct JobTask {
    pub(super) job: JobId,
    /// Whether step output is followed.
    pub(super) output: bool,
    /// The `seq` of the next job event wanted.
    pub(super) next_seq: u64,
    /// Where the last hole in the job's events was, so a replay with the
    /// same hole ends the follower instead of replaying forever.
    pub(super) gap_at: Option<u64>,
    /// The job's final state, once its last event came.
    pub(super) ended: Option<JobState>,
    /// Every run a step started, by id.
    pub(super) runs: HashMap<RunId, StepRun>,
    /// Dials again after a loss; told when a connection has done its job.
    pub(super) reconnector: Reconnector,
    events_tx: mpsc::Sender<Delivery>,
    /// The client of the connection in use, for requests about the job.
    clients_tx: watch::Sender<Option<Client>>,
}

impl JobTask {
    /// A task following `job` from its first event.
    pub(super) fn new(
        job: JobId,
        output: bool,
        reconnector: Reconnector,
        events_tx: mpsc::Sender<Delivery>,
        clients_tx: watch::Sender<Option<Client>>,
    ) -> Self {
        Self {
            job,
            output,
            next_seq: 0,
            gap_at: None,
            ended: None,
            runs: HashMap::new(),
            reconnector,
            events_tx,
            clients_tx,
        }
    }

    /// Follows the job until it is over, fails, or the follower is dropped;
    /// then closes the connection.
    pub(super) async fn run(mut self, first: Option<First>) {
        let listener = self.events_tx.clone();
        let end = tokio::select! {
            end = self.follow(first) => end,
            () = listener.closed() => End::Gone,
        };
        if let End::Failed(err) = end {
            let delivery = Delivery {
                result: Err(err),
                seen: None,
            };
            let _ = self.events_tx.send(delivery).await;
        }
        if let Some(client) = self.clients_tx.send_replace(None) {
            client.close().await;
        }
    }

    async fn follow(&mut self, first: Option<First>) -> End {
        let mut link = match self.first_link(first).await {
            Ok(link) => link,
            Err(end) => return end,
        };
        loop {
            match self.serve(&mut link).await {
                End::Done => break,
                End::Dropped(reason) => match self.replace(link.client.clone(), reason).await {
                    Ok(next) => link = next,
                    Err(end) => return end,
                },
                end => return end,
            }
        }
        match self.final_info(&mut link).await {
            Ok(job) => match self.pass(JobFollowEvent::Finished(Box::new(job))).await {
                Ok(()) => End::Done,
                Err(end) => end,
            },
            Err(end) => end,
        }
    }

    /// The connection to start on: the one given, or a new one.
    async fn first_link(&mut self, first: Option<First>) -> Result<Link, End> {
        let (connection, subscribed) = match first {
            Some(first) => first,
            None => match self.reconnector.connect().await {
                Ok(connection) => (connection, false),
                Err(err) if !is_retryable(&err) => return Err(End::Failed(err.into())),
                Err(err) => return self.reconnect(err.to_string()).await,
            },
        };
        let mut link = Link::new(connection);
        if !subscribed {
            self.resubscribe(&mut link);
        }
        self.clients_tx.send_replace(Some(link.client.clone()));
        Ok(link)
    }

    /// Reads one connection until the job is over, the connection drops, or
    /// something stops the follower.
    async fn serve(&mut self, link: &mut Link) -> End {
        loop {
            if self.is_over() {
                return End::Done;
            }
            let flow = tokio::select! {
                event = link.events.recv() => self.on_event(event, link).await,
                Some((sub, reply)) = link.pending.next(), if !link.pending.is_empty() => {
                    self.on_reply(sub, reply).await
                }
                () = tokio::time::sleep(RESYNC_AFTER_SILENCE), if self.ended.is_some() => {
                    Err(End::Dropped("runs of the ended job went quiet; replaying".to_owned()))
                }
            };
            if let Err(end) = flow {
                return end;
            }
        }
    }

    /// Whether the job has ended and every run followed has ended too.
    fn is_over(&self) -> bool {
        self.ended.is_some() && self.runs.values().all(|run| run.done)
    }

    /// Closes `old` and connects again after it was lost because of `reason`.
    async fn replace(&mut self, old: Client, reason: String) -> Result<Link, End> {
        self.clients_tx.send_replace(None);
        old.close().await;
        self.reconnect(reason).await
    }

    /// Says the connection was lost, waits until the consumer has seen that,
    /// then connects again on the backoff schedule and subscribes again.
    async fn reconnect(&mut self, reason: String) -> Result<Link, End> {
        let (seen_tx, seen_rx) = oneshot::channel();
        let lost = JobFollowEvent::Reconnecting {
            reason: reason.clone(),
        };
        self.deliver(Ok(lost), Some(seen_tx)).await?;
        let _ = seen_rx.await;
        let what = format!("job {}", self.job);
        let connection = self
            .reconnector
            .reconnect(&what, reason)
            .await
            .map_err(|err| End::Failed(reconnect_error(err)))?;
        let mut link = Link::new(connection);
        self.resubscribe(&mut link);
        self.clients_tx.send_replace(Some(link.client.clone()));
        Ok(link)
    }

    /// On a new connection: the job from the next event wanted, and every
    /// unfinished run from the next output frame wanted.
    fn resubscribe(&mut self, link: &mut Link) {
        link.subscribe(Sub::Job, Channel::Job(self.job), self.next_seq);
        for (run, step) in &mut self.runs {
            if !step.done {
                step.sub = Default::default();
                link.subscribe(Sub::Run(*run), Channel::Run(*run), step.seq.next());
            }
        }
    }

    /// The job as the hub stored it at its end, with every target; the
    /// connection is replaced when it drops or the hub cannot answer now.
    async fn final_info(&mut self, link: &mut Link) -> Result<JobInfo, End> {
        loop {
            let client = link.client.clone();
            let request = client.job(self.job);
            tokio::pin!(request);
            // Fleet events keep coming: read them, or the reply waits behind them.
            let mut open = true;
            let reply = loop {
                tokio::select! {
                    reply = &mut request => break reply,
                    event = link.events.recv(), if open => open = event.is_some(),
                }
            };
            let reason = match reply {
                Ok(job) => return Ok(job),
                Err(ClientError::Closed(reason)) => reason,
                Err(err) if err.is_transient() => format!("the hub could not read the job: {err}"),
                Err(err) => return Err(End::Failed(err.into())),
            };
            *link = self.replace(link.client.clone(), reason).await?;
        }
    }

    /// Hands an event to the follower; waits while its channel is full.
    pub(super) async fn pass(&self, event: JobFollowEvent) -> Flow {
        self.deliver(Ok(event), None).await
    }

    async fn deliver(
        &self,
        result: Result<JobFollowEvent, FollowError>,
        seen: Option<oneshot::Sender<()>>,
    ) -> Flow {
        let delivery = Delivery { result, seen };
        self.events_tx.send(delivery).await.map_err(|_| End::Gone)
    }
}

fn reconnect_error(err: ReconnectError) -> FollowError {
    match err {
        ReconnectError::Fatal(err) => FollowError::Client(err),
        ReconnectError::GaveUp { waited, last_error } => FollowError::GaveUp { waited, last_error },
    }
}
