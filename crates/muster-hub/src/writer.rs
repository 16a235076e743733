//! The writer: the only task that writes to the store.
//!
//! It takes every batch the engine has finished (merging the ones queued up
//! while it was busy into one transaction, up to a bound, so the more load
//! the fewer commits per change), commits, and only then carries out the
//! batches' effects, in order: publish, answer, send to agents, acknowledge.
//!
//! A commit that fails produces no effect. The writer keeps the batch and
//! commits it again, backing off, until it succeeds: the hub reports itself
//! unavailable meanwhile ([`Health`]), new requests that would change state
//! are refused with `STORAGE_UNAVAILABLE` at the door, agent connections stop
//! reading (their agents keep what they have not sent, and their commands
//! slow down), and everything already in flight waits, because the engine's
//! memory is ahead of the store and nothing of it may be seen before the
//! store holds it. Batches the engine finishes meanwhile join the failed
//! one, so the engine itself never waits: handshakes, agent listings and
//! reads of history go on. When the disk has room again the whole commits
//! and everything carries on where it stopped.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use muster_proto::{Channel, Envelope, HubToClient};
use tokio::sync::{Notify, mpsc};

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
    writable_again: Notify,
    failed_commits: AtomicU64,
    commits: AtomicU64,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            writable: AtomicBool::new(true),
            writable_again: Notify::new(),
            failed_commits: AtomicU64::new(0),
            commits: AtomicU64::new(0),
        }
    }
}

impl Health {
    /// Whether the last commit succeeded.
    pub fn writable(&self) -> bool {
        self.writable.load(Ordering::Acquire)
    }

    /// Resolves once the store takes writes (at once if it does).
    pub async fn until_writable(&self) {
        loop {
            let again = self.writable_again.notified();
            tokio::pin!(again);
            again.as_mut().enable();
            if self.writable() {
                return;
            }
            again.await;
        }
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
        let mut taken = Taken::new(first);
        while taken.size < MAX_CHANGES_PER_COMMIT && taken.frames < MAX_FRAMES_PER_BATCH {
            let Ok(next) = batches.try_recv() else { break };
            taken.add(next);
        }
        commit(&*store, &mut taken, &mut batches, &health).await;
        for effect in taken.effects {
            carry_out(&*broker, &feedback, effect);
        }
    }
}

/// The batches one commit covers: their changes, and their effects in order.
struct Taken {
    changes: Arc<Vec<Change>>,
    effects: Vec<Effect>,
    size: usize,
    frames: usize,
}

impl Taken {
    fn new(first: Batch) -> Self {
        let mut taken = Self {
            changes: Arc::new(Vec::new()),
            effects: Vec::new(),
            size: 0,
            frames: 0,
        };
        taken.add(first);
        taken
    }

    fn add(&mut self, batch: Batch) {
        self.size += batch.changes.len();
        self.frames += batch.frames;
        Arc::make_mut(&mut self.changes).extend(batch.changes);
        self.effects.extend(batch.effects);
    }
}

/// Commits what `taken` holds, trying again until it works. While it does
/// not, batches the engine finishes meanwhile join the same commit, so the
/// engine is never held up by a store that cannot write; the connections
/// that feed it changes (agents) stop reading instead, see `Health`.
async fn commit(
    store: &dyn Store,
    taken: &mut Taken,
    batches: &mut mpsc::Receiver<Batch>,
    health: &Health,
) {
    if taken.changes.is_empty() {
        return;
    }
    let mut wait = RETRY_FIRST;
    loop {
        match store.commit(taken.changes.clone()).await {
            Ok(()) => {
                health.commits.fetch_add(1, Ordering::Relaxed);
                if !health.writable.swap(true, Ordering::AcqRel) {
                    tracing::warn!("the store takes writes again; carrying on");
                    health.writable_again.notify_waiters();
                }
                return;
            }
            Err(e) => {
                health.failed_commits.fetch_add(1, Ordering::Relaxed);
                if health.writable.swap(false, Ordering::AcqRel) {
                    tracing::error!(
                        error = %format!("{e:#}"),
                        changes = taken.changes.len(),
                        "committing to the store failed; refusing new requests and retrying"
                    );
                } else {
                    tracing::debug!(error = %format!("{e:#}"), "commit retry failed");
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(RETRY_CEILING);
                while let Ok(next) = batches.try_recv() {
                    taken.add(next);
                }
            }
        }
    }
}

/// An agent's presence on `fleet` is state: a subscriber that falls behind
/// needs only the latest of each agent (see `queue`).
fn presence_key(channel: &Channel, msg: &HubToClient) -> Option<Arc<str>> {
    let agent = match (channel, msg) {
        (Channel::Fleet, HubToClient::AgentStatus(status)) => &status.agent.name,
        (Channel::Fleet, HubToClient::AgentRemoved(removed)) => &removed.name,
        _ => return None,
    };
    Some(Arc::from(agent.as_str()))
}

fn carry_out(broker: &dyn Broker, feedback: &mpsc::WeakUnboundedSender<Input>, effect: Effect) {
    match effect {
        Effect::Event { channel, msg, last } => {
            // Room for the longest name (`session:` and a ULID, or
            // `metrics:` and a 64-character agent name) without growing.
            let mut name = String::with_capacity(80);
            let _ = write!(name, "{channel}");
            if !broker.wants(&name) {
                return; // nobody would receive it: not even encoded
            }
            let key = presence_key(&channel, &msg);
            let envelope = Envelope::event(name, *msg);
            let text = envelope.encode();
            broker.publish(Delivery {
                channel: envelope.channel.unwrap_or_default().into(),
                seq: None,
                frame: Frame::text(text),
                last,
                key,
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
        Effect::ContinueJob(job) => {
            if let Some(engine) = feedback.upgrade() {
                let _ = engine.send(Input::ContinueJob(job));
            }
        }
    }
}
