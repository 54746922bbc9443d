//! The bandwidth budget a sink keeps: per priority, at most so many bytes in any hour.
//!
//! Sent bytes are counted in one-minute buckets over the last 60 minutes, so "per hour" holds
//! for every hour-long window to within a minute, and a sink that was idle cannot burst past
//! the hour's budget. What does not fit waits in the outbox; when the outbox fills, its cap
//! drops the lowest priority first, counted there.

use outpost_outbox::Priority;
use std::collections::VecDeque;

const BUCKET_MS: i64 = 60_000;
const WINDOW_MS: i64 = 3_600_000;

/// One priority's ledger.
#[derive(Debug, Default, Clone)]
struct Ledger {
    limit: u64,
    /// (bucket start, bytes) of the last hour, oldest first.
    buckets: VecDeque<(i64, u64)>,
}

impl Ledger {
    fn prune(&mut self, now_ms: i64) {
        while self.buckets.front().is_some_and(|(start, _)| *start + WINDOW_MS <= now_ms) {
            self.buckets.pop_front();
        }
    }

    fn used(&self) -> u64 {
        self.buckets.iter().map(|(_, b)| b).sum()
    }
}

/// Bytes per hour per priority.
#[derive(Debug, Clone)]
pub struct Budget {
    ledgers: [Ledger; 3],
}

impl Budget {
    /// A budget of `limits` bytes per hour per priority (low, normal, high: [`Priority::index`]
    /// order); 0 is no limit.
    pub fn new(limits: [u64; 3]) -> Budget {
        Budget { ledgers: limits.map(|limit| Ledger { limit, buckets: VecDeque::new() }) }
    }

    /// Whether `bytes` more of `priority` fit now.
    pub fn fits(&mut self, priority: Priority, bytes: u64, now_ms: i64) -> bool {
        let ledger = &mut self.ledgers[priority.index()];
        if ledger.limit == 0 {
            return true;
        }
        ledger.prune(now_ms);
        ledger.used().saturating_add(bytes) <= ledger.limit
    }

    /// Whether a message of `bytes` can ever be sent at `priority` (it is within an hour's
    /// budget).
    pub fn ever_fits(&self, priority: Priority, bytes: u64) -> bool {
        let limit = self.ledgers[priority.index()].limit;
        limit == 0 || bytes <= limit
    }

    /// Counts `bytes` of `priority` as sent now.
    pub fn spend(&mut self, priority: Priority, bytes: u64, now_ms: i64) {
        let ledger = &mut self.ledgers[priority.index()];
        let start = now_ms - now_ms.rem_euclid(BUCKET_MS);
        match ledger.buckets.back_mut() {
            Some((s, b)) if *s == start => *b += bytes,
            _ => ledger.buckets.push_back((start, bytes)),
        }
    }

    /// When `bytes` of `priority` fit (now or later), in ms from `now_ms`; `None` if never.
    pub fn wait_ms(&mut self, priority: Priority, bytes: u64, now_ms: i64) -> Option<i64> {
        if !self.ever_fits(priority, bytes) {
            return None;
        }
        if self.fits(priority, bytes, now_ms) {
            return Some(0);
        }
        let ledger = &self.ledgers[priority.index()];
        let mut used = ledger.used();
        for (start, b) in &ledger.buckets {
            used -= b;
            if used.saturating_add(bytes) <= ledger.limit {
                return Some(start + WINDOW_MS - now_ms);
            }
        }
        Some(0)
    }

    /// Bytes of `priority` sent in the last hour.
    pub fn used(&mut self, priority: Priority, now_ms: i64) -> u64 {
        let ledger = &mut self.ledgers[priority.index()];
        ledger.prune(now_ms);
        ledger.used()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000;

    #[test]
    fn an_hour_holds_at_most_the_budget_and_bytes_free_up_as_minutes_age_out() {
        let mut b = Budget::new([1000, 0, 0]);
        let p = Priority::Low;
        let t0 = 10 * H;
        assert!(b.fits(p, 600, t0));
        b.spend(p, 600, t0);
        assert!(!b.fits(p, 600, t0 + 1000), "1,200 bytes within one hour");
        assert!(b.fits(p, 400, t0 + 1000));
        b.spend(p, 400, t0 + 30 * 60_000);
        assert_eq!(b.used(p, t0 + 59 * 60_000), 1000);
        assert_eq!(b.wait_ms(p, 500, t0 + 59 * 60_000), Some(H - 59 * 60_000));
        // The first minute's 600 bytes leave the window an hour later.
        assert!(b.fits(p, 500, t0 + H));
        assert_eq!(b.used(p, t0 + H), 400);
        assert!(b.fits(Priority::High, u64::MAX / 2, t0), "0 is no limit");
    }

    #[test]
    fn a_message_larger_than_an_hour_of_budget_never_fits() {
        let mut b = Budget::new([0, 0, 100]);
        assert!(!b.ever_fits(Priority::High, 101));
        assert_eq!(b.wait_ms(Priority::High, 101, 0), None);
        assert_eq!(b.wait_ms(Priority::High, 100, 0), Some(0));
    }
}
