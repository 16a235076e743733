//! The seam between the connection and whatever executes runs.
//!
//! The agent hands each `run.start` to an [`Executor`] together with a
//! [`RunSink`] for its output and a cancellation token for `run.cancel`. The
//! real implementation is [`ProcessExecutor`](crate::ProcessExecutor); the load
//! generator plugs in a simulated one that answers without spawning anything.
//! `drive` wraps one execution so that every message of a run reaches the
//! connection in protocol order: `run.started`, output frames, `run.exited`.

use std::sync::Arc;

use muster_proto::messages::{RunExited, RunStart};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::sink::{Outgoing, RunSink};

/// Something that executes runs.
#[async_trait::async_trait]
pub trait Executor: Send + Sync + 'static {
    /// Executes one run to completion, reporting through `sink`; returns how it ended.
    ///
    /// Call [`RunSink::started`] once the run is under way (never when it could
    /// not start), and [`RunSink::output`] for each piece of output. When
    /// `cancel` fires, stop the run and report it `cancelled`. Every clone of
    /// `sink` must be dropped by the time this returns, because the run's
    /// `run.exited` waits until its last output frame is sent.
    async fn execute(&self, start: RunStart, sink: RunSink, cancel: CancellationToken)
    -> RunExited;
}

/// Executes `start` on `executor` and sends its messages to `outgoing_tx` in order.
pub(crate) async fn drive(
    executor: Arc<dyn Executor>,
    start: RunStart,
    cancel: CancellationToken,
    outgoing_tx: mpsc::Sender<Outgoing>,
) {
    let run = start.run;
    let (sink, batcher) = RunSink::new(run, start.output_cap_bytes, outgoing_tx.clone());
    // The batcher ends once the sink is dropped, which `execute` does on return,
    // so the exit report is queued after the last output frame.
    let (mut exited, truncated) =
        tokio::join!(executor.execute(start, sink, cancel), batcher.run());
    exited.run = run;
    exited.output_truncated |= truncated;
    // A send error means the agent is stopping and nobody reads any more.
    let _ = outgoing_tx.send(Outgoing::Exited(exited)).await;
}
