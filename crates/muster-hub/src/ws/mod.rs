//! The only transport adapter: HTTP routes and the two WebSocket endpoints.
//!
//! Handlers decode, hand the engine an input, and encode what comes back.
//! Caps live here: a semaphore bounds concurrent connections, and the
//! upgrade bounds message size and buffer sizes.

mod agent;
mod browser;
mod client;
mod conn;
mod preauth;
mod refusals;
mod session;
mod upgrade;

pub(crate) use preauth::{Caps as PreauthCaps, Listener as PreauthListener, Peer};

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tungstenite::protocol::WebSocketConfig;

use crate::broker::Broker;
use crate::config::HubConfig;
use crate::delivery::History;
use crate::runtime::EngineHandle;

/// The WebSocket codec's own read buffer, kept by every connection while
/// idle. Small: the socket is read in 16 KiB chunks below it (see
/// `upgrade::LazyRead`), and the codec only copies out of those.
const READ_BUFFER_BYTES: usize = 128;
/// Bytes buffered before a write is forced out (a flush writes what is
/// buffered at once). 64 KiB: a replay or a live stream of 10 KiB output
/// frames goes out six frames per system call rather than one; the buffer
/// grows only on connections that send that much, so idle ones do not pay
/// for it. Against 8 KiB, interleaved, 9 runs each of `muster-bench output`:
/// replay 785 against 544 MB/s, live 336 against 301 MB/s (medians).
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// Where a browser gets a browser token for an API key.
pub(crate) const BROWSER_TOKEN_PATH: &str = "/v1/browser-token";

/// What every route handler shares, behind one pointer: every connection
/// keeps a copy for as long as it lives.
#[derive(Clone)]
pub(crate) struct AppState(Arc<Shared>);

impl AppState {
    pub(crate) fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The state itself.
pub(crate) struct Shared {
    pub(crate) engine: EngineHandle,
    pub(crate) broker: Arc<dyn Broker>,
    pub(crate) history: History,
    pub(crate) config: Arc<HubConfig>,
    /// Bounds concurrent WebSocket connections: a semaphore, so a permit is
    /// released whichever way the connection task ends.
    pub(crate) connections: Arc<Semaphore>,
    pub(crate) next_conn_id: Arc<AtomicU64>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) tracker: TaskTracker,
    /// Revocation and rate limits.
    pub(crate) guards: Arc<Guards>,
}

/// What guards the hub against its own clients.
pub(crate) struct Guards {
    /// Live client connections by key id, for revocation.
    pub(crate) clients: Arc<crate::clients::ClientConns>,
    /// Rate limits shared by every connection.
    pub(crate) limits: crate::rate::RateLimits,
    /// Channels one client connection may subscribe to at once.
    pub(crate) max_subscriptions: usize,
    /// Refusals recorded in the audit log lately.
    pub(crate) refusals: refusals::RefusalLog,
    /// Bytes one page of a listing read from the store may take.
    pub(crate) page_bytes: usize,
}

impl Guards {
    /// Records a refusal made at a connection in the audit log (see
    /// [`refusals`]).
    pub(crate) fn audit_refusal(
        &self,
        engine: &EngineHandle,
        actor: &str,
        source: std::net::IpAddr,
        action: &'static str,
        code: muster_proto::ErrorCode,
        detail: &str,
    ) {
        self.refusals
            .refused(engine, actor, source, action, code, detail);
    }
}

/// Builds the router.
pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route(muster_proto::AGENT_WS_PATH, get(agent_ws))
        .route(muster_proto::CLIENT_WS_PATH, get(client_ws))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route(BROWSER_TOKEN_PATH, post(browser::issue))
        .with_state(state)
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    if !state.engine.health().writable() {
        return (StatusCode::SERVICE_UNAVAILABLE, "store not writable").into_response();
    }
    "ready".into_response()
}

#[derive(Clone, Copy)]
enum Endpoint {
    Agent,
    Client,
}

async fn agent_ws(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    upgrade: upgrade::Upgrade,
) -> Response {
    accept(state, peer, upgrade, Endpoint::Agent)
}

async fn client_ws(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    upgrade: upgrade::Upgrade,
) -> Response {
    accept(state, peer, upgrade, Endpoint::Client)
}

fn accept(state: AppState, peer: Peer, upgrade: upgrade::Upgrade, endpoint: Endpoint) -> Response {
    if !upgrade.origin_allowed(&state.config.allowed_origins) {
        let why = "this origin may not open a WebSocket to the hub (see allowed_origins)";
        return (StatusCode::FORBIDDEN, why).into_response();
    }
    let Ok(permit) = state.connections.clone().try_acquire_owned() else {
        tracing::warn!(peer = %peer.addr, "refusing a connection: the connection limit is reached");
        return (StatusCode::SERVICE_UNAVAILABLE, "connection limit reached").into_response();
    };
    let max = state.config.max_message_bytes;
    let conn_id = state.next_conn_id.fetch_add(1, Ordering::Relaxed);
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    let tracker = state.tracker.clone();
    match endpoint {
        Endpoint::Agent => upgrade.serve(config, &tracker, move |socket| {
            agent::serve(state, socket, conn_id, permit, peer)
        }),
        Endpoint::Client => upgrade.serve(config, &tracker, move |socket| {
            client::serve(state, socket, conn_id, permit, peer)
        }),
    }
}
