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

use std::collections::VecDeque;
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
    items: Mutex<VecDeque<Outbound>>,
    ready: Notify,
    capacity: usize,
    state: AtomicU8,
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
        items: Mutex::new(VecDeque::new()),
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
        let mut items = shared.items.lock().expect("queue lock poisoned");
        if items.len() >= shared.capacity {
            drop(items);
            self.overflow();
            return;
        }
        items.push_back(item);
        drop(items);
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
}

fn pop(shared: &Shared) -> Result<Option<Outbound>, Overflowed> {
    if shared.state.load(Ordering::Acquire) == OVERFLOWED {
        return Err(Overflowed);
    }
    let mut items = shared.items.lock().expect("queue lock poisoned");
    let item = items.pop_front();
    if items.is_empty() && items.capacity() > KEEP_SLOTS {
        items.shrink_to(KEEP_SLOTS);
    }
    Ok(item)
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
        assert!(tx.shared.items.lock().unwrap().capacity() <= KEEP_SLOTS);
    }

    #[test]
    fn nothing_is_kept_for_a_connection_that_ended() {
        let (tx, rx) = bounded(4);
        drop(rx);
        tx.send(item(1));
        assert!(tx.shared.items.lock().unwrap().is_empty());
    }
}
