//! Agent events against the scripted hub: what `emit` publishes on the agent's
//! socket reaches the hub in order, refusals reach nothing, events wait for
//! `connection.ack`, and runs learn the socket and their id from the environment.

use std::path::{Path, PathBuf};

use muster_agent::{SOCKET_FILE_NAME, emit};
use muster_proto::messages::{AgentEvent, RunOutcome};
use muster_proto::{AgentToHub, HubToAgent, RunId};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::fake_hub::{
    Harness, HubSide, ack, recv_text, recv_until_exited, round_trip, run_start, send, within,
};

fn socket_in(dir: &Path) -> PathBuf {
    dir.join(SOCKET_FILE_NAME)
}

/// The next message from the agent, which must be an event.
async fn recv_event(ws: &mut HubSide) -> AgentEvent {
    match recv_text(ws).await.msg {
        AgentToHub::Event(event) => event,
        other => panic!("expected an event, got {other:?}"),
    }
}

#[tokio::test]
async fn emitted_events_reach_the_hub_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let harness = Harness::start_in(Some(dir.path())).await;
    let mut ws = harness.accept_acked(60_000, 120_000).await;
    let socket = socket_in(dir.path());
    let run = RunId::generate();
    for n in 0..3 {
        let run = (n == 1).then_some(run);
        within(emit(&socket, "site.operation", json!({ "n": n }), run))
            .await
            .unwrap();
    }
    for n in 0..3 {
        let event = recv_event(&mut ws).await;
        assert_eq!(event.kind, "site.operation");
        assert_eq!(event.data, json!({ "n": n }));
        assert_eq!(event.run, (n == 1).then_some(run));
        assert!(event.ts_ms > 0);
    }
    harness.stop(ws).await;
    assert!(!socket.exists(), "the socket is removed at shutdown");
}

#[tokio::test]
async fn refused_events_reach_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let harness = Harness::start_in(Some(dir.path())).await;
    let mut ws = harness.accept_acked(60_000, 120_000).await;
    let socket = socket_in(dir.path());
    let error = within(emit(&socket, "Deploy", json!({}), None))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("invalid event type \"Deploy\""), "{error}");
    let error = within(emit(&socket, "site.deploy", json!([1]), None))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("event data must be a JSON object"),
        "{error}"
    );
    // The hub's next message is the answer to its heartbeat: no event came.
    round_trip(&mut ws).await;
    harness.stop(ws).await;
}

#[tokio::test]
async fn one_connection_carries_several_lines_and_bad_json_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let harness = Harness::start_in(Some(dir.path())).await;
    let mut ws = harness.accept_acked(60_000, 120_000).await;
    let stream = within(UnixStream::connect(socket_in(dir.path())))
        .await
        .unwrap();
    let (reader, mut writer) = stream.into_split();
    let mut replies = BufReader::new(reader).lines();
    let lines = "{\"type\":\"a.b\",\"data\":{\"x\":1}}\n{\"type\":\n{\"type\":\"a.c\"}\n";
    writer.write_all(lines.as_bytes()).await.unwrap();
    let mut next = async || within(replies.next_line()).await.unwrap().unwrap();
    assert_eq!(next().await, r#"{"ok":true}"#);
    let malformed = next().await;
    assert!(
        malformed.starts_with(r#"{"ok":false,"error":"malformed event line:"#),
        "{malformed}"
    );
    assert_eq!(next().await, r#"{"ok":true}"#);
    assert_eq!(recv_event(&mut ws).await.kind, "a.b");
    assert_eq!(recv_event(&mut ws).await.kind, "a.c");
    let too_long = format!("{}\n", "x".repeat(muster_agent::MAX_EVENT_LINE_BYTES + 1));
    writer.write_all(too_long.as_bytes()).await.unwrap();
    assert!(next().await.contains("event line is longer than"));
    assert_eq!(within(replies.next_line()).await.unwrap(), None);
    harness.stop(ws).await;
}

#[tokio::test]
async fn events_wait_for_the_connection_ack() {
    let dir = tempfile::tempdir().unwrap();
    let harness = Harness::start_in(Some(dir.path())).await;
    let mut ws = harness.accept().await;
    let socket = socket_in(dir.path());
    within(emit(&socket, "queue.early", json!({}), None))
        .await
        .unwrap();
    send(&mut ws, HubToAgent::ConnectionAck(ack(60_000, 120_000))).await;
    assert_eq!(recv_event(&mut ws).await.kind, "queue.early");
    harness.stop(ws).await;
}

#[tokio::test]
async fn runs_get_the_socket_and_their_id_in_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("env.txt");
    let harness = Harness::start_in(Some(dir.path())).await;
    let mut ws = harness.accept_acked(60_000, 120_000).await;
    let run = RunId::generate();
    let script = format!(
        r#"printf '%s\n%s' "$MUSTER_AGENT_SOCKET" "$MUSTER_RUN_ID" > '{}'"#,
        out.display()
    );
    send(&mut ws, run_start(run, &script)).await;
    let (_, exited) = recv_until_exited(&mut ws).await;
    assert_eq!(exited.outcome, RunOutcome::Completed);
    assert_eq!(exited.exit_code, Some(0));
    let expected = format!("{}\n{run}", socket_in(dir.path()).display());
    assert_eq!(std::fs::read_to_string(&out).unwrap(), expected);
    harness.stop(ws).await;
}

#[tokio::test]
async fn emit_names_a_missing_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = socket_in(dir.path());
    let error = emit(&socket, "a.b", json!({}), None).await.unwrap_err();
    let message = format!("{error:#}");
    assert!(
        message.contains(&format!(
            "cannot reach the muster agent at {}",
            socket.display()
        )),
        "{message}"
    );
}
