//! How a finished run becomes the exit code of `muster run`.
//!
//! The mapping mirrors a local shell: the remote exit code as is, 128+N for a
//! signal, 124 for a timeout (as `timeout(1)`), 130 for a cancellation (as
//! Ctrl-C), and 255 when the run never produced an exit status.

use muster_proto::{RunInfo, RunState};

use super::EXIT_ERROR;

/// Exit code when the run exceeded its timeout, as `timeout(1)` reports it.
pub(crate) const EXIT_TIMED_OUT: u8 = 124;

/// Exit code when the run was cancelled or interrupted with Ctrl-C.
pub(crate) const EXIT_CANCELLED: u8 = 130;

/// Offset added to a signal number, as shells do.
const SIGNAL_EXIT_BASE: i32 = 128;

/// The exit code for a run, and a line for stderr when the run has no exit
/// status of its own.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct RunExit {
    /// Process exit code.
    pub(crate) code: u8,
    /// Why the run ended without an exit status, for stderr.
    pub(crate) message: Option<String>,
}

/// Exit code when the agent refused the run and nothing ran (invalid action
/// parameters, unknown action, raw commands disabled), like a shell's
/// "cannot execute".
pub(crate) const EXIT_REJECTED: u8 = 126;

/// Maps a run in a terminal state to the exit code of `muster run`.
pub(crate) fn run_exit(run: &RunInfo) -> RunExit {
    let plain = |code| RunExit {
        code,
        message: None,
    };
    let failure = |what: &str| RunExit {
        code: EXIT_ERROR,
        message: Some(match &run.error {
            Some(error) => format!("run {what}: {error}"),
            None => format!("run {what}"),
        }),
    };
    match run.state {
        RunState::Completed => match (run.exit_code, run.signal) {
            (Some(code), _) => plain(u8::try_from(code).unwrap_or(EXIT_ERROR)),
            (None, Some(signal)) => {
                plain(u8::try_from(SIGNAL_EXIT_BASE + signal).unwrap_or(EXIT_ERROR))
            }
            (None, None) => failure("completed without an exit status"),
        },
        RunState::TimedOut => plain(EXIT_TIMED_OUT),
        RunState::Cancelled => plain(EXIT_CANCELLED),
        RunState::Failed => failure("failed"),
        RunState::Lost => failure("lost"),
        RunState::Expired => failure("expired"),
        RunState::Rejected => RunExit {
            code: EXIT_REJECTED,
            message: Some(match (&run.error_code, &run.error) {
                (Some(code), Some(error)) => {
                    format!("{} rejected the run: {code}: {error}", run.agent)
                }
                (_, Some(error)) => format!("{} rejected the run: {error}", run.agent),
                _ => format!("{} rejected the run", run.agent),
            }),
        },
        RunState::Queued | RunState::Dispatched | RunState::Running => {
            failure(&format!("is still {}", run.state))
        }
    }
}

#[cfg(test)]
mod tests {
    use muster_proto::types::RunRequest;
    use muster_proto::{AgentName, CommandSpec};

    use super::*;

    fn run(state: RunState) -> RunInfo {
        let request = RunRequest::new(
            AgentName::new("web-1").unwrap(),
            CommandSpec::Argv(vec!["true".into()]),
        );
        RunInfo {
            state,
            ..RunInfo::queued(request, 0)
        }
    }

    fn code(run: &RunInfo) -> u8 {
        run_exit(run).code
    }

    #[test]
    fn completed_runs_exit_with_their_code_or_signal() {
        let mut done = run(RunState::Completed);
        done.exit_code = Some(0);
        assert_eq!(
            run_exit(&done),
            RunExit {
                code: 0,
                message: None
            }
        );
        done.exit_code = Some(42);
        assert_eq!(code(&done), 42);
        done.exit_code = None;
        done.signal = Some(9);
        assert_eq!(code(&done), 137);
        done.signal = Some(15);
        assert_eq!(code(&done), 143);
    }

    #[test]
    fn timeouts_and_cancellations_have_fixed_codes() {
        assert_eq!(code(&run(RunState::TimedOut)), 124);
        assert_eq!(code(&run(RunState::Cancelled)), 130);
    }

    #[test]
    fn runs_without_exit_status_exit_255_with_a_reason() {
        let mut failed = run(RunState::Failed);
        failed.error = Some("no such file or directory".into());
        let exit = run_exit(&failed);
        assert_eq!(exit.code, 255);
        assert_eq!(
            exit.message.as_deref(),
            Some("run failed: no such file or directory")
        );
        assert_eq!(
            run_exit(&run(RunState::Lost)).message.as_deref(),
            Some("run lost")
        );
        assert_eq!(code(&run(RunState::Expired)), 255);
    }

    #[test]
    fn out_of_range_codes_do_not_wrap_to_success() {
        let mut done = run(RunState::Completed);
        done.exit_code = Some(256);
        assert_eq!(code(&done), 255);
        done.exit_code = Some(-1);
        assert_eq!(code(&done), 255);
    }
}
