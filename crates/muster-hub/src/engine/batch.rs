//! What one pass of the engine produces: the changes to commit and the
//! effects that may only follow the commit.
//!
//! The engine appends to a [`BatchBuilder`] as it handles inputs; the hub's
//! writer takes the finished [`Batch`], commits its changes in one
//! transaction, and only then carries its effects out, in order. Changes to
//! one run are coalesced: however many transitions a run goes through in one
//! batch, it is written once, in its latest state.

use std::collections::{BTreeMap, HashSet};

use muster_proto::messages::RunAck;
use muster_proto::{Channel, HubToAgent, HubToClient, RunId, RunInfo};

use crate::broker::{Delivery, Subscriber};
use crate::engine::presence::ConnControl;
pub use crate::outbound::Reply;
use crate::store::{Change, RunUpdate};

/// A client connection's queue, where replies go.
pub type ReplyTo = Subscriber;

/// Something to do once the batch is committed.
pub enum Effect {
    /// Publish an event on a channel; encoded once for every subscriber.
    Event {
        /// Where.
        channel: Channel,
        /// What.
        msg: Box<HubToClient>,
        /// Nothing follows on the channel (a run's or job's final event).
        last: bool,
    },
    /// Publish bytes as they are: output frames, stored job events.
    Raw(Delivery),
    /// Answer a client.
    Reply(ReplyTo, Box<Reply>),
    /// Send a message to one agent connection.
    ToAgent(ReplyTo, HubToAgent),
    /// Close a connection.
    Close(ConnControl, u16, String),
    /// Run a closure (wake someone waiting for the commit).
    Notify(Box<dyn FnOnce() + Send>),
    /// Tell the engine the batch is committed: the idempotency keys of
    /// these runs and jobs may now be found in the store.
    ReleaseKeys(Vec<RunId>, Vec<muster_proto::JobId>),
    /// Tell the engine the batch is committed: this job may start more targets.
    ContinueJob(muster_proto::JobId),
}

impl std::fmt::Debug for Effect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Event { channel, msg, .. } => write!(f, "Event({channel}, {msg:?})"),
            Self::Raw(d) => write!(f, "Raw({}, {:?})", d.channel, d.seq),
            Self::Reply(_, reply) => write!(f, "Reply({reply:?})"),
            Self::ToAgent(_, msg) => write!(f, "ToAgent({msg:?})"),
            Self::Close(_, code, reason) => write!(f, "Close({code}, {reason})"),
            Self::Notify(_) => f.write_str("Notify"),
            Self::ReleaseKeys(runs, jobs) => write!(f, "ReleaseKeys({runs:?}, {jobs:?})"),
            Self::ContinueJob(job) => write!(f, "ContinueJob({job})"),
        }
    }
}

/// Output frames one batch holds at most: each is published to every
/// subscriber of its run at once after the commit, so this bounds the burst
/// a subscriber's queue must absorb (`client_queue_frames` is at least twice
/// this).
pub const MAX_FRAMES_PER_BATCH: usize = 64;

/// A finished batch.
#[derive(Debug, Default)]
pub struct Batch {
    /// Committed in one transaction.
    pub changes: Vec<Change>,
    /// Carried out after the commit, in order.
    pub effects: Vec<Effect>,
    /// Output frames stored (and published) by it.
    pub frames: usize,
}

impl Batch {
    /// Whether there is nothing to commit and nothing to do.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.effects.is_empty()
    }
}

/// The batch being built.
#[derive(Default)]
pub(crate) struct BatchBuilder {
    changes: Vec<Change>,
    effects: Vec<Effect>,
    /// Runs created in this batch: inserted at the end, in their latest state.
    new_runs: Vec<RunId>,
    /// Runs changed in this batch (not new): updated at the end.
    dirty_runs: HashSet<RunId>,
    /// Output stored for these runs: acknowledge up to this seq.
    acks: BTreeMap<RunId, (ReplyTo, u64)>,
    /// Runs that ended in this batch.
    ended: Vec<RunId>,
    /// Output frames stored in this batch.
    frames: usize,
    /// Jobs that ended in this batch.
    ended_jobs: Vec<muster_proto::JobId>,
}

impl BatchBuilder {
    /// Adds a change.
    pub(crate) fn change(&mut self, change: Change) {
        if matches!(change, Change::AppendOutput(..)) {
            self.frames += 1;
        }
        self.changes.push(change);
    }

    /// Whether the batch holds as many output frames as one may.
    pub(crate) fn is_full(&self) -> bool {
        self.frames >= MAX_FRAMES_PER_BATCH
    }

    /// Adds an effect.
    pub(crate) fn effect(&mut self, effect: Effect) {
        self.effects.push(effect);
    }

    /// How many effects the batch holds, to insert one before later ones.
    pub(crate) fn effects_len(&self) -> usize {
        self.effects.len()
    }

    /// Inserts an effect at `index`, before the ones added since.
    pub(crate) fn insert_effect(&mut self, index: usize, effect: Effect) {
        self.effects.insert(index.min(self.effects.len()), effect);
    }

    /// Publishes an event after the commit.
    pub(crate) fn event(&mut self, channel: Channel, msg: HubToClient) {
        self.effects.push(Effect::Event {
            channel,
            msg: Box::new(msg),
            last: false,
        });
    }

    /// Answers a client after the commit.
    pub(crate) fn reply(&mut self, to: &ReplyTo, reply: Reply) {
        self.effects
            .push(Effect::Reply(to.clone(), Box::new(reply)));
    }

    /// Sends a message to an agent connection after the commit.
    pub(crate) fn send_agent(&mut self, to: &ReplyTo, msg: HubToAgent) {
        self.effects.push(Effect::ToAgent(to.clone(), msg));
    }

    /// A run was created: it is inserted in its latest state.
    pub(crate) fn new_run(&mut self, id: RunId) {
        self.new_runs.push(id);
    }

    /// A run changed: it is written in its latest state.
    pub(crate) fn run_changed(&mut self, id: RunId) {
        self.dirty_runs.insert(id);
    }

    /// A run ended; its key is released once this batch is committed.
    pub(crate) fn run_ended(&mut self, id: RunId) {
        self.ended.push(id);
    }

    /// A job ended; its key is released once this batch is committed.
    pub(crate) fn job_ended(&mut self, id: muster_proto::JobId) {
        self.ended_jobs.push(id);
    }

    /// Acknowledges a run's output up to `next_seq` on `to` after the commit.
    pub(crate) fn ack(&mut self, to: &ReplyTo, run: RunId, next_seq: u64) {
        self.acks.insert(run, (to.clone(), next_seq));
    }

    /// Whether anything was added since the last [`BatchBuilder::finish`].
    pub(crate) fn is_empty(&self) -> bool {
        self.changes.is_empty()
            && self.effects.is_empty()
            && self.new_runs.is_empty()
            && self.dirty_runs.is_empty()
            && self.acks.is_empty()
    }

    /// Ends the batch. `lookup` gives the latest record of every run that
    /// changed in it, including the runs that ended.
    pub(crate) fn finish<'a>(&mut self, lookup: impl Fn(RunId) -> Option<&'a RunInfo>) -> Batch {
        let mut batch = Batch {
            changes: std::mem::take(&mut self.changes),
            effects: std::mem::take(&mut self.effects),
            frames: std::mem::take(&mut self.frames),
        };
        for id in std::mem::take(&mut self.new_runs) {
            self.dirty_runs.remove(&id);
            if let Some(run) = lookup(id) {
                batch.changes.push(Change::InsertRun(Box::new(run.clone())));
            }
        }
        for id in std::mem::take(&mut self.dirty_runs) {
            if let Some(run) = lookup(id) {
                batch
                    .changes
                    .push(Change::UpdateRun(Box::new(RunUpdate::of(run))));
            }
        }
        for (run, (to, next_seq)) in std::mem::take(&mut self.acks) {
            let ack = RunAck {
                run,
                next_seq,
                exited: false,
            };
            batch
                .effects
                .push(Effect::ToAgent(to, HubToAgent::RunAck(ack)));
        }
        let ended = std::mem::take(&mut self.ended);
        let ended_jobs = std::mem::take(&mut self.ended_jobs);
        if !ended.is_empty() || !ended_jobs.is_empty() {
            batch.effects.push(Effect::ReleaseKeys(ended, ended_jobs));
        }
        batch
    }
}
