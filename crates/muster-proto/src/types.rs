//! Records that appear inside messages: agents, runs and command specifications.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::UnixMillis;
use crate::actions::{ActionCall, ActionInfo, ExecMode};
use crate::codes::ErrorCode;
use crate::ids::{AgentName, JobId, RunId};
use crate::sessions::SessionSpec;

/// Whether an agent is connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentStatus {
    /// Connected and heard from recently.
    Online,
    /// Connected, but its heartbeats are late (nothing heard for more than
    /// 1.5 heartbeat intervals); it goes `offline` at the heartbeat deadline.
    Stale,
    /// Not connected.
    Offline,
}

/// One agent as the registry knows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentInfo {
    /// Unique name.
    pub name: AgentName,
    /// Connection status.
    pub status: AgentStatus,
    /// Labels, from registration and from the agent's own flags (the agent's win).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Host name the agent reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Operating system the agent reported (`linux`, `macos`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,
    /// CPU architecture the agent reported (`x86_64`, `aarch64`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    /// Agent software version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Last time the hub heard from the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_ms: Option<UnixMillis>,
    /// When the current connection was established, while online.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connected_since_ms: Option<UnixMillis>,
    /// How many runs the agent executes at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    /// The hub the agent is connected to, while connected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub_id: Option<String>,
    /// Runs currently dispatched or running on the agent.
    #[serde(default)]
    pub running: u32,
    /// Runs waiting in the agent's queue.
    #[serde(default)]
    pub queued: u32,
    /// Whether the agent runs raw commands or its declared actions only, as it
    /// last reported.
    #[serde(default, skip_serializing_if = "ExecMode::is_any")]
    pub exec: ExecMode,
    /// The actions the agent declares, as it last reported.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<ActionInfo>,
}

/// What to execute: an argument vector, a string for `/bin/sh -c`, or a
/// declared action of the agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandSpec {
    /// Executed directly, without a shell; the first element is the program.
    Argv(Vec<String>),
    /// Executed as `/bin/sh -c <string>`.
    Shell(String),
    /// A named action the agent declares; the agent validates the parameters
    /// and builds the argument vector from its own template.
    Action(ActionCall),
}

impl CommandSpec {
    /// Checks that there is something to execute.
    pub fn validate(&self) -> Result<(), &'static str> {
        match self {
            Self::Argv(argv) if argv.is_empty() => Err("argv must not be empty"),
            Self::Argv(argv) if argv[0].is_empty() => Err("argv[0] must not be empty"),
            Self::Shell(s) if s.trim().is_empty() => Err("shell command must not be empty"),
            Self::Action(call) if call.name.is_empty() => Err("action name must not be empty"),
            _ => Ok(()),
        }
    }

    /// A one-line human rendering, for tables and logs.
    pub fn display(&self) -> String {
        match self {
            Self::Argv(argv) => argv.join(" "),
            Self::Shell(s) => s.clone(),
            Self::Action(call) => format!("action {}", call.display()),
        }
    }

    /// Whether this is a raw command rather than a declared action.
    pub fn is_raw(&self) -> bool {
        !matches!(self, Self::Action(_))
    }
}

/// Where a run is in its lifecycle.
///
/// `queued → dispatched → running →` exactly one terminal state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Accepted and waiting for a slot on its agent.
    Queued,
    /// Sent to the agent; not yet confirmed started.
    Dispatched,
    /// The agent started the process.
    Running,
    /// The process exited (with `exit_code`) or was killed by a signal (`signal`).
    Completed,
    /// The process could not be started (`error` says why).
    Failed,
    /// The process exceeded its timeout and was killed.
    TimedOut,
    /// A client cancelled the run; if it had started, it was killed.
    Cancelled,
    /// The run was never delivered within its time to live.
    Expired,
    /// The agent vanished, or the hub restarted, while the run was in flight.
    Lost,
    /// The agent refused to run it (`error_code` says why: `INVALID_PARAMS`,
    /// `UNKNOWN_ACTION`, `COMMANDS_DISABLED`); nothing ran.
    Rejected,
}

impl RunState {
    /// Whether the state is final.
    pub fn is_terminal(self) -> bool {
        !matches!(self, Self::Queued | Self::Dispatched | Self::Running)
    }

    /// The state as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Dispatched => "dispatched",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::TimedOut => "timed_out",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
            Self::Lost => "lost",
            Self::Rejected => "rejected",
        }
    }

    /// Parses the wire form.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => Self::Queued,
            "dispatched" => Self::Dispatched,
            "running" => Self::Running,
            "completed" => Self::Completed,
            "failed" => Self::Failed,
            "timed_out" => Self::TimedOut,
            "cancelled" => Self::Cancelled,
            "expired" => Self::Expired,
            "lost" => Self::Lost,
            "rejected" => Self::Rejected,
            _ => return None,
        })
    }
}

impl std::fmt::Display for RunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which output stream of a process a chunk came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
    /// A session's applied input, echoed in its place among the output: each
    /// chunk is one [`InputRecord`](crate::sessions::InputRecord) as JSON.
    Input,
}

impl OutputStream {
    /// The stream as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
            Self::Input => "input",
        }
    }
}

/// Everything a client may ask for when it creates a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRequest {
    /// The agent that executes the command.
    pub agent: AgentName,
    /// What to execute.
    pub command: CommandSpec,
    /// Extra environment variables, added to the agent's own.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working directory; the agent's own when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Kill the command after this long; no timeout when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Higher runs first; FIFO within one priority. Range -100..=100, default 0.
    #[serde(default)]
    pub priority: i32,
    /// Repeating a request with the same key returns the first run instead of a new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// How long the run may wait to be delivered to its agent before it ends
    /// `expired`; the hub's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    /// Makes the run a session that takes input (pty or pipes). Boxed: few
    /// runs are sessions, and every request carries the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<Box<SessionSpec>>,
}

impl RunRequest {
    /// A request with the defaults: no extra environment, the agent's working
    /// directory, no timeout, priority 0, no idempotency key, the hub's TTL.
    pub fn new(agent: AgentName, command: CommandSpec) -> Self {
        Self {
            agent,
            command,
            env: BTreeMap::new(),
            cwd: None,
            timeout_ms: None,
            priority: 0,
            idempotency_key: None,
            ttl_ms: None,
            session: None,
        }
    }
}

/// One run as the hub knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunInfo {
    /// Run id.
    pub id: RunId,
    /// The agent it runs on.
    pub agent: AgentName,
    /// What it executes.
    pub command: CommandSpec,
    /// Extra environment variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Timeout, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Priority.
    pub priority: i32,
    /// Lifecycle state.
    pub state: RunState,
    /// 1-based position in the agent's queue, while `queued`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<u32>,
    /// Process exit code, when it exited normally.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Signal number that killed the process, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Why the run failed, was lost, expired or was rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Machine-readable reason, when the agent rejected the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<ErrorCode>,
    /// The job this run belongs to, if a job created it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobId>,
    /// The job step (0-based) this run executes, with `job`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<u32>,
    /// Process id on the agent's host, once running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Output bytes stored so far, both streams.
    #[serde(default)]
    pub output_bytes: u64,
    /// Whether output past the per-run cap was dropped.
    #[serde(default)]
    pub output_truncated: bool,
    /// Who asked for the run (the API key's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
    /// The idempotency key, if one was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// When the hub accepted the run.
    pub created_ms: crate::UnixMillis,
    /// When the run ends `expired` if it has not been dispatched by then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<crate::UnixMillis>,
    /// When the hub sent it to the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispatched_ms: Option<crate::UnixMillis>,
    /// When the agent started the process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<crate::UnixMillis>,
    /// When the run reached its terminal state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<crate::UnixMillis>,
    /// Present when the run is a session; its window size is the current one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionSpec>,
}

impl RunInfo {
    /// A freshly accepted run: `queued`, with a new id, nothing run yet.
    pub fn queued(request: RunRequest, created_ms: crate::UnixMillis) -> Self {
        Self {
            id: RunId::generate(),
            agent: request.agent,
            command: request.command,
            env: request.env,
            cwd: request.cwd,
            timeout_ms: request.timeout_ms,
            priority: request.priority,
            state: RunState::Queued,
            queue_position: None,
            exit_code: None,
            signal: None,
            error: None,
            error_code: None,
            job: None,
            step: None,
            pid: None,
            output_bytes: 0,
            output_truncated: false,
            requested_by: None,
            idempotency_key: request.idempotency_key,
            created_ms,
            expires_ms: request.ttl_ms.map(|ttl| created_ms.saturating_add(ttl)),
            dispatched_ms: None,
            started_ms: None,
            finished_ms: None,
            session: request.session.map(|spec| *spec),
        }
    }
}
