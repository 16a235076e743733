//! The hub's state machine: agents, presence, runs, queues and jobs, with no
//! transport, no store and no clock of its own.
//!
//! One task owns the [`Engine`] and feeds it [`Input`]s one at a time, so
//! nothing in here is ever shared or locked, and no two changes race: a run
//! is queued, dispatched and ended in the order its inputs arrived. Each
//! input mutates memory and appends to the current batch: the [`Change`]s
//! that make it durable and the [`Effect`]s (publish, reply, send to an
//! agent, acknowledge) that may only follow them. The hub's writer commits a
//! batch, then carries its effects out, so nothing is published or
//! acknowledged that the store does not hold. Work that needs the store
//! (an idempotency key of a run the hub no longer holds, a finished run's
//! record) is handed out as a [`Lookup`] and comes back as an input.
//!
//! Answers that describe live presence (the agent list, a handshake) go out
//! at once; answers that describe runs and jobs go out after the commit.
//!
//! [`Change`]: crate::store::Change

mod agents;
mod api_keys;
mod audit;
mod batch;
mod enroll;
mod error;
mod events;
mod jobs;
pub(crate) mod keys;
mod lifecycle;
mod presence;
mod registry;
mod reports;
mod requests;
mod rotation;
mod runs;
pub(crate) mod scope;
mod sessions;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use muster_proto::messages::{
    AgentEvent, AgentHello, AgentList, ConnectionAck, MetricsSample, Principal, RunExited,
    RunStarted,
};
use muster_proto::{AgentName, OutputFrame, RequestId, RunId, RunInfo, UnixMillis};
use tokio::sync::oneshot;

pub use audit::AuditDraft;
pub use batch::{Batch, Effect, MAX_FRAMES_PER_BATCH, Reply, ReplyTo};
pub use enroll::Enrolled;
pub use error::ApiError;
pub(crate) use jobs::{TARGET_PAGE, target_page};
pub use keys::{Found, KeyFound, KeyKind, KeyRef};
pub use presence::{ConnControl, LastSeen, PresenceGuard};
pub use reports::AgentLink;
pub use requests::Request;

use crate::auth::Secret;
use crate::browser_token::Signer;
use crate::clients::ClientConns;
use crate::config::HubConfig;
use crate::scheduler::Scheduler;
use crate::store::Change;
use crate::store::Snapshot;
use batch::BatchBuilder;
use jobs::Jobs;
use keys::KeyIndex;
use presence::Presence;
use registry::Registry;
use runs::ActiveRun;

/// Most inputs folded into one batch: bounds a batch's size and the time
/// its first answer waits for the commit.
pub const MAX_INPUTS_PER_BATCH: usize = 1024;

/// Role of an API key that may do everything.
pub const ROLE_ADMIN: &str = "admin";

/// What the engine acts on.
pub enum Input {
    /// A client's `hello`: answered at once with its principal and the first
    /// page of agents.
    ClientHello {
        /// The presented token.
        token: String,
        /// From where, for the audit log.
        source: Option<std::net::IpAddr>,
        /// Where the answer goes.
        reply: oneshot::Sender<Result<ClientWelcome, ApiError>>,
    },
    /// An agent's `hello`: answered at once; on success the agent is online.
    AgentHello {
        /// What it said.
        hello: Box<AgentHello>,
        /// Its connection.
        conn: AgentConn,
        /// Where the answer goes.
        reply: oneshot::Sender<Result<AgentName, ApiError>>,
    },
    /// An agent's `hello` with an enrollment token: on success the agent is
    /// registered and the answer, its own token, comes after the commit;
    /// a refusal comes at once.
    Enroll {
        /// What it said.
        hello: Box<AgentHello>,
        /// From where, for the audit log.
        source: Option<std::net::IpAddr>,
        /// Where the answer goes.
        reply: oneshot::Sender<Result<Enrolled, ApiError>>,
    },
    /// An agent connection ended (sent by its [`PresenceGuard`]).
    AgentGone {
        /// The agent.
        name: AgentName,
        /// Which of its connections.
        conn_id: u64,
    },
    /// An agent connection's heartbeats are late, or arrive again.
    AgentStale {
        /// The agent.
        name: AgentName,
        /// Which of its connections.
        conn_id: u64,
        /// Late (true) or back (false).
        stale: bool,
    },
    /// From an agent: a run's process started.
    RunStarted(Arc<AgentLink>, RunStarted),
    /// From an agent: its answer to `credential.rotate`.
    CredentialStored(Arc<AgentLink>, muster_proto::messages::CredentialStored),
    /// From an agent: an output frame, raw and decoded.
    RunOutput(Arc<AgentLink>, Bytes, OutputFrame),
    /// From an agent: a run ended.
    RunExited(Arc<AgentLink>, RunExited),
    /// From an agent: an event a program published.
    AgentEvent(Arc<AgentLink>, Box<AgentEvent>),
    /// From an agent: a metrics sample.
    Metrics(Arc<AgentLink>, Box<MetricsSample>),
    /// From an agent: a session's inputs up to a seq were applied.
    SessionApplied(Arc<AgentLink>, muster_proto::sessions::SessionApplied),
    /// From an agent: a session's screen, answering `session.snapshot`.
    SessionScreen(Arc<AgentLink>, Box<muster_proto::sessions::SessionScreen>),
    /// A client request.
    Request {
        /// Who asks.
        principal: Arc<Principal>,
        /// From where, for the audit log.
        source: Option<std::net::IpAddr>,
        /// Where the answer goes.
        to: ReplyTo,
        /// The request id to answer.
        re: Option<RequestId>,
        /// What is asked (boxed: inputs stay small, and so does every
        /// connection's future that hands one over).
        request: Box<Request>,
    },
    /// A browser token asked for over HTTP with an API key: answered at once.
    BrowserToken {
        /// The API key presented.
        token: String,
        /// From where, for the audit log.
        source: Option<std::net::IpAddr>,
        /// Where the answer goes.
        reply: oneshot::Sender<Result<muster_proto::messages::BrowserToken, ApiError>>,
    },
    /// An entry for the audit log from a connection: a login, or a refusal
    /// made before a request reached the engine.
    Audit(Box<AuditDraft>),
    /// A store lookup of an idempotency key came back.
    KeyFound(Box<keys::KeyFound>),
    /// A batch that ended these runs and jobs is committed: their keys can
    /// be found in the store from now on.
    ReleaseKeys(Vec<RunId>, Vec<muster_proto::JobId>),
    /// A batch that started some of a job's targets is committed: start more.
    ContinueJob(muster_proto::JobId),
    /// Mints an API key (the hub's library API; answered after the commit).
    MintKey {
        /// Key name.
        name: String,
        /// Role.
        role: muster_proto::Role,
        /// Revoke earlier keys of this name.
        replace: bool,
        /// The token, shown once.
        reply: oneshot::Sender<Secret>,
    },
    /// Registers an agent or rotates its token (library API; after the commit).
    AgentToken {
        /// The agent.
        name: AgentName,
        /// The token, shown once.
        reply: oneshot::Sender<Result<Secret, ApiError>>,
    },
}

/// An agent connection as the engine knows it.
pub struct AgentConn {
    /// Connection id.
    pub conn_id: u64,
    /// Its queue.
    pub tx: ReplyTo,
    /// Closes it.
    pub control: ConnControl,
    /// When it last heard from the agent.
    pub last_seen: LastSeen,
}

/// The answer to a client's `hello`.
#[derive(Debug)]
pub struct ClientWelcome {
    /// Who the token belongs to, shared by the connections of its key.
    pub principal: Arc<Principal>,
    /// The key id of its token: revoking, rotating or expiring it closes
    /// the connection.
    pub key_id: String,
    /// For a scoped key: the agents it sees now.
    pub view: Option<scope::View>,
    /// The first page of agents.
    pub agents: AgentList,
}

/// Async work the engine needs done; its result comes back as an input or
/// goes straight to a client.
#[derive(Debug)]
pub enum Lookup {
    /// Find the run an idempotency key created; answer with [`Input::KeyFound`].
    RunKey(keys::KeyRef),
    /// Find the job an idempotency key created; answer with [`Input::KeyFound`].
    JobKey(keys::KeyRef),
    /// Answer a client from the store.
    Read(ReplyTo, Option<RequestId>, crate::reads::Read),
    /// Answer a scoped key from the store, within the agents it sees.
    ReadIn(ReplyTo, Option<RequestId>, crate::reads::Read, scope::View),
}

/// The state machine. See the module documentation.
pub struct Engine {
    config: Arc<HubConfig>,
    hub_id: String,
    registry: Registry,
    presence: Presence,
    scheduler: Scheduler,
    /// Runs not yet terminal.
    runs: HashMap<RunId, ActiveRun>,
    /// Runs that ended in the current batch, until it is finished.
    ended: HashMap<RunId, RunInfo>,
    keys: KeyIndex,
    jobs: Jobs,
    /// The seq of each agent's next event.
    event_seqs: HashMap<AgentName, u64>,
    /// When metrics were last compacted.
    metrics_compacted_ms: UnixMillis,
    batch: BatchBuilder,
    lookups: Vec<Lookup>,
    /// Live client connections by key name, closed when their key is revoked.
    clients: Arc<ClientConns>,
    /// Agent token rotations waiting for the agent's answer.
    rotations: HashMap<AgentName, rotation::Rotation>,
    /// The seq the next audit entry gets.
    next_audit_seq: u64,
    /// The code the request being handled was refused with, for its audit entry.
    refused: Option<muster_proto::ErrorCode>,
    /// Issues and checks browser tokens.
    browser: Signer,
    /// `session.snapshot` requests waiting for their agent, by token.
    snapshots: HashMap<u64, sessions::PendingSnapshot>,
    /// The token the next snapshot request gets.
    next_snapshot_token: u64,
    /// The principal of each API key (by key id) that has connections.
    principals: HashMap<String, Arc<Principal>>,
}

impl Engine {
    /// The engine over what the store holds, with runs and jobs recovered:
    /// queued runs wait again, runs in flight wait for their agent.
    pub fn new(
        config: Arc<HubConfig>,
        hub_id: String,
        snapshot: Snapshot,
        now: UnixMillis,
    ) -> Self {
        let stored = snapshot
            .browser_token_secret
            .as_deref()
            .and_then(Signer::new);
        let (browser, generated) = match stored {
            Some(signer) => (signer, None),
            None => {
                let (signer, secret) = Signer::generate();
                (signer, Some(secret))
            }
        };
        let mut engine = Self {
            browser,
            scheduler: Scheduler::new(config.max_queue_per_agent),
            registry: Registry::new(snapshot.agents, snapshot.api_keys, snapshot.enrollments),
            presence: Presence::default(),
            runs: HashMap::new(),
            ended: HashMap::new(),
            keys: KeyIndex::default(),
            jobs: Jobs::default(),
            event_seqs: snapshot.event_seqs.into_iter().collect(),
            metrics_compacted_ms: now,
            batch: BatchBuilder::default(),
            lookups: Vec::new(),
            clients: Arc::default(),
            rotations: HashMap::new(),
            next_audit_seq: snapshot.next_audit_seq.max(1),
            refused: None,
            snapshots: HashMap::new(),
            next_snapshot_token: 1,
            principals: HashMap::new(),
            config,
            hub_id,
        };
        if let Some(secret) = generated {
            let name = crate::browser_token::SECRET_SETTING.to_owned();
            engine.batch.change(Change::SetSetting(name, secret));
        }
        engine.recover_runs(snapshot.runs, now);
        engine.recover_jobs(snapshot.jobs, snapshot.job_runs, now);
        engine
    }

    /// The live client connections, for the connections to register in.
    pub fn client_conns(&self) -> Arc<ClientConns> {
        self.clients.clone()
    }

    /// Handles one input.
    pub fn handle(&mut self, input: Input, now: UnixMillis) {
        match input {
            Input::ClientHello {
                token,
                source,
                reply,
            } => {
                let _ = reply.send(self.client_hello(&token, source, now));
            }
            Input::AgentHello { hello, conn, reply } => {
                let _ = reply.send(self.agent_hello(*hello, conn, now));
            }
            Input::Enroll {
                hello,
                source,
                reply,
            } => self.enroll(*hello, source, reply, now),
            Input::AgentGone { name, conn_id } => self.agent_gone(&name, conn_id, now),
            Input::AgentStale {
                name,
                conn_id,
                stale,
            } => self.agent_stale(&name, conn_id, stale),
            Input::RunStarted(link, started) => self.run_started(&link, started, now),
            Input::CredentialStored(link, stored) => self.credential_stored(&link, stored),
            Input::RunOutput(link, raw, frame) => self.run_output(&link, raw, frame),
            Input::RunExited(link, exited) => self.run_exited(&link, exited, now),
            Input::AgentEvent(link, event) => self.agent_event(&link, *event, now),
            Input::Metrics(link, sample) => self.agent_metrics(&link, *sample),
            Input::SessionApplied(link, applied) => self.session_applied(&link, applied),
            Input::SessionScreen(link, screen) => self.session_screen(&link, *screen),
            Input::Request {
                principal,
                source,
                to,
                re,
                request,
            } => self.request(&principal, source, &to, re, *request, now),
            Input::Audit(draft) => self.audit(*draft, now),
            Input::BrowserToken {
                token,
                source,
                reply,
            } => {
                let _ = reply.send(self.browser_token(&token, source, now));
            }
            Input::KeyFound(found) => self.key_found(*found, now),
            Input::ReleaseKeys(runs, jobs) => self.keys.release(&runs, &jobs),
            Input::ContinueJob(job) => self.continue_job(job, now),
            Input::MintKey {
                name,
                role,
                replace,
                reply,
            } => self.mint_key(&name, role, replace, reply, now),
            Input::AgentToken { name, reply } => self.agent_token(name, reply, now),
        }
    }

    /// Ends runs and agents past their deadlines; called every sweep interval.
    pub fn tick(&mut self, now: UnixMillis) {
        self.sweep_runs(now);
        self.expire_snapshots(now);
        self.prune_principals();
        self.expire_rotations(now);
        self.expire_keys(now);
        self.compact_metrics_if_due(now);
    }

    /// Whether the current batch holds anything.
    pub fn has_batch(&self) -> bool {
        !self.batch.is_empty()
    }

    /// Whether the current batch holds as much output as a batch may.
    pub fn batch_full(&self) -> bool {
        self.batch.is_full()
    }

    /// Ends the current batch and returns it.
    pub fn take_batch(&mut self, now: UnixMillis) -> Batch {
        self.flush_jobs(now);
        let (runs, ended) = (&self.runs, &self.ended);
        let batch = self
            .batch
            .finish(|id| runs.get(&id).map(|r| &r.info).or_else(|| ended.get(&id)));
        self.ended.clear();
        batch
    }

    /// Takes the lookups the last inputs asked for.
    pub fn take_lookups(&mut self) -> Vec<Lookup> {
        std::mem::take(&mut self.lookups)
    }

    /// Bytes one page of a listing may take: half a message, leaving room
    /// for the envelope.
    pub(crate) fn page_bytes(&self) -> usize {
        self.config.max_message_bytes / 2
    }

    /// How many API keys exist (none on a fresh data dir).
    pub fn api_key_count(&self) -> usize {
        self.registry.api_key_count()
    }

    /// Whether `name` is online now.
    pub fn is_online(&self, name: &AgentName) -> bool {
        self.presence.get(name).is_some()
    }

    /// The `connection.ack` limits and timings, the same for every connection.
    pub fn ack_template(config: &HubConfig, principal: Principal, conn: String) -> ConnectionAck {
        ConnectionAck {
            protocol: muster_proto::PROTOCOL_VERSION.into(),
            hub_version: env!("CARGO_PKG_VERSION").into(),
            connection_id: conn,
            principal,
            heartbeat_interval_ms: config.heartbeat_interval_ms,
            heartbeat_deadline_ms: config.heartbeat_deadline_ms,
            limits: config.limits(),
        }
    }
}
