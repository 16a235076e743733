//! The follower's task: one connection at a time, one subscription at a time
//! on it, and a [`SeqTracker`] that outlives both.
//!
//! Per connection: subscribe to `run:<id>` with `since` = the next `seq`
//! needed, pass on the replay and the live events that follow, until the run
//! ends (stop), the connection drops (reconnect and subscribe again), or a
//! fatal close, a refused subscription or a gap ends the follower with an
//! error. Events of the connection are drained while the `subscribe` reply is
//! awaited, so a connection that already carries the run's events (the one
//! that created it) cannot stall behind its own backlog.

use std::time::Duration;

use muster_proto::{CloseCode, Envelope, HubToClient, OutputFrame, RunId, RunInfo, RunState};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::FollowEvent;
use crate::Subscribed;
use crate::client::{Client, Event};
use crate::error::ClientError;
use crate::follow::FollowError;
use crate::follow::seq::{SeqTracker, Verdict};
use crate::reconnect::{ReconnectError, Reconnector, is_retryable};

/// After this long without an event about the run, the follower subscribes
/// again on the same connection (replaying from where it is, which costs
/// nothing when nothing is missing). Should the hub ever publish the terminal
/// status between reading the run for a `subscribe` and making the
/// subscription live, the follower would otherwise wait forever; this way it
/// sees the ended run in the new subscription's reply.
/// (One second in unit tests, so the path can be exercised.)
const RESYNC_AFTER_SILENCE: Duration = if cfg!(test) {
    Duration::from_secs(1)
} else {
    Duration::from_secs(30)
};

/// What the task hands to the [`RunFollower`](super::RunFollower).
type Item = Result<FollowEvent, FollowError>;

/// One open connection: its client handle and its events.
type Connection = (Client, mpsc::Receiver<Event>);

/// Whether to go on (`Ok`) or how the current subscription ends (`Err`).
type Flow = Result<(), End>;

/// How a subscription ended.
enum End {
    /// The run ended, or nobody is listening any more: stop.
    Done,
    /// Stop with this error.
    Failed(FollowError),
    /// The connection was lost, for this reason: reconnect.
    Dropped(String),
    /// Subscribe again on the same connection.
    Resubscribe,
}

/// Where one subscription stands.
#[derive(Default)]
struct Subscription {
    /// The `subscribe` reply arrived, or failed with the connection.
    replied: bool,
    /// `stream.synced` arrived.
    synced: bool,
    /// The run as the reply described it, when it had already ended: it
    /// finishes at `stream.synced`, after the replay.
    ended: Option<RunInfo>,
}

/// The state of a follower's task.
pub(super) struct FollowTask {
    run: RunId,
    channel: String,
    seq: SeqTracker,
    reconnector: Reconnector,
    events_tx: mpsc::Sender<Item>,
    /// The client of the connection in use; it is also how the task finds the
    /// connection to close when it stops.
    clients_tx: watch::Sender<Option<Client>>,
    /// The last state passed on, so that a resubscription repeating it is quiet.
    last_state: Option<RunState>,
}

impl FollowTask {
    /// A task following `run` from output frame `since`.
    pub(super) fn new(
        run: RunId,
        since: u64,
        reconnector: Reconnector,
        events_tx: mpsc::Sender<Item>,
        clients_tx: watch::Sender<Option<Client>>,
    ) -> Self {
        Self {
            run,
            channel: run.channel().to_string(),
            seq: SeqTracker::new(since),
            reconnector,
            events_tx,
            clients_tx,
            last_state: None,
        }
    }

    /// Follows the run until it ends, fails, or the handle is dropped; then
    /// closes the connection.
    pub(super) async fn run(mut self, first: Option<Connection>) {
        let listener = self.events_tx.clone();
        let result = tokio::select! {
            result = self.follow(first) => result,
            () = listener.closed() => Ok(()),
        };
        if let Err(err) = result {
            let _ = self.events_tx.send(Err(err)).await;
        }
        if let Some(client) = self.clients_tx.send_replace(None) {
            client.close().await;
        }
    }

    async fn follow(&mut self, first: Option<Connection>) -> Result<(), FollowError> {
        let (mut next, mut lost) = match first {
            Some(connection) => (Some(connection), String::new()),
            None => match self.reconnector.connect().await {
                Ok(connection) => (Some(connection), String::new()),
                Err(err) if !is_retryable(&err) => return Err(err.into()),
                Err(err) => (None, err.to_string()),
            },
        };
        loop {
            let (client, events) = match next.take() {
                Some(connection) => connection,
                None => self.reconnect(std::mem::take(&mut lost)).await?,
            };
            self.clients_tx.send_replace(Some(client.clone()));
            match self.serve(&client, events).await {
                End::Done => return Ok(()),
                End::Failed(err) => return Err(err),
                End::Dropped(reason) => lost = reason,
                // `serve` subscribes again itself.
                End::Resubscribe => {}
            }
            self.clients_tx.send_replace(None);
            client.close().await;
        }
    }

    async fn reconnect(&mut self, lost: String) -> Result<Connection, FollowError> {
        let what = format!("run {}", self.run);
        self.reconnector
            .reconnect(&what, lost)
            .await
            .map_err(|err| match err {
                ReconnectError::Fatal(err) => FollowError::Client(err),
                ReconnectError::GaveUp { waited, last_error } => {
                    FollowError::GaveUp { waited, last_error }
                }
            })
    }

    /// Subscribes on one connection, again whenever a subscription asks to.
    async fn serve(&mut self, client: &Client, mut events: mpsc::Receiver<Event>) -> End {
        loop {
            match self.subscription(client, &mut events).await {
                End::Resubscribe => tracing::debug!(run = %self.run, "subscribing again"),
                end => return end,
            }
        }
    }

    async fn subscription(&mut self, client: &Client, events: &mut mpsc::Receiver<Event>) -> End {
        let channel = self.channel.clone();
        let subscribe = client.subscribe(&channel, Some(self.seq.next()));
        tokio::pin!(subscribe);
        let mut sub = Subscription::default();
        let silence = tokio::time::sleep(RESYNC_AFTER_SILENCE);
        tokio::pin!(silence);
        loop {
            let flow = tokio::select! {
                reply = &mut subscribe, if !sub.replied => self.on_reply(reply, &mut sub).await,
                event = events.recv() => {
                    if event.as_ref().is_some_and(|e| self.is_about_run(e)) {
                        silence.as_mut().reset(Instant::now() + RESYNC_AFTER_SILENCE);
                    }
                    self.on_event(event, &mut sub).await
                }
                () = &mut silence, if sub.synced => Err(End::Resubscribe),
            };
            if let Err(end) = flow {
                return end;
            }
        }
    }

    async fn on_reply(
        &mut self,
        reply: Result<Subscribed, ClientError>,
        sub: &mut Subscription,
    ) -> Flow {
        sub.replied = true;
        match reply {
            Ok(subscribed) => {
                match subscribed.run {
                    Some(run) if run.state.is_terminal() => sub.ended = Some(run),
                    Some(run) => self.pass_status(run).await?,
                    None => {}
                }
                self.finish_if_over(sub).await
            }
            // The connection's end follows as an event, with its close code.
            Err(ClientError::Closed(_)) => Ok(()),
            // Its store unavailable, say: try again after a pause.
            Err(err) if err.is_transient() => Err(End::Dropped(format!(
                "the hub could not subscribe to the run: {err}"
            ))),
            Err(err) => Err(End::Failed(err.into())),
        }
    }

    async fn on_event(&mut self, event: Option<Event>, sub: &mut Subscription) -> Flow {
        match event {
            None => Err(End::Dropped("the connection ended".to_owned())),
            Some(Event::Closed {
                code: Some(code),
                reason,
            }) if CloseCode::is_fatal(code) => {
                Err(End::Failed(FollowError::FatalClose { code, reason }))
            }
            Some(Event::Closed { code, reason }) => Err(End::Dropped(match code {
                Some(code) => format!("{reason} (close code {code})"),
                None => reason,
            })),
            Some(Event::Output(frame)) if frame.header.run == self.run => {
                self.on_output(frame).await
            }
            Some(Event::Output(_)) => Ok(()),
            Some(Event::Message(envelope)) => self.on_message(envelope, sub).await,
        }
    }

    async fn on_output(&mut self, frame: OutputFrame) -> Flow {
        match self.seq.frame(frame.header.seq) {
            Ok(Verdict::Deliver) => self.pass(FollowEvent::Output(frame)).await,
            Ok(Verdict::Duplicate) => {
                tracing::trace!(run = %self.run, seq = frame.header.seq, "dropping a duplicate frame");
                Ok(())
            }
            Err(gap) => Err(End::Failed(FollowError::Gap {
                expected: gap.expected,
                got: gap.got,
            })),
        }
    }

    async fn on_message(
        &mut self,
        envelope: Envelope<HubToClient>,
        sub: &mut Subscription,
    ) -> Flow {
        if envelope.channel.as_deref() != Some(self.channel.as_str()) {
            return on_unrelated(envelope.msg, sub);
        }
        match envelope.msg {
            HubToClient::RunStatus(status) if status.run.state.is_terminal() => {
                self.pass(FollowEvent::Finished(Box::new(status.run)))
                    .await?;
                Err(End::Done)
            }
            HubToClient::RunStatus(status) => self.pass_status(status.run).await,
            HubToClient::RunQueue(queue) => {
                let position = queue.position;
                self.pass(FollowEvent::Queued { position }).await
            }
            HubToClient::StreamSynced(synced) => self.on_synced(synced.next_seq, sub).await,
            _ => Ok(()),
        }
    }

    async fn on_synced(&mut self, next_seq: u64, sub: &mut Subscription) -> Flow {
        if let Err(gap) = self.seq.synced(next_seq) {
            let (expected, got) = (gap.expected, gap.got);
            return Err(End::Failed(FollowError::Gap { expected, got }));
        }
        sub.synced = true;
        self.reconnector.connected();
        let next_seq = self.seq.next();
        self.pass(FollowEvent::Synced { next_seq }).await?;
        self.finish_if_over(sub).await
    }

    /// Ends the run once the replay of an already ended run is complete.
    async fn finish_if_over(&mut self, sub: &mut Subscription) -> Flow {
        if !sub.synced {
            return Ok(());
        }
        match sub.ended.take() {
            Some(run) => {
                self.pass(FollowEvent::Finished(Box::new(run))).await?;
                Err(End::Done)
            }
            None => Ok(()),
        }
    }

    async fn pass_status(&mut self, run: RunInfo) -> Flow {
        if self.last_state == Some(run.state) {
            return Ok(());
        }
        self.last_state = Some(run.state);
        self.pass(FollowEvent::Status(Box::new(run))).await
    }

    /// Hands an event to the follower; waits while its channel is full.
    async fn pass(&self, event: FollowEvent) -> Flow {
        self.events_tx.send(Ok(event)).await.map_err(|_| End::Done)
    }

    fn is_about_run(&self, event: &Event) -> bool {
        match event {
            Event::Output(frame) => frame.header.run == self.run,
            Event::Message(envelope) => envelope.channel.as_deref() == Some(self.channel.as_str()),
            Event::Closed { .. } => false,
        }
    }
}

/// A message on another channel, or none. An `error` that answers no request
/// while a replay is due means the hub could not replay: try again elsewhen.
fn on_unrelated(msg: HubToClient, sub: &Subscription) -> Flow {
    match msg {
        HubToClient::Error(error) if sub.replied && !sub.synced => Err(End::Dropped(format!(
            "the hub could not replay the run's output: {}",
            error.message
        ))),
        _ => Ok(()),
    }
}
