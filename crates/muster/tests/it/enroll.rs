//! Enrolling agents: an admin mints an enrollment token, an agent started
//! with it registers itself with the token's labels, keeps the credential it
//! gets in its state dir and comes back with it; a token that is used up,
//! expired, revoked or unknown enrolls nobody, and a taken name spends no use.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::fixture::{Captured, Cli, Server, muster_bin, path_in, tempdir};

/// `muster agent` against `hub` as `name` with its state in `state`, and
/// no token from the environment the tests run in.
fn agent_command(hub: &str, name: &str, state: &Path) -> Command {
    let mut cmd = Command::new(muster_bin());
    cmd.env_remove("MUSTER_AGENT_TOKEN")
        .env_remove("MUSTER_AGENT_TOKEN_FILE")
        .env_remove("MUSTER_ENROLL_TOKEN")
        .args([
            "agent",
            "--hub",
            hub,
            "--name",
            name,
            "--metrics-interval",
            "0",
        ])
        .arg("--state-dir")
        .arg(state)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    cmd
}

/// Runs an agent that must be refused: it exits by itself, non-zero, with
/// one `muster:` line on stderr, which is returned.
fn refused(cmd: Command, what: &str) -> String {
    let out: Output = Captured::spawn(cmd).finish(what);
    assert!(!out.status.success(), "{what}: {out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<_> = stderr
        .lines()
        .filter(|l| l.starts_with("muster: "))
        .collect();
    assert_eq!(errors.len(), 1, "{what}: {stderr}");
    errors[0].to_owned()
}

/// Mints an enrollment token with `args`; returns its record, token included.
fn create(cli: &Cli, args: &[&str]) -> Value {
    let mut all = vec!["enroll", "create", "--json"];
    all.extend_from_slice(args);
    let created = cli.json(&all);
    assert!(
        created["token"].as_str().unwrap().starts_with("mse_"),
        "{created}"
    );
    created
}

/// The enrollment with `id` as `muster enroll list` shows it, if listed.
fn listed(cli: &Cli, id: &Value) -> Option<Value> {
    let list = cli.json(&["enroll", "list", "--json"]);
    assert!(
        !list.to_string().contains("mse_"),
        "a listing shows no token"
    );
    list.as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == *id)
        .cloned()
}

/// Whether `name` is registered.
fn registered(cli: &Cli, name: &str) -> bool {
    let agents = cli.json(&["agents", "list", "--json"]);
    agents.as_array().unwrap().iter().any(|a| a["name"] == name)
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn an_enrolled_agent_keeps_its_credential_and_its_used_token_enrolls_no_other() {
    let dir = tempdir();
    let hub = Server::hub(&path_in(&dir, "hub"), true);
    let cli = hub.cli(hub.token.as_deref().unwrap());
    let created = create(&cli, &["--uses", "1", "--label", "env=staging"]);
    let token = created["token"].as_str().unwrap().to_owned();
    assert_eq!(created["uses_left"], 1);

    let state = path_in(&dir, "state");
    let mut first = agent_command(&hub.hub, "web-1", &state);
    first.args(["--enroll", &token]).stderr(Stdio::inherit());
    let agent = Server::adopt(first.spawn().unwrap(), &hub.hub);
    cli.wait_agent("web-1", "online");
    let shown = cli.json(&["agents", "show", "web-1", "--json"]);
    assert_eq!(shown["labels"]["env"], "staging", "{shown}");
    assert_eq!(listed(&cli, &created["id"]).unwrap()["uses_left"], 0);
    let credential_file = state.join(muster_agent::CREDENTIAL_FILE);
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&credential_file), 0o600);
    let credential = std::fs::read_to_string(&credential_file).unwrap();
    assert!(credential.starts_with("mst_"), "an agent token is stored");
    assert!(
        !credential.contains(&token[17..]),
        "the enrollment token is not stored"
    );
    let out = cli.output(&["run", "web-1", "--", "echo", "enrolled"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "enrolled\n",
        "{out:?}"
    );

    // Killed, and started with no token at all: its credential brings it back.
    drop(agent);
    cli.wait_agent("web-1", "offline");
    let mut bare = agent_command(&hub.hub, "web-1", &state);
    bare.stderr(Stdio::inherit());
    let agent = Server::adopt(bare.spawn().unwrap(), &hub.hub);
    cli.wait_agent("web-1", "online");

    // Killed, and started with the spent enrollment token: the stored
    // credential wins, and says so without showing a token.
    drop(agent);
    cli.wait_agent("web-1", "offline");
    let log = path_in(&dir, "again.log");
    let mut again = agent_command(&hub.hub, "web-1", &state);
    again
        .env("MUSTER_ENROLL_TOKEN", &token)
        .stderr(std::fs::File::create(&log).unwrap());
    let agent = Server::adopt(again.spawn().unwrap(), &hub.hub);
    cli.wait_agent("web-1", "online");
    let out = cli.output(&["run", "web-1", "--", "echo", "again"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "again\n", "{out:?}");
    drop(agent);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("a credential is stored; ignoring the enrollment token"),
        "{logged}"
    );
    assert!(!logged.contains(&token[17..]) && !logged.contains(&credential[17..]));

    // Another agent with the used-up token is refused for good, and not registered.
    let other = path_in(&dir, "other-state");
    let mut second = agent_command(&hub.hub, "web-2", &other);
    second.env("MUSTER_ENROLL_TOKEN", &token);
    let error = refused(second, "a second agent on a one-use token");
    assert!(
        error.contains("used up") && error.contains("AUTH_FAILED"),
        "{error}"
    );
    assert!(!registered(&cli, "web-2"));
    assert!(!other.join(muster_agent::CREDENTIAL_FILE).exists());
}

#[test]
fn expired_revoked_and_unknown_tokens_enroll_nobody_and_a_taken_name_spends_no_use() {
    let dir = tempdir();
    let hub = Server::hub(&path_in(&dir, "hub"), true);
    let cli = hub.cli(hub.token.as_deref().unwrap());
    let try_enroll = |token: &str, name: &str| {
        let mut cmd = agent_command(&hub.hub, name, &path_in(&dir, name));
        cmd.args(["--enroll", token]);
        cmd
    };

    let expired = create(&cli, &["--expires", "1ms"]);
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    // It expires a millisecond after it was made: by the time an agent
    // process has started to use it, that is past. (It may still be this
    // very millisecond now.)
    assert!(expired["expires_ms"].as_u64().unwrap() <= now_ms + 1);
    let listing = listed(&cli, &expired["id"]).unwrap();
    assert_eq!(listing["uses_left"], 1, "{listing}");
    let error = refused(
        try_enroll(expired["token"].as_str().unwrap(), "late"),
        "an expired token",
    );
    assert!(error.contains("expired"), "{error}");

    let revoked = create(&cli, &[]);
    let id = revoked["id"].as_str().unwrap();
    assert!(cli.output(&["enroll", "revoke", id]).status.success());
    assert!(listed(&cli, &revoked["id"]).is_none());
    let error = refused(
        try_enroll(revoked["token"].as_str().unwrap(), "revoked"),
        "a revoked token",
    );
    assert!(error.contains("AUTH_FAILED"), "{error}");
    let out = cli.output(&["enroll", "revoke", id]);
    assert_eq!(out.status.code(), Some(255));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no enrollment token with id"),
        "{out:?}"
    );

    let made_up = "mse_aaaaaaaaaaaa_not-a-real-secret-at-all-not-a-real-secret-a";
    let error = refused(try_enroll(made_up, "nobody"), "an unknown token");
    assert!(error.contains("AUTH_FAILED"), "{error}");

    // A taken name is refused and the use is kept for the next agent.
    cli.json(&["agents", "add", "web-1", "--json"]);
    let once = create(&cli, &["--uses", "1", "--label", "tier=1"]);
    let token = once["token"].as_str().unwrap();
    let error = refused(try_enroll(token, "web-1"), "a taken name");
    assert!(error.contains("CONFLICT"), "{error}");
    assert_eq!(listed(&cli, &once["id"]).unwrap()["uses_left"], 1);
    let mut fresh = try_enroll(token, "web-3");
    fresh.stderr(Stdio::inherit());
    let _agent = Server::adopt(fresh.spawn().unwrap(), &hub.hub);
    cli.wait_agent("web-3", "online");
    assert_eq!(listed(&cli, &once["id"]).unwrap()["uses_left"], 0);
    for name in ["late", "revoked", "nobody"] {
        assert!(!registered(&cli, name), "{name} was registered");
    }
}
