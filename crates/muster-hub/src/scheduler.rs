//! Per-agent run queues: priority order, FIFO within a priority, and a
//! concurrency limit per agent.
//!
//! Sessions are never queued and take no slot: they are admitted at once,
//! up to their own per-agent limit, and counted apart.
//!
//! Plain data driven by method calls; it knows nothing of sockets or storage.
//! The engine owns it (one task, no lock) and acts on what [`Scheduler::take_ready`]
//! returns.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap, HashSet};

use muster_proto::{AgentName, RunId};

/// Queue order key: higher priority first, then arrival order.
type QueueKey = (Reverse<i32>, u64, RunId);

#[derive(Debug, Default)]
struct AgentQueue {
    waiting: BTreeSet<QueueKey>,
    keys: HashMap<RunId, QueueKey>,
    active: HashSet<RunId>,
    /// Concurrency limit while online; `None` while offline (nothing is dispatched).
    limit: Option<u32>,
}

/// The queues of every agent.
#[derive(Debug)]
pub struct Scheduler {
    agents: HashMap<AgentName, AgentQueue>,
    /// Sessions in flight, in flight like a queue's active runs but without
    /// a slot; apart from the queues, as few agents have any (every queue
    /// pays for each of its fields, 15,000 of them in a large fleet).
    sessions: HashMap<AgentName, HashSet<RunId>>,
    arrivals: u64,
    max_queue: usize,
}

/// The queue is at capacity.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("queue is full ({0} runs waiting)")]
pub struct QueueFull(pub usize);

impl Scheduler {
    /// Empty queues holding at most `max_queue` waiting runs per agent.
    pub fn new(max_queue: usize) -> Self {
        Self {
            agents: HashMap::new(),
            sessions: HashMap::new(),
            arrivals: 0,
            max_queue,
        }
    }

    /// Adds a run to its agent's queue.
    pub fn enqueue(
        &mut self,
        agent: &AgentName,
        run: RunId,
        priority: i32,
    ) -> Result<(), QueueFull> {
        let queue = self.agents.entry(agent.clone()).or_default();
        if queue.waiting.len() >= self.max_queue {
            return Err(QueueFull(queue.waiting.len()));
        }
        self.arrivals += 1;
        let key = (Reverse(priority), self.arrivals, run);
        queue.waiting.insert(key);
        queue.keys.insert(run, key);
        Ok(())
    }

    /// Puts a run back in its agent's queue after a restart, even past the bound.
    pub fn restore_queued(&mut self, agent: &AgentName, run: RunId, priority: i32) {
        let queue = self.agents.entry(agent.clone()).or_default();
        self.arrivals += 1;
        let key = (Reverse(priority), self.arrivals, run);
        queue.waiting.insert(key);
        queue.keys.insert(run, key);
    }

    /// Marks an agent online with its concurrency limit (at least 1).
    pub fn set_online(&mut self, agent: &AgentName, limit: u32) {
        self.agents.entry(agent.clone()).or_default().limit = Some(limit.max(1));
    }

    /// Marks an agent offline: nothing more is dispatched to it. Its runs in
    /// flight keep their slots until they are [`Scheduler::finished`].
    pub fn set_offline(&mut self, agent: &AgentName) {
        if let Some(queue) = self.agents.get_mut(agent) {
            queue.limit = None;
        }
    }

    /// Runs in flight on an agent, sessions included.
    pub fn in_flight(&self, agent: &AgentName) -> Vec<RunId> {
        let active = self.agents.get(agent).into_iter().flat_map(|q| &q.active);
        let sessions = self.sessions.get(agent).into_iter().flatten();
        active.chain(sessions).copied().collect()
    }

    /// Counts a session as in flight on `agent`, without a slot.
    pub fn admit_session(&mut self, agent: &AgentName, run: RunId) {
        self.sessions.entry(agent.clone()).or_default().insert(run);
    }

    /// Sessions in flight on `agent`.
    pub fn sessions(&self, agent: &AgentName) -> usize {
        self.sessions.get(agent).map_or(0, HashSet::len)
    }

    /// Runs waiting on an agent, in queue order.
    pub fn waiting(&self, agent: &AgentName) -> Vec<RunId> {
        self.agents
            .get(agent)
            .map(|q| q.waiting.iter().map(|key| key.2).collect())
            .unwrap_or_default()
    }

    /// Counts a run as in flight without dispatching it (recovery after a restart).
    pub fn restore_in_flight(&mut self, agent: &AgentName, run: RunId) {
        self.agents
            .entry(agent.clone())
            .or_default()
            .active
            .insert(run);
    }

    /// Pops the runs that may start now, in order, and counts them as in flight.
    pub fn take_ready(&mut self, agent: &AgentName) -> Vec<RunId> {
        let Some(queue) = self.agents.get_mut(agent) else {
            return Vec::new();
        };
        let Some(limit) = queue.limit else {
            return Vec::new();
        };
        let mut ready = Vec::new();
        while (queue.active.len() as u32) < limit {
            let Some(key) = queue.waiting.pop_first() else {
                break;
            };
            queue.keys.remove(&key.2);
            queue.active.insert(key.2);
            ready.push(key.2);
        }
        ready
    }

    /// A run in flight ended; its slot frees up.
    pub fn finished(&mut self, agent: &AgentName, run: RunId) {
        if let Some(queue) = self.agents.get_mut(agent) {
            queue.active.remove(&run);
        }
        if let Some(sessions) = self.sessions.get_mut(agent)
            && sessions.remove(&run)
            && sessions.is_empty()
        {
            self.sessions.remove(agent);
        }
    }

    /// Removes a waiting run; false if it was not waiting.
    pub fn dequeue(&mut self, agent: &AgentName, run: RunId) -> bool {
        let Some(queue) = self.agents.get_mut(agent) else {
            return false;
        };
        match queue.keys.remove(&run) {
            Some(key) => queue.waiting.remove(&key),
            None => false,
        }
    }

    /// Waiting runs with their 1-based positions.
    pub fn positions(&self, agent: &AgentName) -> Vec<(RunId, u32)> {
        self.agents
            .get(agent)
            .map(|queue| {
                queue
                    .waiting
                    .iter()
                    .enumerate()
                    .map(|(i, key)| (key.2, i as u32 + 1))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Runs waiting and in flight for an agent.
    pub fn counts(&self, agent: &AgentName) -> (u32, u32) {
        self.agents
            .get(agent)
            .map(|q| (q.waiting.len() as u32, q.active.len() as u32))
            .unwrap_or((0, 0))
    }

    /// Forgets an agent's queue entirely, returning its waiting runs.
    pub fn remove_agent(&mut self, agent: &AgentName) -> Vec<RunId> {
        self.sessions.remove(agent);
        self.agents
            .remove(agent)
            .map(|q| q.waiting.into_iter().map(|key| key.2).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent() -> AgentName {
        AgentName::new("a").unwrap()
    }

    #[test]
    fn dispatches_by_priority_then_arrival_within_the_limit() {
        let mut s = Scheduler::new(10);
        let (low, high, mid, high2) = (
            RunId::generate(),
            RunId::generate(),
            RunId::generate(),
            RunId::generate(),
        );
        s.enqueue(&agent(), low, -5).unwrap();
        s.enqueue(&agent(), high, 10).unwrap();
        s.enqueue(&agent(), mid, 0).unwrap();
        s.enqueue(&agent(), high2, 10).unwrap();
        assert!(
            s.take_ready(&agent()).is_empty(),
            "offline agents get nothing"
        );
        s.set_online(&agent(), 1);
        assert_eq!(s.take_ready(&agent()), vec![high]);
        assert!(s.take_ready(&agent()).is_empty(), "limit reached");
        assert_eq!(s.positions(&agent()), vec![(high2, 1), (mid, 2), (low, 3)]);
        s.finished(&agent(), high);
        assert_eq!(s.take_ready(&agent()), vec![high2]);
        s.finished(&agent(), high2);
        assert_eq!(s.take_ready(&agent()), vec![mid]);
    }

    #[test]
    fn queue_capacity_is_enforced() {
        let mut s = Scheduler::new(1);
        s.enqueue(&agent(), RunId::generate(), 0).unwrap();
        assert_eq!(s.enqueue(&agent(), RunId::generate(), 0), Err(QueueFull(1)));
    }

    #[test]
    fn dequeue_and_offline_release_runs() {
        let mut s = Scheduler::new(10);
        let (a, b) = (RunId::generate(), RunId::generate());
        s.enqueue(&agent(), a, 0).unwrap();
        s.enqueue(&agent(), b, 0).unwrap();
        assert!(s.dequeue(&agent(), b));
        assert!(!s.dequeue(&agent(), b));
        s.set_online(&agent(), 2);
        assert_eq!(s.take_ready(&agent()), vec![a]);
        s.set_offline(&agent());
        assert_eq!(s.in_flight(&agent()), vec![a], "in flight until finished");
        s.finished(&agent(), a);
        assert_eq!(s.counts(&agent()), (0, 0));
    }

    #[test]
    fn sessions_are_in_flight_without_taking_a_slot() {
        let mut s = Scheduler::new(10);
        let a = AgentName::new("a").unwrap();
        s.set_online(&a, 1);
        let (session, run, next) = (RunId::generate(), RunId::generate(), RunId::generate());
        s.admit_session(&a, session);
        s.enqueue(&a, run, 0).unwrap();
        s.enqueue(&a, next, 0).unwrap();
        assert_eq!(s.take_ready(&a), vec![run], "the session took no slot");
        let mut in_flight = s.in_flight(&a);
        in_flight.sort();
        let mut expected = vec![session, run];
        expected.sort();
        assert_eq!(in_flight, expected);
        assert_eq!(s.sessions(&a), 1);
        s.finished(&a, session);
        assert_eq!((s.sessions(&a), s.in_flight(&a)), (0, vec![run]));
        assert!(
            s.take_ready(&a).is_empty(),
            "ending a session frees no slot"
        );
    }
}
