//! `muster run TARGET -- CMD…`: run one command on an agent, stream its output
//! live to the local stdout and stderr, and exit with its exit code.
//!
//! The run survives dropped connections and hub restarts: `run.create` always
//! carries an idempotency key (a random one unless `--idempotency-key` is
//! given), so it is re-sent on a new connection until the hub accepts it
//! without ever creating a second run; after that, a `RunFollower` reconnects
//! and resumes the output from the last chunk printed, so every byte is
//! printed once, in order.
//!
//! Ctrl-C before the connection exists exits at once; afterwards the first
//! Ctrl-C asks the hub to cancel the run (once it exists, on the connection in
//! use) and keeps streaming until it ends (exit 130), and a second one stops
//! waiting (exit 130 at once).

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use muster_client::{
    Client, DEFAULT_GIVE_UP_AFTER, Event, RunAccepted, RunFollower, create_run_retrying,
    new_idempotency_key,
};
use muster_proto::types::RunRequest;
use muster_proto::{AgentName, AgentStatus, CommandSpec, RunInfo, RunState};
use tokio::sync::mpsc;

use super::cancel::{Interrupts, cancel, cancel_in_background};
use super::exit::{EXIT_CANCELLED, run_exit};
use super::stream::{Printer, Step, event_or_error};
use super::{HubConn, agent_error, output, parse};

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
    /// How long the run may wait for its agent (offline or busy) before it
    /// expires; 0 runs it only if the agent is online now. The hub's default when absent.
    #[arg(long, value_name = "DURATION", value_parser = parse::ttl)]
    ttl: Option<Duration>,
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
    /// Repeating a request with the same key returns the first run instead of
    /// starting another; a random key is used when absent.
    #[arg(long, value_name = "KEY")]
    idempotency_key: Option<String>,
    /// Report queue positions, and an offline agent, on stderr.
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
            timeout_ms: self.timeout.map(millis),
            priority: self.priority,
            idempotency_key: Some(
                self.idempotency_key
                    .clone()
                    .unwrap_or_else(new_idempotency_key),
            ),
            ttl_ms: self.ttl.map(millis),
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Runs `muster run`.
pub(crate) async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let request = args.request();
    if let Err(why) = request.command.validate() {
        clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("{why}\n")).exit();
    }
    let mut interrupts = Interrupts::install()?;
    let connection = tokio::select! {
        connected = args.conn.connect() => connected?,
        _ = interrupts.recv() => return Ok(ExitCode::from(EXIT_CANCELLED)),
    };
    let Some((client, events, accepted)) =
        create(connection, request, &args, &mut interrupts).await?
    else {
        return Ok(ExitCode::from(EXIT_CANCELLED));
    };
    let run = accepted.run;
    if args.detach {
        return detached(client, &run, interrupts.count > 0).await;
    }
    report_offline(&client, &run, &args).await;
    let mut follower = args.conn.follow((client, events), run.id);
    if interrupts.count > 0 {
        cancel_in_background(follower.clients(), run.id);
    }
    let mut printer = Printer::new(args.verbose);
    if let Some(position) = run.queue_position {
        printer.queued_at(position);
    }
    let Some(finished) = follow(&mut follower, &mut printer, &mut interrupts).await? else {
        return Ok(ExitCode::from(EXIT_CANCELLED));
    };
    follower.close().await;
    if interrupts.count > 0 {
        return Ok(ExitCode::from(EXIT_CANCELLED));
    }
    if finished.output_truncated {
        eprintln!(
            "muster: output was cut at the hub's per-run cap after {} bytes",
            finished.output_bytes
        );
    }
    let exit = run_exit(&finished);
    if let Some(message) = exit.message {
        eprintln!("muster: {message}");
    }
    Ok(ExitCode::from(exit.code))
}

/// Creates the run, re-sending the request if the connection drops first;
/// `None` when a second Ctrl-C said to stop waiting for it. A first Ctrl-C is
/// counted, and the caller cancels the run once it exists.
async fn create(
    connection: (Client, mpsc::Receiver<Event>),
    request: RunRequest,
    args: &RunArgs,
    interrupts: &mut Interrupts,
) -> anyhow::Result<Option<(Client, mpsc::Receiver<Event>, RunAccepted)>> {
    let (hub, token) = (&args.conn.hub, &args.conn.token.0);
    let subscribe = !args.detach;
    let create = create_run_retrying(
        connection,
        hub,
        token,
        request,
        subscribe,
        DEFAULT_GIVE_UP_AFTER,
    );
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

/// `--detach`: prints the run id, cancels the run if Ctrl-C came meanwhile.
async fn detached(client: Client, run: &RunInfo, interrupted: bool) -> anyhow::Result<ExitCode> {
    output::print(&format!("{}\n", run.id))?;
    if interrupted {
        cancel(&client, run.id).await;
    }
    client.close().await;
    Ok(ExitCode::from(if interrupted { EXIT_CANCELLED } else { 0 }))
}

/// Says on stderr that the run waits because its agent is offline — when a
/// person is likely watching (stderr is a terminal) or `--verbose` asked.
async fn report_offline(client: &Client, run: &RunInfo, args: &RunArgs) {
    if run.state != RunState::Queued || !(args.verbose || std::io::stderr().is_terminal()) {
        return;
    }
    // A failed lookup only costs the notice.
    if let Ok(agent) = client.agent(&run.agent).await
        && agent.status == AgentStatus::Offline
    {
        eprintln!("muster: {}", offline_notice(run, args.ttl));
    }
}

/// The line for a run queued for an offline agent; the wait is `ttl`, or what
/// the hub's default gave the run.
fn offline_notice(run: &RunInfo, ttl: Option<Duration>) -> String {
    let from_hub = run
        .expires_ms
        .map(|expires| Duration::from_millis(expires.saturating_sub(run.created_ms)));
    let agent = run.agent.as_str();
    match ttl.or(from_hub) {
        Some(ttl) => {
            let ttl = humantime::format_duration(Duration::from_secs(ttl.as_secs()));
            format!("agent {agent:?} is offline; the run waits up to {ttl} for it")
        }
        None => format!("agent {agent:?} is offline; the run waits for it"),
    }
}

/// Streams the run until its terminal status; `None` when a second Ctrl-C
/// said to stop waiting.
async fn follow(
    follower: &mut RunFollower,
    printer: &mut Printer,
    interrupts: &mut Interrupts,
) -> anyhow::Result<Option<RunInfo>> {
    let run = follower.run();
    loop {
        // Only the receive is raced with Ctrl-C: an event is handled to the end,
        // so no output is half written.
        let item = tokio::select! {
            item = follower.next() => item,
            count = interrupts.recv() => {
                if count > 1 {
                    return Ok(None);
                }
                eprintln!("muster: cancelling run {run}; press Ctrl-C again to stop waiting");
                cancel_in_background(follower.clients(), run);
                continue;
            }
        };
        let event = event_or_error(item, run)?;
        if let Step::Finished(info) = printer.print(event).await.context("writing output")? {
            return Ok(Some(*info));
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use muster_proto::RunId;

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
    fn every_request_carries_an_idempotency_key() {
        let args = parse(&["web-1", "--", "true"]).unwrap();
        let (first, second) = (args.request(), args.request());
        let key = first.idempotency_key.unwrap();
        assert_eq!(key.len(), 32);
        assert!(key.chars().all(|c| c.is_ascii_hexdigit()), "{key}");
        assert_ne!(Some(key), second.idempotency_key);
    }

    #[test]
    fn ttl_becomes_milliseconds_and_may_be_zero() {
        let ttl =
            |value| parse(&["web-1", "--ttl", value, "--", "true"]).map(|a| a.request().ttl_ms);
        assert_eq!(ttl("2h").unwrap(), Some(7_200_000));
        assert_eq!(ttl("0").unwrap(), Some(0));
        assert!(ttl("whenever").is_err());
        assert_eq!(
            parse(&["web-1", "--", "true"]).unwrap().request().ttl_ms,
            None
        );
    }

    #[test]
    fn offline_notice_names_the_wait() {
        let json = serde_json::json!({
            "id": RunId::generate(), "agent": "web-1", "command": {"argv": ["true"]},
            "priority": 0, "state": "queued", "created_ms": 1_000, "expires_ms": 3_601_000,
        });
        let mut run: RunInfo = serde_json::from_value(json).unwrap();
        let from_hub = "agent \"web-1\" is offline; the run waits up to 1h for it";
        assert_eq!(offline_notice(&run, None), from_hub);
        let asked = offline_notice(&run, Some(Duration::from_secs(90)));
        assert_eq!(
            asked,
            "agent \"web-1\" is offline; the run waits up to 1m 30s for it"
        );
        run.expires_ms = None;
        assert_eq!(
            offline_notice(&run, None),
            "agent \"web-1\" is offline; the run waits for it"
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
