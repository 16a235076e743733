//! End-to-end tests of the `muster` binary: real hubs, real agents, real
//! processes, driven through the CLI exactly as an operator would.

mod actions;
mod audit;
mod enroll;
mod execute;
mod fault_agents;
mod fault_jobs;
mod fault_sessions;
mod fault_streams;
mod files;
mod fixture;
mod fleet;
mod hostile_hello;
mod jobs;
mod lockout;
mod rotation;
mod run_env;
mod secrets;
mod sessions;
mod slow_client;
mod tls;

use std::io::Read as _;
use std::time::{Duration, Instant};

use fixture::{Server, alive, group_alive, path_in, tempdir};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sha2::{Digest as _, Sha256};

#[test]
fn dev_runs_a_command_with_separate_streams_and_exit_code() {
    let dir = tempdir();
    let dev = Server::dev(dir.path());
    let cli = dev.cli(dev.token.as_deref().unwrap());

    let agents = cli.json(&["agents", "list", "--json"]);
    let local = agents
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "local")
        .expect("local listed");
    assert_eq!(local["status"], "online");

    let out = cli.output(&[
        "run",
        "local",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");

    let table = cli.output(&["agents", "list"]);
    assert!(String::from_utf8_lossy(&table.stdout).contains("local"));

    // Labels: set one, see it, remove it.
    assert!(
        cli.output(&["agents", "label", "local", "team=ops"])
            .status
            .success()
    );
    let shown = cli.json(&["agents", "show", "local", "--json"]);
    assert_eq!(shown["labels"]["team"], "ops");
    assert!(shown["hub_id"].is_string());
    assert!(
        cli.output(&["agents", "label", "local", "team-"])
            .status
            .success()
    );
    let shown = cli.json(&["agents", "show", "local", "--json"]);
    assert!(shown["labels"].get("team").is_none(), "{shown}");
    assert_eq!(
        cli.output(&["agents", "label", "local", "bad key=1"])
            .status
            .code(),
        Some(255)
    );
}

#[test]
fn five_mebibytes_of_random_bytes_come_back_identical() {
    let dir = tempdir();
    let dev = Server::dev(&path_in(&dir, "data"));
    let cli = dev.cli(dev.token.as_deref().unwrap());
    let file = path_in(&dir, "random.bin");
    let mut bytes = vec![0u8; 5 * 1024 * 1024];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut bytes)
        .unwrap();
    std::fs::write(&file, &bytes).unwrap();

    let out = cli.output(&["run", "local", "--", "cat", file.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout.len(), bytes.len());
    assert_eq!(Sha256::digest(&out.stdout), Sha256::digest(&bytes));

    // The stored copy is byte-exact too.
    let run = cli.wait_run("the cat run", |r| r["state"] == "completed");
    let stored = cli.output(&["runs", "output", run["id"].as_str().unwrap()]);
    assert_eq!(Sha256::digest(&stored.stdout), Sha256::digest(&bytes));
}

#[test]
fn ctrl_c_cancels_the_remote_command() {
    let dir = tempdir();
    let dev = Server::dev(dir.path());
    let cli = dev.cli(dev.token.as_deref().unwrap());
    let mut child = cli
        .command(&["run", "local", "--", "sleep", "300"])
        .spawn()
        .unwrap();
    let run = cli.wait_run("sleep running", |r| r["state"] == "running");
    let pid = run["pid"].as_i64().expect("pid reported") as i32;
    assert!(alive(pid));

    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let id = run["id"].as_str().unwrap();
    let shown = cli.json(&["runs", "show", id, "--json"]);
    assert_eq!(shown["state"], "cancelled");
    assert!(!alive(pid), "remote sleep survived the cancel");
    assert!(
        !group_alive(pid),
        "a process of the cancelled group survived"
    );
}

#[test]
fn timeout_kills_the_command_and_exits_124() {
    let dir = tempdir();
    let dev = Server::dev(dir.path());
    let cli = dev.cli(dev.token.as_deref().unwrap());
    let started = Instant::now();
    let out = cli.output(&[
        "run",
        "local",
        "--timeout",
        "1s",
        "--",
        "sh",
        "-c",
        "sleep 30 & sleep 30",
    ]);
    assert_eq!(
        out.status.code(),
        Some(124),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    let run = cli.wait_run("timed out run", |r| r["state"] == "timed_out");
    let pid = run["pid"].as_i64().unwrap() as i32;
    assert!(
        !alive(-pid),
        "a process of the timed-out group is still alive"
    );
}

#[test]
fn unknown_agent_and_bad_token_fail_fast_with_one_line() {
    let dir = tempdir();
    let dev = Server::dev(dir.path());
    let cli = dev.cli(dev.token.as_deref().unwrap());

    let out = cli.output(&["run", "nosuch", "--", "true"]);
    assert_eq!(out.status.code(), Some(255));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("nosuch"), "{stderr}");

    let bad = dev.cli("mst_aaaaaaaaaaaa_not-a-real-secret");
    let started = Instant::now();
    let out = bad.output(&["agents", "list"]);
    assert_eq!(out.status.code(), Some(255));
    let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(stderr.contains("auth"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(10));

    let unreachable = fixture::Cli {
        hub: "http://127.0.0.1:9".into(),
        token: "x".into(),
    };
    let out = unreachable.output(&["run", "local", "--", "true"]);
    assert_eq!(out.status.code(), Some(255));
}

#[test]
fn separate_hub_and_agent_keep_history_across_a_hub_restart() {
    let dir = tempdir();
    let data = path_in(&dir, "hub");
    let hub = Server::hub(&data, true);
    let token = hub.token.clone().expect("first start prints a token");
    let cli = hub.cli(&token);

    let added = cli.json(&["agents", "add", "web-1", "--label", "role=web", "--json"]);
    assert_eq!(added["name"], "web-1");
    let agent_token = added["token"].as_str().unwrap().to_owned();
    let agent = Server::agent(
        &hub.hub,
        &agent_token,
        "web-1",
        &path_in(&dir, "agent"),
        &[],
    );
    cli.wait_agent("web-1", "online");
    let shown = cli.json(&["agents", "show", "web-1", "--json"]);
    assert_eq!(shown["labels"]["role"], "web");

    let out = cli.output(&[
        "run",
        "web-1",
        "--",
        "sh",
        "-c",
        "echo hello; echo oops >&2",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let run = cli.wait_run("the echo run", |r| r["state"] == "completed");
    let id = run["id"].as_str().unwrap().to_owned();

    drop(agent);
    hub.stop();
    let hub = Server::hub(&data, false);
    assert!(hub.token.is_none(), "the admin token is printed only once");
    let cli = hub.cli(&token);
    let shown = cli.json(&["runs", "show", &id, "--json"]);
    assert_eq!(shown["state"], "completed");
    assert_eq!(shown["exit_code"], 0);
    let out = cli.output(&["runs", "output", &id]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");
}

#[test]
fn keys_have_roles_a_viewer_reads_and_an_operator_runs() {
    let dir = tempdir();
    let dev = Server::dev(dir.path());
    let admin = dev.cli(dev.token.as_deref().unwrap());
    let mint = |name: &str, role: &str| {
        let created = admin.json(&["keys", "create", name, "--role", role, "--json"]);
        assert_eq!(created["role"], role);
        created["token"].as_str().unwrap().to_owned()
    };
    let viewer = dev.cli(&mint("watcher", "viewer"));
    let operator = dev.cli(&mint("deployer", "operator"));

    assert!(viewer.output(&["agents", "list"]).status.success());
    for args in [
        &["run", "local", "--", "true"][..],
        &["agents", "add", "web-9"],
        &["keys", "list"],
    ] {
        let out = viewer.output(args);
        assert_eq!(out.status.code(), Some(255), "viewer {args:?}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("needs an"), "viewer {args:?}: {stderr}");
    }
    let out = operator.output(&["run", "local", "--", "echo", "ran"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ran\n");
    assert_eq!(
        operator.output(&["agents", "add", "web-9"]).status.code(),
        Some(255)
    );

    let keys = admin.json(&["keys", "list", "--json"]);
    let names: Vec<_> = keys
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].clone())
        .collect();
    assert!(
        names.contains(&"watcher".into()) && names.contains(&"deployer".into()),
        "{keys}"
    );
    assert!(
        !keys.to_string().contains("mst_"),
        "a listing shows no token: {keys}"
    );
    let out = admin.output(&["keys", "revoke", "watcher"]);
    assert!(out.status.success(), "{out:?}");
    let out = viewer.output(&["agents", "list"]);
    assert_eq!(out.status.code(), Some(255), "a revoked key still works");
}
