//! Agent events: what programs on a host publish (`muster emit`), numbered
//! per agent, stored, then published on `agent:<name>` with their offset so a
//! subscriber can replay from any point exactly like run output.

use std::sync::Arc;

use muster_proto::messages::{AgentEvent, StoredEvent};
use muster_proto::{AgentName, Envelope, ErrorCode, HubToClient};

use super::{ApiError, Core};
use crate::broker::{Delivery, Frame};

/// The channel of an agent's status and events.
pub fn agent_channel(agent: &AgentName) -> String {
    format!("agent:{agent}")
}

impl Core {
    /// Validates, numbers, stores and publishes an event from `agent`.
    pub async fn agent_event(&self, agent: &AgentName, event: AgentEvent) -> Result<u64, ApiError> {
        event
            .validate()
            .map_err(|e| ApiError::new(ErrorCode::InvalidMessage, e))?;
        let seq = self.next_event_seq(agent).await?;
        let stored = StoredEvent {
            agent: agent.clone(),
            seq,
            event,
        };
        self.store.append_event(&stored).await?;
        let channel = agent_channel(agent);
        let frame = Frame::text(
            Envelope::event(&channel, HubToClient::AgentEvent(stored.clone())).encode(),
        );
        self.broker.publish(Delivery {
            channel: Arc::from(channel.as_str()),
            seq: Some(seq),
            frame,
            last: false,
        });
        self.job_step_event(agent, &stored.event).await;
        Ok(seq)
    }

    /// The offset `agent`'s next event will get, without taking it.
    pub async fn peek_event_seq(&self, agent: &AgentName) -> anyhow::Result<u64> {
        let known = self
            .event_seqs
            .lock()
            .expect("event seq lock poisoned")
            .get(agent)
            .copied();
        match known {
            Some(next) => Ok(next),
            None => self.store.next_event_seq(agent).await,
        }
    }

    /// Takes the next event seq of an agent, loading the counter from the store once.
    async fn next_event_seq(&self, agent: &AgentName) -> anyhow::Result<u64> {
        let known = self
            .event_seqs
            .lock()
            .expect("event seq lock poisoned")
            .get(agent)
            .copied();
        let next = match known {
            Some(next) => next,
            None => self.store.next_event_seq(agent).await?,
        };
        self.event_seqs
            .lock()
            .expect("event seq lock poisoned")
            .insert(agent.clone(), next + 1);
        Ok(next)
    }
}
