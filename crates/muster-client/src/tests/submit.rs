//! The retrying `run.create` and `job.create` against a fake hub that drops
//! the connection before it answers.

use std::time::Duration;

use muster_proto::jobs::{JobInfo, JobSpec};
use muster_proto::messages::{ErrorData, JobAccepted, JobCreate, RunAccepted};
use muster_proto::types::RunRequest;
use muster_proto::{
    AgentName, ClientToHub, CommandSpec, Envelope, ErrorCode, HubToClient, JobId, RunId, RunInfo,
    RunState,
};

use super::fake_hub::{accept, close_code, listen, recv, send};
use crate::{Client, ClientError};

/// Bound on a test that fails by hanging.
const TEST_TIMEOUT: Duration = Duration::from_secs(5);

fn run_info(id: RunId, state: RunState) -> RunInfo {
    let json = serde_json::json!({
        "id": id, "agent": "web-1", "command": {"argv": ["true"]},
        "priority": 0, "state": state, "created_ms": 1_000,
    });
    serde_json::from_value(json).unwrap()
}

#[tokio::test]
async fn run_create_is_resent_with_the_same_key_after_a_drop() {
    let (listener, url) = listen().await;
    let run = RunId::generate();
    tokio::spawn(async move {
        let mut hub = accept(&listener).await;
        let first = recv(&mut hub).await;
        drop(hub);
        let mut hub = accept(&listener).await;
        let second = recv(&mut hub).await;
        let (ClientToHub::RunCreate(first), ClientToHub::RunCreate(again)) =
            (first.msg, second.msg)
        else {
            panic!("expected two run.create")
        };
        assert!(first.request.idempotency_key.is_some());
        assert_eq!(first, again, "the re-sent request differs");
        let accepted = HubToClient::RunAccepted(RunAccepted {
            run: run_info(run, RunState::Queued),
            created: false,
        });
        send(&mut hub, Envelope::reply(second.id, accepted)).await;
        close_code(&mut hub).await;
    });
    let connection = Client::connect(&url, "tok").await.unwrap();
    let request = RunRequest {
        agent: AgentName::new("web-1").unwrap(),
        command: CommandSpec::Argv(vec!["true".into()]),
        env: Default::default(),
        cwd: None,
        timeout_ms: None,
        priority: 0,
        idempotency_key: None,
        ttl_ms: None,
        session: None,
    };
    let give_up = Duration::from_secs(10);
    let (_client, _events, accepted) =
        crate::create_run_retrying(connection, &url, "tok", request, true, give_up)
            .await
            .unwrap();
    assert_eq!(accepted.run.id, run);
    assert!(!accepted.created);
}

#[tokio::test]
async fn run_create_errors_from_the_hub_are_not_retried() {
    let (listener, url) = listen().await;
    tokio::spawn(async move {
        let mut hub = accept(&listener).await;
        let request = recv(&mut hub).await;
        let error = ErrorData::new(ErrorCode::AgentNotFound, "agent \"x\" not found");
        send(
            &mut hub,
            Envelope::reply(request.id, HubToClient::Error(error)),
        )
        .await;
        close_code(&mut hub).await;
    });
    let connection = Client::connect(&url, "tok").await.unwrap();
    let request = RunRequest {
        agent: AgentName::new("x").unwrap(),
        command: CommandSpec::Shell("true".into()),
        env: Default::default(),
        cwd: None,
        timeout_ms: None,
        priority: 0,
        idempotency_key: Some("k".into()),
        ttl_ms: Some(0),
        session: None,
    };
    let err = crate::create_run_retrying(connection, &url, "tok", request, false, TEST_TIMEOUT)
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Hub(_)), "{err:?}");
}

#[tokio::test]
async fn job_create_is_resent_with_the_same_key_after_a_drop() {
    let (listener, url) = listen().await;
    let spec: JobSpec = serde_json::from_value(serde_json::json!({
        "selector": "role=web",
        "steps": [{"name": "run", "command": {"argv": ["true"]}}],
    }))
    .unwrap();
    let job: JobInfo = serde_json::from_value(serde_json::json!({
        "id": JobId::generate(),
        "spec": spec,
        "state": "running",
        "progress": {"total": 1, "pending": 1, "queued": 0, "running": 0,
                     "succeeded": 0, "failed": 0, "skipped": 0, "cancelled": 0},
        "batch_limit": 1,
        "created_ms": 1,
    }))
    .unwrap();
    let reply = job.clone();
    tokio::spawn(async move {
        let mut hub = accept(&listener).await;
        let first = recv(&mut hub).await;
        drop(hub);
        let mut hub = accept(&listener).await;
        let second = recv(&mut hub).await;
        let (ClientToHub::JobCreate(first), ClientToHub::JobCreate(again)) =
            (first.msg, second.msg)
        else {
            panic!("expected two job.create")
        };
        assert!(first.idempotency_key.is_some());
        assert_eq!(first, again, "the re-sent request differs");
        let accepted = HubToClient::JobAccepted(JobAccepted {
            job: reply,
            created: false,
        });
        send(&mut hub, Envelope::reply(second.id, accepted)).await;
        close_code(&mut hub).await;
    });
    let connection = Client::connect(&url, "tok").await.unwrap();
    let create = JobCreate {
        spec,
        subscribe: true,
        idempotency_key: None,
    };
    let give_up = Duration::from_secs(10);
    let (_client, _events, accepted) =
        crate::create_job_retrying(connection, &url, "tok", create, give_up)
            .await
            .unwrap();
    assert_eq!(accepted.job.id, job.id);
    assert!(!accepted.created);
}
