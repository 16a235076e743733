//! `muster shell AGENT [-- CMD…]`: an ssh-like terminal on an agent.
//!
//! Opens a pty session sized like the local terminal, running CMD or, by
//! default, the user's login shell on the agent (`/bin/sh -c 'exec
//! "${SHELL:-/bin/sh}" -l'`, so `$SHELL` as the agent's environment has
//! it), attaches as a writer and hands the terminal to the interactive loop
//! (`sessions/interactive.rs`): raw mode, `~.` to detach, SIGWINCH, and the
//! remote exit status as the exit code.

use std::process::ExitCode;

use muster_client::{Follow, Session, SessionOptions, new_writer_id};
use muster_proto::sessions::{SessionKind, SessionSpec};
use muster_proto::{AgentName, CommandSpec};

use super::HubConn;
use super::sessions::interactive::Interactive;
use super::sessions::{self, terminal};

/// What runs when no command is given: the login shell.
pub(crate) const LOGIN_SHELL: &str = "exec \"${SHELL:-/bin/sh}\" -l";

/// Arguments of `muster shell`.
#[derive(Debug, clap::Args)]
pub(crate) struct ShellArgs {
    #[command(flatten)]
    conn: HubConn,
    /// The agent.
    agent: AgentName,
    /// The terminal's size when stdin is no terminal, as COLSxROWS.
    #[arg(long, value_name = "COLSxROWS", value_parser = sessions::parse_size, default_value = "80x24")]
    size: (u16, u16),
    /// End the session after this long without input or output (30m, 2h);
    /// the hub's default otherwise.
    #[arg(long, value_name = "DURATION", value_parser = super::parse::duration)]
    idle_timeout: Option<std::time::Duration>,
    /// The command and its arguments, after `--`; the login shell when absent.
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
}

/// Runs `muster shell`.
pub(crate) async fn shell(args: ShellArgs) -> anyhow::Result<ExitCode> {
    let (cols, rows) = terminal::window_size().unwrap_or(args.size);
    let spec = SessionSpec {
        kind: SessionKind::Pty,
        cols,
        rows,
        json_lines: false,
        idle_timeout_ms: args.idle_timeout.map(super::target::millis),
    };
    let command = match args.command.is_empty() {
        true => CommandSpec::Shell(LOGIN_SHELL.to_owned()),
        false => CommandSpec::Argv(args.command),
    };
    let (client, events, run) = sessions::create(&args.conn, args.agent, command, spec).await?;
    let options = SessionOptions::writer(new_writer_id(), Follow::From(0));
    let (hub, token) = (&args.conn.hub, &args.conn.token.0);
    let attached = Session::attach((client, events), hub, token, run.id, options).await?;
    Interactive::new(attached.session).run(None).await
}
