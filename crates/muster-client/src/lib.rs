//! A Rust client for a Muster hub.
//!
//! [`Client::connect`] dials the hub's `/ws/client` endpoint, authenticates with
//! an API token and waits for `connection.ack`. From then on one background task
//! owns the socket: it matches replies to requests by their `re` (a hub may
//! answer requests out of order), answers and sends heartbeats, and hands
//! everything else — the initial `agent.list` (only its first page when the
//! fleet is large), fleet and run events, binary output frames, and finally
//! the close — to the [`Event`] receiver returned next to the client.
//!
//! ```no_run
//! # async fn demo() -> Result<(), muster_client::ClientError> {
//! let (client, mut events) = muster_client::Client::connect("http://127.0.0.1:7070", "mst_…").await?;
//! for agent in client.agents().await? {
//!     println!("{} is {:?}", agent.name, agent.status);
//! }
//! # drop(events.recv().await);
//! client.close().await;
//! # Ok(())
//! # }
//! ```
//!
//! **Lists come in pages.** [`Client::agents`], [`Client::agents_matching`],
//! [`Client::runs`], [`Client::jobs`] and [`Client::job`] (with its targets)
//! follow `next_cursor` to the last page, so they return complete results; a
//! `limit` in a run or job query is the most records in all. The `*_page`
//! methods return one [`Page`]. A hub that repeats a cursor or never ends a
//! list gets a [`ClientError::Protocol`], not an endless loop.
//!
//! **Errors.** [`ClientError::Hub`] carries the hub's code; a hub that
//! cannot write to its store answers `STORAGE_UNAVAILABLE`, which reads as
//! such and is [transient](ClientError::is_transient): try again later.
//!
//! **Surviving drops.** A `Client` is one connection and does not
//! reconnect: when the socket drops, pending requests fail with
//! [`ClientError::Closed`] and the receiver yields [`Event::Closed`]. What
//! survives drops and hub restarts:
//!
//! - [`create_run_retrying`] and [`create_job_retrying`] re-send a create
//!   (with an idempotency key, so at most one run or job is created) until
//!   the hub accepts it;
//! - [`RunFollower`] follows a run's output to its end, reconnecting and
//!   resuming from the last chunk it received, without gaps or duplicates;
//! - [`JobFollower`] does the same for a whole job: its events and every
//!   step's output, labelled with agent and step, then its final record;
//! - [`Client::execute`] runs a command and waits for its [`Output`] —
//!   stdout, stderr, exit code or signal, final state — in one call, seed
//!   004's `executeOnAgent(host, cmd, timeout)`;
//! - [`Session`] attaches to a pty or pipe session, follows its output from
//!   an offset or a snapshot of its screen, and, as a writer, sends input
//!   that the hub applies exactly once however often the connection drops.
//!
//! Hubs are reached over `http://` (`ws://`) or `https://` (`wss://`). Over
//! TLS the hub's certificate is verified against the system's root
//! certificates, or against the CA file named by `MUSTER_CA_FILE`, or the one
//! given to [`set_trust_roots`] before the first connection.

mod api;
mod client;
mod error;
mod execute;
mod follow;
mod handshake;
mod lists;
mod pages;
mod reconnect;
mod session;
mod submit;
mod task;
mod url;

pub use client::{Client, EVENT_CHANNEL_CAPACITY, Event};
pub use error::ClientError;
pub use execute::{ExecuteError, Output};
pub use follow::{
    FollowError, FollowEvent, FollowOptions, JobEvent, JobFollowEvent, JobFollowOptions,
    JobFollower, RunFollower, StepOutput, StepRef,
};
pub use muster_proto::messages::{
    AgentAdded, AgentListQuery, ConnectionAck, JobAccepted, JobCreate, JobListQuery,
    JobTargetsQuery, MetricsSample, RunAccepted, RunListQuery, SeriesPoint, Subscribed,
};
pub use muster_proto::types::RunRequest;
pub use muster_proto::{AgentName, CommandSpec};
pub use muster_tls::TrustRoots;
pub use pages::{MAX_PAGES, Page};
pub use reconnect::DEFAULT_GIVE_UP_AFTER;
pub use session::{
    Attached, Follow, InputLogError, MAX_UNACKED_INPUTS, Session, SessionError, SessionEvent,
    SessionOptions, new_writer_id,
};
pub use submit::{create_job_retrying, create_run_retrying, new_idempotency_key};
pub use url::ws_url;

/// The roots every connection of this process trusts, once set.
static TRUST_ROOTS: std::sync::OnceLock<TrustRoots> = std::sync::OnceLock::new();

/// Sets the certificates every connection this process opens trusts over
/// TLS. Only the first call counts, and only before the first connection;
/// a later call gives its roots back as `Err`.
pub fn set_trust_roots(roots: TrustRoots) -> Result<(), TrustRoots> {
    TRUST_ROOTS.set(roots)
}

/// The roots connections trust: those given to [`set_trust_roots`], else
/// the CA file in `MUSTER_CA_FILE`, else the system's roots.
pub fn trust_roots() -> TrustRoots {
    TRUST_ROOTS.get_or_init(TrustRoots::from_env).clone()
}

/// The name this library announces in `hello`.
pub const CLIENT_NAME: &str = concat!("muster-client/", env!("CARGO_PKG_VERSION"));

#[cfg(test)]
mod tests;
