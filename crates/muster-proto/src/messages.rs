//! Every text message, grouped by direction.
//!
//! Each enum is adjacently tagged: the variant's name is the envelope's `type`
//! and its payload is `data`. Replies use the same `type` vocabulary and name the
//! request they answer in the envelope's `re`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::UnixMillis;
use crate::actions::{ActionInfo, ExecMode};
use crate::codes::ErrorCode;
use crate::enroll::{EnrollCreate, EnrollCreated, EnrollList, EnrollRef, Enrolled};
use crate::ids::{AgentName, JobId, RunId};
use crate::jobs::{JobInfo, JobProgress, JobSpec, JobState, TargetState};
use crate::limits::Limits;
use crate::roles::Role;
use crate::selector::Selector;
use crate::sessions::{
    SessionApplied, SessionAttach, SessionAttached, SessionDeliver, SessionInput, SessionInputAck,
    SessionPresence, SessionRef, SessionResize, SessionScreen, SessionSnapshot, SessionSpec,
};
use crate::types::{AgentInfo, CommandSpec, RunInfo, RunRequest, RunState};

/// A message family that can travel in an [`Envelope`](crate::Envelope).
pub trait Message: Serialize + serde::de::DeserializeOwned {
    /// Every `type` this family knows, to tell an unknown type from invalid data.
    const TYPES: &'static [&'static str];
}

/// Messages a client sends to the hub.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum ClientToHub {
    /// First message on a connection: authenticate.
    #[serde(rename = "hello")]
    Hello(ClientHello),
    /// Keep-alive; the hub answers `heartbeat.ack` with the same `seq`.
    #[serde(rename = "heartbeat")]
    Heartbeat(Heartbeat),
    /// Answer to a hub heartbeat.
    #[serde(rename = "heartbeat.ack")]
    HeartbeatAck(Heartbeat),
    /// List registered agents, all or those a selector matches; reply `agent.list`.
    #[serde(rename = "agent.list")]
    AgentList(AgentListQuery),
    /// One agent; reply `agent.info`.
    #[serde(rename = "agent.get")]
    AgentGet(AgentRef),
    /// Register an agent and mint its token; reply `agent.added`.
    #[serde(rename = "agent.add")]
    AgentAdd(AgentAdd),
    /// Unregister an agent, revoke its token and close its connection; reply `agent.removed`.
    #[serde(rename = "agent.remove")]
    AgentRemove(AgentRef),
    /// Set and remove registered labels of an agent; reply `agent.info`.
    #[serde(rename = "agent.label")]
    AgentLabel(AgentLabel),
    /// Create a run; reply `run.accepted` at once.
    #[serde(rename = "run.create")]
    RunCreate(RunCreate),
    /// One run; reply `run.info`.
    #[serde(rename = "run.get")]
    RunGet(RunRef),
    /// Stored metric samples of an agent; reply `metrics.series`.
    #[serde(rename = "metrics.query")]
    MetricsQuery(MetricsQuery),
    /// Recent runs, newest first; reply `run.list`.
    #[serde(rename = "run.list")]
    RunList(RunListQuery),
    /// Cancel a run: dequeue it, or kill its process group; reply `ok`.
    #[serde(rename = "run.cancel")]
    RunCancel(RunRef),
    /// Create a job over the agents a selector matches; reply `job.accepted`.
    #[serde(rename = "job.create")]
    JobCreate(JobCreate),
    /// One job with its targets; reply `job.info`.
    #[serde(rename = "job.get")]
    JobGet(JobRef),
    /// Recent jobs, newest first, without targets; reply `job.list`.
    #[serde(rename = "job.list")]
    JobList(JobListQuery),
    /// One page of a job's targets; reply `job.targets`.
    #[serde(rename = "job.targets")]
    JobTargets(JobTargetsQuery),
    /// Cancel a job: waiting targets end `cancelled`, running ones are killed; reply `ok`.
    #[serde(rename = "job.cancel")]
    JobCancel(JobRef),
    /// Subscribe to a channel, optionally replaying a stream from `since`; reply `subscribed`.
    #[serde(rename = "subscribe")]
    Subscribe(Subscribe),
    /// Stop receiving a channel; reply `ok`.
    #[serde(rename = "unsubscribe")]
    Unsubscribe(ChannelRef),
    /// Mint an API key with a role; reply `key.created`, its token shown once.
    #[serde(rename = "key.create")]
    KeyCreate(KeyCreate),
    /// List the API keys (never their tokens); reply `key.list`.
    #[serde(rename = "key.list")]
    KeyList(Empty),
    /// Revoke every API key of a name and close its connections; reply `key.revoked`.
    #[serde(rename = "key.revoke")]
    KeyRevoke(KeyRef),
    /// Give a connected agent a new credential over its connection; reply
    /// `agent.token_rotated` once the agent stored it and the old one is void.
    #[serde(rename = "agent.rotate_token")]
    AgentRotateToken(AgentRef),
    /// Mint a new token for a key name, retiring the old one now or after an
    /// overlap; reply `key.rotated`.
    #[serde(rename = "key.rotate")]
    KeyRotate(KeyRotate),
    /// Read the audit log, oldest first; reply `audit.list`.
    #[serde(rename = "audit.list")]
    AuditList(AuditListQuery),
    /// Mint an enrollment token that registers new agents; reply
    /// `enroll.created`, its token shown once.
    #[serde(rename = "enroll.create")]
    EnrollCreate(EnrollCreate),
    /// List the enrollment tokens (never their secrets); reply `enroll.list`.
    #[serde(rename = "enroll.list")]
    EnrollList(Empty),
    /// Revoke an enrollment token; reply `enroll.revoked`.
    #[serde(rename = "enroll.revoke")]
    EnrollRevoke(EnrollRef),
    /// Attach to a session as a viewer or a writer.
    #[serde(rename = "session.attach")]
    SessionAttach(SessionAttach),
    /// Detach from a session.
    #[serde(rename = "session.detach")]
    SessionDetach(SessionRef),
    /// Input for a session, numbered by the writer.
    #[serde(rename = "session.input")]
    SessionInput(SessionInput),
    /// Resize a pty session's terminal.
    #[serde(rename = "session.resize")]
    SessionResize(SessionResize),
    /// Ask for a pty session's current screen.
    #[serde(rename = "session.snapshot")]
    SessionSnapshot(SessionSnapshot),
}

impl ClientToHub {
    /// The message's `type`, as on the wire.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Hello(_) => "hello",
            Self::Heartbeat(_) => "heartbeat",
            Self::HeartbeatAck(_) => "heartbeat.ack",
            Self::AgentList(_) => "agent.list",
            Self::AgentGet(_) => "agent.get",
            Self::AgentAdd(_) => "agent.add",
            Self::AgentRemove(_) => "agent.remove",
            Self::AgentLabel(_) => "agent.label",
            Self::RunCreate(_) => "run.create",
            Self::RunGet(_) => "run.get",
            Self::MetricsQuery(_) => "metrics.query",
            Self::RunList(_) => "run.list",
            Self::RunCancel(_) => "run.cancel",
            Self::JobCreate(_) => "job.create",
            Self::JobGet(_) => "job.get",
            Self::JobList(_) => "job.list",
            Self::JobTargets(_) => "job.targets",
            Self::JobCancel(_) => "job.cancel",
            Self::Subscribe(_) => "subscribe",
            Self::Unsubscribe(_) => "unsubscribe",
            Self::KeyCreate(_) => "key.create",
            Self::KeyList(_) => "key.list",
            Self::KeyRevoke(_) => "key.revoke",
            Self::AgentRotateToken(_) => "agent.rotate_token",
            Self::KeyRotate(_) => "key.rotate",
            Self::AuditList(_) => "audit.list",
            Self::EnrollCreate(_) => "enroll.create",
            Self::EnrollList(_) => "enroll.list",
            Self::EnrollRevoke(_) => "enroll.revoke",
            Self::SessionAttach(_) => "session.attach",
            Self::SessionDetach(_) => "session.detach",
            Self::SessionInput(_) => "session.input",
            Self::SessionResize(_) => "session.resize",
            Self::SessionSnapshot(_) => "session.snapshot",
        }
    }
}

impl Message for ClientToHub {
    const TYPES: &'static [&'static str] = &[
        "hello",
        "heartbeat",
        "heartbeat.ack",
        "agent.list",
        "agent.get",
        "agent.add",
        "agent.remove",
        "agent.label",
        "run.create",
        "run.get",
        "run.list",
        "run.cancel",
        "metrics.query",
        "job.create",
        "job.get",
        "job.list",
        "job.targets",
        "job.cancel",
        "subscribe",
        "unsubscribe",
        "key.create",
        "key.list",
        "key.revoke",
        "agent.rotate_token",
        "key.rotate",
        "audit.list",
        "enroll.create",
        "enroll.list",
        "enroll.revoke",
        "session.attach",
        "session.detach",
        "session.input",
        "session.resize",
        "session.snapshot",
    ];
}

/// Messages the hub sends to a client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum HubToClient {
    /// Handshake accepted: version, limits, heartbeat timing.
    #[serde(rename = "connection.ack")]
    ConnectionAck(ConnectionAck),
    /// Keep-alive from the hub; answer `heartbeat.ack`.
    #[serde(rename = "heartbeat")]
    Heartbeat(Heartbeat),
    /// Answer to a client heartbeat.
    #[serde(rename = "heartbeat.ack")]
    HeartbeatAck(Heartbeat),
    /// Every agent: sent after `connection.ack`, and as the reply to `agent.list`.
    #[serde(rename = "agent.list")]
    AgentList(AgentList),
    /// One agent.
    #[serde(rename = "agent.info")]
    AgentInfo(AgentEnvelope),
    /// A newly registered agent and its token, shown this once.
    #[serde(rename = "agent.added")]
    AgentAdded(AgentAdded),
    /// An agent was removed.
    #[serde(rename = "agent.removed")]
    AgentRemoved(AgentRef),
    /// Event on `fleet`: an agent's presence or details changed.
    #[serde(rename = "agent.status")]
    AgentStatus(AgentEnvelope),
    /// Reply to `run.create`.
    #[serde(rename = "run.accepted")]
    RunAccepted(RunAccepted),
    /// One run.
    #[serde(rename = "run.info")]
    RunInfo(RunEnvelope),
    /// Several runs.
    #[serde(rename = "run.list")]
    RunList(RunList),
    /// Event on `run:<id>`: the run changed state.
    #[serde(rename = "run.status")]
    RunStatus(RunEnvelope),
    /// Event on `run:<id>`: the run's position in its agent's queue changed.
    #[serde(rename = "run.queue")]
    RunQueue(RunQueue),
    /// Event on `agent:<name>`: a stored event the agent published, with its offset.
    #[serde(rename = "agent.event")]
    AgentEvent(StoredEvent),
    /// Event on `metrics:<name>`: a new sample from the agent.
    #[serde(rename = "metrics.sample")]
    MetricsSample(AgentSample),
    /// Reply to `metrics.query`.
    #[serde(rename = "metrics.series")]
    MetricsSeries(MetricsSeries),
    /// Reply to `job.create`.
    #[serde(rename = "job.accepted")]
    JobAccepted(JobAccepted),
    /// One job, with its targets.
    #[serde(rename = "job.info")]
    JobInfo(JobEnvelope),
    /// Several jobs, without targets.
    #[serde(rename = "job.list")]
    JobList(JobList),
    /// One page of a job's targets.
    #[serde(rename = "job.targets")]
    JobTargets(JobTargets),
    /// Event on `job:<id>`: target counts or the job's state changed.
    #[serde(rename = "job.progress")]
    JobProgress(JobProgressEvent),
    /// Event on `job:<id>`: a target started a step (its run was created).
    #[serde(rename = "job.step.started")]
    JobStepStarted(StepStartedEvent),
    /// Event on `job:<id>`: a step's process published an event (`muster emit`).
    #[serde(rename = "job.step.progress")]
    JobStepProgress(StepProgressEvent),
    /// Event on `job:<id>`: a step's run exited 0.
    #[serde(rename = "job.step.completed")]
    JobStepCompleted(StepEndedEvent),
    /// Event on `job:<id>`: a step's run ended any other way.
    #[serde(rename = "job.step.failed")]
    JobStepFailed(StepEndedEvent),
    /// Event on `job:<id>`: a target reached its final state.
    #[serde(rename = "job.target")]
    JobTarget(TargetEvent),
    /// Reply to `subscribe`.
    #[serde(rename = "subscribed")]
    Subscribed(Subscribed),
    /// Event on a stream channel: the replay requested by `subscribe` is complete;
    /// what follows is live.
    #[serde(rename = "stream.synced")]
    StreamSynced(StreamSynced),
    /// Reply to `key.create`.
    #[serde(rename = "key.created")]
    KeyCreated(KeyCreated),
    /// Reply to `key.list`.
    #[serde(rename = "key.list")]
    KeyList(KeyList),
    /// Reply to `key.revoke`.
    #[serde(rename = "key.revoked")]
    KeyRevoked(KeyRevoked),
    /// Reply to `agent.rotate_token`.
    #[serde(rename = "agent.token_rotated")]
    AgentTokenRotated(AgentRef),
    /// Reply to `key.rotate`.
    #[serde(rename = "key.rotated")]
    KeyRotated(KeyRotated),
    /// Reply to `audit.list`.
    #[serde(rename = "audit.list")]
    AuditList(AuditList),
    /// Event on `audit`: an entry was appended to the audit log.
    #[serde(rename = "audit.entry")]
    AuditEntry(AuditEntry),
    /// Reply to `enroll.create`.
    #[serde(rename = "enroll.created")]
    EnrollCreated(EnrollCreated),
    /// Reply to `enroll.list`.
    #[serde(rename = "enroll.list")]
    EnrollList(EnrollList),
    /// Reply to `enroll.revoke`.
    #[serde(rename = "enroll.revoked")]
    EnrollRevoked(EnrollRef),
    /// Answer to `session.attach`.
    #[serde(rename = "session.attached")]
    SessionAttached(SessionAttached),
    /// Answer to `session.input`: stored, and will be applied exactly once.
    #[serde(rename = "session.input.ack")]
    SessionInputAck(SessionInputAck),
    /// Answer to `session.snapshot`.
    #[serde(rename = "session.screen")]
    SessionScreen(SessionScreen),
    /// Someone attached to a session (on `session:<id>`).
    #[serde(rename = "session.joined")]
    SessionJoined(SessionPresence),
    /// Someone detached from a session (on `session:<id>`).
    #[serde(rename = "session.left")]
    SessionLeft(SessionPresence),
    /// Generic success reply.
    #[serde(rename = "ok")]
    Ok(Empty),
    /// A request failed, or a message could not be handled.
    #[serde(rename = "error")]
    Error(ErrorData),
}

impl Message for HubToClient {
    const TYPES: &'static [&'static str] = &[
        "connection.ack",
        "heartbeat",
        "heartbeat.ack",
        "agent.list",
        "agent.info",
        "agent.added",
        "agent.removed",
        "agent.status",
        "run.accepted",
        "run.info",
        "run.list",
        "run.status",
        "run.queue",
        "agent.event",
        "metrics.sample",
        "metrics.series",
        "job.accepted",
        "job.info",
        "job.list",
        "job.targets",
        "job.progress",
        "job.step.started",
        "job.step.progress",
        "job.step.completed",
        "job.step.failed",
        "job.target",
        "key.created",
        "key.list",
        "key.revoked",
        "agent.token_rotated",
        "key.rotated",
        "audit.list",
        "audit.entry",
        "enroll.created",
        "enroll.list",
        "enroll.revoked",
        "session.attached",
        "session.input.ack",
        "session.screen",
        "session.joined",
        "session.left",
        "subscribed",
        "stream.synced",
        "ok",
        "error",
    ];
}

/// Messages an agent sends to the hub (output travels in binary frames).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum AgentToHub {
    /// First message on a connection: authenticate and describe the host.
    #[serde(rename = "hello")]
    Hello(AgentHello),
    /// Keep-alive; the hub answers `heartbeat.ack`.
    #[serde(rename = "heartbeat")]
    Heartbeat(Heartbeat),
    /// Answer to a hub heartbeat.
    #[serde(rename = "heartbeat.ack")]
    HeartbeatAck(Heartbeat),
    /// The process of a run started.
    #[serde(rename = "run.started")]
    RunStarted(RunStarted),
    /// A run ended; sent after its last output frame.
    #[serde(rename = "run.exited")]
    RunExited(RunExited),
    /// A periodic sample of the host's resources.
    #[serde(rename = "metrics")]
    Metrics(MetricsSample),
    /// An event a program on the agent published (`muster emit`).
    #[serde(rename = "event")]
    Event(AgentEvent),
    /// Answer to `credential.rotate`: whether the new credential is stored.
    #[serde(rename = "credential.stored")]
    CredentialStored(CredentialStored),
    /// A session's inputs up to `seq` were applied.
    #[serde(rename = "session.input.ack")]
    SessionApplied(SessionApplied),
    /// Answer to `session.snapshot`.
    #[serde(rename = "session.screen")]
    SessionScreen(SessionScreen),
    /// The agent could not handle a hub message.
    #[serde(rename = "error")]
    Error(ErrorData),
}

impl Message for AgentToHub {
    const TYPES: &'static [&'static str] = &[
        "hello",
        "heartbeat",
        "heartbeat.ack",
        "run.started",
        "run.exited",
        "metrics",
        "event",
        "credential.stored",
        "session.input.ack",
        "session.screen",
        "error",
    ];
}

/// Messages the hub sends to an agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum HubToAgent {
    /// Handshake accepted.
    #[serde(rename = "connection.ack")]
    ConnectionAck(ConnectionAck),
    /// Keep-alive from the hub; answer `heartbeat.ack`.
    #[serde(rename = "heartbeat")]
    Heartbeat(Heartbeat),
    /// Answer to an agent heartbeat.
    #[serde(rename = "heartbeat.ack")]
    HeartbeatAck(Heartbeat),
    /// Start a run.
    #[serde(rename = "run.start")]
    RunStart(RunStart),
    /// Kill a run's process group (SIGTERM, grace, SIGKILL).
    #[serde(rename = "run.cancel")]
    RunCancel(RunRef),
    /// The hub has stored a run's output below `next_seq` (and its exit report,
    /// if `exited`); the agent may drop them from its spool.
    #[serde(rename = "run.ack")]
    RunAck(RunAck),
    /// A new credential for this agent: store it, answer `credential.stored`,
    /// and use it from the next connection on.
    #[serde(rename = "credential.rotate")]
    CredentialRotate(CredentialRotate),
    /// Answer to a `hello` with an enrollment token: the agent is registered
    /// under `name` and `token` is its own; the hub then closes with 1000.
    #[serde(rename = "enrolled")]
    Enrolled(Enrolled),
    /// Input for a session, numbered by the hub: apply each `seq` once, in order.
    #[serde(rename = "session.input")]
    SessionInput(SessionDeliver),
    /// Resize a pty session's terminal.
    #[serde(rename = "session.resize")]
    SessionResize(SessionResize),
    /// Answer with `session.screen` (same `token`).
    #[serde(rename = "session.snapshot")]
    SessionSnapshot(SessionSnapshot),
    /// The hub could not handle an agent message.
    #[serde(rename = "error")]
    Error(ErrorData),
}

impl Message for HubToAgent {
    const TYPES: &'static [&'static str] = &[
        "connection.ack",
        "heartbeat",
        "heartbeat.ack",
        "run.start",
        "run.cancel",
        "run.ack",
        "credential.rotate",
        "enrolled",
        "session.input",
        "session.resize",
        "session.snapshot",
        "error",
    ];
}

/// A payload with no fields: `{}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// `hello` from a client.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientHello {
    /// API key.
    pub token: String,
    /// Free-form client name and version, for logs (`muster-cli/0.1.0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
}

impl std::fmt::Debug for ClientHello {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientHello")
            .field("token", &"<redacted>")
            .field("client", &self.client)
            .finish()
    }
}

/// `hello` from an agent.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentHello {
    /// The agent's own token, or an enrollment token (`mse_…`) to register
    /// itself with.
    pub token: String,
    /// The agent's name; if given it must match the token's agent. With an
    /// enrollment token, the name to register under (the host name when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<AgentName>,
    /// Host name.
    #[serde(default)]
    pub hostname: String,
    /// Operating system (`std::env::consts::OS` vocabulary).
    #[serde(default)]
    pub os: String,
    /// CPU architecture (`std::env::consts::ARCH` vocabulary).
    #[serde(default)]
    pub arch: String,
    /// Agent software version.
    #[serde(default)]
    pub version: String,
    /// Labels from the agent's flags; they override registered labels with the same key.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Features the agent supports (`exec`, `actions`, …).
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Whether the agent runs raw commands, or its declared actions only.
    #[serde(default, skip_serializing_if = "ExecMode::is_any")]
    pub exec: ExecMode,
    /// The actions the agent declares.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<ActionInfo>,
    /// How many runs the agent executes at once (at least 1).
    pub max_concurrency: u32,
    /// Every run the agent still knows about: running, or finished with a report
    /// the hub has not acknowledged, or started before a crash of the agent.
    #[serde(default)]
    pub runs: Vec<RunReport>,
}

/// What an agent knows of one run, in its `hello`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunReport {
    /// Run id.
    pub run: RunId,
    /// Where the run is, as far as the agent knows.
    pub status: RunReportStatus,
    /// A session: the last hub input `seq` applied (0 when none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_applied: Option<u64>,
}

/// A run's status in a [`RunReport`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunReportStatus {
    /// The process is still running; its output continues on this connection.
    Running,
    /// The process ended; unacknowledged output and `run.exited` follow the hello.
    Finished,
    /// The agent started it, then lost track of it (it restarted); the outcome is unknown.
    Unknown,
}

/// `run.ack`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunAck {
    /// Run id.
    pub run: RunId,
    /// Every output frame with a lower `seq` is stored.
    pub next_seq: u64,
    /// The run's `run.exited` is stored too: the agent can forget the run.
    #[serde(default)]
    pub exited: bool,
}

impl std::fmt::Debug for AgentHello {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentHello")
            .field("token", &"<redacted>")
            .field("name", &self.name)
            .field("hostname", &self.hostname)
            .field("version", &self.version)
            .field("max_concurrency", &self.max_concurrency)
            .finish_non_exhaustive()
    }
}

/// What the authenticated peer is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// `client` or `agent`.
    pub kind: String,
    /// API key name, or agent name.
    pub name: String,
    /// Role of an API key (`admin`, `operator`, `viewer`); absent for agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// The label selector a scoped key is confined to: it sees, runs on and
    /// subscribes to only the agents this matches. Absent: every agent.
    /// (Boxed: every connection keeps its principal, and few are scoped.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<Box<Selector>>,
}

/// `connection.ack`: the handshake succeeded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionAck {
    /// Protocol version (`1.0`).
    pub protocol: String,
    /// Hub software version.
    pub hub_version: String,
    /// Identifier of this connection, for logs.
    pub connection_id: String,
    /// Who the hub authenticated.
    pub principal: Principal,
    /// Interval at which each side sends `heartbeat`.
    pub heartbeat_interval_ms: u64,
    /// Silence after which the hub closes the connection.
    pub heartbeat_deadline_ms: u64,
    /// Limits in force.
    pub limits: Limits,
}

/// `heartbeat` and `heartbeat.ack`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Sender's counter, echoed by the ack.
    pub seq: u64,
}

/// A reference to an agent by name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRef {
    /// Agent name.
    pub name: AgentName,
}

/// `agent.list` request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentListQuery {
    /// Only agents this selector matches (`role=web,env!=prod`, `web-*`, `all`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Continue after the page that returned this `next_cursor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// At most this many agents (default and most: 500; fewer when their
    /// records would not fit in one message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// `agent.add`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentAdd {
    /// New agent's name.
    pub name: AgentName,
    /// Registered labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// `agent.label`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentLabel {
    /// Agent name.
    pub name: AgentName,
    /// Labels to set (added, or replacing the value of the same key).
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Label keys to remove.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// `agent.added`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentAdded {
    /// The registered agent.
    pub agent: AgentInfo,
    /// Its token. The hub keeps only a hash; this is the only time it is shown.
    pub token: String,
}

impl std::fmt::Debug for AgentAdded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentAdded")
            .field("agent", &self.agent)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// A list of agents.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentList {
    /// Agents sorted by name.
    pub agents: Vec<AgentInfo>,
    /// Present when more agents follow: pass it as `cursor` to get the next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// One agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentEnvelope {
    /// The agent.
    pub agent: AgentInfo,
}

/// `run.create`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunCreate {
    /// What to run and where.
    #[serde(flatten)]
    pub request: RunRequest,
    /// Subscribe this connection to `run:<id>` before the run is queued, so no
    /// event or output is missed.
    #[serde(default)]
    pub subscribe: bool,
}

/// `run.accepted`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunAccepted {
    /// The run, in its current state.
    pub run: RunInfo,
    /// False when an idempotency key matched an earlier run, which is returned instead.
    pub created: bool,
}

/// A reference to a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRef {
    /// Run id.
    pub run: RunId,
}

/// `run.list` query.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunListQuery {
    /// Only runs on this agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentName>,
    /// Only runs in this state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<RunState>,
    /// Only sessions (`true`), or only runs that are not sessions (`false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<bool>,
    /// At most this many (default 50, at most 1000; fewer when their records
    /// would not fit in one message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Continue after the page that returned this `next_cursor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// One run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunEnvelope {
    /// The run.
    pub run: RunInfo,
}

/// Several runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunList {
    /// Newest first.
    pub runs: Vec<RunInfo>,
    /// Present when more runs follow: pass it as `cursor` to get the next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `run.queue`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunQueue {
    /// Run id.
    pub run: RunId,
    /// 1-based position in its agent's queue.
    pub position: u32,
}

/// `subscribe`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribe {
    /// Channel name (`fleet`, `run:<id>`).
    pub channel: String,
    /// For stream channels: replay from this sequence number (0 = from the start).
    /// Absent: live only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
}

/// A reference to a channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelRef {
    /// Channel name.
    pub channel: String,
}

/// `subscribed`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribed {
    /// Channel name.
    pub channel: String,
    /// For `run:<id>`: the run as it is now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<RunInfo>,
    /// For `agent:<name>`: the offset the agent's next event will get. Every
    /// event from this offset on reaches this subscription live, so a client
    /// that resubscribes later with `since` set to it misses none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_seq: Option<u64>,
}

/// `stream.synced`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamSynced {
    /// Channel name.
    pub channel: String,
    /// Sequence number of the next frame on the stream.
    pub next_seq: u64,
    /// The run's output was cut at the hub's per-run cap: the replay ended
    /// there, and no frame past it exists or ever will.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// `run.start`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunStart {
    /// Run id.
    pub run: RunId,
    /// What to execute.
    pub command: CommandSpec,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Timeout; the agent enforces it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Time between SIGTERM and SIGKILL when killing the process group.
    pub kill_grace_ms: u64,
    /// Stop sending output past this many bytes (both streams together).
    pub output_cap_bytes: u64,
    /// Present for a session: its kind, window and idle timeout (always set
    /// here). Its `timeout_ms` is the session's maximum lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionSpec>,
}

/// `run.started`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunStarted {
    /// Run id.
    pub run: RunId,
    /// Process id, which is also the process group id.
    pub pid: u32,
}

/// How a run ended, as the agent reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunOutcome {
    /// The process exited or was killed by a signal nobody here sent.
    Completed,
    /// The process could not be started.
    Failed,
    /// The agent killed it on timeout.
    TimedOut,
    /// The agent killed it on `run.cancel`.
    Cancelled,
    /// The agent refused to run it (`error_code` says why); nothing ran.
    Rejected,
}

impl RunOutcome {
    /// The matching terminal run state.
    pub fn state(self) -> RunState {
        match self {
            Self::Completed => RunState::Completed,
            Self::Failed => RunState::Failed,
            Self::TimedOut => RunState::TimedOut,
            Self::Cancelled => RunState::Cancelled,
            Self::Rejected => RunState::Rejected,
        }
    }
}

/// `run.exited`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunExited {
    /// Run id.
    pub run: RunId,
    /// How it ended.
    pub outcome: RunOutcome,
    /// Exit code, when the process exited normally.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Signal that killed the process, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Why it failed to start, or was rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Machine-readable reason of a rejection (`INVALID_PARAMS`,
    /// `UNKNOWN_ACTION`, `COMMANDS_DISABLED`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<ErrorCode>,
    /// Whether the agent discarded output past `output_cap_bytes`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub output_truncated: bool,
}

impl RunExited {
    /// The report of a run whose process exited with 0, all its output kept.
    pub fn completed(run: RunId) -> Self {
        Self {
            run,
            outcome: RunOutcome::Completed,
            exit_code: Some(0),
            signal: None,
            error: None,
            error_code: None,
            output_truncated: false,
        }
    }
}

/// `error`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorData {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Human-readable explanation, lowercase, without a trailing period.
    pub message: String,
    /// Whether retrying later can succeed.
    pub recoverable: bool,
    /// With `RATE_LIMIT`: how long to wait before the same request can pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl ErrorData {
    /// An error with the code's own recoverability.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            recoverable: code.recoverable(),
            retry_after_ms: None,
        }
    }

    /// A `RATE_LIMIT` error whose request can pass again after `retry_after`.
    pub fn rate_limited(message: impl Into<String>, retry_after: std::time::Duration) -> Self {
        Self {
            retry_after_ms: Some(
                u64::try_from(retry_after.as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1),
            ),
            ..Self::new(ErrorCode::RateLimit, message)
        }
    }
}

/// One sample of a host's resources, as an agent measures it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricsSample {
    /// When it was taken.
    pub ts_ms: crate::UnixMillis,
    /// CPU use over the last interval, percent of all cores (0-100).
    pub cpu_percent: f32,
    /// CPU use per core, percent.
    #[serde(default)]
    pub cpu_per_core: Vec<f32>,
    /// Memory in use, bytes.
    pub mem_used_bytes: u64,
    /// Total memory, bytes.
    pub mem_total_bytes: u64,
    /// Swap in use, bytes.
    #[serde(default)]
    pub swap_used_bytes: u64,
    /// Total swap, bytes.
    #[serde(default)]
    pub swap_total_bytes: u64,
    /// Filesystems.
    #[serde(default)]
    pub disks: Vec<DiskUsage>,
    /// Load average over 1, 5 and 15 minutes.
    #[serde(default)]
    pub load: [f64; 3],
    /// Bytes received per second over all non-loopback interfaces, over the last interval.
    #[serde(default)]
    pub net_rx_bytes_per_sec: u64,
    /// Bytes sent per second over all non-loopback interfaces, over the last interval.
    #[serde(default)]
    pub net_tx_bytes_per_sec: u64,
    /// Number of processes.
    #[serde(default)]
    pub processes: u32,
    /// Host uptime, seconds.
    #[serde(default)]
    pub uptime_secs: u64,
}

/// Usage of one mounted filesystem.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskUsage {
    /// Mount point.
    pub mount: String,
    /// Bytes in use.
    pub used_bytes: u64,
    /// Size, bytes.
    pub total_bytes: u64,
}

/// `metrics.sample`: a sample and the agent it came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentSample {
    /// The agent.
    pub agent: AgentName,
    /// The sample.
    pub sample: MetricsSample,
}

/// `metrics.query`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricsQuery {
    /// The agent.
    pub agent: AgentName,
    /// Samples taken at or after this time.
    #[serde(default)]
    pub since_ms: crate::UnixMillis,
}

/// `metrics.series`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricsSeries {
    /// The agent.
    pub agent: AgentName,
    /// Samples, oldest first. Older ones are averages over `resolution_ms`.
    pub samples: Vec<SeriesPoint>,
}

/// One point of a stored series.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SeriesPoint {
    /// 0 for a raw sample; otherwise the length of the window it averages.
    pub resolution_ms: u64,
    /// The sample (for averages: the mean of each field; `ts_ms` is the window start).
    pub sample: MetricsSample,
}

/// `event` from an agent: something a program on the host published.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentEvent {
    /// Dot notation, lowercase: `site.operation`, `git.push.completed`.
    #[serde(rename = "type")]
    pub kind: String,
    /// A JSON object.
    pub data: serde_json::Value,
    /// The run whose process published it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<RunId>,
    /// When the program published it.
    pub ts_ms: crate::UnixMillis,
}

impl AgentEvent {
    /// Largest accepted `data`, serialized.
    pub const MAX_DATA_BYTES: usize = 64 * 1024;
    /// Longest accepted type.
    pub const MAX_TYPE_LEN: usize = 128;

    /// Checks the type syntax (two or more dot-separated words of `[a-z0-9_]`)
    /// and that `data` is an object within the size limit.
    pub fn validate(&self) -> Result<(), String> {
        let words_ok = self.kind.split('.').count() >= 2
            && self.kind.split('.').all(|w| {
                !w.is_empty()
                    && w.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            });
        if !words_ok || self.kind.len() > Self::MAX_TYPE_LEN {
            return Err(format!(
                "invalid event type {:?}: use dot notation like site.operation ([a-z0-9_] words, at most {} characters)",
                self.kind,
                Self::MAX_TYPE_LEN
            ));
        }
        if !self.data.is_object() {
            return Err("event data must be a JSON object".into());
        }
        let size = serde_json::to_string(&self.data)
            .map(|s| s.len())
            .unwrap_or(usize::MAX);
        if size > Self::MAX_DATA_BYTES {
            return Err(format!(
                "event data is {size} bytes; the limit is {}",
                Self::MAX_DATA_BYTES
            ));
        }
        Ok(())
    }
}

/// `agent.event`: an event as the hub stored it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredEvent {
    /// The agent that published it.
    pub agent: AgentName,
    /// Its offset on `agent:<name>`: 0, 1, 2, … without gaps.
    pub seq: u64,
    /// The event.
    #[serde(flatten)]
    pub event: AgentEvent,
}

/// `job.create`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobCreate {
    /// What to run, where and how.
    #[serde(flatten)]
    pub spec: JobSpec,
    /// Subscribe this connection to `job:<id>` before any target starts, so no
    /// event is missed.
    #[serde(default)]
    pub subscribe: bool,
    /// Makes the request safe to send again: a later `job.create` from the
    /// same key name with the same key returns the job this one created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// `job.accepted`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobAccepted {
    /// The job, in its current state.
    pub job: JobInfo,
    /// False when an idempotency key matched an earlier job, which is returned instead.
    pub created: bool,
}

/// A reference to a job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRef {
    /// Job id.
    pub job: JobId,
}

/// `job.list` query.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobListQuery {
    /// Only jobs in this state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<JobState>,
    /// At most this many (default 50, at most 1000; fewer when their records
    /// would not fit in one message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Continue after the page that returned this `next_cursor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// `job.targets` query: one page of a job's targets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobTargetsQuery {
    /// Job id.
    pub job: JobId,
    /// Continue after the page that returned this `next_cursor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// At most this many targets (default and most: 1000; fewer when they
    /// would not fit in one message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// `job.targets` reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobTargets {
    /// Job id.
    pub job: JobId,
    /// Targets sorted by agent name.
    pub targets: Vec<crate::jobs::JobTarget>,
    /// Present when more targets follow: pass it as `cursor` to get the next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// One job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEnvelope {
    /// The job.
    pub job: JobInfo,
}

/// Several jobs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobList {
    /// Newest first, without targets.
    pub jobs: Vec<JobInfo>,
    /// Present when more jobs follow: pass it as `cursor` to get the next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `job.progress`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobProgressEvent {
    /// Job id.
    pub job: JobId,
    /// Offset on `job:<id>`: 0, 1, 2, … without gaps.
    pub seq: u64,
    /// When it happened.
    pub ts_ms: crate::UnixMillis,
    /// The job's state; a final state makes this the channel's last event.
    pub state: JobState,
    /// Target counts.
    #[serde(flatten)]
    pub progress: JobProgress,
}

/// `job.step.started`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepStartedEvent {
    /// Job id.
    pub job: JobId,
    /// Offset on `job:<id>`.
    pub seq: u64,
    /// When it happened.
    pub ts_ms: crate::UnixMillis,
    /// The target's agent.
    pub agent: AgentName,
    /// Step index (0-based).
    pub step: u32,
    /// Step name.
    pub name: String,
    /// The run that executes the step; its output is on `run:<id>`.
    pub run: RunId,
}

/// `job.step.progress`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepProgressEvent {
    /// Job id.
    pub job: JobId,
    /// Offset on `job:<id>`.
    pub seq: u64,
    /// When the hub received it.
    pub ts_ms: crate::UnixMillis,
    /// The target's agent.
    pub agent: AgentName,
    /// Step index (0-based).
    pub step: u32,
    /// The step's run, whose process published the event.
    pub run: RunId,
    /// The event's type (`site.progress`).
    #[serde(rename = "type")]
    pub kind: String,
    /// The event's data, as published.
    pub data: serde_json::Value,
}

/// `job.step.completed` and `job.step.failed`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepEndedEvent {
    /// Job id.
    pub job: JobId,
    /// Offset on `job:<id>`.
    pub seq: u64,
    /// When it happened.
    pub ts_ms: crate::UnixMillis,
    /// The target's agent.
    pub agent: AgentName,
    /// Step name.
    pub name: String,
    /// The step's index, its run and how the run ended.
    #[serde(flatten)]
    pub outcome: crate::jobs::StepOutcome,
    /// For a failed step: the target goes on anyway (`continue_on_failure`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub continued: bool,
}

/// `job.target`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetEvent {
    /// Job id.
    pub job: JobId,
    /// Offset on `job:<id>`.
    pub seq: u64,
    /// When it happened.
    pub ts_ms: crate::UnixMillis,
    /// The target's agent.
    pub agent: AgentName,
    /// Its final state.
    pub state: TargetState,
    /// Why it was skipped or failed, in a few words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `key.create`: a new API key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyCreate {
    /// The key's name: 1–64 characters of `A-Z a-z 0-9 . _ -`, starting with
    /// a letter or digit; unique among live keys.
    pub name: String,
    /// What the key may do.
    pub role: Role,
    /// Confine the key to the agents this label selector matches (not for
    /// `admin` keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<Selector>,
    /// The key stops working this many milliseconds from now; absent: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_ms: Option<u64>,
}

/// The answer of `POST /v1/browser-token`: a short-lived token a browser
/// presents in its `hello` instead of the API key it was issued for.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrowserToken {
    /// The token.
    pub token: String,
    /// When it stops working (Unix milliseconds).
    pub expires_ms: UnixMillis,
    /// Who it authenticates: the API key's name, role and scope.
    pub principal: Principal,
}

impl std::fmt::Debug for BrowserToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrowserToken")
            .field("token", &"<redacted>")
            .field("expires_ms", &self.expires_ms)
            .field("principal", &self.principal)
            .finish()
    }
}

/// `key.rotate`: a new token for a key name; the old one keeps working for
/// `overlap_ms` (default 0: it stops at once and its connections close).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRotate {
    /// The key's name.
    pub name: String,
    /// How long the old token keeps working, in milliseconds.
    #[serde(default)]
    pub overlap_ms: u64,
}

/// `key.rotated`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRotated {
    /// The new key: same name, role, scope and expiry.
    pub key: KeyInfo,
    /// Its token, shown this once.
    pub token: String,
    /// When the old tokens stop working (now, without an overlap).
    pub old_expires_ms: UnixMillis,
    /// Live connections of the old tokens closed now (none with an overlap;
    /// those close when it ends).
    pub closed_connections: u32,
}

impl std::fmt::Debug for KeyRotated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRotated")
            .field("key", &self.key)
            .field("token", &"<redacted>")
            .field("old_expires_ms", &self.old_expires_ms)
            .field("closed_connections", &self.closed_connections)
            .finish()
    }
}

/// `audit.list`: entries of the audit log, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditListQuery {
    /// Only entries at or after this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<UnixMillis>,
    /// Continue after this entry: the `next_cursor` of the previous page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// Most entries in the page (default and maximum 500).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// `audit.list` reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditList {
    /// The entries, oldest first.
    pub entries: Vec<AuditEntry>,
    /// Where the next page starts; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// One entry of the audit log: who did what, from where, and how it ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the log, from 1, without gaps.
    pub seq: u64,
    /// When.
    pub at_ms: UnixMillis,
    /// Who: an API key name, an agent name, or `-` when nobody authenticated.
    pub actor: String,
    /// The source address the request came from, if it came over the network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// What: a request type (`run.create`, `key.revoke`, …), `login`, or
    /// `enroll`.
    pub action: String,
    /// On what: an agent, run, job or key name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// `ok`, or the error code it was refused with (`FORBIDDEN`, …).
    pub outcome: String,
    /// More: the command of a run, the reason of a refusal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// A reference to the API keys of one name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRef {
    /// The key's name.
    pub name: String,
}

/// One API key as listed: never its token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    /// The key's name.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// The public half of its token (`mst_<key_id>_…`), to tell keys apart.
    pub key_id: String,
    /// The label selector it is confined to; absent: every agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<Selector>,
    /// When it stops working; absent: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<UnixMillis>,
}

/// `key.created`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyCreated {
    /// The new key.
    pub key: KeyInfo,
    /// Its token. The hub keeps only a hash; this is the only time it is shown.
    pub token: String,
}

impl std::fmt::Debug for KeyCreated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCreated")
            .field("key", &self.key)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// `key.list` reply: every live key, by name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyList {
    /// The keys.
    pub keys: Vec<KeyInfo>,
}

/// `key.revoked`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRevoked {
    /// The name revoked.
    pub name: String,
    /// Live connections that used it, now closed (4011).
    pub closed_connections: u32,
}

/// `credential.rotate`: the agent's new token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialRotate {
    /// The new token; the old one stops working once the agent has stored this.
    pub token: String,
}

impl std::fmt::Debug for CredentialRotate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CredentialRotate { token: <redacted> }")
    }
}

/// `credential.stored`: the agent's answer to `credential.rotate`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialStored {
    /// Whether the new token is stored where the agent will find it on restart.
    pub stored: bool,
    /// Why not, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}
