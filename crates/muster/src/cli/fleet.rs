//! What `muster top` shows: every agent with its latest resource sample, kept
//! up to date from `agent.status` and `metrics.sample` events, and rendered as
//! one table sorted by name.
//!
//! This is plain state with no I/O, so the rendering and the update rules are
//! tested without a hub; `top` owns the connection and feeds it.

use std::collections::BTreeMap;

use muster_client::MetricsSample;
use muster_proto::{AgentInfo, AgentName};
use serde::Serialize;

use super::agents::status;
use super::output::{self, Table};
use super::units;

/// Column headers of the fleet table.
const HEADERS: [&str; 7] = ["NAME", "STATUS", "CPU%", "MEM", "DISK", "LOAD", "LAST SEEN"];

/// Every agent and its latest sample, by name.
#[derive(Debug, Default)]
pub(crate) struct Fleet {
    rows: BTreeMap<AgentName, Row>,
}

/// One agent in the table; serialized as the `--json` output's elements.
#[derive(Debug, Serialize)]
pub(crate) struct Row {
    /// The agent, as the hub last described it.
    pub(crate) agent: AgentInfo,
    /// Its newest sample, if any has been seen.
    pub(crate) sample: Option<MetricsSample>,
    /// When (local clock) a live sample last arrived: the hub had just heard
    /// from the agent, which its `last_seen_ms` only says at the next status.
    #[serde(skip)]
    heard_ms: Option<u64>,
}

impl Fleet {
    /// A table of these agents, none with a sample yet.
    pub(crate) fn new(agents: Vec<AgentInfo>) -> Self {
        let mut fleet = Self::default();
        for agent in agents {
            fleet.update_agent(agent);
        }
        fleet
    }

    /// The agents' names, sorted.
    pub(crate) fn names(&self) -> impl Iterator<Item = &AgentName> {
        self.rows.keys()
    }

    /// The rows, sorted by name.
    pub(crate) fn rows(&self) -> impl Iterator<Item = &Row> {
        self.rows.values()
    }

    /// Records an agent's new description; returns whether the agent is new.
    pub(crate) fn update_agent(&mut self, agent: AgentInfo) -> bool {
        match self.rows.get_mut(&agent.name) {
            Some(row) => {
                row.agent = agent;
                false
            }
            None => {
                let row = Row {
                    agent,
                    sample: None,
                    heard_ms: None,
                };
                self.rows.insert(row.agent.name.clone(), row);
                true
            }
        }
    }

    /// Forgets an agent; returns whether it was there.
    pub(crate) fn remove(&mut self, name: &AgentName) -> bool {
        self.rows.remove(name).is_some()
    }

    /// Keeps `sample` unless the agent is unknown or a newer sample is shown
    /// (a stored point can arrive after a live one); returns whether it was kept.
    pub(crate) fn update_sample(&mut self, name: &AgentName, sample: MetricsSample) -> bool {
        let Some(row) = self.rows.get_mut(name) else {
            return false;
        };
        if row.sample.as_ref().is_some_and(|s| s.ts_ms > sample.ts_ms) {
            return false;
        }
        row.sample = Some(sample);
        true
    }

    /// Records a sample that just arrived live, at `now_ms` on the local clock.
    pub(crate) fn live_sample(&mut self, name: &AgentName, sample: MetricsSample, now_ms: u64) {
        if self.update_sample(name, sample)
            && let Some(row) = self.rows.get_mut(name)
        {
            row.heard_ms = Some(now_ms);
        }
    }

    /// The table, one row per agent, sorted by name.
    pub(crate) fn render(&self, now_ms: u64) -> String {
        let mut table = Table::new(&HEADERS);
        for row in self.rows.values() {
            table.push(row.cells(now_ms));
        }
        table.render()
    }
}

impl Row {
    /// The row's cells; the sample's columns are `-` without a sample.
    fn cells(&self, now_ms: u64) -> Vec<String> {
        let from_sample =
            |cell: fn(&MetricsSample) -> String| output::or_dash(self.sample.as_ref().map(cell));
        let last_seen = self.agent.last_seen_ms.max(self.heard_ms);
        vec![
            self.agent.name.to_string(),
            status(self.agent.status).to_owned(),
            from_sample(|s| units::percent(s.cpu_percent)),
            from_sample(units::memory),
            from_sample(units::disk),
            from_sample(units::load),
            output::or_dash(last_seen.map(|ms| output::ago(now_ms, ms))),
        ]
    }
}

#[cfg(test)]
mod tests {
    use muster_proto::AgentStatus;
    use muster_proto::messages::DiskUsage;

    use super::*;

    const GIB: u64 = 1024 * 1024 * 1024;

    fn agent(name: &str, status: AgentStatus) -> AgentInfo {
        AgentInfo {
            name: AgentName::new(name).unwrap(),
            status,
            labels: BTreeMap::new(),
            hostname: None,
            os: None,
            arch: None,
            version: None,
            last_seen_ms: Some(7_000),
            connected_since_ms: None,
            max_concurrency: None,
            hub_id: None,
            exec: Default::default(),
            actions: Vec::new(),
            running: 0,
            queued: 0,
        }
    }

    fn sample(ts_ms: u64, cpu_percent: f32) -> MetricsSample {
        MetricsSample {
            ts_ms,
            cpu_percent,
            mem_used_bytes: GIB * 12 / 10,
            mem_total_bytes: GIB * 156 / 10,
            disks: vec![DiskUsage {
                mount: "/".into(),
                used_bytes: 40 * GIB,
                total_bytes: 100 * GIB,
            }],
            load: [0.42, 0.0, 0.0],
            ..MetricsSample::default()
        }
    }

    fn name(name: &str) -> AgentName {
        AgentName::new(name).unwrap()
    }

    fn cells(line: &str) -> Vec<&str> {
        line.split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect()
    }

    #[test]
    fn rows_with_and_without_a_sample() {
        let mut fleet = Fleet::new(vec![
            agent("web-1", AgentStatus::Online),
            agent("db", AgentStatus::Offline),
        ]);
        assert!(fleet.update_sample(&name("web-1"), sample(9_000, 12.5)));
        let text = fleet.render(10_000);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            cells(lines[0]),
            ["NAME", "STATUS", "CPU%", "MEM", "DISK", "LOAD", "LAST SEEN"]
        );
        assert_eq!(
            cells(lines[1]),
            ["db", "offline", "-", "-", "-", "-", "3s ago"]
        );
        assert_eq!(
            cells(lines[2]),
            [
                "web-1",
                "online",
                "12.5",
                "1.2G/15.6G",
                "40.0G/100G",
                "0.42",
                "3s ago"
            ]
        );
    }

    #[test]
    fn never_seen_agents_are_all_dashes() {
        let mut never = agent("new", AgentStatus::Offline);
        never.last_seen_ms = None;
        let text = Fleet::new(vec![never]).render(10_000);
        let row = text.lines().nth(1).unwrap();
        assert_eq!(cells(row), ["new", "offline", "-", "-", "-", "-", "-"]);
    }

    #[test]
    fn older_samples_do_not_replace_newer_ones() {
        let mut fleet = Fleet::new(vec![agent("web-1", AgentStatus::Online)]);
        assert!(fleet.update_sample(&name("web-1"), sample(9_000, 50.0)));
        assert!(!fleet.update_sample(&name("web-1"), sample(8_000, 10.0)));
        assert!(fleet.update_sample(&name("web-1"), sample(9_500, 20.0)));
        let row = fleet.rows().next().unwrap();
        assert_eq!(row.sample.as_ref().unwrap().cpu_percent, 20.0);
        assert!(!fleet.update_sample(&name("ghost"), sample(1, 1.0)));
    }

    #[test]
    fn status_updates_keep_the_sample_and_add_new_agents() {
        let mut fleet = Fleet::new(vec![agent("web-1", AgentStatus::Online)]);
        fleet.update_sample(&name("web-1"), sample(9_000, 50.0));
        assert!(!fleet.update_agent(agent("web-1", AgentStatus::Stale)));
        assert!(fleet.update_agent(agent("api", AgentStatus::Online)));
        let names: Vec<&str> = fleet.names().map(AgentName::as_str).collect();
        assert_eq!(names, ["api", "web-1"]);
        let web = fleet.rows().nth(1).unwrap();
        assert_eq!(web.agent.status, AgentStatus::Stale);
        assert!(web.sample.is_some());
        assert!(fleet.remove(&name("api")));
        assert_eq!(fleet.names().count(), 1);
    }

    #[test]
    fn live_samples_move_last_seen_forward() {
        let mut fleet = Fleet::new(vec![agent("web-1", AgentStatus::Online)]);
        fleet.live_sample(&name("web-1"), sample(9_000, 1.0), 60_000);
        let text = fleet.render(61_000);
        assert!(text.lines().nth(1).unwrap().ends_with("1s ago"), "{text}");
    }

    #[test]
    fn json_rows_hold_the_agent_and_the_sample_or_null() {
        let mut fleet = Fleet::new(vec![
            agent("a", AgentStatus::Online),
            agent("b", AgentStatus::Online),
        ]);
        fleet.live_sample(&name("b"), sample(9_000, 1.0), 10_000);
        let rows: Vec<&Row> = fleet.rows().collect();
        let value = serde_json::to_value(&rows).unwrap();
        assert_eq!(value[0]["agent"]["name"], "a");
        assert!(value[0]["sample"].is_null());
        assert_eq!(value[1]["sample"]["ts_ms"], 9_000);
        assert_eq!(value[1].as_object().unwrap().len(), 2);
    }
}
