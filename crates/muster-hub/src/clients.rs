//! Live client connections by the API key (its key id) they authenticated
//! with, so that revoking, rotating or expiring a key closes them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// The live client connections, by key id. Shared by the engine, which
/// revokes, and the connections, which register themselves.
#[derive(Debug, Default)]
pub struct ClientConns {
    /// A std `Mutex`: held only to add, remove or cancel entries.
    by_key: Mutex<HashMap<Arc<str>, HashMap<u64, Revoked>>>,
}

/// Notified once when the connection's key is revoked. (A `Notify` keeps
/// the notice until its one waiter comes for it, and is smaller than a
/// cancellation token, which every idle client would carry.)
#[derive(Debug, Clone, Default)]
pub(crate) struct Revoked(Arc<Notify>);

impl Revoked {
    /// Resolves once the key is revoked.
    pub(crate) async fn cancelled(&self) {
        self.0.notified().await;
    }

    fn cancel(&self) {
        self.0.notify_one();
    }
}

impl ClientConns {
    /// Registers connection `conn_id` of key `name` (a key id); it stays
    /// registered until the returned guard drops.
    pub(crate) fn register(self: &Arc<Self>, name: &str, conn_id: u64) -> Registration {
        let revoked = Revoked::default();
        let mut by_key = self.by_key.lock().expect("client registry lock poisoned");
        // The connections of one key share one copy of its name.
        let name = match by_key.get_key_value(name) {
            Some((name, _)) => name.clone(),
            None => Arc::from(name),
        };
        by_key
            .entry(name.clone())
            .or_default()
            .insert(conn_id, revoked.clone());
        Registration {
            conns: self.clone(),
            name,
            conn_id,
            revoked,
        }
    }

    /// Closes every connection of the keys `key_ids`; returns how many
    /// there were.
    pub fn revoke<S: AsRef<str>>(&self, key_ids: &[S]) -> usize {
        let mut by_key = self.by_key.lock().expect("client registry lock poisoned");
        let mut closed = 0;
        for key_id in key_ids {
            let conns = by_key.remove(key_id.as_ref()).unwrap_or_default();
            for revoked in conns.values() {
                revoked.cancel();
            }
            closed += conns.len();
        }
        closed
    }
}

/// A connection's place in [`ClientConns`], given back on drop.
#[derive(Debug)]
pub(crate) struct Registration {
    conns: Arc<ClientConns>,
    name: Arc<str>,
    conn_id: u64,
    revoked: Revoked,
}

impl Registration {
    /// Resolves when the connection's key is revoked.
    pub(crate) fn revoked(&self) -> &Revoked {
        &self.revoked
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut by_key = self
            .conns
            .by_key
            .lock()
            .expect("client registry lock poisoned");
        if let Some(conns) = by_key.get_mut(&*self.name) {
            conns.remove(&self.conn_id);
            if conns.is_empty() {
                by_key.remove(&*self.name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoking_a_key_cancels_its_connections_only_and_drops_forget() {
        let conns = Arc::new(ClientConns::default());
        let a1 = conns.register("ops", 1);
        let a2 = conns.register("ops", 2);
        let b = conns.register("ci", 3);
        drop(a2);
        assert_eq!(conns.revoke(&["ops", "nobody"]), 1);
        let fired = |r: &Registration| {
            let revoked = r.revoked().clone();
            let mut waiting = std::pin::pin!(revoked.cancelled());
            let waker = std::task::Waker::noop();
            waiting
                .as_mut()
                .poll(&mut std::task::Context::from_waker(waker))
                .is_ready()
        };
        assert!(fired(&a1), "the revoked key's connection is told");
        assert!(!fired(&b), "another key's is not");
        assert_eq!(conns.revoke(&["ops"]), 0);
        drop(b);
        assert!(conns.by_key.lock().unwrap().is_empty());
    }
}
