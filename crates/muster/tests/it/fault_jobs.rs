//! Fault test for jobs: the hub is killed with SIGKILL in the middle of a
//! rolling job and restarted on the same data dir; the job carries on from
//! where it was, every target runs its step exactly once, and the job ends
//! `succeeded` with one result per agent.

use std::net::SocketAddr;
use std::path::Path;

use muster_testkit::Proxy;
use nix::sys::signal::{Signal, kill};
use serde_json::Value;

use crate::fixture::{Cli, Server, path_in, tempdir};

/// Agents in the job.
const AGENTS: [&str; 3] = ["batch-1", "batch-2", "batch-3"];

fn addr_of(hub: &Server) -> SocketAddr {
    hub.hub
        .strip_prefix("http://")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("unexpected hub url {}", hub.hub))
}

/// Polls `jobs show ID --json` until `pred` holds.
fn wait_job(cli: &Cli, id: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    cli.wait_shown("jobs", id, what, pred)
}

fn count(job: &Value, field: &str) -> u64 {
    job["progress"][field].as_u64().unwrap_or(0)
}

/// Lines the step appended to `mark`: one per execution, naming the agent's
/// state dir (and so the agent).
fn executions(mark: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(mark).unwrap_or_default();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines.sort();
    lines
}

#[test]
fn a_job_survives_a_hub_kill_and_runs_each_step_once() {
    let dir = tempdir();
    let data = path_in(&dir, "hub");
    let mut hub = Server::hub(&data, true);
    let proxy = Proxy::start(addr_of(&hub));
    let cli = Cli {
        hub: proxy.url(),
        token: hub.token.clone().expect("first start prints a token"),
    };
    let mut agents = Vec::new();
    for name in AGENTS {
        let added = cli.json(&["agents", "add", name, "--label", "role=batch", "--json"]);
        let token = added["token"].as_str().expect("agent token").to_owned();
        let state = path_in(&dir, name);
        agents.push(Server::agent(&proxy.url(), &token, name, &state, &[]));
        cli.wait_agent(name, "online");
    }

    // Each execution appends the agent's socket path (inside its own state
    // dir) to the marker file, then takes long enough to be caught mid-way.
    let mark = path_in(&dir, "mark");
    let script = format!(
        "echo \"$MUSTER_AGENT_SOCKET\" >> '{}'; sleep 1",
        mark.display()
    );
    let out = cli.output(&[
        "run",
        "-l",
        "role=batch",
        "--batch",
        "1",
        "--detach",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert!(
        out.status.success(),
        "run -l --detach failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8(out.stdout).unwrap().trim().to_owned();

    let seen = wait_job(
        &cli,
        &id,
        "the first target done, the second running",
        |j| count(j, "succeeded") == 1 && count(j, "running") == 1,
    );
    assert_eq!(seen["state"], "running", "{seen}");
    kill(hub.pid(), Signal::SIGKILL).expect("kill the hub");
    drop(hub);
    hub = Server::hub(&data, false);
    proxy.set_upstream(addr_of(&hub));

    let done = wait_job(&cli, &id, "the job to end", |j| j["state"] != "running");
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(count(&done, "total"), 3);
    assert_eq!(count(&done, "succeeded"), 3);
    let targets = done["targets"].as_array().expect("targets");
    assert_eq!(targets.len(), 3);
    for target in targets {
        let steps = target["steps"].as_array().expect("steps");
        assert_eq!(steps.len(), 1, "{target}");
        assert_eq!(steps[0]["exit_code"], 0, "{target}");
    }
    // Exactly one execution per agent, despite the kill.
    let runs = executions(&mark);
    assert_eq!(runs.len(), 3, "{runs:?}");
    for (line, name) in runs.iter().zip(AGENTS) {
        assert!(line.contains(name), "{line} should be {name}'s");
    }
    drop(agents);
    drop(hub);
}
