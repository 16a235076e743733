//! The writer: the only task that writes to the store.
//!
//! It takes every batch the engine has finished (merging the ones queued up
//! while it was busy into one transaction, up to a bound, so the more load
//! the fewer commits per change), commits, and only then carries out the
//! batches' effects, in order: publish, answer, send to agents, acknowledge.
//!
//! A commit that fails produces no effect. The writer keeps the batch and
//! commits it again, backing off, until it succeeds: the hub reports itself
//! unavailable meanwhile ([`Health`]), new requests are refused with
//! `STORAGE_UNAVAILABLE` at the door, and everything in flight waits,
//! because the engine's memory is already ahead of the store and nothing of
//! it may be seen before the store holds it. When the disk has room again
//! the same batch commits and everything carries on where it stopped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use muster_proto::Envelope;
use tokio::sync::mpsc;

use crate::broker::{Broker, Delivery, Frame};
use crate::engine::{Batch, Effect, Input, MAX_FRAMES_PER_BATCH};
use crate::outbound::Outbound;
use crate::store::{Change, Store};

/// Batches the engine may finish ahead of the writer: beyond this it waits,
/// and with it every connection that feeds it.
pub(crate) const QUEUED_BATCHES: usize = 64;
/// Most changes merged into one transaction.
const MAX_CHANGES_PER_COMMIT: usize = 16_384;
/// First wait before a failed commit is tried again; it doubles up to the ceiling.
const RETRY_FIRST: Duration = Duration::from_millis(50);
/// Longest wait between two tries of a failed commit.
const RETRY_CEILING: Duration = Duration::from_secs(2);

/// Whether the store takes writes; shared with the HTTP and WebSocket edges.
#[derive(Debug)]
pub struct Health {
    writable: AtomicBool,
    failed_commits: AtomicU64,
    commits: AtomicU64,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            writable: AtomicBool::new(true),
            failed_commits: AtomicU64::new(0),
            commits: AtomicU64::new(0),
        }
    }
}

impl Health {
    /// Whether the last commit succeeded.
    pub fn writable(&self) -> bool {
        self.writable.load(Ordering::Relaxed)
    }

    /// Commits that succeeded, and tries that failed, since the start.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.commits.load(Ordering::Relaxed),
            self.failed_commits.load(Ordering::Relaxed),
        )
    }
}

/// Commits batches and carries out their effects until the engine is gone.
pub(crate) async fn run(
    store: Arc<dyn Store>,
    broker: Arc<dyn Broker>,
    mut batches: mpsc::Receiver<Batch>,
    feedback: mpsc::WeakUnboundedSender<Input>,
    health: Arc<Health>,
) {
    while let Some(first) = batches.recv().await {
        let (mut size, mut frames) = (first.changes.len(), first.frames);
        let mut taken = vec![first];
        while size < MAX_CHANGES_PER_COMMIT && frames < MAX_FRAMES_PER_BATCH {
            let Ok(next) = batches.try_recv() else { break };
            size += next.changes.len();
            frames += next.frames;
            taken.push(next);
        }
        let changes: Vec<Change> = taken
            .iter_mut()
            .flat_map(|batch| std::mem::take(&mut batch.changes))
            .collect();
        if !changes.is_empty() {
            commit(&*store, Arc::new(changes), &health).await;
        }
        for batch in taken {
            for effect in batch.effects {
                carry_out(&*broker, &feedback, effect);
            }
        }
    }
}

/// Commits `changes`, trying again until it works.
async fn commit(store: &dyn Store, changes: Arc<Vec<Change>>, health: &Health) {
    let mut wait = RETRY_FIRST;
    loop {
        match store.commit(changes.clone()).await {
            Ok(()) => {
                health.commits.fetch_add(1, Ordering::Relaxed);
                if !health.writable.swap(true, Ordering::Relaxed) {
                    tracing::warn!("the store takes writes again; carrying on");
                }
                return;
            }
            Err(e) => {
                health.failed_commits.fetch_add(1, Ordering::Relaxed);
                if health.writable.swap(false, Ordering::Relaxed) {
                    tracing::error!(
                        error = %format!("{e:#}"),
                        changes = changes.len(),
                        "committing to the store failed; refusing new requests and retrying"
                    );
                } else {
                    tracing::debug!(error = %format!("{e:#}"), "commit retry failed");
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(RETRY_CEILING);
            }
        }
    }
}

fn carry_out(broker: &dyn Broker, feedback: &mpsc::WeakUnboundedSender<Input>, effect: Effect) {
    match effect {
        Effect::Event { channel, msg, last } => {
            let text = Envelope::event(channel.to_string(), *msg).encode();
            broker.publish(Delivery {
                channel: channel.into(),
                seq: None,
                frame: Frame::text(text),
                last,
            });
        }
        Effect::Raw(delivery) => broker.publish(delivery),
        Effect::Reply(to, reply) => to.send(Outbound::Reply(reply)),
        Effect::ToAgent(to, msg) => to.send(Outbound::Agent(Box::new(msg))),
        Effect::Close(control, code, reason) => control.close(code, &reason),
        Effect::Notify(notify) => notify(),
        Effect::ReleaseKeys(runs, jobs) => {
            if let Some(engine) = feedback.upgrade() {
                let _ = engine.send(Input::ReleaseKeys(runs, jobs));
            }
        }
    }
}
