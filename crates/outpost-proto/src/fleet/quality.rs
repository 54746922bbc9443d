//! What a device reports about how each model version behaves, per report interval: request
//! and error counts and a latency histogram per version served, and the shadow comparison of a
//! candidate version against the serving one. The server sums these over a rollout's bake
//! window and compares versions on the same devices, so everything here is additive: counts,
//! not rates or percentiles, which cannot be combined across devices.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Upper bounds of the latency buckets, milliseconds: 0.1 ms · 2^(i/4), 60 buckets up to about
/// 3.3 s, plus one overflow bucket. Quarter-octave steps (19 %) keep a p99 read from summed
/// buckets within a few percent, finer than the 1.2x a latency gate typically allows.
pub const LATENCY_BUCKETS: usize = 60;

/// The upper bound of latency bucket `i` (the last, overflow bucket has none).
pub fn latency_bound_ms(i: usize) -> f64 {
    0.1 * 2f64.powf(i as f64 / 4.0)
}

/// The bucket a latency falls in.
pub fn latency_bucket(ms: f64) -> usize {
    // NaN and everything up to the first bound land in the first bucket.
    if ms.is_nan() || ms <= 0.1 {
        return 0;
    }
    // Inverse of `latency_bound_ms`, then corrected for floating-point at the edges. Clamped
    // first: for an infinite latency the inverse saturates to usize::MAX, every bound up there is
    // infinite too, and the correction below would step down from it for ever.
    let mut i = ((ms / 0.1).log2() * 4.0).ceil().clamp(0.0, LATENCY_BUCKETS as f64) as usize;
    while i > 0 && ms <= latency_bound_ms(i - 1) {
        i -= 1;
    }
    while i < LATENCY_BUCKETS && ms > latency_bound_ms(i) {
        i += 1;
    }
    i.min(LATENCY_BUCKETS)
}

/// Request latencies counted into [`LATENCY_BUCKETS`] + 1 buckets. On the wire it is the
/// counts, trailing zero buckets left out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(transparent)]
pub struct LatencyHistogram(pub Vec<u64>);

impl LatencyHistogram {
    /// Counts one latency.
    pub fn record(&mut self, ms: f64) {
        let i = latency_bucket(ms);
        if self.0.len() <= i {
            self.0.resize(i + 1, 0);
        }
        self.0[i] += 1;
    }

    /// Adds another histogram's counts (buckets past the overflow bucket count as overflow).
    pub fn merge(&mut self, other: &LatencyHistogram) {
        for (i, &n) in other.0.iter().enumerate() {
            let i = i.min(LATENCY_BUCKETS);
            if self.0.len() <= i {
                self.0.resize(i + 1, 0);
            }
            self.0[i] = self.0[i].saturating_add(n);
        }
    }

    /// Latencies counted.
    pub fn count(&self) -> u64 {
        self.0.iter().fold(0u64, |a, &n| a.saturating_add(n))
    }

    /// The `q` quantile (0..1), interpolated geometrically inside its bucket; `None` when empty.
    /// A quantile in the overflow bucket reads as that bucket's lower bound.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * total as f64).max(1.0);
        let mut seen = 0u64;
        for (i, &n) in self.0.iter().enumerate() {
            if n == 0 {
                continue;
            }
            if (seen + n) as f64 >= rank {
                if i >= LATENCY_BUCKETS {
                    return Some(latency_bound_ms(LATENCY_BUCKETS - 1));
                }
                let hi = latency_bound_ms(i);
                let lo = if i == 0 { hi / 2f64.powf(0.25) } else { latency_bound_ms(i - 1) };
                let within = ((rank - seen as f64) / n as f64).clamp(0.0, 1.0);
                return Some(lo * (hi / lo).powf(within));
            }
            seen += n;
        }
        Some(latency_bound_ms(LATENCY_BUCKETS - 1))
    }
}

/// One model version's requests since the previous report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct VersionWindow {
    /// The version that answered these requests.
    pub version: String,
    /// Requests answered.
    pub requests: u64,
    /// Requests answered with an error.
    pub errors: u64,
    /// Their latencies.
    pub latency: LatencyHistogram,
    /// Drift windows of this version that closed since the previous report.
    #[serde(skip_serializing_if = "is_zero")]
    pub drift_windows: u64,
    /// Those among them at the alert level.
    #[serde(skip_serializing_if = "is_zero")]
    pub drift_alerts: u64,
    /// Sum of their drift scores.
    #[serde(skip_serializing_if = "is_zero_f")]
    pub drift_score: f64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_zero_f(n: &f64) -> bool {
    *n == 0.0
}

/// A candidate version run in shadow beside the serving one, since the previous report: it sees
/// a sample of live requests, its answers are compared and never returned.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct ShadowReport {
    /// The candidate version.
    pub version: String,
    /// `loading`, `ready` or `failed`.
    pub state: String,
    /// Why it failed, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Requests compared.
    pub samples: u64,
    /// Sum over compared requests of their agreement in 0..1: 1 when the top class (classifiers)
    /// or the decision (anomaly, audio events) is the same; for detectors the share of boxes
    /// matched at IoU ≥ 0.5 with the same class; for regression 1 within the tolerance.
    pub agreement: f64,
    /// Sum over compared requests of the absolute difference of the primary score (top-class
    /// confidence, anomaly score, first regression output).
    pub score_diff: f64,
    /// Requests that were due a comparison but skipped to keep serving latency unaffected (the
    /// rate limit or a busy shadow session).
    pub skipped: u64,
    /// Compared requests the candidate failed on.
    pub errors: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_latency_and_their_bounds_are_inclusive() {
        assert_eq!(latency_bucket(0.0), 0);
        assert_eq!(latency_bucket(-1.0), 0);
        assert_eq!(latency_bucket(f64::NAN), 0);
        assert_eq!(latency_bucket(0.1), 0);
        assert_eq!(latency_bucket(f64::INFINITY), LATENCY_BUCKETS);
        for i in 0..LATENCY_BUCKETS {
            let b = latency_bound_ms(i);
            assert_eq!(latency_bucket(b), i, "bound {b}");
            assert_eq!(latency_bucket(b * 1.0001), i + 1);
        }
    }

    #[test]
    fn quantiles_of_summed_histograms_stay_within_a_bucket_of_the_exact_value() {
        // Two devices, latencies 1..=1000 ms spread over both: the merged p99 is near 990.
        let (mut a, mut b) = (LatencyHistogram::default(), LatencyHistogram::default());
        for ms in 1..=1000 {
            if ms % 2 == 0 {
                a.record(ms as f64)
            } else {
                b.record(ms as f64)
            }
        }
        a.merge(&b);
        assert_eq!(a.count(), 1000);
        let p99 = a.quantile(0.99).unwrap();
        assert!((p99 / 990.0 - 1.0).abs() < 0.1, "p99 {p99}");
        let p50 = a.quantile(0.5).unwrap();
        assert!((p50 / 500.0 - 1.0).abs() < 0.1, "p50 {p50}");
        assert_eq!(LatencyHistogram::default().quantile(0.99), None);
        let mut slow = LatencyHistogram::default();
        slow.record(1e9);
        assert_eq!(slow.quantile(0.5), Some(latency_bound_ms(LATENCY_BUCKETS - 1)));
    }

    #[test]
    fn merge_folds_buckets_past_overflow_into_it() {
        let mut h = LatencyHistogram::default();
        h.merge(&LatencyHistogram(vec![0; LATENCY_BUCKETS + 5].into_iter().chain([3]).collect()));
        assert_eq!(h.0.len(), LATENCY_BUCKETS + 1);
        assert_eq!(h.0[LATENCY_BUCKETS], 3);
    }
}
