//! The fan-out scenario's agent: one raw agent that, on request, streams a
//! run's output at a fixed rate, one small frame per chunk, each payload
//! starting with the moment it was sent.
//!
//! The library agent batches output for up to 50 ms, which would merge many
//! chunks into one frame and hide the hub's latency behind the batching; this
//! agent sends each chunk as its own binary frame, numbered as the protocol
//! requires (section 4.2). A run is started by the hub's `run.start` and
//! answered with `run.started`; the scenario then calls [`Emitter::emit`]
//! once its subscribers are in place. Chunk `i` is due at `start + i / rate`;
//! every millisecond the agent sends every chunk that is due. After the last
//! chunk it sends `run.exited` (completed, exit code 0), and the run counts as
//! acknowledged once the hub's `run.ack` says `exited`.

use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use muster_proto::messages::{RunExited, RunStarted};
use muster_proto::{
    AgentToHub, Envelope, HubToAgent, OutputFrame, OutputHeader, OutputStream, RunId,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior, interval};
use tokio_tungstenite::tungstenite::Message;

use crate::net::Socket;
use crate::raw::closed_by_hub;
use crate::wire::{self, Head};

/// How often due chunks are sent: the timer's resolution.
const TICK: Duration = Duration::from_millis(1);

/// Bytes of the send timestamp at the start of each payload.
pub(crate) const STAMP_BYTES: usize = 8;

/// The pid the run reports; there is no process.
const SIM_PID: u32 = 1;

/// Emissions queued for the agent: one at a time, the scenario waits for it.
const ORDER_CAPACITY: usize = 1;

/// Started runs queued for the scenario: it takes each before the next is
/// created, so a few are plenty.
const STARTED_CAPACITY: usize = 16;

/// The instant all timestamps of this process count from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds since this process's timestamp epoch.
pub(crate) fn stamp_now() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

/// What one emission did.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Emitted {
    /// Chunks sent.
    pub(crate) chunks: u64,
    /// When the first chunk was sent.
    pub(crate) first: Instant,
    /// When the last chunk was sent.
    pub(crate) last: Instant,
}

/// One emission to make.
#[derive(Debug)]
struct Order {
    run: RunId,
    rate: u32,
    chunks: u64,
    chunk_bytes: usize,
    emitted: oneshot::Sender<Emitted>,
    acknowledged: oneshot::Sender<()>,
}

/// The running agent.
pub(crate) struct Emitter {
    orders: mpsc::Sender<Order>,
    started: mpsc::Receiver<RunId>,
    task: JoinHandle<String>,
}

impl Emitter {
    /// Serves `socket`, an agent connection past its handshake.
    pub(crate) fn spawn(socket: Socket) -> Self {
        let (orders, orders_rx) = mpsc::channel(ORDER_CAPACITY);
        let (started_tx, started) = mpsc::channel(STARTED_CAPACITY);
        epoch();
        Self {
            orders,
            started,
            task: tokio::spawn(serve(socket, orders_rx, started_tx)),
        }
    }

    /// Waits for the hub's `run.start` of the next run; its id.
    pub(crate) async fn next_run(&mut self) -> anyhow::Result<RunId> {
        self.started
            .recv()
            .await
            .ok_or_else(|| anyhow!("the fan-out agent's connection ended"))
    }

    /// Streams `chunks` chunks of `chunk_bytes` for `run` at `rate` per
    /// second; returns when the last one is sent, with a receiver that fires
    /// when the hub has acknowledged the run's end.
    pub(crate) async fn emit(
        &self,
        run: RunId,
        rate: u32,
        chunks: u64,
        chunk_bytes: usize,
    ) -> anyhow::Result<(Emitted, oneshot::Receiver<()>)> {
        let (emitted_tx, emitted) = oneshot::channel();
        let (acknowledged_tx, acknowledged) = oneshot::channel();
        let order = Order {
            run,
            rate,
            chunks,
            chunk_bytes: chunk_bytes.max(STAMP_BYTES),
            emitted: emitted_tx,
            acknowledged: acknowledged_tx,
        };
        self.orders
            .send(order)
            .await
            .map_err(|_| anyhow!("the fan-out agent has stopped"))?;
        let emitted = emitted
            .await
            .map_err(|_| anyhow!("the fan-out agent stopped while emitting"))?;
        Ok((emitted, acknowledged))
    }

    /// Stops the agent (its socket is reset).
    pub(crate) fn stop(self) {
        self.task.abort();
    }
}

/// An emission in progress.
struct Emission {
    order: Order,
    start: Instant,
    sent: u64,
    first: Option<Instant>,
    payload: Vec<u8>,
}

impl Emission {
    /// Chunks due by `now`: chunk `i` is due at `start + i / rate`.
    fn due(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.start).as_secs_f64();
        ((elapsed * f64::from(self.order.rate)).floor() as u64 + 1).min(self.order.chunks)
    }

    /// The next chunk's frame, stamped now.
    fn next_frame(&mut self) -> Message {
        self.payload[..STAMP_BYTES].copy_from_slice(&stamp_now().to_be_bytes());
        let header = OutputHeader {
            run: self.order.run,
            stream: OutputStream::Stdout,
            seq: self.sent,
            offset: self.sent * self.payload.len() as u64,
            at: None,
        };
        self.sent += 1;
        Message::Binary(OutputFrame::encode(&header, &self.payload))
    }
}

/// The agent's loop; returns why it ended.
async fn serve(
    mut socket: Socket,
    mut orders: mpsc::Receiver<Order>,
    started: mpsc::Sender<RunId>,
) -> String {
    let mut ticker = interval(TICK);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut emission: Option<Emission> = None;
    let mut awaiting_ack: Option<(RunId, oneshot::Sender<()>)> = None;
    loop {
        let result = tokio::select! {
            order = orders.recv(), if emission.is_none() => match order {
                Some(order) => {
                    let payload = vec![0; order.chunk_bytes];
                    emission = Some(Emission { order, start: Instant::now(), sent: 0, first: None, payload });
                    Ok(())
                }
                None => return "stopped".to_owned(),
            },
            _ = ticker.tick(), if emission.is_some() => {
                send_due(&mut socket, &mut emission, &mut awaiting_ack).await
            }
            message = socket.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    handle(&mut socket, text.as_str(), &started, &mut awaiting_ack).await
                }
                Some(Ok(Message::Close(frame))) => return closed_by_hub(frame.as_ref()),
                Some(Ok(_)) => Ok(()),
                Some(Err(e)) => return format!("connection failed: {e}"),
                None => return "connection ended".to_owned(),
            },
        };
        if let Err(e) = result {
            tracing::warn!("the fan-out agent stops: {e:#}");
            return format!("{e:#}");
        }
    }
}

/// Sends every chunk due; after the last one, `run.exited`.
async fn send_due(
    socket: &mut Socket,
    emission: &mut Option<Emission>,
    awaiting_ack: &mut Option<(RunId, oneshot::Sender<()>)>,
) -> anyhow::Result<()> {
    let Some(current) = emission.as_mut() else {
        return Ok(());
    };
    let due = current.due(Instant::now());
    while current.sent < due {
        let frame = current.next_frame();
        current.first.get_or_insert_with(Instant::now);
        socket.feed(frame).await.context("sending a chunk")?;
    }
    socket.flush().await.context("sending chunks")?;
    if current.sent < current.order.chunks {
        return Ok(());
    }
    let last = Instant::now();
    let Some(done) = emission.take() else {
        return Ok(());
    };
    let run = done.order.run;
    let exited = AgentToHub::RunExited(RunExited::completed(run));
    socket
        .send(wire::report(exited))
        .await
        .context("sending run.exited")?;
    *awaiting_ack = Some((run, done.order.acknowledged));
    let _ = done.order.emitted.send(Emitted {
        chunks: done.sent,
        first: done.first.unwrap_or(last),
        last,
    });
    Ok(())
}

/// Handles one text message from the hub.
async fn handle(
    socket: &mut Socket,
    text: &str,
    started: &mpsc::Sender<RunId>,
    awaiting_ack: &mut Option<(RunId, oneshot::Sender<()>)>,
) -> anyhow::Result<()> {
    match Head::of(text).map(|head| head.kind) {
        Some("heartbeat") => {
            if let Some(ack) = wire::heartbeat_ack(text, true) {
                socket.send(ack).await?;
            }
        }
        Some("run.start" | "run.ack" | "run.cancel") => {
            match Envelope::<HubToAgent>::decode(text)?.msg {
                HubToAgent::RunStart(start) => {
                    let report = AgentToHub::RunStarted(RunStarted {
                        run: start.run,
                        pid: SIM_PID,
                    });
                    socket.send(wire::report(report)).await?;
                    let _ = started.send(start.run).await;
                }
                HubToAgent::RunAck(ack) if ack.exited => {
                    if awaiting_ack
                        .as_ref()
                        .is_some_and(|(run, _)| *run == ack.run)
                        && let Some((_, acknowledged)) = awaiting_ack.take()
                    {
                        let _ = acknowledged.send(());
                    }
                }
                HubToAgent::RunCancel(cancel) => {
                    bail!("the hub cancelled run {}", cancel.run)
                }
                _ => {}
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emission(rate: u32, chunks: u64) -> Emission {
        let (emitted, _) = oneshot::channel();
        let (acknowledged, _) = oneshot::channel();
        Emission {
            order: Order {
                run: RunId::generate(),
                rate,
                chunks,
                chunk_bytes: 16,
                emitted,
                acknowledged,
            },
            start: Instant::now(),
            sent: 0,
            first: None,
            payload: vec![0; 16],
        }
    }

    #[test]
    fn chunks_fall_due_at_the_rate() {
        let e = emission(1000, 50);
        assert_eq!(e.due(e.start), 1);
        assert_eq!(e.due(e.start + Duration::from_micros(9_500)), 10);
        assert_eq!(e.due(e.start + Duration::from_secs(5)), 50);
    }

    #[test]
    fn frames_are_numbered_and_stamped() {
        let mut e = emission(10, 3);
        let before = stamp_now();
        let _ = e.next_frame();
        let Message::Binary(frame) = e.next_frame() else {
            panic!("not binary");
        };
        let head = wire::frame_head(&frame).unwrap();
        assert_eq!(head.seq, 1);
        assert_eq!(head.payload.len(), 16);
        let stamp = u64::from_be_bytes(head.payload[..STAMP_BYTES].try_into().unwrap());
        assert!(stamp >= before && stamp <= stamp_now());
        let decoded = OutputFrame::decode(frame).unwrap();
        assert_eq!(decoded.header.offset, 16);
    }
}
