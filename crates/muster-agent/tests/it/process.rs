//! `ProcessExecutor` driven directly, with a test sink.

use std::collections::BTreeMap;
use std::time::Duration;

use muster_agent::{Executor, Outgoing, ProcessExecutor, RunSink};
use muster_proto::limits::MAX_OUTPUT_CHUNK_BYTES;
use muster_proto::messages::{RunExited, RunOutcome, RunStart};
use muster_proto::{CommandSpec, OutputFrame, OutputStream, RunId};
use nix::errno::Errno;
use nix::sys::signal::killpg;
use nix::unistd::Pid;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

fn start(command: CommandSpec) -> RunStart {
    RunStart {
        run: RunId::generate(),
        command,
        env: BTreeMap::new(),
        cwd: None,
        timeout_ms: None,
        kill_grace_ms: 500,
        output_cap_bytes: u64::MAX,
        session: None,
    }
}

fn shell(script: &str) -> CommandSpec {
    CommandSpec::Shell(script.to_owned())
}

fn argv(args: &[&str]) -> CommandSpec {
    CommandSpec::Argv(args.iter().map(|a| (*a).to_owned()).collect())
}

async fn collect(mut outgoing_rx: mpsc::Receiver<Outgoing>) -> Vec<Outgoing> {
    let mut received = Vec::new();
    while let Some(outgoing) = outgoing_rx.recv().await {
        received.push(outgoing);
    }
    received
}

/// Executes `start` to the end; returns its exit report and everything it sent.
async fn execute(start: RunStart) -> (RunExited, Vec<Outgoing>) {
    let (sink, outgoing_rx) = RunSink::channel(start.run, start.output_cap_bytes, 64);
    let collector = tokio::spawn(collect(outgoing_rx));
    let exited = ProcessExecutor::new()
        .execute(start, sink, CancellationToken::new())
        .await;
    (exited, collector.await.unwrap())
}

fn frames(received: &[Outgoing]) -> Vec<&OutputFrame> {
    received
        .iter()
        .filter_map(|outgoing| match outgoing {
            Outgoing::Output(frame) => Some(frame),
            _ => None,
        })
        .collect()
}

/// The bytes of one stream, checking that its offsets are contiguous.
fn stream_bytes(received: &[Outgoing], stream: OutputStream) -> Vec<u8> {
    let mut bytes = Vec::new();
    for frame in frames(received) {
        if frame.header.stream == stream {
            assert_eq!(frame.header.offset, bytes.len() as u64, "offset gap");
            bytes.extend_from_slice(&frame.payload);
        }
    }
    bytes
}

fn started_pid(received: &[Outgoing]) -> u32 {
    match received.first() {
        Some(Outgoing::Started(started)) => started.pid,
        other => panic!("expected run.started first, got {other:?}"),
    }
}

/// Whether no live process is left in process group `pgid`. Zombies count as
/// gone: in some containers nobody reaps orphans.
fn group_is_gone(pgid: u32) -> bool {
    let pgid = i32::try_from(pgid).unwrap();
    if killpg(Pid::from_raw(pgid), None) == Err(Errno::ESRCH) {
        return true;
    }
    let live_members = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| std::fs::read_to_string(entry.ok()?.path().join("stat")).ok())
        .filter(|stat| {
            // "pid (comm) state ppid pgrp …"; comm may contain anything but ends at the last ')'.
            let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 1..]
                .split_whitespace()
                .collect();
            fields[2] == pgid.to_string() && fields[0] != "Z"
        })
        .count();
    live_members == 0
}

#[tokio::test]
async fn exit_code_and_both_streams_are_reported() {
    let (exited, received) = execute(start(shell("echo out; echo err >&2; exit 3"))).await;
    assert_eq!(exited.outcome, RunOutcome::Completed);
    assert_eq!(exited.exit_code, Some(3));
    assert_eq!(exited.signal, None);
    started_pid(&received);
    assert_eq!(stream_bytes(&received, OutputStream::Stdout), b"out\n");
    assert_eq!(stream_bytes(&received, OutputStream::Stderr), b"err\n");
}

#[tokio::test]
async fn env_and_cwd_are_applied() {
    let dir = tempfile::tempdir().unwrap();
    let mut start = start(shell("echo \"$MUSTER_TEST_VAR\"; pwd"));
    start.env.insert("MUSTER_TEST_VAR".into(), "hello".into());
    start.cwd = Some(dir.path().to_str().unwrap().to_owned());
    let (exited, received) = execute(start).await;
    assert_eq!(exited.exit_code, Some(0));
    let stdout = String::from_utf8(stream_bytes(&received, OutputStream::Stdout)).unwrap();
    let cwd = dir.path().canonicalize().unwrap();
    assert_eq!(stdout, format!("hello\n{}\n", cwd.display()));
}

#[tokio::test]
async fn binary_output_is_byte_exact_in_numbered_chunks() {
    let data: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &data).unwrap();
    let path = file.path().to_str().unwrap();
    let (exited, received) =
        execute(start(shell(&format!("cat '{path}'; cat '{path}' >&2")))).await;
    assert_eq!(exited.exit_code, Some(0));
    assert!(
        stream_bytes(&received, OutputStream::Stdout) == data,
        "stdout differs"
    );
    assert!(
        stream_bytes(&received, OutputStream::Stderr) == data,
        "stderr differs"
    );
    for (seq, frame) in frames(&received).into_iter().enumerate() {
        assert_eq!(frame.header.seq, seq as u64, "seq gap");
        assert!(frame.payload.len() <= MAX_OUTPUT_CHUNK_BYTES);
        assert!(!frame.payload.is_empty());
    }
}

#[tokio::test]
async fn output_cap_applies_to_both_streams_together() {
    let mut start = start(shell(
        "head -c 20000 /dev/zero; head -c 20000 /dev/zero >&2",
    ));
    start.output_cap_bytes = 25_000;
    let (exited, received) = execute(start).await;
    assert_eq!(exited.exit_code, Some(0));
    let total: usize = frames(&received).iter().map(|f| f.payload.len()).sum();
    assert_eq!(total, 25_000);
}

#[tokio::test]
async fn timeout_kills_the_process() {
    let mut start = start(argv(&["sleep", "30"]));
    start.timeout_ms = Some(500);
    let (exited, received) = execute(start).await;
    assert_eq!(exited.outcome, RunOutcome::TimedOut);
    assert!(group_is_gone(started_pid(&received)));
}

#[tokio::test]
async fn timeout_kills_the_whole_group_even_when_sigterm_is_ignored() {
    let mut start = start(shell("trap '' TERM; sleep 30 & sleep 30"));
    start.timeout_ms = Some(500);
    let began = std::time::Instant::now();
    let (exited, received) = execute(start).await;
    assert_eq!(exited.outcome, RunOutcome::TimedOut);
    assert_eq!(exited.signal, Some(9), "{exited:?}");
    assert!(began.elapsed() < Duration::from_secs(10));
    assert!(group_is_gone(started_pid(&received)));
}

#[tokio::test]
async fn background_children_die_with_the_main_process() {
    // The shell exits at once; its background child would keep the pipes open.
    let (exited, received) = execute(start(shell("sleep 30 & echo done"))).await;
    assert_eq!(exited.outcome, RunOutcome::Completed);
    assert_eq!(stream_bytes(&received, OutputStream::Stdout), b"done\n");
    assert!(group_is_gone(started_pid(&received)));
}

#[tokio::test]
async fn cancel_kills_the_process() {
    let start = start(argv(&["sleep", "30"]));
    let (sink, mut outgoing_rx) = RunSink::channel(start.run, start.output_cap_bytes, 64);
    let cancel = CancellationToken::new();
    let execution = tokio::spawn({
        let cancel = cancel.clone();
        async move { ProcessExecutor::new().execute(start, sink, cancel).await }
    });
    let Some(Outgoing::Started(started)) = outgoing_rx.recv().await else {
        panic!("expected run.started");
    };
    cancel.cancel();
    let exited = execution.await.unwrap();
    assert_eq!(exited.outcome, RunOutcome::Cancelled);
    assert_eq!(exited.signal, Some(15));
    assert!(group_is_gone(started.pid));
}

#[tokio::test]
async fn missing_program_fails_without_starting() {
    let (exited, received) = execute(start(argv(&["/nonexistent/muster-no-such-program"]))).await;
    assert_eq!(exited.outcome, RunOutcome::Failed);
    let error = exited.error.unwrap();
    assert!(error.contains("muster-no-such-program"), "{error}");
    assert!(received.is_empty(), "{received:?}");
}

#[tokio::test]
async fn empty_argv_fails() {
    let (exited, _) = execute(start(argv(&[]))).await;
    assert_eq!(exited.outcome, RunOutcome::Failed);
    assert!(exited.error.is_some());
}
