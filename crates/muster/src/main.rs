//! The `muster` binary: the hub, the agent and the command line in one.
//!
//! `main` parses the command line, installs tracing (to stderr, so stdout stays
//! clean for command output), builds the tokio runtime and turns the outcome of
//! the subcommand into the process exit code. The long-running subcommands live
//! in `serve`; the client subcommands live in `cli`.

mod cli;
mod serve;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Exit code for a long-running subcommand that failed.
const EXIT_SERVE_FAILED: u8 = 1;

/// How long pending tasks get to finish once the subcommand has returned.
const RUNTIME_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(1);

/// Command a fleet of agents from one hub.
#[derive(Debug, Parser)]
#[command(name = "muster", version)]
struct Cli {
    /// Print machine-readable JSON wherever a table or record is printed.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a hub, a local agent named "local" and the dashboard, for development.
    Dev(serve::DevArgs),
    /// Start a hub.
    Hub(serve::HubArgs),
    /// Start an agent that dials a hub and runs commands for it.
    Agent(serve::AgentArgs),
    /// List, register, inspect and remove agents.
    #[command(subcommand)]
    Agents(cli::agents::AgentsCommand),
    /// Manage API keys: create one with a role, a scope and an expiry, list
    /// them, rotate one, revoke one.
    #[command(subcommand)]
    Keys(cli::keys::KeysCommand),
    /// Print the audit log: who did what, from where, and how it ended;
    /// with --follow, keep printing new entries (admin keys).
    Audit(cli::audit::AuditArgs),
    /// Manage enrollment tokens: create one for new agents to register
    /// themselves with, list them, revoke one.
    #[command(subcommand)]
    Enroll(cli::enroll::EnrollCommand),
    /// Run a command on an agent, stream its output and exit with its exit code.
    ///
    /// On one agent, events the command publishes with `muster emit` go to
    /// stderr as "event TYPE {json}"; 126 means the agent refused the run
    /// (nothing ran).
    ///
    /// With a selector (-l SELECTOR, or a TARGET such as web-*, role=web, a,b
    /// or all) the command runs on every matching agent as a job: each output
    /// line is prefixed with its agent's name ("web-1  | text"; --group prints
    /// one block per agent instead), events the command publishes with
    /// `muster emit` go to stderr ("web-1  | event TYPE {json}", dimmed on a
    /// terminal, where a live progress line is kept too), and a summary table
    /// ends it on stderr (--json prints the final job as JSON instead). A job
    /// exits 0 when every agent succeeded, 1 when the job failed, 130 when it
    /// was cancelled (Ctrl-C once cancels it; twice stops waiting), 255 when
    /// the hub refused it.
    Run(cli::run::RunArgs),
    /// Invoke an action an agent declares: TARGET NAME [KEY=VALUE]...
    ///
    /// On one agent it runs like `muster run`: output streamed, the events
    /// the action's process publishes on stderr as "event TYPE {json}", exit
    /// 126 when the agent rejects the call (naming the parameter and its
    /// rule). On a selector it is a job, followed like `muster run -l`.
    #[command(
        override_usage = "muster action [OPTIONS] <TARGET> <NAME> [KEY=VALUE]...\n       \
                          muster action [OPTIONS] -l <SELECTOR> <NAME> [KEY=VALUE]..."
    )]
    Action(cli::action::ActionArgs),
    /// List, inspect, replay and cancel runs.
    #[command(subcommand)]
    Runs(cli::runs::RunsCommand),
    /// Run a workflow file on many agents, as a job.
    #[command(subcommand)]
    Job(cli::job::JobCommand),
    /// List, inspect and cancel jobs.
    #[command(subcommand)]
    Jobs(cli::jobs::JobsCommand),
    /// An ssh-like terminal on an agent: AGENT [-- CMD...], by default the
    /// login shell.
    ///
    /// Opens a pty session sized like this terminal and types into it.
    /// `~.` after Enter detaches (the session goes on; exit 254), `~~` sends
    /// one `~`, `~?` lists them. Exits with the remote exit code (128+N for
    /// signal N; 124 when the session timed out idle; 130 when it was
    /// closed; 255 when the hub is lost or refuses). Without a terminal on
    /// stdin, what stdin holds is typed in, then Ctrl-D.
    Shell(cli::shell::ShellArgs),
    /// List, open, attach to, send to, close, export and transcribe sessions.
    #[command(subcommand)]
    Sessions(cli::sessions::SessionsCommand),
    /// Show every agent's status, CPU, memory, disk and load, live until Ctrl-C.
    Top(cli::top::TopArgs),
    /// Print an agent's events from an offset; with --follow, keep printing new ones.
    Events(cli::events::EventsArgs),
    /// Publish an event to this agent's channel, from a command the agent runs.
    Emit(cli::events::EmitArgs),
}

impl Command {
    /// Whether this is a long-running subcommand rather than a client command.
    fn is_server(&self) -> bool {
        matches!(self, Self::Dev(_) | Self::Hub(_) | Self::Agent(_))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(if cli.command.is_server() {
        "info"
    } else {
        "warn"
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("muster: cannot start the async runtime: {err}");
            return ExitCode::from(EXIT_SERVE_FAILED);
        }
    };
    let code = runtime.block_on(dispatch(cli));
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN_TIMEOUT);
    code
}

/// The WebSocket libraries, whose `trace` events print every frame.
const FRAME_LOGGERS: [&str; 2] = ["tungstenite", "tokio_tungstenite"];

/// Logs go to stderr, filtered by `MUSTER_LOG`, else `RUST_LOG`, else
/// `default`; colored only when stderr is a terminal. Whatever the filter
/// says, the WebSocket libraries log at most at `debug`: at `trace` they print
/// every frame, `hello` and its token included.
fn init_tracing(default: &str) {
    let filter = EnvFilter::try_from_env("MUSTER_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new(default));
    let most = filter.max_level_hint().unwrap_or(LevelFilter::TRACE);
    // A second filter, so the cap never raises what the first one lets through.
    let no_frames = FRAME_LOGGERS.iter().fold(
        Targets::new().with_default(LevelFilter::TRACE),
        |targets, target| targets.with_target(*target, LevelFilter::DEBUG),
    );
    tracing_subscriber::registry()
        .with(filter)
        .with(no_frames)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal()),
        )
        .init();
    // Records of the `log` crate (the WebSocket library logs every frame at
    // trace) are passed on to tracing only up to the most the filter lets
    // through: past it, a `log` macro costs one atomic load instead of a
    // filter check per frame.
    log::set_max_level(log_level(most));
}

/// The `log` crate's level filter for a tracing one.
fn log_level(level: LevelFilter) -> log::LevelFilter {
    match level {
        LevelFilter::OFF => log::LevelFilter::Off,
        LevelFilter::ERROR => log::LevelFilter::Error,
        LevelFilter::WARN => log::LevelFilter::Warn,
        LevelFilter::INFO => log::LevelFilter::Info,
        LevelFilter::DEBUG => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    }
}

async fn dispatch(cli: Cli) -> ExitCode {
    let json = cli.json;
    let (result, failure_code) = match cli.command {
        Command::Dev(args) => (serve::dev(args).await, EXIT_SERVE_FAILED),
        Command::Hub(args) => (serve::hub(args).await, EXIT_SERVE_FAILED),
        Command::Agent(args) => (serve::agent(args).await, EXIT_SERVE_FAILED),
        Command::Agents(command) => (command.run(json).await, cli::EXIT_ERROR),
        Command::Keys(command) => (command.run(json).await, cli::EXIT_ERROR),
        Command::Audit(args) => (cli::audit::audit(args, json).await, cli::EXIT_ERROR),
        Command::Enroll(command) => (command.run(json).await, cli::EXIT_ERROR),
        Command::Run(args) => (cli::run::run(args, json).await, cli::EXIT_ERROR),
        Command::Action(args) => (cli::action::action(args, json).await, cli::EXIT_ERROR),
        Command::Runs(command) => (command.run(json).await, cli::EXIT_ERROR),
        Command::Job(command) => (command.run(json).await, cli::EXIT_ERROR),
        Command::Jobs(command) => (command.run(json).await, cli::EXIT_ERROR),
        Command::Shell(args) => (cli::shell::shell(args).await, cli::EXIT_ERROR),
        Command::Sessions(command) => (command.run(json).await, cli::EXIT_ERROR),
        Command::Top(args) => (cli::top::top(args, json).await, cli::EXIT_ERROR),
        Command::Events(args) => (cli::events::events(args, json).await, cli::EXIT_ERROR),
        Command::Emit(args) => (cli::events::emit(args).await, cli::EXIT_ERROR),
    };
    result.unwrap_or_else(|err| {
        // An error may quote what the hub or an agent said; its lines stay lines.
        let text = format!("{err:#}");
        let lines: Vec<_> = text.split('\n').map(cli::output::escape).collect();
        eprintln!("muster: {}", lines.join("\n"));
        ExitCode::from(failure_code)
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
