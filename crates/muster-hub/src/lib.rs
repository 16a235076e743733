//! The Muster hub as a library.
//!
//! [`Hub::open`] loads configuration and the store and starts the engine;
//! [`Hub::serve`] takes a bound listener (so tests pass `127.0.0.1:0`) and
//! runs until the shutdown token is cancelled; [`Hub::close`] lets the
//! engine commit what it holds. The binary in `crates/muster` is a thin
//! wrapper around this.
//!
//! Codemap:
//! - [`engine`]: the state machine (agents, presence, runs, queues, jobs),
//!   with no transport, store or clock of its own;
//! - `runtime`: the engine's task; `writer`: the only task that writes to
//!   the store, then carries out what each batch promised;
//! - [`store`]: the persistence seam and its SQLite implementation;
//!   [`broker`]: the fan-out seam and its in-process implementation;
//! - [`delivery`]: subscriptions, duplicates, gaps and replay of one
//!   connection, with no socket; `reads`: requests answered from the store;
//! - `ws`: the only transport adapter.

pub mod auth;
pub mod broker;
mod browser_token;
pub mod clients;
mod clock;
pub mod config;
pub mod delivery;
pub mod engine;
pub mod metrics;
mod outbound;
mod paging;
pub mod queue;
mod rate;
pub mod reads;
mod runtime;
pub mod scheduler;
pub mod store;
mod validate;
mod writer;
mod ws;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::Context as _;
use muster_proto::messages::AgentEnvelope;
use muster_proto::{AgentName, AgentStatus, Envelope, HubToClient, Role};
use muster_tls::ServerTls;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use auth::Secret;
pub use broker::{Broker, InProcessBroker};
pub use clock::now_ms;
pub use config::HubConfig;
pub use outbound::{Outbound, Reply};
pub use store::{SqliteStore, Store};
pub use writer::Health;

use crate::broker::Frame;
use crate::engine::{Engine, Input, Request};

/// Time connections get to close after shutdown is requested.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Time the engine and writer get to commit what they hold at the end.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// A hub: its engine and seams, ready to serve. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    config: Arc<HubConfig>,
    store: Arc<dyn Store>,
    broker: Arc<dyn Broker>,
    running: runtime::Running,
    /// One permit per WebSocket connection being served.
    connections: Arc<Semaphore>,
    /// The certificate served, when the hub terminates TLS.
    tls: Option<Arc<ServerTls>>,
    /// Live client connections by key name.
    clients: Arc<clients::ClientConns>,
}

/// The result of opening a hub.
pub struct Opened {
    /// The hub.
    pub hub: Hub,
    /// On a fresh data dir: the first admin token, to print once.
    pub initial_admin_token: Option<Secret>,
}

impl Hub {
    /// Validates `config`, opens the SQLite store in its data dir, and
    /// starts the hub over it with an in-process broker.
    pub async fn open(config: HubConfig) -> anyhow::Result<Opened> {
        config.validate()?;
        let store = SqliteStore::open(&config.data_dir).await?;
        Self::with_parts(config, Arc::new(store), Arc::new(InProcessBroker::new())).await
    }

    /// Starts a hub over `store` and `broker`: loads what the store holds,
    /// recovers runs and jobs, and on an empty store mints the first admin key.
    pub async fn with_parts(
        config: HubConfig,
        store: Arc<dyn Store>,
        broker: Arc<dyn Broker>,
    ) -> anyhow::Result<Opened> {
        config.validate()?;
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(Arc::new(
                ServerTls::load(cert, key).map_err(|e| anyhow::anyhow!(e))?,
            )),
            _ => None,
        };
        let snapshot = store.load().await.context("loading the store")?;
        let hub_id = config
            .hub_id
            .clone()
            .unwrap_or_else(|| format!("hub-{}", ulid::Ulid::new().to_string().to_lowercase()));
        let config = Arc::new(config);
        let engine = Engine::new(config.clone(), hub_id, snapshot, now_ms());
        let fresh = engine.api_key_count() == 0;
        let page_bytes = config.max_message_bytes / 2;
        let clients = engine.client_conns();
        let running = runtime::start(engine, store.clone(), broker.clone(), page_bytes)
            .context("starting the engine")?;
        let connections = Arc::new(Semaphore::new(config.max_connections));
        let hub = Self {
            inner: Arc::new(Inner {
                config,
                store,
                broker,
                running,
                connections,
                tls,
                clients,
            }),
        };
        let initial_admin_token = match fresh {
            true => Some(hub.mint_admin_key("admin", false).await?),
            false => None,
        };
        Ok(Opened {
            hub,
            initial_admin_token,
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &HubConfig {
        &self.inner.config
    }

    /// Whether the store takes writes.
    pub fn health(&self) -> &Health {
        self.inner.running.handle.health()
    }

    /// Mints an admin API key named `name`; with `replace`, older keys of that name are revoked.
    pub async fn mint_admin_key(&self, name: &str, replace: bool) -> anyhow::Result<Secret> {
        self.mint(name, Role::Admin, replace).await
    }

    /// Mints an API key with `role`; see [`muster_proto::roles`] for what each
    /// role may do.
    pub async fn mint_key(&self, name: &str, role: Role) -> anyhow::Result<Secret> {
        self.mint(name, role, false).await
    }

    async fn mint(&self, name: &str, role: Role, replace: bool) -> anyhow::Result<Secret> {
        let name = name.to_owned();
        self.inner
            .running
            .handle
            .ask(|reply| Input::MintKey {
                name,
                role,
                replace,
                reply,
            })
            .await
            .context("the hub's engine is gone")
    }

    /// Returns a fresh token for agent `name`, registering it if needed.
    pub async fn agent_token(&self, name: &AgentName) -> anyhow::Result<Secret> {
        let name = name.clone();
        let token = self
            .inner
            .running
            .handle
            .ask(|reply| Input::AgentToken { name, reply })
            .await
            .context("the hub's engine is gone")?;
        token.map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// Waits until agent `name` is online.
    pub async fn wait_online(&self, name: &AgentName) {
        let (queue, mut rx) = queue::bounded(256);
        let _fleet = self.inner.broker.subscribe("fleet", queue.clone(), false);
        let ask = Input::Request {
            principal: Arc::new(muster_proto::messages::Principal {
                kind: "hub".into(),
                name: "hub".into(),
                role: None,
                scope: None,
            }),
            source: None,
            to: queue,
            re: None,
            request: Box::new(Request::AgentGet(name.clone())),
        };
        if !self.inner.running.handle.send(ask).await {
            return;
        }
        while let Ok(item) = rx.recv().await {
            let msg = match item {
                Outbound::Reply(reply) => reply.msg,
                Outbound::Delivery(delivery) => match decode(&delivery.frame) {
                    Some(msg) => msg,
                    None => continue,
                },
                Outbound::Agent(_) => continue,
            };
            if let HubToClient::AgentInfo(AgentEnvelope { agent })
            | HubToClient::AgentStatus(AgentEnvelope { agent }) = msg
                && &agent.name == name
                && agent.status == AgentStatus::Online
            {
                return;
            }
        }
    }

    /// Whether the hub serves TLS.
    pub fn serves_tls(&self) -> bool {
        self.inner.tls.is_some()
    }

    /// Reads the TLS certificate and key files again, for handshakes from
    /// now on; connections already open keep theirs. On an error the
    /// certificate in use stays. `None` when the hub does not serve TLS.
    pub fn reload_tls(&self) -> Option<Result<(), String>> {
        self.inner.tls.as_ref().map(|tls| tls.reload())
    }

    /// How many WebSocket connections (agents and clients) are being served.
    pub fn open_connections(&self) -> usize {
        let max = self.inner.config.max_connections;
        max.saturating_sub(self.inner.connections.available_permits())
    }

    /// Serves HTTP and WebSockets on `listener` until `shutdown` is cancelled,
    /// then closes connections (1001) and waits for them a bounded time.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let tracker = TaskTracker::new();
        let config = self.inner.config.clone();
        let state = ws::AppState::new(ws::Shared {
            engine: self.inner.running.handle.clone(),
            broker: self.inner.broker.clone(),
            history: delivery::History::new(self.inner.store.clone()),
            connections: self.inner.connections.clone(),
            next_conn_id: Arc::new(AtomicU64::new(1)),
            shutdown: shutdown.clone(),
            tracker: tracker.clone(),
            guards: Arc::new(ws::Guards {
                clients: self.inner.clients.clone(),
                limits: rate::RateLimits::new(&config),
                max_subscriptions: config.max_subscriptions_per_connection,
                refusals: Default::default(),
                page_bytes: config.max_message_bytes / 2,
            }),
            config,
        });
        let timeout = state.config.handshake_timeout();
        let caps = ws::PreauthCaps {
            total: state.config.max_unauthenticated,
            per_source: state.config.max_unauthenticated_per_source,
        };
        let app = ws::router(state).into_make_service_with_connect_info::<ws::Peer>();
        let listener = ws::PreauthListener::new(listener, self.inner.tls.clone(), timeout, caps);
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

    /// Lets the engine and the writer commit and carry out what they hold,
    /// a bounded time. Does nothing while other clones of the hub live.
    pub async fn close(self) {
        if let Ok(inner) = Arc::try_unwrap(self.inner) {
            inner.running.close(DRAIN_GRACE).await;
        }
    }
}

fn decode(frame: &Frame) -> Option<HubToClient> {
    let Frame::Text(bytes) = frame else {
        return None;
    };
    let text = std::str::from_utf8(bytes).ok()?;
    Envelope::<HubToClient>::decode(text)
        .ok()
        .map(|env| env.msg)
}
