//! The spool: every per-run message, in order, until the hub acknowledges it.
//!
//! Run tasks append `run.started`, output frames and `run.exited`; each entry
//! gets the next number of one agent-wide sequence, which is the order they are
//! sent in. A connection reads the spool through its own [`Cursor`], which starts
//! at the beginning, so after every reconnect (after `connection.ack`) the
//! unacknowledged entries go out again, in their original order, before anything
//! new. Entries leave the spool only when a `run.ack` covers them — never
//! because the hub is unreachable.
//!
//! The spool is bounded by [`Spool::new`]'s `max_bytes`, counted as payload
//! bytes plus [`ENTRY_OVERHEAD_BYTES`] per entry. Appending waits for room,
//! which stops the run's batcher and then its pipe readers: a command that
//! outpaces the hub is slowed down, and no byte is dropped. Only run tasks
//! append; the connection task never waits for room, because it is the one
//! that reads the acks that make room.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

use muster_proto::RunId;
use muster_proto::messages::RunAck;
use tokio::sync::{Notify, Semaphore};

use crate::sink::Outgoing;

/// Default bound on the spool: 64 MiB of output payload, about 6 500 full
/// chunks. It covers a long hub outage for chatty commands; past it, commands
/// wait for the hub instead of the agent growing without bound.
pub const SPOOL_MAX_BYTES: usize = 64 * 1024 * 1024;

/// What each entry costs besides its payload, so that `run.started`,
/// `run.exited` and floods of tiny frames are bounded too.
const ENTRY_OVERHEAD_BYTES: usize = 64;

/// A connection's position in the spool: the number of the next entry to send.
#[derive(Debug, Default)]
pub(crate) struct Cursor(u64);

/// Per-run messages not yet acknowledged by the hub.
#[derive(Debug)]
pub(crate) struct Spool {
    /// A std `Mutex`: it is held for map operations only, never across an `.await`.
    state: Mutex<State>,
    /// One permit per byte of room; appends take their cost, acks give it back.
    /// Its queue is fair, so appends are admitted in arrival order.
    room: Semaphore,
    /// Wakes the connection when an entry is appended.
    appended: Notify,
    /// The most any single entry is charged, so one entry always fits.
    max_cost: usize,
}

#[derive(Debug, Default)]
struct State {
    /// Entries by their number in the agent-wide sequence.
    entries: BTreeMap<u64, Entry>,
    /// Each run's entry numbers, oldest first, and whether its exit is spooled.
    runs: HashMap<RunId, RunEntries>,
    next_number: u64,
}

#[derive(Debug)]
struct Entry {
    outgoing: Outgoing,
    cost: usize,
}

#[derive(Debug, Default)]
struct RunEntries {
    numbers: VecDeque<u64>,
    exited: bool,
}

impl Spool {
    /// An empty spool that holds at most `max_bytes` (but always one entry).
    pub(crate) fn new(max_bytes: usize) -> Self {
        let capacity = max_bytes.clamp(1, Semaphore::MAX_PERMITS);
        // One acquisition takes at most `u32::MAX` permits.
        let max_cost = capacity.min(u32::MAX as usize);
        Self {
            state: Mutex::default(),
            room: Semaphore::new(capacity),
            appended: Notify::new(),
            max_cost,
        }
    }

    /// Appends `outgoing`, waiting while the spool is full.
    pub(crate) async fn push(&self, outgoing: Outgoing) {
        let cost = self.cost(&outgoing);
        let permits = u32::try_from(cost).expect("costs are clamped to u32");
        // The semaphore is never closed, so this only ever waits.
        if let Ok(permit) = self.room.acquire_many(permits).await {
            permit.forget();
        }
        let mut state = self.lock();
        let number = state.next_number;
        state.next_number += 1;
        let run_entries = state.runs.entry(run_of(&outgoing)).or_default();
        run_entries.numbers.push_back(number);
        run_entries.exited |= matches!(outgoing, Outgoing::Exited(_));
        state.entries.insert(number, Entry { outgoing, cost });
        drop(state);
        self.appended.notify_one();
    }

    /// The next entry at or after `cursor`, advancing it; waits for one.
    ///
    /// Cancel-safe: the cursor moves only when an entry is returned.
    pub(crate) async fn next(&self, cursor: &mut Cursor) -> Outgoing {
        loop {
            if let Some(outgoing) = self.try_next(cursor) {
                return outgoing;
            }
            // `notify_one` stores a permit when nobody waits, so an append
            // between `try_next` and here is not missed.
            self.appended.notified().await;
        }
    }

    /// The next entry at or after `cursor`, if there is one; advances it.
    pub(crate) fn try_next(&self, cursor: &mut Cursor) -> Option<Outgoing> {
        let state = self.lock();
        let (&number, entry) = state.entries.range(cursor.0..).next()?;
        cursor.0 = number + 1;
        Some(entry.outgoing.clone())
    }

    /// Drops what `ack` covers; returns whether it settled the run's exit
    /// report, which was spooled and is now dropped with everything else of it.
    pub(crate) fn ack(&self, ack: &RunAck) -> bool {
        let mut state = self.lock();
        let State { entries, runs, .. } = &mut *state;
        let Some(run_entries) = runs.get_mut(&ack.run) else {
            return false;
        };
        let mut freed = 0;
        while let Some(&number) = run_entries.numbers.front() {
            let entry = &entries[&number];
            if !(ack.exited || acked_by(&entry.outgoing, ack.next_seq)) {
                break;
            }
            freed += entries.remove(&number).map_or(0, |entry| entry.cost);
            run_entries.numbers.pop_front();
        }
        let settled = ack.exited && run_entries.exited;
        if run_entries.numbers.is_empty() {
            runs.remove(&ack.run);
        }
        drop(state);
        self.room.add_permits(freed);
        settled
    }

    /// Runs whose `run.exited` is spooled, not yet acknowledged.
    pub(crate) fn finished_runs(&self) -> Vec<RunId> {
        let state = self.lock();
        let finished = state.runs.iter().filter(|(_, entries)| entries.exited);
        finished.map(|(run, _)| *run).collect()
    }

    /// Whether every entry has been acknowledged.
    pub(crate) fn is_empty(&self) -> bool {
        self.lock().entries.is_empty()
    }

    fn cost(&self, outgoing: &Outgoing) -> usize {
        let payload = match outgoing {
            Outgoing::Output(frame) => frame.payload.len(),
            Outgoing::Started(_) | Outgoing::Exited(_) => 0,
        };
        (payload + ENTRY_OVERHEAD_BYTES).min(self.max_cost)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("spool lock poisoned")
    }
}

/// Whether an ack with `next_seq` covers `outgoing` (not counting `exited`).
/// Any ack of a run means its `run.started` is stored.
fn acked_by(outgoing: &Outgoing, next_seq: u64) -> bool {
    match outgoing {
        Outgoing::Started(_) => true,
        Outgoing::Output(frame) => frame.header.seq < next_seq,
        Outgoing::Exited(_) => false,
    }
}

fn run_of(outgoing: &Outgoing) -> RunId {
    match outgoing {
        Outgoing::Started(started) => started.run,
        Outgoing::Output(frame) => frame.header.run,
        Outgoing::Exited(exited) => exited.run,
    }
}

#[cfg(test)]
mod tests;
