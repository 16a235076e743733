//! What Muster keeps on disk is its user's alone, and a database that is not
//! Muster's is never taken for a new one.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::fixture::{Server, muster_bin, path_in, tempdir};

/// Every directory under `root` (itself included) and every file in them.
fn walk(root: &Path, found: &mut Vec<(std::path::PathBuf, u32, bool)>) {
    let meta = std::fs::symlink_metadata(root).unwrap();
    found.push((
        root.to_owned(),
        meta.permissions().mode() & 0o777,
        meta.is_dir(),
    ));
    if meta.is_dir() {
        for entry in std::fs::read_dir(root).unwrap() {
            walk(&entry.unwrap().path(), found);
        }
    }
}

#[test]
fn the_data_dir_the_state_dir_and_their_files_are_private() {
    let dir = tempdir();
    let data = path_in(&dir, "data");
    let dev = Server::dev(&data);
    let cli = dev.cli(dev.token.as_deref().unwrap());
    let out = cli.output(&["run", "local", "--", "echo", "secret output"]);
    assert!(out.status.success());
    let state = path_in(&dir, "agent-state");
    let added = cli.json(&["agents", "add", "web-1", "--json"]);
    let _agent = Server::agent(
        &dev.hub,
        added["token"].as_str().unwrap(),
        "web-1",
        &state,
        &[],
    );
    cli.wait_agent("web-1", "online");
    assert!(cli.output(&["run", "web-1", "--", "true"]).status.success());

    let mut found = Vec::new();
    walk(&data, &mut found);
    walk(&state, &mut found);
    let names: Vec<String> = found
        .iter()
        .map(|(p, _, _)| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for expected in ["muster.db", "muster.db-wal", "runs.ledger", "agent.sock"] {
        assert!(
            names.iter().any(|n| n == expected),
            "no {expected} in {names:?}"
        );
    }
    for (path, mode, is_dir) in &found {
        let want = if *is_dir { 0o700 } else { 0o600 };
        assert_eq!(*mode, want, "{} is {mode:o}", path.display());
    }
}

#[test]
fn a_zero_length_or_foreign_database_is_refused_with_a_clear_message() {
    let dir = tempdir();
    for (case, bytes) in [
        ("empty", &b""[..]),
        ("foreign", &b"not a database at all"[..]),
    ] {
        let data = path_in(&dir, case);
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("muster.db"), bytes).unwrap();
        let out = Command::new(muster_bin())
            .args(["hub", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data)
            .stdin(Stdio::null())
            .output()
            .expect("run muster hub");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{case}: the hub started");
        assert!(
            !stdout.contains("MUSTER_TOKEN="),
            "{case}: a new admin key: {stdout}"
        );
        let why = match case {
            "empty" => "is empty (0 bytes)",
            _ => "is not a SQLite database",
        };
        assert!(stderr.contains(why), "{case}: {stderr}");
        assert_eq!(
            std::fs::read(data.join("muster.db")).unwrap(),
            bytes,
            "{case}: the file was changed"
        );
    }
}
