//! Takes terminal queries out of replayed output.
//!
//! A terminal answers some sequences by typing the answer, as if the user
//! had: the cursor position (`CSI 6n`), device attributes (`CSI c`,
//! `CSI > c`), a mode's state (DECRQM, `CSI ? Ps $ p`), its size in cells or
//! pixels (`CSI 18 t`, `CSI 14 t`), its version (`CSI > q`), a colour or the
//! clipboard (OSC with a `?` parameter: `OSC 11;?`, `OSC 52;c;?`), a setting
//! or capability (DCS `$q`, DCS `+q`), its answerback (ENQ) and its
//! identity (`ESC Z`). Output replayed from history must never make the
//! local terminal type an answer into the remote shell, so
//! [`QueryStripper`] drops those sequences and passes every other byte
//! through unchanged, with its state kept across chunks. (Only the 7-bit
//! forms: a UTF-8 terminal does not act on raw C1 bytes.)

/// Longest control sequence held back while deciding; a longer one is no
/// query and passes through.
const MAX_CSI_BYTES: usize = 256;

/// Longest OSC or DCS string held back while deciding; queries are short.
const MAX_STRING_BYTES: usize = 4096;

const ESC: u8 = 0x1b;
const BEL: u8 = 0x07;
const ENQ: u8 = 0x05;

/// Where the stripper is within an escape sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Ground,
    Escape,
    Csi,
    /// Inside an OSC (`ESC ]`) or DCS (`ESC P`) string; `escape` after an `ESC`.
    String {
        osc: bool,
        escape: bool,
    },
    /// A string too long to be a query, passed through to its end.
    PassString {
        escape: bool,
    },
}

/// Drops terminal queries from a byte stream; see the module documentation.
#[derive(Clone, Debug)]
pub(crate) struct QueryStripper {
    state: State,
    /// The sequence held back so far.
    held: Vec<u8>,
}

impl Default for QueryStripper {
    fn default() -> Self {
        Self {
            state: State::Ground,
            held: Vec::new(),
        }
    }
}

impl QueryStripper {
    /// Appends `input` to `out`, without the queries in it. A sequence
    /// split across calls is held back until it is complete.
    pub(crate) fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        for &byte in input {
            self.step(byte, out);
        }
    }

    /// Appends whatever is held back (an unfinished sequence, no query yet)
    /// and starts over: at the end of a replay.
    pub(crate) fn flush(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.held);
        self.state = State::Ground;
    }

    fn step(&mut self, byte: u8, out: &mut Vec<u8>) {
        match self.state {
            State::Ground => match byte {
                ESC => self.hold(State::Escape, byte),
                ENQ => {}
                _ => out.push(byte),
            },
            State::Escape => self.escape(byte, out),
            State::Csi => self.csi(byte, out),
            State::String { osc, escape } => self.string(osc, escape, byte, out),
            State::PassString { escape } => {
                out.push(byte);
                self.state = match (escape, byte) {
                    (_, BEL) | (true, b'\\') => State::Ground,
                    (_, ESC) => State::PassString { escape: true },
                    _ => State::PassString { escape: false },
                };
            }
        }
    }

    fn hold(&mut self, state: State, byte: u8) {
        self.state = state;
        self.held.push(byte);
    }

    fn pass_held(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.held);
        self.state = State::Ground;
    }

    fn drop_held(&mut self) {
        self.held.clear();
        self.state = State::Ground;
    }

    fn escape(&mut self, byte: u8, out: &mut Vec<u8>) {
        match byte {
            b'[' => self.hold(State::Csi, byte),
            b']' => self.hold(
                State::String {
                    osc: true,
                    escape: false,
                },
                byte,
            ),
            b'P' => self.hold(
                State::String {
                    osc: false,
                    escape: false,
                },
                byte,
            ),
            // DECID: "what are you", answered like device attributes.
            b'Z' => self.drop_held(),
            ESC => {
                self.pass_held(out);
                self.hold(State::Escape, byte);
            }
            _ => {
                self.held.push(byte);
                self.pass_held(out);
            }
        }
    }

    fn csi(&mut self, byte: u8, out: &mut Vec<u8>) {
        if byte == ESC {
            self.pass_held(out);
            self.hold(State::Escape, byte);
            return;
        }
        self.held.push(byte);
        if (0x40..=0x7e).contains(&byte) {
            if is_csi_query(&self.held[2..]) {
                self.drop_held();
            } else {
                self.pass_held(out);
            }
        } else if self.held.len() > MAX_CSI_BYTES {
            self.pass_held(out);
        }
    }

    fn string(&mut self, osc: bool, escape: bool, byte: u8, out: &mut Vec<u8>) {
        let ends = byte == BEL || (escape && byte == b'\\');
        if escape && !ends {
            // ESC inside a string ends it and begins another sequence.
            self.held.pop();
            self.pass_held(out);
            self.hold(State::Escape, ESC);
            self.step(byte, out);
            return;
        }
        self.held.push(byte);
        if ends {
            let terminator = if byte == BEL { 1 } else { 2 };
            let body = &self.held[2..self.held.len() - terminator];
            let query = if osc {
                is_osc_query(body)
            } else {
                is_dcs_query(body)
            };
            if query {
                self.drop_held();
            } else {
                self.pass_held(out);
            }
        } else if self.held.len() > MAX_STRING_BYTES {
            self.pass_held(out);
            self.state = State::PassString {
                escape: byte == ESC,
            };
        } else {
            self.state = State::String {
                osc,
                escape: byte == ESC,
            };
        }
    }
}

/// Whether a control sequence (`params intermediates final`, after `CSI`)
/// asks the terminal to answer.
fn is_csi_query(sequence: &[u8]) -> bool {
    let Some((&last, body)) = sequence.split_last() else {
        return false;
    };
    let params_only = body
        .iter()
        .all(|b| b.is_ascii_digit() || matches!(b, b';' | b'?' | b'>' | b'=' | b':'));
    match last {
        // Device status reports: cursor position, printer, keyboard, …
        b'n' => true,
        // Primary, secondary and tertiary device attributes.
        b'c' => params_only,
        // DECRQM (a mode's state) and DECRQPSR (presentation state).
        b'p' | b'w' => body.last() == Some(&b'$'),
        // DECREQTPARM.
        b'x' => params_only,
        // XTVERSION.
        b'q' => body.first() == Some(&b'>'),
        // Keyboard protocol flags; modifier-key options; graphics attributes.
        b'u' => body == b"?",
        b'm' | b'S' => body.first() == Some(&b'?'),
        // Window reports: state, position, size in pixels or cells, title.
        b't' => {
            let first = body.split(|&b| b == b';').next().unwrap_or_default();
            matches!(
                first,
                b"11" | b"13" | b"14" | b"15" | b"16" | b"18" | b"19" | b"20" | b"21"
            )
        }
        _ => false,
    }
}

/// Whether an OSC string asks for something: one of its parameters is `?`
/// (`4;1;?`, `10;?`, `52;c;?`).
fn is_osc_query(body: &[u8]) -> bool {
    body.split(|&b| b == b';').any(|param| param == b"?")
}

/// Whether a DCS string requests a setting (DECRQSS, `$q`) or a
/// capability (XTGETTCAP, `+q`).
fn is_dcs_query(body: &[u8]) -> bool {
    body.starts_with(b"$q") || body.starts_with(b"+q")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strip(chunks: &[&[u8]]) -> Vec<u8> {
        let mut stripper = QueryStripper::default();
        let mut out = Vec::new();
        for chunk in chunks {
            stripper.feed(chunk, &mut out);
        }
        stripper.flush(&mut out);
        out
    }

    #[test]
    fn queries_are_dropped() {
        for query in [
            &b"\x1b[6n"[..],
            b"\x1b[5n",
            b"\x1b[?6n",
            b"\x1b[c",
            b"\x1b[0c",
            b"\x1b[>c",
            b"\x1b[=c",
            b"\x1b[?2004$p",
            b"\x1b[4$p",
            b"\x1b[18t",
            b"\x1b[14;2t",
            b"\x1b[>q",
            b"\x1b[?u",
            b"\x1b]11;?\x07",
            b"\x1b]4;1;?\x1b\\",
            b"\x1b]52;c;?\x07",
            b"\x1bP$qm\x1b\\",
            b"\x1bP+q544e\x1b\\",
            b"\x05",
            b"\x1bZ",
        ] {
            let mut chunk = b"a".to_vec();
            chunk.extend_from_slice(query);
            chunk.push(b'b');
            assert_eq!(strip(&[&chunk]), b"ab", "{query:?} survived");
        }
    }

    #[test]
    fn everything_else_passes_byte_for_byte() {
        let screen: &[u8] = b"\x1b[2J\x1b[H\x1b[1;31mred\x1b[0m \x1b]0;title\x07\
              \x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\ \x1b[?2004h\x1b[22t\
              \x1bPq#0;2;0;0;0~\x1b\\ \x1b(B\x1b7\x1b8 \xe2\x9c\x93 \xff\r\n";
        assert_eq!(strip(&[screen]), screen);
    }

    #[test]
    fn a_query_split_across_chunks_is_still_dropped() {
        assert_eq!(strip(&[b"x\x1b", b"[", b"6", b"n", b"y"]), b"xy");
        assert_eq!(strip(&[b"\x1b]11", b";?\x1b", b"\\z"]), b"z");
        assert_eq!(strip(&[b"\x1b[31", b"m!"]), b"\x1b[31m!");
    }

    #[test]
    fn an_unfinished_sequence_is_passed_on_at_the_flush() {
        let mut stripper = QueryStripper::default();
        let mut out = Vec::new();
        stripper.feed(b"ok\x1b[1;", &mut out);
        assert_eq!(out, b"ok");
        stripper.flush(&mut out);
        assert_eq!(out, b"ok\x1b[1;");
    }

    #[test]
    fn a_long_string_is_no_query_and_passes_whole() {
        let mut long = b"\x1b]52;c;".to_vec();
        long.extend(std::iter::repeat_n(b'A', MAX_STRING_BYTES * 2));
        long.extend_from_slice(b"\x07after\x1b[6n");
        let mut expected = long.clone();
        expected.truncate(expected.len() - 4);
        assert_eq!(strip(&[&long]), expected);
    }

    #[test]
    fn an_escape_inside_a_string_starts_a_new_sequence() {
        assert_eq!(strip(&[b"\x1b]0;t\x1b[6nz"]), b"\x1b]0;tz");
    }
}
