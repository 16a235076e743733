//! No token appears in any log, at any level: a hub, an agent and a client,
//! all at `trace`, print none of the tokens the hub minted.

use std::process::{Command, Stdio};

use crate::fixture::{Server, muster_bin, path_in, tempdir};

#[test]
fn no_minted_token_appears_in_any_log_at_trace() {
    let dir = tempdir();
    let hub_log = path_in(&dir, "hub.log");
    let hub = Server::hub_tracing_to(&path_in(&dir, "hub"), &hub_log);
    let admin = hub.token.clone().expect("first start prints a token");
    let cli = hub.cli(&admin);
    let added = cli.json(&["agents", "add", "web-1", "--json"]);
    let agent_token = added["token"].as_str().expect("agent token").to_owned();

    let agent_log = path_in(&dir, "agent.log");
    let agent = Command::new(muster_bin())
        .env("MUSTER_LOG", "trace")
        .env("MUSTER_AGENT_TOKEN", &agent_token)
        .args(["agent", "--hub", &hub.hub, "--name", "web-1", "--state-dir"])
        .arg(path_in(&dir, "state"))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(path_in(&dir, "agent.out")).unwrap())
        .stderr(std::fs::File::create(&agent_log).unwrap())
        .spawn()
        .expect("spawn muster agent");
    let agent = Server::adopt(agent, &hub.hub);
    cli.wait_agent("web-1", "online");

    let out = cli
        .command(&["run", "web-1", "--", "echo", "hello"])
        .env("MUSTER_LOG", "trace")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // A refused credential is logged too, and must not be either.
    let wrong = format!("{}x", &admin[..admin.len() - 1]);
    let refused = hub
        .cli(&wrong)
        .command(&["agents", "list"])
        .env("MUSTER_LOG", "trace")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    agent.stop();
    hub.stop();

    let logs = [
        ("hub", std::fs::read_to_string(&hub_log).unwrap()),
        ("agent", std::fs::read_to_string(&agent_log).unwrap()),
        ("client", String::from_utf8_lossy(&out.stderr).into_owned()),
        (
            "refused client",
            String::from_utf8_lossy(&refused.stderr).into_owned(),
        ),
    ];
    assert!(
        logs[0].1.lines().count() > 10 && logs[1].1.lines().count() > 3,
        "the logs are too short to mean anything: {logs:?}"
    );
    for (name, log) in &logs {
        for token in [&admin, &agent_token, &wrong] {
            // The secret half (characters 17 on) must never show; the key id may.
            let secret = &token[17..];
            assert!(
                !log.contains(secret),
                "the {name} log holds a token:\n{log}"
            );
        }
    }
}
