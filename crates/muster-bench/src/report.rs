//! The figures a run of the bench produces, and their two renderings: a table
//! for people (stdout) and one JSON object for scripts (`--json`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use muster_proto::jobs::JobState;
use serde::Serialize;

use crate::stats::LatencySummary;

/// Everything one invocation measured.
#[derive(Debug, Serialize)]
pub(crate) struct BenchReport {
    /// Hub base URL.
    pub(crate) hub: String,
    /// Name of the simulated agent; for the job scenario, the first and last
    /// of its agents (`bench-sim-0000..bench-sim-0199`).
    pub(crate) agent: String,
    /// Round-trip modes, in the order they ran.
    pub(crate) roundtrip: Vec<ModeReport>,
    /// The output scenario, when it ran.
    pub(crate) output: Option<OutputReport>,
    /// The job scenario, when it ran.
    pub(crate) job: Option<JobReport>,
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
    /// Most runs in flight.
    pub(crate) concurrency: usize,
    /// Scheduled length of the mode.
    pub(crate) duration_s: f64,
    /// From the first send to the last outcome.
    pub(crate) elapsed_s: f64,
    /// Requests sent.
    pub(crate) sent: u64,
    /// Sends skipped because `concurrency` runs were in flight (rate mode).
    pub(crate) skipped: u64,
    /// Runs that completed; each is one latency sample.
    pub(crate) completed: u64,
    /// Requests that failed, for any reason.
    pub(crate) errors: u64,
    /// Failures by kind (hub error code, or a short description).
    pub(crate) error_kinds: BTreeMap<String, u64>,
    /// Completed runs per second of `elapsed_s`.
    pub(crate) throughput_per_s: f64,
    /// Latency of completed runs.
    pub(crate) latency_ms: Option<LatencySummary>,
}

impl ModeReport {
    fn label(&self) -> String {
        match (self.kind, self.target_rate) {
            (ModeKind::Rate, Some(rate)) => format!("rate {rate}/s"),
            _ => format!("max c={}", self.concurrency),
        }
    }
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
    /// Registering the agents and waiting for all of them to be online.
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
    /// The job's final state.
    pub(crate) state: JobState,
    /// Whether every target, step and event checked out.
    pub(crate) verified: bool,
    /// What did not check out.
    pub(crate) problems: Vec<String>,
}

impl BenchReport {
    /// Whether any request failed or any check did not hold.
    pub(crate) fn has_failures(&self) -> bool {
        self.roundtrip.iter().any(|mode| mode.errors > 0)
            || self.output.as_ref().is_some_and(|output| !output.verified)
            || self.job.as_ref().is_some_and(|job| !job.verified)
    }

    /// The human-readable rendering.
    pub(crate) fn table(&self) -> String {
        let mut out = format!("hub {}  agent {}\n", self.hub, self.agent);
        if !self.roundtrip.is_empty() {
            out.push_str(&roundtrip_table(&self.roundtrip));
        }
        if let Some(output) = &self.output {
            out.push_str(&output_table(output));
        }
        if let Some(job) = &self.job {
            out.push_str(&job_table(job));
        }
        out
    }
}

fn roundtrip_table(modes: &[ModeReport]) -> String {
    let cap = modes.first().map_or(0, |mode| mode.concurrency);
    let mut out =
        format!("\nround trip (run.create -> terminal run.status), at most {cap} in flight\n");
    let _ = writeln!(
        out,
        "{:<12} {:>8} {:>8} {:>8} {:>7} {:>9} {:>8} {:>8} {:>8} {:>8}",
        "mode", "sent", "skipped", "ok", "errors", "runs/s", "p50 ms", "p90 ms", "p99 ms", "max ms"
    );
    for mode in modes {
        let latency = match &mode.latency_ms {
            Some(l) => format!(
                "{:>8.2} {:>8.2} {:>8.2} {:>8.2}",
                l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms
            ),
            None => format!("{:>8} {:>8} {:>8} {:>8}", "-", "-", "-", "-"),
        };
        let _ = writeln!(
            out,
            "{:<12} {:>8} {:>8} {:>8} {:>7} {:>9.1} {latency}",
            mode.label(),
            mode.sent,
            mode.skipped,
            mode.completed,
            mode.errors,
            mode.throughput_per_s,
        );
        for (kind, count) in &mode.error_kinds {
            let _ = writeln!(out, "  error x{count}: {kind}");
        }
    }
    out
}

fn output_table(o: &OutputReport) -> String {
    let mut out = String::from("\noutput (agent -> hub -> client, one run)\n");
    let _ = writeln!(
        out,
        "  requested {} B in {} B slices (hub cap {} B)",
        o.requested_bytes, o.chunk_bytes, o.cap_bytes
    );
    let _ = writeln!(
        out,
        "  live      {} B in {} frames, {:.3} s from first frame to terminal status: {:.1} MB/s \
         (first byte after {:.1} ms)",
        o.received_bytes, o.frames, o.stream_s, o.mb_per_s, o.first_byte_ms
    );
    let _ = writeln!(
        out,
        "  stored    {} B{}",
        o.stored_bytes,
        if o.truncated {
            ", truncated"
        } else {
            ", not truncated"
        }
    );
    let _ = writeln!(
        out,
        "  replay    {} B in {:.3} s: {:.1} MB/s",
        o.replay_bytes, o.replay_s, o.replay_mb_per_s
    );
    if o.verified {
        out.push_str("  verified  counts, seq, offsets and every byte match\n");
    }
    for problem in &o.problems {
        let _ = writeln!(out, "  PROBLEM   {problem}");
    }
    out
}

fn job_table(j: &JobReport) -> String {
    let mut out = format!(
        "\njob (one step on every agent matching {}, at most {} at once; times from job.create)\n",
        j.selector, j.batch_limit
    );
    let _ = writeln!(
        out,
        "{:>8} {:>12} {:>16} {:>15} {:>9}",
        "agents", "accepted ms", "first result ms", "last result ms", "results"
    );
    let first = j
        .first_result_ms
        .map_or_else(|| "-".to_owned(), |ms| format!("{ms:.2}"));
    let _ = writeln!(
        out,
        "{:>8} {:>12.2} {:>16} {:>15.2} {:>9}",
        j.agents,
        j.accepted_ms,
        first,
        j.last_result_ms,
        format!("{}/{}", j.results, j.agents),
    );
    if j.verified {
        let _ = writeln!(
            out,
            "  verified  job {} {}: {} targets, each one step exited 0 (setup {:.2} s)",
            j.job, j.state, j.agents, j.setup_s
        );
    }
    for problem in &j.problems {
        let _ = writeln!(out, "  PROBLEM   {problem}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_table_has_one_row_and_its_problems() {
        let mut report = BenchReport {
            hub: "http://127.0.0.1:1".to_owned(),
            agent: "bench-sim-0000..bench-sim-0001".to_owned(),
            roundtrip: Vec::new(),
            output: None,
            job: Some(JobReport {
                job: "job_x".to_owned(),
                selector: "bench=job".to_owned(),
                agents: 2,
                batch_limit: 2,
                command_bytes: 0,
                setup_s: 0.5,
                accepted_ms: 1.5,
                first_result_ms: Some(3.25),
                last_result_ms: 9.0,
                results: 2,
                failed_steps: 0,
                state: JobState::Succeeded,
                verified: true,
                problems: Vec::new(),
            }),
        };
        let table = report.table();
        assert!(
            table.contains("       2         1.50             3.25            9.00       2/2\n"),
            "{table}"
        );
        assert!(table.contains("verified  job job_x succeeded"), "{table}");
        assert!(!report.has_failures());
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["job"]["state"], "succeeded");
        assert_eq!(json["job"]["results"], 2);

        let job = report.job.as_mut().unwrap();
        job.verified = false;
        job.problems.push("target x is failed".to_owned());
        assert!(report.has_failures());
        assert!(report.table().contains("PROBLEM   target x is failed"));
    }
}
