//! What the engine promised, checked as its batches come out: the store a
//! writer holds after committing them, each run's path through the
//! lifecycle table as its `run.status` events tell it, the answers every
//! request and every agent got, and the engine's own bookkeeping.

use std::collections::{BTreeSet, HashMap, HashSet};

use muster_proto::{Channel, ErrorCode, HubToAgent, HubToClient, RunId, RunInfo, RunState};

use super::fleet::{AGENTS, agent_name};
use crate::engine::{Batch, Effect, Engine, Reply};
use crate::store::{Change, UnfinishedRun};

/// A request waiting for its answer.
#[derive(Debug)]
pub(super) enum Asked {
    /// `run.create` for run `id` by API key `owner`.
    Create {
        owner: String,
        key: Option<String>,
        id: RunId,
        /// Whether its agent is registered.
        known_agent: bool,
        /// Whether the request itself is valid.
        valid: bool,
    },
    /// `run.cancel`.
    Cancel,
}

/// See the module documentation.
#[derive(Default)]
pub(super) struct Model {
    /// The operation being checked, for the failure message.
    pub(super) at: String,
    /// The runs the store holds.
    store: HashMap<RunId, RunInfo>,
    /// Each run's state, as its `run.status` events told it.
    states: HashMap<RunId, RunState>,
    /// Terminal `run.status` events per run.
    terminal: HashMap<RunId, u32>,
    /// The seq after each run's last stored chunk.
    stored_next: HashMap<RunId, u64>,
    /// The run each (API key name, idempotency key) created.
    keys: HashMap<(String, String), RunId>,
    /// Requests not answered yet, by request id.
    open: HashMap<String, Asked>,
    /// Runs inserted by a batch (recovered ones are not).
    inserted: HashSet<RunId>,
    /// Runs a `run.accepted` with `created: true` announced.
    announced: HashSet<RunId>,
}

impl Model {
    /// The model of a store that holds `recovered`.
    pub(super) fn new(recovered: &[UnfinishedRun]) -> Self {
        let mut model = Self::default();
        for stored in recovered {
            let id = stored.run.id;
            model.states.insert(id, stored.run.state);
            model.stored_next.insert(id, stored.next_seq);
            model.store.insert(id, stored.run.clone());
        }
        model
    }

    /// The run the store holds under an idempotency key.
    pub(super) fn run_of_key(&self, owner: &str, key: &str) -> Option<RunInfo> {
        let id = self.keys.get(&(owner.to_owned(), key.to_owned()))?;
        Some(self.store[id].clone())
    }

    /// A request was sent under `re`.
    pub(super) fn asked(&mut self, re: &str, asked: Asked) {
        self.open.insert(re.to_owned(), asked);
    }

    /// Commits a batch, in one transaction as the store does (a run's
    /// output may come before its insert), then looks at its effects in order.
    pub(super) fn commit(&mut self, batch: &Batch) {
        let mut created = Vec::new();
        for change in &batch.changes {
            if let Change::InsertRun(run) = change {
                self.insert(run);
                created.push(run.id);
            }
        }
        let mut stored = Vec::new();
        for change in &batch.changes {
            match change {
                Change::UpdateRun(update) => {
                    let run = self.store.get_mut(&update.id);
                    update.apply(run.expect("an update of a run never inserted"));
                }
                Change::AppendOutput(id, chunk) => {
                    self.append(*id, chunk.seq);
                    stored.push((*id, chunk.seq));
                }
                _ => {}
            }
        }
        // Runs of this batch not yet announced, at each point of its effects.
        let mut unborn: HashSet<RunId> = created.into_iter().collect();
        let mut published = Vec::new();
        for effect in &batch.effects {
            match effect {
                Effect::Reply(_, reply) => {
                    if let HubToClient::RunAccepted(accepted) = &reply.msg {
                        unborn.remove(&accepted.run.id);
                    }
                }
                Effect::Event {
                    channel: Channel::Run(id),
                    msg,
                    last,
                } => {
                    if let HubToClient::RunStatus(status) = &**msg {
                        let at = &self.at;
                        assert!(!unborn.contains(id), "{at}: {id} moved before run.accepted");
                        self.status(*id, status.run.state, *last);
                    }
                }
                // A report of a run not announced yet is answered so too.
                Effect::ToAgent(_, HubToAgent::RunAck(ack))
                    if ack.exited && !unborn.contains(&ack.run) =>
                {
                    self.forgotten(ack.run);
                }
                Effect::Raw(delivery) => {
                    let Ok(Channel::Run(id)) = delivery.channel.parse() else {
                        continue;
                    };
                    let state = self.states.get(&id);
                    let at = &self.at;
                    assert_eq!(state, Some(&RunState::Running), "{at}: output of {id}");
                    published.push((id, delivery.seq.expect("output frames have a seq")));
                }
                _ => {}
            }
        }
        let at = &self.at;
        assert_eq!(
            stored, published,
            "{at}: frames stored and published differ"
        );
        assert_eq!(
            batch.frames,
            stored.len(),
            "{at}: the batch miscounts its frames"
        );
        for (id, run) in &self.store {
            let told = self.states[id];
            assert_eq!(
                run.state, told,
                "{at}: run {id} is stored {} but told {told}",
                run.state
            );
        }
    }

    /// The agent is told to forget run `id`: it must have ended by now.
    fn forgotten(&self, id: RunId) {
        if let Some(state) = self.states.get(&id) {
            let at = &self.at;
            assert!(state.is_terminal(), "{at}: {id} forgotten while {state}");
        }
    }

    fn insert(&mut self, run: &RunInfo) {
        let (id, at) = (run.id, &self.at);
        assert!(
            !self.store.contains_key(&id),
            "{at}: run {id} inserted twice"
        );
        if let (Some(owner), Some(key)) = (&run.requested_by, &run.idempotency_key) {
            let first = self.keys.insert((owner.clone(), key.clone()), id);
            assert_eq!(
                first, None,
                "{at}: key {owner}/{key} created a second run {id}"
            );
        }
        self.inserted.insert(id);
        self.states.insert(id, RunState::Queued);
        self.store.insert(id, run.clone());
    }

    fn append(&mut self, id: RunId, seq: u64) {
        let at = &self.at;
        assert!(
            self.store.contains_key(&id),
            "{at}: output of run {id} never inserted"
        );
        let next = self.stored_next.entry(id).or_default();
        assert_eq!(
            seq, *next,
            "{at}: run {id} stored frame {seq} where {next} was due"
        );
        *next = seq.checked_add(1).expect("a frame stored at seq u64::MAX");
    }

    fn status(&mut self, id: RunId, to: RunState, last: bool) {
        let at = &self.at;
        let from = *self
            .states
            .get(&id)
            .unwrap_or_else(|| panic!("{at}: run.status of run {id}, never created"));
        assert!(
            !from.is_terminal(),
            "{at}: run {id} went on from {from} to {to}"
        );
        assert!(allowed(from, to), "{at}: run {id} went from {from} to {to}");
        assert_eq!(last, to.is_terminal(), "{at}: run {id}: `last` on {to}");
        if to.is_terminal() {
            *self.terminal.entry(id).or_default() += 1;
        }
        self.states.insert(id, to);
    }

    /// A client got `reply`.
    pub(super) fn reply(&mut self, reply: &Reply) {
        let re = &reply.re.as_ref().expect("every request had an id").0;
        let at = &self.at;
        let asked = self.open.remove(re);
        let asked = asked.unwrap_or_else(|| panic!("{at}: {re} answered twice: {reply:?}"));
        let Asked::Create {
            owner,
            key,
            id,
            known_agent,
            valid,
        } = asked
        else {
            return;
        };
        match &reply.msg {
            HubToClient::RunAccepted(accepted) if accepted.created => {
                assert_eq!(accepted.run.id, id, "{at}: {re} created another id");
                assert!(
                    known_agent && valid,
                    "{at}: {re} created a run it should refuse"
                );
                assert!(
                    self.inserted.contains(&id),
                    "{at}: {re} announced {id}, not stored"
                );
                assert!(self.announced.insert(id), "{at}: {id} announced twice");
            }
            HubToClient::RunAccepted(accepted) => {
                let key = key.unwrap_or_else(|| panic!("{at}: {re} found a run without a key"));
                let first = self.keys.get(&(owner.clone(), key.clone()));
                assert_eq!(
                    first,
                    Some(&accepted.run.id),
                    "{at}: {re} found another run"
                );
                assert_eq!(accepted.run.idempotency_key.as_ref(), Some(&key));
                assert_eq!(accepted.run.requested_by.as_ref(), Some(&owner));
            }
            HubToClient::Error(error) if valid && !known_agent => {
                assert_eq!(error.code, ErrorCode::AgentNotFound, "{at}: {re}");
            }
            HubToClient::Error(_) => {}
            other => panic!("{at}: {re} was answered {other:?}"),
        }
    }

    /// The store answers request `re` (a read the engine handed out).
    pub(super) fn answered_by_store(&mut self, re: &str) {
        let at = &self.at;
        assert!(self.open.remove(re).is_some(), "{at}: {re} answered twice");
    }

    /// An agent got `msg`.
    pub(super) fn agent_message(&self, msg: &HubToAgent) {
        let at = &self.at;
        match msg {
            // Checked in the order of the batch's effects.
            HubToAgent::RunAck(ack) if ack.exited => {}
            HubToAgent::RunAck(ack) => {
                let stored = self.stored_next.get(&ack.run).copied().unwrap_or(0);
                let truncated = self.store.get(&ack.run).is_some_and(|r| r.output_truncated);
                let (run, next) = (ack.run, ack.next_seq);
                let honest = next <= stored || truncated;
                assert!(
                    honest,
                    "{at}: {run} acked up to {next}, stored up to {stored}"
                );
            }
            HubToAgent::RunStart(start) => {
                assert!(
                    self.states.contains_key(&start.run),
                    "{at}: started a stranger"
                );
            }
            _ => {}
        }
    }

    /// What the engine holds now agrees with itself: each run waits in its
    /// agent's queue or holds one of its slots, as its state says, and no
    /// run waits while its agent is online with a slot free.
    pub(super) fn check_engine(&self, engine: &Engine) {
        let at = &self.at;
        for agent in (0..AGENTS).map(agent_name) {
            let runs = || engine.runs.values().filter(|r| r.info.agent == agent);
            let queued: BTreeSet<RunId> = runs()
                .filter(|r| r.info.state == RunState::Queued)
                .map(|r| r.info.id)
                .collect();
            let flying: BTreeSet<RunId> = runs()
                .filter(|r| matches!(r.info.state, RunState::Dispatched | RunState::Running))
                .map(|r| r.info.id)
                .collect();
            let positions = engine.scheduler.positions(&agent);
            let waiting: BTreeSet<RunId> = positions.iter().map(|(id, _)| *id).collect();
            let slots: BTreeSet<RunId> = engine.scheduler.in_flight(&agent).into_iter().collect();
            assert_eq!(waiting, queued, "{at}: queue of {agent} vs its queued runs");
            assert_eq!(
                slots, flying,
                "{at}: slots of {agent} vs its runs in flight"
            );
            let facts = engine.registry.get(&agent).and_then(|r| r.facts.as_ref());
            if let (Some(_), Some(facts)) = (engine.presence.get(&agent), facts) {
                let limit = facts.max_concurrency as usize;
                let free = slots.len() < limit;
                assert!(
                    !free || waiting.is_empty(),
                    "{at}: {agent} is online with {} of {limit} slots taken, yet {waiting:?} wait",
                    slots.len()
                );
            }
        }
        for id in engine.runs.keys() {
            assert!(
                !engine.ended.contains_key(id),
                "{at}: {id} is active and ended"
            );
            assert!(
                !self.terminal.contains_key(id),
                "{at}: {id} is active after its end"
            );
        }
    }

    /// Right after a batch: every run the engine holds is stored as it is.
    pub(super) fn check_committed(&self, engine: &Engine) {
        let at = &self.at;
        assert!(
            engine.ended.is_empty(),
            "{at}: ended runs outlive their batch"
        );
        for (id, run) in &engine.runs {
            let stored = self.store.get(id).map(|r| r.state);
            assert_eq!(
                stored,
                Some(run.info.state),
                "{at}: run {id} as held vs stored"
            );
        }
    }

    /// Once everything settled: every run ended exactly once, every request
    /// was answered, and every run a `run.accepted` announced was stored.
    pub(super) fn check_quiescent(&self, engine: &Engine) {
        let at = &self.at;
        let active: Vec<_> = engine
            .runs
            .values()
            .map(|r| (r.info.id, r.info.state))
            .collect();
        assert!(active.is_empty(), "{at}: runs never ended: {active:?}");
        for (id, state) in &self.states {
            let ends = self.terminal.get(id).copied().unwrap_or(0);
            assert_eq!(ends, 1, "{at}: run {id} ({state}) ended {ends} times");
        }
        assert!(
            self.open.is_empty(),
            "{at}: never answered: {:?}",
            self.open
        );
        assert_eq!(
            self.inserted, self.announced,
            "{at}: stored vs announced runs"
        );
        for agent in (0..AGENTS).map(agent_name) {
            assert_eq!(engine.scheduler.counts(&agent), (0, 0), "{at}: {agent}");
        }
    }
}

/// The moves of protocol.md §7.1, written out again here rather than
/// taken from `lifecycle`, so that a wrong table there is caught.
fn allowed(from: RunState, to: RunState) -> bool {
    use RunState::*;
    match from {
        Queued => matches!(to, Dispatched | Cancelled | Expired),
        Dispatched => matches!(to, Running | Failed | Rejected | Cancelled | Lost),
        Running => matches!(to, Completed | TimedOut | Cancelled | Lost),
        _ => false,
    }
}
