//! Delivery guarantees against the scripted hub: the spool keeps what the hub
//! has not acknowledged across reconnects, the ledger refuses to run an id
//! twice, and `hello` reports what the agent knows.

use std::path::Path;

use muster_agent::Outgoing;
use muster_proto::messages::{RunOutcome, RunRef, RunReport, RunReportStatus};
use muster_proto::{CloseCode, HubToAgent, OutputFrame, RunId};

use crate::fake_hub::{
    Harness, HubSide, close, read_to_close, recv_run_message, recv_until_exited, round_trip,
    run_start, send, send_run_ack, within,
};

/// What the agent says when asked to start a run it started before.
const ALREADY_STARTED: &str = "run was already started once by this agent; it is not run again";

/// Creates a named pipe, which lets a test and a run's script wait for each other.
fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success(), "mkfifo {}", path.display());
}

/// Writes a line to a named pipe (opening it waits for its reader).
async fn write_fifo(path: &Path) {
    let path = path.to_owned();
    let writing = tokio::task::spawn_blocking(move || std::fs::write(path, "go\n"));
    within(writing).await.unwrap().unwrap();
}

/// Reads a named pipe to its end (opening it waits for its writer).
async fn read_fifo(path: &Path) -> String {
    let path = path.to_owned();
    let reading = tokio::task::spawn_blocking(move || std::fs::read_to_string(path));
    within(reading).await.unwrap().unwrap()
}

fn frames(received: &[Outgoing]) -> Vec<&OutputFrame> {
    let frames = received.iter().filter_map(|outgoing| match outgoing {
        Outgoing::Output(frame) => Some(frame),
        _ => None,
    });
    frames.collect()
}

fn report(run: RunId, status: RunReportStatus) -> RunReport {
    RunReport {
        run,
        status,
        input_applied: None,
    }
}

/// Hangs up on the agent, as a hub going away would, once the agent has read
/// everything sent before (it answers the close frame after them).
async fn hang_up(mut ws: HubSide) {
    close(&mut ws, CloseCode::GOING_AWAY).await;
    read_to_close(&mut ws).await;
}

#[tokio::test]
async fn output_made_while_disconnected_arrives_complete_after_reconnect() {
    let dir = tempfile::tempdir().unwrap();
    let (gate, done) = (dir.path().join("gate"), dir.path().join("done"));
    mkfifo(&gate);
    mkfifo(&done);
    let hub = Harness::start().await;
    let mut ws = hub.accept_acked(60_000, 120_000).await;
    let run = RunId::generate();
    let script = format!(
        "read _ < {}; seq 1 30000; echo finished > {}",
        gate.display(),
        done.display()
    );
    send(&mut ws, run_start(run, &script)).await;
    let Outgoing::Started(_) = recv_run_message(&mut ws).await else {
        panic!("expected run.started");
    };
    hang_up(ws).await;
    // The command writes all its output while the agent has no hub.
    write_fifo(&gate).await;
    assert_eq!(read_fifo(&done).await, "finished\n");

    let (mut ws, hello) = hub.accept_ack().await;
    assert_eq!(hello.runs.len(), 1);
    let (received, exited) = recv_until_exited(&mut ws).await;
    assert!(
        matches!(received[0], Outgoing::Started(_)),
        "run.started is re-sent first"
    );
    let frames = frames(&received);
    let seqs: Vec<u64> = frames.iter().map(|frame| frame.header.seq).collect();
    assert_eq!(seqs, (0..frames.len() as u64).collect::<Vec<_>>());
    let output: Vec<u8> = frames
        .iter()
        .flat_map(|frame| frame.payload.to_vec())
        .collect();
    let expected: String = (1..=30_000).map(|n| format!("{n}\n")).collect();
    assert!(
        output == expected.as_bytes(),
        "output differs from the command's"
    );
    assert_eq!(
        (exited.outcome, exited.exit_code),
        (RunOutcome::Completed, Some(0))
    );
    send_run_ack(&mut ws, run, seqs.len() as u64, true).await;
    hub.stop(ws).await;
}

#[tokio::test]
async fn unacknowledged_frames_are_sent_again_and_acknowledged_ones_are_not() {
    let hub = Harness::start().await;
    let mut ws = hub.accept_acked(60_000, 120_000).await;
    let run = RunId::generate();
    send(&mut ws, run_start(run, "head -c 100000 /dev/zero")).await;
    let (received, _) = recv_until_exited(&mut ws).await;
    let total = frames(&received).len() as u64;
    assert!(total > 3, "expected several frames, got {total}");
    send_run_ack(&mut ws, run, 3, false).await;
    hang_up(ws).await;

    let (mut ws, hello) = hub.accept_ack().await;
    assert_eq!(hello.runs, [report(run, RunReportStatus::Finished)]);
    let (received, exited) = recv_until_exited(&mut ws).await;
    let seqs: Vec<u64> = frames(&received).iter().map(|f| f.header.seq).collect();
    assert_eq!(seqs, (3..total).collect::<Vec<_>>(), "started is acked too");
    assert_eq!(received.len(), seqs.len());
    assert_eq!(exited.outcome, RunOutcome::Completed);
    send_run_ack(&mut ws, run, total, true).await;
    hang_up(ws).await;

    // Everything is acknowledged: nothing to report, nothing to re-send.
    let (mut ws, hello) = hub.accept_ack().await;
    assert!(hello.runs.is_empty(), "{:?}", hello.runs);
    round_trip(&mut ws).await;
    hub.stop(ws).await;
}

#[tokio::test]
async fn a_repeated_run_start_for_a_finished_run_is_refused_even_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (state, side_effect) = (dir.path().join("state"), dir.path().join("ran"));
    let run = RunId::generate();
    let script = format!("echo ran >> {}", side_effect.display());

    let hub = Harness::start_in(Some(&state)).await;
    let mut ws = hub.accept_acked(60_000, 120_000).await;
    send(&mut ws, run_start(run, &script)).await;
    let (_, exited) = recv_until_exited(&mut ws).await;
    assert_eq!(exited.outcome, RunOutcome::Completed);
    send_run_ack(&mut ws, run, 0, true).await;
    expect_refusal(&mut ws, run, &script).await;
    hub.stop(ws).await;

    let hub = Harness::start_in(Some(&state)).await;
    let mut ws = hub.accept_acked(60_000, 120_000).await;
    expect_refusal(&mut ws, run, &script).await;
    hub.stop(ws).await;
    assert_eq!(std::fs::read_to_string(&side_effect).unwrap(), "ran\n");
}

/// Sends `run.start` for `run` again and expects a `failed` report without a start.
async fn expect_refusal(ws: &mut HubSide, run: RunId, script: &str) {
    send(ws, run_start(run, script)).await;
    let Outgoing::Exited(exited) = recv_run_message(ws).await else {
        panic!("expected run.exited without run.started");
    };
    assert_eq!((exited.run, exited.outcome), (run, RunOutcome::Failed));
    assert_eq!(exited.error.as_deref(), Some(ALREADY_STARTED));
    send_run_ack(ws, run, 0, true).await;
}

#[tokio::test]
async fn a_repeated_run_start_for_a_run_in_flight_is_ignored() {
    let hub = Harness::start().await;
    let mut ws = hub.accept_acked(60_000, 120_000).await;
    let run = RunId::generate();
    send(&mut ws, run_start(run, "sleep 30")).await;
    send(&mut ws, run_start(run, "sleep 30")).await;
    send(&mut ws, HubToAgent::RunCancel(RunRef { run })).await;
    let (received, exited) = recv_until_exited(&mut ws).await;
    assert!(
        matches!(received[..], [Outgoing::Started(_)]),
        "{received:?}"
    );
    assert_eq!(exited.outcome, RunOutcome::Cancelled);
    send_run_ack(&mut ws, run, 0, true).await;
    round_trip(&mut ws).await;
    hub.stop(ws).await;
}

#[tokio::test]
async fn hello_reports_running_finished_and_unknown_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (running, finished) = (RunId::generate(), RunId::generate());
    let hub = Harness::start_in(Some(dir.path())).await;
    let (mut ws, hello) = hub.accept_ack().await;
    assert!(hello.runs.is_empty());
    send(&mut ws, run_start(running, "sleep 30")).await;
    send(&mut ws, run_start(finished, "true")).await;
    let (_, exited) = recv_until_exited(&mut ws).await;
    assert_eq!(exited.run, finished);
    hang_up(ws).await;

    let (mut ws, hello) = hub.accept_ack().await;
    let expected = [
        report(running, RunReportStatus::Running),
        report(finished, RunReportStatus::Finished),
    ];
    assert_eq!(hello.runs, expected);
    send_run_ack(&mut ws, finished, 0, true).await;
    send_run_ack(&mut ws, running, 0, false).await;
    hang_up(ws).await;

    let (ws, hello) = hub.accept_ack().await;
    assert_eq!(hello.runs, [report(running, RunReportStatus::Running)]);
    // A crash leaves `running` started in the ledger, never settled.
    drop(ws);
    hub.crash().await;

    let hub = Harness::start_in(Some(dir.path())).await;
    let (ws, hello) = hub.accept_ack().await;
    assert_eq!(hello.runs, [report(running, RunReportStatus::Unknown)]);
    hang_up(ws).await;
    // Acknowledged once, an unknown run is settled and not reported again.
    let (mut ws, hello) = hub.accept_ack().await;
    assert!(hello.runs.is_empty(), "{:?}", hello.runs);
    round_trip(&mut ws).await;
    hub.stop(ws).await;
    let hub = Harness::start_in(Some(dir.path())).await;
    let (mut ws, hello) = hub.accept_ack().await;
    assert!(hello.runs.is_empty(), "{:?}", hello.runs);
    round_trip(&mut ws).await;
    hub.stop(ws).await;
}
