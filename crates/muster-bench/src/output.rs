//! The output scenario: one run streams a known pattern through agent → hub →
//! client; the client counts and checks every byte.
//!
//! Throughput is measured from the first output frame to the terminal
//! `run.status` (which the hub sends after the last frame). Then the run's
//! stored record must show every byte and no truncation, and a replay of the
//! stored output (`subscribe` with `since: 0`) must return the same bytes.
//! Hub and generator CPU are measured over the live stream, per 10^6 bytes.

use std::time::Duration;

use anyhow::{Context, bail};
use muster_client::{Client, Event, RunRequest};
use muster_proto::messages::RunEnvelope;
use muster_proto::types::CommandSpec;
use muster_proto::{AgentName, HubToClient, OutputFrame, RunId, RunState};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::report::OutputReport;
use crate::resources::{Meter, OpUnit};
use crate::sim::{OUTPUT_PROGRAM, Pattern};
use crate::stats::millis;

/// What the output scenario does.
#[derive(Clone, Debug)]
pub(crate) struct OutputPlan {
    /// Bytes the run writes.
    pub(crate) bytes: u64,
    /// Size of each slice the executor hands to its sink.
    pub(crate) chunk: usize,
}

/// Streams `plan.bytes` from `agent` and checks them, live and replayed.
pub(crate) async fn run(
    hub_url: &str,
    token: &str,
    agent: &AgentName,
    plan: &OutputPlan,
    cap: u64,
    hub_pid: Option<u32>,
) -> anyhow::Result<OutputReport> {
    let (client, mut events) = Client::connect(hub_url, token)
        .await
        .context("connecting the output client")?;
    let pattern = Pattern::new(plan.chunk);
    let meter = Meter::start(hub_pid);
    let created = Instant::now();
    // The hub answers before it forwards any of the run's events, and the
    // client routes the answer first, so nothing is lost by reading events later.
    let accepted = client
        .create_run(output_request(agent, plan.bytes), true)
        .await
        .context("creating the output run")?;
    let run = accepted.run.id;
    let mut live = StreamCheck::new(run, pattern.clone());
    let state = live.follow(&mut events).await?;
    let finished = Instant::now();
    let resources = meter.finish(live.bytes as f64 / 1e6, OpUnit::Mb);
    let info = client
        .run_info(run)
        .await
        .context("reading the output run")?;
    let replay_started = Instant::now();
    let mut replay = StreamCheck::new(run, pattern);
    client
        .subscribe(&run.channel().to_string(), Some(0))
        .await
        .context("subscribing to replay the stored output")?;
    replay.follow_replay(&mut events).await?;
    let replay_time = replay_started.elapsed();
    client.close().await;

    let first = live.first_at.unwrap_or(finished);
    let stream_time = finished - first;
    let mut problems = live.problems;
    problems.extend(replay.problems.into_iter().map(|p| format!("replay: {p}")));
    check_totals(
        &mut problems,
        plan.bytes,
        state,
        &info,
        live.bytes,
        replay.bytes,
    );
    Ok(OutputReport {
        requested_bytes: plan.bytes,
        chunk_bytes: plan.chunk,
        cap_bytes: cap,
        received_bytes: live.bytes,
        frames: live.frames,
        first_byte_ms: millis(first - created),
        stream_s: stream_time.as_secs_f64(),
        mb_per_s: megabytes_per_s(live.bytes, stream_time),
        stored_bytes: info.output_bytes,
        truncated: info.output_truncated,
        replay_bytes: replay.bytes,
        replay_s: replay_time.as_secs_f64(),
        replay_mb_per_s: megabytes_per_s(replay.bytes, replay_time),
        verified: problems.is_empty(),
        problems,
        resources,
    })
}

fn output_request(agent: &AgentName, bytes: u64) -> RunRequest {
    RunRequest::new(
        agent.clone(),
        CommandSpec::Argv(vec![OUTPUT_PROGRAM.to_owned(), bytes.to_string()]),
    )
}

fn check_totals(
    problems: &mut Vec<String>,
    requested: u64,
    state: RunState,
    info: &muster_proto::RunInfo,
    live: u64,
    replayed: u64,
) {
    if state != RunState::Completed {
        problems.push(format!("the run ended {state}, not completed"));
    }
    for (what, got) in [
        ("received", live),
        ("stored", info.output_bytes),
        ("replayed", replayed),
    ] {
        if got != requested {
            problems.push(format!("{what} {got} bytes, expected {requested}"));
        }
    }
    if info.output_truncated {
        problems.push("the hub marked the output truncated".to_owned());
    }
}

/// 10^6 bytes per second.
fn megabytes_per_s(bytes: u64, time: Duration) -> f64 {
    bytes as f64 / 1e6 / time.as_secs_f64().max(f64::EPSILON)
}

/// Checks one pass over a run's output: numbering, offsets and content.
struct StreamCheck {
    run: RunId,
    pattern: Pattern,
    first_at: Option<Instant>,
    bytes: u64,
    frames: u64,
    next_seq: u64,
    /// The first few problems found; the rest only count.
    problems: Vec<String>,
}

/// Problems listed before the rest are summarized.
const MAX_PROBLEMS: usize = 5;

impl StreamCheck {
    fn new(run: RunId, pattern: Pattern) -> Self {
        Self {
            run,
            pattern,
            first_at: None,
            bytes: 0,
            frames: 0,
            next_seq: 0,
            problems: Vec::new(),
        }
    }

    /// Reads live events until the run's terminal status; returns its state.
    async fn follow(&mut self, events: &mut mpsc::Receiver<Event>) -> anyhow::Result<RunState> {
        loop {
            match next_event(events).await? {
                Event::Output(frame) => self.frame(frame),
                Event::Message(envelope) => match envelope.msg {
                    HubToClient::RunStatus(RunEnvelope { run })
                        if run.id == self.run && run.state.is_terminal() =>
                    {
                        return Ok(run.state);
                    }
                    _ => {}
                },
                Event::Closed { .. } => unreachable!("next_event turns Closed into an error"),
            }
        }
    }

    /// Reads replayed frames until `stream.synced` for the run's channel.
    async fn follow_replay(&mut self, events: &mut mpsc::Receiver<Event>) -> anyhow::Result<()> {
        let channel = self.run.channel().to_string();
        loop {
            match next_event(events).await? {
                Event::Output(frame) => self.frame(frame),
                Event::Message(envelope) => match envelope.msg {
                    HubToClient::StreamSynced(synced) if synced.channel == channel => return Ok(()),
                    HubToClient::Error(error) => {
                        bail!("replay failed: {}: {}", error.code, error.message)
                    }
                    _ => {}
                },
                Event::Closed { .. } => unreachable!("next_event turns Closed into an error"),
            }
        }
    }

    fn frame(&mut self, frame: OutputFrame) {
        if frame.header.run != self.run {
            return;
        }
        self.first_at.get_or_insert_with(Instant::now);
        let header = &frame.header;
        if header.seq != self.next_seq {
            self.problem(format!(
                "frame seq {} where {} was expected",
                header.seq, self.next_seq
            ));
        }
        if header.offset != self.bytes {
            self.problem(format!(
                "frame offset {} where {} was expected",
                header.offset, self.bytes
            ));
        }
        if !self.pattern.matches(header.offset, &frame.payload) {
            self.problem(format!("frame {} holds the wrong bytes", header.seq));
        }
        self.next_seq = header.seq + 1;
        self.frames += 1;
        self.bytes += frame.payload.len() as u64;
    }

    fn problem(&mut self, problem: String) {
        match self.problems.len() {
            n if n < MAX_PROBLEMS => self.problems.push(problem),
            MAX_PROBLEMS => self.problems.push("more problems follow".to_owned()),
            _ => {}
        }
    }
}

async fn next_event(events: &mut mpsc::Receiver<Event>) -> anyhow::Result<Event> {
    match events.recv().await {
        Some(Event::Closed { code, reason }) => {
            bail!("the hub closed the output connection ({code:?}): {reason}")
        }
        Some(event) => Ok(event),
        None => bail!("the output connection's event stream ended"),
    }
}
