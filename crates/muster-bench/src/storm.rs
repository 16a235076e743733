//! The storm scenario (S6): every agent drops at once and reconnects.
//!
//! Registers `count` sim agents labelled `sim=true,bench=storm`, connects them
//! all as raw agents (source addresses spread, bounded handshakes) and waits
//! until the hub's paged list shows exactly them online. A client then
//! watches `fleet`. At one instant every agent connection is reset (no close
//! handshake) and each agent reconnects at once, at most `concurrency`
//! handshakes in flight. Measured from the drop: the generator's reconnect
//! handshakes, and, from the hub's own view, the time until the watcher has
//! seen every agent back online (`watch.rs`). Finally a full paged
//! `agent.list` for `bench=storm` must list exactly the fleet, each agent
//! once and online ("presence exact").

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail};
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

use crate::control::Control;
use crate::ctx::Ctx;
use crate::fleet::{AgentMember, AgentMode, Fleet, Presence};
use crate::net::{Buffers, Socket};
use crate::raw::{self, Ended};
use crate::resources::{OpUnit, Resources};
use crate::swarm::{self, Member, Opened, Outcome, Swarm};
use crate::watch::{HubView, Watcher};

/// The label value of the scenario's agents (`bench=storm`).
const SCENARIO: &str = "storm";

/// Longest wait for the hub's list to show the fleet online before the drop.
const PRESENCE_TIMEOUT: Duration = Duration::from_secs(30);

/// What the storm scenario does.
#[derive(Clone, Debug)]
pub(crate) struct StormPlan {
    /// Agents.
    pub(crate) count: usize,
    /// Handshakes in flight at once, before and after the drop.
    pub(crate) concurrency: usize,
    /// Bound on the whole scenario, registration included.
    pub(crate) timeout: Duration,
}

/// Figures of the storm scenario. Times after the drop are from the drop.
#[derive(Debug, Serialize)]
pub(crate) struct StormReport {
    /// Agents.
    pub(crate) agents: usize,
    /// Registering them.
    pub(crate) registered_s: f64,
    /// The first connection of every agent.
    pub(crate) opened: Opened,
    /// Reconnect handshakes after the drop, as this generator saw them.
    pub(crate) reconnected: Opened,
    /// The fleet as the watching client saw it after the drop.
    pub(crate) hub_view: HubView,
    /// The hub's paged list at the end.
    pub(crate) presence: Presence,
    /// Connections that ended without being dropped on purpose, by reason.
    pub(crate) closed_early: BTreeMap<String, usize>,
    /// Hub and generator CPU from the drop to full recovery, per reconnect.
    pub(crate) resources: Resources,
}

impl StormReport {
    /// Failed reconnects, agents never seen back, early closes, an inexact list.
    pub(crate) fn errors(&self) -> usize {
        self.reconnected.failed
            + self.hub_view.not_back
            + usize::from(self.hub_view.watcher_closed.is_some())
            + self.closed_early.values().sum::<usize>()
            + usize::from(!self.presence.exact)
    }
}

/// Runs the scenario.
pub(crate) async fn run(ctx: &Ctx, plan: &StormPlan) -> anyhow::Result<StormReport> {
    let (control, _) = Control::connect(&ctx.hub, ctx.token(), false).await?;
    let measured = timeout(plan.timeout, measure(ctx, plan, &control)).await;
    control.close();
    measured.map_err(|_| {
        anyhow!(
            "the storm scenario did not finish within {}",
            humantime::format_duration(plan.timeout)
        )
    })?
}

async fn measure(ctx: &Ctx, plan: &StormPlan, control: &Control) -> anyhow::Result<StormReport> {
    let fleet = Fleet::register(control, &ctx.agent_base, SCENARIO, plan.count).await?;
    let (reconnect_tx, mut reconnect_rx) = mpsc::unbounded_channel();
    let member = Arc::new(StormMember {
        agent: AgentMember {
            hub: ctx.hub.clone(),
            identities: fleet.identities.clone(),
            labels: fleet.labels.clone(),
            mode: AgentMode::Idle,
        },
        drop: CancellationToken::new(),
        permits: Arc::new(Semaphore::new(plan.concurrency.max(1))),
        reconnects: reconnect_tx,
    });
    let (swarm, opened) =
        Swarm::open(member.clone(), plan.count, plan.concurrency, plan.timeout).await;
    if opened.failed > 0 {
        swarm.stop().await;
        return Err(swarm::incomplete(&opened));
    }
    let before = fleet.await_online(control, PRESENCE_TIMEOUT).await?;
    if !before.exact {
        swarm.stop().await;
        bail!(
            "before the drop the hub lists {}",
            before.describe(plan.count)
        );
    }
    let socket = raw::connect_client(&ctx.hub, ctx.token(), None, Buffers::Busy).await?;
    let watcher = Watcher::spawn(socket, &fleet.names());

    let meter = ctx.meter();
    let dropped_ms = unix_ms();
    let dropped = Instant::now();
    watcher.arm(dropped_ms, dropped);
    member.drop.cancel();
    let reconnected = swarm::tally(
        &mut reconnect_rx,
        plan.count,
        plan.concurrency,
        dropped,
        plan.timeout,
    )
    .await;
    watcher.recovered(plan.timeout).await;
    let resources = meter.finish(reconnected.ok as f64, OpUnit::Handshake);
    let presence = Presence::check(control, &fleet.selector, &fleet.names()).await?;
    let hub_view = watcher.stop().await;
    let closed_early = swarm.stop().await;
    Ok(StormReport {
        agents: plan.count,
        registered_s: fleet.registered_s,
        opened,
        reconnected,
        hub_view,
        presence,
        closed_early,
        resources,
    })
}

/// Milliseconds since the Unix epoch, the clock of `connected_since_ms`.
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// An agent that, when `drop` fires, resets its connection and reconnects
/// at once (waiting for one of `permits`), reporting the reconnect.
struct StormMember {
    agent: AgentMember,
    drop: CancellationToken,
    permits: Arc<Semaphore>,
    reconnects: mpsc::UnboundedSender<Outcome>,
}

#[async_trait::async_trait]
impl Member for StormMember {
    async fn connect(&self, index: usize) -> anyhow::Result<Socket> {
        self.agent.connect(index).await
    }

    async fn serve(&self, index: usize, socket: Socket, stop: CancellationToken) -> Ended {
        let dropped = tokio::select! {
            () = stop.cancelled() => return Ended::Stopped,
            ended = raw::idle(socket, self.drop.clone(), true) => ended,
        };
        if let Ended::Closed(reason) = dropped {
            let _ = self
                .reconnects
                .send(Err(format!("closed before the drop: {reason}")));
            return Ended::Closed(reason);
        }
        let reconnected = {
            let _permit = self.permits.acquire().await;
            let dialed = Instant::now();
            self.agent
                .connect(index)
                .await
                .map(|socket| (socket, dialed.elapsed(), Instant::now()))
        };
        match reconnected {
            Ok((socket, latency, at)) => {
                let _ = self.reconnects.send(Ok((latency, at)));
                raw::idle(socket, stop, true).await
            }
            Err(e) => {
                let reason = format!("reconnecting: {e:#}");
                let _ = self.reconnects.send(Err(reason.clone()));
                Ended::Closed(reason)
            }
        }
    }
}
