//! Following streams to their end across dropped connections and hub
//! restarts: one run's output with [`RunFollower`], a whole job — its events
//! and every step's output — with [`JobFollower`].
//!
//! A follower owns a background task and its connections. The task
//! subscribes with `since` = the next entry it needs, passes every entry on
//! exactly once and in order, and drops what a resubscription repeats. When
//! the connection drops (for any reason but a fatal close code), it
//! reconnects on the shared [`Backoff`](muster_proto::backoff::Backoff)
//! schedule, authenticates again and resubscribes from where it stopped,
//! giving up after [`DEFAULT_GIVE_UP_AFTER`](crate::DEFAULT_GIVE_UP_AFTER)
//! (or what its options say) without a working connection. A hole in a stream
//! is never skipped silently: it ends the follower with an error, or (for one
//! step's output in a job) is reported as an event.

mod job;
mod run;
mod seq;

use std::time::Duration;

use muster_proto::JobId;

use crate::error::ClientError;

pub use job::{JobEvent, JobFollowEvent, JobFollowOptions, JobFollower, StepOutput, StepRef};
pub use run::{FollowEvent, FollowOptions, RunFollower};

/// Capacity of the channel from a follower's task to its handle.
///
/// When it is full the task stops reading its connection, so a consumer that
/// cannot keep up slows the hub down (and, past the hub's own queue, gets
/// disconnected with 4008 and resumed) instead of this process buffering
/// without bound. 64 items hold at most ~640 KiB of output.
const FOLLOW_CHANNEL_CAPACITY: usize = 64;

/// Why a follower stopped before the run or job ended.
#[derive(Clone, Debug, thiserror::Error)]
pub enum FollowError {
    /// The hub refused: the token (`Auth`), the run (`Hub` with
    /// `UNKNOWN_CHANNEL`), or it sent something this client cannot read.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The hub closed the connection with a fatal code (4001 auth failed,
    /// 4011 revoked); reconnecting with the same token cannot help.
    #[error("the hub closed the connection for good (code {code}): {reason}")]
    FatalClose {
        /// The close code.
        code: u16,
        /// The close reason.
        reason: String,
    },
    /// No connection succeeded (or none could subscribe, the hub's store
    /// being unavailable) for the whole give-up bound.
    #[error("gave up after {}s without a working connection to the hub: {last_error}", .waited.as_secs())]
    GaveUp {
        /// How long the hub had been unreachable.
        waited: Duration,
        /// Why the last attempt failed.
        last_error: String,
    },
    /// The hub's stream skipped output chunks `expected..got`; they are not
    /// printed or passed on, and the follower stops rather than hide the hole.
    #[error("{} missing from the hub's stream", missing_chunks(*.expected, *.got))]
    Gap {
        /// The chunk that was due.
        expected: u64,
        /// The chunk the hub went on with.
        got: u64,
    },
    /// The job's events `expected..got` are missing from the hub's stream,
    /// and replaying them on a new connection did not bring them either.
    #[error("{} missing from the hub's stream of job {job}", missing_events(*.expected, *.got))]
    JobGap {
        /// The job.
        job: JobId,
        /// The event that was due.
        expected: u64,
        /// The event the hub went on with.
        got: u64,
    },
}

/// Names the chunks `expected..got` for an error message.
fn missing_chunks(expected: u64, got: u64) -> String {
    missing("output chunk", expected, got)
}

/// Names the job events `expected..got` for an error message.
fn missing_events(expected: u64, got: u64) -> String {
    missing("event", expected, got)
}

/// `{what} N is`, or `{what}s N to M are`, for the entries `expected..got`.
fn missing(what: &str, expected: u64, got: u64) -> String {
    if got <= expected + 1 {
        format!("{what} {expected} is")
    } else {
        format!("{what}s {expected} to {} are", got - 1)
    }
}
