//! `muster jobs list | show | cancel`: jobs past and present, and the tables
//! that describe a job (also printed as the summary after following one).

use std::process::ExitCode;

use muster_client::ClientError;
use muster_proto::jobs::{JobInfo, JobProgress, JobState, JobTarget, StepOutcome};
use muster_proto::messages::JobListQuery;
use muster_proto::{ErrorCode, JobId, RunState};

use super::HubConn;
use super::output::{self, Table};

/// Longest job name shown in the `jobs list` table.
const MAX_NAME_WIDTH: usize = 40;
/// Longest error shown in a target table.
const MAX_ERROR_WIDTH: usize = 80;
/// How many jobs `jobs list` shows without `--limit`: the hub's own default.
const DEFAULT_LIMIT: u32 = 50;

/// The `muster jobs` subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum JobsCommand {
    /// List recent jobs, newest first.
    List(ListArgs),
    /// Show one job: its spec, counts and every target with each step's outcome.
    Show(IdArgs),
    /// Cancel a job: waiting targets end cancelled, running steps are killed.
    Cancel(IdArgs),
}

/// Arguments of `muster jobs list`.
#[derive(Debug, clap::Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    conn: HubConn,
    /// Only jobs in this state (running, succeeded, failed, cancelled).
    #[arg(long, value_parser = job_state)]
    state: Option<JobState>,
    /// At most this many jobs, read in as many pages as it takes.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_LIMIT)]
    limit: u32,
}

/// Arguments of the subcommands that name one job.
#[derive(Debug, clap::Args)]
pub(crate) struct IdArgs {
    #[command(flatten)]
    conn: HubConn,
    /// The job id.
    id: JobId,
}

impl JobsCommand {
    /// Runs the subcommand.
    pub(crate) async fn run(self, json: bool) -> anyhow::Result<ExitCode> {
        match self {
            Self::List(args) => list(args, json).await?,
            Self::Show(args) => show(args, json).await?,
            Self::Cancel(args) => cancel(args, json).await?,
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// `jobs list`: recent jobs as a table, or JSON.
async fn list(args: ListArgs, json: bool) -> anyhow::Result<()> {
    // Nothing here reads events; with the receiver gone, none are queued.
    let (client, _) = args.conn.connect().await?;
    let query = JobListQuery {
        state: args.state,
        limit: Some(args.limit),
        cursor: None,
    };
    let jobs = client.jobs(query).await?;
    client.close().await;
    if json {
        return output::print_json(&jobs);
    }
    output::print(&job_table(&jobs, output::now_ms()))
}

/// `jobs show`: the job's fields and every one of its targets, or the
/// `JobInfo` as JSON.
async fn show(args: IdArgs, json: bool) -> anyhow::Result<()> {
    let (client, _) = args.conn.connect().await?;
    let job = client.job(args.id).await.map_err(job_error(args.id))?;
    client.close().await;
    if json {
        return output::print_json(&job);
    }
    let now = output::now_ms();
    output::print(&format!(
        "{}\n{}",
        job_fields(&job, now),
        target_table(&job)
    ))
}

/// `jobs cancel`: asks the hub to cancel the job.
async fn cancel(args: IdArgs, json: bool) -> anyhow::Result<()> {
    let (client, _events) = args.conn.connect().await?;
    client
        .cancel_job(args.id)
        .await
        .map_err(job_error(args.id))?;
    client.close().await;
    if json {
        return output::print_json(&serde_json::json!({ "job": args.id }));
    }
    output::print(&format!("cancel requested for job {}\n", args.id))
}

/// Rewrites "not found" errors (and "no channel" for the job's channel) so they name `job`.
pub(crate) fn job_error(job: JobId) -> impl FnOnce(ClientError) -> anyhow::Error {
    move |err| match err.code() {
        Some(ErrorCode::JobNotFound | ErrorCode::UnknownChannel) => {
            anyhow::anyhow!("job {job} not found")
        }
        _ => err.into(),
    }
}

/// Parses a job state by its wire name.
fn job_state(value: &str) -> Result<JobState, String> {
    [
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
    ]
    .into_iter()
    .find(|s| s.as_str() == value)
    .ok_or_else(|| "expected one of running, succeeded, failed, cancelled".to_owned())
}

/// Target counts in a few words: `3/5 done · 1 running · 1 failed`.
pub(crate) fn counts(p: &JobProgress) -> String {
    let mut text = format!("{}/{} done", p.done(), p.total);
    for (count, what) in [
        (p.running, "running"),
        (p.queued, "queued"),
        (p.pending, "pending"),
        (p.failed, "failed"),
        (p.skipped, "skipped"),
        (p.cancelled, "cancelled"),
    ] {
        if count > 0 {
            text.push_str(&format!(" · {count} {what}"));
        }
    }
    text
}

/// One row per job: id, name, state, targets done/total, counts, age.
fn job_table(jobs: &[JobInfo], now_ms: u64) -> String {
    let headers = [
        "ID",
        "NAME",
        "STATE",
        "TARGETS",
        "SUCCEEDED",
        "FAILED",
        "CREATED",
    ];
    let mut table = Table::new(&headers);
    for job in jobs {
        let p = &job.progress;
        table.push(vec![
            job.id.to_string(),
            output::truncate(&job.display_name(), MAX_NAME_WIDTH),
            job.state.to_string(),
            format!("{}/{}", p.done(), p.total),
            p.succeeded.to_string(),
            p.failed.to_string(),
            output::ago(now_ms, job.created_ms),
        ]);
    }
    table.render()
}

/// A job's spec and state as `key: value` lines.
fn job_fields(job: &JobInfo, now_ms: u64) -> String {
    let time = |ms: Option<u64>| output::or_dash(ms.map(|ms| output::timestamp(now_ms, ms)));
    let spec = &job.spec;
    let batch = match spec.batch {
        Some(batch) => format!("{} at once ({batch})", job.batch_limit),
        None => format!("{} at once", job.batch_limit),
    };
    let steps: Vec<&str> = spec.steps.iter().map(|s| s.name.as_str()).collect();
    let flags: Vec<&str> = [
        (spec.fail_fast, "fail-fast"),
        (spec.online_only, "online-only"),
        (job.cancel_requested, "cancel-requested"),
    ]
    .into_iter()
    .filter_map(|(on, name)| on.then_some(name))
    .collect();
    output::fields(&[
        ("id", job.id.to_string()),
        ("name", job.display_name()),
        ("selector", spec.selector.clone()),
        ("state", job.state.to_string()),
        ("targets", counts(&job.progress)),
        ("steps", steps.join(", ")),
        ("batch", batch),
        (
            "flags",
            output::or_dash((!flags.is_empty()).then(|| flags.join(", "))),
        ),
        ("requested_by", output::or_dash(job.requested_by.as_deref())),
        ("created", output::timestamp(now_ms, job.created_ms)),
        ("finished", time(job.finished_ms)),
    ])
}

/// Every target with each step's outcome, for `jobs show`.
fn target_table(job: &JobInfo) -> String {
    let mut headers = vec!["AGENT", "STATE"];
    headers.extend(job.spec.steps.iter().map(|s| s.name.as_str()));
    headers.extend(["DURATION", "ERROR"]);
    let mut table = Table::new(&headers);
    for target in &job.targets {
        let mut row = vec![target.agent.to_string(), target.state.to_string()];
        row.extend((0..job.spec.steps.len()).map(|i| {
            let outcome = target.steps.iter().find(|s| s.step as usize == i);
            outcome.map_or_else(|| "-".to_owned(), step_cell)
        }));
        row.push(duration_cell(target));
        row.push(error_cell(target));
        table.push(row);
    }
    table.render()
}

/// The summary printed after following a job: a row per target and a line of counts.
pub(crate) fn summary(job: &JobInfo) -> String {
    let headers = ["AGENT", "STATE", "STEPS", "EXIT", "DURATION", "ERROR"];
    let mut table = Table::new(&headers);
    let total = job.spec.steps.len();
    for target in &job.targets {
        table.push(vec![
            target.agent.to_string(),
            target.state.to_string(),
            format!("{}/{total}", target.steps.len()),
            output::or_dash(target.steps.last().and_then(|s| s.exit_code)),
            duration_cell(target),
            error_cell(target),
        ]);
    }
    let p = &job.progress;
    format!(
        "{}job {} {}: {} succeeded, {} failed, {} skipped, {} cancelled\n",
        table.render(),
        job.id,
        job.state,
        p.succeeded,
        p.failed,
        p.skipped,
        p.cancelled
    )
}

/// One step's outcome in a cell: `exit 0`, `signal 9`, or its state.
fn step_cell(outcome: &StepOutcome) -> String {
    match (outcome.state, outcome.exit_code, outcome.signal) {
        (RunState::Completed, Some(code), _) => format!("exit {code}"),
        (RunState::Completed, None, Some(signal)) => format!("signal {signal}"),
        (state, ..) => state.to_string(),
    }
}

/// How long a target took, once it has ended.
fn duration_cell(target: &JobTarget) -> String {
    match (target.started_ms, target.finished_ms) {
        (Some(start), Some(end)) => span(end.saturating_sub(start)),
        _ => "-".to_owned(),
    }
}

/// Why a target failed or was skipped, shortened, or `-`.
fn error_cell(target: &JobTarget) -> String {
    output::or_dash(
        target
            .error
            .as_deref()
            .map(|e| output::truncate(e, MAX_ERROR_WIDTH)),
    )
}

/// A duration to a tenth of a second under a minute, else in minutes and seconds.
fn span(ms: u64) -> String {
    match ms {
        0..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m{:02}s", ms / 60_000, ms / 1000 % 60),
        _ => format!("{}h{:02}m", ms / 3_600_000, ms / 60_000 % 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> JobInfo {
        let json = serde_json::json!({
            "id": "01JD3X0000000000000000000A",
            "spec": {
                "selector": "role=web",
                "steps": [
                    {"name": "fetch", "command": {"argv": ["git", "pull"]}},
                    {"name": "build", "command": {"shell": "make"}},
                ],
            },
            "state": "failed",
            "progress": {"total": 3, "pending": 0, "queued": 0, "running": 0,
                         "succeeded": 1, "failed": 1, "skipped": 1, "cancelled": 0},
            "batch_limit": 3,
            "created_ms": 1_000,
            "finished_ms": 9_000,
            "targets": [
                {"agent": "web-1", "state": "succeeded", "started_ms": 1_000, "finished_ms": 2_500,
                 "steps": [
                    {"step": 0, "run": "01JD3X0000000000000000000B", "state": "completed", "exit_code": 0},
                    {"step": 1, "run": "01JD3X0000000000000000000C", "state": "completed", "exit_code": 0},
                 ]},
                {"agent": "web-2", "state": "failed", "started_ms": 1_000, "finished_ms": 1_300,
                 "error": "step \"build\" exited 3",
                 "steps": [
                    {"step": 0, "run": "01JD3X0000000000000000000D", "state": "completed", "exit_code": 0},
                    {"step": 1, "run": "01JD3X0000000000000000000E", "state": "completed", "exit_code": 3},
                 ]},
                {"agent": "web-3", "state": "skipped", "error": "not started"},
            ],
        });
        serde_json::from_value(json).unwrap()
    }

    fn row<'a>(text: &'a str, agent: &str) -> &'a str {
        text.lines().find(|l| l.starts_with(agent)).unwrap()
    }

    #[test]
    fn the_summary_has_a_row_per_target_and_a_line_of_counts() {
        let text = summary(&job());
        assert!(text.starts_with("AGENT  STATE      STEPS  EXIT  DURATION  ERROR\n"));
        let cells = |agent| -> Vec<String> {
            row(&text, agent)
                .split("  ")
                .filter(|c| !c.is_empty())
                .map(|c| c.trim().to_owned())
                .collect()
        };
        assert_eq!(
            cells("web-1"),
            ["web-1", "succeeded", "2/2", "0", "1.5s", "-"]
        );
        assert_eq!(
            cells("web-2"),
            [
                "web-2",
                "failed",
                "2/2",
                "3",
                "0.3s",
                "step \"build\" exited 3"
            ]
        );
        assert_eq!(
            cells("web-3"),
            ["web-3", "skipped", "0/2", "-", "-", "not started"]
        );
        assert!(text.ends_with(
            "job 01JD3X0000000000000000000A failed: 1 succeeded, 1 failed, 1 skipped, 0 cancelled\n"
        ));
    }

    #[test]
    fn show_has_a_column_per_step() {
        let text = target_table(&job());
        assert!(
            text.starts_with("AGENT  STATE      fetch   build   DURATION  ERROR\n"),
            "{text}"
        );
        assert!(row(&text, "web-2").contains("exit 0  exit 3"), "{text}");
        assert!(row(&text, "web-3").contains("-       -"), "{text}");
        let fields = job_fields(&job(), 10_000);
        assert!(fields.contains("steps:         fetch, build\n"), "{fields}");
        assert!(
            fields.contains("targets:       3/3 done · 1 failed · 1 skipped\n"),
            "{fields}"
        );
    }

    #[test]
    fn the_list_counts_targets() {
        let text = job_table(&[job()], 10_000);
        let line = text.lines().nth(1).unwrap();
        for cell in [
            "01JD3X0000000000000000000A",
            "git pull",
            "failed",
            "3/3",
            "9s ago",
        ] {
            assert!(line.contains(cell), "{line:?} lacks {cell}");
        }
    }

    #[test]
    fn spans_are_short() {
        assert_eq!(span(300), "0.3s");
        assert_eq!(span(61_000), "1m01s");
        assert_eq!(span(3_720_000), "1h02m");
    }

    #[test]
    fn states_parse_by_wire_name() {
        assert_eq!(job_state("failed"), Ok(JobState::Failed));
        assert!(job_state("done").is_err());
    }
}
