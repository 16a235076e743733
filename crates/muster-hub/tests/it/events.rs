//! Agent events: numbered, stored, streamed on `agent:<name>`, replayed from
//! any offset; malformed ones are refused without harming anything else.

use futures_util::{SinkExt as _, StreamExt as _};
use muster_client::Event;
use muster_proto::messages::StoredEvent;
use muster_proto::{AgentName, HubToClient};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::fixture::{TestHub, WAIT};

async fn collect_events(
    events: &mut tokio::sync::mpsc::Receiver<Event>,
    n: usize,
) -> (Vec<StoredEvent>, bool) {
    let mut got = Vec::new();
    let mut synced = false;
    tokio::time::timeout(WAIT, async {
        while got.len() < n || (n == 0 && !synced) {
            if let Event::Message(env) = events.recv().await.expect("events open") {
                match env.msg {
                    HubToClient::AgentEvent(e) => got.push(e),
                    HubToClient::StreamSynced(_) => synced = true,
                    _ => {}
                }
            }
        }
    })
    .await
    .expect("events arrive");
    (got, synced)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stream_in_order_and_replay_from_any_offset() {
    let hub = TestHub::start().await;
    let (live, mut live_events) = hub.client().await;
    let token = hub
        .hub
        .agent_token(&AgentName::new("site-host").unwrap())
        .await
        .unwrap();
    live.subscribe("agent:site-host", None).await.unwrap();
    let (debug, mut everything) = hub.client().await;
    debug.subscribe("*", None).await.unwrap();
    let (mut agent, _) = tokio_tungstenite::connect_async(hub.ws_url("/ws/agent"))
        .await
        .unwrap();
    let hello = json!({"type": "hello", "data": {"token": token.expose(), "max_concurrency": 1}});
    agent.send(Message::text(hello.to_string())).await.unwrap();

    for (i, status) in ["starting", "progress", "completed"].iter().enumerate() {
        let event = json!({"type": "event", "data": {"type": "site.operation", "ts_ms": 1_000 + i,
            "data": {"operation": "create", "domain": "example.com", "status": status}}});
        agent.send(Message::text(event.to_string())).await.unwrap();
    }
    // A malformed one is refused to the agent and changes nothing.
    let bad = json!({"type": "event", "data": {"type": "Not A Type", "ts_ms": 1, "data": {}}});
    agent.send(Message::text(bad.to_string())).await.unwrap();
    let refusal = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(Ok(Message::Text(text))) = agent.next().await {
                let v: Value = serde_json::from_str(&text).unwrap();
                if v["type"] == "error" {
                    return v;
                }
            }
        }
    })
    .await
    .expect("the agent hears why");
    assert_eq!(refusal["data"]["code"], "INVALID_MESSAGE");
    assert!(
        refusal["data"]["message"]
            .as_str()
            .unwrap()
            .contains("event type")
    );

    let (got, _) = collect_events(&mut live_events, 3).await;
    let statuses: Vec<_> = got
        .iter()
        .map(|e| e.event.data["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(statuses, ["starting", "progress", "completed"]);
    assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), [0, 1, 2]);
    // The admin wildcard saw them too, without subscribing to the agent.
    let (seen, _) = collect_events(&mut everything, 3).await;
    assert_eq!(seen.iter().map(|e| e.seq).collect::<Vec<_>>(), [0, 1, 2]);

    // A client that comes later replays from an offset, then is told it is live.
    let (late, mut late_events) = hub.client().await;
    late.subscribe("agent:site-host", Some(1)).await.unwrap();
    let (replayed, synced) = collect_events(&mut late_events, 2).await;
    assert_eq!(replayed.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
    let (_, synced_after) = collect_events(&mut late_events, 0).await;
    assert!(synced || synced_after);
}
