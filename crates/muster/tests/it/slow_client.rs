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

/// Reads until the connection ends; the close code, if a close frame came.
pub(crate) async fn read_to_close(ws: &mut Ws) -> Option<u16> {
    let wait = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
                None | Some(Err(_)) => return None,
            }
        }
    });
    wait.await.expect("the hub closed the stuck client")
}
