//! Metrics from agents: streamed live on `metrics:<name>`, stored, rolled up
//! into averages past the raw window, and deleted past retention.

use futures_util::SinkExt as _;
use muster_client::Event;
use muster_proto::messages::{MetricsQuery, MetricsSample};
use muster_proto::{AgentName, ClientToHub, HubToClient};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::fixture::{TestHub, WAIT};

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn sample(ts_ms: u64, cpu: f32) -> MetricsSample {
    MetricsSample {
        ts_ms,
        cpu_percent: cpu,
        mem_total_bytes: 1 << 30,
        ..MetricsSample::default()
    }
}

async fn series(client: &muster_client::Client, agent: &str) -> Vec<(u64, u64, f32)> {
    let query = MetricsQuery {
        agent: AgentName::new(agent).unwrap(),
        since_ms: 0,
    };
    match client
        .request(ClientToHub::MetricsQuery(query))
        .await
        .unwrap()
    {
        HubToClient::MetricsSeries(s) => s
            .samples
            .iter()
            .map(|p| (p.resolution_ms, p.sample.ts_ms, p.sample.cpu_percent))
            .collect(),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samples_stream_live_then_roll_up_and_expire() {
    let hub = TestHub::start_with(|c| {
        c.metrics_raw_retention_ms = 5_000;
        c.metrics_rollup_window_ms = 1_000;
        c.metrics_rollup_retention_ms = 30_000;
        c.metrics_compact_interval_ms = 100;
    })
    .await;
    let (client, mut events) = hub.client().await;
    let token = hub
        .hub
        .agent_token(&AgentName::new("probe").unwrap())
        .await
        .unwrap();
    let (mut agent, _) = tokio_tungstenite::connect_async(hub.ws_url("/ws/agent"))
        .await
        .unwrap();
    let hello = json!({"type": "hello", "data": {"token": token.expose(), "max_concurrency": 1}});
    agent.send(Message::text(hello.to_string())).await.unwrap();
    client.subscribe("metrics:probe", None).await.unwrap();

    let now = now_ms();
    let window = now - 10_000 - (now - 10_000) % 1_000;
    let samples = [
        sample(now - 60_000, 99.0),
        sample(window + 100, 10.0),
        sample(window + 600, 30.0),
        sample(now, 50.0),
    ];
    for s in &samples {
        let msg = json!({"type": "metrics", "data": s});
        agent.send(Message::text(msg.to_string())).await.unwrap();
    }
    // Every sample is streamed to subscribers as it arrives.
    let mut live = Vec::new();
    tokio::time::timeout(WAIT, async {
        while live.len() < samples.len() {
            if let Event::Message(env) = events.recv().await.expect("events open")
                && let HubToClient::MetricsSample(s) = env.msg
            {
                assert_eq!(env.channel.as_deref(), Some("metrics:probe"));
                live.push(s.sample.cpu_percent);
            }
        }
    })
    .await
    .expect("live samples");
    assert_eq!(live, [99.0, 10.0, 30.0, 50.0]);

    // Compaction: the two samples of one old window become one average; the
    // sample past retention is gone; the recent one stays raw.
    let expected = vec![(1_000, window, 20.0), (0, now, 50.0)];
    tokio::time::timeout(WAIT, async {
        while series(&client, "probe").await != expected {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the series is compacted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_rises_on_the_metrics_channel_while_the_agent_runs_yes() {
    let hub = TestHub::start().await;
    let interval = std::time::Duration::from_secs(1);
    let _agent = hub.agent_with_metrics("busy", 1, Some(interval)).await;
    let (client, mut events) = hub.client().await;
    client.subscribe("metrics:busy", None).await.unwrap();
    let cores = std::thread::available_parallelism().unwrap().get() as f32;
    let request = muster_proto::types::RunRequest::new(
        AgentName::new("busy").unwrap(),
        muster_proto::CommandSpec::Shell("timeout 4 yes > /dev/null".into()),
    );
    let run = client.create_run(request, true).await.unwrap().run.id;
    let mut peak = 0.0f32;
    let mut samples = 0;
    tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await.expect("events open") {
                Event::Message(env) => match env.msg {
                    HubToClient::MetricsSample(s) => {
                        samples += 1;
                        peak = peak.max(s.sample.cpu_percent);
                        assert!(s.sample.mem_total_bytes > 0 && !s.sample.disks.is_empty());
                    }
                    HubToClient::RunStatus(s) if s.run.id == run && s.run.state.is_terminal() => {
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
    .expect("the busy run ends");
    eprintln!("{samples} samples while yes ran; peak CPU {peak:.1} % of {cores} cores");
    assert!(samples >= 2, "samples every second: got {samples}");
    // One core fully busy is 100/cores percent of the machine; allow for sampling edges.
    assert!(
        peak > 100.0 / (2.0 * cores),
        "peak CPU {peak} never showed the busy core"
    );
}
