//! Subscribing to a run mid-stream: the replay from the store and the live
//! stream join with no gap and no duplicate.

use std::collections::BTreeMap;

use muster_client::Event;
use muster_proto::types::RunRequest;
use muster_proto::{AgentName, CommandSpec, HubToClient, OutputStream, RunState};

use crate::fixture::{TestHub, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_subscriber_gets_every_chunk_once_in_order() {
    let hub = TestHub::start().await;
    let _agent = hub.agent("streamer", 2).await;
    let (client, mut events) = hub.client().await;
    let script = "for i in $(seq 1 400); do echo line-$i; sleep 0.002; done".to_owned();
    let request = RunRequest {
        agent: AgentName::new("streamer").unwrap(),
        command: CommandSpec::Shell(script),
        env: BTreeMap::new(),
        cwd: None,
        timeout_ms: None,
        priority: 0,
        idempotency_key: None,
    };
    let run = client.create_run(request, false).await.unwrap().run;
    // Join once some output is already stored, so both replay and live are exercised.
    tokio::time::timeout(WAIT, async {
        while client.run_info(run.id).await.unwrap().output_bytes == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("output starts");
    let subscribed = client.subscribe(&run.id.channel(), Some(0)).await.unwrap();
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
