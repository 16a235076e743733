//! Hub configuration: defaults, the TOML file format, and validation.
//!
//! The binary layers it: defaults, then the file (`--config`), then `MUSTER_…`
//! environment variables and flags. [`HubConfig::validate`] runs before any
//! port is bound.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use muster_proto::limits;
use serde::Deserialize;

/// Smallest accepted `client_queue_frames`: two full output batches.
pub const MIN_CLIENT_QUEUE_FRAMES: usize = 256;

/// Everything the hub can be told.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HubConfig {
    /// Address to listen on.
    pub listen: String,
    /// Directory holding `muster.db`.
    pub data_dir: PathBuf,
    /// Interval between heartbeats the hub sends.
    pub heartbeat_interval_ms: u64,
    /// Silence after which a connection is closed.
    pub heartbeat_deadline_ms: u64,
    /// Time a new connection has to send `hello`.
    pub handshake_timeout_ms: u64,
    /// Largest accepted WebSocket message.
    pub max_message_bytes: usize,
    /// Output stored per run before it is marked truncated.
    pub max_output_bytes_per_run: u64,
    /// Waiting runs per agent before `QUEUE_FULL`.
    pub max_queue_per_agent: usize,
    /// Time between SIGTERM and SIGKILL when a run is cancelled or times out.
    pub kill_grace_ms: u64,
    /// Frames queued for one client before it is dropped as a slow consumer.
    pub client_queue_frames: usize,
    /// Most simultaneous connections, agents and clients together.
    pub max_connections: usize,
    /// Raw metric samples are kept this long.
    pub metrics_raw_retention_ms: u64,
    /// Older samples are averaged over windows of this length.
    pub metrics_rollup_window_ms: u64,
    /// Averages are kept this long.
    pub metrics_rollup_retention_ms: u64,
    /// How often old samples are rolled up and deleted.
    pub metrics_compact_interval_ms: u64,
    /// This hub's identity in `AgentInfo.hub_id`; a random one when absent.
    pub hub_id: Option<String>,
    /// How long runs in flight wait for their departed agent to come back
    /// and report them before they end `lost`.
    pub lost_grace_ms: u64,
    /// Time to live of a run that asks for none: how long it may wait to be
    /// delivered (its agent offline or busy) before it ends `expired`.
    pub default_run_ttl_ms: u64,
    /// Browser origins (`https://ops.example.com`) allowed to open a
    /// WebSocket besides the hub's own; a request without `Origin` (not a
    /// browser) is always allowed.
    pub allowed_origins: Vec<String>,
    /// Connections not authenticated yet, at most; at the cap, a newcomer
    /// ends the oldest of the source holding the most.
    pub max_unauthenticated: usize,
    /// Connections not authenticated yet from one source address, at most;
    /// at the cap, a newcomer ends that source's oldest.
    pub max_unauthenticated_per_source: usize,
    /// PEM certificate chain to serve TLS with; set with `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Messages a client connection may send per second (burst as many); 0: no limit.
    pub rate_messages_per_sec: u32,
    /// `run.create` and `job.create` requests per API key per minute (burst
    /// as many); 0: no limit.
    pub rate_commands_per_min: u32,
    /// Failed authentications per source address per minute; past it the
    /// source's handshakes are refused until it is back under. 0: no limit.
    pub rate_auth_failures_per_min: u32,
    /// Channels one client connection may subscribe to at once (its own
    /// `fleet` counts); past it `subscribe` gets `INVALID_STATE`.
    pub max_subscriptions_per_connection: usize,
    /// How long a browser token works after it is issued (never past its
    /// API key's expiry).
    pub browser_token_ttl_ms: u64,
    /// Sessions open at once on one agent, at most; past it `run.create`
    /// of a session gets `SESSION_LIMIT`.
    pub max_sessions_per_agent: usize,
    /// A session with neither input nor output for this long ends
    /// `timed_out` (`SESSION_IDLE`); also the most a session may ask for.
    pub session_idle_timeout_ms: u64,
    /// A session ends `timed_out` (`SESSION_LIFETIME`) this long after it
    /// started; also the most a session may ask for as its `timeout_ms`.
    pub session_max_lifetime_ms: u64,
    /// Output a session keeps: past it the oldest chunks are dropped (down
    /// to half of it), and the session goes on.
    pub session_scrollback_bytes: u64,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7070".into(),
            data_dir: PathBuf::from("muster-data"),
            heartbeat_interval_ms: limits::HEARTBEAT_INTERVAL_MS,
            heartbeat_deadline_ms: limits::HEARTBEAT_DEADLINE_MS,
            handshake_timeout_ms: limits::HANDSHAKE_TIMEOUT_MS,
            max_message_bytes: limits::MAX_MESSAGE_BYTES,
            max_output_bytes_per_run: 64 * 1024 * 1024,
            max_queue_per_agent: 1000,
            kill_grace_ms: 5_000,
            // About 10 MiB of output frames; enough to ride out a replay.
            client_queue_frames: 1024,
            max_connections: 19_000,
            metrics_raw_retention_ms: 24 * 3_600_000,
            metrics_rollup_window_ms: 300_000,
            metrics_rollup_retention_ms: 30 * 24 * 3_600_000,
            metrics_compact_interval_ms: 60_000,
            hub_id: None,
            lost_grace_ms: 30_000,
            default_run_ttl_ms: 3_600_000,
            allowed_origins: Vec::new(),
            max_unauthenticated: 2048,
            max_unauthenticated_per_source: 512,
            tls_cert: None,
            tls_key: None,
            rate_messages_per_sec: 100,
            rate_commands_per_min: 10,
            rate_auth_failures_per_min: 30,
            max_subscriptions_per_connection: 4096,
            browser_token_ttl_ms: 15 * 60_000,
            max_sessions_per_agent: 32,
            session_idle_timeout_ms: 3_600_000,
            session_max_lifetime_ms: 24 * 3_600_000,
            session_scrollback_bytes: 64 * 1024 * 1024,
        }
    }
}

impl HubConfig {
    /// Reads a TOML file; unknown keys are errors.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
    }

    /// Checks that the values make sense together.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.heartbeat_interval_ms == 0 {
            bail!("heartbeat_interval_ms must be positive");
        }
        if self.heartbeat_deadline_ms <= self.heartbeat_interval_ms {
            bail!("heartbeat_deadline_ms must exceed heartbeat_interval_ms");
        }
        if self.max_message_bytes
            < limits::MAX_OUTPUT_CHUNK_BYTES + limits::MAX_OUTPUT_HEADER_BYTES + 4
        {
            bail!("max_message_bytes must hold an output frame (at least 11268)");
        }
        if self.client_queue_frames < MIN_CLIENT_QUEUE_FRAMES {
            // Output is published in batches; a queue smaller than a few batches
            // would drop readers that keep up.
            bail!("client_queue_frames must be at least {MIN_CLIENT_QUEUE_FRAMES}");
        }
        if self.metrics_rollup_window_ms == 0 {
            bail!("metrics_rollup_window_ms must be positive");
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            bail!("tls_cert and tls_key go together: give both or neither");
        }
        if self.max_subscriptions_per_connection == 0 {
            bail!("max_subscriptions_per_connection must be at least 1");
        }
        if self.browser_token_ttl_ms == 0 {
            bail!("browser_token_ttl_ms must be positive");
        }
        if self.session_idle_timeout_ms == 0 || self.session_max_lifetime_ms == 0 {
            bail!("session_idle_timeout_ms and session_max_lifetime_ms must be positive");
        }
        if self.session_scrollback_bytes < 2 * limits::MAX_OUTPUT_CHUNK_BYTES as u64 {
            bail!("session_scrollback_bytes must hold two output chunks (at least 20480)");
        }
        if self.handshake_timeout_ms == 0 {
            bail!("handshake_timeout_ms must be positive");
        }
        if self.max_unauthenticated == 0 || self.max_unauthenticated_per_source == 0 {
            bail!("max_unauthenticated and max_unauthenticated_per_source must be at least 1");
        }
        if self.max_queue_per_agent == 0 || self.max_connections == 0 {
            bail!("queue sizes and max_connections must be positive");
        }
        Ok(())
    }

    /// Heartbeat interval as a duration.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }

    /// Heartbeat deadline as a duration.
    pub fn heartbeat_deadline(&self) -> Duration {
        Duration::from_millis(self.heartbeat_deadline_ms)
    }

    /// Handshake timeout as a duration.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }

    /// The limits announced in `connection.ack`.
    pub fn limits(&self) -> limits::Limits {
        limits::Limits {
            max_message_bytes: self.max_message_bytes,
            max_output_chunk_bytes: limits::MAX_OUTPUT_CHUNK_BYTES,
            output_batch_ms: limits::OUTPUT_BATCH_MS,
            max_output_bytes_per_run: self.max_output_bytes_per_run,
            max_queue_per_agent: self.max_queue_per_agent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_values_override_defaults_and_unknown_keys_fail() {
        let config: HubConfig =
            toml::from_str("heartbeat_interval_ms = 500\nheartbeat_deadline_ms = 1500").unwrap();
        assert_eq!(config.heartbeat_interval_ms, 500);
        assert_eq!(config.kill_grace_ms, 5_000);
        config.validate().unwrap();
        assert!(toml::from_str::<HubConfig>("heartbeat = 1").is_err());
    }

    #[test]
    fn deadline_must_exceed_interval() {
        let config = HubConfig {
            heartbeat_deadline_ms: 10,
            heartbeat_interval_ms: 10,
            ..HubConfig::default()
        };
        assert!(config.validate().is_err());
    }
}
