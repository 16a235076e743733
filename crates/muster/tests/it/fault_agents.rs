//! Fault tests on agents: kill -9, SIGSTOP, offline agents and time to live,
//! and a client that stops reading.

use std::io::Read as _;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use crate::fixture::{Cli, Server, group_alive, path_in, tempdir};

/// Hub flags that make dead peers and lost runs show up within seconds.
const FAST: &[&str] = &[
    "--heartbeat-interval",
    "200ms",
    "--heartbeat-deadline",
    "1s",
    "--lost-grace",
    "1s",
];

/// A hub with fast fault detection and one registered agent, not started.
fn hub_with_agent(dir: &tempfile::TempDir, name: &str) -> (Server, Cli, String) {
    let hub = Server::hub_with(&path_in(dir, "hub"), true, FAST);
    let cli = hub.cli(hub.token.as_deref().unwrap());
    let added = cli.json(&["agents", "add", name, "--json"]);
    let token = added["token"].as_str().unwrap().to_owned();
    (hub, cli, token)
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

#[test]
fn agent_killed_mid_command_ends_lost_and_never_reruns_it() {
    let dir = tempdir();
    let (hub, cli, token) = hub_with_agent(&dir, "victim");
    let state = path_in(&dir, "agent-state");
    let agent = Server::agent(&hub.hub, &token, "victim", &state, &[]);
    cli.wait_agent("victim", "online");

    let mark = path_in(&dir, "mark");
    let script = format!("echo x >> {}; sleep 30", mark.display());
    assert!(
        cli.output(&["run", "victim", "--detach", "--", "sh", "-c", &script])
            .status
            .success()
    );
    let run = cli.wait_run("the run started", |r| r["state"] == "running");
    let pgid = run["pid"].as_i64().unwrap() as i32;

    let killed = Instant::now();
    kill(agent.pid(), Signal::SIGKILL).unwrap();
    let lost = cli.wait_run("the run lost", |r| {
        r["id"] == run["id"] && r["state"] == "lost"
    });
    // Detection is immediate (the socket closes), then the 1 s grace and the sweep.
    assert!(
        killed.elapsed() < Duration::from_secs(10),
        "lost after {:?}",
        killed.elapsed()
    );
    assert!(lost["error"].as_str().is_some(), "{lost}");
    let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);

    // The agent comes back with the same state dir: the run is not started again.
    let _agent = Server::agent(&hub.hub, &token, "victim", &state, &[]);
    cli.wait_agent("victim", "online");
    let out = cli.output(&["run", "victim", "--", "echo", "alive"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "alive\n");
    assert_eq!(lines(&mark), 1, "the killed run ran again");
    let shown = cli.json(&["runs", "show", run["id"].as_str().unwrap(), "--json"]);
    assert_eq!(shown["state"], "lost");
}

#[test]
fn a_run_for_an_offline_agent_waits_for_it_or_expires() {
    let dir = tempdir();
    let (hub, cli, token) = hub_with_agent(&dir, "sleeper");
    let done = path_in(&dir, "done");
    let script = format!("echo ran > {}", done.display());
    assert!(
        cli.output(&["run", "sleeper", "--detach", "--", "sh", "-c", &script])
            .status
            .success()
    );
    let waiting = cli.wait_run("queued run", |r| r["state"] == "queued");
    assert!(waiting["expires_ms"].as_u64().is_some());

    let out = cli.output(&["run", "sleeper", "--detach", "--ttl", "2s", "--", "true"]);
    assert!(out.status.success());
    let short_id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let expired = cli.wait_run("the short run expired", |r| {
        r["id"] == short_id && r["state"] == "expired"
    });
    assert!(expired["dispatched_ms"].is_null());

    let offline = cli.output(&["run", "sleeper", "--ttl", "0s", "--", "true"]);
    assert_eq!(
        offline.status.code(),
        Some(255),
        "ttl 0 refuses an offline agent"
    );

    let _agent = Server::agent(&hub.hub, &token, "sleeper", &path_in(&dir, "state"), &[]);
    cli.wait_run("the queued run completed", |r| {
        r["id"] == waiting["id"] && r["state"] == "completed"
    });
    assert_eq!(std::fs::read_to_string(&done).unwrap(), "ran\n");
}

#[test]
fn a_stopped_agent_goes_offline_its_run_is_lost_and_it_recovers() {
    let dir = tempdir();
    let (hub, cli, token) = hub_with_agent(&dir, "frozen");
    let agent = Server::agent(&hub.hub, &token, "frozen", &path_in(&dir, "state"), &[]);
    cli.wait_agent("frozen", "online");
    assert!(
        cli.output(&["run", "frozen", "--detach", "--", "sleep", "30"])
            .status
            .success()
    );
    let run = cli.wait_run("sleep running", |r| r["state"] == "running");
    let pgid = run["pid"].as_i64().unwrap() as i32;

    let stopped = Instant::now();
    kill(agent.pid(), Signal::SIGSTOP).unwrap();
    cli.wait_agent("frozen", "offline");
    cli.wait_run("the run lost", |r| {
        r["id"] == run["id"] && r["state"] == "lost"
    });
    // Deadline 1 s + grace 1 s + sweep; far less than the run's 30 s.
    assert!(
        stopped.elapsed() < Duration::from_secs(10),
        "took {:?}",
        stopped.elapsed()
    );

    kill(agent.pid(), Signal::SIGCONT).unwrap();
    cli.wait_agent("frozen", "online");
    // The hub tells the agent to stop the run it already declared lost.
    let deadline = Instant::now() + Duration::from_secs(20);
    while group_alive(pgid) {
        assert!(
            Instant::now() < deadline,
            "the lost run's process was never stopped"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = cli.output(&["run", "frozen", "--", "echo", "back"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "back\n",
        "the agent is not stuck"
    );
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: Pid) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_client_that_stops_reading_50_mb_stalls_nobody_and_holds_only_its_queue() {
    const TOTAL: usize = 50_000_000;
    let dir = tempdir();
    let (hub, cli, token) = hub_with_agent(&dir, "firehose");
    let _agent = Server::agent(&hub.hub, &token, "firehose", &path_in(&dir, "state"), &[]);
    cli.wait_agent("firehose", "online");

    // The slow client: subscribes to the run through a raw WebSocket and never reads.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (mut slow, run_id) = runtime.block_on(crate::slow_client::create_and_stall(
        &hub.hub,
        hub.token.as_deref().unwrap(),
        "firehose",
        &["head", "-c", &TOTAL.to_string(), "/dev/zero"],
    ));

    // A second client follows the same run to the end.
    let mut follower = cli
        .command(&["runs", "output", &run_id, "--follow"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = follower.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut count = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match stdout.read(&mut buf).unwrap() {
                0 => return count,
                n => count += n,
            }
        }
    });
    let mut peak_rss = 0;
    while follower.try_wait().unwrap().is_none() {
        peak_rss = peak_rss.max(rss_kib(hub.pid()));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(follower.wait().unwrap().success());
    assert_eq!(
        reader.join().unwrap(),
        TOTAL,
        "the reading client got every byte"
    );
    eprintln!("hub peak RSS while a client was stuck on a 50 MB stream: {peak_rss} KiB");
    assert!(peak_rss < 200 * 1024, "hub RSS grew to {peak_rss} KiB");

    // When it reads again it gets the rest in order: all of it, or, once
    // the hub has dropped it for taking nothing within the heartbeat
    // deadline, a part and the connection's end.
    let rest = runtime.block_on(crate::slow_client::read_rest(&mut slow));
    eprintln!(
        "the stuck client got {} bytes, finished: {}",
        rest.bytes, rest.finished
    );
    assert_eq!(rest.finished, rest.bytes == TOTAL);
    // It can come back for everything.
    let out = cli.output(&["runs", "output", &run_id]);
    assert_eq!(out.stdout.len(), TOTAL);
}

#[test]
fn queued_runs_survive_a_hub_kill() {
    let dir = tempdir();
    let data = path_in(&dir, "hub");
    let hub = Server::hub_with(&data, true, FAST);
    let admin = hub.token.clone().unwrap();
    let cli = hub.cli(&admin);
    let added = cli.json(&["agents", "add", "later", "--json"]);
    let token = added["token"].as_str().unwrap().to_owned();
    let done = path_in(&dir, "done");
    let script = format!("echo ran >> {}", done.display());
    assert!(
        cli.output(&["run", "later", "--detach", "--", "sh", "-c", &script])
            .status
            .success()
    );
    let queued = cli.wait_run("queued run", |r| r["state"] == "queued");

    kill(hub.pid(), Signal::SIGKILL).unwrap();
    drop(hub);
    let hub = Server::hub_with(&data, false, FAST);
    let cli = hub.cli(&admin);
    assert_eq!(
        cli.json(&["runs", "show", queued["id"].as_str().unwrap(), "--json"])["state"],
        "queued"
    );
    let _agent = Server::agent(&hub.hub, &token, "later", &path_in(&dir, "state"), &[]);
    cli.wait_run("the queued run completed", |r| {
        r["id"] == queued["id"] && r["state"] == "completed"
    });
    assert_eq!(lines(&done), 1);
}
