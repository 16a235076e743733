//! A client that stops reading is cut off without stalling the agent or
//! anyone else, and can resume from the store afterwards.

use futures_util::{SinkExt as _, StreamExt as _};
use muster_client::Event;
use muster_proto::{CloseCode, HubToClient, RunId, RunState};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::fixture::{TestHub, WAIT, until_run_ends};

const TOTAL: usize = 20_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_dropped_and_others_get_everything() {
    let hub = TestHub::start_with(|c| c.client_queue_frames = 256).await;
    let _agent = hub.agent("firehose", 1).await;

    // The slow client creates the run, reads the reply, then stops reading.
    let (mut slow, _) = tokio_tungstenite::connect_async(hub.ws_url("/ws/client"))
        .await
        .unwrap();
    slow.send(Message::text(
        json!({"type":"hello","data":{"token": hub.admin_token}}).to_string(),
    ))
    .await
    .unwrap();
    let create = json!({"type":"run.create","id":"1","data":{
        "agent":"firehose","command":{"argv":["head","-c",TOTAL.to_string(),"/dev/zero"]},"subscribe":true}});
    slow.send(Message::text(create.to_string())).await.unwrap();
    let run: RunId = loop {
        let Some(Ok(Message::Text(text))) = slow.next().await else {
            continue;
        };
        let value: Value = serde_json::from_str(&text).unwrap();
        if value["re"] == "1" {
            break value["data"]["run"]["id"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap();
        }
    };

    // A second client follows the same run from the start and gets all of it.
    let (client, mut events) = hub.client().await;
    client
        .subscribe(&run.channel().to_string(), Some(0))
        .await
        .unwrap();
    let (finished, received) = until_run_ends(&mut events).await;
    assert_eq!(finished.state, RunState::Completed);
    assert_eq!(received, TOTAL);

    // The stuck client was cut off: reading now reaches the end of the connection.
    let end = tokio::time::timeout(WAIT, async {
        loop {
            match slow.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
                None | Some(Err(_)) => return None,
            }
        }
    })
    .await
    .expect("the hub closed the slow client");
    if let Some(code) = end {
        assert_eq!(code, CloseCode::SLOW_CONSUMER);
    }

    // And it can fetch everything again from the store.
    let (again, mut replay) = hub.client().await;
    again
        .subscribe(&run.channel().to_string(), Some(0))
        .await
        .unwrap();
    let mut replayed = 0;
    tokio::time::timeout(WAIT, async {
        loop {
            match replay.recv().await.expect("events open") {
                Event::Output(frame) => replayed += frame.payload.len(),
                Event::Message(env) if matches!(env.msg, HubToClient::StreamSynced(_)) => return,
                _ => {}
            }
        }
    })
    .await
    .expect("replay completes");
    assert_eq!(replayed, TOTAL);
}
