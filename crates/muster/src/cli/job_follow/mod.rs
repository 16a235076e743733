//! Creating a job and following it to its end: the part `muster run -l`,
//! `muster action -l` and `muster job run` share.
//!
//! The job is created with `subscribe`, and a `muster_client::JobFollower`
//! takes over the connection: it delivers the job's events and every step's
//! output once each and in order, reconnecting and replaying whatever a
//! dropped connection missed, and at the end the job as the hub stored it.
//! This module creates the job and handles Ctrl-C; `view.rs` presents what
//! the follower delivers: each run's output line by line, prefixed with the
//! agent's name (or, with `--group`, as one block when the run ends), a live
//! status line on a terminal, and a summary (or, with `--json`, the final
//! `JobInfo`). It exits 0 when the job succeeded, 1 when it failed, 130 when
//! it was cancelled.
//!
//! Ctrl-C once asks the hub to cancel the job and keeps following it to its
//! end (exit 130); a second Ctrl-C exits 130 at once.

mod screen;
mod tracks;
mod view;

use std::process::ExitCode;

use anyhow::anyhow;
use muster_client::{
    Client, ClientError, DEFAULT_GIVE_UP_AFTER, Event, JobAccepted, JobCreate, JobFollowOptions,
    JobFollower, create_job_retrying, new_idempotency_key,
};
use muster_proto::JobId;
use muster_proto::jobs::{JobSpec, JobState};
use tokio::sync::mpsc;

use self::view::JobView;
use super::HubConn;
use super::cancel::{Cancel, Interrupts, cancel};
use super::exit::EXIT_CANCELLED;
use super::output;

/// Exit code of a job that failed.
const EXIT_JOB_FAILED: u8 = 1;

/// One open connection: its client handle and its events.
type Connection = (Client, mpsc::Receiver<Event>);

/// How to follow a job.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct JobOptions {
    /// Print each run's output as one block when it ends.
    pub(crate) group: bool,
    /// Print the job id and exit without following it.
    pub(crate) detach: bool,
    /// Print no output, and the final job as JSON instead of a summary.
    pub(crate) json: bool,
}

/// Creates the job `spec` on the hub and follows it to its end; see the
/// [module docs](self).
/// `idempotency_key` (random when `None`) makes a repeat follow the job the
/// first request created.
pub(crate) async fn run_job(
    conn: &HubConn,
    spec: JobSpec,
    options: JobOptions,
    idempotency_key: Option<String>,
) -> anyhow::Result<ExitCode> {
    let mut interrupts = Interrupts::install()?;
    let Some(connection) = conn.connect_or_interrupt(&mut interrupts).await? else {
        return Ok(ExitCode::from(EXIT_CANCELLED));
    };
    let Some((accepted, connection)) = create(
        connection,
        conn,
        spec,
        idempotency_key,
        !options.detach,
        &mut interrupts,
    )
    .await?
    else {
        return Ok(ExitCode::from(EXIT_CANCELLED));
    };
    let job = accepted.job;
    if options.detach {
        return detached(connection.0, job.id, interrupts.count > 0).await;
    }
    // A job found by its idempotency key was not subscribed to: the follower
    // subscribes and replays its events so far.
    let subscribed = accepted.created;
    let follow = JobFollowOptions {
        output: !options.json,
        give_up_after: DEFAULT_GIVE_UP_AFTER,
    };
    let (hub, token) = (&conn.hub, &conn.token.0);
    let follower = JobFollower::with_connection(connection, hub, token, job.id, subscribed, follow);
    JobView::new(&job, options, interrupts)
        .follow(follower)
        .await
}

/// Creates the job; `None` when a second Ctrl-C said to stop waiting. A first
/// Ctrl-C is counted, and the caller cancels the job once it exists.
///
/// The request carries an idempotency key and is sent again on a new
/// connection if the connection drops before the reply, so exactly one job
/// is created. `created` is false when a repeat found the job an earlier copy
/// made: it is not subscribed to, and its events so far are replayed.
async fn create(
    connection: Connection,
    conn: &HubConn,
    spec: JobSpec,
    idempotency_key: Option<String>,
    subscribe: bool,
    interrupts: &mut Interrupts,
) -> anyhow::Result<Option<(JobAccepted, Connection)>> {
    let create = JobCreate {
        spec,
        subscribe,
        idempotency_key: Some(idempotency_key.unwrap_or_else(new_idempotency_key)),
    };
    let request = create_job_retrying(
        connection,
        &conn.hub,
        &conn.token.0,
        create,
        DEFAULT_GIVE_UP_AFTER,
    );
    tokio::pin!(request);
    // Events are left queued: with `subscribe`, the job's first ones may come
    // before the reply.
    loop {
        tokio::select! {
            result = &mut request => {
                let (client, events, accepted) = result.map_err(create_error)?;
                return Ok(Some((accepted, (client, events))));
            }
            count = interrupts.recv() => if count > 1 {
                return Ok(None);
            },
        }
    }
}

/// Describes a failed `job.create`.
fn create_error(err: ClientError) -> anyhow::Error {
    match err {
        ClientError::Connect(reason) => anyhow!(
            "lost the hub before it accepted the job ({reason}); \
             check muster jobs list before trying again"
        ),
        other => other.into(),
    }
}

/// `--detach`: prints the job id, cancels the job if Ctrl-C came meanwhile.
async fn detached(client: Client, job: JobId, interrupted: bool) -> anyhow::Result<ExitCode> {
    output::print(&format!("{job}\n"))?;
    if interrupted {
        cancel(&client, Cancel::Job(job)).await;
    }
    client.close().await;
    Ok(ExitCode::from(if interrupted { EXIT_CANCELLED } else { 0 }))
}

/// The exit code for a job that ended in `state`.
pub(crate) fn job_exit(state: JobState) -> u8 {
    match state {
        JobState::Succeeded => 0,
        JobState::Failed | JobState::Running => EXIT_JOB_FAILED,
        JobState::Cancelled => EXIT_CANCELLED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_states_map_to_exit_codes() {
        assert_eq!(job_exit(JobState::Succeeded), 0);
        assert_eq!(job_exit(JobState::Failed), 1);
        assert_eq!(job_exit(JobState::Cancelled), 130);
    }
}
