//! The agent's lifetime: connect, serve, back off, reconnect, and stop.
//!
//! Runs belong to the agent, not to a connection. Every run queues its
//! messages on one bounded outgoing channel; a live connection forwards them
//! to the hub. While there is no connection (backoff delay, dialling) the
//! messages are read and dropped, so pipe readers never block for long: this
//! version has no spool, and output or `run.exited` produced while disconnected
//! is lost (the hub reports such runs on its side). On shutdown every run is
//! cancelled and given a bounded grace to report before the socket is closed
//! with 1000; runs still going after that are killed with their process groups.

use std::sync::Arc;
use std::time::Duration;

use muster_proto::CloseCode;
use muster_proto::messages::AgentHello;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::AgentOptions;
use crate::backoff::Backoff;
use crate::connection::{self, Ended, close, encode, send};
use crate::executor::Executor;
use crate::handshake::{self, Ws};
use crate::runs::Runs;
use crate::sink::Outgoing;

/// Messages queued from all runs to the connection. Each is at most one
/// 10 KiB output chunk, so a full queue holds about 2.5 MiB; when it is full,
/// the batchers and then the pipe readers wait, which slows noisy processes
/// down instead of buffering without bound.
const OUTGOING_CAPACITY: usize = 256;

/// Added to the kill grace when waiting for runs to stop at shutdown.
const STOP_MARGIN: Duration = Duration::from_secs(2);

/// How long each message may take to send while the agent is stopping.
const STOP_SEND_TIMEOUT: Duration = Duration::from_secs(2);

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
    let url = handshake::agent_ws_url(&options.hub_url)?;
    let (outgoing_tx, outgoing_rx) = mpsc::channel(OUTGOING_CAPACITY);
    let agent = Agent {
        hello: handshake::hello(&options),
        url,
        runs: Runs::new(executor, outgoing_tx),
        outgoing_rx,
        shutdown,
        backoff: Backoff::new(),
        stop_grace: options.kill_grace + STOP_MARGIN,
    };
    agent.run().await
}

/// Everything the agent keeps across connections.
struct Agent {
    url: String,
    hello: AgentHello,
    runs: Runs,
    outgoing_rx: mpsc::Receiver<Outgoing>,
    shutdown: CancellationToken,
    backoff: Backoff,
    /// How long runs get to report after being cancelled at shutdown.
    stop_grace: Duration,
}

impl Agent {
    async fn run(mut self) -> anyhow::Result<()> {
        loop {
            match self.session().await {
                Ended::Shutdown => return Ok(()),
                Ended::Rejected(error) => {
                    self.stop_runs(None).await;
                    return Err(error);
                }
                Ended::Lost(error) => {
                    let delay = self.backoff.next_delay();
                    tracing::warn!(
                        "disconnected from the hub: {error:#}; reconnecting in {delay:.1?}"
                    );
                    let waited = idle(
                        &mut self.outgoing_rx,
                        &self.shutdown,
                        tokio::time::sleep(delay),
                    );
                    if waited.await.is_none() {
                        self.stop_runs(None).await;
                        return Ok(());
                    }
                }
            }
        }
    }

    /// One connection from dialling to its end; on shutdown, also stops the runs
    /// and closes the socket.
    async fn session(&mut self) -> Ended {
        let dialling = handshake::connect(&self.url, &self.hello);
        let (mut ws, ack) = match idle(&mut self.outgoing_rx, &self.shutdown, dialling).await {
            None => {
                self.stop_runs(None).await;
                return Ended::Shutdown;
            }
            Some(Err(ended)) => return ended,
            Some(Ok(connected)) => connected,
        };
        self.backoff.reset();
        tracing::info!("connected to hub as {}", ack.principal.name);
        let ended = connection::serve(
            &mut ws,
            &ack,
            &mut self.runs,
            &mut self.outgoing_rx,
            &self.shutdown,
        )
        .await;
        if let Ended::Shutdown = ended {
            self.stop_runs(Some(&mut ws)).await;
            close(&mut ws, CloseCode::NORMAL, "agent shutting down").await;
        }
        ended
    }

    /// Cancels every run and forwards what they report to `ws` (or drops it),
    /// for at most the stop grace; then kills what is left.
    async fn stop_runs(&mut self, mut ws: Option<&mut Ws>) {
        self.runs.cancel_all();
        let deadline = tokio::time::sleep(self.stop_grace);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                joined = self.runs.join_next() => if joined.is_none() { break },
                Some(outgoing) = self.outgoing_rx.recv() => forward(&mut ws, outgoing).await,
                () = &mut deadline => {
                    tracing::warn!("runs did not stop within {:?}; killing them", self.stop_grace);
                    break;
                }
            }
        }
        self.runs.abort_all().await;
        while let Ok(outgoing) = self.outgoing_rx.try_recv() {
            forward(&mut ws, outgoing).await;
        }
    }
}

/// Awaits `future` while dropping outgoing messages, since no hub is there to
/// take them; `None` if `shutdown` fires first.
async fn idle<F: Future>(
    outgoing_rx: &mut mpsc::Receiver<Outgoing>,
    shutdown: &CancellationToken,
    future: F,
) -> Option<F::Output> {
    tokio::pin!(future);
    loop {
        tokio::select! {
            // A handshake that completed wins over a simultaneous shutdown, which
            // then closes the connection properly.
            biased;
            output = &mut future => return Some(output),
            () = shutdown.cancelled() => return None,
            Some(outgoing) = outgoing_rx.recv() => {
                tracing::trace!("no hub connection; dropping {}", describe(&outgoing));
            }
        }
    }
}

/// Sends to the hub while stopping; after a failure, the rest is dropped.
async fn forward(ws: &mut Option<&mut Ws>, outgoing: Outgoing) {
    let Some(socket) = ws.as_deref_mut() else {
        return;
    };
    if let Err(ended) = send(socket, encode(outgoing), STOP_SEND_TIMEOUT).await {
        tracing::debug!("cannot report to the hub while stopping: {ended:?}");
        *ws = None;
    }
}

fn describe(outgoing: &Outgoing) -> String {
    match outgoing {
        Outgoing::Started(started) => format!("run.started of {}", started.run),
        Outgoing::Output(frame) => format!("output of {}", frame.header.run),
        Outgoing::Exited(exited) => format!("run.exited of {}", exited.run),
    }
}
