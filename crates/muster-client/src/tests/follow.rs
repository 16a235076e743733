//! The resumable run follower against a fake hub that drops connections on
//! purpose.

use std::time::Duration;

use muster_proto::messages::{ErrorData, RunEnvelope, StreamSynced, Subscribed};
use muster_proto::{
    ClientToHub, CloseCode, Envelope, ErrorCode, HubToClient, RunId, RunInfo, RunState,
};
use tokio::net::TcpListener;

use super::fake_hub::{HubSide, accept, close_code, close_with, listen, output, recv, send};
use crate::{FollowError, FollowEvent, FollowOptions, RunFollower};

/// Bound on a test that fails by hanging.
const TEST_TIMEOUT: Duration = Duration::from_secs(5);

fn run_info(id: RunId, state: RunState) -> RunInfo {
    let json = serde_json::json!({
        "id": id, "agent": "web-1", "command": {"argv": ["true"]},
        "priority": 0, "state": state, "created_ms": 1_000,
    });
    serde_json::from_value(json).unwrap()
}

/// Answers the next `subscribe`, checking it resumes from `since`.
async fn answer_subscribe(hub: &mut HubSide, run: RunId, since: u64, state: RunState) {
    let request = recv(hub).await;
    let ClientToHub::Subscribe(subscribe) = request.msg else {
        panic!("expected subscribe, got {:?}", request.msg)
    };
    assert_eq!(subscribe.channel, run.channel().to_string());
    assert_eq!(
        subscribe.since,
        Some(since),
        "resubscribed from the wrong seq"
    );
    let subscribed = Subscribed {
        channel: run.channel().to_string(),
        run: Some(run_info(run, state)),
        next_seq: None,
    };
    let reply = HubToClient::Subscribed(subscribed);
    send(hub, Envelope::reply(request.id, reply)).await;
}

async fn synced(hub: &mut HubSide, run: RunId, next_seq: u64) {
    let channel = run.channel().to_string();
    let synced = HubToClient::StreamSynced(StreamSynced {
        channel: channel.clone(),
        next_seq,
        truncated: false,
    });
    send(hub, Envelope::event(channel, synced)).await;
}

async fn status(hub: &mut HubSide, run: RunId, state: RunState) {
    let status = HubToClient::RunStatus(RunEnvelope {
        run: run_info(run, state),
    });
    send(hub, Envelope::event(run.channel(), status)).await;
}

/// Reads the follower to its end: the payloads, the other events, the error.
async fn drain(mut follower: RunFollower) -> (Vec<u8>, Vec<String>, Option<FollowError>) {
    let (mut bytes, mut events) = (Vec::new(), Vec::new());
    while let Some(item) = follower.next().await {
        match item {
            Ok(FollowEvent::Output(frame)) => bytes.extend_from_slice(&frame.payload),
            Ok(FollowEvent::Synced { next_seq }) => events.push(format!("synced {next_seq}")),
            Ok(FollowEvent::Status(run)) => events.push(format!("status {}", run.state)),
            Ok(FollowEvent::Queued { position }) => events.push(format!("queued {position}")),
            Ok(FollowEvent::Finished(run)) => events.push(format!("finished {}", run.state)),
            Err(err) => return (bytes, events, Some(err)),
        }
    }
    (bytes, events, None)
}

fn start(url: &str, run: RunId) -> RunFollower {
    RunFollower::new(url, "tok", run, FollowOptions::default())
}

#[tokio::test]
async fn resumes_after_drops_with_no_gap_and_no_duplicate() {
    let (listener, url) = listen().await;
    let run = RunId::generate();
    tokio::spawn(async move {
        let mut hub = accept(&listener).await;
        answer_subscribe(&mut hub, run, 0, RunState::Running).await;
        output(&mut hub, run, 0, b"a").await;
        synced(&mut hub, run, 1).await;
        output(&mut hub, run, 1, b"b").await;
        close_with(hub, CloseCode::SLOW_CONSUMER, "read faster").await;

        let mut hub = accept(&listener).await;
        answer_subscribe(&mut hub, run, 2, RunState::Running).await;
        output(&mut hub, run, 1, b"B").await;
        output(&mut hub, run, 2, b"c").await;
        synced(&mut hub, run, 3).await;
        // A drop without a close frame: the transport just ends.
        drop(hub);

        let mut hub = accept(&listener).await;
        answer_subscribe(&mut hub, run, 3, RunState::Running).await;
        synced(&mut hub, run, 3).await;
        output(&mut hub, run, 3, b"d").await;
        status(&mut hub, run, RunState::Completed).await;
        close_with(hub, CloseCode::NORMAL, "").await;
    });
    let (bytes, events, error) = drain(start(&url, run)).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(bytes, b"abcd");
    let expected = [
        "status running",
        "synced 1",
        "synced 3",
        "synced 3",
        "finished completed",
    ];
    assert_eq!(events, expected);
}

#[tokio::test]
async fn an_ended_run_finishes_after_its_replay() {
    let (listener, url) = listen().await;
    let run = RunId::generate();
    tokio::spawn(async move {
        let mut hub = accept(&listener).await;
        answer_subscribe(&mut hub, run, 0, RunState::Failed).await;
        output(&mut hub, run, 0, b"all of it").await;
        synced(&mut hub, run, 1).await;
        close_code(&mut hub).await;
    });
    let (bytes, events, error) = drain(start(&url, run)).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(bytes, b"all of it");
    assert_eq!(events, ["synced 1", "finished failed"]);
}

#[tokio::test]
async fn a_silent_run_is_checked_by_subscribing_again() {
    let (listener, url) = listen().await;
    let run = RunId::generate();
    tokio::spawn(async move {
        let mut hub = accept(&listener).await;
        answer_subscribe(&mut hub, run, 0, RunState::Running).await;
        synced(&mut hub, run, 0).await;
        // The terminal status is never published to this subscription.
        answer_subscribe(&mut hub, run, 0, RunState::Completed).await;
        synced(&mut hub, run, 0).await;
        close_code(&mut hub).await;
    });
    let drained = tokio::time::timeout(TEST_TIMEOUT, drain(start(&url, run)));
    let (_, events, error) = drained.await.expect("the follower waited forever");
    assert!(error.is_none(), "{error:?}");
    let expected = [
        "status running",
        "synced 0",
        "synced 0",
        "finished completed",
    ];
    assert_eq!(events, expected);
}

#[tokio::test]
async fn a_gap_in_the_stream_is_an_error_not_a_skip() {
    let (listener, url) = listen().await;
    let run = RunId::generate();
    tokio::spawn(async move {
        let mut hub = accept(&listener).await;
        answer_subscribe(&mut hub, run, 0, RunState::Running).await;
        output(&mut hub, run, 0, b"a").await;
        output(&mut hub, run, 2, b"c").await;
        close_code(&mut hub).await;
    });
    let (bytes, _, error) = drain(start(&url, run)).await;
    assert_eq!(bytes, b"a");
    let error = error.expect("a gap must end the follower");
    assert!(
        matches!(
            error,
            FollowError::Gap {
                expected: 1,
                got: 2
            }
        ),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "output chunk 1 is missing from the hub's stream"
    );
}

#[tokio::test]
async fn a_fatal_close_ends_the_follower() {
    let (listener, url) = listen().await;
    let run = RunId::generate();
    tokio::spawn(async move {
        let mut hub = accept(&listener).await;
        answer_subscribe(&mut hub, run, 0, RunState::Running).await;
        close_with(hub, CloseCode::REVOKED, "key revoked").await;
        // A follower that reconnected anyway would never get an answer.
        std::future::pending::<()>().await;
        drop(listener);
    });
    let drained = tokio::time::timeout(TEST_TIMEOUT, drain(start(&url, run)));
    let (_, _, error) = drained.await.expect("the follower kept reconnecting");
    let error = error.expect("a fatal close must end the follower");
    assert!(
        matches!(
            error,
            FollowError::FatalClose {
                code: CloseCode::REVOKED,
                ..
            }
        ),
        "{error:?}"
    );
}

#[tokio::test]
async fn an_unknown_run_is_refused_at_once() {
    let (listener, url) = listen().await;
    let run = RunId::generate();
    tokio::spawn(async move {
        let mut hub = accept(&listener).await;
        let request = recv(&mut hub).await;
        let error = ErrorData::new(ErrorCode::UnknownChannel, "no such channel");
        send(
            &mut hub,
            Envelope::reply(request.id, HubToClient::Error(error)),
        )
        .await;
        close_code(&mut hub).await;
    });
    let (_, _, error) = drain(start(&url, run)).await;
    let error = error.expect("an unknown run must end the follower");
    assert!(
        matches!(&error, FollowError::Client(e) if e.code() == Some(ErrorCode::UnknownChannel)),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_hub_that_cannot_reach_its_store_is_asked_again() {
    let (listener, url) = listen().await;
    let run = RunId::generate();
    tokio::spawn(async move {
        let mut hub = accept(&listener).await;
        let request = recv(&mut hub).await;
        let error = ErrorData::new(ErrorCode::StorageUnavailable, "disk full");
        send(
            &mut hub,
            Envelope::reply(request.id, HubToClient::Error(error)),
        )
        .await;
        close_code(&mut hub).await;
        let mut hub = accept(&listener).await;
        answer_subscribe(&mut hub, run, 0, RunState::Completed).await;
        output(&mut hub, run, 0, b"stored").await;
        synced(&mut hub, run, 1).await;
        close_code(&mut hub).await;
    });
    let drained = tokio::time::timeout(TEST_TIMEOUT, drain(start(&url, run)));
    let (bytes, events, error) = drained.await.expect("the follower did not try again");
    assert!(error.is_none(), "{error:?}");
    assert_eq!(bytes, b"stored");
    assert_eq!(events, ["synced 1", "finished completed"]);
}

#[tokio::test]
async fn gives_up_when_the_hub_stays_away() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let options = FollowOptions {
        since: 0,
        give_up_after: Duration::from_millis(300),
    };
    let follower = RunFollower::new(&url, "tok", RunId::generate(), options);
    let (_, _, error) = drain(follower).await;
    let error = error.expect("the follower must give up");
    assert!(matches!(error, FollowError::GaveUp { .. }), "{error:?}");
    assert!(error.to_string().contains("connection refused"), "{error}");
}
