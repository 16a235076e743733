//! The hub's core: agents, presence, runs and queues, independent of transport.
//!
//! WebSocket handlers decode a message, call a method here, and encode what it
//! returns. The core reaches storage only through [`Store`] and other
//! connections only through [`Broker`], the two seams a cluster fills with
//! PostgreSQL and NATS.

mod agents;
mod delivery;
mod error;
mod events;
mod fleet_metrics;
mod jobs;
mod presence;
mod runs;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use muster_proto::{Envelope, HubToClient, JobId, RunId, UnixMillis};
use tokio::sync::mpsc;

use crate::broker::{Broker, Delivery, Frame};
use crate::config::HubConfig;
use crate::scheduler::Scheduler;
use crate::store::Store;

pub use agents::ROLE_ADMIN;
pub use error::ApiError;
pub use events::agent_channel;
pub use fleet_metrics::metrics_channel;
pub(crate) use jobs::{ActiveJob, JobSignal, JobSignals};
pub use presence::{ConnControl, Presence};
pub use runs::ActiveRun;

/// The channel every client joins on connect: agent presence.
pub const FLEET_CHANNEL: &str = "fleet";

/// The internal channel that carries hub → agent control messages.
pub fn agent_inbox(name: &muster_proto::AgentName) -> String {
    format!("{}{name}", crate::broker::INTERNAL_PREFIX)
}

/// Shared state of one hub process.
pub struct Core {
    /// Validated configuration.
    pub config: HubConfig,
    /// Persistence.
    pub store: Arc<dyn Store>,
    /// Fan-out.
    pub broker: Arc<dyn Broker>,
    /// Per-agent queues. A std mutex: held only for in-memory bookkeeping.
    scheduler: Mutex<Scheduler>,
    /// Connected agents. A std mutex for the same reason.
    presence: Mutex<Presence>,
    /// Next event seq per agent. Events of one agent arrive on its one
    /// connection, in order, so a plain map under a std mutex suffices.
    event_seqs: Mutex<HashMap<muster_proto::AgentName, u64>>,
    /// When metrics were last compacted.
    metrics_compacted_ms: std::sync::atomic::AtomicU64,
    /// This hub's identity, reported in `AgentInfo.hub_id`.
    hub_id: String,
    /// Runs not yet terminal, authoritative over their stored copy.
    active: Mutex<HashMap<RunId, ActiveRun>>,
    /// Jobs not yet final, authoritative over their stored copy. Only the job
    /// driver changes them; a std mutex, never held across an await.
    jobs: Mutex<HashMap<JobId, ActiveJob>>,
    /// Signals to the job driver. Unbounded because the driver itself sends
    /// on it (a step's run changes state while the driver creates it): a
    /// bounded channel could deadlock. What it holds is bounded by the run
    /// transitions of job runs, each of which is already stored.
    job_signals: mpsc::UnboundedSender<JobSignal>,
    /// The driver's end, until [`Core::spawn_job_driver`] takes it.
    job_driver: Mutex<Option<JobSignals>>,
}

impl Core {
    /// A core over `store` and `broker`.
    pub fn new(config: HubConfig, store: Arc<dyn Store>, broker: Arc<dyn Broker>) -> Self {
        let scheduler = Scheduler::new(config.max_queue_per_agent);
        let hub_id = config
            .hub_id
            .clone()
            .unwrap_or_else(|| format!("hub-{}", ulid::Ulid::new().to_string().to_lowercase()));
        let (job_signals, job_driver) = mpsc::unbounded_channel();
        Self {
            jobs: Mutex::new(HashMap::new()),
            job_signals,
            job_driver: Mutex::new(Some(job_driver)),
            event_seqs: Mutex::new(HashMap::new()),
            metrics_compacted_ms: std::sync::atomic::AtomicU64::new(0),
            hub_id,
            config,
            store,
            broker,
            scheduler: Mutex::new(scheduler),
            presence: Mutex::new(Presence::default()),
            active: Mutex::new(HashMap::new()),
        }
    }

    /// Starts the task that advances jobs; it ends when the core is dropped.
    pub fn spawn_job_driver(self: &Arc<Self>) {
        let signals = self
            .job_driver
            .lock()
            .expect("job driver lock poisoned")
            .take();
        if let Some(signals) = signals {
            tokio::spawn(jobs::drive(Arc::downgrade(self), signals));
        }
    }

    /// Encodes `msg` once and publishes it on `channel`.
    pub fn publish_event(&self, channel: &str, msg: HubToClient) {
        self.publish(channel, msg, false);
    }

    /// Publishes `msg`; `last` says the channel carries nothing after it.
    fn publish(&self, channel: &str, msg: HubToClient, last: bool) {
        let frame = Frame::text(Envelope::event(channel, msg).encode());
        self.broker.publish(Delivery {
            channel: Arc::from(channel),
            seq: None,
            frame,
            last,
        });
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> UnixMillis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as UnixMillis)
        .unwrap_or(0)
}
