//! Unit tests: URL building and error mapping, then the connection task driven
//! by a scripted fake hub on a real socket (the hub's integration tests use a
//! real hub); the run follower's tests are in `follow.rs`, the job
//! follower's in `job_follow.rs`, paged lists' in `paging.rs`, the retrying
//! creates' in `submit.rs`, and `Client::execute`'s in `execute.rs`.

use std::io;

mod execute;
mod fake_hub;
mod follow;
mod job_follow;
mod paging;
mod session;
mod submit;

use futures_util::{SinkExt, StreamExt};
use muster_proto::frame::OutputHeader;
use muster_proto::messages::{AgentList, Empty, ErrorData, Heartbeat};
use muster_proto::{ClientToHub, CloseCode, Envelope, ErrorCode, HubToClient, OutputFrame, RunId};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use fake_hub::{accept_hello, close_code, fake_hub, recv, send};

use crate::error::io_cause;
use crate::handshake::{ack_from_text, close_error};
use crate::task::reply_result;
use crate::{Client, ClientError, Event, ws_url};

#[test]
fn http_base_urls_become_ws_endpoint_urls() {
    let url = |base| ws_url(base, "/ws/client").unwrap();
    assert_eq!(
        url("http://127.0.0.1:7070"),
        "ws://127.0.0.1:7070/ws/client"
    );
    assert_eq!(url("http://hub:7070/"), "ws://hub:7070/ws/client");
    assert_eq!(url("ws://hub:7070"), "ws://hub:7070/ws/client");
    assert_eq!(url("HTTP://hub/prefix/"), "ws://hub/prefix/ws/client");
}

#[test]
fn tls_urls_map_to_wss_and_malformed_urls_are_refused_clearly() {
    let url = |base| ws_url(base, "/ws/client").unwrap();
    assert_eq!(url("https://hub:7443/"), "wss://hub:7443/ws/client");
    assert_eq!(url("wss://hub"), "wss://hub/ws/client");
    for bad in [
        "hub:7070",
        "ftp://hub",
        "http://",
        "http:///x",
        "http://hub?a=1",
    ] {
        let err = ws_url(bad, "/ws/client").unwrap_err();
        assert!(
            err.to_string().starts_with("invalid hub URL"),
            "{bad}: {err}"
        );
    }
}

#[test]
fn io_errors_are_short_and_lowercase() {
    let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
    assert_eq!(io_cause(&refused), "connection refused");
    let os = io::Error::other("Name or service not known (os error -2)");
    assert_eq!(io_cause(&os), "name or service not known");
}

#[test]
fn auth_failures_become_auth_errors() {
    let error = Envelope::plain(HubToClient::Error(ErrorData::new(
        ErrorCode::AuthFailed,
        "invalid token",
    )));
    let err = ack_from_text(&error.encode()).unwrap_err();
    assert_eq!(err.to_string(), "authentication failed: invalid token");

    let frame = CloseFrame {
        code: CloseCode::AUTH_FAILED.into(),
        reason: "".into(),
    };
    assert!(matches!(close_error(Some(&frame)), ClientError::Auth(_)));
    let frame = CloseFrame {
        code: 1001.into(),
        reason: "bye".into(),
    };
    assert!(matches!(close_error(Some(&frame)), ClientError::Closed(r) if r.contains("1001: bye")));
}

#[test]
fn error_replies_become_hub_errors() {
    let data = ErrorData::new(ErrorCode::AgentNotFound, "agent \"x\" not found");
    let err = reply_result(HubToClient::Error(data)).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::AgentNotFound));
    assert_eq!(err.to_string(), "agent \"x\" not found");
    assert!(reply_result(HubToClient::Ok(Empty {})).is_ok());
}

#[test]
fn an_unavailable_store_is_said_plainly_and_is_transient() {
    let data = ErrorData::new(ErrorCode::StorageUnavailable, "disk full");
    let err = reply_result(HubToClient::Error(data)).unwrap_err();
    assert!(err.is_transient());
    assert_eq!(
        err.to_string(),
        "the hub cannot write to its store, so it did nothing; try again later \
         (STORAGE_UNAVAILABLE: disk full)"
    );
    let data = ErrorData::new(ErrorCode::UnknownChannel, "no such channel");
    assert!(
        !reply_result(HubToClient::Error(data))
            .unwrap_err()
            .is_transient()
    );
}

#[tokio::test]
async fn requests_get_their_replies_and_events_flow() {
    let (code_tx, code_rx) = tokio::sync::oneshot::channel();
    let url = fake_hub(|mut hub| async move {
        assert_eq!(accept_hello(&mut hub, 30_000, 60_000).await, "tok");
        send(
            &mut hub,
            Envelope::plain(HubToClient::AgentList(AgentList {
                agents: vec![],
                next_cursor: None,
            })),
        )
        .await;
        let request = recv(&mut hub).await;
        assert!(matches!(request.msg, ClientToHub::AgentList(_)));
        let reply = HubToClient::AgentList(AgentList {
            agents: vec![],
            next_cursor: None,
        });
        send(&mut hub, Envelope::reply(request.id, reply)).await;
        let request = recv(&mut hub).await;
        let error = ErrorData::new(ErrorCode::RunNotFound, "run not found");
        send(
            &mut hub,
            Envelope::reply(request.id, HubToClient::Error(error)),
        )
        .await;
        let header = OutputHeader {
            run: RunId::generate(),
            stream: muster_proto::OutputStream::Stdout,
            seq: 0,
            offset: 0,
            at: None,
        };
        hub.send(Message::Binary(OutputFrame::encode(&header, b"\xffhi")))
            .await
            .unwrap();
        code_tx.send(close_code(&mut hub).await).unwrap();
    })
    .await;
    let (client, mut events) = Client::connect(&url, "tok").await.unwrap();
    assert_eq!(client.ack().connection_id, "c1");
    assert!(
        matches!(events.recv().await, Some(Event::Message(e)) if matches!(e.msg, HubToClient::AgentList(_)))
    );
    assert!(client.agents().await.unwrap().is_empty());
    let err = client.run_info(RunId::generate()).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::RunNotFound));
    let Some(Event::Output(frame)) = events.recv().await else {
        panic!("expected output")
    };
    assert_eq!(&frame.payload[..], b"\xffhi");
    client.close().await;
    assert_eq!(code_rx.await.unwrap(), Some(CloseCode::NORMAL));
}

#[tokio::test]
async fn bad_token_fails_fast_with_auth_error() {
    let url = fake_hub(|mut hub| async move {
        recv(&mut hub).await;
        let error = ErrorData::new(ErrorCode::AuthFailed, "invalid token");
        send(&mut hub, Envelope::plain(HubToClient::Error(error))).await;
        let frame = CloseFrame {
            code: CloseCode::AUTH_FAILED.into(),
            reason: "".into(),
        };
        let _ = hub.close(Some(frame)).await;
    })
    .await;
    let err = Client::connect(&url, "bad").await.unwrap_err();
    assert_eq!(err.to_string(), "authentication failed: invalid token");
}

#[tokio::test]
async fn hub_close_fails_pending_requests_and_ends_events() {
    let url = fake_hub(|mut hub| async move {
        accept_hello(&mut hub, 30_000, 60_000).await;
        recv(&mut hub).await;
        let frame = CloseFrame {
            code: CloseCode::GOING_AWAY.into(),
            reason: "shutting down".into(),
        };
        let _ = hub.close(Some(frame)).await;
        while hub.next().await.is_some() {}
    })
    .await;
    let (client, mut events) = Client::connect(&url, "tok").await.unwrap();
    let err = client.agents().await.unwrap_err();
    assert!(
        matches!(err, ClientError::Closed(ref r) if r == "shutting down"),
        "{err}"
    );
    let Some(Event::Closed { code, .. }) = events.recv().await else {
        panic!("expected closed")
    };
    assert_eq!(code, Some(CloseCode::GOING_AWAY));
    assert!(matches!(client.agents().await, Err(ClientError::Closed(_))));
}

#[tokio::test]
async fn heartbeats_are_answered_and_silence_closes() {
    let (code_tx, code_rx) = tokio::sync::oneshot::channel();
    let url = fake_hub(|mut hub| async move {
        accept_hello(&mut hub, 50, 300).await;
        send(
            &mut hub,
            Envelope::plain(HubToClient::Heartbeat(Heartbeat { seq: 7 })),
        )
        .await;
        let mut answered = false;
        let mut sent = false;
        while !(answered && sent) {
            match recv(&mut hub).await.msg {
                ClientToHub::HeartbeatAck(Heartbeat { seq: 7 }) => answered = true,
                ClientToHub::Heartbeat(_) => sent = true,
                other => panic!("unexpected {other:?}"),
            }
        }
        code_tx.send(close_code(&mut hub).await).unwrap();
    })
    .await;
    let (_client, mut events) = Client::connect(&url, "tok").await.unwrap();
    let Some(Event::Closed { code, .. }) = events.recv().await else {
        panic!("expected closed")
    };
    assert_eq!(code, Some(CloseCode::HEARTBEAT_TIMEOUT));
    assert_eq!(code_rx.await.unwrap(), Some(CloseCode::HEARTBEAT_TIMEOUT));
}

#[tokio::test]
async fn refused_connection_is_a_connect_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let url = format!("http://{addr}");
    let err = Client::connect(&url, "tok").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("cannot reach hub at {url}: connection refused")
    );
}

#[tokio::test]
async fn dropping_every_handle_closes_normally() {
    let (code_tx, code_rx) = tokio::sync::oneshot::channel();
    let url = fake_hub(|mut hub| async move {
        accept_hello(&mut hub, 30_000, 60_000).await;
        code_tx.send(close_code(&mut hub).await).unwrap();
    })
    .await;
    let (client, _events) = Client::connect(&url, "tok").await.unwrap();
    let clone = client.clone();
    drop(client);
    drop(clone);
    assert_eq!(code_rx.await.unwrap(), Some(CloseCode::NORMAL));
}

#[tokio::test]
async fn metrics_queries_return_the_series_points() {
    use muster_proto::AgentName;
    use muster_proto::messages::{MetricsSample, MetricsSeries, SeriesPoint};

    let url = fake_hub(|mut hub| async move {
        accept_hello(&mut hub, 30_000, 60_000).await;
        let request = recv(&mut hub).await;
        let ClientToHub::MetricsQuery(query) = request.msg else {
            panic!("expected metrics.query, got {:?}", request.msg)
        };
        assert_eq!((query.agent.as_str(), query.since_ms), ("web-1", 1_000));
        let point = |resolution_ms, ts_ms| SeriesPoint {
            resolution_ms,
            sample: MetricsSample {
                ts_ms,
                ..MetricsSample::default()
            },
        };
        let series = MetricsSeries {
            agent: query.agent,
            samples: vec![point(300_000, 1_000), point(0, 2_000)],
        };
        let reply = HubToClient::MetricsSeries(series);
        send(&mut hub, Envelope::reply(request.id, reply)).await;
        close_code(&mut hub).await;
    })
    .await;
    let (client, _events) = Client::connect(&url, "tok").await.unwrap();
    let agent = AgentName::new("web-1").unwrap();
    let points = client.metrics(&agent, 1_000).await.unwrap();
    let shape: Vec<_> = points
        .iter()
        .map(|p| (p.resolution_ms, p.sample.ts_ms))
        .collect();
    assert_eq!(shape, [(300_000, 1_000), (0, 2_000)]);
    client.close().await;
}
