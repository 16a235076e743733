//! What agents report about their runs, checked before it is believed:
//! `run.started`, output frames, `run.exited`, the run report of a `hello`;
//! and the deadlines of runs whose agent went away.
//!
//! A report is checked against the run's agent and the lifecycle table. An
//! output frame must carry exactly the next sequence number: an older one is
//! a duplicate (dropped, and acknowledged again), a newer one leaves a gap
//! (refused with `OUTPUT_GAP`, not acknowledged). Counters never wrap.

use std::collections::HashMap;

use bytes::Bytes;
use muster_proto::messages::{
    ErrorData, RunAck, RunExited, RunRef, RunReport, RunReportStatus, RunStarted,
};
use muster_proto::{
    AgentName, Channel, ErrorCode, HubToAgent, OutputFrame, RunId, RunState, UnixMillis,
};

use super::Engine;
use super::batch::ReplyTo;
use super::lifecycle::RunEvent;
use super::runs::ActiveRun;
use crate::broker::{Delivery, Frame};
use crate::store::{StoredChunk, UnfinishedRun};

/// An agent connection, as its reports carry it.
#[derive(Debug)]
pub struct AgentLink {
    /// The agent.
    pub name: AgentName,
    /// Which of its connections.
    pub conn_id: u64,
    /// The connection's queue, for acknowledgements and errors.
    pub tx: ReplyTo,
}

/// Why a report was refused.
enum Refusal {
    /// Not this agent's run.
    NotYours,
    /// The run's state does not allow it.
    State(RunState),
}

impl Engine {
    /// `run.started`: a dispatched run is running; a repeat changes nothing.
    pub(super) fn run_started(&mut self, link: &AgentLink, started: RunStarted, now: UnixMillis) {
        let id = started.run;
        match self.check_report(link, id) {
            None => self.ack_ended(link, id),
            Some(Err(refusal)) => self.refuse(link, id, "run.started", refusal),
            Some(Ok(RunState::Running)) => self.ack_output(link, id),
            Some(Ok(_)) => {
                let moved = self.transition(id, RunEvent::Started, now, |run| {
                    run.pid = Some(started.pid);
                    run.started_ms = Some(now);
                });
                match moved {
                    Ok(_) => self.ack_output(link, id),
                    Err(e) => self.refuse(link, id, "run.started", Refusal::State(e.from)),
                }
            }
        }
    }

    /// One output frame: stored and published if it is the next one,
    /// dropped otherwise; acknowledged unless it leaves a gap.
    pub(super) fn run_output(&mut self, link: &AgentLink, raw: Bytes, frame: OutputFrame) {
        let header = frame.header;
        let id = header.run;
        match self.check_report(link, id) {
            None => return self.ack_ended(link, id),
            Some(Err(refusal)) => return self.refuse(link, id, "an output frame", refusal),
            Some(Ok(RunState::Running)) => {}
            Some(Ok(state)) => {
                return self.refuse(link, id, "an output frame", Refusal::State(state));
            }
        }
        let cap = self.config.max_output_bytes_per_run;
        let run = self.runs.get_mut(&id).expect("checked above");
        if header.seq < run.next_seq {
            return self.ack_output(link, id);
        }
        if header.seq > run.next_seq {
            let message = format!(
                "run {id}: output frame seq {} skips ahead of {}; send the missing frames first",
                header.seq, run.next_seq
            );
            return self.agent_error(link, ErrorCode::OutputGap, message);
        }
        let Some(next) = header.seq.checked_add(1) else {
            let message = format!("run {id}: no output frame can follow seq {}", header.seq);
            return self.agent_error(link, ErrorCode::InvalidMessage, message);
        };
        run.next_seq = next;
        let len = frame.payload.len() as u64;
        // Bytes of the run's output to keep once this frame is stored (a
        // session's scrollback); `None` when the frame is not stored.
        let mut trim_to = None;
        let stored = match run.session.as_deref_mut() {
            // A session is never cut: its oldest output goes instead.
            Some(session) => {
                run.info.output_bytes = run.info.output_bytes.saturating_add(len);
                session.stored_bytes = session.stored_bytes.saturating_add(len);
                let scrollback = self.config.session_scrollback_bytes;
                if session.stored_bytes > scrollback {
                    session.stored_bytes = scrollback / 2;
                    trim_to = Some(scrollback / 2);
                }
                true
            }
            // Once one frame is over the cap, none after it is kept either,
            // so the stored stream never has a hole.
            None => match run
                .info
                .output_bytes
                .checked_add(len)
                .filter(|n| *n <= cap && !run.info.output_truncated)
            {
                Some(total) => {
                    run.info.output_bytes = total;
                    true
                }
                None => {
                    run.info.output_truncated = true;
                    false
                }
            },
        };
        if stored {
            let chunk = StoredChunk {
                seq: header.seq,
                stream: header.stream,
                offset: header.offset,
                at: header.at,
                data: frame.payload,
            };
            self.batch
                .change(crate::store::Change::AppendOutput(id, chunk));
            if let Some(keep) = trim_to {
                self.batch
                    .change(crate::store::Change::TrimOutput(id, keep));
            }
            self.batch.effect(super::Effect::Raw(Delivery {
                channel: Channel::Run(id).into(),
                seq: Some(header.seq),
                frame: Frame::Binary(raw),
                last: false,
                key: None,
            }));
        }
        self.batch.run_changed(id);
        self.ack_output(link, id);
    }

    /// `run.exited`: the run ends, if the table allows it from where it is.
    pub(super) fn run_exited(&mut self, link: &AgentLink, exited: RunExited, now: UnixMillis) {
        let id = exited.run;
        match self.check_report(link, id) {
            None => self.ack_ended(link, id),
            Some(Err(refusal)) => self.refuse(link, id, "run.exited", refusal),
            Some(Ok(_)) => {
                let ended = self.transition(id, RunEvent::Exited(exited.outcome), now, |run| {
                    run.exit_code = exited.exit_code;
                    run.signal = exited.signal;
                    run.error = exited.error.clone();
                    run.error_code = exited.error_code;
                    run.output_truncated |= exited.output_truncated;
                    run.finished_ms = Some(now);
                });
                match ended {
                    Ok(_) => self.ack_ended(link, id),
                    Err(e) => self.refuse(link, id, "run.exited", Refusal::State(e.from)),
                }
            }
        }
    }

    /// Whether a report about `id` from `link` can be believed: `None` if the
    /// run is not held (it ended here, or never existed), else its state or
    /// why not.
    fn check_report(&self, link: &AgentLink, id: RunId) -> Option<Result<RunState, Refusal>> {
        let run = self.runs.get(&id)?;
        Some(if run.info.agent != link.name {
            Err(Refusal::NotYours)
        } else {
            Ok(run.info.state)
        })
    }

    /// Acknowledges a run's stored output (after the commit).
    fn ack_output(&mut self, link: &AgentLink, id: RunId) {
        if let Some(run) = self.runs.get(&id) {
            self.batch.ack(&link.tx, id, run.next_seq);
        }
    }

    /// Tells the agent it can forget a run: it ended here (after the commit).
    fn ack_ended(&mut self, link: &AgentLink, id: RunId) {
        let ack = RunAck {
            run: id,
            next_seq: 0,
            exited: true,
        };
        self.batch.send_agent(&link.tx, HubToAgent::RunAck(ack));
    }

    fn refuse(&mut self, link: &AgentLink, id: RunId, what: &str, refusal: Refusal) {
        let message = match refusal {
            Refusal::NotYours => format!("run {id} is not a run of agent {}", link.name),
            Refusal::State(state) => format!("run {id} is {state}: {what} is not allowed now"),
        };
        tracing::warn!(agent = %link.name, %message, "refused an agent report");
        self.agent_error(link, ErrorCode::InvalidState, message);
    }

    fn agent_error(&mut self, link: &AgentLink, code: ErrorCode, message: String) {
        let error = HubToAgent::Error(ErrorData::new(code, message));
        self.batch.send_agent(&link.tx, error);
    }

    /// Reconciles the runs in flight on `agent` with the report of its `hello`.
    pub(super) fn reconcile(
        &mut self,
        agent: &AgentName,
        tx: &ReplyTo,
        reports: &[RunReport],
        now: UnixMillis,
    ) {
        let reported: HashMap<RunId, &RunReport> = reports.iter().map(|r| (r.run, r)).collect();
        for id in self.scheduler.in_flight(agent) {
            let state = self.runs.get(&id).map(|r| r.info.state);
            match (
                reported.get(&id).map(|r| (r.status, r.input_applied)),
                state,
            ) {
                (Some((RunReportStatus::Running | RunReportStatus::Finished, applied)), _) => {
                    self.keep(id, tx);
                    self.resend_inputs(id, applied.unwrap_or(0), tx);
                }
                (Some((RunReportStatus::Unknown, _)), _) => {
                    let why = "the agent restarted while the run was in flight";
                    self.end_run(id, RunEvent::Lost, why, now);
                }
                (None, Some(RunState::Dispatched)) => {
                    // The agent never received it; its ledger makes a resend safe.
                    self.keep(id, tx);
                    if let Some(run) = self.runs.get(&id) {
                        let start = self.run_start(&run.info);
                        self.batch.send_agent(tx, HubToAgent::RunStart(start));
                    }
                    self.resend_inputs(id, 0, tx);
                }
                (None, _) => {
                    self.end_run(id, RunEvent::Lost, "the agent no longer knows the run", now);
                }
            }
        }
        for report in reports {
            if !self.runs.contains_key(&report.run) && report.status == RunReportStatus::Running {
                // It already ended here (lost while the agent was away): stop it there too.
                let cancel = HubToAgent::RunCancel(RunRef { run: report.run });
                self.batch.send_agent(tx, cancel);
            }
        }
    }

    /// A run in flight is accounted for again; a cancel asked meanwhile goes out.
    fn keep(&mut self, id: RunId, tx: &ReplyTo) {
        if let Some(run) = self.runs.get_mut(&id) {
            run.lost_at = None;
            if std::mem::take(&mut run.cancel_pending) {
                self.batch
                    .send_agent(tx, HubToAgent::RunCancel(RunRef { run: id }));
            }
        }
    }

    /// Gives the runs in flight on a departed agent until `lost_grace_ms` to be reported.
    pub(super) fn agent_left(&mut self, agent: &AgentName, now: UnixMillis) {
        self.scheduler.set_offline(agent);
        let deadline = now.saturating_add(self.config.lost_grace_ms);
        for id in self.scheduler.in_flight(agent) {
            if let Some(run) = self.runs.get_mut(&id) {
                run.lost_at = Some(deadline);
            }
        }
    }

    /// Ends runs whose agent stayed away too long, and queued runs past their TTL.
    pub(super) fn sweep_runs(&mut self, now: UnixMillis) {
        let mut lost = Vec::new();
        let mut expired = Vec::new();
        for (id, run) in &self.runs {
            if run.lost_at.is_some_and(|t| t <= now) {
                lost.push((run.info.agent.clone(), *id));
            } else if run.info.state == RunState::Queued
                && run.info.expires_ms.is_some_and(|t| t <= now)
            {
                expired.push(*id);
            }
        }
        for (agent, id) in lost {
            if !self.is_online(&agent) {
                let why = "the agent did not come back within the grace period";
                self.end_run(id, RunEvent::Lost, why, now);
            }
        }
        for id in expired {
            let why = "not delivered to the agent within its time to live";
            self.end_run(id, RunEvent::Expired, why, now);
        }
    }

    /// After a restart: queued runs wait again, runs in flight wait for their
    /// agent to come back and report them.
    pub(super) fn recover_runs(&mut self, runs: Vec<UnfinishedRun>, now: UnixMillis) {
        let wait = self
            .config
            .heartbeat_deadline_ms
            .saturating_add(self.config.lost_grace_ms);
        for UnfinishedRun {
            run,
            next_seq,
            session,
        } in runs
        {
            let (id, agent) = (run.id, run.agent.clone());
            if let (Some(owner), Some(key)) = (&run.requested_by, &run.idempotency_key) {
                self.keys.insert_run(owner, key, id);
            }
            let mut active = ActiveRun::new(run, next_seq);
            if let Some(spec) = &active.info.session {
                let recovery = session.unwrap_or_default();
                let live = super::sessions::LiveSession::recovered(spec, recovery);
                active.session = Some(Box::new(live));
                self.scheduler.admit_session(&agent, id);
                active.lost_at = Some(now.saturating_add(wait));
            } else if active.info.state == RunState::Queued {
                // Over the queue bound only if the bound was lowered; keep it anyway.
                self.scheduler
                    .restore_queued(&agent, id, active.info.priority);
            } else {
                self.scheduler.restore_in_flight(&agent, id);
                active.lost_at = Some(now.saturating_add(wait));
            }
            self.runs.insert(id, active);
        }
    }
}
