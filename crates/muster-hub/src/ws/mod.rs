//! The only transport adapter: HTTP routes and the two WebSocket endpoints.
//!
//! Handlers decode, hand the engine an input, and encode what comes back.
//! Caps live here: a semaphore bounds concurrent connections, and the
//! upgrade bounds message size and buffer sizes.

mod agent;
mod client;
mod conn;
mod session;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::Broker;
use crate::config::HubConfig;
use crate::delivery::History;
use crate::runtime::EngineHandle;

/// Bytes a client connection reads from its socket at a time, which is also
/// the buffer it keeps for that while idle: requests are small, and an idle
/// connection's memory is mostly this buffer.
const CLIENT_READ_BUFFER_BYTES: usize = 1024;
/// The same for an agent connection: output frames are up to 10 KiB, so a
/// frame takes a few reads; a larger buffer would be kept by every idle agent.
const AGENT_READ_BUFFER_BYTES: usize = 4 * 1024;
/// Bytes buffered before a write is forced out.
const WRITE_BUFFER_BYTES: usize = 8 * 1024;

/// What every route handler shares.
#[derive(Clone)]
pub(crate) struct AppState {
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
}

/// Builds the router.
pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route(muster_proto::AGENT_WS_PATH, get(agent_ws))
        .route(muster_proto::CLIENT_WS_PATH, get(client_ws))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
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

async fn agent_ws(State(state): State<AppState>, upgrade: WebSocketUpgrade) -> Response {
    accept(state, upgrade, Endpoint::Agent)
}

async fn client_ws(State(state): State<AppState>, upgrade: WebSocketUpgrade) -> Response {
    accept(state, upgrade, Endpoint::Client)
}

fn accept(state: AppState, upgrade: WebSocketUpgrade, endpoint: Endpoint) -> Response {
    let Ok(permit) = state.connections.clone().try_acquire_owned() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "connection limit reached").into_response();
    };
    let max = state.config.max_message_bytes;
    let conn_id = state.next_conn_id.fetch_add(1, Ordering::Relaxed);
    let read_buffer = match endpoint {
        Endpoint::Agent => AGENT_READ_BUFFER_BYTES,
        Endpoint::Client => CLIENT_READ_BUFFER_BYTES,
    };
    upgrade
        .read_buffer_size(read_buffer)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| {
            let tracker = state.tracker.clone();
            let fut = async move {
                let _permit = permit;
                match endpoint {
                    Endpoint::Agent => agent::serve(state, socket, conn_id).await,
                    Endpoint::Client => client::serve(state, socket, conn_id).await,
                }
            };
            eprintln!("SIZES conn future {} writer {} stream {} session {} interval {} appstate {} ws {}", std::mem::size_of_val(&fut), std::mem::size_of::<conn::Writer>(), std::mem::size_of::<futures_util::stream::SplitStream<axum::extract::ws::WebSocket>>(), std::mem::size_of::<session::Session>(), std::mem::size_of::<tokio::time::Interval>(), std::mem::size_of::<AppState>(), std::mem::size_of::<crate::engine::Input>());
            tracker.track_future(fut)
        })
}
