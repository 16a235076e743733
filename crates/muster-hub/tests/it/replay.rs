//! Subscribing to a run mid-stream: the replay from the store and the live
//! stream join with no gap and no duplicate.

use muster_client::Event;
use muster_proto::types::RunRequest;
use muster_proto::{AgentName, CommandSpec, HubToClient, OutputStream, RunState};

use crate::fixture::{TestHub, WAIT, until_run_ends};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_subscriber_gets_every_chunk_once_in_order() {
    let hub = TestHub::start().await;
    let _agent = hub.agent("streamer", 2).await;
    let (client, mut events) = hub.client().await;
    let script = "for i in $(seq 1 400); do echo line-$i; sleep 0.002; done".to_owned();
    let request = RunRequest::new(
        AgentName::new("streamer").unwrap(),
        CommandSpec::Shell(script),
    );
    let run = client.create_run(request, false).await.unwrap().run;
    // Join once some output is already stored, so both replay and live are
    // exercised; polled under the connection's message rate limit.
    let mut poll = tokio::time::interval(std::time::Duration::from_millis(20));
    tokio::time::timeout(WAIT, async {
        while client.run_info(run.id).await.unwrap().output_bytes == 0 {
            poll.tick().await;
        }
    })
    .await
    .expect("output starts");
    let subscribed = client
        .subscribe(&run.id.channel().to_string(), Some(0))
        .await
        .unwrap();
    assert_eq!(subscribed.run.unwrap().id, run.id);

    let (mut stdout, mut seqs, mut synced) = (Vec::new(), Vec::new(), false);
    tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await.expect("events open") {
                Event::Output(frame) if frame.header.run == run.id => {
                    assert_eq!(frame.header.stream, OutputStream::Stdout);
                    assert_eq!(
                        frame.header.offset,
                        stdout.len() as u64,
                        "offsets are contiguous"
                    );
                    seqs.push(frame.header.seq);
                    stdout.extend_from_slice(&frame.payload);
                }
                Event::Message(env) => match env.msg {
                    HubToClient::StreamSynced(_) => synced = true,
                    HubToClient::RunStatus(s) if s.run.state.is_terminal() => {
                        assert_eq!(s.run.state, RunState::Completed);
                        return;
                    }
                    _ => {}
                },
                Event::Closed { reason, .. } => panic!("closed: {reason}"),
                Event::Output(_) => {}
            }
        }
    })
    .await
    .expect("the run completes");

    assert!(synced, "stream.synced marks the end of the replay");
    let expected: String = (1..=400).map(|i| format!("line-{i}\n")).collect();
    assert_eq!(String::from_utf8(stdout).unwrap(), expected);
    assert_eq!(
        seqs,
        (0..seqs.len() as u64).collect::<Vec<_>>(),
        "each seq once, in order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_past_the_cap_is_dropped_and_the_run_marked_truncated() {
    let hub = TestHub::start_with(|c| c.max_output_bytes_per_run = 100_000).await;
    let _agent = hub.agent("chatty", 1).await;
    let (client, mut events) = hub.client().await;
    let request = RunRequest::new(
        AgentName::new("chatty").unwrap(),
        CommandSpec::Argv(vec![
            "head".into(),
            "-c".into(),
            "300000".into(),
            "/dev/zero".into(),
        ]),
    );
    let id = client.create_run(request, true).await.unwrap().run.id;
    let (finished, received) = until_run_ends(&mut events).await;
    assert_eq!(finished.id, id);
    assert_eq!(finished.state, RunState::Completed);
    assert_eq!(
        finished.exit_code,
        Some(0),
        "the command itself was not stopped"
    );
    assert!(finished.output_truncated);
    assert_eq!(finished.output_bytes, 100_000);
    assert_eq!(received, 100_000);

    // A later reader is told explicitly that the stored stream ends at the cap.
    client
        .subscribe(&id.channel().to_string(), Some(0))
        .await
        .unwrap();
    let synced = tokio::time::timeout(WAIT, async {
        loop {
            if let Event::Message(env) = events.recv().await.expect("events open")
                && let HubToClient::StreamSynced(synced) = env.msg
            {
                return synced;
            }
        }
    })
    .await
    .expect("stream.synced");
    assert!(synced.truncated);
}
