//! The fan-out scenario's subscribers: one raw client connection each, kept
//! for every round of the sweep.
//!
//! For each [`Round`] a subscriber subscribes to the round's `run:<id>`
//! (live, no replay), says so, then counts the run's output frames until the
//! run's terminal `run.status`, which the hub sends after the last frame. Per
//! frame it reads only the header's run id and `seq` and the send timestamp
//! at the start of the payload ([`wire::frame_head`]), checks the order
//! (every `seq` one more than the last: a jump is a gap, anything lower a
//! duplicate), and records the end-to-end latency in its own histogram.
//! A connection the hub closes (4008 for a slow consumer) ends the round with
//! that reason, and every later round at once.

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use muster_proto::messages::Subscribe;
use muster_proto::{ClientToHub, RunId};
use serde::Deserialize;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::emitter::{STAMP_BYTES, stamp_now};
use crate::histogram::Histogram;
use crate::net::{Buffers, HubAddr, Socket};
use crate::raw::{self, Ended, closed_by_hub};
use crate::swarm::Member;
use crate::wire::{self, Head};

/// Run states after which nothing more is sent on `run:<id>`.
const TERMINAL_STATES: [&str; 7] = [
    "completed",
    "failed",
    "rejected",
    "timed_out",
    "cancelled",
    "expired",
    "lost",
];

/// One round of the sweep: the run every subscriber follows.
#[derive(Clone, Debug)]
pub(crate) struct Round {
    /// Counts rounds from 1; also the id of each subscriber's `subscribe`.
    pub(crate) number: u64,
    /// The run.
    pub(crate) run: RunId,
}

/// How a subscriber's round ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RoundEnd {
    /// The run's terminal status arrived, in this state.
    Terminal(String),
    /// The hub refused the subscription.
    Refused(String),
    /// The connection ended.
    Closed(String),
}

/// What one subscriber saw of one round.
#[derive(Debug)]
pub(crate) struct Tally {
    /// Frames of the run received.
    pub(crate) received: u64,
    /// Chunks skipped inside the sequence (a `seq` above the next expected).
    pub(crate) gaps: u64,
    /// Frames with a `seq` below the next expected (repeats, reordering).
    pub(crate) duplicates: u64,
    /// The next `seq` expected: one past the highest in order.
    pub(crate) next_seq: u64,
    /// End-to-end latencies, in microseconds.
    pub(crate) latency: Histogram,
    /// When the last frame arrived.
    pub(crate) last_at: Option<Instant>,
    /// How the round ended.
    pub(crate) end: RoundEnd,
}

impl Tally {
    fn new() -> Self {
        Self {
            received: 0,
            gaps: 0,
            duplicates: 0,
            next_seq: 0,
            latency: Histogram::default(),
            last_at: None,
            end: RoundEnd::Terminal(String::new()),
        }
    }

    /// Counts the frame `seq`, sent at `stamp`, read at `now_ns` / `at`.
    fn frame(&mut self, seq: u64, stamp: u64, now_ns: u64, at: Instant) {
        self.received += 1;
        if seq < self.next_seq {
            self.duplicates += 1;
        } else {
            self.gaps += seq - self.next_seq;
            self.next_seq = seq + 1;
        }
        self.latency.record(now_ns.saturating_sub(stamp) / 1_000);
        self.last_at = Some(at);
    }
}

/// What subscribers tell the scenario.
#[derive(Debug)]
pub(crate) enum Report {
    /// Subscribed for the round.
    Subscribed(u64),
    /// Done with the round.
    Done(u64, Box<Tally>),
}

/// Subscribers as swarm members; connection `i` from the `i`-th source.
pub(crate) struct SubscriberMember {
    /// The hub.
    pub(crate) hub: HubAddr,
    /// The admin token.
    pub(crate) token: String,
    /// The current round.
    pub(crate) rounds: watch::Receiver<Option<Round>>,
    /// Where reports go; unbounded, but each subscriber sends two per round.
    pub(crate) reports: mpsc::UnboundedSender<Report>,
}

#[async_trait::async_trait]
impl Member for SubscriberMember {
    async fn connect(&self, index: usize) -> anyhow::Result<Socket> {
        raw::connect_client(
            &self.hub,
            &self.token,
            self.hub.source(index),
            Buffers::Busy,
        )
        .await
    }

    async fn serve(&self, _index: usize, socket: Socket, stop: CancellationToken) -> Ended {
        // A clone has seen only the initial `None`, so a round sent before
        // this task started still shows as changed.
        let mut rounds = self.rounds.clone();
        let ended = follow(socket, &mut rounds, &self.reports, &stop).await;
        if let Ended::Closed(reason) = &ended {
            // Every later round ends at once for a subscriber that is gone.
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    changed = rounds.changed() => {
                        let Some(round) = changed.ok().and_then(|()| rounds.borrow_and_update().clone()) else {
                            break;
                        };
                        let mut tally = Tally::new();
                        tally.end = RoundEnd::Closed(reason.clone());
                        let _ = self.reports.send(Report::Done(round.number, Box::new(tally)));
                    }
                }
            }
        }
        ended
    }
}

/// The round being followed.
struct Active {
    round: Round,
    run: Arc<str>,
    channel: String,
    subscribed: bool,
    tally: Tally,
}

#[derive(Deserialize)]
struct StatusMessage<'a> {
    #[serde(borrow)]
    data: StatusData<'a>,
}

#[derive(Deserialize)]
struct StatusData<'a> {
    #[serde(borrow)]
    run: StatusRun<'a>,
}

#[derive(Deserialize)]
struct StatusRun<'a> {
    state: &'a str,
}

async fn follow(
    mut socket: Socket,
    rounds: &mut watch::Receiver<Option<Round>>,
    reports: &mpsc::UnboundedSender<Report>,
    stop: &CancellationToken,
) -> Ended {
    let mut active: Option<Active> = None;
    let closed = loop {
        let message = tokio::select! {
            () = stop.cancelled() => return Ended::Stopped,
            changed = rounds.changed() => {
                let Some(round) = changed.ok().and_then(|()| rounds.borrow_and_update().clone()) else {
                    return Ended::Stopped;
                };
                let channel = round.run.channel().to_string();
                let subscribe = ClientToHub::Subscribe(Subscribe { channel: channel.clone(), since: None });
                if let Err(e) = socket.send(wire::request(round.number, subscribe)).await {
                    break format!("connection failed: {e}");
                }
                active = Some(Active {
                    run: round.run.to_string().into(),
                    channel,
                    round,
                    subscribed: false,
                    tally: Tally::new(),
                });
                continue;
            }
            message = socket.next() => message,
        };
        match message {
            Some(Ok(Message::Binary(frame))) => {
                let (Some(current), Some(head)) = (active.as_mut(), wire::frame_head(&frame))
                else {
                    continue;
                };
                if head.run != current.run.as_bytes() || head.payload.len() < STAMP_BYTES {
                    continue;
                }
                let stamp =
                    u64::from_be_bytes(head.payload[..STAMP_BYTES].try_into().unwrap_or_default());
                current
                    .tally
                    .frame(head.seq, stamp, stamp_now(), Instant::now());
            }
            Some(Ok(Message::Text(text))) => {
                if let Err(reason) = on_text(&mut socket, text.as_str(), &mut active, reports).await
                {
                    break reason;
                }
            }
            Some(Ok(Message::Close(frame))) => break closed_by_hub(frame.as_ref()),
            Some(Ok(_)) => {}
            Some(Err(e)) => break format!("connection failed: {e}"),
            None => break "connection ended".to_owned(),
        }
    };
    if let Some(mut current) = active {
        current.tally.end = RoundEnd::Closed(closed.clone());
        let _ = reports.send(Report::Done(current.round.number, Box::new(current.tally)));
    }
    Ended::Closed(closed)
}

/// Handles one text message; `Err` if the connection failed.
async fn on_text(
    socket: &mut Socket,
    text: &str,
    active: &mut Option<Active>,
    reports: &mpsc::UnboundedSender<Report>,
) -> Result<(), String> {
    let Some(head) = Head::of(text) else {
        return Ok(());
    };
    let Some(current) = active.as_mut() else {
        if head.kind == "heartbeat" {
            answer(socket, text).await?;
        }
        return Ok(());
    };
    let ours = head.re == Some(current.round.number.to_string().as_str());
    match head.kind {
        "heartbeat" => answer(socket, text).await?,
        "subscribed" if ours && !current.subscribed => {
            current.subscribed = true;
            let _ = reports.send(Report::Subscribed(current.round.number));
        }
        "error" if ours => {
            if let Some(mut done) = active.take() {
                done.tally.end = RoundEnd::Refused(text.to_owned());
                let _ = reports.send(Report::Done(done.round.number, Box::new(done.tally)));
            }
        }
        "run.status" if head.channel == Some(current.channel.as_str()) => {
            let state = serde_json::from_str::<StatusMessage<'_>>(text)
                .map(|status| status.data.run.state.to_owned())
                .unwrap_or_default();
            if TERMINAL_STATES.contains(&state.as_str())
                && let Some(mut done) = active.take()
            {
                done.tally.end = RoundEnd::Terminal(state);
                let _ = reports.send(Report::Done(done.round.number, Box::new(done.tally)));
            }
        }
        _ => {}
    }
    Ok(())
}

async fn answer(socket: &mut Socket, text: &str) -> Result<(), String> {
    match wire::heartbeat_ack(text, false) {
        Some(ack) => socket
            .send(ack)
            .await
            .map_err(|e| format!("connection failed: {e}")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_checked_frame_by_frame() {
        let mut tally = Tally::new();
        let at = Instant::now();
        for seq in [0, 1, 2, 5, 3, 6, 6] {
            tally.frame(seq, 1_000, 3_001_000, at);
        }
        assert_eq!(tally.received, 7);
        assert_eq!(tally.gaps, 2, "3 and 4 were skipped when 5 came");
        assert_eq!(tally.duplicates, 2, "the late 3 and the second 6");
        assert_eq!(tally.next_seq, 7);
        assert_eq!(tally.latency.percentile_us(50.0), Some(3_000));
    }
}
