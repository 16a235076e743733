//! `muster enroll create | list | revoke`: enrollment tokens, with which new
//! agents register themselves (`muster agent --enroll`).

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use muster_proto::enroll::{DEFAULT_ENROLL_USES, EnrollCreate, EnrollmentInfo, MAX_ENROLL_USES};

use super::output::{self, Table};
use super::{HubConn, parse};

/// The `muster enroll` subcommands (admin keys only).
#[derive(Debug, clap::Subcommand)]
pub(crate) enum EnrollCommand {
    /// Mint an enrollment token and print it, shown only this once. An agent
    /// started with it (`muster agent --enroll`, or MUSTER_ENROLL_TOKEN)
    /// registers itself with the token's labels.
    Create(CreateArgs),
    /// List the enrollment tokens: id, labels, uses left, expiry and who
    /// made each (never a token).
    List(ListArgs),
    /// Revoke an enrollment token by its id; agents it enrolled keep their
    /// own credentials.
    Revoke(RevokeArgs),
}

/// Arguments of `muster enroll create`.
#[derive(Debug, clap::Args)]
pub(crate) struct CreateArgs {
    #[command(flatten)]
    conn: HubConn,
    /// A label every agent enrolled with it gets, as KEY=VALUE; repeat for several.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse::key_value)]
    labels: Vec<(String, String)>,
    /// How many agents it may register.
    #[arg(
        long,
        default_value_t = DEFAULT_ENROLL_USES,
        value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_ENROLL_USES))
    )]
    uses: u32,
    /// How long it works (e.g. 30m, 24h, 7d; at most 365d).
    #[arg(long, default_value = "24h", value_parser = parse::duration)]
    expires: Duration,
}

/// Arguments of `muster enroll list`.
#[derive(Debug, clap::Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    conn: HubConn,
}

/// Arguments of `muster enroll revoke`.
#[derive(Debug, clap::Args)]
pub(crate) struct RevokeArgs {
    #[command(flatten)]
    conn: HubConn,
    /// The token's id, as `muster enroll list` shows it.
    id: String,
}

impl EnrollCommand {
    /// Runs the subcommand.
    pub(crate) async fn run(self, json: bool) -> anyhow::Result<ExitCode> {
        match self {
            Self::Create(args) => create(args, json).await?,
            Self::List(args) => list(args, json).await?,
            Self::Revoke(args) => revoke(args, json).await?,
        }
        Ok(ExitCode::SUCCESS)
    }
}

async fn create(args: CreateArgs, json: bool) -> anyhow::Result<()> {
    let (client, _events) = args.conn.connect().await?;
    let create = EnrollCreate {
        labels: args.labels.into_iter().collect(),
        uses: Some(args.uses),
        expires_in_ms: Some(u64::try_from(args.expires.as_millis()).unwrap_or(u64::MAX)),
    };
    let created = client.create_enrollment(create).await?;
    client.close().await;
    let enrollment = &created.enrollment;
    if json {
        let record = serde_json::json!({
            "id": enrollment.id,
            "labels": enrollment.labels,
            "uses_left": enrollment.uses_left,
            "expires_ms": enrollment.expires_ms,
            "created_ms": enrollment.created_ms,
            "created_by": enrollment.created_by,
            "token": created.token,
        });
        return output::print_json(&record);
    }
    output::print(&format!("{}\n", created.token))?;
    eprintln!(
        "enrollment token {} created for {} agent(s), until {}; it is shown only this once. \
         On each new host, with the token in MUSTER_ENROLL_TOKEN:\n  \
         muster agent --hub {} --name NAME",
        enrollment.id,
        enrollment.uses_left,
        output::timestamp(output::now_ms(), enrollment.expires_ms),
        args.conn.hub,
    );
    Ok(())
}

async fn list(args: ListArgs, json: bool) -> anyhow::Result<()> {
    let (client, _events) = args.conn.connect().await?;
    let enrollments = client.enrollments().await?;
    client.close().await;
    if json {
        return output::print_json(&enrollments);
    }
    output::print(&enrollment_table(&enrollments, output::now_ms()))
}

async fn revoke(args: RevokeArgs, json: bool) -> anyhow::Result<()> {
    let (client, _events) = args.conn.connect().await?;
    client.revoke_enrollment(&args.id).await?;
    client.close().await;
    if json {
        return output::print_json(&serde_json::json!({ "id": args.id }));
    }
    eprintln!(
        "enrollment token {} revoked; agents it enrolled keep their credentials",
        output::escape(&args.id)
    );
    Ok(())
}

/// The listing as a table, its expiries relative to `now_ms`.
fn enrollment_table(enrollments: &[EnrollmentInfo], now_ms: u64) -> String {
    let mut table = Table::new(&[
        "ID",
        "LABELS",
        "USES LEFT",
        "STATE",
        "EXPIRES",
        "CREATED BY",
    ]);
    for enrollment in enrollments {
        table.push(vec![
            enrollment.id.clone(),
            labels(&enrollment.labels),
            enrollment.uses_left.to_string(),
            state(enrollment, now_ms).to_owned(),
            output::timestamp(now_ms, enrollment.expires_ms),
            output::escape(&enrollment.created_by).into_owned(),
        ]);
    }
    table.render()
}

/// Whether an enrollment still works at `now_ms`.
fn state(enrollment: &EnrollmentInfo, now_ms: u64) -> &'static str {
    if enrollment.expires_ms <= now_ms {
        "expired"
    } else if enrollment.uses_left == 0 {
        "used up"
    } else {
        "active"
    }
}

/// Labels as `k=v,k=v`, or `-`.
fn labels(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "-".to_owned();
    }
    let pairs: Vec<_> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    output::escape(&pairs.join(",")).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_tells_active_used_up_and_expired_tokens_apart() {
        let enrollment = |id: &str, uses_left, expires_ms| EnrollmentInfo {
            id: id.into(),
            labels: BTreeMap::from([("env".into(), "staging".into())]),
            uses_left,
            expires_ms,
            created_ms: 0,
            created_by: "admin".into(),
        };
        let table = enrollment_table(
            &[
                enrollment("aaaaaaaaaaaa", 2, 10_000),
                enrollment("bbbbbbbbbbbb", 0, 10_000),
                enrollment("cccccccccccc", 1, 1_000),
            ],
            5_000,
        );
        let lines: Vec<_> = table.lines().collect();
        assert!(lines[0].starts_with("ID"), "{table}");
        assert!(lines[1].contains("env=staging") && lines[1].contains("active"));
        assert!(lines[2].contains("used up"), "{table}");
        assert!(lines[3].contains("expired"), "{table}");
    }
}
