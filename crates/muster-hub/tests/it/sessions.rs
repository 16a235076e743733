//! Sessions through a real hub and a real agent: viewers and writers, input
//! taken exactly once whatever is resent, the screen of a pty, and the
//! limits that end or refuse sessions with their codes.

use muster_client::{Client, ClientError, Event, RunRequest};
use muster_proto::sessions::{
    InputRecord, SessionAttach, SessionAttached, SessionInput, SessionKind, SessionRef,
    SessionScreen, SessionSnapshot, SessionSpec,
};
use muster_proto::types::CommandSpec;
use muster_proto::{
    AgentName, ClientToHub, ErrorCode, HubToClient, OutputStream, Role, RunId, RunInfo,
};
use tokio::sync::mpsc;

use crate::fixture::{TestHub, WAIT};

/// A session on `agent` running `script` in `sh`, created and subscribed.
async fn open(client: &Client, agent: &str, kind: SessionKind, script: &str) -> RunInfo {
    let mut request = RunRequest::new(
        AgentName::new(agent).unwrap(),
        CommandSpec::Shell(script.to_owned()),
    );
    request.session = Some(Box::new(SessionSpec::new(kind)));
    client.create_run(request, true).await.unwrap().run
}

async fn attach(client: &Client, run: RunId, writer: Option<&str>) -> SessionAttached {
    let attach = SessionAttach {
        run,
        write: writer.is_some(),
        writer: writer.map(str::to_owned),
    };
    match client
        .request(ClientToHub::SessionAttach(attach))
        .await
        .unwrap()
    {
        HubToClient::SessionAttached(attached) => attached,
        other => panic!("{other:?}"),
    }
}

/// Sends input `seq` and returns the hub's answer.
async fn type_in(
    client: &Client,
    run: RunId,
    seq: u64,
    data: &str,
) -> Result<HubToClient, ClientError> {
    let input = SessionInput {
        run,
        seq,
        data: data.to_owned(),
    };
    client.request(ClientToHub::SessionInput(input)).await
}

fn code(answer: &Result<HubToClient, ClientError>) -> Option<ErrorCode> {
    answer.as_ref().err().and_then(ClientError::code)
}

/// One output frame as it arrived: seq, stream, payload.
type Seen = (u64, OutputStream, Vec<u8>);

/// Reads `run`'s frames until the stdout so far holds `text`.
async fn frames_until(events: &mut mpsc::Receiver<Event>, run: RunId, text: &str) -> Vec<Seen> {
    let mut seen = Vec::new();
    let mut stdout = Vec::new();
    tokio::time::timeout(WAIT, async {
        while !String::from_utf8_lossy(&stdout).contains(text) {
            match events.recv().await.expect("events open") {
                Event::Output(frame) if frame.header.run == run => {
                    if frame.header.stream == OutputStream::Stdout {
                        stdout.extend_from_slice(&frame.payload);
                    }
                    let h = frame.header;
                    seen.push((h.seq, h.stream, frame.payload.to_vec()));
                }
                Event::Closed { reason, .. } => panic!("closed: {reason}"),
                _ => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "waited for {text:?}; stdout so far: {:?}",
            String::from_utf8_lossy(&stdout)
        )
    });
    seen
}

/// Waits for `run`'s terminal status.
async fn until_ended(events: &mut mpsc::Receiver<Event>, run: RunId) -> RunInfo {
    tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await.expect("events open") {
                Event::Message(env) => match env.msg {
                    HubToClient::RunStatus(s) if s.run.id == run && s.run.state.is_terminal() => {
                        return s.run;
                    }
                    _ => {}
                },
                Event::Closed { reason, .. } => panic!("closed: {reason}"),
                Event::Output(_) => {}
            }
        }
    })
    .await
    .expect("the session ends")
}

/// A key of `role`, connected.
async fn connect_as(hub: &TestHub, name: &str, role: Role) -> (Client, mpsc::Receiver<Event>) {
    let token = hub.hub.mint_key(name, role).await.unwrap();
    Client::connect(&hub.url, token.expose()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_viewer_sees_what_the_writer_sees_and_cannot_type() {
    let hub = TestHub::start().await;
    let _agent = hub.agent("tty-host", 1).await;
    let (writer, mut writer_events) = hub.client().await;
    let session = open(&writer, "tty-host", SessionKind::Pty, "exec cat").await;
    let (viewer, mut viewer_events) = connect_as(&hub, "watcher", Role::Viewer).await;
    let (operator, _operator_events) = connect_as(&hub, "bystander", Role::Operator).await;
    // Someone who only watches who comes and goes.
    let (observer, mut presence_events) = hub.client().await;
    observer
        .subscribe(&format!("session:{}", session.id), None)
        .await
        .unwrap();
    viewer
        .subscribe(&session.id.channel().to_string(), Some(0))
        .await
        .unwrap();

    let attached = attach(&writer, session.id, Some("w-1")).await;
    assert_eq!(
        (attached.kind, attached.write, attached.last_seq),
        (SessionKind::Pty, true, 0)
    );
    assert_eq!((attached.cols, attached.rows), (80, 24));
    // A viewer key may not attach as a writer, and cannot type read-only.
    let as_writer = SessionAttach {
        run: session.id,
        write: true,
        writer: Some("sneaky".into()),
    };
    let refused = viewer.request(ClientToHub::SessionAttach(as_writer)).await;
    assert_eq!(code(&refused), Some(ErrorCode::Forbidden), "{refused:?}");
    attach(&viewer, session.id, None).await;
    let typed = type_in(&viewer, session.id, 1, "rm -rf /\r").await;
    assert_eq!(code(&typed), Some(ErrorCode::Forbidden), "{typed:?}");
    // An operator that attached read-only cannot either; one that did not attach is told to.
    let typed = type_in(&operator, session.id, 1, "x").await;
    assert_eq!(code(&typed), Some(ErrorCode::InvalidState), "{typed:?}");
    attach(&operator, session.id, None).await;
    let typed = type_in(&operator, session.id, 1, "x").await;
    assert_eq!(code(&typed), Some(ErrorCode::Forbidden), "{typed:?}");

    let acked = type_in(&writer, session.id, 1, "hello from w-1\r")
        .await
        .unwrap();
    assert!(
        matches!(acked, HubToClient::SessionInputAck(a) if a.seq == 1),
        "{acked:?}"
    );
    let mine = frames_until(&mut writer_events, session.id, "hello from w-1\r\n").await;
    let theirs = frames_until(&mut viewer_events, session.id, "hello from w-1\r\n").await;
    assert_eq!(mine, theirs, "both see the same frames in the same order");
    // The applied input is in the stream, before the output it caused.
    let (_, _, record) = mine
        .iter()
        .find(|(_, stream, _)| *stream == OutputStream::Input)
        .expect("an input record");
    let record: InputRecord = serde_json::from_slice(record).unwrap();
    assert_eq!((record.seq, record.from.as_str()), (1, "admin"));
    assert_eq!(record.data, "hello from w-1\r");
    assert!(
        !String::from_utf8_lossy(&mine.iter().flat_map(|f| f.2.clone()).collect::<Vec<_>>())
            .contains("rm -rf"),
        "the refused input never reached the terminal"
    );

    // The observer heard them come and go on session:<id>.
    writer
        .request(ClientToHub::SessionDetach(SessionRef { run: session.id }))
        .await
        .unwrap();
    let mut presence = Vec::new();
    tokio::time::timeout(WAIT, async {
        while presence.len() < 4 {
            if let Event::Message(env) = presence_events.recv().await.unwrap() {
                match env.msg {
                    HubToClient::SessionJoined(p) => presence.push(("joined", p.who, p.write)),
                    HubToClient::SessionLeft(p) => presence.push(("left", p.who, p.write)),
                    _ => {}
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("joins and leaves on session:<id>: {presence:?}"));
    assert_eq!(
        presence,
        [
            ("joined", "admin".into(), true),
            ("joined", "watcher".into(), false),
            ("joined", "bystander".into(), false),
            ("left", "admin".into(), true),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_resent_in_any_order_is_applied_once_and_a_gap_is_refused() {
    let hub = TestHub::start().await;
    let _agent = hub.agent("pipes", 1).await;
    let (client, mut events) = hub.client().await;
    let session = open(&client, "pipes", SessionKind::Pipe, "exec cat").await;
    attach(&client, session.id, Some("w-1")).await;
    for (seq, line) in [(1, "one"), (2, "two"), (2, "two"), (1, "one"), (3, "three")] {
        let acked = type_in(&client, session.id, seq, line).await.unwrap();
        assert!(
            matches!(acked, HubToClient::SessionInputAck(a) if a.seq == seq),
            "{acked:?}"
        );
    }
    let gap = type_in(&client, session.id, 5, "five").await;
    assert_eq!(code(&gap), Some(ErrorCode::InputGap), "{gap:?}");
    // A second writer numbers its own inputs from 1.
    let (other, _other_events) = hub.client().await;
    attach(&other, session.id, Some("w-2")).await;
    type_in(&other, session.id, 1, "four").await.unwrap();
    let frames = frames_until(&mut events, session.id, "four\n").await;
    let stdout: Vec<u8> = frames
        .iter()
        .filter(|f| f.1 == OutputStream::Stdout)
        .flat_map(|f| f.2.clone())
        .collect();
    assert_eq!(String::from_utf8_lossy(&stdout), "one\ntwo\nthree\nfour\n");
    let inputs: Vec<u64> = frames
        .iter()
        .filter(|f| f.1 == OutputStream::Input)
        .map(|f| serde_json::from_slice::<InputRecord>(&f.2).unwrap().seq)
        .collect();
    assert_eq!(
        inputs,
        [1, 2, 3, 4],
        "each input applied once, numbered by the hub"
    );
    // Re-attaching tells each writer where it stands.
    assert_eq!(attach(&client, session.id, Some("w-1")).await.last_seq, 3);
    assert_eq!(attach(&other, session.id, Some("w-2")).await.last_seq, 1);
    assert_eq!(attach(&other, session.id, Some("w-new")).await.last_seq, 0);
    client.cancel_run(session.id).await.unwrap();
    let ended = until_ended(&mut events, session.id).await;
    assert_eq!(ended.state, muster_proto::RunState::Cancelled);
    // Input to a session that ended is refused.
    let late = type_in(&client, session.id, 4, "late").await;
    assert_eq!(code(&late), Some(ErrorCode::InvalidState), "{late:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_paints_the_current_screen_as_of_an_output_seq() {
    let hub = TestHub::start().await;
    let _agent = hub.agent("screen", 1).await;
    let (client, mut events) = hub.client().await;
    let script = r"printf '\033[2J\033[5;10Hhello'; printf '\033[12;3Hworld'; exec sleep 100";
    let session = open(&client, "screen", SessionKind::Pty, script).await;
    let frames = frames_until(&mut events, session.id, "world").await;
    let next = frames.last().map_or(0, |f| f.0 + 1);
    let screen = client
        .request(ClientToHub::SessionSnapshot(SessionSnapshot {
            run: session.id,
            token: None,
        }))
        .await
        .unwrap();
    let HubToClient::SessionScreen(SessionScreen {
        next_seq,
        cols,
        rows,
        data,
        token,
        ..
    }) = screen
    else {
        panic!("{screen:?}");
    };
    assert_eq!((cols, rows, token), (80, 24, None));
    assert_eq!(next_seq, next, "the screen covers exactly the frames seen");
    // The screen, replayed on a blank terminal, holds the words where they were drawn.
    assert!(data.contains("hello") && data.contains("world"), "{data:?}");
    client.cancel_run(session.id).await.unwrap();
    // A pipe session has no screen.
    let pipe = open(&client, "screen", SessionKind::Pipe, "exec cat").await;
    let refused = client
        .request(ClientToHub::SessionSnapshot(SessionSnapshot {
            run: pipe.id,
            token: None,
        }))
        .await;
    assert_eq!(code(&refused), Some(ErrorCode::InvalidState), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_refuse_or_end_sessions_with_their_codes() {
    let hub = TestHub::start_with(|config| {
        config.max_sessions_per_agent = 2;
        config.session_idle_timeout_ms = 600;
    })
    .await;
    let _agent = hub.agent("limited", 1).await;
    let (client, mut events) = hub.client().await;

    // Idle: nothing typed, nothing printed.
    let idle = open(&client, "limited", SessionKind::Pipe, "exec cat").await;
    // Lifetime: the run's timeout, whatever goes on.
    let mut request = RunRequest::new(
        AgentName::new("limited").unwrap(),
        CommandSpec::Shell("while :; do echo tick; sleep 0.1; done".into()),
    );
    request.session = Some(Box::new(SessionSpec::new(SessionKind::Pty)));
    request.timeout_ms = Some(900);
    let busy = client.create_run(request, true).await.unwrap().run;
    // A third is over the limit while both are open.
    let third = client
        .create_run(
            {
                let mut r = RunRequest::new(
                    AgentName::new("limited").unwrap(),
                    CommandSpec::Shell("exec cat".into()),
                );
                r.session = Some(Box::new(SessionSpec::new(SessionKind::Pipe)));
                r
            },
            false,
        )
        .await;
    assert_eq!(
        third.as_ref().err().and_then(ClientError::code),
        Some(ErrorCode::SessionLimit),
        "{third:?}"
    );
    let mut ended = [
        until_ended(&mut events, idle.id).await,
        until_ended(&mut events, busy.id).await,
    ];
    ended.sort_by_key(|r| r.id == busy.id);
    assert_eq!(
        ended[0].state,
        muster_proto::RunState::TimedOut,
        "{:?}",
        ended[0]
    );
    assert_eq!(
        ended[0].error_code,
        Some(ErrorCode::SessionIdle),
        "{:?}",
        ended[0]
    );
    assert_eq!(
        ended[1].state,
        muster_proto::RunState::TimedOut,
        "{:?}",
        ended[1]
    );
    assert_eq!(
        ended[1].error_code,
        Some(ErrorCode::SessionLifetime),
        "{:?}",
        ended[1]
    );
    // An idle timeout above the hub's is capped to it.
    assert_eq!(
        idle.session.as_ref().and_then(|s| s.idle_timeout_ms),
        Some(600)
    );

    // A session is never queued: an agent that is not connected refuses it.
    let name = AgentName::new("away").unwrap();
    hub.hub.agent_token(&name).await.unwrap();
    let mut away = RunRequest::new(name, CommandSpec::Shell("exec cat".into()));
    away.session = Some(Box::new(SessionSpec::new(SessionKind::Pipe)));
    let refused = client.create_run(away, false).await;
    assert_eq!(
        refused.as_ref().err().and_then(ClientError::code),
        Some(ErrorCode::AgentOffline),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_does_not_announce_sessions_gets_none() {
    use futures_util::SinkExt as _;
    let hub = TestHub::start().await;
    let name = AgentName::new("old-agent").unwrap();
    let token = hub.hub.agent_token(&name).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(hub.ws_url("/ws/agent"))
        .await
        .unwrap();
    // An agent from before sessions: its hello has no "sessions" capability.
    let hello = serde_json::json!({"type": "hello", "data": {
        "token": token.expose(), "name": "old-agent", "max_concurrency": 1,
        "capabilities": ["exec"],
    }});
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        hello.to_string(),
    ))
    .await
    .unwrap();
    tokio::time::timeout(WAIT, hub.hub.wait_online(&name))
        .await
        .expect("online");
    let (client, _events) = hub.client().await;
    let mut request = RunRequest::new(name, CommandSpec::Shell("exec cat".into()));
    request.session = Some(Box::new(SessionSpec::new(SessionKind::Pty)));
    let refused = client.create_run(request, false).await;
    assert_eq!(
        refused.as_ref().err().and_then(ClientError::code),
        Some(ErrorCode::InvalidState),
        "{refused:?}"
    );
    let message = refused.unwrap_err().to_string();
    assert!(message.contains("does not run sessions"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scoped_key_opens_watches_and_types_into_sessions_of_its_agents_only() {
    let hub = TestHub::start().await;
    let _prod = hub.labeled_agent("prod-1", &[("env", "prod")]).await;
    let _stage = hub.labeled_agent("stage-1", &[("env", "staging")]).await;
    let (admin, _admin_events) = hub.client().await;
    let create = serde_json::json!({"type": "key.create", "data":
        {"name": "ci", "role": "operator", "scope": "env=staging"}});
    let token = match admin
        .request(serde_json::from_value(create).unwrap())
        .await
        .unwrap()
    {
        HubToClient::KeyCreated(created) => created.token,
        other => panic!("{other:?}"),
    };
    let (ci, _ci_events) = Client::connect(&hub.url, &token).await.unwrap();
    let prod = open(&admin, "prod-1", SessionKind::Pipe, "exec cat").await;
    let stage = open(&ci, "stage-1", SessionKind::Pipe, "exec cat").await;

    // Outside its scope: not opened, not attached to, not watched, not typed into.
    let mut request = RunRequest::new(
        AgentName::new("prod-1").unwrap(),
        CommandSpec::Shell("exec cat".into()),
    );
    request.session = Some(Box::new(SessionSpec::new(SessionKind::Pipe)));
    let opened = ci.create_run(request, false).await;
    assert_eq!(
        opened.as_ref().err().and_then(ClientError::code),
        Some(ErrorCode::Forbidden),
        "{opened:?}"
    );
    let attach_prod = SessionAttach {
        run: prod.id,
        write: true,
        writer: Some("ci-w".into()),
    };
    let attached = ci.request(ClientToHub::SessionAttach(attach_prod)).await;
    assert_eq!(code(&attached), Some(ErrorCode::Forbidden), "{attached:?}");
    let typed = type_in(&ci, prod.id, 1, "nope").await;
    assert_eq!(code(&typed), Some(ErrorCode::Forbidden), "{typed:?}");
    let watched = ci.subscribe(&format!("session:{}", prod.id), None).await;
    assert_eq!(
        watched.as_ref().err().and_then(ClientError::code),
        Some(ErrorCode::Forbidden),
        "{watched:?}"
    );
    // Inside it: all of that works.
    assert!(attach(&ci, stage.id, Some("ci-w")).await.write);
    let acked = type_in(&ci, stage.id, 1, "yes").await.unwrap();
    assert!(
        matches!(acked, HubToClient::SessionInputAck(_)),
        "{acked:?}"
    );
    ci.subscribe(&format!("session:{}", stage.id), None)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_attach_never_joined_so_it_never_leaves() {
    let hub = TestHub::start().await;
    let _agent = hub.agent("quiet-host", 1).await;
    let (admin, _admin_events) = hub.client().await;
    let session = open(&admin, "quiet-host", SessionKind::Pipe, "exec cat").await;
    let (observer, mut presence_events) = hub.client().await;
    observer
        .subscribe(&format!("session:{}", session.id), None)
        .await
        .unwrap();
    let (viewer, _viewer_events) = connect_as(&hub, "watcher", Role::Viewer).await;
    let as_writer = SessionAttach {
        run: session.id,
        write: true,
        writer: Some("w".into()),
    };
    let refused = viewer.request(ClientToHub::SessionAttach(as_writer)).await;
    assert_eq!(code(&refused), Some(ErrorCode::Forbidden), "{refused:?}");
    viewer.close().await;
    // Then someone who does attach and leave: theirs are the only events.
    let (ops, _ops_events) = connect_as(&hub, "ops", Role::Operator).await;
    attach(&ops, session.id, None).await;
    ops.close().await;
    let mut presence = Vec::new();
    tokio::time::timeout(WAIT, async {
        while presence.len() < 2 {
            if let Event::Message(env) = presence_events.recv().await.unwrap() {
                match env.msg {
                    HubToClient::SessionJoined(p) => presence.push(("joined", p.who)),
                    HubToClient::SessionLeft(p) => presence.push(("left", p.who)),
                    _ => {}
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("presence: {presence:?}"));
    assert_eq!(
        presence,
        [("joined", "ops".to_owned()), ("left", "ops".to_owned())]
    );
}
