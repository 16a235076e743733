//! Client requests that go through the engine: everything that changes
//! state, and the reads that need what only the engine holds.

use muster_proto::enroll::EnrollCreate;
use muster_proto::messages::{
    AgentAdd, AgentLabel, AgentListQuery, JobCreate, JobTargetsQuery, KeyCreate, MetricsQuery,
    Principal, RunCreate,
};
use muster_proto::{AgentName, Channel, ErrorCode, JobId, RequestId, RunId, UnixMillis};
use tokio::sync::oneshot;

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
    /// `enroll.create`.
    EnrollCreate(EnrollCreate),
    /// `enroll.list`.
    EnrollList,
    /// `enroll.revoke`, by id.
    EnrollRevoke(String),
    /// For `subscribe` to `agent:<name>` or `metrics:<name>`: whether the
    /// agent is registered, and the offset its next event gets.
    AgentChannel(AgentName, oneshot::Sender<Result<u64, ApiError>>),
}

impl Engine {
    /// Handles one client request.
    pub(super) fn request(
        &mut self,
        principal: &Principal,
        to: &ReplyTo,
        re: Option<RequestId>,
        request: Request,
        now: UnixMillis,
    ) {
        match request {
            Request::AgentList(query) => self.list_agents(to, re, &query),
            Request::AgentGet(name) => self.get_agent(to, re, &name),
            Request::AgentAdd(add) => self.add_agent(to, re, add, now),
            Request::AgentRemove(name) => self.remove_agent(to, re, name, now),
            Request::AgentLabel(edit) => self.label_agent(to, re, edit),
            Request::KeyCreate(create) => self.create_key(to, re, create, now),
            Request::KeyList => self.list_keys(to, re),
            Request::KeyRevoke(name) => self.revoke_key(to, re, name),
            Request::AgentRotateToken(name) => self.rotate_token(to, re, name, now),
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
