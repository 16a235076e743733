//! The hostile-input suite: well over 150 bad inputs, on both endpoints,
//! before and after authentication. Each must get its documented error or
//! close code, and a control connection must stay healthy throughout.
//! (Floods, slowloris and pre-auth floods are in `protocol.rs`, `rate.rs`
//! and the CLI's `lockout.rs`; role violations are also walked in `roles.rs`.)

use futures_util::{SinkExt as _, StreamExt as _};
use muster_proto::{CloseCode, ErrorCode, Role};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::fixture::{TestHub, WAIT};

pub(crate) type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// What an input must get.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    /// An `error` with this code; the connection stays open.
    Error(ErrorCode),
    /// A reply of this type (the input was odd but valid).
    Reply(&'static str),
    /// An `error` with this code, then a close with this code.
    Refused(ErrorCode, u16),
    /// A close with this code, with or without an `error` first.
    Closed(u16),
    /// Nothing within [`ANSWER_WITHIN`].
    Silence,
}

/// How long an input may go unanswered before it counts as ignored.
const ANSWER_WITHIN: std::time::Duration = std::time::Duration::from_secs(3);

struct Case {
    name: String,
    frame: Message,
    expect: Expect,
}

fn case(name: impl Into<String>, text: impl Into<String>, expect: Expect) -> Case {
    Case {
        name: name.into(),
        frame: Message::text(text.into()),
        expect,
    }
}

fn request(kind: &str, data: Value) -> String {
    json!({"type": kind, "id": "h", "data": data}).to_string()
}

/// Every request type: what the client may send but the connection's own.
fn request_types() -> impl Iterator<Item = &'static str> {
    <muster_proto::ClientToHub as muster_proto::messages::Message>::TYPES
        .iter()
        .copied()
        .filter(|kind| !matches!(*kind, "hello" | "heartbeat" | "heartbeat.ack"))
}

/// Inputs on an authenticated admin client connection.
fn admin_cases() -> Vec<Case> {
    use ErrorCode::*;
    use Expect::*;
    let mut cases = Vec::new();
    for text in [
        "",
        " ",
        "{",
        "}",
        "[",
        "[]",
        "null",
        "true",
        "42",
        "\"agent.list\"",
        "{\"type\":",
        "{'type':'agent.list'}",
        "\u{0}",
        "{\"type\":\"agent.list\",\"data\":{}",
        "{\"data\":{}}",
        "{\"type\":null,\"data\":{}}",
        "{\"type\":123,\"data\":{}}",
        "{\"type\":[],\"data\":{}}",
        "{\"type\":\"agent.list\",\"data\":{}}garbage",
    ] {
        cases.push(case(
            format!("not an envelope: {text:?}"),
            text,
            Error(InvalidMessage),
        ));
    }
    let long_type = "x".repeat(10_000);
    for kind in [
        "nope",
        "AGENT.LIST",
        "agent.list ",
        "run.output",
        "connection.ack",
        "agent.added",
        "error",
        "ok",
        "run.start",
        "x",
        &long_type,
    ] {
        let shown: String = kind.chars().take(20).collect();
        let text = json!({"type": kind, "data": {}}).to_string();
        cases.push(case(
            format!("unknown type {shown:?}"),
            text,
            Error(UnknownType),
        ));
    }
    for kind in request_types() {
        for data in [json!("string"), json!([1, 2]), json!(42), json!(null)] {
            let name = format!("{kind} with data {data}");
            cases.push(case(name, request(kind, data), Error(InvalidMessage)));
        }
    }
    let long_name = "a".repeat(65);
    for name in [
        "",
        &long_name,
        "with space",
        "-lead",
        "ctl\u{1b}[31m",
        "名前",
        "../etc",
        "a\nb",
    ] {
        let text = request("agent.get", json!({"name": name}));
        cases.push(case(
            format!("agent.get name {name:?}"),
            text,
            Error(InvalidMessage),
        ));
    }
    for run in [
        json!(""),
        json!("not-a-ulid"),
        json!("01JD3XK4M2Q8R7V6T5S4P3N2B"),
        json!(123),
    ] {
        let text = request("run.get", json!({"run": run}));
        cases.push(case(
            format!("run.get run {run}"),
            text,
            Error(InvalidMessage),
        ));
        let text = request("job.get", json!({"job": run}));
        cases.push(case(
            format!("job.get job {run}"),
            text,
            Error(InvalidMessage),
        ));
    }
    for (what, data) in [
        (
            "empty argv",
            json!({"agent": "web-1", "command": {"argv": []}}),
        ),
        (
            "empty argv[0]",
            json!({"agent": "web-1", "command": {"argv": [""]}}),
        ),
        (
            "blank shell",
            json!({"agent": "web-1", "command": {"shell": "   "}}),
        ),
        (
            "argv a string",
            json!({"agent": "web-1", "command": {"argv": "ls"}}),
        ),
        ("no command", json!({"agent": "web-1"})),
        ("no agent", json!({"command": {"argv": ["true"]}})),
        (
            "bad agent",
            json!({"agent": "bad name", "command": {"argv": ["true"]}}),
        ),
        (
            "priority 1000",
            json!({"agent": "web-1", "command": {"argv": ["true"]}, "priority": 1000}),
        ),
        (
            "priority -1000",
            json!({"agent": "web-1", "command": {"argv": ["true"]}, "priority": -1000}),
        ),
        (
            "negative timeout",
            json!({"agent": "web-1", "command": {"argv": ["true"]}, "timeout_ms": -1}),
        ),
        (
            "env a list",
            json!({"agent": "web-1", "command": {"argv": ["true"]}, "env": ["A=1"]}),
        ),
        (
            "action with env",
            json!({"agent": "web-1", "command": {"action": {"name": "x", "params": {}}}, "env": {"A": "1"}}),
        ),
        (
            "bad action name",
            json!({"agent": "web-1", "command": {"action": {"name": "Bad-Name", "params": {}}}}),
        ),
    ] {
        let expect = if what == "action with env" {
            Error(InvalidParams)
        } else {
            Error(InvalidMessage)
        };
        cases.push(case(
            format!("run.create {what}"),
            request("run.create", data),
            expect,
        ));
    }
    for selector in [
        "role~web",
        "(",
        "=web",
        ",",
        "role=web,",
        "role!web",
        "all,role=web",
    ] {
        let text = request("agent.list", json!({"selector": selector}));
        cases.push(case(
            format!("selector {selector:?}"),
            text,
            Error(InvalidSelector),
        ));
    }
    for channel in [
        "",
        "run:",
        "run:xyz",
        "agent:",
        "agent:bad name",
        "nope",
        "fleet:x",
        "job:123",
        "metrics:",
    ] {
        let text = request("subscribe", json!({"channel": channel}));
        cases.push(case(
            format!("subscribe {channel:?}"),
            text,
            Error(UnknownChannel),
        ));
    }
    for (what, kind, data, code) in [
        (
            "agent.add all",
            "agent.add",
            json!({"name": "all"}),
            InvalidMessage,
        ),
        (
            "agent.add empty",
            "agent.add",
            json!({"name": ""}),
            InvalidMessage,
        ),
        (
            "agent.label empty key",
            "agent.label",
            json!({"name": "nobody", "set": {"": "v"}}),
            InvalidMessage,
        ),
        (
            "agent.label long value",
            "agent.label",
            json!({"name": "nobody", "set": {"k": "v".repeat(300)}}),
            InvalidMessage,
        ),
        (
            "key.create empty",
            "key.create",
            json!({"name": "", "role": "viewer"}),
            InvalidMessage,
        ),
        (
            "key.create root",
            "key.create",
            json!({"name": "k", "role": "root"}),
            InvalidMessage,
        ),
        (
            "key.revoke unknown",
            "key.revoke",
            json!({"name": "nobody"}),
            KeyNotFound,
        ),
        (
            "enroll.create no uses",
            "enroll.create",
            json!({"uses": 0}),
            InvalidMessage,
        ),
        (
            "enroll.create forever",
            "enroll.create",
            json!({"expires_in_ms": u64::MAX}),
            InvalidMessage,
        ),
        (
            "enroll.create bad label",
            "enroll.create",
            json!({"labels": {"": "v"}}),
            InvalidMessage,
        ),
        (
            "enroll.revoke unknown",
            "enroll.revoke",
            json!({"id": "nobody"}),
            EnrollmentNotFound,
        ),
        (
            "run.cancel unknown",
            "run.cancel",
            json!({"run": "01JD3XK4M2Q8R7V6T5S4P3N2B1"}),
            RunNotFound,
        ),
        (
            "run.get unknown",
            "run.get",
            json!({"run": "01JD3XK4M2Q8R7V6T5S4P3N2B1"}),
            RunNotFound,
        ),
        (
            "job.cancel unknown",
            "job.cancel",
            json!({"job": "01JD3XK4M2Q8R7V6T5S4P3N2B1"}),
            JobNotFound,
        ),
        (
            "agent.get unknown",
            "agent.get",
            json!({"name": "nobody"}),
            AgentNotFound,
        ),
        (
            "agent.remove unknown",
            "agent.remove",
            json!({"name": "nobody"}),
            AgentNotFound,
        ),
        (
            "metrics.query unknown",
            "metrics.query",
            json!({"agent": "nobody"}),
            AgentNotFound,
        ),
        (
            "run.create unknown agent",
            "run.create",
            json!({"agent": "nobody", "command": {"argv": ["true"]}}),
            AgentNotFound,
        ),
        (
            "job.create no targets",
            "job.create",
            json!({"selector": "nobody", "steps": [{"name": "s", "command": {"argv": ["true"]}}]}),
            NoTargets,
        ),
        (
            "job.create no steps",
            "job.create",
            json!({"selector": "all", "steps": []}),
            InvalidMessage,
        ),
        (
            "hello again",
            "hello",
            json!({"token": "mst_x"}),
            InvalidMessage,
        ),
    ] {
        cases.push(case(what, request(kind, data), Error(code)));
    }
    for (what, id) in [("numeric id", json!(123)), ("object id", json!({"a": 1}))] {
        let text = json!({"type": "agent.list", "id": id, "data": {}}).to_string();
        cases.push(case(what, text, Error(InvalidMessage)));
    }
    // The longest id is answered with it.
    let text = json!({"type": "agent.list", "id": "i".repeat(64), "data": {}}).to_string();
    cases.push(case("64-byte id", text, Reply("agent.list")));
    for (what, bytes) in [
        ("empty binary", Vec::new()),
        ("random binary", vec![0xde, 0xad, 0xbe, 0xef, 0x00, 0x01]),
        (
            "header-shaped binary",
            [&[0u8, 2][..], b"{}", b"payload"].concat(),
        ),
    ] {
        cases.push(Case {
            name: what.to_owned(),
            frame: Message::binary(bytes),
            expect: Error(InvalidMessage),
        });
    }
    cases
}

/// Mutating requests on an authenticated viewer connection.
fn viewer_cases() -> Vec<Case> {
    let command = json!({"argv": ["true"]});
    [
        ("agent.add", json!({"name": "v-added"})),
        ("agent.remove", json!({"name": "nobody"})),
        ("agent.label", json!({"name": "nobody", "set": {"a": "b"}})),
        ("run.create", json!({"agent": "nobody", "command": command})),
        ("run.cancel", json!({"run": "01JD3XK4M2Q8R7V6T5S4P3N2B1"})),
        (
            "job.create",
            json!({"selector": "all", "steps": [{"name": "s", "command": command}]}),
        ),
        ("job.cancel", json!({"job": "01JD3XK4M2Q8R7V6T5S4P3N2B1"})),
        ("key.create", json!({"name": "v-key", "role": "admin"})),
        ("key.list", json!({})),
        ("key.revoke", json!({"name": "admin"})),
        ("subscribe", json!({"channel": "*"})),
    ]
    .into_iter()
    .map(|(kind, data)| {
        case(
            format!("viewer {kind}"),
            request(kind, data),
            Expect::Error(ErrorCode::Forbidden),
        )
    })
    .collect()
}

/// First messages on fresh client connections.
fn preauth_client_cases() -> Vec<Case> {
    use ErrorCode::*;
    use Expect::*;
    let mut cases = vec![
        case(
            "a request before hello",
            request("agent.list", json!({})),
            Refused(HandshakeRequired, CloseCode::PROTOCOL_ERROR),
        ),
        case(
            "not json before hello",
            "{",
            Closed(CloseCode::PROTOCOL_ERROR),
        ),
        case(
            "hello without token",
            json!({"type": "hello", "data": {}}).to_string(),
            Closed(CloseCode::PROTOCOL_ERROR),
        ),
        case(
            "hello with a numeric token",
            json!({"type": "hello", "data": {"token": 5}}).to_string(),
            Closed(CloseCode::PROTOCOL_ERROR),
        ),
        case(
            "unknown type before hello",
            json!({"type": "nope", "data": {}}).to_string(),
            Closed(CloseCode::PROTOCOL_ERROR),
        ),
        Case {
            name: "binary before hello".into(),
            frame: Message::binary(vec![1, 2, 3]),
            expect: Closed(CloseCode::PROTOCOL_ERROR),
        },
    ];
    let long = format!("mst_{}", "a".repeat(10_000));
    for token in [
        "",
        "mst_",
        "garbage",
        "mst_aaaaaaaaaaaa_",
        "mst_aaaaaaaaaaaa_wrong",
        &long,
        "mst_AAAAAAAAAAAA_uU5nbYaiNWzRhioCZz9GsFchRxCm4VRkAt-Xnom7I8Q",
    ] {
        let shown: String = token.chars().take(24).collect();
        let text = json!({"type": "hello", "data": {"token": token}}).to_string();
        cases.push(case(
            format!("client token {shown:?}"),
            text,
            Refused(AuthFailed, CloseCode::AUTH_FAILED),
        ));
    }
    cases
}

/// First messages on fresh agent connections.
fn preauth_agent_cases(agent_token: &str) -> Vec<Case> {
    use ErrorCode::*;
    use Expect::*;
    let hello = |patch: Value| {
        let mut data = json!({
            "token": agent_token, "name": "hostile", "hostname": "h", "os": "linux",
            "arch": "x86_64", "version": "1", "labels": {}, "capabilities": ["exec"],
            "max_concurrency": 1
        });
        for (k, v) in patch.as_object().unwrap() {
            data[k] = v.clone();
        }
        json!({"type": "hello", "data": data}).to_string()
    };
    let too_many_labels: serde_json::Map<String, Value> =
        (0..65).map(|i| (format!("k{i}"), json!("v"))).collect();
    vec![
        case(
            "agent: wrong token",
            hello(json!({"token": "mst_aaaaaaaaaaaa_wrong"})),
            Refused(AuthFailed, CloseCode::AUTH_FAILED),
        ),
        case(
            "agent: unknown enrollment token",
            hello(json!({"token": "mse_aaaaaaaaaaaa_wrong"})),
            Refused(AuthFailed, CloseCode::AUTH_FAILED),
        ),
        case(
            "agent: malformed enrollment token",
            hello(json!({"token": "mse_short"})),
            Refused(AuthFailed, CloseCode::AUTH_FAILED),
        ),
        case(
            "agent: someone else's name",
            hello(json!({"name": "other"})),
            Refused(AuthFailed, CloseCode::AUTH_FAILED),
        ),
        case(
            "agent: hostname of 300 bytes",
            hello(json!({"hostname": "h".repeat(300)})),
            Refused(InvalidMessage, CloseCode::PROTOCOL_ERROR),
        ),
        case(
            "agent: version of 100 bytes",
            hello(json!({"version": "v".repeat(100)})),
            Refused(InvalidMessage, CloseCode::PROTOCOL_ERROR),
        ),
        case(
            "agent: 65 labels",
            hello(json!({"labels": too_many_labels})),
            Refused(InvalidMessage, CloseCode::PROTOCOL_ERROR),
        ),
        case(
            "agent: a capability of 100 bytes",
            hello(json!({"capabilities": ["c".repeat(100)]})),
            Refused(InvalidMessage, CloseCode::PROTOCOL_ERROR),
        ),
        case(
            "agent: a request before hello",
            json!({"type": "heartbeat", "data": {"seq": 1}}).to_string(),
            Closed(CloseCode::PROTOCOL_ERROR),
        ),
        case("agent: not json", "}", Closed(CloseCode::PROTOCOL_ERROR)),
    ]
}

/// The next text message that answers a request (`re`) or is an error.
async fn next_answer(ws: &mut Ws) -> Result<Value, u16> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                let value: Value = serde_json::from_str(&text).unwrap();
                if value["type"] == "error" || !value["re"].is_null() {
                    return Ok(value);
                }
            }
            Some(Ok(Message::Close(Some(frame)))) => return Err(u16::from(frame.code)),
            Some(Ok(Message::Close(None))) | None | Some(Err(_)) => return Err(1006),
            Some(Ok(_)) => {}
        }
    }
}

async fn connect(hub: &TestHub, path: &str) -> Ws {
    tokio_tungstenite::connect_async(hub.ws_url(path))
        .await
        .unwrap()
        .0
}

async fn authenticated(hub: &TestHub, token: &str) -> Ws {
    let mut ws = connect(hub, "/ws/client").await;
    let hello = json!({"type": "hello", "data": {"token": token}});
    ws.send(Message::text(hello.to_string())).await.unwrap();
    loop {
        let Some(Ok(Message::Text(text))) = ws.next().await else {
            panic!("no ack");
        };
        if text.contains("connection.ack") {
            return ws;
        }
    }
}

/// What one input got, in the shape of [`Expect`].
async fn outcome(ws: &mut Ws, expect: Expect) -> Expect {
    let Ok(answer) = tokio::time::timeout(ANSWER_WITHIN, next_answer(ws)).await else {
        return Expect::Silence;
    };
    match (answer, expect) {
        (Ok(v), _) if v["type"] == "error" => {
            let code: ErrorCode = serde_json::from_value(v["data"]["code"].clone()).unwrap();
            if matches!(expect, Expect::Refused(..) | Expect::Closed(_)) {
                let close = tokio::time::timeout(WAIT, next_answer(ws))
                    .await
                    .expect("a close");
                return match close {
                    Err(close) if matches!(expect, Expect::Closed(_)) => Expect::Closed(close),
                    Err(close) => Expect::Refused(code, close),
                    Ok(_) => Expect::Error(code),
                };
            }
            Expect::Error(code)
        }
        (Ok(v), _) => Expect::Reply(match v["type"].as_str().unwrap_or_default() {
            "agent.list" => "agent.list",
            _ => "something else",
        }),
        (Err(close), _) => Expect::Closed(close),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hostile_input_gets_its_documented_code_and_the_hub_carries_on() {
    let hub = TestHub::start_with(|c| {
        // The limits have their own tests; here every input must reach its check.
        c.rate_messages_per_sec = 0;
        c.rate_auth_failures_per_min = 0;
    })
    .await;
    let (control, _control_events) = hub.client().await;
    let added = control
        .add_agent(
            muster_proto::AgentName::new("hostile").unwrap(),
            Default::default(),
        )
        .await
        .unwrap();
    let viewer = hub
        .hub
        .mint_key("hostile-viewer", Role::Viewer)
        .await
        .unwrap();

    let mut failures = Vec::new();
    let mut count = 0;
    // On one connection each: every input answered, the connection kept.
    for (token, cases) in [
        (hub.admin_token.clone(), admin_cases()),
        (viewer.expose().to_owned(), viewer_cases()),
    ] {
        let mut ws = authenticated(&hub, &token).await;
        for case in cases {
            count += 1;
            ws.send(case.frame).await.unwrap();
            let got = outcome(&mut ws, case.expect).await;
            if got != case.expect {
                failures.push(format!(
                    "{}: expected {:?}, got {got:?}",
                    case.name, case.expect
                ));
                if matches!(
                    got,
                    Expect::Closed(_) | Expect::Refused(..) | Expect::Silence
                ) {
                    ws = authenticated(&hub, &token).await;
                }
            }
        }
        // The connection that took all of it still works.
        ws.send(Message::text(request("agent.list", json!({}))))
            .await
            .unwrap();
        let got = outcome(&mut ws, Expect::Reply("agent.list")).await;
        assert_eq!(
            got,
            Expect::Reply("agent.list"),
            "the hostile connection itself"
        );
        assert!(control.agents().await.is_ok(), "the control connection");
    }
    // A fresh connection each: refused as documented.
    for (path, cases) in [
        ("/ws/client", preauth_client_cases()),
        ("/ws/agent", preauth_agent_cases(&added.token)),
    ] {
        for case in cases {
            count += 1;
            let mut ws = connect(&hub, path).await;
            ws.send(case.frame).await.unwrap();
            let got = outcome(&mut ws, case.expect).await;
            if got != case.expect {
                failures.push(format!(
                    "{}: expected {:?}, got {got:?}",
                    case.name, case.expect
                ));
            }
            assert!(
                control.agents().await.is_ok(),
                "the control connection, after {}",
                case.name
            );
        }
    }
    // Larger than max_message_bytes: closed 1009.
    count += 1;
    let mut ws = authenticated(&hub, &hub.admin_token).await;
    let huge = request("agent.list", json!({"selector": "a".repeat(1_100_000)}));
    let _ = ws.send(Message::text(huge)).await;
    let got = outcome(&mut ws, Expect::Closed(CloseCode::MESSAGE_TOO_BIG)).await;
    if got != Expect::Closed(CloseCode::MESSAGE_TOO_BIG) {
        failures.push(format!("oversized message: got {got:?}"));
    }

    eprintln!("hostile: {count} inputs, {} unexpected", failures.len());
    assert!(
        failures.is_empty(),
        "{} of {count} inputs got the wrong answer:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(count >= 150, "only {count} inputs");
    assert!(
        control.agents().await.is_ok(),
        "the control connection, at the end"
    );
}
