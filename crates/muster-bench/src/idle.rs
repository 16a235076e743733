//! The idle scenario (S1): many idle connections of one kind.
//!
//! Opens `count` raw connections, clients or agents, with at most
//! `concurrency` handshakes in flight, each from its own slice of source
//! addresses. A client's handshake ends with `connection.ack` and the first
//! `agent.list` page; an agent's (registered beforehand with the labels
//! `sim=true,bench=idle`, using its own token) with `connection.ack`, and the
//! hub's paged list must then show every agent online. Once all are open, the
//! connections sit idle, answering heartbeats, for a settle time; the hub's
//! resident memory is read then, and its growth since just before the first
//! connection is divided by the number of connections. Everything is bounded
//! by the plan's timeout; the connections are reset at the end.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use serde::Serialize;
use tokio::time::{sleep, timeout};
use tokio_util::sync::CancellationToken;

use crate::control::Control;
use crate::ctx::Ctx;
use crate::fleet::{AgentMember, AgentMode, Fleet, Presence};
use crate::net::{Buffers, HubAddr, Socket};
use crate::raw::{self, Ended};
use crate::resources::{OpUnit, Resources};
use crate::swarm::{Member, Opened, Swarm};

/// The label value of the scenario's agents (`bench=idle`).
const SCENARIO: &str = "idle";

/// Longest wait for the hub's list to show every idle agent online once
/// every handshake has completed.
const PRESENCE_TIMEOUT: Duration = Duration::from_secs(30);

/// Which endpoint the connections use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Kind {
    /// `/ws/client`, authenticated with the admin token.
    Client,
    /// `/ws/agent`, each a registered sim agent with its own token.
    Agent,
}

/// What the idle scenario does.
#[derive(Clone, Debug)]
pub(crate) struct IdlePlan {
    /// Which endpoint.
    pub(crate) kind: Kind,
    /// Connections to open.
    pub(crate) count: usize,
    /// Handshakes in flight at once.
    pub(crate) concurrency: usize,
    /// Idle time between the last handshake and reading the hub's memory.
    pub(crate) settle: Duration,
    /// Bound on the whole scenario, registration included.
    pub(crate) timeout: Duration,
}

/// Figures of the idle scenario.
#[derive(Debug, Serialize)]
pub(crate) struct IdleReport {
    /// Which endpoint.
    pub(crate) kind: Kind,
    /// Registering the agents (agents only).
    pub(crate) registered_s: Option<f64>,
    /// How opening went: counts, time, handshakes per second and latency.
    pub(crate) opened: Opened,
    /// The hub's list after the handshakes (agents only).
    pub(crate) presence: Option<Presence>,
    /// Idle time before the memory was read.
    pub(crate) settle_s: f64,
    /// The hub's resident memory just before the first connection, in KiB.
    pub(crate) hub_rss_before_kib: Option<u64>,
    /// The hub's resident memory with every connection open and settled, in KiB.
    pub(crate) hub_rss_open_kib: Option<u64>,
    /// (open − before) / connections opened, in KiB.
    pub(crate) hub_rss_per_connection_kib: Option<f64>,
    /// Connections that ended before the scenario stopped them, by reason.
    pub(crate) closed_early: BTreeMap<String, usize>,
    /// Hub and generator CPU while the connections opened, per handshake.
    pub(crate) resources: Resources,
}

impl IdleReport {
    /// Failed handshakes, early closes and missing agents.
    pub(crate) fn errors(&self) -> usize {
        self.opened.failed
            + self.closed_early.values().sum::<usize>()
            + self.presence.as_ref().map_or(0, |p| usize::from(!p.exact))
    }
}

/// Runs the scenario.
pub(crate) async fn run(ctx: &Ctx, plan: &IdlePlan) -> anyhow::Result<IdleReport> {
    let (control, _) = Control::connect(&ctx.hub, ctx.token(), false).await?;
    let measured = timeout(plan.timeout, measure(ctx, plan, &control)).await;
    control.close();
    measured.map_err(|_| {
        anyhow!(
            "the idle scenario did not finish within {}",
            humantime::format_duration(plan.timeout)
        )
    })?
}

async fn measure(ctx: &Ctx, plan: &IdlePlan, control: &Control) -> anyhow::Result<IdleReport> {
    let fleet = match plan.kind {
        Kind::Agent => Some(Fleet::register(control, &ctx.agent_base, SCENARIO, plan.count).await?),
        Kind::Client => None,
    };
    let member: Arc<dyn Member> = match &fleet {
        Some(fleet) => Arc::new(AgentMember {
            hub: ctx.hub.clone(),
            identities: fleet.identities.clone(),
            labels: fleet.labels.clone(),
            mode: AgentMode::Idle,
        }),
        None => Arc::new(ClientMember {
            hub: ctx.hub.clone(),
            token: ctx.token().to_owned(),
        }),
    };
    let meter = ctx.meter();
    let (swarm, opened) = Swarm::open(member, plan.count, plan.concurrency, plan.timeout).await;
    let resources = meter.finish(opened.ok as f64, OpUnit::Handshake);
    let presence = match &fleet {
        Some(fleet) => Some(fleet.await_online(control, PRESENCE_TIMEOUT).await?),
        None => None,
    };
    sleep(plan.settle).await;
    let rss_open = meter.hub_rss_now();
    let rss_before = resources.hub_rss_before_kib;
    let closed_early = swarm.stop().await;
    let per_connection = match (rss_before, rss_open, opened.ok) {
        (Some(before), Some(open), ok) if ok > 0 => Some((open as f64 - before as f64) / ok as f64),
        _ => None,
    };
    Ok(IdleReport {
        kind: plan.kind,
        registered_s: fleet.as_ref().map(|f| f.registered_s),
        opened,
        presence,
        settle_s: plan.settle.as_secs_f64(),
        hub_rss_before_kib: rss_before,
        hub_rss_open_kib: rss_open,
        hub_rss_per_connection_kib: per_connection,
        closed_early,
        resources,
    })
}

/// Idle clients: the admin token, connection `i` from the `i`-th source.
struct ClientMember {
    hub: HubAddr,
    token: String,
}

#[async_trait::async_trait]
impl Member for ClientMember {
    async fn connect(&self, index: usize) -> anyhow::Result<Socket> {
        raw::connect_client(
            &self.hub,
            &self.token,
            self.hub.source(index),
            Buffers::Idle,
        )
        .await
    }

    async fn serve(&self, _index: usize, socket: Socket, stop: CancellationToken) -> Ended {
        raw::idle(socket, stop, false).await
    }
}
