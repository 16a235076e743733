//! A scripted hub on `127.0.0.1:0`: the test accepts the agent's connections
//! and plays the hub's side by hand, message by message.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use muster_agent::{ActionSet, AgentOptions, Outgoing};
use muster_proto::actions::ExecMode;
use muster_proto::limits::Limits;
use muster_proto::messages::{
    AgentHello, ConnectionAck, Heartbeat, Principal, RunAck, RunExited, RunStart,
};
use muster_proto::{AgentName, AgentToHub, CommandSpec, Envelope, HubToAgent, OutputFrame, RunId};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_util::sync::CancellationToken;

/// Bound on every wait in these tests, so a bug fails instead of hanging.
pub(crate) const WAIT: Duration = Duration::from_secs(10);

/// Heartbeats rare enough to stay out of the way of a test.
const QUIET_HEARTBEAT_MS: (u64, u64) = (60_000, 120_000);

/// The hub's end of an agent connection.
pub(crate) type HubSide = WebSocketStream<TcpStream>;

/// An agent running against a listener the test scripts by hand.
pub(crate) struct Harness {
    listener: TcpListener,
    pub(crate) shutdown: CancellationToken,
    agent: JoinHandle<anyhow::Result<()>>,
}

impl Harness {
    /// An agent with an in-memory ledger.
    pub(crate) async fn start() -> Self {
        Self::start_in(None).await
    }

    /// An agent whose ledger lives in `state_dir`, if given.
    pub(crate) async fn start_in(state_dir: Option<&Path>) -> Self {
        Self::launch(state_dir, None).await
    }

    /// An agent with an in-memory ledger and the given exec mode and actions.
    pub(crate) async fn start_with_actions(exec: ExecMode, actions: ActionSet) -> Self {
        Self::launch_with(|options| AgentOptions {
            exec,
            actions,
            ..options
        })
        .await
    }

    /// An agent that sends host metrics every `interval`; the others send
    /// none, so that every message a test reads is one it expects.
    pub(crate) async fn start_with_metrics(interval: Duration) -> Self {
        Self::launch(None, Some(interval)).await
    }

    async fn launch(state_dir: Option<&Path>, metrics_interval: Option<Duration>) -> Self {
        Self::launch_with(|options| AgentOptions {
            state_dir: state_dir.map(Path::to_owned),
            metrics_interval,
            ..options
        })
        .await
    }

    /// An agent with the test's options, adjusted by `adjust`.
    async fn launch_with(adjust: impl FnOnce(AgentOptions) -> AgentOptions) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let options = AgentOptions {
            name: Some(AgentName::new("web-1").unwrap()),
            labels: BTreeMap::from([("role".into(), "web".into())]),
            max_concurrency: 2,
            kill_grace: Duration::from_millis(500),
            state_dir: None,
            metrics_interval: None,
            ..AgentOptions::new(url, "mst_test_token")
        };
        let options = adjust(options);
        let shutdown = CancellationToken::new();
        let agent = tokio::spawn(muster_agent::run(options, shutdown.clone()));
        Self {
            listener,
            shutdown,
            agent,
        }
    }

    /// Accepts the agent's next connection and checks its `hello`.
    pub(crate) async fn accept_hello(&self) -> (HubSide, AgentHello) {
        let (tcp, _) = within(self.listener.accept()).await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        let AgentToHub::Hello(hello) = recv_text(&mut ws).await.msg else {
            panic!("first message is not hello");
        };
        assert_eq!(hello.token, "mst_test_token");
        assert_eq!(hello.name.as_ref().unwrap().as_str(), "web-1");
        assert_eq!(hello.capabilities[0], "exec");
        assert_eq!(hello.max_concurrency, 2);
        assert_eq!(hello.labels["role"], "web");
        (ws, hello)
    }

    /// Accepts the agent's next connection without answering its `hello`.
    pub(crate) async fn accept(&self) -> HubSide {
        self.accept_hello().await.0
    }

    /// Accepts a connection and acknowledges its `hello`; what the agent
    /// re-sends from its spool follows at once.
    pub(crate) async fn accept_ack(&self) -> (HubSide, AgentHello) {
        let (mut ws, hello) = self.accept_hello().await;
        let (interval, deadline) = QUIET_HEARTBEAT_MS;
        send(&mut ws, HubToAgent::ConnectionAck(ack(interval, deadline))).await;
        (ws, hello)
    }

    /// Accepts a connection, completes its handshake and waits until the agent
    /// serves it (it answers a heartbeat); for an agent with nothing to re-send.
    pub(crate) async fn accept_acked(
        &self,
        heartbeat_interval_ms: u64,
        deadline_ms: u64,
    ) -> HubSide {
        let mut ws = self.accept().await;
        let ack = ack(heartbeat_interval_ms, deadline_ms);
        send(&mut ws, HubToAgent::ConnectionAck(ack)).await;
        round_trip(&mut ws).await;
        ws
    }

    /// Waits for the agent to return.
    pub(crate) async fn finish(self) -> anyhow::Result<()> {
        within(self.agent).await.unwrap()
    }

    /// Shuts the agent down, reading `ws` like a real hub so the close
    /// handshake completes, and checks the close code.
    pub(crate) async fn stop(self, mut ws: HubSide) {
        self.shutdown.cancel();
        let (closed, result) = tokio::join!(read_to_close(&mut ws), self.finish());
        assert_eq!(closed, Some(muster_proto::CloseCode::NORMAL));
        result.unwrap();
    }

    /// Kills the agent as a crash would: no shutdown, no goodbye.
    pub(crate) async fn crash(self) {
        self.agent.abort();
        assert!(within(self.agent).await.unwrap_err().is_cancelled());
    }
}

/// Sends a heartbeat and waits for its ack; fails on anything else, so the
/// agent must have nothing else to send.
pub(crate) async fn round_trip(ws: &mut HubSide) {
    send(ws, HubToAgent::Heartbeat(Heartbeat { seq: 0 })).await;
    let AgentToHub::HeartbeatAck(Heartbeat { seq: 0 }) = recv_text(ws).await.msg else {
        panic!("expected heartbeat.ack");
    };
}

/// Reads until the agent closes; answers its close frame and returns the code.
pub(crate) async fn read_to_close(ws: &mut HubSide) -> Option<u16> {
    let mut code = None;
    while let Some(next) = within(ws.next()).await {
        let Ok(message) = next else { break };
        if let Message::Close(frame) = message {
            code = frame.map(|f| u16::from(f.code));
        }
    }
    code
}

pub(crate) async fn within<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(WAIT, future)
        .await
        .expect("timed out waiting")
}

pub(crate) fn ack(heartbeat_interval_ms: u64, heartbeat_deadline_ms: u64) -> ConnectionAck {
    ConnectionAck {
        protocol: muster_proto::PROTOCOL_VERSION.into(),
        hub_version: "test".into(),
        connection_id: "c1".into(),
        principal: Principal {
            kind: "agent".into(),
            name: "web-1".into(),
            role: None,
            scope: None,
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

pub(crate) async fn send(ws: &mut HubSide, msg: HubToAgent) {
    send_envelope(ws, Envelope::plain(msg)).await;
}

pub(crate) async fn send_envelope(ws: &mut HubSide, envelope: Envelope<HubToAgent>) {
    ws.send(Message::text(envelope.encode())).await.unwrap();
}

/// Acknowledges `run`'s frames below `next_seq`, and its exit if `exited`.
pub(crate) async fn send_run_ack(ws: &mut HubSide, run: RunId, next_seq: u64, exited: bool) {
    let ack = RunAck {
        run,
        next_seq,
        exited,
    };
    send(ws, HubToAgent::RunAck(ack)).await;
}

pub(crate) async fn close(ws: &mut HubSide, code: u16) {
    let frame = CloseFrame {
        code: code.into(),
        reason: "test".into(),
    };
    let _ = ws.close(Some(frame)).await;
}

/// The next message from the agent, skipping its heartbeats.
pub(crate) async fn recv(ws: &mut HubSide) -> Message {
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

pub(crate) async fn recv_text(ws: &mut HubSide) -> Envelope<AgentToHub> {
    match recv(ws).await {
        Message::Text(text) => Envelope::decode(&text).unwrap(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

/// The next per-run message from the agent (`run.started`, output, `run.exited`).
pub(crate) async fn recv_run_message(ws: &mut HubSide) -> Outgoing {
    match recv(ws).await {
        Message::Binary(bytes) => Outgoing::Output(OutputFrame::decode(bytes).unwrap()),
        Message::Text(text) => match Envelope::decode(&text).unwrap().msg {
            AgentToHub::RunStarted(started) => Outgoing::Started(started),
            AgentToHub::RunExited(exited) => Outgoing::Exited(exited),
            other => panic!("expected a run message, got {other:?}"),
        },
        other => panic!("expected a run message, got {other:?}"),
    }
}

/// Reads per-run messages up to and including the next `run.exited`.
pub(crate) async fn recv_until_exited(ws: &mut HubSide) -> (Vec<Outgoing>, RunExited) {
    let mut received = Vec::new();
    loop {
        match recv_run_message(ws).await {
            Outgoing::Exited(exited) => return (received, exited),
            other => received.push(other),
        }
    }
}

pub(crate) fn run_start(run: RunId, script: &str) -> HubToAgent {
    run_command(run, CommandSpec::Shell(script.into()))
}

/// A `run.start` of `command`, without environment, cwd or timeout.
pub(crate) fn run_command(run: RunId, command: CommandSpec) -> HubToAgent {
    HubToAgent::RunStart(RunStart {
        run,
        command,
        env: BTreeMap::new(),
        cwd: None,
        timeout_ms: None,
        kill_grace_ms: 500,
        output_cap_bytes: 1 << 20,
        session: None,
    })
}
