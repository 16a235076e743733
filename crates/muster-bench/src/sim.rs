//! The simulated agent's executor: it answers runs without spawning anything.
//!
//! A round trip should measure the hub and the protocol, not `fork`/`exec`, so
//! every command completes at once with exit code 0, after an optional small
//! payload. The one exception is `bench-output <bytes>`, which streams that many
//! bytes of a known [`Pattern`] to stdout; the receiver checks every byte of it
//! without keeping a copy.

use std::sync::Arc;

use muster_agent::{Executor, RunSink};
use muster_proto::OutputStream;
use muster_proto::messages::{RunExited, RunOutcome, RunStart};
use muster_proto::types::CommandSpec;
use tokio_util::sync::CancellationToken;

/// Program name of the command that asks for a stream of output.
pub(crate) const OUTPUT_PROGRAM: &str = "bench-output";

/// Program name of the round-trip command; any unknown command behaves the same.
pub(crate) const NOOP_PROGRAM: &str = "bench-noop";

/// The pid reported in `run.started`; there is no process.
const SIM_PID: u32 = 1;

/// Period of the output pattern: a prime, so a chunk placed at the wrong offset
/// cannot match by accident of alignment.
const PATTERN_PERIOD: usize = 251;

/// A repeating byte pattern of one slice, as the output command sends it.
///
/// The output command sends `block` over and over (the last copy cut short), so
/// the byte at stream offset `o` is `block[o % block.len()]`.
#[derive(Clone, Debug)]
pub(crate) struct Pattern {
    block: Arc<[u8]>,
}

impl Pattern {
    /// A pattern whose slices are `slice_len` bytes long (at least 1).
    pub(crate) fn new(slice_len: usize) -> Self {
        let block = (0..slice_len.max(1))
            .map(|i| (i % PATTERN_PERIOD) as u8)
            .collect();
        Self { block }
    }

    /// Whether `payload` is what the stream holds at `offset`.
    pub(crate) fn matches(&self, mut offset: u64, mut payload: &[u8]) -> bool {
        let period = self.block.len();
        while !payload.is_empty() {
            let start = (offset % period as u64) as usize;
            let take = payload.len().min(period - start);
            if payload[..take] != self.block[start..start + take] {
                return false;
            }
            payload = &payload[take..];
            offset += take as u64;
        }
        true
    }
}

/// What a simulated run does.
#[derive(Debug, PartialEq)]
enum SimCommand {
    /// Complete at once, after the configured payload.
    Noop,
    /// Stream this many pattern bytes, then complete.
    Output(u64),
    /// A malformed `bench-output`; the run fails to start.
    Invalid(String),
}

impl SimCommand {
    fn parse(command: &CommandSpec) -> Self {
        let CommandSpec::Argv(argv) = command else {
            return Self::Noop;
        };
        match argv.as_slice() {
            [program, bytes] if program == OUTPUT_PROGRAM => match bytes.parse() {
                Ok(bytes) => Self::Output(bytes),
                Err(_) => Self::Invalid(format!("{OUTPUT_PROGRAM}: {bytes:?} is not a byte count")),
            },
            [program, ..] if program == OUTPUT_PROGRAM => {
                Self::Invalid(format!("usage: {OUTPUT_PROGRAM} <bytes>"))
            }
            _ => Self::Noop,
        }
    }
}

/// Executes runs in memory.
#[derive(Clone, Debug)]
pub(crate) struct SimExecutor {
    /// Sent in slices for `bench-output`.
    pattern: Pattern,
    /// Written to stdout by every other command; usually empty.
    reply: Arc<[u8]>,
}

impl SimExecutor {
    /// An executor that streams `pattern` for output runs and answers every
    /// other run with `reply_bytes` bytes of output.
    pub(crate) fn new(pattern: Pattern, reply_bytes: usize) -> Self {
        let reply = b"ok\n".iter().copied().cycle().take(reply_bytes).collect();
        Self { pattern, reply }
    }

    /// Streams `bytes` bytes of the pattern; false if cancelled half-way.
    async fn stream(&self, sink: &RunSink, bytes: u64, cancel: &CancellationToken) -> bool {
        let block = &self.pattern.block;
        let mut remaining = bytes;
        while remaining > 0 {
            if cancel.is_cancelled() {
                return false;
            }
            let len = usize::try_from(remaining).map_or(block.len(), |r| r.min(block.len()));
            sink.output(OutputStream::Stdout, &block[..len]).await;
            remaining -= len as u64;
        }
        true
    }
}

#[async_trait::async_trait]
impl Executor for SimExecutor {
    async fn execute(
        &self,
        start: RunStart,
        sink: RunSink,
        cancel: CancellationToken,
    ) -> RunExited {
        let outcome = match SimCommand::parse(&start.command) {
            SimCommand::Invalid(error) => return exited(&start, RunOutcome::Failed, Some(error)),
            SimCommand::Noop => {
                sink.started(SIM_PID).await;
                sink.output(OutputStream::Stdout, &self.reply).await;
                RunOutcome::Completed
            }
            SimCommand::Output(bytes) => {
                sink.started(SIM_PID).await;
                match self.stream(&sink, bytes, &cancel).await {
                    true => RunOutcome::Completed,
                    false => RunOutcome::Cancelled,
                }
            }
        };
        drop(sink);
        exited(&start, outcome, None)
    }
}

fn exited(start: &RunStart, outcome: RunOutcome, error: Option<String>) -> RunExited {
    RunExited {
        run: start.run,
        outcome,
        exit_code: (outcome == RunOutcome::Completed).then_some(0),
        signal: None,
        error,
        error_code: None,
        output_truncated: false,
    }
}

#[cfg(test)]
mod tests {
    use muster_agent::Outgoing;
    use muster_proto::RunId;

    use super::*;

    fn start(argv: &[&str]) -> RunStart {
        RunStart {
            run: RunId::generate(),
            command: CommandSpec::Argv(argv.iter().map(|s| (*s).to_owned()).collect()),
            env: Default::default(),
            cwd: None,
            timeout_ms: None,
            kill_grace_ms: 1_000,
            output_cap_bytes: u64::MAX,
            session: None,
        }
    }

    #[test]
    fn commands_parse() {
        let parse = |argv: &[&str]| SimCommand::parse(&start(argv).command);
        assert_eq!(parse(&[NOOP_PROGRAM]), SimCommand::Noop);
        assert_eq!(parse(&[OUTPUT_PROGRAM, "12"]), SimCommand::Output(12));
        assert!(matches!(
            parse(&[OUTPUT_PROGRAM, "x"]),
            SimCommand::Invalid(_)
        ));
        assert!(matches!(parse(&[OUTPUT_PROGRAM]), SimCommand::Invalid(_)));
    }

    #[test]
    fn pattern_checks_offsets() {
        let pattern = Pattern::new(1000);
        let stream: Vec<u8> = (0..3000)
            .map(|i| ((i % 1000) % PATTERN_PERIOD) as u8)
            .collect();
        assert!(pattern.matches(0, &stream));
        assert!(pattern.matches(990, &stream[990..2010]));
        assert!(!pattern.matches(991, &stream[990..2010]));
    }

    #[tokio::test]
    async fn output_run_streams_every_byte_in_order() {
        let executor = SimExecutor::new(Pattern::new(4096), 0);
        let start = start(&[OUTPUT_PROGRAM, "100000"]);
        let (sink, mut rx) = RunSink::channel(start.run, u64::MAX, 64);
        let exited = executor
            .execute(start, sink, CancellationToken::new())
            .await;
        assert_eq!(
            (exited.outcome, exited.exit_code),
            (RunOutcome::Completed, Some(0))
        );
        let pattern = Pattern::new(4096);
        let mut total = 0;
        while let Some(outgoing) = rx.recv().await {
            if let Outgoing::Output(frame) = outgoing {
                assert_eq!(frame.header.offset, total);
                assert!(pattern.matches(frame.header.offset, &frame.payload));
                total += frame.payload.len() as u64;
            }
        }
        assert_eq!(total, 100_000);
    }
}
