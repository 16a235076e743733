//! The figures a run of the bench produces, and their two renderings: a table
//! for people (stdout, `tables.rs`) and one JSON object for scripts
//! (`--json`). The fleet scenarios' own figures are defined next to them
//! (`IdleReport`, `FanoutReport`, `StormReport`, `JobReport`); the run
//! scenarios' are here.

mod tables;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::echo::EchoReport;
use crate::fanout::FanoutReport;
use crate::idle::IdleReport;
use crate::job::JobReport;
use crate::resources::Resources;
use crate::stats::LatencySummary;
use crate::storm::StormReport;

/// Everything one invocation measured.
#[derive(Debug, Default, Serialize)]
pub(crate) struct BenchReport {
    /// Hub base URL.
    pub(crate) hub: String,
    /// The hub's pid, when given: its CPU and memory are in every `resources`.
    pub(crate) hub_pid: Option<u32>,
    /// The simulated agents: a name, or the first and last of a fleet.
    pub(crate) agent: String,
    /// Round-trip modes, in the order they ran.
    pub(crate) roundtrip: Vec<ModeReport>,
    /// The output scenario, when it ran.
    pub(crate) output: Option<OutputReport>,
    /// The idle scenario, when it ran.
    pub(crate) idle: Option<IdleReport>,
    /// The fan-out scenario, when it ran.
    pub(crate) fanout: Option<FanoutReport>,
    /// The storm scenario, when it ran.
    pub(crate) storm: Option<StormReport>,
    /// The job scenario, when it ran.
    pub(crate) job: Option<JobReport>,
    /// The echo scenario, when it ran.
    pub(crate) echo: Option<EchoReport>,
}

/// How a round-trip mode paced its requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ModeKind {
    /// Open loop at a fixed rate.
    Rate,
    /// Closed loop, as fast as the concurrency allows.
    Max,
}

/// Figures of one round-trip mode.
#[derive(Debug, Serialize)]
pub(crate) struct ModeReport {
    /// How requests were paced.
    #[serde(rename = "mode")]
    pub(crate) kind: ModeKind,
    /// Requests per second asked for, in rate mode.
    pub(crate) target_rate: Option<u32>,
    /// Most runs in flight (rate mode), or workers (max mode).
    pub(crate) concurrency: usize,
    /// Scheduled length of the mode.
    pub(crate) duration_s: f64,
    /// From the first send to the last completed run.
    pub(crate) elapsed_s: f64,
    /// Requests sent.
    pub(crate) sent: u64,
    /// Sends skipped because `concurrency` runs were in flight (rate mode).
    pub(crate) skipped: u64,
    /// Runs that completed; each is one latency sample.
    pub(crate) completed: u64,
    /// Requests that failed, or runs that ended other than `completed`.
    pub(crate) errors: u64,
    /// Errors by kind (hub error code, or a short description).
    pub(crate) error_kinds: BTreeMap<String, u64>,
    /// Runs accepted that never showed a terminal status: stuck.
    pub(crate) stuck: u64,
    /// Stuck runs by kind.
    pub(crate) stuck_kinds: BTreeMap<String, u64>,
    /// The ids of the first stuck runs, to look them up on the hub.
    pub(crate) stuck_runs: Vec<String>,
    /// Completed runs per second of `elapsed_s`.
    pub(crate) throughput_per_s: f64,
    /// Latency of completed runs.
    pub(crate) latency_ms: Option<LatencySummary>,
    /// Hub and generator CPU over the mode, per completed run.
    pub(crate) resources: Resources,
}

/// Figures of the output scenario.
#[derive(Debug, Serialize)]
pub(crate) struct OutputReport {
    /// Bytes the run was asked to write.
    pub(crate) requested_bytes: u64,
    /// Size of the slices the executor wrote.
    pub(crate) chunk_bytes: usize,
    /// The hub's per-run output cap (`max_output_bytes_per_run`).
    pub(crate) cap_bytes: u64,
    /// Payload bytes of the live output frames.
    pub(crate) received_bytes: u64,
    /// Live output frames.
    pub(crate) frames: u64,
    /// From sending `run.create` to the first output frame.
    pub(crate) first_byte_ms: f64,
    /// From the first output frame to the terminal `run.status`.
    pub(crate) stream_s: f64,
    /// `received_bytes` / `stream_s`, in 10^6 bytes per second.
    pub(crate) mb_per_s: f64,
    /// Output bytes the hub recorded for the run.
    pub(crate) stored_bytes: u64,
    /// Whether the hub dropped output past its cap.
    pub(crate) truncated: bool,
    /// Payload bytes of the replayed frames.
    pub(crate) replay_bytes: u64,
    /// From the replay's `subscribe` to its `stream.synced`.
    pub(crate) replay_s: f64,
    /// `replay_bytes` / `replay_s`, in 10^6 bytes per second.
    pub(crate) replay_mb_per_s: f64,
    /// Whether every count, offset and byte checked out.
    pub(crate) verified: bool,
    /// What did not check out.
    pub(crate) problems: Vec<String>,
    /// Hub and generator CPU over the live stream, per 10^6 bytes.
    pub(crate) resources: Resources,
}

impl BenchReport {
    /// Whether any request failed, any run got stuck, or any check did not hold.
    pub(crate) fn has_failures(&self) -> bool {
        self.roundtrip
            .iter()
            .any(|mode| mode.errors + mode.stuck > 0)
            || self.output.as_ref().is_some_and(|output| !output.verified)
            || self.idle.as_ref().is_some_and(|idle| idle.errors() > 0)
            || self
                .fanout
                .as_ref()
                .is_some_and(|fanout| fanout.rounds.iter().any(|round| round.errors() > 0))
            || self.storm.as_ref().is_some_and(|storm| storm.errors() > 0)
            || self.job.as_ref().is_some_and(|job| !job.verified)
            || self.echo.as_ref().is_some_and(EchoReport::failed)
    }

    /// The human-readable rendering.
    pub(crate) fn table(&self) -> String {
        let mut out = format!("hub {}  agent {}\n", self.hub, self.agent);
        if self.hub_pid.is_none() {
            out.push_str("(no --hub-pid: hub CPU and memory are not reported)\n");
        }
        if !self.roundtrip.is_empty() {
            out.push_str(&tables::roundtrip(&self.roundtrip));
        }
        if let Some(output) = &self.output {
            out.push_str(&tables::output(output));
        }
        if let Some(idle) = &self.idle {
            out.push_str(&tables::idle(idle));
        }
        if let Some(fanout) = &self.fanout {
            out.push_str(&tables::fanout(fanout));
        }
        if let Some(storm) = &self.storm {
            out.push_str(&tables::storm(storm));
        }
        if let Some(job) = &self.job {
            out.push_str(&tables::job(job));
        }
        if let Some(echo) = &self.echo {
            out.push_str(&crate::echo::table(echo));
        }
        out
    }
}
