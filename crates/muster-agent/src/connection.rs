//! One live connection to the hub, after its handshake.
//!
//! A single task runs one `select!` over inbound frames, the spool, the
//! heartbeat tick, the metrics feed, the event queue, the sessions' answers,
//! the heartbeat deadline and shutdown, and
//! hands each message kind to a small method. The connection reads the spool
//! through its own cursor from the start, so everything unacknowledged is sent
//! again, in order, before anything new. On shutdown it keeps serving while the
//! cancelled runs report, the hub acknowledges and queued events are sent, for
//! at most the stop grace. This module is
//! also the one place where close codes and hub errors are mapped to how a
//! connection [`Ended`].

use std::time::Duration;

use anyhow::anyhow;
use futures_util::{SinkExt, StreamExt};
use muster_proto::messages::{
    AgentEvent, ConnectionAck, CredentialStored, ErrorData, Heartbeat, MetricsSample,
};
use muster_proto::{AgentToHub, CloseCode, Envelope, ErrorCode, HubToAgent, OutputFrame};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior, interval_at, sleep_until, timeout};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;

use crate::credential::Credential;
use crate::handshake::Ws;
use crate::metrics::Feed;
use crate::runs::Runs;
use crate::sink::Outgoing;
use crate::spool::{Cursor, Spool};

/// Shortest heartbeat interval honoured, whatever the hub announces.
const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(10);

/// How long a closing handshake may take before the socket is just dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Most spooled messages sent in one write: what the spool holds ready goes
/// out together, so a busy agent makes one system call for many reports.
const MAX_MESSAGES_PER_WRITE: usize = 64;
/// Bytes after which no further spooled message joins the write.
const MAX_BYTES_PER_WRITE: usize = 256 * 1024;

/// Why a connection (or an attempt at one) ended.
#[derive(Debug)]
pub(crate) enum Ended {
    /// `shutdown` was cancelled and the runs have reported (or their grace
    /// ran out); the socket is still open for the closing handshake.
    Shutdown,
    /// The connection failed or dropped; try again after a backoff delay.
    Lost(anyhow::Error),
    /// The hub refused this agent for good (bad or revoked token, refused
    /// enrollment).
    Rejected(anyhow::Error),
    /// The agent enrolled and stored its own credential: connect again at once.
    Enrolled,
}

impl Ended {
    pub(crate) fn lost(reason: &'static str) -> Self {
        Self::Lost(anyhow!(reason))
    }
}

/// When and how the agent stops.
#[derive(Clone, Debug)]
pub(crate) struct Stop {
    /// Cancelled when the agent must stop.
    pub(crate) shutdown: CancellationToken,
    /// How long cancelled runs get to report, and the hub to acknowledge.
    pub(crate) grace: Duration,
}

/// What a connection sends from, besides its own replies.
pub(crate) struct Queues<'a> {
    /// Where a rotated token goes.
    pub(crate) credential: &'a mut Credential,
    /// The runs, whose spool is sent in order from the start.
    pub(crate) runs: &'a mut Runs,
    /// Host samples, sent as they come (if sampling is on).
    pub(crate) metrics_feed: Option<Feed>,
    /// Events programs published, sent as they come.
    pub(crate) event_rx: &'a mut mpsc::Receiver<AgentEvent>,
    /// Sessions' answers (`session.input.ack`, `session.screen`), sent as they come.
    pub(crate) replies_rx: &'a mut mpsc::Receiver<AgentToHub>,
}

/// Serves a connection whose handshake `ack` completed, until it ends.
pub(crate) async fn serve(
    ws: &mut Ws,
    ack: &ConnectionAck,
    queues: Queues<'_>,
    stop: &Stop,
) -> Ended {
    let Queues {
        credential,
        runs,
        mut metrics_feed,
        event_rx,
        replies_rx,
    } = queues;
    let interval = Duration::from_millis(ack.heartbeat_interval_ms).max(MIN_HEARTBEAT_INTERVAL);
    let deadline = Duration::from_millis(ack.heartbeat_deadline_ms).max(interval);
    let mut ticker = interval_at(Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let spool = runs.spool().clone();
    let mut cursor = Cursor::default();
    let mut conn = Connection {
        ws,
        credential,
        runs,
        deadline,
        last_heard: Instant::now(),
        heartbeat_seq: 0,
        stop_by: None,
    };
    loop {
        if conn.stopped(&spool) && event_rx.is_empty() {
            return Ended::Shutdown;
        }
        let stop_by = conn.stop_by.unwrap_or_else(Instant::now);
        let step = tokio::select! {
            () = stop.shutdown.cancelled(), if conn.stop_by.is_none() => conn.begin_stop(stop.grace),
            () = sleep_until(stop_by), if conn.stop_by.is_some() => return conn.stop_expired(stop.grace),
            Some(()) = conn.runs.join_next(), if conn.stop_by.is_some() => Ok(()),
            frame = conn.ws.next() => conn.on_frame(frame).await,
            outgoing = spool.next(&mut cursor) => conn.send_spooled(outgoing, &spool, &mut cursor).await,
            _ = ticker.tick() => conn.send_heartbeat().await,
            sample = Feed::next(metrics_feed.as_mut()) => conn.send_metrics(sample).await,
            Some(event) = event_rx.recv() => conn.send_text(Envelope::plain(AgentToHub::Event(event))).await,
            Some(reply) = replies_rx.recv() => conn.send_text(Envelope::plain(reply)).await,
            () = sleep_until(conn.last_heard + deadline) => conn.on_silence().await,
        };
        if let Err(ended) = step {
            return ended;
        }
    }
}

/// The state of one served connection.
struct Connection<'a> {
    ws: &'a mut Ws,
    credential: &'a mut Credential,
    runs: &'a mut Runs,
    /// Silence after which the hub is presumed gone; also bounds each send.
    deadline: Duration,
    last_heard: Instant,
    heartbeat_seq: u64,
    /// Set once shutdown began: when the runs' grace to report runs out.
    stop_by: Option<Instant>,
}

impl Connection<'_> {
    async fn on_frame(
        &mut self,
        frame: Option<Result<Message, tungstenite::Error>>,
    ) -> Result<(), Ended> {
        let message = match frame {
            None => return Err(Ended::lost("the hub hung up")),
            Some(Err(e)) => {
                return Err(Ended::Lost(
                    anyhow::Error::new(e).context("reading from the hub"),
                ));
            }
            Some(Ok(message)) => message,
        };
        self.last_heard = Instant::now();
        match message {
            Message::Text(text) => self.on_text(&text).await,
            Message::Close(frame) => Err(closed(frame)),
            Message::Binary(_) => {
                tracing::warn!("ignoring a binary frame from the hub");
                Ok(())
            }
            // tungstenite answers pings itself.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Ok(()),
        }
    }

    async fn on_text(&mut self, text: &str) -> Result<(), Ended> {
        match Envelope::<HubToAgent>::decode(text) {
            Ok(envelope) => self.on_message(envelope).await,
            Err(e) => {
                tracing::warn!("cannot handle a message from the hub: {e}");
                let error = AgentToHub::Error(ErrorData::new(e.code(), e.to_string()));
                self.send_text(Envelope::reply(e.request_id(), error)).await
            }
        }
    }

    async fn on_message(&mut self, envelope: Envelope<HubToAgent>) -> Result<(), Ended> {
        match envelope.msg {
            HubToAgent::Heartbeat(heartbeat) => {
                let ack = AgentToHub::HeartbeatAck(heartbeat);
                self.send_text(Envelope::reply(envelope.id, ack)).await
            }
            HubToAgent::HeartbeatAck(_) | HubToAgent::ConnectionAck(_) => Ok(()),
            HubToAgent::RunStart(start) if self.stop_by.is_some() => {
                tracing::debug!(run = %start.run, "ignoring run.start while stopping");
                Ok(())
            }
            HubToAgent::RunStart(start) => {
                tracing::debug!(run = %start.run, "starting run");
                self.runs.start(start);
                Ok(())
            }
            HubToAgent::RunAck(ack) => {
                self.runs.acked(&ack);
                Ok(())
            }
            HubToAgent::SessionInput(deliver) => {
                self.runs.session_input(deliver);
                Ok(())
            }
            HubToAgent::SessionResize(resize) => {
                self.runs.session_resize(&resize);
                Ok(())
            }
            HubToAgent::SessionSnapshot(snapshot) => {
                self.runs.session_snapshot(&snapshot);
                Ok(())
            }
            HubToAgent::RunCancel(run) => {
                if !self.runs.cancel(run.run) {
                    tracing::debug!(run = %run.run, "run.cancel for a run not in flight");
                }
                Ok(())
            }
            HubToAgent::CredentialRotate(rotate) => {
                let stored = match self.credential.store(rotate.token) {
                    Ok(()) => {
                        tracing::info!("the hub rotated this agent's token; the new one is stored");
                        CredentialStored {
                            stored: true,
                            reason: None,
                        }
                    }
                    Err(reason) => {
                        tracing::warn!("cannot keep the token the hub rotated: {reason}");
                        CredentialStored {
                            stored: false,
                            reason: Some(reason),
                        }
                    }
                };
                let answer = AgentToHub::CredentialStored(stored);
                self.send_text(Envelope::reply(envelope.id, answer)).await
            }
            HubToAgent::Enrolled(_) => {
                tracing::warn!("ignoring an enrolled message outside an enrollment");
                Ok(())
            }
            HubToAgent::Error(error) => match rejection(&error) {
                Some(ended) => Err(ended),
                None => {
                    tracing::warn!("hub reported {}: {}", error.code, error.message);
                    Ok(())
                }
            },
        }
    }

    /// Cancels every run; the connection stays up while they report.
    fn begin_stop(&mut self, grace: Duration) -> Result<(), Ended> {
        tracing::info!("stopping: cancelling runs and delivering their reports");
        self.runs.cancel_all();
        self.stop_by = Some(Instant::now() + grace);
        Ok(())
    }

    /// Whether the agent is stopping and has nothing left to deliver.
    fn stopped(&self, spool: &Spool) -> bool {
        self.stop_by.is_some() && self.runs.is_idle() && spool.is_empty()
    }

    fn stop_expired(&self, grace: Duration) -> Ended {
        tracing::warn!("runs did not stop and report within {grace:?}; giving up on them");
        Ended::Shutdown
    }

    async fn send_heartbeat(&mut self) -> Result<(), Ended> {
        let heartbeat = AgentToHub::Heartbeat(Heartbeat {
            seq: self.heartbeat_seq,
        });
        self.heartbeat_seq += 1;
        self.send_text(Envelope::plain(heartbeat)).await
    }

    /// Sends a host sample; it is not spooled, so one lost with the
    /// connection is gone (the next sample supersedes it anyway).
    async fn send_metrics(&mut self, sample: MetricsSample) -> Result<(), Ended> {
        self.send_text(Envelope::plain(AgentToHub::Metrics(sample)))
            .await
    }

    async fn on_silence(&mut self) -> Result<(), Ended> {
        let reason = format!("heard nothing from the hub for {:?}", self.deadline);
        close(self.ws, CloseCode::HEARTBEAT_TIMEOUT, "heartbeat timeout").await;
        Err(Ended::Lost(anyhow!(reason)))
    }

    async fn send_text(&mut self, envelope: Envelope<AgentToHub>) -> Result<(), Ended> {
        self.send(Message::text(envelope.encode())).await
    }

    async fn send(&mut self, message: Message) -> Result<(), Ended> {
        send(self.ws, message, self.deadline).await
    }

    /// Sends `first` and what else the spool holds ready behind it, within
    /// bounds, as one write.
    async fn send_spooled(
        &mut self,
        first: Outgoing,
        spool: &Spool,
        cursor: &mut Cursor,
    ) -> Result<(), Ended> {
        let mut messages = vec![encode(first)];
        let mut bytes = messages[0].len();
        while messages.len() < MAX_MESSAGES_PER_WRITE && bytes < MAX_BYTES_PER_WRITE {
            let Some(next) = spool.try_next(cursor) else {
                break;
            };
            let message = encode(next);
            bytes += message.len();
            messages.push(message);
        }
        send_all(self.ws, messages, self.deadline).await
    }
}

/// The WebSocket message for something a run produced.
fn encode(outgoing: Outgoing) -> Message {
    let text = |msg| Message::text(Envelope::plain(msg).encode());
    match outgoing {
        Outgoing::Started(started) => text(AgentToHub::RunStarted(started)),
        Outgoing::Output(frame) => {
            Message::Binary(OutputFrame::encode(&frame.header, &frame.payload))
        }
        Outgoing::Exited(exited) => text(AgentToHub::RunExited(exited)),
    }
}

/// Sends one message, giving up after `limit` so a stuck socket cannot stall the agent.
pub(crate) async fn send(ws: &mut Ws, message: Message, limit: Duration) -> Result<(), Ended> {
    send_all(ws, vec![message], limit).await
}

/// Sends `messages` in order with one flush at the end, giving up after `limit`.
async fn send_all(ws: &mut Ws, messages: Vec<Message>, limit: Duration) -> Result<(), Ended> {
    let sending = async {
        for message in messages {
            ws.feed(message).await?;
        }
        ws.flush().await
    };
    match timeout(limit, sending).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Ended::Lost(
            anyhow::Error::new(e).context("sending to the hub"),
        )),
        Err(_) => Err(Ended::Lost(anyhow!(
            "sending to the hub took longer than {limit:?}"
        ))),
    }
}

/// Closes the socket with `code`, waiting a bounded time for the hub's reply.
pub(crate) async fn close(ws: &mut Ws, code: u16, reason: &'static str) {
    let frame = CloseFrame {
        code: code.into(),
        reason: reason.into(),
    };
    let closing = async {
        if ws.close(Some(frame)).await.is_ok() {
            // The hub's close frame completes the handshake; its TCP close may lag.
            while let Some(Ok(message)) = ws.next().await {
                if let Message::Close(_) = message {
                    break;
                }
            }
        }
    };
    let _ = timeout(CLOSE_TIMEOUT, closing).await;
}

/// How a close frame from the hub ends the connection.
pub(crate) fn closed(frame: Option<CloseFrame>) -> Ended {
    let Some(frame) = frame else {
        return Ended::lost("the hub closed the connection");
    };
    let code = u16::from(frame.code);
    let reason = if frame.reason.is_empty() {
        format!("close code {code}")
    } else {
        format!("{} (close code {code})", frame.reason.as_str())
    };
    match code {
        CloseCode::AUTH_FAILED => {
            Ended::Rejected(anyhow!("hub rejected the agent token: {reason}"))
        }
        CloseCode::REVOKED => Ended::Rejected(anyhow!("hub revoked the agent token: {reason}")),
        _ => Ended::Lost(anyhow!("the hub closed the connection: {reason}")),
    }
}

/// The fatal ending an `error` from the hub means, if it means one.
pub(crate) fn rejection(error: &ErrorData) -> Option<Ended> {
    (error.code == ErrorCode::AuthFailed)
        .then(|| Ended::Rejected(anyhow!("hub rejected the agent token: {}", error.message)))
}
