//! Sessions as processes: a command on a pseudo-terminal, or on three pipes.
//!
//! A `pty` session's command is the session leader of a new session whose
//! controlling terminal is a pty of the asked size (so its pid is its
//! process group id), with `TERM=xterm-256color` unless the run sets `TERM`;
//! its output is read from the pty's master as stdout, and EIO there once
//! the processes are gone is end-of-file. A `pipe` session's command has
//! piped stdin, stdout and stderr, in its own process group.
//!
//! Input is written by one future that takes the [`SessionInbox`] in order,
//! beside the one that waits for the process, so a process that does not
//! read its input never holds up a timer or a cancel. The session ends:
//! - by itself: `completed`, with its exit code or signal;
//! - idle, when neither input nor output came for `idle_timeout_ms`:
//!   `timed_out` with `SESSION_IDLE`;
//! - at its maximum lifetime, the run's `timeout_ms`: `timed_out` with
//!   `SESSION_LIFETIME`;
//! - on `run.cancel`: `cancelled`.
//!
//! The agent stops a pty session as a terminal that closes would: SIGHUP,
//! SIGTERM half the kill grace later, SIGKILL at the end of it, each to the
//! process group and to the terminal's foreground group (a job of an
//! interactive shell). A pipe session's stdin is closed, then SIGTERM, and
//! SIGKILL after the grace. Once the main process has ended, whatever is left
//! of a pty session is killed: its process group and, on Linux, every process
//! of its session (an interactive shell's background jobs have groups of
//! their own, and would hold the terminal open).

use std::convert::Infallible;
use std::os::fd::AsFd;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use muster_proto::ErrorCode;
use muster_proto::OutputStream;
use muster_proto::messages::{RunExited, RunOutcome, RunStart};
use muster_proto::sessions::{SessionKind, SessionSpec};
use nix::errno::Errno;
use nix::sys::signal::Signal;
use pty_process::{OwnedReadPty, OwnedWritePty, Size};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use super::idle::{Activity, idle_for};
use super::terminal::{Terminal, kill_session};
use super::{
    ProcessGroup, READ_BUFFER_BYTES, cannot_start, command, drain, exited, failed, own_binary,
    piped_command, run_environment, sleep_or_forever,
};
use crate::executor::{SessionCommand, SessionInbox};
use crate::sink::RunSink;

/// The terminal type a pty session gets unless its run sets `TERM`.
const DEFAULT_TERM: &str = "xterm-256color";

/// Executes the session `start` describes to its end.
pub(super) async fn execute(
    start: RunStart,
    sink: RunSink,
    inbox: SessionInbox,
    cancel: CancellationToken,
) -> RunExited {
    let Some(spec) = start.session.clone() else {
        return failed(&start, "the run is not a session".into());
    };
    if let Err(e) = spec.validate() {
        return failed(&start, format!("invalid session: {e}"));
    }
    let Spawned {
        mut child,
        input,
        output,
        terminal,
    } = match spawn(&start, &spec) {
        Ok(spawned) => spawned,
        Err(error) => return failed(&start, error),
    };
    let Some(pid) = child.id() else {
        return failed(&start, "the process vanished as it was spawned".into());
    };
    let mut group = ProcessGroup::new(pid);
    sink.started(pid).await;
    let activity = Arc::new(Activity::new());
    let pumps = tokio::spawn(pump_output(output, sink, activity.clone()));
    let limits = Limits::of(&start, &spec);
    let stopper = Stopper {
        group: &group,
        terminal: terminal.as_ref(),
        grace: limits.grace,
    };
    let writing = write_inputs(input, inbox, &activity);
    let (status, ending) =
        supervise(&mut child, writing, &activity, &limits, &stopper, cancel).await;
    if terminal.is_some() {
        kill_session(pid);
    }
    group.kill_rest();
    drain(pumps).await;
    report(&start, status, ending)
}

/// Why the agent ended a session.
#[derive(Clone, Copy, Debug)]
enum Ending {
    Idle(Duration),
    Lifetime(Duration),
    Cancelled,
}

/// A session's timers.
#[derive(Debug)]
struct Limits {
    idle: Option<Duration>,
    lifetime: Option<Duration>,
    grace: Duration,
}

impl Limits {
    fn of(start: &RunStart, spec: &SessionSpec) -> Self {
        Self {
            idle: spec.idle_timeout_ms.map(Duration::from_millis),
            lifetime: start.timeout_ms.map(Duration::from_millis),
            grace: Duration::from_millis(start.kill_grace_ms),
        }
    }
}

/// A spawned session process and its ends.
struct Spawned {
    child: Child,
    input: Input,
    output: Output,
    /// A pty's master, kept to find the terminal's foreground group.
    terminal: Option<Terminal>,
}

fn spawn(start: &RunStart, spec: &SessionSpec) -> Result<Spawned, String> {
    match spec.kind {
        SessionKind::Pty => spawn_pty(start, spec),
        SessionKind::Pipe => spawn_pipe(start),
    }
}

fn spawn_pty(start: &RunStart, spec: &SessionSpec) -> Result<Spawned, String> {
    let pty_error = |e: pty_process::Error| format!("cannot open a pseudo-terminal: {e}");
    let (pty, pts) = pty_process::open().map_err(pty_error)?;
    pty.resize(Size::new(spec.rows, spec.cols))
        .map_err(pty_error)?;
    let master = pty
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| format!("cannot open a pseudo-terminal: {e}"))?;
    let mut env = run_environment(std::env::vars_os(), own_binary(), &start.env);
    if !start.env.contains_key("TERM") {
        env.insert("TERM".into(), DEFAULT_TERM.into());
    }
    let mut command = pty_process::Command::from(command(start)?)
        .env_clear()
        .envs(env)
        .kill_on_drop(true);
    if let Some(cwd) = &start.cwd {
        command = command.current_dir(cwd);
    }
    let child = command.spawn(pts).map_err(|e| cannot_start(start, &e))?;
    let (read, write) = pty.into_split();
    Ok(Spawned {
        child,
        input: Input::Pty(write),
        output: Output::Pty(read),
        terminal: Some(Terminal { master }),
    })
}

fn spawn_pipe(start: &RunStart) -> Result<Spawned, String> {
    let mut child = piped_command(start, Stdio::piped())?
        .spawn()
        .map_err(|e| cannot_start(start, &e))?;
    let pipes = (child.stdin.take(), child.stdout.take(), child.stderr.take());
    let (Some(stdin), Some(stdout), Some(stderr)) = pipes else {
        return Err("the process's pipes were not set up".into());
    };
    Ok(Spawned {
        child,
        input: Input::Pipe(stdin),
        output: Output::Pipe(stdout, stderr),
        terminal: None,
    })
}

/// Waits for the process; ends it when a timer or the cancel fires first.
/// `writing` is dropped before the process is signalled, which closes a
/// pipe session's stdin.
async fn supervise(
    child: &mut Child,
    writing: impl Future<Output = Infallible>,
    activity: &Activity,
    limits: &Limits,
    stopper: &Stopper<'_>,
    cancel: CancellationToken,
) -> (std::io::Result<ExitStatus>, Option<Ending>) {
    let ending = tokio::select! {
        status = child.wait() => return (status, None),
        never = writing => match never {},
        idle = idle_for(activity, limits.idle) => Ending::Idle(idle),
        () = sleep_or_forever(limits.lifetime) => Ending::Lifetime(limits.lifetime.unwrap_or_default()),
        () = cancel.cancelled() => Ending::Cancelled,
    };
    (stopper.stop(child).await, Some(ending))
}

/// How a session's processes are signalled.
struct Stopper<'a> {
    group: &'a ProcessGroup,
    terminal: Option<&'a Terminal>,
    grace: Duration,
}

impl Stopper<'_> {
    /// Signals the session to end and waits for it; SIGKILL once the grace is over.
    async fn stop(&self, child: &mut Child) -> std::io::Result<ExitStatus> {
        let mut left = self.grace;
        if self.terminal.is_some() {
            self.signal(Signal::SIGHUP);
            let half = self.grace / 2;
            if let Ok(status) = timeout(half, child.wait()).await {
                return status;
            }
            left -= half;
        }
        self.signal(Signal::SIGTERM);
        if let Ok(status) = timeout(left, child.wait()).await {
            return status;
        }
        self.signal(Signal::SIGKILL);
        child.wait().await
    }

    fn signal(&self, signal: Signal) {
        if let Some(terminal) = self.terminal {
            terminal.signal_foreground(self.group, signal);
        }
        self.group.signal(signal);
    }
}

/// Where a session's input is written.
enum Input {
    Pty(OwnedWritePty),
    Pipe(ChildStdin),
}

impl Input {
    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Self::Pty(pty) => pty.write_all(bytes).await,
            Self::Pipe(stdin) => stdin.write_all(bytes).await,
        }
    }

    fn resize(&self, cols: u16, rows: u16) {
        if let Self::Pty(pty) = self
            && let Err(e) = pty.resize(Size::new(rows, cols))
        {
            tracing::warn!("cannot resize a session's terminal to {cols}x{rows}: {e}");
        }
    }
}

/// Carries out the inbox's commands in order, for as long as the session
/// lives. Once a write failed (the process closed its input), later writes
/// are dropped, but the commands are still taken so the inputs keep being
/// acknowledged as the process goes on.
async fn write_inputs(
    mut input: Input,
    mut inbox: SessionInbox,
    activity: &Activity,
) -> Infallible {
    let mut writable = true;
    while let Some(command) = inbox.recv().await {
        match command {
            SessionCommand::Write(bytes) => {
                activity.touch();
                if writable && let Err(e) = input.write(&bytes).await {
                    tracing::warn!(
                        "cannot write to a session's input, dropping further input: {e}"
                    );
                    writable = false;
                }
            }
            SessionCommand::Resize { cols, rows } => input.resize(cols, rows),
        }
    }
    std::future::pending().await
}

/// Where a session's output is read.
enum Output {
    Pty(OwnedReadPty),
    Pipe(ChildStdout, ChildStderr),
}

/// Reads the session's output to its end into the sink, which is dropped then.
async fn pump_output(output: Output, sink: RunSink, activity: Arc<Activity>) {
    match output {
        Output::Pty(pty) => pump(pty, OutputStream::Stdout, &sink, &activity).await,
        Output::Pipe(stdout, stderr) => {
            tokio::join!(
                pump(stdout, OutputStream::Stdout, &sink, &activity),
                pump(stderr, OutputStream::Stderr, &sink, &activity),
            );
        }
    }
}

async fn pump(
    mut reader: impl AsyncRead + Unpin,
    stream: OutputStream,
    sink: &RunSink,
    activity: &Activity,
) {
    let mut buf = vec![0; READ_BUFFER_BYTES];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) => return,
            Ok(n) => {
                activity.touch();
                sink.output(stream, &buf[..n]).await;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // A pty's master reads EIO once no process holds the terminal.
            Err(e) if e.raw_os_error() == Some(Errno::EIO as i32) => return,
            Err(e) => {
                tracing::warn!("reading {} of a session failed: {e}", stream.as_str());
                return;
            }
        }
    }
}

fn report(
    start: &RunStart,
    status: std::io::Result<ExitStatus>,
    ending: Option<Ending>,
) -> RunExited {
    let human = |d: Duration| humantime::format_duration(d).to_string();
    let (outcome, code, error) = match ending {
        None => (RunOutcome::Completed, None, None),
        Some(Ending::Cancelled) => (RunOutcome::Cancelled, None, None),
        Some(Ending::Idle(idle)) => (
            RunOutcome::TimedOut,
            Some(ErrorCode::SessionIdle),
            Some(format!("idle for {}", human(idle))),
        ),
        Some(Ending::Lifetime(lifetime)) => (
            RunOutcome::TimedOut,
            Some(ErrorCode::SessionLifetime),
            Some(format!(
                "open for {}, its maximum lifetime",
                human(lifetime)
            )),
        ),
    };
    match status {
        Ok(status) => {
            use std::os::unix::process::ExitStatusExt;
            RunExited {
                exit_code: status.code(),
                signal: status.signal(),
                error,
                error_code: code,
                ..exited(start, outcome)
            }
        }
        Err(e) => failed(start, format!("cannot wait for the process: {e}")),
    }
}
