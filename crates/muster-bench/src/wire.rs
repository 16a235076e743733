//! The few protocol pieces raw connections need, read as cheaply as possible.
//!
//! Connections that handle many messages (fan-out subscribers, the fleet
//! watcher of the storm) read only what they need: the envelope's `type`,
//! `re` and `channel` as borrowed strings ([`Head`]), and from a binary output
//! frame only its `seq`, its run id and the first payload bytes
//! ([`FrameHead`]), by scanning the small JSON header rather than decoding it.
//! Everything that is sent is built from the `muster_proto` types, so the
//! wire format has one definition.

use std::collections::BTreeMap;

use muster_proto::messages::{AgentHello, ClientHello, Heartbeat};
use muster_proto::{AgentName, AgentToHub, ClientToHub, Envelope, RequestId};
use serde::Deserialize;
use tokio_tungstenite::tungstenite::Message;

/// What this tool announces in a client `hello`, and as an agent's version.
pub(crate) const CLIENT_NAME: &str = concat!("muster-bench/", env!("CARGO_PKG_VERSION"));

/// The routing fields of a text message, borrowed from it.
#[derive(Debug, Deserialize)]
pub(crate) struct Head<'a> {
    /// The message type.
    #[serde(rename = "type", borrow)]
    pub(crate) kind: &'a str,
    /// The request answered, on replies.
    #[serde(default, borrow)]
    pub(crate) re: Option<&'a str>,
    /// The channel, on events.
    #[serde(default, borrow)]
    pub(crate) channel: Option<&'a str>,
}

impl<'a> Head<'a> {
    /// Reads the routing fields of `text`; `None` if it is not an envelope.
    pub(crate) fn of(text: &'a str) -> Option<Self> {
        serde_json::from_str(text).ok()
    }
}

#[derive(Deserialize)]
struct HeartbeatMessage {
    data: Heartbeat,
}

/// The `heartbeat.ack` answering a `heartbeat` text, as an agent (`agent`)
/// or a client sends it.
pub(crate) fn heartbeat_ack(text: &str, agent: bool) -> Option<Message> {
    let beat: HeartbeatMessage = serde_json::from_str(text).ok()?;
    let text = match agent {
        true => Envelope::plain(AgentToHub::HeartbeatAck(beat.data)).encode(),
        false => Envelope::plain(ClientToHub::HeartbeatAck(beat.data)).encode(),
    };
    Some(Message::text(text))
}

/// A client's `hello`.
pub(crate) fn client_hello(token: &str) -> Message {
    Message::text(
        Envelope::plain(ClientToHub::Hello(ClientHello {
            token: token.to_owned(),
            client: Some(CLIENT_NAME.to_owned()),
        }))
        .encode(),
    )
}

/// An agent's `hello`: a simulated host that executes commands.
pub(crate) fn agent_hello(
    token: &str,
    name: &AgentName,
    labels: &BTreeMap<String, String>,
    max_concurrency: u32,
) -> Message {
    let hello = AgentHello {
        token: token.to_owned(),
        name: Some(name.clone()),
        hostname: name.to_string(),
        os: std::env::consts::OS.to_owned(),
        arch: std::env::consts::ARCH.to_owned(),
        version: CLIENT_NAME.to_owned(),
        labels: labels.clone(),
        capabilities: vec!["exec".to_owned()],
        exec: Default::default(),
        actions: Vec::new(),
        max_concurrency,
        runs: Vec::new(),
    };
    Message::text(Envelope::plain(AgentToHub::Hello(hello)).encode())
}

/// A client request with id `id`.
pub(crate) fn request(id: u64, msg: ClientToHub) -> Message {
    Message::text(Envelope::request(RequestId(id.to_string()), msg).encode())
}

/// An agent report.
pub(crate) fn report(msg: AgentToHub) -> Message {
    Message::text(Envelope::plain(msg).encode())
}

/// What a subscriber needs from a binary output frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FrameHead<'a> {
    /// The run id, as written in the header.
    pub(crate) run: &'a [u8],
    /// The chunk's sequence number.
    pub(crate) seq: u64,
    /// The payload.
    pub(crate) payload: &'a [u8],
}

/// Largest header a frame may have (protocol section 4.1).
const MAX_HEADER_BYTES: usize = muster_proto::limits::MAX_OUTPUT_HEADER_BYTES;

/// Reads the run id and `seq` of a binary `run.output` frame without decoding
/// its JSON header: the values of the keys `"run"` and `"seq"`, which appear
/// nowhere else in a header. `None` for a frame that does not look right.
pub(crate) fn frame_head(frame: &[u8]) -> Option<FrameHead<'_>> {
    let len = u32::from_be_bytes(frame.get(..4)?.try_into().ok()?) as usize;
    if len > MAX_HEADER_BYTES {
        return None;
    }
    let header = frame.get(4..4 + len)?;
    let seq = value_after(header, b"\"seq\"")?;
    let digits = seq.iter().take_while(|b| b.is_ascii_digit()).count();
    let seq = std::str::from_utf8(&seq[..digits]).ok()?.parse().ok()?;
    let run = value_after(header, b"\"run\"")?.strip_prefix(b"\"")?;
    let run = &run[..run.iter().position(|&b| b == b'"')?];
    Some(FrameHead {
        run,
        seq,
        payload: &frame[4 + len..],
    })
}

/// The bytes after `key`, its colon and any spaces.
fn value_after<'a>(header: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let at = header.windows(key.len()).position(|w| w == key)?;
    let rest = header[at + key.len()..].trim_ascii_start();
    Some(rest.strip_prefix(b":")?.trim_ascii_start())
}

#[cfg(test)]
mod tests {
    use muster_proto::{OutputFrame, OutputHeader, OutputStream, RunId};

    use super::*;

    #[test]
    fn frame_heads_are_read_from_encoded_frames() {
        let run = RunId::generate();
        let header = OutputHeader {
            run,
            stream: OutputStream::Stdout,
            seq: 123_456,
            offset: 99,
            at: None,
        };
        let frame = OutputFrame::encode(&header, b"\0\0\0\0\0\0\0\x07rest");
        let head = frame_head(&frame).unwrap();
        assert_eq!(head.run, run.to_string().as_bytes());
        assert_eq!(head.seq, 123_456);
        assert_eq!(head.payload, b"\0\0\0\0\0\0\0\x07rest");
    }

    #[test]
    fn spaced_headers_are_read_too() {
        let json = br#"{ "type" : "run.output", "data" : { "seq" : 7 , "run" : "01ABC", "offset": 0, "stream": "stderr" } }"#;
        let mut frame = (json.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(json);
        frame.extend_from_slice(b"xy");
        let head = frame_head(&frame).unwrap();
        assert_eq!(
            (head.run, head.seq, head.payload),
            (&b"01ABC"[..], 7, &b"xy"[..])
        );
    }

    #[test]
    fn broken_frames_are_refused() {
        assert_eq!(frame_head(b"\0\0"), None);
        assert_eq!(frame_head(b"\0\0\0\x09{\"seq\":1}"), None);
        assert_eq!(frame_head(b"\0\0\x10\0{}"), None);
        let json = br#"{"data":{"run":"X","seq":"1"}}"#;
        let mut frame = (json.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(json);
        assert_eq!(frame_head(&frame), None);
    }

    #[test]
    fn heads_and_heartbeats_are_read() {
        let text = r#"{"type":"agent.status","channel":"fleet","data":{"agent":{}}}"#;
        let head = Head::of(text).unwrap();
        assert_eq!(
            (head.kind, head.re, head.channel),
            ("agent.status", None, Some("fleet"))
        );
        let ack = heartbeat_ack(r#"{"type":"heartbeat","data":{"seq":41}}"#, true).unwrap();
        assert_eq!(
            ack,
            Message::text(r#"{"type":"heartbeat.ack","data":{"seq":41}}"#)
        );
        assert!(heartbeat_ack(r#"{"type":"heartbeat","data":{}}"#, false).is_none());
        assert!(Head::of("{nope").is_none());
    }

    #[test]
    fn requests_carry_their_id() {
        let Message::Text(text) = request(
            9,
            ClientToHub::Unsubscribe(muster_proto::messages::ChannelRef {
                channel: "fleet".to_owned(),
            }),
        ) else {
            panic!("not text");
        };
        let head = Head::of(text.as_str()).unwrap();
        assert_eq!(head.kind, "unsubscribe");
        assert!(text.as_str().contains(r#""id":"9""#), "{}", text.as_str());
    }
}
