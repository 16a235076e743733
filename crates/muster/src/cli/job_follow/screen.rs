//! Writing a job's output to the terminal: each run's bytes as lines prefixed
//! with the agent's name (`web-1  | text`), or one block per run with
//! `--group`, step events, notes, and on a terminal a live status line on
//! stderr that is cleared before anything else is written.
//!
//! Output bytes are passed through as they are, line by line; only the prefix
//! and a final newline for an unfinished last line are added.

use std::io;

use muster_proto::OutputStream;
use tokio::io::{AsyncWrite, Stderr, Stdout};

use crate::cli::stream::Sink;

/// Turns on dim text on a terminal.
const DIM: &str = "\x1b[2m";
/// Turns text attributes off.
const RESET: &str = "\x1b[0m";
/// Moves to the start of the line and erases it.
const CLEAR_LINE: &str = "\r\x1b[2K";

/// Where a job's output goes.
pub(super) struct Screen<O, E> {
    stdout: Sink<O>,
    stderr: Sink<E>,
    /// Agent names are padded to this width.
    width: usize,
    /// Whether stderr is a terminal: step events are dimmed and a status line is kept.
    tty: bool,
    /// The status line on display, if any.
    status: Option<String>,
}

impl Screen<Stdout, Stderr> {
    /// Writes to this process's stdout and stderr; `width` is the longest agent name.
    pub(super) fn new(width: usize, tty: bool) -> Self {
        Self::with_writers(tokio::io::stdout(), tokio::io::stderr(), width, tty)
    }
}

impl<O: AsyncWrite + Unpin, E: AsyncWrite + Unpin> Screen<O, E> {
    /// Writes to `stdout` and `stderr`.
    pub(super) fn with_writers(stdout: O, stderr: E, width: usize, tty: bool) -> Self {
        Self {
            stdout: Sink::new(stdout),
            stderr: Sink::new(stderr),
            width,
            tty,
            status: None,
        }
    }

    /// The prefix of `agent`'s lines: its name padded to the widest, then `  | `.
    fn prefix(&self, agent: &str) -> String {
        format!("{agent:<width$}  | ", width = self.width)
    }

    /// Writes `text` — whole lines, and an unfinished last line completed with
    /// a newline — to `stream`, each line prefixed with `agent`.
    pub(super) async fn lines(
        &mut self,
        agent: &str,
        stream: OutputStream,
        text: &[u8],
    ) -> io::Result<()> {
        if text.is_empty() {
            return Ok(());
        }
        let bytes = prefixed(self.prefix(agent).as_bytes(), text);
        self.write(stream, &bytes).await
    }

    /// Writes one run's whole output as a block: `header` and the stdout
    /// bytes to stdout, the stderr bytes to stderr.
    pub(super) async fn block(&mut self, header: &str, out: &[u8], err: &[u8]) -> io::Result<()> {
        let mut bytes = format!("== {header} ==\n").into_bytes();
        bytes.extend_from_slice(&terminated(out));
        self.write(OutputStream::Stdout, &bytes).await?;
        if err.is_empty() {
            return Ok(());
        }
        self.write(OutputStream::Stderr, &terminated(err)).await
    }

    /// Writes a line from muster itself about `agent` to stderr, prefixed.
    pub(super) async fn note(&mut self, agent: &str, text: &str) -> io::Result<()> {
        let line = format!("{}muster: {text}\n", self.prefix(agent));
        self.write(OutputStream::Stderr, line.as_bytes()).await
    }

    /// Writes an event a step published to stderr: dimmed on a terminal,
    /// `event TYPE {json}` otherwise.
    pub(super) async fn event(
        &mut self,
        agent: &str,
        kind: &str,
        data: &serde_json::Value,
    ) -> io::Result<()> {
        let prefix = self.prefix(agent);
        let line = if self.tty {
            format!("{DIM}{prefix}{kind} {data}{RESET}\n")
        } else {
            format!("{prefix}event {kind} {data}\n")
        };
        self.write(OutputStream::Stderr, line.as_bytes()).await
    }

    /// Shows `text` as the status line, on a terminal; a repeat costs nothing.
    pub(super) async fn status(&mut self, text: &str) -> io::Result<()> {
        if !self.tty || self.status.as_deref() == Some(text) {
            return Ok(());
        }
        self.status = Some(text.to_owned());
        let line = format!("{CLEAR_LINE}{text}");
        self.stderr.write(line.as_bytes()).await
    }

    /// Erases the status line, if one is shown.
    pub(super) async fn clear_status(&mut self) -> io::Result<()> {
        if self.status.take().is_some() {
            self.stderr.write(CLEAR_LINE.as_bytes()).await?;
        }
        Ok(())
    }

    /// Writes `bytes` to `stream`, after erasing the status line.
    async fn write(&mut self, stream: OutputStream, bytes: &[u8]) -> io::Result<()> {
        self.clear_status().await?;
        match stream {
            OutputStream::Stdout => self.stdout.write(bytes).await,
            OutputStream::Stderr => self.stderr.write(bytes).await,
            OutputStream::Input => Ok(()),
        }
    }
}

/// `text` with `prefix` before every line, and a newline after the last one
/// if it has none.
fn prefixed(prefix: &[u8], text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + prefix.len() * 4);
    for line in text.split_inclusive(|&b| b == b'\n') {
        out.extend_from_slice(prefix);
        out.extend_from_slice(line);
    }
    if !text.ends_with(b"\n") {
        out.push(b'\n');
    }
    out
}

/// `text`, ending with a newline unless it is empty.
fn terminated(text: &[u8]) -> Vec<u8> {
    let mut out = text.to_vec();
    if !out.is_empty() && !out.ends_with(b"\n") {
        out.push(b'\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn screen(tty: bool) -> Screen<Vec<u8>, Vec<u8>> {
        Screen::with_writers(Vec::new(), Vec::new(), 7, tty)
    }

    fn text(bytes: &[u8]) -> &str {
        std::str::from_utf8(bytes).unwrap()
    }

    #[tokio::test]
    async fn lines_are_prefixed_with_the_padded_name_on_their_stream() {
        let mut s = screen(false);
        s.lines("web-1", OutputStream::Stdout, b"a\nb\n")
            .await
            .unwrap();
        s.lines("cache-1", OutputStream::Stderr, b"oops")
            .await
            .unwrap();
        assert_eq!(text(s.stdout.writer()), "web-1    | a\nweb-1    | b\n");
        assert_eq!(text(s.stderr.writer()), "cache-1  | oops\n");
    }

    #[tokio::test]
    async fn blocks_have_a_header_and_split_streams() {
        let mut s = screen(false);
        s.block("web-1 · step \"run\" · exit 0", b"x\ny", b"")
            .await
            .unwrap();
        assert_eq!(
            text(s.stdout.writer()),
            "== web-1 · step \"run\" · exit 0 ==\nx\ny\n"
        );
        assert!(s.stderr.writer().is_empty());
        s.block("db-1 · step \"run\" · exit 1", b"", b"bad\n")
            .await
            .unwrap();
        assert_eq!(text(s.stderr.writer()), "bad\n");
    }

    #[tokio::test]
    async fn events_are_plain_lines_off_a_terminal() {
        let mut s = screen(false);
        let data = serde_json::json!({"pct": 50});
        s.event("web-1", "site.progress", &data).await.unwrap();
        assert_eq!(
            text(s.stderr.writer()),
            "web-1    | event site.progress {\"pct\":50}\n"
        );
    }

    #[tokio::test]
    async fn the_status_line_is_cleared_before_output_and_only_on_a_terminal() {
        let mut s = screen(true);
        s.status("job x 0/1 done").await.unwrap();
        s.status("job x 0/1 done").await.unwrap();
        s.lines("web-1", OutputStream::Stdout, b"hi\n")
            .await
            .unwrap();
        assert_eq!(
            text(s.stderr.writer()),
            format!("{CLEAR_LINE}job x 0/1 done{CLEAR_LINE}")
        );
        let mut plain = screen(false);
        plain.status("job x").await.unwrap();
        assert!(plain.stderr.writer().is_empty());
    }

    #[tokio::test]
    async fn binary_output_passes_through() {
        let mut s = screen(false);
        s.lines("w", OutputStream::Stdout, b"\x00\xff\n")
            .await
            .unwrap();
        assert_eq!(s.stdout.writer(), b"w        | \x00\xff\n");
    }
}
