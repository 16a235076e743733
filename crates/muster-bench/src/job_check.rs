//! What the job scenario checks: the live events of the job (numbered without
//! gaps, one result per agent) and the job as the hub stored it (exactly the
//! fleet, every target succeeded with one step that exited 0).

use std::collections::{BTreeSet, HashSet};

use anyhow::bail;
use muster_proto::jobs::{JobState, JobTarget, TargetState};
use muster_proto::messages::JobProgressEvent;
use muster_proto::{AgentName, Envelope, HubToClient, JobId, RunState};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Problems listed before the rest are summarized.
const MAX_PROBLEMS: usize = 10;

/// The final `job.progress` and when it was read.
pub(crate) struct Last {
    /// The event.
    pub(crate) event: JobProgressEvent,
    /// When it was read.
    pub(crate) at: Instant,
}

/// What the live events of one job showed.
pub(crate) struct Watch {
    job: JobId,
    channel: String,
    next_seq: u64,
    /// `job.step.completed` events read.
    pub(crate) results: u64,
    /// `job.step.failed` events read.
    pub(crate) failed: u64,
    /// Agents named by `job.step.started`.
    pub(crate) started: HashSet<AgentName>,
    /// When the first `job.step.completed` was read.
    pub(crate) first_result: Option<Instant>,
    /// What did not check out.
    pub(crate) problems: Vec<String>,
}

impl Watch {
    /// A watch of `job`'s channel.
    pub(crate) fn new(job: JobId) -> Self {
        Self {
            job,
            channel: job.channel().to_string(),
            next_seq: 0,
            results: 0,
            failed: 0,
            started: HashSet::new(),
            first_result: None,
            problems: Vec::new(),
        }
    }

    /// Reads events until the job's final `job.progress`; `progress` hears
    /// the number of results so far.
    pub(crate) async fn follow(
        &mut self,
        events: &mut mpsc::Receiver<Envelope<HubToClient>>,
        mut progress: impl FnMut(u64),
    ) -> anyhow::Result<Last> {
        loop {
            let Some(envelope) = events.recv().await else {
                bail!("the job connection closed before the job ended");
            };
            if envelope.channel.as_deref() != Some(self.channel.as_str()) {
                continue;
            }
            let at = Instant::now();
            let seq = match &envelope.msg {
                HubToClient::JobStepStarted(e) => {
                    self.started.insert(e.agent.clone());
                    e.seq
                }
                HubToClient::JobStepCompleted(e) => {
                    self.results += 1;
                    self.first_result.get_or_insert(at);
                    progress(self.results);
                    e.seq
                }
                HubToClient::JobStepFailed(e) => {
                    self.failed += 1;
                    self.problems.push(format!(
                        "the step failed on {}: run {} ended {}, exit code {:?}{}",
                        e.agent,
                        e.outcome.run,
                        e.outcome.state,
                        e.outcome.exit_code,
                        e.outcome
                            .error
                            .as_deref()
                            .map(|error| format!(": {error}"))
                            .unwrap_or_default()
                    ));
                    e.seq
                }
                HubToClient::JobStepProgress(e) => e.seq,
                HubToClient::JobTarget(e) => e.seq,
                HubToClient::JobProgress(e) => e.seq,
                other => {
                    tracing::debug!(job = %self.job, "unexpected message on the job channel: {other:?}");
                    continue;
                }
            };
            if seq != self.next_seq {
                self.problems.push(format!(
                    "job event seq {seq} where {} was expected",
                    self.next_seq
                ));
            }
            self.next_seq = seq + 1;
            if let HubToClient::JobProgress(event) = envelope.msg
                && event.state.is_terminal()
            {
                return Ok(Last { event, at });
            }
        }
    }
}

/// The accepted job must target exactly the fleet; otherwise it would wait
/// for agents nobody runs.
pub(crate) fn check_targets(
    job: JobId,
    targets: &[JobTarget],
    names: &[AgentName],
) -> anyhow::Result<()> {
    let listed: BTreeSet<&AgentName> = targets.iter().map(|t| &t.agent).collect();
    let ours: BTreeSet<&AgentName> = names.iter().collect();
    if listed == ours && targets.len() == ours.len() {
        return Ok(());
    }
    let extra: Vec<_> = listed.difference(&ours).take(5).collect();
    let missing: Vec<_> = ours.difference(&listed).take(5).collect();
    bail!(
        "job {job} targets {} agents where {} were expected (extra: {extra:?}, missing: \
         {missing:?})",
        targets.len(),
        ours.len()
    )
}

/// The final progress and the stored job: succeeded, exactly `names`, each
/// with one step that exited 0.
pub(crate) fn check_job(
    problems: &mut Vec<String>,
    last: &JobProgressEvent,
    stored: JobState,
    targets: &[JobTarget],
    names: &[AgentName],
) {
    let expected = names.len();
    let p = &last.progress;
    if last.state != JobState::Succeeded {
        problems.push(format!(
            "the job ended {}: {} succeeded, {} failed, {} skipped, {} cancelled",
            last.state, p.succeeded, p.failed, p.skipped, p.cancelled
        ));
    }
    if p.total as usize != expected || p.succeeded as usize != expected {
        problems.push(format!(
            "the final progress counts {} targets, {} succeeded; expected {expected}",
            p.total, p.succeeded
        ));
    }
    if stored != JobState::Succeeded {
        problems.push(format!("the stored job is {stored}, not succeeded"));
    }
    if targets.len() != expected {
        problems.push(format!(
            "the stored job has {} targets, expected {expected}",
            targets.len()
        ));
    }
    let listed: BTreeSet<&AgentName> = targets.iter().map(|t| &t.agent).collect();
    let ours: BTreeSet<&AgentName> = names.iter().collect();
    if listed != ours {
        problems.push(format!(
            "the stored targets are not the sim agents: {} missing, {} extra",
            ours.difference(&listed).count(),
            listed.difference(&ours).count()
        ));
    }
    for target in targets {
        let step_ok = match target.steps.as_slice() {
            [step] => step.state == RunState::Completed && step.exit_code == Some(0),
            _ => false,
        };
        if target.state != TargetState::Succeeded || !step_ok {
            let steps: Vec<String> = target
                .steps
                .iter()
                .map(|s| format!("{} exit {:?}", s.state, s.exit_code))
                .collect();
            problems.push(format!(
                "target {} is {} with steps [{}]{}",
                target.agent,
                target.state,
                steps.join(", "),
                target
                    .error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ));
        }
    }
}

/// The live events: one result per agent, and a started step on every agent.
pub(crate) fn check_events(problems: &mut Vec<String>, watch: &Watch, names: &[AgentName]) {
    let expected = names.len();
    if watch.results != expected as u64 {
        problems.push(format!(
            "{} job.step.completed events, expected {expected}",
            watch.results
        ));
    }
    let missing = names.iter().filter(|n| !watch.started.contains(*n)).count();
    if watch.started.len() != expected || missing > 0 {
        problems.push(format!(
            "job.step.started named {} agents, {missing} of the {expected} sim agents missing",
            watch.started.len()
        ));
    }
}

/// Keeps the first [`MAX_PROBLEMS`] problems and counts the rest.
pub(crate) fn summarize(problems: &mut Vec<String>) {
    if problems.len() > MAX_PROBLEMS {
        let more = problems.len() - MAX_PROBLEMS;
        problems.truncate(MAX_PROBLEMS);
        problems.push(format!("and {more} more problems"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<AgentName> {
        (0..n)
            .map(|i| AgentName::new(format!("a-{i}")).unwrap())
            .collect()
    }

    fn target(agent: &AgentName, state: TargetState) -> JobTarget {
        serde_json::from_value(serde_json::json!({
            "agent": agent.as_str(),
            "state": state,
            "steps": [{"step": 0, "run": muster_proto::RunId::generate(), "state": "completed", "exit_code": 0}],
        }))
        .unwrap()
    }

    #[test]
    fn targets_must_be_exactly_the_fleet() {
        let fleet = names(3);
        let job = JobId::generate();
        let all: Vec<_> = fleet
            .iter()
            .map(|n| target(n, TargetState::Pending))
            .collect();
        check_targets(job, &all, &fleet).unwrap();
        let err = check_targets(job, &all[..2], &fleet)
            .unwrap_err()
            .to_string();
        assert!(err.contains("targets 2 agents where 3"), "{err}");
    }

    #[test]
    fn problems_are_capped() {
        let mut problems: Vec<String> = (0..15).map(|i| format!("p{i}")).collect();
        summarize(&mut problems);
        assert_eq!(problems.len(), MAX_PROBLEMS + 1);
        assert_eq!(problems.last().unwrap(), "and 5 more problems");
    }

    #[test]
    fn a_failed_target_is_a_problem() {
        let fleet = names(2);
        let mut targets: Vec<_> = fleet
            .iter()
            .map(|n| target(n, TargetState::Succeeded))
            .collect();
        let mut last: JobProgressEvent = serde_json::from_value(serde_json::json!({
            "job": JobId::generate(), "seq": 9, "ts_ms": 1, "state": "succeeded",
            "total": 2, "pending": 0, "queued": 0, "running": 0, "succeeded": 2,
            "failed": 0, "skipped": 0, "cancelled": 0
        }))
        .unwrap();
        let mut problems = Vec::new();
        check_job(&mut problems, &last, JobState::Succeeded, &targets, &fleet);
        assert!(problems.is_empty(), "{problems:?}");
        targets[1].state = TargetState::Failed;
        last.state = JobState::Failed;
        check_job(&mut problems, &last, JobState::Failed, &targets, &fleet);
        assert_eq!(problems.len(), 3, "{problems:?}");
    }
}
