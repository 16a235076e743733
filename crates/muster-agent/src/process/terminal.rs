//! A pty session's terminal as the agent stops it: the terminal's foreground
//! process group (a job of an interactive shell, in a group of its own) and
//! every process of the terminal's session.

use std::os::fd::OwnedFd;

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::{Pid, tcgetpgrp};

use super::ProcessGroup;

/// A pty session's terminal, seen from its master.
pub(super) struct Terminal {
    pub(super) master: OwnedFd,
}

impl Terminal {
    /// Signals the terminal's foreground process group, when it is not the
    /// session's own group (which the caller signals).
    pub(super) fn signal_foreground(&self, group: &ProcessGroup, signal: Signal) {
        let Ok(foreground) = tcgetpgrp(&self.master) else {
            return;
        };
        if foreground != group.pgid && foreground.as_raw() > 1 {
            match killpg(foreground, signal) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(e) => tracing::debug!(
                    "cannot send {signal} to the terminal's group {foreground}: {e}"
                ),
            }
        }
    }
}

/// Kills every process of the session `sid` (Linux: found in `/proc`).
pub(super) fn kill_session(sid: u32) {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let pid = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse().ok());
        let Some(pid) = pid else { continue };
        let stat = std::fs::read_to_string(entry.path().join("stat"));
        if stat.ok().as_deref().and_then(session_of) == Some(sid) {
            match kill(Pid::from_raw(pid), Signal::SIGKILL) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(e) => tracing::debug!("cannot kill process {pid} of a session: {e}"),
            }
        }
    }
}

/// The session id in a `/proc/<pid>/stat` line: "pid (comm) state ppid pgrp
/// session …", where comm may hold anything but ends at the last ')'.
fn session_of(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_is_read_past_an_odd_command_name() {
        let stat = "4242 (a) b (c) S 1 4240 4239 34817 4240 4194560 0 0";
        assert_eq!(session_of(stat), Some(4239));
        assert_eq!(session_of("garbage"), None);
    }
}
