//! `muster agents list | add | show | rm | label | metrics`: the agent
//! registry, and each agent's stored resource samples (in `metrics`).

use std::collections::BTreeMap;
use std::process::ExitCode;

use muster_proto::actions::{ActionInfo, ExecMode, ParamInfo};
use muster_proto::messages::AgentLabel;
use muster_proto::{AgentInfo, AgentName, AgentStatus, ClientToHub, HubToClient};

use super::output::{self, Table};
use super::{HubConn, agent_error, metrics, parse, target};

/// The `muster agents` subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum AgentsCommand {
    /// List every registered agent (or those a selector matches) with its status.
    List(ListArgs),
    /// Register an agent and print its token, which is shown only this once.
    Add(AddArgs),
    /// Show one agent, with the actions it declares.
    Show(NameArgs),
    /// Unregister an agent, revoke its token and disconnect it.
    Rm(NameArgs),
    /// Give a connected agent a new token over its connection; the agent
    /// stores it in its state dir and the old one stops working.
    RotateToken(NameArgs),
    /// Edit registered labels: KEY=VALUE sets one, KEY- removes one.
    Label(LabelArgs),
    /// Show an agent's recent resource samples: CPU, memory, disk, load, network.
    Metrics(metrics::MetricsArgs),
}

/// Arguments of `muster agents label`.
#[derive(Debug, clap::Args)]
pub(crate) struct LabelArgs {
    #[command(flatten)]
    conn: HubConn,
    /// The agent's name.
    name: AgentName,
    /// KEY=VALUE to set a label, KEY- to remove one.
    #[arg(required = true, value_name = "KEY=VALUE|KEY-")]
    edits: Vec<String>,
}

/// Arguments of `muster agents list`.
#[derive(Debug, clap::Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    conn: HubConn,
    /// Only the agents this selector matches: labels (role=web,env!=prod),
    /// name globs (web-*), lists (a,b), or all.
    #[arg(short = 'l', long = "selector", value_name = "SELECTOR")]
    selector: Option<String>,
}

/// Arguments of `muster agents add`.
#[derive(Debug, clap::Args)]
pub(crate) struct AddArgs {
    #[command(flatten)]
    conn: HubConn,
    /// The new agent's name.
    name: AgentName,
    /// A label to register, as KEY=VALUE; repeat for several.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse::key_value)]
    labels: Vec<(String, String)>,
}

/// Arguments of the subcommands that name one agent.
#[derive(Debug, clap::Args)]
pub(crate) struct NameArgs {
    #[command(flatten)]
    conn: HubConn,
    /// The agent's name.
    name: AgentName,
}

impl AgentsCommand {
    /// Runs the subcommand.
    pub(crate) async fn run(self, json: bool) -> anyhow::Result<ExitCode> {
        match self {
            Self::List(args) => list(args, json).await?,
            Self::Add(args) => add(args, json).await?,
            Self::Show(args) => show(args, json).await?,
            Self::Rm(args) => remove(args, json).await?,
            Self::RotateToken(args) => rotate_token(args, json).await?,
            Self::Label(args) => label(args, json).await?,
            Self::Metrics(args) => metrics::show(args, json).await?,
        }
        Ok(ExitCode::SUCCESS)
    }
}

async fn list(args: ListArgs, json: bool) -> anyhow::Result<()> {
    // A selector is checked here first, so a typo costs no round trip.
    let selector = args.selector.as_deref().map(target::selector).transpose()?;
    // Nothing here reads events; with the receiver gone, none are queued
    // while the pages are read.
    let (client, _) = args.conn.connect().await?;
    let agents = match &selector {
        Some(selector) => client.agents_matching(selector.as_str()).await?,
        None => client.agents().await?,
    };
    client.close().await;
    if json {
        return output::print_json(&agents);
    }
    output::print(&agent_table(&agents, output::now_ms()))
}

async fn add(args: AddArgs, json: bool) -> anyhow::Result<()> {
    let (client, _events) = args.conn.connect().await?;
    let labels: BTreeMap<String, String> = args.labels.into_iter().collect();
    let added = client.add_agent(args.name.clone(), labels).await?;
    client.close().await;
    if json {
        let record = serde_json::json!({ "name": added.agent.name, "token": added.token });
        return output::print_json(&record);
    }
    output::print(&format!("{}\n", added.token))?;
    eprintln!(
        "agent {:?} added; its token is shown only this once. Keep it in a file only its \
         user can read, and start the agent with:\n  \
         muster agent --hub {} --token-file FILE --name {}",
        args.name.as_str(),
        args.conn.hub,
        args.name,
    );
    Ok(())
}

async fn show(args: NameArgs, json: bool) -> anyhow::Result<()> {
    let (client, _events) = args.conn.connect().await?;
    let agent = client
        .agent(&args.name)
        .await
        .map_err(agent_error(&args.name))?;
    client.close().await;
    if json {
        return output::print_json(&agent);
    }
    let mut text = agent_fields(&agent, output::now_ms());
    text.push_str(&actions(&agent.actions));
    output::print(&text)
}

async fn remove(args: NameArgs, json: bool) -> anyhow::Result<()> {
    let (client, _events) = args.conn.connect().await?;
    client
        .remove_agent(&args.name)
        .await
        .map_err(agent_error(&args.name))?;
    client.close().await;
    if json {
        return output::print_json(&serde_json::json!({ "name": args.name }));
    }
    output::print(&format!("removed agent {:?}\n", args.name.as_str()))
}

async fn rotate_token(args: NameArgs, json: bool) -> anyhow::Result<()> {
    let (client, _events) = args.conn.connect().await?;
    let request = ClientToHub::AgentRotateToken(muster_proto::messages::AgentRef {
        name: args.name.clone(),
    });
    let reply = client
        .request(request)
        .await
        .map_err(agent_error(&args.name))?;
    client.close().await;
    let HubToClient::AgentTokenRotated(rotated) = reply else {
        anyhow::bail!("the hub answered agent.rotate_token with something else");
    };
    if json {
        return output::print_json(&serde_json::json!({ "name": rotated.name }));
    }
    output::print(&format!(
        "rotated the token of agent {:?}: it stored the new one and reconnects with it; the old one no longer works\n",
        rotated.name.as_str()
    ))
}

async fn label(args: LabelArgs, json: bool) -> anyhow::Result<()> {
    let mut edit = AgentLabel {
        name: args.name.clone(),
        set: BTreeMap::new(),
        remove: Vec::new(),
    };
    for word in &args.edits {
        match word.strip_suffix('-') {
            Some(key) if !key.contains('=') => edit.remove.push(key.to_owned()),
            _ => {
                let (key, value) = parse::key_value(word).map_err(anyhow::Error::msg)?;
                edit.set.insert(key, value);
            }
        }
    }
    let (client, _events) = args.conn.connect().await?;
    let reply = client
        .request(ClientToHub::AgentLabel(edit))
        .await
        .map_err(agent_error(&args.name))?;
    client.close().await;
    let HubToClient::AgentInfo(info) = reply else {
        anyhow::bail!("unexpected reply from the hub");
    };
    if json {
        return output::print_json(&info.agent);
    }
    output::print(&format!("{}\n", labels(&info.agent.labels)))
}

fn agent_table(agents: &[AgentInfo], now_ms: u64) -> String {
    let headers = [
        "NAME",
        "STATUS",
        "LAST SEEN",
        "HOSTNAME",
        "OS/ARCH",
        "VERSION",
        "LABELS",
    ];
    let mut table = Table::new(&headers);
    for agent in agents {
        table.push(vec![
            agent.name.to_string(),
            status(agent.status).to_owned(),
            output::or_dash(agent.last_seen_ms.map(|ms| output::ago(now_ms, ms))),
            output::or_dash(agent.hostname.as_deref()),
            os_arch(agent),
            output::or_dash(agent.version.as_deref()),
            labels(&agent.labels),
        ]);
    }
    table.render()
}

fn agent_fields(agent: &AgentInfo, now_ms: u64) -> String {
    let time = |ms: Option<u64>| output::or_dash(ms.map(|ms| output::timestamp(now_ms, ms)));
    let mut fields = vec![
        ("name", agent.name.to_string()),
        ("status", status(agent.status).to_owned()),
        ("last_seen", time(agent.last_seen_ms)),
        ("connected_since", time(agent.connected_since_ms)),
        ("hub", output::or_dash(agent.hub_id.as_deref())),
        ("hostname", output::or_dash(agent.hostname.as_deref())),
        ("os/arch", os_arch(agent)),
        ("version", output::or_dash(agent.version.as_deref())),
        ("labels", labels(&agent.labels)),
        ("max_concurrency", output::or_dash(agent.max_concurrency)),
        ("running", agent.running.to_string()),
        ("queued", agent.queued.to_string()),
    ];
    if agent.exec == ExecMode::ActionsOnly {
        fields.push(("exec", "actions-only (raw commands are refused)".to_owned()));
    }
    let declared = agent.actions.len();
    fields.push((
        "actions",
        output::or_dash((declared > 0).then_some(declared)),
    ));
    output::fields(&fields)
}

/// The declared actions, each with its parameters and their rules, below
/// the `actions:` count:
///
/// ```text
///   create_site  Create a site
///     domain  hostname, required
///     cache   bool, default false
/// ```
fn actions(actions: &[ActionInfo]) -> String {
    let mut text = String::new();
    let width = actions.iter().map(|a| a.name.len()).max().unwrap_or(0);
    for action in actions {
        let about = action.description.as_deref().unwrap_or("");
        let line = format!("  {:<width$}  {about}", action.name);
        text.push_str(line.trim_end());
        text.push('\n');
        let width = action
            .params
            .iter()
            .map(|p| p.name.len())
            .max()
            .unwrap_or(0);
        for param in &action.params {
            text.push_str(&format!(
                "    {:<width$}  {}\n",
                param.name,
                param_rule(param)
            ));
        }
    }
    text
}

/// A parameter's rule in a few words: `hostname, required`, `bool, default
/// false — enable the cache`.
fn param_rule(param: &ParamInfo) -> String {
    let mut rule = param.kind.describe();
    match (&param.default, param.required) {
        (Some(default), _) => rule.push_str(&format!(", default {default}")),
        (None, true) => rule.push_str(", required"),
        (None, false) => rule.push_str(", optional"),
    }
    if let Some(about) = &param.description {
        rule.push_str(&format!(" — {about}"));
    }
    rule
}

/// An agent's status as the tables print it.
pub(crate) fn status(status: AgentStatus) -> &'static str {
    match status {
        AgentStatus::Online => "online",
        AgentStatus::Stale => "stale",
        AgentStatus::Offline => "offline",
    }
}

fn os_arch(agent: &AgentInfo) -> String {
    match (&agent.os, &agent.arch) {
        (None, None) => "-".to_owned(),
        (os, arch) => format!(
            "{}/{}",
            os.as_deref().unwrap_or("?"),
            arch.as_deref().unwrap_or("?")
        ),
    }
}

fn labels(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "-".to_owned();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(name: &str) -> AgentInfo {
        AgentInfo {
            name: AgentName::new(name).unwrap(),
            status: AgentStatus::Online,
            labels: BTreeMap::from([("role".into(), "web".into()), ("env".into(), "prod".into())]),
            hostname: Some("host-1".into()),
            os: Some("linux".into()),
            arch: Some("x86_64".into()),
            version: Some("0.1.0".into()),
            last_seen_ms: Some(7_000),
            connected_since_ms: None,
            max_concurrency: Some(4),
            hub_id: None,
            exec: Default::default(),
            actions: Vec::new(),
            running: 0,
            queued: 0,
        }
    }

    #[test]
    fn agent_table_has_one_row_per_agent() {
        let text = agent_table(&[agent("web-1")], 10_000);
        let mut lines = text.lines();
        assert!(
            lines
                .next()
                .unwrap()
                .starts_with("NAME   STATUS  LAST SEEN  HOSTNAME")
        );
        let row = lines.next().unwrap();
        for cell in [
            "web-1",
            "online",
            "3s ago",
            "host-1",
            "linux/x86_64",
            "0.1.0",
            "env=prod,role=web",
        ] {
            assert!(row.contains(cell), "{row:?} lacks {cell}");
        }
    }

    #[test]
    fn show_lists_the_exec_mode_and_each_action_with_its_rules() {
        let mut web = agent("web-1");
        let no_actions = agent_fields(&web, 10_000);
        assert!(
            no_actions.ends_with("actions:          -\n"),
            "{no_actions}"
        );
        assert!(!no_actions.contains("exec:"), "{no_actions}");
        web.exec = ExecMode::ActionsOnly;
        web.actions = serde_json::from_value(serde_json::json!([
            {"name": "create_site", "description": "Create a site", "params": [
                {"name": "domain", "type": "hostname", "required": true},
                {"name": "workers", "type": "int", "min": 1, "max": 8, "required": false,
                 "default": "2", "description": "PHP workers"},
            ]},
            {"name": "restart", "params": []},
        ]))
        .unwrap();
        let fields = agent_fields(&web, 10_000);
        assert!(
            fields.contains("exec:             actions-only"),
            "{fields}"
        );
        assert!(fields.ends_with("actions:          2\n"), "{fields}");
        assert_eq!(
            actions(&web.actions),
            "  create_site  Create a site\n\
             \x20   domain   hostname, required\n\
             \x20   workers  int 1..=8, default 2 — PHP workers\n\
             \x20 restart\n"
        );
    }

    #[test]
    fn missing_details_show_as_dashes() {
        let mut bare = agent("db");
        bare.os = None;
        bare.arch = None;
        bare.labels.clear();
        assert_eq!(os_arch(&bare), "-");
        assert_eq!(labels(&bare.labels), "-");
    }
}
