//! Jobs: a command, action or workflow fanned out over the agents a selector
//! matches, in rolling batches, step by step.
//!
//! A job's selector is resolved once, at creation: one target per matched
//! agent. Each step of a target is an ordinary run, created through the same
//! path as `run.create` and linked to its job and step; every transition of
//! such a run reaches the job at once, in the same pass of the engine, so a
//! target's change lands in the same batch as the run's. Events on
//! `job:<id>` are numbered as they happen and stored before they are
//! published; `job.progress` is computed once per batch, from the counts at
//! its end, and targets are written once per batch in their latest state.

mod state;

use std::collections::{BTreeSet, HashMap};

use muster_proto::jobs::{JobInfo, JobProgress, JobSpec, JobState, JobTarget, TargetState};
use muster_proto::messages::{
    AgentEvent, JobAccepted, JobCreate, JobEnvelope, JobTargets, JobTargetsQuery, Principal,
    StepProgressEvent,
};
use muster_proto::types::RunRequest;
use muster_proto::{
    AgentName, AgentStatus, Channel, ErrorCode, HubToClient, JobId, RequestId, RunId, RunInfo,
    Selector, UnixMillis,
};

pub(crate) use state::ActiveJob;
use state::{Advance, Numbered, OFFLINE};

use super::batch::{Effect, Reply, ReplyTo};
use super::error::ApiError;
use super::{Engine, Lookup, keys};
use crate::broker::{Delivery, Frame};
use crate::paging;
use crate::reads::Read;
use crate::store::{Change, UnfinishedJob};
use crate::validate;

/// Targets in one page of `job.targets`, and in `job.info` at most.
pub(crate) const TARGET_PAGE: usize = 1000;

/// Targets a job starts in one batch at most; it starts more once that batch
/// is committed. This bounds the burst of events a follower of the job gets
/// at once, and the first targets start before the last are even created.
const STARTS_PER_BATCH: usize = 256;

/// The jobs not yet final.
#[derive(Default)]
pub(crate) struct Jobs {
    pub(super) active: HashMap<JobId, ActiveJob>,
    /// Jobs changed in the current batch: written and counted at its end.
    dirty: BTreeSet<JobId>,
    /// Jobs waiting for a commit before they start more targets.
    paced: BTreeSet<JobId>,
}

impl Engine {
    /// `job.create`: a new job, or the one its idempotency key created.
    pub(super) fn request_job(
        &mut self,
        principal: &Principal,
        to: &ReplyTo,
        re: Option<RequestId>,
        id: JobId,
        create: JobCreate,
        now: UnixMillis,
    ) {
        let JobCreate {
            spec,
            subscribe,
            idempotency_key: key,
        } = create;
        let own_channel = subscribe.then_some(Channel::Job(id));
        let valid =
            validate::job_spec(&spec).and_then(|()| validate::idempotency_key(key.as_deref()));
        if let Err(e) = valid {
            return self.reply_error(to, re, e, own_channel);
        }
        let pending = keys::Pending::Job {
            to: to.clone(),
            re,
            id,
            spec,
            subscribe,
            key,
            principal: principal.clone(),
        };
        if let Some(keys::Pending::Job {
            to,
            re,
            id,
            spec,
            subscribe,
            key,
            principal,
        }) = self.route_by_key(pending)
        {
            self.create_job_answered(&principal, &to, re, id, spec, subscribe, key, now);
        }
    }

    /// Creates a job and answers `job.accepted` before any of its events.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn create_job_answered(
        &mut self,
        principal: &Principal,
        to: &ReplyTo,
        re: Option<RequestId>,
        id: JobId,
        spec: JobSpec,
        subscribe: bool,
        key: Option<String>,
        now: UnixMillis,
    ) {
        let mark = self.batch.effects_len();
        match self.create_job(principal, id, spec, key, now) {
            Ok(job) => {
                let accepted = HubToClient::JobAccepted(JobAccepted {
                    job: first_page(&job, self.page_bytes()),
                    created: true,
                });
                let reply = Effect::Reply(to.clone(), Box::new(Reply::to(re, accepted)));
                self.batch.insert_effect(mark, reply);
            }
            Err(e) => self.reply_error(to, re, e, subscribe.then_some(Channel::Job(id))),
        }
    }

    fn create_job(
        &mut self,
        principal: &Principal,
        id: JobId,
        spec: JobSpec,
        key: Option<String>,
        now: UnixMillis,
    ) -> Result<JobInfo, ApiError> {
        let selector = Selector::parse(&spec.selector)
            .map_err(|e| ApiError::new(ErrorCode::InvalidSelector, e.to_string()))?;
        let agents = self.agents_matching(principal, &selector);
        if agents.is_empty() {
            let within = principal.scope.as_ref().map_or(String::new(), |scope| {
                format!(" within this key's scope ({scope})")
            });
            return Err(ApiError::new(
                ErrorCode::NoTargets,
                format!("selector {:?} matched no agents{within}", selector.as_str()),
            ));
        }
        let targets: Vec<JobTarget> = agents
            .into_iter()
            .map(|agent| {
                let offline = spec.online_only && agent.status == AgentStatus::Offline;
                JobTarget {
                    agent: agent.name,
                    state: if offline {
                        TargetState::Skipped
                    } else {
                        TargetState::Pending
                    },
                    steps: Vec::new(),
                    error: offline.then(|| OFFLINE.to_owned()),
                    started_ms: None,
                    finished_ms: None,
                }
            })
            .collect();
        let eligible = targets
            .iter()
            .filter(|t| t.state == TargetState::Pending)
            .count();
        let batch_limit = spec
            .batch
            .map_or(eligible, |b| b.limit(eligible))
            .clamp(1, u32::MAX as usize) as u32;
        let job = JobInfo {
            id,
            progress: JobProgress::count(targets.iter().map(|t| t.state)),
            spec,
            state: JobState::Running,
            batch_limit,
            requested_by: Some(principal.name.clone()),
            idempotency_key: key,
            cancel_requested: false,
            created_ms: now,
            finished_ms: None,
            targets,
            targets_next_cursor: None,
        };
        self.batch.change(Change::InsertJob(Box::new(job.clone())));
        if let (Some(owner), Some(key)) = (&job.requested_by, &job.idempotency_key) {
            self.keys.insert_job(owner, key, id);
        }
        let mut active = ActiveJob::new(job.clone(), 0);
        let announced = active.announce(now);
        self.jobs.active.insert(id, active);
        self.publish_job_events(id, announced);
        self.jobs.dirty.insert(id);
        self.fill_slots(id, now);
        Ok(job)
    }

    /// Answers `job.accepted` (not created) for a job the hub holds.
    pub(super) fn answer_existing_job(
        &mut self,
        to: &ReplyTo,
        re: Option<RequestId>,
        subscribe: bool,
        id: JobId,
    ) {
        let _ = subscribe;
        match self.jobs.active.get(&id) {
            Some(job) => {
                let accepted = HubToClient::JobAccepted(JobAccepted {
                    job: first_page(&job.info, self.page_bytes()),
                    created: false,
                });
                self.batch.reply(to, Reply::to(re, accepted));
            }
            None => self
                .lookups
                .push(Lookup::Read(to.clone(), re, Read::JobAccepted(id))),
        }
    }

    /// Answers `job.accepted` (not created) for a job the store found by key.
    pub(super) fn answer_stored_job(
        &mut self,
        to: &ReplyTo,
        re: Option<RequestId>,
        subscribe: bool,
        job: JobInfo,
    ) {
        if self.jobs.active.contains_key(&job.id) {
            return self.answer_existing_job(to, re, subscribe, job.id);
        }
        self.lookups
            .push(Lookup::Read(to.clone(), re, Read::JobAccepted(job.id)));
    }

    /// `job.get`.
    pub(super) fn get_job(&mut self, to: &ReplyTo, re: Option<RequestId>, id: JobId) {
        match self.jobs.active.get(&id) {
            Some(job) => {
                let msg = HubToClient::JobInfo(JobEnvelope {
                    job: first_page(&job.info, self.page_bytes()),
                });
                self.batch.reply(to, Reply::to(re, msg));
            }
            None => self
                .lookups
                .push(Lookup::Read(to.clone(), re, Read::Job(id))),
        }
    }

    /// `job.targets`.
    pub(super) fn job_targets(
        &mut self,
        to: &ReplyTo,
        re: Option<RequestId>,
        query: JobTargetsQuery,
    ) {
        let Some(job) = self.jobs.active.get(&query.job) else {
            return self
                .lookups
                .push(Lookup::Read(to.clone(), re, Read::JobTargets(query)));
        };
        let budget = self.page_bytes();
        let page = paging::name_cursor(query.cursor.as_deref()).map(|after| {
            let limit = paging::limit(query.limit, TARGET_PAGE, TARGET_PAGE);
            let targets = job
                .info
                .targets
                .iter()
                .filter(|t| after.as_ref().is_none_or(|a| &t.agent > a))
                .cloned();
            target_page(query.job, targets, limit, budget)
        });
        match page {
            Ok(page) => self
                .batch
                .reply(to, Reply::to(re, HubToClient::JobTargets(page))),
            Err(e) => self.reply_error(to, re, e, None),
        }
    }

    /// `job.cancel`.
    pub(super) fn cancel_job(
        &mut self,
        to: &ReplyTo,
        re: Option<RequestId>,
        id: JobId,
        now: UnixMillis,
    ) {
        if !self.jobs.active.contains_key(&id) {
            return self
                .lookups
                .push(Lookup::Read(to.clone(), re, Read::CancelJobEnded(id)));
        }
        self.cancel_job_now(id, now);
        self.batch
            .reply(to, Reply::to(re, HubToClient::Ok(Default::default())));
    }

    /// A batch that started some of a job's targets is committed.
    pub(super) fn continue_job(&mut self, id: JobId, now: UnixMillis) {
        if self.jobs.paced.remove(&id) {
            self.fill_slots(id, now);
        }
    }

    /// Starts waiting targets while the batch has room (at most
    /// [`STARTS_PER_BATCH`] now, more after the commit), or skips them once
    /// fail-fast applies.
    fn fill_slots(&mut self, id: JobId, now: UnixMillis) {
        if self.jobs.paced.contains(&id) {
            return; // more start once the current batch is committed
        }
        let Some(job) = self.jobs.active.get_mut(&id) else {
            return;
        };
        if !job.may_start() {
            if job.info.spec.fail_fast && !job.info.cancel_requested {
                let skipped = job.skip_pending(now);
                self.publish_job_events(id, skipped);
            }
            return;
        }
        let room = (job.info.batch_limit as usize).saturating_sub(job.in_progress());
        let (now_starting, more) = job.next_pending(room.min(STARTS_PER_BATCH));
        if more && room > now_starting.len() {
            self.jobs.paced.insert(id);
            self.batch.effect(Effect::ContinueJob(id));
        }
        for i in now_starting {
            if !self.start_step(id, i, 0, now) {
                // A failed start stops a fail-fast job at once.
                return self.fill_slots(id, now);
            }
        }
    }

    /// Creates the run of step `step` of target `i`; false if the target
    /// failed instead (the run could not be created).
    fn start_step(&mut self, id: JobId, i: usize, step: u32, now: UnixMillis) -> bool {
        let Some((principal, request)) = self.step_request(id, i, step) else {
            return true;
        };
        let run = RunId::generate();
        let created = self.create_run(&principal, run, request, Some((id, step)), now);
        let info = self.runs.get(&run).map(|r| r.info.clone());
        let Some(job) = self.jobs.active.get_mut(&id) else {
            return true;
        };
        self.jobs.dirty.insert(id);
        let mut out = Vec::new();
        let started = match (created, info) {
            (Ok(()), Some(info)) => {
                out.extend(job.record_step(i, step, &info, now));
                // The run may have moved already (dispatched at once).
                job.run_changed(i, step, &info, now, &mut out);
                true
            }
            (Err(e), _) => {
                out.push(job.end_target(i, TargetState::Failed, Some(e.message), now));
                false
            }
            (Ok(()), None) => true,
        };
        self.publish_job_events(id, out);
        started
    }

    /// The principal and run request of a step, or `None` if the job or step is gone.
    fn step_request(&self, id: JobId, i: usize, step: u32) -> Option<(Principal, RunRequest)> {
        let job = self.jobs.active.get(&id)?;
        let spec = &job.info.spec;
        let step_spec = spec.steps.get(step as usize)?;
        let agent = job.info.targets.get(i)?.agent.clone();
        let principal = Principal {
            kind: "client".to_owned(),
            name: job.info.requested_by.clone().unwrap_or_default(),
            role: None,
            scope: None,
        };
        let mut request = RunRequest::new(agent.clone(), step_spec.command.clone());
        request.env = step_spec.env.clone();
        request.cwd = step_spec.cwd.clone();
        request.timeout_ms = step_spec.timeout_ms;
        request.priority = spec.priority;
        request.ttl_ms = spec.ttl_ms;
        request.idempotency_key = Some(format!("job:{id}:{agent}:{step}"));
        Some((principal, request))
    }

    /// A job's run changed state: its target follows, and moves on when the run ended.
    pub(super) fn job_run_changed(&mut self, run: &RunInfo, now: UnixMillis) {
        let (Some(id), Some(step)) = (run.job, run.step) else {
            return;
        };
        let Some(job) = self.jobs.active.get_mut(&id) else {
            return;
        };
        let Some(&i) = job.index.get(&run.agent) else {
            return;
        };
        self.jobs.dirty.insert(id);
        let mut out = Vec::new();
        let advance = match job.run_changed(i, step, run, now, &mut out) {
            Some(outcome) => job.advance(i, step, &outcome, now, &mut out),
            None => Advance::Wait,
        };
        self.publish_job_events(id, out);
        match advance {
            Advance::NextStep(next) => {
                self.start_step(id, i, next, now);
            }
            Advance::Ended => self.fill_slots(id, now),
            Advance::Wait => {}
        }
    }

    /// Cancels a job: waiting targets end at once, runs are cancelled and
    /// their targets end as the runs do.
    fn cancel_job_now(&mut self, id: JobId, now: UnixMillis) {
        let Some(job) = self.jobs.active.get_mut(&id) else {
            return;
        };
        if job.info.cancel_requested {
            return;
        }
        job.info.cancel_requested = true;
        job.dirty_record = true;
        let mut out = Vec::new();
        let mut runs = Vec::new();
        for i in 0..job.info.targets.len() {
            match job.info.targets[i].state {
                TargetState::Pending => {
                    out.push(job.end_target(i, TargetState::Cancelled, None, now));
                }
                TargetState::Queued | TargetState::Running => {
                    runs.extend(job.info.targets[i].steps.last().map(|s| s.run));
                }
                _ => {}
            }
        }
        self.jobs.dirty.insert(id);
        self.publish_job_events(id, out);
        for run in runs {
            self.cancel_run_internally(run, now);
        }
    }

    /// An event a job's step published is copied to `job:<id>`.
    pub(super) fn job_step_event(
        &mut self,
        agent: &AgentName,
        event: &AgentEvent,
        now: UnixMillis,
    ) {
        let Some(run) = event.run.and_then(|id| self.runs.get(&id)) else {
            return;
        };
        let (Some(id), Some(step)) = (run.info.job, run.info.step) else {
            return;
        };
        if &run.info.agent != agent {
            return;
        }
        let run = run.info.id;
        let Some(job) = self.jobs.active.get_mut(&id) else {
            return;
        };
        let (kind, data) = (event.kind.clone(), event.data.clone());
        let numbered = job.event(now, |job, seq, ts_ms| {
            HubToClient::JobStepProgress(StepProgressEvent {
                job,
                seq,
                ts_ms,
                agent: agent.clone(),
                step,
                run,
                kind,
                data,
            })
        });
        self.jobs.dirty.insert(id);
        self.publish_job_events(id, vec![numbered]);
    }

    /// Reloads running jobs after a restart and catches up with whatever
    /// their runs did meanwhile. Runs are recovered first.
    pub(super) fn recover_jobs(
        &mut self,
        jobs: Vec<UnfinishedJob>,
        ended_runs: Vec<RunInfo>,
        now: UnixMillis,
    ) {
        let ended: HashMap<RunId, RunInfo> = ended_runs.into_iter().map(|r| (r.id, r)).collect();
        for UnfinishedJob { job, next_seq } in jobs {
            let id = job.id;
            if let (Some(owner), Some(key)) = (&job.requested_by, &job.idempotency_key) {
                self.keys.insert_job(owner, key, id);
            }
            let current: Vec<RunId> = job
                .targets
                .iter()
                .filter(|t| !t.state.is_terminal())
                .filter_map(|t| t.steps.last().map(|s| s.run))
                .collect();
            self.jobs.active.insert(id, ActiveJob::new(job, next_seq));
            self.jobs.dirty.insert(id);
            for run in current {
                let info = self
                    .runs
                    .get(&run)
                    .map(|r| r.info.clone())
                    .or_else(|| ended.get(&run).cloned());
                if let Some(info) = info {
                    self.job_run_changed(&info, now);
                }
            }
            self.fill_slots(id, now);
        }
    }

    /// Writes what changed in every job this batch, numbers `job.progress`
    /// from the final counts, and ends the jobs whose targets all ended.
    pub(super) fn flush_jobs(&mut self, now: UnixMillis) {
        for id in std::mem::take(&mut self.jobs.dirty) {
            let Some(job) = self.jobs.active.get_mut(&id) else {
                continue;
            };
            let settled = job.settle(now);
            let progress = job.progress(now);
            let targets: Vec<JobTarget> = std::mem::take(&mut job.dirty_targets)
                .into_iter()
                .filter_map(|i| job.info.targets.get(i).cloned())
                .collect();
            let events = std::mem::take(&mut job.unsaved_events);
            let record = std::mem::take(&mut job.dirty_record).then(|| without_targets(&job.info));
            if !targets.is_empty() {
                self.batch.change(Change::UpdateTargets(id, targets));
            }
            if let Some(record) = record {
                self.batch.change(Change::UpdateJob(Box::new(record)));
            }
            if !events.is_empty() {
                self.batch.change(Change::AppendJobEvents(id, events));
            }
            self.publish_job_events(id, progress.into_iter().collect());
            if settled {
                self.jobs.active.remove(&id);
                self.batch.job_ended(id);
            }
        }
    }

    /// Publishes numbered events, after the commit, in order.
    fn publish_job_events(&mut self, id: JobId, events: Vec<Numbered>) {
        for event in events {
            self.batch.effect(Effect::Raw(Delivery {
                channel: Channel::Job(id).into(),
                seq: Some(event.seq),
                frame: Frame::text(event.text),
                last: event.last,
                key: None,
            }));
        }
    }
}

/// A job's record without its targets (not even cloned).
pub(crate) fn without_targets(job: &JobInfo) -> JobInfo {
    JobInfo {
        id: job.id,
        spec: job.spec.clone(),
        state: job.state,
        progress: job.progress,
        batch_limit: job.batch_limit,
        requested_by: job.requested_by.clone(),
        idempotency_key: job.idempotency_key.clone(),
        cancel_requested: job.cancel_requested,
        created_ms: job.created_ms,
        finished_ms: job.finished_ms,
        targets: Vec::new(),
        targets_next_cursor: None,
    }
}

/// A job with at most its first page of targets, in at most `budget` bytes.
pub(crate) fn first_page(job: &JobInfo, budget: usize) -> JobInfo {
    let page = target_page(job.id, job.targets.iter().cloned(), TARGET_PAGE, budget);
    JobInfo {
        targets: page.targets,
        targets_next_cursor: page.next_cursor,
        ..without_targets(job)
    }
}

/// One page of targets, bounded by count and by bytes.
pub(crate) fn target_page(
    job: JobId,
    targets: impl Iterator<Item = JobTarget>,
    limit: usize,
    budget: usize,
) -> JobTargets {
    let page = paging::fill(targets, limit, budget);
    let next_cursor = page
        .more
        .then(|| page.items.last().map(|t| t.agent.to_string()))
        .flatten();
    JobTargets {
        job,
        targets: page.items,
        next_cursor,
    }
}
