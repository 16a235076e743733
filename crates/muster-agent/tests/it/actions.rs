//! Declared actions against the scripted hub: the hello announces them, a call
//! runs exactly the declared argument vector, a refused call runs nothing and
//! ends `rejected`, and an actions-only agent refuses raw commands.

use std::collections::BTreeMap;
use std::path::Path;

use muster_agent::{ActionSet, AgentConfig, Outgoing};
use muster_proto::actions::{ActionCall, ExecMode};
use muster_proto::messages::{RunExited, RunOutcome};
use muster_proto::{CommandSpec, ErrorCode, OutputStream, RunId};

use crate::fake_hub::{
    Harness, HubSide, recv_until_exited, round_trip, run_command, run_start, send, send_run_ack,
};

/// `pair` prints its two parameters, passed to a literal script as
/// positional arguments; `mark` creates `marker` (and so proves it ran).
fn actions(marker: &Path) -> ActionSet {
    let text = format!(
        r#"
        [actions.pair]
        description = "print a and b"
        argv = ["/bin/sh", "-c", "printf '%s|%s' \"$1\" \"$2\"", "sh", "{{a}}", "{{b}}"]
        [actions.pair.params.a]
        type = "string"
        [actions.pair.params.b]
        type = "string"
        default = "B"

        [actions.mark]
        argv = ["/bin/sh", "-c", "touch \"$0\"; printf %s \"$1\"", {marker:?}, "{{count}}"]
        timeout = "1m"
        [actions.mark.params.count]
        type = "int"
        min = 1
        max = 3
        "#
    );
    AgentConfig::from_toml(&text).unwrap().actions
}

fn call(name: &str, params: &[(&str, &str)]) -> CommandSpec {
    CommandSpec::Action(ActionCall {
        name: name.to_owned(),
        params: params
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>(),
    })
}

/// Runs `command` to its exit report and acknowledges it; returns the report
/// and the messages before it.
async fn run(ws: &mut HubSide, command: CommandSpec) -> (RunExited, Vec<Outgoing>) {
    let run = RunId::generate();
    send(ws, run_command(run, command)).await;
    let (received, exited) = recv_until_exited(ws).await;
    assert_eq!(exited.run, run);
    let frames = received
        .iter()
        .filter(|outgoing| matches!(outgoing, Outgoing::Output(_)))
        .count();
    send_run_ack(ws, run, frames as u64, true).await;
    (exited, received)
}

fn stdout(received: &[Outgoing]) -> String {
    let bytes: Vec<u8> = received
        .iter()
        .filter_map(|outgoing| match outgoing {
            Outgoing::Output(frame) if frame.header.stream == OutputStream::Stdout => {
                Some(frame.payload.to_vec())
            }
            _ => None,
        })
        .flatten()
        .collect();
    String::from_utf8(bytes).unwrap()
}

/// Asserts that the run was rejected with `code`, before anything started.
fn assert_rejected(exited: &RunExited, received: &[Outgoing], code: ErrorCode) -> String {
    assert_eq!(exited.outcome, RunOutcome::Rejected, "{exited:?}");
    assert_eq!(exited.error_code, Some(code), "{exited:?}");
    assert_eq!(exited.exit_code, None);
    assert!(received.is_empty(), "nothing may start: {received:?}");
    exited.error.clone().expect("a rejection says why")
}

#[tokio::test]
async fn hello_announces_the_actions_and_exec_mode() {
    let dir = tempfile::tempdir().unwrap();
    let set = actions(&dir.path().join("marker"));
    let harness = Harness::start_with_actions(ExecMode::ActionsOnly, set.clone()).await;
    let (mut ws, hello) = harness.accept_ack().await;
    assert_eq!(hello.exec, ExecMode::ActionsOnly);
    assert_eq!(hello.capabilities, ["exec", "sessions", "actions"]);
    assert_eq!(hello.actions, set.info());
    let names: Vec<_> = hello.actions.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["mark", "pair"]);
    assert_eq!(hello.actions[0].timeout_ms, Some(60_000));
    round_trip(&mut ws).await;
    harness.stop(ws).await;

    let plain = Harness::start().await;
    let (mut ws, hello) = plain.accept_ack().await;
    assert_eq!(hello.exec, ExecMode::Any);
    assert_eq!(hello.capabilities, ["exec", "sessions"]);
    assert!(hello.actions.is_empty());
    round_trip(&mut ws).await;
    plain.stop(ws).await;
}

#[tokio::test]
async fn an_action_runs_exactly_its_declared_argv() {
    let dir = tempfile::tempdir().unwrap();
    let harness = Harness::start_with_actions(ExecMode::Any, actions(&dir.path().join("m"))).await;
    let (mut ws, _) = harness.accept_ack().await;
    let a = "x; echo pwned $(id) `id` > /tmp/nope";
    let (exited, received) = run(&mut ws, call("pair", &[("a", a), ("b", "two words")])).await;
    assert_eq!(exited.outcome, RunOutcome::Completed, "{exited:?}");
    assert_eq!(exited.exit_code, Some(0));
    assert_eq!(stdout(&received), format!("{a}|two words"));
    let (_, received) = run(&mut ws, call("pair", &[("a", "")])).await;
    assert_eq!(stdout(&received), "|B", "the default fills b");
    harness.stop(ws).await;
}

#[tokio::test]
async fn invalid_params_are_rejected_and_nothing_runs() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("marker");
    let harness = Harness::start_with_actions(ExecMode::Any, actions(&marker)).await;
    let (mut ws, _) = harness.accept_ack().await;
    for (command, code, expected) in [
        (
            call("mark", &[("count", "1; touch /tmp/x")]),
            ErrorCode::InvalidParams,
            "parameter \"count\": \"1; touch /tmp/x\" is not a decimal integer",
        ),
        (
            call("mark", &[("count", "4")]),
            ErrorCode::InvalidParams,
            "parameter \"count\": \"4\" is out of range (int 1..=3)",
        ),
        (
            call("mark", &[]),
            ErrorCode::InvalidParams,
            "parameter \"count\" is required (int 1..=3)",
        ),
        (
            call("mark", &[("count", "1"), ("extra", "x")]),
            ErrorCode::InvalidParams,
            "unknown parameter \"extra\" (mark takes: count)",
        ),
        (
            call("rm", &[]),
            ErrorCode::UnknownAction,
            "no action \"rm\" on this agent; it declares: mark, pair",
        ),
    ] {
        let (exited, received) = run(&mut ws, command).await;
        assert_eq!(assert_rejected(&exited, &received, code), expected);
        assert!(!marker.exists(), "a rejected run must not execute");
    }
    // The marker does prove execution: a valid call creates it.
    let (exited, received) = run(&mut ws, call("mark", &[("count", "03")])).await;
    assert_eq!(exited.outcome, RunOutcome::Completed);
    assert_eq!(stdout(&received), "3");
    assert!(marker.exists());
    harness.stop(ws).await;
}

#[tokio::test]
async fn an_action_with_caller_environment_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("marker");
    let harness = Harness::start_with_actions(ExecMode::Any, actions(&marker)).await;
    let (mut ws, _) = harness.accept_ack().await;
    let run = RunId::generate();
    let mut start = run_command(run, call("mark", &[("count", "1")]));
    if let muster_proto::HubToAgent::RunStart(start) = &mut start {
        start.env.insert("PATH".into(), "/tmp".into());
    }
    send(&mut ws, start).await;
    let (received, exited) = recv_until_exited(&mut ws).await;
    let error = assert_rejected(&exited, &received, ErrorCode::InvalidParams);
    assert!(
        error.contains("cannot set environment variables"),
        "{error}"
    );
    assert!(!marker.exists());
    harness.stop(ws).await;
}

#[tokio::test]
async fn a_rejected_run_is_not_claimed_in_the_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("marker");
    let harness = Harness::start_with_actions(ExecMode::Any, actions(&marker)).await;
    let (mut ws, _) = harness.accept_ack().await;
    let run = RunId::generate();
    send(&mut ws, run_command(run, call("mark", &[("count", "9")]))).await;
    let (received, exited) = recv_until_exited(&mut ws).await;
    assert_rejected(&exited, &received, ErrorCode::InvalidParams);
    send_run_ack(&mut ws, run, 0, true).await;
    // The same id may still run: it was never started.
    send(&mut ws, run_command(run, call("mark", &[("count", "2")]))).await;
    let (_, exited) = recv_until_exited(&mut ws).await;
    assert_eq!(exited.outcome, RunOutcome::Completed, "{exited:?}");
    assert!(marker.exists());
    harness.stop(ws).await;
}

#[tokio::test]
async fn an_actions_only_agent_refuses_raw_commands_and_runs_actions() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("marker");
    let harness = Harness::start_with_actions(ExecMode::ActionsOnly, actions(&marker)).await;
    let (mut ws, _) = harness.accept_ack().await;
    let touch = format!("touch '{}'", marker.display());
    let raw_argv = CommandSpec::Argv(vec!["/usr/bin/touch".into(), marker.display().to_string()]);
    for command in [CommandSpec::Shell(touch), raw_argv] {
        let run = RunId::generate();
        send(&mut ws, run_command(run, command)).await;
        let (received, exited) = recv_until_exited(&mut ws).await;
        let error = assert_rejected(&exited, &received, ErrorCode::CommandsDisabled);
        assert_eq!(
            error,
            "this agent runs declared actions only (exec = \"actions-only\"); raw commands are refused"
        );
        send_run_ack(&mut ws, run, 0, true).await;
        assert!(!marker.exists(), "a raw command must not execute");
    }
    let (exited, received) = run(&mut ws, call("mark", &[("count", "2")])).await;
    assert_eq!(exited.outcome, RunOutcome::Completed, "{exited:?}");
    assert_eq!(stdout(&received), "2");
    assert!(marker.exists());
    harness.stop(ws).await;
}

#[tokio::test]
async fn the_action_timeout_bounds_the_run() {
    let set = AgentConfig::from_toml(
        r#"
        [actions.nap]
        argv = ["sleep", "30"]
        timeout = "300ms"
        "#,
    )
    .unwrap()
    .actions;
    let harness = Harness::start_with_actions(ExecMode::Any, set).await;
    let (mut ws, _) = harness.accept_ack().await;
    let began = std::time::Instant::now();
    let (exited, _) = run(&mut ws, call("nap", &[])).await;
    assert_eq!(exited.outcome, RunOutcome::TimedOut, "{exited:?}");
    assert!(began.elapsed() < std::time::Duration::from_secs(10));
    harness.stop(ws).await;
}

#[tokio::test]
async fn raw_commands_still_run_on_an_agent_with_actions() {
    let dir = tempfile::tempdir().unwrap();
    let harness = Harness::start_with_actions(ExecMode::Any, actions(&dir.path().join("m"))).await;
    let (mut ws, _) = harness.accept_ack().await;
    let run = RunId::generate();
    send(&mut ws, run_start(run, "printf raw")).await;
    let (received, exited) = recv_until_exited(&mut ws).await;
    assert_eq!(exited.outcome, RunOutcome::Completed);
    assert_eq!(stdout(&received), "raw");
    harness.stop(ws).await;
}
