//! Host metrics against the scripted hub: samples flow while connected.

use std::time::Duration;

use muster_proto::AgentToHub;

use crate::fake_hub::{Harness, recv_text};

/// A sampling interval short enough for a quick test.
const INTERVAL: Duration = Duration::from_millis(200);

/// How many samples the test waits for.
const SAMPLES: usize = 2;

#[tokio::test]
async fn sends_samples_every_interval_once_connected() {
    let hub = Harness::start_with_metrics(INTERVAL).await;
    let (mut ws, _) = hub.accept_ack().await;
    let mut stamps = Vec::new();
    while stamps.len() < SAMPLES {
        let AgentToHub::Metrics(sample) = recv_text(&mut ws).await.msg else {
            panic!("expected metrics");
        };
        assert!(sample.mem_total_bytes > 0);
        assert!(!sample.cpu_per_core.is_empty());
        stamps.push(sample.ts_ms);
    }
    assert!(stamps.is_sorted_by(|a, b| a < b), "{stamps:?}");
    hub.stop(ws).await;
}
