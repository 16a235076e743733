use super::*;
use crate::screen::Screen;

fn frames(received: Vec<Outgoing>) -> Vec<OutputFrame> {
    received
        .into_iter()
        .filter_map(|out| match out {
            Outgoing::Output(frame) => Some(frame),
            _ => None,
        })
        .collect()
}

async fn collect(mut rx: mpsc::Receiver<Outgoing>) -> Vec<Outgoing> {
    let mut received = Vec::new();
    while let Some(out) = rx.recv().await {
        received.push(out);
    }
    received
}

#[tokio::test(start_paused = true)]
async fn partial_chunk_waits_for_the_batch_window() {
    let (sink, mut rx) = RunSink::channel(RunId::generate(), u64::MAX, 16);
    let begin = Instant::now();
    sink.output(OutputStream::Stdout, b"hello").await;
    let Some(Outgoing::Output(frame)) = rx.recv().await else {
        panic!("expected an output frame");
    };
    assert_eq!(begin.elapsed(), Duration::from_millis(OUTPUT_BATCH_MS));
    assert_eq!(&frame.payload[..], b"hello");
    assert_eq!((frame.header.seq, frame.header.offset), (0, 0));
    assert_eq!(frame.header.at, None);
}

#[tokio::test(start_paused = true)]
async fn full_chunks_go_at_once_and_seq_spans_both_streams() {
    let (sink, rx) = RunSink::channel(RunId::generate(), u64::MAX, 16);
    sink.started(7).await;
    sink.output(OutputStream::Stdout, &[1; MAX_OUTPUT_CHUNK_BYTES + 5])
        .await;
    sink.output(OutputStream::Stderr, b"err").await;
    sink.output(OutputStream::Stdout, b"more").await;
    drop(sink);
    let received = collect(rx).await;
    assert!(matches!(
        received[0],
        Outgoing::Started(RunStarted { pid: 7, .. })
    ));
    let frames = frames(received);
    let seen: Vec<_> = frames
        .iter()
        .map(|f| {
            (
                f.header.stream,
                f.header.seq,
                f.header.offset,
                f.payload.len(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (OutputStream::Stdout, 0, 0, MAX_OUTPUT_CHUNK_BYTES),
            (OutputStream::Stdout, 1, MAX_OUTPUT_CHUNK_BYTES as u64, 9),
            (OutputStream::Stderr, 2, 0, 3),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn output_past_the_cap_is_discarded() {
    let (sink, rx) = RunSink::channel(RunId::generate(), 15_000, 16);
    sink.output(OutputStream::Stdout, &[1; 10_000]).await;
    sink.output(OutputStream::Stderr, &[2; 10_000]).await;
    sink.output(OutputStream::Stdout, &[3; 10]).await;
    drop(sink);
    let total: usize = frames(collect(rx).await)
        .iter()
        .map(|f| f.payload.len())
        .sum();
    assert_eq!(total, 15_000);
}

/// A session's sink delivering to a channel, and the sender of its snapshot requests.
fn session_sink(
    screen: Option<Screen>,
) -> (
    RunSink,
    mpsc::Receiver<Outgoing>,
    mpsc::Sender<u64>,
    mpsc::Receiver<AgentToHub>,
) {
    let (outgoing_tx, outgoing_rx) = mpsc::channel(16);
    let (snapshot_tx, snapshot_rx) = mpsc::channel(1);
    let (replies, replies_rx) = Replies::channel();
    let framing = SessionFraming {
        screen,
        snapshot_rx,
        replies,
    };
    let outlet = Outlet::Channel(outgoing_tx);
    let (sink, batcher) = RunSink::new(RunId::generate(), u64::MAX, outlet, Some(framing));
    tokio::spawn(batcher.run());
    (sink, outgoing_rx, snapshot_tx, replies_rx)
}

#[tokio::test(start_paused = true)]
async fn a_session_sends_each_read_at_once_stamped_with_its_time() {
    let (sink, mut rx, _snapshot_tx, _replies_rx) = session_sink(None);
    let begin = Instant::now();
    sink.output(OutputStream::Stdout, b"$").await;
    let Some(Outgoing::Output(frame)) = rx.recv().await else {
        panic!("expected an output frame");
    };
    // On paused time, any wait for a batch window would have moved the clock.
    assert_eq!(begin.elapsed(), Duration::ZERO);
    assert_eq!(&frame.payload[..], b"$");
    assert!(frame.header.at.is_some_and(|at| at > 1_700_000_000_000));
    sink.output(OutputStream::Stderr, &[7; MAX_OUTPUT_CHUNK_BYTES + 1])
        .await;
    drop(sink);
    let seen: Vec<_> = frames(collect(rx).await)
        .iter()
        .map(|f| (f.header.stream, f.header.seq, f.payload.len()))
        .collect();
    assert_eq!(
        seen,
        [
            (OutputStream::Stderr, 1, MAX_OUTPUT_CHUNK_BYTES),
            (OutputStream::Stderr, 2, 1)
        ]
    );
    assert_eq!(begin.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn input_echo_takes_its_place_among_the_output() {
    let (sink, rx, _snapshot_tx, _replies_rx) = session_sink(None);
    sink.output(OutputStream::Stdout, b"$ ").await;
    let record = InputRecord {
        seq: 1,
        from: "ops".into(),
        at: 5,
        data: "ls".into(),
    };
    sink.input(record.clone()).await;
    sink.output(OutputStream::Stdout, b"ls\r\n").await;
    drop(sink);
    let frames = frames(collect(rx).await);
    let seen: Vec<_> = frames
        .iter()
        .map(|f| (f.header.stream, f.header.seq, f.header.offset))
        .collect();
    assert_eq!(
        seen,
        [
            (OutputStream::Stdout, 0, 0),
            (OutputStream::Input, 1, 0),
            (OutputStream::Stdout, 2, 2),
        ]
    );
    let echoed: InputRecord = serde_json::from_slice(&frames[1].payload).unwrap();
    assert_eq!(echoed, record);
}

#[tokio::test]
async fn a_snapshot_shows_the_screen_as_of_next_seq() {
    let (sink, mut rx, snapshot_tx, mut replies_rx) = session_sink(Some(Screen::new(20, 5)));
    sink.resize(30, 6).await;
    sink.output(OutputStream::Stdout, b"\x1b[2;3Hhi").await;
    rx.recv().await.unwrap();
    snapshot_tx.send(9).await.unwrap();
    let Some(AgentToHub::SessionScreen(screen)) = replies_rx.recv().await else {
        panic!("expected session.screen");
    };
    assert_eq!(screen.token, Some(9));
    assert_eq!(screen.next_seq, 1);
    assert_eq!((screen.cols, screen.rows), (30, 6));
    let mut parser = vt100::Parser::new(6, 30, 0);
    parser.process(screen.data.as_bytes());
    assert_eq!(parser.screen().contents_between(1, 2, 1, 4), "hi");
}
