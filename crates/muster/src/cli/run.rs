//! `muster run TARGET -- CMD…`: run one command on an agent, stream its output
//! live to the local stdout and stderr, and exit with its exit code.
//!
//! Ctrl-C before the run exists exits at once; afterwards the first Ctrl-C
//! asks the hub to cancel the run and keeps streaming until it ends (exit
//! 130), and a second one stops waiting (exit 130 at once).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use muster_client::{Client, ClientError, RunAccepted};
use muster_proto::types::RunRequest;
use muster_proto::{AgentName, CommandSpec, ErrorCode, RunId, RunInfo};
use tokio::signal::unix::{Signal, SignalKind};

use super::exit::{EXIT_CANCELLED, run_exit};
use super::stream::{RunFollower, Step};
use super::{HubConn, agent_error, output, parse, run_error};

/// Arguments of `muster run`.
#[derive(Debug, clap::Args)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    conn: HubConn,
    /// The agent that runs the command.
    target: AgentName,
    /// Kill the command after this long (30s, 5m, 1h).
    #[arg(long, value_name = "DURATION", value_parser = parse::duration)]
    timeout: Option<Duration>,
    /// Queue priority: an integer from -100 to 100, or low, normal, high.
    #[arg(long, value_name = "P", value_parser = parse::priority, default_value = "normal",
          allow_negative_numbers = true)]
    priority: i32,
    /// Print the run id and exit without waiting for the command.
    #[arg(long)]
    detach: bool,
    /// An environment variable for the command, as KEY=VALUE; repeat for several.
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse::key_value)]
    env: Vec<(String, String)>,
    /// Working directory on the agent.
    #[arg(long, value_name = "DIR")]
    cwd: Option<String>,
    /// Join the words after `--` into one string run by /bin/sh -c.
    #[arg(long)]
    shell: bool,
    /// Repeating a request with the same key returns the first run instead of starting another.
    #[arg(long, value_name = "KEY")]
    idempotency_key: Option<String>,
    /// Report queue positions on stderr.
    #[arg(long, short)]
    verbose: bool,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

impl RunArgs {
    fn request(&self) -> RunRequest {
        let command = if self.shell {
            CommandSpec::Shell(self.command.join(" "))
        } else {
            CommandSpec::Argv(self.command.clone())
        };
        RunRequest {
            agent: self.target.clone(),
            command,
            env: self.env.iter().cloned().collect(),
            cwd: self.cwd.clone(),
            timeout_ms: self
                .timeout
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            priority: self.priority,
            idempotency_key: self.idempotency_key.clone(),
        }
    }
}

/// Runs `muster run`.
pub(crate) async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let request = args.request();
    if let Err(why) = request.command.validate() {
        clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("{why}\n")).exit();
    }
    let mut interrupts = Interrupts::install()?;
    let (client, mut events) = tokio::select! {
        connected = args.conn.connect() => connected?,
        _ = interrupts.recv() => return Ok(ExitCode::from(EXIT_CANCELLED)),
    };
    let Some(accepted) = create(&client, request, &args, &mut interrupts).await? else {
        return Ok(ExitCode::from(EXIT_CANCELLED));
    };
    let run = accepted.run;
    if interrupts.count > 0 {
        cancel_in_background(&client, run.id);
    }
    if args.detach {
        output::print(&format!("{}\n", run.id))?;
        client.close().await;
        return Ok(ExitCode::from(if interrupts.count > 0 {
            EXIT_CANCELLED
        } else {
            0
        }));
    }
    // A matched idempotency key returns an earlier run, which may be over:
    // replay it from the start (the writer drops frames seen twice).
    let known_final = if accepted.created {
        None
    } else {
        let subscribed = client
            .subscribe(&run.id.channel(), Some(0))
            .await
            .map_err(run_error(run.id))?;
        subscribed.run.filter(|r| r.state.is_terminal())
    };
    let mut follower = RunFollower::new(run.id, args.verbose);
    if let Some(position) = run.queue_position {
        follower.queued_at(position);
    }
    let Some(finished) = follow(
        &client,
        &mut follower,
        &mut events,
        &mut interrupts,
        run.id,
        known_final,
    )
    .await?
    else {
        return Ok(ExitCode::from(EXIT_CANCELLED));
    };
    client.close().await;
    if interrupts.count > 0 {
        return Ok(ExitCode::from(EXIT_CANCELLED));
    }
    let exit = run_exit(&finished);
    if let Some(message) = exit.message {
        eprintln!("muster: {message}");
    }
    Ok(ExitCode::from(exit.code))
}

/// Creates the run; `None` when a second Ctrl-C said to stop waiting for it.
/// A first Ctrl-C is counted, and the caller cancels the run once it exists.
async fn create(
    client: &Client,
    request: RunRequest,
    args: &RunArgs,
    interrupts: &mut Interrupts,
) -> anyhow::Result<Option<RunAccepted>> {
    let create = client.create_run(request, !args.detach);
    tokio::pin!(create);
    loop {
        tokio::select! {
            result = &mut create => return Ok(Some(result.map_err(agent_error(&args.target))?)),
            count = interrupts.recv() => if count > 1 {
                return Ok(None);
            },
        }
    }
}

/// Streams the run until its terminal status; `None` when a second Ctrl-C
/// said to stop waiting.
async fn follow(
    client: &Client,
    follower: &mut RunFollower,
    events: &mut tokio::sync::mpsc::Receiver<muster_client::Event>,
    interrupts: &mut Interrupts,
    run: RunId,
    mut known_final: Option<RunInfo>,
) -> anyhow::Result<Option<RunInfo>> {
    loop {
        // Only the receive is raced with Ctrl-C: an event is handled to the end,
        // so no output is half written.
        let event = tokio::select! {
            event = events.recv() => event,
            count = interrupts.recv() => {
                if count > 1 {
                    return Ok(None);
                }
                eprintln!("muster: cancelling run {run}; press Ctrl-C again to stop waiting");
                cancel_in_background(client, run);
                continue;
            }
        };
        match follower.handle(event).await? {
            Step::Finished(info) => return Ok(Some(*info)),
            Step::Synced => {
                if let Some(info) = known_final.take() {
                    follower.finish().await?;
                    return Ok(Some(info));
                }
            }
            Step::Continue => {}
        }
    }
}

/// Asks the hub to cancel `run` without blocking the output stream. A run that
/// already ended, or a closed connection, is reported elsewhere.
fn cancel_in_background(client: &Client, run: RunId) {
    let client = client.clone();
    tokio::spawn(async move {
        match client.cancel_run(run).await {
            Ok(()) | Err(ClientError::Closed(_)) => {}
            Err(err) if err.code() == Some(ErrorCode::InvalidState) => {}
            Err(err) => eprintln!("muster: cannot cancel run {run}: {err}"),
        }
    });
}

/// Counts SIGINTs (Ctrl-C) once installed; the default action (exit) is off.
struct Interrupts {
    signal: Signal,
    count: u32,
}

impl Interrupts {
    fn install() -> anyhow::Result<Self> {
        let signal = tokio::signal::unix::signal(SignalKind::interrupt())
            .context("installing the Ctrl-C handler")?;
        Ok(Self { signal, count: 0 })
    }

    /// Waits for the next Ctrl-C and returns how many there have been.
    async fn recv(&mut self) -> u32 {
        if self.signal.recv().await.is_none() {
            std::future::pending::<()>().await;
        }
        self.count += 1;
        self.count
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Harness {
        #[command(flatten)]
        run: RunArgs,
    }

    fn parse(words: &[&str]) -> Result<RunArgs, clap::Error> {
        let base = ["muster-run", "--hub", "http://h:1", "--token", "t"];
        Harness::try_parse_from(base.iter().chain(words)).map(|h| h.run)
    }

    #[test]
    fn words_after_double_dash_become_argv_or_a_shell_string() {
        let args = parse(&["web-1", "--", "echo", "a b", "--flag"]).unwrap();
        let request = args.request();
        assert_eq!(
            request.command,
            CommandSpec::Argv(vec!["echo".into(), "a b".into(), "--flag".into()])
        );
        assert_eq!(request.priority, 0);
        let args = parse(&["web-1", "--shell", "--", "echo", "$HOME", "|", "wc"]).unwrap();
        assert_eq!(
            args.request().command,
            CommandSpec::Shell("echo $HOME | wc".into())
        );
    }

    #[test]
    fn options_fill_the_request() {
        let words = [
            "web-1",
            "--timeout",
            "5m",
            "--priority",
            "-5",
            "--env",
            "A=1",
            "--cwd",
            "/tmp",
            "--idempotency-key",
            "k",
            "--",
            "true",
        ];
        let request = parse(&words).unwrap().request();
        assert_eq!(request.timeout_ms, Some(300_000));
        assert_eq!(request.priority, -5);
        assert_eq!(request.env.get("A").map(String::as_str), Some("1"));
        assert_eq!(request.cwd.as_deref(), Some("/tmp"));
        assert_eq!(request.idempotency_key.as_deref(), Some("k"));
        assert_eq!(
            parse(&["web-1", "--priority", "high", "--", "true"])
                .unwrap()
                .priority,
            10
        );
    }

    #[test]
    fn a_command_is_required_and_bad_values_are_usage_errors() {
        assert!(parse(&["web-1"]).is_err());
        assert!(parse(&["web-1", "--priority", "101", "--", "true"]).is_err());
        assert!(parse(&["web-1", "--timeout", "soon", "--", "true"]).is_err());
        assert!(parse(&["not a name", "--", "true"]).is_err());
    }
}
