//! The agent's connection loop against a scripted hub on `127.0.0.1:0`.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use muster_agent::AgentOptions;
use muster_proto::limits::Limits;
use muster_proto::messages::{
    ConnectionAck, ErrorData, Heartbeat, Principal, RunOutcome, RunStart,
};
use muster_proto::{
    AgentName, AgentToHub, CloseCode, CommandSpec, Envelope, ErrorCode, HubToAgent, OutputFrame,
    RequestId, RunId,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_util::sync::CancellationToken;

/// Bound on every wait in these tests, so a bug fails instead of hanging.
const WAIT: Duration = Duration::from_secs(10);

type HubSide = WebSocketStream<TcpStream>;

/// An agent running against a listener the test scripts by hand.
struct Harness {
    listener: TcpListener,
    shutdown: CancellationToken,
    agent: JoinHandle<anyhow::Result<()>>,
}

impl Harness {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let options = AgentOptions {
            hub_url: format!("http://{}", listener.local_addr().unwrap()),
            token: "mst_test_token".into(),
            name: Some(AgentName::new("web-1").unwrap()),
            labels: BTreeMap::from([("role".into(), "web".into())]),
            max_concurrency: 2,
            kill_grace: Duration::from_millis(500),
        };
        let shutdown = CancellationToken::new();
        let agent = tokio::spawn(muster_agent::run(options, shutdown.clone()));
        Self {
            listener,
            shutdown,
            agent,
        }
    }

    /// Accepts the agent's next connection and checks its `hello`.
    async fn accept(&self) -> HubSide {
        let (tcp, _) = within(self.listener.accept()).await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        let AgentToHub::Hello(hello) = recv_text(&mut ws).await.msg else {
            panic!("first message is not hello");
        };
        assert_eq!(hello.token, "mst_test_token");
        assert_eq!(hello.name.unwrap().as_str(), "web-1");
        assert_eq!(hello.capabilities, ["exec"]);
        assert_eq!(hello.max_concurrency, 2);
        assert_eq!(hello.labels["role"], "web");
        ws
    }

    /// Accepts a connection, completes its handshake and waits until the agent
    /// serves it (it answers a heartbeat).
    async fn accept_acked(&self, heartbeat_interval_ms: u64, deadline_ms: u64) -> HubSide {
        let mut ws = self.accept().await;
        send(
            &mut ws,
            HubToAgent::ConnectionAck(ack(heartbeat_interval_ms, deadline_ms)),
        )
        .await;
        send(&mut ws, HubToAgent::Heartbeat(Heartbeat { seq: 0 })).await;
        let AgentToHub::HeartbeatAck(Heartbeat { seq: 0 }) = recv_text(&mut ws).await.msg else {
            panic!("expected heartbeat.ack");
        };
        ws
    }

    /// Waits for the agent to return.
    async fn finish(self) -> anyhow::Result<()> {
        within(self.agent).await.unwrap()
    }

    /// Shuts the agent down, reading `ws` like a real hub so the close
    /// handshake completes, and checks the close code.
    async fn stop(self, mut ws: HubSide) {
        self.shutdown.cancel();
        let (closed, result) = tokio::join!(read_to_close(&mut ws), self.finish());
        assert_eq!(closed, Some(CloseCode::NORMAL));
        result.unwrap();
    }
}

/// Reads until the agent closes; answers its close frame and returns the code.
async fn read_to_close(ws: &mut HubSide) -> Option<u16> {
    let mut code = None;
    while let Some(next) = within(ws.next()).await {
        let Ok(message) = next else { break };
        if let Message::Close(frame) = message {
            code = frame.map(|f| u16::from(f.code));
        }
    }
    code
}

async fn within<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(WAIT, future)
        .await
        .expect("timed out waiting")
}

fn ack(heartbeat_interval_ms: u64, heartbeat_deadline_ms: u64) -> ConnectionAck {
    ConnectionAck {
        protocol: muster_proto::PROTOCOL_VERSION.into(),
        hub_version: "test".into(),
        connection_id: "c1".into(),
        principal: Principal {
            kind: "agent".into(),
            name: "web-1".into(),
            role: None,
        },
        heartbeat_interval_ms,
        heartbeat_deadline_ms,
        limits: Limits {
            max_message_bytes: muster_proto::limits::MAX_MESSAGE_BYTES,
            max_output_chunk_bytes: muster_proto::limits::MAX_OUTPUT_CHUNK_BYTES,
            output_batch_ms: muster_proto::limits::OUTPUT_BATCH_MS,
            max_output_bytes_per_run: 1 << 20,
            max_queue_per_agent: 100,
        },
    }
}

async fn send(ws: &mut HubSide, msg: HubToAgent) {
    send_envelope(ws, Envelope::plain(msg)).await;
}

async fn send_envelope(ws: &mut HubSide, envelope: Envelope<HubToAgent>) {
    ws.send(Message::text(envelope.encode())).await.unwrap();
}

async fn close(ws: &mut HubSide, code: u16) {
    let frame = CloseFrame {
        code: code.into(),
        reason: "test".into(),
    };
    let _ = ws.close(Some(frame)).await;
}

/// The next message from the agent, skipping its heartbeats.
async fn recv(ws: &mut HubSide) -> Message {
    loop {
        let message = within(ws.next()).await.expect("agent hung up").unwrap();
        if let Message::Text(text) = &message
            && let Ok(Envelope {
                msg: AgentToHub::Heartbeat(_),
                ..
            }) = Envelope::<AgentToHub>::decode(text)
        {
            continue;
        }
        return message;
    }
}

async fn recv_text(ws: &mut HubSide) -> Envelope<AgentToHub> {
    match recv(ws).await {
        Message::Text(text) => Envelope::decode(&text).unwrap(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

fn run_start(run: RunId, script: &str) -> HubToAgent {
    HubToAgent::RunStart(RunStart {
        run,
        command: CommandSpec::Shell(script.into()),
        env: BTreeMap::new(),
        cwd: None,
        timeout_ms: None,
        kill_grace_ms: 500,
        output_cap_bytes: 1 << 20,
    })
}

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
    send(&mut ws, run_start(RunId::generate(), "true")).await;
    let AgentToHub::RunStarted(_) = recv_text(&mut ws).await.msg else {
        panic!("expected run.started");
    };
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
        hub_url: format!("ws://{addr}"),
        token: "t".into(),
        name: None,
        labels: BTreeMap::new(),
        max_concurrency: 1,
        kill_grace: Duration::from_millis(100),
    };
    let shutdown = CancellationToken::new();
    let agent = tokio::spawn(muster_agent::run(options, shutdown.clone()));
    shutdown.cancel();
    within(agent).await.unwrap().unwrap();
}

#[tokio::test]
async fn wss_is_refused_up_front() {
    let options = AgentOptions {
        hub_url: "https://hub.example".into(),
        token: "t".into(),
        name: None,
        labels: BTreeMap::new(),
        max_concurrency: 1,
        kill_grace: Duration::from_secs(1),
    };
    let error = muster_agent::run(options, CancellationToken::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("wss is not supported yet"), "{error}");
}
