//! Rate limits, counted with `governor`: messages per client connection,
//! command requests (`run.create`, `job.create`) per API key, and failed
//! authentications per source address. Each limit is configurable and off
//! at 0; a request past one gets `RATE_LIMIT` with a retry hint and is not
//! acted on.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};

use crate::config::HubConfig;

/// Keyed state past this many entries is swept of idle keys.
const SWEEP_AT: usize = 4096;

/// The hub's limits.
#[derive(Debug)]
pub(crate) struct RateLimits {
    messages: Option<Quota>,
    commands: Option<DefaultKeyedRateLimiter<String>>,
    auth_failures: Option<DefaultKeyedRateLimiter<IpAddr>>,
    /// Sources past their failed-authentication limit, until when.
    blocked: Mutex<HashMap<IpAddr, Instant>>,
}

/// One client connection's message limit.
#[derive(Debug)]
pub(crate) struct ConnectionLimit(DefaultDirectRateLimiter);

impl ConnectionLimit {
    /// `Err(wait)` when the connection is past its rate.
    pub(crate) fn check(&self) -> Result<(), Duration> {
        self.0
            .check()
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

impl RateLimits {
    pub(crate) fn new(config: &HubConfig) -> Self {
        let per_minute = |n: u32| NonZeroU32::new(n).map(Quota::per_minute);
        Self {
            messages: NonZeroU32::new(config.rate_messages_per_sec).map(Quota::per_second),
            commands: per_minute(config.rate_commands_per_min).map(DefaultKeyedRateLimiter::keyed),
            auth_failures: per_minute(config.rate_auth_failures_per_min)
                .map(DefaultKeyedRateLimiter::keyed),
            blocked: Mutex::default(),
        }
    }

    /// A new connection's message limit, if messages are limited.
    pub(crate) fn connection(&self) -> Option<ConnectionLimit> {
        self.messages
            .map(|quota| ConnectionLimit(DefaultDirectRateLimiter::direct(quota)))
    }

    /// Counts a command request of API key `key`; `Err(wait)` past its rate.
    pub(crate) fn command(&self, key: &str) -> Result<(), Duration> {
        let Some(limiter) = &self.commands else {
            return Ok(());
        };
        limiter
            .check_key(&key.to_owned())
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// `Some(wait)` while `source` is past its failed-authentication limit.
    pub(crate) fn auth_blocked(&self, source: IpAddr) -> Option<Duration> {
        let mut blocked = self.blocked.lock().expect("rate limit lock poisoned");
        let until = *blocked.get(&source)?;
        let now = Instant::now();
        if until <= now {
            blocked.remove(&source);
            return None;
        }
        Some(until - now)
    }

    /// Counts a failed authentication from `source`.
    pub(crate) fn auth_failed(&self, source: IpAddr) {
        let Some(limiter) = &self.auth_failures else {
            return;
        };
        if limiter.len() > SWEEP_AT {
            limiter.retain_recent();
        }
        if let Err(not_until) = limiter.check_key(&source) {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let mut blocked = self.blocked.lock().expect("rate limit lock poisoned");
            if blocked.len() > SWEEP_AT {
                let now = Instant::now();
                blocked.retain(|_, until| *until > now);
            }
            blocked.insert(source, Instant::now() + wait);
            tracing::warn!(%source, "a source is past its limit of failed authentications");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(messages: u32, commands: u32, auth_failures: u32) -> RateLimits {
        RateLimits::new(&HubConfig {
            rate_messages_per_sec: messages,
            rate_commands_per_min: commands,
            rate_auth_failures_per_min: auth_failures,
            ..HubConfig::default()
        })
    }

    #[test]
    fn a_connection_gets_its_burst_then_a_wait() {
        let conn = limits(5, 0, 0).connection().unwrap();
        for _ in 0..5 {
            assert!(conn.check().is_ok());
        }
        let wait = conn.check().unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(200),
            "{wait:?}"
        );
        assert!(limits(0, 0, 0).connection().is_none(), "0 turns it off");
    }

    #[test]
    fn commands_are_counted_per_key() {
        let limits = limits(0, 2, 0);
        assert!(limits.command("ci").is_ok() && limits.command("ci").is_ok());
        let wait = limits.command("ci").unwrap_err();
        assert!(wait > Duration::from_secs(20), "one per 30 s: {wait:?}");
        assert!(
            limits.command("ops").is_ok(),
            "another key has its own count"
        );
    }

    #[test]
    fn a_source_past_its_failures_is_blocked_and_others_are_not() {
        let limits = limits(0, 0, 3);
        let bad: IpAddr = "192.0.2.7".parse().unwrap();
        for _ in 0..3 {
            limits.auth_failed(bad);
            assert!(limits.auth_blocked(bad).is_none());
        }
        limits.auth_failed(bad);
        assert!(
            limits
                .auth_blocked(bad)
                .is_some_and(|w| w > Duration::from_secs(10))
        );
        assert!(limits.auth_blocked("192.0.2.8".parse().unwrap()).is_none());
    }
}
