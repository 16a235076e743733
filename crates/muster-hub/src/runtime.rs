//! The engine's task, and the handle every connection uses to reach it.
//!
//! The task owns the [`Engine`]: it takes inputs as they come (control
//! inputs first: a connection that ended, a commit that released keys),
//! folds everything already waiting into the same batch, hands the batch to
//! the writer, and starts the store lookups the engine asked for. It never
//! waits for the store itself; when the writer falls behind, handing over
//! the next batch waits, and so do the connections feeding the engine.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::broker::Broker;
use crate::clock::now_ms;
use crate::engine::{Batch, Engine, Input, Lookup, MAX_INPUTS_PER_BATCH, Reply};
use crate::engine::{Found, KeyFound, KeyKind};
use crate::outbound::Outbound;
use crate::reads;
use crate::store::Store;
use crate::writer::{self, Health};

/// Inputs waiting for the engine: beyond this, connections wait to hand
/// theirs over, which stops them reading their sockets.
const QUEUED_INPUTS: usize = 8_192;
/// How often deadlines are checked: runs past their TTL or their lost grace
/// end within this much of it.
pub(crate) const SWEEP_INTERVAL: Duration = Duration::from_millis(250);

/// How connections reach the engine. Cheap to clone.
#[derive(Clone)]
pub(crate) struct EngineHandle {
    inputs: mpsc::Sender<Input>,
    control: mpsc::UnboundedSender<Input>,
    health: Arc<Health>,
}

impl EngineHandle {
    /// Hands an input over, waiting while the engine is behind; false if the
    /// engine is gone. The wait is boxed: it is rare, and its future would
    /// otherwise live inside every connection's task.
    pub(crate) async fn send(&self, input: Input) -> bool {
        match self.inputs.try_send(input) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(input)) => {
                Box::pin(self.inputs.send(input)).await.is_ok()
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Sends `make(reply)` and waits for the answer; `None` if the engine is gone.
    pub(crate) async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Input) -> Option<T> {
        let (reply, answer) = oneshot::channel();
        if !self.send(make(reply)).await {
            return None;
        }
        answer.await.ok()
    }

    /// The channel for inputs that must never wait (a connection's end).
    pub(crate) fn control(&self) -> mpsc::UnboundedSender<Input> {
        self.control.clone()
    }

    /// Whether the store takes writes.
    pub(crate) fn health(&self) -> &Arc<Health> {
        &self.health
    }
}

/// The running engine and writer; `close` lets them finish what they hold.
pub(crate) struct Running {
    pub(crate) handle: EngineHandle,
    engine_task: JoinHandle<()>,
    writer_thread: std::thread::JoinHandle<()>,
}

impl Running {
    /// Waits, a bounded time, for the engine and writer to commit and carry
    /// out what they hold; the handle must be the last one.
    pub(crate) async fn close(self, grace: Duration) {
        drop(self.handle);
        let writer = self.writer_thread;
        let drained = async {
            let _ = self.engine_task.await;
            let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        };
        if tokio::time::timeout(grace, drained).await.is_err() {
            tracing::warn!("the engine did not drain within {grace:?}");
        }
    }
}

/// Starts the engine and the writer over `store` and `broker`. The writer
/// gets a thread of its own: a commit blocks it (see `SqliteStore`), and
/// nothing else should wait behind a commit.
pub(crate) fn start(
    engine: Engine,
    store: Arc<dyn Store>,
    broker: Arc<dyn Broker>,
    page_bytes: usize,
) -> anyhow::Result<Running> {
    let (inputs_tx, inputs) = mpsc::channel(QUEUED_INPUTS);
    let (control_tx, control) = mpsc::unbounded_channel();
    let (batches_tx, batches) = mpsc::channel(writer::QUEUED_BATCHES);
    let health = Arc::new(Health::default());
    let writer = writer::run(
        store.clone(),
        broker,
        batches,
        control_tx.downgrade(),
        health.clone(),
    );
    let writer_runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let writer_thread = std::thread::Builder::new()
        .name("muster-writer".into())
        .spawn(move || writer_runtime.block_on(writer))?;
    let lookups = Lookups {
        store,
        control: control_tx.downgrade(),
        page_bytes,
    };
    let engine_task = tokio::spawn(drive(engine, inputs, control, batches_tx, lookups));
    Ok(Running {
        handle: EngineHandle {
            inputs: inputs_tx,
            control: control_tx,
            health,
        },
        engine_task,
        writer_thread,
    })
}

/// The engine's loop: until every handle and connection is gone.
async fn drive(
    mut engine: Engine,
    mut inputs: mpsc::Receiver<Input>,
    mut control: mpsc::UnboundedReceiver<Input>,
    batches: mpsc::Sender<Batch>,
    lookups: Lookups,
) {
    let mut ticker = tokio::time::interval(SWEEP_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut control_open, mut inputs_open) = (true, true);
    while control_open || inputs_open {
        tokio::select! {
            biased;
            input = control.recv(), if control_open => match input {
                Some(input) => engine.handle(input, now_ms()),
                None => control_open = false,
            },
            input = inputs.recv(), if inputs_open => match input {
                Some(input) => engine.handle(input, now_ms()),
                None => inputs_open = false,
            },
            _ = ticker.tick() => engine.tick(now_ms()),
        }
        let mut handled = 1;
        while handled < MAX_INPUTS_PER_BATCH && !engine.batch_full() {
            let next = control.try_recv().or_else(|_| inputs.try_recv());
            let Ok(input) = next else { break };
            engine.handle(input, now_ms());
            handled += 1;
        }
        for lookup in engine.take_lookups() {
            lookups.start(lookup);
        }
        if engine.has_batch() && batches.send(engine.take_batch(now_ms())).await.is_err() {
            tracing::error!("the writer is gone; the engine stops");
            return;
        }
    }
    if engine.has_batch() {
        let _ = batches.send(engine.take_batch(now_ms())).await;
    }
}

/// Starts store reads the engine asked for.
struct Lookups {
    store: Arc<dyn Store>,
    /// Weak, so a lookup in flight does not keep the engine alive.
    control: mpsc::WeakUnboundedSender<Input>,
    page_bytes: usize,
}

impl Lookups {
    fn start(&self, lookup: Lookup) {
        let store = self.store.clone();
        match lookup {
            Lookup::Read(to, re, read) => {
                let page_bytes = self.page_bytes;
                tokio::spawn(async move {
                    let msg = reads::answer(&store, read, page_bytes).await;
                    to.send(Outbound::Reply(Box::new(Reply::to(re, msg))));
                });
            }
            Lookup::ReadIn(to, re, read, view) => {
                let page_bytes = self.page_bytes;
                tokio::spawn(async move {
                    let msg = reads::answer_in(&store, read, Some(view), page_bytes).await;
                    to.send(Outbound::Reply(Box::new(Reply::to(re, msg))));
                });
            }
            Lookup::RunKey(key) | Lookup::JobKey(key) => {
                let control = self.control.clone();
                tokio::spawn(async move {
                    let found = match key.kind {
                        KeyKind::Run => store
                            .run_by_idempotency_key(&key.owner, &key.key)
                            .await
                            .map(Found::Run),
                        KeyKind::Job => store
                            .job_by_idempotency_key(&key.owner, &key.key)
                            .await
                            .map(Found::Job),
                    };
                    let found = found.map_err(|e| format!("{e:#}"));
                    if let Some(control) = control.upgrade() {
                        let _ = control.send(Input::KeyFound(Box::new(KeyFound { key, found })));
                    }
                });
            }
        }
    }
}
