//! A Rust client for a Muster hub.
//!
//! [`Client::connect`] dials the hub's `/ws/client` endpoint, authenticates with
//! an API token and waits for `connection.ack`. From then on one background task
//! owns the socket: it matches replies to requests by id, answers and sends
//! heartbeats, and hands everything else — the initial `agent.list`, fleet and
//! run events, binary output frames, and finally the close — to the [`Event`]
//! receiver returned next to the client.
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
//! This version does not reconnect: when the socket drops, pending requests
//! fail with [`ClientError::Closed`], the receiver yields [`Event::Closed`], and
//! the caller decides whether to connect again and resubscribe (with `since`,
//! streams resume without gaps). Automatic resume is planned for a later
//! version. Only plain `ws://` (and `http://`) hubs are supported for now.

mod api;
mod client;
mod error;
mod handshake;
mod task;
mod url;

pub use client::{Client, EVENT_CHANNEL_CAPACITY, Event};
pub use error::ClientError;
pub use muster_proto::messages::{
    AgentAdded, ConnectionAck, RunAccepted, RunListQuery, Subscribed,
};
pub use muster_proto::types::RunRequest;
pub use url::ws_url;

/// The name this library announces in `hello`.
pub const CLIENT_NAME: &str = concat!("muster-client/", env!("CARGO_PKG_VERSION"));

#[cfg(test)]
mod tests;
