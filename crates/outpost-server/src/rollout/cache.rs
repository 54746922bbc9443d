//! What the engine keeps in memory for each rollout it holds, so that a tick costs what changed
//! rather than the fleet's size: the rollout's view of the fleet, brought up to date from the
//! devices stamped as changed since the last tick (see `crate::db::fleet`), and its members,
//! read again only when someone else changed the rollout (its `updated_ms` moved).
//!
//! Heartbeats are not read one by one: a device is online unless it is among the quiet ones
//! (one light statement), and the exact time of its last report is read only for members still
//! waiting for their first report after a change (the engine ignores older reports).

use super::engine::{DeviceView, Member, Step};
use super::sums::SumMemo;
use crate::db::rollouts::{Reader, StoredRollout};
use crate::db::{Db, DbError, Thresholds};
use crate::metrics::Metrics;
use outpost_proto::fleet::rollout::DeviceRolloutState;
use std::collections::{HashMap, HashSet};
use std::time::Instant;

/// Stamps are read back this far behind the newest one seen. They come from the database's
/// clock (replicas' clocks do not matter) and writers take them just before they commit, so a
/// change that is not yet visible when a tick reads is at most this old by the time it is.
/// Devices whose stamp did not move since they were read are skipped. A wider margin cost a
/// re-read of every device that changed within it on every tick: with 10,000 devices updating,
/// the largest part of a tick.
const STAMP_MARGIN_MS: i64 = 2_000;

/// Every this often (the engine's clock) every stamp is read, whatever its age: a safety net for
/// a commit slower than [`STAMP_MARGIN_MS`] (a stalled disk). Devices whose stamp did not move
/// are still skipped, so this costs one narrow row per stamped device.
const FULL_STAMP_READ_MS: i64 = 60_000;

/// Where the next read of stamps starts, given the newest stamp seen.
fn stamps_from(newest: Option<i64>) -> i64 {
    newest.map_or(i64::MIN, |n| n.saturating_sub(STAMP_MARGIN_MS))
}

/// One rollout's fleet and members, as of the last tick.
#[derive(Debug)]
pub(super) struct RolloutCache {
    views: HashMap<String, DeviceView>,
    stamps: HashMap<String, i64>,
    /// The newest stamp seen (the database's clock).
    newest_stamp: Option<i64>,
    /// When (the engine's clock) every stamp was last read.
    full_read_ms: i64,
    /// The members (sorted by device id) as of the rollout's `updated_ms` in the first field.
    members: Option<(i64, Vec<Member>)>,
    /// Some device was busy in another rollout at the last tick.
    any_busy: bool,
    /// The gates' running sums.
    sums: SumMemo,
    /// Moves whenever the members may have changed (see `super::sums`).
    epoch: u64,
}

impl RolloutCache {
    /// Reads the whole fleet of `stored` (five statements).
    pub(super) async fn load(db: &Db, stored: &StoredRollout, now: i64, th: Thresholds) -> Result<Self, DbError> {
        let read = db.read_fleet(&stored.record, now, th, Reader::Engine, None).await?;
        Ok(RolloutCache {
            any_busy: read.views.values().any(|v| v.busy),
            views: read.views,
            newest_stamp: read.stamps.values().copied().max(),
            stamps: read.stamps,
            full_read_ms: now,
            members: None,
            sums: SumMemo::default(),
            epoch: 0,
        })
    }

    /// What a step reads: the members, the fleet, the gates' running sums to add to, and the
    /// members' epoch.
    pub(super) fn step_inputs(&mut self) -> (&[Member], &HashMap<String, DeviceView>, &mut SumMemo, u64) {
        let members = self.members.as_ref().map_or(&[][..], |(_, m)| m.as_slice());
        (members, &self.views, &mut self.sums, self.epoch)
    }

    /// The members (empty before the first [`RolloutCache::refresh`]).
    pub(super) fn members(&self) -> &[Member] {
        self.members.as_ref().map_or(&[], |(_, m)| m.as_slice())
    }

    /// Brings the members and the view up to date; returns the statements run.
    pub(super) async fn refresh(
        &mut self,
        db: &Db,
        stored: &StoredRollout,
        now: i64,
        th: Thresholds,
        metrics: &Metrics,
    ) -> Result<u64, DbError> {
        let r = &stored.record;
        let mut statements = 0;
        if self.members.as_ref().is_none_or(|(revision, _)| *revision != stored.updated_ms) {
            let started = Instant::now();
            let mut members = db.rollout_members(r.id, Reader::Engine).await?;
            // The database's collation need not be byte order, which `apply` searches by.
            members.sort_unstable_by(|a, b| a.device_id.cmp(&b.device_id));
            self.members = Some((stored.updated_ms, members));
            self.epoch += 1;
            metrics.engine_part("members", started);
            statements += 1;
        }

        let started = Instant::now();
        let full = now.saturating_sub(self.full_read_ms) >= FULL_STAMP_READ_MS;
        let since = if full { i64::MIN } else { stamps_from(self.newest_stamp) };
        let changes = db.device_changes_since(since).await?;
        statements += 1;
        if full {
            self.full_read_ms = now;
        }
        self.newest_stamp = self.newest_stamp.max(changes.iter().map(|(_, s)| *s).max());
        let mut again: Vec<String> =
            changes.iter().filter(|(id, stamp)| self.stamps.get(id) != Some(stamp)).map(|(id, _)| id.clone()).collect();
        // A member another replica added for a device this view did not match yet.
        let known: HashSet<&str> = again.iter().map(String::as_str).collect();
        let missing: Vec<String> = self
            .members()
            .iter()
            .filter(|m| !self.views.contains_key(&m.device_id) && !known.contains(m.device_id.as_str()))
            .map(|m| m.device_id.clone())
            .collect();
        again.extend(missing);
        if !again.is_empty() {
            let mut read = db.read_fleet(r, now, th, Reader::Engine, Some(&again)).await?;
            statements += 4;
            for id in &again {
                match read.views.remove(id) {
                    Some(view) => self.views.insert(id.clone(), view),
                    None => self.views.remove(id),
                };
            }
            // The read's stamp is at least as new as the one in `changes`: it was read later.
            self.stamps.extend(changes);
            self.stamps.extend(read.stamps);
        }
        metrics.engine_part("changes", started);

        let started = Instant::now();
        let quiet: HashMap<String, i64> =
            db.quiet_devices(now.saturating_sub(th.stale_after_ms)).await?.into_iter().collect();
        statements += 1;
        for (id, view) in &mut self.views {
            match quiet.get(id) {
                Some(&seen) => {
                    view.last_seen_ms = Some(seen);
                    view.online = false;
                }
                None => view.online = view.last_seen_ms.is_some(),
            }
        }
        let awaiting: Vec<String> = self
            .members()
            .iter()
            .filter(|m| m.state != DeviceRolloutState::Reverted)
            .filter(|m| {
                self.views
                    .get(&m.device_id)
                    .is_some_and(|v| v.online && v.last_seen_ms.is_none_or(|seen| seen <= m.since_ms.max(m.updated_ms)))
            })
            .map(|m| m.device_id.clone())
            .collect();
        if !awaiting.is_empty() {
            for (id, seen) in db.last_seen_of(&awaiting).await? {
                if let Some(view) = self.views.get_mut(&id) {
                    view.last_seen_ms = Some(seen);
                }
            }
            statements += 1;
        }
        metrics.engine_part("online", started);

        let started = Instant::now();
        let busy = db.busy_devices(r, Reader::Engine).await?;
        statements += 1;
        if self.any_busy || !busy.is_empty() {
            for (id, view) in &mut self.views {
                view.busy = busy.contains(id);
            }
        }
        self.any_busy = !busy.is_empty();
        metrics.engine_part("busy", started);
        Ok(statements)
    }

    /// After a step was stored: its members, and the rollout's `updated_ms` it wrote.
    pub(super) fn apply(&mut self, step: &Step, revision: i64) {
        let Some((rev, members)) = self.members.as_mut() else { return };
        *rev = revision;
        if !step.changed.is_empty() {
            self.epoch += 1;
        }
        let sorted = members.len();
        for c in &step.changed {
            match members[..sorted].binary_search_by(|m| m.device_id.cmp(&c.device_id)) {
                Ok(i) => members[i] = c.clone(),
                Err(_) => members.push(c.clone()),
            }
        }
        if members.len() > sorted {
            members.sort_unstable_by(|a, b| a.device_id.cmp(&b.device_id));
        }
    }

    /// The members must be read again (a step was not stored).
    pub(super) fn forget_members(&mut self) {
        self.members = None;
        self.epoch += 1;
    }
}
