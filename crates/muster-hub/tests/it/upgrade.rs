//! A data dir written by hub 0.1.0 (`tests/fixtures/hub-0.1.0/muster.db`,
//! made by running that release's `muster hub`, agents and CLI) opens in
//! this hub: migrations apply in place, and every record, output byte, job
//! and event it held is still there and still behaves.
//!
//! What the fixture holds: agents web-1 (role=web, env=prod), db-1
//! (role=db) and ghost (role=none, never connected); eight runs (an exit 3
//! with stdout and stderr, 30,016 bytes of output, a timeout, a run
//! with the idempotency key `fixture-key`, a run that emitted an event, a
//! two-agent job's two runs, and a run still queued for ghost); one
//! succeeded job with 13 events; one agent event.

use muster_client::{Event, RunRequest};
use muster_proto::jobs::JobState;
use muster_proto::messages::{JobListQuery, RunListQuery};
use muster_proto::sessions::{SessionInput, SessionKind, SessionSpec};
use muster_proto::types::CommandSpec;
use muster_proto::{AgentName, HubToClient, JobId, RunId, RunState};

use crate::fixture::{TestHub, WAIT};

const FIXTURE: &[u8] = include_bytes!("../fixtures/hub-0.1.0/muster.db");
const EXIT_3: &str = "01M9775NW3WPCQ6WZ5SBAG3VMM";
const BINARY: &str = "01M9775NWCCWW5H0JRB50BQTRQ";
const TIMED_OUT: &str = "01M9775NWT3A2NYMVVCJPJD4VA";
const KEYED: &str = "01M9775PWDFEYE9QS2ZM68Z703";
const QUEUED: &str = "01M9775PXNN2P8V37DP7Q5XMYP";
const JOB: &str = "01M9775PX7GQN8819S9QXKQ8FA";

async fn upgraded_hub() -> TestHub {
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("muster.db"), FIXTURE).unwrap();
    TestHub::start_in(data).await
}

fn id(s: &str) -> RunId {
    s.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_of_hub_0_1_0_opens_with_everything_in_it() {
    let hub = upgraded_hub().await;
    let (client, _events) = hub.client().await;

    let agents = client.agents().await.unwrap();
    let names: Vec<_> = agents.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["db-1", "ghost", "web-1"]);
    let web = agents.iter().find(|a| a.name.as_str() == "web-1").unwrap();
    assert_eq!(web.labels.get("env").map(String::as_str), Some("prod"));
    assert_eq!(web.hostname.as_deref().map(str::is_empty), Some(false));

    let query = RunListQuery {
        limit: Some(100),
        ..RunListQuery::default()
    };
    let runs = client.runs(query).await.unwrap();
    assert_eq!(runs.len(), 8);
    let exit_3 = client.run_info(id(EXIT_3)).await.unwrap();
    assert_eq!(
        (exit_3.state, exit_3.exit_code),
        (RunState::Completed, Some(3))
    );
    assert_eq!(exit_3.output_bytes, 20);
    assert!(exit_3.finished_ms.is_some() && exit_3.pid.is_some());
    assert_eq!(
        client.run_info(id(TIMED_OUT)).await.unwrap().state,
        RunState::TimedOut
    );
    // Its time to live may have run out since the fixture was written.
    let queued = client.run_info(id(QUEUED)).await.unwrap().state;
    assert!(
        matches!(queued, RunState::Queued | RunState::Expired),
        "{queued}"
    );

    let jobs = client.jobs(JobListQuery::default()).await.unwrap();
    assert_eq!(jobs.len(), 1);
    let job = client.job(JOB.parse::<JobId>().unwrap()).await.unwrap();
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(job.targets.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgraded_output_events_and_keys_replay_and_behave() {
    let hub = upgraded_hub().await;
    let (client, mut events) = hub.client().await;

    // Output: byte for byte, from the start.
    client
        .subscribe(&id(BINARY).channel().to_string(), Some(0))
        .await
        .unwrap();
    let mut output = Vec::new();
    tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await.unwrap() {
                Event::Output(frame) => output.extend_from_slice(&frame.payload),
                Event::Message(m) if matches!(m.msg, HubToClient::StreamSynced(_)) => return,
                _ => {}
            }
        }
    })
    .await
    .unwrap();
    // dash's printf has no \x escapes: the escapes were printed as they are.
    let mut expected = br"\x00\x01\x02\xff".to_vec();
    expected.extend(std::iter::repeat_n(b'z', 30_000));
    assert!(output == expected, "{} bytes replayed", output.len());

    // The agent event, and the offset the next one gets.
    let subscribed = client.subscribe("agent:web-1", Some(0)).await.unwrap();
    assert_eq!(subscribed.next_seq, Some(1));
    let event = tokio::time::timeout(WAIT, async {
        loop {
            if let Event::Message(m) = events.recv().await.unwrap()
                && let HubToClient::AgentEvent(event) = m.msg
            {
                return event;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(event.event.kind, "site.operation");
    assert_eq!(event.event.data["domain"], "example.com");

    // The idempotency key the fixture's admin used still finds its run.
    let admin = hub.hub.mint_admin_key("admin", false).await.unwrap();
    let (as_admin, _) = muster_client::Client::connect(&hub.url, admin.expose())
        .await
        .unwrap();
    let mut request = RunRequest::new(
        AgentName::new("web-1").unwrap(),
        CommandSpec::Argv(vec!["echo".into(), "again".into()]),
    );
    request.idempotency_key = Some("fixture-key".into());
    let found = as_admin.create_run(request, false).await.unwrap();
    assert!(!found.created);
    assert_eq!(found.run.id, id(KEYED));

    // The keys it had are unscoped and never expire; its audit log starts
    // empty, and numbers from 1.
    let keys = as_admin
        .request(muster_proto::ClientToHub::KeyList(Default::default()))
        .await
        .unwrap();
    let HubToClient::KeyList(keys) = keys else {
        panic!("{keys:?}");
    };
    assert!(keys.keys.len() >= 2, "{keys:?}");
    assert!(
        keys.keys
            .iter()
            .all(|k| k.scope.is_none() && k.expires_ms.is_none())
    );
    let audit = as_admin
        .request(muster_proto::ClientToHub::AuditList(Default::default()))
        .await
        .unwrap();
    let HubToClient::AuditList(audit) = audit else {
        panic!("{audit:?}");
    };
    assert_eq!(audit.entries.first().map(|e| e.seq), Some(1));
    assert!(audit.entries.iter().any(|e| e.action == "run.create"));

    // Its runs are not sessions; a session opens on it and takes input.
    let only = |session: bool| RunListQuery {
        session: Some(session),
        limit: Some(100),
        ..RunListQuery::default()
    };
    assert!(as_admin.runs(only(true)).await.unwrap().is_empty());
    assert_eq!(as_admin.runs(only(false)).await.unwrap().len(), 8);
    let _agent = hub.agent("web-1", 1).await;
    let mut request = RunRequest::new(
        AgentName::new("web-1").unwrap(),
        CommandSpec::Argv(vec!["cat".into()]),
    );
    request.session = Some(Box::new(SessionSpec::new(SessionKind::Pipe)));
    let session = as_admin.create_run(request, false).await.unwrap().run.id;
    as_admin
        .attach_session(session, Some("upgrade"))
        .await
        .unwrap();
    let input = SessionInput {
        run: session,
        seq: 1,
        data: "after the upgrade".into(),
    };
    as_admin.session_input(input).await.unwrap();
    let (watcher, mut watched) = hub.client().await;
    watcher
        .subscribe(&session.channel().to_string(), Some(0))
        .await
        .unwrap();
    let mut stdout = Vec::new();
    tokio::time::timeout(WAIT, async {
        while !stdout.ends_with(b"after the upgrade\n") {
            if let Event::Output(frame) = watched.recv().await.unwrap()
                && frame.header.stream == muster_proto::OutputStream::Stdout
            {
                assert!(
                    frame.header.at.is_some(),
                    "a session's chunks carry when they were read"
                );
                stdout.extend_from_slice(&frame.payload);
            }
        }
    })
    .await
    .expect("the session answers");
}
