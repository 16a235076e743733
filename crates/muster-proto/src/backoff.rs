//! The reconnect schedule.
//!
//! After a connection fails or drops, agents and clients retry at once, then waits 1,
//! 2, 4, 8, 16 and finally 30 seconds between attempts, each delay spread by
//! ±20 % uniform jitter so a fleet that lost its hub at the same moment does not
//! reconnect in lockstep. A successful `connection.ack` resets the schedule.

use std::time::Duration;

use rand::Rng;

/// Delays, in seconds, before each attempt after a failure; the last one repeats.
const SCHEDULE_SECS: [u64; 7] = [0, 1, 2, 4, 8, 16, 30];

/// Relative spread of the jitter: a delay `d` becomes uniform in `d ± d * JITTER`.
const JITTER: f64 = 0.2;

/// Where a peer is in its reconnect schedule.
#[derive(Clone, Debug, Default)]
pub struct Backoff {
    /// Failures since the last reset, which index [`SCHEDULE_SECS`].
    attempt: usize,
}

impl Backoff {
    /// A schedule whose next delay is zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// The delay before the next attempt; each call advances the schedule.
    pub fn next_delay(&mut self) -> Duration {
        let base = SCHEDULE_SECS[self.attempt.min(SCHEDULE_SECS.len() - 1)];
        self.attempt = self.attempt.saturating_add(1);
        jittered(Duration::from_secs(base))
    }

    /// Starts the schedule over, after a successful handshake.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// `base` scaled by a uniform factor in `1 ± JITTER`.
fn jittered(base: Duration) -> Duration {
    if base.is_zero() {
        return base;
    }
    let factor = rand::rng().random_range(1.0 - JITTER..=1.0 + JITTER);
    base.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_near(delay: Duration, secs: u64) {
        let low = Duration::from_secs(secs).mul_f64(1.0 - JITTER);
        let high = Duration::from_secs(secs).mul_f64(1.0 + JITTER);
        assert!(
            low <= delay && delay <= high,
            "{delay:?} not within {low:?}..={high:?}"
        );
    }

    #[test]
    fn follows_the_schedule_within_jitter() {
        for _ in 0..100 {
            let mut backoff = Backoff::new();
            assert_eq!(backoff.next_delay(), Duration::ZERO);
            for secs in [1, 2, 4, 8, 16, 30, 30, 30, 30] {
                assert_near(backoff.next_delay(), secs);
            }
        }
    }

    #[test]
    fn jitter_actually_varies() {
        let delays: std::collections::HashSet<Duration> = (0..20)
            .map(|_| {
                let mut backoff = Backoff::new();
                backoff.next_delay();
                backoff.next_delay()
            })
            .collect();
        assert!(delays.len() > 1, "20 jittered delays were all equal");
    }

    #[test]
    fn reset_starts_over() {
        let mut backoff = Backoff::new();
        for _ in 0..10 {
            backoff.next_delay();
        }
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::ZERO);
        assert_near(backoff.next_delay(), 1);
    }
}
