//! asciicast v2 (the asciinema format): a header line
//! `{"version":2,"width":W,"height":H,"timestamp":S}`, then one JSON array
//! per event, `[t, "o", text]` for output and, when asked, `[t, "i", text]`
//! for input, `t` in seconds since the session started.
//!
//! Times come from the frames' `at` (when the agent read the chunk); a frame
//! without one keeps the time of the one before, and time never runs
//! backwards. Each stream is decoded as UTF-8 on its own, carrying a
//! character split between two frames over to the next.

use muster_proto::sessions::InputRecord;
use muster_proto::{OutputFrame, OutputStream};
use serde_json::json;

use super::utf8::Utf8Decoder;

/// Writes one session as asciicast lines.
#[derive(Debug)]
pub(crate) struct Asciicast {
    /// Unix milliseconds of `t = 0`.
    start_ms: u64,
    /// The last event's time, in milliseconds since `start_ms`.
    last_ms: u64,
    stdout: Utf8Decoder,
    stderr: Utf8Decoder,
    /// Write `"i"` events for inputs.
    inputs: bool,
}

impl Asciicast {
    /// A recording that starts at `start_ms`, and its header line.
    pub(crate) fn start(start_ms: u64, cols: u16, rows: u16, inputs: bool) -> (Self, String) {
        let header = json!({
            "version": 2,
            "width": cols,
            "height": rows,
            "timestamp": start_ms / 1000,
        });
        let cast = Self {
            start_ms,
            last_ms: 0,
            stdout: Utf8Decoder::default(),
            stderr: Utf8Decoder::default(),
            inputs,
        };
        (cast, format!("{header}\n"))
    }

    /// The lines for one output frame (none when it holds no whole character yet).
    pub(crate) fn frame(&mut self, frame: &OutputFrame) -> String {
        let at = self.time(frame.header.at);
        match frame.header.stream {
            OutputStream::Stdout => {
                let text = self.stdout.decode(&frame.payload);
                event(at, "o", &text)
            }
            OutputStream::Stderr => {
                let text = self.stderr.decode(&frame.payload);
                event(at, "o", &text)
            }
            OutputStream::Input => match serde_json::from_slice::<InputRecord>(&frame.payload) {
                Ok(record) if self.inputs => {
                    let at = self.time(Some(record.at));
                    event(at, "i", &record.data)
                }
                _ => String::new(),
            },
        }
    }

    /// The lines for what is left at the end: unfinished characters.
    pub(crate) fn finish(&mut self) -> String {
        let text = self.stdout.finish() + &self.stderr.finish();
        event(self.last_ms, "o", &text)
    }

    /// Milliseconds since the start for `at`, never before the last event.
    fn time(&mut self, at: Option<u64>) -> u64 {
        if let Some(at) = at {
            self.last_ms = self.last_ms.max(at.saturating_sub(self.start_ms));
        }
        self.last_ms
    }
}

/// One event line, or nothing for empty text.
fn event(at_ms: u64, kind: &str, text: &str) -> String {
    if text.is_empty() {
        return String::new();
    }
    let seconds = at_ms as f64 / 1000.0;
    format!("{}\n", json!([seconds, kind, text]))
}

#[cfg(test)]
mod tests {
    use muster_proto::{OutputHeader, RunId};
    use serde_json::Value;

    use super::*;

    fn frame(seq: u64, stream: OutputStream, at: Option<u64>, payload: &[u8]) -> OutputFrame {
        let header = OutputHeader {
            run: RunId::generate(),
            stream,
            seq,
            offset: 0,
            at,
        };
        OutputFrame::decode(OutputFrame::encode(&header, payload)).unwrap()
    }

    fn lines(text: &str) -> Vec<Value> {
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn header_then_output_events_relative_to_the_start() {
        let (mut cast, header) = Asciicast::start(1_700_000_000_500, 100, 30, false);
        assert_eq!(
            lines(&header),
            [json!({"version": 2, "width": 100, "height": 30, "timestamp": 1_700_000_000})]
        );
        let mut text = cast.frame(&frame(
            0,
            OutputStream::Stdout,
            Some(1_700_000_001_750),
            b"$ ",
        ));
        text += &cast.frame(&frame(1, OutputStream::Stderr, None, b"oops\r\n"));
        assert_eq!(
            lines(&text),
            [json!([1.25, "o", "$ "]), json!([1.25, "o", "oops\r\n"])]
        );
    }

    #[test]
    fn a_character_split_between_frames_is_one_character() {
        let (mut cast, _) = Asciicast::start(0, 80, 24, false);
        let check = "✓".as_bytes();
        let first = cast.frame(&frame(0, OutputStream::Stdout, Some(1000), &check[..1]));
        assert_eq!(first, "", "nothing whole yet");
        let second = cast.frame(&frame(1, OutputStream::Stdout, Some(2000), &check[1..]));
        assert_eq!(lines(&second), [json!([2.0, "o", "✓"])]);
    }

    #[test]
    fn time_never_runs_backwards_and_inputs_are_optional() {
        let record = br#"{"seq":1,"from":"admin","at":3000,"data":"ls\r"}"#;
        let (mut with, _) = Asciicast::start(1000, 80, 24, true);
        let mut text = with.frame(&frame(0, OutputStream::Stdout, Some(5000), b"a"));
        text += &with.frame(&frame(1, OutputStream::Input, None, record));
        text += &with.frame(&frame(2, OutputStream::Stdout, Some(4000), b"b"));
        assert_eq!(
            lines(&text),
            [
                json!([4.0, "o", "a"]),
                json!([4.0, "i", "ls\r"]),
                json!([4.0, "o", "b"])
            ]
        );
        let (mut without, _) = Asciicast::start(1000, 80, 24, false);
        assert_eq!(
            without.frame(&frame(1, OutputStream::Input, None, record)),
            ""
        );
    }
}
