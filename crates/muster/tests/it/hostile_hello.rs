//! An agent that describes itself with terminal escapes, or with fields past
//! the documented caps: the hub refuses what is too long with
//! `INVALID_MESSAGE`, and the CLI prints what it keeps escaped.

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::fixture::{Server, path_in, tempdir};

/// Says `hello` as agent `token` with `hostname`; returns the first message
/// the hub answers with, and, unless that is `connection.ack`, whether the
/// hub then closed the connection.
async fn hello(hub: &str, token: &str, hostname: &str) -> (Value, bool) {
    let url = format!("{}/ws/agent", hub.replacen("http://", "ws://", 1));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let hello = json!({"type": "hello", "data": {
        "token": token, "hostname": hostname, "os": "linux", "arch": "x86_64",
        "version": "0.0.0-hostile", "max_concurrency": 1}});
    ws.send(Message::text(hello.to_string())).await.unwrap();
    let first: Value = loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => break serde_json::from_str(&text).unwrap(),
            Some(Ok(_)) => continue,
            other => panic!("no answer to hello: {other:?}"),
        }
    };
    if first["type"] == "connection.ack" {
        return (first, false);
    }
    let closed = loop {
        match ws.next().await {
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break true,
            Some(Ok(_)) => continue,
        }
    };
    (first, closed)
}

#[test]
fn escapes_are_printed_escaped_and_fields_past_the_caps_are_refused() {
    let dir = tempdir();
    let hub = Server::hub(&path_in(&dir, "hub"), true);
    let cli = hub.cli(hub.token.as_deref().unwrap());
    let added = cli.json(&["agents", "add", "evil", "--json"]);
    let token = added["token"].as_str().unwrap().to_owned();
    let runtime = tokio::runtime::Runtime::new().unwrap();

    // Past the cap: refused before anything is stored.
    let long = format!("\x1b]0;pwned\x07{}", "h".repeat(70_000));
    let (answer, closed) = runtime.block_on(hello(&hub.hub, &token, &long));
    assert_eq!(answer["type"], "error", "{answer}");
    assert_eq!(answer["data"]["code"], "INVALID_MESSAGE", "{answer}");
    assert!(closed, "the connection stays open after a refused hello");

    // Within the cap, with escapes: kept, and printed escaped.
    let hostname = "\x1b[2J\x1b[31mred\x1b]0;title\x07\u{9b}1m";
    let (answer, _) = runtime.block_on(hello(&hub.hub, &token, hostname));
    assert_eq!(answer["type"], "connection.ack", "{answer}");
    for args in [&["agents", "list"][..], &["agents", "show", "evil"][..]] {
        let out = cli.output(args);
        assert!(out.status.success(), "{args:?}: {out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(
            !text.contains('\x1b') && !text.contains('\x07'),
            "{args:?}: {text:?}"
        );
        assert!(!text.contains('\u{9b}'), "{args:?}: {text:?}");
        assert!(text.contains("\\x1b[2J\\x1b[31mred"), "{args:?}: {text:?}");
    }
    // JSON keeps the bytes as they were, encoded.
    let listed = cli.json(&["agents", "show", "evil", "--json"]);
    assert_eq!(listed["hostname"], hostname);
}
