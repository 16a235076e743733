//! The echo scenario: keystroke latency through a pty session.
//!
//! A pty session on a real agent (`muster dev`'s `local`) runs `cat` with the
//! terminal in raw mode, so every byte typed comes straight back. The bench
//! attaches as a writer and types one key at a time: the latency is from
//! sending its `session.input` to receiving the output frame that echoes it
//! (client → hub → agent → pty → `cat` → pty → agent → hub → client).
//!
//! With `--flood-bytes`, a second pty session on the same agent `cat`s a file
//! of that size (written here, read there: the agent is on this machine)
//! while the keys are typed again: the flood must arrive intact, byte for
//! byte, and the keystrokes must stay fast.

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use muster_client::{Client, Event, RunRequest};
use muster_proto::messages::RunEnvelope;
use muster_proto::sessions::{SessionAttach, SessionInput, SessionKind, SessionSpec};
use muster_proto::types::CommandSpec;
use muster_proto::{AgentName, ClientToHub, HubToClient, OutputStream, RunId, RunState};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

use crate::resources::{Meter, OpUnit, Resources};
use crate::stats::LatencySummary;

/// How long one key may take to come back before it counts as lost.
const KEY_TIMEOUT: Duration = Duration::from_secs(5);

/// Printed by the session's shell once the terminal is raw, before `cat`.
const READY: &[u8] = b"ECHO-READY";

/// What the echo scenario does.
#[derive(Clone, Debug)]
pub(crate) struct EchoPlan {
    /// The real agent the sessions run on.
    pub(crate) agent: AgentName,
    /// Keys typed, one at a time, in each phase.
    pub(crate) keys: u32,
    /// Bytes the flooding session writes; 0: no flood phase.
    pub(crate) flood_bytes: u64,
    /// Bound of the whole scenario.
    pub(crate) timeout: Duration,
}

/// Figures of one phase of typing.
#[derive(Debug, Serialize)]
pub(crate) struct KeysReport {
    /// Keys typed.
    pub(crate) keys: u32,
    /// Keys whose echo came back.
    pub(crate) echoed: u32,
    /// Key to echo.
    pub(crate) latency_ms: Option<LatencySummary>,
    /// Hub and generator CPU over the phase, per key.
    pub(crate) resources: Resources,
}

/// Figures of the flooding session.
#[derive(Debug, Serialize)]
pub(crate) struct FloodReport {
    /// Bytes the session was asked to write.
    pub(crate) requested_bytes: u64,
    /// Stdout bytes received live.
    pub(crate) received_bytes: u64,
    /// From the first frame to the last byte.
    pub(crate) stream_s: f64,
    /// `received_bytes` / `stream_s`, in 10^6 bytes per second.
    pub(crate) mb_per_s: f64,
    /// Whether every byte was the right one, and the session completed.
    pub(crate) verified: bool,
    /// What did not check out.
    pub(crate) problems: Vec<String>,
}

/// Figures of the echo scenario.
#[derive(Debug, Serialize)]
pub(crate) struct EchoReport {
    /// The agent.
    pub(crate) agent: String,
    /// Typing on a quiet agent.
    pub(crate) quiet: KeysReport,
    /// Typing while another session floods, with the flood's figures.
    pub(crate) flooded: Option<(KeysReport, FloodReport)>,
}

impl EchoReport {
    /// Whether a key was lost or the flood did not check out.
    pub(crate) fn failed(&self) -> bool {
        let lost = |k: &KeysReport| k.echoed < k.keys;
        lost(&self.quiet)
            || self
                .flooded
                .as_ref()
                .is_some_and(|(keys, flood)| lost(keys) || !flood.verified)
    }
}

/// What the router hands the typing loop and the flood checker.
enum Routed {
    /// Stdout bytes of a session.
    Out(RunId, bytes::Bytes, Instant),
    /// A session ended.
    Ended(RunId, RunState),
}

/// Runs the scenario against `hub_url`.
pub(crate) async fn run(
    hub_url: &str,
    token: &str,
    plan: &EchoPlan,
    hub_pid: Option<u32>,
) -> anyhow::Result<EchoReport> {
    let (client, events) = Client::connect(hub_url, token)
        .await
        .context("connecting the echo client")?;
    let (routed_tx, mut routed) = mpsc::unbounded_channel();
    let router = tokio::spawn(route(events, routed_tx));
    let typist = open(
        &client,
        &plan.agent,
        "stty raw -echo && printf ECHO-READY && exec cat",
    )
    .await?;
    wait_ready(&mut routed, typist).await?;
    client
        .request(ClientToHub::SessionAttach(SessionAttach {
            run: typist,
            write: true,
            writer: Some(format!("bench-echo-{}", std::process::id())),
        }))
        .await
        .context("attaching as the writer")?;
    let mut seq = 0;
    let quiet = type_keys(
        &client,
        &mut routed,
        typist,
        &mut seq,
        plan.keys,
        None,
        hub_pid,
    )
    .await?;
    let flooded = match plan.flood_bytes {
        0 => None,
        bytes => Some(flood(&client, &mut routed, plan, typist, &mut seq, bytes, hub_pid).await?),
    };
    let _ = client.cancel_run(typist).await;
    client.close().await;
    router.abort();
    Ok(EchoReport {
        agent: plan.agent.to_string(),
        quiet,
        flooded,
    })
}

/// Opens a pty session running `script` and returns its id.
async fn open(client: &Client, agent: &AgentName, script: &str) -> anyhow::Result<RunId> {
    let mut request = RunRequest::new(agent.clone(), CommandSpec::Shell(script.to_owned()));
    request.session = Some(Box::new(SessionSpec::new(SessionKind::Pty)));
    let accepted = client
        .create_run(request, true)
        .await
        .context("opening a pty session")?;
    Ok(accepted.run.id)
}

/// Passes each session's stdout and end on, in the order they came.
async fn route(mut events: mpsc::Receiver<Event>, routed: mpsc::UnboundedSender<Routed>) {
    while let Some(event) = events.recv().await {
        let item = match event {
            Event::Output(frame) if frame.header.stream == OutputStream::Stdout => {
                Routed::Out(frame.header.run, frame.payload, Instant::now())
            }
            Event::Message(envelope) => match envelope.msg {
                HubToClient::RunStatus(RunEnvelope { run }) if run.state.is_terminal() => {
                    Routed::Ended(run.id, run.state)
                }
                _ => continue,
            },
            Event::Closed { .. } => return,
            Event::Output(_) => continue,
        };
        if routed.send(item).is_err() {
            return;
        }
    }
}

/// Waits until session `run` printed [`READY`]: its terminal is raw.
async fn wait_ready(
    routed: &mut mpsc::UnboundedReceiver<Routed>,
    run: RunId,
) -> anyhow::Result<()> {
    let mut seen = Vec::new();
    let wait = async {
        while let Some(item) = routed.recv().await {
            match item {
                Routed::Out(id, bytes, _) if id == run => {
                    seen.extend_from_slice(&bytes);
                    if seen.windows(READY.len()).any(|w| w == READY) {
                        return Ok(());
                    }
                }
                Routed::Ended(id, state) if id == run => bail!("the session ended {state}"),
                _ => {}
            }
        }
        bail!("the connection ended")
    };
    timeout(KEY_TIMEOUT * 2, wait)
        .await
        .context("the session never became ready")?
}

/// Types up to `keys` keys one at a time and times each echo; stops early
/// once `stop` is set.
async fn type_keys(
    client: &Client,
    routed: &mut mpsc::UnboundedReceiver<Routed>,
    run: RunId,
    seq: &mut u64,
    keys: u32,
    stop: Option<&AtomicBool>,
    hub_pid: Option<u32>,
) -> anyhow::Result<KeysReport> {
    let meter = Meter::start(hub_pid);
    let mut samples = Vec::with_capacity(keys as usize);
    let mut typed = 0;
    for i in 0..keys {
        if stop.is_some_and(|stop| stop.load(Ordering::Relaxed)) {
            break;
        }
        typed += 1;
        let key = b'a' + (i % 26) as u8;
        *seq += 1;
        let input = ClientToHub::SessionInput(SessionInput {
            run,
            seq: *seq,
            data: char::from(key).to_string(),
        });
        let sent = Instant::now();
        let echo = async {
            while let Some(item) = routed.recv().await {
                if let Routed::Out(id, bytes, at) = item
                    && id == run
                    && bytes.contains(&key)
                {
                    return Some(at);
                }
            }
            None
        };
        let (acked, echoed) = tokio::join!(client.request(input), timeout(KEY_TIMEOUT, echo));
        acked.context("typing a key")?;
        if let Ok(Some(at)) = echoed {
            samples.push(at - sent);
        }
    }
    let echoed = samples.len() as u32;
    Ok(KeysReport {
        keys: typed,
        echoed,
        resources: meter.finish(f64::from(echoed.max(1)), OpUnit::Key),
        latency_ms: LatencySummary::of(samples),
    })
}

/// The flood's content at `offset`: printable, and easy to check.
fn flood_byte(offset: u64) -> u8 {
    b'A' + (offset % 26) as u8
}

/// Types again while another session `cat`s `bytes` bytes.
async fn flood(
    client: &Client,
    routed: &mut mpsc::UnboundedReceiver<Routed>,
    plan: &EchoPlan,
    typist: RunId,
    seq: &mut u64,
    bytes: u64,
    hub_pid: Option<u32>,
) -> anyhow::Result<(KeysReport, FloodReport)> {
    let mut file = tempfile::NamedTempFile::new().context("creating the flood file")?;
    let block: Vec<u8> = (0..26 * 4096).map(flood_byte).collect();
    let mut left = bytes;
    while left > 0 {
        let take = left.min(block.len() as u64) as usize;
        file.write_all(&block[..take])?;
        left -= take as u64;
    }
    file.flush()?;
    let script = format!("stty raw -echo && exec cat '{}'", file.path().display());
    let flooder = open(client, &plan.agent, &script).await?;
    // Frames of the flood arrive among the echoes: the checker takes them
    // from a side channel the typing loop fills.
    let (flood_tx, mut flood_rx) = mpsc::unbounded_channel();
    let (typist_tx, mut typist_rx) = mpsc::unbounded_channel();
    let splitter = async {
        while let Some(item) = routed.recv().await {
            let to_flood =
                matches!(&item, Routed::Out(id, ..) | Routed::Ended(id, _) if *id == flooder);
            let sent = match to_flood {
                true => flood_tx.send(item).is_ok(),
                false => typist_tx.send(item).is_ok(),
            };
            if !sent {
                return;
            }
        }
    };
    let (flowing, done) = (tokio::sync::Notify::new(), AtomicBool::new(false));
    let check = async {
        let report = check_flood(&mut flood_rx, bytes, &flowing).await;
        done.store(true, Ordering::Relaxed);
        report
    };
    let typing = async {
        // Typing starts once the flood flows, and stops when it ends.
        flowing.notified().await;
        type_keys(
            client,
            &mut typist_rx,
            typist,
            seq,
            plan.keys,
            Some(&done),
            hub_pid,
        )
        .await
    };
    let (report, keys) = tokio::select! {
        () = splitter => bail!("the connection ended during the flood"),
        joined = async { tokio::join!(timeout(plan.timeout, check), typing) } => joined,
    };
    let report = report.context("the flood did not finish in time")?;
    Ok((keys?, report))
}

/// Reads the flooding session to its end, checking every byte.
async fn check_flood(
    routed: &mut mpsc::UnboundedReceiver<Routed>,
    bytes: u64,
    flowing: &tokio::sync::Notify,
) -> FloodReport {
    let (mut received, mut first, mut last) = (0u64, None, None);
    let mut problems = Vec::new();
    let mut state = None;
    while let Some(item) = routed.recv().await {
        match item {
            Routed::Out(_, payload, at) => {
                if first.is_none() {
                    flowing.notify_one();
                }
                first.get_or_insert(at);
                last = Some(at);
                let wrong = payload
                    .iter()
                    .enumerate()
                    .position(|(i, b)| *b != flood_byte(received + i as u64));
                if let Some(at) = wrong
                    && problems.len() < 5
                {
                    problems.push(format!("wrong byte at offset {}", received + at as u64));
                }
                received += payload.len() as u64;
            }
            Routed::Ended(_, ended) => {
                state = Some(ended);
                break;
            }
        }
    }
    // A flood that never flowed must not leave the typist waiting.
    flowing.notify_one();
    if state != Some(RunState::Completed) {
        problems.push(format!(
            "the flooding session ended {state:?}, not completed"
        ));
    }
    if received != bytes {
        problems.push(format!("received {received} bytes, expected {bytes}"));
    }
    let stream = match (first, last) {
        (Some(first), Some(last)) => last - first,
        _ => Duration::ZERO,
    };
    FloodReport {
        requested_bytes: bytes,
        received_bytes: received,
        stream_s: stream.as_secs_f64(),
        mb_per_s: received as f64 / 1e6 / stream.as_secs_f64().max(f64::EPSILON),
        verified: problems.is_empty(),
        problems,
    }
}

/// The line of a keys phase in the table.
pub(crate) fn keys_line(what: &str, keys: &KeysReport) -> String {
    match &keys.latency_ms {
        Some(l) => format!(
            "  {what:<8} {}/{} keys echoed: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms\n  {}\n",
            keys.echoed,
            keys.keys,
            l.p50_ms,
            l.p90_ms,
            l.p99_ms,
            l.max_ms,
            keys.resources.summary()
        ),
        None => format!("  {what:<8} no key came back of {}\n", keys.keys),
    }
}

/// The table of the scenario.
pub(crate) fn table(report: &EchoReport) -> String {
    let mut out = format!(
        "\necho (key -> session.input -> pty cat -> echo frame, agent {})\n",
        report.agent
    );
    out.push_str(&keys_line("quiet", &report.quiet));
    if let Some((keys, flood)) = &report.flooded {
        out.push_str(&keys_line("flooded", keys));
        out.push_str(&format!(
            "  flood    {}/{} B in {:.2} s: {:.1} MB/s, {}\n",
            flood.received_bytes,
            flood.requested_bytes,
            flood.stream_s,
            flood.mb_per_s,
            if flood.verified {
                "every byte checked"
            } else {
                "NOT VERIFIED"
            }
        ));
        for problem in &flood.problems {
            out.push_str(&format!("  problem: {problem}\n"));
        }
    }
    out
}
