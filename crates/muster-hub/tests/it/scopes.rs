//! Keys scoped to a label selector, rotated with an overlap, and expiring:
//! a scoped key sees, runs on and subscribes to only the agents its scope
//! matches, and a key whose time is up closes its connections.

use std::time::{Duration, Instant};

use muster_client::{Client, ClientError, Event};
use muster_proto::messages::{JobListQuery, RunListQuery};
use muster_proto::types::{CommandSpec, RunRequest};
use muster_proto::{AgentName, ErrorCode, HubToClient, RunId};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::fixture::{TestHub, WAIT, until_run_ends};

/// Sends `{"type": kind, "data": data}` and returns the answer.
async fn ask(client: &Client, kind: &str, data: Value) -> Result<HubToClient, ClientError> {
    let msg = serde_json::from_value(json!({"type": kind, "data": data})).unwrap();
    client.request(msg).await
}

/// Mints a key through `key.create` and returns its token.
async fn create_key(admin: &Client, data: Value) -> String {
    match ask(admin, "key.create", data).await.unwrap() {
        HubToClient::KeyCreated(created) => created.token,
        other => panic!("{other:?}"),
    }
}

fn forbidden(answer: Result<impl std::fmt::Debug, ClientError>) -> bool {
    matches!(&answer, Err(e) if e.code() == Some(ErrorCode::Forbidden))
}

fn name(s: &str) -> AgentName {
    AgentName::new(s).unwrap()
}

/// Runs `true` on `agent` and waits for it to end; returns its id.
async fn run_to_end(client: &Client, events: &mut mpsc::Receiver<Event>, agent: &str) -> RunId {
    let request = RunRequest::new(name(agent), CommandSpec::Argv(vec!["true".into()]));
    let accepted = client.create_run(request, true).await.unwrap();
    let (ended, _) = until_run_ends(events).await;
    assert_eq!(ended.exit_code, Some(0));
    accepted.run.id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_scoped_to_staging_cannot_run_on_list_or_subscribe_to_prod() {
    let hub = TestHub::start().await;
    let _stage = hub.labeled_agent("stage-1", &[("env", "staging")]).await;
    let _prod = hub.labeled_agent("prod-1", &[("env", "prod")]).await;
    let (admin, mut admin_events) = hub.client().await;
    let refused = ask(
        &admin,
        "key.create",
        json!({"name": "root-2", "role": "admin", "scope": "env=staging"}),
    )
    .await;
    assert_eq!(
        refused.unwrap_err().code(),
        Some(ErrorCode::InvalidMessage),
        "an admin key cannot be scoped"
    );
    let token = create_key(
        &admin,
        json!({"name": "ci", "role": "operator", "scope": "env=staging"}),
    )
    .await;
    let prod_run = run_to_end(&admin, &mut admin_events, "prod-1").await;
    let all_job = match ask(
        &admin,
        "job.create",
        json!({"selector": "all", "steps": [{"name": "s", "command": {"argv": ["true"]}}]}),
    )
    .await
    .unwrap()
    {
        HubToClient::JobAccepted(accepted) => accepted.job,
        other => panic!("{other:?}"),
    };
    assert_eq!(all_job.targets.len(), 2);

    let (ci, mut ci_events) = Client::connect(&hub.url, &token).await.unwrap();
    assert_eq!(
        ci.ack().principal.scope.as_ref().map(ToString::to_string),
        Some("env=staging".to_owned())
    );
    // Listing: only its agents, its runs and its jobs.
    let agents: Vec<_> = ci.agents().await.unwrap();
    let names: Vec<_> = agents.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["stage-1"]);
    assert!(forbidden(
        ask(&ci, "agent.get", json!({"name": "prod-1"})).await
    ));
    // Running: not on prod, by name or through a job over all.
    let on_prod = RunRequest::new(name("prod-1"), CommandSpec::Argv(vec!["true".into()]));
    assert!(forbidden(ci.create_run(on_prod, true).await));
    let stage_run = run_to_end(&ci, &mut ci_events, "stage-1").await;
    let job = match ask(
        &ci,
        "job.create",
        json!({"selector": "all", "steps": [{"name": "s", "command": {"argv": ["true"]}}]}),
    )
    .await
    .unwrap()
    {
        HubToClient::JobAccepted(accepted) => accepted.job,
        other => panic!("{other:?}"),
    };
    let targets: Vec<_> = job.targets.iter().map(|t| t.agent.as_str()).collect();
    assert_eq!(targets, ["stage-1"], "a job over all covers only the scope");
    let nothing = ask(
        &ci,
        "job.create",
        json!({"selector": "env=prod", "steps": [{"name": "s", "command": {"argv": ["true"]}}]}),
    )
    .await;
    assert_eq!(nothing.unwrap_err().code(), Some(ErrorCode::NoTargets));

    let runs = ci.runs(RunListQuery::default()).await.unwrap();
    let run_ids: Vec<_> = runs.iter().map(|r| r.id).collect();
    assert!(run_ids.contains(&stage_run), "{run_ids:?}");
    assert!(!run_ids.contains(&prod_run), "the prod run is listed");
    assert!(runs.iter().all(|r| r.agent.as_str() == "stage-1"));
    let jobs = ci.jobs(JobListQuery::default()).await.unwrap();
    let job_ids: Vec<_> = jobs.iter().map(|j| j.id).collect();
    assert!(job_ids.contains(&job.id) && !job_ids.contains(&all_job.id));
    assert!(forbidden(ci.run_info(prod_run).await));
    assert!(forbidden(ci.job(all_job.id).await));
    assert!(forbidden(ci.cancel_run(prod_run).await));
    assert!(ci.run_info(stage_run).await.is_ok());

    // Subscribing: not to prod's channels, nor to a run or job on prod.
    for channel in [
        "agent:prod-1".to_owned(),
        "metrics:prod-1".to_owned(),
        format!("run:{prod_run}"),
        format!("job:{}", all_job.id),
        "*".to_owned(),
    ] {
        assert!(
            forbidden(ci.subscribe(&channel, None).await),
            "{channel} was allowed"
        );
    }
    ci.subscribe("agent:stage-1", None).await.unwrap();
    ci.subscribe(&format!("run:{stage_run}"), Some(0))
        .await
        .unwrap();

    // On `fleet` it hears of its agents only: prod's change comes first,
    // yet the first status it sees is staging's.
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(200), ci_events.recv()).await
    {
    }
    for agent in ["prod-1", "stage-1"] {
        ask(
            &admin,
            "agent.label",
            json!({"name": agent, "set": {"touched": "yes"}}),
        )
        .await
        .unwrap();
    }
    let first = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(Event::Message(env)) = ci_events.recv().await
                && let HubToClient::AgentStatus(status) = env.msg
            {
                return status.agent.name;
            }
        }
    })
    .await
    .expect("a fleet event");
    assert_eq!(first.as_str(), "stage-1");
}

/// Waits until `events` ends (the connection closed); returns how long it took.
async fn closed(events: &mut mpsc::Receiver<Event>) -> Duration {
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), async {
        while events.recv().await.is_some() {}
    })
    .await
    .expect("the connection closes");
    started.elapsed()
}

fn auth_failed<T: std::fmt::Debug>(result: Result<T, ClientError>) -> bool {
    matches!(result, Err(ClientError::Auth(_)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_works_through_its_overlap_and_an_expired_key_is_closed() {
    let hub = TestHub::start().await;
    let (admin, _admin_events) = hub.client().await;
    let old = create_key(&admin, json!({"name": "ops", "role": "operator"})).await;
    let (_old_conn, mut old_events) = Client::connect(&hub.url, &old).await.unwrap();

    // With an overlap, both tokens work until it ends.
    let overlap_ms = 1500;
    let rotated = match ask(
        &admin,
        "key.rotate",
        json!({"name": "ops", "overlap_ms": overlap_ms}),
    )
    .await
    .unwrap()
    {
        HubToClient::KeyRotated(rotated) => rotated,
        other => panic!("{other:?}"),
    };
    let rotated_at = Instant::now();
    assert_eq!(rotated.closed_connections, 0);
    assert_eq!(rotated.key.role, muster_proto::Role::Operator);
    let new = rotated.token;
    assert_ne!(new, old);
    let (_fresh, _fresh_events) = Client::connect(&hub.url, &old).await.unwrap();
    let (new_conn, _new_events) = Client::connect(&hub.url, &new).await.unwrap();
    closed(&mut old_events).await;
    let after = rotated_at.elapsed();
    assert!(
        after >= Duration::from_millis(overlap_ms) - Duration::from_millis(50),
        "closed after {after:?}, before the overlap ended"
    );
    assert!(
        after < Duration::from_millis(overlap_ms) + Duration::from_secs(1),
        "closed {after:?} after the rotation"
    );
    assert!(auth_failed(Client::connect(&hub.url, &old).await));
    assert!(
        new_conn.agents().await.is_ok(),
        "the new token's connection"
    );

    // Without an overlap, the old token stops at once.
    let (_conn, mut events) = Client::connect(&hub.url, &new).await.unwrap();
    let started = Instant::now();
    let rotated = match ask(&admin, "key.rotate", json!({"name": "ops"}))
        .await
        .unwrap()
    {
        HubToClient::KeyRotated(rotated) => rotated,
        other => panic!("{other:?}"),
    };
    assert_eq!(rotated.closed_connections, 2);
    closed(&mut events).await;
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(auth_failed(Client::connect(&hub.url, &new).await));
    let (newest, _e) = Client::connect(&hub.url, &rotated.token).await.unwrap();
    assert!(newest.agents().await.is_ok());

    // A key that expires closes its connections when its time is up.
    let short = create_key(
        &admin,
        json!({"name": "temp", "role": "viewer", "expires_in_ms": 800}),
    )
    .await;
    let created_at = Instant::now();
    let (_temp, mut temp_events) = Client::connect(&hub.url, &short).await.unwrap();
    closed(&mut temp_events).await;
    let lived = created_at.elapsed();
    assert!(
        lived < Duration::from_millis(800) + Duration::from_secs(1),
        "{lived:?}"
    );
    assert!(auth_failed(Client::connect(&hub.url, &short).await));
    let listed = match ask(&admin, "key.list", json!({})).await.unwrap() {
        HubToClient::KeyList(list) => list.keys,
        other => panic!("{other:?}"),
    };
    let names: Vec<_> = listed.iter().map(|k| k.name.as_str()).collect();
    assert!(
        !names.contains(&"temp"),
        "an expired key is gone: {names:?}"
    );
    assert_eq!(names.iter().filter(|n| **n == "ops").count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_channel_and_log_record_requests_logins_and_refusals() {
    let hub = TestHub::start().await;
    let _agent = hub.agent("web-1", 1).await;
    let (admin, mut admin_events) = hub.client().await;
    admin.subscribe("audit", None).await.unwrap();
    let viewer = create_key(&admin, json!({"name": "watcher", "role": "viewer"})).await;
    let (watcher, _e) = Client::connect(&hub.url, &viewer).await.unwrap();
    let on_web = RunRequest::new(name("web-1"), CommandSpec::Argv(vec!["true".into()]));
    assert!(forbidden(watcher.create_run(on_web.clone(), false).await));
    assert!(forbidden(watcher.subscribe("audit", None).await));
    assert!(auth_failed(
        Client::connect(&hub.url, "mst_nonexistent00_x").await
    ));
    let run = admin.create_run(on_web, false).await.unwrap().run.id;

    let admin_name = admin.ack().principal.name.clone();
    let expected = [
        (admin_name.as_str(), "key.create", "ok"),
        ("watcher", "login", "ok"),
        ("watcher", "run.create", "FORBIDDEN"),
        ("watcher", "subscribe", "FORBIDDEN"),
        ("-", "login", "AUTH_FAILED"),
        (admin_name.as_str(), "run.create", "ok"),
    ];
    // Other entries (the admin's own login) may come too, in any number.
    let mut seen = Vec::new();
    let all_seen = |seen: &[muster_proto::messages::AuditEntry]| {
        expected.iter().all(|want| {
            seen.iter()
                .any(|e| (e.actor.as_str(), e.action.as_str(), e.outcome.as_str()) == *want)
        })
    };
    let waited = tokio::time::timeout(WAIT, async {
        while !all_seen(&seen) {
            if let Some(Event::Message(env)) = admin_events.recv().await
                && let HubToClient::AuditEntry(entry) = env.msg
            {
                seen.push(entry);
            }
        }
    })
    .await;
    assert!(waited.is_ok(), "audit entries: {seen:?}");
    let ran = seen
        .iter()
        .find(|e| e.action == "run.create" && e.outcome == "ok");
    let ran = ran.unwrap();
    assert_eq!(ran.target.as_deref(), Some("web-1"));
    assert_eq!(
        ran.detail.as_deref(),
        Some(format!("run {run}: true").as_str())
    );
    assert_eq!(ran.source.as_deref(), Some("127.0.0.1"));
    let seqs: Vec<_> = seen.iter().map(|e| e.seq).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");

    // The same entries are stored, and page.
    let listed = match ask(&admin, "audit.list", json!({"limit": 2}))
        .await
        .unwrap()
    {
        HubToClient::AuditList(list) => list,
        other => panic!("{other:?}"),
    };
    assert_eq!(listed.entries.len(), 2);
    let cursor = listed.next_cursor.expect("more entries");
    let rest = match ask(&admin, "audit.list", json!({"cursor": cursor}))
        .await
        .unwrap()
    {
        HubToClient::AuditList(list) => list,
        other => panic!("{other:?}"),
    };
    assert_eq!(rest.entries[0].seq, listed.entries[1].seq + 1);
    let all: Vec<_> = listed.entries.iter().chain(&rest.entries).collect();
    for entry in &seen {
        assert!(all.contains(&entry), "{entry:?} is not stored");
    }
}
