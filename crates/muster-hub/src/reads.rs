//! Requests answered from the store: history and listings. They read only
//! committed data, so they never show a state the store could lose, and
//! they run on their own task, so a connection keeps serving its other
//! requests meanwhile.

use std::sync::Arc;

use muster_proto::jobs::JobInfo;
use muster_proto::messages::{
    JobAccepted, JobEnvelope, JobList, JobListQuery, JobTargetsQuery, MetricsQuery, MetricsSeries,
    RunEnvelope, RunList, RunListQuery,
};
use muster_proto::{ErrorCode, HubToClient, JobId, RunId};

use crate::engine::ApiError;
use crate::paging;
use crate::store::{RunFilter, Store};

/// Runs in one page of `run.list` unless asked otherwise, and at most.
const RUN_PAGE: (usize, usize) = (50, 1000);
/// Jobs in one page of `job.list` unless asked otherwise, and at most.
const JOB_PAGE: (usize, usize) = (50, 1000);

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
}

/// Answers `read` from `store`; `page_bytes` bounds a listing's page.
pub async fn answer(store: &Arc<dyn Store>, read: Read, page_bytes: usize) -> HubToClient {
    answer_or_error(store, read, page_bytes)
        .await
        .unwrap_or_else(|e| HubToClient::Error(e.to_data()))
}

async fn answer_or_error(
    store: &Arc<dyn Store>,
    read: Read,
    page_bytes: usize,
) -> Result<HubToClient, ApiError> {
    Ok(match read {
        Read::Run(id) => HubToClient::RunInfo(RunEnvelope {
            run: store.run(id).await?.ok_or_else(|| run_not_found(id))?,
        }),
        Read::CancelEnded(id) => {
            let run = store.run(id).await?.ok_or_else(|| run_not_found(id))?;
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
        Read::RunList(query) => HubToClient::RunList(runs(store, query, page_bytes).await?),
        Read::JobList(query) => HubToClient::JobList(jobs(store, query, page_bytes).await?),
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
    page_bytes: usize,
) -> Result<RunList, ApiError> {
    let before = paging::run_cursor(query.cursor.as_deref())?;
    let limit = paging::limit(query.limit, RUN_PAGE.0, RUN_PAGE.1);
    let filter = RunFilter {
        agent: query.agent,
        state: query.state,
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
    page_bytes: usize,
) -> Result<JobList, ApiError> {
    let before = paging::job_cursor(query.cursor.as_deref())?;
    let limit = paging::limit(query.limit, JOB_PAGE.0, JOB_PAGE.1);
    let rows = store.jobs(query.state, before, limit as u32 + 1).await?;
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

fn run_not_found(id: RunId) -> ApiError {
    ApiError::new(ErrorCode::RunNotFound, format!("run {id} not found"))
}

fn job_not_found(id: JobId) -> ApiError {
    ApiError::new(ErrorCode::JobNotFound, format!("job {id} not found"))
}
