//! Replay protection for signed device requests, in two layers.
//!
//! 1. [`ReplayCache`], in process memory: a replay against this process is refused without a
//!    database round trip. It is bounded: when full of live nonces, new requests get 503 rather
//!    than weakening replay protection.
//! 2. [`NonceStore`], the `device_nonces` table: the memory of a single process is lost on a
//!    restart and is not shared with other replicas, so every verified request's
//!    (signing time, nonce) is also recorded in the database, where a primary-key conflict means
//!    a replay. The insert and the conflict check are one statement, and like the report writer
//!    (`crate::reports`) one task writes whatever queued up as one batch, so a busy fleet costs
//!    one round trip per batch, not per request. Rows are pruned once their signing time falls
//!    out of the skew window, after which the timestamp check refuses the request anyway.
//!
//! Replicas sharing a database must use the same `clock_skew_s` (each prunes with its own);
//! pruning keeps [`NONCE_PRUNE_MARGIN_MS`] more so that replicas whose clocks differ by less
//! than that do not drop a nonce another one would still accept.

use crate::db::{Db, DbError, NonceRow};
use crate::error::ApiError;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Most live nonces remembered in memory (about 2 M requests inside one skew window).
pub const REPLAY_CACHE_CAPACITY: usize = 2_000_000;
/// Extra time a nonce is kept in the database beyond the skew window.
pub const NONCE_PRUNE_MARGIN_MS: i64 = 60_000;
/// Most nonces recorded in one database statement.
pub const NONCE_BATCH_MAX: usize = 2_000;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The cache key of a (device, nonce) pair: a truncated hash, so memory per nonce is fixed.
pub fn replay_key(device: &str, nonce: &str) -> [u8; 16] {
    let digest =
        Sha256::new().chain_update(device).chain_update([0u8]).chain_update(nonce.to_ascii_lowercase()).finalize();
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest[..16]);
    key
}

/// The answer to a replayed request.
pub fn replayed() -> ApiError {
    ApiError::ReplayedRequest("this nonce was already used; sign every request with a fresh random nonce".into())
}

/// Nonces seen inside the skew window by this process, keyed by [`replay_key`].
pub struct ReplayCache {
    seen: Mutex<HashMap<[u8; 16], i64>>,
    capacity: usize,
}

impl ReplayCache {
    /// An empty cache holding at most `capacity` live nonces.
    pub fn new(capacity: usize) -> ReplayCache {
        ReplayCache { seen: Mutex::new(HashMap::new()), capacity }
    }

    /// Whether `key` was recorded and is still live at `now`.
    pub fn seen(&self, key: &[u8; 16], now: i64) -> bool {
        lock(&self.seen).get(key).is_some_and(|&exp| exp > now)
    }

    /// Records a nonce until `expires_ms`; fails when it was recorded meanwhile or the cache is full.
    pub fn record(&self, key: [u8; 16], expires_ms: i64, now: i64) -> Result<(), ApiError> {
        let mut seen = lock(&self.seen);
        if seen.get(&key).is_some_and(|&exp| exp > now) {
            return Err(replayed());
        }
        if seen.len() >= self.capacity {
            seen.retain(|_, exp| *exp > now);
            if seen.len() >= self.capacity {
                return Err(ApiError::Overloaded("too many requests inside the replay window; retry later".into()));
            }
        }
        seen.insert(key, expires_ms);
        Ok(())
    }

    /// Drops nonces that expired by `now`.
    pub fn prune(&self, now: i64) {
        lock(&self.seen).retain(|_, exp| *exp > now);
    }
}

/// One request's nonce and where to send the verdict.
struct NonceJob {
    row: NonceRow,
    done: oneshot::Sender<Result<(), ApiError>>,
}

/// The handlers' side of the nonce writer: cheap to clone.
#[derive(Clone)]
pub struct NonceStore {
    tx: mpsc::Sender<NonceJob>,
}

impl NonceStore {
    /// Records the nonce of a verified request in the database; fails with `replayed_request`
    /// when any server on this database recorded it before, 503 when the database cannot say.
    pub async fn record(&self, signed_ms: i64, key: &[u8; 16]) -> Result<(), ApiError> {
        let (done, verdict) = oneshot::channel();
        let row = NonceRow { signed_ms, nonce_key: hex::encode(key) };
        self.tx.try_send(NonceJob { row, done }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                ApiError::Overloaded("the nonce queue is full; retry after the Retry-After delay".into())
            }
            mpsc::error::TrySendError::Closed(_) => {
                ApiError::Overloaded("the server is shutting down; retry against another replica or later".into())
            }
        })?;
        verdict.await.unwrap_or_else(|_| Err(ApiError::Internal("the nonce writer stopped before answering".into())))
    }
}

/// Starts the nonce writer; it ends when every [`NonceStore`] clone is dropped.
pub fn spawn_nonce_writer(db: Db) -> (NonceStore, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(NONCE_BATCH_MAX * 8);
    (NonceStore { tx }, tokio::spawn(run_writer(db, rx)))
}

/// Which jobs of a batch are replays: duplicates inside the batch after the first, and rows
/// the database did not take as new. Pure, so the rule is tested without a database.
fn verdicts(rows: &[&NonceRow], fresh: &HashSet<NonceRow>) -> Vec<bool> {
    let mut first = HashSet::with_capacity(rows.len());
    rows.iter().map(|row| first.insert(*row) && fresh.contains(*row)).collect()
}

async fn run_writer(db: Db, mut rx: mpsc::Receiver<NonceJob>) {
    let mut jobs: Vec<NonceJob> = Vec::new();
    while let Some(first) = rx.recv().await {
        jobs.push(first);
        while jobs.len() < NONCE_BATCH_MAX {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let rows: Vec<&NonceRow> = jobs.iter().map(|j| &j.row).collect();
        let mut distinct: Vec<&NonceRow> = rows.clone();
        distinct.sort_unstable_by(|a, b| (a.signed_ms, &a.nonce_key).cmp(&(b.signed_ms, &b.nonce_key)));
        distinct.dedup();
        let owned: Vec<NonceRow> = distinct.into_iter().cloned().collect();
        match db.record_nonces(&owned).await {
            Ok(fresh) => {
                let fresh_flags = verdicts(&rows, &fresh);
                for (job, is_fresh) in jobs.drain(..).zip(fresh_flags) {
                    let _ = job.done.send(if is_fresh { Ok(()) } else { Err(replayed()) });
                }
            }
            Err(e) => {
                let error = match e {
                    DbError::Unavailable(m) => ApiError::from(DbError::Unavailable(m)),
                    e => {
                        tracing::error!(error = %e, nonces = jobs.len(), "recording a nonce batch failed");
                        ApiError::Internal(format!("recording nonces failed: {e}"))
                    }
                };
                for job in jobs.drain(..) {
                    let _ = job.done.send(Err(error.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nonce_is_accepted_once_per_device() {
        let cache = ReplayCache::new(10);
        let k = replay_key("d-1", "00112233445566778899");
        assert!(cache.record(k, 2_000, 1_000).is_ok());
        assert!(cache.seen(&k, 1_500));
        assert_eq!(cache.record(k, 2_000, 1_500).unwrap_err().code(), "replayed_request");
        assert!(cache.record(replay_key("d-2", "00112233445566778899"), 2_000, 1_500).is_ok());
        // After its window the entry no longer counts.
        assert!(!cache.seen(&k, 2_001));
    }

    #[test]
    fn a_full_replay_cache_refuses_instead_of_forgetting() {
        let cache = ReplayCache::new(1);
        assert!(cache.record(replay_key("d", "a"), 5_000, 0).is_ok());
        assert_eq!(cache.record(replay_key("d", "b"), 5_000, 0).unwrap_err().code(), "overloaded");
        assert!(cache.record(replay_key("d", "b"), 9_000, 6_000).is_ok());
    }

    #[test]
    fn a_nonce_twice_in_one_batch_is_one_replay() {
        let a = NonceRow { signed_ms: 1, nonce_key: "aa".into() };
        let b = NonceRow { signed_ms: 1, nonce_key: "bb".into() };
        let old = NonceRow { signed_ms: 1, nonce_key: "cc".into() };
        // The database took a and b as new; cc was there before.
        let fresh: HashSet<NonceRow> = [a.clone(), b.clone()].into_iter().collect();
        assert_eq!(verdicts(&[&a, &b, &a, &old], &fresh), vec![true, true, false, false]);
    }
}
