//! The hot path: heartbeats from the whole fleet, written in batches.
//!
//! One batch is one transaction made of a few statements, not one statement per report; each
//! statement takes the whole batch as one JSON parameter (see [`json_rows`]). Only the newest
//! report per device reaches `device_status` (PostgreSQL refuses an `INSERT ... ON CONFLICT DO
//! UPDATE` that touches the same row twice). `device_models` is
//! rewritten only for devices whose model set changed since this process last wrote it, and
//! history is downsampled to one report per device per history interval; both decisions use
//! in-memory state that is updated only after the transaction commits.

use super::devices::health_name;
use super::sql::Sql;
use super::{Db, DbError, DbKind, ReportRow};
use outpost_proto::fleet::device::{FailureKind, ModelReport};
use serde::Serialize;
use sqlx::AnyConnection;
use sqlx::Row;
use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::Ordering;

/// What `device_models` holds for a device's models: (name, version, state, failure kind) of
/// each served model, of each update on its way as (name, update version, `update:<state>`), and
/// of each shadow candidate as (name, candidate, `shadow:<state>`), so the fleet view can count
/// where each version runs and where it is arriving or failed, and rollouts can read progress.
fn model_rows(models: &[ModelReport]) -> Vec<(&str, &str, String, Option<&'static str>)> {
    let mut rows = Vec::with_capacity(models.len());
    for m in models {
        rows.push((m.name.as_str(), m.version.as_str(), m.state.clone(), m.failure_kind.map(failure_name)));
        if let Some(u) = &m.update {
            rows.push((
                m.name.as_str(),
                u.version.as_str(),
                format!("update:{}", u.state),
                u.failure_kind.map(failure_name),
            ));
        }
        if let Some(sh) = &m.shadow {
            rows.push((m.name.as_str(), sh.version.as_str(), format!("shadow:{}", sh.state), None));
        }
    }
    rows
}

/// The wire name of a failure kind.
pub(crate) fn failure_name(kind: FailureKind) -> &'static str {
    match kind {
        FailureKind::Io => "io",
        FailureKind::HashMismatch => "hash_mismatch",
        FailureKind::BadPackage => "bad_package",
        FailureKind::BadManifest => "bad_manifest",
        FailureKind::UnsupportedModel => "unsupported_model",
        FailureKind::InvalidModel => "invalid_model",
        FailureKind::MemoryBudget => "memory_budget",
        FailureKind::BackendUnavailable => "backend_unavailable",
        FailureKind::SelfTest => "self_test",
        FailureKind::Download => "download",
        FailureKind::DiskFull => "disk_full",
        FailureKind::Probation => "probation",
        FailureKind::Untrusted => "untrusted",
        FailureKind::Other => "other",
    }
}

/// Hash of what `device_models` holds for a device, order-independent.
fn model_set_hash(models: &[ModelReport]) -> u64 {
    let mut set = model_rows(models);
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

/// A derived table `r` over the rows of a JSON array of objects bound to `$1`, with the given
/// (column, PostgreSQL type) pairs. Every batch statement takes its whole batch as this one
/// parameter, so its SQL text never changes with the batch size: each engine prepares it once
/// and reuses the plan, where a multi-row `VALUES` list would be a new statement (parsed,
/// planned and evicted from the statement cache) for every batch size.
pub(super) fn json_rows(kind: DbKind, columns: &[(&str, &str)]) -> String {
    match kind {
        DbKind::Postgres => {
            let cols: Vec<String> = columns.iter().map(|(c, t)| format!("{c} {t}")).collect();
            format!("json_to_recordset($1::json) AS r({})", cols.join(", "))
        }
        DbKind::Sqlite => {
            let cols: Vec<String> =
                columns.iter().map(|(c, _)| format!("json_extract(value, '$.{c}') AS {c}")).collect();
            format!("(SELECT {} FROM json_each($1)) AS r", cols.join(", "))
        }
    }
}

/// `r.a, r.b, ...` for the columns of [`json_rows`].
pub(super) fn r_columns(columns: &[(&str, &str)]) -> String {
    columns.iter().map(|(c, _)| format!("r.{c}")).collect::<Vec<_>>().join(", ")
}

/// Runs `sql` with the JSON encoding of `rows` as `$1`; nothing to do for no rows.
async fn execute_json<T: Serialize>(conn: &mut AnyConnection, sql: &str, rows: &[T]) -> Result<(), DbError> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut q = Sql::new(sql);
    q.arg(serde_json::to_string(rows)?);
    q.query().execute(conn).await?;
    Ok(())
}

const ID: &[(&str, &str)] = &[("device_id", "TEXT")];
const STATUS: &[(&str, &str)] = &[
    ("device_id", "TEXT"),
    ("last_seen_ms", "BIGINT"),
    ("health", "TEXT"),
    ("agent_version", "TEXT"),
    ("applied_etag", "TEXT"),
    ("models", "TEXT"),
    ("system", "TEXT"),
    ("last_seq", "BIGINT"),
];
const HARDWARE: &[(&str, &str)] = &[("device_id", "TEXT"), ("hardware", "TEXT")];
const MODELS: &[(&str, &str)] =
    &[("device_id", "TEXT"), ("name", "TEXT"), ("version", "TEXT"), ("state", "TEXT"), ("failure", "TEXT")];
const STATS: &[(&str, &str)] = &[
    ("device_id", "TEXT"),
    ("model", "TEXT"),
    ("version", "TEXT"),
    ("shadow", "BIGINT"),
    ("received_ms", "BIGINT"),
    ("requests", "BIGINT"),
    ("errors", "BIGINT"),
    ("latency", "TEXT"),
    ("agreement", "DOUBLE PRECISION"),
    ("drift_windows", "BIGINT"),
    ("drift_alerts", "BIGINT"),
    ("drift_score", "DOUBLE PRECISION"),
];
const DRIFT: &[(&str, &str)] = &[
    ("device_id", "TEXT"),
    ("model", "TEXT"),
    ("version", "TEXT"),
    ("at_ms", "BIGINT"),
    ("received_ms", "BIGINT"),
    ("samples", "BIGINT"),
    ("score", "DOUBLE PRECISION"),
    ("status", "TEXT"),
    ("report", "TEXT"),
];
const HISTORY: &[(&str, &str)] =
    &[("device_id", "TEXT"), ("at_ms", "BIGINT"), ("received_ms", "BIGINT"), ("report", "TEXT")];

/// The batch statements for one engine, built once per [`Db`].
pub(super) struct ReportSql {
    status: String,
    hardware: String,
    delete_models: String,
    insert_models: String,
    history: String,
    stats: String,
    drift: String,
}

impl ReportSql {
    /// The statements for `kind`.
    pub(super) fn new(kind: DbKind) -> ReportSql {
        // `WHERE true` keeps SQLite from reading `ON CONFLICT` as a join constraint.
        ReportSql {
            status: format!(
                "INSERT INTO device_status (device_id, last_seen_ms, health, agent_version, applied_etag, models, \
                 system, last_seq) SELECT {} FROM {} JOIN devices d ON d.id = r.device_id WHERE true \
                 ORDER BY r.device_id \
                 ON CONFLICT (device_id) DO UPDATE SET last_seen_ms = excluded.last_seen_ms, \
                 health = excluded.health, agent_version = excluded.agent_version, \
                 applied_etag = excluded.applied_etag, models = excluded.models, system = excluded.system, \
                 last_seq = excluded.last_seq RETURNING device_id",
                r_columns(STATUS),
                json_rows(kind, STATUS)
            ),
            hardware: format!(
                "UPDATE devices SET hardware = r.hardware FROM {} WHERE devices.id = r.device_id",
                json_rows(kind, HARDWARE)
            ),
            delete_models: format!(
                "DELETE FROM device_models WHERE device_id IN (SELECT r.device_id FROM {})",
                json_rows(kind, ID)
            ),
            insert_models: format!(
                "INSERT INTO device_models (device_id, name, version, state, failure) SELECT {} FROM {} WHERE true",
                r_columns(MODELS),
                json_rows(kind, MODELS)
            ),
            history: format!(
                "INSERT INTO device_reports (device_id, at_ms, received_ms, report) SELECT {} FROM {} WHERE true",
                r_columns(HISTORY),
                json_rows(kind, HISTORY)
            ),
            stats: format!(
                "INSERT INTO version_stats (device_id, model, version, shadow, received_ms, requests, errors, latency, \
                 agreement, drift_windows, drift_alerts, drift_score) SELECT {} FROM {} WHERE true",
                r_columns(STATS),
                json_rows(kind, STATS)
            ),
            // `alert_since_ms` survives while the status stays `alert`.
            drift: format!(
                "INSERT INTO device_drift (device_id, model, version, at_ms, received_ms, samples, score, status, \
                 report, alert_since_ms) SELECT {}, CASE WHEN r.status = 'alert' THEN r.received_ms END FROM {} \
                 WHERE true ORDER BY r.device_id, r.model \
                 ON CONFLICT (device_id, model) DO UPDATE SET version = excluded.version, at_ms = excluded.at_ms, \
                 received_ms = excluded.received_ms, samples = excluded.samples, score = excluded.score, \
                 status = excluded.status, report = excluded.report, \
                 alert_since_ms = CASE WHEN excluded.status <> 'alert' THEN NULL \
                 WHEN device_drift.status = 'alert' THEN device_drift.alert_since_ms ELSE excluded.alert_since_ms END",
                r_columns(DRIFT),
                json_rows(kind, DRIFT)
            ),
        }
    }
}

#[derive(Serialize)]
struct IdRow<'a> {
    device_id: &'a str,
}

#[derive(Serialize)]
struct StatusRow<'a> {
    device_id: &'a str,
    last_seen_ms: i64,
    health: &'a str,
    agent_version: &'a str,
    applied_etag: &'a str,
    models: String,
    system: String,
    last_seq: i64,
}

#[derive(Serialize)]
struct HardwareRow<'a> {
    device_id: &'a str,
    hardware: String,
}

#[derive(Serialize)]
struct ModelRow<'a> {
    device_id: &'a str,
    name: &'a str,
    version: &'a str,
    state: String,
    failure: Option<&'static str>,
}

#[derive(Serialize)]
struct StatsRow<'a> {
    device_id: &'a str,
    model: &'a str,
    version: &'a str,
    shadow: i64,
    received_ms: i64,
    requests: i64,
    errors: i64,
    latency: String,
    agreement: f64,
    drift_windows: i64,
    drift_alerts: i64,
    drift_score: f64,
}

#[derive(Serialize)]
struct DriftRow<'a> {
    device_id: &'a str,
    model: &'a str,
    version: &'a str,
    at_ms: i64,
    received_ms: i64,
    samples: i64,
    score: f64,
    status: &'static str,
    report: String,
}

#[derive(Serialize)]
struct HistoryRow<'a> {
    device_id: &'a str,
    at_ms: i64,
    received_ms: i64,
    report: String,
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
        let sql = &self.inner.report_sql;

        let latest: Vec<&ReportRow> = ids.iter().map(|id| newest[id]).collect();
        let status = latest
            .iter()
            .map(|row| {
                let r = &row.report;
                Ok(StatusRow {
                    device_id: &row.device_id,
                    last_seen_ms: row.received_ms,
                    health: health_name(r.health),
                    agent_version: &r.agent_version,
                    applied_etag: &r.applied_etag,
                    models: serde_json::to_string(&r.models)?,
                    system: serde_json::to_string(&r.system)?,
                    last_seq: i64::try_from(r.seq).unwrap_or(i64::MAX),
                })
            })
            .collect::<Result<Vec<_>, DbError>>()?;

        let mut tx = self.begin().await?;
        // The upsert joins `devices`, so reports from anything not enrolled are dropped rather
        // than failing the whole batch on a foreign key; it returns who was kept.
        let mut q = Sql::new(&sql.status);
        q.arg(serde_json::to_string(&status)?);
        let mut known = HashSet::with_capacity(latest.len());
        for row in q.query().fetch_all(&mut *tx).await? {
            known.insert(row.try_get::<String, _>("device_id")?);
        }
        if known.len() < latest.len() {
            let unknown: Vec<&&str> = ids.iter().filter(|id| !known.contains(**id)).collect();
            tracing::warn!(?unknown, "dropping reports from devices that are not enrolled");
        }
        let latest: Vec<&ReportRow> = latest.into_iter().filter(|row| known.contains(&row.device_id)).collect();
        let hardware = latest
            .iter()
            .filter_map(|row| row.report.hardware.as_ref().map(|hw| (row, hw)))
            .map(|(row, hw)| Ok(HardwareRow { device_id: &row.device_id, hardware: serde_json::to_string(hw)? }))
            .collect::<Result<Vec<_>, DbError>>()?;
        execute_json(&mut tx, &sql.hardware, &hardware).await?;
        let model_updates = self.rewrite_models(&mut tx, &latest).await?;
        let history_updates = self.append_history(&mut tx, batch, &known).await?;
        let stats = stats_rows(batch, &known)?;
        execute_json(&mut tx, &sql.stats, &stats).await?;
        execute_json(&mut tx, &sql.drift, &drift_rows(&latest)?).await?;
        // The rollout engine reads these devices again (see `super::fleet`); stamped last, so
        // that little time passes between the stamp and the commit.
        let stamped: Vec<&str> = model_updates.iter().map(|(id, _)| id.as_str()).collect();
        super::fleet::stamp_devices(&mut tx, self.kind(), &stamped).await?;
        tx.commit().await?;

        if let Ok(mut hashes) = self.inner.model_hashes.lock() {
            hashes.extend(model_updates);
        }
        if let Ok(mut last) = self.inner.history_last.lock() {
            last.extend(history_updates);
        }
        Ok(())
    }

    /// Deletes per-version windows received before `older_than_ms`; returns how many.
    pub async fn prune_version_stats(&self, older_than_ms: i64) -> Result<u64, DbError> {
        let mut q = Sql::new("DELETE FROM version_stats WHERE received_ms < ");
        q.bind(older_than_ms);
        Ok(q.query().execute(self.pool()).await?.rows_affected())
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
        let sql = &self.inner.report_sql;
        let ids: Vec<IdRow<'_>> = changed.iter().map(|(row, _)| IdRow { device_id: &row.device_id }).collect();
        execute_json(&mut *conn, &sql.delete_models, &ids).await?;
        let models: Vec<ModelRow<'_>> = changed
            .iter()
            .flat_map(|(row, _)| {
                model_rows(&row.report.models).into_iter().map(|(name, version, state, failure)| ModelRow {
                    device_id: &row.device_id,
                    name,
                    version,
                    state,
                    failure,
                })
            })
            .collect();
        execute_json(&mut *conn, &sql.insert_models, &models).await?;
        Ok(changed.into_iter().map(|(row, h)| (row.device_id.clone(), h)).collect())
    }

    /// Stores the reports that are at least one history interval newer than the device's
    /// previous stored one; returns the new per-device "last stored" times. The spacing uses the
    /// device's `at_ms` (so reports queued offline keep their spread), which the report queue
    /// has already bounded to the server clock plus the skew window (`crate::reports`): a device
    /// cannot date a report far ahead to suppress its own later history.
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
        let rows = keep
            .iter()
            .map(|row| {
                Ok(HistoryRow {
                    device_id: &row.device_id,
                    at_ms: row.report.at_ms,
                    received_ms: row.received_ms,
                    report: serde_json::to_string(&row.report)?,
                })
            })
            .collect::<Result<Vec<_>, DbError>>()?;
        execute_json(conn, &self.inner.report_sql.history, &rows).await?;
        Ok(stored)
    }
}

/// The per-version windows of every report in the batch (not only the newest: each report's
/// windows are its own). A report queued offline is placed at its arrival time minus how much
/// older it is than the newest report of the same submission, by the device's clock: offsets
/// on one clock are right even when that clock is not.
fn stats_rows<'a>(batch: &'a [ReportRow], known: &HashSet<String>) -> Result<Vec<StatsRow<'a>>, DbError> {
    let mut newest: HashMap<(&str, i64), i64> = HashMap::new();
    for row in batch {
        let e = newest.entry((row.device_id.as_str(), row.received_ms)).or_insert(row.report.at_ms);
        *e = (*e).max(row.report.at_ms);
    }
    let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let mut out = Vec::new();
    for row in batch.iter().filter(|r| known.contains(&r.device_id)) {
        let lag = newest[&(row.device_id.as_str(), row.received_ms)].saturating_sub(row.report.at_ms).max(0);
        let received_ms = row.received_ms.saturating_sub(lag);
        for m in &row.report.models {
            for w in m.windows.iter().filter(|w| w.requests > 0 || w.errors > 0 || w.drift_windows > 0) {
                out.push(StatsRow {
                    device_id: &row.device_id,
                    model: &m.name,
                    version: &w.version,
                    shadow: 0,
                    received_ms,
                    requests: count(w.requests),
                    errors: count(w.errors),
                    latency: serde_json::to_string(&w.latency)?,
                    agreement: 0.0,
                    drift_windows: count(w.drift_windows),
                    drift_alerts: count(w.drift_alerts.min(w.drift_windows)),
                    drift_score: if w.drift_score.is_finite() { w.drift_score.max(0.0) } else { 0.0 },
                });
            }
            if let Some(sh) = m.shadow.as_ref().filter(|s| s.samples > 0 || s.errors > 0) {
                out.push(StatsRow {
                    device_id: &row.device_id,
                    model: &m.name,
                    version: &sh.version,
                    shadow: 1,
                    received_ms,
                    requests: count(sh.samples),
                    errors: count(sh.errors),
                    latency: "[]".into(),
                    agreement: if sh.agreement.is_finite() { sh.agreement.clamp(0.0, sh.samples as f64) } else { 0.0 },
                    drift_windows: 0,
                    drift_alerts: 0,
                    drift_score: 0.0,
                });
            }
        }
    }
    Ok(out)
}

/// The drift window each device's newest report carries, per model (the latest wins).
fn drift_rows<'a>(latest: &[&'a ReportRow]) -> Result<Vec<DriftRow<'a>>, DbError> {
    let mut out = Vec::new();
    for row in latest {
        let mut seen = HashSet::new();
        for m in &row.report.models {
            let Some(d) = &m.drift else { continue };
            // A model named twice in one report is the device's mistake; the first one counts.
            if !seen.insert(m.name.as_str()) {
                continue;
            }
            let score = if d.score.is_finite() { d.score.max(0.0) } else { 0.0 };
            out.push(DriftRow {
                device_id: &row.device_id,
                model: &m.name,
                version: &d.version,
                at_ms: d.at_ms,
                received_ms: row.received_ms,
                samples: i64::try_from(d.samples).unwrap_or(i64::MAX),
                score,
                status: d.status.as_str(),
                report: serde_json::to_string(d)?,
            });
        }
    }
    Ok(out)
}
