//! What one client connection receives, with no socket in sight: which
//! channels it subscribes to, and for numbered streams (run output, agent
//! events, job events) exactly the frames it has not had.
//!
//! The rules that make a stream gap-free and duplicate-free live here:
//! - a subscription replaying a run's or job's stream from the client's
//!   offset is paused while the store is read, so live frames do not pile up
//!   in the connection's queue behind the replay; then it resumes, and the
//!   replay catches up once more with what was stored meanwhile. Events
//!   without a seq that the pause skipped (a run's status) are made up for
//!   by sending the run's current state;
//! - a published frame below the next expected seq is a duplicate and is
//!   dropped; one above it means frames were missed (a replay still
//!   running, a burst), and they are read from the store first. Everything
//!   published is stored first, so the store can always fill such a gap; if
//!   reading it fails, the client is told with `HISTORY_GAP` and the
//!   subscription is dropped, so it resubscribes from its offset;
//! - the last frame of a channel (a run's or job's final status) ends the
//!   subscription.
//!
//! The WebSocket connection is one [`FrameSink`]; tests use a vector.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use muster_proto::messages::{ErrorData, StoredEvent};
use muster_proto::{Channel, Envelope, ErrorCode, HubToClient};

use crate::broker::{Broker, Delivery, Frame, Subscriber, SubscriptionGuard};
use crate::queue::Skipped;
use crate::store::Store;

/// Stored entries read per query while replaying.
pub const REPLAY_PAGE: u32 = 128;

/// The connection is gone.
#[derive(Debug)]
pub struct SinkClosed;

/// Where a connection's frames go.
#[async_trait]
pub trait FrameSink: Send {
    /// Queues a frame.
    async fn feed(&mut self, frame: Frame) -> Result<(), SinkClosed>;
    /// Writes what is queued.
    async fn flush(&mut self) -> Result<(), SinkClosed>;
}

/// The stored history of numbered streams, framed as it was published.
#[derive(Clone)]
pub struct History {
    store: Arc<dyn Store>,
}

impl History {
    /// History kept in `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    /// Entries of `channel`'s stream with `seq >= since`, at most `limit`.
    pub async fn read(
        &self,
        channel: &Channel,
        since: u64,
        limit: u32,
    ) -> anyhow::Result<Vec<(u64, Frame)>> {
        Ok(match channel {
            Channel::Run(run) => self
                .store
                .output_frames_since(*run, since, limit)
                .await?
                .into_iter()
                .map(|(seq, frame)| (seq, Frame::Binary(frame)))
                .collect(),
            Channel::Agent(agent) => self
                .store
                .events_since(agent, since, limit)
                .await?
                .into_iter()
                .map(|event| (event.seq, event_frame(event)))
                .collect(),
            // Stored as the envelope that was published: replayed as is.
            Channel::Job(job) => self
                .store
                .job_events_since(*job, since, limit)
                .await?
                .into_iter()
                .map(|(seq, text)| (seq, Frame::text(text)))
                .collect(),
            Channel::Fleet
            | Channel::Metrics(_)
            | Channel::Session(_)
            | Channel::Audit
            | Channel::All => Vec::new(),
        })
    }

    /// The store itself, for what the subscription flow reads.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }
}

/// Writes one page of stored entries and flushes.
async fn send_page(sink: &mut dyn FrameSink, page: Vec<(u64, Frame)>) -> Result<(), ReplayError> {
    for (_, frame) in page {
        sink.feed(frame).await.map_err(|_| ReplayError::Closed)?;
    }
    sink.flush().await.map_err(|_| ReplayError::Closed)
}

/// Frames a stored event as the hub published it.
fn event_frame(event: StoredEvent) -> Frame {
    let channel = Channel::Agent(event.agent.clone());
    Frame::text(Envelope::event(channel, HubToClient::AgentEvent(event)).encode())
}

struct Sub {
    channel: Channel,
    guard: SubscriptionGuard,
    /// For numbered streams: the seq the client needs next.
    next_seq: Option<u64>,
}

/// One connection's subscriptions.
pub struct Subscriptions {
    broker: Arc<dyn Broker>,
    subscriber: Subscriber,
    subs: HashMap<Arc<str>, Sub>,
}

impl Subscriptions {
    /// No subscription yet; deliveries go to `subscriber`'s queue.
    pub fn new(broker: Arc<dyn Broker>, subscriber: Subscriber) -> Self {
        Self {
            broker,
            subscriber,
            subs: HashMap::new(),
        }
    }

    /// Subscribes to `channel` for what is published from now on.
    pub fn subscribe_live(&mut self, channel: &Channel) {
        self.subscribe(channel, false);
    }

    /// Subscribes to `channel`, or pauses a subscription it has: nothing is
    /// received until [`Subscriptions::resume`]. A replay runs meanwhile.
    pub fn subscribe_paused(&mut self, channel: &Channel) {
        self.subscribe(channel, true);
    }

    fn subscribe(&mut self, channel: &Channel, paused: bool) {
        let name: Arc<str> = Arc::from(channel.to_string());
        if let Some(sub) = self.subs.get(&name) {
            if paused {
                sub.guard.pause();
            }
            return;
        }
        let guard = self
            .broker
            .subscribe(&name, self.subscriber.clone(), paused);
        let sub = Sub {
            channel: channel.clone(),
            guard,
            next_seq: None,
        };
        self.subs.insert(name, sub);
    }

    /// Lets a paused subscription receive again.
    pub fn resume(&mut self, channel: &Channel) {
        if let Some(sub) = self.subs.get(channel.to_string().as_str()) {
            sub.guard.resume();
        }
    }

    /// Drops a subscription; false if there was none.
    pub fn unsubscribe(&mut self, channel: &Channel) -> bool {
        self.subs.remove(channel.to_string().as_str()).is_some()
    }

    /// Whether the connection subscribes to `channel`.
    pub fn is_subscribed(&self, channel: &Channel) -> bool {
        self.subs.contains_key(channel.to_string().as_str())
    }

    /// How many channels the connection subscribes to.
    pub fn len(&self) -> usize {
        self.subs.len()
    }

    /// Whether it subscribes to none.
    pub fn is_empty(&self) -> bool {
        self.subs.is_empty()
    }

    /// Sends `channel`'s stored entries from `since`; returns the seq the
    /// client needs next, from which live frames are then passed on.
    pub async fn replay(
        &mut self,
        sink: &mut dyn FrameSink,
        history: &History,
        channel: &Channel,
        since: u64,
    ) -> Result<u64, ReplayError> {
        let mut next = since;
        let mut page = history
            .read(channel, next, REPLAY_PAGE)
            .await
            .map_err(ReplayError::Store)?;
        loop {
            let full = page.len() == REPLAY_PAGE as usize;
            let after = page.last().map_or(next, |(seq, _)| seq.saturating_add(1));
            let send = send_page(sink, page);
            if !full {
                send.await?;
                next = after;
                break;
            }
            // The next page is read while this one is written.
            let (sent, read) = tokio::join!(send, history.read(channel, after, REPLAY_PAGE));
            sent?;
            next = after;
            page = read.map_err(ReplayError::Store)?;
        }
        if let Some(sub) = self.subs.get_mut(channel.to_string().as_str()) {
            sub.next_seq = Some(next);
        }
        Ok(next)
    }

    /// Passes one published frame on, unless the client has it already;
    /// fills a gap before it from the store, including what the queue
    /// `skipped` of the channel while it was full.
    pub async fn deliver(
        &mut self,
        sink: &mut dyn FrameSink,
        history: &History,
        delivery: Delivery,
        skipped: Option<Skipped>,
    ) -> Result<(), SinkClosed> {
        if let Some(missed) = skipped
            && delivery.seq.is_none()
        {
            // A status or the last delivery: everything before it is stored.
            self.catch_up(sink, history, &delivery.channel, missed)
                .await?;
        }
        let Some(sub) = self.subs.get_mut(&delivery.channel) else {
            // Queued before an unsubscribe, or for the wildcard, which gets
            // everything as it comes.
            if self.subs.contains_key("*") {
                return sink.feed(delivery.frame).await;
            }
            return Ok(());
        };
        if let Some(seq) = delivery.seq {
            let first_skipped = skipped.as_ref().map_or(seq, |s| s.first_seq.min(seq));
            let expected = sub.next_seq.unwrap_or(first_skipped);
            if seq < expected {
                return Ok(());
            }
            sub.next_seq = Some(seq.saturating_add(1));
            if seq > expected {
                let channel = sub.channel.clone();
                if let Err(e) = fill_gap(sink, history, &channel, expected, seq).await {
                    return self.gap_unfilled(sink, &channel, expected, e).await;
                }
            }
        }
        if delivery.last {
            // Nothing more comes on this channel: free the subscription.
            self.subs.remove(&delivery.channel);
        }
        sink.feed(delivery.frame).await
    }

    /// Sends what `channel` missed while its queue was full, up to what is
    /// stored now.
    pub async fn catch_up(
        &mut self,
        sink: &mut dyn FrameSink,
        history: &History,
        channel: &str,
        skipped: Skipped,
    ) -> Result<(), SinkClosed> {
        let Some(sub) = self.subs.get(channel) else {
            return Ok(());
        };
        let Some(from) = sub
            .next_seq
            .or(Some(skipped.first_seq).filter(|s| *s != u64::MAX))
        else {
            return Ok(()); // only events that are state were skipped
        };
        let channel = sub.channel.clone();
        match self.replay(sink, history, &channel, from).await {
            Ok(_) => Ok(()),
            Err(ReplayError::Closed) => Err(SinkClosed),
            Err(e) => self.gap_unfilled(sink, &channel, from, e).await,
        }
    }

    /// Tells the client its stream has a hole here could not fill, and
    /// drops the subscription so it resubscribes from `from`.
    async fn gap_unfilled(
        &mut self,
        sink: &mut dyn FrameSink,
        channel: &Channel,
        from: u64,
        error: ReplayError,
    ) -> Result<(), SinkClosed> {
        match error {
            ReplayError::Closed => return Err(SinkClosed),
            ReplayError::Store(e) => {
                tracing::error!(%channel, error = %format!("{e:#}"), "filling a gap failed")
            }
        }
        self.unsubscribe(channel);
        let message = format!(
            "frames from seq {from} of {channel} could not be sent; \
             subscribe again with since: {from}"
        );
        let error = HubToClient::Error(ErrorData::new(ErrorCode::HistoryGap, message));
        sink.feed(Frame::text(
            Envelope::event(channel.to_string(), error).encode(),
        ))
        .await
    }
}

/// Why a replay stopped.
#[derive(Debug)]
pub enum ReplayError {
    /// The connection is gone.
    Closed,
    /// The store could not be read.
    Store(anyhow::Error),
}

/// Sends the stored frames `from..until` of `channel`.
async fn fill_gap(
    sink: &mut dyn FrameSink,
    history: &History,
    channel: &Channel,
    from: u64,
    until: u64,
) -> Result<(), ReplayError> {
    let mut next = from;
    while next < until {
        let limit = (until - next).min(u64::from(REPLAY_PAGE)) as u32;
        let page = history
            .read(channel, next, limit)
            .await
            .map_err(ReplayError::Store)?;
        let Some(last) = page.last().map(|(seq, _)| *seq) else {
            return Err(ReplayError::Store(anyhow::anyhow!(
                "seq {next} of {channel} is not stored"
            )));
        };
        for (_, frame) in page.into_iter().filter(|(seq, _)| *seq < until) {
            sink.feed(frame).await.map_err(|_| ReplayError::Closed)?;
        }
        next = last.saturating_add(1);
    }
    Ok(())
}
