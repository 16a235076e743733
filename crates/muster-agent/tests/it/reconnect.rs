//! The reconnect schedule of the real agent loop, on paused tokio time.
//!
//! The agent dials a loopback port nobody listens on. Such a dial fails inside
//! the `connect` call itself (the kernel answers a loopback SYN to a closed
//! port at once), so no attempt waits on socket I/O and paused time is exact:
//! the only timers are the agent's backoff sleeps. The attempts are observed
//! through the agent's `dialling the hub` debug event, recorded with the
//! (paused) tokio clock by a tracing layer; the production path is untouched.

use std::fmt;
use std::time::Duration;

use muster_agent::AgentOptions;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

/// The agent's event for each connection attempt.
const DIAL_EVENT: &str = "dialling the hub";

/// Delays expected between attempts, in seconds: an immediate retry, then
/// doubling up to the 30 s ceiling.
const SCHEDULE_SECS: [u64; 8] = [0, 1, 2, 4, 8, 16, 30, 30];

/// Allowed spread around each delay.
const JITTER: f64 = 0.2;

/// Bound on the (virtual) wait for one attempt; well past the longest delay.
const ATTEMPT_WAIT: Duration = Duration::from_secs(120);

/// Sends the tokio time of every dial event.
struct DialRecorder(mpsc::UnboundedSender<Instant>);

impl<S: Subscriber> Layer<S> for DialRecorder {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut message = MessageField(None);
        event.record(&mut message);
        let from_agent = event.metadata().target().starts_with("muster_agent");
        if from_agent && message.0.as_deref() == Some(DIAL_EVENT) {
            let _ = self.0.send(Instant::now());
        }
    }
}

/// An event's `message` field.
struct MessageField(Option<String>);

impl Visit for MessageField {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.0 = Some(format!("{value:?}"));
        }
    }
}

#[tokio::test(start_paused = true)]
async fn reconnects_immediately_then_on_the_backoff_schedule() {
    let (attempts_tx, mut attempts_rx) = mpsc::unbounded_channel();
    let _subscriber = tracing_subscriber::registry()
        .with(DialRecorder(attempts_tx))
        .set_default();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let refusing = listener.local_addr().unwrap();
    drop(listener);
    let options = AgentOptions::new(format!("http://{refusing}"), "mst_test_token");
    let shutdown = CancellationToken::new();
    let agent = tokio::spawn(muster_agent::run(options, shutdown.clone()));

    let mut times = Vec::new();
    for _ in 0..=SCHEDULE_SECS.len() {
        let attempt = tokio::time::timeout(ATTEMPT_WAIT, attempts_rx.recv()).await;
        times.push(attempt.expect("no connection attempt").unwrap());
    }
    shutdown.cancel();
    agent.await.unwrap().unwrap();

    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    for (gap, secs) in gaps.iter().zip(SCHEDULE_SECS) {
        let expected = Duration::from_secs(secs);
        let (low, high) = (
            expected.mul_f64(1.0 - JITTER),
            expected.mul_f64(1.0 + JITTER),
        );
        assert!(
            low <= *gap && *gap <= high,
            "attempt gaps {gaps:?}: {gap:?} is not within {low:?}..={high:?}"
        );
    }
}
