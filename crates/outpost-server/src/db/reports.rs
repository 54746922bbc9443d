//! The hot path: heartbeats from the whole fleet, written in batches.
//!
//! One batch is one transaction made of a few multi-row statements, not one statement per
//! report. Only the newest report per device reaches `device_status` (PostgreSQL refuses an
//! `INSERT ... ON CONFLICT DO UPDATE` that touches the same row twice). `device_models` is
//! rewritten only for devices whose model set changed since this process last wrote it, and
//! history is downsampled to one report per device per history interval; both decisions use
//! in-memory state that is updated only after the transaction commits.

use super::devices::health_name;
use super::sql::{Sql, MAX_PARAMS};
use super::{Db, DbError, ReportRow};
use outpost_proto::fleet::device::ModelReport;
use sqlx::AnyConnection;
use sqlx::Row;
use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::Ordering;

/// Hash of what `device_models` holds for a device: (name, version, state), order-independent.
fn model_set_hash(models: &[ModelReport]) -> u64 {
    let mut set: Vec<(&str, &str, &str)> =
        models.iter().map(|m| (m.name.as_str(), m.version.as_str(), m.state.as_str())).collect();
    set.sort_unstable();
    let mut h = DefaultHasher::new();
    set.hash(&mut h);
    h.finish()
}

/// True when `a` is a newer report than `b` (later device time, then higher sequence number,
/// then later receipt; on a full tie the later one in the batch wins).
fn newer(a: &ReportRow, b: &ReportRow) -> bool {
    (a.report.at_ms, a.report.seq, a.received_ms) >= (b.report.at_ms, b.report.seq, b.received_ms)
}

/// Rows per statement for a table with `params_per_row` bound columns.
fn rows_per_statement(params_per_row: usize) -> usize {
    (MAX_PARAMS / params_per_row).max(1)
}

/// The subset of `ids` that are enrolled devices (reports from anything else are dropped
/// rather than failing the whole batch on a foreign key).
async fn known_devices(conn: &mut AnyConnection, ids: &[&str]) -> Result<HashSet<String>, DbError> {
    let mut known = HashSet::new();
    for chunk in ids.chunks(rows_per_statement(1)) {
        let mut q = Sql::new("SELECT id FROM devices WHERE id IN ");
        q.bind_list(chunk.iter().copied());
        for row in q.query().fetch_all(&mut *conn).await? {
            known.insert(row.try_get::<String, _>("id")?);
        }
    }
    Ok(known)
}

impl Db {
    /// Writes a batch of reports in one transaction (see the module docs).
    pub async fn write_reports(&self, batch: &[ReportRow]) -> Result<(), DbError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut newest: HashMap<&str, &ReportRow> = HashMap::new();
        for row in batch {
            let slot = newest.entry(row.device_id.as_str()).or_insert(row);
            if newer(row, slot) {
                *slot = row;
            }
        }
        let mut ids: Vec<&str> = newest.keys().copied().collect();
        // A fixed order makes concurrent batches lock rows in the same order (no deadlocks).
        ids.sort_unstable();

        let mut tx = self.begin().await?;
        let known = known_devices(&mut tx, &ids).await?;
        if known.len() < ids.len() {
            let unknown: Vec<&&str> = ids.iter().filter(|id| !known.contains(**id)).collect();
            tracing::warn!(?unknown, "dropping reports from devices that are not enrolled");
        }
        ids.retain(|id| known.contains(*id));
        let latest: Vec<&ReportRow> = ids.iter().map(|id| newest[id]).collect();

        self.upsert_status(&mut tx, &latest).await?;
        for row in &latest {
            if let Some(hw) = &row.report.hardware {
                let mut q = Sql::new("UPDATE devices SET hardware = ");
                q.bind(serde_json::to_string(hw)?).push(" WHERE id = ").bind(&row.device_id);
                q.query().execute(&mut *tx).await?;
            }
        }
        let model_updates = self.rewrite_models(&mut tx, &latest).await?;
        let history_updates = self.append_history(&mut tx, batch, &known).await?;
        tx.commit().await?;

        if let Ok(mut hashes) = self.inner.model_hashes.lock() {
            hashes.extend(model_updates);
        }
        if let Ok(mut last) = self.inner.history_last.lock() {
            last.extend(history_updates);
        }
        Ok(())
    }

    async fn upsert_status(&self, conn: &mut AnyConnection, latest: &[&ReportRow]) -> Result<(), DbError> {
        for chunk in latest.chunks(rows_per_statement(8)) {
            let mut q = Sql::new(
                "INSERT INTO device_status (device_id, last_seen_ms, health, agent_version, applied_etag, models, \
                 system, last_seq) VALUES ",
            );
            for (i, row) in chunk.iter().enumerate() {
                let r = &row.report;
                q.push(if i == 0 { "(" } else { ", (" });
                q.bind(&row.device_id).push(", ").bind(row.received_ms).push(", ").bind(health_name(r.health));
                q.push(", ").bind(&r.agent_version).push(", ").bind(&r.applied_etag).push(", ");
                q.bind(serde_json::to_string(&r.models)?).push(", ").bind(serde_json::to_string(&r.system)?);
                q.push(", ").bind(i64::try_from(r.seq).unwrap_or(i64::MAX)).push(")");
            }
            q.push(
                " ON CONFLICT (device_id) DO UPDATE SET last_seen_ms = excluded.last_seen_ms, \
                 health = excluded.health, agent_version = excluded.agent_version, \
                 applied_etag = excluded.applied_etag, models = excluded.models, system = excluded.system, \
                 last_seq = excluded.last_seq",
            );
            q.query().execute(&mut *conn).await?;
        }
        Ok(())
    }

    /// Rewrites `device_models` for devices whose model set changed; returns the new hashes.
    async fn rewrite_models(
        &self,
        conn: &mut AnyConnection,
        latest: &[&ReportRow],
    ) -> Result<Vec<(String, u64)>, DbError> {
        let changed: Vec<(&ReportRow, u64)> = {
            let hashes =
                self.inner.model_hashes.lock().map_err(|_| DbError::Other("model hash cache poisoned".into()))?;
            latest
                .iter()
                .map(|row| (*row, model_set_hash(&row.report.models)))
                .filter(|(row, h)| hashes.get(&row.device_id) != Some(h))
                .collect()
        };
        for chunk in changed.chunks(rows_per_statement(1)) {
            let mut q = Sql::new("DELETE FROM device_models WHERE device_id IN ");
            q.bind_list(chunk.iter().map(|(row, _)| row.device_id.as_str()));
            q.query().execute(&mut *conn).await?;
        }
        let models: Vec<(&str, &ModelReport)> =
            changed.iter().flat_map(|(row, _)| row.report.models.iter().map(|m| (row.device_id.as_str(), m))).collect();
        for chunk in models.chunks(rows_per_statement(4)) {
            let mut q = Sql::new("INSERT INTO device_models (device_id, name, version, state) VALUES ");
            for (i, (id, m)) in chunk.iter().enumerate() {
                q.push(if i == 0 { "(" } else { ", (" });
                q.bind(*id).push(", ").bind(&m.name).push(", ").bind(&m.version).push(", ").bind(&m.state).push(")");
            }
            q.query().execute(&mut *conn).await?;
        }
        Ok(changed.into_iter().map(|(row, h)| (row.device_id.clone(), h)).collect())
    }

    /// Stores the reports that are at least one history interval newer than the device's
    /// previous stored one; returns the new per-device "last stored" times.
    async fn append_history(
        &self,
        conn: &mut AnyConnection,
        batch: &[ReportRow],
        known: &HashSet<String>,
    ) -> Result<HashMap<String, i64>, DbError> {
        let interval = self.inner.history_interval_ms.load(Ordering::Relaxed);
        let mut ordered: Vec<&ReportRow> = batch.iter().filter(|r| known.contains(&r.device_id)).collect();
        ordered.sort_by(|a, b| (&a.device_id, a.report.at_ms).cmp(&(&b.device_id, b.report.at_ms)));
        let mut stored: HashMap<String, i64> = HashMap::new();
        let mut keep: Vec<&ReportRow> = Vec::new();
        {
            let last = self.inner.history_last.lock().map_err(|_| DbError::Other("history cache poisoned".into()))?;
            for row in ordered {
                let previous = stored.get(&row.device_id).or_else(|| last.get(&row.device_id)).copied();
                if previous.is_none_or(|p| row.report.at_ms >= p.saturating_add(interval)) {
                    stored.insert(row.device_id.clone(), row.report.at_ms);
                    keep.push(row);
                }
            }
        }
        for chunk in keep.chunks(rows_per_statement(3)) {
            let mut q = Sql::new("INSERT INTO device_reports (device_id, at_ms, report) VALUES ");
            for (i, row) in chunk.iter().enumerate() {
                q.push(if i == 0 { "(" } else { ", (" });
                q.bind(&row.device_id).push(", ").bind(row.report.at_ms).push(", ");
                q.bind(serde_json::to_string(&row.report)?).push(")");
            }
            q.query().execute(&mut *conn).await?;
        }
        Ok(stored)
    }
}
