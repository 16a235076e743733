//! Latency figures from exact samples: every sample is kept and sorted, so the
//! percentiles are exact (nearest rank) rather than histogram approximations.

use std::time::Duration;

use serde::Serialize;

/// Percentiles of one set of latencies, in milliseconds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct LatencySummary {
    /// Number of samples.
    pub(crate) count: usize,
    /// Smallest sample.
    pub(crate) min_ms: f64,
    /// Arithmetic mean.
    pub(crate) mean_ms: f64,
    /// Median.
    pub(crate) p50_ms: f64,
    /// 90th percentile.
    pub(crate) p90_ms: f64,
    /// 99th percentile.
    pub(crate) p99_ms: f64,
    /// Largest sample.
    pub(crate) max_ms: f64,
}

impl LatencySummary {
    /// Summarizes `samples`; `None` when there are none.
    pub(crate) fn of(mut samples: Vec<Duration>) -> Option<Self> {
        let (&min, &max) = (samples.iter().min()?, samples.iter().max()?);
        samples.sort_unstable();
        let total: Duration = samples.iter().sum();
        Some(Self {
            count: samples.len(),
            min_ms: millis(min),
            mean_ms: millis(total / samples.len() as u32),
            p50_ms: millis(percentile(&samples, 50.0)),
            p90_ms: millis(percentile(&samples, 90.0)),
            p99_ms: millis(percentile(&samples, 99.0)),
            max_ms: millis(max),
        })
    }
}

/// The nearest-rank percentile `p` (0..=100) of non-empty, sorted `sorted`.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `duration` in milliseconds, to the microsecond.
pub(crate) fn millis(duration: Duration) -> f64 {
    duration.as_micros() as f64 / 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(values: impl IntoIterator<Item = u64>) -> Vec<Duration> {
        values.into_iter().map(Duration::from_millis).collect()
    }

    #[test]
    fn nearest_rank_percentiles() {
        let summary = LatencySummary::of(ms((1..=100).rev())).unwrap();
        assert_eq!(summary.count, 100);
        assert_eq!(
            (summary.p50_ms, summary.p90_ms, summary.p99_ms),
            (50.0, 90.0, 99.0)
        );
        assert_eq!(
            (summary.min_ms, summary.max_ms, summary.mean_ms),
            (1.0, 100.0, 50.5)
        );
    }

    #[test]
    fn single_sample_is_every_percentile() {
        let summary = LatencySummary::of(ms([7])).unwrap();
        assert_eq!(
            (summary.p50_ms, summary.p99_ms, summary.max_ms),
            (7.0, 7.0, 7.0)
        );
    }

    #[test]
    fn no_samples_no_summary() {
        assert_eq!(LatencySummary::of(Vec::new()), None);
    }
}
