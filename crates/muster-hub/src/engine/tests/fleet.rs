//! A fake fleet around a real [`Engine`]: registered agents with real
//! tokens and their connections, clients with their queues, and the
//! writer's part (take a batch, carry its effects out).

use std::collections::BTreeMap;
use std::sync::Arc;

use muster_proto::messages::{AgentHello, Principal, RunReport};
use muster_proto::types::RunRequest;
use muster_proto::{
    AgentName, CommandSpec, HubToAgent, RequestId, RunId, RunInfo, RunState, UnixMillis,
};
use tokio::sync::oneshot;
use ulid::Ulid;

use crate::auth;
use crate::config::HubConfig;
use crate::engine::{
    AgentConn, AgentLink, Batch, ConnControl, Effect, Engine, Input, LastSeen, Reply, ReplyTo,
    Request,
};
use crate::outbound::Outbound;
use crate::store::{AgentRecord, Snapshot, UnfinishedRun};

/// Registered agents in every test fleet.
pub(super) const AGENTS: usize = 3;
/// API key names of the clients: idempotency keys are scoped to them.
pub(super) const CLIENTS: [&str; 2] = ["ops", "dev"];
/// Room in each fake connection's queue; drained after every input.
const QUEUE: usize = 4096;
/// The clock at the start.
pub(super) const START_MS: UnixMillis = 1_000_000;

/// The hub's settings in tests: deadlines short enough for a few ticks to
/// cross them, a queue bound and an output cap small enough to be met.
pub(super) fn config() -> HubConfig {
    HubConfig {
        default_run_ttl_ms: 60,
        lost_grace_ms: 40,
        heartbeat_deadline_ms: 20,
        max_queue_per_agent: 2,
        max_output_bytes_per_run: 16,
        ..HubConfig::default()
    }
}

/// The name of agent `i`; one past the fleet is a name nobody registered.
pub(super) fn agent_name(i: usize) -> AgentName {
    let name = if i < AGENTS {
        format!("a{i}")
    } else {
        "ghost".to_owned()
    };
    AgentName::new(name).expect("valid agent name")
}

/// Run `n`: ids are numbered so that a failing case prints the same ones.
pub(super) fn run_id(n: u128) -> RunId {
    RunId(Ulid(n))
}

/// A run the store held when the hub started.
#[derive(Clone, Debug)]
pub(super) struct Recovered {
    /// Its agent.
    pub(super) agent: usize,
    /// Queued, dispatched or running.
    pub(super) state: RunState,
    /// The seq after its last stored chunk.
    pub(super) next_seq: u64,
}

impl Recovered {
    /// The stored record, as run `id`.
    pub(super) fn stored(&self, id: RunId) -> UnfinishedRun {
        let command = CommandSpec::Argv(vec!["true".into()]);
        let mut run = RunInfo::queued(RunRequest::new(agent_name(self.agent), command), 0);
        run.id = id;
        run.state = self.state;
        run.requested_by = Some(CLIENTS[0].into());
        run.expires_ms = Some(START_MS + 60);
        if self.state != RunState::Queued {
            run.dispatched_ms = Some(START_MS - 10);
        }
        UnfinishedRun {
            run,
            next_seq: self.next_seq,
            session: None,
        }
    }
}

/// A registered agent and the connections it made.
pub(super) struct FakeAgent {
    name: AgentName,
    token: String,
    /// Its latest connection, kept after it ends: late reports still come on it.
    pub(super) link: Option<Arc<AgentLink>>,
    /// Ids of its connections, oldest first.
    conn_ids: Vec<u64>,
    /// The queues of its connections.
    queues: Vec<crate::queue::Receiver>,
}

/// A client connection.
struct FakeClient {
    principal: Arc<Principal>,
    tx: ReplyTo,
    rx: crate::queue::Receiver,
}

/// The engine with its fleet and its clock.
pub(super) struct Fleet {
    pub(super) engine: Engine,
    pub(super) now: UnixMillis,
    pub(super) agents: Vec<FakeAgent>,
    clients: Vec<FakeClient>,
    /// An admin key, for the registry.
    admin: FakeClient,
    next_run: u128,
    next_conn: u64,
    next_request: u64,
}

fn queue() -> (ReplyTo, crate::queue::Receiver) {
    crate::queue::bounded(QUEUE)
}

impl Fleet {
    /// The engine over a store holding [`AGENTS`] agents and `recovered`
    /// (numbered from 1, in order).
    pub(super) fn new(config: HubConfig, recovered: &[UnfinishedRun]) -> Self {
        let (mut records, mut agents) = (Vec::new(), Vec::new());
        for i in 0..AGENTS {
            let minted = auth::mint();
            records.push(AgentRecord {
                name: agent_name(i),
                labels: Default::default(),
                key_id: minted.key_id,
                secret_hash: minted.secret_hash,
                facts: None,
                last_seen_ms: None,
            });
            agents.push(FakeAgent {
                name: agent_name(i),
                token: minted.token.expose().to_owned(),
                link: None,
                conn_ids: Vec::new(),
                queues: Vec::new(),
            });
        }
        let snapshot = Snapshot {
            agents: records,
            runs: recovered.to_vec(),
            ..Snapshot::default()
        };
        let engine = Engine::new(Arc::new(config), "hub".into(), snapshot, START_MS);
        let clients = CLIENTS
            .iter()
            .map(|name| client(name, "operator"))
            .collect();
        Self {
            engine,
            now: START_MS,
            agents,
            clients,
            admin: client("root", crate::engine::ROLE_ADMIN),
            next_run: recovered.len() as u128 + 1,
            next_conn: 0,
            next_request: 0,
        }
    }

    /// A run id never used before.
    pub(super) fn fresh_run_id(&mut self) -> RunId {
        self.next_run += 1;
        run_id(self.next_run - 1)
    }

    /// Agent `agent` says `hello` on a new connection; the token is valid.
    pub(super) fn connect(&mut self, agent: usize, max_concurrency: u32, runs: Vec<RunReport>) {
        self.next_conn += 1;
        let conn_id = self.next_conn;
        let (tx, rx) = queue();
        let fake = &mut self.agents[agent];
        let hello = AgentHello {
            token: fake.token.clone(),
            name: Some(fake.name.clone()),
            hostname: "host".into(),
            os: "linux".into(),
            arch: "x86_64".into(),
            version: "test".into(),
            labels: BTreeMap::new(),
            capabilities: Vec::new(),
            exec: Default::default(),
            actions: Vec::new(),
            max_concurrency,
            runs,
        };
        let conn = AgentConn {
            conn_id,
            tx: tx.clone(),
            control: ConnControl::default(),
            last_seen: LastSeen::default(),
        };
        let (reply, mut answer) = oneshot::channel();
        let hello = Box::new(hello);
        self.engine
            .handle(Input::AgentHello { hello, conn, reply }, self.now);
        let name = answer.try_recv().expect("answered at once");
        assert_eq!(name.expect("the token is valid"), fake.name);
        let name = fake.name.clone();
        fake.link = Some(Arc::new(AgentLink { name, conn_id, tx }));
        fake.conn_ids.push(conn_id);
        fake.queues.push(rx);
    }

    /// A connection of agent `agent` ends: its latest, or (`stale`) an
    /// older one that a newer one replaced.
    pub(super) fn disconnect(&mut self, agent: usize, stale: bool) {
        let ids = &self.agents[agent].conn_ids;
        let back = if stale { 2 } else { 1 };
        let Some(&conn_id) = ids.len().checked_sub(back).and_then(|i| ids.get(i)) else {
            return;
        };
        let name = agent_name(agent);
        self.engine
            .handle(Input::AgentGone { name, conn_id }, self.now);
    }

    /// Whether agent `agent` is connected.
    pub(super) fn is_online(&self, agent: usize) -> bool {
        self.engine.is_online(&agent_name(agent))
    }

    /// A client request; returns the id it is answered under.
    pub(super) fn request(&mut self, client: usize, request: Request) -> RequestId {
        self.next_request += 1;
        let re = RequestId(format!("r{}", self.next_request));
        let FakeClient { principal, tx, .. } = &self.clients[client];
        let input = Input::Request {
            principal: principal.clone(),
            source: None,
            to: tx.clone(),
            re: Some(re.clone()),
            request: Box::new(request),
        };
        self.engine.handle(input, self.now);
        re
    }

    /// A request of an admin key; its answer is not looked at.
    pub(super) fn admin_request(&mut self, request: Request) {
        let FakeClient { principal, tx, .. } = &self.admin;
        let input = Input::Request {
            principal: principal.clone(),
            source: None,
            to: tx.clone(),
            re: None,
            request: Box::new(request),
        };
        self.engine.handle(input, self.now);
    }

    /// The API key name of client `client`.
    pub(super) fn client_name(&self, client: usize) -> &str {
        &self.clients[client].principal.name
    }

    /// Hands the engine an input at the current time.
    pub(super) fn input(&mut self, input: Input) {
        self.engine.handle(input, self.now);
    }

    /// Time passes by `ms` and the sweep runs.
    pub(super) fn tick(&mut self, ms: u64) {
        self.now += ms;
        self.engine.tick(self.now);
    }

    /// Ends the current batch.
    pub(super) fn take_batch(&mut self) -> Batch {
        self.engine.take_batch(self.now)
    }

    /// What the queues of agent `agent`'s connections hold, oldest connection first.
    pub(super) fn agent_messages(&mut self, agent: usize) -> Vec<HubToAgent> {
        let mut messages = Vec::new();
        for rx in &mut self.agents[agent].queues {
            while let Ok(Some(item)) = rx.try_recv() {
                match item {
                    Outbound::Agent(msg) => messages.push(*msg),
                    other => panic!("an agent connection got {other:?}"),
                }
            }
        }
        messages
    }

    /// What client `client`'s queue holds.
    pub(super) fn client_replies(&mut self, client: usize) -> Vec<Reply> {
        let fake = &mut self.clients[client];
        assert!(!fake.tx.is_overflowed(), "a client queue overflowed");
        let mut replies = Vec::new();
        while let Ok(Some(item)) = fake.rx.try_recv() {
            match item {
                Outbound::Reply(reply) => replies.push(*reply),
                other => panic!("a client got {other:?} without subscribing"),
            }
        }
        replies
    }
}

fn client(name: &str, role: &str) -> FakeClient {
    let (tx, rx) = queue();
    let principal = Principal {
        kind: "client".into(),
        name: name.into(),
        role: Some(role.into()),
        scope: None,
    };
    FakeClient {
        principal: Arc::new(principal),
        tx,
        rx,
    }
}

/// Carries effects out as the writer does after the commit; returns the
/// released keys, to feed back to the engine.
pub(super) fn carry_out(effects: Vec<Effect>) -> Vec<Input> {
    let mut released = Vec::new();
    for effect in effects {
        match effect {
            // Nobody subscribes: the model reads these from the batch.
            Effect::Event { .. } | Effect::Raw(_) => {}
            Effect::Reply(to, reply) => to.send(Outbound::Reply(reply)),
            Effect::ToAgent(to, msg) => to.send(Outbound::Agent(Box::new(msg))),
            Effect::Close(control, code, reason) => control.close(code, &reason),
            Effect::Notify(notify) => notify(),
            Effect::ReleaseKeys(runs, jobs) => released.push(Input::ReleaseKeys(runs, jobs)),
            Effect::ContinueJob(job) => released.push(Input::ContinueJob(job)),
        }
    }
    released
}
