use super::*;
use crate::sink::Outgoing;

fn record(data: &str) -> InputRecord {
    InputRecord {
        seq: 4,
        from: "ops".into(),
        at: 1_732_252_800_000,
        data: data.into(),
    }
}

fn decode(payload: &[u8]) -> InputRecord {
    serde_json::from_slice(payload).unwrap()
}

fn deliver(run: RunId, seq: u64) -> SessionDeliver {
    SessionDeliver {
        run,
        seq,
        data: format!("line {seq}"),
        from: "ops".into(),
        at: 5,
    }
}

#[tokio::test]
async fn each_input_is_echoed_then_written_once_in_order() {
    let run = RunId::generate();
    let (replies, mut replies_rx) = Replies::channel();
    let (handle, parts) = open(&SessionSpec::new(SessionKind::Pipe), replies);
    let (outgoing_tx, mut outgoing_rx) = mpsc::channel(16);
    let (sink, batcher, applier, mut inbox) =
        parts.wire(run, u64::MAX, Outlet::Channel(outgoing_tx));
    drop(sink);
    tokio::spawn(batcher.run());
    tokio::spawn(applier.run());
    for seq in [1, 2, 2, 1, 3, 5, 4] {
        handle.input(deliver(run, seq));
    }
    for seq in 1..=4 {
        let line = Bytes::from(format!("line {seq}\n"));
        assert_eq!(inbox.recv().await, Some(SessionCommand::Write(line)));
        let Some(Outgoing::Output(echo)) = outgoing_rx.recv().await else {
            panic!("expected an echo frame");
        };
        assert_eq!(echo.header.seq, seq - 1);
        let record: InputRecord = serde_json::from_slice(&echo.payload).unwrap();
        assert_eq!(record.seq, seq);
    }
    let mut acks = Vec::new();
    while acks.len() < 6 {
        let Some(AgentToHub::SessionApplied(applied)) = replies_rx.recv().await else {
            panic!("expected session.input.ack");
        };
        acks.push(applied.seq);
    }
    assert_eq!(acks, [1, 2, 2, 2, 3, 4]);
    assert_eq!(handle.applied(), 4);
    assert!(replies_rx.try_recv().is_err(), "a gap is not acknowledged");
}

#[test]
fn a_small_input_is_one_compact_record() {
    let payloads = echo_payloads(&record("ls -l\r"), 10_240);
    assert_eq!(
        &payloads[0][..],
        br#"{"seq":4,"from":"ops","at":1732252800000,"data":"ls -l\r"}"#
    );
    assert_eq!(payloads.len(), 1);
}

#[test]
fn an_input_of_escaped_bytes_is_cut_into_records_of_the_same_seq() {
    let data = "\u{3}é\"\\".repeat(2_000);
    let payloads = echo_payloads(&record(&data), 10_240);
    assert!(payloads.len() > 1);
    let mut joined = String::new();
    for payload in &payloads {
        assert!(payload.len() <= 10_240, "{}", payload.len());
        let part = decode(payload);
        assert_eq!((part.seq, part.from.as_str()), (4, "ops"));
        joined.push_str(&part.data);
    }
    assert_eq!(joined, data);
}
