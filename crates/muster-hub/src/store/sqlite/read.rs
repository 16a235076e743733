//! Queries: the startup snapshot and every read of committed data. Each
//! function runs on one of the store's read connections, on a blocking
//! thread.

use anyhow::Context as _;
use bytes::Bytes;
use muster_proto::jobs::{JobInfo, JobState, JobTarget};
use muster_proto::messages::{AuditEntry, SeriesPoint, StoredEvent};
use muster_proto::{AgentName, JobId, RunId, RunInfo, UnixMillis};
use rusqlite::{Connection, OptionalExtension as _, Row, params};

use super::codes::{error_code, opt_u64, run_state, stream_from_code};
use crate::store::{
    AgentFacts, AgentRecord, ApiKeyRecord, EnrollmentRecord, RunFilter, RunUpdate, SessionRecovery,
    Snapshot, StoredChunk, StoredInput, UnfinishedJob, UnfinishedRun,
};

/// The columns [`run_from_row`] reads, in order.
const RUN_COLUMNS: &str = "doc, state, exit_code, signal, error, error_code, pid, output_bytes,
     output_truncated, dispatched_ms, started_ms, finished_ms";

/// Which runs are unfinished, spelled exactly as the predicate of the
/// partial index `runs_unfinished` (migration 7), so that a query with it
/// uses that index.
pub(super) const UNFINISHED_RUNS: &str =
    "state = 'queued' OR state = 'dispatched' OR state = 'running'";

/// Everything the hub keeps in memory.
pub(super) fn snapshot(conn: &Connection) -> anyhow::Result<Snapshot> {
    let runs = query_runs(
        conn,
        &format!("SELECT {RUN_COLUMNS} FROM runs WHERE {UNFINISHED_RUNS} ORDER BY id"),
        [],
    )?
    .into_iter()
    .map(|run| unfinished_run(conn, run))
    .collect::<anyhow::Result<_>>()?;
    let jobs = unfinished_jobs(conn)?;
    let job_runs = ended_step_runs(conn, &jobs)?;
    Ok(Snapshot {
        api_keys: api_keys(conn)?,
        agents: agents(conn)?,
        enrollments: enrollments(conn)?,
        runs,
        jobs,
        job_runs,
        event_seqs: event_seqs(conn)?,
        browser_token_secret: setting(conn, crate::browser_token::SECRET_SETTING)?,
        next_audit_seq: conn.query_row(
            "SELECT COALESCE(MAX(seq), 0) + 1 FROM audit",
            [],
            |row| row.get::<_, i64>(0),
        )? as u64,
    })
}

/// A setting the hub generated, if it has.
fn setting(conn: &Connection, name: &str) -> anyhow::Result<Option<Vec<u8>>> {
    Ok(conn
        .query_row(
            "SELECT value FROM settings WHERE name = ?1",
            [name],
            |row| row.get(0),
        )
        .optional()?)
}

/// The ended runs of the current steps of targets still going.
fn ended_step_runs(conn: &Connection, jobs: &[UnfinishedJob]) -> anyhow::Result<Vec<RunInfo>> {
    let mut runs = Vec::new();
    let current = jobs
        .iter()
        .flat_map(|j| &j.job.targets)
        .filter(|t| !t.state.is_terminal())
        .filter_map(|t| t.steps.last());
    for step in current {
        if let Some(run) = run(conn, step.run)?
            && run.state.is_terminal()
        {
            runs.push(run);
        }
    }
    Ok(runs)
}

fn api_keys(conn: &Connection) -> anyhow::Result<Vec<ApiKeyRecord>> {
    let mut query =
        conn.prepare("SELECT key_id, name, role, secret_hash, scope, expires_ms FROM api_keys")?;
    let rows = query.query_map([], |row| {
        Ok(ApiKeyRecord {
            key_id: row.get(0)?,
            name: row.get(1)?,
            role: row.get(2)?,
            secret_hash: row.get(3)?,
            scope: row.get(4)?,
            expires_ms: opt_u64(row.get(5)?),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn agents(conn: &Connection) -> anyhow::Result<Vec<AgentRecord>> {
    let mut query = conn.prepare(
        "SELECT name, labels, key_id, secret_hash, facts, last_seen_ms FROM agents ORDER BY name",
    )?;
    let mut rows = query.query([])?;
    let mut agents = Vec::new();
    while let Some(row) = rows.next()? {
        let name: String = row.get(0)?;
        let labels: String = row.get(1)?;
        let facts: Option<String> = row.get(4)?;
        agents.push(AgentRecord {
            name: AgentName::new(name).context("a stored agent name")?,
            labels: serde_json::from_str(&labels).context("agent labels")?,
            key_id: row.get(2)?,
            secret_hash: row.get(3)?,
            facts: facts
                .map(|f| serde_json::from_str::<AgentFacts>(&f))
                .transpose()
                .context("agent facts")?,
            last_seen_ms: opt_u64(row.get(5)?),
        });
    }
    Ok(agents)
}

fn enrollments(conn: &Connection) -> anyhow::Result<Vec<EnrollmentRecord>> {
    let mut query = conn.prepare(
        "SELECT token_id, secret_hash, labels, uses_left, expires_ms, created_ms, created_by
         FROM enrollments ORDER BY token_id",
    )?;
    let mut rows = query.query([])?;
    let mut enrollments = Vec::new();
    while let Some(row) = rows.next()? {
        let labels: String = row.get(2)?;
        let expires_ms: i64 = row.get(4)?;
        let created_ms: i64 = row.get(5)?;
        enrollments.push(EnrollmentRecord {
            token_id: row.get(0)?,
            secret_hash: row.get(1)?,
            labels: serde_json::from_str(&labels).context("enrollment labels")?,
            uses_left: row.get(3)?,
            expires_ms: u64::try_from(expires_ms).unwrap_or_default(),
            created_ms: u64::try_from(created_ms).unwrap_or_default(),
            created_by: row.get(6)?,
        });
    }
    Ok(enrollments)
}

/// A run in flight with what recovery needs: its next seq and the bytes stored.
fn unfinished_run(conn: &Connection, mut run: RunInfo) -> anyhow::Result<UnfinishedRun> {
    let (next_seq, bytes): (i64, i64) = conn
        .prepare_cached(
            "SELECT COALESCE(MAX(seq) + 1, 0), COALESCE(SUM(LENGTH(data)), 0)
             FROM output.run_output WHERE run_id = ?1",
        )?
        .query_row([run.id.to_string()], |row| Ok((row.get(0)?, row.get(1)?)))?;
    run.output_bytes = bytes as u64;
    let session = match run.session {
        Some(_) => Some(SessionRecovery {
            stored_bytes: bytes as u64,
            ..session_recovery(conn, run.id)?
        }),
        None => None,
    };
    Ok(UnfinishedRun {
        run,
        next_seq: next_seq as u64,
        session,
    })
}

/// A session in flight: its inputs not yet applied, and where each writer is.
fn session_recovery(conn: &Connection, run: RunId) -> anyhow::Result<SessionRecovery> {
    let id = run.to_string();
    let applied: i64 = conn
        .prepare_cached("SELECT input_applied FROM runs WHERE id = ?1")?
        .query_row([&id], |row| row.get(0))?;
    let mut recovery = SessionRecovery {
        applied: applied.max(0) as u64,
        ..SessionRecovery::default()
    };
    let mut query = conn.prepare_cached(
        "SELECT writer, MAX(writer_seq), MAX(seq) FROM session_inputs WHERE run_id = ?1
         GROUP BY writer",
    )?;
    let mut rows = query.query([&id])?;
    while let Some(row) = rows.next()? {
        let last: i64 = row.get(2)?;
        recovery.last_input = recovery.last_input.max(last.max(0) as u64);
        recovery
            .writers
            .push((row.get(0)?, row.get::<_, i64>(1)?.max(0) as u64));
    }
    let mut query = conn.prepare_cached(
        "SELECT seq, writer, writer_seq, sender, at_ms, data FROM session_inputs
         WHERE run_id = ?1 AND seq > ?2 ORDER BY seq",
    )?;
    let mut rows = query.query(params![&id, applied])?;
    while let Some(row) = rows.next()? {
        recovery.pending.push(StoredInput {
            run,
            seq: row.get::<_, i64>(0)?.max(0) as u64,
            writer: row.get(1)?,
            writer_seq: row.get::<_, i64>(2)?.max(0) as u64,
            from: row.get(3)?,
            at: row.get::<_, i64>(4)?.max(0) as u64,
            data: row.get(5)?,
        });
    }
    Ok(recovery)
}

fn unfinished_jobs(conn: &Connection) -> anyhow::Result<Vec<UnfinishedJob>> {
    let jobs = query_docs::<JobInfo>(
        conn,
        "SELECT doc FROM jobs WHERE state = 'running' ORDER BY id",
        [],
    )?;
    jobs.into_iter()
        .map(|mut job| {
            job.targets = job_targets(conn, job.id, None, u32::MAX)?;
            let next_seq: i64 = conn.query_row(
                "SELECT COALESCE(MAX(seq) + 1, 0) FROM job_events WHERE job_id = ?1",
                [job.id.to_string()],
                |row| row.get(0),
            )?;
            Ok(UnfinishedJob {
                job,
                next_seq: next_seq as u64,
            })
        })
        .collect()
}

fn event_seqs(conn: &Connection) -> anyhow::Result<Vec<(AgentName, u64)>> {
    let mut query = conn.prepare("SELECT agent, MAX(seq) + 1 FROM agent_events GROUP BY agent")?;
    let mut rows = query.query([])?;
    let mut seqs = Vec::new();
    while let Some(row) = rows.next()? {
        let name: String = row.get(0)?;
        let next: i64 = row.get(1)?;
        // An agent removed since keeps its events; it is not in the registry.
        if let Ok(name) = AgentName::new(name) {
            seqs.push((name, next as u64));
        }
    }
    Ok(seqs)
}

/// One run.
pub(super) fn run(conn: &Connection, id: RunId) -> anyhow::Result<Option<RunInfo>> {
    let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1");
    Ok(query_runs(conn, &sql, [id.to_string()])?.pop())
}

/// The run an idempotency key created.
pub(super) fn run_by_key(
    conn: &Connection,
    requested_by: &str,
    key: &str,
) -> anyhow::Result<Option<RunInfo>> {
    let sql =
        format!("SELECT {RUN_COLUMNS} FROM runs WHERE requested_by = ?1 AND idempotency_key = ?2");
    Ok(query_runs(conn, &sql, params![requested_by, key])?.pop())
}

/// A page of runs, newest first.
pub(super) fn runs(
    conn: &Connection,
    filter: &RunFilter,
    before: Option<RunId>,
    limit: u32,
) -> anyhow::Result<Vec<RunInfo>> {
    // Spelled as the partial index `runs_sessions` (migration 11) wants it.
    let sessions = match filter.session {
        None => "1",
        Some(true) => "session IS NOT NULL",
        Some(false) => "session IS NULL",
    };
    let sql = format!(
        "SELECT {RUN_COLUMNS} FROM runs
         WHERE (?1 IS NULL OR agent = ?1) AND (?2 IS NULL OR state = ?2) AND (?3 IS NULL OR id < ?3)
           AND (?5 IS NULL OR agent IN (SELECT value FROM json_each(?5)))
           AND {sessions}
         ORDER BY id DESC LIMIT ?4"
    );
    let agents = filter
        .agents
        .as_deref()
        .map(serde_json::to_string)
        .transpose()?;
    query_runs(
        conn,
        &sql,
        params![
            filter.agent.as_ref().map(AgentName::as_str),
            filter.state.map(|s| s.as_str()),
            before.map(|id| id.to_string()),
            i64::from(limit),
            agents
        ],
    )
}

fn query_runs(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> anyhow::Result<Vec<RunInfo>> {
    let mut query = conn.prepare_cached(sql)?;
    let mut rows = query.query(params)?;
    let mut runs = Vec::new();
    while let Some(row) = rows.next()? {
        runs.push(run_from_row(row)?);
    }
    Ok(runs)
}

/// The stored document, overridden by the columns that change.
fn run_from_row(row: &Row<'_>) -> anyhow::Result<RunInfo> {
    let doc: String = row.get(0)?;
    let mut run: RunInfo = serde_json::from_str(&doc).context("decoding a stored run")?;
    let state: String = row.get(1)?;
    let update = RunUpdate {
        id: run.id,
        state: run_state(&state)?,
        exit_code: row.get(2)?,
        signal: row.get(3)?,
        error: row.get(4)?,
        error_code: error_code(row.get(5)?)?,
        pid: row.get(6)?,
        output_bytes: row.get::<_, i64>(7)?.max(0) as u64,
        output_truncated: row.get::<_, i64>(8)? != 0,
        dispatched_ms: opt_u64(row.get(9)?),
        started_ms: opt_u64(row.get(10)?),
        finished_ms: opt_u64(row.get(11)?),
    };
    update.apply(&mut run);
    run.queue_position = None;
    Ok(run)
}

/// Output chunks from `since`.
pub(super) fn output_since(
    conn: &Connection,
    run: RunId,
    since: u64,
    limit: u32,
) -> anyhow::Result<Vec<StoredChunk>> {
    read_output(conn, run, since, limit, |chunk, data| StoredChunk {
        data: Bytes::copy_from_slice(data),
        ..chunk
    })
}

/// Output chunks from `since`, each framed straight from the stored bytes.
pub(super) fn output_frames_since(
    conn: &Connection,
    run: RunId,
    since: u64,
    limit: u32,
) -> anyhow::Result<Vec<(u64, Bytes)>> {
    read_output(conn, run, since, limit, |chunk, data| {
        (chunk.seq, chunk.frame(run, data))
    })
}

/// Reads output chunks from `since`, making each into a `T` with its
/// bytes as stored (the chunk it gets has none).
fn read_output<T>(
    conn: &Connection,
    run: RunId,
    since: u64,
    limit: u32,
    make: impl Fn(StoredChunk, &[u8]) -> T,
) -> anyhow::Result<Vec<T>> {
    let mut query = conn.prepare_cached(
        "SELECT seq, stream, offset, data, at_ms FROM output.run_output
         WHERE run_id = ?1 AND seq >= ?2 ORDER BY seq LIMIT ?3",
    )?;
    let mut rows = query.query(params![run.to_string(), since as i64, i64::from(limit)])?;
    let mut chunks = Vec::new();
    while let Some(row) = rows.next()? {
        let chunk = StoredChunk {
            seq: row.get::<_, i64>(0)? as u64,
            stream: stream_from_code(row.get(1)?),
            offset: row.get::<_, i64>(2)? as u64,
            at: opt_u64(row.get(4)?),
            data: Bytes::new(),
        };
        chunks.push(make(chunk, row.get_ref(3)?.as_blob()?));
    }
    Ok(chunks)
}

/// Agent events from `since`.
pub(super) fn events_since(
    conn: &Connection,
    agent: &AgentName,
    since: u64,
    limit: u32,
) -> anyhow::Result<Vec<StoredEvent>> {
    query_docs(
        conn,
        "SELECT doc FROM agent_events WHERE agent = ?1 AND seq >= ?2 ORDER BY seq LIMIT ?3",
        params![agent.as_str(), since as i64, i64::from(limit)],
    )
}

/// Metric samples and averages from `since_ms`.
pub(super) fn metrics_since(
    conn: &Connection,
    agent: &AgentName,
    since_ms: UnixMillis,
) -> anyhow::Result<Vec<SeriesPoint>> {
    let mut query = conn.prepare_cached(
        "SELECT resolution_ms, doc FROM metrics WHERE agent = ?1 AND ts_ms >= ?2
         ORDER BY ts_ms, resolution_ms DESC",
    )?;
    let mut rows = query.query(params![agent.as_str(), since_ms as i64])?;
    let mut points = Vec::new();
    while let Some(row) = rows.next()? {
        let doc: String = row.get(1)?;
        points.push(SeriesPoint {
            resolution_ms: row.get::<_, i64>(0)? as u64,
            sample: serde_json::from_str(&doc).context("decoding a stored sample")?,
        });
    }
    Ok(points)
}

/// One job without targets.
pub(super) fn job(conn: &Connection, id: JobId) -> anyhow::Result<Option<JobInfo>> {
    Ok(query_docs(conn, "SELECT doc FROM jobs WHERE id = ?1", [id.to_string()])?.pop())
}

/// The job an idempotency key created, without targets.
pub(super) fn job_by_key(
    conn: &Connection,
    requested_by: &str,
    key: &str,
) -> anyhow::Result<Option<JobInfo>> {
    let sql = "SELECT doc FROM jobs WHERE requested_by = ?1 AND idempotency_key = ?2";
    Ok(query_docs(conn, sql, params![requested_by, key])?.pop())
}

/// A page of a job's targets, by agent name.
pub(super) fn job_targets(
    conn: &Connection,
    job: JobId,
    after: Option<&AgentName>,
    limit: u32,
) -> anyhow::Result<Vec<JobTarget>> {
    query_docs(
        conn,
        "SELECT doc FROM job_targets WHERE job_id = ?1 AND (?2 IS NULL OR agent > ?2)
         ORDER BY agent LIMIT ?3",
        params![
            job.to_string(),
            after.map(AgentName::as_str),
            i64::from(limit)
        ],
    )
}

/// A page of jobs, newest first.
pub(super) fn jobs(
    conn: &Connection,
    state: Option<JobState>,
    before: Option<JobId>,
    agents: Option<&[AgentName]>,
    limit: u32,
) -> anyhow::Result<Vec<JobInfo>> {
    let agents = agents.map(serde_json::to_string).transpose()?;
    query_docs(
        conn,
        "SELECT doc FROM jobs j WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR id < ?2)
           AND (?4 IS NULL OR NOT EXISTS (
               SELECT 1 FROM job_targets t WHERE t.job_id = j.id
                 AND t.agent NOT IN (SELECT value FROM json_each(?4))))
         ORDER BY id DESC LIMIT ?3",
        params![
            state.map(|s| s.as_str()),
            before.map(|id| id.to_string()),
            i64::from(limit),
            agents
        ],
    )
}

/// Audit entries from `since_ms`, after seq `after`, oldest first.
pub(super) fn audit(
    conn: &Connection,
    since_ms: UnixMillis,
    after: u64,
    limit: u32,
) -> anyhow::Result<Vec<AuditEntry>> {
    let mut query = conn.prepare_cached(
        "SELECT seq, at_ms, actor, source, action, target, outcome, detail FROM audit
         WHERE seq > ?1 AND at_ms >= ?2 ORDER BY seq LIMIT ?3",
    )?;
    let rows = query.query_map(
        params![after as i64, since_ms as i64, i64::from(limit)],
        |row| {
            Ok(AuditEntry {
                seq: row.get::<_, i64>(0)? as u64,
                at_ms: row.get::<_, i64>(1)? as u64,
                actor: row.get(2)?,
                source: row.get(3)?,
                action: row.get(4)?,
                target: row.get(5)?,
                outcome: row.get(6)?,
                detail: row.get(7)?,
            })
        },
    )?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// A job's events from `since`.
pub(super) fn job_events_since(
    conn: &Connection,
    job: JobId,
    since: u64,
    limit: u32,
) -> anyhow::Result<Vec<(u64, String)>> {
    let mut query = conn.prepare_cached(
        "SELECT seq, msg FROM job_events WHERE job_id = ?1 AND seq >= ?2 ORDER BY seq LIMIT ?3",
    )?;
    let rows = query.query_map(
        params![job.to_string(), since as i64, i64::from(limit)],
        |row| Ok((row.get::<_, i64>(0)? as u64, row.get(1)?)),
    )?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Rows of one JSON `doc` column, decoded.
fn query_docs<T: serde::de::DeserializeOwned>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> anyhow::Result<Vec<T>> {
    let mut query = conn.prepare_cached(sql)?;
    let mut rows = query.query(params)?;
    let mut docs = Vec::new();
    while let Some(row) = rows.next()? {
        let doc = row.get_ref(0)?.as_str()?;
        docs.push(serde_json::from_str(doc).context("decoding a stored record")?);
    }
    Ok(docs)
}
