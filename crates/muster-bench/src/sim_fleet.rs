//! Many simulated agents at once, for the job scenario: registered (a few at a
//! time) with the sim label and the scenario's labels, run in this process on
//! one shared [`SimExecutor`], and stopped together.
//!
//! Each agent is light: no host metrics, a small spool, a private state dir
//! for its event socket. It costs one WebSocket connection, that socket and a
//! handful of tasks.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use muster_agent::AgentOptions;
use muster_client::Client;
use muster_proto::{AgentName, AgentStatus};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{sleep, timeout};
use tokio_util::sync::CancellationToken;

use crate::sim::SimExecutor;
use crate::sim_agent;

/// Registrations in flight at once on the control connection.
const REGISTER_CONCURRENCY: usize = 16;

/// Runs each agent executes at once; a job gives each target one run per step.
const AGENT_MAX_CONCURRENCY: u32 = 4;

/// Spool bound of each agent: sim runs write a few bytes, and the hub is local.
const AGENT_SPOOL_BYTES: usize = 1024 * 1024;

/// SIGTERM-to-SIGKILL grace announced to each agent; sim runs stop at once.
const KILL_GRACE: Duration = Duration::from_millis(500);

/// Interval between `agent.list` polls while waiting for the fleet to come online.
const ONLINE_POLL: Duration = Duration::from_millis(25);

/// Longest wait for every agent task to stop at the end.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Sim agents running in this process; stopped by [`SimFleet::stop`].
pub(crate) struct SimFleet {
    shutdown: CancellationToken,
    /// Each agent's task, returning the agent's name and how it ended.
    tasks: JoinSet<(AgentName, anyhow::Result<()>)>,
}

impl SimFleet {
    /// A fleet with no agent yet.
    pub(crate) fn new() -> Self {
        Self {
            shutdown: CancellationToken::new(),
            tasks: JoinSet::new(),
        }
    }

    /// Registers each of `names` with `labels` (which hold the sim label),
    /// replacing earlier sim registrations, then starts every agent against
    /// `hub_url`. It does not wait for them to come online.
    pub(crate) async fn start(
        &mut self,
        control: &Client,
        hub_url: &str,
        names: &[AgentName],
        labels: &BTreeMap<String, String>,
        executor: SimExecutor,
    ) -> anyhow::Result<()> {
        let tokens = register_all(control, names, labels).await?;
        let executor = Arc::new(executor);
        for (name, token) in names.iter().zip(tokens) {
            let options = AgentOptions {
                name: Some(name.clone()),
                labels: labels.clone(),
                max_concurrency: AGENT_MAX_CONCURRENCY,
                kill_grace: KILL_GRACE,
                spool_max_bytes: AGENT_SPOOL_BYTES,
                metrics_interval: None,
                ..AgentOptions::new(hub_url.to_owned(), token)
            };
            let run = muster_agent::run_with_executor(
                options,
                executor.clone(),
                self.shutdown.child_token(),
            );
            let name = name.clone();
            self.tasks.spawn(async move { (name, run.await) });
        }
        Ok(())
    }

    /// Waits until the hub reports every one of `names` online, polling the
    /// agents `selector` matches; `online` hears each new count. Fails as soon
    /// as an agent stops.
    pub(crate) async fn wait_online(
        &mut self,
        control: &Client,
        selector: &str,
        names: &[AgentName],
        mut online: impl FnMut(usize),
    ) -> anyhow::Result<()> {
        let wanted: HashSet<&AgentName> = names.iter().collect();
        loop {
            self.check_running()?;
            let agents = control
                .agents_matching(selector)
                .await
                .context("polling the sim agents' status")?;
            let count = agents
                .iter()
                .filter(|a| a.status == AgentStatus::Online && wanted.contains(&a.name))
                .count();
            online(count);
            if count == wanted.len() {
                return Ok(());
            }
            sleep(ONLINE_POLL).await;
        }
    }

    /// Fails if some agent has stopped; none does before [`SimFleet::stop`].
    fn check_running(&mut self) -> anyhow::Result<()> {
        let Some(ended) = self.tasks.try_join_next() else {
            return Ok(());
        };
        let (name, outcome) = ended.context("a sim agent task failed")?;
        outcome.with_context(|| format!("sim agent {name} stopped"))?;
        bail!("sim agent {name} stopped before the scenario ended")
    }

    /// Stops every agent, waiting a bounded time for them to close their
    /// connections; failures are logged, once.
    pub(crate) async fn stop(mut self) {
        self.shutdown.cancel();
        let total = self.tasks.len();
        let mut failed = 0;
        let mut first = None;
        let joined = timeout(STOP_TIMEOUT, async {
            while let Some(ended) = self.tasks.join_next().await {
                let error = match ended {
                    Ok((_, Ok(()))) => continue,
                    Ok((name, Err(e))) => anyhow!("sim agent {name} stopped with an error: {e:#}"),
                    Err(e) => anyhow!("a sim agent task failed: {e}"),
                };
                failed += 1;
                first.get_or_insert(error);
            }
        })
        .await;
        if let Some(error) = first {
            tracing::warn!("{failed} of {total} sim agents did not stop cleanly; first: {error:#}");
        }
        if joined.is_err() {
            tracing::warn!(
                "{} of {total} sim agents did not stop within {STOP_TIMEOUT:?}; aborting them",
                self.tasks.len()
            );
            self.tasks.abort_all();
        }
    }
}

/// Registers every name, [`REGISTER_CONCURRENCY`] at a time; their tokens, in order.
async fn register_all(
    control: &Client,
    names: &[AgentName],
    labels: &BTreeMap<String, String>,
) -> anyhow::Result<Vec<String>> {
    let permits = Arc::new(Semaphore::new(REGISTER_CONCURRENCY));
    let labels = Arc::new(labels.clone());
    let mut registering = JoinSet::new();
    for (i, name) in names.iter().enumerate() {
        let (control, name, labels, permits) = (
            control.clone(),
            name.clone(),
            labels.clone(),
            permits.clone(),
        );
        registering.spawn(async move {
            let _permit = permits.acquire_owned().await;
            (i, sim_agent::register(&control, &name, &labels).await)
        });
    }
    let mut tokens = vec![String::new(); names.len()];
    while let Some(registered) = registering.join_next().await {
        let (i, token) = registered.context("a registration task failed")?;
        tokens[i] = token?;
    }
    Ok(tokens)
}
