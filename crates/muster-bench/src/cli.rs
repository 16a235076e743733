//! The command line: flags with their defaults and environment variables, and
//! their translation into the [`Plan`] the scenarios run.

use std::str::FromStr;
use std::time::Duration;

use anyhow::bail;
use clap::{Args, Parser, Subcommand};
use muster_proto::AgentName;
use muster_proto::jobs::BatchSize;
use muster_proto::limits::{Limits, MAX_OUTPUT_CHUNK_BYTES};

use crate::job::JobPlan;
use crate::output::OutputPlan;
use crate::roundtrip::RoundtripPlan;

/// Fixed rates of the round-trip scenario when no `--rate` is given.
const DEFAULT_RATES: [u32; 3] = [100, 500, 1000];

/// Longest accepted length of one mode, so every invocation ends by itself.
const MAX_MODE_DURATION: Duration = Duration::from_secs(600);

/// Largest slice the output executor may hand its sink at once.
const MAX_SLICE_BYTES: u64 = 1024 * 1024;

/// Most sim agents of the job scenario: each is a connection and a socket in
/// this process, so this stays well under a 20 000 file-descriptor limit.
const MAX_JOB_AGENTS: i64 = 5_000;

/// Longest accepted `--timeout` of the job scenario.
const MAX_JOB_TIMEOUT: Duration = Duration::from_secs(600);

/// Load generator for a Muster hub on loopback: command round trip, output
/// throughput, and one job over many agents.
///
/// Registers (or re-registers) simulated agents on the hub, runs them in this
/// process, and measures the hub through them.
#[derive(Debug, Parser)]
#[command(name = "muster-bench", version)]
pub(crate) struct Cli {
    /// Hub base URL; its host must be loopback (127.0.0.0/8, ::1 or localhost).
    #[arg(long, env = "MUSTER_HUB")]
    pub(crate) hub: String,
    /// Admin API token; the sim agent is registered with it.
    #[arg(long, env = "MUSTER_TOKEN", hide_env_values = true)]
    pub(crate) token: Secret,
    /// Name of the simulated agent; an existing agent of that name is replaced
    /// only if it carries the label sim=true. The job scenario's agents are
    /// named <NAME>-0000, <NAME>-0001, …
    #[arg(long, env = "MUSTER_BENCH_AGENT", default_value = "bench-sim")]
    pub(crate) agent_name: AgentName,
    /// Print one JSON object with every figure instead of a table.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// What to measure [default: all].
    #[command(subcommand)]
    pub(crate) scenario: Option<Scenario>,
}

/// The scenarios.
#[derive(Debug, Subcommand)]
pub(crate) enum Scenario {
    /// Round-trip latency of runs at fixed rates, then at maximum throughput.
    Roundtrip(RoundtripArgs),
    /// Throughput of one run's output, checked byte for byte.
    Output(OutputArgs),
    /// Round trip, then output (not job).
    All(AllArgs),
    /// One job over many sim agents: time to accepted, first and last result.
    ///
    /// Registers --agents sim agents named <agent-name>-0000… with the labels
    /// sim=true and bench=job (replacing earlier sim agents of those names, and
    /// removing stale sim agents labelled bench=job), runs them in this process,
    /// waits until all are online, then creates one job over the selector
    /// bench=job whose single step completes at once. Measured from sending
    /// job.create: job.accepted, the first job.step.completed, and the final
    /// job.progress. The finished job must list every agent, succeeded, with
    /// one step that exited 0; otherwise the bench exits 2. The whole scenario
    /// fails after --timeout.
    Job(JobArgs),
}

/// Flags of the round-trip scenario.
#[derive(Debug, Args)]
pub(crate) struct RoundtripArgs {
    /// Fixed rate in runs per second; repeat for several modes [default: 100, 500, 1000].
    #[arg(long = "rate", value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    rates: Vec<u32>,
    /// Length of each fixed-rate mode.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Length of the closed-loop max mode; 0s skips it.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    max_duration: Duration,
    /// Most runs in flight; the hub queues at most 1000 runs per agent.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1000))]
    concurrency: u32,
    /// Bytes of output each round-trip run writes.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=MAX_OUTPUT_CHUNK_BYTES as i64))]
    payload: u32,
}

/// Flags of the output scenario.
#[derive(Debug, Args)]
pub(crate) struct OutputArgs {
    /// Bytes the run writes; at most the hub's per-run output cap (64 MiB by default).
    #[arg(long, default_value_t = 60 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..))]
    bytes: u64,
    /// Size of each write the simulated process makes.
    #[arg(long, default_value_t = MAX_OUTPUT_CHUNK_BYTES as u64, value_parser = clap::value_parser!(u64).range(1..=MAX_SLICE_BYTES))]
    chunk: u64,
}

/// Flags of the job scenario.
#[derive(Debug, Args)]
pub(crate) struct JobArgs {
    /// Sim agents to register and run, hence targets of the job.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=MAX_JOB_AGENTS))]
    agents: u32,
    /// Bytes of output the step writes on each agent.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=MAX_OUTPUT_CHUNK_BYTES as i64))]
    command_bytes: u32,
    /// Targets in progress at once: a count (10) or a percentage (25%) [default: all].
    #[arg(long, value_name = "N|N%", value_parser = parse_batch)]
    batch: Option<BatchSize>,
    /// Bound on the whole scenario, setup included; past it the bench fails.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

fn parse_batch(s: &str) -> Result<BatchSize, String> {
    s.parse()
}

/// Flags of `all`: those of both scenarios.
#[derive(Debug, Parser)]
pub(crate) struct AllArgs {
    #[command(flatten)]
    roundtrip: RoundtripArgs,
    #[command(flatten)]
    output: OutputArgs,
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
pub(crate) struct Plan {
    /// The round-trip scenario, if selected.
    pub(crate) roundtrip: Option<RoundtripPlan>,
    /// The output scenario, if selected.
    pub(crate) output: Option<OutputPlan>,
    /// The job scenario, if selected; it runs alone.
    pub(crate) job: Option<JobPlan>,
    /// Output bytes of each round-trip run.
    pub(crate) payload: usize,
}

impl Cli {
    /// The plan the flags describe, checked for bounds.
    pub(crate) fn plan(&self) -> anyhow::Result<Plan> {
        let all;
        let (roundtrip, output) = match &self.scenario {
            Some(Scenario::Job(args)) => {
                return Ok(Plan {
                    roundtrip: None,
                    output: None,
                    job: Some(args.plan()?),
                    payload: 0,
                });
            }
            Some(Scenario::Roundtrip(args)) => (Some(args), None),
            Some(Scenario::Output(args)) => (None, Some(args)),
            Some(Scenario::All(args)) => (Some(&args.roundtrip), Some(&args.output)),
            None => {
                all = AllArgs::parse_from(["all"]);
                (Some(&all.roundtrip), Some(&all.output))
            }
        };
        Ok(Plan {
            roundtrip: roundtrip.map(RoundtripArgs::plan).transpose()?,
            output: output.map(OutputArgs::plan),
            job: None,
            payload: roundtrip.map_or(0, |args| args.payload as usize),
        })
    }
}

impl RoundtripArgs {
    fn plan(&self) -> anyhow::Result<RoundtripPlan> {
        if self.duration.is_zero() || self.duration > MAX_MODE_DURATION {
            bail!("--duration must be between 1ms and {MAX_MODE_DURATION:?}");
        }
        if self.max_duration > MAX_MODE_DURATION {
            bail!("--max-duration must be at most {MAX_MODE_DURATION:?}");
        }
        Ok(RoundtripPlan {
            rates: match self.rates.as_slice() {
                [] => DEFAULT_RATES.to_vec(),
                rates => rates.to_vec(),
            },
            duration: self.duration,
            max_duration: self.max_duration,
            concurrency: self.concurrency as usize,
        })
    }
}

impl OutputArgs {
    fn plan(&self) -> OutputPlan {
        OutputPlan {
            bytes: self.bytes,
            chunk: self.chunk as usize,
        }
    }
}

impl JobArgs {
    fn plan(&self) -> anyhow::Result<JobPlan> {
        if self.timeout.is_zero() || self.timeout > MAX_JOB_TIMEOUT {
            bail!("--timeout must be between 1ms and {MAX_JOB_TIMEOUT:?}");
        }
        Ok(JobPlan {
            agents: self.agents,
            command_bytes: self.command_bytes as usize,
            batch: self.batch,
            timeout: self.timeout,
        })
    }
}

impl Plan {
    /// Scheduled time of every scenario, before setup and grace; for the job
    /// scenario, its timeout.
    pub(crate) fn budget(&self) -> Duration {
        let roundtrip = self
            .roundtrip
            .as_ref()
            .map_or(Duration::ZERO, RoundtripPlan::budget);
        roundtrip + self.job.as_ref().map_or(Duration::ZERO, |job| job.timeout)
    }

    /// Checks the plan against the limits the hub announced.
    pub(crate) fn check_limits(&self, limits: &Limits) -> anyhow::Result<()> {
        if let Some(roundtrip) = &self.roundtrip
            && roundtrip.concurrency > limits.max_queue_per_agent
        {
            bail!(
                "--concurrency {} exceeds the hub's per-agent queue of {} runs",
                roundtrip.concurrency,
                limits.max_queue_per_agent
            );
        }
        if let Some(output) = &self.output {
            let cap = limits.max_output_bytes_per_run;
            if output.bytes > cap {
                bail!(
                    "--bytes {} exceeds the hub's per-run output cap of {cap} bytes \
                     (max_output_bytes_per_run); the hub would truncate the output",
                    output.bytes
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use anyhow::Context;
    use clap::CommandFactory;

    use super::*;

    const BASE: [&str; 5] = [
        "muster-bench",
        "--hub",
        "http://127.0.0.1:1",
        "--token",
        "t",
    ];

    fn parse(extra: &[&str]) -> anyhow::Result<Plan> {
        Cli::try_parse_from(BASE.iter().chain(extra))
            .context("parsing the command line")?
            .plan()
    }

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn no_scenario_means_all_with_defaults() {
        let plan = parse(&[]).unwrap();
        let roundtrip = plan.roundtrip.unwrap();
        assert_eq!(roundtrip.rates, DEFAULT_RATES);
        assert_eq!(roundtrip.concurrency, 32);
        assert_eq!(roundtrip.budget(), Duration::from_secs(20));
        let output = plan.output.unwrap();
        assert_eq!((output.bytes, output.chunk), (62_914_560, 10_240));
    }

    #[test]
    fn rates_repeat() {
        let plan = parse(&[
            "roundtrip",
            "--rate",
            "7",
            "--rate",
            "9",
            "--max-duration",
            "0s",
        ])
        .unwrap();
        assert!(plan.output.is_none());
        let roundtrip = plan.roundtrip.unwrap();
        assert_eq!(roundtrip.rates, [7, 9]);
        assert!(roundtrip.max_duration.is_zero());
    }

    #[test]
    fn concurrency_is_capped_at_the_queue_limit() {
        assert!(parse(&["roundtrip", "--concurrency", "1001"]).is_err());
        assert!(parse(&["roundtrip", "--duration", "0s"]).is_err());
    }

    #[test]
    fn bytes_over_the_cap_are_refused() {
        let plan = parse(&["output", "--bytes", "100"]).unwrap();
        let limits = Limits {
            max_message_bytes: 1 << 20,
            max_output_chunk_bytes: 10_240,
            output_batch_ms: 50,
            max_output_bytes_per_run: 99,
            max_queue_per_agent: 1000,
        };
        let err = plan.check_limits(&limits).unwrap_err().to_string();
        assert!(err.contains("per-run output cap of 99 bytes"), "{err}");
    }

    #[test]
    fn job_runs_alone_with_its_defaults() {
        let plan = parse(&["job"]).unwrap();
        assert!(plan.roundtrip.is_none() && plan.output.is_none());
        let job = plan.job.unwrap();
        assert_eq!((job.agents, job.command_bytes, job.batch), (200, 0, None));
        assert_eq!(job.timeout, Duration::from_secs(120));
        assert_eq!(parse(&["job"]).unwrap().budget(), Duration::from_secs(120));
    }

    #[test]
    fn job_flags_parse_and_are_bounded() {
        let plan = parse(&[
            "job",
            "--agents",
            "7",
            "--command-bytes",
            "12",
            "--batch",
            "25%",
            "--timeout",
            "5s",
        ])
        .unwrap();
        let job = plan.job.unwrap();
        assert_eq!((job.agents, job.command_bytes), (7, 12));
        assert_eq!(job.batch, Some(BatchSize::Percent(25)));
        assert_eq!(job.timeout, Duration::from_secs(5));
        let count = parse(&["job", "--batch", "3"]).unwrap().job.unwrap();
        assert_eq!(count.batch, Some(BatchSize::Count(3)));
        for bad in [
            &["job", "--agents", "0"][..],
            &["job", "--agents", "5001"],
            &["job", "--batch", "0"],
            &["job", "--batch", "101%"],
            &["job", "--batch", "x"],
            &["job", "--command-bytes", "10241"],
            &["job", "--timeout", "0s"],
            &["job", "--timeout", "11m"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn secrets_are_masked() {
        let cli = Cli::try_parse_from(BASE).unwrap();
        assert!(!format!("{cli:?}").contains("token: t"));
    }
}
