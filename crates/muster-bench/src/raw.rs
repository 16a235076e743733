//! Raw protocol connections: the lightest client and agent that complete the
//! real handshake, for scenarios that open thousands of them.
//!
//! A raw client sends `hello` and waits for `connection.ack` and the
//! unsolicited first `agent.list` page. A raw agent sends `hello` with its own
//! token and waits for `connection.ack`. Afterwards both [`idle`]: they answer
//! heartbeats and ignore everything else. A job's agents instead
//! [`serve_runs`]: each `run.start` is answered at once with `run.started`, an
//! optional output frame and `run.exited` (completed, exit code 0), and every
//! run must then be acknowledged by the hub's `run.ack` with `exited: true`
//! (protocol sections 6.5, 6.6 and 10). None of them reconnects: a closed
//! connection ends the task and is reported as it ended.

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{anyhow, bail};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use muster_proto::messages::{RunExited, RunStarted};
use muster_proto::{
    AGENT_WS_PATH, AgentName, AgentToHub, CLIENT_WS_PATH, Envelope, HubToAgent, OutputFrame,
    OutputHeader, OutputStream, RunId,
};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_util::sync::CancellationToken;

use crate::net::{Buffers, HubAddr, Socket, dial};
use crate::wire::{self, Head};

/// Bound on waiting for `connection.ack` (and the first `agent.list`) after
/// `hello`: the hub's own handshake timeout is 10 s.
pub(crate) const ACK_TIMEOUT: Duration = Duration::from_secs(20);

/// The pid a simulated run reports; there is no process.
const SIM_PID: u32 = 1;

/// How a raw connection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Ended {
    /// This side stopped it (the scenario ended, or dropped it on purpose).
    Stopped,
    /// The hub closed it, or the socket failed: why.
    Closed(String),
}

/// An agent this tool registered: its name and its token.
#[derive(Clone)]
pub(crate) struct Identity {
    /// The agent's name.
    pub(crate) name: AgentName,
    /// Its token, shown by the hub once.
    pub(crate) token: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Opens a client connection from `source` and completes its handshake:
/// `connection.ack`, then the first `agent.list` page.
pub(crate) async fn connect_client(
    hub: &HubAddr,
    token: &str,
    source: Option<Ipv4Addr>,
    buffers: Buffers,
) -> anyhow::Result<Socket> {
    let mut socket = dial(hub, CLIENT_WS_PATH, source, buffers).await?;
    socket.send(wire::client_hello(token)).await?;
    let handshake = async {
        await_type(&mut socket, "connection.ack", false).await?;
        await_type(&mut socket, "agent.list", false).await
    };
    timeout(ACK_TIMEOUT, handshake)
        .await
        .map_err(|_| anyhow!("no connection.ack and agent.list within {ACK_TIMEOUT:?}"))??;
    Ok(socket)
}

/// Opens an agent connection from `source` as `identity` and waits for
/// `connection.ack`; the hub then counts the agent online.
pub(crate) async fn connect_agent(
    hub: &HubAddr,
    identity: &Identity,
    labels: &BTreeMap<String, String>,
    max_concurrency: u32,
    source: Option<Ipv4Addr>,
) -> anyhow::Result<Socket> {
    let mut socket = dial(hub, AGENT_WS_PATH, source, Buffers::Idle).await?;
    let hello = wire::agent_hello(&identity.token, &identity.name, labels, max_concurrency);
    socket.send(hello).await?;
    timeout(ACK_TIMEOUT, await_type(&mut socket, "connection.ack", true))
        .await
        .map_err(|_| anyhow!("no connection.ack within {ACK_TIMEOUT:?}"))??;
    Ok(socket)
}

/// Reads until a text message of type `kind`, answering heartbeats; fails on
/// an `error` message or a close.
pub(crate) async fn await_type(
    socket: &mut Socket,
    kind: &str,
    agent: bool,
) -> anyhow::Result<String> {
    loop {
        let text = match socket.next().await {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => bail!("{}", closed_by_hub(frame.as_ref())),
            Some(Ok(_)) => continue,
            Some(Err(e)) => bail!("connection failed: {e}"),
            None => bail!("connection ended"),
        };
        let Some(head) = Head::of(text.as_str()) else {
            continue;
        };
        match head.kind {
            k if k == kind => return Ok(text.as_str().to_owned()),
            "heartbeat" => {
                if let Some(ack) = wire::heartbeat_ack(text.as_str(), agent) {
                    socket.send(ack).await?;
                }
            }
            "error" => bail!("the hub answered with an error: {}", text.as_str()),
            _ => {}
        }
    }
}

/// Answers heartbeats and ignores everything else until `stop` (which drops
/// the socket: a reset, no close handshake) or until the hub closes it.
pub(crate) async fn idle(mut socket: Socket, stop: CancellationToken, agent: bool) -> Ended {
    loop {
        let message = tokio::select! {
            () = stop.cancelled() => return Ended::Stopped,
            message = socket.next() => message,
        };
        match message {
            Some(Ok(Message::Text(text))) => {
                if Head::of(text.as_str()).is_some_and(|h| h.kind == "heartbeat")
                    && let Some(ack) = wire::heartbeat_ack(text.as_str(), agent)
                    && let Err(e) = socket.send(ack).await
                {
                    return Ended::Closed(format!("connection failed: {e}"));
                }
            }
            Some(Ok(Message::Close(frame))) => return Ended::Closed(closed_by_hub(frame.as_ref())),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Ended::Closed(format!("connection failed: {e}")),
            None => return Ended::Closed("connection ended".to_owned()),
        }
    }
}

/// Counts of the runs a fleet of raw agents served.
#[derive(Debug, Default)]
pub(crate) struct RunTally {
    /// `run.start` messages answered.
    pub(crate) started: AtomicU64,
    /// Runs the hub acknowledged with `exited: true`.
    pub(crate) acknowledged: AtomicU64,
}

/// Serves runs on an agent connection until `stop` or a close: each run
/// completes at once with exit code 0 after `payload` (if not empty) as one
/// stdout frame. Returns how it ended; `tally` counts the runs.
pub(crate) async fn serve_runs(
    mut socket: Socket,
    stop: CancellationToken,
    payload: Bytes,
    tally: &RunTally,
) -> Ended {
    let mut unacked: HashSet<RunId> = HashSet::new();
    loop {
        let message = tokio::select! {
            () = stop.cancelled() => return Ended::Stopped,
            message = socket.next() => message,
        };
        let text = match message {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => {
                return Ended::Closed(closed_by_hub(frame.as_ref()));
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Ended::Closed(format!("connection failed: {e}")),
            None => return Ended::Closed("connection ended".to_owned()),
        };
        let result = match Head::of(text.as_str()).map(|head| head.kind) {
            Some("heartbeat") => match wire::heartbeat_ack(text.as_str(), true) {
                Some(ack) => socket.send(ack).await,
                None => Ok(()),
            },
            Some("run.start" | "run.ack") => match Envelope::<HubToAgent>::decode(text.as_str()) {
                Ok(envelope) => match envelope.msg {
                    HubToAgent::RunStart(start) => {
                        tally.started.fetch_add(1, Ordering::Relaxed);
                        unacked.insert(start.run);
                        complete(&mut socket, start.run, &payload).await
                    }
                    HubToAgent::RunAck(ack) if ack.exited => {
                        if unacked.remove(&ack.run) {
                            tally.acknowledged.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(())
                    }
                    _ => Ok(()),
                },
                Err(e) => {
                    tracing::warn!("cannot decode a hub message: {e}");
                    Ok(())
                }
            },
            _ => Ok(()),
        };
        if let Err(e) = result {
            return Ended::Closed(format!("connection failed: {e}"));
        }
    }
}

/// Reports a run as started, its output, and its successful end, in order.
async fn complete(
    socket: &mut Socket,
    run: RunId,
    payload: &Bytes,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    let started = AgentToHub::RunStarted(RunStarted { run, pid: SIM_PID });
    socket.feed(wire::report(started)).await?;
    if !payload.is_empty() {
        let header = OutputHeader {
            run,
            stream: OutputStream::Stdout,
            seq: 0,
            offset: 0,
            at: None,
        };
        socket
            .feed(Message::Binary(OutputFrame::encode(&header, payload)))
            .await?;
    }
    let exited = AgentToHub::RunExited(RunExited::completed(run));
    socket.feed(wire::report(exited)).await?;
    socket.flush().await
}

/// "closed by the hub (4008: slow consumer)".
pub(crate) fn closed_by_hub(frame: Option<&CloseFrame>) -> String {
    match frame {
        Some(frame) if frame.reason.is_empty() => {
            format!("closed by the hub ({})", u16::from(frame.code))
        }
        Some(frame) => format!(
            "closed by the hub ({}: {})",
            u16::from(frame.code),
            frame.reason.as_str()
        ),
        None => "closed by the hub".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    use super::*;

    #[test]
    fn close_reasons_name_the_code() {
        let frame = CloseFrame {
            code: CloseCode::from(4008),
            reason: "slow consumer".into(),
        };
        assert_eq!(
            closed_by_hub(Some(&frame)),
            "closed by the hub (4008: slow consumer)"
        );
        assert_eq!(closed_by_hub(None), "closed by the hub");
    }

    #[test]
    fn identities_hide_their_token() {
        let identity = Identity {
            name: AgentName::new("a-1").unwrap(),
            token: "mst_secret".to_owned(),
        };
        assert!(!format!("{identity:?}").contains("secret"));
    }
}
