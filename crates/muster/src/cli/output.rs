//! Terminal rendering for the client subcommands: aligned tables, key/value
//! records, JSON, and human times.
//!
//! Everything goes to stdout through [`print`], which treats a closed pipe
//! (`muster runs list | head -1`) as the reader being done rather than an error.
//!
//! Every cell of a table or record goes through [`escape`]: names, labels,
//! hostnames and the like come from agents and other clients, and a
//! terminal must never act on what they hold. (A run's own output is the
//! exception: `muster run` passes it through as it came, like `ssh`.)

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::{self, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde::Serialize;

/// Columns are separated by this many spaces.
const COLUMN_GAP: usize = 2;

/// Writes `text` to stdout; a closed pipe is not an error.
pub(crate) fn print(text: &str) -> anyhow::Result<()> {
    let mut stdout = io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(err) if err.kind() != io::ErrorKind::BrokenPipe => {
            Err(err).context("writing to stdout")
        }
        _ => Ok(()),
    }
}

/// Prints `value` as pretty JSON followed by a newline.
pub(crate) fn print_json<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value).context("encoding JSON")?;
    print(&format!("{text}\n"))
}

/// A table with a header row, printed with left-aligned columns.
pub(crate) struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub(crate) fn new(headers: &[&str]) -> Self {
        Self {
            rows: vec![headers.iter().map(|h| (*h).to_owned()).collect()],
        }
    }

    /// Adds a row, its cells escaped; it should have one cell per header.
    pub(crate) fn push(&mut self, row: Vec<String>) {
        let row = row
            .into_iter()
            .map(|cell| match escape(&cell) {
                Cow::Borrowed(_) => cell,
                Cow::Owned(escaped) => escaped,
            })
            .collect();
        self.rows.push(row);
    }

    /// The table as text, one line per row, the last column unpadded.
    pub(crate) fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|s| s.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                line.push_str(cell);
                if c + 1 < row.len() {
                    // Padded by hand: a format width cannot pass 65,535.
                    let pad = widths[c] + COLUMN_GAP - cell.chars().count();
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Renders `key: value` lines with the values aligned and escaped.
pub(crate) fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len() + 1).max().unwrap_or(0) + COLUMN_GAP;
    pairs
        .iter()
        .map(|(key, value)| format!("{:<width$}{}\n", format!("{key}:"), escape(value)))
        .collect()
}

/// `text` with everything a terminal would act on made visible: control
/// characters (C0, DEL and C1, so `ESC` and `CSI` sequences too) as `\n`,
/// `\t`, `\r` or `\xNN`, and the Unicode controls that reorder or hide
/// what is shown (bidirectional overrides and isolates, zero-width marks) as
/// `\u{NNNN}`.
pub(crate) fn escape(text: &str) -> Cow<'_, str> {
    fn needs(c: char) -> bool {
        c.is_control() || is_format_control(c)
    }
    if !text.chars().any(needs) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() && (c as u32) < 0x100 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if c.is_control() || is_format_control(c) => {
                let _ = write!(out, "\\u{{{:04x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Unicode format characters that change how the text around them shows:
/// bidirectional embeddings, overrides and isolates, and zero-width marks.
fn is_format_control(c: char) -> bool {
    matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> u64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}

/// How long before `now_ms` the instant `then_ms` was, coarsely: `3s ago`, `5m ago`.
pub(crate) fn ago(now_ms: u64, then_ms: u64) -> String {
    format!("{} ago", span(now_ms.saturating_sub(then_ms)))
}

/// Like [`ago`], but a time still to come reads `in 5m`.
pub(crate) fn relative(now_ms: u64, then_ms: u64) -> String {
    match then_ms.checked_sub(now_ms) {
        Some(ahead) if ahead > 0 => format!("in {}", span(ahead)),
        _ => ago(now_ms, then_ms),
    }
}

/// A length of time in its largest whole unit: `3s`, `5m`, `2h`, `4d`.
fn span(millis: u64) -> String {
    let secs = millis / 1000;
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86400),
    }
}

/// An absolute UTC time with the relative one: `2025-01-02T03:04:05Z (3s ago)`,
/// or `(in 5m)` for a time to come.
pub(crate) fn timestamp(now_ms: u64, then_ms: u64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(then_ms);
    format!(
        "{} ({})",
        humantime::format_rfc3339_seconds(at),
        relative(now_ms, then_ms)
    )
}

/// An optional value, or `-`.
pub(crate) fn or_dash<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// Shortens `text` to at most `max` characters, ending with `…` when cut.
pub(crate) fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let mut table = Table::new(&["NAME", "STATUS"]);
        table.push(vec!["web-1".into(), "online".into()]);
        table.push(vec!["db".into(), "offline".into()]);
        assert_eq!(
            table.render(),
            "NAME   STATUS\nweb-1  online\ndb     offline\n"
        );
    }

    #[test]
    fn what_a_terminal_would_act_on_is_made_visible() {
        assert_eq!(escape("web-1"), "web-1");
        assert!(matches!(
            escape("plain ascii and ünïcode"),
            Cow::Borrowed(_)
        ));
        assert_eq!(escape("\x1b]0;owned\x07x"), "\\x1b]0;owned\\x07x");
        assert_eq!(escape("a\nb\tc\rd\x7f"), "a\\nb\\tc\\rd\\x7f");
        assert_eq!(escape("\u{9b}31m"), "\\x9b31m");
        assert_eq!(escape("abc\u{202e}fed"), "abc\\u{202e}fed");
        let mut table = Table::new(&["NAME", "HOSTNAME"]);
        table.push(vec!["evil".into(), "\x1b[2J\x1b[31mred".into()]);
        let text = table.render();
        assert!(!text.contains('\x1b'), "{text:?}");
        assert!(text.contains("\\x1b[2J"), "{text:?}");
        assert!(!fields(&[("host", "\x1b[31m".into())]).contains('\x1b'));
    }

    #[test]
    fn a_cell_longer_than_a_format_width_can_be_is_printed_whole() {
        let long = "h".repeat(70_000);
        let mut table = Table::new(&["HOSTNAME", "STATUS"]);
        table.push(vec![long.clone(), "online".into()]);
        table.push(vec!["x".into(), "offline".into()]);
        let text = table.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1], format!("{long}  online"));
        assert_eq!(lines[2].len(), 70_000 + 2 + "offline".len());
    }

    #[test]
    fn fields_align_values() {
        let text = fields(&[("id", "1".into()), ("state", "running".into())]);
        assert_eq!(text, "id:     1\nstate:  running\n");
    }

    #[test]
    fn relative_times_are_coarse() {
        assert_eq!(ago(10_000, 7_000), "3s ago");
        assert_eq!(ago(1_000_000, 700_000), "5m ago");
        assert_eq!(ago(2 * 3_600_000, 0), "2h ago");
        assert_eq!(ago(3 * 86_400_000, 0), "3d ago");
        assert_eq!(ago(0, 5_000), "0s ago");
        assert_eq!(relative(0, 300_000), "in 5m");
        assert_eq!(relative(10_000, 7_000), "3s ago");
        assert_eq!(relative(7_000, 7_000), "0s ago");
    }

    #[test]
    fn long_text_is_truncated() {
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abc", 4), "abc");
    }
}
