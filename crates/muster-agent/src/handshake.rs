//! Dialling the hub: the agent's WebSocket URL, the `hello`, and the wait for
//! `connection.ack` (or, for a `hello` with an enrollment token, `enrolled`),
//! all bounded by the handshake timeout.

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use futures_util::StreamExt;
use muster_proto::enroll::Enrolled;
use muster_proto::limits::{HANDSHAKE_TIMEOUT_MS, MAX_MESSAGE_BYTES};
use muster_proto::messages::{AgentHello, ConnectionAck, ErrorData};
use muster_proto::{AGENT_WS_PATH, AgentToHub, Envelope, ErrorCode, HubToAgent};
use muster_tls::{DialError, TrustRoots};
use tokio::time::timeout;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::AgentOptions;
use crate::connection::{Ended, closed, rejection, send};

/// A WebSocket connection to the hub.
pub(crate) type Ws = WebSocketStream<muster_tls::Stream>;

/// How the hub answered a `hello`.
pub(crate) enum Greeting {
    /// The agent is online.
    Ack(Box<ConnectionAck>),
    /// The agent is registered through its enrollment token, and this is its
    /// own credential; the hub closes the connection.
    Enrolled(Enrolled),
}

/// Features every agent announces in `hello`.
const CAPABILITIES: &[&str] = &["exec", muster_proto::sessions::SESSIONS_CAPABILITY];

/// The feature an agent that declares actions adds to [`CAPABILITIES`].
const ACTIONS_CAPABILITY: &str = "actions";

/// Most bytes one read from the socket takes. The codec zeroes this much of
/// its buffer before every read, and the hub sends an agent small messages
/// (starts, acknowledgements), so tungstenite's 128 KiB default would cost
/// a 128 KiB memset per read for nothing; a large `run.start` still arrives,
/// over several reads.
const READ_BUFFER_BYTES: usize = 8 * 1024;

/// The agent endpoint under the hub's base URL (`http://` or `ws://`,
/// `https://` or `wss://`).
pub(crate) fn agent_ws_url(hub_url: &str) -> anyhow::Result<String> {
    let (scheme, rest) = hub_url
        .split_once("://")
        .with_context(|| format!("hub url {hub_url:?} has no scheme; use http://host:port"))?;
    let ws_scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" | "ws" => "ws",
        "https" | "wss" => "wss",
        _ => bail!("hub url {hub_url:?} must start with http://, https://, ws:// or wss://"),
    };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() {
        bail!("hub url {hub_url:?} has no host");
    }
    Ok(format!("{ws_scheme}://{rest}{AGENT_WS_PATH}"))
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

/// Connects, says hello and waits for the hub's `connection.ack`, or, when
/// `enrolling`, its `enrolled`.
pub(crate) async fn connect(
    url: &str,
    trust: &TrustRoots,
    hello: &AgentHello,
    enrolling: bool,
) -> Result<(Ws, Greeting), Ended> {
    let limit = Duration::from_millis(HANDSHAKE_TIMEOUT_MS);
    match timeout(limit, dial_and_greet(url, trust, hello, enrolling, limit)).await {
        Ok(result) => result,
        Err(_) => Err(Ended::Lost(anyhow!(
            "no connection.ack from the hub within {limit:?}"
        ))),
    }
}

async fn dial_and_greet(
    url: &str,
    trust: &TrustRoots,
    hello: &AgentHello,
    enrolling: bool,
    limit: Duration,
) -> Result<(Ws, Greeting), Ended> {
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES));
    let (mut ws, _response) = muster_tls::dial(url, trust, config)
        .await
        .map_err(|e| match e {
            DialError::WebSocket(e) => anyhow::Error::new(e),
            other => anyhow!("{other}"),
        })
        .with_context(|| format!("cannot connect to {url}"))
        .map_err(Ended::Lost)?;
    let hello = Envelope::plain(AgentToHub::Hello(hello.clone())).encode();
    send(&mut ws, Message::text(hello), limit).await?;
    let greeting = await_greeting(&mut ws, enrolling).await?;
    Ok((ws, greeting))
}

async fn await_greeting(ws: &mut Ws, enrolling: bool) -> Result<Greeting, Ended> {
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
                if let Some(greeting) = handshake_reply(&text, enrolling)? {
                    return Ok(greeting);
                }
            }
            Message::Close(frame) => return Err(closed(frame)),
            _ => {}
        }
    }
}

/// The ack or the enrollment if `text` is one; an error ends the attempt;
/// anything else is skipped.
fn handshake_reply(text: &str, enrolling: bool) -> Result<Option<Greeting>, Ended> {
    let envelope = Envelope::<HubToAgent>::decode(text)
        .map_err(|e| Ended::Lost(anyhow!("invalid handshake reply from the hub: {e}")))?;
    match envelope.msg {
        HubToAgent::ConnectionAck(ack) if !enrolling => Ok(Some(Greeting::Ack(Box::new(ack)))),
        HubToAgent::Enrolled(enrolled) if enrolling => Ok(Some(Greeting::Enrolled(enrolled))),
        HubToAgent::Error(error) if enrolling => Err(enrollment_refused(&error)),
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

/// How a refused enrollment ends: for good when the same `hello` can never
/// succeed (a bad, expired or used-up token, a taken or invalid name), else
/// (the hub's store, a rate limit) to be tried again later.
fn enrollment_refused(error: &ErrorData) -> Ended {
    let reason = anyhow!(
        "the hub refused the enrollment: {} ({})",
        error.message,
        error.code
    );
    match error.code {
        ErrorCode::AuthFailed | ErrorCode::Conflict | ErrorCode::InvalidMessage => {
            Ended::Rejected(reason)
        }
        _ => Ended::Lost(reason),
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
            ("https://hub:7443", "wss://hub:7443/ws/agent"),
            ("wss://hub", "wss://hub/ws/agent"),
        ] {
            assert_eq!(agent_ws_url(base).unwrap(), url);
        }
    }

    #[test]
    fn unknown_schemes_are_refused() {
        assert!(agent_ws_url("ftp://hub").is_err());
        assert!(agent_ws_url("hub:7070").is_err());
    }
}
