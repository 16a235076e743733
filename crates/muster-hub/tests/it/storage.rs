//! The store stops taking writes (a full disk, an I/O error) in the middle
//! of a run: nothing is published or acknowledged that was not committed,
//! new requests are refused with STORAGE_UNAVAILABLE, `/readyz` fails, and
//! when the store takes writes again the run completes with its output
//! intact, without a restart.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use muster_client::{ClientError, Event, RunRequest};
use muster_hub::store::{Change, RunFilter, Snapshot, StoredChunk};
use muster_hub::{SqliteStore, Store};
use muster_proto::jobs::{JobInfo, JobState, JobTarget};
use muster_proto::messages::{SeriesPoint, StoredEvent};
use muster_proto::types::CommandSpec;
use muster_proto::{
    AgentName, ErrorCode, HubToClient, JobId, OutputFrame, OutputHeader, OutputStream, RunId,
    RunInfo, RunState, UnixMillis,
};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::fixture::{TestHub, WAIT};

/// A SQLite store whose commits fail while `failing` is set, as they would
/// on a full disk.
struct FlakyStore {
    inner: SqliteStore,
    failing: AtomicBool,
    failed: AtomicU64,
}

impl FlakyStore {
    fn failed_commits(&self) -> u64 {
        self.failed.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Store for FlakyStore {
    async fn load(&self) -> anyhow::Result<Snapshot> {
        self.inner.load().await
    }
    async fn commit(&self, changes: Arc<Vec<Change>>) -> anyhow::Result<()> {
        if self.failing.load(Ordering::SeqCst) {
            self.failed.fetch_add(1, Ordering::SeqCst);
            anyhow::bail!("database or disk is full (injected)");
        }
        self.inner.commit(changes).await
    }
    async fn run(&self, id: RunId) -> anyhow::Result<Option<RunInfo>> {
        self.inner.run(id).await
    }
    async fn run_by_idempotency_key(&self, by: &str, key: &str) -> anyhow::Result<Option<RunInfo>> {
        self.inner.run_by_idempotency_key(by, key).await
    }
    async fn runs(
        &self,
        filter: &RunFilter,
        before: Option<RunId>,
        limit: u32,
    ) -> anyhow::Result<Vec<RunInfo>> {
        self.inner.runs(filter, before, limit).await
    }
    async fn output_since(
        &self,
        run: RunId,
        since: u64,
        limit: u32,
    ) -> anyhow::Result<Vec<StoredChunk>> {
        self.inner.output_since(run, since, limit).await
    }
    async fn events_since(
        &self,
        a: &AgentName,
        since: u64,
        limit: u32,
    ) -> anyhow::Result<Vec<StoredEvent>> {
        self.inner.events_since(a, since, limit).await
    }
    async fn metrics_since(
        &self,
        a: &AgentName,
        since: UnixMillis,
    ) -> anyhow::Result<Vec<SeriesPoint>> {
        self.inner.metrics_since(a, since).await
    }
    async fn job(&self, id: JobId) -> anyhow::Result<Option<JobInfo>> {
        self.inner.job(id).await
    }
    async fn job_by_idempotency_key(&self, by: &str, key: &str) -> anyhow::Result<Option<JobInfo>> {
        self.inner.job_by_idempotency_key(by, key).await
    }
    async fn job_targets(
        &self,
        job: JobId,
        after: Option<&AgentName>,
        limit: u32,
    ) -> anyhow::Result<Vec<JobTarget>> {
        self.inner.job_targets(job, after, limit).await
    }
    async fn jobs(
        &self,
        state: Option<JobState>,
        before: Option<JobId>,
        agents: Option<&[AgentName]>,
        limit: u32,
    ) -> anyhow::Result<Vec<JobInfo>> {
        self.inner.jobs(state, before, agents, limit).await
    }
    async fn job_events_since(
        &self,
        job: JobId,
        since: u64,
        limit: u32,
    ) -> anyhow::Result<Vec<(u64, String)>> {
        self.inner.job_events_since(job, since, limit).await
    }
    async fn audit(
        &self,
        since_ms: u64,
        after: u64,
        limit: u32,
    ) -> anyhow::Result<Vec<muster_proto::messages::AuditEntry>> {
        self.inner.audit(since_ms, after, limit).await
    }
}

async fn flaky_hub() -> (TestHub, Arc<FlakyStore>) {
    let data = tempfile::tempdir().unwrap();
    let store = Arc::new(FlakyStore {
        inner: SqliteStore::open(data.path()).await.unwrap(),
        failing: AtomicBool::new(false),
        failed: AtomicU64::new(0),
    });
    let hub = TestHub::start_on_store(store.clone(), data).await;
    (hub, store)
}

/// Waits until `check` holds, polling; fails after [`WAIT`].
async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// An agent speaking the wire protocol by hand, to see exactly what the hub
/// acknowledges and when.
struct RawAgent {
    ws: Socket,
}

impl RawAgent {
    async fn dial(hub: &TestHub, name: &str, token: &str) -> Self {
        let (mut ws, _) = tokio_tungstenite::connect_async(hub.ws_url("/ws/agent"))
            .await
            .unwrap();
        let hello = json!({"type": "hello", "data": {
            "token": token, "name": name, "hostname": "h", "os": "linux",
            "arch": "x86_64", "version": "test", "max_concurrency": 4}});
        ws.send(Message::text(hello.to_string())).await.unwrap();
        let mut agent = Self { ws };
        agent.expect("connection.ack").await;
        agent
    }

    async fn send(&mut self, msg: Value) {
        self.ws.send(Message::text(msg.to_string())).await.unwrap();
    }

    async fn output(&mut self, run: RunId, seq: u64, offset: u64, payload: &[u8]) {
        let header = OutputHeader {
            run,
            stream: OutputStream::Stdout,
            seq,
            offset,
            at: None,
        };
        let frame = OutputFrame::encode(&header, payload);
        self.ws.send(Message::binary(frame)).await.unwrap();
    }

    /// The next text message of type `kind`, skipping heartbeats.
    async fn expect(&mut self, kind: &str) -> Value {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some(Ok(Message::Text(text))) = self.ws.next().await {
                    let value: Value = serde_json::from_str(&text).unwrap();
                    match value["type"].as_str() {
                        Some("heartbeat") => continue,
                        Some(t) if t == kind => return value,
                        other => panic!("expected {kind}, got {other:?}: {value}"),
                    }
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {kind} arrived"))
    }

    /// Whatever text messages arrived without waiting, besides heartbeats.
    async fn pending(&mut self) -> Vec<Value> {
        let mut got = Vec::new();
        while let Ok(Some(Ok(message))) =
            tokio::time::timeout(Duration::from_millis(1), self.ws.next()).await
        {
            if let Message::Text(text) = message {
                let value: Value = serde_json::from_str(&text).unwrap();
                if value["type"] != "heartbeat" {
                    got.push(value);
                }
            }
        }
        got
    }
}

/// What a client received without waiting.
fn drain(events: &mut tokio::sync::mpsc::Receiver<Event>) -> Vec<Event> {
    let mut got = Vec::new();
    while let Ok(event) = events.try_recv() {
        got.push(event);
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_uncommitted_is_published_or_acknowledged_and_the_run_completes_after() {
    let (hub, store) = flaky_hub().await;
    let raw_token = hub
        .hub
        .agent_token(&AgentName::new("raw").unwrap())
        .await
        .unwrap();
    let raw_token = raw_token.expose().to_owned();
    let flap_token = hub
        .hub
        .agent_token(&AgentName::new("flap").unwrap())
        .await
        .unwrap();
    let flap_token = flap_token.expose().to_owned();
    let mut agent = RawAgent::dial(&hub, "raw", &raw_token).await;
    let (client, mut events) = hub.client().await;
    let request = RunRequest::new(
        AgentName::new("raw").unwrap(),
        CommandSpec::Argv(vec!["work".into()]),
    );
    let run = client
        .create_run(request.clone(), true)
        .await
        .unwrap()
        .run
        .id;
    let start = agent.expect("run.start").await;
    assert_eq!(start["data"]["run"], run.to_string());
    agent
        .send(json!({"type": "run.started", "data": {"run": run, "pid": 7}}))
        .await;
    let ack = agent.expect("run.ack").await;
    assert_eq!(ack["data"]["next_seq"], 0);
    agent.output(run, 0, 0, b"stored before\n").await;
    let ack = agent.expect("run.ack").await;
    assert_eq!(ack["data"]["next_seq"], 1);
    tokio::time::timeout(WAIT, async {
        while !matches!(events.recv().await, Some(Event::Output(_))) {}
    })
    .await
    .expect("the stored frame reaches the client");

    // The disk fills up. The agent goes on: output, then the exit.
    store.failing.store(true, Ordering::SeqCst);
    drain(&mut events);
    agent.output(run, 1, 14, b"while full\n").await;
    agent
        .send(json!({"type": "run.exited", "data": {"run": run, "outcome": "completed", "exit_code": 0}}))
        .await;
    until("three failed commits", async || store.failed_commits() >= 3).await;
    assert!(!hub.hub.health().writable());
    assert_eq!(hub.http_status("/readyz").await, 503);

    // Nothing of it was acknowledged, published or stored.
    assert!(
        agent.pending().await.is_empty(),
        "no ack while the store fails"
    );
    let seen = drain(&mut events);
    assert!(
        !seen.iter().any(|e| matches!(e, Event::Output(_))),
        "no output published: {seen:?}"
    );
    assert!(
        !seen.iter().any(|e| matches!(e, Event::Message(m) if matches!(&m.msg, HubToClient::RunStatus(s) if s.run.id == run))),
        "no status published: {seen:?}"
    );
    let stored = &store.inner;
    assert_eq!(stored.output_since(run, 0, 10).await.unwrap().len(), 1);
    assert_eq!(
        stored.run(run).await.unwrap().unwrap().state,
        RunState::Running
    );

    // The hub still serves what needs no write, however much queues up:
    // an agent coming and going a hundred times (each time a change to
    // store), then a new client's handshake and an agent listing.
    for _ in 0..100 {
        drop(RawAgent::dial(&hub, "flap", &flap_token).await);
    }
    let (fresh, _fresh_events) = hub.client().await;
    let listed = fresh.agents().await.unwrap();
    assert!(listed.iter().any(|a| a.name.as_str() == "flap"));

    // New work is refused, and says why.
    let refused = client.create_run(request.clone(), false).await.unwrap_err();
    match refused {
        ClientError::Hub(e) => {
            assert_eq!(e.code, ErrorCode::StorageUnavailable);
            assert!(e.recoverable);
        }
        other => panic!("expected STORAGE_UNAVAILABLE, got {other:?}"),
    }

    // Room again: the batch that failed commits, and everything follows.
    store.failing.store(false, Ordering::SeqCst);
    let mut acks = Vec::new();
    while acks.len() < 2 {
        acks.push(agent.expect("run.ack").await);
    }
    assert!(acks.iter().any(|a| a["data"]["next_seq"] == 2), "{acks:?}");
    assert!(acks.iter().any(|a| a["data"]["exited"] == true), "{acks:?}");
    let mut output = Vec::new();
    let finished = tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await.unwrap() {
                Event::Output(frame) => output.extend_from_slice(&frame.payload),
                Event::Message(m) => match m.msg {
                    HubToClient::RunStatus(s) if s.run.state.is_terminal() => return s.run,
                    _ => {}
                },
                Event::Closed { reason, .. } => panic!("closed: {reason}"),
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(finished.state, RunState::Completed);
    assert_eq!(output, b"while full\n");
    assert!(hub.hub.health().writable());
    assert_eq!(hub.http_status("/readyz").await, 200);
    let replayed: Vec<Bytes> = stored
        .output_since(run, 0, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.data)
        .collect();
    assert_eq!(replayed, [&b"stored before\n"[..], b"while full\n"]);
    client
        .create_run(request, false)
        .await
        .expect("accepted again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_process_keeps_writing_through_a_full_store_and_loses_nothing() {
    let (hub, store) = flaky_hub().await;
    let _agent = hub.agent("disk", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let script = format!(
        "echo before; while [ ! -e {} ]; do sleep 0.02; done; head -c 300000 /dev/zero | tr '\\0' a; echo; echo after",
        go.display()
    );
    let (client, mut events) = hub.client().await;
    let request = RunRequest::new(
        AgentName::new("disk").unwrap(),
        CommandSpec::Argv(vec!["sh".into(), "-c".into(), script]),
    );
    let run = client.create_run(request, true).await.unwrap().run.id;
    let mut output = Vec::new();
    tokio::time::timeout(WAIT, async {
        while !output.ends_with(b"before\n") {
            if let Some(Event::Output(frame)) = events.recv().await {
                output.extend_from_slice(&frame.payload);
            }
        }
    })
    .await
    .expect("the first line arrives");

    store.failing.store(true, Ordering::SeqCst);
    std::fs::write(&go, b"").unwrap();
    until("the store to fail", async || store.failed_commits() >= 3).await;
    assert_eq!(hub.http_status("/readyz").await, 503);
    store.failing.store(false, Ordering::SeqCst);

    let (finished, _) = tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await.unwrap() {
                Event::Output(frame) => output.extend_from_slice(&frame.payload),
                Event::Message(m) => match m.msg {
                    HubToClient::RunStatus(s) if s.run.state.is_terminal() => return (s.run, ()),
                    _ => {}
                },
                Event::Closed { reason, .. } => panic!("closed: {reason}"),
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(finished.state, RunState::Completed);
    assert_eq!(finished.exit_code, Some(0));
    let mut expected = b"before\n".to_vec();
    expected.extend(std::iter::repeat_n(b'a', 300_000));
    expected.extend_from_slice(b"\nafter\n");
    assert_eq!(output.len(), expected.len());
    assert!(output == expected, "live output differs");
    let stored: Vec<u8> = store
        .output_since(run, 0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .flat_map(|c| c.data.to_vec())
        .collect();
    assert!(stored == expected, "stored output differs");
}
