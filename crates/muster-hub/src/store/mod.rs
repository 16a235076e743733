//! Persistence seam: everything the hub keeps across restarts.
//!
//! The hub core talks to a [`Store`] trait object. The single-node hub fills it
//! with [`SqliteStore`]; a PostgreSQL implementation can be added behind the same
//! trait without touching the core.

mod sqlite;

use std::collections::BTreeMap;

use async_trait::async_trait;
use bytes::Bytes;
use muster_proto::actions::{ActionInfo, ExecMode};
use muster_proto::jobs::{JobInfo, JobTarget};
use muster_proto::messages::{JobListQuery, MetricsSample, RunListQuery, SeriesPoint, StoredEvent};
use muster_proto::{AgentName, JobId, OutputStream, RunId, RunInfo, UnixMillis};
use serde::{Deserialize, Serialize};

pub use sqlite::SqliteStore;

/// A stored API key.
#[derive(Clone, Debug)]
pub struct ApiKeyRecord {
    /// Public half of the token.
    pub key_id: String,
    /// Human name (`admin`, `dev`, …).
    pub name: String,
    /// Role: `admin`, `operator` or `viewer`.
    pub role: String,
    /// SHA-256 of the secret half.
    pub secret_hash: Vec<u8>,
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
    pub labels: BTreeMap<String, String>,
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
#[derive(Clone, Debug)]
pub struct AgentRecord {
    /// Unique name.
    pub name: AgentName,
    /// Labels given at registration.
    pub labels: BTreeMap<String, String>,
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
#[derive(Clone, Debug)]
pub struct StoredChunk {
    /// Chunk number within the run.
    pub seq: u64,
    /// Stream.
    pub stream: OutputStream,
    /// Byte offset within the stream.
    pub offset: u64,
    /// Bytes.
    pub data: Bytes,
}

/// How long metrics are kept, and at which resolution.
#[derive(Clone, Copy, Debug)]
pub struct MetricsRetention {
    /// Raw samples younger than this are kept as they are.
    pub raw_keep_ms: u64,
    /// Older samples are replaced by one average per window of this length.
    pub window_ms: u64,
    /// Averages older than this are deleted.
    pub rollup_keep_ms: u64,
}

/// Why a store write was refused.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique name or key already exists.
    #[error("already exists")]
    Conflict,
    /// Anything else.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// Everything the hub persists.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Number of API keys.
    async fn api_key_count(&self) -> anyhow::Result<u64>;
    /// Adds an API key.
    async fn insert_api_key(&self, key: &ApiKeyRecord, now: UnixMillis) -> anyhow::Result<()>;
    /// Looks an API key up by its public id.
    async fn api_key(&self, key_id: &str) -> anyhow::Result<Option<ApiKeyRecord>>;
    /// Deletes every API key with this name.
    async fn delete_api_keys_named(&self, name: &str) -> anyhow::Result<()>;

    /// Registers an agent.
    async fn insert_agent(&self, agent: &AgentRecord, now: UnixMillis) -> Result<(), StoreError>;
    /// Replaces an agent's credential.
    async fn set_agent_credential(
        &self,
        name: &AgentName,
        key_id: &str,
        secret_hash: &[u8],
    ) -> anyhow::Result<()>;
    /// Replaces an agent's registered labels.
    async fn set_agent_labels(
        &self,
        name: &AgentName,
        labels: &BTreeMap<String, String>,
    ) -> anyhow::Result<()>;
    /// One agent by name.
    async fn agent(&self, name: &AgentName) -> anyhow::Result<Option<AgentRecord>>;
    /// One agent by the public id of its token.
    async fn agent_by_key(&self, key_id: &str) -> anyhow::Result<Option<AgentRecord>>;
    /// Every agent, by name.
    async fn agents(&self) -> anyhow::Result<Vec<AgentRecord>>;
    /// Records what an agent reported and when.
    async fn record_agent_seen(
        &self,
        name: &AgentName,
        facts: Option<&AgentFacts>,
        now: UnixMillis,
    ) -> anyhow::Result<()>;
    /// Removes an agent; false if it did not exist.
    async fn delete_agent(&self, name: &AgentName) -> anyhow::Result<bool>;

    /// Adds a run.
    async fn insert_run(&self, run: &RunInfo) -> Result<(), StoreError>;
    /// Rewrites a run.
    async fn update_run(&self, run: &RunInfo) -> anyhow::Result<()>;
    /// One run.
    async fn run(&self, id: RunId) -> anyhow::Result<Option<RunInfo>>;
    /// The run an idempotency key already created.
    async fn run_by_idempotency_key(
        &self,
        requested_by: &str,
        key: &str,
    ) -> anyhow::Result<Option<RunInfo>>;
    /// Runs matching a query, newest first.
    async fn runs(&self, query: &RunListQuery) -> anyhow::Result<Vec<RunInfo>>;
    /// Runs not in a terminal state, oldest first.
    async fn unfinished_runs(&self) -> anyhow::Result<Vec<RunInfo>>;

    /// Stores output chunks in one transaction; a chunk whose seq is already
    /// stored for its run is ignored.
    async fn append_output(&self, chunks: &[(RunId, StoredChunk)]) -> anyhow::Result<()>;
    /// Chunks with `seq >= since`, in order, at most `limit`.
    async fn output_since(
        &self,
        run: RunId,
        since: u64,
        limit: u32,
    ) -> anyhow::Result<Vec<StoredChunk>>;
    /// Stores one raw metrics sample.
    async fn insert_metrics(&self, agent: &AgentName, sample: &MetricsSample)
    -> anyhow::Result<()>;
    /// Stored samples and averages of an agent taken at or after `since_ms`, oldest first.
    async fn metrics_since(
        &self,
        agent: &AgentName,
        since_ms: UnixMillis,
    ) -> anyhow::Result<Vec<SeriesPoint>>;
    /// Rolls raw samples older than the raw window into averages, and deletes
    /// averages past their retention.
    async fn compact_metrics(
        &self,
        retention: &MetricsRetention,
        now: UnixMillis,
    ) -> anyhow::Result<()>;

    /// Stores an agent event under its seq (ignored if that seq is stored).
    async fn append_event(&self, event: &StoredEvent) -> anyhow::Result<()>;
    /// An agent's events with `seq >= since`, in order, at most `limit`.
    async fn events_since(
        &self,
        agent: &AgentName,
        since: u64,
        limit: u32,
    ) -> anyhow::Result<Vec<StoredEvent>>;
    /// The seq after an agent's highest stored event (0 when none).
    async fn next_event_seq(&self, agent: &AgentName) -> anyhow::Result<u64>;

    /// Stores a new job and all its targets in one transaction; `Conflict`
    /// if its idempotency key is taken.
    async fn insert_job(&self, job: &JobInfo) -> Result<(), StoreError>;
    /// The job an idempotency key already created, with its targets.
    async fn job_by_idempotency_key(
        &self,
        requested_by: &str,
        key: &str,
    ) -> anyhow::Result<Option<JobInfo>>;
    /// Writes what the job driver changed, in one transaction: the job's
    /// record (when given; its targets are stored separately), the targets
    /// in `targets`, and the new events (`HubToClient` messages as JSON) under
    /// their seqs.
    async fn save_job_changes(
        &self,
        id: JobId,
        job: Option<&JobInfo>,
        targets: &[JobTarget],
        events: &[(u64, &str)],
    ) -> anyhow::Result<()>;
    /// One job with its targets.
    async fn job(&self, id: JobId) -> anyhow::Result<Option<JobInfo>>;
    /// Jobs matching a query, newest first, without targets.
    async fn jobs(&self, query: &JobListQuery) -> anyhow::Result<Vec<JobInfo>>;
    /// Jobs still `running`, with their targets, for recovery after a restart.
    async fn unfinished_jobs(&self) -> anyhow::Result<Vec<JobInfo>>;
    /// A job's events with `seq >= since`, in order, at most `limit`.
    async fn job_events_since(
        &self,
        job: JobId,
        since: u64,
        limit: u32,
    ) -> anyhow::Result<Vec<(u64, String)>>;
    /// The seq after a job's highest stored event (0 when none).
    async fn next_job_event_seq(&self, job: JobId) -> anyhow::Result<u64>;

    /// The seq after the highest stored chunk of a run (0 when none).
    async fn next_output_seq(&self, run: RunId) -> anyhow::Result<u64>;
    /// Total stored output bytes of a run.
    async fn output_bytes(&self, run: RunId) -> anyhow::Result<u64>;
}
