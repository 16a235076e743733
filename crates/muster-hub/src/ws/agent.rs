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
use muster_proto::enroll::{self, Enrolled};
use muster_proto::messages::{AgentHello, ErrorData, Heartbeat, Principal};
use muster_proto::{AgentToHub, CloseCode, Envelope, ErrorCode, HubToAgent, OutputFrame};

use super::AppState;
use super::conn::{self, Liveness, MAX_FRAMES_PER_FLUSH, ReadEnd, Writer};
use crate::clock::now_ms;
use crate::engine::{AgentConn, AgentLink, ConnControl, Engine, Input, LastSeen, PresenceGuard};
use crate::outbound::Outbound;

/// Messages queued for one agent (acknowledgements, `run.start`s, session
/// input) beyond what its runs account for; see [`agent_queue_capacity`].
const AGENT_QUEUE: usize = 1024;
/// The most messages queued for one agent, whatever concurrency it announces.
const MAX_AGENT_QUEUE: usize = 1 << 20;

/// How many messages may wait for an agent before it counts as a slow
/// consumer (4008). The hub itself queues up to three per slot at once: a
/// run's `run.start`, the acknowledgement of its `run.started`, and that of
/// the exit of the run the slot held before. So the bound grows with the
/// concurrency the agent announces; otherwise an agent that reports a full
/// set of runs at once would be dropped for the burst of answers the hub
/// made. The queue allocates only for what waits in it.
fn agent_queue_capacity(max_concurrency: u32) -> usize {
    let per_slot = 3usize.saturating_mul(max_concurrency as usize);
    AGENT_QUEUE.saturating_add(per_slot).min(MAX_AGENT_QUEUE)
}

/// The reason of the normal close that follows `enrolled`.
const ENROLLED_REASON: &str = "enrolled; reconnect with the stored credential";

/// Serves one agent WebSocket until it closes or the hub shuts down.
///
/// This future lives inside the task of every connected agent for as long
/// as it stays connected, so it keeps only what the idle loop needs: the
/// handshake, each message's handling and the close run in futures of their
/// own, on the heap, for as long as they run.
pub(crate) fn serve(
    state: AppState,
    socket: Socket,
    conn_id: u64,
    permit: tokio::sync::OwnedSemaphorePermit,
    peer: super::Peer,
) -> impl Future<Output = ()> + Send + 'static {
    // The arguments go into the boxed handshake at once: an async fn would
    // keep room for them in its future for the connection's whole life.
    let opening = Box::pin(open(state, socket, conn_id, peer));
    async move {
        let _permit = permit;
        let Some(Opened {
            mut conn,
            mut stream,
            rx,
            control,
            presence: _presence,
        }) = opening.await
        else {
            return;
        };
        let end = conn.run(&mut stream, rx, &control).await;
        let name = &conn.link.name;
        match end {
            Some((code, reason)) => {
                tracing::info!(agent = %name, code, reason = %reason, "closing agent connection");
                Box::pin(conn.writer.close(code, &reason)).await;
            }
            None => tracing::info!(agent = %name, "agent disconnected"),
        }
    }
}

/// An agent connection past its handshake.
struct Opened {
    conn: Connection,
    stream: SplitStream<Socket>,
    rx: crate::queue::Receiver,
    control: ConnControl,
    /// However the connection's task ends, the engine hears of it.
    presence: PresenceGuard,
}

/// Reads the `hello` and has the engine admit the agent, or refuses it.
async fn open(state: AppState, socket: Socket, conn_id: u64, peer: super::Peer) -> Option<Opened> {
    let (sink, mut stream) = socket.split();
    let mut writer = Writer::new(sink, state.config.heartbeat_deadline());
    let hello = read_hello(&state, &mut stream, &mut writer).await?;
    let source = peer.addr.ip();
    if let Some(wait) = state.guards.limits.auth_blocked(source) {
        let why = "too many failed logins from this address";
        let code = ErrorCode::RateLimit;
        let guards = &state.guards;
        guards.audit_refusal(&state.engine, "-", source, "agent.hello", code, why);
        let error = conn::auth_rate_limited(wait);
        writer
            .reject(CloseCode::RATE_LIMITED, error, HubToAgent::Error)
            .await;
        return None;
    }
    if enroll::is_enrollment_token(&hello.token) {
        enroll_agent(&state, &mut writer, hello, source).await;
        return None;
    }
    let (queue, rx) = crate::queue::bounded(agent_queue_capacity(hello.max_concurrency));
    let control = ConnControl::default();
    let last_seen = LastSeen::default();
    let conn = AgentConn {
        conn_id,
        tx: queue.clone(),
        control: control.clone(),
        last_seen: last_seen.clone(),
    };
    let accepted = state
        .engine
        .ask(|reply| Input::AgentHello {
            hello: Box::new(hello),
            conn,
            reply,
        })
        .await;
    let name = match accepted {
        Some(Ok(name)) => name,
        Some(Err(e)) => {
            tracing::info!(reason = %e.message, "agent handshake rejected");
            if e.code == ErrorCode::AuthFailed {
                state.guards.limits.auth_failed(source);
            }
            let guards = &state.guards;
            guards.audit_refusal(
                &state.engine,
                "-",
                source,
                "agent.hello",
                e.code,
                &e.message,
            );
            let error = e.to_data();
            writer
                .reject(CloseCode::AUTH_FAILED, error, HubToAgent::Error)
                .await;
            return None;
        }
        None => {
            writer
                .close(CloseCode::GOING_AWAY, "hub shutting down")
                .await;
            return None;
        }
    };
    peer.authenticated.set();
    let presence = PresenceGuard::new(name.clone(), conn_id, state.engine.control());
    tracing::info!(agent = %name, conn_id, "agent connected");
    let liveness = Liveness::new(state.config.heartbeat_deadline());
    let conn = Connection {
        link: Arc::new(AgentLink {
            name,
            conn_id,
            tx: queue,
        }),
        state,
        writer,
        last_seen,
        liveness,
        ticks: 0,
        stale: false,
    };
    Some(Opened {
        conn,
        stream,
        rx,
        control,
        presence,
    })
}

/// Registers an agent that said `hello` with an enrollment token: once that
/// is stored, answers `enrolled` with its own token and closes normally; or
/// refuses it (a bad token counts against its address like any failed
/// authentication).
async fn enroll_agent(
    state: &AppState,
    writer: &mut Writer,
    hello: AgentHello,
    source: std::net::IpAddr,
) {
    if !state.engine.health().writable() {
        let error = ErrorData::new(
            ErrorCode::StorageUnavailable,
            "the hub cannot write to its store right now; nothing was done, retry later",
        );
        tracing::info!(reason = %error.message, "agent enrollment refused");
        writer
            .reject(CloseCode::TRY_AGAIN_LATER, error, HubToAgent::Error)
            .await;
        return;
    }
    let answer = state
        .engine
        .ask(|reply| Input::Enroll {
            hello: Box::new(hello),
            source: Some(source),
            reply,
        })
        .await;
    match answer {
        Some(Ok(enrolled)) => {
            tracing::info!(agent = %enrolled.name, enrollment = %enrolled.enrollment, "agent enrolled");
            let msg = HubToAgent::Enrolled(Enrolled {
                name: enrolled.name,
                token: enrolled.token.expose().to_owned(),
            });
            if writer.send(&Envelope::plain(msg)).await.is_ok() {
                writer.close(CloseCode::NORMAL, ENROLLED_REASON).await;
            }
        }
        Some(Err(e)) => {
            tracing::info!(code = %e.code, reason = %e.message, "agent enrollment refused");
            let code = match e.code {
                ErrorCode::AuthFailed => {
                    state.guards.limits.auth_failed(source);
                    CloseCode::AUTH_FAILED
                }
                _ => CloseCode::PROTOCOL_ERROR,
            };
            writer.reject(code, e.to_data(), HubToAgent::Error).await;
        }
        None => {
            writer
                .close(CloseCode::GOING_AWAY, "hub shutting down")
                .await;
        }
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
            }) => match crate::validate::agent_hello(&hello) {
                Ok(()) => return Some(hello),
                Err(e) => (CloseCode::PROTOCOL_ERROR, e.to_data()),
            },
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
    liveness: Liveness,
    /// Heartbeat ticks so far.
    ticks: u64,
    /// Whether the engine was told this connection's heartbeats are late.
    stale: bool,
}

/// What woke the connection loop.
enum Event {
    /// Close with this code and reason.
    End(u16, String),
    /// The store takes writes again.
    Writable,
    Frame(Option<Result<Message, tungstenite::Error>>),
    Queued(Result<Outbound, crate::queue::Overflowed>),
    Tick,
}

/// Whether the connection goes on after an event.
enum Flow {
    Continue,
    /// Ends it, with the close code to send, or `None` if the socket is gone.
    End(Option<(u16, String)>),
}

impl Connection {
    /// The connection loop. Returns the close code to send, or `None` if the socket is gone.
    async fn run(
        &mut self,
        stream: &mut SplitStream<Socket>,
        mut rx: crate::queue::Receiver,
        control: &ConnControl,
    ) -> Option<(u16, String)> {
        Box::pin(self.send(HubToAgent::ConnectionAck(self.ack())))
            .await
            .ok()?;
        let mut ticker = conn::heartbeat_ticker(self.state.config.heartbeat_interval() / 2);
        let health = self.state.engine.health().clone();
        let shutdown = self.state.shutdown.clone();
        loop {
            // While the store cannot write, the agent is not read: what it
            // would send could not be stored, so it keeps it, and TCP holds
            // it back; its runs slow down instead of anything being lost.
            let reading = health.writable();
            let event = tokio::select! {
                _ = shutdown.cancelled() => Event::End(CloseCode::GOING_AWAY, "hub shutting down".into()),
                (code, reason) = control.closed() => Event::End(code, reason),
                _ = health.until_writable(), if !reading => Event::Writable,
                frame = stream.next(), if reading => Event::Frame(frame),
                item = rx.recv() => Event::Queued(item),
                _ = ticker.tick() => Event::Tick,
            };
            let tick_while_paused = matches!(event, Event::Tick) && !reading;
            // Boxed: what handling needs is on the heap only while it runs.
            if let Flow::End(end) = Box::pin(self.on_event(event, &mut rx, tick_while_paused)).await
            {
                return end;
            }
        }
    }

    async fn on_event(
        &mut self,
        event: Event,
        rx: &mut crate::queue::Receiver,
        tick_while_paused: bool,
    ) -> Flow {
        let gone = Flow::End(None);
        match event {
            Event::End(code, reason) => Flow::End(Some((code, reason))),
            Event::Writable => {
                self.liveness.heard();
                Flow::Continue
            }
            Event::Frame(frame) => {
                self.liveness.heard();
                self.heard().await;
                let sent = match frame {
                    Some(Ok(Message::Text(text))) => self.on_text(&text).await,
                    Some(Ok(Message::Binary(bytes))) => self.on_binary(bytes).await,
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Ok(()),
                    Some(Ok(Message::Close(_))) | None => return gone,
                    Some(Err(e)) => {
                        return match conn::read_error(e) {
                            ReadEnd::TooBig => Flow::End(Some((
                                CloseCode::MESSAGE_TOO_BIG,
                                "message exceeds max_message_bytes".into(),
                            ))),
                            ReadEnd::Gone => gone,
                        };
                    }
                };
                match sent {
                    Ok(()) => Flow::Continue,
                    Err(_) => gone,
                }
            }
            Event::Queued(Ok(item)) => match self.forward(item, rx).await {
                Ok(()) => Flow::Continue,
                Err(_) => gone,
            },
            Event::Queued(Err(_)) => Flow::End(Some((
                CloseCode::SLOW_CONSUMER,
                "control queue overflow".into(),
            ))),
            Event::Tick => self.on_tick(tick_while_paused).await,
        }
    }

    async fn on_tick(&mut self, paused: bool) -> Flow {
        let config = self.state.config.clone();
        if paused {
            // Silence the hub chose is not the agent's.
            self.liveness.heard();
        }
        if self.liveness.expired() {
            return Flow::End(Some((
                CloseCode::HEARTBEAT_TIMEOUT,
                "no heartbeat within the deadline".into(),
            )));
        }
        if self.liveness.silent_for() > config.heartbeat_interval() * 3 / 2 {
            self.set_stale(true).await;
        }
        self.ticks += 1;
        if self.ticks.is_multiple_of(2) {
            let beat = HubToAgent::Heartbeat(Heartbeat {
                seq: self.liveness.next_seq(),
            });
            if self.send(beat).await.is_err() {
                return Flow::End(None);
            }
        }
        Flow::Continue
    }

    fn ack(&self) -> muster_proto::messages::ConnectionAck {
        let principal = Principal {
            kind: "agent".into(),
            name: self.link.name.to_string(),
            role: None,
            scope: None,
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
            AgentToHub::CredentialStored(stored) => Input::CredentialStored(link, stored),
            AgentToHub::SessionApplied(applied) => Input::SessionApplied(link, applied),
            AgentToHub::SessionScreen(screen) => Input::SessionScreen(link, Box::new(screen)),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agents_queue_grows_with_its_slots_up_to_a_ceiling() {
        assert_eq!(agent_queue_capacity(0), AGENT_QUEUE);
        assert_eq!(agent_queue_capacity(1024), AGENT_QUEUE + 3 * 1024);
        // An agent that claims any concurrency at all cannot unbound it.
        assert_eq!(agent_queue_capacity(u32::MAX), MAX_AGENT_QUEUE);
    }
}
