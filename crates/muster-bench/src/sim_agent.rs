//! The simulated agent's lifecycle: register it on the hub, run it in this
//! process with the [`SimExecutor`], wait until the hub sees it online, stop it.
//!
//! The hub shows an agent's token only once, so an existing registration is
//! replaced (removed and added again) to get a fresh one; an agent that is not
//! marked `sim=true` is never touched.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use muster_agent::AgentOptions;
use muster_client::Client;
use muster_proto::{AgentName, AgentStatus, ErrorCode};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout};
use tokio_util::sync::CancellationToken;

use crate::sim::SimExecutor;

/// The label that marks agents this tool owns.
pub(crate) const SIM_LABEL: (&str, &str) = ("sim", "true");

/// Runs the sim agent executes at once: far above any round-trip concurrency,
/// so the agent never queues work and the hub's dispatch is what is measured.
const SIM_MAX_CONCURRENCY: u32 = 1024;

/// Longest wait for the hub to report the sim agent online.
const ONLINE_TIMEOUT: Duration = Duration::from_secs(10);

/// Interval between `agent.get` polls while waiting for it.
const ONLINE_POLL: Duration = Duration::from_millis(20);

/// SIGTERM-to-SIGKILL grace announced to the agent; sim runs stop at once.
const KILL_GRACE: Duration = Duration::from_millis(500);

/// Longest wait for the agent task to stop at the end.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A sim agent running in this process; stopped by [`SimAgent::stop`].
pub(crate) struct SimAgent {
    name: AgentName,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl SimAgent {
    /// Registers `name`, starts the agent against `hub_url` and waits until the
    /// hub reports it online.
    pub(crate) async fn start(
        control: &Client,
        hub_url: &str,
        name: &AgentName,
        executor: SimExecutor,
    ) -> anyhow::Result<Self> {
        let token = register(control, name, &sim_labels()).await?;
        let options = AgentOptions {
            name: Some(name.clone()),
            labels: sim_labels(),
            max_concurrency: SIM_MAX_CONCURRENCY,
            kill_grace: KILL_GRACE,
            ..AgentOptions::new(hub_url.to_owned(), token)
        };
        let shutdown = CancellationToken::new();
        let run = muster_agent::run_with_executor(options, Arc::new(executor), shutdown.clone());
        let mut agent = Self {
            name: name.clone(),
            shutdown,
            task: tokio::spawn(run),
        };
        if let Err(e) = agent.wait_online(control).await {
            agent.stop().await;
            return Err(e);
        }
        Ok(agent)
    }

    /// Stops the agent, waiting a bounded time for it to close its connection.
    pub(crate) async fn stop(self) {
        self.shutdown.cancel();
        match timeout(STOP_TIMEOUT, self.task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!("sim agent stopped with an error: {e:#}"),
            Ok(Err(e)) => tracing::warn!("sim agent task failed: {e}"),
            Err(_) => tracing::warn!("sim agent did not stop within {STOP_TIMEOUT:?}"),
        }
    }

    async fn wait_online(&mut self, control: &Client) -> anyhow::Result<()> {
        let deadline = Instant::now() + ONLINE_TIMEOUT;
        loop {
            if self.task.is_finished() {
                let outcome = (&mut self.task).await.context("sim agent task failed")?;
                outcome.context("sim agent stopped")?;
                bail!("sim agent stopped before it came online");
            }
            let info = control
                .agent(&self.name)
                .await
                .context("polling the sim agent's status")?;
            if info.status == AgentStatus::Online {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "sim agent {} did not come online within {ONLINE_TIMEOUT:?}",
                    self.name
                );
            }
            sleep(ONLINE_POLL).await;
        }
    }
}

/// Adds `name` with `labels` (which hold the sim label) and returns its token,
/// replacing an earlier sim registration of the same name.
pub(crate) async fn register(
    control: &Client,
    name: &AgentName,
    labels: &BTreeMap<String, String>,
) -> anyhow::Result<String> {
    match control.add_agent(name.clone(), labels.clone()).await {
        Ok(added) => return Ok(added.token),
        Err(e) if e.code() == Some(ErrorCode::Conflict) => {}
        Err(e) => return Err(e).with_context(|| format!("registering sim agent {name}")),
    }
    let existing = control
        .agent(name)
        .await
        .with_context(|| format!("looking up existing agent {name}"))?;
    if !is_sim(&existing.labels) {
        let (key, value) = SIM_LABEL;
        bail!(
            "agent {name} already exists and is not a sim agent (no {key}={value} label); \
             pick another --agent-name"
        );
    }
    control
        .remove_agent(name)
        .await
        .with_context(|| format!("removing the previous sim agent {name}"))?;
    let added = control
        .add_agent(name.clone(), labels.clone())
        .await
        .with_context(|| format!("registering sim agent {name} again"))?;
    Ok(added.token)
}

/// Whether `labels` mark an agent this tool owns.
pub(crate) fn is_sim(labels: &BTreeMap<String, String>) -> bool {
    let (key, value) = SIM_LABEL;
    labels.get(key).map(String::as_str) == Some(value)
}

/// The sim label alone.
pub(crate) fn sim_labels() -> BTreeMap<String, String> {
    let (key, value) = SIM_LABEL;
    BTreeMap::from([(key.to_owned(), value.to_owned())])
}
