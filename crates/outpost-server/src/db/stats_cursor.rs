//! Reading each model's new `version_stats` windows once, in PostgreSQL too.
//!
//! The rollout engine reads the rows after the highest id it has seen. In SQLite writers take
//! turns, so ids commit in order. In PostgreSQL an identity value is taken at insert and
//! transactions commit in any order: a report batch that took id 100 and commits after the one
//! that took id 101 was skipped for good by `id > 101`. Such a row's transaction was still
//! running when the read that saw 101 took its snapshot (had it started later, its id would be
//! above 101). So on PostgreSQL each row records the transaction that wrote it (`xid`,
//! migration 0010), a read takes the rows and the snapshot's in-progress transactions in one
//! repeatable-read transaction, and the next read also takes, by index, the rows at or below
//! its last id that those transactions wrote. No row is read twice, and a transaction left open
//! elsewhere in the cluster costs one index probe per read.

use super::sql::Sql;
use super::{Db, DbError, DbKind};
use crate::rollout::gates::StatRow;
use sqlx::Row;

const COLUMNS: &str = "id, device_id, version, shadow, received_ms, requests, errors, latency, agreement, \
                       drift_windows, drift_alerts, drift_score";

/// A reader's place in one model's `version_stats`.
#[derive(Debug, Default)]
pub struct StatsCursor {
    /// The highest row id read.
    last_id: i64,
    /// PostgreSQL: transactions in progress at the last read; rows they commit later may have
    /// ids below `last_id`.
    in_flight: Vec<i64>,
    /// The number given to the last row returned.
    seq: i64,
}

impl StatsCursor {
    /// Transactions whose rows the next read also looks for below the last id (PostgreSQL).
    pub fn in_flight(&self) -> &[i64] {
        &self.in_flight
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
    ) -> Result<Vec<(String, StatRow)>, DbError> {
        let pg = self.kind() == DbKind::Postgres;
        let mut q = Sql::new(&format!("SELECT {COLUMNS} FROM version_stats WHERE model = "));
        q.bind(model).push(" AND id > ").bind(cursor.last_id);
        // After the first read, the id alone bounds the rows (a range of the primary key): with
        // the time bound as well, PostgreSQL walked (model, received_ms) over the whole window,
        // 600,000 entries at 10,000 devices, to return the few new rows.
        if cursor.last_id == 0 {
            q.push(" AND received_ms >= ").bind(not_before_ms);
        }
        if pg && !cursor.in_flight.is_empty() {
            q.push(&format!(" UNION ALL SELECT {COLUMNS} FROM version_stats WHERE model = "));
            q.bind(model).push(" AND id <= ").bind(cursor.last_id).push(" AND xid IN (");
            for (i, x) in cursor.in_flight.iter().enumerate() {
                q.push(if i == 0 { "CAST(" } else { ", CAST(" }).bind(x.to_string()).push(" AS xid8)");
            }
            q.push(")");
        }
        let rows = if pg {
            // One snapshot for both: the in-progress list must be the one the rows were read in.
            let mut tx = self.engine_pool().begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY").await?;
            let in_flight: Vec<i64> = sqlx::query_scalar(
                "SELECT CAST(CAST(x AS text) AS bigint) FROM pg_snapshot_xip(pg_current_snapshot()) AS x",
            )
            .fetch_all(&mut *tx)
            .await?;
            let rows = q.query().fetch_all(&mut *tx).await?;
            tx.commit().await?;
            cursor.in_flight = in_flight;
            rows
        } else {
            q.query().fetch_all(self.engine_pool()).await?
        };
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            cursor.last_id = cursor.last_id.max(row.try_get::<i64, _>("id")?);
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
        Ok(out)
    }
}
