//! What agent and client connections share: the writer half, the handshake
//! read, liveness tracking and the mapping of read errors to close codes.

use std::time::Duration;

use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, Utf8Bytes};

use super::upgrade::Socket;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt as _, StreamExt as _};
use muster_proto::messages::{ErrorData, Message as ProtoMessage};
use muster_proto::{CloseCode, DecodeError, Envelope, ErrorCode, RequestId};
use tokio::time::Instant;

use crate::broker::Frame;
use crate::delivery::{FrameSink, SinkClosed};

/// The longest close reason: a control frame carries at most 125 bytes, two
/// of them the code.
const MAX_CLOSE_REASON: usize = 123;

/// `reason` cut to fit a close frame, at a character boundary.
fn close_reason(reason: &str) -> &str {
    let mut end = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

/// How long a close frame may wait for room in the socket.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Deliveries written before one flush, so a burst becomes few syscalls.
pub(crate) const MAX_FRAMES_PER_FLUSH: usize = 64;

/// The sending half of a connection.
pub(crate) struct Writer {
    sink: SplitSink<Socket, Message>,
    /// How long one write may wait for the peer to take bytes.
    stall: Duration,
    /// A write waited longer than `stall`: the peer stopped reading.
    stalled: bool,
}

/// The receiving half failed or ended.
pub(crate) enum ReadEnd {
    /// The peer closed or the socket broke.
    Gone,
    /// The peer sent a message over the size limit.
    TooBig,
}

impl Writer {
    /// A writer whose writes fail once the peer has taken no bytes for
    /// `stall` (a peer that stopped reading, or a dead link): the connection
    /// then ends without a close frame, which could not reach the peer.
    pub(crate) fn new(sink: SplitSink<Socket, Message>, stall: Duration) -> Self {
        Self {
            sink,
            stall,
            stalled: false,
        }
    }

    /// Runs one write against the stall deadline.
    async fn write(
        stall: Duration,
        stalled: &mut bool,
        io: impl Future<Output = Result<(), tungstenite::Error>>,
    ) -> Result<(), tungstenite::Error> {
        match tokio::time::timeout(stall, io).await {
            Ok(done) => done,
            Err(_) => {
                tracing::info!(
                    ?stall,
                    "the peer took no bytes within the deadline; dropping it"
                );
                *stalled = true;
                Err(tungstenite::Error::Io(std::io::ErrorKind::TimedOut.into()))
            }
        }
    }

    /// Sends one envelope and flushes.
    pub(crate) async fn send<M: ProtoMessage>(
        &mut self,
        env: &Envelope<M>,
    ) -> Result<(), tungstenite::Error> {
        let message = Message::Text(env.encode().into());
        Self::write(self.stall, &mut self.stalled, self.sink.send(message)).await
    }

    /// Sends an `error` reply.
    pub(crate) async fn send_error<M: ProtoMessage>(
        &mut self,
        re: Option<RequestId>,
        error: ErrorData,
        wrap: fn(ErrorData) -> M,
    ) -> Result<(), tungstenite::Error> {
        self.send(&Envelope::reply(re, wrap(error))).await
    }

    /// Refuses a handshake: the `error`, then the close, unless the peer
    /// already left (`NORMAL`).
    pub(crate) async fn reject<M: ProtoMessage>(
        &mut self,
        code: u16,
        error: ErrorData,
        wrap: fn(ErrorData) -> M,
    ) {
        if code == CloseCode::NORMAL {
            return;
        }
        let message = error.message.clone();
        let _ = self.send_error(None, error, wrap).await;
        self.close(code, &message).await;
    }

    /// Queues a frame without flushing.
    pub(crate) async fn feed(&mut self, frame: Frame) -> Result<(), tungstenite::Error> {
        let message = to_message(frame);
        Self::write(self.stall, &mut self.stalled, self.sink.feed(message)).await
    }

    /// Queues an encoded text message without flushing.
    pub(crate) async fn feed_text(&mut self, text: String) -> Result<(), tungstenite::Error> {
        let message = Message::Text(text.into());
        Self::write(self.stall, &mut self.stalled, self.sink.feed(message)).await
    }

    /// Flushes queued frames.
    pub(crate) async fn flush(&mut self) -> Result<(), tungstenite::Error> {
        Self::write(self.stall, &mut self.stalled, self.sink.flush()).await
    }

    /// Sends a close frame; errors are moot at this point. A peer that is not
    /// reading (a slow consumer) gets [`CLOSE_TIMEOUT`] to take it, behind the
    /// data already queued, before the socket is dropped without it.
    pub(crate) async fn close(&mut self, code: u16, reason: &str) {
        if self.stalled {
            return;
        }
        let frame = CloseFrame {
            code: code.into(),
            reason: Utf8Bytes::from(close_reason(reason)),
        };
        let close = self.sink.send(Message::Close(Some(frame)));
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, close).await;
    }
}

#[async_trait::async_trait]
impl FrameSink for Writer {
    async fn feed(&mut self, frame: Frame) -> Result<(), SinkClosed> {
        Writer::feed(self, frame).await.map_err(|_| SinkClosed)
    }

    async fn flush(&mut self) -> Result<(), SinkClosed> {
        Writer::flush(self).await.map_err(|_| SinkClosed)
    }
}

/// Converts a broker frame to a WebSocket message without copying.
pub(crate) fn to_message(frame: Frame) -> Message {
    match frame {
        Frame::Text(bytes) => match Utf8Bytes::try_from(bytes) {
            Ok(text) => Message::Text(text),
            Err(_) => Message::Text(Utf8Bytes::from_static("{}")),
        },
        Frame::Binary(bytes) => Message::Binary(bytes),
    }
}

/// Maps a read error to how the connection ends.
pub(crate) fn read_error(err: tungstenite::Error) -> ReadEnd {
    match err {
        tungstenite::Error::Capacity(_) => ReadEnd::TooBig,
        _ => ReadEnd::Gone,
    }
}

/// Waits for the first text message and decodes it, or explains why not.
pub(crate) async fn read_hello<M: ProtoMessage>(
    stream: &mut SplitStream<Socket>,
    timeout: Duration,
) -> Result<Envelope<M>, (u16, ErrorData)> {
    let first = tokio::time::timeout(timeout, async {
        loop {
            match stream.next().await {
                Some(Ok(Message::Text(text))) => return Some(Ok(text)),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Binary(_))) => return Some(Err(())),
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return None,
            }
        }
    })
    .await;
    let handshake_required = |message: &str| {
        (
            CloseCode::PROTOCOL_ERROR,
            ErrorData::new(ErrorCode::HandshakeRequired, message),
        )
    };
    match first {
        Err(_) => Err((
            CloseCode::HANDSHAKE_TIMEOUT,
            ErrorData::new(
                ErrorCode::HandshakeRequired,
                "no hello within the handshake timeout",
            ),
        )),
        Ok(None) => Err((
            CloseCode::NORMAL,
            ErrorData::new(ErrorCode::HandshakeRequired, "closed before hello"),
        )),
        Ok(Some(Err(()))) => Err(handshake_required(
            "the first message must be a hello text frame",
        )),
        Ok(Some(Ok(text))) => Envelope::<M>::decode(&text).map_err(|e| match e {
            DecodeError::InvalidData { .. } => {
                handshake_required(&format!("the first message must be a valid hello: {e}"))
            }
            _ => handshake_required("the first message must be a hello"),
        }),
    }
}

/// The rejection for a first message of another type than `hello`.
pub(crate) fn not_hello() -> (u16, ErrorData) {
    (
        CloseCode::PROTOCOL_ERROR,
        ErrorData::new(
            ErrorCode::HandshakeRequired,
            "the first message must be a hello",
        ),
    )
}

/// Tracks when the peer was last heard from.
pub(crate) struct Liveness {
    last_heard: Instant,
    deadline: Duration,
    sent: u64,
}

impl Liveness {
    pub(crate) fn new(deadline: Duration) -> Self {
        Self {
            last_heard: Instant::now(),
            deadline,
            sent: 0,
        }
    }

    /// Something arrived.
    pub(crate) fn heard(&mut self) {
        self.last_heard = Instant::now();
    }

    /// Whether the peer has been silent past the deadline.
    pub(crate) fn expired(&self) -> bool {
        self.last_heard.elapsed() > self.deadline
    }

    /// How long the peer has been silent.
    pub(crate) fn silent_for(&self) -> Duration {
        self.last_heard.elapsed()
    }

    /// The next heartbeat sequence number.
    pub(crate) fn next_seq(&mut self) -> u64 {
        self.sent += 1;
        self.sent
    }
}

/// A heartbeat ticker that does not fire immediately.
pub(crate) fn heartbeat_ticker(interval: Duration) -> tokio::time::Interval {
    let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker
}

/// The `error` for a handshake from a source past its limit of failed
/// authentications.
pub(crate) fn auth_rate_limited(wait: std::time::Duration) -> muster_proto::messages::ErrorData {
    muster_proto::messages::ErrorData::rate_limited(
        "too many failed authentications from this address; retry later",
        wait,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_close_reason_fits_a_control_frame_and_stays_utf8() {
        assert_eq!(close_reason("short"), "short");
        let long = "é".repeat(100);
        let cut = close_reason(&long);
        assert!(
            cut.len() <= MAX_CLOSE_REASON && cut.len() == 122,
            "{}",
            cut.len()
        );
    }
}
