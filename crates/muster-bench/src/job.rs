//! The job scenario: one job fanned out over many simulated agents.
//!
//! The bench registers N sim agents labelled `sim=true,bench=job` (pipelined,
//! many `agent.add` in flight), connects them as raw agents from spread
//! source addresses, and waits until the hub's paged list shows all of them
//! online. It then creates one job over [`SELECTOR`] with a single step that
//! each agent completes at once (`run.started`, optional output,
//! `run.exited` with exit code 0), subscribed to `job:<id>` from its start.
//! Three times are measured from sending `job.create`: to `job.accepted`, to
//! the first `job.step.completed`, and to the final `job.progress`. Then the
//! job as the hub stored it (its targets read page by page with
//! `job.targets`) must hold exactly the N agents, each `succeeded` with one
//! step that exited 0; the live events must be numbered without gaps and
//! cover every agent; and every run must have been acknowledged to its agent.
//!
//! The whole scenario, setup included, is bounded by the plan's timeout; the
//! agents are stopped whatever happened.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use muster_proto::jobs::{BatchSize, JobSpec, JobState, StepSpec};
use muster_proto::messages::{JobCreate, JobRef};
use muster_proto::types::CommandSpec;
use muster_proto::{ClientToHub, HubToClient, JobId};
use serde::Serialize;
use tokio::time::{Instant, sleep, timeout};

use crate::control::Control;
use crate::ctx::Ctx;
use crate::fleet::{AgentMember, AgentMode, Fleet};
use crate::job_check::{self, Watch};
use crate::raw::RunTally;
use crate::registry;
use crate::resources::{OpUnit, Resources};
use crate::sim::NOOP_PROGRAM;
use crate::stats::millis;
use crate::swarm::{self, Opened, Swarm};

/// The label value of the scenario's agents (`bench=job`).
const SCENARIO: &str = "job";

/// The job's selector: every agent with the scenario's label.
pub(crate) const SELECTOR: &str = "bench=job";

/// Name of the job and of its one step.
const JOB_NAME: &str = "bench-job";

/// Longest wait for the hub's list to show every agent online.
const PRESENCE_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest wait, once the job has ended, for the last `run.ack`s to arrive.
const ACK_GRACE: Duration = Duration::from_secs(5);

/// Interval between checks of the acknowledgement count.
const ACK_POLL: Duration = Duration::from_millis(20);

/// What the job scenario does.
#[derive(Clone, Debug)]
pub(crate) struct JobPlan {
    /// Sim agents, hence targets.
    pub(crate) agents: usize,
    /// Output bytes the step writes on each agent.
    pub(crate) command_bytes: usize,
    /// Targets in progress at once; all at once when absent.
    pub(crate) batch: Option<BatchSize>,
    /// Agent handshakes in flight at once.
    pub(crate) concurrency: usize,
    /// Bound on the whole scenario, setup included.
    pub(crate) timeout: Duration,
}

/// Figures of the job scenario. Times are from sending `job.create`.
#[derive(Debug, Serialize)]
pub(crate) struct JobReport {
    /// Job id.
    pub(crate) job: String,
    /// The job's selector.
    pub(crate) selector: String,
    /// Sim agents, hence targets.
    pub(crate) agents: usize,
    /// Targets in progress at once, as the hub computed it.
    pub(crate) batch_limit: u32,
    /// Output bytes the step wrote on each agent.
    pub(crate) command_bytes: usize,
    /// Registering the agents.
    pub(crate) registered_s: f64,
    /// Connecting them.
    pub(crate) opened: Opened,
    /// Registering, connecting, and waiting for all of them to be online.
    pub(crate) setup_s: f64,
    /// To `job.accepted`.
    pub(crate) accepted_ms: f64,
    /// To the first `job.step.completed`, if there was one.
    pub(crate) first_result_ms: Option<f64>,
    /// To the final `job.progress` (terminal state).
    pub(crate) last_result_ms: f64,
    /// `job.step.completed` events counted.
    pub(crate) results: u64,
    /// `job.step.failed` events counted.
    pub(crate) failed_steps: u64,
    /// Runs the agents were given.
    pub(crate) runs_started: u64,
    /// Runs the hub did not acknowledge as ended.
    pub(crate) runs_unacknowledged: u64,
    /// The job's final state.
    pub(crate) state: JobState,
    /// Whether every target, step, event and acknowledgement checked out.
    pub(crate) verified: bool,
    /// What did not check out.
    pub(crate) problems: Vec<String>,
    /// Hub and generator CPU from `job.create` to the last result, per target.
    pub(crate) resources: Resources,
}

/// Runs the scenario.
pub(crate) async fn run(ctx: &Ctx, plan: &JobPlan) -> anyhow::Result<JobReport> {
    let (control, _) = Control::connect(&ctx.hub, ctx.token(), false).await?;
    let (jobs, events) = Control::connect(&ctx.hub, ctx.token(), true).await?;
    let mut stage = Stage::Registering;
    let scenario = Scenario {
        ctx,
        plan,
        control: &control,
        jobs: &jobs,
    };
    let outcome = timeout(plan.timeout, scenario.run(events, &mut stage)).await;
    if let (Stage::Following { job, .. }, false) = (stage, matches!(outcome, Ok(Ok(_)))) {
        // Leave no job behind waiting for agents that are about to stop.
        if let Err(e) = control
            .request(ClientToHub::JobCancel(JobRef { job }))
            .await
        {
            tracing::warn!("cannot cancel the unfinished job {job}: {e}");
        }
    }
    control.close();
    jobs.close();
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
    Connecting,
    Creating,
    Following { job: JobId, results: u64, of: usize },
    Checking,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Registering => f.write_str("while registering the sim agents"),
            Self::Connecting => f.write_str("while connecting the sim agents"),
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
    ctx: &'a Ctx,
    plan: &'a JobPlan,
    control: &'a Control,
    jobs: &'a Control,
}

impl Scenario<'_> {
    async fn run(
        &self,
        mut events: Option<tokio::sync::mpsc::Receiver<muster_proto::Envelope<HubToClient>>>,
        stage: &mut Stage,
    ) -> anyhow::Result<JobReport> {
        let setup_started = Instant::now();
        let fleet = Fleet::register(
            self.control,
            &self.ctx.agent_base,
            SCENARIO,
            self.plan.agents,
        )
        .await?;
        *stage = Stage::Connecting;
        let tally = Arc::new(RunTally::default());
        let member = Arc::new(AgentMember {
            hub: self.ctx.hub.clone(),
            identities: fleet.identities.clone(),
            labels: fleet.labels.clone(),
            mode: AgentMode::Runs {
                payload: Bytes::from(vec![b'.'; self.plan.command_bytes]),
                tally: tally.clone(),
            },
        });
        let (swarm, opened) = Swarm::open(
            member,
            self.plan.agents,
            self.plan.concurrency,
            self.plan.timeout,
        )
        .await;
        let measured = async {
            if opened.failed > 0 {
                return Err(swarm::incomplete(&opened));
            }
            let presence = fleet.await_online(self.control, PRESENCE_TIMEOUT).await?;
            if !presence.exact {
                bail!("the hub lists {}", presence.describe(self.plan.agents));
            }
            let setup = setup_started.elapsed();
            let events = events.as_mut().context("the job client has no events")?;
            self.measure(&fleet, events, &tally, stage, setup).await
        };
        let measured = measured.await;
        let closed = swarm.stop().await;
        let mut report = measured?;
        report.registered_s = fleet.registered_s;
        report.opened = opened;
        if !closed.is_empty() {
            report
                .problems
                .push(format!("agent connections closed early: {closed:?}"));
        }
        job_check::summarize(&mut report.problems);
        report.verified = report.problems.is_empty();
        Ok(report)
    }

    async fn measure(
        &self,
        fleet: &Fleet,
        events: &mut tokio::sync::mpsc::Receiver<muster_proto::Envelope<HubToClient>>,
        tally: &RunTally,
        stage: &mut Stage,
        setup: Duration,
    ) -> anyhow::Result<JobReport> {
        let names = fleet.names();
        let of = names.len();
        *stage = Stage::Creating;
        let meter = self.ctx.meter();
        let sent = Instant::now();
        // The hub subscribes this connection to `job:<id>` before any target
        // starts and answers before it publishes anything there, so no event
        // is missed by reading them after the answer.
        let create = ClientToHub::JobCreate(JobCreate {
            spec: self.spec(),
            subscribe: true,
            idempotency_key: None,
        });
        let job = match self
            .jobs
            .request(create)
            .await
            .context("creating the job")?
        {
            HubToClient::JobAccepted(accepted) => accepted.job,
            other => bail!("expected job.accepted, got {other:?}"),
        };
        let accepted = sent.elapsed();
        *stage = Stage::Following {
            job: job.id,
            results: 0,
            of,
        };
        let targets = registry::job_targets(self.jobs, &job).await?;
        job_check::check_targets(job.id, &targets, &names)?;

        let mut watch = Watch::new(job.id);
        let last = watch
            .follow(events, |results| {
                *stage = Stage::Following {
                    job: job.id,
                    results,
                    of,
                };
            })
            .await?;
        let ended = last.at - sent;
        let resources = meter.finish(of as f64, OpUnit::Target);

        *stage = Stage::Checking;
        let info = match self
            .jobs
            .request(ClientToHub::JobGet(JobRef { job: job.id }))
            .await?
        {
            HubToClient::JobInfo(info) => info.job,
            other => bail!("expected job.info, got {other:?}"),
        };
        let targets = registry::job_targets(self.jobs, &info).await?;
        let deadline = Instant::now() + ACK_GRACE;
        while tally.acknowledged.load(Ordering::Relaxed) < tally.started.load(Ordering::Relaxed)
            && Instant::now() < deadline
        {
            sleep(ACK_POLL).await;
        }
        let started = tally.started.load(Ordering::Relaxed);
        let unacknowledged = started - tally.acknowledged.load(Ordering::Relaxed);

        let mut problems = std::mem::take(&mut watch.problems);
        job_check::check_job(&mut problems, &last.event, info.state, &targets, &names);
        job_check::check_events(&mut problems, &watch, &names);
        if started != of as u64 {
            problems.push(format!(
                "the agents were given {started} runs, expected {of}"
            ));
        }
        if unacknowledged > 0 {
            problems.push(format!(
                "{unacknowledged} runs were never acknowledged as ended"
            ));
        }
        Ok(JobReport {
            job: job.id.to_string(),
            selector: SELECTOR.to_owned(),
            agents: of,
            batch_limit: job.batch_limit,
            command_bytes: self.plan.command_bytes,
            registered_s: 0.0,
            opened: Opened::default(),
            setup_s: setup.as_secs_f64(),
            accepted_ms: millis(accepted),
            first_result_ms: watch.first_result.map(|at| millis(at - sent)),
            last_result_ms: millis(ended),
            results: watch.results,
            failed_steps: watch.failed,
            runs_started: started,
            runs_unacknowledged: unacknowledged,
            state: last.event.state,
            verified: problems.is_empty(),
            problems,
            resources,
        })
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_selector_matches_the_labels() {
        assert_eq!(SELECTOR, registry::scenario_selector(SCENARIO));
        let selector = muster_proto::Selector::parse(SELECTOR).unwrap();
        assert!(selector.matches("x", &registry::scenario_labels(SCENARIO)));
    }
}
