//! Error codes carried in `error` messages and WebSocket close codes.
//!
//! Codes follow the catalogue of `docs/protocol.md`; each one says whether the
//! condition is recoverable, that is whether retrying the same request later can
//! succeed.

use serde::{Deserialize, Serialize};

/// The machine-readable reason of an `error` message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// The token is missing, malformed, unknown or revoked.
    AuthFailed,
    /// The first message was not a valid `hello`, or a request came before it.
    HandshakeRequired,
    /// The credential is valid but may not do this.
    Forbidden,
    /// The text was not a JSON envelope, or a known type had invalid `data`.
    InvalidMessage,
    /// The envelope's `type` is not one the receiver knows.
    UnknownType,
    /// The named agent is not registered.
    AgentNotFound,
    /// The named agent is registered but not connected.
    AgentOffline,
    /// The named run does not exist.
    RunNotFound,
    /// The run is in a state that does not allow the request (e.g. cancel after it ended).
    InvalidState,
    /// A resource with that name already exists.
    Conflict,
    /// The agent's queue is at capacity.
    QueueFull,
    /// Too many requests; slow down.
    RateLimit,
    /// The command exceeded its timeout.
    CommandTimeout,
    /// The channel name is malformed or names nothing.
    UnknownChannel,
    /// The requested offset is no longer stored; the reply says where history resumes.
    HistoryGap,
    /// The hub failed internally; the request may be retried.
    Internal,
    /// A selector did not parse; the message names the column.
    InvalidSelector,
    /// A selector matched no registered agent.
    NoTargets,
    /// The named job does not exist.
    JobNotFound,
    /// The agent declares no action with that name.
    UnknownAction,
    /// An action parameter is missing, unknown or breaks its rule; the message
    /// names the parameter and the rule. Nothing ran.
    InvalidParams,
    /// The agent runs declared actions only (`exec = "actions-only"`) and
    /// refused a raw command. Nothing ran.
    CommandsDisabled,
    /// The hub cannot write to its store (a full disk, an I/O error) and
    /// accepts no change until it can again; retry later. Nothing was done.
    StorageUnavailable,
    /// An output frame skipped sequence numbers (an agent sent `seq` 5 when
    /// 2 was next); the frame was dropped and not acknowledged. Send the
    /// missing frames first.
    OutputGap,
    /// No API key has that name.
    KeyNotFound,
    /// No enrollment token has that id.
    EnrollmentNotFound,
    /// The agent already has as many open sessions as the hub allows.
    SessionLimit,
    /// A session ended because neither input nor output came for its idle timeout.
    SessionIdle,
    /// A session ended because it reached its maximum lifetime.
    SessionLifetime,
    /// A `session.input` skipped writer sequence numbers; the message names the
    /// next one expected. Nothing was applied.
    InputGap,
}

impl ErrorCode {
    /// Whether retrying later can succeed.
    pub fn recoverable(self) -> bool {
        !matches!(
            self,
            Self::AuthFailed
                | Self::HandshakeRequired
                | Self::Forbidden
                | Self::AgentNotFound
                | Self::RunNotFound
                | Self::InvalidState
                | Self::Conflict
                | Self::UnknownChannel
                | Self::InvalidSelector
                | Self::JobNotFound
                | Self::UnknownAction
                | Self::InvalidParams
                | Self::CommandsDisabled
                | Self::OutputGap
                | Self::KeyNotFound
                | Self::EnrollmentNotFound
                | Self::SessionIdle
                | Self::SessionLifetime
                | Self::InputGap
        )
    }

    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AuthFailed => "AUTH_FAILED",
            Self::HandshakeRequired => "HANDSHAKE_REQUIRED",
            Self::Forbidden => "FORBIDDEN",
            Self::InvalidMessage => "INVALID_MESSAGE",
            Self::UnknownType => "UNKNOWN_TYPE",
            Self::AgentNotFound => "AGENT_NOT_FOUND",
            Self::AgentOffline => "AGENT_OFFLINE",
            Self::RunNotFound => "RUN_NOT_FOUND",
            Self::InvalidState => "INVALID_STATE",
            Self::Conflict => "CONFLICT",
            Self::QueueFull => "QUEUE_FULL",
            Self::RateLimit => "RATE_LIMIT",
            Self::CommandTimeout => "COMMAND_TIMEOUT",
            Self::UnknownChannel => "UNKNOWN_CHANNEL",
            Self::HistoryGap => "HISTORY_GAP",
            Self::Internal => "INTERNAL",
            Self::InvalidSelector => "INVALID_SELECTOR",
            Self::NoTargets => "NO_TARGETS",
            Self::JobNotFound => "JOB_NOT_FOUND",
            Self::UnknownAction => "UNKNOWN_ACTION",
            Self::InvalidParams => "INVALID_PARAMS",
            Self::CommandsDisabled => "COMMANDS_DISABLED",
            Self::StorageUnavailable => "STORAGE_UNAVAILABLE",
            Self::OutputGap => "OUTPUT_GAP",
            Self::KeyNotFound => "KEY_NOT_FOUND",
            Self::EnrollmentNotFound => "ENROLLMENT_NOT_FOUND",
            Self::SessionLimit => "SESSION_LIMIT",
            Self::SessionIdle => "SESSION_IDLE",
            Self::SessionLifetime => "SESSION_LIFETIME",
            Self::InputGap => "INPUT_GAP",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// WebSocket close codes the hub and agent use, beyond the standard ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CloseCode;

impl CloseCode {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The hub is shutting down; reconnect (to it or another hub) with backoff.
    pub const GOING_AWAY: u16 = 1001;
    /// A message was larger than `max_message_bytes`.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// The hub cannot do this now (it cannot write to its store); the
    /// `error` before it says why. Reconnect with backoff.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// The agent's credential was rotated; reconnect with the new one. Not fatal.
    pub const CREDENTIAL_ROTATED: u16 = 4012;
    /// The source address is past its limit of failed authentications; the
    /// `error` before it says when to retry. Not fatal.
    pub const RATE_LIMITED: u16 = 4029;
    /// The peer broke the protocol beyond what an `error` reply can handle
    /// (e.g. a binary frame with a corrupt header from a client).
    pub const PROTOCOL_ERROR: u16 = 4000;
    /// Authentication failed; do not retry with the same credential.
    pub const AUTH_FAILED: u16 = 4001;
    /// No valid `hello` arrived within the handshake timeout.
    pub const HANDSHAKE_TIMEOUT: u16 = 4002;
    /// The connection's send queue overflowed because it did not read fast enough.
    pub const SLOW_CONSUMER: u16 = 4008;
    /// Nothing was received within the heartbeat deadline.
    pub const HEARTBEAT_TIMEOUT: u16 = 4009;
    /// A newer connection for the same agent replaced this one.
    pub const REPLACED: u16 = 4010;
    /// The credential behind this connection was revoked or its agent removed.
    pub const REVOKED: u16 = 4011;

    /// Whether a peer closed with `code` should stop reconnecting.
    pub fn is_fatal(code: u16) -> bool {
        matches!(code, Self::AUTH_FAILED | Self::REVOKED)
    }
}
