//! A log-linear latency histogram for figures with too many samples to keep.
//!
//! The fan-out scenario takes hundreds of thousands of latency samples per
//! second across a thousand connections; each connection records into its own
//! [`Histogram`] (no sharing on the hot path), and the scenario merges them.
//! Values are microseconds. Below [`LINEAR_LIMIT`] every microsecond has its
//! own bucket; above it each power of two is split into [`SUB_BUCKETS`] equal
//! buckets, so a percentile is exact to within 1/64 (about 1.6 %). Minimum,
//! maximum and mean are kept exactly.

use crate::stats::LatencySummary;

/// Buckets per power of two, as a power of two itself.
const SUB_BITS: u32 = 6;

/// Buckets per power of two above the linear range.
const SUB_BUCKETS: u64 = 1 << SUB_BITS;

/// Values below this many microseconds are counted exactly.
const LINEAR_LIMIT: u64 = SUB_BUCKETS * 2;

/// Largest value counted in its own bucket: 2^36 µs, about 19 hours; larger
/// values land in the last bucket (and still count for `max`).
const MAX_EXPONENT: u32 = 36;

/// Number of buckets: the linear range, then one group per power of two.
const BUCKETS: usize = (LINEAR_LIMIT + (MAX_EXPONENT - SUB_BITS) as u64 * SUB_BUCKETS) as usize;

/// Counts of latencies, in microseconds.
#[derive(Clone, Debug, Default)]
pub(crate) struct Histogram {
    /// Allocated at the first sample, so an unused histogram costs nothing.
    counts: Vec<u64>,
    count: u64,
    sum_us: u128,
    min_us: u64,
    max_us: u64,
}

impl Histogram {
    /// Records one latency of `us` microseconds.
    pub(crate) fn record(&mut self, us: u64) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS];
            self.min_us = us;
        }
        self.counts[bucket_of(us)] += 1;
        self.count += 1;
        self.sum_us += u128::from(us);
        self.min_us = self.min_us.min(us);
        self.max_us = self.max_us.max(us);
    }

    /// Adds every sample of `other`.
    pub(crate) fn merge(&mut self, other: &Histogram) {
        if other.count == 0 {
            return;
        }
        if self.counts.is_empty() {
            *self = other.clone();
            return;
        }
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.count += other.count;
        self.sum_us += other.sum_us;
        self.min_us = self.min_us.min(other.min_us);
        self.max_us = self.max_us.max(other.max_us);
    }

    /// The nearest-rank percentile `p` (0..=100): the upper edge of the bucket
    /// holding that rank, never above the largest sample. `None` when empty.
    pub(crate) fn percentile_us(&self, p: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((p / 100.0 * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (bucket, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(upper_edge(bucket).min(self.max_us));
            }
        }
        Some(self.max_us)
    }

    /// The usual summary, in milliseconds; `None` when empty.
    pub(crate) fn summary(&self) -> Option<LatencySummary> {
        let ms = |us: u64| us as f64 / 1e3;
        Some(LatencySummary {
            count: usize::try_from(self.count).unwrap_or(usize::MAX),
            min_ms: ms(self.min_us),
            mean_ms: (self.sum_us as f64 / self.count.max(1) as f64) / 1e3,
            p50_ms: ms(self.percentile_us(50.0)?),
            p90_ms: ms(self.percentile_us(90.0)?),
            p99_ms: ms(self.percentile_us(99.0)?),
            max_ms: ms(self.max_us),
        })
    }
}

/// The bucket of a value.
fn bucket_of(us: u64) -> usize {
    if us < LINEAR_LIMIT {
        return us as usize;
    }
    let exponent = (63 - us.leading_zeros()).min(MAX_EXPONENT);
    if exponent == MAX_EXPONENT {
        return BUCKETS - 1;
    }
    // Within [2^e, 2^(e+1)), buckets are 2^(e - SUB_BITS) wide.
    let group = u64::from(exponent - SUB_BITS - 1);
    let offset = (us >> (exponent - SUB_BITS)) - SUB_BUCKETS;
    (LINEAR_LIMIT + group * SUB_BUCKETS + offset) as usize
}

/// The largest value that falls in `bucket`.
fn upper_edge(bucket: usize) -> u64 {
    let bucket = bucket as u64;
    if bucket < LINEAR_LIMIT {
        return bucket;
    }
    let group = (bucket - LINEAR_LIMIT) / SUB_BUCKETS;
    let offset = (bucket - LINEAR_LIMIT) % SUB_BUCKETS;
    let exponent = group as u32 + SUB_BITS + 1;
    let width = 1u64 << (exponent - SUB_BITS);
    (1u64 << exponent) + (offset + 1) * width - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_ordered() {
        let mut previous = 0;
        for us in (1..1_000_000u64).step_by(7).chain([1 << 35, (1 << 36) - 1]) {
            let bucket = bucket_of(us);
            assert!(bucket >= previous, "{us}");
            assert!(bucket < BUCKETS);
            assert!(upper_edge(bucket) >= us, "{us} above its bucket's edge");
            if bucket > 0 {
                assert!(upper_edge(bucket - 1) < us, "{us} belongs lower");
            }
            previous = bucket;
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn small_values_are_exact() {
        let mut h = Histogram::default();
        for us in 1..=100 {
            h.record(us);
        }
        assert_eq!(h.percentile_us(50.0), Some(50));
        assert_eq!(h.percentile_us(99.0), Some(99));
        let s = h.summary().unwrap();
        assert_eq!((s.count, s.min_ms, s.max_ms), (100, 0.001, 0.1));
        assert!((s.mean_ms - 0.0505).abs() < 1e-9);
    }

    #[test]
    fn large_values_are_within_the_precision() {
        let mut h = Histogram::default();
        for ms in 1..=1000u64 {
            h.record(ms * 1000);
        }
        for (p, exact) in [(50.0, 500_000.0), (90.0, 900_000.0), (99.0, 990_000.0)] {
            let got = h.percentile_us(p).unwrap() as f64;
            assert!(
                got >= exact && got <= exact * (1.0 + 1.0 / 64.0),
                "p{p}: {got}"
            );
        }
        assert_eq!(h.percentile_us(100.0), Some(1_000_000));
    }

    #[test]
    fn merging_equals_recording_everything_in_one() {
        let (mut a, mut b, mut all) = (
            Histogram::default(),
            Histogram::default(),
            Histogram::default(),
        );
        for us in [5, 300, 7_000, 42] {
            a.record(us);
            all.record(us);
        }
        for us in [90_000, 1, 64_000] {
            b.record(us);
            all.record(us);
        }
        let mut merged = Histogram::default();
        merged.merge(&a);
        merged.merge(&Histogram::default());
        merged.merge(&b);
        assert_eq!(merged.count, 7);
        assert_eq!(merged.summary(), all.summary());
        assert_eq!(merged.summary().unwrap().min_ms, 0.001);
    }

    #[test]
    fn empty_has_no_summary() {
        assert_eq!(Histogram::default().summary(), None);
        assert_eq!(Histogram::default().percentile_us(50.0), None);
    }
}
