//! The command line: global flags, one subcommand per scenario, and their
//! translation into the [`Plan`] that runs. The flags of the run scenarios
//! (round trip, output) are in `runs.rs`, those of the fleet scenarios (idle,
//! fan-out, storm, job) in `fleet.rs`; every bound is a named constant there.

mod fleet;
mod runs;
#[cfg(test)]
mod tests;

use std::str::FromStr;
use std::time::Duration;

use clap::{Parser, Subcommand};
use muster_proto::AgentName;

pub(crate) use self::runs::RunsPlan;
use crate::echo::EchoPlan;
use crate::fanout::FanoutPlan;
use crate::idle::IdlePlan;
use crate::job::JobPlan;
use crate::storm::StormPlan;

/// Load generator for a Muster hub on loopback (or any hub speaking its
/// protocol): round trip, output, idle connections, fan-out, reconnect storm
/// and job fan-out.
///
/// Registers (or re-registers) simulated agents on the hub, runs them in this
/// process, and measures the hub through them. Every figure comes with the
/// hub's CPU per operation and memory (given --hub-pid) and this generator's
/// own CPU, so a figure bounded by the generator can be told apart.
#[derive(Debug, Parser)]
#[command(name = "muster-bench", version)]
pub(crate) struct Cli {
    /// Hub base URL; its host must be loopback (127.0.0.0/8, ::1 or localhost).
    #[arg(long, env = "MUSTER_HUB")]
    pub(crate) hub: String,
    /// Admin API token; the sim agents are registered with it.
    #[arg(long, env = "MUSTER_TOKEN", hide_env_values = true)]
    pub(crate) token: Secret,
    /// Base name of the simulated agents; an existing agent of a name the
    /// bench uses is replaced only if it carries the label sim=true. Round
    /// trip and output use <NAME>; idle, fanout, storm and job use
    /// <NAME>-<scenario>-00000, <NAME>-<scenario>-00001, …
    #[arg(long, env = "MUSTER_BENCH_AGENT", default_value = "bench-sim")]
    pub(crate) agent_name: AgentName,
    /// Print one JSON object with every figure instead of a table.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// Pid of the hub process, to report its CPU time (per operation) and
    /// resident memory from /proc next to every figure.
    #[arg(long, global = true, value_name = "PID")]
    pub(crate) hub_pid: Option<u32>,
    /// What to measure [default: all].
    #[command(subcommand)]
    pub(crate) scenario: Option<Scenario>,
}

/// The scenarios.
#[derive(Debug, Subcommand)]
pub(crate) enum Scenario {
    /// Round-trip latency of runs at fixed rates, then at maximum throughput
    /// for each --concurrency. Runs with no terminal status are counted as
    /// stuck, apart from errors.
    Roundtrip(runs::RoundtripArgs),
    /// Throughput of one run's output, checked byte for byte, live and replayed.
    Output(runs::OutputArgs),
    /// Round trip, then output.
    All(runs::AllArgs),
    /// Many idle connections (S1): handshakes per second and hub memory per connection.
    ///
    /// Opens --count raw connections of one --kind, at most
    /// --handshake-concurrency handshakes at once, from source addresses
    /// 127.0.0.2, 127.0.0.3, … (2,000 each). A client completes hello,
    /// connection.ack and the first agent.list; an agent (registered first as
    /// <agent-name>-idle-NNNNN with the labels sim=true and bench=idle)
    /// completes hello and connection.ack and must then be listed online.
    /// After --settle, the hub's RSS growth is divided by the connections.
    Idle(fleet::IdleArgs),
    /// One run's output fanned out to many subscribers (S4), at a sweep of rates.
    ///
    /// Opens --subscribers client connections and one raw sim agent
    /// (<agent-name>-fanout-00000, labels sim=true and bench=fanout). For each
    /// rate, a run is created on the agent, every subscriber subscribes to its
    /// channel, and the agent sends that many chunks per second for
    /// --duration, one frame per chunk, each payload starting with its send
    /// time. Reports deliveries per second received, end-to-end latency, and
    /// whether every subscriber got every chunk once and in order.
    Fanout(fleet::FanoutArgs),
    /// Every agent drops at once and reconnects (S6): time until the hub shows all online.
    ///
    /// Registers and connects --count raw sim agents
    /// (<agent-name>-storm-NNNNN, labels sim=true and bench=storm), then
    /// resets every connection at once; each reconnects at once, at most
    /// --handshake-concurrency at a time. A client on the fleet channel
    /// measures when the hub shows every agent back online; a full paged
    /// agent.list must then list exactly the fleet, online.
    Storm(fleet::StormArgs),
    /// One job over many sim agents: time to accepted, first and last result.
    ///
    /// Registers --agents raw sim agents named <agent-name>-job-NNNNN with the
    /// labels sim=true and bench=job (replacing earlier sim agents of those
    /// names, and removing stale sim agents labelled bench=job), connects
    /// them, waits until all are online, then creates one job over the
    /// selector bench=job whose single step each agent completes at once.
    /// Measured from sending job.create: job.accepted, the first
    /// job.step.completed, and the final job.progress. The finished job (its
    /// targets read page by page) must list every agent, succeeded, with one
    /// step that exited 0, and every run must be acknowledged; otherwise the
    /// bench exits 2. The whole scenario fails after --timeout.
    Job(fleet::JobArgs),
    /// Keystroke echo latency through a pty session on a real agent.
    ///
    /// Opens a pty session on --agent running `cat` on a raw terminal, attaches
    /// as a writer and types --keys keys one at a time, timing each from its
    /// session.input to the output frame that echoes it. With --flood-bytes,
    /// another pty session on the same agent `cat`s a file of that size,
    /// checked byte for byte, while the keys are typed again.
    Echo(fleet::EchoArgs),
}

/// An API token; `Debug` never shows it.
#[derive(Clone)]
pub(crate) struct Secret(String);

impl Secret {
    /// The token itself, for the hello message only.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// What one invocation runs.
#[derive(Clone, Debug)]
pub(crate) enum Plan {
    /// Round trip and/or output, with one sim agent.
    Runs(RunsPlan),
    /// Idle connections.
    Idle(IdlePlan),
    /// Fan-out.
    Fanout(FanoutPlan),
    /// Reconnect storm.
    Storm(StormPlan),
    /// Job fan-out.
    Job(JobPlan),
    /// Keystroke echo through a pty session.
    Echo(EchoPlan),
}

impl Cli {
    /// The plan the flags describe, checked for bounds.
    pub(crate) fn plan(&self) -> anyhow::Result<Plan> {
        Ok(match &self.scenario {
            Some(Scenario::Roundtrip(args)) => Plan::Runs(RunsPlan::new(Some(args), None)?),
            Some(Scenario::Output(args)) => Plan::Runs(RunsPlan::new(None, Some(args))?),
            Some(Scenario::All(args)) => {
                Plan::Runs(RunsPlan::new(Some(&args.roundtrip), Some(&args.output))?)
            }
            None => {
                let all = runs::AllArgs::parse_from(["all"]);
                Plan::Runs(RunsPlan::new(Some(&all.roundtrip), Some(&all.output))?)
            }
            Some(Scenario::Idle(args)) => Plan::Idle(args.plan()?),
            Some(Scenario::Fanout(args)) => Plan::Fanout(args.plan()?),
            Some(Scenario::Storm(args)) => Plan::Storm(args.plan()?),
            Some(Scenario::Job(args)) => Plan::Job(args.plan()?),
            Some(Scenario::Echo(args)) => Plan::Echo(args.plan()?),
        })
    }
}

impl Plan {
    /// Longest the scenarios may take, before setup and grace.
    pub(crate) fn budget(&self) -> Duration {
        match self {
            Self::Runs(runs) => runs.budget(),
            Self::Idle(idle) => idle.timeout,
            Self::Fanout(fanout) => fanout.budget(),
            Self::Storm(storm) => storm.timeout,
            Self::Job(job) => job.timeout,
            Self::Echo(echo) => echo.timeout,
        }
    }
}
