//! `muster-bench`: a load generator for a Muster hub on loopback.
//!
//! `main` parses the command line, installs tracing (stderr, `warn` unless
//! `MUSTER_LOG` or `RUST_LOG` say otherwise), and runs the plan under one
//! global deadline — the scheduled time of every mode plus [`DEADLINE_GRACE`] —
//! so an invocation always ends by itself.
//!
//! Codemap:
//! - `cli` — flags and the [`Plan`](cli::Plan) they describe; `target` — the loopback rule;
//! - `sim` — the in-memory executor; `sim_agent` — registering and running it;
//!   `sim_fleet` — many of them at once;
//! - `roundtrip`, `output` and `job` — the scenarios; `waiters` — routing
//!   terminal statuses to round trips;
//! - `stats` — exact percentiles; `report` — the table and the JSON object.

mod cli;
mod job;
mod output;
mod report;
mod roundtrip;
mod sim;
mod sim_agent;
mod sim_fleet;
mod stats;
mod target;
mod waiters;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow};
use clap::Parser;
use muster_client::{Client, Event};
use tokio::sync::mpsc;
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Plan};
use crate::report::{BenchReport, ModeReport, OutputReport};
use crate::sim::{Pattern, SimExecutor};
use crate::sim_agent::SimAgent;

/// Exit code when the bench could not run.
const EXIT_ERROR: u8 = 1;

/// Exit code when the bench ran but some request failed or a check did not hold.
const EXIT_FAILURES_MEASURED: u8 = 2;

/// Added to the scheduled time of the modes for setup, draining and the output
/// scenario; past it the bench aborts.
const DEADLINE_GRACE: Duration = Duration::from_secs(30);

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

/// Connects, checks the plan against the hub's limits, runs the scenarios
/// with their sim agents, and closes the control connection again.
async fn execute(cli: &Cli, plan: &Plan) -> anyhow::Result<BenchReport> {
    let (control, control_events) = Client::connect(&cli.hub, cli.token.expose())
        .await
        .context("connecting to the hub")?;
    let discarding = tokio::spawn(discard(control_events));
    let measured = measure(cli, plan, &control).await;
    control.close().await;
    discarding.abort();
    measured
}

async fn measure(cli: &Cli, plan: &Plan, control: &Client) -> anyhow::Result<BenchReport> {
    let limits = control.ack().limits.clone();
    plan.check_limits(&limits)?;
    let mut report = BenchReport {
        hub: cli.hub.clone(),
        agent: cli.agent_name.to_string(),
        roundtrip: Vec::new(),
        output: None,
        job: None,
    };
    if let Some(job) = &plan.job {
        let names = job::agent_names(&cli.agent_name, job.agents)?;
        if let (Some(first), Some(last)) = (names.first(), names.last()) {
            report.agent = format!("{first}..{last}");
        }
        let token = cli.token.expose();
        report.job = Some(job::run(control, &cli.hub, token, &names, job).await?);
        return Ok(report);
    }
    let chunk = plan.output.as_ref().map_or(1, |output| output.chunk);
    let executor = SimExecutor::new(Pattern::new(chunk), plan.payload);
    let agent = SimAgent::start(control, &cli.hub, &cli.agent_name, executor).await?;
    let measured = scenarios(cli, plan, limits.max_output_bytes_per_run).await;
    agent.stop().await;
    (report.roundtrip, report.output) = measured?;
    Ok(report)
}

async fn scenarios(
    cli: &Cli,
    plan: &Plan,
    cap: u64,
) -> anyhow::Result<(Vec<ModeReport>, Option<OutputReport>)> {
    let token = cli.token.expose();
    let roundtrip = match &plan.roundtrip {
        Some(roundtrip) => roundtrip::run(&cli.hub, token, &cli.agent_name, roundtrip).await?,
        None => Vec::new(),
    };
    let output = match &plan.output {
        Some(output) => Some(output::run(&cli.hub, token, &cli.agent_name, output, cap).await?),
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
