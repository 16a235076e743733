//! Ctrl-C for `muster run` and jobs: counting interrupts, and cancelling the
//! run or job on whichever connection to the hub is in use when the request
//! goes out.

use std::fmt;

use anyhow::Context;
use muster_client::{Client, ClientError};
use muster_proto::{ErrorCode, JobId, RunId};
use tokio::signal::unix::{Signal, SignalKind};
use tokio::sync::watch;

/// What Ctrl-C cancels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cancel {
    /// One run.
    Run(RunId),
    /// A job: its waiting targets end, its runs are killed.
    Job(JobId),
}

impl Cancel {
    /// Sends the cancel request on `client`.
    async fn send(self, client: &Client) -> Result<(), ClientError> {
        match self {
            Self::Run(run) => client.cancel_run(run).await,
            Self::Job(job) => client.cancel_job(job).await,
        }
    }
}

impl fmt::Display for Cancel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Run(run) => write!(f, "run {run}"),
            Self::Job(job) => write!(f, "job {job}"),
        }
    }
}

/// Asks the hub to cancel `what` on `client`. What already ended needs no
/// cancelling, and a connection that closed meanwhile is reported elsewhere.
pub(crate) async fn cancel(client: &Client, what: Cancel) {
    match what.send(client).await {
        Ok(()) | Err(ClientError::Closed(_)) => {}
        Err(err) if err.code() == Some(ErrorCode::InvalidState) => {}
        Err(err) => eprintln!("muster: cannot cancel {what}: {err}"),
    }
}

/// Asks the hub to cancel `what` without blocking the output stream, on the
/// follower's connection: the current one, or the next one if it is
/// reconnecting or the request was lost with a dropped connection. What
/// already ended needs no cancelling.
pub(crate) fn cancel_in_background(mut clients: watch::Receiver<Option<Client>>, what: Cancel) {
    tokio::spawn(async move {
        loop {
            let client = match clients.wait_for(Option::is_some).await {
                Ok(current) => current.clone(),
                Err(_) => return, // the follower has stopped
            };
            let Some(client) = client else { return };
            match what.send(&client).await {
                Ok(()) => return,
                Err(ClientError::Closed(_)) => {
                    if clients.changed().await.is_err() {
                        return;
                    }
                }
                Err(err) if err.code() == Some(ErrorCode::InvalidState) => return,
                Err(err) => {
                    eprintln!("muster: cannot cancel {what}: {err}");
                    return;
                }
            }
        }
    });
}

/// Counts SIGINTs (Ctrl-C) once installed; the default action (exit) is off.
pub(crate) struct Interrupts {
    signal: Signal,
    /// How many Ctrl-Cs there have been.
    pub(crate) count: u32,
}

impl Interrupts {
    /// Takes over Ctrl-C for this process.
    pub(crate) fn install() -> anyhow::Result<Self> {
        let signal = tokio::signal::unix::signal(SignalKind::interrupt())
            .context("installing the Ctrl-C handler")?;
        Ok(Self { signal, count: 0 })
    }

    /// Waits for the next Ctrl-C and returns how many there have been.
    pub(crate) async fn recv(&mut self) -> u32 {
        if self.signal.recv().await.is_none() {
            std::future::pending::<()>().await;
        }
        self.count += 1;
        self.count
    }
}
