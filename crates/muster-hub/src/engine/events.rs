//! What agents publish besides runs: events from programs on the host,
//! numbered per agent and stored before they are published on
//! `agent:<name>`; and host metrics, stored and streamed on
//! `metrics:<name>`, rolled up as they age.

use muster_proto::messages::{AgentEvent, AgentSample, ErrorData, MetricsSample, StoredEvent};
use muster_proto::{Channel, Envelope, ErrorCode, HubToAgent, HubToClient, UnixMillis};

use super::Engine;
use super::reports::AgentLink;
use crate::broker::{Delivery, Frame};
use crate::metrics;
use crate::store::{Change, MetricsRetention};

impl Engine {
    /// An event from a program on `link`'s agent: validated, numbered,
    /// stored, then published; a job's step gets it too.
    pub(super) fn agent_event(&mut self, link: &AgentLink, event: AgentEvent, now: UnixMillis) {
        if let Err(e) = event.validate() {
            let error = ErrorData::new(ErrorCode::InvalidMessage, e);
            return self.batch.send_agent(&link.tx, HubToAgent::Error(error));
        }
        let seq = self.event_seqs.entry(link.name.clone()).or_insert(0);
        let stored = StoredEvent {
            agent: link.name.clone(),
            seq: *seq,
            event,
        };
        // Only 2^64 events of one agent would wrap it; stop at the end instead.
        *seq = seq.saturating_add(1);
        let channel = Channel::Agent(link.name.clone());
        let text =
            Envelope::event(channel.clone(), HubToClient::AgentEvent(stored.clone())).encode();
        self.batch.effect(super::Effect::Raw(Delivery {
            channel: channel.into(),
            seq: Some(stored.seq),
            frame: Frame::text(text),
            last: false,
            key: None,
        }));
        self.job_step_event(&link.name, &stored.event, now);
        self.batch.change(Change::AppendEvent(Box::new(stored)));
    }

    /// The seq `name`'s next event will get.
    pub(super) fn next_event_seq(&self, name: &muster_proto::AgentName) -> u64 {
        self.event_seqs.get(name).copied().unwrap_or(0)
    }

    /// A metrics sample from `link`'s agent: stored, then streamed.
    pub(super) fn agent_metrics(&mut self, link: &AgentLink, sample: MetricsSample) {
        if let Err(e) = metrics::validate(&sample) {
            let error = ErrorData::new(ErrorCode::InvalidMessage, e);
            return self.batch.send_agent(&link.tx, HubToAgent::Error(error));
        }
        self.batch.change(Change::InsertMetrics(
            link.name.clone(),
            Box::new(sample.clone()),
        ));
        let msg = HubToClient::MetricsSample(AgentSample {
            agent: link.name.clone(),
            sample,
        });
        self.batch.event(Channel::Metrics(link.name.clone()), msg);
    }

    /// Rolls up and deletes old samples, at most once per compaction interval.
    pub(super) fn compact_metrics_if_due(&mut self, now: UnixMillis) {
        let due = self
            .metrics_compacted_ms
            .saturating_add(self.config.metrics_compact_interval_ms);
        if now < due {
            return;
        }
        self.metrics_compacted_ms = now;
        let retention = MetricsRetention {
            raw_keep_ms: self.config.metrics_raw_retention_ms,
            window_ms: self.config.metrics_rollup_window_ms,
            rollup_keep_ms: self.config.metrics_rollup_retention_ms,
        };
        self.batch.change(Change::CompactMetrics(retention, now));
    }
}
