//! The seam between the connection and whatever executes runs.
//!
//! The agent hands each `run.start` to an [`Executor`] together with a
//! [`RunSink`] for its output and a cancellation token for `run.cancel`. The
//! real implementation is [`ProcessExecutor`](crate::ProcessExecutor); the load
//! generator plugs in a simulated one that answers without spawning anything.
//! `drive` wraps one execution so that every message of a run enters the
//! agent's spool in protocol order: `run.started`, output frames, `run.exited`.

use std::sync::Arc;

use muster_proto::messages::{RunExited, RunStart};
use tokio_util::sync::CancellationToken;

use crate::sink::{Outgoing, Outlet, RunSink};
use crate::spool::Spool;

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
}

/// Executes `start` on `executor` and appends its messages to `spool` in order.
pub(crate) async fn drive(
    executor: Arc<dyn Executor>,
    start: RunStart,
    cancel: CancellationToken,
    spool: Arc<Spool>,
) {
    let run = start.run;
    let outlet = Outlet::Spool(spool.clone());
    let (sink, batcher) = RunSink::new(run, start.output_cap_bytes, outlet);
    // The batcher ends once the sink is dropped, which `execute` does on return,
    // so the exit report is queued after the last output frame.
    let (mut exited, truncated) =
        tokio::join!(executor.execute(start, sink, cancel), batcher.run());
    exited.run = run;
    exited.output_truncated |= truncated;
    spool.push(Outgoing::Exited(exited)).await;
}
