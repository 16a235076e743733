//! Connecting again after a connection was lost: the shared [`Backoff`]
//! schedule, one warning per attempt, and a bound on how long to keep trying.
//!
//! The resumable follower and the retrying `run.create` both use a
//! [`Reconnector`]. It only dials and authenticates; what to resend on the new
//! connection is the caller's business.

use std::time::Duration;

use muster_proto::backoff::Backoff;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::client::{Client, Event};
use crate::error::ClientError;

/// How long reconnecting code keeps trying without a successful connection
/// before it gives up, unless told otherwise.
pub const DEFAULT_GIVE_UP_AFTER: Duration = Duration::from_secs(5 * 60);

/// Why reconnecting stopped.
#[derive(Debug)]
pub(crate) enum ReconnectError {
    /// Retrying cannot help: the token was rejected, or the hub speaks
    /// something else.
    Fatal(ClientError),
    /// No attempt succeeded for the whole give-up bound.
    GaveUp {
        /// How long the hub had been unreachable.
        waited: Duration,
        /// Why the last attempt failed.
        last_error: String,
    },
}

/// Dials a hub again and again, on the [`Backoff`] schedule. (No `Debug`:
/// it holds the token.)
pub(crate) struct Reconnector {
    hub_url: String,
    token: String,
    backoff: Backoff,
    give_up_after: Duration,
    /// When the last good connection was lost; `None` while connected.
    down_since: Option<Instant>,
}

impl Reconnector {
    /// A reconnector for the hub at `hub_url`, currently connected.
    pub(crate) fn new(hub_url: &str, token: &str, give_up_after: Duration) -> Self {
        Self {
            hub_url: hub_url.to_owned(),
            token: token.to_owned(),
            backoff: Backoff::new(),
            give_up_after,
            down_since: None,
        }
    }

    /// One attempt, without waiting and without a warning: the first connection.
    pub(crate) async fn connect(&self) -> Result<(Client, mpsc::Receiver<Event>), ClientError> {
        Client::connect(&self.hub_url, &self.token).await
    }

    /// Records a connection that did its job: the schedule and the give-up
    /// clock start over.
    pub(crate) fn connected(&mut self) {
        self.backoff.reset();
        self.down_since = None;
    }

    /// Connects again after a connection was lost because of `last_error`.
    ///
    /// Waits the next delay of the schedule before each attempt, and logs one
    /// warning per attempt, naming `what` is being resumed. The give-up clock
    /// runs from the first loss not followed by [`connected`](Self::connected).
    pub(crate) async fn reconnect(
        &mut self,
        what: &str,
        mut last_error: String,
    ) -> Result<(Client, mpsc::Receiver<Event>), ReconnectError> {
        let down_since = *self.down_since.get_or_insert_with(Instant::now);
        // `None`: a bound too far away to represent, which never comes.
        let deadline = down_since.checked_add(self.give_up_after);
        loop {
            let remaining = deadline.map_or(Duration::MAX, |d| {
                d.saturating_duration_since(Instant::now())
            });
            let delay = self.backoff.next_delay().min(remaining);
            tracing::warn!(
                error = %last_error,
                retry_in_ms = delay.as_millis(),
                "connection to the hub lost; reconnecting to resume {what}"
            );
            tokio::time::sleep(delay).await;
            match Client::connect(&self.hub_url, &self.token).await {
                Ok(connection) => return Ok(connection),
                Err(err) if !is_retryable(&err) => return Err(ReconnectError::Fatal(err)),
                Err(err) => last_error = err.to_string(),
            }
            if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                return Err(ReconnectError::GaveUp {
                    waited: down_since.elapsed(),
                    last_error,
                });
            }
        }
    }
}

/// Whether connecting again later can succeed after `err`.
pub(crate) fn is_retryable(err: &ClientError) -> bool {
    match err {
        ClientError::Connect(_) | ClientError::Closed(_) => true,
        ClientError::Hub(data) => data.recoverable,
        ClientError::Auth(_) | ClientError::Protocol(_) => false,
    }
}
