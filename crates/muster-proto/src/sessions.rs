//! Sessions: runs that take input, on a pseudo-terminal or on pipes.
//!
//! A session is a run created with a [`SessionSpec`]. Its id is the run's id,
//! its output is the run's output (numbered frames on `run:<id>`, stored,
//! spooled by the agent until acknowledged, replayed from any `seq`), and it
//! ends as a run ends. What a session adds:
//!
//! - **input**: a writer attaches with `session.attach {write: true}` and sends
//!   `session.input` messages numbered by its own `seq` (1, 2, …). The hub
//!   takes each writer's `seq` exactly once and in order, numbers accepted
//!   input per session (the hub's input `seq`, 1, 2, …), stores it, and
//!   forwards it to the agent, which applies each hub `seq` once and echoes it
//!   into the run's output as an [`InputRecord`] frame on the `input` stream,
//!   so every viewer sees input and output in one order;
//! - **viewers**: any number of connections attach; joins and leaves are
//!   published on `session:<id>`;
//! - **a screen** (pty sessions): the agent keeps the terminal's state, and
//!   `session.snapshot` returns the screen as of an output `seq`.

use serde::{Deserialize, Serialize};

use crate::UnixMillis;
use crate::ids::RunId;

/// The capability an agent announces in `hello` when it runs sessions; the
/// hub opens sessions only on agents that announce it.
pub const SESSIONS_CAPABILITY: &str = "sessions";

/// Most bytes of one `session.input`'s `data` (UTF-8).
pub const MAX_SESSION_INPUT_BYTES: usize = 8 * 1024;

/// Most inputs of one session the hub has sent and the agent has not
/// reported applied. The hub takes no more (`QUEUE_FULL`), so an agent that
/// can hold this many waiting inputs per session never has to drop one.
pub const MAX_UNAPPLIED_INPUTS: usize = 1024;

/// Most bytes of a writer id.
pub const MAX_WRITER_ID_BYTES: usize = 64;

/// Largest terminal width or height accepted.
pub const MAX_TERMINAL_SIZE: u16 = 1000;

/// What kind of process a session runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionKind {
    /// A pseudo-terminal: raw keystrokes in, terminal output out, a window size.
    Pty,
    /// Pipes: each input message is written to stdin with a newline; stdout and
    /// stderr are output.
    Pipe,
}

impl SessionKind {
    /// The kind as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pty => "pty",
            Self::Pipe => "pipe",
        }
    }
}

/// The session part of `run.create` (and of `run.start`, `RunInfo`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionSpec {
    /// Pseudo-terminal or pipes.
    pub kind: SessionKind,
    /// Terminal width in columns (pty only; default 80).
    #[serde(default = "default_cols")]
    pub cols: u16,
    /// Terminal height in rows (pty only; default 24).
    #[serde(default = "default_rows")]
    pub rows: u16,
    /// Pipe only: each stdout line that is a JSON object is a structured
    /// message in the transcript (`session.message`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub json_lines: bool,
    /// End the session when neither input nor output came for this long; the
    /// hub's default when absent, never above its maximum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_ms: Option<u64>,
}

fn default_cols() -> u16 {
    80
}

fn default_rows() -> u16 {
    24
}

impl SessionSpec {
    /// A session of `kind` with an 80×24 window and the hub's idle timeout.
    pub fn new(kind: SessionKind) -> Self {
        Self {
            kind,
            cols: default_cols(),
            rows: default_rows(),
            json_lines: false,
            idle_timeout_ms: None,
        }
    }

    /// Checks the window size and the options against the kind.
    pub fn validate(&self) -> Result<(), String> {
        check_size(self.cols, self.rows)?;
        if self.json_lines && self.kind == SessionKind::Pty {
            return Err("json_lines applies to pipe sessions only".into());
        }
        if self.idle_timeout_ms == Some(0) {
            return Err("idle_timeout_ms must be above 0".into());
        }
        Ok(())
    }
}

/// Checks a terminal size: both dimensions in `1..=MAX_TERMINAL_SIZE`.
pub fn check_size(cols: u16, rows: u16) -> Result<(), String> {
    if !(1..=MAX_TERMINAL_SIZE).contains(&cols) || !(1..=MAX_TERMINAL_SIZE).contains(&rows) {
        return Err(format!(
            "terminal size {cols}x{rows} is out of range: each side must be 1 to {MAX_TERMINAL_SIZE}"
        ));
    }
    Ok(())
}

/// Checks a writer id: 1 to [`MAX_WRITER_ID_BYTES`] bytes of `[A-Za-z0-9._-]`.
pub fn check_writer_id(writer: &str) -> Result<(), String> {
    let ok = !writer.is_empty()
        && writer.len() <= MAX_WRITER_ID_BYTES
        && writer
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "a writer id is 1 to {MAX_WRITER_ID_BYTES} characters of letters, digits, '.', '_' and '-'"
        ))
    }
}

/// `session.attach` (client → hub).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionAttach {
    /// The session (its run id).
    pub run: RunId,
    /// Whether this connection will send input; needs `operator`.
    #[serde(default)]
    pub write: bool,
    /// The writer's own id, kept across reconnects so the hub can tell a
    /// resent input from a new one; required with `write`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writer: Option<String>,
}

/// `session.attached` (hub → client), the answer to `session.attach`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionAttached {
    /// The session.
    pub run: RunId,
    /// The session's kind.
    pub kind: SessionKind,
    /// Whether this connection may send input.
    pub write: bool,
    /// With `write`: the last input `seq` the hub accepted from this writer (0
    /// when none). Send again everything after it, and nothing before.
    #[serde(default)]
    pub last_seq: u64,
    /// Current terminal width (pty).
    pub cols: u16,
    /// Current terminal height (pty).
    pub rows: u16,
}

/// `session.detach` (client → hub), and the subject of `session.left`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRef {
    /// The session.
    pub run: RunId,
}

/// `session.input` (client → hub).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInput {
    /// The session.
    pub run: RunId,
    /// The writer's own number for this input: 1 for its first, then each next
    /// one exactly one more.
    pub seq: u64,
    /// What to type (pty: the keystrokes; pipe: one message, sent with a newline).
    pub data: String,
}

/// `session.input.ack` (hub → client): the writer's inputs up to `seq` are
/// stored and will reach the process exactly once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInputAck {
    /// The session.
    pub run: RunId,
    /// The writer's `seq` acknowledged (and every one before it).
    pub seq: u64,
}

/// `session.resize` (client → hub, and hub → agent).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionResize {
    /// The session.
    pub run: RunId,
    /// New width in columns.
    pub cols: u16,
    /// New height in rows.
    pub rows: u16,
}

/// `session.snapshot` (client → hub): the current screen of a pty session.
/// The hub forwards it to the agent with a `token` of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionSnapshot {
    /// The session.
    pub run: RunId,
    /// Hub → agent only: matches the agent's `session.screen` to the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<u64>,
}

/// `session.screen` (agent → hub → client): a pty's screen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionScreen {
    /// The session.
    pub run: RunId,
    /// Agent → hub only: the `token` of the `session.snapshot` it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<u64>,
    /// The screen reflects every output frame with a lower `seq`, and none
    /// from this one on: subscribe to `run:<id>` with `since` = this.
    pub next_seq: u64,
    /// Width in columns.
    pub cols: u16,
    /// Height in rows.
    pub rows: u16,
    /// Terminal output that paints the screen on a blank terminal of this size:
    /// clear, the cells with their attributes, then the cursor position.
    pub data: String,
}

/// `session.input` (hub → agent): one accepted input, numbered by the hub.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionDeliver {
    /// The session.
    pub run: RunId,
    /// The hub's number for this session's inputs: 1, 2, … without gaps.
    pub seq: u64,
    /// What to write.
    pub data: String,
    /// Who sent it: the API key's name.
    pub from: String,
    /// When the hub accepted it.
    pub at: UnixMillis,
}

/// `session.input.ack` (agent → hub): every input up to `seq` was applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionApplied {
    /// The session.
    pub run: RunId,
    /// The last hub input `seq` applied.
    pub seq: u64,
}

/// `session.joined` and `session.left`, on `session:<id>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionPresence {
    /// The session.
    pub run: RunId,
    /// Who: the API key's name.
    pub who: String,
    /// Whether they attached as a writer.
    pub write: bool,
    /// When.
    pub at: UnixMillis,
}

/// The payload of an output frame on the `input` stream: one applied input,
/// in its place among the output. The agent writes it as compact JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputRecord {
    /// The hub's input `seq`.
    pub seq: u64,
    /// Who sent it.
    pub from: String,
    /// When the hub accepted it.
    pub at: UnixMillis,
    /// What was written (for a pipe session, without the newline the agent adds).
    pub data: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_defaults_to_80_by_24_and_checks_its_size() {
        let spec: SessionSpec = serde_json::from_str(r#"{"kind":"pty"}"#).unwrap();
        assert_eq!(spec, SessionSpec::new(SessionKind::Pty));
        assert!(spec.validate().is_ok());
        let wide = SessionSpec {
            cols: 1001,
            ..spec.clone()
        };
        assert!(wide.validate().unwrap_err().contains("1001x24"));
        let json = SessionSpec {
            json_lines: true,
            ..spec
        };
        assert!(json.validate().is_err());
    }

    #[test]
    fn writer_ids_are_short_and_plain() {
        assert!(check_writer_id("cli-01JD3XK4M2").is_ok());
        for bad in ["", "a b", "x\u{1b}[2J", &"w".repeat(65)] {
            assert!(check_writer_id(bad).is_err(), "{bad:?}");
        }
    }
}
