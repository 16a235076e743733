//! Jobs from the command line: selectors, fan-out with prefixed output,
//! rolling batches, fail-fast, workflows, cancelling, and following a job
//! through cut connections — on a real hub with five real agents.
//!
//! Every agent process gets its own `X`, which the commands it runs inherit:
//! `exit $X` fails on web-2 (3) and cache-1 (4) only. web-1 alone declares
//! an action, `greet`.

use std::collections::BTreeMap;
use std::process::Output;
use std::time::Duration;

use muster_testkit::Proxy;
use nix::sys::signal::{Signal, kill};
use serde_json::Value;

use crate::fixture::{Captured, Cli, Fleet, FleetAgent, path_in};

/// web-1's declared action.
const GREET: &str = r#"
[actions.greet]
description = "Say hello"
argv = ["echo", "hello", "{name}", "x{times}"]
[actions.greet.params.name]
type = "string"
pattern = "^[a-z]+$"
description = "who to greet"
[actions.greet.params.times]
type = "int"
min = 1
max = 3
default = 1
"#;

/// The fleet: labels for selectors, `X` for failures.
const AGENTS: [FleetAgent<'static>; 5] = [
    FleetAgent {
        name: "web-1",
        labels: &["role=web", "env=prod"],
        env: &[("X", "0")],
        config: GREET,
    },
    FleetAgent {
        name: "web-2",
        labels: &["role=web", "env=staging"],
        env: &[("X", "3")],
        config: "",
    },
    FleetAgent {
        name: "web-3",
        labels: &["role=web", "env=dev"],
        env: &[("X", "0")],
        config: "",
    },
    FleetAgent {
        name: "db-1",
        labels: &["role=db", "env=prod"],
        env: &[("X", "0")],
        config: "",
    },
    FleetAgent {
        name: "cache-1",
        labels: &["role=cache", "env=staging"],
        env: &[("X", "4")],
        config: "",
    },
];

/// A hub with the five agents of [`AGENTS`], all online.
fn fleet() -> Fleet {
    Fleet::start(&AGENTS)
}

/// Stdout as text.
fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Stderr as text.
fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `args`, checks the exit code, and returns the output.
fn expect_exit(cli: &Cli, args: &[&str], code: i32) -> Output {
    let out = cli.output(args);
    assert_eq!(
        out.status.code(),
        Some(code),
        "muster {args:?}\nstdout:\n{}\nstderr:\n{}",
        stdout(&out),
        stderr(&out)
    );
    out
}

/// The `name` of every element of a JSON array.
fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .expect("an array")
        .iter()
        .map(|a| a["name"].as_str().expect("a name").to_owned())
        .collect()
}

/// The agents of a selector, by `agents list -l`.
fn selected(cli: &Cli, selector: &str) -> Vec<String> {
    names(&cli.json(&["agents", "list", "-l", selector, "--json"]))
}

/// The job id from the summary's last line, `job <id> <state>: …`.
fn job_id(out: &Output) -> String {
    let text = stderr(out);
    let last = text.lines().last().unwrap_or_default();
    let id = last
        .strip_prefix("job ")
        .and_then(|rest| rest.split(' ').next());
    id.unwrap_or_else(|| panic!("no summary line in: {text}"))
        .to_owned()
}

/// `jobs show ID --json`.
fn show(cli: &Cli, id: &str) -> Value {
    cli.json(&["jobs", "show", id, "--json"])
}

/// The job's targets by agent name.
fn targets(job: &Value) -> BTreeMap<String, Value> {
    job["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .map(|t| (t["agent"].as_str().unwrap().to_owned(), t.clone()))
        .collect()
}

/// `(step, exit code)` of each step a target ran.
fn steps(target: &Value) -> Vec<(u64, i64)> {
    target["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| {
            (
                s["step"].as_u64().unwrap(),
                s["exit_code"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// Each agent's prefixed lines (`web-1  | text`), in the order printed.
fn lines_by_agent(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut by_agent: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        let (agent, rest) = line
            .split_once(" | ")
            .unwrap_or_else(|| panic!("unprefixed line {line:?} in:\n{text}"));
        by_agent
            .entry(agent.trim_end().to_owned())
            .or_default()
            .push(rest.to_owned());
    }
    by_agent
}

/// The summary row of `agent` (below the `AGENT  STATE …` header on
/// stderr), split into its cells.
fn summary_row(out: &Output, agent: &str) -> Vec<String> {
    let text = stderr(out);
    let row = text
        .lines()
        .skip_while(|l| !l.starts_with("AGENT  STATE"))
        .find(|l| l.starts_with(&format!("{agent} ")))
        .unwrap_or_else(|| panic!("no summary row for {agent} in:\n{text}"));
    row.split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn agents_list_filters_by_selector_and_points_at_a_bad_column() {
    let fleet = fleet();
    let cli = &fleet.cli;
    assert_eq!(selected(cli, "role=web,env!=prod"), ["web-2", "web-3"]);
    assert_eq!(selected(cli, "web-*"), ["web-1", "web-2", "web-3"]);
    assert_eq!(
        selected(cli, "env in (prod,dev)"),
        ["db-1", "web-1", "web-3"]
    );
    assert_eq!(selected(cli, "web-1,db-1"), ["db-1", "web-1"]);
    assert_eq!(
        selected(cli, "all"),
        ["cache-1", "db-1", "web-1", "web-2", "web-3"]
    );
    assert!(selected(cli, "role=nothing").is_empty());

    let out = expect_exit(cli, &["agents", "list", "-l", "role~web"], 255);
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().collect();
    assert!(
        lines[0].starts_with("muster: invalid selector at column 5: "),
        "{err}"
    );
    assert_eq!(lines[1..], ["  role~web", "      ^"], "{err}");
    assert!(out.stdout.is_empty());
    // The same check guards jobs, before anything is created.
    let out = expect_exit(cli, &["run", "-l", "role~web", "--", "true"], 255);
    assert!(stderr(&out).contains("column 5"), "{}", stderr(&out));
    let out = expect_exit(cli, &["run", "-l", "role=nothing", "--", "true"], 255);
    assert_eq!(
        stderr(&out),
        "muster: selector \"role=nothing\" matched no agents\n"
    );
    let jobs = cli.json(&["jobs", "list", "--json"]);
    assert_eq!(jobs.as_array().map(Vec::len), Some(0), "{jobs}");
}

#[test]
fn a_command_on_a_selector_prefixes_each_line_and_sums_up() {
    let fleet = fleet();
    let cli = &fleet.cli;
    let script = "echo out-$X; echo err-$X >&2; exit $X";
    let out = expect_exit(cli, &["run", "-l", "role=web", "--", "sh", "-c", script], 1);
    let printed = lines_by_agent(&stdout(&out));
    let expected: BTreeMap<String, Vec<String>> =
        [("web-1", "out-0"), ("web-2", "out-3"), ("web-3", "out-0")]
            .into_iter()
            .map(|(a, l)| (a.to_owned(), vec![l.to_owned()]))
            .collect();
    assert_eq!(printed, expected);
    assert!(
        stdout(&out).contains("web-2  | out-3\n"),
        "{}",
        stdout(&out)
    );
    let err = stderr(&out);
    assert!(err.contains("web-2  | err-3\n"), "{err}");
    assert!(
        !err.contains("db-1") && !err.contains("cache-1"),
        "only the web agents ran: {err}"
    );
    let web2 = summary_row(&out, "web-2");
    assert_eq!(web2[..4], ["web-2", "failed", "1/1", "3"], "{web2:?}");
    assert!(web2[4].ends_with('s'), "a duration: {web2:?}");
    assert_eq!(web2[5..], ["step \"run\" exited 3"], "{web2:?}");
    let web1 = summary_row(&out, "web-1");
    assert_eq!(web1[..4], ["web-1", "succeeded", "1/1", "0"], "{web1:?}");
    assert_eq!(web1[5..], ["-"], "{web1:?}");
    let id = job_id(&out);
    assert!(
        err.ends_with(&format!(
            "job {id} failed: 2 succeeded, 1 failed, 0 skipped, 0 cancelled\n"
        )),
        "{err}"
    );

    let job = show(cli, &id);
    assert_eq!(job["state"], "failed");
    assert_eq!(job["spec"]["steps"][0]["name"], "run");
    let ran = targets(&job);
    assert_eq!(ran.keys().collect::<Vec<_>>(), ["web-1", "web-2", "web-3"]);
    assert_eq!(ran["web-2"]["state"], "failed");
    assert_eq!(steps(&ran["web-2"]), [(0, 3)]);
    assert_eq!(steps(&ran["web-1"]), [(0, 0)]);

    // A TARGET that is a selector is a job too; all succeed: exit 0.
    let out = expect_exit(cli, &["run", "web-[13]", "--", "sh", "-c", script], 0);
    let printed = lines_by_agent(&stdout(&out));
    assert_eq!(printed.keys().collect::<Vec<_>>(), ["web-1", "web-3"]);
    assert!(stderr(&out).contains(" succeeded: 2 succeeded, 0 failed, 0 skipped, 0 cancelled\n"));

    // --json: no output lines, the final job instead.
    let out = expect_exit(
        cli,
        &["run", "--json", "-l", "role=web", "--", "sh", "-c", script],
        1,
    );
    let job: Value = serde_json::from_slice(&out.stdout).expect("the job as json");
    assert_eq!(job["state"], "failed");
    assert_eq!(job["progress"]["failed"], 1);
    assert_eq!(targets(&job).len(), 3);

    // --group: one block per agent, headed with its outcome.
    let out = expect_exit(
        cli,
        &["run", "--group", "-l", "role=web", "--", "sh", "-c", script],
        1,
    );
    let text = stdout(&out);
    assert!(
        text.contains("== web-2 · step \"run\" · exit 3 ==\nout-3\n"),
        "{text}"
    );
    assert!(
        text.contains("== web-1 · step \"run\" · exit 0 ==\nout-0\n"),
        "{text}"
    );
    assert!(stderr(&out).contains("err-3\n"), "{}", stderr(&out));

    // The jobs so far, newest first.
    let jobs = cli.json(&["jobs", "list", "--json"]);
    let states: Vec<&str> = jobs
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["failed", "failed", "succeeded", "failed"]);
    let table = stdout(&expect_exit(cli, &["jobs", "show", &id], 0));
    assert!(table.contains("state:"), "{table}");
    let row = table.lines().find(|l| l.starts_with("web-2")).unwrap();
    assert!(row.contains("failed") && row.contains("exit 3"), "{table}");
    let unknown = "01JD3X0000000000000000000A";
    let out = expect_exit(cli, &["jobs", "show", unknown], 255);
    assert_eq!(stderr(&out), format!("muster: job {unknown} not found\n"));
}

/// The largest number of `[start, end)` intervals that overlap at once.
fn max_overlap(intervals: &[(u64, u64)]) -> usize {
    let mut edges: Vec<(u64, i32)> = intervals
        .iter()
        .flat_map(|&(start, end)| [(start, 1), (end, -1)])
        .collect();
    // At the same instant an end comes before a start: touching is no overlap.
    edges.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, step) in edges {
        now += step;
        most = most.max(now);
    }
    most as usize
}

#[test]
fn batches_roll_and_fail_fast_skips_the_rest() {
    let fleet = fleet();
    let cli = &fleet.cli;
    let out = expect_exit(
        cli,
        &["run", "-l", "all", "--batch", "2", "--", "sleep", "0.3"],
        0,
    );
    let job = show(cli, &job_id(&out));
    assert_eq!(job["batch_limit"], 2);
    let intervals: Vec<(u64, u64)> = targets(&job)
        .values()
        .map(|target| {
            let run = target["steps"][0]["run"].as_str().unwrap();
            let run = cli.json(&["runs", "show", run, "--json"]);
            (
                run["started_ms"].as_u64().expect("started"),
                run["finished_ms"].as_u64().expect("finished"),
            )
        })
        .collect();
    assert_eq!(intervals.len(), 5);
    assert_eq!(max_overlap(&intervals), 2, "{intervals:?}");

    // Targets start in name order: cache-1 first, and it fails.
    let out = expect_exit(
        cli,
        &[
            "run",
            "-l",
            "all",
            "--batch",
            "1",
            "--fail-fast",
            "--",
            "sh",
            "-c",
            "exit $X",
        ],
        1,
    );
    let id = job_id(&out);
    let job = show(cli, &id);
    assert_eq!(job["state"], "failed");
    let ran = targets(&job);
    assert_eq!(ran["cache-1"]["state"], "failed");
    assert_eq!(steps(&ran["cache-1"]), [(0, 4)]);
    for agent in ["db-1", "web-1", "web-2", "web-3"] {
        assert_eq!(ran[agent]["state"], "skipped", "{agent}: {}", ran[agent]);
        assert!(steps(&ran[agent]).is_empty(), "{agent} ran");
    }
    let runs = cli.json(&["runs", "list", "--json"]);
    let of_job = runs
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["job"] == id.as_str())
        .count();
    assert_eq!(of_job, 1, "exactly one run was created");
    assert!(
        stderr(&out).ends_with(" failed: 0 succeeded, 1 failed, 4 skipped, 0 cancelled\n"),
        "{}",
        stderr(&out)
    );
}

/// A three-step workflow whose second step exits `$X`.
fn workflow(continue_on_failure: bool) -> String {
    format!(
        "name = \"three\"\n\
         [[steps]]\nname = \"one\"\nshell = \"echo step1-$X\"\n\
         [[steps]]\nname = \"two\"\nshell = \"echo step2-$X; exit $X\"\n\
         continue_on_failure = {continue_on_failure}\n\
         [[steps]]\nname = \"three\"\ncommand = [\"sh\", \"-c\", \"echo step3-$X\"]\n"
    )
}

#[test]
fn a_workflow_runs_its_steps_in_order_and_stops_where_one_fails() {
    let fleet = fleet();
    let cli = &fleet.cli;
    let file = path_in(&fleet.dir, "three.toml");
    std::fs::write(&file, workflow(false)).unwrap();
    let file = file.to_str().unwrap();

    let out = expect_exit(cli, &["job", "run", file, "-l", "role=web"], 1);
    let printed = lines_by_agent(&stdout(&out));
    assert_eq!(printed["web-1"], ["step1-0", "step2-0", "step3-0"]);
    assert_eq!(printed["web-3"], ["step1-0", "step2-0", "step3-0"]);
    assert_eq!(printed["web-2"], ["step1-3", "step2-3"]);
    assert!(
        stderr(&out).contains("step \"two\" exited 3"),
        "{}",
        stderr(&out)
    );
    let job = show(cli, &job_id(&out));
    assert_eq!(job["spec"]["name"], "three");
    assert_eq!(job["state"], "failed");
    let ran = targets(&job);
    assert_eq!(steps(&ran["web-2"]), [(0, 0), (1, 3)]);
    assert_eq!(ran["web-2"]["state"], "failed");
    for agent in ["web-1", "web-3"] {
        assert_eq!(steps(&ran[agent]), [(0, 0), (1, 0), (2, 0)], "{agent}");
        assert_eq!(ran[agent]["state"], "succeeded");
    }

    let go_on = path_in(&fleet.dir, "go-on.toml");
    std::fs::write(&go_on, workflow(true)).unwrap();
    let go_on = go_on.to_str().unwrap();
    // A plain name is a job of one target for `job run`.
    let out = expect_exit(cli, &["job", "run", go_on, "web-2"], 0);
    assert_eq!(
        stdout(&out),
        "web-2  | step1-3\nweb-2  | step2-3\nweb-2  | step3-3\n"
    );
    assert!(
        stderr(&out).contains(
            "web-2  | muster: step \"two\" failed (exit 3); continuing, as the step allows\n"
        ),
        "{}",
        stderr(&out)
    );
    let job = show(cli, &job_id(&out));
    assert_eq!(job["state"], "succeeded");
    let ran = targets(&job);
    assert_eq!(ran.len(), 1);
    assert_eq!(steps(&ran["web-2"]), [(0, 0), (1, 3), (2, 0)]);
    assert_eq!(ran["web-2"]["state"], "succeeded");

    // A broken file is refused with its name and the step's.
    let bad = path_in(&fleet.dir, "bad.toml");
    std::fs::write(
        &bad,
        "[[steps]]\nname = \"x\"\nshell = \"a\"\ncommand = [\"b\"]\n",
    )
    .unwrap();
    let out = expect_exit(
        cli,
        &["job", "run", bad.to_str().unwrap(), "-l", "all"],
        255,
    );
    assert!(
        stderr(&out)
            .contains("bad.toml: step 1 \"x\": give exactly one of command, shell or action"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn ctrl_c_cancels_the_job_and_detach_prints_its_id() {
    let fleet = fleet();
    let cli = &fleet.cli;
    let out = expect_exit(
        cli,
        &["run", "-l", "role=db", "--detach", "--", "sleep", "30"],
        0,
    );
    let detached = stdout(&out).trim().to_owned();
    expect_exit(cli, &["jobs", "cancel", &detached], 0);

    let mut following = Captured::spawn(cli.command(&[
        "run",
        "-l",
        "role=web",
        "--",
        "sh",
        "-c",
        "echo started; exec sleep 30",
    ]));
    cli.wait_until_json(
        "three running web runs",
        &["runs", "list", "--json"],
        |runs| {
            let list = runs.as_array().unwrap();
            list.iter()
                .filter(|r| r["state"] == "running")
                .filter(|r| r["agent"].as_str().unwrap().starts_with("web-"))
                .count()
                == 3
        },
    );
    following.wait_for_stdout("the job");
    kill(following.pid(), Signal::SIGINT).unwrap();
    let out = following.finish("the cancelled job");
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    let job = show(cli, &job_id(&out));
    assert_eq!(job["state"], "cancelled");
    for (agent, target) in targets(&job) {
        assert_eq!(target["state"], "cancelled", "{agent}: {target}");
    }
    // Its run is killed too; the job ends once the run has.
    let args = ["jobs", "show", detached.as_str(), "--json"];
    cli.wait_until_json("the detached job cancelled", &args, |job| {
        job["state"] == "cancelled" && job["targets"][0]["state"] == "cancelled"
    });
}

#[test]
fn a_followed_job_loses_and_repeats_no_line_when_connections_are_cut() {
    let fleet = fleet();
    // The follower dials through a proxy that cuts its connections; the
    // agents dial the hub directly.
    let upstream = fleet
        .hub
        .hub
        .strip_prefix("http://")
        .unwrap()
        .parse()
        .unwrap();
    let proxy = Proxy::start(upstream);
    let cli = Cli {
        hub: proxy.url(),
        token: fleet.cli.token.clone(),
    };
    /// Lines each agent prints.
    const LINES: u32 = 2000;
    let script = format!(
        "i=1; while [ $i -le {LINES} ]; do echo line-$i; \
         if [ $((i % 200)) -eq 0 ]; then sleep 0.15; fi; i=$((i+1)); done"
    );
    let mut following =
        Captured::spawn(cli.command(&["run", "-l", "role=web", "--", "sh", "-c", &script]));
    following.wait_for_stdout("the job");
    let cutter = proxy.cut_every(Duration::from_millis(250));
    let out = following.finish("the job through cuts");
    drop(cutter);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let expected: Vec<String> = (1..=LINES).map(|i| format!("line-{i}")).collect();
    let printed = lines_by_agent(&stdout(&out));
    assert_eq!(
        printed.keys().collect::<Vec<_>>(),
        ["web-1", "web-2", "web-3"]
    );
    for (agent, lines) in printed {
        assert!(
            lines == expected,
            "{agent}: {} lines, first difference at {:?}",
            lines.len(),
            lines.iter().zip(&expected).position(|(a, b)| a != b)
        );
    }
    assert!(
        following_was_cut(&out),
        "no connection was cut: {}",
        stderr(&out)
    );
}

/// Whether the follower reported reconnecting, more than once: its
/// connections were cut mid-stream, not only at the end.
fn following_was_cut(out: &Output) -> bool {
    stderr(out).matches("reconnecting to resume job").count() >= 2
}

#[test]
fn actions_run_once_or_as_a_job_and_rejections_exit_126() {
    let fleet = fleet();
    let cli = &fleet.cli;
    let shown = stdout(&expect_exit(cli, &["agents", "show", "web-1"], 0));
    assert!(shown.contains("actions:          1\n"), "{shown}");
    assert!(shown.contains("  greet  Say hello\n"), "{shown}");
    assert!(
        shown.contains("    name   string matching ^[a-z]+$, required — who to greet\n"),
        "{shown}"
    );
    assert!(
        shown.contains("    times  int 1..=3, default 1\n"),
        "{shown}"
    );

    let out = expect_exit(cli, &["action", "web-1", "greet", "name=world"], 0);
    assert_eq!(stdout(&out), "hello world x1\n");
    let out = expect_exit(cli, &["action", "web-1", "greet", "name=World"], 126);
    assert!(
        stderr(&out).starts_with("muster: web-1 rejected the run: INVALID_PARAMS: "),
        "{}",
        stderr(&out)
    );
    assert!(out.stdout.is_empty());

    // As a job: web-2 and web-3 declare no such action and reject it.
    let out = expect_exit(
        cli,
        &["action", "-l", "role=web", "greet", "name=bob", "times=2"],
        1,
    );
    assert_eq!(stdout(&out), "web-1  | hello bob x2\n");
    let job = show(cli, &job_id(&out));
    assert_eq!(job["spec"]["steps"][0]["name"], "greet");
    let ran = targets(&job);
    assert_eq!(ran["web-1"]["state"], "succeeded");
    for agent in ["web-2", "web-3"] {
        assert_eq!(ran[agent]["state"], "failed", "{agent}");
        assert_eq!(ran[agent]["steps"][0]["state"], "rejected", "{agent}");
        assert_eq!(
            ran[agent]["steps"][0]["error_code"], "UNKNOWN_ACTION",
            "{agent}"
        );
    }
    assert!(
        stderr(&out).contains("web-2  | muster: step \"greet\" rejected: UNKNOWN_ACTION: "),
        "{}",
        stderr(&out)
    );
}

#[test]
fn overlap_counts_half_open_intervals() {
    assert_eq!(max_overlap(&[(0, 10), (10, 20), (5, 15)]), 2);
    assert_eq!(max_overlap(&[(0, 10), (1, 9), (2, 8)]), 3);
}

#[test]
fn a_job_repeated_with_its_key_is_followed_again_not_run_again() {
    let fleet = fleet();
    let cli = &fleet.cli;
    let script = "echo out-$X; exit $X";
    let args = [
        "run",
        "-l",
        "role=web",
        "--idempotency-key",
        "deploy-7",
        "--",
        "sh",
        "-c",
        script,
    ];
    let first = expect_exit(cli, &args, 1);
    let again = expect_exit(cli, &args, 1);
    assert_eq!(job_id(&first), job_id(&again));
    assert_eq!(
        lines_by_agent(&stdout(&again)),
        lines_by_agent(&stdout(&first)),
        "the repeat prints the first job's output"
    );

    // Found while it is still running: the repeat joins it and follows it to
    // its end.
    let slow = "sleep 0.5; echo late-$X; exit $X";
    let detached = [
        "run",
        "-l",
        "role=web",
        "--idempotency-key",
        "deploy-8",
        "--detach",
        "--",
        "sh",
        "-c",
        slow,
    ];
    let out = expect_exit(cli, &detached, 0);
    let id = stdout(&out).trim().to_owned();
    let follow = [
        "run",
        "-l",
        "role=web",
        "--idempotency-key",
        "deploy-8",
        "--",
        "sh",
        "-c",
        slow,
    ];
    let out = expect_exit(cli, &follow, 1);
    assert_eq!(job_id(&out), id);
    let printed = lines_by_agent(&stdout(&out));
    assert_eq!(printed["web-1"], ["late-0"]);
    assert_eq!(printed["web-2"], ["late-3"]);
    assert_eq!(printed["web-3"], ["late-0"]);

    let jobs = cli.json(&["jobs", "list", "--json"]);
    assert_eq!(jobs.as_array().map(Vec::len), Some(2), "{jobs}");
    let runs = cli.json(&["runs", "list", "--json"]);
    assert_eq!(
        runs.as_array().map(Vec::len),
        Some(6),
        "one run per agent per job"
    );
}
