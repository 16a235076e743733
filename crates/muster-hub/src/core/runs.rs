//! Run lifecycle: accept, queue, dispatch, stream, finish.
//!
//! Every transition updates the in-memory record first, persists it, then
//! publishes `run.status` on `run:<id>`, so a subscriber never sees a state the
//! store does not have. Output is stored before it is published, for the same
//! reason: whatever a client saw can be replayed.

use std::collections::BTreeSet;

use bytes::Bytes;
use muster_proto::messages::{
    Principal, RunEnvelope, RunExited, RunListQuery, RunQueue, RunRef, RunStart, RunStarted,
};
use muster_proto::types::RunRequest;
use muster_proto::{
    AgentName, Envelope, ErrorCode, HubToAgent, HubToClient, JobId, OutputFrame, RunId, RunInfo,
    RunState,
};

use super::{ApiError, Core, agent_inbox, agents::agent_not_found, now_ms};
use crate::broker::{Delivery, Frame};
use crate::store::{StoreError, StoredChunk};
use crate::validate;

/// A run that has not reached a terminal state.
#[derive(Clone, Debug)]
pub struct ActiveRun {
    /// Current record.
    pub info: RunInfo,
    /// Next output sequence number expected from the agent.
    pub(super) next_seq: u64,
    /// Last queue position published.
    last_position: Option<u32>,
    /// While its agent is away: when the run ends `lost` unless the agent reports it.
    pub(super) lost_at: Option<muster_proto::UnixMillis>,
}

impl Core {
    /// Validates a request and stores the run as `queued`; the caller then
    /// subscribes if it wants to and calls [`Core::enqueue_run`].
    pub async fn prepare_run(
        &self,
        principal: &Principal,
        request: RunRequest,
    ) -> Result<(RunInfo, bool), ApiError> {
        self.prepare_linked_run(principal, request, None).await
    }

    /// [`Core::prepare_run`] for a run that executes step `link.1` of job `link.0`.
    pub(super) async fn prepare_linked_run(
        &self,
        principal: &Principal,
        request: RunRequest,
        link: Option<(JobId, u32)>,
    ) -> Result<(RunInfo, bool), ApiError> {
        validate::run_request(&request)?;
        if let Some(key) = &request.idempotency_key
            && let Some(existing) = self
                .store
                .run_by_idempotency_key(&principal.name, key)
                .await?
        {
            return Ok((self.current(existing), false));
        }
        if self.store.agent(&request.agent).await?.is_none() {
            return Err(agent_not_found(&request.agent));
        }
        if request.ttl_ms == Some(0) && !self.is_online(&request.agent) {
            return Err(ApiError::new(
                ErrorCode::AgentOffline,
                format!("agent {:?} is not connected", request.agent.as_str()),
            ));
        }
        let ttl = request.ttl_ms.unwrap_or(self.config.default_run_ttl_ms);
        let mut run = new_run(principal, request, ttl);
        if let Some((job, step)) = link {
            run.job = Some(job);
            run.step = Some(step);
        }
        match self.store.insert_run(&run).await {
            Ok(()) => Ok((run, true)),
            Err(StoreError::Conflict) => Err(ApiError::new(
                ErrorCode::Conflict,
                "idempotency key raced with another request",
            )),
            Err(StoreError::Other(e)) => Err(e.into()),
        }
    }

    /// Puts a prepared run in its agent's queue and dispatches what can start.
    pub async fn enqueue_run(&self, run: RunInfo) -> Result<(), ApiError> {
        let (agent, id) = (run.agent.clone(), run.id);
        let queued = self
            .scheduler
            .lock()
            .expect("scheduler lock poisoned")
            .enqueue(&agent, id, run.priority);
        if let Err(full) = queued {
            self.finish_unstarted(id, RunState::Failed, "the agent's queue is full")
                .await;
            return Err(ApiError::new(ErrorCode::QueueFull, full.to_string()));
        }
        self.active_insert(run, 0, None);
        self.dispatch(&agent).await;
        Ok(())
    }

    /// One run.
    pub async fn run(&self, id: RunId) -> Result<RunInfo, ApiError> {
        if let Some(active) = self.active_get(id) {
            return Ok(active);
        }
        self.store.run(id).await?.ok_or_else(|| run_not_found(id))
    }

    /// Runs matching a query, newest first.
    pub async fn runs(&self, query: &RunListQuery) -> Result<Vec<RunInfo>, ApiError> {
        let runs = self.store.runs(query).await?;
        Ok(runs.into_iter().map(|run| self.current(run)).collect())
    }

    /// Cancels a run: a waiting one leaves the queue, a started one is killed.
    pub async fn cancel_run(&self, id: RunId) -> Result<(), ApiError> {
        let run = self.run(id).await?;
        if run.state.is_terminal() {
            return Err(ApiError::new(
                ErrorCode::InvalidState,
                format!("run {id} already ended {}", run.state),
            ));
        }
        let dequeued = self
            .scheduler
            .lock()
            .expect("scheduler lock poisoned")
            .dequeue(&run.agent, id);
        if dequeued {
            self.finish_unstarted(id, RunState::Cancelled, "cancelled before it started")
                .await;
            self.publish_positions(&run.agent).await;
            return Ok(());
        }
        self.send_to_agent(&run.agent, HubToAgent::RunCancel(RunRef { run: id }));
        Ok(())
    }

    /// The agent started a run's process (a repeat after a reconnect changes nothing).
    pub async fn run_started(&self, agent: &AgentName, started: RunStarted) {
        let dispatched = self
            .active_get(started.run)
            .is_some_and(|run| run.state == RunState::Dispatched);
        if dispatched {
            self.transition(agent, started.run, |run| {
                run.state = RunState::Running;
                run.pid = Some(started.pid);
                run.started_ms = Some(now_ms());
            })
            .await;
        }
        self.ack_output(agent, [started.run]);
    }

    /// Stores a batch of output frames in one transaction, then forwards each
    /// one unchanged (`raw`), in order, and acknowledges them to the agent.
    /// Duplicates and output past the cap are dropped (and acknowledged).
    pub async fn run_output(&self, agent: &AgentName, frames: Vec<(Bytes, OutputFrame)>) {
        let runs: BTreeSet<RunId> = frames.iter().map(|(_, f)| f.header.run).collect();
        let accepted: Vec<_> = frames
            .into_iter()
            .filter(|(_, frame)| self.accept_output(agent, frame))
            .collect();
        let chunks: Vec<_> = accepted
            .iter()
            .map(|(_, frame)| (frame.header.run, stored_chunk(frame)))
            .collect();
        if !chunks.is_empty()
            && let Err(e) = self.store.append_output(&chunks).await
        {
            // Not acknowledged: the agent keeps the frames and sends them again.
            tracing::error!(agent = %agent, error = %format!("{e:#}"), "storing output failed");
            self.rewind_output(&accepted);
            return;
        }
        for (raw, frame) in accepted {
            self.broker.publish(Delivery {
                channel: frame.header.run.channel().into(),
                seq: Some(frame.header.seq),
                frame: Frame::Binary(raw),
                last: false,
            });
        }
        self.ack_output(agent, runs);
    }

    /// Forgets that frames were accepted, after storing them failed.
    fn rewind_output(&self, accepted: &[(Bytes, OutputFrame)]) {
        let mut active = self.active.lock().expect("active lock poisoned");
        for (_, frame) in accepted.iter().rev() {
            if let Some(run) = active.get_mut(&frame.header.run) {
                run.next_seq = run.next_seq.min(frame.header.seq);
                run.info.output_bytes = run
                    .info
                    .output_bytes
                    .saturating_sub(frame.payload.len() as u64);
            }
        }
    }

    /// Whether a frame is new for an active run of `agent` and fits under the cap.
    fn accept_output(&self, agent: &AgentName, frame: &OutputFrame) -> bool {
        let header = &frame.header;
        let mut active = self.active.lock().expect("active lock poisoned");
        let Some(run) = active.get_mut(&header.run) else {
            return false;
        };
        if &run.info.agent != agent || header.seq < run.next_seq {
            return false;
        }
        run.next_seq = header.seq + 1;
        let len = frame.payload.len() as u64;
        if run.info.output_bytes + len > self.config.max_output_bytes_per_run {
            run.info.output_truncated = true;
            return false;
        }
        run.info.output_bytes += len;
        true
    }

    /// The agent reports that a run ended.
    pub async fn run_exited(&self, agent: &AgentName, exited: RunExited) {
        let finished = self
            .transition(agent, exited.run, |run| {
                run.state = exited.outcome.state();
                run.exit_code = exited.exit_code;
                run.signal = exited.signal;
                run.error = exited.error.clone();
                run.error_code = exited.error_code;
                run.output_truncated |= exited.output_truncated;
                run.finished_ms = Some(now_ms());
            })
            .await;
        if finished.is_some() {
            self.scheduler
                .lock()
                .expect("scheduler lock poisoned")
                .finished(agent, exited.run);
        }
        // Stored now, or ended earlier (a resend): either way the agent can forget it.
        self.ack_exited(agent, exited.run);
        if finished.is_some() {
            self.dispatch(agent).await;
        }
    }

    /// Ends a run that never reached its agent.
    pub(super) async fn finish_unstarted(&self, id: RunId, state: RunState, reason: &str) {
        let Some(agent) = self.active_get(id).map(|r| r.agent) else {
            return;
        };
        self.transition(&agent, id, |run| {
            run.state = state;
            run.error = Some(reason.to_owned());
            run.queue_position = None;
            run.finished_ms = Some(now_ms());
        })
        .await;
    }

    /// Sends `run.start` for every run that may start on a newly connected agent.
    pub async fn dispatch_agent(&self, agent: &AgentName) {
        self.dispatch(agent).await;
    }

    /// Sends `run.start` for every run that may start on `agent` now.
    async fn dispatch(&self, agent: &AgentName) {
        let ready = self
            .scheduler
            .lock()
            .expect("scheduler lock poisoned")
            .take_ready(agent);
        for id in ready {
            let dispatched = self
                .transition(agent, id, |run| {
                    run.state = RunState::Dispatched;
                    run.queue_position = None;
                    run.dispatched_ms = Some(now_ms());
                })
                .await;
            if let Some(run) = dispatched {
                self.send_to_agent(agent, HubToAgent::RunStart(self.run_start(&run)));
            }
        }
        self.publish_positions(agent).await;
    }

    pub(super) fn run_start(&self, run: &RunInfo) -> RunStart {
        RunStart {
            run: run.id,
            command: run.command.clone(),
            env: run.env.clone(),
            cwd: run.cwd.clone(),
            timeout_ms: run.timeout_ms,
            kill_grace_ms: self.config.kill_grace_ms,
            output_cap_bytes: self.config.max_output_bytes_per_run,
        }
    }

    /// Publishes `run.queue` for every waiting run whose position changed.
    pub(super) async fn publish_positions(&self, agent: &AgentName) {
        let positions = self
            .scheduler
            .lock()
            .expect("scheduler lock poisoned")
            .positions(agent);
        let mut changed = Vec::new();
        {
            let mut active = self.active.lock().expect("active lock poisoned");
            for (id, position) in positions {
                if let Some(run) = active.get_mut(&id)
                    && run.last_position != Some(position)
                {
                    run.last_position = Some(position);
                    run.info.queue_position = Some(position);
                    changed.push((id, position));
                }
            }
        }
        for (run, position) in changed {
            self.publish_event(
                &run.channel().to_string(),
                HubToClient::RunQueue(RunQueue { run, position }),
            );
        }
    }

    pub(super) fn send_to_agent(&self, agent: &AgentName, msg: HubToAgent) {
        let inbox = agent_inbox(agent);
        self.broker.publish(Delivery {
            channel: inbox.into(),
            seq: None,
            frame: Frame::text(Envelope::plain(msg).encode()),
            last: false,
        });
    }

    /// Applies `change` to an active run on `agent`, persists and publishes it.
    /// Returns the new record, or `None` if the run is not active there.
    pub(super) async fn transition(
        &self,
        agent: &AgentName,
        id: RunId,
        change: impl FnOnce(&mut RunInfo),
    ) -> Option<RunInfo> {
        let run = {
            let mut active = self.active.lock().expect("active lock poisoned");
            let entry = active.get_mut(&id).filter(|r| &r.info.agent == agent)?;
            change(&mut entry.info);
            let run = entry.info.clone();
            if run.state.is_terminal() {
                active.remove(&id);
            }
            run
        };
        if let Err(e) = self.store.update_run(&run).await {
            tracing::error!(run = %id, error = %format!("{e:#}"), "persisting run failed");
        }
        let status = HubToClient::RunStatus(RunEnvelope { run: run.clone() });
        self.publish(&id.channel().to_string(), status, run.state.is_terminal());
        if run.job.is_some() {
            self.signal_job(super::JobSignal::RunChanged(Box::new(run.clone())));
        }
        Some(run)
    }

    pub(super) fn active_insert(
        &self,
        info: RunInfo,
        next_seq: u64,
        lost_at: Option<muster_proto::UnixMillis>,
    ) {
        let active = ActiveRun {
            info,
            next_seq,
            last_position: None,
            lost_at,
        };
        self.active
            .lock()
            .expect("active lock poisoned")
            .insert(active.info.id, active);
    }

    pub(super) fn active_get(&self, id: RunId) -> Option<RunInfo> {
        self.active
            .lock()
            .expect("active lock poisoned")
            .get(&id)
            .map(|r| r.info.clone())
    }

    /// The live copy of a stored run, if it is active.
    fn current(&self, stored: RunInfo) -> RunInfo {
        self.active_get(stored.id).unwrap_or(stored)
    }
}

fn stored_chunk(frame: &OutputFrame) -> StoredChunk {
    StoredChunk {
        seq: frame.header.seq,
        stream: frame.header.stream,
        offset: frame.header.offset,
        data: frame.payload.clone(),
    }
}

fn new_run(principal: &Principal, request: RunRequest, ttl_ms: u64) -> RunInfo {
    let mut run = RunInfo::queued(request, now_ms());
    run.requested_by = Some(principal.name.clone());
    run.expires_ms = Some(run.created_ms.saturating_add(ttl_ms));
    run
}

/// The error for an unknown run id.
pub(super) fn run_not_found(id: RunId) -> ApiError {
    ApiError::new(ErrorCode::RunNotFound, format!("run {id} not found"))
}
