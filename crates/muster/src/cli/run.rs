//! `muster run TARGET -- CMD…`: run one command on an agent, stream its output
//! live to the local stdout and stderr, and exit with its exit code. When
//! TARGET is a selector rather than a plain name (or `-l SELECTOR` is given),
//! the command runs as a job of one step on every matching agent, followed by
//! `job_follow`. `muster action` shares all of this through [`Invocation`].
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

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use muster_client::{
    Client, DEFAULT_GIVE_UP_AFTER, Event, RunAccepted, RunFollower, create_run_retrying,
    new_idempotency_key,
};
use muster_proto::jobs::StepSpec;
use muster_proto::messages::StoredEvent;
use muster_proto::types::RunRequest;
use muster_proto::{AgentName, AgentStatus, CommandSpec, RunInfo, RunState};
use tokio::sync::mpsc;

use super::cancel::{Cancel, Interrupts, cancel, cancel_in_background};
use super::exit::{EXIT_CANCELLED, run_exit};
use super::job_follow::{self, JobOptions};
use super::run_events::RunEvents;
use super::stream::{Printer, Step, event_or_error};
use super::target::{self, JobFlags, QueueFlags, Target, Targets, millis};
use super::{HubConn, agent_error, output, parse};

/// Arguments of `muster run`.
#[derive(Debug, clap::Args)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    conn: HubConn,
    #[command(flatten)]
    targets: Targets,
    #[command(flatten)]
    queue: QueueFlags,
    #[command(flatten)]
    run: RunFlags,
    /// An environment variable for the command, as KEY=VALUE; repeat for several.
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse::key_value)]
    env: Vec<(String, String)>,
    /// Working directory on the agent.
    #[arg(long, value_name = "DIR")]
    cwd: Option<String>,
    /// Join the words after `--` into one string run by /bin/sh -c.
    #[arg(long)]
    shell: bool,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

/// Flags of a single run that `run` and `action` share.
#[derive(Debug, clap::Args)]
pub(crate) struct RunFlags {
    /// Kill the command after this long (30s, 5m, 1h).
    #[arg(long, value_name = "DURATION", value_parser = parse::duration)]
    pub(crate) timeout: Option<Duration>,
    /// Report queue positions, and an offline agent, on stderr (single runs).
    #[arg(long, short)]
    pub(crate) verbose: bool,
}

impl RunArgs {
    /// What to run, with every option that shapes the run or the job's step.
    fn invocation(&self) -> Invocation<'_> {
        let command = if self.shell {
            CommandSpec::Shell(self.command.join(" "))
        } else {
            CommandSpec::Argv(self.command.clone())
        };
        Invocation {
            conn: &self.conn,
            job: &self.targets.job,
            queue: &self.queue,
            run: &self.run,
            command,
            step_name: "run".to_owned(),
            env: self.env.iter().cloned().collect(),
            cwd: self.cwd.clone(),
        }
    }
}

/// Runs `muster run`.
pub(crate) async fn run(args: RunArgs, json: bool) -> anyhow::Result<ExitCode> {
    let target = args.targets.resolve()?;
    args.invocation().execute(target, json).await
}

/// A command (or action) and everything that shapes how it runs: what
/// `muster run` and `muster action` share.
pub(crate) struct Invocation<'a> {
    /// How to reach the hub.
    pub(crate) conn: &'a HubConn,
    /// Job flags; only for a selector.
    pub(crate) job: &'a JobFlags,
    /// Priority, time to live, detach.
    pub(crate) queue: &'a QueueFlags,
    /// Timeout, verbosity.
    pub(crate) run: &'a RunFlags,
    /// What to execute.
    pub(crate) command: CommandSpec,
    /// The step's name when it runs as a job.
    pub(crate) step_name: String,
    /// Extra environment variables.
    pub(crate) env: BTreeMap<String, String>,
    /// Working directory.
    pub(crate) cwd: Option<String>,
}

impl Invocation<'_> {
    /// Runs once on a plainly named agent, or as a job of one step on every
    /// agent a selector matches.
    pub(crate) async fn execute(self, target: Target, json: bool) -> anyhow::Result<ExitCode> {
        if let Err(why) = self.command.validate() {
            target::usage_error(why);
        }
        match target {
            Target::Agent(agent) => {
                target::refuse_job_flags(self.job);
                let request = self.request(agent);
                single(self.conn, request, self.queue.detach, self.run.verbose).await
            }
            Target::Selector(selector) => {
                let spec = target::job_spec(&selector, vec![self.step()], self.job, self.queue);
                let options = JobOptions {
                    group: self.job.group,
                    detach: self.queue.detach,
                    json,
                };
                let key = self.queue.idempotency_key.clone();
                job_follow::run_job(self.conn, spec, options, key).await
            }
        }
    }

    /// The run on `agent`; it always carries an idempotency key, so it can be
    /// re-sent safely when the connection drops.
    fn request(&self, agent: AgentName) -> RunRequest {
        RunRequest {
            agent,
            command: self.command.clone(),
            env: self.env.clone(),
            cwd: self.cwd.clone(),
            timeout_ms: self.run.timeout.map(millis),
            priority: self.queue.priority,
            idempotency_key: Some(
                self.queue
                    .idempotency_key
                    .clone()
                    .unwrap_or_else(new_idempotency_key),
            ),
            ttl_ms: self.queue.ttl.map(millis),
            session: None,
        }
    }

    /// The job's one step.
    fn step(&self) -> StepSpec {
        StepSpec {
            name: self.step_name.clone(),
            command: self.command.clone(),
            env: self.env.clone(),
            cwd: self.cwd.clone(),
            timeout_ms: self.run.timeout.map(millis),
            continue_on_failure: false,
        }
    }
}

/// Runs `request` once: creates it (re-sending on a new connection if need
/// be), streams its output and returns its exit code; with `detach`, prints
/// the run id instead.
pub(crate) async fn single(
    conn: &HubConn,
    request: RunRequest,
    detach: bool,
    verbose: bool,
) -> anyhow::Result<ExitCode> {
    let mut interrupts = Interrupts::install()?;
    // Watching the agent's events starts before the run exists, so none the
    // run publishes can be missed.
    let watch = async {
        match detach {
            true => None,
            false => RunEvents::start(conn, &request.agent).await,
        }
    };
    let (connection, mut run_events) =
        tokio::join!(conn.connect_or_interrupt(&mut interrupts), watch);
    let Some(connection) = connection? else {
        return Ok(ExitCode::from(EXIT_CANCELLED));
    };
    let ttl = request.ttl_ms.map(Duration::from_millis);
    let Some((client, events, accepted)) =
        create(connection, request, conn, detach, &mut interrupts).await?
    else {
        return Ok(ExitCode::from(EXIT_CANCELLED));
    };
    let run = accepted.run;
    if detach {
        return detached(client, &run, interrupts.count > 0).await;
    }
    if let Some(watcher) = run_events.as_mut() {
        watcher.set_run(run.id);
    }
    report_offline(&client, &run, verbose, ttl).await;
    let mut follower = conn.follow((client, events), run.id);
    if interrupts.count > 0 {
        cancel_in_background(follower.clients(), Cancel::Run(run.id));
    }
    let mut printer = Printer::new(verbose);
    if let Some(position) = run.queue_position {
        printer.queued_at(position);
    }
    let followed = follow(
        &mut follower,
        &mut printer,
        &mut interrupts,
        run_events.as_mut(),
    )
    .await?;
    let Some(finished) = followed else {
        return Ok(ExitCode::from(EXIT_CANCELLED));
    };
    if let Some(watcher) = run_events {
        for event in watcher.finish().await {
            printer.event(&event).await.context("writing output")?;
        }
    }
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
    conn: &HubConn,
    detach: bool,
    interrupts: &mut Interrupts,
) -> anyhow::Result<Option<(Client, mpsc::Receiver<Event>, RunAccepted)>> {
    let (hub, token) = (&conn.hub, &conn.token.0);
    let subscribe = !detach;
    let agent = request.agent.clone();
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
            result = &mut create => return Ok(Some(result.map_err(agent_error(&agent))?)),
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
        cancel(&client, Cancel::Run(run.id)).await;
    }
    client.close().await;
    Ok(ExitCode::from(if interrupted { EXIT_CANCELLED } else { 0 }))
}

/// Says on stderr that the run waits because its agent is offline — when a
/// person is likely watching (stderr is a terminal) or `--verbose` asked.
async fn report_offline(client: &Client, run: &RunInfo, verbose: bool, ttl: Option<Duration>) {
    if run.state != RunState::Queued || !(verbose || std::io::stderr().is_terminal()) {
        return;
    }
    // A failed lookup only costs the notice.
    if let Ok(agent) = client.agent(&run.agent).await
        && agent.status == AgentStatus::Offline
    {
        eprintln!("muster: {}", offline_notice(run, ttl));
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
    mut run_events: Option<&mut RunEvents>,
) -> anyhow::Result<Option<RunInfo>> {
    let run = follower.run();
    loop {
        // Only the receive is raced with Ctrl-C: an event is handled to the end,
        // so no output is half written.
        let item = tokio::select! {
            item = follower.next() => item,
            event = next_event(&mut run_events) => {
                printer.event(&event).await.context("writing output")?;
                continue;
            }
            count = interrupts.recv() => {
                if count > 1 {
                    return Ok(None);
                }
                eprintln!("muster: cancelling run {run}; press Ctrl-C again to stop waiting");
                cancel_in_background(follower.clients(), Cancel::Run(run));
                continue;
            }
        };
        let event = event_or_error(item, run)?;
        if let Step::Finished(info) = printer.print(event).await.context("writing output")? {
            return Ok(Some(*info));
        }
    }
}

/// The run's next event, if its events are watched; pending otherwise.
async fn next_event(run_events: &mut Option<&mut RunEvents>) -> StoredEvent {
    match run_events {
        Some(watcher) => watcher.next().await,
        None => std::future::pending().await,
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

    /// The single run `muster run` would create for these words.
    fn request(words: &[&str]) -> RunRequest {
        let args = parse(words).unwrap();
        let Ok(Target::Agent(agent)) = args.targets.resolve() else {
            panic!("{words:?} names one agent");
        };
        args.invocation().request(agent)
    }

    #[test]
    fn words_after_double_dash_become_argv_or_a_shell_string() {
        let request = request(&["web-1", "--", "echo", "a b", "--flag"]);
        assert_eq!(
            request.command,
            CommandSpec::Argv(vec!["echo".into(), "a b".into(), "--flag".into()])
        );
        assert_eq!(request.priority, 0);
        let request =
            super::tests::request(&["web-1", "--shell", "--", "echo", "$HOME", "|", "wc"]);
        assert_eq!(
            request.command,
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
        let request = request(&words);
        assert_eq!(request.timeout_ms, Some(300_000));
        assert_eq!(request.priority, -5);
        assert_eq!(request.env.get("A").map(String::as_str), Some("1"));
        assert_eq!(request.cwd.as_deref(), Some("/tmp"));
        assert_eq!(request.idempotency_key.as_deref(), Some("k"));
        assert_eq!(
            parse(&["web-1", "--priority", "high", "--", "true"])
                .unwrap()
                .queue
                .priority,
            10
        );
    }

    #[test]
    fn every_request_carries_an_idempotency_key() {
        let (first, second) = (
            request(&["web-1", "--", "true"]),
            request(&["web-1", "--", "true"]),
        );
        let key = first.idempotency_key.unwrap();
        assert_eq!(key.len(), 32);
        assert!(key.chars().all(|c| c.is_ascii_hexdigit()), "{key}");
        assert_ne!(Some(key), second.idempotency_key);
    }

    #[test]
    fn ttl_becomes_milliseconds_and_may_be_zero() {
        let ttl = |value| request(&["web-1", "--ttl", value, "--", "true"]).ttl_ms;
        assert_eq!(ttl("2h"), Some(7_200_000));
        assert_eq!(ttl("0"), Some(0));
        assert!(parse(&["web-1", "--ttl", "whenever", "--", "true"]).is_err());
        assert_eq!(request(&["web-1", "--", "true"]).ttl_ms, None);
    }

    #[test]
    fn a_selector_makes_a_job_of_one_step_named_run() {
        let args = parse(&[
            "-l",
            "role=web",
            "--batch",
            "2",
            "--fail-fast",
            "--env",
            "A=1",
            "--timeout",
            "1m",
            "--ttl",
            "30s",
            "--",
            "sh",
            "-c",
            "exit 0",
        ])
        .unwrap();
        let Ok(Target::Selector(selector)) = args.targets.resolve() else {
            panic!("a selector");
        };
        let invocation = args.invocation();
        let spec = target::job_spec(
            &selector,
            vec![invocation.step()],
            &args.targets.job,
            &args.queue,
        );
        assert_eq!(spec.selector, "role=web");
        assert_eq!(spec.batch, Some(muster_proto::jobs::BatchSize::Count(2)));
        assert!(spec.fail_fast && !spec.online_only);
        assert_eq!(spec.ttl_ms, Some(30_000));
        let [step] = &spec.steps[..] else {
            panic!("one step")
        };
        assert_eq!(step.name, "run");
        assert_eq!(step.timeout_ms, Some(60_000));
        assert_eq!(step.env.get("A").map(String::as_str), Some("1"));
        let glob = parse(&["web-*", "--", "true"]).unwrap();
        assert!(matches!(glob.targets.resolve(), Ok(Target::Selector(_))));
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
        assert!(parse(&["--", "true"]).is_err(), "a target is required");
        assert!(
            parse(&["web-1", "-l", "web-2", "--", "true"]).is_err(),
            "not both"
        );
        let bad = parse(&["not a name", "--", "true"]).unwrap();
        let err = bad.targets.resolve().unwrap_err();
        assert!(
            err.to_string().starts_with("invalid selector at column 5"),
            "{err}"
        );
    }
}
