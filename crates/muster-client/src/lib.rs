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
//! A `Client` is one connection and does not reconnect: when the socket drops,
//! pending requests fail with [`ClientError::Closed`] and the receiver yields
//! [`Event::Closed`]. Two helpers add what survives drops and hub restarts:
//! [`create_run_retrying`] re-sends `run.create` (with an idempotency key, so
//! at most one run is created) until the hub accepts it, and [`RunFollower`]
//! follows a run's output to its end, reconnecting and resuming from the last
//! chunk it received, without gaps or duplicates. Only plain `ws://` (and
//! `http://`) hubs are supported for now.

mod api;
mod client;
mod error;
mod execute;
mod follow;
mod handshake;
mod lists;
mod pages;
mod reconnect;
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
pub use pages::{MAX_PAGES, Page};
pub use reconnect::DEFAULT_GIVE_UP_AFTER;
pub use submit::{create_job_retrying, create_run_retrying, new_idempotency_key};
pub use url::ws_url;

/// The name this library announces in `hello`.
pub const CLIENT_NAME: &str = concat!("muster-client/", env!("CARGO_PKG_VERSION"));

#[cfg(test)]
mod tests;
