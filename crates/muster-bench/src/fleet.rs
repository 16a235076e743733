//! Fleets of raw sim agents for the idle, storm and job scenarios: their
//! registration, their connections as swarm members, and the presence check
//! that compares the hub's paged agent list with the fleet.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use muster_proto::{AgentName, AgentStatus};
use serde::Serialize;
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;

use crate::control::Control;
use crate::net::{HubAddr, Socket};
use crate::raw::{self, Ended, Identity, RunTally};
use crate::registry;
use crate::swarm::Member;

/// Runs each sim agent announces it executes at once; a job gives each
/// target one run per step.
const AGENT_MAX_CONCURRENCY: u32 = 4;

/// Interval between paged `agent.list` checks while waiting for the hub to
/// show every agent online.
const PRESENCE_POLL: Duration = Duration::from_millis(250);

/// A scenario's registered agents.
pub(crate) struct Fleet {
    /// Their identities, in name order.
    pub(crate) identities: Arc<[Identity]>,
    /// Their labels: the sim label and `bench=<scenario>`.
    pub(crate) labels: Arc<BTreeMap<String, String>>,
    /// The selector that matches them, and nothing else once pruned.
    pub(crate) selector: String,
    /// Removing stale agents and registering these.
    pub(crate) registered_s: f64,
}

impl Fleet {
    /// Registers `count` agents named `<base>-<scenario>-NNNNN` with the labels
    /// of `scenario`, after removing the other sim agents of that scenario.
    pub(crate) async fn register(
        control: &Control,
        base: &AgentName,
        scenario: &str,
        count: usize,
    ) -> anyhow::Result<Self> {
        let started = Instant::now();
        let base = AgentName::new(format!("{base}-{scenario}"))
            .with_context(|| format!("--agent-name {base} is too long"))?;
        let names = registry::agent_names(&base, count)?;
        let selector = registry::scenario_selector(scenario);
        let labels = registry::scenario_labels(scenario);
        let pruned = registry::prune(control, &selector, &names).await?;
        if pruned > 0 {
            tracing::info!("removed {pruned} stale sim agents matching {selector}");
        }
        let identities = registry::register_all(control, &names, &labels).await?;
        Ok(Self {
            identities: identities.into(),
            labels: Arc::new(labels),
            selector,
            registered_s: started.elapsed().as_secs_f64(),
        })
    }

    /// The agents' names.
    pub(crate) fn names(&self) -> Vec<AgentName> {
        self.identities.iter().map(|id| id.name.clone()).collect()
    }

    /// Polls the hub's paged list until it shows every agent online, at most
    /// `limit`; the last [`Presence`] either way.
    pub(crate) async fn await_online(
        &self,
        control: &Control,
        limit: Duration,
    ) -> anyhow::Result<Presence> {
        let deadline = Instant::now() + limit;
        let names = self.names();
        loop {
            let presence = Presence::check(control, &self.selector, &names).await?;
            if presence.exact || Instant::now() >= deadline {
                return Ok(presence);
            }
            sleep(PRESENCE_POLL).await;
        }
    }
}

/// What the agents of a fleet do once connected.
#[derive(Clone)]
pub(crate) enum AgentMode {
    /// Answer heartbeats only.
    Idle,
    /// Complete every run at once after `payload` of output.
    Runs {
        /// Output of each run; empty for none.
        payload: Bytes,
        /// Runs served and acknowledged, across the fleet.
        tally: Arc<RunTally>,
    },
}

/// A fleet's agents as swarm members: agent `i` connects from the `i`-th
/// source address.
pub(crate) struct AgentMember {
    /// The hub.
    pub(crate) hub: HubAddr,
    /// The fleet.
    pub(crate) identities: Arc<[Identity]>,
    /// Labels announced in `hello`.
    pub(crate) labels: Arc<BTreeMap<String, String>>,
    /// What the agents do.
    pub(crate) mode: AgentMode,
}

#[async_trait::async_trait]
impl Member for AgentMember {
    async fn connect(&self, index: usize) -> anyhow::Result<Socket> {
        let identity = &self.identities[index];
        raw::connect_agent(
            &self.hub,
            identity,
            &self.labels,
            AGENT_MAX_CONCURRENCY,
            self.hub.source(index),
        )
        .await
        .with_context(|| format!("agent {}", identity.name))
    }

    async fn serve(&self, _index: usize, socket: Socket, stop: CancellationToken) -> Ended {
        match &self.mode {
            AgentMode::Idle => raw::idle(socket, stop, true).await,
            AgentMode::Runs { payload, tally } => {
                raw::serve_runs(socket, stop, payload.clone(), tally).await
            }
        }
    }
}

/// The hub's paged agent list compared with a fleet.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct Presence {
    /// Entries the list returned for the fleet's selector.
    pub(crate) listed: usize,
    /// Fleet agents listed `online`.
    pub(crate) online: usize,
    /// Fleet agents listed, but not `online`.
    pub(crate) not_online: usize,
    /// Fleet agents not listed.
    pub(crate) missing: usize,
    /// Entries listed more than once.
    pub(crate) duplicates: usize,
    /// Listed agents that are not in the fleet.
    pub(crate) foreign: usize,
    /// Every fleet agent listed once, online, and nothing else.
    pub(crate) exact: bool,
}

impl Presence {
    /// Lists `selector` page by page and compares it with `names`.
    pub(crate) async fn check(
        control: &Control,
        selector: &str,
        names: &[AgentName],
    ) -> anyhow::Result<Self> {
        let agents = registry::list_agents(control, selector).await?;
        let listed: Vec<(AgentName, AgentStatus)> =
            agents.into_iter().map(|a| (a.name, a.status)).collect();
        Ok(Self::compare(&listed, names))
    }

    /// Compares the listed `(name, status)` pairs with the fleet's `names`.
    fn compare(listed: &[(AgentName, AgentStatus)], names: &[AgentName]) -> Self {
        let fleet: HashSet<&AgentName> = names.iter().collect();
        let mut seen = HashSet::new();
        let mut presence = Self {
            listed: listed.len(),
            ..Self::default()
        };
        for (name, status) in listed {
            if !seen.insert(name) {
                presence.duplicates += 1;
            } else if !fleet.contains(name) {
                presence.foreign += 1;
            } else if *status == AgentStatus::Online {
                presence.online += 1;
            } else {
                presence.not_online += 1;
            }
        }
        presence.missing = fleet.iter().filter(|name| !seen.contains(*name)).count();
        presence.exact = presence.online == names.len()
            && presence.listed == names.len()
            && presence.duplicates == 0
            && presence.foreign == 0;
        presence
    }

    /// "14998/15000 online, 2 missing".
    pub(crate) fn describe(&self, of: usize) -> String {
        let mut text = format!("{}/{of} online", self.online);
        for (count, what) in [
            (self.not_online, "listed but not online"),
            (self.missing, "missing"),
            (self.duplicates, "duplicated"),
            (self.foreign, "not ours"),
        ] {
            if count > 0 {
                text.push_str(&format!(", {count} {what}"));
            }
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: &str) -> AgentName {
        AgentName::new(n).unwrap()
    }

    #[test]
    fn presence_is_exact_only_when_every_agent_is_online_once() {
        let names = [name("a"), name("b"), name("c")];
        let all_online: Vec<_> = names
            .iter()
            .map(|n| (n.clone(), AgentStatus::Online))
            .collect();
        let presence = Presence::compare(&all_online, &names);
        assert!(presence.exact, "{presence:?}");
        assert_eq!(presence.describe(3), "3/3 online");

        let mut listed = all_online.clone();
        listed[1].1 = AgentStatus::Offline;
        listed.push((name("a"), AgentStatus::Online));
        listed.push((name("z"), AgentStatus::Online));
        listed.remove(2);
        let presence = Presence::compare(&listed, &names);
        assert!(!presence.exact);
        assert_eq!(
            (presence.online, presence.not_online, presence.missing),
            (1, 1, 1)
        );
        assert_eq!((presence.duplicates, presence.foreign), (1, 1));
        assert_eq!(
            presence.describe(3),
            "1/3 online, 1 listed but not online, 1 missing, 1 duplicated, 1 not ours"
        );
    }
}
