//! One client connection: handshake, then one `select!` over requests from the
//! socket, deliveries from subscriptions, heartbeats and shutdown.

use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket};
use futures_util::StreamExt as _;
use muster_proto::messages::{AgentList, ConnectionAck, ErrorData, Heartbeat, Principal};
use muster_proto::{ClientToHub, CloseCode, Envelope, ErrorCode, HubToClient, PROTOCOL_VERSION};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::conn::{self, Liveness, MAX_FRAMES_PER_FLUSH, ReadEnd, Writer};
use super::requests::Session;
use crate::broker::{Delivery, Subscriber};
use crate::core::{Core, FLEET_CHANNEL};

/// Close reason sent with 4008.
const SLOW_CONSUMER_REASON: &str = "send queue overflow: read faster and resume";

/// Serves one client WebSocket until it closes or the hub shuts down.
pub(crate) async fn serve(
    core: Arc<Core>,
    socket: WebSocket,
    conn_id: u64,
    shutdown: CancellationToken,
) {
    let (sink, mut stream) = socket.split();
    let mut writer = Writer::new(sink);
    let principal = match handshake(&core, &mut stream, &mut writer).await {
        Some(principal) => principal,
        None => return,
    };
    tracing::debug!(conn_id, client = %principal.name, "client connected");
    let (tx, mut rx) = mpsc::channel(core.config.client_queue_frames);
    let overflow = CancellationToken::new();
    let subscriber = Subscriber {
        tx,
        overflow: overflow.clone(),
    };
    let mut session = Session::new(core.clone(), principal, subscriber);
    session.subscribe_live(FLEET_CHANNEL);
    if send_welcome(&core, &mut writer, &session, conn_id)
        .await
        .is_err()
    {
        return;
    }
    let mut liveness = Liveness::new(core.config.heartbeat_deadline());
    let mut ticker = conn::heartbeat_ticker(core.config.heartbeat_interval());
    let (code, reason) = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break (CloseCode::GOING_AWAY, "hub shutting down"),
            _ = overflow.cancelled() => break (CloseCode::SLOW_CONSUMER, SLOW_CONSUMER_REASON),
            frame = stream.next() => {
                liveness.heard();
                match frame {
                    Some(Ok(Message::Text(text))) => {
                        if session.handle_text(&mut writer, &text).await.is_err() {
                            return;
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        let error = ErrorData::new(ErrorCode::InvalidMessage, "clients may not send binary frames");
                        if writer.send_error(None, error, HubToClient::Error).await.is_err() {
                            return;
                        }
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(Message::Close(_))) | None => return,
                    Some(Err(e)) => match conn::read_error(e) {
                        ReadEnd::TooBig => break (CloseCode::MESSAGE_TOO_BIG, "message exceeds max_message_bytes"),
                        ReadEnd::Gone => return,
                    },
                }
            }
            Some(delivery) = rx.recv() => {
                // A client that stops reading blocks this write; the overflow
                // token is what gets the connection out of it.
                tokio::select! {
                    sent = deliver_batch(&mut session, &mut writer, delivery, &mut rx) => {
                        if sent.is_err() {
                            return;
                        }
                    }
                    _ = overflow.cancelled() => break (CloseCode::SLOW_CONSUMER, SLOW_CONSUMER_REASON),
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
    writer.close(code, reason).await;
}

async fn handshake(
    core: &Core,
    stream: &mut futures_util::stream::SplitStream<WebSocket>,
    writer: &mut Writer,
) -> Option<Principal> {
    let (code, error) =
        match conn::read_hello::<ClientToHub>(stream, core.config.handshake_timeout()).await {
            Ok(Envelope {
                msg: ClientToHub::Hello(hello),
                ..
            }) => match core.authenticate_client(&hello.token).await {
                Ok(principal) => return Some(principal),
                Err(e) => (CloseCode::AUTH_FAILED, e.to_data()),
            },
            Ok(_) => conn::not_hello(),
            Err(rejected) => rejected,
        };
    writer.reject(code, error, HubToClient::Error).await;
    None
}

async fn send_welcome(
    core: &Core,
    writer: &mut Writer,
    session: &Session,
    conn_id: u64,
) -> Result<(), axum::Error> {
    let ack = ConnectionAck {
        protocol: PROTOCOL_VERSION.into(),
        hub_version: env!("CARGO_PKG_VERSION").into(),
        connection_id: format!("c{conn_id}"),
        principal: session.principal().clone(),
        heartbeat_interval_ms: core.config.heartbeat_interval_ms,
        heartbeat_deadline_ms: core.config.heartbeat_deadline_ms,
        limits: core.config.limits(),
    };
    writer
        .send(&Envelope::plain(HubToClient::ConnectionAck(ack)))
        .await?;
    let agents = core.agents().await.unwrap_or_default();
    writer
        .send(&Envelope::plain(HubToClient::AgentList(AgentList {
            agents,
            next_cursor: None,
        })))
        .await
}

/// Writes `first` and whatever else is already queued, then flushes once.
async fn deliver_batch(
    session: &mut Session,
    writer: &mut Writer,
    first: Delivery,
    rx: &mut mpsc::Receiver<Delivery>,
) -> Result<(), axum::Error> {
    session.deliver(writer, first).await?;
    for _ in 1..MAX_FRAMES_PER_FLUSH {
        match rx.try_recv() {
            Ok(delivery) => session.deliver(writer, delivery).await?,
            Err(_) => break,
        }
    }
    writer.flush().await
}
