//! The [`Client`] handle and the [`Event`]s its connection delivers.
//!
//! A `Client` is a cheap, cloneable handle: every clone talks to the same
//! background task (see `task.rs`) through a bounded command channel, and each
//! request waits on its own oneshot for the reply. The task stops when
//! [`Client::close`] is called or when the last clone is dropped.

use std::sync::{Arc, OnceLock};

use muster_proto::messages::ConnectionAck;
use muster_proto::{ClientToHub, Envelope, HubToClient, OutputFrame};
use tokio::sync::{mpsc, oneshot};

use crate::error::ClientError;
use crate::handshake;
use crate::task::{Command, Connection};

/// Capacity of the [`Event`] channel.
///
/// When it is full the connection task waits, which stops it from reading the
/// socket: the hub then sees a slow consumer rather than this process growing
/// without bound. Replies queue behind the unread events, so a caller must keep
/// draining the receiver (or drop it) while it awaits requests. 1024 events
/// hold at most ~10 MiB of output chunks.
pub const EVENT_CHANNEL_CAPACITY: usize = 1024;

/// Capacity of the channel from the handles to the task; senders wait when it
/// is full, which bounds the requests in flight from one burst.
const COMMAND_CHANNEL_CAPACITY: usize = 64;

/// Something the hub sent that is not the reply to a request, or the end of the connection.
#[derive(Clone, Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "messages are the common event; boxing them would only add an allocation"
)]
pub enum Event {
    /// A text message: the initial `agent.list`, subscription events such as
    /// `agent.status`, `run.status`, `run.queue`, `stream.synced`, or an
    /// `error` that answers no request. Heartbeats are handled by the client.
    Message(Envelope<HubToClient>),
    /// A binary `run.output` frame from a subscribed run, payload byte-exact.
    Output(OutputFrame),
    /// The connection ended; always the last event.
    Closed {
        /// The WebSocket close code, when a close frame was exchanged.
        code: Option<u16>,
        /// Why it ended.
        reason: String,
    },
}

/// A connection to a hub, as a client.
#[derive(Clone, Debug)]
pub struct Client {
    shared: Arc<Shared>,
    command_tx: mpsc::Sender<Command>,
}

/// State the handles and the task share.
#[derive(Debug)]
pub(crate) struct Shared {
    /// What the hub acknowledged.
    pub(crate) ack: ConnectionAck,
    /// Set once by the task when the connection ends, so later requests can say why.
    pub(crate) closed: OnceLock<String>,
    /// How this connection was made, for the calls that open connections of
    /// their own to the same hub (such as [`Client::execute`]).
    pub(crate) credentials: Credentials,
}

/// A hub's base URL and the API key used on it. (`Debug` hides the key.)
#[derive(Clone)]
pub(crate) struct Credentials {
    /// The hub's base URL, as given to [`Client::connect`].
    pub(crate) hub_url: String,
    /// The API key.
    pub(crate) token: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("hub_url", &self.hub_url)
            .field("token", &"<redacted>")
            .finish()
    }
}

impl Client {
    /// Connects to the hub at `hub_url` (`http://host:port` or `ws://host:port`)
    /// and authenticates with the API key `token`.
    ///
    /// Returns once the hub has sent `connection.ack`, or fails within about
    /// twice the 10 s handshake timeout: [`ClientError::Connect`] when the hub
    /// cannot be reached, [`ClientError::Auth`] when it rejects the token.
    /// Every later message that is not a reply — starting with the `agent.list`
    /// the hub sends after the ack — arrives on the returned receiver.
    pub async fn connect(
        hub_url: &str,
        token: &str,
    ) -> Result<(Client, mpsc::Receiver<Event>), ClientError> {
        let (socket, ack) = handshake::open(hub_url, token).await?;
        let shared = Arc::new(Shared {
            ack,
            closed: OnceLock::new(),
            credentials: Credentials {
                hub_url: hub_url.to_owned(),
                token: token.to_owned(),
            },
        });
        let (command_tx, command_rx) = mpsc::channel(COMMAND_CHANNEL_CAPACITY);
        let (event_tx, event_rx) = mpsc::channel(EVENT_CHANNEL_CAPACITY);
        let connection = Connection::new(socket, Arc::clone(&shared), command_rx, event_tx);
        tokio::spawn(connection.run());
        Ok((Client { shared, command_tx }, event_rx))
    }

    /// The hub's `connection.ack`: protocol version, limits, heartbeat timing, principal.
    pub fn ack(&self) -> &ConnectionAck {
        &self.shared.ack
    }

    /// The hub URL and API key this connection was made with.
    pub(crate) fn credentials(&self) -> &Credentials {
        &self.shared.credentials
    }

    /// Sends `msg` with a fresh request id and waits for the reply with that id.
    ///
    /// An `error` reply becomes [`ClientError::Hub`]. There is no per-request
    /// timeout: a dead connection is detected by the heartbeat deadline, which
    /// fails every pending request with [`ClientError::Closed`].
    pub async fn request(&self, msg: ClientToHub) -> Result<HubToClient, ClientError> {
        self.enqueue(msg).await?.reply().await
    }

    /// Hands `msg` to the connection as a request and returns where its
    /// reply will arrive, without waiting for it. Requests handed over one
    /// after another go out in that order, so a caller can keep several in
    /// flight (a writer's numbered inputs) and still await each reply.
    pub(crate) async fn enqueue(&self, msg: ClientToHub) -> Result<PendingReply, ClientError> {
        let (reply_tx, reply_rx) = oneshot::channel();
        self.command_tx
            .send(Command::Request {
                msg: Box::new(msg),
                reply_tx,
            })
            .await
            .map_err(|_| self.closed_error())?;
        Ok(PendingReply {
            reply_rx,
            shared: Arc::clone(&self.shared),
        })
    }

    /// Closes the connection with code 1000 and waits (briefly) for the hub to
    /// answer the close. Other clones of this client stop working too.
    pub async fn close(self) {
        let (done_tx, done_rx) = oneshot::channel();
        if self
            .command_tx
            .send(Command::Close { done_tx })
            .await
            .is_ok()
        {
            let _ = done_rx.await;
        }
    }

    fn closed_error(&self) -> ClientError {
        closed_error(&self.shared)
    }
}

/// The reply to a request handed over with [`Client::enqueue`]. It does not
/// keep the connection open: only [`Client`] handles do.
pub(crate) struct PendingReply {
    reply_rx: oneshot::Receiver<Result<HubToClient, ClientError>>,
    shared: Arc<Shared>,
}

impl PendingReply {
    /// Waits for the reply; an `error` reply is [`ClientError::Hub`].
    pub(crate) async fn reply(self) -> Result<HubToClient, ClientError> {
        match self.reply_rx.await {
            Ok(reply) => reply,
            Err(_) => Err(closed_error(&self.shared)),
        }
    }
}

/// Why requests on a closed connection fail.
fn closed_error(shared: &Shared) -> ClientError {
    let reason = shared.closed.get().map(String::as_str);
    ClientError::Closed(reason.unwrap_or("the connection is closed").to_owned())
}
