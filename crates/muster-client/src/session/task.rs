//! A session's task: one `select!` over the attachment, the handle's
//! commands, the input being handed to the connection, the acknowledgements
//! awaited, and the output follower.
//!
//! Inputs go out one after another on the attached connection, each handed
//! over only once the one before it is, so they reach the hub in `seq` order;
//! acknowledgements are awaited together. When the attachment drops,
//! whatever was in flight is forgotten (the log still holds it), the link
//! reconnects and attaches again, and sending starts over after the new
//! `last_seq`. An input the hub refuses for now (`RATE_LIMIT`, `QUEUE_FULL`,
//! `STORAGE_UNAVAILABLE`: any recoverable refusal) was not taken, nor was
//! anything sent after it: sending starts over from it after the wait the
//! hub asks for.

use std::pin::Pin;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesOrdered;
use muster_proto::sessions::{InputRecord, SessionAttached, SessionInput};
use muster_proto::{CloseCode, HubToClient, OutputStream, RunId};
use tokio::sync::{mpsc, oneshot, watch};

use super::inputs::InputLog;
use super::{SessionError, SessionEvent};
use crate::client::{Client, Event, PendingReply};
use crate::error::ClientError;
use crate::follow::{FollowError, FollowEvent, RunFollower};
use crate::reconnect::{ReconnectError, Reconnector, is_retryable};

/// How long to wait before sending again after a recoverable refusal that
/// names no wait, and the most any wait is.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(2);

/// What the handle asks of the task.
pub(super) enum Command {
    /// Number and send one input; `seq` is the number the handle expects.
    Input { seq: u64, data: String },
    /// Resize the terminal.
    Resize { cols: u16, rows: u16 },
    /// Send `session.detach`, then signal.
    Detach { done_tx: oneshot::Sender<()> },
}

/// Everything a task starts with.
pub(super) struct Parts {
    pub(super) run: RunId,
    pub(super) writer: Option<String>,
    pub(super) last_seq: u64,
    pub(super) connection: (Client, mpsc::Receiver<Event>),
    pub(super) reconnector: Reconnector,
    pub(super) follower: Option<RunFollower>,
    pub(super) events_tx: mpsc::Sender<Result<SessionEvent, SessionError>>,
    pub(super) commands_rx: mpsc::Receiver<Command>,
    pub(super) acked_tx: watch::Sender<u64>,
    pub(super) clients_tx: watch::Sender<Option<Client>>,
}

/// A reconnection and attach in progress; it hands the reconnector back.
type Relink = BoxFuture<'static, (Reconnector, Result<Linked, SessionError>)>;

/// A connection attached to the session, with the hub's answer.
type Linked = (Client, mpsc::Receiver<Event>, SessionAttached);

/// The attachment's connection.
enum Link {
    /// Attached on this connection.
    Up {
        client: Client,
        events: mpsc::Receiver<Event>,
        reconnector: Reconnector,
    },
    /// Reconnecting, then attaching again.
    Down(Relink),
    /// The session cannot be attached to any more (it ended, say), while
    /// its output is still followed to its end.
    Gone,
}

/// What happened to the attachment.
enum LinkEvent {
    /// Attached again on a new connection.
    Attached(SessionAttached),
    /// The connection dropped; reconnecting.
    Lost,
    /// It cannot come back.
    Failed(SessionError),
}

/// Whether the task goes on.
type Flow = Result<bool, SessionError>;

/// One step of the loop: what the `select!` picked.
#[allow(
    clippy::large_enum_variant,
    reason = "one step at a time, on the stack of the loop"
)]
enum Step {
    Link(LinkEvent),
    Command(Option<Command>),
    Handed(u64, Result<PendingReply, ClientError>),
    Ack(u64, Result<HubToClient, ClientError>),
    Output(Option<Result<FollowEvent, FollowError>>),
    FollowerLost,
    Unheard,
    /// The pause after a recoverable refusal is over.
    Resume,
}

/// The task's state.
pub(super) struct SessionTask {
    run: RunId,
    writer: Option<String>,
    link: Link,
    /// A writer's inputs; `None` for a viewer.
    log: Option<InputLog>,
    /// The last input handed to the attached connection (or taken by the
    /// hub before it attached).
    sent_through: u64,
    /// The input being handed to the connection, at most one at a time.
    handing: Option<BoxFuture<'static, (u64, Result<PendingReply, ClientError>)>>,
    /// Replies awaited, in `seq` order.
    acks: FuturesOrdered<BoxFuture<'static, (u64, Result<HubToClient, ClientError>)>>,
    /// The size last asked for, sent again after an attach.
    size: Option<(u16, u16)>,
    /// Why the attachment is gone, for the inputs that come after.
    link_error: Option<SessionError>,
    /// While set, nothing is sent: the hub refused an input for now.
    paused: Option<Pin<Box<tokio::time::Sleep>>>,
    output: Option<Output>,
    events_tx: mpsc::Sender<Result<SessionEvent, SessionError>>,
    commands_rx: mpsc::Receiver<Command>,
    acked_tx: watch::Sender<u64>,
    clients_tx: watch::Sender<Option<Client>>,
}

/// The output follower, and whether its subscription is replaying.
struct Output {
    follower: RunFollower,
    /// The follower's connection: `None` while it reconnects.
    clients_rx: watch::Receiver<Option<Client>>,
    /// From the start, and from every reconnect, until `stream.synced`.
    replaying: bool,
    /// Whether `clients_rx` still has a sender.
    watching: bool,
}

impl SessionTask {
    pub(super) fn new(parts: Parts) -> Self {
        let (client, events) = parts.connection;
        let output = parts.follower.map(|follower| Output {
            clients_rx: follower.clients(),
            follower,
            replaying: true,
            watching: true,
        });
        Self {
            run: parts.run,
            log: parts
                .writer
                .as_ref()
                .map(|_| InputLog::starting_after(parts.last_seq)),
            writer: parts.writer,
            link: Link::Up {
                client,
                events,
                reconnector: parts.reconnector,
            },
            sent_through: parts.last_seq,
            handing: None,
            acks: FuturesOrdered::new(),
            size: None,
            link_error: None,
            paused: None,
            output,
            events_tx: parts.events_tx,
            commands_rx: parts.commands_rx,
            acked_tx: parts.acked_tx,
            clients_tx: parts.clients_tx,
        }
    }

    /// Serves the session until it ends, fails, or the handle goes; then
    /// closes the connections.
    pub(super) async fn run(mut self) {
        if let Err(err) = self.serve().await {
            let _ = self.events_tx.send(Err(err)).await;
        }
        self.clients_tx.send_replace(None);
        if let Some(output) = self.output.take() {
            output.follower.close().await;
        }
        if let Link::Up { client, .. } = self.link {
            client.close().await;
        }
    }

    async fn serve(&mut self) -> Result<(), SessionError> {
        loop {
            let room = self
                .log
                .as_ref()
                .is_none_or(|log| log.len() < super::MAX_UNACKED_INPUTS);
            let step = tokio::select! {
                event = self.link.next(self.run, self.writer.clone()) => Step::Link(event),
                command = self.commands_rx.recv(), if room => Step::Command(command),
                (seq, handed) = handing(&mut self.handing) => Step::Handed(seq, handed),
                Some((seq, ack)) = self.acks.next() => Step::Ack(seq, ack),
                step = next_output(&mut self.output) => step,
                () = pause(&mut self.paused) => Step::Resume,
                () = self.events_tx.closed() => Step::Unheard,
            };
            if !self.on_step(step).await? {
                return Ok(());
            }
        }
    }

    async fn on_step(&mut self, step: Step) -> Flow {
        match step {
            Step::Link(event) => self.on_link(event),
            Step::Command(Some(command)) => self.on_command(command).await,
            Step::Command(None) | Step::Unheard => Ok(false),
            Step::Handed(seq, handed) => self.on_handed(seq, handed),
            Step::Ack(seq, ack) => self.on_ack(seq, ack),
            Step::Output(item) => self.on_output(item).await,
            Step::Resume => {
                self.paused = None;
                self.hand_next();
                Ok(true)
            }
            Step::FollowerLost => {
                if let Some(output) = &mut self.output {
                    output.replaying = true;
                }
                Ok(true)
            }
        }
    }

    fn on_link(&mut self, event: LinkEvent) -> Flow {
        self.handing = None;
        self.acks = FuturesOrdered::new();
        match event {
            LinkEvent::Lost => {
                self.clients_tx.send_replace(None);
                Ok(true)
            }
            // With the output followed, its end tells how the session ended.
            LinkEvent::Failed(err) if self.output.is_some() => {
                self.clients_tx.send_replace(None);
                self.link = Link::Gone;
                self.link_error = Some(err);
                Ok(true)
            }
            LinkEvent::Failed(err) => Err(err),
            LinkEvent::Attached(attached) => {
                if let Some(log) = &mut self.log {
                    log.attached(attached.last_seq)?;
                    self.acked_tx.send_replace(log.acked_through());
                }
                self.sent_through = attached.last_seq;
                if let Link::Up { client, .. } = &self.link {
                    self.clients_tx.send_replace(Some(client.clone()));
                }
                if let Some((cols, rows)) = self.size
                    && (cols, rows) != (attached.cols, attached.rows)
                {
                    self.send_resize(cols, rows);
                }
                self.hand_next();
                Ok(true)
            }
        }
    }

    async fn on_command(&mut self, command: Command) -> Flow {
        match command {
            Command::Input { seq, data } => {
                if let Some(err) = &self.link_error {
                    return Err(err.clone());
                }
                if let Some(log) = &mut self.log {
                    let numbered = log.push(data);
                    debug_assert_eq!(numbered, seq, "the handle and the log number alike");
                }
                self.hand_next();
                Ok(true)
            }
            Command::Resize { cols, rows } => {
                self.size = Some((cols, rows));
                self.send_resize(cols, rows);
                Ok(true)
            }
            Command::Detach { done_tx } => {
                if let Link::Up { client, .. } = &self.link {
                    let _ = client.detach_session(self.run).await;
                }
                let _ = done_tx.send(());
                Ok(false)
            }
        }
    }

    /// Hands the next unsent input to the attached connection, unless one is
    /// being handed over or the link is down.
    fn hand_next(&mut self) {
        let (Some(log), Link::Up { client, .. }, None, None) =
            (&self.log, &self.link, &self.handing, &self.paused)
        else {
            return;
        };
        let Some((seq, data)) = log.next_after(self.sent_through) else {
            return;
        };
        let input = SessionInput {
            run: self.run,
            seq,
            data: data.to_owned(),
        };
        let client = client.clone();
        let message = muster_proto::ClientToHub::SessionInput(input);
        self.handing = Some(Box::pin(
            async move { (seq, client.enqueue(message).await) },
        ));
    }

    fn on_handed(&mut self, seq: u64, handed: Result<PendingReply, ClientError>) -> Flow {
        self.handing = None;
        // A connection that closed meanwhile is reported by the link.
        if let Ok(pending) = handed {
            self.sent_through = seq;
            self.acks
                .push_back(Box::pin(async move { (seq, pending.reply().await) }));
            self.hand_next();
        }
        Ok(true)
    }

    fn on_ack(&mut self, seq: u64, ack: Result<HubToClient, ClientError>) -> Flow {
        let acked = match ack {
            Ok(HubToClient::SessionInputAck(ack)) => ack.seq,
            Ok(other) => {
                return Err(ClientError::Protocol(format!(
                    "expected a session.input.ack reply, got {}",
                    crate::api::type_name(&other)
                ))
                .into());
            }
            // The link reports the drop, and the input is sent again.
            Err(ClientError::Closed(_)) => return Ok(true),
            Err(ClientError::Hub(error)) if error.recoverable => {
                // Not taken, nor anything sent after it (those are refused
                // as gaps): forget them, and send again from this one.
                self.acks = FuturesOrdered::new();
                self.handing = None;
                self.sent_through = seq.saturating_sub(1);
                let wait = error
                    .retry_after_ms
                    .map_or(RETRY_PAUSE, Duration::from_millis)
                    .min(MAX_RETRY_PAUSE);
                tracing::debug!(seq, code = %error.code, ?wait, "input refused for now; sending again");
                self.paused = Some(Box::pin(tokio::time::sleep(wait)));
                return Ok(true);
            }
            Err(error) => return Err(SessionError::InputRefused { seq, error }),
        };
        if let Some(log) = &mut self.log {
            log.acked(acked)?;
            self.acked_tx.send_replace(log.acked_through());
        }
        Ok(true)
    }

    fn send_resize(&self, cols: u16, rows: u16) {
        let Link::Up { client, .. } = &self.link else {
            return;
        };
        let (client, run) = (client.clone(), self.run);
        tokio::spawn(async move {
            if let Err(err) = client.resize_session(run, cols, rows).await {
                tracing::debug!(%run, error = %err, "resizing the session failed");
            }
        });
    }

    async fn on_output(&mut self, item: Option<Result<FollowEvent, FollowError>>) -> Flow {
        let Some(output) = &mut self.output else {
            return Ok(true);
        };
        let event = match item {
            None => return Ok(false),
            Some(Err(err)) => return Err(err.into()),
            Some(Ok(event)) => event,
        };
        let (event, last) = match output.session_event(event) {
            Some(event) => event,
            None => return Ok(true),
        };
        if self.events_tx.send(Ok(event)).await.is_err() {
            return Ok(false);
        }
        Ok(!last)
    }
}

impl Output {
    /// The follower's event as a session event, and whether it is the last.
    fn session_event(&mut self, event: FollowEvent) -> Option<(SessionEvent, bool)> {
        let replayed = self.replaying;
        let event = match event {
            FollowEvent::Output(frame) if frame.header.stream == OutputStream::Input => {
                let seq = frame.header.seq;
                match serde_json::from_slice::<InputRecord>(&frame.payload) {
                    Ok(record) => SessionEvent::Input {
                        seq,
                        record,
                        replayed,
                    },
                    Err(err) => {
                        tracing::warn!(seq, error = %err, "skipping an unreadable input record");
                        return None;
                    }
                }
            }
            FollowEvent::Output(frame) => SessionEvent::Output { frame, replayed },
            FollowEvent::Queued { .. } => return None,
            FollowEvent::Status(run) => SessionEvent::Status(run),
            FollowEvent::Synced { next_seq } => {
                self.replaying = false;
                SessionEvent::Synced { next_seq }
            }
            FollowEvent::Finished(run) => return Some((SessionEvent::Finished(run), true)),
        };
        Some((event, false))
    }
}

/// The next thing the output follower says: an event, or that its
/// connection dropped (what follows is a replay). Pending without a follower.
async fn next_output(output: &mut Option<Output>) -> Step {
    let Some(output) = output else {
        return std::future::pending().await;
    };
    loop {
        tokio::select! {
            biased;
            changed = output.clients_rx.changed(), if output.watching => match changed {
                // The follower stopped; its last events are still to come.
                Err(_) => output.watching = false,
                Ok(()) if output.clients_rx.borrow_and_update().is_none() => {
                    return Step::FollowerLost;
                }
                // A new connection: its replay is already marked.
                Ok(()) => {}
            },
            item = output.follower.next() => return Step::Output(item),
        }
    }
}

/// The input being handed over, or pending when there is none.
/// Ends when the pause after a refusal is over; never without one.
async fn pause(paused: &mut Option<Pin<Box<tokio::time::Sleep>>>) {
    match paused {
        Some(sleep) => sleep.await,
        None => std::future::pending().await,
    }
}

async fn handing(
    handing: &mut Option<BoxFuture<'static, (u64, Result<PendingReply, ClientError>)>>,
) -> (u64, Result<PendingReply, ClientError>) {
    match handing {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

impl Link {
    /// Waits for the attachment to change; cancel-safe (a reconnection in
    /// progress is kept).
    async fn next(&mut self, run: RunId, writer: Option<String>) -> LinkEvent {
        loop {
            match self {
                Link::Up { events, .. } => match events.recv().await {
                    Some(Event::Closed {
                        code: Some(code),
                        reason,
                    }) if CloseCode::is_fatal(code) => {
                        let err = FollowError::FatalClose { code, reason };
                        return LinkEvent::Failed(err.into());
                    }
                    Some(Event::Closed { code, reason }) => {
                        let lost = match code {
                            Some(code) => format!("{reason} (close code {code})"),
                            None => reason,
                        };
                        self.go_down(run, writer, lost);
                        return LinkEvent::Lost;
                    }
                    None => {
                        self.go_down(run, writer, "the connection ended".into());
                        return LinkEvent::Lost;
                    }
                    Some(_) => {}
                },
                Link::Gone => return std::future::pending().await,
                Link::Down(relink) => {
                    let (mut reconnector, linked) = relink.await;
                    return match linked {
                        Ok((client, events, attached)) => {
                            reconnector.connected();
                            *self = Link::Up {
                                client,
                                events,
                                reconnector,
                            };
                            LinkEvent::Attached(attached)
                        }
                        Err(err) => LinkEvent::Failed(err),
                    };
                }
            }
        }
    }

    fn go_down(&mut self, run: RunId, writer: Option<String>, lost: String) {
        let placeholder = Link::Down(Box::pin(std::future::pending()));
        let Link::Up { reconnector, .. } = std::mem::replace(self, placeholder) else {
            return;
        };
        *self = Link::Down(Box::pin(relink(reconnector, run, writer, lost)));
    }
}

/// Reconnects and attaches again, as the same writer; gives the reconnector back.
async fn relink(
    mut reconnector: Reconnector,
    run: RunId,
    writer: Option<String>,
    mut lost: String,
) -> (Reconnector, Result<Linked, SessionError>) {
    let what = format!("session {run}");
    loop {
        let (client, events) = match reconnector.reconnect(&what, lost).await {
            Ok(connection) => connection,
            Err(ReconnectError::Fatal(err)) => return (reconnector, Err(err.into())),
            Err(ReconnectError::GaveUp { waited, last_error }) => {
                let err = FollowError::GaveUp { waited, last_error };
                return (reconnector, Err(err.into()));
            }
        };
        match client.attach_session(run, writer.as_deref()).await {
            Ok(attached) => return (reconnector, Ok((client, events, attached))),
            Err(err) if is_retryable(&err) => {
                lost = format!("attaching again failed: {err}");
                client.close().await;
            }
            Err(err) => return (reconnector, Err(err.into())),
        }
    }
}
