//! The channels that carry numbered streams, and how to read their history:
//! run output (`run:<id>`, binary frames), agent events (`agent:<name>`,
//! `agent.event` messages) and job events (`job:<id>`, `job.*` messages). Subscribing, replaying from `since`, dropping
//! duplicates and filling gaps work the same way for both; only where the
//! history is read from differs, and that difference lives here.

use muster_proto::messages::StoredEvent;
use muster_proto::{AgentName, Envelope, HubToClient, JobId, OutputFrame, OutputHeader, RunId};

use crate::broker::Frame;
use crate::core::{Core, agent_channel};
use crate::store::StoredChunk;

/// A channel with numbered, stored history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum StreamKey {
    /// `run:<id>`: output chunks.
    Run(RunId),
    /// `agent:<name>`: events programs on the agent published.
    Events(AgentName),
    /// `job:<id>`: a job's progress and step events.
    Job(JobId),
}

impl StreamKey {
    /// The stream a channel name carries, if it carries one.
    pub(crate) fn from_channel(channel: &str) -> Option<Self> {
        if let Some(id) = channel.strip_prefix("run:") {
            return id.parse().ok().map(Self::Run);
        }
        if let Some(id) = channel.strip_prefix("job:") {
            return id.parse().ok().map(Self::Job);
        }
        channel
            .strip_prefix("agent:")
            .and_then(|name| name.parse().ok())
            .map(Self::Events)
    }

    /// Stored entries with `seq >= since`, at most `limit`, in order, framed
    /// exactly as they were published.
    pub(crate) async fn read(
        &self,
        core: &Core,
        since: u64,
        limit: u32,
    ) -> anyhow::Result<Vec<(u64, Frame)>> {
        Ok(match self {
            Self::Run(run) => core
                .store
                .output_since(*run, since, limit)
                .await?
                .iter()
                .map(|chunk| (chunk.seq, output_frame(*run, chunk)))
                .collect(),
            Self::Events(agent) => core
                .store
                .events_since(agent, since, limit)
                .await?
                .into_iter()
                .map(|event| (event.seq, event_frame(event)))
                .collect(),
            // Stored as the envelope that was published: replayed as is.
            Self::Job(job) => core
                .store
                .job_events_since(*job, since, limit)
                .await?
                .into_iter()
                .map(|(seq, text)| (seq, Frame::text(text)))
                .collect(),
        })
    }
}

/// Re-frames a stored chunk exactly as the agent sent it.
fn output_frame(run: RunId, chunk: &StoredChunk) -> Frame {
    let header = OutputHeader {
        run,
        stream: chunk.stream,
        seq: chunk.seq,
        offset: chunk.offset,
    };
    Frame::Binary(OutputFrame::encode(&header, &chunk.data))
}

/// Frames a stored event as the hub published it.
fn event_frame(event: StoredEvent) -> Frame {
    let channel = agent_channel(&event.agent);
    Frame::text(Envelope::event(channel, HubToClient::AgentEvent(event)).encode())
}
