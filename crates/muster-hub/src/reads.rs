//! Requests answered from the store: history and listings. They read only
//! committed data, so they never show a state the store could lose, and
//! they run on their own task, so a connection keeps serving its other
//! requests meanwhile.

use std::sync::Arc;

use muster_proto::jobs::JobInfo;
use muster_proto::messages::{
    AuditList, AuditListQuery, JobAccepted, JobEnvelope, JobList, JobListQuery, JobTargetsQuery,
    MetricsQuery, MetricsSeries, RunEnvelope, RunList, RunListQuery,
};
use muster_proto::{ErrorCode, HubToClient, JobId, RunId, RunInfo};

use crate::engine::ApiError;
use crate::engine::scope::View;
use crate::paging;
use crate::store::{RunFilter, Store};

/// Runs in one page of `run.list` unless asked otherwise, and at most.
const RUN_PAGE: (usize, usize) = (50, 1000);
/// Jobs in one page of `job.list` unless asked otherwise, and at most.
const JOB_PAGE: (usize, usize) = (50, 1000);
/// Entries in one page of `audit.list` unless asked otherwise, and at most.
const AUDIT_PAGE: usize = 500;

/// A request the store answers.
#[derive(Debug)]
pub enum Read {
    /// `run.get` of a run the hub does not hold.
    Run(RunId),
    /// `run.cancel` of a run the hub does not hold: it ended, or never was.
    CancelEnded(RunId),
    /// `job.get` of a job the hub does not hold.
    Job(JobId),
    /// `job.create` whose key found a job the hub does not hold.
    JobAccepted(JobId),
    /// `job.targets` of a job the hub does not hold.
    JobTargets(JobTargetsQuery),
    /// `job.cancel` of a job the hub does not hold.
    CancelJobEnded(JobId),
    /// `metrics.query` of a registered agent.
    Metrics(MetricsQuery),
    /// `run.list`.
    RunList(RunListQuery),
    /// `job.list`.
    JobList(JobListQuery),
    /// `audit.list`.
    AuditList(AuditListQuery),
}

/// Answers `read` from `store`; `page_bytes` bounds a listing's page.
pub async fn answer(store: &Arc<dyn Store>, read: Read, page_bytes: usize) -> HubToClient {
    answer_in(store, read, None, page_bytes).await
}

/// Answers `read` for a key that sees only the agents of `view`, if given:
/// listings leave out the rest, and a run or job of an agent outside it is
/// refused (`FORBIDDEN`).
pub async fn answer_in(
    store: &Arc<dyn Store>,
    read: Read,
    view: Option<View>,
    page_bytes: usize,
) -> HubToClient {
    answer_or_error(store, read, view, page_bytes)
        .await
        .unwrap_or_else(|e| HubToClient::Error(e.to_data()))
}

/// Whether every target of job `id` is one of the agents of `view`.
pub(crate) async fn job_in_view(
    store: &Arc<dyn Store>,
    id: JobId,
    view: &View,
) -> Result<bool, ApiError> {
    let mut after = None;
    loop {
        let page = store.job_targets(id, after.as_ref(), 1000).await?;
        if page.iter().any(|t| view.binary_search(&t.agent).is_err()) {
            return Ok(false);
        }
        match page.last() {
            Some(last) if page.len() == 1000 => after = Some(last.agent.clone()),
            _ => return Ok(true),
        }
    }
}

/// Refuses a job the view does not cover.
async fn check_job(store: &Arc<dyn Store>, id: JobId, view: Option<&View>) -> Result<(), ApiError> {
    match view {
        Some(view) if !job_in_view(store, id, view).await? => Err(outside(&format!("job {id}"))),
        _ => Ok(()),
    }
}

/// A stored run, refused if the view does not cover its agent.
async fn viewed_run(
    store: &Arc<dyn Store>,
    id: RunId,
    view: Option<&View>,
) -> Result<RunInfo, ApiError> {
    let run = store.run(id).await?.ok_or_else(|| run_not_found(id))?;
    match view {
        Some(view) if view.binary_search(&run.agent).is_err() => Err(outside(&format!("run {id}"))),
        _ => Ok(run),
    }
}

fn outside(what: &str) -> ApiError {
    ApiError::new(
        ErrorCode::Forbidden,
        format!("{what} is outside this key's scope"),
    )
}

async fn answer_or_error(
    store: &Arc<dyn Store>,
    read: Read,
    view: Option<View>,
    page_bytes: usize,
) -> Result<HubToClient, ApiError> {
    let view = view.as_ref();
    match &read {
        Read::Job(id) | Read::JobAccepted(id) | Read::CancelJobEnded(id) => {
            check_job(store, *id, view).await?;
        }
        Read::JobTargets(query) => check_job(store, query.job, view).await?,
        _ => {}
    }
    Ok(match read {
        Read::Run(id) => HubToClient::RunInfo(RunEnvelope {
            run: viewed_run(store, id, view).await?,
        }),
        Read::CancelEnded(id) => {
            let run = viewed_run(store, id, view).await?;
            return Err(ApiError::new(
                ErrorCode::InvalidState,
                format!("run {id} already ended {}", run.state),
            ));
        }
        Read::Job(id) => HubToClient::JobInfo(JobEnvelope {
            job: stored_job(store, id, page_bytes).await?,
        }),
        Read::JobAccepted(id) => HubToClient::JobAccepted(JobAccepted {
            job: stored_job(store, id, page_bytes).await?,
            created: false,
        }),
        Read::JobTargets(query) => {
            HubToClient::JobTargets(targets(store, query, page_bytes).await?)
        }
        Read::CancelJobEnded(id) => {
            let job = store.job(id).await?.ok_or_else(|| job_not_found(id))?;
            return Err(ApiError::new(
                ErrorCode::InvalidState,
                format!("job {id} already ended {}", job.state),
            ));
        }
        Read::Metrics(query) => HubToClient::MetricsSeries(MetricsSeries {
            samples: store.metrics_since(&query.agent, query.since_ms).await?,
            agent: query.agent,
        }),
        Read::RunList(query) => HubToClient::RunList(runs(store, query, view, page_bytes).await?),
        Read::JobList(query) => HubToClient::JobList(jobs(store, query, view, page_bytes).await?),
        Read::AuditList(query) => HubToClient::AuditList(audit(store, query, page_bytes).await?),
    })
}

/// A stored job with its first page of targets.
async fn stored_job(
    store: &Arc<dyn Store>,
    id: JobId,
    page_bytes: usize,
) -> Result<JobInfo, ApiError> {
    let job = store.job(id).await?.ok_or_else(|| job_not_found(id))?;
    let query = JobTargetsQuery {
        job: id,
        cursor: None,
        limit: None,
    };
    let page = targets(store, query, page_bytes).await?;
    Ok(JobInfo {
        targets: page.targets,
        targets_next_cursor: page.next_cursor,
        ..job
    })
}

async fn targets(
    store: &Arc<dyn Store>,
    query: JobTargetsQuery,
    page_bytes: usize,
) -> Result<muster_proto::messages::JobTargets, ApiError> {
    if store.job(query.job).await?.is_none() {
        return Err(job_not_found(query.job));
    }
    let after = paging::name_cursor(query.cursor.as_deref())?;
    let limit = paging::limit(
        query.limit,
        crate::engine::TARGET_PAGE,
        crate::engine::TARGET_PAGE,
    );
    let rows = store
        .job_targets(query.job, after.as_ref(), limit as u32 + 1)
        .await?;
    Ok(crate::engine::target_page(
        query.job,
        rows.into_iter(),
        limit,
        page_bytes,
    ))
}

async fn runs(
    store: &Arc<dyn Store>,
    query: RunListQuery,
    view: Option<&View>,
    page_bytes: usize,
) -> Result<RunList, ApiError> {
    let before = paging::run_cursor(query.cursor.as_deref())?;
    let limit = paging::limit(query.limit, RUN_PAGE.0, RUN_PAGE.1);
    let filter = RunFilter {
        agent: query.agent,
        state: query.state,
        agents: view.cloned(),
        session: query.session,
    };
    let rows = store.runs(&filter, before, limit as u32 + 1).await?;
    let page = paging::fill(rows.into_iter(), limit, page_bytes);
    let next_cursor = page
        .more
        .then(|| page.items.last().map(|r| r.id.to_string()))
        .flatten();
    Ok(RunList {
        runs: page.items,
        next_cursor,
    })
}

async fn jobs(
    store: &Arc<dyn Store>,
    query: JobListQuery,
    view: Option<&View>,
    page_bytes: usize,
) -> Result<JobList, ApiError> {
    let before = paging::job_cursor(query.cursor.as_deref())?;
    let limit = paging::limit(query.limit, JOB_PAGE.0, JOB_PAGE.1);
    let agents = view.map(|v| v.as_slice());
    let rows = store
        .jobs(query.state, before, agents, limit as u32 + 1)
        .await?;
    let page = paging::fill(rows.into_iter(), limit, page_bytes);
    let next_cursor = page
        .more
        .then(|| page.items.last().map(|j| j.id.to_string()))
        .flatten();
    Ok(JobList {
        jobs: page.items,
        next_cursor,
    })
}

async fn audit(
    store: &Arc<dyn Store>,
    query: AuditListQuery,
    page_bytes: usize,
) -> Result<AuditList, ApiError> {
    let after = match query.cursor.as_deref() {
        None => 0,
        Some(cursor) => cursor.parse::<u64>().map_err(|_| {
            ApiError::new(
                ErrorCode::InvalidMessage,
                format!("cursor {cursor:?} is not one this hub gave"),
            )
        })?,
    };
    let limit = paging::limit(query.limit, AUDIT_PAGE, AUDIT_PAGE);
    let rows = store
        .audit(query.since_ms.unwrap_or(0), after, limit as u32 + 1)
        .await?;
    let page = paging::fill(rows.into_iter(), limit, page_bytes);
    let next_cursor = page
        .more
        .then(|| page.items.last().map(|e| e.seq.to_string()))
        .flatten();
    Ok(AuditList {
        entries: page.items,
        next_cursor,
    })
}

fn run_not_found(id: RunId) -> ApiError {
    ApiError::new(ErrorCode::RunNotFound, format!("run {id} not found"))
}

fn job_not_found(id: JobId) -> ApiError {
    ApiError::new(ErrorCode::JobNotFound, format!("job {id} not found"))
}
