//! Thousands of raw connections, opened with a bounded number of handshakes
//! in flight, each then served by its own task until the swarm stops.
//!
//! A scenario describes one connection as a [`Member`]: how to open the
//! `index`-th connection, and what to do with it once open. [`Swarm::open`]
//! starts every member, lets at most `concurrency` of them handshake at once,
//! and reports how the opening went ([`Opened`]): how many succeeded, how
//! long it took, and the latency of each handshake. [`Swarm::stop`] ends
//! every task (their sockets are reset) and reports those the hub closed
//! before that.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

use crate::net::Socket;
use crate::raw::Ended;
use crate::stats::LatencySummary;

/// Longest wait for every task to end after [`Swarm::stop`].
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Failure reasons listed per kind before the rest only count.
const MAX_REASON_KINDS: usize = 8;

/// One kind of connection in a swarm.
#[async_trait::async_trait]
pub(crate) trait Member: Send + Sync + 'static {
    /// Opens connection `index` and completes its handshake.
    async fn connect(&self, index: usize) -> anyhow::Result<Socket>;

    /// Uses the open connection until `stop`, or until it ends by itself.
    async fn serve(&self, index: usize, socket: Socket, stop: CancellationToken) -> Ended;
}

/// How opening a swarm went.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct Opened {
    /// Connections asked for.
    pub(crate) count: usize,
    /// Handshakes in flight at once, at most.
    pub(crate) concurrency: usize,
    /// Connections that completed their handshake.
    pub(crate) ok: usize,
    /// Connections that did not.
    pub(crate) failed: usize,
    /// Failures by reason.
    pub(crate) failures: BTreeMap<String, usize>,
    /// From the first dial to the last handshake's end.
    pub(crate) elapsed_s: f64,
    /// Completed handshakes per second of `elapsed_s`.
    pub(crate) handshakes_per_s: f64,
    /// Time of each handshake, from its dial (after waiting for its turn).
    pub(crate) handshake_ms: Option<LatencySummary>,
}

/// The running tasks of a swarm.
pub(crate) struct Swarm {
    stop: CancellationToken,
    tasks: JoinSet<Ended>,
}

impl Swarm {
    /// Opens `count` connections of `member`, `concurrency` handshakes at a
    /// time, and waits (at most `limit`) until each has succeeded or failed.
    pub(crate) async fn open(
        member: Arc<dyn Member>,
        count: usize,
        concurrency: usize,
        limit: Duration,
    ) -> (Self, Opened) {
        let stop = CancellationToken::new();
        let permits = Arc::new(Semaphore::new(concurrency.max(1)));
        // Unbounded, but each task sends exactly one outcome.
        let (outcome_tx, mut outcome_rx) = mpsc::unbounded_channel();
        let mut tasks = JoinSet::new();
        let started = Instant::now();
        for index in 0..count {
            let (member, stop, permits, outcome_tx) = (
                member.clone(),
                stop.clone(),
                permits.clone(),
                outcome_tx.clone(),
            );
            tasks.spawn(async move {
                let permit = permits.acquire_owned().await;
                let dialed = Instant::now();
                let connected = member.connect(index).await;
                let done = Instant::now();
                drop(permit);
                match connected {
                    Ok(socket) => {
                        let _ = outcome_tx.send(Ok((done - dialed, done)));
                        member.serve(index, socket, stop).await
                    }
                    Err(e) => {
                        let reason = format!("{e:#}");
                        let _ = outcome_tx.send(Err(reason.clone()));
                        Ended::Closed(reason)
                    }
                }
            });
        }
        drop(outcome_tx);
        let opened = tally(&mut outcome_rx, count, concurrency, started, limit).await;
        (Self { stop, tasks }, opened)
    }

    /// Stops every connection and returns why the others had already ended
    /// (closed by the hub, failed), by reason.
    pub(crate) async fn stop(mut self) -> BTreeMap<String, usize> {
        self.stop.cancel();
        let mut closed = BTreeMap::new();
        let joined = timeout(STOP_TIMEOUT, async {
            while let Some(ended) = self.tasks.join_next().await {
                match ended {
                    Ok(Ended::Stopped) => {}
                    Ok(Ended::Closed(reason)) => count_reason(&mut closed, reason),
                    Err(e) => count_reason(&mut closed, format!("task failed: {e}")),
                }
            }
        })
        .await;
        if joined.is_err() {
            tracing::warn!(
                "{} connections did not stop within {STOP_TIMEOUT:?}; aborting them",
                self.tasks.len()
            );
            self.tasks.abort_all();
        }
        closed
    }
}

/// How one handshake went: its latency and when it ended, or why it failed.
pub(crate) type Outcome = Result<(Duration, Instant), String>;

/// Collects `count` outcomes (at most until `limit`) of handshakes that
/// started at `started`, `concurrency` at a time.
pub(crate) async fn tally(
    outcomes: &mut mpsc::UnboundedReceiver<Outcome>,
    count: usize,
    concurrency: usize,
    started: Instant,
    limit: Duration,
) -> Opened {
    let mut latencies = Vec::with_capacity(count);
    let mut failures = BTreeMap::new();
    let mut last = started;
    let collecting = async {
        while latencies.len() + failures.values().sum::<usize>() < count {
            match outcomes.recv().await {
                Some(Ok((latency, at))) => {
                    latencies.push(latency);
                    last = last.max(at);
                }
                Some(Err(reason)) => count_reason(&mut failures, reason),
                None => break,
            }
        }
    };
    let _ = timeout(limit, collecting).await;
    let ok = latencies.len();
    let mut failed: usize = failures.values().sum();
    if ok + failed < count {
        let missing = count - ok - failed;
        failed += missing;
        let reason = format!("no handshake within {}", humantime::format_duration(limit));
        *failures.entry(reason).or_default() += missing;
    }
    let elapsed = (last - started).as_secs_f64();
    Opened {
        count,
        concurrency,
        ok,
        failed,
        failures,
        elapsed_s: elapsed,
        handshakes_per_s: ok as f64 / elapsed.max(f64::EPSILON),
        handshake_ms: LatencySummary::of(latencies),
    }
}

/// Counts `reason`, folding new kinds into "other" past [`MAX_REASON_KINDS`].
pub(crate) fn count_reason(reasons: &mut BTreeMap<String, usize>, reason: String) {
    let key = match reasons.contains_key(&reason) || reasons.len() < MAX_REASON_KINDS {
        true => reason,
        false => "other reasons".to_owned(),
    };
    *reasons.entry(key).or_default() += 1;
}

/// The failure of a swarm that did not open completely, for errors.
pub(crate) fn incomplete(opened: &Opened) -> anyhow::Error {
    let first = opened
        .failures
        .iter()
        .next()
        .map(|(reason, count)| format!("{count}x {reason}"))
        .unwrap_or_default();
    anyhow!(
        "{} of {} connections failed to open ({first})",
        opened.failed,
        opened.count
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_folded_past_the_limit() {
        let mut reasons = BTreeMap::new();
        for i in 0..MAX_REASON_KINDS + 3 {
            count_reason(&mut reasons, format!("reason {i}"));
        }
        count_reason(&mut reasons, "reason 0".to_owned());
        assert_eq!(reasons.len(), MAX_REASON_KINDS + 1);
        assert_eq!(reasons["other reasons"], 3);
        assert_eq!(reasons["reason 0"], 2);
    }
}
