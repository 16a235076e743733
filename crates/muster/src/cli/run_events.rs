//! The events a followed run's own process publishes (`muster emit`, such as
//! a site script's `site.operation` progress), for `muster run` and `muster
//! action` to print beside the run's output.
//!
//! Events travel on the agent's channel, `agent:<name>`, not the run's. A
//! watcher subscribes to it on a connection of its own *before* the run is
//! created, and the hub's `subscribed` reply gives the offset of the agent's
//! next event, so nothing the run publishes can come earlier. A dropped
//! connection is resumed from the next offset; once the run has ended, a last
//! replay up to the stored end picks up events still in flight. Each event of
//! the run is passed on exactly once, in offset order.

use std::time::Duration;

use muster_client::{Client, Event};
use muster_proto::backoff::Backoff;
use muster_proto::messages::StoredEvent;
use muster_proto::{AgentName, HubToClient, RunId};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::HubConn;

/// How long subscribing may take before the run goes ahead unwatched.
const START_BOUND: Duration = Duration::from_secs(5);

/// How long the last replay may take once the run has ended.
const CATCH_UP_BOUND: Duration = Duration::from_secs(5);

/// Events held before the run id is known (the run cannot have published any
/// yet, but other programs on the host may have).
const MAX_HELD: usize = 1024;

/// Watches one agent's events for those of one run.
pub(crate) struct RunEvents {
    run_tx: Option<oneshot::Sender<RunId>>,
    done_tx: Option<oneshot::Sender<()>>,
    events_rx: mpsc::UnboundedReceiver<StoredEvent>,
    task: JoinHandle<()>,
}

impl RunEvents {
    /// Subscribes to `agent`'s events; `None` if that fails (the run's own
    /// request then reports why, such as an unknown agent).
    pub(crate) async fn start(conn: &HubConn, agent: &AgentName) -> Option<Self> {
        let channel = format!("agent:{agent}");
        let subscribe = async {
            let (client, stream) = conn.connect().await.ok()?;
            let subscribed = client.subscribe(&channel, None).await.ok()?;
            Some((client, stream, subscribed.next_seq?))
        };
        let (client, stream, next) = tokio::time::timeout(START_BOUND, subscribe).await.ok()??;
        let (run_tx, run_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let watcher = Watcher {
            conn: conn.clone(),
            channel,
            next,
            run: None,
            held: Vec::new(),
            events_tx,
        };
        let task = tokio::spawn(watcher.run((client, stream), run_rx, done_rx));
        Some(Self {
            run_tx: Some(run_tx),
            done_tx: Some(done_tx),
            events_rx,
            task,
        })
    }

    /// Names the run to pass events of.
    pub(crate) fn set_run(&mut self, run: RunId) {
        if let Some(tx) = self.run_tx.take() {
            let _ = tx.send(run);
        }
    }

    /// The run's next event. Cancel-safe; pending forever once the watcher
    /// has stopped, so it can sit in a `select!`.
    pub(crate) async fn next(&mut self) -> StoredEvent {
        match self.events_rx.recv().await {
            Some(event) => event,
            None => std::future::pending().await,
        }
    }

    /// The run has ended: returns its events not yet taken, after a last
    /// replay up to the hub's stored end.
    pub(crate) async fn finish(mut self) -> Vec<StoredEvent> {
        if let Some(tx) = self.done_tx.take() {
            let _ = tx.send(());
        }
        let _ = tokio::time::timeout(CATCH_UP_BOUND, &mut self.task).await;
        self.task.abort();
        let mut rest = Vec::new();
        while let Ok(event) = self.events_rx.try_recv() {
            rest.push(event);
        }
        rest
    }
}

impl Drop for RunEvents {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The watcher's task state.
struct Watcher {
    conn: HubConn,
    channel: String,
    /// The offset of the next event wanted.
    next: u64,
    run: Option<RunId>,
    /// Events that came before the run id was known.
    held: Vec<StoredEvent>,
    events_tx: mpsc::UnboundedSender<StoredEvent>,
}

/// How a connection's turn ended.
enum Turn {
    /// The run ended: replay what is left, then stop.
    Done,
    /// The connection dropped: resume on a new one.
    Dropped,
}

impl Watcher {
    async fn run(
        mut self,
        first: (Client, mpsc::Receiver<Event>),
        mut run_rx: oneshot::Receiver<RunId>,
        mut done_rx: oneshot::Receiver<()>,
    ) {
        let mut connection = Some(first);
        let mut backoff = Backoff::new();
        loop {
            let (client, mut stream) = match connection.take() {
                Some(connection) => connection,
                None => match self.resume().await {
                    Some(connection) => {
                        backoff.reset();
                        connection
                    }
                    None => {
                        tokio::select! {
                            () = tokio::time::sleep(backoff.next_delay()) => continue,
                            _ = &mut done_rx => return,
                        }
                    }
                },
            };
            let turn = loop {
                tokio::select! {
                    event = stream.recv() => match event {
                        Some(Event::Message(env)) => {
                            if let HubToClient::AgentEvent(event) = env.msg {
                                self.take(event);
                            }
                        }
                        Some(Event::Output(_)) => {}
                        Some(Event::Closed { .. }) | None => break Turn::Dropped,
                    },
                    run = &mut run_rx, if self.run.is_none() => match run {
                        Ok(run) => self.know_run(run),
                        Err(_) => return,
                    },
                    _ = &mut done_rx => break Turn::Done,
                }
            };
            if let Turn::Done = turn {
                self.catch_up(&client, &mut stream).await;
                client.close().await;
                return;
            }
        }
    }

    /// A new connection, subscribed again from the next offset.
    async fn resume(&self) -> Option<(Client, mpsc::Receiver<Event>)> {
        let (client, stream) = self.conn.connect().await.ok()?;
        client
            .subscribe(&self.channel, Some(self.next))
            .await
            .ok()?;
        Some((client, stream))
    }

    /// Replays from the next offset on the open connection until the hub says
    /// the replay is done; a dropped connection ends it with what came.
    async fn catch_up(&mut self, client: &Client, stream: &mut mpsc::Receiver<Event>) {
        if client
            .subscribe(&self.channel, Some(self.next))
            .await
            .is_err()
        {
            return;
        }
        while let Some(Event::Message(env)) = stream.recv().await {
            match env.msg {
                HubToClient::AgentEvent(event) => self.take(event),
                HubToClient::StreamSynced(synced) if synced.channel == self.channel => return,
                _ => {}
            }
        }
    }

    /// Takes the event at the next offset; repeats (from a replay overlapping
    /// the live stream) are dropped.
    fn take(&mut self, event: StoredEvent) {
        if event.seq < self.next {
            return;
        }
        self.next = event.seq + 1;
        match self.run {
            Some(run) if event.event.run == Some(run) => {
                let _ = self.events_tx.send(event);
            }
            Some(_) => {}
            None if self.held.len() < MAX_HELD => self.held.push(event),
            None => {}
        }
    }

    /// The run is known: passes on the held events that are its own.
    fn know_run(&mut self, run: RunId) {
        self.run = Some(run);
        for event in std::mem::take(&mut self.held) {
            if event.event.run == Some(run) {
                let _ = self.events_tx.send(event);
            }
        }
    }
}
