//! The round-trip scenario: client → hub → agent → hub → client.
//!
//! One sample is the time from sending `run.create` (with `subscribe`) to
//! reading the run's terminal `run.status` on the event stream. Two kinds of
//! modes run on one client connection, one after the other:
//! - **fixed rate** — open loop: request `i` is sent at `start + i / rate`
//!   whatever happened to earlier ones, with at most `in_flight` runs in
//!   flight; a send due while the cap is reached is skipped and counted;
//! - **max** — closed loop, once per concurrency of the sweep: that many
//!   workers each send the next request as soon as their previous one ended.
//!
//! A run accepted by the hub that shows no terminal status within
//! [`RUN_TIMEOUT`] is **stuck**: counted apart from the errors (a request the
//! hub refused, or a run that ended other than `completed`). Each mode also
//! records the hub's and the generator's CPU per completed run.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use muster_client::{Client, ClientError, RunRequest};
use muster_proto::types::CommandSpec;
use muster_proto::{AgentName, RunId, RunState};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until, timeout};

use crate::report::{ModeKind, ModeReport};
use crate::resources::{Meter, OpUnit};
use crate::sim::NOOP_PROGRAM;
use crate::stats::LatencySummary;
use crate::waiters::Waiters;

/// Longest wait for one run's terminal status after `run.accepted`; a run
/// past it is stuck.
const RUN_TIMEOUT: Duration = Duration::from_secs(10);

/// Ids of stuck runs kept per mode, for looking them up on the hub.
const MAX_STUCK_IDS: usize = 10;

/// What the round-trip scenario does.
#[derive(Clone, Debug)]
pub(crate) struct RoundtripPlan {
    /// Fixed rates to run, in requests per second, in order.
    pub(crate) rates: Vec<u32>,
    /// Length of each fixed-rate mode.
    pub(crate) duration: Duration,
    /// Length of each max mode; zero skips them.
    pub(crate) max_duration: Duration,
    /// Most runs in flight at once in the fixed-rate modes.
    pub(crate) in_flight: usize,
    /// Workers of each max mode, in order.
    pub(crate) concurrency: Vec<usize>,
}

impl RoundtripPlan {
    /// Total scheduled time of every mode, with the wait for the last runs.
    pub(crate) fn budget(&self) -> Duration {
        let modes = self.rates.len() + self.max_modes();
        self.duration * self.rates.len() as u32
            + self.max_duration * self.max_modes() as u32
            + RUN_TIMEOUT * modes as u32
    }

    fn max_modes(&self) -> usize {
        match self.max_duration.is_zero() {
            true => 0,
            false => self.concurrency.len(),
        }
    }
}

/// Runs every mode of `plan` against `agent` on a fresh connection.
///
/// A connection that closes half-way ends the scenario: the current mode
/// reports it as an error and later modes are skipped.
pub(crate) async fn run(
    hub_url: &str,
    token: &str,
    agent: &AgentName,
    plan: &RoundtripPlan,
    hub_pid: Option<u32>,
) -> anyhow::Result<Vec<ModeReport>> {
    let (client, events) = Client::connect(hub_url, token)
        .await
        .context("connecting the round-trip client")?;
    let (waiters, drain) = Waiters::spawn(events);
    let bench = Arc::new(Bench {
        client: client.clone(),
        waiters,
        request: noop_request(agent),
        hub_pid,
    });
    let mut reports = Vec::new();
    for &rate in &plan.rates {
        reports.push(bench.fixed_rate(rate, plan.duration, plan.in_flight).await);
        if bench.waiters.closed().is_some() {
            break;
        }
    }
    for &concurrency in plan.concurrency.iter().take(plan.max_modes()) {
        if bench.waiters.closed().is_some() {
            break;
        }
        reports.push(bench.closed_loop(plan.max_duration, concurrency).await);
    }
    client.close().await;
    drain.abort();
    Ok(reports)
}

fn noop_request(agent: &AgentName) -> RunRequest {
    RunRequest::new(
        agent.clone(),
        CommandSpec::Argv(vec![NOOP_PROGRAM.to_owned()]),
    )
}

/// What every round trip shares.
struct Bench {
    client: Client,
    waiters: Waiters,
    request: RunRequest,
    hub_pid: Option<u32>,
}

impl Bench {
    async fn fixed_rate(self: &Arc<Self>, rate: u32, duration: Duration, cap: usize) -> ModeReport {
        let total = (f64::from(rate) * duration.as_secs_f64()).round() as u64;
        let permits = Arc::new(Semaphore::new(cap));
        let tally = Arc::new(Tally::default());
        let mut tasks = JoinSet::new();
        let (mut sent, mut skipped) = (0, 0);
        let meter = Meter::start(self.hub_pid);
        let start = Instant::now();
        for i in 0..total {
            sleep_until(start + Duration::from_secs_f64(i as f64 / f64::from(rate))).await;
            match permits.clone().try_acquire_owned() {
                Ok(permit) => {
                    sent += 1;
                    tasks.spawn(self.clone().recorded(tally.clone(), permit));
                }
                Err(_) => skipped += 1,
            }
            while tasks.try_join_next().is_some() {}
            if self.waiters.closed().is_some() {
                break;
            }
        }
        while tasks.join_next().await.is_some() {}
        let mut report = tally.report(ModeKind::Rate, cap, duration, start, sent, &meter);
        report.target_rate = Some(rate);
        report.skipped = skipped;
        report
    }

    async fn closed_loop(self: &Arc<Self>, duration: Duration, concurrency: usize) -> ModeReport {
        let tally = Arc::new(Tally::default());
        let sent = Arc::new(AtomicU64::new(0));
        let meter = Meter::start(self.hub_pid);
        let start = Instant::now();
        let end = start + duration;
        let mut workers = JoinSet::new();
        for _ in 0..concurrency {
            let (bench, tally, sent) = (self.clone(), tally.clone(), sent.clone());
            workers.spawn(async move {
                while Instant::now() < end {
                    sent.fetch_add(1, Ordering::Relaxed);
                    let failed = tally.record(bench.round_trip().await);
                    if failed && bench.waiters.closed().is_some() {
                        break;
                    }
                }
            });
        }
        while workers.join_next().await.is_some() {}
        let sent = sent.load(Ordering::Relaxed);
        tally.report(ModeKind::Max, concurrency, duration, start, sent, &meter)
    }

    /// One round trip, holding `permit` until it is over.
    async fn recorded(self: Arc<Self>, tally: Arc<Tally>, permit: OwnedSemaphorePermit) {
        tally.record(self.round_trip().await);
        drop(permit);
    }

    /// Creates a run and waits for its terminal status; the latency, or why it failed.
    async fn round_trip(&self) -> Result<Duration, Failure> {
        let sent = Instant::now();
        let accepted = self
            .client
            .create_run(self.request.clone(), true)
            .await
            .map_err(|e| Failure::Error(error_kind(&e)))?;
        let run = accepted.run.id;
        let finish = match timeout(RUN_TIMEOUT, self.waiters.claim(run)).await {
            Ok(Ok(finish)) => finish,
            Ok(Err(_)) => return Err(Failure::Stuck(closed_kind(&self.waiters), run)),
            Err(_) => {
                self.waiters.forget(run);
                let kind = format!("no terminal status within {RUN_TIMEOUT:?}");
                return Err(Failure::Stuck(kind, run));
            }
        };
        match finish.state {
            RunState::Completed => Ok(finish.at.saturating_duration_since(sent)),
            other => Err(Failure::Error(format!("run ended {other}"))),
        }
    }
}

/// Why a round trip did not complete.
enum Failure {
    /// The request failed, or the run ended other than `completed`.
    Error(String),
    /// The run was accepted but no terminal status arrived: stuck.
    Stuck(String, RunId),
}

/// A short, groupable description of a failed request.
fn error_kind(error: &ClientError) -> String {
    match error {
        ClientError::Hub(data) => data.code.to_string(),
        ClientError::Closed(reason) => format!("connection closed: {reason}"),
        other => other.to_string(),
    }
}

fn closed_kind(waiters: &Waiters) -> String {
    let reason = waiters.closed();
    format!(
        "connection closed: {}",
        reason.as_deref().unwrap_or("unknown reason")
    )
}

/// Outcomes of one mode, shared by its tasks.
#[derive(Default)]
struct Tally {
    /// A std `Mutex`: held only to push a sample, never across an `.await`.
    inner: Mutex<TallyInner>,
}

#[derive(Default)]
struct TallyInner {
    latencies: Vec<Duration>,
    errors: BTreeMap<String, u64>,
    stuck: BTreeMap<String, u64>,
    stuck_runs: Vec<String>,
    /// When the last run completed; a stuck run's wait does not stretch the
    /// mode's throughput.
    last_completed: Option<Instant>,
}

impl Tally {
    /// Records one outcome; true if it was not a success.
    fn record(&self, outcome: Result<Duration, Failure>) -> bool {
        let mut inner = self.inner.lock().expect("tally lock poisoned");
        let (kinds, kind) = match outcome {
            Ok(latency) => {
                inner.latencies.push(latency);
                inner.last_completed = Some(Instant::now());
                return false;
            }
            Err(Failure::Error(kind)) => (&mut inner.errors, kind),
            Err(Failure::Stuck(kind, run)) => {
                if inner.stuck_runs.len() < MAX_STUCK_IDS {
                    inner.stuck_runs.push(run.to_string());
                }
                (&mut inner.stuck, kind)
            }
        };
        if !kinds.contains_key(&kind) {
            tracing::warn!("round trip failed: {kind}");
        }
        *kinds.entry(kind).or_default() += 1;
        true
    }

    fn report(
        &self,
        kind: ModeKind,
        concurrency: usize,
        duration: Duration,
        start: Instant,
        sent: u64,
        meter: &Meter,
    ) -> ModeReport {
        let inner = std::mem::take(&mut *self.inner.lock().expect("tally lock poisoned"));
        let elapsed = inner.last_completed.unwrap_or_else(Instant::now) - start;
        let completed = inner.latencies.len() as u64;
        let resources = meter.finish(completed as f64, OpUnit::Run);
        ModeReport {
            kind,
            target_rate: None,
            concurrency,
            duration_s: duration.as_secs_f64(),
            elapsed_s: elapsed.as_secs_f64(),
            sent,
            skipped: 0,
            completed,
            errors: inner.errors.values().sum(),
            error_kinds: inner.errors,
            stuck: inner.stuck.values().sum(),
            stuck_kinds: inner.stuck,
            stuck_runs: inner.stuck_runs,
            throughput_per_s: completed as f64 / elapsed.as_secs_f64().max(f64::EPSILON),
            latency_ms: LatencySummary::of(inner.latencies),
            resources,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stuck_runs_are_counted_apart_from_errors() {
        let tally = Tally::default();
        let start = Instant::now();
        assert!(!tally.record(Ok(Duration::from_millis(3))));
        assert!(tally.record(Err(Failure::Error("QUEUE_FULL".to_owned()))));
        for _ in 0..MAX_STUCK_IDS + 2 {
            let kind = "no terminal status".to_owned();
            assert!(tally.record(Err(Failure::Stuck(kind, RunId::generate()))));
        }
        let meter = Meter::start(None);
        let report = tally.report(ModeKind::Max, 4, Duration::from_secs(1), start, 14, &meter);
        assert_eq!((report.completed, report.errors, report.stuck), (1, 1, 12));
        assert_eq!(report.error_kinds["QUEUE_FULL"], 1);
        assert_eq!(report.stuck_kinds["no terminal status"], 12);
        assert_eq!(report.stuck_runs.len(), MAX_STUCK_IDS);
        assert!(report.latency_ms.is_some_and(|l| l.count == 1));
    }
}
