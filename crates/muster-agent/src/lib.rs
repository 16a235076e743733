//! The Muster agent: dials the hub, executes the runs it is sent, streams their output.
//!
//! [`run`] is the whole agent: it connects to the hub's `/ws/agent` endpoint,
//! says `hello`, waits for `connection.ack`, then serves heartbeats, `run.start`
//! and `run.cancel` until the connection drops, when it reconnects on the
//! [`Backoff`] schedule. It returns `Ok` when its shutdown token is cancelled
//! and an error when the hub rejects the agent's token.
//!
//! Codemap:
//! - `agent` — the reconnect loop and shutdown; owns the runs across connections;
//! - `handshake` — URL, `hello`, `connection.ack`;
//! - `connection` — one served connection (a single `select!`) and close codes;
//! - `runs` — the table of runs in flight and their tasks;
//! - [`executor`] — the [`Executor`] seam; [`process`] — the real one;
//! - [`sink`] — output batching into numbered frames; [`backoff`] — the reconnect schedule.
//!
//! Runs in flight when the connection drops keep running; what they produce
//! while the agent is disconnected is dropped (a later version adds a spool).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use muster_proto::AgentName;
use tokio_util::sync::CancellationToken;

mod agent;
pub mod backoff;
mod connection;
pub mod executor;
mod handshake;
pub mod process;
mod runs;
pub mod sink;

pub use backoff::Backoff;
pub use executor::Executor;
pub use process::ProcessExecutor;
pub use sink::{Outgoing, RunSink};

/// How to reach the hub and how to present this agent.
#[derive(Clone)]
pub struct AgentOptions {
    /// Hub base URL (`http://`, `ws://`; `https://` and `wss://` are not supported
    /// yet); `/ws/agent` is appended.
    pub hub_url: String,
    /// The agent's token; never logged.
    pub token: String,
    /// The agent's name; the hub checks it against the token's agent.
    pub name: Option<AgentName>,
    /// Labels announced in `hello`; they override registered labels with the same key.
    pub labels: BTreeMap<String, String>,
    /// How many runs this agent executes at once, announced in `hello` (at least 1).
    pub max_concurrency: u32,
    /// Default time between SIGTERM and SIGKILL; the hub's `kill_grace_ms` wins
    /// for each run. At shutdown, runs get this long (plus a small margin) to stop.
    pub kill_grace: Duration,
}

impl std::fmt::Debug for AgentOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentOptions")
            .field("hub_url", &self.hub_url)
            .field("token", &"<redacted>")
            .field("name", &self.name)
            .field("labels", &self.labels)
            .field("max_concurrency", &self.max_concurrency)
            .field("kill_grace", &self.kill_grace)
            .finish()
    }
}

/// Runs the agent with the real process executor until `shutdown` is cancelled.
///
/// Returns an error when the hub rejects the token (close 4001 or 4011, or an
/// `AUTH_FAILED` error) or the options are invalid; every other failure is
/// retried on the reconnect schedule.
pub async fn run(options: AgentOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_with_executor(options, Arc::new(ProcessExecutor::new()), shutdown).await
}

/// Like [`run`], with runs executed by `executor`.
pub async fn run_with_executor(
    options: AgentOptions,
    executor: Arc<dyn Executor>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    agent::run(options, executor, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_masks_the_token() {
        let options = AgentOptions {
            hub_url: "http://hub:7070".into(),
            token: "mst_secretsecret".into(),
            name: None,
            labels: BTreeMap::new(),
            max_concurrency: 1,
            kill_grace: Duration::from_secs(5),
        };
        let debug = format!("{options:?}");
        assert!(!debug.contains("secret"), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
    }
}
