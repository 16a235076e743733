//! Presence: clients get the agent list on connect, then every status change.

use std::time::{Duration, Instant};

use futures_util::SinkExt as _;
use muster_client::Event;
use muster_proto::{AgentName, AgentStatus, ClientToHub, HubToClient};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::fixture::{TestHub, WAIT};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next `agent.status` event for `name`.
async fn next_status(events: &mut tokio::sync::mpsc::Receiver<Event>, name: &str) -> AgentStatus {
    tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await.expect("events open") {
                Event::Message(env) => match env.msg {
                    HubToClient::AgentStatus(s) if s.agent.name.as_str() == name => {
                        assert_eq!(env.channel.as_deref(), Some("fleet"));
                        return s.agent.status;
                    }
                    _ => {}
                },
                Event::Closed { reason, .. } => panic!("closed: {reason}"),
                Event::Output(_) => {}
            }
        }
    })
    .await
    .expect("an agent.status event")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_see_the_list_on_connect_then_status_changes() {
    let hub = TestHub::start().await;
    let (_client, mut events) = hub.client().await;
    match events.recv().await {
        Some(Event::Message(env)) => match env.msg {
            HubToClient::AgentList(list) => assert!(list.agents.is_empty()),
            other => panic!("expected agent.list first, got {other:?}"),
        },
        other => panic!("expected agent.list first, got {other:?}"),
    }

    let agent = hub.agent("edge-1", 2).await;
    // Registration (offline) then the connection (online).
    let mut status = next_status(&mut events, "edge-1").await;
    if status == AgentStatus::Offline {
        status = next_status(&mut events, "edge-1").await;
    }
    assert_eq!(status, AgentStatus::Online);

    agent.cancel();
    assert_eq!(
        next_status(&mut events, "edge-1").await,
        AgentStatus::Offline
    );
}

/// Connects a raw agent and sends its hello; returns the socket and when the hello left.
async fn raw_agent(hub: &TestHub, name: &str) -> (Ws, Instant) {
    let token = hub
        .hub
        .agent_token(&AgentName::new(name).unwrap())
        .await
        .unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(hub.ws_url("/ws/agent"))
        .await
        .unwrap();
    let hello = json!({"type": "hello", "data": {"token": token.expose(), "name": name, "max_concurrency": 1}});
    let sent = Instant::now();
    ws.send(Message::text(hello.to_string())).await.unwrap();
    (ws, sent)
}

/// The next `agent.status` for `name` with its full record.
async fn next_info(
    events: &mut tokio::sync::mpsc::Receiver<Event>,
    name: &str,
) -> muster_proto::AgentInfo {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Event::Message(env) = events.recv().await.expect("events open")
                && let HubToClient::AgentStatus(s) = env.msg
                && s.agent.name.as_str() == name
            {
                return s.agent;
            }
        }
    })
    .await
    .expect("an agent.status event")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_reaches_fleet_within_100ms_then_stale_then_offline() {
    let hub = TestHub::start_with(|c| {
        c.heartbeat_interval_ms = 200;
        c.heartbeat_deadline_ms = 1_000;
    })
    .await;
    let (_client, mut events) = hub.client().await;
    // Registering the agent publishes it once, offline; then comes the hello.
    let (ws, sent) = raw_agent(&hub, "quiet").await;
    let online = loop {
        let info = next_info(&mut events, "quiet").await;
        if info.status == AgentStatus::Online {
            break info;
        }
    };
    let latency = sent.elapsed();
    eprintln!("hello → agent.status online on fleet: {latency:?}");
    assert!(latency < Duration::from_millis(100), "took {latency:?}");
    assert!(online.hub_id.is_some() && online.connected_since_ms.is_some());

    // The raw agent never sends a heartbeat: stale after 1.5 intervals, offline at the deadline.
    let stale = next_info(&mut events, "quiet").await;
    assert_eq!(stale.status, AgentStatus::Stale);
    let offline = next_info(&mut events, "quiet").await;
    assert_eq!(offline.status, AgentStatus::Offline);
    assert!(sent.elapsed() >= Duration::from_millis(1_000));
    drop(ws);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_edits_reach_fleet_and_agent_channel_subscribers_at_once() {
    let hub = TestHub::start().await;
    let _agent = hub.agent("tagged", 1).await;
    let (client, mut events) = hub.client().await;
    client.subscribe("agent:tagged", None).await.unwrap();
    let err = client.subscribe("agent:nosuch", None).await.unwrap_err();
    assert_eq!(err.code(), Some(muster_proto::ErrorCode::UnknownChannel));

    let edit = muster_proto::messages::AgentLabel {
        name: AgentName::new("tagged").unwrap(),
        set: [("role".to_owned(), "web".to_owned())].into(),
        remove: vec!["env".into()],
    };
    client.request(ClientToHub::AgentLabel(edit)).await.unwrap();
    let mut channels = Vec::new();
    for _ in 0..2 {
        let (channel, info) = tokio::time::timeout(WAIT, async {
            loop {
                if let Event::Message(env) = events.recv().await.expect("events open")
                    && let HubToClient::AgentStatus(s) = env.msg
                {
                    return (env.channel.unwrap(), s.agent);
                }
            }
        })
        .await
        .expect("agent.status");
        assert_eq!(info.labels.get("role").map(String::as_str), Some("web"));
        channels.push(channel);
    }
    channels.sort();
    assert_eq!(channels, ["agent:tagged", "fleet"]);
    let bad = muster_proto::messages::AgentLabel {
        name: AgentName::new("tagged").unwrap(),
        set: [("bad key".to_owned(), "x".to_owned())].into(),
        remove: vec![],
    };
    let err = client
        .request(ClientToHub::AgentLabel(bad))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(muster_proto::ErrorCode::InvalidMessage));
}
