//! Client requests that go through the engine: everything that changes
//! state, and the reads that need what only the engine holds.

use std::net::IpAddr;

use muster_proto::enroll::EnrollCreate;
use muster_proto::messages::{
    AgentAdd, AgentLabel, AgentListQuery, JobCreate, JobTargetsQuery, KeyCreate, KeyRotate,
    MetricsQuery, Principal, RunCreate,
};
use muster_proto::sessions::{SessionAttach, SessionInput, SessionResize};
use muster_proto::{AgentName, Channel, ErrorCode, JobId, RequestId, RunId, UnixMillis};
use tokio::sync::oneshot;

use super::audit::AuditDraft;
use super::batch::ReplyTo;
use super::error::ApiError;
use super::{Engine, Lookup};
use crate::reads::Read;

/// A client request for the engine.
#[derive(Debug)]
pub enum Request {
    /// `agent.list`.
    AgentList(AgentListQuery),
    /// `agent.get`.
    AgentGet(AgentName),
    /// `agent.add`.
    AgentAdd(AgentAdd),
    /// `agent.remove`.
    AgentRemove(AgentName),
    /// `agent.label`.
    AgentLabel(AgentLabel),
    /// `run.create`, with the id the new run gets (the connection chose it,
    /// to subscribe before the run exists).
    RunCreate(RunId, RunCreate),
    /// `run.get`.
    RunGet(RunId),
    /// `run.cancel`.
    RunCancel(RunId),
    /// `job.create`, with the id the new job gets.
    JobCreate(JobId, JobCreate),
    /// `job.get`.
    JobGet(JobId),
    /// `job.targets`.
    JobTargets(JobTargetsQuery),
    /// `job.cancel`.
    JobCancel(JobId),
    /// `metrics.query`.
    MetricsQuery(MetricsQuery),
    /// `key.create`.
    KeyCreate(KeyCreate),
    /// `key.list`.
    KeyList,
    /// `key.revoke`, by name.
    KeyRevoke(String),
    /// `agent.rotate_token`.
    AgentRotateToken(AgentName),
    /// `key.rotate`.
    KeyRotate(KeyRotate),
    /// A listing a scoped key asked for: answered from the store within its
    /// [`View`](super::scope::View).
    Read(Read),
    /// The agents the asking key sees (`None`: every agent).
    View(oneshot::Sender<Option<super::scope::View>>),
    /// `enroll.create`.
    EnrollCreate(EnrollCreate),
    /// `enroll.list`.
    EnrollList,
    /// `enroll.revoke`, by id.
    EnrollRevoke(String),
    /// For `subscribe` to `agent:<name>` or `metrics:<name>`: whether the
    /// agent is registered, and the offset its next event gets.
    AgentChannel(AgentName, oneshot::Sender<Result<u64, ApiError>>),
    /// `session.attach`.
    SessionAttach(SessionAttach),
    /// `session.detach`, or the end of a connection that was attached
    /// (`write`: it was attached as a writer).
    SessionDetach(RunId, bool),
    /// `session.input` from a connection attached as `writer`.
    SessionInput(String, SessionInput),
    /// `session.resize`.
    SessionResize(SessionResize),
    /// `session.snapshot`.
    SessionSnapshot(RunId),
}

impl Engine {
    /// Handles one client request: checks it against the key's scope,
    /// handles it, and records it in the audit log if it changes anything.
    pub(super) fn request(
        &mut self,
        principal: &Principal,
        source: Option<IpAddr>,
        to: &ReplyTo,
        re: Option<RequestId>,
        request: Request,
        now: UnixMillis,
    ) {
        let audit = AuditDraft::of_request(principal, source, &request);
        if let Some(refused) = self.scope_refusal(principal, &request) {
            if let Some(draft) = audit {
                let draft = draft
                    .outcome(refused.code.as_str())
                    .detail(refused.message.clone());
                self.audit(draft, now);
            }
            return match request {
                Request::AgentChannel(_, reply) => _ = reply.send(Err(refused)),
                request => self.reply_error(to, re, refused, own_channel(&request)),
            };
        }
        self.refused = None;
        let reads = self.lookups.len();
        self.handle_request(principal, to, re, request, now);
        if principal.scope.is_some() {
            self.confine_reads(principal, reads);
        }
        if let Some(draft) = audit {
            let draft = match self.refused.take() {
                Some(code) => draft.outcome(code.as_str()),
                None => draft,
            };
            self.audit(draft, now);
        }
    }

    /// Reads asked for since `from` answer within the key's view.
    fn confine_reads(&mut self, principal: &Principal, from: usize) {
        if self.lookups.len() == from {
            return;
        }
        let Some(view) = self.view(principal) else {
            return;
        };
        let asked: Vec<_> = self.lookups.drain(from..).collect();
        self.lookups
            .extend(asked.into_iter().map(|lookup| match lookup {
                Lookup::Read(to, re, read) => Lookup::ReadIn(to, re, read, view.clone()),
                other => other,
            }));
    }

    fn handle_request(
        &mut self,
        principal: &Principal,
        to: &ReplyTo,
        re: Option<RequestId>,
        request: Request,
        now: UnixMillis,
    ) {
        match request {
            Request::AgentList(query) => self.list_agents(principal, to, re, &query),
            Request::AgentGet(name) => self.get_agent(to, re, &name),
            Request::AgentAdd(add) => self.add_agent(to, re, add, now),
            Request::AgentRemove(name) => self.remove_agent(to, re, name, now),
            Request::AgentLabel(edit) => self.label_agent(to, re, edit),
            Request::KeyCreate(create) => self.create_key(to, re, create, now),
            Request::KeyList => self.list_keys(to, re),
            Request::KeyRevoke(name) => self.revoke_key(to, re, name),
            Request::AgentRotateToken(name) => self.rotate_token(to, re, name, now),
            Request::KeyRotate(rotate) => self.rotate_key(to, re, rotate, now),
            Request::Read(read) => self.lookups.push(Lookup::Read(to.clone(), re, read)),
            Request::View(reply) => _ = reply.send(self.view(principal)),
            Request::EnrollCreate(create) => {
                self.create_enrollment(&principal.name, to, re, create, now);
            }
            Request::EnrollList => self.list_enrollments(to, re),
            Request::EnrollRevoke(id) => self.revoke_enrollment(to, re, id),
            Request::RunCreate(id, create) => self.request_run(principal, to, re, id, create, now),
            Request::RunGet(id) => self.get_run(to, re, id),
            Request::RunCancel(id) => self.cancel_run(to, re, id, now),
            Request::JobCreate(id, create) => self.request_job(principal, to, re, id, create, now),
            Request::JobGet(id) => self.get_job(to, re, id),
            Request::JobTargets(query) => self.job_targets(to, re, query),
            Request::JobCancel(id) => self.cancel_job(to, re, id, now),
            Request::MetricsQuery(query) => {
                if self.registry.contains(&query.agent) {
                    let read = Read::Metrics(query);
                    self.lookups.push(Lookup::Read(to.clone(), re, read));
                } else {
                    let error = super::agents::agent_not_found(&query.agent);
                    self.reply_error(to, re, error, None);
                }
            }
            Request::SessionAttach(attach) => self.attach_session(principal, to, re, attach, now),
            Request::SessionDetach(id, write) => {
                self.detach_session(principal, to, re, id, write, now);
            }
            Request::SessionInput(writer, input) => {
                self.session_input(principal, to, re, writer, input, now);
            }
            Request::SessionResize(resize) => self.resize_session(to, re, resize),
            Request::SessionSnapshot(id) => self.snapshot_session(to, re, id, now),
            Request::AgentChannel(name, reply) => {
                let answer = if self.registry.contains(&name) {
                    Ok(self.next_event_seq(&name))
                } else {
                    let channel = Channel::Agent(name);
                    Err(ApiError::new(
                        ErrorCode::UnknownChannel,
                        format!("no channel {:?}", channel.to_string()),
                    ))
                };
                let _ = reply.send(answer);
            }
        }
    }
}

/// The channel a request subscribed the connection to before it reached
/// the engine, to let go of if it is refused.
fn own_channel(request: &Request) -> Option<Channel> {
    match request {
        Request::RunCreate(id, create) if create.subscribe => Some(Channel::Run(*id)),
        Request::JobCreate(id, create) if create.subscribe => Some(Channel::Job(*id)),
        _ => None,
    }
}
