//! Sessions: runs that take input.
//!
//! A session is a run with a [`SessionSpec`]; everything about runs holds for
//! it (lifecycle, output numbering, acknowledgements, recovery). What this
//! module adds:
//!
//! - **admission**: a session is never queued; its agent must be online, and
//!   it may hold at most `max_sessions_per_agent`. Its idle timeout and
//!   lifetime are capped by the hub's;
//! - **input exactly once**: each writer numbers its inputs 1, 2, …; the
//!   engine takes a writer's next number only, acknowledges a repeat again
//!   without taking it, and refuses a gap (`INPUT_GAP`). A taken input gets
//!   the session's next hub number, is stored with the writer's number (so a
//!   restarted hub recognises a resend too), and after the commit goes to
//!   the agent and is acknowledged to the writer. The agent applies each hub
//!   number once and reports the last applied; what it has not applied is
//!   sent again when it reconnects;
//! - **viewers**: joins and leaves are published on `session:<id>`;
//! - **the screen**: `session.snapshot` is passed to the agent with a token
//!   and its answer is passed back; an unanswered one fails after
//!   [`SNAPSHOT_TIMEOUT_MS`].

use std::collections::{HashMap, VecDeque};

use muster_proto::messages::Principal;
use muster_proto::sessions::{
    SessionApplied, SessionAttach, SessionAttached, SessionDeliver, SessionInput, SessionInputAck,
    SessionKind, SessionPresence, SessionResize, SessionScreen, SessionSnapshot, SessionSpec,
};
use muster_proto::{
    Channel, ErrorCode, HubToAgent, HubToClient, RequestId, Role, RunId, RunState, UnixMillis,
};

use super::Engine;
use super::batch::{Reply, ReplyTo};
use super::error::ApiError;
use super::reports::AgentLink;
use crate::config::HubConfig;
use crate::outbound::Outbound;
use crate::store::{Change, SessionRecovery, StoredInput};

/// Inputs a session holds that its agent has not applied yet; past it,
/// `session.input` gets `QUEUE_FULL` until the agent catches up.
pub(crate) const MAX_PENDING_INPUTS: usize = muster_proto::sessions::MAX_UNAPPLIED_INPUTS;

/// Writers one session remembers; a new writer past it is refused.
pub(crate) const MAX_WRITERS: usize = 256;

/// How long the agent has to answer a `session.snapshot`.
pub(crate) const SNAPSHOT_TIMEOUT_MS: u64 = 5_000;

/// The engine's state of a session in flight, kept with its run.
#[derive(Clone, Debug)]
pub(crate) struct LiveSession {
    kind: SessionKind,
    cols: u16,
    rows: u16,
    /// The hub seq of the last input taken (0: none).
    last_input: u64,
    /// The last hub seq the agent reported applied.
    applied: u64,
    /// Inputs taken and not reported applied, oldest first.
    pending: VecDeque<SessionDeliver>,
    /// Each writer's last taken seq.
    writers: HashMap<String, u64>,
    /// Output bytes the store holds for it, about (exact until a trim).
    pub(crate) stored_bytes: u64,
    /// Who is attached, and how often: a leave is published only for a
    /// join that was (a connection whose attach was refused never joined).
    attached: HashMap<(String, bool), u32>,
}

impl LiveSession {
    /// A session that has taken no input.
    pub(crate) fn new(spec: &SessionSpec) -> Self {
        Self {
            kind: spec.kind,
            cols: spec.cols,
            rows: spec.rows,
            last_input: 0,
            applied: 0,
            pending: VecDeque::new(),
            writers: HashMap::new(),
            stored_bytes: 0,
            attached: HashMap::new(),
        }
    }

    /// A session in flight after a restart, from what the store holds.
    pub(crate) fn recovered(spec: &SessionSpec, recovery: SessionRecovery) -> Self {
        let mut session = Self::new(spec);
        session.stored_bytes = recovery.stored_bytes;
        session.applied = recovery.applied;
        session.last_input = recovery.last_input.max(recovery.applied);
        session.writers = recovery.writers.into_iter().collect();
        session.pending = recovery
            .pending
            .into_iter()
            .map(|input| SessionDeliver {
                run: input.run,
                seq: input.seq,
                data: input.data,
                from: input.from,
                at: input.at,
            })
            .collect();
        session
    }

    /// Inputs to send again after the agent said it applied up to `applied`.
    pub(crate) fn resend_after(&mut self, applied: u64) -> Vec<SessionDeliver> {
        self.mark_applied(applied);
        self.pending.iter().cloned().collect()
    }

    fn mark_applied(&mut self, applied: u64) {
        self.applied = self.applied.max(applied.min(self.last_input));
        while self.pending.front().is_some_and(|d| d.seq <= self.applied) {
            self.pending.pop_front();
        }
    }
}

/// A `session.snapshot` waiting for its agent's answer.
#[derive(Debug)]
pub(crate) struct PendingSnapshot {
    run: RunId,
    to: ReplyTo,
    re: Option<RequestId>,
    deadline: UnixMillis,
}

/// The session part of a new run, within the hub's limits: the idle
/// timeout and the lifetime (the run's `timeout_ms`) capped and filled in.
pub(crate) fn admit_spec(config: &HubConfig, spec: &mut SessionSpec, timeout_ms: &mut Option<u64>) {
    let idle = spec
        .idle_timeout_ms
        .unwrap_or(config.session_idle_timeout_ms);
    spec.idle_timeout_ms = Some(idle.min(config.session_idle_timeout_ms));
    let lifetime = timeout_ms.unwrap_or(config.session_max_lifetime_ms);
    *timeout_ms = Some(lifetime.min(config.session_max_lifetime_ms));
}

fn not_open(id: RunId) -> ApiError {
    ApiError::new(
        ErrorCode::InvalidState,
        format!("session {id} is not open (it ended, or the run is not a session)"),
    )
}

fn role_allows(principal: &Principal, need: Role) -> bool {
    principal
        .role
        .as_deref()
        .and_then(|r| r.parse::<Role>().ok())
        .is_some_and(|role| role.allows(need))
}

impl Engine {
    /// The live session `id`, if the engine holds it.
    fn live_session(&mut self, id: RunId) -> Option<&mut LiveSession> {
        self.runs.get_mut(&id)?.session.as_deref_mut()
    }

    /// `session.attach`: answers with where the writer is, and publishes the join.
    pub(super) fn attach_session(
        &mut self,
        principal: &Principal,
        to: &ReplyTo,
        re: Option<RequestId>,
        attach: SessionAttach,
        now: UnixMillis,
    ) {
        if attach.write && !role_allows(principal, Role::Operator) {
            let error = ApiError::new(
                ErrorCode::Forbidden,
                "attaching as a writer needs an operator key or higher; attach read-only",
            );
            return self.reply_error(to, re, error, None);
        }
        let writer = match (attach.write, attach.writer.as_deref()) {
            (false, _) => None,
            (true, Some(writer)) => match muster_proto::sessions::check_writer_id(writer) {
                Ok(()) => Some(writer.to_owned()),
                Err(why) => {
                    let error = ApiError::new(ErrorCode::InvalidMessage, why);
                    return self.reply_error(to, re, error, None);
                }
            },
            (true, None) => {
                let error = ApiError::new(
                    ErrorCode::InvalidMessage,
                    "a writer must give its writer id",
                );
                return self.reply_error(to, re, error, None);
            }
        };
        let id = attach.run;
        let Some(session) = self.live_session(id) else {
            return self.reply_error(to, re, not_open(id), None);
        };
        let last_seq = match &writer {
            Some(writer) => match session.writers.get(writer) {
                Some(last) => *last,
                None if session.writers.len() >= MAX_WRITERS => {
                    let error = ApiError::new(
                        ErrorCode::Conflict,
                        format!("session {id} already has {MAX_WRITERS} writers"),
                    );
                    return self.reply_error(to, re, error, None);
                }
                None => 0,
            },
            None => 0,
        };
        let who = (principal.name.clone(), attach.write);
        if !session.attached.contains_key(&who) && session.attached.len() >= MAX_WRITERS {
            let error = ApiError::new(
                ErrorCode::Conflict,
                format!("session {id} already has {MAX_WRITERS} keys attached"),
            );
            return self.reply_error(to, re, error, None);
        }
        *session.attached.entry(who).or_default() += 1;
        let attached = SessionAttached {
            run: id,
            kind: session.kind,
            write: attach.write,
            last_seq,
            cols: session.cols,
            rows: session.rows,
        };
        self.batch
            .reply(to, Reply::to(re, HubToClient::SessionAttached(attached)));
        let joined = SessionPresence {
            run: id,
            who: principal.name.clone(),
            write: attach.write,
            at: now,
        };
        self.batch
            .event(Channel::Session(id), HubToClient::SessionJoined(joined));
    }

    /// `session.detach`, or a connection that ended while attached.
    pub(super) fn detach_session(
        &mut self,
        principal: &Principal,
        to: &ReplyTo,
        re: Option<RequestId>,
        id: RunId,
        write: bool,
        now: UnixMillis,
    ) {
        if re.is_some() {
            self.batch
                .reply(to, Reply::to(re, HubToClient::Ok(Default::default())));
        }
        let Some(session) = self.live_session(id) else {
            return;
        };
        let key = (principal.name.clone(), write);
        let joined = match session.attached.get_mut(&key) {
            Some(count) if *count > 1 => {
                *count -= 1;
                true
            }
            Some(_) => session.attached.remove(&key).is_some(),
            None => false,
        };
        if joined {
            let left = SessionPresence {
                run: id,
                who: principal.name.clone(),
                write,
                at: now,
            };
            self.batch
                .event(Channel::Session(id), HubToClient::SessionLeft(left));
        }
    }

    /// `session.input` from `writer`: taken once, in the writer's order.
    pub(super) fn session_input(
        &mut self,
        principal: &Principal,
        to: &ReplyTo,
        re: Option<RequestId>,
        writer: String,
        input: SessionInput,
        now: UnixMillis,
    ) {
        let id = input.run;
        let Some(run) = self.runs.get_mut(&id) else {
            return self.reply_error(to, re, not_open(id), None);
        };
        let (agent, state) = (run.info.agent.clone(), run.info.state);
        let Some(session) = run.session.as_deref_mut() else {
            return self.reply_error(to, re, not_open(id), None);
        };
        let last = session.writers.get(&writer).copied().unwrap_or(0);
        if input.seq <= last {
            // A resend of what was taken: acknowledged again, not taken twice.
            let ack = SessionInputAck {
                run: id,
                seq: input.seq,
            };
            return self
                .batch
                .reply(to, Reply::to(re, HubToClient::SessionInputAck(ack)));
        }
        if input.seq != last + 1 {
            let error = ApiError::new(
                ErrorCode::InputGap,
                format!(
                    "session {id}: input seq {} skips ahead; the next from writer {writer:?} is {}",
                    input.seq,
                    last + 1
                ),
            );
            return self.reply_error(to, re, error, None);
        }
        if session.pending.len() >= MAX_PENDING_INPUTS {
            let error = ApiError::new(
                ErrorCode::QueueFull,
                format!(
                    "session {id}: the agent has not applied {MAX_PENDING_INPUTS} inputs yet; \
                     send this one again later"
                ),
            );
            return self.reply_error(to, re, error, None);
        }
        if !session.writers.contains_key(&writer) && session.writers.len() >= MAX_WRITERS {
            let error = ApiError::new(
                ErrorCode::Conflict,
                format!("session {id} already has {MAX_WRITERS} writers"),
            );
            return self.reply_error(to, re, error, None);
        }
        let Some(seq) = session.last_input.checked_add(1) else {
            let error = ApiError::new(ErrorCode::InvalidState, "no input can follow this one");
            return self.reply_error(to, re, error, None);
        };
        session.last_input = seq;
        session.writers.insert(writer.clone(), input.seq);
        let deliver = SessionDeliver {
            run: id,
            seq,
            data: input.data,
            from: principal.name.clone(),
            at: now,
        };
        session.pending.push_back(deliver.clone());
        self.batch.change(Change::AppendInput(Box::new(StoredInput {
            run: id,
            seq,
            writer,
            writer_seq: input.seq,
            from: deliver.from.clone(),
            at: now,
            data: deliver.data.clone(),
        })));
        // A run not yet started has no process to write to; the agent gets
        // the input after the `run.start` already on its way.
        if matches!(state, RunState::Dispatched | RunState::Running)
            && let Some(online) = self.presence.get(&agent)
        {
            let tx = online.tx.clone();
            self.batch
                .send_agent(&tx, HubToAgent::SessionInput(deliver));
        }
        let ack = SessionInputAck {
            run: id,
            seq: input.seq,
        };
        self.batch
            .reply(to, Reply::to(re, HubToClient::SessionInputAck(ack)));
    }

    /// `session.resize` from a writer: remembered and passed to the agent.
    pub(super) fn resize_session(
        &mut self,
        to: &ReplyTo,
        re: Option<RequestId>,
        resize: SessionResize,
    ) {
        if let Err(why) = muster_proto::sessions::check_size(resize.cols, resize.rows) {
            let error = ApiError::new(ErrorCode::InvalidMessage, why);
            return self.reply_error(to, re, error, None);
        }
        let id = resize.run;
        let Some(run) = self.runs.get_mut(&id) else {
            return self.reply_error(to, re, not_open(id), None);
        };
        let agent = run.info.agent.clone();
        let Some(session) = run.session.as_deref_mut() else {
            return self.reply_error(to, re, not_open(id), None);
        };
        if session.kind != SessionKind::Pty {
            let error = ApiError::new(
                ErrorCode::InvalidState,
                format!("session {id} is a pipe session: it has no terminal to resize"),
            );
            return self.reply_error(to, re, error, None);
        }
        (session.cols, session.rows) = (resize.cols, resize.rows);
        if let Some(spec) = run.info.session.as_mut() {
            (spec.cols, spec.rows) = (resize.cols, resize.rows);
        }
        if let Some(online) = self.presence.get(&agent) {
            let tx = online.tx.clone();
            self.batch
                .send_agent(&tx, HubToAgent::SessionResize(resize));
        }
        self.batch
            .reply(to, Reply::to(re, HubToClient::Ok(Default::default())));
    }

    /// `session.snapshot`: asks the agent for the screen.
    pub(super) fn snapshot_session(
        &mut self,
        to: &ReplyTo,
        re: Option<RequestId>,
        id: RunId,
        now: UnixMillis,
    ) {
        let Some(run) = self.runs.get(&id) else {
            return self.reply_error(to, re, not_open(id), None);
        };
        match run.session.as_deref() {
            None => return self.reply_error(to, re, not_open(id), None),
            Some(session) if session.kind != SessionKind::Pty => {
                let error = ApiError::new(
                    ErrorCode::InvalidState,
                    format!("session {id} is a pipe session: it has no screen; read its output"),
                );
                return self.reply_error(to, re, error, None);
            }
            Some(_) => {}
        }
        let Some(online) = self.presence.get(&run.info.agent) else {
            let error = ApiError::new(
                ErrorCode::AgentOffline,
                format!("agent {:?} is not connected", run.info.agent.as_str()),
            );
            return self.reply_error(to, re, error, None);
        };
        let tx = online.tx.clone();
        let token = self.next_snapshot_token;
        self.next_snapshot_token = token.wrapping_add(1);
        self.snapshots.insert(
            token,
            PendingSnapshot {
                run: id,
                to: to.clone(),
                re,
                deadline: now.saturating_add(SNAPSHOT_TIMEOUT_MS),
            },
        );
        let ask = SessionSnapshot {
            run: id,
            token: Some(token),
        };
        // Nothing to commit: asked at once.
        tx.send(Outbound::Agent(Box::new(HubToAgent::SessionSnapshot(ask))));
    }

    /// An agent's `session.screen`: passed on to whoever asked.
    pub(super) fn session_screen(&mut self, link: &AgentLink, mut screen: SessionScreen) {
        let Some(token) = screen.token.take() else {
            return;
        };
        let asked_here = self
            .snapshots
            .get(&token)
            .is_some_and(|p| p.run == screen.run)
            && self
                .runs
                .get(&screen.run)
                .is_some_and(|r| r.info.agent == link.name);
        if !asked_here {
            tracing::debug!(agent = %link.name, token, "session.screen answers nothing asked");
            return;
        }
        if let Some(pending) = self.snapshots.remove(&token) {
            let reply = Reply::to(pending.re, HubToClient::SessionScreen(screen));
            pending.to.send(Outbound::Reply(Box::new(reply)));
        }
    }

    /// An agent's `session.input.ack`: what it applied leaves the resend list.
    pub(super) fn session_applied(&mut self, link: &AgentLink, applied: SessionApplied) {
        let Some(run) = self.runs.get_mut(&applied.run) else {
            return;
        };
        if run.info.agent != link.name {
            return;
        }
        let Some(session) = run.session.as_deref_mut() else {
            return;
        };
        if applied.seq > session.applied && applied.seq <= session.last_input {
            session.mark_applied(applied.seq);
            self.batch
                .change(Change::InputApplied(applied.run, applied.seq));
        }
    }

    /// After a `hello`: the inputs of session `id` the agent has not applied.
    pub(super) fn resend_inputs(&mut self, id: RunId, applied: u64, tx: &ReplyTo) {
        let Some(session) = self.live_session(id) else {
            return;
        };
        for deliver in session.resend_after(applied) {
            self.batch.send_agent(tx, HubToAgent::SessionInput(deliver));
        }
    }

    /// Snapshots the agent did not answer in time fail.
    pub(super) fn expire_snapshots(&mut self, now: UnixMillis) {
        if self.snapshots.is_empty() {
            return;
        }
        let late: Vec<u64> = self
            .snapshots
            .iter()
            .filter(|(_, p)| p.deadline <= now || !self.runs.contains_key(&p.run))
            .map(|(token, _)| *token)
            .collect();
        for token in late {
            if let Some(pending) = self.snapshots.remove(&token) {
                let error = ApiError::new(
                    ErrorCode::AgentOffline,
                    format!(
                        "the agent did not send session {}'s screen within {SNAPSHOT_TIMEOUT_MS} ms",
                        pending.run
                    ),
                );
                self.reply_error(&pending.to, pending.re, error, None);
            }
        }
    }
}
