//! The real executor: one child process per run, in its own process group.
//!
//! The child gets `/dev/null` as stdin, the environment [`run_environment`]
//! builds, and piped stdout and stderr that a separate task reads into the run's
//! [`RunSink`]. A timeout or a cancellation sends SIGTERM to the whole process
//! group, waits the run's `kill_grace_ms`, then sends SIGKILL. Whenever the
//! main process exits, the group gets a SIGKILL so no orphan keeps running or
//! holds the pipes open; then the pipes are drained to EOF and the run is
//! reported. If the execution is dropped half-way (agent shutdown), a guard
//! kills the group as well. Sessions, on a pty or on pipes, are executed by
//! the `session` module on the same footing.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use muster_proto::OutputStream;
use muster_proto::messages::{RunExited, RunOutcome, RunStart};
use muster_proto::types::CommandSpec;
use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use crate::executor::{Executor, SessionInbox};
use crate::sink::RunSink;

mod idle;
mod session;
mod terminal;

/// Size of one pipe read; a Linux pipe holds 64 KiB, so this empties it in a few reads.
const READ_BUFFER_BYTES: usize = 32 * 1024;

/// How long the pipes may stay open after the process group was killed. Only a
/// process that escaped the group (`setsid`) can hold them that long; the run
/// is then reported without the rest of its output.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Names of the agent's own environment that no run inherits: every
/// `MUSTER_*` variable configures the agent or a client, and some hold
/// credentials (`MUSTER_AGENT_TOKEN`, `MUSTER_TOKEN`).
const PRIVATE_PREFIX: &str = "MUSTER_";

/// Where a run finds the agent's own binary, to call `muster emit` with.
pub const BIN_ENV: &str = "MUSTER_BIN";

/// Executes runs as local processes.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessExecutor;

impl ProcessExecutor {
    /// The process executor.
    pub fn new() -> Self {
        Self
    }
}

#[async_trait::async_trait]
impl Executor for ProcessExecutor {
    async fn execute(
        &self,
        start: RunStart,
        sink: RunSink,
        cancel: CancellationToken,
    ) -> RunExited {
        let mut child = match spawn(&start) {
            Ok(child) => child,
            Err(error) => return failed(&start, error),
        };
        let Some(pid) = child.id() else {
            return failed(&start, "the process vanished as it was spawned".into());
        };
        let mut group = ProcessGroup::new(pid);
        sink.started(pid).await;
        let pumps = tokio::spawn(pump_pipes(&mut child, sink));
        let grace = Duration::from_millis(start.kill_grace_ms);
        let deadline = start.timeout_ms.map(Duration::from_millis);
        let (status, killed_for) = supervise(&mut child, &group, deadline, grace, cancel).await;
        group.kill_rest();
        drain(pumps).await;
        report(&start, status, killed_for)
    }

    async fn execute_session(
        &self,
        start: RunStart,
        sink: RunSink,
        inbox: SessionInbox,
        cancel: CancellationToken,
    ) -> RunExited {
        session::execute(start, sink, inbox, cancel).await
    }
}

/// Why the agent killed a run.
#[derive(Clone, Copy, Debug)]
enum KillReason {
    TimedOut,
    Cancelled,
}

/// Builds and spawns the run's command.
fn spawn(start: &RunStart) -> Result<Child, String> {
    piped_command(start, Stdio::null())?
        .spawn()
        .map_err(|e| cannot_start(start, &e))
}

/// The run's command in its own process group, with its environment, its
/// working directory, `stdin`, and piped stdout and stderr.
fn piped_command(start: &RunStart, stdin: Stdio) -> Result<Command, String> {
    let mut command = command(start)?;
    command
        .env_clear()
        .envs(run_environment(
            std::env::vars_os(),
            own_binary(),
            &start.env,
        ))
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(cwd) = &start.cwd {
        command.current_dir(cwd);
    }
    Ok(command)
}

/// The program and arguments of the run's command.
fn command(start: &RunStart) -> Result<Command, String> {
    start.command.validate()?;
    let command = match &start.command {
        CommandSpec::Argv(argv) => {
            let mut command = Command::new(&argv[0]);
            command.args(&argv[1..]);
            command
        }
        CommandSpec::Shell(script) => {
            let mut command = Command::new("/bin/sh");
            command.arg("-c").arg(script);
            command
        }
        // The run table resolves actions to an argument vector before execution.
        CommandSpec::Action(call) => {
            return Err(format!("action {:?} was not resolved", call.name));
        }
    };
    Ok(command)
}

/// Why the run's command could not be started.
fn cannot_start(start: &RunStart, error: &dyn std::fmt::Display) -> String {
    format!("cannot start {}: {error}", program(&start.command))
}

/// A run's environment, built on purpose rather than inherited whole:
/// - the agent's environment `inherited`, without any `MUSTER_*` variable,
///   so no run sees the agent's credentials;
/// - [`BIN_ENV`], the agent's own binary `bin`, whose directory is also
///   appended to `PATH` (so `muster emit` works where `muster` is not
///   installed on the `PATH`);
/// - the run's own `env` (with `MUSTER_AGENT_SOCKET` and `MUSTER_RUN_ID`,
///   which the run table sets), over all of the above.
pub(crate) fn run_environment(
    inherited: impl IntoIterator<Item = (OsString, OsString)>,
    bin: Option<&Path>,
    env: &BTreeMap<String, String>,
) -> BTreeMap<OsString, OsString> {
    let mut vars: BTreeMap<OsString, OsString> = inherited
        .into_iter()
        .filter(|(name, _)| {
            !name
                .as_encoded_bytes()
                .starts_with(PRIVATE_PREFIX.as_bytes())
        })
        .collect();
    if let Some(bin) = bin {
        vars.insert(BIN_ENV.into(), bin.as_os_str().to_owned());
        if let Some(dir) = bin.parent().filter(|d| !d.as_os_str().is_empty()) {
            let path = vars.get(OsStr::new("PATH")).cloned().unwrap_or_default();
            if !std::env::split_paths(&path).any(|p| p == dir) {
                let mut dirs: Vec<PathBuf> = std::env::split_paths(&path)
                    .filter(|p| !p.as_os_str().is_empty())
                    .collect();
                dirs.push(dir.to_owned());
                if let Ok(joined) = std::env::join_paths(dirs) {
                    vars.insert("PATH".into(), joined);
                }
            }
        }
    }
    for (name, value) in env {
        vars.insert(name.into(), value.into());
    }
    vars
}

/// The agent's own binary, once.
fn own_binary() -> Option<&'static Path> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    BIN.get_or_init(|| std::env::current_exe().ok()).as_deref()
}

fn program(command: &CommandSpec) -> &str {
    match command {
        CommandSpec::Argv(argv) => &argv[0],
        CommandSpec::Shell(_) => "/bin/sh",
        CommandSpec::Action(call) => &call.name,
    }
}

/// Waits for the main process; on timeout or cancel, kills the group gracefully.
async fn supervise(
    child: &mut Child,
    group: &ProcessGroup,
    deadline: Option<Duration>,
    grace: Duration,
    cancel: CancellationToken,
) -> (std::io::Result<ExitStatus>, Option<KillReason>) {
    let reason = tokio::select! {
        status = child.wait() => return (status, None),
        () = sleep_or_forever(deadline) => KillReason::TimedOut,
        () = cancel.cancelled() => KillReason::Cancelled,
    };
    group.signal(Signal::SIGTERM);
    let status = match timeout(grace, child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            group.signal(Signal::SIGKILL);
            child.wait().await
        }
    };
    (status, Some(reason))
}

async fn sleep_or_forever(duration: Option<Duration>) {
    match duration {
        Some(duration) => tokio::time::sleep(duration).await,
        None => std::future::pending().await,
    }
}

/// Reads stdout and stderr to EOF into the sink, which is dropped at the end.
fn pump_pipes(child: &mut Child, sink: RunSink) -> impl Future<Output = ()> + Send + 'static {
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    async move {
        tokio::join!(
            pump(stdout, OutputStream::Stdout, &sink),
            pump(stderr, OutputStream::Stderr, &sink),
        );
    }
}

async fn pump(pipe: Option<impl AsyncRead + Unpin>, stream: OutputStream, sink: &RunSink) {
    let Some(mut pipe) = pipe else { return };
    let mut buf = vec![0; READ_BUFFER_BYTES];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) => return,
            Ok(n) => sink.output(stream, &buf[..n]).await,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!("reading {} of a run failed: {e}", stream.as_str());
                return;
            }
        }
    }
}

/// Waits for the pipe readers, giving up on pipes an escaped process holds open.
async fn drain(mut pumps: tokio::task::JoinHandle<()>) {
    if timeout(DRAIN_TIMEOUT, &mut pumps).await.is_err() {
        tracing::warn!(
            "run output still open {DRAIN_TIMEOUT:?} after its process group was killed; dropping the rest"
        );
        pumps.abort();
    }
}

fn report(
    start: &RunStart,
    status: std::io::Result<ExitStatus>,
    killed_for: Option<KillReason>,
) -> RunExited {
    let outcome = match killed_for {
        None => RunOutcome::Completed,
        Some(KillReason::TimedOut) => RunOutcome::TimedOut,
        Some(KillReason::Cancelled) => RunOutcome::Cancelled,
    };
    match status {
        Ok(status) => RunExited {
            exit_code: status.code(),
            signal: status.signal(),
            ..exited(start, outcome)
        },
        Err(e) => failed(start, format!("cannot wait for the process: {e}")),
    }
}

fn exited(start: &RunStart, outcome: RunOutcome) -> RunExited {
    RunExited {
        run: start.run,
        outcome,
        exit_code: None,
        signal: None,
        error: None,
        error_code: None,
        output_truncated: false,
    }
}

fn failed(start: &RunStart, error: String) -> RunExited {
    RunExited {
        error: Some(error),
        ..exited(start, RunOutcome::Failed)
    }
}

/// A run's process group; killed with SIGKILL on drop unless already finished off.
#[derive(Debug)]
struct ProcessGroup {
    pgid: Pid,
    /// False once the group got its final SIGKILL, so a recycled id is never signalled.
    live: bool,
}

impl ProcessGroup {
    fn new(pid: u32) -> Self {
        let pgid = Pid::from_raw(i32::try_from(pid).expect("pids fit in i32"));
        Self { pgid, live: true }
    }

    /// Signals every process of the group; a group that is already gone is fine.
    fn signal(&self, signal: Signal) {
        match killpg(self.pgid, signal) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => tracing::warn!("cannot send {signal} to process group {}: {e}", self.pgid),
        }
    }

    /// Kills whatever is left of the group after its leader exited.
    fn kill_rest(&mut self) {
        self.signal(Signal::SIGKILL);
        self.live = false;
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if self.live {
            self.kill_rest();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    #[test]
    fn a_run_sees_no_muster_variable_of_the_agent_and_finds_its_binary() {
        let inherited = vars(&[
            ("HOME", "/home/ops"),
            ("PATH", "/usr/bin:/bin"),
            ("MUSTER_AGENT_TOKEN", "mst_secret"),
            ("MUSTER_TOKEN", "mst_admin"),
            ("MUSTER_HUB", "http://hub:7070"),
        ]);
        let env = BTreeMap::from([
            ("MUSTER_RUN_ID".to_owned(), "01RUN".to_owned()),
            ("SITE".to_owned(), "example.com".to_owned()),
        ]);
        let built = run_environment(inherited, Some(Path::new("/opt/muster/bin/muster")), &env);
        let get = |k: &str| built.get(OsStr::new(k)).map(|v| v.to_str().unwrap());
        assert_eq!(get("MUSTER_AGENT_TOKEN"), None);
        assert_eq!(get("MUSTER_TOKEN"), None);
        assert_eq!(get("MUSTER_HUB"), None);
        assert_eq!(get("HOME"), Some("/home/ops"));
        assert_eq!(get("MUSTER_BIN"), Some("/opt/muster/bin/muster"));
        assert_eq!(get("PATH"), Some("/usr/bin:/bin:/opt/muster/bin"));
        assert_eq!(get("MUSTER_RUN_ID"), Some("01RUN"));
        assert_eq!(get("SITE"), Some("example.com"));
    }

    #[test]
    fn the_binary_directory_is_added_to_the_path_once() {
        let inherited = vars(&[("PATH", "/opt/muster/bin:/usr/bin")]);
        let built = run_environment(
            inherited,
            Some(Path::new("/opt/muster/bin/muster")),
            &BTreeMap::new(),
        );
        assert_eq!(built[OsStr::new("PATH")], "/opt/muster/bin:/usr/bin");
        let built = run_environment(
            Vec::new(),
            Some(Path::new("/opt/muster/bin/muster")),
            &BTreeMap::new(),
        );
        assert_eq!(built[OsStr::new("PATH")], "/opt/muster/bin");
    }

    #[test]
    fn the_run_may_set_its_own_path() {
        let env = BTreeMap::from([("PATH".to_owned(), "/custom".to_owned())]);
        let built = run_environment(
            vars(&[("PATH", "/usr/bin")]),
            Some(Path::new("/opt/muster")),
            &env,
        );
        assert_eq!(built[OsStr::new("PATH")], "/custom");
        assert_eq!(built[OsStr::new("MUSTER_BIN")], "/opt/muster");
    }
}
