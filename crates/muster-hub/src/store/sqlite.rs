//! The SQLite implementation of [`Store`], embedded in the data dir.
//!
//! WAL mode with `synchronous = NORMAL`: a committed write survives a crash of
//! the hub process (the case `kill -9` tests), and may lose the last
//! transactions only on power loss.

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use bytes::Bytes;
use muster_proto::jobs::{JobInfo, JobTarget};
use muster_proto::messages::{JobListQuery, MetricsSample, RunListQuery, SeriesPoint, StoredEvent};
use muster_proto::{AgentName, JobId, OutputStream, RunId, RunInfo, UnixMillis};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use super::{
    AgentFacts, AgentRecord, ApiKeyRecord, MetricsRetention, Store, StoreError, StoredChunk,
};
use crate::metrics;

/// Connections in the pool; SQLite serializes writers anyway, readers share.
const POOL_SIZE: u32 = 4;

/// A [`Store`] backed by one SQLite file.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) `muster.db` in `data_dir` and applies migrations.
    pub async fn open(data_dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating data dir {}", data_dir.display()))?;
        let path = data_dir.join("muster.db");
        let options = SqliteConnectOptions::from_str("sqlite://")?
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(POOL_SIZE)
            .connect_with(options)
            .await
            .with_context(|| format!("opening {}", path.display()))?;
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .context("applying database migrations")?;
        Ok(Self { pool })
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }
}

fn stream_code(stream: OutputStream) -> i64 {
    match stream {
        OutputStream::Stdout => 1,
        OutputStream::Stderr => 2,
    }
}

fn stream_from_code(code: i64) -> OutputStream {
    if code == 2 {
        OutputStream::Stderr
    } else {
        OutputStream::Stdout
    }
}

/// A unique-constraint violation is a conflict callers handle; anything else is not.
fn conflict_or_other(err: sqlx::Error) -> StoreError {
    match &err {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict,
        _ => StoreError::Other(err.into()),
    }
}

fn agent_from_row(row: &sqlx::sqlite::SqliteRow) -> anyhow::Result<AgentRecord> {
    let name: String = row.try_get("name")?;
    let labels: String = row.try_get("labels")?;
    let facts: Option<String> = row.try_get("facts")?;
    let last_seen: Option<i64> = row.try_get("last_seen_ms")?;
    Ok(AgentRecord {
        name: AgentName::new(name)?,
        labels: serde_json::from_str(&labels).context("agent labels")?,
        key_id: row.try_get("key_id")?,
        secret_hash: row.try_get("secret_hash")?,
        facts: facts
            .map(|f| serde_json::from_str::<AgentFacts>(&f))
            .transpose()
            .context("agent facts")?,
        last_seen_ms: last_seen.map(|t| t as u64),
    })
}

fn run_from_row(row: &sqlx::sqlite::SqliteRow) -> anyhow::Result<RunInfo> {
    doc(row, "run")
}

/// Decodes the JSON `doc` column every record table keeps.
fn doc<T: serde::de::DeserializeOwned>(
    row: &sqlx::sqlite::SqliteRow,
    what: &str,
) -> anyhow::Result<T> {
    let doc: String = row.try_get("doc")?;
    serde_json::from_str(&doc).with_context(|| format!("decoding stored {what}"))
}

const AGENT_COLUMNS: &str = "name, labels, key_id, secret_hash, facts, last_seen_ms";

#[async_trait]
impl Store for SqliteStore {
    async fn api_key_count(&self) -> anyhow::Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM api_keys")
            .fetch_one(&self.pool)
            .await?;
        Ok(n as u64)
    }

    async fn insert_api_key(&self, key: &ApiKeyRecord, now: UnixMillis) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO api_keys (key_id, name, role, secret_hash, created_ms) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&key.key_id)
        .bind(&key.name)
        .bind(&key.role)
        .bind(&key.secret_hash)
        .bind(now as i64)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn api_key(&self, key_id: &str) -> anyhow::Result<Option<ApiKeyRecord>> {
        let row =
            sqlx::query("SELECT key_id, name, role, secret_hash FROM api_keys WHERE key_id = ?")
                .bind(key_id)
                .fetch_optional(&self.pool)
                .await?;
        row.map(|row| {
            Ok(ApiKeyRecord {
                key_id: row.try_get("key_id")?,
                name: row.try_get("name")?,
                role: row.try_get("role")?,
                secret_hash: row.try_get("secret_hash")?,
            })
        })
        .transpose()
    }

    async fn delete_api_keys_named(&self, name: &str) -> anyhow::Result<()> {
        sqlx::query("DELETE FROM api_keys WHERE name = ?")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn insert_agent(&self, agent: &AgentRecord, now: UnixMillis) -> Result<(), StoreError> {
        let labels = serde_json::to_string(&agent.labels).map_err(anyhow::Error::from)?;
        sqlx::query(
            "INSERT INTO agents (name, labels, key_id, secret_hash, created_ms) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(agent.name.as_str())
        .bind(labels)
        .bind(&agent.key_id)
        .bind(&agent.secret_hash)
        .bind(now as i64)
        .execute(&self.pool)
        .await
        .map_err(conflict_or_other)?;
        Ok(())
    }

    async fn set_agent_credential(
        &self,
        name: &AgentName,
        key_id: &str,
        secret_hash: &[u8],
    ) -> anyhow::Result<()> {
        sqlx::query("UPDATE agents SET key_id = ?, secret_hash = ? WHERE name = ?")
            .bind(key_id)
            .bind(secret_hash)
            .bind(name.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn set_agent_labels(
        &self,
        name: &AgentName,
        labels: &BTreeMap<String, String>,
    ) -> anyhow::Result<()> {
        sqlx::query("UPDATE agents SET labels = ? WHERE name = ?")
            .bind(serde_json::to_string(labels)?)
            .bind(name.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn agent(&self, name: &AgentName) -> anyhow::Result<Option<AgentRecord>> {
        let sql = format!("SELECT {AGENT_COLUMNS} FROM agents WHERE name = ?");
        let row = sqlx::query(&sql)
            .bind(name.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(agent_from_row).transpose()
    }

    async fn agent_by_key(&self, key_id: &str) -> anyhow::Result<Option<AgentRecord>> {
        let sql = format!("SELECT {AGENT_COLUMNS} FROM agents WHERE key_id = ?");
        let row = sqlx::query(&sql)
            .bind(key_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(agent_from_row).transpose()
    }

    async fn agents(&self) -> anyhow::Result<Vec<AgentRecord>> {
        let sql = format!("SELECT {AGENT_COLUMNS} FROM agents ORDER BY name");
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter().map(agent_from_row).collect()
    }

    async fn record_agent_seen(
        &self,
        name: &AgentName,
        facts: Option<&AgentFacts>,
        now: UnixMillis,
    ) -> anyhow::Result<()> {
        let facts = facts.map(serde_json::to_string).transpose()?;
        sqlx::query(
            "UPDATE agents SET last_seen_ms = ?, facts = COALESCE(?, facts) WHERE name = ?",
        )
        .bind(now as i64)
        .bind(facts)
        .bind(name.as_str())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn delete_agent(&self, name: &AgentName) -> anyhow::Result<bool> {
        let done = sqlx::query("DELETE FROM agents WHERE name = ?")
            .bind(name.as_str())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn insert_run(&self, run: &RunInfo) -> Result<(), StoreError> {
        let doc = serde_json::to_string(run).map_err(anyhow::Error::from)?;
        sqlx::query(
            "INSERT INTO runs (id, agent, state, created_ms, requested_by, idempotency_key, doc)
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(run.id.to_string())
        .bind(run.agent.as_str())
        .bind(run.state.as_str())
        .bind(run.created_ms as i64)
        .bind(&run.requested_by)
        .bind(&run.idempotency_key)
        .bind(doc)
        .execute(&self.pool)
        .await
        .map_err(conflict_or_other)?;
        Ok(())
    }

    async fn update_run(&self, run: &RunInfo) -> anyhow::Result<()> {
        let doc = serde_json::to_string(run)?;
        sqlx::query("UPDATE runs SET state = ?, doc = ? WHERE id = ?")
            .bind(run.state.as_str())
            .bind(doc)
            .bind(run.id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn run(&self, id: RunId) -> anyhow::Result<Option<RunInfo>> {
        let row = sqlx::query("SELECT doc FROM runs WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(run_from_row).transpose()
    }

    async fn run_by_idempotency_key(
        &self,
        requested_by: &str,
        key: &str,
    ) -> anyhow::Result<Option<RunInfo>> {
        let row =
            sqlx::query("SELECT doc FROM runs WHERE requested_by = ? AND idempotency_key = ?")
                .bind(requested_by)
                .bind(key)
                .fetch_optional(&self.pool)
                .await?;
        row.as_ref().map(run_from_row).transpose()
    }

    async fn runs(&self, query: &RunListQuery) -> anyhow::Result<Vec<RunInfo>> {
        let limit = query.limit.unwrap_or(50).clamp(1, 1000);
        let rows = sqlx::query(
            "SELECT doc FROM runs
             WHERE (?1 IS NULL OR agent = ?1) AND (?2 IS NULL OR state = ?2)
             ORDER BY id DESC LIMIT ?3",
        )
        .bind(query.agent.as_ref().map(AgentName::as_str))
        .bind(query.state.map(|s| s.as_str()))
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(run_from_row).collect()
    }

    async fn unfinished_runs(&self) -> anyhow::Result<Vec<RunInfo>> {
        let rows = sqlx::query(
            "SELECT doc FROM runs WHERE state IN ('queued', 'dispatched', 'running') ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(run_from_row).collect()
    }

    async fn append_output(&self, chunks: &[(RunId, StoredChunk)]) -> anyhow::Result<()> {
        let mut tx = self.pool.begin().await?;
        for (run, chunk) in chunks {
            sqlx::query(
                "INSERT OR IGNORE INTO run_output (run_id, seq, stream, offset, data) VALUES (?, ?, ?, ?, ?)",
            )
            .bind(run.to_string())
            .bind(chunk.seq as i64)
            .bind(stream_code(chunk.stream))
            .bind(chunk.offset as i64)
            .bind(&chunk.data[..])
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn output_since(
        &self,
        run: RunId,
        since: u64,
        limit: u32,
    ) -> anyhow::Result<Vec<StoredChunk>> {
        let rows = sqlx::query(
            "SELECT seq, stream, offset, data FROM run_output
             WHERE run_id = ? AND seq >= ? ORDER BY seq LIMIT ?",
        )
        .bind(run.to_string())
        .bind(since as i64)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let seq: i64 = row.try_get("seq")?;
                let stream: i64 = row.try_get("stream")?;
                let offset: i64 = row.try_get("offset")?;
                let data: Vec<u8> = row.try_get("data")?;
                Ok(StoredChunk {
                    seq: seq as u64,
                    stream: stream_from_code(stream),
                    offset: offset as u64,
                    data: Bytes::from(data),
                })
            })
            .collect()
    }

    async fn insert_metrics(
        &self,
        agent: &AgentName,
        sample: &MetricsSample,
    ) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT OR REPLACE INTO metrics (agent, resolution_ms, ts_ms, doc) VALUES (?, 0, ?, ?)",
        )
        .bind(agent.as_str())
        .bind(sample.ts_ms as i64)
        .bind(serde_json::to_string(sample)?)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn metrics_since(
        &self,
        agent: &AgentName,
        since_ms: UnixMillis,
    ) -> anyhow::Result<Vec<SeriesPoint>> {
        let rows = sqlx::query(
            "SELECT resolution_ms, doc FROM metrics WHERE agent = ? AND ts_ms >= ? ORDER BY ts_ms, resolution_ms DESC",
        )
        .bind(agent.as_str())
        .bind(since_ms as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let resolution: i64 = row.try_get("resolution_ms")?;
                Ok(SeriesPoint {
                    resolution_ms: resolution as u64,
                    sample: doc(row, "sample")?,
                })
            })
            .collect()
    }

    async fn compact_metrics(
        &self,
        retention: &MetricsRetention,
        now: UnixMillis,
    ) -> anyhow::Result<()> {
        // Only whole windows are rolled up, so a window is averaged exactly once.
        let cutoff = metrics::window_start(
            now.saturating_sub(retention.raw_keep_ms),
            retention.window_ms,
        );
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query("SELECT agent, doc FROM metrics WHERE resolution_ms = 0 AND ts_ms < ? ORDER BY agent, ts_ms")
            .bind(cutoff as i64)
            .fetch_all(&mut *tx)
            .await?;
        let mut windows: BTreeMap<(String, u64), Vec<MetricsSample>> = BTreeMap::new();
        for row in &rows {
            let agent: String = row.try_get("agent")?;
            let sample: MetricsSample = doc(row, "sample")?;
            let start = metrics::window_start(sample.ts_ms, retention.window_ms);
            windows.entry((agent, start)).or_default().push(sample);
        }
        for ((agent, start), samples) in windows {
            let average = metrics::average(&samples, start);
            sqlx::query("INSERT OR REPLACE INTO metrics (agent, resolution_ms, ts_ms, doc) VALUES (?, ?, ?, ?)")
                .bind(agent)
                .bind(retention.window_ms as i64)
                .bind(start as i64)
                .bind(serde_json::to_string(&average)?)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("DELETE FROM metrics WHERE resolution_ms = 0 AND ts_ms < ?")
            .bind(cutoff as i64)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM metrics WHERE resolution_ms > 0 AND ts_ms < ?")
            .bind(now.saturating_sub(retention.rollup_keep_ms) as i64)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn append_event(&self, event: &StoredEvent) -> anyhow::Result<()> {
        sqlx::query("INSERT OR IGNORE INTO agent_events (agent, seq, doc) VALUES (?, ?, ?)")
            .bind(event.agent.as_str())
            .bind(event.seq as i64)
            .bind(serde_json::to_string(event)?)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn events_since(
        &self,
        agent: &AgentName,
        since: u64,
        limit: u32,
    ) -> anyhow::Result<Vec<StoredEvent>> {
        let rows = sqlx::query(
            "SELECT doc FROM agent_events WHERE agent = ? AND seq >= ? ORDER BY seq LIMIT ?",
        )
        .bind(agent.as_str())
        .bind(since as i64)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|row| doc(row, "event")).collect()
    }

    async fn next_event_seq(&self, agent: &AgentName) -> anyhow::Result<u64> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(seq) + 1, 0) FROM agent_events WHERE agent = ?",
        )
        .bind(agent.as_str())
        .fetch_one(&self.pool)
        .await?;
        Ok(n as u64)
    }

    async fn next_output_seq(&self, run: RunId) -> anyhow::Result<u64> {
        let n: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(seq) + 1, 0) FROM run_output WHERE run_id = ?")
                .bind(run.to_string())
                .fetch_one(&self.pool)
                .await?;
        Ok(n as u64)
    }

    async fn output_bytes(&self, run: RunId) -> anyhow::Result<u64> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COALESCE(SUM(LENGTH(data)), 0) FROM run_output WHERE run_id = ?",
        )
        .bind(run.to_string())
        .fetch_one(&self.pool)
        .await?;
        Ok(n as u64)
    }

    async fn insert_job(&self, job: &JobInfo) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(anyhow::Error::from)?;
        sqlx::query(
            "INSERT INTO jobs (id, state, created_ms, doc, requested_by, idempotency_key)
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(job.id.to_string())
        .bind(job.state.as_str())
        .bind(job.created_ms as i64)
        .bind(job_doc(job)?)
        .bind(&job.requested_by)
        .bind(&job.idempotency_key)
        .execute(&mut *tx)
        .await
        .map_err(conflict_or_other)?;
        for target in &job.targets {
            let doc = serde_json::to_string(target).map_err(anyhow::Error::from)?;
            sqlx::query("INSERT INTO job_targets (job_id, agent, doc) VALUES (?, ?, ?)")
                .bind(job.id.to_string())
                .bind(target.agent.as_str())
                .bind(doc)
                .execute(&mut *tx)
                .await
                .map_err(anyhow::Error::from)?;
        }
        tx.commit().await.map_err(anyhow::Error::from)?;
        Ok(())
    }

    async fn job_by_idempotency_key(
        &self,
        requested_by: &str,
        key: &str,
    ) -> anyhow::Result<Option<JobInfo>> {
        let row = sqlx::query("SELECT id FROM jobs WHERE requested_by = ? AND idempotency_key = ?")
            .bind(requested_by)
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let id: String = row.try_get("id")?;
        self.job(id.parse()?).await
    }

    async fn save_job_changes(
        &self,
        id: JobId,
        job: Option<&JobInfo>,
        targets: &[JobTarget],
        events: &[(u64, &str)],
    ) -> anyhow::Result<()> {
        let id = id.to_string();
        let mut tx = self.pool.begin().await?;
        if let Some(job) = job {
            sqlx::query("UPDATE jobs SET state = ?, doc = ? WHERE id = ?")
                .bind(job.state.as_str())
                .bind(job_doc(job)?)
                .bind(&id)
                .execute(&mut *tx)
                .await?;
        }
        for target in targets {
            sqlx::query("UPDATE job_targets SET doc = ? WHERE job_id = ? AND agent = ?")
                .bind(serde_json::to_string(target)?)
                .bind(&id)
                .bind(target.agent.as_str())
                .execute(&mut *tx)
                .await?;
        }
        for (seq, msg) in events {
            sqlx::query("INSERT OR IGNORE INTO job_events (job_id, seq, msg) VALUES (?, ?, ?)")
                .bind(&id)
                .bind(*seq as i64)
                .bind(*msg)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn job(&self, id: JobId) -> anyhow::Result<Option<JobInfo>> {
        let row = sqlx::query("SELECT doc FROM jobs WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let mut job: JobInfo = doc(&row, "job")?;
        job.targets = self.job_targets(id).await?;
        Ok(Some(job))
    }

    async fn jobs(&self, query: &JobListQuery) -> anyhow::Result<Vec<JobInfo>> {
        let limit = query.limit.unwrap_or(50).clamp(1, 1000);
        let rows = sqlx::query(
            "SELECT doc FROM jobs WHERE (?1 IS NULL OR state = ?1) ORDER BY id DESC LIMIT ?2",
        )
        .bind(query.state.map(|s| s.as_str()))
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|row| doc(row, "job")).collect()
    }

    async fn unfinished_jobs(&self) -> anyhow::Result<Vec<JobInfo>> {
        let rows = sqlx::query("SELECT doc FROM jobs WHERE state = 'running' ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        let mut jobs = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut job: JobInfo = doc(row, "job")?;
            job.targets = self.job_targets(job.id).await?;
            jobs.push(job);
        }
        Ok(jobs)
    }

    async fn job_events_since(
        &self,
        job: JobId,
        since: u64,
        limit: u32,
    ) -> anyhow::Result<Vec<(u64, String)>> {
        let rows = sqlx::query(
            "SELECT seq, msg FROM job_events WHERE job_id = ? AND seq >= ? ORDER BY seq LIMIT ?",
        )
        .bind(job.to_string())
        .bind(since as i64)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let seq: i64 = row.try_get("seq")?;
                Ok((seq as u64, row.try_get("msg")?))
            })
            .collect()
    }

    async fn next_job_event_seq(&self, job: JobId) -> anyhow::Result<u64> {
        let n: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(seq) + 1, 0) FROM job_events WHERE job_id = ?")
                .bind(job.to_string())
                .fetch_one(&self.pool)
                .await?;
        Ok(n as u64)
    }
}

impl SqliteStore {
    /// A job's targets, sorted by agent name.
    async fn job_targets(&self, job: JobId) -> anyhow::Result<Vec<JobTarget>> {
        let rows = sqlx::query("SELECT doc FROM job_targets WHERE job_id = ? ORDER BY agent")
            .bind(job.to_string())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|row| doc(row, "job target")).collect()
    }
}

/// A job's record without its targets, which have their own rows.
fn job_doc(job: &JobInfo) -> anyhow::Result<String> {
    let mut record = job.clone();
    record.targets = Vec::new();
    Ok(serde_json::to_string(&record)?)
}
