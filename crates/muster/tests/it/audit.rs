//! `muster audit` shows who ran what, and every refusal: a role too low, a
//! failed login and a source that failed too often; `--follow` prints what
//! comes after. `muster keys` scopes, expires and rotates keys.

use std::process::Command;

use serde_json::Value;

use crate::fixture::{Captured, Server, path_in, tempdir};

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn muster_audit_shows_who_ran_what_and_each_refusal() {
    let dir = tempdir();
    let hub = Server::hub_with(
        &path_in(&dir, "hub"),
        true,
        &["--rate-limit-auth-failures", "2"],
    );
    let admin = hub.cli(hub.token.as_deref().unwrap());
    let added = admin.json(&["agents", "add", "web-1", "--json"]);
    let _agent = Server::agent(
        &hub.hub,
        added["token"].as_str().unwrap(),
        "web-1",
        &path_in(&dir, "agent"),
        &[],
    );
    admin.wait_agent("web-1", "online");
    let key = |name: &str, role: &str| {
        let created = admin.json(&["keys", "create", name, "--role", role, "--json"]);
        hub.cli(created["token"].as_str().unwrap())
    };
    let ops = key("ops", "operator");
    let watcher = key("watcher", "viewer");
    let mut follow = Captured::spawn(admin.command(&["audit", "--follow"]));
    follow.wait_for_text("key.create");

    let out = ops.output(&["run", "web-1", "--", "echo", "audited"]);
    assert!(out.status.success(), "{out:?}");
    let out = watcher.output(&["run", "web-1", "--", "true"]);
    assert_eq!(out.status.code(), Some(255), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("operator"));
    // A refusal at the connection is stored a moment later: once the
    // follower has it, so has the store.
    follow.wait_for_text("FORBIDDEN");
    let out = admin.output(&["audit"]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    let line_with = |text: &str, parts: &[&str]| {
        assert!(
            text.lines()
                .any(|line| parts.iter().all(|p| line.contains(p))),
            "no line with {parts:?} in:\n{text}"
        );
    };
    line_with(
        &text,
        &[
            "ops",
            "127.0.0.1",
            "run.create",
            "web-1",
            "ok",
            "echo audited",
        ],
    );
    line_with(
        &text,
        &[
            "watcher",
            "run.create",
            "FORBIDDEN",
            "needs an operator key",
        ],
    );
    line_with(&text, &["watcher", "login", "ok"]);

    // --json: one object a line, in order, without gaps.
    let out = admin.output(&["audit", "--since", "1h", "--json"]);
    let entries: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let seqs: Vec<u64> = entries.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    assert!(
        entries
            .iter()
            .any(|e| e["action"] == "run.create" && e["actor"] == "ops")
    );

    // Only admins read it.
    let out = ops.output(&["audit"]);
    assert_eq!(out.status.code(), Some(255), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("admin"));

    // Failed logins, then a source refused for failing too often. That
    // source is this machine's, so from here on only the follower, already
    // connected, can tell.
    let stranger = hub.cli("mst_nobodynobody_secret");
    for attempt in 1..=4 {
        let out = stranger.output(&["agents", "list"]);
        assert_eq!(out.status.code(), Some(255), "{out:?}");
        let refused = String::from_utf8_lossy(&out.stderr).contains("too many failed");
        assert_eq!(refused, attempt == 4, "attempt {attempt}: {out:?}");
    }
    follow.wait_for_text("RATE_LIMIT");
    let followed = follow.stdout_text();
    line_with(&followed, &["-  127.0.0.1  login  -  AUTH_FAILED"]);
    line_with(&followed, &["-  127.0.0.1  login  -  RATE_LIMIT"]);
    line_with(
        &followed,
        &["ops", "run.create", "web-1", "ok", "echo audited"],
    );
    line_with(&followed, &["ops", "audit.list", "FORBIDDEN"]);
}

#[test]
fn keys_are_created_scoped_and_expiring_and_rotate_with_an_overlap() {
    let dir = tempdir();
    let hub = Server::hub(&path_in(&dir, "hub"), true);
    let admin = hub.cli(hub.token.as_deref().unwrap());
    let created = admin.json(&[
        "keys",
        "create",
        "ci",
        "--role",
        "operator",
        "--scope",
        "env=staging",
        "--expires",
        "1h",
        "--json",
    ]);
    let old = created["token"].as_str().unwrap().to_owned();
    let out = admin.output(&["keys", "list"]);
    let listed = stdout(&out);
    let ci = listed.lines().find(|l| l.starts_with("ci ")).unwrap();
    assert!(
        ci.contains("env=staging") && ci.contains("(in 59m)"),
        "{listed}"
    );
    let bad = admin.output(&["keys", "create", "x", "--role", "admin", "--scope", "env=a"]);
    assert_eq!(bad.status.code(), Some(255));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("cannot be scoped"));
    let bad = admin.output(&[
        "keys", "create", "x", "--role", "viewer", "--scope", "env~prod",
    ]);
    assert_eq!(
        bad.status.code(),
        Some(2),
        "a bad selector is a usage error"
    );

    let out = admin.output(&["keys", "rotate", "ci", "--overlap", "10m"]);
    assert!(out.status.success(), "{out:?}");
    let new = stdout(&out).trim().to_owned();
    assert!(new.starts_with("mst_") && new != old);
    assert!(String::from_utf8_lossy(&out.stderr).contains("the old token works until"));
    for token in [&old, &new] {
        let out = hub.cli(token).output(&["agents", "list"]);
        assert!(out.status.success(), "{out:?}");
    }
    let out = admin.output(&["keys", "rotate", "ci"]);
    assert!(out.status.success(), "{out:?}");
    for token in [&old, &new] {
        let out = hub.cli(token).output(&["agents", "list"]);
        assert_eq!(out.status.code(), Some(255), "{out:?}");
    }
    let out = Command::new(crate::fixture::muster_bin())
        .args(["keys", "rotate", "nobody"])
        .env("MUSTER_HUB", &hub.hub)
        .env("MUSTER_TOKEN", hub.token.as_deref().unwrap())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(255));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no key named"));
}
