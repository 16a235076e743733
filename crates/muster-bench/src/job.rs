//! The job scenario: one job fanned out over many simulated agents.
//!
//! The bench registers N sim agents labelled `sim=true,bench=job`, runs them
//! in this process, waits until the hub sees all of them online, then creates
//! one job over the selector [`SELECTOR`] with a single step that the sim
//! executor completes at once, subscribed to `job:<id>` from its start. Three
//! times are measured from sending `job.create`: to `job.accepted`, to the
//! first `job.step.completed`, and to the final `job.progress` (the one with a
//! terminal state). Then the job as the hub stored it must hold exactly the N
//! agents, each `succeeded` with one step that exited 0, and the live events
//! must have been numbered without gaps and covered every agent.
//!
//! The whole scenario, setup included, is bounded by the plan's timeout; the
//! agents are stopped whatever happened.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use muster_client::{Client, Event};
use muster_proto::jobs::{BatchSize, JobInfo, JobSpec, JobState, StepSpec, TargetState};
use muster_proto::messages::JobProgressEvent;
use muster_proto::types::CommandSpec;
use muster_proto::{AgentName, HubToClient, JobId, RunState};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

use crate::report::JobReport;
use crate::sim::{NOOP_PROGRAM, Pattern, SimExecutor};
use crate::sim_agent::{SIM_LABEL, is_sim};
use crate::sim_fleet::SimFleet;
use crate::stats::millis;

/// The label that marks the job scenario's agents, besides `sim=true`.
const JOB_LABEL: (&str, &str) = ("bench", "job");

/// The job's selector: every agent with [`JOB_LABEL`].
pub(crate) const SELECTOR: &str = "bench=job";

/// Name of the job and of its one step.
const JOB_NAME: &str = "bench-job";

/// Problems listed before the rest are summarized.
const MAX_PROBLEMS: usize = 10;

/// What the job scenario does.
#[derive(Clone, Debug)]
pub(crate) struct JobPlan {
    /// Sim agents, hence targets.
    pub(crate) agents: u32,
    /// Output bytes the step writes on each agent.
    pub(crate) command_bytes: usize,
    /// Targets in progress at once; all at once when absent.
    pub(crate) batch: Option<BatchSize>,
    /// Bound on the whole scenario, setup included.
    pub(crate) timeout: Duration,
}

/// The agent names of the scenario: `<base>-0000`, `<base>-0001`, …
pub(crate) fn agent_names(base: &AgentName, count: u32) -> anyhow::Result<Vec<AgentName>> {
    (0..count)
        .map(|i| {
            let name = format!("{base}-{i:04}");
            AgentName::new(name.clone()).map_err(|_| {
                anyhow!("--agent-name {base} is too long: {name} is not a valid agent name")
            })
        })
        .collect()
}

/// Runs the scenario with `names` as the agents; `control` registers them.
pub(crate) async fn run(
    control: &Client,
    hub_url: &str,
    token: &str,
    names: &[AgentName],
    plan: &JobPlan,
) -> anyhow::Result<JobReport> {
    let mut fleet = SimFleet::new();
    let mut stage = Stage::Registering;
    let scenario = Scenario {
        control,
        hub_url,
        token,
        names,
        plan,
    };
    let outcome = timeout(plan.timeout, scenario.run(&mut fleet, &mut stage)).await;
    if let (Stage::Following { job, .. }, false) = (stage, matches!(outcome, Ok(Ok(_)))) {
        // Leave no job behind waiting for agents that are about to stop.
        if let Err(e) = control.cancel_job(job).await {
            tracing::warn!("cannot cancel the unfinished job {job}: {e}");
        }
    }
    fleet.stop().await;
    outcome.map_err(|_| {
        anyhow!(
            "the job scenario did not finish within {} ({stage}); failing",
            humantime::format_duration(plan.timeout)
        )
    })?
}

/// How far the scenario got, for the message when it times out.
#[derive(Clone, Copy, Debug)]
enum Stage {
    Registering,
    ComingOnline { online: usize, of: usize },
    Creating,
    Following { job: JobId, results: u64, of: usize },
    Checking,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Registering => f.write_str("while registering the sim agents"),
            Self::ComingOnline { online, of } => {
                write!(
                    f,
                    "while waiting for the sim agents: {online} of {of} online"
                )
            }
            Self::Creating => f.write_str("while creating the job"),
            Self::Following { job, results, of } => write!(
                f,
                "while waiting for job {job} to end: {results} of {of} results counted; \
                 asked the hub to cancel it"
            ),
            Self::Checking => f.write_str("while reading the finished job"),
        }
    }
}

/// What the scenario works with.
struct Scenario<'a> {
    control: &'a Client,
    hub_url: &'a str,
    token: &'a str,
    names: &'a [AgentName],
    plan: &'a JobPlan,
}

impl Scenario<'_> {
    async fn run(&self, fleet: &mut SimFleet, stage: &mut Stage) -> anyhow::Result<JobReport> {
        let setup_started = Instant::now();
        self.prune_stale_agents().await?;
        let executor = SimExecutor::new(Pattern::new(1), self.plan.command_bytes);
        fleet
            .start(self.control, self.hub_url, self.names, &labels(), executor)
            .await?;
        let of = self.names.len();
        *stage = Stage::ComingOnline { online: 0, of };
        fleet
            .wait_online(self.control, SELECTOR, self.names, |online| {
                *stage = Stage::ComingOnline { online, of };
            })
            .await?;
        let setup = setup_started.elapsed();

        *stage = Stage::Creating;
        let (client, mut events) = Client::connect(self.hub_url, self.token)
            .await
            .context("connecting the job client")?;
        let sent = Instant::now();
        // The hub subscribes this connection to `job:<id>` before any target
        // starts and answers before it publishes anything there, so no event
        // is missed by reading them after the answer.
        let job = client
            .create_job(self.spec(), true)
            .await
            .context("creating the job")?;
        let accepted = sent.elapsed();
        if let Err(e) = self.check_targets(&job) {
            if let Err(cancel) = client.cancel_job(job.id).await {
                tracing::warn!("cannot cancel job {}: {cancel}", job.id);
            }
            return Err(e);
        }

        *stage = Stage::Following {
            job: job.id,
            results: 0,
            of,
        };
        let mut watch = Watch::new(job.id);
        let last = watch.follow(&mut events, stage, of).await?;
        let ended = last.at - sent;

        *stage = Stage::Checking;
        let info = client
            .job(job.id)
            .await
            .context("reading the finished job")?;
        client.close().await;

        let mut problems = watch.problems;
        check_job(&mut problems, &last.event, &info, self.names);
        check_events(&mut problems, watch.results, &watch.started, self.names);
        if problems.len() > MAX_PROBLEMS {
            let more = problems.len() - MAX_PROBLEMS;
            problems.truncate(MAX_PROBLEMS);
            problems.push(format!("and {more} more problems"));
        }
        Ok(JobReport {
            job: job.id.to_string(),
            selector: SELECTOR.to_owned(),
            agents: self.names.len(),
            batch_limit: job.batch_limit,
            command_bytes: self.plan.command_bytes,
            setup_s: setup.as_secs_f64(),
            accepted_ms: millis(accepted),
            first_result_ms: watch.first_result.map(|at| millis(at - sent)),
            last_result_ms: millis(ended),
            results: watch.results,
            failed_steps: watch.failed,
            state: last.event.state,
            verified: problems.is_empty(),
            problems,
        })
    }

    /// Removes sim agents left with [`JOB_LABEL`] by an earlier, larger run, so
    /// the job targets exactly this run's agents; refuses to go on if an agent
    /// that is not a sim agent carries the label.
    async fn prune_stale_agents(&self) -> anyhow::Result<()> {
        let ours: HashSet<&AgentName> = self.names.iter().collect();
        let matching = self
            .control
            .agents_matching(SELECTOR)
            .await
            .context("listing the agents the job would target")?;
        for agent in matching.iter().filter(|a| !ours.contains(&a.name)) {
            if !is_sim(&agent.labels) {
                let (key, value) = SIM_LABEL;
                bail!(
                    "agent {} matches {SELECTOR} but is not a sim agent (no {key}={value} \
                     label); the job would run on it, so the bench stops here",
                    agent.name
                );
            }
            self.control
                .remove_agent(&agent.name)
                .await
                .with_context(|| format!("removing the stale sim agent {}", agent.name))?;
        }
        Ok(())
    }

    fn spec(&self) -> JobSpec {
        JobSpec {
            name: Some(JOB_NAME.to_owned()),
            selector: SELECTOR.to_owned(),
            steps: vec![StepSpec {
                name: JOB_NAME.to_owned(),
                command: CommandSpec::Argv(vec![NOOP_PROGRAM.to_owned()]),
                env: BTreeMap::new(),
                cwd: None,
                timeout_ms: None,
                continue_on_failure: false,
            }],
            batch: self.plan.batch,
            fail_fast: false,
            online_only: false,
            priority: 0,
            ttl_ms: None,
        }
    }

    /// The accepted job must target exactly this run's agents; otherwise it
    /// would wait for agents nobody runs.
    fn check_targets(&self, job: &JobInfo) -> anyhow::Result<()> {
        let targets: BTreeSet<&AgentName> = job.targets.iter().map(|t| &t.agent).collect();
        let ours: BTreeSet<&AgentName> = self.names.iter().collect();
        if targets == ours && job.targets.len() == ours.len() {
            return Ok(());
        }
        let extra: Vec<_> = targets.difference(&ours).take(5).collect();
        let missing: Vec<_> = ours.difference(&targets).take(5).collect();
        bail!(
            "job {} targets {} agents where {} were expected (extra: {extra:?}, missing: \
             {missing:?}); cancelled it",
            job.id,
            job.targets.len(),
            ours.len()
        )
    }
}

/// The labels of the scenario's agents.
fn labels() -> BTreeMap<String, String> {
    [SIM_LABEL, JOB_LABEL]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The final `job.progress` and when it was read.
struct Last {
    event: JobProgressEvent,
    at: Instant,
}

/// What the live events of one job showed.
struct Watch {
    job: JobId,
    channel: String,
    next_seq: u64,
    /// `job.step.completed` events read.
    results: u64,
    /// `job.step.failed` events read.
    failed: u64,
    /// Agents named by `job.step.started`.
    started: HashSet<AgentName>,
    first_result: Option<Instant>,
    problems: Vec<String>,
}

impl Watch {
    fn new(job: JobId) -> Self {
        Self {
            job,
            channel: job.channel().to_string(),
            next_seq: 0,
            results: 0,
            failed: 0,
            started: HashSet::new(),
            first_result: None,
            problems: Vec::new(),
        }
    }

    /// Reads events until the job's final `job.progress`.
    async fn follow(
        &mut self,
        events: &mut mpsc::Receiver<Event>,
        stage: &mut Stage,
        of: usize,
    ) -> anyhow::Result<Last> {
        loop {
            let envelope = match events.recv().await {
                Some(Event::Message(envelope)) => envelope,
                Some(Event::Output(_)) => continue,
                Some(Event::Closed { code, reason }) => {
                    bail!("the hub closed the job connection ({code:?}): {reason}")
                }
                None => bail!("the job connection's event stream ended"),
            };
            if envelope.channel.as_deref() != Some(self.channel.as_str()) {
                continue;
            }
            let at = Instant::now();
            let seq = match &envelope.msg {
                HubToClient::JobStepStarted(e) => {
                    self.started.insert(e.agent.clone());
                    e.seq
                }
                HubToClient::JobStepCompleted(e) => {
                    self.results += 1;
                    self.first_result.get_or_insert(at);
                    *stage = Stage::Following {
                        job: self.job,
                        results: self.results,
                        of,
                    };
                    e.seq
                }
                HubToClient::JobStepFailed(e) => {
                    self.failed += 1;
                    self.problems.push(format!(
                        "the step failed on {}: run {} ended {}, exit code {:?}{}",
                        e.agent,
                        e.outcome.run,
                        e.outcome.state,
                        e.outcome.exit_code,
                        e.outcome
                            .error
                            .as_deref()
                            .map(|error| format!(": {error}"))
                            .unwrap_or_default()
                    ));
                    e.seq
                }
                HubToClient::JobStepProgress(e) => e.seq,
                HubToClient::JobTarget(e) => e.seq,
                HubToClient::JobProgress(e) => e.seq,
                other => {
                    tracing::debug!(job = %self.job, "unexpected message on the job channel: {other:?}");
                    continue;
                }
            };
            if seq != self.next_seq {
                self.problems.push(format!(
                    "job event seq {seq} where {} was expected",
                    self.next_seq
                ));
            }
            self.next_seq = seq + 1;
            if let HubToClient::JobProgress(event) = envelope.msg
                && event.state.is_terminal()
            {
                return Ok(Last { event, at });
            }
        }
    }
}

/// The final progress and the stored job: succeeded, exactly `names`, each
/// with one step that exited 0.
fn check_job(
    problems: &mut Vec<String>,
    last: &JobProgressEvent,
    info: &JobInfo,
    names: &[AgentName],
) {
    let expected = names.len();
    let p = &last.progress;
    if last.state != JobState::Succeeded {
        problems.push(format!(
            "the job ended {}: {} succeeded, {} failed, {} skipped, {} cancelled",
            last.state, p.succeeded, p.failed, p.skipped, p.cancelled
        ));
    }
    if p.total as usize != expected || p.succeeded as usize != expected {
        problems.push(format!(
            "the final progress counts {} targets, {} succeeded; expected {expected}",
            p.total, p.succeeded
        ));
    }
    if info.state != JobState::Succeeded {
        problems.push(format!("the stored job is {}, not succeeded", info.state));
    }
    if info.targets.len() != expected {
        problems.push(format!(
            "the stored job has {} targets, expected {expected}",
            info.targets.len()
        ));
    }
    let targets: BTreeSet<&AgentName> = info.targets.iter().map(|t| &t.agent).collect();
    let ours: BTreeSet<&AgentName> = names.iter().collect();
    if targets != ours {
        problems.push(format!(
            "the stored targets are not the sim agents: {} missing, {} extra",
            ours.difference(&targets).count(),
            targets.difference(&ours).count()
        ));
    }
    for target in &info.targets {
        let step_ok = match target.steps.as_slice() {
            [step] => step.state == RunState::Completed && step.exit_code == Some(0),
            _ => false,
        };
        if target.state != TargetState::Succeeded || !step_ok {
            let steps: Vec<String> = target
                .steps
                .iter()
                .map(|s| format!("{} exit {:?}", s.state, s.exit_code))
                .collect();
            problems.push(format!(
                "target {} is {} with steps [{}]{}",
                target.agent,
                target.state,
                steps.join(", "),
                target
                    .error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ));
        }
    }
}

/// The live events: one result per agent, and a started step on every agent.
fn check_events(
    problems: &mut Vec<String>,
    results: u64,
    started: &HashSet<AgentName>,
    names: &[AgentName],
) {
    let expected = names.len();
    if results != expected as u64 {
        problems.push(format!(
            "{results} job.step.completed events, expected {expected}"
        ));
    }
    let missing = names.iter().filter(|n| !started.contains(n)).count();
    if started.len() != expected || missing > 0 {
        problems.push(format!(
            "job.step.started named {} agents, {missing} of the {expected} sim agents missing",
            started.len()
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_numbered_and_checked() {
        let base = AgentName::new("bench-sim").unwrap();
        let names = agent_names(&base, 3).unwrap();
        let names: Vec<&str> = names.iter().map(AgentName::as_str).collect();
        assert_eq!(
            names,
            ["bench-sim-0000", "bench-sim-0001", "bench-sim-0002"]
        );
        let long = AgentName::new("a".repeat(muster_proto::limits::MAX_AGENT_NAME_LEN)).unwrap();
        let err = agent_names(&long, 1).unwrap_err().to_string();
        assert!(err.contains("too long"), "{err}");
    }

    #[test]
    fn the_selector_matches_the_labels() {
        let selector = muster_proto::Selector::parse(SELECTOR).unwrap();
        assert!(selector.matches("bench-sim-0000", &labels()));
        assert!(is_sim(&labels()));
    }
}
