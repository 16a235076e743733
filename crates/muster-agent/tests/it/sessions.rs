//! Sessions against the scripted hub: pipe sessions here, input applied
//! exactly once and echoed in order, idle and lifetime ends, and the
//! `hello` report; pty sessions in `terminals`.

use std::collections::BTreeMap;

use muster_proto::messages::{
    Heartbeat, RunExited, RunOutcome, RunRef, RunReport, RunReportStatus, RunStart,
};
use muster_proto::sessions::{
    InputRecord, SessionDeliver, SessionKind, SessionResize, SessionScreen, SessionSnapshot,
    SessionSpec,
};
use muster_proto::{
    AgentToHub, CloseCode, CommandSpec, Envelope, ErrorCode, HubToAgent, OutputFrame, OutputStream,
    RunId,
};
use tokio_tungstenite::tungstenite::Message;

use crate::fake_hub::{Harness, HubSide, close, read_to_close, recv, send, send_run_ack};

/// A `run.start` of a session of `kind` running `command`.
pub(crate) fn session_start(
    run: RunId,
    command: CommandSpec,
    kind: SessionKind,
    idle_timeout_ms: u64,
    timeout_ms: Option<u64>,
) -> HubToAgent {
    HubToAgent::RunStart(RunStart {
        run,
        command,
        env: BTreeMap::new(),
        cwd: None,
        timeout_ms,
        kill_grace_ms: 500,
        output_cap_bytes: u64::MAX,
        session: Some(SessionSpec {
            idle_timeout_ms: Some(idle_timeout_ms),
            ..SessionSpec::new(kind)
        }),
    })
}

pub(crate) fn shell(script: &str) -> CommandSpec {
    CommandSpec::Shell(script.into())
}

/// Idle timeout long enough to stay out of a test's way.
pub(crate) const NOT_IDLE_MS: u64 = 60_000;

/// The hub's side of one session: numbers inputs and sends them.
pub(crate) struct Writer {
    pub(crate) run: RunId,
    next: u64,
}

impl Writer {
    pub(crate) fn new(run: RunId) -> Self {
        Self { run, next: 1 }
    }

    /// Sends `data` as the next input.
    pub(crate) async fn type_in(&mut self, ws: &mut HubSide, data: &str) {
        let seq = self.next;
        self.next += 1;
        deliver(ws, self.run, seq, data).await;
    }
}

/// Sends the hub's input `seq` of `run`.
pub(crate) async fn deliver(ws: &mut HubSide, run: RunId, seq: u64, data: &str) {
    let deliver = SessionDeliver {
        run,
        seq,
        data: data.into(),
        from: "ops".into(),
        at: 1_732_252_800_000,
    };
    send(ws, HubToAgent::SessionInput(deliver)).await;
}

pub(crate) async fn resize(ws: &mut HubSide, run: RunId, cols: u16, rows: u16) {
    send(
        ws,
        HubToAgent::SessionResize(SessionResize { run, cols, rows }),
    )
    .await;
}

pub(crate) async fn snapshot(ws: &mut HubSide, run: RunId, token: u64) {
    let token = Some(token);
    send(
        ws,
        HubToAgent::SessionSnapshot(SessionSnapshot { run, token }),
    )
    .await;
}

/// Everything the agent sent about sessions, in the order it arrived.
#[derive(Debug, Default)]
pub(crate) struct Transcript {
    pub(crate) frames: Vec<OutputFrame>,
    pub(crate) applied: Vec<u64>,
    pub(crate) screens: Vec<SessionScreen>,
    pub(crate) heartbeat_acks: usize,
    pub(crate) started: Option<u32>,
    pub(crate) exited: Option<RunExited>,
}

impl Transcript {
    /// Reads one message from the agent into the transcript.
    pub(crate) async fn read(&mut self, ws: &mut HubSide) {
        match recv(ws).await {
            Message::Binary(bytes) => self.frames.push(OutputFrame::decode(bytes).unwrap()),
            Message::Text(text) => match Envelope::decode(&text).unwrap().msg {
                AgentToHub::RunStarted(started) => self.started = Some(started.pid),
                AgentToHub::SessionApplied(applied) => self.applied.push(applied.seq),
                AgentToHub::SessionScreen(screen) => self.screens.push(screen),
                AgentToHub::HeartbeatAck(_) => self.heartbeat_acks += 1,
                AgentToHub::RunExited(exited) => self.exited = Some(exited),
                other => panic!("unexpected message {other:?}"),
            },
            other => panic!("unexpected message {other:?}"),
        }
    }

    /// Reads until `done` holds (each read waits at most the tests' bound).
    pub(crate) async fn read_until(&mut self, ws: &mut HubSide, done: impl Fn(&Self) -> bool) {
        while !done(self) {
            self.read(ws).await;
        }
    }

    /// Reads to the run's `run.started`; returns its pid.
    pub(crate) async fn read_started(&mut self, ws: &mut HubSide) -> u32 {
        self.read_until(ws, |t| t.started.is_some()).await;
        self.started.unwrap()
    }

    /// Reads to the run's exit report.
    pub(crate) async fn read_to_exit(&mut self, ws: &mut HubSide) -> RunExited {
        self.read_until(ws, |t| t.exited.is_some()).await;
        self.exited.clone().unwrap()
    }

    /// The bytes of `stream`, as text.
    pub(crate) fn text(&self, stream: OutputStream) -> String {
        let bytes: Vec<u8> = self
            .frames
            .iter()
            .filter(|f| f.header.stream == stream)
            .flat_map(|f| f.payload.iter().copied())
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    pub(crate) fn stdout(&self) -> String {
        self.text(OutputStream::Stdout)
    }

    /// The echoed inputs, in order.
    pub(crate) fn inputs(&self) -> Vec<InputRecord> {
        let echoes = self
            .frames
            .iter()
            .filter(|f| f.header.stream == OutputStream::Input);
        echoes
            .map(|f| serde_json::from_slice(&f.payload).unwrap())
            .collect()
    }

    /// Checks the frames are numbered 0, 1, … and stamped with a time.
    pub(crate) fn assert_numbered(&self) {
        for (seq, frame) in self.frames.iter().enumerate() {
            assert_eq!(frame.header.seq, seq as u64, "seq gap");
            assert!(frame.header.at.is_some(), "session frame without at");
        }
    }
}

#[tokio::test]
async fn inputs_reach_the_process_once_each_in_order_after_their_echo() {
    let hub = Harness::start().await;
    let mut ws = hub.accept_acked(60_000, 120_000).await;
    let run = RunId::generate();
    let cat = CommandSpec::Argv(vec!["cat".into()]);
    send(
        &mut ws,
        session_start(run, cat, SessionKind::Pipe, NOT_IDLE_MS, None),
    )
    .await;
    for seq in [1, 2, 2, 1, 3] {
        deliver(&mut ws, run, seq, &format!("line {seq}")).await;
    }
    let mut transcript = Transcript::default();
    transcript
        .read_until(&mut ws, |t| {
            t.applied.len() == 5 && t.stdout().ends_with("line 3\n")
        })
        .await;
    assert_eq!(transcript.applied, [1, 2, 2, 2, 3]);
    // A gap is not applied; the input after the last applied one is.
    deliver(&mut ws, run, 5, "line 5").await;
    deliver(&mut ws, run, 4, "line 4").await;
    transcript
        .read_until(&mut ws, |t| t.stdout().ends_with("line 4\n"))
        .await;
    send(&mut ws, HubToAgent::RunCancel(RunRef { run })).await;
    let exited = transcript.read_to_exit(&mut ws).await;
    assert_eq!(exited.outcome, RunOutcome::Cancelled);
    assert_eq!(transcript.applied, [1, 2, 2, 2, 3, 4]);
    assert_eq!(transcript.stdout(), "line 1\nline 2\nline 3\nline 4\n");
    let echoed: Vec<_> = transcript
        .inputs()
        .iter()
        .map(|r| (r.seq, r.data.clone()))
        .collect();
    let expected: Vec<_> = (1..=4).map(|seq| (seq, format!("line {seq}"))).collect();
    assert_eq!(echoed, expected);
    assert_echo_precedes_its_output(&transcript);
    transcript.assert_numbered();
    // Acknowledged, the run leaves nothing for the agent to deliver at stop.
    send_run_ack(&mut ws, run, 0, true).await;
    hub.stop(ws).await;
}

/// Every line of stdout comes after the echo of the input that caused it.
fn assert_echo_precedes_its_output(transcript: &Transcript) {
    let (mut echoes, mut lines) = (0, 0);
    for frame in &transcript.frames {
        match frame.header.stream {
            OutputStream::Input => echoes += 1,
            _ => lines += frame.payload.iter().filter(|b| **b == b'\n').count(),
        }
        assert!(lines <= echoes, "output of input {lines} before its echo");
    }
}

#[tokio::test]
async fn a_pipe_session_answers_each_line_in_turn() {
    let hub = Harness::start().await;
    let mut ws = hub.accept_acked(60_000, 120_000).await;
    let run = RunId::generate();
    let script = r#"while read l; do printf '{"reply":"%s"}\n' "$l"; done"#;
    send(
        &mut ws,
        session_start(run, shell(script), SessionKind::Pipe, NOT_IDLE_MS, None),
    )
    .await;
    let mut writer = Writer::new(run);
    let mut transcript = Transcript::default();
    for word in ["one", "two", "three"] {
        writer.type_in(&mut ws, word).await;
        let reply = format!("{{\"reply\":\"{word}\"}}\n");
        transcript
            .read_until(&mut ws, |t| t.stdout().ends_with(&reply))
            .await;
    }
    let streams: Vec<_> = transcript.frames.iter().map(|f| f.header.stream).collect();
    use OutputStream::{Input, Stdout};
    assert_eq!(streams, [Input, Stdout, Input, Stdout, Input, Stdout]);
    // A pipe session has no screen: a snapshot is not answered.
    snapshot(&mut ws, run, 1).await;
    send(&mut ws, HubToAgent::Heartbeat(Heartbeat { seq: 0 })).await;
    transcript
        .read_until(&mut ws, |t| t.heartbeat_acks == 1)
        .await;
    assert!(transcript.screens.is_empty());
    send(&mut ws, HubToAgent::RunCancel(RunRef { run })).await;
    let exited = transcript.read_to_exit(&mut ws).await;
    assert_eq!(exited.outcome, RunOutcome::Cancelled);
    transcript.assert_numbered();
    // Acknowledged, the run leaves nothing for the agent to deliver at stop.
    send_run_ack(&mut ws, run, 0, true).await;
    hub.stop(ws).await;
}

#[tokio::test]
async fn a_session_without_input_or_output_ends_idle() {
    let hub = Harness::start().await;
    let mut ws = hub.accept_acked(60_000, 120_000).await;
    let run = RunId::generate();
    let cat = CommandSpec::Argv(vec!["cat".into()]);
    send(
        &mut ws,
        session_start(run, cat, SessionKind::Pipe, 300, None),
    )
    .await;
    let exited = Transcript::default().read_to_exit(&mut ws).await;
    assert_eq!(exited.outcome, RunOutcome::TimedOut);
    assert_eq!(exited.error_code, Some(ErrorCode::SessionIdle));
    assert_eq!(exited.error.as_deref(), Some("idle for 300ms"));
    // Acknowledged, the run leaves nothing for the agent to deliver at stop.
    send_run_ack(&mut ws, run, 0, true).await;
    hub.stop(ws).await;
}

#[tokio::test]
async fn a_session_ends_at_its_maximum_lifetime() {
    let hub = Harness::start().await;
    let mut ws = hub.accept_acked(60_000, 120_000).await;
    let run = RunId::generate();
    let sleep = CommandSpec::Argv(vec!["sleep".into(), "100".into()]);
    send(
        &mut ws,
        session_start(run, sleep, SessionKind::Pty, NOT_IDLE_MS, Some(300)),
    )
    .await;
    let exited = Transcript::default().read_to_exit(&mut ws).await;
    assert_eq!(exited.outcome, RunOutcome::TimedOut);
    assert_eq!(exited.error_code, Some(ErrorCode::SessionLifetime));
    // Acknowledged, the run leaves nothing for the agent to deliver at stop.
    send_run_ack(&mut ws, run, 0, true).await;
    hub.stop(ws).await;
}

#[tokio::test]
async fn hello_reports_the_input_applied_and_resent_input_is_not_applied_again() {
    let hub = Harness::start().await;
    let mut ws = hub.accept_acked(60_000, 120_000).await;
    let (session, plain) = (RunId::generate(), RunId::generate());
    let cat = CommandSpec::Argv(vec!["cat".into()]);
    send(
        &mut ws,
        session_start(session, cat, SessionKind::Pipe, NOT_IDLE_MS, None),
    )
    .await;
    send(&mut ws, crate::fake_hub::run_start(plain, "sleep 100")).await;
    let mut transcript = Transcript::default();
    deliver(&mut ws, session, 1, "a").await;
    deliver(&mut ws, session, 2, "b").await;
    transcript
        .read_until(&mut ws, |t| t.applied == [1, 2])
        .await;
    close(&mut ws, CloseCode::GOING_AWAY).await;
    read_to_close(&mut ws).await;

    let (mut ws, hello) = hub.accept_ack().await;
    let mut reports = hello.runs.clone();
    reports.sort_by_key(|r| r.run != session);
    let running = |run, input_applied| RunReport {
        run,
        status: RunReportStatus::Running,
        input_applied,
    };
    assert_eq!(reports, [running(session, Some(2)), running(plain, None)]);
    // The hub sends again what came after `applied`, and maybe more.
    let mut transcript = Transcript::default();
    deliver(&mut ws, session, 2, "b").await;
    deliver(&mut ws, session, 3, "c").await;
    transcript
        .read_until(&mut ws, |t| {
            t.applied == [2, 3] && t.stdout().ends_with("c\n")
        })
        .await;
    assert_eq!(transcript.stdout(), "a\nb\nc\n");
    for run in [session, plain] {
        send(&mut ws, HubToAgent::RunCancel(RunRef { run })).await;
    }
    hub.stop(ws).await;
}
