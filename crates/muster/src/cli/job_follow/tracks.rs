//! What the display keeps of each step run of the job — the bytes not
//! printed yet: an unfinished line, or with `--group` everything until the
//! run ends — and how a run or step ended, in a few words.

use muster_proto::jobs::StepOutcome;
use muster_proto::messages::StepEndedEvent;
use muster_proto::{OutputStream, RunInfo, RunState};

/// An unfinished line longer than this is printed as a line of its own
/// rather than held back without bound.
const MAX_PARTIAL_LINE: usize = 64 * 1024;

/// The output of one step run not printed yet.
#[derive(Debug, Default)]
pub(super) struct RunTrack {
    /// Stdout bytes not printed yet.
    stdout: Vec<u8>,
    /// Stderr bytes not printed yet.
    stderr: Vec<u8>,
}

impl RunTrack {
    /// Holds `bytes` of `stream` until they are printed.
    pub(super) fn push(&mut self, stream: OutputStream, bytes: &[u8]) {
        self.buffer(stream).extend_from_slice(bytes);
    }

    /// The complete lines of `stream` held so far, taken out; an unfinished
    /// line stays until it is completed, the run ends, or it grows too long.
    pub(super) fn take_lines(&mut self, stream: OutputStream) -> Vec<u8> {
        let buffer = self.buffer(stream);
        if buffer.len() > MAX_PARTIAL_LINE {
            return std::mem::take(buffer);
        }
        match buffer.iter().rposition(|&b| b == b'\n') {
            Some(end) => {
                let rest = buffer.split_off(end + 1);
                std::mem::replace(buffer, rest)
            }
            None => Vec::new(),
        }
    }

    /// Everything of `stream` held so far, taken out.
    pub(super) fn take_all(&mut self, stream: OutputStream) -> Vec<u8> {
        std::mem::take(self.buffer(stream))
    }

    /// The pending bytes of `stream`.
    fn buffer(&mut self, stream: OutputStream) -> &mut Vec<u8> {
        match stream {
            OutputStream::Stdout => &mut self.stdout,
            // Job runs are never sessions; nothing is written on `input`.
            OutputStream::Stderr | OutputStream::Input => &mut self.stderr,
        }
    }
}

/// How a run ended, in a few words: `exit 0`, `signal 9`, `timed out`,
/// `rejected: INVALID_PARAMS: …`.
pub(super) fn outcome(run: &RunInfo) -> String {
    describe(&StepOutcome::of(run.step.unwrap_or(0), run))
}

/// How a step's run ended, as [`outcome`] says it.
pub(super) fn step_outcome(step: &StepEndedEvent) -> String {
    describe(&step.outcome)
}

fn describe(step: &StepOutcome) -> String {
    let with_error = |what: &str| match (&step.error_code, &step.error) {
        (Some(code), Some(error)) => format!("{what}: {code}: {error}"),
        (None, Some(error)) => format!("{what}: {error}"),
        (Some(code), None) => format!("{what}: {code}"),
        (None, None) => what.to_owned(),
    };
    match (step.state, step.exit_code, step.signal) {
        (RunState::Completed, Some(code), _) => format!("exit {code}"),
        (RunState::Completed, None, Some(signal)) => format!("signal {signal}"),
        (RunState::TimedOut, ..) => "timed out".to_owned(),
        (state, ..) => with_error(state.as_str()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn track() -> RunTrack {
        RunTrack::default()
    }

    #[test]
    fn complete_lines_are_taken_and_the_rest_waits() {
        let mut t = track();
        t.push(OutputStream::Stdout, b"a\nb");
        assert_eq!(t.take_lines(OutputStream::Stdout), b"a\n");
        assert_eq!(t.take_lines(OutputStream::Stdout), b"");
        t.push(OutputStream::Stdout, b"c\nd");
        assert_eq!(t.take_lines(OutputStream::Stdout), b"bc\n");
        assert_eq!(t.take_all(OutputStream::Stdout), b"d");
        assert!(t.take_all(OutputStream::Stderr).is_empty());
    }

    #[test]
    fn an_endless_line_is_not_held_forever() {
        let mut t = track();
        t.push(OutputStream::Stderr, &vec![b'x'; MAX_PARTIAL_LINE + 1]);
        assert_eq!(
            t.take_lines(OutputStream::Stderr).len(),
            MAX_PARTIAL_LINE + 1
        );
    }

    #[test]
    fn outcomes_read_like_the_summary() {
        let json = serde_json::json!({
            "id": muster_proto::RunId::generate(), "agent": "web-1",
            "command": {"argv": ["true"]}, "priority": 0, "state": "completed",
            "exit_code": 3, "created_ms": 1,
        });
        let mut run: RunInfo = serde_json::from_value(json).unwrap();
        assert_eq!(outcome(&run), "exit 3");
        run.exit_code = None;
        run.signal = Some(9);
        assert_eq!(outcome(&run), "signal 9");
        run.state = RunState::Rejected;
        run.error = Some("domain: not a hostname".into());
        run.error_code = Some(muster_proto::ErrorCode::InvalidParams);
        assert_eq!(
            outcome(&run),
            "rejected: INVALID_PARAMS: domain: not a hostname"
        );
        run.state = RunState::TimedOut;
        assert_eq!(outcome(&run), "timed out");
    }
}
