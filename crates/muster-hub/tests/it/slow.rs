//! A client that stops reading stalls neither the agent nor anyone else,
//! holds no more than its queue, and gets everything when it reads again:
//! what did not fit its queue comes from the store.

use futures_util::{SinkExt as _, StreamExt as _};
use muster_client::Event;
use muster_proto::{HubToClient, RunId, RunState};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::fixture::{TestHub, WAIT, until_run_ends};

const TOTAL: usize = 20_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_stalls_nobody_and_gets_everything_after() {
    let hub = TestHub::start_with(|c| c.client_queue_frames = 256).await;
    let _agent = hub.agent("firehose", 1).await;

    // The slow client creates the run, reads the reply, then stops reading.
    let mut slow = raw_client(&hub).await;
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

    // The stuck client was not dropped and held no more than its queue:
    // when it reads again, it gets every byte, in order, each once, from its
    // queue and then from the store, and the run's end after the last one.
    let mut next_seq = 0u64;
    let mut resumed = 0usize;
    tokio::time::timeout(WAIT, async {
        loop {
            match slow.next().await {
                Some(Ok(Message::Binary(bytes))) => {
                    let frame = muster_proto::OutputFrame::decode(bytes).unwrap();
                    assert_eq!(frame.header.seq, next_seq, "in order, once each");
                    next_seq += 1;
                    resumed += frame.payload.len();
                }
                Some(Ok(Message::Text(text))) => {
                    let value: Value = serde_json::from_str(&text).unwrap();
                    if value["type"] == "run.status" && value["data"]["run"]["state"] == "completed"
                    {
                        return;
                    }
                }
                Some(Ok(Message::Close(frame))) => panic!("closed: {frame:?}"),
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await
    .expect("the stuck client reads to the end");
    assert_eq!(resumed, TOTAL);

    // And anyone can fetch everything again from the store.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_falls_behind_gets_every_frame_once_in_order() {
    const BYTES: usize = 30_000_000;
    let hub = TestHub::start_with(|c| c.client_queue_frames = 256).await;
    let _agent = hub.agent("burst", 1).await;
    let (client, _) = hub.client().await;
    // Another subscriber never reads at all.
    let mut stuck = raw_client(&hub).await;
    let request = muster_client::RunRequest::new(
        muster_proto::AgentName::new("burst").unwrap(),
        muster_proto::types::CommandSpec::Argv(vec![
            "head".into(),
            "-c".into(),
            BYTES.to_string(),
            "/dev/zero".into(),
        ]),
    );
    let run = client.create_run(request, false).await.unwrap().run.id;
    let subscribe =
        json!({"type":"subscribe","id":"x","data":{"channel": run.channel().to_string()}});
    stuck
        .send(Message::text(subscribe.to_string()))
        .await
        .unwrap();

    // Subscribes from the start while the run streams, then reads slowly.
    let mut ws = raw_client(&hub).await;
    let subscribe = json!({"type":"subscribe","id":"s","data":{"channel": run.channel().to_string(), "since": 0}});
    ws.send(Message::text(subscribe.to_string())).await.unwrap();
    let (mut next_seq, mut bytes, mut frames) = (0u64, 0usize, 0u64);
    tokio::time::timeout(WAIT * 2, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Binary(raw))) => {
                    let frame = muster_proto::OutputFrame::decode(raw).unwrap();
                    assert_eq!(frame.header.seq, next_seq, "every frame once, in order");
                    next_seq += 1;
                    bytes += frame.payload.len();
                    frames += 1;
                    if frames.is_multiple_of(200) {
                        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
                    }
                }
                Some(Ok(Message::Text(text))) => {
                    let value: Value = serde_json::from_str(&text).unwrap();
                    let state = &value["data"]["run"]["state"];
                    let ended = value["type"] == "run.status" && state == "completed";
                    let synced_ended = value["type"] == "stream.synced" && bytes == BYTES;
                    if ended || synced_ended {
                        return;
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await
    .expect("the reader gets to the end");
    assert_eq!(bytes, BYTES);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_takes_no_bytes_for_the_deadline_is_dropped() {
    const TOTAL: usize = 100_000_000;
    let hub = TestHub::start_with(|c| {
        c.client_queue_frames = 256;
        c.heartbeat_interval_ms = 200;
        c.heartbeat_deadline_ms = 1000;
    })
    .await;
    let _agent = hub.agent("firehose", 1).await;
    let mut stuck = raw_client(&hub).await;
    let create = json!({"type":"run.create","id":"1","data":{
        "agent":"firehose","command":{"argv":["head","-c",TOTAL.to_string(),"/dev/zero"]},"subscribe":true}});
    stuck.send(Message::text(create.to_string())).await.unwrap();
    assert_eq!(hub.hub.open_connections(), 2, "the agent and the client");

    // It neither reads nor sends, so the hub's writes to it stall.
    tokio::time::timeout(WAIT, async {
        while hub.hub.open_connections() > 1 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the hub lets go of a client that takes nothing");

    // What it gets when it reads again is a part of the stream, in order,
    // and then the end of the connection: it resumes with `since`.
    let mut next_seq = 0u64;
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match stuck.next().await {
                Some(Ok(Message::Binary(raw))) => {
                    let frame = muster_proto::OutputFrame::decode(raw).unwrap();
                    assert_eq!(frame.header.seq, next_seq, "in order, once each");
                    next_seq += 1;
                }
                Some(Ok(Message::Text(text))) => {
                    let value: Value = serde_json::from_str(&text).unwrap();
                    let state = &value["data"]["run"]["state"];
                    assert!(
                        !(value["type"] == "run.status" && state == "completed"),
                        "the stream was cut, not finished"
                    );
                }
                Some(Ok(_)) => {}
                None | Some(Err(_)) => return,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the connection ends");
    assert!(next_seq > 0, "it had frames on the way");
}

type RawClient =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A client socket that says hello as admin and reads only when told to.
async fn raw_client(hub: &TestHub) -> RawClient {
    let (mut ws, _) = tokio_tungstenite::connect_async(hub.ws_url("/ws/client"))
        .await
        .unwrap();
    let hello = json!({"type":"hello","data":{"token": hub.admin_token}});
    ws.send(Message::text(hello.to_string())).await.unwrap();
    ws
}
