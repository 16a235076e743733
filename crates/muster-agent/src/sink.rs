//! Output batching: turns a run's raw pipe reads into numbered output frames.
//!
//! A [`RunSink`] is the executor's handle; it forwards events over a small
//! bounded channel to the run's `Batcher`, which owns all numbering state:
//!
//! - a chunk holds at most [`MAX_OUTPUT_CHUNK_BYTES`]; a full chunk is sent at
//!   once, a partial one [`OUTPUT_BATCH_MS`] after its first unsent byte;
//! - a session's output is not batched: each read is sent at once, in chunks,
//!   each frame stamped with `at`, the Unix milliseconds it was numbered at
//!   (keystroke echo must not wait for a batch window). A session's applied
//!   input is numbered here too, as echo frames on the `input` stream, and a
//!   pty session's [`Screen`] is fed each stdout chunk as it gets its `seq`
//!   and resized in order with them, so a snapshot matches one `next_seq`;
//! - `seq` counts chunks of the run over both streams, from 0, without gaps;
//!   `offset` is the byte offset of the chunk within its own stream;
//! - output past the run's `output_cap_bytes` (both streams together) is
//!   discarded here, so the executor keeps reading and the process never blocks.
//!
//! Frames go to the agent's spool (or, for [`RunSink::channel`], to a channel).
//! Every delivery awaits room there, so a hub that is slow or away pushes back
//! all the way to the pipe readers instead of growing a buffer.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use muster_proto::limits::{MAX_OUTPUT_CHUNK_BYTES, OUTPUT_BATCH_MS};
use muster_proto::messages::{RunExited, RunStarted};
use muster_proto::sessions::{InputRecord, SessionScreen};
use muster_proto::{AgentToHub, OutputFrame, OutputHeader, OutputStream, RunId};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

use crate::metrics::now_ms;
use crate::screen::Screen;
use crate::session::{Replies, echo_payloads};
use crate::spool::Spool;

/// Events queued between a run's sink and its batcher. Each holds at most one
/// pipe read, so a few are enough to keep the reader busy while the batcher
/// sends, and little memory is held per run.
const SINK_EVENTS_CAPACITY: usize = 8;

/// A message a run produces for the hub, in the order it must be sent.
#[derive(Clone, Debug, PartialEq)]
pub enum Outgoing {
    /// The run's process started.
    Started(RunStarted),
    /// One chunk of output, sent as a binary frame.
    Output(OutputFrame),
    /// The run ended; always the run's last message.
    Exited(RunExited),
}

/// Where a batcher delivers a run's messages.
#[derive(Clone, Debug)]
pub(crate) enum Outlet {
    /// The agent's spool, which the hub connection reads.
    Spool(Arc<Spool>),
    /// A plain channel, for [`RunSink::channel`].
    Channel(mpsc::Sender<Outgoing>),
}

impl Outlet {
    /// Delivers `outgoing`, waiting for room.
    pub(crate) async fn deliver(&self, outgoing: Outgoing) {
        match self {
            Self::Spool(spool) => spool.push(outgoing).await,
            // Fails only when the receiver is gone, and nobody reads any more.
            Self::Channel(outgoing_tx) => {
                let _ = outgoing_tx.send(outgoing).await;
            }
        }
    }
}

/// What a sink tells its batcher.
#[derive(Debug)]
enum SinkEvent {
    Started(u32),
    Output(OutputStream, Bytes),
    /// A session's input, applied: echo it in its place among the output.
    Input(InputRecord),
    /// A pty session's new window size, as `(cols, rows)`.
    Resize(u16, u16),
}

/// What a session's batcher has beyond a run's.
#[derive(Debug)]
pub(crate) struct SessionFraming {
    /// A pty session's screen; a pipe session has none.
    pub(crate) screen: Option<Screen>,
    /// Tokens of `session.snapshot` requests, answered with the screen.
    pub(crate) snapshot_rx: mpsc::Receiver<u64>,
    /// Where `session.screen` answers go.
    pub(crate) replies: Replies,
}

/// An executor's handle for reporting one run; cheap to clone.
#[derive(Clone, Debug)]
pub struct RunSink {
    /// Bounded: awaiting capacity is the backpressure on the pipe readers.
    events_tx: mpsc::Sender<SinkEvent>,
}

impl RunSink {
    /// A sink for `run` whose batcher runs on its own task and delivers to the
    /// returned receiver, which holds up to `capacity` messages.
    ///
    /// Meant for tests and tools that drive an [`Executor`](crate::Executor)
    /// directly. The receiver yields `None` once every clone of the sink is
    /// dropped and all output is delivered; `run.exited` is not included.
    pub fn channel(
        run: RunId,
        output_cap_bytes: u64,
        capacity: usize,
    ) -> (Self, mpsc::Receiver<Outgoing>) {
        let (outgoing_tx, outgoing_rx) = mpsc::channel(capacity);
        let outlet = Outlet::Channel(outgoing_tx);
        let (sink, batcher) = Self::new(run, output_cap_bytes, outlet, None);
        tokio::spawn(batcher.run());
        (sink, outgoing_rx)
    }

    /// A sink for `run` and the batcher that must be driven for it to make
    /// progress; a session's when `session` is given.
    pub(crate) fn new(
        run: RunId,
        output_cap_bytes: u64,
        outlet: Outlet,
        session: Option<SessionFraming>,
    ) -> (Self, Batcher) {
        let (events_tx, events_rx) = mpsc::channel(SINK_EVENTS_CAPACITY);
        let batcher = Batcher {
            run,
            events_rx,
            outlet,
            stdout: StreamBuffer::default(),
            stderr: StreamBuffer::default(),
            input_offset: 0,
            next_seq: 0,
            remaining_cap: output_cap_bytes,
            truncated: false,
            session,
        };
        (Self { events_tx }, batcher)
    }

    /// Reports that the run's process started with `pid`; call it before any output.
    pub async fn started(&self, pid: u32) {
        self.send(SinkEvent::Started(pid)).await;
    }

    /// Reports output read from `stream`; waits while the spool is full.
    pub async fn output(&self, stream: OutputStream, bytes: &[u8]) {
        if !bytes.is_empty() {
            let bytes = Bytes::copy_from_slice(bytes);
            self.send(SinkEvent::Output(stream, bytes)).await;
        }
    }

    /// Echoes a session's applied input into the output, numbered before
    /// anything reported after this call.
    pub(crate) async fn input(&self, record: InputRecord) {
        self.send(SinkEvent::Input(record)).await;
    }

    /// Resizes a pty session's screen, in order with the output.
    pub(crate) async fn resize(&self, cols: u16, rows: u16) {
        self.send(SinkEvent::Resize(cols, rows)).await;
    }

    async fn send(&self, event: SinkEvent) {
        // The batcher only goes away when the agent stops; output is moot then.
        let _ = self.events_tx.send(event).await;
    }
}

/// Output of one stream that has not been sent yet.
#[derive(Debug, Default)]
struct StreamBuffer {
    /// Unsent bytes; always shorter than one chunk between events.
    pending: BytesMut,
    /// Offset within the stream of `pending`'s first byte.
    offset: u64,
    /// When `pending` must be sent even though it is not a full chunk.
    flush_at: Option<Instant>,
}

impl StreamBuffer {
    /// Takes up to one chunk from the front, with its stream offset.
    fn take_chunk(&mut self) -> (u64, Bytes) {
        let len = self.pending.len().min(MAX_OUTPUT_CHUNK_BYTES);
        let offset = self.offset;
        self.offset += len as u64;
        (offset, self.pending.split_to(len).freeze())
    }
}

/// Owns the numbering and timing of one run's output frames.
#[derive(Debug)]
pub(crate) struct Batcher {
    run: RunId,
    events_rx: mpsc::Receiver<SinkEvent>,
    outlet: Outlet,
    stdout: StreamBuffer,
    stderr: StreamBuffer,
    /// Offset of the next echo frame within the `input` stream.
    input_offset: u64,
    next_seq: u64,
    /// Output bytes still allowed before the cap; the rest is discarded.
    remaining_cap: u64,
    /// Whether anything was discarded at the cap.
    truncated: bool,
    /// Set for a session: no batching, `at` stamps, echo, screen.
    session: Option<SessionFraming>,
}

impl Batcher {
    /// Batches until every sink is dropped, then sends what is left.
    /// Returns whether output past the cap was discarded.
    pub(crate) async fn run(mut self) -> bool {
        loop {
            let flush_at = self.next_flush();
            tokio::select! {
                event = self.events_rx.recv() => match event {
                    Some(event) => self.handle(event).await,
                    None => break,
                },
                () = sleep_until(flush_at.unwrap_or_else(Instant::now)), if flush_at.is_some() => {
                    self.flush_due().await;
                }
                Some(token) = snapshot_request(self.session.as_mut()) => self.answer_snapshot(token),
            }
        }
        self.flush_all(OutputStream::Stdout).await;
        self.flush_all(OutputStream::Stderr).await;
        self.truncated
    }

    async fn handle(&mut self, event: SinkEvent) {
        match event {
            SinkEvent::Started(pid) => {
                let started = RunStarted { run: self.run, pid };
                self.deliver(Outgoing::Started(started)).await;
            }
            SinkEvent::Output(stream, bytes) => self.append(stream, bytes).await,
            SinkEvent::Input(record) => self.echo(&record).await,
            SinkEvent::Resize(cols, rows) => {
                if let Some(screen) = self.screen() {
                    screen.resize(cols, rows);
                }
            }
        }
    }

    /// Sends the echo frames of an applied input. They count against the
    /// cap, and one that does not fit whole is not sent: a cut record
    /// would not decode.
    async fn echo(&mut self, record: &InputRecord) {
        for payload in echo_payloads(record, MAX_OUTPUT_CHUNK_BYTES) {
            let len = payload.len() as u64;
            if len > self.remaining_cap {
                self.truncated = true;
                self.remaining_cap = 0;
                return;
            }
            self.remaining_cap -= len;
            let offset = self.input_offset;
            self.input_offset += len;
            self.send_frame(OutputStream::Input, offset, payload).await;
        }
    }

    /// Answers a snapshot request with the screen as of `next_seq`.
    fn answer_snapshot(&mut self, token: u64) {
        let Some(session) = &self.session else { return };
        let Some(screen) = &session.screen else {
            return;
        };
        let (cols, rows) = screen.size();
        let answer = SessionScreen {
            run: self.run,
            token: Some(token),
            next_seq: self.next_seq,
            cols,
            rows,
            data: screen.paint(),
        };
        session.replies.send(AgentToHub::SessionScreen(answer));
    }

    fn screen(&mut self) -> Option<&mut Screen> {
        self.session.as_mut()?.screen.as_mut()
    }

    /// Buffers what the cap allows and sends every full chunk.
    async fn append(&mut self, stream: OutputStream, mut bytes: Bytes) {
        let allowed = bytes
            .len()
            .min(usize::try_from(self.remaining_cap).unwrap_or(usize::MAX));
        self.truncated |= allowed < bytes.len();
        bytes.truncate(allowed);
        self.remaining_cap -= allowed as u64;
        if bytes.is_empty() {
            return;
        }
        self.buffer(stream).pending.extend_from_slice(&bytes);
        if self.session.is_some() {
            return self.flush_all(stream).await;
        }
        let mut sent_full = false;
        while self.buffer(stream).pending.len() >= MAX_OUTPUT_CHUNK_BYTES {
            self.send_chunk(stream).await;
            sent_full = true;
        }
        let buffer = self.buffer(stream);
        if buffer.pending.is_empty() {
            buffer.flush_at = None;
        } else if sent_full || buffer.flush_at.is_none() {
            // What is left after a full chunk came in with this very read.
            buffer.flush_at = Some(Instant::now() + Duration::from_millis(OUTPUT_BATCH_MS));
        }
    }

    fn next_flush(&self) -> Option<Instant> {
        match (self.stdout.flush_at, self.stderr.flush_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    async fn flush_due(&mut self) {
        let now = Instant::now();
        for stream in [OutputStream::Stdout, OutputStream::Stderr] {
            if self.buffer(stream).flush_at.is_some_and(|at| at <= now) {
                self.flush_all(stream).await;
            }
        }
    }

    async fn flush_all(&mut self, stream: OutputStream) {
        while !self.buffer(stream).pending.is_empty() {
            self.send_chunk(stream).await;
        }
        self.buffer(stream).flush_at = None;
    }

    async fn send_chunk(&mut self, stream: OutputStream) {
        let (offset, payload) = self.buffer(stream).take_chunk();
        if stream == OutputStream::Stdout
            && let Some(screen) = self.screen()
        {
            screen.feed(&payload);
        }
        self.send_frame(stream, offset, payload).await;
    }

    /// Numbers and delivers one frame; a session's is stamped with the time.
    async fn send_frame(&mut self, stream: OutputStream, offset: u64, payload: Bytes) {
        let header = OutputHeader {
            run: self.run,
            stream,
            seq: self.next_seq,
            offset,
            at: self.session.is_some().then(now_ms),
        };
        self.next_seq += 1;
        self.deliver(Outgoing::Output(OutputFrame { header, payload }))
            .await;
    }

    async fn deliver(&self, outgoing: Outgoing) {
        self.outlet.deliver(outgoing).await;
    }

    fn buffer(&mut self, stream: OutputStream) -> &mut StreamBuffer {
        match stream {
            OutputStream::Stdout => &mut self.stdout,
            // Input records are sent whole by `echo`, never buffered.
            OutputStream::Stderr | OutputStream::Input => &mut self.stderr,
        }
    }
}

/// The next snapshot request of a session; never, for a run.
async fn snapshot_request(session: Option<&mut SessionFraming>) -> Option<u64> {
    match session {
        Some(session) => session.snapshot_rx.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
