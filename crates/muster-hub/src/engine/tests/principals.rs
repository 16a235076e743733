//! The connections of one API key share one `Principal`, and the engine
//! lets go of it once none holds it.

use std::sync::Arc;

use super::fleet::{START_MS, config};
use crate::auth;
use crate::engine::Engine;
use crate::store::{ApiKeyRecord, Snapshot};

#[test]
fn the_connections_of_a_key_share_its_principal_until_none_is_left() {
    let minted = auth::mint();
    let key = ApiKeyRecord {
        key_id: minted.key_id.clone(),
        name: "ops".into(),
        role: "operator".into(),
        secret_hash: minted.secret_hash.clone(),
        scope: None,
        expires_ms: None,
    };
    let snapshot = Snapshot {
        api_keys: vec![key],
        ..Snapshot::default()
    };
    let mut engine = Engine::new(Arc::new(config()), "hub".into(), snapshot, START_MS);
    let token = minted.token.expose();
    let first = engine.client_hello(token, None, START_MS).unwrap();
    let second = engine.client_hello(token, None, START_MS).unwrap();
    assert!(Arc::ptr_eq(&first.principal, &second.principal));
    assert_eq!(first.principal.name, "ops");
    drop(first);
    engine.tick(START_MS);
    assert_eq!(engine.principals.len(), 1, "one connection still holds it");
    drop(second);
    engine.tick(START_MS);
    assert!(engine.principals.is_empty(), "nobody holds it any more");
}
