//! Applying a batch of changes: one SQL statement (or a few) per change,
//! through prepared statements the connection caches, in the caller's
//! transaction.

use std::collections::BTreeMap;

use anyhow::Context as _;
use muster_proto::jobs::{JobInfo, JobTarget};
use muster_proto::messages::{AuditEntry, MetricsSample};
use muster_proto::{AgentName, JobId, RunId, RunInfo};
use rusqlite::{OptionalExtension as _, Transaction, params};

use super::codes::{bool_int, opt_i64, stream_code};
use crate::metrics;
use crate::store::{
    AgentRecord, ApiKeyRecord, Change, EnrollmentRecord, MetricsRetention, RunUpdate, StoredChunk,
    StoredInput,
};

/// Applies every change in order.
pub(super) fn apply<'a>(
    tx: &Transaction<'_>,
    changes: impl IntoIterator<Item = &'a Change>,
) -> anyhow::Result<()> {
    for change in changes {
        apply_one(tx, change)?;
    }
    Ok(())
}

/// Whether `change` writes to `output.db` rather than `muster.db`.
pub(super) fn is_output(change: &Change) -> bool {
    matches!(change, Change::AppendOutput(..) | Change::TrimOutput(..))
}

fn apply_one(tx: &Transaction<'_>, change: &Change) -> anyhow::Result<()> {
    match change {
        Change::InsertApiKey(key, now) => insert_api_key(tx, key, *now),
        Change::DeleteApiKeysNamed(name) => {
            tx.prepare_cached("DELETE FROM api_keys WHERE name = ?1")?
                .execute([name])?;
            Ok(())
        }
        Change::DeleteApiKey(key_id) => {
            tx.prepare_cached("DELETE FROM api_keys WHERE key_id = ?1")?
                .execute([key_id])?;
            Ok(())
        }
        Change::SetApiKeyExpiry(key_id, at) => {
            tx.prepare_cached("UPDATE api_keys SET expires_ms = ?1 WHERE key_id = ?2")?
                .execute(params![*at as i64, key_id])?;
            Ok(())
        }
        Change::AppendAudit(entry) => append_audit(tx, entry),
        Change::AppendInput(input) => append_input(tx, input),
        Change::TrimOutput(run, keep) => trim_output(tx, *run, *keep),
        Change::InputApplied(run, seq) => {
            tx.prepare_cached(
                "UPDATE runs SET input_applied = MAX(input_applied, ?1) WHERE id = ?2",
            )?
            .execute(params![*seq as i64, run.to_string()])?;
            Ok(())
        }
        Change::SetSetting(name, value) => {
            tx.prepare_cached("INSERT OR REPLACE INTO settings (name, value) VALUES (?1, ?2)")?
                .execute(params![name, value])?;
            Ok(())
        }
        Change::InsertAgent(agent, now) => insert_agent(tx, agent, *now),
        Change::SetAgentCredential {
            name,
            key_id,
            secret_hash,
        } => {
            tx.prepare_cached("UPDATE agents SET key_id = ?1, secret_hash = ?2 WHERE name = ?3")?
                .execute(params![key_id, secret_hash, name.as_str()])?;
            Ok(())
        }
        Change::SetAgentLabels(name, labels) => set_labels(tx, name, labels),
        Change::AgentSeen(name, facts, at) => {
            let facts = facts.as_ref().map(serde_json::to_string).transpose()?;
            tx.prepare_cached(
                "UPDATE agents SET last_seen_ms = ?1, facts = COALESCE(?2, facts) WHERE name = ?3",
            )?
            .execute(params![*at as i64, facts, name.as_str()])?;
            Ok(())
        }
        Change::DeleteAgent(name) => {
            tx.prepare_cached("DELETE FROM agents WHERE name = ?1")?
                .execute([name.as_str()])?;
            Ok(())
        }
        Change::InsertRun(run) => insert_run(tx, run),
        Change::UpdateRun(update) => update_run(tx, update),
        Change::AppendOutput(run, chunk) => append_output(tx, *run, chunk),
        Change::InsertMetrics(agent, sample) => insert_metrics(tx, agent, sample),
        Change::CompactMetrics(retention, now) => compact_metrics(tx, retention, *now),
        Change::AppendEvent(event) => {
            tx.prepare_cached(
                "INSERT OR IGNORE INTO agent_events (agent, seq, doc) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![
                event.agent.as_str(),
                event.seq as i64,
                serde_json::to_string(event)?
            ])?;
            Ok(())
        }
        Change::InsertJob(job) => insert_job(tx, job),
        Change::UpdateJob(job) => {
            tx.prepare_cached("UPDATE jobs SET state = ?1, doc = ?2 WHERE id = ?3")?
                .execute(params![
                    job.state.as_str(),
                    job_doc(job)?,
                    job.id.to_string()
                ])?;
            Ok(())
        }
        Change::UpdateTargets(job, targets) => update_targets(tx, *job, targets),
        Change::AppendJobEvents(job, events) => {
            let mut insert = tx.prepare_cached(
                "INSERT OR IGNORE INTO job_events (job_id, seq, msg) VALUES (?1, ?2, ?3)",
            )?;
            let job = job.to_string();
            for (seq, msg) in events {
                insert.execute(params![job, *seq as i64, msg])?;
            }
            Ok(())
        }
        Change::InsertEnrollment(enrollment) => insert_enrollment(tx, enrollment),
        Change::SetEnrollmentUses {
            token_id,
            uses_left,
        } => {
            tx.prepare_cached("UPDATE enrollments SET uses_left = ?1 WHERE token_id = ?2")?
                .execute(params![uses_left, token_id])?;
            Ok(())
        }
        Change::DeleteEnrollment(token_id) => {
            tx.prepare_cached("DELETE FROM enrollments WHERE token_id = ?1")?
                .execute([token_id])?;
            Ok(())
        }
    }
}

fn insert_enrollment(tx: &Transaction<'_>, enrollment: &EnrollmentRecord) -> anyhow::Result<()> {
    tx.prepare_cached(
        "INSERT OR IGNORE INTO enrollments
             (token_id, secret_hash, labels, uses_left, expires_ms, created_ms, created_by)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        enrollment.token_id,
        enrollment.secret_hash,
        serde_json::to_string(&enrollment.labels)?,
        enrollment.uses_left,
        enrollment.expires_ms as i64,
        enrollment.created_ms as i64,
        enrollment.created_by,
    ])?;
    Ok(())
}

fn insert_api_key(tx: &Transaction<'_>, key: &ApiKeyRecord, now: u64) -> anyhow::Result<()> {
    tx.prepare_cached(
        "INSERT OR IGNORE INTO api_keys (key_id, name, role, secret_hash, created_ms, scope, expires_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        key.key_id,
        key.name,
        key.role,
        key.secret_hash,
        now as i64,
        key.scope,
        key.expires_ms.map(|at| at as i64)
    ])?;
    Ok(())
}

fn append_audit(tx: &Transaction<'_>, entry: &AuditEntry) -> anyhow::Result<()> {
    tx.prepare_cached(
        "INSERT OR IGNORE INTO audit (seq, at_ms, actor, source, action, target, outcome, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        entry.seq as i64,
        entry.at_ms as i64,
        entry.actor,
        entry.source,
        entry.action,
        entry.target,
        entry.outcome,
        entry.detail
    ])?;
    Ok(())
}

fn insert_agent(tx: &Transaction<'_>, agent: &AgentRecord, now: u64) -> anyhow::Result<()> {
    tx.prepare_cached(
        "INSERT INTO agents (name, labels, key_id, secret_hash, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (name) DO NOTHING",
    )?
    .execute(params![
        agent.name.as_str(),
        serde_json::to_string(&agent.labels)?,
        agent.key_id,
        agent.secret_hash,
        now as i64
    ])?;
    Ok(())
}

fn set_labels(
    tx: &Transaction<'_>,
    name: &AgentName,
    labels: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    tx.prepare_cached("UPDATE agents SET labels = ?1 WHERE name = ?2")?
        .execute(params![serde_json::to_string(labels)?, name.as_str()])?;
    Ok(())
}

fn insert_run(tx: &Transaction<'_>, run: &RunInfo) -> anyhow::Result<()> {
    let id = run.id.to_string();
    let mut insert = tx.prepare_cached(
        "INSERT INTO runs (id, agent, state, created_ms, requested_by, idempotency_key, doc,
             exit_code, signal, error, error_code, pid, output_bytes, output_truncated,
             dispatched_ms, started_ms, finished_ms, session)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)
         ON CONFLICT (id) DO NOTHING",
    )?;
    muster_proto::json::with_json(run, |doc| {
        insert.execute(params![
            id,
            run.agent.as_str(),
            run.state.as_str(),
            run.created_ms as i64,
            run.requested_by,
            run.idempotency_key,
            doc,
            run.exit_code,
            run.signal,
            run.error,
            run.error_code.map(|c| c.as_str()),
            run.pid,
            run.output_bytes as i64,
            bool_int(run.output_truncated),
            opt_i64(run.dispatched_ms),
            opt_i64(run.started_ms),
            opt_i64(run.finished_ms),
            run.session.as_ref().map(|s| s.kind.as_str()),
        ])
    })
    .with_context(|| format!("inserting run {id}"))?;
    Ok(())
}

fn update_run(tx: &Transaction<'_>, run: &RunUpdate) -> anyhow::Result<()> {
    tx.prepare_cached(
        "UPDATE runs SET state = ?1, exit_code = ?2, signal = ?3, error = ?4, error_code = ?5,
             pid = ?6, output_bytes = ?7, output_truncated = ?8, dispatched_ms = ?9,
             started_ms = ?10, finished_ms = ?11
         WHERE id = ?12",
    )?
    .execute(params![
        run.state.as_str(),
        run.exit_code,
        run.signal,
        run.error,
        run.error_code.map(|c| c.as_str()),
        run.pid,
        run.output_bytes as i64,
        bool_int(run.output_truncated),
        opt_i64(run.dispatched_ms),
        opt_i64(run.started_ms),
        opt_i64(run.finished_ms),
        run.id.to_string(),
    ])?;
    Ok(())
}

fn append_output(tx: &Transaction<'_>, run: RunId, chunk: &StoredChunk) -> anyhow::Result<()> {
    tx.prepare_cached(
        "INSERT OR IGNORE INTO output.run_output (run_id, seq, stream, offset, data, at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        run.to_string(),
        chunk.seq as i64,
        stream_code(chunk.stream),
        chunk.offset as i64,
        &chunk.data[..],
        opt_i64(chunk.at),
    ])?;
    Ok(())
}

/// Deletes `run`'s oldest chunks, keeping the newest that fit in `keep` bytes.
fn trim_output(tx: &Transaction<'_>, run: RunId, keep: u64) -> anyhow::Result<()> {
    let id = run.to_string();
    let cut: Option<i64> = tx
        .prepare_cached(
            "SELECT seq FROM (
                 SELECT seq, SUM(LENGTH(data)) OVER (ORDER BY seq DESC) AS tail
                 FROM output.run_output WHERE run_id = ?1)
             WHERE tail > ?2 ORDER BY seq DESC LIMIT 1",
        )?
        .query_row(params![&id, keep as i64], |row| row.get(0))
        .optional()?;
    if let Some(cut) = cut {
        tx.prepare_cached("DELETE FROM output.run_output WHERE run_id = ?1 AND seq <= ?2")?
            .execute(params![&id, cut])?;
    }
    Ok(())
}

fn append_input(tx: &Transaction<'_>, input: &StoredInput) -> anyhow::Result<()> {
    tx.prepare_cached(
        "INSERT OR IGNORE INTO session_inputs
             (run_id, seq, writer, writer_seq, sender, at_ms, data)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        input.run.to_string(),
        input.seq as i64,
        input.writer,
        input.writer_seq as i64,
        input.from,
        input.at as i64,
        input.data,
    ])?;
    Ok(())
}

fn insert_metrics(
    tx: &Transaction<'_>,
    agent: &AgentName,
    sample: &MetricsSample,
) -> anyhow::Result<()> {
    tx.prepare_cached(
        "INSERT OR REPLACE INTO metrics (agent, resolution_ms, ts_ms, doc) VALUES (?1, 0, ?2, ?3)",
    )?
    .execute(params![
        agent.as_str(),
        sample.ts_ms as i64,
        serde_json::to_string(sample)?
    ])?;
    Ok(())
}

/// Rolls whole windows of raw samples older than the raw retention into one
/// average each, then deletes what is past its retention.
fn compact_metrics(
    tx: &Transaction<'_>,
    retention: &MetricsRetention,
    now: u64,
) -> anyhow::Result<()> {
    // Only whole windows are rolled up, so a window is averaged exactly once.
    let cutoff = metrics::window_start(
        now.saturating_sub(retention.raw_keep_ms),
        retention.window_ms,
    );
    let mut windows: BTreeMap<(String, u64), Vec<MetricsSample>> = BTreeMap::new();
    {
        let mut old = tx.prepare_cached(
            "SELECT agent, doc FROM metrics WHERE resolution_ms = 0 AND ts_ms < ?1
             ORDER BY agent, ts_ms",
        )?;
        let mut rows = old.query([cutoff as i64])?;
        while let Some(row) = rows.next()? {
            let agent: String = row.get(0)?;
            let doc: String = row.get(1)?;
            let sample: MetricsSample = serde_json::from_str(&doc).context("decoding sample")?;
            let start = metrics::window_start(sample.ts_ms, retention.window_ms);
            windows.entry((agent, start)).or_default().push(sample);
        }
    }
    let mut insert = tx.prepare_cached(
        "INSERT OR REPLACE INTO metrics (agent, resolution_ms, ts_ms, doc) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for ((agent, start), samples) in windows {
        let average = metrics::average(&samples, start);
        insert.execute(params![
            agent,
            retention.window_ms as i64,
            start as i64,
            serde_json::to_string(&average)?
        ])?;
    }
    tx.prepare_cached("DELETE FROM metrics WHERE resolution_ms = 0 AND ts_ms < ?1")?
        .execute([cutoff as i64])?;
    tx.prepare_cached("DELETE FROM metrics WHERE resolution_ms > 0 AND ts_ms < ?1")?
        .execute([now.saturating_sub(retention.rollup_keep_ms) as i64])?;
    Ok(())
}

fn insert_job(tx: &Transaction<'_>, job: &JobInfo) -> anyhow::Result<()> {
    tx.prepare_cached(
        "INSERT INTO jobs (id, state, created_ms, doc, requested_by, idempotency_key)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (id) DO NOTHING",
    )?
    .execute(params![
        job.id.to_string(),
        job.state.as_str(),
        job.created_ms as i64,
        job_doc(job)?,
        job.requested_by,
        job.idempotency_key
    ])?;
    let mut insert = tx.prepare_cached(
        "INSERT OR REPLACE INTO job_targets (job_id, agent, doc) VALUES (?1, ?2, ?3)",
    )?;
    let id = job.id.to_string();
    for target in &job.targets {
        insert.execute(params![
            id,
            target.agent.as_str(),
            serde_json::to_string(target)?
        ])?;
    }
    Ok(())
}

fn update_targets(tx: &Transaction<'_>, job: JobId, targets: &[JobTarget]) -> anyhow::Result<()> {
    let mut update =
        tx.prepare_cached("UPDATE job_targets SET doc = ?1 WHERE job_id = ?2 AND agent = ?3")?;
    let job = job.to_string();
    for target in targets {
        update.execute(params![
            serde_json::to_string(target)?,
            job,
            target.agent.as_str()
        ])?;
    }
    Ok(())
}

/// A job's record without its targets, which have their own rows.
pub(super) fn job_doc(job: &JobInfo) -> anyhow::Result<String> {
    if job.targets.is_empty() && job.targets_next_cursor.is_none() {
        return Ok(serde_json::to_string(job)?);
    }
    let mut record = serde_json::to_value(job)?;
    if let Some(fields) = record.as_object_mut() {
        fields.remove("targets");
        fields.remove("targets_next_cursor");
    }
    Ok(record.to_string())
}
