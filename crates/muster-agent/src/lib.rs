//! The Muster agent: dials the hub, executes the runs it is sent, streams their output.
//!
//! [`run`] is the whole agent: it connects to the hub's `/ws/agent` endpoint,
//! says `hello` (with a report of the runs it knows), waits for
//! `connection.ack`, then serves heartbeats, `run.start`, `run.cancel` and
//! `run.ack`, and sends a `metrics` sample of the host every
//! [`AgentOptions::metrics_interval`], and serves sessions (`session.input`,
//! `session.resize`, `session.snapshot`), until the connection drops, when it
//! reconnects on the [`Backoff`] schedule. It returns `Ok` when its shutdown token is cancelled and an error
//! when the hub rejects the agent's token. An agent given an enrollment
//! token ([`AgentOptions::enroll`]) and no stored credential first registers
//! itself with it, stores the credential the hub answers with in its state
//! dir, and reconnects with that.
//!
//! Codemap:
//! - `agent` — the reconnect loop, the `hello` run report, and shutdown;
//! - [`actions`] — declared actions: config, validation, and turning a call
//!   into an argument vector; [`config`] — the agent's TOML config file;
//! - `handshake` — URL, `hello`, `connection.ack` (or `enrolled`);
//!   `credential` — the token in use, and the one the hub hands over
//!   (rotated or enrolled), kept in the state dir;
//! - `connection` — one served connection (a single `select!`) and close codes;
//! - `runs` — the runs in flight, their tasks, and what `run.start`/`run.ack`
//!   do; `admission` — which `run.start` may execute (actions, exec mode);
//! - `session` — sessions: input applied exactly once and echoed, resizes,
//!   snapshots, and the queues between them; `screen` — a pty's screen;
//! - `spool` — every per-run message, in order, until the hub acknowledges it;
//! - `ledger` — the run ids this agent started, durable in the state dir;
//!   [`state_dir`] — that directory, private to the agent's user;
//! - `metrics` — host sampling, and the per-connection feed of samples;
//! - `events` — the local event socket programs publish to, and the bounded
//!   queue of events waiting for the hub; [`mod@emit`] — its client;
//! - [`executor`] — the [`Executor`] seam; [`process`] — the real one, on
//!   pipes or, for a session, on a pseudo-terminal;
//! - [`sink`] — output batching into numbered frames; [`Backoff`] (from
//!   `muster-proto`) — the reconnect schedule.
//!
//! Invariants. Nothing a run produced is dropped while it is unacknowledged:
//! runs outlive connections, their messages wait in the spool while the agent
//! is disconnected, and a full spool slows the command down instead. A run id
//! is executed at most once: its `started` record is fsynced before the
//! process is spawned, and a `run.start` for a known id is never executed
//! (across agent restarts only with a [`AgentOptions::state_dir`]). The spool
//! is in memory: what an agent process had not delivered when it died is gone,
//! and the hub learns of such runs as `unknown` from the next process's `hello`.
//! Host metrics are the exception to delivery: they are never spooled, and a
//! sample taken while disconnected is dropped. Events programs publish on the
//! agent's socket are the other: they wait in a bounded in-memory queue, are
//! refused once it is full, and are not acknowledged by the hub. A run the
//! agent rejects (an unknown action, a parameter that breaks its rule, a raw
//! command on an actions-only agent) executes nothing and is not recorded in
//! the ledger: it is answered with a `rejected` exit report only.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use muster_proto::AgentName;
use muster_proto::actions::ExecMode;
use muster_tls::TrustRoots;
use tokio_util::sync::CancellationToken;

pub mod actions;
mod admission;
mod agent;
pub mod config;
mod connection;
mod credential;
pub mod emit;
mod events;
pub mod executor;
mod handshake;
mod ledger;
mod metrics;
pub mod process;
mod runs;
mod screen;
mod session;
pub mod sink;
mod spool;
pub mod state_dir;

pub use actions::ActionSet;
pub use config::AgentConfig;
pub use credential::CREDENTIAL_FILE;
pub use emit::{RUN_ID_ENV, SOCKET_ENV, emit};
pub use events::{CLIENT_IDLE_TIMEOUT, EVENT_BUFFER, MAX_EVENT_LINE_BYTES, SOCKET_FILE_NAME};
pub use executor::{Executor, SESSIONS_UNSUPPORTED, SessionCommand, SessionInbox};
pub use muster_proto::backoff::Backoff;
pub use process::{BIN_ENV, ProcessExecutor};
pub use sink::{Outgoing, RunSink};
pub use spool::SPOOL_MAX_BYTES;

/// Runs an agent executes at once unless told otherwise.
pub const DEFAULT_MAX_CONCURRENCY: u32 = 4;

/// Time between SIGTERM and SIGKILL unless told otherwise.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(5);

/// Time between host metrics samples unless told otherwise: fine enough for
/// a fleet dashboard, and a sample costs a few `/proc` reads.
pub const DEFAULT_METRICS_INTERVAL: Duration = Duration::from_secs(30);

/// How to reach the hub and how to present this agent.
///
/// Start from [`AgentOptions::new`] and override fields with struct update
/// syntax: `AgentOptions { max_concurrency: 8, ..AgentOptions::new(url, token) }`.
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
    /// for each run. At shutdown, runs get this long (plus a small margin) to
    /// stop and have their reports acknowledged.
    pub kill_grace: Duration,
    /// Bound on the spool of unacknowledged run messages, in payload bytes (at
    /// least 1); when it is full, runs wait for the hub. [`SPOOL_MAX_BYTES`] by default.
    pub spool_max_bytes: usize,
    /// Directory for the run ledger (`runs.ledger`), created if missing. With
    /// `None` the ledger is in memory, so a run is still executed at most once
    /// per agent process, but not across restarts of the agent. The event
    /// socket is `agent.sock` in this directory ([`SOCKET_FILE_NAME`]), or in
    /// a private temporary directory with `None`.
    pub state_dir: Option<PathBuf>,
    /// Time between `metrics` samples of the host while connected (more than
    /// zero); the first is sent right after `connection.ack`. `None` turns
    /// sampling off. Samples are best effort: never spooled, and dropped while
    /// disconnected. [`DEFAULT_METRICS_INTERVAL`] by default.
    pub metrics_interval: Option<Duration>,
    /// Whether raw commands (`argv`, `shell`) run, or only declared actions;
    /// announced in `hello`. [`ExecMode::Any`] by default.
    pub exec: ExecMode,
    /// The actions this agent declares, announced in `hello`; none by default.
    pub actions: ActionSet,
    /// What verifies an `https://` hub: by default the CA file in
    /// `MUSTER_CA_FILE`, else the system's roots.
    pub trust: TrustRoots,
    /// An enrollment token (`mse_…`); never logged. While the state dir
    /// holds no credential, the agent registers itself with it (under
    /// [`AgentOptions::name`], else the host name), stores the token the hub
    /// answers with, and reconnects with that. A stored credential wins over
    /// it. Needs a [`AgentOptions::state_dir`]. `None` by default.
    pub enroll: Option<String>,
}

impl AgentOptions {
    /// Options for reaching `hub_url` with `token`, everything else at its
    /// default: no name (the token's agent), no labels,
    /// [`DEFAULT_MAX_CONCURRENCY`], [`DEFAULT_KILL_GRACE`], [`SPOOL_MAX_BYTES`],
    /// no state dir, [`DEFAULT_METRICS_INTERVAL`], any command, and no actions.
    pub fn new(hub_url: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            hub_url: hub_url.into(),
            token: token.into(),
            name: None,
            labels: BTreeMap::new(),
            max_concurrency: DEFAULT_MAX_CONCURRENCY,
            kill_grace: DEFAULT_KILL_GRACE,
            spool_max_bytes: SPOOL_MAX_BYTES,
            state_dir: None,
            metrics_interval: Some(DEFAULT_METRICS_INTERVAL),
            exec: ExecMode::Any,
            actions: ActionSet::default(),
            trust: TrustRoots::from_env(),
            enroll: None,
        }
    }
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
            .field("spool_max_bytes", &self.spool_max_bytes)
            .field("state_dir", &self.state_dir)
            .field("metrics_interval", &self.metrics_interval)
            .field("exec", &self.exec)
            .field("actions", &self.actions.names().collect::<Vec<_>>())
            .field("trust", &self.trust)
            .field("enroll", &self.enroll.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Runs the agent with the real process executor until `shutdown` is cancelled.
///
/// Returns an error when the hub rejects the token (close 4001 or 4011, or an
/// `AUTH_FAILED` error), refuses the enrollment (`AUTH_FAILED`, `CONFLICT`,
/// `INVALID_MESSAGE`), or the options are invalid; every other failure is
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
        let options = AgentOptions::new("http://hub:7070", "mst_secretsecret");
        let debug = format!("{options:?}");
        assert!(!debug.contains("secret"), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
    }
}
