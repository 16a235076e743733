//! Dialling the hub: the agent's WebSocket URL, the `hello`, and the wait for
//! `connection.ack`, all bounded by the handshake timeout.

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use futures_util::StreamExt;
use muster_proto::limits::{HANDSHAKE_TIMEOUT_MS, MAX_MESSAGE_BYTES};
use muster_proto::messages::{AgentHello, ConnectionAck};
use muster_proto::{AGENT_WS_PATH, AgentToHub, Envelope, HubToAgent};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async_with_config};

use crate::AgentOptions;
use crate::connection::{Ended, closed, rejection, send};

/// A WebSocket connection to the hub.
pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Features every agent announces in `hello`.
const CAPABILITIES: &[&str] = &["exec"];

/// The feature an agent that declares actions adds to [`CAPABILITIES`].
const ACTIONS_CAPABILITY: &str = "actions";

/// The agent endpoint under the hub's base URL (`http://` or `ws://`).
pub(crate) fn agent_ws_url(hub_url: &str) -> anyhow::Result<String> {
    let (scheme, rest) = hub_url
        .split_once("://")
        .with_context(|| format!("hub url {hub_url:?} has no scheme; use http://host:port"))?;
    match scheme.to_ascii_lowercase().as_str() {
        "http" | "ws" => {}
        "https" | "wss" => bail!("wss is not supported yet: use an http:// or ws:// hub url"),
        _ => bail!("hub url {hub_url:?} must start with http://, https://, ws:// or wss://"),
    }
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() {
        bail!("hub url {hub_url:?} has no host");
    }
    Ok(format!("ws://{rest}{AGENT_WS_PATH}"))
}

/// The `hello` this agent sends on every connection, before its run report
/// (which the agent fills in for each attempt): who it is, its exec mode and
/// its declared actions.
pub(crate) fn hello(options: &AgentOptions) -> AgentHello {
    let hostname = nix::unistd::gethostname()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    AgentHello {
        token: options.token.clone(),
        name: options.name.clone(),
        hostname,
        os: std::env::consts::OS.to_owned(),
        arch: std::env::consts::ARCH.to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        labels: options.labels.clone(),
        capabilities: capabilities(options),
        max_concurrency: options.max_concurrency,
        exec: options.exec,
        actions: options.actions.info(),
        runs: Vec::new(),
    }
}

/// [`CAPABILITIES`], plus `actions` when the agent declares any.
fn capabilities(options: &AgentOptions) -> Vec<String> {
    let actions = (!options.actions.is_empty()).then_some(ACTIONS_CAPABILITY);
    CAPABILITIES
        .iter()
        .copied()
        .chain(actions)
        .map(str::to_owned)
        .collect()
}

/// Connects, says hello and waits for the hub's `connection.ack`.
pub(crate) async fn connect(url: &str, hello: &AgentHello) -> Result<(Ws, ConnectionAck), Ended> {
    let limit = Duration::from_millis(HANDSHAKE_TIMEOUT_MS);
    match timeout(limit, dial_and_greet(url, hello, limit)).await {
        Ok(result) => result,
        Err(_) => Err(Ended::Lost(anyhow!(
            "no connection.ack from the hub within {limit:?}"
        ))),
    }
}

async fn dial_and_greet(
    url: &str,
    hello: &AgentHello,
    limit: Duration,
) -> Result<(Ws, ConnectionAck), Ended> {
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES));
    let (mut ws, _response) = connect_async_with_config(url, Some(config), true)
        .await
        .with_context(|| format!("cannot connect to {url}"))
        .map_err(Ended::Lost)?;
    let hello = Envelope::plain(AgentToHub::Hello(hello.clone())).encode();
    send(&mut ws, Message::text(hello), limit).await?;
    let ack = await_ack(&mut ws).await?;
    Ok((ws, ack))
}

async fn await_ack(ws: &mut Ws) -> Result<ConnectionAck, Ended> {
    loop {
        let message = match ws.next().await {
            None => return Err(Ended::lost("the hub hung up during the handshake")),
            Some(Err(e)) => {
                return Err(Ended::Lost(
                    anyhow::Error::new(e).context("reading the hub's handshake reply"),
                ));
            }
            Some(Ok(message)) => message,
        };
        match message {
            Message::Text(text) => {
                if let Some(ack) = handshake_reply(&text)? {
                    return Ok(ack);
                }
            }
            Message::Close(frame) => return Err(closed(frame)),
            _ => {}
        }
    }
}

/// The ack if `text` is one; an error ends the attempt; anything else is skipped.
fn handshake_reply(text: &str) -> Result<Option<ConnectionAck>, Ended> {
    let envelope = Envelope::<HubToAgent>::decode(text)
        .map_err(|e| Ended::Lost(anyhow!("invalid handshake reply from the hub: {e}")))?;
    match envelope.msg {
        HubToAgent::ConnectionAck(ack) => Ok(Some(ack)),
        HubToAgent::Error(error) => Err(rejection(&error).unwrap_or_else(|| {
            Ended::Lost(anyhow!(
                "hub refused the handshake: {}: {}",
                error.code,
                error.message
            ))
        })),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_become_the_agent_endpoint() {
        for (base, url) in [
            ("http://hub:7070", "ws://hub:7070/ws/agent"),
            ("http://hub:7070/", "ws://hub:7070/ws/agent"),
            ("ws://127.0.0.1:1", "ws://127.0.0.1:1/ws/agent"),
            ("HTTP://hub/prefix", "ws://hub/prefix/ws/agent"),
        ] {
            assert_eq!(agent_ws_url(base).unwrap(), url);
        }
    }

    #[test]
    fn tls_and_unknown_schemes_are_refused() {
        for base in ["https://hub", "wss://hub"] {
            let err = agent_ws_url(base).unwrap_err().to_string();
            assert!(err.contains("wss is not supported yet"), "{err}");
        }
        assert!(agent_ws_url("ftp://hub").is_err());
        assert!(agent_ws_url("hub:7070").is_err());
    }
}
