//! Bad input on the wire: each gets its documented error or close code, and
//! other connections carry on.

use futures_util::{SinkExt as _, StreamExt as _};
use muster_proto::{CloseCode, ErrorCode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::fixture::{TestHub, WAIT};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn raw_client(hub: &TestHub, token: &str) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(hub.ws_url("/ws/client"))
        .await
        .unwrap();
    let hello = json!({"type": "hello", "data": {"token": token}});
    ws.send(Message::text(hello.to_string())).await.unwrap();
    ws
}

/// The next text message that is not a heartbeat or event.
async fn next_json(ws: &mut Ws) -> Value {
    tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await.expect("socket open").expect("read") {
                Message::Text(text) => {
                    let value: Value = serde_json::from_str(&text).unwrap();
                    if value["type"] != "heartbeat" && value["channel"].is_null() {
                        return value;
                    }
                }
                Message::Close(frame) => panic!("closed: {frame:?}"),
                _ => {}
            }
        }
    })
    .await
    .expect("a reply")
}

async fn close_code(ws: &mut Ws) -> u16 {
    tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(Some(frame)))) => return u16::from(frame.code),
                Some(Ok(Message::Close(None))) | None | Some(Err(_)) => return 1006,
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .expect("a close")
}

#[tokio::test]
async fn malformed_unknown_and_oversized_messages_get_their_codes() {
    let hub = TestHub::start().await;
    let (bystander, _events) = hub.client().await;
    let mut ws = raw_client(&hub, &hub.admin_token).await;
    assert_eq!(next_json(&mut ws).await["type"], "connection.ack");
    assert_eq!(next_json(&mut ws).await["type"], "agent.list");

    ws.send(Message::text("{not json")).await.unwrap();
    let reply = next_json(&mut ws).await;
    assert_eq!(reply["type"], "error");
    assert_eq!(reply["data"]["code"], ErrorCode::InvalidMessage.as_str());
    assert_eq!(reply["data"]["recoverable"], true);

    ws.send(Message::text(r#"{"type":"no.such","id":"q1","data":{}}"#))
        .await
        .unwrap();
    let reply = next_json(&mut ws).await;
    assert_eq!(reply["data"]["code"], ErrorCode::UnknownType.as_str());
    assert_eq!(reply["re"], "q1");

    ws.send(Message::text(
        r#"{"type":"run.get","id":"q2","data":{"run":"nope"}}"#,
    ))
    .await
    .unwrap();
    let reply = next_json(&mut ws).await;
    assert_eq!(reply["data"]["code"], ErrorCode::InvalidMessage.as_str());
    assert_eq!(reply["re"], "q2");

    // Still usable after three bad messages.
    ws.send(Message::text(
        r#"{"type":"agent.list","id":"q3","data":{}}"#,
    ))
    .await
    .unwrap();
    let reply = next_json(&mut ws).await;
    assert_eq!(reply["type"], "agent.list");
    assert_eq!(reply["re"], "q3");

    let huge = "x".repeat(2 * 1024 * 1024);
    let _ = ws.send(Message::text(huge)).await;
    assert_eq!(close_code(&mut ws).await, CloseCode::MESSAGE_TOO_BIG);

    // The other client never noticed.
    assert!(bystander.agents().await.is_ok());
}

#[tokio::test]
async fn bad_token_gets_auth_failed_then_close_4001() {
    let hub = TestHub::start().await;
    let mut ws = raw_client(&hub, "mst_aaaaaaaaaaaa_wrong").await;
    let reply = next_json(&mut ws).await;
    assert_eq!(reply["data"]["code"], ErrorCode::AuthFailed.as_str());
    assert_eq!(reply["data"]["recoverable"], false);
    assert_eq!(close_code(&mut ws).await, CloseCode::AUTH_FAILED);
}

#[tokio::test]
async fn a_request_before_hello_is_refused() {
    let hub = TestHub::start().await;
    let (mut ws, _) = tokio_tungstenite::connect_async(hub.ws_url("/ws/client"))
        .await
        .unwrap();
    ws.send(Message::text(r#"{"type":"agent.list","id":"1","data":{}}"#))
        .await
        .unwrap();
    let reply = next_json(&mut ws).await;
    assert_eq!(reply["data"]["code"], ErrorCode::HandshakeRequired.as_str());
    assert_eq!(close_code(&mut ws).await, CloseCode::PROTOCOL_ERROR);
}

#[tokio::test]
async fn silent_connection_is_closed_after_the_handshake_timeout() {
    let hub = TestHub::start_with(|c| c.handshake_timeout_ms = 300).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(hub.ws_url("/ws/agent"))
        .await
        .unwrap();
    assert_eq!(close_code(&mut ws).await, CloseCode::HANDSHAKE_TIMEOUT);
}

#[tokio::test]
async fn a_peer_that_goes_silent_is_closed_after_the_heartbeat_deadline() {
    let hub = TestHub::start_with(|c| {
        c.heartbeat_interval_ms = 100;
        c.heartbeat_deadline_ms = 400;
    })
    .await;
    let mut ws = raw_client(&hub, &hub.admin_token).await;
    let ack = next_json(&mut ws).await;
    assert_eq!(ack["data"]["heartbeat_deadline_ms"], 400);
    // Read (so the socket stays healthy) but never answer or send a heartbeat.
    let mut heartbeats = 0;
    let code = tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) if text.contains(r#""type":"heartbeat""#) => {
                    heartbeats += 1
                }
                Some(Ok(Message::Close(Some(frame)))) => return u16::from(frame.code),
                Some(Ok(_)) => {}
                other => panic!("unexpected end: {other:?}"),
            }
        }
    })
    .await
    .expect("closed by the hub");
    assert_eq!(code, CloseCode::HEARTBEAT_TIMEOUT);
    assert!(
        heartbeats >= 2,
        "the hub sent heartbeats first ({heartbeats})"
    );
}

#[tokio::test]
async fn channels_that_do_not_exist_or_are_not_allowed_are_refused() {
    let hub = TestHub::start().await;
    let (admin, _events) = hub.client().await;
    for channel in [
        "nonsense",
        "run:not-a-ulid",
        "agent:nosuch",
        "metrics:nosuch",
        "run:01JD3XK4M2Q8R7V6T5S4P3N2B1",
    ] {
        let err = admin.subscribe(channel, None).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::UnknownChannel), "{channel}");
    }
    let viewer_token = hub
        .hub
        .mint_key("watcher", muster_proto::Role::Viewer)
        .await
        .unwrap();
    let (viewer, _events) = muster_client::Client::connect(&hub.url, viewer_token.expose())
        .await
        .unwrap();
    let err = viewer.subscribe("*", None).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Forbidden));
    assert!(
        viewer.subscribe("fleet", None).await.is_ok(),
        "the viewer can still watch the fleet"
    );
    assert!(admin.subscribe("*", None).await.is_ok());
}

/// The HTTP status a WebSocket upgrade to `url` gets with `origin`, if any.
async fn upgrade_status(url: &str, origin: Option<&str>) -> u16 {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let mut request = url.into_client_request().unwrap();
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("Origin", origin.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((_, response)) => response.status().as_u16(),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("upgrade to {url}: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_from_other_origins_and_credentials_in_urls_are_refused() {
    let hub = TestHub::start_with(|c| {
        c.allowed_origins = vec!["https://ops.example.com".into()];
    })
    .await;
    let client = hub.ws_url("/ws/client");
    let own = hub.url.clone();
    for (origin, status) in [
        (None, 101),
        (Some(own.as_str()), 101),
        (Some("https://ops.example.com"), 101),
        (Some("https://ops.example.com/"), 101),
        (Some("https://evil.example"), 403),
        (Some("null"), 403),
        (Some(&*own.replacen("127.0.0.1", "localhost.evil", 1)), 403),
    ] {
        assert_eq!(upgrade_status(&client, origin).await, status, "{origin:?}");
    }
    assert_eq!(
        upgrade_status(&hub.ws_url("/ws/agent"), Some("https://evil.example")).await,
        403
    );
    for query in [
        "?token=mst_x",
        "?TOKEN=mst_x",
        "?a=1&access_token=x",
        "?api_key=x",
    ] {
        let url = format!("{client}{query}");
        assert_eq!(upgrade_status(&url, None).await, 400, "{query}");
    }
    assert_eq!(upgrade_status(&format!("{client}?v=1"), None).await, 101);

    // What was refused did not disturb anyone.
    let (client, _events) = hub.client().await;
    assert!(client.agents().await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_do_not_authenticate_in_time_are_closed_and_others_carry_on() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let hub = TestHub::start_with(|c| c.handshake_timeout_ms = 500).await;
    let addr = hub.url.trim_start_matches("http://").to_owned();
    let started = std::time::Instant::now();
    // Half-sent requests (slowloris), bare sockets and an idle keep-alive.
    let mut held = Vec::new();
    for i in 0..300 {
        let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        match i % 3 {
            0 => tcp
                .write_all(b"GET /ws/client HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
                .await
                .unwrap(),
            1 => {}
            _ => tcp
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap(),
        }
        held.push(tcp);
    }
    // An authenticated client, connected during the attack, outlives it.
    let (client, _events) = hub.client().await;
    for (i, tcp) in held.iter_mut().enumerate() {
        let mut buf = vec![0u8; 4096];
        let closed = tokio::time::timeout(WAIT, async {
            loop {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue, // the keep-alive's answer
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "socket {i} is still open after {WAIT:?}");
    }
    let took = started.elapsed();
    assert!(
        took >= std::time::Duration::from_millis(500),
        "closed before its time: {took:?}"
    );
    assert!(client.agents().await.is_ok(), "the client was cut off too");
}
