//! `muster events NAME` reads an agent's event stream, and `muster emit TYPE
//! JSON` publishes one from a program the agent started.
//!
//! `events` subscribes to `agent:<name>` from an offset; the hub replays the
//! stored events, then sends live ones. With `--follow` a dropped connection
//! is resumed from the next offset, so each event prints exactly once.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use muster_client::Event;
use muster_proto::backoff::Backoff;
use muster_proto::messages::StoredEvent;
use muster_proto::{AgentName, CloseCode, HubToClient, RunId};

use super::HubConn;

/// Arguments of `muster events`.
#[derive(Debug, clap::Args)]
pub(crate) struct EventsArgs {
    #[command(flatten)]
    conn: HubConn,
    /// The agent.
    name: AgentName,
    /// First offset to print (0: from the beginning).
    #[arg(long, default_value_t = 0)]
    since: u64,
    /// Keep printing new events until Ctrl-C.
    #[arg(long, short)]
    follow: bool,
}

/// Arguments of `muster emit`.
#[derive(Debug, clap::Args)]
pub(crate) struct EmitArgs {
    /// Event type in dot notation, such as site.operation.
    kind: String,
    /// Event data: a JSON object.
    data: String,
    /// The agent's event socket (set for every command the agent runs).
    #[arg(long, env = "MUSTER_AGENT_SOCKET", value_name = "PATH")]
    socket: Option<PathBuf>,
    /// The run publishing the event (set for every command the agent runs).
    #[arg(long, env = "MUSTER_RUN_ID", value_name = "ID")]
    run: Option<RunId>,
}

/// Runs `muster events`.
pub(crate) async fn events(args: EventsArgs, json: bool) -> anyhow::Result<ExitCode> {
    let channel = format!("agent:{}", args.name);
    let mut next = args.since;
    let mut backoff = Backoff::new();
    let mut connection = Some(args.conn.connect().await?);
    loop {
        let (client, mut stream) = match connection.take() {
            Some(connection) => connection,
            None => args.conn.reconnect(&mut backoff, "events").await?,
        };
        client
            .subscribe(&channel, Some(next))
            .await
            .map_err(super::agent_error(&args.name))?;
        backoff.reset();
        match print_until(&mut stream, &mut next, args.follow, json).await? {
            Ended::Synced => {
                client.close().await;
                return Ok(ExitCode::SUCCESS);
            }
            Ended::Dropped(code) if code.is_some_and(CloseCode::is_fatal) => {
                anyhow::bail!("the hub closed the connection for good")
            }
            Ended::Dropped(_) => continue,
        }
    }
}

enum Ended {
    Synced,
    Dropped(Option<u16>),
}

/// Prints events until the replay ends (without `follow`) or the connection drops.
async fn print_until(
    stream: &mut tokio::sync::mpsc::Receiver<Event>,
    next: &mut u64,
    follow: bool,
    json: bool,
) -> anyhow::Result<Ended> {
    while let Some(event) = stream.recv().await {
        match event {
            Event::Message(env) => match env.msg {
                HubToClient::AgentEvent(event) if event.seq >= *next => {
                    *next = event.seq + 1;
                    print_event(&event, json)?;
                }
                HubToClient::StreamSynced(_) if !follow => return Ok(Ended::Synced),
                _ => {}
            },
            Event::Closed { code, .. } => return Ok(Ended::Dropped(code)),
            Event::Output(_) => {}
        }
    }
    Ok(Ended::Dropped(None))
}

fn print_event(event: &StoredEvent, json: bool) -> anyhow::Result<()> {
    let line = if json {
        serde_json::to_string(event)?
    } else {
        format!(
            "{:>6}  {}  {}  {}",
            event.seq,
            super::output::timestamp(super::output::now_ms(), event.event.ts_ms),
            super::output::escape(&event.event.kind),
            event.event.data
        )
    };
    super::output::print(&format!("{line}\n"))
}

/// Runs `muster emit`.
pub(crate) async fn emit(args: EmitArgs) -> anyhow::Result<ExitCode> {
    let socket = args.socket.context(
        "MUSTER_AGENT_SOCKET is not set: run this from a command a muster agent started",
    )?;
    let data: serde_json::Value =
        serde_json::from_str(&args.data).context("event data is not valid JSON")?;
    muster_agent::emit::emit(&socket, &args.kind, data, args.run).await?;
    Ok(ExitCode::SUCCESS)
}
