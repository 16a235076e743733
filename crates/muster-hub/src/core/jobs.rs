//! Jobs: fan a command, action or workflow out over the agents a selector
//! matches, in rolling batches, step by step.
//!
//! A session validates and stores a new job; from then on one task, the job
//! driver, owns every change to every job. Run transitions of job runs,
//! cancellations and step progress reach it as [`JobSignal`]s on one channel,
//! so a job's targets advance in the order their runs changed and no two
//! changes to a job ever race. The driver creates each step's run through the
//! same path as `run.create`, with an idempotency key derived from job, agent
//! and step, so a step restarted after a hub restart finds its run instead of
//! creating a second one.
//!
//! Every event on `job:<id>` is numbered, stored, then published, like run
//! output: a subscriber replays from any offset and never sees an event the
//! store does not have.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use muster_proto::jobs::{
    JobInfo, JobProgress, JobSpec, JobState, JobTarget, StepOutcome, TargetState,
};
use muster_proto::messages::{
    AgentEvent, JobListQuery, JobProgressEvent, Principal, StepEndedEvent, StepProgressEvent,
    StepStartedEvent, TargetEvent,
};
use muster_proto::types::RunRequest;
use muster_proto::{
    AgentName, AgentStatus, Envelope, ErrorCode, HubToClient, JobId, RunInfo, RunState, Selector,
};
use tokio::sync::mpsc;

use super::{ApiError, Core, now_ms};
use crate::broker::{Delivery, Frame};
use crate::store::StoreError;
use crate::validate;

/// What the job driver acts on.
#[derive(Debug)]
pub(crate) enum JobSignal {
    /// Start targets up to the batch limit (a new or recovered job).
    Start(JobId),
    /// A run of a job changed state.
    RunChanged(Box<RunInfo>),
    /// A client asked to cancel the job.
    Cancel(JobId),
    /// A step's process published an event.
    StepProgress(JobId, Box<AgentEvent>, AgentName, u32),
}

/// The job driver's end of the signal channel.
pub(crate) type JobSignals = mpsc::UnboundedReceiver<JobSignal>;

/// A job that has not reached a final state, owned by the driver.
#[derive(Debug)]
pub(crate) struct ActiveJob {
    info: JobInfo,
    /// Target index by agent name.
    index: HashMap<AgentName, usize>,
    /// Seq of the next event on `job:<id>`.
    next_seq: u64,
    /// Whether the driver has announced the job (initial progress, skipped targets).
    announced: bool,
    /// The counts last published, to publish only changes.
    published: Option<(JobState, JobProgress)>,
}

/// An event numbered under the jobs lock, stored and published after it.
struct Numbered {
    job: JobId,
    seq: u64,
    text: String,
    last: bool,
}

/// What the driver changed in one job and has not written yet: which
/// targets, whether the job's record, and the events it numbered. Written
/// in one transaction by [`Core::commit`], then the events are published.
#[derive(Default)]
struct Unsaved {
    targets: Vec<usize>,
    job: bool,
    events: Vec<Numbered>,
}

impl Unsaved {
    fn events(events: Vec<Numbered>) -> Self {
        Self {
            events,
            ..Self::default()
        }
    }
}

/// Targets started by one fill before their changes are written: bounds how
/// long the first of them waits to be seen.
const STARTS_PER_COMMIT: usize = 64;

impl ActiveJob {
    fn new(info: JobInfo, next_seq: u64, announced: bool) -> Self {
        let index = info
            .targets
            .iter()
            .enumerate()
            .map(|(i, t)| (t.agent.clone(), i))
            .collect();
        Self {
            info,
            index,
            next_seq,
            announced,
            published: None,
        }
    }

    /// Numbers an event built by `make(job, seq, now)`.
    fn event(
        &mut self,
        out: &mut Vec<Numbered>,
        make: impl FnOnce(JobId, u64, u64) -> HubToClient,
    ) {
        let (job, seq) = (self.info.id, self.next_seq);
        self.next_seq += 1;
        let msg = make(job, seq, now_ms());
        let last = matches!(&msg, HubToClient::JobProgress(p) if p.state.is_terminal());
        let text = Envelope::event(job.channel(), msg).encode();
        out.push(Numbered {
            job,
            seq,
            text,
            last,
        });
    }

    /// Recounts targets and numbers a `job.progress` if anything changed.
    fn progress(&mut self, out: &mut Vec<Numbered>) {
        let progress = JobProgress::count(self.info.targets.iter().map(|t| t.state));
        self.info.progress = progress;
        let now = (self.info.state, progress);
        if self.published == Some(now) {
            return;
        }
        self.published = Some(now);
        let state = self.info.state;
        self.event(out, |job, seq, ts_ms| {
            HubToClient::JobProgress(JobProgressEvent {
                job,
                seq,
                ts_ms,
                state,
                progress,
            })
        });
    }

    /// Puts target `i` in its final state and numbers `job.target`.
    fn end_target(
        &mut self,
        out: &mut Vec<Numbered>,
        i: usize,
        state: TargetState,
        error: Option<String>,
    ) {
        let target = &mut self.info.targets[i];
        target.state = state;
        target.error = error.clone();
        target.finished_ms = Some(now_ms());
        let agent = target.agent.clone();
        self.event(out, |job, seq, ts_ms| {
            HubToClient::JobTarget(TargetEvent {
                job,
                seq,
                ts_ms,
                agent,
                state,
                error,
            })
        });
    }

    /// Targets with a run on their agent (queued there or running).
    fn in_progress(&self) -> usize {
        self.info
            .targets
            .iter()
            .filter(|t| matches!(t.state, TargetState::Queued | TargetState::Running))
            .count()
    }

    /// Whether new targets may start: not cancelled, and not stopped by fail-fast.
    fn may_start(&self) -> bool {
        let failed = self
            .info
            .targets
            .iter()
            .any(|t| t.state == TargetState::Failed);
        let stopped_by_failure = self.info.spec.fail_fast && failed;
        !self.info.cancel_requested && !stopped_by_failure
    }

    /// Sets the final state once every target has one.
    fn settle(&mut self) -> bool {
        if self.info.state.is_terminal() || self.info.targets.iter().any(|t| !t.state.is_terminal())
        {
            return false;
        }
        self.info.state = final_state(&self.info);
        self.info.finished_ms = Some(now_ms());
        true
    }
}

/// The state of a job whose targets have all ended.
fn final_state(job: &JobInfo) -> JobState {
    if job.cancel_requested {
        JobState::Cancelled
    } else if job
        .targets
        .iter()
        .any(|t| matches!(t.state, TargetState::Failed | TargetState::Cancelled))
        || job
            .targets
            .iter()
            .any(|t| t.state == TargetState::Skipped && t.error.as_deref() == Some(FAIL_FAST))
    {
        JobState::Failed
    } else {
        JobState::Succeeded
    }
}

/// Why a waiting target was skipped after a failure.
const FAIL_FAST: &str = "not started: fail-fast stopped the job after a failure";
/// Why an offline target was skipped.
const OFFLINE: &str = "not started: the agent was offline (online-only)";

impl Core {
    /// Validates `spec`, resolves its selector and stores the job; the caller
    /// subscribes if it wants to, then calls [`Core::start_job`]. With an
    /// idempotency key this principal already used, returns the job it
    /// created instead (`false`), however far that job has got.
    pub async fn create_job(
        &self,
        principal: &Principal,
        spec: JobSpec,
        idempotency_key: Option<String>,
    ) -> Result<(JobInfo, bool), ApiError> {
        validate::job_spec(&spec)?;
        validate::idempotency_key(idempotency_key.as_deref())?;
        if let Some(key) = &idempotency_key
            && let Some(existing) = self
                .store
                .job_by_idempotency_key(&principal.name, key)
                .await?
        {
            return Ok((self.job(existing.id).await?, false));
        }
        let selector = Selector::parse(&spec.selector)
            .map_err(|e| ApiError::new(ErrorCode::InvalidSelector, e.to_string()))?;
        let agents = self.agents_matching(&selector).await?;
        if agents.is_empty() {
            return Err(ApiError::new(
                ErrorCode::NoTargets,
                format!("selector {:?} matched no agents", selector.as_str()),
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
            id: JobId::generate(),
            progress: JobProgress::count(targets.iter().map(|t| t.state)),
            spec,
            state: JobState::Running,
            batch_limit,
            requested_by: Some(principal.name.clone()),
            idempotency_key,
            cancel_requested: false,
            created_ms: now_ms(),
            finished_ms: None,
            targets,
            targets_next_cursor: None,
        };
        match self.store.insert_job(&job).await {
            Ok(()) => {}
            Err(StoreError::Conflict) => {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    "idempotency key raced with another request",
                ));
            }
            Err(StoreError::Other(e)) => return Err(e.into()),
        }
        self.jobs
            .lock()
            .expect("jobs lock poisoned")
            .insert(job.id, ActiveJob::new(job.clone(), 0, false));
        Ok((job, true))
    }

    /// Lets the driver start a stored job's first targets.
    pub fn start_job(&self, id: JobId) {
        self.signal_job(JobSignal::Start(id));
    }

    /// One job, with its targets.
    pub async fn job(&self, id: JobId) -> Result<JobInfo, ApiError> {
        if let Some(active) = self.jobs.lock().expect("jobs lock poisoned").get(&id) {
            return Ok(active.info.clone());
        }
        self.store.job(id).await?.ok_or_else(|| job_not_found(id))
    }

    /// Whether a job has ended and published its last event: nothing more
    /// will ever be published on its channel.
    pub async fn job_settled(&self, id: JobId) -> Result<bool, ApiError> {
        if self
            .jobs
            .lock()
            .expect("jobs lock poisoned")
            .contains_key(&id)
        {
            return Ok(false);
        }
        let job = self.store.job(id).await?.ok_or_else(|| job_not_found(id))?;
        Ok(job.state.is_terminal())
    }

    /// Jobs matching a query, newest first, without targets.
    pub async fn jobs(&self, query: &JobListQuery) -> Result<Vec<JobInfo>, ApiError> {
        let mut jobs = self.store.jobs(query).await?;
        let active = self.jobs.lock().expect("jobs lock poisoned");
        for job in &mut jobs {
            if let Some(live) = active.get(&job.id) {
                job.state = live.info.state;
                job.progress = live.info.progress;
                job.cancel_requested = live.info.cancel_requested;
            }
        }
        Ok(jobs)
    }

    /// Asks the driver to cancel a running job.
    pub async fn cancel_job(&self, id: JobId) -> Result<(), ApiError> {
        let job = self.job(id).await?;
        if job.state.is_terminal() {
            return Err(ApiError::new(
                ErrorCode::InvalidState,
                format!("job {id} already ended {}", job.state),
            ));
        }
        self.signal_job(JobSignal::Cancel(id));
        Ok(())
    }

    /// Reloads running jobs after a restart and lets the driver catch up with
    /// whatever their runs did meanwhile.
    pub async fn recover_jobs(&self) -> anyhow::Result<()> {
        for job in self.store.unfinished_jobs().await? {
            let id = job.id;
            let next_seq = self.store.next_job_event_seq(id).await?;
            let current: Vec<_> = job
                .targets
                .iter()
                .filter(|t| !t.state.is_terminal())
                .filter_map(|t| t.steps.last().map(|s| s.run))
                .collect();
            self.jobs
                .lock()
                .expect("jobs lock poisoned")
                .insert(id, ActiveJob::new(job, next_seq, true));
            for run in current {
                if let Ok(run) = self.run(run).await {
                    self.signal_job(JobSignal::RunChanged(Box::new(run)));
                }
            }
            self.signal_job(JobSignal::Start(id));
        }
        Ok(())
    }

    /// Hands a signal to the job driver.
    pub(crate) fn signal_job(&self, signal: JobSignal) {
        if self.job_signals.send(signal).is_err() {
            tracing::error!("the job driver is gone; a job signal was dropped");
        }
    }

    /// Forwards an event a job's step published to `job:<id>`.
    pub(super) async fn job_step_event(&self, agent: &AgentName, event: &AgentEvent) {
        let Some(run) = event.run else { return };
        let Ok(run) = self.run(run).await else { return };
        if let (Some(job), Some(step), true) = (run.job, run.step, &run.agent == agent) {
            let event = Box::new(event.clone());
            self.signal_job(JobSignal::StepProgress(job, event, agent.clone(), step));
        }
    }

    /// Handles one signal; only the driver calls this.
    async fn handle_job_signal(&self, signal: JobSignal) {
        match signal {
            JobSignal::Start(id) => {
                let events = self.with_job(id, |job, out| {
                    if !job.announced {
                        job.announced = true;
                        announce(job, out);
                    }
                });
                self.commit(id, Unsaved::events(events)).await;
                self.fill_slots(id).await;
            }
            JobSignal::RunChanged(run) => self.job_run_changed(*run).await,
            JobSignal::Cancel(id) => self.cancel_job_now(id).await,
            JobSignal::StepProgress(id, event, agent, step) => {
                let events = self.with_job(id, |job, out| {
                    let AgentEvent {
                        kind, data, run, ..
                    } = *event;
                    let Some(run) = run else { return };
                    job.event(out, |job, seq, ts_ms| {
                        HubToClient::JobStepProgress(StepProgressEvent {
                            job,
                            seq,
                            ts_ms,
                            agent,
                            step,
                            run,
                            kind,
                            data,
                        })
                    });
                });
                self.commit(id, Unsaved::events(events)).await;
            }
        }
    }

    /// Runs `f` on an active job under the lock; returns the events it numbered.
    fn with_job(
        &self,
        id: JobId,
        f: impl FnOnce(&mut ActiveJob, &mut Vec<Numbered>),
    ) -> Vec<Numbered> {
        let mut out = Vec::new();
        if let Some(job) = self.jobs.lock().expect("jobs lock poisoned").get_mut(&id) {
            f(job, &mut out);
        }
        out
    }

    /// Starts waiting targets while the batch has room, skips them once
    /// fail-fast applies, and settles the job when every target has ended.
    /// What it changes is written a few dozen targets at a time, with one
    /// `job.progress` for each write.
    async fn fill_slots(&self, id: JobId) {
        let mut changes = Unsaved::default();
        let mut started = 0;
        loop {
            let mut next = None;
            let events = self.with_job(id, |job, out| {
                if !job.may_start() {
                    if job.info.spec.fail_fast && !job.info.cancel_requested {
                        changes.targets.extend(skip_pending(job, out));
                    }
                    return;
                }
                if job.in_progress() >= job.info.batch_limit as usize {
                    return;
                }
                next = job
                    .info
                    .targets
                    .iter()
                    .position(|t| t.state == TargetState::Pending);
            });
            changes.events.extend(events);
            let Some(target) = next else { break };
            if !self.start_step(id, target, 0, &mut changes).await {
                break;
            }
            started += 1;
            if started % STARTS_PER_COMMIT == 0 {
                self.commit_with_progress(id, std::mem::take(&mut changes))
                    .await;
            }
        }
        self.commit_with_progress(id, changes).await;
        self.settle_job(id).await;
    }

    /// Creates the run of step `step` for target `i` and records it in
    /// `changes`; false if the job or step is gone. The counts are left to
    /// the caller's next `job.progress`.
    async fn start_step(&self, id: JobId, i: usize, step: u32, changes: &mut Unsaved) -> bool {
        let Some((principal, request)) = self.step_request(id, i, step) else {
            return false;
        };
        let created = match self
            .prepare_linked_run(&principal, request, Some((id, step)))
            .await
        {
            Ok((run, created)) => Ok((run, created)),
            Err(e) => Err(e.message),
        };
        let run = match created {
            Ok((run, true)) => match self.enqueue_run(run.clone()).await {
                // A full queue ends the run `failed`; its transition arrives as a signal.
                Ok(()) | Err(_) => Ok(run),
            },
            Ok((run, false)) => Ok(run),
            Err(e) => Err(e),
        };
        let ended = run.as_ref().ok().filter(|r| r.state.is_terminal()).cloned();
        let events = self.with_job(id, |job, out| match run {
            Ok(run) => record_step(job, out, i, step, &run),
            Err(error) => job.end_target(out, i, TargetState::Failed, Some(error)),
        });
        changes.targets.push(i);
        changes.events.extend(events);
        // A run found by its key that ended before a restart sends no more
        // transitions: replay its end (after this change is written).
        if let Some(run) = ended {
            self.signal_job(JobSignal::RunChanged(Box::new(run)));
        }
        true
    }

    /// The principal and run request of a step, or `None` if the job is gone.
    fn step_request(&self, id: JobId, i: usize, step: u32) -> Option<(Principal, RunRequest)> {
        let jobs = self.jobs.lock().expect("jobs lock poisoned");
        let job = jobs.get(&id)?;
        let spec = &job.info.spec;
        let step_spec = spec.steps.get(step as usize)?;
        let agent = job.info.targets.get(i)?.agent.clone();
        let principal = Principal {
            kind: "client".to_owned(),
            name: job.info.requested_by.clone().unwrap_or_default(),
            role: None,
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

    /// Applies a run's new state to its target, and moves the target on when
    /// the run ended.
    async fn job_run_changed(&self, run: RunInfo) {
        let (Some(id), Some(step)) = (run.job, run.step) else {
            return;
        };
        let mut next_step = None;
        let mut target_ended = false;
        let mut index = None;
        let events = self.with_job(id, |job, out| {
            let Some(&i) = job.index.get(&run.agent) else {
                return;
            };
            index = Some(i);
            if let Some(outcome) = run_changed(job, out, i, step, &run) {
                match advance(job, out, i, step, outcome) {
                    Advance::NextStep(s) => next_step = Some(s),
                    Advance::Ended => target_ended = true,
                    Advance::Wait => {}
                }
            }
            job.progress(out);
        });
        let mut changes = Unsaved::events(events);
        changes.targets.extend(index);
        match (index, next_step) {
            (Some(i), Some(s)) => {
                self.start_step(id, i, s, &mut changes).await;
                self.commit_with_progress(id, changes).await;
            }
            _ => self.commit(id, changes).await,
        }
        if target_ended || next_step.is_some() {
            self.fill_slots(id).await;
        }
    }

    /// Cancels a job: waiting targets end at once, runs are cancelled and
    /// their targets end as the runs do.
    async fn cancel_job_now(&self, id: JobId) {
        let mut runs = Vec::new();
        let mut ended = Vec::new();
        let events = self.with_job(id, |job, out| {
            if job.info.cancel_requested {
                return;
            }
            job.info.cancel_requested = true;
            for i in 0..job.info.targets.len() {
                let target = &job.info.targets[i];
                match target.state {
                    TargetState::Pending => {
                        ended.push(i);
                        job.end_target(out, i, TargetState::Cancelled, None);
                    }
                    TargetState::Queued | TargetState::Running => {
                        runs.extend(target.steps.last().map(|s| s.run));
                    }
                    _ => {}
                }
            }
            job.progress(out);
        });
        let changes = Unsaved {
            targets: ended,
            job: true,
            events,
        };
        self.commit(id, changes).await;
        for run in runs {
            if let Err(e) = self.cancel_run(run).await
                && e.code != ErrorCode::InvalidState
            {
                tracing::warn!(job = %id, %run, error = %e, "cancelling a job's run failed");
            }
        }
        self.settle_job(id).await;
    }

    /// Ends the job if every target has ended: persists and publishes the
    /// final state, and forgets the job from memory.
    async fn settle_job(&self, id: JobId) {
        let mut settled = false;
        let events = self.with_job(id, |job, out| {
            settled = job.settle();
            if settled {
                job.progress(out);
            }
        });
        if !settled {
            return;
        }
        let changes = Unsaved {
            job: true,
            ..Unsaved::events(events)
        };
        self.commit(id, changes).await;
        self.jobs.lock().expect("jobs lock poisoned").remove(&id);
    }

    /// Numbers a `job.progress` if the counts changed, then commits.
    async fn commit_with_progress(&self, id: JobId, mut changes: Unsaved) {
        let events = self.with_job(id, |job, out| job.progress(out));
        changes.events.extend(events);
        self.commit(id, changes).await;
    }

    /// Writes `changes` in one transaction, then publishes its events in the
    /// order they were numbered: a client never sees an event the store
    /// could not replay.
    async fn commit(&self, id: JobId, mut changes: Unsaved) {
        if changes.targets.is_empty() && !changes.job && changes.events.is_empty() {
            return;
        }
        changes.targets.sort_unstable();
        changes.targets.dedup();
        let (job, targets) = {
            let jobs = self.jobs.lock().expect("jobs lock poisoned");
            match jobs.get(&id) {
                Some(active) => (
                    changes.job.then(|| active.info.clone()),
                    changes
                        .targets
                        .iter()
                        .filter_map(|&i| active.info.targets.get(i).cloned())
                        .collect(),
                ),
                None => (None, Vec::new()),
            }
        };
        let events: Vec<(u64, &str)> = changes
            .events
            .iter()
            .map(|e| (e.seq, e.text.as_str()))
            .collect();
        let saved = self
            .store
            .save_job_changes(id, job.as_ref(), &targets, &events)
            .await;
        if let Err(e) = saved {
            tracing::error!(job = %id, error = %format!("{e:#}"), "storing a job's changes failed");
        }
        for event in changes.events {
            self.broker.publish(Delivery {
                channel: Arc::from(event.job.channel()),
                seq: Some(event.seq),
                frame: Frame::text(event.text),
                last: event.last,
            });
        }
    }
}

/// Publishes a new job's targets that will never start, and its first counts.
fn announce(job: &mut ActiveJob, out: &mut Vec<Numbered>) {
    let skipped: Vec<_> = job
        .info
        .targets
        .iter()
        .filter(|t| t.state == TargetState::Skipped)
        .map(|t| (t.agent.clone(), t.error.clone()))
        .collect();
    for (agent, error) in skipped {
        job.event(out, |job, seq, ts_ms| {
            HubToClient::JobTarget(TargetEvent {
                job,
                seq,
                ts_ms,
                agent,
                state: TargetState::Skipped,
                error,
            })
        });
    }
    job.progress(out);
}

/// Ends every waiting target as skipped by fail-fast; returns their indices.
fn skip_pending(job: &mut ActiveJob, out: &mut Vec<Numbered>) -> Vec<usize> {
    let pending: Vec<usize> = (0..job.info.targets.len())
        .filter(|&i| job.info.targets[i].state == TargetState::Pending)
        .collect();
    if pending.is_empty() {
        return pending;
    }
    for &i in &pending {
        job.end_target(out, i, TargetState::Skipped, Some(FAIL_FAST.to_owned()));
    }
    job.progress(out);
    pending
}

/// Links a newly created step run to its target and publishes `job.step.started`.
fn record_step(job: &mut ActiveJob, out: &mut Vec<Numbered>, i: usize, step: u32, run: &RunInfo) {
    let name = job.info.spec.steps[step as usize].name.clone();
    let target = &mut job.info.targets[i];
    if target.steps.iter().any(|s| s.run == run.id) {
        return;
    }
    // Recorded as queued: the run's transitions, already on their way to the
    // driver, bring it up to date and end the step exactly once.
    target.steps.push(StepOutcome::queued(step, run.id));
    target.started_ms.get_or_insert_with(now_ms);
    if !target.state.is_terminal() {
        target.state = TargetState::Queued;
    }
    let (agent, run) = (target.agent.clone(), run.id);
    job.event(out, |job, seq, ts_ms| {
        HubToClient::JobStepStarted(StepStartedEvent {
            job,
            seq,
            ts_ms,
            agent,
            step,
            name,
            run,
        })
    });
}

/// Records a run's new state on its step. Returns the step's outcome once the
/// run has ended (publishing `job.step.completed` or `…failed` the first time),
/// or `None` while it is still going or if the run is not the target's current one.
fn run_changed(
    job: &mut ActiveJob,
    out: &mut Vec<Numbered>,
    i: usize,
    step: u32,
    run: &RunInfo,
) -> Option<StepOutcome> {
    let continue_on_failure = job.info.spec.steps[step as usize].continue_on_failure;
    let name = job.info.spec.steps[step as usize].name.clone();
    let target = &mut job.info.targets[i];
    let is_current = target.steps.last().is_some_and(|s| s.run == run.id);
    let outcome = target.steps.iter_mut().find(|s| s.run == run.id)?;
    let already_ended = outcome.state.is_terminal();
    if !already_ended {
        *outcome = StepOutcome::of(step, run);
    }
    if !run.state.is_terminal() {
        if target.state == TargetState::Queued && run.state != RunState::Queued {
            target.state = TargetState::Running;
        }
        return None;
    }
    let outcome = outcome.clone();
    if !is_current || target.state.is_terminal() {
        return None;
    }
    if !already_ended {
        let succeeded = outcome.succeeded();
        let event = StepEndedEvent {
            job: job.info.id,
            seq: 0,
            ts_ms: 0,
            agent: target.agent.clone(),
            name,
            outcome: outcome.clone(),
            continued: !succeeded && continue_on_failure,
        };
        job.event(out, |_, seq, ts_ms| {
            let event = StepEndedEvent {
                seq,
                ts_ms,
                ..event
            };
            if succeeded {
                HubToClient::JobStepCompleted(event)
            } else {
                HubToClient::JobStepFailed(event)
            }
        });
    }
    Some(outcome)
}

/// What a target does after a step ended.
enum Advance {
    /// Start this step next.
    NextStep(u32),
    /// The target reached its final state.
    Ended,
    /// Nothing (the target already ended).
    Wait,
}

/// Decides what follows a step's outcome, and ends the target when it is done.
fn advance(
    job: &mut ActiveJob,
    out: &mut Vec<Numbered>,
    i: usize,
    step: u32,
    outcome: StepOutcome,
) -> Advance {
    if job.info.targets[i].state.is_terminal() {
        return Advance::Wait;
    }
    let spec = &job.info.spec.steps[step as usize];
    let last = step as usize + 1 == job.info.spec.steps.len();
    let go_on = outcome.succeeded() || spec.continue_on_failure;
    if job.info.cancel_requested {
        let state = if go_on && last {
            TargetState::Succeeded
        } else {
            TargetState::Cancelled
        };
        job.end_target(out, i, state, None);
        return Advance::Ended;
    }
    if go_on && !last {
        return Advance::NextStep(step + 1);
    }
    if go_on {
        job.end_target(out, i, TargetState::Succeeded, None);
    } else {
        let error = step_failure(&spec.name, &outcome);
        job.end_target(out, i, TargetState::Failed, Some(error));
    }
    Advance::Ended
}

/// A few words on why a step failed: `step "build" exited 3`.
fn step_failure(name: &str, outcome: &StepOutcome) -> String {
    let how = match (outcome.state, outcome.exit_code, outcome.signal) {
        (RunState::Completed, Some(code), _) => format!("exited {code}"),
        (RunState::Completed, _, Some(signal)) => format!("was killed by signal {signal}"),
        (state, _, _) => match (&outcome.error_code, &outcome.error) {
            (Some(code), Some(error)) => format!("ended {state}: {code}: {error}"),
            (None, Some(error)) => format!("ended {state}: {error}"),
            _ => format!("ended {state}"),
        },
    };
    format!("step {name:?} {how}")
}

/// The error for an unknown job id.
fn job_not_found(id: JobId) -> ApiError {
    ApiError::new(ErrorCode::JobNotFound, format!("job {id} not found"))
}

/// The job driver: handles every signal in order until the core is dropped.
pub(crate) async fn drive(core: Weak<Core>, mut signals: JobSignals) {
    while let Some(signal) = signals.recv().await {
        let Some(core) = core.upgrade() else { return };
        core.handle_job_signal(signal).await;
    }
}
