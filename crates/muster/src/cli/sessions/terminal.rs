//! The local terminal of an interactive session: raw mode, restored by a
//! guard on every way out (return, error, panic; signals are turned into a
//! return by the caller), the window size, and stdin read on a thread of its
//! own so that a pending read never holds the process open at exit.

use std::io::{self, IsTerminal, Read};
use std::os::fd::AsFd;

use anyhow::Context;
use nix::sys::termios::{self, SetArg, Termios};
use tokio::sync::mpsc;

/// Bytes read from stdin at once: one input per read, well under the
/// 8 KiB input limit even once invalid bytes turn into U+FFFD.
const STDIN_READ_BYTES: usize = 2048;

/// Reads waiting to be sent; the reader thread blocks when it is full.
const STDIN_CHANNEL_CAPACITY: usize = 64;

/// Raw mode on stdin while it lives; the original settings come back on drop.
pub(crate) struct RawMode {
    original: Termios,
}

impl RawMode {
    /// Puts stdin, a terminal, in raw mode: every key reaches the remote
    /// side as typed, Ctrl-C included, and nothing is echoed locally.
    pub(crate) fn enable() -> anyhow::Result<Self> {
        let stdin = io::stdin();
        let original = termios::tcgetattr(stdin.as_fd()).context("reading the terminal's mode")?;
        let mut raw = original.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw)
            .context("putting the terminal in raw mode")?;
        Ok(Self { original })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(io::stdin().as_fd(), SetArg::TCSADRAIN, &self.original);
    }
}

/// Whether stdin is a terminal (raw mode, escapes, window size).
pub(crate) fn stdin_is_terminal() -> bool {
    io::stdin().is_terminal()
}

/// The window size of the terminal on stdin or stdout, as `(cols, rows)`.
pub(crate) fn window_size() -> Option<(u16, u16)> {
    let from = |size: rustix::termios::Winsize| {
        (size.ws_col > 0 && size.ws_row > 0).then_some((size.ws_col, size.ws_row))
    };
    let stdin = rustix::termios::tcgetwinsize(io::stdin())
        .ok()
        .and_then(from);
    stdin.or_else(|| {
        rustix::termios::tcgetwinsize(io::stdout())
            .ok()
            .and_then(from)
    })
}

/// Starts a thread reading stdin; each read is one item, and the channel
/// closes at end of file or on an error.
pub(crate) fn read_stdin() -> mpsc::Receiver<Vec<u8>> {
    let (reads_tx, reads_rx) = mpsc::channel(STDIN_CHANNEL_CAPACITY);
    std::thread::spawn(move || {
        let mut stdin = io::stdin().lock();
        let mut buf = [0u8; STDIN_READ_BYTES];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    if reads_tx.blocking_send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    });
    reads_rx
}
