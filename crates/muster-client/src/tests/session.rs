//! The session writer against a fake hub: inputs numbered from the attach's
//! `last_seq`, pipelined in order, and after a drop sent again exactly from
//! the new attach's `last_seq`, so the hub applies each once.

use std::time::Duration;

use muster_proto::messages::ErrorData;
use muster_proto::sessions::{SessionAttached, SessionInputAck, SessionKind};
use muster_proto::{ClientToHub, CloseCode, Envelope, ErrorCode, HubToClient, RunId};

use super::fake_hub::{HubSide, accept, close_code, close_with, listen, recv, send};
use crate::{Client, Follow, Session, SessionError, SessionOptions};

/// Bound on a test that fails by hanging.
const TEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers the next request, a writer's `session.attach`, with `last_seq`.
async fn answer_attach(hub: &mut HubSide, run: RunId, writer: &str, last_seq: u64) {
    let request = recv(hub).await;
    let ClientToHub::SessionAttach(attach) = request.msg else {
        panic!("expected session.attach, got {:?}", request.msg)
    };
    assert_eq!(attach.run, run);
    assert!(attach.write);
    assert_eq!(attach.writer.as_deref(), Some(writer), "the same writer id");
    let attached = SessionAttached {
        run,
        kind: SessionKind::Pipe,
        write: true,
        last_seq,
        cols: 80,
        rows: 24,
    };
    send(
        hub,
        Envelope::reply(request.id, HubToClient::SessionAttached(attached)),
    )
    .await;
}

/// Reads the next `session.input`: its request id, seq and data.
async fn next_input(hub: &mut HubSide) -> (Option<muster_proto::RequestId>, u64, String) {
    let request = recv(hub).await;
    let ClientToHub::SessionInput(input) = request.msg else {
        panic!("expected session.input, got {:?}", request.msg)
    };
    (request.id, input.seq, input.data)
}

async fn ack(hub: &mut HubSide, id: Option<muster_proto::RequestId>, run: RunId, seq: u64) {
    let ack = HubToClient::SessionInputAck(SessionInputAck { run, seq });
    send(hub, Envelope::reply(id, ack)).await;
}

async fn attach_writer(url: &str, run: RunId, writer: &str) -> Session {
    let connection = Client::connect(url, "tok").await.unwrap();
    let options = SessionOptions::writer(writer.into(), Follow::No);
    let attached = Session::attach(connection, url, "tok", run, options)
        .await
        .unwrap();
    assert!(attached.screen.is_none());
    attached.session
}

#[tokio::test]
async fn inputs_are_applied_once_across_a_drop_mid_stream() {
    let (listener, url) = listen().await;
    let run = RunId::generate();
    let hub = tokio::spawn(async move {
        let mut applied = Vec::new();
        let mut hub = accept(&listener).await;
        answer_attach(&mut hub, run, "w-1", 0).await;
        // Three inputs arrive pipelined, in order; only the first is acked.
        for expected in 1..=3 {
            let (id, seq, data) = next_input(&mut hub).await;
            assert_eq!(seq, expected);
            if seq <= 2 {
                applied.push(data);
            }
            if seq == 1 {
                ack(&mut hub, id, run, 1).await;
            }
        }
        // The hub stored 1 and 2 (but not 3) when the connection dropped.
        drop(hub);

        let mut hub = accept(&listener).await;
        answer_attach(&mut hub, run, "w-1", 2).await;
        // Exactly the input the hub lacks comes again, then the new one.
        for expected in 3..=4 {
            let (id, seq, data) = next_input(&mut hub).await;
            assert_eq!(seq, expected, "resent from the attach's last_seq");
            applied.push(data);
            ack(&mut hub, id, run, seq).await;
        }
        close_code(&mut hub).await;
        applied
    });
    let test = async {
        let mut session = attach_writer(&url, run, "w-1").await;
        for data in ["a", "b", "c"] {
            session.input(data.into()).await.unwrap();
        }
        session.acked(1).await.unwrap();
        // Waits for the reconnect; numbering goes on.
        assert_eq!(session.input("d".into()).await.unwrap(), 4);
        session.acked(4).await.unwrap();
        session.close().await;
    };
    tokio::time::timeout(TEST_TIMEOUT, test).await.unwrap();
    assert_eq!(hub.await.unwrap(), ["a", "b", "c", "d"]);
}

#[tokio::test]
async fn a_writer_id_used_before_continues_its_numbering() {
    let (listener, url) = listen().await;
    let run = RunId::generate();
    tokio::spawn(async move {
        let mut hub = accept(&listener).await;
        answer_attach(&mut hub, run, "cli-7", 41).await;
        let (id, seq, data) = next_input(&mut hub).await;
        assert_eq!((seq, data.as_str()), (42, "hello"));
        ack(&mut hub, id, run, 42).await;
        close_code(&mut hub).await;
    });
    let test = async {
        let mut session = attach_writer(&url, run, "cli-7").await;
        let seq = session.input("hello".into()).await.unwrap();
        assert_eq!(seq, 42);
        session.acked(seq).await.unwrap();
        session.close().await;
    };
    tokio::time::timeout(TEST_TIMEOUT, test).await.unwrap();
}

#[tokio::test]
async fn an_input_the_hub_refuses_ends_the_session_with_its_reason() {
    let (listener, url) = listen().await;
    let run = RunId::generate();
    tokio::spawn(async move {
        let mut hub = accept(&listener).await;
        answer_attach(&mut hub, run, "w-1", 0).await;
        let (id, _, _) = next_input(&mut hub).await;
        let error = ErrorData::new(ErrorCode::InputGap, "the next input is 5");
        send(&mut hub, Envelope::reply(id, HubToClient::Error(error))).await;
        close_code(&mut hub).await;
    });
    let test = async {
        let mut session = attach_writer(&url, run, "w-1").await;
        session.input("x".into()).await.unwrap();
        let Some(Err(SessionError::InputRefused { seq, error })) = session.next().await else {
            panic!("expected the refusal")
        };
        assert_eq!(seq, 1);
        assert_eq!(error.code(), Some(ErrorCode::InputGap));
        assert!(session.acked(1).await.is_err(), "never acknowledged");
    };
    tokio::time::timeout(TEST_TIMEOUT, test).await.unwrap();
}

#[tokio::test]
async fn a_hub_that_holds_more_than_was_sent_is_an_error() {
    let (listener, url) = listen().await;
    let run = RunId::generate();
    tokio::spawn(async move {
        let mut hub = accept(&listener).await;
        answer_attach(&mut hub, run, "w-1", 0).await;
        let _ = next_input(&mut hub).await;
        close_with(hub, CloseCode::GOING_AWAY, "restarting").await;
        let mut hub = accept(&listener).await;
        // Another process wrote as w-1 meanwhile.
        answer_attach(&mut hub, run, "w-1", 9).await;
        close_code(&mut hub).await;
    });
    let test = async {
        let mut session = attach_writer(&url, run, "w-1").await;
        session.input("x".into()).await.unwrap();
        let Some(Err(SessionError::Inputs(err))) = session.next().await else {
            panic!("expected an input log error")
        };
        assert!(err.to_string().contains("in use elsewhere"), "{err}");
    };
    tokio::time::timeout(TEST_TIMEOUT, test).await.unwrap();
}

#[tokio::test]
async fn viewers_and_oversized_inputs_are_refused_locally() {
    let (listener, url) = listen().await;
    let run = RunId::generate();
    tokio::spawn(async move {
        let mut hub = accept(&listener).await;
        let request = recv(&mut hub).await;
        let ClientToHub::SessionAttach(attach) = request.msg else {
            panic!("expected session.attach")
        };
        assert!(!attach.write && attach.writer.is_none());
        let attached = SessionAttached {
            run,
            kind: SessionKind::Pty,
            write: false,
            last_seq: 0,
            cols: 100,
            rows: 30,
        };
        let reply = HubToClient::SessionAttached(attached);
        send(&mut hub, Envelope::reply(request.id, reply)).await;
        close_code(&mut hub).await;
    });
    let connection = Client::connect(&url, "tok").await.unwrap();
    let options = SessionOptions::viewer(Follow::No);
    let attached = Session::attach(connection, &url, "tok", run, options)
        .await
        .unwrap();
    assert_eq!((attached.attached.cols, attached.attached.rows), (100, 30));
    let mut viewer = attached.session;
    assert!(matches!(
        viewer.input("x".into()).await,
        Err(SessionError::NotWriter)
    ));
    viewer.close().await;
    let err = SessionError::TooLarge(9000);
    assert!(err.to_string().contains("8192"), "{err}");
}

#[tokio::test]
async fn an_input_refused_for_now_is_sent_again_after_the_wait_with_those_after_it() {
    let (listener, url) = listen().await;
    let run = RunId::generate();
    let hub = tokio::spawn(async move {
        let mut applied = Vec::new();
        let mut hub = accept(&listener).await;
        answer_attach(&mut hub, run, "w-1", 0).await;
        // 1 is taken; 2 hits the rate limit, so 3 finds a gap: neither is taken.
        let (id, seq, data) = next_input(&mut hub).await;
        assert_eq!(seq, 1);
        applied.push(data);
        ack(&mut hub, id, run, 1).await;
        let (id, seq, _) = next_input(&mut hub).await;
        assert_eq!(seq, 2);
        let limited = ErrorData::rate_limited("slow down", Duration::from_millis(20));
        send(&mut hub, Envelope::reply(id, HubToClient::Error(limited))).await;
        let (id, seq, _) = next_input(&mut hub).await;
        assert_eq!(seq, 3);
        let gap = ErrorData::new(ErrorCode::InputGap, "the next is 2");
        send(&mut hub, Envelope::reply(id, HubToClient::Error(gap))).await;
        // After the wait, the writer starts over from 2, on the same connection.
        for expected in 2..=3 {
            let (id, seq, data) = next_input(&mut hub).await;
            assert_eq!(seq, expected, "sent again from the refused input");
            applied.push(data);
            ack(&mut hub, id, run, seq).await;
        }
        close_code(&mut hub).await;
        applied
    });
    let test = async {
        let mut session = attach_writer(&url, run, "w-1").await;
        for data in ["a", "b", "c"] {
            session.input(data.into()).await.unwrap();
        }
        session.acked(3).await.unwrap();
        session.close().await;
    };
    tokio::time::timeout(TEST_TIMEOUT, test).await.unwrap();
    assert_eq!(hub.await.unwrap(), ["a", "b", "c"]);
}
