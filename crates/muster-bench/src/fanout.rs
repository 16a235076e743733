//! The fan-out scenario (S4): one run's output delivered to many subscribers.
//!
//! One raw sim agent (`emitter.rs`, labelled `sim=true,bench=fanout`) and
//! `subscribers` raw client connections (`subscriber.rs`) are opened once.
//! Then, for each rate of the sweep, a round: the control connection creates
//! a run on the agent, every subscriber subscribes to `run:<id>`, and the
//! agent emits `rate` chunks per second for the round's duration, each
//! payload starting with its send time. Offered deliveries per second are
//! `rate × subscribers`. Measured: the deliveries received across all
//! subscribers per second (from the first chunk sent to the last delivery),
//! end-to-end latency percentiles from the send times, and whether every
//! subscriber received every chunk once and in order; gaps, duplicates,
//! missing chunks, closed subscribers (4008 slow consumer among them) and
//! subscribers that never finished are errors. Hub CPU is per delivery.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use muster_proto::messages::RunCreate;
use muster_proto::types::{CommandSpec, RunRequest};
use muster_proto::{AgentName, ClientToHub, HubToClient, RunId};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::time::timeout;

use crate::control::Control;
use crate::ctx::Ctx;
use crate::emitter::{Emitted, Emitter};
use crate::fleet::Fleet;
use crate::histogram::Histogram;
use crate::raw;
use crate::resources::{OpUnit, Resources};
use crate::stats::LatencySummary;
use crate::subscriber::{Report, Round, RoundEnd, SubscriberMember, Tally};
use crate::swarm::{self, Opened, Swarm, count_reason};

/// The label value of the scenario's agent (`bench=fanout`).
const SCENARIO: &str = "fanout";

/// The program name of the emitting run, for people reading the run list.
const FANOUT_PROGRAM: &str = "bench-fanout";

/// Runs the fan-out agent announces it executes at once.
const AGENT_MAX_CONCURRENCY: u32 = 4;

/// Longest wait for every subscriber to confirm its subscription.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest wait, after the last chunk is sent, for every subscriber to read
/// the run's end.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest wait for the hub to acknowledge the run's end.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// What the fan-out scenario does.
#[derive(Clone, Debug)]
pub(crate) struct FanoutPlan {
    /// Subscriber connections.
    pub(crate) subscribers: usize,
    /// Chunks per second of each round, in order.
    pub(crate) rates: Vec<u32>,
    /// Length of each round's emission.
    pub(crate) duration: Duration,
    /// Payload bytes per chunk (the send time takes the first 8).
    pub(crate) chunk_bytes: usize,
    /// Subscriber handshakes in flight at once.
    pub(crate) concurrency: usize,
}

impl FanoutPlan {
    /// Longest the scenario may take: opening, then every round with its drain.
    pub(crate) fn budget(&self) -> Duration {
        let round = self.duration + SUBSCRIBE_TIMEOUT + DRAIN_TIMEOUT + ACK_TIMEOUT;
        raw::ACK_TIMEOUT * 2 + round * self.rates.len() as u32
    }
}

/// Figures of the fan-out scenario.
#[derive(Debug, Serialize)]
pub(crate) struct FanoutReport {
    /// Opening the subscriber connections.
    pub(crate) opened: Opened,
    /// One entry per rate.
    pub(crate) rounds: Vec<RoundReport>,
}

/// Figures of one round.
#[derive(Debug, Serialize)]
pub(crate) struct RoundReport {
    /// The run.
    pub(crate) run: String,
    /// Chunks per second asked of the agent.
    pub(crate) rate: u32,
    /// Subscribers that took part.
    pub(crate) subscribers: usize,
    /// `rate × subscribers`.
    pub(crate) offered_per_s: f64,
    /// Chunks the agent sent.
    pub(crate) chunks: u64,
    /// From the first chunk sent to the last.
    pub(crate) emit_s: f64,
    /// `chunks × subscribers`.
    pub(crate) expected: u64,
    /// Deliveries received, across subscribers.
    pub(crate) received: u64,
    /// From the first chunk sent to the last delivery received.
    pub(crate) delivery_s: f64,
    /// `received / delivery_s`.
    pub(crate) delivered_per_s: f64,
    /// End-to-end latency of the deliveries.
    pub(crate) latency_ms: Option<LatencySummary>,
    /// Subscribers that received every chunk once, in order, and the run's end.
    pub(crate) complete: usize,
    /// Chunks skipped inside a subscriber's sequence.
    pub(crate) gaps: u64,
    /// Deliveries below a subscriber's next expected `seq`.
    pub(crate) duplicates: u64,
    /// Chunks a subscriber never received past its last one.
    pub(crate) missing_tail: u64,
    /// Subscribers that did not complete the round, by reason.
    pub(crate) failures: BTreeMap<String, usize>,
    /// Whether the hub acknowledged the run's end to the agent.
    pub(crate) run_acknowledged: bool,
    /// Hub and generator CPU over the round, per delivery.
    pub(crate) resources: Resources,
}

impl RoundReport {
    /// Incomplete subscribers, plus an unacknowledged run.
    pub(crate) fn errors(&self) -> usize {
        (self.subscribers - self.complete) + usize::from(!self.run_acknowledged)
    }
}

/// Runs the scenario.
pub(crate) async fn run(ctx: &Ctx, plan: &FanoutPlan) -> anyhow::Result<FanoutReport> {
    let (control, _) = Control::connect(&ctx.hub, ctx.token(), false).await?;
    let fleet = Fleet::register(&control, &ctx.agent_base, SCENARIO, 1).await?;
    let identity = fleet.identities[0].clone();
    let socket = raw::connect_agent(
        &ctx.hub,
        &identity,
        &fleet.labels,
        AGENT_MAX_CONCURRENCY,
        None,
    )
    .await
    .context("connecting the fan-out agent")?;
    let (round_tx, rounds) = watch::channel(None);
    let (report_tx, reports) = mpsc::unbounded_channel();
    let member = Arc::new(SubscriberMember {
        hub: ctx.hub.clone(),
        token: ctx.token().to_owned(),
        rounds,
        reports: report_tx,
    });
    let limit = raw::ACK_TIMEOUT * 2;
    let (swarm, opened) = Swarm::open(member, plan.subscribers, plan.concurrency, limit).await;
    let mut rig = Rig {
        control,
        emitter: Emitter::spawn(socket),
        agent: identity.name,
        rounds: round_tx,
        reports,
    };
    let mut result = match opened.failed {
        0 => Ok(Vec::new()),
        _ => Err(swarm::incomplete(&opened)),
    };
    for (number, &rate) in (1..).zip(&plan.rates) {
        let Ok(rounds) = &mut result else {
            break;
        };
        match rig.round(ctx, plan, number, rate).await {
            Ok(report) => rounds.push(report),
            Err(e) => result = Err(e),
        }
    }
    swarm.stop().await;
    rig.emitter.stop();
    rig.control.close();
    Ok(FanoutReport {
        opened,
        rounds: result?,
    })
}

/// What every round uses.
struct Rig {
    control: Control,
    emitter: Emitter,
    agent: AgentName,
    rounds: watch::Sender<Option<Round>>,
    reports: mpsc::UnboundedReceiver<Report>,
}

impl Rig {
    /// Round `number`, at `rate` chunks per second.
    async fn round(
        &mut self,
        ctx: &Ctx,
        plan: &FanoutPlan,
        number: u64,
        rate: u32,
    ) -> anyhow::Result<RoundReport> {
        let run = self.start_run().await?;
        self.rounds.send_replace(Some(Round { number, run }));
        let mut tallies = Vec::with_capacity(plan.subscribers);
        let mut subscribed = 0;
        let reports = &mut self.reports;
        let waiting = async {
            while subscribed + tallies.len() < plan.subscribers {
                match reports.recv().await {
                    Some(Report::Subscribed(n)) if n == number => subscribed += 1,
                    Some(Report::Done(n, tally)) if n == number => tallies.push(tally),
                    Some(_) => {}
                    None => break,
                }
            }
        };
        let _ = timeout(SUBSCRIBE_TIMEOUT, waiting).await;
        let early = tallies.len();

        let meter = ctx.meter();
        let chunks = (f64::from(rate) * plan.duration.as_secs_f64())
            .round()
            .max(1.0) as u64;
        let (emitted, acknowledged) = self
            .emitter
            .emit(run, rate, chunks, plan.chunk_bytes)
            .await?;
        let draining = async {
            while tallies.len() < plan.subscribers {
                match reports.recv().await {
                    Some(Report::Done(n, tally)) if n == number => tallies.push(tally),
                    Some(_) => {}
                    None => break,
                }
            }
        };
        let _ = timeout(DRAIN_TIMEOUT, draining).await;
        let received: u64 = tallies.iter().map(|t| t.received).sum();
        let resources = meter.finish(received as f64, OpUnit::Delivery);
        let acknowledged = timeout(ACK_TIMEOUT, acknowledged)
            .await
            .is_ok_and(|r| r.is_ok());
        let confirmed = subscribed + early;
        let mut report = summarize(
            plan,
            (run, rate, confirmed),
            &emitted,
            &tallies,
            acknowledged,
            resources,
        );
        let unconfirmed = plan.subscribers.saturating_sub(subscribed + early);
        if unconfirmed > 0 {
            let reason = format!("no subscription confirmed within {SUBSCRIBE_TIMEOUT:?}");
            *report.failures.entry(reason).or_default() += unconfirmed;
        }
        Ok(report)
    }

    /// Creates the round's run on the agent and waits until the agent has it.
    async fn start_run(&mut self) -> anyhow::Result<RunId> {
        let command = CommandSpec::Argv(vec![FANOUT_PROGRAM.to_owned()]);
        let create = ClientToHub::RunCreate(RunCreate {
            request: RunRequest::new(self.agent.clone(), command),
            subscribe: false,
        });
        let run = match self
            .control
            .request(create)
            .await
            .context("creating the fan-out run")?
        {
            HubToClient::RunAccepted(accepted) => accepted.run.id,
            other => bail!("expected run.accepted, got {other:?}"),
        };
        let started = timeout(raw::ACK_TIMEOUT, self.emitter.next_run())
            .await
            .map_err(|_| anyhow!("the hub did not start run {run} on the fan-out agent"))??;
        if started != run {
            bail!("the fan-out agent was given run {started}, not {run}");
        }
        Ok(run)
    }
}

/// Aggregates the subscribers' tallies of one round.
/// `round` is the run, its rate, and how many subscribers took part (were
/// subscribed, or had already ended).
fn summarize(
    plan: &FanoutPlan,
    (run, rate, subscribed): (RunId, u32, usize),
    emitted: &Emitted,
    tallies: &[Box<Tally>],
    run_acknowledged: bool,
    resources: Resources,
) -> RoundReport {
    let subscribers = plan.subscribers;
    let mut latency = Histogram::default();
    let mut failures = BTreeMap::new();
    let (mut received, mut gaps, mut duplicates, mut missing_tail) = (0, 0, 0, 0);
    let mut complete = 0;
    let mut last = emitted.last;
    for tally in tallies {
        latency.merge(&tally.latency);
        received += tally.received;
        gaps += tally.gaps;
        duplicates += tally.duplicates;
        let tail = emitted.chunks.saturating_sub(tally.next_seq);
        missing_tail += tail;
        if let Some(at) = tally.last_at {
            last = last.max(at);
        }
        let problem = match &tally.end {
            RoundEnd::Terminal(state) if state != "completed" => {
                Some(format!("the run ended {state}"))
            }
            RoundEnd::Terminal(_) if tally.gaps + tally.duplicates + tail > 0 => {
                Some("gaps, duplicates or missing chunks".to_owned())
            }
            RoundEnd::Terminal(_) => None,
            RoundEnd::Refused(text) => Some(format!("subscribe refused: {text}")),
            RoundEnd::Closed(reason) => Some(reason.clone()),
        };
        match problem {
            Some(problem) => count_reason(&mut failures, problem),
            None => complete += 1,
        }
    }
    let unfinished = subscribed.saturating_sub(tallies.len());
    if unfinished > 0 {
        let reason = format!("no end of the run within {DRAIN_TIMEOUT:?} of the last chunk");
        *failures.entry(reason).or_default() += unfinished;
    }
    let delivery = last - emitted.first;
    RoundReport {
        run: run.to_string(),
        rate,
        subscribers,
        offered_per_s: f64::from(rate) * subscribers as f64,
        chunks: emitted.chunks,
        emit_s: (emitted.last - emitted.first).as_secs_f64(),
        expected: emitted.chunks * subscribers as u64,
        received,
        delivery_s: delivery.as_secs_f64(),
        delivered_per_s: received as f64 / delivery.as_secs_f64().max(f64::EPSILON),
        latency_ms: latency.summary(),
        complete,
        gaps,
        duplicates,
        missing_tail,
        failures,
        run_acknowledged,
        resources,
    }
}
