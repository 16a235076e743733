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

    /// Notes that a frame arrived.
    pub fn touch(&mut self, name: &AgentName, now: UnixMillis) {
        if let Some(agent) = self.online.get_mut(name) {
            agent.last_seen_ms = now;
        }
    }

    /// The connection of an online agent.
    pub fn get(&self, name: &AgentName) -> Option<&OnlineAgent> {
        self.online.get(name)
    }
}
