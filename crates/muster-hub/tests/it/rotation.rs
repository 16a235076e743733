//! Rotating an agent's token when the agent cannot keep the new one: the
//! admin hears why, the old token keeps working, and nothing is closed.

use futures_util::{SinkExt as _, StreamExt as _};
use muster_proto::{AgentName, ErrorCode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::fixture::{TestHub, WAIT};
use crate::hostile::Ws;

/// A raw agent connection with `token`, past its `connection.ack`.
async fn raw_agent(hub: &TestHub, name: &str, token: &str) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(hub.ws_url("/ws/agent"))
        .await
        .unwrap();
    let hello =
        json!({"type": "hello", "data": {"token": token, "name": name, "max_concurrency": 1}});
    ws.send(Message::text(hello.to_string())).await.unwrap();
    let ack = next_of_type(&mut ws, "connection.ack").await;
    assert_eq!(ack["type"], "connection.ack", "{ack}");
    ws
}

/// The next text message of type `kind`, or the first error.
async fn next_of_type(ws: &mut Ws, kind: &str) -> Value {
    tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    let value: Value = serde_json::from_str(&text).unwrap();
                    if value["type"] == kind || value["type"] == "error" {
                        return value;
                    }
                }
                Some(Ok(_)) => {}
                other => panic!("the agent connection ended: {other:?}"),
            }
        }
    })
    .await
    .expect("a message")
}

fn rotate(name: &str) -> muster_proto::ClientToHub {
    serde_json::from_value(json!({"type": "agent.rotate_token", "data": {"name": name}})).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_cannot_store_its_new_token_keeps_the_old_one() {
    let hub = TestHub::start().await;
    let (admin, _events) = hub.client().await;
    let name = AgentName::new("web-1").unwrap();
    let old = hub.hub.agent_token(&name).await.unwrap();
    let mut agent = raw_agent(&hub, "web-1", old.expose()).await;

    let asked = tokio::spawn({
        let admin = admin.clone();
        async move { admin.request(rotate("web-1")).await }
    });
    let offer = next_of_type(&mut agent, "credential.rotate").await;
    let new_token = offer["data"]["token"].as_str().unwrap().to_owned();
    assert_ne!(new_token, old.expose());
    let refused =
        json!({"type": "credential.stored", "data": {"stored": false, "reason": "disk full"}});
    agent
        .send(Message::text(refused.to_string()))
        .await
        .unwrap();
    let err = asked.await.unwrap().unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidState), "{err:?}");
    assert!(err.to_string().contains("disk full"), "{err}");

    // The connection stays, and it still answers heartbeats.
    let beat = json!({"type": "heartbeat", "data": {"seq": 7}});
    agent.send(Message::text(beat.to_string())).await.unwrap();
    let ack = next_of_type(&mut agent, "heartbeat.ack").await;
    assert_eq!(ack["type"], "heartbeat.ack", "{ack}");
    // The old token authenticates; the offered one never does.
    drop(agent);
    let _again = raw_agent(&hub, "web-1", old.expose()).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(hub.ws_url("/ws/agent"))
        .await
        .unwrap();
    let hello = json!({"type": "hello", "data": {"token": new_token, "name": "web-1", "max_concurrency": 1}});
    ws.send(Message::text(hello.to_string())).await.unwrap();
    let reply = next_of_type(&mut ws, "connection.ack").await;
    assert_eq!(
        reply["data"]["code"],
        ErrorCode::AuthFailed.as_str(),
        "{reply}"
    );

    // A second rotation while none is under way is offered again.
    let mut agent = raw_agent(&hub, "web-1", old.expose()).await;
    let asked = tokio::spawn({
        let admin = admin.clone();
        async move { admin.request(rotate("web-1")).await }
    });
    let offer = next_of_type(&mut agent, "credential.rotate").await;
    assert_eq!(offer["type"], "credential.rotate");
    // The agent leaves before it answers: the admin is told, the old token stays.
    drop(agent);
    let err = tokio::time::timeout(WAIT, asked)
        .await
        .expect("an answer")
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidState), "{err:?}");
    let _back = raw_agent(&hub, "web-1", old.expose()).await;
    let reply = admin.request(rotate("nobody")).await.unwrap_err();
    assert_eq!(reply.code(), Some(ErrorCode::AgentNotFound));
    let listed = admin.agents().await.unwrap();
    assert!(listed.iter().any(|a| a.name == name), "{listed:?}");
}
