//! `muster audit`: who did what, from where, and how it ended (admin keys).
//!
//! Pages through `audit.list` from `--since`; with `--follow` it subscribes
//! to `audit` first, so nothing appended meanwhile is missed, and prints
//! each entry once by its seq, across reconnects.

use std::process::ExitCode;
use std::time::Duration;

use muster_client::{Client, Event};
use muster_proto::backoff::Backoff;
use muster_proto::messages::{AuditEntry, AuditListQuery};
use muster_proto::{ClientToHub, CloseCode, HubToClient};

use super::HubConn;
use super::output;

/// Arguments of `muster audit`.
#[derive(Debug, clap::Args)]
pub(crate) struct AuditArgs {
    #[command(flatten)]
    conn: HubConn,
    /// Only entries younger than this (`1h`, `7d`); default: every entry.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    since: Option<Duration>,
    /// Keep printing new entries until Ctrl-C.
    #[arg(long, short)]
    follow: bool,
}

/// Runs `muster audit`.
pub(crate) async fn audit(args: AuditArgs, json: bool) -> anyhow::Result<ExitCode> {
    let since_ms = args.since.map(|since| {
        let since = u64::try_from(since.as_millis()).unwrap_or(u64::MAX);
        output::now_ms().saturating_sub(since)
    });
    // The seq of the last entry printed.
    let mut last = 0;
    let mut backoff = Backoff::new();
    let mut connection = Some(args.conn.connect().await?);
    loop {
        let (client, mut stream) = match connection.take() {
            Some(connection) => connection,
            None => args.conn.reconnect(&mut backoff, "the audit log").await?,
        };
        if args.follow {
            client.subscribe("audit", None).await?;
        }
        print_pages(&client, since_ms, &mut last, json).await?;
        if !args.follow {
            client.close().await;
            return Ok(ExitCode::SUCCESS);
        }
        backoff.reset();
        let code = follow(&mut stream, &mut last, json).await?;
        if code.is_some_and(CloseCode::is_fatal) {
            anyhow::bail!("the hub closed the connection for good");
        }
    }
}

/// Prints every stored entry after `last` (and at or after `since_ms`).
async fn print_pages(
    client: &Client,
    since_ms: Option<u64>,
    last: &mut u64,
    json: bool,
) -> anyhow::Result<()> {
    loop {
        let query = AuditListQuery {
            since_ms,
            cursor: (*last > 0).then(|| last.to_string()),
            limit: None,
        };
        let HubToClient::AuditList(page) = client.request(ClientToHub::AuditList(query)).await?
        else {
            anyhow::bail!("the hub answered audit.list with something else");
        };
        for entry in &page.entries {
            print_entry(entry, last, json)?;
        }
        if page.next_cursor.is_none() {
            return Ok(());
        }
    }
}

/// Prints live entries until the connection drops; returns its close code.
async fn follow(
    stream: &mut tokio::sync::mpsc::Receiver<Event>,
    last: &mut u64,
    json: bool,
) -> anyhow::Result<Option<u16>> {
    while let Some(event) = stream.recv().await {
        match event {
            Event::Message(env) => {
                if let HubToClient::AuditEntry(entry) = env.msg {
                    print_entry(&entry, last, json)?;
                }
            }
            Event::Closed { code, .. } => return Ok(code),
            Event::Output(_) => {}
        }
    }
    Ok(None)
}

/// Prints `entry` unless it was printed already.
fn print_entry(entry: &AuditEntry, last: &mut u64, json: bool) -> anyhow::Result<()> {
    if entry.seq <= *last {
        return Ok(());
    }
    *last = entry.seq;
    let line = if json {
        serde_json::to_string(entry)?
    } else {
        let at = std::time::UNIX_EPOCH + Duration::from_millis(entry.at_ms);
        let fields = [
            entry.actor.as_str(),
            entry.source.as_deref().unwrap_or("-"),
            entry.action.as_str(),
            entry.target.as_deref().unwrap_or("-"),
            entry.outcome.as_str(),
        ];
        let fields: Vec<_> = fields.iter().map(|f| output::escape(f)).collect();
        let detail = entry
            .detail
            .as_deref()
            .map(output::escape)
            .unwrap_or_default();
        format!(
            "{:>6}  {}  {}  {}",
            entry.seq,
            humantime::format_rfc3339_millis(at),
            fields.join("  "),
            detail
        )
    };
    output::print(&format!("{}\n", line.trim_end()))
}
