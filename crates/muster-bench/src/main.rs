//! `muster-bench`: a load generator for a Muster hub on loopback.
//!
//! `main` parses the command line, installs tracing (stderr, `warn` unless
//! `MUSTER_LOG` or `RUST_LOG` say otherwise), and runs the plan under one
//! global deadline — the plan's budget plus [`DEADLINE_GRACE`] — so an
//! invocation always ends by itself.
//!
//! Codemap:
//! - `cli` — flags and the [`Plan`](cli::Plan) they describe; `target` — the
//!   loopback rule; `ctx` — what every scenario is given;
//! - run scenarios, through the library client and one full sim agent:
//!   `roundtrip` (with `waiters`, routing terminal statuses to round trips)
//!   and `output`; `sim` — the in-memory executor; `sim_agent` — registering
//!   and running it;
//! - fleet scenarios, over raw protocol connections: `idle` (S1), `fanout`
//!   (S4, with `subscriber` and the emitting agent `emitter`), `storm` (S6,
//!   with the fleet watcher `watch`) and `job` (with its checks in
//!   `job_check`);
//! - their parts: `net` — dialing with spread source addresses and small
//!   buffers; `wire` — the few protocol pieces read cheaply; `raw` — raw
//!   client and agent handshakes, idling, answering runs; `swarm` — thousands
//!   of connections with bounded handshakes; `control` — a pipelined request
//!   connection; `registry` — paged lists, pipelined registration, pruning;
//!   `fleet` — registered agent fleets and the presence check;
//! - figures: `resources` — hub and generator CPU and memory; `stats` —
//!   exact percentiles; `histogram` — mergeable latency histograms;
//!   `report` — the table and the JSON object.

mod cli;
mod control;
mod ctx;
mod echo;
mod emitter;
mod fanout;
mod fleet;
mod histogram;
mod idle;
mod job;
mod job_check;
mod net;
mod output;
mod raw;
mod registry;
mod report;
mod resources;
mod roundtrip;
mod sim;
mod sim_agent;
mod stats;
mod storm;
mod subscriber;
mod swarm;
mod target;
mod waiters;
mod watch;
mod wire;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::Parser;
use muster_client::{Client, Event};
use tokio::sync::mpsc;
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Plan, RunsPlan};
use crate::ctx::Ctx;
use crate::net::HubAddr;
use crate::report::BenchReport;
use crate::sim::{Pattern, SimExecutor};
use crate::sim_agent::SimAgent;

/// Exit code when the bench could not run.
const EXIT_ERROR: u8 = 1;

/// Exit code when the bench ran but some request failed or a check did not hold.
const EXIT_FAILURES_MEASURED: u8 = 2;

/// Added to the plan's budget for setup, draining and the output scenario;
/// past it the bench aborts.
const DEADLINE_GRACE: Duration = Duration::from_secs(60);

/// How long pending tasks get once the bench has returned.
const RUNTIME_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("muster-bench: cannot start the async runtime: {err}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let code = runtime.block_on(run(cli)).unwrap_or_else(|err| {
        eprintln!("muster-bench: {err:#}");
        ExitCode::from(EXIT_ERROR)
    });
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN_TIMEOUT);
    code
}

/// Logs go to stderr, filtered by `MUSTER_LOG`, else `RUST_LOG`, else `warn`.
fn init_tracing() {
    let filter = EnvFilter::try_from_env("MUSTER_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    target::ensure_loopback(&cli.hub)?;
    if let Some(pid) = cli.hub_pid
        && !resources::readable(pid)
    {
        bail!("--hub-pid {pid}: /proc/{pid}/stat cannot be read; is the hub running?");
    }
    let plan = cli.plan()?;
    let deadline = plan.budget() + DEADLINE_GRACE;
    let report = tokio::time::timeout(deadline, execute(&cli, &plan))
        .await
        .map_err(|_| {
            anyhow!(
                "the benchmark did not finish within its global deadline of {}; aborting",
                humantime::format_duration(deadline)
            )
        })??;
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(match report.has_failures() {
        true => ExitCode::from(EXIT_FAILURES_MEASURED),
        false => ExitCode::SUCCESS,
    })
}

/// Runs the plan's scenario and collects its figures.
async fn execute(cli: &Cli, plan: &Plan) -> anyhow::Result<BenchReport> {
    let hub = HubAddr::resolve(&cli.hub).await?;
    let ctx = Ctx::new(hub, cli.token.expose(), cli.agent_name.clone(), cli.hub_pid);
    let mut report = BenchReport {
        hub: cli.hub.clone(),
        hub_pid: cli.hub_pid,
        agent: cli.agent_name.to_string(),
        ..BenchReport::default()
    };
    let fleet_name = |scenario: &str, count: usize| {
        let base = &cli.agent_name;
        match count {
            0 | 1 => format!("{base}-{scenario}-00000"),
            _ => format!(
                "{base}-{scenario}-00000..{base}-{scenario}-{:05}",
                count - 1
            ),
        }
    };
    match plan {
        Plan::Runs(runs) => {
            (report.roundtrip, report.output) = run_scenarios(cli, runs).await?;
        }
        Plan::Idle(idle) => {
            if idle.kind == idle::Kind::Agent {
                report.agent = fleet_name("idle", idle.count);
            }
            report.idle = Some(idle::run(&ctx, idle).await?);
        }
        Plan::Fanout(fanout) => {
            report.agent = fleet_name("fanout", 1);
            report.fanout = Some(fanout::run(&ctx, fanout).await?);
        }
        Plan::Storm(storm) => {
            report.agent = fleet_name("storm", storm.count);
            report.storm = Some(storm::run(&ctx, storm).await?);
        }
        Plan::Job(job) => {
            report.agent = fleet_name("job", job.agents);
            report.job = Some(job::run(&ctx, job).await?);
        }
        Plan::Echo(echo) => {
            report.agent = echo.agent.to_string();
            let run = echo::run(&cli.hub, cli.token.expose(), echo, cli.hub_pid);
            report.echo = Some(run.await?);
        }
    }
    Ok(report)
}

/// Connects, checks the plan against the hub's limits, runs round trip and
/// output with their sim agent, and closes the control connection again.
async fn run_scenarios(
    cli: &Cli,
    plan: &RunsPlan,
) -> anyhow::Result<(Vec<report::ModeReport>, Option<report::OutputReport>)> {
    let (control, control_events) = Client::connect(&cli.hub, cli.token.expose())
        .await
        .context("connecting to the hub")?;
    let discarding = tokio::spawn(discard(control_events));
    let measured = async {
        let limits = control.ack().limits.clone();
        plan.check_limits(&limits)?;
        let chunk = plan.output.as_ref().map_or(1, |output| output.chunk);
        let executor = SimExecutor::new(Pattern::new(chunk), plan.payload);
        let agent = SimAgent::start(&control, &cli.hub, &cli.agent_name, executor).await?;
        let measured = scenarios(cli, plan, limits.max_output_bytes_per_run).await;
        agent.stop().await;
        measured
    }
    .await;
    control.close().await;
    discarding.abort();
    measured
}

async fn scenarios(
    cli: &Cli,
    plan: &RunsPlan,
    cap: u64,
) -> anyhow::Result<(Vec<report::ModeReport>, Option<report::OutputReport>)> {
    let token = cli.token.expose();
    let (agent, pid) = (&cli.agent_name, cli.hub_pid);
    let roundtrip = match &plan.roundtrip {
        Some(roundtrip) => roundtrip::run(&cli.hub, token, agent, roundtrip, pid).await?,
        None => Vec::new(),
    };
    let output = match &plan.output {
        Some(output) => Some(output::run(&cli.hub, token, agent, output, cap, pid).await?),
        None => None,
    };
    Ok((roundtrip, output))
}

/// Drains a connection's events nobody needs, so its replies keep flowing.
async fn discard(mut events: mpsc::Receiver<Event>) {
    while let Some(event) = events.recv().await {
        if let Event::Closed { code, reason } = event {
            tracing::debug!(?code, %reason, "control connection closed");
        }
    }
}
