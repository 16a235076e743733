//! Fan-out seam: publish a frame on a channel, deliver it to every subscriber.
//!
//! The core publishes encoded frames (serialized once, shared as [`Bytes`]) and
//! never touches a socket. The single-node hub uses [`InProcessBroker`]; a NATS
//! broker can implement [`Broker`] for a cluster without changing the core.
//!
//! Backpressure policy: delivery never blocks the publisher. Each subscriber owns
//! a bounded queue (`queue.rs`); when it is full the queue is marked
//! overflowed, and its connection closes with `SLOW_CONSUMER` (4008). Everything on
//! a stream channel is stored before it is published, so the dropped client can
//! reconnect and resume from its last sequence number.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub use crate::outbound::Outbound;
use bytes::Bytes;

/// One encoded WebSocket message.
#[derive(Clone, Debug)]
pub enum Frame {
    /// A JSON text message; the bytes are valid UTF-8.
    Text(Bytes),
    /// A binary output frame.
    Binary(Bytes),
}

impl Frame {
    /// A text frame from an encoded envelope.
    pub fn text(json: String) -> Self {
        Self::Text(Bytes::from(json))
    }
}

/// What a subscriber receives.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The channel it was published on.
    pub channel: Arc<str>,
    /// For stream frames: the sequence number, used to drop duplicates and fill gaps.
    pub seq: Option<u64>,
    /// The frame itself.
    pub frame: Frame,
    /// Nothing more will be published on this channel (a run's terminal status);
    /// subscribers can let go of it once they forwarded this frame.
    pub last: bool,
    /// For state rather than a stream (an agent's presence): a newer delivery
    /// with the same key replaces one still waiting in a subscriber's queue.
    pub key: Option<Arc<str>>,
}

pub use crate::queue::Subscriber;

/// Removes its subscription when dropped.
pub struct SubscriptionGuard {
    unsubscribe: Option<Box<dyn FnOnce() + Send + Sync>>,
    paused: Arc<AtomicBool>,
}

impl SubscriptionGuard {
    /// A guard that runs `unsubscribe` on drop; while `paused` is set, the
    /// subscription receives nothing.
    pub fn new(
        paused: Arc<AtomicBool>,
        unsubscribe: impl FnOnce() + Send + Sync + 'static,
    ) -> Self {
        Self {
            unsubscribe: Some(Box::new(unsubscribe)),
            paused,
        }
    }

    /// Stops the subscription receiving anything until [`SubscriptionGuard::resume`].
    pub fn pause(&self) {
        self.paused.store(true, Ordering::Release);
    }

    /// Lets a paused subscription receive what is published from now on.
    pub fn resume(&self) {
        self.paused.store(false, Ordering::Release);
    }
}

impl Drop for SubscriptionGuard {
    fn drop(&mut self) {
        if let Some(unsubscribe) = self.unsubscribe.take() {
            unsubscribe();
        }
    }
}

impl std::fmt::Debug for SubscriptionGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SubscriptionGuard")
    }
}

/// Routes published frames to subscribers.
pub trait Broker: Send + Sync + 'static {
    /// Delivers `delivery` to every current subscriber of its channel, without blocking.
    fn publish(&self, delivery: Delivery);
    /// Subscribes `subscriber` to `channel` until the guard is dropped. A
    /// subscription taken `paused` receives nothing until
    /// [`SubscriptionGuard::resume`]: a replay from the store runs meanwhile,
    /// so live frames do not pile up behind it.
    fn subscribe(&self, channel: &str, subscriber: Subscriber, paused: bool) -> SubscriptionGuard;
    /// Whether anything published on `channel` now would reach anyone, so a
    /// publisher can skip encoding what nobody would receive.
    fn wants(&self, channel: &str) -> bool;
}

type Channels = HashMap<Arc<str>, HashMap<u64, (Subscriber, Arc<AtomicBool>)>>;

/// Subscribers of this channel receive every publish.
pub const WILDCARD_CHANNEL: &str = "*";

/// A [`Broker`] for one process: a map from channel to subscribers.
#[derive(Clone, Default)]
pub struct InProcessBroker {
    /// A std mutex: it is held only to copy sender handles, never across `.await`.
    channels: Arc<Mutex<Channels>>,
    next_id: Arc<AtomicU64>,
}

impl InProcessBroker {
    /// An empty broker.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Broker for InProcessBroker {
    fn publish(&self, delivery: Delivery) {
        let channels = self.channels.lock().expect("broker lock poisoned");
        let wildcard = channels.get(WILDCARD_CHANNEL);
        fn live((subscriber, paused): &(Subscriber, Arc<AtomicBool>)) -> Option<&Subscriber> {
            (!paused.load(Ordering::Acquire)).then_some(subscriber)
        }
        let direct: Vec<&Subscriber> = channels
            .get(&delivery.channel)
            .map(|s| s.values().filter_map(live).collect())
            .unwrap_or_default();
        // A connection subscribed both directly and to the wildcard gets one copy.
        let extra = wildcard
            .into_iter()
            .flat_map(|s| s.values().filter_map(live))
            .filter(|w| !direct.iter().any(|d| d.same_queue(w)));
        let targets: Vec<&Subscriber> = direct.iter().copied().chain(extra).collect();
        for subscriber in targets {
            subscriber.send(Outbound::Delivery(delivery.clone()));
        }
    }

    fn wants(&self, channel: &str) -> bool {
        let channels = self.channels.lock().expect("broker lock poisoned");
        channels.contains_key(channel) || channels.contains_key(WILDCARD_CHANNEL)
    }

    fn subscribe(&self, channel: &str, subscriber: Subscriber, paused: bool) -> SubscriptionGuard {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let channel: Arc<str> = Arc::from(channel);
        let paused = Arc::new(AtomicBool::new(paused));
        self.channels
            .lock()
            .expect("broker lock poisoned")
            .entry(channel.clone())
            .or_default()
            .insert(id, (subscriber, paused.clone()));
        let channels = Arc::downgrade(&self.channels);
        SubscriptionGuard::new(paused, move || {
            let Some(channels) = channels.upgrade() else {
                return;
            };
            let mut channels = channels.lock().expect("broker lock poisoned");
            if let Some(subscribers) = channels.get_mut(&channel) {
                subscribers.remove(&id);
                if subscribers.is_empty() {
                    channels.remove(&channel);
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscriber(capacity: usize) -> (Subscriber, crate::queue::Receiver) {
        crate::queue::bounded(capacity)
    }

    fn seq(item: Result<Outbound, crate::queue::Overflowed>) -> Option<u64> {
        match item {
            Ok(Outbound::Delivery(d)) => d.seq,
            other => panic!("expected a delivery, got {other:?}"),
        }
    }

    fn delivery(channel: &str, n: u8) -> Delivery {
        Delivery {
            channel: Arc::from(channel),
            seq: Some(n.into()),
            frame: Frame::Binary(Bytes::from(vec![n])),
            last: false,
            key: None,
        }
    }

    #[tokio::test]
    async fn delivers_to_subscribers_of_the_channel_only() {
        let broker = InProcessBroker::new();
        let (a, mut a_rx) = subscriber(4);
        let (b, mut b_rx) = subscriber(4);
        let _ga = broker.subscribe("run:1", a, false);
        let _gb = broker.subscribe("run:2", b, false);
        broker.publish(delivery("run:1", 7));
        assert_eq!(seq(a_rx.recv().await), Some(7));
        assert!(b_rx.try_recv().unwrap().is_none());
    }

    #[tokio::test]
    async fn full_queue_flags_overflow_without_blocking() {
        let broker = InProcessBroker::new();
        let (slow, _slow_rx) = subscriber(1);
        let (fast, mut fast_rx) = subscriber(8);
        let slow_queue = slow.clone();
        let _g1 = broker.subscribe("fleet", slow, false);
        let _g2 = broker.subscribe("fleet", fast, false);
        for n in 0..3 {
            broker.publish(delivery("fleet", n));
        }
        assert!(slow_queue.is_overflowed());
        for n in 0..3u64 {
            assert_eq!(seq(fast_rx.recv().await), Some(n));
        }
    }

    #[tokio::test]
    async fn the_wildcard_sees_everything_once() {
        let broker = InProcessBroker::new();
        let (s, mut rx) = subscriber(8);
        let _all = broker.subscribe(WILDCARD_CHANNEL, s.clone(), false);
        let _fleet = broker.subscribe("fleet", s, false);
        broker.publish(delivery("run:1", 1));
        broker.publish(delivery("fleet", 2));
        assert_eq!(seq(rx.recv().await), Some(1));
        assert_eq!(seq(rx.recv().await), Some(2));
        assert!(rx.try_recv().unwrap().is_none(), "no duplicate");
    }

    #[tokio::test]
    async fn a_paused_subscription_gets_nothing_until_resumed() {
        let broker = InProcessBroker::new();
        let (s, mut rx) = subscriber(4);
        let guard = broker.subscribe("run:1", s, true);
        broker.publish(delivery("run:1", 1));
        assert!(rx.try_recv().unwrap().is_none());
        guard.resume();
        broker.publish(delivery("run:1", 2));
        assert_eq!(seq(rx.recv().await), Some(2));
    }

    #[tokio::test]
    async fn dropping_the_guard_unsubscribes() {
        let broker = InProcessBroker::new();
        let (s, mut rx) = subscriber(4);
        drop(broker.subscribe("fleet", s, false));
        broker.publish(delivery("fleet", 1));
        assert!(broker.channels.lock().unwrap().is_empty());
        assert!(rx.try_recv().unwrap().is_none());
    }
}
