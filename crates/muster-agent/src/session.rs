//! Sessions on the agent: runs that take input, resize and show their screen.
//!
//! A session is a run whose `run.start` carries a [`SessionSpec`]. Everything
//! a run does it does too; this module adds what the hub sends a session:
//!
//! - a [`SessionHandle`], kept by the run table, is where the connection
//!   hands `session.input`, `session.resize` and `session.snapshot`. It never
//!   waits: each goes into a queue of its own;
//! - the [`Applier`] applies the hub's inputs exactly once and in order. It
//!   keeps `applied`, the last input `seq` applied (reported in `hello`):
//!   a `seq` at or below it is a resend, answered with the ack again; the
//!   next one is first echoed into the run's output as an
//!   [`InputRecord`] frame on the `input` stream, then handed to the
//!   process's writer, then acknowledged with `session.input.ack`; a later
//!   one is a gap, ignored (the hub sends again from `applied`). Echoing
//!   before writing numbers the echo before any output the input causes,
//!   because the batcher takes its events in order;
//! - a resize reaches the screen (through the batcher, in order with output)
//!   before the pty, and a snapshot is answered by the batcher, which owns
//!   the numbering and the [`Screen`](crate::screen::Screen).
//!
//! Queues, and what happens when one is full: inputs wait in a queue of
//! [`INPUT_QUEUE`] per session, as many as the hub ever sends unapplied
//! ([`MAX_UNAPPLIED_INPUTS`]), so a hub that keeps the rule never finds it
//! full; one that does not has the extra input dropped, unapplied and
//! unacknowledged, and sent again after the next `hello`. Only the latest
//! size matters, so a resize replaces the one not yet applied. Snapshot
//! requests wait in a queue of [`SNAPSHOT_QUEUE`]; one that finds it full is
//! not answered, and the hub times it out. The answers (`session.input.ack`,
//! `session.screen`) are best effort: not spooled, dropped when the queue of
//! [`REPLIES_QUEUE`] is full, and dropped when a connection starts, as they
//! answered the one before.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use muster_proto::sessions::{
    InputRecord, MAX_UNAPPLIED_INPUTS, SessionApplied, SessionDeliver, SessionKind, SessionResize,
    SessionSpec, check_size,
};
use muster_proto::{AgentToHub, RunId};
use tokio::sync::{mpsc, watch};

use crate::executor::{SessionCommand, SessionInbox};
use crate::screen::Screen;
use crate::sink::{Batcher, Outlet, RunSink, SessionFraming};

/// Inputs that may wait per session while the process takes earlier ones:
/// as many as the hub sends without their being applied.
pub(crate) const INPUT_QUEUE: usize = MAX_UNAPPLIED_INPUTS;

/// Snapshot requests that may wait per session; the hub asks rarely.
pub(crate) const SNAPSHOT_QUEUE: usize = 4;

/// Answers to the hub waiting for the connection, over all sessions.
pub(crate) const REPLIES_QUEUE: usize = 1024;

/// Commands waiting for the process's writer; the applier waits when it is
/// full, so a process that does not read its input holds its inputs back.
const PROCESS_QUEUE: usize = 16;

/// Best-effort answers to the hub: `session.input.ack` and `session.screen`.
#[derive(Clone, Debug)]
pub(crate) struct Replies {
    replies_tx: mpsc::Sender<AgentToHub>,
}

impl Replies {
    /// The sender, and the receiver the connection sends from.
    pub(crate) fn channel() -> (Self, mpsc::Receiver<AgentToHub>) {
        let (replies_tx, replies_rx) = mpsc::channel(REPLIES_QUEUE);
        (Self { replies_tx }, replies_rx)
    }

    /// Queues `reply` unless the queue is full.
    pub(crate) fn send(&self, reply: AgentToHub) {
        if let Err(e) = self.replies_tx.try_send(reply) {
            tracing::debug!("dropping a session answer to the hub: {e}");
        }
    }
}

/// The connection's way into one session; the run table keeps it.
#[derive(Debug)]
pub(crate) struct SessionHandle {
    kind: SessionKind,
    applied: Arc<AtomicU64>,
    input_tx: mpsc::Sender<SessionDeliver>,
    /// Latest size asked for, as `(cols, rows)`.
    size_tx: watch::Sender<(u16, u16)>,
    snapshot_tx: mpsc::Sender<u64>,
}

impl SessionHandle {
    /// The last hub input `seq` applied.
    pub(crate) fn applied(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    /// Queues an input for the applier; a full queue drops it.
    pub(crate) fn input(&self, deliver: SessionDeliver) {
        let (run, seq) = (deliver.run, deliver.seq);
        if self.input_tx.try_send(deliver).is_err() {
            tracing::warn!(%run, seq, "session input queue full or closed; the hub sends it again");
        }
    }

    /// Asks for a new window size; ignored for pipes and invalid sizes.
    pub(crate) fn resize(&self, resize: &SessionResize) {
        if self.kind != SessionKind::Pty {
            tracing::debug!(run = %resize.run, "ignoring session.resize for a pipe session");
            return;
        }
        match check_size(resize.cols, resize.rows) {
            Ok(()) => {
                self.size_tx.send_replace((resize.cols, resize.rows));
            }
            Err(e) => tracing::warn!(run = %resize.run, "ignoring session.resize: {e}"),
        }
    }

    /// Asks for the screen; a pipe session has none and answers nothing.
    pub(crate) fn snapshot(&self, run: RunId, token: u64) {
        if self.kind != SessionKind::Pty {
            tracing::debug!(%run, "ignoring session.snapshot for a pipe session");
        } else if self.snapshot_tx.try_send(token).is_err() {
            tracing::warn!(%run, "session snapshot queue full or closed; not answered");
        }
    }
}

/// What a session's execution is made of, until [`SessionParts::wire`].
#[derive(Debug)]
pub(crate) struct SessionParts {
    spec: SessionSpec,
    applied: Arc<AtomicU64>,
    input_rx: mpsc::Receiver<SessionDeliver>,
    size_rx: watch::Receiver<(u16, u16)>,
    snapshot_rx: mpsc::Receiver<u64>,
    replies: Replies,
}

/// A new session's handle and parts.
pub(crate) fn open(spec: &SessionSpec, replies: Replies) -> (SessionHandle, SessionParts) {
    let applied = Arc::new(AtomicU64::new(0));
    let (input_tx, input_rx) = mpsc::channel(INPUT_QUEUE);
    let (size_tx, size_rx) = watch::channel((spec.cols, spec.rows));
    let (snapshot_tx, snapshot_rx) = mpsc::channel(SNAPSHOT_QUEUE);
    let handle = SessionHandle {
        kind: spec.kind,
        applied: applied.clone(),
        input_tx,
        size_tx,
        snapshot_tx,
    };
    let parts = SessionParts {
        spec: spec.clone(),
        applied,
        input_rx,
        size_rx,
        snapshot_rx,
        replies,
    };
    (handle, parts)
}

impl SessionParts {
    /// The run's sink and batcher, in session framing, its applier, and the
    /// inbox the executor takes input from.
    pub(crate) fn wire(
        self,
        run: RunId,
        output_cap_bytes: u64,
        outlet: Outlet,
    ) -> (RunSink, Batcher, Applier, SessionInbox) {
        let screen = (self.spec.kind == SessionKind::Pty)
            .then(|| Screen::new(self.spec.cols, self.spec.rows));
        let framing = SessionFraming {
            screen,
            snapshot_rx: self.snapshot_rx,
            replies: self.replies.clone(),
        };
        let (sink, batcher) = RunSink::new(run, output_cap_bytes, outlet, Some(framing));
        let (process_tx, process_rx) = mpsc::channel(PROCESS_QUEUE);
        let applier = Applier {
            run,
            kind: self.spec.kind,
            applied: self.applied,
            input_rx: self.input_rx,
            size_rx: self.size_rx,
            sink: sink.clone(),
            process_tx,
            replies: self.replies,
        };
        (sink, batcher, applier, SessionInbox::new(process_rx))
    }
}

/// Applies a session's inputs and resizes, in order, until its process ends.
#[derive(Debug)]
pub(crate) struct Applier {
    run: RunId,
    kind: SessionKind,
    applied: Arc<AtomicU64>,
    input_rx: mpsc::Receiver<SessionDeliver>,
    size_rx: watch::Receiver<(u16, u16)>,
    /// Holding a sink keeps the batcher up; it is dropped when the process ends.
    sink: RunSink,
    process_tx: mpsc::Sender<SessionCommand>,
    replies: Replies,
}

impl Applier {
    /// Runs until the executor drops its inbox (the process ended) or the
    /// handle is gone.
    pub(crate) async fn run(mut self) {
        let mut size_open = true;
        loop {
            let step = tokio::select! {
                // A resize asked for before an input is applied before it.
                biased;
                () = self.process_tx.closed() => return,
                changed = self.size_rx.changed(), if size_open => match changed {
                    Ok(()) => self.resize().await,
                    Err(_) => {
                        size_open = false;
                        Ok(())
                    }
                },
                deliver = self.input_rx.recv() => match deliver {
                    Some(deliver) => self.apply(deliver).await,
                    None => return,
                },
            };
            if step.is_err() {
                return;
            }
        }
    }

    /// Applies `deliver` if it is the next input; `Err` when the process is gone.
    async fn apply(&mut self, deliver: SessionDeliver) -> Result<(), ProcessGone> {
        let applied = self.applied.load(Ordering::Acquire);
        if deliver.seq <= applied {
            self.acknowledge(applied);
            return Ok(());
        }
        if deliver.seq != applied + 1 {
            tracing::warn!(run = %self.run, seq = deliver.seq, applied, "ignoring session input after a gap");
            return Ok(());
        }
        let mut bytes = deliver.data.clone().into_bytes();
        if self.kind == SessionKind::Pipe {
            bytes.push(b'\n');
        }
        let seq = deliver.seq;
        let record = InputRecord {
            seq,
            from: deliver.from,
            at: deliver.at,
            data: deliver.data,
        };
        self.sink.input(record).await;
        self.process(SessionCommand::Write(Bytes::from(bytes)))
            .await?;
        self.applied.store(seq, Ordering::Release);
        self.acknowledge(seq);
        Ok(())
    }

    /// Resizes the screen (in order with output), then the pty.
    async fn resize(&mut self) -> Result<(), ProcessGone> {
        let (cols, rows) = *self.size_rx.borrow_and_update();
        self.sink.resize(cols, rows).await;
        self.process(SessionCommand::Resize { cols, rows }).await
    }

    async fn process(&self, command: SessionCommand) -> Result<(), ProcessGone> {
        self.process_tx.send(command).await.map_err(|_| ProcessGone)
    }

    fn acknowledge(&self, seq: u64) {
        let applied = SessionApplied { run: self.run, seq };
        self.replies.send(AgentToHub::SessionApplied(applied));
    }
}

/// The session's process ended; nothing more can be applied.
#[derive(Debug)]
struct ProcessGone;

/// The payloads of the echo frames of `record`: compact JSON of an
/// [`InputRecord`], one frame each of at most `max_payload` bytes. An input
/// whose record is larger (JSON escapes control characters up to six bytes
/// each) is cut into several records with the same `seq`, whose `data`
/// concatenate to the input's; only a `max_payload` too small for a record's
/// other fields leaves a record larger than it.
pub(crate) fn echo_payloads(record: &InputRecord, max_payload: usize) -> Vec<Bytes> {
    let encode = |data: &str| {
        let part = InputRecord {
            data: data.to_owned(),
            ..record.clone()
        };
        Bytes::from(serde_json::to_vec(&part).expect("an input record encodes"))
    };
    let whole = encode(&record.data);
    if whole.len() <= max_payload {
        return vec![whole];
    }
    let room = max_payload.saturating_sub(encode("").len()).max(6);
    let mut payloads = Vec::new();
    let (mut start, mut used) = (0, 0);
    for (at, c) in record.data.char_indices() {
        let len = escaped_len(c);
        if used + len > room && at > start {
            payloads.push(encode(&record.data[start..at]));
            (start, used) = (at, 0);
        }
        used += len;
    }
    payloads.push(encode(&record.data[start..]));
    payloads
}

/// How many bytes `c` takes inside a JSON string as serde_json writes it.
fn escaped_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if u32::from(c) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

#[cfg(test)]
mod tests;
