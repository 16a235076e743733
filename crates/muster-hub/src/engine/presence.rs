//! Which agents are connected right now, through which connection, and the
//! guard that ends a connection's presence however its task ends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use muster_proto::{AgentName, UnixMillis};
use tokio::sync::{Notify, mpsc};

use super::Input;
use super::batch::ReplyTo;

/// A handle to close a connection from outside its task, with a close code.
#[derive(Clone, Debug, Default)]
pub struct ConnControl {
    inner: Arc<Control>,
}

#[derive(Debug, Default)]
struct Control {
    /// A std `Mutex`: set once, read once.
    reason: Mutex<Option<(u16, String)>>,
    asked: Notify,
}

impl ConnControl {
    /// Asks the connection to close with `code` (the first reason given wins).
    pub fn close(&self, code: u16, reason: &str) {
        self.inner
            .reason
            .lock()
            .expect("conn control lock poisoned")
            .get_or_insert((code, reason.to_owned()));
        self.inner.asked.notify_one();
    }

    /// Resolves when [`ConnControl::close`] was called.
    pub async fn closed(&self) -> (u16, String) {
        loop {
            let asked = self.inner.asked.notified();
            tokio::pin!(asked);
            asked.as_mut().enable();
            if let Some(reason) = self
                .inner
                .reason
                .lock()
                .expect("conn control lock poisoned")
                .clone()
            {
                return reason;
            }
            asked.await;
        }
    }
}

/// When a connection last heard from its agent; written by the connection
/// on every frame, read when the agent's record is shown.
#[derive(Clone, Debug, Default)]
pub struct LastSeen(Arc<AtomicU64>);

impl LastSeen {
    /// Something arrived at `now`.
    pub fn touch(&self, now: UnixMillis) {
        self.0.store(now, Ordering::Relaxed);
    }

    /// When something last arrived.
    pub fn get(&self) -> UnixMillis {
        self.0.load(Ordering::Relaxed)
    }
}

/// One connected agent.
#[derive(Clone, Debug)]
pub(crate) struct OnlineAgent {
    /// Identifies the connection, so a stale disconnect cannot evict a newer one.
    pub(crate) conn_id: u64,
    /// The connection's queue: messages for the agent.
    pub(crate) tx: ReplyTo,
    /// When it connected.
    pub(crate) since_ms: UnixMillis,
    /// When it was last heard from.
    pub(crate) last_seen: LastSeen,
    /// Heartbeats are late.
    pub(crate) stale: bool,
    /// It announced the `sessions` capability.
    pub(crate) sessions: bool,
    /// Closes its connection.
    pub(crate) control: ConnControl,
}

/// The connected agents.
#[derive(Debug, Default)]
pub(crate) struct Presence {
    online: HashMap<AgentName, OnlineAgent>,
}

impl Presence {
    /// Records a connection, returning the one it replaces.
    pub(crate) fn connect(&mut self, name: AgentName, agent: OnlineAgent) -> Option<OnlineAgent> {
        self.online.insert(name, agent)
    }

    /// Removes the agent if `conn_id` is still its connection.
    pub(crate) fn disconnect(&mut self, name: &AgentName, conn_id: u64) -> bool {
        match self.online.get(name) {
            Some(agent) if agent.conn_id == conn_id => {
                self.online.remove(name);
                true
            }
            _ => false,
        }
    }

    /// Sets the stale flag of connection `conn_id`; true if it changed.
    pub(crate) fn set_stale(&mut self, name: &AgentName, conn_id: u64, stale: bool) -> bool {
        match self.online.get_mut(name) {
            Some(agent) if agent.conn_id == conn_id && agent.stale != stale => {
                agent.stale = stale;
                true
            }
            _ => false,
        }
    }

    /// The connection of an online agent.
    pub(crate) fn get(&self, name: &AgentName) -> Option<&OnlineAgent> {
        self.online.get(name)
    }
}

/// An agent connection's presence: dropping it tells the engine the
/// connection is gone, whether its task returned, failed or panicked.
#[derive(Debug)]
pub struct PresenceGuard {
    name: AgentName,
    conn_id: u64,
    control_tx: mpsc::UnboundedSender<Input>,
}

impl PresenceGuard {
    /// A guard for connection `conn_id` of agent `name`.
    pub(crate) fn new(
        name: AgentName,
        conn_id: u64,
        control_tx: mpsc::UnboundedSender<Input>,
    ) -> Self {
        Self {
            name,
            conn_id,
            control_tx,
        }
    }
}

impl Drop for PresenceGuard {
    fn drop(&mut self) {
        let gone = Input::AgentGone {
            name: self.name.clone(),
            conn_id: self.conn_id,
        };
        // Fails only when the engine itself is gone, and presence with it.
        let _ = self.control_tx.send(gone);
    }
}
