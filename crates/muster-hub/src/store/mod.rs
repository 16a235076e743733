//! Persistence seam: everything the hub keeps across restarts.
//!
//! The seam is narrow on purpose, so that it can be implemented twice
//! (SQLite here; PostgreSQL for a cluster):
//! - [`Store::load`] reads, once at startup, what the hub keeps in memory:
//!   credentials, the agent registry, unfinished runs and jobs;
//! - [`Store::commit`] applies a batch of typed [`Change`]s in **one
//!   transaction**, all or nothing. Only the hub's writer calls it, one batch
//!   at a time, so an implementation never sees two commits at once. A batch
//!   that fails may be committed again as it is: every change is idempotent;
//! - the remaining methods read committed data: history, listings, replays.
//!
//! `contract` holds the tests every implementation must pass.

mod records;
mod sqlite;

#[cfg(test)]
pub(crate) mod contract;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use muster_proto::jobs::{JobInfo, JobState, JobTarget};
use muster_proto::messages::{AuditEntry, SeriesPoint, StoredEvent};
use muster_proto::{AgentName, JobId, RunId, RunInfo, RunState, UnixMillis};

pub use records::{
    AgentFacts, AgentRecord, ApiKeyRecord, Change, EnrollmentRecord, Labels, MetricsRetention,
    RunUpdate, SessionRecovery, Snapshot, StoredChunk, StoredInput, UnfinishedJob, UnfinishedRun,
};
pub use sqlite::SqliteStore;

/// Which runs a listing returns.
#[derive(Clone, Debug, Default)]
pub struct RunFilter {
    /// Only runs on this agent.
    pub agent: Option<AgentName>,
    /// Only runs in this state.
    pub state: Option<RunState>,
    /// Only runs on these agents (a scoped key's view).
    pub agents: Option<Arc<Vec<AgentName>>>,
    /// Only sessions (true), or only runs that are not sessions (false).
    pub session: Option<bool>,
}

/// Everything the hub persists.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// What the hub keeps in memory, read once at startup.
    async fn load(&self) -> anyhow::Result<Snapshot>;

    /// Applies `changes` in one transaction. On error nothing of the batch is
    /// kept, and the same batch may be committed again.
    async fn commit(&self, changes: Arc<Vec<Change>>) -> anyhow::Result<()>;

    /// One run.
    async fn run(&self, id: RunId) -> anyhow::Result<Option<RunInfo>>;
    /// The run an idempotency key of `requested_by` created.
    async fn run_by_idempotency_key(
        &self,
        requested_by: &str,
        key: &str,
    ) -> anyhow::Result<Option<RunInfo>>;
    /// Runs matching `filter`, newest first, older than `before` when given,
    /// at most `limit`.
    async fn runs(
        &self,
        filter: &RunFilter,
        before: Option<RunId>,
        limit: u32,
    ) -> anyhow::Result<Vec<RunInfo>>;
    /// A run's output chunks with `seq >= since`, in order, at most `limit`.
    async fn output_since(
        &self,
        run: RunId,
        since: u64,
        limit: u32,
    ) -> anyhow::Result<Vec<StoredChunk>>;
    /// The same chunks as [`Store::output_since`], each framed as the agent
    /// sent it (an [`OutputFrame`](muster_proto::OutputFrame)), for replay.
    /// A store may build the frames straight from what it reads, saving a
    /// copy of every chunk.
    async fn output_frames_since(
        &self,
        run: RunId,
        since: u64,
        limit: u32,
    ) -> anyhow::Result<Vec<(u64, Bytes)>> {
        let chunks = self.output_since(run, since, limit).await?;
        let frame = |chunk: &StoredChunk| (chunk.seq, chunk.frame(run, &chunk.data));
        Ok(chunks.iter().map(frame).collect())
    }

    /// An agent's events with `seq >= since`, in order, at most `limit`.
    async fn events_since(
        &self,
        agent: &AgentName,
        since: u64,
        limit: u32,
    ) -> anyhow::Result<Vec<StoredEvent>>;
    /// Stored samples and averages of an agent taken at or after `since_ms`, oldest first.
    async fn metrics_since(
        &self,
        agent: &AgentName,
        since_ms: UnixMillis,
    ) -> anyhow::Result<Vec<SeriesPoint>>;

    /// One job, without its targets.
    async fn job(&self, id: JobId) -> anyhow::Result<Option<JobInfo>>;
    /// The job an idempotency key of `requested_by` created, without targets.
    async fn job_by_idempotency_key(
        &self,
        requested_by: &str,
        key: &str,
    ) -> anyhow::Result<Option<JobInfo>>;
    /// A job's targets sorted by agent name, after `after` when given, at most `limit`.
    async fn job_targets(
        &self,
        job: JobId,
        after: Option<&AgentName>,
        limit: u32,
    ) -> anyhow::Result<Vec<JobTarget>>;
    /// Jobs (without targets), newest first, in `state` when given, older
    /// than `before` when given, whose every target is one of `agents` when
    /// given (a scoped key's view), at most `limit`.
    async fn jobs(
        &self,
        state: Option<JobState>,
        before: Option<JobId>,
        agents: Option<&[AgentName]>,
        limit: u32,
    ) -> anyhow::Result<Vec<JobInfo>>;
    /// A job's events with `seq >= since`, in order, at most `limit`: each the
    /// envelope text that was published.
    async fn job_events_since(
        &self,
        job: JobId,
        since: u64,
        limit: u32,
    ) -> anyhow::Result<Vec<(u64, String)>>;

    /// Audit entries at or after `since_ms`, with `seq > after`, oldest
    /// first, at most `limit`.
    async fn audit(
        &self,
        since_ms: UnixMillis,
        after: u64,
        limit: u32,
    ) -> anyhow::Result<Vec<AuditEntry>>;
}
