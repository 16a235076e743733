//! How values that SQLite has no type for are written to and read from
//! columns.

use anyhow::Context as _;
use muster_proto::{ErrorCode, OutputStream, RunState};

/// `run_output.stream`: 1 for stdout, 2 for stderr, 3 for a session's input.
pub(super) fn stream_code(stream: OutputStream) -> i64 {
    match stream {
        OutputStream::Stdout => 1,
        OutputStream::Stderr => 2,
        OutputStream::Input => 3,
    }
}

/// The stream a `run_output.stream` value names.
pub(super) fn stream_from_code(code: i64) -> OutputStream {
    match code {
        2 => OutputStream::Stderr,
        3 => OutputStream::Input,
        _ => OutputStream::Stdout,
    }
}

/// Booleans are stored as 0 or 1.
pub(super) fn bool_int(value: bool) -> i64 {
    i64::from(value)
}

/// Unix milliseconds fit an i64 for the next 292 million years.
pub(super) fn opt_i64(value: Option<u64>) -> Option<i64> {
    value.map(|v| v as i64)
}

/// A stored, non-negative integer read back as u64.
pub(super) fn opt_u64(value: Option<i64>) -> Option<u64> {
    value.map(|v| v.max(0) as u64)
}

/// A run state column.
pub(super) fn run_state(text: &str) -> anyhow::Result<RunState> {
    RunState::parse(text).with_context(|| format!("unknown run state {text:?} in the store"))
}

/// An error code column (stored as its wire string).
pub(super) fn error_code(text: Option<String>) -> anyhow::Result<Option<ErrorCode>> {
    text.map(|t| {
        serde_json::from_value(serde_json::Value::String(t.clone()))
            .with_context(|| format!("unknown error code {t:?} in the store"))
    })
    .transpose()
}
