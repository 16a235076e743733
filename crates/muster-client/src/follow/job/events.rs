//! The events of a job's channel, `job:<id>`, as one typed enum.

use muster_proto::HubToClient;
use muster_proto::messages::{
    JobProgressEvent, StepEndedEvent, StepProgressEvent, StepStartedEvent, TargetEvent,
};

/// One event on `job:<id>` (protocol section 9.6); each carries its `seq`.
#[derive(Clone, Debug, PartialEq)]
pub enum JobEvent {
    /// `job.progress`: the job's state or its target counts changed. One with
    /// a final state is the job's last event.
    Progress(JobProgressEvent),
    /// `job.step.started`: a target started a step; the step's run exists.
    StepStarted(StepStartedEvent),
    /// `job.step.progress`: a step's process published an event.
    StepProgress(StepProgressEvent),
    /// `job.step.completed`: a step's run ended `completed` with exit code 0.
    StepCompleted(StepEndedEvent),
    /// `job.step.failed`: a step's run ended any other way.
    StepFailed(StepEndedEvent),
    /// `job.target`: a target reached its final state.
    Target(TargetEvent),
}

impl JobEvent {
    /// The event's offset on `job:<id>`.
    pub fn seq(&self) -> u64 {
        match self {
            Self::Progress(e) => e.seq,
            Self::StepStarted(e) => e.seq,
            Self::StepProgress(e) => e.seq,
            Self::StepCompleted(e) | Self::StepFailed(e) => e.seq,
            Self::Target(e) => e.seq,
        }
    }

    /// The job event a hub message carries, if it is one.
    pub(crate) fn from_message(msg: HubToClient) -> Option<Self> {
        Some(match msg {
            HubToClient::JobProgress(e) => Self::Progress(e),
            HubToClient::JobStepStarted(e) => Self::StepStarted(e),
            HubToClient::JobStepProgress(e) => Self::StepProgress(e),
            HubToClient::JobStepCompleted(e) => Self::StepCompleted(e),
            HubToClient::JobStepFailed(e) => Self::StepFailed(e),
            HubToClient::JobTarget(e) => Self::Target(e),
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_events_carry_their_seq() {
        let json = serde_json::json!({
            "type": "job.target",
            "data": {"job": "01JD3X0000000000000000000A", "seq": 7, "ts_ms": 1,
                     "agent": "web-1", "state": "failed"},
        });
        let msg: HubToClient = serde_json::from_value(json).unwrap();
        let event = JobEvent::from_message(msg).unwrap();
        assert!(matches!(event, JobEvent::Target(_)));
        assert_eq!(event.seq(), 7);
        assert_eq!(
            JobEvent::from_message(HubToClient::Ok(Default::default())),
            None
        );
    }
}
