//! Rotating an agent's token over its connection: the agent keeps the new
//! one in its state dir and comes back with it, the old one fails, and a
//! restart with the old token on the command line still gets in.

use std::os::unix::fs::PermissionsExt as _;
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::fixture::{Server, muster_bin, path_in, tempdir};

#[test]
fn a_rotated_token_is_stored_by_the_agent_and_the_old_one_stops_working() {
    let dir = tempdir();
    let hub = Server::hub(&path_in(&dir, "hub"), true);
    let cli = hub.cli(hub.token.as_deref().unwrap());
    let added = cli.json(&["agents", "add", "web-1", "--json"]);
    let old = added["token"].as_str().unwrap().to_owned();
    let token_file = path_in(&dir, "token");
    std::fs::write(&token_file, format!("{old}\n")).unwrap();
    let state = path_in(&dir, "state");
    let start_agent = || {
        let child = Command::new(muster_bin())
            .env_remove("MUSTER_AGENT_TOKEN")
            .args([
                "agent",
                "--hub",
                &hub.hub,
                "--name",
                "web-1",
                "--token-file",
            ])
            .arg(&token_file)
            .arg("--state-dir")
            .arg(&state)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn muster agent");
        Server::adopt(child, &hub.hub)
    };
    let agent = start_agent();
    cli.wait_agent("web-1", "online");

    let started = Instant::now();
    let out = cli.output(&["agents", "rotate-token", "web-1"]);
    let took = started.elapsed();
    assert!(out.status.success(), "{out:?}");
    eprintln!("rotation: answered after {took:?}");
    let stored = std::fs::read_to_string(state.join(muster_agent::CREDENTIAL_FILE)).unwrap();
    assert_ne!(stored.trim(), old);
    assert!(stored.starts_with("mst_"));
    let mode = std::fs::metadata(state.join(muster_agent::CREDENTIAL_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // It comes back with the new token and runs commands.
    cli.wait_agent("web-1", "online");
    let out = cli.output(&["run", "web-1", "--", "echo", "rotated"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "rotated\n", "{out:?}");

    // The old token is refused: an agent holding it stops at once.
    let refused = Command::new(muster_bin())
        .args([
            "agent",
            "--hub",
            &hub.hub,
            "--name",
            "web-1",
            "--token",
            &old,
            "--state-dir",
        ])
        .arg(path_in(&dir, "other-state"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("AUTH_FAILED") || stderr.contains("rejected"),
        "{stderr}"
    );

    // Restarted with the old token in its file, it uses the stored one.
    let _ = agent.stop();
    cli.wait_agent("web-1", "offline");
    let _agent = start_agent();
    cli.wait_agent("web-1", "online");
    let out = cli.output(&["run", "web-1", "--", "echo", "again"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "again\n", "{out:?}");

    // An agent that is not connected cannot be rotated.
    cli.json(&["agents", "add", "web-2", "--json"]);
    let out = cli.output(&["agents", "rotate-token", "web-2"]);
    assert_eq!(out.status.code(), Some(255));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("offline"),
        "{out:?}"
    );
}
