//! Delivery guarantees on the hub side: acknowledgements to agents, what
//! happens to runs in flight when an agent goes away or the hub restarts, and
//! the sweep that ends runs whose agent never came back or whose time to live
//! ran out.
//!
//! The rules, also in `docs/protocol.md`:
//! - the hub acknowledges (`run.ack`) only what it has stored;
//! - a run in flight whose agent disconnects gets a deadline (`lost_grace_ms`);
//!   if the agent reconnects in time, its `hello.runs` report decides, otherwise
//!   the run ends `lost`;
//! - after a hub restart, runs in flight wait the same way, with the heartbeat
//!   deadline added so agents have time to notice and reconnect;
//! - a queued run past its `expires_ms` ends `expired`.

use std::collections::{BTreeMap, HashMap};

use muster_proto::messages::{RunAck, RunRef, RunReport, RunReportStatus};
use muster_proto::{AgentName, HubToAgent, RunId, RunState, UnixMillis};

use super::{Core, now_ms};

/// A run and the agent it belongs to.
type AgentRun = (AgentName, RunId);

impl Core {
    /// Rebuilds queues after a restart: queued runs are queued again, runs in
    /// flight wait for their agent to reconnect and report.
    pub async fn recover(&self) -> anyhow::Result<()> {
        let wait = self.config.heartbeat_deadline_ms + self.config.lost_grace_ms;
        for mut run in self.store.unfinished_runs().await? {
            if run.state == RunState::Queued {
                self.scheduler
                    .lock()
                    .expect("scheduler lock poisoned")
                    .enqueue(&run.agent, run.id, run.priority)
                    .ok();
                self.active_insert(run, 0, None);
                continue;
            }
            let next_seq = self.store.next_output_seq(run.id).await?;
            run.output_bytes = self.store.output_bytes(run.id).await?;
            self.scheduler
                .lock()
                .expect("scheduler lock poisoned")
                .restore_in_flight(&run.agent, run.id);
            self.active_insert(run, next_seq, Some(now_ms() + wait));
        }
        Ok(())
    }

    /// Gives the runs in flight on a departed agent until `lost_grace_ms` to be reported.
    pub(super) fn agent_left(&self, agent: &AgentName) {
        let in_flight = {
            let mut scheduler = self.scheduler.lock().expect("scheduler lock poisoned");
            scheduler.set_offline(agent);
            scheduler.in_flight(agent)
        };
        let deadline = now_ms() + self.config.lost_grace_ms;
        let mut active = self.active.lock().expect("active lock poisoned");
        for id in in_flight {
            if let Some(run) = active.get_mut(&id) {
                run.lost_at = Some(deadline);
            }
        }
    }

    /// Reconciles the hub's runs in flight on `agent` with the agent's own report.
    pub(super) async fn reconcile(&self, agent: &AgentName, reports: &[RunReport]) {
        let reported: HashMap<RunId, RunReportStatus> =
            reports.iter().map(|r| (r.run, r.status)).collect();
        let in_flight = self
            .scheduler
            .lock()
            .expect("scheduler lock poisoned")
            .in_flight(agent);
        for id in in_flight {
            let state = self.active_get(id).map(|r| r.state);
            match (reported.get(&id), state) {
                (Some(RunReportStatus::Running | RunReportStatus::Finished), _) => self.keep(id),
                (Some(RunReportStatus::Unknown), _) => {
                    self.end_in_flight(
                        agent,
                        id,
                        RunState::Lost,
                        "the agent restarted while the run was in flight",
                    )
                    .await;
                }
                (None, Some(RunState::Dispatched)) => {
                    // The agent never received it; its ledger makes a resend safe.
                    self.keep(id);
                    if let Some(run) = self.active_get(id) {
                        self.send_to_agent(agent, HubToAgent::RunStart(self.run_start(&run)));
                    }
                }
                (None, _) => {
                    self.end_in_flight(
                        agent,
                        id,
                        RunState::Lost,
                        "the agent no longer knows the run",
                    )
                    .await;
                }
            }
        }
        for report in reports {
            let active = self.active_get(report.run).is_some();
            if !active && report.status == RunReportStatus::Running {
                // It already ended here (lost while the agent was away): stop it there too.
                self.send_to_agent(agent, HubToAgent::RunCancel(RunRef { run: report.run }));
            }
        }
    }

    /// Marks late agents stale, ends runs whose agent stayed away too long and
    /// queued runs past their TTL.
    pub async fn sweep(&self) {
        self.check_stale().await;
        self.compact_metrics_if_due().await;
        let now = now_ms();
        let (lost, expired) = self.due(now);
        for (agent, id) in lost {
            if !self.is_online(&agent) {
                self.end_in_flight(
                    &agent,
                    id,
                    RunState::Lost,
                    "the agent did not come back within the grace period",
                )
                .await;
            }
        }
        for (agent, id) in expired {
            let dequeued = self
                .scheduler
                .lock()
                .expect("scheduler lock poisoned")
                .dequeue(&agent, id);
            if dequeued {
                self.finish_unstarted(
                    id,
                    RunState::Expired,
                    "not delivered to the agent within its time to live",
                )
                .await;
                self.publish_positions(&agent).await;
            }
        }
    }

    /// Runs past their lost deadline, and queued runs past their TTL.
    fn due(&self, now: UnixMillis) -> (Vec<AgentRun>, Vec<AgentRun>) {
        let active = self.active.lock().expect("active lock poisoned");
        let mut lost = Vec::new();
        let mut expired = Vec::new();
        for (id, run) in active.iter() {
            let agent = run.info.agent.clone();
            if run.lost_at.is_some_and(|t| t <= now) {
                lost.push((agent, *id));
            } else if run.info.state == RunState::Queued
                && run.info.expires_ms.is_some_and(|t| t <= now)
            {
                expired.push((agent, *id));
            }
        }
        (lost, expired)
    }

    /// Acknowledges stored output: one `run.ack` per run, with its next expected seq.
    pub(super) fn ack_output(&self, agent: &AgentName, runs: impl IntoIterator<Item = RunId>) {
        let acks: BTreeMap<RunId, Option<u64>> = {
            let active = self.active.lock().expect("active lock poisoned");
            runs.into_iter()
                .map(|id| (id, active.get(&id).map(|r| r.next_seq)))
                .collect()
        };
        for (run, next_seq) in acks {
            let ack = match next_seq {
                Some(next_seq) => RunAck {
                    run,
                    next_seq,
                    exited: false,
                },
                // Not active: the run ended here, nothing of it is wanted any more.
                None => RunAck {
                    run,
                    next_seq: 0,
                    exited: true,
                },
            };
            self.send_to_agent(agent, HubToAgent::RunAck(ack));
        }
    }

    /// Acknowledges a stored exit report: the agent can forget the run.
    pub(super) fn ack_exited(&self, agent: &AgentName, run: RunId) {
        self.send_to_agent(
            agent,
            HubToAgent::RunAck(RunAck {
                run,
                next_seq: 0,
                exited: true,
            }),
        );
    }

    fn keep(&self, id: RunId) {
        if let Some(run) = self
            .active
            .lock()
            .expect("active lock poisoned")
            .get_mut(&id)
        {
            run.lost_at = None;
        }
    }

    /// Ends a run in flight and frees its slot.
    async fn end_in_flight(&self, agent: &AgentName, id: RunId, state: RunState, reason: &str) {
        let ended = self
            .transition(agent, id, |run| {
                run.state = state;
                run.error = Some(reason.to_owned());
                run.finished_ms = Some(now_ms());
            })
            .await;
        if ended.is_some() {
            self.scheduler
                .lock()
                .expect("scheduler lock poisoned")
                .finished(agent, id);
        }
    }
}
