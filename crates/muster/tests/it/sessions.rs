//! Sessions through the binary: a pipe session talking to a scripted "AI
//! agent", its transcript from later clients and after a hub restart, its
//! asciicast export; `muster shell` driven through tmux as a person would,
//! and without a terminal.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::fault_sessions::addr_of;
use crate::fixture::{Cli, PATIENCE, Server, muster_bin, path_in, tempdir};

/// A pipe-session "AI agent": answers each line with a JSON object.
const ECHO_AGENT: &str = r#"while read l; do printf '{"reply":"%s"}\n' "$l"; done"#;

/// The turns of `transcript ID --json`, one object per line.
fn transcript(cli: &Cli, id: &str) -> Vec<Value> {
    let out = cli.output(&["sessions", "transcript", id, "--json"]);
    assert!(out.status.success(), "transcript: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect()
}

/// Polls the transcript until it holds `agent_turns` agent turns.
fn wait_for_replies(cli: &Cli, id: &str, agent_turns: usize) -> Vec<Value> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let turns = transcript(cli, id);
        if turns.iter().filter(|t| t["role"] == "agent").count() >= agent_turns {
            return turns;
        }
        assert!(
            Instant::now() < deadline,
            "no reply {agent_turns}: {turns:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn check_conversation(turns: &[Value]) {
    let shape: Vec<(String, String)> = turns
        .iter()
        .map(|t| {
            let role = t["role"].as_str().unwrap().to_owned();
            let said = match role.as_str() {
                "user" => t["text"].as_str().unwrap().to_owned(),
                _ => t["message"]["reply"].as_str().unwrap().to_owned(),
            };
            (role, said)
        })
        .collect();
    let expected: Vec<(String, String)> = ["one", "two", "three"]
        .iter()
        .flat_map(|m| [("user".into(), (*m).into()), ("agent".into(), (*m).into())])
        .collect();
    assert_eq!(shape, expected, "{turns:?}");
    for turn in turns {
        assert_eq!(turn["type"], "session.message");
        assert!(turn["seq"].is_u64() && turn["at"].is_u64(), "{turn}");
    }
    let seqs: Vec<u64> = turns.iter().map(|t| t["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order: {seqs:?}");
    for user in turns.iter().filter(|t| t["role"] == "user") {
        assert_eq!(user["from"], "admin", "who sent it: {user}");
    }
}

#[test]
fn a_pipe_session_keeps_its_conversation_across_a_hub_restart() {
    let dir = tempdir();
    let data = path_in(&dir, "hub");
    let hub = Server::hub(&data, true);
    let token = hub.token.clone().expect("first start prints a token");
    let cli = hub.cli(&token);
    let added = cli.json(&["agents", "add", "web-1", "--json"]);
    let agent_token = added["token"].as_str().unwrap().to_owned();
    // The agent dials a proxy that follows the hub to its new port.
    let proxy = muster_testkit::Proxy::start(addr_of(&hub));
    let _agent = Server::agent(
        &proxy.url(),
        &agent_token,
        "web-1",
        &path_in(&dir, "agent"),
        &[],
    );
    cli.wait_agent("web-1", "online");

    let out = cli.output(&[
        "sessions",
        "open",
        "web-1",
        "--pipe",
        "--json-lines",
        "--",
        "sh",
        "-c",
        ECHO_AGENT,
    ]);
    assert!(out.status.success(), "open: {out:?}");
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    for (n, message) in ["one", "two", "three"].iter().enumerate() {
        let sent = cli.output(&["sessions", "send", &id, message]);
        assert!(sent.status.success(), "send {message}: {sent:?}");
        wait_for_replies(&cli, &id, n + 1);
    }
    check_conversation(&transcript(&cli, &id));

    let listed = cli.json(&["sessions", "list", "--json"]);
    let listed = listed.as_array().unwrap();
    assert!(listed.iter().any(|s| s["id"] == id.as_str()), "{listed:?}");
    assert!(
        listed.iter().all(|s| s["session"].is_object()),
        "sessions only"
    );

    hub.stop();
    let hub = Server::hub(&data, false);
    proxy.set_upstream(addr_of(&hub));
    let cli = hub.cli(&token);
    check_conversation(&transcript(&cli, &id));

    // The recording: valid JSON lines whose output is the stored output.
    let cast = cli.output(&["sessions", "export", &id, "--format", "asciicast"]);
    assert!(cast.status.success(), "export: {cast:?}");
    let lines: Vec<Value> = String::from_utf8_lossy(&cast.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("asciicast lines are JSON"))
        .collect();
    assert_eq!(lines[0]["version"], 2);
    assert!(lines[0]["timestamp"].is_u64() && lines[0]["width"].is_u64());
    let mut text = String::new();
    let mut last = 0.0;
    for event in &lines[1..] {
        let t = event[0].as_f64().expect("a time");
        assert!(t >= last, "time runs forward: {event}");
        last = t;
        assert_eq!(event[1], "o");
        text.push_str(event[2].as_str().unwrap());
    }
    let stored = cli.output(&["runs", "output", &id]);
    assert_eq!(text, String::from_utf8_lossy(&stored.stdout));
    assert_eq!(text.lines().count(), 3, "{text:?}");

    let closed = cli.output(&["sessions", "close", &id]);
    assert!(closed.status.success(), "close: {closed:?}");
    cli.wait_shown("runs", &id, "the session closed", |r| {
        r["state"] == "cancelled"
    });
}

#[test]
fn shell_without_a_terminal_types_stdin_and_exits_with_the_remote_status() {
    let dir = tempdir();
    let dev = Server::dev(dir.path());
    let cli = dev.cli(dev.token.as_deref().unwrap());
    let mut child = cli
        .command(&["shell", "local", "--", "sh"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn muster shell");
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(b"echo hi-$((40+2))\nexit 3\n")
        .expect("write stdin");
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("hi-42"),
        "{out:?}"
    );
}

/// A tmux server of its own (its socket in a temp dir), killed on drop.
struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    /// A tmux server, or `None` (with a note) when tmux is missing outside CI.
    fn start(dir: &Path) -> Option<Self> {
        let found = Command::new("tmux")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            assert!(
                std::env::var_os("CI").is_none(),
                "tmux is required in CI for the terminal tests"
            );
            eprintln!("skipping: tmux is not installed (CI installs it)");
            return None;
        }
        Some(Self {
            socket: dir.join("tmux.sock"),
        })
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run tmux")
    }

    /// Starts `muster shell local -- CMD…` in a 100x30 window; its exit
    /// status goes to `status`.
    fn shell(&self, cli: &Cli, status: &Path, command: &str) {
        let line = format!(
            "MUSTER_HUB='{}' MUSTER_TOKEN='{}' '{}' shell local -- {command}; echo $? > '{}'",
            cli.hub,
            cli.token,
            muster_bin(),
            status.display()
        );
        let out = self.run(&[
            "new-session",
            "-d",
            "-s",
            "t",
            "-x",
            "100",
            "-y",
            "30",
            &line,
        ]);
        assert!(out.status.success(), "tmux new-session: {out:?}");
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "t"];
        args.extend_from_slice(keys);
        assert!(self.run(&args).status.success());
    }

    /// Polls the pane until it shows `text` `times` times.
    fn wait_for(&self, text: &str, times: usize) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let pane = self.run(&["capture-pane", "-p", "-t", "t"]);
            let pane = String::from_utf8_lossy(&pane.stdout).into_owned();
            if pane.matches(text).count() >= times {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{text:?} never showed; pane:\n{pane}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

/// Polls for the exit status the tmux command line writes.
fn wait_status(path: &Path) -> i32 {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && let Ok(code) = text.trim().parse()
        {
            return code;
        }
        assert!(Instant::now() < deadline, "muster shell did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn shell_in_a_terminal_is_a_real_terminal() {
    let dir = tempdir();
    let Some(tmux) = Tmux::start(dir.path()) else {
        return;
    };
    let dev = Server::dev(&path_in(&dir, "data"));
    let cli = dev.cli(dev.token.as_deref().unwrap());
    let status = path_in(&dir, "status");
    tmux.shell(&cli, &status, "env PS1=mst$ sh");
    tmux.wait_for("mst$", 1);

    tmux.keys(&["tty", "Enter"]);
    tmux.wait_for("/dev/pts/", 1);
    tmux.keys(&["stty size", "Enter"]);
    tmux.wait_for("30 100", 1);
    assert!(
        tmux.run(&["resize-window", "-t", "t", "-x", "120", "-y", "40"])
            .status
            .success()
    );
    tmux.keys(&["clear; stty size", "Enter"]);
    tmux.wait_for("40 120", 1);

    // Ctrl-C once the command runs: a person sees it start; the test
    // sees its process (an odd duration no other test uses).
    tmux.keys(&["sleep 137", "Enter"]);
    let deadline = Instant::now() + PATIENCE;
    while !Command::new("pgrep")
        .args(["-f", "^sleep 137$"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        assert!(Instant::now() < deadline, "sleep 137 never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    tmux.keys(&["C-c"]);
    tmux.keys(&["echo after-$((1+1))", "Enter"]);
    // The typed line shows `$((1+1))`; only the answer shows `after-2`.
    tmux.wait_for("after-2", 1);

    tmux.keys(&["exit 7", "Enter"]);
    assert_eq!(wait_status(&status), 7);
}

#[test]
fn tilde_dot_detaches_and_the_session_goes_on() {
    let dir = tempdir();
    let Some(tmux) = Tmux::start(dir.path()) else {
        return;
    };
    let dev = Server::dev(&path_in(&dir, "data"));
    let cli = dev.cli(dev.token.as_deref().unwrap());
    let status = path_in(&dir, "status");
    tmux.shell(&cli, &status, "env PS1=mst$ sh");
    tmux.wait_for("mst$", 1);
    // `~~` at the start of a line sends one `~`: `cat` echoes it back.
    tmux.keys(&["cat", "Enter"]);
    tmux.keys(&["~~hello", "Enter"]);
    tmux.wait_for("~hello", 2);
    let pane = tmux.run(&["capture-pane", "-p", "-t", "t"]);
    assert!(!String::from_utf8_lossy(&pane.stdout).contains("~~hello"));
    tmux.keys(&["C-d"]);
    tmux.wait_for("mst$", 2);
    tmux.keys(&["Enter", "~."]);
    assert_eq!(wait_status(&status), 254);
    let sessions = cli.json(&["sessions", "list", "--json"]);
    let open = sessions.as_array().unwrap();
    assert!(open.iter().any(|s| s["state"] == "running"), "{open:?}");
}

impl Tmux {
    /// The text of pane `target`, line by line, without trailing blanks.
    fn capture(&self, target: &str) -> String {
        let pane = self.run(&["capture-pane", "-p", "-t", target]);
        String::from_utf8_lossy(&pane.stdout)
            .lines()
            .map(str::trim_end)
            .collect::<Vec<_>>()
            .join("\n")
            .trim_end()
            .to_owned()
    }
}

#[test]
fn reattaching_to_a_full_screen_program_paints_its_current_screen() {
    let dir = tempdir();
    let Some(tmux) = Tmux::start(dir.path()) else {
        return;
    };
    let dev = Server::dev(&path_in(&dir, "data"));
    let cli = dev.cli(dev.token.as_deref().unwrap());
    let status = path_in(&dir, "status");
    let file = path_in(&dir, "notes.txt");
    std::fs::write(
        &file,
        (1..=200).map(|i| format!("note {i}\n")).collect::<String>(),
    )
    .unwrap();
    tmux.shell(&cli, &status, "env PS1=mst$ sh");
    tmux.wait_for("mst$", 1);
    // History the screen no longer shows: a replay would scroll through it.
    tmux.keys(&["seq 1 500", "Enter"]);
    tmux.wait_for("500", 1);
    tmux.keys(&[&format!("vi -u NONE '{}'", file.display()), "Enter"]);
    tmux.wait_for("note 29", 1);
    tmux.keys(&["50G"]);
    tmux.wait_for("note 50", 1);
    let before = tmux.capture("t");
    assert!(
        before.contains("note 1\n") || before.contains("note 50"),
        "{before}"
    );

    // The terminal goes away; the session, and vi in it, go on.
    assert!(tmux.run(&["kill-session", "-t", "t"]).status.success());
    let sessions = cli.json(&["sessions", "list", "--json"]);
    let id = sessions
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["state"] == "running")
        .and_then(|s| s["id"].as_str())
        .unwrap_or_else(|| panic!("no open session: {sessions}"))
        .to_owned();
    let line = format!(
        "MUSTER_HUB='{}' MUSTER_TOKEN='{}' '{}' sessions attach {id}",
        cli.hub,
        cli.token,
        muster_bin(),
    );
    let out = tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "u",
        "-x",
        "100",
        "-y",
        "30",
        &line,
    ]);
    assert!(out.status.success(), "tmux new-session: {out:?}");
    let deadline = Instant::now() + PATIENCE;
    let mut after = tmux.capture("u");
    while after != before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        after = tmux.capture("u");
    }
    assert_eq!(
        after, before,
        "the reattached terminal shows vi's screen as it was"
    );
    assert!(
        !after.contains("mst$ seq 1 500"),
        "no history was replayed:\n{after}"
    );
    // And it is vi, live: quitting it gives the shell back.
    assert!(
        tmux.run(&["send-keys", "-t", "u", ":q", "Enter"])
            .status
            .success()
    );
    let deadline = Instant::now() + PATIENCE;
    while !tmux.capture("u").contains("mst$") {
        assert!(
            Instant::now() < deadline,
            "vi did not quit:\n{}",
            tmux.capture("u")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_hubs_session_limits_refuse_or_end_sessions_with_their_codes() {
    let dir = tempdir();
    let limits = [
        "--max-sessions-per-agent",
        "2",
        "--session-idle-timeout",
        "700ms",
        "--session-max-lifetime",
        "1500ms",
    ];
    let hub = Server::hub_with(&path_in(&dir, "hub"), true, &limits);
    let cli = hub.cli(hub.token.as_deref().unwrap());
    let added = cli.json(&["agents", "add", "web-1", "--json"]);
    let token = added["token"].as_str().unwrap().to_owned();
    let _agent = Server::agent(&hub.hub, &token, "web-1", &path_in(&dir, "agent"), &[]);
    cli.wait_agent("web-1", "online");
    let open = |args: &[&str]| {
        let mut all = vec!["sessions", "open", "web-1"];
        all.extend_from_slice(args);
        cli.output(&all)
    };
    // Quiet: nothing typed, nothing printed.
    let quiet = open(&["--pipe", "--", "cat"]);
    assert!(quiet.status.success(), "{quiet:?}");
    let quiet = String::from_utf8_lossy(&quiet.stdout).trim().to_owned();
    // Busy: never idle, so its lifetime ends it.
    let busy = open(&["--", "sh", "-c", "while :; do echo tick; sleep 0.2; done"]);
    assert!(busy.status.success(), "{busy:?}");
    let busy = String::from_utf8_lossy(&busy.stdout).trim().to_owned();
    let third = open(&["--pipe", "--", "cat"]);
    assert!(
        !third.status.success(),
        "a third session was let in: {third:?}"
    );
    let said = String::from_utf8_lossy(&third.stderr);
    assert!(said.contains("already has 2 open sessions"), "{said}");

    let ended = |id: &str| {
        cli.wait_shown("runs", id, "the session to end", |r| {
            r["state"] != "running" && r["state"] != "dispatched"
        })
    };
    let quiet = ended(&quiet);
    assert_eq!(quiet["state"], "timed_out", "{quiet}");
    assert_eq!(quiet["error_code"], "SESSION_IDLE", "{quiet}");
    let busy = ended(&busy);
    assert_eq!(busy["state"], "timed_out", "{busy}");
    assert_eq!(busy["error_code"], "SESSION_LIFETIME", "{busy}");
    // With both ended, there is room again.
    let again = open(&["--pipe", "--", "cat"]);
    assert!(again.status.success(), "{again:?}");
}
