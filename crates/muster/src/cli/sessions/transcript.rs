//! A pipe session as a conversation: each applied input is a user turn
//! (who sent it and when), each line the process wrote to stdout an agent
//! turn; with `json_lines`, a stdout line that is a JSON object is a
//! structured message. Stderr is not part of the conversation.
//!
//! [`Transcript`] is fed the session's output frames in `seq` order and
//! returns the turns completed by each; `seq` of a turn is the output frame
//! it came in (for a line, the frame that began it), so user and agent turns
//! share one order.

use muster_proto::sessions::InputRecord;
use muster_proto::{OutputFrame, OutputStream};
use serde::Serialize;
use serde_json::{Map, Value};

use super::utf8::Utf8Decoder;

/// One turn, as `--json` prints it (`"type":"session.message"`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct Message {
    /// Always `session.message`.
    #[serde(rename = "type")]
    pub(crate) kind: &'static str,
    /// The output frame it came in.
    pub(crate) seq: u64,
    /// `user` or `agent`.
    pub(crate) role: &'static str,
    /// Who sent it (user turns).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) from: Option<String>,
    /// When: the hub took the input, or the agent read the line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) at: Option<u64>,
    /// The text, for a plain turn.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) text: Option<String>,
    /// The object, for a structured message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) message: Option<Map<String, Value>>,
}

/// Builds turns from output frames.
#[derive(Debug)]
pub(crate) struct Transcript {
    json_lines: bool,
    decoder: Utf8Decoder,
    /// The stdout line begun so far, with the seq and time it began at.
    line: Option<(u64, Option<u64>, String)>,
}

impl Transcript {
    /// A transcript; with `json_lines`, JSON object lines are messages.
    pub(crate) fn new(json_lines: bool) -> Self {
        Self {
            json_lines,
            decoder: Utf8Decoder::default(),
            line: None,
        }
    }

    /// The turns one frame completes.
    pub(crate) fn frame(&mut self, frame: &OutputFrame) -> Vec<Message> {
        let seq = frame.header.seq;
        match frame.header.stream {
            OutputStream::Input => match serde_json::from_slice::<InputRecord>(&frame.payload) {
                Ok(record) => vec![self.user(seq, record)],
                Err(_) => Vec::new(),
            },
            OutputStream::Stdout => {
                let text = self.decoder.decode(&frame.payload);
                self.stdout(seq, frame.header.at, &text)
            }
            OutputStream::Stderr => Vec::new(),
        }
    }

    /// The last line, when the output did not end with a newline.
    pub(crate) fn finish(&mut self) -> Option<Message> {
        let rest = self.decoder.finish();
        if !rest.is_empty() {
            self.line
                .get_or_insert((0, None, String::new()))
                .2
                .push_str(&rest);
        }
        let (seq, at, text) = self.line.take()?;
        Some(self.agent(seq, at, text))
    }

    fn user(&self, seq: u64, record: InputRecord) -> Message {
        Message {
            kind: "session.message",
            seq,
            role: "user",
            from: Some(record.from),
            at: Some(record.at),
            text: Some(record.data),
            message: None,
        }
    }

    fn stdout(&mut self, seq: u64, at: Option<u64>, mut text: &str) -> Vec<Message> {
        let mut turns = Vec::new();
        while !text.is_empty() {
            let line = &mut self.line.get_or_insert_with(|| (seq, at, String::new())).2;
            match text.find('\n') {
                Some(end) => {
                    line.push_str(&text[..end]);
                    text = &text[end + 1..];
                    let (seq, at, mut line) = self.line.take().unwrap_or_default();
                    if line.ends_with('\r') {
                        line.pop();
                    }
                    turns.push(self.agent(seq, at, line));
                }
                None => {
                    line.push_str(text);
                    text = "";
                }
            }
        }
        turns
    }

    fn agent(&self, seq: u64, at: Option<u64>, line: String) -> Message {
        let structured = match self.json_lines {
            true => serde_json::from_str::<Map<String, Value>>(&line).ok(),
            false => None,
        };
        let (text, message) = match structured {
            Some(object) => (None, Some(object)),
            None => (Some(line), None),
        };
        Message {
            kind: "session.message",
            seq,
            role: "agent",
            from: None,
            at,
            text,
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    use muster_proto::{OutputHeader, RunId};
    use serde_json::json;

    use super::*;

    fn frame(seq: u64, stream: OutputStream, payload: &[u8]) -> OutputFrame {
        let header = OutputHeader {
            run: RunId::generate(),
            stream,
            seq,
            offset: 0,
            at: Some(1000 + seq),
        };
        OutputFrame::decode(OutputFrame::encode(&header, payload)).unwrap()
    }

    fn input(seq: u64, data: &str) -> OutputFrame {
        let record = json!({"seq": seq, "from": "ops", "at": 500 + seq, "data": data});
        frame(seq, OutputStream::Input, record.to_string().as_bytes())
    }

    fn build(json_lines: bool, frames: &[OutputFrame]) -> Vec<Value> {
        let mut transcript = Transcript::new(json_lines);
        let mut turns: Vec<Message> = frames.iter().flat_map(|f| transcript.frame(f)).collect();
        turns.extend(transcript.finish());
        turns
            .iter()
            .map(|t| serde_json::to_value(t).unwrap())
            .collect()
    }

    #[test]
    fn inputs_are_user_turns_and_lines_are_agent_turns_in_order() {
        let turns = build(
            false,
            &[
                input(0, "hi"),
                frame(1, OutputStream::Stdout, b"hel"),
                frame(2, OutputStream::Stderr, b"noise\n"),
                frame(3, OutputStream::Stdout, b"lo\r\nbye\nrest"),
            ],
        );
        assert_eq!(
            turns,
            [
                json!({"type": "session.message", "seq": 0, "role": "user", "from": "ops", "at": 500, "text": "hi"}),
                json!({"type": "session.message", "seq": 1, "role": "agent", "at": 1001, "text": "hello"}),
                json!({"type": "session.message", "seq": 3, "role": "agent", "at": 1003, "text": "bye"}),
                json!({"type": "session.message", "seq": 3, "role": "agent", "at": 1003, "text": "rest"}),
            ]
        );
    }

    #[test]
    fn json_object_lines_are_structured_messages() {
        let turns = build(
            true,
            &[frame(
                0,
                OutputStream::Stdout,
                b"{\"reply\":\"a\"}\n[1]\nplain\n",
            )],
        );
        assert_eq!(turns[0]["message"], json!({"reply": "a"}));
        assert!(turns[0].get("text").is_none());
        assert_eq!(turns[1]["text"], "[1]", "only objects are messages");
        assert_eq!(turns[2]["text"], "plain");
    }

    #[test]
    fn a_character_split_between_frames_stays_whole() {
        let check = "✓\n".as_bytes();
        let turns = build(
            false,
            &[
                frame(0, OutputStream::Stdout, &check[..2]),
                frame(1, OutputStream::Stdout, &check[2..]),
            ],
        );
        assert_eq!(turns[0]["text"], "✓");
    }
}
