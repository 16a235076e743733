//! The agent's connection loop against the scripted hub: runs, heartbeats,
//! reconnects, close codes and shutdown.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use muster_agent::AgentOptions;
use muster_proto::messages::{ErrorData, Heartbeat, RunOutcome};
use muster_proto::{
    AgentToHub, CloseCode, Envelope, ErrorCode, HubToAgent, OutputFrame, RequestId, RunId,
};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::fake_hub::{
    Harness, close, read_to_close, recv, recv_text, recv_until_exited, run_start, send,
    send_envelope, send_run_ack, within,
};

#[tokio::test]
async fn executes_a_run_and_closes_normally_on_shutdown() {
    let hub = Harness::start().await;
    let mut ws = hub.accept_acked(60_000, 120_000).await;
    let run = RunId::generate();
    send(&mut ws, run_start(run, "printf hi")).await;
    let AgentToHub::RunStarted(started) = recv_text(&mut ws).await.msg else {
        panic!("expected run.started");
    };
    assert_eq!(started.run, run);
    let Message::Binary(bytes) = recv(&mut ws).await else {
        panic!("expected an output frame");
    };
    let frame = OutputFrame::decode(bytes).unwrap();
    assert_eq!((frame.header.run, frame.header.seq), (run, 0));
    assert_eq!(&frame.payload[..], b"hi");
    let AgentToHub::RunExited(exited) = recv_text(&mut ws).await.msg else {
        panic!("expected run.exited");
    };
    assert_eq!(
        (exited.outcome, exited.exit_code),
        (RunOutcome::Completed, Some(0))
    );
    send_run_ack(&mut ws, run, 1, true).await;
    hub.stop(ws).await;
}

#[tokio::test]
async fn shutdown_cancels_runs_and_reports_them() {
    let hub = Harness::start().await;
    let mut ws = hub.accept_acked(60_000, 120_000).await;
    let run = RunId::generate();
    send(&mut ws, run_start(run, "sleep 30")).await;
    let AgentToHub::RunStarted(_) = recv_text(&mut ws).await.msg else {
        panic!("expected run.started");
    };
    hub.shutdown.cancel();
    let AgentToHub::RunExited(exited) = recv_text(&mut ws).await.msg else {
        panic!("expected run.exited");
    };
    assert_eq!(exited.outcome, RunOutcome::Cancelled);
    // The agent closes once the hub has stored the report.
    send_run_ack(&mut ws, run, 0, true).await;
    assert_eq!(read_to_close(&mut ws).await, Some(CloseCode::NORMAL));
    hub.finish().await.unwrap();
}

#[tokio::test]
async fn cancel_stops_a_run() {
    let hub = Harness::start().await;
    let mut ws = hub.accept_acked(60_000, 120_000).await;
    let run = RunId::generate();
    send(&mut ws, run_start(run, "sleep 30")).await;
    let AgentToHub::RunStarted(_) = recv_text(&mut ws).await.msg else {
        panic!("expected run.started");
    };
    let cancel = HubToAgent::RunCancel(muster_proto::messages::RunRef { run });
    send(&mut ws, cancel).await;
    let AgentToHub::RunExited(exited) = recv_text(&mut ws).await.msg else {
        panic!("expected run.exited");
    };
    assert_eq!(exited.outcome, RunOutcome::Cancelled);
    send_run_ack(&mut ws, run, 0, true).await;
    hub.stop(ws).await;
}

#[tokio::test]
async fn answers_heartbeats_and_sends_its_own() {
    let hub = Harness::start().await;
    let mut ws = hub.accept_acked(20, 60_000).await;
    let heartbeat = HubToAgent::Heartbeat(Heartbeat { seq: 9 });
    send_envelope(
        &mut ws,
        Envelope::request(RequestId("h9".into()), heartbeat),
    )
    .await;
    let mut saw_own_heartbeat = false;
    let mut saw_ack = false;
    while !(saw_own_heartbeat && saw_ack) {
        let Message::Text(text) = within(ws.next()).await.unwrap().unwrap() else {
            continue;
        };
        let envelope = Envelope::<AgentToHub>::decode(&text).unwrap();
        match envelope.msg {
            AgentToHub::Heartbeat(_) => saw_own_heartbeat = true,
            AgentToHub::HeartbeatAck(ack) => {
                assert_eq!(ack.seq, 9);
                assert_eq!(envelope.re, Some(RequestId("h9".into())));
                saw_ack = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    hub.stop(ws).await;
}

#[tokio::test]
async fn answers_garbage_with_an_error_and_stays_connected() {
    let hub = Harness::start().await;
    let mut ws = hub.accept_acked(60_000, 120_000).await;
    ws.send(Message::text(r#"{"type":"x.y","id":"7","data":{}}"#))
        .await
        .unwrap();
    let reply = recv_text(&mut ws).await;
    let AgentToHub::Error(error) = reply.msg else {
        panic!("expected an error");
    };
    assert_eq!(error.code, ErrorCode::UnknownType);
    assert_eq!(reply.re, Some(RequestId("7".into())));
    let run = RunId::generate();
    send(&mut ws, run_start(run, "true")).await;
    let (received, exited) = recv_until_exited(&mut ws).await;
    assert!(matches!(received[..], [muster_agent::Outgoing::Started(_)]));
    assert_eq!(exited.outcome, RunOutcome::Completed);
    send_run_ack(&mut ws, run, 0, true).await;
    hub.stop(ws).await;
}

#[tokio::test]
async fn reconnects_after_the_hub_goes_away() {
    let hub = Harness::start().await;
    let mut first = hub.accept_acked(60_000, 120_000).await;
    close(&mut first, CloseCode::GOING_AWAY).await;
    let second = hub.accept_acked(60_000, 120_000).await;
    hub.stop(second).await;
}

#[tokio::test]
async fn reconnects_after_a_silent_hub_and_closes_with_4009() {
    let hub = Harness::start().await;
    let mut first = hub.accept_acked(20, 200).await;
    // Read (but never answer) until the agent gives up on this connection.
    let code = read_to_close(&mut first).await;
    assert_eq!(code, Some(CloseCode::HEARTBEAT_TIMEOUT));
    let ws = hub.accept_acked(60_000, 120_000).await;
    hub.stop(ws).await;
}

#[tokio::test]
async fn auth_failure_is_fatal() {
    let hub = Harness::start().await;
    let mut ws = hub.accept().await;
    let error = ErrorData::new(ErrorCode::AuthFailed, "unknown token");
    send(&mut ws, HubToAgent::Error(error)).await;
    close(&mut ws, CloseCode::AUTH_FAILED).await;
    let error = hub.finish().await.unwrap_err().to_string();
    assert!(
        error.contains("hub rejected the agent token: unknown token"),
        "{error}"
    );
}

#[tokio::test]
async fn close_4001_alone_is_fatal() {
    let hub = Harness::start().await;
    let mut ws = hub.accept().await;
    close(&mut ws, CloseCode::AUTH_FAILED).await;
    let error = hub.finish().await.unwrap_err().to_string();
    assert!(error.contains("hub rejected the agent token"), "{error}");
}

#[tokio::test]
async fn revocation_after_the_handshake_is_fatal() {
    let hub = Harness::start().await;
    let mut ws = hub.accept_acked(60_000, 120_000).await;
    close(&mut ws, CloseCode::REVOKED).await;
    let error = hub.finish().await.unwrap_err().to_string();
    assert!(error.contains("revoked"), "{error}");
}

#[tokio::test]
async fn shutdown_while_disconnected_returns_ok() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let options = AgentOptions {
        kill_grace: Duration::from_millis(100),
        ..AgentOptions::new(format!("ws://{addr}"), "t")
    };
    let shutdown = CancellationToken::new();
    let agent = tokio::spawn(muster_agent::run(options, shutdown.clone()));
    shutdown.cancel();
    within(agent).await.unwrap().unwrap();
}

#[tokio::test]
async fn an_https_hub_with_an_unusable_ca_file_is_refused_up_front() {
    let options = AgentOptions {
        trust: muster_tls::TrustRoots::ca_file("/nonexistent/ca.pem"),
        ..AgentOptions::new("https://hub.example", "t")
    };
    let error = muster_agent::run(options, CancellationToken::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("cannot read the CA file"), "{error}");
}
