//! Opening many WebSocket connections cheaply: the hub's socket address,
//! source addresses spread over `127.0.0.0/8`, and small buffers.
//!
//! One source address has about 28,000 ephemeral ports, and sockets of
//! earlier runs may still hold some; so connection `i` binds the source address
//! `127.0.0.(2 + i / CONNECTIONS_PER_SOURCE)` before it connects (IPv4 hubs
//! only). Every socket is set to close with a reset (zero linger), so closing
//! leaves no `TIME_WAIT` behind on this side and an abort is a real abort.
//!
//! The WebSocket buffers are sized for many mostly idle connections: a 4 KiB
//! read buffer (tungstenite allocates it eagerly; its default is 128 KiB) and
//! eager writes. Incoming messages may be large, because a hub that does not
//! page lists sends every agent in one message.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// A WebSocket over a plain TCP stream, as every raw connection here is.
pub(crate) type Socket = WebSocketStream<TcpStream>;

/// Connections per source address: far below the ~28,000 ephemeral ports of
/// one address, so ports left in use by earlier runs never run out.
const CONNECTIONS_PER_SOURCE: usize = 2_000;

/// First source address used: 127.0.0.2 (127.0.0.1 is left to the hub's own
/// traffic and to other tools).
const FIRST_SOURCE_HOST: u32 = 2;

/// Largest number of source addresses: 127.0.0.2 to 127.0.0.254.
const MAX_SOURCES: usize = 253;

/// Bound on the TCP connect plus the WebSocket upgrade of one connection.
pub(crate) const DIAL_TIMEOUT: Duration = Duration::from_secs(20);

/// Read buffer of a raw connection: small, as most of them idle.
const READ_BUFFER_BYTES: usize = 4 * 1024;

/// Read buffer of a connection that receives a stream of frames.
pub(crate) const BUSY_READ_BUFFER_BYTES: usize = 32 * 1024;

/// Largest message accepted: a hub that does not page sends every agent of a
/// 15,000-agent fleet in one message (several MiB).
const MAX_INCOMING_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Where the hub listens.
#[derive(Clone, Debug)]
pub(crate) struct HubAddr {
    /// Its socket address.
    pub(crate) addr: SocketAddr,
    /// `host:port` as it appears in the URL, for the HTTP upgrade request.
    authority: String,
}

impl HubAddr {
    /// Resolves `hub_url` (already checked to be loopback) once.
    pub(crate) async fn resolve(hub_url: &str) -> anyhow::Result<Self> {
        let (_, rest) = hub_url
            .trim()
            .split_once("://")
            .with_context(|| format!("hub url {hub_url:?} has no scheme"))?;
        let authority = rest.trim_end_matches('/').to_owned();
        if authority.contains('/') {
            bail!("hub url {hub_url:?} has a path; raw connections need http://HOST:PORT");
        }
        let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host(&authority)
            .await
            .with_context(|| format!("resolving {authority}"))?
            .collect();
        addrs.sort_by_key(|addr| !addr.is_ipv4());
        let addr = *addrs
            .first()
            .ok_or_else(|| anyhow!("{authority} resolves to no address"))?;
        Ok(Self { addr, authority })
    }

    /// The WebSocket URL of `path` (`/ws/agent` or `/ws/client`).
    pub(crate) fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.authority)
    }

    /// The source address of the `index`-th connection of a scenario, or
    /// `None` for an IPv6 hub (which gets the kernel's choice).
    pub(crate) fn source(&self, index: usize) -> Option<Ipv4Addr> {
        self.addr.is_ipv4().then(|| source_address(index))
    }
}

/// `127.0.0.(2 + index / CONNECTIONS_PER_SOURCE)`, wrapping after 127.0.0.254.
pub(crate) fn source_address(index: usize) -> Ipv4Addr {
    let host = (index / CONNECTIONS_PER_SOURCE) % MAX_SOURCES;
    Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 0)) + FIRST_SOURCE_HOST + host as u32)
}

/// How a connection buffers.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Buffers {
    /// Mostly idle: small read buffer.
    Idle,
    /// Receives a steady stream.
    Busy,
}

/// The WebSocket configuration for `buffers`.
pub(crate) fn config(buffers: Buffers) -> WebSocketConfig {
    let read = match buffers {
        Buffers::Idle => READ_BUFFER_BYTES,
        Buffers::Busy => BUSY_READ_BUFFER_BYTES,
    };
    WebSocketConfig::default()
        .read_buffer_size(read)
        .write_buffer_size(0)
        .max_message_size(Some(MAX_INCOMING_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_INCOMING_MESSAGE_BYTES))
}

/// Opens a WebSocket to `path` on the hub from `source` (any when `None`),
/// within [`DIAL_TIMEOUT`].
pub(crate) async fn dial(
    hub: &HubAddr,
    path: &str,
    source: Option<Ipv4Addr>,
    buffers: Buffers,
) -> anyhow::Result<Socket> {
    let dialing = async {
        let socket = match hub.addr {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        }
        .context("creating a socket")?;
        socket
            .set_zero_linger()
            .context("setting the socket to reset on close")?;
        if let Some(source) = source {
            socket
                .bind(SocketAddr::new(IpAddr::V4(source), 0))
                .with_context(|| format!("binding source address {source}"))?;
        }
        let stream = socket
            .connect(hub.addr)
            .await
            .with_context(|| format!("connecting to {}", hub.addr))?;
        stream.set_nodelay(true).context("setting TCP_NODELAY")?;
        let url = hub.ws_url(path);
        let (socket, _) =
            tokio_tungstenite::client_async_with_config(url, stream, Some(config(buffers)))
                .await
                .context("upgrading to a WebSocket")?;
        anyhow::Ok(socket)
    };
    timeout(DIAL_TIMEOUT, dialing)
        .await
        .map_err(|_| anyhow!("no WebSocket within {DIAL_TIMEOUT:?}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_spread_in_blocks() {
        assert_eq!(source_address(0), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(
            source_address(CONNECTIONS_PER_SOURCE - 1),
            Ipv4Addr::new(127, 0, 0, 2)
        );
        assert_eq!(
            source_address(CONNECTIONS_PER_SOURCE),
            Ipv4Addr::new(127, 0, 0, 3)
        );
        assert_eq!(source_address(14_999), Ipv4Addr::new(127, 0, 0, 9));
        assert_eq!(
            source_address(CONNECTIONS_PER_SOURCE * MAX_SOURCES),
            Ipv4Addr::new(127, 0, 0, 2)
        );
        assert!(
            (0..CONNECTIONS_PER_SOURCE * MAX_SOURCES)
                .step_by(997)
                .all(|i| source_address(i).is_loopback())
        );
    }

    #[tokio::test]
    async fn urls_keep_the_authority() {
        let hub = HubAddr::resolve("http://127.0.0.1:7070/").await.unwrap();
        assert_eq!(hub.ws_url("/ws/agent"), "ws://127.0.0.1:7070/ws/agent");
        assert_eq!(hub.addr, "127.0.0.1:7070".parse().unwrap());
        assert_eq!(hub.source(1), Some(Ipv4Addr::new(127, 0, 0, 2)));
        let v6 = HubAddr::resolve("http://[::1]:7070").await.unwrap();
        assert_eq!(v6.source(1), None);
        assert!(
            HubAddr::resolve("http://127.0.0.1:7070/prefix")
                .await
                .is_err()
        );
    }
}
