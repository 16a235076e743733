//! Following one run's channel: its output frames are written raw to the
//! local stdout and stderr in sequence order, and its terminal `run.status`
//! ends the stream.
//!
//! The hub delivers frames in order without gaps or duplicates; the writer
//! still orders by `seq` and drops repeats, so a replay that overlaps live
//! frames (`run.create` with an idempotency key that matched, then `subscribe`
//! from 0) prints every byte exactly once.

use std::collections::BTreeMap;
use std::io;

use anyhow::Context;
use muster_client::Event;
use muster_proto::{HubToClient, OutputFrame, OutputStream, RunId, RunInfo};
use tokio::io::{AsyncWrite, AsyncWriteExt, Stderr, Stdout};
use tokio::sync::mpsc;

/// Frames held back waiting for a missing earlier one; past this the gap is
/// reported and skipped rather than buffering without bound.
const MAX_PENDING_FRAMES: usize = 256;

/// What the last event meant for the followed run.
#[derive(Debug)]
pub(crate) enum Step {
    /// Nothing decisive; keep reading.
    Continue,
    /// `stream.synced`: the replay requested with `since` is complete.
    Synced,
    /// The run reached this terminal state; every output frame came before.
    Finished(Box<RunInfo>),
}

/// Reads the events of one run's channel.
pub(crate) struct RunFollower {
    run: RunId,
    channel: String,
    /// Print queue positions to stderr.
    verbose: bool,
    /// The last queue position printed, so a repeat is not printed again.
    position: Option<u32>,
    writer: OutputWriter<Stdout, Stderr>,
}

impl RunFollower {
    /// Follows `run`, writing its output to this process's stdout and stderr.
    pub(crate) fn new(run: RunId, verbose: bool) -> Self {
        let writer = OutputWriter::new(tokio::io::stdout(), tokio::io::stderr());
        Self {
            run,
            channel: run.channel(),
            verbose,
            position: None,
            writer,
        }
    }

    /// Waits for the next event and handles it.
    pub(crate) async fn next(
        &mut self,
        events: &mut mpsc::Receiver<Event>,
    ) -> anyhow::Result<Step> {
        let event = events.recv().await;
        self.handle(event).await
    }

    /// Handles one event (`None`: the channel ended); other runs' events are ignored.
    pub(crate) async fn handle(&mut self, event: Option<Event>) -> anyhow::Result<Step> {
        match event {
            None => anyhow::bail!("connection to the hub closed"),
            Some(Event::Closed { reason, .. }) => {
                anyhow::bail!("connection to the hub closed: {reason}")
            }
            Some(Event::Output(frame)) if frame.header.run == self.run => {
                self.writer.push(frame).await.context("writing output")?;
                Ok(Step::Continue)
            }
            Some(Event::Message(envelope))
                if envelope.channel.as_deref() == Some(&self.channel) =>
            {
                self.on_message(envelope.msg).await
            }
            Some(_) => Ok(Step::Continue),
        }
    }

    /// Reports a queue position on stderr, when verbose and when it changed.
    pub(crate) fn queued_at(&mut self, position: u32) {
        if self.verbose && self.position != Some(position) {
            eprintln!("muster: queued at position {position}");
        }
        self.position = Some(position);
    }

    /// Writes any frames still held back.
    pub(crate) async fn finish(&mut self) -> anyhow::Result<()> {
        self.writer.finish().await.context("writing output")
    }

    async fn on_message(&mut self, msg: HubToClient) -> anyhow::Result<Step> {
        match msg {
            HubToClient::RunStatus(status) if status.run.state.is_terminal() => {
                self.finish().await?;
                Ok(Step::Finished(Box::new(status.run)))
            }
            HubToClient::RunQueue(queue) => {
                self.queued_at(queue.position);
                Ok(Step::Continue)
            }
            HubToClient::StreamSynced(_) => Ok(Step::Synced),
            _ => Ok(Step::Continue),
        }
    }
}

/// Writes output frames to two byte sinks in `seq` order, each exactly once.
pub(crate) struct OutputWriter<O, E> {
    next_seq: u64,
    pending: BTreeMap<u64, OutputFrame>,
    stdout: Sink<O>,
    stderr: Sink<E>,
}

impl<O: AsyncWrite + Unpin, E: AsyncWrite + Unpin> OutputWriter<O, E> {
    /// A writer expecting the frame with `seq` 0 first.
    pub(crate) fn new(stdout: O, stderr: E) -> Self {
        Self {
            next_seq: 0,
            pending: BTreeMap::new(),
            stdout: Sink {
                writer: stdout,
                closed: false,
            },
            stderr: Sink {
                writer: stderr,
                closed: false,
            },
        }
    }

    /// Takes one frame: writes it, and any held-back successors, once its turn comes.
    pub(crate) async fn push(&mut self, frame: OutputFrame) -> io::Result<()> {
        if frame.header.seq < self.next_seq {
            return Ok(());
        }
        self.pending.insert(frame.header.seq, frame);
        while let Some(frame) = self.pending.remove(&self.next_seq) {
            self.write(frame).await?;
        }
        if self.pending.len() > MAX_PENDING_FRAMES {
            self.skip_gap();
        }
        Ok(())
    }

    /// Writes every held-back frame, reporting the gaps before them.
    pub(crate) async fn finish(&mut self) -> io::Result<()> {
        while !self.pending.is_empty() {
            self.skip_gap();
            while let Some(frame) = self.pending.remove(&self.next_seq) {
                self.write(frame).await?;
            }
        }
        Ok(())
    }

    fn skip_gap(&mut self) {
        if let Some(&first) = self.pending.keys().next() {
            eprintln!(
                "muster: output chunks {} to {} are missing",
                self.next_seq,
                first - 1
            );
            self.next_seq = first;
        }
    }

    async fn write(&mut self, frame: OutputFrame) -> io::Result<()> {
        self.next_seq = frame.header.seq + 1;
        match frame.header.stream {
            OutputStream::Stdout => self.stdout.write(&frame.payload).await,
            OutputStream::Stderr => self.stderr.write(&frame.payload).await,
        }
    }
}

/// One local output stream. Once its reader has gone (`| head`), further
/// output for it is discarded so the run can still be followed to its end.
struct Sink<W> {
    writer: W,
    closed: bool,
}

impl<W: AsyncWrite + Unpin> Sink<W> {
    async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.closed {
            return Ok(());
        }
        let written = async {
            self.writer.write_all(bytes).await?;
            self.writer.flush().await
        };
        match written.await {
            Err(err) if err.kind() == io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(())
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use muster_proto::OutputHeader;

    use super::*;

    fn frame(run: RunId, seq: u64, stream: OutputStream, payload: &'static [u8]) -> OutputFrame {
        let header = OutputHeader {
            run,
            stream,
            seq,
            offset: 0,
        };
        OutputFrame::decode(OutputFrame::encode(&header, payload)).unwrap()
    }

    #[tokio::test]
    async fn frames_are_written_in_seq_order_exactly_once() {
        let run = RunId::generate();
        let mut writer = OutputWriter::new(Vec::new(), Vec::new());
        for (seq, stream, bytes) in [
            (1, OutputStream::Stderr, &b"e1"[..]),
            (0, OutputStream::Stdout, b"\x00\xff"),
            (0, OutputStream::Stdout, b"\x00\xff"),
            (3, OutputStream::Stdout, b"c"),
            (2, OutputStream::Stdout, b"b"),
        ] {
            writer.push(frame(run, seq, stream, bytes)).await.unwrap();
        }
        assert_eq!(writer.stdout.writer, b"\x00\xffbc");
        assert_eq!(writer.stderr.writer, b"e1");
        assert!(writer.pending.is_empty());
    }

    #[tokio::test]
    async fn finish_writes_frames_after_a_gap() {
        let run = RunId::generate();
        let mut writer = OutputWriter::new(Vec::new(), Vec::new());
        writer
            .push(frame(run, 0, OutputStream::Stdout, b"a"))
            .await
            .unwrap();
        writer
            .push(frame(run, 2, OutputStream::Stdout, b"c"))
            .await
            .unwrap();
        assert_eq!(writer.stdout.writer, b"a");
        writer.finish().await.unwrap();
        assert_eq!(writer.stdout.writer, b"ac");
    }
}
