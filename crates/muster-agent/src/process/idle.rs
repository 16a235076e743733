//! A session's idle timeout: when it last had input or output, and a timer
//! that fires once it had neither for its limit.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::{Instant, sleep_until};

/// When the session last had input or output.
#[derive(Debug)]
pub(super) struct Activity {
    /// A std `Mutex`: held only to read or replace an instant, never across an `.await`.
    last: Mutex<Instant>,
}

impl Activity {
    pub(super) fn new() -> Self {
        Self {
            last: Mutex::new(Instant::now()),
        }
    }

    pub(super) fn touch(&self) {
        *self.last.lock().expect("activity lock poisoned") = Instant::now();
    }

    fn last(&self) -> Instant {
        *self.last.lock().expect("activity lock poisoned")
    }
}

/// Resolves with `limit` once no activity came for that long; never without one.
pub(super) async fn idle_for(activity: &Activity, limit: Option<Duration>) -> Duration {
    let Some(limit) = limit else {
        return std::future::pending().await;
    };
    loop {
        let due = activity.last() + limit;
        if Instant::now() >= due {
            return limit;
        }
        sleep_until(due).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn activity_puts_the_idle_timeout_off() {
        let activity = Activity::new();
        let limit = Duration::from_millis(300);
        let begin = Instant::now();
        let idle = idle_for(&activity, Some(limit));
        tokio::pin!(idle);
        tokio::select! {
            _ = &mut idle => panic!("idle too early"),
            () = tokio::time::sleep(Duration::from_millis(200)) => activity.touch(),
        }
        assert_eq!(idle.await, limit);
        assert_eq!(begin.elapsed(), Duration::from_millis(500));
    }
}
