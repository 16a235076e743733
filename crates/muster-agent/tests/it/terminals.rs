//! Pty sessions against the scripted hub: a real shell on a pseudo-terminal,
//! its window size, Ctrl-C, its screen, and how it is stopped.

use muster_proto::messages::{RunOutcome, RunRef, RunStart};
use muster_proto::sessions::SessionKind;
use muster_proto::{CommandSpec, HubToAgent, RunId};

use std::time::Duration;

use crate::fake_hub::{Harness, send, send_run_ack, within};
use crate::sessions::{NOT_IDLE_MS, Transcript, Writer, resize, session_start, shell, snapshot};

/// `start` as `adjust` changes it.
fn adjusted(mut start: HubToAgent, adjust: impl FnOnce(&mut RunStart)) -> HubToAgent {
    if let HubToAgent::RunStart(start) = &mut start {
        adjust(start);
    }
    start
}

/// `start` with a window of `cols`×`rows`.
fn sized(start: HubToAgent, cols: u16, rows: u16) -> HubToAgent {
    adjusted(start, |start| {
        let spec = start.session.as_mut().unwrap();
        (spec.cols, spec.rows) = (cols, rows);
    })
}

/// The live processes on this host, from `/proc`: (comm, pgrp, session,
/// terminal's foreground group), zombies left out (in some containers nobody
/// reaps orphans).
fn processes() -> Vec<(String, u32, u32, i64)> {
    let stats = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| std::fs::read_to_string(entry.ok()?.path().join("stat")).ok());
    stats
        .filter_map(|stat| {
            let comm = stat[stat.find('(')? + 1..stat.rfind(')')?].to_owned();
            let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
            let number = |i: usize| fields.get(i)?.parse::<i64>().ok();
            let (pgrp, session, tpgid) = (number(2)?, number(3)?, number(5)?);
            let (pgrp, session) = (u32::try_from(pgrp).ok()?, u32::try_from(session).ok()?);
            (fields[0] != "Z").then_some((comm, pgrp, session, tpgid))
        })
        .collect()
}

/// Waits until a process named `comm` is the foreground job of session `sid`'s terminal.
async fn wait_for_foreground(sid: u32, comm: &str) {
    let in_foreground = || {
        processes().iter().any(|(c, pgrp, session, tpgid)| {
            c == comm && *session == sid && i64::from(*pgrp) == *tpgid
        })
    };
    wait_until(in_foreground).await;
}

/// Polls `done` until it holds, within the tests' bound.
async fn wait_until(done: impl Fn() -> bool) {
    within(async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

fn session_is_gone(sid: u32) -> bool {
    !processes().iter().any(|(_, _, session, _)| *session == sid)
}

fn argv(args: &[&str]) -> CommandSpec {
    CommandSpec::Argv(args.iter().map(|a| (*a).to_owned()).collect())
}

/// Types `line` and reads until stdout shows `answer`. Each answer is
/// computed by the shell, so the terminal's echo of the line cannot match.
async fn ask(
    ws: &mut crate::fake_hub::HubSide,
    writer: &mut Writer,
    transcript: &mut Transcript,
    line: &str,
    answer: &str,
) {
    writer.type_in(ws, line).await;
    transcript
        .read_until(ws, |t| t.stdout().contains(answer))
        .await;
}

#[tokio::test]
async fn a_shell_on_a_pty_has_a_terminal_a_window_size_and_ctrl_c() {
    let hub = Harness::start().await;
    let mut ws = hub.accept_acked(60_000, 120_000).await;
    let run = RunId::generate();
    let sh = argv(&["/bin/sh", "-i"]);
    send(
        &mut ws,
        session_start(run, sh, SessionKind::Pty, NOT_IDLE_MS, None),
    )
    .await;
    let (mut writer, mut transcript) = (Writer::new(run), Transcript::default());
    ask(&mut ws, &mut writer, &mut transcript, "tty\n", "/dev/pts/").await;
    ask(
        &mut ws,
        &mut writer,
        &mut transcript,
        "echo \"$TERM\"-$((1+1))\n",
        "xterm-256color-2",
    )
    .await;
    resize(&mut ws, run, 100, 30).await;
    ask(
        &mut ws,
        &mut writer,
        &mut transcript,
        "stty size\n",
        "30 100",
    )
    .await;
    writer.type_in(&mut ws, "sleep 100\n").await;
    let sid = transcript.read_started(&mut ws).await;
    wait_for_foreground(sid, "sleep").await;
    writer.type_in(&mut ws, "\x03").await;
    ask(
        &mut ws,
        &mut writer,
        &mut transcript,
        "echo after-$((6*7))\n",
        "after-42",
    )
    .await;
    // A background job has a group of its own, and holds the terminal.
    writer.type_in(&mut ws, "sleep 100 &\n").await;
    writer.type_in(&mut ws, "exit 7\n").await;
    let exited = transcript.read_to_exit(&mut ws).await;
    assert_eq!(exited.outcome, RunOutcome::Completed);
    assert_eq!(exited.exit_code, Some(7));
    assert_eq!(transcript.inputs().len(), 8);
    // Killed processes take a moment to exit; a left one would time this out.
    wait_until(|| session_is_gone(sid)).await;
    transcript.assert_numbered();
    // Acknowledged, the run leaves nothing for the agent to deliver at stop.
    send_run_ack(&mut ws, run, 0, true).await;
    hub.stop(ws).await;
}

#[tokio::test]
async fn a_snapshot_paints_the_screen_as_of_next_seq() {
    let hub = Harness::start().await;
    let mut ws = hub.accept_acked(60_000, 120_000).await;
    let run = RunId::generate();
    let draw = shell(r"printf '\033[2J\033[5;10Hhello'; sleep 100");
    send(
        &mut ws,
        session_start(run, draw, SessionKind::Pty, NOT_IDLE_MS, None),
    )
    .await;
    let mut transcript = Transcript::default();
    transcript
        .read_until(&mut ws, |t| t.stdout().contains("hello"))
        .await;
    snapshot(&mut ws, run, 7).await;
    transcript
        .read_until(&mut ws, |t| !t.screens.is_empty())
        .await;
    let screen = &transcript.screens[0];
    assert_eq!(screen.token, Some(7));
    assert_eq!(screen.next_seq, transcript.frames.len() as u64);
    assert_eq!((screen.cols, screen.rows), (80, 24));
    let mut parser = vt100::Parser::new(24, 80, 0);
    parser.process(screen.data.as_bytes());
    assert_eq!(parser.screen().contents_between(4, 9, 4, 14), "hello");
    assert_eq!(parser.screen().cursor_position(), (4, 14));
    send(&mut ws, HubToAgent::RunCancel(RunRef { run })).await;
    assert_eq!(
        transcript.read_to_exit(&mut ws).await.outcome,
        RunOutcome::Cancelled
    );
    // Acknowledged, the run leaves nothing for the agent to deliver at stop.
    send_run_ack(&mut ws, run, 0, true).await;
    hub.stop(ws).await;
}

#[tokio::test]
async fn a_full_screen_program_is_painted_as_a_viewer_of_every_frame_sees_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("numbers");
    let numbers: String = (1..=100).map(|n| format!("number {n}\n")).collect();
    std::fs::write(&file, numbers).unwrap();
    let hub = Harness::start().await;
    let mut ws = hub.accept_acked(60_000, 120_000).await;
    let run = RunId::generate();
    let less = argv(&["less", file.to_str().unwrap()]);
    let start = session_start(run, less, SessionKind::Pty, NOT_IDLE_MS, None);
    send(&mut ws, sized(start, 60, 12)).await;
    // A viewer replays every stdout frame on a terminal of the session's size.
    let viewer = |t: &Transcript| {
        let mut parser = vt100::Parser::new(12, 60, 0);
        parser.process(t.stdout().as_bytes());
        parser
    };
    let mut transcript = Transcript::default();
    transcript
        .read_until(&mut ws, |t| {
            let seen = viewer(t);
            seen.screen().alternate_screen() && seen.screen().contents().contains("number 11")
        })
        .await;
    snapshot(&mut ws, run, 1).await;
    transcript
        .read_until(&mut ws, |t| !t.screens.is_empty())
        .await;
    let next_seq = transcript.screens[0].next_seq;
    // Frames numbered before the snapshot may still be on their way.
    transcript
        .read_until(&mut ws, |t| t.frames.len() as u64 >= next_seq)
        .await;
    let screen = &transcript.screens[0];
    assert_eq!((screen.cols, screen.rows), (60, 12));
    let frames_before = &transcript.frames[..usize::try_from(next_seq).unwrap()];
    let shown = Transcript {
        frames: frames_before.to_vec(),
        ..Transcript::default()
    };
    let mut painted = vt100::Parser::new(12, 60, 0);
    painted.process(screen.data.as_bytes());
    let seen = viewer(&shown);
    assert!(painted.screen().alternate_screen());
    assert_eq!(painted.screen().contents(), seen.screen().contents());
    assert_eq!(
        painted.screen().cursor_position(),
        seen.screen().cursor_position()
    );
    assert!(painted.screen().contents().starts_with("number 1\n"));
    Writer::new(run).type_in(&mut ws, "q").await;
    let exited = transcript.read_to_exit(&mut ws).await;
    assert_eq!(
        (exited.outcome, exited.exit_code),
        (RunOutcome::Completed, Some(0))
    );
    // Acknowledged, the run leaves nothing for the agent to deliver at stop.
    send_run_ack(&mut ws, run, 0, true).await;
    hub.stop(ws).await;
}

#[tokio::test]
async fn cancel_hangs_up_the_terminal_first() {
    let hub = Harness::start().await;
    let mut ws = hub.accept_acked(60_000, 120_000).await;
    let run = RunId::generate();
    let script = "trap 'echo got-hup; exit 3' HUP; echo ready; while :; do sleep 1; done";
    let start = session_start(run, shell(script), SessionKind::Pty, NOT_IDLE_MS, None);
    // A HUP that reaches `sleep 1` as it is forked waits for it to end: give
    // the trap longer than that before SIGTERM.
    let start = adjusted(start, |start| start.kill_grace_ms = 5_000);
    send(&mut ws, start).await;
    let mut transcript = Transcript::default();
    transcript
        .read_until(&mut ws, |t| t.stdout().contains("ready"))
        .await;
    send(&mut ws, HubToAgent::RunCancel(RunRef { run })).await;
    let exited = transcript.read_to_exit(&mut ws).await;
    assert_eq!(exited.outcome, RunOutcome::Cancelled);
    assert_eq!(
        exited.exit_code,
        Some(3),
        "{exited:?} {:?}",
        transcript.stdout()
    );
    assert!(
        transcript.stdout().contains("got-hup"),
        "{:?}",
        transcript.stdout()
    );
    // Acknowledged, the run leaves nothing for the agent to deliver at stop.
    send_run_ack(&mut ws, run, 0, true).await;
    hub.stop(ws).await;
}
