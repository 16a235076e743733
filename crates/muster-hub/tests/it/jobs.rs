//! Jobs through the client crate: selectors, step events in order, batches,
//! fail-fast, continue-on-failure, cancellation and replay of `job:<id>`.

use muster_client::{Client, ClientError, Event, JobCreate, RunListQuery};
use muster_proto::jobs::{BatchSize, JobInfo, JobSpec, JobState, StepSpec, TargetState};
use muster_proto::messages::JobListQuery;
use muster_proto::{CommandSpec, ErrorCode, HubToClient, JobId, RunState};
use tokio_util::sync::CancellationToken;

use crate::fixture::{TestHub, WAIT, job_events, seq_of};

/// A shell step that exits `code` on the agents named in `failing`, 0 elsewhere.
/// Each in-process agent's event socket lives in its own state dir, named after it.
fn step(name: &str, failing: &[&str], code: i32) -> StepSpec {
    let cases: String = failing
        .iter()
        .map(|a| format!("*/agent-{a}/*) exit {code};; "))
        .collect();
    StepSpec {
        name: name.to_owned(),
        command: CommandSpec::Shell(format!(
            "echo {name}; case \"$MUSTER_AGENT_SOCKET\" in {cases}esac"
        )),
        env: Default::default(),
        cwd: None,
        timeout_ms: None,
        continue_on_failure: false,
    }
}

fn spec(selector: &str, steps: Vec<StepSpec>) -> JobSpec {
    JobSpec {
        name: None,
        selector: selector.to_owned(),
        steps,
        batch: None,
        fail_fast: false,
        online_only: false,
        priority: 0,
        ttl_ms: None,
    }
}

/// Five agents with different labels.
async fn fleet(hub: &TestHub) -> Vec<CancellationToken> {
    let agents = [
        ("web-1", [("role", "web"), ("env", "prod")]),
        ("web-2", [("role", "web"), ("env", "staging")]),
        ("web-3", [("role", "web"), ("env", "dev")]),
        ("db-1", [("role", "db"), ("env", "prod")]),
        ("cache-1", [("role", "cache"), ("env", "staging")]),
    ];
    let mut stops = Vec::new();
    for (name, labels) in agents {
        stops.push(hub.labeled_agent(name, &labels).await);
    }
    stops
}

/// `(agent, kind, step)` of each step event, in order.
fn step_trail(events: &[HubToClient]) -> Vec<(String, &'static str, u32)> {
    events
        .iter()
        .filter_map(|msg| match msg {
            HubToClient::JobStepStarted(e) => Some((e.agent.to_string(), "started", e.step)),
            HubToClient::JobStepCompleted(e) => {
                Some((e.agent.to_string(), "completed", e.outcome.step))
            }
            HubToClient::JobStepFailed(e) => Some((e.agent.to_string(), "failed", e.outcome.step)),
            _ => None,
        })
        .collect()
}

fn for_agent(trail: &[(String, &'static str, u32)], agent: &str) -> Vec<(&'static str, u32)> {
    trail
        .iter()
        .filter(|(a, _, _)| a == agent)
        .map(|(_, kind, step)| (*kind, *step))
        .collect()
}

async fn finished(client: &Client, id: JobId) -> JobInfo {
    client.job(id).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_reports_its_steps_in_order_and_stops_a_failed_target() {
    let hub = TestHub::start().await;
    let _fleet = fleet(&hub).await;
    let (client, mut events) = hub.client().await;

    let steps = vec![
        step("one", &[], 0),
        step("two", &["web-2"], 3),
        step("three", &[], 0),
    ];
    let job = client
        .create_job(spec("role=web", steps), true)
        .await
        .unwrap();
    assert_eq!(job.targets.len(), 3, "{job:?}");
    let seen = job_events(&mut events, job.id).await;

    let seqs: Vec<u64> = seen.iter().map(seq_of).collect();
    assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>());
    let trail = step_trail(&seen);
    let full = vec![
        ("started", 0),
        ("completed", 0),
        ("started", 1),
        ("completed", 1),
        ("started", 2),
        ("completed", 2),
    ];
    assert_eq!(for_agent(&trail, "web-1"), full);
    assert_eq!(for_agent(&trail, "web-3"), full);
    assert_eq!(
        for_agent(&trail, "web-2"),
        vec![
            ("started", 0),
            ("completed", 0),
            ("started", 1),
            ("failed", 1)
        ]
    );
    assert!(for_agent(&trail, "db-1").is_empty());

    let info = finished(&client, job.id).await;
    assert_eq!(info.state, JobState::Failed);
    assert_eq!((info.progress.succeeded, info.progress.failed), (2, 1));
    let web2 = info
        .targets
        .iter()
        .find(|t| t.agent.as_str() == "web-2")
        .unwrap();
    assert_eq!(web2.state, TargetState::Failed);
    assert_eq!(web2.steps.len(), 2);
    assert_eq!(web2.steps[1].exit_code, Some(3));
    assert!(web2.error.as_deref().unwrap().contains("\"two\" exited 3"));

    // The channel replays exactly what was published live.
    let (late, mut late_events) = hub.client().await;
    late.subscribe(&job.id.channel().to_string(), Some(0))
        .await
        .unwrap();
    let replayed = job_events(&mut late_events, job.id).await;
    assert_eq!(replayed, seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continue_on_failure_lets_the_target_go_on_and_succeed() {
    let hub = TestHub::start().await;
    let _fleet = fleet(&hub).await;
    let (client, mut events) = hub.client().await;

    let mut second = step("two", &["web-2"], 3);
    second.continue_on_failure = true;
    let steps = vec![step("one", &[], 0), second, step("three", &[], 0)];
    let job = client.create_job(spec("web-*", steps), true).await.unwrap();
    let seen = job_events(&mut events, job.id).await;

    let failed: Vec<_> = seen
        .iter()
        .filter_map(|m| match m {
            HubToClient::JobStepFailed(e) => {
                Some((e.agent.to_string(), e.outcome.step, e.continued))
            }
            _ => None,
        })
        .collect();
    assert_eq!(failed, vec![("web-2".to_owned(), 1, true)]);
    let trail = step_trail(&seen);
    assert_eq!(for_agent(&trail, "web-2").last(), Some(&("completed", 2)));
    let info = finished(&client, job.id).await;
    assert_eq!(info.state, JobState::Succeeded, "{info:#?}");
    assert_eq!(info.progress.succeeded, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_two_never_has_more_than_two_runs_in_flight() {
    let hub = TestHub::start().await;
    let _fleet = fleet(&hub).await;
    let (client, mut events) = hub.client().await;

    let mut job_spec = spec("all", vec![step("nap", &[], 0)]);
    job_spec.steps[0].command = CommandSpec::Shell("sleep 0.2".into());
    job_spec.batch = Some(BatchSize::Count(2));
    let job = client.create_job(job_spec, true).await.unwrap();
    assert_eq!(job.batch_limit, 2);
    let seen = job_events(&mut events, job.id).await;

    // From the job's own events: a step is in flight from its
    // `job.step.started` (the run is created) to its `job.step.completed`.
    let mut open = 0usize;
    let mut most_open = 0usize;
    let mut last_ts = 0;
    for msg in &seen {
        let (ts, delta) = match msg {
            HubToClient::JobStepStarted(e) => (e.ts_ms, 1),
            HubToClient::JobStepCompleted(e) | HubToClient::JobStepFailed(e) => (e.ts_ms, -1),
            _ => continue,
        };
        assert!(ts >= last_ts, "event timestamps go back: {seen:?}");
        last_ts = ts;
        open = open
            .checked_add_signed(delta)
            .expect("an end before its start");
        most_open = most_open.max(open);
    }
    assert_eq!(most_open, 2, "{seen:?}");

    let info = finished(&client, job.id).await;
    assert_eq!(info.state, JobState::Succeeded);
    let mut spans = Vec::new();
    for target in &info.targets {
        let run = client.run_info(target.steps[0].run).await.unwrap();
        spans.push((run.dispatched_ms.unwrap(), run.finished_ms.unwrap()));
    }
    assert_eq!(spans.len(), 5);
    let most = spans
        .iter()
        .map(|(start, _)| {
            spans
                .iter()
                .filter(|(s, f)| s <= start && start < f)
                .count()
        })
        .max()
        .unwrap();
    assert_eq!(most, 2, "{spans:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_fast_starts_nothing_after_the_first_failure() {
    let hub = TestHub::start().await;
    let _fleet = fleet(&hub).await;
    let (client, mut events) = hub.client().await;

    // Targets start in name order: cache-1 first, and it fails.
    let mut job_spec = spec("all", vec![step("check", &["cache-1"], 1)]);
    job_spec.batch = Some(BatchSize::Count(1));
    job_spec.fail_fast = true;
    let job = client.create_job(job_spec, true).await.unwrap();
    let seen = job_events(&mut events, job.id).await;

    let started = seen
        .iter()
        .filter(|m| matches!(m, HubToClient::JobStepStarted(_)))
        .count();
    assert_eq!(started, 1);
    let info = finished(&client, job.id).await;
    assert_eq!(info.state, JobState::Failed);
    assert_eq!((info.progress.failed, info.progress.skipped), (1, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_job_kills_its_runs_and_skips_the_rest() {
    let hub = TestHub::start().await;
    let _fleet = fleet(&hub).await;
    let (client, mut events) = hub.client().await;

    let mut job_spec = spec("all", vec![step("wait", &[], 0)]);
    job_spec.steps[0].command = CommandSpec::Shell("sleep 30".into());
    job_spec.batch = Some(BatchSize::Percent(40));
    let job = client.create_job(job_spec, true).await.unwrap();
    assert_eq!(job.batch_limit, 2);
    // Wait until both runs of the batch are on their agents.
    tokio::time::timeout(WAIT, async {
        loop {
            if let Event::Message(env) = events.recv().await.unwrap()
                && let HubToClient::JobProgress(p) = env.msg
                && p.progress.running == 2
            {
                return;
            }
        }
    })
    .await
    .unwrap();
    client.cancel_job(job.id).await.unwrap();
    job_events(&mut events, job.id).await;

    let info = finished(&client, job.id).await;
    assert_eq!(info.state, JobState::Cancelled);
    assert_eq!(info.progress.cancelled, 5, "{:?}", info.progress);
    for target in info.targets.iter().filter(|t| !t.steps.is_empty()) {
        let run = client.run_info(target.steps[0].run).await.unwrap();
        assert_eq!(run.state, RunState::Cancelled);
    }
    let again = client.cancel_job(job.id).await.unwrap_err();
    assert_eq!(again.code(), Some(ErrorCode::InvalidState));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selectors_pick_agents_and_bad_ones_are_refused() {
    let hub = TestHub::start().await;
    let _fleet = fleet(&hub).await;
    let (client, _events) = hub.client().await;

    let names = |agents: Vec<muster_proto::AgentInfo>| -> Vec<String> {
        agents.into_iter().map(|a| a.name.to_string()).collect()
    };
    let matched = client.agents_matching("role=web,env!=prod").await.unwrap();
    assert_eq!(names(matched), ["web-2", "web-3"]);
    let matched = client.agents_matching("env in (prod, dev)").await.unwrap();
    assert_eq!(names(matched), ["db-1", "web-1", "web-3"]);

    let bad = client.agents_matching("role~web").await.unwrap_err();
    assert_eq!(bad.code(), Some(ErrorCode::InvalidSelector));
    assert!(bad.to_string().contains("column 5"), "{bad}");
    let none = client
        .create_job(spec("role=nothing", vec![step("x", &[], 0)]), false)
        .await
        .unwrap_err();
    assert_eq!(none.code(), Some(ErrorCode::NoTargets));

    // An action step cannot bring its own environment: refused before any
    // job exists, with the code the agent would use.
    let mut with_env = step("greet", &[], 0);
    with_env.command = CommandSpec::Action(muster_proto::actions::ActionCall {
        name: "greet".into(),
        params: Default::default(),
    });
    with_env.env.insert("LD_PRELOAD".into(), "/tmp/x.so".into());
    let refused = client
        .create_job(spec("role=web", vec![with_env]), false)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::InvalidParams), "{refused}");
    assert!(refused.to_string().contains("step \"greet\""), "{refused}");
    let jobs = client.jobs(JobListQuery::default()).await.unwrap();
    assert!(jobs.is_empty(), "{jobs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_only_skips_offline_agents_and_the_job_still_succeeds() {
    let hub = TestHub::start().await;
    let _fleet = fleet(&hub).await;
    // Registered, never connected.
    hub.hub
        .agent_token(&"web-9".parse().unwrap())
        .await
        .unwrap();
    let (client, mut events) = hub.client().await;

    let mut job_spec = spec("web-*", vec![step("x", &[], 0)]);
    job_spec.online_only = true;
    let job = client.create_job(job_spec, true).await.unwrap();
    let seen = job_events(&mut events, job.id).await;
    let skipped: Vec<_> = seen
        .iter()
        .filter_map(|m| match m {
            HubToClient::JobTarget(t) if t.state == TargetState::Skipped => {
                Some(t.agent.to_string())
            }
            _ => None,
        })
        .collect();
    assert_eq!(skipped, ["web-9"]);
    let info = finished(&client, job.id).await;
    assert_eq!(info.state, JobState::Succeeded);
    assert_eq!((info.progress.succeeded, info.progress.skipped), (3, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_create_sent_again_with_its_key_finds_the_same_job() {
    let hub = TestHub::start().await;
    let _fleet = fleet(&hub).await;
    let (client, mut events) = hub.client().await;

    let create = JobCreate {
        spec: spec("role=web", vec![step("one", &[], 0)]),
        subscribe: true,
        idempotency_key: Some("deploy-42".into()),
    };
    let first = client.submit_job(create.clone()).await.unwrap();
    assert!(first.created);
    let seen = job_events(&mut events, first.job.id).await;

    // The same request again, as after a lost reply, on a new connection:
    // the same job, not a second one, and no subscription made for it.
    let (again, mut again_events) = hub.client().await;
    let second = again.submit_job(create.clone()).await.unwrap();
    assert!(!second.created);
    assert_eq!(second.job.id, first.job.id);
    assert_eq!(second.job.idempotency_key.as_deref(), Some("deploy-42"));
    again
        .subscribe(&first.job.id.channel().to_string(), Some(0))
        .await
        .unwrap();
    assert_eq!(job_events(&mut again_events, first.job.id).await, seen);

    let jobs = client.jobs(JobListQuery::default()).await.unwrap();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let runs = client.runs(RunListQuery::default()).await.unwrap();
    assert_eq!(runs.len(), 3, "one run per web agent: {runs:?}");

    // The key belongs to this job only; another key makes another job, and
    // a bad key is refused.
    let other = JobCreate {
        idempotency_key: Some("deploy-43".into()),
        ..create.clone()
    };
    let third = client.submit_job(other).await.unwrap();
    assert!(third.created);
    assert_ne!(third.job.id, first.job.id);
    let bad = JobCreate {
        idempotency_key: Some(String::new()),
        ..create
    };
    let err = client.submit_job(bad).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Hub(e) if e.code == ErrorCode::InvalidMessage),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_targets_wait_for_their_agent_and_fail_when_their_ttl_runs_out() {
    let hub = TestHub::start().await;
    let _fleet = fleet(&hub).await;
    // Registered, offline when the job is created.
    for name in ["web-8", "web-9"] {
        hub.hub.agent_token(&name.parse().unwrap()).await.unwrap();
    }
    let (client, mut events) = hub.client().await;

    let mut job_spec = spec("web-*", vec![step("x", &[], 0)]);
    job_spec.ttl_ms = Some(1_500);
    let job = client.create_job(job_spec, true).await.unwrap();
    assert_eq!(job.targets.len(), 5);
    // web-8 comes online within its runs' TTL; web-9 never does.
    let _web8 = hub.labeled_agent("web-8", &[]).await;
    let seen = job_events(&mut events, job.id).await;

    let info = finished(&client, job.id).await;
    assert_eq!(info.state, JobState::Failed, "{info:#?}");
    let target = |name: &str| {
        info.targets
            .iter()
            .find(|t| t.agent.as_str() == name)
            .unwrap_or_else(|| panic!("no target {name}"))
    };
    assert_eq!(target("web-8").state, TargetState::Succeeded);
    let web9 = target("web-9");
    assert_eq!(web9.state, TargetState::Failed);
    assert_eq!(web9.steps.len(), 1);
    assert_eq!(web9.steps[0].state, RunState::Expired);
    assert!(
        web9.error.as_deref().unwrap().contains("ended expired"),
        "{web9:?}"
    );
    assert_eq!((info.progress.succeeded, info.progress.failed), (4, 1));
    let trail = step_trail(&seen);
    assert_eq!(
        for_agent(&trail, "web-9"),
        vec![("started", 0), ("failed", 0)]
    );
}
