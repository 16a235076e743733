//! Printing a followed run: its output bytes raw to the local stdout and
//! stderr, queue positions to stderr when asked, and what ends the stream.
//!
//! `muster_client::RunFollower` delivers every chunk exactly once and in
//! order, across reconnects and hub restarts, or stops with an error naming a
//! gap; this module only writes what it gets.

use std::io;

use muster_client::{FollowError, FollowEvent};
use muster_proto::messages::StoredEvent;
use muster_proto::{OutputStream, RunId, RunInfo};
use tokio::io::{AsyncWrite, AsyncWriteExt, Stderr, Stdout};

use super::run_error;

/// What the last event meant for the followed run.
#[derive(Debug)]
pub(crate) enum Step {
    /// Nothing decisive; keep reading.
    Continue,
    /// `stream.synced`: the stored output has been replayed; what follows is live.
    Synced,
    /// The run reached this terminal state; all of its output came before.
    Finished(Box<RunInfo>),
}

/// Unwraps what a follower's `next()` returned: the event, or why the
/// follower stopped, as a line for stderr.
pub(crate) fn event_or_error(
    item: Option<Result<FollowEvent, FollowError>>,
    run: RunId,
) -> anyhow::Result<FollowEvent> {
    match item {
        Some(Ok(event)) => Ok(event),
        Some(Err(FollowError::Client(err))) => Err(run_error(run)(err)),
        Some(Err(err)) => Err(err.into()),
        None => anyhow::bail!("stopped following run {run} before it ended"),
    }
}

/// Writes a followed run's events to the terminal.
pub(crate) struct Printer<O = Stdout, E = Stderr> {
    stdout: Sink<O>,
    stderr: Sink<E>,
    /// Print queue positions to stderr.
    verbose: bool,
    /// The last queue position printed, so a repeat is not printed again.
    position: Option<u32>,
}

impl Printer {
    /// Writes to this process's stdout and stderr.
    pub(crate) fn new(verbose: bool) -> Self {
        Self::with_writers(tokio::io::stdout(), tokio::io::stderr(), verbose)
    }
}

impl<O: AsyncWrite + Unpin, E: AsyncWrite + Unpin> Printer<O, E> {
    /// Writes output to `stdout` and `stderr`.
    pub(crate) fn with_writers(stdout: O, stderr: E, verbose: bool) -> Self {
        Self {
            stdout: Sink::new(stdout),
            stderr: Sink::new(stderr),
            verbose,
            position: None,
        }
    }

    /// Handles one event: writes output, reports queue positions.
    pub(crate) async fn print(&mut self, event: FollowEvent) -> io::Result<Step> {
        match event {
            FollowEvent::Output(frame) => {
                match frame.header.stream {
                    OutputStream::Stdout => self.stdout.write(&frame.payload).await?,
                    OutputStream::Stderr => self.stderr.write(&frame.payload).await?,
                    // A session's input records: `muster sessions` shows them.
                    OutputStream::Input => {}
                }
                Ok(Step::Continue)
            }
            FollowEvent::Queued { position } => {
                self.queued_at(position);
                Ok(Step::Continue)
            }
            FollowEvent::Status(_) => Ok(Step::Continue),
            FollowEvent::Synced { .. } => Ok(Step::Synced),
            FollowEvent::Finished(run) => Ok(Step::Finished(run)),
        }
    }

    /// Writes an event the run's process published to stderr, as one line:
    /// `event site.operation {"status":"progress"}`.
    pub(crate) async fn event(&mut self, event: &StoredEvent) -> io::Result<()> {
        let kind = super::output::escape(&event.event.kind);
        let line = format!("event {kind} {}\n", event.event.data);
        self.stderr.write(line.as_bytes()).await
    }

    /// Reports a queue position on stderr, when verbose and when it changed.
    pub(crate) fn queued_at(&mut self, position: u32) {
        if self.verbose && self.position != Some(position) {
            eprintln!("muster: queued at position {position}");
        }
        self.position = Some(position);
    }
}

/// One local output stream. Once its reader has gone (`| head`), further
/// output for it is discarded so the run (or job) can still be followed to
/// its end.
pub(crate) struct Sink<W> {
    writer: W,
    closed: bool,
}

impl<W: AsyncWrite + Unpin> Sink<W> {
    /// Writes to `writer`.
    pub(crate) fn new(writer: W) -> Self {
        Self {
            writer,
            closed: false,
        }
    }

    /// What was written, for tests that write to memory.
    #[cfg(test)]
    pub(crate) fn writer(&self) -> &W {
        &self.writer
    }

    /// Writes and flushes `bytes`; a closed pipe is not an error.
    pub(crate) async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
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
    use muster_proto::{OutputFrame, OutputHeader};

    use super::*;

    fn output(seq: u64, stream: OutputStream, payload: &'static [u8]) -> FollowEvent {
        let header = OutputHeader {
            run: RunId::generate(),
            stream,
            seq,
            offset: 0,
            at: None,
        };
        FollowEvent::Output(OutputFrame::decode(OutputFrame::encode(&header, payload)).unwrap())
    }

    #[tokio::test]
    async fn output_goes_to_its_stream_byte_exact() {
        let mut printer = Printer::with_writers(Vec::new(), Vec::new(), false);
        for event in [
            output(0, OutputStream::Stdout, b"\x00\xff"),
            output(1, OutputStream::Stderr, b"e1"),
            output(2, OutputStream::Stdout, b"b"),
        ] {
            assert!(matches!(printer.print(event).await, Ok(Step::Continue)));
        }
        assert_eq!(printer.stdout.writer, b"\x00\xffb");
        assert_eq!(printer.stderr.writer, b"e1");
    }

    #[tokio::test]
    async fn sync_and_finish_are_steps() {
        let mut printer = Printer::with_writers(Vec::new(), Vec::new(), false);
        let synced = printer.print(FollowEvent::Synced { next_seq: 3 }).await;
        assert!(matches!(synced, Ok(Step::Synced)));
        let json = serde_json::json!({
            "id": RunId::generate(), "agent": "web-1", "command": {"argv": ["true"]},
            "priority": 0, "state": "completed", "exit_code": 0, "created_ms": 1,
        });
        let run: RunInfo = serde_json::from_value(json).unwrap();
        let finished = printer.print(FollowEvent::Finished(Box::new(run))).await;
        assert!(matches!(finished, Ok(Step::Finished(_))));
    }

    #[test]
    fn follower_errors_name_the_run() {
        let run = RunId::generate();
        let gap = FollowError::Gap {
            expected: 4,
            got: 6,
        };
        let err = event_or_error(Some(Err(gap)), run).unwrap_err();
        assert_eq!(
            err.to_string(),
            "output chunks 4 to 5 are missing from the hub's stream"
        );
        let err = event_or_error(None, run).unwrap_err();
        assert!(err.to_string().contains(&run.to_string()), "{err}");
    }
}
