//! The job follower against a fake hub: a whole job with its steps' output,
//! a drop in the middle resumed without gap or duplicate, holes that a
//! replay does not fill, and a job followed without its output.

use std::collections::BTreeMap;
use std::time::Duration;

use muster_proto::jobs::JobInfo;
use muster_proto::messages::{JobEnvelope, RunEnvelope, StreamSynced, Subscribed};
use muster_proto::{
    Channel, ClientToHub, CloseCode, Envelope, HubToClient, JobId, OutputStream, RunId, RunInfo,
    RunState,
};
use serde_json::json;

use super::fake_hub::{HubSide, accept, close_code, close_with, listen, recv, send};
use crate::{Client, FollowError, JobEvent, JobFollowEvent, JobFollowOptions, JobFollower};

/// Bound on a test that fails by hanging.
const TEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A fake hub's view of one job and its runs.
struct Script {
    job: JobId,
    runs: [RunId; 2],
}

impl Script {
    fn new() -> Self {
        Self {
            job: JobId::generate(),
            runs: [RunId::generate(), RunId::generate()],
        }
    }

    fn agent(&self, run: RunId) -> &'static str {
        if run == self.runs[0] {
            "web-1"
        } else {
            "web-2"
        }
    }

    /// Sends the job event `kind` numbered `seq`, with `fields`.
    async fn event(&self, hub: &mut HubSide, kind: &str, seq: u64, fields: serde_json::Value) {
        let mut data = json!({"job": self.job, "seq": seq, "ts_ms": 1});
        data.as_object_mut()
            .unwrap()
            .extend(fields.as_object().unwrap().clone());
        let msg: HubToClient = serde_json::from_value(json!({"type": kind, "data": data})).unwrap();
        send(hub, Envelope::event(Channel::Job(self.job), msg)).await;
    }

    async fn progress(&self, hub: &mut HubSide, seq: u64, state: &str) {
        let counts = json!({"state": state, "total": 2, "pending": 0, "queued": 0, "running": 0,
                            "succeeded": 0, "failed": 0, "skipped": 0, "cancelled": 0});
        self.event(hub, "job.progress", seq, counts).await;
    }

    async fn started(&self, hub: &mut HubSide, seq: u64, run: RunId) {
        let fields = json!({"agent": self.agent(run), "step": 0, "name": "run", "run": run});
        self.event(hub, "job.step.started", seq, fields).await;
    }

    async fn completed(&self, hub: &mut HubSide, seq: u64, run: RunId) {
        let fields = json!({"agent": self.agent(run), "name": "run", "step": 0, "run": run,
                            "state": "completed", "exit_code": 0});
        self.event(hub, "job.step.completed", seq, fields).await;
    }

    async fn output(&self, hub: &mut HubSide, run: RunId, seq: u64, payload: &[u8]) {
        super::fake_hub::output(hub, run, seq, payload).await;
    }

    async fn synced(&self, hub: &mut HubSide, channel: Channel, next_seq: u64) {
        let synced = HubToClient::StreamSynced(StreamSynced {
            channel: channel.to_string(),
            next_seq,
            truncated: false,
        });
        send(hub, Envelope::event(channel, synced)).await;
    }

    async fn status(&self, hub: &mut HubSide, run: RunId, state: RunState) {
        let status = HubToClient::RunStatus(RunEnvelope {
            run: self.run_info(run, state),
        });
        send(hub, Envelope::event(Channel::Run(run), status)).await;
    }

    fn run_info(&self, run: RunId, state: RunState) -> RunInfo {
        let json = json!({"id": run, "agent": self.agent(run), "command": {"argv": ["true"]},
                          "priority": 0, "state": state, "created_ms": 1, "job": self.job,
                          "step": 0});
        serde_json::from_value(json).unwrap()
    }

    /// Answers the next `count` subscriptions, whatever their order; returns
    /// each channel's `since`.
    async fn subscriptions(&self, hub: &mut HubSide, count: usize) -> BTreeMap<String, u64> {
        let mut asked = BTreeMap::new();
        for _ in 0..count {
            let request = recv(hub).await;
            let ClientToHub::Subscribe(subscribe) = request.msg else {
                panic!("expected subscribe, got {:?}", request.msg)
            };
            let channel: Channel = subscribe.channel.parse().unwrap();
            let run = match channel {
                Channel::Run(run) => Some(self.run_info(run, RunState::Running)),
                _ => None,
            };
            asked.insert(subscribe.channel.clone(), subscribe.since.unwrap());
            let subscribed = Subscribed {
                channel: subscribe.channel,
                run,
                next_seq: None,
            };
            let reply = HubToClient::Subscribed(subscribed);
            send(hub, Envelope::reply(request.id, reply)).await;
        }
        asked
    }

    /// Answers `job.get` with the job in `state`.
    async fn job_info(&self, hub: &mut HubSide, state: &str) {
        let request = recv(hub).await;
        assert!(
            matches!(request.msg, ClientToHub::JobGet(_)),
            "{:?}",
            request.msg
        );
        let job: JobInfo = serde_json::from_value(json!({
            "id": self.job,
            "spec": {"selector": "role=web", "steps": [{"name": "run", "command": {"argv": ["true"]}}]},
            "state": state,
            "progress": {"total": 2, "pending": 0, "queued": 0, "running": 0,
                         "succeeded": 2, "failed": 0, "skipped": 0, "cancelled": 0},
            "batch_limit": 2,
            "created_ms": 1,
            "targets": [{"agent": "web-1", "state": "succeeded"}, {"agent": "web-2", "state": "succeeded"}],
        }))
        .unwrap();
        let reply = HubToClient::JobInfo(JobEnvelope { job });
        send(hub, Envelope::reply(request.id, reply)).await;
    }

    fn job_channel(&self) -> String {
        Channel::Job(self.job).to_string()
    }

    fn run_channel(&self, index: usize) -> String {
        Channel::Run(self.runs[index]).to_string()
    }
}

/// What a follower passed on, in order and per run.
#[derive(Debug, Default)]
struct Seen {
    /// Events in order, output chunks left out.
    events: Vec<String>,
    /// Each agent's output, concatenated.
    output: BTreeMap<String, Vec<u8>>,
    error: Option<FollowError>,
}

async fn drain(mut follower: JobFollower) -> Seen {
    let mut seen = Seen::default();
    let read = async {
        while let Some(item) = follower.next().await {
            match item {
                Ok(JobFollowEvent::Output(out)) => {
                    assert_eq!(out.stream, OutputStream::Stdout);
                    let bytes = seen.output.entry(out.step.agent.to_string()).or_default();
                    bytes.extend_from_slice(&out.payload);
                }
                Ok(event) => seen.events.push(describe(&event)),
                Err(err) => seen.error = Some(err),
            }
        }
    };
    tokio::time::timeout(TEST_TIMEOUT, read)
        .await
        .expect("the follower hung");
    seen
}

fn describe(event: &JobFollowEvent) -> String {
    match event {
        JobFollowEvent::Job(event) => {
            let kind = match event {
                JobEvent::Progress(p) => format!("progress {}", p.state),
                JobEvent::StepStarted(e) => format!("started {}", e.agent),
                JobEvent::StepProgress(e) => format!("step progress {}", e.agent),
                JobEvent::StepCompleted(e) => format!("completed {}", e.agent),
                JobEvent::StepFailed(e) => format!("failed {}", e.agent),
                JobEvent::Target(e) => format!("target {}", e.agent),
            };
            format!("{} {kind}", event.seq())
        }
        JobFollowEvent::Output(_) => "output".to_owned(),
        JobFollowEvent::OutputTruncated(step) => format!("truncated {}", step.agent),
        JobFollowEvent::RunEnded { step, run } => format!("ended {} {}", step.agent, run.state),
        JobFollowEvent::RunUnavailable { step, reason } => {
            format!("unavailable {}: {reason}", step.agent)
        }
        JobFollowEvent::Reconnecting { .. } => "reconnecting".to_owned(),
        JobFollowEvent::Finished(job) => format!("finished {} {}", job.state, job.targets.len()),
    }
}

#[tokio::test]
async fn a_job_is_followed_on_the_connection_that_created_it() {
    let (listener, url) = listen().await;
    let script = Script::new();
    let job = script.job;
    let [r1, _] = script.runs;
    tokio::spawn(async move {
        let mut hub = accept(&listener).await;
        // Subscribed by job.create: the events come without a subscribe.
        script.progress(&mut hub, 0, "running").await;
        script.started(&mut hub, 1, r1).await;
        let asked = script.subscriptions(&mut hub, 1).await;
        assert_eq!(asked, BTreeMap::from([(script.run_channel(0), 0)]));
        script.output(&mut hub, r1, 0, b"a\n").await;
        script.synced(&mut hub, Channel::Run(r1), 1).await;
        script.output(&mut hub, r1, 1, b"b\n").await;
        script.completed(&mut hub, 2, r1).await;
        script.progress(&mut hub, 3, "succeeded").await;
        // The job is over, but not the run's output: its status still comes.
        script.status(&mut hub, r1, RunState::Completed).await;
        script.job_info(&mut hub, "succeeded").await;
        close_code(&mut hub).await;
    });
    let connection = Client::connect(&url, "tok").await.unwrap();
    let options = JobFollowOptions::default();
    let follower = JobFollower::with_connection(connection, &url, "tok", job, true, options);
    let seen = drain(follower).await;
    assert!(seen.error.is_none(), "{:?}", seen.error);
    let expected = [
        "0 progress running",
        "1 started web-1",
        "2 completed web-1",
        "3 progress succeeded",
        "ended web-1 completed",
        "finished succeeded 2",
    ];
    assert_eq!(seen.events, expected);
    assert_eq!(seen.output["web-1"], b"a\nb\n");
}

#[tokio::test]
async fn a_drop_mid_job_resumes_with_no_gap_and_no_duplicate() {
    let (listener, url) = listen().await;
    let script = Script::new();
    let job = script.job;
    let [r1, r2] = script.runs;
    tokio::spawn(async move {
        let mut hub = accept(&listener).await;
        let asked = script.subscriptions(&mut hub, 1).await;
        assert_eq!(asked, BTreeMap::from([(script.job_channel(), 0)]));
        script.progress(&mut hub, 0, "running").await;
        script.started(&mut hub, 1, r1).await;
        script.subscriptions(&mut hub, 1).await;
        script.output(&mut hub, r1, 0, b"one\n").await;
        script.synced(&mut hub, Channel::Run(r1), 1).await;
        script.output(&mut hub, r1, 1, b"two\n").await;
        script.started(&mut hub, 2, r2).await;
        script.subscriptions(&mut hub, 1).await;
        script.output(&mut hub, r2, 0, b"x\n").await;
        close_with(hub, CloseCode::GOING_AWAY, "restarting").await;

        let mut hub = accept(&listener).await;
        let asked = script.subscriptions(&mut hub, 3).await;
        let wanted = [
            (script.job_channel(), 3),
            (script.run_channel(0), 2),
            (script.run_channel(1), 1),
        ];
        assert_eq!(
            asked,
            BTreeMap::from(wanted),
            "resumed from the wrong offsets"
        );
        // Replays overlap what was seen; the duplicates must be dropped.
        script.started(&mut hub, 2, r2).await;
        script.output(&mut hub, r1, 1, b"two\n").await;
        script.output(&mut hub, r1, 2, b"three\n").await;
        script.synced(&mut hub, Channel::Run(r1), 3).await;
        script.output(&mut hub, r2, 0, b"x\n").await;
        script.output(&mut hub, r2, 1, b"y\n").await;
        script.synced(&mut hub, Channel::Run(r2), 2).await;
        script.synced(&mut hub, Channel::Job(script.job), 3).await;
        script.status(&mut hub, r1, RunState::Completed).await;
        script.completed(&mut hub, 3, r1).await;
        script.status(&mut hub, r2, RunState::Completed).await;
        script.completed(&mut hub, 4, r2).await;
        script.progress(&mut hub, 5, "succeeded").await;
        script.job_info(&mut hub, "succeeded").await;
        close_code(&mut hub).await;
    });
    let follower = JobFollower::new(&url, "tok", job, JobFollowOptions::default());
    let seen = drain(follower).await;
    assert!(seen.error.is_none(), "{:?}", seen.error);
    assert_eq!(seen.output["web-1"], b"one\ntwo\nthree\n");
    assert_eq!(seen.output["web-2"], b"x\ny\n");
    let expected = [
        "0 progress running",
        "1 started web-1",
        "2 started web-2",
        "reconnecting",
        "ended web-1 completed",
        "3 completed web-1",
        "ended web-2 completed",
        "4 completed web-2",
        "5 progress succeeded",
        "finished succeeded 2",
    ];
    assert_eq!(seen.events, expected);
}

#[tokio::test]
async fn holes_a_replay_does_not_fill_are_reported_not_skipped() {
    let (listener, url) = listen().await;
    let script = Script::new();
    let job = script.job;
    let [r1, _] = script.runs;
    tokio::spawn(async move {
        let mut hub = accept(&listener).await;
        script.subscriptions(&mut hub, 1).await;
        script.progress(&mut hub, 0, "running").await;
        script.started(&mut hub, 1, r1).await;
        script.subscriptions(&mut hub, 1).await;
        script.output(&mut hub, r1, 0, b"kept\n").await;
        // Chunk 1 never comes: the follower replays on a new connection.
        script.output(&mut hub, r1, 2, b"late\n").await;
        close_code(&mut hub).await;
        drop(hub);

        let mut hub = accept(&listener).await;
        let asked = script.subscriptions(&mut hub, 2).await;
        assert_eq!(asked[&script.run_channel(0)], 1);
        // The stored stream has the same hole: the run is given up.
        script.output(&mut hub, r1, 2, b"late\n").await;
        // A hole in the job's own events, twice, ends the follower.
        script.progress(&mut hub, 3, "running").await;
        close_code(&mut hub).await;
        drop(hub);

        let mut hub = accept(&listener).await;
        let asked = script.subscriptions(&mut hub, 1).await;
        assert_eq!(asked, BTreeMap::from([(script.job_channel(), 2)]));
        script.synced(&mut hub, Channel::Job(script.job), 4).await;
        close_code(&mut hub).await;
    });
    let follower = JobFollower::new(&url, "tok", job, JobFollowOptions::default());
    let seen = drain(follower).await;
    assert_eq!(seen.output["web-1"], b"kept\n");
    let expected = [
        "0 progress running",
        "1 started web-1",
        "reconnecting",
        "unavailable web-1: output chunk 1 is missing from the hub's stream",
        "reconnecting",
    ];
    assert_eq!(seen.events, expected);
    let error = seen.error.expect("a lasting hole must end the follower");
    assert!(
        matches!(
            error,
            FollowError::JobGap {
                expected: 2,
                got: 4,
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        format!("events 2 to 3 are missing from the hub's stream of job {job}")
    );
}

#[tokio::test]
async fn without_output_only_the_job_is_followed() {
    let (listener, url) = listen().await;
    let script = Script::new();
    let job = script.job;
    let [r1, _] = script.runs;
    tokio::spawn(async move {
        let mut hub = accept(&listener).await;
        script.subscriptions(&mut hub, 1).await;
        script.started(&mut hub, 0, r1).await;
        script.completed(&mut hub, 1, r1).await;
        script.progress(&mut hub, 2, "succeeded").await;
        // No run subscription comes first: the next request is job.get.
        script.job_info(&mut hub, "succeeded").await;
        close_code(&mut hub).await;
    });
    let options = JobFollowOptions {
        output: false,
        ..JobFollowOptions::default()
    };
    let seen = drain(JobFollower::new(&url, "tok", job, options)).await;
    assert!(seen.error.is_none(), "{:?}", seen.error);
    let expected = [
        "0 started web-1",
        "1 completed web-1",
        "2 progress succeeded",
        "finished succeeded 2",
    ];
    assert_eq!(seen.events, expected);
}
