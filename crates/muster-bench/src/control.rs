//! The control connection of the fleet scenarios: a raw client connection
//! with many requests in flight, replies matched by id.
//!
//! The library client accepts no message above the protocol's 1 MiB, but a
//! hub that does not page lists answers `agent.list` or `job.get` over a
//! 15,000-agent fleet with several MiB; this connection takes them. One task
//! reads (replies go to their waiter, heartbeats are answered, events go to
//! the optional event receiver or are dropped), one task writes (coalescing
//! what is queued into one flush). Requests have no timeout of their own: the
//! scenario that sends them is bounded as a whole.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, anyhow};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use muster_proto::messages::{ChannelRef, ErrorData};
use muster_proto::{CLIENT_WS_PATH, ClientToHub, Envelope, HubToClient};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

use crate::net::{Buffers, HubAddr, Socket, dial};
use crate::raw::{ACK_TIMEOUT, await_type, closed_by_hub};
use crate::wire::{self, Head};

/// Messages queued for the writer; senders wait when it is full.
const OUTGOING_CAPACITY: usize = 1024;

/// Events queued for the scenario; the reader waits when it is full (and the
/// hub then sees a slow consumer).
const EVENT_CAPACITY: usize = 16 * 1024;

/// Why a request failed.
#[derive(Debug)]
pub(crate) enum RequestError {
    /// The hub answered with an `error`.
    Hub(ErrorData),
    /// The connection ended first.
    Closed(String),
    /// The reply could not be decoded.
    Invalid(String),
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Hub(error) => write!(f, "{}: {}", error.code, error.message),
            Self::Closed(why) => write!(f, "the control connection closed: {why}"),
            Self::Invalid(why) => write!(f, "invalid reply: {why}"),
        }
    }
}

impl std::error::Error for RequestError {}

type Reply = Result<HubToClient, RequestError>;

/// What the reader and the handles share.
#[derive(Default)]
struct Shared {
    /// A std `Mutex`: held for one map operation, never across an `.await`.
    pending: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    closed: Mutex<Option<String>>,
}

/// A control connection; cheap to share by reference across tasks.
pub(crate) struct Control {
    outgoing: mpsc::Sender<Message>,
    shared: Arc<Shared>,
    next_id: AtomicU64,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl Control {
    /// Connects, authenticates and leaves the `fleet` channel (thousands of
    /// agent statuses nobody here needs). With `events`, every other message
    /// that is not a reply (events of channels subscribed later) arrives on
    /// the returned receiver; without, such messages are dropped.
    pub(crate) async fn connect(
        hub: &HubAddr,
        token: &str,
        events: bool,
    ) -> anyhow::Result<(Self, Option<mpsc::Receiver<Envelope<HubToClient>>>)> {
        let mut socket = dial(hub, CLIENT_WS_PATH, None, Buffers::Busy)
            .await
            .context("connecting the control client")?;
        socket.send(wire::client_hello(token)).await?;
        timeout(
            ACK_TIMEOUT,
            await_type(&mut socket, "connection.ack", false),
        )
        .await
        .map_err(|_| anyhow!("no connection.ack within {ACK_TIMEOUT:?}"))?
        .context("authenticating the control client")?;
        let (sink, stream) = socket.split();
        let (outgoing, outgoing_rx) = mpsc::channel(OUTGOING_CAPACITY);
        let (event_tx, event_rx) = match events {
            true => {
                let (tx, rx) = mpsc::channel(EVENT_CAPACITY);
                (Some(tx), Some(rx))
            }
            false => (None, None),
        };
        let shared = Arc::new(Shared::default());
        let reader = tokio::spawn(read(stream, shared.clone(), outgoing.clone(), event_tx));
        let writer = tokio::spawn(write(sink, outgoing_rx));
        let control = Self {
            outgoing,
            shared,
            next_id: AtomicU64::new(1),
            reader,
            writer,
        };
        let leave = ClientToHub::Unsubscribe(ChannelRef {
            channel: "fleet".to_owned(),
        });
        control
            .request(leave)
            .await
            .context("leaving the fleet channel")?;
        Ok((control, event_rx))
    }

    /// Sends `msg` and waits for its reply; an `error` reply is an error.
    pub(crate) async fn request(&self, msg: ClientToHub) -> Reply {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply_tx, reply_rx) = oneshot::channel();
        self.shared
            .pending
            .lock()
            .expect("pending lock poisoned")
            .insert(id, reply_tx);
        if self.outgoing.send(wire::request(id, msg)).await.is_err() {
            self.shared
                .pending
                .lock()
                .expect("pending lock poisoned")
                .remove(&id);
            return Err(self.closed());
        }
        reply_rx.await.map_err(|_| self.closed())?
    }

    fn closed(&self) -> RequestError {
        let why = self
            .shared
            .closed
            .lock()
            .expect("closed lock poisoned")
            .clone();
        RequestError::Closed(why.unwrap_or_else(|| "the connection ended".to_owned()))
    }

    /// Closes the connection (a reset; the hub needs nothing more).
    pub(crate) fn close(self) {
        self.reader.abort();
        self.writer.abort();
    }
}

async fn write(mut sink: SplitSink<Socket, Message>, mut outgoing: mpsc::Receiver<Message>) {
    while let Some(message) = outgoing.recv().await {
        if sink.feed(message).await.is_err() {
            return;
        }
        while let Ok(message) = outgoing.try_recv() {
            if sink.feed(message).await.is_err() {
                return;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
}

async fn read(
    mut stream: SplitStream<Socket>,
    shared: Arc<Shared>,
    outgoing: mpsc::Sender<Message>,
    events: Option<mpsc::Sender<Envelope<HubToClient>>>,
) {
    let why = loop {
        let text = match stream.next().await {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => break closed_by_hub(frame.as_ref()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => break format!("connection failed: {e}"),
            None => break "connection ended".to_owned(),
        };
        let Some(head) = Head::of(text.as_str()) else {
            continue;
        };
        if head.kind == "heartbeat" {
            if let Some(ack) = wire::heartbeat_ack(text.as_str(), false) {
                let _ = outgoing.send(ack).await;
            }
            continue;
        }
        let waiter = head
            .re
            .and_then(|re| re.parse::<u64>().ok())
            .and_then(|id| {
                shared
                    .pending
                    .lock()
                    .expect("pending lock poisoned")
                    .remove(&id)
            });
        match (waiter, &events) {
            (Some(waiter), _) => {
                let reply = match Envelope::<HubToClient>::decode(text.as_str()) {
                    Ok(envelope) => match envelope.msg {
                        HubToClient::Error(error) => Err(RequestError::Hub(error)),
                        msg => Ok(msg),
                    },
                    Err(e) => Err(RequestError::Invalid(e.to_string())),
                };
                let _ = waiter.send(reply);
            }
            (None, Some(events)) => match Envelope::<HubToClient>::decode(text.as_str()) {
                Ok(envelope) => {
                    if events.send(envelope).await.is_err() {
                        tracing::debug!("nobody reads the control events any more");
                    }
                }
                Err(e) => tracing::warn!("cannot decode a hub message: {e}"),
            },
            (None, None) => {}
        }
    };
    *shared.closed.lock().expect("closed lock poisoned") = Some(why);
    // Dropping the waiters fails every request still pending.
    shared
        .pending
        .lock()
        .expect("pending lock poisoned")
        .clear();
}
