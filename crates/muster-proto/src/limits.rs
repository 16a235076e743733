//! Named protocol limits and their defaults.
//!
//! The hub announces the limits in force in `connection.ack`; these constants are
//! the defaults and the hard bounds the types themselves enforce.

use serde::{Deserialize, Serialize};

/// Largest WebSocket message either side accepts, in bytes (1 MiB).
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// Largest payload of one output frame, in bytes (10 KiB).
pub const MAX_OUTPUT_CHUNK_BYTES: usize = 10 * 1024;

/// How long an agent batches output before it sends a partial chunk.
pub const OUTPUT_BATCH_MS: u64 = 50;

/// Default interval between heartbeats, each way.
pub const HEARTBEAT_INTERVAL_MS: u64 = 30_000;

/// Default silence after which a peer is considered dead.
pub const HEARTBEAT_DEADLINE_MS: u64 = 60_000;

/// How long a new connection has to send a valid `hello`.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 10_000;

/// Longest agent name.
pub const MAX_AGENT_NAME_LEN: usize = 64;

/// Longest request id.
pub const MAX_REQUEST_ID_LEN: usize = 64;

/// Longest binary-frame header, in bytes.
pub const MAX_OUTPUT_HEADER_BYTES: usize = 1024;

/// The limits a hub announces in `connection.ack`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest message the hub accepts, in bytes.
    pub max_message_bytes: usize,
    /// Largest payload of one output frame, in bytes.
    pub max_output_chunk_bytes: usize,
    /// How long output is batched before a partial chunk is sent.
    pub output_batch_ms: u64,
    /// Per-run cap on stored output, in bytes; output past it is dropped and the run
    /// is marked `output_truncated`.
    pub max_output_bytes_per_run: u64,
    /// Longest queue of waiting runs per agent.
    pub max_queue_per_agent: usize,
}
