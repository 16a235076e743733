//! The errors the client returns, and how transport failures turn into them.
//!
//! Callers branch on the variant: [`ClientError::Auth`] is fatal (retrying with
//! the same token cannot succeed), [`ClientError::Connect`] and
//! [`ClientError::Closed`] are worth a retry, [`ClientError::Hub`] carries the
//! hub's own error code. A hub that cannot write to its store answers
//! `STORAGE_UNAVAILABLE`; its message says so plainly, and
//! [`ClientError::is_transient`] tells the followers to try again later.

use std::io;

use muster_proto::ErrorCode;
use muster_proto::messages::ErrorData;
use tokio_tungstenite::tungstenite;

/// Why a connection or a request failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ClientError {
    /// The hub could not be reached: bad URL, refused connection, failed upgrade, timeout.
    #[error("{0}")]
    Connect(String),
    /// The hub rejected the token (`AUTH_FAILED`, or close code 4001).
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The hub answered the request with an `error` message.
    #[error("{}", hub_message(.0))]
    Hub(ErrorData),
    /// The connection closed before the reply arrived, or was already closed.
    #[error("connection to the hub closed: {0}")]
    Closed(String),
    /// The hub sent something this client does not understand.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The hub's error code, for [`ClientError::Hub`].
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Hub(data) => Some(data.code),
            _ => None,
        }
    }

    /// Whether the hub could not serve the request now but the same request
    /// may succeed later, on this connection or another: its store is
    /// unavailable (`STORAGE_UNAVAILABLE`), it failed internally
    /// (`INTERNAL`), or it asks to slow down (`RATE_LIMIT`).
    pub fn is_transient(&self) -> bool {
        matches!(
            self.code(),
            Some(ErrorCode::StorageUnavailable | ErrorCode::Internal | ErrorCode::RateLimit)
        )
    }
}

fn hub_message(data: &ErrorData) -> String {
    let message = if data.message.is_empty() {
        data.code.as_str()
    } else {
        data.message.as_str()
    };
    match data.code {
        ErrorCode::StorageUnavailable => format!(
            "the hub cannot write to its store, so it did nothing; try again later \
             ({}: {message})",
            data.code.as_str()
        ),
        _ => message.to_owned(),
    }
}

/// Describes a failure to open the WebSocket to `hub_url`.
pub(crate) fn connect_error(hub_url: &str, err: &tungstenite::Error) -> ClientError {
    let cause = match err {
        tungstenite::Error::Io(e) => io_cause(e),
        tungstenite::Error::Http(response) => format!(
            "unexpected HTTP status {} (is this a muster hub?)",
            response.status()
        ),
        tungstenite::Error::Url(e) => format!("invalid URL: {e}"),
        other => lowercase_first(&other.to_string()),
    };
    unreachable_hub(hub_url, &cause)
}

/// The [`ClientError::Connect`] for `hub_url` failing with `cause`.
pub(crate) fn unreachable_hub(hub_url: &str, cause: &str) -> ClientError {
    ClientError::Connect(format!("cannot reach hub at {hub_url}: {cause}"))
}

/// A short lowercase description of an I/O error, without the `(os error N)` suffix.
pub(crate) fn io_cause(err: &io::Error) -> String {
    match err.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
        io::ErrorKind::ConnectionReset => "connection reset".to_owned(),
        io::ErrorKind::TimedOut => "timed out".to_owned(),
        _ => {
            let text = err.to_string();
            let text = match text.find(" (os error") {
                Some(at) => &text[..at],
                None => &text,
            };
            lowercase_first(text)
        }
    }
}

fn lowercase_first(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}
