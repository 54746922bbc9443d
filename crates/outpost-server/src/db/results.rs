//! Exported records devices send over HTTP: stored once per record id, read back in the order
//! they were stored, pruned after `results_retention_s`.

use super::audit::int_cursor;
use super::reports::json_rows;
use super::sql::{clamp_limit, Sql};
use super::{Db, DbError};
use outpost_proto::fleet::api::Page;
use outpost_proto::fleet::results::StoredResult;
use serde::Serialize;
use sqlx::Row;

/// One record to store, already checked by the route.
#[derive(Debug, Serialize)]
pub struct ResultRow<'a> {
    /// The record's id.
    pub id: &'a str,
    /// `result`, `event`, `alert` or `telemetry`.
    pub kind: &'a str,
    /// Model, if any.
    pub model: Option<&'a str>,
    /// Version, if any.
    pub version: Option<&'a str>,
    /// Device time, Unix ms.
    pub at_ms: i64,
    /// The record's JSON text.
    pub record: String,
}

const COLUMNS: &[(&str, &str)] = &[
    ("id", "TEXT"),
    ("kind", "TEXT"),
    ("model", "TEXT"),
    ("version", "TEXT"),
    ("at_ms", "BIGINT"),
    ("record", "TEXT"),
];

/// Which records a listing returns.
#[derive(Debug, Default, Clone)]
pub struct ResultFilter<'a> {
    /// Only this device's.
    pub device: Option<&'a str>,
    /// Only this model's.
    pub model: Option<&'a str>,
    /// Only this kind.
    pub kind: Option<&'a str>,
}

impl Db {
    /// Stores `rows` from `device_id` received at `received_ms`; returns how many were new (a
    /// record id stored before is skipped: the device sent the batch again).
    pub async fn write_results(
        &self,
        device_id: &str,
        rows: &[ResultRow<'_>],
        received_ms: i64,
    ) -> Result<u64, DbError> {
        if rows.is_empty() {
            return Ok(0);
        }
        let sql = format!(
            "INSERT INTO device_results (id, device_id, kind, model, version, at_ms, received_ms, record) \
             SELECT r.id, $2, r.kind, r.model, r.version, r.at_ms, $3, r.record FROM {} WHERE true \
             ON CONFLICT (id) DO NOTHING",
            json_rows(self.kind(), COLUMNS)
        );
        let mut q = Sql::new(&sql);
        q.arg(serde_json::to_string(rows)?).arg(device_id).arg(received_ms);
        Ok(q.query().execute(self.pool()).await?.rows_affected())
    }

    /// One page of stored records, oldest first, after `cursor` (a `seq`).
    pub async fn list_results(
        &self,
        filter: &ResultFilter<'_>,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<StoredResult>, DbError> {
        let limit = clamp_limit(limit);
        let mut q = Sql::new(
            "SELECT seq, id, device_id, kind, model, version, at_ms, received_ms, record FROM device_results WHERE seq > ",
        );
        q.bind(int_cursor(cursor)?.unwrap_or(0));
        if let Some(d) = filter.device {
            q.push(" AND device_id = ").bind(d);
        }
        if let Some(m) = filter.model {
            q.push(" AND model = ").bind(m);
        }
        if let Some(k) = filter.kind {
            q.push(" AND kind = ").bind(k);
        }
        q.push(" ORDER BY seq LIMIT ").bind(limit + 1);
        let rows = q.query().fetch_all(self.operator_pool()).await?;
        let items = rows
            .iter()
            .map(|row| {
                let text: String = row.try_get("record")?;
                Ok(StoredResult {
                    seq: row.try_get("seq")?,
                    id: row.try_get("id")?,
                    device_id: row.try_get("device_id")?,
                    kind: row.try_get("kind")?,
                    model: row.try_get("model")?,
                    version: row.try_get("version")?,
                    at_ms: row.try_get("at_ms")?,
                    received_ms: row.try_get("received_ms")?,
                    record: serde_json::from_str(&text)?,
                })
            })
            .collect::<Result<Vec<_>, DbError>>()?;
        Ok(super::audit::paginate(items, limit, |r| r.seq.to_string()))
    }

    /// Deletes records received before `older_than_ms`; returns how many.
    pub async fn prune_results(&self, older_than_ms: i64) -> Result<u64, DbError> {
        let mut q = Sql::new("DELETE FROM device_results WHERE received_ms < ");
        q.bind(older_than_ms);
        Ok(q.query().execute(self.pool()).await?.rows_affected())
    }
}
