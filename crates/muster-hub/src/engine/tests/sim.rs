//! The operations of `ops` played against a [`Fleet`]: each becomes an
//! input, each batch and each answer is shown to the [`Model`], and the
//! engine is checked after every step.

use std::sync::Arc;

use muster_proto::messages::{RunOutcome, RunReport, RunReportStatus};
use muster_proto::{AgentName, RunId, RunState};

use super::fleet::{AGENTS, CLIENTS, Fleet, agent_name, carry_out, run_id};
use super::inputs::{create, exited, output, started};
use super::model::{Asked, Model};
use super::ops::{Op, Pick, Report, Sender, Seq, Setup, Ttl};
use crate::config::HubConfig;
use crate::engine::{AgentLink, Found, Input, KeyFound, KeyRef, Lookup, Request};
use crate::store::UnfinishedRun;

/// Long enough for every deadline of a test to pass.
const DAY_MS: u64 = 24 * 3_600_000;
/// Rounds of finishing runs at the end, at most: each frees a slot per agent.
const FINISH_ROUNDS: usize = 200;

/// A fleet, its model, and what the writer and the store still owe.
pub(super) struct Sim {
    fleet: Fleet,
    model: Model,
    /// Idempotency-key lookups the store has not answered yet.
    lookups: Vec<KeyRef>,
    /// Released keys not fed back yet.
    released: Vec<Input>,
    /// Every run id a create asked for, and the recovered ones, with the
    /// agent asked (if registered), oldest first.
    asked: Vec<(RunId, Option<usize>)>,
    steps: usize,
}

impl Sim {
    /// The fleet as `setup` says: recovered runs in the store, and the
    /// agents that start online connected, reporting their runs running.
    pub(super) fn new(config: HubConfig, setup: &Setup) -> Self {
        let recovered: Vec<UnfinishedRun> = (1..)
            .zip(&setup.recovered)
            .map(|(n, run)| run.stored(run_id(n)))
            .collect();
        let asked = (1..)
            .zip(&setup.recovered)
            .map(|(n, run)| (run_id(n), Some(run.agent)))
            .collect();
        let mut sim = Self {
            fleet: Fleet::new(config, &recovered),
            model: Model::new(&recovered),
            lookups: Vec::new(),
            released: Vec::new(),
            asked,
            steps: 0,
        };
        for (agent, slots) in setup.online.iter().enumerate() {
            if let Some(max_concurrency) = *slots {
                sim.step(&Op::Connect {
                    agent,
                    max_concurrency,
                    reports: vec![Report::Running],
                    extra: None,
                });
            }
        }
        sim
    }

    /// Does `op`, collects what it caused, and checks the engine.
    pub(super) fn step(&mut self, op: &Op) {
        self.steps += 1;
        self.model.at = format!("step {} {op:?}", self.steps);
        self.apply(op);
        self.settle();
        self.model.check_engine(&self.fleet.engine);
    }

    /// Drives everything to rest and checks that every run ended once.
    /// With `expire`, every agent goes away and time runs past every
    /// deadline; otherwise every agent comes back and finishes its runs.
    pub(super) fn finish(&mut self, expire: bool) {
        self.catch_up();
        if expire {
            for agent in 0..AGENTS {
                self.step(&Op::Disconnect {
                    agent,
                    stale: false,
                });
            }
            self.step(&Op::Tick(DAY_MS));
        } else {
            self.finish_runs();
        }
        self.catch_up();
        self.model.at = "at rest".into();
        self.model.check_quiescent(&self.fleet.engine);
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Create {
                client,
                agent,
                priority,
                key,
                ttl,
            } => self.create(client, agent, priority, key, ttl),
            Op::Cancel(run) => {
                let id = self.resolve(run);
                let re = self.fleet.request(0, Request::RunCancel(id));
                self.model.asked(&re.0, Asked::Cancel);
            }
            Op::Started { run, from } => {
                let id = self.resolve(run);
                self.report(id, from, |link| started(link, id));
            }
            Op::Output {
                run,
                from,
                seq,
                len,
            } => {
                let id = self.resolve(run);
                let next = self.fleet.engine.runs.get(&id).map_or(0, |r| r.next_seq);
                let seq = match seq {
                    Seq::Next => next,
                    Seq::Repeat => next.saturating_sub(1),
                    Seq::Skip(k) => next.saturating_add(u64::from(k) + 1),
                    Seq::Last => u64::MAX,
                };
                self.report(id, from, |link| output(link, id, seq, usize::from(len)));
            }
            Op::Exited { run, from, outcome } => {
                let id = self.resolve(run);
                self.report(id, from, |link| exited(link, id, outcome));
            }
            Op::Connect {
                agent,
                max_concurrency,
                ref reports,
                extra,
            } => {
                let runs = self.hello_reports(agent, reports, extra);
                self.fleet.connect(agent, max_concurrency, runs);
            }
            Op::Disconnect { agent, stale } => self.fleet.disconnect(agent, stale),
            Op::Tick(ms) => self.fleet.tick(ms),
            Op::Batch => self.batch(),
            Op::Lookups => self.answer_lookups(),
            Op::Release => {
                for input in std::mem::take(&mut self.released) {
                    self.fleet.input(input);
                }
            }
        }
    }

    fn create(&mut self, client: usize, agent: usize, priority: i32, key: Option<u8>, ttl: Ttl) {
        let id = self.fleet.fresh_run_id();
        let key = key.map(|k| format!("k{k}"));
        let ttl_ms = match ttl {
            Ttl::Default => None,
            Ttl::Zero => Some(0),
            Ttl::Ms(ms) => Some(ms),
        };
        let request = create(agent_name(agent), priority, key.clone(), ttl_ms);
        let re = self.fleet.request(client, Request::RunCreate(id, request));
        let known_agent = agent < AGENTS;
        self.asked.push((id, known_agent.then_some(agent)));
        let owner = self.fleet.client_name(client).to_owned();
        let asked = Asked::Create {
            owner,
            key,
            id,
            known_agent,
            valid: (-100..=100).contains(&priority),
        };
        self.model.asked(&re.0, asked);
    }

    /// A report about `id` from `from`, on its latest connection; an agent
    /// that never said hello has no connection to report on.
    fn report(&mut self, id: RunId, from: Sender, report: impl FnOnce(&Arc<AgentLink>) -> Input) {
        let agent = match from {
            Sender::Owner => self.owner(id).unwrap_or(0),
            Sender::Agent(n) => n % AGENTS,
        };
        if let Some(link) = self.fleet.agents[agent].link.clone() {
            self.fleet.input(report(&link));
        }
    }

    fn resolve(&self, pick: Pick) -> RunId {
        match pick {
            Pick::Live(n) => {
                let mut live: Vec<RunId> = self.fleet.engine.runs.keys().copied().collect();
                live.sort();
                match live.len() {
                    0 => self.resolve(Pick::Asked(n)),
                    len => live[n % len],
                }
            }
            Pick::Asked(n) => match self.asked.len() {
                0 => self.resolve(Pick::Unknown),
                len => self.asked[len - 1 - n % len].0,
            },
            Pick::Unknown => run_id(u128::MAX),
        }
    }

    fn owner(&self, id: RunId) -> Option<usize> {
        if let Some(run) = self.fleet.engine.runs.get(&id) {
            return agent_index(&run.info.agent);
        }
        self.asked.iter().find(|(asked, _)| *asked == id)?.1
    }

    /// What a `hello` of `agent` says of its runs in flight, in id order,
    /// and of one more run.
    fn hello_reports(
        &self,
        agent: usize,
        reports: &[Report],
        extra: Option<(Pick, Report)>,
    ) -> Vec<RunReport> {
        let mut flying = self.fleet.engine.scheduler.in_flight(&agent_name(agent));
        flying.sort();
        let mut said: Vec<RunReport> = flying
            .into_iter()
            .zip(reports.iter().cycle())
            .filter_map(|(run, report)| run_report(run, *report))
            .collect();
        if let Some((pick, report)) = extra {
            said.extend(run_report(self.resolve(pick), report));
        }
        said
    }

    /// The writer takes the batch, commits it and carries its effects out.
    fn batch(&mut self) {
        let batch = self.fleet.take_batch();
        self.model.commit(&batch);
        self.model.check_committed(&self.fleet.engine);
        self.released.extend(carry_out(batch.effects));
    }

    fn answer_lookups(&mut self) {
        for key in std::mem::take(&mut self.lookups) {
            let run = self.model.run_of_key(&key.owner, &key.key);
            let found = Ok(Found::Run(run));
            self.fleet
                .input(Input::KeyFound(Box::new(KeyFound { key, found })));
        }
    }

    /// Collects the lookups asked for and the answers queued.
    fn settle(&mut self) {
        for lookup in self.fleet.engine.take_lookups() {
            match lookup {
                Lookup::RunKey(key) => self.lookups.push(key),
                Lookup::Read(_, re, _) | Lookup::ReadIn(_, re, _, _) => {
                    self.model
                        .answered_by_store(&re.expect("every request had an id").0);
                }
                Lookup::JobKey(key) => panic!("no job was created, yet {key:?} was looked up"),
            }
        }
        for client in 0..CLIENTS.len() {
            for reply in self.fleet.client_replies(client) {
                self.model.reply(&reply);
            }
        }
        for agent in 0..AGENTS {
            for msg in self.fleet.agent_messages(agent) {
                self.model.agent_message(&msg);
            }
        }
    }

    /// The store and the writer do everything they owe.
    fn catch_up(&mut self) {
        for _ in 0..10 {
            for op in [Op::Lookups, Op::Batch, Op::Release] {
                self.step(&op);
            }
            let owed = !self.lookups.is_empty() || !self.released.is_empty();
            if !owed && !self.fleet.engine.has_batch() {
                return;
            }
        }
        panic!("the engine never came to rest");
    }

    /// Every agent comes back and runs its runs to completion.
    fn finish_runs(&mut self) {
        for agent in 0..AGENTS {
            if !self.fleet.is_online(agent) {
                self.step(&Op::Connect {
                    agent,
                    max_concurrency: 3,
                    reports: vec![Report::Running],
                    extra: None,
                });
            }
        }
        for _ in 0..FINISH_ROUNDS {
            let runs = self.fleet.engine.runs.values();
            let mut live: Vec<(RunId, RunState)> =
                runs.map(|r| (r.info.id, r.info.state)).collect();
            if live.is_empty() {
                return;
            }
            live.sort_by_key(|(id, _)| *id);
            self.steps += 1;
            self.model.at = format!("step {} (finishing {} runs)", self.steps, live.len());
            for (id, state) in live {
                match state {
                    RunState::Dispatched => self.report(id, Sender::Owner, |l| started(l, id)),
                    RunState::Running => {
                        let completed = RunOutcome::Completed;
                        self.report(id, Sender::Owner, |l| exited(l, id, completed));
                    }
                    _ => {}
                }
            }
            self.settle();
            self.model.check_engine(&self.fleet.engine);
            self.catch_up();
        }
    }
}

fn agent_index(name: &AgentName) -> Option<usize> {
    (0..AGENTS).find(|i| agent_name(*i) == *name)
}

fn run_report(run: RunId, report: Report) -> Option<RunReport> {
    let status = match report {
        Report::Running => RunReportStatus::Running,
        Report::Finished => RunReportStatus::Finished,
        Report::Unknown => RunReportStatus::Unknown,
        Report::Absent => return None,
    };
    Some(RunReport {
        run,
        status,
        input_applied: None,
    })
}
