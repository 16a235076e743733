//! The contract every [`Store`] implementation must pass: what a batch
//! commit means (all or nothing, idempotent), what the startup snapshot
//! holds, and how every read pages and orders.
//!
//! Each check takes a fresh, empty store. An implementation runs the suite
//! with [`check_all`]; the SQLite store does so in its tests below, and a
//! PostgreSQL store would do the same.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use muster_proto::jobs::{
    JobInfo, JobProgress, JobSpec, JobState, JobTarget, StepSpec, TargetState,
};
use muster_proto::messages::{AgentEvent, AuditEntry, MetricsSample, StoredEvent};
use muster_proto::types::{CommandSpec, RunRequest};
use muster_proto::{AgentName, ErrorCode, JobId, OutputStream, RunId, RunInfo, RunState};

use super::{
    AgentFacts, AgentRecord, ApiKeyRecord, Change, EnrollmentRecord, MetricsRetention, RunFilter,
    RunUpdate, Store, StoredChunk, StoredInput,
};
use muster_proto::sessions::{SessionKind, SessionSpec};

/// Runs every check, each on a store from `fresh`.
pub(crate) async fn check_all<S, F, Fut>(fresh: F)
where
    S: Store,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    registry_round_trips(&fresh().await).await;
    runs_overlay_their_changing_fields_and_page_newest_first(&fresh().await).await;
    unfinished_runs_are_in_the_snapshot_with_their_next_seq(&fresh().await).await;
    output_is_byte_exact_ordered_and_deduplicated(&fresh().await).await;
    a_batch_is_all_or_nothing(&fresh().await).await;
    a_batch_committed_twice_changes_nothing_more(&fresh().await).await;
    events_are_numbered_per_agent(&fresh().await).await;
    jobs_page_their_targets_and_replay_their_events(&fresh().await).await;
    metrics_roll_up(&fresh().await).await;
    the_audit_log_appends_once_and_pages_by_seq(&fresh().await).await;
    enrollments_round_trip_and_count_each_use_once(&fresh().await).await;
    sessions_keep_their_inputs_writers_and_chunk_times(&fresh().await).await;
}

async fn sessions_keep_their_inputs_writers_and_chunk_times(store: &impl Store) {
    let mut session = run("a");
    session.state = RunState::Running;
    session.session = Some(SessionSpec::new(SessionKind::Pty));
    let plain = run("a");
    let input = |seq: u64, writer: &str, writer_seq: u64| {
        Change::AppendInput(Box::new(StoredInput {
            run: session.id,
            seq,
            writer: writer.into(),
            writer_seq,
            from: "ops".into(),
            at: 5_000 + seq,
            data: format!("line {seq}"),
        }))
    };
    let chunk = StoredChunk {
        seq: 0,
        stream: OutputStream::Input,
        offset: 0,
        at: Some(1_234),
        data: Bytes::from_static(b"{}"),
    };
    commit(
        store,
        vec![
            Change::InsertRun(Box::new(session.clone())),
            Change::InsertRun(Box::new(plain.clone())),
            input(1, "w1", 1),
            input(2, "w2", 1),
            input(3, "w1", 2),
            Change::AppendOutput(session.id, chunk.clone()),
            Change::InputApplied(session.id, 1),
        ],
    )
    .await;
    // Committed twice: nothing doubles, and applied never goes back.
    commit(
        store,
        vec![input(3, "w1", 2), Change::InputApplied(session.id, 0)],
    )
    .await;
    let snapshot = store.load().await.unwrap();
    let recovered = snapshot
        .runs
        .iter()
        .find(|u| u.run.id == session.id)
        .and_then(|u| u.session.clone())
        .expect("a session in flight recovers its inputs");
    assert_eq!((recovered.applied, recovered.last_input), (1, 3));
    let pending: Vec<_> = recovered
        .pending
        .iter()
        .map(|i| (i.seq, i.writer_seq))
        .collect();
    assert_eq!(
        pending,
        [(2, 1), (3, 2)],
        "the inputs after the applied one"
    );
    let mut writers = recovered.writers.clone();
    writers.sort();
    assert_eq!(writers, [("w1".to_owned(), 2), ("w2".to_owned(), 1)]);
    assert_eq!(
        store.output_since(session.id, 0, 10).await.unwrap(),
        [chunk]
    );
    let only = |session: Option<bool>| RunFilter {
        session,
        ..RunFilter::default()
    };
    let ids = |runs: Vec<RunInfo>| runs.into_iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.runs(&only(Some(true)), None, 10).await.unwrap()),
        [session.id]
    );
    assert_eq!(
        ids(store.runs(&only(Some(false)), None, 10).await.unwrap()),
        [plain.id]
    );
    let stored = store.run(session.id).await.unwrap().unwrap();
    assert_eq!(stored.session, session.session, "the spec round-trips");

    // The scrollback: the oldest chunks go, the newest that fit stay.
    let ten = |seq: u64| {
        Change::AppendOutput(
            session.id,
            StoredChunk {
                seq,
                stream: OutputStream::Stdout,
                offset: (seq - 1) * 10,
                at: Some(2_000 + seq),
                data: Bytes::from_static(b"0123456789"),
            },
        )
    };
    commit(store, (1..=5).map(ten).collect()).await;
    commit(store, vec![Change::TrimOutput(session.id, 25)]).await;
    commit(store, vec![Change::TrimOutput(session.id, 25)]).await;
    let kept: Vec<u64> = store
        .output_since(session.id, 0, 10)
        .await
        .unwrap()
        .iter()
        .map(|c| c.seq)
        .collect();
    assert_eq!(kept, [4, 5], "the newest 20 of the 25 bytes allowed");
}

async fn the_audit_log_appends_once_and_pages_by_seq(store: &impl Store) {
    assert_eq!(store.load().await.unwrap().next_audit_seq, 1);
    let entry = |seq: u64, at_ms: u64| AuditEntry {
        seq,
        at_ms,
        actor: "ops".into(),
        source: Some("127.0.0.1".into()),
        action: "run.create".into(),
        target: Some("web-1".into()),
        outcome: "ok".into(),
        detail: None,
    };
    let entries: Vec<_> = (1..=4).map(|seq| entry(seq, seq * 100)).collect();
    let appends = |entries: &[AuditEntry]| {
        entries
            .iter()
            .map(|e| Change::AppendAudit(Box::new(e.clone())))
            .collect::<Vec<_>>()
    };
    commit(store, appends(&entries)).await;
    let mut changed = entries[0].clone();
    changed.outcome = "FORBIDDEN".into();
    commit(store, appends(&[changed])).await;
    assert_eq!(
        store.audit(0, 0, 10).await.unwrap(),
        entries,
        "never rewritten"
    );
    assert_eq!(store.audit(0, 2, 1).await.unwrap(), entries[2..3]);
    assert_eq!(store.audit(300, 0, 10).await.unwrap(), entries[2..]);
    assert_eq!(store.load().await.unwrap().next_audit_seq, 5);

    let secret = crate::browser_token::SECRET_SETTING.to_owned();
    assert_eq!(store.load().await.unwrap().browser_token_secret, None);
    commit(store, vec![Change::SetSetting(secret.clone(), vec![1, 2])]).await;
    commit(store, vec![Change::SetSetting(secret, vec![3])]).await;
    let snapshot = store.load().await.unwrap();
    assert_eq!(snapshot.browser_token_secret, Some(vec![3]), "the latest");
}

async fn commit(store: &impl Store, changes: Vec<Change>) {
    store.commit(Arc::new(changes)).await.expect("commit");
}

fn name(s: &str) -> AgentName {
    AgentName::new(s).unwrap()
}

fn agent(s: &str) -> AgentRecord {
    AgentRecord {
        name: name(s),
        labels: BTreeMap::from([("role".into(), "web".into())]).into(),
        key_id: format!("key-{s}"),
        secret_hash: vec![1, 2, 3],
        facts: None,
        last_seen_ms: None,
    }
}

fn run(agent: &str) -> RunInfo {
    let request = RunRequest::new(name(agent), CommandSpec::Argv(vec!["true".into()]));
    RunInfo::queued(request, 1_000)
}

async fn registry_round_trips(store: &impl Store) {
    let key = ApiKeyRecord {
        key_id: "k1".into(),
        name: "admin".into(),
        role: "admin".into(),
        secret_hash: vec![9; 32],
        scope: None,
        expires_ms: None,
    };
    let scoped = ApiKeyRecord {
        key_id: "k2".into(),
        name: "ci".into(),
        role: "operator".into(),
        secret_hash: vec![8; 32],
        scope: Some("env=staging".into()),
        expires_ms: Some(9_000),
    };
    let gone = ApiKeyRecord {
        key_id: "k3".into(),
        name: "ci".into(),
        ..scoped.clone()
    };
    let facts = AgentFacts {
        hostname: "h".into(),
        max_concurrency: 4,
        ..AgentFacts::default()
    };
    commit(
        store,
        vec![
            Change::InsertApiKey(key.clone(), 1),
            Change::InsertApiKey(scoped.clone(), 1),
            Change::InsertApiKey(gone.clone(), 1),
            Change::InsertAgent(agent("web-2"), 1),
            Change::InsertAgent(agent("web-1"), 1),
            Change::InsertAgent(agent("gone"), 1),
        ],
    )
    .await;
    commit(
        store,
        vec![
            Change::SetAgentCredential {
                name: name("web-1"),
                key_id: "key-new".into(),
                secret_hash: vec![7],
            },
            Change::SetAgentLabels(
                name("web-1"),
                BTreeMap::from([("a".into(), "b".into())]).into(),
            ),
            Change::AgentSeen(name("web-1"), Some(facts.clone()), 55),
            Change::AgentSeen(name("web-2"), None, 66),
            Change::DeleteAgent(name("gone")),
            Change::SetApiKeyExpiry("k2".into(), 7_000),
            Change::DeleteApiKey("k3".into()),
        ],
    )
    .await;
    let mut snapshot = store.load().await.unwrap();
    snapshot.api_keys.sort_by(|a, b| a.key_id.cmp(&b.key_id));
    let scoped = ApiKeyRecord {
        expires_ms: Some(7_000),
        ..scoped
    };
    assert_eq!(snapshot.api_keys, vec![key, scoped]);
    let names: Vec<_> = snapshot.agents.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(
        names,
        ["web-1", "web-2"],
        "sorted by name, removed one gone"
    );
    let web1 = &snapshot.agents[0];
    assert_eq!(web1.key_id, "key-new");
    assert_eq!(web1.secret_hash, vec![7]);
    assert_eq!(web1.labels.get("a").map(String::as_str), Some("b"));
    assert_eq!(web1.facts.as_ref(), Some(&facts));
    assert_eq!(web1.last_seen_ms, Some(55));
    assert_eq!(snapshot.agents[1].last_seen_ms, Some(66));
    assert_eq!(
        snapshot.agents[1].facts, None,
        "facts kept when none are given"
    );
}

async fn runs_overlay_their_changing_fields_and_page_newest_first(store: &impl Store) {
    let mut runs: Vec<RunInfo> = (0..5).map(|_| run("a")).collect();
    // Ids made in one millisecond are not ordered by creation; order by id.
    runs.sort_by_key(|r| r.id);
    for r in runs.iter_mut().skip(1).step_by(2) {
        r.agent = name("b");
    }
    runs[1].idempotency_key = Some("key-1".into());
    runs[1].requested_by = Some("admin".into());
    commit(
        store,
        runs.iter()
            .cloned()
            .map(|r| Change::InsertRun(Box::new(r)))
            .collect(),
    )
    .await;
    let mut ended = runs[0].clone();
    ended.state = RunState::Rejected;
    ended.error = Some("no".into());
    ended.error_code = Some(ErrorCode::InvalidParams);
    ended.exit_code = Some(3);
    ended.output_bytes = 12;
    ended.output_truncated = true;
    ended.finished_ms = Some(2_000);
    commit(
        store,
        vec![Change::UpdateRun(Box::new(RunUpdate::of(&ended)))],
    )
    .await;
    assert_eq!(store.run(ended.id).await.unwrap(), Some(ended.clone()));
    assert_eq!(store.run(RunId::generate()).await.unwrap(), None);
    let keyed = store
        .run_by_idempotency_key("admin", "key-1")
        .await
        .unwrap();
    assert_eq!(keyed.map(|r| r.id), Some(runs[1].id));
    assert!(
        store
            .run_by_idempotency_key("other", "key-1")
            .await
            .unwrap()
            .is_none()
    );

    let ids = |page: Vec<RunInfo>| page.into_iter().map(|r| r.id).collect::<Vec<_>>();
    let all = RunFilter::default();
    let first = store.runs(&all, None, 2).await.unwrap();
    assert_eq!(ids(first.clone()), [runs[4].id, runs[3].id]);
    let second = store.runs(&all, Some(first[1].id), 10).await.unwrap();
    assert_eq!(ids(second), [runs[2].id, runs[1].id, runs[0].id]);
    let on_a = RunFilter {
        agent: Some(name("a")),
        ..RunFilter::default()
    };
    assert_eq!(
        ids(store.runs(&on_a, None, 10).await.unwrap()),
        [runs[4].id, runs[2].id, runs[0].id]
    );
    let rejected = RunFilter {
        state: Some(RunState::Rejected),
        ..RunFilter::default()
    };
    assert_eq!(
        ids(store.runs(&rejected, None, 10).await.unwrap()),
        [runs[0].id]
    );
    let in_scope = |agents: &[&str]| RunFilter {
        agents: Some(Arc::new(agents.iter().map(|a| name(a)).collect())),
        ..RunFilter::default()
    };
    assert_eq!(
        ids(store.runs(&in_scope(&["b", "z"]), None, 10).await.unwrap()),
        [runs[3].id, runs[1].id]
    );
    assert!(
        store
            .runs(&in_scope(&[]), None, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn unfinished_runs_are_in_the_snapshot_with_their_next_seq(store: &impl Store) {
    let (queued, mut running, mut done) = (run("a"), run("a"), run("a"));
    running.state = RunState::Running;
    done.state = RunState::Completed;
    let chunk = |seq: u64, bytes: &'static [u8]| StoredChunk {
        seq,
        stream: OutputStream::Stdout,
        offset: seq * 10,
        at: None,
        data: Bytes::from_static(bytes),
    };
    commit(
        store,
        vec![
            Change::InsertRun(Box::new(queued.clone())),
            Change::InsertRun(Box::new(running.clone())),
            Change::InsertRun(Box::new(done.clone())),
            Change::AppendOutput(running.id, chunk(0, b"abc")),
            Change::AppendOutput(running.id, chunk(1, b"de")),
        ],
    )
    .await;
    let snapshot = store.load().await.unwrap();
    let unfinished: Vec<_> = snapshot
        .runs
        .iter()
        .map(|u| (u.run.id, u.next_seq, u.run.output_bytes))
        .collect();
    assert_eq!(
        unfinished,
        [(queued.id, 0, 0), (running.id, 2, 5)],
        "oldest first"
    );
}

async fn output_is_byte_exact_ordered_and_deduplicated(store: &impl Store) {
    let r = run("a");
    let bytes: Vec<u8> = (0..=255u8).collect();
    let chunks: Vec<Change> = (0..10u64)
        .rev()
        .map(|seq| {
            Change::AppendOutput(
                r.id,
                StoredChunk {
                    seq,
                    stream: if seq % 2 == 0 {
                        OutputStream::Stdout
                    } else {
                        OutputStream::Stderr
                    },
                    offset: seq,
                    at: None,
                    data: Bytes::from(bytes.clone()),
                },
            )
        })
        .collect();
    commit(store, vec![Change::InsertRun(Box::new(r.clone()))]).await;
    commit(store, chunks.clone()).await;
    commit(store, chunks).await;
    let got = store.output_since(r.id, 3, 4).await.unwrap();
    let seqs: Vec<_> = got.iter().map(|c| c.seq).collect();
    assert_eq!(seqs, [3, 4, 5, 6]);
    assert!(got.iter().all(|c| c.data[..] == bytes[..]));
    assert_eq!(got[0].stream, OutputStream::Stderr);
    assert_eq!(got[1].stream, OutputStream::Stdout);
    assert_eq!(store.output_since(r.id, 0, 100).await.unwrap().len(), 10);
    assert!(store.output_since(r.id, 10, 100).await.unwrap().is_empty());
    // Framed for replay: the same chunks, as the agent framed them.
    let frames = store.output_frames_since(r.id, 3, 4).await.unwrap();
    assert_eq!(frames.len(), got.len());
    for ((seq, frame), chunk) in frames.into_iter().zip(&got) {
        let frame = muster_proto::OutputFrame::decode(frame).unwrap();
        assert_eq!(seq, chunk.seq);
        assert_eq!(frame.header.run, r.id);
        assert_eq!(
            (frame.header.seq, frame.header.stream, frame.header.offset),
            (chunk.seq, chunk.stream, chunk.offset)
        );
        assert_eq!(frame.payload, chunk.data);
    }
}

async fn a_batch_is_all_or_nothing(store: &impl Store) {
    let mut first = run("a");
    first.requested_by = Some("admin".into());
    first.idempotency_key = Some("same".into());
    commit(store, vec![Change::InsertRun(Box::new(first))]).await;
    // The second insert breaks the key's uniqueness: the whole batch fails.
    let innocent = run("b");
    let mut clash = run("a");
    clash.requested_by = Some("admin".into());
    clash.idempotency_key = Some("same".into());
    let batch = vec![
        Change::InsertAgent(agent("x"), 1),
        Change::InsertRun(Box::new(innocent.clone())),
        Change::InsertRun(Box::new(clash)),
    ];
    assert!(store.commit(Arc::new(batch)).await.is_err());
    assert_eq!(store.run(innocent.id).await.unwrap(), None);
    assert!(store.load().await.unwrap().agents.is_empty());
    // The store is still usable.
    commit(store, vec![Change::InsertRun(Box::new(innocent.clone()))]).await;
    assert!(store.run(innocent.id).await.unwrap().is_some());
}

async fn a_batch_committed_twice_changes_nothing_more(store: &impl Store) {
    let r = run("a");
    let event = StoredEvent {
        agent: name("a"),
        seq: 0,
        event: AgentEvent {
            kind: "x.y".into(),
            data: serde_json::json!({"n": 1}),
            run: None,
            ts_ms: 5,
        },
    };
    let batch = Arc::new(vec![
        Change::InsertApiKey(
            ApiKeyRecord {
                key_id: "k".into(),
                name: "n".into(),
                role: "viewer".into(),
                secret_hash: vec![1],
                scope: None,
                expires_ms: None,
            },
            1,
        ),
        Change::InsertAgent(agent("a"), 1),
        Change::InsertRun(Box::new(r.clone())),
        Change::AppendEvent(Box::new(event)),
        Change::InsertJob(Box::new(job(&["a"]))),
    ]);
    store.commit(batch.clone()).await.unwrap();
    store.commit(batch).await.unwrap();
    let snapshot = store.load().await.unwrap();
    assert_eq!(snapshot.api_keys.len(), 1);
    assert_eq!(snapshot.agents.len(), 1);
    assert_eq!(snapshot.runs.len(), 1);
    assert_eq!(snapshot.jobs.len(), 1);
    assert_eq!(
        store.events_since(&name("a"), 0, 10).await.unwrap().len(),
        1
    );
}

fn enrollment(token_id: &str, uses_left: u32) -> EnrollmentRecord {
    EnrollmentRecord {
        token_id: token_id.into(),
        secret_hash: vec![4; 32],
        labels: BTreeMap::from([("env".into(), "staging".into())]),
        uses_left,
        expires_ms: 9_000,
        created_ms: 1_000,
        created_by: "admin".into(),
    }
}

async fn enrollments_round_trip_and_count_each_use_once(store: &impl Store) {
    let (kept, used, revoked) = (
        enrollment("e-kept", 3),
        enrollment("e-used", 2),
        enrollment("e-revoked", 1),
    );
    let inserts = Arc::new(vec![
        Change::InsertEnrollment(Box::new(kept.clone())),
        Change::InsertEnrollment(Box::new(used.clone())),
        Change::InsertEnrollment(Box::new(revoked.clone())),
    ]);
    store.commit(inserts.clone()).await.unwrap();
    store.commit(inserts).await.unwrap();
    // One use, then a second; each batch committed twice counts once.
    for uses_left in [1, 0] {
        let used_once = Arc::new(vec![Change::SetEnrollmentUses {
            token_id: used.token_id.clone(),
            uses_left,
        }]);
        store.commit(used_once.clone()).await.unwrap();
        store.commit(used_once).await.unwrap();
    }
    // Its insert committed again does not give the uses back.
    commit(
        store,
        vec![Change::InsertEnrollment(Box::new(used.clone()))],
    )
    .await;
    let delete = Arc::new(vec![Change::DeleteEnrollment(revoked.token_id.clone())]);
    store.commit(delete.clone()).await.unwrap();
    store.commit(delete).await.unwrap();
    let used_up = EnrollmentRecord {
        uses_left: 0,
        ..used
    };
    let mut got = store.load().await.unwrap().enrollments;
    got.sort_by(|a, b| a.token_id.cmp(&b.token_id));
    assert_eq!(got, vec![kept, used_up]);
}

async fn events_are_numbered_per_agent(store: &impl Store) {
    let event = |agent: &str, seq: u64| {
        Change::AppendEvent(Box::new(StoredEvent {
            agent: name(agent),
            seq,
            event: AgentEvent {
                kind: "site.operation".into(),
                data: serde_json::json!({"seq": seq}),
                run: None,
                ts_ms: seq,
            },
        }))
    };
    commit(
        store,
        (0..5)
            .map(|s| event("a", s))
            .chain([event("b", 0)])
            .collect(),
    )
    .await;
    let got = store.events_since(&name("a"), 2, 2).await.unwrap();
    assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3]);
    assert_eq!(got[0].event.data["seq"], 2);
    let mut seqs = store.load().await.unwrap().event_seqs;
    seqs.sort();
    assert_eq!(seqs, [(name("a"), 5), (name("b"), 1)]);
}

/// A running job over `agents`, every target pending.
pub(crate) fn job(agents: &[&str]) -> JobInfo {
    let targets: Vec<JobTarget> = agents
        .iter()
        .map(|a| JobTarget {
            agent: name(a),
            state: TargetState::Pending,
            steps: Vec::new(),
            error: None,
            started_ms: None,
            finished_ms: None,
        })
        .collect();
    JobInfo {
        id: JobId::generate(),
        spec: JobSpec {
            name: None,
            selector: "all".into(),
            steps: vec![StepSpec {
                name: "run".into(),
                command: CommandSpec::Argv(vec!["true".into()]),
                env: BTreeMap::new(),
                cwd: None,
                timeout_ms: None,
                continue_on_failure: false,
            }],
            batch: None,
            fail_fast: false,
            online_only: false,
            priority: 0,
            ttl_ms: None,
        },
        state: JobState::Running,
        progress: JobProgress::count(targets.iter().map(|t| t.state)),
        batch_limit: 1,
        requested_by: Some("admin".into()),
        idempotency_key: Some("job-key".into()),
        cancel_requested: false,
        created_ms: 1,
        finished_ms: None,
        targets,
        targets_next_cursor: None,
    }
}

async fn jobs_page_their_targets_and_replay_their_events(store: &impl Store) {
    let running = job(&["c", "a", "b"]);
    let mut done = job(&["a"]);
    done.idempotency_key = None;
    commit(
        store,
        vec![
            Change::InsertJob(Box::new(running.clone())),
            Change::InsertJob(Box::new(done.clone())),
        ],
    )
    .await;
    let mut target = running.targets[1].clone();
    target.state = TargetState::Succeeded;
    done.state = JobState::Succeeded;
    done.targets = Vec::new();
    commit(
        store,
        vec![
            Change::UpdateTargets(running.id, vec![target.clone()]),
            Change::UpdateJob(Box::new(done.clone())),
            Change::AppendJobEvents(running.id, vec![(0, "e0".into()), (1, "e1".into())]),
        ],
    )
    .await;
    let page = store.job_targets(running.id, None, 2).await.unwrap();
    let names: Vec<_> = page.iter().map(|t| t.agent.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(page[0], target);
    let rest = store
        .job_targets(running.id, Some(&page[1].agent), 2)
        .await
        .unwrap();
    assert_eq!(
        rest.iter().map(|t| t.agent.as_str()).collect::<Vec<_>>(),
        ["c"]
    );

    let stored = store.job(running.id).await.unwrap().unwrap();
    assert!(stored.targets.is_empty(), "targets are read by page");
    assert_eq!(stored.spec, running.spec);
    let keyed = store
        .job_by_idempotency_key("admin", "job-key")
        .await
        .unwrap();
    assert_eq!(keyed.map(|j| j.id), Some(running.id));

    let listed = store.jobs(None, None, None, 10).await.unwrap();
    assert_eq!(
        listed.iter().map(|j| j.id).collect::<Vec<_>>(),
        [done.id, running.id]
    );
    let older = store.jobs(None, Some(done.id), None, 10).await.unwrap();
    assert_eq!(older.iter().map(|j| j.id).collect::<Vec<_>>(), [running.id]);
    let only_a = store
        .jobs(None, None, Some(&[name("a")]), 10)
        .await
        .unwrap();
    assert_eq!(
        only_a.iter().map(|j| j.id).collect::<Vec<_>>(),
        [done.id],
        "a job is in view only when all its targets are"
    );
    let finished = store
        .jobs(Some(JobState::Succeeded), None, None, 10)
        .await
        .unwrap();
    assert_eq!(finished.iter().map(|j| j.id).collect::<Vec<_>>(), [done.id]);

    let events = store.job_events_since(running.id, 1, 10).await.unwrap();
    assert_eq!(events, [(1, "e1".to_owned())]);
    let snapshot = store.load().await.unwrap();
    assert_eq!(snapshot.jobs.len(), 1, "only the running job");
    assert_eq!(snapshot.jobs[0].next_seq, 2);
    assert_eq!(snapshot.jobs[0].job.targets.len(), 3);
}

async fn metrics_roll_up(store: &impl Store) {
    let sample = |ts_ms: u64, cpu: f32| {
        Change::InsertMetrics(
            name("a"),
            Box::new(MetricsSample {
                ts_ms,
                cpu_percent: cpu,
                ..MetricsSample::default()
            }),
        )
    };
    commit(
        store,
        vec![sample(0, 10.0), sample(500, 30.0), sample(5_000, 50.0)],
    )
    .await;
    let retention = MetricsRetention {
        raw_keep_ms: 1_000,
        window_ms: 1_000,
        rollup_keep_ms: 1_000_000,
    };
    commit(store, vec![Change::CompactMetrics(retention, 5_500)]).await;
    let points = store.metrics_since(&name("a"), 0).await.unwrap();
    let got: Vec<_> = points
        .iter()
        .map(|p| (p.resolution_ms, p.sample.ts_ms, p.sample.cpu_percent))
        .collect();
    assert_eq!(got, [(1_000, 0, 20.0), (0, 5_000, 50.0)]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    #[tokio::test]
    async fn the_sqlite_store_keeps_the_contract() {
        let dirs = std::sync::Mutex::new(Vec::new());
        check_all(|| {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().to_owned();
            dirs.lock().unwrap().push(dir);
            async move { SqliteStore::open(&path).await.unwrap() }
        })
        .await;
    }
}
