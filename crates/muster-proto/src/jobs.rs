//! Jobs: one command, action or workflow fanned out over the agents a
//! selector matches, in rolling batches, with per-step events on `job:<id>`.
//!
//! A job has one *target* per matched agent. Each target runs the job's steps
//! in order, one run per step; a step that fails ends its target unless the
//! step says `continue_on_failure`. At most `batch` targets are in progress at
//! once. Every change is published on `job:<id>` as a numbered, stored event,
//! so a subscriber can replay the job from any point like run output.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::UnixMillis;
use crate::codes::ErrorCode;
use crate::ids::{AgentName, JobId, RunId};
use crate::types::{CommandSpec, RunInfo, RunState};

/// Most steps a job may have.
pub const MAX_JOB_STEPS: usize = 100;

/// What a client asks for when it creates a job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// A name for people (`deploy`); the first step's command when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Which agents: see the selector grammar in `docs/protocol.md`.
    pub selector: String,
    /// The steps every target runs, in order (at least one).
    pub steps: Vec<StepSpec>,
    /// At most this many targets in progress at once; all at once when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchSize>,
    /// After the first failed target, start no new target (those waiting end `skipped`).
    #[serde(default)]
    pub fail_fast: bool,
    /// Skip agents that are not connected when the job is created, instead of
    /// queueing their runs until they connect or the TTL runs out.
    #[serde(default)]
    pub online_only: bool,
    /// Priority of every run of the job (-100..=100).
    #[serde(default)]
    pub priority: i32,
    /// Time to live of each run: how long it may wait for an offline agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
}

/// One step of a job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepSpec {
    /// Name for people and events (`fetch`, `migrate`); unique within the job.
    pub name: String,
    /// What the step executes: a command or a declared action.
    pub command: CommandSpec,
    /// Extra environment variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Kill the step's run after this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// When the step fails, go on with the next step, and do not count the
    /// failure against the target.
    #[serde(default)]
    pub continue_on_failure: bool,
}

/// How many targets may be in progress at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchSize {
    /// A fixed number (at least 1).
    Count(u32),
    /// A percentage of the targets (1–100), rounded up, at least 1.
    Percent(u32),
}

impl BatchSize {
    /// The number of targets in progress at once for `total` targets.
    pub fn limit(self, total: usize) -> usize {
        let limit = match self {
            Self::Count(n) => n as usize,
            Self::Percent(p) => (total * p as usize).div_ceil(100),
        };
        limit.max(1)
    }

    /// Checks the range.
    pub fn validate(self) -> Result<(), &'static str> {
        match self {
            Self::Count(0) => Err("batch must be at least 1"),
            Self::Percent(p) if p == 0 || p > 100 => Err("batch percentage must be 1-100"),
            _ => Ok(()),
        }
    }
}

impl std::str::FromStr for BatchSize {
    type Err = String;

    /// `10` or `25%`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad =
            || format!("invalid batch size {s:?}: use a count like 2 or a percentage like 25%");
        let size = match s.strip_suffix('%') {
            Some(p) => Self::Percent(p.parse().map_err(|_| bad())?),
            None => Self::Count(s.parse().map_err(|_| bad())?),
        };
        size.validate().map_err(|e| e.to_owned())?;
        Ok(size)
    }
}

impl std::fmt::Display for BatchSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Count(n) => write!(f, "{n}"),
            Self::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// Where a job is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Targets are waiting or running.
    Running,
    /// Every target succeeded (or was skipped because `online_only` and offline).
    Succeeded,
    /// At least one target failed, or was skipped by `fail_fast`.
    Failed,
    /// A client cancelled the job.
    Cancelled,
}

impl JobState {
    /// Whether the state is final.
    pub fn is_terminal(self) -> bool {
        self != Self::Running
    }

    /// The state as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where one target (one agent of a job) is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetState {
    /// Waiting for a batch slot.
    Pending,
    /// Its current step's run waits in the agent's queue (or for the agent to connect).
    Queued,
    /// Its current step's run is on the agent.
    Running,
    /// Every step succeeded, or failed with `continue_on_failure`.
    Succeeded,
    /// A step failed (exit code other than 0, timeout, lost, rejected, …).
    Failed,
    /// Never started: the agent was offline with `online_only`, or `fail_fast` stopped the job.
    Skipped,
    /// The job was cancelled before the target finished.
    Cancelled,
}

impl TargetState {
    /// Whether the state is final.
    pub fn is_terminal(self) -> bool {
        !matches!(self, Self::Pending | Self::Queued | Self::Running)
    }

    /// The state as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
            Self::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for TargetState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a job's targets are spread over the target states.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobProgress {
    /// Targets in the job.
    pub total: u32,
    /// Waiting for a batch slot.
    pub pending: u32,
    /// Their run waits on the agent.
    pub queued: u32,
    /// Their run is on the agent.
    pub running: u32,
    /// Done, successfully.
    pub succeeded: u32,
    /// Done, with a failed step.
    pub failed: u32,
    /// Never started.
    pub skipped: u32,
    /// Cancelled.
    pub cancelled: u32,
}

impl JobProgress {
    /// Counts `states`.
    pub fn count(states: impl IntoIterator<Item = TargetState>) -> Self {
        let mut p = Self::default();
        for state in states {
            p.total = p.total.saturating_add(1);
            let count = p.of_mut(state);
            *count = count.saturating_add(1);
        }
        p
    }

    /// The count of targets in `state`, to change.
    pub fn of_mut(&mut self, state: TargetState) -> &mut u32 {
        match state {
            TargetState::Pending => &mut self.pending,
            TargetState::Queued => &mut self.queued,
            TargetState::Running => &mut self.running,
            TargetState::Succeeded => &mut self.succeeded,
            TargetState::Failed => &mut self.failed,
            TargetState::Skipped => &mut self.skipped,
            TargetState::Cancelled => &mut self.cancelled,
        }
    }

    /// Targets that reached a final state.
    pub fn done(&self) -> u32 {
        self.succeeded + self.failed + self.skipped + self.cancelled
    }
}

/// The outcome of one step on one target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepOutcome {
    /// Step index (0-based).
    pub step: u32,
    /// The run that executed it.
    pub run: RunId,
    /// The run's state (terminal once the step ended).
    pub state: RunState,
    /// Exit code, when the process exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Signal that killed the process, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Why it failed, when the run says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Machine-readable reason, when the agent rejected the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<ErrorCode>,
}

impl StepOutcome {
    /// A step whose run was just created: `queued`, nothing known yet.
    pub fn queued(step: u32, run: RunId) -> Self {
        Self {
            step,
            run,
            state: RunState::Queued,
            exit_code: None,
            signal: None,
            error: None,
            error_code: None,
        }
    }

    /// Step `step` as `run` stands now.
    pub fn of(step: u32, run: &RunInfo) -> Self {
        Self {
            step,
            run: run.id,
            state: run.state,
            exit_code: run.exit_code,
            signal: run.signal,
            error: run.error.clone(),
            error_code: run.error_code,
        }
    }

    /// Whether the step succeeded: the process exited 0.
    pub fn succeeded(&self) -> bool {
        self.state == RunState::Completed && self.exit_code == Some(0)
    }
}

/// One agent of a job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobTarget {
    /// The agent.
    pub agent: AgentName,
    /// Where it is.
    pub state: TargetState,
    /// Steps started so far, in order; the last one is current while the target runs.
    #[serde(default)]
    pub steps: Vec<StepOutcome>,
    /// Why it was skipped or failed, in a few words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When its first step was started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<UnixMillis>,
    /// When it reached its final state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<UnixMillis>,
}

/// One job as the hub knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobInfo {
    /// Job id.
    pub id: JobId,
    /// What was asked for.
    pub spec: JobSpec,
    /// Where it is.
    pub state: JobState,
    /// Target counts.
    pub progress: JobProgress,
    /// Targets in progress at once.
    pub batch_limit: u32,
    /// Who asked for it (the API key's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
    /// The idempotency key it was created with, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Whether a client asked to cancel it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancel_requested: bool,
    /// When the hub accepted it.
    pub created_ms: UnixMillis,
    /// When it reached its final state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<UnixMillis>,
    /// Targets sorted by agent name: every one, or the first page of them
    /// when `targets_next_cursor` is set (read the rest with `job.targets`).
    /// Absent from `job.list`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<JobTarget>,
    /// Present when `targets` holds only the first page: pass it as `cursor`
    /// to `job.targets` for the next one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targets_next_cursor: Option<String>,
}

impl JobInfo {
    /// The name for people: the spec's, or the first step's command.
    pub fn display_name(&self) -> String {
        self.spec.name.clone().unwrap_or_else(|| {
            self.spec
                .steps
                .first()
                .map(|s| s.command.display())
                .unwrap_or_default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_sizes_parse_round_up_and_never_drop_below_one() {
        let size = |s: &str| s.parse::<BatchSize>();
        assert_eq!(size("2"), Ok(BatchSize::Count(2)));
        assert_eq!(size("25%"), Ok(BatchSize::Percent(25)));
        for bad in ["0", "0%", "101%", "-1", "x", "%", "2.5", " 2"] {
            assert!(size(bad).is_err(), "{bad:?} should be refused");
        }
        assert_eq!(BatchSize::Percent(25).limit(10), 3, "2.5 rounds up");
        assert_eq!(BatchSize::Percent(25).limit(200), 50);
        assert_eq!(BatchSize::Percent(1).limit(3), 1);
        assert_eq!(BatchSize::Percent(100).limit(7), 7);
        assert_eq!(BatchSize::Count(5).limit(2), 5);
        assert_eq!(BatchSize::Count(1).limit(0), 1);
        assert_eq!(BatchSize::Percent(50).to_string(), "50%");
        let wire = serde_json::to_string(&BatchSize::Percent(50)).unwrap();
        assert_eq!(wire, r#"{"percent":50}"#);
    }

    #[test]
    fn a_step_end_carries_its_outcome_at_the_top_level() {
        let text = r#"{"job":"01JD3Y5RQ8ZB4N6W2K7T9VXM3C","seq":7,"ts_ms":1,"agent":"web-2","step":1,"name":"migrate","run":"01JD3Y6DWB2K9N6T4XM8QR1V3F","state":"completed","exit_code":3,"continued":true}"#;
        let event: crate::messages::StepEndedEvent = serde_json::from_str(text).unwrap();
        assert_eq!(event.outcome.step, 1);
        assert_eq!(event.outcome.exit_code, Some(3));
        assert!(!event.outcome.succeeded());
        assert!(event.continued);
        let wire = serde_json::to_value(&event).unwrap();
        let expected: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(wire, expected, "the same members, none nested");
    }
}
