//! `muster sessions list | open | attach | send | close | export |
//! transcript`, and what `muster shell` shares with them: the interactive
//! terminal (`interactive.rs`, over `terminal.rs`, `escape.rs` and
//! `queries.rs`), the asciicast writer and the pipe transcript.

pub(crate) mod asciicast;
pub(crate) mod escape;
pub(crate) mod interactive;
pub(crate) mod queries;
pub(crate) mod terminal;
pub(crate) mod transcript;
pub(crate) mod utf8;

use std::process::ExitCode;

use muster_client::{
    DEFAULT_GIVE_UP_AFTER, Follow, FollowEvent, FollowOptions, RunFollower, Session, SessionError,
    SessionOptions, create_run_retrying, new_writer_id,
};
use muster_proto::sessions::{SessionKind, SessionSpec};
use muster_proto::types::RunRequest;
use muster_proto::{AgentName, CommandSpec, OutputFrame, RunId, RunInfo};

use super::output::{self, Table};
use super::{HubConn, agent_error, parse, run_error};
use asciicast::Asciicast;
use interactive::Interactive;
use transcript::Transcript;

/// How many sessions `sessions list` shows without `--limit`.
const DEFAULT_LIMIT: u32 = 50;

/// The `muster sessions` subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum SessionsCommand {
    /// List recent sessions, newest first.
    List(ListArgs),
    /// Open a session on an agent without attaching, and print its id.
    Open(OpenArgs),
    /// Attach to a session: a pty's screen, then its live output; a pipe's
    /// transcript so far, then what follows. Type into it unless --read-only.
    /// `~.` after Enter detaches (exit 254); see `muster shell`.
    Attach(AttachArgs),
    /// Send one input (pty: keystrokes as given; pipe: one message) and wait
    /// until the hub has stored it.
    Send(SendArgs),
    /// Close a session: its process is ended.
    Close(IdArgs),
    /// Print a session's output as a recording (asciicast v2) on stdout.
    Export(ExportArgs),
    /// Print a pipe session as a conversation: inputs as user turns, stdout
    /// lines as agent turns (JSON object lines as messages with --json-lines
    /// sessions).
    Transcript(IdArgs),
}

/// Arguments of `muster sessions list`.
#[derive(Debug, clap::Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    conn: HubConn,
    /// At most this many sessions.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_LIMIT)]
    limit: u32,
}

/// Arguments of `muster sessions open`.
#[derive(Debug, clap::Args)]
pub(crate) struct OpenArgs {
    #[command(flatten)]
    conn: HubConn,
    /// The agent.
    agent: AgentName,
    /// A pipe session: each input is one line on the process's stdin (else a pty).
    #[arg(long)]
    pipe: bool,
    /// Pipe sessions: stdout lines that are JSON objects are structured messages.
    #[arg(long, requires = "pipe")]
    json_lines: bool,
    /// Pty sessions: the terminal's size, as COLSxROWS.
    #[arg(long, value_name = "COLSxROWS", value_parser = parse_size, default_value = "80x24")]
    size: (u16, u16),
    /// End the session after this long without input or output (30m, 2h);
    /// the hub's default otherwise.
    #[arg(long, value_name = "DURATION", value_parser = parse::duration)]
    idle_timeout: Option<std::time::Duration>,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

/// Arguments of `muster sessions attach`.
#[derive(Debug, clap::Args)]
pub(crate) struct AttachArgs {
    #[command(flatten)]
    conn: HubConn,
    /// The session id.
    id: RunId,
    /// Watch only; type nothing into it.
    #[arg(long)]
    read_only: bool,
}

/// Arguments of `muster sessions send`.
#[derive(Debug, clap::Args)]
pub(crate) struct SendArgs {
    #[command(flatten)]
    conn: HubConn,
    /// The session id.
    id: RunId,
    /// What to send: a pty gets it as typed (add the newline yourself), a
    /// pipe as one message (the agent adds the newline).
    text: String,
}

/// Arguments of the subcommands that name one session.
#[derive(Debug, clap::Args)]
pub(crate) struct IdArgs {
    #[command(flatten)]
    conn: HubConn,
    /// The session id.
    id: RunId,
}

/// The formats `export` writes.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(crate) enum ExportFormat {
    /// asciicast v2, as asciinema plays it.
    Asciicast,
}

/// Arguments of `muster sessions export`.
#[derive(Debug, clap::Args)]
pub(crate) struct ExportArgs {
    #[command(flatten)]
    conn: HubConn,
    /// The session id.
    id: RunId,
    /// The recording's format.
    #[arg(long, value_enum)]
    format: ExportFormat,
    /// Add an "i" event for every input.
    #[arg(long)]
    input: bool,
}

impl SessionsCommand {
    /// Runs the subcommand.
    pub(crate) async fn run(self, json: bool) -> anyhow::Result<ExitCode> {
        match self {
            Self::List(args) => list(args, json).await?,
            Self::Open(args) => open(args, json).await?,
            Self::Attach(args) => return attach(args).await,
            Self::Send(args) => send(args).await?,
            Self::Close(args) => close(args, json).await?,
            Self::Export(args) => export(args).await?,
            Self::Transcript(args) => transcript(args, json).await?,
        }
        Ok(ExitCode::SUCCESS)
    }
}

async fn list(args: ListArgs, json: bool) -> anyhow::Result<()> {
    let (client, _) = args.conn.connect().await?;
    let sessions = client.sessions(Some(args.limit)).await?;
    client.close().await;
    if json {
        return output::print_json(&sessions);
    }
    output::print(&session_table(&sessions, output::now_ms()))
}

fn session_table(sessions: &[RunInfo], now_ms: u64) -> String {
    let mut table = Table::new(&["ID", "AGENT", "KIND", "STATE", "SIZE", "CREATED"]);
    for run in sessions {
        let (kind, size) = match &run.session {
            Some(spec) if spec.kind == SessionKind::Pty => {
                ("pty", format!("{}x{}", spec.cols, spec.rows))
            }
            Some(spec) => (spec.kind.as_str(), "-".to_owned()),
            None => ("-", "-".to_owned()),
        };
        table.push(vec![
            run.id.to_string(),
            run.agent.to_string(),
            kind.to_owned(),
            run.state.to_string(),
            size,
            output::ago(now_ms, run.created_ms),
        ]);
    }
    table.render()
}

/// Opens a session and returns it as accepted; shared with `muster shell`.
pub(crate) async fn create(
    conn: &HubConn,
    agent: AgentName,
    command: CommandSpec,
    spec: SessionSpec,
) -> anyhow::Result<(
    muster_client::Client,
    tokio::sync::mpsc::Receiver<muster_client::Event>,
    RunInfo,
)> {
    if let Err(why) = spec.validate() {
        anyhow::bail!("{why}");
    }
    let mut request = RunRequest::new(agent.clone(), command);
    request.session = Some(Box::new(spec));
    let connection = conn.connect().await?;
    let (hub, token) = (&conn.hub, &conn.token.0);
    let created = create_run_retrying(
        connection,
        hub,
        token,
        request,
        false,
        DEFAULT_GIVE_UP_AFTER,
    );
    let (client, events, accepted) = created.await.map_err(agent_error(&agent))?;
    Ok((client, events, accepted.run))
}

async fn open(args: OpenArgs, json: bool) -> anyhow::Result<()> {
    let kind = if args.pipe {
        SessionKind::Pipe
    } else {
        SessionKind::Pty
    };
    let spec = SessionSpec {
        kind,
        cols: args.size.0,
        rows: args.size.1,
        json_lines: args.json_lines,
        idle_timeout_ms: args.idle_timeout.map(super::target::millis),
    };
    let command = CommandSpec::Argv(args.command);
    let (client, _events, run) = create(&args.conn, args.agent, command, spec).await?;
    client.close().await;
    if json {
        return output::print_json(&run);
    }
    output::print(&format!("{}\n", run.id))
}

async fn attach(args: AttachArgs) -> anyhow::Result<ExitCode> {
    let connection = args.conn.connect().await?;
    let run = connection
        .0
        .run_info(args.id)
        .await
        .map_err(run_error(args.id))?;
    let kind = run.session.as_ref().map(|spec| spec.kind);
    let follow = match kind {
        Some(SessionKind::Pty) => Follow::Snapshot,
        Some(SessionKind::Pipe) => Follow::From(0),
        None => anyhow::bail!("run {} is not a session", args.id),
    };
    let options = match args.read_only {
        true => SessionOptions::viewer(follow),
        false => SessionOptions::writer(new_writer_id(), follow),
    };
    let (hub, token) = (&args.conn.hub, &args.conn.token.0);
    let attached = Session::attach(connection, hub, token, args.id, options)
        .await
        .map_err(run_error(args.id))?;
    Interactive::new(attached.session)
        .run(attached.screen)
        .await
}

async fn send(args: SendArgs) -> anyhow::Result<()> {
    let connection = args.conn.connect().await?;
    let options = SessionOptions::writer(new_writer_id(), Follow::No);
    let (hub, token) = (&args.conn.hub, &args.conn.token.0);
    let attached = Session::attach(connection, hub, token, args.id, options)
        .await
        .map_err(run_error(args.id))?;
    let mut session = attached.session;
    let seq = session.input(args.text).await?;
    let acked = session.acked(seq);
    tokio::select! {
        acked = acked => acked?,
        event = session.next() => match event {
            Some(Err(err)) => return Err(err.into()),
            _ => return Err(SessionError::Stopped.into()),
        },
    }
    session.detach().await;
    Ok(())
}

async fn close(args: IdArgs, json: bool) -> anyhow::Result<()> {
    let (client, _events) = args.conn.connect().await?;
    client
        .cancel_run(args.id)
        .await
        .map_err(run_error(args.id))?;
    client.close().await;
    if json {
        return output::print_json(&serde_json::json!({ "session": args.id }));
    }
    output::print(&format!("closed session {}\n", args.id))
}

/// Reads a session's stored output from the start, as `runs output` does,
/// handing each frame to `each`; returns the session as stored.
async fn read_stored(
    conn: &HubConn,
    id: RunId,
    mut each: impl FnMut(&RunInfo, &OutputFrame) -> anyhow::Result<()>,
) -> anyhow::Result<RunInfo> {
    let (client, events) = conn.connect().await?;
    let mut run = client.run_info(id).await.map_err(run_error(id))?;
    if run.session.is_none() {
        anyhow::bail!("run {id} is not a session");
    }
    let options = FollowOptions::default();
    let mut follower =
        RunFollower::with_connection(client, events, &conn.hub, &conn.token.0, id, options);
    loop {
        match super::stream::event_or_error(follower.next().await, id)? {
            FollowEvent::Output(frame) => each(&run, &frame)?,
            FollowEvent::Synced { .. } => break,
            FollowEvent::Finished(info) => {
                run = *info;
                break;
            }
            FollowEvent::Status(info) => run = *info,
            FollowEvent::Queued { .. } => {}
        }
    }
    follower.close().await;
    Ok(run)
}

async fn export(args: ExportArgs) -> anyhow::Result<()> {
    let ExportFormat::Asciicast = args.format;
    let mut cast: Option<Asciicast> = None;
    let input = args.input;
    read_stored(&args.conn, args.id, |run, frame| {
        let cast = match &mut cast {
            Some(cast) => cast,
            None => {
                let start = run.started_ms.unwrap_or(run.created_ms);
                let (cols, rows) = run.session.as_ref().map_or((80, 24), |s| (s.cols, s.rows));
                let (started, header) = Asciicast::start(start, cols, rows, input);
                output::print(&header)?;
                cast.insert(started)
            }
        };
        output::print(&cast.frame(frame))
    })
    .await
    .map(|run| (run, cast))
    .and_then(|(run, cast)| match cast {
        Some(mut cast) => output::print(&cast.finish()),
        // No output at all: the header alone.
        None => {
            let start = run.started_ms.unwrap_or(run.created_ms);
            let (cols, rows) = run.session.as_ref().map_or((80, 24), |s| (s.cols, s.rows));
            output::print(&Asciicast::start(start, cols, rows, input).1)
        }
    })
}

async fn transcript(args: IdArgs, json: bool) -> anyhow::Result<()> {
    let mut builder: Option<Transcript> = None;
    let print_turn = |turn: &transcript::Message| -> anyhow::Result<()> {
        match json {
            true => output::print(&format!("{}\n", serde_json::to_string(turn)?)),
            false => output::print(&turn_line(turn)),
        }
    };
    read_stored(&args.conn, args.id, |run, frame| {
        let builder = builder.get_or_insert_with(|| {
            Transcript::new(run.session.as_ref().is_some_and(|s| s.json_lines))
        });
        for turn in builder.frame(frame) {
            print_turn(&turn)?;
        }
        Ok(())
    })
    .await?;
    if let Some(turn) = builder.as_mut().and_then(Transcript::finish) {
        print_turn(&turn)?;
    }
    Ok(())
}

/// One turn for people: `TIME  WHO  > text` for input, `TIME  agent  < text`
/// for output, everything a peer wrote escaped.
fn turn_line(turn: &transcript::Message) -> String {
    let at = turn.at.map_or_else(
        || "-".to_owned(),
        |ms| {
            let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
            humantime::format_rfc3339_seconds(at).to_string()
        },
    );
    let (who, arrow) = match turn.role {
        "user" => (turn.from.as_deref().unwrap_or("?"), ">"),
        _ => ("agent", "<"),
    };
    let text = match (&turn.text, &turn.message) {
        (Some(text), _) => text.clone(),
        (None, Some(message)) => serde_json::Value::Object(message.clone()).to_string(),
        (None, None) => String::new(),
    };
    format!(
        "{at}  {}  {arrow} {}\n",
        output::escape(who),
        output::escape(&text)
    )
}

/// Parses `COLSxROWS`.
pub(crate) fn parse_size(text: &str) -> Result<(u16, u16), String> {
    let (cols, rows) = text
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("{text:?} is not COLSxROWS"))?;
    let number = |n: &str| {
        n.parse::<u16>()
            .map_err(|_| format!("{text:?} is not COLSxROWS"))
    };
    let size = (number(cols)?, number(rows)?);
    muster_proto::sessions::check_size(size.0, size.1)?;
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_are_checked() {
        assert_eq!(parse_size("100x30"), Ok((100, 30)));
        assert!(parse_size("100").is_err());
        assert!(parse_size("0x30").is_err());
        assert!(parse_size("2000x30").is_err());
    }

    #[test]
    fn the_table_shows_kind_and_size_and_escapes_peers() {
        let json = serde_json::json!({
            "id": RunId::generate(), "agent": "web-1", "command": {"argv": ["sh"]},
            "priority": 0, "state": "running", "created_ms": 1_000,
            "session": {"kind": "pty", "cols": 100, "rows": 30},
        });
        let run: RunInfo = serde_json::from_value(json).unwrap();
        let text = session_table(&[run], 4_000);
        let row = text.lines().nth(1).unwrap();
        for cell in ["web-1", "pty", "running", "100x30", "3s ago"] {
            assert!(row.contains(cell), "{row:?} lacks {cell}");
        }
        let turn = transcript::Message {
            kind: "session.message",
            seq: 0,
            role: "user",
            from: Some("ev\x1b[2Jil".into()),
            at: Some(0),
            text: Some("hi\x1b]0;x\x07".into()),
            message: None,
        };
        let line = turn_line(&turn);
        assert!(!line.contains('\x1b'), "{line:?}");
        assert_eq!(
            line,
            "1970-01-01T00:00:00Z  ev\\x1b[2Jil  > hi\\x1b]0;x\\x07\n"
        );
    }
}
