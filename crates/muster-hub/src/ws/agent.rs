//! One agent connection: handshake, presence (a guard), then one `select!`
//! over frames from the agent, messages for it, liveness and shutdown.
//!
//! Everything the agent reports goes to the engine as an input, in the order
//! it arrived; acknowledgements and control messages come back on the
//! connection's queue once the engine's batch is committed.

use std::sync::Arc;

use tungstenite::Message;

use super::upgrade::Socket;
use bytes::Bytes;
use futures_util::StreamExt as _;
use futures_util::stream::SplitStream;
use muster_proto::messages::{AgentHello, ErrorData, Heartbeat, Principal};
use muster_proto::{AgentToHub, CloseCode, Envelope, ErrorCode, HubToAgent, OutputFrame};

use super::AppState;
use super::conn::{self, Liveness, MAX_FRAMES_PER_FLUSH, ReadEnd, Writer};
use crate::clock::now_ms;
use crate::engine::{AgentConn, AgentLink, ConnControl, Engine, Input, LastSeen, PresenceGuard};
use crate::outbound::Outbound;

/// Messages queued for one agent: acknowledgements and `run.start`s. An
/// agent that lets this many pile up has stopped reading, and is dropped as
/// a slow consumer.
const AGENT_QUEUE: usize = 1024;

/// Serves one agent WebSocket until it closes or the hub shuts down.
pub(crate) async fn serve(
    state: AppState,
    socket: Socket,
    conn_id: u64,
    _permit: tokio::sync::OwnedSemaphorePermit,
) {
    let (sink, mut stream) = socket.split();
    let mut writer = Writer::new(sink, state.config.heartbeat_deadline());
    // Boxed: one-time steps whose futures would otherwise be kept inside
    // every idle connection's task.
    let Some(hello) = Box::pin(read_hello(&state, &mut stream, &mut writer)).await else {
        return;
    };
    let (queue, rx) = crate::queue::bounded(AGENT_QUEUE);
    let control = ConnControl::default();
    let last_seen = LastSeen::default();
    let conn = AgentConn {
        conn_id,
        tx: queue.clone(),
        control: control.clone(),
        last_seen: last_seen.clone(),
    };
    let accepted = Box::pin(state.engine.ask(|reply| Input::AgentHello {
        hello: Box::new(hello),
        conn,
        reply,
    }))
    .await;
    let name = match accepted {
        Some(Ok(name)) => name,
        Some(Err(e)) => {
            tracing::info!(reason = %e.message, "agent handshake rejected");
            let error = e.to_data();
            return writer
                .reject(CloseCode::AUTH_FAILED, error, HubToAgent::Error)
                .await;
        }
        None => {
            return writer
                .close(CloseCode::GOING_AWAY, "hub shutting down")
                .await;
        }
    };
    // From here on, however this task ends, the engine hears of it.
    let _presence = PresenceGuard::new(name.clone(), conn_id, state.engine.control());
    tracing::info!(agent = %name, conn_id, "agent connected");
    let mut conn = Connection {
        link: Arc::new(AgentLink {
            name: name.clone(),
            conn_id,
            tx: queue,
        }),
        state,
        writer,
        last_seen,
        stale: false,
    };
    let end = conn.run(&mut stream, rx, &control).await;
    match end {
        Some((code, reason)) => {
            tracing::info!(agent = %name, code, reason = %reason, "closing agent connection");
            Box::pin(conn.writer.close(code, &reason)).await;
        }
        None => tracing::info!(agent = %name, "agent disconnected"),
    }
}

/// Reads the `hello`, or refuses the connection.
async fn read_hello(
    state: &AppState,
    stream: &mut SplitStream<Socket>,
    writer: &mut Writer,
) -> Option<AgentHello> {
    let (code, error) =
        match conn::read_hello::<AgentToHub>(stream, state.config.handshake_timeout()).await {
            Ok(Envelope {
                msg: AgentToHub::Hello(hello),
                ..
            }) => return Some(hello),
            Ok(_) => conn::not_hello(),
            Err(rejected) => rejected,
        };
    if code != CloseCode::NORMAL {
        tracing::info!(code, reason = %error.message, "agent handshake rejected");
    }
    writer.reject(code, error, HubToAgent::Error).await;
    None
}

struct Connection {
    link: Arc<AgentLink>,
    state: AppState,
    writer: Writer,
    last_seen: LastSeen,
    /// Whether the engine was told this connection's heartbeats are late.
    stale: bool,
}

impl Connection {
    /// The connection loop. Returns the close code to send, or `None` if the socket is gone.
    async fn run(
        &mut self,
        stream: &mut SplitStream<Socket>,
        mut rx: crate::queue::Receiver,
        control: &ConnControl,
    ) -> Option<(u16, String)> {
        self.send(HubToAgent::ConnectionAck(self.ack()))
            .await
            .ok()?;
        let config = self.state.config.clone();
        let mut liveness = Liveness::new(config.heartbeat_deadline());
        let mut ticker = conn::heartbeat_ticker(config.heartbeat_interval() / 2);
        let mut ticks = 0u64;
        let health = self.state.engine.health().clone();
        loop {
            // While the store cannot write, the agent is not read: what it
            // would send could not be stored, so it keeps it, and TCP holds
            // it back; its runs slow down instead of anything being lost.
            let reading = health.writable();
            tokio::select! {
                _ = self.state.shutdown.cancelled() => return Some((CloseCode::GOING_AWAY, "hub shutting down".into())),
                (code, reason) = control.closed() => return Some((code, reason)),
                _ = health.until_writable(), if !reading => liveness.heard(),
                frame = stream.next(), if reading => {
                    liveness.heard();
                    self.heard().await;
                    match frame {
                        Some(Ok(Message::Text(text))) => Box::pin(self.on_text(&text)).await.ok()?,
                        Some(Ok(Message::Binary(bytes))) => self.on_binary(bytes).await.ok()?,
                        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                        Some(Ok(Message::Close(_))) | None => return None,
                        Some(Err(e)) => match conn::read_error(e) {
                            ReadEnd::TooBig => return Some((CloseCode::MESSAGE_TOO_BIG, "message exceeds max_message_bytes".into())),
                            ReadEnd::Gone => return None,
                        },
                    }
                }
                item = rx.recv() => match item {
                    Ok(item) => self.forward(item, &mut rx).await.ok()?,
                    Err(_) => return Some((CloseCode::SLOW_CONSUMER, "control queue overflow".into())),
                },
                _ = ticker.tick() => {
                    if !reading {
                        // Silence the hub chose is not the agent's.
                        liveness.heard();
                    }
                    if liveness.expired() {
                        return Some((CloseCode::HEARTBEAT_TIMEOUT, "no heartbeat within the deadline".into()));
                    }
                    if liveness.silent_for() > config.heartbeat_interval() * 3 / 2 {
                        self.set_stale(true).await;
                    }
                    ticks += 1;
                    if ticks.is_multiple_of(2) {
                        let beat = HubToAgent::Heartbeat(Heartbeat { seq: liveness.next_seq() });
                        self.send(beat).await.ok()?;
                    }
                }
            }
        }
    }

    fn ack(&self) -> muster_proto::messages::ConnectionAck {
        let principal = Principal {
            kind: "agent".into(),
            name: self.link.name.to_string(),
            role: None,
        };
        let id = format!("a{}", self.link.conn_id);
        Engine::ack_template(&self.state.config, principal, id)
    }

    /// Something arrived: the agent is live again if it was late.
    async fn heard(&mut self) {
        self.last_seen.touch(now_ms());
        if self.stale {
            self.set_stale(false).await;
        }
    }

    async fn set_stale(&mut self, stale: bool) {
        if self.stale == stale {
            return;
        }
        self.stale = stale;
        let input = Input::AgentStale {
            name: self.link.name.clone(),
            conn_id: self.link.conn_id,
            stale,
        };
        self.state.engine.send(input).await;
    }

    /// Writes `first` and whatever else is queued for the agent, then flushes once.
    async fn forward(
        &mut self,
        first: Outbound,
        rx: &mut crate::queue::Receiver,
    ) -> Result<(), tungstenite::Error> {
        self.feed(first).await?;
        for _ in 1..MAX_FRAMES_PER_FLUSH {
            let Ok(Some(more)) = rx.try_recv() else { break };
            self.feed(more).await?;
        }
        self.writer.flush().await
    }

    async fn feed(&mut self, item: Outbound) -> Result<(), tungstenite::Error> {
        match item {
            Outbound::Agent(msg) => self.writer.feed_text(Envelope::plain(*msg).encode()).await,
            Outbound::Delivery(delivery) => self.writer.feed(delivery.frame).await,
            Outbound::Reply(_) => Ok(()),
        }
    }

    async fn send(&mut self, msg: HubToAgent) -> Result<(), tungstenite::Error> {
        self.writer.send(&Envelope::plain(msg)).await
    }

    async fn on_text(&mut self, text: &str) -> Result<(), tungstenite::Error> {
        let env = match Envelope::<AgentToHub>::decode(text) {
            Ok(env) => env,
            Err(e) => {
                tracing::warn!(agent = %self.link.name, error = %e, "invalid message from agent");
                let error = ErrorData::new(e.code(), e.to_string());
                return self
                    .writer
                    .send_error(e.request_id(), error, HubToAgent::Error)
                    .await;
            }
        };
        let link = self.link.clone();
        let input = match env.msg {
            AgentToHub::Heartbeat(beat) => return self.send(HubToAgent::HeartbeatAck(beat)).await,
            AgentToHub::HeartbeatAck(_) => return Ok(()),
            AgentToHub::RunStarted(started) => Input::RunStarted(link, started),
            AgentToHub::RunExited(exited) => Input::RunExited(link, exited),
            AgentToHub::Event(event) => Input::AgentEvent(link, Box::new(event)),
            AgentToHub::Metrics(sample) => Input::Metrics(link, Box::new(sample)),
            AgentToHub::Error(error) => {
                tracing::warn!(agent = %self.link.name, code = %error.code, message = %error.message, "agent reported an error");
                return Ok(());
            }
            AgentToHub::Hello(_) => {
                let error = ErrorData::new(ErrorCode::InvalidMessage, "already authenticated");
                return self
                    .writer
                    .send_error(env.id, error, HubToAgent::Error)
                    .await;
            }
        };
        self.state.engine.send(input).await;
        Ok(())
    }

    /// A binary frame is output; one whose header does not decode is
    /// answered with `INVALID_MESSAGE`, and the connection stays open.
    async fn on_binary(&mut self, bytes: Bytes) -> Result<(), tungstenite::Error> {
        match OutputFrame::decode(bytes.clone()) {
            Ok(frame) => {
                let input = Input::RunOutput(self.link.clone(), bytes, frame);
                self.state.engine.send(input).await;
                Ok(())
            }
            Err(e) => {
                tracing::warn!(agent = %self.link.name, error = %e, "invalid output frame from agent");
                let error = ErrorData::new(ErrorCode::InvalidMessage, e.to_string());
                self.writer.send_error(None, error, HubToAgent::Error).await
            }
        }
    }
}
