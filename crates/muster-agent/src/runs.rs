//! The runs on this agent, which outlive any one hub connection: the table of
//! runs in flight, the spool of their messages and the ledger of started ids.
//!
//! A `run.start` is first admitted (see [`Admission`]): an action becomes its
//! argument vector, and a refused run is answered with a `rejected` exit
//! report, which a task spools, and is neither recorded nor executed.
//! Each admitted `run.start` whose id the ledger does not know becomes a task that
//! records the id durably, then drives the executor, whose messages go to the
//! spool. A repeated id is not executed: in flight, it is ignored; otherwise
//! a task spools a `failed` exit report for it. A run stays in the table while
//! its task lives, so `run.cancel` can find it; the table entry is a guard the
//! task drops on its way out, whether it finished or was aborted. Every run's
//! environment gets the event socket's path and the run's id.
//!
//! A session also gets a [`SessionHandle`] when it starts, where the
//! connection routes its input, resizes and snapshot requests; the handle
//! stays until the hub acknowledges the session's exit report, so `hello`
//! reports how much input was applied for every session the agent holds.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use muster_proto::messages::{RunAck, RunExited, RunOutcome, RunReport, RunReportStatus, RunStart};
use muster_proto::sessions::{SessionDeliver, SessionResize, SessionSnapshot};
use muster_proto::{CommandSpec, RunId};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::actions::Refusal;
use crate::admission::Admission;
use crate::emit::{RUN_ID_ENV, SOCKET_ENV};
use crate::executor::{Executor, drive};
use crate::ledger::Ledger;
use crate::session::{self, Replies, SessionHandle, SessionParts};
use crate::sink::Outgoing;
use crate::spool::Spool;

/// The exit report's error for a `run.start` whose id this agent started before.
pub(crate) const ALREADY_STARTED: &str =
    "run was already started once by this agent; it is not run again";

/// Cancellation tokens of the runs in flight. A std `Mutex` is right here: it
/// is held only for a map operation, never across an `.await`.
type Table = Arc<Mutex<HashMap<RunId, CancellationToken>>>;

/// Starts, cancels, reports and stops runs.
pub(crate) struct Runs {
    executor: Arc<dyn Executor>,
    /// Shared by every run; the current connection (if any) sends from it.
    spool: Arc<Spool>,
    ledger: Ledger,
    table: Table,
    /// Owning the tasks lets shutdown wait for them and abort the stragglers.
    tasks: JoinSet<()>,
    /// The event socket, announced to every run in [`SOCKET_ENV`].
    event_socket: PathBuf,
    /// Which runs may execute, and what an action executes.
    admission: Admission,
    /// The sessions started and not yet acknowledged as ended; only the
    /// connection's task touches them.
    sessions: HashMap<RunId, SessionHandle>,
    /// Where sessions send their answers to the hub.
    replies: Replies,
}

impl Runs {
    pub(crate) fn new(
        executor: Arc<dyn Executor>,
        spool: Arc<Spool>,
        ledger: Ledger,
        event_socket: PathBuf,
        admission: Admission,
        replies: Replies,
    ) -> Self {
        Self {
            executor,
            spool,
            ledger,
            table: Table::default(),
            tasks: JoinSet::new(),
            event_socket,
            admission,
            sessions: HashMap::new(),
            replies,
        }
    }

    /// The spool every run appends to.
    pub(crate) fn spool(&self) -> &Arc<Spool> {
        &self.spool
    }

    /// Starts a run, unless its id is in flight (ignored), it is not admitted
    /// (answered with a `rejected` exit report), or it was started before
    /// (answered with a `failed` exit report); only a started run is executed.
    pub(crate) fn start(&mut self, mut start: RunStart) {
        self.reap();
        let run = start.run;
        let cancel = CancellationToken::new();
        let Some(entry) = Entry::insert(&self.table, run, cancel.clone()) else {
            tracing::warn!(%run, "ignoring run.start for a run already in flight");
            return;
        };
        let action = action_name(&start.command);
        if let Err(refusal) = self.admission.admit(&mut start) {
            drop(entry);
            self.reject(run, action, refusal);
            return;
        }
        self.add_agent_env(&mut start);
        if !self.ledger.claim(run) {
            drop(entry);
            self.refuse(run);
            return;
        }
        let session = start.session.as_ref().map(|spec| {
            let (handle, parts) = session::open(spec, self.replies.clone());
            self.sessions.insert(run, handle);
            parts
        });
        // Boxed: the execution's future is kilobytes, and the task that
        // owns it would otherwise be copied whole when it is spawned and
        // again when it finishes (about 5 KB at this writing).
        let execution = Box::pin(execute(
            self.executor.clone(),
            start,
            session,
            cancel,
            self.spool.clone(),
            self.ledger.clone(),
        ));
        self.tasks.spawn(async move {
            execution.await;
            drop(entry);
        });
    }

    /// Sets [`SOCKET_ENV`] and [`RUN_ID_ENV`] in the run's environment, over
    /// any values the run itself asked for.
    fn add_agent_env(&self, start: &mut RunStart) {
        let socket = self.event_socket.to_string_lossy().into_owned();
        start.env.insert(SOCKET_ENV.to_owned(), socket);
        start
            .env
            .insert(RUN_ID_ENV.to_owned(), start.run.to_string());
    }

    /// Answers a `run.start` for a run started before with a `failed` report.
    /// A task appends it, so the connection never waits for room in the spool.
    fn refuse(&mut self, run: RunId) {
        tracing::warn!(%run, "refusing run.start for a run this agent started before");
        let spool = self.spool.clone();
        let refusal = failed(run, ALREADY_STARTED.to_owned());
        self.tasks.spawn(async move { spool.push(refusal).await });
    }

    /// Answers a `run.start` that was not admitted with a `rejected` report;
    /// the log names the action and the reason's code, never the values.
    fn reject(&mut self, run: RunId, action: Option<String>, refusal: Refusal) {
        match &action {
            Some(name) => {
                tracing::warn!(%run, action = ?name, code = %refusal.code, "rejecting an action run");
            }
            None => tracing::warn!(%run, code = %refusal.code, "rejecting a raw command"),
        }
        let spool = self.spool.clone();
        self.tasks
            .spawn(async move { spool.push(rejected(run, refusal)).await });
    }

    /// Applies a `run.ack`: drops what it covers from the spool, and settles
    /// the run in the ledger once its exit report is stored.
    pub(crate) fn acked(&mut self, ack: &RunAck) {
        if self.spool.ack(ack) {
            self.ledger.settle(ack.run);
            self.sessions.remove(&ack.run);
        }
    }

    /// Hands a session its input; ignored for a run that is not a session here.
    pub(crate) fn session_input(&self, deliver: SessionDeliver) {
        match self.sessions.get(&deliver.run) {
            Some(session) => session.input(deliver),
            None => tracing::debug!(run = %deliver.run, "session.input for no session here"),
        }
    }

    /// Resizes a pty session's terminal; ignored for anything else.
    pub(crate) fn session_resize(&self, resize: &SessionResize) {
        match self.sessions.get(&resize.run) {
            Some(session) => session.resize(resize),
            None => tracing::debug!(run = %resize.run, "session.resize for no session here"),
        }
    }

    /// Asks a pty session for its screen; nothing is answered for anything else.
    pub(crate) fn session_snapshot(&self, snapshot: &SessionSnapshot) {
        let run = snapshot.run;
        match (self.sessions.get(&run), snapshot.token) {
            (Some(session), Some(token)) => session.snapshot(run, token),
            (Some(_), None) => tracing::warn!(%run, "ignoring session.snapshot without a token"),
            (None, _) => tracing::debug!(%run, "session.snapshot for no session here"),
        }
    }

    /// What `hello` reports: runs in flight, runs whose exit report is not
    /// acknowledged, and runs an earlier agent process left behind.
    pub(crate) fn report(&self) -> Vec<RunReport> {
        let running = self.running();
        let finished: Vec<_> = self
            .spool
            .finished_runs()
            .into_iter()
            .filter(|run| !running.contains(run))
            .collect();
        let unknown = self.ledger.orphans();
        [
            (running, RunReportStatus::Running),
            (finished, RunReportStatus::Finished),
            (unknown, RunReportStatus::Unknown),
        ]
        .into_iter()
        .flat_map(|(runs, status)| runs.into_iter().map(move |run| (run, status)))
        .map(|(run, status)| RunReport {
            run,
            status,
            input_applied: self.sessions.get(&run).map(SessionHandle::applied),
        })
        .collect()
    }

    /// Settles the runs reported `unknown`, once the hub acknowledged the hello.
    pub(crate) fn settle_orphans(&self) {
        self.ledger.settle_orphans();
    }

    /// Whether no run task is left.
    pub(crate) fn is_idle(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Cancels a run in flight; false when no such run is running here.
    pub(crate) fn cancel(&self, run: RunId) -> bool {
        let table = self.table.lock().expect("run table lock poisoned");
        table.get(&run).inspect(|cancel| cancel.cancel()).is_some()
    }

    /// Asks every run to stop (SIGTERM, grace, SIGKILL for processes).
    pub(crate) fn cancel_all(&self) {
        for cancel in self.table.lock().expect("run table lock poisoned").values() {
            cancel.cancel();
        }
    }

    /// Waits for the next run task to finish; `None` when none is left.
    pub(crate) async fn join_next(&mut self) -> Option<()> {
        let joined = self.tasks.join_next().await?;
        log_panic(joined);
        Some(())
    }

    /// Aborts every run task and waits until they are gone (dropping an
    /// execution kills its process group), then for the ledger's writes.
    pub(crate) async fn close(&mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        self.ledger.flush().await;
    }

    fn running(&self) -> Vec<RunId> {
        let table = self.table.lock().expect("run table lock poisoned");
        table.keys().copied().collect()
    }

    /// Collects finished tasks so the set does not grow without bound.
    fn reap(&mut self) {
        while let Some(joined) = self.tasks.try_join_next() {
            log_panic(joined);
        }
    }
}

/// Records `start` in the ledger, then executes it; a run that cannot be
/// recorded is reported `failed` and never spawned.
async fn execute(
    executor: Arc<dyn Executor>,
    start: RunStart,
    session: Option<SessionParts>,
    cancel: CancellationToken,
    spool: Arc<Spool>,
    ledger: Ledger,
) {
    let run = start.run;
    match ledger.record_started(run).await {
        Ok(()) => drive(executor, start, session, cancel, spool).await,
        Err(e) => {
            tracing::error!(%run, "cannot record the run in the ledger: {e:#}");
            let error = format!("the agent cannot record the run in its ledger: {e:#}");
            spool.push(failed(run, error)).await;
        }
    }
}

/// The exit report of a run that was not executed.
fn failed(run: RunId, error: String) -> Outgoing {
    Outgoing::Exited(exited_without_process(run, error))
}

/// A `failed` report with `error` and nothing a process would set.
fn exited_without_process(run: RunId, error: String) -> RunExited {
    RunExited {
        run,
        outcome: RunOutcome::Failed,
        exit_code: None,
        signal: None,
        error: Some(error),
        error_code: None,
        output_truncated: false,
    }
}

/// The exit report of a run this agent refused to execute.
fn rejected(run: RunId, refusal: Refusal) -> Outgoing {
    Outgoing::Exited(RunExited {
        outcome: RunOutcome::Rejected,
        error_code: Some(refusal.code),
        ..exited_without_process(run, refusal.message)
    })
}

/// The name of the action a command calls, if it calls one.
fn action_name(command: &CommandSpec) -> Option<String> {
    match command {
        CommandSpec::Action(call) => Some(call.name.clone()),
        CommandSpec::Argv(_) | CommandSpec::Shell(_) => None,
    }
}

fn log_panic(joined: Result<(), tokio::task::JoinError>) {
    if let Err(e) = joined
        && e.is_panic()
    {
        tracing::error!("a run task panicked: {e}");
    }
}

/// A run's place in the table, removed on drop.
struct Entry {
    table: Table,
    run: RunId,
}

impl Entry {
    /// Registers `run`; `None` if it is already registered.
    fn insert(table: &Table, run: RunId, cancel: CancellationToken) -> Option<Self> {
        let mut map = table.lock().expect("run table lock poisoned");
        if map.contains_key(&run) {
            return None;
        }
        map.insert(run, cancel);
        Some(Self {
            table: table.clone(),
            run,
        })
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        if let Ok(mut map) = self.table.lock() {
            map.remove(&self.run);
        }
    }
}
