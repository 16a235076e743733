//! One client connection: handshake, then one `select!` over requests from
//! the socket, its queue (answers and published frames), heartbeats and
//! shutdown.

use tungstenite::Message;

use super::upgrade::Socket;
use futures_util::StreamExt as _;
use futures_util::stream::SplitStream;
use muster_proto::messages::{ErrorData, Heartbeat};
use muster_proto::{Channel, ClientToHub, CloseCode, Envelope, ErrorCode, HubToClient};

use super::AppState;
use super::conn::{self, Liveness, MAX_FRAMES_PER_FLUSH, ReadEnd, Writer};
use super::session::Session;
use crate::clients::Registration;
use crate::delivery::{SinkClosed, Subscriptions};
use crate::engine::{ClientWelcome, Engine, Input};
use crate::outbound::Outbound;
use crate::queue::Overflowed;

/// Close reason sent with 4008.
const SLOW_CONSUMER_REASON: &str = "send queue overflow: read faster and resume";

/// Serves one client WebSocket until it closes or the hub shuts down.
///
/// As for agents (see `agent::serve`), this future keeps only what the idle
/// loop needs; the handshake, each message's handling and the close run in
/// futures of their own, on the heap, for as long as they run.
pub(crate) fn serve(
    state: AppState,
    socket: Socket,
    conn_id: u64,
    permit: tokio::sync::OwnedSemaphorePermit,
    peer: super::Peer,
) -> impl Future<Output = ()> + Send + 'static {
    let opening = Box::pin(open(state, socket, conn_id, peer));
    async move {
        let _permit = permit;
        let Some(mut conn) = opening.await else {
            return;
        };
        let end = conn.run().await;
        Box::pin(conn.session.detach_all()).await;
        let Some((code, reason)) = end else {
            return;
        };
        if code != CloseCode::GOING_AWAY {
            tracing::info!(conn_id, code, reason, "closing client connection");
        }
        Box::pin(conn.writer.close(code, reason)).await;
    }
}

/// A client connection past its handshake.
struct Connection {
    state: AppState,
    stream: SplitStream<Socket>,
    writer: Writer,
    session: Session,
    rx: crate::queue::Receiver,
    liveness: Liveness,
    /// Its place among the connections of its key, which revoking ends.
    registration: Registration,
}

/// What woke the connection loop.
enum Event {
    Shutdown,
    Revoked,
    Frame(Option<Result<Message, tungstenite::Error>>),
    Queued(Result<Outbound, Overflowed>),
    Tick,
}

/// How a connection ends: with a close frame, or `None` if the socket is gone.
type End = Option<(u16, &'static str)>;

/// Greets the client, or refuses it.
async fn open(
    state: AppState,
    socket: Socket,
    conn_id: u64,
    peer: super::Peer,
) -> Option<Connection> {
    let (sink, mut stream) = socket.split();
    let mut writer = Writer::new(sink, state.config.heartbeat_deadline());
    let source = peer.addr.ip();
    let welcome = handshake(&state, &mut stream, &mut writer, source).await?;
    peer.authenticated.set();
    // Before the ack, so a revocation from now on reaches this connection.
    let registration = state.guards.clients.register(&welcome.key_id, conn_id);
    tracing::debug!(conn_id, client = %welcome.principal.name, "client connected");
    let (queue, rx) = crate::queue::bounded(state.config.client_queue_frames);
    let mut subs = Subscriptions::new(state.broker.clone(), queue.clone());
    subs.subscribe_live(&Channel::Fleet);
    let ack = Engine::ack_template(
        &state.config,
        (*welcome.principal).clone(),
        format!("c{conn_id}"),
    );
    writer
        .send(&Envelope::plain(HubToClient::ConnectionAck(ack)))
        .await
        .ok()?;
    let agents = HubToClient::AgentList(welcome.agents);
    writer.send(&Envelope::plain(agents)).await.ok()?;
    let session = Session::new(
        welcome.principal,
        welcome.view,
        source,
        &state.guards.limits,
        state.engine.clone(),
        state.history.clone(),
        queue,
        subs,
    );
    let liveness = Liveness::new(state.config.heartbeat_deadline());
    Some(Connection {
        state,
        stream,
        writer,
        session,
        rx,
        liveness,
        registration,
    })
}

impl Connection {
    /// The connection loop; returns how the connection ends.
    async fn run(&mut self) -> End {
        let mut ticker = conn::heartbeat_ticker(self.state.config.heartbeat_interval());
        let shutdown = self.state.shutdown.clone();
        let revoked = self.registration.revoked().clone();
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => Event::Shutdown,
                () = revoked.cancelled() => Event::Revoked,
                frame = self.stream.next() => Event::Frame(frame),
                item = self.rx.recv() => Event::Queued(item),
                _ = ticker.tick() => Event::Tick,
            };
            // Boxed: what handling needs is on the heap only while it runs.
            if let Err(end) = Box::pin(self.on_event(event)).await {
                return end;
            }
        }
    }

    async fn on_event(&mut self, event: Event) -> Result<(), End> {
        const GONE: End = None;
        match event {
            Event::Shutdown => Err(Some((CloseCode::GOING_AWAY, "hub shutting down"))),
            Event::Revoked => Err(Some((CloseCode::REVOKED, "API key revoked"))),
            Event::Frame(frame) => {
                self.liveness.heard();
                let sent = match frame {
                    Some(Ok(Message::Text(text))) => {
                        let guards = &self.state.guards;
                        self.session
                            .handle_text(&mut self.writer, &text, guards)
                            .await
                    }
                    Some(Ok(Message::Binary(_))) => {
                        let error = ErrorData::new(
                            ErrorCode::InvalidMessage,
                            "clients may not send binary frames",
                        );
                        self.writer
                            .send_error(None, error, HubToClient::Error)
                            .await
                            .map_err(|_| SinkClosed)
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Ok(()),
                    Some(Ok(Message::Close(_))) | None => return Err(GONE),
                    Some(Err(e)) => {
                        return Err(match conn::read_error(e) {
                            ReadEnd::TooBig => Some((
                                CloseCode::MESSAGE_TOO_BIG,
                                "message exceeds max_message_bytes",
                            )),
                            ReadEnd::Gone => GONE,
                        });
                    }
                };
                sent.map_err(|_| GONE)
            }
            Event::Queued(Ok(item)) => {
                // A client that stops reading blocks this write. Its queue
                // overflowing, or the writer's stall deadline, is what gets
                // the connection out of it.
                let overflowed = self.session.queue().clone();
                tokio::select! {
                    sent = forward_batch(&mut self.session, &mut self.writer, item, &mut self.rx) => {
                        sent.map_err(|_| GONE)
                    }
                    _ = overflowed.overflowed() => Err(Some((CloseCode::SLOW_CONSUMER, SLOW_CONSUMER_REASON))),
                }
            }
            Event::Queued(Err(Overflowed)) => {
                Err(Some((CloseCode::SLOW_CONSUMER, SLOW_CONSUMER_REASON)))
            }
            Event::Tick => {
                if self.liveness.expired() {
                    return Err(Some((
                        CloseCode::HEARTBEAT_TIMEOUT,
                        "no heartbeat within the deadline",
                    )));
                }
                let beat = HubToClient::Heartbeat(Heartbeat {
                    seq: self.liveness.next_seq(),
                });
                self.writer
                    .send(&Envelope::plain(beat))
                    .await
                    .map_err(|_| GONE)
            }
        }
    }
}

/// Reads the `hello` and asks the engine who it is, or refuses the connection.
async fn handshake(
    state: &AppState,
    stream: &mut SplitStream<Socket>,
    writer: &mut Writer,
    source: std::net::IpAddr,
) -> Option<ClientWelcome> {
    let (code, error) =
        match conn::read_hello::<ClientToHub>(stream, state.config.handshake_timeout()).await {
            Ok(Envelope {
                msg: ClientToHub::Hello(_),
                ..
            }) if let Some(wait) = state.guards.limits.auth_blocked(source) => {
                let why = "too many failed logins from this address";
                let code = ErrorCode::RateLimit;
                state
                    .guards
                    .audit_refusal(&state.engine, "-", source, "login", code, why);
                (CloseCode::RATE_LIMITED, conn::auth_rate_limited(wait))
            }
            Ok(Envelope {
                msg: ClientToHub::Hello(hello),
                ..
            }) => {
                let token = hello.token;
                match state
                    .engine
                    .ask(|reply| Input::ClientHello {
                        token,
                        source: Some(source),
                        reply,
                    })
                    .await
                {
                    Some(Ok(welcome)) => return Some(welcome),
                    Some(Err(e)) => {
                        if e.code == ErrorCode::AuthFailed {
                            state.guards.limits.auth_failed(source);
                        }
                        (CloseCode::AUTH_FAILED, e.to_data())
                    }
                    None => (
                        CloseCode::GOING_AWAY,
                        ErrorData::new(ErrorCode::Internal, "the hub is shutting down"),
                    ),
                }
            }
            Ok(_) => conn::not_hello(),
            Err(rejected) => rejected,
        };
    writer.reject(code, error, HubToClient::Error).await;
    None
}

/// Writes `first` and whatever else is already queued, then flushes once.
async fn forward_batch(
    session: &mut Session,
    writer: &mut Writer,
    first: Outbound,
    rx: &mut crate::queue::Receiver,
) -> Result<(), SinkClosed> {
    let skipped = skipped_of(rx, &first);
    session.forward(writer, first, skipped).await?;
    for _ in 1..MAX_FRAMES_PER_FLUSH {
        match rx.try_recv() {
            Ok(Some(item)) => {
                let skipped = skipped_of(rx, &item);
                session.forward(writer, item, skipped).await?;
            }
            // An overflow is seen by the connection loop next.
            Ok(None) | Err(_) => break,
        }
    }
    // Caught up with the queue: fill in what it had to skip.
    for (channel, skipped) in rx.take_all_skipped() {
        session.fill_skipped(writer, &channel, skipped).await?;
    }
    writer.flush().await.map_err(|_| SinkClosed)
}

/// What the channel of `item` missed while the queue was full.
fn skipped_of(rx: &mut crate::queue::Receiver, item: &Outbound) -> Option<crate::queue::Skipped> {
    match item {
        Outbound::Delivery(delivery) => rx.take_skipped(&delivery.channel, delivery.seq),
        _ => None,
    }
}
