//! A connection's queue: bounded, never blocking who sends, and holding no
//! memory while it is empty.
//!
//! Published frames, answers and agent messages wait here until the
//! connection's task writes them. A send never waits: when the queue is
//! full the connection is a slow consumer, the queue is marked overflowed,
//! and the connection closes with 4008 (everything on a stream channel is
//! stored, so it can resume). An idle hub holds one queue per connection, so
//! the queue allocates only while something waits in it, and gives back what
//! a burst made it grow to once it is empty again.
//!
//! Two kinds of item never make a connection a slow consumer:
//! - Presence is state, not a stream: an agent's status on `fleet` is queued
//!   under the agent's name, and a newer status replaces one still waiting,
//!   in its place. A client that falls behind during a storm of
//!   reconnections gets the latest state of each agent; such items do not
//!   count against the bound, since there is at most one per agent.
//! - A numbered stream (a run's output, a job's events, an agent's events)
//!   is stored before it is published, so a frame that finds the queue full
//!   is skipped rather than queued, and the queue notes the range of the
//!   channel's skipped seqs. The connection fills the hole from the store
//!   before it passes on anything later of that channel, or as soon as its
//!   queue is empty (`delivery`): a burst (a job starting ten thousand
//!   targets) neither drops the reader nor loses a frame. A run's status
//!   events are state and are skipped the same way; its final status, like
//!   every channel's last delivery, is always queued.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::outbound::Outbound;

/// Slots kept allocated when the queue empties; beyond this it shrinks.
const KEEP_SLOTS: usize = 16;

const OPEN: u8 = 0;
const OVERFLOWED: u8 = 1;
const CLOSED: u8 = 2;

struct Shared {
    /// A std `Mutex`: held only to push or pop one item.
    items: Mutex<Items>,
    ready: Notify,
    capacity: usize,
    state: AtomicU8,
}

/// What waits, in order.
#[derive(Default)]
struct Items {
    slots: VecDeque<Slot>,
    /// Slots holding an item of their own (the ones the bound counts).
    plain: usize,
    /// The latest item of each key with a slot waiting.
    keyed: HashMap<Arc<str>, Outbound>,
    /// Stream channels with frames skipped because the queue was full.
    skipped: HashMap<Arc<str>, SkippedRange>,
}

/// Whether a delivery may be skipped when the queue is full, because the
/// store or a later delivery makes up for it: frames of numbered streams,
/// and a run's status events, except every channel's last.
fn skippable(delivery: &crate::broker::Delivery) -> bool {
    if delivery.last {
        return false;
    }
    let channel = &*delivery.channel;
    match delivery.seq {
        Some(_) => ["run:", "job:", "agent:"]
            .iter()
            .any(|p| channel.starts_with(p)),
        None => channel.starts_with("run:"),
    }
}

enum Slot {
    Item(Outbound),
    Keyed(Arc<str>),
}

impl Items {
    /// Adds `item`; false if the bound is reached.
    fn push(&mut self, item: Outbound, capacity: usize) -> bool {
        if let Outbound::Delivery(delivery) = &item
            && let Some(key) = &delivery.key
        {
            match self.keyed.entry(key.clone()) {
                Entry::Occupied(mut waiting) => {
                    waiting.insert(item);
                }
                Entry::Vacant(free) => {
                    self.slots.push_back(Slot::Keyed(free.key().clone()));
                    free.insert(item);
                }
            }
            return true;
        }
        let last = matches!(&item, Outbound::Delivery(d) if d.last);
        if self.plain >= capacity && !last {
            // A channel's last delivery is queued even over the bound:
            // nothing else would stand for it.
            let delivery = match &item {
                Outbound::Delivery(delivery) => delivery,
                // A reply answers the client's own request: it may use a
                // second bound's worth of room, so a burst of stream frames
                // ahead of it does not make the client a slow consumer.
                Outbound::Reply(_) if self.plain < capacity.saturating_mul(2) => {
                    self.plain += 1;
                    self.slots.push_back(Slot::Item(item));
                    return true;
                }
                _ => return false,
            };
            if !skippable(delivery) {
                return false;
            }
            self.skipped
                .entry(delivery.channel.clone())
                .or_insert(SkippedRange::EMPTY)
                .add(delivery.seq);
            return true;
        }
        self.plain += 1;
        self.slots.push_back(Slot::Item(item));
        true
    }

    fn pop(&mut self) -> Option<Outbound> {
        let item = match self.slots.pop_front()? {
            Slot::Item(item) => {
                self.plain -= 1;
                item
            }
            Slot::Keyed(key) => self.keyed.remove(&key)?,
        };
        if self.slots.is_empty() && self.slots.capacity() > KEEP_SLOTS {
            self.slots.shrink_to(KEEP_SLOTS);
            self.keyed.shrink_to(0);
        }
        Some(item)
    }
}

/// The seqs a channel skipped lie in `first..=last`; only events without a
/// seq were skipped while `first > last`.
#[derive(Clone, Copy)]
struct SkippedRange {
    first: u64,
    last: u64,
}

impl SkippedRange {
    const EMPTY: Self = Self {
        first: u64::MAX,
        last: 0,
    };

    fn add(&mut self, seq: Option<u64>) {
        if let Some(seq) = seq {
            self.first = self.first.min(seq);
            self.last = self.last.max(seq);
        }
    }
}

/// What a stream channel missed while its connection's queue was full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// The seq of the first frame skipped (`u64::MAX` when only events
    /// without a seq were).
    pub first_seq: u64,
}

/// The sending side; cheap to clone.
#[derive(Clone)]
pub struct Subscriber {
    shared: Arc<Shared>,
}

/// The receiving side, owned by the connection's task.
pub struct Receiver {
    shared: Arc<Shared>,
}

/// The queue overflowed: the connection must close as a slow consumer.
#[derive(Debug, PartialEq, Eq)]
pub struct Overflowed;

/// A queue holding at most `capacity` items.
pub fn bounded(capacity: usize) -> (Subscriber, Receiver) {
    let shared = Arc::new(Shared {
        items: Mutex::new(Items::default()),
        ready: Notify::new(),
        capacity: capacity.max(1),
        state: AtomicU8::new(OPEN),
    });
    (
        Subscriber {
            shared: shared.clone(),
        },
        Receiver { shared },
    )
}

impl Subscriber {
    /// Queues `item` without waiting. A full queue drops it and marks the
    /// connection overflowed; a queue whose connection ended drops it.
    pub fn send(&self, item: Outbound) {
        let shared = &*self.shared;
        if shared.state.load(Ordering::Acquire) != OPEN {
            return;
        }
        let pushed = shared
            .items
            .lock()
            .expect("queue lock poisoned")
            .push(item, shared.capacity);
        if !pushed {
            self.overflow();
            return;
        }
        shared.ready.notify_one();
    }

    /// Marks the connection a slow consumer.
    pub fn overflow(&self) {
        let _ = self.shared.state.compare_exchange(
            OPEN,
            OVERFLOWED,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        self.shared.ready.notify_waiters();
        self.shared.ready.notify_one();
    }

    /// Whether `self` and `other` feed the same connection.
    pub fn same_queue(&self, other: &Subscriber) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// Whether the connection overflowed.
    pub fn is_overflowed(&self) -> bool {
        self.shared.state.load(Ordering::Acquire) == OVERFLOWED
    }

    /// Resolves once the queue overflows (while the connection is busy
    /// writing and not receiving).
    pub async fn overflowed(&self) {
        loop {
            let ready = self.shared.ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            if self.shared.state.load(Ordering::Acquire) == OVERFLOWED {
                return;
            }
            ready.await;
        }
    }
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber")
            .field("capacity", &self.shared.capacity)
            .finish_non_exhaustive()
    }
}

impl Receiver {
    /// The next item, waiting for one; `Err` once the queue overflowed.
    pub async fn recv(&mut self) -> Result<Outbound, Overflowed> {
        loop {
            let ready = self.shared.ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            if let Some(item) = pop(&self.shared)? {
                return Ok(item);
            }
            ready.await;
        }
    }

    /// The next item if one is waiting; `Err` once the queue overflowed.
    pub fn try_recv(&mut self) -> Result<Option<Outbound>, Overflowed> {
        pop(&self.shared)
    }

    /// What `channel` missed that comes before a delivery with `seq` (any
    /// delivery without one comes after everything), if anything.
    pub fn take_skipped(&mut self, channel: &str, seq: Option<u64>) -> Option<Skipped> {
        let mut items = self.shared.items.lock().expect("queue lock poisoned");
        if items.skipped.is_empty() {
            return None;
        }
        let range = items.skipped.get_mut(channel)?;
        let first_seq = range.first;
        match seq {
            // Skipped only after this one: it stays noted.
            Some(seq) if first_seq >= seq => return None,
            // Some skipped before this one and some after: the gap before
            // it is filled now, the rest stays noted.
            Some(seq) if range.last > seq => range.first = seq.saturating_add(1),
            _ => {
                items.skipped.remove(channel);
            }
        }
        Some(Skipped { first_seq })
    }

    /// Every channel that missed something, once the queue is empty (the
    /// connection has caught up with everything else).
    pub fn take_all_skipped(&mut self) -> Vec<(Arc<str>, Skipped)> {
        let mut items = self.shared.items.lock().expect("queue lock poisoned");
        if !items.slots.is_empty() || items.skipped.is_empty() {
            return Vec::new();
        }
        items
            .skipped
            .drain()
            .map(|(channel, range)| {
                let skipped = Skipped {
                    first_seq: range.first,
                };
                (channel, skipped)
            })
            .collect()
    }
}

fn pop(shared: &Shared) -> Result<Option<Outbound>, Overflowed> {
    if shared.state.load(Ordering::Acquire) == OVERFLOWED {
        return Err(Overflowed);
    }
    Ok(shared.items.lock().expect("queue lock poisoned").pop())
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shared.state.store(CLOSED, Ordering::Release);
        let drained = std::mem::take(&mut *self.shared.items.lock().expect("queue lock poisoned"));
        drop(drained);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::{Delivery, Frame};

    fn item(n: u8) -> Outbound {
        Outbound::Delivery(Delivery {
            channel: "fleet".into(),
            seq: Some(n.into()),
            frame: Frame::Binary(bytes::Bytes::from(vec![n])),
            last: false,
            key: None,
        })
    }

    fn output(run: &str, n: u64, last: bool) -> Outbound {
        Outbound::Delivery(Delivery {
            channel: run.into(),
            seq: (!last).then_some(n),
            frame: Frame::Binary(bytes::Bytes::new()),
            last,
            key: None,
        })
    }

    #[test]
    fn a_full_queue_skips_stream_frames_and_says_from_where() {
        let (tx, mut rx) = bounded(2);
        tx.send(item(1));
        tx.send(item(2));
        for n in 5..9 {
            tx.send(output("run:x", n, false));
        }
        tx.send(output("run:x", 0, true));
        assert!(!tx.is_overflowed());
        assert_eq!(rx.take_skipped("run:y", None), None);
        assert!(
            rx.take_all_skipped().is_empty(),
            "not before the queue is empty"
        );
        assert_eq!(
            rx.take_skipped("run:x", Some(3)),
            None,
            "skipped after seq 3"
        );
        assert_eq!(
            rx.take_skipped("run:x", Some(9)),
            Some(Skipped { first_seq: 5 })
        );
        assert_eq!(rx.take_skipped("run:x", None), None, "told once");
        let mut got = 0;
        while rx.try_recv().unwrap().is_some() {
            got += 1;
        }
        assert_eq!(got, 3, "two plain items and the run's last");
        tx.send(output("job:y", 3, false));
        tx.send(output("job:y", 4, false));
        tx.send(output("job:y", 5, false));
        while rx.try_recv().unwrap().is_some() {}
        let all = rx.take_all_skipped();
        assert_eq!(all.len(), 1);
        assert_eq!(&*all[0].0, "job:y");
        assert_eq!(all[0].1, Skipped { first_seq: 5 });
    }

    #[test]
    fn a_frame_queued_between_skipped_ones_leaves_the_later_ones_noted() {
        let (tx, mut rx) = bounded(1);
        tx.send(item(1));
        tx.send(output("run:x", 5, false));
        tx.send(output("run:x", 6, false));
        assert!(rx.try_recv().unwrap().is_some());
        tx.send(output("run:x", 7, false));
        tx.send(output("run:x", 8, false));
        tx.send(output("run:x", 9, false));
        assert_eq!(
            rx.take_skipped("run:x", Some(7)),
            Some(Skipped { first_seq: 5 }),
            "5 and 6 come from the store before 7"
        );
        assert_eq!(
            rx.take_skipped("run:x", None),
            Some(Skipped { first_seq: 8 }),
            "8 and 9 are still missing after 7"
        );
        assert_eq!(rx.take_skipped("run:x", None), None);
    }

    #[test]
    fn a_reply_finds_room_behind_a_full_queue_up_to_twice_the_bound() {
        let (tx, _rx) = bounded(2);
        tx.send(item(1));
        tx.send(item(2));
        tx.send(reply());
        tx.send(reply());
        assert!(!tx.is_overflowed());
        tx.send(reply());
        assert!(tx.is_overflowed());
    }

    fn reply() -> Outbound {
        Outbound::Reply(Box::new(crate::outbound::Reply::to(
            None,
            muster_proto::HubToClient::Ok(Default::default()),
        )))
    }

    #[test]
    fn anything_else_still_overflows() {
        let (tx, _rx) = bounded(1);
        tx.send(item(1));
        tx.send(item(2));
        assert!(tx.is_overflowed(), "fleet frames are not skipped");
    }

    fn status(agent: &str, n: u8) -> Outbound {
        Outbound::Delivery(Delivery {
            channel: "fleet".into(),
            seq: Some(n.into()),
            frame: Frame::Binary(bytes::Bytes::from(vec![n])),
            last: false,
            key: Some(agent.into()),
        })
    }

    fn seq(item: Outbound) -> u64 {
        match item {
            Outbound::Delivery(d) => d.seq.unwrap(),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn items_come_out_in_order() {
        let (tx, mut rx) = bounded(4);
        tx.send(item(1));
        tx.send(item(2));
        assert_eq!(seq(rx.recv().await.unwrap()), 1);
        assert_eq!(seq(rx.recv().await.unwrap()), 2);
        assert!(rx.try_recv().unwrap().is_none());
    }

    #[tokio::test]
    async fn a_full_queue_overflows_instead_of_blocking() {
        let (tx, mut rx) = bounded(2);
        for n in 0..3 {
            tx.send(item(n));
        }
        assert!(tx.is_overflowed());
        assert_eq!(rx.recv().await.err(), Some(Overflowed));
        tx.overflowed().await;
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken() {
        let (tx, mut rx) = bounded(2);
        let waiting = tokio::spawn(async move { seq(rx.recv().await.unwrap()) });
        tokio::task::yield_now().await;
        tx.send(item(7));
        assert_eq!(waiting.await.unwrap(), 7);
    }

    #[test]
    fn an_empty_queue_gives_its_memory_back() {
        let (tx, mut rx) = bounded(1000);
        for n in 0..200 {
            tx.send(item(n as u8));
        }
        while rx.try_recv().unwrap().is_some() {}
        assert!(tx.shared.items.lock().unwrap().slots.capacity() <= KEEP_SLOTS);
    }

    #[test]
    fn an_agents_newer_status_replaces_the_waiting_one_in_its_place() {
        let (tx, mut rx) = bounded(2);
        tx.send(status("a", 1));
        tx.send(item(10));
        tx.send(status("b", 2));
        for n in 0..1000 {
            tx.send(status(&format!("x{n}"), 0));
        }
        tx.send(status("a", 3));
        assert!(
            !tx.is_overflowed(),
            "statuses do not count against the bound"
        );
        assert_eq!(
            seq(rx.try_recv().unwrap().unwrap()),
            3,
            "a's latest, in a's first place"
        );
        assert_eq!(seq(rx.try_recv().unwrap().unwrap()), 10);
        assert_eq!(seq(rx.try_recv().unwrap().unwrap()), 2);
        let mut rest = 0;
        while rx.try_recv().unwrap().is_some() {
            rest += 1;
        }
        assert_eq!(rest, 1000);
    }

    #[test]
    fn nothing_is_kept_for_a_connection_that_ended() {
        let (tx, rx) = bounded(4);
        drop(rx);
        tx.send(item(1));
        assert!(tx.shared.items.lock().unwrap().slots.is_empty());
    }
}
