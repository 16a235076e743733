//! Running a command and waiting for its result in one call:
//! [`Client::execute`], seed 004's `executeOnAgent(host, cmd, timeout)`.
//!
//! The run is created on the client's connection (with an idempotency key,
//! so a connection that drops before the hub answers is replaced and the same
//! request sent again, creating one run at most), then followed to its end
//! by a [`RunFollower`] on a connection of its own, which replays its output
//! from the start and resumes after drops and hub restarts. The client's own
//! event receiver sees nothing of it.

use std::time::Duration;

use muster_proto::types::RunRequest;
use muster_proto::{AgentName, CommandSpec, ErrorCode, OutputStream, RunId, RunInfo, RunState};

use crate::RunAccepted;
use crate::client::Client;
use crate::error::ClientError;
use crate::follow::{FollowError, FollowEvent, FollowOptions, RunFollower};
use crate::reconnect::{DEFAULT_GIVE_UP_AFTER, Reconnector};
use crate::submit::{create_run_retrying, into_client_error, new_idempotency_key};

/// What a command did: its output and how its run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    /// The run, for `runs show` and the like.
    pub run: RunId,
    /// How the run ended: always a terminal state.
    pub state: RunState,
    /// The exit code, when the process exited by itself.
    pub exit_code: Option<i32>,
    /// The signal that killed the process, when one did.
    pub signal: Option<i32>,
    /// Why the run failed, was rejected, expired or was lost.
    pub error: Option<String>,
    /// With `rejected`: why the agent refused it (`COMMANDS_DISABLED`,
    /// `UNKNOWN_ACTION`, `INVALID_PARAMS`).
    pub error_code: Option<ErrorCode>,
    /// Everything the command wrote to stdout, byte for byte.
    pub stdout: Vec<u8>,
    /// Everything the command wrote to stderr, byte for byte.
    pub stderr: Vec<u8>,
    /// The output went past the hub's per-run cap and was cut there.
    pub truncated: bool,
}

impl Output {
    /// Whether the command ran and exited 0.
    pub fn success(&self) -> bool {
        self.state == RunState::Completed && self.exit_code == Some(0)
    }

    fn new(run: RunInfo, stdout: Vec<u8>, stderr: Vec<u8>) -> Self {
        Self {
            run: run.id,
            state: run.state,
            exit_code: run.exit_code,
            signal: run.signal,
            error: run.error,
            error_code: run.error_code,
            stdout,
            stderr,
            truncated: run.output_truncated,
        }
    }
}

/// Why [`Client::execute`] has no [`Output`].
#[derive(Clone, Debug, thiserror::Error)]
pub enum ExecuteError {
    /// No run was created, so nothing ran: the hub refused the request
    /// (`code()` says why: `AGENT_NOT_FOUND`, `AGENT_OFFLINE` with a `ttl_ms`
    /// of 0, `QUEUE_FULL`, `INVALID_MESSAGE`, `FORBIDDEN`, or the transient
    /// `STORAGE_UNAVAILABLE`), or it could not be reached.
    #[error(transparent)]
    NotCreated(ClientError),
    /// The run was created, but its end could not be seen: the hub stayed
    /// out of reach past the give-up bound, closed the connection for good,
    /// or lost part of the output. The command may have run; look the run up.
    #[error("lost track of run {run}: {source}")]
    Follow {
        /// The run.
        run: RunId,
        /// Why following it stopped.
        source: FollowError,
    },
}

impl ExecuteError {
    /// The hub's error code, when the hub refused the run.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::NotCreated(err) => err.code(),
            Self::Follow { .. } => None,
        }
    }
}

impl Client {
    /// Runs `command` on `agent`, waits for it to end and returns its output
    /// and how it ended.
    ///
    /// `timeout` (at most 30 days; the hub refuses more with
    /// `INVALID_MESSAGE`) becomes the run's `timeout_ms`: the agent kills the command
    /// once it has run that long, and the run ends `timed_out`, with the
    /// output written until then. It is also the run's `ttl_ms`: a run that
    /// could not start within `timeout` — its agent busy, or offline and not
    /// back in time — ends `expired`, and nothing ran. (So the call returns
    /// within about twice the timeout, plus the time the hub takes to notice
    /// an agent that vanished mid-run, which ends the run `lost`.)
    ///
    /// Every run that ends is an `Ok`: check [`Output::success`], or
    /// `state`. A run the agent refused ends `rejected` (nothing ran;
    /// `error_code` says why: raw commands on an actions-only agent, an
    /// unknown action, invalid parameters), one that could not start ends
    /// `failed`. An unknown agent is [`ExecuteError::NotCreated`] with
    /// `AGENT_NOT_FOUND`. To fail at once when the agent is not connected,
    /// rather than wait for it, use [`execute_request`](Self::execute_request)
    /// with `ttl_ms: Some(0)`: the hub then refuses with `AGENT_OFFLINE`.
    ///
    /// ```no_run
    /// # async fn demo(client: &muster_client::Client) -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use muster_client::{AgentName, CommandSpec};
    ///
    /// let agent = AgentName::new("web-1")?;
    /// let command = CommandSpec::Argv(vec!["uptime".into()]);
    /// let output = client.execute(&agent, command, Duration::from_secs(30)).await?;
    /// if output.success() {
    ///     print!("{}", String::from_utf8_lossy(&output.stdout));
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// Dropping the future stops waiting but not the run: it ends by its
    /// timeout.
    pub async fn execute(
        &self,
        agent: &AgentName,
        command: CommandSpec,
        timeout: Duration,
    ) -> Result<Output, ExecuteError> {
        let millis = u64::try_from(timeout.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let request = RunRequest {
            timeout_ms: Some(millis),
            ttl_ms: Some(millis),
            ..RunRequest::new(agent.clone(), command)
        };
        self.execute_request(request).await
    }

    /// Runs `request` as given — environment, working directory, priority,
    /// `timeout_ms` and `ttl_ms` included — and waits for it to end, as
    /// [`execute`](Self::execute) does. Without `timeout_ms` the command may
    /// run for ever; without `ttl_ms` it may wait for its agent as long as
    /// the hub's default (an hour). A request without an idempotency key gets
    /// a fresh one.
    pub async fn execute_request(&self, mut request: RunRequest) -> Result<Output, ExecuteError> {
        request
            .idempotency_key
            .get_or_insert_with(new_idempotency_key);
        let accepted = self
            .create_surviving_drops(request)
            .await
            .map_err(ExecuteError::NotCreated)?;
        let run = accepted.run.id;
        let credentials = self.credentials();
        let options = FollowOptions::default();
        let follower = RunFollower::new(&credentials.hub_url, &credentials.token, run, options);
        collect(follower)
            .await
            .map_err(|source| ExecuteError::Follow { run, source })
    }

    /// Creates the run on this connection, or, if it has dropped, on new ones
    /// (the request's idempotency key makes the copies one run).
    async fn create_surviving_drops(
        &self,
        request: RunRequest,
    ) -> Result<RunAccepted, ClientError> {
        let reason = match self.create_run(request.clone(), false).await {
            Err(ClientError::Closed(reason)) => reason,
            other => return other,
        };
        let credentials = self.credentials();
        let (hub_url, token) = (&credentials.hub_url, &credentials.token);
        let mut reconnector = Reconnector::new(hub_url, token, DEFAULT_GIVE_UP_AFTER);
        let connection = reconnector
            .reconnect("creating the run", reason)
            .await
            .map_err(into_client_error)?;
        let give_up = DEFAULT_GIVE_UP_AFTER;
        let (client, _events, accepted) =
            create_run_retrying(connection, hub_url, token, request, false, give_up).await?;
        client.close().await;
        Ok(accepted)
    }
}

/// Reads a followed run to its end, keeping its output.
async fn collect(mut follower: RunFollower) -> Result<Output, FollowError> {
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    while let Some(event) = follower.next().await {
        match event? {
            FollowEvent::Output(frame) => match frame.header.stream {
                OutputStream::Stdout => stdout.extend_from_slice(&frame.payload),
                OutputStream::Stderr => stderr.extend_from_slice(&frame.payload),
                // A session's input records are not the process's output.
                OutputStream::Input => {}
            },
            FollowEvent::Finished(run) => return Ok(Output::new(*run, stdout, stderr)),
            FollowEvent::Queued { .. } | FollowEvent::Status(_) | FollowEvent::Synced { .. } => {}
        }
    }
    let stopped = "the follower stopped before the run ended".to_owned();
    Err(FollowError::Client(ClientError::Closed(stopped)))
}
