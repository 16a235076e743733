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
use crate::delivery::{SinkClosed, Subscriptions};
use crate::engine::{ClientWelcome, Engine, Input};
use crate::outbound::Outbound;

/// Close reason sent with 4008.
const SLOW_CONSUMER_REASON: &str = "send queue overflow: read faster and resume";

/// Serves one client WebSocket until it closes or the hub shuts down.
pub(crate) async fn serve(
    state: AppState,
    socket: Socket,
    conn_id: u64,
    _permit: tokio::sync::OwnedSemaphorePermit,
) {
    let (sink, mut stream) = socket.split();
    let mut writer = Writer::new(sink, state.config.heartbeat_deadline());
    // Boxed: a one-time step whose future would otherwise be kept inside
    // every idle connection's task.
    let Some(welcome) = Box::pin(handshake(&state, &mut stream, &mut writer)).await else {
        return;
    };
    tracing::debug!(conn_id, client = %welcome.principal.name, "client connected");
    let (queue, mut rx) = crate::queue::bounded(state.config.client_queue_frames);
    let mut subs = Subscriptions::new(state.broker.clone(), queue.clone());
    subs.subscribe_live(&Channel::Fleet);
    let ack = Engine::ack_template(
        &state.config,
        welcome.principal.clone(),
        format!("c{conn_id}"),
    );
    let greeted = async {
        writer
            .send(&Envelope::plain(HubToClient::ConnectionAck(ack)))
            .await?;
        let agents = HubToClient::AgentList(welcome.agents);
        writer.send(&Envelope::plain(agents)).await
    };
    if Box::pin(greeted).await.is_err() {
        return;
    }
    let page_bytes = state.config.max_message_bytes / 2;
    let mut session = Session::new(
        welcome.principal,
        state.engine.clone(),
        state.history.clone(),
        queue.clone(),
        subs,
        page_bytes,
    );
    let mut liveness = Liveness::new(state.config.heartbeat_deadline());
    let mut ticker = conn::heartbeat_ticker(state.config.heartbeat_interval());
    let (code, reason) = loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => break (CloseCode::GOING_AWAY, "hub shutting down"),
            frame = stream.next() => {
                liveness.heard();
                match frame {
                    Some(Ok(Message::Text(text))) => {
                        if Box::pin(session.handle_text(&mut writer, &text)).await.is_err() {
                            return;
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        let error = ErrorData::new(ErrorCode::InvalidMessage, "clients may not send binary frames");
                        if writer.send_error(None, error, HubToClient::Error).await.is_err() {
                            return;
                        }
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                    Some(Ok(Message::Close(_))) | None => return,
                    Some(Err(e)) => match conn::read_error(e) {
                        ReadEnd::TooBig => break (CloseCode::MESSAGE_TOO_BIG, "message exceeds max_message_bytes"),
                        ReadEnd::Gone => return,
                    },
                }
            }
            item = rx.recv() => {
                let Ok(item) = item else {
                    break (CloseCode::SLOW_CONSUMER, SLOW_CONSUMER_REASON);
                };
                // A client that stops reading blocks this write. Its queue
                // overflowing, or the writer's stall deadline, is what gets
                // the connection out of it.
                tokio::select! {
                    sent = Box::pin(forward_batch(&mut session, &mut writer, item, &mut rx)) => {
                        if sent.is_err() {
                            return;
                        }
                    }
                    _ = queue.overflowed() => break (CloseCode::SLOW_CONSUMER, SLOW_CONSUMER_REASON),
                }
            }
            _ = ticker.tick() => {
                if liveness.expired() {
                    break (CloseCode::HEARTBEAT_TIMEOUT, "no heartbeat within the deadline");
                }
                let beat = HubToClient::Heartbeat(Heartbeat { seq: liveness.next_seq() });
                if writer.send(&Envelope::plain(beat)).await.is_err() {
                    return;
                }
            }
        }
    };
    if code != CloseCode::GOING_AWAY {
        tracing::info!(conn_id, code, reason, "closing client connection");
    }
    Box::pin(writer.close(code, reason)).await;
}

/// Reads the `hello` and asks the engine who it is, or refuses the connection.
async fn handshake(
    state: &AppState,
    stream: &mut SplitStream<Socket>,
    writer: &mut Writer,
) -> Option<ClientWelcome> {
    let (code, error) =
        match conn::read_hello::<ClientToHub>(stream, state.config.handshake_timeout()).await {
            Ok(Envelope {
                msg: ClientToHub::Hello(hello),
                ..
            }) => {
                let token = hello.token;
                match state
                    .engine
                    .ask(|reply| Input::ClientHello { token, reply })
                    .await
                {
                    Some(Ok(welcome)) => return Some(welcome),
                    Some(Err(e)) => (CloseCode::AUTH_FAILED, e.to_data()),
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
