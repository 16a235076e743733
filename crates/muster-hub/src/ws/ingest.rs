//! The output pipeline of one agent connection: frames are stored in batches,
//! one transaction per batch, then published in order.
//!
//! The connection task hands frames over and goes back to reading, so storing
//! one batch overlaps with receiving the next. Order is kept: one task per
//! connection, FIFO. A [`Ingest::barrier`] waits until everything handed over
//! before it is stored and published; the connection uses it before a run's
//! `run.exited`, so the terminal status always follows the run's last frame.

use std::sync::Arc;

use bytes::Bytes;
use muster_proto::{AgentName, OutputFrame};
use tokio::sync::{mpsc, oneshot};

use crate::core::Core;

/// Frames waiting to be stored. Bounded: when storage falls behind, the
/// connection stops reading and the agent's own backpressure takes over.
const INGEST_QUEUE_FRAMES: usize = 512;
/// Most frames stored in one transaction (about 1.3 MiB of output).
const MAX_BATCH_FRAMES: usize = 128;

enum Item {
    Frame(Bytes, OutputFrame),
    Barrier(oneshot::Sender<()>),
}

/// Handle to one connection's pipeline; dropping it lets the task finish what
/// was handed over and stop.
pub(crate) struct Ingest {
    tx: mpsc::Sender<Item>,
}

impl Ingest {
    /// Starts the pipeline task for `agent`.
    pub(crate) fn start(core: Arc<Core>, agent: AgentName) -> Self {
        let (tx, rx) = mpsc::channel(INGEST_QUEUE_FRAMES);
        tokio::spawn(run(core, agent, rx));
        Self { tx }
    }

    /// Hands a frame over; waits only when the queue is full.
    pub(crate) async fn push(&self, raw: Bytes, frame: OutputFrame) {
        let _ = self.tx.send(Item::Frame(raw, frame)).await;
    }

    /// Waits until every frame pushed before is stored and published.
    pub(crate) async fn barrier(&self) {
        let (done_tx, done_rx) = oneshot::channel();
        if self.tx.send(Item::Barrier(done_tx)).await.is_ok() {
            let _ = done_rx.await;
        }
    }
}

async fn run(core: Arc<Core>, agent: AgentName, mut rx: mpsc::Receiver<Item>) {
    let mut batch = Vec::with_capacity(MAX_BATCH_FRAMES);
    while let Some(item) = rx.recv().await {
        let mut barriers = Vec::new();
        let mut next = Some(item);
        while let Some(item) = next.take() {
            match item {
                Item::Frame(raw, frame) => batch.push((raw, frame)),
                Item::Barrier(done) => {
                    barriers.push(done);
                    break;
                }
            }
            if batch.len() < MAX_BATCH_FRAMES {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            core.run_output(&agent, std::mem::take(&mut batch)).await;
        }
        for done in barriers {
            let _ = done.send(());
        }
    }
}
