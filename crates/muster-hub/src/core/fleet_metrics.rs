//! Host metrics: accept samples from agents, store and stream them, answer
//! queries, and keep the store bounded by rolling old samples up.

use std::sync::atomic::Ordering;

use muster_proto::messages::{AgentSample, MetricsSample, MetricsSeries};
use muster_proto::{AgentName, ErrorCode, HubToClient, UnixMillis};

use super::{ApiError, Core, agents::agent_not_found, now_ms};
use crate::metrics;
use crate::store::MetricsRetention;

/// The channel that streams an agent's samples.
pub fn metrics_channel(agent: &AgentName) -> String {
    format!("metrics:{agent}")
}

impl Core {
    /// Stores a sample from `agent` and publishes it on `metrics:<agent>`.
    pub async fn agent_metrics(
        &self,
        agent: &AgentName,
        sample: MetricsSample,
    ) -> Result<(), ApiError> {
        metrics::validate(&sample).map_err(|e| ApiError::new(ErrorCode::InvalidMessage, e))?;
        self.store.insert_metrics(agent, &sample).await?;
        let event = HubToClient::MetricsSample(AgentSample {
            agent: agent.clone(),
            sample,
        });
        self.publish_event(&metrics_channel(agent), event);
        Ok(())
    }

    /// The stored series of an agent since `since_ms`.
    pub async fn metrics_series(
        &self,
        agent: &AgentName,
        since_ms: UnixMillis,
    ) -> Result<MetricsSeries, ApiError> {
        if self.store.agent(agent).await?.is_none() {
            return Err(agent_not_found(agent));
        }
        let samples = self.store.metrics_since(agent, since_ms).await?;
        Ok(MetricsSeries {
            agent: agent.clone(),
            samples,
        })
    }

    /// Rolls up and deletes old samples, at most once per compaction interval.
    pub(super) async fn compact_metrics_if_due(&self) {
        let now = now_ms();
        let last = self.metrics_compacted_ms.load(Ordering::Relaxed);
        if now < last + self.config.metrics_compact_interval_ms {
            return;
        }
        self.metrics_compacted_ms.store(now, Ordering::Relaxed);
        let retention = MetricsRetention {
            raw_keep_ms: self.config.metrics_raw_retention_ms,
            window_ms: self.config.metrics_rollup_window_ms,
            rollup_keep_ms: self.config.metrics_rollup_retention_ms,
        };
        if let Err(e) = self.store.compact_metrics(&retention, now).await {
            tracing::error!(error = %format!("{e:#}"), "compacting metrics failed");
        }
    }
}
