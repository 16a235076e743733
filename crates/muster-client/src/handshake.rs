//! Opening a client connection: dial, `hello`, and wait for `connection.ack`.
//!
//! Every step is bounded by [`HANDSHAKE_TIMEOUT`], and a rejected token ends the
//! handshake at the hub's `AUTH_FAILED` error or its 4001 close, whichever comes
//! first, so a bad token never hangs the caller.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use muster_proto::messages::{ClientHello, ConnectionAck};
use muster_proto::{
    CLIENT_WS_PATH, ClientToHub, CloseCode, Envelope, ErrorCode, HubToClient, limits,
};
use tokio::time::timeout;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};

use muster_tls::DialError;

use crate::CLIENT_NAME;
use crate::error::{ClientError, connect_error, unreachable_hub};
use crate::url::ws_url;

/// The socket type the connection task owns.
pub(crate) type Socket = WebSocketStream<muster_tls::Stream>;

/// Bound on dialing, and separately on waiting for `connection.ack`.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_millis(limits::HANDSHAKE_TIMEOUT_MS);

/// Read buffer per connection. tungstenite's default (128 KiB, eagerly
/// allocated) is sized for bulk transfer; a client mostly reads small events and
/// 10 KiB output chunks, and load generators open thousands of clients.
const READ_BUFFER_BYTES: usize = 16 * 1024;

/// Dials the hub, authenticates with `token` and returns the socket and the ack.
pub(crate) async fn open(
    hub_url: &str,
    token: &str,
) -> Result<(Socket, ConnectionAck), ClientError> {
    let url = ws_url(hub_url, CLIENT_WS_PATH)?;
    let mut socket = dial(hub_url, &url).await?;
    let hello = ClientToHub::Hello(ClientHello {
        token: token.to_owned(),
        client: Some(CLIENT_NAME.to_owned()),
    });
    socket
        .send(Message::text(Envelope::plain(hello).encode()))
        .await
        .map_err(|e| connect_error(hub_url, &e))?;
    let ack = timeout(HANDSHAKE_TIMEOUT, wait_for_ack(&mut socket))
        .await
        .map_err(|_| {
            unreachable_hub(hub_url, "no connection.ack within the handshake timeout")
        })??;
    Ok((socket, ack))
}

async fn dial(hub_url: &str, url: &str) -> Result<Socket, ClientError> {
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(Some(limits::MAX_MESSAGE_BYTES))
        .max_frame_size(Some(limits::MAX_MESSAGE_BYTES));
    let trust = crate::trust_roots();
    let dialing = muster_tls::dial(url, &trust, config);
    match timeout(HANDSHAKE_TIMEOUT, dialing).await {
        Err(_) => Err(unreachable_hub(hub_url, "timed out")),
        Ok(Err(DialError::WebSocket(e))) => Err(connect_error(hub_url, &e)),
        Ok(Err(e @ (DialError::Config(_) | DialError::Tls(_)))) => {
            Err(unreachable_hub(hub_url, &e.to_string()))
        }
        Ok(Ok((socket, _response))) => Ok(socket),
    }
}

async fn wait_for_ack(socket: &mut Socket) -> Result<ConnectionAck, ClientError> {
    while let Some(frame) = socket.next().await {
        let frame = frame.map_err(|e| {
            ClientError::Closed(format!("connection failed during the handshake: {e}"))
        })?;
        match frame {
            Message::Text(text) => {
                if let Some(ack) = ack_from_text(&text)? {
                    return Ok(ack);
                }
            }
            Message::Binary(_) => {
                return Err(ClientError::Protocol(
                    "binary frame before connection.ack".to_owned(),
                ));
            }
            Message::Close(frame) => return Err(close_error(frame.as_ref())),
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    }
    Err(ClientError::Closed(
        "the hub closed the connection during the handshake".to_owned(),
    ))
}

/// Interprets one text frame received before the ack: the ack, something to
/// skip (`None`), or the reason the handshake failed.
pub(crate) fn ack_from_text(text: &str) -> Result<Option<ConnectionAck>, ClientError> {
    let envelope = Envelope::<HubToClient>::decode(text)
        .map_err(|e| ClientError::Protocol(format!("during the handshake: {e}")))?;
    match envelope.msg {
        HubToClient::ConnectionAck(ack) => Ok(Some(ack)),
        HubToClient::Error(error) if error.code == ErrorCode::AuthFailed => {
            Err(ClientError::Auth(error.message))
        }
        HubToClient::Error(error) => Err(ClientError::Hub(error)),
        HubToClient::Heartbeat(_) | HubToClient::HeartbeatAck(_) => Ok(None),
        other => Err(ClientError::Protocol(format!(
            "expected connection.ack, got {}",
            crate::api::type_name(&other)
        ))),
    }
}

/// The error for a close frame received before the ack.
pub(crate) fn close_error(frame: Option<&CloseFrame>) -> ClientError {
    let Some(frame) = frame else {
        return ClientError::Closed("the hub closed the connection during the handshake".into());
    };
    let code = u16::from(frame.code);
    let reason = frame.reason.as_str();
    if code == CloseCode::AUTH_FAILED {
        let reason = if reason.is_empty() {
            "invalid token"
        } else {
            reason
        };
        return ClientError::Auth(reason.to_owned());
    }
    ClientError::Closed(format!(
        "the hub closed the connection during the handshake (code {code}{}{reason})",
        if reason.is_empty() { "" } else { ": " }
    ))
}
