//! Fan-out seam: publish a frame on a channel, deliver it to every subscriber.
//!
//! The core publishes encoded frames (serialized once, shared as [`Bytes`]) and
//! never touches a socket. The single-node hub uses [`InProcessBroker`]; a NATS
//! broker can implement [`Broker`] for a cluster without changing the core.
//!
//! Backpressure policy: delivery never blocks the publisher. Each subscriber owns
//! a bounded queue; when it is full the subscriber's `overflow` token is
//! cancelled, and its connection closes with `SLOW_CONSUMER` (4008). Everything on
//! a stream channel is stored before it is published, so the dropped client can
//! reconnect and resume from its last sequence number.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

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
}

/// A connection's inbox, registered with [`Broker::subscribe`].
#[derive(Clone, Debug)]
pub struct Subscriber {
    /// Bounded queue into the connection task.
    pub tx: mpsc::Sender<Delivery>,
    /// Cancelled when `tx` is full: the connection must close as a slow consumer.
    pub overflow: CancellationToken,
}

/// Removes its subscription when dropped.
pub struct SubscriptionGuard {
    unsubscribe: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl SubscriptionGuard {
    /// A guard that runs `unsubscribe` on drop.
    pub fn new(unsubscribe: impl FnOnce() + Send + Sync + 'static) -> Self {
        Self {
            unsubscribe: Some(Box::new(unsubscribe)),
        }
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
    /// Subscribes `subscriber` to `channel` until the guard is dropped.
    fn subscribe(&self, channel: &str, subscriber: Subscriber) -> SubscriptionGuard;
}

type Channels = HashMap<Arc<str>, HashMap<u64, Subscriber>>;

/// Subscribers of this channel receive every publish except internal ones.
pub const WILDCARD_CHANNEL: &str = "*";

/// Channels with this prefix are hub-internal (agents' control inboxes) and
/// never reach the wildcard.
pub const INTERNAL_PREFIX: &str = "agent-inbox:";

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
        let wildcard = channels
            .get(WILDCARD_CHANNEL)
            .filter(|_| !delivery.channel.starts_with(INTERNAL_PREFIX));
        let direct: Vec<&Subscriber> = channels
            .get(&delivery.channel)
            .map(|s| s.values().collect())
            .unwrap_or_default();
        // A connection subscribed both directly and to the wildcard gets one copy.
        let extra = wildcard
            .into_iter()
            .flat_map(|s| s.values())
            .filter(|w| !direct.iter().any(|d| d.tx.same_channel(&w.tx)));
        let targets: Vec<&Subscriber> = direct.iter().copied().chain(extra).collect();
        for subscriber in targets {
            match subscriber.tx.try_send(delivery.clone()) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => subscriber.overflow.cancel(),
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
    }

    fn subscribe(&self, channel: &str, subscriber: Subscriber) -> SubscriptionGuard {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let channel: Arc<str> = Arc::from(channel);
        self.channels
            .lock()
            .expect("broker lock poisoned")
            .entry(channel.clone())
            .or_default()
            .insert(id, subscriber);
        let channels = Arc::downgrade(&self.channels);
        SubscriptionGuard::new(move || {
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

    fn subscriber(capacity: usize) -> (Subscriber, mpsc::Receiver<Delivery>) {
        let (tx, rx) = mpsc::channel(capacity);
        let overflow = CancellationToken::new();
        (Subscriber { tx, overflow }, rx)
    }

    fn delivery(channel: &str, n: u8) -> Delivery {
        Delivery {
            channel: Arc::from(channel),
            seq: Some(n.into()),
            frame: Frame::Binary(Bytes::from(vec![n])),
            last: false,
        }
    }

    #[tokio::test]
    async fn delivers_to_subscribers_of_the_channel_only() {
        let broker = InProcessBroker::new();
        let (a, mut a_rx) = subscriber(4);
        let (b, mut b_rx) = subscriber(4);
        let _ga = broker.subscribe("run:1", a);
        let _gb = broker.subscribe("run:2", b);
        broker.publish(delivery("run:1", 7));
        assert_eq!(a_rx.recv().await.unwrap().seq, Some(7));
        assert!(b_rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn full_queue_flags_overflow_without_blocking() {
        let broker = InProcessBroker::new();
        let (slow, _slow_rx) = subscriber(1);
        let (fast, mut fast_rx) = subscriber(8);
        let slow_overflow = slow.overflow.clone();
        let _g1 = broker.subscribe("fleet", slow);
        let _g2 = broker.subscribe("fleet", fast);
        for n in 0..3 {
            broker.publish(delivery("fleet", n));
        }
        assert!(slow_overflow.is_cancelled());
        for n in 0..3u64 {
            assert_eq!(fast_rx.recv().await.unwrap().seq, Some(n));
        }
    }

    #[tokio::test]
    async fn the_wildcard_sees_everything_once_but_internal_channels() {
        let broker = InProcessBroker::new();
        let (s, mut rx) = subscriber(8);
        let _all = broker.subscribe(WILDCARD_CHANNEL, s.clone());
        let _fleet = broker.subscribe("fleet", s);
        broker.publish(delivery("run:1", 1));
        broker.publish(delivery("fleet", 2));
        broker.publish(delivery("agent-inbox:web-1", 3));
        assert_eq!(rx.recv().await.unwrap().seq, Some(1));
        assert_eq!(rx.recv().await.unwrap().seq, Some(2));
        assert!(rx.try_recv().is_err(), "no duplicate, no internal message");
    }

    #[tokio::test]
    async fn dropping_the_guard_unsubscribes() {
        let broker = InProcessBroker::new();
        let (s, mut rx) = subscriber(4);
        drop(broker.subscribe("fleet", s));
        broker.publish(delivery("fleet", 1));
        assert!(broker.channels.lock().unwrap().is_empty());
        assert!(rx.recv().await.is_none());
    }
}
