//! The client subcommands: `agents`, `keys`, `enroll`, `run`, `action`,
//! `runs`, `job`, `jobs`, `top`, `sessions` and `shell`.
//!
//! Each talks to a hub through `muster-client`. This module owns what they
//! share: the `--hub`/`--token` arguments, connecting, and turning hub errors
//! about a named agent or run into one plain line for stderr. Every failure
//! surfaces as an error that `main` prints as `muster: <reason>` and maps to
//! [`EXIT_ERROR`].

pub(crate) mod action;
pub(crate) mod agents;
pub(crate) mod audit;
pub(crate) mod cancel;
pub(crate) mod enroll;
pub(crate) mod events;
pub(crate) mod exit;
pub(crate) mod fleet;
pub(crate) mod job;
pub(crate) mod job_follow;
pub(crate) mod jobs;
pub(crate) mod keys;
pub(crate) mod metrics;
pub(crate) mod output;
pub(crate) mod parse;
pub(crate) mod run;
pub(crate) mod run_events;
pub(crate) mod runs;
pub(crate) mod sessions;
pub(crate) mod shell;
pub(crate) mod stream;
pub(crate) mod target;
pub(crate) mod top;
pub(crate) mod units;
pub(crate) mod workflow;

use std::fmt;
use std::str::FromStr;

use muster_client::{Client, ClientError, Event, FollowOptions, RunFollower};
use muster_proto::{AgentName, ErrorCode, RunId};
use tokio::sync::mpsc;

/// Exit code when the hub cannot be reached, rejects us, or refuses the request.
pub(crate) const EXIT_ERROR: u8 = 255;

/// How to reach the hub, shared by every client subcommand.
#[derive(Clone, Debug, clap::Args)]
pub(crate) struct HubConn {
    /// Hub base URL, such as http://127.0.0.1:7070.
    #[arg(long, env = "MUSTER_HUB", value_name = "URL")]
    pub(crate) hub: String,
    /// API token.
    #[arg(
        long,
        env = "MUSTER_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub(crate) token: Token,
    /// PEM file of the CA certificates that verify an https:// hub, instead
    /// of the system's roots.
    #[arg(long, env = "MUSTER_CA_FILE", value_name = "FILE")]
    pub(crate) ca_file: Option<std::path::PathBuf>,
}

impl HubConn {
    /// Connects and authenticates.
    pub(crate) async fn connect(&self) -> Result<(Client, mpsc::Receiver<Event>), ClientError> {
        // Every connection of this process, reconnections included, trusts the same roots.
        let _ = muster_client::set_trust_roots(match &self.ca_file {
            Some(path) => muster_client::TrustRoots::ca_file(path),
            None => muster_client::TrustRoots::system(),
        });
        Client::connect(&self.hub, &self.token.0).await
    }

    /// Connects again after a dropped connection, waiting `backoff` before
    /// each try, until it is back; a refused credential is an error, as
    /// trying again cannot help. `following` names what is followed, for
    /// the log.
    pub(crate) async fn reconnect(
        &self,
        backoff: &mut muster_proto::backoff::Backoff,
        following: &str,
    ) -> anyhow::Result<(Client, mpsc::Receiver<Event>)> {
        loop {
            tokio::time::sleep(backoff.next_delay()).await;
            match self.connect().await {
                Ok(connection) => return Ok(connection),
                Err(ClientError::Auth(e)) => anyhow::bail!("authentication failed: {e}"),
                Err(e) => tracing::warn!(error = %e, "reconnecting to follow {following}"),
            }
        }
    }

    /// Connects and authenticates, unless Ctrl-C comes first (`None`).
    pub(crate) async fn connect_or_interrupt(
        &self,
        interrupts: &mut cancel::Interrupts,
    ) -> Result<Option<(Client, mpsc::Receiver<Event>)>, ClientError> {
        tokio::select! {
            connected = self.connect() => connected.map(Some),
            _ = interrupts.recv() => Ok(None),
        }
    }

    /// Follows `run` to its end, starting on `connection` and reconnecting to
    /// this hub whenever the connection drops.
    pub(crate) fn follow(
        &self,
        (client, events): (Client, mpsc::Receiver<Event>),
        run: RunId,
    ) -> RunFollower {
        let options = FollowOptions::default();
        RunFollower::with_connection(client, events, &self.hub, &self.token.0, run, options)
    }
}

/// A secret from the command line; `Debug` never shows it.
#[derive(Clone)]
pub(crate) struct Token(String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl FromStr for Token {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// Rewrites "not found" and "offline" errors so they name `agent`.
pub(crate) fn agent_error(agent: &AgentName) -> impl FnOnce(ClientError) -> anyhow::Error {
    move |err| match err.code() {
        Some(ErrorCode::AgentNotFound) => anyhow::anyhow!("agent {:?} not found", agent.as_str()),
        Some(ErrorCode::AgentOffline) => anyhow::anyhow!("agent {:?} is offline", agent.as_str()),
        _ => err.into(),
    }
}

/// Rewrites "not found" errors (and "no channel" for the run's channel) so they name `run`.
pub(crate) fn run_error(run: RunId) -> impl FnOnce(ClientError) -> anyhow::Error {
    move |err| match err.code() {
        Some(ErrorCode::RunNotFound | ErrorCode::UnknownChannel) => {
            anyhow::anyhow!("run {run} not found")
        }
        _ => err.into(),
    }
}

#[cfg(test)]
mod tests {
    use muster_proto::messages::ErrorData;

    use super::*;

    #[test]
    fn a_hub_without_its_store_is_reported_plainly() {
        let data = ErrorData::new(ErrorCode::StorageUnavailable, "disk full");
        let agent = AgentName::new("web-1").unwrap();
        let err = agent_error(&agent)(ClientError::Hub(data.clone()));
        let text = format!("{err:#}");
        assert!(
            text.starts_with("the hub cannot write to its store"),
            "{text}"
        );
        assert!(text.ends_with("(STORAGE_UNAVAILABLE: disk full)"), "{text}");
        let err = run_error(RunId::generate())(ClientError::Hub(data));
        assert!(format!("{err:#}").contains("try again later"), "{err:#}");
    }
}
