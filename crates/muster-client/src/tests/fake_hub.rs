//! A scripted fake hub on a real socket, for driving the client without the
//! real hub: accept a connection, read what the client sends, answer by hand.

use futures_util::{SinkExt, StreamExt};
use muster_proto::frame::OutputHeader;
use muster_proto::limits::Limits;
use muster_proto::messages::{ConnectionAck, Principal};
use muster_proto::{ClientToHub, Envelope, HubToClient, OutputFrame, OutputStream, RunId};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

pub(super) type HubSide = WebSocketStream<TcpStream>;

/// Starts a one-connection fake hub running `script`, returning its base URL.
pub(super) async fn fake_hub<F, Fut>(script: F) -> String
where
    F: FnOnce(HubSide) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        script(tokio_tungstenite::accept_async(tcp).await.unwrap()).await;
    });
    format!("http://{addr}")
}

/// A listener for a fake hub that serves several connections in turn, and its base URL.
pub(super) async fn listen() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    (listener, url)
}

/// Accepts the next client connection and reads its hello (heartbeats every 30 s).
pub(super) async fn accept(listener: &TcpListener) -> HubSide {
    let (tcp, _) = listener.accept().await.unwrap();
    let mut hub = tokio_tungstenite::accept_async(tcp).await.unwrap();
    accept_hello(&mut hub, 30_000, 60_000).await;
    hub
}

/// Sends one stdout output frame of `run`.
pub(super) async fn output(hub: &mut HubSide, run: RunId, seq: u64, payload: &[u8]) {
    output_on(hub, run, OutputStream::Stdout, seq, payload).await;
}

/// Sends one output frame of `run` on `stream`.
pub(super) async fn output_on(
    hub: &mut HubSide,
    run: RunId,
    stream: OutputStream,
    seq: u64,
    payload: &[u8],
) {
    let header = OutputHeader {
        run,
        stream,
        seq,
        offset: 0,
        at: None,
    };
    let frame = OutputFrame::encode(&header, payload);
    hub.send(Message::Binary(frame)).await.unwrap();
}

/// Closes the connection with `code`, then waits for the client's answer.
pub(super) async fn close_with(mut hub: HubSide, code: u16, reason: &str) {
    let frame = CloseFrame {
        code: code.into(),
        reason: reason.to_owned().into(),
    };
    let _ = hub.close(Some(frame)).await;
    while let Some(Ok(_)) = hub.next().await {}
}

pub(super) fn ack(heartbeat_interval_ms: u64, heartbeat_deadline_ms: u64) -> ConnectionAck {
    ConnectionAck {
        protocol: "1.0".into(),
        hub_version: "test".into(),
        connection_id: "c1".into(),
        principal: Principal {
            kind: "client".into(),
            name: "admin".into(),
            role: None,
            scope: None,
        },
        heartbeat_interval_ms,
        heartbeat_deadline_ms,
        limits: Limits {
            max_message_bytes: 1 << 20,
            max_output_chunk_bytes: 10 << 10,
            output_batch_ms: 50,
            max_output_bytes_per_run: 1 << 20,
            max_queue_per_agent: 100,
        },
    }
}

pub(super) async fn recv(hub: &mut HubSide) -> Envelope<ClientToHub> {
    loop {
        match hub.next().await.unwrap().unwrap() {
            Message::Text(text) => return Envelope::decode(&text).unwrap(),
            Message::Close(_) => panic!("client closed"),
            _ => {}
        }
    }
}

pub(super) async fn send(hub: &mut HubSide, envelope: Envelope<HubToClient>) {
    hub.send(Message::text(envelope.encode())).await.unwrap();
}

/// Reads the hello and acknowledges it with the given heartbeat timing.
pub(super) async fn accept_hello(hub: &mut HubSide, interval_ms: u64, deadline_ms: u64) -> String {
    let hello = recv(hub).await;
    let ClientToHub::Hello(hello) = hello.msg else {
        panic!("expected hello")
    };
    assert_eq!(hello.client.as_deref(), Some(crate::CLIENT_NAME));
    send(
        hub,
        Envelope::plain(HubToClient::ConnectionAck(ack(interval_ms, deadline_ms))),
    )
    .await;
    hello.token
}

pub(super) async fn close_code(hub: &mut HubSide) -> Option<u16> {
    while let Some(Ok(message)) = hub.next().await {
        if let Message::Close(frame) = message {
            return frame.map(|f| f.code.into());
        }
    }
    None
}
