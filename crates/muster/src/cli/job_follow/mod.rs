//! Creating a job and following it to its end: the part `muster run -l`,
//! `muster action -l` and `muster job run` share.
//!
//! The job is created with `subscribe`, so its connection receives every
//! event on `job:<id>` from seq 0. On each `job.step.started` the follower
//! subscribes to the step's `run:<id>` from output frame 0 and prints the
//! run's output as it comes, line by line, prefixed with the agent's name
//! (or, with `--group`, as one block when the run ends). A run is over when
//! its channel says so: a terminal `run.status`, or a `subscribe` reply with a
//! terminal run followed by the end of the replay; either comes after all of
//! its output. The job is over when its final `job.progress` has come and
//! every run it started is over; then the follower prints a summary (or, with
//! `--json`, the final `JobInfo`), and exits 0 when the job succeeded, 1 when
//! it failed, 130 when it was cancelled.
//!
//! When the connection drops, the follower reconnects on the shared backoff
//! schedule and subscribes again: the job from the next event it needs, every
//! unfinished run from the next output frame it needs. Events and frames
//! below those are duplicates and are dropped, so nothing is printed twice or
//! skipped; a hole in a stream makes it reconnect and replay again.
//!
//! Ctrl-C once asks the hub to cancel the job and keeps following it to its
//! end (exit 130); a second Ctrl-C exits 130 at once.

mod screen;
mod tracks;

use std::collections::HashMap;
use std::io::IsTerminal;
use std::pin::Pin;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::anyhow;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use muster_client::{
    Client, ClientError, DEFAULT_GIVE_UP_AFTER, Event, JobAccepted, JobCreate, Subscribed,
    create_job_retrying, new_idempotency_key,
};
use muster_proto::backoff::Backoff;
use muster_proto::jobs::{JobInfo, JobProgress, JobSpec, JobState};
use muster_proto::messages::{StepProgressEvent, StepStartedEvent};
use muster_proto::{CloseCode, Envelope, HubToClient, JobId, OutputFrame, RunId};
use muster_proto::{OutputStream, RunInfo, RunState};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use self::screen::Screen;
use self::tracks::{RunTrack, Verdict, outcome, step_outcome};
use super::cancel::{Cancel, Interrupts, cancel, cancel_in_background};
use super::exit::EXIT_CANCELLED;
use super::{HubConn, jobs, output};

/// Exit code of a job that failed.
const EXIT_JOB_FAILED: u8 = 1;

/// After this long without a message, with the job over but a run's output
/// not complete, the follower connects again and replays what is missing,
/// rather than wait for something that may never come.
const RESYNC_AFTER_SILENCE: Duration = Duration::from_secs(10);

/// One open connection: its client handle and its events.
type Connection = (Client, mpsc::Receiver<Event>);

/// A `subscribe` request in flight, and what it was for.
type Pending = Pin<Box<dyn Future<Output = (Sub, Result<Subscribed, ClientError>)> + Send>>;

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
    Follower::new(conn, &job, options, interrupts)
        .follow(connection, !accepted.created)
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

/// What a `subscribe` request was for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sub {
    /// The job's channel.
    Job,
    /// A run's channel.
    Run(RunId),
}

/// How serving one connection ended.
enum End {
    /// The job and every run of it are over.
    Done,
    /// A second Ctrl-C: stop now.
    Abort,
    /// Stop with this error.
    Failed(anyhow::Error),
    /// The connection was lost (or a stream had a hole), for this reason:
    /// reconnect and replay.
    Dropped(String),
}

/// Whether to go on (`Ok`) or how serving the connection ends (`Err`).
type Flow = Result<(), End>;

/// One connection in use, with its `subscribe` requests in flight.
struct Link {
    client: Client,
    events: mpsc::Receiver<Event>,
    pending: FuturesUnordered<Pending>,
}

impl Link {
    /// A link on a fresh connection, nothing requested yet.
    fn new((client, events): Connection) -> Self {
        Self {
            client,
            events,
            pending: FuturesUnordered::new(),
        }
    }

    /// Subscribes to `channel` from `since`, without waiting for the reply:
    /// events must be read meanwhile.
    fn subscribe(&mut self, sub: Sub, channel: String, since: u64) {
        let client = self.client.clone();
        self.pending.push(Box::pin(async move {
            (sub, client.subscribe(&channel, Some(since)).await)
        }));
    }
}

/// The state of a job being followed.
struct Follower<'a> {
    conn: &'a HubConn,
    job: JobId,
    /// `job:<id>`.
    channel: String,
    options: JobOptions,
    interrupts: Interrupts,
    /// The seq of the next event wanted on `job:<id>`.
    next_seq: u64,
    /// Target counts, as the last `job.progress` gave them.
    progress: JobProgress,
    /// The job's final state, once its last event came.
    ended: Option<JobState>,
    /// Every run a step started, by id.
    runs: HashMap<RunId, RunTrack>,
    screen: Screen<tokio::io::Stdout, tokio::io::Stderr>,
    /// The client of the connection in use, for cancelling in the background.
    clients: watch::Sender<Option<Client>>,
    backoff: Backoff,
    /// When the last good connection was lost; `None` while connected.
    down_since: Option<Instant>,
}

impl<'a> Follower<'a> {
    /// A follower of `job`, as `job.create` returned it (its targets give the
    /// width of the name column).
    fn new(conn: &'a HubConn, job: &JobInfo, options: JobOptions, interrupts: Interrupts) -> Self {
        let width = job
            .targets
            .iter()
            .map(|t| t.agent.as_str().chars().count())
            .max()
            .unwrap_or(0);
        let tty = !options.json && std::io::stderr().is_terminal();
        Self {
            conn,
            job: job.id,
            channel: job.id.channel().to_string(),
            options,
            interrupts,
            next_seq: 0,
            progress: job.progress,
            ended: None,
            runs: HashMap::new(),
            screen: Screen::new(width, tty),
            clients: watch::channel(None).0,
            backoff: Backoff::new(),
            down_since: None,
        }
    }

    /// Follows the job to its end, starting on `first` (already subscribed
    /// to the job from its start); prints the outcome and returns the exit code.
    /// Follows the job on `first`, subscribed to it live; with `replay`, its
    /// events so far are replayed first.
    async fn follow(mut self, first: Connection, replay: bool) -> anyhow::Result<ExitCode> {
        if self.interrupts.count > 0 {
            self.cancel_job();
        }
        let mut link = Link::new(first);
        if replay {
            self.resubscribe(&mut link);
        }
        loop {
            self.clients.send_replace(Some(link.client.clone()));
            match self.serve(&mut link).await {
                End::Done => break,
                End::Abort => return self.abort().await,
                End::Failed(err) => {
                    self.screen.clear_status().await?;
                    return Err(err);
                }
                End::Dropped(reason) => {
                    self.clients.send_replace(None);
                    link.client.clone().close().await;
                    let Some(connection) = self.reconnect(reason).await? else {
                        return self.abort().await;
                    };
                    link = Link::new(connection);
                    self.resubscribe(&mut link);
                }
            }
        }
        let Some(job) = self.final_info(&mut link).await? else {
            return self.abort().await;
        };
        link.client.close().await;
        self.finish(&job).await
    }

    /// Reads one connection until the job is over, the connection drops, or
    /// something stops the follower.
    async fn serve(&mut self, link: &mut Link) -> End {
        loop {
            if self.is_over() {
                return End::Done;
            }
            let flow = tokio::select! {
                event = link.events.recv() => self.on_event(event, link).await,
                Some((sub, reply)) = link.pending.next(), if !link.pending.is_empty() => {
                    self.on_reply(sub, reply).await
                }
                count = self.interrupts.recv() => self.on_interrupt(count).await,
                () = tokio::time::sleep(RESYNC_AFTER_SILENCE), if self.ended.is_some() => {
                    Err(End::Dropped("runs of the ended job went quiet; replaying".to_owned()))
                }
            };
            if let Err(end) = flow {
                return end;
            }
            if let Err(end) = self.show_status().await {
                return end;
            }
        }
    }

    /// Whether the job has ended and, unless only the final JSON is wanted,
    /// every run's output has been printed.
    fn is_over(&self) -> bool {
        self.ended.is_some() && (self.options.json || self.runs.values().all(|r| r.done))
    }

    /// Handles what the connection delivered: an end, an output frame or a message.
    async fn on_event(&mut self, event: Option<Event>, link: &mut Link) -> Flow {
        match event {
            None => Err(End::Dropped("the connection ended".to_owned())),
            Some(Event::Closed {
                code: Some(code),
                reason,
            }) if CloseCode::is_fatal(code) => Err(End::Failed(anyhow!(
                "the hub closed the connection for good (code {code}): {reason}"
            ))),
            Some(Event::Closed { code, reason }) => Err(End::Dropped(match code {
                Some(code) => format!("{reason} (close code {code})"),
                None => reason,
            })),
            Some(Event::Output(frame)) => self.on_output(frame).await,
            Some(Event::Message(envelope)) => self.on_message(envelope, link).await,
        }
    }

    /// Routes a message by its channel: the job's, a run's, or none.
    async fn on_message(&mut self, envelope: Envelope<HubToClient>, link: &mut Link) -> Flow {
        let Some(channel) = envelope.channel.as_deref() else {
            return self.on_unsolicited(envelope.msg);
        };
        if channel == self.channel {
            return self.on_job_message(envelope.msg, link).await;
        }
        match channel.strip_prefix("run:").and_then(|id| id.parse().ok()) {
            Some(run) => self.on_run_message(run, envelope.msg).await,
            None => Ok(()),
        }
    }

    /// An `error` that answers no request: the hub could not replay a
    /// stream, so replay again on a new connection.
    fn on_unsolicited(&mut self, msg: HubToClient) -> Flow {
        match msg {
            HubToClient::Error(error) => Err(End::Dropped(format!(
                "the hub could not replay a stream: {}",
                error.message
            ))),
            _ => Ok(()),
        }
    }

    /// A message on `job:<id>`: the end of a replay, or an event taken once, in
    /// order, by its `seq`.
    async fn on_job_message(&mut self, msg: HubToClient, link: &mut Link) -> Flow {
        if let HubToClient::StreamSynced(synced) = &msg {
            if synced.next_seq > self.next_seq {
                return Err(self.job_gap(synced.next_seq));
            }
            self.connected();
            return Ok(());
        }
        let Some(seq) = job_event_seq(&msg) else {
            return Ok(());
        };
        if seq < self.next_seq {
            return Ok(());
        }
        if seq > self.next_seq {
            return Err(self.job_gap(seq));
        }
        self.next_seq += 1;
        self.on_job_event(msg, link).await
    }

    /// The job's events `next_seq..got` are missing: replay them.
    fn job_gap(&self, got: u64) -> End {
        End::Dropped(format!(
            "job events {} to {} are missing",
            self.next_seq,
            got - 1
        ))
    }

    /// Applies the job event due next.
    async fn on_job_event(&mut self, msg: HubToClient, link: &mut Link) -> Flow {
        match msg {
            HubToClient::JobStepStarted(started) => self.step_started(started, link),
            HubToClient::JobStepProgress(event) => self.step_progress(&event).await,
            HubToClient::JobStepFailed(event) if event.continued && !self.options.json => {
                // The summary shows only how the target ended: say which step
                // failed on the way.
                let note = format!(
                    "step {:?} failed ({}); continuing, as the step allows",
                    event.name,
                    step_outcome(&event)
                );
                let written = self.screen.note(event.agent.as_str(), &note).await;
                written.map_err(write_failed)
            }
            HubToClient::JobProgress(event) => {
                self.progress = event.progress;
                if event.state.is_terminal() {
                    self.ended = Some(event.state);
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Starts following the output of a step's run.
    fn step_started(&mut self, started: StepStartedEvent, link: &mut Link) -> Flow {
        if self.options.json || self.runs.contains_key(&started.run) {
            return Ok(());
        }
        let track = RunTrack::new(started.agent, started.name);
        self.runs.insert(started.run, track);
        link.subscribe(Sub::Run(started.run), started.run.channel().to_string(), 0);
        Ok(())
    }

    /// Prints an event a step's process published.
    async fn step_progress(&mut self, event: &StepProgressEvent) -> Flow {
        if self.options.json {
            return Ok(());
        }
        let agent = event.agent.as_str();
        let written = self.screen.event(agent, &event.kind, &event.data).await;
        written.map_err(write_failed)
    }

    /// An output frame of a run: taken once, in order, and printed line by line
    /// (or held for its block with `--group`).
    async fn on_output(&mut self, frame: OutputFrame) -> Flow {
        let header = frame.header;
        let Some(track) = self.runs.get_mut(&header.run) else {
            return Ok(());
        };
        match track.frame(header.seq) {
            Verdict::Take => {}
            Verdict::Duplicate => return Ok(()),
            Verdict::Gap => {
                return Err(End::Dropped(format!(
                    "output of run {} is missing from chunk {}",
                    header.run, track.next_seq
                )));
            }
        }
        track.push(header.stream, &frame.payload);
        if self.options.group {
            return Ok(());
        }
        let lines = track.take_lines(header.stream);
        let agent = track.agent.clone();
        let written = self
            .screen
            .lines(agent.as_str(), header.stream, &lines)
            .await;
        written.map_err(write_failed)
    }

    /// A message on `run:<id>`: its terminal status, or the end of its replay.
    async fn on_run_message(&mut self, run: RunId, msg: HubToClient) -> Flow {
        let Some(track) = self.runs.get_mut(&run) else {
            return Ok(());
        };
        match msg {
            HubToClient::RunStatus(status) if status.run.state.is_terminal() => {
                self.run_over(run, Some(&status.run)).await
            }
            HubToClient::StreamSynced(synced) => {
                if synced.next_seq > track.next_seq {
                    return Err(End::Dropped(format!(
                        "output of run {run} is missing from chunk {}",
                        track.next_seq
                    )));
                }
                track.sub.synced = true;
                if synced.truncated {
                    let agent = track.agent.clone();
                    let note = "output was cut at the hub's per-run cap";
                    self.screen
                        .note(agent.as_str(), note)
                        .await
                        .map_err(write_failed)?;
                }
                match self.runs.get_mut(&run).and_then(|t| t.sub.ended.take()) {
                    Some(info) => self.run_over(run, Some(&info)).await,
                    None => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }

    /// The reply to a `subscribe`: a refused job subscription ends the follower;
    /// a refused run subscription ends that run's output with a note.
    async fn on_reply(&mut self, sub: Sub, reply: Result<Subscribed, ClientError>) -> Flow {
        match (sub, reply) {
            // The connection's end follows as an event, with its close code.
            (_, Err(ClientError::Closed(_))) => Ok(()),
            (Sub::Job, Ok(_)) => Ok(()),
            (Sub::Job, Err(err)) => Err(End::Failed(jobs::job_error(self.job)(err))),
            (Sub::Run(run), Ok(subscribed)) => self.run_subscribed(run, subscribed.run).await,
            (Sub::Run(run), Err(err)) => {
                let Some(track) = self.runs.get(&run) else {
                    return Ok(());
                };
                let agent = track.agent.clone();
                let note = format!("cannot follow the output of run {run}: {err}");
                self.screen
                    .note(agent.as_str(), &note)
                    .await
                    .map_err(write_failed)?;
                self.run_over(run, None).await
            }
        }
    }

    /// The reply to a run's subscription: if the run had already ended, it is
    /// over once the replay is complete (which may have happened already).
    async fn run_subscribed(&mut self, run: RunId, info: Option<RunInfo>) -> Flow {
        let Some(track) = self.runs.get_mut(&run) else {
            return Ok(());
        };
        match info {
            Some(info) if info.state.is_terminal() && track.sub.synced => {
                self.run_over(run, Some(&info)).await
            }
            Some(info) if info.state.is_terminal() => {
                track.sub.ended = Some(Box::new(info));
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// A run ended after all of its output: prints what is left of it, its
    /// block with `--group`, and how it ended if it did not simply exit.
    async fn run_over(&mut self, run: RunId, info: Option<&RunInfo>) -> Flow {
        let Some(track) = self.runs.get_mut(&run) else {
            return Ok(());
        };
        if track.done {
            return Ok(());
        }
        track.done = true;
        let out = track.take_all(OutputStream::Stdout);
        let err = track.take_all(OutputStream::Stderr);
        let agent = track.agent.as_str().to_owned();
        let step = track.step_name.clone();
        let ended = info.map_or_else(|| "ended".to_owned(), outcome);
        if self.options.group {
            let header = format!("{agent} · step {step:?} · {ended}");
            let written = self.screen.block(&header, &out, &err).await;
            return written.map_err(write_failed);
        }
        self.screen
            .lines(&agent, OutputStream::Stdout, &out)
            .await
            .map_err(write_failed)?;
        self.screen
            .lines(&agent, OutputStream::Stderr, &err)
            .await
            .map_err(write_failed)?;
        match info {
            Some(info) if info.state != RunState::Completed => {
                let note = format!("step {step:?} {ended}");
                self.screen.note(&agent, &note).await.map_err(write_failed)
            }
            _ => Ok(()),
        }
    }

    /// First Ctrl-C: cancel the job and keep following it; second: stop.
    async fn on_interrupt(&mut self, count: u32) -> Flow {
        if count > 1 {
            return Err(End::Abort);
        }
        self.screen.clear_status().await.map_err(write_failed)?;
        eprintln!(
            "muster: cancelling job {}; press Ctrl-C again to stop waiting",
            self.job
        );
        self.cancel_job();
        Ok(())
    }

    /// Asks the hub to cancel the job, on whichever connection is up.
    fn cancel_job(&self) {
        cancel_in_background(self.clients.subscribe(), Cancel::Job(self.job));
    }

    /// Redraws the status line (on a terminal).
    async fn show_status(&mut self) -> Flow {
        let text = status_text(self.job, &self.progress);
        self.screen.status(&text).await.map_err(write_failed)
    }

    /// A connection served its purpose: the backoff starts over.
    fn connected(&mut self) {
        self.backoff.reset();
        self.down_since = None;
    }

    /// Connects again after the connection was lost because of `reason`,
    /// waiting the backoff schedule between attempts; `None` when a second
    /// Ctrl-C said to stop waiting.
    async fn reconnect(&mut self, mut reason: String) -> anyhow::Result<Option<Connection>> {
        // The warnings below go to stderr too.
        self.screen.clear_status().await?;
        let down_since = *self.down_since.get_or_insert_with(Instant::now);
        loop {
            let delay = self.backoff.next_delay();
            tracing::warn!(
                error = %reason,
                retry_in_ms = delay.as_millis(),
                "connection to the hub lost; reconnecting to resume job {}",
                self.job
            );
            let attempt = async {
                tokio::time::sleep(delay).await;
                self.conn.connect().await
            };
            let result = tokio::select! {
                result = attempt => result,
                count = self.interrupts.recv() => {
                    if count > 1 {
                        return Ok(None);
                    }
                    self.cancel_job();
                    continue;
                }
            };
            match result {
                Ok(connection) => return Ok(Some(connection)),
                Err(err) if !is_retryable(&err) => return Err(err.into()),
                Err(err) => reason = err.to_string(),
            }
            if down_since.elapsed() >= DEFAULT_GIVE_UP_AFTER {
                anyhow::bail!(
                    "gave up after {}s without a connection to the hub: {reason}",
                    down_since.elapsed().as_secs()
                );
            }
        }
    }

    /// On a new connection: the job from the next event wanted, and every
    /// unfinished run from the next output frame wanted.
    fn resubscribe(&mut self, link: &mut Link) {
        link.subscribe(Sub::Job, self.channel.clone(), self.next_seq);
        for (run, track) in &mut self.runs {
            if !track.done {
                track.sub = Default::default();
                link.subscribe(Sub::Run(*run), run.channel().to_string(), track.next_seq);
            }
        }
    }

    /// The job as the hub stored it at its end, reconnecting if need be;
    /// `None` when a second Ctrl-C said to stop waiting.
    async fn final_info(&mut self, link: &mut Link) -> anyhow::Result<Option<JobInfo>> {
        loop {
            let client = link.client.clone();
            let request = client.job(self.job);
            tokio::pin!(request);
            // Fleet events keep coming: read them, or the reply waits behind them.
            let mut open = true;
            let reply = loop {
                tokio::select! {
                    reply = &mut request => break reply,
                    event = link.events.recv(), if open => open = event.is_some(),
                }
            };
            match reply {
                Ok(job) => return Ok(Some(job)),
                Err(ClientError::Closed(reason)) => match self.reconnect(reason).await? {
                    Some(connection) => *link = Link::new(connection),
                    None => return Ok(None),
                },
                Err(err) => return Err(jobs::job_error(self.job)(err)),
            }
        }
    }

    /// Prints the outcome — the summary, or the job as JSON — and returns the
    /// exit code.
    async fn finish(&mut self, job: &JobInfo) -> anyhow::Result<ExitCode> {
        self.screen.clear_status().await?;
        if self.options.json {
            output::print_json(job)?;
        } else {
            eprint!("{}", jobs::summary(job));
        }
        if self.interrupts.count > 0 {
            return Ok(ExitCode::from(EXIT_CANCELLED));
        }
        Ok(ExitCode::from(job_exit(job.state)))
    }

    /// A second Ctrl-C: stop now.
    async fn abort(&mut self) -> anyhow::Result<ExitCode> {
        self.screen.clear_status().await?;
        Ok(ExitCode::from(EXIT_CANCELLED))
    }
}

/// The `seq` of an event on a job's channel.
fn job_event_seq(msg: &HubToClient) -> Option<u64> {
    Some(match msg {
        HubToClient::JobProgress(e) => e.seq,
        HubToClient::JobStepStarted(e) => e.seq,
        HubToClient::JobStepProgress(e) => e.seq,
        HubToClient::JobStepCompleted(e) | HubToClient::JobStepFailed(e) => e.seq,
        HubToClient::JobTarget(e) => e.seq,
        _ => return None,
    })
}

/// The exit code for a job that ended in `state`.
pub(crate) fn job_exit(state: JobState) -> u8 {
    match state {
        JobState::Succeeded => 0,
        JobState::Failed | JobState::Running => EXIT_JOB_FAILED,
        JobState::Cancelled => EXIT_CANCELLED,
    }
}

/// The live status line: `job 01J… 3/5 done · 1 running · 1 queued · 1 failed`.
fn status_text(job: JobId, progress: &JobProgress) -> String {
    format!("job {job} {}", jobs::counts(progress))
}

/// Whether connecting again later can succeed after `err`.
fn is_retryable(err: &ClientError) -> bool {
    match err {
        ClientError::Connect(_) | ClientError::Closed(_) => true,
        ClientError::Hub(data) => data.recoverable,
        ClientError::Auth(_) | ClientError::Protocol(_) => false,
    }
}

/// A failed write to the terminal ends the follower.
fn write_failed(err: std::io::Error) -> End {
    End::Failed(anyhow::Error::new(err).context("writing output"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_line_names_only_what_is_there() {
        let job: JobId = "01JD3X0000000000000000000A".parse().unwrap();
        let progress = JobProgress {
            total: 5,
            running: 1,
            queued: 1,
            succeeded: 2,
            failed: 1,
            ..JobProgress::default()
        };
        assert_eq!(
            status_text(job, &progress),
            format!("job {job} 3/5 done · 1 running · 1 queued · 1 failed")
        );
    }

    #[test]
    fn job_states_map_to_exit_codes() {
        assert_eq!(job_exit(JobState::Succeeded), 0);
        assert_eq!(job_exit(JobState::Failed), 1);
        assert_eq!(job_exit(JobState::Cancelled), 130);
    }

    #[test]
    fn job_events_carry_their_seq() {
        let json = serde_json::json!({
            "type": "job.target",
            "data": {"job": "01JD3X0000000000000000000A", "seq": 7, "ts_ms": 1,
                     "agent": "web-1", "state": "failed"},
        });
        let msg: HubToClient = serde_json::from_value(json).unwrap();
        assert_eq!(job_event_seq(&msg), Some(7));
        assert_eq!(job_event_seq(&HubToClient::Ok(Default::default())), None);
    }
}
