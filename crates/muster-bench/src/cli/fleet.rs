//! Flags of the fleet scenarios (idle, fan-out, storm, job) and the plans
//! they make.

use std::time::Duration;

use anyhow::bail;
use clap::Args;
use muster_proto::AgentName;
use muster_proto::jobs::BatchSize;
use muster_proto::limits::MAX_OUTPUT_CHUNK_BYTES;

use crate::echo::EchoPlan;
use crate::emitter::STAMP_BYTES;
use crate::fanout::FanoutPlan;
use crate::idle::{IdlePlan, Kind};
use crate::job::JobPlan;
use crate::storm::StormPlan;

/// Most connections one scenario opens: each is a socket of this process,
/// which may hold 20,000 files, some of them taken by the runtime.
pub(super) const MAX_CONNECTIONS: i64 = 18_000;

/// Most sim agents of the job scenario, within [`MAX_CONNECTIONS`].
pub(super) const MAX_JOB_AGENTS: i64 = 15_000;

/// Most fan-out subscribers.
const MAX_SUBSCRIBERS: i64 = 10_000;

/// Highest chunk rate of the fan-out agent, per second.
const MAX_CHUNK_RATE: i64 = 10_000;

/// Most rounds of one fan-out sweep.
const MAX_ROUNDS: usize = 16;

/// Most handshakes in flight at once.
const MAX_HANDSHAKE_CONCURRENCY: i64 = 4096;

/// Longest accepted bound of one fleet scenario.
pub(super) const MAX_SCENARIO_TIMEOUT: Duration = Duration::from_secs(900);

/// Longest settle time of the idle scenario.
const MAX_SETTLE: Duration = Duration::from_secs(120);

/// Longest fan-out round.
const MAX_ROUND_DURATION: Duration = Duration::from_secs(120);

/// Fan-out chunk rates when neither `--rate` nor `--deliveries-per-s` is given.
pub(super) const DEFAULT_FANOUT_RATES: [u32; 2] = [100, 200];

/// Flags of the idle scenario.
#[derive(Debug, Args)]
pub(crate) struct IdleArgs {
    /// Which endpoint the connections use.
    #[arg(long, value_enum, default_value_t = Kind::Client)]
    kind: Kind,
    /// Connections to open.
    #[arg(long, default_value_t = 15_000, value_parser = clap::value_parser!(u32).range(1..=MAX_CONNECTIONS))]
    count: u32,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=MAX_HANDSHAKE_CONCURRENCY))]
    handshake_concurrency: u32,
    /// Idle time after the last handshake before the hub's memory is read.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    settle: Duration,
    /// Bound on the whole scenario, registration included.
    #[arg(long, default_value = "180s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

/// Flags of the fan-out scenario.
#[derive(Debug, Args)]
pub(crate) struct FanoutArgs {
    /// Subscriber connections, each on its own client connection.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=MAX_SUBSCRIBERS))]
    subscribers: u32,
    /// Chunks per second the agent emits; repeat for a sweep [default: 100, 200].
    #[arg(long = "rate", value_name = "N", value_parser = clap::value_parser!(u32).range(1..=MAX_CHUNK_RATE))]
    rates: Vec<u32>,
    /// Offered deliveries per second (chunk rate × subscribers), instead of
    /// --rate; repeat for a sweep.
    #[arg(long = "deliveries-per-s", value_name = "N", conflicts_with = "rates", value_parser = clap::value_parser!(u64).range(1..))]
    deliveries: Vec<u64>,
    /// How long the agent emits in each round.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Payload bytes of each chunk; the first 8 hold its send time.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(STAMP_BYTES as i64..=MAX_OUTPUT_CHUNK_BYTES as i64))]
    chunk_bytes: u32,
    /// Subscriber handshakes in flight at once.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=MAX_HANDSHAKE_CONCURRENCY))]
    handshake_concurrency: u32,
}

/// Flags of the storm scenario.
#[derive(Debug, Args)]
pub(crate) struct StormArgs {
    /// Agents.
    #[arg(long, default_value_t = 15_000, value_parser = clap::value_parser!(u32).range(1..=MAX_CONNECTIONS))]
    count: u32,
    /// Handshakes in flight at once, before and after the drop.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=MAX_HANDSHAKE_CONCURRENCY))]
    handshake_concurrency: u32,
    /// Bound on the whole scenario, registration included.
    #[arg(long, default_value = "180s", value_parser = humantime::parse_duration)]
    timeout: Duration,
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
    /// Agent handshakes in flight at once.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=MAX_HANDSHAKE_CONCURRENCY))]
    handshake_concurrency: u32,
    /// Bound on the whole scenario, setup included; past it the bench fails.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

/// Most keys one phase of the echo scenario types.
const MAX_ECHO_KEYS: u32 = 100_000;

/// Most bytes the echo scenario's flood writes (1 GB).
const MAX_FLOOD_BYTES: u64 = 1_000_000_000;

/// Flags of the echo scenario.
#[derive(Debug, Args)]
pub(crate) struct EchoArgs {
    /// The real agent the sessions run on (`muster dev` runs one named local);
    /// it must be on this machine, as it reads the flood file this writes.
    #[arg(long, default_value = "local")]
    agent: AgentName,
    /// Keys typed one at a time in each phase.
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u32).range(1..=MAX_ECHO_KEYS as i64))]
    keys: u32,
    /// Bytes another pty session `cat`s while the keys are typed again; 0: no flood.
    #[arg(long, default_value_t = 0)]
    flood_bytes: u64,
    /// Bound on the whole scenario.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

impl EchoArgs {
    pub(super) fn plan(&self) -> anyhow::Result<EchoPlan> {
        if self.flood_bytes > MAX_FLOOD_BYTES {
            bail!("--flood-bytes must be at most {MAX_FLOOD_BYTES}");
        }
        Ok(EchoPlan {
            agent: self.agent.clone(),
            keys: self.keys,
            flood_bytes: self.flood_bytes,
            timeout: check_timeout(self.timeout)?,
        })
    }
}

fn parse_batch(s: &str) -> Result<BatchSize, String> {
    s.parse()
}

fn check_timeout(timeout: Duration) -> anyhow::Result<Duration> {
    if timeout.is_zero() || timeout > MAX_SCENARIO_TIMEOUT {
        bail!("--timeout must be between 1ms and {MAX_SCENARIO_TIMEOUT:?}");
    }
    Ok(timeout)
}

impl IdleArgs {
    pub(super) fn plan(&self) -> anyhow::Result<IdlePlan> {
        if self.settle > MAX_SETTLE {
            bail!("--settle must be at most {MAX_SETTLE:?}");
        }
        Ok(IdlePlan {
            kind: self.kind,
            count: self.count as usize,
            concurrency: self.handshake_concurrency as usize,
            settle: self.settle,
            timeout: check_timeout(self.timeout)?,
        })
    }
}

impl FanoutArgs {
    pub(super) fn plan(&self) -> anyhow::Result<FanoutPlan> {
        if self.duration.is_zero() || self.duration > MAX_ROUND_DURATION {
            bail!("--duration must be between 1ms and {MAX_ROUND_DURATION:?}");
        }
        let subscribers = u64::from(self.subscribers);
        let rates: Vec<u32> = match (self.rates.as_slice(), self.deliveries.as_slice()) {
            ([], []) => DEFAULT_FANOUT_RATES.to_vec(),
            ([], deliveries) => deliveries
                .iter()
                .map(|&d| ((d + subscribers / 2) / subscribers).max(1))
                .map(|rate| u32::try_from(rate).unwrap_or(u32::MAX))
                .collect(),
            (rates, _) => rates.to_vec(),
        };
        if rates.len() > MAX_ROUNDS {
            bail!("a fan-out sweep has at most {MAX_ROUNDS} rates");
        }
        if let Some(rate) = rates.iter().find(|&&r| i64::from(r) > MAX_CHUNK_RATE) {
            bail!(
                "{rate} chunks per second is above {MAX_CHUNK_RATE}; use more subscribers \
                 for more deliveries"
            );
        }
        Ok(FanoutPlan {
            subscribers: self.subscribers as usize,
            rates,
            duration: self.duration,
            chunk_bytes: self.chunk_bytes as usize,
            concurrency: self.handshake_concurrency as usize,
        })
    }
}

impl StormArgs {
    pub(super) fn plan(&self) -> anyhow::Result<StormPlan> {
        Ok(StormPlan {
            count: self.count as usize,
            concurrency: self.handshake_concurrency as usize,
            timeout: check_timeout(self.timeout)?,
        })
    }
}

impl JobArgs {
    pub(super) fn plan(&self) -> anyhow::Result<JobPlan> {
        Ok(JobPlan {
            agents: self.agents as usize,
            command_bytes: self.command_bytes as usize,
            batch: self.batch,
            concurrency: self.handshake_concurrency as usize,
            timeout: check_timeout(self.timeout)?,
        })
    }
}
