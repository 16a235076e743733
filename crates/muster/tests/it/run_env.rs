//! What a run's environment holds: nothing of the agent's credentials, and
//! what it needs to talk back (`MUSTER_BIN`, the event socket, its run id),
//! even where `muster` is not on the `PATH`.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::fixture::{Server, muster_bin, path_in, tempdir};

#[test]
fn a_run_sees_no_credential_and_emits_without_muster_on_its_path() {
    let dir = tempdir();
    let hub = Server::hub(&path_in(&dir, "hub"), true);
    let admin = hub.token.clone().expect("first start prints a token");
    let cli = hub.cli(&admin);
    let added = cli.json(&["agents", "add", "web-1", "--json"]);
    let agent_token = added["token"].as_str().expect("agent token").to_owned();
    let sites = path_in(&dir, "sites");

    // The agent takes its token from the environment, where a run would
    // inherit it, and holds the admin token too; `muster` is not on its PATH.
    let agent = Command::new(muster_bin())
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", dir.path())
        .env("MUSTER_AGENT_TOKEN", &agent_token)
        .env("MUSTER_TOKEN", &admin)
        .env("SITES_DIR", &sites)
        .args(["agent", "--hub", &hub.hub, "--name", "web-1", "--state-dir"])
        .arg(path_in(&dir, "state"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn muster agent");
    let _agent = Server::adopt(agent, &hub.hub);
    cli.wait_agent("web-1", "online");

    let out = cli.output(&["run", "web-1", "--", "env"]);
    assert!(out.status.success(), "{out:?}");
    let env = String::from_utf8(out.stdout).unwrap();
    assert!(
        !env.contains(&agent_token),
        "the agent's token leaked:\n{env}"
    );
    assert!(!env.contains(&admin), "the admin token leaked:\n{env}");
    assert!(!env.contains("MUSTER_AGENT_TOKEN"), "{env}");
    let var = |name: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name} in:\n{env}"))
            .to_owned()
    };
    assert_eq!(Path::new(&var("MUSTER_BIN")), Path::new(muster_bin()));
    assert!(var("MUSTER_RUN_ID").len() == 26, "{env}");
    assert!(!var("MUSTER_AGENT_SOCKET").is_empty());
    let bin_dir = Path::new(muster_bin()).parent().unwrap();
    assert!(
        std::env::split_paths(&var("PATH")).any(|p| p == bin_dir),
        "{env}"
    );

    // `muster` by name resolves to the agent's own binary.
    let out = cli.output(&["run", "web-1", "--", "sh", "-c", "command -v muster"]);
    let found = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(Path::new(&found), Path::new(muster_bin()));

    // The README tour's step: a script that calls `muster emit`.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/create-site.sh");
    let out = cli.output(&[
        "run",
        "web-1",
        "--",
        "sh",
        script.to_str().unwrap(),
        "example.com",
    ]);
    assert!(
        out.status.success(),
        "create-site failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(sites.join("example.com").is_dir());
    let events = cli.output(&["events", "web-1", "--json"]);
    let text = String::from_utf8_lossy(&events.stdout);
    assert!(
        text.contains("site.operation") && text.contains("completed"),
        "{text}"
    );

    // A `run.start` far larger than one read of the agent's socket (8 KiB)
    // arrives whole: five arguments of 60,000 bytes each.
    let words: Vec<String> = (0..5u8)
        .map(|i| char::from(b'a' + i).to_string().repeat(60_000))
        .collect();
    let mut args = vec![
        "run",
        "web-1",
        "--",
        "sh",
        "-c",
        r#"printf %s "$*" | wc -c"#,
        "sh",
    ];
    args.extend(words.iter().map(String::as_str));
    let out = cli.output(&args);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "300004");
}
