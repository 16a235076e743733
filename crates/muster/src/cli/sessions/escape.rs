//! The escape sequences typed into an interactive session, as ssh has them:
//! `~` right after Enter (or first of all) starts one. `~.` detaches,
//! `~~` sends one `~`, `~?` shows the list; `~` before anything else is
//! sent as typed, with what follows it.

/// What the local side does besides sending bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// `~.`: detach; the bytes before it are sent first, the rest dropped.
    Detach,
    /// `~?`: show the escape sequences.
    Help,
}

/// The help `~?` prints (lines end with `\r\n`: the terminal is raw).
pub(crate) const HELP: &str = "\r\nSupported escape sequences (after Enter):\r\n  \
                               ~.  detach (the session goes on)\r\n  \
                               ~~  send one ~\r\n  \
                               ~?  this list\r\n";

/// Scans typed bytes for escape sequences; its state spans reads.
#[derive(Clone, Debug)]
pub(crate) struct EscapeScanner {
    /// The next byte starts a line.
    at_line_start: bool,
    /// A `~` at the start of a line is held back until the next byte.
    tilde: bool,
}

impl Default for EscapeScanner {
    fn default() -> Self {
        Self {
            at_line_start: true,
            tilde: false,
        }
    }
}

impl EscapeScanner {
    /// Scans one read: the bytes to send, and an action that stopped the scan.
    pub(crate) fn feed(&mut self, input: &[u8]) -> (Vec<u8>, Option<Action>) {
        let mut send = Vec::with_capacity(input.len());
        for &byte in input {
            if self.tilde {
                self.tilde = false;
                match byte {
                    b'.' => return (send, Some(Action::Detach)),
                    b'?' => {
                        self.at_line_start = false;
                        return (send, Some(Action::Help));
                    }
                    b'~' => {
                        send.push(b'~');
                        self.at_line_start = false;
                        continue;
                    }
                    _ => send.push(b'~'),
                }
            } else if byte == b'~' && self.at_line_start {
                self.tilde = true;
                continue;
            }
            send.push(byte);
            self.at_line_start = matches!(byte, b'\r' | b'\n');
        }
        (send, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(reads: &[&[u8]]) -> (Vec<u8>, Option<Action>) {
        let mut scanner = EscapeScanner::default();
        let mut sent = Vec::new();
        for read in reads {
            let (bytes, action) = scanner.feed(read);
            sent.extend(bytes);
            if action.is_some() {
                return (sent, action);
            }
        }
        (sent, None)
    }

    #[test]
    fn tilde_dot_detaches_only_at_the_start_of_a_line() {
        assert_eq!(scan(&[b"~."]), (vec![], Some(Action::Detach)));
        assert_eq!(
            scan(&[b"ls\r~.rest"]),
            (b"ls\r".to_vec(), Some(Action::Detach))
        );
        assert_eq!(scan(&[b"echo a~."]), (b"echo a~.".to_vec(), None));
        assert_eq!(
            scan(&[b"x\n", b"~", b"."]),
            (b"x\n".to_vec(), Some(Action::Detach))
        );
    }

    #[test]
    fn tilde_tilde_sends_one_tilde_and_others_pass_through() {
        assert_eq!(scan(&[b"~~."]), (b"~.".to_vec(), None));
        assert_eq!(scan(&[b"~", b"~"]), (b"~".to_vec(), None));
        assert_eq!(scan(&[b"~/bin\r"]), (b"~/bin\r".to_vec(), None));
        assert_eq!(scan(&[b"\r~x~."]), (b"\r~x~.".to_vec(), None));
    }

    #[test]
    fn tilde_question_mark_asks_for_help() {
        assert_eq!(scan(&[b"~?"]), (vec![], Some(Action::Help)));
        let mut scanner = EscapeScanner::default();
        scanner.feed(b"~?");
        // After the help, the line has begun.
        assert_eq!(scanner.feed(b"~."), (b"~.".to_vec(), None));
    }
}
