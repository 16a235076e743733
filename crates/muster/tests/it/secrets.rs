//! No token appears in any log, at any level: a hub, an agent and a client,
//! all at `trace`, print none of the tokens the hub minted: API keys, agent
//! tokens, enrollment tokens and the credentials enrollments yield.

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

    // An enrollment token, minted by a client at trace, and an agent at
    // trace that enrolls with it.
    let created = cli
        .command(&["enroll", "create", "--json"])
        .env("MUSTER_LOG", "trace")
        .output()
        .unwrap();
    assert!(created.status.success(), "{created:?}");
    let enrollment: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
    let enroll_token = enrollment["token"]
        .as_str()
        .expect("enrollment token")
        .to_owned();
    let enrolled_log = path_in(&dir, "enrolled.log");
    let enrolled_state = path_in(&dir, "enrolled-state");
    let enrolled = Command::new(muster_bin())
        .env("MUSTER_LOG", "trace")
        .env_remove("MUSTER_AGENT_TOKEN")
        .env("MUSTER_ENROLL_TOKEN", &enroll_token)
        .args(["agent", "--hub", &hub.hub, "--name", "web-2", "--state-dir"])
        .arg(&enrolled_state)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(path_in(&dir, "enrolled.out")).unwrap())
        .stderr(std::fs::File::create(&enrolled_log).unwrap())
        .spawn()
        .expect("spawn muster agent");
    let enrolled = Server::adopt(enrolled, &hub.hub);
    cli.wait_agent("web-2", "online");
    let credential =
        std::fs::read_to_string(enrolled_state.join(muster_agent::CREDENTIAL_FILE)).unwrap();

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
    enrolled.stop();
    hub.stop();

    let logs = [
        ("hub", std::fs::read_to_string(&hub_log).unwrap()),
        ("agent", std::fs::read_to_string(&agent_log).unwrap()),
        ("client", String::from_utf8_lossy(&out.stderr).into_owned()),
        (
            "enrolled agent",
            std::fs::read_to_string(&enrolled_log).unwrap(),
        ),
        (
            "enrolling client",
            String::from_utf8_lossy(&created.stderr).into_owned(),
        ),
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
        for token in [&admin, &agent_token, &wrong, &enroll_token, &credential] {
            // The secret half (characters 17 on) must never show; the key id may.
            let secret = &token[17..];
            assert!(
                !log.contains(secret),
                "the {name} log holds a token:\n{log}"
            );
        }
    }
}
