//! Translation of label selectors and connectivity status into SQL conditions, so that
//! filtering happens in the database (with the `(key, value)` index) rather than in Rust.
//!
//! Conditions refer to `d` (the `devices` row) and `s` (its `device_status` row, LEFT JOINed).

use super::sql::Sql;
use super::Thresholds;
use outpost_proto::fleet::api::DeviceStatus;
use outpost_proto::fleet::selector::{Requirement, Selector};

/// Appends `AND <condition>` for every requirement of the selector.
pub(crate) fn push_selector(q: &mut Sql, selector: &Selector) {
    for r in selector.requirements() {
        let (negated, key, values, value) = match r {
            Requirement::Equals(k, v) => (false, k, None, Some(v)),
            Requirement::NotEquals(k, v) => (true, k, None, Some(v)),
            Requirement::In(k, vs) => (false, k, Some(vs), None),
            Requirement::NotIn(k, vs) => (true, k, Some(vs), None),
            Requirement::Exists(k) => (false, k, None, None),
            Requirement::DoesNotExist(k) => (true, k, None, None),
        };
        q.push(if negated { " AND NOT EXISTS" } else { " AND EXISTS" });
        q.push(" (SELECT 1 FROM device_labels l WHERE l.device_id = d.id AND l.key = ").bind(key);
        if let Some(v) = value {
            q.push(" AND l.value = ").bind(v);
        }
        match values {
            Some(vs) if vs.is_empty() => {
                // `in ()` holds for no value (and `notin ()` for every device).
                q.push(" AND 1 = 0");
            }
            Some(vs) => {
                q.push(" AND l.value IN ").bind_list(vs);
            }
            None => {}
        }
        q.push(")");
    }
}

/// The boundaries used by every status condition: `(stale_since, offline_since)`.
fn cutoffs(now_ms: i64, th: Thresholds) -> (i64, i64) {
    (now_ms - th.stale_after_ms, now_ms - th.offline_after_ms)
}

/// Appends `AND <condition>` selecting devices with the given status (as [`super::status_of`]).
pub(crate) fn push_status(q: &mut Sql, status: DeviceStatus, now_ms: i64, th: Thresholds) {
    let (stale_since, offline_since) = cutoffs(now_ms, th);
    match status {
        DeviceStatus::Revoked => {
            q.push(" AND d.revoked_ms IS NOT NULL");
        }
        DeviceStatus::Online => {
            q.push(" AND d.revoked_ms IS NULL AND s.last_seen_ms >= ").bind(stale_since);
        }
        DeviceStatus::Stale => {
            q.push(" AND d.revoked_ms IS NULL AND s.last_seen_ms < ").bind(stale_since);
            q.push(" AND s.last_seen_ms >= ").bind(offline_since);
        }
        DeviceStatus::Offline => {
            q.push(" AND d.revoked_ms IS NULL AND (s.last_seen_ms IS NULL OR s.last_seen_ms < ");
            q.bind(offline_since).push(")");
        }
    }
}

/// Appends a CASE expression evaluating to the status wire name.
pub(crate) fn push_status_case(q: &mut Sql, now_ms: i64, th: Thresholds) {
    let (stale_since, offline_since) = cutoffs(now_ms, th);
    q.push("CASE WHEN d.revoked_ms IS NOT NULL THEN 'revoked' WHEN s.last_seen_ms >= ").bind(stale_since);
    q.push(" THEN 'online' WHEN s.last_seen_ms >= ").bind(offline_since);
    q.push(" THEN 'stale' ELSE 'offline' END");
}
