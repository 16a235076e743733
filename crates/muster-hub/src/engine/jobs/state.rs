//! One job in memory and the pure rules that move its targets: which step
//! comes next, when a target ends and how, when the job ends and how. Every
//! event is numbered here, in the order things happened.

use std::collections::{BTreeSet, HashMap};

use muster_proto::jobs::{JobInfo, JobProgress, JobState, StepOutcome, TargetState};
use muster_proto::messages::{JobProgressEvent, StepEndedEvent, StepStartedEvent, TargetEvent};
use muster_proto::{AgentName, Envelope, HubToClient, JobId, RunInfo, RunState, UnixMillis};

/// Why a waiting target was skipped after a failure.
pub(super) const FAIL_FAST: &str = "not started: fail-fast stopped the job after a failure";
/// Why an offline target was skipped.
pub(super) const OFFLINE: &str = "not started: the agent was offline (online-only)";

/// An event numbered on `job:<id>`, to store and publish.
pub(super) struct Numbered {
    pub(super) seq: u64,
    pub(super) text: String,
    pub(super) last: bool,
}

/// A job that has not reached a final state.
#[derive(Debug)]
pub(crate) struct ActiveJob {
    pub(crate) info: JobInfo,
    /// Target index by agent name.
    pub(super) index: HashMap<AgentName, usize>,
    /// Seq of the next event on `job:<id>`.
    pub(super) next_seq: u64,
    /// The counts last published, to publish only changes.
    published: Option<(JobState, JobProgress)>,
    /// Targets changed since the batch began: written at its end.
    pub(super) dirty_targets: BTreeSet<usize>,
    /// The record changed since the batch began.
    pub(super) dirty_record: bool,
    /// Events numbered since the batch began: stored at its end.
    pub(super) unsaved_events: Vec<(u64, String)>,
    /// Targets in each state, kept as they move (see [`ActiveJob::set_state`]),
    /// so that nothing per event counts all the targets again: a job over
    /// 10,000 agents hears from each of them.
    tally: JobProgress,
    /// No target before this index is pending: targets never go back to
    /// pending, so the search for the next ones to start resumes here.
    first_pending: usize,
}

impl ActiveJob {
    pub(super) fn new(info: JobInfo, next_seq: u64) -> Self {
        let index = info
            .targets
            .iter()
            .enumerate()
            .map(|(i, t)| (t.agent.clone(), i))
            .collect();
        let tally = JobProgress::count(info.targets.iter().map(|t| t.state));
        Self {
            info,
            index,
            next_seq,
            published: None,
            dirty_targets: BTreeSet::new(),
            dirty_record: false,
            unsaved_events: Vec::new(),
            tally,
            first_pending: 0,
        }
    }

    /// Moves target `i` to `state`, keeping the tally.
    fn set_state(&mut self, i: usize, state: TargetState) {
        let from = std::mem::replace(&mut self.info.targets[i].state, state);
        let left = self.tally.of_mut(from);
        *left = left.saturating_sub(1);
        let entered = self.tally.of_mut(state);
        *entered = entered.saturating_add(1);
    }

    /// Up to `n` pending targets, first to last, and whether more are pending.
    pub(super) fn next_pending(&mut self, n: usize) -> (Vec<usize>, bool) {
        let targets = &self.info.targets;
        while targets
            .get(self.first_pending)
            .is_some_and(|t| t.state != TargetState::Pending)
        {
            self.first_pending += 1;
        }
        let taken: Vec<usize> = (self.first_pending..targets.len())
            .filter(|&i| targets[i].state == TargetState::Pending)
            .take(n)
            .collect();
        let more = (self.tally.pending as usize) > taken.len();
        (taken, more)
    }

    /// Numbers an event built by `make(job, seq, now)`.
    pub(super) fn event(
        &mut self,
        now: UnixMillis,
        make: impl FnOnce(JobId, u64, u64) -> HubToClient,
    ) -> Numbered {
        let (job, seq) = (self.info.id, self.next_seq);
        self.next_seq = self.next_seq.saturating_add(1);
        let msg = make(job, seq, now);
        let last = matches!(&msg, HubToClient::JobProgress(p) if p.state.is_terminal());
        let text = Envelope::event(job.channel(), msg).encode();
        self.unsaved_events.push((seq, text.clone()));
        Numbered { seq, text, last }
    }

    /// Recounts targets and numbers a `job.progress` if anything changed.
    pub(super) fn progress(&mut self, now: UnixMillis) -> Option<Numbered> {
        let progress = self.tally;
        debug_assert_eq!(
            progress,
            JobProgress::count(self.info.targets.iter().map(|t| t.state))
        );
        self.info.progress = progress;
        let current = (self.info.state, progress);
        if self.published == Some(current) {
            return None;
        }
        self.published = Some(current);
        self.dirty_record = true;
        let state = self.info.state;
        Some(self.event(now, |job, seq, ts_ms| {
            HubToClient::JobProgress(JobProgressEvent {
                job,
                seq,
                ts_ms,
                state,
                progress,
            })
        }))
    }

    /// Puts target `i` in its final state and numbers `job.target`.
    pub(super) fn end_target(
        &mut self,
        i: usize,
        state: TargetState,
        error: Option<String>,
        now: UnixMillis,
    ) -> Numbered {
        self.set_state(i, state);
        let target = &mut self.info.targets[i];
        target.error = error.clone();
        target.finished_ms = Some(now);
        let agent = target.agent.clone();
        self.dirty_targets.insert(i);
        self.event(now, |job, seq, ts_ms| {
            HubToClient::JobTarget(TargetEvent {
                job,
                seq,
                ts_ms,
                agent,
                state,
                error,
            })
        })
    }

    /// Targets with a run on their agent (queued there or running).
    pub(super) fn in_progress(&self) -> usize {
        (self.tally.queued + self.tally.running) as usize
    }

    /// Whether new targets may start: not cancelled, and not stopped by fail-fast.
    pub(super) fn may_start(&self) -> bool {
        let failed = self.tally.failed > 0;
        !(self.info.cancel_requested || (self.info.spec.fail_fast && failed))
    }

    /// Sets the final state once every target has one; true if it just did.
    pub(super) fn settle(&mut self, now: UnixMillis) -> bool {
        if self.info.state.is_terminal() || self.tally.done() < self.tally.total {
            return false;
        }
        self.info.state = final_state(&self.info);
        self.info.finished_ms = Some(now);
        self.dirty_record = true;
        true
    }

    /// Numbers the targets that will never start, skipped at creation.
    pub(super) fn announce(&mut self, now: UnixMillis) -> Vec<Numbered> {
        let skipped: Vec<_> = self
            .info
            .targets
            .iter()
            .filter(|t| t.state == TargetState::Skipped)
            .map(|t| (t.agent.clone(), t.error.clone()))
            .collect();
        skipped
            .into_iter()
            .map(|(agent, error)| {
                self.event(now, |job, seq, ts_ms| {
                    HubToClient::JobTarget(TargetEvent {
                        job,
                        seq,
                        ts_ms,
                        agent,
                        state: TargetState::Skipped,
                        error,
                    })
                })
            })
            .collect()
    }

    /// Ends every waiting target as skipped by fail-fast.
    pub(super) fn skip_pending(&mut self, now: UnixMillis) -> Vec<Numbered> {
        let pending: Vec<usize> = (0..self.info.targets.len())
            .filter(|&i| self.info.targets[i].state == TargetState::Pending)
            .collect();
        pending
            .into_iter()
            .map(|i| self.end_target(i, TargetState::Skipped, Some(FAIL_FAST.to_owned()), now))
            .collect()
    }

    /// Links a newly created step run to its target and numbers `job.step.started`.
    pub(super) fn record_step(
        &mut self,
        i: usize,
        step: u32,
        run: &RunInfo,
        now: UnixMillis,
    ) -> Option<Numbered> {
        let name = self.info.spec.steps[step as usize].name.clone();
        let target = &mut self.info.targets[i];
        if target.steps.iter().any(|s| s.run == run.id) {
            return None;
        }
        target.steps.push(StepOutcome::queued(step, run.id));
        target.started_ms.get_or_insert(now);
        let (agent, run, ended) = (target.agent.clone(), run.id, target.state.is_terminal());
        if !ended {
            self.set_state(i, TargetState::Queued);
        }
        self.dirty_targets.insert(i);
        Some(self.event(now, |job, seq, ts_ms| {
            HubToClient::JobStepStarted(StepStartedEvent {
                job,
                seq,
                ts_ms,
                agent,
                step,
                name,
                run,
            })
        }))
    }

    /// Records a run's new state on its step. Returns the step's outcome once
    /// the run has ended (numbering `job.step.completed` or `…failed` the first
    /// time), or `None` while it is still going or if the run is not the
    /// target's current one.
    pub(super) fn run_changed(
        &mut self,
        i: usize,
        step: u32,
        run: &RunInfo,
        now: UnixMillis,
        out: &mut Vec<Numbered>,
    ) -> Option<StepOutcome> {
        let spec = &self.info.spec.steps[step as usize];
        let (continue_on_failure, name) = (spec.continue_on_failure, spec.name.clone());
        self.dirty_targets.insert(i);
        let target = &mut self.info.targets[i];
        let is_current = target.steps.last().is_some_and(|s| s.run == run.id);
        let outcome = target.steps.iter_mut().find(|s| s.run == run.id)?;
        let already_ended = outcome.state.is_terminal();
        if !already_ended {
            *outcome = StepOutcome::of(step, run);
        }
        if !run.state.is_terminal() {
            if target.state == TargetState::Queued && run.state != RunState::Queued {
                self.set_state(i, TargetState::Running);
            }
            return None;
        }
        let outcome = outcome.clone();
        if !is_current || target.state.is_terminal() {
            return None;
        }
        if !already_ended {
            let succeeded = outcome.succeeded();
            let event = StepEndedEvent {
                job: self.info.id,
                seq: 0,
                ts_ms: 0,
                agent: target.agent.clone(),
                name,
                outcome: outcome.clone(),
                continued: !succeeded && continue_on_failure,
            };
            out.push(self.event(now, |_, seq, ts_ms| {
                let event = StepEndedEvent {
                    seq,
                    ts_ms,
                    ..event
                };
                if succeeded {
                    HubToClient::JobStepCompleted(event)
                } else {
                    HubToClient::JobStepFailed(event)
                }
            }));
        }
        Some(outcome)
    }

    /// Decides what follows a step's outcome, and ends the target when it is done.
    pub(super) fn advance(
        &mut self,
        i: usize,
        step: u32,
        outcome: &StepOutcome,
        now: UnixMillis,
        out: &mut Vec<Numbered>,
    ) -> Advance {
        if self.info.targets[i].state.is_terminal() {
            return Advance::Wait;
        }
        let spec = &self.info.spec.steps[step as usize];
        let last = step as usize + 1 == self.info.spec.steps.len();
        let go_on = outcome.succeeded() || spec.continue_on_failure;
        if self.info.cancel_requested {
            let state = if go_on && last {
                TargetState::Succeeded
            } else {
                TargetState::Cancelled
            };
            out.push(self.end_target(i, state, None, now));
            return Advance::Ended;
        }
        if go_on && !last {
            return Advance::NextStep(step + 1);
        }
        if go_on {
            out.push(self.end_target(i, TargetState::Succeeded, None, now));
        } else {
            let error = step_failure(&spec.name, outcome);
            out.push(self.end_target(i, TargetState::Failed, Some(error), now));
        }
        Advance::Ended
    }
}

/// What a target does after a step ended.
pub(super) enum Advance {
    /// Start this step next.
    NextStep(u32),
    /// The target reached its final state.
    Ended,
    /// Nothing (the target already ended).
    Wait,
}

/// The state of a job whose targets have all ended.
fn final_state(job: &JobInfo) -> JobState {
    let failed = job
        .targets
        .iter()
        .any(|t| matches!(t.state, TargetState::Failed | TargetState::Cancelled))
        || job
            .targets
            .iter()
            .any(|t| t.state == TargetState::Skipped && t.error.as_deref() == Some(FAIL_FAST));
    if job.cancel_requested {
        JobState::Cancelled
    } else if failed {
        JobState::Failed
    } else {
        JobState::Succeeded
    }
}

/// A few words on why a step failed: `step "build" exited 3`.
fn step_failure(name: &str, outcome: &StepOutcome) -> String {
    let how = match (outcome.state, outcome.exit_code, outcome.signal) {
        (RunState::Completed, Some(code), _) => format!("exited {code}"),
        (RunState::Completed, _, Some(signal)) => format!("was killed by signal {signal}"),
        (state, _, _) => match (&outcome.error_code, &outcome.error) {
            (Some(code), Some(error)) => format!("ended {state}: {code}: {error}"),
            (None, Some(error)) => format!("ended {state}: {error}"),
            _ => format!("ended {state}"),
        },
    };
    format!("step {name:?} {how}")
}

#[cfg(test)]
mod tests {
    use muster_proto::types::{CommandSpec, RunRequest};

    use super::*;

    fn job(states: &[TargetState]) -> ActiveJob {
        let names: Vec<String> = (0..states.len()).map(|i| format!("agent-{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut info = crate::store::contract::job(&names);
        for (target, &state) in info.targets.iter_mut().zip(states) {
            target.state = state;
        }
        info.spec.fail_fast = true;
        info.batch_limit = 10;
        ActiveJob::new(info, 0)
    }

    fn start(job: &mut ActiveJob, i: usize) {
        let agent = job.info.targets[i].agent.clone();
        let run = RunInfo::queued(
            RunRequest::new(agent, CommandSpec::Argv(vec!["true".into()])),
            1,
        );
        job.record_step(i, 0, &run, 1);
    }

    #[test]
    fn the_tally_and_the_pending_cursor_follow_every_move() {
        use TargetState::{Failed, Pending, Skipped, Succeeded};
        let mut job = job(&[Pending, Skipped, Pending, Pending]);
        assert_eq!(job.next_pending(2), (vec![0, 2], true));
        assert_eq!(job.next_pending(3), (vec![0, 2, 3], false));

        start(&mut job, 0);
        assert_eq!(job.in_progress(), 1);
        assert_eq!(job.next_pending(8), (vec![2, 3], false));
        assert_eq!(
            job.first_pending, 2,
            "the cursor skips what will never be pending again"
        );

        start(&mut job, 2);
        job.end_target(0, Succeeded, None, 2);
        assert_eq!(job.in_progress(), 1);
        assert!(job.may_start());
        job.end_target(2, Failed, Some("exit 1".into()), 3);
        assert!(
            !job.may_start(),
            "fail-fast: a failed target stops new starts"
        );
        assert!(!job.settle(3), "target 3 is still pending");

        let counted = JobProgress::count(job.info.targets.iter().map(|t| t.state));
        assert_eq!(job.tally, counted);
        assert_eq!(
            (counted.pending, counted.failed, counted.skipped),
            (1, 1, 1)
        );

        job.end_target(3, Skipped, None, 4);
        assert_eq!(job.next_pending(8), (vec![], false));
        assert!(job.settle(4));
        assert_eq!(job.info.state, JobState::Failed);
    }
}
