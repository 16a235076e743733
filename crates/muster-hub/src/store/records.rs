//! What the store keeps: stored records, the typed changes the writer
//! commits, and the snapshot the hub loads at startup.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use muster_proto::actions::{ActionInfo, ExecMode};
use muster_proto::jobs::{JobInfo, JobTarget};
use muster_proto::messages::{MetricsSample, StoredEvent};
use muster_proto::{
    AgentName, JobId, OutputFrame, OutputHeader, OutputStream, RunId, RunInfo, UnixMillis,
};
use serde::{Deserialize, Serialize};

/// An agent's labels. Shared: the registry hands agents that report the same
/// set one copy of it (see `engine::registry`).
pub type Labels = Arc<BTreeMap<String, String>>;

/// A stored API key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKeyRecord {
    /// Public half of the token.
    pub key_id: String,
    /// Human name (`admin`, `dev`, …).
    pub name: String,
    /// Role: `admin`, `operator` or `viewer`.
    pub role: String,
    /// SHA-256 of the secret half.
    pub secret_hash: Vec<u8>,
    /// The label selector the key is confined to; `None`: every agent.
    pub scope: Option<String>,
    /// When the key stops working; `None`: never.
    pub expires_ms: Option<UnixMillis>,
}

/// A stored enrollment token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnrollmentRecord {
    /// Public half of the token.
    pub token_id: String,
    /// SHA-256 of the secret half.
    pub secret_hash: Vec<u8>,
    /// Registered labels of the agents it enrolls.
    pub labels: BTreeMap<String, String>,
    /// How many more agents it may register.
    pub uses_left: u32,
    /// When it stops working.
    pub expires_ms: UnixMillis,
    /// When it was made.
    pub created_ms: UnixMillis,
    /// The name of the API key that made it.
    pub created_by: String,
}

/// Facts an agent reports in its `hello`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentFacts {
    /// Host name.
    pub hostname: String,
    /// Operating system.
    pub os: String,
    /// Architecture.
    pub arch: String,
    /// Agent version.
    pub version: String,
    /// Labels from the agent's own flags.
    pub labels: Labels,
    /// Concurrency limit.
    pub max_concurrency: u32,
    /// Raw commands, or declared actions only.
    #[serde(default)]
    pub exec: ExecMode,
    /// Declared actions.
    #[serde(default)]
    pub actions: Vec<ActionInfo>,
}

/// A stored agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentRecord {
    /// Unique name.
    pub name: AgentName,
    /// Labels given at registration.
    pub labels: Labels,
    /// Public half of its token.
    pub key_id: String,
    /// SHA-256 of the secret half.
    pub secret_hash: Vec<u8>,
    /// What it last reported.
    pub facts: Option<AgentFacts>,
    /// Last time it was heard from.
    pub last_seen_ms: Option<UnixMillis>,
}

/// One stored output chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredChunk {
    /// Chunk number within the run.
    pub seq: u64,
    /// Stream.
    pub stream: OutputStream,
    /// Byte offset within the stream.
    pub offset: u64,
    /// Sessions: when the agent read it.
    pub at: Option<UnixMillis>,
    /// Bytes.
    pub data: Bytes,
}

impl StoredChunk {
    /// The binary frame of run `run` that carried this chunk, with `data`
    /// as its payload (the chunk's own bytes, or the same bytes as read).
    pub fn frame(&self, run: RunId, data: &[u8]) -> Bytes {
        let header = OutputHeader {
            run,
            stream: self.stream,
            seq: self.seq,
            offset: self.offset,
            at: self.at,
        };
        OutputFrame::encode(&header, data)
    }
}

/// One input a session accepted, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredInput {
    /// The session.
    pub run: RunId,
    /// The hub's number for it: 1, 2, … per session.
    pub seq: u64,
    /// The writer that sent it.
    pub writer: String,
    /// The writer's own number for it.
    pub writer_seq: u64,
    /// Who: the API key's name.
    pub from: String,
    /// When the hub accepted it.
    pub at: UnixMillis,
    /// What to write.
    pub data: String,
}

/// What a restarted hub needs to go on with a session in flight.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionRecovery {
    /// The last input the agent reported applied.
    pub applied: u64,
    /// The hub seq of the last input accepted (0 when none).
    pub last_input: u64,
    /// Inputs accepted and not reported applied, in order.
    pub pending: Vec<StoredInput>,
    /// Each writer's last accepted seq.
    pub writers: Vec<(String, u64)>,
    /// Output bytes stored.
    pub stored_bytes: u64,
}

/// How long metrics are kept, and at which resolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricsRetention {
    /// Raw samples younger than this are kept as they are.
    pub raw_keep_ms: u64,
    /// Older samples are replaced by one average per window of this length.
    pub window_ms: u64,
    /// Averages older than this are deleted.
    pub rollup_keep_ms: u64,
}

/// One change the writer commits. Each is idempotent: committing it twice
/// leaves the store as committing it once.
#[derive(Clone, Debug)]
pub enum Change {
    /// Adds an API key.
    InsertApiKey(ApiKeyRecord, UnixMillis),
    /// Deletes every API key with this name.
    DeleteApiKeysNamed(String),
    /// Deletes one API key, by key id.
    DeleteApiKey(String),
    /// Sets when one API key (by key id) stops working.
    SetApiKeyExpiry(String, UnixMillis),
    /// Stores a setting the hub generated, under its name (replacing it).
    SetSetting(String, Vec<u8>),
    /// Appends an entry to the audit log (ignored if its seq is stored).
    AppendAudit(Box<muster_proto::messages::AuditEntry>),
    /// Registers an agent.
    InsertAgent(AgentRecord, UnixMillis),
    /// Replaces an agent's credential.
    SetAgentCredential {
        /// Agent.
        name: AgentName,
        /// Public half of the new token.
        key_id: String,
        /// SHA-256 of the new secret half.
        secret_hash: Vec<u8>,
    },
    /// Replaces an agent's registered labels.
    SetAgentLabels(AgentName, Labels),
    /// Records when an agent was heard from, and what it reported.
    AgentSeen(AgentName, Option<AgentFacts>, UnixMillis),
    /// Removes an agent.
    DeleteAgent(AgentName),
    /// Adds a run.
    InsertRun(Box<RunInfo>),
    /// Writes a run's changing fields; the request part never changes after
    /// the insert.
    UpdateRun(Box<RunUpdate>),
    /// Stores an output chunk (ignored if its seq is stored).
    AppendOutput(RunId, StoredChunk),
    /// Stores an input a session accepted (ignored if its seq is stored).
    AppendInput(Box<StoredInput>),
    /// Records the last input of a session the agent applied (never lowers it).
    InputApplied(RunId, u64),
    /// Drops a session's oldest output chunks until at most this many bytes
    /// of it are left (its scrollback).
    TrimOutput(RunId, u64),
    /// Stores a raw metrics sample.
    InsertMetrics(AgentName, Box<MetricsSample>),
    /// Rolls old samples up and deletes expired averages.
    CompactMetrics(MetricsRetention, UnixMillis),
    /// Stores an agent event under its seq.
    AppendEvent(Box<StoredEvent>),
    /// Adds a job and all its targets.
    InsertJob(Box<JobInfo>),
    /// Rewrites a job's record (its targets are written separately).
    UpdateJob(Box<JobInfo>),
    /// Rewrites some of a job's targets.
    UpdateTargets(JobId, Vec<JobTarget>),
    /// Stores events published on `job:<id>`: seq and envelope text.
    AppendJobEvents(JobId, Vec<(u64, String)>),
    /// Adds an enrollment token (ignored if its id is stored).
    InsertEnrollment(Box<EnrollmentRecord>),
    /// Sets how many uses an enrollment token has left: the count after a
    /// use, not a decrement, so committing it twice counts the use once.
    SetEnrollmentUses {
        /// Public half of the token.
        token_id: String,
        /// Uses left.
        uses_left: u32,
    },
    /// Removes an enrollment token.
    DeleteEnrollment(String),
}

/// The fields of a run that change after it is created, written narrowly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunUpdate {
    /// Run id.
    pub id: RunId,
    /// Lifecycle state.
    pub state: muster_proto::RunState,
    /// Process exit code.
    pub exit_code: Option<i32>,
    /// Signal that killed the process.
    pub signal: Option<i32>,
    /// Why it failed, was lost, expired or was rejected.
    pub error: Option<String>,
    /// Machine-readable reason of a rejection.
    pub error_code: Option<muster_proto::ErrorCode>,
    /// Process id on the agent's host.
    pub pid: Option<u32>,
    /// Output bytes stored.
    pub output_bytes: u64,
    /// Whether output past the cap was dropped.
    pub output_truncated: bool,
    /// When it was sent to the agent.
    pub dispatched_ms: Option<UnixMillis>,
    /// When the process started.
    pub started_ms: Option<UnixMillis>,
    /// When it reached its terminal state.
    pub finished_ms: Option<UnixMillis>,
}

impl RunUpdate {
    /// The changing fields of `run`.
    pub fn of(run: &RunInfo) -> Self {
        Self {
            id: run.id,
            state: run.state,
            exit_code: run.exit_code,
            signal: run.signal,
            error: run.error.clone(),
            error_code: run.error_code,
            pid: run.pid,
            output_bytes: run.output_bytes,
            output_truncated: run.output_truncated,
            dispatched_ms: run.dispatched_ms,
            started_ms: run.started_ms,
            finished_ms: run.finished_ms,
        }
    }

    /// Writes these fields over `run`.
    pub fn apply(&self, run: &mut RunInfo) {
        run.state = self.state;
        run.exit_code = self.exit_code;
        run.signal = self.signal;
        run.error = self.error.clone();
        run.error_code = self.error_code;
        run.pid = self.pid;
        run.output_bytes = self.output_bytes;
        run.output_truncated = self.output_truncated;
        run.dispatched_ms = self.dispatched_ms;
        run.started_ms = self.started_ms;
        run.finished_ms = self.finished_ms;
    }
}

/// A run not yet in a terminal state, as stored.
#[derive(Clone, Debug)]
pub struct UnfinishedRun {
    /// The run.
    pub run: RunInfo,
    /// The seq after its highest stored chunk.
    pub next_seq: u64,
    /// For a session: its inputs.
    pub session: Option<SessionRecovery>,
}

/// A job still running, as stored.
#[derive(Clone, Debug)]
pub struct UnfinishedJob {
    /// The job with every target.
    pub job: JobInfo,
    /// The seq after its highest stored event.
    pub next_seq: u64,
}

/// What the hub keeps in memory, read at startup.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Every API key.
    pub api_keys: Vec<ApiKeyRecord>,
    /// Every registered agent.
    pub agents: Vec<AgentRecord>,
    /// Every enrollment token, used up and expired ones included.
    pub enrollments: Vec<EnrollmentRecord>,
    /// Runs not in a terminal state, oldest first.
    pub runs: Vec<UnfinishedRun>,
    /// Jobs still running, oldest first.
    pub jobs: Vec<UnfinishedJob>,
    /// The runs of those jobs' current steps that have ended, so the jobs
    /// can catch up with them.
    pub job_runs: Vec<RunInfo>,
    /// The seq of each agent's next event (agents with no event are absent).
    pub event_seqs: Vec<(AgentName, u64)>,
    /// The seq the next audit entry gets.
    pub next_audit_seq: u64,
    /// The secret that signs browser tokens, once generated.
    pub browser_token_secret: Option<Vec<u8>>,
}
