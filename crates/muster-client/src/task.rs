//! The background task that owns a client's socket.
//!
//! One `select!` over socket frames, commands from the [`Client`](crate::Client)
//! handles, the heartbeat tick and the silence deadline. Replies complete the
//! pending request whose id they name; every other message, and every output
//! frame, goes to the event channel in arrival order. When the connection ends
//! for any reason, pending requests fail with [`ClientError::Closed`] and the
//! last event is [`Event::Closed`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use muster_proto::messages::Heartbeat;
use muster_proto::{
    ClientToHub, CloseCode, DecodeError, Envelope, HubToClient, OutputFrame, RequestId, limits,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior, Sleep};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::client::{Event, Shared};
use crate::error::ClientError;
use crate::handshake::Socket;

/// How long a closing side waits for the hub to answer its close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Most requests sent in one write, when many are queued.
const MAX_REQUESTS_PER_WRITE: usize = 64;
/// Bytes after which no further queued request joins the write.
const MAX_BYTES_PER_WRITE: usize = 256 * 1024;

/// Where a request's reply goes.
pub(crate) type ReplyTx = oneshot::Sender<Result<HubToClient, ClientError>>;

/// What a [`Client`](crate::Client) handle asks of the task.
pub(crate) enum Command {
    /// Send `msg` as a request and route its reply to `reply_tx`.
    Request {
        /// The request (boxed: a `run.create` is large, and the queue of
        /// commands holds many).
        msg: Box<ClientToHub>,
        /// Receives the reply.
        reply_tx: ReplyTx,
    },
    /// Close the connection with 1000, then signal `done_tx`.
    Close {
        /// Signalled once the socket is closed.
        done_tx: oneshot::Sender<()>,
    },
}

/// How the connection ended.
enum Ending {
    /// The hub closed the socket, or the transport failed.
    Remote { code: Option<u16>, reason: String },
    /// This side closes the socket with `code`.
    Local {
        code: u16,
        reason: String,
        done_tx: Option<oneshot::Sender<()>>,
    },
}

/// The task's state.
pub(crate) struct Connection {
    socket: Socket,
    shared: Arc<Shared>,
    command_rx: mpsc::Receiver<Command>,
    event_tx: mpsc::Sender<Event>,
    /// Requests sent and not yet answered, by id.
    pending: HashMap<RequestId, ReplyTx>,
    next_request_id: u64,
    heartbeat_seq: u64,
    /// When the last frame of any kind arrived.
    last_heard: Instant,
    /// The close frame the hub sent, kept until the socket finishes closing.
    hub_close: Option<(u16, String)>,
}

impl Connection {
    /// Wraps an authenticated socket.
    pub(crate) fn new(
        socket: Socket,
        shared: Arc<Shared>,
        command_rx: mpsc::Receiver<Command>,
        event_tx: mpsc::Sender<Event>,
    ) -> Self {
        Self {
            socket,
            shared,
            command_rx,
            event_tx,
            pending: HashMap::new(),
            next_request_id: 1,
            heartbeat_seq: 0,
            last_heard: Instant::now(),
            hub_close: None,
        }
    }

    /// Serves the connection until it ends.
    pub(crate) async fn run(mut self) {
        let (interval, deadline) = self.heartbeat_timing();
        let mut heartbeat = tokio::time::interval_at(Instant::now() + interval, interval);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let silence = tokio::time::sleep(deadline);
        tokio::pin!(silence);
        let ending = loop {
            let step = tokio::select! {
                frame = self.socket.next() => self.on_frame(frame).await,
                command = self.command_rx.recv() => self.on_command(command).await,
                _ = heartbeat.tick() => self.send_heartbeat().await,
                () = &mut silence => self.check_silence(silence.as_mut(), deadline),
            };
            if let Some(ending) = step {
                break ending;
            }
        };
        self.finish(ending).await;
    }

    fn heartbeat_timing(&self) -> (Duration, Duration) {
        let ack = &self.shared.ack;
        let or_default =
            |ms: u64, default: u64| Duration::from_millis(if ms == 0 { default } else { ms });
        (
            or_default(ack.heartbeat_interval_ms, limits::HEARTBEAT_INTERVAL_MS),
            or_default(ack.heartbeat_deadline_ms, limits::HEARTBEAT_DEADLINE_MS),
        )
    }

    async fn on_frame(
        &mut self,
        frame: Option<Result<Message, tungstenite::Error>>,
    ) -> Option<Ending> {
        let message = match frame {
            Some(Ok(message)) => message,
            Some(Err(err)) => return Some(self.remote_ending(err.to_string())),
            None => return Some(self.remote_ending("the hub closed the connection".into())),
        };
        self.last_heard = Instant::now();
        match message {
            Message::Text(text) => self.on_text(text.as_str()).await,
            Message::Binary(bytes) => self.on_binary(bytes).await,
            Message::Close(frame) => {
                self.hub_close = frame.map(|f| (u16::from(f.code), f.reason.as_str().to_owned()));
                None
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => None,
        }
    }

    fn remote_ending(&mut self, fallback: String) -> Ending {
        match self.hub_close.take() {
            Some((code, reason)) => Ending::Remote {
                code: Some(code),
                reason: if reason.is_empty() {
                    format!("closed by the hub with code {code}")
                } else {
                    reason
                },
            },
            None => Ending::Remote {
                code: None,
                reason: fallback,
            },
        }
    }

    async fn on_text(&mut self, text: &str) -> Option<Ending> {
        match Envelope::<HubToClient>::decode(text) {
            Ok(envelope) => self.on_envelope(envelope).await,
            Err(err) => {
                self.on_undecodable(text, err);
                None
            }
        }
    }

    async fn on_envelope(&mut self, envelope: Envelope<HubToClient>) -> Option<Ending> {
        if let Some(reply_tx) = envelope.re.as_ref().and_then(|re| self.pending.remove(re)) {
            let _ = reply_tx.send(reply_result(envelope.msg));
            return None;
        }
        match envelope.msg {
            HubToClient::Heartbeat(beat) => {
                self.send(Envelope::plain(ClientToHub::HeartbeatAck(beat)))
                    .await
            }
            HubToClient::HeartbeatAck(_) => None,
            _ => {
                self.emit(Event::Message(envelope)).await;
                None
            }
        }
    }

    /// A message this client cannot decode (for instance a type from a newer
    /// hub) is skipped, unless it answers a pending request, which then fails.
    fn on_undecodable(&mut self, text: &str, err: DecodeError) {
        #[derive(serde::Deserialize)]
        struct Re {
            re: Option<RequestId>,
        }
        let re = serde_json::from_str::<Re>(text).ok().and_then(|r| r.re);
        match re.and_then(|re| self.pending.remove(&re)) {
            Some(reply_tx) => {
                let _ = reply_tx.send(Err(ClientError::Protocol(err.to_string())));
            }
            None => {
                tracing::debug!(error = %err, "skipping a message the client does not understand")
            }
        }
    }

    async fn on_binary(&mut self, bytes: Bytes) -> Option<Ending> {
        match OutputFrame::decode(bytes) {
            Ok(frame) => {
                self.emit(Event::Output(frame)).await;
                None
            }
            Err(err) => Some(Ending::Local {
                code: CloseCode::PROTOCOL_ERROR,
                reason: format!("the hub sent an invalid output frame: {err}"),
                done_tx: None,
            }),
        }
    }

    /// Sends a request, and the ones queued behind it (within bounds) in the
    /// same write, so a client that pipelines makes one system call for many.
    async fn on_command(&mut self, command: Option<Command>) -> Option<Ending> {
        let mut command = command;
        let (mut requests, mut queued) = (0, 0);
        loop {
            match command {
                Some(Command::Request { msg, reply_tx }) => {
                    let id = RequestId(self.next_request_id.to_string());
                    self.next_request_id += 1;
                    self.pending.insert(id.clone(), reply_tx);
                    let text = Envelope::request(id, *msg).encode();
                    requests += 1;
                    queued += text.len();
                    if let Err(err) = self.socket.feed(Message::text(text)).await {
                        return Some(self.sending_failed(err));
                    }
                }
                Some(Command::Close { done_tx }) => {
                    return Some(local_close("closed by the client", Some(done_tx)));
                }
                None => return Some(local_close("every client handle was dropped", None)),
            }
            if requests >= MAX_REQUESTS_PER_WRITE || queued >= MAX_BYTES_PER_WRITE {
                break;
            }
            match self.command_rx.try_recv() {
                Ok(next) => command = Some(next),
                Err(_) => break,
            }
        }
        match self.socket.flush().await {
            Ok(()) => None,
            Err(err) => Some(self.sending_failed(err)),
        }
    }

    async fn send_heartbeat(&mut self) -> Option<Ending> {
        self.heartbeat_seq += 1;
        let beat = Heartbeat {
            seq: self.heartbeat_seq,
        };
        self.send(Envelope::plain(ClientToHub::Heartbeat(beat)))
            .await
    }

    fn check_silence(
        &self,
        silence: std::pin::Pin<&mut Sleep>,
        deadline: Duration,
    ) -> Option<Ending> {
        let due = self.last_heard + deadline;
        if Instant::now() < due {
            silence.reset(due);
            return None;
        }
        Some(Ending::Local {
            code: CloseCode::HEARTBEAT_TIMEOUT,
            reason: format!("nothing heard from the hub for {}", humanize(deadline)),
            done_tx: None,
        })
    }

    async fn send(&mut self, envelope: Envelope<ClientToHub>) -> Option<Ending> {
        let text = envelope.encode();
        match self.socket.send(Message::text(text)).await {
            Ok(()) => None,
            Err(err) => Some(self.sending_failed(err)),
        }
    }

    fn sending_failed(&mut self, err: tungstenite::Error) -> Ending {
        self.remote_ending(format!("sending to the hub failed: {err}"))
    }

    /// Delivers an event, waiting while the channel is full; a dropped
    /// receiver means nobody listens, and the event is discarded.
    async fn emit(&self, event: Event) {
        let _ = self.event_tx.send(event).await;
    }

    async fn finish(mut self, ending: Ending) {
        let (code, reason, done_tx) = match ending {
            Ending::Remote { code, reason } => (code, reason, None),
            Ending::Local {
                code,
                reason,
                done_tx,
            } => {
                self.close_socket(code).await;
                (Some(code), reason, done_tx)
            }
        };
        tracing::debug!(?code, %reason, "client connection ended");
        let _ = self.shared.closed.set(reason.clone());
        self.fail_pending(&reason);
        let event = Event::Closed { code, reason };
        match done_tx {
            // The caller closed the connection; it may have stopped reading events.
            Some(done_tx) => {
                let _ = self.event_tx.try_send(event);
                let _ = done_tx.send(());
            }
            None => self.emit(event).await,
        }
    }

    fn fail_pending(&mut self, reason: &str) {
        for (_, reply_tx) in self.pending.drain() {
            let _ = reply_tx.send(Err(ClientError::Closed(reason.to_owned())));
        }
        self.command_rx.close();
        while let Ok(command) = self.command_rx.try_recv() {
            match command {
                Command::Request { reply_tx, .. } => {
                    let _ = reply_tx.send(Err(ClientError::Closed(reason.to_owned())));
                }
                Command::Close { done_tx } => {
                    let _ = done_tx.send(());
                }
            }
        }
    }

    /// Sends a close frame and waits, within [`CLOSE_TIMEOUT`], for the hub's answer.
    async fn close_socket(&mut self, code: u16) {
        let frame = CloseFrame {
            code: code.into(),
            reason: "".into(),
        };
        let closing = async {
            if self.socket.close(Some(frame)).await.is_ok() {
                while let Some(Ok(_)) = self.socket.next().await {}
            }
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, closing).await;
    }
}

fn local_close(reason: &str, done_tx: Option<oneshot::Sender<()>>) -> Ending {
    Ending::Local {
        code: CloseCode::NORMAL,
        reason: reason.to_owned(),
        done_tx,
    }
}

/// A reply as the caller of [`Client::request`](crate::Client::request) sees it.
pub(crate) fn reply_result(msg: HubToClient) -> Result<HubToClient, ClientError> {
    match msg {
        HubToClient::Error(error) => Err(ClientError::Hub(error)),
        other => Ok(other),
    }
}

fn humanize(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis.is_multiple_of(1000) {
        format!("{}s", millis / 1000)
    } else {
        format!("{millis}ms")
    }
}
