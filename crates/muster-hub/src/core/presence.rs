//! Which agents are connected right now, through which connection.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use muster_proto::{AgentName, UnixMillis};
use tokio_util::sync::CancellationToken;

use crate::store::AgentFacts;

/// A handle to close a connection from outside its task, with a close code.
#[derive(Clone, Debug, Default)]
pub struct ConnControl {
    token: CancellationToken,
    reason: Arc<Mutex<Option<(u16, String)>>>,
}

impl ConnControl {
    /// Asks the connection to close with `code`.
    pub fn close(&self, code: u16, reason: &str) {
        self.reason
            .lock()
            .expect("conn control lock poisoned")
            .get_or_insert((code, reason.to_owned()));
        self.token.cancel();
    }

    /// Resolves when [`ConnControl::close`] was called.
    pub async fn closed(&self) -> (u16, String) {
        self.token.cancelled().await;
        self.reason
            .lock()
            .expect("conn control lock poisoned")
            .clone()
            .unwrap_or((muster_proto::CloseCode::NORMAL, String::new()))
    }
}

/// One connected agent.
#[derive(Clone, Debug)]
pub struct OnlineAgent {
    /// Identifies the connection, so a stale disconnect cannot evict a newer one.
    pub conn_id: u64,
    /// What it reported in `hello`.
    pub facts: AgentFacts,
    /// When it connected.
    pub since_ms: UnixMillis,
    /// Last frame received.
    pub last_seen_ms: UnixMillis,
    /// Heartbeats are late.
    pub stale: bool,
    /// Closes its connection.
    pub control: ConnControl,
}

/// The connected agents.
#[derive(Debug, Default)]
pub struct Presence {
    online: HashMap<AgentName, OnlineAgent>,
}

impl Presence {
    /// Records a connection, returning the one it replaces.
    pub fn connect(&mut self, name: AgentName, agent: OnlineAgent) -> Option<OnlineAgent> {
        self.online.insert(name, agent)
    }

    /// Removes the agent if `conn_id` is still its connection.
    pub fn disconnect(&mut self, name: &AgentName, conn_id: u64) -> bool {
        match self.online.get(name) {
            Some(agent) if agent.conn_id == conn_id => {
                self.online.remove(name);
                true
            }
            _ => false,
        }
    }

    /// Notes that a frame arrived; true if that ends a stale spell.
    pub fn touch(&mut self, name: &AgentName, now: UnixMillis) -> bool {
        let Some(agent) = self.online.get_mut(name) else {
            return false;
        };
        agent.last_seen_ms = now;
        std::mem::replace(&mut agent.stale, false)
    }

    /// Marks agents silent since before `cutoff` as stale; returns the ones that just became so.
    pub fn mark_stale(&mut self, cutoff: UnixMillis) -> Vec<AgentName> {
        self.online
            .iter_mut()
            .filter(|(_, agent)| !agent.stale && agent.last_seen_ms < cutoff)
            .map(|(name, agent)| {
                agent.stale = true;
                name.clone()
            })
            .collect()
    }

    /// The connection of an online agent.
    pub fn get(&self, name: &AgentName) -> Option<&OnlineAgent> {
        self.online.get(name)
    }
}
