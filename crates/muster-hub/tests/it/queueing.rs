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

/// An agent at its full concurrency that reports every run at once gets an
/// acknowledgement for each and the next `run.start` for each freed slot,
/// all at once. Its socket here takes few bytes while the hub makes those
/// answers, so they wait in the hub's queue for it: they must fit there,
/// and not get the agent dropped as a slow consumer (4008).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_reporting_all_its_runs_at_once_is_not_dropped_for_the_answers() {
    use futures_util::{SinkExt as _, StreamExt as _};
    use muster_proto::messages::{AgentHello, RunExited, RunStarted};
    use muster_proto::{AgentToHub, Envelope, HubToAgent};
    use tokio_tungstenite::tungstenite::Message;

    const SLOTS: usize = 1024;
    // Runs that wait for a slot (under the hub's 1,000 per agent).
    const WAITING: usize = 900;
    let hub = TestHub::start_with(|c| {
        c.rate_messages_per_sec = 0;
        c.rate_commands_per_min = 0;
    })
    .await;
    let name = AgentName::new("burst").unwrap();
    let token = hub.hub.agent_token(&name).await.unwrap();

    // A raw agent on a socket with a small receive buffer.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let addr = hub.url.trim_start_matches("http://").parse().unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(hub.ws_url("/ws/agent"), stream)
        .await
        .unwrap();
    let hello = AgentHello {
        token: token.expose().to_owned(),
        name: Some(name.clone()),
        hostname: "burst".into(),
        os: String::new(),
        arch: String::new(),
        version: String::new(),
        labels: BTreeMap::new(),
        capabilities: vec!["exec".into()],
        exec: Default::default(),
        actions: Vec::new(),
        max_concurrency: SLOTS as u32,
        runs: Vec::new(),
    };
    let text = Envelope::plain(AgentToHub::Hello(hello)).encode();
    ws.send(Message::text(text)).await.unwrap();

    // A run for every slot, and more that wait in the agent's queue, made one
    // after another. Runs start in the order they were made, and the agent
    // reports them in that order: the client follows the last one it will
    // report, to know when the hub has handled every report.
    let (client, mut events) = hub.client().await;
    // Each `run.start` carries 16 KiB, so that what the hub then has for the
    // agent is far more than the sockets between them hold: it waits in the
    // hub's queue.
    let padding = "x".repeat(16 * 1024);
    let mut created = Vec::new();
    for i in 0..SLOTS + WAITING {
        let request = shell("burst", format!("echo {i} {padding}"), 0);
        let accepted = client.create_run(request, i == SLOTS - 1).await.unwrap();
        created.push(accepted.run.id);
    }
    let last_reported = created[SLOTS - 1];

    // Read the first SLOTS starts; answer them all in one write.
    let mut started = Vec::new();
    while started.len() < SLOTS {
        let message = tokio::time::timeout(WAIT, ws.next()).await.unwrap();
        let Some(Ok(Message::Text(text))) = message else {
            panic!("the agent connection ended early: {message:?}");
        };
        if let Ok(Envelope {
            msg: HubToAgent::RunStart(start),
            ..
        }) = Envelope::<HubToAgent>::decode(&text)
        {
            started.push(start.run);
        }
    }
    let report = |msg| Message::text(Envelope::plain(msg).encode());
    for &run in &started {
        ws.feed(report(AgentToHub::RunStarted(RunStarted { run, pid: 1 })))
            .await
            .unwrap();
        let exited = RunExited::completed(run);
        ws.feed(report(AgentToHub::RunExited(exited)))
            .await
            .unwrap();
    }
    ws.flush().await.unwrap();

    // The agent reads nothing until the hub has ended every reported run
    // (and so made every answer to it).
    let ended = async {
        while let Some(event) = events.recv().await {
            if let Event::Message(envelope) = event
                && let HubToClient::RunStatus(status) = envelope.msg
                && status.run.id == last_reported
                && status.run.state.is_terminal()
            {
                return status.run.state;
            }
        }
        panic!("the client's events ended");
    };
    let state = tokio::time::timeout(WAIT, ended).await.unwrap();
    assert_eq!(state, RunState::Completed);

    // Then it gets every answer and the remaining runs' starts, and no close.
    let mut next_starts = 0;
    while next_starts < WAITING {
        let message = tokio::time::timeout(WAIT, ws.next()).await.unwrap();
        match message {
            Some(Ok(Message::Text(text))) => {
                if let Ok(Envelope {
                    msg: HubToAgent::RunStart(start),
                    ..
                }) = Envelope::<HubToAgent>::decode(&text)
                {
                    assert!(created.contains(&start.run));
                    assert!(!started.contains(&start.run), "{} started twice", start.run);
                    next_starts += 1;
                }
            }
            Some(Ok(Message::Close(frame))) => panic!("the hub dropped the agent: {frame:?}"),
            Some(Ok(_)) => {}
            other => panic!("the agent connection ended: {other:?}"),
        }
    }
}
