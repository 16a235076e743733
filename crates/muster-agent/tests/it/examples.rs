//! The example site scripts (`examples/create-site.sh`, `delete-site.sh`) run
//! as declared actions, the way `examples/agent.toml` declares them, with a
//! stand-in for `muster` (found through `MUSTER_BIN`) that records each event.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use muster_agent::AgentConfig;
use muster_proto::actions::{ActionCall, ExecMode};
use muster_proto::messages::RunOutcome;
use muster_proto::{CommandSpec, RunId};
use serde_json::{Value, json};

use crate::fake_hub::{Harness, HubSide, recv_until_exited, run_command, send};

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// A test's directories: sites, backups, and the recorded events.
struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Self {
        let sandbox = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        let fake = sandbox.path("fake-muster");
        let script = format!(
            "#!/bin/sh\n[ \"$1\" = emit ] || exit 2\nprintf '%s\\n' \"$3\" >> '{}'\n",
            sandbox.path("events").display()
        );
        std::fs::write(&fake, script).unwrap();
        std::process::Command::new("chmod")
            .arg("+x")
            .arg(&fake)
            .status()
            .unwrap();
        sandbox
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The example actions, run through `env` so the scripts find the fake
    /// muster and the sandbox's directories.
    fn config(&self) -> String {
        let env = [
            format!("MUSTER_BIN={}", self.path("fake-muster").display()),
            format!("SITES_DIR={}", self.path("sites").display()),
            format!("BACKUPS_DIR={}", self.path("backups").display()),
        ];
        let script = |name: &str| examples_dir().join(name).display().to_string();
        format!(
            r#"
            exec = "actions-only"
            [actions.create_site]
            argv = ["/usr/bin/env", {e0:?}, {e1:?}, {e2:?}, {create:?}, "--domain={{domain}}", "--cache={{cache}}"]
            [actions.create_site.params.domain]
            type = "hostname"
            [actions.create_site.params.cache]
            type = "bool"
            default = true
            [actions.delete_site]
            argv = ["/usr/bin/env", {e0:?}, {e1:?}, {e2:?}, {delete:?}, "--domain={{domain}}", "--keep-backup={{keep_backup}}"]
            [actions.delete_site.params.domain]
            type = "hostname"
            [actions.delete_site.params.keep_backup]
            type = "bool"
            default = false
            "#,
            e0 = env[0],
            e1 = env[1],
            e2 = env[2],
            create = script("create-site.sh"),
            delete = script("delete-site.sh"),
        )
    }

    /// The events recorded so far, as JSON, emptying the record.
    fn take_events(&self) -> Vec<Value> {
        let path = self.path("events");
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let _ = std::fs::remove_file(&path);
        text.lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }
}

async fn call(ws: &mut HubSide, name: &str, params: &[(&str, &str)]) -> RunOutcome {
    let params: BTreeMap<_, _> = params
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let command = CommandSpec::Action(ActionCall {
        name: name.to_owned(),
        params,
    });
    send(ws, run_command(RunId::generate(), command)).await;
    let (_, exited) = recv_until_exited(ws).await;
    assert_eq!(exited.exit_code, Some(0), "{exited:?}");
    exited.outcome
}

fn statuses(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e["status"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn site_scripts_run_as_actions_and_report_each_step() {
    let sandbox = Sandbox::new();
    let config = AgentConfig::from_toml(&sandbox.config()).unwrap();
    let harness = Harness::start_with_actions(config.exec, config.actions).await;
    let (mut ws, hello) = harness.accept_ack().await;
    assert_eq!(hello.exec, ExecMode::ActionsOnly);
    let site = sandbox.path("sites").join("shop.example.com");

    let outcome = call(&mut ws, "create_site", &[("domain", "shop.example.com")]).await;
    assert_eq!(outcome, RunOutcome::Completed);
    let conf = std::fs::read_to_string(site.join("site.conf")).unwrap();
    assert_eq!(conf, "domain=shop.example.com\ncache=true\n");
    let events = sandbox.take_events();
    assert_eq!(
        statuses(&events),
        ["starting", "progress", "progress", "completed"]
    );
    assert_eq!(
        events[3],
        json!({"operation": "create", "domain": "shop.example.com", "status": "completed", "cache": true})
    );

    let params = [("domain", "shop.example.com"), ("keep_backup", "true")];
    let outcome = call(&mut ws, "delete_site", &params).await;
    assert_eq!(outcome, RunOutcome::Completed);
    assert!(!site.exists());
    assert!(sandbox.path("backups/shop.example.com.tar.gz").exists());
    let events = sandbox.take_events();
    assert_eq!(
        statuses(&events),
        ["starting", "progress", "progress", "completed"]
    );
    assert_eq!(events[1]["step"], "backup");
    assert_eq!(events[0]["operation"], "delete");
    harness.stop(ws).await;
}

#[tokio::test]
async fn deleting_a_missing_site_reports_failed() {
    let sandbox = Sandbox::new();
    let config = AgentConfig::from_toml(&sandbox.config()).unwrap();
    let harness = Harness::start_with_actions(config.exec, config.actions).await;
    let (mut ws, _) = harness.accept_ack().await;
    let run = RunId::generate();
    let command = CommandSpec::Action(ActionCall {
        name: "delete_site".into(),
        params: BTreeMap::from([("domain".into(), "gone.example".into())]),
    });
    send(&mut ws, run_command(run, command)).await;
    let (_, exited) = recv_until_exited(&mut ws).await;
    assert_eq!(exited.outcome, RunOutcome::Completed);
    assert_eq!(exited.exit_code, Some(1));
    let events = sandbox.take_events();
    assert_eq!(statuses(&events), ["starting", "failed"]);
    assert_eq!(events[1]["error"], "no site gone.example");
    harness.stop(ws).await;
}
