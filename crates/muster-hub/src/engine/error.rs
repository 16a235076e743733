//! The error a request handler returns, mapped to an `error` reply in one place.

use muster_proto::ErrorCode;
use muster_proto::messages::ErrorData;

/// A request failed with a protocol error code.
#[derive(Debug, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// Code sent to the peer.
    pub code: ErrorCode,
    /// Message sent to the peer.
    pub message: String,
}

impl ApiError {
    /// An error with `code`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// The `data` of the `error` reply.
    pub fn to_data(&self) -> ErrorData {
        ErrorData::new(self.code, self.message.clone())
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(err: anyhow::Error) -> Self {
        tracing::error!(error = %format!("{err:#}"), "internal error");
        Self::new(ErrorCode::Internal, "internal error; see the hub log")
    }
}
