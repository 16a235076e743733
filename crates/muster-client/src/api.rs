//! Typed helpers over [`Client::request`]: one method per request the hub
//! serves to clients, each checking that the reply has the expected type.
//! The lists, which come in pages, are in `lists.rs`.

use std::collections::BTreeMap;

use muster_proto::enroll::{EnrollCreate, EnrollCreated, EnrollRef, EnrollmentInfo};
use muster_proto::jobs::{JobInfo, JobSpec};
use muster_proto::messages::{
    AgentAdd, AgentAdded, AgentRef, Empty, JobCreate, JobRef, MetricsQuery, RunAccepted, RunCreate,
    RunRef, SeriesPoint, Subscribe, Subscribed,
};
use muster_proto::types::RunRequest;
use muster_proto::{
    AgentInfo, AgentName, ClientToHub, HubToClient, JobId, RunId, RunInfo, UnixMillis,
};

use crate::client::Client;
use crate::error::ClientError;

/// Sends a request and destructures the reply, or reports an unexpected reply type.
macro_rules! expect_reply {
    ($client:expr, $request:expr, $expected:literal, $pattern:pat => $value:expr) => {
        match $client.request($request).await? {
            $pattern => Ok($value),
            other => Err($crate::api::unexpected($expected, &other)),
        }
    };
}
pub(crate) use expect_reply;

impl Client {
    /// Creates a job. With `subscribe`, this connection receives every event
    /// on `job:<id>` from its very start. The job's `targets` may hold only
    /// their first page (`targets_next_cursor` is then set):
    /// [`read_all_targets`](Self::read_all_targets) reads the rest.
    pub async fn create_job(&self, spec: JobSpec, subscribe: bool) -> Result<JobInfo, ClientError> {
        let create = JobCreate {
            spec,
            subscribe,
            idempotency_key: None,
        };
        Ok(self.submit_job(create).await?.job)
    }

    /// Sends `job.create` as given, idempotency key included; `created` in
    /// the reply is false when the key found an earlier job. As with
    /// [`create_job`](Self::create_job), the targets may be a first page.
    pub async fn submit_job(&self, create: JobCreate) -> Result<crate::JobAccepted, ClientError> {
        let request = ClientToHub::JobCreate(create);
        expect_reply!(self, request, "job.accepted", HubToClient::JobAccepted(accepted) => accepted)
    }

    /// Cancels a job: waiting targets end `cancelled`, running runs are killed.
    pub async fn cancel_job(&self, id: JobId) -> Result<(), ClientError> {
        let request = ClientToHub::JobCancel(JobRef { job: id });
        expect_reply!(self, request, "ok", HubToClient::Ok(_) => ())
    }

    /// One agent.
    pub async fn agent(&self, name: &AgentName) -> Result<AgentInfo, ClientError> {
        let request = ClientToHub::AgentGet(AgentRef { name: name.clone() });
        expect_reply!(self, request, "agent.info", HubToClient::AgentInfo(info) => info.agent)
    }

    /// Registers an agent; the reply holds its token, which the hub never shows again.
    pub async fn add_agent(
        &self,
        name: AgentName,
        labels: BTreeMap<String, String>,
    ) -> Result<AgentAdded, ClientError> {
        let request = ClientToHub::AgentAdd(AgentAdd { name, labels });
        expect_reply!(self, request, "agent.added", HubToClient::AgentAdded(added) => added)
    }

    /// Unregisters an agent, revokes its token and disconnects it.
    pub async fn remove_agent(&self, name: &AgentName) -> Result<(), ClientError> {
        let request = ClientToHub::AgentRemove(AgentRef { name: name.clone() });
        expect_reply!(self, request, "agent.removed", HubToClient::AgentRemoved(_) => ())
    }

    /// Mints an enrollment token (admin); the reply holds the token, which
    /// the hub never shows again.
    pub async fn create_enrollment(
        &self,
        create: EnrollCreate,
    ) -> Result<EnrollCreated, ClientError> {
        let request = ClientToHub::EnrollCreate(create);
        expect_reply!(self, request, "enroll.created", HubToClient::EnrollCreated(created) => created)
    }

    /// Every enrollment token, oldest first, never a secret (admin).
    pub async fn enrollments(&self) -> Result<Vec<EnrollmentInfo>, ClientError> {
        let request = ClientToHub::EnrollList(Empty::default());
        expect_reply!(self, request, "enroll.list", HubToClient::EnrollList(list) => list.enrollments)
    }

    /// Revokes an enrollment token by its id (admin); agents it enrolled
    /// keep their own tokens.
    pub async fn revoke_enrollment(&self, id: &str) -> Result<(), ClientError> {
        let request = ClientToHub::EnrollRevoke(EnrollRef { id: id.to_owned() });
        expect_reply!(self, request, "enroll.revoked", HubToClient::EnrollRevoked(_) => ())
    }

    /// Creates a run. With `subscribe`, this connection receives every event
    /// and output frame of the run from its very start.
    pub async fn create_run(
        &self,
        request: RunRequest,
        subscribe: bool,
    ) -> Result<RunAccepted, ClientError> {
        let request = ClientToHub::RunCreate(RunCreate { request, subscribe });
        expect_reply!(self, request, "run.accepted", HubToClient::RunAccepted(accepted) => accepted)
    }

    /// One run.
    pub async fn run_info(&self, id: RunId) -> Result<RunInfo, ClientError> {
        let request = ClientToHub::RunGet(RunRef { run: id });
        expect_reply!(self, request, "run.info", HubToClient::RunInfo(info) => info.run)
    }

    /// Cancels a run: dequeues it, or kills its process group.
    pub async fn cancel_run(&self, id: RunId) -> Result<(), ClientError> {
        let request = ClientToHub::RunCancel(RunRef { run: id });
        expect_reply!(self, request, "ok", HubToClient::Ok(_) => ())
    }

    /// The stored metric samples of `agent` taken at or after `since_ms`, oldest
    /// first; older points are averages over their `resolution_ms`.
    pub async fn metrics(
        &self,
        agent: &AgentName,
        since_ms: UnixMillis,
    ) -> Result<Vec<SeriesPoint>, ClientError> {
        let request = ClientToHub::MetricsQuery(MetricsQuery {
            agent: agent.clone(),
            since_ms,
        });
        expect_reply!(self, request, "metrics.series",
            HubToClient::MetricsSeries(series) => series.samples)
    }

    /// Subscribes to `channel` (`fleet`, `agent:<name>`, `metrics:<name>`,
    /// `run:<id>`). With `since`, the hub replays stored output from that
    /// sequence number, then sends `stream.synced`, then live frames.
    pub async fn subscribe(
        &self,
        channel: &str,
        since: Option<u64>,
    ) -> Result<Subscribed, ClientError> {
        let request = ClientToHub::Subscribe(Subscribe {
            channel: channel.to_owned(),
            since,
        });
        expect_reply!(self, request, "subscribed", HubToClient::Subscribed(subscribed) => subscribed)
    }
}

pub(crate) fn unexpected(expected: &str, got: &HubToClient) -> ClientError {
    ClientError::Protocol(format!(
        "expected a {expected} reply, got {}",
        type_name(got)
    ))
}

/// The wire `type` of a message, for error messages.
pub(crate) fn type_name(msg: &HubToClient) -> String {
    serde_json::to_value(msg)
        .ok()
        .and_then(|value| value.get("type")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| "an unknown message".to_owned())
}
