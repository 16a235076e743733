//! Fault tests on the output path: hub kill -9 and restarts, cut connections.
//!
//! Each test runs a paced `seq 1 20000`, written in `sh`, on a real agent
//! while something breaks between the processes, then checks the delivery
//! promise: the stored (and the followed) output is byte-exact with each byte
//! once, the run reaches `completed`, and the command ran exactly once (it
//! appends one line to a marker file per execution).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use muster_testkit::Proxy;
use nix::sys::signal::{Signal, kill};
use serde_json::Value;

use crate::fixture::{Captured, Cli, Server, path_in, tempdir};
/// Lines the paced command prints.
const LINES: u32 = 20_000;
/// How often the proxy cuts every connection through it.
const CUT_PERIOD: Duration = Duration::from_millis(300);
/// Terminal run states.
const TERMINAL: &[&str] = &[
    "completed",
    "failed",
    "timed_out",
    "cancelled",
    "expired",
    "lost",
];

/// Exactly what `seq 1 20000` prints.
fn expected() -> String {
    (1..=LINES).map(|i| format!("{i}\n")).collect()
}

/// Appends a line to `mark`, then prints `seq 1 20000`, pausing `pause`
/// seconds after every thousand lines.
fn paced_script(mark: &Path, pause: &str) -> String {
    format!(
        "echo x >> '{}'; i=1; while [ $i -le {LINES} ]; do echo $i; \
         if [ $((i % 1000)) -eq 0 ]; then sleep {pause}; fi; i=$((i+1)); done",
        mark.display()
    )
}

/// The socket address of a hub's `MUSTER_HUB=http://ADDR`.
fn addr_of(hub: &Server) -> SocketAddr {
    hub.hub
        .strip_prefix("http://")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("unexpected hub url {}", hub.hub))
}

/// Registers agent `name` and returns its token.
fn add_agent(cli: &Cli, name: &str) -> String {
    let added = cli.json(&["agents", "add", name, "--json"]);
    added["token"].as_str().expect("agent token").to_owned()
}

/// `muster run --detach` of a shell script; returns the run id.
fn start_detached(cli: &Cli, agent: &str, script: &str) -> String {
    let out = cli.output(&["run", agent, "--detach", "--", "sh", "-c", script]);
    assert!(
        out.status.success(),
        "run --detach failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn output_bytes(run: &Value) -> u64 {
    run["output_bytes"].as_u64().unwrap_or(0)
}

fn terminal(run: &Value) -> bool {
    run["state"].as_str().is_some_and(|s| TERMINAL.contains(&s))
}

/// Polls `runs show ID --json` until `pred` holds.
fn wait_show(cli: &Cli, id: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    cli.wait_shown("runs", id, what, pred)
}

/// Lines in the marker file: how many times the command started.
fn mark_lines(mark: &Path) -> usize {
    std::fs::read_to_string(mark)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// Panics with the first difference when `actual` is not `expected`.
fn assert_same(actual: &[u8], expected: &str, what: &str) {
    let expected = expected.as_bytes();
    if actual == expected {
        return;
    }
    let at = actual
        .iter()
        .zip(expected)
        .take_while(|(a, b)| a == b)
        .count();
    let around = |b: &[u8]| {
        String::from_utf8_lossy(&b[at.saturating_sub(24).min(b.len())..(at + 24).min(b.len())])
            .into_owned()
    };
    panic!(
        "{what}: {} bytes, expected {}; first difference at byte {at}: got {:?}, expected {:?}",
        actual.len(),
        expected.len(),
        around(actual),
        around(expected)
    );
}

/// Checks a finished run: completed with 0, output exact, executed once.
fn assert_delivered_once(cli: &Cli, id: &str, mark: &Path) {
    let done = wait_show(cli, id, "the run to end", terminal);
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(done["exit_code"], 0, "{done}");
    let out = cli.output(&["runs", "output", id]);
    assert!(
        out.status.success(),
        "runs output failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_same(&out.stdout, &expected(), "stored output");
    assert!(
        out.stderr.is_empty(),
        "unexpected stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mark_lines(mark), 1, "the command did not run exactly once");
}

#[test]
fn hub_killed_twice_mid_stream_loses_nothing_and_runs_once() {
    let dir = tempdir();
    let data = path_in(&dir, "hub");
    let mut hub = Server::hub(&data, true);
    let proxy = Proxy::start(addr_of(&hub));
    // Everyone dials the proxy, which follows the hub to its new port.
    let cli = Cli {
        hub: proxy.url(),
        token: hub.token.clone().expect("first start prints a token"),
    };
    let token = add_agent(&cli, "streamer");
    let _agent = Server::agent(
        &proxy.url(),
        &token,
        "streamer",
        &path_in(&dir, "agent"),
        &[],
    );
    cli.wait_agent("streamer", "online");

    let mark = path_in(&dir, "mark");
    let id = start_detached(&cli, "streamer", &paced_script(&mark, "0.3"));
    let mut seen = wait_show(&cli, &id, "output flowing", |r| {
        r["state"] == "running" && output_bytes(r) > 0
    });
    // A follower rides through both restarts too. It must be connected before
    // the first kill: a failed first connection is reported, not retried.
    let mut follow = Captured::spawn(cli.command(&["runs", "output", &id, "--follow"]));
    follow.wait_for_stdout("the follower");
    let total = expected().len() as u64;
    for round in 1..=2 {
        assert!(
            seen["state"] == "running" && output_bytes(&seen) < total,
            "round {round}: the run is no longer mid-stream: {seen}"
        );
        kill(hub.pid(), Signal::SIGKILL).expect("kill the hub");
        drop(hub);
        hub = Server::hub(&data, false);
        proxy.set_upstream(addr_of(&hub));
        if round == 1 {
            let before = output_bytes(&seen);
            seen = wait_show(&cli, &id, "progress after the first restart", |r| {
                r["state"] == "running" && output_bytes(r) > before
            });
        }
    }
    assert_delivered_once(&cli, &id, &mark);
    let followed = follow.finish("runs output --follow");
    let stderr = String::from_utf8_lossy(&followed.stderr);
    assert_eq!(followed.status.code(), Some(0), "follower: {stderr}");
    assert_same(&followed.stdout, &expected(), "followed output");
}

#[test]
fn agent_link_cut_every_300ms_delivers_everything_once() {
    let dir = tempdir();
    let hub = Server::hub(&path_in(&dir, "hub"), true);
    let cli = hub.cli(hub.token.as_deref().expect("token"));
    let token = add_agent(&cli, "flappy");
    let proxy = Proxy::start(addr_of(&hub));
    let _agent = Server::agent(&proxy.url(), &token, "flappy", &path_in(&dir, "agent"), &[]);
    cli.wait_agent("flappy", "online");

    let mark = path_in(&dir, "mark");
    let id = start_detached(&cli, "flappy", &paced_script(&mark, "0.25"));
    let seen = wait_show(&cli, &id, "output flowing", |r| {
        r["state"] == "running" && output_bytes(r) > 0
    });
    let cutter = proxy.cut_every(CUT_PERIOD);
    assert!(
        output_bytes(&seen) < expected().len() as u64,
        "the run ended before the cuts began: {seen}"
    );
    wait_show(&cli, &id, "the run to end under cuts", terminal);
    drop(cutter);
    assert_delivered_once(&cli, &id, &mark);
}

#[test]
fn client_link_cut_while_following_prints_each_byte_once() {
    let dir = tempdir();
    let hub = Server::hub(&path_in(&dir, "hub"), true);
    let admin = hub.token.clone().expect("token");
    let cli = hub.cli(&admin);
    let token = add_agent(&cli, "steady");
    let _agent = Server::agent(&hub.hub, &token, "steady", &path_in(&dir, "agent"), &[]);
    cli.wait_agent("steady", "online");

    let proxy = Proxy::start(addr_of(&hub));
    let flaky = Cli {
        hub: proxy.url(),
        token: admin,
    };
    let mark = path_in(&dir, "mark");
    let script = paced_script(&mark, "0.25");
    // `muster run` creates the run and follows it ...
    let mut run = Captured::spawn(flaky.command(&["run", "steady", "--", "sh", "-c", &script]));
    let started = cli.wait_run("the run streaming", |r| {
        r["state"] == "running" && output_bytes(r) > 0
    });
    run.wait_for_stdout("muster run");
    let id = started["id"].as_str().expect("run id").to_owned();
    // ... and `runs output --follow` joins mid-stream: replay, then live.
    let mut follow = Captured::spawn(flaky.command(&["runs", "output", &id, "--follow"]));
    follow.wait_for_stdout("runs output --follow");
    // Both are connected (a failed first connection is reported, not retried);
    // from now on their links are cut every 300 ms until they exit.
    let cutter = proxy.cut_every(CUT_PERIOD);
    assert!(
        run.stdout_len() < expected().len(),
        "the run ended before the cuts began"
    );
    let ran = run.finish("muster run");
    let followed = follow.finish("muster runs output --follow");
    drop(cutter);

    for (what, out) in [("muster run", &ran), ("runs output --follow", &followed)] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{what}: {stderr}");
        assert_same(&out.stdout, &expected(), what);
    }
    assert_delivered_once(&cli, &id, &mark);
}
