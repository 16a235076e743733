//! The seam between the connection and whatever executes runs.
//!
//! The agent hands each `run.start` to an [`Executor`] together with a
//! [`RunSink`] for its output and a cancellation token for `run.cancel`; a
//! session's `run.start` also comes with a [`SessionInbox`] of what to write
//! to the process and how to size its terminal. The real implementation is
//! [`ProcessExecutor`](crate::ProcessExecutor); the load generator plugs in
//! a simulated one that answers without spawning anything. `drive` wraps one
//! execution so that every message of a run enters the agent's spool in
//! protocol order: `run.started`, output frames, `run.exited`.

use std::sync::Arc;

use bytes::Bytes;
use muster_proto::messages::{RunExited, RunOutcome, RunStart};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::session::SessionParts;
use crate::sink::{Outgoing, Outlet, RunSink};
use crate::spool::Spool;

/// The exit report's error of a session on an executor that runs none.
pub const SESSIONS_UNSUPPORTED: &str = "this agent's executor does not run sessions";

/// Something that executes runs.
#[async_trait::async_trait]
pub trait Executor: Send + Sync + 'static {
    /// Executes one run to completion, reporting through `sink`; returns how it ended.
    ///
    /// Call [`RunSink::started`] once the run is under way (never when it could
    /// not start), and [`RunSink::output`] for each piece of output. When
    /// `cancel` fires, stop the run and report it `cancelled`. Every clone of
    /// `sink` must be dropped by the time this returns, because the run's
    /// `run.exited` waits until its last output frame is spooled.
    async fn execute(&self, start: RunStart, sink: RunSink, cancel: CancellationToken)
    -> RunExited;

    /// Executes a session (`start.session` is set) as [`Executor::execute`]
    /// executes a run, and also carries out what `inbox` yields, in order:
    /// write bytes to the process's input, resize its terminal. Input and
    /// output both count as activity for the session's idle timeout.
    ///
    /// `inbox` must be dropped when the process has ended: what feeds it
    /// holds a sink until then. The default refuses sessions: the run is
    /// reported `failed` without starting.
    async fn execute_session(
        &self,
        start: RunStart,
        sink: RunSink,
        inbox: SessionInbox,
        cancel: CancellationToken,
    ) -> RunExited {
        drop((sink, inbox, cancel));
        RunExited {
            run: start.run,
            outcome: RunOutcome::Failed,
            exit_code: None,
            signal: None,
            error: Some(SESSIONS_UNSUPPORTED.to_owned()),
            error_code: None,
            output_truncated: false,
        }
    }
}

/// What a session's process is asked to do, in the order it must happen.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionCommand {
    /// Write these bytes to the process's input (the pty, or stdin), whole.
    Write(Bytes),
    /// Set the pty's window size; the kernel tells the process with SIGWINCH.
    Resize {
        /// Width in columns.
        cols: u16,
        /// Height in rows.
        rows: u16,
    },
}

/// The commands for one session's process, already checked and de-duplicated.
#[derive(Debug)]
pub struct SessionInbox {
    /// Bounded: an executor that stops taking commands holds the inputs back.
    commands_rx: mpsc::Receiver<SessionCommand>,
}

impl SessionInbox {
    /// An inbox fed by the returned sender, which holds up to `capacity`
    /// commands; for tools and tests that drive an [`Executor`] directly.
    pub fn channel(capacity: usize) -> (mpsc::Sender<SessionCommand>, Self) {
        let (commands_tx, commands_rx) = mpsc::channel(capacity);
        (commands_tx, Self::new(commands_rx))
    }

    pub(crate) fn new(commands_rx: mpsc::Receiver<SessionCommand>) -> Self {
        Self { commands_rx }
    }

    /// The next command; `None` once nothing more will come.
    pub async fn recv(&mut self) -> Option<SessionCommand> {
        self.commands_rx.recv().await
    }
}

/// Executes `start` on `executor` and appends its messages to `spool` in order.
pub(crate) async fn drive(
    executor: Arc<dyn Executor>,
    start: RunStart,
    session: Option<SessionParts>,
    cancel: CancellationToken,
    spool: Arc<Spool>,
) {
    let run = start.run;
    let outlet = Outlet::Spool(spool.clone());
    let cap = start.output_cap_bytes;
    // The batcher ends once every sink is dropped, which `execute` does on
    // return (and the applier once the process ended), so the exit report is
    // queued after the last output frame.
    let (mut exited, truncated) = match session {
        None => {
            let (sink, batcher) = RunSink::new(run, cap, outlet, None);
            tokio::join!(executor.execute(start, sink, cancel), batcher.run())
        }
        Some(parts) => {
            let (sink, batcher, applier, inbox) = parts.wire(run, cap, outlet);
            let execution = executor.execute_session(start, sink, inbox, cancel);
            let (exited, truncated, ()) = tokio::join!(execution, batcher.run(), applier.run());
            (exited, truncated)
        }
    };
    exited.run = run;
    exited.output_truncated |= truncated;
    spool.push(Outgoing::Exited(exited)).await;
}
