//! `muster keys create | list | rotate | revoke`: the hub's API keys, their
//! roles, scopes and expiry.

use std::process::ExitCode;

use std::time::Duration;

use muster_proto::messages::{Empty, KeyCreate, KeyRef, KeyRotate};
use muster_proto::{ClientToHub, HubToClient, Role, Selector};

use super::HubConn;
use super::output::{self, Table};

/// The `muster keys` subcommands (admin keys only).
#[derive(Debug, clap::Subcommand)]
pub(crate) enum KeysCommand {
    /// Mint an API key with a role and print its token, shown only this once.
    Create(CreateArgs),
    /// List the API keys: name, role, scope, expiry and key id (never a token).
    List(ListArgs),
    /// Mint a new token for a key name and retire the old one, at once or
    /// after an overlap; prints the new token, shown only this once.
    Rotate(RotateArgs),
    /// Revoke every key of a name and close the connections that use it.
    Revoke(RevokeArgs),
}

/// Arguments of `muster keys create`.
#[derive(Debug, clap::Args)]
pub(crate) struct CreateArgs {
    #[command(flatten)]
    conn: HubConn,
    /// The key's name, unique among live keys.
    name: String,
    /// viewer (reads), operator (also runs commands, jobs and actions) or
    /// admin (also manages agents and keys).
    #[arg(long, value_parser = clap::value_parser!(RoleArg))]
    role: RoleArg,
    /// Confine the key to the agents this label selector matches
    /// (`env=staging`); it then sees, runs on and subscribes to only those.
    #[arg(long, value_name = "SELECTOR", value_parser = clap::value_parser!(Selector))]
    scope: Option<Selector>,
    /// The key stops working after this long (`30d`, `12h`).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    expires: Option<Duration>,
}

/// Arguments of `muster keys rotate`.
#[derive(Debug, clap::Args)]
pub(crate) struct RotateArgs {
    #[command(flatten)]
    conn: HubConn,
    /// The key's name.
    name: String,
    /// How long the old token keeps working (`10m`); without it, it stops at
    /// once and its connections close.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    overlap: Option<Duration>,
}

/// Arguments of `muster keys list`.
#[derive(Debug, clap::Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    conn: HubConn,
}

/// Arguments of `muster keys revoke`.
#[derive(Debug, clap::Args)]
pub(crate) struct RevokeArgs {
    #[command(flatten)]
    conn: HubConn,
    /// The key's name.
    name: String,
}

/// A role given on the command line.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RoleArg(Role);

impl std::str::FromStr for RoleArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(Self)
    }
}

impl KeysCommand {
    /// Runs the subcommand.
    pub(crate) async fn run(self, json: bool) -> anyhow::Result<ExitCode> {
        match self {
            Self::Create(args) => create(args, json).await?,
            Self::List(args) => list(args, json).await?,
            Self::Rotate(args) => rotate(args, json).await?,
            Self::Revoke(args) => revoke(args, json).await?,
        }
        Ok(ExitCode::SUCCESS)
    }
}

async fn create(args: CreateArgs, json: bool) -> anyhow::Result<()> {
    let (client, _events) = args.conn.connect().await?;
    let request = ClientToHub::KeyCreate(KeyCreate {
        name: args.name.clone(),
        role: args.role.0,
        scope: args.scope,
        expires_in_ms: args.expires.map(millis),
    });
    let reply = client.request(request).await?;
    client.close().await;
    let HubToClient::KeyCreated(created) = reply else {
        anyhow::bail!("the hub answered key.create with something else");
    };
    if json {
        let record = serde_json::json!({
            "name": created.key.name,
            "role": created.key.role,
            "key_id": created.key.key_id,
            "token": created.token,
        });
        return output::print_json(&record);
    }
    output::print(&format!("{}\n", created.token))?;
    eprintln!(
        "key {:?} ({}) created; its token is shown only this once",
        output::escape(&created.key.name),
        created.key.role
    );
    Ok(())
}

async fn list(args: ListArgs, json: bool) -> anyhow::Result<()> {
    let (client, _events) = args.conn.connect().await?;
    let reply = client
        .request(ClientToHub::KeyList(Empty::default()))
        .await?;
    client.close().await;
    let HubToClient::KeyList(list) = reply else {
        anyhow::bail!("the hub answered key.list with something else");
    };
    if json {
        return output::print_json(&list.keys);
    }
    let now = output::now_ms();
    let mut table = Table::new(&["NAME", "ROLE", "SCOPE", "EXPIRES", "KEY ID"]);
    for key in &list.keys {
        table.push(vec![
            key.name.clone(),
            key.role.to_string(),
            key.scope.as_ref().map_or("-".into(), Selector::to_string),
            key.expires_ms
                .map_or("never".into(), |at| output::timestamp(now, at)),
            key.key_id.clone(),
        ]);
    }
    output::print(&table.render())
}

async fn rotate(args: RotateArgs, json: bool) -> anyhow::Result<()> {
    let (client, _events) = args.conn.connect().await?;
    let request = ClientToHub::KeyRotate(KeyRotate {
        name: args.name.clone(),
        overlap_ms: args.overlap.map_or(0, millis),
    });
    // Rotating the key this command uses closes this connection too,
    // unless with an overlap; the answer comes first.
    let reply = client.request(request).await?;
    client.close().await;
    let HubToClient::KeyRotated(rotated) = reply else {
        anyhow::bail!("the hub answered key.rotate with something else");
    };
    if json {
        let record = serde_json::json!({
            "key": rotated.key,
            "token": rotated.token,
            "old_expires_ms": rotated.old_expires_ms,
            "closed_connections": rotated.closed_connections,
        });
        return output::print_json(&record);
    }
    output::print(&format!("{}\n", rotated.token))?;
    let old = match args.overlap {
        Some(_) => format!(
            "the old token works until {}",
            output::timestamp(output::now_ms(), rotated.old_expires_ms)
        ),
        None => format!(
            "the old token stopped working; {} live connection(s) closed",
            rotated.closed_connections
        ),
    };
    eprintln!(
        "key {:?} rotated; {old}; the new token is shown only this once",
        output::escape(&rotated.key.name)
    );
    Ok(())
}

/// A duration in whole milliseconds, saturating.
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

async fn revoke(args: RevokeArgs, json: bool) -> anyhow::Result<()> {
    let (client, _events) = args.conn.connect().await?;
    let request = ClientToHub::KeyRevoke(KeyRef {
        name: args.name.clone(),
    });
    // Revoking the key this command uses closes this connection too; the
    // answer comes first.
    let reply = client.request(request).await?;
    client.close().await;
    let HubToClient::KeyRevoked(revoked) = reply else {
        anyhow::bail!("the hub answered key.revoke with something else");
    };
    if json {
        return output::print_json(&revoked);
    }
    eprintln!(
        "key {:?} revoked; {} live connection(s) closed",
        output::escape(&revoked.name),
        revoked.closed_connections
    );
    Ok(())
}
