//! Reading each model's new `version_stats` windows once, in PostgreSQL too.
//!
//! The rollout engine reads the rows after the highest id it has seen. In SQLite writers take
//! turns, so ids commit in order. In PostgreSQL an identity value is taken at insert and
//! transactions commit in any order: a report batch that took id 100 and commits after the one
//! that took id 101 was skipped for good by `id > 101`. So on PostgreSQL each row carries the
//! id of the transaction that wrote it (`xid`, migration 0010), and a read also takes the rows
//! of every transaction that could still have been running at the read before (ids from the
//! snapshot's `xmin` on), returning only the ones it has not returned yet.
//!
//! A transaction left open elsewhere in the cluster (an idle `psql` session) holds `xmin` back
//! for as long as it stays open; the rows re-read for it would grow without bound. The horizon
//! therefore never lags more than [`LATE_COMMIT_MS`] behind: a report batch still uncommitted a
//! minute after it was written is not waited for.

use super::sql::Sql;
use super::{Db, DbError, DbKind};
use crate::rollout::gates::StatRow;
use sqlx::Row;
use std::collections::{HashMap, VecDeque};

/// How long a row may take to commit and still be read: far beyond any report batch.
pub const LATE_COMMIT_MS: i64 = 60_000;

const COLUMNS: &str = "id, device_id, version, shadow, received_ms, requests, errors, latency, agreement, \
                       drift_windows, drift_alerts, drift_score";

/// A reader's place in one model's `version_stats`.
#[derive(Debug, Default)]
pub struct StatsCursor {
    /// The highest row id read.
    last_id: i64,
    /// PostgreSQL: the oldest transaction that may still add rows below `last_id`.
    horizon: Option<i64>,
    /// PostgreSQL: (read time, the snapshot's `xmax`) of recent reads, oldest first: what caps
    /// how far a transaction left open can hold the horizon back.
    marks: VecDeque<(i64, i64)>,
    /// PostgreSQL: ids returned whose transaction is at or after `horizon` (with it): a row the
    /// next read takes again is not returned twice.
    recent: HashMap<i64, i64>,
    /// The number given to the last row returned.
    seq: i64,
}

impl StatsCursor {
    /// Rows whose transaction is this one or later may still appear (PostgreSQL).
    pub fn horizon(&self) -> Option<i64> {
        self.horizon
    }

    /// Moves the horizon to what the read with snapshot `(xmin, xmax)` at `now_ms` allows.
    fn advance(&mut self, xmin: i64, xmax: i64, now_ms: i64) {
        self.marks.push_back((now_ms, xmax));
        let cap_at = now_ms.saturating_sub(LATE_COMMIT_MS);
        while self.marks.len() > 1 && self.marks[1].0 <= cap_at {
            self.marks.pop_front();
        }
        // Every transaction before this mark's `xmax` started over a minute ago.
        let cap = self.marks.front().filter(|(at, _)| *at <= cap_at).map_or(0, |(_, xmax)| *xmax);
        let horizon = xmin.max(cap).max(self.horizon.unwrap_or(0));
        self.horizon = Some(horizon);
        self.recent.retain(|_, xid| *xid >= horizon);
    }
}

impl Db {
    /// The windows of `model` stored since `cursor` last read (on the first read, those
    /// received from `not_before_ms` on), each returned once. A row's `id` is its number in the
    /// order this cursor returned rows, not its id in the table: rows may commit out of id order,
    /// and whoever sums them needs an order in which nothing arrives before what it has.
    pub async fn version_stats_next(
        &self,
        cursor: &mut StatsCursor,
        model: &str,
        not_before_ms: i64,
        now_ms: i64,
    ) -> Result<Vec<(String, StatRow)>, DbError> {
        let pg = self.kind() == DbKind::Postgres;
        let snapshot = if pg {
            // Taken before the rows: a transaction this read cannot see is one running now or
            // starting later, so its id is at least this `xmin`.
            let row = sqlx::query(
                "SELECT pg_snapshot_xmin(s)::text::bigint AS xmin, pg_snapshot_xmax(s)::text::bigint AS xmax \
                 FROM (SELECT pg_current_snapshot() AS s) q",
            )
            .fetch_one(self.engine_pool())
            .await?;
            Some((row.try_get::<i64, _>("xmin")?, row.try_get::<i64, _>("xmax")?))
        } else {
            None
        };
        let xid = if pg { "xid::text::bigint" } else { "0" };
        let mut q = Sql::new(&format!("SELECT {COLUMNS}, {xid} AS xid FROM version_stats WHERE model = "));
        q.bind(model).push(" AND id > ").bind(cursor.last_id);
        // After the first read, the id alone bounds the rows (a range of the primary key): with
        // the time bound as well, PostgreSQL walked (model, received_ms) over the whole window,
        // 600,000 entries at 10,000 devices, to return the few new rows.
        if cursor.last_id == 0 {
            q.push(" AND received_ms >= ").bind(not_before_ms);
        }
        if let (true, Some(horizon)) = (pg, cursor.horizon) {
            // Rows below `last_id` of transactions that were still open at the last read.
            q.push(&format!(" UNION ALL SELECT {COLUMNS}, {xid} AS xid FROM version_stats WHERE model = "));
            q.bind(model).push(" AND xid >= CAST(CAST(").bind(horizon).push(" AS text) AS xid8) AND id <= ");
            q.bind(cursor.last_id).push(" AND received_ms >= ").bind(not_before_ms);
        }
        let rows = q.query().fetch_all(self.engine_pool()).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let id: i64 = row.try_get("id")?;
            if pg && cursor.recent.contains_key(&id) {
                continue;
            }
            if pg {
                cursor.recent.insert(id, row.try_get("xid")?);
            }
            cursor.last_id = cursor.last_id.max(id);
            cursor.seq += 1;
            let latency: String = row.try_get("latency")?;
            let count = |name: &str| row.try_get::<i64, _>(name).map(|v| u64::try_from(v).unwrap_or(0));
            out.push((
                row.try_get("device_id")?,
                StatRow {
                    id: cursor.seq,
                    received_ms: row.try_get("received_ms")?,
                    version: row.try_get("version")?,
                    shadow: row.try_get::<i64, _>("shadow")? == 1,
                    requests: count("requests")?,
                    errors: count("errors")?,
                    latency: serde_json::from_str(&latency).unwrap_or_default(),
                    agreement: row.try_get("agreement")?,
                    drift_windows: count("drift_windows")?,
                    drift_alerts: count("drift_alerts")?,
                    drift_score: row.try_get("drift_score")?,
                },
            ));
        }
        if let Some((xmin, xmax)) = snapshot {
            cursor.advance(xmin, xmax, now_ms);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_horizon_follows_xmin_but_never_lags_more_than_a_minute() {
        let mut c = StatsCursor::default();
        c.recent.insert(1, 90);
        c.advance(100, 110, 0);
        assert_eq!(c.horizon(), Some(100));
        assert!(c.recent.is_empty(), "rows of finished transactions are never read again");
        c.recent.insert(2, 105);
        // A transaction left open holds xmin at 100 while others come and go.
        c.advance(100, 150, 30_000);
        assert_eq!(c.horizon(), Some(100));
        assert!(c.recent.contains_key(&2));
        c.advance(100, 200, 60_000);
        assert_eq!(c.horizon(), Some(110), "what started before the read a minute ago is not waited for");
        assert!(c.recent.is_empty());
        c.advance(100, 250, 95_000);
        assert_eq!(c.horizon(), Some(150));
        c.advance(240, 260, 96_000);
        assert_eq!(c.horizon(), Some(240), "the open transaction ended");
        c.advance(10, 20, 97_000);
        assert_eq!(c.horizon(), Some(240), "never moves back");
    }
}
