//! Per-device rate limit on state reports: a token bucket per device, in process memory.
//!
//! Each report costs one token (a batch of queued reports costs its length, an empty batch one),
//! tokens refill at `device_reports_per_min` up to `device_report_burst`. The default burst
//! holds an agent's whole outbox, so the catch-up after an outage goes through at once, while a
//! device sending far more than its heartbeat interval asks for gets 429 with `Retry-After`.
//!
//! State is kept small for large fleets: buckets are keyed by a 64-bit keyed hash of the device
//! id (no string per device) and a bucket that has refilled to the burst is dropped, because a
//! missing bucket means a full one. With several replicas each enforces its own bucket, so a
//! device can get up to the limit once per replica.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One device's bucket: tokens left at `at_ms` (milliseconds since the limiter started).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Bucket {
    tokens: f64,
    at_ms: i64,
}

/// The refill rule, separate from the map so it is tested without clocks.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Rule {
    burst: f64,
    per_ms: f64,
}

impl Rule {
    /// Tokens in `b` at `now_ms`.
    fn level(&self, b: Bucket, now_ms: i64) -> f64 {
        let elapsed = now_ms.saturating_sub(b.at_ms).max(0) as f64;
        (b.tokens + elapsed * self.per_ms).min(self.burst)
    }

    /// Takes `cost` tokens from `b` (absent: full) at `now_ms`; on refusal, how long until
    /// they are there.
    fn take(&self, b: Option<Bucket>, cost: f64, now_ms: i64) -> Result<Bucket, Duration> {
        let level = b.map_or(self.burst, |b| self.level(b, now_ms));
        // A request larger than the burst could never pass; it costs a full bucket instead.
        let cost = cost.min(self.burst);
        if level >= cost {
            return Ok(Bucket { tokens: level - cost, at_ms: now_ms });
        }
        let wait_ms = ((cost - level) / self.per_ms).ceil();
        Err(Duration::from_millis(wait_ms.min(u64::MAX as f64) as u64))
    }
}

/// Per-device token buckets for the report endpoints.
pub struct DeviceRateLimit {
    rule: Option<Rule>,
    hasher: RandomState,
    started: Instant,
    buckets: Mutex<HashMap<u64, Bucket>>,
}

impl DeviceRateLimit {
    /// `per_min` reports a minute with bursts of `burst`; a zero rate or burst turns the limit off.
    pub fn new(burst: u32, per_min: u32) -> DeviceRateLimit {
        let rule =
            (burst > 0 && per_min > 0).then(|| Rule { burst: f64::from(burst), per_ms: f64::from(per_min) / 60_000.0 });
        DeviceRateLimit {
            rule,
            hasher: RandomState::new(),
            started: Instant::now(),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn now_ms(&self) -> i64 {
        i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX)
    }

    /// Takes `reports` tokens from `device`'s bucket; on refusal, how long to wait.
    pub fn take(&self, device: &str, reports: usize) -> Result<(), Duration> {
        let Some(rule) = self.rule else { return Ok(()) };
        let key = self.hasher.hash_one(device);
        let now = self.now_ms();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = rule.take(buckets.get(&key).copied(), reports.max(1) as f64, now)?;
        buckets.insert(key, bucket);
        Ok(())
    }

    /// Drops buckets that have refilled (the same as having none); run periodically.
    pub fn prune(&self) {
        let Some(rule) = self.rule else { return };
        let now = self.now_ms();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        buckets.retain(|_, b| rule.level(*b, now) < rule.burst);
    }

    /// Devices with a bucket (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULE: Rule = Rule { burst: 10.0, per_ms: 60.0 / 60_000.0 }; // 60 a minute

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let b = RULE.take(None, 10.0, 0).unwrap();
        assert_eq!(b.tokens, 0.0);
        // One token comes back per second.
        assert_eq!(RULE.take(Some(b), 1.0, 500).unwrap_err(), Duration::from_millis(500));
        let b = RULE.take(Some(b), 1.0, 1_000).unwrap();
        assert!(RULE.take(Some(b), 2.0, 1_500).is_err());
    }

    #[test]
    fn a_batch_larger_than_the_burst_costs_a_full_bucket() {
        let b = RULE.take(None, 500.0, 0).unwrap();
        assert_eq!(b.tokens, 0.0);
        assert_eq!(RULE.take(Some(b), 500.0, 0).unwrap_err(), Duration::from_secs(10));
    }

    #[test]
    fn refilled_buckets_are_forgotten() {
        let limit = DeviceRateLimit::new(10, 600_000);
        limit.take("d-1", 5).unwrap();
        assert_eq!(limit.tracked(), 1);
        std::thread::sleep(Duration::from_millis(20));
        limit.prune();
        assert_eq!(limit.tracked(), 0);
    }

    #[test]
    fn zero_turns_the_limit_off() {
        let limit = DeviceRateLimit::new(0, 60);
        for _ in 0..100 {
            limit.take("d", 1_000).unwrap();
        }
        assert_eq!(limit.tracked(), 0);
    }
}
