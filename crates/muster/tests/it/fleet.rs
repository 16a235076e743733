//! The fleet from the command line: `top`, stored metrics, and agent events
//! published with `muster emit` from a command the agent runs.

use serde_json::Value;

use crate::fixture::{Server, muster_bin, path_in, tempdir};

fn meminfo_total_bytes() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

#[test]
fn top_and_stored_metrics_show_the_local_agent() {
    let dir = tempdir();
    let dev = Server::dev(dir.path());
    let cli = dev.cli(dev.token.as_deref().unwrap());
    // The agent sends a sample right after connecting; wait until it is stored.
    let mut series = Value::Null;
    cli.wait_until_json(
        "a stored sample",
        &["agents", "metrics", "local", "--json"],
        |v| {
            series = v.clone();
            v.as_array().is_some_and(|a| !a.is_empty())
        },
    );
    let sample = &series[0]["sample"];
    assert_eq!(
        sample["mem_total_bytes"].as_u64(),
        Some(meminfo_total_bytes())
    );
    // The root filesystem's size is what df (statvfs) says.
    let root = nix::sys::statvfs::statvfs("/").unwrap();
    let root_total = root.blocks() as u64 * root.fragment_size() as u64;
    let disks = sample["disks"].as_array().unwrap();
    assert!(
        disks
            .iter()
            .any(|d| d["total_bytes"].as_u64() == Some(root_total)),
        "no disk of {root_total} bytes in {disks:?}"
    );

    let top = cli.output(&["top", "--once"]);
    assert!(top.status.success());
    let text = String::from_utf8_lossy(&top.stdout);
    let row = text
        .lines()
        .find(|l| l.starts_with("local"))
        .expect("a row for local");
    assert!(row.contains("online"), "{text}");
    assert!(!row.contains(" - "), "the row has metrics: {text}");
}

#[test]
fn events_emitted_by_a_script_replay_after_a_hub_restart() {
    let dir = tempdir();
    let data = path_in(&dir, "data");
    let dev = Server::dev(&data);
    let token = dev.token.clone().unwrap();
    let cli = dev.cli(&token);
    let emit = muster_bin();
    // Seed 000's create_site progress, as a script that emits events.
    let script = format!(
        "for s in starting progress completed; do {emit} emit site.operation \"{{\\\"operation\\\":\\\"create\\\",\\\"domain\\\":\\\"example.com\\\",\\\"status\\\":\\\"$s\\\"}}\" || exit 9; done; \
         {emit} emit 'Not A Type' '{{}}' 2>&1 || echo refused"
    );
    let out = cli.output(&["run", "local", "--", "sh", "-c", &script]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("invalid event type"),
        "the script is told why: {said}"
    );
    assert!(said.trim_end().ends_with("refused"), "{said}");

    let statuses = |cli: &crate::fixture::Cli| -> Vec<String> {
        let out = cli.output(&["events", "local", "--since", "0", "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|e| e["type"] == "site.operation")
            .map(|e| e["data"]["status"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(statuses(&cli), ["starting", "progress", "completed"]);
    let from_one = cli.output(&["events", "local", "--since", "1", "--json"]);
    assert_eq!(String::from_utf8_lossy(&from_one.stdout).lines().count(), 2);

    dev.stop();
    let dev = Server::dev(&data);
    let cli = dev.cli(dev.token.as_deref().unwrap());
    assert_eq!(statuses(&cli), ["starting", "progress", "completed"]);
}
