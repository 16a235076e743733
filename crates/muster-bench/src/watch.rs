//! The hub's own view of a storm: a client on the `fleet` channel that
//! follows every `agent.status` after the drop.
//!
//! An agent is **back** once the watcher has read an `online` status for it
//! that belongs to a connection made after the drop (its
//! `connected_since_ms` is not older than the drop), or an `online` after an
//! `offline` it read after the drop. The hub may coalesce or reorder the
//! statuses of different agents, and need not publish the `offline` at all
//! when the new connection replaced the old one first; what must hold is that
//! every agent ends back and `online`. The fleet has recovered at the first
//! event after which every agent is back and its last status is `online`.
//! Each event is read from borrowed JSON, without building the whole record.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use muster_proto::AgentName;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::net::Socket;
use crate::raw::closed_by_hub;
use crate::wire::{self, Head};

/// What the watcher saw after the drop.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct HubView {
    /// From the drop to the event that made every agent back and online.
    pub(crate) recovered_s: Option<f64>,
    /// `agent.status` events of the fleet read after the drop.
    pub(crate) events: u64,
    /// Agents the watcher saw `offline` after the drop.
    pub(crate) seen_offline: usize,
    /// Agents seen back online.
    pub(crate) back: usize,
    /// Agents never seen back online.
    pub(crate) not_back: usize,
    /// Agents whose last status read was not `online`.
    pub(crate) last_not_online: usize,
    /// Why the watching connection ended early, if it did.
    pub(crate) watcher_closed: Option<String>,
}

/// Per agent: what the watcher knows since the drop.
#[derive(Clone, Copy, Debug, Default)]
struct Track {
    seen_offline: bool,
    back: bool,
    online: bool,
}

/// The watcher's state, shared with its task.
struct State {
    index: HashMap<AgentName, usize>,
    tracks: Vec<Track>,
    /// The drop, once armed: wall-clock milliseconds and the instant.
    armed: Option<(u64, Instant)>,
    /// Agents back and online now.
    ready: usize,
    view: HubView,
}

impl State {
    fn new(names: &[AgentName]) -> Self {
        Self {
            index: names.iter().cloned().zip(0..).collect(),
            tracks: vec![Track::default(); names.len()],
            armed: None,
            ready: 0,
            view: HubView::default(),
        }
    }

    /// Applies one status; true when this event completed the recovery.
    fn apply(&mut self, name: &str, status: &str, since_ms: Option<u64>, at: Instant) -> bool {
        let Some((dropped_ms, dropped)) = self.armed else {
            return false;
        };
        let Some(&i) = AgentName::new(name).ok().and_then(|n| self.index.get(&n)) else {
            return false;
        };
        self.view.events += 1;
        let track = &mut self.tracks[i];
        let was_ready = track.back && track.online;
        track.online = status == "online";
        if !track.online && status == "offline" {
            track.seen_offline = true;
        }
        if track.online && (track.seen_offline || since_ms.is_some_and(|ms| ms >= dropped_ms)) {
            track.back = true;
        }
        let is_ready = track.back && track.online;
        match (was_ready, is_ready) {
            (false, true) => self.ready += 1,
            (true, false) => self.ready -= 1,
            _ => {}
        }
        if self.ready == self.tracks.len() && self.view.recovered_s.is_none() {
            self.view.recovered_s = Some((at - dropped).as_secs_f64());
            return true;
        }
        false
    }

    fn finish(&self) -> HubView {
        let mut view = self.view.clone();
        view.seen_offline = self.tracks.iter().filter(|t| t.seen_offline).count();
        view.back = self.tracks.iter().filter(|t| t.back).count();
        view.not_back = self.tracks.len() - view.back;
        view.last_not_online = self.tracks.iter().filter(|t| !t.online).count();
        view
    }
}

#[derive(Deserialize)]
struct StatusMessage<'a> {
    #[serde(borrow)]
    data: StatusData<'a>,
}

#[derive(Deserialize)]
struct StatusData<'a> {
    #[serde(borrow)]
    agent: StatusAgent<'a>,
}

#[derive(Deserialize)]
struct StatusAgent<'a> {
    name: &'a str,
    status: &'a str,
    #[serde(default)]
    connected_since_ms: Option<u64>,
}

/// A running watcher.
pub(crate) struct Watcher {
    state: Arc<Mutex<State>>,
    recovered: watch::Receiver<bool>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Watcher {
    /// Starts following `socket` (a client connection past its handshake)
    /// for the agents `names`.
    pub(crate) fn spawn(socket: Socket, names: &[AgentName]) -> Self {
        let state = Arc::new(Mutex::new(State::new(names)));
        let (recovered_tx, recovered) = watch::channel(false);
        let stop = CancellationToken::new();
        let task = tokio::spawn(follow(socket, state.clone(), recovered_tx, stop.clone()));
        Self {
            state,
            recovered,
            stop,
            task,
        }
    }

    /// Marks the drop: statuses count from here on.
    pub(crate) fn arm(&self, dropped_ms: u64, dropped: Instant) {
        self.lock().armed = Some((dropped_ms, dropped));
    }

    /// Waits until the fleet has recovered, at most `limit`.
    pub(crate) async fn recovered(&self, limit: Duration) {
        let mut recovered = self.recovered.clone();
        let _ = timeout(limit, recovered.wait_for(|done| *done)).await;
    }

    /// Stops watching; what was seen.
    pub(crate) async fn stop(self) -> HubView {
        self.stop.cancel();
        let _ = self.task.await;
        self.state.lock().expect("watcher lock poisoned").finish()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("watcher lock poisoned")
    }
}

async fn follow(
    mut socket: Socket,
    state: Arc<Mutex<State>>,
    recovered: watch::Sender<bool>,
    stop: CancellationToken,
) {
    let closed = loop {
        let message = tokio::select! {
            () = stop.cancelled() => return,
            message = socket.next() => message,
        };
        let text = match message {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => break closed_by_hub(frame.as_ref()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => break format!("connection failed: {e}"),
            None => break "connection ended".to_owned(),
        };
        let at = Instant::now();
        match Head::of(text.as_str()).map(|head| head.kind) {
            Some("agent.status") => {
                let Ok(msg) = serde_json::from_str::<StatusMessage<'_>>(text.as_str()) else {
                    continue;
                };
                let agent = msg.data.agent;
                let done = state.lock().expect("watcher lock poisoned").apply(
                    agent.name,
                    agent.status,
                    agent.connected_since_ms,
                    at,
                );
                if done {
                    recovered.send_replace(true);
                }
            }
            Some("heartbeat") => {
                if let Some(ack) = wire::heartbeat_ack(text.as_str(), false)
                    && socket.send(ack).await.is_err()
                {
                    break "connection failed while answering a heartbeat".to_owned();
                }
            }
            _ => {}
        }
    };
    state
        .lock()
        .expect("watcher lock poisoned")
        .view
        .watcher_closed = Some(closed);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<AgentName> {
        (0..n)
            .map(|i| AgentName::new(format!("a-{i}")).unwrap())
            .collect()
    }

    #[test]
    fn nothing_counts_before_the_drop() {
        let mut state = State::new(&names(1));
        assert!(!state.apply("a-0", "online", Some(10), Instant::now()));
        assert_eq!(state.finish().events, 0);
    }

    #[test]
    fn recovery_needs_every_agent_back_and_online() {
        let mut state = State::new(&names(3));
        let dropped = Instant::now();
        state.armed = Some((1_000, dropped));
        // a-0: offline, then online (no connected_since).
        assert!(!state.apply("a-0", "offline", None, dropped));
        assert!(!state.apply("a-0", "online", None, dropped));
        // a-1: straight to a new connection, no offline seen.
        assert!(!state.apply("a-1", "online", Some(1_000), dropped));
        // a-2: a late status of its old connection does not count.
        assert!(!state.apply("a-2", "online", Some(999), dropped));
        assert!(!state.apply("not-ours", "online", Some(2_000), dropped));
        let later = dropped + Duration::from_millis(1500);
        assert!(state.apply("a-2", "online", Some(1_001), later));
        let view = state.finish();
        assert_eq!(view.recovered_s, Some(1.5));
        assert_eq!((view.events, view.seen_offline, view.back), (5, 1, 3));
        assert_eq!((view.not_back, view.last_not_online), (0, 0));
    }

    #[test]
    fn an_agent_that_goes_offline_again_is_not_ready() {
        let mut state = State::new(&names(2));
        let dropped = Instant::now();
        state.armed = Some((1_000, dropped));
        assert!(!state.apply("a-0", "online", Some(1_000), dropped));
        assert!(!state.apply("a-0", "offline", None, dropped));
        assert!(!state.apply("a-1", "online", Some(1_000), dropped));
        assert_eq!(state.ready, 1);
        let view = state.finish();
        assert_eq!((view.back, view.last_not_online), (2, 1));
        assert_eq!(view.recovered_s, None);
    }
}
