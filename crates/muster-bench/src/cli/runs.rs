//! Flags of the run scenarios, round trip and output, and the plan they make.

use std::time::Duration;

use anyhow::bail;
use clap::{Args, Parser};
use muster_proto::limits::{Limits, MAX_OUTPUT_CHUNK_BYTES};

use crate::output::OutputPlan;
use crate::roundtrip::RoundtripPlan;

/// Fixed rates of the round-trip scenario when no `--rate` is given.
pub(super) const DEFAULT_RATES: [u32; 3] = [100, 500, 1000];

/// Highest fixed rate: far above what one hub on two cores can serve, so
/// the rate modes can find the ceiling.
const MAX_RATE: i64 = 1_000_000;

/// Most runs in flight: the hub queues at most 1000 runs per agent.
const MAX_IN_FLIGHT: i64 = 1000;

/// Longest accepted length of one mode, so every invocation ends by itself.
pub(super) const MAX_MODE_DURATION: Duration = Duration::from_secs(600);

/// Most modes of one kind in one sweep (rates, or max-mode concurrencies).
const MAX_SWEEP: usize = 16;

/// Largest slice the output executor may hand its sink at once.
const MAX_SLICE_BYTES: u64 = 1024 * 1024;

/// Flags of the round-trip scenario.
#[derive(Debug, Args)]
pub(crate) struct RoundtripArgs {
    /// Fixed rate in runs per second; repeat for several modes [default: 100, 500, 1000].
    #[arg(long = "rate", value_name = "N", value_parser = clap::value_parser!(u32).range(1..=MAX_RATE))]
    rates: Vec<u32>,
    /// Length of each fixed-rate mode.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Length of each closed-loop max mode; 0s skips them.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    max_duration: Duration,
    /// Most runs in flight in the fixed-rate modes; a send due while this
    /// many are in flight is skipped and counted.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=MAX_IN_FLIGHT))]
    in_flight: u32,
    /// Workers of the max mode; a list (1,8,32,128) or a repeated flag runs
    /// one max mode per value, to find the maximum throughput.
    #[arg(long, value_delimiter = ',', default_value = "32", value_parser = clap::value_parser!(u32).range(1..=MAX_IN_FLIGHT))]
    concurrency: Vec<u32>,
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

/// Flags of `all`: those of both scenarios.
#[derive(Debug, Parser)]
pub(crate) struct AllArgs {
    #[command(flatten)]
    pub(super) roundtrip: RoundtripArgs,
    #[command(flatten)]
    pub(super) output: OutputArgs,
}

/// The round-trip and output scenarios, with one sim agent.
#[derive(Clone, Debug)]
pub(crate) struct RunsPlan {
    /// The round-trip scenario, if selected.
    pub(crate) roundtrip: Option<RoundtripPlan>,
    /// The output scenario, if selected.
    pub(crate) output: Option<OutputPlan>,
    /// Output bytes of each round-trip run.
    pub(crate) payload: usize,
}

impl RunsPlan {
    pub(super) fn new(
        roundtrip: Option<&RoundtripArgs>,
        output: Option<&OutputArgs>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            roundtrip: roundtrip.map(RoundtripArgs::plan).transpose()?,
            output: output.map(OutputArgs::plan),
            payload: roundtrip.map_or(0, |args| args.payload as usize),
        })
    }

    /// Scheduled time of the round-trip modes; output runs within the grace.
    pub(crate) fn budget(&self) -> Duration {
        self.roundtrip
            .as_ref()
            .map_or(Duration::ZERO, RoundtripPlan::budget)
    }

    /// Checks the plan against the limits the hub announced.
    pub(crate) fn check_limits(&self, limits: &Limits) -> anyhow::Result<()> {
        if let Some(roundtrip) = &self.roundtrip {
            let most = roundtrip
                .concurrency
                .iter()
                .copied()
                .chain([roundtrip.in_flight])
                .max()
                .unwrap_or(0);
            if most > limits.max_queue_per_agent {
                bail!(
                    "--in-flight or --concurrency {most} exceeds the hub's per-agent queue of \
                     {} runs",
                    limits.max_queue_per_agent
                );
            }
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

impl RoundtripArgs {
    fn plan(&self) -> anyhow::Result<RoundtripPlan> {
        if self.duration.is_zero() || self.duration > MAX_MODE_DURATION {
            bail!("--duration must be between 1ms and {MAX_MODE_DURATION:?}");
        }
        if self.max_duration > MAX_MODE_DURATION {
            bail!("--max-duration must be at most {MAX_MODE_DURATION:?}");
        }
        if self.concurrency.len() > MAX_SWEEP || self.rates.len() > MAX_SWEEP {
            bail!("--rate and --concurrency take at most {MAX_SWEEP} values each");
        }
        Ok(RoundtripPlan {
            rates: match self.rates.as_slice() {
                [] => DEFAULT_RATES.to_vec(),
                rates => rates.to_vec(),
            },
            duration: self.duration,
            max_duration: self.max_duration,
            in_flight: self.in_flight as usize,
            concurrency: self.concurrency.iter().map(|&c| c as usize).collect(),
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
