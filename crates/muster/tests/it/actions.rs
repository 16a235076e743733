//! Declared actions from the command line, on real agent processes: web-1
//! runs the shipped `examples/agent.toml` (actions-only, `create_site` and
//! `delete_site` backed by the example scripts), the others plain commands.

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

use crate::fixture::{Cli, Fleet, FleetAgent};

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// The shipped example config, with the scripts where this checkout has them.
fn example_config() -> String {
    let text = std::fs::read_to_string(examples_dir().join("agent.toml")).expect("example config");
    let scripts = format!("{}/", examples_dir().display());
    assert!(text.contains("/usr/local/lib/muster/"));
    text.replace("/usr/local/lib/muster/", &scripts)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn expect_exit(cli: &Cli, args: &[&str], code: i32) -> Output {
    let out = cli.output(args);
    assert_eq!(
        out.status.code(),
        Some(code),
        "muster {args:?}\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    out
}

/// The `site.operation` statuses on stderr, in order, with their step.
fn site_events(err: &str, domain: &str) -> Vec<String> {
    err.lines()
        .filter_map(|line| line.strip_prefix("event site.operation "))
        .map(|json| serde_json::from_str::<Value>(json).expect("event data is JSON"))
        .inspect(|data| assert_eq!(data["domain"], domain, "{data}"))
        .map(|data| match data["step"].as_str() {
            Some(step) => format!("{}:{step}", data["status"].as_str().unwrap_or("?")),
            None => data["status"].as_str().unwrap_or("?").to_owned(),
        })
        .collect()
}

/// How many events web-1 has published so far.
fn event_count(cli: &Cli) -> usize {
    let out = expect_exit(cli, &["events", "web-1", "--json"], 0);
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// The sites the script has created.
fn sites(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn site_actions_stream_their_events_and_injection_runs_nothing() {
    let sites_dir = tempfile::tempdir().unwrap();
    let sites_path = sites_dir.path().join("sites");
    let config = example_config();
    // No MUSTER_BIN: the agent gives its runs its own binary.
    let env = [("SITES_DIR", sites_path.to_str().unwrap())];
    let agents = [
        FleetAgent {
            name: "web-1",
            labels: &["role=web", "env=prod"],
            env: &env,
            config: &config,
        },
        FleetAgent {
            name: "web-2",
            labels: &["role=web", "env=staging"],
            env: &[],
            config: "",
        },
        FleetAgent {
            name: "db-1",
            labels: &["role=db", "env=prod"],
            env: &[],
            config: "",
        },
        FleetAgent {
            name: "cache-1",
            labels: &["role=cache", "env=staging"],
            env: &[],
            config: "",
        },
        FleetAgent {
            name: "batch-1",
            labels: &["role=batch", "env=dev"],
            env: &[],
            config: "",
        },
    ];
    let fleet = Fleet::start(&agents);
    let cli = &fleet.cli;

    let shown = expect_exit(cli, &["agents", "show", "web-1", "--json"], 0);
    let shown: Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["exec"], "actions-only");
    let declared: Vec<&str> = shown["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(declared, ["create_site", "delete_site"]);

    // The declared argv runs, and the script's progress comes back in order.
    let out = expect_exit(
        cli,
        &["action", "web-1", "create_site", "domain=example.com"],
        0,
    );
    assert_eq!(
        site_events(&stderr(&out), "example.com"),
        ["starting", "progress:files", "progress:config", "completed"],
        "{}",
        stderr(&out)
    );
    let conf = std::fs::read_to_string(sites_path.join("example.com/site.conf")).unwrap();
    assert_eq!(conf, "domain=example.com\ncache=true\n");
    let events_before = event_count(cli);
    assert_eq!(events_before, 4);

    // Injection and other bad values: refused on the agent, naming the
    // parameter and its rule; nothing runs and nothing is published.
    let marker = sites_dir.path().join("pwned");
    let touch = format!("x$(touch {})", marker.display());
    let backticks = format!("`touch {}`", marker.display());
    for (param, why) in [
        ("domain=x; rm -rf /", "\"domain\""),
        (touch.as_str(), "\"domain\""),
        (backticks.as_str(), "\"domain\""),
        ("domain=../../etc", "\"domain\""),
        ("domain=-rf", "\"domain\""),
        ("domain=a b.com", "\"domain\""),
        ("domain=ok.com\nx", "\"domain\""),
        ("cache=yes", "\"cache\""),
    ] {
        let param = if param.starts_with("domain=") || param.starts_with("cache=") {
            param.to_owned()
        } else {
            format!("domain={param}")
        };
        let mut args = vec!["action", "web-1", "create_site", &param];
        if param.starts_with("cache=") {
            args.push("domain=a.com");
        }
        let out = expect_exit(cli, &args, 126);
        let err = stderr(&out);
        assert!(
            err.starts_with("muster: web-1 rejected the run: INVALID_PARAMS: parameter "),
            "{param:?}: {err}"
        );
        assert!(err.contains(why), "{param:?} should name {why}: {err}");
        assert!(out.stdout.is_empty());
    }
    assert!(!marker.exists(), "an injected command ran");
    assert_eq!(sites(&sites_path), ["example.com"]);
    assert_eq!(
        event_count(cli),
        events_before,
        "a rejected call published events"
    );

    // Raw commands are refused on the actions-only agent with their code.
    let raw_marker = sites_dir.path().join("raw");
    let raw_path = raw_marker.to_str().unwrap();
    for command in [
        vec!["run", "web-1", "--", "touch", raw_path],
        vec![
            "run",
            "web-1",
            "--shell",
            "--",
            &format!("touch {raw_path}"),
        ],
    ] {
        let out = expect_exit(cli, &command, 126);
        assert!(
            stderr(&out).starts_with("muster: web-1 rejected the run: COMMANDS_DISABLED: "),
            "{}",
            stderr(&out)
        );
    }
    assert!(
        !raw_marker.exists(),
        "a raw command ran on an actions-only agent"
    );

    // ...while raw commands still run elsewhere, and the action still works.
    expect_exit(cli, &["run", "web-2", "--", "true"], 0);
    let out = expect_exit(
        cli,
        &["action", "web-1", "delete_site", "domain=example.com"],
        0,
    );
    let deleted = site_events(&stderr(&out), "example.com");
    assert_eq!(deleted.first().map(String::as_str), Some("starting"));
    assert_eq!(deleted.last().map(String::as_str), Some("completed"));
    assert!(sites(&sites_path).is_empty());
}
