//! The agent's lifetime: connect, serve, back off, reconnect, and stop.
//!
//! Runs belong to the agent, not to a connection, and so does the spool their
//! messages wait in. While there is no connection (backoff delay, dialling)
//! nothing is sent and nothing is dropped: the spool fills, and once it is full
//! the runs' pipe readers wait. Every `hello` reports the runs the agent knows
//! (see [`Runs::report`]); after its `connection.ack` the connection re-sends
//! the whole unacknowledged spool, and the runs an earlier agent process left
//! behind are settled. On shutdown every run is cancelled and given a bounded
//! grace to report and be acknowledged before the socket is closed with 1000;
//! runs still going after that are killed with their process groups. Host
//! metrics, unlike runs, live only while connected: each connection starts a
//! feed of samples after its `connection.ack` and drops it when it ends.
//! Published events wait in their own bounded queue for the next
//! `connection.ack`; the event socket lives as long as the agent. Sessions'
//! answers to the hub are for the connection that asked: those still queued
//! when a connection starts are dropped.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use muster_proto::actions::ExecMode;
use muster_proto::backoff::Backoff;
use muster_proto::enroll::Enrolled;
use muster_proto::messages::{AgentEvent, AgentHello};
use muster_proto::{AgentToHub, CloseCode};
use muster_tls::TrustRoots;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::AgentOptions;
use crate::admission::Admission;
use crate::connection::{self, Ended, Queues, Stop, close};
use crate::credential::Credential;
use crate::events::{self, EventQueue, EventSocket};
use crate::executor::Executor;
use crate::handshake::{self, Greeting};
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::runs::Runs;
use crate::session::Replies;
use crate::spool::Spool;

/// Added to the kill grace when waiting for runs to stop at shutdown.
const STOP_MARGIN: Duration = Duration::from_secs(2);

/// Runs the agent until `shutdown` fires or the hub rejects it.
pub(crate) async fn run(
    options: AgentOptions,
    executor: Arc<dyn Executor>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        options.max_concurrency >= 1,
        "max_concurrency must be at least 1"
    );
    anyhow::ensure!(
        options.spool_max_bytes >= 1,
        "spool_max_bytes must be at least 1"
    );
    anyhow::ensure!(
        options.metrics_interval != Some(Duration::ZERO),
        "metrics_interval must be more than zero"
    );
    let url = handshake::agent_ws_url(&options.hub_url)?;
    if url.starts_with("wss://") {
        // A CA file that cannot be used fails now, not on every reconnection.
        options
            .trust
            .client_config()
            .map_err(|e| anyhow::anyhow!(e))?;
    }
    if options.exec == ExecMode::ActionsOnly && options.actions.is_empty() {
        tracing::warn!(
            "exec is actions-only but no action is declared: every run will be rejected"
        );
    }
    let state_dir = options.state_dir.clone();
    let ledger = tokio::task::spawn_blocking(move || Ledger::open(state_dir.as_deref()))
        .await
        .context("opening the run ledger panicked")??;
    let spool = Arc::new(Spool::new(options.spool_max_bytes));
    let (event_queue, event_rx) = events::queue();
    let (replies, replies_rx) = Replies::channel();
    let event_socket = EventSocket::bind(options.state_dir.as_deref(), event_queue.clone())?;
    let metrics = match options.metrics_interval {
        Some(interval) => Metrics::start(interval).await,
        None => None,
    };
    let credential = Credential::load(
        &options.token,
        options.enroll.as_deref(),
        options.state_dir.as_deref(),
    )?;
    let agent = Agent {
        credential,
        hello: handshake::hello(&options),
        url,
        trust: options.trust.clone(),
        runs: Runs::new(
            executor,
            spool,
            ledger,
            event_socket.path().to_owned(),
            Admission::new(options.exec, options.actions.clone()),
            replies,
        ),
        stop: Stop {
            shutdown,
            grace: options.kill_grace + STOP_MARGIN,
        },
        backoff: Backoff::new(),
        metrics,
        event_queue,
        event_rx,
        replies_rx,
        _event_socket: event_socket,
    };
    agent.run().await
}

/// Everything the agent keeps across connections.
struct Agent {
    /// The token each connection says `hello` with; the hub may rotate it.
    credential: Credential,
    url: String,
    trust: TrustRoots,
    /// The `hello` without its run report, which is fresh for every attempt.
    hello: AgentHello,
    runs: Runs,
    stop: Stop,
    backoff: Backoff,
    /// `None` when sampling is off (or this host cannot be sampled).
    metrics: Option<Metrics>,
    /// Tells the socket clients whether a connection is draining the queue.
    event_queue: EventQueue,
    /// Published events; the connection in service sends from it.
    event_rx: mpsc::Receiver<AgentEvent>,
    /// Sessions' answers to the hub; the connection in service sends from it.
    replies_rx: mpsc::Receiver<AgentToHub>,
    /// Serves programs until the agent is dropped, then removes the socket.
    _event_socket: EventSocket,
}

impl Agent {
    async fn run(mut self) -> anyhow::Result<()> {
        let result = self.connect_until_stopped().await;
        self.runs.close().await;
        result
    }

    async fn connect_until_stopped(&mut self) -> anyhow::Result<()> {
        loop {
            match self.session().await {
                Ended::Shutdown => return Ok(()),
                Ended::Enrolled => self.backoff.reset(),
                Ended::Rejected(error) => {
                    self.stop_runs_offline().await;
                    return Err(error);
                }
                Ended::Lost(error) => {
                    let delay = self.backoff.next_delay();
                    tracing::warn!(
                        "disconnected from the hub: {error:#}; reconnecting in {delay:.1?}"
                    );
                    if self
                        .unless_stopped(tokio::time::sleep(delay))
                        .await
                        .is_none()
                    {
                        self.stop_runs_offline().await;
                        return Ok(());
                    }
                }
            }
        }
    }

    /// One connection from dialling to its end; on shutdown, also stops the runs
    /// and closes the socket.
    async fn session(&mut self) -> Ended {
        let hello = AgentHello {
            token: self.credential.token().to_owned(),
            runs: self.runs.report(),
            ..self.hello.clone()
        };
        let enrolling = self.credential.enrolling();
        tracing::debug!(url = %self.url, runs = hello.runs.len(), enrolling, "dialling the hub");
        let dialling = handshake::connect(&self.url, &self.trust, &hello, enrolling);
        let (mut ws, ack) = match self.unless_stopped(dialling).await {
            None => {
                self.stop_runs_offline().await;
                return Ended::Shutdown;
            }
            Some(Err(ended)) => return ended,
            Some(Ok((mut ws, Greeting::Enrolled(enrolled)))) => {
                let ended = self.keep_enrolled(enrolled);
                close(&mut ws, CloseCode::NORMAL, "enrolled").await;
                return ended;
            }
            Some(Ok((ws, Greeting::Ack(ack)))) => (ws, ack),
        };
        self.backoff.reset();
        self.runs.settle_orphans();
        while self.replies_rx.try_recv().is_ok() {}
        tracing::info!("connected to hub as {}", ack.principal.name);
        let metrics_feed = self.metrics.as_ref().map(Metrics::feed);
        let _online = self.event_queue.online();
        let queues = Queues {
            credential: &mut self.credential,
            runs: &mut self.runs,
            metrics_feed,
            event_rx: &mut self.event_rx,
            replies_rx: &mut self.replies_rx,
        };
        let ended = connection::serve(&mut ws, &ack, queues, &self.stop).await;
        if let Ended::Shutdown = ended {
            close(&mut ws, CloseCode::NORMAL, "agent shutting down").await;
        }
        ended
    }

    /// Stores the credential an enrollment yielded, to connect with it next;
    /// an agent that cannot keep it stops, as its enrollment is spent.
    fn keep_enrolled(&mut self, enrolled: Enrolled) -> Ended {
        let name = enrolled.name;
        match self.credential.store(enrolled.token) {
            Ok(()) => {
                tracing::info!(agent = %name, "enrolled; the credential is stored, reconnecting with it");
                Ended::Enrolled
            }
            Err(reason) => Ended::Rejected(anyhow::anyhow!(
                "enrolled as {name:?} but {reason}; remove the agent and enroll it again",
                name = name.as_str()
            )),
        }
    }

    /// Awaits `future`; `None` if the agent is told to stop first.
    async fn unless_stopped<F: Future>(&self, future: F) -> Option<F::Output> {
        tokio::select! {
            // A handshake that completed wins over a simultaneous shutdown, which
            // then stops the runs over the new connection.
            biased;
            output = future => Some(output),
            () = self.stop.shutdown.cancelled() => None,
        }
    }

    /// Cancels every run and waits, for at most the stop grace, for them to
    /// end; with no hub to deliver to, their reports stay in the spool.
    async fn stop_runs_offline(&mut self) {
        self.runs.cancel_all();
        let runs = &mut self.runs;
        let joined = async { while runs.join_next().await.is_some() {} };
        if tokio::time::timeout(self.stop.grace, joined).await.is_err() {
            tracing::warn!(
                "runs did not stop within {:?}; killing them",
                self.stop.grace
            );
        }
    }
}
