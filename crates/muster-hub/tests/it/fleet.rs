//! Presence: clients get the agent list on connect, then every status change.

use muster_client::Event;
use muster_proto::{AgentStatus, HubToClient};

use crate::fixture::{TestHub, WAIT};

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
