//! The Muster wire protocol.
//!
//! This crate owns every type that crosses a WebSocket between a hub, an agent
//! and a client, and nothing else: no I/O, no tokio. (The shared reconnect
//! schedule, [`backoff`], is pure logic and lives here too.) The hub, the agent, the
//! client library and the load generator all encode and decode through it, so
//! there is exactly one definition of the wire format. `docs/protocol.md` is the
//! language-neutral description of the same contract.
//!
//! Two frame kinds travel on a connection:
//! - **text frames** carry one JSON [`envelope`] `{type, id?, re?, channel?, data}`;
//! - **binary frames** carry command output: a length-prefixed JSON header
//!   followed by the raw bytes, so output is byte-exact and the hub can forward
//!   it without re-encoding (see [`frame`]).

pub mod actions;
pub mod backoff;
pub mod channel;
pub mod codes;
pub mod enroll;
pub mod envelope;
pub mod frame;
pub mod ids;
pub mod jobs;
pub mod json;
pub mod limits;
pub mod messages;
pub mod roles;
pub mod selector;
pub mod sessions;
pub mod types;

pub use channel::{Channel, UnknownChannel};
pub use codes::{CloseCode, ErrorCode};
pub use envelope::{DecodeError, Envelope};
pub use frame::{OutputFrame, OutputHeader};
pub use ids::{AgentName, JobId, RequestId, RunId};
pub use messages::{AgentToHub, ClientToHub, HubToAgent, HubToClient};
pub use roles::{Role, required_role};
pub use selector::{Selector, SelectorError};
pub use types::{AgentInfo, AgentStatus, CommandSpec, OutputStream, RunInfo, RunState};

/// Protocol version announced in `connection.ack`.
///
/// The major number changes only with an incompatible change, which would also
/// get new endpoint paths; minor versions only add optional fields and new
/// message types, which peers must ignore when they do not know them.
pub const PROTOCOL_VERSION: &str = "1.0";

/// Path of the WebSocket endpoint agents dial.
pub const AGENT_WS_PATH: &str = "/ws/agent";

/// Path of the WebSocket endpoint clients (CLI, dashboard, services) dial.
pub const CLIENT_WS_PATH: &str = "/ws/client";

/// Milliseconds since the Unix epoch, the only time format on the wire.
pub type UnixMillis = u64;
