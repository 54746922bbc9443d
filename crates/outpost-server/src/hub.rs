//! The long-poll hub: wakes devices waiting on `GET /v1/device/desired-state` when something
//! that feeds their desired state changes, and caches what is cheap to reuse between polls
//! (each device's last ETag, the parsed assignment list).
//!
//! A waiter costs one map entry per device with waiters (a `Notify` shared by all of that
//! device's waiters, removed with the last one) plus its own future; fleet-wide changes
//! (assignments) bump one global generation that every waiter watches, instead of touching
//! every device's entry.
//!
//! All of this is per process: with several server replicas, a change made through one replica
//! wakes only that replica's waiters (the others answer at their long-poll timeout) and the
//! caches are only invalidated locally. A shared pub/sub channel (PostgreSQL LISTEN/NOTIFY)
//! would be needed to fan changes out between replicas.

use crate::desired::Fleetwide;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{watch, Notify};

struct Waiters {
    notify: Arc<Notify>,
    count: usize,
}

/// Per-device wake-ups, the global assignment generation and the caches they invalidate.
pub struct Hub {
    waiters: Mutex<HashMap<String, Waiters>>,
    generation: watch::Sender<u64>,
    /// Bumped on every invalidation, so a computation that raced with one does not cache its result.
    epoch: AtomicU64,
    etags: Mutex<HashMap<String, String>>,
    assignments: Mutex<Option<Arc<Fleetwide>>>,
}

/// A registered waiter for one device; unregisters on drop.
pub struct Subscription<'a> {
    hub: &'a Hub,
    device: String,
    /// Fires when this device's desired state may have changed.
    pub notify: Arc<Notify>,
    /// Changes when the assignments change.
    pub generation: watch::Receiver<u64>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these small maps leaves it consistent; keep serving.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Default for Hub {
    fn default() -> Hub {
        Hub::new()
    }
}

impl Hub {
    /// An empty hub.
    pub fn new() -> Hub {
        Hub {
            waiters: Mutex::new(HashMap::new()),
            generation: watch::channel(0).0,
            epoch: AtomicU64::new(0),
            etags: Mutex::new(HashMap::new()),
            assignments: Mutex::new(None),
        }
    }

    /// Registers a waiter for `device`.
    pub fn subscribe(&self, device: &str) -> Subscription<'_> {
        let notify = {
            let mut map = lock(&self.waiters);
            let entry =
                map.entry(device.to_string()).or_insert_with(|| Waiters { notify: Arc::new(Notify::new()), count: 0 });
            entry.count += 1;
            entry.notify.clone()
        };
        let mut generation = self.generation.subscribe();
        generation.borrow_and_update();
        Subscription { hub: self, device: device.to_string(), notify, generation }
    }

    /// Devices with at least one waiter.
    pub fn waiting_devices(&self) -> usize {
        lock(&self.waiters).len()
    }

    /// Something feeding `device`'s desired state changed: drop its cached ETag, wake its waiters.
    pub fn device_changed(&self, device: &str) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        lock(&self.etags).remove(device);
        if let Some(w) = lock(&self.waiters).get(device) {
            w.notify.notify_waiters();
        }
    }

    /// The assignments changed: drop the cached list and every ETag, wake every waiter.
    pub fn assignments_changed(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        *lock(&self.assignments) = None;
        lock(&self.etags).clear();
        self.generation.send_modify(|g| *g += 1);
    }

    /// Forgets every cached ETag without waking anyone (e.g. after commands expired in bulk).
    pub fn forget_etags(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        lock(&self.etags).clear();
    }

    /// The current invalidation epoch; pass it back to the `store_*` methods.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// The cached assignment list, if loaded.
    pub fn cached_assignments(&self) -> Option<Arc<Fleetwide>> {
        lock(&self.assignments).clone()
    }

    /// Caches a freshly loaded assignment list unless an invalidation happened since `epoch`.
    pub fn store_assignments(&self, epoch: u64, list: Arc<Fleetwide>) {
        let mut slot = lock(&self.assignments);
        if self.epoch() == epoch {
            *slot = Some(list);
        }
    }

    /// The device's last computed ETag, if still valid.
    pub fn cached_etag(&self, device: &str) -> Option<String> {
        lock(&self.etags).get(device).cloned()
    }

    /// Caches a computed ETag unless an invalidation happened since `epoch`.
    pub fn store_etag(&self, epoch: u64, device: &str, etag: &str) {
        let mut etags = lock(&self.etags);
        if self.epoch() == epoch {
            etags.insert(device.to_string(), etag.to_string());
        }
    }
}

impl Drop for Subscription<'_> {
    fn drop(&mut self) {
        let mut map = lock(&self.hub.waiters);
        if let Some(w) = map.get_mut(&self.device) {
            w.count -= 1;
            if w.count == 0 {
                map.remove(&self.device);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn device_change_wakes_only_that_devices_waiters() {
        let hub = Hub::new();
        let a = hub.subscribe("a");
        let b = hub.subscribe("b");
        let wait_a = a.notify.notified();
        let wait_b = b.notify.notified();
        tokio::pin!(wait_a, wait_b);
        wait_a.as_mut().enable();
        wait_b.as_mut().enable();
        hub.device_changed("a");
        tokio::time::timeout(Duration::from_secs(1), wait_a).await.expect("a is woken");
        assert!(tokio::time::timeout(Duration::from_millis(50), wait_b).await.is_err());
    }

    #[tokio::test]
    async fn entries_disappear_with_the_last_waiter() {
        let hub = Hub::new();
        let s1 = hub.subscribe("a");
        let s2 = hub.subscribe("a");
        assert_eq!(hub.waiting_devices(), 1);
        drop(s1);
        assert_eq!(hub.waiting_devices(), 1);
        drop(s2);
        assert_eq!(hub.waiting_devices(), 0);
    }

    #[tokio::test]
    async fn assignment_change_bumps_generation_and_clears_caches() {
        let hub = Hub::new();
        let mut s = hub.subscribe("a");
        hub.store_etag(hub.epoch(), "a", "e1");
        assert_eq!(hub.cached_etag("a").as_deref(), Some("e1"));
        hub.assignments_changed();
        tokio::time::timeout(Duration::from_secs(1), s.generation.changed()).await.unwrap().unwrap();
        assert_eq!(hub.cached_etag("a"), None);
    }

    #[test]
    fn a_result_computed_before_an_invalidation_is_not_cached() {
        let hub = Hub::new();
        let epoch = hub.epoch();
        hub.device_changed("a");
        hub.store_etag(epoch, "a", "stale");
        assert_eq!(hub.cached_etag("a"), None);
    }
}
