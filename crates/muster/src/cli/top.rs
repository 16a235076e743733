//! `muster top`: the fleet at a glance — every agent's status and latest
//! CPU, memory, disk and load — printed once, or redrawn live until Ctrl-C.
//!
//! The first sample of each agent is the last stored point of the past ten
//! minutes (`metrics.query`). Live mode also subscribes to `metrics:<name>` for
//! each agent, *before* querying so no sample falls between the two, and
//! follows `agent.status` on `fleet` (which every client connection receives),
//! watching new agents the same way. The screen is redrawn whole, at most once
//! per `--interval-ms`, and every second anyway so LAST SEEN keeps counting.
//!
//! The agent list is read whole, page by page, while the events that arrive
//! meanwhile are kept and applied after it. From then on the event receiver
//! is drained by the same loop that applies the loads' results, so the
//! connection never stalls behind unread events. A dropped
//! connection ends the command with an error; it does not reconnect.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use muster_client::{Client, ClientError, Event, MetricsSample};
use muster_proto::{AgentInfo, AgentName, ErrorCode, HubToClient};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

use super::cancel::Interrupts;
use super::fleet::{Fleet, Row};
use super::{HubConn, agent_error, output};

/// How far back the first sample of an agent is looked for.
const LOOKBACK_MS: u64 = 10 * 60 * 1000;

/// Redraw at least this often, so relative times stay true.
const AGE_REFRESH: Duration = Duration::from_secs(1);

/// Moves the cursor home and clears the screen.
const CLEAR_SCREEN: &str = "\x1b[H\x1b[2J";

/// Arguments of `muster top`.
#[derive(Debug, clap::Args)]
pub(crate) struct TopArgs {
    #[command(flatten)]
    conn: HubConn,
    /// Print the table once, without terminal escapes, and exit (with --json:
    /// an array of {agent, sample}).
    #[arg(long)]
    once: bool,
    /// Redraw at most this often, in milliseconds.
    #[arg(long, default_value_t = 250, value_name = "MS")]
    interval_ms: u64,
}

/// The newest sample of one agent, or why there is none, from a load task.
type Loaded = (AgentName, Result<Option<MetricsSample>, ClientError>);

/// Runs `muster top`.
pub(crate) async fn top(args: TopArgs, json: bool) -> anyhow::Result<ExitCode> {
    if json && !args.once {
        anyhow::bail!("--json needs --once: the live table has no JSON form");
    }
    if args.once {
        return once(&args.conn, json).await;
    }
    let mut interrupts = Interrupts::install()?;
    let interval = Duration::from_millis(args.interval_ms);
    tokio::select! {
        result = live(&args.conn, interval) => result,
        _ = interrupts.recv() => Ok(ExitCode::SUCCESS),
    }
}

/// `--once`: loads every agent's latest sample and prints the table or JSON.
async fn once(conn: &HubConn, json: bool) -> anyhow::Result<ExitCode> {
    let (client, events) = conn.connect().await?;
    // Nothing here reads events; with the receiver gone, none are queued.
    drop(events);
    let mut fleet = Fleet::new(client.agents().await?);
    let mut loads = JoinSet::new();
    for name in fleet.names() {
        loads.spawn(latest(client.clone(), name.clone(), false));
    }
    while let Some(loaded) = loads.join_next().await {
        apply(&mut fleet, loaded.context("loading samples")?)?;
    }
    client.close().await;
    if json {
        output::print_json(&fleet.rows().collect::<Vec<&Row>>())?;
    } else {
        output::print(&fleet.render(output::now_ms()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Live mode: keeps the table up to date and redraws it until the
/// connection fails (Ctrl-C is the caller's to handle).
async fn live(conn: &HubConn, interval: Duration) -> anyhow::Result<ExitCode> {
    let (client, mut events) = conn.connect().await?;
    let (agents, early) = read_agents(&client, &mut events).await?;
    let mut screen = Screen {
        client,
        fleet: Fleet::new(agents),
        loads: JoinSet::new(),
    };
    let names: Vec<AgentName> = screen.fleet.names().cloned().collect();
    for name in names {
        screen.watch(name);
    }
    for event in early {
        screen.on_event(Some(event))?;
    }
    screen.run(events, interval).await
}

/// Reads every page of the agent list, keeping the events that arrive
/// meanwhile (status changes the pages may predate): the connection never
/// stalls behind them, and none is lost.
async fn read_agents(
    client: &Client,
    events: &mut mpsc::Receiver<Event>,
) -> anyhow::Result<(Vec<AgentInfo>, Vec<Event>)> {
    let agents = client.agents();
    tokio::pin!(agents);
    let mut early = Vec::new();
    let mut open = true;
    loop {
        tokio::select! {
            agents = &mut agents => return Ok((agents?, early)),
            event = events.recv(), if open => match event {
                Some(event) => early.push(event),
                // The list request fails the same way; its error says why.
                None => open = false,
            },
        }
    }
}

/// The live table and what keeps it current.
struct Screen {
    client: Client,
    fleet: Fleet,
    /// One task per newly watched agent: subscribe, then load its latest sample.
    loads: JoinSet<Loaded>,
}

impl Screen {
    /// Applies events and loads as they come; redraws when something changed
    /// and `interval` has passed since the last drawing.
    async fn run(
        mut self,
        mut events: mpsc::Receiver<Event>,
        interval: Duration,
    ) -> anyhow::Result<ExitCode> {
        let mut refresh = tokio::time::interval(AGE_REFRESH);
        refresh.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // The first drawing waits one interval, for the loads to fill it in.
        let mut next_draw = Instant::now() + interval;
        let mut dirty = true;
        loop {
            tokio::select! {
                event = events.recv() => dirty |= self.on_event(event)?,
                Some(loaded) = self.loads.join_next() => {
                    dirty |= apply(&mut self.fleet, loaded.context("loading samples")?)?;
                }
                () = tokio::time::sleep_until(next_draw), if dirty => {
                    self.draw()?;
                    dirty = false;
                    next_draw = Instant::now() + interval;
                }
                _ = refresh.tick() => dirty = true,
            }
        }
    }

    /// Applies one event; returns whether the table changed.
    fn on_event(&mut self, event: Option<Event>) -> anyhow::Result<bool> {
        let msg = match event {
            Some(Event::Message(envelope)) => envelope.msg,
            Some(Event::Output(_)) => return Ok(false),
            Some(Event::Closed { reason, .. }) => {
                anyhow::bail!("connection to the hub closed: {reason}")
            }
            None => anyhow::bail!("connection to the hub closed"),
        };
        Ok(match msg {
            HubToClient::AgentStatus(envelope) => {
                let name = envelope.agent.name.clone();
                if self.fleet.update_agent(envelope.agent) {
                    self.watch(name);
                }
                true
            }
            HubToClient::MetricsSample(event) => {
                self.fleet
                    .live_sample(&event.agent, event.sample, output::now_ms());
                true
            }
            HubToClient::AgentRemoved(agent) => self.fleet.remove(&agent.name),
            _ => false,
        })
    }

    /// Starts following an agent's samples.
    fn watch(&mut self, name: AgentName) {
        self.loads.spawn(latest(self.client.clone(), name, true));
    }

    fn draw(&self) -> anyhow::Result<()> {
        let table = self.fleet.render(output::now_ms());
        output::print(&format!("{CLEAR_SCREEN}{table}"))
    }
}

/// Loads the newest stored sample of `name`, after subscribing to its live
/// samples when `subscribe` is set.
async fn latest(client: Client, name: AgentName, subscribe: bool) -> Loaded {
    let subscribed = if subscribe {
        let channel = format!("metrics:{name}");
        client.subscribe(&channel, None).await.map(drop)
    } else {
        Ok(())
    };
    let since_ms = output::now_ms().saturating_sub(LOOKBACK_MS);
    let latest = client
        .metrics(&name, since_ms)
        .await
        .map(|points| points.into_iter().last().map(|point| point.sample));
    // An agent removed meanwhile fails both; the query's error says so plainly.
    let result = match (subscribed, latest) {
        (Err(err), Ok(_)) => Err(err),
        (_, latest) => latest,
    };
    (name, result)
}

/// Applies a load's result: the sample, or the agent's removal when the hub
/// no longer knows it. Returns whether the table changed.
fn apply(fleet: &mut Fleet, (name, result): Loaded) -> anyhow::Result<bool> {
    match result {
        Ok(Some(sample)) => Ok(fleet.update_sample(&name, sample)),
        Ok(None) => Ok(false),
        Err(err) if err.code() == Some(ErrorCode::AgentNotFound) => Ok(fleet.remove(&name)),
        Err(err) => Err(agent_error(&name)(err)),
    }
}
