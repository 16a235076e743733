//! Test fixtures: real `muster` processes on loopback, stopped on drop.

use std::io::{BufRead as _, BufReader, Read as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

/// Longest a fixture waits for a readiness line or a state.
pub(crate) const READY: Duration = Duration::from_secs(30);

/// Longest a [`Captured`] process may take to print or to exit.
pub(crate) const PATIENCE: Duration = Duration::from_secs(60);

/// Tests send commands faster than the default of 10 per key per minute;
/// `rate_limit.rs` tests that limit itself.
const NO_COMMAND_LIMIT: [&str; 2] = ["--rate-limit-commands", "0"];

/// The `muster` binary under test.
pub(crate) fn muster_bin() -> &'static str {
    env!("CARGO_BIN_EXE_muster")
}

/// A `muster` server process (`dev`, `hub` or `agent`), SIGTERMed on drop.
pub(crate) struct Server {
    child: Child,
    /// `MUSTER_HUB=` value, once printed.
    pub(crate) hub: String,
    /// `MUSTER_TOKEN=` value, once printed.
    pub(crate) token: Option<String>,
    /// `MUSTER_CA_FILE=` value, once printed (`muster dev --tls`).
    pub(crate) ca_file: Option<String>,
}

impl Server {
    /// Starts `muster dev` on a free port and waits until its local agent is online.
    pub(crate) fn dev(data_dir: &Path) -> Self {
        let mut cmd = Command::new(muster_bin());
        cmd.args(["dev", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .stderr(Stdio::inherit());
        cmd.args(["--kill-grace", "2s"]);
        cmd.args(NO_COMMAND_LIMIT);
        Self::start(cmd, &["MUSTER_HUB=", "MUSTER_TOKEN="])
    }

    /// Starts `muster dev --tls` on a free port, from an environment that
    /// names no CA file, and waits for its three lines.
    pub(crate) fn dev_tls(data_dir: &Path) -> Self {
        let mut cmd = Command::new(muster_bin());
        cmd.args(["dev", "--tls", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env_remove("MUSTER_CA_FILE")
            .stderr(Stdio::inherit());
        Self::start(cmd, &["MUSTER_HUB=", "MUSTER_TOKEN=", "MUSTER_CA_FILE="])
    }

    /// Starts `muster hub` on a free port; `expect_token` on a fresh data dir.
    pub(crate) fn hub(data_dir: &Path, expect_token: bool) -> Self {
        Self::hub_with(data_dir, expect_token, &[])
    }

    /// Starts `muster hub` with extra flags.
    pub(crate) fn hub_with(data_dir: &Path, expect_token: bool, extra: &[&str]) -> Self {
        let mut cmd = Command::new(muster_bin());
        cmd.args(["hub", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(NO_COMMAND_LIMIT)
            .args(extra)
            .stderr(Stdio::inherit());
        let wanted: &[&str] = if expect_token {
            &["MUSTER_HUB=", "MUSTER_TOKEN="]
        } else {
            &["MUSTER_HUB="]
        };
        Self::start(cmd, wanted)
    }

    /// Starts `muster agent` with its state in `state_dir` (it prints nothing to
    /// wait for; callers wait for it online).
    pub(crate) fn agent(
        hub: &str,
        token: &str,
        name: &str,
        state_dir: &Path,
        extra: &[&str],
    ) -> Self {
        Self::agent_with_env(hub, token, name, state_dir, extra, &[])
    }

    /// Starts `muster agent` like [`Server::agent`], with extra environment
    /// variables, which the commands it runs inherit.
    pub(crate) fn agent_with_env(
        hub: &str,
        token: &str,
        name: &str,
        state_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let child = Command::new(muster_bin())
            .envs(env.iter().copied())
            .args([
                "agent",
                "--hub",
                hub,
                "--token",
                token,
                "--name",
                name,
                "--state-dir",
            ])
            .arg(state_dir)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn muster agent");
        Self {
            child,
            hub: hub.to_owned(),
            token: None,
            ca_file: None,
        }
    }

    /// Takes over a spawned `muster` process: it is killed on drop.
    pub(crate) fn adopt(child: Child, hub: &str) -> Self {
        Self {
            child,
            hub: hub.to_owned(),
            token: None,
            ca_file: None,
        }
    }

    /// Starts `muster hub` on a fresh `data_dir` at log level `trace`, its
    /// stderr written to `log`.
    pub(crate) fn hub_tracing_to(data_dir: &Path, log: &Path) -> Self {
        let mut cmd = Command::new(muster_bin());
        cmd.args(["hub", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env("MUSTER_LOG", "trace")
            .stderr(std::fs::File::create(log).expect("create the log file"));
        Self::start(cmd, &["MUSTER_HUB=", "MUSTER_TOKEN="])
    }

    fn start(mut cmd: Command, wanted: &[&str]) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn muster");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = Self {
            child,
            hub: String::new(),
            token: None,
            ca_file: None,
        };
        let deadline = Instant::now() + READY;
        let mut seen = Vec::new();
        while !wanted
            .iter()
            .all(|w| seen.iter().any(|l: &String| l.starts_with(w)))
        {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no readiness lines; got {seen:?}"));
            if let Some(hub) = line.strip_prefix("MUSTER_HUB=") {
                server.hub = hub.to_owned();
            }
            if let Some(token) = line.strip_prefix("MUSTER_TOKEN=") {
                server.token = Some(token.to_owned());
            }
            if let Some(ca_file) = line.strip_prefix("MUSTER_CA_FILE=") {
                server.ca_file = Some(ca_file.to_owned());
            }
            seen.push(line);
        }
        server
    }

    /// The process id.
    pub(crate) fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// Sends SIGTERM and waits for the exit.
    pub(crate) fn stop(mut self) -> ExitStatus {
        let _ = kill(self.pid(), Signal::SIGTERM);
        self.child.wait().expect("wait")
    }

    /// A client command against this server, with its token.
    pub(crate) fn cli(&self, token: &str) -> Cli {
        Cli {
            hub: self.hub.clone(),
            token: token.to_owned(),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = kill(self.pid(), Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// Runs client subcommands of `muster` against one hub.
#[derive(Clone)]
pub(crate) struct Cli {
    pub(crate) hub: String,
    pub(crate) token: String,
}

impl Cli {
    /// A `muster` command with `MUSTER_HUB` and `MUSTER_TOKEN` set.
    pub(crate) fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(muster_bin());
        cmd.args(args)
            .env("MUSTER_HUB", &self.hub)
            .env("MUSTER_TOKEN", &self.token)
            .env_remove("RUST_LOG")
            .env_remove("MUSTER_CA_FILE")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs to completion and returns its output.
    pub(crate) fn output(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run muster")
    }

    /// Runs a command that prints JSON and parses it; panics on failure.
    pub(crate) fn json(&self, args: &[&str]) -> Value {
        let out = self.output(args);
        assert!(
            out.status.success(),
            "muster {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("muster {args:?}: bad json: {e}"))
    }

    /// Polls `muster agents show NAME --json` until its status is `status`.
    pub(crate) fn wait_agent(&self, name: &str, status: &str) {
        self.wait_until(&format!("agent {name} {status}"), || {
            let out = self.output(&["agents", "show", name, "--json"]);
            out.status.success()
                && serde_json::from_slice::<Value>(&out.stdout).is_ok_and(|v| v["status"] == status)
        });
    }

    /// Polls a JSON-printing command until `pred` holds for its output.
    pub(crate) fn wait_until_json(
        &self,
        what: &str,
        args: &[&str],
        mut pred: impl FnMut(&Value) -> bool,
    ) {
        self.wait_until(what, || {
            let out = self.output(args);
            out.status.success()
                && serde_json::from_slice::<Value>(&out.stdout).is_ok_and(|v| pred(&v))
        });
    }

    /// Polls `muster KIND show ID --json` (`runs` or `jobs`) until `pred`
    /// holds, for up to `PATIENCE`; a failed call (such as while a hub
    /// restarts) counts as not yet. Returns what it showed last.
    pub(crate) fn wait_shown(
        &self,
        kind: &str,
        id: &str,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + PATIENCE;
        let mut last = Value::Null;
        loop {
            let out = self.output(&[kind, "show", id, "--json"]);
            if out.status.success() {
                last = serde_json::from_slice(&out.stdout).expect("show prints json");
                if pred(&last) {
                    return last;
                }
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last seen: {last}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Polls `runs list` until one run matches `pred`; returns it.
    pub(crate) fn wait_run(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let mut found = None;
        self.wait_until(what, || {
            let runs = self.json(&["runs", "list", "--json"]);
            found = runs
                .as_array()
                .and_then(|a| a.iter().find(|r| pred(r)).cloned());
            found.is_some()
        });
        found.expect("found")
    }

    fn wait_until(&self, what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + READY;
        while !check() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// One agent of a [`Fleet`].
pub(crate) struct FleetAgent<'a> {
    /// Its name.
    pub(crate) name: &'a str,
    /// Its labels, as `k=v`.
    pub(crate) labels: &'a [&'a str],
    /// Environment variables of the agent process, inherited by its commands.
    pub(crate) env: &'a [(&'a str, &'a str)],
    /// The agent's config file (TOML, such as `[actions.NAME]` tables); none
    /// when empty.
    pub(crate) config: &'a str,
}

/// A hub and several agents with labels, all online; stopped on drop.
pub(crate) struct Fleet {
    /// Agents first, so they stop before the hub.
    _agents: Vec<Server>,
    /// The hub.
    pub(crate) hub: Server,
    /// A client of the hub with its admin token.
    pub(crate) cli: Cli,
    /// Data and state directories.
    pub(crate) dir: tempfile::TempDir,
}

impl Fleet {
    /// Starts a hub, registers and starts `agents` (labels given as agent
    /// flags), and waits until every one is online.
    pub(crate) fn start(agents: &[FleetAgent<'_>]) -> Self {
        let dir = tempdir();
        let hub = Server::hub(&path_in(&dir, "hub"), true);
        let cli = hub.cli(hub.token.as_deref().expect("first start prints a token"));
        let servers = agents
            .iter()
            .map(|agent| Self::agent(&hub, &cli, &dir, agent))
            .collect();
        let names: Vec<&str> = agents.iter().map(|a| a.name).collect();
        cli.wait_until_json("every agent online", &["agents", "list", "--json"], |v| {
            let online = v.as_array().map_or(0, |list| {
                list.iter()
                    .filter(|a| a["status"] == "online" && names.iter().any(|n| a["name"] == *n))
                    .count()
            });
            online == names.len()
        });
        Self {
            _agents: servers,
            hub,
            cli,
            dir,
        }
    }

    /// Registers `agent` and starts its process, with its labels, config and
    /// environment.
    fn agent(hub: &Server, cli: &Cli, dir: &tempfile::TempDir, agent: &FleetAgent<'_>) -> Server {
        let added = cli.json(&["agents", "add", agent.name, "--json"]);
        let token = added["token"].as_str().expect("agent token");
        let mut flags: Vec<&str> = agent.labels.iter().flat_map(|l| ["--label", l]).collect();
        let config = path_in(dir, &format!("{}.toml", agent.name));
        if !agent.config.is_empty() {
            std::fs::write(&config, agent.config).expect("write the agent config");
            flags.extend(["--config", config.to_str().expect("a UTF-8 path")]);
        }
        let state = path_in(dir, agent.name);
        Server::agent_with_env(&hub.hub, token, agent.name, &state, &flags, agent.env)
    }
}

/// A CLI process whose stdout and stderr are collected by threads.
pub(crate) struct Captured {
    child: Child,
    /// Stdout so far, appended as it arrives.
    stdout: Arc<Mutex<Vec<u8>>>,
    stdout_reader: JoinHandle<()>,
    stderr: JoinHandle<Vec<u8>>,
}

impl Captured {
    /// Starts `cmd` with both output streams captured.
    pub(crate) fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn muster");
        let mut out = child.stdout.take().expect("stdout");
        let mut err = child.stderr.take().expect("stderr");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let sink = stdout.clone();
        Self {
            child,
            stdout,
            stdout_reader: std::thread::spawn(move || {
                let mut buf = [0u8; 16 * 1024];
                while let Ok(n @ 1..) = out.read(&mut buf) {
                    sink.lock()
                        .expect("stdout lock")
                        .extend_from_slice(&buf[..n]);
                }
            }),
            stderr: std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = err.read_to_end(&mut buf);
                buf
            }),
        }
    }

    /// The process id.
    pub(crate) fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// Waits until the process has printed something on stdout.
    pub(crate) fn wait_for_stdout(&mut self, what: &str) {
        let deadline = Instant::now() + PATIENCE;
        while self.stdout.lock().expect("stdout lock").is_empty() {
            let exited = self.child.try_wait().expect("try_wait");
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "{what} printed nothing (exit: {exited:?})"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until stdout holds `text`.
    pub(crate) fn wait_for_text(&mut self, text: &str) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let printed =
                String::from_utf8_lossy(&self.stdout.lock().expect("stdout lock")).contains(text);
            if printed {
                return;
            }
            let exited = self.child.try_wait().expect("try_wait");
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "{text:?} was not printed (exit: {exited:?})"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What stdout printed so far.
    pub(crate) fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().expect("stdout lock")).into_owned()
    }

    /// Bytes printed on stdout so far.
    pub(crate) fn stdout_len(&self) -> usize {
        self.stdout.lock().expect("stdout lock").len()
    }

    /// Waits for the exit, at most `PATIENCE`; kills the process and panics
    /// past that.
    pub(crate) fn finish(mut self, what: &str) -> Output {
        let deadline = Instant::now() + PATIENCE;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let stderr = self.stderr.join().unwrap_or_default();
                panic!(
                    "{what} did not exit within {PATIENCE:?}; stderr: {}",
                    String::from_utf8_lossy(&stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        self.stdout_reader.join().expect("stdout reader");
        let stdout = std::mem::take(&mut *self.stdout.lock().expect("stdout lock"));
        Output {
            status,
            stdout,
            stderr: self.stderr.join().expect("stderr reader"),
        }
    }
}

/// Whether a process runs (exists and is not a zombie awaiting its reaper).
pub(crate) fn alive(pid: i32) -> bool {
    proc_stat(&format!("/proc/{pid}/stat")).is_some_and(|(state, _)| state != 'Z')
}

/// Whether any live (non-zombie) process is in process group `pgid`.
pub(crate) fn group_alive(pgid: i32) -> bool {
    std::fs::read_dir("/proc")
        .expect("read /proc")
        .filter_map(Result::ok)
        .filter_map(|e| proc_stat(&format!("{}/stat", e.path().display())))
        .any(|(state, group)| group == pgid && state != 'Z')
}

/// State and process group from `/proc/PID/stat`.
fn proc_stat(path: &str) -> Option<(char, i32)> {
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split(' ');
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((state, pgrp))
}

/// A fresh temporary directory.
pub(crate) fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// A path inside `dir`.
pub(crate) fn path_in(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}
