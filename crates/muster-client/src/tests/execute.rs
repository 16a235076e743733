//! `Client::execute` against a fake hub: the output of both streams across
//! drops before and after the run is accepted, a rejected run, and a refused
//! one.

use std::time::Duration;

use muster_proto::messages::{ErrorData, RunAccepted, RunEnvelope, StreamSynced, Subscribed};
use muster_proto::{
    AgentName, Channel, ClientToHub, CommandSpec, Envelope, ErrorCode, HubToClient, OutputStream,
    RunId, RunInfo, RunState,
};

use super::fake_hub::{HubSide, accept, close_code, listen, output_on, recv, send};
use crate::{Client, ExecuteError};

/// Bound on a test that fails by hanging.
const TEST_TIMEOUT: Duration = Duration::from_secs(10);

fn run_info(id: RunId, state: RunState, extra: serde_json::Value) -> RunInfo {
    let mut json = serde_json::json!({
        "id": id, "agent": "web-1", "command": {"argv": ["sh"]},
        "priority": 0, "state": state, "created_ms": 1_000,
    });
    json.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    serde_json::from_value(json).unwrap()
}

/// Reads the next `run.create` and answers it with `run` accepted.
async fn accept_create(hub: &mut HubSide, run: RunId) -> muster_proto::messages::RunCreate {
    let request = recv(hub).await;
    let ClientToHub::RunCreate(create) = request.msg else {
        panic!("expected run.create, got {:?}", request.msg)
    };
    let accepted = HubToClient::RunAccepted(RunAccepted {
        run: run_info(run, RunState::Queued, serde_json::json!({})),
        created: true,
    });
    send(hub, Envelope::reply(request.id, accepted)).await;
    create
}

/// Answers the next `subscribe`, checking it asks for `run` from `since`.
async fn answer_subscribe(hub: &mut HubSide, run: RunId, since: u64, info: RunInfo) {
    let request = recv(hub).await;
    let ClientToHub::Subscribe(subscribe) = request.msg else {
        panic!("expected subscribe, got {:?}", request.msg)
    };
    assert_eq!(subscribe.channel, Channel::Run(run).to_string());
    assert_eq!(subscribe.since, Some(since));
    let subscribed = Subscribed {
        channel: subscribe.channel,
        run: Some(info),
        next_seq: None,
    };
    send(
        hub,
        Envelope::reply(request.id, HubToClient::Subscribed(subscribed)),
    )
    .await;
}

async fn synced(hub: &mut HubSide, run: RunId, next_seq: u64) {
    let synced = HubToClient::StreamSynced(StreamSynced {
        channel: Channel::Run(run).to_string(),
        next_seq,
        truncated: false,
    });
    send(hub, Envelope::event(Channel::Run(run), synced)).await;
}

fn agent() -> AgentName {
    AgentName::new("web-1").unwrap()
}

#[tokio::test]
async fn execute_returns_both_streams_across_drops() {
    let (listener, url) = listen().await;
    let run = RunId::generate();
    tokio::spawn(async move {
        // The client's own connection drops before the hub answers.
        let mut hub = accept(&listener).await;
        let first = recv(&mut hub).await;
        drop(hub);
        let mut hub = accept(&listener).await;
        let create = accept_create(&mut hub, run).await;
        let ClientToHub::RunCreate(first) = first.msg else {
            panic!("expected run.create")
        };
        assert_eq!(
            first, create,
            "the same request, key and all, is sent again"
        );
        assert!(create.request.idempotency_key.is_some());
        assert_eq!(create.request.timeout_ms, Some(30_000));
        assert_eq!(create.request.ttl_ms, Some(30_000));
        assert!(
            !create.subscribe,
            "the creating connection stays unsubscribed"
        );
        close_code(&mut hub).await;
        drop(hub);

        // The follower's connection, cut mid-run.
        let mut hub = accept(&listener).await;
        let running = run_info(run, RunState::Running, serde_json::json!({}));
        answer_subscribe(&mut hub, run, 0, running.clone()).await;
        output_on(&mut hub, run, OutputStream::Stdout, 0, b"out\n").await;
        output_on(&mut hub, run, OutputStream::Stderr, 1, b"err\n").await;
        synced(&mut hub, run, 2).await;
        drop(hub);
        let mut hub = accept(&listener).await;
        answer_subscribe(&mut hub, run, 2, running).await;
        output_on(&mut hub, run, OutputStream::Stderr, 1, b"err\n").await;
        synced(&mut hub, run, 2).await;
        output_on(&mut hub, run, OutputStream::Stdout, 2, b"\xffmore\n").await;
        let done = run_info(
            run,
            RunState::Completed,
            serde_json::json!({"exit_code": 3, "output_truncated": true}),
        );
        let status = HubToClient::RunStatus(RunEnvelope { run: done });
        send(&mut hub, Envelope::event(Channel::Run(run), status)).await;
        close_code(&mut hub).await;
    });
    let (client, _events) = Client::connect(&url, "tok").await.unwrap();
    let command = CommandSpec::Argv(vec!["sh".into()]);
    let web_1 = agent();
    let executed = client.execute(&web_1, command, Duration::from_secs(30));
    let output = tokio::time::timeout(TEST_TIMEOUT, executed)
        .await
        .expect("execute hung")
        .unwrap();
    assert_eq!(output.run, run);
    assert_eq!(output.stdout, b"out\n\xffmore\n");
    assert_eq!(output.stderr, b"err\n");
    assert_eq!(
        (output.state, output.exit_code),
        (RunState::Completed, Some(3))
    );
    assert!(output.truncated);
    assert!(!output.success());
}

#[tokio::test]
async fn execute_tells_a_refused_run_from_a_rejected_one() {
    let (listener, url) = listen().await;
    let run = RunId::generate();
    tokio::spawn(async move {
        let mut hub = accept(&listener).await;
        let request = recv(&mut hub).await;
        let error = ErrorData::new(ErrorCode::AgentNotFound, "no agent named web-1");
        send(
            &mut hub,
            Envelope::reply(request.id, HubToClient::Error(error)),
        )
        .await;
        accept_create(&mut hub, run).await;
        let mut follower = accept(&listener).await;
        let rejected = run_info(
            run,
            RunState::Rejected,
            serde_json::json!({"error_code": "COMMANDS_DISABLED", "error": "actions only"}),
        );
        answer_subscribe(&mut follower, run, 0, rejected).await;
        synced(&mut follower, run, 0).await;
        close_code(&mut follower).await;
        close_code(&mut hub).await;
    });
    let (client, _events) = Client::connect(&url, "tok").await.unwrap();
    let command = || CommandSpec::Shell("true".into());
    let refused = client
        .execute(&agent(), command(), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        matches!(refused, ExecuteError::NotCreated(_)),
        "{refused:?}"
    );
    assert_eq!(refused.code(), Some(ErrorCode::AgentNotFound));
    let web_1 = agent();
    let executed = client.execute(&web_1, command(), Duration::from_secs(5));
    let output = tokio::time::timeout(TEST_TIMEOUT, executed)
        .await
        .expect("execute hung")
        .unwrap();
    assert_eq!(output.state, RunState::Rejected);
    assert_eq!(output.error_code, Some(ErrorCode::CommandsDisabled));
    assert!(output.stdout.is_empty() && !output.success());
    client.close().await;
}
