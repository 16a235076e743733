//! The Muster hub as a library.
//!
//! [`Hub::open`] loads configuration and the store; [`Hub::serve`] takes a bound
//! listener (so tests pass `127.0.0.1:0`) and runs until the shutdown token is
//! cancelled. The binary in `crates/muster` is a thin wrapper around this.

pub mod auth;
pub mod broker;
pub mod config;
pub mod core;
pub mod metrics;
pub mod scheduler;
pub mod store;
mod validate;
mod ws;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::Context as _;
use muster_proto::{AgentInfo, AgentName, AgentStatus, Envelope, HubToClient};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use auth::Secret;
pub use broker::{Broker, InProcessBroker};
pub use config::HubConfig;
pub use store::{SqliteStore, Store};

/// Time connections get to close after shutdown is requested.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How often runs are checked for an expired TTL or a lost agent. Deadlines
/// are therefore met within this much.
const SWEEP_INTERVAL: Duration = Duration::from_millis(250);

/// A hub: its core state, ready to serve.
#[derive(Clone)]
pub struct Hub {
    core: Arc<core::Core>,
}

/// The result of opening a hub.
pub struct Opened {
    /// The hub.
    pub hub: Hub,
    /// On a fresh data dir: the first admin token, to print once.
    pub initial_admin_token: Option<Secret>,
}

impl Hub {
    /// Validates `config`, opens the SQLite store in its data dir, and recovers state.
    pub async fn open(config: HubConfig) -> anyhow::Result<Opened> {
        config.validate()?;
        let store = SqliteStore::open(&config.data_dir).await?;
        let core = Arc::new(core::Core::new(
            config,
            Arc::new(store),
            Arc::new(InProcessBroker::new()),
        ));
        core.recover().await.context("recovering runs")?;
        core.recover_jobs().await.context("recovering jobs")?;
        core.spawn_job_driver();
        let initial_admin_token = if core.store.api_key_count().await? == 0 {
            Some(core.mint_api_key("admin", core::ROLE_ADMIN, false).await?)
        } else {
            None
        };
        Ok(Opened {
            hub: Self { core },
            initial_admin_token,
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &HubConfig {
        &self.core.config
    }

    /// Mints an admin API key named `name`; with `replace`, older keys of that name are revoked.
    pub async fn mint_admin_key(&self, name: &str, replace: bool) -> anyhow::Result<Secret> {
        self.core
            .mint_api_key(name, core::ROLE_ADMIN, replace)
            .await
    }

    /// Mints an API key with `role` (`admin`, `operator` or `viewer`). Only admin
    /// keys may register agents or watch the `*` wildcard so far.
    pub async fn mint_key(&self, name: &str, role: &str) -> anyhow::Result<Secret> {
        anyhow::ensure!(
            matches!(role, "admin" | "operator" | "viewer"),
            "unknown role {role:?}: use admin, operator or viewer"
        );
        self.core.mint_api_key(name, role, false).await
    }

    /// Returns a fresh token for agent `name`, registering it if needed.
    pub async fn agent_token(&self, name: &AgentName) -> anyhow::Result<Secret> {
        self.core.rotate_agent_token(name, Default::default()).await
    }

    /// Waits until agent `name` is online.
    pub async fn wait_online(&self, name: &AgentName) {
        let (tx, mut rx) = mpsc::channel(64);
        let overflow = CancellationToken::new();
        let _guard = self
            .core
            .broker
            .subscribe(core::FLEET_CHANNEL, broker::Subscriber { tx, overflow });
        if self.core.is_online(name) {
            return;
        }
        while let Some(delivery) = rx.recv().await {
            let broker::Frame::Text(bytes) = delivery.frame else {
                continue;
            };
            let Ok(text) = std::str::from_utf8(&bytes) else {
                continue;
            };
            if let Ok(Envelope {
                msg: HubToClient::AgentStatus(status),
                ..
            }) = Envelope::decode(text)
                && is_online(&status.agent, name)
            {
                return;
            }
        }
    }

    /// Serves HTTP and WebSockets on `listener` until `shutdown` is cancelled,
    /// then closes connections (1001) and waits for them a bounded time.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let tracker = TaskTracker::new();
        let state = ws::AppState {
            core: self.core.clone(),
            connections: Arc::new(Semaphore::new(self.core.config.max_connections)),
            next_conn_id: Arc::new(AtomicU64::new(1)),
            shutdown: shutdown.clone(),
            tracker: tracker.clone(),
        };
        tracker.spawn(sweep(self.core.clone(), shutdown.clone()));
        let app = ws::router(state);
        // Events are small and latency-bound; never let Nagle hold them back.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
        });
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .await
            .context("serving http")?;
        tracker.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("connections did not close within the shutdown grace period");
        }
        Ok(())
    }
}

/// Ends runs past their deadlines until shutdown.
async fn sweep(core: Arc<core::Core>, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(SWEEP_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => core.sweep().await,
        }
    }
}

fn is_online(agent: &AgentInfo, name: &AgentName) -> bool {
    &agent.name == name && agent.status == AgentStatus::Online
}
