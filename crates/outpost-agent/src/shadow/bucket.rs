//! The shadow's CPU allowance: a token bucket counted in seconds of one core.
//!
//! It refills at `share` seconds per second and holds at most `share` seconds, so over any
//! stretch of time the shadow runs for at most about `share` of one core plus one run. A run is
//! admitted while the bucket is above zero and charged its measured time afterwards (its cost
//! is not known before), which may leave the bucket below zero for a while after a slow one.

use std::time::{Duration, Instant};

/// Seconds of one core the shadow may still spend.
#[derive(Debug, Clone)]
pub struct CpuBucket {
    share: f64,
    level: f64,
    last: Instant,
}

impl CpuBucket {
    /// A full bucket allowing `share` (0..1) of one core.
    pub fn new(share: f64, now: Instant) -> CpuBucket {
        let share = if share.is_finite() { share.clamp(0.0, 1.0) } else { 0.0 };
        CpuBucket { share, level: share, last: now }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.level = (self.level + elapsed * self.share).min(self.share);
        self.last = now;
    }

    /// Whether a run may start now.
    pub fn admit(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.level > 0.0
    }

    /// Charges a finished run's time.
    pub fn charge(&mut self, cost: Duration, now: Instant) {
        self.refill(now);
        self.level -= cost.as_secs_f64();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_admitted_at_most_at_the_share_of_one_core() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut bucket = CpuBucket::new(0.25, t0);
        // 100 ms runs back to back: the first three fit the quarter second the bucket holds.
        let mut ran = Duration::ZERO;
        let mut now = 0;
        while now < 10_000 {
            if bucket.admit(at(now)) {
                now += 100;
                bucket.charge(Duration::from_millis(100), at(now));
                ran += Duration::from_millis(100);
            } else {
                now += 10;
            }
        }
        // 10 s at a quarter of a core: 2.5 s, plus the initial quarter second and one run.
        let ran = ran.as_secs_f64();
        assert!((2.5..=2.9).contains(&ran), "ran {ran} s in 10 s");
    }

    #[test]
    fn a_zero_share_never_admits_and_a_slow_run_is_paid_back_first() {
        let t0 = Instant::now();
        assert!(!CpuBucket::new(0.0, t0).admit(t0));
        assert!(!CpuBucket::new(f64::NAN, t0).admit(t0));
        let mut bucket = CpuBucket::new(0.5, t0);
        assert!(bucket.admit(t0));
        bucket.charge(Duration::from_secs(2), t0 + Duration::from_secs(2));
        // 2 s charged against 0.5 s: 3 s of refill at half a core before the next run.
        assert!(!bucket.admit(t0 + Duration::from_millis(4_900)));
        assert!(bucket.admit(t0 + Duration::from_millis(5_100)));
    }
}
