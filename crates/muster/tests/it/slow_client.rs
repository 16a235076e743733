//! A raw WebSocket client that creates a run, then stops reading.

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Creates a run subscribed on this connection and returns once it is accepted.
pub(crate) async fn create_and_stall(
    hub: &str,
    token: &str,
    agent: &str,
    argv: &[&str],
) -> (Ws, String) {
    let url = format!("{}/ws/client", hub.replacen("http://", "ws://", 1));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.send(Message::text(
        json!({"type":"hello","data":{"token": token}}).to_string(),
    ))
    .await
    .unwrap();
    let create = json!({"type":"run.create","id":"1","data":{
        "agent": agent, "command": {"argv": argv}, "subscribe": true}});
    ws.send(Message::text(create.to_string())).await.unwrap();
    loop {
        let Some(Ok(Message::Text(text))) = ws.next().await else {
            continue;
        };
        let value: Value = serde_json::from_str(&text).unwrap();
        if value["re"] == "1" {
            let id = value["data"]["run"]["id"]
                .as_str()
                .expect("run accepted")
                .to_owned();
            return (ws, id);
        }
    }
}

/// What a stalled client got once it read again.
pub(crate) struct Rest {
    /// Output bytes, after checking that frames came in order, once each.
    pub(crate) bytes: usize,
    /// Whether the run's final status came.
    pub(crate) finished: bool,
}

/// Reads until the connection ends, checking the output frames' order.
pub(crate) async fn read_rest(ws: &mut Ws) -> Rest {
    let mut rest = Rest {
        bytes: 0,
        finished: false,
    };
    let mut next_seq = 0;
    let read = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Binary(raw))) => {
                    let frame = muster_proto::OutputFrame::decode(raw).expect("an output frame");
                    assert_eq!(frame.header.seq, next_seq, "in order, once each");
                    next_seq += 1;
                    rest.bytes += frame.payload.len();
                }
                Some(Ok(Message::Text(text))) => {
                    let value: Value = serde_json::from_str(&text).unwrap();
                    if value["type"] == "run.status" && value["data"]["run"]["state"] == "completed"
                    {
                        rest.finished = true;
                    }
                }
                Some(Ok(_)) => {}
                None | Some(Err(_)) => return,
            }
        }
    });
    read.await.expect("the connection ends");
    rest
}
