//! Live client connections by the name of the API key they authenticated
//! with, so that revoking a key closes them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

/// The live client connections, by key name. Shared by the engine, which
/// revokes, and the connections, which register themselves.
#[derive(Debug, Default)]
pub struct ClientConns {
    /// A std `Mutex`: held only to add, remove or cancel entries.
    by_key: Mutex<HashMap<String, HashMap<u64, Revoked>>>,
}

/// Cancelled when the connection's key is revoked.
#[derive(Debug, Clone)]
pub(crate) struct Revoked(CancellationToken);

impl Revoked {
    pub(crate) async fn cancelled(&self) {
        self.0.cancelled().await;
    }
}

impl ClientConns {
    /// Registers connection `conn_id` of key `name`; it stays registered
    /// until the returned guard drops.
    pub(crate) fn register(self: &Arc<Self>, name: &str, conn_id: u64) -> Registration {
        let revoked = Revoked(CancellationToken::new());
        self.by_key
            .lock()
            .expect("client registry lock poisoned")
            .entry(name.to_owned())
            .or_default()
            .insert(conn_id, revoked.clone());
        Registration {
            conns: self.clone(),
            name: name.to_owned(),
            conn_id,
            revoked,
        }
    }

    /// Closes every connection of key `name`; returns how many there were.
    pub fn revoke(&self, name: &str) -> usize {
        let conns = self
            .by_key
            .lock()
            .expect("client registry lock poisoned")
            .remove(name)
            .unwrap_or_default();
        for revoked in conns.values() {
            revoked.0.cancel();
        }
        conns.len()
    }
}

/// A connection's place in [`ClientConns`], given back on drop.
#[derive(Debug)]
pub(crate) struct Registration {
    conns: Arc<ClientConns>,
    name: String,
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
        if let Some(conns) = by_key.get_mut(&self.name) {
            conns.remove(&self.conn_id);
            if conns.is_empty() {
                by_key.remove(&self.name);
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
        assert_eq!(conns.revoke("ops"), 1);
        assert!(a1.revoked().0.is_cancelled());
        assert!(!b.revoked().0.is_cancelled());
        assert_eq!(conns.revoke("ops"), 0);
        drop(b);
        assert!(conns.by_key.lock().unwrap().is_empty());
    }
}
