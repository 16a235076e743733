//! Fault tests on sessions: the typing client's link cut every 300 ms while
//! it types 2,000 numbered lines, and the hub killed with SIGKILL and
//! restarted mid-session. In both, every line reaches the process exactly
//! once and in order, and what another client sees has no gap.

use std::net::SocketAddr;
use std::time::Duration;

use muster_client::{Client, RunRequest};
use muster_client::{Follow, Session, SessionEvent, SessionOptions, new_writer_id};
use muster_proto::sessions::{SessionKind, SessionSpec};
use muster_proto::types::CommandSpec;
use muster_proto::{AgentName, OutputStream, RunId, RunState};
use muster_testkit::Proxy;
use nix::sys::signal::{Signal, kill};

use crate::fixture::{PATIENCE, Server, path_in, tempdir};

/// Lines typed through the cut link.
const LINES: u32 = 2_000;

/// How often the proxy cuts the typing client's link.
const CUT_PERIOD: Duration = Duration::from_millis(300);

/// The socket address of a hub's `MUSTER_HUB=http://ADDR`.
pub(crate) fn addr_of(hub: &Server) -> SocketAddr {
    hub.hub
        .strip_prefix("http://")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("unexpected hub url {}", hub.hub))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Registers agent `name` through `hub`'s CLI and returns its token.
fn add_agent(hub: &Server, admin: &str, name: &str) -> String {
    let added = hub.cli(admin).json(&["agents", "add", name, "--json"]);
    added["token"].as_str().expect("agent token").to_owned()
}

/// Opens a session of `kind` running `script` on `agent`.
async fn open(client: &Client, agent: &str, kind: SessionKind, script: &str) -> RunId {
    let mut request = RunRequest::new(
        AgentName::new(agent).unwrap(),
        CommandSpec::Shell(script.to_owned()),
    );
    request.session = Some(Box::new(SessionSpec::new(kind)));
    client.open_session(request).await.unwrap().run.id
}

/// Follows `session`'s output until its stdout holds `until`; returns the
/// stdout and the input numbers seen, checking that frame seqs never skip.
async fn read_until(session: &mut Session, until: &str, next_seq: &mut u64) -> (String, Vec<u64>) {
    let mut stdout = Vec::new();
    let mut inputs = Vec::new();
    let read = async {
        while !String::from_utf8_lossy(&stdout).contains(until) {
            let event = session.next().await.expect("the session goes on").unwrap();
            let seq = match event {
                SessionEvent::Output { frame, .. } => {
                    if frame.header.stream == OutputStream::Stdout {
                        stdout.extend_from_slice(&frame.payload);
                    }
                    frame.header.seq
                }
                SessionEvent::Input { seq, record, .. } => {
                    inputs.push(record.seq);
                    seq
                }
                SessionEvent::Finished(run) => panic!("the session ended: {run:?}"),
                _ => continue,
            };
            assert_eq!(seq, *next_seq, "the output skipped or repeated a frame");
            *next_seq += 1;
        }
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "waited for {until:?}; stdout so far ends {:?}",
                String::from_utf8_lossy(&stdout[stdout.len().saturating_sub(200)..])
            )
        });
    (String::from_utf8_lossy(&stdout).into_owned(), inputs)
}

/// Panics with the first line that differs, unless `got` is `expected`:
/// every line once, in order.
fn assert_lines(got: &str, expected: &str) {
    if got == expected {
        return;
    }
    let (got, expected): (Vec<_>, Vec<_>) = (got.lines().collect(), expected.lines().collect());
    let at = got
        .iter()
        .zip(&expected)
        .take_while(|(g, e)| g == e)
        .count();
    panic!(
        "{} lines, expected {}; line {} is {:?}, expected {:?}",
        got.len(),
        expected.len(),
        at + 1,
        got.get(at),
        expected.get(at)
    );
}

/// What `cat -n` prints for lines `from..=to` typed as `line-NNNN`.
fn numbered(from: u32, to: u32, newline: &str) -> String {
    (from..=to)
        .map(|i| format!("{i:>6}\tline-{i:04}{newline}"))
        .collect()
}

#[test]
fn typing_through_a_link_cut_every_300ms_reaches_cat_once_in_order() {
    let dir = tempdir();
    let hub = Server::hub(&path_in(&dir, "hub"), true);
    let admin = hub.token.clone().expect("token");
    let token = add_agent(&hub, &admin, "typed-at");
    let _agent = Server::agent(&hub.hub, &token, "typed-at", &path_in(&dir, "agent"), &[]);
    hub.cli(&admin).wait_agent("typed-at", "online");
    let proxy = Proxy::start(addr_of(&hub));
    runtime().block_on(async {
        let (control, _events) = Client::connect(&hub.hub, &admin).await.unwrap();
        // No echo: each line shows once, as cat -n prints it.
        let script = "stty -echo && echo READY && exec cat -n";
        let run = open(&control, "typed-at", SessionKind::Pty, script).await;
        // The viewer is not behind the proxy: it sees the whole stream.
        let viewer = Client::connect(&hub.hub, &admin).await.unwrap();
        let options = SessionOptions::viewer(Follow::From(0));
        let mut viewer = Session::attach(viewer, &hub.hub, &admin, run, options)
            .await
            .unwrap()
            .session;
        let mut next_seq = 0;
        read_until(&mut viewer, "READY\r\n", &mut next_seq).await;

        let typist = Client::connect(&proxy.url(), &admin).await.unwrap();
        let options = SessionOptions::writer(new_writer_id(), Follow::No);
        let mut typist = Session::attach(typist, &proxy.url(), &admin, run, options)
            .await
            .unwrap()
            .session;
        let cutter = proxy.cut_every(CUT_PERIOD);
        let mut last = 0;
        for i in 1..=LINES {
            // Typed as a script would, a line a millisecond: the typing
            // spans several cuts.
            tokio::time::sleep(Duration::from_millis(1)).await;
            match typist.input(format!("line-{i:04}\r")).await {
                Ok(seq) => last = seq,
                Err(error) => panic!("input {i}: {error}; why: {:?}", typist.next().await),
            }
        }
        let acked = typist.acked(last);
        tokio::select! {
            done = acked => done.unwrap(),
            stopped = typist.next() => panic!("the typist stopped: {stopped:?}"),
        }
        let (stdout, inputs) =
            read_until(&mut viewer, &numbered(LINES, LINES, "\r\n"), &mut next_seq).await;
        drop(cutter);
        assert!(proxy.cuts() >= 3, "only {} cuts while typing", proxy.cuts());
        assert_lines(&stdout, &numbered(1, LINES, "\r\n"));
        assert_eq!(inputs, (1..=u64::from(LINES)).collect::<Vec<_>>());
        control.cancel_run(run).await.unwrap();
    });
}

#[test]
fn hub_killed_mid_session_leaves_the_process_running_and_the_transcript_whole() {
    let dir = tempdir();
    let data = path_in(&dir, "hub");
    let hub = Server::hub(&data, true);
    let admin = hub.token.clone().expect("first start prints a token");
    let proxy = Proxy::start(addr_of(&hub));
    let token = add_agent(&hub, &admin, "survivor");
    let _agent = Server::agent(
        &proxy.url(),
        &token,
        "survivor",
        &path_in(&dir, "agent"),
        &[],
    );
    hub.cli(&admin).wait_agent("survivor", "online");
    let rt = runtime();
    let (run, pid, writer) = rt.block_on(async {
        let (control, _events) = Client::connect(&proxy.url(), &admin).await.unwrap();
        let run = open(&control, "survivor", SessionKind::Pipe, "exec cat -n").await;
        let writer = new_writer_id();
        let connection = Client::connect(&proxy.url(), &admin).await.unwrap();
        let options = SessionOptions::writer(writer.clone(), Follow::From(0));
        let mut session = Session::attach(connection, &proxy.url(), &admin, run, options)
            .await
            .unwrap()
            .session;
        for i in 1..=10 {
            session.input(format!("line-{i:04}")).await.unwrap();
        }
        let mut next_seq = 0;
        read_until(&mut session, &numbered(10, 10, "\n"), &mut next_seq).await;
        let pid = control.run_info(run).await.unwrap().pid.expect("a pid");
        (run, pid, writer)
    });

    kill(hub.pid(), Signal::SIGKILL).expect("kill the hub");
    drop(hub);
    let hub = Server::hub(&data, false);
    proxy.set_upstream(addr_of(&hub));

    rt.block_on(async {
        // The same writer comes back: the hub remembers where it stopped.
        let connection = Client::connect(&proxy.url(), &admin).await.unwrap();
        let options = SessionOptions::writer(writer, Follow::From(0));
        let attached = Session::attach(connection, &proxy.url(), &admin, run, options)
            .await
            .unwrap();
        assert_eq!(attached.attached.last_seq, 10);
        let mut session = attached.session;
        for i in 11..=20 {
            session.input(format!("line-{i:04}")).await.unwrap();
        }
        let mut next_seq = 0;
        let (stdout, inputs) =
            read_until(&mut session, &numbered(20, 20, "\n"), &mut next_seq).await;
        assert_lines(&stdout, &numbered(1, 20, "\n"));
        assert_eq!(inputs, (1..=20).collect::<Vec<_>>());
        let (control, _events) = Client::connect(&proxy.url(), &admin).await.unwrap();
        let info = control.run_info(run).await.unwrap();
        assert_eq!(info.state, RunState::Running, "{info:?}");
        assert_eq!(info.pid, Some(pid), "the same process goes on");
        control.cancel_run(run).await.unwrap();
    });
}

#[test]
fn a_read_only_viewer_sees_the_same_output_and_its_input_is_forbidden() {
    let dir = tempdir();
    let dev = Server::dev(dir.path());
    let admin = dev.token.clone().expect("dev prints a token");
    let created = dev
        .cli(&admin)
        .json(&["keys", "create", "watcher", "--role", "viewer", "--json"]);
    let viewer_token = created["token"].as_str().expect("a token").to_owned();
    runtime().block_on(async {
        let (control, _events) = Client::connect(&dev.hub, &admin).await.unwrap();
        let run = open(&control, "local", SessionKind::Pty, "exec cat").await;
        let writer = Client::connect(&dev.hub, &admin).await.unwrap();
        let options = SessionOptions::writer(new_writer_id(), Follow::From(0));
        let mut writer = Session::attach(writer, &dev.hub, &admin, run, options)
            .await
            .unwrap()
            .session;
        let viewer = Client::connect(&dev.hub, &viewer_token).await.unwrap();
        let viewer_client = viewer.0.clone();
        let options = SessionOptions::viewer(Follow::From(0));
        let mut viewer = Session::attach(viewer, &dev.hub, &viewer_token, run, options)
            .await
            .unwrap()
            .session;
        // The viewer's key cannot type, whatever it sends.
        let typed = viewer_client
            .session_input(muster_proto::sessions::SessionInput {
                run,
                seq: 1,
                data: "whoami\r".into(),
            })
            .await;
        let code = typed
            .as_ref()
            .err()
            .and_then(muster_client::ClientError::code);
        assert_eq!(code, Some(muster_proto::ErrorCode::Forbidden), "{typed:?}");
        for word in ["alpha", "beta", "gamma"] {
            writer.input(format!("{word}\r")).await.unwrap();
        }
        let (mut at_writer, mut at_viewer) = (0, 0);
        let (seen_by_writer, _) = read_until(&mut writer, "gamma\r\n", &mut at_writer).await;
        let (seen_by_viewer, _) = read_until(&mut viewer, "gamma\r\n", &mut at_viewer).await;
        assert_eq!(seen_by_viewer, seen_by_writer, "both see the same output");
        assert!(!seen_by_viewer.contains("whoami"), "{seen_by_viewer:?}");
        control.cancel_run(run).await.unwrap();
    });
}

#[test]
fn an_agent_restart_ends_its_sessions_lost_with_their_transcript_kept() {
    let dir = tempdir();
    let hub = Server::hub(&path_in(&dir, "hub"), true);
    let admin = hub.token.clone().expect("token");
    let token = add_agent(&hub, &admin, "restarted");
    let state = path_in(&dir, "agent");
    let agent = Server::agent(&hub.hub, &token, "restarted", &state, &[]);
    let cli = hub.cli(&admin);
    cli.wait_agent("restarted", "online");
    let rt = runtime();
    let run = rt.block_on(async {
        let (control, _events) = Client::connect(&hub.hub, &admin).await.unwrap();
        let run = open(&control, "restarted", SessionKind::Pipe, "exec cat -n").await;
        let connection = Client::connect(&hub.hub, &admin).await.unwrap();
        let options = SessionOptions::writer(new_writer_id(), Follow::From(0));
        let mut session = Session::attach(connection, &hub.hub, &admin, run, options)
            .await
            .unwrap()
            .session;
        session.input("said before".into()).await.unwrap();
        let mut next_seq = 0;
        read_until(&mut session, "said before\n", &mut next_seq).await;
        run
    });
    kill(agent.pid(), Signal::SIGKILL).expect("kill the agent");
    drop(agent);
    let _agent = Server::agent(&hub.hub, &token, "restarted", &state, &[]);
    let id = run.to_string();
    let ended = cli.wait_shown("runs", &id, "the session to end", |r| {
        r["state"] != "running" && r["state"] != "dispatched"
    });
    assert_eq!(ended["state"], "lost", "{ended}");
    let out = cli.output(&["runs", "output", &id]);
    assert!(out.status.success(), "{out:?}");
    assert_lines(
        &String::from_utf8_lossy(&out.stdout),
        &format!("{:>6}\tsaid before\n", 1),
    );
}
