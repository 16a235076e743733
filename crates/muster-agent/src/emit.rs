//! The client side of the agent's event socket: what `muster emit` calls, and
//! the two line types both ends of the socket share.
//!
//! A program started by the agent finds the socket in [`SOCKET_ENV`] and its
//! own run id in [`RUN_ID_ENV`]. [`emit`] sends one event line and waits for
//! the agent's one-line reply; see the `events` module of this crate (and
//! `docs/protocol.md`) for the socket protocol.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, anyhow};
use muster_proto::RunId;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// Environment variable holding the agent's event socket, set for every run.
pub const SOCKET_ENV: &str = "MUSTER_AGENT_SOCKET";

/// Environment variable holding the id of the run a process belongs to.
pub const RUN_ID_ENV: &str = "MUSTER_RUN_ID";

/// How long [`emit`] waits for the agent to take and answer an event.
pub const EMIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends one event to the agent listening on `socket` and waits for its reply.
///
/// `Ok` means the agent accepted the event for delivery (queued it), not that
/// the hub stored it. Fails with the agent's message when it refuses the event
/// (invalid type or data, full buffer), and with a connection error when no
/// agent listens on `socket`.
pub async fn emit(
    socket: &Path,
    kind: &str,
    data: serde_json::Value,
    run: Option<RunId>,
) -> anyhow::Result<()> {
    let line = EventLine {
        kind: kind.to_owned(),
        data,
        run,
    };
    let exchange = exchange(socket, &line);
    let reply = tokio::time::timeout(EMIT_TIMEOUT, exchange)
        .await
        .map_err(|_| {
            anyhow!(
                "the muster agent at {} did not answer within {EMIT_TIMEOUT:?}",
                socket.display()
            )
        })??;
    match reply {
        Reply { ok: true, .. } => Ok(()),
        Reply { error, .. } => Err(anyhow!(
            "the muster agent refused the event: {}",
            error.unwrap_or_else(|| "no reason given".into())
        )),
    }
}

/// Connects, writes `line`, reads the reply.
async fn exchange(socket: &Path, line: &EventLine) -> anyhow::Result<Reply> {
    let stream = UnixStream::connect(socket)
        .await
        .with_context(|| format!("cannot reach the muster agent at {}", socket.display()))?;
    let (reader, mut writer) = stream.into_split();
    let mut text = serde_json::to_string(line).context("encoding the event")?;
    text.push('\n');
    writer
        .write_all(text.as_bytes())
        .await
        .context("sending the event to the muster agent")?;
    let mut reply = String::new();
    BufReader::new(reader)
        .read_line(&mut reply)
        .await
        .context("reading the muster agent's reply")?;
    anyhow::ensure!(
        !reply.is_empty(),
        "the muster agent closed the socket without a reply"
    );
    serde_json::from_str(&reply).context("the muster agent's reply is not valid")
}

/// One request line: an event as a program publishes it, without a timestamp.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventLine {
    /// The event type, such as `site.operation`.
    #[serde(rename = "type")]
    pub(crate) kind: String,
    /// A JSON object; `{}` when absent.
    #[serde(default = "empty_object")]
    pub(crate) data: serde_json::Value,
    /// The run that published it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) run: Option<RunId>,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

/// One reply line: `{"ok":true}` or `{"ok":false,"error":"…"}`.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Reply {
    pub(crate) ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
}

impl Reply {
    pub(crate) fn ok() -> Self {
        Self {
            ok: true,
            error: None,
        }
    }

    pub(crate) fn error(message: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(message.into()),
        }
    }

    /// The reply as one line, newline included.
    pub(crate) fn encode(&self) -> String {
        let mut line = serde_json::to_string(self).expect("a reply always serializes");
        line.push('\n');
        line
    }
}
