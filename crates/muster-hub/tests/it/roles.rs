//! Roles: every request type sent under every role gets `FORBIDDEN` exactly
//! when the role table says so, the table in `docs/protocol.md` is that
//! table, and revoking a key closes its live connections.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use muster_client::Client;
use muster_proto::{ClientToHub, ErrorCode, Role, required_role};
use serde_json::json;

use crate::fixture::TestHub;

const RUN: &str = "01JD3XK4M2Q8R7V6T5S4P3N2B1";

/// One request of each type, with `data` valid enough to reach the role check.
fn samples() -> Vec<(&'static str, ClientToHub)> {
    let command = json!({"argv": ["true"]});
    let data = [
        ("agent.list", json!({})),
        ("agent.get", json!({"name": "nobody"})),
        ("agent.add", json!({"name": "added-by-test"})),
        ("agent.remove", json!({"name": "nobody"})),
        ("agent.label", json!({"name": "nobody", "set": {"a": "b"}})),
        ("run.create", json!({"agent": "nobody", "command": command})),
        ("run.get", json!({"run": RUN})),
        ("run.list", json!({})),
        ("run.cancel", json!({"run": RUN})),
        ("metrics.query", json!({"agent": "nobody"})),
        (
            "job.create",
            json!({"selector": "nobody", "steps": [{"name": "s", "command": command}]}),
        ),
        ("job.get", json!({"job": RUN})),
        ("job.list", json!({})),
        ("job.targets", json!({"job": RUN})),
        ("job.cancel", json!({"job": RUN})),
        ("subscribe", json!({"channel": "fleet"})),
        ("subscribe", json!({"channel": "*"})),
        ("subscribe", json!({"channel": "audit"})),
        ("unsubscribe", json!({"channel": "fleet"})),
        (
            "key.create",
            json!({"name": "made-by-test", "role": "viewer"}),
        ),
        ("key.list", json!({})),
        ("key.revoke", json!({"name": "nobody"})),
        ("agent.rotate_token", json!({"name": "nobody"})),
        ("key.rotate", json!({"name": "nobody"})),
        ("audit.list", json!({})),
        (
            "enroll.create",
            json!({"labels": {"env": "test"}, "uses": 1, "expires_in_ms": 60_000}),
        ),
        ("enroll.list", json!({})),
        ("enroll.revoke", json!({"id": "nobody"})),
        ("session.attach", json!({"run": RUN})),
        ("session.detach", json!({"run": RUN})),
        ("session.input", json!({"run": RUN, "seq": 1, "data": "x"})),
        (
            "session.resize",
            json!({"run": RUN, "cols": 80, "rows": 24}),
        ),
        ("session.snapshot", json!({"run": RUN})),
    ];
    data.into_iter()
        .map(|(kind, data)| {
            let msg = serde_json::from_value(json!({"type": kind, "data": data}))
                .unwrap_or_else(|e| panic!("sample {kind}: {e}"));
            (kind, msg)
        })
        .collect()
}

/// The role table of `docs/protocol.md`, section 2.3: type → its cell.
fn documented_table() -> BTreeMap<String, String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/protocol.md");
    let text = std::fs::read_to_string(path).expect("docs/protocol.md");
    let start = text
        .find("<!-- role-table")
        .expect("the role table's start marker");
    let end = text
        .find("<!-- /role-table -->")
        .expect("the role table's end marker");
    text[start..end]
        .lines()
        .filter_map(|line| {
            let cells: Vec<_> = line.split('|').map(str::trim).collect();
            let kind = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            Some((kind.to_owned(), cells.get(2)?.to_string()))
        })
        .collect()
}

#[test]
fn the_documented_table_is_the_hubs() {
    let documented = documented_table();
    let mut seen = BTreeMap::new();
    for (kind, msg) in samples() {
        let need = required_role(&msg).expect("every request needs a role");
        seen.entry(kind).or_insert_with(Vec::new).push(need);
    }
    for (kind, needs) in &seen {
        let cell = documented
            .get(*kind)
            .unwrap_or_else(|| panic!("{kind} is not in the documented table"));
        let first = needs[0].as_str();
        assert!(
            cell.starts_with(first),
            "{kind}: documented {cell:?}, hub {needs:?}"
        );
        if *kind == "subscribe" {
            assert_eq!(needs, &[Role::Viewer, Role::Admin, Role::Admin]);
            assert!(cell.contains("admin for `all`"), "{cell}");
            assert!(cell.contains("`audit`"), "{cell}");
        }
    }
    // Every documented row is a request type the hub knows, and every
    // request type the hub knows (but the connection's own) is documented.
    let own = ["hello", "heartbeat", "heartbeat.ack"];
    for kind in <ClientToHub as muster_proto::messages::Message>::TYPES {
        assert_eq!(
            documented.contains_key(*kind),
            !own.contains(kind),
            "{kind}: documented or not as it should be"
        );
        if !own.contains(kind) {
            assert!(seen.contains_key(kind), "no sample for {kind}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_type_under_every_role_is_forbidden_exactly_below_its_role() {
    let hub = TestHub::start().await;
    for role in Role::ALL {
        let token = hub.hub.mint_key(&format!("as-{role}"), role).await.unwrap();
        let (client, _events) = Client::connect(&hub.url, token.expose()).await.unwrap();
        for (kind, msg) in samples() {
            let need = required_role(&msg).unwrap();
            let answer = client.request(msg).await;
            let forbidden = matches!(&answer, Err(e) if e.code() == Some(ErrorCode::Forbidden));
            assert_eq!(
                forbidden,
                !role.allows(need),
                "{kind} as {role} (needs {need}): {answer:?}"
            );
        }
        // The connection is still there after its refusals.
        assert!(client.agents().await.is_ok(), "{role} was cut off");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_key_closes_its_connections_within_a_second_and_the_token_then_fails() {
    let hub = TestHub::start().await;
    let (admin, _events) = hub.client().await;
    let created = admin
        .request(
            serde_json::from_value(json!({
                "type": "key.create", "data": {"name": "ops", "role": "operator"}
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let muster_proto::HubToClient::KeyCreated(created) = created else {
        panic!("{created:?}");
    };
    assert_eq!(created.key.role, Role::Operator);
    let (ops, mut ops_events) = Client::connect(&hub.url, &created.token).await.unwrap();
    let (other, _other_events) = hub.client().await;

    let started = Instant::now();
    let revoked = admin
        .request(
            serde_json::from_value(json!({"type": "key.revoke", "data": {"name": "ops"}})).unwrap(),
        )
        .await
        .unwrap();
    let muster_proto::HubToClient::KeyRevoked(revoked) = revoked else {
        panic!("{revoked:?}");
    };
    assert_eq!(revoked.closed_connections, 1);
    // The connection ends: its event stream closes.
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while ops_events.recv().await.is_some() {}
    })
    .await;
    let took = started.elapsed();
    assert!(ended.is_ok(), "the revoked key's connection stayed open");
    assert!(took < Duration::from_secs(1), "closed after {took:?}");
    assert!(
        ops.agents().await.is_err(),
        "the revoked connection still answers"
    );
    let err = Client::connect(&hub.url, &created.token).await.unwrap_err();
    assert!(
        matches!(err, muster_client::ClientError::Auth(_)),
        "{err:?}"
    );
    assert!(
        other.agents().await.is_ok(),
        "another key's connection was closed"
    );

    // Unknown names, and the last admin key, are refused.
    let err = admin
        .request(
            serde_json::from_value(json!({"type": "key.revoke", "data": {"name": "ops"}})).unwrap(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::KeyNotFound));
    let admin_name = admin.ack().principal.name.clone();
    let err = admin
        .request(
            serde_json::from_value(json!({"type": "key.revoke", "data": {"name": admin_name}}))
                .unwrap(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidState), "{err:?}");
}
