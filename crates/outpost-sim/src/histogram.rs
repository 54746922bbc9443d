//! A lock-free latency histogram shared by thousands of device tasks.
//!
//! Fixed logarithmic buckets (16 per power of two, so any percentile is within about 4.4 % of
//! the true value) over 1 µs .. ~2 h, each an atomic counter: recording is one `fetch_add`, with
//! no lock for ten thousand tasks to contend on and no dependency for one small job.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Buckets per doubling.
const SUB_BUCKETS: u32 = 16;
/// Doublings covered above 1 µs (2^33 µs ≈ 2.4 h).
const OCTAVES: u32 = 33;
const BUCKETS: usize = (SUB_BUCKETS * OCTAVES) as usize + 1;

/// Concurrent latency histogram.
#[derive(Debug)]
pub struct LatencyHistogram {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    max_us: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

fn bucket_of(us: u64) -> usize {
    if us <= 1 {
        return 0;
    }
    let index = ((us as f64).log2() * f64::from(SUB_BUCKETS)).floor() as usize + 1;
    index.min(BUCKETS - 1)
}

/// The upper edge of a bucket, microseconds.
fn bucket_upper_us(index: usize) -> f64 {
    if index == 0 {
        return 1.0;
    }
    2f64.powf(index as f64 / f64::from(SUB_BUCKETS))
}

impl LatencyHistogram {
    /// An empty histogram.
    pub fn new() -> LatencyHistogram {
        LatencyHistogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            max_us: AtomicU64::new(0),
        }
    }

    /// Records one latency.
    pub fn record(&self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(us)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
    }

    /// Latencies recorded.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Largest latency recorded, milliseconds.
    pub fn max_ms(&self) -> f64 {
        self.max_us.load(Ordering::Relaxed) as f64 / 1000.0
    }

    /// The `q` quantile (0..=1), milliseconds: the upper edge of the bucket holding it, capped
    /// at the maximum seen. 0 when empty.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        let total = self.count();
        if total == 0 {
            return 0.0;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (index, bucket) in self.buckets.iter().enumerate() {
            seen += bucket.load(Ordering::Relaxed);
            if seen >= rank {
                return (bucket_upper_us(index) / 1000.0).min(self.max_ms());
            }
        }
        self.max_ms()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_bucket_resolution() {
        let h = LatencyHistogram::new();
        for ms in 1..=1000u64 {
            h.record(Duration::from_millis(ms));
        }
        assert_eq!(h.count(), 1000);
        let p50 = h.quantile_ms(0.5);
        let p99 = h.quantile_ms(0.99);
        assert!((p50 - 500.0).abs() / 500.0 < 0.05, "p50 {p50}");
        assert!((p99 - 990.0).abs() / 990.0 < 0.05, "p99 {p99}");
        assert_eq!(h.max_ms(), 1000.0);
        assert!(h.quantile_ms(1.0) <= 1000.0);
    }

    #[test]
    fn empty_and_extreme_values_are_handled() {
        let h = LatencyHistogram::new();
        assert_eq!(h.quantile_ms(0.5), 0.0);
        h.record(Duration::ZERO);
        h.record(Duration::from_secs(1_000_000));
        assert_eq!(h.count(), 2);
        assert!(h.quantile_ms(0.0) <= 0.001);
        assert!(h.max_ms() > 1e8);
    }
}
