//! Per-agent concurrency and priority order, observed through the client crate.

use std::collections::BTreeMap;

use muster_client::Event;
use muster_proto::types::RunRequest;
use muster_proto::{AgentName, CommandSpec, HubToClient, RunId, RunState};

use crate::fixture::{TestHub, WAIT};

fn shell(agent: &str, script: String, priority: i32) -> RunRequest {
    RunRequest {
        priority,
        ..RunRequest::new(AgentName::new(agent).unwrap(), CommandSpec::Shell(script))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_runs_start_in_priority_order_and_clients_see_positions() {
    let hub = TestHub::start().await;
    let _agent = hub.agent("solo", 1).await;
    let (client, mut events) = hub.client().await;
    let dir = tempfile::tempdir().unwrap();
    let order = dir.path().join("order");
    let gate = dir.path().join("gate");

    // The first run holds the only slot until the test creates the gate file.
    let blocker = format!("while [ ! -e {} ]; do sleep 0.05; done", gate.display());
    let first = client
        .create_run(shell("solo", blocker, 0), true)
        .await
        .unwrap()
        .run
        .id;
    let mut queued = Vec::new();
    for (label, priority) in [("low", -10), ("normal", 0), ("high", 10)] {
        let script = format!("echo {label} >> {}", order.display());
        let accepted = client
            .create_run(shell("solo", script, priority), true)
            .await
            .unwrap();
        assert_eq!(accepted.run.state, RunState::Queued);
        queued.push((label, accepted.run.id));
    }
    std::fs::write(&gate, b"").unwrap();

    let mut positions: BTreeMap<RunId, Vec<u32>> = BTreeMap::new();
    let mut finished = 0;
    tokio::time::timeout(WAIT, async {
        while finished < 4 {
            match events.recv().await.expect("event stream open") {
                Event::Message(env) => match env.msg {
                    HubToClient::RunQueue(q) => {
                        positions.entry(q.run).or_default().push(q.position)
                    }
                    HubToClient::RunStatus(s) if s.run.state.is_terminal() => {
                        assert_eq!(s.run.state, RunState::Completed, "{:?}", s.run);
                        finished += 1;
                    }
                    _ => {}
                },
                Event::Output(_) => {}
                Event::Closed { reason, .. } => panic!("closed: {reason}"),
            }
        }
    })
    .await
    .expect("all four runs finish");

    assert_eq!(
        std::fs::read_to_string(&order).unwrap(),
        "high\nnormal\nlow\n"
    );
    assert!(
        !positions.contains_key(&first),
        "the first run never waited"
    );
    let low = &positions[&queued[0].1];
    let high = &positions[&queued[2].1];
    assert_eq!(
        low.first(),
        Some(&1),
        "low was first in line when it arrived: {low:?}"
    );
    assert!(
        low.contains(&3),
        "low moved back behind normal and high: {low:?}"
    );
    assert_eq!(high, &vec![1], "high went straight to the front: {high:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_returns_the_first_run_and_queued_runs_cancel_at_once() {
    let hub = TestHub::start().await;
    let _agent = hub.agent("solo", 1).await;
    let (client, _events) = hub.client().await;
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("gate");
    let blocker = format!("while [ ! -e {} ]; do sleep 0.05; done", gate.display());

    let mut request = shell("solo", blocker, 0);
    request.idempotency_key = Some("deploy-42".into());
    let first = client.create_run(request.clone(), false).await.unwrap();
    let again = client.create_run(request, false).await.unwrap();
    assert!(first.created);
    assert!(!again.created);
    assert_eq!(first.run.id, again.run.id);

    let waiting = client
        .create_run(shell("solo", "true".into(), 0), false)
        .await
        .unwrap()
        .run;
    assert_eq!(waiting.state, RunState::Queued);
    assert_eq!(
        client.run_info(waiting.id).await.unwrap().queue_position,
        Some(1)
    );
    client.cancel_run(waiting.id).await.unwrap();
    assert_eq!(
        client.run_info(waiting.id).await.unwrap().state,
        RunState::Cancelled
    );
    let again = client.cancel_run(waiting.id).await.unwrap_err();
    assert_eq!(again.code(), Some(muster_proto::ErrorCode::InvalidState));
    std::fs::write(&gate, b"").unwrap();
}
