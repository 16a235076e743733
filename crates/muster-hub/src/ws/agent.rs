//! One agent connection: handshake, presence, then one `select!` over frames
//! from the agent, control messages from its inbox, heartbeats and shutdown.

use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket};
use bytes::Bytes;
use futures_util::StreamExt as _;
use futures_util::stream::SplitStream;
use muster_proto::messages::{AgentHello, ConnectionAck, ErrorData, Heartbeat, Principal};
use muster_proto::{
    AgentName, AgentToHub, CloseCode, Envelope, ErrorCode, HubToAgent, OutputFrame,
    PROTOCOL_VERSION,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::conn::{self, Liveness, MAX_FRAMES_PER_FLUSH, ReadEnd, Writer};
use super::ingest::Ingest;
use crate::broker::Subscriber;
use crate::core::{ConnControl, Core, agent_inbox};
use crate::store::AgentRecord;

/// Control messages queued for one agent. They are small and rare; overflowing
/// this means the agent stopped reading, and it is dropped as a slow consumer.
const AGENT_INBOX_FRAMES: usize = 1024;

/// Serves one agent WebSocket until it closes or the hub shuts down.
pub(crate) async fn serve(
    core: Arc<Core>,
    socket: WebSocket,
    conn_id: u64,
    shutdown: CancellationToken,
) {
    let (sink, mut stream) = socket.split();
    let mut writer = Writer::new(sink);
    let Some((record, hello)) = handshake(&core, &mut stream, &mut writer).await else {
        return;
    };
    let name = record.name.clone();
    let control = ConnControl::default();
    let (tx, rx) = mpsc::channel(AGENT_INBOX_FRAMES);
    let overflow = CancellationToken::new();
    let _inbox = core.broker.subscribe(
        &agent_inbox(&name),
        Subscriber {
            tx,
            overflow: overflow.clone(),
        },
    );
    match core
        .agent_connected(&record, &hello, conn_id, control.clone())
        .await
    {
        Ok(_) => tracing::info!(agent = %name, conn_id, "agent connected"),
        Err(e) => {
            tracing::error!(agent = %name, error = %format!("{e:#}"), "registering agent failed");
            writer.close(CloseCode::GOING_AWAY, "internal error").await;
            return;
        }
    }
    let mut conn = AgentConn {
        core: core.clone(),
        name: name.clone(),
        writer,
        ingest: Ingest::start(core.clone(), name.clone()),
    };
    let end = conn
        .run(&mut stream, rx, &control, &overflow, &shutdown, conn_id)
        .await;
    if let Some((code, reason)) = end {
        tracing::info!(agent = %name, code, reason = %reason, "closing agent connection");
        conn.writer.close(code, &reason).await;
    } else {
        tracing::info!(agent = %name, "agent disconnected");
    }
    // Keep what the agent sent before it went away, then let go of its runs.
    conn.ingest.barrier().await;
    core.agent_disconnected(&name, conn_id).await;
}

async fn handshake(
    core: &Core,
    stream: &mut SplitStream<WebSocket>,
    writer: &mut Writer,
) -> Option<(AgentRecord, AgentHello)> {
    let (code, error) =
        match conn::read_hello::<AgentToHub>(stream, core.config.handshake_timeout()).await {
            Ok(Envelope {
                msg: AgentToHub::Hello(hello),
                ..
            }) => match core.authenticate_agent(&hello).await {
                Ok(record) => return Some((record, hello)),
                Err(e) => (CloseCode::AUTH_FAILED, e.to_data()),
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

struct AgentConn {
    core: Arc<Core>,
    name: AgentName,
    writer: Writer,
    ingest: Ingest,
}

impl AgentConn {
    /// The connection loop. Returns the close code to send, or `None` if the socket is gone.
    async fn run(
        &mut self,
        stream: &mut SplitStream<WebSocket>,
        mut rx: mpsc::Receiver<crate::broker::Delivery>,
        control: &ConnControl,
        overflow: &CancellationToken,
        shutdown: &CancellationToken,
        conn_id: u64,
    ) -> Option<(u16, String)> {
        self.send(HubToAgent::ConnectionAck(self.ack(conn_id)))
            .await
            .ok()?;
        self.core.dispatch_agent(&self.name).await;
        let mut liveness = Liveness::new(self.core.config.heartbeat_deadline());
        let mut ticker = conn::heartbeat_ticker(self.core.config.heartbeat_interval());
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Some((CloseCode::GOING_AWAY, "hub shutting down".into())),
                _ = overflow.cancelled() => return Some((CloseCode::SLOW_CONSUMER, "control queue overflow".into())),
                (code, reason) = control.closed() => return Some((code, reason)),
                frame = stream.next() => {
                    liveness.heard();
                    self.core.agent_seen(&self.name).await;
                    match frame {
                        Some(Ok(Message::Text(text))) => self.on_text(&text).await.ok()?,
                        Some(Ok(Message::Binary(bytes))) => self.on_binary(bytes).await.ok()?,
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                        Some(Ok(Message::Close(_))) | None => return None,
                        Some(Err(e)) => match conn::read_error(e) {
                            ReadEnd::TooBig => return Some((CloseCode::MESSAGE_TOO_BIG, "message exceeds max_message_bytes".into())),
                            ReadEnd::Gone => return None,
                        },
                    }
                }
                Some(delivery) = rx.recv() => {
                    self.writer.feed(delivery.frame).await.ok()?;
                    for _ in 1..MAX_FRAMES_PER_FLUSH {
                        let Ok(more) = rx.try_recv() else { break };
                        self.writer.feed(more.frame).await.ok()?;
                    }
                    self.writer.flush().await.ok()?;
                }
                _ = ticker.tick() => {
                    if liveness.expired() {
                        return Some((CloseCode::HEARTBEAT_TIMEOUT, "no heartbeat within the deadline".into()));
                    }
                    self.send(HubToAgent::Heartbeat(Heartbeat { seq: liveness.next_seq() })).await.ok()?;
                }
            }
        }
    }

    fn ack(&self, conn_id: u64) -> ConnectionAck {
        let config = &self.core.config;
        ConnectionAck {
            protocol: PROTOCOL_VERSION.into(),
            hub_version: env!("CARGO_PKG_VERSION").into(),
            connection_id: format!("a{conn_id}"),
            principal: Principal {
                kind: "agent".into(),
                name: self.name.to_string(),
                role: None,
            },
            heartbeat_interval_ms: config.heartbeat_interval_ms,
            heartbeat_deadline_ms: config.heartbeat_deadline_ms,
            limits: config.limits(),
        }
    }

    async fn send(&mut self, msg: HubToAgent) -> Result<(), axum::Error> {
        self.writer.send(&Envelope::plain(msg)).await
    }

    async fn on_text(&mut self, text: &str) -> Result<(), axum::Error> {
        let env = match Envelope::<AgentToHub>::decode(text) {
            Ok(env) => env,
            Err(e) => {
                tracing::warn!(agent = %self.name, error = %e, "invalid message from agent");
                let error = ErrorData::new(e.code(), e.to_string());
                return self
                    .writer
                    .send_error(e.request_id(), error, HubToAgent::Error)
                    .await;
            }
        };
        match env.msg {
            AgentToHub::Heartbeat(beat) => return self.send(HubToAgent::HeartbeatAck(beat)).await,
            AgentToHub::HeartbeatAck(_) => {}
            AgentToHub::RunStarted(started) => self.core.run_started(&self.name, started).await,
            AgentToHub::Event(event) => {
                if let Err(e) = self.core.agent_event(&self.name, event).await {
                    return self
                        .writer
                        .send_error(None, e.to_data(), HubToAgent::Error)
                        .await;
                }
            }
            AgentToHub::Metrics(sample) => {
                if let Err(e) = self.core.agent_metrics(&self.name, sample).await {
                    return self
                        .writer
                        .send_error(None, e.to_data(), HubToAgent::Error)
                        .await;
                }
            }
            AgentToHub::RunExited(exited) => {
                self.ingest.barrier().await;
                self.core.run_exited(&self.name, exited).await;
            }
            AgentToHub::Error(error) => {
                tracing::warn!(agent = %self.name, code = %error.code, message = %error.message, "agent reported an error")
            }
            AgentToHub::Hello(_) => {
                let error = ErrorData::new(ErrorCode::InvalidMessage, "already authenticated");
                return self
                    .writer
                    .send_error(env.id, error, HubToAgent::Error)
                    .await;
            }
        }
        Ok(())
    }

    async fn on_binary(&mut self, bytes: Bytes) -> Result<(), axum::Error> {
        match OutputFrame::decode(bytes.clone()) {
            Ok(frame) => {
                self.ingest.push(bytes, frame).await;
                Ok(())
            }
            Err(e) => {
                tracing::warn!(agent = %self.name, error = %e, "invalid output frame from agent");
                let error = ErrorData::new(ErrorCode::InvalidMessage, e.to_string());
                self.writer.send_error(None, error, HubToAgent::Error).await
            }
        }
    }
}
