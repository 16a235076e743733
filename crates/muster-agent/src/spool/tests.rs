//! Unit tests of the spool: order, resending, acks and the byte bound.

use std::pin::pin;

use bytes::Bytes;
use futures_util::FutureExt;
use muster_proto::messages::{RunExited, RunStarted};
use muster_proto::{OutputFrame, OutputHeader, OutputStream};

use super::*;

fn started(run: RunId) -> Outgoing {
    Outgoing::Started(RunStarted { run, pid: 1 })
}

fn frame(run: RunId, seq: u64, len: usize) -> Outgoing {
    let header = OutputHeader {
        run,
        stream: OutputStream::Stdout,
        seq,
        offset: 0,
        at: None,
    };
    let payload = Bytes::from(vec![b'x'; len]);
    Outgoing::Output(OutputFrame { header, payload })
}

fn exited(run: RunId) -> Outgoing {
    Outgoing::Exited(RunExited::completed(run))
}

fn ack(run: RunId, next_seq: u64, exited: bool) -> RunAck {
    RunAck {
        run,
        next_seq,
        exited,
    }
}

/// Everything a fresh connection would send, in order.
fn unsent(spool: &Spool) -> Vec<Outgoing> {
    let mut cursor = Cursor::default();
    std::iter::from_fn(|| spool.try_next(&mut cursor)).collect()
}

async fn push_all(spool: &Spool, entries: &[Outgoing]) {
    for entry in entries {
        spool.push(entry.clone()).await;
    }
}

#[tokio::test]
async fn a_new_cursor_sends_everything_again_in_order() {
    let spool = Spool::new(SPOOL_MAX_BYTES);
    let (a, b) = (RunId::generate(), RunId::generate());
    let entries = [started(a), started(b), frame(a, 0, 3), frame(b, 0, 4)];
    push_all(&spool, &entries[..3]).await;

    let mut cursor = Cursor::default();
    assert_eq!(spool.next(&mut cursor).await, entries[0]);
    assert_eq!(spool.next(&mut cursor).await, entries[1]);
    spool.push(entries[3].clone()).await;
    assert_eq!(spool.next(&mut cursor).await, entries[2]);
    assert_eq!(spool.next(&mut cursor).await, entries[3]);
    assert!(spool.try_next(&mut cursor).is_none());
    assert_eq!(unsent(&spool), entries);
}

#[tokio::test]
async fn next_waits_for_an_append_and_a_dropped_wait_loses_nothing() {
    let spool = Spool::new(SPOOL_MAX_BYTES);
    let run = RunId::generate();
    let mut cursor = Cursor::default();
    assert!(spool.next(&mut cursor).now_or_never().is_none());
    spool.push(started(run)).await;
    let mut next = pin!(spool.next(&mut cursor));
    assert_eq!(next.as_mut().now_or_never(), Some(started(run)));
}

#[tokio::test]
async fn acks_drop_started_and_frames_below_next_seq() {
    let spool = Spool::new(SPOOL_MAX_BYTES);
    let (run, other) = (RunId::generate(), RunId::generate());
    let entries = [
        started(run),
        frame(run, 0, 1),
        started(other),
        frame(run, 1, 1),
        frame(run, 2, 1),
        exited(run),
    ];
    push_all(&spool, &entries).await;

    assert!(!spool.ack(&ack(run, 0, false)));
    assert_eq!(unsent(&spool), entries[1..]);
    assert!(!spool.ack(&ack(run, 2, false)));
    assert_eq!(
        unsent(&spool),
        [&entries[2], &entries[4], &entries[5]].map(Clone::clone)
    );
    // Acks are cumulative and idempotent; unknown runs are ignored.
    assert!(!spool.ack(&ack(run, 1, false)));
    assert!(!spool.ack(&ack(RunId::generate(), 9, true)));
    assert_eq!(spool.finished_runs(), [run]);

    assert!(spool.ack(&ack(run, 0, true)));
    assert_eq!(unsent(&spool), [entries[2].clone()]);
    assert!(spool.finished_runs().is_empty());
    assert!(
        !spool.ack(&ack(run, 3, true)),
        "a repeated exit ack settles nothing"
    );
    assert!(!spool.ack(&ack(other, 0, false)));
    assert!(spool.is_empty());
}

#[tokio::test]
async fn a_full_spool_makes_appends_wait_until_acks_make_room() {
    let cost = 1_000 + ENTRY_OVERHEAD_BYTES;
    let spool = Spool::new(2 * cost);
    let run = RunId::generate();
    push_all(&spool, &[frame(run, 0, 1_000), frame(run, 1, 1_000)]).await;

    let mut third = pin!(spool.push(frame(run, 2, 1_000)));
    assert!(
        third.as_mut().now_or_never().is_none(),
        "appended past the bound"
    );
    assert!(third.as_mut().now_or_never().is_none());
    spool.ack(&ack(run, 1, false));
    assert!(third.as_mut().now_or_never().is_some());
    let seqs: Vec<_> = unsent(&spool)
        .into_iter()
        .map(|entry| match entry {
            Outgoing::Output(frame) => frame.header.seq,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(seqs, [1, 2]);
}

#[tokio::test]
async fn an_entry_larger_than_the_bound_still_fits_an_empty_spool() {
    let spool = Spool::new(10);
    let run = RunId::generate();
    spool.push(frame(run, 0, 1_000)).await;
    let mut second = pin!(spool.push(frame(run, 1, 1)));
    assert!(second.as_mut().now_or_never().is_none());
    spool.ack(&ack(run, 1, false));
    assert!(second.as_mut().now_or_never().is_some());
}
