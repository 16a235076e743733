//! Rate limits: a client that floods its connection gets `RATE_LIMIT`, with
//! a retry hint, for what passes its rate, and another client is still
//! served; commands are counted per key; a source that keeps failing to
//! authenticate is refused for a while.

use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use muster_client::Client;
use muster_proto::{CloseCode, ErrorCode, Role};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::fixture::TestHub;

const FLOOD: usize = 100_000;

type Split = (
    futures_util::stream::SplitSink<crate::hostile::Ws, Message>,
    futures_util::stream::SplitStream<crate::hostile::Ws>,
);

/// A raw client connection that has sent its `hello`, split in two.
async fn say_hello(hub: &TestHub, token: &str) -> Split {
    let (ws, _) = tokio_tungstenite::connect_async(hub.ws_url("/ws/client"))
        .await
        .unwrap();
    let (mut sink, stream) = ws.split();
    let hello = json!({"type": "hello", "data": {"token": token}});
    sink.send(Message::text(hello.to_string())).await.unwrap();
    (sink, stream)
}

/// Median of `samples` round trips of `agent.list` on `client`.
async fn median_latency(client: &Client, samples: usize) -> Duration {
    let mut took = Vec::with_capacity(samples);
    for _ in 0..samples {
        let started = Instant::now();
        client.agents().await.expect("the other client is served");
        took.push(started.elapsed());
    }
    took.sort();
    took[samples / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_client_is_rate_limited_and_another_client_is_still_served() {
    let hub = TestHub::start().await;
    let (other, _other_events) = hub.client().await;
    let idle = median_latency(&other, 50).await;

    let token = hub.hub.mint_key("flooder", Role::Viewer).await.unwrap();
    let (mut sink, mut stream) = say_hello(&hub, token.expose()).await;

    // Replies are read while the flood is written, as a well-behaved client would.
    let reader = tokio::spawn(async move {
        let (mut passed, mut limited, mut hint) = (0usize, 0usize, None);
        while passed + limited < FLOOD {
            let Some(Ok(Message::Text(text))) = stream.next().await else {
                panic!("the flooding connection ended after {passed} + {limited} replies");
            };
            let reply: Value = serde_json::from_str(&text).unwrap();
            if reply["re"].is_null() {
                continue; // the ack, the agent list, heartbeats, fleet events
            }
            match reply["type"].as_str() {
                Some("agent.list") => passed += 1,
                Some("error") => {
                    assert_eq!(
                        reply["data"]["code"],
                        ErrorCode::RateLimit.as_str(),
                        "{reply}"
                    );
                    hint = reply["data"]["retry_after_ms"].as_u64().or(hint);
                    limited += 1;
                }
                other => panic!("unexpected reply {other:?}: {reply}"),
            }
        }
        (passed, limited, hint)
    });
    let flood_started = Instant::now();
    let flood = tokio::spawn(async move {
        for i in 0..FLOOD {
            let request = format!(r#"{{"type":"agent.list","id":"{i}","data":{{}}}}"#);
            sink.feed(Message::text(request)).await.unwrap();
        }
        sink.flush().await.unwrap();
        sink
    });
    let during = median_latency(&other, 50).await;
    let _sink = flood.await.unwrap();
    let (passed, limited, hint) = tokio::time::timeout(Duration::from_secs(120), reader)
        .await
        .expect("every flooded request is answered")
        .unwrap();
    let took = flood_started.elapsed();
    eprintln!(
        "rate: {FLOOD} requests in {took:?}: {passed} answered, {limited} RATE_LIMIT; \
         other client's median agent.list {idle:?} idle, {during:?} during the flood"
    );
    // 100 at once, then 100 a second: what passes is bounded by the time taken.
    let allowed = 100 + (took.as_secs_f64() * 100.0).ceil() as usize + 1;
    assert!(
        passed >= 100 && passed <= allowed,
        "{passed} passed, at most {allowed}"
    );
    assert_eq!(passed + limited, FLOOD);
    assert!(
        hint.is_some_and(|ms| ms > 0 && ms <= 1000),
        "retry hint {hint:?}"
    );
    assert!(
        other.agents().await.is_ok(),
        "the other client is still served"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_limited_per_key_and_failed_logins_per_address() {
    let hub = TestHub::start_with(|c| {
        c.rate_commands_per_min = 3;
        c.rate_auth_failures_per_min = 2;
    })
    .await;
    let token = hub.hub.mint_key("ci", Role::Operator).await.unwrap();
    let (first, _e1) = Client::connect(&hub.url, token.expose()).await.unwrap();
    let (second, _e2) = Client::connect(&hub.url, token.expose()).await.unwrap();
    let run = || {
        serde_json::from_value(json!({
            "type": "run.create", "data": {"agent": "nobody", "command": {"argv": ["true"]}}
        }))
        .unwrap()
    };
    // Three pass the limit (and fail for other reasons), on either connection.
    for client in [&first, &second, &first] {
        let err = client.request(run()).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::AgentNotFound), "{err:?}");
    }
    let err = second.request(run()).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::RateLimit), "{err:?}");
    assert!(err.to_string().contains("retry in"), "{err}");
    // Reads are not commands.
    assert!(second.agents().await.is_ok());

    // Two failed logins pass as AUTH_FAILED; the next is refused as a rate.
    let bad = "mst_aaaaaaaaaaaa_wrongwrongwrongwrongwrongwrongwrongwrongwro";
    for _ in 0..3 {
        let err = Client::connect(&hub.url, bad).await.unwrap_err();
        assert!(
            matches!(err, muster_client::ClientError::Auth(_)),
            "{err:?}"
        );
    }
    let (_sink, mut stream) = say_hello(&hub, token.expose()).await;
    let Some(Ok(Message::Text(text))) = stream.next().await else {
        panic!("no answer to hello");
    };
    let reply: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        reply["data"]["code"],
        ErrorCode::RateLimit.as_str(),
        "{reply}"
    );
    let Some(Ok(Message::Close(Some(frame)))) = stream.next().await else {
        panic!("not closed");
    };
    assert_eq!(u16::from(frame.code), CloseCode::RATE_LIMITED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_at_its_subscription_cap_is_refused_more_and_keeps_what_it_has() {
    let hub = TestHub::start_with(|c| c.max_subscriptions_per_connection = 3).await;
    hub.agent("web-1", 4).await;
    let (client, _events) = hub.client().await;
    // `fleet` is the first; two more fit.
    client.subscribe("agent:web-1", None).await.unwrap();
    client.subscribe("metrics:web-1", None).await.unwrap();
    let err = client.subscribe("*", None).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidState), "{err:?}");
    assert!(
        err.to_string().contains("max_subscriptions_per_connection"),
        "{err}"
    );
    // Again to one it holds is fine; a run that would subscribe is refused whole.
    client.subscribe("agent:web-1", None).await.unwrap();
    let create = serde_json::from_value(json!({
        "type": "run.create",
        "data": {"agent": "web-1", "command": {"argv": ["true"]}, "subscribe": true}
    }))
    .unwrap();
    let err = client.request(create).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidState), "{err:?}");
    let runs = client
        .request(serde_json::from_value(json!({"type": "run.list", "data": {}})).unwrap())
        .await
        .unwrap();
    let muster_proto::HubToClient::RunList(runs) = runs else {
        panic!("{runs:?}");
    };
    assert!(runs.runs.is_empty(), "a refused run.create made a run");
    // Room again after an unsubscribe.
    let unsubscribe = serde_json::from_value(
        json!({"type": "unsubscribe", "data": {"channel": "metrics:web-1"}}),
    )
    .unwrap();
    client.request(unsubscribe).await.unwrap();
    client.subscribe("*", None).await.unwrap();
}
