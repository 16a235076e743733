//! Runs: create, queue, dispatch, cancel, and the one function every state
//! change goes through.

use muster_proto::messages::{
    Principal, RunAccepted, RunCreate, RunEnvelope, RunQueue, RunRef, RunStart,
};
use muster_proto::{
    AgentName, Channel, ErrorCode, HubToAgent, HubToClient, RequestId, RunId, RunInfo, RunState,
    UnixMillis,
};

use super::batch::{Effect, Reply, ReplyTo};
use super::error::ApiError;
use super::lifecycle::{self, RunEvent};
use super::{Engine, keys};
use crate::validate;

/// A run that has not reached a terminal state.
#[derive(Clone, Debug)]
pub(crate) struct ActiveRun {
    /// Current record.
    pub(crate) info: RunInfo,
    /// Next output sequence number expected from the agent.
    pub(crate) next_seq: u64,
    /// Last queue position published.
    pub(crate) last_position: Option<u32>,
    /// While its agent is away: when the run ends `lost` unless the agent reports it.
    pub(crate) lost_at: Option<UnixMillis>,
    /// A client asked to cancel it while its agent was away: ask again when it is back.
    pub(crate) cancel_pending: bool,
    /// A session's input and viewers (boxed: most runs are not sessions).
    pub(crate) session: Option<Box<super::sessions::LiveSession>>,
}

impl ActiveRun {
    pub(crate) fn new(info: RunInfo, next_seq: u64) -> Self {
        Self {
            info,
            next_seq,
            last_position: None,
            lost_at: None,
            cancel_pending: false,
            session: None,
        }
    }
}

/// A report or request that the run's state does not allow.
#[derive(Debug)]
pub(crate) struct NotAllowed {
    pub(crate) from: RunState,
}

impl Engine {
    /// `run.create`: a new run, or the one its idempotency key created.
    pub(super) fn request_run(
        &mut self,
        principal: &Principal,
        to: &ReplyTo,
        re: Option<RequestId>,
        id: RunId,
        create: RunCreate,
        now: UnixMillis,
    ) {
        let own_channel = create.subscribe.then_some(Channel::Run(id));
        if let Err(e) = validate::run_request(&create.request) {
            return self.reply_error(to, re, e, own_channel);
        }
        let pending = keys::Pending::Run {
            to: to.clone(),
            re,
            id,
            create,
            principal: principal.clone(),
        };
        // `None`: answered from the key, or parked until it is looked up.
        if let Some(keys::Pending::Run {
            to,
            re,
            id,
            create,
            principal,
        }) = self.route_by_key(pending)
        {
            self.create_run_answered(&principal, &to, re, id, create, now);
        }
    }

    /// Creates a run and answers `run.accepted` (after the commit), or the error.
    pub(super) fn create_run_answered(
        &mut self,
        principal: &Principal,
        to: &ReplyTo,
        re: Option<RequestId>,
        id: RunId,
        create: RunCreate,
        now: UnixMillis,
    ) {
        let own_channel = create.subscribe.then_some(Channel::Run(id));
        let mark = self.batch.effects_len();
        match self.create_run(principal, id, create.request, None, now) {
            Ok(()) => {
                let run = self.runs[&id].info.clone();
                let accepted = HubToClient::RunAccepted(RunAccepted { run, created: true });
                // The answer goes first: before any event of the run.
                self.batch.insert_effect(
                    mark,
                    Effect::Reply(to.clone(), Box::new(Reply::to(re, accepted))),
                );
            }
            Err(e) => self.reply_error(to, re, e, own_channel),
        }
    }

    /// Answers `run.accepted` for a run an idempotency key found.
    pub(super) fn answer_existing_run(
        &mut self,
        to: &ReplyTo,
        re: Option<RequestId>,
        asked: RunId,
        subscribe: bool,
        found: RunInfo,
    ) {
        let run = self.runs.get(&found.id).map_or(found, |r| r.info.clone());
        let mut reply = Reply::to(
            re,
            HubToClient::RunAccepted(RunAccepted {
                created: false,
                run: run.clone(),
            }),
        );
        if subscribe {
            reply.subscribe = Some(Channel::Run(run.id));
            reply.unsubscribe = (asked != run.id).then_some(Channel::Run(asked));
        }
        self.batch.reply(to, reply);
    }

    /// Creates run `id` from a validated request: queued on its agent, and
    /// dispatched at once if a slot is free. `link` ties it to a job's step.
    pub(super) fn create_run(
        &mut self,
        principal: &Principal,
        id: RunId,
        request: muster_proto::types::RunRequest,
        link: Option<(muster_proto::JobId, u32)>,
        now: UnixMillis,
    ) -> Result<(), ApiError> {
        if !self.registry.contains(&request.agent) {
            return Err(super::agents::agent_not_found(&request.agent));
        }
        if request.ttl_ms == Some(0) && !self.is_online(&request.agent) {
            return Err(ApiError::new(
                ErrorCode::AgentOffline,
                format!("agent {:?} is not connected", request.agent.as_str()),
            ));
        }
        let mut request = request;
        if let Some(spec) = request.session.as_mut() {
            let Some(online) = self.presence.get(&request.agent) else {
                return Err(ApiError::new(
                    ErrorCode::AgentOffline,
                    format!(
                        "agent {:?} is not connected; a session is never queued",
                        request.agent.as_str()
                    ),
                ));
            };
            if !online.sessions {
                return Err(ApiError::new(
                    ErrorCode::InvalidState,
                    format!(
                        "agent {:?} does not run sessions (it does not announce the sessions \
                         capability; upgrade it)",
                        request.agent.as_str()
                    ),
                ));
            }
            let open = self.scheduler.sessions(&request.agent);
            if open >= self.config.max_sessions_per_agent {
                return Err(ApiError::new(
                    ErrorCode::SessionLimit,
                    format!(
                        "agent {:?} already has {open} open sessions, the most allowed",
                        request.agent.as_str()
                    ),
                ));
            }
            super::sessions::admit_spec(&self.config, spec, &mut request.timeout_ms);
        }
        let ttl = request.ttl_ms.unwrap_or(self.config.default_run_ttl_ms);
        let mut run = RunInfo::queued(request, now);
        run.id = id;
        run.requested_by = Some(principal.name.clone());
        run.expires_ms = Some(now.saturating_add(ttl));
        (run.job, run.step) = (link.map(|l| l.0), link.map(|l| l.1));
        let agent = run.agent.clone();
        if let Some(spec) = &run.session {
            let mut active = ActiveRun::new(run.clone(), 0);
            active.session = Some(Box::new(super::sessions::LiveSession::new(spec)));
            if let Some(key) = &run.idempotency_key {
                self.keys.insert_run(&principal.name, key, id);
            }
            self.runs.insert(id, active);
            self.batch.new_run(id);
            self.scheduler.admit_session(&agent, id);
            self.send_start(&agent, id, now);
            return Ok(());
        }
        self.scheduler
            .enqueue(&agent, id, run.priority)
            .map_err(|full| ApiError::new(ErrorCode::QueueFull, full.to_string()))?;
        if let Some(key) = &run.idempotency_key {
            self.keys.insert_run(&principal.name, key, id);
        }
        self.runs.insert(id, ActiveRun::new(run, 0));
        self.batch.new_run(id);
        self.dispatch(&agent, now);
        self.publish_positions(&agent);
        Ok(())
    }

    /// `run.cancel`.
    pub(super) fn cancel_run(
        &mut self,
        to: &ReplyTo,
        re: Option<RequestId>,
        id: RunId,
        now: UnixMillis,
    ) {
        let Some(run) = self.runs.get_mut(&id) else {
            let read = crate::reads::Read::CancelEnded(id);
            return self.lookups.push(super::Lookup::Read(to.clone(), re, read));
        };
        let agent = run.info.agent.clone();
        if run.info.state == RunState::Queued {
            self.end_run(id, RunEvent::Dequeued, "cancelled before it started", now);
        } else if let Some(online) = self.presence.get(&agent) {
            let tx = online.tx.clone();
            self.batch
                .send_agent(&tx, HubToAgent::RunCancel(RunRef { run: id }));
        } else {
            run.cancel_pending = true;
        }
        self.batch
            .reply(to, Reply::to(re, HubToClient::Ok(Default::default())));
    }

    /// Cancels a run on behalf of the hub itself (a cancelled job).
    pub(super) fn cancel_run_internally(&mut self, id: RunId, now: UnixMillis) {
        let Some(run) = self.runs.get_mut(&id) else {
            return;
        };
        let agent = run.info.agent.clone();
        if run.info.state == RunState::Queued {
            self.end_run(id, RunEvent::Dequeued, "cancelled before it started", now);
        } else if let Some(online) = self.presence.get(&agent) {
            let tx = online.tx.clone();
            self.batch
                .send_agent(&tx, HubToAgent::RunCancel(RunRef { run: id }));
        } else {
            run.cancel_pending = true;
        }
    }

    /// Sends `run.start` for every run that may start on `agent` now.
    pub(super) fn dispatch(&mut self, agent: &AgentName, now: UnixMillis) {
        let Some(tx) = self.presence.get(agent).map(|a| a.tx.clone()) else {
            return;
        };
        for id in self.scheduler.take_ready(agent) {
            self.start_on(&tx, id, now);
        }
    }

    /// Dispatches run `id` to `agent` now, without a slot (a session).
    fn send_start(&mut self, agent: &AgentName, id: RunId, now: UnixMillis) {
        if let Some(tx) = self.presence.get(agent).map(|a| a.tx.clone()) {
            self.start_on(&tx, id, now);
        }
    }

    /// Moves run `id` to `dispatched` and sends its `run.start` to `tx`.
    fn start_on(&mut self, tx: &ReplyTo, id: RunId, now: UnixMillis) {
        let moved = self.transition(id, RunEvent::Dispatch, now, |run| {
            run.queue_position = None;
            run.dispatched_ms = Some(now);
        });
        if moved.is_ok()
            && let Some(run) = self.runs.get(&id)
        {
            let start = self.run_start(&run.info);
            self.batch.send_agent(tx, HubToAgent::RunStart(start));
        }
    }

    pub(super) fn run_start(&self, run: &RunInfo) -> RunStart {
        RunStart {
            run: run.id,
            command: run.command.clone(),
            env: run.env.clone(),
            cwd: run.cwd.clone(),
            timeout_ms: run.timeout_ms,
            kill_grace_ms: self.config.kill_grace_ms,
            // A session keeps the newest of its output instead (its
            // scrollback): the agent never stops sending it.
            output_cap_bytes: match run.session {
                Some(_) => u64::MAX,
                None => self.config.max_output_bytes_per_run,
            },
            session: run.session.clone(),
        }
    }

    /// Publishes `run.queue` for every waiting run of `agent` whose position changed.
    pub(super) fn publish_positions(&mut self, agent: &AgentName) {
        for (id, position) in self.scheduler.positions(agent) {
            let Some(run) = self.runs.get_mut(&id) else {
                continue;
            };
            if run.last_position == Some(position) {
                continue;
            }
            run.last_position = Some(position);
            run.info.queue_position = Some(position);
            self.batch.event(
                Channel::Run(id),
                HubToClient::RunQueue(RunQueue { run: id, position }),
            );
        }
    }

    /// Ends a run that has not finished: `event` is `Dequeued`, `Expired` or `Lost`.
    pub(super) fn end_run(&mut self, id: RunId, event: RunEvent, reason: &str, now: UnixMillis) {
        let ended = self.transition(id, event, now, |run| {
            run.error = Some(reason.to_owned());
            run.queue_position = None;
            run.finished_ms = Some(now);
        });
        if ended.is_ok()
            && event != RunEvent::Lost
            && let Some(agent) = self.ended.get(&id).map(|run| run.agent.clone())
        {
            self.publish_positions(&agent);
        }
    }

    /// Moves run `id` by `event` as the lifecycle table allows, fills in the
    /// record with `fill`, and publishes `run.status`. A run that ends frees
    /// its slot (and the next waiting run is dispatched), leaves memory when
    /// the batch is finished, and tells its job.
    pub(super) fn transition(
        &mut self,
        id: RunId,
        event: RunEvent,
        now: UnixMillis,
        fill: impl FnOnce(&mut RunInfo),
    ) -> Result<(), NotAllowed> {
        let run = self.runs.get_mut(&id).ok_or(NotAllowed {
            from: RunState::Completed,
        })?;
        let from = run.info.state;
        let to = lifecycle::next(from, event).ok_or(NotAllowed { from })?;
        run.info.state = to;
        fill(&mut run.info);
        self.batch.run_changed(id);
        self.batch.effect(Effect::Event {
            channel: Channel::Run(id),
            msg: Box::new(HubToClient::RunStatus(RunEnvelope {
                run: run.info.clone(),
            })),
            last: to.is_terminal(),
        });
        if !to.is_terminal() {
            if run.info.job.is_some() {
                let info = run.info.clone();
                self.job_run_changed(&info, now);
            }
            return Ok(());
        }
        let Some(ActiveRun { info, .. }) = self.runs.remove(&id) else {
            unreachable!("run {id} was just read");
        };
        self.batch.run_ended(id);
        self.keys.run_ended(&info);
        match from {
            RunState::Queued => {
                self.scheduler.dequeue(&info.agent, id);
            }
            _ => {
                self.scheduler.finished(&info.agent, id);
                self.dispatch(&info.agent, now);
                self.publish_positions(&info.agent);
            }
        }
        if info.job.is_some() {
            self.job_run_changed(&info, now);
        }
        self.ended.insert(id, info);
        Ok(())
    }

    /// Answers `error`, dropping the connection's subscription to `channel`
    /// if it took one for the request.
    pub(super) fn reply_error(
        &mut self,
        to: &ReplyTo,
        re: Option<RequestId>,
        error: ApiError,
        channel: Option<Channel>,
    ) {
        self.refused = Some(error.code);
        let mut reply = Reply::to(re, HubToClient::Error(error.to_data()));
        reply.unsubscribe = channel;
        to.send(crate::outbound::Outbound::Reply(Box::new(reply)));
    }

    /// `run.get`: a run in memory after the commit, else from the store.
    pub(super) fn get_run(&mut self, to: &ReplyTo, re: Option<RequestId>, id: RunId) {
        let held = self
            .runs
            .get(&id)
            .map(|run| run.info.clone())
            .or_else(|| self.ended.get(&id).cloned());
        match held {
            Some(run) => {
                let msg = HubToClient::RunInfo(RunEnvelope { run });
                self.batch.reply(to, Reply::to(re, msg));
            }
            None => {
                let read = crate::reads::Read::Run(id);
                self.lookups.push(super::Lookup::Read(to.clone(), re, read));
            }
        }
    }
}
