//! Line parsing, validation, the line limit and the queue's refusals.

use muster_proto::RunId;
use serde_json::json;

use super::*;

const TS_MS: u64 = 1_700_000_000_000;

fn parse(line: &str) -> Result<AgentEvent, String> {
    parse_line(line.as_bytes(), TS_MS)
}

#[test]
fn a_line_becomes_a_stamped_event() {
    let run = RunId::generate();
    let line = format!(r#"{{"type":"site.deploy_done","data":{{"n":1}},"run":"{run}"}}"#);
    let event = parse(&line).unwrap();
    assert_eq!(event.kind, "site.deploy_done");
    assert_eq!(event.data, json!({"n": 1}));
    assert_eq!(event.run, Some(run));
    assert_eq!(event.ts_ms, TS_MS);
}

#[test]
fn run_is_optional_and_data_defaults_to_an_empty_object() {
    let event = parse(r#"{"type":"git.push.completed"}"#).unwrap();
    assert_eq!(event.run, None);
    assert_eq!(event.data, json!({}));
}

#[test]
fn malformed_json_is_named() {
    let error = parse(r#"{"type":"site.operation""#).unwrap_err();
    assert!(error.starts_with("malformed event line:"), "{error}");
    let error = parse(r#"{"data":{}}"#).unwrap_err();
    assert!(error.contains("missing field `type`"), "{error}");
    let error = parse(r#"{"type":"a.b","extra":1}"#).unwrap_err();
    assert!(error.contains("unknown field `extra`"), "{error}");
    let error = parse(r#"{"type":"a.b","run":"nope"}"#).unwrap_err();
    assert!(error.starts_with("malformed event line:"), "{error}");
}

#[test]
fn invalid_types_and_data_are_refused() {
    for kind in [
        "deploy",
        "Site.op",
        "site..op",
        "site.op-x",
        ".site",
        "site.",
    ] {
        let error = parse(&format!(r#"{{"type":"{kind}"}}"#)).unwrap_err();
        assert!(error.contains("invalid event type"), "{kind}: {error}");
    }
    let long = format!("a.{}", "b".repeat(AgentEvent::MAX_TYPE_LEN));
    assert!(parse(&format!(r#"{{"type":"{long}"}}"#)).is_err());
    let error = parse(r#"{"type":"a.b","data":[1]}"#).unwrap_err();
    assert_eq!(error, "event data must be a JSON object");
    let big = "x".repeat(AgentEvent::MAX_DATA_BYTES);
    let error = parse(&format!(r#"{{"type":"a.b","data":{{"s":"{big}"}}}}"#)).unwrap_err();
    assert!(error.contains("the limit is"), "{error}");
}

#[tokio::test]
async fn lines_are_read_up_to_the_limit() {
    let at_limit = "x".repeat(MAX_EVENT_LINE_BYTES);
    let input = format!("one\r\n{at_limit}\n{at_limit}y\nlast");
    let mut reader = BufReader::new(input.as_bytes());
    let mut line = Vec::new();
    assert_eq!(
        read_line(&mut reader, &mut line).await.unwrap(),
        Line::Complete
    );
    assert_eq!(line, b"one\r");
    assert_eq!(
        read_line(&mut reader, &mut line).await.unwrap(),
        Line::Complete
    );
    assert_eq!(line.len(), MAX_EVENT_LINE_BYTES);
    assert_eq!(
        read_line(&mut reader, &mut line).await.unwrap(),
        Line::TooLong
    );
}

#[tokio::test]
async fn the_last_line_may_lack_a_newline() {
    let mut reader = BufReader::new(&b"last"[..]);
    let mut line = Vec::new();
    assert_eq!(
        read_line(&mut reader, &mut line).await.unwrap(),
        Line::Complete
    );
    assert_eq!(line, b"last");
    assert_eq!(read_line(&mut reader, &mut line).await.unwrap(), Line::End);
}

#[test]
fn a_full_queue_refuses_with_the_connection_state() {
    let (queue, mut event_rx) = queue();
    let line = br#"{"type":"a.b"}"#;
    for _ in 0..EVENT_BUFFER {
        assert_eq!(queue.accept(line), Reply::ok());
    }
    assert_eq!(queue.accept(line), Reply::error(FULL_OFFLINE));
    let online = queue.online();
    assert_eq!(queue.accept(line), Reply::error(FULL_ONLINE));
    drop(online);
    event_rx.try_recv().unwrap();
    assert_eq!(queue.accept(line), Reply::ok());
}

#[test]
fn an_invalid_line_is_not_queued() {
    let (queue, mut event_rx) = queue();
    let reply = queue.accept(br#"{"type":"Nope"}"#);
    assert!(!reply.ok);
    assert!(event_rx.try_recv().is_err());
}

#[test]
fn replies_are_one_json_line() {
    assert_eq!(Reply::ok().encode(), "{\"ok\":true}\n");
    assert_eq!(
        Reply::error("no").encode(),
        "{\"ok\":false,\"error\":\"no\"}\n"
    );
}

#[tokio::test]
async fn the_socket_replaces_a_stale_one_and_is_removed_on_drop() {
    let dir = tempfile::tempdir().unwrap();
    let stale = std::os::unix::net::UnixListener::bind(dir.path().join(SOCKET_FILE_NAME)).unwrap();
    drop(stale);
    let (event_queue, _event_rx) = queue();
    let socket = EventSocket::bind(Some(dir.path()), event_queue).unwrap();
    assert_eq!(socket.path(), dir.path().join(SOCKET_FILE_NAME));
    let mode = std::fs::metadata(socket.path())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let path = socket.path().to_owned();
    drop(socket);
    assert!(!path.exists());
}

#[tokio::test]
async fn without_a_state_dir_the_socket_is_in_a_private_dir() {
    let (event_queue, _event_rx) = queue();
    let socket = EventSocket::bind(None, event_queue).unwrap();
    let dir = socket.path().parent().unwrap().to_owned();
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
    drop(socket);
    assert!(!dir.exists());
}

#[tokio::test]
async fn a_file_in_the_way_is_not_removed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(SOCKET_FILE_NAME), "data").unwrap();
    let (event_queue, _event_rx) = queue();
    let error = EventSocket::bind(Some(dir.path()), event_queue).unwrap_err();
    assert!(error.to_string().contains("is not a socket"), "{error}");
}
