//! The run lifecycle of protocol.md §7.1 as one table. Every state change
//! of a run goes through [`next`]; what the table does not list does not
//! happen, whoever asks.

use muster_proto::RunState;
use muster_proto::messages::RunOutcome;

/// What can move a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RunEvent {
    /// A slot is free: the hub sends `run.start`.
    Dispatch,
    /// The agent reported `run.started`.
    Started,
    /// The agent reported `run.exited` with this outcome.
    Exited(RunOutcome),
    /// A client cancelled it, or its agent was removed, while it waited.
    Dequeued,
    /// Its time to live ran out while it waited.
    Expired,
    /// Its agent did not come back in time, or no longer knows it.
    Lost,
}

/// The state `event` moves a run in `from` to, or `None` if the table does
/// not allow it.
pub(crate) fn next(from: RunState, event: RunEvent) -> Option<RunState> {
    use RunEvent as E;
    use RunOutcome as O;
    use RunState as S;
    let to = match (from, event) {
        (S::Queued, E::Dispatch) => S::Dispatched,
        (S::Queued, E::Dequeued) => S::Cancelled,
        (S::Queued, E::Expired) => S::Expired,
        (S::Dispatched, E::Started) => S::Running,
        (S::Dispatched, E::Exited(O::Failed)) => S::Failed,
        (S::Dispatched, E::Exited(O::Rejected)) => S::Rejected,
        (S::Dispatched, E::Exited(O::Cancelled)) => S::Cancelled,
        (S::Running, E::Exited(O::Completed)) => S::Completed,
        (S::Running, E::Exited(O::TimedOut)) => S::TimedOut,
        (S::Running, E::Exited(O::Cancelled)) => S::Cancelled,
        (S::Dispatched | S::Running, E::Lost) => S::Lost,
        _ => return None,
    };
    Some(to)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATES: [RunState; 10] = [
        RunState::Queued,
        RunState::Dispatched,
        RunState::Running,
        RunState::Completed,
        RunState::Failed,
        RunState::TimedOut,
        RunState::Cancelled,
        RunState::Expired,
        RunState::Lost,
        RunState::Rejected,
    ];

    fn events() -> Vec<RunEvent> {
        let mut events = vec![
            RunEvent::Dispatch,
            RunEvent::Started,
            RunEvent::Dequeued,
            RunEvent::Expired,
            RunEvent::Lost,
        ];
        for outcome in [
            RunOutcome::Completed,
            RunOutcome::Failed,
            RunOutcome::TimedOut,
            RunOutcome::Cancelled,
            RunOutcome::Rejected,
        ] {
            events.push(RunEvent::Exited(outcome));
        }
        events
    }

    #[test]
    fn terminal_states_never_change() {
        for from in STATES.iter().filter(|s| s.is_terminal()) {
            for event in events() {
                assert_eq!(next(*from, event), None, "{from} on {event:?}");
            }
        }
    }

    #[test]
    fn runs_only_move_forward() {
        let rank = |s: RunState| match s {
            RunState::Queued => 0,
            RunState::Dispatched => 1,
            RunState::Running => 2,
            _ => 3,
        };
        for from in STATES {
            for event in events() {
                if let Some(to) = next(from, event) {
                    assert!(rank(to) > rank(from), "{from} -> {to}");
                }
            }
        }
    }

    #[test]
    fn the_reports_protocol_md_forbids_are_refused() {
        let completed = RunEvent::Exited(RunOutcome::Completed);
        assert_eq!(next(RunState::Dispatched, completed), None);
        assert_eq!(next(RunState::Queued, completed), None);
        assert_eq!(next(RunState::Queued, RunEvent::Started), None);
        assert_eq!(next(RunState::Queued, RunEvent::Lost), None);
        assert_eq!(
            next(RunState::Running, RunEvent::Exited(RunOutcome::Failed)),
            None
        );
        assert_eq!(next(RunState::Running, RunEvent::Dispatch), None);
    }

    #[test]
    fn every_path_of_the_table_is_allowed() {
        assert_eq!(
            next(RunState::Queued, RunEvent::Dispatch),
            Some(RunState::Dispatched)
        );
        assert_eq!(
            next(RunState::Dispatched, RunEvent::Started),
            Some(RunState::Running)
        );
        assert_eq!(
            next(RunState::Running, RunEvent::Exited(RunOutcome::TimedOut)),
            Some(RunState::TimedOut)
        );
        assert_eq!(
            next(RunState::Dispatched, RunEvent::Exited(RunOutcome::Rejected)),
            Some(RunState::Rejected)
        );
        assert_eq!(
            next(RunState::Running, RunEvent::Lost),
            Some(RunState::Lost)
        );
        assert_eq!(
            next(RunState::Queued, RunEvent::Expired),
            Some(RunState::Expired)
        );
    }
}
