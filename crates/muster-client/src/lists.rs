//! The lists the hub serves in pages — agents, runs, jobs and a job's
//! targets — read one page at a time, or whole.
//!
//! The whole-list methods follow `next_cursor` until the last page, through
//! [`Pages`], which stops with an error rather than follow a hub that never
//! ends a list. A `limit` in a run or job query is the most records wanted in
//! all; pages are read until that many have come, or the list ends.

use muster_proto::jobs::{JobInfo, JobTarget};
use muster_proto::messages::{AgentListQuery, JobListQuery, JobRef, JobTargetsQuery, RunListQuery};
use muster_proto::{AgentInfo, ClientToHub, HubToClient, JobId, RunInfo};

use crate::api::expect_reply;
use crate::client::Client;
use crate::error::ClientError;
use crate::pages::{FULL_PAGE, Page, Pages};

impl Client {
    /// Every registered agent, sorted by name, read page by page.
    pub async fn agents(&self) -> Result<Vec<AgentInfo>, ClientError> {
        self.all_agents(AgentListQuery::default()).await
    }

    /// Every agent `selector` matches, sorted by name, read page by page;
    /// `INVALID_SELECTOR` names the column of a selector that does not parse.
    pub async fn agents_matching(&self, selector: &str) -> Result<Vec<AgentInfo>, ClientError> {
        let query = AgentListQuery {
            selector: Some(selector.to_owned()),
            ..AgentListQuery::default()
        };
        self.all_agents(query).await
    }

    /// One page of agents: those after `query.cursor` (from the first when
    /// `None`), at most `query.limit` of them (the hub's default and most: 500).
    pub async fn agents_page(&self, query: AgentListQuery) -> Result<Page<AgentInfo>, ClientError> {
        expect_reply!(self, ClientToHub::AgentList(query), "agent.list",
            HubToClient::AgentList(list) => Page { items: list.agents, next_cursor: list.next_cursor })
    }

    /// Recent runs, newest first: at most `query.limit` in all, or every
    /// matching run the hub keeps when there is no limit (mind the size of
    /// the history). Read page by page, starting after `query.cursor`.
    pub async fn runs(&self, query: RunListQuery) -> Result<Vec<RunInfo>, ClientError> {
        let limit = query.limit.map(|n| n as usize);
        let pages = Pages::new("run.list", limit).starting_at(query.cursor.as_ref());
        let fetch = |cursor, limit| {
            let page = RunListQuery {
                cursor,
                limit,
                ..query.clone()
            };
            self.runs_page(page)
        };
        pages
            .read(query.cursor.clone(), Some(FULL_PAGE), fetch)
            .await
    }

    /// One page of recent runs, newest first: those after `query.cursor`, at
    /// most `query.limit` of them (the hub's default is 50, its most 1000).
    pub async fn runs_page(&self, query: RunListQuery) -> Result<Page<RunInfo>, ClientError> {
        expect_reply!(self, ClientToHub::RunList(query), "run.list",
            HubToClient::RunList(list) => Page { items: list.runs, next_cursor: list.next_cursor })
    }

    /// Recent jobs, newest first, without targets: at most `query.limit` in
    /// all, or every matching job when there is no limit. Read page by page,
    /// starting after `query.cursor`.
    pub async fn jobs(&self, query: JobListQuery) -> Result<Vec<JobInfo>, ClientError> {
        let limit = query.limit.map(|n| n as usize);
        let pages = Pages::new("job.list", limit).starting_at(query.cursor.as_ref());
        let fetch = |cursor, limit| {
            let page = JobListQuery {
                cursor,
                limit,
                ..query.clone()
            };
            self.jobs_page(page)
        };
        pages
            .read(query.cursor.clone(), Some(FULL_PAGE), fetch)
            .await
    }

    /// One page of recent jobs, newest first, without targets: those after
    /// `query.cursor`, at most `query.limit` of them (default 50, most 1000).
    pub async fn jobs_page(&self, query: JobListQuery) -> Result<Page<JobInfo>, ClientError> {
        expect_reply!(self, ClientToHub::JobList(query), "job.list",
            HubToClient::JobList(list) => Page { items: list.jobs, next_cursor: list.next_cursor })
    }

    /// One job, with every one of its targets: when `job.get` holds only the
    /// first page of them, the rest are read with `job.targets`.
    pub async fn job(&self, id: JobId) -> Result<JobInfo, ClientError> {
        let request = ClientToHub::JobGet(JobRef { job: id });
        let mut job: JobInfo =
            expect_reply!(self, request, "job.info", HubToClient::JobInfo(job) => job.job)?;
        self.read_all_targets(&mut job).await?;
        Ok(job)
    }

    /// One page of a job's targets, sorted by agent name: those after
    /// `query.cursor`, at most `query.limit` of them (default and most 1000).
    pub async fn job_targets_page(
        &self,
        query: JobTargetsQuery,
    ) -> Result<Page<JobTarget>, ClientError> {
        expect_reply!(self, ClientToHub::JobTargets(query), "job.targets",
            HubToClient::JobTargets(page) => Page { items: page.targets, next_cursor: page.next_cursor })
    }

    /// Completes a job whose `targets` hold only the first page, as `job.get`
    /// and `job.accepted` may send it: reads the other pages with
    /// `job.targets` and clears `targets_next_cursor`. A job of N targets has
    /// at most N pages of them, and perhaps an empty last one.
    pub async fn read_all_targets(&self, job: &mut JobInfo) -> Result<(), ClientError> {
        let Some(cursor) = job.targets_next_cursor.take() else {
            return Ok(());
        };
        let max_pages = job.progress.total as usize + 1;
        let mut pages = Pages::new("job.targets", None).with_max_pages(max_pages);
        let first = Page {
            items: std::mem::take(&mut job.targets),
            next_cursor: Some(cursor),
        };
        let Some(next) = pages.add(first)? else {
            job.targets = pages.into_items();
            return Ok(());
        };
        let id = job.id;
        let fetch = |cursor, limit| {
            self.job_targets_page(JobTargetsQuery {
                job: id,
                cursor,
                limit,
            })
        };
        job.targets = pages.read(Some(next), None, fetch).await?;
        Ok(())
    }

    /// Every agent a query matches, following its pages from `query.cursor`.
    async fn all_agents(&self, query: AgentListQuery) -> Result<Vec<AgentInfo>, ClientError> {
        let pages = Pages::new("agent.list", None).starting_at(query.cursor.as_ref());
        let fetch = |cursor, limit| {
            let page = AgentListQuery {
                cursor,
                limit,
                ..query.clone()
            };
            self.agents_page(page)
        };
        pages.read(query.cursor.clone(), None, fetch).await
    }
}
