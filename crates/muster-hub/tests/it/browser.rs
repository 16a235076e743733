//! Browser tokens: obtained with an API key over HTTP, presented in a
//! client `hello` instead of the key, and void once they expire or their
//! key is revoked.

use std::time::Duration;

use muster_client::{Client, ClientError};
use muster_proto::messages::BrowserToken;
use serde_json::{Value, json};

use crate::fixture::{TestHub, WAIT};

/// `POST /v1/browser-token` with `authorization` as the header's value;
/// the status and the JSON body.
async fn post_token(hub: &TestHub, authorization: Option<&str>) -> (u16, Value) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let addr = hub.url.trim_start_matches("http://");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let header = authorization.map_or(String::new(), |v| format!("Authorization: {v}\r\n"));
    let request = format!(
        "POST /v1/browser-token HTTP/1.1\r\nHost: {addr}\r\n{header}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(
        head.to_ascii_lowercase()
            .contains("cache-control: no-store"),
        "{head}"
    );
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

async fn issue(hub: &TestHub, key: &str) -> BrowserToken {
    let (status, body) = post_token(hub, Some(&format!("Bearer {key}"))).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_value(body).unwrap()
}

fn auth_failed<T: std::fmt::Debug>(result: Result<T, ClientError>) -> bool {
    matches!(result, Err(ClientError::Auth(_)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_token_stands_in_for_its_key_until_the_key_is_revoked() {
    let hub = TestHub::start().await;
    let _stage = hub.labeled_agent("stage-1", &[("env", "staging")]).await;
    let _prod = hub.labeled_agent("prod-1", &[("env", "prod")]).await;
    let (admin, _events) = hub.client().await;
    let admin_name = admin.ack().principal.name.clone();

    let issued = issue(&hub, &hub.admin_token).await;
    assert!(issued.token.starts_with("eyJ"));
    assert!(
        !issued.token.contains("mst_"),
        "the key is not in the token"
    );
    assert_eq!(issued.principal.name, admin_name);
    let now = muster_proto::UnixMillis::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    let lifetime = issued.expires_ms.saturating_sub(now);
    assert!(
        (14 * 60_000..=15 * 60_000 + 1_000).contains(&lifetime),
        "{lifetime} ms"
    );
    let (browser, _e) = Client::connect(&hub.url, &issued.token).await.unwrap();
    assert_eq!(browser.ack().principal.name, admin_name);
    assert_eq!(browser.agents().await.unwrap().len(), 2);

    // A scoped key's token is as scoped as the key.
    let created = admin
        .request(
            serde_json::from_value(json!({"type": "key.create", "data":
                {"name": "dash", "role": "viewer", "scope": "env=staging"}}))
            .unwrap(),
        )
        .await
        .unwrap();
    let muster_proto::HubToClient::KeyCreated(created) = created else {
        panic!("{created:?}");
    };
    let scoped = issue(&hub, &created.token).await;
    assert_eq!(scoped.principal.role.as_deref(), Some("viewer"));
    let (dash, mut dash_events) = Client::connect(&hub.url, &scoped.token).await.unwrap();
    let names: Vec<_> = dash
        .agents()
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.name.to_string())
        .collect();
    assert_eq!(names, ["stage-1"]);

    // Refusals: no key, a wrong key, a token that was tampered with.
    let (status, body) = post_token(&hub, None).await;
    assert_eq!((status, body["code"].as_str()), (401, Some("AUTH_FAILED")));
    let (status, body) = post_token(&hub, Some("Bearer mst_nobodynobody_secret")).await;
    assert_eq!((status, body["code"].as_str()), (401, Some("AUTH_FAILED")));
    let (status, _) = post_token(&hub, Some(&format!("Basic {}", hub.admin_token))).await;
    assert_eq!(status, 401);
    let mut tampered = scoped.token.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    assert!(auth_failed(Client::connect(&hub.url, &tampered).await));
    // A browser token cannot mint another.
    let (status, _) = post_token(&hub, Some(&format!("Bearer {}", scoped.token))).await;
    assert_eq!(status, 401);

    // Revoking the key closes the token's connection, and voids the token.
    admin
        .request(
            serde_json::from_value(json!({"type": "key.revoke", "data": {"name": "dash"}}))
                .unwrap(),
        )
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(1), async {
        while dash_events.recv().await.is_some() {}
    })
    .await
    .expect("the token's connection closes within a second");
    assert!(auth_failed(Client::connect(&hub.url, &scoped.token).await));

    // Every issue and refusal is in the audit log.
    let listed = admin
        .request(serde_json::from_value(json!({"type": "audit.list", "data": {}})).unwrap())
        .await
        .unwrap();
    let muster_proto::HubToClient::AuditList(listed) = listed else {
        panic!("{listed:?}");
    };
    let issues: Vec<_> = listed
        .entries
        .iter()
        .filter(|e| e.action == "browser_token")
        .map(|e| (e.actor.as_str(), e.outcome.as_str()))
        .collect();
    assert!(issues.contains(&(admin_name.as_str(), "ok")), "{issues:?}");
    assert!(issues.contains(&("dash", "ok")), "{issues:?}");
    assert!(issues.contains(&("-", "AUTH_FAILED")), "{issues:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_token_stops_working_when_it_expires() {
    let hub = TestHub::start_with(|config| config.browser_token_ttl_ms = 1_000).await;
    let issued = issue(&hub, &hub.admin_token).await;
    let (client, _e) = Client::connect(&hub.url, &issued.token).await.unwrap();
    assert!(client.agents().await.is_ok());
    // Refused from its expiry on (polled, as time has to pass).
    tokio::time::timeout(WAIT, async {
        while !auth_failed(Client::connect(&hub.url, &issued.token).await) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the token expires");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(now >= issued.expires_ms, "refused before its expiry");
}
