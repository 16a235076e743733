//! The agent's event socket: a local Unix socket where programs publish
//! events, and the bounded queue those events wait in for the hub.
//!
//! The socket is `<state_dir>/agent.sock` with a state dir, else `agent.sock`
//! in a fresh private directory (mode 0700) under the system temp dir. A stale
//! socket file is replaced at start; the file (and the private directory) is
//! removed when the agent stops. Every run gets its path in
//! `MUSTER_AGENT_SOCKET` and its own id in `MUSTER_RUN_ID`.
//!
//! Protocol. A client connects and writes one JSON object per line (at most
//! [`MAX_EVENT_LINE_BYTES`] bytes, newline excluded):
//! `{"type": "site.operation", "data": {...}, "run": "<run id>"}`. `type` is
//! required: two or more dot-separated words of `[a-z0-9_]`, at most 128
//! characters. `data` must be a JSON object of at most 64 KiB serialized
//! (`{}` when absent); `run` is optional; other fields are refused. For every
//! line the agent writes one reply line: `{"ok":true}` or
//! `{"ok":false,"error":"<message>"}`, and the client may then send another
//! line. A line that is too long gets an error reply and the connection is
//! closed; so is a connection idle for [`CLIENT_IDLE_TIMEOUT`].
//!
//! Delivery. `ok` means the event was accepted for delivery (queued), not that
//! the hub stored it. The agent stamps `ts_ms` on receipt and sends the event
//! as an `event` message; the hub does not acknowledge events, so they are not
//! spooled. At most [`EVENT_BUFFER`] events wait for the hub; while the agent
//! is disconnected they wait for the next `connection.ack`, and once the
//! buffer is full new events are refused. An event being sent when a
//! connection drops may be lost, and so are queued events when the agent
//! process stops.

use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use muster_proto::messages::AgentEvent;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::timeout;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::emit::{EventLine, Reply};

/// Events that may wait for the hub: enough for a burst during a reconnect,
/// small enough (each at most ~64 KiB) to bound the agent's memory.
pub const EVENT_BUFFER: usize = 1024;

/// Longest request line accepted: an event's data (64 KiB) plus room for its
/// type, run id and JSON punctuation.
pub const MAX_EVENT_LINE_BYTES: usize = 80 * 1024;

/// Name of the socket file in the state dir (or the private temp dir).
pub const SOCKET_FILE_NAME: &str = "agent.sock";

/// How long a client may stay silent before its connection is closed.
pub const CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Clients served at once; more wait to be accepted. Events are tiny and
/// answered at once, so this only stops a runaway program from exhausting
/// the agent's file descriptors.
const MAX_CLIENTS: usize = 64;

/// Pause after a failed `accept` (such as running out of descriptors).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The refusal when the buffer is full while disconnected.
const FULL_OFFLINE: &str = "agent is disconnected and its event buffer is full";

/// The refusal when the buffer is full while connected (the hub is slow).
const FULL_ONLINE: &str = "agent's event buffer is full; the hub is not keeping up";

/// The sending end of the event queue, shared by every socket client.
#[derive(Clone, Debug)]
pub(crate) struct EventQueue {
    event_tx: mpsc::Sender<AgentEvent>,
    /// Whether a connection is serving the queue; only picks the refusal text.
    online: Arc<AtomicBool>,
}

/// A new queue and the receiver each connection sends from.
pub(crate) fn queue() -> (EventQueue, mpsc::Receiver<AgentEvent>) {
    let (event_tx, event_rx) = mpsc::channel(EVENT_BUFFER);
    let online = Arc::new(AtomicBool::new(false));
    (EventQueue { event_tx, online }, event_rx)
}

impl EventQueue {
    /// Marks the queue as served by a connection until the guard is dropped.
    pub(crate) fn online(&self) -> Online {
        self.online.store(true, Ordering::Relaxed);
        Online(self.online.clone())
    }

    /// Parses, validates and queues one request line; the reply for it.
    pub(crate) fn accept(&self, line: &[u8]) -> Reply {
        let event = match parse_line(line, crate::metrics::now_ms()) {
            Ok(event) => event,
            Err(message) => return Reply::error(message),
        };
        match self.event_tx.try_send(event) {
            Ok(()) => Reply::ok(),
            Err(mpsc::error::TrySendError::Full(_)) if self.online.load(Ordering::Relaxed) => {
                Reply::error(FULL_ONLINE)
            }
            Err(mpsc::error::TrySendError::Full(_)) => Reply::error(FULL_OFFLINE),
            Err(mpsc::error::TrySendError::Closed(_)) => Reply::error("agent is stopping"),
        }
    }
}

/// Marks the queue as served while alive.
#[derive(Debug)]
pub(crate) struct Online(Arc<AtomicBool>);

impl Drop for Online {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// The event for one request line received at `ts_ms`, or why it is refused.
pub(crate) fn parse_line(line: &[u8], ts_ms: u64) -> Result<AgentEvent, String> {
    let line: EventLine =
        serde_json::from_slice(line).map_err(|e| format!("malformed event line: {e}"))?;
    let event = AgentEvent {
        kind: line.kind,
        data: line.data,
        run: line.run,
        ts_ms,
    };
    event.validate()?;
    Ok(event)
}

/// The listening socket; dropping it stops serving and removes the socket.
#[derive(Debug)]
pub(crate) struct EventSocket {
    path: PathBuf,
    /// The private directory made for the socket, removed with it.
    private_dir: Option<PathBuf>,
    _serving: DropGuard,
}

impl EventSocket {
    /// Binds the socket (in `state_dir` if given) and serves it on a task that
    /// lives as long as the returned value.
    pub(crate) fn bind(state_dir: Option<&Path>, queue: EventQueue) -> anyhow::Result<Self> {
        let private_dir = match state_dir {
            Some(_) => None,
            None => Some(private_dir()?),
        };
        let dir = state_dir.or(private_dir.as_deref()).expect("one is set");
        let path = dir.join(SOCKET_FILE_NAME);
        let listener = listen(&path)?;
        let serving = CancellationToken::new();
        tokio::spawn(accept_loop(listener, queue, serving.clone()));
        tracing::debug!(socket = %path.display(), "event socket listening");
        Ok(Self {
            path,
            private_dir,
            _serving: serving.drop_guard(),
        })
    }

    /// Where programs connect.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for EventSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        if let Some(dir) = &self.private_dir {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Makes a fresh directory only this user can enter.
fn private_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("muster-agent-{:016x}", rand::random::<u64>()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// Binds `path`, replacing a stale socket there, readable by this user only.
fn listen(path: &Path) -> anyhow::Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?,
        Ok(_) => anyhow::bail!("{} exists and is not a socket", path.display()),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", path.display())),
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("cannot listen on the event socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {}", path.display()))?;
    Ok(listener)
}

/// Accepts clients until `serving` is cancelled, at most [`MAX_CLIENTS`] at once.
async fn accept_loop(listener: UnixListener, queue: EventQueue, serving: CancellationToken) {
    let clients = Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        let permit = tokio::select! {
            () = serving.cancelled() => return,
            permit = clients.clone().acquire_owned() => permit.expect("never closed"),
        };
        let accepted = tokio::select! {
            () = serving.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                let client = serve_client(stream, queue.clone(), serving.clone());
                tokio::spawn(async move {
                    client.await;
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::warn!("cannot accept an event socket client: {e}");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}

/// Answers one client's lines until it hangs up, idles, or sends too much.
async fn serve_client(stream: UnixStream, queue: EventQueue, serving: CancellationToken) {
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    let mut line = Vec::new();
    loop {
        let read = tokio::select! {
            () = serving.cancelled() => return,
            read = timeout(CLIENT_IDLE_TIMEOUT, read_line(&mut reader, &mut line)) => read,
        };
        let (reply, more) = match read {
            Ok(Ok(Line::Complete)) => (queue.accept(&line), true),
            Ok(Ok(Line::TooLong)) => (too_long(), false),
            Ok(Ok(Line::End) | Err(_)) | Err(_) => return,
        };
        let reply = reply.encode();
        let written = timeout(CLIENT_IDLE_TIMEOUT, writer.write_all(reply.as_bytes())).await;
        if !matches!(written, Ok(Ok(()))) || !more {
            return;
        }
    }
}

fn too_long() -> Reply {
    Reply::error(format!(
        "event line is longer than {MAX_EVENT_LINE_BYTES} bytes"
    ))
}

/// What [`read_line`] found.
#[derive(Debug, PartialEq)]
pub(crate) enum Line {
    /// A line (without its newline) is in the buffer; the last line may lack one.
    Complete,
    /// The line exceeds [`MAX_EVENT_LINE_BYTES`].
    TooLong,
    /// The client hung up.
    End,
}

/// Reads one line into `line` (cleared first), reading at most one byte past the limit.
pub(crate) async fn read_line(
    reader: &mut (impl AsyncRead + AsyncBufReadExt + Unpin),
    line: &mut Vec<u8>,
) -> std::io::Result<Line> {
    line.clear();
    let limit = MAX_EVENT_LINE_BYTES as u64 + 1;
    let read = (&mut *reader).take(limit).read_until(b'\n', line).await?;
    if read == 0 {
        return Ok(Line::End);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
    } else if line.len() > MAX_EVENT_LINE_BYTES {
        return Ok(Line::TooLong);
    }
    Ok(Line::Complete)
}

#[cfg(test)]
mod tests;
