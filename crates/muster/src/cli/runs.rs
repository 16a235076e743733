//! `muster runs list | show | output | cancel`: runs past and present.

use std::process::ExitCode;

use anyhow::Context;
use muster_client::RunListQuery;
use muster_proto::{AgentName, RunId, RunInfo, RunState};

use super::output::{self, Table};
use super::stream::{Printer, Step, event_or_error};
use super::{HubConn, agent_error, parse, run_error};

/// Longest command shown in the `runs list` table.
const MAX_COMMAND_WIDTH: usize = 60;

/// How many runs `runs list` shows without `--limit`: the hub's own default.
const DEFAULT_LIMIT: u32 = 50;

/// The `muster runs` subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum RunsCommand {
    /// List recent runs, newest first.
    List(ListArgs),
    /// Show one run.
    Show(IdArgs),
    /// Print a run's output; with --follow, keep printing until the run ends.
    Output(OutputArgs),
    /// Cancel a queued or running run.
    Cancel(IdArgs),
}

/// Arguments of `muster runs list`.
#[derive(Debug, clap::Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    conn: HubConn,
    /// Only runs on this agent.
    #[arg(long)]
    agent: Option<AgentName>,
    /// Only runs in this state (queued, running, completed, failed, timed_out, …).
    #[arg(long, value_parser = parse::run_state)]
    state: Option<RunState>,
    /// At most this many runs, read in as many pages as it takes.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_LIMIT)]
    limit: u32,
}

/// Arguments of the subcommands that name one run.
#[derive(Debug, clap::Args)]
pub(crate) struct IdArgs {
    #[command(flatten)]
    conn: HubConn,
    /// The run id.
    id: RunId,
}

/// Arguments of `muster runs output`.
#[derive(Debug, clap::Args)]
pub(crate) struct OutputArgs {
    #[command(flatten)]
    conn: HubConn,
    /// The run id.
    id: RunId,
    /// Keep printing live output until the run ends.
    #[arg(long, short)]
    follow: bool,
}

impl RunsCommand {
    /// Runs the subcommand.
    pub(crate) async fn run(self, json: bool) -> anyhow::Result<ExitCode> {
        match self {
            Self::List(args) => list(args, json).await?,
            Self::Show(args) => show(args, json).await?,
            Self::Output(args) => output_of(args).await?,
            Self::Cancel(args) => cancel(args, json).await?,
        }
        Ok(ExitCode::SUCCESS)
    }
}

async fn list(args: ListArgs, json: bool) -> anyhow::Result<()> {
    // Nothing here reads events; with the receiver gone, none are queued.
    let (client, _) = args.conn.connect().await?;
    let query = RunListQuery {
        agent: args.agent.clone(),
        state: args.state,
        session: None,
        limit: Some(args.limit),
        cursor: None,
    };
    let runs = match &args.agent {
        Some(agent) => client.runs(query).await.map_err(agent_error(agent))?,
        None => client.runs(query).await?,
    };
    client.close().await;
    if json {
        return output::print_json(&runs);
    }
    output::print(&run_table(&runs, output::now_ms()))
}

async fn show(args: IdArgs, json: bool) -> anyhow::Result<()> {
    let (client, _events) = args.conn.connect().await?;
    let run = client.run_info(args.id).await.map_err(run_error(args.id))?;
    client.close().await;
    if json {
        return output::print_json(&run);
    }
    output::print(&run_fields(&run, output::now_ms()))
}

async fn cancel(args: IdArgs, json: bool) -> anyhow::Result<()> {
    let (client, _events) = args.conn.connect().await?;
    client
        .cancel_run(args.id)
        .await
        .map_err(run_error(args.id))?;
    client.close().await;
    if json {
        return output::print_json(&serde_json::json!({ "run": args.id }));
    }
    output::print(&format!("cancel requested for run {}\n", args.id))
}

/// Replays the run's stored output from the start, then stops — or, with
/// `--follow`, goes on until the run ends, reconnecting and resuming if the
/// connection drops or the hub restarts.
async fn output_of(args: OutputArgs) -> anyhow::Result<()> {
    let connection = args.conn.connect().await?;
    let mut follower = args.conn.follow(connection, args.id);
    let mut printer = Printer::new(false);
    loop {
        let event = event_or_error(follower.next().await, args.id)?;
        match printer.print(event).await.context("writing output")? {
            Step::Synced if !args.follow => break,
            Step::Finished(_) => break,
            Step::Synced | Step::Continue => {}
        }
    }
    follower.close().await;
    Ok(())
}

fn run_table(runs: &[RunInfo], now_ms: u64) -> String {
    let mut table = Table::new(&["ID", "AGENT", "STATE", "EXIT", "CREATED", "COMMAND"]);
    for run in runs {
        table.push(vec![
            run.id.to_string(),
            run.agent.to_string(),
            run.state.to_string(),
            exit_cell(run),
            output::ago(now_ms, run.created_ms),
            output::truncate(&run.command.display(), MAX_COMMAND_WIDTH),
        ]);
    }
    table.render()
}

fn exit_cell(run: &RunInfo) -> String {
    match (run.exit_code, run.signal) {
        (Some(code), _) => code.to_string(),
        (None, Some(signal)) => format!("signal {signal}"),
        (None, None) => "-".to_owned(),
    }
}

fn run_fields(run: &RunInfo, now_ms: u64) -> String {
    let time = |ms: Option<u64>| output::or_dash(ms.map(|ms| output::timestamp(now_ms, ms)));
    let mut fields = vec![
        ("id", run.id.to_string()),
        ("agent", run.agent.to_string()),
        ("command", run.command.display()),
        ("state", run.state.to_string()),
        ("exit_code", output::or_dash(run.exit_code)),
        ("signal", output::or_dash(run.signal)),
        ("error", output::or_dash(run.error.as_deref())),
        ("pid", output::or_dash(run.pid)),
        ("output_bytes", run.output_bytes.to_string()),
        ("output_truncated", run.output_truncated.to_string()),
        ("created", output::timestamp(now_ms, run.created_ms)),
    ];
    if let Some(expires_ms) = run.expires_ms {
        fields.push(("expires", output::timestamp(now_ms, expires_ms)));
    }
    fields.push(("started", time(run.started_ms)));
    fields.push(("finished", time(run.finished_ms)));
    output::fields(&fields)
}

#[cfg(test)]
mod tests {
    use muster_proto::CommandSpec;

    use super::*;

    fn run() -> RunInfo {
        let json = serde_json::json!({
            "id": RunId::generate(), "agent": "web-1", "command": {"shell": "echo hi"},
            "priority": 0, "state": "completed", "exit_code": 3, "created_ms": 1_000,
        });
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn run_table_shows_exit_and_command() {
        let text = run_table(&[run()], 4_000);
        let row = text.lines().nth(1).unwrap();
        for cell in ["web-1", "completed", "3", "3s ago", "echo hi"] {
            assert!(row.contains(cell), "{row:?} lacks {cell}");
        }
    }

    #[test]
    fn run_fields_name_every_outcome_field() {
        let mut killed = run();
        killed.exit_code = None;
        killed.signal = Some(9);
        killed.command = CommandSpec::Argv(vec!["sleep".into(), "9".into()]);
        let text = run_fields(&killed, 4_000);
        assert!(text.contains("signal:"), "{text}");
        assert!(
            text.lines()
                .any(|l| l.starts_with("exit_code:") && l.ends_with('-')),
            "{text}"
        );
        assert!(text.contains("sleep 9"), "{text}");
        assert_eq!(exit_cell(&killed), "signal 9");
        assert!(!text.contains("expires:"), "{text}");
    }

    #[test]
    fn run_fields_show_expiry_when_the_run_has_one() {
        let mut queued = run();
        queued.state = RunState::Queued;
        queued.expires_ms = Some(3_600_000);
        let text = run_fields(&queued, 600_000);
        let line = text.lines().find(|l| l.starts_with("expires:")).unwrap();
        assert!(line.ends_with("(in 50m)"), "{line}");
    }
}
